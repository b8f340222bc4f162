//! The records the engine sees, the same for every backend: shops,
//! carriers, subscribers, registers, accounts and postings, trades and
//! their events, outbox deliveries, bills and payout entries. How a
//! backend stores them is its own affair (the sled backend's encoding is
//! `store::sled::codec`); the serde derives give it a layout to start from.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::domain::approval::{ApprovalPayload, BindingCode, PayloadVersion, ScreenText};
use crate::domain::receipt::ReceiptKeyId;
use crate::domain::{
    AccountName, Amount, Balance, CarrierId, Currency, Decision, FailureReason, IpKey, Month, RegisterId, ShopId, Side,
    SubscriberNumber, TradeId, TradeState, UnixMs,
};

use super::refusals::{Difference, Failure, PayerKind, TradeField};

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
    /// A shop payout (appended: postcard numbers variants).
    Payout,
    /// A carrier's remittance of a month's carrier-billed sales to a shop
    /// (appended, as `Payout`).
    Remittance,
}

impl PostingKind {
    pub fn name(self) -> &'static str {
        match self {
            PostingKind::TopUp => "TOP_UP",
            PostingKind::Settlement => "SETTLEMENT",
            PostingKind::Refund => "REFUND",
            PostingKind::Payout => "PAYOUT",
            PostingKind::Remittance => "REMITTANCE",
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

/// A 64-byte signature, stored as 64 bytes (serde derives stop at 32).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Sig64(pub [u8; 64]);

impl std::fmt::Debug for Sig64 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sig64({:02x}{:02x}{:02x}{:02x}…)", self.0[0], self.0[1], self.0[2], self.0[3])
    }
}

impl Serialize for Sig64 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        let mut t = s.serialize_tuple(64)?;
        for b in &self.0 {
            t.serialize_element(b)?;
        }
        t.end()
    }
}

impl<'de> Deserialize<'de> for Sig64 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Sig64, D::Error> {
        struct Bytes64;
        impl<'de> serde::de::Visitor<'de> for Bytes64 {
            type Value = Sig64;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("64 bytes")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Sig64, A::Error> {
                let mut out = [0u8; 64];
                for (i, slot) in out.iter_mut().enumerate() {
                    *slot = seq.next_element()?.ok_or_else(|| serde::de::Error::invalid_length(i, &self))?;
                }
                Ok(Sig64(out))
            }
        }
        d.deserialize_tuple(64, Bytes64)
    }
}

/// The proof kept with a settled trade.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Receipt {
    /// Settled by a server before receipts were countersigned: the handset's
    /// signed bytes kept verbatim, the per-shop key fingerprint of the time,
    /// no operator signature (so no shop can verify it offline).
    Legacy { signed_payload: Vec<u8>, signature: Vec<u8>, shop_key_fingerprint: [u8; 32] },
    /// The handset's signature over the trade's approval payload (rebuilt
    /// from the trade's fields, which never change: [`TradeRecord::approval_payload`]),
    /// the handset key that made it (for disputes only; never shown to the
    /// shop, which sees a per-trade commitment to it) and the operator's
    /// countersignature over the statement (`domain::receipt::Statement`)
    /// with the key `key_id` at the trade's `finished_at`.
    Countersigned { signature: Sig64, handset_key: [u8; 32], key_id: ReceiptKeyId, countersignature: Sig64 },
}

/// What a trade's handset signs besides the trade's own fields, frozen
/// when the trade is created so an answer is checked against exactly what
/// was offered, whatever changes later (a shop's display name, say).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SignedTerms {
    /// A trade created by a server before payload version 2: it is offered
    /// and verified as version 1 (only such trades are).
    V1,
    /// Payload version 2: the digest of the screen text as offered (the
    /// binding code is the trade's `binding_code`).
    V2 { screen_digest: [u8; 32] },
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
    /// What the approval payload binds beyond the fields above.
    pub terms: SignedTerms,
}

impl TradeRecord {
    /// The approval payload of this trade for `decision`, in the version
    /// the trade was offered with. Built from fields fixed at creation, so
    /// it is the same at offer, answer and every later read.
    pub fn approval_payload(&self, decision: Decision) -> Result<ApprovalPayload, Failure> {
        let version = match self.terms {
            SignedTerms::V1 => PayloadVersion::V1,
            SignedTerms::V2 { screen_digest } => PayloadVersion::V2 {
                binding_code: BindingCode::parse(&self.binding_code)
                    .ok_or_else(|| Failure::Corrupt(format!("trade {}: malformed binding code", self.id)))?,
                screen_digest,
            },
        };
        Ok(ApprovalPayload {
            trade_id: self.id,
            amount: self.request.amount,
            currency: self.request.currency,
            shop_id: self.shop.clone(),
            register_id: self.request.register,
            expires_at: self.expires_at,
            version,
            decision,
        })
    }

    /// The bytes a handset signs to answer this trade with `decision`.
    pub fn signed_bytes(&self, decision: Decision) -> Result<Vec<u8>, Failure> {
        Ok(self.approval_payload(decision)?.to_bytes())
    }
}

/// One durable state change, numbered per shop. `trade` is the trade as it
/// was right after the change.
#[derive(Debug, Clone, PartialEq, Eq)]
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

impl OfferBody {
    /// What the handset shows besides amount, currency and binding code.
    pub fn screen(&self) -> ScreenText<'_> {
        ScreenText { shop_name: &self.shop_name, register_label: &self.register_label, description: &self.description }
    }

    /// The payload of this offer for `decision` in `version` (1 or 2);
    /// `None` when the stored binding code is malformed.
    pub fn approval_payload(&self, version: u8, decision: Decision) -> Option<ApprovalPayload> {
        let version = match version {
            1 => PayloadVersion::V1,
            _ => PayloadVersion::V2 {
                binding_code: BindingCode::parse(&self.binding_code)?,
                screen_digest: self.screen().digest(),
            },
        };
        Some(ApprovalPayload {
            trade_id: self.trade,
            amount: self.amount,
            currency: self.currency,
            shop_id: self.shop.clone(),
            register_id: self.register,
            expires_at: self.expires_at,
            version,
            decision,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeliveryBody {
    /// An offer of a trade created before payload version 2, as earlier
    /// servers stored it; sent as version 1.
    OfferV1(OfferBody),
    Withdraw {
        trade: TradeId,
        payer: SubscriberNumber,
        state: TradeState,
    },
    /// An offer signed as payload version 2. (Appended: postcard numbers
    /// variants, so deliveries stored before it still decode.)
    Offer(OfferBody),
}

impl DeliveryBody {
    /// The offer and its payload version, if this is an offer.
    pub fn offer(&self) -> Option<(&OfferBody, u8)> {
        match self {
            DeliveryBody::OfferV1(o) => Some((o, 1)),
            DeliveryBody::Offer(o) => Some((o, 2)),
            DeliveryBody::Withdraw { .. } => None,
        }
    }
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
    /// Money paid out of the shop's payable balance to its bank
    /// (appended: postcard numbers variants, so older entries decode).
    Payout {
        payout_id: u64,
        currency: Currency,
        amount: Amount,
        reference: String,
        at: UnixMs,
    },
}

/// A shop payout: part or all of the shop's payable balance in one
/// currency, paid to the shop's bank through the system payout account.
/// Its id is its posting set's id; immutable once written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PayoutRecord {
    pub payout_id: u64,
    pub shop: ShopId,
    pub currency: Currency,
    pub amount: Amount,
    /// What the bank transfer carries, so the shop can match it:
    /// [`payout_reference`] of the id.
    pub reference: String,
    pub idempotency_key: String,
    pub at: UnixMs,
}

/// The bank-transfer reference of payout `payout_id`: unique because the
/// id is, at most 22 ASCII characters (fits a SEPA or SWIFT reference).
pub fn payout_reference(payout_id: u64) -> String {
    format!("SYNCPAY-PO-{payout_id:011}")
}

/// A carrier's remittance: money the carrier paid for one shop's
/// carrier-billed sales of one closed UTC month, in one currency. Its id is
/// its posting set's id (system remittance account → the carrier's
/// remitted account); immutable once written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemittanceRecord {
    pub remittance_id: u64,
    pub carrier: CarrierId,
    pub shop: ShopId,
    pub month: Month,
    pub currency: Currency,
    pub amount: Amount,
    /// What the carrier's transfer carries: [`remittance_reference`].
    pub reference: String,
    pub idempotency_key: String,
    pub at: UnixMs,
}

/// The reference of remittance `id` (unique because the id is).
pub fn remittance_reference(id: u64) -> String {
    format!("SYNCPAY-RM-{id:011}")
}

/// What one carrier's billed sales of one shop came to in a period, in
/// one currency, from the shop's payout entries: the carrier owes the
/// shop `gross - fee - refunded`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CarrierSales {
    pub gross: u128,
    pub fee: u128,
    pub refunded: u128,
    pub settlements: u64,
}

impl CarrierSales {
    /// Adds one payout entry (the caller picks the carrier's and
    /// currency's with [`billed_by`]).
    pub fn add(&mut self, entry: &PayoutEntry) {
        match entry {
            PayoutEntry::Settlement { gross, fee, .. } => {
                self.gross += u128::from(gross.minor());
                self.fee += u128::from(fee.minor());
                self.settlements = self.settlements.saturating_add(1);
            }
            PayoutEntry::Refund { amount, .. } => self.refunded += u128::from(amount.minor()),
            PayoutEntry::Payout { .. } => {}
        }
    }

    /// What the carrier owes the shop: negative when refunds exceed the
    /// period's sales net of fees (then nothing is owed).
    pub fn owed(&self) -> i128 {
        // Each sum is of u64 values, far below i128's range.
        i128::try_from(self.gross).unwrap_or(i128::MAX)
            - i128::try_from(self.fee).unwrap_or(i128::MAX)
            - i128::try_from(self.refunded).unwrap_or(i128::MAX)
    }
}

/// The carrier and currency of a payout entry of a carrier-billed sale or
/// refund; `None` for wallet payments and payouts.
pub fn billed_by(entry: &PayoutEntry) -> Option<(&CarrierId, Currency)> {
    match entry {
        PayoutEntry::Settlement { carrier: Some(c), currency, .. }
        | PayoutEntry::Refund { carrier: Some(c), currency, .. } => Some((c, *currency)),
        PayoutEntry::Settlement { carrier: None, .. }
        | PayoutEntry::Refund { carrier: None, .. }
        | PayoutEntry::Payout { .. } => None,
    }
}

/// One shop's line of a carrier's statement for a month, in one currency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CarrierStatementLine {
    pub shop: ShopId,
    pub currency: Currency,
    pub sales: CarrierSales,
    /// Sum of the carrier's remittances to the shop for the month.
    pub remitted: u128,
    pub remittances: u64,
}

impl CarrierStatementLine {
    /// Owed minus remitted (negative if the carrier paid more than owed,
    /// which the remittance check prevents).
    pub fn outstanding(&self) -> i128 {
        self.sales.owed() - i128::try_from(self.remitted).unwrap_or(i128::MAX)
    }
}
