//! The benchmark behind `syncpay bench` (`cli/bench.rs` parses its
//! arguments and presents its report): a load generator. It starts the server
//! as a child process on a temporary store (so the server's CPU and peak
//! memory are its own), opens a register for each of several shops, runs a
//! simulated carrier whose handsets all approve, keeps `--inflight` trades
//! open for `--duration`, and measures settled trades per second and the
//! latency from sending CreateTrade to receiving the SETTLED event on the
//! shop's WatchTrades stream. In the same run it drives the transport
//! ceiling (`bench/ceiling.rs`: the same gRPC messages per trade, no
//! storage) the same way, and reports syncpay as a share of it. Writes a
//! JSON result (`--out`) and an SVG chart (`--svg`).
//!
//! Two scale modes measure instead what trades cost kept: memory per open
//! trade (`--open-trades N`, `bench/open.rs`), and a store of N settled
//! trades with the time from a restart on it to the first settlement
//! (`--fill N --keep-store DIR`, `--restart-only DIR`; `bench/fill.rs`,
//! `bench/restart.rs`). `bench/child.rs` runs and reads the child server
//! (through `syncpay::child`), `bench/rig.rs` sets up shops, registers,
//! carrier and handsets.

mod ceiling;
mod child;
mod fill;
mod open;
mod postgres;
mod restart;
mod rig;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use syncpay::client::AuthedChannel;
use syncpay::proto::register_service_client::RegisterServiceClient;
use syncpay::proto::{self, TradeState};
use syncpay::terminal_sim::Policy;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use child::{Memory, Server};

/// Price of every trade, in JPY (exponent 0).
const PRICE: u64 = 100;
const CURRENCY: &str = "JPY";
/// Each handset's wallet: enough for any run (10^10 trades at `PRICE`).
const TOP_UP: u64 = 1_000_000_000_000;
/// How long one trade may take before it counts as lost ("timeout").
const FINAL_WAIT: Duration = Duration::from_secs(30);
/// Latency histogram range: 1 µs to 2 min, 3 significant digits.
const MAX_LATENCY_US: u64 = 120_000_000;
/// Pause after a failed CreateTrade, so an erroring server is not spun on.
const ERROR_PAUSE: Duration = Duration::from_millis(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// syncpay, then the ceiling, and the ratio.
    Both,
    /// syncpay only.
    Syncpay,
    /// The transport ceiling only.
    Ceiling,
}

/// What to run (the flags of `syncpay bench`; `cli/bench.rs` documents each).
pub struct Options {
    pub mode: Mode,
    pub duration: Duration,
    pub inflight: usize,
    /// `--rate`: trades started per second (open loop).
    pub rate: Option<u32>,
    pub shops: usize,
    pub handsets: usize,
    /// fsync | flush-only, for the child server.
    pub durability: String,
    pub server: Option<String>,
    pub token_file: Option<PathBuf>,
    pub server_pid: Option<u32>,
    pub data_dir: Option<PathBuf>,
    pub open_trades: Option<u64>,
    pub warmup: u64,
    pub fill: Option<u64>,
    pub keep_store: Option<PathBuf>,
    pub restart_only: Option<PathBuf>,
    /// `cluster` or a URL: also measure the PostgreSQL backend.
    pub postgres: Option<String>,
    /// With `postgres`: the numbers of nodes to measure, each on a fresh
    /// database (on a cluster) one after another.
    pub pg_nodes: Vec<usize>,
}

/// A request the benchmark cannot run as asked (the command exits 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Usage(pub String);

fn usage(message: impl Into<String>) -> anyhow::Error {
    Usage(message.into()).into()
}

/// An operator token from a file.
fn read_token(file: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| usage(format!("reading the operator token from {}: {e}", file.display())))?;
    match text.trim() {
        "" => Err(usage(format!("{} holds no operator token", file.display()))),
        token => Ok(token.to_owned()),
    }
}

/// What a run measured.
pub enum Report {
    /// Throughput against the ceiling: each target's figures, syncpay's
    /// share of the ceiling, and the whole as JSON.
    Throughput { results: Vec<Measured>, load: Load, ratio: Option<f64>, json: Value },
    /// A scale mode's report, as JSON.
    Scale(Value),
}

/// Runs the transport ceiling server on a free loopback port and prints its
/// address (the benchmark's own child process).
pub async fn serve_ceiling() -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("binding 127.0.0.1:0")?;
    // The parent reads this line for the address.
    eprintln!("syncpay ceiling serving on http://{}", listener.local_addr()?);
    Ok(ceiling::serve(listener).await?)
}

pub async fn run(args: &Options) -> anyhow::Result<Report> {
    if args.inflight == 0 || args.shops == 0 || args.handsets == 0 {
        return Err(usage("--inflight, --shops and --handsets must be at least 1"));
    }
    if !matches!(args.durability.as_str(), "fsync" | "flush-only") {
        return Err(usage("--durability must be fsync or flush-only"));
    }
    if let Some(result) = scale(args).await? {
        return Ok(Report::Scale(result));
    }
    let load = Load {
        duration: args.duration,
        inflight: args.inflight,
        rate: args.rate.map(f64::from),
        shops: args.shops,
        handsets: args.handsets,
    };
    let pace = match args.rate {
        Some(rate) => format!("{rate} trades/s started (open loop, at most {} in flight)", args.inflight),
        None => format!("{} in flight", args.inflight),
    };
    eprintln!(
        "bench: {} s, {pace}, {} shop(s), {} handsets, durability {}, {} cores, load average {}",
        args.duration.as_secs_f64(),
        args.shops,
        args.handsets,
        args.durability,
        cores(),
        load_average()
    );
    let machine = json!({ "nproc": cores(), "load_average_before": load_average() });

    let mut results = Vec::new();
    if matches!(args.mode, Mode::Both | Mode::Syncpay) {
        let result = match &args.server {
            Some(url) => {
                let token_file = args.token_file.as_deref().ok_or_else(|| usage("--server needs --token-file"))?;
                let token = read_token(token_file)?;
                let target = Target::one(url.clone(), args.server_pid, args.data_dir.clone());
                measure("syncpay", &target, Setup::Syncpay { admin_token: token }, &load).await?
            }
            None => {
                let dir = tempfile::tempdir().context("creating a temporary folder")?;
                let mut child = Server::spawn(&serve_args(dir.path(), "127.0.0.1:0", &args.durability)).await?;
                let admin_token = read_token(&dir.path().join("admin.token"))?;
                let target = Target::one(child.url.clone(), Some(child.pid()), Some(dir.path().to_owned()));
                let result = measure("syncpay", &target, Setup::Syncpay { admin_token }, &load).await;
                child.kill();
                result?
            }
        };
        results.push(result);
    }
    if let (Some(pg), Mode::Both | Mode::Syncpay) = (&args.postgres, args.mode) {
        if args.pg_nodes.is_empty() || args.pg_nodes.iter().any(|n| !(1..=postgres::MAX_NODES).contains(n)) {
            return Err(usage(format!("--pg-nodes: between 1 and {} nodes", postgres::MAX_NODES)));
        }
        let source = postgres::Source::open(pg)?;
        for &n in &args.pg_nodes {
            let url = source.database(n)?;
            let mut nodes = postgres::Nodes::start(n, &url, &args.durability).await?;
            let first = &nodes.servers[0];
            let target = Target {
                url: first.url.clone(),
                pid: Some(first.pid()),
                data_dir: None,
                more_nodes: nodes.servers[1..].iter().map(|s| (s.url.clone(), s.pid())).collect(),
                probe: Some(postgres::ProbeSpec::new(&source, &url)),
            };
            let setup = Setup::Syncpay { admin_token: nodes.admin_token.clone() };
            let result = measure(postgres::NAMES[n - 1], &target, setup, &load).await;
            nodes.kill();
            results.push(result?);
        }
    }
    if matches!(args.mode, Mode::Both | Mode::Ceiling) {
        let mut child = Server::spawn(&["bench".to_owned(), "--serve-ceiling".to_owned()]).await?;
        let target = Target::one(child.url.clone(), Some(child.pid()), None);
        let result = measure("ceiling", &target, Setup::Ceiling, &load).await;
        child.kill();
        results.push(result?);
    }

    let by_name: HashMap<&str, &Measured> = results.iter().map(|m| (m.name, m)).collect();
    let ratio = match (by_name.get("syncpay"), by_name.get("ceiling")) {
        (Some(s), Some(c)) if c.throughput() > 0.0 => Some(s.throughput() / c.throughput()),
        _ => None,
    };
    let json = json!({
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "machine": machine,
        "load_average_after": load_average(),
        "config": {
            "duration_s": args.duration.as_secs_f64(),
            "inflight": args.inflight,
            "rate_per_s": args.rate,
            "shops": args.shops,
            "handsets": args.handsets,
            "durability": args.durability,
        },
        "results": results.iter().map(Measured::to_json).collect::<Vec<_>>(),
        "syncpay_over_ceiling": ratio,
        "over_sled": over_sled(&results),
        "over_ceiling": over(&results, "ceiling"),
    });
    Ok(Report::Throughput { results, load, ratio, json })
}

/// Each other target's throughput as a share of `base`'s, by name.
fn over(results: &[Measured], base: &str) -> BTreeMap<&'static str, f64> {
    let Some(b) = results.iter().find(|m| m.name == base).map(Measured::throughput).filter(|t| *t > 0.0) else {
        return BTreeMap::new();
    };
    results.iter().filter(|m| m.name != base).map(|m| (m.name, m.throughput() / b)).collect()
}

/// The PostgreSQL targets' throughput as a share of sled's ("syncpay").
pub fn over_sled(results: &[Measured]) -> BTreeMap<&'static str, f64> {
    over(results, "syncpay").into_iter().filter(|(n, _)| n.starts_with("postgres")).collect()
}

/// The scale modes (--open-trades, --fill, --restart-only), if one was
/// asked for: their report, with the machine's load around it.
async fn scale(args: &Options) -> anyhow::Result<Option<Value>> {
    let started = json!({ "nproc": cores(), "load_average_before": load_average() });
    eprintln!("bench: {} cores, load average {}", cores(), load_average());
    let result = match (args.open_trades, args.fill, &args.keep_store, &args.restart_only) {
        (Some(n), _, _, _) => open::run(args, n).await?,
        (_, Some(n), Some(dir), _) => fill::fill(args, n, dir).await?,
        (_, _, _, Some(dir)) => fill::restart_only(args, dir).await?,
        _ => return Ok(None),
    };
    Ok(Some(json!({
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "machine": started,
        "load_average_after": load_average(),
        "durability": args.durability,
        "result": result,
    })))
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The 1, 5 and 15 minute load averages, as the kernel prints them.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// `syncpay serve` as the benchmark runs it: on `data_dir`, without the
/// metrics endpoint or the console (and so without a metrics recorder), and with the two anti-spam rates off — a benchmark
/// drives few buyers far faster than people would, so the rates would
/// measure themselves. Every other limit is at its default.
fn serve_args(data_dir: &Path, listen: &str, durability: &str) -> Vec<String> {
    [
        "serve",
        "--listen",
        listen,
        "--metrics-listen",
        "off",
        "--console-listen",
        "off",
        "--set",
        "limits.subscriber_offers_per_minute=0",
        "--set",
        "limits.shop_trades_per_second=0",
        "--log-level",
        "warn",
        "--durability",
        durability,
        "--data-dir",
    ]
    .into_iter()
    .map(str::to_owned)
    .chain([data_dir.display().to_string()])
    .collect()
}

/// Where the load goes and where its costs can be read.
struct Target {
    /// The (first) node: the operator's calls, the carrier's relay, and
    /// shops 0, n, 2n, … of n nodes.
    url: String,
    pid: Option<u32>,
    data_dir: Option<PathBuf>,
    /// Further nodes on the same database (URL and process): shop i
    /// connects to node i mod n.
    more_nodes: Vec<(String, u32)>,
    /// The database to read the PostgreSQL path's costs from.
    probe: Option<postgres::ProbeSpec>,
}

impl Target {
    /// One server.
    fn one(url: String, pid: Option<u32>, data_dir: Option<PathBuf>) -> Target {
        Target { url, pid, data_dir, more_nodes: Vec::new(), probe: None }
    }

    /// The node shop `i` connects to.
    fn shop_url(&self, i: usize) -> &str {
        match i % (self.more_nodes.len() + 1) {
            0 => &self.url,
            k => &self.more_nodes[k - 1].0,
        }
    }

    /// Every node's process.
    fn pids(&self) -> Vec<u32> {
        self.pid.into_iter().chain(self.more_nodes.iter().map(|(_, p)| *p)).collect()
    }

    /// CPU of every node so far (none if one cannot be read).
    fn cpu(&self) -> Option<Duration> {
        let pids = self.pids();
        if pids.is_empty() {
            return None;
        }
        pids.into_iter().map(process_cpu).sum()
    }
}

enum Setup {
    /// A real server: shops, carrier and wallets made with the operator token.
    Syncpay { admin_token: String },
    /// The ceiling: tokens are just names.
    Ceiling,
}

/// The load a throughput run kept up.
pub struct Load {
    pub duration: Duration,
    pub inflight: usize,
    /// Trades started per second (open loop), instead of `inflight` kept
    /// open (closed loop); `inflight` then caps how many are open.
    pub rate: Option<f64>,
    pub shops: usize,
    pub handsets: usize,
}

/// One target's figures.
pub struct Measured {
    pub name: &'static str,
    pub window: Duration,
    /// Settled within the window.
    pub settled: u64,
    /// Settled in all, including those that finished after the window.
    pub settled_total: u64,
    pub latency: Histogram<u64>,
    /// Of the same trades: sending CreateTrade to its response (the trade
    /// durable as PENDING), the first part of `latency`.
    pub create_latency: Histogram<u64>,
    pub per_second: Vec<Second>,
    pub errors: BTreeMap<String, u64>,
    /// Server CPU (user + system) over the window.
    pub server_cpu: Option<Duration>,
    /// This process's CPU (load generator + carrier simulator) over the window.
    pub client_cpu: Option<Duration>,
    pub peak_rss_bytes: Option<u64>,
    pub disk_bytes: Option<u64>,
    /// The PostgreSQL path's costs over the window (`postgres::Probe`).
    pub database: Option<Value>,
}

impl Measured {
    pub fn throughput(&self) -> f64 {
        self.settled as f64 / self.window.as_secs_f64()
    }

    fn to_json(&self) -> Value {
        let ms = |q: f64| self.latency.value_at_quantile(q) as f64 / 1000.0;
        let per_trade =
            |d: Option<Duration>| d.filter(|_| self.settled > 0).map(|d| d.as_secs_f64() * 1e6 / self.settled as f64);
        json!({
            "name": self.name,
            "window_s": self.window.as_secs_f64(),
            "settled": self.settled,
            "settled_total": self.settled_total,
            "settled_per_s": self.throughput(),
            "latency_ms": {
                "p50": ms(0.5), "p90": ms(0.9), "p99": ms(0.99), "p999": ms(0.999),
                "max": self.latency.max() as f64 / 1000.0, "mean": self.latency.mean() / 1000.0,
            },
            "create_latency_ms": {
                "p50": self.create_latency.value_at_quantile(0.5) as f64 / 1000.0,
                "p99": self.create_latency.value_at_quantile(0.99) as f64 / 1000.0,
                "mean": self.create_latency.mean() / 1000.0,
            },
            "server_cpu_us_per_trade": per_trade(self.server_cpu),
            "server_cpu_cores": self.server_cpu.map(|d| d.as_secs_f64() / self.window.as_secs_f64()),
            "client_cpu_us_per_trade": per_trade(self.client_cpu),
            "server_peak_rss_bytes": self.peak_rss_bytes,
            "disk_bytes": self.disk_bytes,
            "disk_bytes_per_settled": self.disk_bytes.filter(|_| self.settled_total > 0)
                .map(|b| b as f64 / self.settled_total as f64),
            "errors": self.errors,
            "database": self.database,
            "per_second": self.per_second.iter().enumerate().map(|(i, s)| json!({
                "t": i + 1, "settled": s.settled,
                "p50_ms": s.quantile_ms(0.5), "p90_ms": s.quantile_ms(0.9), "p99_ms": s.quantile_ms(0.99),
            })).collect::<Vec<_>>(),
        })
    }
}

/// Latencies of the trades that settled in one second of the run.
pub struct Second {
    pub settled: u64,
    pub latency: Histogram<u64>,
}

impl Second {
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        (self.settled > 0).then(|| self.latency.value_at_quantile(q) as f64 / 1000.0)
    }
}

fn histogram() -> anyhow::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).map_err(|e| anyhow!("histogram: {e}"))
}

/// What the workers record, shared.
/// What one bench trade needs: the shops, the payers, the merged event
/// streams and the recorder.
struct Trader {
    shops: Vec<Arc<Shop>>,
    numbers: Arc<Vec<String>>,
    events: Arc<rig::Events>,
    recorder: Arc<Recorder>,
}

impl Trader {
    /// Creates bench trade `seq` and waits for its final event, recording
    /// its latency from `sent` (when it was sent, or due); false when
    /// CreateTrade failed.
    async fn trade(&self, seq: u64, sent: Instant) -> bool {
        let i = usize::try_from(seq).unwrap_or(0);
        let shop = &self.shops[i % self.shops.len()];
        let rx = self.events.expect(seq);
        let request = proto::CreateTradeRequest {
            register_id: shop.register_id.clone(),
            amount_minor: PRICE,
            currency: CURRENCY.into(),
            description: description(seq),
            ttl_seconds: 0,
            idempotency_key: String::new(),
            payer: Some(proto::create_trade_request::Payer::SubscriberNumber(
                self.numbers[i % self.numbers.len()].clone(),
            )),
        };
        let created = match shop.client.clone().create_trade(request).await {
            Ok(_) => Instant::now(),
            Err(status) => {
                self.events.forget(seq);
                self.recorder.error(format!("create {:?}", status.code()));
                return false;
            }
        };
        match tokio::time::timeout(FINAL_WAIT, rx).await {
            Ok(Ok(done)) if done.state == TradeState::Settled as i32 => self.recorder.settled(sent, created, done.at),
            Ok(Ok(done)) => self.recorder.error(format!(
                "final {} {}",
                TradeState::try_from(done.state).map_or("?", |s| s.as_str_name()),
                proto::FailureReason::try_from(done.failure).map_or("?", |r| r.as_str_name())
            )),
            Ok(Err(_)) => self.recorder.error("event stream ended".to_owned()),
            Err(_) => {
                self.events.forget(seq);
                self.recorder.error("timeout".to_owned());
            }
        }
        true
    }
}

struct Recorder {
    start: Instant,
    window: Duration,
    inner: Mutex<Recorded>,
}

struct Recorded {
    settled_total: u64,
    latency: Histogram<u64>,
    create_latency: Histogram<u64>,
    per_second: Vec<Second>,
    errors: BTreeMap<String, u64>,
}

impl Recorder {
    fn lock(&self) -> MutexGuard<'_, Recorded> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn settled(&self, sent: Instant, created: Instant, received: Instant) {
        let us = |to: Instant| u64::try_from(to.saturating_duration_since(sent).as_micros()).unwrap_or(u64::MAX).max(1);
        let (us, create_us) = (us(received), us(created));
        let at = received.saturating_duration_since(self.start);
        let mut r = self.lock();
        r.settled_total += 1;
        if at >= self.window {
            return;
        }
        r.latency.saturating_record(us);
        r.create_latency.saturating_record(create_us);
        let second = usize::try_from(at.as_secs()).unwrap_or(usize::MAX);
        if let Some(s) = r.per_second.get_mut(second) {
            s.settled += 1;
            s.latency.saturating_record(us);
        }
    }

    fn error(&self, kind: String) {
        *self.lock().errors.entry(kind).or_insert(0) += 1;
    }
}

struct Shop {
    client: RegisterServiceClient<AuthedChannel>,
    register_id: String,
}

/// Description carrying the bench's own trade number, so the event stream
/// can be matched to the request even before CreateTrade's answer.
fn description(seq: u64) -> String {
    format!("bench {seq}")
}

fn seq_of(description: &str) -> Option<u64> {
    description.strip_prefix("bench ")?.parse().ok()
}

fn number(i: usize) -> String {
    format!("+8190{:08}", i + 1)
}

async fn measure(name: &'static str, target: &Target, setup: Setup, load: &Load) -> anyhow::Result<Measured> {
    eprintln!("bench: {name}");
    let plan = rig::Plan { shops: load.shops, registers_per_shop: 1, handsets: load.handsets, policy: Policy::Approve };
    let rig = rig::build(target, &setup, &plan).await?;
    let mut watchers = JoinSet::new();
    let events = rig::Events::watch(&rig, &mut watchers).await?;
    let shops: Vec<Arc<Shop>> = rig
        .shops
        .iter()
        .map(|s| Arc::new(Shop { client: s.client.clone(), register_id: s.registers[0].clone() }))
        .collect();
    let sim = rig.sim;

    let numbers = rig.numbers;
    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let seconds = usize::try_from(load.duration.as_secs()).unwrap_or(usize::MAX).saturating_add(1);
    let recorder = Arc::new(Recorder {
        start,
        window: load.duration,
        inner: Mutex::new(Recorded {
            settled_total: 0,
            latency: histogram()?,
            create_latency: histogram()?,
            per_second: (0..seconds)
                .map(|_| histogram().map(|latency| Second { settled: 0, latency }))
                .collect::<Result<_, _>>()?,
            errors: BTreeMap::new(),
        }),
    });
    let cpu_start = target.cpu();
    let probe = match &target.probe {
        Some(spec) => Some(postgres::Probe::begin(spec).await?),
        None => None,
    };
    let client_start = process_cpu(std::process::id());
    eprintln!("bench: {name}: loading for {:.1} s", load.duration.as_secs_f64());

    let mut workers = JoinSet::new();
    let trader = Arc::new(Trader { shops, numbers, events: events.clone(), recorder: recorder.clone() });
    match load.rate {
        // Closed loop: `inflight` trades open, each followed by the next.
        None => {
            for _ in 0..load.inflight {
                let (trader, stop, next) = (trader.clone(), stop.clone(), next.clone());
                workers.spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let seq = next.fetch_add(1, Ordering::Relaxed);
                        if !trader.trade(seq, Instant::now()).await {
                            tokio::time::sleep(ERROR_PAUSE).await;
                        }
                    }
                });
            }
        }
        // Open loop: trade n is due at start + n / rate, whatever the
        // server is doing, with at most `inflight` open (a trade waiting
        // for room still counts its latency from when it was due, so a
        // slow server cannot hide its queue: no coordinated omission).
        Some(rate) => {
            let (trader, stop, room) = (trader.clone(), stop.clone(), Arc::new(Semaphore::new(load.inflight)));
            workers.spawn(async move {
                let mut trades = JoinSet::new();
                for seq in 0u64.. {
                    let due = start + Duration::from_secs_f64(seq as f64 / rate);
                    tokio::time::sleep_until(tokio::time::Instant::from_std(due)).await;
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let Ok(permit) = room.clone().acquire_owned().await else { break };
                    let trader = trader.clone();
                    trades.spawn(async move {
                        trader.trade(seq, due).await;
                        drop(permit);
                    });
                    while trades.try_join_next().is_some() {}
                }
                while trades.join_next().await.is_some() {}
            });
        }
    }

    // Progress once a second, then stop new trades at the deadline.
    let mut tick =
        tokio::time::interval_at(tokio::time::Instant::now() + Duration::from_secs(1), Duration::from_secs(1));
    let mut last = 0;
    let deadline = tokio::time::Instant::from_std(start + load.duration);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let r = recorder.lock();
                let elapsed = start.elapsed().as_secs();
                let done = r.settled_total;
                let p99 = usize::try_from(elapsed).ok().and_then(|s| s.checked_sub(1))
                    .and_then(|s| r.per_second.get(s)).and_then(|s| s.quantile_ms(0.99)).unwrap_or(0.0);
                let errors: u64 = r.errors.values().sum();
                drop(r);
                eprint!("\r  {name} t={elapsed:>3}s  settled {:>6}/s  p99 {p99:>7.2} ms  total {done:>8}  errors {errors}   ", done - last);
                last = done;
            }
            _ = tokio::time::sleep_until(deadline) => break,
        }
    }
    eprintln!();
    let cpu_end = target.cpu();
    let client_end = process_cpu(std::process::id());
    stop.store(true, Ordering::Relaxed);
    while let Some(done) = workers.join_next().await {
        done.context("a worker failed")?;
    }
    let peak_rss_bytes = target.pids().into_iter().map(|p| Memory::of(p).map(|m| m.hwm)).sum();
    watchers.abort_all();
    let sim = Arc::try_unwrap(sim).map_err(|_| anyhow!("simulator still shared"))?;
    let counters = sim.counters();
    sim.shutdown().await.context("stopping the simulated carrier")?;
    tracing::debug!(?counters, "simulator");
    let disk_bytes = target.data_dir.as_deref().map(dir_bytes);

    let (settled, settled_total) = {
        let r = recorder.lock();
        (r.latency.len(), r.settled_total)
    };
    let database = match probe {
        Some(p) => Some(p.end(settled, settled_total).await?),
        None => None,
    };
    let r = recorder.lock();
    Ok(Measured {
        name,
        window: load.duration,
        settled,
        settled_total: r.settled_total,
        latency: r.latency.clone(),
        create_latency: r.create_latency.clone(),
        per_second: r
            .per_second
            .iter()
            .take(usize::try_from(load.duration.as_secs()).unwrap_or(0))
            .map(|s| Second { settled: s.settled, latency: s.latency.clone() })
            .collect(),
        errors: r.errors.clone(),
        server_cpu: cpu_start.zip(cpu_end).map(|(a, b)| b.saturating_sub(a)),
        client_cpu: client_start.zip(client_end).map(|(a, b)| b.saturating_sub(a)),
        peak_rss_bytes,
        disk_bytes,
        database,
    })
}

/// User + system CPU of a process so far, from /proc/<pid>/stat.
fn process_cpu(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command (which may hold spaces) in parentheses:
    // state is field 3, utime 14 and stime 15.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let ticks = clock_ticks();
    Some(Duration::from_secs_f64((utime + stime) as f64 / ticks as f64))
}

/// `getconf CLK_TCK`; 100 on every Linux we know of.
fn clock_ticks() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100)
    })
}

/// Bytes allocated on disk under `dir` (blocks, not apparent sizes, so
/// sparse files count what they use).
fn dir_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                total += meta.blocks() * 512;
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptions_carry_the_sequence() {
        assert_eq!(seq_of(&description(42)), Some(42));
        assert_eq!(seq_of("something else"), None);
    }

    #[test]
    fn own_cpu_is_readable() {
        assert!(process_cpu(std::process::id()).is_some());
    }
}
