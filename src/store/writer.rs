//! The single writer: takes commands from a bounded queue, applies a group
//! of them as one sled transaction (or each alone if one of them fails),
//! then makes the whole group durable (sled flush +
//! fdatasync of the data file) before answering any of them. One fsync per
//! group, not per commit. A failed sync stops all further writes.

use std::fs::File;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::commands::{self, Command, CommandOutcome};
use super::metric_names;
use super::{Durability, Shared, StoreError, SyncFault, WRITE_QUEUE_DEPTH};

/// Most commands applied before one sync. Bounds the latency a command
/// can add to the others in its group.
pub const MAX_GROUP: usize = 512;

pub(crate) struct WriteRequest {
    pub command: Command,
    pub reply: oneshot::Sender<Result<CommandOutcome, StoreError>>,
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
        // metadata, so the writer follows it with fdatasync on this file.
        let data_file = File::open(dir.join("db")).map_err(|e| StoreError::Io(format!("open data file: {e}")))?;
        // The directory entry of a new store must be durable too.
        File::open(dir).and_then(|d| d.sync_all()).map_err(|e| StoreError::Io(format!("sync dir: {e}")))?;
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
    std::thread::Builder::new()
        .name("syncpay-writer".into())
        .spawn(move || run(shared, syncer, rx))
        .map_err(|e| StoreError::Io(format!("spawn writer: {e}")))?;
    Ok(tx)
}

fn run(shared: Arc<Shared>, syncer: Syncer, mut rx: mpsc::Receiver<WriteRequest>) {
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
            for req in batch.drain(..) {
                let _ = req.reply.send(Err(StoreError::Stopped));
            }
            continue;
        }
        metrics::gauge!(metric_names::QUEUE_DEPTH).set(u32::try_from(rx.len()).map_or(f64::from(u32::MAX), f64::from));
        group += 1;
        shared.applying.store(group, Ordering::SeqCst);
        let mut heads = Vec::new();
        let group_commands: Vec<&Command> = batch.iter().map(|req| &req.command).collect();
        let results = commands::apply_group(&shared, &group_commands, &mut heads);
        let started = std::time::Instant::now();
        let synced = shared.db.flush().map_err(StoreError::from).and_then(|_| syncer.sync_now());
        match synced {
            Ok(()) => {
                metrics::histogram!(metric_names::SYNC_SECONDS).record(started.elapsed().as_secs_f64());
                metrics::histogram!(metric_names::GROUP_SIZE)
                    .record(u32::try_from(batch.len()).map_or(f64::from(u32::MAX), f64::from));
                tracing::trace!(
                    group,
                    commands = batch.len(),
                    sync_us = started.elapsed().as_micros(),
                    "group durable"
                );
                shared.durable.send_replace(group);
                for (shop, head) in heads {
                    shared.heads.set(&shop, head);
                }
                for (req, result) in batch.drain(..).zip(results) {
                    // A caller that gave up is not an error here.
                    let _ = req.reply.send(result);
                }
            }
            Err(e) => {
                // Fail-stop: nothing in this group, nor anything after it, is
                // acknowledged; readers waiting on durability get `Stopped`.
                metrics::counter!(metric_names::SYNC_FAILURES).increment(1);
                tracing::error!(error = %e, group, "sync failed; the store stops accepting writes");
                shared.stopped.store(true, Ordering::SeqCst);
                shared.durable.send_modify(|_| {});
                for req in batch.drain(..) {
                    let _ = req.reply.send(Err(StoreError::Stopped));
                }
            }
        }
    }
    tracing::debug!("store writer stopped");
}
