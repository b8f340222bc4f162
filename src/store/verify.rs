//! Ledger verification: recomputes everything from the immutable postings
//! and compares it with the stored totals and trades. Runs on the writer
//! thread, so it sees one consistent state.

use std::collections::{BTreeMap, HashMap};

use crate::domain::{carrier_fee, AccountName, Currency, Month, Side, TradeId, TradeState};

use super::records::{
    self, AccountRecord, BillLine, CapUsage, PostingKind, PostingRecord, RegisterRecord, TradeRecord,
};
use super::{keys, StoreError, T};

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

pub(crate) fn verify(trees: &[sled::Tree]) -> Result<VerifyReport, StoreError> {
    let tree = |t: T| trees.get(t as usize).ok_or(StoreError::Corrupt(format!("tree {t:?} missing")));
    let mut report = VerifyReport::default();

    // Recompute from postings.
    let mut per_account: BTreeMap<AccountName, Sums> = BTreeMap::new();
    let mut per_set: BTreeMap<(u64, Currency), Sums> = BTreeMap::new();
    let mut per_trade: HashMap<TradeId, TradeMoney> = HashMap::new();
    for item in tree(T::Postings)?.iter() {
        let (_, v) = item?;
        let p: PostingRecord = records::decode(&v)?;
        report.postings_checked += 1;
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
    }
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
    for item in tree(T::Accounts)?.iter() {
        let (k, v) = item?;
        let a: AccountRecord = records::decode(&v)?;
        report.accounts_checked += 1;
        if k.as_ref() != keys::account(&a.name).as_slice() {
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
    }
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
    let mut per_month: BTreeMap<Vec<u8>, u128> = BTreeMap::new();
    let mut per_bill: BTreeMap<AccountName, u128> = BTreeMap::new();
    for item in tree(T::Network)?.scan_prefix(b"B") {
        let (_, v) = item?;
        let line: BillLine = records::decode(&v)?;
        let Some(trade) = tree(T::Trades)?.get(line.trade.as_bytes())? else {
            report.violation(format!("bill line names trade {}, which does not exist", line.trade));
            continue;
        };
        let trade: TradeRecord = records::decode(&trade)?;
        let Some(carrier) = trade.carrier.clone() else {
            report.violation(format!("bill line of trade {} whose trade has no carrier", line.trade));
            continue;
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
        let month_key = keys::net::cap_usage(&carrier, &trade.request.payer, line.currency, Month::of(line.settled_at));
        *per_month.entry(month_key).or_default() += owed;
        *per_bill.entry(AccountName::CarrierBill(carrier, trade.request.payer.clone(), line.currency)).or_default() +=
            owed;
        lines.insert(line.trade, line);
    }
    for item in tree(T::Network)?.scan_prefix(b"U") {
        let (k, v) = item?;
        let usage: CapUsage = records::decode(&v)?;
        let counted = per_month.remove(k.as_ref()).unwrap_or(0);
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
    }
    if !per_month.is_empty() {
        report.violation(format!("{} carrier bill months have lines but no cap use", per_month.len()));
    }
    for (bill, owed) in per_bill {
        let balance = tree(T::Accounts)?
            .get(keys::account(&bill))?
            .map(|v| records::decode::<AccountRecord>(&v))
            .transpose()?
            .map_or(0, |a| -a.balance.net());
        if i128::try_from(owed).ok() != Some(balance) {
            report.violation(format!("{bill:?}: lines say {owed} owed but the balance says {balance}"));
        }
    }

    // Trades against their postings, and registers against their trades.
    let mut open_per_register: HashMap<Vec<u8>, u32> = HashMap::new();
    for item in tree(T::Trades)?.iter() {
        let (_, v) = item?;
        let t: TradeRecord = records::decode(&v)?;
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
            let key = keys::register(&t.shop, &t.request.register);
            let n = open_per_register.entry(key).or_insert(0);
            *n = n.saturating_add(1);
            if tree(T::Deadlines)?.get(keys::deadline(t.expires_at, &t.id))?.is_none() {
                report.violation(format!("open trade {} has no deadline entry", t.id));
            }
        }
    }
    for (trade, _) in per_trade {
        report.violation(format!("postings name trade {trade}, which does not exist"));
    }
    for (trade, _) in lines {
        report.violation(format!("trade {trade} has a bill line but is not settled"));
    }
    for item in tree(T::Registers)?.iter() {
        let (k, v) = item?;
        let r: RegisterRecord = records::decode(&v)?;
        let counted = open_per_register.remove(k.as_ref()).unwrap_or(0);
        if counted != r.open_trades {
            report.violation(format!("register {} counts {} open trades, found {}", r.id, r.open_trades, counted));
        }
    }
    if !open_per_register.is_empty() {
        report.violation(format!("{} open trades name a missing register", open_per_register.len()));
    }
    Ok(report)
}
