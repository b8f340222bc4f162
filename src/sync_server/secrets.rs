//! Server secrets at rest: the operator token, the keyed-hash secret and
//! the receipt-signing keys, created once with owner-only permissions and
//! read back on restart. All are durable (content and name) before the
//! server uses them: a secret lost to a power cut would change every payer
//! pseudonym, a lost token would lock the operator out, a lost receipt key
//! would leave receipts nobody can verify. The receipt key file is replaced
//! atomically when the key is rotated.

use std::io::Read;
use std::path::Path;

use rand::rngs::SysRng;
use rand::TryRng;

use crate::domain::approval::ServerSecret;
use crate::domain::receipt::{PublishedKey, ReceiptKeyId, ReceiptKeyring, ReceiptSigner};
use crate::domain::UnixMs;

use super::auth::new_token;

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}: {message}")]
    Invalid { path: String, message: &'static str },
    #[error("entropy: {0}")]
    Entropy(String),
    #[error("encoding the receipt key file: {0}")]
    Encode(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SecretError + '_ {
    move |source| SecretError::Io { path: path.display().to_string(), source }
}

/// Creates `path` with mode 0600 holding `content`, failing if it exists;
/// all or nothing, and durable (see `store::files::write_new_file`).
fn create_private(path: &Path, content: &[u8]) -> Result<(), SecretError> {
    crate::store::files::write_new_file(path, content, 0o600).map_err(io(path))
}

/// Secrets are small: a token or secret file is read up to this many bytes.
const MAX_SECRET_BYTES: u64 = 4096;
/// The receipt key file holds one seed and up to `MAX_RECEIPT_KEYS`
/// retired public keys of ~150 bytes of JSON each.
const MAX_RECEIPT_KEY_FILE_BYTES: u64 = 256 * 1024;

fn read(path: &Path) -> Result<Option<Vec<u8>>, SecretError> {
    read_at_most(path, MAX_SECRET_BYTES)
}

fn read_at_most(path: &Path, max: u64) -> Result<Option<Vec<u8>>, SecretError> {
    match std::fs::File::open(path) {
        Ok(mut f) => {
            let mut buf = Vec::new();
            // One byte more than allowed tells a full file from a cut one.
            (&mut f).take(max + 1).read_to_end(&mut buf).map_err(io(path))?;
            if u64::try_from(buf.len()).unwrap_or(u64::MAX) > max {
                return Err(SecretError::Invalid { path: path.display().to_string(), message: "file is too large" });
            }
            Ok(Some(buf))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(path)(e)),
    }
}

/// The 32-byte server secret at `path`, created if missing.
pub fn load_or_create_secret(path: &Path) -> Result<ServerSecret, SecretError> {
    if let Some(bytes) = read(path)? {
        let arr: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| SecretError::Invalid { path: path.display().to_string(), message: "must be 32 bytes" })?;
        return Ok(ServerSecret::from_bytes(arr));
    }
    let mut bytes = [0u8; 32];
    SysRng.try_fill_bytes(&mut bytes).map_err(|e| SecretError::Entropy(e.to_string()))?;
    create_private(path, &bytes)?;
    Ok(ServerSecret::from_bytes(bytes))
}

/// The operator token at `path`, created if missing.
pub fn load_or_create_admin_token(path: &Path) -> Result<String, SecretError> {
    if let Some(bytes) = read(path)? {
        let text = String::from_utf8(bytes)
            .map_err(|_| SecretError::Invalid { path: path.display().to_string(), message: "must be text" })?;
        let token = text.trim().to_owned();
        if token.len() < 16 {
            return Err(SecretError::Invalid { path: path.display().to_string(), message: "token too short" });
        }
        return Ok(token);
    }
    let token = new_token("admin").map_err(|e| SecretError::Entropy(e.to_string()))?;
    create_private(path, token.as_bytes())?;
    Ok(token)
}

/// The receipt key file: the active key's seed and every retired public
/// key (the key ids are derived, not stored).
#[derive(serde::Serialize, serde::Deserialize)]
struct KeyFile {
    format: String,
    version: u32,
    active: ActiveKeyEntry,
    retired: Vec<RetiredKeyEntry>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct ActiveKeyEntry {
    /// The Ed25519 seed (32 bytes, hex).
    seed: String,
    created_at_ms: u64,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct RetiredKeyEntry {
    public_key: String,
    created_at_ms: u64,
    retired_at_ms: u64,
}

const KEY_FILE_FORMAT: &str = "syncpay-receipt-signing-keys";
const KEY_FILE_VERSION: u32 = 1;

fn invalid(path: &Path, message: &'static str) -> SecretError {
    SecretError::Invalid { path: path.display().to_string(), message }
}

/// A fresh receipt-signing key from the operating system's CSPRNG.
pub fn new_receipt_signer(now: UnixMs) -> Result<ReceiptSigner, SecretError> {
    let mut seed = [0u8; 32];
    SysRng.try_fill_bytes(&mut seed).map_err(|e| SecretError::Entropy(e.to_string()))?;
    Ok(ReceiptSigner::from_seed(seed, now))
}

/// The receipt keys at `path`, created (one fresh active key, mode 0600)
/// if missing.
pub fn load_or_create_receipt_keys(path: &Path, now: UnixMs) -> Result<ReceiptKeyring, SecretError> {
    if let Some(bytes) = read_at_most(path, MAX_RECEIPT_KEY_FILE_BYTES)? {
        return parse_receipt_keys(path, &bytes);
    }
    let ring = ReceiptKeyring::new(new_receipt_signer(now)?, Vec::new())
        .map_err(|_| invalid(path, "could not make a receipt keyring"))?;
    create_private(path, &receipt_key_file(&ring)?)?;
    Ok(ring)
}

fn parse_receipt_keys(path: &Path, bytes: &[u8]) -> Result<ReceiptKeyring, SecretError> {
    let file: KeyFile = serde_json::from_slice(bytes).map_err(|_| invalid(path, "is not a receipt key file"))?;
    if file.format != KEY_FILE_FORMAT || file.version != KEY_FILE_VERSION {
        return Err(invalid(path, "unknown receipt key file format or version"));
    }
    let seed =
        crate::hex::decode_array::<32>(&file.active.seed).ok_or(invalid(path, "active.seed: 32 bytes of hex"))?;
    let active = ReceiptSigner::from_seed(seed, UnixMs(file.active.created_at_ms));
    let mut retired = Vec::with_capacity(file.retired.len());
    for r in &file.retired {
        let public_key = crate::hex::decode_array::<32>(&r.public_key)
            .ok_or(invalid(path, "retired[].public_key: 32 bytes of hex"))?;
        retired.push(PublishedKey {
            id: ReceiptKeyId::of(&public_key),
            public_key,
            created_at: UnixMs(r.created_at_ms),
            retired_at: Some(UnixMs(r.retired_at_ms)),
        });
    }
    ReceiptKeyring::new(active, retired).map_err(|_| invalid(path, "retired keys are invalid or repeated"))
}

pub(crate) fn receipt_key_file(ring: &ReceiptKeyring) -> Result<Vec<u8>, SecretError> {
    let file = KeyFile {
        format: KEY_FILE_FORMAT.to_owned(),
        version: KEY_FILE_VERSION,
        active: ActiveKeyEntry {
            seed: crate::hex::encode(&ring.active().seed()),
            created_at_ms: ring.active().created_at().0,
        },
        retired: ring
            .retired()
            .iter()
            .map(|k| RetiredKeyEntry {
                public_key: crate::hex::encode(&k.public_key),
                created_at_ms: k.created_at.0,
                retired_at_ms: k.retired_at.map_or(0, |t| t.0),
            })
            .collect(),
    };
    let mut text = serde_json::to_vec_pretty(&file).map_err(|e| SecretError::Encode(e.to_string()))?;
    text.push(b'\n');
    Ok(text)
}

/// Replaces the receipt key file with `ring`, atomically: a new file (mode
/// 0600) is written and synced beside it, renamed over it, and the folder
/// synced, so a crash leaves either the old keys or the new ones.
pub fn replace_receipt_keys(path: &Path, ring: &ReceiptKeyring) -> Result<(), SecretError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".new");
    let tmp = std::path::PathBuf::from(tmp);
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(&tmp)(e)),
    }
    create_private(&tmp, &receipt_key_file(ring)?)?;
    std::fs::rename(&tmp, path).map_err(io(path))?;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    crate::store::files::sync_dir(dir).map_err(io(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_created_private_and_read_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("admin.token");
        let first = load_or_create_admin_token(&path).expect("create");
        assert_eq!(load_or_create_admin_token(&path).expect("read"), first);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let spath = dir.path().join("server.secret");
        load_or_create_secret(&spath).expect("create");
        std::fs::write(&spath, b"short").expect("write");
        assert!(matches!(load_or_create_secret(&spath), Err(SecretError::Invalid { .. })));
    }

    #[test]
    fn receipt_keys_are_created_private_survive_rotation_and_reject_damage() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("receipt-signing.keys");
        let ring = load_or_create_receipt_keys(&path, UnixMs(10)).expect("create");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let again = load_or_create_receipt_keys(&path, UnixMs(99)).expect("read");
        assert_eq!(again.published(), ring.published());
        let rotated = ring.rotated(new_receipt_signer(UnixMs(20)).expect("key"), UnixMs(20)).expect("rotate");
        replace_receipt_keys(&path, &rotated).expect("replace");
        let read = load_or_create_receipt_keys(&path, UnixMs(99)).expect("read");
        assert_eq!(read.published(), rotated.published());
        assert_eq!(read.active().seed(), rotated.active().seed());
        assert_eq!(read.public_key(ring.active().id()), Some(ring.active().public_key()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "the replacement is private too");
        }
        for damage in [
            &b"{}"[..],
            b"not json",
            b"{\"format\":\"x\",\"version\":1,\"active\":{\"seed\":\"00\",\"created_at_ms\":0},\"retired\":[]}",
        ] {
            std::fs::write(&path, damage).expect("write");
            assert!(matches!(load_or_create_receipt_keys(&path, UnixMs(1)), Err(SecretError::Invalid { .. })));
        }
    }
}
