//! The engine: every use case of the server, between the gRPC edge and
//! the store. It is the only caller of the store; it reads the clock
//! (`now`) and passes it in; once a commit is durable it pushes the outbox
//! deliveries to the carrier gateway and wakes waiters on final states. It
//! knows nothing of tonic, prost or the wire: its refusals are typed and
//! the edge (`sync_server::refusal`) says them.
//!
//! One file per area: `trades.rs` (create, get, await, cancel, refund),
//! `watch.rs` (a shop's event stream), `uplink.rs` (what a carrier's relay
//! sends: acknowledgements, answers, and the outbox replay), `parties.rs`
//! (shops, carriers, subscribers, handsets, registers, credentials),
//! `ledger.rs`, `network.rs` (prefixes, leases, acceptance, statements,
//! payouts), `receipts.rs` (receipt-signing keys and disputes),
//! `sweeper.rs` (expiry and housekeeping) and `waiters.rs`.

mod backup;
mod ledger;
mod network;
mod operator;
mod parties;
mod receipts;
mod sweeper;
mod trades;
mod uplink;
mod waiters;
mod watch;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::{broadcast, watch as watch_channel, Notify};

use crate::carrier::{CarrierGateway, PushResult};
use crate::domain::approval::ServerSecret;
use crate::domain::{ShopId, UnixMs};
use crate::store::{Delivery, Failure, Remote, RemoteChange, Store, StoreError, TradeRecord};

use super::limits::Limits;
use super::rate_limit::{RateLimits, StreamSlots, WATCH_STREAMS};
use super::receipt_keys::ReceiptKeys;

pub use operator::{payout_amount, NewRemittanceRequest, MAX_HISTORY_ITEMS, REMITTANCE_GRACE_MS};
pub use receipts::{Dispute, DisputeRefusal, RotateRefusal};
pub use sweeper::{SWEEP_BATCH, SWEEP_MAX_SLEEP, SWEEP_RETRY};
pub use trades::{AwaitRefusal, ShopTrade, UnknownTrade};
pub use uplink::CheckedAnswer;
pub use waiters::FinalWaiters;
pub use watch::{WatchEnd, WatchRefusal};

/// The wall clock, read only here and passed into the store and domain.
pub fn now() -> UnixMs {
    let ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
    UnixMs(u64::try_from(ms).unwrap_or(u64::MAX))
}

/// Resolves once the shutdown flag turns true (or its sender is gone).
pub async fn stopped(shutdown: &mut watch_channel::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Why a use case did not do what was asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineError<R> {
    /// The use case's own refusal: the store's, or the engine's checks
    /// before it. Nothing was written.
    Refused(R),
    /// A limit of the server (a rate, stream slots): the message names it
    /// and, for a rate, when to retry; never the key.
    Limited(String),
    /// The store failed: not the caller's fault.
    Failed(Failure),
    /// The server itself failed (no entropy, say).
    Internal(String),
}

impl<R> EngineError<R> {
    /// The same error for a use case with another refusal type.
    pub fn map<S>(self, refusal: impl FnOnce(R) -> S) -> EngineError<S> {
        match self {
            EngineError::Refused(r) => EngineError::Refused(refusal(r)),
            EngineError::Limited(m) => EngineError::Limited(m),
            EngineError::Failed(f) => EngineError::Failed(f),
            EngineError::Internal(m) => EngineError::Internal(m),
        }
    }
}

impl<R> From<StoreError<R>> for EngineError<R> {
    fn from(e: StoreError<R>) -> Self {
        match e {
            StoreError::Refused(r) => EngineError::Refused(r),
            StoreError::Failed(f) => EngineError::Failed(f),
        }
    }
}

impl<R> From<Failure> for EngineError<R> {
    fn from(f: Failure) -> Self {
        EngineError::Failed(f)
    }
}

pub struct Engine {
    store: Store,
    gateway: Arc<dyn CarrierGateway>,
    secret: ServerSecret,
    /// Countersign settlement receipts; published to shops.
    receipts: ReceiptKeys,
    limits: Limits,
    finals: FinalWaiters,
    rates: RateLimits,
    watch_slots: Arc<StreamSlots<ShopId>>,
    /// The deadline (ms) the sweeper sleeps until; `u64::MAX` while it is
    /// looking or has nothing to wait for, so any new deadline wakes it.
    sweep_target: AtomicU64,
    sweep_wake: Notify,
    /// Set while an online backup is taken (one at a time).
    backing_up: std::sync::atomic::AtomicBool,
}

/// The next change another node announced, from a subscription to
/// `Remote::changes`; `Resync` when announcements were missed (this
/// subscriber fell behind). Never resolves without a subscription (or
/// after it closed): then only polling reads other nodes' commits.
pub async fn remote_change(changes: &mut Option<broadcast::Receiver<RemoteChange>>) -> RemoteChange {
    let Some(rx) = changes else { return std::future::pending().await };
    match rx.recv().await {
        Ok(change) => change,
        Err(broadcast::error::RecvError::Lagged(_)) => RemoteChange::Resync,
        Err(broadcast::error::RecvError::Closed) => {
            *changes = None;
            std::future::pending().await
        }
    }
}

/// A subscription to other nodes' announcements, if the store has them.
pub fn subscribe(remote: Option<&Remote>) -> Option<broadcast::Receiver<RemoteChange>> {
    remote.and_then(|r| r.changes.as_ref()).map(broadcast::Sender::subscribe)
}

impl Engine {
    pub fn new(
        store: Store,
        gateway: Arc<dyn CarrierGateway>,
        secret: ServerSecret,
        receipts: ReceiptKeys,
        limits: Limits,
    ) -> Self {
        let rates = RateLimits::new(&limits);
        let watch_slots = StreamSlots::new(WATCH_STREAMS, limits.max_watch_streams_per_shop);
        Engine {
            store,
            gateway,
            secret,
            receipts,
            limits,
            finals: FinalWaiters::default(),
            rates,
            watch_slots,
            sweep_target: AtomicU64::new(u64::MAX),
            sweep_wake: Notify::new(),
            backing_up: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The limits every request is validated against.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The server secret behind binding codes and payer pseudonyms (the
    /// edge shows a shop its payer only as a pseudonym).
    pub fn secret(&self) -> &ServerSecret {
        &self.secret
    }

    /// Turns true once the store is closed (every handle gone).
    pub fn store_closed(&self) -> watch_channel::Receiver<bool> {
        self.store.closed()
    }

    /// True once the store stopped accepting writes (a sync failed).
    pub fn store_stopped(&self) -> bool {
        self.store.is_stopped()
    }

    /// Resolves once the store stops accepting writes.
    pub async fn wait_store_stopped(&self) {
        self.store.wait_stopped().await
    }

    /// How many trades are open (for the gauge at start).
    pub async fn open_trade_count(&self) -> Result<usize, Failure> {
        self.store.open_trade_count().await
    }

    /// Sends durable deliveries to their carriers. Whatever is not taken
    /// now stays in the outbox and goes out when the carrier connects.
    fn dispatch(&self, deliveries: &[Delivery]) {
        for d in deliveries {
            match self.gateway.push(d) {
                PushResult::Queued => {}
                PushResult::NotConnected => {
                    tracing::debug!(carrier = %d.carrier, delivery = d.delivery_id, "carrier offline; delivery stays queued")
                }
                PushResult::Dropped => {
                    tracing::warn!(carrier = %d.carrier, delivery = d.delivery_id, "relay queue full; carrier will catch up on reconnect")
                }
            }
        }
    }

    /// What follows a durable commit: waiters on a final state woken, the
    /// deliveries pushed.
    fn settled_effects(&self, trade: Option<&TradeRecord>, deliveries: &[Delivery]) {
        if let Some(t) = trade {
            if t.state.is_final() {
                self.finals.fire(t.id);
            } else {
                self.deadline_added(t.expires_at);
            }
        }
        self.dispatch(deliveries);
    }
}
