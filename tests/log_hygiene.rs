//! No secret, key or full subscriber number reaches the logs. Captures
//! every log line (all modules, TRACE) of a TLS server and a plaintext
//! server while the unchanged `VirtualRegister` and `CarrierSim` settle,
//! decline, forge and refund through them, then searches the text for the
//! operator, shop and carrier tokens, the server secret, the receipt-signing
//! key, the TLS private keys, the handset keys and the subscriber numbers. This binary installs
//! the process's one global subscriber, so it holds this one test.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{carrier, shop, TestServer};
use syncpay::hex::encode as hex;
use syncpay::register::{ChargeRequest, VirtualRegister};
use syncpay::sync_server::limits::Limits;
use syncpay::sync_server::rate_limit::Rate;
use syncpay::terminal_sim::{CarrierSim, Policy};

const NUMBERS: [&str; 3] = ["+819044556601", "+819044556602", "+819044556603"];

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The receipt-signing key's seed (hex) from a data folder's key file.
fn receipt_seed(data_dir: &std::path::Path) -> String {
    let text = std::fs::read_to_string(data_dir.join(syncpay::sync_server::RECEIPT_KEYS_FILE)).expect("key file");
    let file: serde_json::Value = serde_json::from_str(&text).expect("json");
    let seed = file["active"]["seed"].as_str().expect("seed").to_owned();
    assert_eq!(seed.len(), 64);
    seed
}

/// The base64 body lines of a PEM private key.
fn pem_body(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .expect("key")
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() > 16)
        .map(str::to_owned)
        .collect()
}

/// Runs a few trades through `t` with the simulator and a register on
/// `channel_for`'s channels; returns the handsets' public keys.
async fn traffic(
    t: &TestServer,
    shop_channel: tonic::transport::Channel,
    carrier_channel: tonic::transport::Channel,
    shop_token: &str,
    carrier_token: &str,
) -> Vec<[u8; 32]> {
    let sim = CarrierSim::start(carrier_channel, carrier_token).expect("sim");
    sim.wait_connected(Duration::from_secs(10)).await.expect("connected");
    let mut keys = Vec::new();
    for (number, policy) in NUMBERS.iter().zip([Policy::Approve, Policy::Decline, Policy::BadSignature]) {
        keys.push(sim.add_handset(number, policy).await.expect("handset").public_key);
        t.top_up(number, 10_000, "JPY").await;
    }
    let register = VirtualRegister::open(shop_channel, shop_token, "till").await.expect("register");
    for number in NUMBERS {
        let trade = register.charge(ChargeRequest::new(number, 1200, "JPY", "tea")).await.expect("charge");
        if trade.state == syncpay::proto::TradeState::Settled as i32 {
            let id = syncpay::domain::TradeId::parse(&trade.trade_id).expect("id");
            register.refund(id, 200, Some("refund-1")).await.expect("refund");
        }
    }
    // An unknown payer and a malformed one, refused.
    let _ = register.charge(ChargeRequest::new("+819044556699", 100, "JPY", "x")).await;
    let _ = register.charge(ChargeRequest::new("819044556698", 100, "JPY", "x")).await;
    sim.shutdown().await.expect("sim shutdown");
    keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_hold_no_secret_key_or_subscriber_number() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("trace"))
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();

    // Mutual TLS: the register and the simulator take a TLS channel and no
    // token, unchanged.
    // One offer per buyer a minute, so a refusal by that limit is logged too.
    let one_offer = Limits { subscriber_offers: Rate::new(1, Duration::from_secs(60)), ..common::functional_limits() };
    let tls = TestServer::start_tls(&["acme"], &["docomo"], one_offer).await;
    let mut keys =
        traffic(&tls, tls.tls_channel(&shop("acme")).await, tls.tls_channel(&carrier("docomo")).await, "", "").await;
    let register = VirtualRegister::open(tls.tls_channel(&shop("acme")).await, "", "till 2").await.expect("register");
    let refused = register.charge(ChargeRequest::new(NUMBERS[0], 100, "JPY", "more tea")).await;
    let refused = refused.expect_err("a second offer within the minute");
    assert_eq!(refused.code(), Some(tonic::Code::ResourceExhausted), "{refused}");
    let pki = tls.pki.clone().expect("pki");
    let tls_secret = std::fs::read(tls.data_dir.join("server.secret")).expect("secret");
    let tls_receipt_seed = receipt_seed(&tls.data_dir);
    let tls_admin = tls.config.admin_token.clone();
    tls.server.shutdown().await.expect("shutdown");

    // Plaintext development mode, with bearer tokens.
    let plain = TestServer::start().await;
    let shop_token = plain.create_shop("acme", "Acme").await;
    let carrier_token = plain.create_carrier("docomo", "Docomo").await;
    keys.extend(traffic(&plain, plain.channel().await, plain.channel().await, &shop_token, &carrier_token).await);
    let plain_secret = std::fs::read(plain.data_dir.join("server.secret")).expect("secret");
    let plain_receipt_seed = receipt_seed(&plain.data_dir);
    let plain_admin = plain.config.admin_token.clone();
    plain.server.shutdown().await.expect("shutdown");

    let log = String::from_utf8_lossy(&captured.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned();
    assert!(
        log.contains("trade created") && log.contains("handset answer taken"),
        "the capture missed the server's log"
    );
    assert!(log.lines().count() > 100, "too little was logged to prove anything");
    // The offer limit's refusal is logged, naming the shop and trade and
    // the subscriber only masked (the check below looks for it in full).
    let limited = log
        .lines()
        .find(|l| l.contains("the subscriber has had the most offers allowed"))
        .expect("the refusal by the offer limit is logged");
    let masked = syncpay::domain::SubscriberNumber::parse(NUMBERS[0]).expect("number").masked();
    assert!(limited.contains("WARN") && limited.contains("shop=acme") && limited.contains(&masked), "{limited}");

    let mut forbidden: Vec<(String, String)> = Vec::new();
    for n in NUMBERS.iter().chain(&["+819044556699", "+819044556698"]) {
        forbidden.push(("subscriber number".into(), n.to_string()));
        forbidden.push(("subscriber number without +".into(), n.trim_start_matches('+').to_owned()));
    }
    for (what, token) in [
        ("admin token", &tls_admin),
        ("admin token", &plain_admin),
        ("shop token", &shop_token),
        ("carrier token", &carrier_token),
    ] {
        forbidden.push((what.into(), token.clone()));
        // The random part alone, too.
        forbidden.push((what.into(), token.rsplit('_').next().unwrap_or(token).to_owned()));
    }
    for secret in [&tls_secret, &plain_secret] {
        forbidden.push(("server secret".into(), hex(secret)));
    }
    for seed in [tls_receipt_seed, plain_receipt_seed] {
        forbidden.push(("receipt-signing key".into(), seed));
    }
    for path in [
        &pki.server.key,
        &pki.admin.key,
        &pki.dir.join("ca.key"),
        &pki.dir.join("shop-acme.key"),
        &pki.dir.join("carrier-docomo.key"),
    ] {
        for line in pem_body(path) {
            forbidden.push((format!("private key {}", path.display()), line));
        }
    }
    for key in &keys {
        forbidden.push(("handset public key".into(), hex(key)));
    }
    for (what, needle) in &forbidden {
        if let Some(at) = log.find(needle.as_str()) {
            let line_start = log[..at].rfind('\n').map_or(0, |i| i + 1);
            let line_end = log[at..].find('\n').map_or(log.len(), |i| at + i);
            panic!("the log holds a {what}: {}", &log[line_start..line_end]);
        }
    }
}
