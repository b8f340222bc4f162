//! The development PKI and TLS serving as a user runs them: `syncpay pki`
//! writes a CA, server and client certificates (keys 0600) and refuses to
//! overwrite; `syncpay serve` refuses plaintext off loopback and serves
//! mutual TLS with the generated files; `syncpay admin` talks to it with the
//! operator's certificate instead of a token.

mod common;

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use common::binary::{run as syncpay, Running};

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn pki_init_issue_and_a_tls_server_the_admin_cli_reaches_by_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = dir.path().join("pki");
    let pki_s = pki.display().to_string();
    let out = syncpay(&[
        "pki",
        "--dir",
        &pki_s,
        "init",
        "--shop",
        "acme",
        "--carrier",
        "docomo",
        "--server-name",
        "pay.example",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("--tls-cert"), "init tells how to serve: {}", text(&out));
    let out = syncpay(&["pki", "--dir", &pki_s, "issue", "shop", "bobs"]);
    assert!(out.status.success(), "{}", text(&out));
    for stem in ["ca", "server", "admin", "shop-acme", "carrier-docomo", "shop-bobs"] {
        assert!(pki.join(format!("{stem}.pem")).exists(), "{stem}.pem");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(pki.join(format!("{stem}.key"))).expect("key").permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{stem}.key");
        }
    }
    // Nothing is overwritten; bad ids are refused.
    assert!(!syncpay(&["pki", "--dir", &pki_s, "init"]).status.success());
    assert!(!syncpay(&["pki", "--dir", &pki_s, "issue", "shop", "bobs"]).status.success());
    assert!(!syncpay(&["pki", "--dir", &pki_s, "issue", "shop", "Not A Slug"]).status.success());

    // Plaintext off loopback is refused before anything is opened.
    let data = dir.path().join("data");
    let data_s = data.display().to_string();
    let out = syncpay(&["serve", "--listen", "0.0.0.0:7799", "--data-dir", &data_s]);
    assert!(!out.status.success());
    assert!(text(&out).contains("without TLS syncpay listens only on loopback"), "{}", text(&out));
    assert_eq!(out.status.code(), Some(2), "a configuration problem exits 2");
    assert!(!data.exists(), "the refusal came after the data folder was made");

    // Mutual TLS with the generated files.
    // Port 0, read back from the announcement: a port picked here and
    // freed again could be taken by anything before the server binds it.
    let listen = "127.0.0.1:0".to_owned();
    let file = |name: &str| pki.join(name).display().to_string();
    let (cert, key, ca) = (file("server.pem"), file("server.key"), file("ca.pem"));
    let mut server = Running::spawn(
        &[
            "serve",
            "--listen",
            &listen,
            "--metrics-listen",
            "off",
            "--data-dir",
            &data_s,
            "--durability",
            "flush-only",
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--client-ca",
            &ca,
        ],
        "stderr",
    );
    let announced = server.wait_line(|l| {
        l.strip_prefix("syncpay serving on ").and_then(|rest| rest.split_whitespace().next()).map(str::to_owned)
    });
    let port = announced.rsplit(':').next().and_then(|p| p.parse::<u16>().ok()).expect("a port in the announcement");
    // The certificate names localhost, not the address.
    let url = format!("https://localhost:{port}");
    let admin = |args: &[&str], cert: &str| {
        let mut all = vec!["admin", "--server", &url, "--tls-ca"];
        let ca = file("ca.pem");
        let (c, k) = (file(&format!("{cert}.pem")), file(&format!("{cert}.key")));
        all.extend([ca.as_str(), "--tls-cert", c.as_str(), "--tls-key", k.as_str()]);
        all.extend(args);
        syncpay(&all)
    };
    let started = Instant::now();
    let verified = loop {
        let out = admin(&["verify"], "admin");
        if out.status.success() || started.elapsed() > Duration::from_secs(20) {
            break out;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(verified.status.success(), "{}", text(&verified));
    assert!(text(&verified).contains("ledger verifies"));
    let out = admin(&["create-shop", "acme", "Acme Books"], "admin");
    assert!(out.status.success(), "{}", text(&out));
    // A shop's certificate is no operator's.
    let out = admin(&["verify"], "shop-acme");
    assert!(!out.status.success());
    assert!(text(&out).to_lowercase().contains("operator"), "{}", text(&out));

    server.terminate();
    let stopped = server.wait_exit();
    assert!(stopped.success(), "serve stops cleanly on SIGTERM: {stopped:?}");
    assert!(Path::new(&data).join("server.secret").exists());
}
