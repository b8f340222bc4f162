//! The simulated carrier's own lease records and how it answers the
//! server's resolve requests (ask mode): from its lease table, or with a
//! fault ([`ResolvePolicy`]: slow, silent, a wrong subscriber, a broken
//! stream, a repeat, a malformed answer, a refusal of the shop). The lease
//! table never leaves the simulator, as a real carrier's would not.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use crate::domain::{IpKey, PortRange, ShopId, SubscriberNumber, UnixMs};
use crate::proto::{self, relay_up};

/// Lease records one simulated carrier keeps at most; adding more is
/// refused (a test or demo needs a handful).
pub const MAX_SIM_LEASES: usize = 100_000;
/// Longest delay of a [`ResolvePolicy::Slow`] answer: longer than any
/// resolve timeout worth testing, short enough that a run ends.
pub const MAX_RESOLVE_DELAY: Duration = Duration::from_secs(60);

/// How the simulated carrier answers resolve requests.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ResolvePolicy {
    /// From its lease table, at once: FOUND with the holder, or MISS.
    #[default]
    Answer,
    /// As `Answer`, but after this delay (at most [`MAX_RESOLVE_DELAY`]).
    Slow(Duration),
    /// Never answers.
    Silent,
    /// Answers FOUND naming this number, whoever held the address.
    WrongSubscriber(SubscriberNumber),
    /// Breaks the relay stream on receiving the request, without answering.
    Disconnect,
    /// Answers twice, the same answer.
    Twice,
    /// Answers FOUND without a number.
    Malformed,
}

/// What the relay task does with one resolve request.
#[derive(Debug, Clone, PartialEq)]
pub enum ResolveAction {
    /// Send these messages after `after` (zero: now).
    Send { messages: Vec<proto::RelayUp>, after: Duration },
    /// Send nothing.
    Nothing,
    /// Break the stream.
    Cut,
}

/// Why a lease could not be recorded in the simulator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseError {
    #[error("ip: {0}")]
    Address(crate::domain::NetworkError),
    #[error("ports: {0}")]
    Ports(crate::domain::NetworkError),
    #[error("this simulator keeps at most {max} lease records")]
    Full { max: usize },
}

/// The carrier's lease records: per address, in time order, a start (the
/// holder) or a stop, each for a port block: who held an address (and
/// port) at an instant is the newest record at or before it whose block
/// answers the port — the server's own semantics in push mode.
#[derive(Debug, Default)]
pub struct LeaseTable {
    records: BTreeMap<LeaseKey, (PortRange, Option<SubscriberNumber>)>,
}

/// Address, instant, first port, start (a start sorts after a stop at the
/// same instant, as at the server).
type LeaseKey = (IpKey, UnixMs, u16, bool);

impl LeaseTable {
    /// Records that `holder` (or, for `None`, nobody) holds `ip`'s `ports`
    /// (`(0, 0)`: the whole address) from `at`.
    pub fn record(
        &mut self,
        ip: &str,
        ports: (u16, u16),
        holder: Option<SubscriberNumber>,
        at: UnixMs,
    ) -> Result<(), LeaseError> {
        let ip = IpKey::parse(ip).map_err(LeaseError::Address)?;
        let ports = match ports {
            (0, 0) => PortRange::ALL,
            (lo, hi) => PortRange::new(lo, hi).map_err(LeaseError::Ports)?,
        };
        let key = (ip, at, ports.lo(), holder.is_some());
        if !self.records.contains_key(&key) && self.records.len() >= MAX_SIM_LEASES {
            return Err(LeaseError::Full { max: MAX_SIM_LEASES });
        }
        self.records.insert(key, (ports, holder));
        Ok(())
    }

    /// Who held `ip` (and `port`) at `at`.
    pub fn holder(&self, ip: IpKey, port: Option<u16>, at: UnixMs) -> Option<&SubscriberNumber> {
        let range = (ip, UnixMs(0), 0, false)..=(ip, at, u16::MAX, true);
        for (ports, holder) in self.records.range(range).rev().map(|(_, v)| v) {
            if ports.answers(port) {
                return holder.as_ref();
            }
        }
        None
    }
}

/// A resolve answer on the wire.
pub fn answer(request_id: u64, outcome: proto::ResolveOutcome, number: Option<&SubscriberNumber>) -> proto::RelayUp {
    proto::RelayUp {
        body: Some(relay_up::Body::Resolved(proto::ResolveAnswer {
            request_id,
            outcome: outcome as i32,
            subscriber_number: number.map(|n| n.as_str().to_owned()).unwrap_or_default(),
        })),
    }
}

/// The carrier's answer to one request: its own rules for the shop first
/// (a refused shop is refused whatever the address), then its leases, as
/// the policy says.
pub fn decide(
    table: &LeaseTable,
    refused_shops: &HashSet<ShopId>,
    policy: &ResolvePolicy,
    request: &proto::ResolveRequest,
) -> ResolveAction {
    let id = request.request_id;
    let truthful = || {
        let shop_refused = ShopId::parse(&request.shop_id).map_or(true, |shop| refused_shops.contains(&shop));
        if shop_refused {
            return answer(id, proto::ResolveOutcome::Refused, None);
        }
        let ip = IpKey::parse(&request.ip).ok();
        let port = u16::try_from(request.port).ok().filter(|p| *p != 0);
        let at = u64::try_from(request.observed_at_ms).ok().map(UnixMs);
        match ip.zip(at).and_then(|(ip, at)| table.holder(ip, port, at)) {
            Some(number) => answer(id, proto::ResolveOutcome::Found, Some(number)),
            None => answer(id, proto::ResolveOutcome::Miss, None),
        }
    };
    let now = |messages| ResolveAction::Send { messages, after: Duration::ZERO };
    match policy {
        ResolvePolicy::Answer => now(vec![truthful()]),
        ResolvePolicy::Slow(delay) => {
            ResolveAction::Send { messages: vec![truthful()], after: (*delay).min(MAX_RESOLVE_DELAY) }
        }
        ResolvePolicy::Silent => ResolveAction::Nothing,
        ResolvePolicy::WrongSubscriber(number) => now(vec![answer(id, proto::ResolveOutcome::Found, Some(number))]),
        ResolvePolicy::Disconnect => ResolveAction::Cut,
        ResolvePolicy::Twice => {
            let a = truthful();
            now(vec![a.clone(), a])
        }
        ResolvePolicy::Malformed => now(vec![answer(id, proto::ResolveOutcome::Found, None)]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn number(n: &str) -> SubscriberNumber {
        SubscriberNumber::parse(n).expect("valid")
    }

    fn request(ip: &str, port: u32, at: i64, shop: &str) -> proto::ResolveRequest {
        proto::ResolveRequest { request_id: 7, ip: ip.into(), port, observed_at_ms: at, shop_id: shop.into() }
    }

    fn outcome(action: &ResolveAction) -> Vec<(i32, String)> {
        let ResolveAction::Send { messages, .. } = action else { return Vec::new() };
        messages
            .iter()
            .map(|m| match &m.body {
                Some(relay_up::Body::Resolved(r)) => (r.outcome, r.subscriber_number.clone()),
                other => panic!("not a resolve answer: {other:?}"),
            })
            .collect()
    }

    #[test]
    fn the_table_answers_who_held_an_address_and_port_at_an_instant() {
        let mut t = LeaseTable::default();
        let (a, b) = (number("+818020000001"), number("+818020000002"));
        t.record("198.51.100.7", (0, 0), Some(a.clone()), UnixMs(1_000)).expect("lease");
        t.record("198.51.100.7", (0, 0), None, UnixMs(2_000)).expect("stop");
        t.record("198.51.100.8", (1024, 2047), Some(b.clone()), UnixMs(1_000)).expect("cgnat");
        let ip = |s| IpKey::parse(s).expect("ip");
        assert_eq!(t.holder(ip("198.51.100.7"), None, UnixMs(999)), None);
        assert_eq!(t.holder(ip("198.51.100.7"), None, UnixMs(1_500)), Some(&a));
        assert_eq!(t.holder(ip("198.51.100.7"), None, UnixMs(2_000)), None, "a stop at the instant ends it");
        assert_eq!(t.holder(ip("198.51.100.8"), Some(1500), UnixMs(1_500)), Some(&b));
        assert_eq!(t.holder(ip("198.51.100.8"), Some(3000), UnixMs(1_500)), None);
        assert_eq!(t.holder(ip("198.51.100.8"), None, UnixMs(1_500)), None, "port 0 matches whole-address leases only");
        assert!(matches!(t.record("198.51.100.999", (0, 0), None, UnixMs(1)), Err(LeaseError::Address(_))));
    }

    #[test]
    fn each_policy_answers_as_it_says() {
        let mut t = LeaseTable::default();
        let a = number("+818020000001");
        t.record("198.51.100.7", (0, 0), Some(a.clone()), UnixMs(1_000)).expect("lease");
        let none = HashSet::new();
        let held = request("198.51.100.7", 0, 1_500, "acme");
        let found = (proto::ResolveOutcome::Found as i32, a.as_str().to_owned());
        let miss = (proto::ResolveOutcome::Miss as i32, String::new());
        assert_eq!(outcome(&decide(&t, &none, &ResolvePolicy::Answer, &held)), std::slice::from_ref(&found));
        assert_eq!(
            outcome(&decide(&t, &none, &ResolvePolicy::Answer, &request("198.51.100.9", 0, 1_500, "acme"))),
            [miss]
        );
        assert_eq!(outcome(&decide(&t, &none, &ResolvePolicy::Twice, &held)), [found.clone(), found.clone()]);
        let slow = decide(&t, &none, &ResolvePolicy::Slow(Duration::from_secs(9)), &held);
        assert!(matches!(slow, ResolveAction::Send { after, .. } if after == Duration::from_secs(9)));
        assert_eq!(decide(&t, &none, &ResolvePolicy::Silent, &held), ResolveAction::Nothing);
        assert_eq!(decide(&t, &none, &ResolvePolicy::Disconnect, &held), ResolveAction::Cut);
        let other = number("+818020000009");
        assert_eq!(
            outcome(&decide(&t, &none, &ResolvePolicy::WrongSubscriber(other.clone()), &held)),
            [(proto::ResolveOutcome::Found as i32, other.as_str().to_owned())]
        );
        assert_eq!(
            outcome(&decide(&t, &none, &ResolvePolicy::Malformed, &held)),
            [(proto::ResolveOutcome::Found as i32, String::new())]
        );
        let refused: HashSet<ShopId> = [ShopId::parse("acme").expect("shop")].into();
        assert_eq!(
            outcome(&decide(&t, &refused, &ResolvePolicy::Answer, &held)),
            [(proto::ResolveOutcome::Refused as i32, String::new())]
        );
    }
}
