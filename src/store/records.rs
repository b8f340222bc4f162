//! The records the engine sees, the same for every backend: shops,
//! carriers, subscribers, registers, accounts and postings, trades and
//! their events, outbox deliveries, bills and payout entries. How a
//! backend stores them is its own affair (the sled backend's encoding is
//! `store::sled::codec`); the serde derives give it a layout to start from.

use serde::{Deserialize, Serialize};

use crate::domain::approval::ApprovalPayload;
use crate::domain::{
    AccountName, Amount, Balance, CarrierId, Currency, Decision, FailureReason, IpKey, RegisterId, ShopId, Side,
    SubscriberNumber, TradeId, TradeState, UnixMs,
};

use super::refusals::{Difference, PayerKind, TradeField};

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

/// What the shop asked for. `P` is how the payer is named: as the shop
/// sent it ([`PayerRef`]), which is what an idempotent retry is compared
/// with, or the subscriber it resolved to (the default), which is what a
/// trade keeps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TradeRequest<P = SubscriberNumber> {
    pub register: RegisterId,
    pub payer: P,
    pub amount: Amount,
    pub currency: Currency,
    pub description: String,
    pub ttl_ms: u64,
}

/// How a shop names its payer: by number, or by the network identity it
/// observed (resolved by the store through the carrier's leases).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PayerRef {
    Number(SubscriberNumber),
    Network(NetworkIdentity),
}

impl<P> TradeRequest<P> {
    /// The same request with the payer named another way.
    pub fn with_payer<Q>(&self, payer: Q) -> TradeRequest<Q> {
        TradeRequest {
            register: self.register,
            payer,
            amount: self.amount,
            currency: self.currency,
            description: self.description.clone(),
            ttl_ms: self.ttl_ms,
        }
    }

    pub fn map_payer<Q>(self, f: impl FnOnce(P) -> Q) -> TradeRequest<Q> {
        TradeRequest {
            register: self.register,
            payer: f(self.payer),
            amount: self.amount,
            currency: self.currency,
            description: self.description,
            ttl_ms: self.ttl_ms,
        }
    }
}

impl TradeRequest<PayerRef> {
    /// Where a retry under the same idempotency key first differs from this
    /// request, in the order a conflict names it: how the payer is named
    /// (before anything else), the register, the payer, then amount,
    /// currency, description and time to live.
    pub fn first_difference(&self, retry: &TradeRequest<PayerRef>) -> Option<Difference> {
        let field = |f| Some(Difference::Field(f));
        match (&self.payer, &retry.payer) {
            (PayerRef::Number(_), PayerRef::Network(_)) => {
                return Some(Difference::PayerKind { sent: PayerKind::NetworkIdentity })
            }
            (PayerRef::Network(_), PayerRef::Number(_)) => {
                return Some(Difference::PayerKind { sent: PayerKind::Number })
            }
            _ => {}
        }
        if self.register != retry.register {
            return field(TradeField::Register);
        }
        match (&self.payer, &retry.payer) {
            (PayerRef::Number(a), PayerRef::Number(b)) if a != b => return field(TradeField::SubscriberNumber),
            (PayerRef::Network(a), PayerRef::Network(b)) => {
                if a.ip != b.ip {
                    return field(TradeField::NetworkIp);
                }
                if a.port != b.port {
                    return field(TradeField::NetworkPort);
                }
                if a.observed_at != b.observed_at {
                    return field(TradeField::NetworkObservedAt);
                }
            }
            _ => {}
        }
        if self.amount != retry.amount {
            field(TradeField::Amount)
        } else if self.currency != retry.currency {
            field(TradeField::Currency)
        } else if self.description != retry.description {
            field(TradeField::Description)
        } else if self.ttl_ms != retry.ttl_ms {
            field(TradeField::Ttl)
        } else {
            None
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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

impl TradeRecord {
    /// The bytes a handset signs to answer this trade with `decision`.
    pub fn signed_bytes(&self, decision: Decision) -> Vec<u8> {
        ApprovalPayload {
            trade_id: self.id,
            amount: self.request.amount,
            currency: self.request.currency,
            shop_id: &self.shop,
            register_id: self.request.register,
            expires_at: self.expires_at,
            decision,
        }
        .to_bytes()
    }
}

/// One durable state change, numbered per shop. `trade` is the trade as it
/// was right after the change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    pub seq: u64,
    pub at: UnixMs,
    pub kind: EventKind,
    pub trade: TradeRecord,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    StateChanged,
    /// `refund_id` is the refund's posting set id. Events stored before
    /// [`EVENT_VERSION`] 3 hold the set's first posting id there instead;
    /// the store reads them back as the set id.
    Refunded {
        amount: Amount,
        refund_id: u64,
    },
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

/// A payer named by network identity, as validated at the edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkIdentity {
    pub ip: IpKey,
    /// `None` when the shop saw no port.
    pub port: Option<u16>,
    pub observed_at: UnixMs,
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
