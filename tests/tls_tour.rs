//! The README's 5-minute tour over mutual TLS, on the real binary: `pki
//! init`, `serve` with TLS, `admin` creating the shop and the carrier by
//! the operator's certificate, `carrier-sim` by the carrier's certificate,
//! a top-up, `shop charge` by the shop's certificate (SETTLED) and `admin
//! verify`. No token is read anywhere: the token files do not exist.

mod common;

use std::time::Instant;

use common::binary::{run, Running};
use serde_json::Value;

const BUYER: &str = "+819000000001";

fn text(out: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn the_tour_over_mutual_tls_settles_a_charge_and_the_ledger_verifies() {
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = dir.path().join("pki");
    let file = |name: &str| pki.join(name).display().to_string();
    let out = run(&["pki", "--dir", &pki.display().to_string(), "init", "--shop", "acme", "--carrier", "docomo"]);
    assert!(out.status.success(), "{}", text(&out));

    let data = dir.path().join("data").display().to_string();
    let (cert, key, ca) = (file("server.pem"), file("server.key"), file("ca.pem"));
    // Dropping a `Running` kills the child, so a failed assertion leaves
    // nothing behind.
    let mut serve = Running::spawn(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "off",
            "--data-dir",
            &data,
            "--durability",
            "flush-only",
            "--set",
            "limits.subscriber_offers_per_minute=0",
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--client-ca",
            &ca,
        ],
        "stderr",
    );
    let bound = serve.wait_line(|l| {
        l.strip_prefix("syncpay serving on ").and_then(|rest| rest.split_whitespace().next()).map(str::to_owned)
    });
    let port = bound.strip_prefix("https://127.0.0.1:").expect("a TLS URL on loopback");
    // The development server certificate names localhost.
    let url = format!("https://localhost:{port}");

    // Every client: the server, the CA and its own certificate; a token
    // file that does not exist proves the certificate alone is enough.
    let no_token = dir.path().join("no.token").display().to_string();
    let as_who = |command: &str, who: &str, args: &[&str]| -> Vec<String> {
        let mut all: Vec<String> = [
            command,
            "--server",
            &url,
            "--tls-ca",
            &ca,
            "--tls-cert",
            &file(&format!("{who}.pem")),
            "--tls-key",
            &file(&format!("{who}.key")),
            "--token-file",
            &no_token,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        all.extend(args.iter().map(|s| s.to_string()));
        all
    };
    let sync = |command: &str, who: &str, args: &[&str]| {
        let all = as_who(command, who, args);
        run(&all.iter().map(String::as_str).collect::<Vec<_>>())
    };

    let out = sync("admin", "admin", &["create-shop", "acme", "Acme Books"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = sync("admin", "admin", &["create-carrier", "docomo", "Docomo"]);
    assert!(out.status.success(), "{}", text(&out));

    let sim_args = as_who("carrier-sim", "carrier-docomo", &["--handsets", "1", "--first-number", BUYER, "--json"]);
    let mut sim = Running::spawn(&sim_args.iter().map(String::as_str).collect::<Vec<_>>(), "stdout");
    let ready: Value = sim.wait_line(|l| serde_json::from_str::<Value>(l).ok().filter(|v| v["event"] == "ready"));
    assert_eq!(ready["server"], url.as_str(), "{ready}");

    let out = sync("admin", "admin", &["top-up", BUYER, "5000", "JPY"]);
    assert!(out.status.success(), "{}", text(&out));

    let out = sync("shop", "shop-acme", &["open", "Front desk", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let register: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let register = register["register_id"].as_str().expect("register id").to_owned();
    let out = sync("shop", "shop-acme", &["charge", "--register", &register, BUYER, "1200", "JPY", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let trade: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(trade["state"], "SETTLED", "{trade}");
    assert_eq!(trade["amount_minor"], 1200);

    // The receipt, checked offline with the operator's published keys.
    let keys = dir.path().join("receipt-keys.json").display().to_string();
    let out = sync("shop", "shop-acme", &["receipt-keys", "--out", &keys]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = sync("shop", "shop-acme", &["status", trade["trade_id"].as_str().expect("id"), "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let trade_file = dir.path().join("trade.json");
    std::fs::write(&trade_file, &out.stdout).expect("write");
    let trade_file = trade_file.display().to_string();
    let out = run(&["shop", "verify-receipt", "--keys", &keys, "--shop", "acme", &trade_file]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("receipt verifies"), "{}", text(&out));

    let out = sync("admin", "admin", &["verify"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("ledger verifies"), "{}", text(&out));

    // A certificate names one party: the shop's is no carrier's or
    // operator's, whatever command presents it.
    let out = sync("admin", "shop-acme", &["verify"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    // Usage: an incomplete trio, or TLS files with a plaintext URL.
    let out = run(&["shop", "--server", &url, "--tls-ca", &ca, "registers"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let plain = url.replace("https://", "http://");
    let mut args = as_who("shop", "shop-acme", &["registers"]);
    args[2] = plain;
    let out = run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));

    sim.terminate();
    assert_eq!(sim.wait_exit().code(), Some(0));
    serve.terminate();
    assert_eq!(serve.wait_exit().code(), Some(0));
    eprintln!("tour over mutual TLS took {:?}", started.elapsed());
}
