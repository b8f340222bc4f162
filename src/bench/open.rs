//! `syncpay bench --open-trades N`: the server's memory per open trade. A
//! child server on a temporary store, every limit at its default but the
//! two anti-spam rates; enough registers that N fit under the per-register
//! limit (`MAX_OPEN_TRADES_PER_REGISTER`), rather than a raised limit.
//! After a warm-up of settled trades the server's memory is read with no
//! trade open; then the handsets switch to `Policy::Ignore` (they ack each
//! offer and never answer), N trades with the longest TTL are created, and
//! once every one is OFFERED (its ack committed) and the writer is idle the
//! memory is read again.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{json, Value};
use syncpay::sync_server::limits;
use syncpay::terminal_sim::Policy;
use tokio::task::JoinSet;

use super::child::{mib, Server};
use super::rig::{self, trade_request};
use super::{dir_bytes, serve_args, Options, Setup, Target, ERROR_PAUSE};

/// How long the server is left alone before its memory is read: the last
/// write group commits, and nothing else is due (no answer comes, and no
/// deadline falls within `TTL`).
const IDLE: Duration = Duration::from_secs(1);
/// Open trades live this long, the longest TTL allowed, so none expires
/// while the run lasts (100 000 open in well under that).
const TTL: Duration = limits::MAX_TTL;
/// Memory readings taken while the trades are opened.
const CURVE_POINTS: u64 = 10;
/// How often the OFFERED count is looked at.
const POLL: Duration = Duration::from_millis(20);
/// Giving up when no trade became OFFERED for this long.
const STALL: Duration = Duration::from_secs(60);

/// What the memory figure holds, printed and written with it.
pub const NOTE: &str = "bytes per open trade = (VmRSS with N open - VmRSS with 0 open) / N, of the server \
process. It includes everything the process keeps more: sled's page cache (StoreConfig::cache_bytes, \
24 MiB by default (`serve`'s cache_mib), sled's own accounting of page sizes, so RSS can exceed it), which holds the pages of \
every tree written (trade records, deadlines, events, outbox entries) up to that cap, and memory the \
allocator keeps after frees. The server holds no per-trade state outside the store (AwaitTrade waiters \
exist only while a caller waits; rate limits are off). The curve shows the cache filling: beyond \
cache_bytes the slope falls towards the allocator's and sled's per-page overhead.";

pub async fn run(args: &Options, n: u64) -> anyhow::Result<Value> {
    let per_register = u64::from(limits::MAX_OPEN_TRADES_PER_REGISTER);
    let shops = u64::try_from(args.shops)?;
    let registers_per_shop = n.div_ceil(per_register).max(1).div_ceil(shops);
    if registers_per_shop > u64::from(limits::MAX_OPEN_REGISTERS_PER_SHOP) {
        return Err(super::usage(format!(
            "{n} open trades need {registers_per_shop} registers per shop, more than {}: use more --shops",
            limits::MAX_OPEN_REGISTERS_PER_SHOP
        )));
    }
    let dir = tempfile::tempdir().context("creating a temporary folder")?;
    let mut server = Server::spawn(&serve_args(dir.path(), "127.0.0.1:0", &args.durability)).await?;
    let pid = server.pid();
    let admin_token = super::read_token(&dir.path().join("admin.token"))?;
    let target = Target::one(server.url.clone(), Some(pid), Some(dir.path().to_owned()));
    let plan = rig::Plan {
        shops: args.shops,
        registers_per_shop: usize::try_from(registers_per_shop)?,
        handsets: args.handsets,
        policy: Policy::Approve,
    };
    let rig = rig::build(&target, &Setup::Syncpay { admin_token }, &plan).await?;
    let mut watchers = JoinSet::new();
    let events = rig::Events::watch(&rig, &mut watchers).await?;

    eprintln!("bench: warm-up: {} settled trades", args.warmup);
    let warm = rig::settle(&rig, &events, 0..args.warmup, args.inflight, Some(pid), "warm-up").await?;
    for number in rig.numbers.iter() {
        rig.sim.set_policy(number, Policy::Ignore)?;
    }
    tokio::time::sleep(IDLE).await;
    let before = server.memory().context("reading the server's memory")?;
    let disk_before = dir_bytes(dir.path());
    let offered_before = events.offered();
    eprintln!("bench: 0 open: RSS {}; opening {n} trades", before);

    // Create N trades, `inflight` at once, each left open.
    let registers = Arc::new(rig.registers());
    let next = Arc::new(AtomicU64::new(0));
    let created = Arc::new(AtomicU64::new(0));
    let errors: Arc<Mutex<std::collections::BTreeMap<String, u64>>> = Arc::default();
    let ttl = u32::try_from(TTL.as_secs())?;
    let start = Instant::now();
    let mut workers = JoinSet::new();
    for _ in 0..args.inflight {
        let (registers, numbers, next, created, errors) =
            (registers.clone(), rig.numbers.clone(), next.clone(), created.clone(), errors.clone());
        let first = args.warmup;
        workers.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return;
                }
                let k = usize::try_from(i).unwrap_or(0);
                let (client, register_id) = &registers[k % registers.len()];
                let request = trade_request(register_id, &numbers[k % numbers.len()], first + i, ttl);
                match client.clone().create_trade(request).await {
                    Ok(_) => {
                        created.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(status) => {
                        let kind = format!("create {:?}", status.code());
                        *errors.lock().unwrap_or_else(|p| p.into_inner()).entry(kind).or_insert(0) += 1;
                        tokio::time::sleep(ERROR_PAUSE).await;
                    }
                }
            }
        });
    }

    // Wait until every created trade is OFFERED, reading memory on the way.
    let mut curve = Vec::new();
    let mut created_in = None;
    let mut last_progress = (0, Instant::now());
    let mut shown = Instant::now();
    let offered_in = loop {
        tokio::time::sleep(POLL).await;
        while let Some(done) = workers.try_join_next() {
            done.context("a worker failed")?;
        }
        if workers.is_empty() && created_in.is_none() {
            created_in = Some(start.elapsed());
        }
        let offered = events.offered().saturating_sub(offered_before);
        let made = created.load(Ordering::Relaxed);
        let next_point = (curve.len() as u64 + 1) * n / CURVE_POINTS;
        if offered >= next_point && curve.len() < usize::try_from(CURVE_POINTS)? {
            if let Some(m) = server.memory() {
                curve.push(json!({ "offered": offered, "t_s": start.elapsed().as_secs_f64(), "rss_bytes": m.rss }));
            }
        }
        if shown.elapsed() >= Duration::from_secs(1) {
            shown = Instant::now();
            let rss = server.memory().map_or(0.0, |m| mib(m.rss));
            eprint!(
                "\r  open t={:>4}s  created {made:>7}/{n}  offered {offered:>7}  RSS {rss:.1} MiB   ",
                start.elapsed().as_secs()
            );
        }
        if created_in.is_some() && offered >= made {
            break start.elapsed();
        }
        if offered > last_progress.0 {
            last_progress = (offered, Instant::now());
        } else if last_progress.1.elapsed() > STALL {
            anyhow::bail!("stuck: {offered} of {made} created trades OFFERED, none more for {STALL:?}");
        }
    };
    eprintln!();
    tokio::time::sleep(IDLE).await;
    let after = server.memory().context("reading the server's memory")?;
    let disk_after = dir_bytes(dir.path());
    let made = created.load(Ordering::Relaxed);
    let offered = events.offered().saturating_sub(offered_before);
    let unclaimed = events.unclaimed();
    let sim_counters = rig.sim.counters();
    server.kill();
    watchers.abort_all();

    let grown = i128::from(after.rss) - i128::from(before.rss);
    let per_trade = (made > 0).then(|| grown as f64 / made as f64);
    let disk_per_trade = (made > 0).then(|| (disk_after as f64 - disk_before as f64) / made as f64);
    let errors = errors.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let created_in = created_in.unwrap_or(offered_in);
    let registers_total = registers.len();

    println!();
    println!(
        "open trades (server pid {pid}, {} shop(s) × {registers_per_shop} register(s), default limits):",
        args.shops
    );
    println!(
        "  warm-up       {} settled in {:.1} s ({:.0}/s), errors {:?}",
        warm.settled,
        warm.elapsed.as_secs_f64(),
        warm.per_second(),
        warm.errors
    );
    println!(
        "  created       {made} of {n} in {:.1} s ({:.0}/s); all OFFERED after {:.1} s",
        created_in.as_secs_f64(),
        made as f64 / created_in.as_secs_f64(),
        offered_in.as_secs_f64()
    );
    println!("  RSS, 0 open   {before}");
    println!("  RSS, {made} open  {after}");
    if let Some(b) = per_trade {
        println!("  per open trade {b:.0} bytes of RSS");
    }
    if let Some(b) = disk_per_trade {
        println!("  disk          {:.1} → {:.1} MiB, {b:.0} bytes per open trade", mib(disk_before), mib(disk_after));
    }
    if !errors.is_empty() || !unclaimed.is_empty() {
        println!("  errors        {errors:?}; final events of open trades {unclaimed:?}");
    }
    println!("  note          {NOTE}");

    Ok(json!({
        "open_trades": {
            "requested": n,
            "created": made,
            "offered": offered,
            "shops": args.shops,
            "registers_per_shop": registers_per_shop,
            "registers": registers_total,
            "max_open_trades_per_register": limits::MAX_OPEN_TRADES_PER_REGISTER,
            "limits": "defaults (enough registers opened), anti-spam rates off",
            "ttl_s": TTL.as_secs(),
            "handsets": args.handsets,
            "inflight": args.inflight,
            "warmup": { "settled": warm.settled, "seconds": warm.elapsed.as_secs_f64(), "errors": warm.errors },
            "create_s": created_in.as_secs_f64(),
            "all_offered_s": offered_in.as_secs_f64(),
            "memory_0_open": before.to_json(),
            "memory_n_open": after.to_json(),
            "rss_bytes_per_open_trade": per_trade,
            "disk_bytes_0_open": disk_before,
            "disk_bytes_n_open": disk_after,
            "disk_bytes_per_open_trade": disk_per_trade,
            "rss_curve": curve,
            "errors": errors,
            "final_events_of_open_trades": unclaimed,
            "sim": { "offers_received": sim_counters.offers_received, "acks_sent": sim_counters.acks_sent,
                     "answers_sent": sim_counters.answers_sent },
            "note": NOTE,
        }
    }))
}
