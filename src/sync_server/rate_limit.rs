//! Rate limits keyed by caller or target, with `governor` (GCRA): trades
//! created per shop, and offers pushed per subscriber (against push spam and
//! approval fatigue). A refusal is `RESOURCE_EXHAUSTED` naming the limit and
//! when to retry, and never names the key (a subscriber number stays out of
//! a shop's view). Idle keys are evicted, so the state stays bounded.
//!
//! The shop's limit is checked on every CreateTrade request as it arrives
//! (replays included: each costs the server the same work). The
//! subscriber's is spent only by a trade that really sends an offer: the
//! engine hands it to the store as an [`OfferGate`], which the store's
//! writer asks at the point where the trade is known to be created.

use std::collections::HashMap;
use std::hash::Hash;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

use crate::domain::{ShopId, SubscriberNumber, TradeId};
use crate::store::OfferGate;

use super::limits::Limits;

/// Tracked keys beyond which a check first evicts idle ones. The keys a
/// shop can create are themselves rate limited, so this is a backstop.
pub const MAX_TRACKED_KEYS: usize = 100_000;
/// How often the sweeper evicts idle keys.
pub const EVICT_INTERVAL: Duration = Duration::from_secs(30);

/// `count` events per `per`, all of which may come at once (the burst).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: u32,
    pub per: Duration,
}

impl Rate {
    pub const fn new(count: u32, per: Duration) -> Rate {
        Rate { count, per }
    }

    fn quota(self) -> Option<Quota> {
        let burst = NonZeroU32::new(self.count)?;
        let period = self.per.checked_div(self.count)?;
        Quota::with_period(period).map(|q| q.allow_burst(burst))
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let count = self.count;
        if self.per.subsec_nanos() != 0 {
            return write!(f, "{count} per {} ms", self.per.as_millis());
        }
        match self.per.as_secs() {
            1 => write!(f, "{count} per second"),
            60 => write!(f, "{count} per minute"),
            3600 => write!(f, "{count} per hour"),
            s => write!(f, "{count} per {s} s"),
        }
    }
}

/// One limit over many keys.
pub struct KeyedLimit<K: Hash + Eq + Clone> {
    /// What the refusal calls this limit.
    name: &'static str,
    rate: Rate,
    /// `None` when the rate is zero: no limit.
    limiter: Option<DefaultKeyedRateLimiter<K>>,
    clock: DefaultClock,
}

impl<K: Hash + Eq + Clone> KeyedLimit<K> {
    pub fn new(name: &'static str, rate: Rate) -> Self {
        KeyedLimit {
            name,
            rate,
            limiter: rate.quota().map(DefaultKeyedRateLimiter::dashmap),
            clock: DefaultClock::default(),
        }
    }

    /// Counts one event for `key`, or gives the refusal's message (which
    /// names the limit and when to retry, never the key).
    pub fn check(&self, key: &K) -> Result<(), String> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        if limiter.len() >= MAX_TRACKED_KEYS {
            limiter.retain_recent();
        }
        limiter.check_key(key).map_err(|not_until| {
            crate::metrics::rate_limited(self.name);
            let wait = not_until.wait_time_from(self.clock.now());
            format!("{}: at most {}; retry in {} ms", self.name, self.rate, wait.as_millis().max(1))
        })
    }

    pub fn is_unlimited(&self) -> bool {
        self.limiter.is_none()
    }

    /// Forgets keys whose state equals a fresh one.
    pub fn evict_idle(&self) {
        if let Some(limiter) = &self.limiter {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }

    pub fn tracked_keys(&self) -> usize {
        self.limiter.as_ref().map_or(0, |l| l.len())
    }
}

/// The server's rate limits.
pub struct RateLimits {
    pub shop_trades: KeyedLimit<ShopId>,
    /// Shared with the offer gates the store's writer asks.
    pub subscriber_offers: Arc<KeyedLimit<SubscriberNumber>>,
}

/// The names refusals use, so tests and operators can tell the limits apart.
pub const SHOP_TRADES: &str = "trades per shop";
pub const SUBSCRIBER_OFFERS: &str = "offers per subscriber";

impl RateLimits {
    pub fn new(limits: &Limits) -> Self {
        RateLimits {
            shop_trades: KeyedLimit::new(SHOP_TRADES, limits.shop_trades),
            subscriber_offers: Arc::new(KeyedLimit::new(SUBSCRIBER_OFFERS, limits.subscriber_offers)),
        }
    }

    /// The gate for one trade of `shop`: the store asks it once, when the
    /// trade is about to send its offer, and it spends one of the
    /// subscriber's offers or refuses (logged, with the number masked).
    /// `None` when offers are not limited.
    pub fn offer_gate(&self, shop: &ShopId, trade: TradeId) -> Option<OfferGate> {
        if self.subscriber_offers.is_unlimited() {
            return None;
        }
        let limit = Arc::clone(&self.subscriber_offers);
        let shop = shop.clone();
        Some(OfferGate::new(move |subscriber| {
            limit.check(subscriber).inspect_err(|refusal| {
                // Runs on the store's writer thread, so it names the trade
                // and shop itself. `subscriber` prints masked.
                tracing::warn!(
                    shop = %shop,
                    trade_id = %trade,
                    subscriber = ?subscriber,
                    limit = SUBSCRIBER_OFFERS,
                    refusal = %refusal,
                    "trade refused: the subscriber has had the most offers allowed"
                );
            })
        }))
    }

    pub fn evict_idle(&self) {
        self.shop_trades.evict_idle();
        self.subscriber_offers.evict_idle();
    }
}

/// Counts open streams per key and refuses one beyond the maximum.
pub struct StreamSlots<K: Hash + Eq + Clone> {
    name: &'static str,
    max: usize,
    open: Mutex<HashMap<K, usize>>,
}

impl<K: Hash + Eq + Clone> StreamSlots<K> {
    pub fn new(name: &'static str, max: usize) -> Arc<Self> {
        Arc::new(StreamSlots { name, max, open: Mutex::new(HashMap::new()) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, usize>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A slot for `key`, given back when the guard drops; refused with a
    /// message naming the limit.
    pub fn acquire(self: &Arc<Self>, key: &K) -> Result<SlotGuard<K>, String> {
        let mut open = self.lock();
        let n = open.entry(key.clone()).or_insert(0);
        if *n >= self.max {
            return Err(format!("{}: at most {} open at once", self.name, self.max));
        }
        *n += 1;
        Ok(SlotGuard { slots: Arc::clone(self), key: key.clone() })
    }

    pub fn open(&self, key: &K) -> usize {
        self.lock().get(key).copied().unwrap_or(0)
    }
}

pub struct SlotGuard<K: Hash + Eq + Clone> {
    slots: Arc<StreamSlots<K>>,
    key: K,
}

impl<K: Hash + Eq + Clone> Drop for SlotGuard<K> {
    fn drop(&mut self) {
        let mut open = self.slots.lock();
        if let Some(n) = open.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

pub const WATCH_STREAMS: &str = "watch streams per shop";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_allowed_then_refused_naming_the_limit_not_the_key() {
        let limit = KeyedLimit::new("offers per subscriber", Rate::new(2, Duration::from_secs(60)));
        let a = SubscriberNumber::parse("+818012345678").expect("valid");
        let b = SubscriberNumber::parse("+818012345679").expect("valid");
        assert!(limit.check(&a).is_ok());
        assert!(limit.check(&a).is_ok());
        let message = limit.check(&a).expect_err("third in a minute");
        assert!(message.starts_with("offers per subscriber: at most 2 per minute; retry in "), "{message}");
        assert!(!message.contains("8012345678"), "{message}");
        // Keys are independent.
        assert!(limit.check(&b).is_ok());
        assert_eq!(limit.tracked_keys(), 2);
    }

    #[test]
    fn a_zero_rate_means_no_limit() {
        let limit = KeyedLimit::new("x", Rate::new(0, Duration::from_secs(1)));
        let key = ShopId::parse("acme").expect("valid");
        for _ in 0..100 {
            assert!(limit.check(&key).is_ok());
        }
        assert_eq!(limit.tracked_keys(), 0);
    }

    #[test]
    fn stream_slots_are_bounded_per_key_and_given_back() {
        let slots = StreamSlots::new(WATCH_STREAMS, 2);
        let (a, b) = (ShopId::parse("a").expect("valid"), ShopId::parse("b").expect("valid"));
        let first = slots.acquire(&a).expect("1");
        let _second = slots.acquire(&a).expect("2");
        let Err(m) = slots.acquire(&a) else { panic!("third must be refused") };
        assert_eq!(m, "watch streams per shop: at most 2 open at once");
        assert!(slots.acquire(&b).is_ok());
        drop(first);
        assert!(slots.acquire(&a).is_ok());
    }

    #[test]
    fn idle_keys_are_evicted() {
        let limit = KeyedLimit::new("x", Rate::new(1000, Duration::from_millis(1)));
        for i in 0..50u32 {
            limit.check(&ShopId::parse(&format!("s{i}")).expect("valid")).expect("allowed");
        }
        std::thread::sleep(Duration::from_millis(5));
        limit.evict_idle();
        assert_eq!(limit.tracked_keys(), 0);
    }
}
