//! Generated gRPC types and clients/servers for `syncpay.v1`, the file
//! descriptor set that server reflection serves, and the wire names of the
//! domain's trade states and failure reasons.

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
