//! TLS session resumption must not let a client certificate outlive its
//! validity (issue 12, weak 1). rustls restores a resumed session's client
//! certificate without verifying it again, so a certificate that expired
//! (or was revoked) after the first handshake would connect again through
//! a TLS 1.3 ticket or a TLS 1.2 session id. The server turns resumption
//! off for its client-authenticated connections (SECURITY.md says why);
//! this test drives a real rustls client with a shared session store, as a
//! resuming client would, and a real gRPC call over each connection.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{functional_limits, shop, TestServer};
use hyper_util::rt::TokioIo;
use rustls::client::{ClientSessionMemoryCache, Resumption};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, HandshakeKind, RootCertStore, SupportedProtocolVersion};
use syncpay::client::ClientTls;
use syncpay::pki::Ca;
use syncpay::proto;
use syncpay::proto::register_service_client::RegisterServiceClient;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Endpoint, Uri};

/// A rustls client configuration for `tls`, speaking only `version`, that
/// keeps its sessions in `store` (shared by every connection made with it).
fn client_config(tls: &ClientTls, version: &'static SupportedProtocolVersion) -> Arc<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(&tls.ca_pem) {
        roots.add(ca.expect("ca pem")).expect("ca");
    }
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(&tls.cert_pem).collect::<Result<_, _>>().expect("cert pem");
    let key = PrivateKeyDer::from_pem_slice(&tls.key_pem).expect("key pem");
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[version])
        .expect("version")
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .expect("client certificate");
    config.alpn_protocols = vec![b"h2".to_vec()];
    config.resumption = Resumption::store(Arc::new(ClientSessionMemoryCache::new(16)));
    Arc::new(config)
}

/// Hands tonic one TLS stream made beforehand, so the test sees how its
/// handshake went.
#[derive(Clone)]
struct OneStream(Arc<Mutex<Option<TlsStream<TcpStream>>>>);

impl tower_service::Service<Uri> for OneStream {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = std::future::Ready<Result<Self::Response, std::io::Error>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), std::io::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let stream = self.0.lock().expect("stream").take();
        std::future::ready(stream.map(TokioIo::new).ok_or_else(|| std::io::Error::other("used once only")))
    }
}

/// One connection: the TLS handshake (how it went, from the client's side)
/// and then a ListRegisters call over it.
async fn connect_and_call(addr: SocketAddr, config: &Arc<ClientConfig>) -> (Option<HandshakeKind>, Result<(), String>) {
    let tcp = TcpStream::connect(addr).await.expect("tcp");
    let name = ServerName::try_from("localhost").expect("name");
    let stream = match TlsConnector::from(config.clone()).connect(name, tcp).await {
        Ok(stream) => stream,
        Err(e) => return (None, Err(format!("handshake: {e}"))),
    };
    let kind = stream.get_ref().1.handshake_kind();
    let connector = OneStream(Arc::new(Mutex::new(Some(stream))));
    let call = async {
        let channel = Endpoint::from_static("http://localhost")
            .connect_with_connector(connector)
            .await
            .map_err(|e| format!("channel: {e}"))?;
        RegisterServiceClient::new(channel)
            .list_registers(proto::ListRegistersRequest {})
            .await
            .map(|_| ())
            .map_err(|s| format!("call: {s:?}"))
    };
    (kind, tokio::time::timeout(Duration::from_secs(20), call).await.unwrap_or_else(|_| Err("no answer".into())))
}

/// The check for one protocol version: a certificate valid for a few more
/// seconds works on a full handshake; after it expired, a client holding
/// the session from that handshake must not get in.
async fn expired_certificate_cannot_resume(t: &TestServer, shop_id: &str, version: &'static SupportedProtocolVersion) {
    let pki_dir = t.pki.as_ref().expect("pki").dir.clone();
    t.create_shop(shop_id, shop_id).await;
    // rcgen writes whole seconds; a few of them leave room for the first
    // handshake on a loaded machine.
    let not_after = time::OffsetDateTime::now_utc() + time::Duration::seconds(4);
    Ca::load(&pki_dir).expect("ca").issue_client_until(&shop(shop_id), not_after).expect("issue");
    let tls = t.client_tls(&shop(shop_id));
    let config = client_config(&tls, version);

    let (kind, first) = connect_and_call(t.server.addr, &config).await;
    assert_eq!(first, Ok(()), "{version:?}: the first call, with a valid certificate");
    assert_eq!(kind, Some(HandshakeKind::Full), "{version:?}");

    // Wait for the deadline under test: the certificate's expiry (plus a
    // second for the whole-second encoding).
    let expired = not_after + time::Duration::seconds(1);
    let wait = expired - time::OffsetDateTime::now_utc();
    tokio::time::sleep(Duration::try_from(wait).unwrap_or(Duration::ZERO)).await;

    let (kind, after) = connect_and_call(t.server.addr, &config).await;
    assert!(
        after.is_err(),
        "{version:?}: an expired certificate got in again ({kind:?} handshake): resumption skipped the check"
    );
    assert_ne!(kind, Some(HandshakeKind::Resumed), "{version:?}: the server resumed a session");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_client_certificate_cannot_come_back_through_session_resumption() {
    syncpay::client::install_crypto_provider();
    let t = TestServer::start_tls(&["acme"], &[], functional_limits()).await;
    // Both versions at once: each waits for its own certificate to expire.
    tokio::join!(
        expired_certificate_cannot_resume(&t, "late13", &rustls::version::TLS13),
        expired_certificate_cannot_resume(&t, "late12", &rustls::version::TLS12),
    );
}

#[tokio::test]
async fn the_server_offers_no_session_resumption_to_client_certificates() {
    syncpay::client::install_crypto_provider();
    let t = TestServer::start_tls(&["acme"], &[], functional_limits()).await;
    let tls = t.client_tls(&shop("acme"));
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let config = client_config(&tls, version);
        for round in 0..3 {
            let (kind, call) = connect_and_call(t.server.addr, &config).await;
            assert_eq!(call, Ok(()), "{version:?} round {round}");
            assert_eq!(kind, Some(HandshakeKind::Full), "{version:?} round {round}: every handshake is a full one");
        }
    }
}
