//! Waiters on a trade's final state: `AwaitTrade` calls sleep here and the
//! engine wakes them once the commit that made the trade final is durable.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::domain::TradeId;

/// Wakes `AwaitTrade` calls when their trade reaches a final state.
#[derive(Default)]
pub struct FinalWaiters {
    map: Mutex<HashMap<TradeId, Arc<Notify>>>,
}

impl FinalWaiters {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TradeId, Arc<Notify>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers interest in a trade's final state. Enable the guard's
    /// `notify.notified()` before reading the trade so no wake-up is missed;
    /// dropping the guard removes the entry when nobody else waits.
    pub fn wait(&self, id: TradeId) -> WaitGuard<'_> {
        let notify = self.lock().entry(id).or_default().clone();
        WaitGuard { waiters: self, id, notify }
    }

    pub(super) fn fire(&self, id: TradeId) {
        if let Some(n) = self.lock().remove(&id) {
            n.notify_waiters();
        }
    }
}

pub struct WaitGuard<'a> {
    waiters: &'a FinalWaiters,
    id: TradeId,
    pub notify: Arc<Notify>,
}

impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        let mut map = self.waiters.lock();
        // The map's handle and ours: nobody else waits.
        if map.get(&self.id).is_some_and(|n| Arc::ptr_eq(n, &self.notify) && Arc::strong_count(n) == 2) {
            map.remove(&self.id);
        }
    }
}
