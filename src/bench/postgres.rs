//! The benchmark on the PostgreSQL backend (issue 15): the same load as on
//! sled, against `syncpay serve` nodes sharing one database, in the same
//! run. The database is a throwaway cluster on disk started through the
//! harness's own launcher (`syncpay::pg_cluster`, fsync and
//! synchronous_commit on, `pg_stat_statements` loaded), a fresh database
//! per measured target, or a URL the operator gives. With several nodes
//! the shops' connections are spread over them (shop i on node i mod n)
//! while the carrier's relay is on node 0, so most trades cross nodes.
//!
//! Where the time goes is read from the database itself over the loaded
//! window ([`Probe`]): statements and transactions per settled trade and
//! the statements that took the most time (`pg_stat_statements`), WAL
//! bytes and WAL flushes per trade (`pg_stat_wal`: group commit shows as
//! fewer flushes than commits), the database's CPU (the postmaster and
//! its backends, from `/proc`), and what the syncpay connections were
//! doing, sampled from `pg_stat_activity`: on CPU, waiting on a lock or
//! on the WAL flush, or idle in a transaction (waiting for the node: a
//! round trip).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, Context};
use serde_json::{json, Value};
use syncpay::pg_cluster::{Cluster, PgTools};
use tokio::task::JoinHandle;
use tokio_postgres::{Client, NoTls};

use super::child::Server;
use super::{read_token, serve_args, usage};

/// Settings of the benchmark's cluster on top of the harness's own:
/// statement statistics, and connections for two nodes' pools and more.
const CLUSTER_SETTINGS: &[(&str, &str)] =
    &[("shared_preload_libraries", "'pg_stat_statements'"), ("pg_stat_statements.track", "'top'")];
/// How often the probe samples what the connections are doing: often
/// enough for a few hundred samples in a 10 s window, rarely enough that
/// the sampling query is a small share of the database's work.
const SAMPLE_EVERY: Duration = Duration::from_millis(20);
/// Statements listed by time in the report.
const TOP_STATEMENTS: usize = 12;
/// Characters of a statement's text kept in the report.
const STATEMENT_TEXT: usize = 110;
/// Most nodes a run may start on this machine.
pub const MAX_NODES: usize = 4;
/// The targets' names, by number of nodes.
pub const NAMES: [&str; MAX_NODES] = ["postgres-1-node", "postgres-2-nodes", "postgres-3-nodes", "postgres-4-nodes"];

/// Where the PostgreSQL targets' databases come from.
pub enum Source {
    /// A throwaway cluster this run started (stopped when dropped).
    Cluster(Cluster),
    /// A database the operator gave (`--postgres URL`), shared by the runs.
    Url(String),
}

impl Source {
    /// `--postgres cluster` or `--postgres URL`.
    pub fn open(arg: &str) -> anyhow::Result<Source> {
        if arg == "cluster" {
            let tools = PgTools::find().map_err(|e| usage(e.to_string()))?;
            let cluster = Cluster::start_with(&tools, CLUSTER_SETTINGS)
                .map_err(|e| anyhow!("starting a PostgreSQL cluster: {e}"))?;
            eprintln!("bench: PostgreSQL cluster on {} ({})", cluster.host_port(), cluster.root().display());
            Ok(Source::Cluster(cluster))
        } else if arg.starts_with("postgres://") || arg.starts_with("postgresql://") {
            Ok(Source::Url(arg.to_owned()))
        } else {
            Err(usage("--postgres takes `cluster` or a postgres:// URL"))
        }
    }

    /// A database for one target: a new one on the run's cluster.
    pub fn database(&self, nodes: usize) -> anyhow::Result<String> {
        match self {
            Source::Cluster(c) => {
                let name = format!("bench_{nodes}_nodes");
                c.create_database(&name).map_err(|e| anyhow!("creating database {name}: {e}"))?;
                Ok(c.url(&name))
            }
            Source::Url(url) => Ok(url.clone()),
        }
    }

    fn postmaster(&self) -> Option<u32> {
        match self {
            Source::Cluster(c) => c.postmaster_pid(),
            Source::Url(_) => None,
        }
    }
}

/// `n` `syncpay serve` nodes on the database at `url`, sharing the
/// operator token and the server secret (one service, as in
/// `docs/DEPLOY.md`), each with its own data folder for the rest.
pub struct Nodes {
    pub servers: Vec<Server>,
    pub admin_token: String,
    _dirs: Vec<tempfile::TempDir>,
}

impl Nodes {
    pub async fn start(n: usize, url: &str, durability: &str) -> anyhow::Result<Nodes> {
        let mut dirs: Vec<tempfile::TempDir> = Vec::new();
        let mut servers: Vec<Server> = Vec::new();
        for i in 0..n {
            let dir = tempfile::tempdir().context("creating a temporary folder")?;
            if let Some(first) = dirs.first() {
                for file in ["admin.token", "server.secret"] {
                    copy(&first.path().join(file), &dir.path().join(file))?;
                }
            }
            let mut args = serve_args(dir.path(), "127.0.0.1:0", durability);
            args.extend(["--set".to_owned(), format!("store.url={url}")]);
            match Server::spawn(&args).await {
                Ok(s) => servers.push(s),
                Err(e) => {
                    servers.iter_mut().for_each(Server::kill);
                    return Err(e.context(format!("starting node {i}")));
                }
            }
            dirs.push(dir);
        }
        let admin_token = read_token(&dirs[0].path().join("admin.token"))?;
        Ok(Nodes { servers, admin_token, _dirs: dirs })
    }

    pub fn kill(&mut self) {
        self.servers.iter_mut().for_each(Server::kill);
    }
}

fn copy(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::copy(from, to).with_context(|| format!("copying {} to {}", from.display(), to.display())).map(|_| ())
}

/// What the probe needs to know of a target.
pub struct ProbeSpec {
    pub url: String,
    pub postmaster: Option<u32>,
}

impl ProbeSpec {
    pub fn new(source: &Source, url: &str) -> ProbeSpec {
        ProbeSpec { url: url.to_owned(), postmaster: source.postmaster() }
    }
}

/// The database's counters at the start of the window, and the sampler.
pub struct Probe {
    client: Client,
    statements: bool,
    start: Counters,
    cpu_start: Option<Duration>,
    postmaster: Option<u32>,
    stop: tokio::sync::watch::Sender<bool>,
    sampler: JoinHandle<Samples>,
}

#[derive(Default)]
struct Samples {
    taken: u64,
    /// Connections seen per "state: wait event", summed over samples.
    seen: BTreeMap<String, u64>,
}

struct Counters {
    commits: i64,
    rollbacks: i64,
    wal_records: i64,
    wal_bytes: f64,
    wal_syncs: i64,
}

async fn connect(url: &str) -> anyhow::Result<Client> {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await.context("connecting the probe")?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

async fn counters(client: &Client) -> anyhow::Result<Counters> {
    // Statistics are flushed by each backend at most once a second (and
    // when it goes idle); this asks for the newest snapshot.
    let _ = client.batch_execute("SELECT pg_stat_clear_snapshot()").await;
    let db = client
        .query_one("SELECT xact_commit, xact_rollback FROM pg_stat_database WHERE datname = current_database()", &[])
        .await?;
    let wal = client.query_one("SELECT wal_records, wal_bytes::float8, wal_sync FROM pg_stat_wal", &[]).await?;
    Ok(Counters {
        commits: db.try_get(0)?,
        rollbacks: db.try_get(1)?,
        wal_records: wal.try_get(0)?,
        wal_bytes: wal.try_get(1)?,
        wal_syncs: wal.try_get(2)?,
    })
}

impl Probe {
    /// Resets the statement statistics and starts sampling.
    pub async fn begin(spec: &ProbeSpec) -> anyhow::Result<Probe> {
        let client = connect(&spec.url).await?;
        let statements = client.batch_execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements").await.is_ok()
            && client.batch_execute("SELECT pg_stat_statements_reset()").await.is_ok();
        if !statements {
            eprintln!("bench: pg_stat_statements is not loaded on this server: no statement figures");
        }
        let start = counters(&client).await?;
        let sampling = connect(&spec.url).await?;
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let sampler = tokio::spawn(async move {
            let mut samples = Samples::default();
            let mut tick = tokio::time::interval(SAMPLE_EVERY);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stopped.changed() => return samples,
                }
                let Ok(rows) = sampling
                    .query(
                        "SELECT state || ': ' || coalesce(wait_event_type || '/' || wait_event, 'on CPU'), count(*) \
                         FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() \
                         AND backend_type = 'client backend' AND state IN ('active', 'idle in transaction') \
                         GROUP BY 1",
                        &[],
                    )
                    .await
                else {
                    continue;
                };
                samples.taken += 1;
                for row in rows {
                    if let (Ok(what), Ok(n)) = (row.try_get::<_, String>(0), row.try_get::<_, i64>(1)) {
                        *samples.seen.entry(what).or_insert(0) += u64::try_from(n).unwrap_or(0);
                    }
                }
            }
        });
        Ok(Probe {
            client,
            statements,
            start,
            cpu_start: spec.postmaster.and_then(tree_cpu),
            postmaster: spec.postmaster,
            stop,
            sampler,
        })
    }

    /// The database's side of the window, per settled trade.
    pub async fn end(self, settled: u64, settled_total: u64) -> anyhow::Result<Value> {
        let cpu_end = self.postmaster.and_then(tree_cpu);
        let _ = self.stop.send(true);
        let samples = self.sampler.await.unwrap_or_default();
        // Let the backends flush their statistics (at most a second old).
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        let end = counters(&self.client).await?;
        let per = |x: f64| if settled > 0 { x / settled as f64 } else { 0.0 };
        let mut statements = Vec::new();
        let mut calls_total = 0i64;
        let mut time_total = 0f64;
        if self.statements {
            let rows = self
                .client
                .query(
                    "SELECT calls, total_exec_time, query FROM pg_stat_statements \
                     WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) \
                     AND query NOT LIKE '%pg_stat_%' ORDER BY total_exec_time DESC",
                    &[],
                )
                .await?;
            for (i, row) in rows.iter().enumerate() {
                let calls: i64 = row.try_get(0)?;
                let ms: f64 = row.try_get(1)?;
                calls_total += calls;
                time_total += ms;
                if i < TOP_STATEMENTS {
                    let text: String = row.try_get(2)?;
                    let text: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
                    statements.push(json!({
                        "calls_per_trade": per(calls as f64),
                        "exec_ms_total": ms,
                        "exec_us_per_call": if calls > 0 { ms * 1000.0 / calls as f64 } else { 0.0 },
                        "query": text.chars().take(STATEMENT_TEXT).collect::<String>(),
                    }));
                }
            }
        }
        let size: i64 = self.client.query_one("SELECT pg_database_size(current_database())", &[]).await?.try_get(0)?;
        let taken = samples.taken.max(1) as f64;
        let activity: BTreeMap<String, f64> =
            samples.seen.iter().map(|(k, n)| (k.clone(), *n as f64 / taken)).collect();
        let cpu = self.cpu_start.zip(cpu_end).map(|(a, b)| b.saturating_sub(a));
        Ok(json!({
            "statements_per_trade": self.statements.then(|| per(calls_total as f64)),
            "statement_exec_us_per_trade": self.statements.then(|| per(time_total * 1000.0)),
            // Net of the sampler's own statements (one commit each).
            "commits_per_trade": per((end.commits - self.start.commits) as f64 - samples.taken as f64),
            "rollbacks_per_trade": per((end.rollbacks - self.start.rollbacks) as f64),
            "wal_records_per_trade": per((end.wal_records - self.start.wal_records) as f64),
            "wal_bytes_per_trade": per(end.wal_bytes - self.start.wal_bytes),
            "wal_flushes_per_trade": per((end.wal_syncs - self.start.wal_syncs) as f64),
            "database_cpu_us_per_trade": cpu.map(|d| per(d.as_secs_f64() * 1e6)),
            "database_bytes_per_settled": if settled_total > 0 { size as f64 / settled_total as f64 } else { 0.0 },
            "activity_sessions": activity,
            "activity_samples": samples.taken,
            "top_statements": statements,
        }))
    }
}

/// CPU of the postmaster and every process it started, alive or reaped.
fn tree_cpu(postmaster: u32) -> Option<Duration> {
    let ticks = |pid: u32, with_children: bool| -> Option<(u32, u64)> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let rest = &stat[stat.rfind(')')? + 1..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        // After the command: state (0), ppid (1), … utime (11), stime (12),
        // cutime (13), cstime (14).
        let ppid: u32 = f.get(1)?.parse().ok()?;
        let mut t: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
        if with_children {
            t += f.get(13)?.parse::<u64>().ok()? + f.get(14)?.parse::<u64>().ok()?;
        }
        Some((ppid, t))
    };
    let (_, mut total) = ticks(postmaster, true)?;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        if let Some((ppid, t)) = ticks(pid, false) {
            if ppid == postmaster {
                total += t;
            }
        }
    }
    Some(Duration::from_secs_f64(total as f64 / super::clock_ticks() as f64))
}
