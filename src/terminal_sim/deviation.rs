//! Deliberate breaches of the carrier contract (docs/CARRIER.md), one at a
//! time, so that a conformance check can be shown to name each fault
//! (`tests/carrier_conformance.rs`). Off unless a test sets one in
//! [`SimConfig::deviation`](super::SimConfig); no command sets one.

/// One way the simulated relay breaks the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deviation {
    /// Never acknowledges anything.
    NeverAck,
    /// Acknowledges each message with its delivery id plus one.
    AckWrongId,
    /// Keeps no memory of trades: every offer message is shown as new
    /// (redeliveries included) and withdrawals are forgotten.
    Forgetful,
    /// Acknowledges withdrawals but otherwise ignores them: the offer
    /// stays on the screen and a later copy of it is shown.
    IgnoreWithdrawals,
    /// Signs a payload rebuilt from the offer's display texts trimmed of
    /// spaces, instead of the bytes the offer carries.
    SignTrimmedText,
    /// Gives up when the stream ends instead of reconnecting.
    NoReconnect,
}
