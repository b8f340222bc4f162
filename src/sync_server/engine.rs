//! Trade orchestration: validated requests become store commands; once a
//! commit is durable its outbox deliveries go to the carrier gateway and
//! waiters on final states are woken. Also the expiry sweeper.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{watch, Notify};
use tracing::instrument;

use crate::carrier::{CarrierGateway, PushResult};
use crate::domain::approval::ServerSecret;
use crate::domain::{Amount, CarrierId, Currency, Decision, RegisterId, ShopId, SubscriberNumber, TradeId, UnixMs};
use crate::store::{
    AnswerOutcome, Command, CommandOutcome, CreateTrade, Delivery, Store, StoreError, TradeRecord, TradeRequest,
};

use super::error::ApiError;
use super::limits::Limits;
use super::rate_limit::{RateLimits, StreamSlots, EVICT_INTERVAL, WATCH_STREAMS};

/// The wall clock, read only here and passed into the store and domain.
pub fn now() -> UnixMs {
    let ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
    UnixMs(u64::try_from(ms).unwrap_or(u64::MAX))
}

/// How often the sweeper looks for overdue trades. An expiry lands this
/// long after the deadline at most, plus the time the writer needs for the
/// commands queued ahead of it. Answers are held to the deadline exactly
/// regardless: an answer or cancel after it expires the trade itself.
pub const SWEEP_INTERVAL: Duration = Duration::from_millis(100);
/// Trades expired per sweep round, so one round never holds the writer long.
pub const SWEEP_BATCH: usize = 256;

/// A validated CreateTrade.
#[derive(Debug, Clone)]
pub struct NewTrade {
    pub register: RegisterId,
    pub payer: SubscriberNumber,
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
    pub limits: Limits,
    pub finals: FinalWaiters,
    pub rates: RateLimits,
    pub watch_slots: Arc<StreamSlots<ShopId>>,
}

impl Engine {
    pub fn new(store: Store, gateway: Arc<dyn CarrierGateway>, secret: ServerSecret, limits: Limits) -> Self {
        let rates = RateLimits::new(&limits);
        let watch_slots = StreamSlots::new(WATCH_STREAMS, limits.max_watch_streams_per_shop);
        Engine { store, gateway, secret, limits, finals: FinalWaiters::default(), rates, watch_slots }
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
            }
        }
        self.dispatch(deliveries);
    }

    /// Creates a trade; answers once it is durable. Returns the trade and
    /// whether it is an idempotent replay of an earlier one.
    #[instrument(skip_all, fields(shop = %shop))]
    pub async fn create_trade(&self, shop: &ShopId, t: NewTrade) -> Result<(TradeRecord, bool), ApiError> {
        if t.ttl < self.limits.min_ttl || t.ttl > self.limits.max_ttl {
            return Err(ApiError::invalid(
                "ttl_seconds",
                format!("must be {}..={} seconds", self.limits.min_ttl.as_secs(), self.limits.max_ttl.as_secs()),
            ));
        }
        // The shop's own rate first, so a shop over its limit spends none
        // of the buyer's. Counted per request, retries included.
        self.rates.shop_trades.check(shop)?;
        self.rates.subscriber_offers.check(&t.payer)?;
        let trade_id = TradeId::generate().map_err(|e| ApiError::Internal(e.to_string()))?;
        let command = Command::CreateTrade(CreateTrade {
            shop: shop.clone(),
            trade_id,
            request: TradeRequest {
                register: t.register,
                payer: t.payer,
                amount: t.amount,
                currency: t.currency,
                description: t.description,
                ttl_ms: u64::try_from(t.ttl.as_millis()).unwrap_or(u64::MAX),
            },
            idempotency_key: t.idempotency_key,
            binding_code: self.secret.binding_code(trade_id).to_string(),
            max_open_per_register: self.limits.max_open_trades_per_register,
            now: now(),
        });
        match self.store.execute(command).await? {
            CommandOutcome::Trade { trade: Some(trade), deliveries, replayed } => {
                tracing::info!(trade_id = %trade.id, state = trade.state.name(), replayed, "trade created");
                self.settled_effects(Some(&trade), &deliveries);
                Ok((trade, replayed))
            }
            other => Err(unexpected(&other)),
        }
    }

    #[instrument(skip_all, fields(trade_id = %trade))]
    pub async fn cancel(&self, shop: &ShopId, trade: TradeId) -> Result<TradeRecord, ApiError> {
        match self.store.execute(Command::Cancel { shop: shop.clone(), trade, now: now() }).await? {
            CommandOutcome::Trade { trade: Some(t), deliveries, .. } => {
                tracing::info!(state = t.state.name(), "trade cancelled");
                self.settled_effects(Some(&t), &deliveries);
                Ok(t)
            }
            CommandOutcome::TooLate { trade: t, deliveries } => {
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
        let command = Command::Answer { carrier: carrier.clone(), trade, decision, signature, now: now() };
        let pending = self.store.submit(command).await?;
        let engine = self.clone();
        Ok(async move {
            match pending.outcome().await? {
                CommandOutcome::Answer(outcome) => {
                    match (&outcome.rejected, &outcome.trade) {
                        (None, Some(t)) => tracing::info!(
                            trade_id = %trade, state = t.state.name(), failure = ?t.failure, "handset answer taken"
                        ),
                        (Some(why), _) => {
                            tracing::info!(trade_id = %trade, rejected = ?why, "handset answer refused")
                        }
                        (None, None) => {}
                    }
                    engine.settled_effects(outcome.trade.as_ref(), &outcome.deliveries);
                    Ok(outcome)
                }
                other => Err(unexpected(&other)),
            }
        })
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

    /// Runs the expiry sweeper until `shutdown` turns true. Overdue trades
    /// left by a crash expire on the first round.
    pub async fn run_sweeper(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut evicted_at = tokio::time::Instant::now();
        loop {
            if let Err(e) = self.expire_due().await {
                tracing::error!(error = %e, "expiry sweep failed");
            }
            if evicted_at.elapsed() >= EVICT_INTERVAL {
                self.rates.evict_idle();
                evicted_at = tokio::time::Instant::now();
            }
            tokio::select! {
                _ = tokio::time::sleep(SWEEP_INTERVAL) => {}
                _ = stopped(&mut shutdown) => return,
            }
        }
    }
}

fn unexpected(outcome: &CommandOutcome) -> ApiError {
    ApiError::Internal(format!("unexpected store outcome: {outcome:?}"))
}
