//! Network identity and carrier billing: a carrier's prefixes, leases and
//! accepted shops, subscribers' statements and shops' payout entries.

use crate::domain::{CarrierId, IpPrefix, Month, ShopId, SubscriberNumber, UnixMs};
use crate::store::{
    AcceptanceRefusal, AddPrefixesRefusal, Failure, LeaseRefusal, LeaseReport, LeasesRecorded, PayoutEntry,
    PayoutRefusal, StatementData, StatementRefusal,
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
