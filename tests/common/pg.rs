//! PostgreSQL for the tests: one throwaway cluster per test binary
//! (`syncpay::pg_cluster`: started on first use, stopped when the process
//! exits however it exits) and a fresh database per test. Without
//! PostgreSQL a test prints why and returns; with `CI` set it fails,
//! never skips.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

use syncpay::pg_cluster::{Cluster, ClusterError, PgTools};

static CLUSTER: OnceLock<Result<Cluster, String>> = OnceLock::new();
static NEXT_DB: AtomicU32 = AtomicU32::new(1);

/// `Some(tools)`, or `None` after saying why PostgreSQL is missing; panics
/// when `CI` is set, or when PostgreSQL is there but broken.
pub fn tools() -> Option<PgTools> {
    match PgTools::find() {
        Ok(t) => Some(t),
        Err(e) => missing(e),
    }
}

fn missing<T>(e: ClusterError) -> Option<T> {
    match e {
        ClusterError::Missing(_) if std::env::var_os("CI").is_none() => {
            eprintln!("SKIPPED (PostgreSQL tests): {e}. With CI set this is a failure.");
            None
        }
        ClusterError::Missing(_) => panic!("CI is set and PostgreSQL is required: {e}"),
        ClusterError::Failed(_) => panic!("PostgreSQL is installed but a cluster would not start: {e}"),
    }
}

/// The test binary's shared cluster.
pub fn cluster() -> Option<&'static Cluster> {
    let tools = tools()?;
    // In memory where the machine has it (fsync on, and free): these tests
    // are of the backend's logic and concurrency, and their deadlines must
    // not depend on a disk shared with other builds. SYNCPAY_PG_ON_DISK=1
    // puts the cluster on disk; the failover test always is.
    let on_disk = std::env::var_os("SYNCPAY_PG_ON_DISK").is_some();
    let started = CLUSTER.get_or_init(|| {
        if on_disk { Cluster::start(&tools) } else { Cluster::start_in_memory(&tools) }.map_err(|e| e.to_string())
    });
    match started {
        Ok(c) => Some(c),
        Err(e) => panic!("PostgreSQL is installed but a cluster would not start: {e}"),
    }
}

/// A new empty database on the shared cluster.
pub struct PgDb {
    pub name: String,
    pub url: String,
}

impl PgDb {
    /// A client on this database (its connection runs on a task).
    pub async fn client(&self) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls).await.expect("connect");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        client
    }

    /// A client with the schema migrated.
    pub async fn migrated(&self) -> tokio_postgres::Client {
        let mut client = self.client().await;
        syncpay::store::postgres::migrate::migrate(&mut client).await.expect("migrate");
        client
    }
}

/// A fresh database named after the test, or `None` (see [`tools`]).
pub fn database(hint: &str) -> Option<PgDb> {
    let cluster = cluster()?;
    let clean: String =
        hint.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' }).take(40).collect();
    let name = format!("t{}_{clean}", NEXT_DB.fetch_add(1, Ordering::SeqCst));
    cluster.create_database(&name).expect("create database");
    Some(PgDb { url: cluster.url(&name), name })
}
