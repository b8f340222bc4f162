//! Real PostgreSQL clusters (`syncpay::pg_cluster`): the harness itself
//! (durability on, loopback only; a cluster whose owner dies is stopped by
//! its watchdog, and one whose watchdog is gone too is reaped by the next
//! start), and failover without losing an acknowledged commit on a real
//! primary and synchronous standby (streaming replication on loopback):
//! writers commit double-entry postings through the backend's pool and
//! multi-host URL (`target_session_attrs=read-write`); the primary is
//! killed with SIGKILL (server and every backend at once) and the standby
//! promoted. The pool finds the new primary by itself, every error the
//! writers saw meanwhile is one a caller may retry, and every commit
//! acknowledged before, during and after is on the new primary, with the
//! ledger adding up.

mod common;

use common::pg;
use std::net::TcpStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use syncpay::domain::{AccountName, Amount, Currency, PostingSet, SubscriberNumber, UnixMs};
use syncpay::pg_cluster::{reap_leftovers, Cluster};
use syncpay::store::postgres::numeric::Minor;
use syncpay::store::postgres::sql::{self, SetKind};
use syncpay::store::postgres::{migrate, pool};
/// How long a stopped server may take to close its port and folder.
const GONE_DEADLINE: Duration = Duration::from_secs(60);

fn wait_gone(root: &Path, port: u16) {
    let deadline = Instant::now() + GONE_DEADLINE;
    while root.exists() || TcpStream::connect(("127.0.0.1", port)).is_ok() {
        assert!(Instant::now() < deadline, "cluster at {} (port {port}) still there", root.display());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_cluster_is_durable_on_loopback_and_is_stopped_when_its_owner_lets_go() {
    let Some(tools) = pg::tools() else { return };
    let cluster = Cluster::start(&tools).expect("start");
    let settings = cluster
        .psql(
            "postgres",
            "SELECT string_agg(name || '=' || setting, ',' ORDER BY name) FROM pg_settings \
             WHERE name IN ('fsync', 'synchronous_commit', 'full_page_writes', 'listen_addresses')",
        )
        .expect("psql");
    assert_eq!(settings, "fsync=on,full_page_writes=on,listen_addresses=127.0.0.1,synchronous_commit=on");
    let (root, port) = (cluster.root().to_owned(), cluster.port());
    assert!(TcpStream::connect(("127.0.0.1", port)).is_ok(), "the server listens");
    // What a panic that skips the drop, an exit or a SIGKILL amounts to.
    cluster.leave_to_watchdog();
    wait_gone(&root, port);
}

#[test]
fn a_cluster_whose_owner_died_is_reaped_at_the_next_start() {
    let Some(tools) = pg::tools() else { return };
    let cluster = Cluster::start(&tools).expect("start");
    let (root, port) = (cluster.root().to_owned(), cluster.port());
    // Its owner file now names a process that has exited, and its
    // watchdog never acts (the pipe is leaked): only the reaper is left.
    let mut dead = std::process::Command::new("true").spawn().expect("spawn");
    let pid = dead.id();
    dead.wait().expect("wait");
    std::fs::write(root.join("owner"), format!("{pid} 1\n")).expect("owner");
    std::mem::forget(cluster);
    assert!(TcpStream::connect(("127.0.0.1", port)).is_ok(), "still running before the reaper");
    assert!(reap_leftovers() >= 1, "the leftover was not reaped");
    wait_gone(&root, port);
}

/// Writers committing at once.
const WRITERS: usize = 4;
/// Commits acknowledged before the primary is killed, and again after
/// the promotion, to show the nodes write on.
const ACKS_EACH_SIDE: usize = 150;
/// How long writers may take to find the new primary (a loaded CI
/// machine gets a generous margin; here it takes well under a second).
const RECONNECT_DEADLINE: Duration = Duration::from_secs(120);
/// Pause between a writer's retries, so a dead primary is not hammered.
const RETRY_PAUSE: Duration = Duration::from_millis(20);

fn wallet(i: usize) -> AccountName {
    AccountName::Wallet(SubscriberNumber::parse(&format!("+8190000{i:05}")).expect("number"), jpy())
}

fn jpy() -> Currency {
    Currency::parse("JPY").expect("JPY")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_primary_loses_no_acknowledged_commit_and_writers_move_to_the_promoted_standby() {
    let Some(tools) = pg::tools() else { return };
    let mut primary = Cluster::start(&tools).expect("primary");
    let standby = primary.start_standby("standby1").expect("standby");
    primary.require_sync_standby("standby1").expect("synchronous standby");
    primary.create_database("ledger").expect("database");
    let url = format!(
        "postgres://postgres@{},{}/ledger?target_session_attrs=read-write",
        primary.host_port(),
        standby.host_port()
    );
    let pool = pool::connect(&url, 8).await.expect("pool");
    {
        let mut c = pool.get().await.expect("connection");
        migrate::migrate(&mut c).await.expect("migrate");
        let d = pool::check_server(&c).await.expect("durable");
        assert_eq!(d.synchronous_standby_names, "standby1");
    }

    // Writers: each commit moves 1 yen from funding to a wallet; a commit
    // counts as acknowledged only once COMMIT returned.
    let acked: Arc<Mutex<Vec<(u64, usize)>>> = Arc::default();
    let retryable = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (pool, acked, retryable, stop) = (pool.clone(), acked.clone(), retryable.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let set = PostingSet::transfer(AccountName::SystemFunding(jpy()), wallet(w), Amount::new(1)).expect("set");
            while !stop.load(Ordering::SeqCst) {
                let attempt = async {
                    let mut c = pool.get().await?;
                    let tx = c.transaction().await?;
                    let posted = sql::post(&tx, &set, SetKind::TopUp, None, UnixMs(1)).await?.expect("no refusal");
                    tx.commit().await?;
                    Ok::<u64, syncpay::store::postgres::PgError>(posted.set_id)
                };
                match attempt.await {
                    Ok(set_id) => acked.lock().expect("lock").push((set_id, w)),
                    Err(e) if e.is_retryable() => {
                        retryable.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(RETRY_PAUSE).await;
                    }
                    Err(e) => panic!("writer {w}: an error a caller could not retry: {e}"),
                }
            }
        }));
    }
    let count = |acked: &Arc<Mutex<Vec<(u64, usize)>>>| acked.lock().expect("lock").len();
    let wait_for = |target: usize| {
        let acked = acked.clone();
        async move {
            let deadline = Instant::now() + RECONNECT_DEADLINE;
            while count(&acked) < target {
                assert!(Instant::now() < deadline, "writers stalled at {} acknowledgements", count(&acked));
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    wait_for(ACKS_EACH_SIDE).await;

    // The primary is lost at once; the standby is promoted.
    primary.kill9();
    let at_kill = count(&acked);
    let started = Instant::now();
    standby.promote().expect("promote");
    wait_for(at_kill + ACKS_EACH_SIDE).await;
    let recovered_in = started.elapsed();
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.await.expect("writer");
    }
    let acked = acked.lock().expect("lock").clone();
    eprintln!(
        "{} commits acknowledged ({at_kill} before the kill), {} retryable errors, writing again {:?} after the kill",
        acked.len(),
        retryable.load(Ordering::SeqCst),
        recovered_in
    );

    // On the new primary: every acknowledged set, and balances that match.
    let c = pool.get().await.expect("connection to the new primary");
    let on_standby = standby.psql("ledger", "SELECT pg_is_in_recovery()").expect("psql");
    assert_eq!(on_standby, "f", "the standby is the primary now");
    let ids: Vec<i64> = acked.iter().map(|(id, _)| i64::try_from(*id).expect("id")).collect();
    let present: i64 =
        c.query_one("SELECT count(*) FROM posting_sets WHERE set_id = ANY($1)", &[&ids]).await.expect("count").get(0);
    assert_eq!(usize::try_from(present).expect("count"), acked.len(), "an acknowledged commit is missing");
    for w in 0..WRITERS {
        let mine = u64::try_from(acked.iter().filter(|(_, x)| *x == w).count()).expect("count");
        let row = c.query_one("SELECT credits FROM accounts WHERE name = $1", &[&wallet(w).key()]).await.expect("row");
        let credits: Minor = row.get(0);
        // Commits whose COMMIT was cut by the kill may or may not be there:
        // never fewer than acknowledged.
        assert!(credits.0 >= mine, "wallet {w}: {} credited, {mine} acknowledged", credits.0);
    }
    let mismatched: i64 = c
        .query_one(
            "SELECT count(*) FROM accounts a WHERE credits - debits <> (
                 SELECT coalesce(sum(CASE side WHEN 'C' THEN amount ELSE -amount END), 0)
                 FROM postings p WHERE p.account = a.name)",
            &[],
        )
        .await
        .expect("verify")
        .get(0);
    assert_eq!(mismatched, 0, "an account differs from its postings");
    let total: String =
        c.query_one("SELECT (sum(credits) - sum(debits))::text FROM accounts", &[]).await.expect("sum").get(0);
    assert_eq!(total, "0", "balances do not sum to zero");
}
