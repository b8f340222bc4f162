//! `syncpay bench`: a load generator and its report. It starts the server
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
//! `bench/restart.rs`). `bench/child.rs` runs and reads the child server,
//! `bench/rig.rs` sets up shops, registers, carrier and handsets.

mod ceiling;
mod child;
mod fill;
mod open;
mod restart;
mod rig;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use syncpay::client::AuthedChannel;
use syncpay::proto::register_service_client::RegisterServiceClient;
use syncpay::proto::{self, TradeState};
use syncpay::terminal_sim::Policy;
use tokio::task::JoinSet;

use super::Exit;
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// syncpay, then the ceiling, and the ratio.
    Both,
    /// syncpay only.
    Syncpay,
    /// The transport ceiling only.
    Ceiling,
}

#[derive(Args)]
pub struct BenchArgs {
    /// What to measure.
    #[arg(long, value_enum, default_value_t = Mode::Both)]
    mode: Mode,
    /// How long to load each target, e.g. 20s, 500ms, 2m.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    duration: Duration,
    /// Trades kept open at once (each waits for its SETTLED event); with
    /// --open-trades, CreateTrade calls in flight.
    #[arg(long, default_value_t = 64)]
    inflight: usize,
    /// Shops, each with one register (with --open-trades as many as the
    /// per-register limit needs), one connection and one WatchTrades
    /// stream; trades go round-robin over them.
    #[arg(long, default_value_t = 8)]
    shops: usize,
    /// Simulated handsets (all approve; with --open-trades they ignore the
    /// offers after the warm-up), used round-robin.
    #[arg(long, default_value_t = 256)]
    handsets: usize,
    /// fsync | flush-only, for the child server.
    #[arg(long, default_value = "fsync")]
    durability: String,
    /// Load a running server instead of starting one (no CPU, memory or
    /// disk figures unless --server-pid / --data-dir say where to look).
    #[arg(long, value_name = "URL")]
    server: Option<String>,
    /// The operator token of --server.
    #[arg(long, value_name = "FILE", env = "SYNCPAY_ADMIN_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// With --server: its process id, for CPU and memory.
    #[arg(long)]
    server_pid: Option<u32>,
    /// With --server: its data folder, for disk per trade.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Write the result as JSON here.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Write the chart (throughput and latency per second) here.
    #[arg(long, value_name = "FILE")]
    svg: Option<PathBuf>,
    /// Memory per open trade instead of throughput: leave N trades open
    /// (handsets ack the offers and never answer) and read the server's
    /// memory with 0 and with N open.
    #[arg(long, value_name = "N", conflicts_with_all = ["fill", "restart_only", "server"])]
    open_trades: Option<u64>,
    /// With --open-trades: trades settled first, before the 0-open reading.
    #[arg(long, value_name = "N", default_value_t = 2000)]
    warmup: u64,
    /// Fill --keep-store with N settled trades (through the server, with
    /// signed approvals), read the server's memory, then run the restart
    /// probe on it (see --restart-only).
    #[arg(long, value_name = "N", requires = "keep_store", conflicts_with_all = ["restart_only", "server"])]
    fill: Option<u64>,
    /// The data folder --fill makes and keeps (new or empty).
    #[arg(long, value_name = "DIR", requires = "fill")]
    keep_store: Option<PathBuf>,
    /// The restart probe alone, on a folder made by --fill: time from
    /// `syncpay serve` starting on it to a new trade SETTLED, after a
    /// SIGTERM and after a SIGKILL.
    #[arg(long, value_name = "DIR", conflicts_with = "server")]
    restart_only: Option<PathBuf>,
    /// Internal: run the ceiling server and print its address.
    #[arg(long, hide = true)]
    serve_ceiling: bool,
}

/// `20s`, `500ms`, `2m` or a number of seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (number, unit) = match t.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => t.split_at(i),
        None => (t, "s"),
    };
    let n: u64 = number.parse().map_err(|_| format!("{text:?}: expected e.g. 20s, 500ms, 2m"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n.saturating_mul(60))),
        _ => Err(format!("{text:?}: unit must be ms, s or m")),
    }
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.serve_ceiling {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("binding 127.0.0.1:0")?;
        // The parent reads this line for the address.
        eprintln!("syncpay ceiling serving on http://{}", listener.local_addr()?);
        return Ok(ceiling::serve(listener).await?);
    }
    super::init_logging("error");
    if args.inflight == 0 || args.shops == 0 || args.handsets == 0 {
        return Err(Exit::usage("--inflight, --shops and --handsets must be at least 1"));
    }
    if !matches!(args.durability.as_str(), "fsync" | "flush-only") {
        return Err(Exit::usage("--durability must be fsync or flush-only"));
    }
    if let Some(result) = scale(&args).await? {
        return write_json(&args, result);
    }
    let load = Load { duration: args.duration, inflight: args.inflight, shops: args.shops, handsets: args.handsets };
    eprintln!(
        "bench: {} s, {} in flight, {} shop(s), {} handsets, durability {}, {} cores, load average {}",
        args.duration.as_secs_f64(),
        args.inflight,
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
                let token_file =
                    args.token_file.as_deref().ok_or_else(|| Exit::usage("--server needs --token-file"))?;
                let token = super::read_token(None, Some(token_file), "operator")?;
                let target = Target { url: url.clone(), pid: args.server_pid, data_dir: args.data_dir.clone() };
                measure("syncpay", &target, Setup::Syncpay { admin_token: token }, &load).await?
            }
            None => {
                let dir = tempfile::tempdir().context("creating a temporary folder")?;
                let mut child = Server::spawn(&serve_args(dir.path(), "127.0.0.1:0", &args.durability)).await?;
                let admin_token = super::read_token(None, Some(&dir.path().join("admin.token")), "operator")?;
                let target =
                    Target { url: child.url.clone(), pid: Some(child.pid()), data_dir: Some(dir.path().to_owned()) };
                let result = measure("syncpay", &target, Setup::Syncpay { admin_token }, &load).await;
                child.kill();
                result?
            }
        };
        results.push(result);
    }
    if matches!(args.mode, Mode::Both | Mode::Ceiling) {
        let mut child = Server::spawn(&["bench".to_owned(), "--serve-ceiling".to_owned()]).await?;
        let target = Target { url: child.url.clone(), pid: Some(child.pid()), data_dir: None };
        let result = measure("ceiling", &target, Setup::Ceiling, &load).await;
        child.kill();
        results.push(result?);
    }

    let by_name: HashMap<&str, &Measured> = results.iter().map(|m| (m.name, m)).collect();
    let ratio = match (by_name.get("syncpay"), by_name.get("ceiling")) {
        (Some(s), Some(c)) if c.throughput() > 0.0 => Some(s.throughput() / c.throughput()),
        _ => None,
    };
    println!();
    for m in &results {
        print_summary(m);
    }
    if let Some(r) = ratio {
        println!("syncpay / ceiling throughput: {:.1}%", r * 100.0);
    }
    let report = json!({
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "machine": machine,
        "load_average_after": load_average(),
        "config": {
            "duration_s": args.duration.as_secs_f64(),
            "inflight": args.inflight,
            "shops": args.shops,
            "handsets": args.handsets,
            "durability": args.durability,
        },
        "results": results.iter().map(Measured::to_json).collect::<Vec<_>>(),
        "syncpay_over_ceiling": ratio,
    });
    if let Some(path) = &args.out {
        std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("bench: wrote {}", path.display());
    }
    if let Some(path) = &args.svg {
        std::fs::write(path, svg(&results, &load, &args.durability))
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("bench: wrote {}", path.display());
    }
    let lost: u64 = results.iter().map(|m| m.errors.values().sum::<u64>()).sum();
    if results.iter().any(|m| m.settled == 0) {
        return Err(Exit::negative("a target settled no trade"));
    }
    if lost > 0 {
        eprintln!("bench: {lost} trade(s) did not settle (see errors)");
    }
    Ok(())
}

/// The scale modes (--open-trades, --fill, --restart-only), if one was
/// asked for: their report, with the machine's load around it.
async fn scale(args: &BenchArgs) -> anyhow::Result<Option<Value>> {
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

fn write_json(args: &BenchArgs, report: Value) -> anyhow::Result<()> {
    if let Some(path) = &args.out {
        std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("bench: wrote {}", path.display());
    }
    Ok(())
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
    url: String,
    pid: Option<u32>,
    data_dir: Option<PathBuf>,
}

enum Setup {
    /// A real server: shops, carrier and wallets made with the operator token.
    Syncpay { admin_token: String },
    /// The ceiling: tokens are just names.
    Ceiling,
}

struct Load {
    duration: Duration,
    inflight: usize,
    shops: usize,
    handsets: usize,
}

/// One target's figures.
struct Measured {
    name: &'static str,
    window: Duration,
    /// Settled within the window.
    settled: u64,
    /// Settled in all, including those that finished after the window.
    settled_total: u64,
    latency: Histogram<u64>,
    per_second: Vec<Second>,
    errors: BTreeMap<String, u64>,
    /// Server CPU (user + system) over the window.
    server_cpu: Option<Duration>,
    /// This process's CPU (load generator + carrier simulator) over the window.
    client_cpu: Option<Duration>,
    peak_rss_bytes: Option<u64>,
    disk_bytes: Option<u64>,
}

impl Measured {
    fn throughput(&self) -> f64 {
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
            "server_cpu_us_per_trade": per_trade(self.server_cpu),
            "server_cpu_cores": self.server_cpu.map(|d| d.as_secs_f64() / self.window.as_secs_f64()),
            "client_cpu_us_per_trade": per_trade(self.client_cpu),
            "server_peak_rss_bytes": self.peak_rss_bytes,
            "disk_bytes": self.disk_bytes,
            "disk_bytes_per_settled": self.disk_bytes.filter(|_| self.settled_total > 0)
                .map(|b| b as f64 / self.settled_total as f64),
            "errors": self.errors,
            "per_second": self.per_second.iter().enumerate().map(|(i, s)| json!({
                "t": i + 1, "settled": s.settled,
                "p50_ms": s.quantile_ms(0.5), "p90_ms": s.quantile_ms(0.9), "p99_ms": s.quantile_ms(0.99),
            })).collect::<Vec<_>>(),
        })
    }
}

fn print_summary(m: &Measured) {
    let ms = |q: f64| m.latency.value_at_quantile(q) as f64 / 1000.0;
    println!("{}:", m.name);
    println!("  settled       {} in {:.1} s = {:.0}/s", m.settled, m.window.as_secs_f64(), m.throughput());
    println!(
        "  latency ms    p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
        ms(0.5),
        ms(0.9),
        ms(0.99),
        ms(0.999),
        m.latency.max() as f64 / 1000.0
    );
    if let Some(cpu) = m.server_cpu {
        println!(
            "  server CPU    {:.0} µs/trade ({:.2} cores)",
            cpu.as_secs_f64() * 1e6 / m.settled.max(1) as f64,
            cpu.as_secs_f64() / m.window.as_secs_f64()
        );
    }
    if let Some(cpu) = m.client_cpu {
        println!(
            "  client CPU    {:.0} µs/trade (load generator + carrier sim)",
            cpu.as_secs_f64() * 1e6 / m.settled.max(1) as f64
        );
    }
    if let Some(rss) = m.peak_rss_bytes {
        println!("  server peak   {:.1} MiB", rss as f64 / 1048576.0);
    }
    if let Some(disk) = m.disk_bytes {
        println!(
            "  disk          {:.1} MiB, {:.0} bytes per settled trade ({} settled)",
            disk as f64 / 1048576.0,
            disk as f64 / m.settled_total.max(1) as f64,
            m.settled_total
        );
    }
    if !m.errors.is_empty() {
        println!("  errors        {:?}", m.errors);
    }
}

/// Latencies of the trades that settled in one second of the run.
struct Second {
    settled: u64,
    latency: Histogram<u64>,
}

impl Second {
    fn quantile_ms(&self, q: f64) -> Option<f64> {
        (self.settled > 0).then(|| self.latency.value_at_quantile(q) as f64 / 1000.0)
    }
}

fn histogram() -> anyhow::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).map_err(|e| anyhow!("histogram: {e}"))
}

/// What the workers record, shared.
struct Recorder {
    start: Instant,
    window: Duration,
    inner: Mutex<Recorded>,
}

struct Recorded {
    settled_total: u64,
    latency: Histogram<u64>,
    per_second: Vec<Second>,
    errors: BTreeMap<String, u64>,
}

impl Recorder {
    fn lock(&self) -> MutexGuard<'_, Recorded> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn settled(&self, sent: Instant, received: Instant) {
        let us = u64::try_from(received.saturating_duration_since(sent).as_micros()).unwrap_or(u64::MAX);
        let at = received.saturating_duration_since(self.start);
        let mut r = self.lock();
        r.settled_total += 1;
        if at >= self.window {
            return;
        }
        r.latency.saturating_record(us.max(1));
        let second = usize::try_from(at.as_secs()).unwrap_or(usize::MAX);
        if let Some(s) = r.per_second.get_mut(second) {
            s.settled += 1;
            s.latency.saturating_record(us.max(1));
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
            per_second: (0..seconds)
                .map(|_| histogram().map(|latency| Second { settled: 0, latency }))
                .collect::<Result<_, _>>()?,
            errors: BTreeMap::new(),
        }),
    });
    let cpu_start = target.pid.and_then(process_cpu);
    let client_start = process_cpu(std::process::id());
    eprintln!("bench: {name}: loading for {:.1} s", load.duration.as_secs_f64());

    let mut workers = JoinSet::new();
    for _ in 0..load.inflight {
        let (shops, numbers, stop, next, recorder, events) =
            (shops.clone(), numbers.clone(), stop.clone(), next.clone(), recorder.clone(), events.clone());
        workers.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let seq = next.fetch_add(1, Ordering::Relaxed);
                let i = usize::try_from(seq).unwrap_or(0);
                let shop = &shops[i % shops.len()];
                let rx = events.expect(seq);
                let request = proto::CreateTradeRequest {
                    register_id: shop.register_id.clone(),
                    amount_minor: PRICE,
                    currency: CURRENCY.into(),
                    description: description(seq),
                    ttl_seconds: 0,
                    idempotency_key: String::new(),
                    payer: Some(proto::create_trade_request::Payer::SubscriberNumber(
                        numbers[i % numbers.len()].clone(),
                    )),
                };
                let sent = Instant::now();
                if let Err(status) = shop.client.clone().create_trade(request).await {
                    events.forget(seq);
                    recorder.error(format!("create {:?}", status.code()));
                    tokio::time::sleep(ERROR_PAUSE).await;
                    continue;
                }
                match tokio::time::timeout(FINAL_WAIT, rx).await {
                    Ok(Ok(done)) if done.state == TradeState::Settled as i32 => recorder.settled(sent, done.at),
                    Ok(Ok(done)) => recorder.error(format!(
                        "final {} {}",
                        TradeState::try_from(done.state).map_or("?", |s| s.as_str_name()),
                        proto::FailureReason::try_from(done.failure).map_or("?", |r| r.as_str_name())
                    )),
                    Ok(Err(_)) => recorder.error("event stream ended".to_owned()),
                    Err(_) => {
                        events.forget(seq);
                        recorder.error("timeout".to_owned());
                    }
                }
            }
        });
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
    let cpu_end = target.pid.and_then(process_cpu);
    let client_end = process_cpu(std::process::id());
    stop.store(true, Ordering::Relaxed);
    while let Some(done) = workers.join_next().await {
        done.context("a worker failed")?;
    }
    let peak_rss_bytes = target.pid.and_then(Memory::of).map(|m| m.hwm);
    watchers.abort_all();
    let sim = Arc::try_unwrap(sim).map_err(|_| anyhow!("simulator still shared"))?;
    let counters = sim.counters();
    sim.shutdown().await.context("stopping the simulated carrier")?;
    tracing::debug!(?counters, "simulator");
    let disk_bytes = target.data_dir.as_deref().map(dir_bytes);

    let r = recorder.lock();
    let settled = r.latency.len();
    Ok(Measured {
        name,
        window: load.duration,
        settled,
        settled_total: r.settled_total,
        latency: r.latency.clone(),
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

/// Throughput (top) and latency percentiles (bottom) per second, for each
/// target, as plain SVG.
fn svg(results: &[Measured], load: &Load, durability: &str) -> String {
    const W: f64 = 900.0;
    const LEFT: f64 = 70.0;
    const RIGHT: f64 = 20.0;
    const PLOT_H: f64 = 200.0;
    let top = 50.0;
    let bottom_top = top + PLOT_H + 60.0;
    let height = bottom_top + PLOT_H + 60.0;
    let seconds = results.iter().map(|m| m.per_second.len()).max().unwrap_or(1).max(1);
    let x = |i: usize| LEFT + (W - LEFT - RIGHT) * (i as f64 + 0.5) / seconds as f64;
    let max_tp = results.iter().flat_map(|m| m.per_second.iter().map(|s| s.settled)).max().unwrap_or(1).max(1) as f64;
    let syncpay = results.iter().find(|m| m.name == "syncpay");
    let max_lat = syncpay
        .map(|m| m.per_second.iter().filter_map(|s| s.quantile_ms(0.99)).fold(0.0, f64::max))
        .unwrap_or(1.0)
        .max(0.1);
    let mut out = String::new();
    let mut add = |s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    add(format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{height}" font-family="sans-serif" font-size="12">"#
    ));
    add(format!(r#"<rect width="{W}" height="{height}" fill="white"/>"#));
    add(format!(
        r#"<text x="{LEFT}" y="20" font-size="14">syncpay bench: {} in flight, {} shop(s), {} handsets, durability {durability}</text>"#,
        load.inflight, load.shops, load.handsets
    ));
    let mut panel = |y0: f64, title: &str, max: f64, unit: &str, series: Vec<(String, &str, Vec<Option<f64>>)>| {
        add(format!(r#"<text x="{LEFT}" y="{}">{title}</text>"#, y0 - 8.0));
        add(format!(
            r##"<rect x="{LEFT}" y="{y0}" width="{}" height="{PLOT_H}" fill="none" stroke="#999"/>"##,
            W - LEFT - RIGHT
        ));
        for k in 0..=4 {
            let v = max * f64::from(k) / 4.0;
            let y = y0 + PLOT_H - PLOT_H * f64::from(k) / 4.0;
            add(format!(r##"<line x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#eee"/>"##, W - RIGHT));
            add(format!(r#"<text x="{}" y="{:.1}" text-anchor="end">{v:.1}{unit}</text>"#, LEFT - 4.0, y + 4.0));
        }
        for t in (0..seconds).step_by((seconds / 10).max(1)) {
            add(format!(r#"<text x="{:.1}" y="{}" text-anchor="middle">{}s</text>"#, x(t), y0 + PLOT_H + 15.0, t + 1));
        }
        for (n, (label, colour, values)) in series.iter().enumerate() {
            let points: Vec<String> = values
                .iter()
                .enumerate()
                .filter_map(|(i, v)| v.map(|v| format!("{:.1},{:.1}", x(i), y0 + PLOT_H - PLOT_H * (v / max).min(1.0))))
                .collect();
            add(format!(r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#, points.join(" ")));
            let lx = LEFT + 10.0 + 170.0 * n as f64;
            add(format!(r#"<rect x="{lx}" y="{}" width="12" height="3" fill="{colour}"/>"#, y0 + PLOT_H + 30.0));
            add(format!(r#"<text x="{}" y="{}">{label}</text>"#, lx + 16.0, y0 + PLOT_H + 35.0));
        }
    };
    let colours = ["#1f77b4", "#ff7f0e"];
    panel(
        top,
        "settled trades per second",
        max_tp * 1.1,
        "",
        results
            .iter()
            .zip(colours)
            .map(|(m, c)| (m.name.to_owned(), c, m.per_second.iter().map(|s| Some(s.settled as f64)).collect()))
            .collect(),
    );
    if let Some(m) = syncpay {
        panel(
            bottom_top,
            "syncpay create→SETTLED latency per second (ms)",
            max_lat * 1.1,
            "",
            [(0.5, "p50", "#2ca02c"), (0.9, "p90", "#1f77b4"), (0.99, "p99", "#d62728")]
                .into_iter()
                .map(|(q, label, c)| (label.to_owned(), c, m.per_second.iter().map(|s| s.quantile_ms(q)).collect()))
                .collect(),
        );
    }
    add("</svg>".to_owned());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("20s"), Ok(Duration::from_secs(20)));
        assert_eq!(parse_duration("20"), Ok(Duration::from_secs(20)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("2h").is_err());
        assert!(parse_duration("s").is_err());
    }

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
