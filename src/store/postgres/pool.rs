//! Connecting: a `store.url` parsed and checked, a pool of connections
//! that each commit synchronously, and the server's durability checked
//! before anything is written.
//!
//! Every connection starts with `synchronous_commit = on` (the client sets
//! it, whatever the server's default): a commit returns only once its WAL
//! is flushed on the primary and, when `synchronous_standby_names` names a
//! standby, on that standby too. A server with `fsync = off` is refused.
//! For failover, the URL may name several hosts with
//! `target_session_attrs=read-write`: a new connection goes to whichever
//! host is the primary now, so after a promotion the pool's replacements
//! find the new one by themselves.

use std::str::FromStr;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::config::Host;
use tokio_postgres::{Client, NoTls};

use super::PgError;

/// Connections per node unless configured (`store.pool_size`): enough for
/// the writes in flight at 64 concurrent trades, far below PostgreSQL's
/// default of 100 connections even with a few nodes.
pub const DEFAULT_POOL_SIZE: usize = 16;
/// Bounds of `store.pool_size`.
pub const MAX_POOL_SIZE: usize = 256;
/// How long a new connection may take (per host tried): a primary that is
/// gone must not hold a node's writes for minutes.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The oldest PostgreSQL whose features the schema and queries use.
pub const MIN_SERVER_VERSION_NUM: i32 = 130_000;
/// Set on every connection at start-up (libpq's `options`): commits are
/// synchronous, transactions are READ COMMITTED unless a statement asks
/// for more (docs/POSTGRES.md says which rely on what), and a statement
/// waiting on a lock gives up rather than hold a pool slot forever.
const SESSION_OPTIONS: &str =
    "-c synchronous_commit=on -c default_transaction_isolation=read\\ committed -c lock_timeout=30s";

/// Parses and checks a `store.url` (`postgres://user@host:port/db?…`,
/// several `host:port` separated by commas). Plaintext is accepted only to
/// loopback hosts or a Unix socket: no TLS connector is built in yet, and
/// credentials must not cross a network in the clear.
pub fn parse_url(url: &str) -> Result<tokio_postgres::Config, String> {
    if !url.starts_with("postgres://") && !url.starts_with("postgresql://") {
        return Err("must start with postgres:// or postgresql://".into());
    }
    let config = tokio_postgres::Config::from_str(url).map_err(|e| format!("not a PostgreSQL URL: {e}"))?;
    if config.get_dbname().is_none() {
        return Err("names no database (postgres://user@host:port/DATABASE)".into());
    }
    if config.get_hosts().is_empty() {
        return Err("names no host".into());
    }
    for host in config.get_hosts() {
        match host {
            Host::Tcp(name) => {
                let loopback =
                    name == "localhost" || name.parse::<std::net::IpAddr>().map(|ip| ip.is_loopback()).unwrap_or(false);
                if !loopback {
                    return Err(format!(
                        "host {name} is not loopback: plaintext to a remote database is refused (reach it \
                         through a local TLS tunnel or socket)"
                    ));
                }
            }
            Host::Unix(_) => {}
        }
    }
    Ok(config)
}

/// `url` with any password replaced by `***`, for logs and
/// `--check-config`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let (authority, tail) = match rest.find(['/', '?']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let authority = match authority.rsplit_once('@') {
        Some((user, hosts)) => match user.split_once(':') {
            Some((name, _password)) => format!("{name}:***@{hosts}"),
            None => authority.to_owned(),
        },
        None => authority.to_owned(),
    };
    let tail = match tail.split_once("password=") {
        Some((before, after)) => {
            let end = after.find('&').map_or("", |i| &after[i..]);
            format!("{before}password=***{end}")
        }
        None => tail.to_owned(),
    };
    format!("{scheme}://{authority}{tail}")
}

/// A pool for `url` with at most `size` connections; the first connection
/// is made and checked now, so a wrong URL or an unsafe server is an error
/// at start rather than on the first trade.
pub async fn connect(url: &str, size: usize) -> Result<Pool, PgError> {
    let mut config = parse_url(url).map_err(PgError::Config)?;
    configure(&mut config);
    // Verified: a connection is checked with an empty query before it is
    // handed out, so one that died with its server is replaced instead of
    // failing a trade.
    let manager = Manager::from_config(config, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Verified });
    let pool = Pool::builder(manager)
        .max_size(size.clamp(1, MAX_POOL_SIZE))
        .build()
        .map_err(|e| PgError::Config(e.to_string()))?;
    let client = pool.get().await?;
    check_server(&client).await?;
    Ok(pool)
}

/// What every connection of syncpay's starts with: synchronous commits,
/// READ COMMITTED, a lock timeout, a connect timeout, its name.
pub fn configure(config: &mut tokio_postgres::Config) {
    config.options(SESSION_OPTIONS);
    config.connect_timeout(CONNECT_TIMEOUT);
    config.application_name("syncpay");
}

/// What the server said about its durability.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerDurability {
    pub server_version_num: i32,
    /// `synchronous_standby_names`; empty means commits wait for the
    /// primary's disk only.
    pub synchronous_standby_names: String,
}

/// Refuses a server that could lose an acknowledged commit or that this
/// binary cannot use.
pub async fn check_server(client: &Client) -> Result<ServerDurability, PgError> {
    let setting = |name: &'static str| async move {
        let row = client.query_one("SELECT current_setting($1)", &[&name]).await?;
        Ok::<String, PgError>(row.try_get(0)?)
    };
    let version: i32 = setting("server_version_num")
        .await?
        .parse()
        .map_err(|_| PgError::Unsafe("server_version_num is not a number".into()))?;
    if version < MIN_SERVER_VERSION_NUM {
        return Err(PgError::Unsafe(format!("PostgreSQL {version} is older than {MIN_SERVER_VERSION_NUM}")));
    }
    if setting("fsync").await? != "on" {
        return Err(PgError::Unsafe("fsync is off: a crash could lose acknowledged trades".into()));
    }
    let commit = setting("synchronous_commit").await?;
    if commit != "on" && commit != "remote_apply" {
        return Err(PgError::Unsafe(format!("synchronous_commit is {commit}, not on")));
    }
    if setting("transaction_read_only").await? == "on" {
        return Err(PgError::Unsafe("the server is read-only (a standby?)".into()));
    }
    Ok(ServerDurability {
        server_version_num: version,
        synchronous_standby_names: setting("synchronous_standby_names").await?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact_url("postgres://u:secret@127.0.0.1:5432/db"), "postgres://u:***@127.0.0.1:5432/db");
        assert_eq!(
            redact_url("postgres://u@127.0.0.1/db?password=secret&target_session_attrs=read-write"),
            "postgres://u@127.0.0.1/db?password=***&target_session_attrs=read-write"
        );
        assert_eq!(redact_url("postgres://u@127.0.0.1/db"), "postgres://u@127.0.0.1/db");
        // ("password" itself contains "ss": look for the secret's own text.)
        let shown = redact_url("postgres://u:p%40ss@localhost/db?password=x");
        assert_eq!(shown, "postgres://u:***@localhost/db?password=***");
    }

    #[test]
    fn urls_are_checked() {
        let ok = parse_url("postgres://syncpay@127.0.0.1:5432/syncpay").expect("loopback");
        assert_eq!(ok.get_dbname(), Some("syncpay"));
        let multi =
            parse_url("postgres://u@127.0.0.1:5432,127.0.0.1:5433/db?target_session_attrs=read-write").expect("multi");
        assert_eq!(multi.get_hosts().len(), 2);
        assert_eq!(multi.get_target_session_attrs(), tokio_postgres::config::TargetSessionAttrs::ReadWrite);
        assert!(parse_url("postgres://u@localhost/db").is_ok());
        assert!(parse_url("postgres://u@[::1]:5432/db").is_ok());
        for bad in [
            "mysql://u@127.0.0.1/db",
            "postgres://u@127.0.0.1:5432",
            "postgres://u@db.example.com:5432/db",
            "postgres://u@127.0.0.1:5432,10.0.0.2:5432/db",
            "postgres://u@127.0.0.1:notaport/db",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }
}
