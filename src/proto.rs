//! Generated gRPC types and clients/servers for `syncpay.v1`, the file
//! descriptor set that server reflection serves, the wire names of the
//! domain's trade states and failure reasons, and the short names every
//! client shows them by.

#![allow(clippy::all, missing_docs)]

tonic::include_proto!("syncpay.v1");

/// The encoded `FileDescriptorSet` of `proto/`, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("syncpay_descriptor");

/// A trade state by its name on the wire.
impl From<crate::domain::TradeState> for TradeState {
    fn from(state: crate::domain::TradeState) -> TradeState {
        use crate::domain::TradeState as S;
        match state {
            S::Pending => TradeState::Pending,
            S::Offered => TradeState::Offered,
            S::Settled => TradeState::Settled,
            S::Declined => TradeState::Declined,
            S::Expired => TradeState::Expired,
            S::Cancelled => TradeState::Cancelled,
            S::Failed => TradeState::Failed,
        }
    }
}

/// A failure reason (or none) by its name on the wire.
impl From<Option<crate::domain::FailureReason>> for FailureReason {
    fn from(reason: Option<crate::domain::FailureReason>) -> FailureReason {
        use crate::domain::FailureReason as R;
        match reason {
            None => FailureReason::Unspecified,
            Some(R::InsufficientFunds) => FailureReason::InsufficientFunds,
            Some(R::BadSignature) => FailureReason::BadSignature,
            Some(R::NoHandset) => FailureReason::NoHandset,
            Some(R::SpendingCap) => FailureReason::SpendingCap,
            Some(R::PayerUnknown) => FailureReason::PayerUnknown,
            Some(R::CarrierRefusedShop) => FailureReason::CarrierRefusedShop,
        }
    }
}

impl TradeState {
    /// The name without its prefix, as people read it: `SETTLED`, `PENDING`.
    pub fn short_name(self) -> &'static str {
        self.as_str_name().trim_start_matches("TRADE_STATE_")
    }

    /// The domain's state; `None` for UNSPECIFIED.
    pub fn to_domain(self) -> Option<crate::domain::TradeState> {
        use crate::domain::TradeState as S;
        match self {
            TradeState::Unspecified => None,
            TradeState::Pending => Some(S::Pending),
            TradeState::Offered => Some(S::Offered),
            TradeState::Settled => Some(S::Settled),
            TradeState::Declined => Some(S::Declined),
            TradeState::Expired => Some(S::Expired),
            TradeState::Cancelled => Some(S::Cancelled),
            TradeState::Failed => Some(S::Failed),
        }
    }

    /// True for SETTLED, DECLINED, EXPIRED, CANCELLED and FAILED (as the
    /// domain says).
    pub fn is_final(self) -> bool {
        self.to_domain().is_some_and(crate::domain::TradeState::is_final)
    }
}

/// A trade state as a message carries it, by its short name; `UNKNOWN` for
/// a value this build does not know.
pub fn state_name(state: i32) -> &'static str {
    TradeState::try_from(state).map_or("UNKNOWN", TradeState::short_name)
}

/// A failure reason as a message carries it, by its short name
/// (`BAD_SIGNATURE`); `None` for none (UNSPECIFIED), `UNKNOWN` for a value
/// this build does not know.
pub fn reason_name(reason: i32) -> Option<&'static str> {
    match FailureReason::try_from(reason) {
        Ok(FailureReason::Unspecified) => None,
        Ok(r) => Some(r.as_str_name().trim_start_matches("FAILURE_REASON_")),
        Err(_) => Some("UNKNOWN"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_and_reasons_go_by_their_short_names() {
        assert_eq!(state_name(TradeState::Settled as i32), "SETTLED");
        assert_eq!(state_name(TradeState::Unspecified as i32), "UNSPECIFIED");
        assert_eq!(state_name(999), "UNKNOWN");
        assert_eq!(reason_name(FailureReason::BadSignature as i32), Some("BAD_SIGNATURE"));
        assert_eq!(reason_name(FailureReason::Unspecified as i32), None);
        assert_eq!(reason_name(999), Some("UNKNOWN"));
        for s in [TradeState::Settled, TradeState::Declined, TradeState::Expired, TradeState::Cancelled] {
            assert!(s.is_final(), "{s:?}");
        }
        for s in [TradeState::Unspecified, TradeState::Pending, TradeState::Offered] {
            assert!(!s.is_final(), "{s:?}");
        }
        for s in [crate::domain::TradeState::Pending, crate::domain::TradeState::Failed] {
            assert_eq!(TradeState::from(s).to_domain(), Some(s));
        }
    }
}
