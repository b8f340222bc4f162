//! A power cut, not only kill -9: the real `syncpay serve` binary keeps its
//! data folder on a FUSE file system (`tests/common/lazyfs.rs`) that holds
//! every write nobody fsynced in memory and throws it all away on a power
//! cut, names of new, renamed and deleted files included until their
//! directory is fsynced. So, unlike `tests/crash.rs`, these tests can tell
//! an fsync from a flush.
//!
//! - `lazyfs_keeps_only_what_was_synced`: the file system's own model,
//!   through the real mount.
//! - `first_start_files_survive_a_power_cut`: what the server makes at its
//!   first start (the data folder, `admin.token`, `server.secret`, the
//!   receipt-signing key, the store folder and sled's `conf` and `db`) is
//!   durable before it serves.
//! - `a_rotated_receipt_key_survives_a_power_cut`: an acknowledged
//!   `RotateReceiptKey` is durable (the new active key and the retired one).
//! - `nothing_acknowledged_is_lost_across_power_cuts`: the crash harness
//!   (`tests/common/crash_rig.rs`: concurrent shops, a simulated carrier,
//!   every acknowledgement recorded and checked after each restart, the
//!   ledger verified) with a power cut at random moments: SIGKILL first,
//!   then the file system refuses every request (nothing the dying process
//!   had in flight lands), the process is reaped, every unsynced byte and
//!   name is dropped, and the server restarts on a fresh mount of what
//!   remains.
//! - `the_harness_catches_acknowledging_after_flush_without_fdatasync`:
//!   the same with the planted bug `--durability flush-only` (acknowledge
//!   after sled's flush, skip the fdatasync), which must be caught losing
//!   acknowledged changes within `PLANTED_CYCLES` cycles. It checks the
//!   harness's own sensitivity: if it ever passes, the file system is not
//!   dropping enough.
//!
//! FUSE needs `/dev/fuse` and the right to mount (root here; no libfuse or
//! fusermount3 is needed). Without them the tests say so and pass, except
//! with `CI` set, where they fail. Seeds print and replay; the long run is
//! opt-in:
//!
//! ```text
//! SYNCPAY_POWERLOSS_SEED=1234 cargo test --test power_loss -- --nocapture
//! SYNCPAY_POWERLOSS_CYCLES=200 cargo test --release --test power_loss nothing_acknowledged -- --nocapture
//! ```

#[path = "common/crash_rig.rs"]
mod crash_rig;
#[path = "common/lazyfs.rs"]
mod lazyfs;

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use crash_rig::{Crash, Expect, Launch, ServerProcess, Spec};
use lazyfs::LazyFs;
use syncpay::client::with_token;
use syncpay::proto;
use syncpay::proto::admin_service_client::AdminServiceClient;
use syncpay::proto::register_service_client::RegisterServiceClient;

/// Power-cut cycles of the default run; `SYNCPAY_POWERLOSS_CYCLES`
/// overrides.
const DEFAULT_CYCLES: u32 = 3;
/// The planted bug must be caught within this many cycles. It can lose
/// what was acknowledged since sled's flusher last synced (it does every
/// 50 ms); a cut catches an acknowledged change in that window in about
/// two cycles of three, so 1 to 3 cycles (a few seconds) are the rule and
/// 20 misses with odds below one in a billion.
const PLANTED_CYCLES: u32 = 20;
/// How long a power cut waits for a moment with unsynced writes. Under the
/// load, one comes within milliseconds; an idle server has none.
const PENDING_WAIT: Duration = Duration::from_secs(1);

/// The two load tests share the machine's two cores; one at a time keeps
/// each within its deadlines on a busy machine.
static LOAD: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The file system, or `None` (after saying why) when FUSE cannot mount
/// here and `CI` is not set. With `CI` set, no FUSE is a failure.
fn mount() -> Option<LazyFs> {
    match LazyFs::mount() {
        Ok(fs) => Some(fs),
        Err(e) if std::env::var_os("CI").is_some() => {
            panic!("the power-loss tests need FUSE (/dev/fuse, and root or fusermount3): {e}")
        }
        Err(e) => {
            eprintln!("power-loss test skipped: FUSE is not available here ({e}); with CI set this fails");
            None
        }
    }
}

/// A power cut: the server dies first, then the disk forgets.
struct PowerCut {
    fs: LazyFs,
}

impl PowerCut {
    fn cut(&mut self, mut server: ServerProcess) -> lazyfs::Cut {
        let pid = server.pid();
        // SIGKILL first, so the process never runs on top of a disk that
        // has already forgotten; then the fence, so nothing it still had
        // in flight (a write, an fsync) lands after the cut. The moment is
        // one with unsynced writes, if one comes within PENDING_WAIT: with
        // fsync after every write group, a moment picked blindly mostly
        // finds nothing to lose.
        let fs = &self.fs;
        let pending =
            tokio::task::block_in_place(|| fs.kill_and_fence_when_pending(PENDING_WAIT, || server.signal_kill()));
        drop(server); // reaped
        let cut = self.fs.power_cut();
        eprintln!(
            "power cut (server pid {pid}, {pending} bytes pending): dropped {} unsynced writes/truncations \
             ({} bytes), {} name changes undone, {} inodes deleted",
            cut.dropped_ops, cut.dropped_bytes, cut.names_undone, cut.inodes_deleted
        );
        cut
    }
}

impl Crash for PowerCut {
    async fn crash(&mut self, server: ServerProcess) {
        self.cut(server);
    }
}

fn read(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    File::open(path)?.read_to_end(&mut buf)?;
    Ok(buf)
}

fn sync_dir(path: &Path) {
    File::open(path).and_then(|d| d.sync_all()).expect("fsync directory");
}

#[test]
fn lazyfs_keeps_only_what_was_synced() {
    let Some(mut fs) = mount() else { return };
    let root = fs.path().to_owned();
    let write = |name: &str, text: &str| {
        let mut f = OpenOptions::new().create(true).append(true).open(root.join(name)).expect("open");
        f.write_all(text.as_bytes()).expect("write");
        f
    };
    // Synced data and name; then more data, never synced.
    write("kept", "synced").sync_data().expect("fdatasync");
    sync_dir(&root);
    write("kept", " + lost");
    // A truncation, synced, then a rewrite that is not.
    let f = write("short", "0123456789");
    f.sync_all().expect("fsync");
    sync_dir(&root);
    f.set_len(4).expect("truncate");
    f.sync_data().expect("fdatasync");
    f.set_len(0).expect("truncate");
    write("short", "lost");
    // A durable directory whose new entry is durable, and one whose isn't.
    std::fs::create_dir(root.join("d")).expect("mkdir");
    sync_dir(&root);
    write("d/in", "x").sync_all().expect("fsync");
    sync_dir(&root.join("d"));
    std::fs::create_dir(root.join("gone")).expect("mkdir");
    // Data synced, name never: the file does not survive.
    write("unnamed", "synced").sync_all().expect("fsync");
    // A rename made durable, and a removal that is not.
    std::fs::rename(root.join("d/in"), root.join("d/renamed")).expect("rename");
    sync_dir(&root.join("d"));
    std::fs::remove_file(root.join("kept")).expect("unlink");
    assert_eq!(fs.pending_bytes(), " + lost".len() + "lost".len(), "pending bytes before the cut");

    fs.fence();
    let refused = OpenOptions::new().append(true).open(root.join("short")).and_then(|mut f| f.write_all(b"late"));
    assert!(refused.is_err(), "a fenced file system refuses writes");
    let cut = fs.power_cut();

    assert_eq!(read(&root.join("kept")).expect("kept survives its unsynced unlink"), b"synced");
    assert!(!root.join("unnamed").exists(), "a name whose directory was never fsynced is lost");
    assert_eq!(read(&root.join("short")).expect("short"), b"0123");
    assert_eq!(read(&root.join("d/renamed")).expect("renamed"), b"x");
    assert!(!root.join("d/in").exists(), "the durable rename removed the old name");
    assert!(!root.join("gone").exists(), "an unsynced mkdir is lost");
    assert_eq!(cut.dropped_bytes, u64::try_from(" + lost".len() + "lost".len()).expect("fits"), "{cut:?}");
    assert_eq!(fs.counters().refused_after_fence, 1, "{:?}", fs.counters());
    assert_eq!(fs.pending_bytes(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_start_files_survive_a_power_cut() {
    let Some(fs) = mount() else { return };
    let data_dir = fs.path().join("syncpay");
    let launch = Launch { data_dir: data_dir.clone(), args: Vec::new() };
    let mut power = PowerCut { fs };

    // The data folder does not exist: the server makes all of it.
    let server = ServerProcess::start(&launch).await;
    let token = String::from_utf8(read(&data_dir.join("admin.token")).expect("admin.token")).expect("text");
    let secret = read(&data_dir.join("server.secret")).expect("server.secret");
    let receipt_keys = read(&data_dir.join("receipt-signing.keys")).expect("receipt-signing.keys");
    let channel = server.channel().await;
    let mut admin = AdminServiceClient::new(with_token(channel.clone(), token.trim()).expect("token"));
    let published = admin.get_receipt_keys(proto::GetReceiptKeysRequest {}).await.expect("receipt keys").into_inner();
    let shop_token = admin
        .create_shop(proto::CreateShopRequest { shop_id: "corner".into(), display_name: "Corner".into() })
        .await
        .expect("create shop (acknowledged)")
        .into_inner()
        .token;
    power.cut(server);

    let found = |name: &str| read(&data_dir.join(name)).map_err(|e| format!("{name}: {e}"));
    let token_now = found("admin.token").map(|t| String::from_utf8_lossy(&t).into_owned());
    assert_eq!(token_now, Ok(token.clone()), "the operator token survives");
    assert!(found("server.secret") == Ok(secret), "the server secret survives: {:?}", found("server.secret").err());
    assert!(
        found("receipt-signing.keys") == Ok(receipt_keys),
        "the receipt-signing key survives: {:?}",
        found("receipt-signing.keys").err()
    );
    let conf = found("store/conf").map(|c| String::from_utf8_lossy(&c).into_owned());
    assert!(
        conf.as_ref().is_ok_and(|c| c.contains("segment_size: ")),
        "sled's conf survives with its segment size: {conf:?}"
    );
    assert!(found("store/db").is_ok_and(|db| !db.is_empty()), "sled's data file survives");

    let server = ServerProcess::start(&launch).await;
    let channel = server.channel().await;
    let mut admin = AdminServiceClient::new(with_token(channel.clone(), token.trim()).expect("token"));
    let report = admin.verify_ledger(proto::VerifyLedgerRequest {}).await.expect("the old operator token works");
    assert!(report.get_ref().ok, "{:?}", report.get_ref().violations);
    let keys_now = admin.get_receipt_keys(proto::GetReceiptKeysRequest {}).await.expect("receipt keys").into_inner();
    assert_eq!(keys_now, published, "receipts are countersigned and checked with the same key after the cut");
    let mut shop = RegisterServiceClient::new(with_token(channel, &shop_token).expect("token"));
    shop.list_registers(proto::ListRegistersRequest {}).await.expect("the acknowledged shop survives");
    drop(server);
}

/// An acknowledged receipt-key rotation is durable: after a power cut the
/// server signs with the new key and still publishes the old one (the
/// key file is replaced by a synced new file, a rename and a directory
/// sync).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_receipt_key_survives_a_power_cut() {
    let Some(fs) = mount() else { return };
    let data_dir = fs.path().join("syncpay");
    let launch = Launch { data_dir: data_dir.clone(), args: Vec::new() };
    let mut power = PowerCut { fs };

    let server = ServerProcess::start(&launch).await;
    let token = String::from_utf8(read(&data_dir.join("admin.token")).expect("admin.token")).expect("text");
    let mut admin = AdminServiceClient::new(with_token(server.channel().await, token.trim()).expect("token"));
    let before = admin.get_receipt_keys(proto::GetReceiptKeysRequest {}).await.expect("receipt keys").into_inner();
    let rotated =
        admin.rotate_receipt_key(proto::RotateReceiptKeyRequest {}).await.expect("rotate (acknowledged)").into_inner();
    assert_eq!(rotated.keys.len(), 2, "{rotated:?}");
    assert_ne!(rotated.keys[0].public_key, before.keys[0].public_key, "a new active key");
    assert_eq!(rotated.keys[1].public_key, before.keys[0].public_key, "the old key stays published");
    power.cut(server);

    let server = ServerProcess::start(&launch).await;
    let mut admin = AdminServiceClient::new(with_token(server.channel().await, token.trim()).expect("token"));
    let after = admin.get_receipt_keys(proto::GetReceiptKeysRequest {}).await.expect("receipt keys").into_inner();
    assert_eq!(after, rotated, "the acknowledged rotation survives the power cut");
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_acknowledged_is_lost_across_power_cuts() {
    let Some(fs) = mount() else { return };
    let _one_at_a_time = LOAD.lock().await;
    let launch = Launch { data_dir: fs.path().join("syncpay"), args: Vec::new() };
    let spec =
        Spec::from_env("power-loss test", "SYNCPAY_POWERLOSS_SEED", "SYNCPAY_POWERLOSS_CYCLES", DEFAULT_CYCLES, launch);
    let mut power = PowerCut { fs };
    let outcome = crash_rig::run(spec, &mut power).await;
    // The store syncs no blob files: it relies on sled writing none (only
    // values over a quarter of a segment become blobs).
    let blobs = power.fs.path().join("syncpay/store/blobs");
    let blob_files: Vec<_> = std::fs::read_dir(&blobs).expect("store/blobs").collect();
    assert!(blob_files.is_empty(), "sled wrote blobs, which the store does not sync: {blob_files:?}");
    let fs = power.fs.counters();
    eprintln!(
        "power-loss test: {} power cuts ({} during recovery), {} trades, {} refunds, {} acknowledgements \
         ({} checked after restarts), {:.1} s; file system {fs:?}",
        fs.power_cuts,
        outcome.recovery_crashes,
        outcome.trades,
        outcome.refunds,
        outcome.stats.acknowledgements,
        outcome.stats.acks_checked,
        outcome.elapsed.as_secs_f64()
    );
    // The test means something only if the cuts took unsynced data away
    // (how much that catches: the planted-bug test below).
    assert!(fs.dropped_bytes > 0, "no power cut dropped any unsynced byte: {fs:?}");
    assert!(outcome.stats.acks_checked > 0, "no acknowledgement was checked after a restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_harness_catches_acknowledging_after_flush_without_fdatasync() {
    let Some(fs) = mount() else { return };
    let _one_at_a_time = LOAD.lock().await;
    let args = vec!["--durability".to_owned(), "flush-only".to_owned()];
    let launch = Launch { data_dir: fs.path().join("syncpay"), args };
    let seed_var = "SYNCPAY_POWERLOSS_SEED";
    let seed = crash_rig::env_u64(seed_var).unwrap_or_else(rand::random);
    let label = "planted bug (flush-only)";
    let spec = Spec { label, seed_var, seed, cycles: PLANTED_CYCLES, launch, expect: Expect::Loss };
    let mut power = PowerCut { fs };
    let outcome = crash_rig::run(spec, &mut power).await;
    eprintln!(
        "planted bug: {} violations ({} acknowledged facts lost) found at {} after {} cycles, {} trades, \
         {} acknowledgements, {:.1} s; first: {:?}",
        outcome.violations.len(),
        outcome.stats.lost,
        outcome.stopped_at,
        outcome.cycles,
        outcome.trades,
        outcome.stats.acknowledgements,
        outcome.elapsed.as_secs_f64(),
        outcome.violations.first()
    );
    assert!(
        outcome.stats.lost > 0,
        "acknowledging after sled's flush without fdatasync lost nothing acknowledged in {PLANTED_CYCLES} \
         power cuts (seed {}): the file system is not dropping enough. Violations: {:?}",
        outcome.seed,
        outcome.violations
    );
}
