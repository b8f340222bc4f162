//! `CarrierService`: the relay stream and subscriber/handset enrollment.
//! A carrier acts only on its own subscribers, its own deliveries and its
//! own resolve requests.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_core::Stream;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tonic::{Request, Response, Status, Streaming};

use crate::carrier::relay::{to_relay_down, AnswerFate, RelayEnd, RelayHub, RelayItem};
use crate::carrier::ResolveReply;
use crate::domain::approval::key_sha256;
use crate::domain::{CarrierId, Decision, TradeId, UnixMs};
use crate::metrics;
use crate::proto::{self, carrier_service_server::CarrierService};
use crate::store::{Funding, RejectedAnswer, RemoteChange};

use super::auth;
use super::convert;
use super::engine::{self, stopped, Engine};
use super::error::{self, ApiError};
use super::limits;
use super::requests::{self, Uplink};

pub struct CarrierApi {
    engine: Arc<Engine>,
    hub: Arc<RelayHub>,
    shutdown: watch::Receiver<bool>,
}

impl CarrierApi {
    pub fn new(engine: Arc<Engine>, hub: Arc<RelayHub>, shutdown: watch::Receiver<bool>) -> Self {
        CarrierApi { engine, hub, shutdown }
    }
}

type RelayStream = Pin<Box<dyn Stream<Item = Result<proto::RelayDown, Status>> + Send>>;

/// One message read from a carrier's relay stream, parsed, and (for a
/// well-formed answer) its signature checked ahead of queueing.
struct Read {
    message: proto::RelayUp,
    parsed: Result<Uplink, ApiError>,
    checked: Option<engine::CheckedAnswer>,
    permit: OwnedSemaphorePermit,
}

/// At most this many relay messages that had already arrived are read
/// together, so that their answers' signatures are checked on every core.
const RELAY_READ_BATCH: usize = 32;

fn read_one(message: proto::RelayUp, permit: OwnedSemaphorePermit) -> Read {
    let parsed = requests::relay_up(&message);
    Read { message, parsed, checked: None, permit }
}

/// Checks the signatures of a batch's answers: the latter half in a task
/// of its own (another core, when one is free), the former half here, so
/// one carrier's answers are not verified one at a time by its stream's
/// task. One spawn per batch, none for a batch with a single answer (the
/// common case under light load, which stays as cheap as before).
async fn check_answers(engine: &Arc<Engine>, carrier: &CarrierId, batch: &mut [Read], at: UnixMs) {
    let answers: Vec<(usize, TradeId, Decision, Vec<u8>)> = batch
        .iter()
        .enumerate()
        .filter_map(|(i, r)| match &r.parsed {
            Ok(Uplink::Answer { trade, decision, signature }) => Some((i, *trade, *decision, signature.to_vec())),
            _ => None,
        })
        .collect();
    let mut here = answers;
    let ahead = here.split_off(here.len() / 2);
    let (ahead, elsewhere) = if here.is_empty() {
        (ahead, None)
    } else {
        let (engine, carrier) = (engine.clone(), carrier.clone());
        let task = tokio::spawn(async move {
            let mut done = Vec::with_capacity(ahead.len());
            for (i, trade, decision, signature) in ahead {
                done.push((i, engine.check_answer(&carrier, trade, decision, signature, at).await));
            }
            done
        });
        (Vec::new(), Some(task))
    };
    let mut done = Vec::with_capacity(here.len() + ahead.len());
    for (i, trade, decision, signature) in here.into_iter().chain(ahead) {
        done.push((i, engine.check_answer(carrier, trade, decision, signature, at).await));
    }
    if let Some(task) = elsewhere {
        // A check that did not finish (its task panicked, or the runtime is
        // stopping) leaves its answer unchecked: the writer verifies it.
        if let Ok(more) = task.await {
            done.extend(more);
        }
    }
    for (i, checked) in done {
        if let Some(read) = batch.get_mut(i) {
            read.checked = Some(checked);
        }
    }
}

/// Queues one message from a carrier's relay stream (in arrival order) and
/// returns the work that finishes it once it is durable.
async fn begin_up(
    engine: &Arc<Engine>,
    hub: &Arc<RelayHub>,
    carrier: &CarrierId,
    message: proto::RelayUp,
    parsed: Result<Uplink, ApiError>,
    checked: Option<engine::CheckedAnswer>,
    at: UnixMs,
) -> Result<Pin<Box<dyn std::future::Future<Output = Result<(), ApiError>> + Send>>, ApiError> {
    let uplink = match parsed {
        Ok(u) => u,
        Err(e) => {
            // A malformed answer is answered, naming the field, so the
            // carrier can tell its handset; the trade is untouched.
            if let Some(proto::relay_up::Body::Answer(answer)) = &message.body {
                let result = proto::AnswerResult {
                    trade_id: answer.trade_id.chars().take(limits::MAX_ECHOED_ID_CHARS).collect(),
                    accepted: false,
                    state: proto::TradeState::Unspecified as i32,
                    failure_reason: proto::FailureReason::Unspecified as i32,
                    message: e.to_string(),
                };
                let down =
                    proto::RelayDown { delivery_id: 0, body: Some(proto::relay_down::Body::AnswerResult(result)) };
                hub.send_direct(carrier, down);
            }
            return Err(e);
        }
    };
    match uplink {
        Uplink::Resolved { request_id, reply } => {
            // Nothing to make durable: the waiting CreateTrade takes it (or
            // nobody does, and it is ignored). No reply on the stream.
            if let ResolveReply::Malformed(why) = &reply {
                tracing::debug!(carrier = %carrier, request_id, why, "malformed resolve answer");
            }
            if hub.answer_resolve(carrier, request_id, reply) == AnswerFate::Ignored {
                tracing::debug!(carrier = %carrier, request_id, "resolve answer ignored (repeated, late or unknown)");
            }
            Ok(Box::pin(async { Ok(()) }))
        }
        Uplink::Ack { delivery_id } => {
            let pending = engine.begin_ack(carrier, delivery_id, at).await.map_err(ApiError::from)?;
            Ok(Box::pin(async move { pending.await.map_err(ApiError::from) }))
        }
        Uplink::Answer { trade, decision, signature } => {
            let Some(proto::relay_up::Body::Answer(answer)) = message.body else {
                return Err(ApiError::Internal("relay answer lost its body".into()));
            };
            let checked = match checked {
                Some(c) => c,
                None => engine.check_answer(carrier, trade, decision, signature.to_vec(), at).await,
            };
            let pending = engine.begin_checked_answer(checked).await.map_err(ApiError::from)?;
            let (hub, carrier) = (hub.clone(), carrier.clone());
            Ok(Box::pin(async move {
                let outcome = pending.await.map_err(ApiError::from)?;
                let (accepted, message) = match outcome.rejected {
                    None => (true, String::new()),
                    Some(RejectedAnswer::UnknownTrade) => (false, "no such trade for this carrier".to_owned()),
                    Some(RejectedAnswer::AlreadyFinal(s)) => (false, format!("trade is already {}", s.name())),
                    Some(RejectedAnswer::Expired) => (false, "the trade expired before the answer arrived".to_owned()),
                };
                let result = proto::AnswerResult {
                    trade_id: answer.trade_id,
                    accepted,
                    state: outcome.trade.as_ref().map_or(proto::TradeState::Unspecified, |t| t.state.into()) as i32,
                    failure_reason: proto::FailureReason::from(outcome.trade.as_ref().and_then(|t| t.failure)) as i32,
                    message,
                };
                let down =
                    proto::RelayDown { delivery_id: 0, body: Some(proto::relay_down::Body::AnswerResult(result)) };
                hub.send_direct(&carrier, down);
                Ok(())
            }))
        }
    }
}

fn log_refused(carrier: &CarrierId, e: ApiError) {
    let status = error::status(e);
    tracing::warn!(carrier = %carrier, code = ?status.code(), message = status.message(), "relay message refused");
}

/// How often a relay stream reads the outbox for deliveries committed by
/// other nodes on the same store (PostgreSQL, several nodes) when the
/// store names no interval of its own (`Remote::poll`); unused on a store
/// no one else writes. Another node's announcement of new outbox work
/// wakes the read at once; without one, an offer made on another node
/// reaches the carrier within this, plus the push.
const OUTBOX_POLL: std::time::Duration = std::time::Duration::from_millis(200);

/// How many times a relay stream holding claims reads the outbox within
/// one claim lease: a few, so a busy machine delaying a read or two does
/// not let a claim lapse (and another node push the delivery again).
const CLAIM_RENEWALS_PER_LEASE: u32 = 5;

#[tonic::async_trait]
impl CarrierService for CarrierApi {
    type RelayStream = RelayStream;

    async fn relay(&self, request: Request<Streaming<proto::RelayUp>>) -> Result<Response<Self::RelayStream>, Status> {
        let carrier = auth::carrier(&request)?;
        let mut inbound = request.into_inner();
        let depth = self.hub.depth();
        let (tx, rx) = mpsc::channel(depth);
        let (replay_tx, replay_rx) = mpsc::channel(limits::RELAY_REPLAY_BUFFER);
        let overflowed = Arc::new(AtomicBool::new(false));
        // Attach first, then replay the outbox: anything committed after the
        // replay's read is pushed live, so nothing falls between the two.
        let link = self.hub.attach(&carrier, tx, overflowed.clone());
        self.engine.relay_attached(&carrier, true);
        tracing::info!(carrier = %carrier, link, "relay connected");
        metrics::relay_connected(true);

        let replay_engine = self.engine.clone();
        let replay_carrier = carrier.clone();
        let replay_hub = self.hub.clone();
        tokio::spawn(async move {
            // Page through the whole outbox; sends wait for room, so the
            // replay is paced by the carrier. With other nodes on the same
            // store, keep reading it every OUTBOX_POLL for deliveries they
            // committed, skipping what this stream already sent and what
            // this node pushed live (a poll is not a redelivery: a lost
            // acknowledgement is still redelivered on reconnect).
            let poll = replay_engine.store_has_other_writers();
            // Other nodes announce new outbox work (subscribed before the
            // first read, so none falls between); the poll covers a lost
            // announcement.
            let remote = replay_engine.remote();
            let poll_every = remote.as_ref().map_or(OUTBOX_POLL, |r| r.poll);
            // While this stream holds pushed, unacknowledged deliveries it
            // reads (and so renews its claims) well within their lease.
            let renew_every = remote.as_ref().map_or(OUTBOX_POLL, |r| r.lease / CLAIM_RENEWALS_PER_LEASE);
            let mut changes = engine::subscribe(remote.as_ref());
            let mut sent: HashSet<u64> = HashSet::new();
            let mut first = true;
            loop {
                let mut seen = HashSet::new();
                let mut after = 0;
                loop {
                    // With other nodes, only what no other node's relay
                    // holds (claimed for this node, our claims renewed).
                    let page = match replay_engine.claim_outbox(&replay_carrier, after, limits::MAX_LIST).await {
                        Ok(p) => p,
                        Err(e) => {
                            let _ = replay_tx.send(Err(RelayEnd::Edge(error::status(e)))).await;
                            return;
                        }
                    };
                    let Some(last) = page.last().map(|d| d.delivery_id) else {
                        break;
                    };
                    if first {
                        tracing::info!(carrier = %replay_carrier, count = page.len(), "replaying outbox");
                    }
                    for d in page {
                        let id = d.delivery_id;
                        seen.insert(id);
                        if !first && (sent.contains(&id) || replay_hub.pushed_live(&replay_carrier, link, id)) {
                            continue;
                        }
                        if replay_tx.send(Ok(to_relay_down(&d))).await.is_err() {
                            return;
                        }
                    }
                    after = last;
                }
                if !poll {
                    return;
                }
                first = false;
                // What was acknowledged left the outbox and is forgotten.
                sent = seen;
                let wait = if sent.is_empty() { poll_every } else { poll_every.min(renew_every) };
                let next_read = tokio::time::sleep(wait);
                tokio::pin!(next_read);
                loop {
                    tokio::select! {
                        _ = &mut next_read => break,
                        change = engine::remote_change(&mut changes) => match change {
                            RemoteChange::Outbox(c) if c == replay_carrier => break,
                            RemoteChange::Resync => break,
                            _ => {}
                        },
                        _ = replay_tx.closed() => return,
                    }
                }
            }
        });

        let engine = self.engine.clone();
        let hub = self.hub.clone();
        let mut shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let inflight = Arc::new(Semaphore::new(limits::MAX_RELAY_INFLIGHT));
            let mut batch: Vec<Read> = Vec::with_capacity(RELAY_READ_BATCH);
            'stream: loop {
                let next = tokio::select! {
                    m = inbound.message() => m,
                    _ = stopped(&mut shutdown) => {
                        // Say why, so the carrier reconnects rather than
                        // taking a silent end for a fault of its own.
                        hub.end(&carrier, link, RelayEnd::ShuttingDown);
                        break;
                    }
                };
                // Then whatever else has already arrived (each with a slot
                // of its own), so their answers are checked together.
                let mut end = None;
                let mut next = Some(next);
                while let Some(read) = next.take() {
                    let message = match read {
                        Ok(Some(m)) => m,
                        other => {
                            end = Some(other);
                            break;
                        }
                    };
                    let Ok(permit) = inflight.clone().acquire_owned().await else {
                        break 'stream;
                    };
                    batch.push(read_one(message, permit));
                    if batch.len() < RELAY_READ_BATCH {
                        next = tokio::select! {
                            biased;
                            m = inbound.message() => Some(m),
                            () = std::future::ready(()) => None,
                        };
                    }
                }
                // The batch's arrival time, for every message in it.
                let at = engine::now();
                check_answers(&engine, &carrier, &mut batch, at).await;
                // Queue in arrival order here; await each durable outcome
                // in a task so the stream keeps flowing.
                for Read { message, parsed, checked, permit } in batch.drain(..) {
                    match begin_up(&engine, &hub, &carrier, message, parsed, checked, at).await {
                        Ok(finish) => {
                            let carrier = carrier.clone();
                            tokio::spawn(async move {
                                if let Err(e) = finish.await {
                                    log_refused(&carrier, e);
                                }
                                drop(permit);
                            });
                        }
                        Err(e) => log_refused(&carrier, e),
                    }
                }
                match end {
                    None => {}
                    Some(Ok(_)) => break,
                    Some(Err(status)) => {
                        tracing::info!(carrier = %carrier, code = ?status.code(), "relay stream ended");
                        // Tell the carrier why (an oversized or malformed
                        // message, say) instead of ending silently.
                        hub.end(&carrier, link, RelayEnd::Edge(status));
                        break;
                    }
                }
            }
            hub.detach(&carrier, link);
            engine.relay_attached(&carrier, false);
            metrics::relay_connected(false);
            tracing::info!(carrier = %carrier, link, "relay disconnected");
        });
        Ok(Response::new(Box::pin(RelayDownStream::new(rx, replay_rx, overflowed, depth)) as RelayStream))
    }

    async fn enroll_subscriber(
        &self,
        request: Request<proto::EnrollSubscriberRequest>,
    ) -> Result<Response<proto::EnrollSubscriberResponse>, Status> {
        let carrier = auth::carrier(&request)?;
        let (number, funding) = requests::enroll_subscriber(request.get_ref(), self.engine.limits())?;
        let s = self.engine.enroll_subscriber(carrier, number, funding).await?;
        Ok(Response::new(match s.funding {
            Funding::Wallet => proto::EnrollSubscriberResponse {
                subscriber_number: s.number.as_str().to_owned(),
                funding: proto::Funding::Wallet as i32,
                ..Default::default()
            },
            Funding::CarrierBill { currency, monthly_cap } => proto::EnrollSubscriberResponse {
                subscriber_number: s.number.as_str().to_owned(),
                funding: proto::Funding::CarrierBill as i32,
                bill_currency: currency.code().to_owned(),
                monthly_cap_minor: monthly_cap.minor(),
            },
        }))
    }

    async fn enroll_handset(
        &self,
        request: Request<proto::EnrollHandsetRequest>,
    ) -> Result<Response<proto::EnrollHandsetResponse>, Status> {
        let carrier = auth::carrier(&request)?;
        let (number, public_key) = requests::enroll_handset(request.get_ref())?;
        let h = self.engine.enroll_handset(carrier, number, public_key).await?;
        Ok(Response::new(proto::EnrollHandsetResponse { key_sha256: key_sha256(&h.public_key).to_vec() }))
    }

    async fn report_leases(
        &self,
        request: Request<proto::ReportLeasesRequest>,
    ) -> Result<Response<proto::ReportLeasesResponse>, Status> {
        let carrier = auth::carrier(&request)?;
        let (starts, stops) = requests::report_leases(request.get_ref())?;
        let recorded = self.engine.report_leases(&carrier, starts, stops).await?;
        Ok(Response::new(proto::ReportLeasesResponse {
            starts_recorded: recorded.starts,
            stops_recorded: recorded.stops,
        }))
    }

    async fn set_resolve_mode(
        &self,
        request: Request<proto::SetResolveModeRequest>,
    ) -> Result<Response<proto::SetResolveModeResponse>, Status> {
        let carrier = auth::carrier(&request)?;
        let mode = requests::resolve_mode("mode", request.get_ref().mode)?;
        let mode = self.engine.set_resolve_mode(&carrier, mode).await?;
        Ok(Response::new(proto::SetResolveModeResponse { mode: convert::resolve_mode(mode) as i32 }))
    }

    async fn accept_shop(
        &self,
        request: Request<proto::AcceptShopRequest>,
    ) -> Result<Response<proto::AcceptShopResponse>, Status> {
        let carrier = auth::carrier(&request)?;
        let shop = requests::shop_acceptance(&request.get_ref().shop_id)?;
        self.set_acceptance(carrier, shop, true).await
    }

    async fn revoke_shop(
        &self,
        request: Request<proto::RevokeShopRequest>,
    ) -> Result<Response<proto::AcceptShopResponse>, Status> {
        let carrier = auth::carrier(&request)?;
        let shop = requests::shop_acceptance(&request.get_ref().shop_id)?;
        self.set_acceptance(carrier, shop, false).await
    }

    async fn get_statement(
        &self,
        request: Request<proto::GetStatementRequest>,
    ) -> Result<Response<proto::Statement>, Status> {
        let carrier = auth::carrier(&request)?;
        let (number, month) = requests::carrier_statement(request.get_ref())?;
        let data = self.engine.statement(&carrier, &number, month).await?;
        Ok(Response::new(convert::statement_to_proto(&data, month)))
    }

    async fn get_remittance_statement(
        &self,
        request: Request<proto::GetRemittanceStatementRequest>,
    ) -> Result<Response<proto::CarrierStatement>, Status> {
        let carrier = auth::carrier(&request)?;
        let (month, after, limit) = requests::remittance_statement(request.get_ref())?;
        let lines = self.engine.carrier_statement(&carrier, month, after.as_ref(), limit).await?;
        Ok(Response::new(convert::carrier_statement_to_proto(&carrier, month, &lines, limit)))
    }
}

impl CarrierApi {
    async fn set_acceptance(
        &self,
        carrier: CarrierId,
        shop: crate::domain::ShopId,
        accept: bool,
    ) -> Result<Response<proto::AcceptShopResponse>, Status> {
        let accepted = self.engine.set_acceptance(&carrier, &shop, accept).await?;
        Ok(Response::new(proto::AcceptShopResponse { shop_id: shop.to_string(), accepted }))
    }
}

/// A relay stream's outgoing side. Two sources: the live queue the hub
/// feeds (bounded, never waited on: a full one means the carrier does not
/// keep up with live traffic), and the outbox replay of a new stream (its
/// own channel, which the replay waits on). Live messages go first, so a
/// catch-up however long never fills the live queue. Each end the server
/// gives the stream becomes its status; the stream ends when the hub lets
/// go of the live queue, and if that was because it overflowed, with
/// `RESOURCE_EXHAUSTED` naming the limit (instead of a silent end).
pub struct RelayDownStream {
    live: mpsc::Receiver<RelayItem>,
    /// `None` once the replay has sent everything.
    replay: Option<mpsc::Receiver<RelayItem>>,
    overflowed: Arc<AtomicBool>,
    depth: usize,
    done: bool,
}

impl RelayDownStream {
    pub fn new(
        live: mpsc::Receiver<RelayItem>,
        replay: mpsc::Receiver<RelayItem>,
        overflowed: Arc<AtomicBool>,
        depth: usize,
    ) -> Self {
        RelayDownStream { live, replay: Some(replay), overflowed, depth, done: false }
    }
}

fn wire(item: RelayItem) -> Result<proto::RelayDown, Status> {
    item.map_err(error::relay_end)
}

impl Stream for RelayDownStream {
    type Item = Result<proto::RelayDown, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        match self.live.poll_recv(cx) {
            Poll::Ready(Some(item)) => return Poll::Ready(Some(wire(item))),
            Poll::Ready(None) => {
                self.done = true;
                if self.overflowed.load(Ordering::Acquire) {
                    return Poll::Ready(Some(Err(error::relay_queue_overflow(self.depth))));
                }
                return Poll::Ready(None);
            }
            Poll::Pending => {}
        }
        // Nothing live: the replay, if it is still going. Its end is not
        // the stream's (the live receiver's waker is registered above).
        if let Some(replay) = self.replay.as_mut() {
            match replay.poll_recv(cx) {
                Poll::Ready(Some(item)) => return Poll::Ready(Some(wire(item))),
                Poll::Ready(None) => self.replay = None,
                Poll::Pending => {}
            }
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::carrier::relay::tests::withdraw;
    use crate::carrier::{CarrierGateway, PushResult};
    use tokio_stream::StreamExt;

    #[tokio::test]
    async fn a_full_relay_queue_ends_the_stream_resource_exhausted_naming_the_limit() {
        let hub = RelayHub::new(2, 2);
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

    #[tokio::test]
    async fn live_messages_go_before_the_replay_whose_end_is_not_the_streams() {
        let carrier = CarrierId::parse("docomo").expect("valid");
        let down = |id| Ok(crate::carrier::relay::to_relay_down(&withdraw(&carrier, id)));
        let (live_tx, live_rx) = mpsc::channel(4);
        let (replay_tx, replay_rx) = mpsc::channel(4);
        for id in [1, 2] {
            replay_tx.send(down(id)).await.expect("room");
        }
        drop(replay_tx);
        live_tx.send(down(9)).await.expect("room");
        let mut stream = RelayDownStream::new(live_rx, replay_rx, Arc::new(AtomicBool::new(false)), 4);
        let mut ids = Vec::new();
        for _ in 0..3 {
            ids.push(stream.next().await.expect("item").expect("ok").delivery_id);
        }
        assert_eq!(ids, [9, 1, 2]);
        // The replay is over; the stream waits for live messages.
        let pending = tokio::time::timeout(std::time::Duration::from_millis(20), stream.next()).await;
        assert!(pending.is_err(), "the replay's end ended the stream: {pending:?}");
        live_tx.send(down(10)).await.expect("room");
        assert_eq!(stream.next().await.expect("item").expect("ok").delivery_id, 10);
        live_tx.send(Err(RelayEnd::ShuttingDown)).await.expect("room");
        let ended = stream.next().await.expect("item").expect_err("the end's status");
        assert_eq!(ended.code(), tonic::Code::Unavailable);
        drop(live_tx);
        assert!(stream.next().await.is_none(), "the live queue's end is the stream's");
    }
}
