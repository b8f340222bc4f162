//! Online backups of the embedded store: the backup folder's layout, its
//! manifest, and the checks a restore makes before it builds anything.
//!
//! A backup folder holds `store.dump` (every record of the store at one
//! point of the writer's order, written by the sled backend), the server's
//! own secrets beside it (`server.secret`, `receipt-signing.keys`), and
//! `manifest.json`, written last: the point (each shop's event head, the
//! last posting id), the records per tree, and the size and SHA-256 of
//! every file. A folder without a manifest is an unfinished backup. The
//! checksums find damage (a flipped bit, a cut copy), not a forger: anyone
//! who can write the folder can rewrite the manifest too, so keep backups
//! where only the operator writes.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::files;
use super::refusals::BackupRefusal;

/// The manifest's name; written last, so its presence means "complete".
pub const MANIFEST_FILE: &str = "manifest.json";
/// The store's records.
pub const DUMP_FILE: &str = "store.dump";
/// What `format` says in every manifest.
pub const MANIFEST_FORMAT: &str = "syncpay-backup";
/// The manifest layout this binary writes and reads.
pub const MANIFEST_VERSION: u32 = 1;
/// A manifest is read up to this many bytes: it names each shop's event
/// head (~60 bytes a shop), so this holds a million shops.
pub const MAX_MANIFEST_BYTES: u64 = 64 * 1024 * 1024;
/// The longest backup path accepted (Linux's `PATH_MAX`).
pub const MAX_BACKUP_PATH_BYTES: usize = 4096;

/// One file of a backup, as the manifest records it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BackupFile {
    pub name: String,
    pub bytes: u64,
    /// SHA-256 of the whole file, lowercase hex.
    pub sha256: String,
}

/// What identifies the point a backup was taken at, and what it holds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BackupPoint {
    /// Each shop's last event sequence number in the backup; its events
    /// are exactly 1..=head (a restore checks it).
    pub event_heads: BTreeMap<String, u64>,
    /// The highest posting id in the backup (0 without postings).
    pub last_posting_id: u64,
    /// Records per tree of the store.
    pub records: BTreeMap<String, u64>,
}

/// What a store's backup wrote (its dump file, synced) and where it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreBackup {
    /// The backend that made it (the manifest's `backend`).
    pub backend: &'static str,
    pub point: BackupPoint,
    pub dump: BackupFile,
    /// How long writes waited for the copy (the writer's pause).
    pub pause_us: u64,
}

/// `manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    /// "sled": the only backend with online backups.
    pub backend: String,
    /// The server's clock when the copy was taken (Unix ms).
    pub taken_at_ms: u64,
    pub point: BackupPoint,
    /// How long writes waited for the copy, in microseconds.
    pub writer_pause_us: u64,
    /// Every file of the backup but the manifest, the dump first.
    pub files: Vec<BackupFile>,
}

impl Manifest {
    /// The record count of one tree (0 when the tree is empty or unknown).
    pub fn records(&self, tree: &str) -> u64 {
        self.point.records.get(tree).copied().unwrap_or(0)
    }
}

/// Why a backup folder cannot be restored.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("{path}: {message}")]
    Damaged { path: String, message: String },
    #[error("{path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("{0}")]
    Target(String),
}

pub fn io_at(path: &Path) -> impl FnOnce(io::Error) -> RestoreError + '_ {
    move |source| RestoreError::Io { path: path.display().to_string(), source }
}

pub fn damaged(path: &Path, message: impl Into<String>) -> RestoreError {
    RestoreError::Damaged { path: path.display().to_string(), message: message.into() }
}

/// Lowercase hex of a SHA-256 digest.
fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Size and SHA-256 of a file, read in full.
pub fn checksum_file(path: &Path) -> io::Result<(u64, String)> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        bytes = bytes.saturating_add(u64::try_from(n).unwrap_or(u64::MAX));
    }
    Ok((bytes, hex(&hasher.finalize())))
}

/// The file entry of `content` under `name`.
pub fn file_entry(name: &str, content: &[u8]) -> BackupFile {
    BackupFile {
        name: name.to_owned(),
        bytes: u64::try_from(content.len()).unwrap_or(u64::MAX),
        sha256: hex(&Sha256::digest(content)),
    }
}

/// Makes the backup's folder: `dir` must be absolute and either absent
/// (its parent existing) or an empty folder. The new folder's name is made
/// durable (its parent fsynced).
pub fn prepare_target(dir: &Path) -> Result<(), BackupRefusal> {
    if !dir.is_absolute() {
        return Err(BackupRefusal::Target("must be an absolute path on the server's host".into()));
    }
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(BackupRefusal::Target(format!("{} exists and is not empty", dir.display())));
            }
            return Ok(());
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) if e.kind() == io::ErrorKind::NotADirectory => {
            return Err(BackupRefusal::Target(format!("{} exists and is not a folder", dir.display())));
        }
        Err(e) => return Err(BackupRefusal::Target(format!("{}: {e}", dir.display()))),
    }
    let parent = dir.parent().ok_or_else(|| BackupRefusal::Target("has no parent folder".into()))?;
    if !parent.is_dir() {
        return Err(BackupRefusal::Target(format!("the parent folder {} does not exist", parent.display())));
    }
    std::fs::create_dir(dir).map_err(|e| BackupRefusal::Target(format!("{}: {e}", dir.display())))?;
    files::sync_dir(parent).map_err(|e| BackupRefusal::Target(format!("{}: {e}", parent.display())))
}

/// Writes the manifest (whole or absent, synced with its folder): the last
/// step of a backup.
pub fn write_manifest(dir: &Path, manifest: &Manifest) -> Result<(), BackupRefusal> {
    let mut text = serde_json::to_vec_pretty(manifest).map_err(|e| BackupRefusal::Target(e.to_string()))?;
    text.push(b'\n');
    files::write_new_file(&dir.join(MANIFEST_FILE), &text, 0o600)
        .map_err(|e| BackupRefusal::Target(format!("{}: {e}", dir.join(MANIFEST_FILE).display())))
}

/// Reads a backup's manifest and checks every file it names against its
/// size and SHA-256: a damaged or unfinished backup is refused here,
/// before anything is built from it.
pub fn check(dir: &Path) -> Result<Manifest, RestoreError> {
    let path = dir.join(MANIFEST_FILE);
    let mut bytes = Vec::new();
    File::open(&path)
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => damaged(&path, "no manifest: not a backup folder, or an unfinished backup"),
            _ => RestoreError::Io { path: path.display().to_string(), source: e },
        })?
        .take(MAX_MANIFEST_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io_at(&path))?;
    if u64::try_from(bytes.len()).unwrap_or(u64::MAX) > MAX_MANIFEST_BYTES {
        return Err(damaged(&path, "larger than any manifest"));
    }
    let manifest: Manifest =
        serde_json::from_slice(&bytes).map_err(|e| damaged(&path, format!("not a backup manifest: {e}")))?;
    if manifest.format != MANIFEST_FORMAT || manifest.version != MANIFEST_VERSION {
        return Err(damaged(
            &path,
            format!("format {} version {} is not one this binary reads", manifest.format, manifest.version),
        ));
    }
    if manifest.files.first().map(|f| f.name.as_str()) != Some(DUMP_FILE) {
        return Err(damaged(&path, format!("names no {DUMP_FILE}")));
    }
    for file in &manifest.files {
        // Names are plain file names in the folder, nothing else.
        if file.name.is_empty() || file.name.contains(['/', '\\', '\0']) || file.name.starts_with('.') {
            return Err(damaged(&path, format!("file name {:?} is not a plain name", file.name)));
        }
        let at = dir.join(&file.name);
        let (size, sha256) = checksum_file(&at).map_err(io_at(&at))?;
        if size != file.bytes || sha256 != file.sha256 {
            return Err(damaged(
                &at,
                format!(
                    "checksum mismatch: the manifest says {} bytes with SHA-256 {}, the file has {size} bytes with {sha256}",
                    file.bytes, file.sha256
                ),
            ));
        }
    }
    Ok(manifest)
}

/// The folder a restore builds: absent (its parent existing) or empty.
pub fn prepare_restore_target(dir: &Path) -> Result<PathBuf, RestoreError> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(RestoreError::Target(format!(
                    "{} exists and is not empty: a restore never writes over a store",
                    dir.display()
                )));
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            files::create_dir_all(dir).map_err(io_at(dir))?;
        }
        Err(e) => return Err(RestoreError::Io { path: dir.display().to_string(), source: e }),
    }
    Ok(dir.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_target_must_be_absolute_and_new_or_empty() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(matches!(prepare_target(Path::new("relative/backup")), Err(BackupRefusal::Target(_))));
        let fresh = dir.path().join("b1");
        prepare_target(&fresh).expect("new folder");
        prepare_target(&fresh).expect("empty folder");
        std::fs::write(fresh.join("x"), b"x").expect("write");
        assert!(matches!(prepare_target(&fresh), Err(BackupRefusal::Target(m)) if m.contains("not empty")));
        assert!(matches!(prepare_target(&fresh.join("x")), Err(BackupRefusal::Target(_))));
        assert!(
            matches!(prepare_target(&dir.path().join("no/such")), Err(BackupRefusal::Target(m)) if m.contains("parent"))
        );
    }
}
