//! The storage boundary: what the engine asks of a store, by area. A
//! backend implements the five traits and so [`Backend`]; the engine holds
//! one as a [`super::Store`] (`Arc<dyn Backend>`) and never learns which.
//!
//! The promises every backend keeps, whatever its concurrency:
//!
//! - **Durable before answered.** A write's result (and any read's) is
//!   returned only once what it reports is on stable storage, so no caller
//!   ever reports a state that a crash could take back.
//! - **One atomic change per operation.** A trade's state change, its
//!   postings, balances, event and outbox deliveries are one commit.
//!   Refused means nothing was written.
//! - **Nothing outside the store inside a commit.** Outgoing work
//!   (offers, withdrawals) is recorded in the commit as outbox
//!   [`super::Delivery`]s and returned for the caller to push afterwards.
//! - **Exactly once.** A trade reaches a final state at most once and is
//!   settled by at most one posting set; an idempotent retry is compared
//!   with the request as the shop sent it and returns the original.
//! - **Gap-free events.** Each shop's events are numbered 1, 2, 3, … in
//!   commit order; [`Trades::event_head`] moves only over durable events.
//! - **The offer gate is asked once per created trade** (see
//!   [`super::OfferGate`]).
//!
//! Writes the relay stream issues in order (`submit_*`) return a
//! [`super::Pending`] as soon as they are queued; queued writes apply in
//! queue order.

use async_trait::async_trait;
use tokio::sync::watch;

use crate::domain::receipt::ReceiptSigner;
use crate::domain::{
    AccountName, CarrierId, Decision, IpKey, IpPrefix, Month, Principal, RegisterId, ResolveMode, ShopId,
    SubscriberNumber, TradeId, UnixMs,
};

use super::backup::StoreBackup;
use super::ops::{
    AckOutcome, AnswerOutcome, CancelOutcome, Created, ExpireOutcome, HandsetAnswer, LeaseReport, LeasesRecorded,
    NewCarrier, NewHandset, NewPayout, NewRefund, NewRegister, NewRemittance, NewShop, NewSubscriber, NewTrade,
    PaidOut, Pending, Refunded, Remitted, Route, ShopStatus, SignatureCheck, StatementData, TopUp, ToppedUp,
    TradeHistory,
};
use super::records::{
    AccountRecord, CarrierRecord, CarrierStatementLine, Delivery, EventRecord, HandsetRecord, PayoutEntry,
    PostingRecord, RegisterRecord, ShopRecord, SubscriberRecord, TradeRecord,
};
use super::refusals::{
    AcceptanceRefusal, AddPrefixesRefusal, AnswerRefusal, BackupRefusal, CancelRefusal, CarrierStatementRefusal,
    CloseRegisterRefusal, CreateCarrierRefusal, CreateShopRefusal, CreateTradeRefusal, EnrollHandsetRefusal,
    EnrollSubscriberRefusal, Failure, LeaseRefusal, NoRefusal, OpenRegisterRefusal, PayoutRefusal, RefundRefusal,
    RemittanceRefusal, RotateCredentialRefusal, ShopPayoutRefusal, StatementRefusal, StoreError, SuspendRefusal,
    TopUpRefusal,
};
use super::verify::VerifyReport;

/// Shops, carriers, subscribers and their handsets, registers, and who
/// holds a credential.
#[async_trait]
pub trait Parties: Send + Sync {
    async fn create_shop(&self, shop: NewShop) -> Result<ShopRecord, StoreError<CreateShopRefusal>>;
    /// Refuses prefixes that overlap another carrier's.
    async fn create_carrier(&self, carrier: NewCarrier) -> Result<CarrierRecord, StoreError<CreateCarrierRefusal>>;
    async fn enroll_subscriber(
        &self,
        s: NewSubscriber,
    ) -> Result<SubscriberRecord, StoreError<EnrollSubscriberRefusal>>;
    async fn enroll_handset(&self, h: NewHandset) -> Result<HandsetRecord, StoreError<EnrollHandsetRefusal>>;
    async fn open_register(&self, r: NewRegister) -> Result<RegisterRecord, StoreError<OpenRegisterRefusal>>;
    async fn close_register(
        &self,
        shop: &ShopId,
        id: RegisterId,
        now: UnixMs,
    ) -> Result<RegisterRecord, StoreError<CloseRegisterRefusal>>;

    /// Who holds a credential (by SHA-256 of its token). Synchronous: the
    /// authentication interceptor asks on every call and cannot wait; a
    /// backend that cannot answer from a local read keeps the credentials
    /// in memory (they change only when a party is created or rotated).
    fn principal(&self, token_hash: &[u8; 32]) -> Result<Option<Principal>, Failure>;
    /// Whether the shop or carrier a certificate names exists (the
    /// operator always does). Synchronous, as [`Parties::principal`].
    fn party_exists(&self, principal: &Principal) -> Result<bool, Failure>;

    async fn shop(&self, id: &ShopId) -> Result<Option<ShopRecord>, Failure>;
    /// The shop's registers (open and closed), at most `limit`.
    async fn registers(&self, shop: &ShopId, limit: usize) -> Result<Vec<RegisterRecord>, Failure>;
    /// Whether `shop` has a register `id` (open or closed).
    async fn has_register(&self, shop: &ShopId, id: &RegisterId) -> Result<bool, Failure>;
    async fn subscriber(&self, number: &SubscriberNumber) -> Result<Option<SubscriberRecord>, Failure>;
    /// The handset key enrolled for `number` now.
    async fn handset(&self, number: &SubscriberNumber) -> Result<Option<HandsetRecord>, Failure>;

    /// Shops with ids after `after` (exclusive), in id order, at most
    /// `limit`, each with its suspension.
    async fn shops(&self, after: Option<&ShopId>, limit: usize) -> Result<Vec<ShopStatus>, Failure>;
    /// Carriers with ids after `after` (exclusive), in id order, at most
    /// `limit`.
    async fn carriers(&self, after: Option<&CarrierId>, limit: usize) -> Result<Vec<CarrierRecord>, Failure>;
    /// Suspends (`true`) or resumes a shop. Must guarantee: once this
    /// returns, no trade of the shop is created until it is resumed, i.e.
    /// `create_trade` reads the suspension in the same transaction that
    /// creates the trade (a row lock or serializable read in PostgreSQL);
    /// open trades, answers, expiry and refunds are not affected.
    /// Suspending a suspended shop keeps its first instant.
    async fn set_shop_suspended(
        &self,
        shop: &ShopId,
        suspended: bool,
        now: UnixMs,
    ) -> Result<ShopStatus, StoreError<SuspendRefusal>>;
    /// Replaces every credential of `party` (a shop or carrier) with the
    /// one hashed as `token_hash`, in one transaction. Must guarantee:
    /// from the moment this returns, [`Parties::principal`] answers `None`
    /// for every old token, on every server process sharing the store (a
    /// backend that caches credentials invalidates them before returning).
    async fn rotate_credential(
        &self,
        party: &Principal,
        token_hash: [u8; 32],
    ) -> Result<(), StoreError<RotateCredentialRefusal>>;
}

/// A trade's life: creation, the carrier's acknowledgements and the
/// handset's answer, cancellation, expiry and refunds; its events and the
/// outbox.
#[async_trait]
pub trait Trades: Send + Sync {
    /// Resolves the payer (a number is itself; a network identity is
    /// resolved for this shop before the commit, from the lease records
    /// or, in ask mode, as [`NewTrade::asked`] says), replays an idempotent
    /// retry (compared as sent), then creates the trade: PENDING with its
    /// offer queued (if the offer gate admits it), or FAILED at once when
    /// nothing could ever answer it.
    async fn create_trade(&self, trade: NewTrade) -> Result<Created, StoreError<CreateTradeRefusal>>;
    async fn cancel(
        &self,
        shop: &ShopId,
        trade: TradeId,
        now: UnixMs,
    ) -> Result<CancelOutcome, StoreError<CancelRefusal>>;
    async fn refund(&self, refund: NewRefund) -> Result<Refunded, StoreError<RefundRefusal>>;

    /// Queues the carrier's acknowledgement of an outbox delivery.
    async fn submit_ack(
        &self,
        carrier: &CarrierId,
        delivery_id: u64,
        now: UnixMs,
    ) -> Result<Pending<AckOutcome, NoRefusal>, Failure>;
    /// Verifies a handset's answer against the trade and enrolled key as
    /// they are now, off the write path; `None` when there is nothing to
    /// check against yet (the store then decides alone). Trade fields a
    /// signature covers never change; a handset can be re-enrolled, so the
    /// store takes the verdict only while it covers the same bytes. A valid
    /// approval's receipt is countersigned here too, at `now` (the answer's
    /// time) with `signer`, for the store to take if the answer settles.
    async fn check_answer(
        &self,
        carrier: &CarrierId,
        trade: &TradeId,
        decision: Decision,
        signature: &[u8],
        signer: &ReceiptSigner,
        now: UnixMs,
    ) -> Option<SignatureCheck>;
    /// Queues a handset's answer: settled, declined or failed, or refused
    /// with the reason (unknown, already final, late: a late answer expires
    /// the trade).
    async fn submit_answer(&self, answer: HandsetAnswer) -> Result<Pending<AnswerOutcome, AnswerRefusal>, Failure>;
    /// Queues the expiry of a trade whose deadline is at or before `now`.
    async fn submit_expire(&self, trade: TradeId, now: UnixMs) -> Result<Pending<ExpireOutcome, NoRefusal>, Failure>;

    async fn trade(&self, id: &TradeId) -> Result<Option<TradeRecord>, Failure>;
    /// Events of `shop` with `after < seq <= head`, at most `limit`, each
    /// with its trade as it was right after the event.
    async fn events(&self, shop: &ShopId, after: u64, head: u64, limit: usize) -> Result<Vec<EventRecord>, Failure>;
    /// The shop's durable event head (the highest sequence number on
    /// stable storage), moving as events become durable; `None` for an
    /// unknown shop.
    fn event_head(&self, shop: &ShopId) -> Option<watch::Receiver<u64>>;
    /// Unacknowledged deliveries for a carrier with ids above `after`,
    /// oldest first, at most `limit`.
    async fn outbox(&self, carrier: &CarrierId, after: u64, limit: usize) -> Result<Vec<Delivery>, Failure>;
    /// As [`Trades::outbox`], for a relay of this node about to push them:
    /// on a store with other writers, only deliveries no other node has
    /// claimed (or whose claim lapsed), now claimed for this node, with
    /// this node's own claims renewed (`Remote::lease`). A store no one
    /// else writes has nothing to claim against.
    async fn claim_outbox(
        &self,
        carrier: &CarrierId,
        after: u64,
        limit: usize,
        now: UnixMs,
    ) -> Result<Vec<Delivery>, Failure> {
        let _ = now;
        self.outbox(carrier, after, limit).await
    }
    /// Open trades whose deadline is at or before `now`, at most `limit`.
    async fn due(&self, now: UnixMs, limit: usize) -> Result<Vec<TradeId>, Failure>;
    /// How many trades are open (for start-up, not the hot path).
    async fn open_trade_count(&self) -> Result<usize, Failure>;
    /// The earliest deadline of any open trade (the sweeper sleeps until it).
    async fn next_deadline(&self) -> Result<Option<UnixMs>, Failure>;
    /// The trades behind the newest `per_shop` events of each of the first
    /// `max_shops` shops (in shop id order), each once, as they are now;
    /// newest activity first (the operator console).
    async fn recent_trades(&self, max_shops: usize, per_shop: usize) -> Result<Vec<TradeRecord>, Failure>;
    /// Any shop's trade with its history for the operator: every event it
    /// caused (states with times, refunds) and every posting naming it,
    /// each in commit order and at most `limit`. Must guarantee the three
    /// belong to one committed state (one snapshot in PostgreSQL).
    async fn trade_history(&self, id: &TradeId, limit: usize) -> Result<Option<TradeHistory>, Failure>;
}

/// Money: top-ups, accounts, postings and the ledger's verification.
#[async_trait]
pub trait Ledger: Send + Sync {
    async fn top_up(&self, top_up: TopUp) -> Result<ToppedUp, StoreError<TopUpRefusal>>;
    async fn account(&self, name: &AccountName) -> Result<Option<AccountRecord>, Failure>;
    /// Accounts whose name starts with `prefix`, at most `limit`, as of one
    /// moment (the balances of a page always belong together).
    async fn accounts(&self, prefix: &str, limit: usize) -> Result<Vec<AccountRecord>, Failure>;
    /// Postings with ids above `after`, at most `limit`.
    async fn postings(&self, after: u64, limit: usize) -> Result<Vec<PostingRecord>, Failure>;
    /// Checks every ledger invariant on one consistent state.
    async fn verify(&self) -> Result<VerifyReport, Failure>;
    /// Pays out part or all of a shop's payable balance in one currency
    /// through the system payout account: one balanced posting set (shop
    /// payable → system payout) whose id is the payout's id, the payout
    /// record, its payout entry and its idempotency key. Must guarantee:
    /// the balance check and the postings in one transaction, serialised
    /// with every other write of that account (PostgreSQL: `SELECT … FOR
    /// UPDATE` on the payable account row, or SERIALIZABLE), so concurrent
    /// payouts and refunds together never take more than the balance; an
    /// idempotency key is operator-wide and a retry is compared with the
    /// request as sent (shop, currency, amount), returning the original.
    async fn payout_shop(&self, payout: NewPayout) -> Result<PaidOut, StoreError<ShopPayoutRefusal>>;
    /// Records a carrier's remittance for one shop's carrier-billed sales
    /// of one month in one currency: one balanced posting set (system
    /// remittance account → the carrier's remitted account) whose id is
    /// the remittance's id, and the remittance record. What is owed is the
    /// month's payout entries of that carrier and shop (gross − fee −
    /// refunded); the caller has checked the month is over, so they no
    /// longer change. Must guarantee: the sum of the month's remittances
    /// and this one read and checked against what is owed in the same
    /// transaction as the postings, serialised with every other remittance
    /// of the same (carrier, shop, month, currency) (PostgreSQL: an
    /// advisory transaction lock on it), so concurrent remittances never
    /// together exceed what is owed; the idempotency key is operator-wide
    /// and a retry is compared as sent, returning the original.
    async fn remit(&self, remittance: NewRemittance) -> Result<Remitted, StoreError<RemittanceRefusal>>;
    /// The newest `limit` postings, newest first (the operator console).
    async fn recent_postings(&self, limit: usize) -> Result<Vec<PostingRecord>, Failure>;
}

/// Network identity and carrier billing: prefixes, leases, acceptance,
/// statements and payout entries.
#[async_trait]
pub trait Network: Send + Sync {
    /// Every prefix of the carrier after the change.
    async fn add_prefixes(
        &self,
        carrier: &CarrierId,
        prefixes: Vec<IpPrefix>,
    ) -> Result<Vec<IpPrefix>, StoreError<AddPrefixesRefusal>>;
    async fn report_leases(
        &self,
        carrier: &CarrierId,
        starts: Vec<LeaseReport>,
        stops: Vec<LeaseReport>,
    ) -> Result<LeasesRecorded, StoreError<LeaseRefusal>>;
    /// The carrier accepts (or revokes) a shop; returns whether accepted.
    async fn set_acceptance(
        &self,
        carrier: &CarrierId,
        shop: &ShopId,
        accept: bool,
    ) -> Result<bool, StoreError<AcceptanceRefusal>>;
    /// The carrier owning `addr`'s range (longest prefix), its resolve
    /// mode and whether it accepts `shop`; `None` outside every range.
    async fn route(&self, addr: IpKey, shop: &ShopId) -> Result<Option<Route>, Failure>;
    /// Sets the carrier's resolve mode (its terms); returns it. Must
    /// guarantee: once it returns, a ReportLeases of the carrier checks
    /// the new mode (read in the batch's own transaction).
    async fn set_resolve_mode(&self, carrier: &CarrierId, mode: ResolveMode) -> Result<ResolveMode, Failure>;
    /// Who held `addr` (and `port`) at `at`, if anyone.
    async fn lease_holder(
        &self,
        addr: IpKey,
        port: Option<u16>,
        at: UnixMs,
    ) -> Result<Option<(CarrierId, SubscriberNumber)>, Failure>;
    /// How many lease records are kept (for tools).
    async fn lease_count(&self) -> Result<usize, Failure>;
    /// Deletes lease records no lookup at or after `cutoff` can reach;
    /// returns how many.
    async fn prune_leases(&self, cutoff: UnixMs) -> Result<u64, Failure>;
    /// The bill of `number` at `carrier` for `month`.
    async fn statement(
        &self,
        carrier: &CarrierId,
        number: &SubscriberNumber,
        month: Month,
    ) -> Result<StatementData, StoreError<StatementRefusal>>;
    /// The shop's payout entries committed in `[from, to)`.
    async fn payout_entries(
        &self,
        shop: &ShopId,
        from: UnixMs,
        to: UnixMs,
    ) -> Result<Vec<PayoutEntry>, StoreError<PayoutRefusal>>;
    /// A carrier's statement for `month`: per shop (ids after `after`, in
    /// id order, at most `limit` shops) and currency, the month's
    /// carrier-billed sales of the shop (from its payout entries) and the
    /// carrier's remittances for them; shops with neither are left out.
    /// One consistent state (one snapshot in PostgreSQL).
    async fn carrier_statement(
        &self,
        carrier: &CarrierId,
        month: Month,
        after: Option<&ShopId>,
        limit: usize,
    ) -> Result<Vec<CarrierStatementLine>, StoreError<CarrierStatementRefusal>>;
}

/// The store's own health and life.
#[async_trait]
pub trait Lifecycle: Send + Sync {
    /// True once the store stopped accepting writes (a sync failed).
    fn is_stopped(&self) -> bool;
    /// Resolves once the store has stopped accepting writes.
    async fn wait_stopped(&self);
    /// Turns true once every handle of the store is gone and its files or
    /// connections are closed.
    fn closed(&self) -> watch::Receiver<bool>;
    /// Whether other processes write to the same data (several nodes on
    /// one database): then work committed elsewhere reaches this node only
    /// by reading (the relay polls the outbox; `AwaitTrade` re-reads).
    fn other_writers(&self) -> bool {
        false
    }
    /// Copies every record, at one point of the store's commit order, into
    /// `dir` (absolute; absent or empty: [`super::backup::prepare_target`])
    /// as [`super::backup::DUMP_FILE`], synced with its folder before it
    /// answers. Every change answered before the call is in the copy, and
    /// the copy is a prefix of the commit order (no later change without
    /// every earlier one). Writes may wait while the copy is taken (the
    /// sled backend's writer pauses; `pause_us` says how long). The caller
    /// writes the manifest.
    async fn backup(&self, dir: std::path::PathBuf) -> Result<StoreBackup, StoreError<BackupRefusal>>;
    /// With other writers: how often this node reads what they committed
    /// (the relay's outbox, an awaited trade), and the announcements of
    /// their commits (a hint to read now instead). `None` on a store no
    /// one else writes.
    fn remote(&self) -> Option<Remote> {
        None
    }
    /// A relay of `carrier` attached to this node (or left it): deliveries
    /// this node commits for a carrier it has a relay of are claimed for
    /// it at once, since it pushes them live.
    fn relay_attached(&self, carrier: &CarrierId, attached: bool) {
        let _ = (carrier, attached);
    }
}

/// How a node learns of commits made by other writers of its store. The
/// announcements only say when to read again: one may be lost (a dropped
/// connection, a full queue), so readers also read every `poll`, and
/// correctness never rests on an announcement.
#[derive(Clone)]
pub struct Remote {
    pub poll: std::time::Duration,
    /// How long a node's claim of an outbox delivery holds unless renewed
    /// (`Trades::claim_outbox`); a relay holding claims reads again well
    /// within it.
    pub lease: std::time::Duration,
    /// Subscribe for the announcements; `None` when they are off.
    pub changes: Option<tokio::sync::broadcast::Sender<RemoteChange>>,
}

/// What another writer announced it committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoteChange {
    /// The trade reached a final state.
    TradeFinal(TradeId),
    /// The carrier's outbox has new deliveries.
    Outbox(CarrierId),
    /// Announcements may have been missed (the listener reconnected):
    /// read everything again.
    Resync,
}

/// A whole store: what the engine holds.
pub trait Backend: Parties + Trades + Ledger + Network + Lifecycle {}

impl<T: Parties + Trades + Ledger + Network + Lifecycle> Backend for T {}
