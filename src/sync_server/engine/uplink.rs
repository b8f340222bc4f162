//! What a carrier's relay stream sends and receives: acknowledgements of
//! deliveries, handsets' answers, and the outbox replayed when it connects.
//! Uplink messages are queued in arrival order (so one stream's messages
//! apply in order) and each finishes, durable, in a future of its own.

use std::future::Future;
use std::sync::Arc;

use tracing::Instrument;

use crate::domain::{CarrierId, Decision, TradeId, UnixMs};
use crate::metrics;
use crate::store::{AnswerOutcome, AnswerRefusal, Delivery, Failure, HandsetAnswer, NoRefusal, RejectedAnswer, Remote};

use super::{now, Engine, EngineError};

/// A handset's answer with its signature checked (and, for a valid
/// approval, the receipt countersigned) by [`Engine::check_answer`]: the
/// time it was taken at is the answer's time.
#[derive(Debug)]
pub struct CheckedAnswer(HandsetAnswer);

impl Engine {
    /// Queues the carrier's acknowledgement of a delivery; the returned
    /// future resolves once it is durable.
    /// `at` is when the acknowledgement arrived.
    pub async fn begin_ack(
        &self,
        carrier: &CarrierId,
        delivery_id: u64,
        at: UnixMs,
    ) -> Result<impl Future<Output = Result<(), EngineError<NoRefusal>>> + Send + 'static, EngineError<NoRefusal>> {
        let pending = self.store.submit_ack(carrier, delivery_id, at).await?;
        Ok(async move {
            pending.outcome().await?;
            Ok(())
        })
    }

    /// Verifies a handset's answer and, for a valid approval, countersigns
    /// its receipt, ahead of [`Engine::begin_checked_answer`]. Ed25519
    /// verification and the countersignature are the costliest steps of an
    /// answer: done here, off the store's writer (which reuses them if
    /// nothing changed in between), and for several answers of one relay
    /// stream at once on different cores (`carrier_service`), while the
    /// answers are still queued in arrival order. `at` is when the answer
    /// arrived: the time it is judged at (late or not) and the receipt's.
    /// Messages of one stream that arrived together share their time, so
    /// each trade's events keep the order of their times (an ack queued
    /// before an answer is never later than it).
    pub async fn check_answer(
        &self,
        carrier: &CarrierId,
        trade: TradeId,
        decision: Decision,
        signature: Vec<u8>,
        at: UnixMs,
    ) -> CheckedAnswer {
        let signer = self.receipts.signer();
        let checked = self.store.check_answer(carrier, &trade, decision, &signature, &signer, at).await;
        CheckedAnswer(HandsetAnswer { carrier: carrier.clone(), trade, decision, signature, now: at, checked, signer })
    }

    /// Queues a handset's answer (ordered like `begin_ack`); the returned
    /// future resolves once it is durable and its effects are sent: the
    /// trade settled, declined or failed, or the answer refused with the
    /// reason (late, unknown, already final).
    pub async fn begin_answer(
        self: &Arc<Self>,
        carrier: &CarrierId,
        trade: TradeId,
        decision: Decision,
        signature: Vec<u8>,
    ) -> Result<
        impl Future<Output = Result<AnswerOutcome, EngineError<AnswerRefusal>>> + Send + 'static,
        EngineError<AnswerRefusal>,
    > {
        let checked = self.check_answer(carrier, trade, decision, signature, now()).await;
        self.begin_checked_answer(checked).await
    }

    /// As [`Engine::begin_answer`], for an answer already checked.
    pub async fn begin_checked_answer(
        self: &Arc<Self>,
        answer: CheckedAnswer,
    ) -> Result<
        impl Future<Output = Result<AnswerOutcome, EngineError<AnswerRefusal>>> + Send + 'static,
        EngineError<AnswerRefusal>,
    > {
        let CheckedAnswer(answer) = answer;
        let (carrier, trade, decision) = (answer.carrier.clone(), answer.trade, answer.decision);
        let pending = self.store.submit_answer(answer).await?;
        let engine = self.clone();
        // The settlement path: everything logged until the outcome is sent
        // carries the trade id.
        let span = tracing::info_span!("answer", trade_id = %trade, carrier = %carrier, ?decision);
        Ok(async move {
            let outcome = pending.outcome().await?;
            match (&outcome.rejected, &outcome.trade) {
                (None, Some(t)) => {
                    metrics::trade_finished(t);
                    tracing::info!(state = t.state.name(), failure = ?t.failure, "handset answer taken")
                }
                (Some(RejectedAnswer::Expired), Some(t)) => {
                    // This commit expired the trade.
                    metrics::trade_finished(t);
                    tracing::info!(rejected = "expired", "handset answer came after the deadline")
                }
                (Some(why), _) => tracing::info!(rejected = ?why, "handset answer refused"),
                (None, None) => {}
            }
            engine.settled_effects(outcome.trade.as_ref(), &outcome.deliveries);
            Ok(outcome)
        }
        .instrument(span))
    }

    /// Whether other nodes write to the same store, so that outbox work
    /// for this node's relays may be committed elsewhere.
    pub fn store_has_other_writers(&self) -> bool {
        self.store.other_writers()
    }

    /// As [`Engine::outbox`], for a relay about to push what it gets: only
    /// what no other node's relay holds, now held for this node
    /// (`Trades::claim_outbox`).
    pub async fn claim_outbox(&self, carrier: &CarrierId, after: u64, limit: usize) -> Result<Vec<Delivery>, Failure> {
        self.store.claim_outbox(carrier, after, limit, now()).await
    }

    /// A relay of `carrier` attached to this node, or left it.
    pub fn relay_attached(&self, carrier: &CarrierId, attached: bool) {
        self.store.relay_attached(carrier, attached);
    }

    /// How this node hears of other nodes' commits, if others write.
    pub fn remote(&self) -> Option<Remote> {
        self.store.remote()
    }

    /// A page of the carrier's unacknowledged deliveries with ids above
    /// `after`, for the replay when its relay connects.
    pub async fn outbox(&self, carrier: &CarrierId, after: u64, limit: usize) -> Result<Vec<Delivery>, Failure> {
        self.store.outbox(carrier, after, limit).await
    }
}
