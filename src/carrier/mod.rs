//! The carrier-gateway adapter: how trade orchestration reaches handsets,
//! and asks a carrier in ask mode who held an address. [`CarrierGateway`]
//! is what the orchestration talks to; [`relay`] is the implementation
//! behind it for carriers connected over the `Relay` stream.

pub mod relay;

use tokio::sync::oneshot;

use crate::domain::{CarrierId, IpKey, ShopId, SubscriberNumber, UnixMs};
use crate::store::Delivery;

/// What a resolve request asks a carrier (ask mode): exactly what it needs
/// to look up its own lease records and judge the shop, nothing more.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolveQuery {
    pub ip: IpKey,
    pub port: Option<u16>,
    pub observed_at: UnixMs,
    pub shop: ShopId,
}

/// A carrier's answer to a resolve request, as the edge validated it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResolveReply {
    /// The carrier names this number (not yet checked to be its own).
    Found(SubscriberNumber),
    /// Nobody the carrier knows held the address then.
    Miss,
    /// The carrier refuses the shop by its own rules.
    Refused,
    /// The answer did not make sense (why, for the log).
    Malformed(String),
    /// The stream that carried the request ended before an answer.
    Disconnected,
}

/// Why a resolve request was not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResolveUnsent {
    /// The carrier has no live relay stream here.
    NotConnected,
    /// As many requests wait for answers as the server allows.
    TooMany,
}

/// A resolve request on its way: its answer arrives on `reply`. Dropping
/// it (an answer taken, a timeout, the shop's call cancelled) forgets the
/// request, so a late answer finds nothing and is ignored.
pub struct PendingResolve {
    pub request_id: u64,
    pub reply: oneshot::Receiver<ResolveReply>,
    forget: Option<Box<dyn FnOnce() + Send + Sync>>,
}

impl PendingResolve {
    pub fn new(
        request_id: u64,
        reply: oneshot::Receiver<ResolveReply>,
        forget: Box<dyn FnOnce() + Send + Sync>,
    ) -> Self {
        PendingResolve { request_id, reply, forget: Some(forget) }
    }
}

impl Drop for PendingResolve {
    fn drop(&mut self) {
        if let Some(forget) = self.forget.take() {
            forget();
        }
    }
}

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

    /// Sends a resolve request to the carrier's live link (ask mode).
    /// Never blocks; the caller awaits the reply within its own deadline.
    fn resolve(&self, carrier: &CarrierId, query: &ResolveQuery) -> Result<PendingResolve, ResolveUnsent>;
}
