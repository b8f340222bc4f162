//! Ending an open trade without an answer, in the sled backend: the shop
//! cancels it, or its deadline passes. Either way the handset is told
//! (a withdrawal in the outbox).

use crate::domain::{ShopId, TradeEvent, TradeId, UnixMs};
use crate::store::records::TradeRecord;
use crate::store::{CancelOutcome, CancelRefusal, ExpireOutcome, NoRefusal};

use super::events::finish;
use super::keys;
use super::tx::{refuse, Step, Tx, T};
use super::writer::{Admissions, Cx, WriteOp};

pub(crate) struct Cancel {
    pub shop: ShopId,
    pub trade: TradeId,
    pub now: UnixMs,
}

impl WriteOp for Cancel {
    type Output = CancelOutcome;
    type Refusal = CancelRefusal;

    fn apply(&self, tx: &Tx, cx: &mut Cx, _: &Admissions) -> Step<CancelOutcome, CancelRefusal> {
        let mut trade = match tx.get::<TradeRecord>(T::Trades, self.trade.as_bytes())? {
            Some(t) if t.shop == self.shop => t,
            // Another shop's trade is indistinguishable from no trade.
            _ => return refuse(CancelRefusal::UnknownTrade),
        };
        if trade.state.is_final() {
            return refuse(CancelRefusal::AlreadyFinal(trade.state));
        }
        let mut deliveries = Vec::new();
        if self.now >= trade.expires_at {
            // The deadline passed before the sweeper got to it: the trade is
            // EXPIRED, not cancelled. Commit the expiry (a refusal would
            // roll it back) and let the caller answer that it was too late.
            finish(tx, &mut trade, TradeEvent::Expire, true, self.now, cx, &mut deliveries)?;
            return Ok(CancelOutcome::Expired { trade, deliveries });
        }
        finish(tx, &mut trade, TradeEvent::Cancel, true, self.now, cx, &mut deliveries)?;
        Ok(CancelOutcome::Cancelled { trade, deliveries })
    }
}

/// Expires the trade if it is open and its deadline has passed.
pub(crate) struct Expire {
    pub trade: TradeId,
    pub now: UnixMs,
}

impl WriteOp for Expire {
    type Output = ExpireOutcome;
    type Refusal = NoRefusal;

    fn apply(&self, tx: &Tx, cx: &mut Cx, _: &Admissions) -> Step<ExpireOutcome, NoRefusal> {
        let Some(mut trade) = tx.get::<TradeRecord>(T::Trades, self.trade.as_bytes())? else {
            return Ok(ExpireOutcome::Unknown);
        };
        if trade.state.is_final() {
            // A stale deadline entry (should not exist): remove it.
            tx.del(T::Deadlines, &keys::deadline(trade.expires_at, &trade.id))?;
            return Ok(ExpireOutcome::AlreadyFinal(trade));
        }
        if self.now < trade.expires_at {
            return Ok(ExpireOutcome::NotDue(trade));
        }
        let mut deliveries = Vec::new();
        finish(tx, &mut trade, TradeEvent::Expire, true, self.now, cx, &mut deliveries)?;
        Ok(ExpireOutcome::Expired { trade, deliveries })
    }
}
