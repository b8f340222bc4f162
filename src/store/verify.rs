//! Ledger verification, the same for every backend: recomputes everything
//! from the immutable postings and compares it with the stored totals,
//! trades, bills and registers. A backend hands it a [`LedgerView`] of one
//! consistent state (the sled backend's view is read on its writer thread,
//! so no write interleaves).

use std::collections::{BTreeMap, HashMap};

use crate::domain::{carrier_fee, AccountName, CarrierId, Currency, Month, RegisterId, ShopId, Side, SubscriberNumber};
use crate::domain::{TradeId, TradeState, UnixMs};

use super::records::{
    billed_by, AccountRecord, BillLine, CapUsage, CarrierSales, PayoutEntry, PayoutRecord, PostingKind, PostingRecord,
    RegisterRecord, RemittanceRecord, TradeRecord,
};
use super::Failure;

/// What verification reads, from one consistent state. Each `for_each_*`
/// walks every record of its kind (in the backend's order) and stops at
/// the first error the visitor returns.
pub trait LedgerView {
    /// How the backend keys one subscriber's cap use in one month.
    type CapKey: Ord;

    fn for_each_posting(&self, visit: &mut dyn FnMut(PostingRecord) -> Result<(), Failure>) -> Result<(), Failure>;
    /// Each account, and whether it is stored under its own name.
    fn for_each_account(
        &self,
        visit: &mut dyn FnMut(AccountRecord, bool) -> Result<(), Failure>,
    ) -> Result<(), Failure>;
    fn account(&self, name: &AccountName) -> Result<Option<AccountRecord>, Failure>;
    fn for_each_bill_line(&self, visit: &mut dyn FnMut(BillLine) -> Result<(), Failure>) -> Result<(), Failure>;
    fn cap_key(&self, carrier: &CarrierId, number: &SubscriberNumber, currency: Currency, month: Month)
        -> Self::CapKey;
    fn for_each_cap_use(
        &self,
        visit: &mut dyn FnMut(Self::CapKey, CapUsage) -> Result<(), Failure>,
    ) -> Result<(), Failure>;
    fn trade(&self, id: &TradeId) -> Result<Option<TradeRecord>, Failure>;
    fn for_each_trade(&self, visit: &mut dyn FnMut(TradeRecord) -> Result<(), Failure>) -> Result<(), Failure>;
    /// Whether an open trade has its deadline entry.
    fn has_deadline(&self, trade: &TradeRecord) -> Result<bool, Failure>;
    fn for_each_register(&self, visit: &mut dyn FnMut(RegisterRecord) -> Result<(), Failure>) -> Result<(), Failure>;
    /// Every shop payout record.
    fn for_each_payout(&self, visit: &mut dyn FnMut(PayoutRecord) -> Result<(), Failure>) -> Result<(), Failure>;
    /// Every payout entry, with its shop and the instant it is filed under.
    fn for_each_payout_entry(
        &self,
        visit: &mut dyn FnMut(ShopId, UnixMs, PayoutEntry) -> Result<(), Failure>,
    ) -> Result<(), Failure>;
    /// Every carrier remittance record.
    fn for_each_remittance(
        &self,
        visit: &mut dyn FnMut(RemittanceRecord) -> Result<(), Failure>,
    ) -> Result<(), Failure>;
}

/// At most this many violations are listed; the count is always exact.
pub const MAX_LISTED_VIOLATIONS: usize = 1000;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    pub violations: Vec<String>,
    pub violation_count: u64,
    pub accounts_checked: u64,
    pub postings_checked: u64,
    pub trades_checked: u64,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.violation_count == 0
    }

    fn violation(&mut self, text: String) {
        self.violation_count += 1;
        if self.violations.len() < MAX_LISTED_VIOLATIONS {
            self.violations.push(text);
        }
    }
}

#[derive(Default)]
struct Sums {
    debits: u128,
    credits: u128,
}

impl Sums {
    fn add(&mut self, side: Side, minor: u64) {
        match side {
            Side::Debit => self.debits += u128::from(minor),
            Side::Credit => self.credits += u128::from(minor),
        }
    }
}

#[derive(Default)]
struct TradeMoney {
    settlement_sets: Vec<u64>,
    /// Debited from the payer (wallet or carrier bill) by the settlement.
    settled_from_payer: u128,
    settled_to_shop: u128,
    fees: u128,
    billed: bool,
    refunded: u128,
}

/// Checks every ledger invariant over `view`.
pub fn verify<V: LedgerView>(view: &V) -> Result<VerifyReport, Failure> {
    let mut report = VerifyReport::default();

    // Recompute from postings.
    let mut per_account: BTreeMap<AccountName, Sums> = BTreeMap::new();
    let mut per_set: BTreeMap<(u64, Currency), Sums> = BTreeMap::new();
    let mut per_trade: HashMap<TradeId, TradeMoney> = HashMap::new();
    // Payout sets: their legs, as (account, side, amount).
    let mut payout_sets: BTreeMap<u64, Vec<(AccountName, bool, u64)>> = BTreeMap::new();
    // Remittance sets, the same way.
    let mut remittance_sets: BTreeMap<u64, Vec<(AccountName, bool, u64)>> = BTreeMap::new();
    view.for_each_posting(&mut |p| {
        report.postings_checked += 1;
        let debit = matches!(p.side, Side::Debit);
        match p.kind {
            PostingKind::Payout => {
                payout_sets.entry(p.set_id).or_default().push((p.account.clone(), debit, p.amount.minor()));
            }
            PostingKind::Remittance => {
                remittance_sets.entry(p.set_id).or_default().push((p.account.clone(), debit, p.amount.minor()));
            }
            PostingKind::TopUp | PostingKind::Settlement | PostingKind::Refund => {}
        }
        per_account.entry(p.account.clone()).or_default().add(p.side, p.amount.minor());
        per_set.entry((p.set_id, p.account.currency())).or_default().add(p.side, p.amount.minor());
        if let Some(trade) = p.trade {
            let money = per_trade.entry(trade).or_default();
            match (p.kind, &p.account, p.side) {
                (PostingKind::Settlement, AccountName::Wallet(..) | AccountName::CarrierBill(..), Side::Debit) => {
                    money.settled_from_payer += u128::from(p.amount.minor());
                    money.billed |= matches!(p.account, AccountName::CarrierBill(..));
                    if !money.settlement_sets.contains(&p.set_id) {
                        money.settlement_sets.push(p.set_id);
                    }
                }
                (PostingKind::Settlement, AccountName::ShopPayable(..), Side::Credit) => {
                    money.settled_to_shop += u128::from(p.amount.minor());
                }
                (PostingKind::Settlement, AccountName::CarrierFees(..), Side::Credit) => {
                    money.fees += u128::from(p.amount.minor());
                }
                (PostingKind::Refund, AccountName::ShopPayable(..), Side::Debit) => {
                    money.refunded += u128::from(p.amount.minor());
                }
                _ => {}
            }
        }
        Ok(())
    })?;
    for ((set, currency), s) in &per_set {
        if s.debits != s.credits {
            report.violation(format!(
                "posting set {set} is unbalanced in {currency}: debits {} credits {}",
                s.debits, s.credits
            ));
        }
    }

    // Stored totals against the postings, and the zero-sum per currency.
    let mut per_currency: BTreeMap<Currency, Sums> = BTreeMap::new();
    view.for_each_account(&mut |a, under_its_name| {
        report.accounts_checked += 1;
        if !under_its_name {
            report.violation(format!("account {:?} is stored under another key", a.name));
        }
        let c = per_currency.entry(a.name.currency()).or_default();
        c.add(Side::Debit, a.balance.debits.minor());
        c.add(Side::Credit, a.balance.credits.minor());
        let from_postings = per_account.remove(&a.name).unwrap_or_default();
        if from_postings.debits != u128::from(a.balance.debits.minor())
            || from_postings.credits != u128::from(a.balance.credits.minor())
        {
            report.violation(format!(
                "account {:?}: stored debits/credits {}/{} but postings sum to {}/{}",
                a.name,
                a.balance.debits.minor(),
                a.balance.credits.minor(),
                from_postings.debits,
                from_postings.credits
            ));
        }
        if a.name.must_not_go_negative() && a.balance.credits < a.balance.debits {
            report.violation(format!("account {:?} is below zero", a.name));
        }
        Ok(())
    })?;
    for (name, _) in per_account {
        report.violation(format!("postings name account {name:?}, which does not exist"));
    }
    for (currency, s) in per_currency {
        if s.debits != s.credits {
            report.violation(format!(
                "balances in {currency} do not sum to zero: debits {} credits {}",
                s.debits, s.credits
            ));
        }
    }

    // Carrier bills: each line against its trade's postings and fee rule;
    // per bill and month, the lines against the recorded cap use, which
    // never exceeds the cap; per bill account, the lines against the balance.
    let mut lines: HashMap<TradeId, BillLine> = HashMap::new();
    let mut per_month: BTreeMap<V::CapKey, u128> = BTreeMap::new();
    let mut per_bill: BTreeMap<AccountName, u128> = BTreeMap::new();
    view.for_each_bill_line(&mut |line| {
        let Some(trade) = view.trade(&line.trade)? else {
            report.violation(format!("bill line names trade {}, which does not exist", line.trade));
            return Ok(());
        };
        let Some(carrier) = trade.carrier.clone() else {
            report.violation(format!("bill line of trade {} whose trade has no carrier", line.trade));
            return Ok(());
        };
        if line.fee != carrier_fee(line.amount, line.fee_bps) {
            report.violation(format!(
                "trade {}: fee {} is not floor({} x {} bps)",
                line.trade,
                line.fee.minor(),
                line.amount.minor(),
                line.fee_bps
            ));
        }
        let owed = u128::from(line.amount.minor()).saturating_sub(u128::from(line.refunded.minor()));
        let month_key = view.cap_key(&carrier, &trade.request.payer, line.currency, Month::of(line.settled_at));
        *per_month.entry(month_key).or_default() += owed;
        *per_bill.entry(AccountName::CarrierBill(carrier, trade.request.payer.clone(), line.currency)).or_default() +=
            owed;
        lines.insert(line.trade, line);
        Ok(())
    })?;
    view.for_each_cap_use(&mut |key, usage| {
        let counted = per_month.remove(&key).unwrap_or(0);
        if counted != u128::from(usage.used.minor()) {
            report.violation(format!(
                "a carrier bill month records {} used but its lines sum to {counted}",
                usage.used.minor()
            ));
        }
        if usage.used > usage.cap {
            report.violation(format!(
                "a carrier bill month is above its cap: {} used of {}",
                usage.used.minor(),
                usage.cap.minor()
            ));
        }
        Ok(())
    })?;
    if !per_month.is_empty() {
        report.violation(format!("{} carrier bill months have lines but no cap use", per_month.len()));
    }
    for (bill, owed) in per_bill {
        let balance = view.account(&bill)?.map_or(0, |a| -a.balance.net());
        if i128::try_from(owed).ok() != Some(balance) {
            report.violation(format!("{bill:?}: lines say {owed} owed but the balance says {balance}"));
        }
    }

    // Shop payouts: each record against its own posting set (exactly the
    // shop's payable debited and the system payout account credited by its
    // amount), every payout set with its record, and each currency's
    // payout account holding exactly the payouts' sum. (A payable below
    // zero, a payout beyond the balance, is caught with the accounts.)
    let mut paid_out: BTreeMap<Currency, u128> = BTreeMap::new();
    view.for_each_payout(&mut |payout| {
        let id = payout.payout_id;
        let expected = vec![
            (AccountName::ShopPayable(payout.shop.clone(), payout.currency), true, payout.amount.minor()),
            (AccountName::SystemPayout(payout.currency), false, payout.amount.minor()),
        ];
        match payout_sets.remove(&id) {
            Some(mut legs) => {
                legs.sort();
                let mut want = expected;
                want.sort();
                if legs != want {
                    report.violation(format!(
                        "payout {id} of {} {} to shop {} disagrees with its postings",
                        payout.amount.minor(),
                        payout.currency,
                        payout.shop
                    ));
                }
            }
            None => report.violation(format!("payout {id} has no posting set")),
        }
        if payout.amount.minor() == 0 {
            report.violation(format!("payout {id} is of zero"));
        }
        *paid_out.entry(payout.currency).or_default() += u128::from(payout.amount.minor());
        Ok(())
    })?;
    for set in payout_sets.keys() {
        report.violation(format!("posting set {set} is a payout without a payout record"));
    }
    let mut payout_accounts: Vec<AccountRecord> = Vec::new();
    view.for_each_account(&mut |a, _| {
        if matches!(a.name, AccountName::SystemPayout(_)) {
            payout_accounts.push(a);
        }
        Ok(())
    })?;
    for a in payout_accounts {
        let counted = paid_out.remove(&a.name.currency()).unwrap_or(0);
        if a.balance.debits.minor() != 0 || u128::from(a.balance.credits.minor()) != counted {
            report.violation(format!(
                "{:?} holds {}/{} (debits/credits) but payouts sum to {counted}",
                a.name,
                a.balance.debits.minor(),
                a.balance.credits.minor()
            ));
        }
    }
    for (currency, sum) in paid_out {
        report.violation(format!("payouts in {currency} sum to {sum} but no payout account holds them"));
    }

    check_remittances(view, &mut report, remittance_sets)?;

    // Trades against their postings, and registers against their trades.
    let mut open_per_register: HashMap<(ShopId, RegisterId), u32> = HashMap::new();
    view.for_each_trade(&mut |t| {
        report.trades_checked += 1;
        let money = per_trade.remove(&t.id).unwrap_or_default();
        let amount = u128::from(t.request.amount.minor());
        match t.state {
            TradeState::Settled => {
                if money.settlement_sets.len() != 1 {
                    report.violation(format!(
                        "trade {} is settled by {} posting sets, not 1",
                        t.id,
                        money.settlement_sets.len()
                    ));
                }
                if money.settled_from_payer != amount {
                    report.violation(format!(
                        "trade {} settled {} but postings debit the payer {}",
                        t.id, amount, money.settled_from_payer
                    ));
                }
                if money.settled_to_shop + money.fees != amount {
                    report.violation(format!(
                        "trade {} settled {} but postings credit the shop {} and fees {}",
                        t.id, amount, money.settled_to_shop, money.fees
                    ));
                }
                match lines.remove(&t.id) {
                    Some(line)
                        if !money.billed
                            || u128::from(line.amount.minor()) != amount
                            || u128::from(line.fee.minor()) != money.fees
                            || line.refunded != t.refunded =>
                    {
                        report.violation(format!("trade {}: its bill line disagrees with its postings", t.id));
                    }
                    Some(_) => {}
                    None if money.billed || money.fees != 0 => {
                        report.violation(format!("carrier-billed trade {} has no bill line", t.id));
                    }
                    None => {}
                }
            }
            TradeState::Pending
            | TradeState::Offered
            | TradeState::Declined
            | TradeState::Expired
            | TradeState::Cancelled
            | TradeState::Failed => {
                if !money.settlement_sets.is_empty() {
                    report.violation(format!("trade {} is {} but has settlement postings", t.id, t.state.name()));
                }
            }
        }
        if money.refunded != u128::from(t.refunded.minor()) {
            report.violation(format!(
                "trade {} records {} refunded but refund postings sum to {}",
                t.id,
                t.refunded.minor(),
                money.refunded
            ));
        }
        if money.refunded > money.settled_from_payer {
            report.violation(format!(
                "trade {} refunded {} of {} settled",
                t.id, money.refunded, money.settled_from_payer
            ));
        }
        if !t.state.is_final() {
            let n = open_per_register.entry((t.shop.clone(), t.request.register)).or_insert(0);
            *n = n.saturating_add(1);
            if !view.has_deadline(&t)? {
                report.violation(format!("open trade {} has no deadline entry", t.id));
            }
        }
        Ok(())
    })?;
    for (trade, _) in per_trade {
        report.violation(format!("postings name trade {trade}, which does not exist"));
    }
    for (trade, _) in lines {
        report.violation(format!("trade {trade} has a bill line but is not settled"));
    }
    view.for_each_register(&mut |r| {
        let counted = open_per_register.remove(&(r.shop.clone(), r.id)).unwrap_or(0);
        if counted != r.open_trades {
            report.violation(format!("register {} counts {} open trades, found {}", r.id, r.open_trades, counted));
        }
        Ok(())
    })?;
    if !open_per_register.is_empty() {
        report.violation(format!("{} open trades name a missing register", open_per_register.len()));
    }
    Ok(report)
}

/// Carrier remittances: each record against its own posting set (the
/// system remittance account debited and the carrier's remitted account
/// credited by its amount), every remittance set with its record; per
/// carrier, shop, month and currency the remittances never above what the
/// month's payout entries say the carrier owes; per carrier and currency
/// the remitted account holding exactly the remittances and the system
/// remittance account their sum; and the statement's sums reconciling with
/// the ledger: what the payout entries say a carrier's billed sales came to
/// (gross − fee − refunded) is exactly minus its bills and fees accounts.
fn check_remittances<V: LedgerView>(
    view: &V,
    report: &mut VerifyReport,
    mut sets: BTreeMap<u64, Vec<(AccountName, bool, u64)>>,
) -> Result<(), Failure> {
    type Slot = (CarrierId, ShopId, Month, Currency);
    let mut remitted: BTreeMap<Slot, u128> = BTreeMap::new();
    let mut per_carrier: BTreeMap<(CarrierId, Currency), u128> = BTreeMap::new();
    let mut per_currency: BTreeMap<Currency, u128> = BTreeMap::new();
    view.for_each_remittance(&mut |r| {
        let id = r.remittance_id;
        let mut want = vec![
            (AccountName::SystemRemittance(r.currency), true, r.amount.minor()),
            (AccountName::CarrierRemitted(r.carrier.clone(), r.currency), false, r.amount.minor()),
        ];
        match sets.remove(&id) {
            Some(mut legs) => {
                legs.sort();
                want.sort();
                if legs != want {
                    report.violation(format!(
                        "remittance {id} of {} {} from carrier {} disagrees with its postings",
                        r.amount.minor(),
                        r.currency,
                        r.carrier
                    ));
                }
            }
            None => report.violation(format!("remittance {id} has no posting set")),
        }
        if r.amount.minor() == 0 {
            report.violation(format!("remittance {id} is of zero"));
        }
        let minor = u128::from(r.amount.minor());
        *remitted.entry((r.carrier.clone(), r.shop.clone(), r.month, r.currency)).or_default() += minor;
        *per_carrier.entry((r.carrier, r.currency)).or_default() += minor;
        *per_currency.entry(r.currency).or_default() += minor;
        Ok(())
    })?;
    for set in sets.keys() {
        report.violation(format!("posting set {set} is a remittance without a remittance record"));
    }

    // What the payout entries say each carrier owes, per shop and month,
    // and in all.
    let mut owed: BTreeMap<Slot, CarrierSales> = BTreeMap::new();
    let mut sales_per_carrier: BTreeMap<(CarrierId, Currency), CarrierSales> = BTreeMap::new();
    view.for_each_payout_entry(&mut |shop, at, entry| {
        if let Some((carrier, currency)) = billed_by(&entry) {
            owed.entry((carrier.clone(), shop, Month::of(at), currency)).or_default().add(&entry);
            sales_per_carrier.entry((carrier.clone(), currency)).or_default().add(&entry);
        }
        Ok(())
    })?;
    for ((carrier, shop, month, currency), sum) in &remitted {
        let key = (carrier.clone(), shop.clone(), *month, *currency);
        let due = owed.get(&key).map_or(0, CarrierSales::owed).max(0);
        if i128::try_from(*sum).unwrap_or(i128::MAX) > due {
            report.violation(format!(
                "carrier {carrier} remitted {sum} {currency} to shop {shop} for {month} but owed {due}"
            ));
        }
    }

    // Per carrier and currency: the accounts against the records and the
    // entries.
    let mut accounts: Vec<AccountRecord> = Vec::new();
    let mut bills: BTreeMap<(CarrierId, Currency), i128> = BTreeMap::new();
    view.for_each_account(&mut |a, _| {
        match &a.name {
            AccountName::CarrierBill(carrier, _, currency) => {
                *bills.entry((carrier.clone(), *currency)).or_default() += a.balance.net();
            }
            AccountName::SystemRemittance(_) | AccountName::CarrierRemitted(..) | AccountName::CarrierFees(..) => {
                accounts.push(a)
            }
            AccountName::SystemFunding(_)
            | AccountName::ShopPayable(..)
            | AccountName::Wallet(..)
            | AccountName::SystemPayout(_) => {}
        }
        Ok(())
    })?;
    let mut fees: BTreeMap<(CarrierId, Currency), i128> = BTreeMap::new();
    for a in accounts {
        let currency = a.name.currency();
        match &a.name {
            AccountName::CarrierRemitted(carrier, _) => {
                let counted = per_carrier.remove(&(carrier.clone(), currency)).unwrap_or(0);
                if a.balance.debits.minor() != 0 || u128::from(a.balance.credits.minor()) != counted {
                    report.violation(format!(
                        "{:?} holds {}/{} (debits/credits) but the carrier's remittances sum to {counted}",
                        a.name,
                        a.balance.debits.minor(),
                        a.balance.credits.minor()
                    ));
                }
            }
            AccountName::SystemRemittance(_) => {
                let counted = per_currency.remove(&currency).unwrap_or(0);
                if a.balance.credits.minor() != 0 || u128::from(a.balance.debits.minor()) != counted {
                    report.violation(format!(
                        "{:?} holds {}/{} (debits/credits) but remittances sum to {counted}",
                        a.name,
                        a.balance.debits.minor(),
                        a.balance.credits.minor()
                    ));
                }
            }
            AccountName::CarrierFees(carrier, _) => {
                fees.insert((carrier.clone(), currency), a.balance.net());
            }
            _ => {}
        }
    }
    for ((carrier, currency), sum) in per_carrier {
        report.violation(format!(
            "carrier {carrier}'s remittances in {currency} sum to {sum} but no remitted account holds them"
        ));
    }
    for (currency, sum) in per_currency {
        report.violation(format!("remittances in {currency} sum to {sum} but no remittance account holds them"));
    }
    let mut carriers: Vec<(CarrierId, Currency)> = bills.keys().chain(sales_per_carrier.keys()).cloned().collect();
    carriers.sort();
    carriers.dedup();
    for key in carriers {
        let ledger = -(bills.get(&key).copied().unwrap_or(0) + fees.get(&key).copied().unwrap_or(0));
        let entries = sales_per_carrier.get(&key).map_or(0, CarrierSales::owed);
        if ledger != entries {
            report.violation(format!(
                "carrier {}'s billed sales in {} net {entries} by the payout entries but {ledger} by its bills and fees",
                key.0, key.1
            ));
        }
    }
    Ok(())
}
