//! Client-side plumbing shared by the register library, the simulator and
//! the CLI: connecting a channel (plaintext, or mutual TLS with a client
//! certificate that names the caller) and attaching the bearer credential
//! where there is one.
//!
//! Over TLS the certificate is the credential: pass an empty token to
//! `with_token` (and so to `VirtualRegister::open` or `CarrierSim::start`)
//! and no `authorization` header is sent. The server ignores one anyway.

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Request, Status};

/// Adds `authorization: Bearer <token>` to every request (nothing for an
/// empty token).
#[derive(Clone)]
pub struct BearerAuth {
    header: Option<MetadataValue<Ascii>>,
}

impl BearerAuth {
    /// Fails if the token is not valid header text. An empty token sends no
    /// header: for TLS channels, whose client certificate is the credential.
    pub fn new(token: &str) -> Result<Self, Status> {
        if token.is_empty() {
            return Ok(BearerAuth { header: None });
        }
        let header =
            format!("Bearer {token}").parse().map_err(|_| Status::invalid_argument("token: not valid header text"))?;
        Ok(BearerAuth { header: Some(header) })
    }
}

impl tonic::service::Interceptor for BearerAuth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(header) = &self.header {
            request.metadata_mut().insert("authorization", header.clone());
        }
        Ok(request)
    }
}

/// A channel with credentials, ready for any generated client:
/// `RegisterServiceClient::new(authed)`.
pub type AuthedChannel = InterceptedService<Channel, BearerAuth>;

/// Connects to `url` (e.g. `http://127.0.0.1:7700`).
pub async fn connect(url: &str) -> Result<Channel, tonic::transport::Error> {
    Endpoint::from_shared(url.to_owned())?.connect().await
}

/// PEM material for a mutual-TLS connection: the CA that issued the
/// server's certificate, and this client's certificate and key. The key is
/// kept out of `Debug`.
#[derive(Clone)]
pub struct ClientTls {
    pub ca_pem: Vec<u8>,
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    /// The name to check the server's certificate against; by default the
    /// URL's host.
    pub server_name: Option<String>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls").field("server_name", &self.server_name).finish_non_exhaustive()
    }
}

impl ClientTls {
    /// Reads the three PEM files (e.g. `ca.pem`, `shop-acme.pem`,
    /// `shop-acme.key` from `syncpay pki init`).
    pub fn from_files(
        ca: impl AsRef<std::path::Path>,
        cert: impl AsRef<std::path::Path>,
        key: impl AsRef<std::path::Path>,
    ) -> std::io::Result<ClientTls> {
        let read = |p: &std::path::Path| {
            std::fs::read(p).map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", p.display())))
        };
        Ok(ClientTls {
            ca_pem: read(ca.as_ref())?,
            cert_pem: read(cert.as_ref())?,
            key_pem: read(key.as_ref())?,
            server_name: None,
        })
    }

    fn config(&self) -> ClientTlsConfig {
        let mut config = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem));
        if let Some(name) = &self.server_name {
            config = config.domain_name(name.clone());
        }
        config
    }
}

/// Connects to `url` (`https://host:port`) over mutual TLS.
pub async fn connect_tls(url: &str, tls: &ClientTls) -> Result<Channel, tonic::transport::Error> {
    install_crypto_provider();
    Endpoint::from_shared(url.to_owned())?.tls_config(tls.config())?.connect().await
}

/// Makes ring the process's rustls crypto provider (once; later calls and a
/// provider installed by someone else are fine).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Wraps a channel with a credential.
pub fn with_token(channel: Channel, token: &str) -> Result<AuthedChannel, Status> {
    Ok(InterceptedService::new(channel, BearerAuth::new(token)?))
}

/// Why a bounded unary call failed.
#[derive(Debug)]
pub enum CallError {
    /// No answer within the local time limit.
    Timeout,
    /// The server answered with an error.
    Status(Status),
}

/// A request that tells the server its deadline (`grpc-timeout`).
pub fn request_with_timeout<T>(message: T, timeout: std::time::Duration) -> Request<T> {
    let mut request = Request::new(message);
    request.set_timeout(timeout);
    request
}

/// Runs one unary call under `timeout`, whether or not the server honours
/// the `grpc-timeout` it was sent.
pub async fn call_with_timeout<T>(
    timeout: std::time::Duration,
    call: impl std::future::Future<Output = Result<tonic::Response<T>, Status>>,
) -> Result<T, CallError> {
    match tokio::time::timeout(timeout, call).await {
        Err(_elapsed) => Err(CallError::Timeout),
        Ok(Err(status)) => Err(CallError::Status(status)),
        Ok(Ok(response)) => Ok(response.into_inner()),
    }
}
