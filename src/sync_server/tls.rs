//! Mutual TLS for the server (rustls with ring): the server's certificate
//! and key, the CA that issues client certificates and an optional CRL, all
//! read from PEM files and reloadable without a restart; the accept loop
//! that runs handshakes off the serving path; and the caller's identity as
//! the client certificate names it.
//!
//! **Identity.** A client certificate names its holder with exactly one
//! subject-alternative-name URI of the `syncpay` scheme:
//! `syncpay://admin`, `syncpay://shop/<shop id>` or
//! `syncpay://carrier/<carrier id>`. The common name is for people only
//! and is never read. A certificate with no such URI, or more than one, is
//! refused.
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
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::domain::{CarrierId, ShopId};
use crate::store::Principal;

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

/// The URI scheme that carries a caller's identity in a certificate.
pub const IDENTITY_SCHEME: &str = "syncpay://";

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

/// Why a certificate names no caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("the client certificate cannot be parsed")]
    Unparsable,
    #[error("the client certificate names no syncpay identity (a SAN URI syncpay://shop/<id>, syncpay://carrier/<id> or syncpay://admin)")]
    Missing,
    #[error("the client certificate names more than one syncpay identity")]
    Ambiguous,
    #[error("the client certificate's syncpay identity is malformed")]
    Malformed,
}

/// The certificate URI for a principal.
pub fn identity_uri(principal: &Principal) -> String {
    match principal {
        Principal::Admin => format!("{IDENTITY_SCHEME}admin"),
        Principal::Shop(id) => format!("{IDENTITY_SCHEME}shop/{id}"),
        Principal::Carrier(id) => format!("{IDENTITY_SCHEME}carrier/{id}"),
    }
}

/// The principal a `syncpay://` URI names.
pub fn principal_from_uri(uri: &str) -> Result<Principal, IdentityError> {
    let rest = uri.strip_prefix(IDENTITY_SCHEME).ok_or(IdentityError::Malformed)?;
    if rest == "admin" {
        return Ok(Principal::Admin);
    }
    if let Some(id) = rest.strip_prefix("shop/") {
        return ShopId::parse(id).map(Principal::Shop).map_err(|_| IdentityError::Malformed);
    }
    if let Some(id) = rest.strip_prefix("carrier/") {
        return CarrierId::parse(id).map(Principal::Carrier).map_err(|_| IdentityError::Malformed);
    }
    Err(IdentityError::Malformed)
}

/// The principal a (verified) client certificate names.
pub fn principal_from_cert(der: &[u8]) -> Result<Principal, IdentityError> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|_| IdentityError::Unparsable)?;
    let san = cert.subject_alternative_name().map_err(|_| IdentityError::Unparsable)?;
    let mut found = None;
    for name in san.iter().flat_map(|ext| ext.value.general_names.iter()) {
        if let GeneralName::URI(uri) = name {
            // Any URI of our scheme counts, so a second one (even a
            // malformed one) makes the certificate ambiguous.
            if uri.get(..IDENTITY_SCHEME.len()).is_some_and(|s| s.eq_ignore_ascii_case(IDENTITY_SCHEME)) {
                if found.is_some() {
                    return Err(IdentityError::Ambiguous);
                }
                found = Some(*uri);
            }
        }
    }
    principal_from_uri(found.ok_or(IdentityError::Missing)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_uris_round_trip_and_refuse_anything_else() {
        let shop = Principal::Shop(ShopId::parse("acme").expect("valid"));
        let carrier = Principal::Carrier(CarrierId::parse("docomo").expect("valid"));
        for p in [Principal::Admin, shop, carrier] {
            assert_eq!(principal_from_uri(&identity_uri(&p)), Ok(p));
        }
        for bad in [
            "syncpay://",
            "syncpay://admin/",
            "syncpay://shop/",
            "syncpay://shop/Acme",
            "syncpay://shop/a/b",
            "syncpay://carrier/",
            "syncpay://operator",
            "https://shop/acme",
            "syncpay:shop/acme",
        ] {
            assert!(principal_from_uri(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn garbage_is_not_a_certificate() {
        assert_eq!(principal_from_cert(b""), Err(IdentityError::Unparsable));
        assert_eq!(principal_from_cert(&[0x30, 0x03, 0x02, 0x01, 0x00]), Err(IdentityError::Unparsable));
    }
}
