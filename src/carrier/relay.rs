//! The relay-stream gateway: one bounded outgoing queue per connected
//! carrier, fed by the orchestration (live pushes) and by the outbox replay
//! that runs when a carrier connects.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use tokio::sync::mpsc;
use tonic::Status;

use super::{CarrierGateway, PushResult};
use crate::domain::CarrierId;
use crate::proto;
use crate::store::{Delivery, DeliveryBody};
use crate::sync_server::metrics;

/// Messages waiting for one carrier's stream. A carrier that falls this far
/// behind is disconnected and catches up from the outbox on reconnect.
pub const RELAY_QUEUE_DEPTH: usize = 1024;

pub type RelaySender = mpsc::Sender<Result<proto::RelayDown, Status>>;

struct Link {
    id: u64,
    tx: RelaySender,
}

/// The live relay links, at most one per carrier.
#[derive(Default)]
pub struct RelayHub {
    links: Mutex<HashMap<CarrierId, Link>>,
    next_link: AtomicU64,
}

impl RelayHub {
    /// Registers a carrier's new stream, replacing (and so ending) any
    /// earlier one. Returns the link id for `detach`.
    pub fn attach(&self, carrier: &CarrierId, tx: RelaySender) -> u64 {
        let id = self.next_link.fetch_add(1, Ordering::Relaxed);
        let old = self.lock().insert(carrier.clone(), Link { id, tx });
        if let Some(old) = old {
            // The old stream's receiver ends when its sender is dropped; tell
            // the carrier why first.
            let _ = old.tx.try_send(Err(Status::aborted("replaced by a newer relay stream of this carrier")));
        }
        id
    }

    /// Removes the link if it is still the current one.
    pub fn detach(&self, carrier: &CarrierId, link: u64) {
        let mut links = self.lock();
        if links.get(carrier).is_some_and(|l| l.id == link) {
            links.remove(carrier);
        }
    }

    /// Sends a message that is not in the outbox (an answer result). Lost
    /// if the carrier is not connected: the handset may ask again.
    pub fn send_direct(&self, carrier: &CarrierId, message: proto::RelayDown) -> PushResult {
        self.try_send(carrier, message)
    }

    fn try_send(&self, carrier: &CarrierId, message: proto::RelayDown) -> PushResult {
        let mut links = self.lock();
        let Some(link) = links.get(carrier) else {
            return PushResult::NotConnected;
        };
        match link.tx.try_send(Ok(message)) {
            Ok(()) => {
                metrics::relay_queue_depth(carrier.as_str(), RELAY_QUEUE_DEPTH.saturating_sub(link.tx.capacity()));
                PushResult::Queued
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                links.remove(carrier);
                PushResult::NotConnected
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(carrier = %carrier, depth = RELAY_QUEUE_DEPTH, "relay queue full; disconnecting");
                metrics::relay_queue_full(carrier.as_str());
                links.remove(carrier);
                PushResult::Dropped
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<CarrierId, Link>> {
        self.links.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl CarrierGateway for RelayHub {
    fn push(&self, delivery: &Delivery) -> PushResult {
        self.try_send(&delivery.carrier, to_relay_down(delivery))
    }

    fn is_connected(&self, carrier: &CarrierId) -> bool {
        self.lock().contains_key(carrier)
    }
}

/// The wire form of an outbox delivery.
pub fn to_relay_down(delivery: &Delivery) -> proto::RelayDown {
    let body = match &delivery.body {
        DeliveryBody::Offer(o) => proto::relay_down::Body::Offer(proto::Offer {
            trade_id: o.trade.to_string(),
            subscriber_number: o.payer.as_str().to_owned(),
            shop_id: o.shop.as_str().to_owned(),
            shop_name: o.shop_name.clone(),
            register_id: o.register.to_string(),
            register_label: o.register_label.clone(),
            amount_minor: o.amount.minor(),
            currency: o.currency.code().to_owned(),
            description: o.description.clone(),
            expires_at_ms: i64::try_from(o.expires_at.0).unwrap_or(i64::MAX),
            binding_code: o.binding_code.clone(),
        }),
        DeliveryBody::Withdraw { trade, payer, state } => proto::relay_down::Body::Withdraw(proto::Withdraw {
            trade_id: trade.to_string(),
            subscriber_number: payer.as_str().to_owned(),
            state: crate::sync_server::convert::state_to_proto(*state) as i32,
        }),
    };
    proto::RelayDown { delivery_id: delivery.delivery_id, body: Some(body) }
}
