//! Durable steps on the file system for the server's own files: a new
//! directory or file is durable only once its *parent directory* is
//! fsynced (POSIX; ext4 is laxer by accident, not by promise), and a file's
//! content only once the file is. `tests/power_loss.rs` runs the server on a
//! file system that forgets anything else at a power cut.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

/// Makes `dir`'s entries (new, renamed or removed names in it) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The directory a path is named in (`.` for a bare name).
fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// `create_dir_all`, with each directory it creates made durable (its
/// parent fsynced) before the next is created inside it.
pub fn create_dir_all(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let parent = parent_of(dir);
    create_dir_all(parent)?;
    match std::fs::create_dir(dir) {
        Ok(()) => {}
        // Made meanwhile by someone else, who syncs it.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => return Ok(()),
        Err(e) => return Err(e),
    }
    sync_dir(parent)
}

/// Creates `path` holding `content` with permissions `mode`, all or
/// nothing: the content is written and fsynced under a temporary name,
/// then linked to `path` (which fails with `AlreadyExists` if `path`
/// exists, like `create_new`) and the directory is fsynced. A crash at any
/// moment leaves either no `path` or the whole file, never an empty or
/// short one; a leftover temporary file is overwritten next time.
pub fn write_new_file(path: &Path, content: &[u8], mode: u32) -> io::Result<()> {
    let name = path.file_name().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(&tmp)?;
    #[cfg(unix)]
    {
        // A leftover file keeps its old mode through `open`; set it again.
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
    }
    file.write_all(content)?;
    file.sync_all()?;
    drop(file);
    let linked = std::fs::hard_link(&tmp, path);
    let removed = std::fs::remove_file(&tmp);
    linked?;
    removed?;
    sync_dir(parent_of(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_files_are_whole_private_and_never_overwritten() {
        let dir = tempfile::tempdir().expect("tempdir");
        let nested = dir.path().join("a/b/c");
        create_dir_all(&nested).expect("create");
        create_dir_all(&nested).expect("exists already");
        let path = nested.join("secret");
        // A leftover temporary file from a crash, world-readable.
        std::fs::write(nested.join(".secret.tmp"), b"half").expect("leftover");
        write_new_file(&path, b"content", 0o600).expect("write");
        assert_eq!(std::fs::read(&path).expect("read"), b"content");
        assert!(!nested.join(".secret.tmp").exists(), "the temporary name is gone");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let again = write_new_file(&path, b"other", 0o600);
        assert_eq!(again.map_err(|e| e.kind()), Err(io::ErrorKind::AlreadyExists));
        assert_eq!(std::fs::read(&path).expect("read"), b"content", "never overwritten");
    }
}
