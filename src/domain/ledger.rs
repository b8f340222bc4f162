//! Double-entry ledger model: accounts, balances kept as debit and credit
//! totals (never a signed running sum), and balanced posting sets as the
//! only way money moves.

use std::collections::BTreeMap;
use std::fmt;

use super::ids::{CarrierId, ShopId, SubscriberNumber};
use super::money::{Amount, Currency, MoneyError};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    #[error("a posting set needs {min}..={max} legs, got {got}")]
    LegCount { min: usize, max: usize, got: usize },
    #[error("a leg of zero moves nothing")]
    ZeroLeg,
    #[error("debits and credits differ in {0}")]
    Unbalanced(Currency),
    #[error("balance arithmetic: {0}")]
    Money(#[from] MoneyError),
}

/// A ledger account. The name is also its store key, so it sorts by kind,
/// owner and currency.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub enum AccountName {
    /// Where wallet top-ups come from: its balance is minus all money ever
    /// put into the system.
    SystemFunding(Currency),
    /// What the server owes a shop.
    ShopPayable(ShopId, Currency),
    /// A subscriber's prepaid wallet; never below zero.
    Wallet(SubscriberNumber, Currency),
    /// A carrier-billed subscriber's bill at their carrier: debited by
    /// charges, so a negative balance is what the subscriber owes. Bounded
    /// per month by the subscriber's spending cap, not by zero.
    CarrierBill(CarrierId, SubscriberNumber, Currency),
    /// What the carrier earned in fees on carrier-billed charges.
    CarrierFees(CarrierId, Currency),
    /// Where shop payouts go: its balance is all money ever paid out to
    /// shops' banks. (Appended: postcard numbers variants, so records
    /// written before it still decode.)
    SystemPayout(Currency),
    /// Where carriers' remittances come from: its balance is minus all
    /// money carriers ever remitted for their carrier-billed sales.
    /// (Appended, as `SystemPayout`.)
    SystemRemittance(Currency),
    /// What a carrier has remitted of its carrier-billed sales: credited
    /// by each remittance, so a carrier's bills, fees and this account sum
    /// to minus what it still owes the shops (docs/CARRIER.md).
    /// (Appended, as `SystemPayout`.)
    CarrierRemitted(CarrierId, Currency),
}

impl AccountName {
    pub fn currency(&self) -> Currency {
        match self {
            AccountName::SystemFunding(c)
            | AccountName::ShopPayable(_, c)
            | AccountName::Wallet(_, c)
            | AccountName::CarrierBill(_, _, c)
            | AccountName::CarrierFees(_, c)
            | AccountName::SystemPayout(c)
            | AccountName::SystemRemittance(c)
            | AccountName::CarrierRemitted(_, c) => *c,
        }
    }

    /// Accounts whose credits must always cover their debits: a wallet,
    /// and what the server owes a shop (refunds and payouts come out of it
    /// only while it covers them).
    pub fn must_not_go_negative(&self) -> bool {
        match self {
            AccountName::Wallet(..) | AccountName::ShopPayable(..) => true,
            AccountName::SystemFunding(_)
            | AccountName::CarrierBill(..)
            | AccountName::CarrierFees(..)
            | AccountName::SystemPayout(_)
            | AccountName::SystemRemittance(_)
            | AccountName::CarrierRemitted(..) => false,
        }
    }

    /// The store key and the name operators see.
    pub fn key(&self) -> String {
        match self {
            AccountName::SystemFunding(c) => format!("system:funding:{c}"),
            AccountName::ShopPayable(s, c) => format!("shop:{s}:{c}"),
            AccountName::Wallet(n, c) => format!("wallet:{}:{c}", n.as_str()),
            AccountName::CarrierBill(carrier, n, c) => format!("bill:{carrier}:{}:{c}", n.as_str()),
            AccountName::CarrierFees(carrier, c) => format!("carrier:{carrier}:fees:{c}"),
            AccountName::SystemPayout(c) => format!("system:payout:{c}"),
            AccountName::SystemRemittance(c) => format!("system:remittance:{c}"),
            AccountName::CarrierRemitted(carrier, c) => format!("carrier:{carrier}:remitted:{c}"),
        }
    }
}

impl fmt::Debug for AccountName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // Masked: Debug output may reach logs.
            AccountName::Wallet(n, c) => write!(f, "wallet:{n:?}:{c}"),
            AccountName::CarrierBill(carrier, n, c) => write!(f, "bill:{carrier}:{n:?}:{c}"),
            other => f.write_str(&other.key()),
        }
    }
}

/// Debit or credit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Side {
    Debit,
    Credit,
}

/// Totals of an account. Balance = credits − debits, computed on demand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Balance {
    pub debits: Amount,
    pub credits: Amount,
}

impl Balance {
    pub const EMPTY: Balance = Balance { debits: Amount::ZERO, credits: Amount::ZERO };

    pub fn post(self, side: Side, amount: Amount) -> Result<Balance, MoneyError> {
        match side {
            Side::Debit => Ok(Balance { debits: self.debits.checked_add(amount)?, credits: self.credits }),
            Side::Credit => Ok(Balance { debits: self.debits, credits: self.credits.checked_add(amount)? }),
        }
    }

    /// Credits minus debits; i128 holds the difference of two u64 exactly.
    pub fn net(self) -> i128 {
        i128::from(self.credits.minor()) - i128::from(self.debits.minor())
    }

    /// What can still be debited without going below zero.
    pub fn available(self) -> Amount {
        self.credits.checked_sub(self.debits).unwrap_or(Amount::ZERO)
    }
}

/// One line of a posting set.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Leg {
    pub account: AccountName,
    pub side: Side,
    pub amount: Amount,
}

/// The most legs one movement may have (settlement with fees needs three).
pub const MAX_LEGS: usize = 8;

/// A balanced set of legs: per currency, debits equal credits. The private
/// field makes `PostingSet::new` the only way to build one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostingSet {
    legs: Vec<Leg>,
}

impl PostingSet {
    pub fn new(legs: Vec<Leg>) -> Result<PostingSet, LedgerError> {
        if !(2..=MAX_LEGS).contains(&legs.len()) {
            return Err(LedgerError::LegCount { min: 2, max: MAX_LEGS, got: legs.len() });
        }
        // u128 sums of at most MAX_LEGS u64 values cannot overflow.
        let mut sums: BTreeMap<Currency, (u128, u128)> = BTreeMap::new();
        for leg in &legs {
            if leg.amount.is_zero() {
                return Err(LedgerError::ZeroLeg);
            }
            let entry = sums.entry(leg.account.currency()).or_insert((0, 0));
            match leg.side {
                Side::Debit => entry.0 += u128::from(leg.amount.minor()),
                Side::Credit => entry.1 += u128::from(leg.amount.minor()),
            }
        }
        if let Some((currency, _)) = sums.iter().find(|(_, (d, c))| d != c) {
            return Err(LedgerError::Unbalanced(*currency));
        }
        Ok(PostingSet { legs })
    }

    /// Moves `amount` from `from` (debited) to `to` (credited).
    pub fn transfer(from: AccountName, to: AccountName, amount: Amount) -> Result<PostingSet, LedgerError> {
        PostingSet::new(vec![
            Leg { account: from, side: Side::Debit, amount },
            Leg { account: to, side: Side::Credit, amount },
        ])
    }

    pub fn legs(&self) -> &[Leg] {
        &self.legs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jpy() -> Currency {
        Currency::parse("JPY").expect("known")
    }
    fn usd() -> Currency {
        Currency::parse("USD").expect("known")
    }
    fn wallet(c: Currency) -> AccountName {
        AccountName::Wallet(SubscriberNumber::parse("+818012345678").expect("valid"), c)
    }
    fn shop(c: Currency) -> AccountName {
        AccountName::ShopPayable(ShopId::parse("acme").expect("valid"), c)
    }
    fn leg(account: AccountName, side: Side, minor: u64) -> Leg {
        Leg { account, side, amount: Amount::new(minor) }
    }

    #[test]
    fn balanced_sets_are_accepted_and_unbalanced_refused() {
        assert!(PostingSet::transfer(wallet(jpy()), shop(jpy()), Amount::new(500)).is_ok());
        let check = |legs: Vec<Leg>, expect: LedgerError| assert_eq!(PostingSet::new(legs), Err(expect));
        check(vec![], LedgerError::LegCount { min: 2, max: MAX_LEGS, got: 0 });
        check(vec![leg(wallet(jpy()), Side::Debit, 1)], LedgerError::LegCount { min: 2, max: MAX_LEGS, got: 1 });
        check(
            vec![leg(wallet(jpy()), Side::Debit, 5), leg(shop(jpy()), Side::Credit, 4)],
            LedgerError::Unbalanced(jpy()),
        );
        check(vec![leg(wallet(jpy()), Side::Debit, 0), leg(shop(jpy()), Side::Credit, 0)], LedgerError::ZeroLeg);
        // Balanced in total but not per currency.
        check(
            vec![leg(wallet(jpy()), Side::Debit, 5), leg(shop(usd()), Side::Credit, 5)],
            LedgerError::Unbalanced(jpy()),
        );
    }

    #[test]
    fn maximal_legs_do_not_overflow_the_check() {
        let set = PostingSet::new(vec![
            leg(wallet(jpy()), Side::Debit, u64::MAX),
            leg(wallet(jpy()), Side::Debit, u64::MAX),
            leg(shop(jpy()), Side::Credit, u64::MAX),
            leg(shop(jpy()), Side::Credit, u64::MAX),
        ]);
        assert!(set.is_ok());
    }

    #[test]
    fn balances_are_checked() {
        let b = Balance::EMPTY.post(Side::Credit, Amount::new(u64::MAX)).expect("fits");
        assert_eq!(b.post(Side::Credit, Amount::new(1)), Err(MoneyError::Overflow));
        assert_eq!(b.net(), i128::from(u64::MAX));
        let d = Balance::EMPTY.post(Side::Debit, Amount::new(7)).expect("fits");
        assert_eq!(d.net(), -7);
        assert_eq!(d.available(), Amount::ZERO);
    }

    #[test]
    fn wallet_names_are_masked_in_debug_but_not_in_keys() {
        let w = wallet(jpy());
        assert_eq!(w.key(), "wallet:+818012345678:JPY");
        assert!(!format!("{w:?}").contains("8012345"));
    }
}
