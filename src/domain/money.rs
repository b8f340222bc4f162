//! Money: unsigned minor units and ISO 4217 currencies with their exponent.
//! No floats; every operation that could overflow is checked.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("must be a known ISO 4217 code of three upper-case letters")]
    UnknownCurrency,
    #[error("arithmetic overflow")]
    Overflow,
    #[error("would go below zero")]
    Underflow,
}

/// An amount in the minor units of some currency (cents, yen, fils).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct Amount(u64);

impl Amount {
    pub const ZERO: Amount = Amount(0);

    pub const fn new(minor: u64) -> Self {
        Amount(minor)
    }

    pub const fn minor(self) -> u64 {
        self.0
    }

    pub fn is_zero(self) -> bool {
        self.0 == 0
    }

    pub fn checked_add(self, other: Amount) -> Result<Amount, MoneyError> {
        self.0.checked_add(other.0).map(Amount).ok_or(MoneyError::Overflow)
    }

    pub fn checked_sub(self, other: Amount) -> Result<Amount, MoneyError> {
        self.0.checked_sub(other.0).map(Amount).ok_or(MoneyError::Underflow)
    }
}

/// ISO 4217 codes this server knows, with their minor-unit exponent.
/// Unknown codes are refused rather than guessed.
const CURRENCIES: &[(&str, u8)] = &[
    ("AUD", 2),
    ("BHD", 3),
    ("BRL", 2),
    ("CAD", 2),
    ("CHF", 2),
    ("CLP", 0),
    ("CNY", 2),
    ("CZK", 2),
    ("DKK", 2),
    ("EUR", 2),
    ("GBP", 2),
    ("HKD", 2),
    ("HUF", 2),
    ("IDR", 2),
    ("ILS", 2),
    ("INR", 2),
    ("ISK", 0),
    ("JOD", 3),
    ("JPY", 0),
    ("KES", 2),
    ("KRW", 0),
    ("KWD", 3),
    ("MXN", 2),
    ("MYR", 2),
    ("NOK", 2),
    ("NZD", 2),
    ("OMR", 3),
    ("PHP", 2),
    ("PLN", 2),
    ("SEK", 2),
    ("SGD", 2),
    ("THB", 2),
    ("TND", 3),
    ("TRY", 2),
    ("TWD", 2),
    ("TZS", 2),
    ("UGX", 0),
    ("USD", 2),
    ("VND", 0),
    ("ZAR", 2),
];

/// A known ISO 4217 currency.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct Currency([u8; 3]);

impl Currency {
    pub fn parse(code: &str) -> Result<Currency, MoneyError> {
        CURRENCIES
            .iter()
            .find(|(c, _)| *c == code)
            .and_then(|(c, _)| <[u8; 3]>::try_from(c.as_bytes()).ok())
            .map(Currency)
            .ok_or(MoneyError::UnknownCurrency)
    }

    pub fn code(&self) -> &str {
        // Constructed only from the ASCII table above.
        std::str::from_utf8(&self.0).unwrap_or("???")
    }

    pub fn as_bytes(&self) -> &[u8; 3] {
        &self.0
    }

    /// Digits after the decimal point (JPY 0, USD 2, KWD 3).
    pub fn exponent(&self) -> u8 {
        CURRENCIES.iter().find(|(c, _)| c.as_bytes() == self.0).map(|(_, e)| *e).unwrap_or(0)
    }

    /// "1234.50 USD" — for people, never parsed back.
    pub fn format(&self, amount: Amount) -> String {
        let exp = u32::from(self.exponent());
        let minor = amount.minor();
        if exp == 0 {
            return format!("{minor} {}", self.code());
        }
        let unit = 10u64.pow(exp);
        format!("{}.{:0width$} {}", minor / unit, minor % unit, self.code(), width = usize::try_from(exp).unwrap_or(0))
    }
}

impl fmt::Debug for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn currencies_parse_with_their_exponent() {
        let check = |code: &str, exp: u8| assert_eq!(Currency::parse(code).map(|c| c.exponent()), Ok(exp));
        check("JPY", 0);
        check("USD", 2);
        check("KWD", 3);
        for bad in ["", "usd", "US", "USDD", "XXX", "U\u{0}D", "ÜSD"] {
            assert_eq!(Currency::parse(bad), Err(MoneyError::UnknownCurrency), "{bad:?}");
        }
    }

    #[test]
    fn arithmetic_is_checked() {
        let max = Amount::new(u64::MAX);
        assert_eq!(max.checked_add(Amount::new(1)), Err(MoneyError::Overflow));
        assert_eq!(Amount::ZERO.checked_sub(Amount::new(1)), Err(MoneyError::Underflow));
        assert_eq!(Amount::new(2).checked_add(Amount::new(3)), Ok(Amount::new(5)));
    }

    #[test]
    fn amounts_format_with_the_exponent() {
        let f = |c: &str, m: u64| Currency::parse(c).expect("known").format(Amount::new(m));
        assert_eq!(f("JPY", 1200), "1200 JPY");
        assert_eq!(f("USD", 1205), "12.05 USD");
        assert_eq!(f("KWD", 7), "0.007 KWD");
        assert_eq!(f("USD", u64::MAX), "184467440737095516.15 USD");
    }
}
