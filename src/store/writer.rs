//! The single writer and its syncer: two threads in a pipeline.
//!
//! The writer takes commands from a bounded queue and applies a group of
//! them as one sled transaction (or each alone if one of them fails), then
//! hands the applied group to the syncer and goes on with the next group.
//! The syncer makes everything applied so far durable (sled flush +
//! fdatasync of the data file) and only then answers the commands of the
//! groups it covered. So group n+1 is applied while group n is being
//! synced, one fsync covers every group applied before it began, and no
//! command is answered before its own group is durable. A failed sync
//! stops all further writes and answers: nothing applied after it is ever
//! acknowledged.

use std::fs::File;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::domain::ShopId;

use super::commands::{self, Command, CommandOutcome};
use super::metric_names;
use super::{Durability, Shared, StoreError, SyncFault, WRITE_QUEUE_DEPTH};

/// Most commands applied in one group. Bounds the latency a command can
/// add to the others in its group.
pub const MAX_GROUP: usize = 512;

/// Applied groups that may wait for the syncer. While they wait the writer
/// stops taking commands, so the queue (and the next group) fills instead.
const PIPELINE_DEPTH: usize = 2;

type Reply = oneshot::Sender<Result<CommandOutcome, StoreError>>;

pub(crate) struct WriteRequest {
    pub command: Command,
    pub reply: Reply,
}

/// A group the writer applied, waiting to be made durable and answered.
struct Applied {
    group: u64,
    replies: Vec<(Reply, Result<CommandOutcome, StoreError>)>,
    heads: Vec<(ShopId, u64)>,
}

/// Makes flushed data durable.
pub(crate) struct Syncer {
    data_file: File,
    durability: Durability,
    fault: Option<Arc<SyncFault>>,
}

impl Syncer {
    pub fn open(dir: &Path, durability: Durability, fault: Option<Arc<SyncFault>>) -> Result<Syncer, StoreError> {
        // sled 0.34 keeps its log and pages in `<dir>/db`; `flush` ends in
        // sync_file_range there, which flushes neither the drive cache nor
        // metadata, so the syncer follows it with fdatasync on this file.
        let data_file = File::open(dir.join("db")).map_err(|e| StoreError::Io(format!("open data file: {e}")))?;
        // sled writes `conf` (segment size, version) when it creates a store
        // and never syncs it; the store reads the segment size back from it
        // (`existing_segment_size`), so a lost `conf` would open the log
        // with the wrong segment size once the default changes.
        File::open(dir.join("conf"))
            .and_then(|f| f.sync_all())
            .map_err(|e| StoreError::Io(format!("sync sled conf: {e}")))?;
        // The names sled made in the store's folder (`db`, `conf`, `blobs/`,
        // and the snapshot its recovery wrote, renamed into place, with the
        // old one removed) are durable only once the folder is synced.
        // sled writes no other file later: snapshots only at recovery, and
        // blobs only for values over a quarter of a segment, which no
        // record comes near.
        super::files::sync_dir(dir).map_err(|e| StoreError::Io(format!("sync store folder: {e}")))?;
        Ok(Syncer { data_file, durability, fault })
    }

    pub fn sync_now(&self) -> Result<(), StoreError> {
        if self.fault.as_ref().is_some_and(|f| f.take()) {
            return Err(StoreError::Io("fdatasync: injected failure".into()));
        }
        match self.durability {
            Durability::Fsync => self.data_file.sync_data().map_err(|e| StoreError::Io(format!("fdatasync: {e}"))),
            Durability::FlushOnly => Ok(()),
        }
    }
}

pub(crate) fn spawn(shared: Arc<Shared>, syncer: Syncer) -> Result<mpsc::Sender<WriteRequest>, StoreError> {
    let (tx, rx) = mpsc::channel(WRITE_QUEUE_DEPTH);
    let (applied_tx, applied_rx) = std_mpsc::sync_channel(PIPELINE_DEPTH);
    let sync_shared = shared.clone();
    std::thread::Builder::new()
        .name("syncpay-syncer".into())
        .spawn(move || sync_loop(sync_shared, syncer, applied_rx))
        .map_err(|e| StoreError::Io(format!("spawn syncer: {e}")))?;
    std::thread::Builder::new()
        .name("syncpay-writer".into())
        .spawn(move || write_loop(shared, rx, applied_tx))
        .map_err(|e| StoreError::Io(format!("spawn writer: {e}")))?;
    Ok(tx)
}

fn refuse(replies: impl IntoIterator<Item = Reply>) {
    for reply in replies {
        let _ = reply.send(Err(StoreError::Stopped));
    }
}

fn write_loop(shared: Arc<Shared>, mut rx: mpsc::Receiver<WriteRequest>, applied: std_mpsc::SyncSender<Applied>) {
    let mut group: u64 = 0;
    let mut batch: Vec<WriteRequest> = Vec::with_capacity(MAX_GROUP);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(req) => batch.push(req),
                Err(_) => break,
            }
        }
        if shared.stopped.load(Ordering::SeqCst) {
            refuse(batch.drain(..).map(|req| req.reply));
            continue;
        }
        metrics::gauge!(metric_names::QUEUE_DEPTH).set(u32::try_from(rx.len()).map_or(f64::from(u32::MAX), f64::from));
        group += 1;
        shared.applying.store(group, Ordering::SeqCst);
        let mut heads = Vec::new();
        let group_commands: Vec<&Command> = batch.iter().map(|req| &req.command).collect();
        let results = commands::apply_group(&shared, &group_commands, &mut heads);
        let replies = batch.drain(..).map(|req| req.reply).zip(results).collect();
        if let Err(std_mpsc::SendError(lost)) = applied.send(Applied { group, replies, heads }) {
            // The syncer is gone (it cannot be, while this thread holds
            // its channel, unless it panicked): answer nothing as durable.
            refuse(lost.replies.into_iter().map(|(reply, _)| reply));
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
            refuse(waiting.drain(..).flat_map(|a| a.replies).map(|(reply, _)| reply));
            continue;
        }
        let last = waiting.last().map_or(0, |a| a.group);
        let commands: usize = waiting.iter().map(|a| a.replies.len()).sum();
        let started = std::time::Instant::now();
        // sled's flush covers every write completed before it began, so
        // every group received here (applied before it was sent) is in it.
        let synced = shared.db.flush().map_err(StoreError::from).and_then(|_| syncer.sync_now());
        match synced {
            Ok(()) => {
                metrics::histogram!(metric_names::SYNC_SECONDS).record(started.elapsed().as_secs_f64());
                metrics::histogram!(metric_names::GROUP_SIZE)
                    .record(u32::try_from(commands).map_or(f64::from(u32::MAX), f64::from));
                tracing::trace!(group = last, commands, sync_us = started.elapsed().as_micros(), "groups durable");
                shared.durable.send_replace(last);
                for a in waiting.drain(..) {
                    for (shop, head) in a.heads {
                        shared.heads.set(&shop, head);
                    }
                    for (reply, result) in a.replies {
                        // A caller that gave up is not an error here.
                        let _ = reply.send(result);
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
                refuse(waiting.drain(..).flat_map(|a| a.replies).map(|(reply, _)| reply));
            }
        }
    }
    tracing::debug!("store syncer stopped");
}
