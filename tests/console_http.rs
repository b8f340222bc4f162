//! The operator console on the real `syncpay serve` binary, spoken to over
//! HTTP as a browser would (the browser test, `web_pages.rs`, drives the
//! page itself): nothing without a session; a session only for the
//! operator token, posted as same-origin JSON; the cookie HttpOnly and
//! SameSite=Strict (and Secure over HTTPS); logout needs the CSRF token;
//! requests for another host are refused; the token is in no log line.
//! With TLS configured the console serves HTTPS with the server's
//! certificate.

mod common;

use std::io::{Read, Write};
use std::sync::Arc;

use common::binary::Serve;

/// One HTTP answer.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

fn parse(raw: &[u8]) -> Answer {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.split_whitespace().nth(1)).and_then(|s| s.parse().ok()).expect("status");
    let headers: Vec<(String, String)> =
        lines.filter_map(|l| l.split_once(':').map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))).collect();
    let chunked = headers.iter().any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let body = if chunked {
        let mut out = String::new();
        let mut rest = body;
        while let Some((size, after)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 || after.len() < n {
                break;
            }
            out.push_str(&after[..n]);
            rest = after[n..].trim_start_matches("\r\n");
        }
        out
    } else {
        body.to_owned()
    };
    Answer { status, headers, body }
}

fn request_bytes(host: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Vec<u8> {
    let mut text = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (k, v) in headers {
        text.push_str(&format!("{k}: {v}\r\n"));
    }
    if method == "POST" {
        text.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    text.push_str("\r\n");
    text.push_str(body);
    text.into_bytes()
}

/// A request to `addr` (`127.0.0.1:port`), naming `host` in `Host`.
fn call(addr: &str, host: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Answer {
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(std::time::Duration::from_secs(30))).expect("timeout");
    stream.write_all(&request_bytes(host, method, path, headers, body)).expect("send");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read");
    parse(&raw)
}

fn addr_of(url: &str) -> String {
    url.trim_start_matches("http://").trim_start_matches("https://").trim_end_matches('/').to_owned()
}

#[test]
fn the_console_takes_only_the_operator_token_and_keeps_it_out_of_urls_and_logs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut serve = Serve::start(dir.path(), &[]);
    let addr = addr_of(&serve.console_url);
    assert!(serve.console_url.starts_with("http://127.0.0.1:"), "{}", serve.console_url);
    let token = std::fs::read_to_string(dir.path().join("admin.token")).expect("token").trim().to_owned();
    let origin = format!("http://{addr}");
    let json = ("Content-Type", "application/json");
    let get = |path: &str, headers: &[(&str, &str)]| call(&addr, &addr, "GET", path, headers, "");
    let post = |path: &str, headers: &[(&str, &str)], body: &str| call(&addr, &addr, "POST", path, headers, body);

    // The page itself is public; it carries a strict content policy.
    let page = get("/", &[]);
    assert_eq!(page.status, 200);
    assert!(page.body.contains("Operator login"));
    assert!(page.header("content-security-policy").is_some_and(|c| c.contains("script-src 'self'")));
    assert_eq!(page.header("x-frame-options"), Some("DENY"));
    // Nothing else without a session.
    for path in ["/api/accounts", "/api/postings", "/api/trades", "/api/verify", "/api/statements", "/api/metrics"] {
        assert_eq!(get(path, &[]).status, 401, "{path}");
    }
    assert_eq!(get("/api/session", &[]).json()["logged_in"], false);

    let login_body = serde_json::json!({ "token": token }).to_string();
    // Not JSON (a cross-site form could send this): refused.
    assert_eq!(post("/api/login", &[("Content-Type", "application/x-www-form-urlencoded")], "token=x").status, 415);
    // From another origin or site: refused, even with the right token.
    assert_eq!(post("/api/login", &[json, ("Origin", "http://evil.example")], &login_body).status, 403);
    assert_eq!(post("/api/login", &[json, ("Sec-Fetch-Site", "cross-site")], &login_body).status, 403);
    // For another host (DNS rebinding): refused.
    assert_eq!(call(&addr, "evil.example", "GET", "/", &[], "").status, 421);
    // The wrong token: refused, no cookie.
    let wrong = post("/api/login", &[json, ("Origin", &origin)], r#"{"token":"admin_nope"}"#);
    assert_eq!(wrong.status, 401);
    assert!(wrong.header("set-cookie").is_none());

    let ok = post("/api/login", &[json, ("Origin", &origin), ("Sec-Fetch-Site", "same-origin")], &login_body);
    assert_eq!(ok.status, 200, "{}", ok.body);
    let cookie = ok.header("set-cookie").expect("a session cookie").to_owned();
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict") && cookie.contains("Path=/"), "{cookie}");
    assert!(!cookie.contains("Secure"), "plaintext loopback: no Secure flag, or the browser would drop it: {cookie}");
    assert!(!cookie.contains(&token), "the cookie is a session id, not the token");
    let session = cookie.split(';').next().expect("name=value").to_owned();
    let csrf = ok.json()["csrf"].as_str().expect("csrf").to_owned();

    let with = [("Cookie", session.as_str())];
    let accounts = get("/api/accounts", &with);
    assert_eq!(accounts.status, 200);
    assert!(accounts.json()["accounts"].is_array());
    let verify = get("/api/verify", &with).json();
    assert_eq!(verify["ok"], true, "{verify}");
    assert_eq!(get("/api/metrics", &with).json()["enabled"], true);
    assert_eq!(get("/api/session", &with).json()["csrf"], csrf.as_str());
    // A forged session id is nobody's.
    assert_eq!(get("/api/accounts", &[("Cookie", "syncpay_console=forged")]).status, 401);

    // Logging out changes state: it needs the CSRF token as well.
    assert_eq!(post("/api/logout", &[json, ("Cookie", &session)], "{}").status, 403);
    assert_eq!(post("/api/logout", &[json, ("Cookie", &session), ("X-CSRF-Token", "wrong")], "{}").status, 403);
    let out = post("/api/logout", &[json, ("Cookie", &session), ("X-CSRF-Token", &csrf)], "{}");
    assert_eq!(out.status, 200);
    assert!(out.header("set-cookie").is_some_and(|c| c.contains("Max-Age=0")));
    assert_eq!(get("/api/accounts", &with).status, 401, "the session ended");

    serve.process.terminate();
    assert!(serve.process.wait_exit().success());
    let log = serve.process.rest().join("\n");
    assert!(log.contains("console login refused"), "the refusal is logged:\n{log}");
    assert!(!log.contains(&token), "the operator token reached the log:\n{log}");
    assert!(!log.contains(&csrf), "the CSRF token reached the log");
}

#[test]
fn over_tls_the_console_serves_https_with_the_server_certificate() {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = common::make_pki(&dir.path().join("pki"), &[], &[]);
    let path = |p: &std::path::Path| p.display().to_string();
    let (cert, key, ca) = (path(&pki.server.cert), path(&pki.server.key), path(&pki.ca_cert));
    let serve = Serve::start(
        &dir.path().join("data"),
        &["--tls-cert", &cert, "--tls-key", &key, "--client-ca", &ca, "--durability", "flush-only"],
    );
    assert!(serve.console_url.starts_with("https://127.0.0.1:"), "{}", serve.console_url);
    let addr = addr_of(&serve.console_url);

    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(&pki.ca_cert).expect("ca") {
        roots.add(c.expect("cert")).expect("root");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let https = |method: &str, path: &str, headers: &[(&str, &str)], body: &str| {
        let name = ServerName::try_from("localhost").expect("name");
        let mut conn = rustls::ClientConnection::new(Arc::new(config.clone()), name).expect("tls");
        let mut tcp = std::net::TcpStream::connect(&addr).expect("connect");
        tcp.set_read_timeout(Some(std::time::Duration::from_secs(30))).expect("timeout");
        let mut tls = rustls::Stream::new(&mut conn, &mut tcp);
        tls.write_all(&request_bytes(&addr, method, path, headers, body)).expect("send");
        let mut raw = Vec::new();
        // The server closes without close_notify after `Connection: close`
        // on some paths; what was read is the answer.
        let _ = tls.read_to_end(&mut raw);
        parse(&raw)
    };
    let page = https("GET", "/", &[], "");
    assert_eq!(page.status, 200, "the console answers over TLS with a certificate the CA vouches for");
    let token = std::fs::read_to_string(dir.path().join("data").join("admin.token")).expect("token").trim().to_owned();
    let ok = https(
        "POST",
        "/api/login",
        &[("Content-Type", "application/json")],
        &serde_json::json!({ "token": token }).to_string(),
    );
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert!(ok.header("set-cookie").is_some_and(|c| c.contains("; Secure")), "{:?}", ok.header("set-cookie"));
    // Plain HTTP to the HTTPS port gets nothing useful.
    let mut tcp = std::net::TcpStream::connect(&addr).expect("connect");
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(30))).expect("timeout");
    tcp.write_all(&request_bytes(&addr, "GET", "/api/session", &[], "")).expect("send");
    let mut raw = Vec::new();
    let _ = tcp.read_to_end(&mut raw);
    assert!(!String::from_utf8_lossy(&raw).contains("logged_in"), "plaintext was answered");
}

/// The console's built-in default address gives way when it is taken (a
/// payment server does not refuse to start over its optional console); an
/// address that was asked for must bind.
#[test]
fn a_busy_default_console_port_is_skipped_but_a_chosen_one_is_required() {
    use common::binary::{run, Running};
    // Whoever holds it, after this the default port is busy.
    let _held = std::net::TcpListener::bind("127.0.0.1:7780");
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().display().to_string();
    let mut serve =
        Running::spawn(&["serve", "--listen", "127.0.0.1:0", "--metrics-listen", "off", "--data-dir", &data], "stderr");
    serve.wait_line(|l| l.strip_prefix("syncpay console off: ").map(str::to_owned));
    let url = serve.wait_line(|l| l.strip_prefix("syncpay serving on ").map(str::to_owned));
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    serve.terminate();
    assert!(serve.wait_exit().success());

    let out = run(&["serve", "--listen", "127.0.0.1:0", "--console-listen", "127.0.0.1:7780", "--data-dir", &data]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("binding the console listener 127.0.0.1:7780"), "{stderr}");
}
