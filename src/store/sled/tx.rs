//! The transaction helper: typed access to a transaction's view of every
//! tree, and the `Step` every write returns. A step stops with the
//! operation's own refusal (the transaction aborts, nothing is written),
//! a failure of the store, or sled's own conflict or storage error (a
//! conflict re-runs the closure, so it only reads and writes the view and
//! decides with pure domain functions).

use sled::transaction::{TransactionalTree, UnabortableTransactionError};

use super::codec;
use super::hot::Hot;
use crate::store::Failure;

/// The trees. The order is the index into a transaction's view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum T {
    Meta = 0,
    Credentials,
    Shops,
    Carriers,
    Subscribers,
    Handsets,
    Registers,
    Accounts,
    Trades,
    Postings,
    Events,
    Outbox,
    Idempotency,
    Deadlines,
    /// Carrier prefixes, terms, shop acceptances, cap use, bill lines and
    /// payout entries, each under its own first key byte (`keys::net`).
    Network,
    /// Lease starts and stops (`keys::lease`).
    Leases,
}

pub(crate) const TREE_NAMES: [&str; 16] = [
    "meta",
    "credentials",
    "shops",
    "carriers",
    "subscribers",
    "handsets",
    "registers",
    "accounts",
    "trades",
    "postings",
    "events",
    "outbox",
    "idempotency",
    "deadlines",
    "network",
    "leases",
];

/// What stops any step besides a refusal: a failure of the store (a
/// corrupt record, say), or sled's conflict (the closure re-runs) or
/// storage error.
pub(crate) enum Fault {
    Fail(Failure),
    Sled(UnabortableTransactionError),
}

impl From<UnabortableTransactionError> for Fault {
    fn from(e: UnabortableTransactionError) -> Self {
        Fault::Sled(e)
    }
}

impl From<Failure> for Fault {
    fn from(f: Failure) -> Self {
        Fault::Fail(f)
    }
}

/// A step that never refuses (reads, writes, counters, events, outbox).
pub(crate) type TxResult<T> = Result<T, Fault>;

/// Why an operation's step did not finish.
pub(crate) enum Stop<R> {
    /// The operation refuses, for the caller's reason.
    Refuse(R),
    Fault(Fault),
}

impl<R> From<Fault> for Stop<R> {
    fn from(f: Fault) -> Self {
        Stop::Fault(f)
    }
}

impl<R> From<Failure> for Stop<R> {
    fn from(f: Failure) -> Self {
        Stop::Fault(Fault::Fail(f))
    }
}

impl<R> From<UnabortableTransactionError> for Stop<R> {
    fn from(e: UnabortableTransactionError) -> Self {
        Stop::Fault(Fault::Sled(e))
    }
}

impl<R> Stop<R> {
    /// The same stop for an operation with another refusal type.
    pub(crate) fn map<S>(self, refusal: impl FnOnce(R) -> S) -> Stop<S> {
        match self {
            Stop::Refuse(r) => Stop::Refuse(refusal(r)),
            Stop::Fault(f) => Stop::Fault(f),
        }
    }
}

/// A step of an operation whose refusal is `R`.
pub(crate) type Step<T, R> = Result<T, Stop<R>>;

pub(crate) fn refuse<T, R>(refusal: R) -> Step<T, R> {
    Err(Stop::Refuse(refusal))
}

/// A record that cannot be what it is: the store's fault, never the caller's.
pub(crate) fn corrupt<T, E: From<Failure>>(what: impl Into<String>) -> Result<T, E> {
    Err(E::from(Failure::Corrupt(what.into())))
}

/// Typed access to the transaction's view of every tree, and to what the
/// writer keeps in memory ([`Hot`]).
pub(crate) struct Tx<'a> {
    pub(crate) trees: &'a [TransactionalTree],
    pub(crate) hot: &'a Hot,
}

impl Tx<'_> {
    pub(crate) fn tree(&self, t: T) -> TxResult<&TransactionalTree> {
        match self.trees.get(t as usize) {
            Some(tree) => Ok(tree),
            None => corrupt(format!("tree {t:?} missing from transaction")),
        }
    }

    pub(crate) fn get<V: codec::Record>(&self, t: T, key: &[u8]) -> TxResult<Option<V>> {
        match self.tree(t)?.get(key)? {
            Some(v) => Ok(Some(codec::decode(&v)?)),
            None => Ok(None),
        }
    }

    pub(crate) fn put<V: codec::Record>(&self, t: T, key: &[u8], value: &V) -> TxResult<()> {
        let bytes = codec::encode(value)?;
        self.tree(t)?.insert(key, bytes)?;
        Ok(())
    }

    pub(crate) fn del(&self, t: T, key: &[u8]) -> TxResult<()> {
        self.tree(t)?.remove(key)?;
        Ok(())
    }

    /// Next value of a named counter (1, 2, 3, …), stored big-endian.
    pub(crate) fn next(&self, name: &[u8]) -> TxResult<u64> {
        let meta = self.tree(T::Meta)?;
        let current = match meta.get(name)? {
            Some(v) => match <[u8; 8]>::try_from(v.as_ref()) {
                Ok(b) => u64::from_be_bytes(b),
                Err(_) => return corrupt("counter width"),
            },
            None => 0,
        };
        let Some(next) = current.checked_add(1) else {
            return corrupt("counter overflow");
        };
        meta.insert(name, &next.to_be_bytes())?;
        Ok(next)
    }
}
