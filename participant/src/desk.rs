//! The kit's core: the holds of one resource, the rules of the participant contract, and the
//! expiry loop. It knows no HTTP: [`crate::api`] maps its answers to statuses.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{Mutex as AsyncMutex, Notify};
use tokio_util::sync::CancellationToken;

use crate::hold::{HoldRecord, HoldState, HoldView, RECORD_VERSION};
use crate::resource::{Refusal, Resource, TryContext};
use crate::store::{HoldStore, StoreError};
use crate::Settings;

pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// How long to wait before releasing an expired hold again when the service was unavailable.
const RELEASE_RETRY: Duration = Duration::from_secs(1);

/// A try as it arrived.
#[derive(Debug, Clone)]
pub(crate) struct TryCall {
    pub key: String,
    pub body: serde_json::Value,
    pub reservation: Option<String>,
    pub deadline: Option<DateTime<Utc>>,
}

pub(crate) enum TryAnswer {
    /// A new hold.
    Held(HoldView),
    /// The hold an earlier try with the same key made.
    HeldBefore(HoldView),
    /// The key was used with another body.
    KeyReused(HoldView),
    /// The body does not parse as the resource's request: the JSON path and serde's words.
    Invalid {
        field: String,
        detail: String,
    },
    Refused(String),
    Unavailable(String),
}

pub(crate) enum ConfirmAnswer {
    Confirmed,
    /// Unknown, expired or cancelled.
    Gone(Option<HoldState>),
    Unavailable(String),
}

pub(crate) enum CancelAnswer {
    Cancelled,
    Unknown,
    AlreadyConfirmed,
    Unavailable(String),
}

/// What the HTTP layer needs of a desk, whatever its resource.
pub(crate) trait Desk: Send + Sync + 'static {
    fn try_hold(&self, call: TryCall) -> BoxFuture<'_, TryAnswer>;
    fn confirm<'a>(&'a self, id: &'a str) -> BoxFuture<'a, ConfirmAnswer>;
    fn cancel<'a>(&'a self, id: &'a str) -> BoxFuture<'a, CancelAnswer>;
    fn read<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Option<HoldView>>;
    fn list(&self) -> BoxFuture<'_, Vec<HoldView>>;
    /// Forgets every hold without releasing any (the fake participant's reset).
    fn clear(&self) -> BoxFuture<'_, Result<(), StoreError>>;
}

type Entry = Arc<AsyncMutex<HoldRecord>>;
/// The hold a key made, once it made one; locked while its try runs.
type KeySlot = Arc<AsyncMutex<Option<String>>>;

#[derive(Default)]
struct Book {
    holds: HashMap<String, Entry>,
    keys: HashMap<String, KeySlot>,
    /// (when, hold): an expiry to check or a retention to end.
    due: BTreeSet<(DateTime<Utc>, String)>,
}

pub(crate) struct Holds<R: Resource> {
    resource: R,
    store: Arc<dyn HoldStore>,
    settings: Settings,
    book: Mutex<Book>,
    wake: Notify,
}

impl<R: Resource> Holds<R> {
    /// Loads the stored holds.
    pub(crate) fn open(
        resource: R,
        store: Arc<dyn HoldStore>,
        settings: Settings,
    ) -> Result<Self, StoreError> {
        let records = store.load()?;
        let mut restored = Vec::with_capacity(records.len());
        for record in &records {
            restored.push((record.state, serde_json::from_value(record.hold.clone())?));
        }
        resource.restore(restored);
        let mut book = Book::default();
        for record in records {
            book.due.insert(due_at(&record, &settings));
            book.keys.insert(
                record.idempotency_key.clone(),
                Arc::new(AsyncMutex::new(Some(record.id.clone()))),
            );
            book.holds
                .insert(record.id.clone(), Arc::new(AsyncMutex::new(record)));
        }
        Ok(Self {
            resource,
            store,
            settings,
            book: Mutex::new(book),
            wake: Notify::new(),
        })
    }

    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        self.book.lock().expect("the book's lock is never poisoned")
    }

    fn entry(&self, id: &str) -> Option<Entry> {
        self.book().holds.get(id).cloned()
    }

    fn schedule(&self, at: (DateTime<Utc>, String)) {
        let earliest = {
            let mut book = self.book();
            book.due.insert(at.clone());
            book.due.first() == Some(&at)
        };
        if earliest {
            self.wake.notify_one();
        }
    }

    /// Writes `record` durably (on a blocking thread: a sled flush waits for the disk).
    async fn save(&self, record: &HoldRecord) -> Result<(), StoreError> {
        let store = self.store.clone();
        let record = record.clone();
        tokio::task::spawn_blocking(move || store.save(&record))
            .await
            .expect("a store write does not panic")
    }

    fn hold_of(&self, record: &HoldRecord) -> Result<R::Hold, String> {
        serde_json::from_value(record.hold.clone())
            .map_err(|e| format!("the stored hold {} cannot be read: {e}", record.id))
    }

    async fn try_hold(&self, call: TryCall) -> TryAnswer {
        let slot = self
            .book()
            .keys
            .entry(call.key.clone())
            .or_default()
            .clone();
        // A repeat waits here while the first try of its key runs, then finds its hold.
        let mut slot = slot.lock().await;
        if let Some(entry) = slot.as_ref().and_then(|id| self.entry(id)) {
            let record = entry.lock().await;
            return if record.request == call.body {
                TryAnswer::HeldBefore(record.view())
            } else {
                TryAnswer::KeyReused(record.view())
            };
        }
        let request: R::Request = match serde_path_to_error::deserialize(&call.body) {
            Ok(request) => request,
            Err(e) => {
                let path = e.path().to_string();
                return TryAnswer::Invalid {
                    field: if path == "." {
                        "$".into()
                    } else {
                        format!("$.{path}")
                    },
                    detail: e.into_inner().to_string(),
                };
            }
        };
        let now = Utc::now();
        let expires = expiry(now, call.deadline, &self.settings);
        if expires <= now {
            return TryAnswer::Refused(format!(
                "the reservation's deadline ({}) has passed",
                call.deadline.map_or_else(String::new, |d| d.to_rfc3339())
            ));
        }
        let context = TryContext {
            hold_id: uuid::Uuid::now_v7().simple().to_string(),
            idempotency_key: call.key.clone(),
            reservation: call.reservation.clone(),
            deadline: call.deadline,
            expires,
        };
        let hold = match self.resource.reserve(request, &context).await {
            Ok(hold) => hold,
            Err(Refusal::Refused(reason)) => return TryAnswer::Refused(reason),
            Err(Refusal::Unavailable(reason)) => return TryAnswer::Unavailable(reason),
        };
        let record = HoldRecord {
            version: RECORD_VERSION,
            id: context.hold_id,
            idempotency_key: call.key,
            request: call.body,
            hold: serde_json::to_value(&hold).expect("a hold serialises to JSON"),
            state: HoldState::Held,
            created: now,
            expires,
            settled: None,
            reservation: call.reservation,
            deadline: call.deadline,
        };
        if let Err(e) = self.save(&record).await {
            tracing::error!(error = %e, hold = %record.id, "a new hold could not be stored; releasing it");
            // Best effort: nothing was promised yet, and the try is answered 503.
            let _ = self.resource.release(&hold).await;
            return TryAnswer::Unavailable(e.to_string());
        }
        let view = record.view();
        tracing::info!(hold = %record.id, key = %record.idempotency_key, %expires, "held");
        self.book()
            .holds
            .insert(record.id.clone(), Arc::new(AsyncMutex::new(record)));
        *slot = Some(view.id.clone());
        self.schedule((expires, view.id.clone()));
        TryAnswer::Held(view)
    }

    async fn confirm(&self, id: &str) -> ConfirmAnswer {
        let Some(entry) = self.entry(id) else {
            return ConfirmAnswer::Gone(None);
        };
        let mut record = entry.lock().await;
        match record.state {
            HoldState::Confirmed => return ConfirmAnswer::Confirmed,
            HoldState::Cancelled | HoldState::Expired => {
                return ConfirmAnswer::Gone(Some(record.state))
            }
            HoldState::Held => {}
        }
        let now = Utc::now();
        if record.expires <= now {
            // Too late: the hold is released (if the expiry loop has not yet) and stays so.
            self.expire_locked(&mut record).await;
            return ConfirmAnswer::Gone(Some(HoldState::Expired));
        }
        let hold = match self.hold_of(&record) {
            Ok(hold) => hold,
            Err(e) => return ConfirmAnswer::Unavailable(e),
        };
        if let Err(e) = self.resource.confirm(&hold).await {
            return ConfirmAnswer::Unavailable(e.0);
        }
        match self.settle_locked(&mut record, HoldState::Confirmed).await {
            Ok(()) => ConfirmAnswer::Confirmed,
            Err(e) => ConfirmAnswer::Unavailable(e.to_string()),
        }
    }

    async fn cancel(&self, id: &str) -> CancelAnswer {
        let Some(entry) = self.entry(id) else {
            return CancelAnswer::Unknown;
        };
        let mut record = entry.lock().await;
        match record.state {
            HoldState::Confirmed => return CancelAnswer::AlreadyConfirmed,
            HoldState::Cancelled | HoldState::Expired => return CancelAnswer::Cancelled,
            HoldState::Held => {}
        }
        let hold = match self.hold_of(&record) {
            Ok(hold) => hold,
            Err(e) => return CancelAnswer::Unavailable(e),
        };
        if let Err(e) = self.resource.release(&hold).await {
            return CancelAnswer::Unavailable(e.0);
        }
        match self.settle_locked(&mut record, HoldState::Cancelled).await {
            Ok(()) => CancelAnswer::Cancelled,
            Err(e) => CancelAnswer::Unavailable(e.to_string()),
        }
    }

    /// Records a settled hold durably; on a store failure the hold stays as it was (the
    /// service's confirm or release is repeated on the next call).
    async fn settle_locked(
        &self,
        record: &mut HoldRecord,
        state: HoldState,
    ) -> Result<(), StoreError> {
        let mut settled = record.clone();
        settled.settle(state, Utc::now());
        if let Err(e) = self.save(&settled).await {
            tracing::error!(error = %e, hold = %record.id, "a settled hold could not be stored");
            return Err(e);
        }
        tracing::info!(hold = %record.id, ?state, "settled");
        *record = settled;
        self.schedule(due_at(record, &self.settings));
        Ok(())
    }

    /// Releases a held hold whose time is up; tried again a second later when the service
    /// or the store fails.
    async fn expire_locked(&self, record: &mut HoldRecord) {
        let released = match self.hold_of(record) {
            Ok(hold) => self.resource.release(&hold).await.map_err(|e| e.0),
            Err(e) => Err(e),
        };
        let stored = match released {
            Ok(()) => self
                .settle_locked(record, HoldState::Expired)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        if let Err(e) = stored {
            tracing::warn!(hold = %record.id, error = %e, "releasing an expired hold failed; trying again");
            let retry = Utc::now() + RELEASE_RETRY;
            self.schedule((retry, record.id.clone()));
        }
    }

    /// Handles every due expiry and retention; answers when the next one falls.
    async fn step(&self) -> Option<DateTime<Utc>> {
        let now = Utc::now();
        loop {
            let next = {
                let mut book = self.book();
                match book.due.first() {
                    Some((at, _)) if *at <= now => book.due.pop_first(),
                    Some((at, _)) => return Some(*at),
                    None => return None,
                }
            };
            let Some((_, id)) = next else { continue };
            let Some(entry) = self.entry(&id) else {
                continue;
            };
            let mut record = entry.lock().await;
            if record.state == HoldState::Held && record.expires <= now {
                self.expire_locked(&mut record).await;
            } else if record
                .settled
                .is_some_and(|settled| settled + self.settings.retention <= now)
            {
                self.forget(&record).await;
            }
        }
    }

    async fn forget(&self, record: &HoldRecord) {
        let store = self.store.clone();
        let id = record.id.clone();
        match tokio::task::spawn_blocking(move || store.remove(&id))
            .await
            .expect("a store write does not panic")
        {
            Ok(()) => {
                let mut book = self.book();
                book.holds.remove(&record.id);
                book.keys.remove(&record.idempotency_key);
            }
            Err(e) => tracing::warn!(hold = %record.id, error = %e, "forgetting a hold failed"),
        }
    }

    /// The expiry loop: releases holds as they expire and forgets settled ones after their
    /// retention, until `stop`.
    pub(crate) async fn run(&self, stop: CancellationToken) {
        loop {
            let next = self.step().await;
            let sleep = next.map_or(Duration::from_secs(3600), |at| {
                (at - Utc::now()).to_std().unwrap_or(Duration::ZERO)
            });
            tokio::select! {
                () = tokio::time::sleep(sleep) => {}
                () = self.wake.notified() => {}
                () = stop.cancelled() => return,
            }
        }
    }
}

/// A hold expires after the service's hold time, but never more than the margin after the
/// reservation's deadline.
fn expiry(
    now: DateTime<Utc>,
    deadline: Option<DateTime<Utc>>,
    settings: &Settings,
) -> DateTime<Utc> {
    let by_ttl = now + settings.hold_ttl;
    match deadline {
        Some(deadline) => by_ttl.min(deadline + settings.deadline_margin),
        None => by_ttl,
    }
}

/// When the expiry loop next looks at a hold.
fn due_at(record: &HoldRecord, settings: &Settings) -> (DateTime<Utc>, String) {
    let at = match record.settled {
        Some(settled) => settled + settings.retention,
        None => record.expires,
    };
    (at, record.id.clone())
}

impl<R: Resource> Desk for Holds<R> {
    fn try_hold(&self, call: TryCall) -> BoxFuture<'_, TryAnswer> {
        Box::pin(Holds::try_hold(self, call))
    }

    fn confirm<'a>(&'a self, id: &'a str) -> BoxFuture<'a, ConfirmAnswer> {
        Box::pin(Holds::confirm(self, id))
    }

    fn cancel<'a>(&'a self, id: &'a str) -> BoxFuture<'a, CancelAnswer> {
        Box::pin(Holds::cancel(self, id))
    }

    fn read<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Option<HoldView>> {
        Box::pin(async move {
            let entry = self.entry(id)?;
            let record = entry.lock().await;
            Some(record.view())
        })
    }

    fn list(&self) -> BoxFuture<'_, Vec<HoldView>> {
        Box::pin(async move {
            let entries: Vec<Entry> = self.book().holds.values().cloned().collect();
            let mut views = Vec::with_capacity(entries.len());
            for entry in entries {
                views.push(entry.lock().await.view());
            }
            views.sort_by(|a, b| a.created.cmp(&b.created).then(a.id.cmp(&b.id)));
            views
        })
    }

    fn clear(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let ids: Vec<String> = self.book().holds.keys().cloned().collect();
            for id in ids {
                let store = self.store.clone();
                tokio::task::spawn_blocking(move || store.remove(&id))
                    .await
                    .expect("a store write does not panic")?;
            }
            *self.book() = Book::default();
            Ok(())
        })
    }
}
