//! What the sled backend's writer keeps in memory instead of rewriting it
//! in every commit, derived from the store when it opens (issue 14): each
//! shop's next event sequence number. Until issue 14 the shop record held
//! it and every event rewrote that record (one more key and one more
//! record encoding per event, three per trade); now the events tree is the
//! only durable record of it: a shop's next number is one above its
//! highest event key (events are never removed), found with one reverse
//! seek per shop at open and on the first event of a shop the map does not
//! know. The map changes only after a transaction commits, with exactly
//! what it committed, so a transaction that re-runs or aborts leaves it as
//! it was; within a transaction, events emitted earlier in it come first
//! (`Cx::next_event`).

use std::cell::RefCell;
use std::collections::HashMap;

use crate::domain::ShopId;
use crate::store::Failure;

use super::{io, keys};

/// State derived from the store at open and owned by the writer thread.
pub(crate) struct Hot {
    /// The events tree, to derive a shop's number the map lacks.
    events: sled::Tree,
    /// Per shop, the next event sequence number as committed.
    next_event: RefCell<HashMap<ShopId, u64>>,
}

impl Hot {
    pub(crate) fn new(events: sled::Tree) -> Hot {
        Hot { events, next_event: RefCell::new(HashMap::new()) }
    }

    /// Records a shop's committed next number (at open).
    pub(crate) fn set_next_event(&self, shop: ShopId, next: u64) {
        self.next_event.borrow_mut().insert(shop, next);
    }

    /// The shop's next event number as committed: from the map, or derived
    /// from the events tree (which holds exactly what is committed: only
    /// the writer writes, and this runs on it).
    pub(crate) fn next_event(&self, shop: &ShopId) -> Result<u64, Failure> {
        if let Some(next) = self.next_event.borrow().get(shop) {
            return Ok(*next);
        }
        let Some(next) = last_event_seq(&self.events, shop)?.checked_add(1) else {
            return Err(Failure::Corrupt("event sequence overflow".into()));
        };
        self.next_event.borrow_mut().insert(shop.clone(), next);
        Ok(next)
    }

    /// Takes in the event heads a committed transaction moved.
    pub(crate) fn committed(&self, heads: &[(ShopId, u64)]) {
        let mut map = self.next_event.borrow_mut();
        for (shop, seq) in heads {
            let next = seq.saturating_add(1);
            let entry = map.entry(shop.clone()).or_insert(next);
            *entry = (*entry).max(next);
        }
    }
}

/// The highest event sequence number of `shop` in the events tree, 0 if it
/// has none.
pub(crate) fn last_event_seq(events: &sled::Tree, shop: &ShopId) -> Result<u64, Failure> {
    let prefix = keys::owned(shop.as_str(), &[]);
    match events.scan_prefix(&prefix).next_back() {
        None => Ok(0),
        Some(item) => {
            let (k, _) = item.map_err(io)?;
            let seq: [u8; 8] = k
                .get(prefix.len()..)
                .and_then(|s| s.try_into().ok())
                .ok_or_else(|| Failure::Corrupt(format!("event key of shop {shop} is not 8 bytes of sequence")))?;
            Ok(u64::from_be_bytes(seq))
        }
    }
}
