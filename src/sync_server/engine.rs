//! Trade orchestration: validated requests become store commands; once a
//! commit is durable its outbox deliveries go to the carrier gateway and
//! waiters on final states are woken. Also the expiry sweeper.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{watch, Notify};
use tracing::{instrument, Instrument};

use crate::carrier::{CarrierGateway, PushResult};
use crate::domain::approval::ServerSecret;
use crate::domain::{Amount, CarrierId, Currency, Decision, RegisterId, ShopId, SubscriberNumber, TradeId, UnixMs};
use crate::store::{
    AnswerOutcome, Command, CommandOutcome, CreateTrade, Delivery, NetworkIdentity, NetworkTrade, NetworkTradeRequest,
    RejectedAnswer, Store, StoreError, TradeRecord, TradeRequest,
};

use super::error::ApiError;
use super::limits::Limits;
use super::metrics;
use super::rate_limit::{RateLimits, StreamSlots, EVICT_INTERVAL, WATCH_STREAMS};
use super::receipt_keys::ReceiptKeys;

/// The wall clock, read only here and passed into the store and domain.
pub fn now() -> UnixMs {
    let ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
    UnixMs(u64::try_from(ms).unwrap_or(u64::MAX))
}

/// The sweeper sleeps until the earliest deadline of any open trade (a
/// trade committed with an earlier one wakes it) and expires what is due
/// then. An expiry lands after its deadline by the timer's millisecond,
/// plus the writer's time for the commands queued ahead of it and the
/// round of expiries before it (one group commit), plus the fsync that
/// makes it durable before `AwaitTrade` sees it. Answers are held to the
/// deadline exactly regardless: an answer or cancel after it expires the
/// trade itself.
///
/// The longest the sweeper sleeps without looking again: deadlines are
/// wall-clock times and the sleep is monotonic, so a clock step is noticed
/// within this; the periodic chores (lease pruning, rate-limit eviction)
/// run on time within it too.
pub const SWEEP_MAX_SLEEP: Duration = Duration::from_secs(1);
/// After a failed sweep (a store error), the sweeper waits this long
/// before trying again rather than spinning.
pub const SWEEP_RETRY: Duration = Duration::from_millis(100);
/// Trades expired per sweep round, so one round never holds the writer long.
pub const SWEEP_BATCH: usize = 256;

/// How a CreateTrade names its payer.
#[derive(Debug, Clone)]
pub enum Payer {
    Number(SubscriberNumber),
    Network(NetworkIdentity),
}

/// A validated CreateTrade.
#[derive(Debug, Clone)]
pub struct NewTrade {
    pub register: RegisterId,
    pub payer: Payer,
    pub amount: Amount,
    pub currency: Currency,
    pub description: String,
    pub ttl: Duration,
    pub idempotency_key: Option<String>,
}

/// Wakes `AwaitTrade` calls when their trade reaches a final state.
#[derive(Default)]
pub struct FinalWaiters {
    map: Mutex<HashMap<TradeId, Arc<Notify>>>,
}

impl FinalWaiters {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TradeId, Arc<Notify>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers interest in a trade's final state. Enable the guard's
    /// `notify.notified()` before reading the trade so no wake-up is missed;
    /// dropping the guard removes the entry when nobody else waits.
    pub fn wait(&self, id: TradeId) -> WaitGuard<'_> {
        let notify = self.lock().entry(id).or_default().clone();
        WaitGuard { waiters: self, id, notify }
    }

    fn fire(&self, id: TradeId) {
        if let Some(n) = self.lock().remove(&id) {
            n.notify_waiters();
        }
    }
}

pub struct WaitGuard<'a> {
    waiters: &'a FinalWaiters,
    id: TradeId,
    pub notify: Arc<Notify>,
}

impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        let mut map = self.waiters.lock();
        // The map's handle and ours: nobody else waits.
        if map.get(&self.id).is_some_and(|n| Arc::ptr_eq(n, &self.notify) && Arc::strong_count(n) == 2) {
            map.remove(&self.id);
        }
    }
}

/// Resolves once the shutdown flag turns true (or its sender is gone).
pub async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

pub struct Engine {
    pub store: Store,
    gateway: Arc<dyn CarrierGateway>,
    pub secret: ServerSecret,
    /// Countersign settlement receipts; published to shops.
    pub receipts: ReceiptKeys,
    pub limits: Limits,
    pub finals: FinalWaiters,
    pub rates: RateLimits,
    pub watch_slots: Arc<StreamSlots<ShopId>>,
    /// The deadline (ms) the sweeper sleeps until; `u64::MAX` while it is
    /// looking or has nothing to wait for, so any new deadline wakes it.
    sweep_target: AtomicU64,
    sweep_wake: Notify,
}

impl Engine {
    pub fn new(
        store: Store,
        gateway: Arc<dyn CarrierGateway>,
        secret: ServerSecret,
        receipts: ReceiptKeys,
        limits: Limits,
    ) -> Self {
        let rates = RateLimits::new(&limits);
        let watch_slots = StreamSlots::new(WATCH_STREAMS, limits.max_watch_streams_per_shop);
        Engine {
            store,
            gateway,
            secret,
            receipts,
            limits,
            finals: FinalWaiters::default(),
            rates,
            watch_slots,
            sweep_target: AtomicU64::new(u64::MAX),
            sweep_wake: Notify::new(),
        }
    }

    /// Sends durable deliveries to their carriers. Whatever is not taken
    /// now stays in the outbox and goes out when the carrier connects.
    pub fn dispatch(&self, deliveries: &[Delivery]) {
        for d in deliveries {
            match self.gateway.push(d) {
                PushResult::Queued => {}
                PushResult::NotConnected => {
                    tracing::debug!(carrier = %d.carrier, delivery = d.delivery_id, "carrier offline; delivery stays queued")
                }
                PushResult::Dropped => {
                    tracing::warn!(carrier = %d.carrier, delivery = d.delivery_id, "relay queue full; carrier will catch up on reconnect")
                }
            }
        }
    }

    fn settled_effects(&self, trade: Option<&TradeRecord>, deliveries: &[Delivery]) {
        if let Some(t) = trade {
            if t.state.is_final() {
                self.finals.fire(t.id);
            } else {
                self.deadline_added(t.expires_at);
            }
        }
        self.dispatch(deliveries);
    }

    /// Creates a trade; answers once it is durable. Returns the trade and
    /// whether it is an idempotent replay of an earlier one.
    #[instrument(skip_all, fields(shop = %shop, trade_id = tracing::field::Empty))]
    pub async fn create_trade(&self, shop: &ShopId, t: NewTrade) -> Result<(TradeRecord, bool), ApiError> {
        if t.ttl < self.limits.min_ttl || t.ttl > self.limits.max_ttl {
            return Err(ApiError::invalid(
                "ttl_seconds",
                format!("must be {}..={} seconds", self.limits.min_ttl.as_secs(), self.limits.max_ttl.as_secs()),
            ));
        }
        // The shop's own rate, per request: retries and refused requests
        // count, since each costs the server the same work (a refusal says
        // when to retry, and a retry then returns the original trade). The
        // buyer's allowance is spent later, by the store's writer, only if
        // this request creates a trade that sends an offer: not by a
        // replay, a conflict, or any refusal (see `RateLimits::offer_gate`).
        self.rates.shop_trades.check(shop)?;
        let trade_id = TradeId::generate().map_err(|e| ApiError::Internal(e.to_string()))?;
        tracing::Span::current().record("trade_id", tracing::field::display(trade_id));
        let at = now();
        let ttl_ms = u64::try_from(t.ttl.as_millis()).unwrap_or(u64::MAX);
        let binding_code = self.secret.binding_code(trade_id).to_string();
        let max_open_per_register = self.limits.max_open_trades_per_register;
        let offer_gate = self.rates.offer_gate(shop, trade_id);
        let command = match t.payer {
            Payer::Number(payer) => Command::CreateTrade(CreateTrade {
                shop: shop.clone(),
                trade_id,
                request: TradeRequest {
                    register: t.register,
                    payer,
                    amount: t.amount,
                    currency: t.currency,
                    description: t.description,
                    ttl_ms,
                },
                idempotency_key: t.idempotency_key,
                binding_code,
                max_open_per_register,
                offer_gate,
                now: at,
            }),
            Payer::Network(identity) => {
                self.check_observed_at(identity.observed_at, at)?;
                Command::CreateTradeByNetwork(NetworkTrade {
                    shop: shop.clone(),
                    trade_id,
                    request: NetworkTradeRequest {
                        register: t.register,
                        identity,
                        amount: t.amount,
                        currency: t.currency,
                        description: t.description,
                        ttl_ms,
                    },
                    idempotency_key: t.idempotency_key,
                    binding_code,
                    max_open_per_register,
                    offer_gate,
                    now: at,
                })
            }
        };
        match self.store.execute(command).await? {
            CommandOutcome::Trade { trade: Some(trade), deliveries, replayed } => {
                if replayed {
                    // The span names the id we generated; the replay is another.
                    tracing::info!(original_trade_id = %trade.id, state = trade.state.name(), "idempotent replay");
                } else {
                    metrics::trade_created();
                    tracing::info!(state = trade.state.name(), "trade created");
                }
                self.settled_effects(Some(&trade), &deliveries);
                Ok((trade, replayed))
            }
            other => Err(unexpected(&other)),
        }
    }

    /// A network identity must be observed no later than a small clock skew
    /// ahead of now, and no earlier than the lease retention allows.
    fn check_observed_at(&self, observed: UnixMs, now: UnixMs) -> Result<(), ApiError> {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        if observed.0 > now.0.saturating_add(ms(super::limits::MAX_OBSERVED_SKEW)) {
            return Err(ApiError::invalid("network_identity.observed_at_ms", "is in the future"));
        }
        if observed.0 < now.0.saturating_sub(ms(self.limits.lease_retention)) {
            return Err(ApiError::invalid(
                "network_identity.observed_at_ms",
                format!("is older than the lease retention ({} days)", self.limits.lease_retention.as_secs() / 86_400),
            ));
        }
        Ok(())
    }

    /// Prunes lease records older than the retention that later records
    /// supersede; returns how many were deleted.
    pub async fn prune_leases(&self) -> Result<u64, StoreError> {
        let retention = u64::try_from(self.limits.lease_retention.as_millis()).unwrap_or(u64::MAX);
        let deleted = self.store.prune_leases(UnixMs(now().0.saturating_sub(retention))).await?;
        tracing::info!(deleted, "lease records pruned");
        Ok(deleted)
    }

    #[instrument(skip_all, fields(trade_id = %trade))]
    pub async fn cancel(&self, shop: &ShopId, trade: TradeId) -> Result<TradeRecord, ApiError> {
        match self.store.execute(Command::Cancel { shop: shop.clone(), trade, now: now() }).await? {
            CommandOutcome::Trade { trade: Some(t), deliveries, replayed } => {
                if !replayed && t.state.is_final() {
                    metrics::trade_finished(&t);
                }
                tracing::info!(state = t.state.name(), replayed, "trade cancelled");
                self.settled_effects(Some(&t), &deliveries);
                Ok(t)
            }
            CommandOutcome::TooLate { trade: t, deliveries } => {
                metrics::trade_finished(&t);
                tracing::info!("cancel came after the deadline; trade expired");
                self.settled_effects(Some(&t), &deliveries);
                Err(ApiError::FailedPrecondition("trade_id: trade is already EXPIRED".into()))
            }
            other => Err(unexpected(&other)),
        }
    }

    /// Refunds part or all of a settled trade.
    #[instrument(skip_all, fields(trade_id = %trade))]
    pub async fn refund(
        &self,
        shop: &ShopId,
        trade: TradeId,
        amount: Amount,
        idempotency_key: Option<String>,
    ) -> Result<(TradeRecord, u64, Amount), ApiError> {
        let command = Command::Refund { shop: shop.clone(), trade, amount, idempotency_key, now: now() };
        match self.store.execute(command).await? {
            CommandOutcome::Refund { trade, refund_id, amount, replayed } => {
                if !replayed {
                    metrics::refunded();
                }
                tracing::info!(refund_id, amount = amount.minor(), replayed, "trade refunded");
                Ok((trade, refund_id, amount))
            }
            other => Err(unexpected(&other)),
        }
    }

    /// Queues the carrier's acknowledgement of a delivery; the returned
    /// future resolves once it is durable. Queueing is ordered, so a relay
    /// stream's messages are applied in the order they arrived.
    pub async fn begin_ack(
        &self,
        carrier: &CarrierId,
        delivery_id: u64,
    ) -> Result<impl std::future::Future<Output = Result<(), ApiError>> + Send + 'static, ApiError> {
        let pending = self.store.submit(Command::Ack { carrier: carrier.clone(), delivery_id, now: now() }).await?;
        Ok(async move {
            match pending.outcome().await? {
                CommandOutcome::Trade { .. } => Ok(()),
                other => Err(unexpected(&other)),
            }
        })
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
    ) -> Result<impl std::future::Future<Output = Result<AnswerOutcome, ApiError>> + Send + 'static, ApiError> {
        // Ed25519 verification and the receipt's countersignature are the
        // costliest steps of an answer: do them here, in parallel with the
        // writer, which reuses them if nothing changed in between.
        let (at, signer) = (now(), self.receipts.signer());
        let checked = self.store.check_answer(carrier, &trade, decision, &signature, &signer, at);
        let command =
            Command::Answer { carrier: carrier.clone(), trade, decision, signature, now: at, checked, signer };
        let pending = self.store.submit(command).await?;
        let engine = self.clone();
        // The settlement path: everything logged until the outcome is sent
        // carries the trade id.
        let span = tracing::info_span!("answer", trade_id = %trade, carrier = %carrier, ?decision);
        Ok(async move {
            match pending.outcome().await? {
                CommandOutcome::Answer(outcome) => {
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
                other => Err(unexpected(&other)),
            }
        }
        .instrument(span))
    }

    /// Expires every overdue trade (in rounds of `SWEEP_BATCH`); returns how
    /// many expired.
    pub async fn expire_due(&self) -> Result<usize, StoreError> {
        let mut expired = 0;
        loop {
            let at = now();
            let due = self.store.due(at, SWEEP_BATCH)?;
            let round = due.len();
            // Queue the whole round, then await it: the expiries share
            // group commits instead of waiting for one fsync each.
            let mut pending = Vec::with_capacity(round);
            for trade in due {
                pending.push(self.store.submit(Command::Expire { trade, now: at }).await?);
            }
            for write in pending {
                if let CommandOutcome::Trade { trade: Some(t), deliveries, replayed: false } = write.outcome().await? {
                    metrics::trade_finished(&t);
                    tracing::info!(trade_id = %t.id, "trade expired");
                    expired += 1;
                    self.settled_effects(Some(&t), &deliveries);
                }
            }
            if round < SWEEP_BATCH {
                return Ok(expired);
            }
        }
    }

    /// An open trade with this deadline is durable: wakes the sweeper if it
    /// sleeps for a later one.
    fn deadline_added(&self, at: UnixMs) {
        if at.0 < self.sweep_target.load(Ordering::SeqCst) {
            self.sweep_wake.notify_one();
        }
    }

    /// Runs the expiry sweeper until `shutdown` turns true. Overdue trades
    /// left by a crash expire on the first round.
    pub async fn run_sweeper(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut last_prune = std::time::Instant::now();
        let mut evicted_at = tokio::time::Instant::now();
        loop {
            // While it looks, any new deadline wakes the sleep that follows
            // (the permit waits), so none committed meanwhile is missed.
            self.sweep_target.store(u64::MAX, Ordering::SeqCst);
            let swept = self.expire_due().await;
            if last_prune.elapsed() >= super::limits::LEASE_PRUNE_INTERVAL {
                last_prune = std::time::Instant::now();
                if let Err(e) = self.prune_leases().await {
                    tracing::error!(error = %e, "lease pruning failed");
                }
            }
            if evicted_at.elapsed() >= EVICT_INTERVAL {
                self.rates.evict_idle();
                evicted_at = tokio::time::Instant::now();
            }
            let nap = match swept.and_then(|_| self.store.next_deadline()) {
                Ok(next) => {
                    self.sweep_target.store(next.map_or(u64::MAX, |d| d.0), Ordering::SeqCst);
                    sleep_until_deadline(now(), next)
                }
                Err(e) => {
                    tracing::error!(error = %e, "expiry sweep failed");
                    SWEEP_RETRY
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(nap) => {}
                _ = self.sweep_wake.notified() => {}
                _ = stopped(&mut shutdown) => return,
            }
        }
    }
}

fn unexpected(outcome: &CommandOutcome) -> ApiError {
    ApiError::Internal(format!("unexpected store outcome: {outcome:?}"))
}

/// How long the sweeper sleeps at `now` for the earliest deadline `next`:
/// until it, at least a millisecond (the timer's step, and never a busy
/// loop), at most [`SWEEP_MAX_SLEEP`].
fn sleep_until_deadline(now: UnixMs, next: Option<UnixMs>) -> Duration {
    let Some(next) = next else { return SWEEP_MAX_SLEEP };
    Duration::from_millis(next.0.saturating_sub(now.0)).clamp(Duration::from_millis(1), SWEEP_MAX_SLEEP)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sweeper_sleeps_until_the_next_deadline_within_bounds() {
        let at = |ms| UnixMs(ms);
        assert_eq!(sleep_until_deadline(at(1_000), Some(at(1_250))), Duration::from_millis(250));
        assert_eq!(sleep_until_deadline(at(1_000), Some(at(1_000))), Duration::from_millis(1), "due: next ms");
        assert_eq!(sleep_until_deadline(at(1_000), Some(at(10))), Duration::from_millis(1), "overdue: no busy loop");
        assert_eq!(sleep_until_deadline(at(1_000), Some(at(u64::MAX))), SWEEP_MAX_SLEEP);
        assert_eq!(sleep_until_deadline(at(1_000), None), SWEEP_MAX_SLEEP);
    }
}
