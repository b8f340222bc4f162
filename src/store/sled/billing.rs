//! Carrier billing in the sled backend: a carrier-billed settlement's cap
//! check and the records it files (cap use per month, the bill line and
//! its index by trade), refunds of billed charges, payout entries, and the
//! reads of statements and payout reports.

use crate::domain::{
    carrier_fee, AccountName, Amount, CarrierId, Currency, Month, ShopId, SubscriberNumber, TradeId, UnixMs,
};
use crate::store::records::{BillLine, CapUsage, Funding, PayoutEntry, SubscriberRecord};
use crate::store::{PayoutRefusal, StatementData, StatementRefusal, StoreError};

use super::network::fee_bps;
use super::tx::{corrupt, Tx, TxResult, T};
use super::{codec, io, keys, SledStore};

/// Payout entries read per report at most; a longer period must be split.
pub const MAX_PAYOUT_ENTRIES: usize = 1_000_000;

/// The carrier-billed half of a settlement, decided before any posting:
/// `Ok(None)` if the cap allows the charge.
pub(crate) struct BillCharge {
    pub bill: AccountName,
    pub fee: Amount,
    pub fee_bps: u32,
    pub usage_key: Vec<u8>,
    pub usage: CapUsage,
    pub month: Month,
}

/// Checks the monthly cap for a charge of `amount` settled at `now`;
/// `None` means the charge would exceed it (or is in another currency than
/// the bill, whose cap in that currency is zero).
#[allow(clippy::too_many_arguments)]
pub(crate) fn plan_charge(
    tx: &Tx,
    carrier: &CarrierId,
    number: &SubscriberNumber,
    bill_currency: Currency,
    cap: Amount,
    amount: Amount,
    currency: Currency,
    now: UnixMs,
) -> TxResult<Option<BillCharge>> {
    if currency != bill_currency {
        return Ok(None);
    }
    let month = Month::of(now);
    let usage_key = keys::net::cap_usage(carrier, number, currency, month);
    let used = tx.get::<CapUsage>(T::Network, &usage_key)?.map_or(Amount::ZERO, |u| u.used);
    match used.checked_add(amount) {
        Ok(total) if total <= cap => {
            let fee_bps = fee_bps(tx, carrier)?;
            Ok(Some(BillCharge {
                bill: AccountName::CarrierBill(carrier.clone(), number.clone(), currency),
                fee: carrier_fee(amount, fee_bps),
                fee_bps,
                usage_key,
                usage: CapUsage { cap, used: total },
                month,
            }))
        }
        _ => Ok(None),
    }
}

/// Files what a carrier-billed settlement wrote: cap use, the bill line and
/// its index by trade.
#[allow(clippy::too_many_arguments)]
pub(crate) fn record_charge(
    tx: &Tx,
    plan: &BillCharge,
    carrier: &CarrierId,
    number: &SubscriberNumber,
    trade: TradeId,
    set_id: u64,
    shop: &ShopId,
    shop_name: &str,
    amount: Amount,
    currency: Currency,
    now: UnixMs,
) -> TxResult<()> {
    tx.put(T::Network, &plan.usage_key, &plan.usage)?;
    let line_key = keys::net::bill_line(carrier, number, plan.month, set_id);
    let line = BillLine {
        trade,
        set_id,
        shop: shop.clone(),
        shop_name: shop_name.to_owned(),
        amount,
        currency,
        fee: plan.fee,
        fee_bps: plan.fee_bps,
        settled_at: now,
        refunded: Amount::ZERO,
    };
    tx.put(T::Network, &line_key, &line)?;
    tx.tree(T::Network)?.insert(keys::net::bill_of_trade(&trade), line_key)?;
    Ok(())
}

/// The bill line of a carrier-billed trade, with its key.
pub(crate) fn bill_line_of(tx: &Tx, trade: &TradeId) -> TxResult<Option<(Vec<u8>, BillLine)>> {
    let Some(key) = tx.tree(T::Network)?.get(keys::net::bill_of_trade(trade))? else {
        return Ok(None);
    };
    match tx.get::<BillLine>(T::Network, &key)? {
        Some(line) => Ok(Some((key.to_vec(), line))),
        None => corrupt("bill index names a missing line"),
    }
}

/// A refund of a carrier-billed charge: the line records it and the cap of
/// the charge's month is freed by it.
pub(crate) fn record_bill_refund(
    tx: &Tx,
    carrier: &CarrierId,
    number: &SubscriberNumber,
    line_key: &[u8],
    mut line: BillLine,
    amount: Amount,
) -> TxResult<()> {
    let month = Month::of(line.settled_at);
    let Ok(refunded) = line.refunded.checked_add(amount) else {
        return corrupt("bill line refunds overflow");
    };
    line.refunded = refunded;
    tx.put(T::Network, line_key, &line)?;
    let usage_key = keys::net::cap_usage(carrier, number, line.currency, month);
    let Some(mut usage) = tx.get::<CapUsage>(T::Network, &usage_key)? else {
        return corrupt("a billed month has no cap use");
    };
    let Ok(used) = usage.used.checked_sub(amount) else {
        return corrupt("cap use below zero");
    };
    usage.used = used;
    tx.put(T::Network, &usage_key, &usage)
}

pub(crate) fn record_payout(tx: &Tx, shop: &ShopId, at: UnixMs, set_id: u64, entry: &PayoutEntry) -> TxResult<()> {
    tx.put(T::Network, &keys::net::payout(shop, at, set_id), entry)
}

impl SledStore {
    /// The bill of `number` at `carrier` for `month`; refused unless the
    /// number is the carrier's carrier-billed subscriber.
    pub(crate) fn statement_now(
        &self,
        carrier: &CarrierId,
        number: &SubscriberNumber,
        month: Month,
    ) -> Result<StatementData, StoreError<StatementRefusal>> {
        let subscriber: SubscriberRecord = match self.get(T::Subscribers, number.as_str().as_bytes())? {
            Some(s @ SubscriberRecord { funding: Funding::CarrierBill { .. }, .. }) if &s.carrier == carrier => s,
            _ => return Err(StoreError::Refused(StatementRefusal::NotCarrierBilled)),
        };
        let lines = self.scan(T::Network, &keys::net::bill_month(carrier, number, month), usize::MAX)?;
        let usage = match &subscriber.funding {
            Funding::CarrierBill { currency, .. } => {
                self.get(T::Network, &keys::net::cap_usage(carrier, number, *currency, month))?
            }
            Funding::Wallet => None,
        };
        Ok(StatementData { subscriber, lines, usage })
    }

    /// The shop's payout entries committed in `[from, to)`.
    pub(crate) fn payout_entries_now(
        &self,
        shop: &ShopId,
        from: UnixMs,
        to: UnixMs,
    ) -> Result<Vec<PayoutEntry>, StoreError<PayoutRefusal>> {
        let mut out = Vec::new();
        let range = keys::net::payout(shop, from, 0)..keys::net::payout(shop, to, 0);
        for item in self.tree(T::Network).range(range) {
            if out.len() >= MAX_PAYOUT_ENTRIES {
                return Err(StoreError::Refused(PayoutRefusal::TooMany { max: MAX_PAYOUT_ENTRIES }));
            }
            let (_, v) = item.map_err(io).map_err(StoreError::Failed)?;
            out.push(codec::decode(&v).map_err(StoreError::Failed)?);
        }
        Ok(out)
    }
}
