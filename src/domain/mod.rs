//! The pure core: ids, money, the trade state machine, the ledger, the
//! approval cryptography and countersigned receipts. Synchronous, no I/O,
//! no tonic, no sled.

pub mod approval;
pub mod ids;
pub mod ledger;
pub mod money;
pub mod network;
pub mod receipt;
pub mod trade;

pub use approval::{
    ApprovalPayload, BindingCode, Decision, PayloadVersion, ScreenText, ServerSecret, ED25519_SIGNATURE_LEN,
};
pub use ids::{CarrierId, IdError, Principal, RegisterId, ShopId, SubscriberNumber, TradeId};
pub use ledger::{AccountName, Balance, LedgerError, Leg, PostingSet, Side};
pub use money::{Amount, Currency, MoneyError};
pub use network::{carrier_fee, IpKey, IpPrefix, Month, NetworkError, PortRange, ResolveMode};
pub use trade::{FailureReason, TradeEvent, TradeState, Transition, TransitionError};

/// Milliseconds since the Unix epoch, UTC. The only time type in the domain;
/// the clock is read at the edges and passed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct UnixMs(pub u64);

impl UnixMs {
    /// Adds a duration in milliseconds; `None` on overflow.
    pub fn checked_add_ms(self, ms: u64) -> Option<UnixMs> {
        self.0.checked_add(ms).map(UnixMs)
    }
}
