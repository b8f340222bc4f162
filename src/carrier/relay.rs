//! The relay-stream gateway: one bounded outgoing queue per connected
//! carrier, fed by the orchestration (live pushes) and by the outbox replay
//! that runs when a carrier connects; and, for carriers in ask mode, the
//! resolve requests waiting for their answers (a bounded map: an answer is
//! taken once, only from the carrier asked, and only while its asker still
//! waits; a stream's end fails the requests it carried).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};

use super::{CarrierGateway, PendingResolve, PushResult, ResolveQuery, ResolveReply, ResolveUnsent};
use crate::domain::{CarrierId, Decision};
use crate::metrics;
use crate::proto;
use crate::store::{Delivery, DeliveryBody};

/// Why the server ends a carrier's relay stream: its last item.
#[derive(Debug)]
pub enum RelayEnd {
    /// A newer stream of the same carrier replaced this one.
    Replaced,
    /// The server is shutting down: the carrier reconnects (to this server
    /// once it is back, or another node) and gets what it had not
    /// acknowledged again.
    ShuttingDown,
    /// The gRPC edge ended it, with the status it made (the carrier's
    /// uplink was refused, or the outbox replay failed).
    Edge(tonic::Status),
}

/// What waits in a relay stream's queue.
pub type RelayItem = Result<proto::RelayDown, RelayEnd>;

pub type RelaySender = mpsc::Sender<RelayItem>;

struct Link {
    id: u64,
    tx: RelaySender,
    /// Set when the queue overflowed, so the stream ends RESOURCE_EXHAUSTED.
    overflowed: Arc<AtomicBool>,
    /// Deliveries pushed live on this link, newest last, at most
    /// [`LIVE_IDS_KEPT`]: an outbox poll skips them (several nodes).
    live: std::collections::VecDeque<u64>,
    live_set: std::collections::HashSet<u64>,
}

/// Live-pushed delivery ids a link remembers for the outbox poll: more
/// than a relay queue holds, so an offer pushed live is not pushed again
/// by the poll while it waits for its acknowledgement.
const LIVE_IDS_KEPT: usize = 8192;

/// A resolve request waiting for its answer.
struct Waiting {
    carrier: CarrierId,
    /// The link that carried the request: its end fails the request.
    link: u64,
    reply: oneshot::Sender<ResolveReply>,
}

type Resolves = Arc<Mutex<HashMap<u64, Waiting>>>;

/// What became of a carrier's resolve answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerFate {
    /// It answered a request of this carrier that still waited.
    Taken,
    /// No such request waits for this carrier: a repeat, a late answer, an
    /// unknown id, or another carrier's request. Nothing happened.
    Ignored,
}

/// The live relay links, at most one per carrier. Lock order: `links`
/// before `resolves`, never the other way.
pub struct RelayHub {
    links: Mutex<HashMap<CarrierId, Link>>,
    resolves: Resolves,
    next_link: AtomicU64,
    /// Request ids start at 1 and are never reused in a process.
    next_resolve: AtomicU64,
    depth: usize,
    max_resolves: usize,
}

impl RelayHub {
    /// A hub whose carriers may each have `depth` messages waiting, and
    /// whose resolve requests (all carriers together) may number at most
    /// `max_resolves` at once.
    pub fn new(depth: usize, max_resolves: usize) -> Self {
        RelayHub {
            links: Mutex::new(HashMap::new()),
            resolves: Arc::new(Mutex::new(HashMap::new())),
            next_link: AtomicU64::new(0),
            next_resolve: AtomicU64::new(1),
            depth: depth.max(1),
            max_resolves: max_resolves.max(1),
        }
    }

    /// Takes a carrier's answer to one of its resolve requests.
    pub fn answer_resolve(&self, carrier: &CarrierId, request_id: u64, reply: ResolveReply) -> AnswerFate {
        let waiting = {
            let mut resolves = lock(&self.resolves);
            match resolves.get(&request_id) {
                Some(w) if &w.carrier == carrier => resolves.remove(&request_id),
                _ => None,
            }
        };
        // The asker may have given up just now; then it is ignored too.
        match waiting.map(|w| w.reply.send(reply)) {
            Some(Ok(())) => AnswerFate::Taken,
            Some(Err(_)) | None => {
                metrics::resolve_answer_ignored();
                AnswerFate::Ignored
            }
        }
    }

    /// Resolve requests waiting now (for tests and the gauge).
    pub fn resolves_waiting(&self) -> usize {
        lock(&self.resolves).len()
    }

    /// The queue depth for a new relay stream's channel.
    pub fn depth(&self) -> usize {
        self.depth
    }

    /// Registers a carrier's new stream, replacing (and so ending) any
    /// earlier one. Returns the link id for `detach`.
    pub fn attach(&self, carrier: &CarrierId, tx: RelaySender, overflowed: Arc<AtomicBool>) -> u64 {
        let id = self.next_link.fetch_add(1, Ordering::Relaxed);
        let old = self.lock().insert(
            carrier.clone(),
            Link { id, tx, overflowed, live: Default::default(), live_set: Default::default() },
        );
        if let Some(old) = old {
            // The old stream's receiver ends when its sender is dropped; tell
            // the carrier why first.
            let _ = old.tx.try_send(Err(RelayEnd::Replaced));
            self.fail_link(carrier, old.id);
        }
        id
    }

    /// Fails every resolve request `link` carried: its answer can no longer
    /// come (the new stream never saw the request).
    fn fail_link(&self, carrier: &CarrierId, link: u64) {
        let failed: Vec<Waiting> = {
            let mut resolves = lock(&self.resolves);
            let ids: Vec<u64> =
                resolves.iter().filter(|(_, w)| &w.carrier == carrier && w.link == link).map(|(id, _)| *id).collect();
            ids.iter().filter_map(|id| resolves.remove(id)).collect()
        };
        for w in failed {
            let _ = w.reply.send(ResolveReply::Disconnected);
        }
    }

    /// Ends the link (if it is still the current one) with `end` as the
    /// stream's last message, e.g. why the carrier's uplink was refused.
    pub fn end(&self, carrier: &CarrierId, link: u64, end: RelayEnd) {
        let mut links = self.lock();
        if links.get(carrier).is_some_and(|l| l.id == link) {
            if let Some(l) = links.remove(carrier) {
                let _ = l.tx.try_send(Err(end));
                self.fail_link(carrier, l.id);
            }
        }
    }

    /// Removes the link if it is still the current one.
    pub fn detach(&self, carrier: &CarrierId, link: u64) {
        let mut links = self.lock();
        if links.get(carrier).is_some_and(|l| l.id == link) {
            links.remove(carrier);
        }
        drop(links);
        // Whether or not it was still current, its requests are over.
        self.fail_link(carrier, link);
    }

    /// Sends a message that is not in the outbox (an answer result). Lost
    /// if the carrier is not connected: the handset may ask again.
    pub fn send_direct(&self, carrier: &CarrierId, message: proto::RelayDown) -> PushResult {
        self.try_send(carrier, message)
    }

    /// Whether `link` of `carrier` pushed delivery `id` live.
    pub fn pushed_live(&self, carrier: &CarrierId, link: u64, id: u64) -> bool {
        self.lock().get(carrier).is_some_and(|l| l.id == link && l.live_set.contains(&id))
    }

    fn try_send(&self, carrier: &CarrierId, message: proto::RelayDown) -> PushResult {
        self.try_send_delivery(carrier, message, None)
    }

    fn try_send_delivery(&self, carrier: &CarrierId, message: proto::RelayDown, id: Option<u64>) -> PushResult {
        let mut links = self.lock();
        let Some(link) = links.get_mut(carrier) else {
            return PushResult::NotConnected;
        };
        match link.tx.try_send(Ok(message)) {
            Ok(()) => {
                if let Some(id) = id {
                    if link.live.len() >= LIVE_IDS_KEPT {
                        if let Some(old) = link.live.pop_front() {
                            link.live_set.remove(&old);
                        }
                    }
                    if link.live_set.insert(id) {
                        link.live.push_back(id);
                    }
                }
                metrics::relay_queue_depth(carrier.as_str(), self.depth.saturating_sub(link.tx.capacity()));
                PushResult::Queued
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                if let Some(link) = links.remove(carrier) {
                    self.fail_link(carrier, link.id);
                }
                PushResult::NotConnected
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(carrier = %carrier, depth = self.depth, "relay queue full; disconnecting");
                metrics::relay_queue_full(carrier.as_str());
                if let Some(link) = links.remove(carrier) {
                    link.overflowed.store(true, Ordering::Release);
                    self.fail_link(carrier, link.id);
                }
                PushResult::Dropped
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<CarrierId, Link>> {
        lock(&self.links)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The wire form of a resolve request.
fn resolve_down(request_id: u64, q: &ResolveQuery) -> proto::RelayDown {
    let body = proto::relay_down::Body::Resolve(proto::ResolveRequest {
        request_id,
        ip: q.ip.to_ip().to_string(),
        port: q.port.map_or(0, u32::from),
        observed_at_ms: i64::try_from(q.observed_at.0).unwrap_or(i64::MAX),
        shop_id: q.shop.as_str().to_owned(),
    });
    proto::RelayDown { delivery_id: 0, body: Some(body) }
}

impl CarrierGateway for RelayHub {
    fn push(&self, delivery: &Delivery) -> PushResult {
        self.try_send_delivery(&delivery.carrier, to_relay_down(delivery), Some(delivery.delivery_id))
    }

    fn is_connected(&self, carrier: &CarrierId) -> bool {
        self.lock().contains_key(carrier)
    }

    fn resolve(&self, carrier: &CarrierId, query: &ResolveQuery) -> Result<PendingResolve, ResolveUnsent> {
        let request_id = self.next_resolve.fetch_add(1, Ordering::Relaxed);
        let (reply_tx, reply_rx) = oneshot::channel();
        // Look up the link, register the request under it and send, all
        // under the links lock, so a stream replaced meanwhile cannot carry
        // a request registered under another link.
        let mut links = self.lock();
        let Some(link) = links.get_mut(carrier) else {
            return Err(ResolveUnsent::NotConnected);
        };
        {
            let mut resolves = lock(&self.resolves);
            if resolves.len() >= self.max_resolves {
                return Err(ResolveUnsent::TooMany);
            }
            resolves.insert(request_id, Waiting { carrier: carrier.clone(), link: link.id, reply: reply_tx });
        }
        let resolves = self.resolves.clone();
        let forget = Box::new(move || {
            lock(&resolves).remove(&request_id);
        });
        // Registered before it is sent, so the quickest answer finds it;
        // dropped on every early return below, which forgets it.
        let pending = PendingResolve::new(request_id, reply_rx, forget);
        match link.tx.try_send(Ok(resolve_down(request_id, query))) {
            Ok(()) => Ok(pending),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                if let Some(l) = links.remove(carrier) {
                    self.fail_link(carrier, l.id);
                }
                Err(ResolveUnsent::NotConnected)
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(carrier = %carrier, depth = self.depth, "relay queue full; disconnecting");
                metrics::relay_queue_full(carrier.as_str());
                if let Some(l) = links.remove(carrier) {
                    l.overflowed.store(true, Ordering::Release);
                    self.fail_link(carrier, l.id);
                }
                Err(ResolveUnsent::NotConnected)
            }
        }
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
            state: proto::TradeState::from(*state) as i32,
        }),
    };
    proto::RelayDown { delivery_id: delivery.delivery_id, body: Some(body) }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::domain::{TradeId, UnixMs};
    use crate::store::DeliveryBody;

    /// A withdrawal delivery for `carrier` (the relay stream's tests use it
    /// too).
    pub(crate) fn withdraw(carrier: &CarrierId, id: u64) -> Delivery {
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

    fn query() -> ResolveQuery {
        ResolveQuery {
            ip: crate::domain::IpKey::parse("198.51.100.7").expect("ip"),
            port: Some(4711),
            observed_at: UnixMs(1_700_000_000_000),
            shop: crate::domain::ShopId::parse("acme").expect("shop"),
        }
    }

    /// A resolve request goes on the carrier's live queue with delivery id
    /// 0 and exactly the query's fields; only its own carrier's first
    /// answer is taken; repeats, strangers and late answers are ignored;
    /// a dropped request is forgotten; the map is bounded; a link's end
    /// fails what it carried.
    #[tokio::test]
    async fn resolve_requests_are_answered_once_by_their_own_carrier() {
        let hub = RelayHub::new(8, 2);
        let (docomo, kddi) = (CarrierId::parse("docomo").expect("id"), CarrierId::parse("kddi").expect("id"));
        assert_eq!(hub.resolve(&docomo, &query()).err(), Some(ResolveUnsent::NotConnected));
        let (tx, mut rx) = mpsc::channel(hub.depth());
        let link = hub.attach(&docomo, tx, Arc::new(AtomicBool::new(false)));
        let mut first = hub.resolve(&docomo, &query()).expect("sent");
        let Some(Ok(down)) = rx.recv().await else { panic!("nothing queued") };
        let Some(proto::relay_down::Body::Resolve(r)) = down.body else { panic!("not a resolve request") };
        assert_eq!(down.delivery_id, 0);
        assert_eq!(
            r,
            proto::ResolveRequest {
                request_id: first.request_id,
                ip: "198.51.100.7".into(),
                port: 4711,
                observed_at_ms: 1_700_000_000_000,
                shop_id: "acme".into()
            }
        );
        let alice = crate::domain::SubscriberNumber::parse("+818012345678").expect("number");
        let found = ResolveReply::Found(alice);
        assert_eq!(hub.answer_resolve(&kddi, first.request_id, found.clone()), AnswerFate::Ignored);
        assert_eq!(hub.answer_resolve(&docomo, first.request_id, found.clone()), AnswerFate::Taken);
        assert_eq!(hub.answer_resolve(&docomo, first.request_id, ResolveReply::Miss), AnswerFate::Ignored);
        assert_eq!((&mut first.reply).await, Ok(found));
        assert_eq!(hub.answer_resolve(&docomo, 9_999, ResolveReply::Miss), AnswerFate::Ignored);
        // Dropping a request (a timeout) forgets it: its answer is late.
        let late = hub.resolve(&docomo, &query()).expect("sent");
        let late_id = late.request_id;
        assert_eq!(hub.resolves_waiting(), 1);
        drop(late);
        assert_eq!(hub.resolves_waiting(), 0, "a dropped request is forgotten");
        drop(first);
        assert_eq!(hub.answer_resolve(&docomo, late_id, ResolveReply::Miss), AnswerFate::Ignored);
        // Bounded: two wait at most; the link's end fails both at once.
        let mut a = hub.resolve(&docomo, &query()).expect("sent");
        let mut b = hub.resolve(&docomo, &query()).expect("sent");
        assert_eq!(hub.resolve(&docomo, &query()).err(), Some(ResolveUnsent::TooMany));
        hub.detach(&docomo, link);
        assert_eq!((&mut a.reply).await, Ok(ResolveReply::Disconnected));
        assert_eq!((&mut b.reply).await, Ok(ResolveReply::Disconnected));
        assert_eq!(hub.resolve(&docomo, &query()).err(), Some(ResolveUnsent::NotConnected));
    }

    /// Keeps the last value each gauge was set to, by metric name.
    #[derive(Default)]
    struct Gauges(Arc<Mutex<HashMap<String, f64>>>);

    struct GaugeCell {
        name: String,
        values: Arc<Mutex<HashMap<String, f64>>>,
    }

    impl ::metrics::GaugeFn for GaugeCell {
        fn increment(&self, value: f64) {
            *self.values.lock().expect("lock").entry(self.name.clone()).or_default() += value;
        }
        fn decrement(&self, value: f64) {
            *self.values.lock().expect("lock").entry(self.name.clone()).or_default() -= value;
        }
        fn set(&self, value: f64) {
            self.values.lock().expect("lock").insert(self.name.clone(), value);
        }
    }

    impl ::metrics::Recorder for Gauges {
        fn describe_counter(&self, _: ::metrics::KeyName, _: Option<::metrics::Unit>, _: ::metrics::SharedString) {}
        fn describe_gauge(&self, _: ::metrics::KeyName, _: Option<::metrics::Unit>, _: ::metrics::SharedString) {}
        fn describe_histogram(&self, _: ::metrics::KeyName, _: Option<::metrics::Unit>, _: ::metrics::SharedString) {}
        fn register_counter(&self, _: &::metrics::Key, _: &::metrics::Metadata<'_>) -> ::metrics::Counter {
            ::metrics::Counter::noop()
        }
        fn register_gauge(&self, key: &::metrics::Key, _: &::metrics::Metadata<'_>) -> ::metrics::Gauge {
            ::metrics::Gauge::from_arc(Arc::new(GaugeCell { name: key.name().to_owned(), values: self.0.clone() }))
        }
        fn register_histogram(&self, _: &::metrics::Key, _: &::metrics::Metadata<'_>) -> ::metrics::Histogram {
            ::metrics::Histogram::noop()
        }
    }

    /// The queue-depth gauge counts the messages waiting in the queue the
    /// hub was built with, whatever `relay_queue_depth` is configured to.
    #[test]
    fn the_queue_depth_gauge_counts_what_waits_in_a_configured_queue() {
        let gauges = Gauges::default();
        let hub = RelayHub::new(8, 8);
        let carrier = CarrierId::parse("docomo").expect("valid");
        let (tx, _rx) = mpsc::channel(hub.depth());
        hub.attach(&carrier, tx, Arc::new(AtomicBool::new(false)));
        ::metrics::with_local_recorder(&gauges, || {
            for (id, waiting) in [(1, 1.0), (2, 2.0), (3, 3.0)] {
                assert_eq!(hub.push(&withdraw(&carrier, id)), PushResult::Queued);
                let depth = gauges.0.lock().expect("lock").get("syncpay_relay_queue_depth").copied();
                assert_eq!(depth, Some(waiting), "after {id} pushes into a queue of 8");
            }
        });
    }
}
