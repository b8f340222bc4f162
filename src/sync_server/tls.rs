//! Mutual TLS for the server (rustls with ring): the server's certificate
//! and key, the CA that issues client certificates and an optional CRL, all
//! read from PEM files and reloadable without a restart; the accept loop
//! that runs handshakes off the serving path, admitted by `handshakes.rs`
//! so that slow or silent peers cannot lock anyone out; and the caller's
//! identity as the client certificate names it.
//!
//! **Identity.** A client certificate names its holder with exactly one
//! subject-alternative-name URI of the `syncpay` scheme (see
//! [`crate::identity`]).
//!
//! **Reload.** [`ReloadableTls::reload`] reads the files again and swaps
//! the configuration for new connections; connections already open keep
//! the configuration they were accepted with. If the files do not load,
//! the old configuration stays and the error is returned.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::server::StartHandshake;
use tokio_rustls::server::TlsStream;
use tokio_rustls::LazyConfigAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::engine::stopped;
use super::handshakes::{
    HandshakeLimits, HandshakeStats, PendingTable, Phase, Refusal, RefusalLog, SharedTable, Ticket,
    REFUSAL_LOG_INTERVAL,
};
pub use super::handshakes::{CLIENT_HELLO_TIMEOUT, TLS_HANDSHAKE_TIMEOUT};

/// Finished handshakes waiting for the gRPC server to take them.
const ACCEPTED_QUEUE: usize = 64;
/// How long the accept loop pauses after the listener itself fails (out of
/// file descriptors, say) instead of spinning on the error.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);
/// PEM files larger than this are refused before parsing.
const MAX_PEM_BYTES: u64 = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("TLS configuration: {0}")]
    Config(String),
}

fn file_error(path: &Path, message: impl std::fmt::Display) -> TlsError {
    TlsError::File { path: path.display().to_string(), message: message.to_string() }
}

/// Where the server's TLS material lives. Every file is PEM.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The server's certificate chain (leaf first).
    pub cert: PathBuf,
    /// The server's private key (PKCS#8, SEC1 or PKCS#1). Should be 0600.
    pub key: PathBuf,
    /// The CA certificate(s) that issue client certificates.
    pub client_ca: PathBuf,
    /// Optional certificate revocation list(s) from that CA.
    pub client_crl: Option<PathBuf>,
}

/// The server's TLS configuration, swapped atomically on reload.
pub struct ReloadableTls {
    files: TlsFiles,
    current: RwLock<Arc<ServerConfig>>,
}

impl std::fmt::Debug for ReloadableTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadableTls").field("files", &self.files).finish_non_exhaustive()
    }
}

impl ReloadableTls {
    pub fn load(files: TlsFiles) -> Result<ReloadableTls, TlsError> {
        let config = build_server_config(&files)?;
        Ok(ReloadableTls { files, current: RwLock::new(Arc::new(config)) })
    }

    /// Reads the files again; new connections use them from now on. On an
    /// error nothing changes.
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = Arc::new(build_server_config(&self.files)?);
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = config;
        tracing::info!(cert = %self.files.cert.display(), "TLS certificates reloaded");
        Ok(())
    }

    fn config(&self) -> Arc<ServerConfig> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

fn read_pem(path: &Path) -> Result<Vec<u8>, TlsError> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| file_error(path, e))?;
    let mut bytes = Vec::new();
    file.take(MAX_PEM_BYTES + 1).read_to_end(&mut bytes).map_err(|e| file_error(path, e))?;
    if u64::try_from(bytes.len()).unwrap_or(u64::MAX) > MAX_PEM_BYTES {
        return Err(file_error(path, format!("larger than {MAX_PEM_BYTES} bytes")));
    }
    Ok(bytes)
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_pem(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, format!("bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(file_error(path, "holds no CERTIFICATE block"));
    }
    Ok(certs)
}

/// Warns when a private key file can be read by anyone but its owner.
fn warn_if_shared(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path) {
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(path = %path.display(), "TLS private key is readable by group or others; chmod 600 it");
            }
        }
    }
}

/// The rustls configuration: TLS 1.2 and 1.3 with ring, a client
/// certificate from `client_ca` with the clientAuth purpose required on
/// every connection, HTTP/2 only, no session resumption.
pub fn build_server_config(files: &TlsFiles) -> Result<ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = certificates(&files.cert)?;
    warn_if_shared(&files.key);
    let key = PrivateKeyDer::from_pem_slice(&read_pem(&files.key)?)
        .map_err(|e| file_error(&files.key, format!("no usable private key: {e}")))?;
    let mut roots = RootCertStore::empty();
    for ca in certificates(&files.client_ca)? {
        roots.add(ca).map_err(|e| file_error(&files.client_ca, format!("not a usable CA certificate: {e}")))?;
    }
    let mut crls = Vec::new();
    if let Some(path) = &files.client_crl {
        let pem = read_pem(path)?;
        crls = CertificateRevocationListDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| file_error(path, format!("bad PEM: {e}")))?;
        if crls.is_empty() {
            return Err(file_error(path, "holds no X509 CRL block"));
        }
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .with_crls(crls)
        .build()
        .map_err(|e| TlsError::Config(format!("client verifier: {e}")))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(Arc::new(ClientAuthPurpose(verifier)))
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Config(format!("server certificate and key: {e}")))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    // No session resumption: rustls restores a resumed session's client
    // certificate without verifying it again, so a certificate that expired
    // or was revoked since would get back in through a TLS 1.3 ticket or a
    // TLS 1.2 session id. Every handshake is a full one, checked against
    // the CA, the CRL and the clock; clients keep long-lived HTTP/2
    // connections, so what resumption would save is rare.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.ticketer = Arc::new(NoTickets);
    config.send_tls13_tickets = 0;
    Ok(config)
}

/// WebPKI's client verification (chain, validity, CRL; it accepts a leaf
/// with no extended key usage, which RFC 5280 reads as "any purpose"),
/// plus: the leaf must name `clientAuth` in its extended key usage. A
/// certificate issued for something else, or for nothing in particular,
/// is no client credential here. `syncpay pki` issues clientAuth.
#[derive(Debug)]
struct ClientAuthPurpose(Arc<dyn ClientCertVerifier>);

impl ClientCertVerifier for ClientAuthPurpose {
    fn offer_client_auth(&self) -> bool {
        self.0.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.0.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.0.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: rustls::pki_types::UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self.0.verify_client_cert(end_entity, intermediates, now)?;
        if !names_client_auth(end_entity) {
            return Err(rustls::Error::InvalidCertificate(rustls::CertificateError::InvalidPurpose));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }

    fn requires_raw_public_keys(&self) -> bool {
        self.0.requires_raw_public_keys()
    }
}

/// Whether a certificate's extended key usage names `clientAuth` (an
/// absent extension, or `anyExtendedKeyUsage` alone, does not).
pub fn names_client_auth(der: &[u8]) -> bool {
    let Ok((_, cert)) = X509Certificate::from_der(der) else { return false };
    matches!(cert.extended_key_usage(), Ok(Some(eku)) if eku.value.client_auth)
}

/// Issues no session tickets (TLS 1.2 stateless resumption); see
/// `build_server_config`. rustls' default already does this; naming it
/// here keeps it so if that default ever changes.
#[derive(Debug)]
struct NoTickets;

impl rustls::server::ProducesTickets for NoTickets {
    fn enabled(&self) -> bool {
        false
    }

    fn lifetime(&self) -> u32 {
        0
    }

    fn encrypt(&self, _plain: &[u8]) -> Option<Vec<u8>> {
        None
    }

    fn decrypt(&self, _cipher: &[u8]) -> Option<Vec<u8>> {
        None
    }
}

/// Accepts TCP connections and runs each TLS handshake in a task of its
/// own, admitted to a [`PendingTable`] (capped per source and in total;
/// at a cap the oldest handshake in progress is closed, never the
/// newcomer) and bounded by [`CLIENT_HELLO_TIMEOUT`] for the ClientHello
/// and [`TLS_HANDSHAKE_TIMEOUT`] for the whole; yields the finished ones to
/// the gRPC server. The loop itself never waits for a handshake. Stops on
/// `shutdown` (closing every handshake in progress) or when the server
/// stops taking connections.
pub fn incoming(
    listener: TcpListener,
    tls: Arc<ReloadableTls>,
    stats: Arc<HandshakeStats>,
    mut shutdown: watch::Receiver<bool>,
) -> ReceiverStream<Result<TlsStream<TcpStream>, std::io::Error>> {
    let (tx, rx) = mpsc::channel(ACCEPTED_QUEUE);
    tokio::spawn(async move {
        let table: SharedTable = Arc::new(Mutex::new(PendingTable::new(HandshakeLimits::default())));
        let mut log = RefusalLog::default();
        let mut log_tick = tokio::time::interval(REFUSAL_LOG_INTERVAL);
        log_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = log_tick.tick() => {
                    log.flush(&stats);
                    continue;
                }
                _ = stopped(&mut shutdown) => break,
                _ = tx.closed() => break,
            };
            let (tcp, peer) = match accepted {
                Ok(a) => a,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    // Usually out of file descriptors: back off instead of
                    // spinning. Connections wait in the backlog meanwhile.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            // A ClientHello that came with the connection is parsed now,
            // so the handshake starts past it and no silent peer can evict
            // it (see `handshakes.rs`).
            let mut acceptor = rustls::server::Acceptor::default();
            let early = match hello_if_arrived(&tcp, &mut acceptor) {
                Ok(early) => early,
                Err(e) => {
                    stats.refused(peer, Refusal::Failed, e);
                    continue;
                }
            };
            let phase = if early.is_some() { Phase::Handshaking } else { Phase::AwaitingHello };
            let admitted = table.lock().unwrap_or_else(|p| p.into_inner()).admit(peer, phase, &stats);
            let ticket = Ticket { table: table.clone(), id: admitted.id };
            let hello = match early {
                Some(accepted) => Hello::Arrived(accepted),
                None => Hello::Awaited(acceptor),
            };
            tokio::spawn(handshake(tcp, peer, hello, tls.clone(), stats.clone(), admitted.evicted, ticket, tx.clone()));
        }
        // Closes every handshake still in progress.
        table.lock().unwrap_or_else(|p| p.into_inner()).clear();
        log.flush(&stats);
    });
    ReceiverStream::new(rx)
}

/// Errors of one connection, not of the listener: take the next at once.
fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    matches!(e.kind(), ConnectionRefused | ConnectionAborted | ConnectionReset)
}

/// Reads what has arrived on `tcp` without waiting and feeds it to
/// `acceptor`: the ClientHello if it is complete, `None` if more must come,
/// an error if the peer closed or sent no TLS.
fn hello_if_arrived(
    tcp: &TcpStream,
    acceptor: &mut rustls::server::Acceptor,
) -> Result<Option<rustls::server::Accepted>, String> {
    /// `std::io::Read` over the bytes already received.
    struct Arrived<'a>(&'a TcpStream);
    impl std::io::Read for Arrived<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.0.try_read(buf)
        }
    }
    loop {
        match acceptor.read_tls(&mut Arrived(tcp)) {
            Ok(0) => return Err("closed before the ClientHello".into()),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) => return Err(e.to_string()),
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => return Ok(Some(accepted)),
            Ok(None) => {}
            // Not TLS: closed without an alert, as for any garbage.
            Err((e, _alert)) => return Err(e.to_string()),
        }
    }
}

/// The ClientHello of a handshake: parsed already, or still to come.
enum Hello {
    Arrived(rustls::server::Accepted),
    Awaited(rustls::server::Acceptor),
}

/// One handshake: the ClientHello within [`CLIENT_HELLO_TIMEOUT`], the rest
/// within [`TLS_HANDSHAKE_TIMEOUT`] of the accept, unless the table evicts
/// it first. The ticket leaves the table when this ends, however it ends.
#[allow(clippy::too_many_arguments)]
async fn handshake(
    tcp: TcpStream,
    peer: std::net::SocketAddr,
    hello: Hello,
    tls: Arc<ReloadableTls>,
    stats: Arc<HandshakeStats>,
    evicted: tokio::sync::oneshot::Receiver<()>,
    ticket: Ticket,
    tx: mpsc::Sender<Result<TlsStream<TcpStream>, std::io::Error>>,
) {
    let accepted_at = tokio::time::Instant::now();
    let run = async {
        let start = match hello {
            Hello::Arrived(accepted) => StartHandshake::from_parts(accepted, tcp),
            Hello::Awaited(acceptor) => {
                let hello = LazyConfigAcceptor::new(acceptor, tcp);
                let start = match tokio::time::timeout_at(accepted_at + CLIENT_HELLO_TIMEOUT, hello).await {
                    Err(_) => return Err((Refusal::HelloTimeout, "no complete ClientHello in time".to_owned())),
                    Ok(Err(e)) => return Err((Refusal::Failed, e.to_string())),
                    Ok(Ok(start)) => start,
                };
                ticket.hello_done(&stats);
                start
            }
        };
        // The configuration in force now, after any reload since the accept.
        match tokio::time::timeout_at(accepted_at + TLS_HANDSHAKE_TIMEOUT, start.into_stream(tls.config())).await {
            Err(_) => Err((Refusal::HandshakeTimeout, "handshake not finished in time".to_owned())),
            Ok(Err(e)) => Err((Refusal::Failed, e.to_string())),
            Ok(Ok(stream)) => Ok(stream),
        }
    };
    let outcome = tokio::select! {
        outcome = run => outcome,
        // Evicted (already counted by the table) or shut down: dropping
        // the handshake closes the connection.
        _ = evicted => return,
    };
    drop(ticket);
    match outcome {
        Ok(stream) => {
            stats.completed();
            let _ = tx.send(Ok(stream)).await;
        }
        Err((why, detail)) => stats.refused(peer, why, detail),
    }
}
