//! What every trade change writes besides the trade: the shop's next event
//! (numbered per shop, gap-free), outbox deliveries, and, for a change to a
//! final state, everything that goes with it. Also the reads of events, the
//! outbox and the deadline index.

use crate::domain::trade::transition;
use crate::domain::{CarrierId, ShopId, TradeEvent, TradeId, Transition, UnixMs};
use crate::store::records::{
    Delivery, DeliveryBody, EventKind, EventRecord, PostingRecord, RegisterRecord, ShopRecord,
};
use crate::store::{Failure, TradeRecord};

use super::codec::{self, StoredEvent};
use super::tx::{corrupt, Tx, TxResult, T};
use super::writer::Cx;
use super::{keys, SledStore};

/// Appends an event for the trade's shop with the next sequence number.
pub(crate) fn emit(tx: &Tx, trade: &TradeRecord, kind: EventKind, now: UnixMs, cx: &mut Cx) -> TxResult<()> {
    // The shop's next number: after this transaction's own events, else as
    // committed (`hot`; the shop record no longer holds it, issue 14).
    let seq = match cx.next_event.get(&trade.shop) {
        Some(next) => *next,
        None => {
            if tx.get::<ShopRecord>(T::Shops, trade.shop.as_str().as_bytes())?.is_none() {
                return corrupt(format!("trade {} names a missing shop", trade.id));
            }
            tx.hot.next_event(&trade.shop)?
        }
    };
    let Some(next) = seq.checked_add(1) else {
        return corrupt("event sequence overflow");
    };
    cx.next_event.insert(trade.shop.clone(), next);
    let event = EventRecord { seq, at: now, kind, trade: trade.clone() };
    let bytes = codec::encode_event(&event)?;
    tx.tree(T::Events)?.insert(keys::event(&trade.shop, seq), bytes)?;
    // The trade's own history, for the operator.
    super::history::note(tx, &trade.id, trade.created_at, codec::HistoryRef::Event(seq))?;
    cx.heads.push((trade.shop.clone(), seq));
    Ok(())
}

pub(crate) fn enqueue(
    tx: &Tx,
    carrier: &CarrierId,
    body: DeliveryBody,
    deliveries: &mut Vec<Delivery>,
) -> TxResult<u64> {
    let delivery_id = tx.next(b"delivery")?;
    let delivery = Delivery { delivery_id, carrier: carrier.clone(), body };
    tx.put(T::Outbox, &keys::outbox(carrier, delivery_id), &delivery)?;
    deliveries.push(delivery);
    Ok(delivery_id)
}

/// Moves an open trade to a final state and does everything that goes with
/// it: deadline removed, register slot freed, unacknowledged offer dropped,
/// optional withdrawal queued, trade stored, event emitted. The caller has
/// checked that the trade is open.
pub(crate) fn finish(
    tx: &Tx,
    trade: &mut TradeRecord,
    event: TradeEvent,
    withdraw: bool,
    now: UnixMs,
    cx: &mut Cx,
    deliveries: &mut Vec<Delivery>,
) -> TxResult<()> {
    let next = match transition(trade.state, event) {
        Ok(Transition::To(s)) if s.is_final() => s,
        Ok(_) => return corrupt(format!("{event:?} is not a final transition")),
        Err(e) => return corrupt(format!("a final trade was finished again: {e}")),
    };
    trade.state = next;
    trade.finished_at = Some(now);
    if let TradeEvent::Fail(reason) = event {
        trade.failure = Some(reason);
    }
    tx.del(T::Deadlines, &keys::deadline(trade.expires_at, &trade.id))?;
    let register_key = keys::register(&trade.shop, &trade.request.register);
    if let Some(mut register) = tx.get::<RegisterRecord>(T::Registers, &register_key)? {
        let Some(n) = register.open_trades.checked_sub(1) else {
            return corrupt("register open-trade count below zero");
        };
        register.open_trades = n;
        tx.put(T::Registers, &register_key, &register)?;
    }
    if let Some(carrier) = trade.carrier.clone() {
        if let Some(delivery_id) = trade.offer_delivery.take() {
            tx.del(T::Outbox, &keys::outbox(&carrier, delivery_id))?;
        }
        if withdraw {
            let body = DeliveryBody::Withdraw { trade: trade.id, payer: trade.request.payer.clone(), state: next };
            enqueue(tx, &carrier, body, deliveries)?;
        }
    }
    super::history::put_trade(tx, trade)?;
    emit(tx, trade, EventKind::StateChanged, now, cx)
}

impl SledStore {
    /// An event kind stored before refund ids named posting sets: a
    /// refund's first posting id, read back as the id of its set.
    fn refund_set_of_legacy(&self, kind: EventKind) -> Result<EventKind, Failure> {
        match kind {
            EventKind::StateChanged => Ok(kind),
            EventKind::Refunded { amount, refund_id: first_posting } => {
                let posting: PostingRecord = self.get(T::Postings, &first_posting.to_be_bytes())?.ok_or_else(|| {
                    Failure::Corrupt(format!("a refund event names posting {first_posting}, which is missing"))
                })?;
                Ok(EventKind::Refunded { amount, refund_id: posting.set_id })
            }
        }
    }

    /// Events of `shop` with `after < seq <= head`, at most `limit`.
    pub(crate) fn events_between(
        &self,
        shop: &ShopId,
        after: u64,
        head: u64,
        limit: usize,
    ) -> Result<Vec<EventRecord>, Failure> {
        let Some(start) = after.checked_add(1) else {
            return Ok(Vec::new());
        };
        if start > head {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        // A trade's events are usually close together: keep the last trade
        // read rather than read it again for each.
        let mut last: Option<TradeRecord> = None;
        for item in self.tree(T::Events).range(keys::event(shop, start)..=keys::event(shop, head)).take(limit) {
            let (_, v) = item.map_err(io)?;
            let (compact, legacy_refund_id) = match codec::decode_event(&v)? {
                StoredEvent::Whole(mut event) => {
                    event.kind = self.refund_set_of_legacy(event.kind)?;
                    out.push(*event);
                    continue;
                }
                StoredEvent::CompactV2(c) => (c, true),
                StoredEvent::Compact(c) => (c, false),
            };
            let mut compact = compact;
            if legacy_refund_id {
                compact.kind = self.refund_set_of_legacy(compact.kind)?;
            }
            let trade = match last.take() {
                Some(t) if t.id == compact.trade => t,
                _ => self.get(T::Trades, compact.trade.as_bytes())?.ok_or_else(|| {
                    Failure::Corrupt(format!("event {} names trade {}, which is missing", compact.seq, compact.trade))
                })?,
            };
            last = Some(trade.clone());
            out.push(compact.join(trade)?);
        }
        Ok(out)
    }

    /// Unacknowledged deliveries for a carrier with ids above `after`.
    pub(crate) fn outbox_after(&self, carrier: &CarrierId, after: u64, limit: usize) -> Result<Vec<Delivery>, Failure> {
        let Some(start) = after.checked_add(1) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        let range = keys::outbox(carrier, start)..=keys::outbox(carrier, u64::MAX);
        for item in self.tree(T::Outbox).range(range).take(limit) {
            let (_, v) = item.map_err(io)?;
            out.push(codec::decode(&v)?);
        }
        Ok(out)
    }

    /// Open trades whose deadline is at or before `now`, at most `limit`.
    pub(crate) fn due_at(&self, now: UnixMs, limit: usize) -> Result<Vec<TradeId>, Failure> {
        let mut out = Vec::new();
        let end = keys::deadline(now, &TradeId::from_bytes([0xff; 16]));
        for item in self.tree(T::Deadlines).range(..=end).take(limit) {
            let (k, _) = item.map_err(io)?;
            let bytes: [u8; 16] =
                k.get(8..24).and_then(|s| s.try_into().ok()).ok_or(Failure::Corrupt("deadline key".into()))?;
            out.push(TradeId::from_bytes(bytes));
        }
        Ok(out)
    }

    /// The earliest deadline of any open trade.
    pub(crate) fn earliest_deadline(&self) -> Result<Option<UnixMs>, Failure> {
        match self.tree(T::Deadlines).first().map_err(io)? {
            Some((k, _)) => {
                let bytes: [u8; 8] =
                    k.get(..8).and_then(|s| s.try_into().ok()).ok_or(Failure::Corrupt("deadline key".into()))?;
                Ok(Some(UnixMs(u64::from_be_bytes(bytes))))
            }
            None => Ok(None),
        }
    }
}

pub(crate) fn io(e: sled::Error) -> Failure {
    Failure::Io(e.to_string())
}
