//! What a store operation answers when it does not do what was asked: a
//! typed refusal of the operation's own (the caller's reason, nothing
//! written), or a [`Failure`] of the store (never the caller's fault).
//! Refusals speak the domain's language (`TradeField::Amount`, not a wire
//! field name); the gRPC edge says them in its own words
//! (`sync_server::refusal`).

use crate::domain::CarrierId;
use crate::domain::{AccountName, Amount, IpPrefix, LedgerError, TradeState};

/// The store could not do its part. `Corrupt` and `Io` are the server's
/// problem; `Stopped` means a sync failed and the store accepts no more
/// writes (fail-stop: nothing after it is acknowledged); `Unavailable`
/// passes (a backend with a remote database, during a failover).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    #[error("corrupt record: {0}")]
    Corrupt(String),
    #[error("storage I/O: {0}")]
    Io(String),
    #[error("the store stopped accepting writes after a failed sync")]
    Stopped,
    /// The store cannot be reached for now (a database failover, a lost
    /// connection): nothing of the operation was acknowledged, and a retry
    /// (with its idempotency key) may succeed.
    #[error("the store is unavailable for now: {0}")]
    Unavailable(String),
    /// This backend does not implement the operation yet (the operator's
    /// money tools exist on the embedded sled store first); nothing was
    /// written.
    #[error("{0} is not available on this store backend yet")]
    Unsupported(&'static str),
}

/// An operation's answer besides success: its own refusal `R`, or a
/// failure of the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError<R> {
    Refused(R),
    Failed(Failure),
}

impl<R> From<Failure> for StoreError<R> {
    fn from(f: Failure) -> Self {
        StoreError::Failed(f)
    }
}

impl<R> StoreError<R> {
    /// The refusal, if it is one.
    pub fn refusal(&self) -> Option<&R> {
        match self {
            StoreError::Refused(r) => Some(r),
            StoreError::Failed(_) => None,
        }
    }
}

/// For operations that never refuse (an acknowledgement, an expiry).
pub type NoRefusal = std::convert::Infallible;

/// A field of a CreateTrade request, as the domain names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TradeField {
    Register,
    SubscriberNumber,
    NetworkIp,
    NetworkPort,
    NetworkObservedAt,
    Amount,
    Currency,
    Description,
    Ttl,
}

/// How a request names its payer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayerKind {
    Number,
    NetworkIdentity,
}

/// Where two requests under one idempotency key first differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Difference {
    /// The payer is named the other way: `sent` is how the retry names it.
    PayerKind {
        sent: PayerKind,
    },
    Field(TradeField),
}

/// Why a posting set was not written (the whole operation is refused).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PostingRefusal {
    /// The set is not a valid one (a zero leg, say).
    Invalid(LedgerError),
    /// An account's debit or credit total would overflow.
    TotalOverflows(AccountName),
    /// A never-negative account would go below zero.
    BelowZero(AccountName),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreateTradeRefusal {
    /// The idempotency key was used for a different request.
    Differs(Difference),
    UnknownShop,
    /// The operator suspended the shop: it takes no new trades until
    /// resumed (a retry of a trade made before still returns it).
    ShopSuspended,
    UnknownRegister,
    RegisterClosed,
    /// The register has as many open trades as it may.
    RegisterFull {
        max: u32,
    },
    /// Now plus the time to live does not fit a timestamp.
    DeadlineOverflows,
    /// A network identity in the range of a carrier that has not accepted
    /// this shop. The same for every address in the range, held or not.
    NotAccepted,
    /// A network identity that names nobody who can be offered the trade
    /// (no carrier's range, no lease then, or a subscriber without a
    /// handset): one refusal for all, so the answer never tells who was
    /// where.
    NoOneToOffer,
    /// The network identity's carrier resolves in ask mode and has no
    /// relay stream here (or it ended while the request waited): retry.
    CarrierUnavailable,
    /// The offer gate refused (the subscriber's allowance); its message.
    OfferLimited(String),
    /// The network identity is observed later than the clock skew allows.
    /// Decided by the engine (which holds the clock) before the store.
    ObservedInFuture,
    /// The network identity is older than the lease retention. Decided by
    /// the engine.
    ObservedBeforeRetention {
        days: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelRefusal {
    UnknownTrade,
    AlreadyFinal(TradeState),
}

/// A field of a RefundTrade request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefundField {
    Trade,
    Amount,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefundRefusal {
    /// The idempotency key was used for a refund that differs here.
    Differs(RefundField),
    UnknownTrade,
    /// Only a SETTLED trade can be refunded.
    NotSettled(TradeState),
    /// The refunds' sum would overflow.
    Overflows,
    /// More than what is left of the trade.
    AboveRemaining {
        left: Amount,
    },
    /// The shop's payable balance does not cover the refund.
    ShopBalanceShort,
    Postings(PostingRefusal),
}

/// A handset answer moved no money because its postings were refused (an
/// account total would overflow); the trade is unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnswerRefusal {
    Postings(PostingRefusal),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreateShopRefusal {
    Exists(crate::domain::ShopId),
    TooMany { max: u32 },
}

/// A new prefix overlaps a prefix of another carrier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefixOverlap {
    /// Its position in the request.
    pub index: usize,
    pub prefix: IpPrefix,
    pub other: IpPrefix,
    pub carrier: CarrierId,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreateCarrierRefusal {
    Exists(CarrierId),
    Overlap(PrefixOverlap),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddPrefixesRefusal {
    UnknownCarrier,
    Overlap(PrefixOverlap),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnrollSubscriberRefusal {
    /// The number is enrolled with another carrier.
    OtherCarrier,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnrollHandsetRefusal {
    /// Not a subscriber of this carrier (another carrier's is the same).
    UnknownSubscriber,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopUpRefusal {
    UnknownSubscriber,
    /// A carrier-billed subscriber has no wallet.
    CarrierBilled,
    Postings(PostingRefusal),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenRegisterRefusal {
    TooMany { max: u32 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseRegisterRefusal {
    UnknownRegister,
    AlreadyClosed,
    /// It still has this many open trades.
    OpenTrades(u32),
}

/// Which list of a ReportLeases batch an entry is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseList {
    Starts,
    Stops,
}

/// The first entry of a lease batch that may not be recorded (the whole
/// batch is refused).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseRefusal {
    OutsidePrefixes {
        list: LeaseList,
        index: usize,
    },
    NotOwnSubscriber {
        list: LeaseList,
        index: usize,
    },
    /// The carrier resolves addresses itself (ask mode): no lease record
    /// is kept for it. Names the batch's first entry.
    AskMode {
        list: LeaseList,
        index: usize,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcceptanceRefusal {
    UnknownShop,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatementRefusal {
    /// Not a carrier-billed subscriber of this carrier.
    NotCarrierBilled,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayoutRefusal {
    /// More entries in the period than one report reads.
    TooMany { max: usize },
}

/// A field of a PayoutShop request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayoutField {
    Shop,
    Currency,
    Amount,
}

/// Why a shop payout was not made (nothing was written).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShopPayoutRefusal {
    /// The idempotency key was used for a payout that differs here.
    Differs(PayoutField),
    UnknownShop,
    /// The shop's payable balance in the currency does not cover the
    /// amount (or, for the whole balance, is zero).
    BalanceShort {
        available: Amount,
    },
    Postings(PostingRefusal),
}

/// A field of a RecordRemittance request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemittanceField {
    Carrier,
    Shop,
    Month,
    Currency,
    Amount,
}

/// Why a remittance was not recorded (nothing was written).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemittanceRefusal {
    /// The idempotency key was used for a remittance that differs here.
    Differs(RemittanceField),
    UnknownCarrier,
    UnknownShop,
    /// The month has not ended (with its grace) at `open_until`: its sales
    /// can still change, so what is owed is not known yet.
    MonthOpen {
        open_until: crate::domain::UnixMs,
    },
    /// The amount is more than the carrier still owes the shop for the
    /// month (`outstanding`, zero when nothing is owed).
    Exceeds {
        outstanding: Amount,
    },
    Postings(PostingRefusal),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CarrierStatementRefusal {
    UnknownCarrier,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SuspendRefusal {
    UnknownShop,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RotateCredentialRefusal {
    /// No such shop or carrier.
    UnknownParty,
}

/// Why an online backup wrote nothing usable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackupRefusal {
    /// The target folder cannot take a backup (relative, exists and is
    /// not empty, no parent, or a write into it failed), in words.
    Target(String),
    /// Another backup is being taken; one at a time.
    Busy,
    /// This backend has no online backup of its own: the database's tools
    /// do it (PostgreSQL: `pg_basebackup` and WAL archiving).
    UseDatabaseTools,
}
