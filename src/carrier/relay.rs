//! The relay-stream gateway: one bounded outgoing queue per connected
//! carrier, fed by the orchestration (live pushes) and by the outbox replay
//! that runs when a carrier connects.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::sync::mpsc;
use tonic::Status;

use super::{CarrierGateway, PushResult};
use crate::domain::{CarrierId, Decision};
use crate::proto;
use crate::store::{Delivery, DeliveryBody};
use crate::sync_server::metrics;

/// Live messages waiting for one carrier's stream. A carrier that falls
/// this far behind live traffic is disconnected and catches up from the
/// outbox on reconnect (the catch-up itself has its own buffer,
/// [`REPLAY_BUFFER`], and never counts against this).
pub const RELAY_QUEUE_DEPTH: usize = 1024;

pub type RelaySender = mpsc::Sender<Result<proto::RelayDown, Status>>;

struct Link {
    id: u64,
    tx: RelaySender,
    /// Set when the queue overflowed, so the stream ends RESOURCE_EXHAUSTED.
    overflowed: Arc<AtomicBool>,
}

/// The live relay links, at most one per carrier.
pub struct RelayHub {
    links: Mutex<HashMap<CarrierId, Link>>,
    next_link: AtomicU64,
    depth: usize,
}

impl Default for RelayHub {
    fn default() -> Self {
        RelayHub::new(RELAY_QUEUE_DEPTH)
    }
}

/// The status a relay stream ends with when its queue overflowed.
pub fn queue_overflow(depth: usize) -> Status {
    Status::resource_exhausted(format!(
        "relay queue depth: more than {depth} messages waited for this carrier; reconnect to resume from the outbox"
    ))
}

/// The status a relay stream ends with when the server shuts down: a
/// carrier reconnects (to this server once it is back, or another node),
/// and what it had not acknowledged is replayed.
pub fn shutting_down() -> Status {
    Status::unavailable("server is shutting down; reconnect, and unacknowledged messages are sent again")
}

impl RelayHub {
    /// A hub whose carriers may each have `depth` messages waiting.
    pub fn new(depth: usize) -> Self {
        RelayHub { links: Mutex::new(HashMap::new()), next_link: AtomicU64::new(0), depth: depth.max(1) }
    }

    /// The queue depth for a new relay stream's channel.
    pub fn depth(&self) -> usize {
        self.depth
    }

    /// Registers a carrier's new stream, replacing (and so ending) any
    /// earlier one. Returns the link id for `detach`.
    pub fn attach(&self, carrier: &CarrierId, tx: RelaySender, overflowed: Arc<AtomicBool>) -> u64 {
        let id = self.next_link.fetch_add(1, Ordering::Relaxed);
        let old = self.lock().insert(carrier.clone(), Link { id, tx, overflowed });
        if let Some(old) = old {
            // The old stream's receiver ends when its sender is dropped; tell
            // the carrier why first.
            let _ = old.tx.try_send(Err(Status::aborted("replaced by a newer relay stream of this carrier")));
        }
        id
    }

    /// Ends the link (if it is still the current one) with `status` as the
    /// stream's last message, e.g. why the carrier's uplink was refused.
    pub fn end(&self, carrier: &CarrierId, link: u64, status: Status) {
        let mut links = self.lock();
        if links.get(carrier).is_some_and(|l| l.id == link) {
            if let Some(l) = links.remove(carrier) {
                let _ = l.tx.try_send(Err(status));
            }
        }
    }

    /// Removes the link if it is still the current one.
    pub fn detach(&self, carrier: &CarrierId, link: u64) {
        let mut links = self.lock();
        if links.get(carrier).is_some_and(|l| l.id == link) {
            links.remove(carrier);
        }
    }

    /// Sends a message that is not in the outbox (an answer result). Lost
    /// if the carrier is not connected: the handset may ask again.
    pub fn send_direct(&self, carrier: &CarrierId, message: proto::RelayDown) -> PushResult {
        self.try_send(carrier, message)
    }

    fn try_send(&self, carrier: &CarrierId, message: proto::RelayDown) -> PushResult {
        let mut links = self.lock();
        let Some(link) = links.get(carrier) else {
            return PushResult::NotConnected;
        };
        match link.tx.try_send(Ok(message)) {
            Ok(()) => {
                metrics::relay_queue_depth(carrier.as_str(), RELAY_QUEUE_DEPTH.saturating_sub(link.tx.capacity()));
                PushResult::Queued
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                links.remove(carrier);
                PushResult::NotConnected
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(carrier = %carrier, depth = self.depth, "relay queue full; disconnecting");
                metrics::relay_queue_full(carrier.as_str());
                if let Some(link) = links.remove(carrier) {
                    link.overflowed.store(true, Ordering::Release);
                }
                PushResult::Dropped
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<CarrierId, Link>> {
        self.links.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl CarrierGateway for RelayHub {
    fn push(&self, delivery: &Delivery) -> PushResult {
        self.try_send(&delivery.carrier, to_relay_down(delivery))
    }

    fn is_connected(&self, carrier: &CarrierId) -> bool {
        self.lock().contains_key(carrier)
    }
}

/// Replayed outbox messages read ahead of the carrier on a new stream.
/// The replay waits for room here (it is paced by the carrier, however
/// long the outbox), so this bounds memory, not the outbox.
pub const REPLAY_BUFFER: usize = 64;

/// A relay stream's outgoing side. Two sources: the live queue the hub
/// feeds (bounded, never waited on: a full one means the carrier does not
/// keep up with live traffic), and the outbox replay of a new stream (its
/// own channel, which the replay waits on). Live messages go first, so a
/// catch-up however long never fills the live queue. The stream ends when
/// the hub lets go of the live queue; if that was because it overflowed,
/// with `RESOURCE_EXHAUSTED` naming the limit (instead of a silent end).
pub struct RelayDownStream {
    live: mpsc::Receiver<Result<proto::RelayDown, Status>>,
    /// `None` once the replay has sent everything.
    replay: Option<mpsc::Receiver<Result<proto::RelayDown, Status>>>,
    overflowed: Arc<AtomicBool>,
    depth: usize,
    done: bool,
}

impl RelayDownStream {
    pub fn new(
        live: mpsc::Receiver<Result<proto::RelayDown, Status>>,
        replay: mpsc::Receiver<Result<proto::RelayDown, Status>>,
        overflowed: Arc<AtomicBool>,
        depth: usize,
    ) -> Self {
        RelayDownStream { live, replay: Some(replay), overflowed, depth, done: false }
    }
}

impl futures_core::Stream for RelayDownStream {
    type Item = Result<proto::RelayDown, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        match self.live.poll_recv(cx) {
            Poll::Ready(Some(item)) => return Poll::Ready(Some(item)),
            Poll::Ready(None) => {
                self.done = true;
                if self.overflowed.load(Ordering::Acquire) {
                    return Poll::Ready(Some(Err(queue_overflow(self.depth))));
                }
                return Poll::Ready(None);
            }
            Poll::Pending => {}
        }
        // Nothing live: the replay, if it is still going. Its end is not
        // the stream's (the live receiver's waker is registered above).
        if let Some(replay) = self.replay.as_mut() {
            match replay.poll_recv(cx) {
                Poll::Ready(Some(item)) => return Poll::Ready(Some(item)),
                Poll::Ready(None) => self.replay = None,
                Poll::Pending => {}
            }
        }
        Poll::Pending
    }
}

/// The wire form of an outbox delivery. An offer carries the exact bytes
/// to sign for each decision, built from the same fields it shows.
pub fn to_relay_down(delivery: &Delivery) -> proto::RelayDown {
    let body = match &delivery.body {
        DeliveryBody::Offer(o) | DeliveryBody::OfferV1(o) => {
            let version = delivery.body.offer().map_or(2, |(_, v)| v);
            let payload = |decision| match o.approval_payload(version, decision) {
                Some(p) => p.to_bytes(),
                None => {
                    // A malformed stored binding code: nothing to sign, so a
                    // handset that compares refuses the offer.
                    tracing::error!(trade_id = %o.trade, "offer with a malformed binding code");
                    Vec::new()
                }
            };
            proto::relay_down::Body::Offer(proto::Offer {
                trade_id: o.trade.to_string(),
                subscriber_number: o.payer.as_str().to_owned(),
                shop_id: o.shop.as_str().to_owned(),
                shop_name: o.shop_name.clone(),
                register_id: o.register.to_string(),
                register_label: o.register_label.clone(),
                amount_minor: o.amount.minor(),
                currency: o.currency.code().to_owned(),
                description: o.description.clone(),
                expires_at_ms: i64::try_from(o.expires_at.0).unwrap_or(i64::MAX),
                binding_code: o.binding_code.clone(),
                payload_version: u32::from(version),
                approve_payload: payload(Decision::Approve),
                decline_payload: payload(Decision::Decline),
            })
        }
        DeliveryBody::Withdraw { trade, payer, state } => proto::relay_down::Body::Withdraw(proto::Withdraw {
            trade_id: trade.to_string(),
            subscriber_number: payer.as_str().to_owned(),
            state: crate::sync_server::convert::state_to_proto(*state) as i32,
        }),
    };
    proto::RelayDown { delivery_id: delivery.delivery_id, body: Some(body) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{TradeId, UnixMs};
    use crate::store::DeliveryBody;
    use tokio_stream::StreamExt;

    fn withdraw(carrier: &CarrierId, id: u64) -> Delivery {
        Delivery {
            delivery_id: id,
            carrier: carrier.clone(),
            body: DeliveryBody::Withdraw {
                trade: TradeId::from_bytes([1; 16]),
                payer: crate::domain::SubscriberNumber::parse("+818012345678").expect("valid"),
                state: crate::domain::TradeState::Cancelled,
            },
        }
    }

    #[test]
    fn offers_carry_the_bytes_of_their_version() {
        let body = crate::store::OfferBody {
            trade: TradeId::from_bytes([1; 16]),
            payer: crate::domain::SubscriberNumber::parse("+818012345678").expect("valid"),
            shop: crate::domain::ShopId::parse("acme").expect("shop"),
            shop_name: "Acme".into(),
            register: crate::domain::RegisterId::from_bytes([2; 16]),
            register_label: "Front".into(),
            amount: crate::domain::Amount::new(1200),
            currency: crate::domain::Currency::parse("JPY").expect("jpy"),
            description: "Book".into(),
            expires_at: UnixMs(1_700_000_000_000),
            binding_code: "123456".into(),
        };
        let carrier = CarrierId::parse("docomo").expect("valid");
        for (delivery, version) in [(DeliveryBody::Offer(body.clone()), 2u8), (DeliveryBody::OfferV1(body.clone()), 1)]
        {
            let down = to_relay_down(&Delivery { delivery_id: 7, carrier: carrier.clone(), body: delivery });
            let Some(proto::relay_down::Body::Offer(o)) = down.body else { panic!("not an offer") };
            assert_eq!(o.payload_version, u32::from(version));
            let approve = body.approval_payload(version, Decision::Approve).expect("payload").to_bytes();
            let decline = body.approval_payload(version, Decision::Decline).expect("payload").to_bytes();
            assert_eq!(
                (o.approve_payload[16], o.approve_payload.clone(), o.decline_payload),
                (version, approve, decline)
            );
        }
    }

    #[tokio::test]
    async fn live_messages_go_before_the_replay_whose_end_is_not_the_streams() {
        let carrier = CarrierId::parse("docomo").expect("valid");
        let (live_tx, live_rx) = mpsc::channel(4);
        let (replay_tx, replay_rx) = mpsc::channel(4);
        for id in [1, 2] {
            replay_tx.send(Ok(to_relay_down(&withdraw(&carrier, id)))).await.expect("room");
        }
        drop(replay_tx);
        live_tx.send(Ok(to_relay_down(&withdraw(&carrier, 9)))).await.expect("room");
        let mut stream = RelayDownStream::new(live_rx, replay_rx, Arc::new(AtomicBool::new(false)), 4);
        let mut ids = Vec::new();
        for _ in 0..3 {
            ids.push(stream.next().await.expect("item").expect("ok").delivery_id);
        }
        assert_eq!(ids, [9, 1, 2]);
        // The replay is over; the stream waits for live messages.
        let pending = tokio::time::timeout(std::time::Duration::from_millis(20), stream.next()).await;
        assert!(pending.is_err(), "the replay's end ended the stream: {pending:?}");
        live_tx.send(Ok(to_relay_down(&withdraw(&carrier, 10)))).await.expect("room");
        assert_eq!(stream.next().await.expect("item").expect("ok").delivery_id, 10);
        drop(live_tx);
        assert!(stream.next().await.is_none(), "the live queue's end is the stream's");
    }

    #[tokio::test]
    async fn a_full_relay_queue_ends_the_stream_resource_exhausted_naming_the_limit() {
        let _ = UnixMs(0);
        let hub = RelayHub::new(2);
        let carrier = CarrierId::parse("docomo").expect("valid");
        let (tx, rx) = mpsc::channel(hub.depth());
        let overflowed = Arc::new(AtomicBool::new(false));
        hub.attach(&carrier, tx, overflowed.clone());
        assert_eq!(hub.push(&withdraw(&carrier, 1)), PushResult::Queued);
        assert_eq!(hub.push(&withdraw(&carrier, 2)), PushResult::Queued);
        assert_eq!(hub.push(&withdraw(&carrier, 3)), PushResult::Dropped);
        assert!(!hub.is_connected(&carrier));
        let (_replay_tx, replay_rx) = mpsc::channel(1);
        let items: Vec<_> = RelayDownStream::new(rx, replay_rx, overflowed, 2).collect().await;
        assert_eq!(items.len(), 3);
        assert!(items[..2].iter().all(|i| i.is_ok()));
        let status = items[2].as_ref().expect_err("ends with the limit");
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(status.message().starts_with("relay queue depth: more than 2 messages"), "{}", status.message());
    }
}
