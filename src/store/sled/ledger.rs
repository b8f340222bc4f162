//! Money in the sled backend: posting sets (the only way money moves),
//! wallet top-ups, and the reads of accounts and postings.

use crate::domain::{AccountName, Balance, PostingSet, TradeId, UnixMs};
use crate::store::records::{AccountRecord, Funding, PostingKind, PostingRecord, SubscriberRecord};
use crate::store::{Failure, PostingRefusal, TopUp, TopUpRefusal, ToppedUp};

use super::tx::{corrupt, refuse, Step, Tx, T};
use super::writer::{Admissions, Cx, WriteOp};
use super::{codec, io, keys, Shared};

/// Writes a balanced posting set: account totals and immutable posting
/// records. Refuses (aborting the whole transaction) if a total would
/// overflow or a never-negative account would go below zero. Returns the
/// set id and the first posting id. `trade` is the trade the set belongs
/// to, if any, and its creation time (for its history index).
pub(crate) fn post(
    tx: &Tx,
    set: &PostingSet,
    trade: Option<(TradeId, UnixMs)>,
    kind: PostingKind,
    now: UnixMs,
) -> Step<(u64, u64), PostingRefusal> {
    let set_id = tx.next(b"posting_set")?;
    let mut first = None;
    for leg in set.legs() {
        let key = keys::account(&leg.account);
        let mut account = tx
            .get::<AccountRecord>(T::Accounts, &key)?
            .unwrap_or(AccountRecord { name: leg.account.clone(), balance: Balance::EMPTY });
        account.balance = match account.balance.post(leg.side, leg.amount) {
            Ok(b) => b,
            Err(_) => return refuse(PostingRefusal::TotalOverflows(leg.account.clone())),
        };
        if account.name.must_not_go_negative() && account.balance.credits < account.balance.debits {
            return refuse(PostingRefusal::BelowZero(leg.account.clone()));
        }
        tx.put(T::Accounts, &key, &account)?;
        let posting_id = tx.next(b"posting")?;
        first.get_or_insert(posting_id);
        let record = PostingRecord {
            posting_id,
            set_id,
            account: leg.account.clone(),
            side: leg.side,
            amount: leg.amount,
            trade: trade.map(|(id, _)| id),
            kind,
            at: now,
        };
        tx.put(T::Postings, &posting_id.to_be_bytes(), &record)?;
        if let Some((trade, created_at)) = &trade {
            // The trade's own history, for the operator.
            super::history::note(tx, trade, *created_at, super::codec::HistoryRef::Posting(posting_id))?;
        }
    }
    match first {
        Some(first) => Ok((set_id, first)),
        None => corrupt("empty posting set"),
    }
}

impl WriteOp for TopUp {
    type Output = ToppedUp;
    type Refusal = TopUpRefusal;

    fn apply(&self, tx: &Tx, _cx: &mut Cx, _: &Admissions) -> Step<ToppedUp, TopUpRefusal> {
        match tx.get::<SubscriberRecord>(T::Subscribers, self.number.as_str().as_bytes())? {
            Some(s) => match s.funding {
                Funding::Wallet => {}
                Funding::CarrierBill { .. } => return refuse(TopUpRefusal::CarrierBilled),
            },
            None => return refuse(TopUpRefusal::UnknownSubscriber),
        }
        let wallet = AccountName::Wallet(self.number.clone(), self.currency);
        let set = match PostingSet::transfer(AccountName::SystemFunding(self.currency), wallet.clone(), self.amount) {
            Ok(set) => set,
            Err(e) => return refuse(TopUpRefusal::Postings(PostingRefusal::Invalid(e))),
        };
        let (_, first) =
            post(tx, &set, None, PostingKind::TopUp, self.now).map_err(|s| s.map(TopUpRefusal::Postings))?;
        let Some(account) = tx.get::<AccountRecord>(T::Accounts, &keys::account(&wallet))? else {
            return corrupt("wallet missing after posting");
        };
        Ok(ToppedUp { account, posting_id: first })
    }
}

/// Accounts whose name starts with `prefix`, at most `limit`: run on the
/// writer thread, so one page is one consistent state.
pub(crate) fn accounts_on_writer(shared: &Shared, prefix: &str, limit: usize) -> Result<Vec<AccountRecord>, Failure> {
    let mut out = Vec::new();
    for item in shared.tree(T::Accounts).scan_prefix(prefix.as_bytes()).take(limit) {
        let (_, v) = item.map_err(io)?;
        out.push(codec::decode(&v)?);
    }
    Ok(out)
}

/// Postings with ids above `after`, at most `limit`.
pub(crate) fn postings_after(shared: &Shared, after: u64, limit: usize) -> Result<Vec<PostingRecord>, Failure> {
    let Some(start) = after.checked_add(1) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for item in shared.tree(T::Postings).range(start.to_be_bytes()..).take(limit) {
        let (_, v) = item.map_err(io)?;
        out.push(codec::decode(&v)?);
    }
    Ok(out)
}
