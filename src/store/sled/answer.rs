//! The carrier's side of a trade in the sled backend: the acknowledgement
//! of a delivery (an offer reached the handset: OFFERED) and the handset's
//! signed answer, which settles from a wallet or onto a carrier bill in the
//! same commit as the trade's final state.

use crate::domain::receipt::ReceiptSigner;
use crate::domain::trade::transition;
use crate::domain::{
    AccountName, Amount, CarrierId, Currency, Decision, FailureReason, Leg, PostingSet, Side, TradeEvent, TradeId,
    Transition, UnixMs,
};
use crate::store::records::{
    AccountRecord, Delivery, EventKind, Funding, HandsetRecord, PayoutEntry, PostingKind, ShopRecord, SubscriberRecord,
    TradeRecord,
};
use crate::store::{
    AckOutcome, AnswerOutcome, AnswerRefusal, HandsetAnswer, NoRefusal, RejectedAnswer, SignatureCheck,
};

use super::billing::{plan_charge, record_charge, record_payout};
use super::events::{emit, finish};
use super::ledger::post;
use super::network::accepted;
use super::tx::{corrupt, Step, Tx, T};
use super::writer::{Admissions, Cx, WriteOp};
use super::{keys, SledStore};

/// The carrier acknowledged an outbox delivery.
pub(crate) struct Ack {
    pub carrier: CarrierId,
    pub delivery_id: u64,
    pub now: UnixMs,
}

impl WriteOp for Ack {
    type Output = AckOutcome;
    type Refusal = NoRefusal;

    fn apply(&self, tx: &Tx, cx: &mut Cx, _: &Admissions) -> Step<AckOutcome, NoRefusal> {
        let key = keys::outbox(&self.carrier, self.delivery_id);
        let Some(delivery) = tx.get::<Delivery>(T::Outbox, &key)? else {
            // Already acknowledged (or never ours): acknowledgements repeat.
            return Ok(AckOutcome::Unknown);
        };
        tx.del(T::Outbox, &key)?;
        let Some((offer, _)) = delivery.body.offer() else {
            return Ok(AckOutcome::Withdrawal);
        };
        let Some(mut trade) = tx.get::<TradeRecord>(T::Trades, offer.trade.as_bytes())? else {
            return corrupt("outbox offer for a missing trade");
        };
        trade.offer_delivery = None;
        match transition(trade.state, TradeEvent::Delivered) {
            Ok(Transition::To(next)) => {
                trade.state = next;
                super::history::put_trade(tx, &trade)?;
                emit(tx, &trade, EventKind::StateChanged, self.now, cx)?;
            }
            Ok(Transition::Unchanged) | Err(_) => super::history::put_trade(tx, &trade)?,
        }
        Ok(AckOutcome::Offer(Box::new(trade)))
    }
}

impl WriteOp for HandsetAnswer {
    type Output = AnswerOutcome;
    type Refusal = AnswerRefusal;

    fn apply(&self, tx: &Tx, cx: &mut Cx, _: &Admissions) -> Step<AnswerOutcome, AnswerRefusal> {
        let mut deliveries = Vec::new();
        let rejected = |trade: Option<TradeRecord>, why: RejectedAnswer, deliveries: Vec<Delivery>| {
            Ok(AnswerOutcome { trade, rejected: Some(why), deliveries })
        };
        let mut trade = match tx.get::<TradeRecord>(T::Trades, self.trade.as_bytes())? {
            Some(t) if t.carrier.as_ref() == Some(&self.carrier) => t,
            _ => return rejected(None, RejectedAnswer::UnknownTrade, deliveries),
        };
        if trade.state.is_final() {
            let state = trade.state;
            return rejected(Some(trade), RejectedAnswer::AlreadyFinal(state), deliveries);
        }
        let now = self.now;
        if now >= trade.expires_at {
            finish(tx, &mut trade, TradeEvent::Expire, true, now, cx, &mut deliveries)?;
            return rejected(Some(trade), RejectedAnswer::Expired, deliveries);
        }
        let handset = tx.get::<HandsetRecord>(T::Handsets, trade.request.payer.as_str().as_bytes())?;
        let signed = match trade.signed_bytes(self.decision) {
            Ok(signed) => signed,
            Err(e) => return corrupt(e.to_string()),
        };
        let event = match &handset {
            None => TradeEvent::Fail(FailureReason::NoHandset),
            Some(h) if !SignatureCheck::valid(self.checked.as_ref(), &h.public_key, &signed, &self.signature) => {
                TradeEvent::Fail(FailureReason::BadSignature)
            }
            Some(_) if self.decision == Decision::Decline => TradeEvent::Decline,
            Some(h) => {
                let subscriber = tx.get::<SubscriberRecord>(T::Subscribers, trade.request.payer.as_str().as_bytes())?;
                let settled = match subscriber.map(|s| s.funding) {
                    None => Err(FailureReason::PayerUnknown),
                    Some(Funding::Wallet) => settle_from_wallet(tx, &trade, now)?,
                    Some(Funding::CarrierBill { currency, monthly_cap }) => {
                        settle_to_bill(tx, &trade, currency, monthly_cap, now)?
                    }
                };
                match settled {
                    Err(reason) => TradeEvent::Fail(reason),
                    Ok(()) => {
                        // Verified above, so it is 64 bytes.
                        let Ok(sig) = <[u8; 64]>::try_from(self.signature.as_slice()) else {
                            return corrupt("verified signature is not 64 bytes");
                        };
                        let receipt = SignatureCheck::receipt(
                            self.checked.as_ref(),
                            &self.signer,
                            trade.id,
                            &h.public_key,
                            &signed,
                            &sig,
                            now,
                        );
                        trade.receipt = Some(receipt);
                        TradeEvent::Settle
                    }
                }
            }
        };
        if !matches!(event, TradeEvent::Fail(FailureReason::BadSignature)) {
            trade.decision = Some(self.decision);
        }
        finish(tx, &mut trade, event, false, now, cx, &mut deliveries)?;
        Ok(AnswerOutcome { trade: Some(trade), rejected: None, deliveries })
    }
}

/// Settles from the payer's prepaid wallet (never below zero).
fn settle_from_wallet(tx: &Tx, trade: &TradeRecord, now: UnixMs) -> Step<Result<(), FailureReason>, AnswerRefusal> {
    let wallet = AccountName::Wallet(trade.request.payer.clone(), trade.request.currency);
    let available =
        tx.get::<AccountRecord>(T::Accounts, &keys::account(&wallet))?.map_or(Amount::ZERO, |a| a.balance.available());
    if available < trade.request.amount {
        return Ok(Err(FailureReason::InsufficientFunds));
    }
    let shop = AccountName::ShopPayable(trade.shop.clone(), trade.request.currency);
    let set = match PostingSet::transfer(wallet, shop, trade.request.amount) {
        Ok(set) => set,
        Err(e) => return corrupt(format!("settlement postings: {e}")),
    };
    let set_id = settlement(tx, &set, trade, now)?;
    let entry = PayoutEntry::Settlement {
        trade: trade.id,
        carrier: None,
        currency: trade.request.currency,
        gross: trade.request.amount,
        fee: Amount::ZERO,
    };
    record_payout(tx, &trade.shop, now, set_id, &entry)?;
    Ok(Ok(()))
}

/// Writes a settlement's postings; returns the set id.
fn settlement(tx: &Tx, set: &PostingSet, trade: &TradeRecord, now: UnixMs) -> Step<u64, AnswerRefusal> {
    let (set_id, _) = post(tx, set, Some((trade.id, trade.created_at)), PostingKind::Settlement, now)
        .map_err(|s| s.map(AnswerRefusal::Postings))?;
    Ok(set_id)
}

/// Settles onto the payer's carrier bill: the carrier must (still) accept
/// the shop and the charge must fit the month's cap. One posting set:
/// debit the bill the amount, credit the shop the amount less the fee,
/// credit the carrier's fee account the fee (legs of zero are left out).
fn settle_to_bill(
    tx: &Tx,
    trade: &TradeRecord,
    bill_currency: Currency,
    cap: Amount,
    now: UnixMs,
) -> Step<Result<(), FailureReason>, AnswerRefusal> {
    let Some(carrier) = trade.carrier.as_ref() else {
        return corrupt("a carrier-billed trade without a carrier");
    };
    if !accepted(tx, carrier, &trade.shop)? {
        return Ok(Err(FailureReason::CarrierRefusedShop));
    }
    let (amount, currency) = (trade.request.amount, trade.request.currency);
    let payer = &trade.request.payer;
    let Some(plan) = plan_charge(tx, carrier, payer, bill_currency, cap, amount, currency, now)? else {
        return Ok(Err(FailureReason::SpendingCap));
    };
    let Ok(to_shop) = amount.checked_sub(plan.fee) else {
        return corrupt("fee above the amount");
    };
    let mut legs = vec![Leg { account: plan.bill.clone(), side: Side::Debit, amount }];
    if !to_shop.is_zero() {
        legs.push(Leg {
            account: AccountName::ShopPayable(trade.shop.clone(), currency),
            side: Side::Credit,
            amount: to_shop,
        });
    }
    if !plan.fee.is_zero() {
        legs.push(Leg {
            account: AccountName::CarrierFees(carrier.clone(), currency),
            side: Side::Credit,
            amount: plan.fee,
        });
    }
    let set = match PostingSet::new(legs) {
        Ok(set) => set,
        Err(e) => return corrupt(format!("settlement postings: {e}")),
    };
    let set_id = settlement(tx, &set, trade, now)?;
    let Some(shop) = tx.get::<ShopRecord>(T::Shops, trade.shop.as_str().as_bytes())? else {
        return corrupt("settled trade of a missing shop");
    };
    record_charge(tx, &plan, carrier, payer, trade.id, set_id, &trade.shop, &shop.display_name, amount, currency, now)?;
    let entry = PayoutEntry::Settlement {
        trade: trade.id,
        carrier: Some(carrier.clone()),
        currency,
        gross: amount,
        fee: plan.fee,
    };
    record_payout(tx, &trade.shop, now, set_id, &entry)?;
    Ok(Ok(()))
}

impl SledStore {
    /// Verifies an answer against the trade and enrolled key as they are
    /// now, on the caller's thread rather than the writer's, and
    /// countersigns a valid approval's receipt at `now` with `signer`.
    pub(crate) fn check_answer_now(
        &self,
        carrier: &CarrierId,
        trade: &TradeId,
        decision: Decision,
        signature: &[u8],
        signer: &ReceiptSigner,
        now: UnixMs,
    ) -> Option<SignatureCheck> {
        let trade: TradeRecord = self.get(T::Trades, trade.as_bytes()).ok()??;
        if trade.carrier.as_ref() != Some(carrier) || trade.state.is_final() {
            return None;
        }
        let handset: HandsetRecord = self.get(T::Handsets, trade.request.payer.as_str().as_bytes()).ok()??;
        let signed = trade.signed_bytes(decision).ok()?;
        Some(SignatureCheck::verify(trade.id, handset.public_key, signed, signature, decision, signer, now))
    }
}
