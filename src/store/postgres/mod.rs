//! The PostgreSQL backend (issue 15), for several `syncpay serve` nodes on
//! one database: the schema as versioned migrations ([`migrate`]), the
//! connection pool with its durability checks ([`pool`]), amounts as
//! `numeric` ([`numeric`]), and the SQL of the writes whose concurrency the
//! invariants rest on ([`sql`]), each with the locks it takes; and
//! [`PgStore`], the store behind the storage boundary built on them
//! (`trades.rs`: a trade's writes; `parties.rs`: the others; `rows.rs`:
//! rows to records; `store.rs`: transactions, the boundary, verification);
//! `docs/POSTGRES.md` is the design: for every write, its SQL and the
//! isolation or locks it relies on.

pub mod migrate;
mod notify;
pub mod numeric;
mod parties;
pub mod pool;
mod rows;
pub mod sql;
mod store;
mod trades;

pub use store::{failure as store_failure, PgConfig, PgStore, HEAD_POLL};

/// Errors of the PostgreSQL backend.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("store.url: {0}")]
    Config(String),
    #[error("database schema version {database} is newer than this binary's {binary}: upgrade syncpay first")]
    SchemaTooNew { database: i32, binary: i32 },
    #[error("database schema differs from this binary's: {0}")]
    SchemaMismatch(String),
    /// The server could lose acknowledged commits, or is not usable.
    #[error("refusing the database: {0}")]
    Unsafe(String),
    #[error("connection pool: {0}")]
    Pool(String),
    #[error("postgres: {0}")]
    Db(#[from] tokio_postgres::Error),
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

impl From<deadpool_postgres::PoolError> for PgError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            deadpool_postgres::PoolError::Backend(db) => PgError::Db(db),
            other => PgError::Pool(other.to_string()),
        }
    }
}

impl PgError {
    /// The SQLSTATE of a database error, if this is one.
    pub fn code(&self) -> Option<&tokio_postgres::error::SqlState> {
        match self {
            PgError::Db(e) => e.code(),
            _ => None,
        }
    }

    /// Whether retrying the whole operation may succeed: the connection or
    /// server went away (a failover), or PostgreSQL chose this transaction
    /// as a deadlock or serialization victim. Nothing of a failed
    /// transaction was committed, except where the connection broke during
    /// COMMIT itself; that is why every retried write is idempotent.
    pub fn is_retryable(&self) -> bool {
        use tokio_postgres::error::SqlState;
        match self {
            PgError::Pool(_) => true,
            PgError::Db(e) => match e.code() {
                None => true,
                Some(c) => {
                    *c == SqlState::T_R_SERIALIZATION_FAILURE
                        || *c == SqlState::T_R_DEADLOCK_DETECTED
                        || *c == SqlState::ADMIN_SHUTDOWN
                        || *c == SqlState::CRASH_SHUTDOWN
                        || *c == SqlState::CANNOT_CONNECT_NOW
                        || *c == SqlState::READ_ONLY_SQL_TRANSACTION
                        || c.code().starts_with("08")
                }
            },
            PgError::Config(_)
            | PgError::SchemaTooNew { .. }
            | PgError::SchemaMismatch(_)
            | PgError::Unsafe(_)
            | PgError::Corrupt(_) => false,
        }
    }
}
