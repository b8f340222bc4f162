//! Amounts in minor units (the domain's `u64`) as PostgreSQL
//! `numeric(20,0)` in the binary wire format, both ways and exactly: a
//! value that is negative, fractional, NaN, infinite or above `u64::MAX`
//! is refused when read, never rounded or wrapped.

use std::error::Error;

use bytes::{BufMut, BytesMut};
use tokio_postgres::types::{to_sql_checked, FromSql, IsNull, Kind, ToSql, Type};

use crate::domain::Amount;

/// Sign word of a positive number (`NUMERIC_POS` in PostgreSQL's numeric.c).
const NUMERIC_POS: u16 = 0x0000;
/// numeric digits are base 10 000.
const NBASE: u64 = 10_000;
/// u64::MAX has 20 decimal digits: at most 5 base-10 000 digits.
const MAX_DIGITS: usize = 5;

/// A `u64` carried as `numeric`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Minor(pub u64);

impl From<Amount> for Minor {
    fn from(a: Amount) -> Minor {
        Minor(a.minor())
    }
}

impl From<Minor> for Amount {
    fn from(m: Minor) -> Amount {
        Amount::new(m.0)
    }
}

/// `numeric`, or a domain over it (the schema's `minor_units`).
fn is_numeric(ty: &Type) -> bool {
    match ty.kind() {
        Kind::Domain(inner) => *inner == Type::NUMERIC,
        _ => *ty == Type::NUMERIC,
    }
}

impl ToSql for Minor {
    fn to_sql(&self, _ty: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        // Base-10 000 digits, most significant first, trailing zero digits
        // dropped as PostgreSQL itself stores them (the weight keeps the
        // magnitude).
        let mut digits = [0u16; MAX_DIGITS];
        let mut n = self.0;
        let mut count = 0;
        while n > 0 {
            digits[count] = u16::try_from(n % NBASE)?;
            n /= NBASE;
            count += 1;
        }
        let weight = i16::try_from(count.saturating_sub(1))?;
        let digits = &mut digits[..count];
        digits.reverse();
        let significant = digits.iter().rposition(|d| *d != 0).map_or(0, |i| i + 1);
        out.put_i16(i16::try_from(significant)?);
        out.put_i16(if count == 0 { 0 } else { weight });
        out.put_u16(NUMERIC_POS);
        out.put_u16(0);
        for d in &digits[..significant] {
            out.put_i16(i16::try_from(*d)?);
        }
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        is_numeric(ty)
    }

    to_sql_checked!();
}

impl<'a> FromSql<'a> for Minor {
    fn from_sql(_ty: &Type, raw: &'a [u8]) -> Result<Minor, Box<dyn Error + Sync + Send>> {
        let word = |i: usize| -> Result<u16, Box<dyn Error + Sync + Send>> {
            let b = raw.get(i * 2..i * 2 + 2).ok_or("numeric: truncated")?;
            Ok(u16::from_be_bytes([b[0], b[1]]))
        };
        let ndigits = usize::from(word(0)?);
        let weight = i32::from(i16::from_be_bytes(word(1)?.to_be_bytes()));
        let sign = word(2)?;
        if sign != NUMERIC_POS {
            return Err("numeric: negative, NaN or infinite where an amount was expected".into());
        }
        if raw.len() != 8 + ndigits * 2 {
            return Err("numeric: length does not match its digit count".into());
        }
        let mut value: u64 = 0;
        for i in 0..ndigits {
            let d = u64::from(word(4 + i)?);
            if d >= NBASE {
                return Err("numeric: digit out of range".into());
            }
            // Digit i stands for d × 10 000^(weight − i).
            let power = weight - i32::try_from(i)?;
            if power < 0 {
                if d != 0 {
                    return Err("numeric: an amount has no fractional part".into());
                }
                continue;
            }
            let mut place: u64 = 1;
            for _ in 0..power {
                place = place.checked_mul(NBASE).ok_or("numeric: above u64")?;
            }
            value = d.checked_mul(place).and_then(|v| value.checked_add(v)).ok_or("numeric: above u64")?;
        }
        Ok(Minor(value))
    }

    fn accepts(ty: &Type) -> bool {
        is_numeric(ty)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(n: u64) -> u64 {
        let mut buf = BytesMut::new();
        Minor(n).to_sql(&Type::NUMERIC, &mut buf).expect("encode");
        Minor::from_sql(&Type::NUMERIC, &buf).expect("decode").0
    }

    #[test]
    fn every_width_round_trips() {
        for n in [0, 1, 9_999, 10_000, 10_001, 100_000_000, 1_000_000_000_000, u64::MAX / 2 + 1, u64::MAX - 1, u64::MAX]
        {
            assert_eq!(round_trip(n), n, "{n}");
        }
    }

    #[test]
    fn encodes_as_postgres_does() {
        // 10 000 is one digit (1) of weight 1; trailing zero digits dropped.
        let mut buf = BytesMut::new();
        Minor(10_000).to_sql(&Type::NUMERIC, &mut buf).expect("encode");
        assert_eq!(&buf[..], &[0, 1, 0, 1, 0, 0, 0, 0, 0, 1]);
        let mut zero = BytesMut::new();
        Minor(0).to_sql(&Type::NUMERIC, &mut zero).expect("encode");
        assert_eq!(&zero[..], &[0, 0, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn refuses_what_is_not_a_u64() {
        let negative = [0, 1, 0, 0, 0x40, 0, 0, 0, 0, 5];
        assert!(Minor::from_sql(&Type::NUMERIC, &negative).is_err());
        let nan = [0, 0, 0, 0, 0xc0, 0, 0, 0];
        assert!(Minor::from_sql(&Type::NUMERIC, &nan).is_err());
        // 0.5: digit 5000 of weight -1.
        let half = [0, 1, 0xff, 0xff, 0, 0, 0, 1, 0x13, 0x88];
        assert!(Minor::from_sql(&Type::NUMERIC, &half).is_err());
        // 2^64 = 1844 6744 0737 0955 1616.
        let above = [0, 5, 0, 4, 0, 0, 0, 0, 0x07, 0x34, 0x1a, 0x58, 0x02, 0xe1, 0x03, 0xbb, 0x06, 0x50];
        assert!(Minor::from_sql(&Type::NUMERIC, &above).is_err());
        assert!(Minor::from_sql(&Type::NUMERIC, &[0, 1]).is_err());
        assert!(Minor::from_sql(&Type::NUMERIC, &[0, 2, 0, 0, 0, 0, 0, 0, 0, 1]).is_err());
    }
}
