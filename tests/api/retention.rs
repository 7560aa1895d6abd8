//! Retention: finished reservations stay readable for `--retention`, transactions for
//! `--transaction-retention`, then they answer 410 / 404 and the space is reclaimed.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use tcc_coordinator::Storage;

use crate::helpers::{is_settled, spawn_app_with, Participant, Reply};

#[tokio::test]
async fn a_finished_reservation_is_readable_for_its_retention_then_410() {
    let app = spawn_app_with(|c| {
        // Long enough that the first reads land inside the retention on a busy machine.
        c.limits.retention = Duration::from_millis(1500);
        c.limits.transaction_retention = Duration::from_millis(3500);
    })
    .await;
    let p = Participant::start().await;
    let confirmed = app.create(&json!({"participants": [p.link(1)]})).await;
    let cancelled = app.create(&json!({"participants": [p.link(2)]})).await;
    app.post(&format!("/reservations/{confirmed}/confirm"))
        .await;
    app.post(&format!("/reservations/{cancelled}/cancel")).await;
    let (status, _) = app.wait_for(&confirmed, is_settled).await;
    assert_eq!(status, 303);
    let (_, gone) = app.wait_for(&cancelled, is_settled).await;
    assert_eq!(gone["state"], "cancelled");

    // After the reservation retention: both answer 410; the transaction is still there.
    app.wait_for(&confirmed, |s, _| s == 410).await;
    let (_, gone) = app
        .wait_for(&cancelled, |s, b| s == 410 && b["state"].is_null())
        .await;
    assert_eq!(
        gone["id"],
        cancelled.as_str(),
        "purged, but still says which: {gone}"
    );
    assert_eq!(
        app.post(&format!("/reservations/{confirmed}/confirm"))
            .await
            .status(),
        410
    );
    assert_eq!(
        app.get(&format!("/transactions/{confirmed}"))
            .await
            .status(),
        200
    );

    // After the transaction retention: the transaction is gone too.
    let start = std::time::Instant::now();
    while app
        .get(&format!("/transactions/{confirmed}"))
        .await
        .status()
        != 404
    {
        assert!(
            start.elapsed() < crate::helpers::PATIENCE,
            "the transaction never expired"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.stop().await;
}

#[tokio::test]
async fn a_conflict_is_kept_past_the_retention_until_forgotten() {
    let app = spawn_app_with(|c| c.limits.retention = Duration::from_millis(300)).await;
    let (ok, refusing) = (Participant::start().await, Participant::start().await);
    refusing.set(|x| x.confirm_reply = Reply::Status(409));
    let id = app
        .create(&json!({"participants": [ok.link(1), refusing.link(1)]}))
        .await;
    app.post(&format!("/reservations/{id}/confirm")).await;
    app.wait_for(&id, |_, b| b["state"] == "conflict").await;
    // A reservation cancelled after the conflict ended is purged once its retention is over
    // (its 410 no longer has a state): by then the conflict's retention is over too.
    let companion = app.create(&json!({"participants": [ok.link(2)]})).await;
    app.post(&format!("/reservations/{companion}/cancel")).await;
    app.wait_for(&companion, |s, b| s == 410 && b["state"].is_null())
        .await;

    let response = app.get(&format!("/reservations/{id}")).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["state"], "conflict");
    app.stop().await;
}

/// Bytes the directory takes on disk.
fn disk_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let meta = e.metadata().unwrap();
            if meta.is_dir() {
                disk_usage(&e.path())
            } else {
                meta.blocks() * 512
            }
        })
        .sum()
}

#[tokio::test]
async fn the_data_directory_stops_growing_under_a_steady_load_of_short_lived_reservations() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let app = spawn_app_with(|c| {
        c.storage = Storage::Dir(data.clone());
        c.limits.retention = Duration::from_millis(200);
        c.limits.transaction_retention = Duration::from_millis(200);
    })
    .await;
    let metadata = json!({"padding": "x".repeat(4000)});

    let mut sizes = Vec::new();
    for _round in 0..12 {
        let creates = (0..300).map(|_| {
            let app = &app;
            let body = json!({"metadata": metadata});
            async move {
                let id = app.create(&body).await;
                app.post(&format!("/reservations/{id}/confirm")).await;
            }
        });
        futures_util::future::join_all(creates).await;
        tokio::time::sleep(Duration::from_millis(600)).await;
        sizes.push(disk_usage(&data));
    }

    // 3,600 reservations of over 4 KB each were written: kept, they would take 14 MB or more,
    // growing by over 1 MB a round. sled's files move by a segment or more from one round to
    // the next as it cleans, so the peaks are compared, not single samples.
    let steady = *sizes[2..6].iter().max().unwrap();
    let late = *sizes[8..].iter().max().unwrap();
    eprintln!("data directory sizes per round: {sizes:?}");
    assert!(
        late <= steady + steady / 2,
        "the data directory kept growing: {sizes:?}"
    );
    app.stop().await;
}
