//! How the sled backend writes records: one version byte, then postcard.
//! Each record type has its own version ([`Record::VERSION`]); a type whose
//! layout changed decodes its older layouts too. A record of an unknown
//! version or a malformed body is reported as corruption, never a panic.
//! Events are stored compactly (only what can change about their trade
//! afterwards) and joined with their trade when read; idempotency keys,
//! prefixes, carrier terms and leases are records only this backend has.

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::domain::{
    Amount, CarrierId, Currency, Decision, FailureReason, IpPrefix, Month, PortRange, ShopId, SubscriberNumber,
    TradeId, TradeState, UnixMs,
};
use crate::store::records::{
    AccountRecord, BillLine, CapUsage, CarrierRecord, Delivery, EventKind, EventRecord, HandsetRecord, NetworkIdentity,
    PayoutEntry, PayoutRecord, PostingRecord, Receipt, RegisterRecord, RemittanceRecord, ShopRecord, SignedTerms,
    SubscriberRecord, TradeRecord, TradeRequest,
};
use crate::store::{Failure, PayoutAmount};

/// The version byte of every record type whose layout never changed.
pub const RECORD_VERSION: u8 = 1;

/// A stored record type. A type whose layout changes gets a new `VERSION`
/// and reads its older layouts in `decode_older` (keeping a copy of the
/// old structs); the others stay at [`RECORD_VERSION`].
pub trait Record: Serialize + DeserializeOwned {
    /// The version byte this type is written with.
    const VERSION: u8 = RECORD_VERSION;

    /// Whether [`encode`] writes this type. Trade records carry their
    /// history refs after the record ([`encode_trade`]); a generic write
    /// would drop them, so it does not compile for them.
    const GENERIC_WRITE: bool = true;

    /// Decodes a body written under this type's current [`Self::VERSION`].
    fn decode_current(body: &[u8]) -> Result<Self, Failure> {
        body_of(body)
    }

    /// Decodes a body written under an older `version` of this type.
    fn decode_older(version: u8, _body: &[u8]) -> Result<Self, Failure> {
        Err(Failure::Corrupt(format!("unknown record version {version}")))
    }
}

pub fn encode<T: Record>(value: &T) -> Result<Vec<u8>, Failure> {
    const { assert!(T::GENERIC_WRITE, "this record type has its own encoder") };
    let mut out = vec![T::VERSION];
    let body = postcard::to_stdvec(value).map_err(|e| Failure::Corrupt(format!("encode: {e}")))?;
    out.extend_from_slice(&body);
    Ok(out)
}

pub fn decode<T: Record>(bytes: &[u8]) -> Result<T, Failure> {
    match bytes.split_first() {
        Some((&v, body)) if v == T::VERSION => T::decode_current(body),
        Some((&v, body)) => T::decode_older(v, body),
        None => Err(Failure::Corrupt("empty record".into())),
    }
}

fn body_of<T: DeserializeOwned>(body: &[u8]) -> Result<T, Failure> {
    postcard::from_bytes(body).map_err(|e| Failure::Corrupt(format!("decode: {e}")))
}

/// Record types at [`RECORD_VERSION`], unchanged since the first layout.
macro_rules! first_layout {
    ($($t:ty),* $(,)?) => { $(impl Record for $t {})* };
}

first_layout!(
    crate::domain::Principal,
    CarrierRecord,
    SubscriberRecord,
    HandsetRecord,
    RegisterRecord,
    AccountRecord,
    PostingRecord,
    IdempotencyRecord,
    Delivery,
    PrefixRecord,
    CarrierTerms,
    crate::domain::ResolveMode,
    LeaseRecord,
    CapUsage,
    BillLine,
    PayoutEntry,
    PayoutRecord,
    RemittanceRecord,
    (),
    u64,
    u128,
);

/// Version byte of shop records since issue 14. The layout is the first
/// one's; what changed is that `next_event_seq` holds the value at the
/// shop's creation, not the next event number (the backend derives that
/// from the events tree at open and keeps it in the writer's memory,
/// `sled::hot`). The new version byte is what makes a binary older than
/// issue 14, which trusted the field, refuse the store (unknown record
/// version) instead of reusing event numbers; the store rewrites shop
/// records of the first layout when it opens.
pub const SHOP_VERSION: u8 = 2;

impl Record for ShopRecord {
    const VERSION: u8 = SHOP_VERSION;

    fn decode_older(version: u8, body: &[u8]) -> Result<Self, Failure> {
        match version {
            RECORD_VERSION => body_of(body),
            v => Err(Failure::Corrupt(format!("unknown shop record version {v}"))),
        }
    }
}

/// Version byte of trade records since issue 14's history refs: version
/// 2's body, then the trade's history refs and their length in one byte
/// ([`encode_trade`]). An older binary refuses such a record (unknown
/// version) instead of rewriting it without its refs.
pub const TRADE_VERSION: u8 = 3;
/// Trade records since payload version 2 (`terms`, and receipts
/// countersigned by the operator), without history refs.
pub const TRADE_VERSION_V2: u8 = 2;

/// The most bytes of history refs a trade record carries. A settled trade
/// needs about 20 (its two events and two postings); past this, a trade's
/// further events and postings go to the index keys instead, so a trade
/// refunded a thousand times does not rewrite an ever longer record.
pub const MAX_TRADE_REFS: usize = 200;
const _: () = assert!(MAX_TRADE_REFS <= u8::MAX as usize, "the refs' length is one byte");

/// A trade's history item: one of its events (by its shop's sequence
/// number) or one of its postings (by posting id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum HistoryRef {
    Event(u64),
    Posting(u64),
}

impl HistoryRef {
    /// The index keys' kind byte, also the ref's tag in a trade record.
    pub fn tag(self) -> u8 {
        match self {
            HistoryRef::Event(_) => b'E',
            HistoryRef::Posting(_) => b'P',
        }
    }

    pub fn of(tag: u8, n: u64) -> Result<HistoryRef, Failure> {
        match tag {
            b'E' => Ok(HistoryRef::Event(n)),
            b'P' => Ok(HistoryRef::Posting(n)),
            t => Err(Failure::Corrupt(format!("trade history ref kind {t}"))),
        }
    }

    /// The event's sequence number or the posting's id.
    pub fn n(self) -> u64 {
        match self {
            HistoryRef::Event(n) | HistoryRef::Posting(n) => n,
        }
    }
}

impl Record for TradeRecord {
    const VERSION: u8 = TRADE_VERSION;
    const GENERIC_WRITE: bool = false;

    fn decode_current(body: &[u8]) -> Result<Self, Failure> {
        split_trade(body).map(|(trade, _)| trade)
    }

    fn decode_older(version: u8, body: &[u8]) -> Result<Self, Failure> {
        match version {
            TRADE_VERSION_V2 => body_of(body),
            RECORD_VERSION => body_of::<TradeRecordV1>(body).map(TradeRecord::from),
            v => Err(Failure::Corrupt(format!("unknown trade record version {v}"))),
        }
    }
}

/// A trade record as stored: version byte, the record, then `refs` (the
/// trade's history items, each a tag byte and a varint) and their length
/// in bytes (one byte, at most [`MAX_TRADE_REFS`]).
pub fn encode_trade(trade: &TradeRecord, refs: &[u8]) -> Result<Vec<u8>, Failure> {
    let len = match u8::try_from(refs.len()) {
        Ok(n) if refs.len() <= MAX_TRADE_REFS => n,
        _ => return Err(Failure::Corrupt(format!("{} bytes of trade history refs", refs.len()))),
    };
    let mut out = vec![TRADE_VERSION];
    let body = postcard::to_stdvec(trade).map_err(|e| Failure::Corrupt(format!("encode: {e}")))?;
    out.reserve(body.len() + refs.len() + 1);
    out.extend_from_slice(&body);
    out.extend_from_slice(refs);
    out.push(len);
    Ok(out)
}

/// A version 3 body: the record and its refs, checked to end exactly where
/// the refs' length says.
fn split_trade(body: &[u8]) -> Result<(TradeRecord, &[u8]), Failure> {
    let (trade, rest) =
        postcard::take_from_bytes::<TradeRecord>(body).map_err(|e| Failure::Corrupt(format!("decode: {e}")))?;
    match rest.split_last() {
        Some((&len, refs)) if refs.len() == usize::from(len) => Ok((trade, refs)),
        _ => Err(Failure::Corrupt(format!("trade {}: its history refs do not end the record", trade.id))),
    }
}

/// The history refs of a stored trade record, as bytes, without decoding
/// the record (its length byte is the last); none for a record written
/// before [`TRADE_VERSION`] 3.
pub fn trade_refs(bytes: &[u8]) -> Result<&[u8], Failure> {
    match bytes.split_first() {
        Some((&TRADE_VERSION, body)) => match body.split_last() {
            Some((&len, rest)) if rest.len() >= usize::from(len) => Ok(&rest[rest.len() - usize::from(len)..]),
            _ => Err(Failure::Corrupt("trade record shorter than its history refs".into())),
        },
        Some((&TRADE_VERSION_V2 | &RECORD_VERSION, _)) => Ok(&[]),
        Some((v, _)) => Err(Failure::Corrupt(format!("unknown trade record version {v}"))),
        None => Err(Failure::Corrupt("empty record".into())),
    }
}

/// The stored trade record's bytes with `item` added to its refs, or None
/// when its refs are full ([`MAX_TRADE_REFS`]). A version 3 record is not
/// decoded: only its refs change. An older one is rewritten at version 3.
pub fn add_trade_ref(bytes: &[u8], item: HistoryRef) -> Result<Option<Vec<u8>>, Failure> {
    let refs = trade_refs(bytes)?;
    let mut more = refs.to_vec();
    push_ref(&mut more, item)?;
    if more.len() > MAX_TRADE_REFS {
        return Ok(None);
    }
    if bytes.first() != Some(&TRADE_VERSION) {
        return encode_trade(&decode::<TradeRecord>(bytes)?, &more).map(Some);
    }
    // The version byte and record, unchanged; then the longer refs.
    let record_end = bytes.len() - 1 - refs.len();
    let mut out = Vec::with_capacity(record_end + more.len() + 1);
    out.extend_from_slice(&bytes[..record_end]);
    out.extend_from_slice(&more);
    out.push(more.len() as u8);
    Ok(Some(out))
}

fn push_ref(refs: &mut Vec<u8>, item: HistoryRef) -> Result<(), Failure> {
    let bytes = postcard::to_stdvec(&(item.tag(), item.n())).map_err(|e| Failure::Corrupt(format!("encode: {e}")))?;
    refs.extend_from_slice(&bytes);
    Ok(())
}

/// A trade record as written before it carried refs (version 2), for
/// tests of stores of that time.
#[cfg(test)]
pub(crate) fn encode_trade_v2(trade: &TradeRecord) -> Vec<u8> {
    let mut out = vec![TRADE_VERSION_V2];
    out.extend(postcard::to_stdvec(trade).expect("encode"));
    out
}

/// A stored trade record and the history items it carries, in the order
/// they were added.
pub fn decode_trade_with_refs(bytes: &[u8]) -> Result<(TradeRecord, Vec<HistoryRef>), Failure> {
    let (trade, mut refs) = match bytes.split_first() {
        Some((&TRADE_VERSION, body)) => split_trade(body)?,
        _ => (decode::<TradeRecord>(bytes)?, &[][..]),
    };
    let mut out = Vec::new();
    while !refs.is_empty() {
        let ((tag, n), rest) = postcard::take_from_bytes::<(u8, u64)>(refs)
            .map_err(|e| Failure::Corrupt(format!("trade {}: history ref: {e}", trade.id)))?;
        out.push(HistoryRef::of(tag, n)?);
        refs = rest;
    }
    Ok((trade, out))
}

/// A trade record as written before [`TRADE_VERSION`] 2 (kept to read
/// stores of that time; also the trade inside a version 1 whole event).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct TradeRecordV1 {
    id: TradeId,
    shop: ShopId,
    carrier: Option<CarrierId>,
    request: TradeRequest,
    state: TradeState,
    failure: Option<FailureReason>,
    binding_code: String,
    created_at: UnixMs,
    expires_at: UnixMs,
    finished_at: Option<UnixMs>,
    decision: Option<Decision>,
    receipt: Option<ReceiptV1>,
    idempotency_key: Option<String>,
    offer_delivery: Option<u64>,
    refunded: Amount,
}

/// The receipt layout of [`TradeRecordV1`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct ReceiptV1 {
    signed_payload: Vec<u8>,
    signature: Vec<u8>,
    shop_key_fingerprint: [u8; 32],
}

impl From<TradeRecordV1> for TradeRecord {
    fn from(t: TradeRecordV1) -> TradeRecord {
        TradeRecord {
            id: t.id,
            shop: t.shop,
            carrier: t.carrier,
            request: t.request,
            state: t.state,
            failure: t.failure,
            binding_code: t.binding_code,
            created_at: t.created_at,
            expires_at: t.expires_at,
            finished_at: t.finished_at,
            decision: t.decision,
            receipt: t.receipt.map(|r| Receipt::Legacy {
                signed_payload: r.signed_payload,
                signature: r.signature,
                shop_key_fingerprint: r.shop_key_fingerprint,
            }),
            idempotency_key: t.idempotency_key,
            offer_delivery: t.offer_delivery,
            refunded: t.refunded,
            terms: SignedTerms::V1,
        }
    }
}

/// A whole event as written before compact events (version 1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct EventRecordV1 {
    seq: u64,
    at: UnixMs,
    kind: EventKind,
    trade: TradeRecordV1,
}

/// Version byte of the compact event layout. Version 1 events (the
/// generic [`RECORD_VERSION`]) hold a whole [`TradeRecord`]; they still
/// decode. Version 3 has version 2's layout; what changed is the meaning
/// of a refund's `refund_id` (see [`EventKind::Refunded`]).
pub const EVENT_VERSION: u8 = 3;
/// Compact events written before refund ids named posting sets.
pub const EVENT_VERSION_V2: u8 = 2;

/// An event as stored since [`EVENT_VERSION`] 2: only the fields of the
/// trade that can change after the event (state, failure, decision,
/// finish time, refunds, the pending offer, whether the receipt exists).
/// Everything else about a trade is fixed when it is created, and the
/// receipt when it settles, so the rest is joined from the trade record
/// when the event is read ([`CompactEvent::join`]). Three whole trade
/// copies per trade were over half of the store's live bytes (issue 6).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompactEvent {
    pub seq: u64,
    pub at: UnixMs,
    pub kind: EventKind,
    pub trade: TradeId,
    pub state: TradeState,
    pub failure: Option<FailureReason>,
    pub decision: Option<Decision>,
    pub finished_at: Option<UnixMs>,
    pub refunded: Amount,
    pub offer_delivery: Option<u64>,
    pub has_receipt: bool,
}

impl CompactEvent {
    pub fn of(event: &EventRecord) -> CompactEvent {
        let t = &event.trade;
        CompactEvent {
            seq: event.seq,
            at: event.at,
            kind: event.kind,
            trade: t.id,
            state: t.state,
            failure: t.failure,
            decision: t.decision,
            finished_at: t.finished_at,
            refunded: t.refunded,
            offer_delivery: t.offer_delivery,
            has_receipt: t.receipt.is_some(),
        }
    }

    /// The event with its trade as it was then: the trade's current record
    /// with the fields that may have changed since set back to the event's.
    pub fn join(self, mut trade: TradeRecord) -> Result<EventRecord, Failure> {
        if trade.id != self.trade {
            return Err(Failure::Corrupt(format!("event {} joined with trade {}", self.seq, trade.id)));
        }
        trade.state = self.state;
        trade.failure = self.failure;
        trade.decision = self.decision;
        trade.finished_at = self.finished_at;
        trade.refunded = self.refunded;
        trade.offer_delivery = self.offer_delivery;
        match (self.has_receipt, trade.receipt.is_some()) {
            (true, true) | (false, false) => {}
            (false, true) => trade.receipt = None,
            (true, false) => {
                return Err(Failure::Corrupt(format!("event {} has a receipt its trade lacks", self.seq)));
            }
        }
        Ok(EventRecord { seq: self.seq, at: self.at, kind: self.kind, trade })
    }
}

/// An event as read from disk: a whole one (version 1) or a compact one
/// that still needs its trade. Versions 1 and 2 hold a refund's first
/// posting id where version 3 holds its posting set id; the store's reader
/// converts them ([`EventKind::Refunded`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoredEvent {
    Whole(Box<EventRecord>),
    /// Version 2: compact, refund ids are first posting ids.
    CompactV2(CompactEvent),
    Compact(CompactEvent),
}

pub fn encode_event(event: &EventRecord) -> Result<Vec<u8>, Failure> {
    let mut out = vec![EVENT_VERSION];
    let body = postcard::to_stdvec(&CompactEvent::of(event)).map_err(|e| Failure::Corrupt(format!("encode: {e}")))?;
    out.extend_from_slice(&body);
    Ok(out)
}

pub fn decode_event(bytes: &[u8]) -> Result<StoredEvent, Failure> {
    let compact = |body: &[u8]| {
        postcard::from_bytes::<CompactEvent>(body).map_err(|e| Failure::Corrupt(format!("decode event: {e}")))
    };
    match bytes.split_first() {
        Some((&EVENT_VERSION, body)) => compact(body).map(StoredEvent::Compact),
        Some((&EVENT_VERSION_V2, body)) => compact(body).map(StoredEvent::CompactV2),
        Some((&RECORD_VERSION, body)) => {
            let e: EventRecordV1 = body_of(body)?;
            Ok(StoredEvent::Whole(Box::new(EventRecord { seq: e.seq, at: e.at, kind: e.kind, trade: e.trade.into() })))
        }
        Some((v, _)) => Err(Failure::Corrupt(format!("unknown event version {v}"))),
        None => Err(Failure::Corrupt("empty record".into())),
    }
}

/// The version 1 bytes of a whole event whose trade a version 1 server
/// could have written (no countersigned receipt), for tests of old stores.
#[cfg(test)]
pub(crate) fn encode_whole_event_v1(e: &EventRecord) -> Option<Vec<u8>> {
    let t = &e.trade;
    let receipt = match &t.receipt {
        None => None,
        Some(Receipt::Legacy { signed_payload, signature, shop_key_fingerprint }) => Some(ReceiptV1 {
            signed_payload: signed_payload.clone(),
            signature: signature.clone(),
            shop_key_fingerprint: *shop_key_fingerprint,
        }),
        Some(Receipt::Countersigned { .. }) => return None,
    };
    let trade = TradeRecordV1 {
        id: t.id,
        shop: t.shop.clone(),
        carrier: t.carrier.clone(),
        request: t.request.clone(),
        state: t.state,
        failure: t.failure,
        binding_code: t.binding_code.clone(),
        created_at: t.created_at,
        expires_at: t.expires_at,
        finished_at: t.finished_at,
        decision: t.decision,
        receipt,
        idempotency_key: t.idempotency_key.clone(),
        offer_delivery: t.offer_delivery,
        refunded: t.refunded,
    };
    let mut out = vec![RECORD_VERSION];
    out.extend(postcard::to_stdvec(&EventRecordV1 { seq: e.seq, at: e.at, kind: e.kind, trade }).ok()?);
    Some(out)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum IdempotencyRecord {
    /// A CreateTrade key: the trade it made and the request, to compare.
    Trade { trade: TradeId, request: TradeRequest<SubscriberNumber> },
    /// A RefundTrade key as written before refund ids named posting sets:
    /// the refund's first posting id, read back as its set's id. No longer
    /// written.
    RefundV1 { trade: TradeId, amount: Amount, first_posting: u64 },
    /// A CreateTrade key whose payer was a network identity: the request
    /// as the shop sent it (never the resolved subscriber, so a retry's
    /// conflict message cannot reveal who was resolved).
    NetworkTrade { trade: TradeId, request: TradeRequest<NetworkIdentity> },
    /// A RefundTrade key: the refund it made, by posting set id. (Appended:
    /// postcard numbers variants, so older records still decode.)
    Refund { trade: TradeId, amount: Amount, set_id: u64 },
    /// A PayoutShop key (operator-wide): the request as the operator sent
    /// it, and the payout it made. (Appended, as `Refund`.)
    Payout { shop: ShopId, currency: Currency, amount: PayoutAmount, payout_id: u64 },
    /// A RecordRemittance key (operator-wide): the request as sent and the
    /// remittance it made. (Appended, as `Refund`.)
    Remittance {
        carrier: CarrierId,
        shop: ShopId,
        month: Month,
        currency: Currency,
        amount: Amount,
        remittance_id: u64,
    },
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::receipt::ReceiptKeyId;
    use crate::domain::{Currency, RegisterId, ScreenText};
    use crate::store::records::OfferBody;
    use crate::store::records::Sig64;

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
        assert!(matches!(decode::<CarrierRecord>(&wrong), Err(Failure::Corrupt(_))));
        assert!(matches!(decode::<CarrierRecord>(&[]), Err(Failure::Corrupt(_))));
        assert!(matches!(decode::<CarrierRecord>(&bytes[..3]), Err(Failure::Corrupt(_))));
    }

    fn hex(text: &str) -> Vec<u8> {
        crate::hex::decode(text).expect("hex")
    }

    /// A settled, partly refunded trade, as in the golden records below.
    fn golden_trade() -> TradeRecord {
        TradeRecord {
            id: TradeId::from_bytes([7; 16]),
            shop: ShopId::parse("acme").expect("id"),
            carrier: Some(CarrierId::parse("docomo").expect("id")),
            request: TradeRequest {
                register: RegisterId::from_bytes([9; 16]),
                payer: SubscriberNumber::parse("+818012345678").expect("number"),
                amount: Amount::new(1200),
                currency: Currency::parse("JPY").expect("known"),
                description: "book".into(),
                ttl_ms: 60_000,
            },
            state: TradeState::Settled,
            failure: None,
            binding_code: "123456".into(),
            created_at: UnixMs(1_800_000_000_000),
            expires_at: UnixMs(1_800_000_060_000),
            finished_at: Some(UnixMs(1_800_000_001_000)),
            decision: Some(Decision::Approve),
            receipt: Some(Receipt::Legacy {
                signed_payload: vec![1, 2, 3],
                signature: vec![4; 64],
                shop_key_fingerprint: [5; 32],
            }),
            idempotency_key: Some("order-1".into()),
            offer_delivery: None,
            refunded: Amount::new(300),
            terms: SignedTerms::V1,
        }
    }

    /// The same trade as this version writes it: version 2 terms and a
    /// countersigned receipt.
    fn golden_trade_v2() -> TradeRecord {
        TradeRecord {
            receipt: Some(Receipt::Countersigned {
                signature: Sig64([4; 64]),
                handset_key: [5; 32],
                key_id: ReceiptKeyId::from_bytes([6; 8]),
                countersignature: Sig64([7; 64]),
            }),
            terms: SignedTerms::V2 { screen_digest: [8; 32] },
            ..golden_trade()
        }
    }

    // Written by the encoder of commit ade2827 (before compact events): a
    // store of that time must still read the same.
    const GOLDEN_TRADE_V1: &str =
        "01070707070707070707070707070707070461636d650106646f636f6d6f090909090909090909090909090909090d2b\
        383138303132333435363738b0094a505904626f6f6be0d40302000631323334353680a0f1c2b134e0f4f4c2b13401e8\
        a7f1c2b13401000103010203400404040404040404040404040404040404040404040404040404040404040404040404\
        040404040404040404040404040404040404040404040404040404040405050505050505050505050505050505050505\
        0505050505050505050505050501076f726465722d3100ac02";
    const GOLDEN_EVENT_V1: &str =
        "0104d0aff1c2b13401ac0206070707070707070707070707070707070461636d650106646f636f6d6f09090909090909\
        0909090909090909090d2b383138303132333435363738b0094a505904626f6f6be0d40302000631323334353680a0f1\
        c2b134e0f4f4c2b13401e8a7f1c2b1340100010301020340040404040404040404040404040404040404040404040404\
        040404040404040404040404040404040404040404040404040404040404040404040404040404040505050505050505\
        05050505050505050505050505050505050505050505050501076f726465722d3100ac02";

    #[test]
    fn records_written_before_compact_events_still_decode() {
        let trade: TradeRecord = decode(&hex(GOLDEN_TRADE_V1)).expect("trade v1");
        assert_eq!(trade, golden_trade());
        let expected = EventRecord {
            seq: 4,
            at: UnixMs(1_800_000_002_000),
            kind: EventKind::Refunded { amount: Amount::new(300), refund_id: 6 },
            trade: golden_trade(),
        };
        assert_eq!(
            decode_event(&hex(GOLDEN_EVENT_V1)).expect("event v1"),
            StoredEvent::Whole(Box::new(expected.clone()))
        );
        // The test encoder of the old layout writes exactly those bytes.
        assert_eq!(encode_whole_event_v1(&expected), Some(hex(GOLDEN_EVENT_V1)));
    }

    // Written by the encoder of commit 708ca2c: the layout of trade
    // records from countersigned receipts until they carried history refs.
    const GOLDEN_TRADE_V2: &str =
        "02070707070707070707070707070707070461636d650106646f636f6d6f090909090909090909090909090909090d2b\
        383138303132333435363738b0094a505904626f6f6be0d40302000631323334353680a0f1c2b134e0f4f4c2b13401e8\
        a7f1c2b13401000101040404040404040404040404040404040404040404040404040404040404040404040404040404\
        040404040404040404040404040404040404040404040404040505050505050505050505050505050505050505050505\
        050505050505050505060606060606060607070707070707070707070707070707070707070707070707070707070707\
        07070707070707070707070707070707070707070707070707070707070707070701076f726465722d3100ac02010808\
        080808080808080808080808080808080808080808080808080808080808";
    /// The refs of the golden version 3 record: events 1 and 4, postings 2
    /// and 3, each a tag byte and a varint; then their length.
    const GOLDEN_REFS: &str = "450150025003450408";

    /// Version 3 is version 2's body, then the refs and their length.
    fn golden_trade_v3() -> Vec<u8> {
        let v2 = hex(GOLDEN_TRADE_V2);
        [&[TRADE_VERSION][..], &v2[1..], &hex(GOLDEN_REFS)].concat()
    }

    const GOLDEN_ITEMS: [HistoryRef; 4] =
        [HistoryRef::Event(1), HistoryRef::Posting(2), HistoryRef::Posting(3), HistoryRef::Event(4)];

    #[test]
    fn trade_records_have_their_own_version_and_read_the_old_ones() {
        let refs = hex(GOLDEN_REFS);
        let bytes = encode_trade(&golden_trade_v2(), &refs[..refs.len() - 1]).expect("encode");
        assert_eq!(bytes[0], TRADE_VERSION);
        assert_eq!(bytes, golden_trade_v3(), "{}", crate::hex::encode(&bytes));
        assert_eq!(decode::<TradeRecord>(&bytes).expect("v3"), golden_trade_v2());
        assert_eq!(decode_trade_with_refs(&bytes).expect("v3"), (golden_trade_v2(), GOLDEN_ITEMS.to_vec()));
        assert_eq!(trade_refs(&bytes).expect("refs"), &refs[..refs.len() - 1]);
        // Version 2 reads as it was, with no refs.
        let v2 = hex(GOLDEN_TRADE_V2);
        assert_eq!(decode::<TradeRecord>(&v2).expect("v2"), golden_trade_v2());
        assert_eq!(decode_trade_with_refs(&v2).expect("v2"), (golden_trade_v2(), vec![]));
        assert!(trade_refs(&v2).expect("v2").is_empty());
        // A version 1 trade reads as a version 1 trade with a legacy receipt.
        let old: TradeRecord = decode(&hex(GOLDEN_TRADE_V1)).expect("v1");
        assert_eq!((old.terms, matches!(old.receipt, Some(Receipt::Legacy { .. }))), (SignedTerms::V1, true));
        assert!(trade_refs(&hex(GOLDEN_TRADE_V1)).expect("v1").is_empty());
        // Other records stay at version 1, and nothing reads version 4.
        assert_eq!(encode(&CarrierTerms { fee_bps: 1 }).expect("encode")[0], RECORD_VERSION);
        let mut future = bytes.clone();
        future[0] = 4;
        assert!(matches!(decode::<TradeRecord>(&future), Err(Failure::Corrupt(_))));
        assert!(matches!(trade_refs(&future), Err(Failure::Corrupt(_))));
    }

    #[test]
    fn a_ref_is_added_without_touching_the_record_until_the_refs_are_full() {
        // To a record of before refs: rewritten at version 3.
        let mut bytes = hex(GOLDEN_TRADE_V2);
        for item in GOLDEN_ITEMS {
            bytes = add_trade_ref(&bytes, item).expect("add").expect("room");
        }
        assert_eq!(bytes, golden_trade_v3());
        // Posting ids and event numbers of any size, until the refs are full.
        let mut items = GOLDEN_ITEMS.to_vec();
        let mut n = 1u64;
        loop {
            let item = if n % 2 == 0 { HistoryRef::Posting(u64::MAX / n) } else { HistoryRef::Event(n) };
            match add_trade_ref(&bytes, item).expect("add") {
                Some(longer) => {
                    assert!(trade_refs(&longer).expect("refs").len() <= MAX_TRADE_REFS);
                    bytes = longer;
                    items.push(item);
                }
                None => break,
            }
            n += 1;
        }
        assert!(items.len() > 20, "{} refs fit", items.len());
        assert!(trade_refs(&bytes).expect("refs").len() > MAX_TRADE_REFS - 11, "full means no room for one more");
        assert_eq!(decode_trade_with_refs(&bytes).expect("full"), (golden_trade_v2(), items));
        assert!(encode_trade(&golden_trade_v2(), &[0; MAX_TRADE_REFS + 1]).is_err());
    }

    #[test]
    fn a_damaged_trade_record_is_corruption_never_a_panic() {
        let good = golden_trade_v3();
        let corrupt = |b: &[u8]| matches!(decode_trade_with_refs(b), Err(Failure::Corrupt(_)));
        // Refs longer than the record, a ref cut short, an unknown tag.
        let mut long = good.clone();
        *long.last_mut().expect("len") = 250;
        assert!(corrupt(&long) && matches!(decode::<TradeRecord>(&long), Err(Failure::Corrupt(_))));
        assert!(matches!(trade_refs(&[TRADE_VERSION, 1, 2, 9]), Err(Failure::Corrupt(_))));
        let cut = [&good[..good.len() - 3], &[0x45, 0xff, 3][..]].concat();
        assert!(corrupt(&cut));
        let tagged = [&good[..good.len() - 3], &[0x51, 0x04, 8][..]].concat();
        assert!(corrupt(&tagged));
        // Every truncation and every flipped byte reads as a result.
        for end in 0..good.len() {
            let _ = (decode_trade_with_refs(&good[..end]), trade_refs(&good[..end]));
            let _ = add_trade_ref(&good[..end], HistoryRef::Event(9));
        }
        for i in 0..good.len() {
            let mut b = good.clone();
            b[i] ^= 0xff;
            let _ = (decode_trade_with_refs(&b), trade_refs(&b), add_trade_ref(&b, HistoryRef::Posting(9)));
        }
    }

    // A shop record of the first layout (the encoder before issue 14:
    // version 1, `next_event_seq` 7) and of the second.
    const GOLDEN_SHOP_V1: &str = "010461636d650441636d6507d0aff1c2b134";
    const GOLDEN_SHOP_V2: &str = "020461636d650441636d6507d0aff1c2b134";

    #[test]
    fn shop_records_have_their_own_version_and_read_the_old_one() {
        let shop = ShopRecord {
            id: ShopId::parse("acme").expect("valid"),
            display_name: "Acme".into(),
            next_event_seq: 7,
            created_at: UnixMs(1_800_000_002_000),
        };
        let bytes = encode(&shop).expect("encode");
        assert_eq!(bytes[0], SHOP_VERSION);
        assert_eq!(bytes, hex(GOLDEN_SHOP_V2), "{}", crate::hex::encode(&bytes));
        let old: ShopRecord = decode(&hex(GOLDEN_SHOP_V1)).expect("v1");
        assert_eq!(
            (old.id, old.display_name, old.next_event_seq, old.created_at),
            (shop.id, shop.display_name, 7, shop.created_at)
        );
        let mut future = bytes.clone();
        future[0] = 3;
        assert!(matches!(decode::<ShopRecord>(&future), Err(Failure::Corrupt(_))));
    }

    #[test]
    fn the_payload_of_a_trade_is_its_offers_payload() {
        let t = golden_trade_v2();
        let digest = ScreenText { shop_name: "Acme", register_label: "Front", description: "book" }.digest();
        let t = TradeRecord { terms: SignedTerms::V2 { screen_digest: digest }, ..t };
        let offer = OfferBody {
            trade: t.id,
            payer: t.request.payer.clone(),
            shop: t.shop.clone(),
            shop_name: "Acme".into(),
            register: t.request.register,
            register_label: "Front".into(),
            amount: t.request.amount,
            currency: t.request.currency,
            description: "book".into(),
            expires_at: t.expires_at,
            binding_code: t.binding_code.clone(),
        };
        for decision in [Decision::Approve, Decision::Decline] {
            let from_trade = t.approval_payload(decision).expect("payload");
            assert_eq!(Some(from_trade.clone()), offer.approval_payload(2, decision));
            assert_eq!(from_trade.version.number(), 2);
        }
        let v1 = TradeRecord { terms: SignedTerms::V1, ..t.clone() };
        assert_eq!(v1.approval_payload(Decision::Approve).ok(), offer.approval_payload(1, Decision::Approve));
        let broken = TradeRecord { binding_code: "12345".into(), ..t };
        assert!(matches!(broken.approval_payload(Decision::Approve), Err(Failure::Corrupt(_))));
    }

    // Written by the encoders of commit 8c50b13, before refund ids named
    // posting sets: a refund key whose refund was first posting 6, and a
    // compact (version 2) REFUNDED event with refund id 6.
    const GOLDEN_REFUND_KEY_V1: &str = "010107070707070707070707070707070707ac0206";
    const GOLDEN_EVENT_V2: &str =
        "0204d0aff1c2b13401ac0206070707070707070707070707070707070200010001e8a7f1c2b134ac020001";

    #[test]
    fn refund_records_written_before_set_ids_still_decode_as_such() {
        let key: IdempotencyRecord = decode(&hex(GOLDEN_REFUND_KEY_V1)).expect("refund key v1");
        let IdempotencyRecord::RefundV1 { trade, amount, first_posting } = key else { panic!("{key:?}") };
        assert_eq!((trade, amount, first_posting), (TradeId::from_bytes([7; 16]), Amount::new(300), 6));
        let StoredEvent::CompactV2(event) = decode_event(&hex(GOLDEN_EVENT_V2)).expect("event v2") else {
            panic!("not a version 2 event")
        };
        assert_eq!(event.kind, EventKind::Refunded { amount: Amount::new(300), refund_id: 6 });
        let settled = EventRecord { seq: 4, at: UnixMs(1_800_000_002_000), kind: event.kind, trade: golden_trade() };
        assert_eq!(event.join(golden_trade()).expect("join"), settled);
        // Today's encoder writes version 3 and the new key variant.
        assert_eq!(encode_event(&settled).expect("encode")[0], 3);
        let now =
            IdempotencyRecord::Refund { trade: TradeId::from_bytes([7; 16]), amount: Amount::new(300), set_id: 3 };
        assert!(matches!(decode(&encode(&now).expect("encode")), Ok(IdempotencyRecord::Refund { set_id: 3, .. })));
    }

    #[test]
    fn compact_events_join_their_trade_as_it_was() {
        // The PENDING event of a trade that has since settled and been
        // refunded: joined with today's record it shows PENDING, no
        // receipt, no decision, nothing refunded.
        let mut then = golden_trade();
        then.state = TradeState::Pending;
        then.finished_at = None;
        then.decision = None;
        then.receipt = None;
        then.refunded = Amount::ZERO;
        then.offer_delivery = Some(11);
        let event = EventRecord { seq: 1, at: then.created_at, kind: EventKind::StateChanged, trade: then };
        let bytes = encode_event(&event).expect("encode");
        assert_eq!(bytes[0], EVENT_VERSION);
        let StoredEvent::Compact(compact) = decode_event(&bytes).expect("decode") else { panic!("not compact") };
        assert_eq!(compact.clone().join(golden_trade()).expect("join"), event);
        // Joined with another trade, or with a trade lacking the receipt the
        // event saw, it is corruption, not a wrong answer.
        let mut other = golden_trade();
        other.id = TradeId::from_bytes([8; 16]);
        assert!(matches!(compact.join(other), Err(Failure::Corrupt(_))));
        let settled = EventRecord { seq: 2, at: UnixMs(5), kind: EventKind::StateChanged, trade: golden_trade() };
        let StoredEvent::Compact(compact) = decode_event(&encode_event(&settled).expect("encode")).expect("decode")
        else {
            panic!("not compact")
        };
        let mut no_receipt = golden_trade();
        no_receipt.receipt = None;
        assert!(matches!(compact.clone().join(no_receipt), Err(Failure::Corrupt(_))));
        assert_eq!(compact.join(golden_trade()).expect("join"), settled);
        assert!(matches!(decode_event(&[EVENT_VERSION, 0xff]), Err(Failure::Corrupt(_))));
        assert!(matches!(decode_event(&[]), Err(Failure::Corrupt(_))));
    }
}
