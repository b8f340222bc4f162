//! Parties, network identity and top-ups in the PostgreSQL backend: the
//! writes that are not a trade's. Rare operator acts whose check counts
//! or scans rows (the shop limit, prefix overlaps) run under a
//! transaction-level advisory lock; the rest rest on primary keys and
//! guarded updates (docs/POSTGRES.md).

use tokio_postgres::Transaction;

use super::numeric::Minor;
use super::rows::{self, big, corrupt, REGISTER_COLS};
use super::sql::{self, SetKind};
use super::trades::{Cx, Step};
use super::PgError;
use crate::domain::{AccountName, CarrierId, IpPrefix, PostingSet, Principal, RegisterId, ShopId, UnixMs};
use crate::store::records::{CarrierRecord, Funding, HandsetRecord, RegisterRecord, ShopRecord, SubscriberRecord};
use crate::store::refusals::{LeaseList, PostingRefusal, PrefixOverlap};
use crate::store::{
    AcceptanceRefusal, AccountRecord, AddPrefixesRefusal, CloseRegisterRefusal, CreateCarrierRefusal,
    CreateShopRefusal, EnrollHandsetRefusal, EnrollSubscriberRefusal, LeaseRefusal, LeaseReport, LeasesRecorded,
    NewCarrier, NewHandset, NewRegister, NewShop, NewSubscriber, OpenRegisterRefusal, TopUp, TopUpRefusal, ToppedUp,
};

/// Advisory lock under which a shop is created (its count checked
/// against the limit): "syncpay" and 3.
const SHOP_LOCK: i64 = 0x7379_6e63_7061_7903;
/// Advisory lock of lease pruning ("syncpay" and 4): one node prunes at a
/// time, the others skip.
pub const PRUNE_LOCK: i64 = 0x7379_6e63_7061_7904;

fn principal_row(p: &Principal) -> (&'static str, Option<&str>) {
    match p {
        Principal::Admin => ("admin", None),
        Principal::Shop(s) => ("shop", Some(s.as_str())),
        Principal::Carrier(c) => ("carrier", Some(c.as_str())),
    }
}

async fn put_credential(tx: &Transaction<'_>, hash: &[u8; 32], p: &Principal) -> Result<(), PgError> {
    let (kind, party) = principal_row(p);
    tx.execute(
        "INSERT INTO credentials (token_hash, kind, party) VALUES ($1, $2, $3)
         ON CONFLICT (token_hash) DO UPDATE SET kind = EXCLUDED.kind, party = EXCLUDED.party",
        &[&hash.as_slice(), &kind, &party],
    )
    .await?;
    Ok(())
}

pub async fn create_shop(tx: &Transaction<'_>, s: &NewShop, cx: &mut Cx) -> Step<ShopRecord, CreateShopRefusal> {
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SHOP_LOCK]).await?;
    let count: i64 = tx.query_one("SELECT count(*) FROM shops", &[]).await?.try_get(0)?;
    let n = tx
        .execute(
            "INSERT INTO shops (id, display_name, created_at) VALUES ($1, $2, $3) ON CONFLICT (id) DO NOTHING",
            &[&s.id.as_str(), &s.display_name, &big(s.now.0)?],
        )
        .await?;
    if n == 0 {
        return Ok(Err(CreateShopRefusal::Exists(s.id.clone())));
    }
    if count >= i64::from(s.max_shops) {
        return Ok(Err(CreateShopRefusal::TooMany { max: s.max_shops }));
    }
    tx.execute("INSERT INTO shop_event_heads (shop) VALUES ($1)", &[&s.id.as_str()]).await?;
    put_credential(tx, &s.token_hash, &Principal::Shop(s.id.clone())).await?;
    cx.heads.push((s.id.clone(), 0));
    Ok(Ok(ShopRecord { id: s.id.clone(), display_name: s.display_name.clone(), next_event_seq: 1, created_at: s.now }))
}

fn overlap(o: sql::Overlap) -> PrefixOverlap {
    PrefixOverlap { index: o.index, prefix: o.prefix, other: o.other, carrier: o.other_carrier }
}

pub async fn create_carrier(tx: &Transaction<'_>, c: &NewCarrier) -> Step<CarrierRecord, CreateCarrierRefusal> {
    let n = tx
        .execute(
            "INSERT INTO carriers (id, display_name, created_at, fee_bps) VALUES ($1, $2, $3, $4)
             ON CONFLICT (id) DO NOTHING",
            &[&c.id.as_str(), &c.display_name, &big(c.now.0)?, &i32::try_from(c.fee_bps).map_err(|_| corrupt("fee"))?],
        )
        .await?;
    if n == 0 {
        return Ok(Err(CreateCarrierRefusal::Exists(c.id.clone())));
    }
    if let Err(o) = sql::add_prefixes(tx, &c.id, &c.prefixes).await? {
        return Ok(Err(CreateCarrierRefusal::Overlap(overlap(o))));
    }
    put_credential(tx, &c.token_hash, &Principal::Carrier(c.id.clone())).await?;
    Ok(Ok(CarrierRecord { id: c.id.clone(), display_name: c.display_name.clone(), created_at: c.now }))
}

pub async fn add_prefixes(
    tx: &Transaction<'_>,
    carrier: &CarrierId,
    prefixes: &[IpPrefix],
) -> Step<Vec<IpPrefix>, AddPrefixesRefusal> {
    if tx.query_opt("SELECT 1 FROM carriers WHERE id = $1", &[&carrier.as_str()]).await?.is_none() {
        return Ok(Err(AddPrefixesRefusal::UnknownCarrier));
    }
    if let Err(o) = sql::add_prefixes(tx, carrier, prefixes).await? {
        return Ok(Err(AddPrefixesRefusal::Overlap(overlap(o))));
    }
    Ok(Ok(prefixes.to_vec()))
}

pub async fn enroll_subscriber(
    tx: &Transaction<'_>,
    s: &NewSubscriber,
) -> Step<SubscriberRecord, EnrollSubscriberRefusal> {
    let (funding, currency, cap) = match s.funding {
        Funding::Wallet => ("wallet", None, None),
        Funding::CarrierBill { currency, monthly_cap } => {
            ("carrier_bill", Some(currency.code().to_owned()), Some(Minor::from(monthly_cap)))
        }
    };
    // A number enrolled with another carrier stays theirs: the update's
    // guard leaves it alone and nothing is returned.
    let row = tx
        .query_opt(
            "INSERT INTO subscribers (number, carrier, funding, bill_currency, monthly_cap, enrolled_at)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (number) DO UPDATE SET funding = EXCLUDED.funding, bill_currency = EXCLUDED.bill_currency,
                 monthly_cap = EXCLUDED.monthly_cap, enrolled_at = EXCLUDED.enrolled_at
             WHERE subscribers.carrier = EXCLUDED.carrier
             RETURNING number",
            &[&s.number.as_str(), &s.carrier.as_str(), &funding, &currency, &cap, &big(s.now.0)?],
        )
        .await?;
    if row.is_none() {
        return Ok(Err(EnrollSubscriberRefusal::OtherCarrier));
    }
    Ok(Ok(SubscriberRecord {
        number: s.number.clone(),
        carrier: s.carrier.clone(),
        funding: s.funding,
        enrolled_at: s.now,
    }))
}

pub async fn enroll_handset(tx: &Transaction<'_>, h: &NewHandset) -> Step<HandsetRecord, EnrollHandsetRefusal> {
    // The subscriber row is locked so a re-enrolment elsewhere cannot move
    // it to another carrier between the check and the write.
    let own = tx
        .query_opt(
            "SELECT 1 FROM subscribers WHERE number = $1 AND carrier = $2 FOR SHARE",
            &[&h.number.as_str(), &h.carrier.as_str()],
        )
        .await?;
    if own.is_none() {
        return Ok(Err(EnrollHandsetRefusal::UnknownSubscriber));
    }
    tx.execute(
        "INSERT INTO handsets (number, public_key, enrolled_at) VALUES ($1, $2, $3)
         ON CONFLICT (number) DO UPDATE SET public_key = EXCLUDED.public_key, enrolled_at = EXCLUDED.enrolled_at",
        &[&h.number.as_str(), &h.public_key.as_slice(), &big(h.now.0)?],
    )
    .await?;
    Ok(Ok(HandsetRecord { number: h.number.clone(), public_key: h.public_key, enrolled_at: h.now }))
}

pub async fn open_register(tx: &Transaction<'_>, r: &NewRegister) -> Step<RegisterRecord, OpenRegisterRefusal> {
    // Guarded: of concurrent openings only those under the limit pass.
    let n = tx
        .execute(
            "UPDATE shops SET open_registers = open_registers + 1 WHERE id = $1 AND open_registers < $2",
            &[&r.shop.as_str(), &i32::try_from(r.max_registers).unwrap_or(i32::MAX)],
        )
        .await?;
    if n == 0 {
        return Ok(Err(OpenRegisterRefusal::TooMany { max: r.max_registers }));
    }
    tx.execute(
        "INSERT INTO registers (shop, id, label, open, opened_at) VALUES ($1, $2, $3, true, $4)",
        &[&r.shop.as_str(), &r.id.as_bytes().as_slice(), &r.label, &big(r.now.0)?],
    )
    .await?;
    Ok(Ok(RegisterRecord {
        id: r.id,
        shop: r.shop.clone(),
        label: r.label.clone(),
        open: true,
        opened_at: r.now,
        closed_at: None,
        open_trades: 0,
    }))
}

pub async fn close_register(
    tx: &Transaction<'_>,
    shop: &ShopId,
    id: RegisterId,
    now: UnixMs,
) -> Step<RegisterRecord, CloseRegisterRefusal> {
    let row = tx
        .query_opt(
            &format!("SELECT {REGISTER_COLS} FROM registers WHERE shop = $1 AND id = $2 FOR UPDATE"),
            &[&shop.as_str(), &id.as_bytes().as_slice()],
        )
        .await?;
    let Some(row) = row else {
        return Ok(Err(CloseRegisterRefusal::UnknownRegister));
    };
    let mut record = rows::register(&row)?;
    if !record.open {
        return Ok(Err(CloseRegisterRefusal::AlreadyClosed));
    }
    if record.open_trades > 0 {
        return Ok(Err(CloseRegisterRefusal::OpenTrades(record.open_trades)));
    }
    record.open = false;
    record.closed_at = Some(now);
    tx.execute(
        "UPDATE registers SET open = false, closed_at = $3 WHERE shop = $1 AND id = $2",
        &[&shop.as_str(), &id.as_bytes().as_slice(), &big(now.0)?],
    )
    .await?;
    tx.execute(
        "UPDATE shops SET open_registers = open_registers - 1 WHERE id = $1 AND open_registers > 0",
        &[&shop.as_str()],
    )
    .await?;
    Ok(Ok(record))
}

pub async fn top_up(tx: &Transaction<'_>, t: &TopUp) -> Step<ToppedUp, TopUpRefusal> {
    let funding =
        tx.query_opt("SELECT funding FROM subscribers WHERE number = $1 FOR SHARE", &[&t.number.as_str()]).await?;
    match funding {
        None => return Ok(Err(TopUpRefusal::UnknownSubscriber)),
        Some(row) if row.try_get::<_, &str>(0)? != "wallet" => return Ok(Err(TopUpRefusal::CarrierBilled)),
        Some(_) => {}
    }
    let wallet = AccountName::Wallet(t.number.clone(), t.currency);
    let set = match PostingSet::transfer(AccountName::SystemFunding(t.currency), wallet.clone(), t.amount) {
        Ok(set) => set,
        Err(e) => return Ok(Err(TopUpRefusal::Postings(PostingRefusal::Invalid(e)))),
    };
    let posted = match sql::post(tx, &set, SetKind::TopUp, None, t.now).await? {
        Ok(p) => p,
        Err(sql::PostRefusal::Overflow(a)) => {
            return Ok(Err(TopUpRefusal::Postings(PostingRefusal::TotalOverflows(a))))
        }
        Err(sql::PostRefusal::BelowZero(a)) => return Ok(Err(TopUpRefusal::Postings(PostingRefusal::BelowZero(a)))),
    };
    let balance = posted
        .balances
        .iter()
        .find(|(n, _)| *n == wallet)
        .map(|(_, b)| *b)
        .ok_or_else(|| corrupt("wallet missing after posting"))?;
    let first = posted.posting_ids.first().copied().ok_or_else(|| corrupt("empty posting set"))?;
    Ok(Ok(ToppedUp { account: AccountRecord { name: wallet, balance }, posting_id: first }))
}

pub async fn set_acceptance(
    tx: &Transaction<'_>,
    carrier: &CarrierId,
    shop: &ShopId,
    accept: bool,
) -> Step<bool, AcceptanceRefusal> {
    if tx.query_opt("SELECT 1 FROM shops WHERE id = $1", &[&shop.as_str()]).await?.is_none() {
        return Ok(Err(AcceptanceRefusal::UnknownShop));
    }
    if accept {
        tx.execute(
            "INSERT INTO acceptances (carrier, shop) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[&carrier.as_str(), &shop.as_str()],
        )
        .await?;
    } else {
        tx.execute("DELETE FROM acceptances WHERE carrier = $1 AND shop = $2", &[&carrier.as_str(), &shop.as_str()])
            .await?;
    }
    Ok(Ok(accept))
}

/// A batch of lease starts and stops, all or nothing: every address in
/// the carrier's own prefixes, every subscriber the carrier's own.
pub async fn report_leases(
    tx: &Transaction<'_>,
    carrier: &CarrierId,
    starts: &[LeaseReport],
    stops: &[LeaseReport],
) -> Step<LeasesRecorded, LeaseRefusal> {
    for (reports, list) in [(starts, LeaseList::Starts), (stops, LeaseList::Stops)] {
        for r in reports {
            match sql::carrier_of(tx, r.ip).await? {
                Some((owner, _)) if &owner == carrier => {}
                _ => return Ok(Err(LeaseRefusal::OutsidePrefixes { list, index: r.index })),
            }
            if let Some(number) = &r.subscriber {
                let own = tx
                    .query_opt(
                        "SELECT 1 FROM subscribers WHERE number = $1 AND carrier = $2",
                        &[&number.as_str(), &carrier.as_str()],
                    )
                    .await?;
                if own.is_none() {
                    return Ok(Err(LeaseRefusal::NotOwnSubscriber { list, index: r.index }));
                }
            }
            sql::record_lease(tx, carrier, r.ip, r.ports, r.at, r.subscriber.as_ref()).await?;
        }
    }
    let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    Ok(Ok(LeasesRecorded { starts: count(starts.len()), stops: count(stops.len()) }))
}

/// Deletes lease records no lookup at or after `cutoff` reaches: per
/// address and port range, every record before the cutoff but the newest.
/// Under a try-lock: a node that finds another pruning skips (pruning is
/// idempotent anyway).
pub async fn prune_leases(tx: &Transaction<'_>, cutoff: UnixMs) -> Result<u64, PgError> {
    let got: bool = tx.query_one("SELECT pg_try_advisory_xact_lock($1)", &[&PRUNE_LOCK]).await?.try_get(0)?;
    if !got {
        return Ok(0);
    }
    let n = tx
        .execute(
            "DELETE FROM leases l USING (
                 SELECT addr, at, port_lo, is_start,
                        row_number() OVER (PARTITION BY addr, port_lo, port_hi
                                           ORDER BY at DESC, is_start DESC) AS newer
                 FROM leases WHERE at < $1) d
             WHERE d.newer > 1 AND l.addr = d.addr AND l.at = d.at AND l.port_lo = d.port_lo
               AND l.is_start = d.is_start",
            &[&big(cutoff.0)?],
        )
        .await?;
    Ok(n)
}
