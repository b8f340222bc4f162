//! The sandbox: a scripted `CarrierService` on its own port that a relay
//! under test connects to as it would to syncpay (plaintext with a bearer
//! token on loopback, or mutual TLS naming `syncpay://carrier/<id>`). It
//! keeps a durable-looking outbox (replayed on every new stream, an offer
//! dropped when its trade ends, acknowledgements deleting entries), one
//! stream per carrier (a newer one ends the older `ABORTED`), answers each
//! handset answer with the verdict the server would give, and logs every
//! message the relay sends, for the steps in `steps.rs` to judge. Requests
//! are validated by the server's own functions (`sync_server::requests`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_core::Stream;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Server;
use tonic::{Request, Response, Status, Streaming};

use crate::carrier::relay::RelayEnd;
use crate::domain::approval::{key_sha256, verify_bytes};
use crate::domain::{
    Amount, ApprovalPayload, CarrierId, Currency, Decision, PayloadVersion, Principal, RegisterId, ScreenText,
    ServerSecret, ShopId, SubscriberNumber, TradeId, TradeState, UnixMs,
};
use crate::identity::principal_from_cert;
use crate::proto::{self, carrier_service_server::CarrierService, carrier_service_server::CarrierServiceServer};
use crate::sync_server::auth::token_hash;
use crate::sync_server::error::{self, ApiError};
use crate::sync_server::handshakes::HandshakeStats;
use crate::sync_server::limits::{Limits, MAX_ECHOED_ID_CHARS};
use crate::sync_server::requests::{self, Uplink};
use crate::sync_server::tls::{self, ReloadableTls, TlsFiles};

/// Messages queued for one relay stream. The script sends a handful per
/// step; a relay that leaves this many unread is not reading at all.
const STREAM_BUFFER: usize = 256;
/// Events kept for the steps to judge; a relay sending more than this is
/// flooding the sandbox, and later events are dropped (and counted).
const MAX_EVENTS: usize = 100_000;
/// Subscribers a relay under test may enroll in one sandbox.
const MAX_SUBSCRIBERS: usize = 100_000;
/// How long `shutdown` waits for open connections before closing them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// How the relay under test proves it is the carrier.
#[derive(Debug, Clone)]
pub enum SandboxAuth {
    /// Plaintext, loopback only: `authorization: Bearer <token>`.
    Token(String),
    /// Mutual TLS: a client certificate naming `syncpay://carrier/<id>`.
    Tls(TlsFiles),
}

/// What the sandbox serves.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// The carrier the relay under test is.
    pub carrier: CarrierId,
    pub auth: SandboxAuth,
}

/// Why a sandbox did not start.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("without TLS the sandbox listens only on loopback, like syncpay (got {0})")]
    PlaintextOffLoopback(SocketAddr),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("the token is empty")]
    EmptyToken,
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
    #[error("the operating system's random generator failed")]
    Entropy,
}

/// What the relay under test did, in order.
#[derive(Debug, Clone)]
pub enum Event {
    /// A relay stream opened (streams are numbered from 1).
    Opened {
        stream: u64,
    },
    /// A relay stream ended, and how.
    Ended {
        stream: u64,
        how: String,
    },
    /// The sandbox put a message on a stream.
    Sent {
        stream: u64,
        delivery_id: u64,
    },
    Ack {
        stream: u64,
        delivery_id: u64,
    },
    /// A handset answer, with the verdict the sandbox sent back.
    Answer {
        stream: u64,
        answer: proto::HandsetAnswer,
        verdict: proto::AnswerResult,
    },
    /// An uplink message without a body.
    Empty {
        stream: u64,
    },
    /// An answer to a resolve request (ask mode), as validated.
    Resolved {
        stream: u64,
        request_id: u64,
        reply: crate::carrier::ResolveReply,
    },
    /// A call refused before it reached the sandbox (credentials).
    Refused {
        why: String,
    },
    /// EnrollHandset of a subscriber.
    Enrolled {
        number: SubscriberNumber,
        key_sha256: [u8; 32],
    },
}

/// One trade the script created.
#[derive(Debug, Clone)]
pub struct SandboxTrade {
    pub payer: SubscriberNumber,
    pub offer: proto::Offer,
    pub offer_delivery: u64,
    pub state: TradeState,
    pub expires_at: UnixMs,
}

/// What a trade's offer shows and binds.
#[derive(Debug, Clone)]
pub struct Terms {
    pub shop_id: &'static str,
    pub shop_name: &'static str,
    pub register_label: &'static str,
    pub amount_minor: u64,
    pub currency: &'static str,
    pub description: &'static str,
}

struct Link {
    id: u64,
    tx: mpsc::Sender<Result<proto::RelayDown, Status>>,
}

/// Everything the sandbox knows; only ever locked inside `update`/`read`.
#[derive(Default)]
pub struct Inner {
    subscribers: HashMap<SubscriberNumber, proto::EnrollSubscriberResponse>,
    keys: HashMap<SubscriberNumber, [u8; 32]>,
    streams: u64,
    current: Option<Link>,
    /// Streams whose uplink is discarded: what the relay sends on them is
    /// "lost in flight" (the script broke them).
    deaf: HashSet<u64>,
    outbox: BTreeMap<u64, proto::RelayDown>,
    trades: HashMap<TradeId, SandboxTrade>,
    issued: HashSet<u64>,
    next_delivery: u64,
    events: Vec<Event>,
    dropped_events: u64,
}

impl Inner {
    pub fn events(&self) -> &[Event] {
        &self.events
    }

    pub fn dropped_events(&self) -> u64 {
        self.dropped_events
    }

    pub fn key(&self, number: &SubscriberNumber) -> Option<[u8; 32]> {
        self.keys.get(number).copied()
    }

    pub fn current_stream(&self) -> Option<u64> {
        self.current.as_ref().map(|l| l.id)
    }

    pub fn trade(&self, id: &TradeId) -> Option<&SandboxTrade> {
        self.trades.get(id)
    }

    /// Whether the sandbox ever sent this delivery id.
    pub fn issued(&self, delivery_id: u64) -> bool {
        self.issued.contains(&delivery_id)
    }

    fn record(&mut self, event: Event) {
        if self.events.len() >= MAX_EVENTS {
            self.dropped_events = self.dropped_events.saturating_add(1);
            return;
        }
        self.events.push(event);
    }

    /// Puts a message on the current stream (if any) and logs it.
    fn send(&mut self, down: proto::RelayDown) -> bool {
        let Some(link) = &self.current else {
            return false;
        };
        let (stream, delivery_id) = (link.id, down.delivery_id);
        if link.tx.try_send(Ok(down)).is_err() {
            // Full (the relay is not reading) or gone: it stays in the
            // outbox, as the server's would.
            return false;
        }
        if delivery_id != 0 {
            self.record(Event::Sent { stream, delivery_id });
        }
        true
    }

    fn next_delivery_id(&mut self) -> u64 {
        // Not consecutive, like the server's (one counter for every
        // carrier): a relay that acks "the next id" is caught.
        self.next_delivery = self.next_delivery.saturating_add(3);
        self.issued.insert(self.next_delivery);
        self.next_delivery
    }

    /// Ends the trade: its offer leaves the outbox.
    fn finish(&mut self, trade: &TradeId, state: TradeState) {
        if let Some(t) = self.trades.get_mut(trade) {
            t.state = state;
            let delivery = t.offer_delivery;
            self.outbox.remove(&delivery);
        }
    }
}

/// The state shared by the gRPC handlers and the script.
pub struct Shared {
    carrier: CarrierId,
    secret: ServerSecret,
    inner: Mutex<Inner>,
    version: watch::Sender<u64>,
}

impl Shared {
    pub fn carrier_id(&self) -> &CarrierId {
        &self.carrier
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn update<R>(&self, change: impl FnOnce(&mut Inner) -> R) -> R {
        let result = change(&mut self.lock());
        self.version.send_modify(|v| *v = v.wrapping_add(1));
        result
    }

    pub fn read<R>(&self, look: impl FnOnce(&Inner) -> R) -> R {
        look(&self.lock())
    }

    /// Waits until `check` finds what it looks for, or `timeout` passes.
    pub async fn wait_for<T>(&self, timeout: Duration, mut check: impl FnMut(&Inner) -> Option<T>) -> Option<T> {
        let mut changes = self.version.subscribe();
        let waiting = async {
            loop {
                changes.borrow_and_update();
                if let Some(found) = self.read(&mut check) {
                    return found;
                }
                // The sender lives in `self`: a failure cannot happen while
                // we borrow it; look again either way.
                let _ = changes.changed().await;
            }
        };
        tokio::time::timeout(timeout, waiting).await.ok()
    }

    /// Creates an open trade for `payer` and queues its offer in the
    /// outbox; sends it on the current stream when `send`. Returns the
    /// trade and its offer's delivery id.
    pub fn offer(&self, payer: &SubscriberNumber, terms: &Terms, ttl: Duration, send: bool) -> (TradeId, u64) {
        let trade = TradeId::generate().unwrap_or_else(|_| TradeId::from_bytes(fallback_id(b"t", self)));
        let register = RegisterId::generate().unwrap_or_else(|_| RegisterId::from_bytes(fallback_id(b"r", self)));
        let now = crate::sync_server::engine::now();
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        let expires_at = now.checked_add_ms(ttl_ms).unwrap_or(UnixMs(u64::MAX));
        let offer = build_offer(trade, register, payer, terms, expires_at, &self.secret);
        self.update(|s| {
            let delivery_id = s.next_delivery_id();
            let down = proto::RelayDown { delivery_id, body: Some(proto::relay_down::Body::Offer(offer.clone())) };
            s.outbox.insert(delivery_id, down.clone());
            s.trades.insert(
                trade,
                SandboxTrade {
                    payer: payer.clone(),
                    offer,
                    offer_delivery: delivery_id,
                    state: TradeState::Pending,
                    expires_at,
                },
            );
            if send {
                s.send(down);
            }
            (trade, delivery_id)
        })
    }

    /// Sends the trade's offer again (the same message, the same delivery
    /// id), whether or not it is still in the outbox: a redelivery, or a
    /// stale copy that a replay still carried.
    pub fn send_offer_again(&self, trade: &TradeId) -> bool {
        self.update(|s| {
            let Some(t) = s.trades.get(trade) else {
                return false;
            };
            let down = proto::RelayDown {
                delivery_id: t.offer_delivery,
                body: Some(proto::relay_down::Body::Offer(t.offer.clone())),
            };
            s.send(down)
        })
    }

    /// Ends an open trade without an answer (cancelled or expired): its
    /// offer leaves the outbox and a withdrawal is queued and sent.
    /// Returns the withdrawal's delivery id.
    pub fn withdraw(&self, trade: &TradeId, state: TradeState) -> Option<u64> {
        self.update(|s| {
            let payer = s.trades.get(trade)?.payer.clone();
            s.finish(trade, state);
            let delivery_id = s.next_delivery_id();
            let down = proto::RelayDown {
                delivery_id,
                body: Some(proto::relay_down::Body::Withdraw(proto::Withdraw {
                    trade_id: trade.to_string(),
                    subscriber_number: payer.as_str().to_owned(),
                    state: proto::TradeState::from(state) as i32,
                })),
            };
            s.outbox.insert(delivery_id, down.clone());
            s.send(down);
            Some(delivery_id)
        })
    }

    /// From now on, what the relay sends on the current stream is lost.
    /// Returns the stream.
    pub fn deafen_current(&self) -> Option<u64> {
        self.update(|s| {
            let id = s.current_stream()?;
            s.deaf.insert(id);
            Some(id)
        })
    }

    /// Ends the current stream with `status`, as the network or a server
    /// restart would; the relay must reconnect.
    pub fn end_current(&self, status: Status) {
        self.update(|s| {
            if let Some(link) = s.current.take() {
                let how = describe(&status);
                let _ = link.tx.try_send(Err(status));
                s.record(Event::Ended { stream: link.id, how: format!("ended by the sandbox: {how}") });
            }
        });
    }

    fn open_stream(&self, tx: mpsc::Sender<Result<proto::RelayDown, Status>>) -> u64 {
        self.update(|s| {
            s.streams = s.streams.saturating_add(1);
            let id = s.streams;
            if let Some(old) = s.current.replace(Link { id, tx }) {
                let _ = old.tx.try_send(Err(error::relay_end(RelayEnd::Replaced)));
                s.record(Event::Ended { stream: old.id, how: "replaced by a newer stream (ABORTED)".into() });
            }
            s.record(Event::Opened { stream: id });
            // The replay: everything unacknowledged, in delivery id order.
            let replay: Vec<proto::RelayDown> = s.outbox.values().cloned().collect();
            for down in replay {
                s.send(down);
            }
            id
        })
    }

    fn stream_ended(&self, stream: u64, how: String) {
        self.update(|s| {
            if s.current.as_ref().is_some_and(|l| l.id == stream) {
                s.current = None;
            }
            s.record(Event::Ended { stream, how });
        });
    }

    /// One message from the relay: logged, and acted on as the server would.
    fn uplink(&self, stream: u64, message: proto::RelayUp) {
        let now = crate::sync_server::engine::now();
        self.update(|s| {
            if s.deaf.contains(&stream) {
                return;
            }
            match requests::relay_up(&message) {
                Ok(Uplink::Ack { delivery_id }) => {
                    s.outbox.remove(&delivery_id);
                    s.record(Event::Ack { stream, delivery_id });
                }
                Ok(Uplink::Answer { trade, decision, signature }) => {
                    let answer = match message.body {
                        Some(proto::relay_up::Body::Answer(a)) => a,
                        _ => proto::HandsetAnswer::default(),
                    };
                    let verdict = verdict(s, &answer.trade_id, trade, decision, &signature, now);
                    s.send(proto::RelayDown {
                        delivery_id: 0,
                        body: Some(proto::relay_down::Body::AnswerResult(verdict.clone())),
                    });
                    s.record(Event::Answer { stream, answer, verdict });
                }
                Ok(Uplink::Resolved { request_id, reply }) => s.record(Event::Resolved { stream, request_id, reply }),
                Err(e) => match message.body {
                    Some(proto::relay_up::Body::Answer(answer)) => {
                        let verdict = proto::AnswerResult {
                            trade_id: answer.trade_id.chars().take(MAX_ECHOED_ID_CHARS).collect(),
                            accepted: false,
                            state: proto::TradeState::Unspecified as i32,
                            failure_reason: proto::FailureReason::Unspecified as i32,
                            message: e.to_string(),
                        };
                        s.send(proto::RelayDown {
                            delivery_id: 0,
                            body: Some(proto::relay_down::Body::AnswerResult(verdict.clone())),
                        });
                        s.record(Event::Answer { stream, answer, verdict });
                    }
                    _ => s.record(Event::Empty { stream }),
                },
            }
        });
    }

    fn refused(&self, why: String) {
        self.update(|s| s.record(Event::Refused { why }));
    }
}

/// What the server would answer to a well-formed answer.
fn verdict(
    s: &mut Inner,
    trade_text: &str,
    trade: TradeId,
    decision: Decision,
    signature: &[u8],
    now: UnixMs,
) -> proto::AnswerResult {
    let result =
        |accepted: bool, state: TradeState, failure: proto::FailureReason, message: String| proto::AnswerResult {
            trade_id: trade_text.to_owned(),
            accepted,
            state: proto::TradeState::from(state) as i32,
            failure_reason: failure as i32,
            message,
        };
    let Some(t) = s.trades.get(&trade) else {
        return proto::AnswerResult {
            trade_id: trade_text.to_owned(),
            accepted: false,
            state: proto::TradeState::Unspecified as i32,
            failure_reason: proto::FailureReason::Unspecified as i32,
            message: "no such trade for this carrier".into(),
        };
    };
    if t.state.is_final() {
        let state = t.state;
        return result(false, state, proto::FailureReason::Unspecified, format!("trade is already {}", state.name()));
    }
    if now >= t.expires_at {
        s.finish(&trade, TradeState::Expired);
        return result(
            false,
            TradeState::Expired,
            proto::FailureReason::Unspecified,
            "the trade expired before the answer arrived".into(),
        );
    }
    let signed = match decision {
        Decision::Approve => &t.offer.approve_payload,
        Decision::Decline => &t.offer.decline_payload,
    };
    let (state, failure) = match s.keys.get(&t.payer) {
        None => (TradeState::Failed, proto::FailureReason::NoHandset),
        Some(key) if !verify_bytes(key, signed, signature) => (TradeState::Failed, proto::FailureReason::BadSignature),
        Some(_) if decision == Decision::Decline => (TradeState::Declined, proto::FailureReason::Unspecified),
        Some(_) => (TradeState::Settled, proto::FailureReason::Unspecified),
    };
    s.finish(&trade, state);
    result(true, state, failure, String::new())
}

fn fallback_id(tag: &[u8], shared: &Shared) -> [u8; 16] {
    // Only if the OS random generator fails: unique within this sandbox.
    let n = shared.read(|s| s.next_delivery);
    let mut id = [0u8; 16];
    id[..tag.len().min(8)].copy_from_slice(&tag[..tag.len().min(8)]);
    id[8..].copy_from_slice(&n.to_be_bytes());
    id
}

/// The offer as the server builds it (`carrier::relay::to_relay_down`):
/// every field, and the exact bytes to sign for each decision.
pub fn build_offer(
    trade: TradeId,
    register: RegisterId,
    payer: &SubscriberNumber,
    terms: &Terms,
    expires_at: UnixMs,
    secret: &ServerSecret,
) -> proto::Offer {
    let binding = secret.binding_code(trade);
    let screen =
        ScreenText { shop_name: terms.shop_name, register_label: terms.register_label, description: terms.description };
    let payload = |decision| {
        let (Ok(shop_id), Ok(currency)) = (ShopId::parse(terms.shop_id), Currency::parse(terms.currency)) else {
            return Vec::new();
        };
        ApprovalPayload {
            trade_id: trade,
            amount: Amount::new(terms.amount_minor),
            currency,
            shop_id,
            register_id: register,
            expires_at,
            version: PayloadVersion::V2 { binding_code: binding, screen_digest: screen.digest() },
            decision,
        }
        .to_bytes()
    };
    proto::Offer {
        trade_id: trade.to_string(),
        subscriber_number: payer.as_str().to_owned(),
        shop_id: terms.shop_id.to_owned(),
        shop_name: terms.shop_name.to_owned(),
        register_id: register.to_string(),
        register_label: terms.register_label.to_owned(),
        amount_minor: terms.amount_minor,
        currency: terms.currency.to_owned(),
        description: terms.description.to_owned(),
        expires_at_ms: i64::try_from(expires_at.0).unwrap_or(i64::MAX),
        binding_code: binding.to_string(),
        payload_version: 2,
        approve_payload: payload(Decision::Approve),
        decline_payload: payload(Decision::Decline),
    }
}

fn describe(status: &Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}

/// A running sandbox. Dropping it does not stop it; call `shutdown`.
pub struct Sandbox {
    addr: SocketAddr,
    tls: bool,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    serve: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl Sandbox {
    /// Serves the sandbox on `listener` (bind `127.0.0.1:0` in tests).
    pub async fn start(listener: TcpListener, config: SandboxConfig) -> Result<Sandbox, SandboxError> {
        let addr = listener.local_addr()?;
        let mut seed = [0u8; 32];
        rand::TryRng::try_fill_bytes(&mut rand::rngs::SysRng, &mut seed).map_err(|_| SandboxError::Entropy)?;
        let (version, _) = watch::channel(0u64);
        let shared = Arc::new(Shared {
            carrier: config.carrier.clone(),
            secret: ServerSecret::from_bytes(seed),
            inner: Mutex::new(Inner::default()),
            version,
        });
        let (stop, stop_rx) = watch::channel(false);
        let mut signal_rx = stop_rx.clone();
        let signal = async move {
            let _ = signal_rx.wait_for(|s| *s).await;
        };
        let service = CarrierServiceServer::new(SandboxService { shared: shared.clone() });
        let (auth, tls) = match &config.auth {
            SandboxAuth::Token(token) => {
                if !addr.ip().is_loopback() {
                    return Err(SandboxError::PlaintextOffLoopback(addr));
                }
                if token.trim().is_empty() {
                    return Err(SandboxError::EmptyToken);
                }
                (Auth::Token(token_hash(token.trim())), None)
            }
            SandboxAuth::Tls(files) => {
                let tls = ReloadableTls::load(files.clone()).map_err(|e| SandboxError::Tls(e.to_string()))?;
                (Auth::Certificate, Some(Arc::new(tls)))
            }
        };
        let interceptor = interceptor(shared.clone(), auth, config.carrier.clone());
        let router = Server::builder().add_service(InterceptedService::new(service, interceptor));
        let serve = match tls.clone() {
            Some(tls) => {
                let incoming = tls::incoming(listener, tls, Arc::new(HandshakeStats::default()), stop_rx);
                tokio::spawn(async move { router.serve_with_incoming_shutdown(incoming, signal).await })
            }
            None => {
                let incoming = TcpListenerStream::new(listener);
                tokio::spawn(async move { router.serve_with_incoming_shutdown(incoming, signal).await })
            }
        };
        Ok(Sandbox { addr, tls: tls.is_some(), shared, stop, serve })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>` or `https://<addr>`, for the relay under test.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    pub fn carrier(&self) -> &CarrierId {
        &self.shared.carrier
    }

    pub(crate) fn shared(&self) -> &Shared {
        &self.shared
    }

    /// Ends the relay stream (UNAVAILABLE, as a server shutting down) and
    /// stops serving.
    pub async fn shutdown(self) {
        self.shared.end_current(error::relay_end(RelayEnd::ShuttingDown));
        let _ = self.stop.send(true);
        let mut serve = self.serve;
        if tokio::time::timeout(SHUTDOWN_GRACE, &mut serve).await.is_err() {
            serve.abort();
        }
    }
}

enum Auth {
    Token([u8; 32]),
    Certificate,
}

/// Admits only the sandbox's carrier, as syncpay's interceptor does.
fn interceptor(
    shared: Arc<Shared>,
    auth: Auth,
    carrier: CarrierId,
) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone {
    let auth = Arc::new(auth);
    move |request: Request<()>| {
        let refusal = match auth.as_ref() {
            Auth::Token(expected) => match request.metadata().get("authorization").map(|v| v.to_str()) {
                None => Some(ApiError::Unauthenticated("missing authorization: Bearer <token>".into())),
                Some(Err(_)) => Some(ApiError::Unauthenticated("authorization is not text".into())),
                Some(Ok(text)) => match text.strip_prefix("Bearer ") {
                    None => Some(ApiError::Unauthenticated("authorization must be 'Bearer <token>'".into())),
                    Some(token) if token_hash(token) == *expected => None,
                    Some(_) => Some(ApiError::Unauthenticated("unknown credential".into())),
                },
            },
            Auth::Certificate => {
                let leaf = request.peer_certs().and_then(|c| c.first().map(|d| d.as_ref().to_vec()));
                match leaf.map(|der| principal_from_cert(&der)) {
                    None => Some(ApiError::Unauthenticated("a client certificate is required".into())),
                    Some(Err(_)) => {
                        Some(ApiError::Unauthenticated("the client certificate names no syncpay party".into()))
                    }
                    Some(Ok(Principal::Carrier(id))) if id == carrier => None,
                    Some(Ok(Principal::Carrier(_))) => {
                        Some(ApiError::Unauthenticated("the client certificate names another carrier".into()))
                    }
                    Some(Ok(Principal::Shop(_) | Principal::Admin)) => {
                        Some(ApiError::PermissionDenied("this service needs a carrier credential"))
                    }
                }
            }
        };
        match refusal {
            None => Ok(request),
            Some(e) => {
                shared.refused(e.to_string());
                Err(error::status(e))
            }
        }
    }
}

struct SandboxService {
    shared: Arc<Shared>,
}

type RelayStream = Pin<Box<dyn Stream<Item = Result<proto::RelayDown, Status>> + Send>>;

#[tonic::async_trait]
impl CarrierService for SandboxService {
    type RelayStream = RelayStream;

    async fn relay(&self, request: Request<Streaming<proto::RelayUp>>) -> Result<Response<Self::RelayStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let stream = self.shared.open_stream(tx);
        let shared = self.shared.clone();
        tokio::spawn(async move {
            let how = loop {
                match inbound.message().await {
                    Ok(Some(message)) => shared.uplink(stream, message),
                    Ok(None) => break "the relay closed its side".to_owned(),
                    Err(status) => break describe(&status),
                }
            };
            shared.stream_ended(stream, how);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx)) as RelayStream))
    }

    async fn enroll_subscriber(
        &self,
        request: Request<proto::EnrollSubscriberRequest>,
    ) -> Result<Response<proto::EnrollSubscriberResponse>, Status> {
        let r = request.into_inner();
        let (number, _) = requests::enroll_subscriber(&r, &Limits::default())?;
        let answer = proto::EnrollSubscriberResponse {
            subscriber_number: number.as_str().to_owned(),
            funding: r.funding,
            bill_currency: r.bill_currency.clone(),
            monthly_cap_minor: r.monthly_cap_minor,
        };
        let stored = self.shared.update(|s| {
            if s.subscribers.len() >= MAX_SUBSCRIBERS && !s.subscribers.contains_key(&number) {
                return false;
            }
            s.subscribers.insert(number, answer.clone());
            true
        });
        if !stored {
            return Err(ApiError::ResourceExhausted(format!(
                "subscribers: the sandbox holds at most {MAX_SUBSCRIBERS}"
            ))
            .into());
        }
        Ok(Response::new(answer))
    }

    async fn enroll_handset(
        &self,
        request: Request<proto::EnrollHandsetRequest>,
    ) -> Result<Response<proto::EnrollHandsetResponse>, Status> {
        let (number, key) = requests::enroll_handset(request.get_ref())?;
        let digest = key_sha256(&key);
        let known = self.shared.update(|s| {
            if !s.subscribers.contains_key(&number) {
                return false;
            }
            s.keys.insert(number.clone(), key);
            s.record(Event::Enrolled { number, key_sha256: digest });
            true
        });
        if !known {
            return Err(error::status(ApiError::NotFound("subscriber")));
        }
        Ok(Response::new(proto::EnrollHandsetResponse { key_sha256: digest.to_vec() }))
    }

    async fn report_leases(
        &self,
        request: Request<proto::ReportLeasesRequest>,
    ) -> Result<Response<proto::ReportLeasesResponse>, Status> {
        // Validated like the server; the sandbox keeps no leases.
        let (starts, stops) = requests::report_leases(request.get_ref())?;
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        Ok(Response::new(proto::ReportLeasesResponse {
            starts_recorded: count(starts.len()),
            stops_recorded: count(stops.len()),
        }))
    }

    async fn set_resolve_mode(
        &self,
        request: Request<proto::SetResolveModeRequest>,
    ) -> Result<Response<proto::SetResolveModeResponse>, Status> {
        // Validated like the server; the sandbox resolves nothing.
        let mode = requests::resolve_mode("mode", request.get_ref().mode)?;
        Ok(Response::new(proto::SetResolveModeResponse {
            mode: crate::sync_server::convert::resolve_mode(mode) as i32,
        }))
    }

    async fn accept_shop(
        &self,
        request: Request<proto::AcceptShopRequest>,
    ) -> Result<Response<proto::AcceptShopResponse>, Status> {
        let shop = requests::shop_acceptance(&request.get_ref().shop_id)?;
        Ok(Response::new(proto::AcceptShopResponse { shop_id: shop.to_string(), accepted: true }))
    }

    async fn revoke_shop(
        &self,
        request: Request<proto::RevokeShopRequest>,
    ) -> Result<Response<proto::AcceptShopResponse>, Status> {
        let shop = requests::shop_acceptance(&request.get_ref().shop_id)?;
        Ok(Response::new(proto::AcceptShopResponse { shop_id: shop.to_string(), accepted: false }))
    }

    async fn get_statement(
        &self,
        request: Request<proto::GetStatementRequest>,
    ) -> Result<Response<proto::Statement>, Status> {
        let (number, month) = requests::carrier_statement(request.get_ref())?;
        let enrolled = self.shared.read(|s| s.subscribers.get(&number).cloned());
        match enrolled {
            // A carrier-billed subscriber's bill: empty, the sandbox
            // settles nothing.
            Some(e) if e.funding == proto::Funding::CarrierBill as i32 => Ok(Response::new(proto::Statement {
                subscriber_number: e.subscriber_number,
                month: month.to_string(),
                currency: e.bill_currency,
                monthly_cap_minor: e.monthly_cap_minor,
                ..Default::default()
            })),
            _ => Err(error::status(ApiError::NotFound("carrier-billed subscriber"))),
        }
    }

    async fn get_remittance_statement(
        &self,
        request: Request<proto::GetRemittanceStatementRequest>,
    ) -> Result<Response<proto::CarrierStatement>, Status> {
        let (month, _, _) = requests::remittance_statement(request.get_ref())?;
        // Validated as syncpay validates it; empty, the sandbox settles
        // nothing.
        Ok(Response::new(proto::CarrierStatement {
            carrier_id: self.shared.carrier_id().to_string(),
            month: month.to_string(),
            ..Default::default()
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Delivery, DeliveryBody, OfferBody};

    #[test]
    fn offers_are_built_exactly_as_the_server_builds_them() {
        let terms = Terms {
            shop_id: "acme",
            shop_name: "Café Zoë",
            register_label: "Caisse n°2",
            amount_minor: 1200,
            currency: "JPY",
            description: "Tea for two ",
        };
        let secret = ServerSecret::from_bytes([9; 32]);
        let (trade, register) = (TradeId::from_bytes([1; 16]), RegisterId::from_bytes([2; 16]));
        let payer = SubscriberNumber::parse("+818012345678").expect("number");
        let ours = build_offer(trade, register, &payer, &terms, UnixMs(1_700_000_000_000), &secret);
        let body = OfferBody {
            trade,
            payer,
            shop: ShopId::parse("acme").expect("shop"),
            shop_name: terms.shop_name.into(),
            register,
            register_label: terms.register_label.into(),
            amount: Amount::new(1200),
            currency: Currency::parse("JPY").expect("jpy"),
            description: terms.description.into(),
            expires_at: UnixMs(1_700_000_000_000),
            binding_code: secret.binding_code(trade).to_string(),
        };
        let carrier = CarrierId::parse("docomo").expect("carrier");
        let server = crate::carrier::relay::to_relay_down(&Delivery {
            delivery_id: 7,
            carrier,
            body: DeliveryBody::Offer(body),
        });
        assert_eq!(server.body, Some(proto::relay_down::Body::Offer(ours)));
    }
}
