//! The trade state machine: a pure transition function over a closed set of
//! states and events. Final states never change again.

/// Where a trade is in its life. `Pending` and `Offered` are open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum TradeState {
    Pending,
    Offered,
    Settled,
    Declined,
    Expired,
    Cancelled,
    Failed,
}

impl TradeState {
    pub const ALL: [TradeState; 7] = [
        TradeState::Pending,
        TradeState::Offered,
        TradeState::Settled,
        TradeState::Declined,
        TradeState::Expired,
        TradeState::Cancelled,
        TradeState::Failed,
    ];

    pub fn is_final(self) -> bool {
        match self {
            TradeState::Pending | TradeState::Offered => false,
            TradeState::Settled
            | TradeState::Declined
            | TradeState::Expired
            | TradeState::Cancelled
            | TradeState::Failed => true,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            TradeState::Pending => "PENDING",
            TradeState::Offered => "OFFERED",
            TradeState::Settled => "SETTLED",
            TradeState::Declined => "DECLINED",
            TradeState::Expired => "EXPIRED",
            TradeState::Cancelled => "CANCELLED",
            TradeState::Failed => "FAILED",
        }
    }
}

/// Why settlement was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum FailureReason {
    InsufficientFunds,
    BadSignature,
    NoHandset,
    SpendingCap,
    PayerUnknown,
    CarrierRefusedShop,
}

impl FailureReason {
    pub fn name(self) -> &'static str {
        match self {
            FailureReason::InsufficientFunds => "INSUFFICIENT_FUNDS",
            FailureReason::BadSignature => "BAD_SIGNATURE",
            FailureReason::NoHandset => "NO_HANDSET",
            FailureReason::SpendingCap => "SPENDING_CAP",
            FailureReason::PayerUnknown => "PAYER_UNKNOWN",
            FailureReason::CarrierRefusedShop => "CARRIER_REFUSED_SHOP",
        }
    }
}

/// Something that happens to a trade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TradeEvent {
    /// The carrier acknowledged that the offer reached the handset.
    Delivered,
    /// A validly signed approval with the money available.
    Settle,
    /// A validly signed decline.
    Decline,
    /// The deadline passed.
    Expire,
    /// The shop cancelled.
    Cancel,
    /// Settlement refused.
    Fail(FailureReason),
}

/// The outcome of applying an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Move to this state.
    To(TradeState),
    /// Nothing to change (e.g. a repeated delivery acknowledgement).
    Unchanged,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    #[error("trade is already {}", .0.name())]
    AlreadyFinal(TradeState),
}

/// The whole state machine. Pure: the caller stores the result.
pub fn transition(state: TradeState, event: TradeEvent) -> Result<Transition, TransitionError> {
    use TradeEvent as E;
    use TradeState as S;
    match (state, event) {
        (S::Pending, E::Delivered) => Ok(Transition::To(S::Offered)),
        (S::Offered, E::Delivered) => Ok(Transition::Unchanged),
        (S::Pending | S::Offered, E::Settle) => Ok(Transition::To(S::Settled)),
        (S::Pending | S::Offered, E::Decline) => Ok(Transition::To(S::Declined)),
        (S::Pending | S::Offered, E::Expire) => Ok(Transition::To(S::Expired)),
        (S::Pending | S::Offered, E::Cancel) => Ok(Transition::To(S::Cancelled)),
        (S::Pending | S::Offered, E::Fail(_)) => Ok(Transition::To(S::Failed)),
        // A late delivery receipt for a finished trade is harmless.
        (S::Settled | S::Declined | S::Expired | S::Cancelled | S::Failed, E::Delivered) => Ok(Transition::Unchanged),
        (
            S::Settled | S::Declined | S::Expired | S::Cancelled | S::Failed,
            E::Settle | E::Decline | E::Expire | E::Cancel | E::Fail(_),
        ) => Err(TransitionError::AlreadyFinal(state)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use TradeEvent as E;
    use TradeState as S;

    const EVENTS: [TradeEvent; 6] =
        [E::Delivered, E::Settle, E::Decline, E::Expire, E::Cancel, E::Fail(FailureReason::InsufficientFunds)];

    fn expected(state: TradeState, event: TradeEvent) -> Result<Transition, TransitionError> {
        let to = |s| Ok(Transition::To(s));
        let done = Err(TransitionError::AlreadyFinal(state));
        match (state, event) {
            (S::Pending, E::Delivered) => to(S::Offered),
            (S::Pending | S::Offered, E::Settle) => to(S::Settled),
            (S::Pending | S::Offered, E::Decline) => to(S::Declined),
            (S::Pending | S::Offered, E::Expire) => to(S::Expired),
            (S::Pending | S::Offered, E::Cancel) => to(S::Cancelled),
            (S::Pending | S::Offered, E::Fail(_)) => to(S::Failed),
            (_, E::Delivered) => Ok(Transition::Unchanged),
            (_, _) => done,
        }
    }

    /// Every (state, event) pair, 7 × 6 = 42 rows, against an independent
    /// statement of the rules.
    #[test]
    fn table_of_every_state_and_event() {
        let mut rows = 0;
        for state in S::ALL {
            for event in EVENTS {
                assert_eq!(transition(state, event), expected(state, event), "{state:?} + {event:?}");
                rows += 1;
            }
        }
        assert_eq!(rows, 42);
    }

    #[test]
    fn final_states_never_change() {
        for state in S::ALL.into_iter().filter(|s| s.is_final()) {
            for event in EVENTS {
                match transition(state, event) {
                    Ok(Transition::To(next)) => panic!("{state:?} moved to {next:?} on {event:?}"),
                    Ok(Transition::Unchanged) | Err(_) => {}
                }
            }
        }
    }

    #[test]
    fn open_states_are_exactly_pending_and_offered() {
        let open: Vec<_> = S::ALL.into_iter().filter(|s| !s.is_final()).collect();
        assert_eq!(open, vec![S::Pending, S::Offered]);
    }
}
