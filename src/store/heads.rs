//! Per-shop durable event heads: the highest sequence number that is on
//! stable storage. Streams read up to the head and wait for it to move. A
//! backend sets a head only once the events up to it are durable.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::watch;

use crate::domain::ShopId;

#[derive(Default)]
pub struct EventHeads {
    heads: Mutex<HashMap<ShopId, watch::Sender<u64>>>,
}

impl EventHeads {
    /// Moves the shop's head forward to `head` (never back); a new shop
    /// starts there.
    pub fn set(&self, shop: &ShopId, head: u64) {
        let mut map = self.heads.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(shop) {
            Some(tx) => {
                tx.send_if_modified(|v| {
                    let moved = head > *v;
                    if moved {
                        *v = head;
                    }
                    moved
                });
            }
            None => {
                map.insert(shop.clone(), watch::Sender::new(head));
            }
        }
    }

    /// A receiver of the shop's durable head; `None` for an unknown shop.
    pub fn subscribe(&self, shop: &ShopId) -> Option<watch::Receiver<u64>> {
        let map = self.heads.lock().unwrap_or_else(|p| p.into_inner());
        map.get(shop).map(|tx| tx.subscribe())
    }
}
