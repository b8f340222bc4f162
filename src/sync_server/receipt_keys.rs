//! The operator's receipt-signing keys while the server runs: the active
//! signer each settlement countersigns with, the public keys shops verify
//! with (retired ones included), and rotation, which rewrites the key file
//! before the new key signs anything.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use crate::domain::receipt::{KeyringError, PublishedKey, ReceiptKeyId, ReceiptKeyring, ReceiptSigner};
use crate::domain::UnixMs;

use super::secrets;

/// Why a rotation changed nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RotateError {
    /// The keyring already holds as many keys as it may.
    #[error("{0}")]
    TooMany(String),
    /// No entropy, or the key file could not be written.
    #[error("{0}")]
    Failed(String),
}

/// The keyring and the active signer, swapped together on rotation.
struct Current {
    ring: ReceiptKeyring,
    signer: Arc<ReceiptSigner>,
}

pub struct ReceiptKeys {
    current: RwLock<Current>,
    /// Where rotation persists the keyring; `None` keeps it in memory.
    path: Option<PathBuf>,
    /// One rotation at a time (held across the file write, never across an
    /// await).
    rotating: Mutex<()>,
}

impl ReceiptKeys {
    pub fn new(ring: ReceiptKeyring, path: Option<PathBuf>) -> ReceiptKeys {
        let signer = Arc::new(ring.active().clone());
        ReceiptKeys { current: RwLock::new(Current { ring, signer }), path, rotating: Mutex::new(()) }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Current> {
        self.current.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The key that countersigns settlements now.
    pub fn signer(&self) -> Arc<ReceiptSigner> {
        self.read().signer.clone()
    }

    /// Every public key, active first, then retired, newest first.
    pub fn published(&self) -> Vec<PublishedKey> {
        self.read().ring.published()
    }

    /// The public key `id` names, active or retired.
    pub fn public_key(&self, id: ReceiptKeyId) -> Option<[u8; 32]> {
        self.read().ring.public_key(id)
    }

    /// The key file's content for the keys in force (an online backup
    /// copies it).
    pub fn key_file(&self) -> Result<Vec<u8>, String> {
        secrets::receipt_key_file(&self.read().ring).map_err(|e| e.to_string())
    }

    /// Makes a fresh key the active one at `now`; the old one stays
    /// published as retired. Blocking (file I/O): call it off the async
    /// threads. A failure changes nothing.
    pub fn rotate(&self, now: UnixMs) -> Result<Vec<PublishedKey>, RotateError> {
        let _one = self.rotating.lock().unwrap_or_else(|p| p.into_inner());
        let next = secrets::new_receipt_signer(now).map_err(|e| RotateError::Failed(e.to_string()))?;
        let ring = self.read().ring.rotated(next, now).map_err(|e| match e {
            KeyringError::TooMany => RotateError::TooMany(e.to_string()),
            other => RotateError::Failed(other.to_string()),
        })?;
        if let Some(path) = &self.path {
            secrets::replace_receipt_keys(path, &ring).map_err(|e| RotateError::Failed(e.to_string()))?;
        }
        let published = ring.published();
        let signer = Arc::new(ring.active().clone());
        tracing::info!(key_id = %signer.id(), "receipt-signing key rotated");
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Current { ring, signer };
        Ok(published)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_persists_first_and_keeps_the_old_key_published() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("receipt-signing.keys");
        let ring = secrets::load_or_create_receipt_keys(&path, UnixMs(1)).expect("keys");
        let keys = ReceiptKeys::new(ring, Some(path.clone()));
        let first = keys.signer();
        let published = keys.rotate(UnixMs(2)).expect("rotate");
        let second = keys.signer();
        assert_ne!(first.id(), second.id());
        assert_eq!(published.iter().map(|k| k.id).collect::<Vec<_>>(), vec![second.id(), first.id()]);
        assert_eq!(keys.public_key(first.id()), Some(first.public_key()));
        // What a restart reads is what is in force.
        let reread = secrets::load_or_create_receipt_keys(&path, UnixMs(3)).expect("read");
        assert_eq!(reread.active().id(), second.id());
        assert_eq!(reread.published(), keys.published());
        // A rotation that cannot be written changes nothing.
        let broken = ReceiptKeys::new(reread, Some(dir.path().join("no-such-folder").join("keys")));
        let before = broken.signer().id();
        assert!(matches!(broken.rotate(UnixMs(4)), Err(RotateError::Failed(_))));
        assert_eq!(broken.signer().id(), before);
    }
}
