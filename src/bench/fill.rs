//! `syncpay bench --fill N --keep-store DIR` and `--restart-only DIR`: a
//! store of N settled trades, made through the real server (gRPC, signed
//! approvals, `--inflight` at once), the server's memory and the store's
//! size after it, and then the restart probe (`restart.rs`) on it: after a
//! graceful stop and after a kill. The folder is kept, with the shop's and
//! carrier's credentials in `bench-fill.json`, so `--restart-only DIR`
//! can probe it again without filling it again.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use syncpay::client::connect;
use syncpay::terminal_sim::{CarrierSim, Policy};
use tokio::task::JoinSet;

use super::child::{free_port, mib, Memory, Server, START_WAIT};
use super::restart::{Probe, Restarted, Stop};
use super::rig;
use super::{dir_bytes, number, process_cpu, serve_args, Options, Setup, Target};

/// The credentials a later `--restart-only` needs, beside the store.
const CREDENTIALS: &str = "bench-fill.json";
/// What the restart figures depend on, printed and written with them.
const RESTART_NOTE: &str = "sled 0.34 writes its snapshot only when it opens a store, and an open replays \
the log written since the last snapshot: the first restart after --fill replays everything the fill \
wrote, later ones only what was written since the previous start, whether the stop was SIGTERM or \
SIGKILL. The OS page cache may hold the store (a restart after a reboot reads it from disk).";
/// How long the server is left alone after the fill before its memory
/// is read (the last groups commit; nothing else is due).
const IDLE: Duration = Duration::from_secs(1);

#[derive(Serialize, Deserialize)]
struct Credentials {
    carrier_token: String,
    shop_token: String,
    register_id: String,
    /// Trades settled by the fill.
    settled: u64,
}

pub async fn fill(args: &Options, n: u64, dir: &Path) -> anyhow::Result<Value> {
    if std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_some()) {
        return Err(super::usage(format!("{} is not empty: --fill needs a new or empty folder", dir.display())));
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let port = free_port()?;
    let server = Server::spawn(&serve_args(dir, &format!("127.0.0.1:{port}"), &args.durability)).await?;
    let pid = server.pid();
    let admin_token = super::read_token(&dir.join("admin.token"))?;
    let target = Target::one(server.url.clone(), Some(pid), Some(dir.to_owned()));
    let plan = rig::Plan { shops: args.shops, registers_per_shop: 1, handsets: args.handsets, policy: Policy::Approve };
    let rig = rig::build(&target, &Setup::Syncpay { admin_token }, &plan).await?;
    let (shop_token, register_id) = rig
        .shops
        .first()
        .and_then(|s| Some((s.token.clone(), s.registers.first()?.clone())))
        .ok_or_else(|| anyhow!("no shop"))?;
    let mut credentials = Credentials { carrier_token: rig.carrier_token.clone(), shop_token, register_id, settled: 0 };
    save(dir, &credentials)?;

    let mut watchers = JoinSet::new();
    let events = rig::Events::watch(&rig, &mut watchers).await?;
    eprintln!("bench: filling {} with {n} settled trades, {} in flight", dir.display(), args.inflight);
    let cpu_before = process_cpu(pid);
    let filled = rig::settle(&rig, &events, 0..n, args.inflight, Some(pid), "fill").await?;
    let cpu = process_cpu(pid).zip(cpu_before).map(|(b, a)| b.saturating_sub(a));
    watchers.abort_all();
    credentials.settled = filled.settled;
    save(dir, &credentials)?;
    tokio::time::sleep(IDLE).await;
    let memory = server.memory().context("reading the server's memory")?;
    let disk = dir_bytes(dir);

    println!();
    println!("fill (server pid {pid}, store {}):", dir.display());
    println!(
        "  settled       {} of {n} in {:.1} s ({:.0}/s), errors {:?}",
        filled.settled,
        filled.elapsed.as_secs_f64(),
        filled.per_second(),
        filled.errors
    );
    if let Some(cpu) = cpu {
        println!("  server CPU    {:.0} µs/trade", cpu.as_secs_f64() * 1e6 / filled.settled.max(1) as f64);
    }
    println!("  server memory {memory} after {} settled", filled.settled);
    println!(
        "  disk          {:.1} MiB, {:.0} bytes per settled trade",
        mib(disk),
        disk as f64 / filled.settled.max(1) as f64
    );
    let fill = json!({
        "store_dir": dir.display().to_string(),
        "requested": n,
        "settled": filled.settled,
        "errors": filled.errors,
        "seconds": filled.elapsed.as_secs_f64(),
        "settled_per_s": filled.per_second(),
        "inflight": args.inflight,
        "shops": args.shops,
        "handsets": args.handsets,
        "server_cpu_us_per_trade": cpu.map(|c| c.as_secs_f64() * 1e6 / filled.settled.max(1) as f64),
        "memory_after_fill": memory.to_json(),
        "disk_bytes": disk,
        "disk_bytes_per_settled": disk as f64 / filled.settled.max(1) as f64,
    });

    let probe = Probe {
        data_dir: dir.to_owned(),
        port,
        durability: args.durability.clone(),
        sim: rig.sim.clone(),
        shop_token: credentials.shop_token.clone(),
        register_id: credentials.register_id.clone(),
        payer: number(0),
    };
    let restart = probes(&probe, server, filled.settled, None).await?;
    Ok(json!({ "fill": fill, "restart": restart }))
}

pub async fn restart_only(args: &Options, dir: &Path) -> anyhow::Result<Value> {
    let path = dir.join(CREDENTIALS);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| super::usage(format!("{}: {e} (was the folder made by --fill?)", path.display())))?;
    let credentials: Credentials =
        serde_json::from_str(&text).with_context(|| format!("reading {}", path.display()))?;
    let port = free_port()?;
    let args_serve = serve_args(dir, &format!("127.0.0.1:{port}"), &args.durability);
    eprintln!("bench: opening {} ({} settled trades)", dir.display(), credentials.settled);
    let server = Server::spawn(&args_serve).await?;
    let initial = server.announced_at.saturating_duration_since(server.spawned_at);
    let initial_memory = server.memory();
    eprintln!("bench: first start: serving after {:.3} s", initial.as_secs_f64());

    // A new process has none of the handsets' keys: give the payer a new
    // one (as a new phone would), before the timed restarts.
    let sim = Arc::new(CarrierSim::start(connect(&server.url).await?, &credentials.carrier_token)?);
    sim.add_handset(&number(0), Policy::Approve).await.context("enrolling the probe's handset")?;
    sim.wait_connected(START_WAIT).await.context("waiting for the carrier relay")?;
    let probe = Probe {
        data_dir: dir.to_owned(),
        port,
        durability: args.durability.clone(),
        sim,
        shop_token: credentials.shop_token.clone(),
        register_id: credentials.register_id.clone(),
        payer: number(0),
    };
    let first = json!({
        "spawn_to_serving_s": initial.as_secs_f64(),
        "memory_after": initial_memory.map(Memory::to_json),
        "note": "the first start of this run, untimed by the shop and carrier; the OS page cache may hold the store",
    });
    let restart = probes(&probe, server, credentials.settled, Some(first)).await?;
    Ok(json!({ "restart": restart }))
}

/// Restarts after a graceful stop, then after a kill, and stops the server
/// gracefully at the end so the store is left closed.
async fn probes(probe: &Probe, server: Server, settled: u64, first: Option<Value>) -> anyhow::Result<Value> {
    let mut results: Vec<Restarted> = Vec::new();
    let mut server = server;
    for (i, stop) in [Stop::Graceful, Stop::Kill].into_iter().enumerate() {
        let (next, restarted) = probe.restart(server, stop, u64::try_from(i)?).await?;
        server = next;
        results.push(restarted);
    }
    let (took, clean) = server.terminate().await?;
    let disk = dir_bytes(&probe.data_dir);
    println!();
    println!("restart on {} ({settled} settled trades, {:.1} MiB on disk):", probe.data_dir.display(), mib(disk));
    if let Some(first) = first.as_ref().and_then(|f| f["spawn_to_serving_s"].as_f64()) {
        println!("  first start (untimed by shop and carrier): spawn → serving {first:.3} s");
    }
    for r in &results {
        r.print();
    }
    println!("  note          {RESTART_NOTE}");
    println!("  final stop    {:.3} s ({})", took.as_secs_f64(), if clean { "clean" } else { "NOT clean" });
    Ok(json!({
        "store_dir": probe.data_dir.display().to_string(),
        "settled_in_store": settled,
        "disk_bytes": disk,
        "first_start": first,
        "probes": results.iter().map(Restarted::to_json).collect::<Vec<_>>(),
        "final_stop_s": took.as_secs_f64(),
        "final_stop_clean": clean,
        "note": RESTART_NOTE,
    }))
}

fn save(dir: &Path, credentials: &Credentials) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path: PathBuf = dir.join(CREDENTIALS);
    // Bearer tokens: readable by the owner only, like admin.token.
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all((serde_json::to_string_pretty(credentials)? + "\n").as_bytes())?;
    Ok(())
}
