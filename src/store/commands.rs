//! Write commands. Each runs inside one sled transaction over the fixed
//! trees (a write group shares one, see [`apply_group`]);
//! the closure may re-run, so it only reads and writes the transaction's
//! view and decides with pure domain functions. Outgoing work (offers,
//! withdrawals) is written to the outbox in the same transaction and
//! returned so the caller can send it once the group is durable.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};
use sled::Transactional;

use crate::domain::receipt::{handset_commitment, ReceiptKeyId, ReceiptSigner, Statement};
use crate::domain::trade::transition;
use crate::domain::{
    AccountName, Amount, Balance, CarrierId, Currency, Decision, FailureReason, IpPrefix, Leg, PostingSet, RegisterId,
    ShopId, Side, SubscriberNumber, TradeEvent, TradeId, TradeState, Transition, UnixMs,
};

use super::network::{self, LeaseReport, Resolution};
use super::records::{
    AccountRecord, CarrierRecord, Delivery, DeliveryBody, EventKind, EventRecord, Funding, HandsetRecord,
    IdempotencyRecord, NetworkTradeRequest, OfferBody, PayoutEntry, PostingKind, PostingRecord, Principal, Receipt,
    Record, RegisterRecord, ShopRecord, Sig64, SignedTerms, SubscriberRecord, TradeRecord, TradeRequest,
};
use super::verify::{self, VerifyReport};
use super::{keys, records, Shared, StoreError, T};

/// A change to the store. Every field is already validated by the caller.
#[derive(Debug, Clone)]
pub enum Command {
    CreateShop {
        id: ShopId,
        display_name: String,
        token_hash: [u8; 32],
        max_shops: u32,
        now: UnixMs,
    },
    CreateCarrier {
        id: CarrierId,
        display_name: String,
        token_hash: [u8; 32],
        /// Checked against other carriers' prefixes before the transaction.
        prefixes: Vec<IpPrefix>,
        fee_bps: u32,
        now: UnixMs,
    },
    AddPrefixes {
        carrier: CarrierId,
        prefixes: Vec<IpPrefix>,
    },
    ReportLeases {
        carrier: CarrierId,
        starts: Vec<LeaseReport>,
        stops: Vec<LeaseReport>,
    },
    /// The carrier accepts (or revokes) a shop.
    SetAcceptance {
        carrier: CarrierId,
        shop: ShopId,
        accept: bool,
    },
    /// A trade whose payer is named by network identity; resolved on the
    /// writer thread just before the transaction.
    CreateTradeByNetwork(NetworkTrade),
    /// Lease records chosen by `Store::prune_leases`.
    DeleteLeases {
        keys: Vec<Vec<u8>>,
    },
    EnrollSubscriber {
        carrier: CarrierId,
        number: SubscriberNumber,
        funding: Funding,
        now: UnixMs,
    },
    EnrollHandset {
        carrier: CarrierId,
        number: SubscriberNumber,
        public_key: [u8; 32],
        now: UnixMs,
    },
    TopUp {
        number: SubscriberNumber,
        amount: Amount,
        currency: Currency,
        now: UnixMs,
    },
    OpenRegister {
        shop: ShopId,
        id: RegisterId,
        label: String,
        max_registers: u32,
        now: UnixMs,
    },
    CloseRegister {
        shop: ShopId,
        id: RegisterId,
        now: UnixMs,
    },
    CreateTrade(CreateTrade),
    /// The carrier acknowledged an outbox delivery.
    Ack {
        carrier: CarrierId,
        delivery_id: u64,
        now: UnixMs,
    },
    /// A handset's signed answer, relayed by its carrier.
    Answer {
        carrier: CarrierId,
        trade: TradeId,
        decision: Decision,
        signature: Vec<u8>,
        now: UnixMs,
        /// The signature checked before queueing (`Store::check_answer`),
        /// so the writer need not: used only if the payload, key and
        /// signature it covered are exactly what the writer sees.
        checked: Option<SignatureCheck>,
        /// Countersigns the receipt if the answer settles the trade.
        signer: std::sync::Arc<ReceiptSigner>,
    },
    Cancel {
        shop: ShopId,
        trade: TradeId,
        now: UnixMs,
    },
    /// Refunds part of a settled trade to its payer.
    Refund {
        shop: ShopId,
        trade: TradeId,
        amount: Amount,
        idempotency_key: Option<String>,
        now: UnixMs,
    },
    /// Expires the trade if it is open and its deadline has passed.
    Expire {
        trade: TradeId,
        now: UnixMs,
    },
    /// Reads everything on the writer thread for a consistent check.
    Verify,
    /// Reads accounts on the writer thread: one consistent state.
    ReadAccounts {
        prefix: String,
        limit: usize,
    },
}

#[derive(Debug, Clone)]
pub struct CreateTrade {
    pub shop: ShopId,
    pub trade_id: TradeId,
    pub request: TradeRequest,
    pub idempotency_key: Option<String>,
    pub binding_code: String,
    pub max_open_per_register: u32,
    /// Asked only when the trade is about to send its offer.
    pub offer_gate: Option<OfferGate>,
    pub now: UnixMs,
}

#[derive(Debug, Clone)]
pub struct NetworkTrade {
    pub shop: ShopId,
    pub trade_id: TradeId,
    pub request: NetworkTradeRequest,
    pub idempotency_key: Option<String>,
    pub binding_code: String,
    pub max_open_per_register: u32,
    /// Asked only when the trade is about to send its offer.
    pub offer_gate: Option<OfferGate>,
    pub now: UnixMs,
}

/// The caller's say on whether a subscriber may be sent one more offer
/// (the per-subscriber rate limit, which the store knows nothing of). The
/// writer asks it inside CreateTrade at the one point where the trade is
/// known to send an offer: after the idempotency check (a replay or a
/// conflict sends nothing), the register, payer, handset and open-trade
/// checks, and, for a network identity, the resolution for this shop. So
/// only a trade that really pushes an offer spends the buyer's allowance,
/// and since the single writer decides trades one at a time, concurrent
/// requests cannot overspend it. On admission the gate spends the
/// allowance (it has no refund), so the writer asks it at most once per
/// trade ([`Admissions`]). A refusal's message becomes
/// [`StoreError::RateLimited`] and nothing is written.
#[derive(Clone)]
pub struct OfferGate(Arc<AdmitFn>);

type AdmitFn = dyn Fn(&SubscriberNumber) -> Result<(), String> + Send + Sync;

impl OfferGate {
    pub fn new(admit: impl Fn(&SubscriberNumber) -> Result<(), String> + Send + Sync + 'static) -> OfferGate {
        OfferGate(Arc::new(admit))
    }
}

impl std::fmt::Debug for OfferGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OfferGate")
    }
}

/// The gates' verdicts within one write group, by trade id. A transaction
/// closure may re-run, and a group in which one command fails is applied
/// again one command at a time, so the same CreateTrade can reach its
/// gate more than once; the first verdict is reused, so admitting spends
/// the allowance once. (Trade ids are fresh per request.) Only the writer
/// thread uses it.
#[derive(Default)]
pub(crate) struct Admissions(RefCell<HashMap<TradeId, Result<(), String>>>);

impl Admissions {
    fn admit(&self, trade: TradeId, gate: &OfferGate, subscriber: &SubscriberNumber) -> Result<(), String> {
        if let Some(verdict) = self.0.borrow().get(&trade) {
            return verdict.clone();
        }
        let verdict = (gate.0)(subscriber);
        self.0.borrow_mut().insert(trade, verdict.clone());
        verdict
    }
}

/// Why a handset answer changed nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectedAnswer {
    /// No such trade for this carrier.
    UnknownTrade,
    /// The trade had already reached this final state.
    AlreadyFinal(TradeState),
    /// The deadline had passed; the trade is now EXPIRED.
    Expired,
}

#[derive(Debug, Clone)]
pub struct AnswerOutcome {
    /// The trade after the answer (absent when unknown).
    pub trade: Option<TradeRecord>,
    pub rejected: Option<RejectedAnswer>,
    pub deliveries: Vec<Delivery>,
}

#[derive(Debug, Clone)]
pub enum CommandOutcome {
    Shop(ShopRecord),
    Carrier(CarrierRecord),
    /// Every prefix of the carrier after the change.
    Prefixes(Vec<IpPrefix>),
    Leases {
        starts: u32,
        stops: u32,
    },
    Acceptance {
        accepted: bool,
    },
    Done,
    Subscriber(SubscriberRecord),
    Handset(HandsetRecord),
    TopUp {
        account: AccountRecord,
        posting_id: u64,
    },
    Register(RegisterRecord),
    /// A created, cancelled, expired or acknowledged trade and the
    /// deliveries to send now that it is durable. `replayed` is true when
    /// an idempotent retry returned an earlier trade.
    Trade {
        trade: Option<TradeRecord>,
        deliveries: Vec<Delivery>,
        replayed: bool,
    },
    Answer(AnswerOutcome),
    /// A refund (or the original one, for an idempotent retry).
    Refund {
        trade: TradeRecord,
        /// The refund's posting set id.
        refund_id: u64,
        amount: Amount,
        replayed: bool,
    },
    Verified(VerifyReport),
    Accounts(Vec<AccountRecord>),
    /// The command came after the trade's deadline: the trade was expired
    /// instead (committed, with its withdrawal) and the command refused.
    TooLate {
        trade: TradeRecord,
        deliveries: Vec<Delivery>,
    },
}

pub(super) type TxResult<R> = Result<R, ConflictableTransactionError<StoreError>>;

pub(super) fn abort<R>(e: StoreError) -> TxResult<R> {
    Err(ConflictableTransactionError::Abort(e))
}

/// Typed access to the transaction's view of every tree.
pub(super) struct Tx<'a>(&'a [TransactionalTree]);

impl Tx<'_> {
    pub(super) fn tree(&self, t: T) -> TxResult<&TransactionalTree> {
        match self.0.get(t as usize) {
            Some(tree) => Ok(tree),
            None => abort(StoreError::Corrupt(format!("tree {t:?} missing from transaction"))),
        }
    }

    pub(super) fn get<R: Record>(&self, t: T, key: &[u8]) -> TxResult<Option<R>> {
        match self.tree(t)?.get(key)? {
            Some(v) => records::decode(&v).map(Some).or_else(abort),
            None => Ok(None),
        }
    }

    pub(super) fn put<R: Record>(&self, t: T, key: &[u8], value: &R) -> TxResult<()> {
        let bytes = records::encode(value).or_else(abort)?;
        self.tree(t)?.insert(key, bytes)?;
        Ok(())
    }

    pub(super) fn del(&self, t: T, key: &[u8]) -> TxResult<()> {
        self.tree(t)?.remove(key)?;
        Ok(())
    }

    /// Next value of a named counter (1, 2, 3, …), stored big-endian.
    fn next(&self, name: &[u8]) -> TxResult<u64> {
        let meta = self.tree(T::Meta)?;
        let current = match meta.get(name)? {
            Some(v) => match <[u8; 8]>::try_from(v.as_ref()) {
                Ok(b) => u64::from_be_bytes(b),
                Err(_) => return abort(StoreError::Corrupt("counter width".into())),
            },
            None => 0,
        };
        let Some(next) = current.checked_add(1) else {
            return abort(StoreError::Corrupt("counter overflow".into()));
        };
        meta.insert(name, &next.to_be_bytes())?;
        Ok(next)
    }
}

/// What a command produced besides its outcome.
#[derive(Default)]
struct Effects {
    deliveries: Vec<Delivery>,
    heads: Vec<(ShopId, u64)>,
}

/// Applies one command; on success also reports the shops whose event head
/// moved (to publish once the group is durable).
pub(crate) fn apply(
    shared: &Shared,
    command: &Command,
    admissions: &Admissions,
    heads: &mut Vec<(ShopId, u64)>,
) -> Result<CommandOutcome, StoreError> {
    match command {
        Command::Verify => return verify::verify(&shared.trees).map(CommandOutcome::Verified),
        Command::ReadAccounts { prefix, limit } => return read_accounts(shared, prefix, *limit),
        _ => {}
    }
    // What needs a range scan runs here, on the writer thread, before the
    // transaction (which cannot scan); nothing else writes meanwhile.
    let resolution = match command {
        Command::CreateCarrier { id, prefixes, .. } | Command::AddPrefixes { carrier: id, prefixes } => {
            network::check_overlaps(shared, id, prefixes)?;
            None
        }
        Command::CreateTradeByNetwork(n) => Some(network::resolve(shared, &n.shop, &n.request.identity)?),
        _ => None,
    };
    let trees: Vec<&sled::Tree> = shared.trees.iter().collect();
    let result = trees.as_slice().transaction(|view| {
        let tx = Tx(view.as_slice());
        let mut fx = Effects::default();
        let outcome = run(&tx, command, resolution.as_ref(), admissions, &mut fx)?;
        Ok((outcome, fx))
    });
    match result {
        Ok((outcome, fx)) => {
            heads.extend(fx.heads);
            Ok(outcome)
        }
        Err(TransactionError::Abort(e)) => Err(e),
        Err(TransactionError::Storage(e)) => Err(StoreError::from(e)),
    }
}

/// Whether a command can share one transaction with others: it needs no
/// read outside the transaction before it (range scans, verification).
fn groupable(command: &Command) -> bool {
    !matches!(
        command,
        Command::Verify
            | Command::ReadAccounts { .. }
            | Command::CreateCarrier { .. }
            | Command::AddPrefixes { .. }
            | Command::CreateTradeByNetwork(_)
    )
}

/// Applies a group of commands, in order, as one sled transaction when
/// every command in it can share one and each succeeds; otherwise (a
/// command aborts with its own error, or needs a read outside the
/// transaction) each is applied on its own as by [`apply`], so every
/// command gets exactly the outcome it would have had alone.
///
/// Why: sled 0.34 rolls its IO buffer around every transaction
/// (`PageCache::pin_log`), so each transaction costs its own log write and
/// `sync_file_range` however the group is synced afterwards; one
/// transaction per group pays that once (issue 6's profile). Later commands
/// read earlier ones' writes (sled transactions read their own writes), so
/// the results equal applying them one after another; the group commits
/// atomically, and nothing is acknowledged before the group is durable,
/// as before.
pub(crate) fn apply_group(
    shared: &Shared,
    commands: &[&Command],
    heads: &mut Vec<(ShopId, u64)>,
) -> Vec<Result<CommandOutcome, StoreError>> {
    let admissions = Admissions::default();
    let one_by_one =
        |heads: &mut Vec<(ShopId, u64)>| commands.iter().map(|c| apply(shared, c, &admissions, heads)).collect();
    if commands.len() < 2 || !commands.iter().all(|c| groupable(c)) {
        return one_by_one(heads);
    }
    let trees: Vec<&sled::Tree> = shared.trees.iter().collect();
    let result = trees.as_slice().transaction(|view| {
        let tx = Tx(view.as_slice());
        let mut fx = Effects::default();
        let mut outcomes = Vec::with_capacity(commands.len());
        for command in commands {
            outcomes.push(run(&tx, command, None, &admissions, &mut fx)?);
        }
        Ok((outcomes, fx))
    });
    match result {
        Ok((outcomes, fx)) => {
            debug_assert_eq!(outcomes.len(), commands.len());
            heads.extend(fx.heads);
            outcomes.into_iter().map(Ok).collect()
        }
        // Nothing of the group was written: apply each alone, so the one
        // that failed gets its error and the others their outcomes.
        Err(_) => one_by_one(heads),
    }
}

fn run(
    tx: &Tx,
    command: &Command,
    resolution: Option<&Resolution>,
    admissions: &Admissions,
    fx: &mut Effects,
) -> TxResult<CommandOutcome> {
    match command {
        Command::CreateShop { id, display_name, token_hash, max_shops, now } => {
            create_shop(tx, id, display_name, token_hash, *max_shops, *now, fx)
        }
        Command::CreateCarrier { id, display_name, token_hash, prefixes, fee_bps, now } => {
            let outcome = create_carrier(tx, id, display_name, token_hash, *now)?;
            network::put_prefixes(tx, id, prefixes)?;
            network::put_terms(tx, id, *fee_bps)?;
            Ok(outcome)
        }
        Command::AddPrefixes { carrier, prefixes } => {
            if tx.get::<CarrierRecord>(T::Carriers, carrier.as_str().as_bytes())?.is_none() {
                return abort(StoreError::NotFound("carrier"));
            }
            network::put_prefixes(tx, carrier, prefixes)?;
            Ok(CommandOutcome::Prefixes(prefixes.clone()))
        }
        Command::ReportLeases { carrier, starts, stops } => {
            let (starts, stops) = network::report_leases(tx, carrier, starts, stops)?;
            Ok(CommandOutcome::Leases { starts, stops })
        }
        Command::SetAcceptance { carrier, shop, accept } => {
            network::set_acceptance(tx, carrier, shop, *accept)?;
            Ok(CommandOutcome::Acceptance { accepted: *accept })
        }
        Command::CreateTradeByNetwork(n) => create_trade_by_network(tx, n, resolution, admissions, fx),
        Command::DeleteLeases { keys } => {
            for k in keys {
                tx.del(T::Leases, k)?;
            }
            Ok(CommandOutcome::Done)
        }
        Command::EnrollSubscriber { carrier, number, funding, now } => {
            enroll_subscriber(tx, carrier, number, *funding, *now)
        }
        Command::EnrollHandset { carrier, number, public_key, now } => {
            enroll_handset(tx, carrier, number, public_key, *now)
        }
        Command::TopUp { number, amount, currency, now } => top_up(tx, number, *amount, *currency, *now),
        Command::OpenRegister { shop, id, label, max_registers, now } => {
            open_register(tx, shop, id, label, *max_registers, *now)
        }
        Command::CloseRegister { shop, id, now } => close_register(tx, shop, id, *now),
        Command::CreateTrade(c) => create_trade(tx, c, admissions, fx),
        Command::Ack { carrier, delivery_id, now } => ack(tx, carrier, *delivery_id, *now, fx),
        Command::Answer { carrier, trade, decision, signature, now, checked, signer } => {
            answer(tx, carrier, trade, *decision, signature, checked.as_ref(), signer, *now, fx)
        }
        Command::Cancel { shop, trade, now } => cancel(tx, shop, trade, *now, fx),
        Command::Refund { shop, trade, amount, idempotency_key, now } => {
            refund(tx, shop, trade, *amount, idempotency_key.as_deref(), *now, fx)
        }
        Command::Expire { trade, now } => expire(tx, trade, *now, fx),
        Command::Verify | Command::ReadAccounts { .. } => {
            abort(StoreError::Corrupt("reads are not transactions".into()))
        }
    }
}

fn create_shop(
    tx: &Tx,
    id: &ShopId,
    display_name: &str,
    token_hash: &[u8; 32],
    max_shops: u32,
    now: UnixMs,
    fx: &mut Effects,
) -> TxResult<CommandOutcome> {
    let key = id.as_str().as_bytes();
    if tx.get::<ShopRecord>(T::Shops, key)?.is_some() {
        return abort(StoreError::AlreadyExists(format!("shop_id: shop {id} already exists")));
    }
    let count = tx.next(b"shops")?;
    if count > u64::from(max_shops) {
        return abort(StoreError::LimitExceeded(format!("at most {max_shops} shops")));
    }
    let shop = ShopRecord { id: id.clone(), display_name: display_name.to_owned(), next_event_seq: 1, created_at: now };
    tx.put(T::Shops, key, &shop)?;
    tx.put(T::Credentials, token_hash, &Principal::Shop(id.clone()))?;
    fx.heads.push((id.clone(), 0));
    Ok(CommandOutcome::Shop(shop))
}

fn create_carrier(
    tx: &Tx,
    id: &CarrierId,
    display_name: &str,
    token_hash: &[u8; 32],
    now: UnixMs,
) -> TxResult<CommandOutcome> {
    let key = id.as_str().as_bytes();
    if tx.get::<CarrierRecord>(T::Carriers, key)?.is_some() {
        return abort(StoreError::AlreadyExists(format!("carrier_id: carrier {id} already exists")));
    }
    let carrier = CarrierRecord { id: id.clone(), display_name: display_name.to_owned(), created_at: now };
    tx.put(T::Carriers, key, &carrier)?;
    tx.put(T::Credentials, token_hash, &Principal::Carrier(id.clone()))?;
    Ok(CommandOutcome::Carrier(carrier))
}

fn enroll_subscriber(
    tx: &Tx,
    carrier: &CarrierId,
    number: &SubscriberNumber,
    funding: Funding,
    now: UnixMs,
) -> TxResult<CommandOutcome> {
    let key = number.as_str().as_bytes();
    if let Some(existing) = tx.get::<SubscriberRecord>(T::Subscribers, key)? {
        if &existing.carrier != carrier {
            return abort(StoreError::FailedPrecondition(
                "subscriber_number: the number is enrolled with another carrier".into(),
            ));
        }
    }
    let record = SubscriberRecord { number: number.clone(), carrier: carrier.clone(), funding, enrolled_at: now };
    tx.put(T::Subscribers, key, &record)?;
    Ok(CommandOutcome::Subscriber(record))
}

/// The subscriber, if it belongs to `carrier`; otherwise NOT_FOUND, so a
/// carrier learns nothing about other carriers' subscribers.
fn own_subscriber(tx: &Tx, carrier: &CarrierId, number: &SubscriberNumber) -> TxResult<SubscriberRecord> {
    match tx.get::<SubscriberRecord>(T::Subscribers, number.as_str().as_bytes())? {
        Some(s) if &s.carrier == carrier => Ok(s),
        _ => abort(StoreError::NotFound("subscriber")),
    }
}

fn enroll_handset(
    tx: &Tx,
    carrier: &CarrierId,
    number: &SubscriberNumber,
    public_key: &[u8; 32],
    now: UnixMs,
) -> TxResult<CommandOutcome> {
    own_subscriber(tx, carrier, number)?;
    let record = HandsetRecord { number: number.clone(), public_key: *public_key, enrolled_at: now };
    tx.put(T::Handsets, number.as_str().as_bytes(), &record)?;
    Ok(CommandOutcome::Handset(record))
}

fn top_up(
    tx: &Tx,
    number: &SubscriberNumber,
    amount: Amount,
    currency: Currency,
    now: UnixMs,
) -> TxResult<CommandOutcome> {
    match tx.get::<SubscriberRecord>(T::Subscribers, number.as_str().as_bytes())? {
        Some(s) => match s.funding {
            Funding::Wallet => {}
            Funding::CarrierBill { .. } => {
                return abort(StoreError::FailedPrecondition(
                    "subscriber_number: the subscriber is carrier-billed and has no wallet".into(),
                ))
            }
        },
        None => return abort(StoreError::NotFound("subscriber")),
    }
    let wallet = AccountName::Wallet(number.clone(), currency);
    let set = PostingSet::transfer(AccountName::SystemFunding(currency), wallet.clone(), amount)
        .or_else(|e| abort(StoreError::FailedPrecondition(format!("amount_minor: {e}"))))?;
    let (_, first) = post(tx, &set, None, PostingKind::TopUp, now)?;
    let account = tx
        .get::<AccountRecord>(T::Accounts, &keys::account(&wallet))?
        .map_or_else(|| abort(StoreError::Corrupt("wallet missing after posting".into())), Ok)?;
    Ok(CommandOutcome::TopUp { account, posting_id: first })
}

/// Writes a balanced posting set: account totals and immutable posting
/// records. Refuses (aborting the whole transaction) if a total would
/// overflow or a never-negative account would go below zero. Returns the
/// set id and the first posting id.
fn post(tx: &Tx, set: &PostingSet, trade: Option<TradeId>, kind: PostingKind, now: UnixMs) -> TxResult<(u64, u64)> {
    let set_id = tx.next(b"posting_set")?;
    let mut first = None;
    for leg in set.legs() {
        let key = keys::account(&leg.account);
        let mut account = tx
            .get::<AccountRecord>(T::Accounts, &key)?
            .unwrap_or(AccountRecord { name: leg.account.clone(), balance: Balance::EMPTY });
        account.balance = match account.balance.post(leg.side, leg.amount) {
            Ok(b) => b,
            Err(_) => {
                return abort(StoreError::FailedPrecondition(format!(
                    "amount_minor: the total of account {:?} would overflow",
                    leg.account
                )))
            }
        };
        if account.name.must_not_go_negative() && account.balance.credits < account.balance.debits {
            return abort(StoreError::FailedPrecondition(format!("account {:?} would go below zero", leg.account)));
        }
        tx.put(T::Accounts, &key, &account)?;
        let posting_id = tx.next(b"posting")?;
        first.get_or_insert(posting_id);
        let record = PostingRecord {
            posting_id,
            set_id,
            account: leg.account.clone(),
            side: leg.side,
            amount: leg.amount,
            trade,
            kind,
            at: now,
        };
        tx.put(T::Postings, &posting_id.to_be_bytes(), &record)?;
    }
    match first {
        Some(first) => Ok((set_id, first)),
        None => abort(StoreError::Corrupt("empty posting set".into())),
    }
}

fn open_register(
    tx: &Tx,
    shop: &ShopId,
    id: &RegisterId,
    label: &str,
    max_registers: u32,
    now: UnixMs,
) -> TxResult<CommandOutcome> {
    let open_count = registers_open(tx, shop)?;
    if open_count >= max_registers {
        return abort(StoreError::LimitExceeded(format!("at most {max_registers} open registers per shop")));
    }
    let key = keys::register(shop, id);
    if tx.get::<RegisterRecord>(T::Registers, &key)?.is_some() {
        return abort(StoreError::Corrupt("register id collision".into()));
    }
    let record = RegisterRecord {
        id: *id,
        shop: shop.clone(),
        label: label.to_owned(),
        open: true,
        opened_at: now,
        closed_at: None,
        open_trades: 0,
    };
    tx.put(T::Registers, &key, &record)?;
    set_registers_open(tx, shop, open_count.saturating_add(1))?;
    Ok(CommandOutcome::Register(record))
}

/// Open registers per shop live in the meta tree under `open_registers/<shop>`.
fn registers_open(tx: &Tx, shop: &ShopId) -> TxResult<u32> {
    let key = keys::owned("open_registers", shop.as_str().as_bytes());
    match tx.tree(T::Meta)?.get(&key)? {
        Some(v) => match <[u8; 4]>::try_from(v.as_ref()) {
            Ok(b) => Ok(u32::from_be_bytes(b)),
            Err(_) => abort(StoreError::Corrupt("open register count width".into())),
        },
        None => Ok(0),
    }
}

fn set_registers_open(tx: &Tx, shop: &ShopId, n: u32) -> TxResult<()> {
    let key = keys::owned("open_registers", shop.as_str().as_bytes());
    tx.tree(T::Meta)?.insert(key, &n.to_be_bytes())?;
    Ok(())
}

fn close_register(tx: &Tx, shop: &ShopId, id: &RegisterId, now: UnixMs) -> TxResult<CommandOutcome> {
    let key = keys::register(shop, id);
    let Some(mut record) = tx.get::<RegisterRecord>(T::Registers, &key)? else {
        return abort(StoreError::NotFound("register"));
    };
    if !record.open {
        return abort(StoreError::FailedPrecondition("register_id: the register is already closed".into()));
    }
    if record.open_trades > 0 {
        return abort(StoreError::FailedPrecondition(format!(
            "register_id: the register has {} open trades; cancel them or wait",
            record.open_trades
        )));
    }
    record.open = false;
    record.closed_at = Some(now);
    tx.put(T::Registers, &key, &record)?;
    let open_count = registers_open(tx, shop)?;
    set_registers_open(tx, shop, open_count.saturating_sub(1))?;
    Ok(CommandOutcome::Register(record))
}

/// Appends an event for the trade's shop with the next sequence number.
fn emit(tx: &Tx, trade: &TradeRecord, kind: EventKind, now: UnixMs, fx: &mut Effects) -> TxResult<()> {
    let key = trade.shop.as_str().as_bytes();
    let Some(mut shop) = tx.get::<ShopRecord>(T::Shops, key)? else {
        return abort(StoreError::Corrupt(format!("trade {} names a missing shop", trade.id)));
    };
    let seq = shop.next_event_seq;
    let Some(next) = seq.checked_add(1) else {
        return abort(StoreError::Corrupt("event sequence overflow".into()));
    };
    shop.next_event_seq = next;
    tx.put(T::Shops, key, &shop)?;
    let event = EventRecord { seq, at: now, kind, trade: trade.clone() };
    let bytes = records::encode_event(&event).or_else(abort)?;
    tx.tree(T::Events)?.insert(keys::event(&trade.shop, seq), bytes)?;
    fx.heads.push((trade.shop.clone(), seq));
    Ok(())
}

/// Queues a delivery to a carrier in the outbox.
fn enqueue(tx: &Tx, carrier: &CarrierId, body: DeliveryBody, fx: &mut Effects) -> TxResult<u64> {
    let delivery_id = tx.next(b"delivery")?;
    let delivery = Delivery { delivery_id, carrier: carrier.clone(), body };
    tx.put(T::Outbox, &keys::outbox(carrier, delivery_id), &delivery)?;
    fx.deliveries.push(delivery);
    Ok(delivery_id)
}

fn create_trade(tx: &Tx, c: &CreateTrade, admissions: &Admissions, fx: &mut Effects) -> TxResult<CommandOutcome> {
    if let Some(key) = &c.idempotency_key {
        if let Some(prior) = tx.get::<IdempotencyRecord>(T::Idempotency, &keys::idempotency(&c.shop, key))? {
            let (prior_trade, request) = match prior {
                IdempotencyRecord::Trade { trade, request } => (trade, request),
                IdempotencyRecord::NetworkTrade { .. } => {
                    return abort(StoreError::AlreadyExists(
                        "subscriber_number: the idempotency key was used for a request naming the payer by network identity"
                            .into(),
                    ))
                }
                IdempotencyRecord::Refund { .. } | IdempotencyRecord::RefundV1 { .. } => {
                    return abort(StoreError::Corrupt("trade idempotency key holds a refund".into()))
                }
            };
            if let Some(field) = request.first_difference(&c.request) {
                return abort(StoreError::AlreadyExists(format!(
                    "{field}: the idempotency key was used for a request with a different {field}"
                )));
            }
            let trade = tx.get::<TradeRecord>(T::Trades, prior_trade.as_bytes())?;
            return Ok(CommandOutcome::Trade { trade, deliveries: Vec::new(), replayed: true });
        }
    }
    let trade = open_trade(tx, c, admissions, fx)?;
    if let Some(key) = &c.idempotency_key {
        let record = IdempotencyRecord::Trade { trade: trade.id, request: c.request.clone() };
        tx.put(T::Idempotency, &keys::idempotency(&c.shop, key), &record)?;
    }
    Ok(CommandOutcome::Trade { trade: Some(trade), deliveries: std::mem::take(&mut fx.deliveries), replayed: false })
}

/// The refusal of a network identity at a shop the carrier owning the
/// address's range has not accepted. The same for every address in the
/// range, held or not: a carrier's ranges are public (routing registries),
/// so it tells the shop nothing about any subscriber, and it tells the shop
/// what to do (ask the carrier to accept it).
pub const NETWORK_NOT_ACCEPTED: &str = "network_identity: the carrier for this address has not accepted this shop";
/// The refusal of every other network identity that names nobody who can
/// be offered the trade: outside every carrier's range, no lease at that
/// instant (or port), or leased to a subscriber without a handset. One
/// message, so the answer never tells who was where.
pub const NETWORK_MISS: &str =
    "network_identity: no carrier subscriber can be offered a trade for this address at that time";

/// A trade whose payer is a network identity: replays an idempotent retry
/// (compared as the shop sent it), refuses an unaccepted shop
/// ([`NETWORK_NOT_ACCEPTED`]) or a miss ([`NETWORK_MISS`]) with
/// FAILED_PRECONDITION, otherwise opens the trade for the resolved
/// subscriber exactly as for a number.
fn create_trade_by_network(
    tx: &Tx,
    n: &NetworkTrade,
    resolution: Option<&Resolution>,
    admissions: &Admissions,
    fx: &mut Effects,
) -> TxResult<CommandOutcome> {
    let idem_key = n.idempotency_key.as_ref().map(|k| keys::idempotency(&n.shop, k));
    if let Some(key) = &idem_key {
        if let Some(prior) = tx.get::<IdempotencyRecord>(T::Idempotency, key)? {
            let (prior_trade, request) = match prior {
                IdempotencyRecord::NetworkTrade { trade, request } => (trade, request),
                IdempotencyRecord::Trade { .. } => {
                    return abort(StoreError::AlreadyExists(
                        "network_identity: the idempotency key was used for a request naming the payer by number"
                            .into(),
                    ))
                }
                IdempotencyRecord::Refund { .. } | IdempotencyRecord::RefundV1 { .. } => {
                    return abort(StoreError::Corrupt("trade idempotency key holds a refund".into()))
                }
            };
            if let Some(field) = request.first_difference(&n.request) {
                return abort(StoreError::AlreadyExists(format!(
                    "{field}: the idempotency key was used for a request with a different {field}"
                )));
            }
            let trade = tx.get::<TradeRecord>(T::Trades, prior_trade.as_bytes())?;
            return Ok(CommandOutcome::Trade { trade, deliveries: Vec::new(), replayed: true });
        }
    }
    let miss = || abort(StoreError::FailedPrecondition(NETWORK_MISS.into()));
    let subscriber = match resolution {
        Some(Resolution::Found { carrier, subscriber }) => {
            // A subscriber who could never be offered the trade (not the
            // carrier's, no handset) is a miss like any other: a trade
            // FAILED with its reason would tell the shop that somebody
            // held the address.
            let key = subscriber.as_str().as_bytes();
            let enrolled = tx.get::<SubscriberRecord>(T::Subscribers, key)?.is_some_and(|s| &s.carrier == carrier);
            if !enrolled || tx.get::<HandsetRecord>(T::Handsets, key)?.is_none() {
                return miss();
            }
            subscriber.clone()
        }
        Some(Resolution::NotAccepted) => return abort(StoreError::FailedPrecondition(NETWORK_NOT_ACCEPTED.into())),
        Some(Resolution::Miss) => return miss(),
        None => return abort(StoreError::Corrupt("network trade without a resolution".into())),
    };
    let c = CreateTrade {
        shop: n.shop.clone(),
        trade_id: n.trade_id,
        request: TradeRequest {
            register: n.request.register,
            payer: subscriber,
            amount: n.request.amount,
            currency: n.request.currency,
            description: n.request.description.clone(),
            ttl_ms: n.request.ttl_ms,
        },
        idempotency_key: n.idempotency_key.clone(),
        binding_code: n.binding_code.clone(),
        max_open_per_register: n.max_open_per_register,
        offer_gate: n.offer_gate.clone(),
        now: n.now,
    };
    let trade = open_trade(tx, &c, admissions, fx)?;
    if let Some(key) = &idem_key {
        tx.put(T::Idempotency, key, &IdempotencyRecord::NetworkTrade { trade: trade.id, request: n.request.clone() })?;
    }
    Ok(CommandOutcome::Trade { trade: Some(trade), deliveries: std::mem::take(&mut fx.deliveries), replayed: false })
}

/// Checks the register and payer and writes a new trade: PENDING with its
/// offer queued (if the offer gate admits it), or FAILED at once when
/// nothing could ever answer it.
fn open_trade(tx: &Tx, c: &CreateTrade, admissions: &Admissions, fx: &mut Effects) -> TxResult<TradeRecord> {
    let Some(shop) = tx.get::<ShopRecord>(T::Shops, c.shop.as_str().as_bytes())? else {
        return abort(StoreError::NotFound("shop"));
    };
    let register_key = keys::register(&c.shop, &c.request.register);
    let Some(mut register) = tx.get::<RegisterRecord>(T::Registers, &register_key)? else {
        return abort(StoreError::NotFound("register"));
    };
    if !register.open {
        return abort(StoreError::FailedPrecondition("register_id: the register is closed".into()));
    }
    if register.open_trades >= c.max_open_per_register {
        return abort(StoreError::LimitExceeded(format!(
            "open trades per register: at most {}",
            c.max_open_per_register
        )));
    }
    if tx.get::<TradeRecord>(T::Trades, c.trade_id.as_bytes())?.is_some() {
        return abort(StoreError::Corrupt("trade id collision".into()));
    }
    let Some(expires_at) = c.now.checked_add_ms(c.request.ttl_ms) else {
        return abort(StoreError::FailedPrecondition("ttl_seconds: deadline overflows".into()));
    };
    let subscriber = tx.get::<SubscriberRecord>(T::Subscribers, c.request.payer.as_str().as_bytes())?;
    let handset = tx.get::<HandsetRecord>(T::Handsets, c.request.payer.as_str().as_bytes())?;
    // The offer below shows exactly these texts; the trade keeps their
    // digest so the answer is checked against what was shown, even if the
    // shop's name changes before the buyer answers.
    let screen = crate::domain::ScreenText {
        shop_name: &shop.display_name,
        register_label: &register.label,
        description: &c.request.description,
    };
    let mut trade = TradeRecord {
        id: c.trade_id,
        shop: c.shop.clone(),
        carrier: subscriber.as_ref().map(|s| s.carrier.clone()),
        request: c.request.clone(),
        state: TradeState::Pending,
        failure: None,
        binding_code: c.binding_code.clone(),
        created_at: c.now,
        expires_at,
        finished_at: None,
        decision: None,
        receipt: None,
        idempotency_key: c.idempotency_key.clone(),
        offer_delivery: None,
        refunded: Amount::ZERO,
        terms: SignedTerms::V2 { screen_digest: screen.digest() },
    };
    if crate::domain::BindingCode::parse(&c.binding_code).is_none() {
        return abort(StoreError::Corrupt("binding code is not six digits".into()));
    }
    let refusal = match (&subscriber, &handset) {
        (None, _) => Some(FailureReason::PayerUnknown),
        // Carrier billing puts the charge on the carrier's books: only a
        // shop the carrier accepted may charge its bill, however it names
        // the payer.
        (Some(s), _)
            if matches!(s.funding, Funding::CarrierBill { .. }) && !network::accepted(tx, &s.carrier, &c.shop)? =>
        {
            Some(FailureReason::CarrierRefusedShop)
        }
        (Some(_), None) => Some(FailureReason::NoHandset),
        (Some(_), Some(_)) => None,
    };
    match (refusal, &subscriber) {
        (Some(reason), _) => {
            // Nothing can ever answer this trade: it fails at once, with no
            // offer, deadline or open-trade slot.
            trade.state = TradeState::Failed;
            trade.failure = Some(reason);
            trade.finished_at = Some(c.now);
        }
        (None, Some(sub)) => {
            // Every other check has passed: this trade sends an offer, so
            // here, and only here, it spends the buyer's allowance.
            if let Some(gate) = &c.offer_gate {
                if let Err(refusal) = admissions.admit(c.trade_id, gate, &c.request.payer) {
                    return abort(StoreError::RateLimited(refusal));
                }
            }
            register.open_trades = register.open_trades.saturating_add(1);
            tx.put(T::Registers, &register_key, &register)?;
            tx.put(T::Deadlines, &keys::deadline(expires_at, &trade.id), &())?;
            let offer = OfferBody {
                trade: trade.id,
                payer: c.request.payer.clone(),
                shop: c.shop.clone(),
                shop_name: shop.display_name.clone(),
                register: register.id,
                register_label: register.label.clone(),
                amount: c.request.amount,
                currency: c.request.currency,
                description: c.request.description.clone(),
                expires_at,
                binding_code: c.binding_code.clone(),
            };
            trade.offer_delivery = Some(enqueue(tx, &sub.carrier, DeliveryBody::Offer(offer), fx)?);
        }
        (None, None) => return abort(StoreError::Corrupt("payer check inconsistent".into())),
    }
    tx.put(T::Trades, trade.id.as_bytes(), &trade)?;
    emit(tx, &trade, EventKind::StateChanged, c.now, fx)?;
    Ok(trade)
}

/// Moves an open trade to a final state and does everything that goes with
/// it: deadline removed, register slot freed, unacknowledged offer dropped,
/// optional withdrawal queued, trade stored, event emitted.
fn finish(
    tx: &Tx,
    trade: &mut TradeRecord,
    event: TradeEvent,
    withdraw: bool,
    now: UnixMs,
    fx: &mut Effects,
) -> TxResult<()> {
    let next = match transition(trade.state, event) {
        Ok(Transition::To(s)) if s.is_final() => s,
        Ok(_) => return abort(StoreError::Corrupt(format!("{event:?} is not a final transition"))),
        Err(e) => return abort(StoreError::FailedPrecondition(format!("trade_id: {e}"))),
    };
    trade.state = next;
    trade.finished_at = Some(now);
    if let TradeEvent::Fail(reason) = event {
        trade.failure = Some(reason);
    }
    tx.del(T::Deadlines, &keys::deadline(trade.expires_at, &trade.id))?;
    let register_key = keys::register(&trade.shop, &trade.request.register);
    if let Some(mut register) = tx.get::<RegisterRecord>(T::Registers, &register_key)? {
        let Some(n) = register.open_trades.checked_sub(1) else {
            return abort(StoreError::Corrupt("register open-trade count below zero".into()));
        };
        register.open_trades = n;
        tx.put(T::Registers, &register_key, &register)?;
    }
    if let Some(carrier) = trade.carrier.clone() {
        if let Some(delivery_id) = trade.offer_delivery.take() {
            tx.del(T::Outbox, &keys::outbox(&carrier, delivery_id))?;
        }
        if withdraw {
            let body = DeliveryBody::Withdraw { trade: trade.id, payer: trade.request.payer.clone(), state: next };
            enqueue(tx, &carrier, body, fx)?;
        }
    }
    tx.put(T::Trades, trade.id.as_bytes(), trade)?;
    emit(tx, trade, EventKind::StateChanged, now, fx)
}

fn ack(tx: &Tx, carrier: &CarrierId, delivery_id: u64, now: UnixMs, fx: &mut Effects) -> TxResult<CommandOutcome> {
    let key = keys::outbox(carrier, delivery_id);
    let Some(delivery) = tx.get::<Delivery>(T::Outbox, &key)? else {
        // Already acknowledged (or never ours): acknowledgements repeat.
        return Ok(CommandOutcome::Trade { trade: None, deliveries: Vec::new(), replayed: true });
    };
    tx.del(T::Outbox, &key)?;
    let Some((offer, _)) = delivery.body.offer() else {
        return Ok(CommandOutcome::Trade { trade: None, deliveries: Vec::new(), replayed: false });
    };
    let Some(mut trade) = tx.get::<TradeRecord>(T::Trades, offer.trade.as_bytes())? else {
        return abort(StoreError::Corrupt("outbox offer for a missing trade".into()));
    };
    trade.offer_delivery = None;
    match transition(trade.state, TradeEvent::Delivered) {
        Ok(Transition::To(next)) => {
            trade.state = next;
            tx.put(T::Trades, trade.id.as_bytes(), &trade)?;
            emit(tx, &trade, EventKind::StateChanged, now, fx)?;
        }
        Ok(Transition::Unchanged) | Err(_) => tx.put(T::Trades, trade.id.as_bytes(), &trade)?,
    }
    Ok(CommandOutcome::Trade { trade: Some(trade), deliveries: Vec::new(), replayed: false })
}

#[allow(clippy::too_many_arguments)]
fn answer(
    tx: &Tx,
    carrier: &CarrierId,
    trade_id: &TradeId,
    decision: Decision,
    signature: &[u8],
    checked: Option<&SignatureCheck>,
    signer: &ReceiptSigner,
    now: UnixMs,
    fx: &mut Effects,
) -> TxResult<CommandOutcome> {
    let rejected = |trade: Option<TradeRecord>, why: RejectedAnswer, fx: &mut Effects| {
        Ok(CommandOutcome::Answer(AnswerOutcome {
            trade,
            rejected: Some(why),
            deliveries: std::mem::take(&mut fx.deliveries),
        }))
    };
    let mut trade = match tx.get::<TradeRecord>(T::Trades, trade_id.as_bytes())? {
        Some(t) if t.carrier.as_ref() == Some(carrier) => t,
        _ => return rejected(None, RejectedAnswer::UnknownTrade, fx),
    };
    if trade.state.is_final() {
        let state = trade.state;
        return rejected(Some(trade), RejectedAnswer::AlreadyFinal(state), fx);
    }
    if now >= trade.expires_at {
        finish(tx, &mut trade, TradeEvent::Expire, true, now, fx)?;
        return rejected(Some(trade), RejectedAnswer::Expired, fx);
    }
    let handset = tx.get::<HandsetRecord>(T::Handsets, trade.request.payer.as_str().as_bytes())?;
    let signed = signed_bytes(&trade, decision).or_else(abort)?;
    let event = match &handset {
        None => TradeEvent::Fail(FailureReason::NoHandset),
        Some(h) if !signature_valid(checked, &h.public_key, &signed, signature) => {
            TradeEvent::Fail(FailureReason::BadSignature)
        }
        Some(_) if decision == Decision::Decline => TradeEvent::Decline,
        Some(h) => {
            let subscriber = tx.get::<SubscriberRecord>(T::Subscribers, trade.request.payer.as_str().as_bytes())?;
            let settled = match subscriber.map(|s| s.funding) {
                None => Err(FailureReason::PayerUnknown),
                Some(Funding::Wallet) => settle_from_wallet(tx, &trade, now)?,
                Some(Funding::CarrierBill { currency, monthly_cap }) => {
                    settle_to_bill(tx, &trade, currency, monthly_cap, now)?
                }
            };
            match settled {
                Err(reason) => TradeEvent::Fail(reason),
                Ok(()) => {
                    // Verified above, so it is 64 bytes.
                    let Ok(sig) = <[u8; 64]>::try_from(signature) else {
                        return abort(StoreError::Corrupt("verified signature is not 64 bytes".into()));
                    };
                    let countersignature = checked
                        .and_then(|c| c.countersignature_for(&h.public_key, &signed, signature, signer.id(), now))
                        .unwrap_or_else(|| countersign(signer, trade.id, &h.public_key, &signed, &sig, now));
                    trade.receipt = Some(Receipt::Countersigned {
                        signature: Sig64(sig),
                        handset_key: h.public_key,
                        key_id: signer.id(),
                        countersignature: Sig64(countersignature),
                    });
                    TradeEvent::Settle
                }
            }
        }
    };
    if !matches!(event, TradeEvent::Fail(FailureReason::BadSignature)) {
        trade.decision = Some(decision);
    }
    finish(tx, &mut trade, event, false, now, fx)?;
    Ok(CommandOutcome::Answer(AnswerOutcome {
        trade: Some(trade),
        rejected: None,
        deliveries: std::mem::take(&mut fx.deliveries),
    }))
}

/// A handset signature verified off the writer thread: the key, the
/// signed bytes and the signature it covered, and the verdict; for a valid
/// approval also the receipt's countersignature made in advance (at the
/// answer's time, with the signer's key). Only [`super::Store::check_answer`]
/// makes one, so a verdict always comes from a real verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureCheck {
    public_key: [u8; 32],
    signed: Vec<u8>,
    signature: Vec<u8>,
    valid: bool,
    countersigned: Option<(ReceiptKeyId, UnixMs, Sig64)>,
}

impl SignatureCheck {
    pub(super) fn new(
        trade: TradeId,
        public_key: [u8; 32],
        signed: Vec<u8>,
        signature: &[u8],
        decision: Decision,
        signer: &ReceiptSigner,
        now: UnixMs,
    ) -> SignatureCheck {
        let valid = crate::domain::approval::verify_bytes(&public_key, &signed, signature);
        let countersigned = match <[u8; 64]>::try_from(signature) {
            Ok(sig) if valid && decision == Decision::Approve => {
                let counter = countersign(signer, trade, &public_key, &signed, &sig, now);
                Some((signer.id(), now, Sig64(counter)))
            }
            _ => None,
        };
        SignatureCheck { public_key, signed, signature: signature.to_vec(), valid, countersigned }
    }

    fn covers(&self, public_key: &[u8; 32], signed: &[u8], signature: &[u8]) -> bool {
        &self.public_key == public_key && self.signed == signed && self.signature == signature
    }

    /// The countersignature made in advance, if it was made over exactly
    /// the statement the writer would sign now.
    fn countersignature_for(
        &self,
        public_key: &[u8; 32],
        signed: &[u8],
        signature: &[u8],
        key_id: ReceiptKeyId,
        now: UnixMs,
    ) -> Option<[u8; 64]> {
        match self.countersigned {
            Some((id, at, sig)) if self.covers(public_key, signed, signature) && id == key_id && at == now => {
                Some(sig.0)
            }
            _ => None,
        }
    }
}

/// The operator's countersignature of a settlement at `now`: the statement
/// binds the payload, the handset's signature, the per-trade commitment to
/// its key and the settlement time.
fn countersign(
    signer: &ReceiptSigner,
    trade: TradeId,
    handset_key: &[u8; 32],
    signed: &[u8],
    signature: &[u8; 64],
    now: UnixMs,
) -> [u8; 64] {
    let commitment = handset_commitment(trade, handset_key);
    signer.sign(&Statement {
        key_id: signer.id(),
        payload: signed,
        handset_signature: signature,
        commitment: &commitment,
        settled_at: now,
    })
}

/// The bytes a handset signs to answer `trade` with `decision`.
pub(super) fn signed_bytes(trade: &TradeRecord, decision: Decision) -> Result<Vec<u8>, StoreError> {
    Ok(trade.approval_payload(decision)?.to_bytes())
}

/// Whether `signature` over `signed` verifies under `public_key`, taking a
/// prior check's verdict when it covered exactly these bytes (the handset
/// may have been re-enrolled, or the check may have read a different
/// trade, in between: then it verifies here).
fn signature_valid(checked: Option<&SignatureCheck>, public_key: &[u8; 32], signed: &[u8], signature: &[u8]) -> bool {
    match checked {
        Some(c) if c.covers(public_key, signed, signature) => c.valid,
        _ => crate::domain::approval::verify_bytes(public_key, signed, signature),
    }
}

/// Settles from the payer's prepaid wallet (never below zero).
fn settle_from_wallet(tx: &Tx, trade: &TradeRecord, now: UnixMs) -> TxResult<Result<(), FailureReason>> {
    let wallet = AccountName::Wallet(trade.request.payer.clone(), trade.request.currency);
    let available =
        tx.get::<AccountRecord>(T::Accounts, &keys::account(&wallet))?.map_or(Amount::ZERO, |a| a.balance.available());
    if available < trade.request.amount {
        return Ok(Err(FailureReason::InsufficientFunds));
    }
    let shop = AccountName::ShopPayable(trade.shop.clone(), trade.request.currency);
    let set = PostingSet::transfer(wallet, shop, trade.request.amount)
        .or_else(|e| abort(StoreError::Corrupt(format!("settlement postings: {e}"))))?;
    let (set_id, _) = post(tx, &set, Some(trade.id), PostingKind::Settlement, now)?;
    let entry = PayoutEntry::Settlement {
        trade: trade.id,
        carrier: None,
        currency: trade.request.currency,
        gross: trade.request.amount,
        fee: Amount::ZERO,
    };
    network::record_payout(tx, &trade.shop, now, set_id, &entry)?;
    Ok(Ok(()))
}

/// Settles onto the payer's carrier bill: the carrier must (still) accept
/// the shop and the charge must fit the month's cap. One posting set:
/// debit the bill the amount, credit the shop the amount less the fee,
/// credit the carrier's fee account the fee (legs of zero are left out).
fn settle_to_bill(
    tx: &Tx,
    trade: &TradeRecord,
    bill_currency: Currency,
    cap: Amount,
    now: UnixMs,
) -> TxResult<Result<(), FailureReason>> {
    let Some(carrier) = trade.carrier.as_ref() else {
        return abort(StoreError::Corrupt("a carrier-billed trade without a carrier".into()));
    };
    if !network::accepted(tx, carrier, &trade.shop)? {
        return Ok(Err(FailureReason::CarrierRefusedShop));
    }
    let (amount, currency) = (trade.request.amount, trade.request.currency);
    let payer = &trade.request.payer;
    let Some(plan) = network::plan_charge(tx, carrier, payer, bill_currency, cap, amount, currency, now)? else {
        return Ok(Err(FailureReason::SpendingCap));
    };
    let Ok(to_shop) = amount.checked_sub(plan.fee) else {
        return abort(StoreError::Corrupt("fee above the amount".into()));
    };
    let mut legs = vec![Leg { account: plan.bill.clone(), side: Side::Debit, amount }];
    if !to_shop.is_zero() {
        legs.push(Leg {
            account: AccountName::ShopPayable(trade.shop.clone(), currency),
            side: Side::Credit,
            amount: to_shop,
        });
    }
    if !plan.fee.is_zero() {
        legs.push(Leg {
            account: AccountName::CarrierFees(carrier.clone(), currency),
            side: Side::Credit,
            amount: plan.fee,
        });
    }
    let set = PostingSet::new(legs).or_else(|e| abort(StoreError::Corrupt(format!("settlement postings: {e}"))))?;
    let (set_id, _) = post(tx, &set, Some(trade.id), PostingKind::Settlement, now)?;
    let Some(shop) = tx.get::<ShopRecord>(T::Shops, trade.shop.as_str().as_bytes())? else {
        return abort(StoreError::Corrupt("settled trade of a missing shop".into()));
    };
    network::record_charge(
        tx,
        &plan,
        carrier,
        payer,
        trade.id,
        set_id,
        &trade.shop,
        &shop.display_name,
        amount,
        currency,
        now,
    )?;
    let entry = PayoutEntry::Settlement {
        trade: trade.id,
        carrier: Some(carrier.clone()),
        currency,
        gross: amount,
        fee: plan.fee,
    };
    network::record_payout(tx, &trade.shop, now, set_id, &entry)?;
    Ok(Ok(()))
}

fn cancel(tx: &Tx, shop: &ShopId, trade_id: &TradeId, now: UnixMs, fx: &mut Effects) -> TxResult<CommandOutcome> {
    let mut trade = match tx.get::<TradeRecord>(T::Trades, trade_id.as_bytes())? {
        Some(t) if &t.shop == shop => t,
        // Another shop's trade is indistinguishable from no trade.
        _ => return abort(StoreError::NotFound("trade")),
    };
    if !trade.state.is_final() && now >= trade.expires_at {
        // The deadline passed before the sweeper got to it: the trade is
        // EXPIRED, not cancelled. Commit the expiry (an abort would roll it
        // back) and let the caller answer that it was too late.
        finish(tx, &mut trade, TradeEvent::Expire, true, now, fx)?;
        return Ok(CommandOutcome::TooLate { trade, deliveries: std::mem::take(&mut fx.deliveries) });
    }
    finish(tx, &mut trade, TradeEvent::Cancel, true, now, fx)?;
    Ok(CommandOutcome::Trade { trade: Some(trade), deliveries: std::mem::take(&mut fx.deliveries), replayed: false })
}

fn expire(tx: &Tx, trade_id: &TradeId, now: UnixMs, fx: &mut Effects) -> TxResult<CommandOutcome> {
    let Some(mut trade) = tx.get::<TradeRecord>(T::Trades, trade_id.as_bytes())? else {
        return Ok(CommandOutcome::Trade { trade: None, deliveries: Vec::new(), replayed: false });
    };
    if trade.state.is_final() {
        // A stale deadline entry (should not exist): remove it.
        tx.del(T::Deadlines, &keys::deadline(trade.expires_at, &trade.id))?;
        return Ok(CommandOutcome::Trade { trade: Some(trade), deliveries: Vec::new(), replayed: true });
    }
    if now < trade.expires_at {
        return Ok(CommandOutcome::Trade { trade: Some(trade), deliveries: Vec::new(), replayed: true });
    }
    finish(tx, &mut trade, TradeEvent::Expire, true, now, fx)?;
    Ok(CommandOutcome::Trade { trade: Some(trade), deliveries: std::mem::take(&mut fx.deliveries), replayed: false })
}

fn refund(
    tx: &Tx,
    shop: &ShopId,
    trade_id: &TradeId,
    amount: Amount,
    idempotency_key: Option<&str>,
    now: UnixMs,
    fx: &mut Effects,
) -> TxResult<CommandOutcome> {
    let idem_key = idempotency_key.map(|k| keys::refund_idempotency(shop, k));
    if let Some(key) = &idem_key {
        if let Some(prior) = tx.get::<IdempotencyRecord>(T::Idempotency, key)? {
            let (prior_trade, prior_amount, refund_id) = match prior {
                IdempotencyRecord::Refund { trade, amount, set_id } => (trade, amount, set_id),
                IdempotencyRecord::RefundV1 { trade, amount, first_posting } => {
                    // Written when refund ids were first posting ids.
                    match tx.get::<PostingRecord>(T::Postings, &first_posting.to_be_bytes())? {
                        Some(p) => (trade, amount, p.set_id),
                        None => return abort(StoreError::Corrupt("refund key names a missing posting".into())),
                    }
                }
                IdempotencyRecord::Trade { .. } | IdempotencyRecord::NetworkTrade { .. } => {
                    return abort(StoreError::Corrupt("refund idempotency key holds a trade".into()))
                }
            };
            let field = if prior_trade != *trade_id {
                Some("trade_id")
            } else if prior_amount != amount {
                Some("amount_minor")
            } else {
                None
            };
            if let Some(field) = field {
                return abort(StoreError::AlreadyExists(format!(
                    "{field}: the idempotency key was used for a refund with a different {field}"
                )));
            }
            let Some(trade) = tx.get::<TradeRecord>(T::Trades, trade_id.as_bytes())? else {
                return abort(StoreError::Corrupt("refunded trade missing".into()));
            };
            return Ok(CommandOutcome::Refund { trade, refund_id, amount, replayed: true });
        }
    }
    let mut trade = match tx.get::<TradeRecord>(T::Trades, trade_id.as_bytes())? {
        Some(t) if &t.shop == shop => t,
        _ => return abort(StoreError::NotFound("trade")),
    };
    if trade.state != TradeState::Settled {
        return abort(StoreError::FailedPrecondition(format!(
            "trade_id: only a SETTLED trade can be refunded; this one is {}",
            trade.state.name()
        )));
    }
    let Ok(refunded) = trade.refunded.checked_add(amount) else {
        return abort(StoreError::FailedPrecondition("amount_minor: refunds would overflow".into()));
    };
    if refunded > trade.request.amount {
        let left = trade.request.amount.checked_sub(trade.refunded).unwrap_or(Amount::ZERO);
        return abort(StoreError::FailedPrecondition(format!(
            "amount_minor: at most {} of this trade is left to refund",
            left.minor()
        )));
    }
    let payable = AccountName::ShopPayable(trade.shop.clone(), trade.request.currency);
    let available =
        tx.get::<AccountRecord>(T::Accounts, &keys::account(&payable))?.map_or(Amount::ZERO, |a| a.balance.available());
    if available < amount {
        return abort(StoreError::FailedPrecondition(
            "amount_minor: the shop's balance does not cover the refund".into(),
        ));
    }
    // A carrier-billed charge is refunded to the bill (freeing the cap of
    // the charge's month); the carrier keeps its fee, as card processors
    // do, so the shop returns the full refund from its own balance.
    let bill = network::bill_line_of(tx, &trade.id)?;
    let (payer_account, carrier) = match (&bill, &trade.carrier) {
        (Some(_), Some(carrier)) => (
            AccountName::CarrierBill(carrier.clone(), trade.request.payer.clone(), trade.request.currency),
            Some(carrier.clone()),
        ),
        (Some(_), None) => return abort(StoreError::Corrupt("a billed trade without a carrier".into())),
        (None, _) => (AccountName::Wallet(trade.request.payer.clone(), trade.request.currency), None),
    };
    let set = PostingSet::transfer(payable, payer_account, amount)
        .or_else(|e| abort(StoreError::FailedPrecondition(format!("amount_minor: {e}"))))?;
    // The refund is its posting set: its id is the set id.
    let (set_id, _) = post(tx, &set, Some(trade.id), PostingKind::Refund, now)?;
    let refund_id = set_id;
    if let (Some((line_key, line)), Some(carrier)) = (bill, &carrier) {
        network::record_bill_refund(tx, carrier, &trade.request.payer, &line_key, line, amount)?;
    }
    let entry = PayoutEntry::Refund { trade: trade.id, carrier, currency: trade.request.currency, amount };
    network::record_payout(tx, &trade.shop, now, set_id, &entry)?;
    trade.refunded = refunded;
    tx.put(T::Trades, trade.id.as_bytes(), &trade)?;
    if let Some(key) = &idem_key {
        tx.put(T::Idempotency, key, &IdempotencyRecord::Refund { trade: trade.id, amount, set_id })?;
    }
    emit(tx, &trade, EventKind::Refunded { amount, refund_id }, now, fx)?;
    Ok(CommandOutcome::Refund { trade, refund_id, amount, replayed: false })
}

fn read_accounts(shared: &Shared, prefix: &str, limit: usize) -> Result<CommandOutcome, StoreError> {
    let mut out = Vec::new();
    for item in shared.trees[T::Accounts as usize].scan_prefix(prefix.as_bytes()).take(limit) {
        let (_, v) = item?;
        out.push(records::decode(&v)?);
    }
    Ok(CommandOutcome::Accounts(out))
}
