//! What each typed refusal says to the caller: the store's and the
//! engine's refusals become [`ApiError`]s here, in the API's words (the
//! field at fault by its wire name, the gRPC code by its kind). Nothing
//! below the edge knows these words; `error.rs` then makes the status.

use crate::domain::{AccountName, TradeState};
use crate::store::{
    AcceptanceRefusal, AddPrefixesRefusal, AnswerRefusal, BackupRefusal, CancelRefusal, CarrierStatementRefusal,
    CloseRegisterRefusal, CreateCarrierRefusal, CreateShopRefusal, CreateTradeRefusal, Difference,
    EnrollHandsetRefusal, EnrollSubscriberRefusal, Failure, LeaseList, LeaseRefusal, NoRefusal, OpenRegisterRefusal,
    PayerKind, PayoutField, PayoutRefusal, PostingRefusal, PrefixOverlap, RefundField, RefundRefusal, RemittanceField,
    RemittanceRefusal, RotateCredentialRefusal, ShopPayoutRefusal, StatementRefusal, SuspendRefusal, TopUpRefusal,
    TradeField,
};

use super::engine::{AwaitRefusal, DisputeRefusal, EngineError, RotateRefusal, UnknownTrade, WatchEnd, WatchRefusal};
use super::error::ApiError;

/// The refusal of a network identity at a shop the carrier owning the
/// address's range has not accepted. The same for every address in the
/// range, held or not: a carrier's ranges are public (routing registries),
/// so it tells the shop nothing about any subscriber, and it tells the shop
/// what to do (ask the carrier to accept it).
pub const NETWORK_NOT_ACCEPTED: &str = "network_identity: the carrier for this address has not accepted this shop";
/// The refusal of every other network identity that names nobody who can
/// be offered the trade: outside every carrier's range, no lease at that
/// instant (or port), or leased to a subscriber without a handset. One
/// message, so the answer never tells who was where.
pub const NETWORK_MISS: &str =
    "network_identity: no carrier subscriber can be offered a trade for this address at that time";

/// A network identity whose carrier resolves in ask mode but has no relay
/// stream here (or it ended while the request waited). Says nothing about
/// any subscriber, only that the carrier cannot be asked now: retry.
pub const NETWORK_CARRIER_UNAVAILABLE: &str =
    "network_identity: the carrier for this address is not connected; retry (with the same idempotency key)";

/// The refusal of a new trade at a shop the operator suspended.
pub const SHOP_SUSPENDED: &str =
    "shop is suspended: the operator refuses its new trades until it is resumed (open trades and refunds still work)";

/// A CreateTrade field by its name on the wire.
pub fn trade_field(field: TradeField) -> &'static str {
    match field {
        TradeField::Register => "register_id",
        TradeField::SubscriberNumber => "subscriber_number",
        TradeField::NetworkIp => "network_identity.ip",
        TradeField::NetworkPort => "network_identity.port",
        TradeField::NetworkObservedAt => "network_identity.observed_at_ms",
        TradeField::Amount => "amount_minor",
        TradeField::Currency => "currency",
        TradeField::Description => "description",
        TradeField::Ttl => "ttl_seconds",
    }
}

fn final_state(state: TradeState) -> ApiError {
    ApiError::FailedPrecondition(format!("trade_id: trade is already {}", state.name()))
}

fn overlap(o: PrefixOverlap) -> ApiError {
    ApiError::FailedPrecondition(format!(
        "ip_prefixes[{}]: {} overlaps {} of carrier {}",
        o.index, o.prefix, o.other, o.carrier
    ))
}

fn account(name: &AccountName) -> String {
    format!("{name:?}")
}

impl From<Failure> for ApiError {
    fn from(f: Failure) -> Self {
        match f {
            Failure::Stopped => ApiError::Unavailable("the store is not accepting writes".into()),
            Failure::Unavailable(m) => ApiError::Unavailable(m),
            f @ Failure::Unsupported(_) => ApiError::Unimplemented(f.to_string()),
            Failure::Corrupt(m) | Failure::Io(m) => ApiError::Internal(m),
        }
    }
}

impl<R: Into<ApiError>> From<EngineError<R>> for ApiError {
    fn from(e: EngineError<R>) -> Self {
        match e {
            EngineError::Refused(r) => r.into(),
            EngineError::Limited(m) => ApiError::ResourceExhausted(m),
            EngineError::Failed(f) => f.into(),
            EngineError::Internal(m) => ApiError::Internal(m),
        }
    }
}

/// A use case that never refuses.
impl From<NoRefusal> for ApiError {
    fn from(never: NoRefusal) -> Self {
        match never {}
    }
}

impl From<PostingRefusal> for ApiError {
    fn from(r: PostingRefusal) -> Self {
        ApiError::FailedPrecondition(match r {
            PostingRefusal::Invalid(e) => format!("amount_minor: {e}"),
            PostingRefusal::TotalOverflows(a) => {
                format!("amount_minor: the total of account {} would overflow", account(&a))
            }
            PostingRefusal::BelowZero(a) => format!("account {} would go below zero", account(&a)),
        })
    }
}

impl From<CreateTradeRefusal> for ApiError {
    fn from(r: CreateTradeRefusal) -> Self {
        match r {
            CreateTradeRefusal::Differs(Difference::PayerKind { sent: PayerKind::Number }) => ApiError::AlreadyExists(
                "subscriber_number: the idempotency key was used for a request naming the payer by network identity"
                    .into(),
            ),
            CreateTradeRefusal::Differs(Difference::PayerKind { sent: PayerKind::NetworkIdentity }) => {
                ApiError::AlreadyExists(
                    "network_identity: the idempotency key was used for a request naming the payer by number".into(),
                )
            }
            CreateTradeRefusal::Differs(Difference::Field(field)) => {
                let field = trade_field(field);
                ApiError::AlreadyExists(format!(
                    "{field}: the idempotency key was used for a request with a different {field}"
                ))
            }
            CreateTradeRefusal::UnknownShop => ApiError::NotFound("shop"),
            CreateTradeRefusal::ShopSuspended => ApiError::FailedPrecondition(SHOP_SUSPENDED.into()),
            CreateTradeRefusal::UnknownRegister => ApiError::NotFound("register"),
            CreateTradeRefusal::RegisterClosed => {
                ApiError::FailedPrecondition("register_id: the register is closed".into())
            }
            CreateTradeRefusal::RegisterFull { max } => {
                ApiError::ResourceExhausted(format!("open trades per register: at most {max}"))
            }
            CreateTradeRefusal::DeadlineOverflows => {
                ApiError::FailedPrecondition("ttl_seconds: deadline overflows".into())
            }
            CreateTradeRefusal::NotAccepted => ApiError::FailedPrecondition(NETWORK_NOT_ACCEPTED.into()),
            CreateTradeRefusal::NoOneToOffer => ApiError::FailedPrecondition(NETWORK_MISS.into()),
            CreateTradeRefusal::CarrierUnavailable => ApiError::Unavailable(NETWORK_CARRIER_UNAVAILABLE.into()),
            CreateTradeRefusal::OfferLimited(m) => ApiError::ResourceExhausted(m),
            CreateTradeRefusal::ObservedInFuture => {
                ApiError::invalid("network_identity.observed_at_ms", "is in the future")
            }
            CreateTradeRefusal::ObservedBeforeRetention { days } => ApiError::invalid(
                "network_identity.observed_at_ms",
                format!("is older than the lease retention ({days} days)"),
            ),
        }
    }
}

impl From<UnknownTrade> for ApiError {
    fn from(_: UnknownTrade) -> Self {
        ApiError::NotFound("trade")
    }
}

impl From<AwaitRefusal> for ApiError {
    fn from(r: AwaitRefusal) -> Self {
        match r {
            AwaitRefusal::UnknownTrade => ApiError::NotFound("trade"),
            AwaitRefusal::ShuttingDown => ApiError::Unavailable("server is shutting down; retry AwaitTrade".into()),
        }
    }
}

impl From<CancelRefusal> for ApiError {
    fn from(r: CancelRefusal) -> Self {
        match r {
            CancelRefusal::UnknownTrade => ApiError::NotFound("trade"),
            CancelRefusal::AlreadyFinal(state) => final_state(state),
        }
    }
}

impl From<RefundRefusal> for ApiError {
    fn from(r: RefundRefusal) -> Self {
        match r {
            RefundRefusal::Differs(field) => {
                let field = match field {
                    RefundField::Trade => "trade_id",
                    RefundField::Amount => "amount_minor",
                };
                ApiError::AlreadyExists(format!(
                    "{field}: the idempotency key was used for a refund with a different {field}"
                ))
            }
            RefundRefusal::UnknownTrade => ApiError::NotFound("trade"),
            RefundRefusal::NotSettled(state) => ApiError::FailedPrecondition(format!(
                "trade_id: only a SETTLED trade can be refunded; this one is {}",
                state.name()
            )),
            RefundRefusal::Overflows => ApiError::FailedPrecondition("amount_minor: refunds would overflow".into()),
            RefundRefusal::AboveRemaining { left } => ApiError::FailedPrecondition(format!(
                "amount_minor: at most {} of this trade is left to refund",
                left.minor()
            )),
            RefundRefusal::ShopBalanceShort => {
                ApiError::FailedPrecondition("amount_minor: the shop's balance does not cover the refund".into())
            }
            RefundRefusal::Postings(p) => p.into(),
        }
    }
}

impl From<ShopPayoutRefusal> for ApiError {
    fn from(r: ShopPayoutRefusal) -> Self {
        match r {
            ShopPayoutRefusal::Differs(field) => {
                let field = match field {
                    PayoutField::Shop => "shop_id",
                    PayoutField::Currency => "currency",
                    PayoutField::Amount => "amount_minor",
                };
                ApiError::AlreadyExists(format!(
                    "{field}: the idempotency key was used for a payout with a different {field}"
                ))
            }
            ShopPayoutRefusal::UnknownShop => ApiError::NotFound("shop"),
            ShopPayoutRefusal::BalanceShort { available } => ApiError::FailedPrecondition(format!(
                "amount_minor: more than the shop's payable balance, which is {}",
                available.minor()
            )),
            ShopPayoutRefusal::Postings(p) => p.into(),
        }
    }
}

impl From<RemittanceRefusal> for ApiError {
    fn from(r: RemittanceRefusal) -> Self {
        match r {
            RemittanceRefusal::Differs(field) => {
                let field = match field {
                    RemittanceField::Carrier => "carrier_id",
                    RemittanceField::Shop => "shop_id",
                    RemittanceField::Month => "month",
                    RemittanceField::Currency => "currency",
                    RemittanceField::Amount => "amount_minor",
                };
                ApiError::AlreadyExists(format!(
                    "{field}: the idempotency key was used for a remittance with a different {field}"
                ))
            }
            RemittanceRefusal::UnknownCarrier => ApiError::NotFound("carrier"),
            RemittanceRefusal::UnknownShop => ApiError::NotFound("shop"),
            RemittanceRefusal::MonthOpen { open_until } => ApiError::FailedPrecondition(format!(
                "month: has not ended: what the carrier owes for it can still change; it can be remitted from {} ms",
                open_until.0
            )),
            RemittanceRefusal::Exceeds { outstanding } => ApiError::FailedPrecondition(format!(
                "amount_minor: more than the carrier owes the shop for the month: outstanding is {}",
                outstanding.minor()
            )),
            RemittanceRefusal::Postings(p) => p.into(),
        }
    }
}

impl From<CarrierStatementRefusal> for ApiError {
    fn from(r: CarrierStatementRefusal) -> Self {
        match r {
            CarrierStatementRefusal::UnknownCarrier => ApiError::NotFound("carrier"),
        }
    }
}

/// What the operator reads when the PostgreSQL backend is asked for an
/// online backup.
pub const BACKUP_USE_DATABASE_TOOLS: &str = "online backups are for the embedded sled store; on PostgreSQL use its \
own tools: pg_basebackup for a base backup and WAL archiving for point-in-time recovery (docs/DEPLOY.md)";

impl From<BackupRefusal> for ApiError {
    fn from(r: BackupRefusal) -> Self {
        match r {
            BackupRefusal::Target(m) => ApiError::FailedPrecondition(format!("dir: {m}")),
            BackupRefusal::Busy => {
                ApiError::FailedPrecondition("dir: another backup is being taken; try again once it is done".into())
            }
            BackupRefusal::UseDatabaseTools => ApiError::Unimplemented(BACKUP_USE_DATABASE_TOOLS.into()),
        }
    }
}

impl From<SuspendRefusal> for ApiError {
    fn from(r: SuspendRefusal) -> Self {
        match r {
            SuspendRefusal::UnknownShop => ApiError::NotFound("shop"),
        }
    }
}

impl From<RotateCredentialRefusal> for ApiError {
    fn from(r: RotateCredentialRefusal) -> Self {
        match r {
            RotateCredentialRefusal::UnknownParty => ApiError::NotFound("party"),
        }
    }
}

impl From<AnswerRefusal> for ApiError {
    fn from(r: AnswerRefusal) -> Self {
        match r {
            AnswerRefusal::Postings(p) => p.into(),
        }
    }
}

impl From<WatchRefusal> for ApiError {
    fn from(r: WatchRefusal) -> Self {
        match r {
            WatchRefusal::UnknownRegister => ApiError::NotFound("register"),
            WatchRefusal::BeyondHead { head } => {
                ApiError::OutOfRange(format!("after_sequence: is beyond the shop's last event ({head})"))
            }
        }
    }
}

impl From<WatchEnd> for ApiError {
    fn from(end: WatchEnd) -> Self {
        match end {
            WatchEnd::ShuttingDown { cursor } => {
                ApiError::Unavailable(format!("server is shutting down; resume with after_sequence={cursor}"))
            }
            WatchEnd::Failed(f) => f.into(),
            WatchEnd::Gap { shop, after, got } => {
                ApiError::Internal(format!("event gap for {shop}: after {after} came {got}"))
            }
        }
    }
}

impl From<CreateShopRefusal> for ApiError {
    fn from(r: CreateShopRefusal) -> Self {
        match r {
            CreateShopRefusal::Exists(id) => ApiError::AlreadyExists(format!("shop_id: shop {id} already exists")),
            CreateShopRefusal::TooMany { max } => ApiError::ResourceExhausted(format!("at most {max} shops")),
        }
    }
}

impl From<CreateCarrierRefusal> for ApiError {
    fn from(r: CreateCarrierRefusal) -> Self {
        match r {
            CreateCarrierRefusal::Exists(id) => {
                ApiError::AlreadyExists(format!("carrier_id: carrier {id} already exists"))
            }
            CreateCarrierRefusal::Overlap(o) => overlap(o),
        }
    }
}

impl From<AddPrefixesRefusal> for ApiError {
    fn from(r: AddPrefixesRefusal) -> Self {
        match r {
            AddPrefixesRefusal::UnknownCarrier => ApiError::NotFound("carrier"),
            AddPrefixesRefusal::Overlap(o) => overlap(o),
        }
    }
}

impl From<EnrollSubscriberRefusal> for ApiError {
    fn from(r: EnrollSubscriberRefusal) -> Self {
        match r {
            EnrollSubscriberRefusal::OtherCarrier => {
                ApiError::FailedPrecondition("subscriber_number: the number is enrolled with another carrier".into())
            }
        }
    }
}

impl From<EnrollHandsetRefusal> for ApiError {
    fn from(r: EnrollHandsetRefusal) -> Self {
        match r {
            EnrollHandsetRefusal::UnknownSubscriber => ApiError::NotFound("subscriber"),
        }
    }
}

impl From<TopUpRefusal> for ApiError {
    fn from(r: TopUpRefusal) -> Self {
        match r {
            TopUpRefusal::UnknownSubscriber => ApiError::NotFound("subscriber"),
            TopUpRefusal::CarrierBilled => ApiError::FailedPrecondition(
                "subscriber_number: the subscriber is carrier-billed and has no wallet".into(),
            ),
            TopUpRefusal::Postings(p) => p.into(),
        }
    }
}

impl From<OpenRegisterRefusal> for ApiError {
    fn from(r: OpenRegisterRefusal) -> Self {
        match r {
            OpenRegisterRefusal::TooMany { max } => {
                ApiError::ResourceExhausted(format!("at most {max} open registers per shop"))
            }
        }
    }
}

impl From<CloseRegisterRefusal> for ApiError {
    fn from(r: CloseRegisterRefusal) -> Self {
        match r {
            CloseRegisterRefusal::UnknownRegister => ApiError::NotFound("register"),
            CloseRegisterRefusal::AlreadyClosed => {
                ApiError::FailedPrecondition("register_id: the register is already closed".into())
            }
            CloseRegisterRefusal::OpenTrades(n) => ApiError::FailedPrecondition(format!(
                "register_id: the register has {n} open trades; cancel them or wait"
            )),
        }
    }
}

impl From<LeaseRefusal> for ApiError {
    fn from(r: LeaseRefusal) -> Self {
        let name = |list: LeaseList| match list {
            LeaseList::Starts => "starts",
            LeaseList::Stops => "stops",
        };
        ApiError::FailedPrecondition(match r {
            LeaseRefusal::OutsidePrefixes { list, index } => {
                format!("{}[{index}].ip: the address is not in this carrier's prefixes", name(list))
            }
            LeaseRefusal::NotOwnSubscriber { list, index } => {
                format!("{}[{index}].subscriber_number: not a subscriber of this carrier", name(list))
            }
            LeaseRefusal::AskMode { list, index } => format!(
                "{}[{index}]: this carrier resolves addresses itself (ask mode), so the server keeps no lease \
                 records; answer ResolveRequests on the relay stream, or choose push mode (SetResolveMode)",
                name(list)
            ),
        })
    }
}

impl From<AcceptanceRefusal> for ApiError {
    fn from(r: AcceptanceRefusal) -> Self {
        match r {
            AcceptanceRefusal::UnknownShop => ApiError::NotFound("shop"),
        }
    }
}

impl From<StatementRefusal> for ApiError {
    fn from(r: StatementRefusal) -> Self {
        match r {
            StatementRefusal::NotCarrierBilled => ApiError::NotFound("carrier-billed subscriber"),
        }
    }
}

impl From<PayoutRefusal> for ApiError {
    fn from(r: PayoutRefusal) -> Self {
        match r {
            PayoutRefusal::TooMany { max } => ApiError::ResourceExhausted(format!(
                "more than {max} payout entries in the period; ask for a shorter one"
            )),
        }
    }
}

impl From<RotateRefusal> for ApiError {
    fn from(r: RotateRefusal) -> Self {
        match r {
            RotateRefusal::TooManyKeys(m) => ApiError::ResourceExhausted(format!("receipt keys: {m}")),
        }
    }
}

impl From<DisputeRefusal> for ApiError {
    fn from(r: DisputeRefusal) -> Self {
        match r {
            DisputeRefusal::UnknownTrade => ApiError::NotFound("trade"),
            DisputeRefusal::NoReceipt(state) => {
                ApiError::FailedPrecondition(format!("trade_id: trade is {} and has no receipt", state.name()))
            }
        }
    }
}
