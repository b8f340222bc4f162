//! Every limit the server enforces, each a named default with the reason
//! for its size, gathered in one struct the server is configured with.

use std::time::Duration;

use super::rate_limit::Rate;

/// 10^12 minor units: far above any mail-order basket in any currency,
/// far below where totals of many trades could approach u64::MAX.
pub const MAX_AMOUNT_MINOR: u64 = 1_000_000_000_000;
/// Fits a handset screen and an SMS-sized notification.
pub const MAX_DESCRIPTION_CHARS: usize = 140;
/// Register labels and display names are shown on one handset line.
pub const MAX_LABEL_CHARS: usize = 64;
pub const MAX_DISPLAY_NAME_CHARS: usize = 64;
/// Long enough for a UUID or an order number with a prefix.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 64;
/// Bounds the work one register can leave hanging (and its deadlines).
pub const MAX_OPEN_TRADES_PER_REGISTER: u32 = 10_000;
/// A shop with more tills than this is probably leaking registers.
pub const MAX_OPEN_REGISTERS_PER_SHOP: u32 = 1_000;
pub const MAX_SHOPS: u32 = 1_000_000;
/// SPEC: default 120 s, at most 15 min. One second is the floor (tests and
/// the demo use it; a person needs more).
pub const DEFAULT_TTL: Duration = Duration::from_secs(120);
pub const MIN_TTL: Duration = Duration::from_secs(1);
pub const MAX_TTL: Duration = Duration::from_secs(15 * 60);
/// AwaitTrade waits this long by default and at most the maximum, below
/// common proxy idle timeouts.
pub const DEFAULT_AWAIT: Duration = Duration::from_secs(30);
pub const MAX_AWAIT: Duration = Duration::from_secs(60);
/// Events buffered per WatchTrades stream before the sender waits for the
/// client; the stream reads from the store, so a slow client costs no
/// memory beyond this.
pub const STREAM_BUFFER: usize = 256;
/// Largest request message; every real request is far smaller. Checked on
/// the gRPC framing before decoding (`message_limit.rs`).
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// A busy web shop creates a few trades a second; fifty a second per shop
/// is far above that and still bounds what one shop's bug or key costs.
pub const SHOP_TRADES: Rate = Rate::new(50, Duration::from_secs(1));
/// A buyer approves a handful of purchases a minute at most. More pushes
/// than this are spam or an attempt to wear the buyer down until they tap
/// "approve" (approval fatigue).
pub const SUBSCRIBER_OFFERS: Rate = Rate::new(5, Duration::from_secs(60));
/// WatchTrades streams one shop may hold open at once; each costs a task
/// and a `STREAM_BUFFER`.
pub const MAX_WATCH_STREAMS_PER_SHOP: usize = 32;
/// HTTP/2 streams (calls) in flight on one connection.
pub const MAX_CONCURRENT_STREAMS_PER_CONNECTION: u32 = 256;
/// Messages waiting for one carrier's relay stream. A carrier that falls
/// this far behind is disconnected and catches up from the outbox on
/// reconnect.
pub const RELAY_QUEUE_DEPTH: usize = 1024;
/// Replayed outbox messages read ahead of the carrier on a new relay
/// stream. The replay waits for room here (it is paced by the carrier,
/// however long the outbox), so this bounds memory, not the outbox; it
/// never counts against the live relay queue.
pub const RELAY_REPLAY_BUFFER: usize = 64;
/// Uplink messages from one relay stream processed at once.
pub const MAX_RELAY_INFLIGHT: usize = 1024;
/// Characters of a caller's malformed id echoed back to it.
pub const MAX_ECHOED_ID_CHARS: usize = 64;
/// Page sizes for listing and replay.
pub const MAX_LIST: usize = 1000;
/// Lease starts plus stops in one ReportLeases call: one transaction, a
/// bounded time on the writer.
pub const MAX_LEASE_BATCH: usize = 1000;
/// Prefixes in one CreateCarrier/AddCarrierPrefixes call.
pub const MAX_PREFIXES_PER_CALL: usize = 1000;
/// How far ahead of the server's clock a shop's `observed_at_ms` may be
/// (clock skew between the shop and the server).
pub const MAX_OBSERVED_SKEW: Duration = Duration::from_secs(5 * 60);
/// How long lease records are kept (and so how old a network identity may
/// be): 90 days, a common retention for carrier session records.
pub const LEASE_RETENTION: Duration = Duration::from_secs(90 * 24 * 3600);
/// How long the server waits for a carrier in ask mode to answer a resolve
/// request. The shop's CreateTrade waits this long at most (a checkout is
/// on hold); a carrier answers from its own lease records in milliseconds,
/// so 3 s leaves room for a slow link and a busy relay without letting a
/// silent carrier hold checkouts for long.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(3);
/// Resolve requests waiting for answers at once, all carriers together:
/// each holds one shop call open for at most `RESOLVE_TIMEOUT`, so 1024
/// is far above what fifty trades a second per shop need, and bounds the
/// memory a silent carrier can pin. More are RESOURCE_EXHAUSTED.
pub const MAX_PENDING_RESOLVES: usize = 1024;
/// How often superseded lease records older than the retention are pruned.
pub const LEASE_PRUNE_INTERVAL: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone)]
pub struct Limits {
    pub max_amount_minor: u64,
    pub max_open_trades_per_register: u32,
    pub max_open_registers_per_shop: u32,
    pub max_shops: u32,
    pub default_ttl: Duration,
    pub min_ttl: Duration,
    pub max_ttl: Duration,
    pub lease_retention: Duration,
    /// Largest request message, in bytes.
    pub max_request_bytes: usize,
    /// Trades one shop may create (a zero count: no limit).
    pub shop_trades: Rate,
    /// Trades (and so offers) naming one subscriber, across all shops.
    pub subscriber_offers: Rate,
    /// Messages waiting for one carrier's relay stream; more and the
    /// stream ends RESOURCE_EXHAUSTED (the carrier reconnects and catches
    /// up from the outbox).
    pub relay_queue_depth: usize,
    /// Events buffered per WatchTrades stream (backpressure, never loss:
    /// the store is the buffer).
    pub stream_buffer: usize,
    pub max_watch_streams_per_shop: usize,
    /// How long a resolve request to a carrier in ask mode may take.
    pub resolve_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_amount_minor: MAX_AMOUNT_MINOR,
            max_open_trades_per_register: MAX_OPEN_TRADES_PER_REGISTER,
            max_open_registers_per_shop: MAX_OPEN_REGISTERS_PER_SHOP,
            max_shops: MAX_SHOPS,
            default_ttl: DEFAULT_TTL,
            min_ttl: MIN_TTL,
            max_ttl: MAX_TTL,
            lease_retention: LEASE_RETENTION,
            max_request_bytes: MAX_REQUEST_BYTES,
            shop_trades: SHOP_TRADES,
            subscriber_offers: SUBSCRIBER_OFFERS,
            relay_queue_depth: RELAY_QUEUE_DEPTH,
            stream_buffer: STREAM_BUFFER,
            max_watch_streams_per_shop: MAX_WATCH_STREAMS_PER_SHOP,
            resolve_timeout: RESOLVE_TIMEOUT,
        }
    }
}
