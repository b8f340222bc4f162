//! Every request message validated in one place, one pure function per
//! RPC: wire message in, validated domain values out, or
//! `INVALID_ARGUMENT` naming the field at fault. The handlers call these
//! first and act only on what they return; the fuzz target (`fuzz/`) feeds
//! them arbitrary decoded messages. Nothing here reads the store or the
//! clock, so "well-formed" is decided identically everywhere.

use std::time::Duration;

use crate::carrier::ResolveReply;
use crate::domain::approval::valid_public_key;
use crate::domain::{Amount, Currency, Decision, RegisterId, ShopId, SubscriberNumber, TradeId};
use crate::domain::{CarrierId, Principal, ResolveMode, ED25519_SIGNATURE_LEN};
use crate::proto;
use crate::store::{Funding, LeaseReport, PayerRef, PayoutAmount, TradeRequest};

use super::convert;
use super::engine::ShopTrade;
use super::error::ApiError;
use super::limits::{self, Limits};
use crate::domain::network::{IpPrefix, Month};
use crate::domain::UnixMs;

/// Every field name an `INVALID_ARGUMENT` from this module may start with.
pub const FIELDS: &[&str] = &[
    "dir",
    "label",
    "register_id",
    "amount_minor",
    "currency",
    "description",
    "ttl_seconds",
    "idempotency_key",
    "payer",
    "subscriber_number",
    "trade_id",
    "wait_ms",
    "after_sequence",
    "body",
    "answer.trade_id",
    "answer.decision",
    "answer.signature",
    "resolved.outcome",
    "resolved.subscriber_number",
    "mode",
    "resolve_mode",
    "funding",
    "public_key",
    "shop_id",
    "carrier_id",
    "display_name",
    "prefix",
    "limit",
    "network_identity.ip",
    "network_identity.port",
    "network_identity.observed_at_ms",
    "bill_currency",
    "monthly_cap_minor",
    "ip_prefixes",
    "fee_bps",
    "starts",
    "lease",
    "month",
    "from_ms",
    "to_ms",
];

pub fn open_register(r: &proto::OpenRegisterRequest) -> Result<String, ApiError> {
    convert::text("label", &r.label, limits::MAX_LABEL_CHARS, true)
}

pub fn close_register(r: &proto::CloseRegisterRequest) -> Result<RegisterId, ApiError> {
    convert::register_id("register_id", &r.register_id)
}

/// A trade's lifetime: 0 means the default; otherwise within the limits.
pub fn ttl(field: &'static str, seconds: u32, limits: &Limits) -> Result<Duration, ApiError> {
    let ttl = match seconds {
        0 => limits.default_ttl,
        s => Duration::from_secs(u64::from(s)),
    };
    if ttl < limits.min_ttl || ttl > limits.max_ttl {
        return Err(ApiError::invalid(
            field,
            format!("must be {}..={} seconds (0 for the default)", limits.min_ttl.as_secs(), limits.max_ttl.as_secs()),
        ));
    }
    Ok(ttl)
}

/// A CreateTrade, checked once here (the time to live included) and kept
/// as the shop sent it: the payer by number or by network identity.
pub fn create_trade(r: &proto::CreateTradeRequest, limits: &Limits) -> Result<ShopTrade, ApiError> {
    let payer = match &r.payer {
        Some(proto::create_trade_request::Payer::SubscriberNumber(n)) => {
            PayerRef::Number(convert::subscriber("subscriber_number", n)?)
        }
        Some(proto::create_trade_request::Payer::NetworkIdentity(n)) => {
            PayerRef::Network(convert::network_identity(n)?)
        }
        None => return Err(ApiError::invalid("payer", "name the payer (subscriber_number or network_identity)")),
    };
    let register = convert::register_id("register_id", &r.register_id)?;
    let amount = convert::amount("amount_minor", r.amount_minor, limits)?;
    let currency = convert::currency("currency", &r.currency)?;
    let description = convert::text("description", &r.description, limits::MAX_DESCRIPTION_CHARS, false)?;
    let ttl = ttl("ttl_seconds", r.ttl_seconds, limits)?;
    let idempotency_key =
        convert::idempotency_key("idempotency_key", &r.idempotency_key, limits::MAX_IDEMPOTENCY_KEY_LEN)?;
    let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
    Ok(ShopTrade { request: TradeRequest { register, payer, amount, currency, description, ttl_ms }, idempotency_key })
}

pub fn get_trade(r: &proto::GetTradeRequest) -> Result<TradeId, ApiError> {
    convert::trade_id("trade_id", &r.trade_id)
}

/// The trade and how long to wait: 0 means the default; more than the
/// maximum is refused, like every other out-of-range field (a client that
/// asks for longer would otherwise be answered early without knowing why).
pub fn await_trade(r: &proto::AwaitTradeRequest) -> Result<(TradeId, Duration), ApiError> {
    let id = convert::trade_id("trade_id", &r.trade_id)?;
    let wait = match r.wait_ms {
        0 => limits::DEFAULT_AWAIT,
        ms => Duration::from_millis(u64::from(ms)),
    };
    if wait > limits::MAX_AWAIT {
        return Err(ApiError::invalid(
            "wait_ms",
            format!("must be 0..={} (0 for {} ms)", limits::MAX_AWAIT.as_millis(), limits::DEFAULT_AWAIT.as_millis()),
        ));
    }
    Ok((id, wait))
}

pub fn cancel_trade(r: &proto::CancelTradeRequest) -> Result<TradeId, ApiError> {
    convert::trade_id("trade_id", &r.trade_id)
}

pub fn dispute_trade(r: &proto::DisputeTradeRequest) -> Result<TradeId, ApiError> {
    convert::trade_id("trade_id", &r.trade_id)
}

/// A validated RefundTrade.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refund {
    pub trade: TradeId,
    pub amount: Amount,
    pub idempotency_key: Option<String>,
}

pub fn refund_trade(r: &proto::RefundTradeRequest, limits: &Limits) -> Result<Refund, ApiError> {
    Ok(Refund {
        trade: convert::trade_id("trade_id", &r.trade_id)?,
        amount: convert::amount("amount_minor", r.amount_minor, limits)?,
        idempotency_key: convert::idempotency_key(
            "idempotency_key",
            &r.idempotency_key,
            limits::MAX_IDEMPOTENCY_KEY_LEN,
        )?,
    })
}

/// A validated WatchTrades (the cursor is checked against the shop's head
/// by the handler).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watch {
    pub after_sequence: u64,
    pub register: Option<RegisterId>,
}

pub fn watch_trades(r: &proto::WatchTradesRequest) -> Result<Watch, ApiError> {
    let register = match r.register_id.as_str() {
        "" => None,
        text => Some(convert::register_id("register_id", text)?),
    };
    Ok(Watch { after_sequence: r.after_sequence, register })
}

/// One validated message from a carrier's relay stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Uplink {
    Ack {
        delivery_id: u64,
    },
    Answer {
        trade: TradeId,
        decision: Decision,
        signature: [u8; ED25519_SIGNATURE_LEN],
    },
    /// A carrier's answer to a resolve request (ask mode). A malformed
    /// answer is still an answer to its request: it ends the wait as
    /// refused, instead of letting the shop wait for the timeout.
    Resolved {
        request_id: u64,
        reply: ResolveReply,
    },
}

pub fn relay_up(m: &proto::RelayUp) -> Result<Uplink, ApiError> {
    match &m.body {
        Some(proto::relay_up::Body::Ack(ack)) => Ok(Uplink::Ack { delivery_id: ack.delivery_id }),
        Some(proto::relay_up::Body::Answer(answer)) => {
            let trade = convert::trade_id("answer.trade_id", &answer.trade_id)?;
            let decision = convert::decision("answer.decision", answer.decision)?;
            let signature = answer.signature.as_slice().try_into().map_err(|_| {
                ApiError::invalid(
                    "answer.signature",
                    format!("must be {ED25519_SIGNATURE_LEN} bytes (an Ed25519 signature)"),
                )
            })?;
            Ok(Uplink::Answer { trade, decision, signature })
        }
        Some(proto::relay_up::Body::Resolved(r)) => {
            Ok(Uplink::Resolved { request_id: r.request_id, reply: resolved(r) })
        }
        None => Err(ApiError::invalid("body", "must be ack, answer or resolved")),
    }
}

/// A resolve answer as a reply: FOUND with a valid number, MISS or REFUSED
/// with none; anything else is malformed, naming the field.
fn resolved(r: &proto::ResolveAnswer) -> ResolveReply {
    let malformed = |field: &str, why: &str| ResolveReply::Malformed(format!("{field}: {why}"));
    match (proto::ResolveOutcome::try_from(r.outcome), r.subscriber_number.is_empty()) {
        (Ok(proto::ResolveOutcome::Found), false) => match SubscriberNumber::parse(&r.subscriber_number) {
            Ok(n) => ResolveReply::Found(n),
            Err(_) => malformed("resolved.subscriber_number", "must be an E.164 number"),
        },
        (Ok(proto::ResolveOutcome::Found), true) => malformed("resolved.subscriber_number", "required with FOUND"),
        (Ok(proto::ResolveOutcome::Miss), true) => ResolveReply::Miss,
        (Ok(proto::ResolveOutcome::Refused), true) => ResolveReply::Refused,
        (Ok(proto::ResolveOutcome::Miss | proto::ResolveOutcome::Refused), false) => {
            malformed("resolved.subscriber_number", "must be empty unless FOUND")
        }
        (Ok(proto::ResolveOutcome::Unspecified) | Err(_), _) => {
            malformed("resolved.outcome", "must be FOUND, MISS or REFUSED")
        }
    }
}

/// A resolve mode: UNSPECIFIED means ASK, the default.
pub fn resolve_mode(field: &'static str, mode: i32) -> Result<ResolveMode, ApiError> {
    match proto::ResolveMode::try_from(mode) {
        Ok(proto::ResolveMode::Push) => Ok(ResolveMode::Push),
        Ok(proto::ResolveMode::Ask | proto::ResolveMode::Unspecified) => Ok(ResolveMode::Ask),
        Err(_) => Err(ApiError::invalid(field, "must be PUSH or ASK")),
    }
}

pub fn enroll_subscriber(
    r: &proto::EnrollSubscriberRequest,
    limits: &Limits,
) -> Result<(SubscriberNumber, Funding), ApiError> {
    let number = convert::subscriber("subscriber_number", &r.subscriber_number)?;
    let funding = match proto::Funding::try_from(r.funding) {
        Ok(proto::Funding::Wallet) => Funding::Wallet,
        Ok(proto::Funding::CarrierBill) => Funding::CarrierBill {
            currency: convert::currency("bill_currency", &r.bill_currency)?,
            monthly_cap: convert::amount("monthly_cap_minor", r.monthly_cap_minor, limits)?,
        },
        Ok(proto::Funding::Unspecified) | Err(_) => {
            return Err(ApiError::invalid("funding", "must be WALLET or CARRIER_BILL"))
        }
    };
    Ok((number, funding))
}

pub fn enroll_handset(r: &proto::EnrollHandsetRequest) -> Result<(SubscriberNumber, [u8; 32]), ApiError> {
    let number = convert::subscriber("subscriber_number", &r.subscriber_number)?;
    let key = valid_public_key(&r.public_key)
        .ok_or_else(|| ApiError::invalid("public_key", "must be a 32-byte Ed25519 public key (not a weak point)"))?;
    Ok((number, key))
}

pub fn create_shop(r: &proto::CreateShopRequest) -> Result<(ShopId, String), ApiError> {
    let id = convert::shop_id("shop_id", &r.shop_id)?;
    let name = convert::text("display_name", &r.display_name, limits::MAX_DISPLAY_NAME_CHARS, true)?;
    Ok((id, name))
}

/// A validated CreateCarrier: id, display name, leased prefixes, fee.
pub struct NewCarrier {
    pub id: CarrierId,
    pub display_name: String,
    pub prefixes: Vec<IpPrefix>,
    pub fee_bps: u32,
    pub resolve_mode: ResolveMode,
}

pub fn create_carrier(r: &proto::CreateCarrierRequest) -> Result<NewCarrier, ApiError> {
    let id = convert::carrier_id("carrier_id", &r.carrier_id)?;
    let display_name = convert::text("display_name", &r.display_name, limits::MAX_DISPLAY_NAME_CHARS, true)?;
    let prefixes = convert::prefixes(&r.ip_prefixes, limits::MAX_PREFIXES_PER_CALL)?;
    if r.fee_bps > crate::domain::network::MAX_FEE_BPS {
        return Err(ApiError::invalid("fee_bps", "must be 0..=10000 (basis points)"));
    }
    let resolve_mode = resolve_mode("resolve_mode", r.resolve_mode)?;
    Ok(NewCarrier { id, display_name, prefixes, fee_bps: r.fee_bps, resolve_mode })
}

pub fn top_up(
    r: &proto::TopUpWalletRequest,
    limits: &Limits,
) -> Result<(SubscriberNumber, Amount, Currency), ApiError> {
    Ok((
        convert::subscriber("subscriber_number", &r.subscriber_number)?,
        convert::amount("amount_minor", r.amount_minor, limits)?,
        convert::currency("currency", &r.currency)?,
    ))
}

/// Longest account-name prefix worth asking for (names are shorter).
pub const MAX_PREFIX_CHARS: usize = 128;

pub fn list_accounts(r: &proto::ListAccountsRequest) -> Result<String, ApiError> {
    convert::text("prefix", &r.prefix, MAX_PREFIX_CHARS, false)
}

/// The cursor and page size: 0 means 100; more than the maximum is clamped.
pub fn list_postings(r: &proto::ListPostingsRequest) -> Result<(u64, usize), ApiError> {
    let limit = match r.limit {
        0 => 100,
        n => usize::try_from(n).unwrap_or(limits::MAX_LIST).min(limits::MAX_LIST),
    };
    Ok((r.after_posting_id, limit))
}

// Carrier billing and network identity.

pub fn report_leases(r: &proto::ReportLeasesRequest) -> Result<(Vec<LeaseReport>, Vec<LeaseReport>), ApiError> {
    convert::lease_batch(r, limits::MAX_LEASE_BATCH)
}

pub fn shop_acceptance(shop_id: &str) -> Result<ShopId, ApiError> {
    convert::shop_id("shop_id", shop_id)
}

/// A carrier's statement request: its subscriber and the month.
pub fn carrier_statement(r: &proto::GetStatementRequest) -> Result<(SubscriberNumber, Month), ApiError> {
    Ok((convert::subscriber("subscriber_number", &r.subscriber_number)?, convert::month("month", &r.month)?))
}

/// The operator's statement request: any carrier's subscriber and month.
pub fn admin_statement(r: &proto::GetStatementRequest) -> Result<(CarrierId, SubscriberNumber, Month), ApiError> {
    let carrier = convert::carrier_id("carrier_id", &r.carrier_id)?;
    let (number, month) = carrier_statement(r)?;
    Ok((carrier, number, month))
}

/// A payout period: `from_ms < to_ms`.
pub fn payout_report(r: &proto::GetPayoutReportRequest) -> Result<(UnixMs, UnixMs), ApiError> {
    let from = convert::unix_ms("from_ms", r.from_ms)?;
    let to = convert::unix_ms("to_ms", r.to_ms)?;
    if to <= from {
        return Err(ApiError::invalid("to_ms", "must be after from_ms"));
    }
    Ok((from, to))
}

pub fn add_carrier_prefixes(r: &proto::AddCarrierPrefixesRequest) -> Result<(CarrierId, Vec<IpPrefix>), ApiError> {
    Ok((
        convert::carrier_id("carrier_id", &r.carrier_id)?,
        convert::prefixes(&r.ip_prefixes, limits::MAX_PREFIXES_PER_CALL)?,
    ))
}

// The operator's tools.

/// A validated PayoutShop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payout {
    pub shop: ShopId,
    pub currency: Currency,
    pub amount: PayoutAmount,
    pub idempotency_key: String,
}

pub fn payout_shop(r: &proto::PayoutShopRequest) -> Result<Payout, ApiError> {
    let shop = convert::shop_id("shop_id", &r.shop_id)?;
    let currency = convert::currency("currency", &r.currency)?;
    // No per-trade maximum here: a payout is many trades' worth.
    let amount = match (r.amount_minor, r.whole_balance) {
        (0, true) => PayoutAmount::WholeBalance,
        (0, false) => {
            return Err(ApiError::invalid("amount_minor", "must be greater than zero (or set whole_balance)"))
        }
        (n, false) => PayoutAmount::Exact(Amount::new(n)),
        (_, true) => return Err(ApiError::invalid("amount_minor", "must be 0 when whole_balance is set")),
    };
    let Some(idempotency_key) =
        convert::idempotency_key("idempotency_key", &r.idempotency_key, limits::MAX_IDEMPOTENCY_KEY_LEN)?
    else {
        return Err(ApiError::invalid("idempotency_key", "is required: a payout must be safe to retry"));
    };
    Ok(Payout { shop, currency, amount, idempotency_key })
}

pub fn record_remittance(r: &proto::RecordRemittanceRequest) -> Result<super::engine::NewRemittanceRequest, ApiError> {
    let carrier = convert::carrier_id("carrier_id", &r.carrier_id)?;
    let shop = convert::shop_id("shop_id", &r.shop_id)?;
    let month = convert::month("month", &r.month)?;
    let currency = convert::currency("currency", &r.currency)?;
    // No per-trade maximum here: a remittance is a month of trades.
    if r.amount_minor == 0 {
        return Err(ApiError::invalid("amount_minor", "must be greater than zero"));
    }
    let Some(idempotency_key) =
        convert::idempotency_key("idempotency_key", &r.idempotency_key, limits::MAX_IDEMPOTENCY_KEY_LEN)?
    else {
        return Err(ApiError::invalid("idempotency_key", "is required: a remittance must be safe to retry"));
    };
    Ok(super::engine::NewRemittanceRequest {
        carrier,
        shop,
        month,
        currency,
        amount: Amount::new(r.amount_minor),
        idempotency_key,
    })
}

pub fn carrier_month_statement(
    r: &proto::GetCarrierStatementRequest,
) -> Result<(CarrierId, Month, Option<ShopId>, usize), ApiError> {
    let carrier = convert::carrier_id("carrier_id", &r.carrier_id)?;
    let (month, after, limit) = statement_page(&r.month, &r.after_shop_id, r.limit)?;
    Ok((carrier, month, after, limit))
}

/// CarrierService.GetRemittanceStatement: the carrier is the caller.
pub fn remittance_statement(
    r: &proto::GetRemittanceStatementRequest,
) -> Result<(Month, Option<ShopId>, usize), ApiError> {
    statement_page(&r.month, &r.after_shop_id, r.limit)
}

fn statement_page(month: &str, after_shop_id: &str, limit: u32) -> Result<(Month, Option<ShopId>, usize), ApiError> {
    let month = convert::month("month", month)?;
    let after = match after_shop_id {
        "" => None,
        id => Some(convert::shop_id("after_shop_id", id)?),
    };
    Ok((month, after, page_limit("limit", limit)?))
}

pub fn shop_payout_report(r: &proto::GetShopPayoutReportRequest) -> Result<(ShopId, UnixMs, UnixMs), ApiError> {
    let shop = convert::shop_id("shop_id", &r.shop_id)?;
    let (from, to) = payout_report(&proto::GetPayoutReportRequest { from_ms: r.from_ms, to_ms: r.to_ms })?;
    Ok((shop, from, to))
}

pub fn trade_history(r: &proto::GetTradeHistoryRequest) -> Result<TradeId, ApiError> {
    convert::trade_id("trade_id", &r.trade_id)
}

/// A page size: 0 means the largest page.
fn page_limit(field: &'static str, limit: u32) -> Result<usize, ApiError> {
    match usize::try_from(limit) {
        Ok(0) => Ok(limits::MAX_LIST),
        Ok(n) if n <= limits::MAX_LIST => Ok(n),
        _ => Err(ApiError::invalid(field, format!("must be at most {}", limits::MAX_LIST))),
    }
}

pub fn list_shops(r: &proto::ListShopsRequest) -> Result<(Option<ShopId>, usize), ApiError> {
    let after = match r.after_shop_id.as_str() {
        "" => None,
        id => Some(convert::shop_id("after_shop_id", id)?),
    };
    Ok((after, page_limit("limit", r.limit)?))
}

pub fn list_carriers(r: &proto::ListCarriersRequest) -> Result<(Option<CarrierId>, usize), ApiError> {
    let after = match r.after_carrier_id.as_str() {
        "" => None,
        id => Some(convert::carrier_id("after_carrier_id", id)?),
    };
    Ok((after, page_limit("limit", r.limit)?))
}

/// The backup folder: an absolute path on the server's host, at most
/// [`crate::store::backup::MAX_BACKUP_PATH_BYTES`], no NUL and no `..`
/// (a path the operator reads in the answer is the one written).
pub fn backup_store(r: &proto::BackupStoreRequest) -> Result<std::path::PathBuf, ApiError> {
    let dir = r.dir.as_str();
    if dir.is_empty() {
        return Err(ApiError::invalid("dir", "name the folder to back up into"));
    }
    if dir.len() > crate::store::backup::MAX_BACKUP_PATH_BYTES {
        return Err(ApiError::invalid("dir", format!("at most {} bytes", crate::store::backup::MAX_BACKUP_PATH_BYTES)));
    }
    if dir.contains('\0') || dir.chars().any(char::is_control) {
        return Err(ApiError::invalid("dir", "contains a control character"));
    }
    let path = std::path::Path::new(dir);
    if !path.is_absolute() {
        return Err(ApiError::invalid("dir", "must be an absolute path on the server's host"));
    }
    if path.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
        return Err(ApiError::invalid("dir", "must not contain .."));
    }
    Ok(path.to_owned())
}

pub fn rotate_credential(r: &proto::RotateCredentialRequest) -> Result<Principal, ApiError> {
    use proto::rotate_credential_request::Party;
    match &r.party {
        Some(Party::ShopId(id)) => Ok(Principal::Shop(convert::shop_id("shop_id", id)?)),
        Some(Party::CarrierId(id)) => Ok(Principal::Carrier(convert::carrier_id("carrier_id", id)?)),
        None => Err(ApiError::invalid("party", "name a shop_id or a carrier_id")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(e: ApiError) -> &'static str {
        match e {
            ApiError::InvalidArgument { field, .. } => field,
            other => panic!("not INVALID_ARGUMENT: {other:?}"),
        }
    }

    #[test]
    fn relay_answers_need_a_well_formed_id_decision_and_64_byte_signature() {
        let answer = |trade_id: &str, decision: i32, signature: Vec<u8>| proto::RelayUp {
            body: Some(proto::relay_up::Body::Answer(proto::HandsetAnswer {
                trade_id: trade_id.into(),
                decision,
                signature,
            })),
        };
        let id = TradeId::from_bytes([1; 16]).to_string();
        assert!(relay_up(&answer(&id, 1, vec![0; 64])).is_ok());
        for (m, field) in [
            (answer("trd_x", 1, vec![0; 64]), "answer.trade_id"),
            (answer(&id, 0, vec![0; 64]), "answer.decision"),
            (answer(&id, 7, vec![0; 64]), "answer.decision"),
            (answer(&id, 1, vec![]), "answer.signature"),
            (answer(&id, 1, vec![0; 63]), "answer.signature"),
            (answer(&id, 1, vec![0; 65]), "answer.signature"),
            (proto::RelayUp { body: None }, "body"),
        ] {
            assert_eq!(field_of(relay_up(&m).expect_err("refused")), field);
        }
    }

    #[test]
    fn ttls_outside_the_range_name_the_field() {
        let limits = Limits::default();
        assert_eq!(ttl("ttl_seconds", 0, &limits), Ok(limits.default_ttl));
        assert_eq!(ttl("ttl_seconds", 1, &limits), Ok(Duration::from_secs(1)));
        assert_eq!(ttl("ttl_seconds", 900, &limits), Ok(Duration::from_secs(900)));
        for bad in [901, u32::MAX] {
            assert_eq!(field_of(ttl("ttl_seconds", bad, &limits).expect_err("refused")), "ttl_seconds");
        }
    }

    #[test]
    fn await_waits_up_to_the_maximum_and_no_longer() {
        let id = TradeId::from_bytes([1; 16]).to_string();
        let wait = |wait_ms| await_trade(&proto::AwaitTradeRequest { trade_id: id.clone(), wait_ms }).map(|(_, w)| w);
        assert_eq!(wait(0), Ok(limits::DEFAULT_AWAIT));
        assert_eq!(wait(1), Ok(Duration::from_millis(1)));
        assert_eq!(wait(60_000), Ok(limits::MAX_AWAIT));
        for bad in [60_001, u32::MAX] {
            assert_eq!(field_of(wait(bad).expect_err("refused")), "wait_ms");
        }
    }

    #[test]
    fn every_field_named_is_listed() {
        for f in ["answer.signature", "public_key", "ttl_seconds", "prefix"] {
            assert!(FIELDS.contains(&f));
        }
    }
}
