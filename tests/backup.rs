//! Online backup and restore of the embedded store, end to end: a real
//! server on a real sled store under load from several shops buying
//! through the simulated carrier, `AdminService.BackupStore` taken while
//! they buy, `sync_server::restore` into a new data folder, and a new
//! server on it. Checked: the ledger verifies on the copy; every change
//! acknowledged before the backup was asked for is in it (recorded on the
//! client side); each shop's events in the copy are gap-free up to the
//! manifest's head and are exactly the original's first events (a prefix
//! of the writer's order); a damaged backup, a restore over a store, a bad
//! target and a non-operator are refused; PostgreSQL points to its tools.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::backends::{BackendFactory, Fsync, SLED};
use common::{code_of, functional_limits, TestServer};
use syncpay::proto::{self, TradeState as S};
use syncpay::register::{ChargeRequest, VirtualRegister};
use syncpay::store::backup::{Manifest, RestoreError, DUMP_FILE, MANIFEST_FILE};
use syncpay::store::sled::{SledStore, StoreConfig};
use syncpay::sync_server::restore;
use syncpay::sync_server::ServerConfig;
use syncpay::terminal_sim::{CarrierSim, Policy};
use tokio::sync::watch;
use tokio_stream::StreamExt;
use tonic::Code;

const WAIT: Duration = Duration::from_secs(60);
const SHOPS: usize = 4;
/// Trades settled before the backup is asked for, and after it (so the
/// copy is taken while shops buy, and later changes exist to leave out).
const BEFORE: usize = 24;
const AFTER: usize = 12;

fn buyer(i: usize) -> String {
    format!("+81802000000{i}")
}

/// What the clients were told: settled trades by shop, and top-ups'
/// posting ids, each with whether it was answered before the backup
/// request was sent.
#[derive(Default)]
struct Acks {
    trades: Vec<(String, String)>,
    top_ups: Vec<u64>,
}

struct Load {
    acks: Arc<Mutex<Acks>>,
    settled: watch::Receiver<usize>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Shops buying concurrently (one register each, one buyer each) and the
/// operator topping up wallets, until `stop`.
async fn start_load(t: &TestServer, tokens: &[String]) -> Load {
    let acks = Arc::new(Mutex::new(Acks::default()));
    let (settled_tx, settled) = watch::channel(0usize);
    let settled_tx = Arc::new(settled_tx);
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for (i, token) in tokens.iter().enumerate() {
        let register = VirtualRegister::open(t.channel().await, token, "till").await.expect("register");
        let (acks, stop, settled_tx) = (acks.clone(), stop.clone(), settled_tx.clone());
        let shop = format!("shop{i}");
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                let charge = ChargeRequest::new(&buyer(i), 100 + n, "JPY", "book");
                let trade = register.charge(charge).await.expect("charge");
                assert_eq!(S::try_from(trade.state), Ok(S::Settled), "{trade:?}");
                acks.lock().expect("acks").trades.push((shop.clone(), trade.trade_id));
                settled_tx.send_modify(|n| *n += 1);
            }
        }));
    }
    let mut admin = t.admin().await;
    let (acks2, stop2) = (acks.clone(), stop.clone());
    tasks.push(tokio::spawn(async move {
        while !stop2.load(Ordering::SeqCst) {
            let r = admin
                .top_up_wallet(proto::TopUpWalletRequest {
                    subscriber_number: buyer(0),
                    amount_minor: 7,
                    currency: "JPY".into(),
                })
                .await
                .expect("top up")
                .into_inner();
            acks2.lock().expect("acks").top_ups.push(r.posting_id);
        }
    }));
    Load { acks, settled, stop, tasks }
}

impl Load {
    async fn wait_settled(&mut self, n: usize) {
        tokio::time::timeout(WAIT, self.settled.wait_for(|s| *s >= n)).await.expect("load in time").expect("load");
    }

    async fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        for task in self.tasks {
            task.await.expect("load task");
        }
    }
}

/// A world of one carrier with an approving handset per shop and `SHOPS`
/// shops; returns the server, the shop tokens and the running simulator.
async fn world(backend: &'static BackendFactory) -> (TestServer, Vec<String>, CarrierSim) {
    let t = TestServer::start_on(backend).await;
    let carrier_token = t.create_carrier("docomo", "Docomo").await;
    let sim = CarrierSim::start(t.channel().await, &carrier_token).expect("sim");
    let mut tokens = Vec::new();
    for i in 0..SHOPS {
        tokens.push(t.create_shop(&format!("shop{i}"), &format!("Shop {i}")).await);
        sim.add_handset(&buyer(i), Policy::Approve).await.expect("handset");
        t.top_up(&buyer(i), 100_000_000, "JPY").await;
    }
    sim.wait_connected(WAIT).await.expect("relay connected");
    (t, tokens, sim)
}

/// Every event of a shop from 1 to `head`, by WatchTrades.
async fn events(t: &TestServer, token: &str, head: u64) -> Vec<proto::TradeEvent> {
    let mut out = Vec::new();
    if head == 0 {
        return out;
    }
    let mut shop = t.shop(token).await;
    let mut stream = shop
        .watch_trades(proto::WatchTradesRequest { after_sequence: 0, register_id: String::new() })
        .await
        .expect("watch")
        .into_inner();
    while let Some(event) = tokio::time::timeout(WAIT, stream.next()).await.expect("events in time") {
        let event = event.expect("event");
        let seq = event.sequence;
        out.push(event);
        if seq >= head {
            break;
        }
    }
    out
}

async fn serve_restored(data_dir: &Path) -> TestServer {
    let mut config = ServerConfig::from_data_dir(data_dir).expect("config of the restored folder");
    config.limits = functional_limits();
    TestServer::start_with(config, data_dir.to_owned(), None).await
}

fn manifest(dir: &Path) -> Manifest {
    serde_json::from_slice(&std::fs::read(dir.join(MANIFEST_FILE)).expect("manifest")).expect("manifest json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_under_load_restores_to_a_verified_prefix_holding_every_acknowledged_change() {
    let (t, tokens, sim) = world(&SLED).await;
    let scratch = tempfile::tempdir().expect("tempdir");
    let backup_dir = scratch.path().join("backup-1");
    let mut load = start_load(&t, &tokens).await;
    load.wait_settled(BEFORE).await;

    // Everything answered up to here must be in the copy.
    let (acked_trades, acked_top_ups) = {
        let acks = load.acks.lock().expect("acks");
        (acks.trades.clone(), acks.top_ups.clone())
    };
    let mut admin = t.admin().await;
    let r = admin
        .backup_store(proto::BackupStoreRequest { dir: backup_dir.display().to_string() })
        .await
        .expect("backup while shops buy")
        .into_inner();
    let after_backup = *load.settled.borrow();
    load.wait_settled(after_backup + AFTER).await;
    load.stop().await;
    sim.shutdown().await.expect("sim");

    let m = manifest(&backup_dir);
    eprintln!(
        "backup: {} records, {} bytes, writer paused {} µs; {} trades acknowledged before it",
        r.records,
        r.dump_bytes,
        r.writer_pause_us,
        acked_trades.len()
    );
    assert_eq!(r.dir, backup_dir.display().to_string());
    assert_eq!(
        (r.trades, r.postings, r.last_posting_id),
        (m.records("trades"), m.records("postings"), m.point.last_posting_id)
    );
    assert!(
        r.trades >= acked_trades.len() as u64,
        "{} trades in the copy, {} acknowledged",
        r.trades,
        acked_trades.len()
    );
    assert_eq!(r.dump_sha256, m.files[0].sha256);
    assert!(r.dump_sha256.len() == 64 && r.writer_pause_us > 0);
    // Later changes were made after the copy and are not in it.
    let original_last_posting = {
        let page = admin
            .list_postings(proto::ListPostingsRequest { after_posting_id: m.point.last_posting_id, limit: 1000 })
            .await
            .expect("postings")
            .into_inner();
        page.postings.last().map_or(0, |p| p.posting_id)
    };
    assert!(original_last_posting > m.point.last_posting_id, "the load went on after the backup point");

    // Restore into a new folder; the restore itself verifies the ledger.
    let restored_dir = scratch.path().join("restored");
    let report = restore(&backup_dir, &restored_dir).await.expect("restore");
    assert!(report.verify.ok(), "{:?}", report.verify.violations);
    assert_eq!(report.records, r.records);

    let restored = serve_restored(&restored_dir).await;
    let verified = restored.assert_ledger_ok().await;
    assert_eq!(verified.trades_checked, r.trades);
    let mut radmin = restored.admin().await;
    // Every acknowledged settlement is there, settled.
    for (shop, trade_id) in &acked_trades {
        let h = radmin
            .get_trade_history(proto::GetTradeHistoryRequest { trade_id: trade_id.clone() })
            .await
            .unwrap_or_else(|e| panic!("acknowledged trade {trade_id} of {shop} missing from the backup: {e}"))
            .into_inner();
        assert_eq!(&h.shop_id, shop);
        let trade = h.trade.expect("trade");
        assert_eq!(S::try_from(trade.state), Ok(S::Settled), "{trade_id}");
        assert!(!h.postings.is_empty(), "{trade_id} has its postings");
    }
    // Every acknowledged top-up's posting is there.
    for id in &acked_top_ups {
        let page = radmin
            .list_postings(proto::ListPostingsRequest { after_posting_id: id - 1, limit: 1 })
            .await
            .expect("postings")
            .into_inner();
        assert_eq!(page.postings.first().map(|p| p.posting_id), Some(*id), "acknowledged top-up posting {id}");
    }
    // Nothing after the backup point is: the copy ends at its last posting.
    let beyond = radmin
        .list_postings(proto::ListPostingsRequest { after_posting_id: m.point.last_posting_id, limit: 10 })
        .await
        .expect("postings")
        .into_inner();
    assert!(beyond.postings.is_empty(), "postings after the backup point: {:?}", beyond.postings);

    // Each shop: gap-free from 1 to the manifest's head in the copy, and
    // those are exactly the original's first events (same trade, kind
    // and state per sequence number): a prefix of what the writer wrote.
    let mut heads = BTreeMap::new();
    for (i, token) in tokens.iter().enumerate() {
        let shop = format!("shop{i}");
        let head = m.point.event_heads.get(&shop).copied().unwrap_or(0);
        assert!(head > 0, "{shop} had events before the backup");
        let copy = events(&restored, token, head).await;
        let seqs: Vec<u64> = copy.iter().map(|e| e.sequence).collect();
        assert_eq!(seqs, (1..=head).collect::<Vec<_>>(), "{shop}: gap-free up to its head");
        let original = events(&t, token, head).await;
        let key = |e: &proto::TradeEvent| {
            let trade = e.trade.as_ref().expect("trade");
            (e.sequence, trade.trade_id.clone(), e.kind, trade.state)
        };
        assert_eq!(copy.iter().map(key).collect::<Vec<_>>(), original.iter().map(key).collect::<Vec<_>>(), "{shop}");
        // The restored server knows the head too: a cursor beyond it is
        // out of range (the original went on past it).
        let info = radmin
            .list_shops(proto::ListShopsRequest { after_shop_id: String::new(), limit: 0 })
            .await
            .expect("shops")
            .into_inner();
        let last = info.shops.iter().find(|s| s.shop_id == shop).expect("shop restored").last_sequence;
        assert_eq!(last, head, "{shop}");
        heads.insert(shop, head);
    }
    eprintln!("event heads in the backup: {heads:?}");

    // The restored server trades on: a shop's credential still works and
    // its next event follows the head.
    let carrier_token = restored.create_carrier("kddi", "KDDI").await;
    let sim = CarrierSim::start(restored.channel().await, &carrier_token).expect("sim");
    sim.add_handset("+818030000001", Policy::Approve).await.expect("handset");
    restored.top_up("+818030000001", 10_000, "JPY").await;
    sim.wait_connected(WAIT).await.expect("relay");
    let register =
        VirtualRegister::open(restored.channel().await, &tokens[0], "after restore").await.expect("register");
    let trade = register.charge(ChargeRequest::new("+818030000001", 500, "JPY", "after")).await.expect("charge");
    assert_eq!(S::try_from(trade.state), Ok(S::Settled));
    let next = events(&restored, &tokens[0], heads["shop0"] + 1).await;
    assert_eq!(next.last().map(|e| e.sequence), Some(heads["shop0"] + 1));
    restored.assert_ledger_ok().await;
    sim.shutdown().await.expect("sim");
    restored.server.shutdown().await.expect("shutdown restored");
    t.server.shutdown().await.expect("shutdown");
}

fn open_torn(dir: &Path, _fsync: Fsync) -> syncpay::store::Store {
    let config = StoreConfig { torn_backup: true, ..StoreConfig::new(dir) };
    Arc::new(SledStore::open(config).expect("open the sled store"))
}

/// The sled store with the planted bug: each tree copied at its own point.
const TORN: BackendFactory = BackendFactory { name: "sled-torn", open: open_torn, serve_args: |_| Vec::new() };

/// Backups taken with the planted bug under load are caught.
const TORN_ATTEMPTS: usize = 5;

/// The test above must be able to fail: with the planted bug (each tree
/// copied by its own writer job while shops buy), the copy is no single
/// point of the writer's order, and restoring it finds the ledger broken
/// (account balances that are not the sum of their postings, settled
/// trades without their postings).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_torn_across_write_groups_is_caught_on_restore() {
    let (t, tokens, sim) = world(&TORN).await;
    let scratch = tempfile::tempdir().expect("tempdir");
    let mut load = start_load(&t, &tokens).await;
    load.wait_settled(4).await;
    let mut admin = t.admin().await;
    let mut caught = Vec::new();
    for attempt in 0..TORN_ATTEMPTS {
        let dir = scratch.path().join(format!("torn-{attempt}"));
        admin.backup_store(proto::BackupStoreRequest { dir: dir.display().to_string() }).await.expect("backup");
        match restore(&dir, &scratch.path().join(format!("restored-{attempt}"))).await {
            Ok(report) if report.verify.ok() => {}
            Ok(report) => caught.push(format!("ledger: {:?}", report.verify.violations.first())),
            Err(e) => caught.push(format!("restore: {e}")),
        }
        let now = *load.settled.borrow();
        load.wait_settled(now + 2).await;
    }
    load.stop().await;
    sim.shutdown().await.expect("sim");
    eprintln!("torn backups caught: {} of {TORN_ATTEMPTS}: {caught:?}", caught.len());
    assert!(!caught.is_empty(), "no torn backup was caught in {TORN_ATTEMPTS} attempts");
    t.server.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_backup_an_existing_target_and_a_bad_request_are_refused() {
    let t = TestServer::start().await;
    let shop_token = t.create_shop("acme", "Acme").await;
    t.create_carrier("docomo", "Docomo").await;
    let scratch = tempfile::tempdir().expect("tempdir");
    let dir = scratch.path().join("b");
    let mut admin = t.admin().await;
    let ok = admin.backup_store(proto::BackupStoreRequest { dir: dir.display().to_string() }).await;
    assert!(ok.is_ok(), "{ok:?}");

    // The target: not twice into the same folder, absolute only, named.
    let again = admin.backup_store(proto::BackupStoreRequest { dir: dir.display().to_string() }).await;
    let status = again.expect_err("a second backup into a full folder");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(status.message().starts_with("dir:") && status.message().contains("not empty"), "{status:?}");
    for (bad, why) in [("", "name"), ("relative/dir", "absolute"), ("/tmp/../etc", ".."), ("/tmp/a\u{7}", "control")] {
        let status = admin.backup_store(proto::BackupStoreRequest { dir: bad.into() }).await.expect_err(bad);
        assert_eq!(status.code(), Code::InvalidArgument, "{bad}");
        assert!(status.message().starts_with("dir:") && status.message().contains(why), "{bad}: {status:?}");
    }
    let missing_parent = scratch.path().join("no/such/folder");
    let status = admin
        .backup_store(proto::BackupStoreRequest { dir: missing_parent.display().to_string() })
        .await
        .expect_err("no parent");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(status.message().contains("parent"), "{status:?}");

    // Only the operator: a shop's credential is refused.
    let mut as_shop = syncpay::proto::admin_service_client::AdminServiceClient::new(t.authed(&shop_token).await);
    let denied =
        as_shop.backup_store(proto::BackupStoreRequest { dir: scratch.path().join("c").display().to_string() }).await;
    assert!(matches!(code_of(denied), Code::PermissionDenied | Code::Unauthenticated));
    assert!(!scratch.path().join("c").exists(), "a refused caller wrote nothing");

    // A restore over an existing folder is refused, and writes nothing.
    let occupied = scratch.path().join("occupied");
    std::fs::create_dir(&occupied).expect("dir");
    std::fs::write(occupied.join("keep"), b"mine").expect("file");
    match restore(&dir, &occupied).await {
        Err(RestoreError::Target(m)) => assert!(m.contains("not empty"), "{m}"),
        other => panic!("restore over a store: {other:?}"),
    }
    assert_eq!(std::fs::read_dir(&occupied).expect("read").count(), 1);
    // Over the running server's own data folder too.
    assert!(matches!(restore(&dir, &t.data_dir).await, Err(RestoreError::Target(_))));

    // A damaged dump: one flipped byte is found by the checksum, before
    // anything is built.
    let damaged = scratch.path().join("damaged");
    copy_dir(&dir, &damaged);
    let mut dump = std::fs::read(damaged.join(DUMP_FILE)).expect("dump");
    let middle = dump.len() / 2;
    dump[middle] ^= 0x01;
    std::fs::write(damaged.join(DUMP_FILE), &dump).expect("write");
    let target = scratch.path().join("from-damaged");
    match restore(&damaged, &target).await {
        Err(RestoreError::Damaged { message, .. }) => assert!(message.contains("checksum"), "{message}"),
        other => panic!("a damaged backup restored: {other:?}"),
    }
    assert!(!target.exists(), "nothing built from a damaged backup");
    // A cut one, and a damaged secret, and one without its manifest.
    let cut = scratch.path().join("cut");
    copy_dir(&dir, &cut);
    let dump = std::fs::read(cut.join(DUMP_FILE)).expect("dump");
    std::fs::write(cut.join(DUMP_FILE), &dump[..dump.len() - 3]).expect("write");
    assert!(matches!(restore(&cut, &scratch.path().join("t2")).await, Err(RestoreError::Damaged { .. })));
    let secret = scratch.path().join("secret");
    copy_dir(&dir, &secret);
    std::fs::write(secret.join("server.secret"), [0u8; 32]).expect("write");
    assert!(matches!(restore(&secret, &scratch.path().join("t3")).await, Err(RestoreError::Damaged { .. })));
    let unfinished = scratch.path().join("unfinished");
    copy_dir(&dir, &unfinished);
    std::fs::remove_file(unfinished.join(MANIFEST_FILE)).expect("rm");
    match restore(&unfinished, &scratch.path().join("t4")).await {
        Err(RestoreError::Damaged { message, .. }) => assert!(message.contains("manifest"), "{message}"),
        other => panic!("{other:?}"),
    }
    // The intact one restores, and the copy of the secret is the server's.
    let good = scratch.path().join("good");
    let report = restore(&dir, &good).await.expect("restore");
    assert!(report.verify.ok());
    assert_eq!(
        std::fs::read(good.join("server.secret")).expect("secret"),
        std::fs::read(t.data_dir.join("server.secret")).expect("secret")
    );
    t.server.shutdown().await.expect("shutdown");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_answers_unimplemented_naming_its_own_tools() {
    if common::pg::tools().is_none() {
        // With CI set, `tools()` fails instead of answering None.
        return;
    }
    let t = TestServer::start_on(&common::backends::POSTGRES).await;
    let scratch = tempfile::tempdir().expect("tempdir");
    let dir = scratch.path().join("b");
    let status = t
        .admin()
        .await
        .backup_store(proto::BackupStoreRequest { dir: dir.display().to_string() })
        .await
        .expect_err("no online backup on PostgreSQL");
    assert_eq!(status.code(), Code::Unimplemented);
    assert!(status.message().contains("pg_basebackup"), "{status:?}");
    assert!(!dir.exists(), "nothing written");
    t.server.shutdown().await.expect("shutdown");
}

/// One backup at a time: backups asked for together are refused with a
/// named, retryable FAILED_PRECONDITION while one is being taken; a
/// refused one leaves its folder unmade, every taken one is whole, and
/// once they are done the next is taken.
#[tokio::test]
async fn a_backup_asked_for_while_another_is_taken_is_refused_and_leaves_nothing() {
    let t = TestServer::start().await;
    t.create_shop("acme", "Acme").await;
    t.create_carrier("docomo", "Docomo").await;
    let scratch = tempfile::tempdir().expect("tempdir");
    let admin = t.admin().await;
    const AT_ONCE: usize = 4;
    const ROUNDS: usize = 50;
    let (mut taken, mut refused) = (0, 0);
    for round in 0..ROUNDS {
        let mut asks = tokio::task::JoinSet::new();
        for i in 0..AT_ONCE {
            let mut admin = admin.clone();
            let dir = scratch.path().join(format!("r{round}-{i}"));
            asks.spawn(async move {
                let answer = admin.backup_store(proto::BackupStoreRequest { dir: dir.display().to_string() }).await;
                (dir, answer)
            });
        }
        for (dir, answer) in asks.join_all().await {
            match answer {
                Ok(_) => {
                    taken += 1;
                    let m = manifest(&dir);
                    assert_eq!(m.files.len(), 3, "{m:?}");
                }
                Err(status) => {
                    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
                    assert!(status.message().contains("another backup is being taken"), "{status:?}");
                    assert!(!dir.exists(), "a refused backup made {}", dir.display());
                    refused += 1;
                }
            }
        }
        if refused > 0 && round > 0 {
            break;
        }
    }
    assert!(refused > 0, "{taken} backups asked for {AT_ONCE} at a time, none refused");
    assert!(taken > 0);
    // The flag is cleared whichever way each ended: the next one is taken.
    let after = scratch.path().join("after");
    let ok = admin.clone().backup_store(proto::BackupStoreRequest { dir: after.display().to_string() }).await;
    assert!(ok.is_ok(), "{ok:?}");
    assert!(restore(&after, &scratch.path().join("restored")).await.expect("restore").verify.ok());
    t.server.shutdown().await.expect("shutdown");
}
