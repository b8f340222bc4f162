//! The writes whose concurrency the invariants rest on, as SQL on a
//! transaction, each saying which lock or constraint makes it safe when
//! several nodes run it at once (the table in `docs/POSTGRES.md`). All run
//! under READ COMMITTED: every check that matters is either a row lock
//! taken before reading (so the read is the latest committed value and
//! stays so until commit) or a guarded `UPDATE … WHERE`, which PostgreSQL
//! re-evaluates on the newest row version after waiting for a concurrent
//! writer. Locks are taken in one global order, so transactions wait for
//! each other but never deadlock:
//!
//! 1. the trade row (`lock_trade`, `finish_trade`);
//! 2. the idempotency key (its unique index entry, `claim_idempotency`);
//! 3. account rows, in name order (`post`);
//! 4. cap-use and bill-line rows;
//! 5. the register row (open-trade count);
//! 6. the shop's event counter (`reserve_event_seqs`), last, so that the
//!    lock that serialises a shop's commits is held for the shortest time.
//!
//! Each function takes a `tokio_postgres::Transaction`; nothing here
//! commits. Outcomes a caller must act on (a refusal, an existing key)
//! are values, never errors.

use std::net::Ipv6Addr;

use tokio_postgres::{GenericClient, Transaction};

use super::numeric::Minor;
use super::PgError;
use crate::domain::{
    AccountName, Amount, Balance, CarrierId, IpKey, IpPrefix, PortRange, ShopId, Side, SubscriberNumber, TradeId,
    TradeState, UnixMs,
};

/// A u64 the schema keeps in a `bigint` (ids, instants): above i64::MAX it
/// cannot be stored, which no real instant or counter reaches.
fn to_i64(v: u64, what: &str) -> Result<i64, PgError> {
    i64::try_from(v).map_err(|_| PgError::Corrupt(format!("{what} {v} does not fit a bigint")))
}

fn to_u64(v: i64, what: &str) -> Result<u64, PgError> {
    u64::try_from(v).map_err(|_| PgError::Corrupt(format!("{what} {v} is negative")))
}

fn side_code(side: Side) -> &'static str {
    match side {
        Side::Debit => "D",
        Side::Credit => "C",
    }
}

/// What a posting set's kind is called in `posting_sets.kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetKind {
    TopUp,
    Settlement,
    Refund,
    Payout,
    Remittance,
}

impl SetKind {
    pub fn name(self) -> &'static str {
        match self {
            SetKind::TopUp => "TOP_UP",
            SetKind::Settlement => "SETTLEMENT",
            SetKind::Refund => "REFUND",
            SetKind::Payout => "PAYOUT",
            SetKind::Remittance => "REMITTANCE",
        }
    }
}

/// Why a posting set was not written (nothing was).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PostRefusal {
    /// The account's debit or credit total would pass u64::MAX.
    Overflow(AccountName),
    /// A wallet would go below zero.
    BelowZero(AccountName),
}

/// A written posting set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Posted {
    pub set_id: u64,
    /// One per leg, in the set's order.
    pub posting_ids: Vec<u64>,
    /// Every touched account's balance after the set, by name.
    pub balances: Vec<(AccountName, Balance)>,
}

/// Writes a balanced posting set and moves the balances, or refuses it
/// and writes nothing.
///
/// Locks: the set's accounts, in name order (`ORDER BY name FOR UPDATE`:
/// PostgreSQL locks rows in the order the sort returns them). Accounts
/// that do not exist yet are inserted first, also in name order (a
/// concurrent insert of the same name waits for the first to commit). The
/// balance checks then run in Rust on rows no one else can change before
/// this transaction ends, leg by leg as the sled store applies them; the
/// `accounts_no_overdraft` and `minor_units` constraints hold the same
/// rules for any writer, and the deferred `posting_sets_balanced` trigger
/// checks the set at commit.
pub async fn post(
    tx: &Transaction<'_>,
    legs: &crate::domain::PostingSet,
    kind: SetKind,
    trade: Option<&TradeId>,
    at: UnixMs,
) -> Result<Result<Posted, PostRefusal>, PgError> {
    let mut names: Vec<&AccountName> = legs.legs().iter().map(|l| &l.account).collect();
    names.sort_by_key(|a| a.key());
    names.dedup();
    let keys: Vec<String> = names.iter().map(|a| a.key()).collect();
    let currencies: Vec<String> = names.iter().map(|a| a.currency().code().to_owned()).collect();
    let no_overdraft: Vec<bool> = names.iter().map(|a| a.must_not_go_negative()).collect();
    tx.execute(
        "INSERT INTO accounts (name, currency, no_overdraft)
         SELECT * FROM unnest($1::text[], $2::text[], $3::bool[]) ORDER BY 1
         ON CONFLICT (name) DO NOTHING",
        &[&keys, &currencies, &no_overdraft],
    )
    .await?;
    let rows = tx
        .query("SELECT name, debits, credits FROM accounts WHERE name = ANY($1) ORDER BY name FOR UPDATE", &[&keys])
        .await?;
    let mut balances: Vec<(AccountName, Balance)> = Vec::with_capacity(names.len());
    for (name, key) in names.iter().zip(&keys) {
        let row = rows
            .iter()
            .find(|r| r.get::<_, &str>(0) == key)
            .ok_or_else(|| PgError::Corrupt(format!("account {key} vanished after its insert")))?;
        let debits: Minor = row.try_get(1)?;
        let credits: Minor = row.try_get(2)?;
        balances.push(((*name).clone(), Balance { debits: debits.into(), credits: credits.into() }));
    }
    for leg in legs.legs() {
        let Some((_, balance)) = balances.iter_mut().find(|(n, _)| *n == leg.account) else {
            return Err(PgError::Corrupt("a leg's account was not locked".into()));
        };
        let Ok(next) = balance.post(leg.side, leg.amount) else {
            return Ok(Err(PostRefusal::Overflow(leg.account.clone())));
        };
        if leg.account.must_not_go_negative() && next.credits < next.debits {
            return Ok(Err(PostRefusal::BelowZero(leg.account.clone())));
        }
        *balance = next;
    }
    let debits: Vec<Minor> = balances.iter().map(|(_, b)| Minor::from(b.debits)).collect();
    let credits: Vec<Minor> = balances.iter().map(|(_, b)| Minor::from(b.credits)).collect();
    tx.execute(
        "UPDATE accounts a SET debits = v.debits, credits = v.credits
         FROM unnest($1::text[], $2::numeric[], $3::numeric[]) AS v(name, debits, credits)
         WHERE a.name = v.name",
        &[&keys, &debits, &credits],
    )
    .await?;
    let trade_bytes = trade.map(|t| t.as_bytes().to_vec());
    let set_row = tx
        .query_one(
            "INSERT INTO posting_sets (set_id, kind, trade, at) VALUES (nextval('posting_set_ids'), $1, $2, $3)
             RETURNING set_id",
            &[&kind.name(), &trade_bytes, &to_i64(at.0, "instant")?],
        )
        .await?;
    let set_id: i64 = set_row.try_get(0)?;
    let leg_accounts: Vec<String> = legs.legs().iter().map(|l| l.account.key()).collect();
    let leg_sides: Vec<&str> = legs.legs().iter().map(|l| side_code(l.side)).collect();
    let leg_amounts: Vec<Minor> = legs.legs().iter().map(|l| Minor::from(l.amount)).collect();
    let leg_currencies: Vec<String> = legs.legs().iter().map(|l| l.account.currency().code().to_owned()).collect();
    let ids = tx
        .query(
            "INSERT INTO postings (posting_id, set_id, account, side, amount, currency)
             SELECT nextval('posting_ids'), $1, account, side, amount, currency
             FROM unnest($2::text[], $3::text[], $4::numeric[], $5::text[]) WITH ORDINALITY
                  AS l(account, side, amount, currency, n)
             ORDER BY n
             RETURNING posting_id",
            &[&set_id, &leg_accounts, &leg_sides, &leg_amounts, &leg_currencies],
        )
        .await?;
    let mut posting_ids = Vec::with_capacity(ids.len());
    for row in &ids {
        posting_ids.push(to_u64(row.try_get(0)?, "posting id")?);
    }
    posting_ids.sort_unstable();
    Ok(Ok(Posted { set_id: to_u64(set_id, "set id")?, posting_ids, balances }))
}

/// Reserves the next `n` event sequence numbers of `shop` and returns the
/// first; the caller inserts events `first..first + n`.
///
/// Lock: the shop's `shop_event_heads` row, until commit. The next
/// transaction writing an event of this shop waits for it, then reads the
/// committed counter; an aborted transaction gives its numbers back. So
/// numbers are gap-free and in commit order, which is what lets a reader
/// page by `seq > cursor` without missing one: once it sees n, every
/// number below n is already visible (a transaction's row lock is let go
/// only after its commit is visible to others).
pub async fn reserve_event_seqs(tx: &Transaction<'_>, shop: &ShopId, n: u32) -> Result<u64, PgError> {
    let row = tx
        .query_opt(
            "UPDATE shop_event_heads SET last_seq = last_seq + $2 WHERE shop = $1 RETURNING last_seq",
            &[&shop.as_str(), &i64::from(n)],
        )
        .await?
        .ok_or_else(|| PgError::Corrupt(format!("shop {shop} has no event counter")))?;
    let last = to_u64(row.try_get(0)?, "event sequence")?;
    last.checked_sub(u64::from(n))
        .and_then(|before| before.checked_add(1))
        .ok_or_else(|| PgError::Corrupt("event counter below the reservation".into()))
}

/// The highest event sequence of `shop` that is committed.
pub async fn event_head(client: &impl GenericClient, shop: &ShopId) -> Result<Option<u64>, PgError> {
    match client.query_opt("SELECT last_seq FROM shop_event_heads WHERE shop = $1", &[&shop.as_str()]).await? {
        Some(row) => Ok(Some(to_u64(row.try_get(0)?, "event sequence")?)),
        None => Ok(None),
    }
}

fn state_of(name: &str) -> Result<TradeState, PgError> {
    TradeState::ALL
        .into_iter()
        .find(|s| s.name() == name)
        .ok_or_else(|| PgError::Corrupt(format!("unknown trade state {name}")))
}

/// Locks a trade's row and returns its state, or `None` if there is no
/// such trade.
///
/// Lock: the trade row (`FOR UPDATE`), first of all locks. Two nodes
/// answering, cancelling or expiring the same trade run one after the
/// other; the second reads the state the first committed, so the domain's
/// transition refuses it once the trade is final.
pub async fn lock_trade(tx: &Transaction<'_>, id: &TradeId) -> Result<Option<TradeState>, PgError> {
    match tx.query_opt("SELECT state FROM trades WHERE id = $1 FOR UPDATE", &[&id.as_bytes().as_slice()]).await? {
        Some(row) => Ok(Some(state_of(row.try_get(0)?)?)),
        None => Ok(None),
    }
}

/// Moves an open trade (PENDING or OFFERED) to a final state; false when
/// it was not open any more (someone else finished it first).
///
/// Guard: `WHERE state IN ('PENDING', 'OFFERED')`, re-checked by
/// PostgreSQL on the newest row version after any concurrent update, so
/// of several concurrent callers exactly one sees a row updated. The
/// `trades_guard` trigger refuses any later change of a final state, and
/// `posting_sets_one_settlement` a second settlement, whatever the caller.
pub async fn finish_trade(
    tx: &Transaction<'_>,
    id: &TradeId,
    state: TradeState,
    finished_at: UnixMs,
) -> Result<bool, PgError> {
    if !state.is_final() {
        return Err(PgError::Corrupt(format!("finish_trade to {}", state.name())));
    }
    let n = tx
        .execute(
            "UPDATE trades SET state = $2, finished_at = $3, offer_delivery = NULL
             WHERE id = $1 AND state IN ('PENDING', 'OFFERED')",
            &[&id.as_bytes().as_slice(), &state.name(), &to_i64(finished_at.0, "instant")?],
        )
        .await?;
    Ok(n == 1)
}

/// The request an idempotency key was first used with, as the shop sent
/// it; compared field by field by the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyedRequest {
    pub trade: TradeId,
    pub amount: Amount,
    /// Whatever else the caller keeps to compare (register, payer,
    /// description…), as text, in a fixed order.
    pub fields: Vec<Option<String>>,
}

/// What claiming an idempotency key found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The key is new and is now this request's (until the transaction
    /// ends: rolled back, the key is free again).
    New,
    /// The key was used before, with this request.
    Existing(KeyedRequest),
}

/// Claims a CreateTrade idempotency key for a request, or returns the
/// request it was first used with.
///
/// Constraint: the primary key (shop, kind, key). `INSERT … ON CONFLICT DO
/// NOTHING` of a key another transaction inserted and has not committed
/// waits for that transaction: if it commits, nothing is inserted here and
/// the following `SELECT` (a new statement, so a new READ COMMITTED
/// snapshot) reads its row; if it rolls back, the insert here goes ahead.
/// So one request owns a key, and every retry compares against it.
pub async fn claim_create_key(
    tx: &Transaction<'_>,
    shop: &ShopId,
    key: &str,
    request: &KeyedRequest,
) -> Result<Claim, PgError> {
    let fields = &request.fields;
    let field = |i: usize| fields.get(i).cloned().flatten();
    let inserted = tx
        .execute(
            "INSERT INTO idempotency_keys (shop, kind, key, trade, amount, payer_number, description)
             VALUES ($1, 'CREATE', $2, $3, $4, $5, $6)
             ON CONFLICT (shop, kind, key) DO NOTHING",
            &[
                &shop.as_str(),
                &key,
                &request.trade.as_bytes().as_slice(),
                &Minor::from(request.amount),
                &field(0),
                &field(1),
            ],
        )
        .await?;
    if inserted == 1 {
        return Ok(Claim::New);
    }
    let row = tx
        .query_one(
            "SELECT trade, amount, payer_number, description FROM idempotency_keys
             WHERE shop = $1 AND kind = 'CREATE' AND key = $2",
            &[&shop.as_str(), &key],
        )
        .await?;
    let trade: Vec<u8> = row.try_get(0)?;
    let trade: [u8; 16] = trade.try_into().map_err(|_| PgError::Corrupt("trade id width".into()))?;
    let amount: Minor = row.try_get(1)?;
    Ok(Claim::Existing(KeyedRequest {
        trade: TradeId::from_bytes(trade),
        amount: amount.into(),
        fields: vec![row.try_get(2)?, row.try_get(3)?],
    }))
}

/// Open trades whose deadline is at or before `now`, oldest deadline
/// first, locked for this transaction, at most `limit`.
///
/// Lock: `FOR UPDATE SKIP LOCKED`. Sweepers on several nodes each take
/// trades no other sweeper holds, so none waits for another and no trade
/// is expired twice at once; and even without the skip, expiring is the
/// guarded [`finish_trade`], so a second expiry of a finished trade
/// changes nothing.
pub async fn claim_due(tx: &Transaction<'_>, now: UnixMs, limit: i64) -> Result<Vec<TradeId>, PgError> {
    let rows = tx
        .query(
            "SELECT id FROM trades WHERE state IN ('PENDING', 'OFFERED') AND expires_at <= $1
             ORDER BY expires_at LIMIT $2 FOR UPDATE SKIP LOCKED",
            &[&to_i64(now.0, "instant")?, &limit],
        )
        .await?;
    rows.iter()
        .map(|r| {
            let b: Vec<u8> = r.try_get(0)?;
            let b: [u8; 16] = b.try_into().map_err(|_| PgError::Corrupt("trade id width".into()))?;
            Ok(TradeId::from_bytes(b))
        })
        .collect()
}

/// Claims up to `limit` unclaimed (or lapsed) deliveries of `carrier` for
/// this node until `now + lease_ms`; returns their ids, oldest first. With
/// `reclaim_own`, deliveries this node already holds are renewed and
/// returned too (a relay reconnected to the same node gets them again at
/// once rather than after the claim lapses).
///
/// Lock: `FOR UPDATE SKIP LOCKED` on the outbox rows, then the claim
/// columns. Two nodes with relays of the same carrier claim disjoint
/// deliveries, so an offer is not pushed by two nodes at once; a claim
/// that lapses (its node died or lost the relay before the carrier's
/// acknowledgement deleted the row) is claimed again by any node. A
/// delivery thus reaches its carrier at least once and rarely twice,
/// which is safe: the carrier's acknowledgement and the handset's answer
/// are idempotent by delivery id and trade state.
pub async fn claim_deliveries(
    client: &impl GenericClient,
    carrier: &CarrierId,
    node: &str,
    now: UnixMs,
    lease_ms: u64,
    limit: i64,
    reclaim_own: bool,
) -> Result<Vec<u64>, PgError> {
    let now = to_i64(now.0, "instant")?;
    let until = now.checked_add(to_i64(lease_ms, "lease")?).ok_or_else(|| PgError::Corrupt("lease end".into()))?;
    let rows = client
        .query(
            "UPDATE outbox SET claimed_by = $2, claimed_until = $4
             WHERE delivery_id IN (
                 SELECT delivery_id FROM outbox
                 WHERE carrier = $1 AND (claimed_until IS NULL OR claimed_until <= $3 OR ($6 AND claimed_by = $2))
                 ORDER BY delivery_id LIMIT $5 FOR UPDATE SKIP LOCKED)
             RETURNING delivery_id",
            &[&carrier.as_str(), &node, &now, &until, &limit, &reclaim_own],
        )
        .await?;
    let mut ids = rows.iter().map(|r| to_u64(r.try_get(0)?, "delivery id")).collect::<Result<Vec<_>, _>>()?;
    ids.sort_unstable();
    Ok(ids)
}

fn prefix_text(p: &IpPrefix) -> String {
    format!("{}/{}", Ipv6Addr::from(p.network().0), p.len())
}

fn parse_prefix(text: &str) -> Result<IpPrefix, PgError> {
    let bad = || PgError::Corrupt(format!("prefix {text}"));
    let (addr, len) = text.split_once('/').ok_or_else(bad)?;
    let addr: Ipv6Addr = addr.parse().map_err(|_| bad())?;
    let len: u8 = len.parse().map_err(|_| bad())?;
    let prefix = IpPrefix::containing(IpKey(addr.octets()), len);
    if prefix.network().0 != addr.octets() || prefix.len() != len {
        return Err(bad());
    }
    Ok(prefix)
}

/// Key of the transaction-level advisory lock under which prefixes are
/// added ("syncpay" and 2).
pub const PREFIX_LOCK: i64 = 0x7379_6e63_7061_7902;

/// A prefix that overlaps another carrier's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overlap {
    /// Index of the new prefix in the request.
    pub index: usize,
    pub prefix: IpPrefix,
    pub other: IpPrefix,
    pub other_carrier: CarrierId,
}

/// Adds prefixes to a carrier unless one overlaps another carrier's.
///
/// Lock: a transaction-level advisory lock ([`PREFIX_LOCK`]) around the
/// check and the insert, so two nodes adding overlapping prefixes for two
/// carriers at once cannot both pass the check (under READ COMMITTED
/// neither would see the other's uncommitted row). Adding prefixes is an
/// operator's rare act; serialising it costs nothing.
pub async fn add_prefixes(
    tx: &Transaction<'_>,
    carrier: &CarrierId,
    prefixes: &[IpPrefix],
) -> Result<Result<(), Overlap>, PgError> {
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&PREFIX_LOCK]).await?;
    for (index, p) in prefixes.iter().enumerate() {
        let text = prefix_text(p);
        let clash = tx
            .query_opt(
                "SELECT prefix::text, carrier FROM carrier_prefixes
                 WHERE prefix && $1::text::cidr AND carrier <> $2 ORDER BY prefix LIMIT 1",
                &[&text, &carrier.as_str()],
            )
            .await?;
        if let Some(row) = clash {
            let other_carrier = CarrierId::parse(row.try_get(1)?)
                .map_err(|e| PgError::Corrupt(format!("carrier id in carrier_prefixes: {e}")))?;
            return Ok(Err(Overlap { index, prefix: *p, other: parse_prefix(row.try_get(0)?)?, other_carrier }));
        }
        tx.execute(
            "INSERT INTO carrier_prefixes (prefix, carrier) VALUES ($1::text::cidr, $2) ON CONFLICT (prefix) DO NOTHING",
            &[&text, &carrier.as_str()],
        )
        .await?;
    }
    Ok(Ok(()))
}

/// The carrier whose prefix holds `addr`, with the longest such prefix:
/// one GiST index search (`>>=`), logarithmic in the number of prefixes.
pub async fn carrier_of(client: &impl GenericClient, addr: IpKey) -> Result<Option<(CarrierId, IpPrefix)>, PgError> {
    let text = Ipv6Addr::from(addr.0).to_string();
    let row = client
        .query_opt(
            "SELECT carrier, prefix::text FROM carrier_prefixes WHERE prefix >>= $1::text::inet
             ORDER BY masklen(prefix) DESC LIMIT 1",
            &[&text],
        )
        .await?;
    match row {
        None => Ok(None),
        Some(row) => {
            let carrier = CarrierId::parse(row.try_get(0)?)
                .map_err(|e| PgError::Corrupt(format!("carrier id in carrier_prefixes: {e}")))?;
            Ok(Some((carrier, parse_prefix(row.try_get(1)?)?)))
        }
    }
}

/// Records a lease start (`subscriber` given) or stop of `addr` over
/// `ports` at `at`; a repeat of the same record changes nothing.
pub async fn record_lease(
    client: &impl GenericClient,
    carrier: &CarrierId,
    addr: IpKey,
    ports: PortRange,
    at: UnixMs,
    subscriber: Option<&SubscriberNumber>,
) -> Result<(), PgError> {
    client
        .execute(
            "INSERT INTO leases (addr, at, port_lo, is_start, port_hi, carrier, subscriber)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (addr, at, port_lo, is_start) DO UPDATE
             SET port_hi = EXCLUDED.port_hi, carrier = EXCLUDED.carrier, subscriber = EXCLUDED.subscriber",
            &[
                &addr.0.as_slice(),
                &to_i64(at.0, "instant")?,
                &i32::from(ports.lo()),
                &subscriber.is_some(),
                &i32::from(ports.hi()),
                &carrier.as_str(),
                &subscriber.map(|s| s.as_str()),
            ],
        )
        .await?;
    Ok(())
}

/// Who held `addr` (and `port`) at `at`: a backward scan of the primary
/// key from (addr, at), the newest record first, stopping at the first
/// whose port range answers the port; at most `max_walk` records (the
/// sled store's `MAX_LEASE_WALK`), so it stays logarithmic plus a bound.
pub async fn lease_holder(
    client: &impl GenericClient,
    addr: IpKey,
    port: Option<u16>,
    at: UnixMs,
    max_walk: i64,
) -> Result<Option<(CarrierId, SubscriberNumber)>, PgError> {
    let rows = client
        .query(
            "SELECT port_lo, port_hi, carrier, subscriber FROM leases
             WHERE addr = $1 AND at <= $2
             ORDER BY at DESC, port_lo DESC, is_start DESC LIMIT $3",
            &[&addr.0.as_slice(), &to_i64(at.0, "instant")?, &max_walk],
        )
        .await?;
    for row in rows {
        let lo = u16::try_from(row.try_get::<_, i32>(0)?).map_err(|_| PgError::Corrupt("port".into()))?;
        let hi = u16::try_from(row.try_get::<_, i32>(1)?).map_err(|_| PgError::Corrupt("port".into()))?;
        let ports = PortRange::new(lo, hi).map_err(|e| PgError::Corrupt(format!("lease ports: {e}")))?;
        if !ports.answers(port) {
            continue;
        }
        let subscriber: Option<&str> = row.try_get(3)?;
        return match subscriber {
            None => Ok(None),
            Some(s) => {
                let carrier = CarrierId::parse(row.try_get(2)?)
                    .map_err(|e| PgError::Corrupt(format!("carrier id in leases: {e}")))?;
                let number = SubscriberNumber::parse(s)
                    .map_err(|e| PgError::Corrupt(format!("subscriber number in leases: {e}")))?;
                Ok(Some((carrier, number)))
            }
        };
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_round_trip_through_their_text() {
        for text in ["10.0.0.0/8", "192.168.1.0/24", "2001:db8::/32", "::/0", "1.2.3.4/32"] {
            let p = IpPrefix::parse(text).expect("prefix");
            assert_eq!(parse_prefix(&prefix_text(&p)).expect("back"), p, "{text}");
        }
        // PostgreSQL writes an IPv4-mapped network this way.
        let p = parse_prefix("::ffff:10.0.0.0/104").expect("mapped");
        assert_eq!(p, IpPrefix::parse("10.0.0.0/8").expect("v4"));
        assert!(parse_prefix("::ffff:10.0.0.1/104").is_err(), "host bits");
        assert!(parse_prefix("10.0.0.0").is_err());
    }
}
