//! The server's metrics, recorded through the `metrics` facade: names,
//! descriptions and the few helpers the engine and relay call. Which
//! exporter (if any) collects them is the binary's choice; without one every
//! call is a no-op. Labels are bounded sets (states, reasons, carrier ids),
//! never trade ids or subscriber numbers.

use std::time::Duration;

use crate::domain::{FailureReason, TradeState};
use crate::store::TradeRecord;

/// Trades created (idempotent replays not counted).
pub const TRADES_CREATED: &str = "syncpay_trades_created_total";
/// Trades that reached a final state, labelled `state` and `reason`.
pub const TRADES_FINISHED: &str = "syncpay_trades_finished_total";
/// Seconds from creation to settlement (server clock), SETTLED trades only.
pub const TRADE_SETTLE_SECONDS: &str = "syncpay_trade_settle_seconds";
/// Trades that are PENDING or OFFERED.
pub const OPEN_TRADES: &str = "syncpay_open_trades";
/// Refunds written (idempotent replays not counted).
pub const REFUNDS: &str = "syncpay_refunds_total";
/// Open relay streams (connected carriers).
pub const RELAY_CONNECTIONS: &str = "syncpay_relay_connections";
/// Messages waiting in a carrier's relay queue as seen by the last push to
/// it, labelled `carrier` (a sample, not a live count).
pub const RELAY_QUEUE_DEPTH: &str = "syncpay_relay_queue_depth";
/// Carriers disconnected because their relay queue was full.
pub const RELAY_QUEUE_FULL: &str = "syncpay_relay_queue_full_total";
/// Resolve requests to carriers in ask mode, by how they ended, labelled
/// `result`: `found`, `miss`, `refused_by_carrier`, `refused` (a malformed
/// answer, or one naming someone not that carrier's subscriber),
/// `timeout`, `not_connected`, `disconnected`, `too_many`.
pub const RESOLVES: &str = "syncpay_resolve_answers_total";
/// Resolve answers ignored: repeated, late, unknown or another carrier's.
pub const RESOLVE_ANSWERS_IGNORED: &str = "syncpay_resolve_answers_ignored_total";
/// Requests refused by a rate limit, labelled `limit`. The rate limiter
/// itself lands separately; the name is fixed here so dashboards can be
/// built now.
pub const RATE_LIMIT_REJECTIONS: &str = "syncpay_rate_limit_rejections_total";
/// TLS handshakes closed without finishing, labelled `reason` (`source_cap`,
/// `total_cap`, `hello_timeout`, `handshake_timeout`, `failed`; see
/// `handshakes.rs`).
pub const TLS_HANDSHAKES_REFUSED: &str = "syncpay_tls_handshakes_refused_total";
/// TLS handshakes in progress.
pub const TLS_HANDSHAKES_PENDING: &str = "syncpay_tls_handshakes_pending";

// Recorded by the store's writer thread (`store::writer`), named here so
// the whole list is in one place.
/// Seconds one group commit spends in sled flush + fdatasync.
pub const STORE_SYNC_SECONDS: &str = crate::store::sled::metric_names::SYNC_SECONDS;
/// Commands per group commit.
pub const STORE_GROUP_SIZE: &str = crate::store::sled::metric_names::GROUP_SIZE;
/// Write requests waiting for the writer after it took a group.
pub const STORE_QUEUE_DEPTH: &str = crate::store::sled::metric_names::QUEUE_DEPTH;
/// Failed syncs (each one stops the store).
pub const STORE_SYNC_FAILURES: &str = crate::store::sled::metric_names::SYNC_FAILURES;

/// Registers units and descriptions with the installed recorder; call once
/// after installing it.
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(TRADES_CREATED, "Trades created (idempotent replays not counted)");
    describe_counter!(TRADES_FINISHED, "Trades that reached a final state, by state and failure reason");
    describe_histogram!(TRADE_SETTLE_SECONDS, Unit::Seconds, "Time from CreateTrade to SETTLED (server clock)");
    describe_gauge!(OPEN_TRADES, "Trades that are PENDING or OFFERED");
    describe_counter!(REFUNDS, "Refunds written (idempotent replays not counted)");
    describe_gauge!(RELAY_CONNECTIONS, "Open carrier relay streams");
    describe_gauge!(RELAY_QUEUE_DEPTH, "Messages waiting in a carrier's relay queue, sampled at each push");
    describe_counter!(RELAY_QUEUE_FULL, "Carriers disconnected because their relay queue was full");
    describe_counter!(RESOLVES, "Resolve requests to carriers in ask mode, by result");
    describe_counter!(RESOLVE_ANSWERS_IGNORED, "Resolve answers ignored: repeated, late, unknown or another carrier's");
    describe_counter!(RATE_LIMIT_REJECTIONS, "Requests refused by a rate limit, by limit");
    describe_counter!(TLS_HANDSHAKES_REFUSED, "TLS handshakes closed without finishing, by reason");
    describe_gauge!(TLS_HANDSHAKES_PENDING, "TLS handshakes in progress");
    describe_histogram!(STORE_SYNC_SECONDS, Unit::Seconds, "sled flush + fdatasync per group commit");
    describe_histogram!(STORE_GROUP_SIZE, Unit::Count, "Commands made durable by one group commit");
    describe_gauge!(STORE_QUEUE_DEPTH, "Write requests waiting for the store's writer");
    describe_counter!(STORE_SYNC_FAILURES, "Failed syncs (each one stops the store)");
}

/// Sets the open-trade gauge (at start, from the store).
pub fn set_open_trades(count: usize) {
    metrics::gauge!(OPEN_TRADES).set(u32::try_from(count).map_or(f64::from(u32::MAX), f64::from));
}

/// A new trade was committed.
pub fn trade_created() {
    metrics::counter!(TRADES_CREATED).increment(1);
    metrics::gauge!(OPEN_TRADES).increment(1.0);
}

/// A trade reached its final state in a commit just made durable. Called
/// exactly once per trade: only where the command made the transition.
pub fn trade_finished(trade: &TradeRecord) {
    let state = trade.state;
    debug_assert!(state.is_final());
    metrics::counter!(TRADES_FINISHED, "state" => state.name(), "reason" => reason_label(trade.failure)).increment(1);
    metrics::gauge!(OPEN_TRADES).decrement(1.0);
    if state == TradeState::Settled {
        if let Some(finished) = trade.finished_at {
            let ms = finished.0.saturating_sub(trade.created_at.0);
            // Milliseconds to seconds for the exposition; the metric is
            // an observation, not money, so a float is fine here.
            metrics::histogram!(TRADE_SETTLE_SECONDS).record(Duration::from_millis(ms).as_secs_f64());
        }
    }
}

fn reason_label(reason: Option<FailureReason>) -> &'static str {
    reason.map_or("", FailureReason::name)
}

/// A refund was written.
pub fn refunded() {
    metrics::counter!(REFUNDS).increment(1);
}

/// A relay stream opened (+1) or closed (-1).
pub fn relay_connected(open: bool) {
    let g = metrics::gauge!(RELAY_CONNECTIONS);
    if open {
        g.increment(1.0)
    } else {
        g.decrement(1.0)
    }
}

/// The depth of a carrier's relay queue after a push.
pub fn relay_queue_depth(carrier: &str, depth: usize) {
    metrics::gauge!(RELAY_QUEUE_DEPTH, "carrier" => carrier.to_owned())
        .set(u32::try_from(depth).map_or(f64::from(u32::MAX), f64::from));
}

/// A carrier was disconnected for a full relay queue.
pub fn relay_queue_full(carrier: &str) {
    metrics::counter!(RELAY_QUEUE_FULL, "carrier" => carrier.to_owned()).increment(1);
}

/// A resolve request ended with `result` (one of the [`RESOLVES`] labels).
pub fn resolved(result: &'static str) {
    metrics::counter!(RESOLVES, "result" => result).increment(1);
}

/// A resolve answer was ignored.
pub fn resolve_answer_ignored() {
    metrics::counter!(RESOLVE_ANSWERS_IGNORED).increment(1);
}

/// A request was refused by the named rate limit (for the rate limiter).
pub fn rate_limited(limit: &'static str) {
    metrics::counter!(RATE_LIMIT_REJECTIONS, "limit" => limit).increment(1);
}

/// A TLS handshake was closed without finishing, for `reason`.
pub fn tls_handshake_refused(reason: &'static str) {
    metrics::counter!(TLS_HANDSHAKES_REFUSED, "reason" => reason).increment(1);
}

/// TLS handshakes in progress now.
pub fn set_tls_handshakes_pending(count: usize) {
    metrics::gauge!(TLS_HANDSHAKES_PENDING).set(u32::try_from(count).map_or(f64::from(u32::MAX), f64::from));
}
