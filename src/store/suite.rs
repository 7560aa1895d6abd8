//! The store test suite: the same tests against the embedded log and against PostgreSQL.
//!
//! The PostgreSQL half is `#[ignore = "needs TCC_TEST_POSTGRES"]`: it runs with
//! `--include-ignored` when `TCC_TEST_POSTGRES` names a database (`postgres://user@host:port/db`;
//! `.ci/postgres.sh` starts a throwaway one), each test in a schema of its own.

use std::time::Duration;

use chrono::Utc;

use super::*;
use crate::domain::{Event, Reservation};

const RETENTION: Retention = Retention {
    retention: Duration::from_secs(60),
    transaction_retention: Duration::from_secs(60),
};

fn reservation() -> Reservation {
    Reservation::new(
        ReservationId::new(),
        // The log keeps milliseconds.
        DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).unwrap(),
        Duration::from_secs(30),
        vec![],
        serde_json::Map::new(),
        Duration::from_secs(5),
    )
}

/// A reservation holding one link at `host`.
fn reservation_with(host: &str) -> Reservation {
    let link = crate::domain::ParticipantLink {
        uri: crate::domain::ParticipantUrl::parse(&format!("http://{host}/holds/1")).unwrap(),
        expires: Utc::now() + chrono::Duration::hours(1),
    };
    Reservation::new(
        ReservationId::new(),
        DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).unwrap(),
        Duration::from_secs(30),
        vec![crate::domain::NewParticipant {
            name: "held".into(),
            source: crate::domain::ParticipantSource::Link(link),
        }],
        serde_json::Map::new(),
        Duration::from_secs(5),
    )
}

fn sled_store(max_waiting: usize) -> (Store, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let options = EmbeddedOptions {
        sync: SyncMode::Fdatasync,
        ..flush_only()
    };
    let store = Store::open(dir.path(), &options, max_waiting, &Default::default()).unwrap();
    (store, dir)
}

/// The embedded log as the unit tests open it: 8 MiB of cache, `flush` only, no reserve.
fn flush_only() -> EmbeddedOptions {
    EmbeddedOptions {
        cache_bytes: 8 << 20,
        sync: SyncMode::Flush,
        disk_reserve: 0,
        write_timeout: Duration::from_secs(30),
        retention: RETENTION,
    }
}

async fn postgres_store(url: &str, lease: Duration, max_waiting: usize) -> Store {
    Store::connect(
        PostgresOptions {
            url: url.to_owned(),
            connections: 8,
            lease,
            retention: RETENTION,
            instance_name: "store suite".into(),
            ca: None,
            statement_timeout: Duration::from_secs(2),
        },
        max_waiting,
    )
    .await
    .unwrap()
}

/// Two stores on one fresh schema, as two coordinator processes would have them.
async fn two_instances() -> (Store, Store) {
    let url = required_scratch_database().await;
    let lease = Duration::from_secs(30);
    (
        postgres_store(&url, lease, 16).await,
        postgres_store(&url, lease, 16).await,
    )
}

/// Runs each test against sled, then against PostgreSQL when there is one.
macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod embedded_log {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let (store, _dir) = super::sled_store(1024);
                    super::$name(&store).await;
                }
            )*
        }
        mod postgres_log {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                #[ignore = "needs TCC_TEST_POSTGRES"]
                async fn $name() {
                    let url = super::super::required_scratch_database().await;
                    let store = super::postgres_store(&url, std::time::Duration::from_secs(10), 1024).await;
                    super::$name(&store).await;
                }
            )*
        }
    };
}

suite!(
    a_created_reservation_reads_back_equal_at_revision_1,
    a_write_over_a_stale_revision_is_refused_and_changes_nothing,
    concurrent_writers_of_one_reservation_win_one_revision_each,
    an_idempotency_key_maps_to_the_first_reservation_only,
    listing_is_newest_first_filtered_and_paged,
    listing_filters_by_participant_host_and_text_within_a_scan_budget,
    purging_drops_the_record_and_frees_its_key,
    retention_deletes_in_bounded_batches,
    concurrent_creates_are_all_durable_and_readable,
    client_writes_past_the_queue_limit_are_refused_until_one_is_durable,
    writes_made_together_each_keep_their_own_outcome,
);

async fn a_created_reservation_reads_back_equal_at_revision_1(store: &Store) {
    let mut r = reservation();
    assert_eq!(store.create(&mut r, None).await.unwrap(), None);
    assert_eq!(r.revision(), 1);
    assert_eq!(store.load(r.id()).await.unwrap(), Some(r.clone()));
    assert_eq!(store.load(ReservationId::new()).await.unwrap(), None);
}

async fn a_write_over_a_stale_revision_is_refused_and_changes_nothing(store: &Store) {
    let mut r = reservation();
    store.create(&mut r, None).await.unwrap();
    let (mut first, mut second) = (r.clone(), r.clone());
    first.apply(Event::Confirm, Utc::now()).unwrap();
    second.apply(Event::Cancel, Utc::now()).unwrap();
    store.replace(&mut first, Ownership::Take).await.unwrap();
    assert_eq!(first.revision(), 2);
    assert!(matches!(
        store.replace(&mut second, Ownership::Take).await,
        Err(StoreError::Conflict(id)) if id == r.id()
    ));
    assert_eq!(
        second.revision(),
        1,
        "a refused write leaves the revision as read"
    );
    let stored = store.load(r.id()).await.unwrap().unwrap();
    assert_eq!(stored.state(), State::Confirming);
    assert_eq!(stored.revision(), 2);
    // Once read again, the write goes through.
    let mut again = stored;
    again.metadata_mut().insert("k".into(), "v".into());
    store.replace(&mut again, Ownership::Take).await.unwrap();
    assert_eq!(store.load(r.id()).await.unwrap().unwrap().revision(), 3);
}

async fn concurrent_writers_of_one_reservation_win_one_revision_each(store: &Store) {
    let mut r = reservation();
    store.create(&mut r, None).await.unwrap();
    let writers = (0..16).map(|i| {
        let (store, id) = (store.clone(), r.id());
        tokio::spawn(async move {
            let mut won = 0;
            for round in 0..10 {
                let mut read = store.load(id).await.unwrap().unwrap();
                read.metadata_mut()
                    .insert(format!("w{i}"), serde_json::json!(round));
                match store.replace(&mut read, Ownership::Take).await {
                    Ok(()) => won += 1,
                    Err(StoreError::Conflict(_)) => {}
                    Err(e) => panic!("{e}"),
                }
            }
            won
        })
    });
    let won: u64 = futures_util::future::join_all(writers)
        .await
        .into_iter()
        .map(Result::unwrap)
        .sum();
    let stored = store.load(r.id()).await.unwrap().unwrap();
    assert!(won >= 1);
    assert_eq!(
        stored.revision(),
        1 + won,
        "every winning write counted exactly once"
    );
}

async fn an_idempotency_key_maps_to_the_first_reservation_only(store: &Store) {
    let key = format!("order-{}", uuid::Uuid::new_v4());
    let mut first = reservation();
    first.set_idempotency_key(key.clone());
    let entry = KeyEntry {
        key: &key,
        fingerprint: [7; 32],
    };
    assert_eq!(store.create(&mut first, Some(entry)).await.unwrap(), None);
    let mut second = reservation();
    second.set_idempotency_key(key.clone());
    let taken = KeyEntry {
        key: &key,
        fingerprint: [8; 32],
    };
    assert_eq!(
        store.create(&mut second, Some(taken)).await.unwrap(),
        Some((first.id(), [7; 32]))
    );
    assert_eq!(second.revision(), 0);
    assert_eq!(
        store.load(second.id()).await.unwrap(),
        None,
        "nothing stored"
    );
    assert_eq!(
        store.idempotency_key(&key).await.unwrap(),
        Some((first.id(), [7; 32]))
    );
}

async fn listing_is_newest_first_filtered_and_paged(store: &Store) {
    let mut ids = Vec::new();
    for i in 0..5 {
        let mut r = reservation();
        if i % 2 == 1 {
            r.apply(Event::Cancel, Utc::now()).unwrap();
        }
        store.create(&mut r, None).await.unwrap();
        ids.push((r.id(), r.state()));
        tokio::time::sleep(Duration::from_millis(2)).await; // distinct UUIDv7 instants
    }
    let newest: Vec<_> = ids.iter().rev().map(|(id, _)| *id).collect();
    let (page, next) = store.newest_first(ListQuery::newest(3)).await.unwrap();
    assert_eq!(page.iter().map(|r| r.id()).collect::<Vec<_>>(), newest[..3]);
    assert_eq!(next, Some(page[2].id()));
    let (rest, next) = store
        .newest_first(ListQuery {
            before: next,
            ..ListQuery::newest(3)
        })
        .await
        .unwrap();
    assert_eq!(rest.iter().map(|r| r.id()).collect::<Vec<_>>(), newest[3..]);
    assert_eq!(next, None);
    let (cancelling, _) = store
        .newest_first(ListQuery {
            state: Some(State::Cancelling),
            ..ListQuery::newest(10)
        })
        .await
        .unwrap();
    assert_eq!(cancelling.len(), 2);
    assert!(cancelling.iter().all(|r| r.state() == State::Cancelling));
}

async fn listing_filters_by_participant_host_and_text_within_a_scan_budget(store: &Store) {
    let mut ids = Vec::new();
    for (host, tag) in [
        ("stock.internal:8080", "blue"),
        ("pay.internal", "red"),
        ("stock.internal:8080", "red"),
        ("seat.internal", "green"),
    ] {
        let mut r = reservation_with(host);
        r.metadata_mut()
            .insert("order".into(), serde_json::json!({"colour": tag}));
        store.create(&mut r, None).await.unwrap();
        ids.push(r.id());
        tokio::time::sleep(Duration::from_millis(2)).await; // distinct UUIDv7 instants
    }
    let listed = |query: ListQuery| async move {
        let (page, next) = store.newest_first(query).await.unwrap();
        (page.iter().map(Reservation::id).collect::<Vec<_>>(), next)
    };
    let by_host = |host: &str| ListQuery {
        participant_host: Some(host.into()),
        ..ListQuery::newest(10)
    };
    assert_eq!(
        listed(by_host("STOCK.internal:8080")).await,
        (vec![ids[2], ids[0]], None)
    );
    assert_eq!(listed(by_host("pay")).await, (vec![ids[1]], None));
    assert_eq!(listed(by_host("elsewhere")).await, (vec![], None));
    let by_text = |text: &str| ListQuery {
        text: Some(text.into()),
        ..ListQuery::newest(10)
    };
    assert_eq!(listed(by_text("Red")).await, (vec![ids[2], ids[1]], None));
    let prefix = ids[3].to_string()[..13].to_owned();
    assert!(listed(by_text(&prefix)).await.0.contains(&ids[3]));
    // Its last characters, the random part the dashboard's operators read, find it alone.
    let suffix = ids[3].to_string()[24..].to_uppercase();
    assert_eq!(listed(by_text(&suffix)).await, (vec![ids[3]], None));
    // A time range: from the third one's creation on, and before it.
    let third = store.load(ids[2]).await.unwrap().unwrap().created_at();
    let from_third = ListQuery {
        created_after: Some(third),
        ..ListQuery::newest(10)
    };
    assert_eq!(listed(from_third).await, (vec![ids[3], ids[2]], None));
    let before_third = ListQuery {
        created_before: Some(third),
        ..ListQuery::newest(10)
    };
    assert_eq!(listed(before_third).await, (vec![ids[1], ids[0]], None));
    let between = ListQuery {
        created_after: Some(store.load(ids[1]).await.unwrap().unwrap().created_at()),
        created_before: Some(third),
        ..ListQuery::newest(10)
    };
    assert_eq!(listed(between).await, (vec![ids[1]], None));
    // A scan budget of two records: the first page finds one red among the newest two and
    // says where to go on; the next finds the other.
    let budget = ListQuery {
        max_scan: 2,
        ..by_text("red")
    };
    assert_eq!(listed(budget.clone()).await, (vec![ids[2]], Some(ids[2])));
    let (found, _) = listed(ListQuery {
        before: Some(ids[2]),
        ..budget
    })
    .await;
    assert_eq!(found, vec![ids[1]]);
}

/// A finished reservation, its retention ended an hour ago.
fn finished_long_ago() -> Reservation {
    let long_ago = Utc::now() - chrono::Duration::hours(1);
    let mut r = reservation();
    r.apply(Event::Cancel, long_ago).unwrap();
    r.finish_phase(long_ago);
    r
}

async fn purging_drops_the_record_and_frees_its_key(store: &Store) {
    let key = format!("order-{}", uuid::Uuid::new_v4());
    let mut r = reservation();
    r.set_idempotency_key(key.clone());
    let entry = KeyEntry {
        key: &key,
        fingerprint: [1; 32],
    };
    store.create(&mut r, Some(entry)).await.unwrap();
    let mut later = reservation();
    store.create(&mut later, None).await.unwrap();
    let now = DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).unwrap();
    r.apply(Event::Cancel, now).unwrap();
    r.finish_phase(now);
    store.replace(&mut r, Ownership::Keep).await.unwrap();
    later
        .apply(Event::Cancel, now + chrono::Duration::seconds(1))
        .unwrap();
    later.finish_phase(now + chrono::Duration::seconds(1));
    store.replace(&mut later, Ownership::Keep).await.unwrap();
    let ends = r
        .purge_at(RETENTION.retention, RETENTION.transaction_retention)
        .unwrap();

    assert_eq!(
        store
            .purge_due(ends - chrono::Duration::milliseconds(1), 10)
            .await
            .unwrap()
            .scanned,
        0,
        "nothing is due before its retention ends"
    );
    assert_eq!(store.purge_due(ends, 10).await.unwrap().scanned, 1);

    assert_eq!(store.load(r.id()).await.unwrap(), None);
    assert_eq!(store.idempotency_key(&key).await.unwrap(), None);
    assert!(
        store.load(later.id()).await.unwrap().is_some(),
        "one whose retention ends later stays"
    );
    let mut stale = r.clone();
    assert!(matches!(
        store.replace(&mut stale, Ownership::Take).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(
        store.load(r.id()).await.unwrap(),
        None,
        "a removed record stays removed"
    );
}

async fn retention_deletes_in_bounded_batches(store: &Store) {
    let mut finished = Vec::new();
    for _ in 0..25 {
        let mut r = finished_long_ago();
        store.create(&mut r, None).await.unwrap();
        finished.push(r.id());
    }
    let mut kept = reservation();
    store.create(&mut kept, None).await.unwrap();
    let now = Utc::now();
    let scanned = |p: Purged| p.scanned;
    assert_eq!(scanned(store.purge_due(now, 10).await.unwrap()), 10);
    assert_eq!(scanned(store.purge_due(now, 10).await.unwrap()), 10);
    assert_eq!(scanned(store.purge_due(now, 10).await.unwrap()), 5);
    assert_eq!(scanned(store.purge_due(now, 10).await.unwrap()), 0);
    for id in finished {
        assert_eq!(store.load(id).await.unwrap(), None);
    }
    assert!(store.load(kept.id()).await.unwrap().is_some());
}

async fn concurrent_creates_are_all_durable_and_readable(store: &Store) {
    let creates = (0..200).map(|_| {
        let store = store.clone();
        tokio::spawn(async move {
            let mut r = reservation();
            store.create(&mut r, None).await.unwrap();
            r
        })
    });
    let created: Vec<Reservation> = futures_util::future::join_all(creates)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    // Read back all at once too (PostgreSQL answers reads that wait together in one
    // statement): each read gets its own reservation, and one never created reads as none.
    let reads = created.iter().map(|r| store.load(r.id()));
    for (r, read) in created
        .iter()
        .zip(futures_util::future::join_all(reads).await)
    {
        assert_eq!(read.unwrap().as_ref(), Some(r));
    }
    let (known, unknown) = tokio::join!(
        store.load(created[0].id()),
        store.load(ReservationId::new())
    );
    assert_eq!(known.unwrap().as_ref(), Some(&created[0]));
    assert_eq!(unknown.unwrap(), None);
}

async fn client_writes_past_the_queue_limit_are_refused_until_one_is_durable(store: &Store) {
    // The suite's stores admit 1024; take them all.
    let held: Vec<_> = (0..1024).map(|_| store.admit().unwrap()).collect();
    assert!(matches!(store.admit(), Err(StoreError::Overloaded(1024))));
    drop(held);
    assert!(store.admit().is_ok());
}

async fn writes_made_together_each_keep_their_own_outcome(store: &Store) {
    let mut created = Vec::new();
    for _ in 0..100 {
        let mut r = reservation();
        store.create(&mut r, None).await.unwrap();
        created.push(r);
    }
    // Every other copy is made stale by a write in between.
    for r in created.iter().skip(1).step_by(2) {
        let mut newer = r.clone();
        newer.metadata_mut().insert("first".into(), "write".into());
        store.replace(&mut newer, Ownership::Take).await.unwrap();
    }
    let writes = created.into_iter().enumerate().map(|(i, mut r)| {
        let store = store.clone();
        tokio::spawn(async move {
            r.apply(Event::Confirm, Utc::now()).unwrap();
            (i, r.id(), store.replace(&mut r, Ownership::Take).await)
        })
    });
    for written in futures_util::future::join_all(writes).await {
        let (i, id, outcome) = written.unwrap();
        let stored = store.load(id).await.unwrap().unwrap();
        if i % 2 == 0 {
            assert!(outcome.is_ok(), "write {i}: {outcome:?}");
            assert_eq!(stored.state(), State::Confirming);
        } else {
            assert!(
                matches!(outcome, Err(StoreError::Conflict(c)) if c == id),
                "write {i} over a stale copy: {outcome:?}"
            );
            assert_eq!(stored.state(), State::Reserved, "write {i}");
        }
    }
}

// ---- what only a shared store does ------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_log_groups_concurrent_writes_into_few_flushes() {
    let (store, _dir) = sled_store(1024);
    concurrent_creates_are_all_durable_and_readable(&store).await;
    let flushes = store.flushes();
    assert!(
        (1..200).contains(&flushes),
        "{flushes} flushes for 200 creates"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs TCC_TEST_POSTGRES"]
async fn the_shared_log_commits_concurrent_writes_together() {
    let url = required_scratch_database().await;
    let store = postgres_store(&url, Duration::from_secs(10), 1024).await;
    concurrent_creates_are_all_durable_and_readable(&store).await;
    let commits = store.flushes();
    assert!(
        (1..200).contains(&commits),
        "{commits} commits for 200 creates"
    );
}

#[cfg(unix)]
#[test]
fn the_data_directory_is_created_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("nested").join("data");
    Store::open(&data, &flush_only(), 1, &Default::default()).unwrap();
    let mode = std::fs::metadata(&data).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700);
}

/// A reservation whose record is larger than the embedded log keeps inline (6 KiB).
fn large_reservation() -> Reservation {
    let mut metadata = serde_json::Map::new();
    metadata.insert("note".into(), "x".repeat(20 * 1024).into());
    Reservation::new(
        ReservationId::new(),
        DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).unwrap(),
        Duration::from_secs(30),
        vec![],
        metadata,
        Duration::from_secs(5),
    )
}

fn record_files(data: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(data.join("records"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect()
}

/// The embedded log's retention index is on disk, and a finished record whose entry is
/// missing (lost in a crash, or written before the index existed) gets it back when the log
/// is read at start: without that, it would be kept forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_record_missing_from_the_retention_index_gets_it_back_at_start() {
    // Arrange: a finished record, its index entry then lost.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let store = Store::open(&data, &flush_only(), 8, &Default::default()).unwrap();
    let mut finished = finished_long_ago();
    store.create(&mut finished, None).await.unwrap();
    store.close(Duration::from_secs(10)).await;
    assert_eq!(
        embedded::forget_purge_index(&data).unwrap(),
        1,
        "written with its record"
    );
    let store = Store::open(&data, &flush_only(), 8, &Default::default()).unwrap();
    assert_eq!(
        store.purge_due(Utc::now(), 10).await.unwrap().scanned,
        0,
        "the entry is gone"
    );

    // Act: read back as recovery does.
    let read: Vec<_> = store.local_records().collect::<Result<_, _>>().unwrap();

    // Assert
    assert_eq!(read.len(), 1);
    let purged = store.purge_due(Utc::now(), 10).await.unwrap();
    assert_eq!(purged.removed, vec![(finished.id(), State::Cancelled)]);
    assert_eq!(store.load(finished.id()).await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_record_lives_in_a_file_of_its_own_replaced_after_a_flush_and_swept_at_start() {
    // Arrange
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let options = EmbeddedOptions {
        sync: SyncMode::Fdatasync,
        ..flush_only()
    };
    let store = Store::open(&data, &options, 8, &Default::default()).unwrap();
    let mut large = large_reservation();

    // Act: created, then changed (a second revision, a second file).
    store.create(&mut large, None).await.unwrap();
    let first = record_files(&data);
    let now = DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).unwrap();
    large.apply(Event::Cancel, now).unwrap();
    store.replace(&mut large, Ownership::Keep).await.unwrap();
    let mut small = reservation();
    store.create(&mut small, None).await.unwrap();

    // Assert: one file per large record at a time, the record reads back equal; a small one
    // has none.
    assert_eq!(first.len(), 1);
    let now = record_files(&data);
    assert_eq!(now.len(), 1, "{now:?}");
    assert_ne!(now, first);
    let read = store.load(large.id()).await.unwrap().unwrap();
    assert!(read == large, "the large record reads back different");

    // A file no record points to (a crash between a write and its flush) is swept at start.
    std::fs::write(data.join("records").join("left-by-a-crash"), b"x").unwrap();
    store.close(Duration::from_secs(5)).await;
    let store = Store::open(&data, &options, 8, &Default::default()).unwrap();
    assert_eq!(record_files(&data), now);
    let read = store.load(large.id()).await.unwrap().unwrap();
    assert!(
        read == large,
        "the large record reads back different after a restart"
    );
    assert_eq!(store.load(small.id()).await.unwrap().unwrap(), small);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs TCC_TEST_POSTGRES"]
async fn a_lapsed_instance_loses_its_work_to_a_claim_and_its_late_writes_fail() {
    let (first, second) = two_instances().await;
    let mut pending = reservation();
    first.create(&mut pending, None).await.unwrap();
    let mut finished = reservation();
    finished.apply(Event::Cancel, Utc::now()).unwrap();
    finished.finish_phase(Utc::now());
    first.create(&mut finished, None).await.unwrap();

    assert!(
        second.claim_orphans(100).await.unwrap().is_empty(),
        "nothing is claimed from a live instance"
    );
    first.release().await; // as if its lease had lapsed
    let claimed = second.claim_orphans(100).await.unwrap();
    assert_eq!(
        claimed.iter().map(|r| r.id()).collect::<Vec<_>>(),
        vec![pending.id()],
        "only unfinished work is claimed"
    );
    assert_eq!(claimed[0].revision(), 2, "a claim counts the revision up");
    assert!(
        second.claim_orphans(100).await.unwrap().is_empty(),
        "claimed once"
    );
    // The old owner's copy is stale: its write fails its condition.
    pending.apply(Event::Confirm, Utc::now()).unwrap();
    assert!(matches!(
        first.replace(&mut pending, Ownership::Take).await,
        Err(StoreError::Conflict(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs TCC_TEST_POSTGRES"]
async fn the_state_counts_leave_out_what_retention_deleted() {
    let url = required_scratch_database().await;
    let store = postgres_store(&url, Duration::from_secs(10), 64).await;
    let mut r = finished_long_ago();
    store.create(&mut r, None).await.unwrap();
    let mut kept = reservation();
    store.create(&mut kept, None).await.unwrap();
    assert_eq!(store.purge_due(Utc::now(), 10).await.unwrap().scanned, 1);
    let counts = store.count_by_state().await.unwrap();
    assert_eq!(counts, vec![(State::Reserved, 1)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_is_waited_for_and_named_without_its_password() {
    // A port nothing listens on.
    let store = Store::connect(
        PostgresOptions {
            url: "postgres://tcc:secret-password@127.0.0.1:9/tcc".into(),
            connections: 1,
            lease: Duration::from_secs(10),
            retention: RETENTION,
            instance_name: "unreachable".into(),
            ca: None,
            statement_timeout: Duration::from_secs(2),
        },
        1,
    )
    .await
    .expect("an unreachable database is waited for, not a reason to stop");
    assert!(!store.is_reachable());
    assert!(
        matches!(store.admit(), Err(StoreError::Unavailable(_))),
        "no client write is taken meanwhile"
    );
    let error = store.heartbeat().await.unwrap_err();
    let text = error.to_string();
    assert!(matches!(error, StoreError::Unavailable(_)), "{text}");
    assert!(
        text.contains("cannot connect to PostgreSQL at tcc@127.0.0.1:9/tcc"),
        "{text}"
    );
    assert!(text.contains("refused"), "{text}");
    assert!(!text.contains("secret-password"), "{text}");
    assert!(
        matches!(
            store.load(ReservationId::new()).await,
            Err(StoreError::Unavailable(_))
        ),
        "reads answer unavailable too"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs TCC_TEST_POSTGRES"]
async fn recording_an_outcome_keeps_the_owner_and_a_clients_change_takes_it() {
    let (first, second) = two_instances().await;
    let mut r = reservation();
    first.create(&mut r, None).await.unwrap();
    assert!(first.owns(&r) && !second.owns(&r));

    let mut read = second.load(r.id()).await.unwrap().unwrap();
    read.metadata_mut()
        .insert("outcome".into(), "recorded".into());
    second.replace(&mut read, Ownership::Keep).await.unwrap();
    assert!(
        !second.owns(&read),
        "an outcome recorded elsewhere leaves the owner"
    );
    assert!(first.owns(&first.load(r.id()).await.unwrap().unwrap()));

    read.apply(Event::Cancel, Utc::now()).unwrap();
    second.replace(&mut read, Ownership::Take).await.unwrap();
    assert!(second.owns(&read));
    assert!(!first.owns(&first.load(r.id()).await.unwrap().unwrap()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs TCC_TEST_POSTGRES"]
async fn serialization_failures_are_retried() {
    let url = required_scratch_database().await;
    // Serializable transactions make concurrent updates of one row fail with SQLSTATE 40001,
    // as distributed PostgreSQL-compatible databases do: the store must retry them (and then
    // report the lost race as a conflict), never fail the write.
    let url = url.replacen(
        "options=",
        "options=-cdefault_transaction_isolation%3Dserializable%20",
        1,
    );
    let store = postgres_store(&url, Duration::from_secs(10), 1024).await;
    concurrent_writers_of_one_reservation_win_one_revision_each(&store).await;
}
