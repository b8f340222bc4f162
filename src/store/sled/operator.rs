//! The operator's daily tools in the sled backend: shops and carriers a
//! page at a time, suspending and resuming a shop, rotating a party's
//! credential, and any trade's whole history.

use crate::domain::{CarrierId, Principal, ShopId, TradeId, UnixMs};
use crate::store::records::{CarrierRecord, EventRecord, PostingRecord, ShopRecord, TradeRecord};
use crate::store::{Failure, RotateCredentialRefusal, ShopStatus, SuspendRefusal, TradeHistory};

use super::codec::{self, HistoryRef};
use super::tx::{corrupt, refuse, Step, Tx, T};
use super::writer::{Admissions, Cx, WriteOp};
use super::{io, keys, Shared, SledStore};

/// Suspends (or resumes) a shop.
pub(crate) struct SetSuspended {
    pub shop: ShopId,
    pub suspended: bool,
    pub now: UnixMs,
}

impl WriteOp for SetSuspended {
    type Output = ShopStatus;
    type Refusal = SuspendRefusal;

    fn apply(&self, tx: &Tx, _cx: &mut Cx, _: &Admissions) -> Step<ShopStatus, SuspendRefusal> {
        let Some(shop) = tx.get::<ShopRecord>(T::Shops, self.shop.as_str().as_bytes())? else {
            return refuse(SuspendRefusal::UnknownShop);
        };
        let key = keys::suspended(&self.shop);
        let before: Option<u64> = tx.get(T::Meta, &key)?;
        let suspended_at = match (self.suspended, before) {
            // Suspending twice keeps the first instant.
            (true, Some(at)) => Some(UnixMs(at)),
            (true, None) => {
                tx.put(T::Meta, &key, &self.now.0)?;
                Some(self.now)
            }
            (false, _) => {
                tx.del(T::Meta, &key)?;
                None
            }
        };
        Ok(ShopStatus { shop, suspended_at })
    }
}

/// Replaces every credential of a shop or carrier with one new one. The
/// old credentials are found by a scan before the transaction (which
/// cannot scan); the writer is the only writer, so the transaction sees
/// exactly what the scan saw.
pub(crate) struct RotateCredential {
    pub party: Principal,
    pub token_hash: [u8; 32],
    pub old: Vec<Vec<u8>>,
}

impl WriteOp for RotateCredential {
    type Output = ();
    type Refusal = RotateCredentialRefusal;

    fn prepare(&mut self, shared: &Shared) -> Step<(), RotateCredentialRefusal> {
        for item in shared.tree(T::Credentials).iter() {
            let (k, v) = item.map_err(io)?;
            if codec::decode::<Principal>(&v)? == self.party {
                self.old.push(k.to_vec());
            }
        }
        Ok(())
    }

    fn groupable(&self) -> bool {
        false
    }

    fn apply(&self, tx: &Tx, _cx: &mut Cx, _: &Admissions) -> Step<(), RotateCredentialRefusal> {
        let exists = match &self.party {
            Principal::Shop(id) => tx.get::<ShopRecord>(T::Shops, id.as_str().as_bytes())?.is_some(),
            Principal::Carrier(id) => tx.get::<CarrierRecord>(T::Carriers, id.as_str().as_bytes())?.is_some(),
            Principal::Admin => false,
        };
        if !exists {
            return refuse(RotateCredentialRefusal::UnknownParty);
        }
        if tx.get::<Principal>(T::Credentials, &self.token_hash)?.is_some() {
            return corrupt("a fresh credential collides with a stored one");
        }
        for old in &self.old {
            tx.del(T::Credentials, old)?;
        }
        tx.put(T::Credentials, &self.token_hash, &self.party)?;
        Ok(())
    }
}

/// The records of tree `t` with keys after `after` (exclusive), at most
/// `limit`.
fn page<V: codec::Record>(shared: &Shared, t: T, after: Option<&str>, limit: usize) -> Result<Vec<V>, Failure> {
    let iter = match after {
        Some(after) => {
            let mut start = after.as_bytes().to_vec();
            start.push(0);
            shared.tree(t).range(start..)
        }
        None => shared.tree(t).range::<&[u8], _>(..),
    };
    let mut out = Vec::new();
    for item in iter.take(limit) {
        let (_, v) = item.map_err(io)?;
        out.push(codec::decode(&v)?);
    }
    Ok(out)
}

impl SledStore {
    /// Shops after `after` in id order, at most `limit`, with their
    /// suspension.
    pub(crate) fn shops_after(&self, after: Option<&ShopId>, limit: usize) -> Result<Vec<ShopStatus>, Failure> {
        let shops: Vec<ShopRecord> = page(&self.shared, T::Shops, after.map(ShopId::as_str), limit)?;
        let mut out = Vec::with_capacity(shops.len());
        for shop in shops {
            let suspended_at = self.get::<u64>(T::Meta, &keys::suspended(&shop.id))?.map(UnixMs);
            out.push(ShopStatus { shop, suspended_at });
        }
        Ok(out)
    }

    pub(crate) fn carriers_after(
        &self,
        after: Option<&CarrierId>,
        limit: usize,
    ) -> Result<Vec<CarrierRecord>, Failure> {
        page(&self.shared, T::Carriers, after.map(CarrierId::as_str), limit)
    }

    /// The trade with its events and postings, each at most `limit`, in
    /// the order they happened: from the refs its record carries and from
    /// the index keys of both layouts (trades whose refs were full, and
    /// stores written before trade records carried refs).
    pub(crate) fn history_of(&self, id: &TradeId, limit: usize) -> Result<Option<TradeHistory>, Failure> {
        let Some(bytes) = self.tree(T::Trades).get(id.as_bytes()).map_err(io)? else {
            return Ok(None);
        };
        let (trade, mut items) = codec::decode_trade_with_refs(&bytes)?;
        for prefix in [keys::net::trade_history_by_id(id), keys::net::trade_history(id, trade.created_at)] {
            for item in self.tree(T::Network).scan_prefix(&prefix) {
                let (k, _) = item.map_err(io)?;
                let rest = k.get(prefix.len()..).unwrap_or_default();
                let (Some(&tag), Some(n)) = (rest.first(), rest.get(1..).and_then(|b| <[u8; 8]>::try_from(b).ok()))
                else {
                    return corrupt("trade history key");
                };
                items.push(HistoryRef::of(tag, u64::from_be_bytes(n))?);
            }
        }
        // Events before postings, each in the order they happened (event
        // numbers and posting ids only grow).
        items.sort_unstable();
        items.dedup();
        let mut events: Vec<EventRecord> = Vec::new();
        let mut postings: Vec<PostingRecord> = Vec::new();
        for item in items {
            match item {
                HistoryRef::Event(n) if events.len() < limit => {
                    let before = n.checked_sub(1).ok_or_else(|| Failure::Corrupt("event 0".into()))?;
                    let event = self.events_between(&trade.shop, before, n, 1)?;
                    match event.into_iter().next() {
                        Some(e) if e.trade.id == *id => events.push(e),
                        _ => return corrupt(format!("trade {id}: its event {n} is missing or another trade's")),
                    }
                }
                HistoryRef::Posting(n) if postings.len() < limit => {
                    match self.get::<PostingRecord>(T::Postings, &n.to_be_bytes())? {
                        Some(p) if p.trade == Some(*id) => postings.push(p),
                        _ => return corrupt(format!("trade {id}: its posting {n} is missing or another trade's")),
                    }
                }
                HistoryRef::Event(_) | HistoryRef::Posting(_) => {}
            }
        }
        Ok(Some(TradeHistory { trade, events, postings }))
    }
}

/// The meta key marking that the per-trade history index is complete: set
/// once every event and posting written before the index existed has its
/// index key (stores made before issue 16 have none).
pub(crate) const HISTORY_INDEXED: &[u8] = b"trade_history_indexed";

/// Builds the per-trade history index for whatever has no index key yet,
/// from the events and postings themselves, unless the store is marked as
/// indexed. Runs at open, before the writer starts; the inserts are
/// idempotent, so a crash part-way only repeats them at the next open. The
/// caller makes the result durable. Returns the keys written.
pub(crate) fn index_trade_history(shared: &Shared) -> Result<usize, Failure> {
    let meta = shared.tree(T::Meta);
    if meta.get(HISTORY_INDEXED).map_err(io)?.is_some() {
        return Ok(0);
    }
    let index = shared.tree(T::Network);
    let created_at = |trade: &TradeId| -> Result<UnixMs, Failure> {
        match shared.tree(T::Trades).get(trade.as_bytes()).map_err(io)? {
            Some(v) => Ok(codec::decode::<TradeRecord>(&v)?.created_at),
            None => corrupt(format!("trade {trade}: named by an event or posting, but missing")),
        }
    };
    let mut written = 0usize;
    for item in shared.tree(T::Events).iter() {
        let (_, v) = item.map_err(io)?;
        let (trade, seq) = match codec::decode_event(&v)? {
            codec::StoredEvent::Whole(e) => (e.trade.id, e.seq),
            codec::StoredEvent::CompactV2(c) | codec::StoredEvent::Compact(c) => (c.trade, c.seq),
        };
        index.insert(keys::net::trade_event(&trade, created_at(&trade)?, seq), &[][..]).map_err(io)?;
        written += 1;
    }
    for item in shared.tree(T::Postings).iter() {
        let (_, v) = item.map_err(io)?;
        let posting: PostingRecord = codec::decode(&v)?;
        if let Some(trade) = posting.trade {
            index
                .insert(keys::net::trade_posting(&trade, created_at(&trade)?, posting.posting_id), &[][..])
                .map_err(io)?;
            written += 1;
        }
    }
    meta.insert(HISTORY_INDEXED, &1u64.to_be_bytes()).map_err(io)?;
    Ok(written)
}
