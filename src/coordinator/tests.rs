//! The phases and the unit of work, without HTTP: participants are a scripted fake behind
//! [`Participants`], the clock is set by hand, the log is the embedded one in a temporary
//! directory, and no deadline thread runs (the tests call `expire` themselves).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Coordinator, CreateReservation, Parts, Topology};
use crate::domain::{
    CallVerb, Happening, Limits, NewParticipant, ParticipantLink, ParticipantSource,
    ParticipantState, ParticipantUrl, Reason, Reservation, ReservationId, State, TryRequest,
};
use crate::participant::{
    CancelOutcome, ConfirmOutcome, Participants, PolicyError, RetryHint, TryOutcome,
};
use crate::retry::RetryPolicy;
use crate::store::{EmbeddedOptions, Store, SyncMode};
use crate::telemetry::Metrics;
use crate::timers::TimerQueue;

/// Participants that answer from a script (then with success) and record every call.
#[derive(Default)]
struct Scripted {
    tries: Mutex<VecDeque<TryOutcome>>,
    confirms: Mutex<VecDeque<ConfirmOutcome>>,
    cancels: Mutex<VecDeque<CancelOutcome>>,
    /// `(verb, url or key)` of every call, in order.
    calls: Mutex<Vec<(CallVerb, String)>>,
}

impl Scripted {
    fn calls(&self, verb: CallVerb) -> Vec<String> {
        let calls = self.calls.lock().unwrap();
        calls
            .iter()
            .filter(|(v, _)| *v == verb)
            .map(|(_, what)| what.clone())
            .collect()
    }
}

fn retry(error: &str) -> RetryHint {
    RetryHint {
        error: error.into(),
        retry_after: None,
    }
}

fn link(n: u32) -> ParticipantLink {
    ParticipantLink {
        uri: ParticipantUrl::parse(&format!("http://stock/holds/{n}")).unwrap(),
        expires: Utc::now() + chrono::Duration::minutes(10),
    }
}

impl Participants for Scripted {
    fn try_reserve<'a>(
        &'a self,
        _request: &'a TryRequest,
        _reservation_url: &'a str,
        idempotency_key: &'a str,
        _expires_if_unsaid: DateTime<Utc>,
        _traceparent: Option<&'a str>,
    ) -> BoxFuture<'a, TryOutcome> {
        let mut calls = self.calls.lock().unwrap();
        calls.push((CallVerb::Try, idempotency_key.to_owned()));
        let n = u32::try_from(calls.len()).unwrap();
        let answer = self.tries.lock().unwrap().pop_front();
        Box::pin(async move { answer.unwrap_or_else(|| TryOutcome::Reserved(link(100 + n))) })
    }

    fn confirm<'a>(
        &'a self,
        uri: &'a ParticipantUrl,
        _traceparent: Option<&'a str>,
    ) -> BoxFuture<'a, ConfirmOutcome> {
        self.calls
            .lock()
            .unwrap()
            .push((CallVerb::Confirm, uri.to_string()));
        let answer = self.confirms.lock().unwrap().pop_front();
        Box::pin(async move { answer.unwrap_or(ConfirmOutcome::Confirmed) })
    }

    fn cancel<'a>(
        &'a self,
        uri: &'a ParticipantUrl,
        _traceparent: Option<&'a str>,
    ) -> BoxFuture<'a, CancelOutcome> {
        self.calls
            .lock()
            .unwrap()
            .push((CallVerb::Cancel, uri.to_string()));
        let answer = self.cancels.lock().unwrap().pop_front();
        Box::pin(async move { answer.unwrap_or(CancelOutcome::Cancelled) })
    }

    fn callback<'a>(
        &'a self,
        _url: &'a ParticipantUrl,
        _body: Vec<u8>,
        _traceparent: Option<&'a str>,
    ) -> BoxFuture<'a, Result<(), RetryHint>> {
        Box::pin(async { Ok(()) })
    }

    fn check<'a>(&'a self, _url: &'a ParticipantUrl) -> BoxFuture<'a, Result<(), PolicyError>> {
        Box::pin(async { Ok(()) })
    }
}

/// A coordinator over `participants`, its log in a temporary directory, its clock at
/// `clock` (milliseconds since the epoch), ready.
struct Harness {
    coordinator: Coordinator,
    participants: Arc<Scripted>,
    clock: Arc<AtomicI64>,
    _dir: tempfile::TempDir,
}

impl Harness {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Metrics::default();
        let store = Store::open(dir.path(), &test_log_options(), 64, &metrics).unwrap();
        let participants = Arc::new(Scripted::default());
        let clock = Arc::new(AtomicI64::new(Utc::now().timestamp_millis()));
        let now = clock.clone();
        let coordinator = Coordinator::new(Parts {
            store,
            client: participants.clone(),
            traces: crate::telemetry::Traces::off(),
            retry: RetryPolicy {
                initial: Duration::from_millis(1),
                max_interval: Duration::from_millis(5),
            },
            limits: Limits {
                default_timeout: Duration::from_secs(30),
                max_timeout: Duration::from_secs(3600),
                max_participants: 8,
                participant_timeout: Duration::from_secs(1),
                max_wait: Duration::from_secs(5),
                retention: Duration::from_secs(60),
                transaction_retention: Duration::from_secs(60),
            },
            clock: Arc::new(move || {
                DateTime::from_timestamp_millis(now.load(Ordering::SeqCst)).unwrap()
            }),
            public_url: "http://coordinator".into(),
            deadlines: TimerQueue::default(),
            metrics,
            render: Arc::new(|_, _| Vec::new()),
            tasks: TaskTracker::new(),
            shutdown: CancellationToken::new(),
            topology: Topology::Embedded,
        });
        coordinator.mark_ready();
        Self {
            coordinator,
            participants,
            clock,
            _dir: dir,
        }
    }

    fn advance(&self, by: Duration) {
        let ms = i64::try_from(by.as_millis()).unwrap();
        self.clock.fetch_add(ms, Ordering::SeqCst);
    }

    async fn create(&self, participants: Vec<NewParticipant>, timeout: Duration) -> Reservation {
        self.coordinator
            .create(
                CreateReservation {
                    timeout: Some(timeout),
                    participants,
                    metadata: serde_json::Map::new(),
                    trace: None,
                    callback: None,
                },
                None,
            )
            .await
            .unwrap()
    }

    /// Waits (real time, bounded) until the reservation satisfies `done`.
    async fn until(&self, id: ReservationId, done: impl Fn(&Reservation) -> bool) -> Reservation {
        let (r, settled) = self
            .coordinator
            .wait_until(id, done, Duration::from_secs(5))
            .await
            .unwrap();
        assert!(settled, "never got there: {r:#?}");
        r
    }
}

fn a_link(n: u32) -> NewParticipant {
    NewParticipant {
        name: format!("link-{n}"),
        source: ParticipantSource::Link(link(n)),
    }
}

fn a_try(name: &str) -> NewParticipant {
    NewParticipant {
        name: name.into(),
        source: ParticipantSource::Try(TryRequest {
            url: ParticipantUrl::parse("http://stock/holds").unwrap(),
            body: serde_json::json!({"sku": name}),
            headers: Vec::new(),
        }),
    }
}

fn calls_of(r: &Reservation, verb: CallVerb) -> Vec<String> {
    r.history()
        .iter()
        .filter_map(|h| match &h.what {
            Happening::Called {
                verb: v, result, ..
            } if *v == verb => Some(result.clone()),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn the_try_phase_retries_with_the_same_key_and_the_last_answer_makes_it_reserved() {
    let h = Harness::new();
    h.participants.tries.lock().unwrap().extend([
        TryOutcome::Retry(retry("503 Service Unavailable")),
        TryOutcome::Reserved(link(7)),
    ]);

    let created = h
        .create(vec![a_try("stock")], Duration::from_secs(30))
        .await;
    assert_eq!(created.state(), State::Trying);
    let r = h.until(created.id(), |r| r.state() != State::Trying).await;

    assert_eq!(r.state(), State::Reserved);
    assert_eq!(r.participants()[0].state(), ParticipantState::Reserved);
    assert_eq!(r.participants()[0].link().unwrap().uri, link(7).uri);
    let key = format!("{}/0", created.id());
    assert_eq!(h.participants.calls(CallVerb::Try), [key.clone(), key]);
    assert_eq!(
        calls_of(&r, CallVerb::Try),
        ["503 Service Unavailable", "reserved"]
    );
}

#[tokio::test]
async fn a_refused_try_cancels_what_the_other_tries_hold() {
    let h = Harness::new();
    h.participants.tries.lock().unwrap().extend([
        TryOutcome::Reserved(link(1)),
        TryOutcome::Refused("409 Conflict".into()),
    ]);

    let created = h
        .create(
            vec![a_try("first"), a_try("second")],
            Duration::from_secs(30),
        )
        .await;
    let r = h.until(created.id(), |r| r.state().is_terminal()).await;

    assert_eq!(
        (r.state(), r.reason()),
        (State::Cancelled, Some(Reason::TryFailed))
    );
    assert_eq!(
        h.participants.calls(CallVerb::Cancel),
        [link(1).uri.to_string()]
    );
    assert!(h.participants.calls(CallVerb::Confirm).is_empty());
}

#[tokio::test]
async fn the_confirm_phase_retries_only_the_participant_that_needs_it() {
    let h = Harness::new();
    h.participants.confirms.lock().unwrap().extend([
        ConfirmOutcome::Confirmed,
        ConfirmOutcome::Retry(retry("502 Bad Gateway")),
    ]);
    let created = h
        .create(vec![a_link(1), a_link(2)], Duration::from_secs(30))
        .await;

    h.coordinator
        .decide_as(created.id(), true, None, None)
        .await
        .unwrap();
    let r = h.until(created.id(), |r| r.state().is_terminal()).await;

    assert_eq!(r.state(), State::Confirmed);
    let confirms = h.participants.calls(CallVerb::Confirm);
    assert_eq!(confirms.len(), 3, "{confirms:?}");
    assert_eq!(
        confirms.iter().filter(|u| u.ends_with("/holds/1")).count(),
        1,
        "a confirmed participant is not called again"
    );
    assert!(h.participants.calls(CallVerb::Cancel).is_empty());
    assert_eq!(calls_of(&r, CallVerb::Confirm).len(), 3);
}

#[tokio::test]
async fn a_deadline_cancels_only_once_the_clock_has_passed_it() {
    let h = Harness::new();
    let created = h.create(vec![a_link(1)], Duration::from_secs(10)).await;

    assert_eq!(h.coordinator.expire(&[created.id()]).await.unwrap(), 0);
    assert_eq!(
        h.coordinator.get(created.id()).await.unwrap().state(),
        State::Reserved
    );

    h.advance(Duration::from_secs(11));
    assert_eq!(h.coordinator.expire(&[created.id()]).await.unwrap(), 1);
    let r = h.until(created.id(), |r| r.state().is_terminal()).await;

    assert_eq!(
        (r.state(), r.reason()),
        (State::Cancelled, Some(Reason::Expired))
    );
    assert_eq!(
        h.participants.calls(CallVerb::Cancel),
        [link(1).uri.to_string()]
    );
    assert_eq!(
        h.coordinator.expire(&[created.id()]).await.unwrap(),
        0,
        "expiring again changes nothing"
    );
}

#[tokio::test]
async fn the_unit_of_work_writes_only_what_changed_and_counts_each_write() {
    let h = Harness::new();
    let created = h.create(vec![a_link(1)], Duration::from_secs(30)).await;
    assert_eq!(created.revision(), 1);

    let (same, ()) = h.coordinator.update(created.id(), |_, _| ()).await.unwrap();
    assert_eq!(same.revision(), 1, "no change, no write");

    let (changed, ()) = h
        .coordinator
        .update(created.id(), |r, _| {
            r.metadata_mut().insert("note".into(), "kept".into());
        })
        .await
        .unwrap();
    assert_eq!(changed.revision(), 2);
    let read = h.coordinator.get(created.id()).await.unwrap();
    assert_eq!(
        (read.revision(), &read.metadata()["note"]),
        (2, &serde_json::json!("kept"))
    );
}

/// The sweep drops a finished reservation once its retention (60 s here) has ended, and
/// not before; an unfinished one never.
#[tokio::test]
async fn the_retention_sweep_drops_a_finished_reservation_once_its_retention_ends() {
    let h = Harness::new();
    let finished = h.create(vec![a_link(1)], Duration::from_secs(30)).await;
    let waiting = h.create(vec![a_link(2)], Duration::from_secs(3600)).await;
    h.coordinator
        .decide_as(finished.id(), false, None, None)
        .await
        .unwrap();
    h.until(finished.id(), |r| r.state() == State::Cancelled)
        .await;

    assert_eq!(h.coordinator.sweep_retention().await.unwrap(), 0);
    h.advance(Duration::from_secs(59));
    assert_eq!(h.coordinator.sweep_retention().await.unwrap(), 0);
    h.advance(Duration::from_secs(2));
    assert_eq!(h.coordinator.sweep_retention().await.unwrap(), 1);

    assert_eq!(
        h.coordinator.store().load(finished.id()).await.unwrap(),
        None
    );
    assert!(h
        .coordinator
        .store()
        .load(waiting.id())
        .await
        .unwrap()
        .is_some());
    assert_eq!(h.coordinator.sweep_retention().await.unwrap(), 0);
}

/// The embedded log as these tests open it: 8 MiB of cache, `flush` only, no reserve.
fn test_log_options() -> EmbeddedOptions {
    EmbeddedOptions {
        cache_bytes: 8 << 20,
        sync: SyncMode::Flush,
        disk_reserve: 0,
        write_timeout: Duration::from_secs(30),
        retention: crate::store::Retention {
            retention: Duration::from_secs(60),
            transaction_retention: Duration::from_secs(60),
        },
    }
}

/// The race chaos seed 4 found (a cancelled reservation whose callback never went out): a
/// takeover woke the reservation's old driver just as that driver, having read the
/// reservation as another instance's, was ending. Here the wake-up comes between the read
/// and the driver's decision to end: it must stay, registered, and read again.
#[tokio::test]
async fn a_driver_woken_as_it_ends_stays_and_a_driver_that_ended_is_started_again() {
    let h = Harness::new();
    let id = ReservationId::new();
    let wake = CancellationToken::new();
    h.coordinator
        .inner
        .drivers
        .lock()
        .unwrap()
        .insert(id, wake.clone());
    // The takeover: the reservation is this instance's again, its registered driver woken.
    h.coordinator.ensure_driven(id);
    assert!(
        wake.is_cancelled(),
        "the registered driver is woken, not doubled"
    );
    assert!(
        !h.coordinator.stop_unless_woken(id, &wake),
        "a woken driver reads the reservation again instead of ending"
    );
    assert!(h.coordinator.drives(id), "and stays registered meanwhile");

    // Not woken: it ends and leaves no registration behind, so the next wake-up starts one.
    let quiet = CancellationToken::new();
    h.coordinator
        .inner
        .drivers
        .lock()
        .unwrap()
        .insert(id, quiet.clone());
    assert!(h.coordinator.stop_unless_woken(id, &quiet));
    assert!(!h.coordinator.drives(id));
}
