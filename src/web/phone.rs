//! The handset page, served by the simulated carrier: a phone-sized screen
//! for one of the carrier's browser phones ([`CarrierSim::add_browser_phone`]).
//! The page makes its Ed25519 key with WebCrypto (not extractable), sends
//! the public key here to be enrolled with the server's `EnrollHandset`,
//! shows each offer live with the shop, register, amount, description and
//! binding code, and signs the exact bytes it is given for Approve or
//! Decline. This backend relays what the page signed; it holds no private
//! key and signs nothing.

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use http::StatusCode;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::{asset, b64, error, json, live, parse_body, snapshot, unb64, WebError, WebServer, MAX_BODY_BYTES};
use crate::domain::approval::key_sha256;
use crate::domain::{Decision, SubscriberNumber, TradeId};
use crate::hex;
use crate::proto::{FailureReason, TradeState};
use crate::terminal_sim::{BrowserPhone, CarrierSim, PhoneOffer, SimError};

const INDEX_HTML: &str = include_str!("../../web/phone/index.html");
const PHONE_JS: &str = include_str!("../../web/phone/phone.js");
const PHONE_CSS: &str = include_str!("../../web/phone/phone.css");

/// One phone the page can be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhoneEntry {
    pub number: SubscriberNumber,
    /// Who holds it and how they pay, e.g. "Aiko · wallet".
    pub label: String,
}

struct Phones {
    sim: Arc<CarrierSim>,
    carrier_name: String,
    phones: Vec<PhoneEntry>,
    stop: watch::Receiver<bool>,
}

impl Phones {
    /// The phone a URL names by its digits (`819000000100` for
    /// `+819000000100`); only the configured phones exist here.
    fn find(&self, digits: &str) -> Option<&PhoneEntry> {
        self.phones.iter().find(|p| p.number.as_str().strip_prefix('+') == Some(digits))
    }
}

/// A running handset page.
pub struct PhoneWeb {
    server: WebServer,
    stop: watch::Sender<bool>,
}

impl PhoneWeb {
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// The page of one phone.
    pub fn phone_url(&self, number: &SubscriberNumber) -> String {
        format!("{}phone/{}", self.server.url(), number.as_str().trim_start_matches('+'))
    }

    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        self.server.shutdown().await;
    }
}

/// Serves the handset page for `phones` (each already hosted by `sim` as
/// a browser phone) on `listener`.
pub fn start(
    listener: TcpListener,
    sim: Arc<CarrierSim>,
    carrier_name: &str,
    phones: Vec<PhoneEntry>,
) -> Result<PhoneWeb, WebError> {
    let (stop, stop_rx) = watch::channel(false);
    let state = Arc::new(Phones { sim, carrier_name: carrier_name.to_owned(), phones, stop: stop_rx });
    let page = || async { asset("text/html; charset=utf-8", INDEX_HTML) };
    let router = Router::new()
        .route("/", get(page))
        .route("/phone/{digits}", get(page))
        .route("/assets/phone.js", get(|| async { asset("text/javascript; charset=utf-8", PHONE_JS) }))
        .route("/assets/phone.css", get(|| async { asset("text/css; charset=utf-8", PHONE_CSS) }))
        .route("/api/phones", get(list))
        .route("/api/phones/{digits}/key", post(enroll))
        .route("/api/phones/{digits}/live", get(screen))
        .route("/api/phones/{digits}/shown", post(shown))
        .route("/api/phones/{digits}/answer", post(answer))
        .merge(super::common_assets())
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state);
    let server = super::serve(listener, router, None)?;
    Ok(PhoneWeb { server, stop })
}

async fn list(State(phones): State<Arc<Phones>>) -> Response {
    let list: Vec<Value> = phones
        .phones
        .iter()
        .map(|p| {
            let enrolled = phones.sim.browser_phone(p.number.as_str()).and_then(|b| b.public_key).is_some();
            json!({
                "number": p.number.as_str(),
                "digits": p.number.as_str().trim_start_matches('+'),
                "label": p.label,
                "enrolled": enrolled,
            })
        })
        .collect();
    json(StatusCode::OK, &json!({ "carrier": phones.carrier_name, "phones": list }))
}

/// A simulator refusal as the page sees it.
fn refused(e: &SimError) -> Response {
    let status = match e {
        SimError::Phone(_)
        | SimError::InvalidKey
        | SimError::InvalidNumber(_)
        | SimError::InvalidShop(_)
        | SimError::Lease(_) => StatusCode::UNPROCESSABLE_ENTITY,
        SimError::UnknownHandset(_) => StatusCode::NOT_FOUND,
        SimError::Busy | SimError::Timeout => StatusCode::SERVICE_UNAVAILABLE,
        SimError::Rpc { .. }
        | SimError::TooManyHandsets { .. }
        | SimError::Entropy
        | SimError::Protocol(_)
        | SimError::NoRuntime
        | SimError::TaskFailed => StatusCode::BAD_GATEWAY,
    };
    error(status, &e.to_string())
}

#[derive(serde::Deserialize)]
struct KeyBody {
    /// The raw 32-byte Ed25519 public key, base64.
    public_key: String,
}

async fn enroll(State(phones): State<Arc<Phones>>, Path(digits): Path<String>, body: Bytes) -> Response {
    let Some(phone) = phones.find(&digits) else {
        return error(StatusCode::NOT_FOUND, "no such phone");
    };
    let body: KeyBody = match parse_body(&body) {
        Ok(b) => b,
        Err(refused) => return refused.into_response(),
    };
    let Some(key) = unb64(&body.public_key) else {
        return error(StatusCode::BAD_REQUEST, "public_key: not base64");
    };
    match phones.sim.enroll_browser_key(phone.number.as_str(), &key).await {
        Ok(digest) => json(StatusCode::OK, &json!({ "key_sha256": hex::encode(&digest) })),
        Err(e) => refused(&e),
    }
}

async fn screen(State(phones): State<Arc<Phones>>, Path(digits): Path<String>) -> Response {
    let Some(phone) = phones.find(&digits).cloned() else {
        return error(StatusCode::NOT_FOUND, "no such phone");
    };
    live(move |tx| async move {
        let mut changes = phones.sim.changes();
        let mut stop = phones.stop.clone();
        let mut last: Option<Value> = None;
        loop {
            changes.borrow_and_update();
            let view = screen_view(&phone, phones.sim.browser_phone(phone.number.as_str()), phones.sim.is_connected());
            if last.as_ref() != Some(&view) {
                if tx.send(snapshot(&view)).await.is_err() {
                    return;
                }
                last = Some(view);
            }
            tokio::select! {
                c = changes.changed() => if c.is_err() { return },
                _ = super::stopped(&mut stop) => return,
                _ = tx.closed() => return,
            }
        }
    })
}

#[derive(serde::Deserialize)]
struct ShownBody {
    trade_id: String,
}

async fn shown(State(phones): State<Arc<Phones>>, Path(digits): Path<String>, body: Bytes) -> Response {
    let Some(phone) = phones.find(&digits) else {
        return error(StatusCode::NOT_FOUND, "no such phone");
    };
    let body: ShownBody = match parse_body(&body) {
        Ok(b) => b,
        Err(refused) => return refused.into_response(),
    };
    let Ok(trade) = TradeId::parse(&body.trade_id) else {
        return error(StatusCode::BAD_REQUEST, "trade_id: not a trade id");
    };
    match phones.sim.browser_show(phone.number.as_str(), trade) {
        Ok(()) => json(StatusCode::OK, &json!({ "shown": true })),
        Err(e) => refused(&e),
    }
}

#[derive(serde::Deserialize)]
struct AnswerBody {
    trade_id: String,
    /// "approve" or "decline".
    decision: String,
    /// The page's Ed25519 signature over the bytes it was given, base64.
    signature: String,
}

async fn answer(State(phones): State<Arc<Phones>>, Path(digits): Path<String>, body: Bytes) -> Response {
    let Some(phone) = phones.find(&digits) else {
        return error(StatusCode::NOT_FOUND, "no such phone");
    };
    let body: AnswerBody = match parse_body(&body) {
        Ok(b) => b,
        Err(refused) => return refused.into_response(),
    };
    let Ok(trade) = TradeId::parse(&body.trade_id) else {
        return error(StatusCode::BAD_REQUEST, "trade_id: not a trade id");
    };
    let decision = match body.decision.as_str() {
        "approve" => Decision::Approve,
        "decline" => Decision::Decline,
        _ => return error(StatusCode::BAD_REQUEST, "decision: \"approve\" or \"decline\""),
    };
    let Some(signature) = unb64(&body.signature) else {
        return error(StatusCode::BAD_REQUEST, "signature: not base64");
    };
    if signature.len() != crate::domain::approval::ED25519_SIGNATURE_LEN {
        return error(StatusCode::BAD_REQUEST, "signature: must be 64 bytes");
    }
    match phones.sim.browser_answer(phone.number.as_str(), trade, decision, signature) {
        Ok(()) => json(StatusCode::OK, &json!({ "sent": true })),
        Err(e) => refused(&e),
    }
}

/// Why an offer left the screen, in the buyer's words.
fn withdrawn_reason(state: TradeState) -> &'static str {
    match state {
        TradeState::Cancelled => "The shop cancelled this payment.",
        TradeState::Expired => "Too late: the payment's deadline passed.",
        TradeState::Settled => "Already paid.",
        TradeState::Declined => "Declined.",
        TradeState::Failed => "The payment failed.",
        TradeState::Pending | TradeState::Offered | TradeState::Unspecified => "Withdrawn by the server.",
    }
}

fn result_text(state: TradeState, reason: FailureReason, accepted: bool, message: &str) -> String {
    let text = match (state, reason) {
        (TradeState::Settled, _) => "Paid. The shop has been told.",
        (TradeState::Declined, _) => "Declined. Nothing was charged.",
        (TradeState::Failed, FailureReason::InsufficientFunds) => {
            "Not enough money in your wallet. Nothing was charged."
        }
        (TradeState::Failed, FailureReason::SpendingCap) => "Over your monthly spending cap. Nothing was charged.",
        (TradeState::Failed, FailureReason::BadSignature) => "The signature did not verify. Nothing was charged.",
        (TradeState::Failed, _) => "The payment failed. Nothing was charged.",
        (TradeState::Expired, _) => "Too late: the deadline had passed.",
        (TradeState::Cancelled, _) => "The shop had already cancelled it.",
        (TradeState::Pending | TradeState::Offered | TradeState::Unspecified, _) => {
            "The server did not take the answer."
        }
    };
    if accepted || message.is_empty() {
        text.to_owned()
    } else {
        format!("{text} ({message})")
    }
}

fn offer_view(o: &PhoneOffer) -> Value {
    let p = &o.offer;
    let status = match (o.answered, &o.result, o.withdrawn) {
        (_, Some(_), _) => "done",
        // Answered, and the trade ended before the verdict reached us (a
        // verdict is not stored, so a reconnect can lose it).
        (Some(_), None, Some(_)) => "done",
        (Some(_), None, None) => "sending",
        (None, None, Some(_)) => "withdrawn",
        (None, None, None) if o.shown => "open",
        (None, None, None) => "new",
    };
    let result = match (&o.result, o.answered, o.withdrawn) {
        (Some(r), _, _) => Some(json!({
            "accepted": r.accepted,
            "state": r.state.short_name(),
            "failure_reason": match r.failure_reason {
                FailureReason::Unspecified => Value::Null,
                other => json!(other.as_str_name().trim_start_matches("FAILURE_REASON_")),
            },
            "text": result_text(r.state, r.failure_reason, r.accepted, &r.message),
        })),
        (None, Some(_), Some(state)) => Some(json!({
            "accepted": false,
            "state": state.short_name(),
            "failure_reason": Value::Null,
            "text": withdrawn_reason(state),
        })),
        (None, _, _) => None,
    };
    let mut view = json!({
        "trade_id": p.trade_id.to_string(),
        "shop_name": p.shop_name,
        "register_label": p.register_label,
        "amount": super::format_amount(p.currency, p.amount),
        "description": p.description,
        "binding_code": p.binding_code,
        "expires_at_ms": p.expires_at.0,
        "status": status,
        "answered": o.answered.map(|d| match d { Decision::Approve => "approve", Decision::Decline => "decline" }),
        "result": result,
        "withdrawn": o.withdrawn.map(TradeState::short_name),
        "withdrawn_reason": o.withdrawn.map(withdrawn_reason),
    });
    if o.is_open() {
        // The exact bytes to sign for each button: the page signs these and
        // nothing else, so it need not know the payload's layout.
        view["sign"] = json!({
            "approve": b64(p.signing_bytes(Decision::Approve)),
            "decline": b64(p.signing_bytes(Decision::Decline)),
        });
    }
    view
}

fn screen_view(entry: &PhoneEntry, phone: Option<BrowserPhone>, connected: bool) -> Value {
    let phone = phone.unwrap_or_default();
    let offers: Vec<Value> = phone.offers.iter().rev().map(offer_view).collect();
    json!({
        "number": entry.number.as_str(),
        "label": entry.label,
        "carrier_connected": connected,
        "key_sha256": phone.public_key.map(|k| hex::encode(&key_sha256(&k))),
        "offers": offers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{
        Amount, ApprovalPayload, BindingCode, Currency, PayloadVersion, RegisterId, ScreenText, ShopId, UnixMs,
    };
    use crate::proto;
    use crate::terminal_sim::ParsedOffer;

    /// An offer as the server sends it, its payloads built here from its
    /// fields (version 2).
    fn offer() -> proto::Offer {
        let mut o = proto::Offer {
            trade_id: TradeId::from_bytes([3; 16]).to_string(),
            subscriber_number: "+818012345678".into(),
            shop_id: "acme-books".into(),
            shop_name: "Acme Books".into(),
            register_id: RegisterId::from_bytes([4; 16]).to_string(),
            register_label: "Front desk".into(),
            amount_minor: 1200,
            currency: "JPY".into(),
            description: "Two books".into(),
            expires_at_ms: 1_700_000_120_000,
            binding_code: "042917".into(),
            payload_version: 2,
            approve_payload: Vec::new(),
            decline_payload: Vec::new(),
        };
        let payload = |decision| {
            ApprovalPayload {
                trade_id: TradeId::from_bytes([3; 16]),
                amount: Amount::new(1200),
                currency: Currency::parse("JPY").expect("known"),
                shop_id: ShopId::parse("acme-books").expect("valid"),
                register_id: RegisterId::from_bytes([4; 16]),
                expires_at: UnixMs(1_700_000_120_000),
                version: PayloadVersion::V2 {
                    binding_code: BindingCode::parse("042917").expect("code"),
                    screen_digest: ScreenText {
                        shop_name: "Acme Books",
                        register_label: "Front desk",
                        description: "Two books",
                    }
                    .digest(),
                },
                decision,
            }
            .to_bytes()
        };
        o.approve_payload = payload(Decision::Approve);
        o.decline_payload = payload(Decision::Decline);
        o
    }

    #[test]
    fn the_page_is_given_exactly_the_bytes_the_offer_carries() {
        let sent = offer();
        let mut phone = BrowserPhone::default();
        phone.receive(ParsedOffer::parse(&sent).expect("valid offer"), 1);
        let view = offer_view(phone.offers.front().expect("kept"));
        assert_eq!(view["sign"]["approve"], json!(b64(&sent.approve_payload)));
        assert_eq!(view["sign"]["decline"], json!(b64(&sent.decline_payload)));
        // Once answered there is nothing left to sign.
        phone.offers.front_mut().expect("kept").answered = Some(Decision::Approve);
        assert!(offer_view(phone.offers.front().expect("kept")).get("sign").is_none());
    }
}
