//! The server: the engine (every use case: trade orchestration, expiry,
//! event fan-out) and the gRPC edge over it (authentication, validation,
//! presentation, the one place errors become statuses), assembled over a
//! store and a carrier gateway. The caller binds the listener, so tests use
//! `127.0.0.1:0` and never wait for readiness.
//! With `ServerConfig::tls` the server speaks mutual TLS and callers are
//! known by their client certificates; without it, plaintext with bearer
//! tokens (for loopback development only: `syncpay serve` enforces that).

pub mod admin_service;
pub mod auth;
pub mod carrier_service;
pub mod convert;
pub mod engine;
pub mod error;
pub mod handshakes;
pub mod limits;
pub mod message_limit;
pub mod rate_limit;
pub mod receipt_keys;
pub mod refusal;
pub mod register_service;
pub mod requests;
pub mod secrets;
pub mod tls;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;

use crate::carrier::relay::RelayHub;
use crate::domain::approval::ServerSecret;
use crate::domain::receipt::ReceiptKeyring;
use crate::metrics;
use crate::proto::admin_service_server::AdminServiceServer;
use crate::proto::carrier_service_server::CarrierServiceServer;
use crate::proto::register_service_server::RegisterServiceServer;
use crate::store::backup::{self, RestoreError};
use crate::store::sled::{Durability, SledStore, StoreConfig, SyncFault};
use crate::store::{Failure, Store};

use self::auth::{interceptor, AuthMode, Authenticator, Party};
use self::engine::Engine;
use self::handshakes::{HandshakeCounts, HandshakeStats};
use self::limits::{Limits, MAX_CONCURRENT_STREAMS_PER_CONNECTION};
use self::message_limit::MessageLimitLayer;
use self::tls::{ReloadableTls, TlsError, TlsFiles};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("store: {0}")]
    Store(#[from] Failure),
    #[error("secrets: {0}")]
    Secret(#[from] secrets::SecretError),
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
    #[error("reflection: {0}")]
    Reflection(String),
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("server task: {0}")]
    Join(String),
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    #[error("TLS is not configured on this server")]
    NoTls,
}

/// Everything the server needs besides its listener.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The sled store lives here.
    pub store_dir: PathBuf,
    pub durability: Durability,
    /// sled's page cache in bytes (`StoreConfig::cache_bytes`).
    pub cache_bytes: u64,
    pub admin_token: String,
    pub secret: ServerSecret,
    /// The receipt-signing keys.
    pub receipt_keys: ReceiptKeySource,
    pub limits: Limits,
    /// Mutual TLS: when set, callers are identified by their client
    /// certificates and bearer tokens are ignored.
    pub tls: Option<TlsFiles>,
    /// Test hook: fail a chosen fsync (see `SyncFault`). Always `None` in
    /// the CLI.
    pub sync_fault: Option<Arc<SyncFault>>,
    /// PostgreSQL instead of the sled store in `store_dir` (`store.url`).
    pub postgres: Option<crate::store::postgres::PgConfig>,
}

impl ServerConfig {
    /// A data folder laid out as `store/`, `admin.token`, `server.secret`,
    /// `receipt-signing.keys`; the secrets are created (mode 0600) on first
    /// use.
    pub fn from_data_dir(data_dir: impl Into<PathBuf>) -> Result<ServerConfig, ServerError> {
        let data_dir = data_dir.into();
        // Durable names too: the secrets below and the store live in it.
        crate::store::files::create_dir_all(&data_dir)?;
        let receipt_keys = data_dir.join(RECEIPT_KEYS_FILE);
        // Made now, like the other secrets, so a bad file fails here.
        secrets::load_or_create_receipt_keys(&receipt_keys, engine::now())?;
        Ok(ServerConfig {
            receipt_keys: ReceiptKeySource::File(receipt_keys),
            store_dir: data_dir.join(STORE_FOLDER),
            durability: Durability::Fsync,
            cache_bytes: crate::store::sled::DEFAULT_CACHE_BYTES,
            admin_token: secrets::load_or_create_admin_token(&data_dir.join("admin.token"))?,
            secret: secrets::load_or_create_secret(&data_dir.join(SECRET_FILE))?,
            limits: Limits::default(),
            tls: None,
            sync_fault: None,
            postgres: None,
        })
    }
}

/// The receipt-signing key file in the data folder.
pub const RECEIPT_KEYS_FILE: &str = "receipt-signing.keys";
/// The server secret (binding codes, payer pseudonyms) in the data folder.
pub const SECRET_FILE: &str = "server.secret";
/// The store's folder in the data folder.
pub const STORE_FOLDER: &str = "store";

/// Where the receipt-signing keys come from.
#[derive(Debug, Clone)]
pub enum ReceiptKeySource {
    /// A key file, read at start (created if missing) and rewritten by a
    /// rotation: the file is the truth, so a restart sees every rotation.
    File(PathBuf),
    /// Keys held in memory only (embedding, tests); rotations are lost
    /// when the server stops.
    Memory(Box<ReceiptKeyring>),
}

/// The listen backlog: connections the kernel has completed and queues
/// until the accept loop takes them. When it is full the kernel drops new
/// SYNs and a client retries only a second later, which no legitimate
/// caller should see because of a burst; queueing instead costs each
/// queued connection a few microseconds of accept time, and the loop never
/// waits for a handshake. 4096 is the kernel's own cap on current Linux
/// (`net.core.somaxconn`, which silently lowers larger values) and holds a
/// burst of every shop and carrier reconnecting at once after a restart.
/// std and tokio bind with 128, which a burst of a few hundred overflows.
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds a listener for [`start`] with the server's [`LISTEN_BACKLOG`]
/// (and `SO_REUSEADDR`, as std does). Call it inside a tokio runtime.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// How long shutdown waits for in-flight work to let go of the store.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// A started server. Dropping it does not stop it; call `shutdown`.
pub struct RunningServer {
    pub addr: SocketAddr,
    pub engine: Arc<Engine>,
    shutdown: watch::Sender<bool>,
    serve: JoinHandle<Result<(), tonic::transport::Error>>,
    sweeper: JoinHandle<()>,
    tls: Option<Arc<ReloadableTls>>,
    handshakes: Arc<HandshakeStats>,
}

impl RunningServer {
    /// `http://<addr>`, or `https://<addr>` with TLS, for clients.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Reads the TLS files again (certificate, key, client CA, CRL); new
    /// connections use them, open ones keep theirs. On an error the old
    /// configuration stays in force.
    pub fn reload_tls(&self) -> Result<(), ServerError> {
        self.tls.as_ref().ok_or(ServerError::NoTls)?.reload()?;
        Ok(())
    }

    /// What happened to the TLS handshakes so far (all zero without TLS).
    pub fn handshake_counts(&self) -> HandshakeCounts {
        self.handshakes.counts()
    }

    /// Stops accepting, ends streams with UNAVAILABLE, waits for in-flight
    /// calls (every acknowledged commit is already durable), and returns
    /// once the store is closed, so the folder can be opened again at once.
    pub async fn shutdown(self) -> Result<(), ServerError> {
        let _ = self.shutdown.send(true);
        // In-flight calls finish; streams see the signal and end. A stream
        // that does not (a health Watch, say) must not hold the process
        // forever: after the grace period its connection is dropped.
        let mut serve = self.serve;
        let served = match tokio::time::timeout(SHUTDOWN_GRACE, &mut serve).await {
            Ok(joined) => joined.map_err(|e| ServerError::Join(e.to_string()))?,
            Err(_) => {
                tracing::warn!(grace = ?SHUTDOWN_GRACE, "connections still open after the grace period; closing them");
                serve.abort();
                Ok(())
            }
        };
        self.sweeper.await.map_err(|e| ServerError::Join(e.to_string()))?;
        // Streams and relay tasks let go of the engine as they see the
        // signal; once ours is the last handle, dropping it closes the store.
        let mut closed = self.engine.store_closed();
        let engine = self.engine;
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        while Arc::strong_count(&engine) > 1 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        drop(engine);
        if tokio::time::timeout(SHUTDOWN_GRACE, closed.wait_for(|c| *c)).await.is_err() {
            tracing::warn!("store still held by a task after shutdown; it closes when that task ends");
        }
        served?;
        Ok(())
    }

    /// Resolves when the server stops on its own (e.g. the listener failed).
    pub fn is_finished(&self) -> bool {
        self.serve.is_finished()
    }
}

/// Opens the store the config names: PostgreSQL when `postgres` is set,
/// else the embedded sled store.
pub async fn open_store(config: &ServerConfig) -> Result<Store, ServerError> {
    if let Some(pg) = config.postgres.clone() {
        // Blocking: it connects, checks and migrates before answering.
        let store = tokio::task::spawn_blocking(move || crate::store::postgres::PgStore::open(pg))
            .await
            .map_err(|e| ServerError::Join(e.to_string()))?
            .map_err(|e| ServerError::Store(crate::store::postgres::store_failure(e)))?;
        return Ok(Arc::new(store));
    }
    let store_config = StoreConfig {
        durability: config.durability,
        cache_bytes: config.cache_bytes,
        sync_fault: config.sync_fault.clone(),
        ..StoreConfig::new(&config.store_dir)
    };
    let store = tokio::task::spawn_blocking(move || SledStore::open(store_config))
        .await
        .map_err(|e| ServerError::Join(e.to_string()))??;
    Ok(Arc::new(store))
}

// `syncpay restore`: a data folder built from an online backup. The
// backup's checksums are checked before anything is built, the new store
// is compared with the manifest while it is built (`store::sled::backup`),
// the server's secrets are copied beside it, and the ledger is verified on
// the result before it answers. Here because this module alone opens
// stores outside the engine.

/// What a restore built.
#[derive(Debug)]
pub struct RestoreReport {
    pub manifest: backup::Manifest,
    pub data_dir: PathBuf,
    /// Records written into the new store.
    pub records: u64,
    /// The ledger's verification on the new store.
    pub verify: crate::store::VerifyReport,
}

/// The secret files a backup carries and a data folder needs, by name.
const SECRET_FILES: [&str; 2] = [SECRET_FILE, RECEIPT_KEYS_FILE];

/// Builds `data_dir` (absent or empty: a restore never writes over a
/// store) from the backup in `backup_dir`: `store/`, `server.secret` and
/// `receipt-signing.keys`. A new `admin.token` is made when the server
/// first starts on it (the backup holds none). Refuses a damaged backup
/// before writing anything.
pub async fn restore(backup_dir: &Path, data_dir: &Path) -> Result<RestoreReport, RestoreError> {
    let (b, d) = (backup_dir.to_owned(), data_dir.to_owned());
    let (manifest, records) = tokio::task::spawn_blocking(move || -> Result<(backup::Manifest, u64), RestoreError> {
        let manifest = backup::check(&b)?;
        if manifest.backend != "sled" {
            return Err(backup::damaged(&b.join(backup::MANIFEST_FILE), "not a backup of the sled store"));
        }
        backup::prepare_restore_target(&d)?;
        let restored = crate::store::sled::backup::restore(&b, &manifest, &d.join(STORE_FOLDER))?;
        for name in SECRET_FILES {
            if manifest.files.iter().any(|f| f.name == name) {
                let content = std::fs::read(b.join(name)).map_err(backup::io_at(&b.join(name)))?;
                crate::store::files::write_new_file(&d.join(name), &content, 0o600)
                    .map_err(backup::io_at(&d.join(name)))?;
            }
        }
        Ok((manifest, restored.records))
    })
    .await
    .map_err(|e| RestoreError::Target(format!("restore task: {e}")))??;
    // Opened as the server opens it (event heads derived, files synced),
    // verified, and closed before this answers.
    let store_dir = data_dir.join(STORE_FOLDER);
    let failed = |f: crate::store::Failure| RestoreError::Target(format!("{}: {f}", store_dir.display()));
    let config = StoreConfig::new(&store_dir);
    let store = tokio::task::spawn_blocking(move || SledStore::open(config))
        .await
        .map_err(|e| RestoreError::Target(format!("open task: {e}")))?
        .map_err(failed)?;
    let verify = crate::store::Ledger::verify(&store).await.map_err(failed)?;
    let mut closed = crate::store::Lifecycle::closed(&store);
    drop(store);
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, closed.wait_for(|c| *c)).await;
    Ok(RestoreReport { manifest, data_dir: data_dir.to_owned(), records, verify })
}

/// Opens the store and serves on `listener` until `shutdown` is called.
/// Bind the listener with [`bind`] for the server's listen backlog.
pub async fn start(config: ServerConfig, listener: TcpListener) -> Result<RunningServer, ServerError> {
    // Load TLS first: a bad certificate should fail before the store opens.
    let tls = load_tls(&config)?;
    // The receipt keys too: a damaged key file fails before the store opens.
    let receipts = load_receipt_keys(&config)?;
    let store = open_store(&config).await?;
    start_on(config, store, tls, receipts, listener).await
}

/// Serves `store` (any backend, opened by the caller) on `listener`.
pub async fn start_with_store(
    config: ServerConfig,
    store: Store,
    listener: TcpListener,
) -> Result<RunningServer, ServerError> {
    let tls = load_tls(&config)?;
    let receipts = load_receipt_keys(&config)?;
    start_on(config, store, tls, receipts, listener).await
}

fn load_tls(config: &ServerConfig) -> Result<Option<Arc<ReloadableTls>>, ServerError> {
    Ok(match &config.tls {
        Some(files) => Some(Arc::new(ReloadableTls::load(files.clone())?)),
        None => None,
    })
}

/// The receipt-signing keys the config names (created on first use).
fn load_receipt_keys(config: &ServerConfig) -> Result<receipt_keys::ReceiptKeys, ServerError> {
    Ok(match &config.receipt_keys {
        ReceiptKeySource::File(path) => receipt_keys::ReceiptKeys::new(
            secrets::load_or_create_receipt_keys(path, engine::now())?,
            Some(path.clone()),
        ),
        ReceiptKeySource::Memory(ring) => receipt_keys::ReceiptKeys::new((**ring).clone(), None),
    })
}

async fn start_on(
    config: ServerConfig,
    store: Store,
    tls: Option<Arc<ReloadableTls>>,
    receipts: receipt_keys::ReceiptKeys,
    listener: TcpListener,
) -> Result<RunningServer, ServerError> {
    let addr = listener.local_addr()?;
    metrics::set_open_trades(store.open_trade_count().await?);
    let hub = Arc::new(RelayHub::new(config.limits.relay_queue_depth, self::limits::MAX_PENDING_RESOLVES));
    let engine = Arc::new(Engine::new(store, hub.clone(), config.secret.clone(), receipts, config.limits.clone()));
    let mode = if tls.is_some() { AuthMode::Certificates } else { AuthMode::Tokens };
    let auth = Arc::new(Authenticator::new(engine.clone(), &config.admin_token, mode));
    let (shutdown_tx, shutdown_rx) = watch::channel(false);

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<RegisterServiceServer<register_service::RegisterApi>>().await;
    health.set_serving::<CarrierServiceServer<carrier_service::CarrierApi>>().await;
    health.set_serving::<AdminServiceServer<admin_service::AdminApi>>().await;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| ServerError::Reflection(e.to_string()))?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| ServerError::Reflection(e.to_string()))?;

    // `MessageLimitLayer` refuses an oversized message first, naming the
    // limit; tonic's own limit stays as a backstop.
    let max_request = config.limits.max_request_bytes;
    let register = RegisterServiceServer::new(register_service::RegisterApi::new(engine.clone(), shutdown_rx.clone()))
        .max_decoding_message_size(max_request);
    let carrier = CarrierServiceServer::new(carrier_service::CarrierApi::new(engine.clone(), hub, shutdown_rx.clone()))
        .max_decoding_message_size(max_request);
    let admin =
        AdminServiceServer::new(admin_service::AdminApi::new(engine.clone())).max_decoding_message_size(max_request);

    let router = Server::builder()
        .max_concurrent_streams(Some(MAX_CONCURRENT_STREAMS_PER_CONNECTION))
        .layer(MessageLimitLayer::new(max_request))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(InterceptedService::new(register, interceptor(auth.clone(), Party::Shop)))
        .add_service(InterceptedService::new(carrier, interceptor(auth.clone(), Party::Carrier)))
        .add_service(InterceptedService::new(admin, interceptor(auth, Party::Admin)));

    let sweeper = tokio::spawn(engine.clone().run_sweeper(shutdown_rx.clone()));
    // A store that stopped accepting writes makes every service unhealthy,
    // so load balancers and operators see it at once.
    let (health_on_failure, engine_for_health, mut stop_watch) = (health.clone(), engine.clone(), shutdown_rx.clone());
    tokio::spawn(async move {
        tokio::select! {
            _ = engine_for_health.wait_store_stopped() => {
                tracing::error!("store stopped accepting writes; reporting NOT_SERVING");
                set_all_not_serving(&health_on_failure).await;
            }
            _ = engine::stopped(&mut stop_watch) => {}
        }
    });
    let mut stop = shutdown_rx.clone();
    let health_on_stop = health.clone();
    let signal = async move {
        engine::stopped(&mut stop).await;
        set_all_not_serving(&health_on_stop).await;
        tracing::info!("shutting down");
    };
    let handshakes = Arc::new(HandshakeStats::default());
    let serve = match &tls {
        Some(tls) => {
            let incoming = tls::incoming(listener, tls.clone(), handshakes.clone(), shutdown_rx);
            tokio::spawn(async move { router.serve_with_incoming_shutdown(incoming, signal).await })
        }
        None => {
            // TCP_NODELAY on every accepted connection: tonic sets it only on
            // listeners it binds itself. Without it a small response (a
            // CreateTrade answer, one event) waits for the client's delayed
            // ACK, ~40 ms on Linux, which capped a client at ~25 round trips
            // per second per stream (issue 6's benchmark). The TLS accept
            // loop sets it too.
            let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
            tokio::spawn(async move { router.serve_with_incoming_shutdown(incoming, signal).await })
        }
    };
    tracing::info!(%addr, tls = tls.is_some(), "syncpay serving");
    Ok(RunningServer { addr, engine, shutdown: shutdown_tx, serve, sweeper, tls, handshakes })
}

async fn set_all_not_serving(health: &tonic_health::server::HealthReporter) {
    health.set_not_serving::<RegisterServiceServer<register_service::RegisterApi>>().await;
    health.set_not_serving::<CarrierServiceServer<carrier_service::CarrierApi>>().await;
    health.set_not_serving::<AdminServiceServer<admin_service::AdminApi>>().await;
    health.set_service_status("", tonic_health::ServingStatus::NotServing).await;
}
