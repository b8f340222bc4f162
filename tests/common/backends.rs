//! The store backends the semantic suites run against: the model
//! (`store_model.rs`), billing (`billing_store.rs`, `carrier_billing.rs`),
//! bank, crash, carrier-fault, deadline (`deadline_races.rs`,
//! `expiry_on_time.rs`), exactly-once, isolation, limits (the offer
//! allowance), receipts and settlement-loop tests each run once per entry
//! of [`backends`]. A new
//! backend adds one factory there; nothing in the suites changes.
//! (`power_loss.rs` stays on sled: it cuts the power under the embedded
//! store's own files.)

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};
use syncpay::store::postgres::{PgConfig, PgStore};
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

/// Connections per PostgreSQL store in tests: the serve default (the
/// suites run 100+ trades at once); a test binary opens few stores at a
/// time on its cluster of 200 connections.
const PG_POOL_SIZE: usize = 16;

/// Databases of this test binary's cluster made so far (by name).
static PG_DATABASES: Mutex<Option<HashSet<String>>> = Mutex::new(None);

/// The database that stands for `dir`: one per folder, so reopening the
/// folder (a restart) reopens the same data. Made on first use in the
/// binary's one throwaway cluster (`common::pg`).
pub fn pg_url(dir: &Path) -> String {
    let cluster = super::pg::cluster().expect("PostgreSQL is installed (backends() listed it)");
    let digest = Sha256::digest(dir.as_os_str().as_encoded_bytes());
    let name: String = std::iter::once("d".to_owned()).chain(digest[..10].iter().map(|b| format!("{b:02x}"))).collect();
    let mut made = PG_DATABASES.lock().unwrap_or_else(|p| p.into_inner());
    let made = made.get_or_insert_with(HashSet::new);
    if made.insert(name.clone()) {
        cluster.create_database(&name).expect("create the test database");
    }
    cluster.url(&name)
}

/// PostgreSQL always commits synchronously (the store refuses a server
/// that does not), so `Fsync::Off` changes nothing here.
fn open_postgres(dir: &Path, _fsync: Fsync) -> Store {
    let config = PgConfig::new(pg_url(dir), PG_POOL_SIZE);
    Arc::new(PgStore::open(config).expect("open the PostgreSQL store"))
}

/// Several nodes on one database: a database per folder, in a throwaway
/// cluster per test binary; `serve` reaches it with `store.url`.
pub const POSTGRES: BackendFactory = BackendFactory {
    name: "postgres",
    open: open_postgres,
    serve_args: |dir| vec!["--set".to_owned(), format!("store.url={}", pg_url(dir))],
};

/// Every backend the semantic suites run against: sled always, PostgreSQL
/// when it is installed (with `CI` set, a missing PostgreSQL fails here).
pub fn backends() -> Vec<&'static BackendFactory> {
    if super::pg::tools().is_some() {
        vec![&SLED, &POSTGRES]
    } else {
        vec![&SLED]
    }
}
