//! The relay task: keeps one `CarrierService.Relay` stream open, feeds each
//! message from the server to the simulator state, and sends the acks and
//! (possibly delayed) answers back, all through the fault layer (a perfect
//! network unless configured). Reconnects with bounded backoff until
//! shutdown.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::Streaming;
use tracing::{debug, info, warn};

use super::faults::{Injector, Lane, SimConfig};
use super::resolve::ResolveAction;
use super::state::{ack, Outbound, PendingAnswer};
use super::transcript::FaultCounters;
use super::Shared;
use crate::client::AuthedChannel;
use crate::proto;
use crate::proto::carrier_service_client::CarrierServiceClient;

/// Messages waiting to go up one relay stream. Small: the sender waits
/// (backpressure) rather than piling up work the server is not reading.
const UP_QUEUE_DEPTH: usize = 256;
/// How long opening a relay stream may take before we try again.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// First pause before reconnecting; doubled on each quick failure.
const INITIAL_BACKOFF: Duration = Duration::from_millis(50);
/// Longest pause between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// A stream that lived this long was healthy: reconnect fast after it.
const STABLE_CONNECTION: Duration = Duration::from_secs(5);
/// Delayed answers waiting for their time; more are dropped and counted.
const MAX_SCHEDULED_ANSWERS: usize = 10_000;
/// Longest delay an answer can have; above the longest trade TTL (15 min)
/// so late approvals can still be provoked.
const MAX_ANSWER_DELAY: Duration = Duration::from_secs(20 * 60);
/// Slow resolve answers waiting for their time; more are dropped (the
/// server then times the request out, as for a silent carrier).
const MAX_DELAYED_RESOLVES: usize = 1024;

/// An answer with the time it is due; ordered by (due, seq) so answers due
/// at the same instant go in the order they were planned.
struct Scheduled {
    due: Instant,
    seq: u64,
    answer: PendingAnswer,
    /// Already counted and transcribed: it was sent once, but the stream
    /// closed before it could leave, so it waits for the next stream.
    recorded: bool,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}

impl Eq for Scheduled {}

impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.due, self.seq).cmp(&(other.due, other.seq))
    }
}

/// Why a relay stream ended.
enum End {
    Shutdown,
    Lost(String),
    /// Cut on purpose (a fault, or `CarrierSim::disconnect`): the server
    /// is fine, so reconnect without backing off.
    Cut(&'static str),
}

/// What woke the serve loop. The message is boxed: a `Status` is large
/// and the other wake-ups carry nothing.
enum Wake {
    Stop,
    Cut,
    Due,
    /// A message from outside the relay (a browser phone's ack or answer).
    Inject(Option<Up>),
    Down(Box<Result<Option<proto::RelayDown>, tonic::Status>>),
}

/// A message going up, kept typed so the fault layer can treat acks and
/// answers differently and a failed send can tell them apart.
#[derive(Clone)]
pub(super) enum Up {
    Ack(u64),
    Answer(PendingAnswer),
}

impl Up {
    fn message(&self) -> proto::RelayUp {
        match self {
            Up::Ack(delivery_id) => ack(*delivery_id),
            Up::Answer(answer) => answer.message.clone(),
        }
    }
}

pub(super) struct Relay {
    shared: Arc<Shared>,
    client: CarrierServiceClient<AuthedChannel>,
    stop: watch::Receiver<bool>,
    /// Bumped by `CarrierSim::disconnect`; a change cuts the open stream.
    cut: watch::Receiver<u64>,
    /// Acks and answers from browser phones' pages, sent while a stream is
    /// open (they wait here while none is).
    inject: mpsc::Receiver<Up>,
    /// Answers not yet sent, earliest first. They survive reconnects.
    scheduled: BinaryHeap<Reverse<Scheduled>>,
    next_seq: u64,
    /// The network: its fault decisions and what it holds in each
    /// direction. What it holds belongs to one stream and is lost with it.
    net: Injector,
    up: Lane<Up>,
    down: Lane<proto::RelayDown>,
    /// `Deviation::NoReconnect`: stop when the stream is lost.
    give_up: bool,
    /// Slow resolve answers, with when they are due; they belong to the
    /// stream that carried the request and are lost with it.
    resolves: Vec<(Instant, proto::RelayUp)>,
}

/// Resolves once shutdown is asked for, or the handle is gone.
async fn stop_requested(stop: &mut watch::Receiver<bool>) {
    // `Err` means the sender was dropped with the handle: stop as well.
    let _ = stop.wait_for(|stop| *stop).await;
}

async fn sleep_until_due(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due).await,
        None => std::future::pending().await,
    }
}

/// Resolves when a disconnect is asked for; never if the handle is gone
/// (then `stop_requested` ends the task).
async fn cut_requested(cut: &mut watch::Receiver<u64>) {
    if cut.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

fn earliest(times: [Option<Instant>; 4]) -> Option<Instant> {
    times.into_iter().flatten().min()
}

fn describe(status: &tonic::Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}

impl Relay {
    pub(super) fn new(
        shared: Arc<Shared>,
        client: CarrierServiceClient<AuthedChannel>,
        stop: watch::Receiver<bool>,
        cut: watch::Receiver<u64>,
        inject: mpsc::Receiver<Up>,
        config: &SimConfig,
    ) -> Self {
        Relay {
            shared,
            client,
            stop,
            cut,
            inject,
            scheduled: BinaryHeap::new(),
            next_seq: 0,
            net: Injector::new(config.faults, config.seed),
            up: Lane::default(),
            down: Lane::default(),
            give_up: config.deviation == Some(super::Deviation::NoReconnect),
            resolves: Vec::new(),
        }
    }

    pub(super) async fn run(mut self) {
        let mut backoff = INITIAL_BACKOFF;
        loop {
            let started = Instant::now();
            let pause = match self.connect_and_serve().await {
                End::Shutdown => {
                    debug!("relay stopped");
                    return;
                }
                End::Cut(reason) => {
                    info!(reason, "relay stream cut; reconnecting");
                    backoff = INITIAL_BACKOFF;
                    INITIAL_BACKOFF
                }
                End::Lost(reason) if self.give_up => {
                    warn!(%reason, "relay stream lost; not reconnecting (Deviation::NoReconnect)");
                    return;
                }
                End::Lost(reason) => {
                    if started.elapsed() >= STABLE_CONNECTION {
                        backoff = INITIAL_BACKOFF;
                    }
                    warn!(%reason, ?backoff, "relay stream lost; reconnecting");
                    let pause = backoff;
                    backoff = backoff.saturating_mul(2).min(MAX_BACKOFF);
                    pause
                }
            };
            tokio::select! {
                biased;
                _ = stop_requested(&mut self.stop) => return,
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }

    async fn connect_and_serve(&mut self) -> End {
        let (tx, rx) = mpsc::channel(UP_QUEUE_DEPTH);
        let mut client = self.client.clone();
        let call = tokio::time::timeout(CONNECT_TIMEOUT, client.relay(ReceiverStream::new(rx)));
        let opened = tokio::select! {
            biased;
            _ = stop_requested(&mut self.stop) => return End::Shutdown,
            opened = call => opened,
        };
        let mut inbound = match opened {
            Err(_elapsed) => return End::Lost("opening the stream timed out".to_owned()),
            Ok(Err(status)) => return End::Lost(describe(&status)),
            Ok(Ok(response)) => response.into_inner(),
        };
        // Only disconnects asked for from now on cut this stream.
        self.cut.borrow_and_update();
        let connection = self.shared.update(|s| s.relay_connected());
        info!(connection, "relay connected");
        let end = match self.serve(&tx, &mut inbound).await {
            Ok(never) => match never {},
            Err(end) => end,
        };
        let reason = match &end {
            End::Shutdown => "shut down".to_owned(),
            End::Lost(reason) => reason.clone(),
            End::Cut(reason) => (*reason).to_owned(),
        };
        // What the network held for this stream goes down with it, and so
        // do slow resolve answers (the server failed their requests).
        let lost = self.up.clear() + self.down.clear() + std::mem::take(&mut self.resolves).len();
        self.shared.update(|s| {
            s.counters.lost_in_flight += u64::try_from(lost).unwrap_or(u64::MAX);
            s.relay_lost(connection, reason);
        });
        end
    }

    /// Breaks the stream on purpose; `message_lost` counts the message it
    /// broke on.
    fn cut(&mut self, reason: &'static str, message_lost: bool) -> End {
        self.shared.update(|s| {
            s.counters.disconnects += 1;
            s.counters.lost_in_flight += u64::from(message_lost);
        });
        End::Cut(reason)
    }

    async fn serve(
        &mut self,
        tx: &mpsc::Sender<proto::RelayUp>,
        inbound: &mut Streaming<proto::RelayDown>,
    ) -> Result<Infallible, End> {
        loop {
            self.release_due(tx).await?;
            let next_due = earliest([
                self.scheduled.peek().map(|Reverse(s)| s.due),
                self.up.next_due(),
                self.down.next_due(),
                self.resolves.iter().map(|(due, _)| *due).min(),
            ]);
            let wake = tokio::select! {
                biased;
                _ = stop_requested(&mut self.stop) => Wake::Stop,
                _ = cut_requested(&mut self.cut) => Wake::Cut,
                message = inbound.message() => Wake::Down(Box::new(message)),
                up = self.inject.recv() => Wake::Inject(up),
                _ = sleep_until_due(next_due) => Wake::Due,
            };
            let message = match wake {
                Wake::Stop => return Err(End::Shutdown),
                Wake::Cut => return Err(self.cut("disconnect requested", false)),
                // Due messages go out at the top of the loop.
                Wake::Due => continue,
                // The handle (and its sender) is gone: so is the simulator.
                Wake::Inject(None) => return Err(End::Shutdown),
                Wake::Inject(Some(up)) => {
                    self.shared.update(|s| match &up {
                        Up::Ack(_) => s.ack_sent(),
                        Up::Answer(answer) => s.answer_sent(answer),
                    });
                    self.send_up(tx, up).await?;
                    continue;
                }
                Wake::Down(message) => *message,
            };
            let down = match message {
                Err(status) => return Err(End::Lost(describe(&status))),
                Ok(None) => return Err(End::Lost("server ended the stream".to_owned())),
                Ok(Some(down)) => down,
            };
            if self.net.cut() {
                return Err(self.cut("fault injection", true));
            }
            // Only deliveries are promised at least once; see `Faults::down`.
            let may_duplicate = down.delivery_id != 0;
            let kind = self.net.faults().down;
            let now = Instant::now();
            let (net, lane) = (&mut self.net, &mut self.down);
            let arrived =
                self.shared.update(|s| net.pass(lane, down, &kind, may_duplicate, now, &mut s.counters.down_faults));
            for down in arrived {
                self.handle_down(tx, down).await?;
            }
        }
    }

    /// Sends whatever is due: messages the network delayed or held, in
    /// both directions, then the handsets' answers whose time has come.
    async fn release_due(&mut self, tx: &mpsc::Sender<proto::RelayUp>) -> Result<(), End> {
        let now = Instant::now();
        for down in self.down.due(now) {
            self.handle_down(tx, down).await?;
        }
        let up = self.up.due(now);
        self.push_all(tx, up).await?;
        let (due, later): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.resolves).into_iter().partition(|(d, _)| *d <= now);
        self.resolves = later;
        for (_, message) in due {
            self.send_resolve(tx, message).await?;
        }
        self.send_due(tx).await
    }

    /// Sends a resolve answer. It bypasses the fault layer: resolve faults
    /// are the carrier's own ([`super::ResolvePolicy`]), not the network's.
    async fn send_resolve(&mut self, tx: &mpsc::Sender<proto::RelayUp>, message: proto::RelayUp) -> Result<(), End> {
        self.shared.update(|s| s.counters.resolves_answered += 1);
        self.push(tx, message).await
    }

    /// The carrier's handling of one message that reached it.
    async fn handle_down(&mut self, tx: &mpsc::Sender<proto::RelayUp>, down: proto::RelayDown) -> Result<(), End> {
        let now = Instant::now();
        let outbound = self.shared.update(|s| s.handle(down));
        // Schedule the answers before sending anything: the offer now
        // counts as shown, so if this stream dies while acking, a
        // redelivery will not plan them again. They still leave after the
        // ack, at the top of the loop.
        let mut acks = Vec::new();
        let mut resolved = Vec::new();
        for item in outbound {
            match item {
                Outbound::Ack(delivery_id) => acks.push(delivery_id),
                Outbound::Answer(answer) => self.schedule(now, answer),
                Outbound::Resolve(ResolveAction::Nothing) => {}
                Outbound::Resolve(ResolveAction::Cut) => {
                    return Err(self.cut("resolve policy: disconnect mid-request", true))
                }
                Outbound::Resolve(ResolveAction::Send { messages, after }) if after.is_zero() => {
                    resolved.extend(messages)
                }
                Outbound::Resolve(ResolveAction::Send { messages, after }) => {
                    for message in messages {
                        if self.resolves.len() >= MAX_DELAYED_RESOLVES {
                            warn!(max = MAX_DELAYED_RESOLVES, "too many slow resolve answers; dropped");
                            continue;
                        }
                        self.resolves.push((now + after, message));
                    }
                }
            }
        }
        for message in resolved {
            self.send_resolve(tx, message).await?;
        }
        for delivery_id in acks {
            self.shared.update(|s| s.ack_sent());
            self.send_up(tx, Up::Ack(delivery_id)).await?;
        }
        Ok(())
    }

    /// Hands one message to the network going up.
    async fn send_up(&mut self, tx: &mpsc::Sender<proto::RelayUp>, up: Up) -> Result<(), End> {
        if self.net.cut() {
            return Err(self.cut("fault injection", true));
        }
        let faults = *self.net.faults();
        let (kind, is_ack) = match &up {
            Up::Ack(_) => (faults.acks, true),
            Up::Answer(_) => (faults.answers, false),
        };
        let now = Instant::now();
        let (net, lane) = (&mut self.net, &mut self.up);
        let out = self.shared.update(|s| {
            let counters: &mut FaultCounters =
                if is_ack { &mut s.counters.ack_faults } else { &mut s.counters.answer_faults };
            net.pass(lane, up, &kind, true, now, counters)
        });
        self.push_all(tx, out).await
    }

    /// Puts messages on the stream in order. If the stream has closed, the
    /// answers among the rest wait for the next stream (a handset's answer
    /// that never left is not lost); acks do not, as the server redelivers
    /// what it has no ack for.
    async fn push_all(&mut self, tx: &mpsc::Sender<proto::RelayUp>, items: Vec<Up>) -> Result<(), End> {
        let mut items = items.into_iter();
        while let Some(item) = items.next() {
            if let Err(end) = self.push(tx, item.message()).await {
                let now = Instant::now();
                for left in std::iter::once(item).chain(items) {
                    if let Up::Answer(answer) = left {
                        self.requeue(now, answer);
                    }
                }
                return Err(end);
            }
        }
        Ok(())
    }

    fn schedule(&mut self, now: Instant, answer: PendingAnswer) {
        if self.scheduled.len() >= MAX_SCHEDULED_ANSWERS {
            warn!(trade_id = %answer.trade_id, max = MAX_SCHEDULED_ANSWERS, "too many delayed answers; dropped");
            self.shared.update(|s| s.answer_dropped());
            return;
        }
        let due = now + answer.after.min(MAX_ANSWER_DELAY);
        self.push_scheduled(due, answer, false);
    }

    /// Queues an answer that was sent but could not leave, for the next
    /// stream. Bounded like `schedule`: with the queue full it is lost (it
    /// already counts as sent, so it counts as lost in flight).
    fn requeue(&mut self, now: Instant, answer: PendingAnswer) {
        if self.scheduled.len() >= MAX_SCHEDULED_ANSWERS {
            warn!(trade_id = %answer.trade_id, max = MAX_SCHEDULED_ANSWERS, "too many delayed answers; a sent one is lost");
            self.shared.update(|s| s.counters.lost_in_flight += 1);
            return;
        }
        self.push_scheduled(now, answer, true);
    }

    fn push_scheduled(&mut self, due: Instant, answer: PendingAnswer, recorded: bool) {
        self.next_seq += 1;
        self.scheduled.push(Reverse(Scheduled { due, seq: self.next_seq, answer, recorded }));
    }

    /// Sends every answer that is due into the network. One that cannot
    /// leave because the stream closed stays queued for the next stream.
    async fn send_due(&mut self, tx: &mpsc::Sender<proto::RelayUp>) -> Result<(), End> {
        let now = Instant::now();
        while self.scheduled.peek().is_some_and(|Reverse(s)| s.due <= now) {
            let Some(Reverse(item)) = self.scheduled.pop() else {
                break;
            };
            if !item.recorded {
                self.shared.update(|s| s.answer_sent(&item.answer));
            }
            self.send_up(tx, Up::Answer(item.answer)).await?;
        }
        Ok(())
    }

    async fn push(&mut self, tx: &mpsc::Sender<proto::RelayUp>, message: proto::RelayUp) -> Result<(), End> {
        tokio::select! {
            biased;
            _ = stop_requested(&mut self.stop) => Err(End::Shutdown),
            sent = tx.send(message) => sent.map_err(|_| End::Lost("relay stream closed".to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Decision, SubscriberNumber, TradeId};

    fn scheduled(due: Instant, seq: u64) -> Reverse<Scheduled> {
        Reverse(Scheduled {
            due,
            seq,
            answer: PendingAnswer {
                after: Duration::ZERO,
                number: SubscriberNumber::parse("+818012345678").expect("valid"),
                trade_id: TradeId::from_bytes([1u8; 16]),
                decision: Decision::Approve,
                signature_valid: true,
                message: proto::RelayUp::default(),
                resend: false,
            },
            recorded: false,
        })
    }

    #[test]
    fn answers_leave_earliest_first_then_in_planned_order() {
        let t0 = Instant::now();
        let mut heap = BinaryHeap::new();
        heap.push(scheduled(t0 + Duration::from_millis(5), 1));
        heap.push(scheduled(t0, 3));
        heap.push(scheduled(t0, 2));
        let order: Vec<u64> = std::iter::from_fn(|| heap.pop().map(|Reverse(s)| s.seq)).collect();
        assert_eq!(order, [2, 3, 1]);
    }
}
