//! What an operator relies on beyond one reservation: totals that follow the filters, the
//! stuck ones, and "retry now" for every participant waiting on a host once it is fixed.

use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::{eventually, is_settled, spawn_app, spawn_app_with, Participant, Reply};

#[tokio::test]
async fn counts_per_state_follow_every_filter_but_the_state() {
    let app = spawn_app().await;
    let p = Participant::start().await;
    let tag = format!("batch-{}", uuid::Uuid::new_v4());
    let mut ids = Vec::new();
    for n in 0..3 {
        let body = json!({"participants": [p.link(n)], "metadata": {"batch": tag}});
        ids.push(app.create(&body).await);
    }
    app.create(&json!({"participants": [p.link(9)]})).await;
    assert_eq!(
        app.post(&format!("/reservations/{}/cancel", ids[0]))
            .await
            .status(),
        202
    );
    app.wait_for(&ids[0], is_settled).await;

    for state in ["", "&state=reserved"] {
        let page = app
            .get_json(&format!("/reservations?q={tag}&counts=true{state}"))
            .await;
        assert_eq!(
            page["counts"]["counts"],
            json!({"reserved": 2, "cancelled": 1}),
            "{state}: {page}"
        );
        assert_eq!(page["counts"]["complete"], true);
    }
    let page = app.get_json(&format!("/reservations?q={tag}")).await;
    assert!(page.get("counts").is_none(), "only when asked: {page}");
    app.stop().await;
}

#[tokio::test]
async fn the_stuck_list_shows_what_keeps_failing_past_stuck_after_and_nothing_else() {
    let app = spawn_app_with(|c| c.stuck_after = Duration::from_millis(100)).await;
    let failing = Participant::start().await;
    failing.script("confirm", [Reply::RetryAfter(503, 3600)]);
    let healthy = Participant::start().await;
    let stuck = app
        .create(&json!({"participants": [failing.link(1)]}))
        .await;
    let undecided = app
        .create(&json!({"participants": [healthy.link(2)]}))
        .await;
    let confirmed = app
        .create(&json!({"participants": [healthy.link(3)]}))
        .await;
    for id in [&stuck, &confirmed] {
        app.post(&format!("/reservations/{id}/confirm")).await;
    }
    app.wait_for(&confirmed, is_settled).await;
    let listed = eventually("the failing one listed as stuck", || async {
        let page = app.get_json("/reservations?stuck=true").await;
        let items = page["items"].as_array().cloned().unwrap_or_default();
        (!items.is_empty()).then_some(items)
    })
    .await;
    let ids: Vec<&str> = listed.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(
        ids,
        [stuck.as_str()],
        "not {undecided} (undecided) nor {confirmed} (done)"
    );
    assert_eq!(listed[0]["state"], "confirming");
    assert!(listed[0]["participants"][0]["last_error"]
        .as_str()
        .unwrap()
        .contains("503"));
    app.stop().await;
}

#[tokio::test]
async fn retry_now_on_a_host_calls_every_participant_waiting_there_and_only_those() {
    let app = spawn_app().await;
    let fixed = Participant::start().await;
    let elsewhere = Participant::start().await;
    fixed.script(
        "confirm",
        [Reply::RetryAfter(503, 3600), Reply::RetryAfter(503, 3600)],
    );
    elsewhere.script("confirm", [Reply::RetryAfter(503, 3600)]);
    let on_fixed = [
        app.create(&json!({"participants": [fixed.link(1)]})).await,
        app.create(&json!({"participants": [fixed.link(2)]})).await,
    ];
    let on_elsewhere = app
        .create(&json!({"participants": [elsewhere.link(3)]}))
        .await;
    for id in on_fixed.iter().chain([&on_elsewhere]) {
        app.post(&format!("/reservations/{id}/confirm")).await;
        app.wait_for(id, |_, body| {
            !body["participants"][0]["next_attempt_at"].is_null()
        })
        .await;
    }
    let host = fixed.base.trim_start_matches("http://").to_owned();
    let answer = app
        .http
        .post(app.url(&format!("/participants/retry?participant_host={host}")))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let body: Value = answer.json().await.unwrap();
    let mut retried: Vec<&str> = body["retried"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["reservation_id"].as_str().unwrap())
        .collect();
    retried.sort_unstable();
    let mut expected: Vec<&str> = on_fixed.iter().map(String::as_str).collect();
    expected.sort_unstable();
    assert_eq!(retried, expected);
    let mut names: Vec<&str> = body["retried"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["link-1", "link-2"]);
    for id in &on_fixed {
        let (status, _) = app.wait_for(id, is_settled).await;
        assert_eq!(status, 303);
        let history = app.get_json(&format!("/reservations/{id}/events")).await;
        assert!(history["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "acted" && e["action"] == "retry_now"));
    }
    assert_eq!(elsewhere.count("PUT"), 1, "the other host still waits");
    let (_, other) = app.wait_for(&on_elsewhere, |_, _| true).await;
    assert_eq!(other["state"], "confirming");

    let missing = app
        .http
        .post(app.url("/participants/retry"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 400);
    app.stop().await;
}
