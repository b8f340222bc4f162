//! Carrier remittances in the sled backend: a carrier's payment for one
//! shop's carrier-billed sales of one closed month, as one balanced posting
//! set (system remittance account → the carrier's remitted account), its
//! record `R ‖ carrier 0 month shop 0 currency ‖ id` in the network tree
//! and its operator-wide idempotency key, in one transaction. What is owed
//! and what was remitted before are read on the writer thread just before
//! the transaction, which goes alone (not grouped), so no other write
//! comes between the check and the postings: remittances, concurrent or
//! not, never together exceed what is owed. Also the carrier's statement.

use std::collections::BTreeMap;

use crate::domain::{AccountName, Amount, CarrierId, Currency, Month, PostingSet, ShopId};
use crate::store::records::{
    billed_by, remittance_reference, CarrierRecord, CarrierSales, CarrierStatementLine, PayoutEntry, PostingKind,
    RemittanceRecord, ShopRecord,
};
use crate::store::{Failure, NewRemittance, PostingRefusal, RemittanceRefusal, Remitted};

use super::codec::{self, IdempotencyRecord};
use super::keys;
use super::ledger::post;
use super::tx::{corrupt, refuse, Step, Tx, T};
use super::writer::{Admissions, Cx, WriteOp};
use super::{io, Shared};

/// A remittance with what its slot (carrier, shop, month, currency) held
/// just before it, read in `prepare`.
pub(crate) struct Remit {
    pub r: NewRemittance,
    before: Option<CarrierStatementLine>,
}

impl Remit {
    pub fn new(r: NewRemittance) -> Remit {
        Remit { r, before: None }
    }
}

/// The month's carrier-billed sales of `shop` by `carrier`, per currency,
/// from the shop's payout entries filed in the month.
fn month_sales(
    shared: &Shared,
    carrier: &CarrierId,
    shop: &ShopId,
    month: Month,
) -> Result<BTreeMap<Currency, CarrierSales>, Failure> {
    let mut out: BTreeMap<Currency, CarrierSales> = BTreeMap::new();
    let range = keys::net::payout(shop, month.start(), 0)..keys::net::payout(shop, month.end(), 0);
    for item in shared.tree(T::Network).range(range) {
        let (_, v) = item.map_err(io)?;
        let entry: PayoutEntry = codec::decode(&v)?;
        if let Some((c, currency)) = billed_by(&entry) {
            if c == carrier {
                out.entry(currency).or_default().add(&entry);
            }
        }
    }
    Ok(out)
}

/// The slot's statement line as it is now.
fn slot_line(shared: &Shared, r: &NewRemittance) -> Result<CarrierStatementLine, Failure> {
    let sales = month_sales(shared, &r.carrier, &r.shop, r.month)?.remove(&r.currency).unwrap_or_default();
    let mut line =
        CarrierStatementLine { shop: r.shop.clone(), currency: r.currency, sales, remitted: 0, remittances: 0 };
    for item in
        shared.tree(T::Network).scan_prefix(keys::net::remittance_slot(&r.carrier, r.month, &r.shop, r.currency))
    {
        let (_, v) = item.map_err(io)?;
        let rec: RemittanceRecord = codec::decode(&v)?;
        line.remitted += u128::from(rec.amount.minor());
        line.remittances = line.remittances.saturating_add(1);
    }
    Ok(line)
}

impl WriteOp for Remit {
    type Output = Remitted;
    type Refusal = RemittanceRefusal;

    fn prepare(&mut self, shared: &Shared) -> Step<(), RemittanceRefusal> {
        self.before = Some(slot_line(shared, &self.r)?);
        Ok(())
    }

    /// Its reads in `prepare` must see every earlier write.
    fn groupable(&self) -> bool {
        false
    }

    fn apply(&self, tx: &Tx, _cx: &mut Cx, _: &Admissions) -> Step<Remitted, RemittanceRefusal> {
        let r = &self.r;
        let Some(before) = self.before.clone() else {
            return corrupt("remittance applied before it was prepared");
        };
        let idem_key = keys::remittance_idempotency(&r.idempotency_key);
        if let Some(prior) = tx.get::<IdempotencyRecord>(T::Idempotency, &idem_key)? {
            let IdempotencyRecord::Remittance { carrier, shop, month, currency, amount, remittance_id } = prior else {
                return corrupt("remittance idempotency key holds another record");
            };
            if let Some(field) = r.differs_from(&carrier, &shop, month, currency, amount) {
                return refuse(RemittanceRefusal::Differs(field));
            }
            let key = keys::net::remittance(&carrier, month, &shop, currency, remittance_id);
            let Some(remittance) = tx.get::<RemittanceRecord>(T::Network, &key)? else {
                return corrupt("remittance key names a missing remittance");
            };
            return Ok(Remitted { remittance, line: before, replayed: true });
        }
        if tx.get::<CarrierRecord>(T::Carriers, r.carrier.as_str().as_bytes())?.is_none() {
            return refuse(RemittanceRefusal::UnknownCarrier);
        }
        if tx.get::<ShopRecord>(T::Shops, r.shop.as_str().as_bytes())?.is_none() {
            return refuse(RemittanceRefusal::UnknownShop);
        }
        let outstanding = before.outstanding().max(0);
        let Some(remitted) = before.remitted.checked_add(u128::from(r.amount.minor())) else {
            return refuse(RemittanceRefusal::Exceeds { outstanding: saturate(outstanding) });
        };
        if r.amount == Amount::ZERO || i128::from(r.amount.minor()) > outstanding {
            return refuse(RemittanceRefusal::Exceeds { outstanding: saturate(outstanding) });
        }
        let set = match PostingSet::transfer(
            AccountName::SystemRemittance(r.currency),
            AccountName::CarrierRemitted(r.carrier.clone(), r.currency),
            r.amount,
        ) {
            Ok(set) => set,
            Err(e) => return refuse(RemittanceRefusal::Postings(PostingRefusal::Invalid(e))),
        };
        let (remittance_id, _) =
            post(tx, &set, None, PostingKind::Remittance, r.now).map_err(|s| s.map(RemittanceRefusal::Postings))?;
        let remittance = RemittanceRecord {
            remittance_id,
            carrier: r.carrier.clone(),
            shop: r.shop.clone(),
            month: r.month,
            currency: r.currency,
            amount: r.amount,
            reference: remittance_reference(remittance_id),
            idempotency_key: r.idempotency_key.clone(),
            at: r.now,
        };
        let key = keys::net::remittance(&r.carrier, r.month, &r.shop, r.currency, remittance_id);
        tx.put(T::Network, &key, &remittance)?;
        tx.put(
            T::Idempotency,
            &idem_key,
            &IdempotencyRecord::Remittance {
                carrier: r.carrier.clone(),
                shop: r.shop.clone(),
                month: r.month,
                currency: r.currency,
                amount: r.amount,
                remittance_id,
            },
        )?;
        let line = CarrierStatementLine { remitted, remittances: before.remittances.saturating_add(1), ..before };
        Ok(Remitted { remittance, line, replayed: false })
    }
}

/// An outstanding amount (0..) as an `Amount`, saturated at u64's range.
fn saturate(minor: i128) -> Amount {
    Amount::new(u64::try_from(minor.max(0)).unwrap_or(u64::MAX))
}

/// A carrier's statement for `month` (see `Network::carrier_statement`),
/// read on the writer thread so its sales and remittances belong together.
/// `None` for an unknown carrier.
pub(crate) fn statement_on_writer(
    shared: &Shared,
    carrier: &CarrierId,
    month: Month,
    after: Option<&ShopId>,
    limit: usize,
) -> Result<Option<Vec<CarrierStatementLine>>, Failure> {
    if shared.get::<CarrierRecord>(T::Carriers, carrier.as_str().as_bytes())?.is_none() {
        return Ok(None);
    }
    let mut remitted: BTreeMap<ShopId, BTreeMap<Currency, (u128, u64)>> = BTreeMap::new();
    for item in shared.tree(T::Network).scan_prefix(keys::net::remittance_month(carrier, month)) {
        let (_, v) = item.map_err(io)?;
        let rec: RemittanceRecord = codec::decode(&v)?;
        let slot = remitted.entry(rec.shop).or_default().entry(rec.currency).or_default();
        slot.0 += u128::from(rec.amount.minor());
        slot.1 = slot.1.saturating_add(1);
    }
    let shops = shared.tree(T::Shops);
    let start = match after {
        // The smallest key after `after`: slugs hold no 0x00.
        Some(a) => [a.as_str().as_bytes(), b"\0"].concat(),
        None => Vec::new(),
    };
    let mut out = Vec::new();
    let mut shops_listed = 0usize;
    for item in shops.range(start..) {
        if shops_listed >= limit {
            break;
        }
        let (_, v) = item.map_err(io)?;
        let shop: ShopRecord = codec::decode(&v)?;
        let mut lines: BTreeMap<Currency, CarrierStatementLine> = month_sales(shared, carrier, &shop.id, month)?
            .into_iter()
            .map(|(currency, sales)| {
                (currency, CarrierStatementLine { shop: shop.id.clone(), currency, sales, remitted: 0, remittances: 0 })
            })
            .collect();
        for (currency, (sum, n)) in remitted.remove(&shop.id).unwrap_or_default() {
            let line = lines.entry(currency).or_insert_with(|| CarrierStatementLine {
                shop: shop.id.clone(),
                currency,
                sales: CarrierSales::default(),
                remitted: 0,
                remittances: 0,
            });
            line.remitted = sum;
            line.remittances = n;
        }
        if !lines.is_empty() {
            shops_listed += 1;
            out.extend(lines.into_values());
        }
    }
    Ok(Some(out))
}
