//! Network identity and carrier billing: a carrier's prefixes, leases,
//! resolve mode and accepted shops, asking a carrier in ask mode who held
//! an address, subscribers' statements and shops' payout entries.

use crate::carrier::{ResolveQuery, ResolveReply, ResolveUnsent};
use crate::domain::{CarrierId, IpPrefix, Month, ResolveMode, ShopId, SubscriberNumber, UnixMs};
use crate::metrics;
use crate::store::{
    AcceptanceRefusal, AddPrefixesRefusal, CreateTradeRefusal, Failure, LeaseRefusal, LeaseReport, LeasesRecorded,
    NetworkIdentity, PayoutEntry, PayoutRefusal, Resolution, StatementData, StatementRefusal,
};

use super::{now, Engine, EngineError};

impl Engine {
    /// Every prefix of the carrier after the change.
    pub async fn add_prefixes(
        &self,
        carrier: &CarrierId,
        prefixes: Vec<IpPrefix>,
    ) -> Result<Vec<IpPrefix>, EngineError<AddPrefixesRefusal>> {
        Ok(self.store.add_prefixes(carrier, prefixes).await?)
    }

    pub async fn report_leases(
        &self,
        carrier: &CarrierId,
        starts: Vec<LeaseReport>,
        stops: Vec<LeaseReport>,
    ) -> Result<LeasesRecorded, EngineError<LeaseRefusal>> {
        Ok(self.store.report_leases(carrier, starts, stops).await?)
    }

    /// The carrier chooses how its addresses are resolved (its terms).
    pub async fn set_resolve_mode(
        &self,
        carrier: &CarrierId,
        mode: ResolveMode,
    ) -> Result<ResolveMode, EngineError<std::convert::Infallible>> {
        let mode = self.store.set_resolve_mode(carrier, mode).await?;
        tracing::info!(carrier = %carrier, mode = mode.name(), "resolve mode set");
        Ok(mode)
    }

    /// For a network identity in the range of a carrier in ask mode: asks
    /// that carrier (only it, only for a shop it accepted) who held the
    /// address, and waits at most the resolve timeout. `None` when the
    /// store resolves it itself (push mode, or no carrier's range). The
    /// answer is kept nowhere but in the trade it creates; every way it
    /// can fail but "not connected" is one miss to the shop.
    pub(super) async fn ask_carrier(
        &self,
        shop: &ShopId,
        identity: &NetworkIdentity,
    ) -> Result<Option<Resolution>, EngineError<CreateTradeRefusal>> {
        let Some(route) = self.store.route(identity.ip, shop).await? else {
            return Ok(None);
        };
        match route.mode {
            ResolveMode::Push => return Ok(None),
            ResolveMode::Ask => {}
        }
        if !route.accepted {
            return Ok(Some(Resolution::NotAccepted));
        }
        let carrier = route.carrier;
        let query = ResolveQuery {
            ip: identity.ip,
            port: identity.port,
            observed_at: identity.observed_at,
            shop: shop.clone(),
        };
        let mut pending = match self.gateway.resolve(&carrier, &query) {
            Ok(p) => p,
            Err(ResolveUnsent::NotConnected) => {
                metrics::resolved("not_connected");
                tracing::info!(carrier = %carrier, "resolve: carrier not connected");
                return Ok(Some(Resolution::Unavailable));
            }
            Err(ResolveUnsent::TooMany) => {
                metrics::resolved("too_many");
                return Err(EngineError::Limited(format!(
                    "pending resolve requests: at most {} wait for carriers at once; retry shortly",
                    crate::sync_server::limits::MAX_PENDING_RESOLVES
                )));
            }
        };
        let request = pending.request_id;
        let reply = tokio::time::timeout(self.limits.resolve_timeout, &mut pending.reply).await;
        // Never log the number or the address: the log must not become the
        // address history this mode exists to avoid.
        let (result, asked) = match reply {
            Err(_) => {
                tracing::info!(carrier = %carrier, request, "resolve: no answer in time");
                ("timeout", Resolution::Miss)
            }
            Ok(Err(_)) | Ok(Ok(ResolveReply::Disconnected)) => {
                tracing::info!(carrier = %carrier, request, "resolve: the relay stream ended before its answer");
                ("disconnected", Resolution::Unavailable)
            }
            Ok(Ok(ResolveReply::Miss)) => ("miss", Resolution::Miss),
            Ok(Ok(ResolveReply::Refused)) => ("refused_by_carrier", Resolution::Miss),
            Ok(Ok(ResolveReply::Malformed(why))) => {
                tracing::warn!(carrier = %carrier, request, why, "resolve answer refused: malformed");
                ("refused", Resolution::Miss)
            }
            Ok(Ok(ResolveReply::Found(subscriber))) => match self.store.subscriber(&subscriber).await? {
                Some(s) if s.carrier == carrier => ("found", Resolution::Found { carrier, subscriber }),
                _ => {
                    tracing::warn!(carrier = %carrier, request, "resolve answer refused: not a subscriber of this carrier");
                    ("refused", Resolution::Miss)
                }
            },
        };
        metrics::resolved(result);
        Ok(Some(asked))
    }

    /// The carrier accepts (or revokes) a shop; returns whether accepted.
    pub async fn set_acceptance(
        &self,
        carrier: &CarrierId,
        shop: &ShopId,
        accept: bool,
    ) -> Result<bool, EngineError<AcceptanceRefusal>> {
        let accepted = self.store.set_acceptance(carrier, shop, accept).await?;
        tracing::info!(carrier = %carrier, shop = %shop, accepted, "shop acceptance set");
        Ok(accepted)
    }

    pub async fn statement(
        &self,
        carrier: &CarrierId,
        number: &SubscriberNumber,
        month: Month,
    ) -> Result<StatementData, EngineError<StatementRefusal>> {
        Ok(self.store.statement(carrier, number, month).await?)
    }

    pub async fn payout_entries(
        &self,
        shop: &ShopId,
        from: UnixMs,
        to: UnixMs,
    ) -> Result<Vec<PayoutEntry>, EngineError<PayoutRefusal>> {
        Ok(self.store.payout_entries(shop, from, to).await?)
    }

    /// Prunes lease records older than the retention that later records
    /// supersede; returns how many were deleted.
    pub async fn prune_leases(&self) -> Result<u64, Failure> {
        let retention = u64::try_from(self.limits.lease_retention.as_millis()).unwrap_or(u64::MAX);
        let deleted = self.store.prune_leases(UnixMs(now().0.saturating_sub(retention))).await?;
        tracing::info!(deleted, "lease records pruned");
        Ok(deleted)
    }
}
