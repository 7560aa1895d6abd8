//! Group commit: one task makes writes durable for every writer waiting at that moment.
//!
//! Writers insert into sled, then wait here. The task takes every waiter queued, runs one
//! `db.flush()` on a blocking thread (and, in [`SyncMode::Fdatasync`], one `fdatasync` of
//! sled's data file), then answers them all. Writers that arrive during a flush wait for the
//! next one, so the number of flushes follows the disk's speed, not the request rate.

use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio_util::task::TaskTracker;

use super::StoreError;

/// What a completed `save` survives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SyncMode {
    /// sled's `flush()`: written to the kernel with `sync_file_range`. Survives a crash of
    /// the process; a power loss or kernel crash may lose the latest writes.
    Flush,
    /// `flush()` then `fdatasync` of sled's data file: also survives a power loss on a disk
    /// that honours cache flushes.
    Fdatasync,
}

type Waiter = oneshot::Sender<Result<(), Arc<String>>>;

/// Handle to the durability task. Cloning shares the task.
#[derive(Clone)]
pub struct GroupCommit {
    waiters: mpsc::UnboundedSender<Waiter>,
    flushes: Arc<AtomicU64>,
}

impl GroupCommit {
    /// Starts the durability task on `tasks`. It ends when every handle is dropped.
    pub(super) fn start(
        db: sled::Db,
        data_file: PathBuf,
        sync: SyncMode,
        tasks: &TaskTracker,
    ) -> std::io::Result<Self> {
        let file = match sync {
            SyncMode::Flush => None,
            SyncMode::Fdatasync => Some(Arc::new(File::open(&data_file)?)),
        };
        let (tx, mut rx) = mpsc::unbounded_channel::<Waiter>();
        let flushes = Arc::new(AtomicU64::new(0));
        let counter = flushes.clone();
        tasks.spawn(async move {
            let mut batch = Vec::new();
            while rx.recv_many(&mut batch, usize::MAX).await > 0 {
                // Let the writers that are about to arrive join this flush: one yield runs the
                // tasks already woken, which is where they come from.
                tokio::task::yield_now().await;
                while let Ok(waiter) = rx.try_recv() {
                    batch.push(waiter);
                }
                let db = db.clone();
                let file = file.clone();
                let result = tokio::task::spawn_blocking(move || {
                    db.flush()?;
                    if let Some(file) = file {
                        file.sync_data()?;
                    }
                    Ok::<_, std::io::Error>(())
                })
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r.map_err(|e| e.to_string()))
                .map_err(Arc::new);
                counter.fetch_add(1, Ordering::Relaxed);
                if let Err(error) = &result {
                    tracing::error!(%error, "flushing the transaction log failed");
                }
                for waiter in batch.drain(..) {
                    let _ = waiter.send(result.clone());
                }
            }
        });
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
    /// [`StoreError::Flush`] when the flush fails or the task has stopped.
    pub async fn wait_durable(&self) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.waiters
            .send(tx)
            .map_err(|_| StoreError::Flush("the durability task has stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Flush("the durability task has stopped".into()))?
            .map_err(|e| StoreError::Flush(e.to_string()))
    }
}
