//! Validated identifiers. Random ids (trades, registers) are 128 bits from
//! the operating system's CSPRNG in Crockford base32; operator-chosen ids
//! (shops, carriers) are short slugs; subscribers are E.164 numbers.

use std::fmt;

use rand::rngs::SysRng;
use rand::TryRng;

/// Why an id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("must start with {0:?}")]
    Prefix(&'static str),
    #[error("must be {0} Crockford base32 characters after the prefix")]
    Length(usize),
    #[error("contains a character outside Crockford base32")]
    Alphabet,
    #[error("is out of range for a 128-bit id")]
    Range,
    #[error("must be 1..={max} characters of [a-z0-9_-], starting with a letter or digit")]
    Slug { max: usize },
    #[error("must be E.164: '+' then {min}..={max} digits, not starting with 0")]
    E164 { min: usize, max: usize },
    #[error("the operating system's random generator failed")]
    Entropy,
}

const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
/// 128 bits need ceil(128 / 5) = 26 base32 characters.
const RANDOM_ID_CHARS: usize = 26;

fn crockford_encode(value: u128) -> String {
    let mut out = String::with_capacity(RANDOM_ID_CHARS);
    for i in (0..RANDOM_ID_CHARS).rev() {
        // Each shift is < 130 and the mask keeps 5 bits, so the index fits.
        let digit = ((value >> (5 * i)) & 0x1f) as usize;
        out.push(char::from(CROCKFORD[digit]));
    }
    out
}

fn crockford_value(c: u8) -> Option<u128> {
    let upper = c.to_ascii_uppercase();
    CROCKFORD.iter().position(|&a| a == upper).map(|p| u128::from(u8::try_from(p).unwrap_or(0)))
}

fn crockford_decode(text: &str) -> Result<u128, IdError> {
    let bytes = text.as_bytes();
    if bytes.len() != RANDOM_ID_CHARS {
        return Err(IdError::Length(RANDOM_ID_CHARS));
    }
    // 26 * 5 = 130 bits, so the first character carries only the top 3 bits.
    let first = crockford_value(bytes[0]).ok_or(IdError::Alphabet)?;
    if first > 7 {
        return Err(IdError::Range);
    }
    let mut value: u128 = 0;
    for &c in bytes {
        let digit = crockford_value(c).ok_or(IdError::Alphabet)?;
        value = (value << 5) | digit;
    }
    Ok(value)
}

fn random_u128() -> Result<u128, IdError> {
    let mut buf = [0u8; 16];
    SysRng.try_fill_bytes(&mut buf).map_err(|_| IdError::Entropy)?;
    Ok(u128::from_be_bytes(buf))
}

macro_rules! random_id {
    ($(#[$meta:meta])* $name:ident, $prefix:literal) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
        pub struct $name([u8; 16]);

        impl $name {
            pub const PREFIX: &'static str = $prefix;

            /// A fresh id: 128 bits from the OS CSPRNG, nothing else in it.
            pub fn generate() -> Result<Self, IdError> {
                random_u128().map(|v| Self(v.to_be_bytes()))
            }

            pub fn from_bytes(bytes: [u8; 16]) -> Self {
                Self(bytes)
            }

            pub fn as_bytes(&self) -> &[u8; 16] {
                &self.0
            }

            pub fn parse(text: &str) -> Result<Self, IdError> {
                let rest = text.strip_prefix(Self::PREFIX).ok_or(IdError::Prefix(Self::PREFIX))?;
                crockford_decode(rest).map(|v| Self(v.to_be_bytes()))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(Self::PREFIX)?;
                f.write_str(&crockford_encode(u128::from_be_bytes(self.0)))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(self, f)
            }
        }
    };
}

random_id!(
    /// A trade: `trd_` + 26 Crockford base32 characters.
    TradeId,
    "trd_"
);
random_id!(
    /// A virtual register terminal: `reg_` + 26 Crockford base32 characters.
    RegisterId,
    "reg_"
);

/// Longest shop or carrier slug; short because it appears in keys and on
/// handset screens.
pub const MAX_SLUG_LEN: usize = 32;

fn valid_slug(text: &str) -> bool {
    let bytes = text.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_SLUG_LEN
        && bytes[0].is_ascii_alphanumeric()
        && bytes.iter().all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

macro_rules! slug_id {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
        pub struct $name(String);

        impl $name {
            pub fn parse(text: &str) -> Result<Self, IdError> {
                if valid_slug(text) {
                    Ok(Self(text.to_owned()))
                } else {
                    Err(IdError::Slug { max: MAX_SLUG_LEN })
                }
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(self, f)
            }
        }
    };
}

slug_id!(
    /// A shop, chosen by the operator (e.g. `acme-books`).
    ShopId
);
slug_id!(
    /// A mobile carrier, chosen by the operator (e.g. `docomo`).
    CarrierId
);

/// E.164 allows at most 15 digits; 8 is the shortest in use.
const E164_MIN_DIGITS: usize = 8;
const E164_MAX_DIGITS: usize = 15;

/// A subscriber's E.164 number. Personal data: its `Debug` masks all but
/// the last three digits so it cannot leak into logs by accident.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct SubscriberNumber(String);

impl SubscriberNumber {
    pub fn parse(text: &str) -> Result<Self, IdError> {
        let err = IdError::E164 { min: E164_MIN_DIGITS, max: E164_MAX_DIGITS };
        let digits = text.strip_prefix('+').ok_or(err.clone())?;
        let ok = (E164_MIN_DIGITS..=E164_MAX_DIGITS).contains(&digits.len())
            && digits.bytes().all(|b| b.is_ascii_digit())
            && !digits.starts_with('0');
        if ok {
            Ok(Self(text.to_owned()))
        } else {
            Err(err)
        }
    }

    /// The full number: only for the carrier and the operator.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `+*********678`: safe for logs.
    pub fn masked(&self) -> String {
        let n = self.0.len();
        let keep = 3.min(n);
        let mut out = String::with_capacity(n);
        out.push('+');
        for _ in 1..n.saturating_sub(keep) {
            out.push('*');
        }
        out.push_str(&self.0[n - keep..]);
        out
    }
}

impl fmt::Debug for SubscriberNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

/// Who a caller is: the operator, a shop or a carrier (a handset is not a
/// caller; its carrier speaks for it).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Principal {
    Admin,
    Shop(ShopId),
    Carrier(CarrierId),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trade_id_round_trips_and_has_the_documented_form() {
        for _ in 0..200 {
            let id = TradeId::generate().expect("entropy");
            let text = id.to_string();
            assert!(text.starts_with("trd_"));
            assert_eq!(text.len(), 4 + 26);
            assert_eq!(TradeId::parse(&text), Ok(id));
            assert_eq!(TradeId::parse(&text.to_lowercase()), Ok(id));
        }
    }

    #[test]
    fn ids_are_not_repeated() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            assert!(seen.insert(TradeId::generate().expect("entropy")));
        }
    }

    #[test]
    fn extreme_values_encode() {
        assert_eq!(crockford_encode(0), "0".repeat(26));
        assert_eq!(crockford_encode(u128::MAX), format!("7{}", "Z".repeat(25)));
        assert_eq!(crockford_decode(&format!("7{}", "Z".repeat(25))), Ok(u128::MAX));
    }

    #[test]
    fn malformed_trade_ids_are_refused() {
        let check = |text: &str, expect: IdError| assert_eq!(TradeId::parse(text), Err(expect), "{text}");
        check("", IdError::Prefix("trd_"));
        check("reg_00000000000000000000000000", IdError::Prefix("trd_"));
        check("trd_", IdError::Length(26));
        check("trd_000", IdError::Length(26));
        check(&format!("trd_{}", "0".repeat(27)), IdError::Length(26));
        check(&format!("trd_{}U", "0".repeat(25)), IdError::Alphabet);
        check(&format!("trd_{}é", "0".repeat(24)), IdError::Alphabet);
        check(&format!("trd_8{}", "0".repeat(25)), IdError::Range);
    }

    #[test]
    fn slugs_and_numbers_are_validated() {
        assert!(ShopId::parse("acme-books_2").is_ok());
        for bad in ["", "-acme", "Acme", "acme books", "a\u{0}b", &"a".repeat(33)] {
            assert!(ShopId::parse(bad).is_err(), "{bad:?}");
        }
        assert!(SubscriberNumber::parse("+818012345678").is_ok());
        for bad in ["818012345678", "+0812345678", "+1234567", "+1234567890123456", "+81-80123456", "+"] {
            assert!(SubscriberNumber::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn subscriber_numbers_are_masked_in_debug() {
        let n = SubscriberNumber::parse("+818012345678").expect("valid");
        assert_eq!(format!("{n:?}"), "+*********678");
        assert!(!format!("{n:?}").contains("8012345"));
    }
}
