//! `Prefer: wait=N`: the answer is held until the work settles, then given as GET would.

use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::{spawn_app, spawn_app_with, Participant, Reply, TestApp};

async fn post_waiting(
    app: &TestApp,
    path: &str,
    body: Option<&Value>,
    prefer: &str,
) -> reqwest::Response {
    let request = app.http.post(app.url(path)).header("Prefer", prefer);
    let request = match body {
        Some(body) => request.json(body),
        None => request,
    };
    request.send().await.unwrap()
}

#[tokio::test]
async fn create_with_prefer_wait_answers_200_once_every_try_answered() {
    let app = spawn_app().await;
    let p = Participant::start().await;
    p.script("try", [Reply::Slow(Duration::from_millis(300))]);

    let response = post_waiting(
        &app,
        "/reservations",
        Some(&json!({"participants": [p.try_("stock")]})),
        "wait=10",
    )
    .await;

    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["preference-applied"], "wait=10");
    assert!(response.headers()["location"]
        .to_str()
        .unwrap()
        .starts_with("/reservations/"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["state"], "reserved");
    app.stop().await;
}

#[tokio::test]
async fn create_with_prefer_wait_answers_410_when_a_try_fails() {
    let app = spawn_app().await;
    let (ok, refusing) = (Participant::start().await, Participant::start().await);
    refusing.script("try", [Reply::Status(409)]);
    let body = json!({"participants": [ok.try_("a"), refusing.try_("b")]});

    let response = post_waiting(&app, "/reservations", Some(&body), "respond-async, wait=10").await;

    assert_eq!(response.status(), 410);
    assert_eq!(response.headers()["preference-applied"], "wait=10");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["reason"], "try_failed");
    assert_eq!(ok.count("DELETE"), 1, "cancelled before the answer");
    app.stop().await;
}

#[tokio::test]
async fn confirm_with_prefer_wait_answers_303_once_every_participant_confirmed() {
    let app = spawn_app().await;
    let p = Participant::start().await;
    p.script(
        "confirm",
        [Reply::Status(503), Reply::Slow(Duration::from_millis(200))],
    );
    let id = app.create(&json!({"participants": [p.link(1)]})).await;

    let response = post_waiting(
        &app,
        &format!("/reservations/{id}/confirm"),
        None,
        "wait=10",
    )
    .await;

    assert_eq!(response.status(), 303);
    assert_eq!(response.headers()["preference-applied"], "wait=10");
    assert_eq!(
        response.headers()["location"],
        format!("/transactions/{id}").as_str()
    );
    assert_eq!(p.count("PUT"), 2);
    app.stop().await;
}

#[tokio::test]
async fn cancel_with_prefer_wait_answers_410_once_every_participant_is_cancelled() {
    let app = spawn_app().await;
    let p = Participant::start().await;
    p.script("cancel", [Reply::Status(500)]);
    let id = app.create(&json!({"participants": [p.link(1)]})).await;

    let response = app
        .http
        .delete(app.url(&format!("/reservations/{id}")))
        .header("Prefer", "wait=10")
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 410);
    assert_eq!(response.headers()["preference-applied"], "wait=10");
    assert_eq!(p.count("DELETE"), 2);
    app.stop().await;
}

#[tokio::test]
async fn a_wait_that_runs_out_answers_202_without_preference_applied() {
    let app = spawn_app().await;
    let p = Participant::start().await;
    p.set(|x| x.confirm_reply = Reply::Status(503));
    let id = app.create(&json!({"participants": [p.link(1)]})).await;

    let response = post_waiting(&app, &format!("/reservations/{id}/confirm"), None, "wait=1").await;

    assert_eq!(response.status(), 202);
    assert!(!response.headers().contains_key("preference-applied"));
    app.stop().await;
}

#[tokio::test]
async fn a_wait_longer_than_max_wait_is_cut_to_max_wait() {
    let app = spawn_app_with(|c| c.limits.max_wait = Duration::from_millis(500)).await;
    let p = Participant::start().await;
    p.set(|x| x.confirm_reply = Reply::Status(503));
    let id = app.create(&json!({"participants": [p.link(1)]})).await;

    // The test client gives up after 30 s: an uncapped wait of 600 s would fail here.
    let response = post_waiting(
        &app,
        &format!("/reservations/{id}/confirm"),
        None,
        "wait=600",
    )
    .await;

    assert_eq!(response.status(), 202);
    app.stop().await;
}
