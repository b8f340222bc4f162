//! Mutual TLS for the server (rustls with ring): the server's certificate
//! and key, the CA that issues client certificates and an optional CRL, all
//! read from PEM files and reloadable without a restart; the accept loop
//! that runs handshakes off the serving path; and the caller's identity as
//! the client certificate names it.
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
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;

use super::engine::stopped;

/// A handshake that has not finished by then is dropped, so slow or silent
/// peers cannot hold connection slots.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; the accept loop waits for a free slot
/// before taking the next connection, so a flood of half-open connections
/// costs a bounded amount of memory.
pub const MAX_PENDING_HANDSHAKES: usize = 256;
/// Finished handshakes waiting for the gRPC server to take them.
const ACCEPTED_QUEUE: usize = 64;
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
/// certificate from `client_ca` required on every connection, HTTP/2 only.
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
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Config(format!("server certificate and key: {e}")))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Accepts TCP connections and runs their TLS handshakes concurrently
/// (each bounded by [`TLS_HANDSHAKE_TIMEOUT`], at most
/// [`MAX_PENDING_HANDSHAKES`] at once); yields the finished ones to the gRPC
/// server. Stops on `shutdown` or when the server stops taking connections.
pub fn incoming(
    listener: TcpListener,
    tls: Arc<ReloadableTls>,
    mut shutdown: watch::Receiver<bool>,
) -> ReceiverStream<Result<TlsStream<TcpStream>, std::io::Error>> {
    let (tx, rx) = mpsc::channel(ACCEPTED_QUEUE);
    tokio::spawn(async move {
        let slots = Arc::new(Semaphore::new(MAX_PENDING_HANDSHAKES));
        loop {
            let permit = tokio::select! {
                p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
                _ = stopped(&mut shutdown) => return,
            };
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = stopped(&mut shutdown) => return,
                _ = tx.closed() => return,
            };
            let (tcp, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Usually out of file descriptors: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = TlsAcceptor::from(tls.config());
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        drop(permit);
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Ok(Err(e)) => tracing::info!(%peer, error = %e, "TLS handshake refused"),
                    Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}
