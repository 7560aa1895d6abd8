//! A filesystem that fails on command: a FUSE passthrough over a directory (with `fuser`),
//! for the storage-fault tests and the chaos soak's `--power-loss` mode. Mounting needs root
//! (or `fusermount3`) and `/dev/fuse`.
//!
//! Every operation reaches the directory underneath at once, and the filesystem remembers
//! what a real disk would not have kept yet, the way Jepsen's LazyFS does:
//!
//! - the bytes a write replaced (and the file's length before it), until an `fsync` or
//!   `fdatasync` of that file;
//! - the names a create, mkdir, rename or unlink changed in a directory, until an `fsync`
//!   of that directory (an unlinked file's data is kept aside until then).
//!
//! [`Faults::cut_power`] undoes all of it, newest first: what is left is what a disk that
//! honours `fsync` would hold after a power loss. Remount (a new [`FaultFs`]) before reading
//! it, so that no cache of the kernel's survives the cut either.
//!
//! On command it also: fails writes with ENOSPC (and reports no free space), fails
//! `fsync`/`fdatasync` with EIO (and, as Linux does after a failed writeback, drops the
//! file's unsynced writes at once), and delays each `fsync` by some milliseconds.
//!
//! Files are opened with direct I/O: the kernel caches no page of them, so what a program
//! reads is always what the filesystem holds, also after an fsync failure dropped writes.
#![allow(dead_code)]

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, WriteFlags,
};

/// The mounted filesystem; unmounted when dropped.
pub struct FaultFs {
    session: Option<fuser::BackgroundSession>,
    faults: Faults,
    mountpoint: PathBuf,
}

/// What a test tells the filesystem to do; cheap to clone.
#[derive(Clone)]
pub struct Faults(Arc<State>);

impl FaultFs {
    /// Mounts a passthrough of `base/root` at `mountpoint` (both created if absent). Data an
    /// earlier mount left in `base` is what the new one starts from.
    pub fn mount(base: &Path, mountpoint: &Path) -> std::io::Result<Self> {
        let (root, trash) = (base.join("root"), base.join("trash"));
        for dir in [&root, &trash, &mountpoint.to_path_buf()] {
            std::fs::create_dir_all(dir)?;
        }
        let state = Arc::new(State {
            root: root.clone(),
            trash,
            inodes: Mutex::new(Inodes::new(root)),
            handles: Mutex::new(HashMap::new()),
            next_handle: AtomicU64::new(1),
            next_trash: AtomicU64::new(1),
            undo: Mutex::new(Vec::new()),
            full: AtomicBool::new(false),
            available: AtomicU64::new(u64::MAX),
            fail_fsync: AtomicBool::new(false),
            fsync_delay_ms: AtomicU64::new(0),
            dead: AtomicBool::new(false),
            fsyncs: AtomicU64::new(0),
            failed_fsyncs: AtomicU64::new(0),
        });
        let mut config = fuser::Config::default();
        config.mount_options = vec![
            fuser::MountOption::FSName("tcc-faultfs".into()),
            fuser::MountOption::DefaultPermissions,
        ];
        config.n_threads = Some(4);
        let session = fuser::spawn_mount(Fs(state.clone()), mountpoint, &config)?;
        Ok(Self {
            session: Some(session),
            faults: Faults(state),
            mountpoint: mountpoint.to_owned(),
        })
    }

    pub fn faults(&self) -> Faults {
        self.faults.clone()
    }

    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    /// Unmounts (lazily if something still holds a file open).
    pub fn unmount(mut self) {
        self.umount();
    }

    fn umount(&mut self) {
        if let Some(session) = self.session.take() {
            if session.umount_and_join().is_err() {
                let _ = std::process::Command::new("umount")
                    .arg("-l")
                    .arg(&self.mountpoint)
                    .status();
            }
        }
    }
}

impl Drop for FaultFs {
    fn drop(&mut self) {
        self.faults.0.dead.store(true, Ordering::SeqCst);
        self.umount();
    }
}

impl Faults {
    /// A full disk: writes fail with ENOSPC and `statfs` reports no free space (`false`:
    /// room again).
    pub fn set_full(&self, full: bool) {
        self.set_enospc(full);
        self.set_available(full.then_some(0));
    }

    /// Writes fail with ENOSPC, whatever `statfs` reports (a quota, a thin volume, another
    /// program taking the last blocks between two checks).
    pub fn set_enospc(&self, enospc: bool) {
        self.0.full.store(enospc, Ordering::SeqCst);
    }

    /// The free space `statfs` reports, in bytes (`None`: 1 GiB, all free); writes still
    /// succeed unless [`Faults::set_enospc`].
    pub fn set_available(&self, available: Option<u64>) {
        self.0
            .available
            .store(available.unwrap_or(u64::MAX), Ordering::SeqCst);
    }

    /// `fsync` and `fdatasync` fail with EIO, dropping the file's unsynced writes.
    pub fn set_fsync_fails(&self, fails: bool) {
        self.0.fail_fsync.store(fails, Ordering::SeqCst);
    }

    /// Each `fsync` (of a file or a directory) waits this long before it happens.
    pub fn set_fsync_delay(&self, delay: Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.0.fsync_delay_ms.store(ms, Ordering::SeqCst);
    }

    /// `fsync`s and `fdatasync`s done (of files and directories).
    pub fn fsyncs(&self) -> u64 {
        self.0.fsyncs.load(Ordering::SeqCst)
    }

    /// `fsync`s answered EIO.
    pub fn failed_fsyncs(&self) -> u64 {
        self.0.failed_fsyncs.load(Ordering::SeqCst)
    }

    /// Cuts the power: from now on every operation fails with EIO, and every write and name
    /// change not made durable by an fsync is undone, newest first. Kill the program using
    /// the filesystem first (its writes would fail anyway), then drop this mount and mount
    /// again to go on from what survived. Returns how many changes were undone.
    pub fn cut_power(&self) -> usize {
        self.0.dead.store(true, Ordering::SeqCst);
        let undo = std::mem::take(&mut *self.0.undo.lock().unwrap());
        let undone = undo.len();
        for change in undo.into_iter().rev() {
            change.revert(&self.0);
        }
        undone
    }
}

/// Something the disk has not made durable yet, and how to undo it.
enum Change {
    /// A write or truncation of `ino`: its length before, and the bytes it replaced.
    Data {
        ino: u64,
        file: Arc<File>,
        offset: u64,
        old: Vec<u8>,
        old_len: u64,
    },
    /// A name that appeared in directory `dir` (create, mkdir, rename's target).
    Created { dir: u64, path: PathBuf },
    /// A name that left directory `dir` (unlink, rename's source); its file kept in `kept`.
    Removed {
        dir: u64,
        path: PathBuf,
        kept: PathBuf,
    },
}

impl Change {
    fn revert(self, state: &State) {
        match self {
            Change::Data {
                file,
                offset,
                old,
                old_len,
                ..
            } => {
                let _ = file.write_all_at(&old, offset);
                let _ = file.set_len(old_len);
            }
            Change::Created { path, .. } => {
                let full = state.root.join(&path);
                if full.is_dir() {
                    let _ = std::fs::remove_dir_all(&full);
                } else {
                    let _ = std::fs::remove_file(&full);
                }
            }
            Change::Removed { path, kept, .. } => {
                let _ = std::fs::rename(kept, state.root.join(path));
            }
        }
    }

    /// An fsync of `ino` (a file's data, or a directory's names) makes this durable.
    fn made_durable_by(&self, ino: u64) -> bool {
        match self {
            Change::Data { ino: of, .. } => *of == ino,
            Change::Created { dir, .. } | Change::Removed { dir, .. } => *dir == ino,
        }
    }
}

struct State {
    root: PathBuf,
    trash: PathBuf,
    inodes: Mutex<Inodes>,
    handles: Mutex<HashMap<u64, Arc<File>>>,
    next_handle: AtomicU64,
    next_trash: AtomicU64,
    undo: Mutex<Vec<Change>>,
    full: AtomicBool,
    /// What `statfs` reports free, in bytes; `u64::MAX`: all of it.
    available: AtomicU64,
    fail_fsync: AtomicBool,
    fsync_delay_ms: AtomicU64,
    dead: AtomicBool,
    fsyncs: AtomicU64,
    failed_fsyncs: AtomicU64,
}

/// Inode numbers of ours for paths relative to the root (the root is 1).
struct Inodes {
    paths: HashMap<u64, PathBuf>,
    numbers: HashMap<PathBuf, u64>,
    next: u64,
}

impl Inodes {
    fn new(_root: PathBuf) -> Self {
        let mut inodes = Self {
            paths: HashMap::new(),
            numbers: HashMap::new(),
            next: 2,
        };
        inodes.paths.insert(1, PathBuf::new());
        inodes.numbers.insert(PathBuf::new(), 1);
        inodes
    }

    fn number(&mut self, path: &Path) -> u64 {
        if let Some(n) = self.numbers.get(path) {
            return *n;
        }
        let n = self.next;
        self.next += 1;
        self.paths.insert(n, path.to_owned());
        self.numbers.insert(path.to_owned(), n);
        n
    }

    fn forget_path(&mut self, path: &Path) {
        if let Some(n) = self.numbers.remove(path) {
            self.paths.remove(&n);
        }
    }

    /// `from` (and everything under it) is now called `to`.
    fn moved(&mut self, from: &Path, to: &Path) {
        self.forget_path(to);
        let moved: Vec<(PathBuf, u64)> = self
            .numbers
            .iter()
            .filter(|(p, _)| p.starts_with(from))
            .map(|(p, n)| (p.clone(), *n))
            .collect();
        for (old, n) in moved {
            // Not `to.join("")`: that appends a `/`, which a file's path must not end with.
            let rest = old.strip_prefix(from).expect("under from");
            let new = if rest.as_os_str().is_empty() {
                to.to_path_buf()
            } else {
                to.join(rest)
            };
            self.numbers.remove(&old);
            self.numbers.insert(new.clone(), n);
            self.paths.insert(n, new);
        }
    }
}

const TTL: Duration = Duration::ZERO;

struct Fs(Arc<State>);

impl State {
    fn path(&self, ino: INodeNo) -> Result<PathBuf, Errno> {
        self.inodes
            .lock()
            .unwrap()
            .paths
            .get(&ino.0)
            .cloned()
            .ok_or(Errno::ENOENT)
    }

    fn child(&self, parent: INodeNo, name: &OsStr) -> Result<PathBuf, Errno> {
        Ok(self.path(parent)?.join(name))
    }

    fn attr(&self, path: &Path) -> Result<FileAttr, Errno> {
        let meta = std::fs::symlink_metadata(self.root.join(path)).map_err(Errno::from)?;
        let ino = self.inodes.lock().unwrap().number(path);
        Ok(attr_of(ino, &meta))
    }

    fn handle(&self, fh: FileHandle) -> Result<Arc<File>, Errno> {
        self.handles
            .lock()
            .unwrap()
            .get(&fh.0)
            .cloned()
            .ok_or(Errno::EBADF)
    }

    fn keep(&self, file: File) -> FileHandle {
        let fh = self.next_handle.fetch_add(1, Ordering::SeqCst);
        self.handles.lock().unwrap().insert(fh, Arc::new(file));
        FileHandle(fh)
    }

    fn alive(&self) -> Result<(), Errno> {
        if self.dead.load(Ordering::SeqCst) {
            Err(Errno::EIO)
        } else {
            Ok(())
        }
    }

    fn room(&self) -> Result<(), Errno> {
        self.alive()?;
        if self.full.load(Ordering::SeqCst) {
            Err(Errno::ENOSPC)
        } else {
            Ok(())
        }
    }

    fn remember(&self, change: Change) {
        self.undo.lock().unwrap().push(change);
    }

    /// Records the bytes `[offset, offset + len)` of `file` and its length, before they change.
    fn before_write(&self, ino: u64, file: &Arc<File>, offset: u64, len: u64) -> Result<(), Errno> {
        let old_len = file.metadata().map_err(Errno::from)?.len();
        let end = (offset + len).min(old_len);
        let mut old = vec![0; usize::try_from(end.saturating_sub(offset)).unwrap()];
        if !old.is_empty() {
            file.read_exact_at(&mut old, offset).map_err(Errno::from)?;
        }
        self.remember(Change::Data {
            ino,
            file: file.clone(),
            offset,
            old,
            old_len,
        });
        Ok(())
    }

    /// Moves `path` aside (so that a power cut can bring it back) and records it.
    fn remove(&self, dir: u64, path: &Path) -> Result<(), Errno> {
        let kept = self
            .trash
            .join(self.next_trash.fetch_add(1, Ordering::SeqCst).to_string());
        std::fs::rename(self.root.join(path), &kept).map_err(Errno::from)?;
        self.remember(Change::Removed {
            dir,
            path: path.to_owned(),
            kept,
        });
        Ok(())
    }

    /// An fsync of `ino` succeeded: what it covers is durable.
    fn durable(&self, ino: u64) {
        let mut undo = self.undo.lock().unwrap();
        undo.retain(|change| {
            let done = change.made_durable_by(ino);
            if done {
                if let Change::Removed { kept, .. } = change {
                    let _ = std::fs::remove_file(kept).or_else(|_| std::fs::remove_dir_all(kept));
                }
            }
            !done
        });
    }

    /// An fsync of `ino` failed: like Linux after a failed writeback, the unsynced writes are
    /// gone (the pages are marked clean and dropped), and a later fsync will not bring them.
    fn lost(&self, ino: u64) {
        let mut undo = self.undo.lock().unwrap();
        let (gone, kept): (Vec<Change>, Vec<Change>) = std::mem::take(&mut *undo)
            .into_iter()
            .partition(|c| matches!(c, Change::Data { ino: of, .. } if *of == ino));
        *undo = kept;
        drop(undo);
        for change in gone.into_iter().rev() {
            change.revert(self);
        }
    }

    /// Runs an fsync of `ino` (with `sync`, the real one underneath) as told: delayed,
    /// failed, or done.
    fn fsync(
        self: &Arc<Self>,
        ino: u64,
        sync: impl FnOnce() -> std::io::Result<()> + Send + 'static,
        reply: ReplyEmpty,
    ) {
        let delay = self.fsync_delay_ms.load(Ordering::SeqCst);
        let state = self.clone();
        let run = move || {
            if delay > 0 {
                std::thread::sleep(Duration::from_millis(delay));
            }
            if state.alive().is_err() {
                return reply.error(Errno::EIO);
            }
            state.fsyncs.fetch_add(1, Ordering::SeqCst);
            if state.fail_fsync.load(Ordering::SeqCst) {
                state.failed_fsyncs.fetch_add(1, Ordering::SeqCst);
                state.lost(ino);
                return reply.error(Errno::EIO);
            }
            match sync() {
                Ok(()) => {
                    state.durable(ino);
                    reply.ok();
                }
                Err(e) => reply.error(Errno::from(e)),
            }
        };
        if delay > 0 {
            // A slow disk delays the fsync, not every other operation.
            std::thread::spawn(run);
        } else {
            run();
        }
    }
}

fn attr_of(ino: u64, meta: &std::fs::Metadata) -> FileAttr {
    let time = |secs: i64, nanos: i64| {
        UNIX_EPOCH
            + Duration::new(
                u64::try_from(secs).unwrap_or(0),
                u32::try_from(nanos).unwrap_or(0),
            )
    };
    FileAttr {
        ino: INodeNo(ino),
        size: meta.len(),
        blocks: meta.blocks(),
        atime: time(meta.atime(), meta.atime_nsec()),
        mtime: time(meta.mtime(), meta.mtime_nsec()),
        ctime: time(meta.ctime(), meta.ctime_nsec()),
        crtime: SystemTime::UNIX_EPOCH,
        kind: if meta.is_dir() {
            FileType::Directory
        } else if meta.file_type().is_symlink() {
            FileType::Symlink
        } else {
            FileType::RegularFile
        },
        perm: u16::try_from(meta.mode() & 0o7777).unwrap_or(0o600),
        nlink: u32::try_from(meta.nlink()).unwrap_or(1),
        uid: meta.uid(),
        gid: meta.gid(),
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

/// Files underneath are always opened for reading and writing, whatever the program asked:
/// a write must first read the bytes it replaces (to undo it at a power cut).
fn open_options() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.read(true).write(true);
    options
}

impl Filesystem for Fs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.0.child(parent, name).and_then(|p| self.0.attr(&p)) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let by_handle = fh.and_then(|fh| self.0.handle(fh).ok());
        let result = match by_handle {
            Some(file) => file
                .metadata()
                .map(|m| attr_of(ino.0, &m))
                .map_err(Errno::from),
            None => self.0.path(ino).and_then(|p| self.0.attr(&p)),
        };
        match result {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<fuser::TimeOrNow>,
        _mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let result = (|| {
            let path = self.0.path(ino)?;
            let full = self.0.root.join(&path);
            if let Some(mode) = mode {
                self.0.alive()?;
                std::fs::set_permissions(&full, std::fs::Permissions::from_mode(mode))
                    .map_err(Errno::from)?;
            }
            if let Some(size) = size {
                let file = match fh.and_then(|fh| self.0.handle(fh).ok()) {
                    Some(file) => file,
                    None => Arc::new(open_options().open(&full).map_err(Errno::from)?),
                };
                let len = file.metadata().map_err(Errno::from)?.len();
                if size > len {
                    self.0.room()?;
                } else {
                    self.0.alive()?;
                }
                self.0
                    .before_write(ino.0, &file, size, len.saturating_sub(size))?;
                file.set_len(size).map_err(Errno::from)?;
            }
            self.0.attr(&path)
        })();
        match result {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let result = (|| {
            self.0.room()?;
            let path = self.0.child(parent, name)?;
            std::fs::DirBuilder::new()
                .mode_compat(mode)
                .create(self.0.root.join(&path))
                .map_err(Errno::from)?;
            self.0.remember(Change::Created {
                dir: parent.0,
                path: path.clone(),
            });
            self.0.attr(&path)
        })();
        match result {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let result = (|| {
            self.0.alive()?;
            let path = self.0.child(parent, name)?;
            self.0.remove(parent.0, &path)?;
            self.0.inodes.lock().unwrap().forget_path(&path);
            Ok(())
        })();
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let result = (|| {
            self.0.alive()?;
            let path = self.0.child(parent, name)?;
            let full = self.0.root.join(&path);
            if std::fs::read_dir(&full)
                .map_err(Errno::from)?
                .next()
                .is_some()
            {
                return Err(Errno::ENOTEMPTY);
            }
            self.0.remove(parent.0, &path)?;
            self.0.inodes.lock().unwrap().forget_path(&path);
            Ok(())
        })();
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        _flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let result = (|| {
            self.0.alive()?;
            let from = self.0.child(parent, name)?;
            let to = self.0.child(newparent, newname)?;
            if self.0.root.join(&to).exists() {
                // The replaced file comes back if the rename does not survive.
                self.0.remove(newparent.0, &to)?;
            }
            // Undone newest first: the new name goes, then the old one comes back.
            let kept = self
                .0
                .trash
                .join(self.0.next_trash.fetch_add(1, Ordering::SeqCst).to_string());
            std::fs::rename(self.0.root.join(&from), self.0.root.join(&to)).map_err(Errno::from)?;
            // The undo of the rename: move `to` back to `from` (a removal of `from` whose kept
            // copy is `to`, once the power cut has moved `to` aside).
            std::fs::hard_link(self.0.root.join(&to), &kept).ok();
            self.0.remember(Change::Removed {
                dir: parent.0,
                path: from.clone(),
                kept,
            });
            self.0.remember(Change::Created {
                dir: newparent.0,
                path: to.clone(),
            });
            self.0.inodes.lock().unwrap().moved(&from, &to);
            Ok(())
        })();
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let result = (|| {
            self.0.alive()?;
            let path = self.0.path(ino)?;
            let file = open_options()
                .open(self.0.root.join(&path))
                .map_err(Errno::from)?;
            Ok(self.0.keep(file))
        })();
        match result {
            Ok(fh) => reply.opened(fh, FopenFlags::FOPEN_DIRECT_IO),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let result = (|| {
            self.0.room()?;
            let path = self.0.child(parent, name)?;
            let full = self.0.root.join(&path);
            let existed = full.exists();
            let file = open_options()
                .create(true)
                .mode(mode)
                .open(&full)
                .map_err(Errno::from)?;
            if !existed {
                self.0.remember(Change::Created {
                    dir: parent.0,
                    path: path.clone(),
                });
            }
            let attr = self.0.attr(&path)?;
            Ok((attr, self.0.keep(file)))
        })();
        match result {
            Ok((attr, fh)) => {
                reply.created(&TTL, &attr, Generation(0), fh, FopenFlags::FOPEN_DIRECT_IO);
            }
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let result = (|| {
            self.0.alive()?;
            let file = self.0.handle(fh)?;
            let mut buf = vec![0; size as usize];
            let mut read = 0;
            while read < buf.len() {
                match file.read_at(&mut buf[read..], offset + read as u64) {
                    Ok(0) => break,
                    Ok(n) => read += n,
                    Err(e) => return Err(Errno::from(e)),
                }
            }
            buf.truncate(read);
            Ok(buf)
        })();
        match result {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let result = (|| {
            self.0.room()?;
            let file = self.0.handle(fh)?;
            self.0
                .before_write(ino.0, &file, offset, data.len() as u64)?;
            file.write_all_at(data, offset).map_err(Errno::from)?;
            Ok(u32::try_from(data.len()).unwrap())
        })();
        match result {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.0.handles.lock().unwrap().remove(&fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let file = match self.0.handle(fh) {
            Ok(file) => file,
            Err(e) => return reply.error(e),
        };
        self.0.fsync(
            ino.0,
            move || {
                if datasync {
                    file.sync_data()
                } else {
                    file.sync_all()
                }
            },
            reply,
        );
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.opened(FileHandle(0), FopenFlags::empty());
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let result = (|| {
            let path = self.0.path(ino)?;
            let mut entries: Vec<(PathBuf, FileType)> = Vec::new();
            for entry in std::fs::read_dir(self.0.root.join(&path)).map_err(Errno::from)? {
                let entry = entry.map_err(Errno::from)?;
                let kind = if entry.file_type().map_err(Errno::from)?.is_dir() {
                    FileType::Directory
                } else {
                    FileType::RegularFile
                };
                entries.push((entry.file_name().into(), kind));
            }
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Ok((path, entries))
        })();
        let (path, entries) = match result {
            Ok(found) => found,
            Err(e) => return reply.error(e),
        };
        let mut all = vec![
            (ino.0, FileType::Directory, PathBuf::from(".")),
            (ino.0, FileType::Directory, PathBuf::from("..")),
        ];
        for (name, kind) in entries {
            let n = self.0.inodes.lock().unwrap().number(&path.join(&name));
            all.push((n, kind, name));
        }
        for (i, (n, kind, name)) in all
            .into_iter()
            .enumerate()
            .skip(usize::try_from(offset).unwrap())
        {
            if reply.add(INodeNo(n), i as u64 + 1, kind, &name) {
                break;
            }
        }
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let dir = match self.0.path(ino) {
            Ok(path) => self.0.root.join(path),
            Err(e) => return reply.error(e),
        };
        self.0
            .fsync(ino.0, move || File::open(dir)?.sync_all(), reply);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        // 1 GiB in 4 KiB blocks, all free unless told otherwise.
        let blocks: u64 = 1 << 18;
        let free = match self.0.available.load(Ordering::SeqCst) {
            u64::MAX => blocks,
            bytes => (bytes / 4096).min(blocks),
        };
        reply.statfs(blocks, free, free, 1 << 20, 1 << 20, 4096, 255, 4096);
    }
}

/// `DirBuilder::mode` under a name that does not clash with `Filesystem::mkdir`'s arguments.
trait ModeCompat {
    fn mode_compat(&mut self, mode: u32) -> &mut Self;
}

impl ModeCompat for std::fs::DirBuilder {
    fn mode_compat(&mut self, mode: u32) -> &mut Self {
        std::os::unix::fs::DirBuilderExt::mode(self, mode)
    }
}
