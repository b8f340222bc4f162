//! Money as the operator sees it: wallet top-ups, accounts, postings and
//! the ledger's verification.

use crate::domain::{Amount, Currency, SubscriberNumber};
use crate::store::{AccountRecord, Failure, PostingRecord, TopUp, TopUpRefusal, ToppedUp, TradeRecord, VerifyReport};

use super::super::limits::MAX_LIST;
use super::{now, Engine, EngineError};

impl Engine {
    pub async fn top_up(
        &self,
        number: SubscriberNumber,
        amount: Amount,
        currency: Currency,
    ) -> Result<ToppedUp, EngineError<TopUpRefusal>> {
        Ok(self.store.top_up(TopUp { number, amount, currency, now: now() }).await?)
    }

    /// Accounts whose name starts with `prefix` (one page, one moment).
    pub async fn accounts(&self, prefix: &str) -> Result<Vec<AccountRecord>, Failure> {
        self.store.accounts(prefix, MAX_LIST).await
    }

    pub async fn postings(&self, after: u64, limit: usize) -> Result<Vec<PostingRecord>, Failure> {
        self.store.postings(after, limit).await
    }

    /// Checks every ledger invariant on one consistent state.
    pub async fn verify(&self) -> Result<VerifyReport, Failure> {
        let report = self.store.verify().await?;
        if !report.ok() {
            tracing::error!(violations = report.violation_count, "ledger verification found violations");
        }
        Ok(report)
    }

    /// The newest postings, newest first (the operator console).
    pub async fn recent_postings(&self, limit: usize) -> Result<Vec<PostingRecord>, Failure> {
        self.store.recent_postings(limit).await
    }

    /// The trades with the newest activity (the operator console).
    pub async fn recent_trades(&self, max_shops: usize, per_shop: usize) -> Result<Vec<TradeRecord>, Failure> {
        self.store.recent_trades(max_shops, per_shop).await
    }
}
