//! Admission of TLS handshakes, so that no number of slow or silent peers
//! can deny service to anyone else (issue 12). The accept loop in `tls.rs`
//! never waits for a handshake: it admits every accepted connection into
//! [`PendingTable`] and runs the handshake in a task of its own.
//!
//! **Caps and eviction.** Handshakes in progress are capped per source
//! ([`MAX_PENDING_PER_SOURCE`] in each [`Phase`]; a source is an IPv4
//! address or an IPv6 /64, what one host usually holds) and in total
//! ([`MAX_PENDING_HANDSHAKES`]). A newcomer is never refused and nothing
//! queues: at a cap, the *oldest* handshake in progress of the newcomer's
//! source in the same phase (per-source cap), or of the source holding the
//! most handshakes in progress (total cap; one still awaiting its
//! ClientHello first), is closed at once to make room.
//!
//! Why this keeps real clients in: a real client sends its ClientHello
//! right after connecting and finishes within a few round trips, so it is
//! young, and it is past the ClientHello almost at once (the accept loop
//! parses a ClientHello that arrived with the connection before admitting
//! it); a silent or dripping peer grows old awaiting its ClientHello.
//! Connections awaiting a ClientHello only ever evict each other, so no
//! number of silent or slow peers can close a handshake past its
//! ClientHello, even from the client's own address (a NAT, or loopback in
//! the tests). A handshake is evicted only if [`MAX_PENDING_PER_SOURCE`]
//! newer connections from its own source reach its phase before it
//! finishes (silent ones while it awaits its ClientHello; ones that send a
//! complete ClientHello, each costing the server a key exchange, after),
//! or if its source holds the most handshakes in progress of all sources
//! while the total is full (ties go to the oldest).
//!
//! **Deadlines.** The ClientHello must be complete within
//! [`CLIENT_HELLO_TIMEOUT`] of the accept, the whole handshake within
//! [`TLS_HANDSHAKE_TIMEOUT`]; these bound how long an idle server keeps an
//! attacker's connection.
//!
//! **Reporting.** Every refusal is counted ([`HandshakeStats`], and the
//! metric `syncpay_tls_handshakes_refused_total{reason}`); the log gets one
//! summary line per [`REFUSAL_LOG_INTERVAL`] at most, with one example
//! peer, never a line per connection (per-connection lines are `debug`).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

use crate::metrics;

/// Handshakes in progress at once, from all sources. Each holds a socket
/// and a rustls state of a few KB until it finishes or is closed, so this
/// bounds what unauthenticated peers can hold to ~1024 file descriptors
/// and a few MB; far above the handshakes a burst of real reconnects (every
/// shop and carrier after a restart) has in flight at any moment, since
/// each lasts a few round trips.
pub const MAX_PENDING_HANDSHAKES: usize = 1024;
/// Handshakes in progress from one source (IPv4 address or IPv6 /64). A
/// source at the cap loses its own oldest handshake to each newcomer, so
/// one address cannot push out anyone else's; 64 leaves room for many
/// clients behind one NAT connecting at the same moment.
pub const MAX_PENDING_PER_SOURCE: usize = 64;
/// The ClientHello must be complete this soon after the accept. A real
/// client sends it with its first packet after the TCP handshake; three
/// seconds allow a couple of retransmissions on a lossy path. A silent or
/// dripping peer is closed then, evictions aside.
pub const CLIENT_HELLO_TIMEOUT: Duration = Duration::from_secs(3);
/// The whole handshake (ClientHello to the client's Finished, including the
/// client certificate) must be done this soon after the accept.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// At most one summary log line of refused handshakes per this interval.
pub const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// What a handshake is counted against: an IPv4 address (IPv4-mapped IPv6
/// included) or the /64 prefix of an IPv6 address, since one IPv6 host
/// usually has a whole /64 to choose addresses from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    V4([u8; 4]),
    V6Prefix64([u8; 8]),
}

impl Source {
    pub fn of(ip: IpAddr) -> Source {
        match ip {
            IpAddr::V4(v4) => Source::V4(v4.octets()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Source::V4(v4.octets()),
                None => {
                    let o = v6.octets();
                    Source::V6Prefix64([o[0], o[1], o[2], o[3], o[4], o[5], o[6], o[7]])
                }
            },
        }
    }
}

/// The caps a [`PendingTable`] enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandshakeLimits {
    pub total: usize,
    pub per_source: usize,
}

impl Default for HandshakeLimits {
    fn default() -> Self {
        HandshakeLimits { total: MAX_PENDING_HANDSHAKES, per_source: MAX_PENDING_PER_SOURCE }
    }
}

/// Why a handshake was closed without finishing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Evicted: its source was at the per-source cap and a newer
    /// connection from the same source arrived.
    SourceCap,
    /// Evicted: the table was full and its source held the most.
    TotalCap,
    /// No complete ClientHello within [`CLIENT_HELLO_TIMEOUT`].
    HelloTimeout,
    /// Not finished within [`TLS_HANDSHAKE_TIMEOUT`].
    HandshakeTimeout,
    /// The TLS handshake failed (no or a bad certificate, not TLS, …).
    Failed,
}

impl Refusal {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::SourceCap => "source_cap",
            Refusal::TotalCap => "total_cap",
            Refusal::HelloTimeout => "hello_timeout",
            Refusal::HandshakeTimeout => "handshake_timeout",
            Refusal::Failed => "failed",
        }
    }
}

/// Counters of what happened to accepted connections; read with
/// [`HandshakeStats::counts`].
#[derive(Debug, Default)]
pub struct HandshakeStats {
    admitted: AtomicU64,
    completed: AtomicU64,
    source_cap: AtomicU64,
    total_cap: AtomicU64,
    hello_timeouts: AtomicU64,
    handshake_timeouts: AtomicU64,
    failed: AtomicU64,
    /// The most recent refusal, as an example for the log.
    example: Mutex<Option<(SocketAddr, Refusal, String)>>,
}

/// A snapshot of [`HandshakeStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HandshakeCounts {
    pub admitted: u64,
    pub completed: u64,
    pub evicted_source_cap: u64,
    pub evicted_total_cap: u64,
    pub hello_timeouts: u64,
    pub handshake_timeouts: u64,
    pub failed: u64,
}

impl HandshakeCounts {
    /// Every handshake closed without finishing.
    pub fn refused(&self) -> u64 {
        self.evicted_source_cap
            .saturating_add(self.evicted_total_cap)
            .saturating_add(self.hello_timeouts)
            .saturating_add(self.handshake_timeouts)
            .saturating_add(self.failed)
    }
}

impl HandshakeStats {
    pub fn counts(&self) -> HandshakeCounts {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        HandshakeCounts {
            admitted: get(&self.admitted),
            completed: get(&self.completed),
            evicted_source_cap: get(&self.source_cap),
            evicted_total_cap: get(&self.total_cap),
            hello_timeouts: get(&self.hello_timeouts),
            handshake_timeouts: get(&self.handshake_timeouts),
            failed: get(&self.failed),
        }
    }

    pub fn completed(&self) {
        self.completed.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a refusal (metric included) and keeps it as the log's example.
    pub fn refused(&self, peer: SocketAddr, why: Refusal, detail: impl std::fmt::Display) {
        let counter = match why {
            Refusal::SourceCap => &self.source_cap,
            Refusal::TotalCap => &self.total_cap,
            Refusal::HelloTimeout => &self.hello_timeouts,
            Refusal::HandshakeTimeout => &self.handshake_timeouts,
            Refusal::Failed => &self.failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        metrics::tls_handshake_refused(why.label());
        tracing::debug!(%peer, reason = why.label(), %detail, "TLS handshake refused");
        *self.example.lock().unwrap_or_else(|p| p.into_inner()) = Some((peer, why, detail.to_string()));
    }
}

/// Writes at most one summary line per call, when something was refused
/// since the last one. The accept loop calls it every
/// [`REFUSAL_LOG_INTERVAL`].
#[derive(Debug, Default)]
pub struct RefusalLog {
    last: HandshakeCounts,
}

impl RefusalLog {
    pub fn flush(&mut self, stats: &HandshakeStats) {
        let now = stats.counts();
        let refused = now.refused().saturating_sub(self.last.refused());
        if refused > 0 {
            let d = |a: u64, b: u64| a.saturating_sub(b);
            let example = stats.example.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let (peer, reason, detail) = match &example {
                Some((peer, why, detail)) => (peer.to_string(), why.label(), detail.as_str()),
                None => (String::new(), "", ""),
            };
            tracing::info!(
                refused,
                evicted_source_cap = d(now.evicted_source_cap, self.last.evicted_source_cap),
                evicted_total_cap = d(now.evicted_total_cap, self.last.evicted_total_cap),
                hello_timeouts = d(now.hello_timeouts, self.last.hello_timeouts),
                handshake_timeouts = d(now.handshake_timeouts, self.last.handshake_timeouts),
                failed = d(now.failed, self.last.failed),
                completed = d(now.completed, self.last.completed),
                example_peer = %peer,
                example_reason = reason,
                example_detail = detail,
                interval_s = REFUSAL_LOG_INTERVAL.as_secs(),
                "TLS handshakes refused since the last report"
            );
        }
        self.last = now;
    }
}

/// Where a handshake in progress is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Accepted; the ClientHello is not complete yet.
    AwaitingHello,
    /// The ClientHello is in; the rest of the handshake is running.
    Handshaking,
}

impl Phase {
    fn index(self) -> usize {
        match self {
            Phase::AwaitingHello => 0,
            Phase::Handshaking => 1,
        }
    }
}

struct Entry {
    source: Source,
    peer: SocketAddr,
    phase: Phase,
    /// Dropping it tells the handshake's task to close the connection.
    _evict: oneshot::Sender<()>,
}

/// The handshakes in progress, oldest first.
pub struct PendingTable {
    limits: HandshakeLimits,
    next_id: u64,
    /// By admission order: ids only grow, so the first entry is the oldest.
    entries: BTreeMap<u64, Entry>,
    /// Per source: handshakes awaiting the ClientHello, and past it.
    per_source: HashMap<Source, [usize; 2]>,
}

/// A handshake admitted to the table.
#[derive(Debug)]
pub struct Admitted {
    pub id: u64,
    /// Resolves when the handshake is evicted (or the table cleared).
    pub evicted: oneshot::Receiver<()>,
}

impl PendingTable {
    pub fn new(limits: HandshakeLimits) -> Self {
        // A cap of zero would admit nothing; one is the least that works.
        let limits = HandshakeLimits { total: limits.total.max(1), per_source: limits.per_source.max(1) };
        PendingTable { limits, next_id: 0, entries: BTreeMap::new(), per_source: HashMap::new() }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Handshakes in progress from `source`, in `phase`.
    pub fn of_source(&self, source: Source, phase: Phase) -> usize {
        self.per_source.get(&source).map_or(0, |c| c[phase.index()])
    }

    fn total_of(&self, source: Source) -> usize {
        self.per_source.get(&source).map_or(0, |c| c[0].saturating_add(c[1]))
    }

    /// Admits a new handshake from `peer` in `phase` (a ClientHello that
    /// had already arrived with the connection starts past it), first
    /// evicting the one that must make room (counted in `stats`). Never
    /// refuses the newcomer.
    pub fn admit(&mut self, peer: SocketAddr, phase: Phase, stats: &HandshakeStats) -> Admitted {
        let source = Source::of(peer.ip());
        if self.of_source(source, phase) >= self.limits.per_source {
            if let Some(victim) = self.oldest_of(source, phase) {
                self.evict(victim, Refusal::SourceCap, stats);
            }
        } else if self.entries.len() >= self.limits.total {
            if let Some(victim) = self.oldest_of_heaviest() {
                self.evict(victim, Refusal::TotalCap, stats);
            }
        }
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let (tx, evicted) = oneshot::channel();
        self.entries.insert(id, Entry { source, peer, phase, _evict: tx });
        self.count(source, phase, true);
        stats.admitted.fetch_add(1, Ordering::Relaxed);
        metrics::set_tls_handshakes_pending(self.entries.len());
        Admitted { id, evicted }
    }

    /// The handshake's ClientHello is complete: it moves past it, first
    /// evicting its source's oldest handshake past the ClientHello if the
    /// source is at the cap there. Nothing happens for a handshake already
    /// evicted.
    pub fn hello_done(&mut self, id: u64, stats: &HandshakeStats) {
        let Some((source, phase)) = self.entries.get(&id).map(|e| (e.source, e.phase)) else { return };
        if phase == Phase::Handshaking {
            return;
        }
        if self.of_source(source, Phase::Handshaking) >= self.limits.per_source {
            if let Some(victim) = self.oldest_of(source, Phase::Handshaking) {
                self.evict(victim, Refusal::SourceCap, stats);
            }
        }
        if let Some(entry) = self.entries.get_mut(&id) {
            entry.phase = Phase::Handshaking;
            self.count(source, Phase::AwaitingHello, false);
            self.count(source, Phase::Handshaking, true);
        }
    }

    /// The handshake ended (finished, failed, timed out, evicted): forget
    /// it. Idempotent.
    pub fn finish(&mut self, id: u64) {
        self.remove(id);
        metrics::set_tls_handshakes_pending(self.entries.len());
    }

    /// Closes every handshake in progress (shutdown).
    pub fn clear(&mut self) {
        self.entries.clear();
        self.per_source.clear();
        metrics::set_tls_handshakes_pending(0);
    }

    fn count(&mut self, source: Source, phase: Phase, up: bool) {
        let counts = self.per_source.entry(source).or_insert([0, 0]);
        let n = &mut counts[phase.index()];
        *n = if up { n.saturating_add(1) } else { n.saturating_sub(1) };
        if counts == &[0, 0] {
            self.per_source.remove(&source);
        }
    }

    fn remove(&mut self, id: u64) -> Option<Entry> {
        let entry = self.entries.remove(&id)?;
        self.count(entry.source, entry.phase, false);
        Some(entry)
    }

    fn evict(&mut self, id: u64, why: Refusal, stats: &HandshakeStats) {
        if let Some(entry) = self.remove(id) {
            stats.refused(entry.peer, why, "evicted for a newer connection");
            // Dropping `entry` drops its sender, which closes the connection.
        }
    }

    fn oldest_of(&self, source: Source, phase: Phase) -> Option<u64> {
        self.entries.iter().find(|(_, e)| e.source == source && e.phase == phase).map(|(id, _)| *id)
    }

    /// The oldest handshake among the sources holding the most, one still
    /// awaiting its ClientHello if they have any.
    fn oldest_of_heaviest(&self) -> Option<u64> {
        let most = self.per_source.keys().map(|s| self.total_of(*s)).max()?;
        let heaviest = |e: &Entry| self.total_of(e.source) == most;
        self.entries
            .iter()
            .find(|(_, e)| heaviest(e) && e.phase == Phase::AwaitingHello)
            .or_else(|| self.entries.iter().find(|(_, e)| heaviest(e)))
            .map(|(id, _)| *id)
    }
}

/// A table shared by the accept loop and the handshake tasks.
pub type SharedTable = Arc<Mutex<PendingTable>>;

/// Removes its handshake from the table when the task ends, however it
/// ends (finished, failed, timed out, evicted, or aborted).
pub struct Ticket {
    pub table: SharedTable,
    pub id: u64,
}

impl Ticket {
    /// See [`PendingTable::hello_done`].
    pub fn hello_done(&self, stats: &HandshakeStats) {
        self.table.lock().unwrap_or_else(|p| p.into_inner()).hello_done(self.id, stats);
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.table.lock().unwrap_or_else(|p| p.into_inner()).finish(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Phase::{AwaitingHello, Handshaking};

    fn peer(ip: &str, port: u16) -> SocketAddr {
        SocketAddr::new(ip.parse().expect("ip"), port)
    }

    fn source(ip: &str) -> Source {
        Source::of(ip.parse().expect("ip"))
    }

    fn table(total: usize, per_source: usize) -> PendingTable {
        PendingTable::new(HandshakeLimits { total, per_source })
    }

    fn is_evicted(a: &mut Admitted) -> bool {
        matches!(a.evicted.try_recv(), Err(oneshot::error::TryRecvError::Closed))
    }

    #[test]
    fn a_source_at_its_cap_loses_its_own_oldest_and_the_newcomer_gets_in() {
        let stats = HandshakeStats::default();
        let mut t = table(100, 3);
        let mut other = t.admit(peer("10.0.0.9", 1), AwaitingHello, &stats);
        let mut mine: Vec<Admitted> = (0..3).map(|p| t.admit(peer("10.0.0.1", p), AwaitingHello, &stats)).collect();
        let mut newcomer = t.admit(peer("10.0.0.1", 99), AwaitingHello, &stats);
        assert!(is_evicted(&mut mine[0]), "the oldest of the source goes");
        assert!(!is_evicted(&mut mine[1]) && !is_evicted(&mut mine[2]) && !is_evicted(&mut newcomer));
        assert!(!is_evicted(&mut other), "another source is untouched");
        assert_eq!(t.of_source(source("10.0.0.1"), AwaitingHello), 3);
        assert_eq!(t.len(), 4);
        assert_eq!(stats.counts().evicted_source_cap, 1);
        // A thousand more from the flooding source never touch the other.
        for p in 0..1000 {
            t.admit(peer("10.0.0.1", 1000 + p), AwaitingHello, &stats);
        }
        assert!(!is_evicted(&mut other));
        assert_eq!(t.len(), 4);
    }

    #[test]
    fn silent_connections_never_evict_a_handshake_past_its_client_hello() {
        let stats = HandshakeStats::default();
        let mut t = table(100, 3);
        // A real client: its ClientHello came with the connection.
        let mut early = t.admit(peer("10.0.0.1", 1), Handshaking, &stats);
        // Another whose ClientHello arrives after the accept.
        let mut late = t.admit(peer("10.0.0.1", 2), AwaitingHello, &stats);
        t.hello_done(late.id, &stats);
        // Its source floods silent connections.
        let mut silent: Vec<Admitted> =
            (0..1000).map(|p| t.admit(peer("10.0.0.1", 100 + p), AwaitingHello, &stats)).collect();
        assert!(!is_evicted(&mut early) && !is_evicted(&mut late));
        assert!(silent.iter_mut().take(997).all(is_evicted) && !silent.iter_mut().skip(997).any(is_evicted));
        assert_eq!(t.of_source(source("10.0.0.1"), Handshaking), 2);
        // Past the ClientHello the cap holds too: the oldest there goes.
        let mut third = t.admit(peer("10.0.0.1", 3), Handshaking, &stats);
        let mut fourth = t.admit(peer("10.0.0.1", 4), AwaitingHello, &stats);
        t.hello_done(fourth.id, &stats);
        assert!(is_evicted(&mut early) && !is_evicted(&mut late) && !is_evicted(&mut third));
        assert!(!is_evicted(&mut fourth));
        t.hello_done(fourth.id, &stats);
        assert_eq!(t.of_source(source("10.0.0.1"), Handshaking), 3, "a second hello_done changes nothing");
        // An evicted handshake's hello changes nothing either.
        t.hello_done(silent[0].id, &stats);
        assert_eq!(t.of_source(source("10.0.0.1"), AwaitingHello), 2);
        assert_eq!(t.of_source(source("10.0.0.1"), Handshaking), 3);
    }

    #[test]
    fn a_full_table_evicts_from_the_source_holding_the_most() {
        let stats = HandshakeStats::default();
        let mut t = table(6, 4);
        let mut light = t.admit(peer("192.0.2.1", 1), AwaitingHello, &stats);
        let mut heavy: Vec<Admitted> = (0..4).map(|p| t.admit(peer("192.0.2.2", p), Handshaking, &stats)).collect();
        let mut heavy_silent = t.admit(peer("192.0.2.2", 9), AwaitingHello, &stats);
        assert_eq!(t.len(), 6);
        // Full: a newcomer from a third source evicts from the heavy source,
        // one still awaiting its ClientHello first, then its oldest.
        let mut third = t.admit(peer("192.0.2.4", 1), AwaitingHello, &stats);
        assert!(is_evicted(&mut heavy_silent) && !heavy.iter_mut().any(is_evicted));
        let mut fourth = t.admit(peer("192.0.2.5", 1), AwaitingHello, &stats);
        assert!(is_evicted(&mut heavy[0]));
        assert!(!is_evicted(&mut light) && !is_evicted(&mut third) && !is_evicted(&mut fourth));
        assert_eq!(stats.counts().evicted_total_cap, 2);
        assert_eq!(t.len(), 6);
        // Ties go to the oldest: with every source at one, the first admitted goes.
        let mut t = table(3, 4);
        let mut first = t.admit(peer("192.0.2.1", 1), AwaitingHello, &stats);
        let mut second = t.admit(peer("192.0.2.2", 1), AwaitingHello, &stats);
        t.admit(peer("192.0.2.3", 1), AwaitingHello, &stats);
        t.admit(peer("192.0.2.4", 1), AwaitingHello, &stats);
        assert!(is_evicted(&mut first) && !is_evicted(&mut second));
    }

    #[test]
    fn finishing_frees_the_slot_and_is_idempotent() {
        let stats = HandshakeStats::default();
        let mut t = table(2, 2);
        let a = t.admit(peer("10.0.0.1", 1), AwaitingHello, &stats);
        let mut b = t.admit(peer("10.0.0.1", 2), AwaitingHello, &stats);
        t.finish(a.id);
        t.finish(a.id);
        assert_eq!(t.len(), 1);
        assert_eq!(t.of_source(source("10.0.0.1"), AwaitingHello), 1);
        let mut c = t.admit(peer("10.0.0.1", 3), AwaitingHello, &stats);
        assert!(!is_evicted(&mut b) && !is_evicted(&mut c), "a free slot needs no eviction");
        t.clear();
        assert!(t.is_empty() && is_evicted(&mut b) && is_evicted(&mut c));
        assert_eq!(stats.counts().refused(), 0, "clearing at shutdown is no refusal");
    }

    #[test]
    fn sources_are_ipv4_addresses_and_ipv6_slash_64s() {
        assert_eq!(source("2001:db8:1:2::1"), source("2001:db8:1:2:ffff:ffff:ffff:ffff"));
        assert_ne!(source("2001:db8:1:2::1"), source("2001:db8:1:3::1"));
        assert_eq!(source("::ffff:192.0.2.1"), source("192.0.2.1"));
        assert_ne!(source("192.0.2.1"), source("192.0.2.2"));
    }

    #[test]
    fn the_summary_reports_what_changed_since_the_last_one() {
        let stats = HandshakeStats::default();
        let mut log = RefusalLog::default();
        stats.refused(peer("10.0.0.1", 1), Refusal::HelloTimeout, "silent");
        stats.refused(peer("10.0.0.1", 2), Refusal::Failed, "bad certificate");
        log.flush(&stats);
        assert_eq!(log.last.refused(), 2);
        log.flush(&stats);
        assert_eq!(log.last, stats.counts());
    }
}
