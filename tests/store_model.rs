//! Model test: random sequences of operations run against a real store
//! (every backend of `common::backends`, each in a temporary folder),
//! through the storage boundary, and against a plain in-memory model of the
//! rules; after every operation the outcomes and all balances must agree,
//! and at the end the ledger must verify. Amounts include zero, maximal
//! and overflowing values; payers include unknown ones; keys repeat;
//! answers come late, twice, badly signed.

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use common::backends::{backends, BackendFactory, Fsync};
use ed25519_dalek::{Signer, SigningKey};
use proptest::prelude::*;
use syncpay::domain::approval::ApprovalPayload;
use syncpay::domain::receipt::ReceiptSigner;
use syncpay::domain::{
    Amount, BindingCode, CarrierId, Currency, Decision, FailureReason, PayloadVersion, RegisterId, ScreenText, ShopId,
    SubscriberNumber, TradeId, TradeState, UnixMs,
};
use syncpay::store::fixture::Fixture;
use syncpay::store::{
    AnswerRefusal, CancelOutcome, CancelRefusal, CreateTradeRefusal, ExpireOutcome, Funding, HandsetAnswer, NewRefund,
    NewTrade, PayerRef, RefundRefusal, RejectedAnswer, Store, StoreError, TopUp, TopUpRefusal, TradeRequest,
};

const T0: u64 = 1_900_000_000_000;
const TTL_MS: u64 = 60_000;
/// Subscribers 0 and 1 have handsets, 2 has none, 3 is not enrolled.
const SUBSCRIBERS: usize = 4;

#[derive(Debug, Clone)]
enum Op {
    TopUp {
        sub: usize,
        amount: u64,
    },
    Create {
        sub: usize,
        amount: u64,
        key: Option<u8>,
    },
    Answer {
        trade: usize,
        approve: bool,
        valid: bool,
        late: bool,
    },
    Cancel {
        trade: usize,
    },
    Expire {
        trade: usize,
        due: bool,
    },
    /// `rest`: refund exactly what is left of the trade.
    Refund {
        trade: usize,
        amount: u64,
        rest: bool,
        key: Option<u8>,
    },
}

/// Amounts from a small set so that exact balances (a wallet holding
/// exactly the price, a refund of exactly what is left) happen often, plus
/// zero, maximal and overflowing values.
fn small_amount() -> impl Strategy<Value = u64> {
    prop_oneof![Just(1u64), Just(100), Just(200), Just(300), Just(500)]
}

fn amount() -> impl Strategy<Value = u64> {
    prop_oneof![
        6 => small_amount(),
        1 => Just(0u64),
        1 => Just(u64::MAX),
        1 => Just(u64::MAX / 2 + 1),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0..SUBSCRIBERS, amount()).prop_map(|(sub, amount)| Op::TopUp { sub, amount }),
        4 => (0..SUBSCRIBERS, small_amount(), proptest::option::of(0u8..3))
            .prop_map(|(sub, amount, key)| Op::Create { sub, amount, key }),
        4 => (0usize..12, any::<bool>(), prop::bool::weighted(0.85), prop::bool::weighted(0.15))
            .prop_map(|(trade, approve, valid, late)| Op::Answer { trade, approve, valid, late }),
        1 => (0usize..12).prop_map(|trade| Op::Cancel { trade }),
        1 => (0usize..12, any::<bool>()).prop_map(|(trade, due)| Op::Expire { trade, due }),
        2 => (0usize..12, amount(), prop::bool::weighted(0.3), proptest::option::of(0u8..3))
            .prop_map(|(trade, amount, rest, key)| Op::Refund { trade, amount, rest, key }),
    ]
}

/// What an operation did, in terms both sides can produce.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Trade { index: usize, state: TradeState, failure: Option<FailureReason>, replayed: bool },
    Rejected(&'static str),
    Refunded { refunded: u64, replayed: bool },
    ToppedUp,
    Nothing,
    Error(&'static str),
}

/// The kind of answer a refusal becomes at the API (its gRPC code).
trait Kind {
    fn kind(&self) -> &'static str;
}

fn error_kind<R: Kind>(e: &StoreError<R>) -> &'static str {
    match e {
        StoreError::Refused(r) => r.kind(),
        StoreError::Failed(_) => "internal",
    }
}

impl Kind for TopUpRefusal {
    fn kind(&self) -> &'static str {
        match self {
            TopUpRefusal::UnknownSubscriber => "not_found",
            TopUpRefusal::CarrierBilled | TopUpRefusal::Postings(_) => "failed_precondition",
        }
    }
}

impl Kind for CreateTradeRefusal {
    fn kind(&self) -> &'static str {
        match self {
            CreateTradeRefusal::Differs(_) => "already_exists",
            CreateTradeRefusal::UnknownShop | CreateTradeRefusal::UnknownRegister => "not_found",
            CreateTradeRefusal::RegisterFull { .. } | CreateTradeRefusal::OfferLimited(_) => "limit",
            CreateTradeRefusal::ObservedInFuture | CreateTradeRefusal::ObservedBeforeRetention { .. } => "invalid",
            CreateTradeRefusal::RegisterClosed
            | CreateTradeRefusal::DeadlineOverflows
            | CreateTradeRefusal::NotAccepted
            | CreateTradeRefusal::NoOneToOffer
            | CreateTradeRefusal::ShopSuspended => "failed_precondition",
            CreateTradeRefusal::CarrierUnavailable => "unavailable",
        }
    }
}

impl Kind for AnswerRefusal {
    fn kind(&self) -> &'static str {
        match self {
            AnswerRefusal::Postings(_) => "failed_precondition",
        }
    }
}

impl Kind for CancelRefusal {
    fn kind(&self) -> &'static str {
        match self {
            CancelRefusal::UnknownTrade => "not_found",
            CancelRefusal::AlreadyFinal(_) => "failed_precondition",
        }
    }
}

impl Kind for RefundRefusal {
    fn kind(&self) -> &'static str {
        match self {
            RefundRefusal::Differs(_) => "already_exists",
            RefundRefusal::UnknownTrade => "not_found",
            RefundRefusal::NotSettled(_)
            | RefundRefusal::Overflows
            | RefundRefusal::AboveRemaining { .. }
            | RefundRefusal::ShopBalanceShort
            | RefundRefusal::Postings(_) => "failed_precondition",
        }
    }
}

#[derive(Debug, Clone)]
struct ModelTrade {
    id: TradeId,
    sub: usize,
    amount: u64,
    state: TradeState,
    failure: Option<FailureReason>,
    refunded: u64,
    expires_at: u64,
}

/// Debit and credit totals per account, as the store keeps them.
#[derive(Default, Debug)]
struct Model {
    totals: HashMap<String, (u128, u128)>,
    trades: Vec<ModelTrade>,
    trade_keys: HashMap<u8, (usize, usize, u64)>,
    refund_keys: HashMap<u8, (usize, u64)>,
}

impl Model {
    fn available(&self, account: &str) -> u128 {
        self.totals.get(account).map_or(0, |(d, c)| c.saturating_sub(*d))
    }

    /// Applies a transfer if neither total overflows u64.
    fn transfer(&mut self, from: &str, to: &str, amount: u64) -> bool {
        let a = u128::from(amount);
        let (fd, _) = self.totals.get(from).copied().unwrap_or_default();
        let (_, tc) = self.totals.get(to).copied().unwrap_or_default();
        if amount == 0 || fd + a > u128::from(u64::MAX) || tc + a > u128::from(u64::MAX) {
            return false;
        }
        self.totals.entry(from.to_owned()).or_default().0 += a;
        self.totals.entry(to.to_owned()).or_default().1 += a;
        true
    }
}

struct Real {
    _dir: tempfile::TempDir,
    store: Store,
    shop: ShopId,
    carrier: CarrierId,
    register: RegisterId,
    keys: Vec<SigningKey>,
    signer: Arc<ReceiptSigner>,
}

fn number(sub: usize) -> SubscriberNumber {
    SubscriberNumber::parse(&format!("+8180600000{sub:02}")).expect("number")
}

fn jpy() -> Currency {
    Currency::parse("JPY").expect("jpy")
}

fn wallet(sub: usize) -> String {
    format!("wallet:{}:JPY", number(sub).as_str())
}

async fn real(backend: &BackendFactory) -> Real {
    let dir = tempfile::tempdir().expect("tempdir");
    // The model test checks logic, not durability: skip the fsync.
    let store = (backend.open)(dir.path(), Fsync::Off);
    let fixture = Fixture::new(store.clone(), UnixMs(T0));
    let shop = fixture.shop("shop", "S").await;
    let carrier = fixture.carrier("carrier", "C", &[], 0).await;
    let register = fixture.register(&shop, "r").await;
    let mut keys = Vec::new();
    for sub in 0..3 {
        fixture.subscriber(&carrier, &number(sub), Funding::Wallet).await;
        let key = SigningKey::from_bytes(&[u8::try_from(sub).expect("small") + 1; 32]);
        if sub < 2 {
            fixture.handset(&carrier, &number(sub), &key).await;
        }
        keys.push(key);
    }
    Real {
        _dir: dir,
        store,
        shop,
        carrier,
        register,
        keys,
        signer: Arc::new(ReceiptSigner::from_seed([9; 32], UnixMs(T0))),
    }
}

fn request(r: &Real, sub: usize, amount: u64) -> TradeRequest<PayerRef> {
    TradeRequest {
        register: r.register,
        payer: PayerRef::Number(number(sub)),
        amount: Amount::new(amount),
        currency: jpy(),
        description: String::new(),
        ttl_ms: TTL_MS,
    }
}

async fn step(r: &Real, m: &mut Model, op: &Op, now: u64) -> (Seen, Seen) {
    // Trade-targeting operations pick an existing trade (if any).
    let count = m.trades.len();
    let op = &match op.clone() {
        _ if count == 0 => op.clone(),
        Op::Answer { trade, approve, valid, late } => Op::Answer { trade: trade % count, approve, valid, late },
        Op::Cancel { trade } => Op::Cancel { trade: trade % count },
        Op::Expire { trade, due } => Op::Expire { trade: trade % count, due },
        Op::Refund { trade, amount, rest, key } => {
            let trade = trade % count;
            let t = &m.trades[trade];
            let amount = if rest { t.amount - t.refunded } else { amount };
            Op::Refund { trade, amount, rest, key }
        }
        other => other,
    };
    let t = |i: usize| m.trades.get(i).cloned();
    match op {
        Op::TopUp { sub, amount } => {
            let got = r
                .store
                .top_up(TopUp { number: number(*sub), amount: Amount::new(*amount), currency: jpy(), now: UnixMs(now) })
                .await;
            let got = match got {
                Ok(_) => Seen::ToppedUp,
                Err(e) => Seen::Error(error_kind(&e)),
            };
            let want = if *sub >= 3 {
                Seen::Error("not_found")
            } else if m.transfer("system:funding:JPY", &wallet(*sub), *amount) {
                Seen::ToppedUp
            } else {
                Seen::Error("failed_precondition")
            };
            (got, want)
        }
        Op::Create { sub, amount, key } => {
            let id = TradeId::generate().expect("id");
            let c = NewTrade {
                shop: r.shop.clone(),
                trade_id: id,
                request: request(r, *sub, *amount),
                idempotency_key: key.map(|k| format!("k{k}")),
                binding_code: "000000".into(),
                max_open_per_register: 1_000,
                offer_gate: None,
                asked: None,
                now: UnixMs(now),
            };
            let got = match r.store.create_trade(c).await {
                Ok(created) => {
                    let tr = created.trade;
                    let index = m.trades.iter().position(|x| x.id == tr.id).unwrap_or(m.trades.len());
                    Seen::Trade { index, state: tr.state, failure: tr.failure, replayed: created.replayed }
                }
                Err(e) => Seen::Error(error_kind(&e)),
            };
            if let Some(k) = key {
                if let Some(&(index, psub, pamount)) = m.trade_keys.get(k) {
                    let want = if psub == *sub && pamount == *amount {
                        let x = &m.trades[index];
                        Seen::Trade { index, state: x.state, failure: x.failure, replayed: true }
                    } else {
                        Seen::Error("already_exists")
                    };
                    return (got, want);
                }
            }
            let (state, failure) = match sub {
                0 | 1 => (TradeState::Pending, None),
                2 => (TradeState::Failed, Some(FailureReason::NoHandset)),
                _ => (TradeState::Failed, Some(FailureReason::PayerUnknown)),
            };
            let index = m.trades.len();
            m.trades.push(ModelTrade {
                id,
                sub: *sub,
                amount: *amount,
                state,
                failure,
                refunded: 0,
                expires_at: now + TTL_MS,
            });
            if let Some(k) = key {
                m.trade_keys.insert(*k, (index, *sub, *amount));
            }
            (got, Seen::Trade { index, state, failure, replayed: false })
        }
        Op::Answer { trade, approve, valid, late } => {
            let Some(x) = t(*trade) else {
                return (Seen::Nothing, Seen::Nothing);
            };
            let at = if *late { x.expires_at } else { now };
            let decision = if *approve { Decision::Approve } else { Decision::Decline };
            // The model's own account of what was offered: shop "S",
            // register "r", no description, binding code 000000.
            let payload = ApprovalPayload {
                trade_id: x.id,
                amount: Amount::new(x.amount),
                currency: jpy(),
                shop_id: r.shop.clone(),
                register_id: r.register,
                expires_at: UnixMs(x.expires_at),
                version: PayloadVersion::V2 {
                    binding_code: BindingCode::parse("000000").expect("code"),
                    screen_digest: ScreenText { shop_name: "S", register_label: "r", description: "" }.digest(),
                },
                decision,
            };
            let mut signature = r.keys[x.sub.min(2)].sign(&payload.to_bytes()).to_bytes().to_vec();
            if !valid {
                signature[5] ^= 0x40;
            }
            // The server checks the signature before queueing (the writer
            // reuses the verdict); the model's answers take that path.
            let checked = r.store.check_answer(&r.carrier, &x.id, decision, &signature, &r.signer, UnixMs(at)).await;
            let answer = HandsetAnswer {
                carrier: r.carrier.clone(),
                trade: x.id,
                decision,
                signature,
                now: UnixMs(at),
                checked,
                signer: r.signer.clone(),
            };
            let outcome = match r.store.submit_answer(answer).await {
                Ok(pending) => pending.outcome().await,
                Err(f) => Err(StoreError::Failed(f)),
            };
            let got = match outcome {
                Ok(a) => match a.rejected {
                    Some(RejectedAnswer::UnknownTrade) => Seen::Rejected("unknown"),
                    Some(RejectedAnswer::AlreadyFinal(_)) => Seen::Rejected("final"),
                    Some(RejectedAnswer::Expired) => Seen::Rejected("expired"),
                    None => {
                        let tr = a.trade.expect("trade");
                        Seen::Trade { index: *trade, state: tr.state, failure: tr.failure, replayed: false }
                    }
                },
                Err(e) => Seen::Error(error_kind(&e)),
            };
            let mt = &mut m.trades[*trade];
            let want = if mt.sub >= 3 {
                Seen::Rejected("unknown")
            } else if mt.state.is_final() {
                Seen::Rejected("final")
            } else if at >= mt.expires_at {
                mt.state = TradeState::Expired;
                Seen::Rejected("expired")
            } else {
                let (sub, amount) = (m.trades[*trade].sub, m.trades[*trade].amount);
                let (state, failure) = if !valid {
                    (TradeState::Failed, Some(FailureReason::BadSignature))
                } else if !approve {
                    (TradeState::Declined, None)
                } else if m.available(&wallet(sub)) < u128::from(amount) {
                    (TradeState::Failed, Some(FailureReason::InsufficientFunds))
                } else if m.transfer(&wallet(sub), "shop:shop:JPY", amount) {
                    (TradeState::Settled, None)
                } else {
                    // A total would overflow: the whole answer is refused.
                    return (got, Seen::Error("failed_precondition"));
                };
                let mt = &mut m.trades[*trade];
                mt.state = state;
                mt.failure = failure;
                Seen::Trade { index: *trade, state, failure, replayed: false }
            };
            (got, want)
        }
        Op::Cancel { trade } => {
            let Some(x) = t(*trade) else {
                return (Seen::Nothing, Seen::Nothing);
            };
            let got = match r.store.cancel(&r.shop, x.id, UnixMs(now)).await {
                Ok(CancelOutcome::Cancelled { trade: tr, .. }) => {
                    Seen::Trade { index: *trade, state: tr.state, failure: tr.failure, replayed: false }
                }
                Ok(other) => panic!("unexpected {other:?}"),
                Err(e) => Seen::Error(error_kind(&e)),
            };
            let mt = &mut m.trades[*trade];
            let want = if mt.state.is_final() {
                Seen::Error("failed_precondition")
            } else {
                mt.state = TradeState::Cancelled;
                Seen::Trade { index: *trade, state: TradeState::Cancelled, failure: None, replayed: false }
            };
            (got, want)
        }
        Op::Expire { trade, due } => {
            let Some(x) = t(*trade) else {
                return (Seen::Nothing, Seen::Nothing);
            };
            let at = if *due { x.expires_at } else { now };
            let outcome = r.store.submit_expire(x.id, UnixMs(at)).await.expect("queued").outcome().await;
            let seen = |tr: &syncpay::store::TradeRecord, replayed| Seen::Trade {
                index: *trade,
                state: tr.state,
                failure: tr.failure,
                replayed,
            };
            let got = match outcome {
                Ok(ExpireOutcome::Expired { trade: tr, .. }) => seen(&tr, false),
                Ok(ExpireOutcome::NotDue(tr) | ExpireOutcome::AlreadyFinal(tr)) => seen(&tr, true),
                Ok(ExpireOutcome::Unknown) => panic!("the model's trade is unknown to the store"),
                Err(StoreError::Refused(never)) => match never {},
                Err(StoreError::Failed(_)) => Seen::Error("internal"),
            };
            let mt = &mut m.trades[*trade];
            let replayed = mt.state.is_final() || at < mt.expires_at;
            if !replayed {
                mt.state = TradeState::Expired;
            }
            (got, Seen::Trade { index: *trade, state: mt.state, failure: mt.failure, replayed })
        }
        Op::Refund { trade, amount, key, .. } => {
            let Some(x) = t(*trade) else {
                return (Seen::Nothing, Seen::Nothing);
            };
            let c = NewRefund {
                shop: r.shop.clone(),
                trade: x.id,
                amount: Amount::new(*amount),
                idempotency_key: key.map(|k| format!("k{k}")),
                now: UnixMs(now),
            };
            let got = match r.store.refund(c).await {
                Ok(refunded) => {
                    Seen::Refunded { refunded: refunded.trade.refunded.minor(), replayed: refunded.replayed }
                }
                Err(e) => Seen::Error(error_kind(&e)),
            };
            if let Some(k) = key {
                if let Some(&(index, pamount)) = m.refund_keys.get(k) {
                    let want = if index == *trade && pamount == *amount {
                        Seen::Refunded { refunded: m.trades[index].refunded, replayed: true }
                    } else {
                        Seen::Error("already_exists")
                    };
                    return (got, want);
                }
            }
            let mt = m.trades[*trade].clone();
            let left = mt.amount - mt.refunded;
            let want = if mt.state != TradeState::Settled || *amount > left || *amount == 0 {
                Seen::Error("failed_precondition")
            } else {
                // The payer's credit total can overflow after a huge top-up:
                // the store refuses the whole refund then.
                if m.transfer("shop:shop:JPY", &wallet(mt.sub), *amount) {
                    m.trades[*trade].refunded += amount;
                    if let Some(k) = key {
                        m.refund_keys.insert(*k, (*trade, *amount));
                    }
                    Seen::Refunded { refunded: mt.refunded + amount, replayed: false }
                } else {
                    Seen::Error("failed_precondition")
                }
            };
            (got, want)
        }
    }
}

/// Cases per run: `PROPTEST_CASES` when set (docs/TESTING.md's longer
/// runs), 64 otherwise. An explicit `cases` in the config overrides
/// proptest's own reading of the variable, so it is read here.
fn model_cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: model_cases(), max_shrink_iters: 200, ..ProptestConfig::default() })]

    #[test]
    fn store_matches_the_model(ops in prop::collection::vec(op(), 1..40)) {
        for backend in backends() {
            run_model(backend, &ops);
        }
    }
}

/// One sequence of operations against one backend and the model.
fn run_model(backend: &BackendFactory, ops: &[Op]) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let r = real(backend).await;
        let mut m = Model::default();
        for (i, op) in ops.iter().enumerate() {
            let now = T0 + 1 + u64::try_from(i).expect("small");
            let (got, want) = step(&r, &mut m, op, now).await;
            assert_eq!(got, want, "{backend:?} step {i}: {op:?}");
            let accounts = r.store.accounts("", 1_000).await.expect("accounts");
            for a in &accounts {
                let (d, c) = m.totals.get(&a.name.key()).copied().unwrap_or_default();
                assert_eq!(
                    (u128::from(a.balance.debits.minor()), u128::from(a.balance.credits.minor())),
                    (d, c),
                    "step {i}: account {:?} after {op:?}",
                    a.name
                );
            }
            let nonzero = m.totals.values().filter(|(d, c)| *d > 0 || *c > 0).count();
            assert_eq!(accounts.len(), nonzero, "step {i}: account set differs");
        }
        for (index, x) in m.trades.iter().enumerate() {
            let stored = r.store.trade(&x.id).await.expect("read").expect("present");
            assert_eq!((stored.state, stored.refunded.minor()), (x.state, x.refunded), "trade {index}");
        }
        let report = r.store.verify().await.expect("verify");
        assert!(report.ok(), "{:?}", report.violations);
    });
}
