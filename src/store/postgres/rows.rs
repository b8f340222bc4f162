//! Rows to records and back: the column lists the backend selects, and
//! the conversions of each row into the records the engine sees. Every
//! value read is checked (an id's width, a state's name, an amount's
//! range), so a row no code path could have written is `Corrupt`, never a
//! panic.

use tokio_postgres::Row;

use super::numeric::Minor;
use super::PgError;
use crate::domain::receipt::ReceiptKeyId;
use crate::domain::{
    AccountName, Amount, CarrierId, Currency, Decision, FailureReason, IpKey, RegisterId, ShopId, Side,
    SubscriberNumber, TradeId, TradeState, UnixMs,
};
use crate::store::records::{
    BillLine, Delivery, DeliveryBody, EventKind, EventRecord, OfferBody, PostingKind, PostingRecord, Receipt,
    RegisterRecord, Sig64, SignedTerms, TradeRecord, TradeRequest,
};

/// The columns of `trades` every trade read selects, in
/// [`trade_at`]'s order.
pub const TRADE_COLS: &str = "t.id, t.shop, t.register, t.carrier, t.payer, t.amount, t.currency, t.description, \
     t.ttl_ms, t.state, t.failure, t.binding_code, t.created_at, t.expires_at, t.finished_at, t.decision, \
     t.receipt_signature, t.receipt_handset_key, t.receipt_key_id, t.receipt_countersignature, t.idempotency_key, \
     t.offer_delivery, t.refunded, t.screen_digest";
/// How many columns [`TRADE_COLS`] has.
pub const TRADE_COL_COUNT: usize = 24;

pub const OUTBOX_COLS: &str = "delivery_id, carrier, kind, trade, payer, withdraw_state, shop, shop_name, register, \
     register_label, amount, currency, description, expires_at, binding_code";

pub const REGISTER_COLS: &str = "shop, id, label, open, opened_at, closed_at, open_trades";

pub const POSTING_COLS: &str = "p.posting_id, p.set_id, p.account, p.side, p.amount, s.trade, s.kind, s.at";

pub const BILL_COLS: &str = "trade, set_id, shop, shop_name, amount, currency, fee, fee_bps, settled_at, refunded";

pub fn corrupt(what: impl Into<String>) -> PgError {
    PgError::Corrupt(what.into())
}

/// A `u64` kept in a `bigint` (instants, ids, counters).
pub fn big(v: u64) -> Result<i64, PgError> {
    i64::try_from(v).map_err(|_| corrupt(format!("{v} does not fit a bigint")))
}

pub fn unbig(v: i64) -> Result<u64, PgError> {
    u64::try_from(v).map_err(|_| corrupt(format!("{v} is negative")))
}

pub fn ms(v: i64) -> Result<UnixMs, PgError> {
    unbig(v).map(UnixMs)
}

pub fn id16(bytes: &[u8]) -> Result<[u8; 16], PgError> {
    bytes.try_into().map_err(|_| corrupt(format!("an id of {} bytes, not 16", bytes.len())))
}

pub fn trade_id(bytes: &[u8]) -> Result<TradeId, PgError> {
    id16(bytes).map(TradeId::from_bytes)
}

pub fn register_id(bytes: &[u8]) -> Result<RegisterId, PgError> {
    id16(bytes).map(RegisterId::from_bytes)
}

pub fn shop_id(text: &str) -> Result<ShopId, PgError> {
    ShopId::parse(text).map_err(|e| corrupt(format!("shop id {text:?}: {e}")))
}

pub fn carrier_id(text: &str) -> Result<CarrierId, PgError> {
    CarrierId::parse(text).map_err(|e| corrupt(format!("carrier id {text:?}: {e}")))
}

pub fn number(text: &str) -> Result<SubscriberNumber, PgError> {
    SubscriberNumber::parse(text).map_err(|e| corrupt(format!("subscriber number: {e}")))
}

pub fn currency(text: &str) -> Result<Currency, PgError> {
    Currency::parse(text).map_err(|e| corrupt(format!("currency {text:?}: {e}")))
}

pub fn amount(m: Minor) -> Amount {
    m.into()
}

pub fn state(name: &str) -> Result<TradeState, PgError> {
    TradeState::ALL.into_iter().find(|s| s.name() == name).ok_or_else(|| corrupt(format!("trade state {name}")))
}

const FAILURES: [FailureReason; 6] = [
    FailureReason::InsufficientFunds,
    FailureReason::BadSignature,
    FailureReason::NoHandset,
    FailureReason::SpendingCap,
    FailureReason::PayerUnknown,
    FailureReason::CarrierRefusedShop,
];

pub fn failure(name: Option<&str>) -> Result<Option<FailureReason>, PgError> {
    name.map(|n| FAILURES.into_iter().find(|f| f.name() == n).ok_or_else(|| corrupt(format!("failure {n}"))))
        .transpose()
}

pub fn decision_name(d: Decision) -> &'static str {
    match d {
        Decision::Approve => "APPROVE",
        Decision::Decline => "DECLINE",
    }
}

pub fn decision(name: Option<&str>) -> Result<Option<Decision>, PgError> {
    match name {
        None => Ok(None),
        Some("APPROVE") => Ok(Some(Decision::Approve)),
        Some("DECLINE") => Ok(Some(Decision::Decline)),
        Some(other) => Err(corrupt(format!("decision {other}"))),
    }
}

pub fn posting_kind(name: &str) -> Result<PostingKind, PgError> {
    [PostingKind::TopUp, PostingKind::Settlement, PostingKind::Refund, PostingKind::Payout, PostingKind::Remittance]
        .into_iter()
        .find(|k| k.name() == name)
        .ok_or_else(|| corrupt(format!("posting kind {name}")))
}

/// An account's name from its key (`AccountName::key`): slugs and E.164
/// numbers never contain `:`, so the parts split cleanly.
pub fn account_name(key: &str) -> Result<AccountName, PgError> {
    let parts: Vec<&str> = key.split(':').collect();
    let bad = || corrupt(format!("account name {key:?}"));
    let name = match parts.as_slice() {
        ["system", "funding", c] => AccountName::SystemFunding(currency(c)?),
        ["system", "payout", c] => AccountName::SystemPayout(currency(c)?),
        ["system", "remittance", c] => AccountName::SystemRemittance(currency(c)?),
        ["shop", s, c] => AccountName::ShopPayable(shop_id(s)?, currency(c)?),
        ["wallet", n, c] => AccountName::Wallet(number(n)?, currency(c)?),
        ["bill", carrier, n, c] => AccountName::CarrierBill(carrier_id(carrier)?, number(n)?, currency(c)?),
        ["carrier", carrier, "fees", c] => AccountName::CarrierFees(carrier_id(carrier)?, currency(c)?),
        ["carrier", carrier, "remitted", c] => AccountName::CarrierRemitted(carrier_id(carrier)?, currency(c)?),
        _ => return Err(bad()),
    };
    if name.key() != key {
        return Err(bad());
    }
    Ok(name)
}

/// A trade from the [`TRADE_COLS`] starting at column `at`.
pub fn trade_at(row: &Row, at: usize) -> Result<TradeRecord, PgError> {
    let c = |i: usize| at + i;
    let carrier: Option<&str> = row.try_get(c(3))?;
    let receipt = match (
        row.try_get::<_, Option<&[u8]>>(c(16))?,
        row.try_get::<_, Option<&[u8]>>(c(17))?,
        row.try_get::<_, Option<&[u8]>>(c(18))?,
        row.try_get::<_, Option<&[u8]>>(c(19))?,
    ) {
        (Some(signature), Some(key), Some(key_id), Some(counter)) => Some(Receipt::Countersigned {
            signature: Sig64(signature.try_into().map_err(|_| corrupt("receipt signature width"))?),
            handset_key: key.try_into().map_err(|_| corrupt("receipt key width"))?,
            key_id: ReceiptKeyId::from_bytes(key_id.try_into().map_err(|_| corrupt("receipt key id width"))?),
            countersignature: Sig64(counter.try_into().map_err(|_| corrupt("countersignature width"))?),
        }),
        (None, None, None, None) => None,
        _ => return Err(corrupt("part of a receipt")),
    };
    let screen: &[u8] = row.try_get(c(23))?;
    let terms = SignedTerms::V2 { screen_digest: screen.try_into().map_err(|_| corrupt("screen digest width"))? };
    let offer: Option<i64> = row.try_get(c(21))?;
    Ok(TradeRecord {
        id: trade_id(row.try_get(c(0))?)?,
        shop: shop_id(row.try_get(c(1))?)?,
        carrier: carrier.map(carrier_id).transpose()?,
        request: TradeRequest {
            register: register_id(row.try_get(c(2))?)?,
            payer: number(row.try_get(c(4))?)?,
            amount: amount(row.try_get(c(5))?),
            currency: currency(row.try_get(c(6))?)?,
            description: row.try_get(c(7))?,
            ttl_ms: unbig(row.try_get(c(8))?)?,
        },
        state: state(row.try_get(c(9))?)?,
        failure: failure(row.try_get(c(10))?)?,
        binding_code: row.try_get(c(11))?,
        created_at: ms(row.try_get(c(12))?)?,
        expires_at: ms(row.try_get(c(13))?)?,
        finished_at: row.try_get::<_, Option<i64>>(c(14))?.map(ms).transpose()?,
        decision: decision(row.try_get(c(15))?)?,
        receipt,
        idempotency_key: row.try_get(c(20))?,
        offer_delivery: offer.map(unbig).transpose()?,
        refunded: amount(row.try_get(c(22))?),
        terms,
    })
}

/// The columns of `events` an event read selects before the trade's.
pub const EVENT_COLS: &str = "e.seq, e.at, e.kind, e.refund_amount, e.refund_set, e.state, e.failure, e.decision, \
     e.finished_at, e.refunded, e.offer_delivery, e.has_receipt";
const EVENT_COL_COUNT: usize = 12;

/// An event: its own columns, then the trade's ([`TRADE_COLS`]) as it is
/// now, overlaid with what the event recorded of the trade's changing
/// fields (state, failure, decision, end, refunds, offer, receipt).
pub fn event(row: &Row) -> Result<EventRecord, PgError> {
    let mut trade = trade_at(row, EVENT_COL_COUNT)?;
    trade.state = state(row.try_get(5)?)?;
    trade.failure = failure(row.try_get(6)?)?;
    trade.decision = decision(row.try_get(7)?)?;
    trade.finished_at = row.try_get::<_, Option<i64>>(8)?.map(ms).transpose()?;
    trade.refunded = amount(row.try_get(9)?);
    trade.offer_delivery = row.try_get::<_, Option<i64>>(10)?.map(unbig).transpose()?;
    if !row.try_get::<_, bool>(11)? {
        trade.receipt = None;
    }
    let kind = match row.try_get::<_, &str>(2)? {
        "STATE_CHANGED" => EventKind::StateChanged,
        "REFUNDED" => {
            let refund: Option<Minor> = row.try_get(3)?;
            let set: Option<i64> = row.try_get(4)?;
            match (refund, set) {
                (Some(a), Some(s)) => EventKind::Refunded { amount: amount(a), refund_id: unbig(s)? },
                _ => return Err(corrupt("a refund event without its refund")),
            }
        }
        other => return Err(corrupt(format!("event kind {other}"))),
    };
    Ok(EventRecord { seq: unbig(row.try_get(0)?)?, at: ms(row.try_get(1)?)?, kind, trade })
}

pub fn delivery(row: &Row) -> Result<Delivery, PgError> {
    let trade = trade_id(row.try_get(3)?)?;
    let payer = number(row.try_get(4)?)?;
    let body = match row.try_get::<_, &str>(2)? {
        "WITHDRAW" => {
            let s: Option<&str> = row.try_get(5)?;
            DeliveryBody::Withdraw { trade, payer, state: state(s.ok_or_else(|| corrupt("withdrawal state"))?)? }
        }
        "OFFER" => {
            let text = |i: usize| -> Result<String, PgError> {
                row.try_get::<_, Option<String>>(i)?.ok_or_else(|| corrupt("offer field"))
            };
            let register: Option<Vec<u8>> = row.try_get(8)?;
            let amount_minor: Option<Minor> = row.try_get(10)?;
            let expires: Option<i64> = row.try_get(13)?;
            DeliveryBody::Offer(OfferBody {
                trade,
                payer,
                shop: shop_id(&text(6)?)?,
                shop_name: text(7)?,
                register: register_id(&register.ok_or_else(|| corrupt("offer register"))?)?,
                register_label: text(9)?,
                amount: amount(amount_minor.ok_or_else(|| corrupt("offer amount"))?),
                currency: currency(&text(11)?)?,
                description: text(12)?,
                expires_at: ms(expires.ok_or_else(|| corrupt("offer expiry"))?)?,
                binding_code: text(14)?,
            })
        }
        other => return Err(corrupt(format!("delivery kind {other}"))),
    };
    Ok(Delivery { delivery_id: unbig(row.try_get(0)?)?, carrier: carrier_id(row.try_get(1)?)?, body })
}

pub fn register(row: &Row) -> Result<RegisterRecord, PgError> {
    Ok(RegisterRecord {
        shop: shop_id(row.try_get(0)?)?,
        id: register_id(row.try_get(1)?)?,
        label: row.try_get(2)?,
        open: row.try_get(3)?,
        opened_at: ms(row.try_get(4)?)?,
        closed_at: row.try_get::<_, Option<i64>>(5)?.map(ms).transpose()?,
        open_trades: u32::try_from(row.try_get::<_, i32>(6)?).map_err(|_| corrupt("open trades below zero"))?,
    })
}

pub fn posting(row: &Row) -> Result<PostingRecord, PgError> {
    let side = match row.try_get::<_, &str>(3)? {
        "D" => Side::Debit,
        "C" => Side::Credit,
        other => return Err(corrupt(format!("posting side {other}"))),
    };
    let trade: Option<Vec<u8>> = row.try_get(5)?;
    Ok(PostingRecord {
        posting_id: unbig(row.try_get(0)?)?,
        set_id: unbig(row.try_get(1)?)?,
        account: account_name(row.try_get(2)?)?,
        side,
        amount: amount(row.try_get(4)?),
        trade: trade.as_deref().map(trade_id).transpose()?,
        kind: posting_kind(row.try_get(6)?)?,
        at: ms(row.try_get(7)?)?,
    })
}

pub fn bill_line(row: &Row) -> Result<BillLine, PgError> {
    Ok(BillLine {
        trade: trade_id(row.try_get(0)?)?,
        set_id: unbig(row.try_get(1)?)?,
        shop: shop_id(row.try_get(2)?)?,
        shop_name: row.try_get(3)?,
        amount: amount(row.try_get(4)?),
        currency: currency(row.try_get(5)?)?,
        fee: amount(row.try_get(6)?),
        fee_bps: u32::try_from(row.try_get::<_, i32>(7)?).map_err(|_| corrupt("fee below zero"))?,
        settled_at: ms(row.try_get(8)?)?,
        refunded: amount(row.try_get(9)?),
    })
}

pub fn ip(bytes: &[u8]) -> Result<IpKey, PgError> {
    id16(bytes).map(IpKey)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_names_round_trip_through_their_keys() {
        let jpy = Currency::parse("JPY").expect("JPY");
        let n = SubscriberNumber::parse("+818012345678").expect("number");
        let shop = ShopId::parse("acme-books_2").expect("shop");
        let carrier = CarrierId::parse("docomo").expect("carrier");
        for name in [
            AccountName::SystemFunding(jpy),
            AccountName::ShopPayable(shop, jpy),
            AccountName::Wallet(n.clone(), jpy),
            AccountName::CarrierBill(carrier.clone(), n, jpy),
            AccountName::CarrierFees(carrier, jpy),
        ] {
            assert_eq!(account_name(&name.key()).expect("parses"), name);
        }
        for bad in ["", "shop:acme", "wallet:12:JPY", "shop:Acme:JPY", "system:funding:JPY:x"] {
            assert!(account_name(bad).is_err(), "{bad}");
        }
    }
}
