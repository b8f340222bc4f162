//! Online backup and restore of the sled store.
//!
//! **Backup** is a read job on the writer thread (`SledStore::backup`):
//! the writer is the only writer, so while it copies nothing changes, and
//! the copy holds exactly the writes queued before it (a prefix of the
//! writer's order). It writes every record of every tree to
//! `store.dump` through a buffer and goes on with the next write group;
//! writes wait only for that pass (`pause_us`), while reads that do not
//! queue behind the writer go on. Like every read job it is answered once
//! the groups before it are durable; the dump is then checksummed and
//! fsynced with its folder off the writer thread, before the backup
//! answers.
//!
//! **Restore** reads a checked backup (`store::backup::check`) into a new
//! store, compares what it read with the manifest (records per tree, each
//! shop's event head, every shop's events gap-free from 1, the last
//! posting id), and makes the new store durable (flush, fsync of its
//! files and folder).
//!
//! The dump's layout, all integers big-endian: the magic
//! `syncpay-store-dump\0` and a version byte (1); the number of trees
//! (one byte) and each tree's name (a length byte and the name); then each
//! record as tree index (1 byte), key length (4), key, value length (4),
//! value; then `0xff` and the record count (8).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::Path;
use std::time::Instant;

use crate::store::backup::{self, damaged, io_at, BackupFile, BackupPoint, Manifest, RestoreError, DUMP_FILE};
use crate::store::{BackupRefusal, Failure};

use super::tx::{T, TREE_NAMES};
use super::{config, io, Shared};

const MAGIC: &[u8] = b"syncpay-store-dump\0";
const DUMP_VERSION: u8 = 1;
/// Marks the end of the records.
const END: u8 = 0xff;
/// The dump's write buffer: large sequential writes while the writer waits.
const WRITE_BUFFER: usize = 4 * 1024 * 1024;
/// A key or value longer than this is damage, not a record: sled's own
/// records here are a few KB at most (blobs, above a quarter of a
/// segment, never occur: see `writer::Syncer::open`). Bounds what a
/// damaged file can make a restore allocate.
pub const MAX_RECORD_BYTES: u32 = 16 * 1024 * 1024;
/// Records inserted per sled batch while restoring.
const RESTORE_BATCH: usize = 4096;

/// The part of a backup done on the writer thread: the dump written (not
/// yet synced) and what it holds.
pub(crate) struct Dumped {
    pub file: File,
    pub point: BackupPoint,
    pub pause_us: u64,
}

/// What the events tree says about each shop: its highest sequence number
/// and how many events it has.
#[derive(Default)]
struct EventTally(BTreeMap<String, (u64, u64)>);

impl EventTally {
    fn add(&mut self, key: &[u8]) -> Result<(), String> {
        let zero = key.iter().position(|b| *b == 0).ok_or("an event key without its shop")?;
        let shop = std::str::from_utf8(&key[..zero]).map_err(|_| "an event key whose shop is not text")?;
        let seq: [u8; 8] = key[zero + 1..].try_into().map_err(|_| "an event key without 8 bytes of sequence")?;
        let entry = self.0.entry(shop.to_owned()).or_insert((0, 0));
        entry.0 = entry.0.max(u64::from_be_bytes(seq));
        entry.1 = entry.1.saturating_add(1);
        Ok(())
    }

    fn heads(&self) -> BTreeMap<String, u64> {
        self.0.iter().map(|(shop, (head, _))| (shop.clone(), *head)).collect()
    }

    /// The first shop whose events are not exactly 1..=head.
    fn gap(&self) -> Option<(&str, u64, u64)> {
        self.0.iter().find(|(_, (head, count))| head != count).map(|(s, (h, c))| (s.as_str(), *h, *c))
    }
}

fn last_posting_id(key: Option<&[u8]>) -> Result<u64, String> {
    match key {
        None => Ok(0),
        Some(k) => k.try_into().map(u64::from_be_bytes).map_err(|_| "a posting key is not 8 bytes".to_owned()),
    }
}

fn len32(n: usize) -> io::Result<[u8; 4]> {
    u32::try_from(n)
        .ok()
        .filter(|n| *n <= MAX_RECORD_BYTES)
        .map(u32::to_be_bytes)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "a record is larger than a dump holds"))
}

/// A dump being written: the file behind its buffer and what it holds so
/// far. Moved into each writer job that adds trees to it.
pub(crate) struct Dump {
    out: BufWriter<File>,
    records: BTreeMap<String, u64>,
    events: EventTally,
    /// The last posting key copied.
    last_posting: Option<Vec<u8>>,
    total: u64,
    pause_us: u64,
}

/// Starts a dump at `path` (a new file, mode 0600) with its header.
pub(crate) fn start(path: &Path) -> Result<Dump, BackupRefusal> {
    let target = |e: io::Error| BackupRefusal::Target(format!("{}: {e}", path.display()));
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let file = options.open(path).map_err(target)?;
    let mut out = BufWriter::with_capacity(WRITE_BUFFER, file);
    let mut header = MAGIC.to_vec();
    header.push(DUMP_VERSION);
    let byte = |n: usize| u8::try_from(n).map_err(|_| BackupRefusal::Target("a tree name too long for a dump".into()));
    header.push(byte(TREE_NAMES.len())?);
    for name in TREE_NAMES {
        header.push(byte(name.len())?);
        header.extend_from_slice(name.as_bytes());
    }
    out.write_all(&header).map_err(target)?;
    Ok(Dump { out, records: BTreeMap::new(), events: EventTally::default(), last_posting: None, total: 0, pause_us: 0 })
}

/// Adds every record of the trees `trees` (indexes) to the dump, on the
/// writer thread: nothing changes while it reads. A failure to write the
/// file is the target's (a refusal); a failure to read the store is the
/// store's.
pub(crate) fn add_trees(
    shared: &Shared,
    dump: &mut Dump,
    trees: std::ops::Range<usize>,
) -> Result<Result<(), BackupRefusal>, Failure> {
    let started = Instant::now();
    for index in trees {
        let Some(tree) = shared.trees.get(index) else { continue };
        let tag = u8::try_from(index).map_err(|_| Failure::Corrupt("tree index".into()))?;
        let mut count = 0u64;
        for item in tree.iter() {
            let (k, v) = item.map_err(io)?;
            if index == T::Events as usize {
                dump.events.add(&k).map_err(|m| Failure::Corrupt(m.to_owned()))?;
            }
            if index == T::Postings as usize {
                dump.last_posting = Some(k.to_vec());
            }
            let out = &mut dump.out;
            let written = len32(k.len()).and_then(|kl| {
                let vl = len32(v.len())?;
                out.write_all(&[tag])?;
                out.write_all(&kl)?;
                out.write_all(&k)?;
                out.write_all(&vl)?;
                out.write_all(&v)
            });
            if let Err(e) = written {
                return Ok(Err(BackupRefusal::Target(format!("{DUMP_FILE}: {e}"))));
            }
            count += 1;
        }
        dump.total += count;
        dump.records.insert(TREE_NAMES[index].to_owned(), count);
    }
    let us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    dump.pause_us = dump.pause_us.saturating_add(us);
    Ok(Ok(()))
}

/// Ends the dump (its trailer, the buffer written out; not yet synced).
pub(crate) fn end(dump: Dump) -> Result<Result<Dumped, BackupRefusal>, Failure> {
    let Dump { mut out, records, events, last_posting, total, pause_us } = dump;
    let last_posting_id = last_posting_id(last_posting.as_deref()).map_err(Failure::Corrupt)?;
    let target = |e: io::Error| BackupRefusal::Target(format!("{DUMP_FILE}: {e}"));
    let end = out.write_all(&[END]).and_then(|()| out.write_all(&total.to_be_bytes())).and_then(|()| out.flush());
    if let Err(e) = end {
        return Ok(Err(target(e)));
    }
    let file = match out.into_inner() {
        Ok(f) => f,
        Err(e) => return Ok(Err(target(e.into_error()))),
    };
    Ok(Ok(Dumped { file, point: BackupPoint { event_heads: events.heads(), last_posting_id, records }, pause_us }))
}

/// The whole dump in one writer job: the copy is one point of the
/// writer's order.
pub(crate) fn dump_all(shared: &Shared, mut dump: Dump) -> Result<Result<Dumped, BackupRefusal>, Failure> {
    if let Err(refusal) = add_trees(shared, &mut dump, 0..TREE_NAMES.len())? {
        return Ok(Err(refusal));
    }
    end(dump)
}

/// Off the writer thread, after the dump: sync it and its folder, then
/// read it back for its size and SHA-256.
pub(crate) fn finish(dir: &Path, dumped: &Dumped) -> Result<BackupFile, BackupRefusal> {
    let path = dir.join(DUMP_FILE);
    let target = |e: io::Error| BackupRefusal::Target(format!("{}: {e}", path.display()));
    dumped.file.sync_all().map_err(target)?;
    crate::store::files::sync_dir(dir).map_err(|e| BackupRefusal::Target(format!("{}: {e}", dir.display())))?;
    let (bytes, sha256) = backup::checksum_file(&path).map_err(target)?;
    Ok(BackupFile { name: DUMP_FILE.to_owned(), bytes, sha256 })
}

/// What a restore built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    pub records: u64,
}

fn read_exact(r: &mut impl Read, buf: &mut [u8], path: &Path) -> Result<(), RestoreError> {
    r.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => damaged(path, "ends before its last record"),
        _ => RestoreError::Io { path: path.display().to_string(), source: e },
    })
}

fn read_u32(r: &mut impl Read, path: &Path) -> Result<u32, RestoreError> {
    let mut b = [0u8; 4];
    read_exact(r, &mut b, path)?;
    Ok(u32::from_be_bytes(b))
}

fn read_bytes(r: &mut impl Read, path: &Path) -> Result<Vec<u8>, RestoreError> {
    let n = read_u32(r, path)?;
    if n > MAX_RECORD_BYTES {
        return Err(damaged(path, format!("a record of {n} bytes, above the {MAX_RECORD_BYTES} a dump holds")));
    }
    let n = usize::try_from(n).map_err(|_| damaged(path, "a record larger than memory"))?;
    let mut buf = vec![0u8; n];
    read_exact(r, &mut buf, path)?;
    Ok(buf)
}

/// Builds a new sled store in `store_dir` (absent or empty) from the
/// checked backup in `backup_dir`, and checks it against the manifest.
/// Blocking.
pub fn restore(backup_dir: &Path, manifest: &Manifest, store_dir: &Path) -> Result<Restored, RestoreError> {
    if std::fs::read_dir(store_dir).is_ok_and(|mut d| d.next().is_some()) {
        return Err(RestoreError::Target(format!("{} holds a store already", store_dir.display())));
    }
    let path = backup_dir.join(DUMP_FILE);
    let mut r = BufReader::with_capacity(1 << 20, File::open(&path).map_err(io_at(&path))?);
    let mut magic = vec![0u8; MAGIC.len() + 2];
    read_exact(&mut r, &mut magic, &path)?;
    if &magic[..MAGIC.len()] != MAGIC || magic[MAGIC.len()] != DUMP_VERSION {
        return Err(damaged(&path, "not a store dump of a version this binary reads"));
    }
    let mut names = Vec::new();
    for _ in 0..magic[MAGIC.len() + 1] {
        let mut len = [0u8; 1];
        read_exact(&mut r, &mut len, &path)?;
        let mut name = vec![0u8; usize::from(len[0])];
        read_exact(&mut r, &mut name, &path)?;
        let name = String::from_utf8(name).map_err(|_| damaged(&path, "a tree name is not text"))?;
        // Each dumped tree maps to this binary's tree of the same name.
        let index = TREE_NAMES
            .iter()
            .position(|n| *n == name)
            .ok_or_else(|| damaged(&path, format!("tree {name:?} is not one this binary knows")))?;
        names.push(index);
    }
    crate::store::files::create_dir_all(store_dir).map_err(io_at(store_dir))?;
    let sled_error = |e: sled::Error| RestoreError::Io {
        path: store_dir.display().to_string(),
        source: io::Error::other(e.to_string()),
    };
    let failure = |f: Failure| RestoreError::Io {
        path: store_dir.display().to_string(),
        source: io::Error::other(f.to_string()),
    };
    let db = config::open_db(&super::StoreConfig::new(store_dir)).map_err(failure)?;
    let trees = TREE_NAMES.iter().map(|n| db.open_tree(n)).collect::<Result<Vec<_>, _>>().map_err(sled_error)?;
    let mut batches: Vec<(sled::Batch, usize)> = trees.iter().map(|_| (sled::Batch::default(), 0)).collect();
    let mut records: BTreeMap<String, u64> = BTreeMap::new();
    let mut events = EventTally::default();
    let mut last_posting = None;
    let mut total = 0u64;
    loop {
        let mut tag = [0u8; 1];
        read_exact(&mut r, &mut tag, &path)?;
        if tag[0] == END {
            break;
        }
        let tree = *names.get(usize::from(tag[0])).ok_or_else(|| damaged(&path, "a record of no tree"))?;
        let key = read_bytes(&mut r, &path)?;
        let value = read_bytes(&mut r, &path)?;
        if tree == T::Events as usize {
            events.add(&key).map_err(|m| damaged(&path, m))?;
        }
        if tree == T::Postings as usize {
            last_posting = Some(key.clone());
        }
        *records.entry(TREE_NAMES[tree].to_owned()).or_insert(0) += 1;
        total += 1;
        let (batch, n) = &mut batches[tree];
        batch.insert(key, value);
        *n += 1;
        if *n >= RESTORE_BATCH {
            trees[tree].apply_batch(std::mem::take(batch)).map_err(sled_error)?;
            *n = 0;
        }
    }
    let mut count = [0u8; 8];
    read_exact(&mut r, &mut count, &path)?;
    if u64::from_be_bytes(count) != total {
        return Err(damaged(&path, "its record count differs from its records"));
    }
    if r.read(&mut [0u8; 1]).map_err(io_at(&path))? != 0 {
        return Err(damaged(&path, "bytes after its end"));
    }
    for (tree, (batch, _)) in trees.iter().zip(batches) {
        tree.apply_batch(batch).map_err(sled_error)?;
    }
    // What was read must be what the manifest says was written.
    let manifest_records: BTreeMap<&String, &u64> = manifest.point.records.iter().filter(|(_, n)| **n > 0).collect();
    let read_records: BTreeMap<&String, &u64> = records.iter().collect();
    if manifest_records != read_records {
        return Err(damaged(&path, format!("records per tree {records:?} differ from the manifest's")));
    }
    if events.heads() != manifest.point.event_heads {
        return Err(damaged(&path, "the shops' event heads differ from the manifest's"));
    }
    if let Some((shop, head, count)) = events.gap() {
        return Err(damaged(&path, format!("shop {shop} has {count} events up to sequence {head}: not gap-free")));
    }
    if last_posting_id(last_posting.as_deref()).map_err(|m| damaged(&path, m))? != manifest.point.last_posting_id {
        return Err(damaged(&path, "its last posting id differs from the manifest's"));
    }
    // Durable before anyone opens it: sled's flush, then the fsyncs sled
    // does not do (its data file, `conf`, the folder).
    db.flush().map_err(sled_error)?;
    let syncer = super::writer::Syncer::open(store_dir, super::Durability::Fsync, None).map_err(failure)?;
    syncer.sync_now().map_err(failure)?;
    drop(trees);
    drop(db);
    Ok(Restored { records: total })
}
