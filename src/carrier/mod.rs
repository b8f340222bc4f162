//! The carrier-gateway adapter: how trade orchestration reaches handsets.
//! [`CarrierGateway`] is what the orchestration talks to; [`relay`] is the
//! implementation behind it for carriers connected over the `Relay` stream.

pub mod relay;

use crate::domain::CarrierId;
use crate::store::Delivery;

/// What became of a delivery handed to the gateway. In every case the
/// delivery stays in the durable outbox until the carrier acknowledges it,
/// so `NotConnected` and `Dropped` lose nothing: it is sent again when the
/// carrier (re)connects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushResult {
    /// Queued on the carrier's live link.
    Queued,
    /// The carrier has no live link right now.
    NotConnected,
    /// The link's queue was full; the link was closed so the carrier
    /// reconnects and receives its outbox again.
    Dropped,
}

/// The trade orchestration's view of the carriers.
pub trait CarrierGateway: Send + Sync + 'static {
    /// Hands a durable outbox delivery to its carrier. Never blocks.
    fn push(&self, delivery: &Delivery) -> PushResult;

    /// Whether the carrier currently has a live link.
    fn is_connected(&self, carrier: &CarrierId) -> bool;
}
