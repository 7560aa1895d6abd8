//! Group commit: one thread makes writes durable for every writer waiting at that moment,
//! and watches the disk the log is on.
//!
//! Writers insert into sled, then wait here. The flusher thread takes every waiter queued,
//! runs one `db.flush()` (and, in [`SyncMode::Fdatasync`], an fsync of every blob file sled
//! wrote since, of the blob directory when it gained one, then one `fdatasync` of sled's data
//! file), then answers them all. Writers that arrive during a flush wait for the next one,
//! so the number of flushes follows the disk's speed, not the request rate.
//!
//! **A failed flush ends the log.** After a failed `fsync` the kernel may already have
//! dropped the pages it could not write (PostgreSQL's 2018 "fsyncgate"): a second `fsync`
//! can succeed without making them durable. So the first failure is final: every writer
//! waiting and every later one gets it, nothing is flushed again, and [`DiskHealth::failed`]
//! tells the process to stop; a restart reads back what the disk really holds.
//!
//! **Disk space.** Every [`SPACE_CHECK_EVERY`] the thread reads the free space of the disk
//! the log is on; below the reserve (`--disk-reserve`), client writes are refused (503)
//! before they reach sled, whose write failing with ENOSPC would end the log, and taken
//! again as soon as space returns.
//!
//! A dedicated thread rather than a task: under load thousands of tasks are ready at once,
//! and a flush that had to queue behind them twice (to start, and to answer) made every
//! decision wait seconds. The thread ends when the last handle is dropped.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch};

use super::StoreError;
use crate::telemetry::Metrics;

/// What a completed `save` survives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    /// sled's `flush()`: written to the kernel with `sync_file_range`. Survives a crash of
    /// the process; a power loss or kernel crash may lose the latest writes.
    Flush,
    /// `flush()` then `fsync` of the blob files sled wrote and `fdatasync` of sled's data
    /// file: also survives a power loss on a disk that honours cache flushes.
    Fdatasync,
}

/// How often the flusher thread reads the disk's free space.
pub const SPACE_CHECK_EVERY: Duration = Duration::from_millis(250);

type Waiter = oneshot::Sender<Result<(), Arc<str>>>;

/// What the flusher thread is asked.
enum Message {
    /// Answer once what was written before is durable.
    Wait(Waiter),
    /// Flush what is written, answer the waiters queued, and end (the log is being closed).
    Close,
}

/// What the flusher knows of the disk, shared with the writers.
pub struct DiskHealth {
    /// Below this many free bytes, client writes are refused.
    reserve: u64,
    /// Free bytes at the last check.
    available: AtomicU64,
    low: AtomicBool,
    /// When the running flush started (ms since `epoch`), 0 when none runs.
    flush_started_ms: AtomicU64,
    epoch: Instant,
    /// The failure that ended the log, once it has.
    failed: watch::Sender<Option<Arc<str>>>,
}

impl DiskHealth {
    /// Why a write cannot succeed now, if it cannot: the log failed, the disk is below its
    /// reserve, or a flush has run for longer than `slow` (a disk that stopped answering).
    pub fn refusal(&self, slow: Duration) -> Option<StoreError> {
        if let Some(failure) = self.failed.borrow().as_ref() {
            return Some(StoreError::Flush(failure.to_string()));
        }
        if self.low.load(Ordering::Relaxed) {
            return Some(StoreError::DiskFull {
                available: self.available.load(Ordering::Relaxed),
                reserve: self.reserve,
            });
        }
        let started = self.flush_started_ms.load(Ordering::Relaxed);
        let running = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        if started != 0
            && running.saturating_sub(started) > u64::try_from(slow.as_millis()).unwrap_or(u64::MAX)
        {
            return Some(StoreError::SlowDisk(Duration::from_millis(
                running - started,
            )));
        }
        None
    }

    /// Resolves with the failure that ended the log (never, while it works).
    pub fn failed(&self) -> watch::Receiver<Option<Arc<str>>> {
        self.failed.subscribe()
    }
}

/// Handle to the flusher thread. Cloning shares it.
#[derive(Clone)]
pub struct GroupCommit {
    waiters: mpsc::Sender<Message>,
    thread: Arc<std::sync::Mutex<Option<std::thread::JoinHandle<()>>>>,
    flushes: Arc<AtomicU64>,
    health: Arc<DiskHealth>,
}

/// Where the flusher works.
pub(super) struct LogFiles {
    /// The data directory.
    pub dir: PathBuf,
    pub sync: SyncMode,
    /// Free bytes below which client writes are refused.
    pub reserve: u64,
    /// Record files replaced since the last flush (see `spill`): deleted once a flush has
    /// made their replacements durable.
    pub superseded: Arc<std::sync::Mutex<Vec<PathBuf>>>,
}

impl GroupCommit {
    /// Starts the flusher thread.
    pub(super) fn start(db: sled::Db, files: LogFiles, metrics: &Metrics) -> std::io::Result<Self> {
        let file = match files.sync {
            SyncMode::Flush => None,
            SyncMode::Fdatasync => Some(File::open(files.dir.join("db"))?),
        };
        let blobs =
            (files.sync == SyncMode::Fdatasync).then(|| Blobs::new(files.dir.join("blobs")));
        let (tx, rx) = mpsc::channel::<Message>();
        let health = Arc::new(DiskHealth {
            reserve: files.reserve,
            available: AtomicU64::new(u64::MAX),
            low: AtomicBool::new(false),
            flush_started_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            failed: watch::Sender::new(None),
        });
        let flusher = Flusher {
            superseded: files.superseded,
            db,
            file,
            blobs,
            dir: files.dir,
            health: health.clone(),
            flushes: Arc::new(AtomicU64::new(0)),
            metrics: metrics.clone(),
            checked: None,
        };
        let flushes = flusher.flushes.clone();
        if let Ok(total) = fs2::total_space(&flusher.dir) {
            if total < files.reserve {
                tracing::error!(total, reserve = files.reserve, dir = %flusher.dir.display(),
                    "the disk holding the log is smaller than --disk-reserve: every client write \
                     will be refused; lower --disk-reserve");
            }
        }
        flusher.check_space();
        let thread = std::thread::Builder::new()
            .name("tcc-log-flusher".into())
            .spawn(move || flusher.run(&rx))?;
        Ok(Self {
            waiters: tx,
            thread: Arc::new(std::sync::Mutex::new(Some(thread))),
            flushes,
            health,
        })
    }

    /// Flushes run since the start.
    pub fn flushes(&self) -> u64 {
        self.flushes.load(Ordering::Relaxed)
    }

    pub fn health(&self) -> &DiskHealth {
        &self.health
    }

    /// Ends the flusher thread after a last flush and waits for it: its handle on sled is
    /// gone when this returns. Blocking.
    pub fn close(&self) {
        let _ = self.waiters.send(Message::Close);
        let thread = self.thread.lock().expect("flusher thread lock").take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }

    /// Waits until everything written before this call is durable.
    ///
    /// # Errors
    /// [`StoreError::Flush`] when the flush fails, failed before, or the thread has stopped.
    pub async fn wait_durable(&self) -> Result<(), StoreError> {
        if let Some(failure) = self.health.failed.borrow().as_ref() {
            return Err(StoreError::Flush(failure.to_string()));
        }
        let (tx, rx) = oneshot::channel();
        self.waiters
            .send(Message::Wait(tx))
            .map_err(|_| StoreError::Flush("the flusher thread has stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Flush("the flusher thread has stopped".into()))?
            .map_err(|e| StoreError::Flush(e.to_string()))
    }
}

struct Flusher {
    superseded: Arc<std::sync::Mutex<Vec<PathBuf>>>,
    db: sled::Db,
    /// sled's data file, to `fdatasync` ([`SyncMode::Fdatasync`]).
    file: Option<File>,
    blobs: Option<Blobs>,
    dir: PathBuf,
    health: Arc<DiskHealth>,
    flushes: Arc<AtomicU64>,
    metrics: Metrics,
    checked: Option<Instant>,
}

impl Flusher {
    fn run(mut self, messages: &mpsc::Receiver<Message>) {
        let mut closing = false;
        while !closing {
            let first = match messages.recv_timeout(SPACE_CHECK_EVERY) {
                Ok(first) => first,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    self.check_space_if_due();
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            };
            // Let the writers that are about to arrive join this flush.
            std::thread::yield_now();
            let mut batch: Vec<Waiter> = Vec::new();
            for message in std::iter::once(first).chain(messages.try_iter()) {
                match message {
                    Message::Wait(waiter) => batch.push(waiter),
                    Message::Close => closing = true,
                }
            }
            let failed = self.health.failed.borrow().clone();
            let result = match failed {
                // Never flushed again: a second fsync may "succeed" over lost pages.
                Some(failure) => Err(failure),
                None => self.flush().map_err(|error| self.fail(&error)),
            };
            #[allow(clippy::cast_precision_loss)] // a batch is far below 2^52
            self.metrics.log_batch_writes.observe(batch.len() as f64);
            for waiter in batch {
                let _ = waiter.send(result.clone());
            }
            self.check_space_if_due();
        }
    }

    /// One group flush: sled's flush, then (with `fdatasync`) the new blob files and the
    /// data file.
    fn flush(&mut self) -> std::io::Result<()> {
        let started = Instant::now();
        // Replaced before this flush began, so their replacements are in it.
        let superseded = std::mem::take(&mut *self.superseded.lock().expect("superseded lock"));
        let since_epoch =
            u64::try_from(self.health.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.health
            .flush_started_ms
            .store(since_epoch.max(1), Ordering::Relaxed);
        let result = self.db.flush().map(drop).map_err(io_error).and_then(|()| {
            let synced = Instant::now();
            if let Some(blobs) = &mut self.blobs {
                blobs.sync_new()?;
            }
            if let Some(file) = &self.file {
                file.sync_data()?;
                self.metrics
                    .log_fsync_seconds
                    .observe(synced.elapsed().as_secs_f64());
            }
            Ok(())
        });
        self.health.flush_started_ms.store(0, Ordering::Relaxed);
        self.flushes.fetch_add(1, Ordering::Relaxed);
        if result.is_ok() {
            for file in superseded {
                // One left behind (a crash now) is swept at the next start.
                let _ = std::fs::remove_file(file);
            }
        }
        self.metrics
            .log_flush_seconds
            .observe(started.elapsed().as_secs_f64());
        result
    }

    /// Records the failure that ends the log (the first one), and returns it.
    fn fail(&self, error: &std::io::Error) -> Arc<str> {
        let failure: Arc<str> = Arc::from(error.to_string());
        self.health.failed.send_if_modified(|failed| {
            if failed.is_some() {
                return false;
            }
            tracing::error!(%error, "the transaction log could not be made durable; writes are \
                refused from now on and the coordinator stops, so that a restart reads back what \
                the disk kept");
            *failed = Some(failure.clone());
            true
        });
        self.health.failed.borrow().clone().unwrap_or(failure)
    }

    fn check_space_if_due(&mut self) {
        if self
            .checked
            .is_none_or(|at| at.elapsed() >= SPACE_CHECK_EVERY)
        {
            self.checked = Some(Instant::now());
            self.check_space();
        }
    }

    fn check_space(&self) {
        let Ok(available) = fs2::available_space(&self.dir) else {
            return;
        };
        self.health.available.store(available, Ordering::Relaxed);
        self.metrics
            .log_disk_available_bytes
            .set(i64::try_from(available).unwrap_or(i64::MAX));
        let low = available < self.health.reserve;
        if self.health.low.swap(low, Ordering::Relaxed) != low {
            if low {
                tracing::error!(available, reserve = self.health.reserve, dir = %self.dir.display(),
                    "the disk holding the log is nearly full: client writes are refused (503) \
                     until it has --disk-reserve free again");
            } else {
                tracing::info!(
                    available,
                    "the disk holding the log has room again: writes are taken"
                );
            }
        }
    }
}

/// The blob files sled writes (values too large for a page go to files of their own in
/// `blobs/`), which sled neither fsyncs nor records in a fsynced directory: without this, a
/// power loss could keep the record pointing to a blob and lose the blob.
struct Blobs {
    dir: PathBuf,
    synced: HashSet<OsString>,
}

impl Blobs {
    fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            synced: HashSet::new(),
        }
    }

    /// Fsyncs every blob file not fsynced yet, then the directory if it gained one.
    fn sync_new(&mut self) -> std::io::Result<()> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let mut present = HashSet::new();
        let mut gained = false;
        for entry in entries {
            let name = entry?.file_name();
            if !self.synced.contains(&name) {
                match File::open(self.dir.join(&name)) {
                    Ok(blob) => blob.sync_all()?,
                    // sled dropped it since the listing (a newer version of its page).
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                }
                gained = true;
            }
            present.insert(name);
        }
        if gained {
            sync_dir(&self.dir)?;
        }
        self.synced = present;
        Ok(())
    }
}

/// Fsyncs a directory: the names in it (files created, renamed, removed) are durable.
pub(super) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// sled's error as the I/O error it is (written as such in the sentence the process stops
/// with), or as one.
fn io_error(error: sled::Error) -> std::io::Error {
    match error {
        // sled hands a failure on to later calls as a copy whose message is the original's
        // debug form (`Os { code: 28, … }`): its kind says it better ("no storage space").
        sled::Error::Io(e)
            if e.raw_os_error().is_none() && e.kind() != std::io::ErrorKind::Other =>
        {
            std::io::Error::from(e.kind())
        }
        sled::Error::Io(e) => e,
        other => std::io::Error::other(other.to_string()),
    }
}
