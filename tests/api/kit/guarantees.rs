//! Each guarantee of the kit, over HTTP: idempotent tries by key, expiry released once,
//! the confirm and cancel rules, one winner of a race, the deadline cap, holds that survive
//! a restart.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use serde_json::{json, Value};
use tcc_participant::{Participant, SledStore};
use tokio::sync::Semaphore;

use super::{Served, Shelf};
use crate::helpers::{client, eventually};

async fn try_hold(url: &str, key: &str, body: &Value) -> reqwest::Response {
    client()
        .post(url)
        .header("Idempotency-Key", key)
        .json(body)
        .send()
        .await
        .unwrap()
}

async fn link_of(response: reqwest::Response) -> (u16, String, DateTime<Utc>) {
    let status = response.status().as_u16();
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["uri"], location.as_str());
    (
        status,
        location,
        body["expires"].as_str().unwrap().parse().unwrap(),
    )
}

async fn put(uri: &str) -> u16 {
    client().put(uri).send().await.unwrap().status().as_u16()
}

async fn delete(uri: &str) -> u16 {
    client().delete(uri).send().await.unwrap().status().as_u16()
}

async fn state(uri: &str) -> String {
    let hold: Value = client()
        .get(uri)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    hold["state"].as_str().unwrap().to_owned()
}

/// Two held holds' links, one to keep and one to drop.
async fn two_holds(p: &Served) -> (String, String) {
    let (_, kept, _) = link_of(try_hold(&p.holds_url(), "r1/0", &apples()).await).await;
    let (_, dropped, _) = link_of(try_hold(&p.holds_url(), "r2/0", &apples()).await).await;
    (kept, dropped)
}

fn apples() -> Value {
    json!({"sku": "apple", "quantity": 2})
}

#[tokio::test]
async fn kit_a_repeated_try_with_the_same_key_and_body_gets_the_same_hold_and_reserves_once() {
    let shelf = Shelf::default();
    let p = Served::start(Participant::builder(shelf.clone()).start().unwrap()).await;

    let (first, link, expires) = link_of(try_hold(&p.holds_url(), "r1/0", &apples()).await).await;
    let (again, same, same_expiry) =
        link_of(try_hold(&p.holds_url(), "r1/0", &apples()).await).await;

    assert_eq!((first, again), (201, 200));
    assert_eq!(same, link);
    assert_eq!(same_expiry, expires);
    assert_eq!(shelf.counts.reserves(), 1);
    assert!(link.starts_with(&format!("{}/holds/", p.url)), "{link}");
    p.stop().await;
}

#[tokio::test]
async fn kit_the_same_key_with_another_body_is_422_and_reserves_nothing() {
    let shelf = Shelf::default();
    let p = Served::start(Participant::builder(shelf.clone()).start().unwrap()).await;
    try_hold(&p.holds_url(), "r1/0", &apples()).await;

    let other = try_hold(
        &p.holds_url(),
        "r1/0",
        &json!({"sku": "pear", "quantity": 2}),
    )
    .await;

    assert_eq!(other.status(), 422);
    assert_eq!(other.headers()["content-type"], "application/problem+json");
    let problem: Value = other.json().await.unwrap();
    assert_eq!(problem["field"], "Idempotency-Key");
    assert_eq!(shelf.counts.reserves(), 1);
    assert_eq!(p.participant.holds().await.len(), 1);
    p.stop().await;
}

#[tokio::test]
async fn kit_a_try_still_in_progress_when_its_repeat_arrives_reserves_once() {
    let gate = Arc::new(Semaphore::new(0));
    let shelf = Shelf {
        gate: Some(gate.clone()),
        ..Shelf::default()
    };
    let p = Served::start(Participant::builder(shelf.clone()).start().unwrap()).await;

    let url = p.holds_url();
    let first = tokio::spawn(async move { link_of(try_hold(&url, "r1/0", &apples()).await).await });
    eventually("the first try reaches reserve", || async {
        (shelf.counts.reserves() == 1).then_some(())
    })
    .await;
    let url = p.holds_url();
    let repeat =
        tokio::spawn(async move { link_of(try_hold(&url, "r1/0", &apples()).await).await });
    eventually("the repeat has arrived", || async {
        (p.arrivals.load(Ordering::SeqCst) == 2).then_some(())
    })
    .await;
    gate.add_permits(10);

    let (first_status, first_link, _) = first.await.unwrap();
    let (repeat_status, repeat_link, _) = repeat.await.unwrap();
    assert_eq!((first_status, repeat_status), (201, 200));
    assert_eq!(first_link, repeat_link);
    assert_eq!(shelf.counts.reserves(), 1);
    p.stop().await;
}

#[tokio::test]
async fn kit_holds_expire_by_themselves_and_are_released_exactly_once() {
    let shelf = Shelf::default();
    let p = Served::start(
        Participant::builder(shelf.clone())
            .hold_ttl(Duration::from_millis(300))
            .start()
            .unwrap(),
    )
    .await;
    let (_, link, expires) = link_of(try_hold(&p.holds_url(), "r1/0", &apples()).await).await;

    eventually("the hold is released", || async {
        (shelf.counts.releases() == 1).then_some(())
    })
    .await;
    assert!(Utc::now() >= expires);
    assert_eq!(state(&link).await, "expired");

    assert_eq!(put(&link).await, 404, "a confirm after expiry");
    assert_eq!(delete(&link).await, 204, "a cancel after expiry");
    assert_eq!(state(&link).await, "expired");
    assert_eq!(shelf.counts.releases(), 1);
    assert_eq!(shelf.counts.confirms(), 0);
    p.stop().await;
}

#[tokio::test]
async fn kit_confirm_is_idempotent_and_after_cancel_is_404_changing_nothing() {
    let shelf = Shelf::default();
    let p = Served::start(Participant::builder(shelf.clone()).start().unwrap()).await;
    let (kept, dropped) = two_holds(&p).await;

    assert_eq!(put(&kept).await, 204);
    assert_eq!(put(&kept).await, 204, "a repeated confirm");
    assert_eq!(delete(&dropped).await, 204);
    assert_eq!(put(&dropped).await, 404, "a confirm after cancel");
    assert_eq!(put(&format!("{}/nothing", p.holds_url())).await, 404);

    assert_eq!(state(&kept).await, "confirmed");
    assert_eq!(state(&dropped).await, "cancelled");
    assert_eq!(shelf.counts.confirms(), 1);
    assert_eq!(shelf.counts.releases(), 1);
    p.stop().await;
}

#[tokio::test]
async fn kit_cancel_is_idempotent_and_after_confirm_is_409_changing_nothing() {
    let shelf = Shelf::default();
    let p = Served::start(Participant::builder(shelf.clone()).start().unwrap()).await;
    let (kept, dropped) = two_holds(&p).await;

    assert_eq!(delete(&dropped).await, 204);
    assert_eq!(delete(&dropped).await, 204, "a repeated cancel");
    assert_eq!(put(&kept).await, 204);
    assert_eq!(delete(&kept).await, 409, "a cancel after confirm");
    assert_eq!(delete(&format!("{}/nothing", p.holds_url())).await, 404);

    assert_eq!(state(&kept).await, "confirmed");
    assert_eq!(shelf.counts.releases(), 1);
    assert_eq!(shelf.counts.confirms(), 1);
    p.stop().await;
}

#[tokio::test]
async fn kit_a_confirm_and_a_cancel_racing_on_one_hold_have_exactly_one_winner() {
    let shelf = Shelf::default();
    let p = Served::start(Participant::builder(shelf.clone()).start().unwrap()).await;
    const HOLDS: usize = 50;
    let mut links = Vec::new();
    for n in 0..HOLDS {
        links.push(
            link_of(try_hold(&p.holds_url(), &format!("r{n}/0"), &apples()).await)
                .await
                .1,
        );
    }

    let races = links.iter().map(|link| async move {
        let (confirm, cancel) = tokio::join!(put(link), delete(link));
        (confirm, cancel, state(link).await)
    });
    let outcomes = futures_util::future::join_all(races).await;

    let mut confirmed = 0;
    for (confirm, cancel, state) in outcomes {
        match (confirm, cancel) {
            (204, 409) => {
                assert_eq!(state, "confirmed");
                confirmed += 1;
            }
            (404, 204) => assert_eq!(state, "cancelled"),
            other => panic!("a race answered {other:?}: both or neither won"),
        }
    }
    assert_eq!(shelf.counts.confirms(), confirmed);
    assert_eq!(shelf.counts.releases(), HOLDS - confirmed);
    p.stop().await;
}

#[tokio::test]
async fn kit_a_hold_never_outlives_the_deadline_by_more_than_the_margin() {
    let shelf = Shelf::default();
    let p = Served::start(
        Participant::builder(shelf.clone())
            .hold_ttl(Duration::from_secs(600))
            .deadline_margin(Duration::from_secs(2))
            .start()
            .unwrap(),
    )
    .await;
    let deadline = Utc::now() + TimeDelta::seconds(30);

    let response = client()
        .post(p.holds_url())
        .header("Idempotency-Key", "r1/0")
        .header(
            "TCC-Deadline",
            deadline.to_rfc3339_opts(SecondsFormat::Millis, true),
        )
        .json(&apples())
        .send()
        .await
        .unwrap();
    let (_, _, expires) = link_of(response).await;
    let passed = client()
        .post(p.holds_url())
        .header("Idempotency-Key", "r2/0")
        .header(
            "TCC-Deadline",
            (Utc::now() - TimeDelta::seconds(3)).to_rfc3339(),
        )
        .json(&apples())
        .send()
        .await
        .unwrap();

    let capped = deadline.with_timezone(&Utc) + TimeDelta::seconds(2);
    assert!(
        (expires - capped).num_milliseconds().abs() <= 1,
        "expires {expires}, deadline + margin {capped}"
    );
    assert_eq!(passed.status(), 409, "a try past its deadline and margin");
    assert_eq!(shelf.counts.reserves(), 1);
    p.stop().await;
}

#[tokio::test]
async fn kit_a_try_that_does_not_parse_is_422_naming_the_field_and_reserves_nothing() {
    let shelf = Shelf::default();
    let p = Served::start(Participant::builder(shelf.clone()).start().unwrap()).await;

    let bad = try_hold(
        &p.holds_url(),
        "r1/0",
        &json!({"sku": "apple", "quantity": "two"}),
    )
    .await;
    let no_key = client()
        .post(p.holds_url())
        .json(&apples())
        .send()
        .await
        .unwrap();
    let refused = try_hold(
        &p.holds_url(),
        "r2/0",
        &json!({"sku": "unobtainium", "quantity": 1}),
    )
    .await;

    assert_eq!(bad.status(), 422);
    let problem: Value = bad.json().await.unwrap();
    assert_eq!(problem["field"], "$.quantity", "{problem}");
    assert_eq!(no_key.status(), 400);
    assert_eq!(refused.status(), 409);
    let problem: Value = refused.json().await.unwrap();
    assert_eq!(problem["detail"], "out of unobtainium");
    assert!(p.participant.holds().await.is_empty());
    p.stop().await;
}

#[tokio::test]
async fn kit_holds_survive_a_restart_on_sled_their_expiry_still_counting() {
    let dir = tempfile::tempdir().unwrap();
    let shelf = Shelf::default();
    let start = |shelf: Shelf| {
        Participant::builder(shelf)
            .hold_ttl(Duration::from_secs(3))
            .store(SledStore::open(dir.path()).unwrap())
            .start()
            .unwrap()
    };
    let p = Served::start(start(shelf.clone())).await;
    let (_, kept, _) = link_of(try_hold(&p.holds_url(), "r1/0", &apples()).await).await;
    let (_, held, expires) = link_of(try_hold(&p.holds_url(), "r2/0", &apples()).await).await;
    assert_eq!(put(&kept).await, 204);
    let kept_id = kept.rsplit('/').next().unwrap().to_owned();
    let held_id = held.rsplit('/').next().unwrap().to_owned();
    p.stop().await;

    let after = Shelf::default();
    let p = Served::start(start(after.clone())).await;
    let kept = format!("{}/{kept_id}", p.holds_url());
    let held = format!("{}/{held_id}", p.holds_url());
    assert_eq!(state(&kept).await, "confirmed");
    assert_eq!(
        put(&kept).await,
        204,
        "a repeated confirm after the restart"
    );
    assert_eq!(
        delete(&kept).await,
        409,
        "a cancel of a confirmed hold after the restart"
    );
    let (again, _, same_expiry) = link_of(try_hold(&p.holds_url(), "r2/0", &apples()).await).await;
    assert_eq!(
        (again, same_expiry),
        (200, expires),
        "the repeated try finds the held hold"
    );
    assert_eq!(after.counts.reserves(), 0);

    eventually("the held hold expires after the restart", || async {
        (after.counts.releases() == 1).then_some(())
    })
    .await;
    assert!(Utc::now() >= expires);
    assert_eq!(state(&held).await, "expired");
    assert_eq!(after.counts.confirms(), 0);
    p.stop().await;
}
