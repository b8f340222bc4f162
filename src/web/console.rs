//! The operator console, on `syncpay serve`'s own HTTP listener
//! (`console.listen`): accounts and balances, the newest postings, recent
//! trades by state, the ledger verification with its violations, the
//! carrier statements of the month, and a live chart of settled trades per
//! second and create→settle latency from the server's own metrics. It
//! reads the server's real data in process: the operator API's handlers
//! (`AdminApi`, the same code gRPC calls reach) and the store.
//!
//! Login: the operator token, posted once as JSON (never in a URL, never
//! logged), buys a session cookie (random, `HttpOnly`, `SameSite=Strict`,
//! `Secure` over HTTPS) and a CSRF token that every state-changing call
//! must echo in `X-CSRF-Token`; sessions live in memory, bounded and
//! expiring. Every POST must also be same-origin JSON (see `web::serve`).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::StatusCode;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::Request;

use super::{asset, error, json, parse_body, WebError, WebServer, MAX_BODY_BYTES};
use crate::domain::{Amount, Currency, Month, SubscriberNumber};
use crate::proto::{self, admin_service_server::AdminService};
use crate::store::TradeRecord;
use crate::sync_server::admin_service::AdminApi;
use crate::sync_server::engine::{now, Engine};

const INDEX_HTML: &str = include_str!("../../web/console/index.html");
const CONSOLE_JS: &str = include_str!("../../web/console/console.js");
const CONSOLE_CSS: &str = include_str!("../../web/console/console.css");

/// The session cookie's name.
const COOKIE: &str = "syncpay_console";
/// Sessions alive at once; logging in beyond it ends the oldest.
pub const MAX_SESSIONS: usize = 32;
/// A session ends this long after login.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 60 * 60);
/// Login attempts per minute, over all callers: the token has 256 bits,
/// so this stops log floods rather than guessing.
const LOGINS_PER_MINUTE: u32 = 20;
/// The metrics are sampled this often for the chart.
const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);
/// Samples kept: five minutes of chart.
pub const MAX_SAMPLES: usize = 300;
/// Newest postings shown.
const POSTINGS_SHOWN: usize = 50;
/// Trades shown: the newest events of this many shops …
const TRADE_SHOPS: usize = 100;
/// … and of each of them this many trades, then the newest of all these.
const TRADES_PER_SHOP: usize = 50;
const TRADES_SHOWN: usize = 100;
/// Accounts read for the table and for finding carrier bills.
const ACCOUNTS_SHOWN: usize = 1000;
/// Statements read per refresh.
const STATEMENTS_SHOWN: usize = 50;

/// Where the console reads the server's metrics: the Prometheus text of
/// the installed exporter (the binary's choice; the library knows none).
pub type MetricsSource = Arc<dyn Fn() -> String + Send + Sync>;

/// How the console runs.
#[derive(Clone)]
pub struct ConsoleConfig {
    /// The operator credential (`admin.token`).
    pub admin_token: String,
    /// `None` when no metrics recorder is installed: the chart says so.
    pub metrics: Option<MetricsSource>,
    /// Serve HTTPS with this configuration (cookies are then `Secure`).
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

struct Session {
    csrf: String,
    expires: Instant,
}

struct Console {
    engine: Arc<Engine>,
    admin: AdminApi,
    admin_hash: [u8; 32],
    secure_cookie: bool,
    has_metrics: bool,
    sessions: Mutex<HashMap<String, Session>>,
    samples: Mutex<VecDeque<metrics_text::Sample>>,
    logins: governor::DefaultDirectRateLimiter,
}

/// A running console.
pub struct ConsoleWeb {
    server: WebServer,
    sampler: Option<JoinHandle<()>>,
    stop: watch::Sender<bool>,
}

impl ConsoleWeb {
    pub fn url(&self) -> String {
        self.server.url()
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        self.server.addr
    }

    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        self.server.shutdown().await;
        if let Some(task) = self.sampler {
            let _ = task.await;
        }
    }
}

/// Serves the console on `listener` over the server's engine.
pub fn start(listener: TcpListener, engine: Arc<Engine>, config: ConsoleConfig) -> Result<ConsoleWeb, WebError> {
    let (stop, stop_rx) = watch::channel(false);
    let per_minute = NonZeroU32::new(LOGINS_PER_MINUTE).unwrap_or(NonZeroU32::MIN);
    let console = Arc::new(Console {
        admin: AdminApi::new(engine.clone()),
        engine,
        admin_hash: Sha256::digest(config.admin_token.as_bytes()).into(),
        secure_cookie: config.tls.is_some(),
        has_metrics: config.metrics.is_some(),
        sessions: Mutex::new(HashMap::new()),
        samples: Mutex::new(VecDeque::new()),
        logins: governor::RateLimiter::direct(governor::Quota::per_minute(per_minute)),
    });
    let sampler = config.metrics.map(|source| tokio::spawn(sample(console.clone(), source, stop_rx)));
    let router = Router::new()
        .route("/", get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }))
        .route("/assets/console.js", get(|| async { asset("text/javascript; charset=utf-8", CONSOLE_JS) }))
        .route("/assets/console.css", get(|| async { asset("text/css; charset=utf-8", CONSOLE_CSS) }))
        .route("/api/session", get(session))
        .route("/api/login", post(login))
        .route("/api/logout", post(logout))
        .route("/api/accounts", get(accounts))
        .route("/api/postings", get(postings))
        .route("/api/trades", get(trades))
        .route("/api/verify", get(verify))
        .route("/api/statements", get(statements))
        .route("/api/metrics", get(metrics_points))
        .merge(super::common_assets())
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(console);
    let server = super::serve(listener, router, config.tls)?;
    Ok(ConsoleWeb { server, sampler, stop })
}

fn random_token() -> Option<String> {
    use base64::Engine as _;
    use rand::TryRng;
    let mut bytes = [0u8; 32];
    rand::rngs::SysRng.try_fill_bytes(&mut bytes).ok()?;
    Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// Equal without an early exit, so the time taken says nothing of where
/// two hashes differ.
fn same_hash(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

impl Console {
    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The CSRF token of the request's live session.
    fn session(&self, headers: &HeaderMap) -> Option<String> {
        let id = cookie_value(headers, COOKIE)?;
        let mut sessions = self.sessions();
        let now = Instant::now();
        sessions.retain(|_, s| s.expires > now);
        sessions.get(id).map(|s| s.csrf.clone())
    }

    /// `Err` with 401 unless the request carries a live session.
    fn authorised(&self, headers: &HeaderMap) -> Result<(), super::Refusal> {
        self.session(headers).map(|_| ()).ok_or_else(|| super::Refusal::new(StatusCode::UNAUTHORIZED, "log in first"))
    }

    fn new_session(&self) -> Option<(String, String)> {
        let (id, csrf) = (random_token()?, random_token()?);
        let mut sessions = self.sessions();
        let now = Instant::now();
        sessions.retain(|_, s| s.expires > now);
        while sessions.len() >= MAX_SESSIONS {
            let oldest = sessions.iter().min_by_key(|(_, s)| s.expires).map(|(k, _)| k.clone());
            match oldest {
                Some(k) => {
                    sessions.remove(&k);
                }
                None => break,
            }
        }
        sessions.insert(id.clone(), Session { csrf: csrf.clone(), expires: now + SESSION_TTL });
        debug_assert!(sessions.len() <= MAX_SESSIONS);
        Some((id, csrf))
    }

    fn cookie(&self, value: &str, max_age: u64) -> Option<HeaderValue> {
        let secure = if self.secure_cookie { "; Secure" } else { "" };
        HeaderValue::from_str(&format!(
            "{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}"
        ))
        .ok()
    }
}

async fn session(State(c): State<Arc<Console>>, headers: HeaderMap) -> Response {
    match c.session(&headers) {
        Some(csrf) => json(StatusCode::OK, &json!({ "logged_in": true, "csrf": csrf })),
        None => json(StatusCode::OK, &json!({ "logged_in": false })),
    }
}

#[derive(serde::Deserialize)]
struct LoginBody {
    token: String,
}

async fn login(State(c): State<Arc<Console>>, body: Bytes) -> Response {
    if c.logins.check().is_err() {
        return error(StatusCode::TOO_MANY_REQUESTS, "too many login attempts; wait a minute");
    }
    let body: LoginBody = match parse_body(&body) {
        Ok(b) => b,
        Err(refused) => return refused.into_response(),
    };
    let hash: [u8; 32] = Sha256::digest(body.token.trim().as_bytes()).into();
    if !same_hash(&hash, &c.admin_hash) {
        tracing::warn!("console login refused");
        return error(StatusCode::UNAUTHORIZED, "that is not the operator token");
    }
    let Some((id, csrf)) = c.new_session() else {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "the random generator failed");
    };
    tracing::info!("console login");
    let mut response = json(StatusCode::OK, &json!({ "logged_in": true, "csrf": csrf }));
    if let Some(cookie) = c.cookie(&id, SESSION_TTL.as_secs()) {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    response
}

async fn logout(State(c): State<Arc<Console>>, headers: HeaderMap) -> Response {
    let Some(csrf) = c.session(&headers) else {
        return error(StatusCode::UNAUTHORIZED, "log in first");
    };
    let echoed = headers.get("x-csrf-token").and_then(|v| v.to_str().ok()).unwrap_or("");
    if echoed != csrf {
        return error(StatusCode::FORBIDDEN, "missing or wrong X-CSRF-Token");
    }
    if let Some(id) = cookie_value(&headers, COOKIE) {
        c.sessions().remove(id);
    }
    let mut response = json(StatusCode::OK, &json!({ "logged_in": false }));
    if let Some(cookie) = c.cookie("", 0) {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    response
}

fn status_error(s: &tonic::Status) -> Response {
    error(StatusCode::BAD_GATEWAY, &format!("{:?}: {}", s.code(), s.message()))
}

/// An account name with the subscriber's number masked (`wallet:+81…:JPY`,
/// `bill:<carrier>:<number>:<cur>`), as everything else the server prints.
fn masked_account(name: &str) -> String {
    let mask = |n: &str| SubscriberNumber::parse(n).map_or_else(|_| n.to_owned(), |n| n.masked());
    if let Some((carrier, rest)) = name.strip_prefix("bill:").and_then(|r| r.split_once(':')) {
        if let Some((number, currency)) = rest.rsplit_once(':') {
            return format!("bill:{carrier}:{}:{currency}", mask(number));
        }
    }
    match name.strip_prefix("wallet:").and_then(|r| r.rsplit_once(':')) {
        Some((number, currency)) => format!("wallet:{}:{currency}", mask(number)),
        None => name.to_owned(),
    }
}

fn money(currency: &str, minor: u64) -> String {
    Currency::parse(currency)
        .map_or_else(|_| format!("{minor} {currency}"), |c| super::format_amount(c, Amount::new(minor)))
}

fn signed_money(currency: &str, minor: i64) -> String {
    let text = money(currency, minor.unsigned_abs());
    if minor < 0 {
        format!("−{text}")
    } else {
        text
    }
}

async fn accounts(State(c): State<Arc<Console>>, headers: HeaderMap) -> Response {
    if let Err(r) = c.authorised(&headers) {
        return r.into_response();
    }
    match c.admin.list_accounts(Request::new(proto::ListAccountsRequest { prefix: String::new() })).await {
        Ok(r) => {
            let list: Vec<Value> = r
                .into_inner()
                .accounts
                .iter()
                .take(ACCOUNTS_SHOWN)
                .map(|a| {
                    json!({
                        "name": masked_account(&a.name),
                        "kind": a.name.split(':').next().unwrap_or(""),
                        "currency": a.currency,
                        "debits": money(&a.currency, a.debits_minor),
                        "credits": money(&a.currency, a.credits_minor),
                        "balance": signed_money(&a.currency, a.balance_minor),
                        "balance_minor": a.balance_minor,
                    })
                })
                .collect();
            json(StatusCode::OK, &json!({ "accounts": list }))
        }
        Err(s) => status_error(&s),
    }
}

async fn postings(State(c): State<Arc<Console>>, headers: HeaderMap) -> Response {
    if let Err(r) = c.authorised(&headers) {
        return r.into_response();
    }
    match c.engine.recent_postings(POSTINGS_SHOWN).await {
        Ok(list) => {
            let list: Vec<Value> = list
                .iter()
                .map(crate::sync_server::convert::posting_to_proto)
                .map(|p| {
                    json!({
                        "id": p.posting_id,
                        "set": p.set_id,
                        "account": masked_account(&p.account),
                        "debit": if p.debit_minor > 0 { money(&p.currency, p.debit_minor) } else { String::new() },
                        "credit": if p.credit_minor > 0 { money(&p.currency, p.credit_minor) } else { String::new() },
                        "trade_id": p.trade_id,
                        "kind": p.kind,
                        "at_ms": p.at_ms,
                    })
                })
                .collect();
            json(StatusCode::OK, &json!({ "postings": list }))
        }
        Err(e) => error(StatusCode::BAD_GATEWAY, &e.to_string()),
    }
}

fn trade_row(t: &TradeRecord) -> Value {
    json!({
        "trade_id": t.id.to_string(),
        "shop": t.shop.as_str(),
        "payer": t.request.payer.masked(),
        "carrier": t.carrier.as_ref().map(|c| c.as_str().to_owned()),
        "amount": super::format_amount(t.request.currency, t.request.amount),
        "description": t.request.description,
        "state": t.state.name(),
        "failure_reason": t.failure.map(|f| f.name()),
        "created_at_ms": t.created_at.0,
        "finished_at_ms": t.finished_at.map(|f| f.0),
        "binding_code": t.binding_code,
    })
}

async fn trades(State(c): State<Arc<Console>>, headers: HeaderMap) -> Response {
    if let Err(r) = c.authorised(&headers) {
        return r.into_response();
    }
    match c.engine.recent_trades(TRADE_SHOPS, TRADES_PER_SHOP).await {
        Ok(list) => {
            let mut by_state: BTreeMap<&str, u64> = BTreeMap::new();
            for t in &list {
                *by_state.entry(t.state.name()).or_default() += 1;
            }
            let rows: Vec<Value> = list.iter().take(TRADES_SHOWN).map(trade_row).collect();
            json(StatusCode::OK, &json!({ "trades": rows, "by_state": by_state, "counted": list.len() }))
        }
        Err(e) => error(StatusCode::BAD_GATEWAY, &e.to_string()),
    }
}

async fn verify(State(c): State<Arc<Console>>, headers: HeaderMap) -> Response {
    if let Err(r) = c.authorised(&headers) {
        return r.into_response();
    }
    match c.admin.verify_ledger(Request::new(proto::VerifyLedgerRequest {})).await {
        Ok(r) => {
            let r = r.into_inner();
            json(
                StatusCode::OK,
                &json!({
                    "ok": r.ok,
                    "violations": r.violations,
                    "accounts_checked": r.accounts_checked,
                    "postings_checked": r.postings_checked,
                    "trades_checked": r.trades_checked,
                    "at_ms": now().0,
                }),
            )
        }
        Err(s) => status_error(&s),
    }
}

async fn statements(State(c): State<Arc<Console>>, headers: HeaderMap) -> Response {
    if let Err(r) = c.authorised(&headers) {
        return r.into_response();
    }
    let accounts =
        match c.admin.list_accounts(Request::new(proto::ListAccountsRequest { prefix: "bill:".into() })).await {
            Ok(r) => r.into_inner().accounts,
            Err(s) => return status_error(&s),
        };
    let month = Month::of(now()).to_string();
    let mut out = Vec::new();
    for account in accounts.iter().take(STATEMENTS_SHOWN) {
        // bill:<carrier>:<number>:<currency>
        let mut parts = account.name.splitn(4, ':').skip(1);
        let (Some(carrier), Some(number)) = (parts.next(), parts.next()) else { continue };
        let request = proto::GetStatementRequest {
            subscriber_number: number.to_owned(),
            month: month.clone(),
            carrier_id: carrier.to_owned(),
        };
        let s = match c.admin.get_statement(Request::new(request)).await {
            Ok(r) => r.into_inner(),
            Err(s) => return status_error(&s),
        };
        let lines: Vec<Value> = s
            .lines
            .iter()
            .map(|l| {
                json!({
                    "trade_id": l.trade_id,
                    "shop_name": l.shop_name,
                    "amount": money(&s.currency, l.amount_minor),
                    "refunded": money(&s.currency, l.refunded_minor),
                    "fee": money(&s.currency, l.fee_minor),
                    "settled_at_ms": l.settled_at_ms,
                })
            })
            .collect();
        out.push(json!({
            "carrier": carrier,
            "subscriber": SubscriberNumber::parse(number).map_or_else(|_| number.to_owned(), |n| n.masked()),
            "month": s.month,
            "cap": money(&s.currency, s.monthly_cap_minor),
            "charged": money(&s.currency, s.charged_minor),
            "refunded": money(&s.currency, s.refunded_minor),
            "total": money(&s.currency, s.total_minor),
            "fees": money(&s.currency, s.fee_minor),
            "lines": lines,
        }));
    }
    json(StatusCode::OK, &json!({ "month": month, "statements": out }))
}

/// Samples the metrics every [`SAMPLE_INTERVAL`] until stopped.
async fn sample(console: Arc<Console>, source: MetricsSource, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(SAMPLE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = super::stopped(&mut stop) => return,
        }
        let text = source();
        let sample = metrics_text::Sample::parse(&text, now().0);
        let mut samples = console.samples.lock().unwrap_or_else(|p| p.into_inner());
        while samples.len() >= MAX_SAMPLES {
            samples.pop_front();
        }
        samples.push_back(sample);
    }
}

async fn metrics_points(State(c): State<Arc<Console>>, headers: HeaderMap) -> Response {
    if let Err(r) = c.authorised(&headers) {
        return r.into_response();
    }
    if !c.has_metrics {
        return json(StatusCode::OK, &json!({ "enabled": false, "points": [] }));
    }
    let samples: Vec<metrics_text::Sample> =
        c.samples.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect();
    let points: Vec<Value> = samples.windows(2).filter_map(|w| metrics_text::point(&w[0], &w[1])).collect();
    let latest = samples.last();
    json(
        StatusCode::OK,
        &json!({
            "enabled": true,
            "interval_ms": u64::try_from(SAMPLE_INTERVAL.as_millis()).unwrap_or(u64::MAX),
            "points": points,
            "totals": latest.map(|s| json!({
                "created": s.created,
                "finished": s.finished,
                "open": s.open,
            })),
        }),
    )
}

/// Reading the server's own Prometheus exposition: the few series the
/// chart needs, and the rate and latency between two samples.
pub mod metrics_text {
    use std::collections::BTreeMap;

    use serde_json::{json, Value};

    use crate::metrics as m;

    /// What the chart needs from one scrape. Counts are whole numbers in
    /// the exposition; latencies are seconds (an observation, not money).
    #[derive(Debug, Clone, Default, PartialEq)]
    pub struct Sample {
        pub at_ms: u64,
        pub created: u64,
        /// Finished trades by state (summed over reasons).
        pub finished: BTreeMap<String, u64>,
        pub open: i64,
        /// The create→settle histogram: count, sum (seconds) and the
        /// cumulative buckets `(upper bound in seconds, count)`.
        pub settle_count: u64,
        pub settle_sum: f64,
        pub buckets: Vec<(f64, u64)>,
    }

    /// One exposition line: its name, labels and value.
    pub type Line<'a> = (&'a str, Vec<(&'a str, &'a str)>, f64);

    /// One exposition line; `None` for comments, blank and malformed lines.
    pub fn line(text: &str) -> Option<Line<'_>> {
        let text = text.trim();
        if text.is_empty() || text.starts_with('#') {
            return None;
        }
        let (series, value) = match text.find('{') {
            Some(_) => {
                let close = text.rfind('}')?;
                (&text[..=close], text.get(close + 1..)?.trim())
            }
            None => text.split_once(' ').map(|(s, v)| (s, v.trim()))?,
        };
        let value: f64 = value.split_whitespace().next()?.parse().ok()?;
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (name, labels(rest.strip_suffix('}')?)?),
            None => (series, Vec::new()),
        };
        Some((name, labels, value))
    }

    /// `a="x",b="y"` (our label values never hold quotes or commas, but a
    /// quoted comma is still read correctly).
    fn labels(text: &str) -> Option<Vec<(&str, &str)>> {
        let mut out = Vec::new();
        let mut rest = text.trim();
        while !rest.is_empty() {
            let (key, after) = rest.split_once("=\"")?;
            let end = after.find('"')?;
            out.push((key.trim().trim_start_matches(',').trim(), &after[..end]));
            rest = after[end + 1..].trim_start_matches(',').trim();
        }
        Some(out)
    }

    /// A count as a float for the chart, without `as`.
    fn float(v: u64) -> f64 {
        let high = u32::try_from(v >> 32).unwrap_or(u32::MAX);
        let low = u32::try_from(v & 0xffff_ffff).unwrap_or(u32::MAX);
        f64::from(high) * 4_294_967_296.0 + f64::from(low)
    }

    fn whole(value: f64) -> u64 {
        // Counters are whole and far below 2^53; clamp anything else.
        if value.is_finite() && value >= 0.0 {
            format!("{value:.0}").parse().unwrap_or(0)
        } else {
            0
        }
    }

    impl Sample {
        pub fn parse(text: &str, at_ms: u64) -> Sample {
            let mut s = Sample { at_ms, ..Sample::default() };
            let bucket_name = format!("{}_bucket", m::TRADE_SETTLE_SECONDS);
            let sum_name = format!("{}_sum", m::TRADE_SETTLE_SECONDS);
            let count_name = format!("{}_count", m::TRADE_SETTLE_SECONDS);
            for (name, labels, value) in text.lines().filter_map(line) {
                let label = |k: &str| labels.iter().find(|(key, _)| *key == k).map(|(_, v)| *v);
                if name == m::TRADES_CREATED {
                    s.created = whole(value);
                } else if name == m::TRADES_FINISHED {
                    if let Some(state) = label("state") {
                        *s.finished.entry(state.to_owned()).or_default() += whole(value);
                    }
                } else if name == m::OPEN_TRADES {
                    s.open = format!("{value:.0}").parse().unwrap_or(0);
                } else if name == bucket_name {
                    let le =
                        label("le").and_then(|le| if le == "+Inf" { Some(f64::INFINITY) } else { le.parse().ok() });
                    if let Some(le) = le {
                        s.buckets.push((le, whole(value)));
                    }
                } else if name == sum_name {
                    s.settle_sum = value;
                } else if name == count_name {
                    s.settle_count = whole(value);
                }
            }
            s.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            s
        }

        pub fn settled(&self) -> u64 {
            self.finished.get("SETTLED").copied().unwrap_or(0)
        }
    }

    /// The chart point between two samples: settled trades per second,
    /// and the mean and 95th-percentile (the upper bound of the bucket it
    /// falls in) create→settle latency of the trades settled between them.
    pub fn point(before: &Sample, after: &Sample) -> Option<Value> {
        let ms = after.at_ms.checked_sub(before.at_ms).filter(|ms| *ms > 0)?;
        let settled = after.settled().saturating_sub(before.settled());
        let count = after.settle_count.saturating_sub(before.settle_count);
        let seconds = float(ms) / 1000.0;
        let (mean_ms, p95_ms) = if count == 0 {
            (Value::Null, Value::Null)
        } else {
            let mean = (after.settle_sum - before.settle_sum).max(0.0) / float(count) * 1000.0;
            // The rank of the 95th percentile: ceil(0.95 × count).
            let wanted = count.saturating_mul(95).div_ceil(100);
            let p95 = after
                .buckets
                .iter()
                .map(|(le, n)| {
                    let was = before.buckets.iter().find(|(l, _)| l == le).map_or(0, |(_, n)| *n);
                    (*le, n.saturating_sub(was))
                })
                .find(|(_, n)| *n >= wanted)
                .map(|(le, _)| le);
            (json!(mean), p95.filter(|p| p.is_finite()).map_or(Value::Null, |p| json!(p * 1000.0)))
        };
        Some(json!({
            "at_ms": after.at_ms,
            "settled_per_second": float(settled) / seconds,
            "settled": settled,
            "mean_ms": mean_ms,
            "p95_ms": p95_ms,
        }))
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        const TEXT: &str = "# HELP syncpay_trades_created_total Trades created\n\
            # TYPE syncpay_trades_created_total counter\n\
            syncpay_trades_created_total 12\n\
            syncpay_trades_finished_total{state=\"SETTLED\",reason=\"\"} 7\n\
            syncpay_trades_finished_total{state=\"FAILED\",reason=\"INSUFFICIENT_FUNDS\"} 2\n\
            syncpay_trades_finished_total{state=\"FAILED\",reason=\"BAD_SIGNATURE\"} 1\n\
            syncpay_open_trades 2\n\
            syncpay_trade_settle_seconds_bucket{le=\"0.1\"} 3\n\
            syncpay_trade_settle_seconds_bucket{le=\"0.5\"} 6\n\
            syncpay_trade_settle_seconds_bucket{le=\"+Inf\"} 7\n\
            syncpay_trade_settle_seconds_sum 2.1\n\
            syncpay_trade_settle_seconds_count 7\n";

        #[test]
        fn the_series_the_chart_needs_are_read() {
            let s = Sample::parse(TEXT, 1000);
            assert_eq!((s.created, s.settled(), s.open, s.settle_count), (12, 7, 2, 7));
            assert_eq!(s.finished.get("FAILED"), Some(&3));
            assert_eq!(s.buckets, vec![(0.1, 3), (0.5, 6), (f64::INFINITY, 7)]);
            assert!((s.settle_sum - 2.1).abs() < 1e-9);
            assert_eq!(line("garbage"), None);
            assert_eq!(line("x{a=\"1,2\",b=\"3\"} 4"), Some(("x", vec![("a", "1,2"), ("b", "3")], 4.0)));
        }

        #[test]
        fn a_point_is_the_rate_and_latency_between_two_samples() {
            let before = Sample::parse(TEXT, 1000);
            let mut after = before.clone();
            after.at_ms = 3000;
            after.finished.insert("SETTLED".into(), 11);
            after.settle_count = 11;
            after.settle_sum = 2.1 + 0.8;
            after.buckets = vec![(0.1, 4), (0.5, 9), (f64::INFINITY, 11)];
            let p = point(&before, &after).expect("point");
            assert_eq!(p["settled"], json!(4));
            assert_eq!(p["settled_per_second"], json!(2.0));
            assert!((p["mean_ms"].as_f64().expect("mean") - 200.0).abs() < 1e-6, "{p}");
            // 4 settled, 3 of them within 0.5 s: the 95th percentile (the
            // 4th) is only known to be above 0.5 s.
            assert_eq!(p["p95_ms"], Value::Null);
            after.buckets = vec![(0.1, 4), (0.5, 10), (f64::INFINITY, 11)];
            assert_eq!(point(&before, &after).expect("point")["p95_ms"], json!(500.0));
            // Nothing settled: a rate of zero and no latency.
            let idle = Sample { at_ms: 2000, ..before.clone() };
            let p = point(&before, &idle).expect("point");
            assert_eq!((p["settled"].clone(), p["mean_ms"].clone()), (json!(0), Value::Null));
            assert!(point(&idle, &before).is_none(), "time must move forward");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, HeaderValue::from_static("a=1; syncpay_console=abc; b=2"));
        assert_eq!(cookie_value(&headers, COOKIE), Some("abc"));
        assert_eq!(cookie_value(&headers, "c"), None);
        assert!(same_hash(&[1; 32], &[1; 32]));
        assert!(!same_hash(&[1; 32], &[2; 32]));
    }

    #[test]
    fn account_names_are_masked() {
        assert_eq!(masked_account("shop:acme:JPY"), "shop:acme:JPY");
        let wallet = masked_account("wallet:+819000000100:JPY");
        assert!(!wallet.contains("9000000") && wallet.ends_with(":JPY"), "{wallet}");
        let bill = masked_account("bill:demo-mobile:+819000000200:JPY");
        assert!(bill.starts_with("bill:demo-mobile:") && !bill.contains("9000000"), "{bill}");
    }
}
