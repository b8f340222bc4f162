//! Reads for the operator console in the sled backend: the newest postings
//! and the newest trades. Trade keys are random, so there is no global
//! order of trades in the store; the newest trades of each shop are found
//! from the end of its event log (events are numbered per shop), which is
//! where a trade's every change is written.

use std::collections::HashSet;

use crate::store::records::{PostingRecord, ShopRecord, TradeRecord};
use crate::store::Failure;

use super::codec::{self, StoredEvent};
use super::tx::T;
use super::{io, keys, SledStore};

impl SledStore {
    /// The newest `limit` postings, newest first.
    pub(crate) fn newest_postings(&self, limit: usize) -> Result<Vec<PostingRecord>, Failure> {
        let mut out = Vec::new();
        for item in self.tree(T::Postings).iter().rev().take(limit) {
            let (_, v) = item.map_err(io)?;
            out.push(codec::decode(&v)?);
        }
        Ok(out)
    }

    /// The trades behind the newest `per_shop` events of each of the first
    /// `max_shops` shops (in shop id order), each once, as they are now.
    /// Newest activity first.
    pub(crate) fn newest_trades(&self, max_shops: usize, per_shop: usize) -> Result<Vec<TradeRecord>, Failure> {
        let mut ids = Vec::new();
        let mut seen = HashSet::new();
        for item in self.tree(T::Shops).iter().take(max_shops) {
            let (_, v) = item.map_err(io)?;
            let shop: ShopRecord = codec::decode(&v)?;
            let head = self.shared.heads.subscribe(&shop.id).map_or(0, |h| *h.borrow());
            if head == 0 {
                continue;
            }
            let range = keys::event(&shop.id, 1)..=keys::event(&shop.id, head);
            let mut distinct = 0usize;
            for event in self.tree(T::Events).range(range).rev() {
                if distinct >= per_shop {
                    break;
                }
                let (_, v) = event.map_err(io)?;
                let trade = match codec::decode_event(&v)? {
                    StoredEvent::Whole(e) => e.trade.id,
                    StoredEvent::CompactV2(c) | StoredEvent::Compact(c) => c.trade,
                };
                if seen.insert(trade) {
                    distinct += 1;
                    ids.push(trade);
                }
            }
        }
        let mut trades = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(trade) = self.get::<TradeRecord>(T::Trades, id.as_bytes())? {
                trades.push(trade);
            }
        }
        let latest = |t: &TradeRecord| t.finished_at.unwrap_or(t.created_at);
        trades.sort_by(|a, b| latest(b).cmp(&latest(a)).then(b.created_at.cmp(&a.created_at)));
        Ok(trades)
    }
}
