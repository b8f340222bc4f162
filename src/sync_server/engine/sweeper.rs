//! Housekeeping in the background: trades whose deadline passed are
//! expired (the ones a crash left overdue on the first round), lease
//! records beyond the retention are pruned, idle rate-limit keys evicted.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::metrics;
use crate::store::{ExpireOutcome, Failure, StoreError};

use super::super::limits::LEASE_PRUNE_INTERVAL;
use super::super::rate_limit::EVICT_INTERVAL;
use super::{now, stopped, Engine};

/// How often the sweeper looks for overdue trades. An expiry lands this
/// long after the deadline at most, plus the time the writer needs for the
/// writes queued ahead of it. Answers are held to the deadline exactly
/// regardless: an answer or cancel after it expires the trade itself.
pub const SWEEP_INTERVAL: Duration = Duration::from_millis(100);
/// Trades expired per sweep round, so one round never holds the writer long.
pub const SWEEP_BATCH: usize = 256;

impl Engine {
    /// Expires every overdue trade (in rounds of `SWEEP_BATCH`); returns how
    /// many expired.
    pub async fn expire_due(&self) -> Result<usize, Failure> {
        let mut expired = 0;
        loop {
            let at = now();
            let due = self.store.due(at, SWEEP_BATCH).await?;
            let round = due.len();
            // Queue the whole round, then await it: the expiries share
            // group commits instead of waiting for one fsync each.
            let mut pending = Vec::with_capacity(round);
            for trade in due {
                pending.push(self.store.submit_expire(trade, at).await?);
            }
            for write in pending {
                let outcome = match write.outcome().await {
                    Ok(outcome) => outcome,
                    Err(StoreError::Refused(never)) => match never {},
                    Err(StoreError::Failed(f)) => return Err(f),
                };
                if let ExpireOutcome::Expired { trade, deliveries } = outcome {
                    metrics::trade_finished(&trade);
                    tracing::info!(trade_id = %trade.id, "trade expired");
                    expired += 1;
                    self.settled_effects(Some(&trade), &deliveries);
                }
            }
            if round < SWEEP_BATCH {
                return Ok(expired);
            }
        }
    }

    /// Runs the sweeper until `shutdown` turns true.
    pub async fn run_sweeper(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut last_prune = std::time::Instant::now();
        let mut evicted_at = tokio::time::Instant::now();
        loop {
            if let Err(e) = self.expire_due().await {
                tracing::error!(error = %e, "expiry sweep failed");
            }
            if last_prune.elapsed() >= LEASE_PRUNE_INTERVAL {
                last_prune = std::time::Instant::now();
                if let Err(e) = self.prune_leases().await {
                    tracing::error!(error = %e, "lease pruning failed");
                }
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
