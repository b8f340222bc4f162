//! The only module that knows sled. A fixed set of trees, versioned
//! records, one writer thread that group-commits transactions and makes
//! each group durable with a real fsync before anyone is answered, and
//! consistent reads.

mod commands;
pub mod files;
mod network;
mod recent;
pub mod records;
mod verify;
mod writer;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot, watch};

use crate::domain::{AccountName, CarrierId, RegisterId, ShopId, SubscriberNumber, TradeId, UnixMs};

pub use commands::{
    AnswerOutcome, Command, CommandOutcome, CreateTrade, NetworkTrade, OfferGate, RejectedAnswer, SignatureCheck,
};
pub use network::{LeaseReport, StatementData, MAX_LEASE_WALK, MAX_PAYOUT_ENTRIES};
pub use records::{
    AccountRecord, Delivery, DeliveryBody, EventKind, EventRecord, Funding, OfferBody, PostingKind, PostingRecord,
    Principal, Receipt, RegisterRecord, ShopRecord, Sig64, SignedTerms, TradeRecord, TradeRequest,
};
pub use records::{
    BillLine, CapUsage, HandsetRecord, NetworkIdentity, NetworkTradeRequest, PayoutEntry, SubscriberRecord,
};
pub use verify::VerifyReport;

/// Names of the metrics the writer records through the `metrics` facade
/// (the store knows no exporter; without one they cost nothing).
pub mod metric_names {
    /// Seconds one group commit spends in sled flush + fdatasync.
    pub const SYNC_SECONDS: &str = "syncpay_store_sync_seconds";
    /// Commands made durable by one group commit.
    pub const GROUP_SIZE: &str = "syncpay_store_group_size";
    /// Write requests still queued after the writer took a group.
    pub const QUEUE_DEPTH: &str = "syncpay_store_write_queue_depth";
    /// Failed syncs (each one stops the store).
    pub const SYNC_FAILURES: &str = "syncpay_store_sync_failures_total";
}

/// Errors of the store layer. Rejections carry what the caller did wrong;
/// `Corrupt`, `Io` and `Stopped` are the server's problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    LimitExceeded(String),
    /// An [`OfferGate`] refused the offer (a rate limit): nothing written.
    #[error("{0}")]
    RateLimited(String),
    #[error("corrupt record: {0}")]
    Corrupt(String),
    #[error("storage I/O: {0}")]
    Io(String),
    #[error("the store stopped accepting writes after a failed sync")]
    Stopped,
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        StoreError::Io(e.to_string())
    }
}

/// How commits are made durable. `Fsync` is the default and the only
/// setting under which an acknowledgement means "survives power loss".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// sled flush followed by fdatasync of the store's data file, once per
    /// group of commits, before any of them is acknowledged.
    Fsync,
    /// sled flush only (sync_file_range on Linux): survives a process
    /// crash, not necessarily a power cut. Never the default.
    FlushOnly,
}

/// Injects a failure into the next sync, to prove that nothing is
/// acknowledged after a failed fsync. Only tests arm it; the CLI never
/// creates one.
#[derive(Debug, Default)]
pub struct SyncFault {
    armed: AtomicBool,
    fired: AtomicU64,
}

impl SyncFault {
    /// Makes the next sync fail.
    pub fn arm(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }

    /// How many syncs it has failed.
    pub fn fired(&self) -> u64 {
        self.fired.load(Ordering::SeqCst)
    }

    fn take(&self) -> bool {
        let hit = self.armed.swap(false, Ordering::SeqCst);
        if hit {
            self.fired.fetch_add(1, Ordering::SeqCst);
        }
        hit
    }
}

/// sled's page cache unless configured (`serve`'s `cache_mib`): 32 MiB.
/// At 64 MiB, 100 000 open trades cost ~1.1 KB of memory each (mostly this
/// cache filling); 32 MiB made no difference to throughput in alternating
/// 15-s benchmark runs (docs/BENCHMARK.md).
pub const DEFAULT_CACHE_BYTES: u64 = 32 * 1024 * 1024;

/// Store settings.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub path: PathBuf,
    pub durability: Durability,
    /// sled's page cache in bytes (its RSS can be a multiple of this).
    pub cache_bytes: u64,
    /// Test hook: fail a chosen sync.
    pub sync_fault: Option<Arc<SyncFault>>,
}

impl StoreConfig {
    pub fn new(path: impl AsRef<Path>) -> Self {
        StoreConfig {
            path: path.as_ref().to_owned(),
            durability: Durability::Fsync,
            cache_bytes: DEFAULT_CACHE_BYTES,
            sync_fault: None,
        }
    }
}

/// The trees. The order is the index into a transaction's view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum T {
    Meta = 0,
    Credentials,
    Shops,
    Carriers,
    Subscribers,
    Handsets,
    Registers,
    Accounts,
    Trades,
    Postings,
    Events,
    Outbox,
    Idempotency,
    Deadlines,
    /// Carrier prefixes, terms, shop acceptances, cap use, bill lines and
    /// payout entries, each under its own first key byte (`keys::net`).
    Network,
    /// Lease starts and stops (`keys::lease`).
    Leases,
}

const TREE_NAMES: [&str; 16] = [
    "meta",
    "credentials",
    "shops",
    "carriers",
    "subscribers",
    "handsets",
    "registers",
    "accounts",
    "trades",
    "postings",
    "events",
    "outbox",
    "idempotency",
    "deadlines",
    "network",
    "leases",
];

/// Key layouts. Variable parts are slugs or E.164 numbers, which never
/// contain 0x00, so `owner 0x00 …` prefixes are unambiguous; integers are
/// big-endian so keys sort by number.
pub(crate) mod keys {
    use super::*;

    pub fn owned(owner: &str, rest: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(owner.len() + 1 + rest.len());
        k.extend_from_slice(owner.as_bytes());
        k.push(0);
        k.extend_from_slice(rest);
        k
    }
    pub fn register(shop: &ShopId, id: &RegisterId) -> Vec<u8> {
        owned(shop.as_str(), id.as_bytes())
    }
    pub fn event(shop: &ShopId, seq: u64) -> Vec<u8> {
        owned(shop.as_str(), &seq.to_be_bytes())
    }
    pub fn outbox(carrier: &CarrierId, delivery_id: u64) -> Vec<u8> {
        owned(carrier.as_str(), &delivery_id.to_be_bytes())
    }
    pub fn idempotency(shop: &ShopId, key: &str) -> Vec<u8> {
        owned(shop.as_str(), key.as_bytes())
    }
    /// Refund keys live beside trade keys; 0xff never occurs in a key
    /// (visible ASCII), so the two namespaces cannot collide.
    pub fn refund_idempotency(shop: &ShopId, key: &str) -> Vec<u8> {
        let mut rest = Vec::with_capacity(1 + key.len());
        rest.push(0xff);
        rest.extend_from_slice(key.as_bytes());
        owned(shop.as_str(), &rest)
    }
    pub fn deadline(at: UnixMs, trade: &TradeId) -> Vec<u8> {
        let mut k = Vec::with_capacity(24);
        k.extend_from_slice(&at.0.to_be_bytes());
        k.extend_from_slice(trade.as_bytes());
        k
    }
    pub fn account(name: &AccountName) -> Vec<u8> {
        name.key().into_bytes()
    }

    /// Keys of the `network` tree. The first byte names the record kind;
    /// slugs and numbers never contain 0x00, so `x 0x00 y` is unambiguous.
    pub mod net {
        use super::*;
        use crate::domain::{Currency, IpPrefix, Month};

        /// `P` ‖ network (16) ‖ length: one prefix.
        pub fn prefix(p: &IpPrefix) -> Vec<u8> {
            let mut k = Vec::with_capacity(18);
            k.push(b'P');
            k.extend_from_slice(&p.network().0);
            k.push(p.len());
            k
        }
        /// The set of prefix lengths in use (17-byte bitmap).
        pub const LENGTHS: &[u8] = b"Lengths";
        /// `F` ‖ carrier: its terms.
        pub fn terms(carrier: &CarrierId) -> Vec<u8> {
            [&b"F"[..], carrier.as_str().as_bytes()].concat()
        }
        /// `A` ‖ carrier 0 shop: the carrier accepts the shop.
        pub fn acceptance(carrier: &CarrierId, shop: &ShopId) -> Vec<u8> {
            [&b"A"[..], carrier.as_str().as_bytes(), b"\0", shop.as_str().as_bytes()].concat()
        }
        fn bill_owner(tag: u8, carrier: &CarrierId, number: &SubscriberNumber) -> Vec<u8> {
            [&[tag][..], carrier.as_str().as_bytes(), b"\0", number.as_str().as_bytes(), b"\0"].concat()
        }
        /// `U` ‖ carrier 0 number 0 ‖ currency ‖ month: cap use.
        pub fn cap_usage(carrier: &CarrierId, number: &SubscriberNumber, currency: Currency, month: Month) -> Vec<u8> {
            let mut k = bill_owner(b'U', carrier, number);
            k.extend_from_slice(currency.as_bytes());
            k.extend_from_slice(&month.number().to_be_bytes());
            k
        }
        /// `B` ‖ carrier 0 number 0 ‖ month: the prefix of a month's lines.
        pub fn bill_month(carrier: &CarrierId, number: &SubscriberNumber, month: Month) -> Vec<u8> {
            let mut k = bill_owner(b'B', carrier, number);
            k.extend_from_slice(&month.number().to_be_bytes());
            k
        }
        /// A bill line, ordered by its settlement's posting set.
        pub fn bill_line(carrier: &CarrierId, number: &SubscriberNumber, month: Month, set_id: u64) -> Vec<u8> {
            let mut k = bill_month(carrier, number, month);
            k.extend_from_slice(&set_id.to_be_bytes());
            k
        }
        /// `I` ‖ trade: the key of the trade's bill line, if carrier-billed.
        pub fn bill_of_trade(trade: &TradeId) -> Vec<u8> {
            [&b"I"[..], &trade.as_bytes()[..]].concat()
        }
        /// `S` ‖ shop 0 ‖ at ‖ set: a payout entry, in time order per shop.
        pub fn payout(shop: &ShopId, at: UnixMs, set_id: u64) -> Vec<u8> {
            let mut k = [&b"S"[..], shop.as_str().as_bytes(), b"\0"].concat();
            k.extend_from_slice(&at.0.to_be_bytes());
            k.extend_from_slice(&set_id.to_be_bytes());
            k
        }
    }

    /// A lease record: address (16) ‖ instant (8) ‖ first port (2) ‖ kind
    /// (0 stop, 1 start), all big-endian. One address's history is one
    /// contiguous run in time order, so "who held it at t" is a reverse
    /// range scan from (address, t); at the same instant a start sorts
    /// after a stop and so wins (lease intervals are [start, end)).
    pub fn lease(addr: &crate::domain::IpKey, at: UnixMs, port_lo: u16, start: bool) -> [u8; 27] {
        let mut k = [0u8; 27];
        k[..16].copy_from_slice(&addr.0);
        k[16..24].copy_from_slice(&at.0.to_be_bytes());
        k[24..26].copy_from_slice(&port_lo.to_be_bytes());
        k[26] = u8::from(start);
        k
    }
}

/// Per-shop durable event heads: the highest sequence number that is on
/// stable storage. Streams read up to the head and wait for it to move.
#[derive(Default)]
pub struct EventHeads {
    heads: Mutex<HashMap<ShopId, watch::Sender<u64>>>,
}

impl EventHeads {
    fn set(&self, shop: &ShopId, head: u64) {
        let mut map = self.heads.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(shop) {
            Some(tx) => {
                tx.send_if_modified(|v| {
                    let moved = head > *v;
                    if moved {
                        *v = head;
                    }
                    moved
                });
            }
            None => {
                map.insert(shop.clone(), watch::Sender::new(head));
            }
        }
    }

    /// A receiver of the shop's durable head; `None` for an unknown shop.
    pub fn subscribe(&self, shop: &ShopId) -> Option<watch::Receiver<u64>> {
        let map = self.heads.lock().unwrap_or_else(|p| p.into_inner());
        map.get(shop).map(|tx| tx.subscribe())
    }
}

/// What the writer thread and the readers share.
pub(crate) struct Shared {
    pub db: sled::Db,
    pub trees: Vec<sled::Tree>,
    /// Number of the write group being applied; readers wait until that
    /// group is durable so they never report a state that could vanish.
    pub applying: AtomicU64,
    pub durable: watch::Sender<u64>,
    pub stopped: AtomicBool,
    pub heads: EventHeads,
    /// Declared last: dropped after `db` and `trees`, so its signal means
    /// sled is closed and its file lock released.
    closed: CloseSignal,
}

/// Fires when the last handle of the store is gone.
struct CloseSignal(watch::Sender<bool>);

impl Drop for CloseSignal {
    fn drop(&mut self) {
        self.0.send_replace(true);
    }
}

/// How long `open` waits for the store's file lock. A previous server in
/// this process lets go within moments of its last handle dropping; a lock
/// held longer belongs to another process.
pub const OPEN_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// How often sled's flusher thread runs. sled 0.34 reclaims log segments
/// only there: each run relocates the live pages of at most one segment
/// that is at most half live (`SegmentCleaner::pop` stops at the end of a
/// segment), so this interval bounds how fast garbage is reclaimed.
/// Without the thread (`flush_every_ms(None)`, as before issue 6) nothing
/// is relocated and a segment comes back only once every page in it was
/// rewritten by the workload, which finished trades never are: the store
/// grew by ~3.3 KB per settled trade against ~0.7 KB of live records. Its
/// flush (and the `sync_all` after it) is extra: acknowledgements still
/// wait for the writer's own flush and fdatasync.
pub const SLED_GC_INTERVAL_MS: u64 = 50;

/// Log segment size of a new store. One flusher run cleans one segment, so
/// a larger segment reclaims more per run (at 50 ms and 50 000 trades:
/// 2.2 KB per settled trade with sled's 512 KiB default, 1.25 KB with
/// 2 MiB). sled refuses to open a store with another
/// segment size than it was made with, so an existing store keeps its own
/// ([`existing_segment_size`]).
pub const NEW_STORE_SEGMENT_SIZE: usize = 2 * 1024 * 1024;

/// The segment size recorded in an existing store's `conf` (sled writes
/// `segment_size: N` lines there, then a CRC), if there is one to read.
fn existing_segment_size(path: &Path) -> Option<usize> {
    let bytes = std::fs::read(path.join("conf")).ok()?;
    let text = String::from_utf8_lossy(&bytes);
    text.lines().find_map(|l| l.strip_prefix("segment_size: ")).and_then(|v| v.trim().parse().ok())
}

fn open_db(config: &StoreConfig) -> Result<sled::Db, StoreError> {
    let started = std::time::Instant::now();
    let segment_size = existing_segment_size(&config.path).unwrap_or(NEW_STORE_SEGMENT_SIZE);
    loop {
        let opened = sled::Config::new()
            .path(&config.path)
            .cache_capacity(config.cache_bytes)
            .segment_size(segment_size)
            .flush_every_ms(Some(SLED_GC_INTERVAL_MS))
            .open();
        match opened {
            Ok(db) => return Ok(db),
            // sled reports a held lock as an `Other` I/O error with this text.
            Err(sled::Error::Io(e)) if e.to_string().contains("could not acquire lock") => {
                if started.elapsed() >= OPEN_LOCK_WAIT {
                    return Err(StoreError::Io(format!(
                        "store {} is locked by another process",
                        config.path.display()
                    )));
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// A queued command whose outcome arrives once its group is durable.
pub struct PendingWrite(oneshot::Receiver<Result<CommandOutcome, StoreError>>);

impl PendingWrite {
    pub async fn outcome(self) -> Result<CommandOutcome, StoreError> {
        self.0.await.map_err(|_| StoreError::Stopped)?
    }
}

/// A handle to the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    shared: Arc<Shared>,
    writes: mpsc::Sender<writer::WriteRequest>,
}

/// How many write requests may wait for the writer; senders wait beyond.
pub const WRITE_QUEUE_DEPTH: usize = 4096;

impl Store {
    /// Opens (or creates) the store and starts its writer thread. The
    /// writer stops when every `Store` handle is dropped.
    pub fn open(config: StoreConfig) -> Result<Store, StoreError> {
        files::create_dir_all(&config.path).map_err(|e| StoreError::Io(format!("create store folder: {e}")))?;
        let db = open_db(&config)?;
        let trees = TREE_NAMES.iter().map(|n| db.open_tree(n)).collect::<Result<Vec<_>, _>>()?;
        let (durable, _) = watch::channel(0u64);
        let shared = Arc::new(Shared {
            db,
            trees,
            applying: AtomicU64::new(0),
            durable,
            stopped: AtomicBool::new(false),
            heads: EventHeads::default(),
            closed: CloseSignal(watch::Sender::new(false)),
        });
        let syncer = writer::Syncer::open(&config.path, config.durability, config.sync_fault.clone())?;
        // Whatever recovery found is made durable before anything reads it.
        shared.db.flush()?;
        syncer.sync_now()?;
        for item in shared.trees[T::Shops as usize].iter() {
            let (_, v) = item?;
            let shop: ShopRecord = records::decode(&v)?;
            shared.heads.set(&shop.id, shop.next_event_seq.saturating_sub(1));
        }
        let writes = writer::spawn(shared.clone(), syncer)?;
        Ok(Store { shared, writes })
    }

    pub(crate) fn tree(&self, t: T) -> &sled::Tree {
        &self.shared.trees[t as usize]
    }

    /// Runs a command through the writer; answers once it is durable.
    pub async fn execute(&self, command: Command) -> Result<CommandOutcome, StoreError> {
        self.submit(command).await?.outcome().await
    }

    /// Queues a command for the writer and returns once it is queued.
    /// Commands are applied in the order they were queued, so a caller can
    /// keep order (e.g. one relay stream's messages) while awaiting many
    /// outcomes at once.
    pub async fn submit(&self, command: Command) -> Result<PendingWrite, StoreError> {
        if self.shared.stopped.load(Ordering::SeqCst) {
            return Err(StoreError::Stopped);
        }
        let (reply, rx) = oneshot::channel();
        self.writes.send(writer::WriteRequest { command, reply }).await.map_err(|_| StoreError::Stopped)?;
        Ok(PendingWrite(rx))
    }

    /// Turns true once every handle of this store (and its writer) is gone
    /// and sled has closed its files.
    pub fn closed(&self) -> watch::Receiver<bool> {
        self.shared.closed.0.subscribe()
    }

    /// Resolves once the store has stopped accepting writes (a sync failed).
    pub async fn wait_stopped(&self) {
        let mut rx = self.shared.durable.subscribe();
        while !self.is_stopped() {
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// True once a sync failed: the store accepts no more writes.
    pub fn is_stopped(&self) -> bool {
        self.shared.stopped.load(Ordering::SeqCst)
    }

    /// Waits until every write group begun before this call is durable.
    pub async fn durable_barrier(&self) -> Result<(), StoreError> {
        let target = self.shared.applying.load(Ordering::SeqCst);
        let mut rx = self.shared.durable.subscribe();
        loop {
            if *rx.borrow_and_update() >= target {
                return Ok(());
            }
            if self.is_stopped() {
                return Err(StoreError::Stopped);
            }
            rx.changed().await.map_err(|_| StoreError::Stopped)?;
        }
    }

    pub fn event_heads(&self) -> &EventHeads {
        &self.shared.heads
    }

    fn get<R: records::Record>(&self, t: T, key: &[u8]) -> Result<Option<R>, StoreError> {
        match self.tree(t).get(key)? {
            Some(v) => records::decode(&v).map(Some),
            None => Ok(None),
        }
    }

    fn scan<R: records::Record>(&self, t: T, prefix: &[u8], limit: usize) -> Result<Vec<R>, StoreError> {
        let mut out = Vec::new();
        for item in self.tree(t).scan_prefix(prefix).take(limit) {
            let (_, v) = item?;
            out.push(records::decode(&v)?);
        }
        Ok(out)
    }

    /// Verifies a handset's answer against the trade and the enrolled key
    /// as they are now, on the caller's thread rather than the writer's.
    /// The writer takes the verdict only if the signed bytes, key and
    /// signature are still exactly these (trade fields a signature covers
    /// never change; a handset can be re-enrolled). `None` when there is
    /// nothing to check against yet: the writer then decides alone. A
    /// valid approval's receipt is countersigned here too, at `now` (the
    /// answer's time) with `signer`, for the writer to take if it settles.
    pub fn check_answer(
        &self,
        carrier: &CarrierId,
        trade: &TradeId,
        decision: crate::domain::Decision,
        signature: &[u8],
        signer: &crate::domain::receipt::ReceiptSigner,
        now: UnixMs,
    ) -> Option<SignatureCheck> {
        let trade: TradeRecord = self.get(T::Trades, trade.as_bytes()).ok()??;
        if trade.carrier.as_ref() != Some(carrier) || trade.state.is_final() {
            return None;
        }
        let handset: records::HandsetRecord = self.get(T::Handsets, trade.request.payer.as_str().as_bytes()).ok()??;
        let signed = commands::signed_bytes(&trade, decision).ok()?;
        Some(SignatureCheck::new(trade.id, handset.public_key, signed, signature, decision, signer, now))
    }

    /// Who holds a credential (by SHA-256 of the token).
    pub fn principal(&self, token_hash: &[u8; 32]) -> Result<Option<Principal>, StoreError> {
        self.get(T::Credentials, token_hash)
    }

    /// Whether the shop or carrier a certificate names exists (the operator
    /// always does).
    pub fn party_exists(&self, principal: &Principal) -> Result<bool, StoreError> {
        let (t, key) = match principal {
            Principal::Admin => return Ok(true),
            Principal::Shop(id) => (T::Shops, id.as_str()),
            Principal::Carrier(id) => (T::Carriers, id.as_str()),
        };
        Ok(self.tree(t).contains_key(key.as_bytes())?)
    }

    /// Whether `shop` has a register `id` (open or closed).
    pub fn has_register(&self, shop: &ShopId, id: &RegisterId) -> Result<bool, StoreError> {
        Ok(self.tree(T::Registers).contains_key(keys::register(shop, id))?)
    }

    /// Reads first, then waits until what was read is durable: a reader
    /// never reports a state that a crash could take back.
    async fn durable<R>(&self, value: R) -> Result<R, StoreError> {
        self.durable_barrier().await?;
        Ok(value)
    }

    pub async fn trade(&self, id: &TradeId) -> Result<Option<TradeRecord>, StoreError> {
        let v = self.get(T::Trades, id.as_bytes())?;
        self.durable(v).await
    }

    pub async fn shop(&self, id: &ShopId) -> Result<Option<ShopRecord>, StoreError> {
        let v = self.get(T::Shops, id.as_str().as_bytes())?;
        self.durable(v).await
    }

    pub async fn registers(&self, shop: &ShopId, limit: usize) -> Result<Vec<RegisterRecord>, StoreError> {
        let v = self.scan(T::Registers, &keys::owned(shop.as_str(), &[]), limit)?;
        self.durable(v).await
    }

    /// An event kind stored before refund ids named posting sets: a
    /// refund's first posting id, read back as the id of its set.
    fn refund_set_of_legacy(&self, kind: EventKind) -> Result<EventKind, StoreError> {
        match kind {
            EventKind::StateChanged => Ok(kind),
            EventKind::Refunded { amount, refund_id: first_posting } => {
                let posting: PostingRecord = self.get(T::Postings, &first_posting.to_be_bytes())?.ok_or_else(|| {
                    StoreError::Corrupt(format!("a refund event names posting {first_posting}, which is missing"))
                })?;
                Ok(EventKind::Refunded { amount, refund_id: posting.set_id })
            }
        }
    }

    /// Events of `shop` with `after < seq <= head`, at most `limit`.
    pub fn events_between(
        &self,
        shop: &ShopId,
        after: u64,
        head: u64,
        limit: usize,
    ) -> Result<Vec<EventRecord>, StoreError> {
        let Some(start) = after.checked_add(1) else {
            return Ok(Vec::new());
        };
        if start > head {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        // A trade's events are usually close together: keep the last trade
        // read rather than read it again for each.
        let mut last: Option<TradeRecord> = None;
        for item in self.tree(T::Events).range(keys::event(shop, start)..=keys::event(shop, head)).take(limit) {
            let (_, v) = item?;
            let (compact, legacy_refund_id) = match records::decode_event(&v)? {
                records::StoredEvent::Whole(mut event) => {
                    event.kind = self.refund_set_of_legacy(event.kind)?;
                    out.push(*event);
                    continue;
                }
                records::StoredEvent::CompactV2(c) => (c, true),
                records::StoredEvent::Compact(c) => (c, false),
            };
            let mut compact = compact;
            if legacy_refund_id {
                compact.kind = self.refund_set_of_legacy(compact.kind)?;
            }
            let trade = match last.take() {
                Some(t) if t.id == compact.trade => t,
                _ => self.get(T::Trades, compact.trade.as_bytes())?.ok_or_else(|| {
                    StoreError::Corrupt(format!(
                        "event {} names trade {}, which is missing",
                        compact.seq, compact.trade
                    ))
                })?,
            };
            last = Some(trade.clone());
            out.push(compact.join(trade)?);
        }
        Ok(out)
    }

    /// Unacknowledged deliveries for a carrier with ids above `after`,
    /// oldest first, at most `limit`.
    pub async fn outbox(&self, carrier: &CarrierId, after: u64, limit: usize) -> Result<Vec<Delivery>, StoreError> {
        let Some(start) = after.checked_add(1) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        let range = keys::outbox(carrier, start)..=keys::outbox(carrier, u64::MAX);
        for item in self.tree(T::Outbox).range(range).take(limit) {
            let (_, v) = item?;
            out.push(records::decode(&v)?);
        }
        self.durable_barrier().await?;
        Ok(out)
    }

    /// Open trades whose deadline is at or before `now`, at most `limit`.
    pub fn due(&self, now: UnixMs, limit: usize) -> Result<Vec<TradeId>, StoreError> {
        let mut out = Vec::new();
        let end = keys::deadline(now, &TradeId::from_bytes([0xff; 16]));
        for item in self.tree(T::Deadlines).range(..=end).take(limit) {
            let (k, _) = item?;
            let bytes: [u8; 16] =
                k.get(8..24).and_then(|s| s.try_into().ok()).ok_or(StoreError::Corrupt("deadline key".into()))?;
            out.push(TradeId::from_bytes(bytes));
        }
        Ok(out)
    }

    /// How many trades are open (each open trade has one deadline entry).
    /// Walks the deadline tree: for start-up, not for the hot path.
    pub fn open_trade_count(&self) -> usize {
        self.tree(T::Deadlines).len()
    }

    /// The earliest deadline of any open trade.
    pub fn next_deadline(&self) -> Result<Option<UnixMs>, StoreError> {
        match self.tree(T::Deadlines).first()? {
            Some((k, _)) => {
                let bytes: [u8; 8] =
                    k.get(..8).and_then(|s| s.try_into().ok()).ok_or(StoreError::Corrupt("deadline key".into()))?;
                Ok(Some(UnixMs(u64::from_be_bytes(bytes))))
            }
            None => Ok(None),
        }
    }

    /// Accounts whose name starts with `prefix`, at most `limit`, read on
    /// the writer thread so that one answer is one consistent state (the
    /// balances of a page always belong to the same moment).
    pub async fn accounts(&self, prefix: &str, limit: usize) -> Result<Vec<AccountRecord>, StoreError> {
        match self.execute(Command::ReadAccounts { prefix: prefix.to_owned(), limit }).await? {
            CommandOutcome::Accounts(accounts) => Ok(accounts),
            _ => Err(StoreError::Corrupt("writer answered read-accounts with another outcome".into())),
        }
    }

    pub async fn account(&self, name: &AccountName) -> Result<Option<AccountRecord>, StoreError> {
        let v = self.get(T::Accounts, &keys::account(name))?;
        self.durable(v).await
    }

    pub async fn postings(&self, after: u64, limit: usize) -> Result<Vec<PostingRecord>, StoreError> {
        let Some(start) = after.checked_add(1) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for item in self.tree(T::Postings).range(start.to_be_bytes()..).take(limit) {
            let (_, v) = item?;
            out.push(records::decode(&v)?);
        }
        self.durable(out).await
    }

    pub async fn subscriber(&self, number: &SubscriberNumber) -> Result<Option<records::SubscriberRecord>, StoreError> {
        let v = self.get(T::Subscribers, number.as_str().as_bytes())?;
        self.durable(v).await
    }

    /// The handset key enrolled for `number` now.
    pub async fn handset(&self, number: &SubscriberNumber) -> Result<Option<records::HandsetRecord>, StoreError> {
        let v = self.get(T::Handsets, number.as_str().as_bytes())?;
        self.durable(v).await
    }

    /// Checks every ledger invariant on a consistent view (it runs on the
    /// writer thread, so no write interleaves).
    pub async fn verify(&self) -> Result<VerifyReport, StoreError> {
        match self.execute(Command::Verify).await? {
            CommandOutcome::Verified(report) => Ok(report),
            _ => Err(StoreError::Corrupt("writer answered verify with another outcome".into())),
        }
    }
}

#[cfg(test)]
mod footprint_tests;
#[cfg(test)]
mod tests;
