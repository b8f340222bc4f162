//! `syncpay restore`: a data folder built from an online backup. The
//! backup's checksums are checked before anything is built, the new store
//! is compared with the manifest while it is built (`store::sled::backup`),
//! the server's secrets are copied beside it, and the ledger is verified
//! on the result before this answers.

use std::path::{Path, PathBuf};

use crate::store::backup::{self, Manifest, RestoreError};
use crate::store::sled::{SledStore, StoreConfig};
use crate::store::{Ledger, Lifecycle, VerifyReport};

use super::{RECEIPT_KEYS_FILE, SECRET_FILE, SHUTDOWN_GRACE, STORE_FOLDER};

/// What a restore built.
#[derive(Debug)]
pub struct RestoreReport {
    pub manifest: Manifest,
    pub data_dir: PathBuf,
    /// Records written into the new store.
    pub records: u64,
    /// The ledger's verification on the new store.
    pub verify: VerifyReport,
}

/// The secret files a backup carries and a data folder needs, by name.
const SECRET_FILES: [&str; 2] = [SECRET_FILE, RECEIPT_KEYS_FILE];

/// Builds `data_dir` (absent or empty: a restore never writes over a
/// store) from the backup in `backup_dir`: `store/`, `server.secret` and
/// `receipt-signing.keys`. A new `admin.token` is made when the server
/// first starts on it (the backup holds none). Refuses a damaged backup
/// before writing anything.
pub async fn restore(backup_dir: &Path, data_dir: &Path) -> Result<RestoreReport, RestoreError> {
    let (b, d) = (backup_dir.to_owned(), data_dir.to_owned());
    let (manifest, records) = tokio::task::spawn_blocking(move || -> Result<(Manifest, u64), RestoreError> {
        let manifest = backup::check(&b)?;
        if manifest.backend != "sled" {
            return Err(backup::damaged(&b.join(backup::MANIFEST_FILE), "not a backup of the sled store"));
        }
        backup::prepare_restore_target(&d)?;
        let restored = crate::store::sled::backup::restore(&b, &manifest, &d.join(STORE_FOLDER))?;
        for name in SECRET_FILES {
            if manifest.files.iter().any(|f| f.name == name) {
                let content = std::fs::read(b.join(name)).map_err(backup::io_at(&b.join(name)))?;
                crate::store::files::write_new_file(&d.join(name), &content, 0o600)
                    .map_err(backup::io_at(&d.join(name)))?;
            }
        }
        Ok((manifest, restored.records))
    })
    .await
    .map_err(|e| RestoreError::Target(format!("restore task: {e}")))??;
    // Opened as the server opens it (event heads derived, files synced),
    // verified, and closed before this answers.
    let store_dir = data_dir.join(STORE_FOLDER);
    let failed = |f: crate::store::Failure| RestoreError::Target(format!("{}: {f}", store_dir.display()));
    let config = StoreConfig::new(&store_dir);
    let store = tokio::task::spawn_blocking(move || SledStore::open(config))
        .await
        .map_err(|e| RestoreError::Target(format!("open task: {e}")))?
        .map_err(failed)?;
    let verify = store.verify().await.map_err(failed)?;
    let mut closed = store.closed();
    drop(store);
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, closed.wait_for(|c| *c)).await;
    Ok(RestoreReport { manifest, data_dir: data_dir.to_owned(), records, verify })
}
