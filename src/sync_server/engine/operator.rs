//! The operator's daily tools: shop payouts, carrier remittances and
//! statements, shops and carriers a page at a time, suspending and
//! resuming a shop, rotating a party's credential, and any trade's whole
//! history.

use crate::domain::{Amount, CarrierId, Currency, Month, Principal, ShopId, TradeId, UnixMs};
use crate::store::{
    CarrierRecord, CarrierStatementLine, CarrierStatementRefusal, Failure, NewPayout, NewRemittance, PaidOut,
    PayoutAmount, RemittanceRefusal, Remitted, RotateCredentialRefusal, ShopPayoutRefusal, ShopStatus, SuspendRefusal,
    TradeHistory,
};

use super::super::limits::MAX_LIST;
use super::{now, Engine, EngineError};

/// Events and postings of one trade shown at most. A trade has a handful
/// of events and a few postings per refund; refunds are bounded by the
/// amount, so this bounds a pathological trade's answer, not a real one.
pub const MAX_HISTORY_ITEMS: usize = 1000;

/// How long after a month ends its remittances may begin: what a carrier
/// owes for a month is its payout entries filed in it, each stamped with
/// its node's clock when its write began, so one may still commit a
/// moment after the month ended (a queued write, a node's clock behind
/// another's). An hour is far beyond both, so once remittances may begin
/// the month's sales no longer change and a remittance checked against
/// them stays within what is owed.
pub const REMITTANCE_GRACE_MS: u64 = 3_600_000;

impl Engine {
    /// Records a carrier's remittance of `amount` for the shop's
    /// carrier-billed sales of `month` (closed, see
    /// [`REMITTANCE_GRACE_MS`]); idempotent by `key` across the operator.
    pub async fn remit(&self, r: NewRemittanceRequest) -> Result<Remitted, EngineError<RemittanceRefusal>> {
        let now = now();
        let open_until = UnixMs(r.month.end().0.saturating_add(REMITTANCE_GRACE_MS));
        if now < open_until {
            return Err(EngineError::Refused(RemittanceRefusal::MonthOpen { open_until }));
        }
        let done = self
            .store
            .remit(NewRemittance {
                carrier: r.carrier,
                shop: r.shop,
                month: r.month,
                currency: r.currency,
                amount: r.amount,
                idempotency_key: r.idempotency_key,
                now,
            })
            .await?;
        if !done.replayed {
            tracing::info!(
                carrier = %done.remittance.carrier,
                shop = %done.remittance.shop,
                month = %done.remittance.month,
                remittance_id = done.remittance.remittance_id,
                amount_minor = done.remittance.amount.minor(),
                currency = %done.remittance.currency,
                "carrier remittance recorded"
            );
        }
        Ok(done)
    }

    /// A carrier's statement for `month`: one page of at most `limit`
    /// shops (capped at [`MAX_LIST`]) after `after`.
    pub async fn carrier_statement(
        &self,
        carrier: &CarrierId,
        month: Month,
        after: Option<&ShopId>,
        limit: usize,
    ) -> Result<Vec<CarrierStatementLine>, EngineError<CarrierStatementRefusal>> {
        Ok(self.store.carrier_statement(carrier, month, after, limit.min(MAX_LIST)).await?)
    }

    /// Pays out `amount` (or the whole balance) of the shop's payable
    /// balance in `currency`; idempotent by `key` across all shops.
    pub async fn payout_shop(
        &self,
        shop: ShopId,
        currency: Currency,
        amount: PayoutAmount,
        key: String,
    ) -> Result<PaidOut, EngineError<ShopPayoutRefusal>> {
        let paid =
            self.store.payout_shop(NewPayout { shop, currency, amount, idempotency_key: key, now: now() }).await?;
        if !paid.replayed {
            tracing::info!(
                shop = %paid.payout.shop,
                payout_id = paid.payout.payout_id,
                amount_minor = paid.payout.amount.minor(),
                currency = %paid.payout.currency,
                "shop paid out"
            );
        }
        Ok(paid)
    }

    /// Shops after `after`, in id order (one page of at most `limit`,
    /// capped at [`MAX_LIST`]).
    pub async fn shops(&self, after: Option<&ShopId>, limit: usize) -> Result<Vec<ShopStatus>, Failure> {
        self.store.shops(after, limit.min(MAX_LIST)).await
    }

    pub async fn carriers(&self, after: Option<&CarrierId>, limit: usize) -> Result<Vec<CarrierRecord>, Failure> {
        self.store.carriers(after, limit.min(MAX_LIST)).await
    }

    /// Suspends (or resumes) a shop: while suspended its registers are
    /// refused new trades; open trades finish and refunds work.
    pub async fn set_shop_suspended(
        &self,
        shop: &ShopId,
        suspended: bool,
    ) -> Result<ShopStatus, EngineError<SuspendRefusal>> {
        let status = self.store.set_shop_suspended(shop, suspended, now()).await?;
        tracing::warn!(shop = %shop, suspended, "shop suspension set");
        Ok(status)
    }

    /// Replaces the bearer credential of a shop or carrier with the one
    /// hashed as `token_hash`; every old token is refused from then on.
    pub async fn rotate_credential(
        &self,
        party: &Principal,
        token_hash: [u8; 32],
    ) -> Result<(), EngineError<RotateCredentialRefusal>> {
        self.store.rotate_credential(party, token_hash).await?;
        tracing::warn!(party = ?party, "credential rotated");
        Ok(())
    }

    pub async fn shop(&self, id: &ShopId) -> Result<Option<crate::store::ShopRecord>, Failure> {
        self.store.shop(id).await
    }

    /// Any shop's trade with its events and postings.
    pub async fn trade_history(&self, id: &TradeId) -> Result<Option<TradeHistory>, Failure> {
        self.store.trade_history(id, MAX_HISTORY_ITEMS).await
    }
}

/// The amount a payout request names: zero means the whole balance.
pub fn payout_amount(minor: Option<Amount>) -> PayoutAmount {
    match minor {
        Some(a) => PayoutAmount::Exact(a),
        None => PayoutAmount::WholeBalance,
    }
}

/// A RecordRemittance request as validated at the edge.
#[derive(Debug, Clone)]
pub struct NewRemittanceRequest {
    pub carrier: CarrierId,
    pub shop: ShopId,
    pub month: Month,
    pub currency: Currency,
    pub amount: Amount,
    pub idempotency_key: String,
}
