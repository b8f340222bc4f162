//! A shop's event stream: every durable event in sequence order, from a
//! cursor, without gaps; optionally one register's only. The store is the
//! buffer: the stream reads a page at a time up to the durable head, so a
//! slow client costs nothing beyond the stream's bounded channel.

use std::sync::Arc;

use tokio::sync::{mpsc, watch};

use crate::domain::{RegisterId, ShopId};
use crate::store::{EventRecord, Failure};

use super::super::limits::MAX_LIST;
use super::{stopped, Engine, EngineError};

/// Why a watch did not start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchRefusal {
    /// No such register of this shop (another shop's is the same).
    UnknownRegister,
    /// The cursor is past the shop's last event (`head`): those numbers
    /// are not this server's history, and the events that will take them
    /// are not the ones the client saw.
    BeyondHead { head: u64 },
}

/// Why a running watch ended (its last item).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEnd {
    /// The server is shutting down; resume from `cursor`.
    ShuttingDown {
        cursor: u64,
    },
    Failed(Failure),
    /// A gap in the shop's sequence (gap-free by construction; checked).
    Gap {
        shop: ShopId,
        after: u64,
        got: u64,
    },
}

/// A running watch: events, then possibly why it ended.
pub type EventFeed = mpsc::Receiver<Result<EventRecord, WatchEnd>>;

impl Engine {
    /// Starts streaming the shop's events after `after`. The stream holds
    /// one of the shop's watch slots for as long as it runs.
    pub async fn watch_trades(
        self: &Arc<Self>,
        shop: &ShopId,
        after: u64,
        register: Option<RegisterId>,
        shutdown: &watch::Receiver<bool>,
    ) -> Result<EventFeed, EngineError<WatchRefusal>> {
        if let Some(register) = register {
            // Another shop's register is unknown, exactly like none.
            if !self.store.has_register(shop, &register).await? {
                return Err(EngineError::Refused(WatchRefusal::UnknownRegister));
            }
        }
        let slot = self.watch_slots.acquire(shop).map_err(EngineError::Limited)?;
        let mut head = self
            .store
            .event_head(shop)
            .ok_or_else(|| EngineError::Internal(format!("no event head for shop {shop}")))?;
        let known = *head.borrow();
        if after > known {
            return Err(EngineError::Refused(WatchRefusal::BeyondHead { head: known }));
        }
        let (tx, rx) = mpsc::channel(self.limits.stream_buffer.max(1));
        let engine = self.clone();
        let mut shutdown = shutdown.clone();
        let shop = shop.clone();
        let mut cursor = after;
        tokio::spawn(async move {
            // Held for as long as the stream runs.
            let _slot = slot;
            loop {
                let durable_head = *head.borrow_and_update();
                // Send everything up to the durable head, a page at a time.
                while cursor < durable_head {
                    let page = match engine.store.events(&shop, cursor, durable_head, MAX_LIST).await {
                        Ok(p) => p,
                        Err(e) => {
                            let _ = tx.send(Err(WatchEnd::Failed(e))).await;
                            return;
                        }
                    };
                    for event in page {
                        // Gap-free by construction; checked anyway.
                        if Some(event.seq) != cursor.checked_add(1) {
                            let _ =
                                tx.send(Err(WatchEnd::Gap { shop: shop.clone(), after: cursor, got: event.seq })).await;
                            return;
                        }
                        cursor = event.seq;
                        if register.is_some_and(|r| r != event.trade.request.register) {
                            continue;
                        }
                        if tx.send(Ok(event)).await.is_err() {
                            return; // the client left
                        }
                    }
                }
                tokio::select! {
                    changed = head.changed() => if changed.is_err() { return },
                    _ = tx.closed() => return,
                    _ = stopped(&mut shutdown) => {
                        let _ = tx.send(Err(WatchEnd::ShuttingDown { cursor })).await;
                        return;
                    }
                }
            }
        });
        Ok(rx)
    }
}
