//! Housekeeping in the background: trades whose deadline passed are
//! expired (the ones a crash left overdue on the first round), lease
//! records beyond the retention are pruned, idle rate-limit keys evicted.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::domain::UnixMs;
use crate::metrics;
use crate::store::{ExpireOutcome, Failure, StoreError};

use super::super::limits::LEASE_PRUNE_INTERVAL;
use super::super::rate_limit::EVICT_INTERVAL;
use super::{now, stopped, Engine};

/// The sweeper sleeps until the earliest deadline of any open trade (a
/// trade committed with an earlier one wakes it) and expires what is due
/// then. An expiry lands after its deadline by the timer's millisecond,
/// plus the writer's time for the writes queued ahead of it and the round
/// of expiries before it (one group commit), plus the fsync that makes it
/// durable before `AwaitTrade` sees it. Answers are held to the deadline
/// exactly regardless: an answer or cancel after it expires the trade
/// itself.
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

    /// An open trade with this deadline is durable: wakes the sweeper if it
    /// sleeps for a later one.
    pub(super) fn deadline_added(&self, at: UnixMs) {
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
            let next = match swept {
                Ok(_) => self.store.next_deadline().await,
                Err(e) => Err(e),
            };
            let nap = match next {
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
