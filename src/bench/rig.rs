//! What every benchmark load stands on: the carrier and shops made through
//! the admin API, a simulated carrier with its handsets (enrolled and
//! topped up), one connection per shop with its open registers, and the
//! shops' `WatchTrades` streams, which hand each final event to whoever
//! waits for that trade and count the OFFERED ones.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context;
use syncpay::client::{connect, with_token, AuthedChannel};
use syncpay::proto::admin_service_client::AdminServiceClient;
use syncpay::proto::register_service_client::RegisterServiceClient;
use syncpay::proto::{self, TradeState};
use syncpay::terminal_sim::{CarrierSim, Policy};
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tonic::transport::Channel;

use super::child::{mib, Memory, START_WAIT};
use super::{description, number, seq_of, Setup, Target, CURRENCY, ERROR_PAUSE, FINAL_WAIT, PRICE, TOP_UP};

/// Enrollments and top-ups in flight during setup.
const SETUP_CONCURRENCY: usize = 32;
/// Rigs built by this process, for unique names.
static RIGS: AtomicU64 = AtomicU64::new(0);
/// How often a long run reports progress.
const PROGRESS: Duration = Duration::from_secs(1);

/// What to set up.
pub struct Plan {
    pub shops: usize,
    pub registers_per_shop: usize,
    pub handsets: usize,
    /// How every handset answers (changeable later through `sim`).
    pub policy: Policy,
}

pub struct Rig {
    pub sim: Arc<CarrierSim>,
    pub carrier_token: String,
    pub shops: Vec<RigShop>,
    /// The handsets' numbers, `number(0)`…
    pub numbers: Arc<Vec<String>>,
}

pub struct RigShop {
    pub token: String,
    pub client: RegisterServiceClient<AuthedChannel>,
    pub registers: Vec<String>,
}

impl Rig {
    /// Every register of every shop with its shop's client, shop by shop.
    pub fn registers(&self) -> Vec<(RegisterServiceClient<AuthedChannel>, String)> {
        self.shops.iter().flat_map(|s| s.registers.iter().map(|r| (s.client.clone(), r.clone()))).collect()
    }
}

pub async fn build(target: &Target, setup: &Setup, plan: &Plan) -> anyhow::Result<Rig> {
    let pid = target.pid.map_or_else(|| "unknown".to_owned(), |p| p.to_string());
    eprintln!(
        "bench: setting up {} shop(s) × {} register(s), {} handset(s) on {} (server pid {pid})",
        plan.shops, plan.registers_per_shop, plan.handsets, target.url
    );
    let admin_channel = connect(&target.url).await.with_context(|| format!("connecting to {}", target.url))?;
    let (shop_tokens, carrier_token) = match setup {
        Setup::Syncpay { admin_token } => {
            let mut admin = AdminServiceClient::new(with_token(admin_channel.clone(), admin_token)?);
            // Unique per rig: several targets may share one database.
            let run = format!("{}-{}", std::process::id(), RIGS.fetch_add(1, Ordering::Relaxed));
            let carrier = admin
                .create_carrier(proto::CreateCarrierRequest {
                    carrier_id: format!("bench-carrier-{run}"),
                    display_name: "Bench Mobile".into(),
                    ip_prefixes: vec![],
                    fee_bps: 0,
                    ..Default::default()
                })
                .await
                .context("creating the carrier")?
                .into_inner()
                .token;
            let mut shops = Vec::new();
            for i in 0..plan.shops {
                let token = admin
                    .create_shop(proto::CreateShopRequest {
                        shop_id: format!("bench-{run}-shop-{i}"),
                        display_name: format!("Bench shop {i}"),
                    })
                    .await
                    .context("creating a shop")?
                    .into_inner()
                    .token;
                shops.push(token);
            }
            (shops, carrier)
        }
        Setup::Ceiling => ((0..plan.shops).map(|i| format!("bench-shop-{i}")).collect(), "carrier".to_owned()),
    };

    let sim = Arc::new(CarrierSim::start(admin_channel.clone(), &carrier_token)?);
    let mut jobs = JoinSet::new();
    for i in 0..plan.handsets {
        if jobs.len() >= SETUP_CONCURRENCY {
            if let Some(done) = jobs.join_next().await {
                done??;
            }
        }
        let sim = sim.clone();
        let admin = match setup {
            Setup::Syncpay { admin_token } => {
                Some(AdminServiceClient::new(with_token(admin_channel.clone(), admin_token)?))
            }
            Setup::Ceiling => None,
        };
        let policy = plan.policy;
        jobs.spawn(async move {
            let number = number(i);
            sim.add_handset(&number, policy).await.with_context(|| format!("adding handset {i}"))?;
            if let Some(mut admin) = admin {
                admin
                    .top_up_wallet(proto::TopUpWalletRequest {
                        subscriber_number: number,
                        amount_minor: TOP_UP,
                        currency: CURRENCY.into(),
                    })
                    .await
                    .context("topping up")?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = jobs.join_next().await {
        done??;
    }
    sim.wait_connected(START_WAIT).await.context("waiting for the carrier relay")?;

    let mut shops = Vec::new();
    for (i, token) in shop_tokens.into_iter().enumerate() {
        // One connection per shop, as separate shops would have, spread
        // over the nodes.
        let channel: Channel = connect(target.shop_url(i)).await?;
        let mut client = RegisterServiceClient::new(with_token(channel, &token)?);
        let mut registers = Vec::new();
        for r in 0..plan.registers_per_shop {
            let register = client
                .open_register(proto::OpenRegisterRequest { label: format!("bench {r}") })
                .await
                .context("opening a register")?
                .into_inner();
            registers.push(register.register_id);
        }
        shops.push(RigShop { token, client, registers });
    }
    let numbers = Arc::new((0..plan.handsets).map(number).collect());
    Ok(Rig { sim, carrier_token, shops, numbers })
}

/// A final event as a shop's stream delivered it.
pub struct Final {
    pub at: Instant,
    pub state: i32,
    pub failure: i32,
}

/// The shops' event streams, merged.
pub struct Events {
    pending: Mutex<HashMap<u64, oneshot::Sender<Final>>>,
    offered: AtomicU64,
    /// Final events of bench trades nobody waited for (e.g. an open trade
    /// that expired).
    unclaimed: Mutex<HashMap<String, u64>>,
}

impl Events {
    /// Opens one `WatchTrades` stream per shop (from the start of its
    /// events) and feeds them into one `Events`; the readers run in `tasks`.
    pub async fn watch(rig: &Rig, tasks: &mut JoinSet<()>) -> anyhow::Result<Arc<Events>> {
        let events =
            Arc::new(Events { pending: Mutex::default(), offered: AtomicU64::new(0), unclaimed: Mutex::default() });
        for shop in &rig.shops {
            let mut stream = shop
                .client
                .clone()
                .watch_trades(proto::WatchTradesRequest { after_sequence: 0, register_id: String::new() })
                .await
                .context("watching trades")?
                .into_inner();
            let feed = events.clone();
            tasks.spawn(async move {
                while let Ok(Some(event)) = stream.message().await {
                    if let Some(trade) = event.trade {
                        feed.on_trade(&trade);
                    }
                }
            });
        }
        Ok(events)
    }

    fn on_trade(&self, trade: &proto::Trade) {
        let state = TradeState::try_from(trade.state);
        if matches!(state, Ok(TradeState::Offered)) {
            self.offered.fetch_add(1, Ordering::Relaxed);
        }
        if matches!(state, Ok(TradeState::Pending | TradeState::Offered)) {
            return;
        }
        let at = Instant::now();
        let Some(seq) = seq_of(&trade.description) else { return };
        match lock(&self.pending).remove(&seq) {
            Some(tx) => {
                let _ = tx.send(Final { at, state: trade.state, failure: trade.failure_reason });
            }
            None => {
                let name = state.map_or("?", |s| s.as_str_name()).to_owned();
                *lock(&self.unclaimed).entry(name).or_insert(0) += 1;
            }
        }
    }

    /// Call before creating trade `seq`: its final event comes here.
    pub fn expect(&self, seq: u64) -> oneshot::Receiver<Final> {
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(seq, tx);
        rx
    }

    /// Stops waiting for trade `seq` (its creation failed or timed out).
    pub fn forget(&self, seq: u64) {
        lock(&self.pending).remove(&seq);
    }

    /// OFFERED events seen so far.
    pub fn offered(&self) -> u64 {
        self.offered.load(Ordering::Relaxed)
    }

    pub fn unclaimed(&self) -> HashMap<String, u64> {
        lock(&self.unclaimed).clone()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The CreateTrade of bench trade `seq`: `PRICE` from `payer` at `register`;
/// `ttl_seconds` 0 is the server's default.
pub fn trade_request(register_id: &str, payer: &str, seq: u64, ttl_seconds: u32) -> proto::CreateTradeRequest {
    proto::CreateTradeRequest {
        register_id: register_id.to_owned(),
        amount_minor: PRICE,
        currency: CURRENCY.into(),
        description: description(seq),
        ttl_seconds,
        idempotency_key: String::new(),
        payer: Some(proto::create_trade_request::Payer::SubscriberNumber(payer.to_owned())),
    }
}

/// What `settle` did.
pub struct Settled {
    pub settled: u64,
    pub errors: BTreeMap<String, u64>,
    pub elapsed: Duration,
}

impl Settled {
    pub fn per_second(&self) -> f64 {
        self.settled as f64 / self.elapsed.as_secs_f64().max(f64::MIN_POSITIVE)
    }
}

/// Creates the trades numbered `seqs` with `inflight` at once (round-robin
/// over every register of the rig and its handsets, which must approve)
/// and waits for each one's final event; a failed create is counted, not
/// retried. Prints progress once a second, with the server's memory when
/// `pid` is known.
pub async fn settle(
    rig: &Rig,
    events: &Arc<Events>,
    seqs: Range<u64>,
    inflight: usize,
    pid: Option<u32>,
    label: &str,
) -> anyhow::Result<Settled> {
    let registers = Arc::new(rig.registers());
    let next = Arc::new(AtomicU64::new(seqs.start));
    let settled = Arc::new(AtomicU64::new(0));
    let errors: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let start = Instant::now();
    let mut workers = JoinSet::new();
    for _ in 0..inflight {
        let (registers, numbers, events, next, settled, errors) =
            (registers.clone(), rig.numbers.clone(), events.clone(), next.clone(), settled.clone(), errors.clone());
        let end = seqs.end;
        workers.spawn(async move {
            let error = |kind: String| *lock(&errors).entry(kind).or_insert(0) += 1;
            loop {
                let seq = next.fetch_add(1, Ordering::Relaxed);
                if seq >= end {
                    return;
                }
                let i = usize::try_from(seq).unwrap_or(0);
                let (client, register_id) = &registers[i % registers.len()];
                let rx = events.expect(seq);
                let request = trade_request(register_id, &numbers[i % numbers.len()], seq, 0);
                if let Err(status) = client.clone().create_trade(request).await {
                    events.forget(seq);
                    error(format!("create {:?}", status.code()));
                    tokio::time::sleep(ERROR_PAUSE).await;
                    continue;
                }
                match tokio::time::timeout(FINAL_WAIT, rx).await {
                    Ok(Ok(done)) if done.state == TradeState::Settled as i32 => {
                        settled.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Ok(done)) => error(final_name(&done)),
                    Ok(Err(_)) => error("event stream ended".to_owned()),
                    Err(_) => {
                        events.forget(seq);
                        error("timeout".to_owned());
                    }
                }
            }
        });
    }
    let total = seqs.end.saturating_sub(seqs.start);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + PROGRESS, PROGRESS);
    let mut last = 0;
    loop {
        tokio::select! {
            done = workers.join_next() => match done {
                Some(done) => done.context("a worker failed")?,
                None => break,
            },
            _ = tick.tick() => {
                let done = settled.load(Ordering::Relaxed);
                let failed: u64 = lock(&errors).values().sum();
                let rss = pid.and_then(Memory::of).map_or_else(String::new, |m| format!("  RSS {:.1} MiB", mib(m.rss)));
                eprint!(
                    "\r  {label} t={:>4}s  settled {:>6}/s  total {done:>8}/{total}  errors {failed}{rss}   ",
                    start.elapsed().as_secs(),
                    done - last
                );
                last = done;
            }
        }
    }
    eprintln!();
    let errors = lock(&errors).clone();
    Ok(Settled { settled: settled.load(Ordering::Relaxed), errors, elapsed: start.elapsed() })
}

/// "final EXPIRED TIMED_OUT", say.
pub fn final_name(done: &Final) -> String {
    format!(
        "final {} {}",
        TradeState::try_from(done.state).map_or("?", |s| s.as_str_name()),
        proto::FailureReason::try_from(done.failure).map_or("?", |r| r.as_str_name())
    )
}
