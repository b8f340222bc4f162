//! The embedded sled backend: a fixed set of trees, versioned records, one
//! writer thread that group-commits typed writes and makes each group
//! durable with a real fsync before anyone is answered, and reads that wait
//! until what they read is durable.
//!
//! A newcomer's map: `writer.rs` (the writer and syncer threads, group
//! commit, the `WriteOp` every write implements), `tx.rs` (the transaction
//! helper and the `Step` a write returns), `keys.rs` and `codec.rs` (key
//! layouts and record encoding), one file per use case (`parties.rs`,
//! `create_trade.rs`, `answer.rs`, `cancel.rs`, `refund.rs`, `ledger.rs`,
//! `network.rs`, `billing.rs`, `payout.rs`, `remit.rs` for carrier
//! remittances and statements, `operator.rs`), `events.rs` (events, outbox, the effects
//! of a final state), `recent.rs` (the console's newest postings and
//! trades), `verify.rs` (the view the shared checks read) and `config.rs`
//! (settings and opening).

mod answer;
pub mod backup;
mod billing;
mod cancel;
pub mod codec;
mod config;
mod create_trade;
mod events;
mod history;
mod hot;
mod keys;
mod ledger;
mod network;
mod operator;
mod parties;
mod payout;
mod recent;
mod refund;
mod remit;
mod tx;
mod verify;
mod writer;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use codec::Record;
use tokio::sync::{mpsc, watch};

use crate::domain::receipt::ReceiptSigner;
use crate::domain::{
    AccountName, CarrierId, Decision, IpKey, IpPrefix, Month, Principal, RegisterId, ShopId, SubscriberNumber, TradeId,
    UnixMs,
};
use crate::store::backend::{Ledger, Lifecycle, Network, Parties, Trades};
use crate::store::backup::StoreBackup;
use crate::store::heads::EventHeads;
use crate::store::records::{
    AccountRecord, CarrierRecord, CarrierStatementLine, Delivery, EventRecord, HandsetRecord, PayoutEntry,
    PostingRecord, RegisterRecord, ShopRecord, SubscriberRecord, TradeRecord,
};
use crate::store::verify::VerifyReport;
use crate::store::{
    AcceptanceRefusal, AckOutcome, AddPrefixesRefusal, AnswerOutcome, AnswerRefusal, BackupRefusal, CancelOutcome,
    CancelRefusal, CarrierStatementRefusal, CloseRegisterRefusal, CreateCarrierRefusal, CreateShopRefusal,
    CreateTradeRefusal, Created, EnrollHandsetRefusal, EnrollSubscriberRefusal, ExpireOutcome, Failure, HandsetAnswer,
    LeaseRefusal, LeaseReport, LeasesRecorded, NewCarrier, NewHandset, NewPayout, NewRefund, NewRegister,
    NewRemittance, NewShop, NewSubscriber, NewTrade, NoRefusal, OpenRegisterRefusal, PaidOut, PayoutRefusal, Pending,
    RefundRefusal, Refunded, RemittanceRefusal, Remitted, RotateCredentialRefusal, ShopPayoutRefusal, ShopStatus,
    SignatureCheck, StatementData, StatementRefusal, StoreError, SuspendRefusal, TopUp, TopUpRefusal, ToppedUp,
    TradeHistory,
};

pub use billing::MAX_PAYOUT_ENTRIES;
pub use config::{
    Durability, StoreConfig, SyncFault, DEFAULT_CACHE_BYTES, NEW_STORE_SEGMENT_SIZE, OPEN_LOCK_WAIT,
    SLED_GC_INTERVAL_MS,
};
pub use network::MAX_LEASE_WALK;
pub use writer::{MAX_GROUP, WRITE_QUEUE_DEPTH};

use tx::T;
use writer::{Queue, WriteOp};

/// Names of the metrics the writer records through the `metrics` facade
/// (the store knows no exporter; without one they cost nothing).
pub mod metric_names {
    /// Seconds one group commit spends in sled flush + fdatasync.
    pub const SYNC_SECONDS: &str = "syncpay_store_sync_seconds";
    /// Jobs made durable by one group commit.
    pub const GROUP_SIZE: &str = "syncpay_store_group_size";
    /// Jobs still queued after the writer took a group.
    pub const QUEUE_DEPTH: &str = "syncpay_store_write_queue_depth";
    /// Failed syncs (each one stops the store).
    pub const SYNC_FAILURES: &str = "syncpay_store_sync_failures_total";
    /// Seconds writes waited while an online backup copied the store.
    pub const BACKUP_PAUSE_SECONDS: &str = "syncpay_store_backup_pause_seconds";
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

impl Shared {
    pub(crate) fn tree(&self, t: T) -> &sled::Tree {
        &self.trees[t as usize]
    }

    pub(crate) fn get<V: Record>(&self, t: T, key: &[u8]) -> Result<Option<V>, Failure> {
        match self.tree(t).get(key).map_err(io)? {
            Some(v) => codec::decode(&v).map(Some),
            None => Ok(None),
        }
    }
}

/// Fires when the last handle of the store is gone.
struct CloseSignal(watch::Sender<bool>);

impl Drop for CloseSignal {
    fn drop(&mut self) {
        self.0.send_replace(true);
    }
}

pub(crate) fn io(e: sled::Error) -> Failure {
    Failure::Io(e.to_string())
}

/// The outcome of a write that cannot refuse.
pub(crate) fn never_refused<T>(outcome: Result<T, StoreError<NoRefusal>>) -> Result<T, Failure> {
    outcome.map_err(|e| match e {
        StoreError::Refused(never) => match never {},
        StoreError::Failed(f) => f,
    })
}

/// A handle to the sled store; cheap to clone.
#[derive(Clone)]
pub struct SledStore {
    shared: Arc<Shared>,
    writes: mpsc::Sender<Queue>,
    /// `StoreConfig::torn_backup` (a test's planted bug).
    torn_backup: bool,
}

impl SledStore {
    /// Opens (or creates) the store and starts its writer thread. The
    /// writer stops when every handle is dropped.
    pub fn open(config: StoreConfig) -> Result<SledStore, Failure> {
        crate::store::files::create_dir_all(&config.path)
            .map_err(|e| Failure::Io(format!("create store folder: {e}")))?;
        let db = config::open_db(&config)?;
        let trees = tx::TREE_NAMES.iter().map(|n| db.open_tree(n)).collect::<Result<Vec<_>, _>>().map_err(io)?;
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
        shared.db.flush().map_err(io)?;
        syncer.sync_now()?;
        // Each shop's event head is its highest event key (the shop record
        // no longer holds it: `hot`). Shop records of the first layout
        // (whose `next_event_seq` an older binary would trust) are
        // rewritten in the second, which an older binary refuses to read,
        // so it cannot reuse event numbers on a store this one wrote.
        let hot = hot::Hot::new(shared.tree(T::Events).clone());
        let mut migrated = 0usize;
        for item in shared.tree(T::Shops).iter() {
            let (k, v) = item.map_err(io)?;
            let mut shop: ShopRecord = codec::decode(&v)?;
            let head = hot::last_event_seq(shared.tree(T::Events), &shop.id)?;
            shared.heads.set(&shop.id, head);
            hot.set_next_event(shop.id.clone(), head.saturating_add(1));
            if v.first() != Some(&codec::SHOP_VERSION) {
                shop.next_event_seq = head.saturating_add(1);
                shared.tree(T::Shops).insert(k, codec::encode(&shop)?).map_err(io)?;
                migrated += 1;
            }
        }
        // Stores made before the operator's trade history (issue 16) get
        // its per-trade index once, from their events and postings.
        let indexed = operator::index_trade_history(&shared)?;
        if migrated > 0 || indexed > 0 {
            shared.db.flush().map_err(io)?;
            syncer.sync_now()?;
        }
        if migrated > 0 {
            tracing::info!(shops = migrated, "shop records rewritten in their second layout");
        }
        if indexed > 0 {
            tracing::info!(keys = indexed, "trade history index built for trades stored before it existed");
        }
        let writes = writer::spawn(shared.clone(), syncer, hot)?;
        Ok(SledStore { shared, writes, torn_backup: config.torn_backup })
    }

    pub(crate) fn tree(&self, t: T) -> &sled::Tree {
        self.shared.tree(t)
    }

    /// A shop record as the boundary reports it: the stored
    /// `next_event_seq` is the value at creation (`hot`), so it is set to
    /// one above the durable head.
    fn with_head(&self, mut shop: ShopRecord) -> ShopRecord {
        if let Some(head) = self.shared.heads.subscribe(&shop.id) {
            shop.next_event_seq = head.borrow().saturating_add(1);
        }
        shop
    }

    fn get<V: Record>(&self, t: T, key: &[u8]) -> Result<Option<V>, Failure> {
        self.shared.get(t, key)
    }

    fn scan<V: Record>(&self, t: T, prefix: &[u8], limit: usize) -> Result<Vec<V>, Failure> {
        let mut out = Vec::new();
        for item in self.tree(t).scan_prefix(prefix).take(limit) {
            let (_, v) = item.map_err(io)?;
            out.push(codec::decode(&v)?);
        }
        Ok(out)
    }

    /// Queues a write; the receiver answers once it is durable.
    async fn queue<O: WriteOp>(&self, op: O) -> Result<Pending<O::Output, O::Refusal>, Failure> {
        if self.shared.stopped.load(Ordering::SeqCst) {
            return Err(Failure::Stopped);
        }
        let (queued, rx) = Queue::write(op);
        self.writes.send(queued).await.map_err(|_| Failure::Stopped)?;
        Ok(Pending::from_receiver(rx))
    }

    /// Runs a write through the writer; answers once it is durable.
    async fn write<O: WriteOp>(&self, op: O) -> Result<O::Output, StoreError<O::Refusal>> {
        self.queue(op).await?.outcome().await
    }

    /// Runs a read on the writer thread, between two writes, and answers
    /// once what it read is durable.
    async fn read_on_writer<V: Send + 'static>(
        &self,
        read: impl FnOnce(&Shared) -> Result<V, Failure> + Send + 'static,
    ) -> Result<V, Failure> {
        if self.shared.stopped.load(Ordering::SeqCst) {
            return Err(Failure::Stopped);
        }
        let (queued, rx) = Queue::read(read);
        self.writes.send(queued).await.map_err(|_| Failure::Stopped)?;
        rx.await.map_err(|_| Failure::Stopped)?
    }

    /// The planted bug of [`StoreConfig::torn_backup`]: each tree copied
    /// by its own writer job, at its own point of the writer's order.
    async fn torn_dump(&self, mut dump: backup::Dump) -> Result<Result<backup::Dumped, BackupRefusal>, Failure> {
        for index in 0..tx::TREE_NAMES.len() {
            let (back, refused) = self
                .read_on_writer(move |shared| {
                    let added = backup::add_trees(shared, &mut dump, index..index + 1)?;
                    Ok((dump, added.err()))
                })
                .await?;
            if let Some(refusal) = refused {
                return Ok(Err(refusal));
            }
            dump = back;
        }
        self.read_on_writer(move |_| backup::end(dump)).await
    }

    /// Waits until every write group begun before this call is durable.
    pub async fn durable_barrier(&self) -> Result<(), Failure> {
        let target = self.shared.applying.load(Ordering::SeqCst);
        let mut rx = self.shared.durable.subscribe();
        loop {
            if *rx.borrow_and_update() >= target {
                return Ok(());
            }
            if self.shared.stopped.load(Ordering::SeqCst) {
                return Err(Failure::Stopped);
            }
            rx.changed().await.map_err(|_| Failure::Stopped)?;
        }
    }

    /// Reads first, then waits until what was read is durable: a reader
    /// never reports a state that a crash could take back.
    async fn durable<V>(&self, value: V) -> Result<V, Failure> {
        self.durable_barrier().await?;
        Ok(value)
    }
}

#[async_trait]
impl Parties for SledStore {
    async fn create_shop(&self, shop: NewShop) -> Result<ShopRecord, StoreError<CreateShopRefusal>> {
        self.write(shop).await
    }

    async fn create_carrier(&self, carrier: NewCarrier) -> Result<CarrierRecord, StoreError<CreateCarrierRefusal>> {
        self.write(carrier).await
    }

    async fn enroll_subscriber(
        &self,
        s: NewSubscriber,
    ) -> Result<SubscriberRecord, StoreError<EnrollSubscriberRefusal>> {
        self.write(s).await
    }

    async fn enroll_handset(&self, h: NewHandset) -> Result<HandsetRecord, StoreError<EnrollHandsetRefusal>> {
        self.write(h).await
    }

    async fn open_register(&self, r: NewRegister) -> Result<RegisterRecord, StoreError<OpenRegisterRefusal>> {
        self.write(r).await
    }

    async fn close_register(
        &self,
        shop: &ShopId,
        id: RegisterId,
        now: UnixMs,
    ) -> Result<RegisterRecord, StoreError<CloseRegisterRefusal>> {
        self.write(parties::CloseRegister { shop: shop.clone(), id, now }).await
    }

    fn principal(&self, token_hash: &[u8; 32]) -> Result<Option<Principal>, Failure> {
        self.get(T::Credentials, token_hash)
    }

    fn party_exists(&self, principal: &Principal) -> Result<bool, Failure> {
        let (t, key) = match principal {
            Principal::Admin => return Ok(true),
            Principal::Shop(id) => (T::Shops, id.as_str()),
            Principal::Carrier(id) => (T::Carriers, id.as_str()),
        };
        self.tree(t).contains_key(key.as_bytes()).map_err(io)
    }

    async fn shop(&self, id: &ShopId) -> Result<Option<ShopRecord>, Failure> {
        let v: Option<ShopRecord> = self.get(T::Shops, id.as_str().as_bytes())?;
        Ok(self.durable(v).await?.map(|shop| self.with_head(shop)))
    }

    async fn registers(&self, shop: &ShopId, limit: usize) -> Result<Vec<RegisterRecord>, Failure> {
        let v = self.scan(T::Registers, &keys::owned(shop.as_str(), &[]), limit)?;
        self.durable(v).await
    }

    async fn has_register(&self, shop: &ShopId, id: &RegisterId) -> Result<bool, Failure> {
        self.tree(T::Registers).contains_key(keys::register(shop, id)).map_err(io)
    }

    async fn subscriber(&self, number: &SubscriberNumber) -> Result<Option<SubscriberRecord>, Failure> {
        let v = self.get(T::Subscribers, number.as_str().as_bytes())?;
        self.durable(v).await
    }

    async fn handset(&self, number: &SubscriberNumber) -> Result<Option<HandsetRecord>, Failure> {
        let v = self.get(T::Handsets, number.as_str().as_bytes())?;
        self.durable(v).await
    }

    async fn shops(&self, after: Option<&ShopId>, limit: usize) -> Result<Vec<ShopStatus>, Failure> {
        let v = self.shops_after(after, limit)?;
        let v = self.durable(v).await?;
        Ok(v.into_iter().map(|s| ShopStatus { shop: self.with_head(s.shop), ..s }).collect())
    }

    async fn carriers(&self, after: Option<&CarrierId>, limit: usize) -> Result<Vec<CarrierRecord>, Failure> {
        let v = self.carriers_after(after, limit)?;
        self.durable(v).await
    }

    async fn set_shop_suspended(
        &self,
        shop: &ShopId,
        suspended: bool,
        now: UnixMs,
    ) -> Result<ShopStatus, StoreError<SuspendRefusal>> {
        let s = self.write(operator::SetSuspended { shop: shop.clone(), suspended, now }).await?;
        Ok(ShopStatus { shop: self.with_head(s.shop), ..s })
    }

    async fn rotate_credential(
        &self,
        party: &Principal,
        token_hash: [u8; 32],
    ) -> Result<(), StoreError<RotateCredentialRefusal>> {
        // The old tokens leave the tree when the write applies, before it
        // is durable: `principal` reads the tree, so they are refused from
        // then on (a crash before the sync brings them back, unanswered).
        self.write(operator::RotateCredential { party: party.clone(), token_hash, old: Vec::new() }).await
    }
}

#[async_trait]
impl Trades for SledStore {
    async fn create_trade(&self, trade: NewTrade) -> Result<Created, StoreError<CreateTradeRefusal>> {
        self.write(create_trade::CreateTrade::new(trade)).await
    }

    async fn cancel(
        &self,
        shop: &ShopId,
        trade: TradeId,
        now: UnixMs,
    ) -> Result<CancelOutcome, StoreError<CancelRefusal>> {
        self.write(cancel::Cancel { shop: shop.clone(), trade, now }).await
    }

    async fn refund(&self, refund: NewRefund) -> Result<Refunded, StoreError<RefundRefusal>> {
        self.write(refund).await
    }

    async fn submit_ack(
        &self,
        carrier: &CarrierId,
        delivery_id: u64,
        now: UnixMs,
    ) -> Result<Pending<AckOutcome, NoRefusal>, Failure> {
        self.queue(answer::Ack { carrier: carrier.clone(), delivery_id, now }).await
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
        self.check_answer_now(carrier, trade, decision, signature, signer, now)
    }

    async fn submit_answer(&self, answer: HandsetAnswer) -> Result<Pending<AnswerOutcome, AnswerRefusal>, Failure> {
        self.queue(answer).await
    }

    async fn submit_expire(&self, trade: TradeId, now: UnixMs) -> Result<Pending<ExpireOutcome, NoRefusal>, Failure> {
        self.queue(cancel::Expire { trade, now }).await
    }

    async fn trade(&self, id: &TradeId) -> Result<Option<TradeRecord>, Failure> {
        let v = self.get(T::Trades, id.as_bytes())?;
        self.durable(v).await
    }

    async fn events(&self, shop: &ShopId, after: u64, head: u64, limit: usize) -> Result<Vec<EventRecord>, Failure> {
        // Only events up to a durable head are asked for: no barrier.
        self.events_between(shop, after, head, limit)
    }

    fn event_head(&self, shop: &ShopId) -> Option<watch::Receiver<u64>> {
        self.shared.heads.subscribe(shop)
    }

    async fn outbox(&self, carrier: &CarrierId, after: u64, limit: usize) -> Result<Vec<Delivery>, Failure> {
        let v = self.outbox_after(carrier, after, limit)?;
        self.durable(v).await
    }

    async fn due(&self, now: UnixMs, limit: usize) -> Result<Vec<TradeId>, Failure> {
        self.due_at(now, limit)
    }

    async fn open_trade_count(&self) -> Result<usize, Failure> {
        // Each open trade has one deadline entry.
        Ok(self.tree(T::Deadlines).len())
    }

    async fn next_deadline(&self) -> Result<Option<UnixMs>, Failure> {
        self.earliest_deadline()
    }

    async fn recent_trades(&self, max_shops: usize, per_shop: usize) -> Result<Vec<TradeRecord>, Failure> {
        let v = self.newest_trades(max_shops, per_shop)?;
        self.durable(v).await
    }

    async fn trade_history(&self, id: &TradeId, limit: usize) -> Result<Option<TradeHistory>, Failure> {
        // On the writer thread, so the trade, events and postings are read
        // between two write groups: one state.
        let store = self.clone();
        let id = *id;
        self.read_on_writer(move |_| store.history_of(&id, limit)).await
    }
}

#[async_trait]
impl Ledger for SledStore {
    async fn top_up(&self, top_up: TopUp) -> Result<ToppedUp, StoreError<TopUpRefusal>> {
        self.write(top_up).await
    }

    async fn account(&self, name: &AccountName) -> Result<Option<AccountRecord>, Failure> {
        let v = self.get(T::Accounts, &keys::account(name))?;
        self.durable(v).await
    }

    async fn accounts(&self, prefix: &str, limit: usize) -> Result<Vec<AccountRecord>, Failure> {
        let prefix = prefix.to_owned();
        self.read_on_writer(move |shared| ledger::accounts_on_writer(shared, &prefix, limit)).await
    }

    async fn postings(&self, after: u64, limit: usize) -> Result<Vec<PostingRecord>, Failure> {
        let v = ledger::postings_after(&self.shared, after, limit)?;
        self.durable(v).await
    }

    async fn verify(&self) -> Result<VerifyReport, Failure> {
        self.read_on_writer(|shared| crate::store::verify::verify(&verify::View(shared))).await
    }

    async fn payout_shop(&self, payout: NewPayout) -> Result<PaidOut, StoreError<ShopPayoutRefusal>> {
        self.write(payout).await
    }

    async fn remit(&self, remittance: NewRemittance) -> Result<Remitted, StoreError<RemittanceRefusal>> {
        self.write(remit::Remit::new(remittance)).await
    }

    async fn recent_postings(&self, limit: usize) -> Result<Vec<PostingRecord>, Failure> {
        let v = self.newest_postings(limit)?;
        self.durable(v).await
    }
}

#[async_trait]
impl Network for SledStore {
    async fn add_prefixes(
        &self,
        carrier: &CarrierId,
        prefixes: Vec<IpPrefix>,
    ) -> Result<Vec<IpPrefix>, StoreError<AddPrefixesRefusal>> {
        self.write(network::AddPrefixes { carrier: carrier.clone(), prefixes }).await
    }

    async fn report_leases(
        &self,
        carrier: &CarrierId,
        starts: Vec<LeaseReport>,
        stops: Vec<LeaseReport>,
    ) -> Result<LeasesRecorded, StoreError<LeaseRefusal>> {
        self.write(network::ReportLeases { carrier: carrier.clone(), starts, stops }).await
    }

    async fn set_acceptance(
        &self,
        carrier: &CarrierId,
        shop: &ShopId,
        accept: bool,
    ) -> Result<bool, StoreError<AcceptanceRefusal>> {
        self.write(network::SetAcceptance { carrier: carrier.clone(), shop: shop.clone(), accept }).await
    }

    async fn route(&self, addr: IpKey, shop: &ShopId) -> Result<Option<crate::store::Route>, Failure> {
        network::route(&self.shared, addr, shop)
    }

    async fn set_resolve_mode(
        &self,
        carrier: &CarrierId,
        mode: crate::domain::ResolveMode,
    ) -> Result<crate::domain::ResolveMode, Failure> {
        never_refused(self.write(network::SetResolveMode { carrier: carrier.clone(), mode }).await)
    }

    async fn lease_holder(
        &self,
        addr: IpKey,
        port: Option<u16>,
        at: UnixMs,
    ) -> Result<Option<(CarrierId, SubscriberNumber)>, Failure> {
        self.lookup_lease(addr, port, at)
    }

    async fn lease_count(&self) -> Result<usize, Failure> {
        Ok(self.tree(T::Leases).len())
    }

    async fn prune_leases(&self, cutoff: UnixMs) -> Result<u64, Failure> {
        self.prune(cutoff).await
    }

    async fn statement(
        &self,
        carrier: &CarrierId,
        number: &SubscriberNumber,
        month: Month,
    ) -> Result<StatementData, StoreError<StatementRefusal>> {
        let v = self.statement_now(carrier, number, month)?;
        Ok(self.durable(v).await?)
    }

    async fn payout_entries(
        &self,
        shop: &ShopId,
        from: UnixMs,
        to: UnixMs,
    ) -> Result<Vec<PayoutEntry>, StoreError<PayoutRefusal>> {
        let v = self.payout_entries_now(shop, from, to)?;
        Ok(self.durable(v).await?)
    }

    async fn carrier_statement(
        &self,
        carrier: &CarrierId,
        month: Month,
        after: Option<&ShopId>,
        limit: usize,
    ) -> Result<Vec<CarrierStatementLine>, StoreError<CarrierStatementRefusal>> {
        let (carrier, after) = (carrier.clone(), after.cloned());
        self.read_on_writer(move |shared| remit::statement_on_writer(shared, &carrier, month, after.as_ref(), limit))
            .await?
            .ok_or(StoreError::Refused(CarrierStatementRefusal::UnknownCarrier))
    }
}

#[async_trait]
impl Lifecycle for SledStore {
    fn is_stopped(&self) -> bool {
        self.shared.stopped.load(Ordering::SeqCst)
    }

    async fn wait_stopped(&self) {
        let mut rx = self.shared.durable.subscribe();
        while !self.is_stopped() {
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    fn closed(&self) -> watch::Receiver<bool> {
        self.shared.closed.0.subscribe()
    }

    async fn backup(&self, dir: PathBuf) -> Result<StoreBackup, StoreError<BackupRefusal>> {
        let joined = |e: tokio::task::JoinError| Failure::Io(format!("backup task: {e}"));
        let d = dir.clone();
        tokio::task::spawn_blocking(move || crate::store::backup::prepare_target(&d))
            .await
            .map_err(joined)?
            .map_err(StoreError::Refused)?;
        let path = dir.join(crate::store::backup::DUMP_FILE);
        let dump = tokio::task::spawn_blocking(move || backup::start(&path))
            .await
            .map_err(joined)?
            .map_err(StoreError::Refused)?;
        let dumped = if self.torn_backup {
            self.torn_dump(dump).await?
        } else {
            // On the writer thread, between two write groups: the copy is
            // a prefix of the writer's order, answered once that prefix is
            // durable.
            self.read_on_writer(move |shared| backup::dump_all(shared, dump)).await?
        }
        .map_err(StoreError::Refused)?;
        metrics::histogram!(metric_names::BACKUP_PAUSE_SECONDS)
            .record(std::time::Duration::from_micros(dumped.pause_us).as_secs_f64());
        let (dump, dumped) =
            tokio::task::spawn_blocking(move || (backup::finish(&dir, &dumped), dumped)).await.map_err(joined)?;
        let dump = dump.map_err(StoreError::Refused)?;
        Ok(StoreBackup { backend: "sled", point: dumped.point, dump, pause_us: dumped.pause_us })
    }
}

#[cfg(test)]
mod footprint_tests;
#[cfg(test)]
mod payout_tests;
#[cfg(test)]
mod remit_tests;
#[cfg(test)]
mod tests;
