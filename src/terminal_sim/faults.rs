//! Carrier faults: a seeded, bounded fault-injection layer that stands for
//! the network between the simulated carrier and the server. Off by
//! default. It can drop, duplicate, delay and reorder the acks and answers
//! going up and the messages coming down, and cut the relay stream (the
//! relay task then reconnects as after any lost stream). Pure apart from
//! reading no clock itself: the relay task passes `now` in.
//!
//! Every decision comes from one `StdRng` seeded from [`SimConfig::seed`],
//! so the same seed makes the same decisions for the same sequence of
//! messages. (Which message meets which decision still depends on timing
//! across tasks, so a replay is close, not exact.)

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tokio::time::Instant;

use super::transcript::FaultCounters;

/// Messages one lane may hold back with a delay. A message that would be
/// delayed while this many wait goes at once (counted in `over_cap`), so a
/// long run with delays cannot pile up memory.
pub const MAX_DELAYED_PER_LANE: usize = 1024;
/// Longest a fault can hold a message back (`max_delay`, `max_hold`);
/// longer settings are cut to it, so nothing waits in a lane for long.
pub const MAX_FAULT_DELAY: Duration = Duration::from_secs(60);

/// A probability in thousandths. Integers, not floats, so a configuration
/// prints and compares exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Chance(u16);

impl Chance {
    pub const NEVER: Chance = Chance(0);
    pub const ALWAYS: Chance = Chance(PER_MILLE);

    /// `n` in a thousand; `None` above 1000.
    pub const fn per_mille(n: u16) -> Option<Chance> {
        if n <= PER_MILLE {
            Some(Chance(n))
        } else {
            None
        }
    }

    pub const fn as_per_mille(self) -> u16 {
        self.0
    }

    /// Draws once unless the chance is zero, so a fault that is off costs
    /// no draw and does not shift the other decisions.
    fn roll(self, rng: &mut StdRng) -> bool {
        self.0 > 0 && rng.random_ratio(u32::from(self.0), u32::from(PER_MILLE))
    }
}

const PER_MILLE: u16 = 1000;

/// What may happen to one kind of message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageFaults {
    /// Lost: never arrives.
    pub drop: Chance,
    /// Arrives twice. Each copy then meets `delay` and `reorder` on its own.
    pub duplicate: Chance,
    /// Arrives after a random pause of up to [`Faults::max_delay`].
    pub delay: Chance,
    /// Held back until the next message has gone (or
    /// [`Faults::max_hold`] passed).
    pub reorder: Chance,
}

impl MessageFaults {
    pub const NONE: MessageFaults =
        MessageFaults { drop: Chance::NEVER, duplicate: Chance::NEVER, delay: Chance::NEVER, reorder: Chance::NEVER };

    /// The same chance for each of the four faults.
    pub const fn each(chance: Chance) -> MessageFaults {
        MessageFaults { drop: chance, duplicate: chance, delay: chance, reorder: chance }
    }

    fn is_none(&self) -> bool {
        *self == MessageFaults::NONE
    }
}

/// The faults of one simulated carrier's link to the server.
///
/// Semantics the server must cope with: a lost ack leaves the delivery in
/// the server's outbox until the carrier reconnects (the server does not
/// resend on a timer); a lost answer leaves the trade open until its
/// deadline (or until the handset answers again, see
/// [`SimConfig::reanswer_on_redelivery`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Faults {
    /// Delivery acknowledgements going up.
    pub acks: MessageFaults,
    /// Handset answers going up.
    pub answers: MessageFaults,
    /// Messages from the server, before the carrier handles them. Only
    /// messages with a delivery id (offers, withdrawals) are duplicated:
    /// the server promises those at least once, but sends an answer result
    /// at most once, so a copy of one would be a fault of ours, not the
    /// server's. Answer results are still lost, delayed and reordered.
    pub down: MessageFaults,
    /// Longest delay a delayed message gets (at most [`MAX_FAULT_DELAY`]).
    pub max_delay: Duration,
    /// How long a message held back for reordering waits for a later one
    /// to overtake it before it goes anyway (at most [`MAX_FAULT_DELAY`]).
    pub max_hold: Duration,
    /// Chance, at each message in either direction, that the relay stream
    /// breaks just before it: that message and everything still in flight
    /// (delayed or held) is lost.
    pub disconnect: Chance,
}

impl Faults {
    pub const NONE: Faults = Faults {
        acks: MessageFaults::NONE,
        answers: MessageFaults::NONE,
        down: MessageFaults::NONE,
        max_delay: Duration::ZERO,
        max_hold: Duration::ZERO,
        disconnect: Chance::NEVER,
    };

    pub fn is_none(&self) -> bool {
        self.acks.is_none() && self.answers.is_none() && self.down.is_none() && self.disconnect == Chance::NEVER
    }
}

/// How a [`CarrierSim`](super::CarrierSim) behaves beyond its handsets'
/// policies. The default is a perfect network and no re-answering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimConfig {
    pub faults: Faults,
    /// Seeds every fault decision; logged at start so a run can be replayed.
    pub seed: u64,
    /// When an offer a handset has already answered arrives again (the
    /// server redelivers what it has no ack for) and no verdict has come
    /// for it, send the same answers again, as docs/CARRIER.md asks of a
    /// relay (the answer may have been lost with a broken stream). They
    /// must not settle anything twice. On by default.
    pub reanswer_on_redelivery: bool,
    /// A deliberate breach of the carrier contract, for testing a
    /// conformance check; `None` (the default) follows the contract.
    pub deviation: Option<super::Deviation>,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig { faults: Faults::NONE, seed: 0, reanswer_on_redelivery: true, deviation: None }
    }
}

/// The fault decisions of one simulated carrier: its configuration and its
/// seeded random generator.
pub struct Injector {
    faults: Faults,
    rng: StdRng,
}

impl Injector {
    pub fn new(faults: Faults, seed: u64) -> Self {
        Injector { faults, rng: StdRng::seed_from_u64(seed) }
    }

    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// Whether the stream breaks now.
    pub fn cut(&mut self) -> bool {
        self.faults.disconnect.roll(&mut self.rng)
    }

    /// Sends `item` into `lane` under `kind`'s faults; returns what reaches
    /// the other end now, in order (possibly nothing).
    pub fn pass<T: Clone>(
        &mut self,
        lane: &mut Lane<T>,
        item: T,
        kind: &MessageFaults,
        may_duplicate: bool,
        now: Instant,
        counters: &mut FaultCounters,
    ) -> Vec<T> {
        let mut out = Vec::new();
        if kind.drop.roll(&mut self.rng) {
            counters.dropped += 1;
            return out;
        }
        let copies = if may_duplicate && kind.duplicate.roll(&mut self.rng) {
            counters.duplicated += 1;
            vec![item.clone(), item]
        } else {
            vec![item]
        };
        for copy in copies {
            let delayed = kind.delay.roll(&mut self.rng);
            let held = kind.reorder.roll(&mut self.rng);
            if delayed {
                let max_ms = u64::try_from(self.faults.max_delay.min(MAX_FAULT_DELAY).as_millis()).unwrap_or(0);
                let pause = Duration::from_millis(self.rng.random_range(0..=max_ms));
                match lane.delay(copy, now + pause) {
                    None => counters.delayed += 1,
                    Some(back) => {
                        counters.over_cap += 1;
                        lane.emit(back, &mut out);
                    }
                }
            } else if held {
                let until = now + self.faults.max_hold.min(MAX_FAULT_DELAY);
                match lane.hold(copy, until) {
                    None => counters.held += 1,
                    // One is held already: this one overtakes it, which is
                    // a reordering too.
                    Some(back) => lane.emit(back, &mut out),
                }
            } else {
                lane.emit(copy, &mut out);
            }
        }
        out
    }
}

/// A message waiting in a lane until `due`; ordered by (due, seq) so equal
/// deadlines keep the order they were set in.
struct Timed<T> {
    due: Instant,
    seq: u64,
    item: T,
}

impl<T> PartialEq for Timed<T> {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}

impl<T> Eq for Timed<T> {}

impl<T> PartialOrd for Timed<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<T> Ord for Timed<T> {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.due, self.seq).cmp(&(other.due, other.seq))
    }
}

/// One direction of the link: the messages it is holding back. At most
/// [`MAX_DELAYED_PER_LANE`] delayed and one held.
pub struct Lane<T> {
    delayed: BinaryHeap<Reverse<Timed<T>>>,
    held: Option<Timed<T>>,
    next_seq: u64,
}

impl<T> Default for Lane<T> {
    fn default() -> Self {
        Lane { delayed: BinaryHeap::new(), held: None, next_seq: 0 }
    }
}

impl<T> Lane<T> {
    /// Messages whose time has come, in order: delayed ones that are due,
    /// and a held one that waited `max_hold` for nobody.
    pub fn due(&mut self, now: Instant) -> Vec<T> {
        let mut out = Vec::new();
        while self.delayed.peek().is_some_and(|Reverse(t)| t.due <= now) {
            let Some(Reverse(timed)) = self.delayed.pop() else {
                break;
            };
            self.emit(timed.item, &mut out);
        }
        if self.held.as_ref().is_some_and(|h| h.due <= now) {
            if let Some(held) = self.held.take() {
                out.push(held.item);
            }
        }
        out
    }

    /// When `due` will next have something.
    pub fn next_due(&self) -> Option<Instant> {
        let delayed = self.delayed.peek().map(|Reverse(t)| t.due);
        let held = self.held.as_ref().map(|h| h.due);
        match (delayed, held) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Forgets everything in flight (the stream broke); returns how much.
    pub fn clear(&mut self) -> usize {
        let lost = self.delayed.len() + usize::from(self.held.is_some());
        self.delayed.clear();
        self.held = None;
        lost
    }

    #[cfg(test)]
    fn in_flight(&self) -> usize {
        self.delayed.len() + usize::from(self.held.is_some())
    }

    /// Sends a message on, with the held one (if any) right after it.
    fn emit(&mut self, item: T, out: &mut Vec<T>) {
        out.push(item);
        if let Some(held) = self.held.take() {
            out.push(held.item);
        }
    }

    /// Gives the message back when the lane is full.
    fn delay(&mut self, item: T, due: Instant) -> Option<T> {
        if self.delayed.len() >= MAX_DELAYED_PER_LANE {
            return Some(item);
        }
        self.next_seq += 1;
        self.delayed.push(Reverse(Timed { due, seq: self.next_seq, item }));
        None
    }

    /// Gives the message back when one is held already.
    fn hold(&mut self, item: T, due: Instant) -> Option<T> {
        if self.held.is_some() {
            return Some(item);
        }
        self.next_seq += 1;
        self.held = Some(Timed { due, seq: self.next_seq, item });
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chance(n: u16) -> Chance {
        Chance::per_mille(n).expect("at most 1000")
    }

    fn only(f: impl FnOnce(&mut MessageFaults)) -> MessageFaults {
        let mut faults = MessageFaults::NONE;
        f(&mut faults);
        faults
    }

    const HOLD: Duration = Duration::from_millis(500);

    fn injector(kind: MessageFaults, max_delay: Duration, seed: u64) -> Injector {
        Injector::new(Faults { acks: kind, max_delay, max_hold: HOLD, ..Faults::NONE }, seed)
    }

    #[test]
    fn chances_are_thousandths_and_bounded() {
        assert_eq!(Chance::per_mille(1000), Some(Chance::ALWAYS));
        assert_eq!(Chance::per_mille(1001), None);
        assert_eq!(chance(25).as_per_mille(), 25);
        let mut rng = StdRng::seed_from_u64(1);
        assert!((0..1000).all(|_| Chance::ALWAYS.roll(&mut rng)));
        assert!((0..1000).all(|_| !Chance::NEVER.roll(&mut rng)));
        let hits = (0..10_000).filter(|_| chance(100).roll(&mut rng)).count();
        assert!((800..1200).contains(&hits), "{hits}");
        assert!(Faults::NONE.is_none());
        assert!(SimConfig::default().faults.is_none());
    }

    #[test]
    fn no_faults_pass_everything_in_order() {
        let mut net = injector(MessageFaults::NONE, Duration::ZERO, 7);
        let mut lane = Lane::default();
        let mut counters = FaultCounters::default();
        let now = Instant::now();
        let kind = net.faults().acks;
        let got: Vec<u32> = (0..100).flat_map(|i| net.pass(&mut lane, i, &kind, true, now, &mut counters)).collect();
        assert_eq!(got, (0..100).collect::<Vec<_>>());
        assert_eq!(counters, FaultCounters::default());
        assert_eq!(lane.next_due(), None);
    }

    #[test]
    fn drops_lose_and_duplicates_repeat() {
        let now = Instant::now();
        let mut counters = FaultCounters::default();
        let mut lane = Lane::default();
        let drop = only(|f| f.drop = Chance::ALWAYS);
        let mut net = injector(drop, Duration::ZERO, 1);
        assert!(net.pass(&mut lane, 1, &drop, true, now, &mut counters).is_empty());
        assert_eq!(counters.dropped, 1);

        let dup = only(|f| f.duplicate = Chance::ALWAYS);
        let mut net = injector(dup, Duration::ZERO, 1);
        assert_eq!(net.pass(&mut lane, 2, &dup, true, now, &mut counters), [2, 2]);
        // Messages the other side promises at most once are never copied.
        assert_eq!(net.pass(&mut lane, 3, &dup, false, now, &mut counters), [3]);
        assert_eq!(counters.duplicated, 1);
    }

    #[test]
    fn delays_release_in_due_order_and_are_bounded() {
        let now = Instant::now();
        let delay = only(|f| f.delay = Chance::ALWAYS);
        let mut net = injector(delay, Duration::from_millis(1000), 3);
        let mut lane = Lane::default();
        let mut counters = FaultCounters::default();
        for i in 0..MAX_DELAYED_PER_LANE + 5 {
            let out = net.pass(&mut lane, i, &delay, true, now, &mut counters);
            // Past the cap, messages go at once rather than pile up.
            assert_eq!(out.len(), usize::from(i >= MAX_DELAYED_PER_LANE), "{i}");
        }
        assert_eq!(usize::try_from(counters.delayed).ok(), Some(MAX_DELAYED_PER_LANE));
        assert_eq!(counters.over_cap, 5);
        assert_eq!(lane.in_flight(), MAX_DELAYED_PER_LANE);
        let first = lane.next_due().expect("something waits");
        assert!(first >= now && first <= now + Duration::from_millis(1000));
        assert!(lane.due(first - Duration::from_millis(1)).is_empty());
        let mut released = lane.due(now + Duration::from_millis(500)).len();
        assert!(released > 0 && released < MAX_DELAYED_PER_LANE, "{released}");
        released += lane.due(now + Duration::from_millis(1000)).len();
        assert_eq!(released, MAX_DELAYED_PER_LANE);
        assert_eq!(lane.next_due(), None);
    }

    #[test]
    fn a_held_message_goes_after_the_next_or_after_max_hold() {
        let now = Instant::now();
        let reorder = only(|f| f.reorder = Chance::ALWAYS);
        let mut net = injector(reorder, Duration::ZERO, 5);
        let none = MessageFaults::NONE;
        let mut lane = Lane::default();
        let mut counters = FaultCounters::default();
        assert!(net.pass(&mut lane, 'a', &reorder, true, now, &mut counters).is_empty());
        // Only one is held: the next overtakes it and it follows.
        assert_eq!(net.pass(&mut lane, 'b', &reorder, true, now, &mut counters), ['b', 'a']);
        assert!(net.pass(&mut lane, 'c', &reorder, true, now, &mut counters).is_empty());
        assert_eq!(net.pass(&mut lane, 'd', &none, true, now, &mut counters), ['d', 'c']);
        assert_eq!(counters.held, 2);
        assert!(net.pass(&mut lane, 'e', &reorder, true, now, &mut counters).is_empty());
        assert_eq!(lane.next_due(), Some(now + HOLD));
        assert!(lane.due(now).is_empty());
        assert_eq!(lane.due(now + HOLD), ['e']);
        assert_eq!(lane.in_flight(), 0);
    }

    #[test]
    fn clearing_loses_what_is_in_flight() {
        let now = Instant::now();
        let kind = only(|f| {
            f.delay = Chance::ALWAYS;
        });
        let mut net = injector(kind, Duration::from_secs(1), 9);
        let mut lane = Lane::default();
        let mut counters = FaultCounters::default();
        for i in 0..3 {
            net.pass(&mut lane, i, &kind, true, now, &mut counters);
        }
        assert_eq!(lane.hold(9, now), None);
        assert_eq!(lane.clear(), 4);
        assert_eq!(lane.next_due(), None);
        assert!(lane.due(now + Duration::from_secs(2)).is_empty());
    }

    #[test]
    fn the_same_seed_makes_the_same_decisions() {
        let kind = MessageFaults::each(chance(200));
        let run = |seed: u64| {
            let now = Instant::now();
            let mut net = Injector::new(
                Faults {
                    acks: kind,
                    max_delay: Duration::from_millis(300),
                    max_hold: Duration::from_millis(100),
                    disconnect: chance(50),
                    ..Faults::NONE
                },
                seed,
            );
            let mut lane = Lane::default();
            let mut counters = FaultCounters::default();
            let mut log = Vec::new();
            for i in 0..500u32 {
                if net.cut() {
                    log.push(u32::MAX);
                }
                log.extend(net.pass(&mut lane, i, &kind, true, now, &mut counters));
            }
            log.extend(lane.due(now + MAX_FAULT_DELAY));
            (log, counters)
        };
        assert_eq!(run(42), run(42));
        assert_ne!(run(42).0, run(43).0);
        let (_, counters) = run(42);
        for (name, n) in [
            ("dropped", counters.dropped),
            ("duplicated", counters.duplicated),
            ("delayed", counters.delayed),
            ("held", counters.held),
        ] {
            assert!(n > 0, "{name}: {counters:?}");
        }
    }
}
