//! The crash harness shared by `tests/crash.rs` (kill -9) and
//! `tests/power_loss.rs` (a power cut on a FUSE file system that forgets
//! every unsynced byte): the real `syncpay serve` binary, run as a child
//! process, ended at random moments while concurrent shops and simulated
//! handsets keep it busy, then restarted and checked against every
//! acknowledgement the clients got. How the server ends is the caller's
//! [`Crash`]; everything else is here. Included by those two tests only
//! (`#[path]`), so no other test binary compiles it.
//!
//! Each cycle starts the server (`--listen 127.0.0.1:0`; the bound address
//! comes from its "serving on" line), lets several shops create, await,
//! cancel and refund trades while watching their event streams, records
//! every answer and event, and crashes the server after a random delay. One
//! simulated carrier (`CarrierSim`, mostly approving handsets, some
//! declining or ignoring, one answering twice) lives through the whole run
//! and reconnects to each new server, as a real relay would. Sometimes the
//! server is also crashed moments into its recovery.
//!
//! After each restart the harness retries every request whose answer was
//! lost and replays some whose answer arrived (same idempotency key: the
//! original must come back), then checks that every acknowledged state
//! change is still there (with the same payer pseudonym, so the server
//! secret survived too, and the same operator token) and the ledger
//! verifies. After the last cycle it waits until every trade is final and
//! checks the whole history: per-shop events gap-free from 1 and identical
//! to those delivered live, offers pending at the restart sent to the
//! carrier, each final state allowed by the payer's handset policy, exactly
//! one settlement posting set per settled trade (none otherwise), exactly
//! the acknowledged refunds, every balance, and `VerifyLedger`.
//!
//! The seed fixes the random choices (operations, payers, amounts, TTLs,
//! crash delays), not thread timing.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ops::{Range, RangeInclusive};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use syncpay::child::{self, Process, Stream};
use syncpay::client::with_token;
use syncpay::domain::{RegisterId, TradeId};
use syncpay::proto::admin_service_client::AdminServiceClient;
use syncpay::proto::register_service_client::RegisterServiceClient;
use syncpay::proto::{self, EventKind, FailureReason as FR, TradeState as S};
use syncpay::register::{ChargeRequest, RegisterError, VirtualRegister};
use syncpay::terminal_sim::{CarrierSim, Policy};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tonic::transport::channel::Change;
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

const SHOPS: usize = 3;
/// Concurrent trade loops per shop, all on the shop's one register.
const WORKERS_PER_SHOP: usize = 3;
/// Handsets per policy: mostly approvers.
const ROLES: [(Role, usize); 4] =
    [(Role::Approver, 12), (Role::DoubleApprover, 1), (Role::Decliner, 2), (Role::Ignorer, 2)];
const TOP_UP: u64 = 1_000_000;
const CURRENCY: &str = "JPY";
const AMOUNT: RangeInclusive<u64> = 100..=5_000;
/// TTLs are short so that trades whose answer a crash swallowed expire
/// within the run; ignored offers expire sooner still.
const ANSWERED_TTL_S: RangeInclusive<u32> = 2..=6;
const IGNORED_TTL_S: RangeInclusive<u32> = 1..=3;
/// The server is crashed this many milliseconds after the load starts.
const KILL_AFTER_MS: Range<u64> = 100..3_000;
/// Before one restart in this many, the server is also crashed while it
/// recovers (first expiry sweep, outbox replay to the carrier), this many
/// milliseconds after it reports serving.
const RECOVERY_KILL_ODDS: u32 = 4;
const RECOVERY_KILL_MS: Range<u64> = 0..300;
/// Concurrent readers checking trades after a restart.
const CHECK_LANES: usize = 8;
/// Answered creates (and as many refunds) sent again after each restart.
const REPLAYS_PER_RESTART: usize = 10;
/// How long a shop waits before cancelling a trade it just created.
const CANCEL_AFTER_MS: Range<u64> = 0..300;
/// Beyond a trade's TTL: the sweeper's delay and a busy debug build.
const FINAL_MARGIN: Duration = Duration::from_secs(20);
/// A debug server on a busy machine can be slow to open its store.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Clients of a killed server see their calls fail at once; this bounds
/// the wait for them anyway.
const WIND_DOWN: Duration = Duration::from_secs(30);
/// One event of a stream that must still deliver some.
const EVENT_WAIT: Duration = Duration::from_secs(30);
/// Violations printed in full when the test fails.
const SHOWN_VIOLATIONS: usize = 40;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub fn env_u64(name: &str) -> Option<u64> {
    let text = std::env::var(name).ok()?;
    Some(text.trim().parse().unwrap_or_else(|_| panic!("{name}={text:?} is not a number")))
}

// ---------------------------------------------------------------------------
// The server as a child process
// ---------------------------------------------------------------------------

/// How to start the server: its data folder and extra `serve` arguments.
#[derive(Debug, Clone)]
pub struct Launch {
    pub data_dir: PathBuf,
    pub args: Vec<String>,
}

/// A running `syncpay serve` (through the one launcher, `syncpay::child`).
/// Dropping it kills the process (SIGKILL) and reaps it, so no server
/// outlives a failed test; a failing test prints its last log lines.
pub struct ServerProcess {
    process: Process,
    url: String,
}

impl ServerProcess {
    /// Starts the server on a free loopback port and returns once it has
    /// printed the address it is serving on.
    pub async fn start(launch: &Launch) -> ServerProcess {
        let data_dir = launch.data_dir.display().to_string();
        let mut args: Vec<String> = ["serve", "--listen", "127.0.0.1:0", "--metrics-listen", "off", "--data-dir"]
            .into_iter()
            .map(str::to_owned)
            .collect();
        args.push(data_dir);
        // The load reuses a few buyers far faster than a person would;
        // the rate limits are tested elsewhere (tests/limits.rs).
        for set in ["limits.subscriber_offers_per_minute=0", "limits.shop_trades_per_second=0"] {
            args.extend(["--set".to_owned(), set.to_owned()]);
        }
        args.extend(launch.args.iter().cloned());
        let program = Path::new(env!("CARGO_BIN_EXE_syncpay"));
        let mut spec = child::Spec::new(program, &args);
        spec.read = Stream::Stderr;
        spec.env = vec![("RUST_LOG".into(), "warn".into()), ("NO_COLOR".into(), "1".into())];
        // The guard exists before the wait, so a failed start is killed too.
        let mut process = Process::spawn(spec).expect("spawn syncpay serve");
        let url = match process.serving_on(START_TIMEOUT).await {
            Ok((url, _)) => url,
            Err(e) => panic!("syncpay serve: {e}:\n{}", process.tail()),
        };
        ServerProcess { process, url }
    }

    pub async fn channel(&self) -> Channel {
        syncpay::client::connect(&self.url).await.unwrap_or_else(|e| panic!("connect to {}: {e}", self.url))
    }

    pub fn log_tail(&self) -> String {
        self.process.tail()
    }

    /// SIGKILL: no shutdown, no flush, no goodbye. Returns once the
    /// process is gone (reaped).
    pub fn kill(self) {
        drop(self);
    }

    /// Sends SIGKILL and returns at once; the process may still be dying.
    /// Dropping the `ServerProcess` reaps it.
    pub fn signal_kill(&mut self) {
        self.process.signal_kill();
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }
}

// ---------------------------------------------------------------------------
// What the clients were told
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Approver,
    DoubleApprover,
    Decliner,
    Ignorer,
}

impl Role {
    fn policy(self) -> Policy {
        match self {
            Role::Approver => Policy::Approve,
            Role::DoubleApprover => Policy::AnswerTwice,
            Role::Decliner => Policy::Decline,
            Role::Ignorer => Policy::Ignore,
        }
    }

    /// The final states a trade of a payer with this role may reach.
    fn allows(self, state: S, reason: FR) -> bool {
        match (self, state) {
            (_, S::Expired | S::Cancelled) => true,
            (Role::Approver | Role::DoubleApprover, S::Settled) => true,
            (Role::Approver | Role::DoubleApprover, S::Failed) => reason == FR::InsufficientFunds,
            (Role::Decliner, S::Declined) => true,
            (
                Role::Approver | Role::DoubleApprover | Role::Decliner | Role::Ignorer,
                S::Unspecified | S::Pending | S::Offered | S::Settled | S::Declined | S::Failed,
            ) => false,
        }
    }
}

struct Handset {
    number: String,
    role: Role,
}

struct Shop {
    id: String,
    token: String,
    register: RegisterId,
}

fn state_of(t: &proto::Trade) -> S {
    S::try_from(t.state).unwrap_or(S::Unspecified)
}

fn reason_of(t: &proto::Trade) -> FR {
    FR::try_from(t.failure_reason).unwrap_or(FR::Unspecified)
}

/// How far along a trade is: acknowledged progress may never go back.
fn rank(s: S) -> u8 {
    match s {
        S::Unspecified => 0,
        S::Pending => 1,
        S::Offered => 2,
        S::Settled | S::Declined | S::Expired | S::Cancelled | S::Failed => 3,
    }
}

/// One CreateTrade attempt (every one carries an idempotency key) and all
/// that was acknowledged about the trade since.
struct TradeRec {
    shop: usize,
    payer: usize,
    request: ChargeRequest,
    /// Known from the CreateTrade answer or from an event.
    id: Option<String>,
    /// The CreateTrade answer arrived (else it is retried after restart).
    answered: bool,
    /// Furthest acknowledged state.
    state: S,
    /// The acknowledged final state and reason, once there is one.
    final_state: Option<(S, FR)>,
    /// Largest acknowledged `refunded_minor`.
    refunded: u64,
    /// Refund ids acknowledged (answers and events) with their amounts.
    refund_ids: BTreeMap<u64, u64>,
    /// Refund attempts begun for this trade (keys into `Record::refunds`).
    refund_keys: Vec<String>,
    /// Acknowledgements recorded for this trade.
    acks: u64,
    /// The payer pseudonym first acknowledged (keyed by the server secret).
    pseudonym: Option<String>,
}

struct RefundRec {
    trade_key: String,
    trade_id: TradeId,
    shop: usize,
    amount: u64,
    /// The refund id from the RefundTrade answer.
    answer: Option<u64>,
}

#[derive(Default)]
struct Record {
    /// By CreateTrade idempotency key.
    trades: BTreeMap<String, TradeRec>,
    /// Trade id → idempotency key.
    ids: HashMap<String, String>,
    /// By RefundTrade idempotency key.
    refunds: BTreeMap<String, RefundRec>,
    /// Every event delivered, per shop, by sequence number.
    events: Vec<BTreeMap<u64, proto::TradeEvent>>,
    /// Last sequence number delivered per shop: where watching resumes.
    cursors: Vec<u64>,
    /// Trades acknowledged since they were last checked after a restart.
    dirty: BTreeSet<String>,
    /// Each trade's state events in the final history, by trade id.
    history: HashMap<String, Vec<S>>,
    /// The pseudonym each (shop, payer) pair was first shown.
    pseudonyms: HashMap<(usize, usize), String>,
    violations: Vec<String>,
    stats: Stats,
}

#[derive(Default, Debug, Clone)]
pub struct Stats {
    pub acknowledgements: u64,
    /// Acknowledged facts found missing or changed after a restart.
    pub lost: u64,
    pub creates_retried: u64,
    pub refunds_retried: u64,
    /// Requests whose answers arrived, sent again after a restart.
    pub creates_replayed: u64,
    pub refunds_replayed: u64,
    pub trade_checks: u64,
    pub acks_checked: u64,
    /// Requests in flight when the server was killed.
    pub answers_lost: u64,
    /// Trades PENDING on the server right after a restart.
    pub pending_at_restart: u64,
    /// Kills while the server was recovering, with no shop connected.
    pub recovery_kills: u64,
    /// Trades answered before the server recorded the offer's delivery.
    pub answered_while_pending: u64,
}

impl Record {
    fn new(shops: usize) -> Record {
        Record { events: vec![BTreeMap::new(); shops], cursors: vec![0; shops], ..Record::default() }
    }

    fn violation(&mut self, text: String) {
        self.violations.push(text);
    }

    fn begin_trade(&mut self, key: &str, shop: usize, payer: usize, request: ChargeRequest) {
        let fresh = TradeRec {
            shop,
            payer,
            request,
            id: None,
            answered: false,
            state: S::Unspecified,
            final_state: None,
            refunded: 0,
            refund_ids: BTreeMap::new(),
            refund_keys: Vec::new(),
            acks: 0,
            pseudonym: None,
        };
        assert!(self.trades.insert(key.to_owned(), fresh).is_none(), "key {key} reused");
    }

    /// Takes in one acknowledged view of a trade (an answer or an event).
    fn observe(&mut self, key: &str, t: &proto::Trade, source: &str) {
        let Some(rec) = self.trades.get_mut(key) else {
            self.violations
                .push(format!("{source}: trade {} has idempotency key {key:?}, which no request used", t.trade_id));
            return;
        };
        let mut found = Vec::new();
        if t.amount_minor != rec.request.amount_minor || t.currency != rec.request.currency {
            found.push(format!(
                "{source}: trade {} is for {} {}, asked {} {}",
                t.trade_id, t.amount_minor, t.currency, rec.request.amount_minor, rec.request.currency
            ));
        }
        if t.idempotency_key != key {
            found.push(format!(
                "{source}: trade {} came back with key {:?}, asked with {key:?}",
                t.trade_id, t.idempotency_key
            ));
        }
        match &rec.id {
            None => {
                rec.id = Some(t.trade_id.clone());
                self.ids.insert(t.trade_id.clone(), key.to_owned());
            }
            Some(id) if *id != t.trade_id => {
                self.stats.lost += 1;
                found.push(format!("{source}: key {key:?} names trade {}, earlier {id}: created twice", t.trade_id))
            }
            Some(_) => {}
        }
        let state = state_of(t);
        if rank(state) > rank(rec.state) {
            rec.state = state;
        }
        if state.is_final() {
            let now = (state, reason_of(t));
            match rec.final_state {
                None => rec.final_state = Some(now),
                Some(before) if before != now => {
                    self.stats.lost += 1;
                    found.push(format!(
                        "{source}: trade {} is {now:?}, was acknowledged {before:?}: a final state changed",
                        t.trade_id
                    ))
                }
                Some(_) => {}
            }
        }
        if t.refunded_minor > t.amount_minor {
            found.push(format!("{source}: trade {} refunded {} of {}", t.trade_id, t.refunded_minor, t.amount_minor));
        }
        // The pseudonym is a keyed hash of (shop, payer) with the server
        // secret: if it changes, the secret did (lost in a crash?).
        if !t.payer_pseudonym.is_empty() {
            let first = rec.pseudonym.get_or_insert_with(|| t.payer_pseudonym.clone());
            if *first != t.payer_pseudonym {
                self.stats.lost += 1;
                found.push(format!(
                    "{source}: trade {} shows payer {}, first acknowledged as {first}: the server secret changed",
                    t.trade_id, t.payer_pseudonym
                ));
            }
            let pair = self.pseudonyms.entry((rec.shop, rec.payer)).or_insert_with(|| t.payer_pseudonym.clone());
            if *pair != t.payer_pseudonym {
                self.stats.lost += 1;
                found.push(format!(
                    "{source}: trade {} shows payer {}; this shop saw the same payer as {pair}: the server secret changed",
                    t.trade_id, t.payer_pseudonym
                ));
            }
        }
        rec.refunded = rec.refunded.max(t.refunded_minor);
        rec.acks += 1;
        self.stats.acknowledgements += 1;
        self.dirty.insert(key.to_owned());
        self.violations.extend(found);
    }

    /// A refund id and amount acknowledged for a trade.
    fn refund_seen(&mut self, key: &str, refund_id: u64, amount: u64, source: &str) {
        let Some(rec) = self.trades.get_mut(key) else {
            return;
        };
        if let Some(before) = rec.refund_ids.insert(refund_id, amount) {
            if before != amount {
                let id = rec.id.clone().unwrap_or_default();
                self.violations.push(format!("{source}: refund {refund_id} of {id} is {amount}, was {before}"));
            }
        }
    }

    fn event(&mut self, shop: usize, e: proto::TradeEvent) {
        let expected = self.cursors[shop] + 1;
        if e.sequence != expected {
            self.violations.push(format!("shop {shop}: event {} delivered where {expected} was due", e.sequence));
        }
        self.cursors[shop] = self.cursors[shop].max(e.sequence);
        let Some(trade) = e.trade.clone() else {
            self.violations.push(format!("shop {shop}: event {} has no trade", e.sequence));
            return;
        };
        let key = trade.idempotency_key.clone();
        if self.trades.get(&key).is_some_and(|r| r.shop != shop) {
            self.violations
                .push(format!("shop {shop}: event {} is about another shop's trade {}", e.sequence, trade.trade_id));
        }
        self.observe(&key, &trade, &format!("event {}/{}", shop, e.sequence));
        if e.kind == EventKind::Refunded as i32 {
            self.refund_seen(&key, e.refund_id, e.refund_minor, "event");
        }
        self.events[shop].insert(e.sequence, e);
    }

    fn refund_answered(&mut self, rkey: &str, r: &proto::RefundTradeResponse) {
        let Some(refund) = self.refunds.get_mut(rkey) else {
            return;
        };
        refund.answer = Some(r.refund_id);
        let (key, amount) = (refund.trade_key.clone(), refund.amount);
        if r.amount_minor != amount {
            self.violations.push(format!("refund {rkey}: asked {amount}, answered {}", r.amount_minor));
        }
        if let Some(t) = &r.trade {
            self.observe(&key, t, "RefundTrade");
        }
        self.refund_seen(&key, r.refund_id, r.amount_minor, "RefundTrade");
    }

    /// Compares the server's view of a trade after a restart with what was
    /// acknowledged before, then records it.
    fn check(&mut self, key: &str, t: &proto::Trade, when: &str) {
        let Some(rec) = self.trades.get(key) else {
            return;
        };
        let id = &t.trade_id;
        let state = state_of(t);
        let mut found = Vec::new();
        if rank(state) < rank(rec.state) {
            found.push(format!("{when}: trade {id} is {state:?}, was acknowledged {:?}", rec.state));
        }
        if let Some(f) = rec.final_state {
            if (state, reason_of(t)) != f {
                found.push(format!("{when}: trade {id} is {:?}, was acknowledged final {f:?}", (state, reason_of(t))));
            }
        }
        if t.refunded_minor < rec.refunded {
            found.push(format!("{when}: trade {id} refunded {}, acknowledged {}", t.refunded_minor, rec.refunded));
        }
        // Every refund attempt has its answer by now (lost ones were
        // retried), so the trade shows exactly their sum.
        let answered: u64 = rec
            .refund_keys
            .iter()
            .filter_map(|k| self.refunds.get(k))
            .filter(|r| r.answer.is_some())
            .map(|r| r.amount)
            .sum();
        if t.refunded_minor != answered {
            found.push(format!(
                "{when}: trade {id} refunded {}, but the answered refunds sum to {answered}",
                t.refunded_minor
            ));
        }
        self.stats.trade_checks += 1;
        self.stats.acks_checked += rec.acks;
        self.stats.lost += u64::try_from(found.len()).expect("fits");
        self.violations.extend(found);
        self.observe(key, t, when);
    }

    fn history_has(&self, trade_id: &str, state: S) -> bool {
        self.history.get(trade_id).is_some_and(|states| states.contains(&state))
    }

    /// What was acknowledged about a trade, for messages.
    fn describe(&self, key: &str) -> String {
        match self.trades.get(key) {
            None => "never".to_owned(),
            Some(r) => format!(
                "{:?} (final {:?}, refunded {}, {} acknowledgements)",
                r.state, r.final_state, r.refunded, r.acks
            ),
        }
    }

    /// Up to `n` answered CreateTrade requests and `n` answered refunds of
    /// trades acknowledged since the last check, spread over them.
    #[allow(clippy::type_complexity)]
    fn answered_sample(
        &self,
        n: usize,
    ) -> (Vec<(String, usize, ChargeRequest)>, Vec<(String, usize, TradeId, u64, u64)>) {
        let recent: Vec<&String> =
            self.dirty.iter().filter(|k| self.trades.get(*k).is_some_and(|r| r.answered)).collect();
        let step = recent.len().div_ceil(n).max(1);
        let creates = recent
            .iter()
            .step_by(step)
            .map(|k| {
                let r = &self.trades[*k];
                ((*k).clone(), r.shop, r.request.clone())
            })
            .collect();
        let answered: Vec<(String, usize, TradeId, u64, u64)> = recent
            .iter()
            .flat_map(|k| self.trades[*k].refund_keys.iter())
            .filter_map(|rk| {
                let r = self.refunds.get(rk)?;
                Some((rk.clone(), r.shop, r.trade_id, r.amount, r.answer?))
            })
            .collect();
        let step = answered.len().div_ceil(n).max(1);
        let refunds = answered.into_iter().step_by(step).collect();
        (creates, refunds)
    }

    /// Lost CreateTrade answers, to retry with the same request.
    fn unanswered_creates(&self) -> Vec<(String, usize, ChargeRequest)> {
        self.trades.iter().filter(|(_, r)| !r.answered).map(|(k, r)| (k.clone(), r.shop, r.request.clone())).collect()
    }

    /// Lost RefundTrade answers, to retry with the same request.
    fn unanswered_refunds(&self) -> Vec<(String, usize, TradeId, u64)> {
        self.refunds
            .iter()
            .filter(|(_, r)| r.answer.is_none())
            .map(|(k, r)| (k.clone(), r.shop, r.trade_id, r.amount))
            .collect()
    }

    /// Trades to read back: acknowledged since the last check, or open.
    fn to_check(&self) -> Vec<(String, usize, TradeId)> {
        self.trades
            .iter()
            .filter(|(k, r)| self.dirty.contains(*k) || r.final_state.is_none())
            .filter_map(|(k, r)| {
                let id = TradeId::parse(r.id.as_deref()?).ok()?;
                Some((k.clone(), r.shop, id))
            })
            .collect()
    }

    fn assert_clean(&self, seed: u64, seed_var: &str, when: &str) {
        if self.violations.is_empty() {
            return;
        }
        let shown: Vec<&str> = self.violations.iter().take(SHOWN_VIOLATIONS).map(String::as_str).collect();
        panic!(
            "seed {seed}, {when}: {} violation(s):\n  {}\n(replay: {seed_var}={seed})",
            self.violations.len(),
            shown.join("\n  ")
        );
    }
}

// ---------------------------------------------------------------------------
// The load
// ---------------------------------------------------------------------------

/// Shared by the test and its client tasks for the whole run.
struct Ctx {
    seed: u64,
    /// The environment variable that replays `seed`.
    seed_var: &'static str,
    launch: Launch,
    handsets: Vec<Handset>,
    shops: Vec<Shop>,
    record: Mutex<Record>,
    /// Set just before the server is crashed: errors after it are expected.
    killed: AtomicBool,
}

impl Ctx {
    fn record(&self) -> MutexGuard<'_, Record> {
        lock(&self.record)
    }

    fn killed(&self) -> bool {
        self.killed.load(Ordering::SeqCst)
    }

    /// A client call failed. After the kill that is expected (unless the
    /// answer broke the contract); before it, it is a finding.
    fn failed(&self, what: &str, e: &RegisterError) {
        if matches!(e, RegisterError::Protocol(_)) || !self.killed() {
            self.record().violation(format!("{what}: {e} (killed: {})", self.killed()));
        }
    }

    fn payers(&self, role: Role) -> Vec<usize> {
        (0..self.handsets.len()).filter(|&i| self.handsets[i].role == role).collect()
    }
}

fn pick(rng: &mut StdRng, from: &[usize]) -> usize {
    from[rng.random_range(0..from.len())]
}

/// What one loop iteration of a shop does.
enum Op {
    /// Create and wait for the final state (maybe refund it after).
    Charge,
    /// Create and move on; the outcome arrives as events.
    Fire,
    /// Create, then cancel shortly after.
    Cancel,
}

/// One shop till: creates trades until the server dies, recording each
/// request before it is sent and each answer when it arrives.
async fn shop_loop(ctx: Arc<Ctx>, register: VirtualRegister, shop: usize, tag: String, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let approvers = ctx.payers(Role::Approver);
    let doubles = ctx.payers(Role::DoubleApprover);
    let decliners = ctx.payers(Role::Decliner);
    let ignorers = ctx.payers(Role::Ignorer);
    let mut n = 0u32;
    while !ctx.killed() {
        n += 1;
        let key = format!("{tag}-{n}");
        let (payer, op) = match rng.random_range(0..100u32) {
            0..60 => (pick(&mut rng, &approvers), Op::Charge),
            60..68 => (pick(&mut rng, &doubles), Op::Charge),
            68..78 => (pick(&mut rng, &decliners), Op::Charge),
            78..84 => (pick(&mut rng, &approvers), Op::Fire),
            84..90 => (pick(&mut rng, &ignorers), Op::Fire),
            90..95 => (pick(&mut rng, &approvers), Op::Cancel),
            _ => (pick(&mut rng, &ignorers), Op::Cancel),
        };
        let ttl = if ctx.handsets[payer].role == Role::Ignorer {
            rng.random_range(IGNORED_TTL_S)
        } else {
            rng.random_range(ANSWERED_TTL_S)
        };
        let amount = rng.random_range(AMOUNT);
        let request = ChargeRequest {
            ttl_seconds: ttl,
            idempotency_key: Some(key.clone()),
            ..ChargeRequest::new(&ctx.handsets[payer].number, amount, CURRENCY, "crash test")
        };
        ctx.record().begin_trade(&key, shop, payer, request.clone());
        let created = match register.create(request).await {
            Ok(t) => t,
            Err(e) => return ctx.failed("CreateTrade", &e),
        };
        let id = match TradeId::parse(&created.trade_id) {
            Ok(id) => id,
            Err(e) => return ctx.record().violation(format!("CreateTrade answered trade id {e}")),
        };
        {
            let mut record = ctx.record();
            if let Some(rec) = record.trades.get_mut(&key) {
                rec.answered = true;
            }
            record.observe(&key, &created, "CreateTrade");
        }
        match op {
            Op::Fire => {}
            Op::Cancel => {
                let pause = rng.random_range(CANCEL_AFTER_MS);
                tokio::time::sleep(Duration::from_millis(pause)).await;
                match register.cancel(id).await {
                    Ok(t) => {
                        if state_of(&t) != S::Cancelled {
                            ctx.record().violation(format!("CancelTrade {id} answered {:?}", state_of(&t)));
                        }
                        ctx.record().observe(&key, &t, "CancelTrade");
                    }
                    // Already final (answered or expired first): no change.
                    Err(e) if e.code() == Some(Code::FailedPrecondition) => {}
                    Err(e) => return ctx.failed("CancelTrade", &e),
                }
            }
            Op::Charge => {
                let wait = Duration::from_secs(u64::from(ttl)) + FINAL_MARGIN;
                let done = match register.await_final(id, wait).await {
                    Ok(t) => t,
                    Err(e) => return ctx.failed("AwaitTrade", &e),
                };
                ctx.record().observe(&key, &done, "AwaitTrade");
                if state_of(&done) == S::Settled && rng.random_range(0..100u32) < 35 {
                    let first = rng.random_range(1..=amount);
                    let mut parts = vec![first];
                    if first < amount && rng.random_range(0..100u32) < 30 {
                        parts.push(amount - first);
                    }
                    for (i, part) in parts.into_iter().enumerate() {
                        let rkey = format!("{key}-r{i}");
                        {
                            let mut record = ctx.record();
                            record.refunds.insert(
                                rkey.clone(),
                                RefundRec { trade_key: key.clone(), trade_id: id, shop, amount: part, answer: None },
                            );
                            if let Some(rec) = record.trades.get_mut(&key) {
                                rec.refund_keys.push(rkey.clone());
                            }
                        }
                        match register.refund(id, part, Some(&rkey)).await {
                            Ok(r) => ctx.record().refund_answered(&rkey, &r),
                            Err(e) => return ctx.failed("RefundTrade", &e),
                        }
                    }
                }
            }
        }
    }
}

/// Follows one shop's event stream from where the last one stopped.
async fn watch_loop(ctx: Arc<Ctx>, channel: Channel, shop: usize) {
    let token = &ctx.shops[shop].token;
    let mut client = RegisterServiceClient::new(with_token(channel, token).expect("token"));
    let after = ctx.record().cursors[shop];
    let opened =
        client.watch_trades(proto::WatchTradesRequest { after_sequence: after, register_id: String::new() }).await;
    let mut stream = match opened {
        Ok(s) => s.into_inner(),
        Err(status) => return ctx.failed(&format!("WatchTrades after {after}"), &RegisterError::from(status)),
    };
    loop {
        match stream.message().await {
            Ok(Some(e)) => ctx.record().event(shop, e),
            Ok(None) => {
                if !ctx.killed() {
                    ctx.record().violation(format!("shop {shop}: event stream ended"));
                }
                return;
            }
            Err(status) => return ctx.failed("WatchTrades", &RegisterError::from(status)),
        }
    }
}

// ---------------------------------------------------------------------------
// Cycles
// ---------------------------------------------------------------------------

/// Clients of one server run.
struct Session {
    server: ServerProcess,
    channel: Channel,
    registers: Vec<VirtualRegister>,
}

impl Session {
    /// Connects the shops' registers to a running server; fails if a
    /// shop or its register is gone.
    async fn connect(ctx: &Ctx, server: ServerProcess) -> Result<Session, String> {
        let channel = server.channel().await;
        let mut registers = Vec::new();
        for shop in &ctx.shops {
            match VirtualRegister::attach(channel.clone(), &shop.token, shop.register).await {
                Ok(register) => registers.push(register),
                Err(e) => return Err(format!("shop {}'s register {}: {e}", shop.id, shop.register)),
            }
        }
        Ok(Session { server, channel, registers })
    }

    /// Restarts the server on the store and recovers (see
    /// [`recover_and_check`]); also returns the trades still PENDING, whose
    /// offers the server must send once a carrier connects. `None` (with a
    /// violation recorded) if the shops cannot even attach.
    async fn restart(ctx: &Arc<Ctx>, admin_token: &str, when: &str) -> Option<(Session, Vec<TradeId>)> {
        let session = match Session::connect(ctx, ServerProcess::start(&ctx.launch).await).await {
            Ok(session) => session,
            Err(e) => {
                let mut record = ctx.record();
                record.stats.lost += 1;
                record.violation(format!("{when}: {e}"));
                return None;
            }
        };
        let pending = recover_and_check(ctx, &session, admin_token, when).await;
        Some((session, pending))
    }
}

fn admin_client(channel: &Channel, token: &str) -> AdminServiceClient<syncpay::client::AuthedChannel> {
    AdminServiceClient::new(with_token(channel.clone(), token).expect("token"))
}

/// The simulated carrier, kept for the whole run like a real carrier's
/// relay: its handsets keep their keys, and it reconnects to each new
/// server by itself. Its channel balances over at most one endpoint, the
/// running server's, which the test swaps at each restart; while there is
/// none, calls wait.
struct Carrier {
    sim: CarrierSim,
    endpoints: mpsc::Sender<Change<u32, Endpoint>>,
}

impl Carrier {
    fn start(token: &str) -> Carrier {
        let (channel, endpoints) = Channel::balance_channel(4);
        let sim = CarrierSim::start(channel, token).expect("carrier sim");
        Carrier { sim, endpoints }
    }

    /// Points the carrier at server number `n`.
    async fn attach(&self, n: u32, server: &ServerProcess) {
        let endpoint = Endpoint::from_shared(server.url.clone()).expect("server url");
        self.endpoints.send(Change::Insert(n, endpoint)).await.expect("carrier channel");
    }

    async fn detach(&self, n: u32) {
        self.endpoints.send(Change::Remove(n)).await.expect("carrier channel");
    }
}

/// Sends again, with the same key, some requests of the last cycle whose
/// answers did arrive, as a shop that gave up waiting would: each must
/// return the original trade or refund, and change nothing.
async fn replay_answered(ctx: &Ctx, session: &Session, when: &str) {
    let (creates, refunds) = ctx.record().answered_sample(REPLAYS_PER_RESTART);
    for (key, shop, request) in creates {
        match session.registers[shop].create(request).await {
            Ok(t) => {
                let mut record = ctx.record();
                record.stats.creates_replayed += 1;
                record.observe(&key, &t, &format!("{when}: CreateTrade replayed"));
            }
            Err(e) => {
                let mut record = ctx.record();
                record.stats.lost += 1;
                record.violation(format!("{when}: replaying CreateTrade {key}: {e}"));
            }
        }
    }
    for (rkey, shop, trade, amount, refund_id) in refunds {
        match session.registers[shop].refund(trade, amount, Some(&rkey)).await {
            Ok(r) => {
                let mut record = ctx.record();
                record.stats.refunds_replayed += 1;
                if r.refund_id != refund_id || r.amount_minor != amount {
                    record.stats.lost += 1;
                    record.violation(format!(
                        "{when}: replayed refund {rkey} of {trade} answered refund {} of {}, \
                         originally refund {refund_id} of {amount}",
                        r.refund_id, r.amount_minor
                    ));
                }
                let key = record.refunds[&rkey].trade_key.clone();
                if let Some(t) = &r.trade {
                    record.observe(&key, t, &format!("{when}: RefundTrade replayed"));
                }
            }
            Err(e) => {
                let mut record = ctx.record();
                record.stats.lost += 1;
                record.violation(format!("{when}: replaying RefundTrade {rkey}: {e}"));
            }
        }
    }
}

/// After a restart: retries every request whose answer was lost, with its
/// idempotency key, then reads back every trade acknowledged since the
/// last check (and every open one) and compares, and verifies the ledger.
/// Returns the trades the server still has PENDING.
async fn recover_and_check(ctx: &Arc<Ctx>, session: &Session, admin_token: &str, when: &str) -> Vec<TradeId> {
    // The operator's credential is made at the first start and must
    // survive every crash (else the server made a new one).
    match std::fs::read_to_string(ctx.launch.data_dir.join("admin.token")) {
        Ok(now) if now.trim() == admin_token => {}
        other => ctx.record().violation(format!(
            "{when}: admin.token is {:?}, the server made {admin_token:?} at its first start",
            other.map(|t| t.trim().to_owned())
        )),
    }
    replay_answered(ctx, session, when).await;
    let creates = ctx.record().unanswered_creates();
    for (key, shop, request) in creates {
        match session.registers[shop].create(request).await {
            Ok(t) => {
                let mut record = ctx.record();
                if let Some(rec) = record.trades.get_mut(&key) {
                    rec.answered = true;
                }
                record.stats.creates_retried += 1;
                record.observe(&key, &t, &format!("{when}: CreateTrade retried"));
            }
            Err(e) => ctx.record().violation(format!("{when}: retrying CreateTrade {key}: {e}")),
        }
    }
    let refunds = ctx.record().unanswered_refunds();
    for (rkey, shop, trade, amount) in refunds {
        match session.registers[shop].refund(trade, amount, Some(&rkey)).await {
            Ok(r) => {
                let mut record = ctx.record();
                record.stats.refunds_retried += 1;
                record.refund_answered(&rkey, &r);
            }
            Err(e) => ctx.record().violation(format!("{when}: retrying RefundTrade {rkey}: {e}")),
        }
    }
    // Read back in several lanes: after a restart the server expires
    // overdue trades one commit at a time, and each read waits for the
    // commit in progress to be durable.
    let to_check = ctx.record().to_check();
    let mut lanes = JoinSet::new();
    for lane in 0..CHECK_LANES {
        let mine: Vec<_> = to_check.iter().skip(lane).step_by(CHECK_LANES).cloned().collect();
        let (ctx, registers, when) = (ctx.clone(), session.registers.clone(), when.to_owned());
        lanes.spawn(async move {
            let mut pending = Vec::new();
            for (key, shop, id) in mine {
                match registers[shop].get(id).await {
                    Ok(t) => {
                        if state_of(&t) == S::Pending {
                            pending.push(id);
                        }
                        ctx.record().check(&key, &t, &when);
                    }
                    Err(e) => {
                        let mut record = ctx.record();
                        let acknowledged = record.describe(&key);
                        record.stats.lost += 1;
                        record.violation(format!(
                            "{when}: trade {id} (key {key}) was acknowledged {acknowledged}; \
                             GetTrade: {e}"
                        ));
                    }
                }
            }
            pending
        });
    }
    let mut pending = Vec::new();
    while let Some(lane) = lanes.join_next().await {
        pending.extend(lane.expect("check lane"));
    }
    ctx.record().dirty.clear();
    match admin_client(&session.channel, admin_token).verify_ledger(proto::VerifyLedgerRequest {}).await {
        Ok(report) if report.get_ref().ok => {}
        Ok(report) => ctx.record().violation(format!("{when}: ledger violations: {:?}", report.get_ref().violations)),
        Err(status) => ctx.record().violation(format!("{when}: VerifyLedger: {status}")),
    }
    ctx.record().stats.pending_at_restart += u64::try_from(pending.len()).expect("fits");
    pending
}

/// Waits for every task, bounded; a task still running means a client
/// hung on a dead server.
async fn join_all(ctx: &Ctx, mut tasks: JoinSet<()>, what: &str) {
    let all = async {
        while let Some(joined) = tasks.join_next().await {
            if let Err(e) = joined {
                ctx.record().violation(format!("{what} task failed: {e}"));
            }
        }
    };
    if tokio::time::timeout(WIND_DOWN, all).await.is_err() {
        ctx.record().violation(format!("{what} tasks still running {WIND_DOWN:?} after the kill"));
    }
}

/// Creates shops with a register each, the carrier with its handsets
/// (attached to server 0) and the wallet top-ups. Returns the operator
/// token, the carrier and the shops.
async fn setup(server: &ServerProcess, data_dir: &Path, handsets: &[Handset]) -> (String, Carrier, Vec<Shop>) {
    let admin_token = std::fs::read_to_string(data_dir.join("admin.token")).expect("admin.token").trim().to_owned();
    let channel = server.channel().await;
    let mut admin = admin_client(&channel, &admin_token);
    let mut shops = Vec::new();
    for i in 0..SHOPS {
        let id = format!("shop-{i}");
        let token = admin
            .create_shop(proto::CreateShopRequest { shop_id: id.clone(), display_name: format!("Shop {i}") })
            .await
            .expect("create shop")
            .into_inner()
            .token;
        let register = VirtualRegister::open(channel.clone(), &token, "till").await.expect("open register").id();
        shops.push(Shop { id, token, register });
    }
    let carrier_token = admin
        .create_carrier(proto::CreateCarrierRequest {
            carrier_id: "crashnet".into(),
            display_name: "Crash Mobile".into(),
            ..Default::default()
        })
        .await
        .expect("create carrier")
        .into_inner()
        .token;
    let carrier = Carrier::start(&carrier_token);
    carrier.attach(0, server).await;
    for h in handsets {
        carrier.sim.add_handset(&h.number, h.role.policy()).await.expect("enroll");
        admin
            .top_up_wallet(proto::TopUpWalletRequest {
                subscriber_number: h.number.clone(),
                amount_minor: TOP_UP,
                currency: CURRENCY.into(),
            })
            .await
            .expect("top up");
    }
    (admin_token, carrier, shops)
}

/// How the server ends in a crash test.
pub trait Crash {
    /// Ends `server` the way this crash does and returns once it is dead
    /// and whatever else the crash takes with it is gone (for a power cut,
    /// every byte that was not fsynced), so the next start sees what a
    /// machine would after rebooting.
    async fn crash(&mut self, server: ServerProcess);
}

/// What a run should expect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Nothing acknowledged is lost: any violation fails the test at once,
    /// with the seed that replays it.
    NoLoss,
    /// The server is known to lose acknowledged changes (a planted bug):
    /// the run stops at the first check that finds a violation and returns
    /// them, so the test can assert that the harness noticed.
    Loss,
}

/// A crash run: its seed, cycles and server.
pub struct Spec {
    /// Names the test in its messages.
    pub label: &'static str,
    /// The environment variable that replays a seed.
    pub seed_var: &'static str,
    pub seed: u64,
    pub cycles: u32,
    pub launch: Launch,
    pub expect: Expect,
}

impl Spec {
    /// A spec whose seed comes from `seed_var` when set (a replay), else
    /// at random, and whose cycle count comes from `cycles_var` when set.
    pub fn from_env(
        label: &'static str,
        seed_var: &'static str,
        cycles_var: &str,
        cycles: u32,
        launch: Launch,
    ) -> Spec {
        let seed = env_u64(seed_var).unwrap_or_else(rand::random);
        let cycles = env_u64(cycles_var).map_or(cycles, |n| u32::try_from(n).expect("cycle count fits u32"));
        Spec { label, seed_var, seed, cycles, launch, expect: Expect::NoLoss }
    }
}

/// What a run saw.
#[derive(Debug)]
pub struct Outcome {
    pub seed: u64,
    /// Crash cycles completed (recovery crashes not counted).
    pub cycles: u32,
    pub recovery_crashes: u64,
    pub trades: usize,
    pub refunds: usize,
    pub stats: Stats,
    /// Empty unless the spec expected loss.
    pub violations: Vec<String>,
    /// Where the run stopped: "final checks", or the check that found loss.
    pub stopped_at: String,
    pub elapsed: Duration,
}

impl Outcome {
    fn of(ctx: &Ctx, cycles: u32, stopped_at: &str, started: Instant) -> Outcome {
        let record = ctx.record();
        Outcome {
            seed: ctx.seed,
            cycles,
            recovery_crashes: record.stats.recovery_kills,
            trades: record.trades.len(),
            refunds: record.refunds.len(),
            stats: record.stats.clone(),
            violations: record.violations.clone(),
            stopped_at: stopped_at.to_owned(),
            elapsed: started.elapsed(),
        }
    }
}

/// After a check: with `Expect::NoLoss` a violation fails the test here;
/// with `Expect::Loss` it ends the run (`true`).
fn stop_here(ctx: &Ctx, expect: Expect, when: &str) -> bool {
    let record = ctx.record();
    match expect {
        Expect::NoLoss => {
            record.assert_clean(ctx.seed, ctx.seed_var, when);
            false
        }
        Expect::Loss => !record.violations.is_empty(),
    }
}

/// Runs `spec.cycles` crash cycles and the final checks (see the module
/// documentation), ending the server each time with `crash`.
pub async fn run(spec: Spec, crash: &mut impl Crash) -> Outcome {
    let started = Instant::now();
    let Spec { label, seed_var, seed, cycles, launch, expect } = spec;
    eprintln!("{label}: seed {seed}, {cycles} crash cycles ({seed_var}={seed} replays)");
    let mut rng = StdRng::seed_from_u64(seed);

    let mut handsets = Vec::new();
    for (role, count) in ROLES {
        for _ in 0..count {
            let number = format!("+8180300{:05}", handsets.len() + 1);
            handsets.push(Handset { number, role });
        }
    }

    let first = ServerProcess::start(&launch).await;
    let (admin_token, carrier, shops) = setup(&first, &launch.data_dir, &handsets).await;
    let ctx = Arc::new(Ctx {
        seed,
        seed_var,
        launch,
        handsets,
        shops,
        record: Mutex::new(Record::new(SHOPS)),
        killed: AtomicBool::new(false),
    });
    let mut server = Some(first);

    // Numbers the server processes, for the carrier's endpoint set.
    let mut generation = 0;
    for cycle in 1..=cycles {
        let session = match server.take() {
            Some(running) => Session::connect(&ctx, running).await.expect("shops attach to the first server"),
            None => {
                crash_in_recovery(&ctx, &mut rng, &carrier, &mut generation, crash).await;
                generation += 1;
                let when = format!("restart {generation}");
                let restarted = Session::restart(&ctx, &admin_token, &when).await;
                if stop_here(&ctx, expect, &when) {
                    return Outcome::of(&ctx, cycle - 1, &when, started);
                }
                let (session, _pending) = restarted.expect("a restart without violations has a session");
                carrier.attach(generation, &session.server).await;
                session
            }
        };
        ctx.killed.store(false, Ordering::SeqCst);
        let kill_after = rng.random_range(KILL_AFTER_MS);
        let kill_at = tokio::time::Instant::now() + Duration::from_millis(kill_after);
        let mut load = JoinSet::new();
        for shop in 0..SHOPS {
            load.spawn(watch_loop(ctx.clone(), session.channel.clone(), shop));
            for w in 0..WORKERS_PER_SHOP {
                let register = session.registers[shop].clone();
                let tag = format!("c{cycle}-s{shop}-w{w}");
                let seed = rng.random();
                load.spawn(shop_loop(ctx.clone(), register, shop, tag, seed));
            }
        }
        tokio::time::sleep_until(kill_at).await;
        ctx.killed.store(true, Ordering::SeqCst);
        crash.crash(session.server).await;
        carrier.detach(generation).await;
        join_all(&ctx, load, "load").await;
        {
            let mut record = ctx.record();
            let lost = record.unanswered_creates().len() + record.unanswered_refunds().len();
            record.stats.answers_lost += u64::try_from(lost).expect("fits");
            eprintln!(
                "cycle {cycle}: crashed after {kill_after} ms with {lost} answers in flight; \
                 {} trades, {} acknowledgements so far ({:.1} s)",
                record.trades.len(),
                record.stats.acknowledgements,
                started.elapsed().as_secs_f64()
            );
        }
        let when = format!("cycle {cycle}");
        if stop_here(&ctx, expect, &when) {
            return Outcome::of(&ctx, cycle, &when, started);
        }
    }

    // The last restart: recover, reconnect the carrier, and let every open
    // trade reach its end.
    crash_in_recovery(&ctx, &mut rng, &carrier, &mut generation, crash).await;
    generation += 1;
    let restarted = Session::restart(&ctx, &admin_token, "final restart").await;
    if stop_here(&ctx, expect, "final restart") {
        return Outcome::of(&ctx, cycles, "final restart", started);
    }
    let (session, pending) = restarted.expect("a restart without violations has a session");
    ctx.killed.store(false, Ordering::SeqCst);
    carrier.attach(generation, &session.server).await;
    wait_until_all_final(&ctx, &session).await;
    if stop_here(&ctx, expect, "final wait") {
        return Outcome::of(&ctx, cycles, "final wait", started);
    }
    check_history(&ctx, &session, &admin_token).await;
    // Offers the crash kept from the carrier are sent after the restart:
    // the trade became OFFERED, or the handset answered it (an answer
    // planned before the crash is sent first on reconnecting, and settles a
    // PENDING trade), or it expired first and the carrier got the
    // withdrawal.
    for id in pending {
        let (offered, final_state) = {
            let record = ctx.record();
            let final_state = record.ids.get(&id.to_string()).and_then(|k| record.trades[k].final_state);
            (record.history_has(&id.to_string(), S::Offered), final_state)
        };
        let answered = matches!(final_state, Some((S::Settled | S::Declined | S::Failed, _)));
        if !offered && !answered && carrier.sim.wait_for_withdraw(id, EVENT_WAIT).await.is_err() {
            ctx.record().violation(format!(
                "trade {id} was PENDING at the final restart and ended {final_state:?}, \
                 but the carrier got neither its offer nor its withdrawal"
            ));
        }
    }
    let counters = carrier.sim.counters();
    stop_here(&ctx, expect, "final checks");

    let outcome = Outcome::of(&ctx, cycles, "final checks", started);
    let record = ctx.record();
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    for rec in record.trades.values() {
        if let Some((s, r)) = rec.final_state {
            let name = match r {
                FR::Unspecified => format!("{s:?}"),
                other => format!("{s:?}/{other:?}"),
            };
            *outcomes.entry(name).or_default() += 1;
        }
    }
    let events: usize = record.events.iter().map(BTreeMap::len).sum();
    eprintln!(
        "{label} done: seed {seed}, {cycles} crash cycles + {} crashes in recovery, \
         {} trades {outcomes:?}, {} refunds, \
         {events} events delivered live, {:?}, carrier {counters:?}, {:.1} s",
        record.stats.recovery_kills,
        record.trades.len(),
        record.refunds.len(),
        record.stats,
        started.elapsed().as_secs_f64()
    );
    outcome
}

/// Sometimes (see `RECOVERY_KILL_ODDS`) starts the server, attaches the
/// carrier and crashes the server again moments later, while it is still
/// recovering. No shop is connected; the next restart checks everything.
async fn crash_in_recovery(
    ctx: &Ctx,
    rng: &mut StdRng,
    carrier: &Carrier,
    generation: &mut u32,
    crash: &mut impl Crash,
) {
    // Both drawn every time, so a replay makes the same later choices.
    let odds = rng.random_range(0..RECOVERY_KILL_ODDS);
    let after = rng.random_range(RECOVERY_KILL_MS);
    if odds != 0 {
        return;
    }
    *generation += 1;
    let server = ServerProcess::start(&ctx.launch).await;
    carrier.attach(*generation, &server).await;
    tokio::time::sleep(Duration::from_millis(after)).await;
    crash.crash(server).await;
    carrier.detach(*generation).await;
    ctx.record().stats.recovery_kills += 1;
    eprintln!("crashed server {generation} {after} ms into its recovery");
}

/// Long-polls every trade that is not known final until it is.
async fn wait_until_all_final(ctx: &Arc<Ctx>, session: &Session) {
    let open: Vec<(String, usize, TradeId, u32)> = {
        let record = ctx.record();
        record
            .trades
            .iter()
            .filter(|(_, r)| r.final_state.is_none())
            .filter_map(|(k, r)| {
                let id = TradeId::parse(r.id.as_deref()?).ok()?;
                Some((k.clone(), r.shop, id, r.request.ttl_seconds))
            })
            .collect()
    };
    let mut waits = JoinSet::new();
    for (key, shop, id, ttl) in open {
        let (ctx, register) = (ctx.clone(), session.registers[shop].clone());
        waits.spawn(async move {
            let wait = Duration::from_secs(u64::from(ttl)) + FINAL_MARGIN;
            match register.await_final(id, wait).await {
                Ok(t) => ctx.record().observe(&key, &t, "final AwaitTrade"),
                Err(e) => ctx.record().violation(format!("trade {id} (key {key}) never became final: {e}")),
            }
        });
    }
    while waits.join_next().await.is_some() {}
}

/// The whole history, once everything is final: events, outcomes,
/// postings, balances and the ledger.
async fn check_history(ctx: &Ctx, session: &Session, admin_token: &str) {
    for shop in 0..SHOPS {
        check_events(ctx, session, shop).await;
    }
    check_outcomes(ctx);
    check_postings_and_balances(ctx, session, admin_token).await;
    let report = match admin_client(&session.channel, admin_token).verify_ledger(proto::VerifyLedgerRequest {}).await {
        Ok(r) => r.into_inner(),
        Err(status) => return ctx.record().violation(format!("final VerifyLedger: {status}")),
    };
    let mut record = ctx.record();
    if !report.ok {
        record.violation(format!("final ledger violations: {:?}", report.violations));
    }
    let trades = u64::try_from(record.trades.len()).expect("fits");
    if report.trades_checked != trades {
        record.violation(format!("VerifyLedger checked {} trades; the shops know {trades}", report.trades_checked));
    }
}

/// Every trade is final, in a state its payer's handset policy allows.
fn check_outcomes(ctx: &Ctx) {
    let mut record = ctx.record();
    let mut found = Vec::new();
    for (key, rec) in &record.trades {
        let id = rec.id.as_deref().unwrap_or("?");
        let role = ctx.handsets[rec.payer].role;
        match rec.final_state {
            None => found.push(format!("trade {id} (key {key}) is not final")),
            Some((s, r)) if !role.allows(s, r) => {
                found.push(format!("trade {id} of a {role:?} payer ended {s:?}/{r:?}"))
            }
            Some(_) => {}
        }
    }
    record.violations.extend(found);
}

/// Reads a shop's events from 0 until every trade has its final event and
/// its refunds, proves there are no more, and compares with what was
/// delivered live.
async fn check_events(ctx: &Ctx, session: &Session, shop: usize) {
    let token = &ctx.shops[shop].token;
    let mut client = RegisterServiceClient::new(with_token(session.channel.clone(), token).expect("token"));
    // Per final trade: the events still to come that end its story (the
    // final state change and one per refund).
    let mut missing: HashMap<String, usize> = {
        let record = ctx.record();
        record
            .trades
            .values()
            .filter(|r| r.shop == shop && r.final_state.is_some())
            .filter_map(|r| Some((r.id.clone()?, r.refund_ids.len() + 1)))
            .collect()
    };
    let mut stream = client
        .watch_trades(proto::WatchTradesRequest { after_sequence: 0, register_id: String::new() })
        .await
        .expect("WatchTrades from 0")
        .into_inner();
    let mut all: Vec<proto::TradeEvent> = Vec::new();
    let mut found = Vec::new();
    while !missing.is_empty() {
        let e = match tokio::time::timeout(EVENT_WAIT, stream.message()).await {
            Ok(Ok(Some(e))) => e,
            other => {
                found.push(format!(
                    "shop {shop}: stream from 0 stopped after {} events ({other:?}) with {} trades incomplete",
                    all.len(),
                    missing.len()
                ));
                break;
            }
        };
        let trade = e.trade.clone().unwrap_or_default();
        let s = state_of(&trade);
        let counts = e.kind == EventKind::Refunded as i32 || s.is_final();
        if counts {
            if let Some(left) = missing.get_mut(&trade.trade_id) {
                *left -= 1;
                if *left == 0 {
                    missing.remove(&trade.trade_id);
                }
            }
        }
        all.push(e);
    }
    drop(stream);
    let n = u64::try_from(all.len()).expect("fits");
    // Nothing beyond: the server refuses to resume past its last event.
    match client.watch_trades(proto::WatchTradesRequest { after_sequence: n + 1, register_id: String::new() }).await {
        Err(status) if status.code() == Code::OutOfRange => {}
        other => found.push(format!(
            "shop {shop}: resuming after {} (past the {n} events of known trades) gave {:?}",
            n + 1,
            other.map(|_| "a stream")
        )),
    }

    let mut record = ctx.record();
    for (i, e) in (1..).zip(&all) {
        if e.sequence != i {
            found.push(format!("shop {shop}: event {i} from 0 has sequence {}", e.sequence));
            break;
        }
    }
    let live = &record.events[shop];
    if let Some((&last, _)) = live.last_key_value() {
        if last > n {
            found.push(format!("shop {shop}: event {last} was delivered live, the history has {n}"));
        }
    }
    for (seq, seen) in live {
        let index = usize::try_from(*seq).expect("fits") - 1;
        match all.get(index) {
            Some(now) if now == seen => {}
            Some(now) => found.push(format!("shop {shop}: event {seq} delivered live as {seen:?}, now {now:?}")),
            None => {}
        }
    }
    // Per trade: PENDING first, never backwards, one final, refunds after
    // SETTLED summing to refunded_minor, and the same as acknowledged.
    let mut history = HashMap::new();
    let mut answered_while_pending = 0;
    let mut by_trade: BTreeMap<&str, Vec<&proto::TradeEvent>> = BTreeMap::new();
    for e in &all {
        if let Some(t) = &e.trade {
            by_trade.entry(t.trade_id.as_str()).or_default().push(e);
        }
    }
    for (id, events) in &by_trade {
        let Some(key) = record.ids.get(*id) else {
            found.push(format!("shop {shop}: events for trade {id}, which no shop acknowledged"));
            continue;
        };
        let rec = &record.trades[key];
        let states: Vec<S> = events
            .iter()
            .filter(|e| e.kind == EventKind::StateChanged as i32)
            .filter_map(|e| e.trade.as_ref().map(state_of))
            .collect();
        // Without a crash the carrier acknowledges an offer before the
        // handset's answer; an answer planned before a crash and sent on
        // reconnecting can settle a trade that is still PENDING.
        if matches!(states.as_slice(), [S::Pending, S::Settled | S::Declined | S::Failed]) {
            answered_while_pending += 1;
        }
        history.insert(id.to_string(), states.clone());
        let finals = states.iter().filter(|s| s.is_final()).count();
        let ordered = states.windows(2).all(|w| rank(w[0]) < rank(w[1]));
        if states.first() != Some(&S::Pending) || !ordered || finals != 1 {
            found.push(format!("trade {id}: state events {states:?}"));
        }
        if rec.final_state.map(|f| f.0) != states.last().copied() {
            found.push(format!("trade {id}: last state event {:?}, acknowledged {:?}", states.last(), rec.final_state));
        }
        let refunds: Vec<(u64, u64)> = events
            .iter()
            .filter(|e| e.kind == EventKind::Refunded as i32)
            .map(|e| (e.refund_id, e.refund_minor))
            .collect();
        let answered: BTreeMap<u64, u64> = rec
            .refund_keys
            .iter()
            .filter_map(|k| record.refunds.get(k))
            .filter_map(|r| Some((r.answer?, r.amount)))
            .collect();
        let in_events: BTreeMap<u64, u64> = refunds.iter().copied().collect();
        if in_events != answered || refunds.len() != answered.len() {
            found.push(format!("trade {id}: refund events {refunds:?}, answered refunds {answered:?}"));
        }
    }
    record.stats.answered_while_pending += answered_while_pending;
    record.history.extend(history);
    record.violations.extend(found);
}

/// Postings: one settlement set per settled trade and none for others,
/// exactly the answered refunds, one top-up per handset; then balances.
async fn check_postings_and_balances(ctx: &Ctx, session: &Session, admin_token: &str) {
    let mut admin = admin_client(&session.channel, admin_token);
    let mut postings = Vec::new();
    let mut after = 0;
    loop {
        let page = admin
            .list_postings(proto::ListPostingsRequest { after_posting_id: after, limit: 1000 })
            .await
            .expect("ListPostings")
            .into_inner()
            .postings;
        let Some(last) = page.last() else { break };
        if last.posting_id <= after {
            panic!("ListPostings after {after} went back to {}", last.posting_id);
        }
        after = last.posting_id;
        postings.extend(page);
    }
    // (trade, kind) → the posting sets (a refund's id is its set id).
    let mut sets: HashMap<(String, String), BTreeSet<u64>> = HashMap::new();
    let mut top_up_sets = HashSet::new();
    for p in &postings {
        if p.kind == "TOP_UP" {
            top_up_sets.insert(p.set_id);
            continue;
        }
        sets.entry((p.trade_id.clone(), p.kind.clone())).or_default().insert(p.set_id);
    }
    let accounts = admin
        .list_accounts(proto::ListAccountsRequest { prefix: String::new() })
        .await
        .expect("ListAccounts")
        .into_inner()
        .accounts;
    let balance = |name: &str| accounts.iter().find(|a| a.name == name).map_or(0, |a| a.balance_minor);

    let mut record = ctx.record();
    let mut found = Vec::new();
    if top_up_sets.len() != ctx.handsets.len() {
        found.push(format!("{} top-up posting sets for {} top-ups", top_up_sets.len(), ctx.handsets.len()));
    }
    let mut wallets = vec![i128::from(TOP_UP); ctx.handsets.len()];
    let mut payables = [0i128; SHOPS];
    for rec in record.trades.values() {
        let Some(id) = rec.id.clone() else { continue };
        let settled = rec.final_state.map(|f| f.0) == Some(S::Settled);
        let settlements = sets.remove(&(id.clone(), "SETTLEMENT".to_owned())).unwrap_or_default();
        if settlements.len() != usize::from(settled) {
            found.push(format!("trade {id} ({:?}) has {} settlement posting sets", rec.final_state, settlements.len()));
        }
        let refund_sets: BTreeSet<u64> = sets.remove(&(id.clone(), "REFUND".to_owned())).unwrap_or_default();
        let answered: BTreeSet<u64> = rec.refund_keys.iter().filter_map(|k| record.refunds.get(k)?.answer).collect();
        if refund_sets != answered {
            found.push(format!("trade {id}: refund posting sets {refund_sets:?}, answered refunds {answered:?}"));
        }
        let refunded: u64 = rec.refund_keys.iter().filter_map(|k| record.refunds.get(k)).map(|r| r.amount).sum();
        if refunded != rec.refunded {
            found.push(format!("trade {id}: refunds asked sum to {refunded}, trade shows {}", rec.refunded));
        }
        if settled {
            let net = i128::from(rec.request.amount_minor) - i128::from(refunded);
            wallets[rec.payer] -= net;
            payables[rec.shop] += net;
        }
    }
    for ((trade, kind), left) in &sets {
        found.push(format!("{} {kind} posting sets for trade {trade:?}, which no shop acknowledged", left.len()));
    }
    for (i, h) in ctx.handsets.iter().enumerate() {
        let name = format!("wallet:{}:{CURRENCY}", h.number);
        if i128::from(balance(&name)) != wallets[i] {
            found.push(format!("{name} is {}, expected {}", balance(&name), wallets[i]));
        }
    }
    for (i, shop) in ctx.shops.iter().enumerate() {
        let name = format!("shop:{}:{CURRENCY}", shop.id);
        if i128::from(balance(&name)) != payables[i] {
            found.push(format!("{name} is {}, expected {}", balance(&name), payables[i]));
        }
    }
    let funding = format!("system:funding:{CURRENCY}");
    let topped = i128::from(TOP_UP) * i128::try_from(ctx.handsets.len()).expect("fits");
    if i128::from(balance(&funding)) != -topped {
        found.push(format!("{funding} is {}, expected {}", balance(&funding), -topped));
    }
    record.violations.extend(found);
}
