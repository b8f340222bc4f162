//! What the simulated carrier and its handsets saw and did: the transcript
//! events ("who saw what" in the demo) and the counters tests assert on.

use crate::domain::{Amount, Currency, Decision, ShopId, SubscriberNumber, TradeId, UnixMs};
use crate::proto;

/// One thing that happened at the carrier or on a handset. Subscriber
/// numbers print masked in `Debug`; use `as_str()` where the carrier may
/// show them in full.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SimEvent {
    /// A relay stream was opened (`connection` counts from 1).
    RelayConnected { connection: u64 },
    /// The relay stream ended; the simulator reconnects.
    RelayLost { connection: u64, reason: String },
    /// A handset put an offer on its screen.
    OfferShown {
        number: SubscriberNumber,
        trade_id: TradeId,
        shop_id: ShopId,
        shop_name: String,
        register_label: String,
        amount: Amount,
        currency: Currency,
        description: String,
        binding_code: String,
        expires_at: UnixMs,
    },
    /// An offer was acknowledged but not shown (unreadable fields, no
    /// handset for the number, already withdrawn).
    OfferIgnored { number: Option<SubscriberNumber>, trade_id: String, reason: String },
    /// A handset sent an answer. `signature_valid` is false when the policy
    /// corrupted it on purpose.
    Answered { number: SubscriberNumber, trade_id: TradeId, decision: Decision, signature_valid: bool },
    /// The server took an offer off a handset's screen.
    Withdrawn { number: Option<SubscriberNumber>, trade_id: TradeId, state: proto::TradeState },
    /// The server's verdict on an answer.
    AnswerResult(AnswerOutcome),
}

/// The server's verdict on one handset answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnswerOutcome {
    pub trade_id: TradeId,
    /// True when the answer moved the trade to a final state.
    pub accepted: bool,
    pub state: proto::TradeState,
    pub failure_reason: proto::FailureReason,
    /// Why the answer was not taken, when it was not.
    pub message: String,
}

/// Running totals since the simulator started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimCounters {
    /// Relay streams opened.
    pub connections: u64,
    /// Offers received, including duplicates and ignored ones.
    pub offers_received: u64,
    /// Offers for a trade a handset had already shown (redeliveries).
    pub offers_duplicate: u64,
    /// Offers acknowledged but not shown.
    pub offers_ignored: u64,
    /// Withdrawals received, including duplicates.
    pub withdraws_received: u64,
    pub answer_results_received: u64,
    /// Acknowledgements sent into the network (the fault layer may still
    /// lose them).
    pub acks_sent: u64,
    /// Answers the handsets planned (resends included). While some wait
    /// for their time, this is ahead of `answers_sent + answers_dropped`.
    pub answers_planned: u64,
    /// Answers the handsets sent into the network (`AnswerTwice` counts
    /// two); the fault layer may still lose them.
    pub answers_sent: u64,
    /// Delayed answers dropped because too many were already waiting.
    pub answers_dropped: u64,
    /// Answers sent again because their offer was redelivered (with
    /// `SimConfig::reanswer_on_redelivery`); also counted in `answers_sent`.
    pub answers_resent: u64,
    /// What the fault layer did to acks going up.
    pub ack_faults: FaultCounters,
    /// What the fault layer did to answers going up.
    pub answer_faults: FaultCounters,
    /// What the fault layer did to messages coming down.
    pub down_faults: FaultCounters,
    /// Resolve requests received (ask mode).
    pub resolves_received: u64,
    /// Resolve answers sent into the network (a `Twice` policy counts two).
    pub resolves_answered: u64,
    /// Relay streams cut on purpose (by a fault or `CarrierSim::disconnect`).
    pub disconnects: u64,
    /// Messages the fault layer lost because the stream broke while they
    /// were in flight (delayed or held, or the message it broke on). Not
    /// counted: what the gRPC transport had buffered in either direction,
    /// which a break loses too, as a real one would.
    pub lost_in_flight: u64,
}

/// What the fault layer did to one kind of message. A message can be
/// duplicated and then each copy delayed or held, so these overlap.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultCounters {
    pub dropped: u64,
    pub duplicated: u64,
    pub delayed: u64,
    /// Held back for reordering.
    pub held: u64,
    /// Would have been delayed, but the lane was full: sent at once.
    pub over_cap: u64,
}

impl FaultCounters {
    /// Faults that changed what or when the other side received.
    pub fn total(&self) -> u64 {
        self.dropped + self.duplicated + self.delayed + self.held
    }
}
