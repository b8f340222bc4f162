//! The typed inputs and results of the store's operations. Every field is
//! validated by the caller before it gets here; the store decides only
//! what needs its state.

use std::sync::Arc;

use tokio::sync::oneshot;

use crate::domain::receipt::{handset_commitment, ReceiptKeyId, ReceiptSigner, Statement};
use crate::domain::IpKey;
use crate::domain::{
    Amount, BindingCode, CarrierId, Currency, Decision, IpPrefix, Month, PortRange, RegisterId, ResolveMode,
    ScreenText, ShopId, SubscriberNumber, TradeId, TradeState, UnixMs,
};

use super::records::{
    AccountRecord, CarrierStatementLine, Delivery, EventRecord, Funding, PayerRef, PayoutRecord, PostingRecord,
    Receipt, RemittanceRecord, ShopRecord, Sig64, SignedTerms, SubscriberRecord, TradeRecord, TradeRequest,
};
use super::refusals::{Failure, PayoutField, RemittanceField, StoreError};

/// A new shop and the hash of its credential.
#[derive(Debug, Clone)]
pub struct NewShop {
    pub id: ShopId,
    pub display_name: String,
    pub token_hash: [u8; 32],
    /// Shops the store may hold at most.
    pub max_shops: u32,
    pub now: UnixMs,
}

/// A new carrier, the prefixes it leases and its fee on billed charges.
#[derive(Debug, Clone)]
pub struct NewCarrier {
    pub id: CarrierId,
    pub display_name: String,
    pub token_hash: [u8; 32],
    pub prefixes: Vec<IpPrefix>,
    pub fee_bps: u32,
    pub resolve_mode: ResolveMode,
    pub now: UnixMs,
}

#[derive(Debug, Clone)]
pub struct NewSubscriber {
    pub carrier: CarrierId,
    pub number: SubscriberNumber,
    pub funding: Funding,
    pub now: UnixMs,
}

#[derive(Debug, Clone)]
pub struct NewHandset {
    pub carrier: CarrierId,
    pub number: SubscriberNumber,
    pub public_key: [u8; 32],
    pub now: UnixMs,
}

#[derive(Debug, Clone)]
pub struct NewRegister {
    pub shop: ShopId,
    pub id: RegisterId,
    pub label: String,
    /// Open registers the shop may have at most.
    pub max_registers: u32,
    pub now: UnixMs,
}

#[derive(Debug, Clone)]
pub struct TopUp {
    pub number: SubscriberNumber,
    pub amount: Amount,
    pub currency: Currency,
    pub now: UnixMs,
}

/// A wallet after a top-up, and the top-up's first posting.
#[derive(Debug, Clone)]
pub struct ToppedUp {
    pub account: AccountRecord,
    pub posting_id: u64,
}

/// A CreateTrade as the shop sent it, with what the server adds.
#[derive(Debug, Clone)]
pub struct NewTrade {
    pub shop: ShopId,
    /// Fresh per request; the trade's id if one is created.
    pub trade_id: TradeId,
    /// As the shop sent it: an idempotent retry is compared with this,
    /// field by field, never with whom the payer resolved to.
    pub request: TradeRequest<PayerRef>,
    pub idempotency_key: Option<String>,
    pub binding_code: String,
    /// Open trades one register may have at most.
    pub max_open_per_register: u32,
    /// Asked only when the trade is about to send its offer.
    pub offer_gate: Option<OfferGate>,
    /// For a network identity in the range of a carrier in ask mode: what
    /// the engine learnt from the carrier (or that it could not ask), used
    /// in place of the store's own lease lookup. `None` otherwise.
    pub asked: Option<Resolution>,
    pub now: UnixMs,
}

impl NewTrade {
    /// The PENDING trade this request opens, for `request` with its payer
    /// resolved (`carrier` is the payer's carrier), whose offer shows the
    /// shop's name, the register's label and the description. The trade
    /// keeps the digest of those texts, so the answer is checked against what
    /// was shown even if the shop's name changes before the buyer answers. `None` when the binding code is not six digits: the
    /// server made it, so the caller reports the store as corrupt.
    pub fn pending_trade(
        &self,
        request: TradeRequest,
        carrier: Option<CarrierId>,
        expires_at: UnixMs,
        shop_name: &str,
        register_label: &str,
    ) -> Option<TradeRecord> {
        BindingCode::parse(&self.binding_code)?;
        let screen = ScreenText { shop_name, register_label, description: &request.description };
        let screen_digest = screen.digest();
        Some(TradeRecord {
            id: self.trade_id,
            shop: self.shop.clone(),
            carrier,
            request,
            state: TradeState::Pending,
            failure: None,
            binding_code: self.binding_code.clone(),
            created_at: self.now,
            expires_at,
            finished_at: None,
            decision: None,
            receipt: None,
            idempotency_key: self.idempotency_key.clone(),
            offer_delivery: None,
            refunded: Amount::ZERO,
            terms: SignedTerms::V2 { screen_digest },
        })
    }
}

/// What a network identity resolved to: from the lease records the store
/// holds (push mode), or from asking the carrier that owns the range (ask
/// mode, given to the store in `NewTrade::asked`). For an asked one the
/// store still checks, in the trade's transaction, that a found subscriber
/// is that carrier's and has a handset; an idempotent retry is replayed
/// before any of these is looked at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    Found {
        carrier: CarrierId,
        subscriber: SubscriberNumber,
    },
    /// No one, the carrier's refusal, no answer in time, or an answer the
    /// server refused: one outcome, so the shop cannot tell them apart.
    Miss,
    /// The carrier has not accepted the shop (it was not asked).
    NotAccepted,
    /// The carrier has no relay stream here (or it ended mid-request).
    Unavailable,
}

/// The carrier owning an address's range, as the engine needs it to
/// decide how to resolve a network identity for a shop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub carrier: CarrierId,
    pub mode: ResolveMode,
    /// Whether the carrier accepts the shop asking.
    pub accepted: bool,
}

/// A trade created, or the original one for an idempotent retry.
#[derive(Debug, Clone)]
pub struct Created {
    pub trade: TradeRecord,
    /// True when an idempotent retry returned an earlier trade (then
    /// `deliveries` is empty: the original sent them).
    pub replayed: bool,
    /// Outbox deliveries to push now that the trade is durable.
    pub deliveries: Vec<Delivery>,
}

/// A cancel's effect: the trade cancelled, or, if the deadline had passed
/// before the sweeper got to it, expired instead (committed, with its
/// withdrawal) so the cancel came too late.
#[derive(Debug, Clone)]
pub enum CancelOutcome {
    Cancelled { trade: TradeRecord, deliveries: Vec<Delivery> },
    Expired { trade: TradeRecord, deliveries: Vec<Delivery> },
}

/// What an expiry found.
#[derive(Debug, Clone)]
pub enum ExpireOutcome {
    /// This command expired the trade.
    Expired { trade: TradeRecord, deliveries: Vec<Delivery> },
    /// The deadline has not passed; nothing changed.
    NotDue(TradeRecord),
    /// Already final (a stale deadline entry was removed).
    AlreadyFinal(TradeRecord),
    /// No such trade.
    Unknown,
}

/// What a carrier's acknowledgement of a delivery did.
#[derive(Debug, Clone)]
pub enum AckOutcome {
    /// An offer reached the handset: the trade, OFFERED unless it had
    /// already finished.
    Offer(Box<TradeRecord>),
    /// A withdrawal was acknowledged.
    Withdrawal,
    /// Already acknowledged, or never this carrier's: acknowledgements
    /// repeat.
    Unknown,
}

/// A handset's signed answer, relayed by its carrier.
#[derive(Debug, Clone)]
pub struct HandsetAnswer {
    pub carrier: CarrierId,
    pub trade: TradeId,
    pub decision: Decision,
    pub signature: Vec<u8>,
    pub now: UnixMs,
    /// The signature checked before queueing (`check_answer`), so the
    /// writer need not: used only if the payload, key and signature it
    /// covered are exactly what the store sees when it applies the answer.
    pub checked: Option<SignatureCheck>,
    /// Countersigns the receipt if the answer settles the trade.
    pub signer: Arc<ReceiptSigner>,
}

/// Why a handset answer changed nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectedAnswer {
    /// No such trade for this carrier.
    UnknownTrade,
    /// The trade had already reached this final state.
    AlreadyFinal(crate::domain::TradeState),
    /// The deadline had passed; the trade is now EXPIRED.
    Expired,
}

#[derive(Debug, Clone)]
pub struct AnswerOutcome {
    /// The trade after the answer (absent when unknown).
    pub trade: Option<TradeRecord>,
    pub rejected: Option<RejectedAnswer>,
    pub deliveries: Vec<Delivery>,
}

/// A refund of part or all of a settled trade.
#[derive(Debug, Clone)]
pub struct NewRefund {
    pub shop: ShopId,
    pub trade: TradeId,
    pub amount: Amount,
    pub idempotency_key: Option<String>,
    pub now: UnixMs,
}

/// A refund written, or the original one for an idempotent retry.
#[derive(Debug, Clone)]
pub struct Refunded {
    pub trade: TradeRecord,
    /// The refund's posting set id.
    pub refund_id: u64,
    pub amount: Amount,
    pub replayed: bool,
}

/// One lease start or stop, validated at the edge; `index` is its position
/// in the request, for refusals.
#[derive(Debug, Clone)]
pub struct LeaseReport {
    pub ip: IpKey,
    pub ports: PortRange,
    pub at: UnixMs,
    /// `Some` for a start.
    pub subscriber: Option<SubscriberNumber>,
    pub index: usize,
}

/// How many starts and stops a batch recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeasesRecorded {
    pub starts: u32,
    pub stops: u32,
}

/// A subscriber's bill for one month.
#[derive(Debug, Clone)]
pub struct StatementData {
    pub subscriber: SubscriberRecord,
    pub lines: Vec<super::records::BillLine>,
    pub usage: Option<super::records::CapUsage>,
}

/// The caller's say on whether a subscriber may be sent one more offer
/// (the per-subscriber rate limit, which the store knows nothing of). A
/// backend asks it at the one point where a trade is known to send an
/// offer: after the idempotency check (a replay or a conflict sends
/// nothing), the register, payer, handset and open-trade checks and, for a
/// network identity, the resolution for this shop; so only a trade that
/// really pushes an offer spends the buyer's allowance. On admission the
/// gate spends the allowance (it has no refund), so a backend asks it at
/// most once per trade, however often it retries the work: the sled
/// backend's single writer keeps each trade's first verdict per write
/// group; a backend with several writers asks after its durable uniqueness
/// checks (the trade id and idempotency key reserved), once per trade it
/// goes on to create. A refusal's message becomes
/// [`super::CreateTradeRefusal::OfferLimited`] and nothing is written.
#[derive(Clone)]
pub struct OfferGate(Arc<AdmitFn>);

type AdmitFn = dyn Fn(&SubscriberNumber) -> Result<(), String> + Send + Sync;

impl OfferGate {
    pub fn new(admit: impl Fn(&SubscriberNumber) -> Result<(), String> + Send + Sync + 'static) -> OfferGate {
        OfferGate(Arc::new(admit))
    }

    /// Asks the gate; admitting spends the allowance.
    pub fn admit(&self, subscriber: &SubscriberNumber) -> Result<(), String> {
        (self.0)(subscriber)
    }
}

impl std::fmt::Debug for OfferGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OfferGate")
    }
}

/// A handset signature verified off the store's write path: the key, the
/// signed bytes and the signature it covered, and the verdict. Only a
/// backend's `check_answer` makes one (through [`SignatureCheck::verify`]),
/// so a verdict always comes from a real verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureCheck {
    public_key: [u8; 32],
    signed: Vec<u8>,
    signature: Vec<u8>,
    valid: bool,
    /// For a valid approval: the receipt's countersignature made in
    /// advance, with the signer's key id and the instant it attests.
    countersigned: Option<(ReceiptKeyId, UnixMs, Sig64)>,
}

impl SignatureCheck {
    /// Verifies `signature` over `signed` under `public_key` and, for a
    /// valid approval of `trade`, countersigns its receipt at `now` (the
    /// answer's time) with `signer`, for the store to take if it settles.
    pub(crate) fn verify(
        trade: TradeId,
        public_key: [u8; 32],
        signed: Vec<u8>,
        signature: &[u8],
        decision: Decision,
        signer: &ReceiptSigner,
        now: UnixMs,
    ) -> SignatureCheck {
        let valid = crate::domain::approval::verify_bytes(&public_key, &signed, signature);
        let countersigned = match <[u8; 64]>::try_from(signature) {
            Ok(sig) if valid && decision == Decision::Approve => {
                let counter = countersign(signer, trade, &public_key, &signed, &sig, now);
                Some((signer.id(), now, Sig64(counter)))
            }
            _ => None,
        };
        SignatureCheck { public_key, signed, signature: signature.to_vec(), valid, countersigned }
    }

    fn covers(&self, public_key: &[u8; 32], signed: &[u8], signature: &[u8]) -> bool {
        &self.public_key == public_key && self.signed == signed && self.signature == signature
    }

    /// The countersignature made in advance, if it was made over exactly
    /// the statement the store would sign now.
    fn countersignature_for(
        &self,
        public_key: &[u8; 32],
        signed: &[u8],
        signature: &[u8],
        key_id: ReceiptKeyId,
        now: UnixMs,
    ) -> Option<[u8; 64]> {
        match self.countersigned {
            Some((id, at, sig)) if self.covers(public_key, signed, signature) && id == key_id && at == now => {
                Some(sig.0)
            }
            _ => None,
        }
    }

    /// The receipt of a settlement at `now`: the handset's signature, its
    /// key, and the operator's countersignature (this check's, when it
    /// covered exactly this statement; made now otherwise).
    pub(crate) fn receipt(
        checked: Option<&SignatureCheck>,
        signer: &ReceiptSigner,
        trade: TradeId,
        public_key: &[u8; 32],
        signed: &[u8],
        signature: &[u8; 64],
        now: UnixMs,
    ) -> Receipt {
        let countersignature = checked
            .and_then(|c| c.countersignature_for(public_key, signed, signature, signer.id(), now))
            .unwrap_or_else(|| countersign(signer, trade, public_key, signed, signature, now));
        Receipt::Countersigned {
            signature: Sig64(*signature),
            handset_key: *public_key,
            key_id: signer.id(),
            countersignature: Sig64(countersignature),
        }
    }

    /// Whether `signature` over `signed` verifies under `public_key`,
    /// taking this check's verdict when it covered exactly these bytes (the
    /// handset may have been re-enrolled, or the check may have read
    /// another trade, in between: then it verifies here).
    pub(crate) fn valid(
        checked: Option<&SignatureCheck>,
        public_key: &[u8; 32],
        signed: &[u8],
        signature: &[u8],
    ) -> bool {
        match checked {
            Some(c) if c.covers(public_key, signed, signature) => c.valid,
            _ => crate::domain::approval::verify_bytes(public_key, signed, signature),
        }
    }
}

/// The operator's countersignature of a settlement at `now`: the statement
/// binds the payload, the handset's signature, the per-trade commitment to
/// its key and the settlement time.
fn countersign(
    signer: &ReceiptSigner,
    trade: TradeId,
    handset_key: &[u8; 32],
    signed: &[u8],
    signature: &[u8; 64],
    now: UnixMs,
) -> [u8; 64] {
    let commitment = handset_commitment(trade, handset_key);
    signer.sign(&Statement {
        key_id: signer.id(),
        payload: signed,
        handset_signature: signature,
        commitment: &commitment,
        settled_at: now,
    })
}

/// A write queued in order (a relay stream's messages apply in arrival
/// order); its outcome arrives once it is durable.
pub struct Pending<T, R>(oneshot::Receiver<Result<T, StoreError<R>>>);

/// What answers a [`Pending`] write.
pub type Reply<T, R> = oneshot::Sender<Result<T, StoreError<R>>>;

impl<T, R> Pending<T, R> {
    /// A pending write and the sender that answers it.
    pub fn channel() -> (Reply<T, R>, Pending<T, R>) {
        let (tx, rx) = oneshot::channel();
        (tx, Pending(rx))
    }

    pub(crate) fn from_receiver(rx: oneshot::Receiver<Result<T, StoreError<R>>>) -> Pending<T, R> {
        Pending(rx)
    }

    /// The outcome once durable; `Stopped` if the store gave up on it.
    pub async fn outcome(self) -> Result<T, StoreError<R>> {
        self.0.await.map_err(|_| StoreError::Failed(Failure::Stopped))?
    }
}

/// How much of the balance a payout pays out, as the operator asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum PayoutAmount {
    Exact(Amount),
    /// All of the shop's payable balance in the currency at the payout.
    WholeBalance,
}

/// A payout of a shop's payable balance in one currency, through the
/// system payout account; idempotent by key across all shops.
#[derive(Debug, Clone)]
pub struct NewPayout {
    pub shop: ShopId,
    pub currency: Currency,
    pub amount: PayoutAmount,
    pub idempotency_key: String,
    pub now: UnixMs,
}

impl NewPayout {
    /// The first field, in the request's order, in which this retry differs
    /// from the payout its idempotency key already names (`None`: the same
    /// request, so the original is the answer).
    pub fn differs_from(&self, shop: &ShopId, currency: Currency, amount: PayoutAmount) -> Option<PayoutField> {
        if *shop != self.shop {
            Some(PayoutField::Shop)
        } else if currency != self.currency {
            Some(PayoutField::Currency)
        } else if amount != self.amount {
            Some(PayoutField::Amount)
        } else {
            None
        }
    }
}

/// A payout written, or the original one for an idempotent retry.
#[derive(Debug, Clone)]
pub struct PaidOut {
    pub payout: PayoutRecord,
    /// The shop's payable account right after this call (for a retry: as
    /// it is now).
    pub payable: AccountRecord,
    pub replayed: bool,
}

/// A carrier's remittance for one shop's carrier-billed sales of one
/// closed month, in one currency; idempotent by key across the operator.
#[derive(Debug, Clone)]
pub struct NewRemittance {
    pub carrier: CarrierId,
    pub shop: ShopId,
    pub month: Month,
    pub currency: Currency,
    pub amount: Amount,
    pub idempotency_key: String,
    pub now: UnixMs,
}

impl NewRemittance {
    /// The first field, in the request's order, in which this retry differs
    /// from the remittance its idempotency key already names (`None`: the
    /// same request, so the original is the answer).
    pub fn differs_from(
        &self,
        carrier: &CarrierId,
        shop: &ShopId,
        month: Month,
        currency: Currency,
        amount: Amount,
    ) -> Option<RemittanceField> {
        if *carrier != self.carrier {
            Some(RemittanceField::Carrier)
        } else if *shop != self.shop {
            Some(RemittanceField::Shop)
        } else if month != self.month {
            Some(RemittanceField::Month)
        } else if currency != self.currency {
            Some(RemittanceField::Currency)
        } else if amount != self.amount {
            Some(RemittanceField::Amount)
        } else {
            None
        }
    }
}

/// A remittance written, or the original one for an idempotent retry,
/// with the (carrier, shop, month, currency) totals right after it (for a
/// retry: as they are now).
#[derive(Debug, Clone)]
pub struct Remitted {
    pub remittance: RemittanceRecord,
    pub line: CarrierStatementLine,
    pub replayed: bool,
}

/// A shop as the operator sees it: its record and whether it is suspended.
#[derive(Debug, Clone)]
pub struct ShopStatus {
    pub shop: ShopRecord,
    /// When the operator suspended it; `None` while it trades.
    pub suspended_at: Option<UnixMs>,
}

/// A trade's whole history for the operator: the trade as it is now, every
/// event it caused (states with their times, refunds) and every posting
/// naming it, in order.
#[derive(Debug, Clone)]
pub struct TradeHistory {
    pub trade: TradeRecord,
    pub events: Vec<EventRecord>,
    pub postings: Vec<PostingRecord>,
}
