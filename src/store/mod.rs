//! The storage boundary between the engine and a store: the operations the
//! engine needs ([`Backend`], by area: [`Parties`], [`Trades`], [`Ledger`],
//! [`Network`], [`Lifecycle`]), each with a typed input, a typed result
//! and a typed refusal ([`refusals`]), and the records the engine sees.
//! What every backend shares lives here: the records, the refusals, the
//! offer gate, the durable event heads and the ledger's verification over
//! an abstract view. [`sled`] is the embedded backend, the only module
//! that knows sled; [`postgres`] the backend for several nodes on one
//! PostgreSQL database.

mod backend;
pub mod backup;
pub mod files;
pub mod fixture;
mod heads;
mod ops;
pub mod postgres;
pub mod records;
pub mod refusals;
pub mod sled;
pub mod verify;

use std::sync::Arc;

pub use backend::{Backend, Ledger, Lifecycle, Network, Parties, Remote, RemoteChange, Trades};
pub use heads::EventHeads;
pub use ops::{
    AckOutcome, AnswerOutcome, CancelOutcome, Created, ExpireOutcome, HandsetAnswer, LeaseReport, LeasesRecorded,
    NewCarrier, NewHandset, NewPayout, NewRefund, NewRegister, NewRemittance, NewShop, NewSubscriber, NewTrade,
    OfferGate, PaidOut, PayoutAmount, Pending, Refunded, RejectedAnswer, Remitted, Resolution, Route, ShopStatus,
    SignatureCheck, StatementData, TopUp, ToppedUp, TradeHistory,
};
pub use records::{
    AccountRecord, BillLine, CapUsage, CarrierRecord, CarrierSales, CarrierStatementLine, Delivery, DeliveryBody,
    EventKind, EventRecord, Funding, HandsetRecord, NetworkIdentity, OfferBody, PayerRef, PayoutEntry, PayoutRecord,
    PostingKind, PostingRecord, Receipt, RegisterRecord, RemittanceRecord, ShopRecord, Sig64, SignedTerms,
    SubscriberRecord, TradeRecord, TradeRequest,
};
pub use refusals::{
    AcceptanceRefusal, AddPrefixesRefusal, AnswerRefusal, BackupRefusal, CancelRefusal, CarrierStatementRefusal,
    CloseRegisterRefusal, CreateCarrierRefusal, CreateShopRefusal, CreateTradeRefusal, Difference,
    EnrollHandsetRefusal, EnrollSubscriberRefusal, Failure, LeaseList, LeaseRefusal, NoRefusal, OpenRegisterRefusal,
    PayerKind, PayoutField, PayoutRefusal, PostingRefusal, PrefixOverlap, RefundField, RefundRefusal, RemittanceField,
    RemittanceRefusal, RotateCredentialRefusal, ShopPayoutRefusal, StatementRefusal, StoreError, SuspendRefusal,
    TopUpRefusal, TradeField,
};
pub use verify::VerifyReport;

/// A store as the engine holds it: any backend, behind the boundary.
pub type Store = Arc<dyn Backend>;
