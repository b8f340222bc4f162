//! The web pages: a sample web shop (`shop`), the handset page of the
//! simulated carrier (`phone`), the operator console (`console`), and the
//! composition `syncpay demo --web` runs (`demo`). What they share lives
//! here: the HTTP/1.1 accept loop (bounded connections, optional TLS,
//! graceful stop), the checks every request passes (Host on loopback,
//! same-origin JSON for anything that changes state), security headers,
//! JSON and server-sent-event helpers, and the static files, which are
//! compiled into the binary from `web/` (no build step, nothing fetched
//! at run time).

pub mod console;
pub mod demo;
pub mod phone;
pub mod shop;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Router;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;

/// Connections one page server serves at once; more wait to be accepted.
/// A page holds one or two (a live stream and its calls); this bounds a
/// misbehaving client, not normal use.
pub const MAX_CONNECTIONS: usize = 64;
/// Largest request body any page sends (a JSON object of a few fields).
pub const MAX_BODY_BYTES: usize = 16 * 1024;
/// How long a TLS handshake may take.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection may take to finish its response after a stop.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// Live streams send a comment this often, so proxies and browsers keep
/// them open and a vanished client is noticed.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Events queued for one live stream before its producer waits.
const STREAM_QUEUE_DEPTH: usize = 8;

/// The content security policy of every page: scripts, styles and calls
/// only from the page's own origin (the files are served by the binary).
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// Why a page server could not start.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
    #[error("TLS: {0}")]
    Tls(String),
}

/// A request refused, before or by a handler: a status and a message for
/// the page (sent as `{"error": message}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: StatusCode,
    pub message: String,
}

impl Refusal {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Refusal {
        Refusal { status, message: message.into() }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        error(self.status, &self.message)
    }
}

/// A running page server. `shutdown` stops it; dropping it does not.
pub struct WebServer {
    pub addr: SocketAddr,
    tls: bool,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl WebServer {
    /// `http://addr/` (or `https://`).
    pub fn url(&self) -> String {
        format!("{}://{}/", if self.tls { "https" } else { "http" }, self.addr)
    }

    /// A receiver that turns true when the server stops (live streams end
    /// on it, so connections can finish).
    pub fn stopping(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }

    /// Stops accepting, ends live streams, lets responses finish (at most
    /// a few seconds) and returns.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// What every request of one server is checked against.
#[derive(Clone)]
struct Guard {
    /// `Host` values accepted; empty when the server is not on loopback
    /// (then TLS and the page's own checks protect it).
    hosts: Arc<Vec<String>>,
}

impl Guard {
    fn for_addr(addr: SocketAddr) -> Guard {
        if !addr.ip().is_loopback() {
            return Guard { hosts: Arc::new(Vec::new()) };
        }
        let port = addr.port();
        // A page on loopback answers only to its own names, so a web site
        // that rebinds its DNS name to 127.0.0.1 cannot read it.
        let hosts =
            vec![addr.to_string(), format!("localhost:{port}"), format!("127.0.0.1:{port}"), format!("[::1]:{port}")];
        Guard { hosts: Arc::new(hosts) }
    }

    /// `Err` with the response to send when the request must not reach the
    /// page's handlers.
    fn check<B>(&self, req: &Request<B>) -> Result<(), Refusal> {
        let host = req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
        if !self.hosts.is_empty() && !self.hosts.iter().any(|h| h.eq_ignore_ascii_case(host)) {
            return Err(Refusal::new(StatusCode::MISDIRECTED_REQUEST, "unknown host"));
        }
        match *req.method() {
            Method::GET | Method::HEAD => Ok(()),
            Method::POST => same_origin_json(req.headers(), host),
            _ => Err(Refusal::new(StatusCode::METHOD_NOT_ALLOWED, "GET or POST only")),
        }
    }
}

/// A state-changing call must be JSON (a cross-site form cannot send it
/// without a preflight, which no page answers) from this very origin.
fn same_origin_json(headers: &HeaderMap, host: &str) -> Result<(), Refusal> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(';').next().is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json")));
    if !json {
        return Err(Refusal::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "send application/json"));
    }
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        if site != "same-origin" {
            return Err(Refusal::new(StatusCode::FORBIDDEN, "cross-site request refused"));
        }
    }
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        let own = origin.strip_prefix("http://").or_else(|| origin.strip_prefix("https://"));
        if !own.is_some_and(|o| o.eq_ignore_ascii_case(host)) {
            return Err(Refusal::new(StatusCode::FORBIDDEN, "cross-origin request refused"));
        }
    }
    Ok(())
}

fn add_security_headers(headers: &mut HeaderMap) {
    let set = |headers: &mut HeaderMap, name: &'static str, value: &'static str| {
        headers.insert(name, HeaderValue::from_static(value));
    };
    set(headers, "content-security-policy", CSP);
    set(headers, "x-content-type-options", "nosniff");
    set(headers, "x-frame-options", "DENY");
    set(headers, "referrer-policy", "no-referrer");
    set(headers, "cross-origin-opener-policy", "same-origin");
    set(headers, "cross-origin-resource-policy", "same-origin");
    if !headers.contains_key(header::CACHE_CONTROL) {
        set(headers, "cache-control", "no-store");
    }
}

/// Serves `router` on `listener` (over TLS when `tls` is given) until
/// [`WebServer::shutdown`]. Handlers can extract `ConnectInfo<SocketAddr>`:
/// the peer's address and port as this server saw the TCP connection.
pub fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> Result<WebServer, WebError> {
    let addr = listener.local_addr()?;
    let (stop, stopped) = watch::channel(false);
    let guard = Guard::for_addr(addr);
    let is_tls = tls.is_some();
    let task = tokio::spawn(accept_loop(listener, router, guard, tls.map(tokio_rustls::TlsAcceptor::from), stopped));
    Ok(WebServer { addr, tls: is_tls, stop, task })
}

async fn accept_loop(
    listener: TcpListener,
    router: Router,
    guard: Guard,
    tls: Option<tokio_rustls::TlsAcceptor>,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = stopped(&mut stop) => break,
        };
        let (tcp, peer) = tokio::select! {
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    // Usually out of file descriptors: back off, don't spin.
                    tracing::warn!(error = %e, "web listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped(&mut stop) => break,
        };
        let _ = tcp.set_nodelay(true);
        let (router, guard, tls, stop) = (router.clone(), guard.clone(), tls.clone(), stop.clone());
        // Reap finished connections so the set stays as small as the slots.
        while connections.try_join_next().is_some() {}
        connections.spawn(async move {
            match tls {
                None => serve_connection(TokioIo::new(tcp), peer, router, guard, stop).await,
                Some(acceptor) => match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => serve_connection(TokioIo::new(stream), peer, router, guard, stop).await,
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "web TLS handshake refused"),
                    Err(_) => tracing::debug!(%peer, "web TLS handshake timed out"),
                },
            }
            drop(permit);
        });
    }
    // Connections see the stop too: live streams end and responses finish.
    let drain = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(STOP_GRACE + STOP_GRACE, drain).await.is_err() {
        connections.abort_all();
    }
}

async fn serve_connection<I>(io: I, peer: SocketAddr, router: Router, guard: Guard, mut stop: watch::Receiver<bool>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut req: Request<hyper::body::Incoming>| {
        let mut router = router.clone();
        let guard = guard.clone();
        async move {
            if let Err(refused) = guard.check(&req) {
                let mut refused = refused.into_response();
                add_security_headers(refused.headers_mut());
                return Ok::<_, Infallible>(refused);
            }
            req.extensions_mut().insert(ConnectInfo(peer));
            let mut response = match tower_service::Service::call(&mut router, req.map(Body::new)).await {
                Ok(r) => r,
                Err(never) => match never {},
            };
            add_security_headers(response.headers_mut());
            Ok(response)
        }
    });
    let connection = hyper::server::conn::http1::Builder::new().serve_connection(io, service);
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "web connection ended");
            }
        }
        _ = stopped(&mut stop) => {
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(STOP_GRACE, connection).await;
        }
    }
}

/// Resolves once `stop` turns true (or its sender is gone).
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// A JSON response.
pub fn json(status: StatusCode, value: &serde_json::Value) -> Response {
    let mut response = (status, value.to_string()).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// `{"error": message}` with `status`.
pub fn error(status: StatusCode, message: &str) -> Response {
    json(status, &serde_json::json!({ "error": message }))
}

/// Parses a JSON request body (already bounded by [`MAX_BODY_BYTES`]).
pub fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Refusal> {
    if body.len() > MAX_BODY_BYTES {
        return Err(Refusal::new(StatusCode::PAYLOAD_TOO_LARGE, "request too large"));
    }
    serde_json::from_slice(body).map_err(|e| Refusal::new(StatusCode::BAD_REQUEST, format!("request: {e}")))
}

/// A static file compiled into the binary.
pub fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Files change only with the binary; revalidating is cheap on loopback.
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// The style sheet every page shares.
pub const COMMON_CSS: &str = include_str!("../../web/common.css");
/// The small script every page shares (formatting, live streams, calls).
pub const COMMON_JS: &str = include_str!("../../web/common.js");

/// Routes for the shared files, merged into each page's router.
pub fn common_assets<S: Clone + Send + Sync + 'static>() -> Router<S> {
    use axum::routing::get;
    Router::new()
        .route("/assets/common.css", get(|| async { asset("text/css; charset=utf-8", COMMON_CSS) }))
        .route("/assets/common.js", get(|| async { asset("text/javascript; charset=utf-8", COMMON_JS) }))
}

/// A live stream of JSON snapshots: `produce` runs in its own task and
/// sends each snapshot into the channel it is given; the stream ends when
/// `produce` returns, and `produce` should return when a send fails (the
/// browser left) or `stop` turns true.
pub fn live<F, Fut>(produce: F) -> Response
where
    F: FnOnce(mpsc::Sender<Result<Event, Infallible>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(STREAM_QUEUE_DEPTH);
    tokio::spawn(produce(tx));
    Sse::new(ReceiverStream::new(rx)).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)).into_response()
}

/// One snapshot event for [`live`].
pub fn snapshot(value: &serde_json::Value) -> Result<Event, Infallible> {
    Ok(Event::default().event("snapshot").data(value.to_string()))
}

/// An amount for people: the currency's exponent decides the decimals,
/// thousands are grouped ("1,800 JPY", "12,345.60 USD"). Exact: no floats.
pub fn format_amount(currency: crate::domain::Currency, amount: crate::domain::Amount) -> String {
    let text = currency.format(amount);
    let (number, code) = text.split_once(' ').unwrap_or((text.as_str(), ""));
    let (whole, fraction) = match number.split_once('.') {
        Some((w, f)) => (w, Some(f)),
        None => (number, None),
    };
    let mut grouped = String::with_capacity(whole.len() + whole.len() / 3);
    for (i, digit) in whole.chars().enumerate() {
        if i > 0 && (whole.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    match fraction {
        Some(f) => format!("{grouped}.{f} {code}"),
        None => format!("{grouped} {code}"),
    }
}

/// Bytes as standard base64 (how pages send keys and signatures).
pub fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Standard base64 back to bytes; `None` if it is not.
pub fn unb64(text: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(text).ok()
}

/// A rustls configuration for a page server over HTTPS: the server's own
/// certificate and key, no client certificate (the browser logs in).
pub fn tls_config(cert: &std::path::Path, key: &std::path::Path) -> Result<rustls::ServerConfig, WebError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let read = |p: &std::path::Path| std::fs::read(p).map_err(|e| WebError::Tls(format!("{}: {e}", p.display())));
    let chain = CertificateDer::pem_slice_iter(&read(cert)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| WebError::Tls(format!("{}: {e}", cert.display())))?;
    let key_der =
        PrivateKeyDer::from_pem_slice(&read(key)?).map_err(|e| WebError::Tls(format!("{}: {e}", key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| WebError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| WebError::Tls(format!("certificate and key: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: Method, host: &str, headers: &[(&'static str, &str)]) -> Request<()> {
        let mut builder = Request::builder().method(method).uri("/api/x").header(header::HOST, host);
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        builder.body(()).expect("request")
    }

    #[test]
    fn loopback_pages_answer_only_to_their_own_host() {
        let guard = Guard::for_addr("127.0.0.1:8080".parse().expect("addr"));
        assert!(guard.check(&request(Method::GET, "127.0.0.1:8080", &[])).is_ok());
        assert!(guard.check(&request(Method::GET, "localhost:8080", &[])).is_ok());
        for bad in ["evil.example:8080", "127.0.0.1:8081", ""] {
            let refused = guard.check(&request(Method::GET, bad, &[])).expect_err(bad);
            assert_eq!(refused.status, StatusCode::MISDIRECTED_REQUEST, "{bad}");
        }
        assert_eq!(
            guard.check(&request(Method::PUT, "127.0.0.1:8080", &[])).map_err(|r| r.status),
            Err(StatusCode::METHOD_NOT_ALLOWED)
        );
        // Off loopback there is no list to check against.
        let open = Guard::for_addr("0.0.0.0:8443".parse().expect("addr"));
        assert!(open.check(&request(Method::GET, "pay.example:8443", &[])).is_ok());
    }

    #[test]
    fn a_post_must_be_same_origin_json() {
        let guard = Guard::for_addr("127.0.0.1:8080".parse().expect("addr"));
        let host = "127.0.0.1:8080";
        let post =
            |headers: &[(&'static str, &str)]| guard.check(&request(Method::POST, host, headers)).map_err(|r| r.status);
        let json = ("content-type", "application/json");
        assert_eq!(post(&[json, ("origin", "http://127.0.0.1:8080"), ("sec-fetch-site", "same-origin")]), Ok(()));
        assert_eq!(post(&[("content-type", "application/json; charset=utf-8")]), Ok(()));
        assert_eq!(
            post(&[("content-type", "application/x-www-form-urlencoded")]),
            Err(StatusCode::UNSUPPORTED_MEDIA_TYPE)
        );
        assert_eq!(post(&[]), Err(StatusCode::UNSUPPORTED_MEDIA_TYPE));
        assert_eq!(post(&[json, ("origin", "http://evil.example")]), Err(StatusCode::FORBIDDEN));
        assert_eq!(post(&[json, ("origin", "null")]), Err(StatusCode::FORBIDDEN));
        assert_eq!(post(&[json, ("sec-fetch-site", "cross-site")]), Err(StatusCode::FORBIDDEN));
        assert_eq!(post(&[json, ("sec-fetch-site", "same-site")]), Err(StatusCode::FORBIDDEN));
    }

    #[test]
    fn amounts_follow_the_currency_exponent() {
        use crate::domain::{Amount, Currency};
        let c = |code: &str| Currency::parse(code).expect("known");
        assert_eq!(format_amount(c("JPY"), Amount::new(1800)), "1,800 JPY");
        assert_eq!(format_amount(c("JPY"), Amount::new(999)), "999 JPY");
        assert_eq!(format_amount(c("JPY"), Amount::new(1_000_000)), "1,000,000 JPY");
        assert_eq!(format_amount(c("USD"), Amount::new(1_234_560)), "12,345.60 USD");
        assert_eq!(format_amount(c("KWD"), Amount::new(5)), "0.005 KWD");
        assert_eq!(format_amount(c("JPY"), Amount::new(0)), "0 JPY");
    }

    #[test]
    fn base64_round_trips_and_refuses_garbage() {
        assert_eq!(unb64(&b64(&[0, 1, 2, 250])), Some(vec![0, 1, 2, 250]));
        assert_eq!(unb64("not base64!"), None);
    }
}
