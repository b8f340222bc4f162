//! A trade's life as its shop drives it: create, look up, await the final
//! state, cancel, refund. Every lookup is scoped to the calling shop:
//! another shop's trade is unknown, exactly like no trade.

use std::time::Duration;

use tokio::sync::watch;
use tracing::instrument;

use crate::domain::{Amount, ShopId, TradeId, TradeState, UnixMs};
use crate::metrics;
use crate::store::{
    CancelOutcome, CancelRefusal, CreateTradeRefusal, Created, NewRefund, NewTrade, PayerRef, RefundRefusal, Refunded,
    RemoteChange, TradeRecord, TradeRequest,
};

use super::{now, stopped, Engine, EngineError};

/// A CreateTrade as validated at the edge: the request as the shop sent it.
#[derive(Debug, Clone)]
pub struct ShopTrade {
    pub request: TradeRequest<PayerRef>,
    pub idempotency_key: Option<String>,
}

/// No such trade for this shop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnknownTrade;

/// Why an AwaitTrade ended without its trade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AwaitRefusal {
    UnknownTrade,
    /// The server is shutting down; the caller retries elsewhere or later.
    ShuttingDown,
}

/// How often `AwaitTrade` reads its trade again besides the local wake-up:
/// with several nodes on one database (the PostgreSQL backend) another
/// node may finish the trade, which wakes nobody here. A read every 250 ms
/// per waiting call is cheap; correctness never rests on a wake-up.
pub const AWAIT_REREAD: Duration = Duration::from_millis(250);

impl Engine {
    /// Creates a trade; answers once it is durable, with the trade and
    /// whether it is an idempotent replay of an earlier one.
    #[instrument(skip_all, fields(shop = %shop, trade_id = tracing::field::Empty))]
    pub async fn create_trade(&self, shop: &ShopId, t: ShopTrade) -> Result<Created, EngineError<CreateTradeRefusal>> {
        // The shop's own rate, per request: retries and refused requests
        // count, since each costs the server the same work (a refusal says
        // when to retry, and a retry then returns the original trade). The
        // buyer's allowance is spent later, by the store, only if this
        // request creates a trade that sends an offer: not by a replay, a
        // conflict, or any refusal (see `RateLimits::offer_gate`).
        self.rates.shop_trades.check(shop).map_err(EngineError::Limited)?;
        let trade_id = TradeId::generate().map_err(|e| EngineError::Internal(e.to_string()))?;
        tracing::Span::current().record("trade_id", tracing::field::display(trade_id));
        let at = now();
        let asked = match &t.request.payer {
            PayerRef::Network(identity) => {
                self.check_observed_at(identity.observed_at, at)?;
                self.ask_carrier(shop, identity).await?
            }
            PayerRef::Number(_) => None,
        };
        // Asking a carrier takes time: the trade starts when it is created.
        let at = now();
        let new = NewTrade {
            shop: shop.clone(),
            trade_id,
            request: t.request,
            idempotency_key: t.idempotency_key,
            binding_code: self.secret.binding_code(trade_id).to_string(),
            max_open_per_register: self.limits.max_open_trades_per_register,
            offer_gate: self.rates.offer_gate(shop, trade_id),
            asked,
            now: at,
        };
        let created = self.store.create_trade(new).await?;
        if created.replayed {
            // The span names the id we generated; the replay is another.
            tracing::info!(original_trade_id = %created.trade.id, state = created.trade.state.name(), "idempotent replay");
        } else {
            metrics::trade_created();
            tracing::info!(state = created.trade.state.name(), "trade created");
        }
        self.settled_effects(Some(&created.trade), &created.deliveries);
        Ok(created)
    }

    /// A network identity must be observed no later than a small clock skew
    /// ahead of now, and no earlier than the lease retention allows.
    fn check_observed_at(&self, observed: UnixMs, now: UnixMs) -> Result<(), EngineError<CreateTradeRefusal>> {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        if observed.0 > now.0.saturating_add(ms(crate::sync_server::limits::MAX_OBSERVED_SKEW)) {
            return Err(EngineError::Refused(CreateTradeRefusal::ObservedInFuture));
        }
        if observed.0 < now.0.saturating_sub(ms(self.limits.lease_retention)) {
            let days = self.limits.lease_retention.as_secs() / 86_400;
            return Err(EngineError::Refused(CreateTradeRefusal::ObservedBeforeRetention { days }));
        }
        Ok(())
    }

    /// The shop's own trade.
    pub async fn trade(&self, shop: &ShopId, id: &TradeId) -> Result<TradeRecord, EngineError<UnknownTrade>> {
        match self.store.trade(id).await? {
            Some(t) if &t.shop == shop => Ok(t),
            _ => Err(EngineError::Refused(UnknownTrade)),
        }
    }

    /// The shop's trade once it is final, or as it is when `wait` is over.
    pub async fn await_trade(
        &self,
        shop: &ShopId,
        id: TradeId,
        wait: Duration,
        shutdown: &watch::Receiver<bool>,
    ) -> Result<TradeRecord, EngineError<AwaitRefusal>> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut shutdown = shutdown.clone();
        // Another node finishing the trade wakes this one through its
        // announcement (subscribed before the first read, so none falls
        // between), or at the latest at the next re-read.
        let remote = self.store.remote();
        let reread = remote.as_ref().map_or(AWAIT_REREAD, |r| r.poll);
        let mut changes = super::subscribe(remote.as_ref());
        loop {
            let guard = self.finals.wait(id);
            let notified = guard.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let trade = self.trade(shop, &id).await.map_err(|e| e.map(|UnknownTrade| AwaitRefusal::UnknownTrade))?;
            if trade.state.is_final() || tokio::time::Instant::now() >= deadline {
                return Ok(trade);
            }
            let next_read = tokio::time::sleep(reread);
            tokio::pin!(next_read);
            loop {
                tokio::select! {
                    _ = &mut notified => break,
                    _ = &mut next_read => break,
                    _ = tokio::time::sleep_until(deadline) => break,
                    change = super::remote_change(&mut changes) => match change {
                        RemoteChange::TradeFinal(t) if t == id => break,
                        RemoteChange::Resync => break,
                        _ => {}
                    },
                    _ = stopped(&mut shutdown) => return Err(EngineError::Refused(AwaitRefusal::ShuttingDown)),
                }
            }
        }
    }

    #[instrument(skip_all, fields(trade_id = %trade))]
    pub async fn cancel(&self, shop: &ShopId, trade: TradeId) -> Result<TradeRecord, EngineError<CancelRefusal>> {
        match self.store.cancel(shop, trade, now()).await? {
            CancelOutcome::Cancelled { trade: t, deliveries } => {
                metrics::trade_finished(&t);
                tracing::info!(state = t.state.name(), "trade cancelled");
                self.settled_effects(Some(&t), &deliveries);
                Ok(t)
            }
            CancelOutcome::Expired { trade: t, deliveries } => {
                // The deadline had passed: this commit expired the trade,
                // and the cancel is refused as for any final trade.
                metrics::trade_finished(&t);
                tracing::info!("cancel came after the deadline; trade expired");
                self.settled_effects(Some(&t), &deliveries);
                Err(EngineError::Refused(CancelRefusal::AlreadyFinal(TradeState::Expired)))
            }
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
    ) -> Result<Refunded, EngineError<RefundRefusal>> {
        let refund = NewRefund { shop: shop.clone(), trade, amount, idempotency_key, now: now() };
        let refunded = self.store.refund(refund).await?;
        if !refunded.replayed {
            metrics::refunded();
        }
        tracing::info!(
            refund_id = refunded.refund_id,
            amount = refunded.amount.minor(),
            replayed = refunded.replayed,
            "trade refunded"
        );
        Ok(refunded)
    }
}
