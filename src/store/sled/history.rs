//! A trade's history (its events and postings, for the operator's
//! `GetTradeHistory`), kept in the trade's own record: each event and
//! posting adds a ref to the record, which the same transaction writes
//! anyway. Five index keys per settled trade, written at places all over
//! the index, were about half of the store's bytes per trade (issue 14).
//! A trade whose refs are full ([`codec::MAX_TRADE_REFS`], about ten
//! refunds) gets index keys for the rest, as stores written before kept
//! for all (`keys::net::trade_event`); the reader merges both.

use crate::domain::{TradeId, UnixMs};
use crate::store::TradeRecord;

use super::codec::{self, HistoryRef};
use super::keys;
use super::tx::{corrupt, Tx, TxResult, T};

/// Writes a trade's record, keeping the history refs it already has. Every
/// write of a trade record goes through here (`codec::encode` refuses to
/// compile for trade records).
pub(crate) fn put_trade(tx: &Tx, trade: &TradeRecord) -> TxResult<()> {
    let trades = tx.tree(T::Trades)?;
    let key = trade.id.as_bytes();
    let bytes = match trades.get(key)? {
        Some(old) => codec::encode_trade(trade, codec::trade_refs(&old)?)?,
        None => codec::encode_trade(trade, &[])?,
    };
    trades.insert(key, bytes)?;
    Ok(())
}

/// Adds an event or posting to the history of a trade already written in
/// this transaction's view: to its record while its refs have room, else
/// as an index key.
pub(crate) fn note(tx: &Tx, trade: &TradeId, created_at: UnixMs, item: HistoryRef) -> TxResult<()> {
    let trades = tx.tree(T::Trades)?;
    let Some(bytes) = trades.get(trade.as_bytes())? else {
        return corrupt(format!("trade {trade}: history written before its record"));
    };
    match codec::add_trade_ref(&bytes, item)? {
        Some(longer) => {
            trades.insert(trade.as_bytes(), longer)?;
        }
        None => {
            let key = match item {
                HistoryRef::Event(seq) => keys::net::trade_event(trade, created_at, seq),
                HistoryRef::Posting(id) => keys::net::trade_posting(trade, created_at, id),
            };
            tx.tree(T::Network)?.insert(key, &[][..])?;
        }
    }
    Ok(())
}
