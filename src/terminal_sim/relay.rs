//! The relay task: keeps one `CarrierService.Relay` stream open, feeds each
//! message from the server to the simulator state, and sends the acks and
//! (possibly delayed) answers back. Reconnects with bounded backoff until
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

use super::state::{ack, Outbound, PendingAnswer};
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

/// An answer with the time it is due; ordered by (due, seq) so answers due
/// at the same instant go in the order they were planned.
struct Scheduled {
    due: Instant,
    seq: u64,
    answer: PendingAnswer,
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
}

/// What woke the serve loop. The message is boxed: a `Status` is large
/// and the other wake-ups carry nothing.
enum Wake {
    Stop,
    Due,
    Down(Box<Result<Option<proto::RelayDown>, tonic::Status>>),
}

pub(super) struct Relay {
    shared: Arc<Shared>,
    client: CarrierServiceClient<AuthedChannel>,
    stop: watch::Receiver<bool>,
    /// Answers not yet sent, earliest first. They survive reconnects.
    scheduled: BinaryHeap<Reverse<Scheduled>>,
    next_seq: u64,
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

fn describe(status: &tonic::Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}

impl Relay {
    pub(super) fn new(
        shared: Arc<Shared>,
        client: CarrierServiceClient<AuthedChannel>,
        stop: watch::Receiver<bool>,
    ) -> Self {
        Relay { shared, client, stop, scheduled: BinaryHeap::new(), next_seq: 0 }
    }

    pub(super) async fn run(mut self) {
        let mut backoff = INITIAL_BACKOFF;
        loop {
            let started = Instant::now();
            match self.connect_and_serve().await {
                End::Shutdown => {
                    debug!("relay stopped");
                    return;
                }
                End::Lost(reason) => {
                    if started.elapsed() >= STABLE_CONNECTION {
                        backoff = INITIAL_BACKOFF;
                    }
                    warn!(%reason, ?backoff, "relay stream lost; reconnecting");
                }
            }
            tokio::select! {
                biased;
                _ = stop_requested(&mut self.stop) => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = backoff.saturating_mul(2).min(MAX_BACKOFF);
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
        let connection = self.shared.update(|s| s.relay_connected());
        info!(connection, "relay connected");
        let end = match self.serve(&tx, &mut inbound).await {
            Ok(never) => match never {},
            Err(end) => end,
        };
        let reason = match &end {
            End::Shutdown => "shut down".to_owned(),
            End::Lost(reason) => reason.clone(),
        };
        self.shared.update(|s| s.relay_lost(connection, reason));
        end
    }

    async fn serve(
        &mut self,
        tx: &mpsc::Sender<proto::RelayUp>,
        inbound: &mut Streaming<proto::RelayDown>,
    ) -> Result<Infallible, End> {
        loop {
            self.send_due(tx).await?;
            let next_due = self.scheduled.peek().map(|Reverse(s)| s.due);
            let wake = tokio::select! {
                biased;
                _ = stop_requested(&mut self.stop) => Wake::Stop,
                message = inbound.message() => Wake::Down(Box::new(message)),
                _ = sleep_until_due(next_due) => Wake::Due,
            };
            let message = match wake {
                Wake::Stop => return Err(End::Shutdown),
                // Due answers go out at the top of the loop.
                Wake::Due => continue,
                Wake::Down(message) => *message,
            };
            let down = match message {
                Err(status) => return Err(End::Lost(describe(&status))),
                Ok(None) => return Err(End::Lost("server ended the stream".to_owned())),
                Ok(Some(down)) => down,
            };
            let now = Instant::now();
            let outbound = self.shared.update(|s| s.handle(down));
            // Schedule the answers before sending anything: the offer now
            // counts as shown, so if this stream dies while acking, a
            // redelivery will not plan them again. They still leave after
            // the ack, at the top of the loop.
            let mut acks = Vec::new();
            for item in outbound {
                match item {
                    Outbound::Ack(delivery_id) => acks.push(delivery_id),
                    Outbound::Answer(answer) => self.schedule(now, answer),
                }
            }
            for delivery_id in acks {
                self.push(tx, ack(delivery_id)).await?;
                self.shared.update(|s| s.ack_sent());
            }
        }
    }

    fn schedule(&mut self, now: Instant, answer: PendingAnswer) {
        if self.scheduled.len() >= MAX_SCHEDULED_ANSWERS {
            warn!(trade_id = %answer.trade_id, max = MAX_SCHEDULED_ANSWERS, "too many delayed answers; dropped");
            self.shared.update(|s| s.answer_dropped());
            return;
        }
        let due = now + answer.after.min(MAX_ANSWER_DELAY);
        self.next_seq += 1;
        self.scheduled.push(Reverse(Scheduled { due, seq: self.next_seq, answer }));
    }

    /// Sends every answer that is due. One that cannot be sent stays
    /// queued for the next stream.
    async fn send_due(&mut self, tx: &mpsc::Sender<proto::RelayUp>) -> Result<(), End> {
        let now = Instant::now();
        while self.scheduled.peek().is_some_and(|Reverse(s)| s.due <= now) {
            let Some(Reverse(item)) = self.scheduled.pop() else {
                break;
            };
            match self.push(tx, item.answer.message.clone()).await {
                Ok(()) => self.shared.update(|s| s.answer_sent(&item.answer)),
                Err(end) => {
                    self.scheduled.push(Reverse(item));
                    return Err(end);
                }
            }
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
            },
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
