//! A power-cut file system for tests, after LazyFS (the file system Jepsen
//! uses for this): a FUSE file system that keeps every change nobody
//! fsynced in memory and forgets all of it on a simulated power cut.
//!
//! `kill -9` cannot tell an fsync from a mere write: the operating system's
//! page cache survives the process. Under this file system it can. What is
//! durable, and when:
//!
//! - **File data.** `write` and truncation (`ftruncate`, `O_TRUNC`) change
//!   only the live file; they are kept in memory, in order, as pending
//!   operations. `fsync` or `fdatasync` of the file applies them to the
//!   file's backing file (one per inode in the backing folder), and only
//!   then are they durable. The two calls are treated alike: a file's size
//!   is part of its data here. `sync_file_range`, which sled's flush ends
//!   in, never reaches a FUSE file system (the kernel writes through to us
//!   at once and has nothing to start): to this model it is no sync at all,
//!   which is what it is on a real disk's volatile cache.
//! - **Names.** `create`, `mkdir`, `link`, `unlink`, `rmdir` and `rename`
//!   change only the live directory. `fsync` of a directory makes that
//!   directory's entries durable as they are at that moment, and nothing
//!   else: not its parent's entry for it, not other directories. A file's
//!   fsync does not make its name durable, and a rename between two
//!   directories becomes durable half by half, as each is fsynced
//!   (renaming a directory into another directory is refused with EXDEV,
//!   since a directory cannot be in two places). This is the POSIX minimum
//!   and stricter than ext4's default (`data=ordered`), where any journal
//!   commit (an fsync of any file, or the 5 s timer) also commits every
//!   earlier metadata change, so an fsync of a new file makes its name
//!   durable too, and where replacing a file by rename flushes its data
//!   first (`auto_da_alloc`). A program that is right here is right there.
//! - **A cut loses all or nothing of a file's unsynced writes** (LazyFS's
//!   `clear-cache`): no torn write, and no subset of them surviving, which
//!   a real disk may also produce.
//! - **Not modelled**: permissions, owners and times change at once and
//!   survive; hard links are supported but no caller here needs one to be
//!   durable; symlinks, special files, xattrs and `fallocate` are refused.
//!
//! A power cut ([`LazyFs::kill_and_fence_when_pending`] or
//! [`LazyFs::fence`], then [`LazyFs::power_cut`]): the caller SIGKILLs the
//! process using the file system first, then fences it (from then on every
//! request fails with EIO, so nothing the dying process still had in
//! flight lands), reaps it, and cuts: the file system is unmounted, every
//! pending write, truncation and name change is thrown away, inodes no
//! durable name reaches are deleted, and a fresh mount shows exactly the
//! durable state.
//!
//! Memory: the durable contents live in backing files; what is held in
//! memory is the pending data, which is what the program wrote since it
//! last fsynced each file. It is bounded by [`PENDING_LIMIT`]; a write
//! beyond it fails with ENOSPC (loudly, in the program under test), it is
//! never dropped silently.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::ffi::{OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, BackgroundSession, BsdFileFlags, Config, Errno, FileAttr, FileHandle, FileType, Filesystem,
    FopenFlags, Generation, INodeNo, LockOwner, MountOption, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

/// Bytes of pending (unsynced) writes the file system holds at most. The
/// server fsyncs its data file after every write group and sled's flusher
/// every 50 ms, so little is pending at a time (at most 12.6 MB seen, sled
/// zeroing segments at recovery); this only stops a runaway writer from
/// eating the machine's memory.
pub const PENDING_LIMIT: usize = 256 * 1024 * 1024;

/// How long the kernel may cache names and attributes. Only this file
/// system changes them, and a power cut mounts afresh, so caching is safe.
const TTL: Duration = Duration::from_secs(1);

const ROOT: u64 = 1;

/// Mean gap between the looks of `kill_and_fence_when_pending`: about the
/// length of the server's write-to-fdatasync window (under a millisecond
/// in a release build), so a look lands anywhere inside one and most cuts
/// find one within their wait; far shorter than the time between cuts.
const POLL_MEAN: Duration = Duration::from_millis(1);

/// What the file system did, for the test's report and its own checks.
#[derive(Debug, Default, Clone)]
pub struct Counters {
    pub writes: u64,
    pub written_bytes: u64,
    pub file_syncs: u64,
    pub dir_syncs: u64,
    pub power_cuts: u64,
    /// Requests refused because they came after the fence.
    pub refused_after_fence: u64,
    /// Pending writes and truncations thrown away by power cuts, and their bytes.
    pub dropped_ops: u64,
    pub dropped_bytes: u64,
    /// Name changes undone by power cuts (see [`Cut`]).
    pub names_undone: u64,
    /// Inodes no durable name reached any more, deleted at a cut.
    pub inodes_deleted: u64,
    /// Power cuts that found pending writes (see `kill_and_fence_when_pending`).
    pub cuts_with_pending: u64,
    /// Most pending bytes held at once.
    pub pending_peak: usize,
}

/// What one power cut threw away.
#[derive(Debug, Default, Clone, Copy)]
pub struct Cut {
    /// Pending writes and truncations, and the bytes of the writes.
    pub dropped_ops: u64,
    pub dropped_bytes: u64,
    /// Names created, or removed, in a surviving directory since it was
    /// last fsynced: the first vanish, the second come back.
    pub names_undone: u64,
    /// Inodes no durable name reaches: never durably named (lost), or
    /// durably removed (freed at last).
    pub inodes_deleted: u64,
}

enum Pending {
    Write { at: u64, data: Vec<u8> },
    SetLen(u64),
}

struct FileNode {
    /// Length of the durable content (the backing file's length).
    durable_len: u64,
    live_len: u64,
    pending: Vec<Pending>,
    /// The durable content; created by the first fsync.
    backing: Option<File>,
}

struct DirNode {
    live: BTreeMap<OsString, u64>,
    durable: BTreeMap<OsString, u64>,
    /// The live parent, for `..`.
    parent: u64,
}

enum Node {
    File(FileNode),
    Dir(DirNode),
}

struct Inode {
    node: Node,
    perm: u16,
    uid: u32,
    gid: u32,
    mtime: SystemTime,
    /// Live names of a file (directories report 2).
    links: u32,
}

struct State {
    inodes: HashMap<u64, Inode>,
    /// Inode numbers are never reused, across power cuts too.
    next_ino: u64,
    backing_dir: PathBuf,
    pending_bytes: usize,
    counters: Counters,
}

type Res<T> = Result<T, Errno>;

fn io_errno(e: std::io::Error) -> Errno {
    Errno::from(e)
}

impl State {
    fn new(backing_dir: PathBuf) -> State {
        let root = Inode {
            node: Node::Dir(DirNode { live: BTreeMap::new(), durable: BTreeMap::new(), parent: ROOT }),
            perm: 0o755,
            uid: 0,
            gid: 0,
            mtime: SystemTime::now(),
            links: 2,
        };
        State {
            inodes: HashMap::from([(ROOT, root)]),
            next_ino: ROOT + 1,
            backing_dir,
            pending_bytes: 0,
            counters: Counters::default(),
        }
    }

    fn inode(&self, ino: u64) -> Res<&Inode> {
        self.inodes.get(&ino).ok_or(Errno::ENOENT)
    }

    fn inode_mut(&mut self, ino: u64) -> Res<&mut Inode> {
        self.inodes.get_mut(&ino).ok_or(Errno::ENOENT)
    }

    fn dir(&self, ino: u64) -> Res<&DirNode> {
        match &self.inode(ino)?.node {
            Node::Dir(d) => Ok(d),
            Node::File(_) => Err(Errno::ENOTDIR),
        }
    }

    fn dir_mut(&mut self, ino: u64) -> Res<&mut DirNode> {
        match &mut self.inode_mut(ino)?.node {
            Node::Dir(d) => Ok(d),
            Node::File(_) => Err(Errno::ENOTDIR),
        }
    }

    fn file_mut(&mut self, ino: u64) -> Res<&mut FileNode> {
        match &mut self.inode_mut(ino)?.node {
            Node::File(f) => Ok(f),
            Node::Dir(_) => Err(Errno::EISDIR),
        }
    }

    fn attr(&self, ino: u64) -> Res<FileAttr> {
        let i = self.inode(ino)?;
        let (kind, size) = match &i.node {
            Node::File(f) => (FileType::RegularFile, f.live_len),
            Node::Dir(d) => (FileType::Directory, u64::try_from(d.live.len()).unwrap_or(u64::MAX)),
        };
        Ok(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: i.mtime,
            mtime: i.mtime,
            ctime: i.mtime,
            crtime: i.mtime,
            kind,
            perm: i.perm,
            nlink: i.links,
            uid: i.uid,
            gid: i.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        })
    }

    fn lookup(&self, parent: u64, name: &OsStr) -> Res<u64> {
        self.dir(parent)?.live.get(name).copied().ok_or(Errno::ENOENT)
    }

    /// A new inode named `name` in `parent` (live only).
    fn add(&mut self, parent: u64, name: &OsStr, node: Node, mode: u32, req: &Request) -> Res<u64> {
        if self.dir(parent)?.live.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        let links = if matches!(node, Node::Dir(_)) { 2 } else { 1 };
        let perm = u16::try_from(mode & 0o7777).unwrap_or(0o600);
        let inode = Inode { node, perm, uid: req.uid(), gid: req.gid(), mtime: SystemTime::now(), links };
        self.inodes.insert(ino, inode);
        let dir = self.dir_mut(parent)?;
        dir.live.insert(name.to_owned(), ino);
        Ok(ino)
    }

    fn is_dir(&self, ino: u64) -> bool {
        matches!(self.inodes.get(&ino).map(|i| &i.node), Some(Node::Dir(_)))
    }

    /// Removes a live name. A directory must be empty.
    fn remove(&mut self, parent: u64, name: &OsStr, want_dir: bool) -> Res<()> {
        let ino = self.lookup(parent, name)?;
        match (&self.inode(ino)?.node, want_dir) {
            (Node::Dir(d), true) if !d.live.is_empty() => return Err(Errno::ENOTEMPTY),
            (Node::Dir(_), true) | (Node::File(_), false) => {}
            (Node::Dir(_), false) => return Err(Errno::EISDIR),
            (Node::File(_), true) => return Err(Errno::ENOTDIR),
        }
        self.dir_mut(parent)?.live.remove(name);
        let inode = self.inode_mut(ino)?;
        inode.links = inode.links.saturating_sub(1);
        Ok(())
    }

    fn rename(&mut self, from: u64, name: &OsStr, to: u64, new_name: &OsStr, flags: RenameFlags) -> Res<()> {
        if flags.intersects(RenameFlags::RENAME_EXCHANGE | RenameFlags::RENAME_WHITEOUT) {
            return Err(Errno::EINVAL);
        }
        let ino = self.lookup(from, name)?;
        let moving_dir = self.is_dir(ino);
        if moving_dir && from != to {
            // Half-durable, it would be in two directories at once.
            return Err(Errno::EXDEV);
        }
        if let Ok(old) = self.lookup(to, new_name) {
            if old == ino {
                return Ok(());
            }
            if flags.contains(RenameFlags::RENAME_NOREPLACE) {
                return Err(Errno::EEXIST);
            }
            self.remove(to, new_name, moving_dir)?;
        }
        self.dir_mut(from)?.live.remove(name);
        self.dir_mut(to)?.live.insert(new_name.to_owned(), ino);
        Ok(())
    }

    fn write(&mut self, ino: u64, at: u64, data: &[u8]) -> Res<u32> {
        let len = u32::try_from(data.len()).map_err(|_| Errno::EINVAL)?;
        if self.pending_bytes + data.len() > PENDING_LIMIT {
            return Err(Errno::ENOSPC);
        }
        let end = at.checked_add(u64::from(len)).ok_or(Errno::EFBIG)?;
        let file = self.file_mut(ino)?;
        file.pending.push(Pending::Write { at, data: data.to_vec() });
        file.live_len = file.live_len.max(end);
        self.inode_mut(ino)?.mtime = SystemTime::now();
        self.pending_bytes += data.len();
        self.counters.pending_peak = self.counters.pending_peak.max(self.pending_bytes);
        self.counters.writes += 1;
        self.counters.written_bytes += u64::from(len);
        Ok(len)
    }

    fn set_len(&mut self, ino: u64, len: u64) -> Res<()> {
        let file = self.file_mut(ino)?;
        file.pending.push(Pending::SetLen(len));
        file.live_len = len;
        self.inode_mut(ino)?.mtime = SystemTime::now();
        Ok(())
    }

    /// The live content: the durable bytes with the pending operations laid
    /// over them in order (a truncation zeroes what lies beyond it).
    fn read(&mut self, ino: u64, offset: u64, size: u32) -> Res<Vec<u8>> {
        let file = self.file_mut(ino)?;
        if offset >= file.live_len {
            return Ok(Vec::new());
        }
        let end = file.live_len.min(offset.saturating_add(u64::from(size)));
        let len = usize::try_from(end - offset).map_err(|_| Errno::EINVAL)?;
        let mut buf = vec![0u8; len];
        if let (Some(backing), true) = (&file.backing, offset < file.durable_len) {
            let n = usize::try_from(end.min(file.durable_len) - offset).map_err(|_| Errno::EINVAL)?;
            backing.read_exact_at(&mut buf[..n], offset).map_err(io_errno)?;
        }
        for op in &file.pending {
            match op {
                Pending::Write { at, data } => {
                    let (from, to) = ((*at).max(offset), (at + data.len() as u64).min(end));
                    if from < to {
                        let dst = usize::try_from(from - offset).map_err(|_| Errno::EINVAL)?;
                        let src = usize::try_from(from - at).map_err(|_| Errno::EINVAL)?;
                        let n = usize::try_from(to - from).map_err(|_| Errno::EINVAL)?;
                        buf[dst..dst + n].copy_from_slice(&data[src..src + n]);
                    }
                }
                Pending::SetLen(n) if *n < end => {
                    let from = usize::try_from((*n).max(offset) - offset).map_err(|_| Errno::EINVAL)?;
                    buf[from..].fill(0);
                }
                Pending::SetLen(_) => {}
            }
        }
        Ok(buf)
    }

    /// fsync/fdatasync of a file: its pending operations reach its backing
    /// file, in order, and become durable.
    fn sync_file(&mut self, ino: u64) -> Res<()> {
        let path = self.backing_dir.join(ino.to_string());
        let file = self.file_mut(ino)?;
        if file.backing.is_none() {
            let f = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(path);
            file.backing = Some(f.map_err(io_errno)?);
        }
        let backing = file.backing.as_ref().ok_or(Errno::EIO)?;
        let mut freed = 0;
        for op in file.pending.drain(..) {
            match op {
                Pending::Write { at, data } => {
                    backing.write_all_at(&data, at).map_err(io_errno)?;
                    freed += data.len();
                }
                Pending::SetLen(n) => backing.set_len(n).map_err(io_errno)?,
            }
        }
        let len = backing.metadata().map_err(io_errno)?.len();
        // Replaying the operations in order reproduces the live length.
        assert_eq!(len, file.live_len, "lazyfs: backing file of inode {ino} has the wrong length");
        file.durable_len = len;
        self.pending_bytes -= freed;
        self.counters.file_syncs += 1;
        Ok(())
    }

    /// fsync of a directory: its entries, as they are now, become durable.
    fn sync_dir(&mut self, ino: u64) -> Res<()> {
        let dir = self.dir_mut(ino)?;
        dir.durable = dir.live.clone();
        self.counters.dir_syncs += 1;
        Ok(())
    }

    /// The power cut proper: forget everything that is not durable.
    fn cut(&mut self) -> Cut {
        let mut cut = Cut::default();
        // What a durable name reaches from the root survives.
        let mut alive = HashSet::from([ROOT]);
        let mut queue = VecDeque::from([ROOT]);
        let mut parents = HashMap::from([(ROOT, ROOT)]);
        while let Some(ino) = queue.pop_front() {
            if let Some(Inode { node: Node::Dir(d), .. }) = self.inodes.get(&ino) {
                for child in d.durable.values() {
                    if alive.insert(*child) {
                        parents.insert(*child, ino);
                        queue.push_back(*child);
                    }
                }
            }
        }
        for inode in self.inodes.values_mut() {
            if let Node::File(f) = &mut inode.node {
                cut.dropped_ops += f.pending.len() as u64;
                for op in f.pending.drain(..) {
                    if let Pending::Write { data, .. } = op {
                        cut.dropped_bytes += data.len() as u64;
                    }
                }
                f.live_len = f.durable_len;
            }
        }
        let gone: Vec<u64> = self.inodes.keys().filter(|i| !alive.contains(i)).copied().collect();
        for ino in gone {
            self.inodes.remove(&ino);
            let _ = std::fs::remove_file(self.backing_dir.join(ino.to_string()));
            cut.inodes_deleted += 1;
        }
        let mut links: HashMap<u64, u32> = HashMap::new();
        for inode in self.inodes.values() {
            if let Node::Dir(d) = &inode.node {
                for child in d.durable.values() {
                    *links.entry(*child).or_default() += 1;
                }
            }
        }
        for (ino, inode) in &mut self.inodes {
            match &mut inode.node {
                Node::File(_) => inode.links = links.get(ino).copied().unwrap_or(0),
                Node::Dir(d) => {
                    let created = d.live.iter().filter(|(n, i)| d.durable.get(*n) != Some(i)).count();
                    let removed = d.durable.iter().filter(|(n, i)| d.live.get(*n) != Some(i)).count();
                    cut.names_undone += (created + removed) as u64;
                    d.live = d.durable.clone();
                    d.parent = parents.get(ino).copied().unwrap_or(ROOT);
                }
            }
        }
        self.pending_bytes = 0;
        let c = &mut self.counters;
        c.power_cuts += 1;
        c.dropped_ops += cut.dropped_ops;
        c.dropped_bytes += cut.dropped_bytes;
        c.names_undone += cut.names_undone;
        c.inodes_deleted += cut.inodes_deleted;
        cut
    }
}

/// The FUSE side of one mount: each request locks the state, acts,
/// answers. Once fenced, the mount answers EIO to everything, for good: a
/// power cut ends it, and a fresh mount serves the durable state.
struct Fuse {
    state: Arc<Mutex<State>>,
    fenced: Arc<AtomicBool>,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Fuse {
    /// Runs `op` on the state unless this mount is fenced.
    fn run<T>(&self, op: impl FnOnce(&mut State) -> Res<T>) -> Res<T> {
        let mut state = lock(&self.state);
        // Checked under the lock, so nothing lands after `fence` returns.
        if self.fenced.load(Ordering::SeqCst) {
            state.counters.refused_after_fence += 1;
            return Err(Errno::EIO);
        }
        op(&mut state)
    }
}

macro_rules! answer {
    ($result:expr, $ok:ident => $done:expr, $reply:ident) => {
        match $result {
            Ok($ok) => $done,
            Err(e) => $reply.error(e),
        }
    };
}

impl Filesystem for Fuse {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let r = self.run(|s| s.attr(s.lookup(parent.0, name)?));
        answer!(r, a => reply.entry(&TTL, &a, Generation(0)), reply)
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        answer!(self.run(|s| s.attr(ino.0)), a => reply.attr(&TTL, &a), reply)
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let r = self.run(|s| {
            if let Some(len) = size {
                s.set_len(ino.0, len)?;
            }
            let inode = s.inode_mut(ino.0)?;
            if let Some(mode) = mode {
                inode.perm = u16::try_from(mode & 0o7777).map_err(|_| Errno::EINVAL)?;
            }
            inode.uid = uid.unwrap_or(inode.uid);
            inode.gid = gid.unwrap_or(inode.gid);
            match mtime {
                Some(TimeOrNow::SpecificTime(t)) => inode.mtime = t,
                Some(TimeOrNow::Now) => inode.mtime = SystemTime::now(),
                None => {}
            }
            s.attr(ino.0)
        });
        answer!(r, a => reply.attr(&TTL, &a), reply)
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        let r = self.run(|s| {
            let node = Node::Dir(DirNode { live: BTreeMap::new(), durable: BTreeMap::new(), parent: parent.0 });
            let ino = s.add(parent.0, name, node, mode & !umask, req)?;
            s.attr(ino)
        });
        answer!(r, a => reply.entry(&TTL, &a, Generation(0)), reply)
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let r = self.run(|s| {
            let node = Node::File(FileNode { durable_len: 0, live_len: 0, pending: Vec::new(), backing: None });
            let ino = s.add(parent.0, name, node, mode & !umask, req)?;
            s.attr(ino)
        });
        answer!(r, a => reply.created(&TTL, &a, Generation(0), FileHandle(0), FopenFlags::empty()), reply)
    }

    fn link(&self, _req: &Request, ino: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        let r = self.run(|s| {
            if s.is_dir(ino.0) {
                return Err(Errno::EPERM);
            }
            if s.dir(newparent.0)?.live.contains_key(newname) {
                return Err(Errno::EEXIST);
            }
            s.dir_mut(newparent.0)?.live.insert(newname.to_owned(), ino.0);
            s.inode_mut(ino.0)?.links += 1;
            s.attr(ino.0)
        });
        answer!(r, a => reply.entry(&TTL, &a, Generation(0)), reply)
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        answer!(self.run(|s| s.remove(parent.0, name, false)), _x => reply.ok(), reply)
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        answer!(self.run(|s| s.remove(parent.0, name, true)), _x => reply.ok(), reply)
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let r = self.run(|s| s.rename(parent.0, name, newparent.0, newname, flags));
        answer!(r, _x => reply.ok(), reply)
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        answer!(self.run(|s| s.inode(ino.0).map(|_| ())), _x => reply.opened(FileHandle(0), FopenFlags::empty()), reply)
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        answer!(self.run(|s| s.read(ino.0, offset, size)), data => reply.data(&data), reply)
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        answer!(self.run(|s| s.write(ino.0, offset, data)), n => reply.written(n), reply)
    }

    /// Called on every close: no durability, as on a real disk.
    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        reply.ok();
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        answer!(self.run(|s| s.sync_file(ino.0)), _x => reply.ok(), reply)
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        answer!(self.run(|s| s.dir(ino.0).map(|_| ())), _x => reply.opened(FileHandle(0), FopenFlags::empty()), reply)
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let r = self.run(|s| {
            let dir = s.dir(ino.0)?;
            let mut entries =
                vec![(ino.0, FileType::Directory, OsString::from(".")), (dir.parent, FileType::Directory, "..".into())];
            for (name, child) in &dir.live {
                let kind = if s.is_dir(*child) { FileType::Directory } else { FileType::RegularFile };
                entries.push((*child, kind, name.clone()));
            }
            Ok(entries)
        });
        let entries = match r {
            Ok(e) => e,
            Err(e) => return reply.error(e),
        };
        let skip = usize::try_from(offset).unwrap_or(usize::MAX);
        for (i, (child, kind, name)) in entries.into_iter().enumerate().skip(skip) {
            // The offset of an entry is where the next read starts.
            if reply.add(INodeNo(child), i as u64 + 1, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn fsyncdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        answer!(self.run(|s| s.sync_dir(ino.0)), _x => reply.ok(), reply)
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        // Plenty of room: 16 GiB in 4 KiB blocks, a million inodes.
        reply.statfs(4 << 20, 4 << 20, 4 << 20, 1 << 20, 1 << 20, 4096, 255, 4096);
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        answer!(self.run(|s| s.inode(ino.0).map(|_| ())), _x => reply.ok(), reply)
    }
}

/// A mounted power-cut file system over a temporary backing folder.
pub struct LazyFs {
    state: Arc<Mutex<State>>,
    session: Option<BackgroundSession>,
    /// The current mount's fence.
    fenced: Arc<AtomicBool>,
    mountpoint: PathBuf,
    // Declared last: removed after the session is unmounted.
    _dir: tempfile::TempDir,
}

impl LazyFs {
    /// Mounts an empty file system in a new temporary folder. Fails when
    /// FUSE is not available here (no `/dev/fuse`, or no right to mount).
    pub fn mount() -> Result<LazyFs, String> {
        let dir = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
        let (mountpoint, backing) = (dir.path().join("mnt"), dir.path().join("disk"));
        for d in [&mountpoint, &backing] {
            std::fs::create_dir(d).map_err(|e| format!("create {}: {e}", d.display()))?;
        }
        let state = Arc::new(Mutex::new(State::new(backing)));
        let fenced = Arc::new(AtomicBool::new(false));
        let mut fs = LazyFs { state, session: None, fenced, mountpoint, _dir: dir };
        fs.attach()?;
        Ok(fs)
    }

    fn attach(&mut self) -> Result<(), String> {
        let mut config = Config::default();
        config.mount_options = vec![MountOption::FSName("lazyfs".into()), MountOption::Subtype("lazyfs".into())];
        self.fenced = Arc::new(AtomicBool::new(false));
        let fuse = Fuse { state: self.state.clone(), fenced: self.fenced.clone() };
        let session = fuser::spawn_mount(fuse, &self.mountpoint, &config)
            .map_err(|e| format!("mount FUSE at {}: {e}", self.mountpoint.display()))?;
        self.session = Some(session);
        Ok(())
    }

    /// Where the file system is mounted.
    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    /// From now until the cut, every request fails with EIO. Call it right
    /// after the SIGKILL and before reaping: whatever the dying process had
    /// in flight must not land.
    pub fn fence(&self) {
        // Taking the lock waits for a request being served to finish.
        let _state = lock(&self.state);
        self.fenced.store(true, Ordering::SeqCst);
    }

    /// Picks the moment of a power cut: looks at random moments (on
    /// average every `POLL_MEAN`) until one finds a write pending, or
    /// `within` has passed; then, holding the file system still so that no
    /// request is served meanwhile, calls `kill` (which must SIGKILL the
    /// processes using it) and fences. So the process dies first, with
    /// unsynced data in flight, and nothing it still sends lands. The gaps
    /// are random, so the cut falls anywhere in a write-to-fsync window,
    /// not just after its first write. Returns the bytes pending at the
    /// cut.
    pub fn kill_and_fence_when_pending(&self, within: Duration, kill: impl FnOnce()) -> usize {
        let deadline = std::time::Instant::now() + within;
        loop {
            let mut state = lock(&self.state);
            if state.pending_bytes > 0 || std::time::Instant::now() >= deadline {
                kill();
                self.fenced.store(true, Ordering::SeqCst);
                if state.pending_bytes > 0 {
                    state.counters.cuts_with_pending += 1;
                }
                return state.pending_bytes;
            }
            drop(state);
            let gap = rand::random_range(0..2 * POLL_MEAN.as_micros());
            std::thread::sleep(Duration::from_micros(u64::try_from(gap).unwrap_or(0)));
        }
    }

    /// The power cut, once the processes using the file system are dead
    /// (and reaped) and the file system fenced: unmounts, throws away every
    /// change not made durable, and mounts the durable state afresh. Files
    /// still open on the old mount stay dead (EIO).
    pub fn power_cut(&mut self) -> Cut {
        assert!(self.fenced.load(Ordering::SeqCst), "lazyfs: fence before the power cut");
        if let Some(session) = self.session.take() {
            detach(&self.mountpoint).expect("unmount lazyfs");
            // Its thread ends once nothing holds the old mount open; if
            // something still does, it keeps answering EIO to it. Either
            // way the old mount is off the path before the new one goes on.
            drop(session);
        }
        let cut = lock(&self.state).cut();
        self.attach().expect("mount lazyfs again after the power cut");
        cut
    }

    pub fn counters(&self) -> Counters {
        lock(&self.state).counters.clone()
    }

    /// Bytes written and not yet fsynced, right now.
    pub fn pending_bytes(&self) -> usize {
        lock(&self.state).pending_bytes
    }
}

impl Drop for LazyFs {
    fn drop(&mut self) {
        self.fenced.store(true, Ordering::SeqCst);
        if let Some(session) = self.session.take() {
            // Best effort: this may run while a failed test unwinds.
            let _ = detach(&self.mountpoint);
            drop(session);
        }
    }
}

/// Takes the mount off its path at once, even while files on it are open
/// (`umount -l`; `fusermount3 -u -z` when not root).
fn detach(mountpoint: &Path) -> std::io::Result<()> {
    let path = std::ffi::CString::new(mountpoint.as_os_str().as_encoded_bytes())?;
    // SAFETY: `path` is a valid NUL-terminated string that outlives the call.
    if unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) } == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::EPERM) {
        return Err(err);
    }
    let status = std::process::Command::new("fusermount3").args(["-u", "-z", "--"]).arg(mountpoint).status()?;
    match status.success() {
        true => Ok(()),
        false => Err(std::io::Error::other(format!("fusermount3 -u -z: {status}"))),
    }
}
