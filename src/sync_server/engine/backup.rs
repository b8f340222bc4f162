//! Online backups: the store's copy at one point of its commit order, the
//! server's secrets beside it, and the manifest written last.

use std::path::PathBuf;
use std::sync::atomic::Ordering;

use crate::store::backup::{self, Manifest, MANIFEST_FORMAT, MANIFEST_VERSION};
use crate::store::BackupRefusal;

use super::super::{RECEIPT_KEYS_FILE, SECRET_FILE};
use super::{now, Engine, EngineError};

/// Clears the engine's "backing up" flag however the backup ends.
struct OneAtATime<'a>(&'a std::sync::atomic::AtomicBool);

impl Drop for OneAtATime<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

impl Engine {
    /// Takes an online backup into `dir` (absolute; absent or empty): the
    /// store's records at one point of its commit order (every change
    /// answered before this call is in it), `server.secret` and the
    /// receipt-signing keys in force, then `manifest.json`; everything
    /// synced with its folder before it answers. One at a time.
    pub async fn backup(&self, dir: PathBuf) -> Result<Manifest, EngineError<BackupRefusal>> {
        if self.backing_up.swap(true, Ordering::SeqCst) {
            return Err(EngineError::Refused(BackupRefusal::Busy));
        }
        let _one = OneAtATime(&self.backing_up);
        let taken_at = now();
        let copy = self.store.backup(dir.clone()).await?;
        let secret = self.secret.to_bytes().to_vec();
        let keys = self.receipts.key_file().map_err(EngineError::Internal)?;
        let manifest = Manifest {
            format: MANIFEST_FORMAT.to_owned(),
            version: MANIFEST_VERSION,
            backend: copy.backend.to_owned(),
            taken_at_ms: taken_at.0,
            point: copy.point,
            writer_pause_us: copy.pause_us,
            files: vec![
                copy.dump,
                backup::file_entry(SECRET_FILE, &secret),
                backup::file_entry(RECEIPT_KEYS_FILE, &keys),
            ],
        };
        let written = manifest.clone();
        tokio::task::spawn_blocking(move || {
            let write = |name: &str, content: &[u8]| {
                crate::store::files::write_new_file(&dir.join(name), content, 0o600)
                    .map_err(|e| BackupRefusal::Target(format!("{}: {e}", dir.join(name).display())))
            };
            write(SECRET_FILE, &secret)?;
            write(RECEIPT_KEYS_FILE, &keys)?;
            backup::write_manifest(&dir, &written)
        })
        .await
        .map_err(|e| EngineError::Internal(format!("backup task: {e}")))?
        .map_err(EngineError::Refused)?;
        tracing::info!(
            taken_at_ms = manifest.taken_at_ms,
            writer_pause_us = manifest.writer_pause_us,
            dump_bytes = manifest.files.first().map_or(0, |f| f.bytes),
            last_posting_id = manifest.point.last_posting_id,
            "online backup taken"
        );
        Ok(manifest)
    }
}
