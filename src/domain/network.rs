//! Network identity and carrier billing, the pure parts: addresses
//! normalised to 16 bytes (IPv4 as IPv4-mapped IPv6), CIDR prefixes, port
//! ranges for carrier-grade NAT, the UTC calendar month of an instant, the
//! carrier fee, and how a carrier's addresses are resolved.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};

use super::money::Amount;
use super::UnixMs;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetworkError {
    #[error("is not an IPv4 or IPv6 address")]
    BadAddress,
    #[error("is not a CIDR prefix (address/length)")]
    BadPrefix,
    #[error("prefix length {0} is out of range")]
    BadLength(u8),
    #[error("has host bits set below the prefix length (did you mean {0}?)")]
    HostBits(String),
    #[error("port range {0}..={1} is empty or reversed")]
    BadPorts(u16, u16),
}

/// How the server learns who held an address of a carrier's prefixes: a
/// carrier's choice, in its terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ResolveMode {
    /// The carrier pushes its lease records; the server looks them up.
    Push,
    /// The carrier keeps its lease records and answers a resolve request
    /// on its relay stream; the server stores no address history. The
    /// default for new carriers.
    Ask,
}

impl ResolveMode {
    pub fn name(self) -> &'static str {
        match self {
            ResolveMode::Push => "push",
            ResolveMode::Ask => "ask",
        }
    }
}

/// An address as 16 bytes; IPv4 is stored IPv4-mapped (`::ffff:a.b.c.d`),
/// so one key space and one ordering serve both families.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct IpKey(pub [u8; 16]);

impl IpKey {
    pub fn parse(text: &str) -> Result<IpKey, NetworkError> {
        text.trim().parse::<IpAddr>().map(IpKey::from).map_err(|_| NetworkError::BadAddress)
    }

    pub fn is_v4(&self) -> bool {
        Ipv6Addr::from(self.0).to_ipv4_mapped().is_some()
    }

    pub fn to_ip(self) -> IpAddr {
        let v6 = Ipv6Addr::from(self.0);
        match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        }
    }
}

impl From<IpAddr> for IpKey {
    fn from(ip: IpAddr) -> IpKey {
        match ip {
            IpAddr::V4(v4) => IpKey(v4.to_ipv6_mapped().octets()),
            // An IPv4-mapped IPv6 literal is the same key as the IPv4 address.
            IpAddr::V6(v6) => IpKey(v6.octets()),
        }
    }
}

impl fmt::Display for IpKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_ip())
    }
}

impl fmt::Debug for IpKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Addresses are personal data once tied to a time: masked in logs.
        f.write_str(if self.is_v4() { "ipv4:…" } else { "ipv6:…" })
    }
}

/// Offset of an IPv4 prefix length inside the 128-bit key.
const V4_OFFSET: u8 = 96;

/// A CIDR prefix over 16-byte keys. `len` counts bits of the 16-byte form
/// (an IPv4 /8 is 104). Host bits are always zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct IpPrefix {
    network: IpKey,
    len: u8,
}

impl IpPrefix {
    /// Parses `a.b.c.d/n` or `x:y::/n`. Host bits must be zero: a prefix
    /// written with them is probably a typo and is refused, naming the
    /// prefix it would have been.
    pub fn parse(text: &str) -> Result<IpPrefix, NetworkError> {
        let (addr, len) = text.trim().split_once('/').ok_or(NetworkError::BadPrefix)?;
        let ip: IpAddr = addr.parse().map_err(|_| NetworkError::BadPrefix)?;
        let len: u8 = len.parse().map_err(|_| NetworkError::BadPrefix)?;
        let full = match ip {
            IpAddr::V4(_) if len <= 32 => len + V4_OFFSET,
            IpAddr::V6(_) if len <= 128 => len,
            _ => return Err(NetworkError::BadLength(len)),
        };
        let key = IpKey::from(ip);
        let prefix = IpPrefix { network: mask(key, full), len: full };
        if prefix.network != key {
            return Err(NetworkError::HostBits(prefix.to_string()));
        }
        Ok(prefix)
    }

    /// The prefix of length `len` (in 16-byte bits) that contains `addr`.
    pub fn containing(addr: IpKey, len: u8) -> IpPrefix {
        let len = len.min(128);
        IpPrefix { network: mask(addr, len), len }
    }

    pub fn network(&self) -> IpKey {
        self.network
    }

    /// Length in bits of the 16-byte form.
    pub fn len(&self) -> u8 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn contains(&self, addr: IpKey) -> bool {
        mask(addr, self.len) == self.network
    }

    /// The highest address inside the prefix.
    pub fn last(&self) -> IpKey {
        let bits = u128::from_be_bytes(self.network.0);
        // checked_shr: a /128 (an IPv6 or IPv4 single address) has no host
        // bits, and `u128 >> 128` would overflow.
        let host = u128::MAX.checked_shr(u32::from(self.len)).unwrap_or(0);
        IpKey((bits | host).to_be_bytes())
    }

    /// True when one of the two contains the other.
    pub fn overlaps(&self, other: &IpPrefix) -> bool {
        self.contains(other.network) || other.contains(self.network)
    }
}

impl fmt::Display for IpPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.network.to_ip() {
            IpAddr::V4(v4) if self.len >= V4_OFFSET => write!(f, "{v4}/{}", self.len - V4_OFFSET),
            // A /<96 prefix over the mapped range is shown in IPv6 form.
            _ => write!(f, "{}/{}", Ipv6Addr::from(self.network.0), self.len),
        }
    }
}

fn mask(addr: IpKey, len: u8) -> IpKey {
    let bits = u128::from_be_bytes(addr.0);
    let m = if len == 0 { 0 } else { u128::MAX << (128 - u32::from(len.min(128))) };
    IpKey((bits & m).to_be_bytes())
}

/// An inclusive port range; the whole address is `0..=65535`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct PortRange {
    lo: u16,
    hi: u16,
}

impl PortRange {
    pub const ALL: PortRange = PortRange { lo: 0, hi: u16::MAX };

    pub fn new(lo: u16, hi: u16) -> Result<PortRange, NetworkError> {
        if lo > hi {
            return Err(NetworkError::BadPorts(lo, hi));
        }
        Ok(PortRange { lo, hi })
    }

    pub fn lo(&self) -> u16 {
        self.lo
    }

    pub fn hi(&self) -> u16 {
        self.hi
    }

    pub fn is_all(&self) -> bool {
        *self == PortRange::ALL
    }

    /// Whether a lease over this range answers a lookup for `port`. Port
    /// `None` (the shop did not see one) matches only whole-address leases:
    /// on a shared CGNAT address, the address alone names nobody.
    pub fn answers(&self, port: Option<u16>) -> bool {
        match port {
            Some(p) => self.lo <= p && p <= self.hi,
            None => self.is_all(),
        }
    }
}

/// A UTC calendar month as `yyyy * 100 + mm` (e.g. 202611); sorts in time
/// order as a big-endian u32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct Month(u32);

impl Month {
    /// The month `at` falls in (UTC).
    pub fn of(at: UnixMs) -> Month {
        let days = at.0 / 86_400_000;
        let (y, m, _) = civil_from_days(days);
        Month(y * 100 + m)
    }

    /// Parses `YYYY-MM`.
    pub fn parse(text: &str) -> Option<Month> {
        let (y, m) = text.trim().split_once('-')?;
        if y.len() != 4 || m.len() != 2 {
            return None;
        }
        let (y, m): (u32, u32) = (y.parse().ok()?, m.parse().ok()?);
        ((1970..=9999).contains(&y) && (1..=12).contains(&m)).then_some(Month(y * 100 + m))
    }

    pub fn from_number(n: u32) -> Option<Month> {
        let (y, m) = (n / 100, n % 100);
        ((1970..=9999).contains(&y) && (1..=12).contains(&m)).then_some(Month(n))
    }

    pub fn number(&self) -> u32 {
        self.0
    }

    /// The month's first instant (UTC midnight of its first day).
    pub fn start(&self) -> UnixMs {
        UnixMs(days_from_civil(self.0 / 100, self.0 % 100) * 86_400_000)
    }

    /// The first instant after the month (the next month's start).
    pub fn end(&self) -> UnixMs {
        let (y, m) = (self.0 / 100, self.0 % 100);
        let (y, m) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
        UnixMs(days_from_civil(y, m) * 86_400_000)
    }
}

/// Days since 1970-01-01 of the first day of month `m` of year `y`
/// (Howard Hinnant's inverse of [`civil_from_days`], unsigned: y >= 1970).
fn days_from_civil(y: u32, m: u32) -> u64 {
    let (y, m) = (u64::from(y), u64::from(m));
    let y = if m <= 2 { y - 1 } else { y };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

impl fmt::Display for Month {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}", self.0 / 100, self.0 % 100)
    }
}

/// Days since 1970-01-01 to (year, month, day); Howard Hinnant's algorithm
/// for the proleptic Gregorian calendar, in unsigned arithmetic (no dates
/// before 1970 occur here).
fn civil_from_days(days: u64) -> (u32, u32, u32) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (u32::try_from(y).unwrap_or(u32::MAX), u32::try_from(m).unwrap_or(1), u32::try_from(d).unwrap_or(1))
}

/// The most a carrier fee may be: 100% in basis points.
pub const MAX_FEE_BPS: u32 = 10_000;

/// The carrier's fee on a charge: `floor(amount × bps / 10 000)`, rounded
/// down (in the shop's favour), computed exactly in u128. Never more than
/// the amount because `bps <= MAX_FEE_BPS`.
pub fn carrier_fee(amount: Amount, bps: u32) -> Amount {
    let fee = u128::from(amount.minor()) * u128::from(bps.min(MAX_FEE_BPS)) / u128::from(MAX_FEE_BPS);
    // fee <= amount <= u64::MAX, so the conversion cannot fail.
    Amount::new(u64::try_from(fee).unwrap_or(amount.minor()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_normalise_ipv4_to_mapped() {
        let a = IpKey::parse("192.0.2.7").expect("v4");
        let b = IpKey::parse("::ffff:192.0.2.7").expect("mapped");
        assert_eq!(a, b);
        assert!(a.is_v4());
        assert_eq!(a.to_string(), "192.0.2.7");
        assert!(!format!("{a:?}").contains("192"));
        let v6 = IpKey::parse("2001:db8::1").expect("v6");
        assert!(!v6.is_v4());
        assert!(IpKey::parse("300.1.1.1").is_err());
        assert!(IpKey::parse("").is_err());
    }

    #[test]
    fn prefixes_parse_contain_and_overlap() {
        let check = |text: &str, ok: bool| assert_eq!(IpPrefix::parse(text).is_ok(), ok, "{text}");
        check("10.0.0.0/8", true);
        check("0.0.0.0/0", true);
        check("2001:db8::/32", true);
        check("10.0.0.1/8", false);
        check("10.0.0.0/33", false);
        check("2001:db8::/129", false);
        check("10.0.0.0", false);
        check("10.0.0.0/x", false);
        let p = IpPrefix::parse("10.0.0.0/8").expect("p");
        assert_eq!(p.len(), 104);
        assert_eq!(p.to_string(), "10.0.0.0/8");
        assert!(p.contains(IpKey::parse("10.255.0.1").expect("a")));
        assert!(!p.contains(IpKey::parse("11.0.0.1").expect("a")));
        assert_eq!(p.last(), IpKey::parse("10.255.255.255").expect("a"));
        let q = IpPrefix::parse("10.20.0.0/16").expect("q");
        assert!(p.overlaps(&q) && q.overlaps(&p));
        assert!(!q.overlaps(&IpPrefix::parse("10.21.0.0/16").expect("r")));
        let v6 = IpPrefix::parse("2001:db8::/32").expect("v6");
        assert!(!v6.overlaps(&p));
        assert_eq!(v6.to_string(), "2001:db8::/32");
        assert!(matches!(IpPrefix::parse("10.1.2.3/8"), Err(NetworkError::HostBits(s)) if s == "10.0.0.0/8"));
    }

    #[test]
    fn a_single_address_prefix_ends_at_its_address() {
        // /32 and /128 are one address each: its last address is itself
        // (found by `demo --web`, whose carrier leases 127.0.0.1 and ::1).
        for (text, addr) in [("::1/128", "::1"), ("198.51.100.7/32", "198.51.100.7"), ("0.0.0.0/32", "0.0.0.0")] {
            let p = IpPrefix::parse(text).expect(text);
            assert_eq!(p.last(), IpKey::parse(addr).expect(addr), "{text}");
            assert!(p.contains(p.last()));
        }
        let all = IpPrefix::parse("::/0").expect("all");
        assert_eq!(all.last(), IpKey([0xff; 16]));
    }

    #[test]
    fn port_ranges_answer_ports() {
        assert!(PortRange::new(10, 9).is_err());
        let r = PortRange::new(1024, 2047).expect("r");
        assert!(r.answers(Some(1024)) && r.answers(Some(2047)));
        assert!(!r.answers(Some(2048)) && !r.answers(None));
        assert!(PortRange::ALL.answers(None) && PortRange::ALL.answers(Some(1)));
    }

    #[test]
    fn months_are_utc_calendar_months() {
        let check = |ms: u64, expect: &str| assert_eq!(Month::of(UnixMs(ms)).to_string(), expect, "{ms}");
        check(0, "1970-01");
        check(951_868_800_000 - 1, "2000-02"); // 2000-02-29T23:59:59.999Z
        check(951_868_800_000, "2000-03");
        check(1_798_761_600_000 - 1, "2026-12"); // 2027-01-01T00:00:00Z minus 1 ms
        check(1_798_761_600_000, "2027-01");
        assert_eq!(Month::parse("2026-11").map(|m| m.number()), Some(202_611));
        assert_eq!(Month::parse("2026-13"), None);
        assert_eq!(Month::parse("26-11"), None);
    }

    #[test]
    fn a_month_starts_and_ends_where_month_of_changes() {
        let m = |t: &str| Month::parse(t).expect(t);
        assert_eq!(m("2027-01").start(), UnixMs(1_798_761_600_000));
        assert_eq!(m("2026-12").end(), UnixMs(1_798_761_600_000));
        assert_eq!(m("2000-02").end(), UnixMs(951_868_800_000));
        assert_eq!(m("1970-01").start(), UnixMs(0));
        // Every month of four years, leap years included: its start is in
        // it, the instant before is in the month before, its end is the
        // next month's start.
        for n in [1999u32, 2000, 2024, 2100] {
            for mm in 1..=12 {
                let month = Month::from_number(n * 100 + mm).expect("month");
                assert_eq!(Month::of(month.start()), month);
                assert_eq!(Month::of(UnixMs(month.end().0 - 1)), month);
                assert_ne!(Month::of(month.end()), month);
                assert_ne!(Month::of(UnixMs(month.start().0 - 1)), month);
            }
        }
    }

    #[test]
    fn fees_round_down_and_never_exceed_the_amount() {
        let check = |amount: u64, bps: u32, fee: u64| assert_eq!(carrier_fee(Amount::new(amount), bps).minor(), fee);
        check(1000, 250, 25);
        check(999, 250, 24); // 24.975 rounds down
        check(1, 9_999, 0);
        check(7, 10_000, 7);
        check(u64::MAX, 10_000, u64::MAX);
        check(u64::MAX, 5_000, u64::MAX / 2);
        check(500, 0, 0);
    }
}
