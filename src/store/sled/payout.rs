//! Shop payouts in the sled backend: part or all of a shop's payable
//! balance in one currency to its bank, through the system payout account,
//! as one balanced posting set. The balance check, the postings, the
//! payout record, its payout entry and its idempotency key are one
//! transaction on the single writer, so two payouts (concurrent or not)
//! never together pay more than the balance held.

use crate::domain::{AccountName, Amount, PostingSet};
use crate::store::records::{payout_reference, AccountRecord, PayoutEntry, PayoutRecord, PostingKind, ShopRecord};
use crate::store::{NewPayout, PaidOut, PayoutAmount, PostingRefusal, ShopPayoutRefusal};

use super::billing::record_payout;
use super::codec::IdempotencyRecord;
use super::keys;
use super::ledger::post;
use super::tx::{corrupt, refuse, Step, Tx, T};
use super::writer::{Admissions, Cx, WriteOp};

impl WriteOp for NewPayout {
    type Output = PaidOut;
    type Refusal = ShopPayoutRefusal;

    fn apply(&self, tx: &Tx, _cx: &mut Cx, _: &Admissions) -> Step<PaidOut, ShopPayoutRefusal> {
        let payable_name = AccountName::ShopPayable(self.shop.clone(), self.currency);
        let payable_key = keys::account(&payable_name);
        let idem_key = keys::payout_idempotency(&self.idempotency_key);
        if let Some(prior) = tx.get::<IdempotencyRecord>(T::Idempotency, &idem_key)? {
            let IdempotencyRecord::Payout { shop, currency, amount, payout_id } = prior else {
                return corrupt("payout idempotency key holds another record");
            };
            if let Some(field) = self.differs_from(&shop, currency, amount) {
                return refuse(ShopPayoutRefusal::Differs(field));
            }
            let Some(payout) = tx.get::<PayoutRecord>(T::Network, &keys::net::payout_record(payout_id))? else {
                return corrupt("payout key names a missing payout");
            };
            let Some(payable) = tx.get::<AccountRecord>(T::Accounts, &payable_key)? else {
                return corrupt("a paid-out shop has no payable account");
            };
            return Ok(PaidOut { payout, payable, replayed: true });
        }
        if tx.get::<ShopRecord>(T::Shops, self.shop.as_str().as_bytes())?.is_none() {
            return refuse(ShopPayoutRefusal::UnknownShop);
        }
        let available =
            tx.get::<AccountRecord>(T::Accounts, &payable_key)?.map_or(Amount::ZERO, |a| a.balance.available());
        let amount = match self.amount {
            PayoutAmount::Exact(a) if a <= available => a,
            PayoutAmount::WholeBalance if available > Amount::ZERO => available,
            PayoutAmount::Exact(_) | PayoutAmount::WholeBalance => {
                return refuse(ShopPayoutRefusal::BalanceShort { available })
            }
        };
        let set = match PostingSet::transfer(payable_name, AccountName::SystemPayout(self.currency), amount) {
            Ok(set) => set,
            Err(e) => return refuse(ShopPayoutRefusal::Postings(PostingRefusal::Invalid(e))),
        };
        // `post` refuses too if the payable would go below zero: the check
        // above and the one there read the same transaction.
        let (payout_id, _) =
            post(tx, &set, None, PostingKind::Payout, self.now).map_err(|s| s.map(ShopPayoutRefusal::Postings))?;
        let payout = PayoutRecord {
            payout_id,
            shop: self.shop.clone(),
            currency: self.currency,
            amount,
            reference: payout_reference(payout_id),
            idempotency_key: self.idempotency_key.clone(),
            at: self.now,
        };
        tx.put(T::Network, &keys::net::payout_record(payout_id), &payout)?;
        let entry = PayoutEntry::Payout {
            payout_id,
            currency: self.currency,
            amount,
            reference: payout.reference.clone(),
            at: self.now,
        };
        record_payout(tx, &self.shop, self.now, payout_id, &entry)?;
        tx.put(
            T::Idempotency,
            &idem_key,
            &IdempotencyRecord::Payout {
                shop: self.shop.clone(),
                currency: self.currency,
                amount: self.amount,
                payout_id,
            },
        )?;
        let Some(payable) = tx.get::<AccountRecord>(T::Accounts, &payable_key)? else {
            return corrupt("payable account missing after posting");
        };
        Ok(PaidOut { payout, payable, replayed: false })
    }
}
