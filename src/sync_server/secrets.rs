//! Server secrets at rest: the operator token and the keyed-hash secret,
//! created once with owner-only permissions and read back on restart.
//! Both are durable (content and name) before the server uses them: a
//! secret lost to a power cut would change every payer pseudonym, a lost
//! token would lock the operator out.

use std::io::Read;
use std::path::Path;

use rand::rngs::SysRng;
use rand::TryRng;

use crate::domain::approval::ServerSecret;

use super::auth::new_token;

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}: {message}")]
    Invalid { path: String, message: &'static str },
    #[error("entropy: {0}")]
    Entropy(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SecretError + '_ {
    move |source| SecretError::Io { path: path.display().to_string(), source }
}

/// Creates `path` with mode 0600 holding `content`, failing if it exists;
/// all or nothing, and durable (see `store::files::write_new_file`).
fn create_private(path: &Path, content: &[u8]) -> Result<(), SecretError> {
    crate::store::files::write_new_file(path, content, 0o600).map_err(io(path))
}

fn read(path: &Path) -> Result<Option<Vec<u8>>, SecretError> {
    match std::fs::File::open(path) {
        Ok(mut f) => {
            let mut buf = Vec::new();
            // Secrets are small; refuse anything that is not.
            (&mut f).take(4096).read_to_end(&mut buf).map_err(io(path))?;
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
}
