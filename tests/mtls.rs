//! Mutual TLS: the client certificate is the caller's identity. Under TLS
//! 1.3 a client without an acceptable certificate completes `connect()` and
//! fails on its first call, so every refusal here is checked on an RPC.

mod common;

use common::{carrier, code_of, functional_limits, make_pki, shop, TestServer};
use syncpay::client::{connect, connect_tls, with_token, ClientTls};
use syncpay::domain::Principal;
use syncpay::pki::Ca;
use syncpay::proto::admin_service_client::AdminServiceClient;
use syncpay::proto::carrier_service_client::CarrierServiceClient;
use syncpay::proto::register_service_client::RegisterServiceClient;
use syncpay::proto::{self};
use syncpay::sync_server::tls::TlsFiles;
use syncpay::sync_server::ServerConfig;
use tonic::Code;

fn list() -> proto::ListRegistersRequest {
    proto::ListRegistersRequest {}
}

/// A register client on a TLS channel made with `tls`; the error of the
/// first call if the connection or the call fails.
async fn list_with(t: &TestServer, tls: &ClientTls) -> Result<(), tonic::Status> {
    let channel = match connect_tls(&t.server.url(), tls).await {
        Ok(c) => c,
        Err(e) => return Err(tonic::Status::unavailable(format!("connect: {e}"))),
    };
    let mut client = RegisterServiceClient::new(channel);
    client.list_registers(list()).await.map(|_| ())
}

#[tokio::test]
async fn a_known_shop_certificate_is_served_and_no_certificate_is_refused_on_the_first_rpc() {
    let t = TestServer::start_tls(&["acme"], &[], functional_limits()).await;
    assert!(t.server.url().starts_with("https://"));
    assert!(t.as_shop("acme").await.list_registers(list()).await.is_ok());

    // Trusting the server but presenting no certificate: connect() is
    // allowed to succeed; the call is not.
    let good = t.client_tls(&shop("acme"));
    let anonymous =
        tonic::transport::ClientTlsConfig::new().ca_certificate(tonic::transport::Certificate::from_pem(&good.ca_pem));
    syncpay::client::install_crypto_provider();
    let result = match tonic::transport::Endpoint::from_shared(t.server.url()).expect("url").tls_config(anonymous) {
        Ok(endpoint) => match endpoint.connect().await {
            Ok(channel) => RegisterServiceClient::new(channel).list_registers(list()).await.map(|_| ()),
            Err(e) => Err(tonic::Status::unavailable(e.to_string())),
        },
        Err(e) => Err(tonic::Status::unavailable(e.to_string())),
    };
    assert!(result.is_err(), "a call without a client certificate was served");

    // Plaintext against the TLS port fails too.
    let plain = t.server.url().replace("https://", "http://");
    if let Ok(channel) = connect(&plain).await {
        let token = with_token(channel, &t.config.admin_token).expect("token");
        assert!(RegisterServiceClient::new(token).list_registers(list()).await.is_err());
    }
    // The server is unharmed.
    assert!(t.as_shop("acme").await.list_registers(list()).await.is_ok());
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused() {
    let t = TestServer::start_tls(&["acme"], &[], functional_limits()).await;
    let other = tempfile::tempdir().expect("tempdir");
    let rogue = make_pki(other.path(), &["acme"], &[]);
    // The rogue shop certificate names the same shop and trusts the real
    // server's CA, so only the client verification can stop it.
    let mut tls = ClientTls::from_files(
        &t.pki.as_ref().expect("pki").ca_cert,
        other.path().join("shop-acme.pem"),
        other.path().join("shop-acme.key"),
    )
    .expect("files");
    assert!(list_with(&t, &tls).await.is_err(), "a certificate of a foreign CA was accepted");
    // And the rogue CA's admin certificate is no operator either.
    tls = ClientTls::from_files(&t.pki.as_ref().expect("pki").ca_cert, &rogue.admin.cert, &rogue.admin.key)
        .expect("files");
    let result = match connect_tls(&t.server.url(), &tls).await {
        Ok(channel) => AdminServiceClient::new(channel).verify_ledger(proto::VerifyLedgerRequest {}).await.map(|_| ()),
        Err(e) => Err(tonic::Status::unavailable(e.to_string())),
    };
    assert!(result.is_err());
    // The server's own certificate is no client identity (wrong key usage,
    // and no syncpay identity in it).
    let pki = t.pki.as_ref().expect("pki");
    let tls = ClientTls::from_files(&pki.ca_cert, &pki.server.cert, &pki.server.key).expect("files");
    assert!(list_with(&t, &tls).await.is_err());
}

#[tokio::test]
async fn the_certificate_names_the_caller_and_no_bearer_token_overrides_it() {
    let t = TestServer::start_tls(&["acme"], &["docomo"], functional_limits()).await;
    // A shop's certificate with the operator's token: still only the shop.
    let shop_with_admin_token = with_token(t.tls_channel(&shop("acme")).await, &t.config.admin_token).expect("token");
    let mut as_admin = AdminServiceClient::new(shop_with_admin_token.clone());
    assert_eq!(code_of(as_admin.verify_ledger(proto::VerifyLedgerRequest {}).await), Code::PermissionDenied);
    assert!(RegisterServiceClient::new(shop_with_admin_token).list_registers(list()).await.is_ok());

    // Each certificate admits its holder to its own service only.
    let enroll = proto::EnrollSubscriberRequest {
        subscriber_number: "+818012345678".into(),
        funding: proto::Funding::Wallet as i32,
        ..Default::default()
    };
    let mut shop_as_carrier = CarrierServiceClient::new(t.as_principal(&shop("acme")).await);
    assert_eq!(code_of(shop_as_carrier.enroll_subscriber(enroll.clone()).await), Code::PermissionDenied);
    let mut carrier_as_shop = RegisterServiceClient::new(t.as_principal(&carrier("docomo")).await);
    assert_eq!(code_of(carrier_as_shop.list_registers(list()).await), Code::PermissionDenied);
    let mut admin_as_shop = RegisterServiceClient::new(t.as_principal(&Principal::Admin).await);
    assert_eq!(code_of(admin_as_shop.list_registers(list()).await), Code::PermissionDenied);
    assert!(t.as_carrier("docomo").await.enroll_subscriber(enroll).await.is_ok());
    assert!(t.admin().await.verify_ledger(proto::VerifyLedgerRequest {}).await.is_ok());

    // A valid certificate for a shop the operator never created.
    let mut ghost = t.as_shop("ghost").await;
    let status = ghost.list_registers(list()).await.expect_err("unknown shop");
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(status.message().contains("no known shop or carrier"), "{}", status.message());
}

/// A TLS server whose client CRL is `crl.pem` in the PKI folder.
async fn start_with_crl(shops: &[&str]) -> (TestServer, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().to_owned();
    let pki = make_pki(&data_dir.join("pki"), shops, &[]);
    // A first list, revoking a throwaway certificate.
    let ca = Ca::load(&pki.dir).expect("ca");
    let throwaway = ca.issue_client(&shop("throwaway"), 1).expect("issue");
    let crl = ca.revoke(&throwaway.cert).expect("crl");
    let mut config = ServerConfig::from_data_dir(&data_dir).expect("config");
    config.limits = functional_limits();
    config.tls = Some(TlsFiles {
        cert: pki.server.cert.clone(),
        key: pki.server.key.clone(),
        client_ca: pki.ca_cert.clone(),
        client_crl: Some(crl.clone()),
    });
    let mut t = TestServer::start_with(config, data_dir, Some(dir)).await;
    t.pki = Some(pki);
    for s in shops {
        t.create_shop(s, s).await;
    }
    (t, crl)
}

#[tokio::test]
async fn a_revoked_certificate_is_refused_after_a_reload() {
    let (t, _crl) = start_with_crl(&["acme", "bobs"]).await;
    assert!(t.as_shop("acme").await.list_registers(list()).await.is_ok());
    let pki_dir = t.pki.as_ref().expect("pki").dir.clone();
    Ca::load(&pki_dir).expect("ca").revoke(&pki_dir.join("shop-acme.pem")).expect("revoke");
    t.server.reload_tls().expect("reload");
    assert!(list_with(&t, &t.client_tls(&shop("acme"))).await.is_err(), "a revoked certificate was accepted");
    assert!(t.as_shop("bobs").await.list_registers(list()).await.is_ok());
}

#[tokio::test]
async fn certificates_are_rotated_without_a_restart_and_a_bad_reload_changes_nothing() {
    let t = TestServer::start_tls(&["acme"], &[], functional_limits()).await;
    let old = t.client_tls(&shop("acme"));
    let open = t.as_shop("acme").await;
    let files = t.config.tls.clone().expect("tls");

    // A broken certificate file: the reload fails and nothing changes.
    let saved = std::fs::read(&files.cert).expect("read");
    std::fs::write(&files.cert, b"not a certificate").expect("write");
    assert!(t.server.reload_tls().is_err());
    assert!(list_with(&t, &old).await.is_ok());
    std::fs::write(&files.cert, saved).expect("restore");

    // A whole new PKI (new CA, server certificate and shop certificate)
    // copied over the configured files, then a reload.
    let next_dir = tempfile::tempdir().expect("tempdir");
    let next = make_pki(next_dir.path(), &["acme"], &[]);
    for (from, to) in
        [(&next.server.cert, &files.cert), (&next.server.key, &files.key), (&next.ca_cert, &files.client_ca)]
    {
        std::fs::copy(from, to).expect("copy");
    }
    t.server.reload_tls().expect("reload");
    let new = ClientTls::from_files(
        &next.ca_cert,
        next_dir.path().join("shop-acme.pem"),
        next_dir.path().join("shop-acme.key"),
    )
    .expect("files");
    assert!(list_with(&t, &new).await.is_ok(), "the new certificates are not served");
    assert!(list_with(&t, &old).await.is_err(), "the old CA is still trusted after rotation");
    // A connection made before the rotation keeps working until it closes.
    assert!(open.clone().list_registers(list()).await.is_ok());
}

/// A client certificate for `shop-acme` signed by the test server's CA,
/// with the given extended key usages (none: no EKU extension at all).
fn acme_certificate_with(t: &TestServer, purposes: Vec<rcgen::ExtendedKeyUsagePurpose>) -> ClientTls {
    let pki = t.pki.as_ref().expect("pki");
    let read = |name: &str| std::fs::read_to_string(pki.dir.join(name)).expect("read");
    let ca_key = rcgen::KeyPair::from_pem(&read("ca.key")).expect("ca key");
    let issuer = rcgen::Issuer::from_ca_cert_pem(&read("ca.pem"), ca_key).expect("issuer");
    let mut params = rcgen::CertificateParams::default();
    let uri = syncpay::identity::identity_uri(&shop("acme"));
    params.subject_alt_names = vec![rcgen::SanType::URI(uri.try_into().expect("uri"))];
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = purposes;
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, &issuer).expect("sign");
    ClientTls {
        ca_pem: read("ca.pem").into_bytes(),
        cert_pem: cert.pem().into_bytes(),
        key_pem: key.serialize_pem().into_bytes(),
        server_name: None,
    }
}

#[tokio::test]
async fn a_client_certificate_must_carry_the_client_auth_purpose() {
    let t = TestServer::start_tls(&["acme"], &[], functional_limits()).await;
    use rcgen::ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
    // The same certificate with clientAuth is served: what differs below is
    // only the extended key usage.
    assert!(list_with(&t, &acme_certificate_with(&t, vec![ClientAuth])).await.is_ok());
    // Without the extension, the certificate would be good for any purpose
    // (RFC 5280); syncpay requires clientAuth to be said.
    let none = list_with(&t, &acme_certificate_with(&t, Vec::new())).await;
    assert!(none.is_err(), "a client certificate without extended key usage was accepted");
    assert!(list_with(&t, &acme_certificate_with(&t, vec![ServerAuth])).await.is_err());
    // The development PKI issues clientAuth certificates.
    assert!(t.as_shop("acme").await.list_registers(list()).await.is_ok());
}
