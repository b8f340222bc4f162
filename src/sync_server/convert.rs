//! Conversions between wire messages and domain types. Inbound: validating
//! functions that name the field at fault. Outbound: what each party may
//! see (a shop sees a pseudonym, never the subscriber).

use crate::domain::approval::ServerSecret;
use crate::domain::receipt::{handset_commitment, PublishedKey, STATEMENT_VERSION};
use crate::domain::{
    Amount, CarrierId, Currency, Decision, IpKey, IpPrefix, Month, PortRange, RegisterId, ShopId, SubscriberNumber,
    TradeId, UnixMs,
};
use crate::proto;
use crate::store::{
    AccountRecord, EventKind, EventRecord, Funding, LeaseReport, NetworkIdentity, PostingRecord, Receipt,
    RegisterRecord, StatementData, TradeRecord,
};

use super::error::ApiError;
use super::limits::Limits;

pub fn trade_id(field: &'static str, text: &str) -> Result<TradeId, ApiError> {
    TradeId::parse(text).map_err(|e| ApiError::bad_id(field, e))
}

pub fn register_id(field: &'static str, text: &str) -> Result<RegisterId, ApiError> {
    RegisterId::parse(text).map_err(|e| ApiError::bad_id(field, e))
}

pub fn shop_id(field: &'static str, text: &str) -> Result<ShopId, ApiError> {
    ShopId::parse(text).map_err(|e| ApiError::bad_id(field, e))
}

pub fn carrier_id(field: &'static str, text: &str) -> Result<CarrierId, ApiError> {
    CarrierId::parse(text).map_err(|e| ApiError::bad_id(field, e))
}

pub fn subscriber(field: &'static str, text: &str) -> Result<SubscriberNumber, ApiError> {
    SubscriberNumber::parse(text).map_err(|e| ApiError::bad_id(field, e))
}

pub fn currency(field: &'static str, text: &str) -> Result<Currency, ApiError> {
    Currency::parse(text).map_err(|e| ApiError::invalid(field, e))
}

/// A positive amount no larger than the configured maximum.
pub fn amount(field: &'static str, minor: u64, limits: &Limits) -> Result<Amount, ApiError> {
    if minor == 0 {
        return Err(ApiError::invalid(field, "must be greater than zero"));
    }
    if minor > limits.max_amount_minor {
        return Err(ApiError::invalid(field, format!("must be at most {}", limits.max_amount_minor)));
    }
    Ok(Amount::new(minor))
}

/// Printable text of bounded length: no control characters, and (when
/// `required`) not empty or blank.
pub fn text(field: &'static str, value: &str, max_chars: usize, required: bool) -> Result<String, ApiError> {
    if required && value.trim().is_empty() {
        return Err(ApiError::invalid(field, "must not be empty"));
    }
    if value.chars().count() > max_chars {
        return Err(ApiError::invalid(field, format!("must be at most {max_chars} characters")));
    }
    if value.chars().any(|c| c.is_control() || is_invisible_format(c)) {
        return Err(ApiError::invalid(field, "must not contain control or invisible formatting characters"));
    }
    Ok(value.to_owned())
}

/// Invisible characters that change how text around them is shown:
/// zero-width characters, bidirectional overrides and isolates (which can
/// make "100" read as "001" on a handset) and the byte-order mark.
fn is_invisible_format(c: char) -> bool {
    matches!(c, '\u{061C}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}')
}

/// An idempotency key: empty means none; otherwise 1..=64 visible ASCII.
pub fn idempotency_key(field: &'static str, value: &str, max_len: usize) -> Result<Option<String>, ApiError> {
    if value.is_empty() {
        return Ok(None);
    }
    if value.len() > max_len || !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::invalid(field, format!("must be 1..={max_len} visible ASCII characters")));
    }
    Ok(Some(value.to_owned()))
}

/// A time on the wire: non-negative milliseconds since the epoch.
pub fn unix_ms(field: &'static str, value: i64) -> Result<UnixMs, ApiError> {
    u64::try_from(value).map(UnixMs).map_err(|_| ApiError::invalid(field, "must not be negative"))
}

pub fn network_identity(n: &proto::NetworkIdentity) -> Result<NetworkIdentity, ApiError> {
    let ip = IpKey::parse(&n.ip).map_err(|e| ApiError::invalid("network_identity.ip", e))?;
    let port = match n.port {
        0 => None,
        p => Some(u16::try_from(p).map_err(|_| ApiError::invalid("network_identity.port", "must be 0..=65535"))?),
    };
    let observed_at = unix_ms("network_identity.observed_at_ms", n.observed_at_ms)?;
    if observed_at.0 == 0 {
        return Err(ApiError::invalid("network_identity.observed_at_ms", "is required"));
    }
    Ok(NetworkIdentity { ip, port, observed_at })
}

/// CIDR prefixes; the field name is reported with the index at fault.
pub fn prefixes(list: &[String], max: usize) -> Result<Vec<IpPrefix>, ApiError> {
    if list.len() > max {
        return Err(ApiError::invalid("ip_prefixes", format!("at most {max} per call")));
    }
    list.iter()
        .enumerate()
        .map(|(i, text)| {
            IpPrefix::parse(text)
                .map_err(|e| ApiError::InvalidArgument { field: "ip_prefixes", message: format!("[{i}] {text:?} {e}") })
        })
        .collect()
}

/// A port block: both 0 means the whole address.
fn ports(lo: u32, hi: u32) -> Result<PortRange, String> {
    if lo == 0 && hi == 0 {
        return Ok(PortRange::ALL);
    }
    let (Ok(lo), Ok(hi)) = (u16::try_from(lo), u16::try_from(hi)) else {
        return Err("port_lo and port_hi must be 0..=65535".into());
    };
    PortRange::new(lo, hi).map_err(|e| e.to_string())
}

/// A ReportLeases batch; errors name the entry (`starts[2].ip: …`).
pub fn lease_batch(
    r: &proto::ReportLeasesRequest,
    max: usize,
) -> Result<(Vec<LeaseReport>, Vec<LeaseReport>), ApiError> {
    if r.starts.len().saturating_add(r.stops.len()) > max {
        return Err(ApiError::invalid("starts", format!("at most {max} starts and stops per call")));
    }
    let bad = |what: String| ApiError::InvalidArgument { field: "lease", message: what };
    let mut starts = Vec::with_capacity(r.starts.len());
    for (index, s) in r.starts.iter().enumerate() {
        let ip = IpKey::parse(&s.ip).map_err(|e| bad(format!("starts[{index}].ip {e}")))?;
        let ports = ports(s.port_lo, s.port_hi).map_err(|e| bad(format!("starts[{index}].port_lo: {e}")))?;
        let number = SubscriberNumber::parse(&s.subscriber_number)
            .map_err(|e| bad(format!("starts[{index}].subscriber_number: {e}")))?;
        let at =
            u64::try_from(s.start_ms).map_err(|_| bad(format!("starts[{index}].start_ms: must not be negative")))?;
        starts.push(LeaseReport { ip, ports, at: UnixMs(at), subscriber: Some(number), index });
    }
    let mut stops = Vec::with_capacity(r.stops.len());
    for (index, s) in r.stops.iter().enumerate() {
        let ip = IpKey::parse(&s.ip).map_err(|e| bad(format!("stops[{index}].ip {e}")))?;
        let ports = ports(s.port_lo, s.port_hi).map_err(|e| bad(format!("stops[{index}].port_lo: {e}")))?;
        let at = u64::try_from(s.end_ms).map_err(|_| bad(format!("stops[{index}].end_ms: must not be negative")))?;
        stops.push(LeaseReport { ip, ports, at: UnixMs(at), subscriber: None, index });
    }
    Ok((starts, stops))
}

pub fn month(field: &'static str, text: &str) -> Result<Month, ApiError> {
    Month::parse(text).ok_or_else(|| ApiError::invalid(field, "must be YYYY-MM"))
}

/// A statement for the carrier (or the operator): the subscriber's own
/// bill, shop names included.
pub fn statement_to_proto(s: &StatementData, month: Month) -> proto::Statement {
    let (currency, cap) = match &s.subscriber.funding {
        Funding::CarrierBill { currency, monthly_cap } => (currency.code().to_owned(), monthly_cap.minor()),
        Funding::Wallet => (String::new(), 0),
    };
    let mut out = proto::Statement {
        subscriber_number: s.subscriber.number.as_str().to_owned(),
        month: month.to_string(),
        currency,
        monthly_cap_minor: cap,
        ..Default::default()
    };
    for l in &s.lines {
        out.charged_minor = out.charged_minor.saturating_add(l.amount.minor());
        out.refunded_minor = out.refunded_minor.saturating_add(l.refunded.minor());
        out.fee_minor = out.fee_minor.saturating_add(l.fee.minor());
        out.lines.push(proto::BillLine {
            trade_id: l.trade.to_string(),
            shop_id: l.shop.to_string(),
            shop_name: l.shop_name.clone(),
            amount_minor: l.amount.minor(),
            refunded_minor: l.refunded.minor(),
            settled_at_ms: ms(l.settled_at),
            fee_minor: l.fee.minor(),
        });
    }
    out.total_minor = out.charged_minor.saturating_sub(out.refunded_minor);
    out
}

pub fn decision(field: &'static str, value: i32) -> Result<Decision, ApiError> {
    match proto::Decision::try_from(value) {
        Ok(proto::Decision::Approve) => Ok(Decision::Approve),
        Ok(proto::Decision::Decline) => Ok(Decision::Decline),
        Ok(proto::Decision::Unspecified) | Err(_) => Err(ApiError::invalid(field, "must be APPROVE or DECLINE")),
    }
}

/// Milliseconds for the wire (int64); saturates far beyond any real date.
pub fn ms(t: crate::domain::UnixMs) -> i64 {
    i64::try_from(t.0).unwrap_or(i64::MAX)
}

/// A trade as its shop may see it: the payer only as a pseudonym.
pub fn trade_for_shop(t: &TradeRecord, secret: &ServerSecret) -> proto::Trade {
    proto::Trade {
        trade_id: t.id.to_string(),
        register_id: t.request.register.to_string(),
        amount_minor: t.request.amount.minor(),
        currency: t.request.currency.code().to_owned(),
        description: t.request.description.clone(),
        state: proto::TradeState::from(t.state) as i32,
        failure_reason: proto::FailureReason::from(t.failure) as i32,
        binding_code: t.binding_code.clone(),
        created_at_ms: ms(t.created_at),
        expires_at_ms: ms(t.expires_at),
        finished_at_ms: t.finished_at.map_or(0, ms),
        payer_pseudonym: secret.payer_pseudonym(&t.shop, &t.request.payer),
        receipt: receipt_for_shop(t),
        idempotency_key: t.idempotency_key.clone().unwrap_or_default(),
        refunded_minor: t.refunded.minor(),
    }
}

/// A settled trade's receipt as its shop receives it: never the handset
/// key, only its per-trade commitment.
pub fn receipt_for_shop(t: &TradeRecord) -> Option<proto::ApprovalReceipt> {
    match t.receipt.as_ref()? {
        Receipt::Legacy { signed_payload, signature, shop_key_fingerprint } => Some(proto::ApprovalReceipt {
            signed_payload: signed_payload.clone(),
            signature: signature.clone(),
            handset_key_fingerprint: shop_key_fingerprint.to_vec(),
            ..Default::default()
        }),
        Receipt::Countersigned { signature, handset_key, key_id, countersignature } => {
            // The payload is rebuilt from the trade's fixed fields: the
            // bytes the handset signed and the settlement verified.
            let payload = match t.approval_payload(Decision::Approve) {
                Ok(p) => p.to_bytes(),
                Err(e) => {
                    tracing::error!(trade_id = %t.id, error = %e, "receipt payload cannot be rebuilt");
                    return None;
                }
            };
            Some(proto::ApprovalReceipt {
                signed_payload: payload,
                signature: signature.0.to_vec(),
                handset_key_fingerprint: Vec::new(),
                handset_commitment: handset_commitment(t.id, handset_key).to_vec(),
                settled_at_ms: t.finished_at.map_or(0, ms),
                receipt_key_id: key_id.as_bytes().to_vec(),
                countersignature: countersignature.0.to_vec(),
                statement_version: u32::from(STATEMENT_VERSION),
            })
        }
    }
}

/// The receipt-signing public keys as published.
pub fn receipt_keys_to_proto(keys: &[PublishedKey]) -> proto::ReceiptKeys {
    proto::ReceiptKeys {
        keys: keys
            .iter()
            .map(|k| proto::ReceiptKey {
                key_id: k.id.as_bytes().to_vec(),
                public_key: k.public_key.to_vec(),
                created_at_ms: ms(k.created_at),
                retired_at_ms: k.retired_at.map_or(0, ms),
            })
            .collect(),
    }
}

pub fn event_for_shop(e: &EventRecord, secret: &ServerSecret) -> proto::TradeEvent {
    let (kind, refund_minor, refund_id) = match e.kind {
        EventKind::StateChanged => (proto::EventKind::StateChanged, 0, 0),
        EventKind::Refunded { amount, refund_id } => (proto::EventKind::Refunded, amount.minor(), refund_id),
    };
    proto::TradeEvent {
        sequence: e.seq,
        at_ms: ms(e.at),
        trade: Some(trade_for_shop(&e.trade, secret)),
        kind: kind as i32,
        refund_minor,
        refund_id,
    }
}

pub fn register_to_proto(r: &RegisterRecord) -> proto::Register {
    proto::Register {
        register_id: r.id.to_string(),
        label: r.label.clone(),
        open: r.open,
        opened_at_ms: ms(r.opened_at),
        closed_at_ms: r.closed_at.map_or(0, ms),
        open_trades: r.open_trades,
    }
}

pub fn account_to_proto(a: &AccountRecord) -> proto::Account {
    proto::Account {
        name: a.name.key(),
        currency: a.name.currency().code().to_owned(),
        debits_minor: a.balance.debits.minor(),
        credits_minor: a.balance.credits.minor(),
        // Saturates only if a single account held more than 9.2e18 units.
        balance_minor: i64::try_from(a.balance.net()).unwrap_or(if a.balance.net() < 0 { i64::MIN } else { i64::MAX }),
    }
}

pub fn posting_to_proto(p: &PostingRecord) -> proto::Posting {
    let (debit, credit) = match p.side {
        crate::domain::Side::Debit => (p.amount.minor(), 0),
        crate::domain::Side::Credit => (0, p.amount.minor()),
    };
    proto::Posting {
        posting_id: p.posting_id,
        set_id: p.set_id,
        account: p.account.key(),
        currency: p.account.currency().code().to_owned(),
        debit_minor: debit,
        credit_minor: credit,
        trade_id: p.trade.map(|t| t.to_string()).unwrap_or_default(),
        kind: p.kind.name().to_owned(),
        at_ms: ms(p.at),
    }
}

/// A shop payout on the wire.
pub fn payout_to_proto(p: &crate::store::PayoutRecord) -> proto::ShopPayout {
    proto::ShopPayout {
        payout_id: p.payout_id,
        shop_id: p.shop.to_string(),
        currency: p.currency.code().to_owned(),
        amount_minor: p.amount.minor(),
        reference: p.reference.clone(),
        paid_at_ms: ms(p.at),
        idempotency_key: p.idempotency_key.clone(),
    }
}

pub fn remittance_to_proto(r: &crate::store::RemittanceRecord) -> proto::Remittance {
    proto::Remittance {
        remittance_id: r.remittance_id,
        carrier_id: r.carrier.to_string(),
        shop_id: r.shop.to_string(),
        month: r.month.to_string(),
        currency: r.currency.code().to_owned(),
        amount_minor: r.amount.minor(),
        reference: r.reference.clone(),
        remitted_at_ms: ms(r.at),
        idempotency_key: r.idempotency_key.clone(),
    }
}

/// Sums of u64 amounts saturated into the wire's integer types (a month
/// of one shop never comes near them).
fn sat_u64(v: u128) -> u64 {
    u64::try_from(v).unwrap_or(u64::MAX)
}
fn sat_i64(v: i128) -> i64 {
    i64::try_from(v).unwrap_or(if v < 0 { i64::MIN } else { i64::MAX })
}

/// One page (at most `limit` shops) of a carrier's statement for a month,
/// as AdminService.GetCarrierStatement and, for the caller itself,
/// CarrierService.GetRemittanceStatement answer it.
pub fn carrier_statement_to_proto(
    carrier: &crate::domain::CarrierId,
    month: crate::domain::Month,
    lines: &[crate::store::CarrierStatementLine],
    limit: usize,
) -> proto::CarrierStatement {
    // A full page may have more after it; the last shop listed is the
    // cursor (a shop's currencies are never split across pages).
    let mut shops: Vec<&crate::domain::ShopId> = lines.iter().map(|l| &l.shop).collect();
    shops.dedup();
    let next =
        if shops.len() >= limit { shops.last().map_or_else(String::new, |s| s.to_string()) } else { String::new() };
    proto::CarrierStatement {
        carrier_id: carrier.to_string(),
        month: month.to_string(),
        lines: lines.iter().map(statement_line_to_proto).collect(),
        next_after_shop_id: next,
    }
}

pub fn statement_line_to_proto(l: &crate::store::CarrierStatementLine) -> proto::CarrierStatementLine {
    proto::CarrierStatementLine {
        shop_id: l.shop.to_string(),
        currency: l.currency.code().to_owned(),
        gross_minor: sat_u64(l.sales.gross),
        fee_minor: sat_u64(l.sales.fee),
        refunded_minor: sat_u64(l.sales.refunded),
        settlements: l.sales.settlements,
        owed_minor: sat_i64(l.sales.owed()),
        remitted_minor: sat_u64(l.remitted),
        outstanding_minor: sat_i64(l.outstanding()),
        remittances: l.remittances,
    }
}

/// A backup as its manifest describes it.
pub fn backup_to_proto(dir: &std::path::Path, m: &crate::store::backup::Manifest) -> proto::BackupStoreResponse {
    let dump = m.files.first();
    proto::BackupStoreResponse {
        dir: dir.display().to_string(),
        taken_at_ms: ms(crate::domain::UnixMs(m.taken_at_ms)),
        last_posting_id: m.point.last_posting_id,
        shops_with_events: u64::try_from(m.point.event_heads.len()).unwrap_or(u64::MAX),
        trades: m.records("trades"),
        postings: m.records("postings"),
        accounts: m.records("accounts"),
        events: m.records("events"),
        records: m.point.records.values().fold(0u64, |a, n| a.saturating_add(*n)),
        writer_pause_us: m.writer_pause_us,
        dump_bytes: dump.map_or(0, |f| f.bytes),
        dump_sha256: dump.map(|f| f.sha256.clone()).unwrap_or_default(),
    }
}

/// A shop as the operator sees it.
pub fn shop_info(s: &crate::store::ShopStatus) -> proto::ShopInfo {
    proto::ShopInfo {
        shop_id: s.shop.id.to_string(),
        display_name: s.shop.display_name.clone(),
        created_at_ms: ms(s.shop.created_at),
        suspended: s.suspended_at.is_some(),
        suspended_at_ms: s.suspended_at.map_or(0, ms),
        last_sequence: s.shop.next_event_seq.saturating_sub(1),
    }
}

pub fn carrier_info(c: &crate::store::CarrierRecord) -> proto::CarrierInfo {
    proto::CarrierInfo {
        carrier_id: c.id.to_string(),
        display_name: c.display_name.clone(),
        created_at_ms: ms(c.created_at),
    }
}

/// A trade's whole history as the operator may see it: the payer's
/// number, carrier and handset key beside the shop's view.
pub fn trade_history_to_proto(h: &crate::store::TradeHistory, secret: &ServerSecret) -> proto::TradeHistory {
    let t = &h.trade;
    let handset = match &t.receipt {
        Some(Receipt::Countersigned { handset_key, .. }) => handset_key.to_vec(),
        Some(Receipt::Legacy { .. }) | None => Vec::new(),
    };
    proto::TradeHistory {
        shop_id: t.shop.to_string(),
        trade: Some(trade_for_shop(t, secret)),
        subscriber_number: t.request.payer.as_str().to_owned(),
        carrier_id: t.carrier.as_ref().map_or_else(String::new, ToString::to_string),
        handset_public_key: handset,
        events: h
            .events
            .iter()
            .map(|e| {
                let (kind, refund_minor, refund_id) = match e.kind {
                    EventKind::StateChanged => (proto::EventKind::StateChanged, 0, 0),
                    EventKind::Refunded { amount, refund_id } => {
                        (proto::EventKind::Refunded, amount.minor(), refund_id)
                    }
                };
                proto::TradeHistoryEvent {
                    sequence: e.seq,
                    at_ms: ms(e.at),
                    kind: kind as i32,
                    state: proto::TradeState::from(e.trade.state) as i32,
                    refund_minor,
                    refund_id,
                }
            })
            .collect(),
        postings: h.postings.iter().map(posting_to_proto).collect(),
    }
}

/// A resolve mode on the wire.
pub fn resolve_mode(mode: crate::domain::ResolveMode) -> proto::ResolveMode {
    match mode {
        crate::domain::ResolveMode::Push => proto::ResolveMode::Push,
        crate::domain::ResolveMode::Ask => proto::ResolveMode::Ask,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_bounded_and_printable() {
        let check = |v: &str, ok: bool| assert_eq!(text("label", v, 5, true).is_ok(), ok, "{v:?}");
        check("shop", true);
        check("ショップ", true);
        check("", false);
        check("   ", false);
        check("abcdef", false);
        check("a\nb", false);
        check("a\u{7f}", false);
        check("1\u{202E}00", false);
        check("a\u{200B}b", false);
        check("\u{FEFF}ab", false);
        assert!(text("description", "", 5, false).is_ok());
    }

    #[test]
    fn amounts_are_positive_and_bounded() {
        let limits = Limits::default();
        assert!(amount("amount_minor", 0, &limits).is_err());
        assert!(amount("amount_minor", limits.max_amount_minor, &limits).is_ok());
        assert!(amount("amount_minor", limits.max_amount_minor + 1, &limits).is_err());
        assert!(amount("amount_minor", u64::MAX, &limits).is_err());
    }

    #[test]
    fn idempotency_keys_are_visible_ascii() {
        assert_eq!(idempotency_key("k", "", 64), Ok(None));
        assert_eq!(idempotency_key("k", "order-1", 64), Ok(Some("order-1".into())));
        assert!(idempotency_key("k", "a b", 64).is_err());
        assert!(idempotency_key("k", &"x".repeat(65), 64).is_err());
        assert!(idempotency_key("k", "é", 64).is_err());
    }

    #[test]
    fn unknown_decisions_are_refused() {
        assert!(decision("decision", 0).is_err());
        assert!(decision("decision", 99).is_err());
        assert_eq!(decision("decision", 1), Ok(Decision::Approve));
    }
}
