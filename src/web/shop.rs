//! The sample web shop: the shop's own backend, a [`VirtualRegister`]
//! behind a storefront and a checkout page. A buyer pays with their phone
//! (types their number; the trade is pushed to their handset) or adds it to
//! their phone bill (the backend names the payer by the address and port
//! it saw the buyer's TCP connection come from; the buyer types nothing).
//! The checkout follows the trade live over server-sent events, fed by one
//! `WatchTrades` stream of the register, and shows every final state with
//! its reason and the result of checking the receipt.
//!
//! Prices come from the backend's catalogue, never from the page. Only
//! trades this backend created can be followed or cancelled; their ids
//! are unguessable, so one visitor cannot watch or cancel another's.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use http::StatusCode;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;

use super::{asset, error, json, live, parse_body, snapshot, WebError, WebServer, MAX_BODY_BYTES};
use crate::domain::{Amount, ApprovalPayload, Currency, Decision, ShopId, TradeId};
use crate::proto::{self, FailureReason, TradeState};
use crate::register::{
    is_final, verify_trade_receipt, ChargeRequest, NetworkPayer, ReceiptError, ReceiptKeySet, RegisterError,
    VirtualRegister,
};

const INDEX_HTML: &str = include_str!("../../web/shop/index.html");
const SHOP_JS: &str = include_str!("../../web/shop/shop.js");
const SHOP_CSS: &str = include_str!("../../web/shop/shop.css");

/// Trades the backend remembers (its own and others of the register seen
/// on the event stream); the oldest are forgotten first.
pub const MAX_TRACKED_TRADES: usize = 10_000;
/// Pause before re-opening the register's event stream after it broke;
/// doubled on each failure up to [`MAX_WATCH_BACKOFF`].
const WATCH_BACKOFF: Duration = Duration::from_millis(100);
const MAX_WATCH_BACKOFF: Duration = Duration::from_secs(5);

/// One thing the shop sells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// Used in the page's requests; `[a-z0-9-]`.
    pub id: String,
    pub name: String,
    /// One line under the name.
    pub blurb: String,
    pub amount: Amount,
    pub currency: Currency,
    /// The colour of the book's cover on the page (a CSS colour).
    pub colour: String,
}

/// A small bookshop, in yen.
pub fn sample_catalog() -> Vec<Item> {
    let jpy = Currency::parse("JPY").ok();
    let item = |id: &str, name: &str, blurb: &str, price: u64, colour: &str| {
        jpy.map(|currency| Item {
            id: id.to_owned(),
            name: name.to_owned(),
            blurb: blurb.to_owned(),
            amount: Amount::new(price),
            currency,
            colour: colour.to_owned(),
        })
    };
    [
        item("field-guide-to-moss", "A Field Guide to Moss", "Hardback, 212 pages", 1800, "#2f6f4f"),
        item("night-trains", "Night Trains of Europe", "Paperback, 340 pages", 2400, "#2b3a67"),
        item("little-book-of-knots", "The Little Book of Knots", "Pocket edition, 96 pages", 900, "#b5522b"),
        item("tea-a-short-history", "Tea: A Short History", "Paperback, 180 pages", 1500, "#7a5c2e"),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// How the shop runs.
#[derive(Debug, Clone)]
pub struct ShopConfig {
    /// The shop's id at the server: the receipt's signed terms name it.
    pub shop_id: ShopId,
    /// Shown in the page's header.
    pub shop_name: String,
    pub catalog: Vec<Item>,
    /// Seconds a buyer has to answer; 0 for the server's default.
    pub ttl_seconds: u32,
}

/// How the buyer chose to pay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PayMethod {
    Phone,
    Bill,
}

impl PayMethod {
    fn name(self) -> &'static str {
        match self {
            PayMethod::Phone => "phone",
            PayMethod::Bill => "bill",
        }
    }
}

struct Entry {
    trade: proto::Trade,
    /// Created by this backend (only these can be followed or cancelled).
    ours: Option<PayMethod>,
    item_name: String,
}

#[derive(Default)]
struct Tracked {
    trades: HashMap<String, Entry>,
    /// Insertion order, for forgetting the oldest; same keys as `trades`.
    order: VecDeque<String>,
}

impl Tracked {
    /// Keeps the more advanced of what is known and `trade` (an event can
    /// overtake the answer to `CreateTrade`).
    fn merge(&mut self, trade: proto::Trade, ours: Option<(PayMethod, String)>) {
        let id = trade.trade_id.clone();
        if let Some(entry) = self.trades.get_mut(&id) {
            if progress(&trade) >= progress(&entry.trade) {
                entry.trade = trade;
            }
            if let Some((method, item)) = ours {
                entry.ours = Some(method);
                entry.item_name = item;
            }
            return;
        }
        while self.trades.len() >= MAX_TRACKED_TRADES {
            match self.order.pop_front() {
                Some(oldest) => {
                    self.trades.remove(&oldest);
                }
                None => break,
            }
        }
        let (method, item_name) = match ours {
            Some((m, i)) => (Some(m), i),
            None => (None, String::new()),
        };
        self.order.push_back(id.clone());
        self.trades.insert(id, Entry { trade, ours: method, item_name });
        debug_assert_eq!(self.order.len(), self.trades.len());
    }
}

/// Open states come before final ones; a final state is never replaced.
fn progress(trade: &proto::Trade) -> u8 {
    match TradeState::try_from(trade.state) {
        Ok(TradeState::Pending) => 1,
        Ok(TradeState::Offered) => 2,
        Ok(
            TradeState::Settled
            | TradeState::Declined
            | TradeState::Expired
            | TradeState::Cancelled
            | TradeState::Failed,
        ) => 3,
        Ok(TradeState::Unspecified) | Err(_) => 0,
    }
}

struct Shop {
    register: VirtualRegister,
    config: ShopConfig,
    /// The operator's receipt keys, read at start and again when a receipt
    /// names a key not among them (after a rotation).
    receipt_keys: Mutex<Option<ReceiptKeySet>>,
    tracked: Mutex<Tracked>,
    /// Bumped after every change of `tracked`.
    version: watch::Sender<u64>,
    stop: watch::Receiver<bool>,
}

impl Shop {
    fn lock(&self) -> std::sync::MutexGuard<'_, Tracked> {
        // Every update is a few field writes: a panic mid-way leaves it usable.
        self.tracked.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn merge(&self, trade: proto::Trade, ours: Option<(PayMethod, String)>) {
        self.lock().merge(trade, ours);
        self.version.send_modify(|v| *v = v.wrapping_add(1));
    }

    fn keys(&self) -> Option<ReceiptKeySet> {
        self.receipt_keys.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Reads the receipt keys if `trade`'s receipt names one we lack (or we
    /// have none yet). A failure leaves the old keys; the check then says so.
    async fn refresh_keys_for(&self, trade: &proto::Trade) {
        let Some(receipt) = trade.receipt.as_ref().filter(|r| !r.receipt_key_id.is_empty()) else { return };
        let known =
            self.keys().is_some_and(|k| k.keys().iter().any(|k| k.id.as_bytes() == receipt.receipt_key_id.as_slice()));
        if known {
            return;
        }
        match self.register.receipt_keys().await {
            Ok(keys) => *self.receipt_keys.lock().unwrap_or_else(|p| p.into_inner()) = Some(keys),
            Err(e) => tracing::warn!(error = %e, "web shop: cannot read the receipt keys"),
        }
    }

    /// The page's view of one of our trades.
    fn view(&self, trade_id: &str) -> Option<Value> {
        let keys = self.keys();
        let tracked = self.lock();
        let entry = tracked.trades.get(trade_id)?;
        let method = entry.ours?;
        Some(trade_view(&entry.trade, method, &entry.item_name, &self.config.shop_id, keys.as_ref()))
    }
}

/// A running web shop.
pub struct ShopWeb {
    server: WebServer,
    watcher: JoinHandle<()>,
    stop: watch::Sender<bool>,
}

impl ShopWeb {
    pub fn url(&self) -> String {
        self.server.url()
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    /// Stops the page server and the register's event stream.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        self.server.shutdown().await;
        let _ = self.watcher.await;
    }
}

/// Starts the shop on `listener` over `register`.
pub fn start(listener: TcpListener, register: VirtualRegister, config: ShopConfig) -> Result<ShopWeb, WebError> {
    let (stop, stop_rx) = watch::channel(false);
    let shop = Arc::new(Shop {
        register,
        config,
        receipt_keys: Mutex::new(None),
        tracked: Mutex::new(Tracked::default()),
        version: watch::Sender::new(0),
        stop: stop_rx.clone(),
    });
    let watcher = tokio::spawn(watch_register(shop.clone(), stop_rx));
    let router = Router::new()
        .route("/", get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }))
        .route("/assets/shop.js", get(|| async { asset("text/javascript; charset=utf-8", SHOP_JS) }))
        .route("/assets/shop.css", get(|| async { asset("text/css; charset=utf-8", SHOP_CSS) }))
        .route("/api/catalog", get(catalog))
        .route("/api/checkout", post(checkout))
        .route("/api/trades/{id}/live", get(follow))
        .route("/api/trades/{id}/cancel", post(cancel))
        .merge(super::common_assets())
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(shop);
    let server = super::serve(listener, router, None)?;
    Ok(ShopWeb { server, watcher, stop })
}

/// Follows the register's events from the start, resuming after the last
/// one seen whenever the stream breaks, until stopped.
async fn watch_register(shop: Arc<Shop>, mut stop: watch::Receiver<bool>) {
    let mut after = 0u64;
    let mut backoff = WATCH_BACKOFF;
    loop {
        let opened = tokio::select! {
            o = shop.register.watch(after) => o,
            _ = super::stopped(&mut stop) => return,
        };
        match opened {
            Ok(mut events) => loop {
                let next = tokio::select! {
                    n = events.next() => n,
                    _ = super::stopped(&mut stop) => return,
                };
                match next {
                    Some(Ok(event)) => {
                        backoff = WATCH_BACKOFF;
                        after = events.last_sequence();
                        if let Some(trade) = event.trade {
                            shop.refresh_keys_for(&trade).await;
                            shop.merge(trade, None);
                        }
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "web shop: event stream broke; resuming");
                        break;
                    }
                    None => break,
                }
            },
            Err(e) => tracing::warn!(error = %e, "web shop: cannot open the event stream; retrying"),
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = super::stopped(&mut stop) => return,
        }
        backoff = backoff.saturating_mul(2).min(MAX_WATCH_BACKOFF);
    }
}

async fn catalog(State(shop): State<Arc<Shop>>) -> Response {
    let items: Vec<Value> = shop
        .config
        .catalog
        .iter()
        .map(|i| {
            json!({
                "id": i.id,
                "name": i.name,
                "blurb": i.blurb,
                "price": super::format_amount(i.currency, i.amount),
                "colour": i.colour,
            })
        })
        .collect();
    json(StatusCode::OK, &json!({ "shop_name": shop.config.shop_name, "items": items }))
}

#[derive(serde::Deserialize)]
struct CheckoutBody {
    item: String,
    /// "phone" or "bill".
    method: String,
    /// For "phone": what the buyer typed.
    #[serde(default)]
    number: String,
}

async fn checkout(State(shop): State<Arc<Shop>>, ConnectInfo(peer): ConnectInfo<SocketAddr>, body: Bytes) -> Response {
    let body: CheckoutBody = match parse_body(&body) {
        Ok(b) => b,
        Err(refused) => return refused.into_response(),
    };
    let Some(item) = shop.config.catalog.iter().find(|i| i.id == body.item) else {
        return error(StatusCode::NOT_FOUND, "no such item");
    };
    let description = item.name.clone();
    let (method, mut request) = match body.method.as_str() {
        "phone" => {
            let number: String = body.number.chars().filter(|c| !c.is_whitespace() && *c != '-').collect();
            if number.is_empty() {
                return error(StatusCode::UNPROCESSABLE_ENTITY, "Type your phone number, e.g. +819000000100.");
            }
            (PayMethod::Phone, ChargeRequest::new(&number, item.amount.minor(), item.currency.code(), &description))
        }
        "bill" => {
            // The address and port of the buyer's connection as this server
            // saw it: the carrier's lease records name whoever held them.
            let payer = NetworkPayer {
                ip: peer.ip().to_canonical(),
                port: peer.port(),
                observed_at_ms: i64::try_from(crate::sync_server::engine::now().0).unwrap_or(i64::MAX),
            };
            let request =
                ChargeRequest::by_network_identity(payer, item.amount.minor(), item.currency.code(), &description);
            (PayMethod::Bill, request)
        }
        _ => return error(StatusCode::BAD_REQUEST, "method: \"phone\" or \"bill\""),
    };
    request.ttl_seconds = shop.config.ttl_seconds;
    // One key per checkout: a retry of this very call cannot charge twice.
    request.idempotency_key = TradeId::generate().ok().map(|t| format!("web-{t}"));
    match shop.register.create(request).await {
        Ok(trade) => {
            let id = trade.trade_id.clone();
            tracing::info!(trade_id = %id, method = method.name(), "web checkout started");
            shop.merge(trade, Some((method, item.name.clone())));
            match shop.view(&id) {
                Some(view) => json(StatusCode::OK, &view),
                None => error(StatusCode::INTERNAL_SERVER_ERROR, "the trade was forgotten"),
            }
        }
        Err(e) => refused(&e),
    }
}

/// A `CreateTrade` or `CancelTrade` that did not go through, for the page.
fn refused(e: &RegisterError) -> Response {
    let status = match e.code() {
        Some(tonic::Code::Unavailable | tonic::Code::DeadlineExceeded) => StatusCode::SERVICE_UNAVAILABLE,
        Some(tonic::Code::ResourceExhausted) => StatusCode::TOO_MANY_REQUESTS,
        Some(_) => StatusCode::UNPROCESSABLE_ENTITY,
        None => StatusCode::BAD_GATEWAY,
    };
    let message = match e {
        RegisterError::Rpc { message, .. } => message.clone(),
        other => other.to_string(),
    };
    error(status, &message)
}

async fn follow(State(shop): State<Arc<Shop>>, Path(id): Path<String>) -> Response {
    if shop.view(&id).is_none() {
        return error(StatusCode::NOT_FOUND, "no such checkout");
    }
    live(move |tx| async move {
        let mut changes = shop.version.subscribe();
        let mut stop = shop.stop.clone();
        let mut last: Option<Value> = None;
        loop {
            changes.borrow_and_update();
            let Some(view) = shop.view(&id) else { return };
            let done = view["final"].as_bool().unwrap_or(false);
            if last.as_ref() != Some(&view) {
                if tx.send(snapshot(&view)).await.is_err() {
                    return;
                }
                last = Some(view);
            }
            if done {
                return;
            }
            tokio::select! {
                c = changes.changed() => if c.is_err() { return },
                _ = super::stopped(&mut stop) => return,
                _ = tx.closed() => return,
            }
        }
    })
}

async fn cancel(State(shop): State<Arc<Shop>>, Path(id): Path<String>) -> Response {
    if shop.view(&id).is_none() {
        return error(StatusCode::NOT_FOUND, "no such checkout");
    }
    let Ok(trade_id) = TradeId::parse(&id) else {
        return error(StatusCode::NOT_FOUND, "no such checkout");
    };
    match shop.register.cancel(trade_id).await {
        Ok(trade) => shop.merge(trade, None),
        // Too late (already final): the page shows how it ended.
        Err(RegisterError::Rpc { code: tonic::Code::FailedPrecondition, .. }) => {
            if let Ok(trade) = shop.register.get(trade_id).await {
                shop.refresh_keys_for(&trade).await;
                shop.merge(trade, None);
            }
        }
        Err(e) => return refused(&e),
    }
    match shop.view(&id) {
        Some(view) => json(StatusCode::OK, &view),
        None => error(StatusCode::NOT_FOUND, "no such checkout"),
    }
}

/// What the buyer reads for each state.
fn explain(trade: &proto::Trade, method: PayMethod) -> String {
    let reason = FailureReason::try_from(trade.failure_reason).unwrap_or(FailureReason::Unspecified);
    let text = match TradeState::try_from(trade.state) {
        Ok(TradeState::Pending) => match method {
            PayMethod::Phone => "Sent to your phone's carrier. Waiting for your phone to show it…",
            PayMethod::Bill => "Your carrier is finding your phone from this connection…",
        },
        Ok(TradeState::Offered) => "On your phone's screen now. Check it shows the same code, then approve.",
        Ok(TradeState::Settled) => "Paid. Thank you!",
        Ok(TradeState::Declined) => "You declined on your phone. Nothing was charged.",
        Ok(TradeState::Expired) => "No answer before the deadline. Nothing was charged.",
        Ok(TradeState::Cancelled) => "Cancelled. Nothing was charged.",
        Ok(TradeState::Failed) => match reason {
            FailureReason::InsufficientFunds => "Not enough money in the phone's wallet. Nothing was charged.",
            FailureReason::SpendingCap => "This would go over the monthly spending cap of your phone bill.",
            FailureReason::BadSignature => "The phone's signature did not verify. Nothing was charged.",
            FailureReason::NoHandset => "No phone is set up for this number yet.",
            FailureReason::PayerUnknown => "No carrier knows this number or connection.",
            FailureReason::CarrierRefusedShop => "Your carrier does not take payments for this shop.",
            FailureReason::Unspecified => "The payment failed.",
        },
        Ok(TradeState::Unspecified) | Err(_) => "Unknown state.",
    };
    text.to_owned()
}

/// A trade as the checkout page shows it.
fn trade_view(
    trade: &proto::Trade,
    method: PayMethod,
    item: &str,
    shop: &ShopId,
    keys: Option<&ReceiptKeySet>,
) -> Value {
    let amount = Currency::parse(&trade.currency)
        .map(|c| super::format_amount(c, Amount::new(trade.amount_minor)))
        .unwrap_or_else(|_| format!("{} {}", trade.amount_minor, trade.currency));
    let receipt = check_receipt(trade, shop, keys)
        .map(|c| json!({ "verdict": c.verdict.name(), "summary": c.summary, "details": c.details }));
    json!({
        "trade_id": trade.trade_id,
        "item": item,
        "method": method.name(),
        "amount": amount,
        "binding_code": trade.binding_code,
        "state": proto::state_name(trade.state),
        "failure_reason": proto::reason_name(trade.failure_reason),
        "message": explain(trade, method),
        "final": is_final(trade),
        "created_at_ms": trade.created_at_ms,
        "expires_at_ms": trade.expires_at_ms,
        "receipt": receipt,
    })
}

/// How far a receipt check got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Every signature on the receipt verified.
    Verified,
    /// The signed terms are this order's, but no signature could be
    /// checked with what the receipt carries.
    TermsOnly,
    /// Something on the receipt is wrong or missing.
    Failed,
}

impl Verdict {
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Verified => "verified",
            Verdict::TermsOnly => "terms-only",
            Verdict::Failed => "failed",
        }
    }
}

/// The result of checking a settled trade's receipt, in words for the page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiptCheck {
    pub verdict: Verdict,
    pub summary: String,
    pub details: Vec<String>,
}

/// The one check the checkout makes of a settled trade's receipt (`None`
/// for a trade that did not settle): `register::verify_trade_receipt`,
/// offline, with the operator's published receipt keys. A receipt settled
/// before receipts were countersigned has no countersignature: the check
/// says so ([`Verdict::TermsOnly`]) rather than show a check it did not
/// make.
pub fn check_receipt(trade: &proto::Trade, shop: &ShopId, keys: Option<&ReceiptKeySet>) -> Option<ReceiptCheck> {
    if TradeState::try_from(trade.state) != Ok(TradeState::Settled) {
        return None;
    }
    let failed = |summary: String| ReceiptCheck { verdict: Verdict::Failed, summary, details: vec![] };
    let Some(keys) = keys else {
        return Some(failed("The operator's receipt keys could not be read, so the receipt is not checked.".into()));
    };
    match verify_trade_receipt(trade, keys, shop) {
        Ok(v) => {
            let amount = super::format_amount(v.payload.currency, v.payload.amount);
            Some(ReceiptCheck {
                verdict: Verdict::Verified,
                summary: format!("Countersigned by the operator's receipt key {}: the phone approved exactly this order.", v.key_id),
                details: vec![
                    format!(
                        "The phone signed this trade, {amount}, this shop and register, the deadline, the binding code {} and APPROVE; the operator attests it verified and settled.",
                        trade.binding_code
                    ),
                    "Checked here, offline, with the operator's published key. The phone's own key is never given to the shop: the receipt holds a commitment to it, different for every trade.".to_owned(),
                    format!("Phone key commitment for this trade: {}…", crate::hex::encode(&v.commitment[..8])),
                ],
            })
        }
        Err(ReceiptError::NotCountersigned) => Some(match legacy_terms_mismatch(trade, shop) {
            None => ReceiptCheck {
                verdict: Verdict::TermsOnly,
                summary: "Settled before receipts were countersigned: the signed terms are this order's, but the \
                          signature cannot be checked here."
                    .to_owned(),
                details: vec!["The server verified the phone's signature before settling.".to_owned()],
            },
            Some(field) => failed(format!("The receipt's signed terms are not this order's ({field}).")),
        }),
        Err(e) => Some(failed(format!("The receipt does not verify: {e}."))),
    }
}

/// For a receipt from before countersigning, which no shop can verify: the
/// first signed term that is not this order's (`None` when all are), so the
/// page claims no more than "the terms match".
fn legacy_terms_mismatch(trade: &proto::Trade, shop: &ShopId) -> Option<&'static str> {
    let Some(receipt) = &trade.receipt else { return Some("no receipt") };
    let Ok(p) = ApprovalPayload::parse(&receipt.signed_payload) else { return Some("signed_payload") };
    let checks = [
        ("decision", p.decision == Decision::Approve),
        ("shop_id", &p.shop_id == shop),
        ("trade_id", p.trade_id.to_string() == trade.trade_id),
        ("register_id", p.register_id.to_string() == trade.register_id),
        ("amount_minor", p.amount.minor() == trade.amount_minor),
        ("currency", p.currency.code() == trade.currency),
        ("expires_at_ms", i64::try_from(p.expires_at.0).ok() == Some(trade.expires_at_ms)),
        ("signature", receipt.signature.len() == crate::domain::approval::ED25519_SIGNATURE_LEN),
    ];
    checks.iter().find(|(_, ok)| !ok).map(|(field, _)| *field)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::RegisterId;

    fn trade(state: TradeState) -> proto::Trade {
        proto::Trade {
            trade_id: TradeId::from_bytes([1; 16]).to_string(),
            register_id: RegisterId::from_bytes([2; 16]).to_string(),
            amount_minor: 1800,
            currency: "JPY".into(),
            state: state as i32,
            expires_at_ms: 1_700_000_000_000,
            ..Default::default()
        }
    }

    /// A settled trade with a receipt made as the server makes one, and the
    /// key set that verifies it.
    fn settled_with_receipt(shop: &ShopId) -> (proto::Trade, ReceiptKeySet) {
        use crate::domain::receipt::{handset_commitment, ReceiptSigner, Statement};
        use crate::domain::{ApprovalPayload, BindingCode, Decision, PayloadVersion, RegisterId, TradeId, UnixMs};
        use ed25519_dalek::Signer;
        let mut t = trade(TradeState::Settled);
        t.binding_code = "123456".into();
        t.finished_at_ms = 1_699_999_999_000;
        let payload = ApprovalPayload {
            trade_id: TradeId::from_bytes([1; 16]),
            amount: Amount::new(1800),
            currency: Currency::parse("JPY").expect("known"),
            shop_id: shop.clone(),
            register_id: RegisterId::from_bytes([2; 16]),
            expires_at: UnixMs(1_700_000_000_000),
            version: PayloadVersion::V2 {
                binding_code: BindingCode::parse("123456").expect("code"),
                screen_digest: [0; 32],
            },
            decision: Decision::Approve,
        }
        .to_bytes();
        let handset = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        let signature = handset.sign(&payload).to_bytes();
        let commitment = handset_commitment(TradeId::from_bytes([1; 16]), &handset.verifying_key().to_bytes());
        let operator = ReceiptSigner::from_seed([8; 32], UnixMs(0));
        let countersignature = operator.sign(&Statement {
            key_id: operator.id(),
            payload: &payload,
            handset_signature: &signature,
            commitment: &commitment,
            settled_at: UnixMs(1_699_999_999_000),
        });
        t.receipt = Some(proto::ApprovalReceipt {
            signed_payload: payload,
            signature: signature.to_vec(),
            handset_key_fingerprint: Vec::new(),
            handset_commitment: commitment.to_vec(),
            settled_at_ms: 1_699_999_999_000,
            receipt_key_id: operator.id().as_bytes().to_vec(),
            countersignature: countersignature.to_vec(),
            statement_version: 1,
        });
        (t, ReceiptKeySet::new(vec![operator.published()]).expect("keys"))
    }

    #[test]
    fn a_receipt_is_checked_only_as_far_as_it_can_be() {
        let shop = ShopId::parse("acme-books").expect("valid");
        let (good, keys) = settled_with_receipt(&shop);
        assert_eq!(check_receipt(&trade(TradeState::Declined), &shop, Some(&keys)), None);
        let none = check_receipt(&trade(TradeState::Settled), &shop, Some(&keys));
        assert_eq!(none.map(|c| c.verdict), Some(Verdict::Failed));
        let check = check_receipt(&good, &shop, Some(&keys)).expect("settled");
        assert_eq!(check.verdict, Verdict::Verified, "{check:?}");
        // Without the keys nothing is claimed.
        assert_eq!(check_receipt(&good, &shop, None).map(|c| c.verdict), Some(Verdict::Failed));
        // Another shop's terms, another amount, a short signature: failed.
        let other = ShopId::parse("other-shop").expect("valid");
        assert_eq!(check_receipt(&good, &other, Some(&keys)).map(|c| c.verdict), Some(Verdict::Failed));
        let mut more = good.clone();
        more.amount_minor = 1801;
        assert_eq!(check_receipt(&more, &shop, Some(&keys)).map(|c| c.verdict), Some(Verdict::Failed));
        let mut short = good.clone();
        if let Some(r) = short.receipt.as_mut() {
            r.signature.truncate(63);
        }
        assert_eq!(check_receipt(&short, &shop, Some(&keys)).map(|c| c.verdict), Some(Verdict::Failed));
        // A receipt from before countersigning: terms only, and it says so.
        let mut legacy = good.clone();
        if let Some(r) = legacy.receipt.as_mut() {
            *r = proto::ApprovalReceipt {
                signed_payload: r.signed_payload.clone(),
                signature: r.signature.clone(),
                handset_key_fingerprint: vec![9; 32],
                ..Default::default()
            };
        }
        assert_eq!(check_receipt(&legacy, &shop, Some(&keys)).map(|c| c.verdict), Some(Verdict::TermsOnly));
        // ... and only while its signed terms are this order's.
        legacy.amount_minor = 1801;
        assert_eq!(check_receipt(&legacy, &shop, Some(&keys)).map(|c| c.verdict), Some(Verdict::Failed));
        assert_eq!(check_receipt(&legacy, &other, Some(&keys)).map(|c| c.verdict), Some(Verdict::Failed));
    }

    #[test]
    fn an_event_never_takes_a_trade_back() {
        let mut tracked = Tracked::default();
        let settled = trade(TradeState::Settled);
        tracked.merge(settled.clone(), None);
        // The CreateTrade answer (PENDING) arrives after the final event.
        tracked.merge(trade(TradeState::Pending), Some((PayMethod::Phone, "Moss".into())));
        let entry = tracked.trades.get(&settled.trade_id).expect("kept");
        assert_eq!(entry.trade.state, TradeState::Settled as i32);
        assert_eq!(entry.ours, Some(PayMethod::Phone));
    }

    #[test]
    fn every_final_state_has_its_own_words() {
        let shop = ShopId::parse("acme-books").expect("valid");
        for (state, reason, needle) in [
            (TradeState::Settled, FailureReason::Unspecified, "Paid"),
            (TradeState::Declined, FailureReason::Unspecified, "declined"),
            (TradeState::Expired, FailureReason::Unspecified, "deadline"),
            (TradeState::Cancelled, FailureReason::Unspecified, "Cancelled"),
            (TradeState::Failed, FailureReason::InsufficientFunds, "Not enough money"),
            (TradeState::Failed, FailureReason::SpendingCap, "spending cap"),
        ] {
            let mut t = trade(state);
            t.failure_reason = reason as i32;
            let view = trade_view(&t, PayMethod::Phone, "Moss", &shop, None);
            assert_eq!(view["final"], json!(true));
            assert!(view["message"].as_str().is_some_and(|m| m.contains(needle)), "{view}");
        }
        let view = trade_view(&trade(TradeState::Offered), PayMethod::Bill, "Moss", &shop, None);
        assert_eq!((view["state"].as_str(), view["final"].as_bool()), (Some("OFFERED"), Some(false)));
        assert_eq!(view["amount"], json!("1,800 JPY"));
    }
}
