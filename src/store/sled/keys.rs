//! Key layouts of the sled backend. Variable parts are slugs or E.164
//! numbers, which never contain 0x00, so `owner 0x00 …` prefixes are
//! unambiguous; integers are big-endian so keys sort by number.

use crate::domain::{AccountName, CarrierId, RegisterId, ShopId, SubscriberNumber, TradeId, UnixMs};

pub fn owned(owner: &str, rest: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(owner.len() + 1 + rest.len());
    k.extend_from_slice(owner.as_bytes());
    k.push(0);
    k.extend_from_slice(rest);
    k
}
pub fn register(shop: &ShopId, id: &RegisterId) -> Vec<u8> {
    owned(shop.as_str(), id.as_bytes())
}
pub fn event(shop: &ShopId, seq: u64) -> Vec<u8> {
    owned(shop.as_str(), &seq.to_be_bytes())
}
pub fn outbox(carrier: &CarrierId, delivery_id: u64) -> Vec<u8> {
    owned(carrier.as_str(), &delivery_id.to_be_bytes())
}
pub fn idempotency(shop: &ShopId, key: &str) -> Vec<u8> {
    owned(shop.as_str(), key.as_bytes())
}
/// Refund keys live beside trade keys; 0xff never occurs in a key
/// (visible ASCII), so the two namespaces cannot collide.
pub fn refund_idempotency(shop: &ShopId, key: &str) -> Vec<u8> {
    let mut rest = Vec::with_capacity(1 + key.len());
    rest.push(0xff);
    rest.extend_from_slice(key.as_bytes());
    owned(shop.as_str(), &rest)
}
pub fn deadline(at: UnixMs, trade: &TradeId) -> Vec<u8> {
    let mut k = Vec::with_capacity(24);
    k.extend_from_slice(&at.0.to_be_bytes());
    k.extend_from_slice(trade.as_bytes());
    k
}
pub fn account(name: &AccountName) -> Vec<u8> {
    name.key().into_bytes()
}

/// Keys of the `network` tree. The first byte names the record kind;
/// slugs and numbers never contain 0x00, so `x 0x00 y` is unambiguous.
pub mod net {
    use super::*;
    use crate::domain::{Currency, IpPrefix, Month};

    /// `P` ‖ network (16) ‖ length: one prefix.
    pub fn prefix(p: &IpPrefix) -> Vec<u8> {
        let mut k = Vec::with_capacity(18);
        k.push(b'P');
        k.extend_from_slice(&p.network().0);
        k.push(p.len());
        k
    }
    /// The set of prefix lengths in use (17-byte bitmap).
    pub const LENGTHS: &[u8] = b"Lengths";
    /// `F` ‖ carrier: its terms.
    pub fn terms(carrier: &CarrierId) -> Vec<u8> {
        [&b"F"[..], carrier.as_str().as_bytes()].concat()
    }
    /// `M` ‖ carrier: its resolve mode (absent: push, as every carrier
    /// created before ask mode existed). Not `R`: remittances are there.
    pub fn resolve_mode(carrier: &CarrierId) -> Vec<u8> {
        [&b"M"[..], carrier.as_str().as_bytes()].concat()
    }
    /// `A` ‖ carrier 0 shop: the carrier accepts the shop.
    pub fn acceptance(carrier: &CarrierId, shop: &ShopId) -> Vec<u8> {
        [&b"A"[..], carrier.as_str().as_bytes(), b"\0", shop.as_str().as_bytes()].concat()
    }
    fn bill_owner(tag: u8, carrier: &CarrierId, number: &SubscriberNumber) -> Vec<u8> {
        [&[tag][..], carrier.as_str().as_bytes(), b"\0", number.as_str().as_bytes(), b"\0"].concat()
    }
    /// `U` ‖ carrier 0 number 0 ‖ currency ‖ month: cap use.
    pub fn cap_usage(carrier: &CarrierId, number: &SubscriberNumber, currency: Currency, month: Month) -> Vec<u8> {
        let mut k = bill_owner(b'U', carrier, number);
        k.extend_from_slice(currency.as_bytes());
        k.extend_from_slice(&month.number().to_be_bytes());
        k
    }
    /// `B` ‖ carrier 0 number 0 ‖ month: the prefix of a month's lines.
    pub fn bill_month(carrier: &CarrierId, number: &SubscriberNumber, month: Month) -> Vec<u8> {
        let mut k = bill_owner(b'B', carrier, number);
        k.extend_from_slice(&month.number().to_be_bytes());
        k
    }
    /// A bill line, ordered by its settlement's posting set.
    pub fn bill_line(carrier: &CarrierId, number: &SubscriberNumber, month: Month, set_id: u64) -> Vec<u8> {
        let mut k = bill_month(carrier, number, month);
        k.extend_from_slice(&set_id.to_be_bytes());
        k
    }
    /// `I` ‖ trade: the key of the trade's bill line, if carrier-billed.
    pub fn bill_of_trade(trade: &TradeId) -> Vec<u8> {
        [&b"I"[..], &trade.as_bytes()[..]].concat()
    }
    /// `O` ‖ payout id: a shop payout, in id order.
    pub fn payout_record(payout_id: u64) -> Vec<u8> {
        [&b"O"[..], &payout_id.to_be_bytes()].concat()
    }
    /// `h` ‖ the trade's creation time (ms, big-endian) ‖ trade ‖ `E` ‖
    /// seq: an event of the trade (value empty). Keyed by creation time
    /// first, so a new trade's keys land at the end of the index instead
    /// of on random pages all over it: the first index (`H` ‖ trade ‖ …,
    /// still read for stores that have it) was written at random trade-id
    /// positions, five per settled trade, and took disk per settled trade
    /// at a million from 1.5 KB to 4.1 KB (docs/BENCHMARK.md, issue 14).
    /// Since then a trade's record carries its history (`sled::history`);
    /// these keys hold only what does not fit there, and older stores'.
    pub fn trade_event(trade: &TradeId, created_at: UnixMs, seq: u64) -> Vec<u8> {
        [&trade_history(trade, created_at)[..], b"E", &seq.to_be_bytes()].concat()
    }
    /// `h` ‖ creation time ‖ trade ‖ `P` ‖ posting id: a posting naming
    /// the trade.
    pub fn trade_posting(trade: &TradeId, created_at: UnixMs, posting_id: u64) -> Vec<u8> {
        [&trade_history(trade, created_at)[..], b"P", &posting_id.to_be_bytes()].concat()
    }
    /// The prefix of a trade's history keys.
    pub fn trade_history(trade: &TradeId, created_at: UnixMs) -> Vec<u8> {
        [&b"h"[..], &created_at.0.to_be_bytes(), &trade.as_bytes()[..]].concat()
    }
    /// The prefix of a trade's history keys in the first layout (`H` ‖
    /// trade ‖ `E`|`P` ‖ n), which stores written before kept.
    pub fn trade_history_by_id(trade: &TradeId) -> Vec<u8> {
        [&b"H"[..], &trade.as_bytes()[..]].concat()
    }
    /// `R` ‖ carrier 0 ‖ month: the prefix of a carrier's remittances for
    /// a month.
    pub fn remittance_month(carrier: &CarrierId, month: Month) -> Vec<u8> {
        let mut k = [&b"R"[..], carrier.as_str().as_bytes(), b"\0"].concat();
        k.extend_from_slice(&month.number().to_be_bytes());
        k
    }
    /// `R` ‖ carrier 0 ‖ month ‖ shop 0 ‖ currency: the prefix of one
    /// shop's remittances of the month in one currency.
    pub fn remittance_slot(carrier: &CarrierId, month: Month, shop: &ShopId, currency: Currency) -> Vec<u8> {
        let mut k = remittance_month(carrier, month);
        k.extend_from_slice(shop.as_str().as_bytes());
        k.push(0);
        k.extend_from_slice(currency.as_bytes());
        k
    }
    /// A remittance record, in id order within its slot.
    pub fn remittance(carrier: &CarrierId, month: Month, shop: &ShopId, currency: Currency, id: u64) -> Vec<u8> {
        let mut k = remittance_slot(carrier, month, shop, currency);
        k.extend_from_slice(&id.to_be_bytes());
        k
    }
    /// `S` ‖ shop 0 ‖ at ‖ set: a payout entry, in time order per shop.
    pub fn payout(shop: &ShopId, at: UnixMs, set_id: u64) -> Vec<u8> {
        let mut k = [&b"S"[..], shop.as_str().as_bytes(), b"\0"].concat();
        k.extend_from_slice(&at.0.to_be_bytes());
        k.extend_from_slice(&set_id.to_be_bytes());
        k
    }
}

/// An operator-wide PayoutShop idempotency key in the idempotency tree:
/// 0x01 never begins a shop slug, so it cannot collide with a shop's keys.
pub fn payout_idempotency(key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + key.len());
    k.push(0x01);
    k.extend_from_slice(key.as_bytes());
    k
}

/// An operator-wide RecordRemittance idempotency key in the idempotency
/// tree: 0x02, like 0x01, never begins a shop slug.
pub fn remittance_idempotency(key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + key.len());
    k.push(0x02);
    k.extend_from_slice(key.as_bytes());
    k
}

/// A shop's suspension, in the meta tree (its instant).
pub fn suspended(shop: &ShopId) -> Vec<u8> {
    owned("suspended", shop.as_str().as_bytes())
}

/// A lease record: address (16) ‖ instant (8) ‖ first port (2) ‖ kind
/// (0 stop, 1 start), all big-endian. One address's history is one
/// contiguous run in time order, so "who held it at t" is a reverse
/// range scan from (address, t); at the same instant a start sorts
/// after a stop and so wins (lease intervals are [start, end)).
pub fn lease(addr: &crate::domain::IpKey, at: UnixMs, port_lo: u16, start: bool) -> [u8; 27] {
    let mut k = [0u8; 27];
    k[..16].copy_from_slice(&addr.0);
    k[16..24].copy_from_slice(&at.0.to_be_bytes());
    k[24..26].copy_from_slice(&port_lo.to_be_bytes());
    k[26] = u8::from(start);
    k
}

/// The count of a shop's open registers, in the meta tree.
pub fn open_registers(shop: &ShopId) -> Vec<u8> {
    owned("open_registers", shop.as_str().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Currency, IpPrefix, Month, SubscriberNumber};

    /// Each kind of record in the network tree has its own first byte, so
    /// a scan of one kind (VerifyLedger reads remittances by their `R`)
    /// never meets another's (the resolve mode was once an `R` key too).
    #[test]
    fn every_kind_in_the_network_tree_has_its_own_first_byte() {
        let carrier = CarrierId::parse("docomo").expect("carrier");
        let shop = ShopId::parse("acme").expect("shop");
        let number = SubscriberNumber::parse("+818012345678").expect("number");
        let trade = TradeId::from_bytes([7; 16]);
        let month = Month::parse("2027-01").expect("month");
        let jpy = Currency::parse("JPY").expect("currency");
        let prefix = IpPrefix::parse("10.0.0.0/8").expect("prefix");
        let kinds: Vec<(&str, Vec<u8>)> = vec![
            ("prefix", net::prefix(&prefix)),
            ("lengths", net::LENGTHS.to_vec()),
            ("terms", net::terms(&carrier)),
            ("resolve mode", net::resolve_mode(&carrier)),
            ("acceptance", net::acceptance(&carrier, &shop)),
            ("cap usage", net::cap_usage(&carrier, &number, jpy, month)),
            ("bill line", net::bill_line(&carrier, &number, month, 1)),
            ("bill of trade", net::bill_of_trade(&trade)),
            ("payout", net::payout_record(1)),
            ("trade history", net::trade_event(&trade, UnixMs(1), 1)),
            ("trade history, first layout", net::trade_history_by_id(&trade)),
            ("remittance", net::remittance(&carrier, month, &shop, jpy, 1)),
            ("payout entry", net::payout(&shop, UnixMs(1), 1)),
        ];
        for (i, (a, ka)) in kinds.iter().enumerate() {
            for (b, kb) in &kinds[i + 1..] {
                assert_ne!(ka.first(), kb.first(), "{a} and {b} keys begin with the same byte");
            }
        }
    }
}
