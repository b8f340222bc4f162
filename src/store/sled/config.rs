//! The sled backend's settings and how it opens its files: durability,
//! page cache, segment size, the flusher that is sled's segment cleaner,
//! and waiting for another server's file lock.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use crate::store::Failure;

/// How commits are made durable. `Fsync` is the default and the only
/// setting under which an acknowledgement means "survives power loss".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// sled flush followed by fdatasync of the store's data file, once per
    /// group of commits, before any of them is acknowledged.
    Fsync,
    /// sled flush only (sync_file_range on Linux): survives a process
    /// crash, not necessarily a power cut. Never the default.
    FlushOnly,
}

/// Injects a failure into the next sync, to prove that nothing is
/// acknowledged after a failed fsync. Only tests arm it; the CLI never
/// creates one.
#[derive(Debug, Default)]
pub struct SyncFault {
    armed: AtomicBool,
    fired: AtomicU64,
}

impl SyncFault {
    /// Makes the next sync fail.
    pub fn arm(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }

    /// How many syncs it has failed.
    pub fn fired(&self) -> u64 {
        self.fired.load(Ordering::SeqCst)
    }

    pub(crate) fn take(&self) -> bool {
        let hit = self.armed.swap(false, Ordering::SeqCst);
        if hit {
            self.fired.fetch_add(1, Ordering::SeqCst);
        }
        hit
    }
}

/// sled's page cache unless configured (`serve`'s `cache_mib`): 24 MiB.
/// 100 000 open trades cost ~1.1 KB of memory each at 64 MiB, 1.0-1.06 KB
/// at 32 and ~0.97 KB at 24 (mostly this cache filling); neither step
/// changed throughput measurably (alternating 15-s runs for 64 → 32; a
/// 300 000-trade fill for 32 → 24: 1 811 and 1 817 settled/s;
/// docs/BENCHMARK.md).
pub const DEFAULT_CACHE_BYTES: u64 = 24 * 1024 * 1024;

/// Store settings.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub path: PathBuf,
    pub durability: Durability,
    /// sled's page cache in bytes (its RSS can be a multiple of this).
    pub cache_bytes: u64,
    /// Test hook: fail a chosen sync.
    pub sync_fault: Option<Arc<SyncFault>>,
    /// Test hook, a planted bug: an online backup copies each tree in its
    /// own writer job, so the trees come from different points of the
    /// writer's order. `tests/backup.rs` shows its checks catch that.
    /// Always false in the CLI.
    pub torn_backup: bool,
}

impl StoreConfig {
    pub fn new(path: impl AsRef<Path>) -> Self {
        StoreConfig {
            path: path.as_ref().to_owned(),
            durability: Durability::Fsync,
            cache_bytes: DEFAULT_CACHE_BYTES,
            sync_fault: None,
            torn_backup: false,
        }
    }
}

/// How long `open` waits for the store's file lock. A previous server in
/// this process lets go within moments of its last handle dropping; a lock
/// held longer belongs to another process.
pub const OPEN_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// How often sled's flusher thread runs. sled 0.34 reclaims log segments
/// only there: each run relocates the live pages of at most one segment
/// that is at most half live (`SegmentCleaner::pop` stops at the end of a
/// segment), so this interval bounds how fast garbage is reclaimed.
/// Without the thread (`flush_every_ms(None)`, as before issue 6) nothing
/// is relocated and a segment comes back only once every page in it was
/// rewritten by the workload, which finished trades never are: the store
/// grew by ~3.3 KB per settled trade against ~0.7 KB of live records. Its
/// flush (and the `sync_all` after it) is extra: acknowledgements still
/// wait for the writer's own flush and fdatasync.
pub const SLED_GC_INTERVAL_MS: u64 = 50;

/// Log segment size of a new store. One flusher run cleans one segment, so
/// a larger segment reclaims more per run (at 50 ms and 50 000 trades:
/// 2.2 KB per settled trade with sled's 512 KiB default, 1.25 KB with
/// 2 MiB). sled refuses to open a store with another
/// segment size than it was made with, so an existing store keeps its own
/// ([`existing_segment_size`]).
pub const NEW_STORE_SEGMENT_SIZE: usize = 2 * 1024 * 1024;

/// The segment size recorded in an existing store's `conf` (sled writes
/// `segment_size: N` lines there, then a CRC), if there is one to read.
pub(crate) fn existing_segment_size(path: &Path) -> Option<usize> {
    let bytes = std::fs::read(path.join("conf")).ok()?;
    let text = String::from_utf8_lossy(&bytes);
    text.lines().find_map(|l| l.strip_prefix("segment_size: ")).and_then(|v| v.trim().parse().ok())
}

pub(crate) fn open_db(config: &StoreConfig) -> Result<sled::Db, Failure> {
    let started = std::time::Instant::now();
    let segment_size = existing_segment_size(&config.path).unwrap_or(NEW_STORE_SEGMENT_SIZE);
    loop {
        let opened = sled::Config::new()
            .path(&config.path)
            .cache_capacity(config.cache_bytes)
            .segment_size(segment_size)
            .flush_every_ms(Some(SLED_GC_INTERVAL_MS))
            .open();
        match opened {
            Ok(db) => return Ok(db),
            // sled reports a held lock as an `Other` I/O error with this text.
            Err(sled::Error::Io(e)) if e.to_string().contains("could not acquire lock") => {
                if started.elapsed() >= OPEN_LOCK_WAIT {
                    return Err(Failure::Io(format!("store {} is locked by another process", config.path.display())));
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => return Err(super::io(e)),
        }
    }
}
