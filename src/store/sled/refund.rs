//! Refunds in the sled backend: part or all of a settled trade back to its
//! payer, never beyond what was settled, idempotent by key. A refund is a
//! posting set of its own, and its id is that set's.

use crate::domain::{AccountName, Amount, PostingSet, TradeState};
use crate::store::records::{AccountRecord, EventKind, PayoutEntry, PostingKind, PostingRecord, TradeRecord};
use crate::store::{NewRefund, PostingRefusal, RefundField, RefundRefusal, Refunded};

use super::billing::{bill_line_of, record_bill_refund, record_payout};
use super::codec::IdempotencyRecord;
use super::events::emit;
use super::keys;
use super::ledger::post;
use super::tx::{corrupt, refuse, Step, Tx, T};
use super::writer::{Admissions, Cx, WriteOp};

impl WriteOp for NewRefund {
    type Output = Refunded;
    type Refusal = RefundRefusal;

    fn apply(&self, tx: &Tx, cx: &mut Cx, _: &Admissions) -> Step<Refunded, RefundRefusal> {
        let (shop, trade_id, amount, now) = (&self.shop, &self.trade, self.amount, self.now);
        let idem_key = self.idempotency_key.as_deref().map(|k| keys::refund_idempotency(shop, k));
        if let Some(key) = &idem_key {
            if let Some(prior) = tx.get::<IdempotencyRecord>(T::Idempotency, key)? {
                let (prior_trade, prior_amount, refund_id) = match prior {
                    IdempotencyRecord::Refund { trade, amount, set_id } => (trade, amount, set_id),
                    IdempotencyRecord::RefundV1 { trade, amount, first_posting } => {
                        // Written when refund ids were first posting ids.
                        match tx.get::<PostingRecord>(T::Postings, &first_posting.to_be_bytes())? {
                            Some(p) => (trade, amount, p.set_id),
                            None => return corrupt("refund key names a missing posting"),
                        }
                    }
                    IdempotencyRecord::Trade { .. }
                    | IdempotencyRecord::NetworkTrade { .. }
                    | IdempotencyRecord::Payout { .. }
                    | IdempotencyRecord::Remittance { .. } => return corrupt("refund idempotency key holds a trade"),
                };
                if prior_trade != *trade_id {
                    return refuse(RefundRefusal::Differs(RefundField::Trade));
                }
                if prior_amount != amount {
                    return refuse(RefundRefusal::Differs(RefundField::Amount));
                }
                let Some(trade) = tx.get::<TradeRecord>(T::Trades, trade_id.as_bytes())? else {
                    return corrupt("refunded trade missing");
                };
                return Ok(Refunded { trade, refund_id, amount, replayed: true });
            }
        }
        let mut trade = match tx.get::<TradeRecord>(T::Trades, trade_id.as_bytes())? {
            Some(t) if &t.shop == shop => t,
            _ => return refuse(RefundRefusal::UnknownTrade),
        };
        if trade.state != TradeState::Settled {
            return refuse(RefundRefusal::NotSettled(trade.state));
        }
        let Ok(refunded) = trade.refunded.checked_add(amount) else {
            return refuse(RefundRefusal::Overflows);
        };
        if refunded > trade.request.amount {
            let left = trade.request.amount.checked_sub(trade.refunded).unwrap_or(Amount::ZERO);
            return refuse(RefundRefusal::AboveRemaining { left });
        }
        let payable = AccountName::ShopPayable(trade.shop.clone(), trade.request.currency);
        let available = tx
            .get::<AccountRecord>(T::Accounts, &keys::account(&payable))?
            .map_or(Amount::ZERO, |a| a.balance.available());
        if available < amount {
            return refuse(RefundRefusal::ShopBalanceShort);
        }
        // A carrier-billed charge is refunded to the bill (freeing the cap
        // of the charge's month); the carrier keeps its fee, as card
        // processors do, so the shop returns the full refund from its own
        // balance.
        let bill = bill_line_of(tx, &trade.id)?;
        let (payer_account, carrier) = match (&bill, &trade.carrier) {
            (Some(_), Some(carrier)) => (
                AccountName::CarrierBill(carrier.clone(), trade.request.payer.clone(), trade.request.currency),
                Some(carrier.clone()),
            ),
            (Some(_), None) => return corrupt("a billed trade without a carrier"),
            (None, _) => (AccountName::Wallet(trade.request.payer.clone(), trade.request.currency), None),
        };
        let set = match PostingSet::transfer(payable, payer_account, amount) {
            Ok(set) => set,
            Err(e) => return refuse(RefundRefusal::Postings(PostingRefusal::Invalid(e))),
        };
        // The refund is its posting set: its id is the set id.
        let (set_id, _) = post(tx, &set, Some((trade.id, trade.created_at)), PostingKind::Refund, now)
            .map_err(|s| s.map(RefundRefusal::Postings))?;
        let refund_id = set_id;
        if let (Some((line_key, line)), Some(carrier)) = (bill, &carrier) {
            record_bill_refund(tx, carrier, &trade.request.payer, &line_key, line, amount)?;
        }
        let entry = PayoutEntry::Refund { trade: trade.id, carrier, currency: trade.request.currency, amount };
        record_payout(tx, &trade.shop, now, set_id, &entry)?;
        trade.refunded = refunded;
        super::history::put_trade(tx, &trade)?;
        if let Some(key) = &idem_key {
            tx.put(T::Idempotency, key, &IdempotencyRecord::Refund { trade: trade.id, amount, set_id })?;
        }
        emit(tx, &trade, EventKind::Refunded { amount, refund_id }, now, cx)?;
        Ok(Refunded { trade, refund_id, amount, replayed: false })
    }
}
