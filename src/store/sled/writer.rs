//! The single writer and its syncer: two threads in a pipeline.
//!
//! The writer takes jobs from a bounded queue: writes, each a typed
//! [`WriteOp`], and reads that must see the writer's state (a consistent
//! page of accounts, the ledger's verification). It applies the writes
//! queued together as one sled transaction (or each alone if one of them
//! refuses), runs a read at its place in the queue (after the writes before
//! it), then hands the applied group to the syncer and goes on with the
//! next. The syncer makes everything applied so far durable (sled flush +
//! fdatasync of the data file) and only then answers the jobs of the groups
//! it covered. So group n+1 is applied while group n is being synced, one
//! fsync covers every group applied before it began, and no job is
//! answered before its own group is durable. A failed sync stops all
//! further writes and answers: nothing applied after it is acknowledged.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::File;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;

use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;
use tokio::sync::{mpsc, oneshot};

use crate::domain::{ShopId, SubscriberNumber, TradeId};
use crate::store::{Failure, OfferGate, StoreError};

use super::hot::Hot;
use super::tx::{Fault, Step, Stop, Tx};
use super::{metric_names, Durability, Shared, SyncFault};

/// Most jobs applied in one group. Bounds the latency a job can add to the
/// others in its group.
pub const MAX_GROUP: usize = 512;

/// How many jobs may wait for the writer; senders wait beyond.
pub const WRITE_QUEUE_DEPTH: usize = 4096;

/// Applied groups that may wait for the syncer. While they wait the writer
/// stops taking jobs, so the queue (and the next group) fills instead.
const PIPELINE_DEPTH: usize = 2;

/// What the writer learns while applying a group, besides each job's own
/// outcome.
#[derive(Default)]
pub(crate) struct Cx {
    /// Shops whose event head moved (published once the group is durable).
    pub heads: Vec<(ShopId, u64)>,
    /// Each shop's next event number after this transaction's own events.
    pub next_event: HashMap<ShopId, u64>,
}

/// One write, typed: its output and its refusal are its own.
pub(crate) trait WriteOp: Send + 'static {
    type Output: Send + 'static;
    type Refusal: Send + 'static;

    /// Work on the writer thread just before the transaction, for what a
    /// sled transaction cannot do (range scans). The writer is the only
    /// writer, so the transaction sees exactly what this read.
    fn prepare(&mut self, _shared: &Shared) -> Step<(), Self::Refusal> {
        Ok(())
    }

    /// Whether it may share a transaction with other writes: not if it
    /// prepares (its reads would not see the group's earlier writes).
    fn groupable(&self) -> bool {
        true
    }

    /// The write itself, inside the transaction; may run more than once.
    fn apply(&self, tx: &Tx, cx: &mut Cx, admissions: &Admissions) -> Step<Self::Output, Self::Refusal>;
}

/// Why a job's transaction aborted: its refusal (kept by the job) or a
/// failure of the store.
pub(crate) enum Abort {
    Refused,
    Failed(Failure),
}

type Outcome<O> = Result<<O as WriteOp>::Output, StoreError<<O as WriteOp>::Refusal>>;

/// A queued write with its typed reply and, once applied, its outcome.
struct Queued<O: WriteOp> {
    op: O,
    reply: oneshot::Sender<Outcome<O>>,
    outcome: RefCell<Option<Outcome<O>>>,
}

/// The writer's view of a write, whatever its types.
pub(crate) trait Job: Send {
    fn groupable(&self) -> bool;
    fn prepare(&mut self, shared: &Shared) -> bool;
    fn apply(&self, tx: &Tx, cx: &mut Cx, admissions: &Admissions) -> Result<(), ConflictableTransactionError<Abort>>;
    /// Records a failure of the transaction it was applied in.
    fn failed(&self, failure: Failure);
    fn answer(self: Box<Self>, synced: Result<(), Failure>);
}

impl<O: WriteOp> Job for Queued<O> {
    fn groupable(&self) -> bool {
        self.op.groupable()
    }

    /// False when preparation already decided the outcome.
    fn prepare(&mut self, shared: &Shared) -> bool {
        match self.op.prepare(shared) {
            Ok(()) => true,
            Err(stop) => {
                let outcome = match stop {
                    Stop::Refuse(r) => StoreError::Refused(r),
                    Stop::Fault(Fault::Fail(f)) => StoreError::Failed(f),
                    Stop::Fault(Fault::Sled(e)) => StoreError::Failed(Failure::Io(format!("{e:?}"))),
                };
                *self.outcome.borrow_mut() = Some(Err(outcome));
                false
            }
        }
    }

    fn apply(&self, tx: &Tx, cx: &mut Cx, admissions: &Admissions) -> Result<(), ConflictableTransactionError<Abort>> {
        match self.op.apply(tx, cx, admissions) {
            Ok(output) => {
                *self.outcome.borrow_mut() = Some(Ok(output));
                Ok(())
            }
            Err(Stop::Refuse(r)) => {
                *self.outcome.borrow_mut() = Some(Err(StoreError::Refused(r)));
                Err(ConflictableTransactionError::Abort(Abort::Refused))
            }
            Err(Stop::Fault(Fault::Fail(f))) => Err(ConflictableTransactionError::Abort(Abort::Failed(f))),
            Err(Stop::Fault(Fault::Sled(e))) => Err(e.into()),
        }
    }

    fn failed(&self, failure: Failure) {
        *self.outcome.borrow_mut() = Some(Err(StoreError::Failed(failure)));
    }

    fn answer(self: Box<Self>, synced: Result<(), Failure>) {
        let outcome = match synced {
            Ok(()) => self.outcome.into_inner().unwrap_or_else(|| {
                Err(StoreError::Failed(Failure::Corrupt("the writer answered a write it never applied".into())))
            }),
            Err(f) => Err(StoreError::Failed(f)),
        };
        // A caller that gave up is not an error here.
        let _ = self.reply.send(outcome);
    }
}

/// A read run on the writer thread, at its place in the queue.
pub(crate) trait ReadJob: Send {
    fn run(&mut self, shared: &Shared);
    fn answer(self: Box<Self>, synced: Result<(), Failure>);
}

struct QueuedRead<T, F> {
    read: Option<F>,
    reply: oneshot::Sender<Result<T, Failure>>,
    outcome: Option<Result<T, Failure>>,
}

impl<T: Send + 'static, F: FnOnce(&Shared) -> Result<T, Failure> + Send + 'static> ReadJob for QueuedRead<T, F> {
    fn run(&mut self, shared: &Shared) {
        if let Some(read) = self.read.take() {
            self.outcome = Some(read(shared));
        }
    }

    fn answer(self: Box<Self>, synced: Result<(), Failure>) {
        let outcome = match synced {
            Ok(()) => {
                self.outcome.unwrap_or_else(|| Err(Failure::Corrupt("the writer answered a read it never ran".into())))
            }
            Err(f) => Err(f),
        };
        let _ = self.reply.send(outcome);
    }
}

/// What the writer's queue carries: writes, and reads that must see the
/// writer's state (their own path: a read is never a write).
pub(crate) enum Queue {
    Write(Box<dyn Job>),
    Read(Box<dyn ReadJob>),
}

impl Queue {
    /// A write and the receiver of its outcome.
    pub(crate) fn write<O: WriteOp>(op: O) -> (Queue, oneshot::Receiver<Outcome<O>>) {
        let (reply, rx) = oneshot::channel();
        (Queue::Write(Box::new(Queued { op, reply, outcome: RefCell::new(None) })), rx)
    }

    /// A read on the writer thread and the receiver of its result.
    pub(crate) fn read<T: Send + 'static>(
        read: impl FnOnce(&Shared) -> Result<T, Failure> + Send + 'static,
    ) -> (Queue, oneshot::Receiver<Result<T, Failure>>) {
        let (reply, rx) = oneshot::channel();
        (Queue::Read(Box::new(QueuedRead { read: Some(read), reply, outcome: None })), rx)
    }

    fn refuse(self) {
        match self {
            Queue::Write(job) => job.answer(Err(Failure::Stopped)),
            Queue::Read(job) => job.answer(Err(Failure::Stopped)),
        }
    }

    fn answer(self, synced: Result<(), Failure>) {
        match self {
            Queue::Write(job) => job.answer(synced),
            Queue::Read(job) => job.answer(synced),
        }
    }
}

/// The offer gates' verdicts within one write group, by trade id. A
/// transaction closure may re-run, and a group in which one write refuses
/// is applied again one write at a time, so the same CreateTrade can reach
/// its gate more than once; the first verdict is reused, so admitting
/// spends the allowance once. (Trade ids are fresh per request.) Only the
/// writer thread uses it.
#[derive(Default)]
pub(crate) struct Admissions(RefCell<HashMap<TradeId, Result<(), String>>>);

impl Admissions {
    pub(crate) fn admit(&self, trade: TradeId, gate: &OfferGate, subscriber: &SubscriberNumber) -> Result<(), String> {
        if let Some(verdict) = self.0.borrow().get(&trade) {
            return verdict.clone();
        }
        let verdict = gate.admit(subscriber);
        self.0.borrow_mut().insert(trade, verdict.clone());
        verdict
    }
}

/// Applies one write in its own transaction (after its preparation).
fn apply_one(
    shared: &Shared,
    hot: &Hot,
    job: &mut Box<dyn Job>,
    admissions: &Admissions,
    heads: &mut Vec<(ShopId, u64)>,
) {
    if !job.prepare(shared) {
        return;
    }
    let trees: Vec<&sled::Tree> = shared.trees.iter().collect();
    let result = trees.as_slice().transaction(|view| {
        let tx = Tx { trees: view.as_slice(), hot };
        let mut cx = Cx::default();
        job.apply(&tx, &mut cx, admissions)?;
        Ok(cx.heads)
    });
    match result {
        Ok(moved) => {
            hot.committed(&moved);
            heads.extend(moved);
        }
        // The job holds its refusal.
        Err(TransactionError::Abort(Abort::Refused)) => {}
        Err(TransactionError::Abort(Abort::Failed(f))) => job.failed(f),
        Err(TransactionError::Storage(e)) => job.failed(Failure::Io(e.to_string())),
    }
}

/// Applies writes, in order, as one sled transaction when every one of
/// them can share one and each succeeds; otherwise (one refuses, or needs a
/// read outside the transaction) each is applied on its own as by
/// [`apply_one`], so every write gets exactly the outcome it would have had
/// alone.
///
/// Why: sled 0.34 rolls its IO buffer around every transaction
/// (`PageCache::pin_log`), so each transaction costs its own log write and
/// `sync_file_range` however the group is synced afterwards; one
/// transaction per group pays that once (issue 6's profile). Later writes
/// read earlier ones' (sled transactions read their own writes), so the
/// results equal applying them one after another; the group commits
/// atomically, and nothing is acknowledged before the group is durable.
fn apply_writes(shared: &Shared, hot: &Hot, jobs: &mut [Box<dyn Job>], heads: &mut Vec<(ShopId, u64)>) {
    let admissions = Admissions::default();
    if jobs.len() < 2 || !jobs.iter().all(|j| j.groupable()) {
        for job in jobs.iter_mut() {
            apply_one(shared, hot, job, &admissions, heads);
        }
        return;
    }
    let trees: Vec<&sled::Tree> = shared.trees.iter().collect();
    let result = trees.as_slice().transaction(|view| {
        let tx = Tx { trees: view.as_slice(), hot };
        let mut cx = Cx::default();
        for job in jobs.iter() {
            job.apply(&tx, &mut cx, &admissions)?;
        }
        Ok(cx.heads)
    });
    match result {
        Ok(moved) => {
            hot.committed(&moved);
            heads.extend(moved);
        }
        // Nothing of the group was written: apply each alone, so the one
        // that refused gets its refusal and the others their outcomes.
        Err(_) => {
            for job in jobs.iter_mut() {
                apply_one(shared, hot, job, &admissions, heads);
            }
        }
    }
}

/// A group the writer applied, waiting to be made durable and answered.
struct Applied {
    group: u64,
    jobs: Vec<Queue>,
    heads: Vec<(ShopId, u64)>,
}

/// Makes flushed data durable.
pub(crate) struct Syncer {
    data_file: File,
    durability: Durability,
    fault: Option<Arc<SyncFault>>,
}

impl Syncer {
    pub fn open(dir: &Path, durability: Durability, fault: Option<Arc<SyncFault>>) -> Result<Syncer, Failure> {
        // sled 0.34 keeps its log and pages in `<dir>/db`; `flush` ends in
        // sync_file_range there, which flushes neither the drive cache nor
        // metadata, so the syncer follows it with fdatasync on this file.
        let data_file = File::open(dir.join("db")).map_err(|e| Failure::Io(format!("open data file: {e}")))?;
        // sled writes `conf` (segment size, version) when it creates a store
        // and never syncs it; the store reads the segment size back from it
        // (`existing_segment_size`), so a lost `conf` would open the log
        // with the wrong segment size once the default changes.
        File::open(dir.join("conf"))
            .and_then(|f| f.sync_all())
            .map_err(|e| Failure::Io(format!("sync sled conf: {e}")))?;
        // The names sled made in the store's folder (`db`, `conf`, `blobs/`,
        // and the snapshot its recovery wrote, renamed into place, with the
        // old one removed) are durable only once the folder is synced.
        // sled writes no other file later: snapshots only at recovery, and
        // blobs only for values over a quarter of a segment, which no
        // record comes near.
        crate::store::files::sync_dir(dir).map_err(|e| Failure::Io(format!("sync store folder: {e}")))?;
        Ok(Syncer { data_file, durability, fault })
    }

    pub fn sync_now(&self) -> Result<(), Failure> {
        if self.fault.as_ref().is_some_and(|f| f.take()) {
            return Err(Failure::Io("fdatasync: injected failure".into()));
        }
        match self.durability {
            Durability::Fsync => self.data_file.sync_data().map_err(|e| Failure::Io(format!("fdatasync: {e}"))),
            Durability::FlushOnly => Ok(()),
        }
    }
}

pub(crate) fn spawn(shared: Arc<Shared>, syncer: Syncer, hot: Hot) -> Result<mpsc::Sender<Queue>, Failure> {
    let (tx, rx) = mpsc::channel(WRITE_QUEUE_DEPTH);
    let (applied_tx, applied_rx) = std_mpsc::sync_channel(PIPELINE_DEPTH);
    let sync_shared = shared.clone();
    std::thread::Builder::new()
        .name("syncpay-syncer".into())
        .spawn(move || sync_loop(sync_shared, syncer, applied_rx))
        .map_err(|e| Failure::Io(format!("spawn syncer: {e}")))?;
    std::thread::Builder::new()
        .name("syncpay-writer".into())
        .spawn(move || write_loop(shared, hot, rx, applied_tx))
        .map_err(|e| Failure::Io(format!("spawn writer: {e}")))?;
    Ok(tx)
}

/// Applies a batch in queue order: the writes between two reads as one
/// group transaction, each read after the writes queued before it.
fn apply_batch(shared: &Shared, hot: &Hot, batch: &mut Vec<Queue>, heads: &mut Vec<(ShopId, u64)>) {
    let mut start = 0;
    while start < batch.len() {
        let end = batch[start..].iter().position(|q| matches!(q, Queue::Read(_))).map_or(batch.len(), |p| start + p);
        if end > start {
            let mut writes: Vec<Box<dyn Job>> = Vec::with_capacity(end - start);
            let taken: Vec<Queue> = batch.splice(start..end, std::iter::empty()).collect();
            for q in taken {
                if let Queue::Write(job) = q {
                    writes.push(job);
                }
            }
            apply_writes(shared, hot, &mut writes, heads);
            let n = writes.len();
            batch.splice(start..start, writes.into_iter().map(Queue::Write));
            start += n;
        }
        if let Some(Queue::Read(read)) = batch.get_mut(start) {
            read.run(shared);
            start += 1;
        }
    }
}

fn write_loop(shared: Arc<Shared>, hot: Hot, mut rx: mpsc::Receiver<Queue>, applied: std_mpsc::SyncSender<Applied>) {
    let mut group: u64 = 0;
    let mut batch: Vec<Queue> = Vec::with_capacity(MAX_GROUP);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        if shared.stopped.load(Ordering::SeqCst) {
            batch.drain(..).for_each(Queue::refuse);
            continue;
        }
        metrics::gauge!(metric_names::QUEUE_DEPTH).set(u32::try_from(rx.len()).map_or(f64::from(u32::MAX), f64::from));
        group += 1;
        shared.applying.store(group, Ordering::SeqCst);
        let mut heads = Vec::new();
        apply_batch(&shared, &hot, &mut batch, &mut heads);
        let jobs = std::mem::replace(&mut batch, Vec::with_capacity(MAX_GROUP));
        if let Err(std_mpsc::SendError(lost)) = applied.send(Applied { group, jobs, heads }) {
            // The syncer is gone (it cannot be, while this thread holds
            // its channel, unless it panicked): answer nothing as durable.
            lost.jobs.into_iter().for_each(Queue::refuse);
        }
    }
    tracing::debug!("store writer stopped");
}

fn sync_loop(shared: Arc<Shared>, syncer: Syncer, applied: std_mpsc::Receiver<Applied>) {
    let mut waiting: Vec<Applied> = Vec::with_capacity(PIPELINE_DEPTH + 1);
    while let Ok(first) = applied.recv() {
        waiting.push(first);
        // Everything already applied rides on this sync.
        while let Ok(more) = applied.try_recv() {
            waiting.push(more);
        }
        if shared.stopped.load(Ordering::SeqCst) {
            waiting.drain(..).flat_map(|a| a.jobs).for_each(Queue::refuse);
            continue;
        }
        let last = waiting.last().map_or(0, |a| a.group);
        let jobs: usize = waiting.iter().map(|a| a.jobs.len()).sum();
        let started = std::time::Instant::now();
        // sled's flush covers every write completed before it began, so
        // every group received here (applied before it was sent) is in it.
        let synced = shared.db.flush().map_err(|e| Failure::Io(e.to_string())).and_then(|_| syncer.sync_now());
        match synced {
            Ok(()) => {
                metrics::histogram!(metric_names::SYNC_SECONDS).record(started.elapsed().as_secs_f64());
                metrics::histogram!(metric_names::GROUP_SIZE)
                    .record(u32::try_from(jobs).map_or(f64::from(u32::MAX), f64::from));
                tracing::trace!(group = last, jobs, sync_us = started.elapsed().as_micros(), "groups durable");
                shared.durable.send_replace(last);
                for a in waiting.drain(..) {
                    for (shop, head) in a.heads {
                        shared.heads.set(&shop, head);
                    }
                    for job in a.jobs {
                        job.answer(Ok(()));
                    }
                }
            }
            Err(e) => {
                // Fail-stop: nothing in these groups, nor anything after
                // them, is acknowledged; readers waiting on durability get
                // `Stopped`.
                metrics::counter!(metric_names::SYNC_FAILURES).increment(1);
                tracing::error!(error = %e, group = last, "sync failed; the store stops accepting writes");
                shared.stopped.store(true, Ordering::SeqCst);
                shared.durable.send_modify(|_| {});
                waiting.drain(..).flat_map(|a| a.jobs).for_each(Queue::refuse);
            }
        }
    }
    tracing::debug!("store syncer stopped");
}
