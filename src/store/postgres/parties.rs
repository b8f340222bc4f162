//! Parties, network identity and top-ups in the PostgreSQL backend: the
//! writes that are not a trade's. Rare operator acts whose check counts
//! or scans rows (the shop limit, prefix overlaps) run under a
//! transaction-level advisory lock; the rest rest on primary keys and
//! guarded updates (docs/POSTGRES.md).

use tokio_postgres::{GenericClient, Transaction};

use super::numeric::Minor;
use super::rows::{self, big, corrupt, REGISTER_COLS};
use super::sql::{self, SetKind};
use super::trades::{Cx, Step};
use super::PgError;
use crate::domain::{
    AccountName, Amount, CarrierId, IpKey, IpPrefix, Month, PostingSet, Principal, RegisterId, ResolveMode, ShopId,
    UnixMs,
};
use crate::store::records::{
    payout_reference, remittance_reference, CarrierRecord, CarrierSales, CarrierStatementLine, Funding, HandsetRecord,
    PayoutRecord, RegisterRecord, RemittanceRecord, ShopRecord, SubscriberRecord,
};
use crate::store::refusals::{LeaseList, PostingRefusal, PrefixOverlap};
use crate::store::{
    AcceptanceRefusal, AccountRecord, AddPrefixesRefusal, CloseRegisterRefusal, CreateCarrierRefusal,
    CreateShopRefusal, EnrollHandsetRefusal, EnrollSubscriberRefusal, LeaseRefusal, LeaseReport, LeasesRecorded,
    NewCarrier, NewHandset, NewPayout, NewRegister, NewRemittance, NewShop, NewSubscriber, OpenRegisterRefusal,
    PaidOut, PayoutAmount, RemittanceRefusal, Remitted, RotateCredentialRefusal, Route, ShopPayoutRefusal, ShopStatus,
    SuspendRefusal, TopUp, TopUpRefusal, ToppedUp,
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
            "INSERT INTO carriers (id, display_name, created_at, fee_bps, resolve_mode) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (id) DO NOTHING",
            &[
                &c.id.as_str(),
                &c.display_name,
                &big(c.now.0)?,
                &i32::try_from(c.fee_bps).map_err(|_| corrupt("fee"))?,
                &mode_text(c.resolve_mode),
            ],
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
    // The shop row first, as CreateTrade locks it before the register's.
    tx.query_opt("SELECT 1 FROM shops WHERE id = $1 FOR UPDATE", &[&shop.as_str()]).await?;
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

/// A resolve mode as the `carriers.resolve_mode` column spells it.
pub fn mode_text(mode: ResolveMode) -> &'static str {
    match mode {
        ResolveMode::Push => "PUSH",
        ResolveMode::Ask => "ASK",
    }
}

pub fn parse_mode(text: &str) -> Result<ResolveMode, PgError> {
    match text {
        "PUSH" => Ok(ResolveMode::Push),
        "ASK" => Ok(ResolveMode::Ask),
        other => Err(corrupt(format!("resolve mode {other:?}"))),
    }
}

/// The carrier owning `addr`'s range, its mode and whether it accepts
/// `shop`, in one statement (one snapshot).
pub async fn route(client: &impl GenericClient, addr: IpKey, shop: &ShopId) -> Result<Option<Route>, PgError> {
    let text = std::net::Ipv6Addr::from(addr.0).to_string();
    let row = client
        .query_opt(
            "SELECT p.carrier, c.resolve_mode,
                    EXISTS (SELECT 1 FROM acceptances a WHERE a.carrier = p.carrier AND a.shop = $2)
             FROM carrier_prefixes p JOIN carriers c ON c.id = p.carrier
             WHERE p.prefix >>= $1::text::inet ORDER BY masklen(p.prefix) DESC LIMIT 1",
            &[&text, &shop.as_str()],
        )
        .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let carrier = CarrierId::parse(row.try_get(0)?).map_err(|e| corrupt(format!("carrier id: {e}")))?;
    Ok(Some(Route { carrier, mode: parse_mode(row.try_get(1)?)?, accepted: row.try_get(2)? }))
}

pub async fn set_resolve_mode(
    tx: &Transaction<'_>,
    carrier: &CarrierId,
    mode: ResolveMode,
) -> Result<ResolveMode, PgError> {
    tx.execute("UPDATE carriers SET resolve_mode = $2 WHERE id = $1", &[&carrier.as_str(), &mode_text(mode)]).await?;
    Ok(mode)
}

/// A batch of lease starts and stops, all or nothing: every address in
/// the carrier's own prefixes, every subscriber the carrier's own.
pub async fn report_leases(
    tx: &Transaction<'_>,
    carrier: &CarrierId,
    starts: &[LeaseReport],
    stops: &[LeaseReport],
) -> Step<LeasesRecorded, LeaseRefusal> {
    // A carrier in ask mode keeps its leases: none is stored here. The
    // share lock orders this batch with SetResolveMode's update.
    let first = starts.first().map(|r| (LeaseList::Starts, r.index));
    if let Some((list, index)) = first.or_else(|| stops.first().map(|r| (LeaseList::Stops, r.index))) {
        let row =
            tx.query_opt("SELECT resolve_mode FROM carriers WHERE id = $1 FOR SHARE", &[&carrier.as_str()]).await?;
        let mode = match row {
            Some(row) => parse_mode(row.try_get(0)?)?,
            None => ResolveMode::Push,
        };
        if mode == ResolveMode::Ask {
            return Ok(Err(LeaseRefusal::AskMode { list, index }));
        }
    }
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

/// The advisory lock text of a payout idempotency key (operator-wide).
fn payout_lock_text(key: &str) -> String {
    format!("syncpay payout/{key}")
}

/// A shop payout: the payable account row is locked before the balance
/// is read (`trades::lock_accounts`), so payouts and refunds of the shop
/// on any node never together take more than the balance; a keyed retry
/// waits on the key's advisory lock and finds the original.
pub async fn payout_shop(tx: &Transaction<'_>, p: &NewPayout) -> Step<PaidOut, ShopPayoutRefusal> {
    tx.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", &[&payout_lock_text(&p.idempotency_key)])
        .await?;
    let payable_name = AccountName::ShopPayable(p.shop.clone(), p.currency);
    let prior = tx
        .query_opt(
            "SELECT payout_id, shop, currency, amount, requested, reference, at FROM payouts WHERE idempotency_key = $1",
            &[&p.idempotency_key],
        )
        .await?;
    if let Some(row) = prior {
        let shop = rows::shop_id(row.try_get(1)?)?;
        let currency = rows::currency(row.try_get(2)?)?;
        let requested = match row.try_get::<_, Option<Minor>>(4)? {
            Some(a) => PayoutAmount::Exact(rows::amount(a)),
            None => PayoutAmount::WholeBalance,
        };
        if let Some(field) = p.differs_from(&shop, currency, requested) {
            return Ok(Err(ShopPayoutRefusal::Differs(field)));
        }
        let payout = PayoutRecord {
            payout_id: rows::unbig(row.try_get(0)?)?,
            shop,
            currency,
            amount: rows::amount(row.try_get(3)?),
            reference: row.try_get(5)?,
            idempotency_key: p.idempotency_key.clone(),
            at: rows::ms(row.try_get(6)?)?,
        };
        let payable =
            account_record(tx, &payable_name).await?.ok_or_else(|| corrupt("a paid-out shop has no payable"))?;
        return Ok(Ok(PaidOut { payout, payable, replayed: true }));
    }
    if tx.query_opt("SELECT 1 FROM shops WHERE id = $1", &[&p.shop.as_str()]).await?.is_none() {
        return Ok(Err(ShopPayoutRefusal::UnknownShop));
    }
    let locked = super::trades::lock_accounts(tx, &[&payable_name]).await?;
    let available = super::trades::available(&locked, &payable_name);
    let amount = match p.amount {
        PayoutAmount::Exact(a) if a <= available => a,
        PayoutAmount::WholeBalance if available > Amount::ZERO => available,
        PayoutAmount::Exact(_) | PayoutAmount::WholeBalance => {
            return Ok(Err(ShopPayoutRefusal::BalanceShort { available }))
        }
    };
    let set = match PostingSet::transfer(payable_name.clone(), AccountName::SystemPayout(p.currency), amount) {
        Ok(set) => set,
        Err(e) => return Ok(Err(ShopPayoutRefusal::Postings(PostingRefusal::Invalid(e)))),
    };
    let posted = match sql::post(tx, &set, SetKind::Payout, None, p.now).await? {
        Ok(posted) => posted,
        Err(sql::PostRefusal::Overflow(a)) => {
            return Ok(Err(ShopPayoutRefusal::Postings(PostingRefusal::TotalOverflows(a))))
        }
        Err(sql::PostRefusal::BelowZero(a)) => {
            return Ok(Err(ShopPayoutRefusal::Postings(PostingRefusal::BelowZero(a))))
        }
    };
    let payout_id = posted.set_id;
    let reference = payout_reference(payout_id);
    let requested = match p.amount {
        PayoutAmount::Exact(a) => Some(Minor::from(a)),
        PayoutAmount::WholeBalance => None,
    };
    tx.execute(
        "INSERT INTO payouts (payout_id, shop, currency, amount, requested, reference, idempotency_key, at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        &[
            &big(payout_id)?,
            &p.shop.as_str(),
            &p.currency.code(),
            &Minor::from(amount),
            &requested,
            &reference,
            &p.idempotency_key,
            &big(p.now.0)?,
        ],
    )
    .await?;
    tx.execute(
        "INSERT INTO payout_entries (set_id, shop, at, kind, trade, carrier, currency, gross, fee, reference)
         VALUES ($1, $2, $3, 'PAYOUT', NULL, NULL, $4, $5, 0, $6)",
        &[&big(payout_id)?, &p.shop.as_str(), &big(p.now.0)?, &p.currency.code(), &Minor::from(amount), &reference],
    )
    .await?;
    let payable = account_record(tx, &payable_name).await?.ok_or_else(|| corrupt("payable missing after posting"))?;
    let payout = PayoutRecord {
        payout_id,
        shop: p.shop.clone(),
        currency: p.currency,
        amount,
        reference,
        idempotency_key: p.idempotency_key.clone(),
        at: p.now,
    };
    Ok(Ok(PaidOut { payout, payable, replayed: false }))
}

async fn account_record(tx: &Transaction<'_>, name: &AccountName) -> Result<Option<AccountRecord>, PgError> {
    let row = tx.query_opt("SELECT debits, credits FROM accounts WHERE name = $1", &[&name.key()]).await?;
    match row {
        None => Ok(None),
        Some(r) => Ok(Some(AccountRecord {
            name: name.clone(),
            balance: crate::domain::Balance {
                debits: rows::amount(r.try_get(0)?),
                credits: rows::amount(r.try_get(1)?),
            },
        })),
    }
}

/// Suspends or resumes a shop (an update of its row: CreateTrade's share
/// lock of that row makes the two one after the other).
pub async fn set_shop_suspended(
    tx: &Transaction<'_>,
    shop: &ShopId,
    suspended: bool,
    now: UnixMs,
) -> Step<ShopStatus, SuspendRefusal> {
    let row = tx
        .query_opt(
            "UPDATE shops SET suspended_at = CASE WHEN $2 THEN coalesce(suspended_at, $3) ELSE NULL END
             WHERE id = $1
             RETURNING display_name, created_at, suspended_at,
                       (SELECT last_seq FROM shop_event_heads WHERE shop = $1)",
            &[&shop.as_str(), &suspended, &big(now.0)?],
        )
        .await?;
    let Some(row) = row else {
        return Ok(Err(SuspendRefusal::UnknownShop));
    };
    Ok(Ok(shop_status(shop.clone(), &row)?))
}

/// A shop's status from `display_name, created_at, suspended_at, last_seq`.
pub fn shop_status(id: ShopId, row: &tokio_postgres::Row) -> Result<ShopStatus, PgError> {
    let last: Option<i64> = row.try_get(3)?;
    Ok(ShopStatus {
        shop: ShopRecord {
            id,
            display_name: row.try_get(0)?,
            created_at: rows::ms(row.try_get(1)?)?,
            next_event_seq: rows::unbig(last.unwrap_or(0))?.checked_add(1).ok_or_else(|| corrupt("event seq"))?,
        },
        suspended_at: row.try_get::<_, Option<i64>>(2)?.map(rows::ms).transpose()?,
    })
}

/// Replaces every credential of a shop or carrier with one, in one
/// transaction.
pub async fn rotate_credential(
    tx: &Transaction<'_>,
    party: &Principal,
    token_hash: &[u8; 32],
) -> Step<(), RotateCredentialRefusal> {
    let (kind, id, table) = match party {
        Principal::Shop(s) => ("shop", s.as_str(), "shops"),
        Principal::Carrier(c) => ("carrier", c.as_str(), "carriers"),
        Principal::Admin => return Ok(Err(RotateCredentialRefusal::UnknownParty)),
    };
    let exists = tx.query_opt(&format!("SELECT 1 FROM {table} WHERE id = $1 FOR UPDATE"), &[&id]).await?;
    if exists.is_none() {
        return Ok(Err(RotateCredentialRefusal::UnknownParty));
    }
    tx.execute("DELETE FROM credentials WHERE kind = $1 AND party = $2", &[&kind, &id]).await?;
    put_credential(tx, token_hash, party).await?;
    Ok(Ok(()))
}

/// The advisory lock text of a remittance idempotency key (operator-wide).
fn remittance_lock_text(key: &str) -> String {
    format!("syncpay remittance/{key}")
}

/// The advisory lock text of one (carrier, shop, month, currency): every
/// remittance of it holds this lock from before it reads what was remitted
/// until its commit, so two never both pass the check on the same sums.
fn remittance_slot_lock_text(r: &NewRemittance) -> String {
    format!("syncpay remittance slot/{}/{}/{}/{}", r.carrier, r.shop, r.month, r.currency)
}

/// A sum of u64 amounts read as `numeric::text` (it may pass u64).
fn sum_of(text: &str) -> Result<u128, PgError> {
    text.parse().map_err(|_| corrupt(format!("sum {text:?}")))
}

/// The (carrier, shop, month, currency) line as this transaction sees it:
/// the month's carrier-billed sales from payout_entries and the
/// remittances recorded for it.
async fn remittance_line(tx: &Transaction<'_>, r: &NewRemittance) -> Result<CarrierStatementLine, PgError> {
    let sales = tx
        .query_one(
            "SELECT coalesce(sum(gross) FILTER (WHERE kind = 'SETTLEMENT'), 0)::text,
                    coalesce(sum(fee) FILTER (WHERE kind = 'SETTLEMENT'), 0)::text,
                    coalesce(sum(gross) FILTER (WHERE kind = 'REFUND'), 0)::text,
                    count(*) FILTER (WHERE kind = 'SETTLEMENT')
             FROM payout_entries
             WHERE shop = $1 AND carrier = $2 AND currency = $3 AND at >= $4 AND at < $5",
            &[
                &r.shop.as_str(),
                &r.carrier.as_str(),
                &r.currency.code(),
                &big(r.month.start().0)?,
                &big(r.month.end().0)?,
            ],
        )
        .await?;
    let remitted = tx
        .query_one(
            "SELECT coalesce(sum(amount), 0)::text, count(*) FROM remittances
             WHERE carrier = $1 AND shop = $2 AND month = $3 AND currency = $4",
            &[&r.carrier.as_str(), &r.shop.as_str(), &month_int(r.month)?, &r.currency.code()],
        )
        .await?;
    Ok(CarrierStatementLine {
        shop: r.shop.clone(),
        currency: r.currency,
        sales: CarrierSales {
            gross: sum_of(sales.try_get(0)?)?,
            fee: sum_of(sales.try_get(1)?)?,
            refunded: sum_of(sales.try_get(2)?)?,
            settlements: rows::unbig(sales.try_get(3)?)?,
        },
        remitted: sum_of(remitted.try_get(0)?)?,
        remittances: rows::unbig(remitted.try_get(1)?)?,
    })
}

/// A month as stored (`yyyy * 100 + mm`).
pub fn month_int(m: Month) -> Result<i32, PgError> {
    i32::try_from(m.number()).map_err(|_| corrupt("month"))
}

/// A carrier's remittance: under the key's advisory lock (a retry finds
/// the original) and then the slot's (remittances of one carrier, shop,
/// month and currency one after another), what is owed and what was
/// remitted are read, checked, and the posting set and record written in
/// the same transaction.
pub async fn remit(tx: &Transaction<'_>, r: &NewRemittance) -> Step<Remitted, RemittanceRefusal> {
    tx.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", &[&remittance_lock_text(&r.idempotency_key)])
        .await?;
    let prior = tx
        .query_opt(
            "SELECT remittance_id, carrier, shop, month, currency, amount, reference, at FROM remittances
             WHERE idempotency_key = $1",
            &[&r.idempotency_key],
        )
        .await?;
    if let Some(row) = prior {
        let carrier = rows::carrier_id(row.try_get(1)?)?;
        let shop = rows::shop_id(row.try_get(2)?)?;
        let month = u32::try_from(row.try_get::<_, i32>(3)?)
            .ok()
            .and_then(Month::from_number)
            .ok_or_else(|| corrupt("remittance month"))?;
        let currency = rows::currency(row.try_get(4)?)?;
        let amount = rows::amount(row.try_get(5)?);
        if let Some(field) = r.differs_from(&carrier, &shop, month, currency, amount) {
            return Ok(Err(RemittanceRefusal::Differs(field)));
        }
        let remittance = RemittanceRecord {
            remittance_id: rows::unbig(row.try_get(0)?)?,
            carrier,
            shop,
            month,
            currency,
            amount,
            reference: row.try_get(6)?,
            idempotency_key: r.idempotency_key.clone(),
            at: rows::ms(row.try_get(7)?)?,
        };
        let line = remittance_line(tx, r).await?;
        return Ok(Ok(Remitted { remittance, line, replayed: true }));
    }
    if tx.query_opt("SELECT 1 FROM carriers WHERE id = $1", &[&r.carrier.as_str()]).await?.is_none() {
        return Ok(Err(RemittanceRefusal::UnknownCarrier));
    }
    if tx.query_opt("SELECT 1 FROM shops WHERE id = $1", &[&r.shop.as_str()]).await?.is_none() {
        return Ok(Err(RemittanceRefusal::UnknownShop));
    }
    tx.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", &[&remittance_slot_lock_text(r)]).await?;
    let before = remittance_line(tx, r).await?;
    let outstanding = before.outstanding().max(0);
    let exceeds =
        || RemittanceRefusal::Exceeds { outstanding: Amount::new(u64::try_from(outstanding).unwrap_or(u64::MAX)) };
    if r.amount == Amount::ZERO || i128::from(r.amount.minor()) > outstanding {
        return Ok(Err(exceeds()));
    }
    let set = match PostingSet::transfer(
        AccountName::SystemRemittance(r.currency),
        AccountName::CarrierRemitted(r.carrier.clone(), r.currency),
        r.amount,
    ) {
        Ok(set) => set,
        Err(e) => return Ok(Err(RemittanceRefusal::Postings(PostingRefusal::Invalid(e)))),
    };
    let posted = match sql::post(tx, &set, SetKind::Remittance, None, r.now).await? {
        Ok(posted) => posted,
        Err(sql::PostRefusal::Overflow(a)) => {
            return Ok(Err(RemittanceRefusal::Postings(PostingRefusal::TotalOverflows(a))))
        }
        Err(sql::PostRefusal::BelowZero(a)) => {
            return Ok(Err(RemittanceRefusal::Postings(PostingRefusal::BelowZero(a))))
        }
    };
    let remittance_id = posted.set_id;
    let reference = remittance_reference(remittance_id);
    tx.execute(
        "INSERT INTO remittances (remittance_id, carrier, shop, month, currency, amount, reference, idempotency_key, at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        &[
            &big(remittance_id)?,
            &r.carrier.as_str(),
            &r.shop.as_str(),
            &month_int(r.month)?,
            &r.currency.code(),
            &Minor::from(r.amount),
            &reference,
            &r.idempotency_key,
            &big(r.now.0)?,
        ],
    )
    .await?;
    let remittance = RemittanceRecord {
        remittance_id,
        carrier: r.carrier.clone(),
        shop: r.shop.clone(),
        month: r.month,
        currency: r.currency,
        amount: r.amount,
        reference,
        idempotency_key: r.idempotency_key.clone(),
        at: r.now,
    };
    let line = CarrierStatementLine {
        remitted: before.remitted + u128::from(r.amount.minor()),
        remittances: before.remittances.saturating_add(1),
        ..before
    };
    Ok(Ok(Remitted { remittance, line, replayed: false }))
}
