//! Persisted records and their versioned encoding: one version byte, then
//! postcard. A record of an unknown version or a malformed body is reported
//! as corruption, never a panic.

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::domain::{
    AccountName, Amount, Balance, CarrierId, Currency, Decision, FailureReason, IpKey, IpPrefix, PortRange, RegisterId,
    ShopId, Side, SubscriberNumber, TradeId, TradeState, UnixMs,
};

use super::StoreError;

/// Bumped when any record layout changes; old versions get a migration.
pub const RECORD_VERSION: u8 = 1;

pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    let mut out = vec![RECORD_VERSION];
    let body = postcard::to_stdvec(value).map_err(|e| StoreError::Corrupt(format!("encode: {e}")))?;
    out.extend_from_slice(&body);
    Ok(out)
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    match bytes.split_first() {
        Some((&RECORD_VERSION, body)) => {
            postcard::from_bytes(body).map_err(|e| StoreError::Corrupt(format!("decode: {e}")))
        }
        Some((v, _)) => Err(StoreError::Corrupt(format!("unknown record version {v}"))),
        None => Err(StoreError::Corrupt("empty record".into())),
    }
}

/// Who a credential belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Principal {
    Admin,
    Shop(ShopId),
    Carrier(CarrierId),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShopRecord {
    pub id: ShopId,
    pub display_name: String,
    /// The next per-shop event sequence number (starts at 1).
    pub next_event_seq: u64,
    pub created_at: UnixMs,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CarrierRecord {
    pub id: CarrierId,
    pub display_name: String,
    pub created_at: UnixMs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Funding {
    Wallet,
    /// Direct carrier billing within a monthly cap in one currency.
    /// (Appended after `Wallet`: postcard numbers variants, so records
    /// written before it still decode.)
    CarrierBill {
        currency: Currency,
        monthly_cap: Amount,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SubscriberRecord {
    pub number: SubscriberNumber,
    pub carrier: CarrierId,
    pub funding: Funding,
    pub enrolled_at: UnixMs,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HandsetRecord {
    pub number: SubscriberNumber,
    pub public_key: [u8; 32],
    pub enrolled_at: UnixMs,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegisterRecord {
    pub id: RegisterId,
    pub shop: ShopId,
    pub label: String,
    pub open: bool,
    pub opened_at: UnixMs,
    pub closed_at: Option<UnixMs>,
    /// Trades of this register in PENDING or OFFERED.
    pub open_trades: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccountRecord {
    pub name: AccountName,
    pub balance: Balance,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PostingKind {
    TopUp,
    Settlement,
    Refund,
}

impl PostingKind {
    pub fn name(self) -> &'static str {
        match self {
            PostingKind::TopUp => "TOP_UP",
            PostingKind::Settlement => "SETTLEMENT",
            PostingKind::Refund => "REFUND",
        }
    }
}

/// One leg of a posting set; immutable once written.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PostingRecord {
    pub posting_id: u64,
    pub set_id: u64,
    pub account: AccountName,
    pub side: Side,
    pub amount: Amount,
    pub trade: Option<TradeId>,
    pub kind: PostingKind,
    pub at: UnixMs,
}

/// The handset's signed approval, kept with a settled trade.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    pub signed_payload: Vec<u8>,
    pub signature: Vec<u8>,
    pub shop_key_fingerprint: [u8; 32],
}

/// What the shop asked for, kept to compare idempotent retries field by
/// field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TradeRequest {
    pub register: RegisterId,
    pub payer: SubscriberNumber,
    pub amount: Amount,
    pub currency: Currency,
    pub description: String,
    pub ttl_ms: u64,
}

impl TradeRequest {
    /// The first field in which `other` differs, for the conflict message.
    pub fn first_difference(&self, other: &TradeRequest) -> Option<&'static str> {
        if self.register != other.register {
            Some("register_id")
        } else if self.payer != other.payer {
            Some("subscriber_number")
        } else {
            common_difference(
                (self.amount, self.currency, &self.description, self.ttl_ms),
                (other.amount, other.currency, &other.description, other.ttl_ms),
            )
        }
    }
}

/// The fields every kind of trade request has, compared in the order a
/// conflict message names them: amount, currency, description, ttl.
fn common_difference(a: (Amount, Currency, &str, u64), b: (Amount, Currency, &str, u64)) -> Option<&'static str> {
    if a.0 != b.0 {
        Some("amount_minor")
    } else if a.1 != b.1 {
        Some("currency")
    } else if a.2 != b.2 {
        Some("description")
    } else if a.3 != b.3 {
        Some("ttl_seconds")
    } else {
        None
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TradeRecord {
    pub id: TradeId,
    pub shop: ShopId,
    pub carrier: Option<CarrierId>,
    pub request: TradeRequest,
    pub state: TradeState,
    pub failure: Option<FailureReason>,
    pub binding_code: String,
    pub created_at: UnixMs,
    pub expires_at: UnixMs,
    pub finished_at: Option<UnixMs>,
    pub decision: Option<Decision>,
    pub receipt: Option<Receipt>,
    pub idempotency_key: Option<String>,
    /// The outbox entry of the offer while it is unacknowledged.
    pub offer_delivery: Option<u64>,
    /// Sum of refunds; never above the amount.
    pub refunded: Amount,
}

/// One durable state change, numbered per shop.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventRecord {
    pub seq: u64,
    pub at: UnixMs,
    pub kind: EventKind,
    pub trade: TradeRecord,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    StateChanged,
    Refunded { amount: Amount, refund_id: u64 },
}

/// An offer as the handset shows it; a snapshot taken at commit time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OfferBody {
    pub trade: TradeId,
    pub payer: SubscriberNumber,
    pub shop: ShopId,
    pub shop_name: String,
    pub register: RegisterId,
    pub register_label: String,
    pub amount: Amount,
    pub currency: Currency,
    pub description: String,
    pub expires_at: UnixMs,
    pub binding_code: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeliveryBody {
    Offer(OfferBody),
    Withdraw { trade: TradeId, payer: SubscriberNumber, state: TradeState },
}

/// Work for a carrier, written in the same commit as the change that
/// caused it and deleted when the carrier acknowledges it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    pub delivery_id: u64,
    pub carrier: CarrierId,
    pub body: DeliveryBody,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum IdempotencyRecord {
    /// A CreateTrade key: the trade it made and the request, to compare.
    Trade { trade: TradeId, request: TradeRequest },
    /// A RefundTrade key: the refund it made.
    Refund { trade: TradeId, amount: Amount, refund_id: u64 },
    /// A CreateTrade key whose payer was a network identity: the request
    /// as the shop sent it (never the resolved subscriber, so a retry's
    /// conflict message cannot reveal who was resolved).
    NetworkTrade { trade: TradeId, request: NetworkTradeRequest },
}

/// A payer named by network identity, as validated at the edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkIdentity {
    pub ip: IpKey,
    /// `None` when the shop saw no port.
    pub port: Option<u16>,
    pub observed_at: UnixMs,
}

/// A CreateTrade whose payer is a network identity, kept to compare
/// idempotent retries field by field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkTradeRequest {
    pub register: RegisterId,
    pub identity: NetworkIdentity,
    pub amount: Amount,
    pub currency: Currency,
    pub description: String,
    pub ttl_ms: u64,
}

impl NetworkTradeRequest {
    /// The first field in which `other` differs, for the conflict message.
    pub fn first_difference(&self, other: &NetworkTradeRequest) -> Option<&'static str> {
        if self.register != other.register {
            Some("register_id")
        } else if self.identity.ip != other.identity.ip {
            Some("network_identity.ip")
        } else if self.identity.port != other.identity.port {
            Some("network_identity.port")
        } else if self.identity.observed_at != other.identity.observed_at {
            Some("network_identity.observed_at_ms")
        } else {
            common_difference(
                (self.amount, self.currency, &self.description, self.ttl_ms),
                (other.amount, other.currency, &other.description, other.ttl_ms),
            )
        }
    }
}

/// One of a carrier's IP prefixes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PrefixRecord {
    pub carrier: CarrierId,
    pub prefix: IpPrefix,
}

/// A carrier's billing terms.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct CarrierTerms {
    /// Fee on carrier-billed charges in basis points (0..=10 000).
    pub fee_bps: u32,
}

/// What a lease record says from its instant on, for its port range.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeaseMark {
    /// The subscriber holds the address (port range) from here.
    Start { carrier: CarrierId, subscriber: SubscriberNumber },
    /// Nobody holds it from here.
    Stop { carrier: CarrierId },
}

/// One lease start or stop. The key holds address, instant, first port and
/// kind; the value the rest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    pub ports: PortRange,
    pub mark: LeaseMark,
}

/// A subscriber's cap use in one month and currency. `cap` is the cap in
/// force at the last change, so lowering a cap later does not make an
/// earlier month look violated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapUsage {
    pub cap: Amount,
    /// Charges settled in the month minus refunds of those charges.
    pub used: Amount,
}

/// One charge on a carrier bill, filed under the month it settled in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BillLine {
    pub trade: TradeId,
    pub set_id: u64,
    pub shop: ShopId,
    pub shop_name: String,
    pub amount: Amount,
    pub currency: Currency,
    pub fee: Amount,
    pub fee_bps: u32,
    pub settled_at: UnixMs,
    pub refunded: Amount,
}

/// What moved on a shop's payable account, for payout reports; written in
/// the same commit as the postings it describes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PayoutEntry {
    /// `carrier` is the billing carrier; `None` for a wallet payment.
    Settlement {
        trade: TradeId,
        carrier: Option<CarrierId>,
        currency: Currency,
        gross: Amount,
        fee: Amount,
    },
    Refund {
        trade: TradeId,
        carrier: Option<CarrierId>,
        currency: Currency,
        amount: Amount,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_reject_unknown_versions() {
        let rec = CarrierRecord {
            id: CarrierId::parse("docomo").expect("valid"),
            display_name: "Docomo".into(),
            created_at: UnixMs(5),
        };
        let bytes = encode(&rec).expect("encode");
        let back: CarrierRecord = decode(&bytes).expect("decode");
        assert_eq!(back.id, rec.id);
        let mut wrong = bytes.clone();
        wrong[0] = 9;
        assert!(matches!(decode::<CarrierRecord>(&wrong), Err(StoreError::Corrupt(_))));
        assert!(matches!(decode::<CarrierRecord>(&[]), Err(StoreError::Corrupt(_))));
        assert!(matches!(decode::<CarrierRecord>(&bytes[..3]), Err(StoreError::Corrupt(_))));
    }
}
