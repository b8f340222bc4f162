//! The store backends the semantic suites run against: the model
//! (`store_model.rs`), billing store, bank, crash, carrier-fault, deadline
//! (`deadline_races.rs`, `expiry_on_time.rs`), exactly-once, isolation,
//! receipts and settlement-loop tests each run once per entry of
//! [`backends`]. A new
//! backend adds one factory there; nothing in the suites changes.
//! (`power_loss.rs` stays on sled: it cuts the power under the embedded
//! store's own files.)

use std::path::Path;
use std::sync::Arc;

use syncpay::store::sled::{Durability, SledStore, StoreConfig};
use syncpay::store::Store;

/// Whether a store must make every commit durable (fsync on), or may skip
/// that because the test checks logic, not durability.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fsync {
    On,
    Off,
}

/// How to get one backend's store for a test's folder.
pub struct BackendFactory {
    pub name: &'static str,
    /// Opens (or reopens) the store kept under `dir`.
    pub open: fn(&Path, Fsync) -> Store,
    /// What `syncpay serve` needs to use this backend on `dir` (the tests
    /// that run the real binary).
    pub serve_args: fn(&Path) -> Vec<String>,
}

impl std::fmt::Debug for BackendFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

fn open_sled(dir: &Path, fsync: Fsync) -> Store {
    let durability = match fsync {
        Fsync::On => Durability::Fsync,
        Fsync::Off => Durability::FlushOnly,
    };
    let config = StoreConfig { durability, ..StoreConfig::new(dir) };
    Arc::new(SledStore::open(config).expect("open the sled store"))
}

/// The embedded default: `serve` keeps it in `<data dir>/store`.
pub const SLED: BackendFactory = BackendFactory { name: "sled", open: open_sled, serve_args: |_| Vec::new() };

/// Every backend the semantic suites run against.
pub fn backends() -> Vec<&'static BackendFactory> {
    vec![&SLED]
}
