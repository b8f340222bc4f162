//! `syncpay bench`: its flags and its report. The benchmark itself is
//! `crate::bench`; this file parses the arguments, runs it, prints the
//! summary and writes the JSON result and the SVG chart.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};

use crate::bench::{self, Load, Measured, Report};

use super::Exit;

/// What to measure (`--mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ModeArg {
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
    #[arg(long, value_enum, default_value_t = ModeArg::Both)]
    mode: ModeArg,
    /// How long to load each target, e.g. 20s, 500ms, 2m.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    duration: Duration,
    /// Trades kept open at once (each waits for its SETTLED event); with
    /// --open-trades, CreateTrade calls in flight.
    #[arg(long, default_value_t = 64)]
    inflight: usize,
    /// Start this many trades per second (open loop: each is due at its
    /// moment whatever the server does, and its latency counts from then)
    /// instead of keeping --inflight open; --inflight then caps how many
    /// are open at once. For latency at a given throughput (issue 14's
    /// p99 at half the maximum).
    #[arg(long, value_name = "PER_S", value_parser = clap::value_parser!(u32).range(1..=1_000_000),
          conflicts_with_all = ["open_trades", "fill", "restart_only"])]
    rate: Option<u32>,
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
    /// Also measure the PostgreSQL backend, after sled and before the
    /// ceiling: `cluster` starts a throwaway cluster on disk (fsync on,
    /// pg_stat_statements loaded; PostgreSQL's binaries must be
    /// installed), or a postgres:// URL of an empty database.
    #[arg(long, value_name = "cluster|URL", conflicts_with_all = ["open_trades", "fill", "restart_only", "server"])]
    postgres: Option<String>,
    /// With --postgres: how many `serve` nodes share the database, one
    /// target per number (shops spread over the nodes, the carrier's
    /// relay on the first).
    #[arg(long, value_name = "N,N", value_delimiter = ',', default_value = "1,2")]
    pg_nodes: Vec<usize>,
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

impl BenchArgs {
    fn options(&self) -> bench::Options {
        bench::Options {
            mode: match self.mode {
                ModeArg::Both => bench::Mode::Both,
                ModeArg::Syncpay => bench::Mode::Syncpay,
                ModeArg::Ceiling => bench::Mode::Ceiling,
            },
            duration: self.duration,
            inflight: self.inflight,
            rate: self.rate,
            shops: self.shops,
            handsets: self.handsets,
            durability: self.durability.clone(),
            server: self.server.clone(),
            token_file: self.token_file.clone(),
            server_pid: self.server_pid,
            data_dir: self.data_dir.clone(),
            open_trades: self.open_trades,
            warmup: self.warmup,
            fill: self.fill,
            keep_store: self.keep_store.clone(),
            restart_only: self.restart_only.clone(),
            postgres: self.postgres.clone(),
            pg_nodes: self.pg_nodes.clone(),
        }
    }
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.serve_ceiling {
        return bench::serve_ceiling().await;
    }
    super::init_logging("error");
    let report = match bench::run(&args.options()).await {
        Ok(report) => report,
        Err(e) => {
            return Err(match e.downcast::<bench::Usage>() {
                Ok(bench::Usage(message)) => Exit::usage(message),
                Err(e) => e,
            })
        }
    };
    match report {
        Report::Scale(json) => write_json(&args, &json),
        Report::Throughput { results, load, ratio, json } => {
            println!();
            for m in &results {
                print_summary(m);
            }
            if let Some(r) = ratio {
                println!("syncpay / ceiling throughput: {:.1}%", r * 100.0);
            }
            for (name, r) in bench::over_sled(&results) {
                println!("{name} / syncpay (sled) throughput: {:.1}%", r * 100.0);
            }
            write_json(&args, &json)?;
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
    }
}

fn write_json(args: &BenchArgs, report: &serde_json::Value) -> anyhow::Result<()> {
    if let Some(path) = &args.out {
        std::fs::write(path, serde_json::to_string_pretty(report)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("bench: wrote {}", path.display());
    }
    Ok(())
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
    if !m.create_latency.is_empty() {
        let c = |q: f64| m.create_latency.value_at_quantile(q) as f64 / 1000.0;
        println!("  of which      CreateTrade answered (PENDING durable) p50 {:.2}  p99 {:.2}", c(0.5), c(0.99));
    }
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
    if let Some(db) = &m.database {
        print_database(db);
    }
}

/// The PostgreSQL path's costs per settled trade (`bench/postgres.rs`).
fn print_database(db: &serde_json::Value) {
    let f = |k: &str| db.get(k).and_then(serde_json::Value::as_f64);
    let show = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}"));
    println!(
        "  database      per trade: {} statements ({} µs executing), {} commits, {} WAL flushes, {} WAL bytes, {} µs CPU",
        show(f("statements_per_trade")),
        show(f("statement_exec_us_per_trade")),
        show(f("commits_per_trade")),
        show(f("wal_flushes_per_trade")),
        show(f("wal_bytes_per_trade")),
        show(f("database_cpu_us_per_trade")),
    );
    if let Some(activity) = db.get("activity_sessions").and_then(serde_json::Value::as_object) {
        let mut busy: Vec<(&String, f64)> = activity.iter().filter_map(|(k, v)| v.as_f64().map(|v| (k, v))).collect();
        busy.sort_by(|a, b| b.1.total_cmp(&a.1));
        let shown: Vec<String> = busy.iter().map(|(k, v)| format!("{k} {v:.2}")).collect();
        println!("  sessions      on average: {}", shown.join(", "));
    }
    if let Some(top) = db.get("top_statements").and_then(serde_json::Value::as_array) {
        for s in top.iter().take(8) {
            println!(
                "    {:>5.2}/trade {:>8.1} µs/call  {}",
                s.get("calls_per_trade").and_then(serde_json::Value::as_f64).unwrap_or(0.0),
                s.get("exec_us_per_call").and_then(serde_json::Value::as_f64).unwrap_or(0.0),
                s.get("query").and_then(serde_json::Value::as_str).unwrap_or("")
            );
        }
    }
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
    let colours = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2"];
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
}
