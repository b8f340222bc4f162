//! A trade's writes in the PostgreSQL backend, each one transaction at
//! READ COMMITTED with the locks `docs/POSTGRES.md` gives: CreateTrade
//! (idempotency key, register slot, offer), the carrier's acknowledgement,
//! the handset's answer (settled from a wallet or onto a carrier bill in
//! the same transaction as the trade's final state), cancel, expiry and
//! refunds; and what every change writes besides the trade: the shop's
//! next event (numbered under the shop's counter row, last lock taken)
//! and outbox deliveries.
//!
//! Locks, always in this order (so transactions wait, never deadlock):
//! a keyed refund's advisory lock; the trade row (`FOR UPDATE`); the
//! idempotency key; account rows in name order; cap-use rows; the
//! register row; the shop's event counter.

use std::sync::Arc;

use tokio_postgres::Transaction;

use super::numeric::Minor;
use super::rows::{self, big, corrupt, TRADE_COLS};
use super::sql::{self, SetKind};
use super::PgError;
use crate::domain::receipt::ReceiptSigner;
use crate::domain::trade::transition;
use crate::domain::{
    carrier_fee, AccountName, Amount, Balance, CarrierId, Currency, Decision, FailureReason, Leg, Month, PostingSet,
    ShopId, Side, SubscriberNumber, TradeEvent, TradeId, TradeState, Transition, UnixMs,
};
use crate::store::records::{
    Delivery, DeliveryBody, EventKind, NetworkIdentity, OfferBody, PayerRef, Receipt, SignedTerms, TradeRecord,
    TradeRequest,
};
use crate::store::refusals::{PostingRefusal, RefundField};
use crate::store::{
    AckOutcome, AnswerOutcome, AnswerRefusal, CancelOutcome, CancelRefusal, CreateTradeRefusal, Created, ExpireOutcome,
    HandsetAnswer, NewRefund, NewTrade, RefundRefusal, Refunded, RejectedAnswer, Resolution, SignatureCheck,
};

/// What a committed transaction tells the node afterwards: event heads
/// that moved, and whether carriers have new outbox work.
#[derive(Debug, Default)]
pub struct Cx {
    pub heads: Vec<(ShopId, u64)>,
    pub carriers: Vec<CarrierId>,
    /// Trades this transaction made final (announced to other nodes).
    pub finals: Vec<TradeId>,
    /// This node's relays: outbox rows for their carriers are claimed
    /// for this node as they are inserted (it pushes them live).
    pub relays: Option<Arc<LocalRelays>>,
    /// A queued relay write's turn: given back once its event counter is
    /// locked (or when the write ends), so the next queued write starts.
    pub turn: Option<super::store::Turn>,
}

/// How long a node's claim of an outbox delivery holds unless renewed:
/// long enough for a carrier to acknowledge a push many times over, short
/// enough that a node that died (or lost its relay) holds up another
/// node's relay only briefly.
pub const CLAIM_LEASE: std::time::Duration = std::time::Duration::from_secs(5);

/// The carriers this node has relays of, and its name in outbox claims.
#[derive(Debug)]
pub struct LocalRelays {
    pub node: String,
    attached: std::sync::Mutex<std::collections::HashMap<CarrierId, usize>>,
}

impl LocalRelays {
    pub fn new(node: String) -> LocalRelays {
        LocalRelays { node, attached: std::sync::Mutex::default() }
    }

    pub fn attach(&self, carrier: &CarrierId, attached: bool) {
        let mut map = self.attached.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(carrier.clone()).or_insert(0);
        *n = if attached { n.saturating_add(1) } else { n.saturating_sub(1) };
        if *n == 0 {
            map.remove(carrier);
        }
    }

    fn here(&self, carrier: &CarrierId) -> bool {
        self.attached.lock().unwrap_or_else(|p| p.into_inner()).contains_key(carrier)
    }
}

/// The claim a new outbox row of `carrier` starts with: this node's until
/// `now` + [`CLAIM_LEASE`] when it has a relay of the carrier, else none.
fn initial_claim(cx: &Cx, carrier: &CarrierId, now: UnixMs) -> Result<(Option<String>, Option<i64>), PgError> {
    match &cx.relays {
        Some(r) if r.here(carrier) => {
            let lease = u64::try_from(CLAIM_LEASE.as_millis()).unwrap_or(u64::MAX);
            Ok((Some(r.node.clone()), Some(big(now.0.saturating_add(lease))?)))
        }
        _ => Ok((None, None)),
    }
}

/// A step's outcome: its value, a refusal (rolled back), or an error.
pub type Step<T, R> = Result<Result<T, R>, PgError>;

/// A trade locked for this transaction (`FOR UPDATE`: first lock of all).
pub async fn lock_trade(tx: &Transaction<'_>, id: &TradeId) -> Result<Option<TradeRecord>, PgError> {
    let row = tx
        .query_opt(
            &format!("SELECT {TRADE_COLS} FROM trades t WHERE t.id = $1 FOR UPDATE"),
            &[&id.as_bytes().as_slice()],
        )
        .await?;
    row.as_ref().map(|r| rows::trade_at(r, 0)).transpose()
}

/// Writes the fields of a trade that change over its life.
async fn store_trade(tx: &Transaction<'_>, t: &TradeRecord) -> Result<(), PgError> {
    let (signature, key, key_id, counter) = match &t.receipt {
        None => (None, None, None, None),
        Some(Receipt::Countersigned { signature, handset_key, key_id, countersignature }) => (
            Some(signature.0.to_vec()),
            Some(handset_key.to_vec()),
            Some(key_id.as_bytes().to_vec()),
            Some(countersignature.0.to_vec()),
        ),
        // Only sled stores from before countersigned receipts hold these.
        Some(Receipt::Legacy { .. }) => return Err(corrupt("a legacy receipt in the PostgreSQL store")),
    };
    let n = tx
        .execute(
            "UPDATE trades SET state = $2, failure = $3, finished_at = $4, decision = $5, receipt_signature = $6,
                 receipt_handset_key = $7, receipt_key_id = $8, receipt_countersignature = $9, offer_delivery = $10,
                 refunded = $11
             WHERE id = $1",
            &[
                &t.id.as_bytes().as_slice(),
                &t.state.name(),
                &t.failure.map(|f| f.name()),
                &t.finished_at.map(|f| big(f.0)).transpose()?,
                &t.decision.map(rows::decision_name),
                &signature,
                &key,
                &key_id,
                &counter,
                &t.offer_delivery.map(big).transpose()?,
                &Minor::from(t.refunded),
            ],
        )
        .await?;
    if n != 1 {
        return Err(corrupt(format!("trade {} vanished while locked", t.id)));
    }
    Ok(())
}

/// Appends the shop's next event for `trade` as it is now. The counter
/// row is locked until commit (`sql::reserve_event_seqs`), so numbers are
/// gap-free and in commit order.
pub async fn emit(
    tx: &Transaction<'_>,
    trade: &TradeRecord,
    kind: EventKind,
    now: UnixMs,
    cx: &mut Cx,
) -> Result<(), PgError> {
    let seq = sql::reserve_event_seqs(tx, &trade.shop, 1).await?;
    if let Some(turn) = cx.turn.take() {
        let _ = turn.send(());
    }
    let (kind_name, refund_amount, refund_set) = match kind {
        EventKind::StateChanged => ("STATE_CHANGED", None, None),
        EventKind::Refunded { amount, refund_id } => ("REFUNDED", Some(Minor::from(amount)), Some(big(refund_id)?)),
    };
    tx.execute(
        "INSERT INTO events (shop, seq, at, trade, kind, refund_amount, refund_set, state, failure, decision,
                             finished_at, refunded, offer_delivery, has_receipt)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
        &[
            &trade.shop.as_str(),
            &big(seq)?,
            &big(now.0)?,
            &trade.id.as_bytes().as_slice(),
            &kind_name,
            &refund_amount,
            &refund_set,
            &trade.state.name(),
            &trade.failure.map(|f| f.name()),
            &trade.decision.map(rows::decision_name),
            &trade.finished_at.map(|f| big(f.0)).transpose()?,
            &Minor::from(trade.refunded),
            &trade.offer_delivery.map(big).transpose()?,
            &trade.receipt.is_some(),
        ],
    )
    .await?;
    cx.heads.push((trade.shop.clone(), seq));
    Ok(())
}

/// Queues a delivery to a carrier; returns its id (from a sequence:
/// unique, not gap-free).
pub async fn enqueue(
    tx: &Transaction<'_>,
    carrier: &CarrierId,
    body: DeliveryBody,
    now: UnixMs,
    deliveries: &mut Vec<Delivery>,
    cx: &mut Cx,
) -> Result<u64, PgError> {
    let (claimed_by, claimed_until) = initial_claim(cx, carrier, now)?;
    let row = match &body {
        DeliveryBody::Withdraw { trade, payer, state } => {
            tx.query_one(
                "INSERT INTO outbox (delivery_id, carrier, kind, trade, payer, withdraw_state, claimed_by, claimed_until)
                 VALUES (nextval('delivery_ids'), $1, 'WITHDRAW', $2, $3, $4, $5, $6) RETURNING delivery_id",
                &[
                    &carrier.as_str(),
                    &trade.as_bytes().as_slice(),
                    &payer.as_str(),
                    &state.name(),
                    &claimed_by,
                    &claimed_until,
                ],
            )
            .await?
        }
        // Every trade this backend creates is offered as payload version 2.
        DeliveryBody::OfferV1(_) => return Err(corrupt("a version-1 offer in the PostgreSQL store")),
        DeliveryBody::Offer(o) => {
            tx.query_one(
                "INSERT INTO outbox (delivery_id, carrier, kind, trade, payer, shop, shop_name, register,
                                     register_label, amount, currency, description, expires_at, binding_code,
                                     claimed_by, claimed_until)
                 VALUES (nextval('delivery_ids'), $1, 'OFFER', $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12,
                         $13, $14)
                 RETURNING delivery_id",
                &[
                    &carrier.as_str(),
                    &o.trade.as_bytes().as_slice(),
                    &o.payer.as_str(),
                    &o.shop.as_str(),
                    &o.shop_name,
                    &o.register.as_bytes().as_slice(),
                    &o.register_label,
                    &Minor::from(o.amount),
                    &o.currency.code(),
                    &o.description,
                    &big(o.expires_at.0)?,
                    &o.binding_code,
                    &claimed_by,
                    &claimed_until,
                ],
            )
            .await?
        }
    };
    let delivery_id = rows::unbig(row.try_get(0)?)?;
    deliveries.push(Delivery { delivery_id, carrier: carrier.clone(), body });
    if !cx.carriers.contains(carrier) {
        cx.carriers.push(carrier.clone());
    }
    Ok(delivery_id)
}

/// Moves a locked open trade to a final state with all that goes with it:
/// register slot freed, unacknowledged offer dropped, optional withdrawal
/// queued, trade stored, event emitted.
#[allow(clippy::too_many_arguments)]
pub async fn finish(
    tx: &Transaction<'_>,
    trade: &mut TradeRecord,
    event: TradeEvent,
    withdraw: bool,
    now: UnixMs,
    cx: &mut Cx,
    deliveries: &mut Vec<Delivery>,
) -> Result<(), PgError> {
    let next = match transition(trade.state, event) {
        Ok(Transition::To(s)) if s.is_final() => s,
        Ok(_) => return Err(corrupt(format!("{event:?} is not a final transition"))),
        Err(e) => return Err(corrupt(format!("a final trade was finished again: {e}"))),
    };
    trade.state = next;
    trade.finished_at = Some(now);
    cx.finals.push(trade.id);
    if let TradeEvent::Fail(reason) = event {
        trade.failure = Some(reason);
    }
    // Guarded: the CHECK keeps the count at or above zero for any writer.
    let n = tx
        .execute(
            "UPDATE registers SET open_trades = open_trades - 1 WHERE shop = $1 AND id = $2 AND open_trades > 0",
            &[&trade.shop.as_str(), &trade.request.register.as_bytes().as_slice()],
        )
        .await?;
    if n != 1 {
        return Err(corrupt("register open-trade count below zero"));
    }
    if let Some(carrier) = trade.carrier.clone() {
        if let Some(delivery_id) = trade.offer_delivery.take() {
            tx.execute(
                "DELETE FROM outbox WHERE delivery_id = $1 AND carrier = $2",
                &[&big(delivery_id)?, &carrier.as_str()],
            )
            .await?;
        }
        if withdraw {
            let body = DeliveryBody::Withdraw { trade: trade.id, payer: trade.request.payer.clone(), state: next };
            enqueue(tx, &carrier, body, now, deliveries, cx).await?;
        }
    }
    store_trade(tx, trade).await?;
    emit(tx, trade, EventKind::StateChanged, now, cx).await
}

// CreateTrade ----------------------------------------------------------

/// Who a network identity names, for `shop`. Acceptance is checked before
/// the lease, so an unaccepted shop learns only that the address is in
/// some carrier's range. Reads committed rows: a lease reported after
/// this statement began is not seen, as on sled a lease reported after
/// the trade was queued.
async fn resolve(tx: &Transaction<'_>, shop: &ShopId, id: &NetworkIdentity) -> Result<Resolution, PgError> {
    let Some((owner, _)) = sql::carrier_of(tx, id.ip).await? else {
        return Ok(Resolution::Miss);
    };
    if !accepted(tx, &owner, shop).await? {
        return Ok(Resolution::NotAccepted);
    }
    match sql::lease_holder(tx, id.ip, id.port, id.observed_at, MAX_LEASE_WALK).await? {
        Some((carrier, subscriber)) if carrier == owner => Ok(Resolution::Found { carrier, subscriber }),
        Some(_) | None => Ok(Resolution::Miss),
    }
}

/// Lease records one lookup walks at most (the sled backend's
/// `MAX_LEASE_WALK`, for the same reason: more blocks than one address
/// has means corrupt or hostile reports).
pub const MAX_LEASE_WALK: i64 = 4096;

pub async fn accepted(tx: &Transaction<'_>, carrier: &CarrierId, shop: &ShopId) -> Result<bool, PgError> {
    Ok(tx
        .query_opt("SELECT 1 FROM acceptances WHERE carrier = $1 AND shop = $2", &[&carrier.as_str(), &shop.as_str()])
        .await?
        .is_some())
}

/// The request an idempotency key was first used with, as the shop sent it.
async fn stored_request(
    tx: &Transaction<'_>,
    shop: &ShopId,
    key: &str,
) -> Result<(TradeId, TradeRequest<PayerRef>), PgError> {
    let row = tx
        .query_one(
            "SELECT trade, register, payer_number, identity_ip, identity_port, identity_observed_at, amount,
                    currency, description, ttl_ms
             FROM idempotency_keys WHERE shop = $1 AND kind = 'CREATE' AND key = $2",
            &[&shop.as_str(), &key],
        )
        .await?;
    let payer = match (row.try_get::<_, Option<&str>>(2)?, row.try_get::<_, Option<Vec<u8>>>(3)?) {
        (Some(n), None) => PayerRef::Number(rows::number(n)?),
        (None, Some(ip)) => PayerRef::Network(NetworkIdentity {
            ip: rows::ip(&ip)?,
            port: row
                .try_get::<_, Option<i32>>(4)?
                .map(|p| u16::try_from(p).map_err(|_| corrupt("port")))
                .transpose()?,
            observed_at: rows::ms(row.try_get::<_, Option<i64>>(5)?.ok_or_else(|| corrupt("observed at"))?)?,
        }),
        _ => return Err(corrupt("an idempotency key names no payer")),
    };
    let text = |i: usize| -> Result<String, PgError> {
        row.try_get::<_, Option<String>>(i)?.ok_or_else(|| corrupt("idempotent request field"))
    };
    let request = TradeRequest {
        register: rows::register_id(
            &row.try_get::<_, Option<Vec<u8>>>(1)?.ok_or_else(|| corrupt("idempotent request register"))?,
        )?,
        payer,
        amount: rows::amount(row.try_get(6)?),
        currency: rows::currency(&text(7)?)?,
        description: text(8)?,
        ttl_ms: rows::unbig(row.try_get::<_, Option<i64>>(9)?.ok_or_else(|| corrupt("ttl"))?)?,
    };
    Ok((rows::trade_id(row.try_get(0)?)?, request))
}

/// Claims the key for this request (`INSERT … ON CONFLICT DO NOTHING`:
/// of racing requests one inserts, the others wait for its commit and then
/// find its row); true if this request now owns it.
async fn claim_create_key(tx: &Transaction<'_>, t: &NewTrade, key: &str) -> Result<bool, PgError> {
    let r = &t.request;
    let (number, ip, port, observed) = match &r.payer {
        PayerRef::Number(n) => (Some(n.as_str()), None, None, None),
        PayerRef::Network(id) => (None, Some(id.ip.0.as_slice()), id.port.map(i32::from), Some(big(id.observed_at.0)?)),
    };
    let n = tx
        .execute(
            "INSERT INTO idempotency_keys (shop, kind, key, trade, register, payer_number, identity_ip,
                 identity_port, identity_observed_at, amount, currency, description, ttl_ms)
             VALUES ($1, 'CREATE', $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
             ON CONFLICT (shop, kind, key) DO NOTHING",
            &[
                &t.shop.as_str(),
                &key,
                &t.trade_id.as_bytes().as_slice(),
                &r.register.as_bytes().as_slice(),
                &number,
                &ip,
                &port,
                &observed,
                &Minor::from(r.amount),
                &r.currency.code(),
                &r.description,
                &big(r.ttl_ms)?,
            ],
        )
        .await?;
    Ok(n == 1)
}

/// CreateTrade: the replay of an idempotent retry, or a new trade.
pub async fn create_trade(tx: &Transaction<'_>, t: &NewTrade, cx: &mut Cx) -> Step<Created, CreateTradeRefusal> {
    // A share lock of the shop row: a suspension (an update of the row)
    // waits for this trade's commit, and this read sees a committed one.
    let Some(shop_row) = tx
        .query_opt("SELECT display_name, suspended_at FROM shops WHERE id = $1 FOR SHARE", &[&t.shop.as_str()])
        .await?
    else {
        return Ok(Err(CreateTradeRefusal::UnknownShop));
    };
    let shop_name: String = shop_row.try_get(0)?;
    let suspended = shop_row.try_get::<_, Option<i64>>(1)?.is_some();
    if let Some(key) = &t.idempotency_key {
        if !claim_create_key(tx, t, key).await? {
            let (prior, sent) = stored_request(tx, &t.shop, key).await?;
            if let Some(difference) = sent.first_difference(&t.request) {
                return Ok(Err(CreateTradeRefusal::Differs(difference)));
            }
            let row = tx
                .query_opt(
                    &format!("SELECT {TRADE_COLS} FROM trades t WHERE t.id = $1"),
                    &[&prior.as_bytes().as_slice()],
                )
                .await?
                .ok_or_else(|| corrupt("an idempotency key names a missing trade"))?;
            return Ok(Ok(Created { trade: rows::trade_at(&row, 0)?, replayed: true, deliveries: Vec::new() }));
        }
    }
    // Suspended: no new trades (a retry above still returned its trade).
    if suspended {
        return Ok(Err(CreateTradeRefusal::ShopSuspended));
    }
    let payer = match &t.request.payer {
        PayerRef::Number(n) => n.clone(),
        PayerRef::Network(identity) => match match t.asked.as_ref() {
            // Ask mode: the engine asked the carrier; no lease here.
            Some(asked) => asked.clone(),
            None => resolve(tx, &t.shop, identity).await?,
        } {
            Resolution::Found { carrier, subscriber } => {
                // Not the carrier's, or no handset: a miss like any other.
                let enrolled = tx
                    .query_opt(
                        "SELECT 1 FROM subscribers s JOIN handsets h USING (number) WHERE s.number = $1 AND s.carrier = $2",
                        &[&subscriber.as_str(), &carrier.as_str()],
                    )
                    .await?
                    .is_some();
                if !enrolled {
                    return Ok(Err(CreateTradeRefusal::NoOneToOffer));
                }
                subscriber
            }
            Resolution::NotAccepted => return Ok(Err(CreateTradeRefusal::NotAccepted)),
            Resolution::Miss => return Ok(Err(CreateTradeRefusal::NoOneToOffer)),
            Resolution::Unavailable => return Ok(Err(CreateTradeRefusal::CarrierUnavailable)),
        },
    };
    open_trade(tx, t, payer, shop_name, cx).await
}

async fn open_trade(
    tx: &Transaction<'_>,
    t: &NewTrade,
    payer: SubscriberNumber,
    shop_name: String,
    cx: &mut Cx,
) -> Step<Created, CreateTradeRefusal> {
    let request = t.request.with_payer(payer);
    let register = tx
        .query_opt(
            "SELECT label, open FROM registers WHERE shop = $1 AND id = $2",
            &[&t.shop.as_str(), &request.register.as_bytes().as_slice()],
        )
        .await?;
    let Some(register) = register else {
        return Ok(Err(CreateTradeRefusal::UnknownRegister));
    };
    let label: String = register.try_get(0)?;
    if !register.try_get::<_, bool>(1)? {
        return Ok(Err(CreateTradeRefusal::RegisterClosed));
    }
    let Some(expires_at) = t.now.checked_add_ms(request.ttl_ms) else {
        return Ok(Err(CreateTradeRefusal::DeadlineOverflows));
    };
    let sub = tx
        .query_opt(
            "SELECT s.carrier, s.funding, h.number IS NOT NULL FROM subscribers s
             LEFT JOIN handsets h USING (number) WHERE s.number = $1",
            &[&request.payer.as_str()],
        )
        .await?;
    let subscriber = match &sub {
        Some(row) => Some((
            rows::carrier_id(row.try_get(0)?)?,
            row.try_get::<_, &str>(1)? == "carrier_bill",
            row.try_get::<_, bool>(2)?,
        )),
        None => None,
    };
    let carrier = subscriber.as_ref().map(|s| s.0.clone());
    let Some(mut trade) = t.pending_trade(request, carrier, expires_at, &shop_name, &label) else {
        return Err(corrupt("binding code is not six digits"));
    };
    let refusal = match &subscriber {
        None => Some(FailureReason::PayerUnknown),
        Some((carrier, true, _)) if !accepted(tx, carrier, &t.shop).await? => Some(FailureReason::CarrierRefusedShop),
        Some((_, _, false)) => Some(FailureReason::NoHandset),
        Some(_) => None,
    };
    let mut deliveries = Vec::new();
    let offer_carrier = match (refusal, &subscriber) {
        (Some(reason), _) => {
            trade.state = TradeState::Failed;
            trade.failure = Some(reason);
            trade.finished_at = Some(t.now);
            None
        }
        (None, Some((carrier, _, _))) => {
            // The register's slot first (guarded: the limit holds across
            // nodes; the row stays locked until commit), then the gate, so
            // the allowance is spent only by a trade that is created.
            let n = tx
                .execute(
                    "UPDATE registers SET open_trades = open_trades + 1
                     WHERE shop = $1 AND id = $2 AND open AND open_trades < $3",
                    &[
                        &t.shop.as_str(),
                        &trade.request.register.as_bytes().as_slice(),
                        &i32::try_from(t.max_open_per_register).unwrap_or(i32::MAX),
                    ],
                )
                .await?;
            if n != 1 {
                return Ok(Err(CreateTradeRefusal::RegisterFull { max: t.max_open_per_register }));
            }
            if let Some(gate) = &t.offer_gate {
                if let Err(refusal) = gate.admit(&trade.request.payer) {
                    return Ok(Err(CreateTradeRefusal::OfferLimited(refusal)));
                }
            }
            Some(carrier.clone())
        }
        (None, None) => return Err(corrupt("payer check inconsistent")),
    };
    insert_trade(tx, &trade).await?;
    if let Some(carrier) = offer_carrier {
        let offer = OfferBody {
            trade: trade.id,
            payer: trade.request.payer.clone(),
            shop: t.shop.clone(),
            shop_name,
            register: trade.request.register,
            register_label: label,
            amount: trade.request.amount,
            currency: trade.request.currency,
            description: trade.request.description.clone(),
            expires_at,
            binding_code: t.binding_code.clone(),
        };
        let id = enqueue(tx, &carrier, DeliveryBody::Offer(offer), t.now, &mut deliveries, cx).await?;
        trade.offer_delivery = Some(id);
        tx.execute(
            "UPDATE trades SET offer_delivery = $2 WHERE id = $1",
            &[&trade.id.as_bytes().as_slice(), &big(id)?],
        )
        .await?;
    }
    emit(tx, &trade, EventKind::StateChanged, t.now, cx).await?;
    Ok(Ok(Created { trade, replayed: false, deliveries }))
}

async fn insert_trade(tx: &Transaction<'_>, t: &TradeRecord) -> Result<(), PgError> {
    let SignedTerms::V2 { screen_digest } = t.terms else {
        return Err(corrupt("a new trade offered as payload version 1"));
    };
    tx.execute(
        "INSERT INTO trades (id, shop, register, carrier, payer, amount, currency, description, ttl_ms, state,
                             failure, binding_code, created_at, expires_at, finished_at, idempotency_key,
                             screen_digest)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)",
        &[
            &t.id.as_bytes().as_slice(),
            &t.shop.as_str(),
            &t.request.register.as_bytes().as_slice(),
            &t.carrier.as_ref().map(|c| c.as_str()),
            &t.request.payer.as_str(),
            &Minor::from(t.request.amount),
            &t.request.currency.code(),
            &t.request.description,
            &big(t.request.ttl_ms)?,
            &t.state.name(),
            &t.failure.map(|f| f.name()),
            &t.binding_code,
            &big(t.created_at.0)?,
            &big(t.expires_at.0)?,
            &t.finished_at.map(|f| big(f.0)).transpose()?,
            &t.idempotency_key,
            &screen_digest.as_slice(),
        ],
    )
    .await?;
    Ok(())
}

// Cancel and expiry -----------------------------------------------------

pub async fn cancel(
    tx: &Transaction<'_>,
    shop: &ShopId,
    id: TradeId,
    now: UnixMs,
    cx: &mut Cx,
) -> Step<CancelOutcome, CancelRefusal> {
    let mut trade = match lock_trade(tx, &id).await? {
        Some(t) if &t.shop == shop => t,
        _ => return Ok(Err(CancelRefusal::UnknownTrade)),
    };
    if trade.state.is_final() {
        return Ok(Err(CancelRefusal::AlreadyFinal(trade.state)));
    }
    let mut deliveries = Vec::new();
    if now >= trade.expires_at {
        finish(tx, &mut trade, TradeEvent::Expire, true, now, cx, &mut deliveries).await?;
        return Ok(Ok(CancelOutcome::Expired { trade, deliveries }));
    }
    finish(tx, &mut trade, TradeEvent::Cancel, true, now, cx, &mut deliveries).await?;
    Ok(Ok(CancelOutcome::Cancelled { trade, deliveries }))
}

/// Expires the trade if it is open and due. Sweepers of several nodes may
/// pick the same trade: the row lock makes the second wait and find it
/// final (`AlreadyFinal`), so it is expired once.
pub async fn expire(tx: &Transaction<'_>, id: TradeId, now: UnixMs, cx: &mut Cx) -> Result<ExpireOutcome, PgError> {
    let Some(mut trade) = lock_trade(tx, &id).await? else {
        return Ok(ExpireOutcome::Unknown);
    };
    if trade.state.is_final() {
        return Ok(ExpireOutcome::AlreadyFinal(trade));
    }
    if now < trade.expires_at {
        return Ok(ExpireOutcome::NotDue(trade));
    }
    let mut deliveries = Vec::new();
    finish(tx, &mut trade, TradeEvent::Expire, true, now, cx, &mut deliveries).await?;
    Ok(ExpireOutcome::Expired { trade, deliveries })
}

// The carrier's side ----------------------------------------------------

/// The carrier acknowledged a delivery: deleted (a repeat finds nothing);
/// an offer's trade moves to OFFERED unless it already finished.
pub async fn ack(
    tx: &Transaction<'_>,
    carrier: &CarrierId,
    delivery_id: u64,
    now: UnixMs,
    cx: &mut Cx,
) -> Result<AckOutcome, PgError> {
    // The trade row first (lock order), found through the delivery.
    let found = tx
        .query_opt(
            "SELECT trade, kind FROM outbox WHERE delivery_id = $1 AND carrier = $2",
            &[&big(delivery_id)?, &carrier.as_str()],
        )
        .await?;
    let Some(found) = found else {
        return Ok(AckOutcome::Unknown);
    };
    let trade_id = rows::trade_id(found.try_get(0)?)?;
    let is_offer = found.try_get::<_, &str>(1)? == "OFFER";
    let trade = if is_offer { lock_trade(tx, &trade_id).await? } else { None };
    let deleted = tx
        .execute("DELETE FROM outbox WHERE delivery_id = $1 AND carrier = $2", &[&big(delivery_id)?, &carrier.as_str()])
        .await?;
    if deleted == 0 {
        // Acknowledged meanwhile through another node, or dropped by the
        // trade's end: nothing more to do.
        return Ok(AckOutcome::Unknown);
    }
    if !is_offer {
        return Ok(AckOutcome::Withdrawal);
    }
    let Some(mut trade) = trade else {
        return Err(corrupt("outbox offer for a missing trade"));
    };
    if trade.offer_delivery == Some(delivery_id) {
        trade.offer_delivery = None;
    }
    match transition(trade.state, TradeEvent::Delivered) {
        Ok(Transition::To(next)) => {
            trade.state = next;
            store_trade(tx, &trade).await?;
            emit(tx, &trade, EventKind::StateChanged, now, cx).await?;
        }
        Ok(Transition::Unchanged) | Err(_) => store_trade(tx, &trade).await?,
    }
    Ok(AckOutcome::Offer(Box::new(trade)))
}

/// Reads what a handset answer is checked against, off the write path.
#[allow(clippy::too_many_arguments)]
pub async fn check_answer(
    client: &impl tokio_postgres::GenericClient,
    carrier: &CarrierId,
    trade: &TradeId,
    decision: Decision,
    signature: &[u8],
    signer: &ReceiptSigner,
    now: UnixMs,
) -> Result<Option<SignatureCheck>, PgError> {
    let row = client
        .query_opt(
            &format!(
                "SELECT {TRADE_COLS}, h.public_key FROM trades t JOIN handsets h ON h.number = t.payer WHERE t.id = $1"
            ),
            &[&trade.as_bytes().as_slice()],
        )
        .await?;
    let Some(row) = row else { return Ok(None) };
    let t = rows::trade_at(&row, 0)?;
    if t.carrier.as_ref() != Some(carrier) || t.state.is_final() {
        return Ok(None);
    }
    let key: Vec<u8> = row.try_get(rows::TRADE_COL_COUNT)?;
    let key: [u8; 32] = key.try_into().map_err(|_| corrupt("public key width"))?;
    let signed = t.signed_bytes(decision).map_err(|e| corrupt(e.to_string()))?;
    Ok(Some(SignatureCheck::verify(t.id, key, signed, signature, decision, signer, now)))
}

/// A handset's answer: settled, declined or failed in one transaction
/// with its postings, bill line, payout entry and event; or rejected.
pub async fn answer(tx: &Transaction<'_>, a: &HandsetAnswer, cx: &mut Cx) -> Step<AnswerOutcome, AnswerRefusal> {
    let mut deliveries = Vec::new();
    let mut trade = match lock_trade(tx, &a.trade).await? {
        Some(t) if t.carrier.as_ref() == Some(&a.carrier) => t,
        _ => return Ok(Ok(AnswerOutcome { trade: None, rejected: Some(RejectedAnswer::UnknownTrade), deliveries })),
    };
    if trade.state.is_final() {
        let state = trade.state;
        return Ok(Ok(AnswerOutcome {
            trade: Some(trade),
            rejected: Some(RejectedAnswer::AlreadyFinal(state)),
            deliveries,
        }));
    }
    let now = a.now;
    if now >= trade.expires_at {
        finish(tx, &mut trade, TradeEvent::Expire, true, now, cx, &mut deliveries).await?;
        return Ok(Ok(AnswerOutcome { trade: Some(trade), rejected: Some(RejectedAnswer::Expired), deliveries }));
    }
    let handset = tx
        .query_opt("SELECT public_key FROM handsets WHERE number = $1", &[&trade.request.payer.as_str()])
        .await?
        .map(|r| r.try_get::<_, Vec<u8>>(0))
        .transpose()?
        .map(|k| <[u8; 32]>::try_from(k).map_err(|_| corrupt("public key width")))
        .transpose()?;
    let signed = trade.signed_bytes(a.decision).map_err(|e| corrupt(e.to_string()))?;
    let event = match &handset {
        None => TradeEvent::Fail(FailureReason::NoHandset),
        Some(key) if !SignatureCheck::valid(a.checked.as_ref(), key, &signed, &a.signature) => {
            TradeEvent::Fail(FailureReason::BadSignature)
        }
        Some(_) if a.decision == Decision::Decline => TradeEvent::Decline,
        Some(key) => {
            let funding = tx
                .query_opt(
                    "SELECT funding, bill_currency, monthly_cap FROM subscribers WHERE number = $1",
                    &[&trade.request.payer.as_str()],
                )
                .await?;
            let settled = match funding {
                None => Settled::Err(FailureReason::PayerUnknown),
                Some(row) => match row.try_get::<_, &str>(0)? {
                    "wallet" => match settle_from_wallet(tx, &trade, now).await? {
                        Ok(r) => r,
                        Err(refusal) => return Ok(Err(refusal)),
                    },
                    _ => {
                        let bill_currency = rows::currency(
                            row.try_get::<_, Option<&str>>(1)?.ok_or_else(|| corrupt("bill currency"))?,
                        )?;
                        let cap = rows::amount(row.try_get::<_, Option<Minor>>(2)?.ok_or_else(|| corrupt("cap"))?);
                        match settle_to_bill(tx, &trade, bill_currency, cap, now).await? {
                            Ok(r) => r,
                            Err(refusal) => return Ok(Err(refusal)),
                        }
                    }
                },
            };
            match settled {
                Err(reason) => TradeEvent::Fail(reason),
                Ok(()) => {
                    // Verified above, so it is 64 bytes.
                    let sig: [u8; 64] =
                        a.signature.as_slice().try_into().map_err(|_| corrupt("verified signature is not 64 bytes"))?;
                    let receipt =
                        SignatureCheck::receipt(a.checked.as_ref(), &a.signer, trade.id, key, &signed, &sig, now);
                    trade.receipt = Some(receipt);
                    TradeEvent::Settle
                }
            }
        }
    };
    if !matches!(event, TradeEvent::Fail(FailureReason::BadSignature)) {
        trade.decision = Some(a.decision);
    }
    finish(tx, &mut trade, event, false, now, cx, &mut deliveries).await?;
    Ok(Ok(AnswerOutcome { trade: Some(trade), rejected: None, deliveries }))
}

/// Locks the accounts that exist among `names`, in name order, and
/// returns their balances: what `sql::post` will lock anyway, taken before
/// a check reads a balance, so the check sees the value the posting will
/// change. A missing account is not made here (a refused or failed
/// settlement leaves no empty account behind, as on sled): it has a zero
/// balance, and one made meanwhile by another transaction only means this
/// check ran first.
pub(super) async fn lock_accounts(
    tx: &Transaction<'_>,
    names: &[&AccountName],
) -> Result<Vec<(String, Balance)>, PgError> {
    let mut keys: Vec<String> = names.iter().map(|a| a.key()).collect();
    keys.sort();
    keys.dedup();
    let found = tx
        .query("SELECT name, debits, credits FROM accounts WHERE name = ANY($1) ORDER BY name FOR UPDATE", &[&keys])
        .await?;
    found
        .iter()
        .map(|r| {
            Ok((
                r.try_get::<_, String>(0)?,
                Balance { debits: rows::amount(r.try_get(1)?), credits: rows::amount(r.try_get(2)?) },
            ))
        })
        .collect()
}

pub(super) fn available(locked: &[(String, Balance)], name: &AccountName) -> Amount {
    let key = name.key();
    locked.iter().find(|(k, _)| *k == key).map_or(Amount::ZERO, |(_, b)| b.available())
}

/// Writes a posting set; a refusal of its legs becomes `R`.
async fn post_set<R>(
    tx: &Transaction<'_>,
    set: &PostingSet,
    kind: SetKind,
    trade: Option<&TradeId>,
    now: UnixMs,
    refusal: impl FnOnce(PostingRefusal) -> R,
) -> Step<sql::Posted, R> {
    Ok(match sql::post(tx, set, kind, trade, now).await? {
        Ok(p) => Ok(p),
        Err(sql::PostRefusal::Overflow(a)) => Err(refusal(PostingRefusal::TotalOverflows(a))),
        Err(sql::PostRefusal::BelowZero(a)) => Err(refusal(PostingRefusal::BelowZero(a))),
    })
}

type Settled = Result<(), FailureReason>;

async fn settle_from_wallet(tx: &Transaction<'_>, trade: &TradeRecord, now: UnixMs) -> Step<Settled, AnswerRefusal> {
    let wallet = AccountName::Wallet(trade.request.payer.clone(), trade.request.currency);
    let shop = AccountName::ShopPayable(trade.shop.clone(), trade.request.currency);
    let locked = lock_accounts(tx, &[&wallet, &shop]).await?;
    if available(&locked, &wallet) < trade.request.amount {
        return Ok(Ok(Err(FailureReason::InsufficientFunds)));
    }
    let set = PostingSet::transfer(wallet, shop, trade.request.amount)
        .map_err(|e| corrupt(format!("settlement postings: {e}")))?;
    let posted = match post_set(tx, &set, SetKind::Settlement, Some(&trade.id), now, AnswerRefusal::Postings).await? {
        Ok(p) => p,
        Err(r) => return Ok(Err(r)),
    };
    record_payout(
        tx,
        &trade.shop,
        now,
        posted.set_id,
        "SETTLEMENT",
        &trade.id,
        None,
        trade.request.currency,
        trade.request.amount,
        Amount::ZERO,
    )
    .await?;
    Ok(Ok(Ok(())))
}

#[allow(clippy::too_many_arguments)]
async fn record_payout(
    tx: &Transaction<'_>,
    shop: &ShopId,
    at: UnixMs,
    set_id: u64,
    kind: &str,
    trade: &TradeId,
    carrier: Option<&CarrierId>,
    currency: Currency,
    gross: Amount,
    fee: Amount,
) -> Result<(), PgError> {
    tx.execute(
        "INSERT INTO payout_entries (set_id, shop, at, kind, trade, carrier, currency, gross, fee)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        &[
            &big(set_id)?,
            &shop.as_str(),
            &big(at.0)?,
            &kind,
            &trade.as_bytes().as_slice(),
            &carrier.map(|c| c.as_str()),
            &currency.code(),
            &Minor::from(gross),
            &Minor::from(fee),
        ],
    )
    .await?;
    Ok(())
}

/// Settles onto the payer's carrier bill within the month's cap: the
/// cap-use row is locked (inserted at zero first if new) before the check,
/// so two nodes settling for one subscriber cannot both pass it.
async fn settle_to_bill(
    tx: &Transaction<'_>,
    trade: &TradeRecord,
    bill_currency: Currency,
    cap: Amount,
    now: UnixMs,
) -> Step<Settled, AnswerRefusal> {
    let Some(carrier) = trade.carrier.as_ref() else {
        return Err(corrupt("a carrier-billed trade without a carrier"));
    };
    if !accepted(tx, carrier, &trade.shop).await? {
        return Ok(Ok(Err(FailureReason::CarrierRefusedShop)));
    }
    let (amount, currency, payer) = (trade.request.amount, trade.request.currency, &trade.request.payer);
    if currency != bill_currency {
        return Ok(Ok(Err(FailureReason::SpendingCap)));
    }
    let bill = AccountName::CarrierBill(carrier.clone(), payer.clone(), currency);
    let shop_account = AccountName::ShopPayable(trade.shop.clone(), currency);
    let fees = AccountName::CarrierFees(carrier.clone(), currency);
    lock_accounts(tx, &[&bill, &shop_account, &fees]).await?;
    let month = i32::try_from(Month::of(now).number()).map_err(|_| corrupt("month"))?;
    tx.execute(
        "INSERT INTO cap_use (carrier, number, currency, month, cap, used) VALUES ($1, $2, $3, $4, $5, 0)
         ON CONFLICT DO NOTHING",
        &[&carrier.as_str(), &payer.as_str(), &currency.code(), &month, &Minor::from(cap)],
    )
    .await?;
    let used = tx
        .query_one(
            "SELECT used FROM cap_use WHERE carrier = $1 AND number = $2 AND currency = $3 AND month = $4 FOR UPDATE",
            &[&carrier.as_str(), &payer.as_str(), &currency.code(), &month],
        )
        .await?;
    let used = rows::amount(used.try_get(0)?);
    let total = match used.checked_add(amount) {
        Ok(total) if total <= cap => total,
        _ => return Ok(Ok(Err(FailureReason::SpendingCap))),
    };
    let fee_bps =
        tx.query_one("SELECT fee_bps FROM carriers WHERE id = $1", &[&carrier.as_str()]).await?.try_get::<_, i32>(0)?;
    let fee_bps = u32::try_from(fee_bps).map_err(|_| corrupt("fee below zero"))?;
    let fee = carrier_fee(amount, fee_bps);
    let to_shop = amount.checked_sub(fee).map_err(|_| corrupt("fee above the amount"))?;
    let mut legs = vec![Leg { account: bill, side: Side::Debit, amount }];
    if !to_shop.is_zero() {
        legs.push(Leg { account: shop_account, side: Side::Credit, amount: to_shop });
    }
    if !fee.is_zero() {
        legs.push(Leg { account: fees, side: Side::Credit, amount: fee });
    }
    let set = PostingSet::new(legs).map_err(|e| corrupt(format!("settlement postings: {e}")))?;
    let posted = match post_set(tx, &set, SetKind::Settlement, Some(&trade.id), now, AnswerRefusal::Postings).await? {
        Ok(p) => p,
        Err(r) => return Ok(Err(r)),
    };
    tx.execute(
        "UPDATE cap_use SET used = $5, cap = $6 WHERE carrier = $1 AND number = $2 AND currency = $3 AND month = $4",
        &[&carrier.as_str(), &payer.as_str(), &currency.code(), &month, &Minor::from(total), &Minor::from(cap)],
    )
    .await?;
    tx.execute(
        "INSERT INTO bill_lines (set_id, carrier, number, month, trade, shop, shop_name, amount, currency, fee,
                                 fee_bps, settled_at)
         SELECT $1, $2, $3, $4, $5, $6, display_name, $7, $8, $9, $10, $11 FROM shops WHERE id = $6",
        &[
            &big(posted.set_id)?,
            &carrier.as_str(),
            &payer.as_str(),
            &month,
            &trade.id.as_bytes().as_slice(),
            &trade.shop.as_str(),
            &Minor::from(amount),
            &currency.code(),
            &Minor::from(fee),
            &i32::try_from(fee_bps).map_err(|_| corrupt("fee"))?,
            &big(now.0)?,
        ],
    )
    .await?;
    record_payout(tx, &trade.shop, now, posted.set_id, "SETTLEMENT", &trade.id, Some(carrier), currency, amount, fee)
        .await?;
    Ok(Ok(Ok(())))
}

// Refunds ---------------------------------------------------------------

/// Key of the advisory lock that serialises refunds under one shop's
/// idempotency key (the key row can only be written once the refund's
/// posting set exists, so the row cannot be the lock). Text holds no NUL;
/// a slug holds no `/`, so shops never share a lock text.
fn refund_lock_text(shop: &ShopId, key: &str) -> String {
    format!("syncpay refund/{}/{key}", shop.as_str())
}

pub async fn refund(tx: &Transaction<'_>, r: &NewRefund, cx: &mut Cx) -> Step<Refunded, RefundRefusal> {
    if let Some(key) = &r.idempotency_key {
        tx.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", &[&refund_lock_text(&r.shop, key)]).await?;
        let prior = tx
            .query_opt(
                "SELECT trade, amount, refund_set FROM idempotency_keys WHERE shop = $1 AND kind = 'REFUND' AND key = $2",
                &[&r.shop.as_str(), key],
            )
            .await?;
        if let Some(prior) = prior {
            if rows::trade_id(prior.try_get(0)?)? != r.trade {
                return Ok(Err(RefundRefusal::Differs(RefundField::Trade)));
            }
            if rows::amount(prior.try_get(1)?) != r.amount {
                return Ok(Err(RefundRefusal::Differs(RefundField::Amount)));
            }
            let refund_id = rows::unbig(prior.try_get::<_, Option<i64>>(2)?.ok_or_else(|| corrupt("refund set"))?)?;
            let trade = lock_trade(tx, &r.trade).await?.ok_or_else(|| corrupt("refunded trade missing"))?;
            return Ok(Ok(Refunded { trade, refund_id, amount: r.amount, replayed: true }));
        }
    }
    let mut trade = match lock_trade(tx, &r.trade).await? {
        Some(t) if t.shop == r.shop => t,
        _ => return Ok(Err(RefundRefusal::UnknownTrade)),
    };
    if trade.state != TradeState::Settled {
        return Ok(Err(RefundRefusal::NotSettled(trade.state)));
    }
    let Ok(refunded) = trade.refunded.checked_add(r.amount) else {
        return Ok(Err(RefundRefusal::Overflows));
    };
    if refunded > trade.request.amount {
        let left = trade.request.amount.checked_sub(trade.refunded).unwrap_or(Amount::ZERO);
        return Ok(Err(RefundRefusal::AboveRemaining { left }));
    }
    let payable = AccountName::ShopPayable(trade.shop.clone(), trade.request.currency);
    let line = tx
        .query_opt(
            "SELECT set_id, month FROM bill_lines WHERE trade = $1 FOR UPDATE",
            &[&trade.id.as_bytes().as_slice()],
        )
        .await?;
    let (payer_account, carrier) = match (&line, &trade.carrier) {
        (Some(_), Some(carrier)) => (
            AccountName::CarrierBill(carrier.clone(), trade.request.payer.clone(), trade.request.currency),
            Some(carrier.clone()),
        ),
        (Some(_), None) => return Err(corrupt("a billed trade without a carrier")),
        (None, _) => (AccountName::Wallet(trade.request.payer.clone(), trade.request.currency), None),
    };
    let locked = lock_accounts(tx, &[&payable, &payer_account]).await?;
    if available(&locked, &payable) < r.amount {
        return Ok(Err(RefundRefusal::ShopBalanceShort));
    }
    let set = match PostingSet::transfer(payable, payer_account, r.amount) {
        Ok(set) => set,
        Err(e) => return Ok(Err(RefundRefusal::Postings(PostingRefusal::Invalid(e)))),
    };
    let posted = match post_set(tx, &set, SetKind::Refund, Some(&trade.id), r.now, RefundRefusal::Postings).await? {
        Ok(p) => p,
        Err(refusal) => return Ok(Err(refusal)),
    };
    let refund_id = posted.set_id;
    if let (Some(line), Some(carrier)) = (&line, &carrier) {
        let line_set: i64 = line.try_get(0)?;
        let month: i32 = line.try_get(1)?;
        tx.execute(
            "UPDATE bill_lines SET refunded = refunded + $2 WHERE set_id = $1",
            &[&line_set, &Minor::from(r.amount)],
        )
        .await?;
        let n = tx
            .execute(
                "UPDATE cap_use SET used = used - $5
                 WHERE carrier = $1 AND number = $2 AND currency = $3 AND month = $4 AND used >= $5",
                &[
                    &carrier.as_str(),
                    &trade.request.payer.as_str(),
                    &trade.request.currency.code(),
                    &month,
                    &Minor::from(r.amount),
                ],
            )
            .await?;
        if n != 1 {
            return Err(corrupt("a billed month has no cap use to free"));
        }
    }
    record_payout(
        tx,
        &trade.shop,
        r.now,
        refund_id,
        "REFUND",
        &trade.id,
        carrier.as_ref(),
        trade.request.currency,
        r.amount,
        Amount::ZERO,
    )
    .await?;
    trade.refunded = refunded;
    store_trade(tx, &trade).await?;
    if let Some(key) = &r.idempotency_key {
        tx.execute(
            "INSERT INTO idempotency_keys (shop, kind, key, trade, amount, refund_set) VALUES ($1, 'REFUND', $2, $3, $4, $5)",
            &[&r.shop.as_str(), key, &trade.id.as_bytes().as_slice(), &Minor::from(r.amount), &big(refund_id)?],
        )
        .await?;
    }
    emit(tx, &trade, EventKind::Refunded { amount: r.amount, refund_id }, r.now, cx).await?;
    Ok(Ok(Refunded { trade, refund_id, amount: r.amount, replayed: false }))
}
