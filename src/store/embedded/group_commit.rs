//! Group commit: one thread makes writes durable for every writer waiting at that moment.
//!
//! Writers insert into sled, then wait here. The flusher thread takes every waiter queued,
//! runs one `db.flush()` (and, in [`SyncMode::Fdatasync`], one `fdatasync` of sled's data
//! file), then answers them all. Writers that arrive during a flush wait for the next one,
//! so the number of flushes follows the disk's speed, not the request rate.
//!
//! A dedicated thread rather than a task: under load thousands of tasks are ready at once,
//! and a flush that had to queue behind them twice (to start, and to answer) made every
//! decision wait seconds. The thread ends when the last handle is dropped.

use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};

use tokio::sync::oneshot;

use super::StoreError;
use crate::telemetry::Metrics;

/// What a completed `save` survives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    /// sled's `flush()`: written to the kernel with `sync_file_range`. Survives a crash of
    /// the process; a power loss or kernel crash may lose the latest writes.
    Flush,
    /// `flush()` then `fdatasync` of sled's data file: also survives a power loss on a disk
    /// that honours cache flushes.
    Fdatasync,
}

type Waiter = oneshot::Sender<Result<(), Arc<String>>>;

/// Handle to the flusher thread. Cloning shares it.
#[derive(Clone)]
pub struct GroupCommit {
    waiters: mpsc::Sender<Waiter>,
    flushes: Arc<AtomicU64>,
}

impl GroupCommit {
    /// Starts the flusher thread.
    pub(super) fn start(
        db: sled::Db,
        data_file: PathBuf,
        sync: SyncMode,
        metrics: &Metrics,
    ) -> std::io::Result<Self> {
        let (batch_sizes, flush_times) = (
            metrics.log_batch_writes.clone(),
            metrics.log_flush_seconds.clone(),
        );
        let file = match sync {
            SyncMode::Flush => None,
            SyncMode::Fdatasync => Some(File::open(&data_file)?),
        };
        let (tx, rx) = mpsc::channel::<Waiter>();
        let flushes = Arc::new(AtomicU64::new(0));
        let counter = flushes.clone();
        std::thread::Builder::new()
            .name("tcc-log-flusher".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    // Let the writers that are about to arrive join this flush.
                    std::thread::yield_now();
                    let batch: Vec<Waiter> = std::iter::once(first).chain(rx.try_iter()).collect();
                    let started = std::time::Instant::now();
                    let result = db
                        .flush()
                        .map(drop)
                        .map_err(std::io::Error::from)
                        .and_then(|()| file.as_ref().map_or(Ok(()), File::sync_data))
                        .map_err(|e| Arc::new(e.to_string()));
                    counter.fetch_add(1, Ordering::Relaxed);
                    flush_times.observe(started.elapsed().as_secs_f64());
                    #[allow(clippy::cast_precision_loss)] // a batch is far below 2^52
                    batch_sizes.observe(batch.len() as f64);
                    if let Err(error) = &result {
                        tracing::error!(%error, "flushing the transaction log failed");
                    }
                    for waiter in batch {
                        let _ = waiter.send(result.clone());
                    }
                }
            })?;
        Ok(Self {
            waiters: tx,
            flushes,
        })
    }

    /// Flushes run since the start.
    pub fn flushes(&self) -> u64 {
        self.flushes.load(Ordering::Relaxed)
    }

    /// Waits until everything written before this call is durable.
    ///
    /// # Errors
    /// [`StoreError::Flush`] when the flush fails or the thread has stopped.
    pub async fn wait_durable(&self) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.waiters
            .send(tx)
            .map_err(|_| StoreError::Flush("the flusher thread has stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Flush("the flusher thread has stopped".into()))?
            .map_err(|e| StoreError::Flush(e.to_string()))
    }
}
