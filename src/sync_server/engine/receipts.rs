//! The operator's receipt-signing keys as the engine offers them: the
//! published keys, rotation, and what a dispute over a settled trade needs
//! (the trade with its receipt, the handset key enrolled now, the operator
//! key that countersigned).

use std::sync::Arc;

use crate::domain::receipt::PublishedKey;
use crate::domain::{TradeId, TradeState};
use crate::store::{HandsetRecord, Receipt, TradeRecord};

use super::super::receipt_keys::RotateError;
use super::{now, Engine, EngineError};

/// Why a rotation was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RotateRefusal {
    /// The keyring holds as many keys as it may (the message says how many).
    TooManyKeys(String),
}

/// Why there is nothing to dispute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisputeRefusal {
    UnknownTrade,
    /// The trade is in this state and has no receipt.
    NoReceipt(TradeState),
}

/// A settled trade and what its dispute report shows besides it.
#[derive(Debug, Clone)]
pub struct Dispute {
    pub trade: TradeRecord,
    /// The handset key enrolled for the payer now.
    pub enrolled: Option<HandsetRecord>,
    /// The public key that countersigned the receipt (`None` for a receipt
    /// from before countersigning, or a key no longer known).
    pub receipt_public_key: Option<[u8; 32]>,
}

impl Engine {
    /// Every receipt-signing public key, active first, then retired.
    pub fn receipt_keys(&self) -> Vec<PublishedKey> {
        self.receipts.published()
    }

    /// Makes a fresh receipt-signing key the active one; the old one stays
    /// published as retired. The key file is rewritten first (off the
    /// async threads), so a failure changes nothing.
    pub async fn rotate_receipt_key(self: &Arc<Self>) -> Result<Vec<PublishedKey>, EngineError<RotateRefusal>> {
        let engine = self.clone();
        let rotated = tokio::task::spawn_blocking(move || engine.receipts.rotate(now()))
            .await
            .map_err(|e| EngineError::Internal(format!("rotation task: {e}")))?;
        rotated.map_err(|e| match e {
            RotateError::TooMany(m) => EngineError::Refused(RotateRefusal::TooManyKeys(m)),
            RotateError::Failed(m) => EngineError::Internal(m),
        })
    }

    /// What a dispute over trade `id` needs: the trade with its receipt,
    /// the payer's handset key enrolled now, and the countersigning key.
    pub async fn dispute(&self, id: TradeId) -> Result<Dispute, EngineError<DisputeRefusal>> {
        let trade = self.store.trade(&id).await?.ok_or(EngineError::Refused(DisputeRefusal::UnknownTrade))?;
        let receipt_public_key = match &trade.receipt {
            None => return Err(EngineError::Refused(DisputeRefusal::NoReceipt(trade.state))),
            Some(Receipt::Countersigned { key_id, .. }) => self.receipts.public_key(*key_id),
            Some(Receipt::Legacy { .. }) => None,
        };
        let enrolled = self.store.handset(&trade.request.payer).await?;
        tracing::info!(trade_id = %trade.id, "dispute report made");
        Ok(Dispute { trade, enrolled, receipt_public_key })
    }
}
