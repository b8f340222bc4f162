//! The PostgreSQL backend behind the storage boundary: [`PgStore`]. Every
//! write is one transaction on a pooled connection (READ COMMITTED,
//! `synchronous_commit = on`, the locks of `docs/POSTGRES.md`), answered
//! only after `COMMIT` returned; a refusal rolls back. The relay's writes
//! (`submit_answer`, `submit_ack`) and cancels go through ordered queues,
//! one per shard of shops: each starts once the one before holds its
//! shop's event counter, so one shop's events are numbered in arrival
//! order (as on sled), their commits overlap, and shops of different
//! shards do not wait for each other. Expiries need no order and run at
//! once. What the boundary asks synchronously (credentials,
//! event heads) is served from memory, filled at start and on a miss by a
//! lookup thread with its own connection; event heads also follow other
//! nodes' commits by polling (`HEAD_POLL`), so correctness never depends
//! on a notification; with `store.notify` on they also follow other
//! nodes' announcements (`notify.rs`: LISTEN/NOTIFY), which wake this
//! node's readers at once.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio::sync::{broadcast, mpsc, watch};
use tokio_postgres::{IsolationLevel, NoTls, Transaction};

use super::notify::{self, Note};
use super::rows::{self, big, corrupt, BILL_COLS, EVENT_COLS, OUTBOX_COLS, POSTING_COLS, REGISTER_COLS, TRADE_COLS};
use super::trades::{self, Cx, LocalRelays, Step, CLAIM_LEASE};
use super::{migrate, parties, pool, PgError};
use crate::domain::receipt::ReceiptSigner;
use crate::domain::{
    AccountName, Balance, CarrierId, Currency, Decision, IpKey, IpPrefix, Month, Principal, RegisterId, ShopId,
    SubscriberNumber, TradeId, UnixMs,
};
use crate::store::records::{
    AccountRecord, CapUsage, CarrierRecord, Delivery, EventRecord, Funding, HandsetRecord, PayoutEntry, PostingRecord,
    RegisterRecord, ShopRecord, SubscriberRecord, TradeRecord,
};
use crate::store::records::{CarrierSales, CarrierStatementLine, PayoutRecord, RemittanceRecord};
use crate::store::verify::{LedgerView, VerifyReport};
use crate::store::{
    AcceptanceRefusal, AckOutcome, AddPrefixesRefusal, AnswerOutcome, AnswerRefusal, CancelOutcome, CancelRefusal,
    CarrierStatementRefusal, CloseRegisterRefusal, CreateCarrierRefusal, CreateShopRefusal, CreateTradeRefusal,
    Created, EnrollHandsetRefusal, EnrollSubscriberRefusal, EventHeads, ExpireOutcome, Failure, HandsetAnswer,
    LeaseRefusal, LeaseReport, LeasesRecorded, Ledger, Lifecycle, Network, NewCarrier, NewHandset, NewPayout,
    NewRefund, NewRegister, NewRemittance, NewShop, NewSubscriber, NewTrade, NoRefusal, OpenRegisterRefusal, PaidOut,
    Parties, PayoutRefusal, Pending, RefundRefusal, Refunded, RemittanceRefusal, Remitted, Remote, RemoteChange,
    RotateCredentialRefusal, ShopPayoutRefusal, ShopStatus, SignatureCheck, StatementData, StatementRefusal,
    StoreError, SuspendRefusal, TopUp, TopUpRefusal, ToppedUp, TradeHistory, Trades,
};

/// How often a node re-reads the event heads of the shops it serves, so
/// that `WatchTrades` on this node sees commits made on others even when
/// no notification arrives.
pub const HEAD_POLL: Duration = Duration::from_millis(200);
/// Relay writes queued per node at most (the relay's back-pressure).
const ORDERED_QUEUE_DEPTH: usize = 1024;
/// Relay writes in flight at once per node, as a share of the pool: they
/// start in queue order, each once the one before has taken its shop's
/// event counter (or ended), so their events are numbered in queue order
/// as on sled; their commits overlap and share WAL flushes, which one
/// write at a time would not. Half the pool, so shops' calls and the
/// sweeper still get connections.
const ORDERED_SHARE_OF_POOL: usize = 2;
/// Ordered queues per node; a shop's writes always use the same one.
/// One for now: the carrier's writes carry a trade or delivery id, not a
/// shop, and looking the shop up before queueing let a shop's cancel
/// overtake the acknowledgement that arrived before it. Sharding by shop
/// needs the shop in the relay's messages.
const ORDERED_SHARDS: usize = 1;
/// How long a synchronous lookup (a credential or head this node has not
/// seen) waits for the database before answering "not known".
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);
/// Payout entries read per report at most (as the sled backend).
pub const MAX_PAYOUT_ENTRIES: usize = 1_000_000;

/// How to reach the database.
#[derive(Debug, Clone)]
pub struct PgConfig {
    pub url: String,
    pub pool_size: usize,
    /// How often this node reads what other nodes committed (event heads,
    /// the relay's outbox, awaited trades) besides their announcements.
    pub poll: Duration,
    /// Announce commits to other nodes and listen for theirs
    /// (LISTEN/NOTIFY); off, they are seen by polling only.
    pub notify: bool,
}

impl PgConfig {
    /// The defaults of `serve`: polls every [`HEAD_POLL`], notifications on.
    pub fn new(url: impl Into<String>, pool_size: usize) -> PgConfig {
        PgConfig { url: url.into(), pool_size, poll: HEAD_POLL, notify: true }
    }
}

/// A handle to the PostgreSQL store; cheap to clone.
#[derive(Clone)]
pub struct PgStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    heads: EventHeads,
    /// Shops whose head this node follows (every shop it has been asked
    /// about or written for).
    followed: Mutex<HashSet<ShopId>>,
    credentials: Mutex<HashMap<[u8; 32], Principal>>,
    parties: Mutex<HashSet<String>>,
    lookups: std::sync::mpsc::SyncSender<Lookup>,
    ordered: Vec<mpsc::Sender<OrderedJob>>,
    stopped: AtomicBool,
    /// Announcements of this node's commits, for the notifier (`None`
    /// with `store.notify` off).
    notes: Option<mpsc::Sender<Note>>,
    /// Other nodes' announcements, for the engine.
    changes: Option<broadcast::Sender<RemoteChange>>,
    poll: Duration,
    /// This node's relays and its name in outbox claims.
    relays: Arc<LocalRelays>,
    closed: CloseSignal,
}

/// Fires when the last handle of the store is gone.
struct CloseSignal(watch::Sender<bool>);

impl Drop for CloseSignal {
    fn drop(&mut self) {
        self.0.send_replace(true);
    }
}

/// Sent (or dropped) once a queued write may be followed by the next.
pub type Turn = tokio::sync::oneshot::Sender<()>;

type OrderedJob = Box<dyn FnOnce(PgStore, Turn) -> futures_core::future::BoxFuture<'static, ()> + Send>;

/// A synchronous question for the lookup thread.
enum Lookup {
    Credential([u8; 32], std::sync::mpsc::SyncSender<Result<Option<Principal>, PgError>>),
    Party(Principal, std::sync::mpsc::SyncSender<Result<bool, PgError>>),
    Head(ShopId, std::sync::mpsc::SyncSender<Result<Option<u64>, PgError>>),
}

/// A failure of the database as the boundary names it: a lost connection,
/// a failover or a deadlock victim is `Unavailable` (retry), anything
/// else the server's problem.
pub fn failure(e: PgError) -> Failure {
    if e.is_retryable() {
        // Callers are told only to retry; the details (hosts, server
        // messages) are for the operator's log.
        tracing::warn!(error = %e, "PostgreSQL unavailable");
        return Failure::Unavailable("the database is unavailable for now; retry".into());
    }
    match e {
        PgError::Corrupt(m) => Failure::Corrupt(m),
        other => Failure::Io(other.to_string()),
    }
}

fn failed<R>(e: PgError) -> StoreError<R> {
    StoreError::Failed(failure(e))
}

impl PgStore {
    /// Connects to `config.url`, refuses an unsafe server, applies the
    /// migrations (refusing a newer schema) and loads what the boundary
    /// answers synchronously. Blocks the calling thread for that (a
    /// helper thread does the work on its own runtime); the background
    /// tasks start on the current Tokio runtime, which must exist.
    pub fn open(config: PgConfig) -> Result<PgStore, PgError> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| PgError::Config("the PostgreSQL store must be opened inside a Tokio runtime".into()))?;
        let url = config.url.clone();
        let loaded = std::thread::spawn(move || prepare(&url))
            .join()
            .map_err(|_| PgError::Pool("the start-up thread panicked".into()))??;
        let mut pg = pool::parse_url(&config.url).map_err(PgError::Config)?;
        pool::configure(&mut pg);
        let manager = Manager::from_config(pg, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Verified });
        let pool = Pool::builder(manager)
            .max_size(config.pool_size.clamp(1, pool::MAX_POOL_SIZE))
            .build()
            .map_err(|e| PgError::Config(e.to_string()))?;
        let lookups = spawn_lookups(config.url.clone())?;
        let mut ordered = Vec::with_capacity(ORDERED_SHARDS);
        let mut queues = Vec::with_capacity(ORDERED_SHARDS);
        for _ in 0..ORDERED_SHARDS {
            let (tx, rx) = mpsc::channel(ORDERED_QUEUE_DEPTH);
            ordered.push(tx);
            queues.push(rx);
        }
        let heads = EventHeads::default();
        let mut followed = HashSet::new();
        for (shop, head) in loaded.heads {
            heads.set(&shop, head);
            followed.insert(shop);
        }
        let (notes, notes_rx) = if config.notify {
            let (tx, rx) = mpsc::channel(notify::NOTE_QUEUE);
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let changes = config.notify.then(|| broadcast::channel(notify::CHANGE_BUFFER).0);
        let heads_wake = Arc::new(tokio::sync::Notify::new());
        let node = notify::node_name();
        let store = PgStore {
            inner: Arc::new(Inner {
                pool,
                heads,
                followed: Mutex::new(followed),
                credentials: Mutex::new(loaded.credentials),
                parties: Mutex::new(loaded.parties),
                lookups,
                ordered,
                stopped: AtomicBool::new(false),
                notes,
                changes: changes.clone(),
                poll: config.poll,
                relays: Arc::new(LocalRelays::new(node.clone())),
                closed: CloseSignal(watch::Sender::new(false)),
            }),
        };
        let in_flight = (config.pool_size.clamp(1, pool::MAX_POOL_SIZE) / ORDERED_SHARE_OF_POOL).max(1);
        // One budget of connections for all the shards together.
        let budget = Arc::new(tokio::sync::Semaphore::new(in_flight));
        for queue in queues {
            runtime.spawn(run_ordered(Arc::downgrade(&store.inner), queue, budget.clone()));
        }
        runtime.spawn(poll_heads(Arc::downgrade(&store.inner), heads_wake.clone(), config.poll));
        if let (Some(rx), Some(changes)) = (notes_rx, changes) {
            runtime.spawn(notify::run_notifier(config.url.clone(), node.clone(), rx));
            runtime.spawn(notify::run_listener(notify::Listening {
                url: config.url.clone(),
                node,
                changes,
                heads: heads_wake,
                closed: store.inner.closed.0.subscribe(),
            }));
        }
        Ok(store)
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, PgError> {
        Ok(self.inner.pool.get().await?)
    }

    /// After a commit: heads moved, parties known.
    fn committed(&self, cx: Cx) {
        if let Some(notes) = &self.inner.notes {
            // Without waiting: a full queue drops the note, and the other
            // nodes' polls see the commit anyway.
            let heads = cx.heads.iter().map(|(shop, _)| Note::Shop(shop.clone()));
            let finals = cx.finals.iter().map(|t| Note::TradeFinal(*t));
            let outboxes = cx.carriers.iter().map(|c| Note::Outbox(c.clone()));
            for note in heads.chain(finals).chain(outboxes) {
                let _ = notes.try_send(note);
            }
        }
        for (shop, head) in cx.heads {
            self.follow(&shop);
            self.inner.heads.set(&shop, head);
        }
    }

    fn follow(&self, shop: &ShopId) {
        let mut f = self.inner.followed.lock().unwrap_or_else(|p| p.into_inner());
        if !f.contains(shop) {
            f.insert(shop.clone());
        }
    }

    fn learn(&self, hash: [u8; 32], principal: Principal) {
        self.inner.parties.lock().unwrap_or_else(|p| p.into_inner()).insert(party_key(&principal));
        self.inner.credentials.lock().unwrap_or_else(|p| p.into_inner()).insert(hash, principal);
    }

    fn ask<T>(
        &self,
        make: impl FnOnce(std::sync::mpsc::SyncSender<Result<T, PgError>>) -> Lookup,
    ) -> Result<T, Failure> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.inner.lookups.send(make(tx)).map_err(|_| Failure::Stopped)?;
        match rx.recv_timeout(LOOKUP_TIMEOUT) {
            Ok(r) => r.map_err(failure),
            Err(_) => Err(Failure::Unavailable("the database is unavailable for now; retry".into())),
        }
    }

    /// Queues a write on the ordered queue of `shop` (`None`: a write that
    /// touches no shop's events, any queue).
    async fn queue<T: Send + 'static, R: Send + 'static>(
        &self,
        shop: Option<&str>,
        job: impl FnOnce(PgStore, Turn) -> futures_core::future::BoxFuture<'static, Result<T, StoreError<R>>>
            + Send
            + 'static,
    ) -> Result<Pending<T, R>, Failure> {
        let (reply, pending) = Pending::channel();
        let boxed: OrderedJob = Box::new(move |store, turn| {
            Box::pin(async move {
                let _ = reply.send(job(store, turn).await);
            })
        });
        let shard = shop.map_or(0, |s| {
            // FNV-1a: stable, and enough to spread shop names.
            let h = s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
            usize::try_from(h % ORDERED_SHARDS as u64).unwrap_or(0)
        });
        let queue = self.inner.ordered.get(shard).ok_or(Failure::Stopped)?;
        queue.send(boxed).await.map_err(|_| Failure::Stopped)?;
        Ok(pending)
    }
}

/// Runs one transaction: `$body` (an expression over `$tx` and `$cx`
/// giving a `Step`) then COMMIT, or ROLLBACK on a refusal. Nothing is
/// answered before COMMIT returned.
macro_rules! in_tx {
    ($store:expr, |$tx:ident, $cx:ident| $body:expr) => {
        in_tx!($store, None, |$tx, $cx| $body)
    };
    ($store:expr, $turn:expr, |$tx:ident, $cx:ident| $body:expr) => {{
        let store: &PgStore = $store;
        let mut client = store.client().await.map_err(failed)?;
        let raw: &mut tokio_postgres::Client = &mut client;
        let $tx = raw.transaction().await.map_err(PgError::from).map_err(failed)?;
        let mut cx_value = Cx { turn: $turn, relays: Some(store.inner.relays.clone()), ..Cx::default() };
        let outcome = {
            let $cx = &mut cx_value;
            $body.await
        };
        finish_tx(store, $tx, outcome, cx_value).await
    }};
}

async fn finish_tx<T, R>(
    store: &PgStore,
    tx: Transaction<'_>,
    outcome: Step<T, R>,
    cx: Cx,
) -> Result<T, StoreError<R>> {
    match outcome {
        Ok(Ok(value)) => {
            tx.commit().await.map_err(PgError::from).map_err(failed)?;
            store.committed(cx);
            Ok(value)
        }
        Ok(Err(refusal)) => {
            // Dropping the transaction rolls back too; rolling back here
            // returns the connection clean at once.
            let _ = tx.rollback().await;
            Err(StoreError::Refused(refusal))
        }
        Err(e) => Err(failed(e)),
    }
}

/// An operation that never refuses, as a `Step`.
async fn never<T>(f: impl std::future::Future<Output = Result<T, PgError>>) -> Step<T, NoRefusal> {
    f.await.map(Ok)
}

fn no_refusal<T>(r: Result<T, StoreError<NoRefusal>>) -> Result<T, Failure> {
    r.map_err(|e| match e {
        StoreError::Refused(never) => match never {},
        StoreError::Failed(f) => f,
    })
}

async fn run_ordered(
    inner: Weak<Inner>,
    mut queue: mpsc::Receiver<OrderedJob>,
    in_flight: Arc<tokio::sync::Semaphore>,
) {
    while let Some(job) = queue.recv().await {
        let Some(inner) = inner.upgrade() else { return };
        let Ok(permit) = in_flight.clone().acquire_owned().await else { return };
        let (turn, next) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            job(PgStore { inner }, turn).await;
            drop(permit);
        });
        // Sent once the write holds its shop's event counter, or dropped
        // when it ends: either way the next may start.
        let _ = next.await;
    }
}

/// Reads the followed shops' event heads every `poll`, and at once when
/// another node announces a commit (`wake`).
async fn poll_heads(inner: Weak<Inner>, wake: Arc<tokio::sync::Notify>, poll: Duration) {
    let mut tick = tokio::time::interval(poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = wake.notified() => {}
        }
        let Some(inner) = inner.upgrade() else { return };
        let shops: Vec<String> = {
            let f = inner.followed.lock().unwrap_or_else(|p| p.into_inner());
            f.iter().map(|s| s.as_str().to_owned()).collect()
        };
        if shops.is_empty() {
            continue;
        }
        let Ok(client) = inner.pool.get().await else { continue };
        let Ok(found) =
            client.query("SELECT shop, last_seq FROM shop_event_heads WHERE shop = ANY($1)", &[&shops]).await
        else {
            continue;
        };
        for row in found {
            let (Ok(shop), Ok(seq)) = (row.try_get::<_, &str>(0), row.try_get::<_, i64>(1)) else { continue };
            if let (Ok(shop), Ok(seq)) = (ShopId::parse(shop), u64::try_from(seq)) {
                inner.heads.set(&shop, seq);
            }
        }
    }
}

/// What a node loads at start.
struct Loaded {
    credentials: HashMap<[u8; 32], Principal>,
    parties: HashSet<String>,
    heads: Vec<(ShopId, u64)>,
}

fn small_runtime() -> Result<tokio::runtime::Runtime, PgError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| PgError::Pool(format!("runtime: {e}")))
}

async fn connect_one(url: &str) -> Result<tokio_postgres::Client, PgError> {
    let mut pg = pool::parse_url(url).map_err(PgError::Config)?;
    pool::configure(&mut pg);
    let (client, conn) = pg.connect(NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

fn prepare(url: &str) -> Result<Loaded, PgError> {
    small_runtime()?.block_on(async {
        let mut client = connect_one(url).await?;
        let durability = pool::check_server(&client).await?;
        if durability.synchronous_standby_names.is_empty() {
            tracing::warn!(
                "PostgreSQL has no synchronous standby: losing the primary's disk loses acknowledged trades"
            );
        }
        let report = migrate::migrate(&mut client).await?;
        tracing::info!(found = report.found, applied = ?report.applied, "PostgreSQL schema ready");
        let mut credentials = HashMap::new();
        let mut parties = HashSet::new();
        for row in client.query("SELECT token_hash, kind, party FROM credentials", &[]).await? {
            let hash: [u8; 32] = row.try_get::<_, Vec<u8>>(0)?.try_into().map_err(|_| corrupt("credential width"))?;
            let principal = principal_of(row.try_get(1)?, row.try_get(2)?)?;
            parties.insert(party_key(&principal));
            credentials.insert(hash, principal);
        }
        let mut heads = Vec::new();
        for row in client.query("SELECT shop, last_seq FROM shop_event_heads", &[]).await? {
            heads.push((rows::shop_id(row.try_get(0)?)?, rows::unbig(row.try_get(1)?)?));
        }
        Ok(Loaded { credentials, parties, heads })
    })
}

/// A party's name in the set of known parties.
fn party_key(p: &Principal) -> String {
    match p {
        Principal::Admin => "admin".into(),
        Principal::Shop(s) => format!("shop:{}", s.as_str()),
        Principal::Carrier(c) => format!("carrier:{}", c.as_str()),
    }
}

fn principal_of(kind: &str, party: Option<&str>) -> Result<Principal, PgError> {
    match (kind, party) {
        ("admin", None) => Ok(Principal::Admin),
        ("shop", Some(s)) => Ok(Principal::Shop(rows::shop_id(s)?)),
        ("carrier", Some(c)) => Ok(Principal::Carrier(rows::carrier_id(c)?)),
        _ => Err(corrupt(format!("credential of kind {kind}"))),
    }
}

/// The lookup thread: its own small runtime and connection (reconnected
/// when lost), answering one question at a time. It ends when the store's
/// last handle is dropped.
fn spawn_lookups(url: String) -> Result<std::sync::mpsc::SyncSender<Lookup>, PgError> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<Lookup>(64);
    let runtime = small_runtime()?;
    std::thread::Builder::new()
        .name("syncpay-pg-lookup".into())
        .spawn(move || {
            let mut client: Option<tokio_postgres::Client> = None;
            while let Ok(question) = rx.recv() {
                runtime.block_on(async {
                    // A connection lost in a failover is noticed by the
                    // first query that fails on it: that answer is asked
                    // again once on a new connection (to the new primary).
                    for attempt in 0..2 {
                        if client.as_ref().is_none_or(|c| c.is_closed()) {
                            client = connect_one(&url).await.ok();
                        }
                        let c = client.as_ref();
                        let last = attempt == 1;
                        let retry = match &question {
                            Lookup::Credential(hash, reply) => answer(reply, lookup_credential(c, hash).await, last),
                            Lookup::Party(p, reply) => answer(reply, lookup_party(c, p).await, last),
                            Lookup::Head(shop, reply) => {
                                let found = match c {
                                    Some(c) => super::sql::event_head(c, shop).await,
                                    None => Err(PgError::Pool("no connection".into())),
                                };
                                answer(reply, found, last)
                            }
                        };
                        if !retry {
                            return;
                        }
                        client = None;
                    }
                });
            }
        })
        .map_err(|e| PgError::Pool(format!("lookup thread: {e}")))?;
    Ok(tx)
}

/// Sends a lookup's answer unless it is a retryable failure that may be
/// asked again (`last` false); returns whether to ask again.
fn answer<T>(reply: &std::sync::mpsc::SyncSender<Result<T, PgError>>, found: Result<T, PgError>, last: bool) -> bool {
    match found {
        Err(e) if !last && e.is_retryable() => true,
        other => {
            let _ = reply.send(other);
            false
        }
    }
}

async fn lookup_credential(c: Option<&tokio_postgres::Client>, hash: &[u8; 32]) -> Result<Option<Principal>, PgError> {
    let c = c.ok_or_else(|| PgError::Pool("no connection".into()))?;
    match c.query_opt("SELECT kind, party FROM credentials WHERE token_hash = $1", &[&hash.as_slice()]).await? {
        Some(row) => Ok(Some(principal_of(row.try_get(0)?, row.try_get(1)?)?)),
        None => Ok(None),
    }
}

async fn lookup_party(c: Option<&tokio_postgres::Client>, p: &Principal) -> Result<bool, PgError> {
    let c = c.ok_or_else(|| PgError::Pool("no connection".into()))?;
    let (sql, key) = match p {
        Principal::Admin => return Ok(true),
        Principal::Shop(s) => ("SELECT 1 FROM shops WHERE id = $1", s.as_str()),
        Principal::Carrier(k) => ("SELECT 1 FROM carriers WHERE id = $1", k.as_str()),
    };
    Ok(c.query_opt(sql, &[&key]).await?.is_some())
}

// The boundary --------------------------------------------------------

#[async_trait]
impl Parties for PgStore {
    async fn create_shop(&self, shop: NewShop) -> Result<ShopRecord, StoreError<CreateShopRefusal>> {
        let record = in_tx!(self, |tx, cx| parties::create_shop(&tx, &shop, cx))?;
        self.learn(shop.token_hash, Principal::Shop(shop.id.clone()));
        self.inner.heads.set(&shop.id, 0);
        Ok(record)
    }

    async fn create_carrier(&self, carrier: NewCarrier) -> Result<CarrierRecord, StoreError<CreateCarrierRefusal>> {
        let record = in_tx!(self, |tx, _cx| parties::create_carrier(&tx, &carrier))?;
        self.learn(carrier.token_hash, Principal::Carrier(carrier.id.clone()));
        Ok(record)
    }

    async fn enroll_subscriber(
        &self,
        s: NewSubscriber,
    ) -> Result<SubscriberRecord, StoreError<EnrollSubscriberRefusal>> {
        in_tx!(self, |tx, _cx| parties::enroll_subscriber(&tx, &s))
    }

    async fn enroll_handset(&self, h: NewHandset) -> Result<HandsetRecord, StoreError<EnrollHandsetRefusal>> {
        in_tx!(self, |tx, _cx| parties::enroll_handset(&tx, &h))
    }

    async fn open_register(&self, r: NewRegister) -> Result<RegisterRecord, StoreError<OpenRegisterRefusal>> {
        in_tx!(self, |tx, _cx| parties::open_register(&tx, &r))
    }

    async fn close_register(
        &self,
        shop: &ShopId,
        id: RegisterId,
        now: UnixMs,
    ) -> Result<RegisterRecord, StoreError<CloseRegisterRefusal>> {
        in_tx!(self, |tx, _cx| parties::close_register(&tx, shop, id, now))
    }

    /// Read from the database on every call (through the lookup thread):
    /// a token rotated on another node must stop working here at once, so
    /// no cached answer is trusted. The cache is only this node's list of
    /// known parties.
    fn principal(&self, token_hash: &[u8; 32]) -> Result<Option<Principal>, Failure> {
        let found = self.ask(|reply| Lookup::Credential(*token_hash, reply))?;
        if let Some(p) = &found {
            self.learn(*token_hash, p.clone());
        }
        Ok(found)
    }

    fn party_exists(&self, principal: &Principal) -> Result<bool, Failure> {
        if matches!(principal, Principal::Admin)
            || self.inner.parties.lock().unwrap_or_else(|p| p.into_inner()).contains(&party_key(principal))
        {
            return Ok(true);
        }
        let found = self.ask(|reply| Lookup::Party(principal.clone(), reply))?;
        if found {
            self.inner.parties.lock().unwrap_or_else(|p| p.into_inner()).insert(party_key(principal));
        }
        Ok(found)
    }

    async fn shop(&self, id: &ShopId) -> Result<Option<ShopRecord>, Failure> {
        let c = self.client().await.map_err(failure)?;
        let row = c
            .query_opt(
                "SELECT s.display_name, s.created_at, h.last_seq FROM shops s JOIN shop_event_heads h ON h.shop = s.id
                 WHERE s.id = $1",
                &[&id.as_str()],
            )
            .await
            .map_err(PgError::from)
            .map_err(failure)?;
        let Some(row) = row else { return Ok(None) };
        let read = || -> Result<ShopRecord, PgError> {
            Ok(ShopRecord {
                id: id.clone(),
                display_name: row.try_get(0)?,
                created_at: rows::ms(row.try_get(1)?)?,
                next_event_seq: rows::unbig(row.try_get(2)?)?.checked_add(1).ok_or_else(|| corrupt("event seq"))?,
            })
        };
        read().map(Some).map_err(failure)
    }

    async fn registers(&self, shop: &ShopId, limit: usize) -> Result<Vec<RegisterRecord>, Failure> {
        let c = self.client().await.map_err(failure)?;
        let found = c
            .query(
                &format!("SELECT {REGISTER_COLS} FROM registers WHERE shop = $1 ORDER BY id LIMIT $2"),
                &[&shop.as_str(), &limit_of(limit)],
            )
            .await
            .map_err(PgError::from)
            .map_err(failure)?;
        found.iter().map(rows::register).collect::<Result<_, _>>().map_err(failure)
    }

    async fn has_register(&self, shop: &ShopId, id: &RegisterId) -> Result<bool, Failure> {
        let c = self.client().await.map_err(failure)?;
        let row = c
            .query_opt(
                "SELECT 1 FROM registers WHERE shop = $1 AND id = $2",
                &[&shop.as_str(), &id.as_bytes().as_slice()],
            )
            .await
            .map_err(PgError::from)
            .map_err(failure)?;
        Ok(row.is_some())
    }

    async fn subscriber(&self, number: &SubscriberNumber) -> Result<Option<SubscriberRecord>, Failure> {
        let c = self.client().await.map_err(failure)?;
        subscriber_row(&**c, number).await.map_err(failure)
    }

    async fn handset(&self, number: &SubscriberNumber) -> Result<Option<HandsetRecord>, Failure> {
        let c = self.client().await.map_err(failure)?;
        let row = c
            .query_opt("SELECT public_key, enrolled_at FROM handsets WHERE number = $1", &[&number.as_str()])
            .await
            .map_err(PgError::from)
            .map_err(failure)?;
        let Some(row) = row else { return Ok(None) };
        let read = || -> Result<HandsetRecord, PgError> {
            let key: &[u8] = row.try_get(0)?;
            Ok(HandsetRecord {
                number: number.clone(),
                public_key: key.try_into().map_err(|_| corrupt("public key width"))?,
                enrolled_at: rows::ms(row.try_get(1)?)?,
            })
        };
        read().map(Some).map_err(failure)
    }

    async fn shops(&self, after: Option<&ShopId>, limit: usize) -> Result<Vec<ShopStatus>, Failure> {
        let c = self.client().await.map_err(failure)?;
        let found = c
            .query(
                "SELECT s.display_name, s.created_at, s.suspended_at, h.last_seq, s.id FROM shops s
                 LEFT JOIN shop_event_heads h ON h.shop = s.id
                 WHERE $1::text IS NULL OR s.id COLLATE \"C\" > $1 COLLATE \"C\"
                 ORDER BY s.id COLLATE \"C\" LIMIT $2",
                &[&after.map(|s| s.as_str()), &limit_of(limit)],
            )
            .await
            .map_err(PgError::from)
            .map_err(failure)?;
        found
            .iter()
            .map(|r| parties::shop_status(rows::shop_id(r.try_get(4)?)?, r))
            .collect::<Result<_, _>>()
            .map_err(failure)
    }

    async fn carriers(&self, after: Option<&CarrierId>, limit: usize) -> Result<Vec<CarrierRecord>, Failure> {
        let c = self.client().await.map_err(failure)?;
        let found = c
            .query(
                "SELECT id, display_name, created_at FROM carriers
                 WHERE $1::text IS NULL OR id COLLATE \"C\" > $1 COLLATE \"C\"
                 ORDER BY id COLLATE \"C\" LIMIT $2",
                &[&after.map(|c| c.as_str()), &limit_of(limit)],
            )
            .await
            .map_err(PgError::from)
            .map_err(failure)?;
        let read = |r: &tokio_postgres::Row| -> Result<CarrierRecord, PgError> {
            Ok(CarrierRecord {
                id: rows::carrier_id(r.try_get(0)?)?,
                display_name: r.try_get(1)?,
                created_at: rows::ms(r.try_get(2)?)?,
            })
        };
        found.iter().map(read).collect::<Result<_, _>>().map_err(failure)
    }

    async fn set_shop_suspended(
        &self,
        shop: &ShopId,
        suspended: bool,
        now: UnixMs,
    ) -> Result<ShopStatus, StoreError<SuspendRefusal>> {
        in_tx!(self, |tx, _cx| parties::set_shop_suspended(&tx, shop, suspended, now))
    }

    async fn rotate_credential(
        &self,
        party: &Principal,
        token_hash: [u8; 32],
    ) -> Result<(), StoreError<RotateCredentialRefusal>> {
        in_tx!(self, |tx, _cx| parties::rotate_credential(&tx, party, &token_hash))?;
        // This node's cache forgets the party's old tokens; every node
        // reads credentials from the database anyway (`principal`).
        let mut creds = self.inner.credentials.lock().unwrap_or_else(|p| p.into_inner());
        creds.retain(|_, p| p != party);
        creds.insert(token_hash, party.clone());
        Ok(())
    }
}

fn limit_of(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

async fn subscriber_row(
    c: &impl tokio_postgres::GenericClient,
    number: &SubscriberNumber,
) -> Result<Option<SubscriberRecord>, PgError> {
    let row = c
        .query_opt(
            "SELECT carrier, funding, bill_currency, monthly_cap, enrolled_at FROM subscribers WHERE number = $1",
            &[&number.as_str()],
        )
        .await?;
    let Some(row) = row else { return Ok(None) };
    let funding = match row.try_get::<_, &str>(1)? {
        "wallet" => Funding::Wallet,
        "carrier_bill" => Funding::CarrierBill {
            currency: rows::currency(row.try_get::<_, Option<&str>>(2)?.ok_or_else(|| corrupt("bill currency"))?)?,
            monthly_cap: rows::amount(
                row.try_get::<_, Option<super::numeric::Minor>>(3)?.ok_or_else(|| corrupt("cap"))?,
            ),
        },
        other => return Err(corrupt(format!("funding {other}"))),
    };
    Ok(Some(SubscriberRecord {
        number: number.clone(),
        carrier: rows::carrier_id(row.try_get(0)?)?,
        funding,
        enrolled_at: rows::ms(row.try_get(4)?)?,
    }))
}

#[async_trait]
impl Trades for PgStore {
    async fn create_trade(&self, trade: NewTrade) -> Result<Created, StoreError<CreateTradeRefusal>> {
        in_tx!(self, |tx, cx| trades::create_trade(&tx, &trade, cx))
    }

    async fn cancel(
        &self,
        shop: &ShopId,
        trade: TradeId,
        now: UnixMs,
    ) -> Result<CancelOutcome, StoreError<CancelRefusal>> {
        // Through the ordered queue: a cancel that arrives after the
        // carrier's acknowledgement of the offer applies after it, as on
        // sled (the trade is OFFERED, then CANCELLED).
        let shop = shop.clone();
        let queue_shop = shop.as_str().to_owned();
        let pending = self
            .queue(Some(&queue_shop), move |store, turn| {
                Box::pin(async move { in_tx!(&store, Some(turn), |tx, cx| trades::cancel(&tx, &shop, trade, now, cx)) })
            })
            .await?;
        pending.outcome().await
    }

    async fn refund(&self, refund: NewRefund) -> Result<Refunded, StoreError<RefundRefusal>> {
        in_tx!(self, |tx, cx| trades::refund(&tx, &refund, cx))
    }

    async fn submit_ack(
        &self,
        carrier: &CarrierId,
        delivery_id: u64,
        now: UnixMs,
    ) -> Result<Pending<AckOutcome, NoRefusal>, Failure> {
        let carrier = carrier.clone();
        self.queue(None, move |store, turn| {
            Box::pin(async move {
                in_tx!(&store, Some(turn), |tx, cx| never(trades::ack(&tx, &carrier, delivery_id, now, cx)))
            })
        })
        .await
    }

    async fn check_answer(
        &self,
        carrier: &CarrierId,
        trade: &TradeId,
        decision: Decision,
        signature: &[u8],
        signer: &ReceiptSigner,
        now: UnixMs,
    ) -> Option<SignatureCheck> {
        let c = self.client().await.ok()?;
        trades::check_answer(&**c, carrier, trade, decision, signature, signer, now).await.ok().flatten()
    }

    async fn submit_answer(&self, answer: HandsetAnswer) -> Result<Pending<AnswerOutcome, AnswerRefusal>, Failure> {
        self.queue(None, move |store, turn| {
            Box::pin(async move { in_tx!(&store, Some(turn), |tx, cx| trades::answer(&tx, &answer, cx)) })
        })
        .await
    }

    async fn submit_expire(&self, trade: TradeId, now: UnixMs) -> Result<Pending<ExpireOutcome, NoRefusal>, Failure> {
        // No order to keep: the trade's row lock decides between an expiry
        // and an answer, as the sweeper and the relay race on sled.
        let (reply, pending) = Pending::channel();
        let store = self.clone();
        tokio::spawn(async move {
            let outcome = async { in_tx!(&store, |tx, cx| never(trades::expire(&tx, trade, now, cx))) }.await;
            let _ = reply.send(outcome);
        });
        Ok(pending)
    }

    async fn trade(&self, id: &TradeId) -> Result<Option<TradeRecord>, Failure> {
        let c = self.client().await.map_err(failure)?;
        let row = c
            .query_opt(&format!("SELECT {TRADE_COLS} FROM trades t WHERE t.id = $1"), &[&id.as_bytes().as_slice()])
            .await
            .map_err(PgError::from)
            .map_err(failure)?;
        row.as_ref().map(|r| rows::trade_at(r, 0)).transpose().map_err(failure)
    }

    async fn events(&self, shop: &ShopId, after: u64, head: u64, limit: usize) -> Result<Vec<EventRecord>, Failure> {
        if after >= head {
            return Ok(Vec::new());
        }
        let c = self.client().await.map_err(failure)?;
        let found = c
            .query(
                &format!(
                    "SELECT {EVENT_COLS}, {TRADE_COLS} FROM events e JOIN trades t ON t.id = e.trade
                     WHERE e.shop = $1 AND e.seq > $2 AND e.seq <= $3 ORDER BY e.seq LIMIT $4"
                ),
                &[&shop.as_str(), &big(after).map_err(failure)?, &big(head).map_err(failure)?, &limit_of(limit)],
            )
            .await
            .map_err(PgError::from)
            .map_err(failure)?;
        found.iter().map(rows::event).collect::<Result<_, _>>().map_err(failure)
    }

    fn event_head(&self, shop: &ShopId) -> Option<watch::Receiver<u64>> {
        if let Some(rx) = self.inner.heads.subscribe(shop) {
            return Some(rx);
        }
        // A shop made on another node since this one started.
        let head = self.ask(|reply| Lookup::Head(shop.clone(), reply)).ok()??;
        self.follow(shop);
        self.inner.heads.set(shop, head);
        self.inner.heads.subscribe(shop)
    }

    async fn outbox(&self, carrier: &CarrierId, after: u64, limit: usize) -> Result<Vec<Delivery>, Failure> {
        let c = self.client().await.map_err(failure)?;
        let found = c
            .query(
                &format!(
                    "SELECT {OUTBOX_COLS} FROM outbox WHERE carrier = $1 AND delivery_id > $2
                     ORDER BY delivery_id LIMIT $3"
                ),
                &[&carrier.as_str(), &big(after).map_err(failure)?, &limit_of(limit)],
            )
            .await
            .map_err(PgError::from)
            .map_err(failure)?;
        found.iter().map(rows::delivery).collect::<Result<_, _>>().map_err(failure)
    }

    /// Lock: `FOR UPDATE SKIP LOCKED` on the carrier's outbox rows that
    /// are unclaimed, whose claim lapsed, or that this node holds; then
    /// the claim columns (this node, until `now` + `CLAIM_LEASE`). Nodes
    /// with relays of one carrier so claim disjoint deliveries and never
    /// wait for each other (`docs/POSTGRES.md`). A claim is not money: it
    /// commits with `synchronous_commit = local` (one lost in a failover
    /// costs one more push at most).
    async fn claim_outbox(
        &self,
        carrier: &CarrierId,
        after: u64,
        limit: usize,
        now: UnixMs,
    ) -> Result<Vec<Delivery>, Failure> {
        let lease = u64::try_from(CLAIM_LEASE.as_millis()).unwrap_or(u64::MAX);
        let until = big(now.0.saturating_add(lease)).map_err(failure)?;
        let mut client = self.client().await.map_err(failure)?;
        let raw: &mut tokio_postgres::Client = &mut client;
        let tx = raw.transaction().await.map_err(PgError::from).map_err(failure)?;
        tx.batch_execute("SET LOCAL synchronous_commit = local").await.map_err(PgError::from).map_err(failure)?;
        let found = tx
            .query(
                &format!(
                    "UPDATE outbox SET claimed_by = $2, claimed_until = $4
                     WHERE delivery_id IN (
                         SELECT delivery_id FROM outbox
                         WHERE carrier = $1 AND delivery_id > $5
                           AND (claimed_until IS NULL OR claimed_until <= $3 OR claimed_by = $2)
                         ORDER BY delivery_id LIMIT $6 FOR UPDATE SKIP LOCKED)
                     RETURNING {OUTBOX_COLS}"
                ),
                &[
                    &carrier.as_str(),
                    &self.inner.relays.node,
                    &big(now.0).map_err(failure)?,
                    &until,
                    &big(after).map_err(failure)?,
                    &limit_of(limit),
                ],
            )
            .await
            .map_err(PgError::from)
            .map_err(failure)?;
        tx.commit().await.map_err(PgError::from).map_err(failure)?;
        let mut deliveries: Vec<Delivery> =
            found.iter().map(rows::delivery).collect::<Result<_, _>>().map_err(failure)?;
        deliveries.sort_unstable_by_key(|d| d.delivery_id);
        Ok(deliveries)
    }

    async fn due(&self, now: UnixMs, limit: usize) -> Result<Vec<TradeId>, Failure> {
        let c = self.client().await.map_err(failure)?;
        let found = c
            .query(
                "SELECT id FROM trades WHERE state IN ('PENDING', 'OFFERED') AND expires_at <= $1
                 ORDER BY expires_at LIMIT $2",
                &[&big(now.0).map_err(failure)?, &limit_of(limit)],
            )
            .await
            .map_err(PgError::from)
            .map_err(failure)?;
        found
            .iter()
            .map(|r| r.try_get::<_, &[u8]>(0).map_err(PgError::from).and_then(rows::trade_id))
            .collect::<Result<_, _>>()
            .map_err(failure)
    }

    async fn open_trade_count(&self) -> Result<usize, Failure> {
        let c = self.client().await.map_err(failure)?;
        let row = c
            .query_one("SELECT count(*) FROM trades WHERE state IN ('PENDING', 'OFFERED')", &[])
            .await
            .map_err(PgError::from)
            .map_err(failure)?;
        let n: i64 = row.try_get(0).map_err(PgError::from).map_err(failure)?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    async fn next_deadline(&self) -> Result<Option<UnixMs>, Failure> {
        let c = self.client().await.map_err(failure)?;
        let row = c
            .query_one("SELECT min(expires_at) FROM trades WHERE state IN ('PENDING', 'OFFERED')", &[])
            .await
            .map_err(PgError::from)
            .map_err(failure)?;
        let at: Option<i64> = row.try_get(0).map_err(PgError::from).map_err(failure)?;
        at.map(rows::ms).transpose().map_err(failure)
    }

    async fn recent_trades(&self, max_shops: usize, per_shop: usize) -> Result<Vec<TradeRecord>, Failure> {
        let c = self.client().await.map_err(failure)?;
        let found = c
            .query(
                &format!(
                    "WITH shops_first AS (SELECT id FROM shops ORDER BY id COLLATE \"C\" LIMIT $1),
                          newest AS (
                              SELECT e.shop, e.trade, max(e.seq) AS seq,
                                     row_number() OVER (PARTITION BY e.shop ORDER BY max(e.seq) DESC) AS n
                              FROM events e JOIN shops_first s ON s.id = e.shop GROUP BY e.shop, e.trade)
                     SELECT {TRADE_COLS} FROM newest JOIN trades t ON t.id = newest.trade WHERE newest.n <= $2"
                ),
                &[&limit_of(max_shops), &limit_of(per_shop)],
            )
            .await
            .map_err(PgError::from)
            .map_err(failure)?;
        let mut trades: Vec<TradeRecord> =
            found.iter().map(|r| rows::trade_at(r, 0)).collect::<Result<_, _>>().map_err(failure)?;
        let latest = |t: &TradeRecord| t.finished_at.unwrap_or(t.created_at);
        trades.sort_by(|a, b| latest(b).cmp(&latest(a)).then(b.created_at.cmp(&a.created_at)));
        Ok(trades)
    }

    /// One `REPEATABLE READ READ ONLY` snapshot for the trade, its events
    /// and its postings.
    async fn trade_history(&self, id: &TradeId, limit: usize) -> Result<Option<TradeHistory>, Failure> {
        let history = async {
            let mut pooled = self.client().await?;
            let c: &mut tokio_postgres::Client = &mut pooled;
            let tx =
                c.build_transaction().isolation_level(IsolationLevel::RepeatableRead).read_only(true).start().await?;
            let key = id.as_bytes().as_slice();
            let Some(row) =
                tx.query_opt(&format!("SELECT {TRADE_COLS} FROM trades t WHERE t.id = $1"), &[&key]).await?
            else {
                return Ok(None);
            };
            let trade = rows::trade_at(&row, 0)?;
            let events = tx
                .query(
                    &format!(
                        "SELECT {EVENT_COLS}, {TRADE_COLS} FROM events e JOIN trades t ON t.id = e.trade
                         WHERE e.shop = $1 AND e.trade = $2 ORDER BY e.seq LIMIT $3"
                    ),
                    &[&trade.shop.as_str(), &key, &limit_of(limit)],
                )
                .await?
                .iter()
                .map(rows::event)
                .collect::<Result<Vec<_>, _>>()?;
            let postings = tx
                .query(
                    &format!(
                        "SELECT {POSTING_COLS} FROM postings p JOIN posting_sets s USING (set_id)
                         WHERE s.trade = $1 ORDER BY p.posting_id LIMIT $2"
                    ),
                    &[&key, &limit_of(limit)],
                )
                .await?
                .iter()
                .map(rows::posting)
                .collect::<Result<Vec<_>, _>>()?;
            tx.commit().await?;
            Ok::<_, PgError>(Some(TradeHistory { trade, events, postings }))
        };
        history.await.map_err(failure)
    }
}

#[async_trait]
impl Ledger for PgStore {
    async fn top_up(&self, top_up: TopUp) -> Result<ToppedUp, StoreError<TopUpRefusal>> {
        in_tx!(self, |tx, _cx| parties::top_up(&tx, &top_up))
    }

    async fn payout_shop(&self, payout: NewPayout) -> Result<PaidOut, StoreError<ShopPayoutRefusal>> {
        in_tx!(self, |tx, _cx| parties::payout_shop(&tx, &payout))
    }

    async fn remit(&self, remittance: NewRemittance) -> Result<Remitted, StoreError<RemittanceRefusal>> {
        in_tx!(self, |tx, _cx| parties::remit(&tx, &remittance))
    }

    async fn account(&self, name: &AccountName) -> Result<Option<AccountRecord>, Failure> {
        let c = self.client().await.map_err(failure)?;
        let row = c
            .query_opt("SELECT debits, credits FROM accounts WHERE name = $1", &[&name.key()])
            .await
            .map_err(PgError::from)
            .map_err(failure)?;
        let Some(row) = row else { return Ok(None) };
        let balance = (|| -> Result<Balance, PgError> {
            Ok(Balance { debits: rows::amount(row.try_get(0)?), credits: rows::amount(row.try_get(1)?) })
        })()
        .map_err(failure)?;
        Ok(Some(AccountRecord { name: name.clone(), balance }))
    }

    /// One statement: one snapshot, so a page's balances belong together.
    async fn accounts(&self, prefix: &str, limit: usize) -> Result<Vec<AccountRecord>, Failure> {
        let c = self.client().await.map_err(failure)?;
        let found = c
            .query(
                "SELECT name, debits, credits FROM accounts WHERE starts_with(name, $1)
                 ORDER BY name COLLATE \"C\" LIMIT $2",
                &[&prefix, &limit_of(limit)],
            )
            .await
            .map_err(PgError::from)
            .map_err(failure)?;
        found.iter().map(account_row).collect::<Result<_, _>>().map_err(failure)
    }

    async fn postings(&self, after: u64, limit: usize) -> Result<Vec<PostingRecord>, Failure> {
        let c = self.client().await.map_err(failure)?;
        let found = c
            .query(
                &format!(
                    "SELECT {POSTING_COLS} FROM postings p JOIN posting_sets s USING (set_id)
                     WHERE p.posting_id > $1 ORDER BY p.posting_id LIMIT $2"
                ),
                &[&big(after).map_err(failure)?, &limit_of(limit)],
            )
            .await
            .map_err(PgError::from)
            .map_err(failure)?;
        found.iter().map(rows::posting).collect::<Result<_, _>>().map_err(failure)
    }

    async fn verify(&self) -> Result<VerifyReport, Failure> {
        let view = self.snapshot().await.map_err(failure)?;
        crate::store::verify::verify(&view)
    }

    async fn recent_postings(&self, limit: usize) -> Result<Vec<PostingRecord>, Failure> {
        let c = self.client().await.map_err(failure)?;
        let found = c
            .query(
                &format!(
                    "SELECT {POSTING_COLS} FROM postings p JOIN posting_sets s USING (set_id)
                     ORDER BY p.posting_id DESC LIMIT $1"
                ),
                &[&limit_of(limit)],
            )
            .await
            .map_err(PgError::from)
            .map_err(failure)?;
        found.iter().map(rows::posting).collect::<Result<_, _>>().map_err(failure)
    }
}

fn account_row(r: &tokio_postgres::Row) -> Result<AccountRecord, PgError> {
    Ok(AccountRecord {
        name: rows::account_name(r.try_get(0)?)?,
        balance: Balance { debits: rows::amount(r.try_get(1)?), credits: rows::amount(r.try_get(2)?) },
    })
}

#[async_trait]
impl Network for PgStore {
    async fn add_prefixes(
        &self,
        carrier: &CarrierId,
        prefixes: Vec<IpPrefix>,
    ) -> Result<Vec<IpPrefix>, StoreError<AddPrefixesRefusal>> {
        in_tx!(self, |tx, _cx| parties::add_prefixes(&tx, carrier, &prefixes))
    }

    async fn report_leases(
        &self,
        carrier: &CarrierId,
        starts: Vec<LeaseReport>,
        stops: Vec<LeaseReport>,
    ) -> Result<LeasesRecorded, StoreError<LeaseRefusal>> {
        in_tx!(self, |tx, _cx| parties::report_leases(&tx, carrier, &starts, &stops))
    }

    async fn set_acceptance(
        &self,
        carrier: &CarrierId,
        shop: &ShopId,
        accept: bool,
    ) -> Result<bool, StoreError<AcceptanceRefusal>> {
        in_tx!(self, |tx, _cx| parties::set_acceptance(&tx, carrier, shop, accept))
    }

    async fn route(&self, addr: IpKey, shop: &ShopId) -> Result<Option<crate::store::Route>, Failure> {
        let c = self.client().await.map_err(failure)?;
        parties::route(&**c, addr, shop).await.map_err(failure)
    }

    async fn set_resolve_mode(
        &self,
        carrier: &CarrierId,
        mode: crate::domain::ResolveMode,
    ) -> Result<crate::domain::ResolveMode, Failure> {
        let outcome: Result<_, StoreError<NoRefusal>> =
            async { in_tx!(self, |tx, _cx| never(parties::set_resolve_mode(&tx, carrier, mode))) }.await;
        no_refusal(outcome)
    }

    async fn lease_holder(
        &self,
        addr: IpKey,
        port: Option<u16>,
        at: UnixMs,
    ) -> Result<Option<(CarrierId, SubscriberNumber)>, Failure> {
        let c = self.client().await.map_err(failure)?;
        super::sql::lease_holder(&**c, addr, port, at, trades::MAX_LEASE_WALK).await.map_err(failure)
    }

    async fn lease_count(&self) -> Result<usize, Failure> {
        let c = self.client().await.map_err(failure)?;
        let n: i64 = c
            .query_one("SELECT count(*) FROM leases", &[])
            .await
            .and_then(|r| r.try_get(0))
            .map_err(PgError::from)
            .map_err(failure)?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    async fn prune_leases(&self, cutoff: UnixMs) -> Result<u64, Failure> {
        let outcome: Result<u64, StoreError<NoRefusal>> =
            async { in_tx!(self, |tx, _cx| never(parties::prune_leases(&tx, cutoff))) }.await;
        no_refusal(outcome)
    }

    async fn statement(
        &self,
        carrier: &CarrierId,
        number: &SubscriberNumber,
        month: Month,
    ) -> Result<StatementData, StoreError<StatementRefusal>> {
        let mut pooled = self.client().await.map_err(failed)?;
        let c: &mut tokio_postgres::Client = &mut pooled;
        // One snapshot for the subscriber, the lines and the cap use.
        let tx = c
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(PgError::from)
            .map_err(failed)?;
        let subscriber = match subscriber_row(&tx, number).await.map_err(failed)? {
            Some(s @ SubscriberRecord { funding: Funding::CarrierBill { .. }, .. }) if &s.carrier == carrier => s,
            _ => return Err(StoreError::Refused(StatementRefusal::NotCarrierBilled)),
        };
        let m = i32::try_from(month.number()).map_err(|_| failed(corrupt("month")))?;
        let found = tx
            .query(
                &format!(
                    "SELECT {BILL_COLS} FROM bill_lines WHERE carrier = $1 AND number = $2 AND month = $3 ORDER BY set_id"
                ),
                &[&carrier.as_str(), &number.as_str(), &m],
            )
            .await
            .map_err(PgError::from)
            .map_err(failed)?;
        let lines = found.iter().map(rows::bill_line).collect::<Result<_, _>>().map_err(failed)?;
        let usage = match &subscriber.funding {
            Funding::CarrierBill { currency, .. } => {
                let row = tx
                    .query_opt(
                        "SELECT cap, used FROM cap_use WHERE carrier = $1 AND number = $2 AND currency = $3 AND month = $4",
                        &[&carrier.as_str(), &number.as_str(), &currency.code(), &m],
                    )
                    .await
                    .map_err(PgError::from)
                    .map_err(failed)?;
                match row {
                    Some(r) => Some(cap_usage(&r).map_err(failed)?),
                    None => None,
                }
            }
            Funding::Wallet => None,
        };
        let _ = tx.commit().await;
        Ok(StatementData { subscriber, lines, usage })
    }

    async fn payout_entries(
        &self,
        shop: &ShopId,
        from: UnixMs,
        to: UnixMs,
    ) -> Result<Vec<PayoutEntry>, StoreError<PayoutRefusal>> {
        let c = self.client().await.map_err(failed)?;
        let found = c
            .query(
                "SELECT kind, trade, carrier, currency, gross, fee, set_id, reference, at FROM payout_entries
                 WHERE shop = $1 AND at >= $2 AND at < $3 ORDER BY at, set_id LIMIT $4",
                &[
                    &shop.as_str(),
                    &big(from.0).map_err(failed)?,
                    &big(to.0).map_err(failed)?,
                    &limit_of(MAX_PAYOUT_ENTRIES + 1),
                ],
            )
            .await
            .map_err(PgError::from)
            .map_err(failed)?;
        if found.len() > MAX_PAYOUT_ENTRIES {
            return Err(StoreError::Refused(PayoutRefusal::TooMany { max: MAX_PAYOUT_ENTRIES }));
        }
        found.iter().map(payout_row).collect::<Result<_, _>>().map_err(failed)
    }

    async fn carrier_statement(
        &self,
        carrier: &CarrierId,
        month: Month,
        after: Option<&ShopId>,
        limit: usize,
    ) -> Result<Vec<CarrierStatementLine>, StoreError<CarrierStatementRefusal>> {
        self.carrier_statement_in(carrier, month, after, limit)
            .await
            .map_err(failed)?
            .ok_or(StoreError::Refused(CarrierStatementRefusal::UnknownCarrier))
    }
}

impl PgStore {
    /// A carrier's statement (see `Network::carrier_statement`) from one
    /// snapshot: the page's shops first (those with entries or
    /// remittances of the month, in byte order as the sled backend), then
    /// their sums.
    async fn carrier_statement_in(
        &self,
        carrier: &CarrierId,
        month: Month,
        after: Option<&ShopId>,
        limit: usize,
    ) -> Result<Option<Vec<CarrierStatementLine>>, PgError> {
        let mut pooled = self.client().await?;
        let c: &mut tokio_postgres::Client = &mut pooled;
        let tx = c.build_transaction().isolation_level(IsolationLevel::RepeatableRead).read_only(true).start().await?;
        if tx.query_opt("SELECT 1 FROM carriers WHERE id = $1", &[&carrier.as_str()]).await?.is_none() {
            return Ok(None);
        }
        let (from, to) = (big(month.start().0)?, big(month.end().0)?);
        let m = parties::month_int(month)?;
        let after = after.map_or("", |a| a.as_str());
        let shops: Vec<String> = tx
            .query(
                "SELECT shop FROM (
                     SELECT shop FROM payout_entries WHERE carrier = $1 AND at >= $2 AND at < $3
                     UNION SELECT shop FROM remittances WHERE carrier = $1 AND month = $4
                 ) s WHERE shop COLLATE \"C\" > $5 ORDER BY shop COLLATE \"C\" LIMIT $6",
                &[&carrier.as_str(), &from, &to, &m, &after, &limit_of(limit)],
            )
            .await?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()?;
        let mut lines: std::collections::BTreeMap<(String, String), CarrierStatementLine> =
            std::collections::BTreeMap::new();
        let blank = |shop: &str, currency: &str| -> Result<CarrierStatementLine, PgError> {
            Ok(CarrierStatementLine {
                shop: rows::shop_id(shop)?,
                currency: rows::currency(currency)?,
                sales: CarrierSales::default(),
                remitted: 0,
                remittances: 0,
            })
        };
        let sum = |t: &str| -> Result<u128, PgError> { t.parse().map_err(|_| corrupt(format!("sum {t:?}"))) };
        for r in tx
            .query(
                "SELECT shop, currency,
                        coalesce(sum(gross) FILTER (WHERE kind = 'SETTLEMENT'), 0)::text,
                        coalesce(sum(fee) FILTER (WHERE kind = 'SETTLEMENT'), 0)::text,
                        coalesce(sum(gross) FILTER (WHERE kind = 'REFUND'), 0)::text,
                        count(*) FILTER (WHERE kind = 'SETTLEMENT')
                 FROM payout_entries WHERE carrier = $1 AND at >= $2 AND at < $3 AND shop = ANY($4)
                 GROUP BY shop, currency",
                &[&carrier.as_str(), &from, &to, &shops],
            )
            .await?
        {
            let (shop, currency): (String, String) = (r.try_get(0)?, r.try_get(1)?);
            let mut line = blank(&shop, &currency)?;
            line.sales = CarrierSales {
                gross: sum(r.try_get(2)?)?,
                fee: sum(r.try_get(3)?)?,
                refunded: sum(r.try_get(4)?)?,
                settlements: rows::unbig(r.try_get(5)?)?,
            };
            lines.insert((shop, currency), line);
        }
        for r in tx
            .query(
                "SELECT shop, currency, sum(amount)::text, count(*) FROM remittances
                 WHERE carrier = $1 AND month = $2 AND shop = ANY($3) GROUP BY shop, currency",
                &[&carrier.as_str(), &m, &shops],
            )
            .await?
        {
            let (shop, currency): (String, String) = (r.try_get(0)?, r.try_get(1)?);
            let line = match lines.entry((shop.clone(), currency.clone())) {
                std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::btree_map::Entry::Vacant(e) => e.insert(blank(&shop, &currency)?),
            };
            line.remitted = sum(r.try_get(2)?)?;
            line.remittances = rows::unbig(r.try_get(3)?)?;
        }
        tx.commit().await?;
        // String order of ASCII slugs and codes is their byte order.
        Ok(Some(lines.into_values().collect()))
    }
}

fn cap_usage(r: &tokio_postgres::Row) -> Result<CapUsage, PgError> {
    Ok(CapUsage { cap: rows::amount(r.try_get(0)?), used: rows::amount(r.try_get(1)?) })
}

fn payout_row(r: &tokio_postgres::Row) -> Result<PayoutEntry, PgError> {
    let currency = rows::currency(r.try_get(3)?)?;
    let gross = rows::amount(r.try_get(4)?);
    let kind: &str = r.try_get(0)?;
    if kind == "PAYOUT" {
        return Ok(PayoutEntry::Payout {
            payout_id: rows::unbig(r.try_get(6)?)?,
            currency,
            amount: gross,
            reference: r.try_get::<_, Option<String>>(7)?.ok_or_else(|| corrupt("payout without its reference"))?,
            at: rows::ms(r.try_get(8)?)?,
        });
    }
    let trade = rows::trade_id(r.try_get::<_, Option<&[u8]>>(1)?.ok_or_else(|| corrupt("entry without its trade"))?)?;
    let carrier = r.try_get::<_, Option<&str>>(2)?.map(rows::carrier_id).transpose()?;
    match kind {
        "SETTLEMENT" => {
            Ok(PayoutEntry::Settlement { trade, carrier, currency, gross, fee: rows::amount(r.try_get(5)?) })
        }
        "REFUND" => Ok(PayoutEntry::Refund { trade, carrier, currency, amount: gross }),
        other => Err(corrupt(format!("payout kind {other}"))),
    }
}

#[async_trait]
impl Lifecycle for PgStore {
    /// The PostgreSQL store never stops on its own: a failed commit fails
    /// its operation (retryable when the database is unreachable), and the
    /// next one gets a fresh connection.
    fn is_stopped(&self) -> bool {
        self.inner.stopped.load(Ordering::SeqCst)
    }

    async fn wait_stopped(&self) {
        std::future::pending::<()>().await
    }

    fn closed(&self) -> watch::Receiver<bool> {
        self.inner.closed.0.subscribe()
    }

    fn other_writers(&self) -> bool {
        true
    }

    /// PostgreSQL backs itself up: `pg_basebackup` and WAL archiving give
    /// online, consistent copies and point-in-time recovery (docs/DEPLOY.md).
    async fn backup(
        &self,
        _dir: std::path::PathBuf,
    ) -> Result<crate::store::backup::StoreBackup, StoreError<crate::store::BackupRefusal>> {
        Err(StoreError::Refused(crate::store::BackupRefusal::UseDatabaseTools))
    }

    fn remote(&self) -> Option<Remote> {
        Some(Remote { poll: self.inner.poll, lease: CLAIM_LEASE, changes: self.inner.changes.clone() })
    }

    fn relay_attached(&self, carrier: &CarrierId, attached: bool) {
        self.inner.relays.attach(carrier, attached);
    }
}

// Verification ----------------------------------------------------------

/// Everything verification reads, from one `REPEATABLE READ READ ONLY`
/// snapshot (no locks taken, writers go on).
struct Snapshot {
    postings: Vec<PostingRecord>,
    accounts: Vec<AccountRecord>,
    bill_lines: Vec<crate::store::records::BillLine>,
    cap_use: Vec<((String, String, String, u32), CapUsage)>,
    trades: HashMap<TradeId, TradeRecord>,
    registers: Vec<RegisterRecord>,
    payouts: Vec<PayoutRecord>,
    payout_entries: Vec<(ShopId, UnixMs, PayoutEntry)>,
    remittances: Vec<RemittanceRecord>,
}

impl PgStore {
    async fn snapshot(&self) -> Result<Snapshot, PgError> {
        let mut pooled = self.client().await?;
        let c: &mut tokio_postgres::Client = &mut pooled;
        let tx = c.build_transaction().isolation_level(IsolationLevel::RepeatableRead).read_only(true).start().await?;
        let postings = tx
            .query(
                &format!(
                    "SELECT {POSTING_COLS} FROM postings p JOIN posting_sets s USING (set_id) ORDER BY p.posting_id"
                ),
                &[],
            )
            .await?
            .iter()
            .map(rows::posting)
            .collect::<Result<_, _>>()?;
        let accounts = tx
            .query("SELECT name, debits, credits FROM accounts ORDER BY name COLLATE \"C\"", &[])
            .await?
            .iter()
            .map(account_row)
            .collect::<Result<_, _>>()?;
        let bill_lines = tx
            .query(&format!("SELECT {BILL_COLS} FROM bill_lines ORDER BY set_id"), &[])
            .await?
            .iter()
            .map(rows::bill_line)
            .collect::<Result<_, _>>()?;
        let mut cap_use = Vec::new();
        for r in tx.query("SELECT carrier, number, currency, month, cap, used FROM cap_use", &[]).await? {
            let month = u32::try_from(r.try_get::<_, i32>(3)?).map_err(|_| corrupt("month"))?;
            cap_use.push((
                (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, month),
                CapUsage { cap: rows::amount(r.try_get(4)?), used: rows::amount(r.try_get(5)?) },
            ));
        }
        let mut trades = HashMap::new();
        for r in tx.query(&format!("SELECT {TRADE_COLS} FROM trades t"), &[]).await? {
            let t = rows::trade_at(&r, 0)?;
            trades.insert(t.id, t);
        }
        let registers = tx
            .query(&format!("SELECT {REGISTER_COLS} FROM registers"), &[])
            .await?
            .iter()
            .map(rows::register)
            .collect::<Result<_, _>>()?;
        let mut payouts = Vec::new();
        for r in tx
            .query(
                "SELECT payout_id, shop, currency, amount, reference, idempotency_key, at FROM payouts ORDER BY payout_id",
                &[],
            )
            .await?
        {
            payouts.push(PayoutRecord {
                payout_id: rows::unbig(r.try_get(0)?)?,
                shop: rows::shop_id(r.try_get(1)?)?,
                currency: rows::currency(r.try_get(2)?)?,
                amount: rows::amount(r.try_get(3)?),
                reference: r.try_get(4)?,
                idempotency_key: r.try_get(5)?,
                at: rows::ms(r.try_get(6)?)?,
            });
        }
        let mut payout_entries = Vec::new();
        for r in tx
            .query(
                "SELECT kind, trade, carrier, currency, gross, fee, set_id, reference, at, shop FROM payout_entries
                 ORDER BY shop, at, set_id",
                &[],
            )
            .await?
        {
            payout_entries.push((rows::shop_id(r.try_get(9)?)?, rows::ms(r.try_get(8)?)?, payout_row(&r)?));
        }
        let mut remittances = Vec::new();
        for r in tx
            .query(
                "SELECT remittance_id, carrier, shop, month, currency, amount, reference, idempotency_key, at
                 FROM remittances ORDER BY remittance_id",
                &[],
            )
            .await?
        {
            remittances.push(RemittanceRecord {
                remittance_id: rows::unbig(r.try_get(0)?)?,
                carrier: rows::carrier_id(r.try_get(1)?)?,
                shop: rows::shop_id(r.try_get(2)?)?,
                month: u32::try_from(r.try_get::<_, i32>(3)?)
                    .ok()
                    .and_then(Month::from_number)
                    .ok_or_else(|| corrupt("remittance month"))?,
                currency: rows::currency(r.try_get(4)?)?,
                amount: rows::amount(r.try_get(5)?),
                reference: r.try_get(6)?,
                idempotency_key: r.try_get(7)?,
                at: rows::ms(r.try_get(8)?)?,
            });
        }
        tx.commit().await?;
        Ok(Snapshot {
            postings,
            accounts,
            bill_lines,
            cap_use,
            trades,
            registers,
            payouts,
            payout_entries,
            remittances,
        })
    }
}

impl LedgerView for Snapshot {
    type CapKey = (String, String, String, u32);

    fn for_each_posting(&self, visit: &mut dyn FnMut(PostingRecord) -> Result<(), Failure>) -> Result<(), Failure> {
        self.postings.iter().try_for_each(|p| visit(p.clone()))
    }

    fn for_each_account(
        &self,
        visit: &mut dyn FnMut(AccountRecord, bool) -> Result<(), Failure>,
    ) -> Result<(), Failure> {
        // Names are parsed from the key and checked to give it back.
        self.accounts.iter().try_for_each(|a| visit(a.clone(), true))
    }

    fn account(&self, name: &AccountName) -> Result<Option<AccountRecord>, Failure> {
        Ok(self.accounts.iter().find(|a| &a.name == name).cloned())
    }

    fn for_each_bill_line(
        &self,
        visit: &mut dyn FnMut(crate::store::records::BillLine) -> Result<(), Failure>,
    ) -> Result<(), Failure> {
        self.bill_lines.iter().try_for_each(|l| visit(l.clone()))
    }

    fn cap_key(
        &self,
        carrier: &CarrierId,
        number: &SubscriberNumber,
        currency: Currency,
        month: Month,
    ) -> Self::CapKey {
        (carrier.as_str().to_owned(), number.as_str().to_owned(), currency.code().to_owned(), month.number())
    }

    fn for_each_cap_use(
        &self,
        visit: &mut dyn FnMut(Self::CapKey, CapUsage) -> Result<(), Failure>,
    ) -> Result<(), Failure> {
        self.cap_use.iter().try_for_each(|(k, u)| visit(k.clone(), *u))
    }

    fn trade(&self, id: &TradeId) -> Result<Option<TradeRecord>, Failure> {
        Ok(self.trades.get(id).cloned())
    }

    fn for_each_trade(&self, visit: &mut dyn FnMut(TradeRecord) -> Result<(), Failure>) -> Result<(), Failure> {
        self.trades.values().try_for_each(|t| visit(t.clone()))
    }

    /// The deadline index is derived from the trade itself (the partial
    /// index `trades_open_by_deadline`): an open trade always has one.
    fn has_deadline(&self, _trade: &TradeRecord) -> Result<bool, Failure> {
        Ok(true)
    }

    fn for_each_register(&self, visit: &mut dyn FnMut(RegisterRecord) -> Result<(), Failure>) -> Result<(), Failure> {
        self.registers.iter().try_for_each(|r| visit(r.clone()))
    }

    fn for_each_payout(&self, visit: &mut dyn FnMut(PayoutRecord) -> Result<(), Failure>) -> Result<(), Failure> {
        self.payouts.iter().try_for_each(|p| visit(p.clone()))
    }

    fn for_each_payout_entry(
        &self,
        visit: &mut dyn FnMut(ShopId, UnixMs, PayoutEntry) -> Result<(), Failure>,
    ) -> Result<(), Failure> {
        self.payout_entries.iter().try_for_each(|(s, at, e)| visit(s.clone(), *at, e.clone()))
    }

    fn for_each_remittance(
        &self,
        visit: &mut dyn FnMut(RemittanceRecord) -> Result<(), Failure>,
    ) -> Result<(), Failure> {
        self.remittances.iter().try_for_each(|r| visit(r.clone()))
    }
}
