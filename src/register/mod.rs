//! The virtual register: the shop-side client library. A shop opens (or
//! attaches to) a register terminal on the server and charges buyers
//! through it; every answer from the server is checked before it is handed
//! on. [`verify_receipt`] checks a settlement's receipt offline.
//!
//! ```no_run
//! # async fn demo(channel: tonic::transport::Channel) -> Result<(), syncpay::register::RegisterError> {
//! use syncpay::register::{ChargeRequest, VirtualRegister};
//! let register = VirtualRegister::open(channel, "shop-token", "Front desk").await?;
//! let trade = register
//!     .charge(ChargeRequest::new("+818012345678", 1200, "JPY", "Two books"))
//!     .await?;
//! # let _ = trade; Ok(()) }
//! ```

mod error;
mod events;
mod receipt;

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;
use tonic::transport::Channel;
use tracing::{debug, instrument};

pub use error::RegisterError;
pub use events::TradeEvents;
pub use receipt::{
    check_dispute, receipt_from_json, receipt_to_json, verify_receipt, verify_trade_receipt, DisputeCheck, KeySetError,
    ReceiptError, ReceiptKeySet, VerifiedReceipt,
};

use crate::client::{with_token, AuthedChannel};
use crate::domain::{RegisterId, TradeId, TradeState};
use crate::proto;
use crate::proto::register_service_client::RegisterServiceClient;

/// How long any single unary call may take before we give up on it; the
/// server answers unary calls after one group commit, far below this.
const UNARY_RPC_TIMEOUT: Duration = Duration::from_secs(30);
/// The server's upper bound for one `AwaitTrade` long poll.
const MAX_AWAIT_WAIT: Duration = Duration::from_secs(60);
/// Extra time a long poll may take beyond its `wait_ms` (network, commit)
/// before we stop waiting for that call and poll again.
const AWAIT_RPC_GRACE: Duration = Duration::from_secs(10);
/// Minimum spacing of long polls, so a server that answers early with an
/// open trade cannot make us spin.
const MIN_POLL_INTERVAL: Duration = Duration::from_millis(100);
/// The longest trade TTL the server allows (SPEC: at most 15 min).
const MAX_TRADE_TTL: Duration = Duration::from_secs(15 * 60);
/// How long after a trade's expiry `charge` keeps waiting for the final
/// state: the server's expiry sweep needs a moment to record `EXPIRED`.
const SETTLE_MARGIN: Duration = Duration::from_secs(15);
/// Nothing can stay open longer than this, so no wait needs to be longer.
const MAX_AWAIT_FINAL: Duration = MAX_TRADE_TTL.saturating_add(SETTLE_MARGIN);

/// A payer named by the connection the shop saw instead of a number (the
/// carrier-billing flow): the client's address and port as the shop's
/// server observed them, and when. The server asks the carrier's lease
/// records who held them; the shop never learns the subscriber.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkPayer {
    pub ip: std::net::IpAddr,
    pub port: u16,
    /// Milliseconds since the Unix epoch (the shop's clock).
    pub observed_at_ms: i64,
}

/// What a shop asks a buyer to pay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChargeRequest {
    /// The payer's E.164 number, e.g. `+818012345678` (unused when
    /// `network_identity` is set).
    pub payer: String,
    /// In the currency's minor units (cents, yen).
    pub amount_minor: u64,
    /// ISO 4217 code, e.g. `JPY`.
    pub currency: String,
    /// Shown on the handset; 0..=140 printable characters.
    pub description: String,
    /// Seconds the buyer has to answer; 0 means the server's default.
    pub ttl_seconds: u32,
    /// Makes `create` safe to retry: the same key and request give back the
    /// original trade.
    pub idempotency_key: Option<String>,
    /// Names the payer by network identity instead of `payer`.
    pub network_identity: Option<NetworkPayer>,
}

impl ChargeRequest {
    /// A request with the server's default TTL and no idempotency key.
    pub fn new(payer: &str, amount_minor: u64, currency: &str, description: &str) -> Self {
        ChargeRequest {
            payer: payer.to_owned(),
            amount_minor,
            currency: currency.to_owned(),
            description: description.to_owned(),
            ttl_seconds: 0,
            idempotency_key: None,
            network_identity: None,
        }
    }

    /// A request whose payer is whoever the carrier's lease records say
    /// held `payer`'s address and port at that moment.
    pub fn by_network_identity(payer: NetworkPayer, amount_minor: u64, currency: &str, description: &str) -> Self {
        ChargeRequest { network_identity: Some(payer), ..ChargeRequest::new("", amount_minor, currency, description) }
    }

    fn to_proto(&self, register_id: RegisterId) -> proto::CreateTradeRequest {
        proto::CreateTradeRequest {
            register_id: register_id.to_string(),
            amount_minor: self.amount_minor,
            currency: self.currency.clone(),
            description: self.description.clone(),
            ttl_seconds: self.ttl_seconds,
            idempotency_key: self.idempotency_key.clone().unwrap_or_default(),
            payer: Some(match &self.network_identity {
                Some(n) => proto::create_trade_request::Payer::NetworkIdentity(proto::NetworkIdentity {
                    ip: n.ip.to_string(),
                    port: u32::from(n.port),
                    observed_at_ms: n.observed_at_ms,
                }),
                None => proto::create_trade_request::Payer::SubscriberNumber(self.payer.clone()),
            }),
        }
    }
}

/// The domain state of a trade as the server reported it; `None` for
/// `UNSPECIFIED` or a value this client does not know.
pub fn trade_state(trade: &proto::Trade) -> Option<TradeState> {
    proto::TradeState::try_from(trade.state).ok()?.to_domain()
}

/// True once the trade is SETTLED, DECLINED, EXPIRED, CANCELLED or FAILED.
pub fn is_final(trade: &proto::Trade) -> bool {
    trade_state(trade).is_some_and(TradeState::is_final)
}

/// A register terminal of one shop on the server. Cheap to share by
/// reference; every call uses its own clone of the channel.
#[derive(Clone)]
pub struct VirtualRegister {
    client: RegisterServiceClient<AuthedChannel>,
    id: RegisterId,
    label: String,
}

/// Leaves the client (and its credential) out.
impl std::fmt::Debug for VirtualRegister {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtualRegister").field("id", &self.id).field("label", &self.label).finish_non_exhaustive()
    }
}

impl VirtualRegister {
    /// Opens a new register for the shop the token names.
    pub async fn open(channel: Channel, token: &str, label: &str) -> Result<Self, RegisterError> {
        let mut client = RegisterServiceClient::new(with_token(channel, token)?);
        let register =
            unary(client.open_register(request(proto::OpenRegisterRequest { label: label.to_owned() }))).await?;
        let id = parse_register_id(&register.register_id)?;
        if !register.open {
            return Err(RegisterError::Protocol(format!("register {id} was opened but is reported closed")));
        }
        debug!(register_id = %id, "register opened");
        Ok(VirtualRegister { client, id, label: register.label })
    }

    /// Attaches to an existing register of the shop the token names (after
    /// a restart, say). Fails with `UnknownRegister` if the shop has none
    /// with that id. A closed register attaches too, for reading its
    /// trades; the server refuses new trades on it.
    pub async fn attach(channel: Channel, token: &str, register_id: RegisterId) -> Result<Self, RegisterError> {
        let mut client = RegisterServiceClient::new(with_token(channel, token)?);
        let list = unary(client.list_registers(request(proto::ListRegistersRequest {}))).await?;
        let wanted = register_id.to_string();
        let register = list
            .registers
            .into_iter()
            .find(|r| r.register_id == wanted)
            .ok_or(RegisterError::UnknownRegister(register_id))?;
        Ok(VirtualRegister { client, id: register_id, label: register.label })
    }

    pub fn id(&self) -> RegisterId {
        self.id
    }

    /// The label buyers see on their handsets.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Charges a buyer: creates the trade, then waits until it is final.
    /// The wait is bounded by the trade's own TTL plus a margin, so an
    /// unanswered trade comes back `EXPIRED`, not as a hang.
    ///
    /// `Ok` carries the trade in whatever final state it reached (check
    /// `state`: DECLINED and FAILED are answers, not errors); `Err` means
    /// no final state could be learned.
    #[instrument(skip_all, fields(register_id = %self.id, trade_id = tracing::field::Empty))]
    pub async fn charge(&self, charge: ChargeRequest) -> Result<proto::Trade, RegisterError> {
        let trade = self.create(charge).await?;
        let trade_id = check_trade(&trade)?;
        tracing::Span::current().record("trade_id", tracing::field::display(trade_id));
        if is_final(&trade) {
            // An idempotent retry of a trade that has already finished.
            return Ok(trade);
        }
        self.await_final(trade_id, ttl_of(&trade).saturating_add(SETTLE_MARGIN)).await
    }

    /// Creates a trade and returns it as stored (PENDING, or as it is now
    /// for an idempotent retry). The offer goes to the handset meanwhile.
    pub async fn create(&self, charge: ChargeRequest) -> Result<proto::Trade, RegisterError> {
        let mut client = self.client.clone();
        let trade = unary(client.create_trade(request(charge.to_proto(self.id)))).await?;
        check_created(&trade, &charge, self.id)?;
        Ok(trade)
    }

    /// Long-polls a trade until it is final or `timeout` passes
    /// (`Err(Timeout)`). Timeouts beyond the longest possible trade life
    /// are cut to it.
    pub async fn await_final(&self, trade_id: TradeId, timeout: Duration) -> Result<proto::Trade, RegisterError> {
        let deadline = Instant::now() + timeout.min(MAX_AWAIT_FINAL);
        loop {
            let started = Instant::now();
            let remaining = deadline.saturating_duration_since(started);
            if remaining.is_zero() {
                return Err(RegisterError::Timeout);
            }
            // wait_ms = 0 would mean the server's default, so never send 0.
            let wait = remaining.min(MAX_AWAIT_WAIT).max(Duration::from_millis(1));
            let wait_ms = u32::try_from(wait.as_millis()).unwrap_or(u32::MAX);
            let mut req = tonic::Request::new(proto::AwaitTradeRequest { trade_id: trade_id.to_string(), wait_ms });
            req.set_timeout(wait + AWAIT_RPC_GRACE);
            let mut client = self.client.clone();
            match tokio::time::timeout(wait + AWAIT_RPC_GRACE, client.await_trade(req)).await {
                // The call outlived its grace; the deadline check decides.
                Err(_elapsed) => continue,
                Ok(Err(status)) => return Err(status.into()),
                Ok(Ok(response)) => {
                    let trade = response.into_inner();
                    check_same_trade(&trade, trade_id)?;
                    if is_final(&trade) {
                        return Ok(trade);
                    }
                }
            }
            tokio::time::sleep_until(started + MIN_POLL_INTERVAL).await;
        }
    }

    /// Reads a trade as it is now.
    pub async fn get(&self, trade_id: TradeId) -> Result<proto::Trade, RegisterError> {
        let mut client = self.client.clone();
        let trade = unary(client.get_trade(request(proto::GetTradeRequest { trade_id: trade_id.to_string() }))).await?;
        check_same_trade(&trade, trade_id)?;
        Ok(trade)
    }

    /// Cancels an open trade; `FailedPrecondition` if it is already final.
    pub async fn cancel(&self, trade_id: TradeId) -> Result<proto::Trade, RegisterError> {
        let mut client = self.client.clone();
        let trade =
            unary(client.cancel_trade(request(proto::CancelTradeRequest { trade_id: trade_id.to_string() }))).await?;
        check_same_trade(&trade, trade_id)?;
        Ok(trade)
    }

    /// Refunds `amount_minor` of a settled trade to its payer. With an
    /// idempotency key a retry returns the original refund.
    pub async fn refund(
        &self,
        trade_id: TradeId,
        amount_minor: u64,
        idempotency_key: Option<&str>,
    ) -> Result<proto::RefundTradeResponse, RegisterError> {
        let mut client = self.client.clone();
        let response = unary(client.refund_trade(request(proto::RefundTradeRequest {
            trade_id: trade_id.to_string(),
            amount_minor,
            idempotency_key: idempotency_key.unwrap_or_default().to_owned(),
        })))
        .await?;
        match &response.trade {
            Some(trade) => check_same_trade(trade, trade_id)?,
            None => return Err(RegisterError::Protocol("refund answered without the trade".into())),
        }
        Ok(response)
    }

    /// Closes the register; the server refuses while trades are open.
    /// The operator's receipt-signing public keys (active and retired), for
    /// [`verify_receipt`]. Keep them: a receipt verifies offline with them.
    pub async fn receipt_keys(&self) -> Result<ReceiptKeySet, RegisterError> {
        let mut client = self.client.clone();
        let keys = unary(client.get_receipt_keys(request(proto::GetReceiptKeysRequest {}))).await?;
        ReceiptKeySet::from_proto(&keys).map_err(|e| RegisterError::Protocol(format!("receipt keys: {e}")))
    }

    pub async fn close(self) -> Result<proto::Register, RegisterError> {
        let mut client = self.client.clone();
        let register =
            unary(client.close_register(request(proto::CloseRegisterRequest { register_id: self.id.to_string() })))
                .await?;
        if register.register_id != self.id.to_string() || register.open {
            return Err(RegisterError::Protocol(format!(
                "closing {} answered with register {} (open: {})",
                self.id, register.register_id, register.open
            )));
        }
        Ok(register)
    }

    /// This register's trade events after `after_sequence` (0: from the
    /// beginning), durable and in order; see [`TradeEvents`].
    pub async fn watch(&self, after_sequence: u64) -> Result<TradeEvents, RegisterError> {
        let mut client = self.client.clone();
        let register_id = self.id.to_string();
        let opened = tokio::time::timeout(
            UNARY_RPC_TIMEOUT,
            client.watch_trades(proto::WatchTradesRequest { after_sequence, register_id: register_id.clone() }),
        )
        .await;
        match opened {
            Err(_elapsed) => Err(RegisterError::Timeout),
            Ok(Err(status)) => Err(status.into()),
            Ok(Ok(response)) => Ok(TradeEvents::new(response.into_inner(), register_id, after_sequence)),
        }
    }
}

fn request<T>(message: T) -> tonic::Request<T> {
    crate::client::request_with_timeout(message, UNARY_RPC_TIMEOUT)
}

/// Runs one unary call under `UNARY_RPC_TIMEOUT`, whether or not the server
/// honours the `grpc-timeout` it was sent.
async fn unary<T>(call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>) -> Result<T, RegisterError> {
    match crate::client::call_with_timeout(UNARY_RPC_TIMEOUT, call).await {
        Ok(v) => Ok(v),
        Err(crate::client::CallError::Timeout) => Err(RegisterError::Timeout),
        Err(crate::client::CallError::Status(status)) => Err(status.into()),
    }
}

fn parse_register_id(text: &str) -> Result<RegisterId, RegisterError> {
    RegisterId::parse(text).map_err(|e| RegisterError::Protocol(format!("register_id {text:?}: {e}")))
}

/// The trade's id, after checking it and the state are well formed.
fn check_trade(trade: &proto::Trade) -> Result<TradeId, RegisterError> {
    let id = TradeId::parse(&trade.trade_id)
        .map_err(|e| RegisterError::Protocol(format!("trade_id {:?}: {e}", trade.trade_id)))?;
    if trade_state(trade).is_none() {
        return Err(RegisterError::Protocol(format!("trade {id} has unknown state {}", trade.state)));
    }
    Ok(id)
}

fn check_same_trade(trade: &proto::Trade, asked: TradeId) -> Result<(), RegisterError> {
    let got = check_trade(trade)?;
    if got != asked {
        return Err(RegisterError::Protocol(format!("asked for trade {asked}, got {got}")));
    }
    Ok(())
}

/// A created trade must be ours and carry exactly what we asked for.
fn check_created(trade: &proto::Trade, asked: &ChargeRequest, register_id: RegisterId) -> Result<(), RegisterError> {
    let id = check_trade(trade)?;
    let breach = |what: &str, got: &dyn std::fmt::Display, want: &dyn std::fmt::Display| {
        Err(RegisterError::Protocol(format!("created trade {id} has {what} {got}, asked for {want}")))
    };
    if trade.register_id != register_id.to_string() {
        return breach("register", &trade.register_id, &register_id);
    }
    if trade.amount_minor != asked.amount_minor {
        return breach("amount_minor", &trade.amount_minor, &asked.amount_minor);
    }
    if trade.currency != asked.currency {
        return breach("currency", &trade.currency, &asked.currency);
    }
    Ok(())
}

/// The TTL the server gave the trade, measured on the server's own clock
/// (expiry minus creation), so client clock skew does not matter.
fn ttl_of(trade: &proto::Trade) -> Duration {
    let ms = trade.expires_at_ms.saturating_sub(trade.created_at_ms);
    u64::try_from(ms).map(Duration::from_millis).unwrap_or(Duration::ZERO).min(MAX_TRADE_TTL)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trade(id: TradeId, register: RegisterId, state: proto::TradeState) -> proto::Trade {
        proto::Trade {
            trade_id: id.to_string(),
            register_id: register.to_string(),
            amount_minor: 1200,
            currency: "JPY".to_owned(),
            state: state as i32,
            created_at_ms: 1_000,
            expires_at_ms: 121_000,
            ..proto::Trade::default()
        }
    }

    fn ids() -> (TradeId, RegisterId) {
        (TradeId::generate().expect("entropy"), RegisterId::generate().expect("entropy"))
    }

    #[test]
    fn final_states_are_exactly_the_five() {
        let (t, r) = ids();
        let check = |state: proto::TradeState, expect: bool| {
            assert_eq!(is_final(&trade(t, r, state)), expect, "{state:?}");
        };
        check(proto::TradeState::Unspecified, false);
        check(proto::TradeState::Pending, false);
        check(proto::TradeState::Offered, false);
        check(proto::TradeState::Settled, true);
        check(proto::TradeState::Declined, true);
        check(proto::TradeState::Expired, true);
        check(proto::TradeState::Cancelled, true);
        check(proto::TradeState::Failed, true);
        let mut unknown = trade(t, r, proto::TradeState::Settled);
        unknown.state = 99;
        assert!(!is_final(&unknown));
        assert!(check_trade(&unknown).is_err());
    }

    #[test]
    fn a_created_trade_must_match_the_request() {
        let (t, r) = ids();
        let asked = ChargeRequest::new("+818012345678", 1200, "JPY", "books");
        let good = trade(t, r, proto::TradeState::Pending);
        assert_eq!(check_created(&good, &asked, r), Ok(()));

        let other_register = RegisterId::generate().expect("entropy");
        assert!(check_created(&good, &asked, other_register).is_err());
        let bad_amount = proto::Trade { amount_minor: 1201, ..good.clone() };
        assert!(check_created(&bad_amount, &asked, r).is_err());
        let bad_currency = proto::Trade { currency: "USD".to_owned(), ..good.clone() };
        assert!(check_created(&bad_currency, &asked, r).is_err());
        let bad_id = proto::Trade { trade_id: "trd_nope".to_owned(), ..good.clone() };
        assert!(check_created(&bad_id, &asked, r).is_err());
        assert!(check_same_trade(&good, TradeId::generate().expect("entropy")).is_err());
        assert_eq!(check_same_trade(&good, t), Ok(()));
    }

    #[test]
    fn the_request_carries_every_field() {
        let r = RegisterId::generate().expect("entropy");
        let mut asked = ChargeRequest::new("+818012345678", 1200, "JPY", "books");
        assert_eq!(asked.to_proto(r).idempotency_key, "");
        asked.idempotency_key = Some("order-17".to_owned());
        asked.ttl_seconds = 30;
        let p = asked.to_proto(r);
        assert_eq!(p.register_id, r.to_string());
        assert_eq!((p.amount_minor, p.currency.as_str()), (1200, "JPY"));
        assert_eq!((p.ttl_seconds, p.idempotency_key.as_str()), (30, "order-17"));
        assert_eq!(p.payer, Some(proto::create_trade_request::Payer::SubscriberNumber("+818012345678".to_owned())));
        let by_network = ChargeRequest::by_network_identity(
            NetworkPayer { ip: "198.51.100.7".parse().expect("ip"), port: 1500, observed_at_ms: 42 },
            1200,
            "JPY",
            "books",
        );
        assert_eq!(
            by_network.to_proto(r).payer,
            Some(proto::create_trade_request::Payer::NetworkIdentity(proto::NetworkIdentity {
                ip: "198.51.100.7".to_owned(),
                port: 1500,
                observed_at_ms: 42,
            }))
        );
    }

    #[test]
    fn ttl_is_measured_on_the_server_clock_and_bounded() {
        let (t, r) = ids();
        let base = trade(t, r, proto::TradeState::Pending);
        assert_eq!(ttl_of(&base), Duration::from_secs(120));
        let backwards = proto::Trade { expires_at_ms: 0, ..base.clone() };
        assert_eq!(ttl_of(&backwards), Duration::ZERO);
        let huge = proto::Trade { created_at_ms: i64::MIN, expires_at_ms: i64::MAX, ..base };
        assert_eq!(ttl_of(&huge), MAX_TRADE_TTL);
    }
}
