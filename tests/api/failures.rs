//! The participant answer matrix: every answer to try, confirm and cancel ends in a known,
//! visible state, and each participant receives exactly the calls it should.

use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::{in_secs, is_settled, spawn_app, spawn_app_with, Participant, Reply, TestApp};

// ---- confirm -----------------------------------------------------------------------------

/// Confirms a reservation over `p` and a well-behaved second participant; returns the
/// terminal answer and the well-behaved participant.
async fn confirm_with(app: &TestApp, p: &Participant) -> ((u16, Value), Participant) {
    let other = Participant::start().await;
    let id = app
        .create(&json!({"participants": [p.link(1), other.link(1)]}))
        .await;
    let confirm = app.post(&format!("/reservations/{id}/confirm")).await;
    assert_eq!(confirm.status(), 202);
    (app.wait_for(&id, is_settled).await, other)
}

async fn confirm_answer_ends_in(
    reply: Reply,
    puts: usize,
    expected_state: &str,
    participant_state: &str,
) {
    let app = spawn_app().await;
    let p = Participant::start().await;
    p.script("confirm", [reply.clone()]);

    let ((status, body), other) = confirm_with(&app, &p).await;

    let state = if status == 303 {
        "confirmed"
    } else {
        body["state"].as_str().unwrap()
    };
    assert_eq!(state, expected_state, "{reply:?}: {status} {body}");
    assert_eq!(p.count("PUT"), puts, "{reply:?}: {:?}", p.summary());
    assert_eq!(p.count("DELETE"), 0, "{reply:?}: {:?}", p.summary());
    assert_eq!(other.count("DELETE"), 0);
    if status != 303 {
        assert_eq!(
            body["participants"][0]["state"], participant_state,
            "{body}"
        );
        assert!(body["participants"][0]["last_error"].is_string(), "{body}");
    }
    app.stop().await;
}

#[tokio::test]
async fn confirm_answered_200_is_confirmed() {
    confirm_answer_ends_in(Reply::Status(200), 1, "confirmed", "confirmed").await;
}

#[tokio::test]
async fn confirm_answered_204_is_confirmed() {
    confirm_answer_ends_in(Reply::Ok, 1, "confirmed", "confirmed").await;
}

#[tokio::test]
async fn confirm_answered_202_is_asked_again_until_confirmed() {
    confirm_answer_ends_in(Reply::Status(202), 2, "confirmed", "confirmed").await;
}

#[tokio::test]
async fn confirm_answered_404_while_others_confirmed_is_a_conflict() {
    confirm_answer_ends_in(Reply::Status(404), 1, "conflict", "gone").await;
}

#[tokio::test]
async fn confirm_answered_410_while_others_confirmed_is_a_conflict() {
    confirm_answer_ends_in(Reply::Status(410), 1, "conflict", "gone").await;
}

#[tokio::test]
async fn confirm_answered_409_is_refused_and_a_conflict() {
    confirm_answer_ends_in(Reply::Status(409), 1, "conflict", "refused").await;
}

#[tokio::test]
async fn confirm_answered_another_4xx_is_refused_and_a_conflict() {
    confirm_answer_ends_in(Reply::Status(400), 1, "conflict", "refused").await;
}

#[tokio::test]
async fn confirm_answered_5xx_is_retried_until_confirmed() {
    confirm_answer_ends_in(Reply::Status(503), 2, "confirmed", "confirmed").await;
}

#[tokio::test]
async fn confirm_answered_408_is_retried_until_confirmed() {
    confirm_answer_ends_in(Reply::Status(408), 2, "confirmed", "confirmed").await;
}

#[tokio::test]
async fn confirm_answered_429_without_retry_after_is_retried() {
    confirm_answer_ends_in(Reply::Status(429), 2, "confirmed", "confirmed").await;
}

#[tokio::test]
async fn confirm_on_a_reset_connection_is_retried() {
    confirm_answer_ends_in(Reply::Close, 2, "confirmed", "confirmed").await;
}

#[tokio::test]
async fn confirm_answered_with_a_redirect_is_not_followed_but_retried() {
    confirm_answer_ends_in(Reply::Status(307), 2, "confirmed", "confirmed").await;
}

#[tokio::test]
async fn confirm_answered_201_is_not_the_contract_and_is_retried() {
    confirm_answer_ends_in(Reply::Status(201), 2, "confirmed", "confirmed").await;
}

#[tokio::test]
async fn confirm_answered_202_then_410_is_gone() {
    let app = spawn_app().await;
    let p = Participant::start().await;
    p.script("confirm", [Reply::Status(202), Reply::Status(410)]);
    let ((_, body), _) = confirm_with(&app, &p).await;
    assert_eq!(body["state"], "conflict");
    assert_eq!(body["participants"][0]["state"], "gone");
    assert_eq!(p.count("PUT"), 2);
    app.stop().await;
}

#[tokio::test]
async fn confirm_answered_429_with_retry_after_waits_that_long() {
    let app = spawn_app().await;
    let p = Participant::start().await;
    p.script("confirm", [Reply::RetryAfter(429, 1)]);

    let ((status, _), _) = confirm_with(&app, &p).await;

    assert_eq!(status, 303);
    let times = p.times("PUT");
    assert_eq!(times.len(), 2);
    let waited = times[1] - times[0];
    assert!(
        waited >= Duration::from_millis(900),
        "waited only {waited:?}"
    );
    app.stop().await;
}

/// Drivers make their first round of calls a bounded number at a time
/// (`PHASES_AT_ONCE`), and a driver waiting to retry gives its place back: with more
/// reservations than places, all waiting an hour on a participant that failed, another
/// reservation's confirm still goes through at once (without the release it waits an hour).
#[tokio::test]
async fn reservations_waiting_to_retry_do_not_hold_up_other_confirms() {
    let app = spawn_app().await;
    let failing = Participant::start().await;
    let waiting = tcc_coordinator::PHASES_AT_ONCE + 1;
    failing.script(
        "confirm",
        std::iter::repeat_n(Reply::RetryAfter(503, 3600), waiting),
    );
    let numbers: Vec<u32> = (0..u32::try_from(waiting).unwrap()).collect();
    for chunk in numbers.chunks(32) {
        futures_util::future::join_all(chunk.iter().map(|&n| {
            let (app, failing) = (&app, &failing);
            async move {
                let id = app
                    .create(&json!({"participants": [failing.link(n)]}))
                    .await;
                let confirm = app.post(&format!("/reservations/{id}/confirm")).await;
                assert_eq!(confirm.status(), 202);
            }
        }))
        .await;
    }
    failing
        .wait_until("every confirm answered 503 once", |p| {
            p.count("PUT") >= waiting
        })
        .await;

    let healthy = Participant::start().await;
    let ((status, _), other) = confirm_with(&app, &healthy).await;
    assert_eq!(status, 303);
    assert_eq!(healthy.count("PUT"), 1);
    assert_eq!(other.count("PUT"), 1);
    assert_eq!(
        failing.count("PUT"),
        waiting,
        "{:?}",
        failing.summary().len()
    );
    app.stop().await;
}

/// An operator fixed a participant that asked to be called again in an hour: "retry now"
/// calls it at once (the test would wait an hour without it), and only while it waits.
#[tokio::test]
async fn retry_now_calls_a_participant_waiting_in_backoff_at_once() {
    let app = spawn_app().await;
    let p = Participant::start().await;
    p.script("confirm", [Reply::RetryAfter(503, 3600)]);
    let id = app.create(&json!({"participants": [p.link(1)]})).await;
    let undecided = app
        .post(&format!("/reservations/{id}/participants/0/retry"))
        .await;
    assert_eq!(
        undecided.status(),
        409,
        "not being called before a decision"
    );
    assert_eq!(
        app.post(&format!("/reservations/{id}/confirm"))
            .await
            .status(),
        202
    );
    app.wait_for(&id, |_, body| {
        !body["participants"][0]["next_attempt_at"].is_null()
    })
    .await;

    let retried = app
        .post(&format!("/reservations/{id}/participants/0/retry"))
        .await;
    assert_eq!(retried.status(), 202);
    assert_eq!(
        retried.headers()["location"].to_str().unwrap(),
        format!("/reservations/{id}")
    );
    let (status, _) = app.wait_for(&id, is_settled).await;
    assert_eq!(status, 303);
    assert_eq!(p.count("PUT"), 2, "{:?}", p.summary());

    let settled = app
        .post(&format!("/reservations/{id}/participants/0/retry"))
        .await;
    assert_eq!(settled.status(), 409);
    let problem: Value = settled.json().await.unwrap();
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("participant 0"),
        "{problem}"
    );
    let unknown = app
        .post(&format!("/reservations/{id}/participants/7/retry"))
        .await;
    assert_eq!(unknown.status(), 404);
    let not_an_index = app
        .post(&format!("/reservations/{id}/participants/first/retry"))
        .await;
    assert_eq!(not_an_index.status(), 404);
    let problem: Value = not_an_index.json().await.unwrap();
    assert!(
        problem["detail"].as_str().unwrap().contains("`first`"),
        "{problem}"
    );
    app.stop().await;
}

#[tokio::test]
async fn confirm_slower_than_the_call_timeout_is_retried() {
    let app = spawn_app_with(|c| c.limits.participant_timeout = Duration::from_millis(300)).await;
    let p = Participant::start().await;
    p.script("confirm", [Reply::Slow(Duration::from_secs(2))]);

    let ((status, _), _) = confirm_with(&app, &p).await;

    assert_eq!(status, 303);
    assert_eq!(p.count("PUT"), 2, "{:?}", p.summary());
    app.stop().await;
}

#[tokio::test]
async fn confirm_to_a_refused_connection_is_retried_until_the_participant_is_back() {
    let app = spawn_app().await;
    let p = Participant::start().await;
    let id = app.create(&json!({"participants": [p.link(1)]})).await;
    p.stop();

    app.post(&format!("/reservations/{id}/confirm")).await;
    let (_, body) = app
        .wait_for(&id, |_, b| {
            b["participants"][0]["attempts"].as_u64() >= Some(2)
        })
        .await;
    assert_eq!(body["state"], "confirming");
    assert_eq!(body["participants"][0]["last_error"], "cannot connect");
    p.restart().await;

    app.wait_for(&id, |s, _| s == 303).await;
    assert_eq!(p.paths("PUT"), ["/holds/1"]);
    app.stop().await;
}

#[tokio::test]
async fn every_participant_answering_gone_ends_cancelled_participants_expired() {
    let app = spawn_app().await;
    let (a, b) = (Participant::start().await, Participant::start().await);
    a.set(|x| x.confirm_reply = Reply::Status(404));
    b.set(|x| x.confirm_reply = Reply::Status(410));
    let id = app
        .create(&json!({"participants": [a.link(1), b.link(1)]}))
        .await;

    app.post(&format!("/reservations/{id}/confirm")).await;

    let (status, body) = app.wait_for(&id, is_settled).await;
    assert_eq!(status, 410, "{body}");
    assert_eq!(body["reason"], "participants_expired");
    assert_eq!(a.count("DELETE") + b.count("DELETE"), 0);
    app.stop().await;
}

#[tokio::test]
async fn a_participant_that_keeps_failing_stays_visible_and_is_never_given_up() {
    let app = spawn_app().await;
    let p = Participant::start().await;
    p.set(|x| x.confirm_reply = Reply::Status(503));
    let id = app.create(&json!({"participants": [p.link(1)]})).await;

    app.post(&format!("/reservations/{id}/confirm")).await;

    let (status, body) = app
        .wait_for(&id, |_, b| {
            b["participants"][0]["attempts"].as_u64() >= Some(5)
        })
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["state"], "confirming");
    let participant = &body["participants"][0];
    assert_eq!(participant["last_error"], "503 Service Unavailable");
    assert!(participant["next_attempt_at"].is_string(), "{body}");
    let activity = body["activity"].as_str().unwrap();
    assert!(
        activity.contains("after 503 Service Unavailable"),
        "{activity}"
    );
    p.set(|x| x.confirm_reply = Reply::Ok);
    app.wait_for(&id, |s, _| s == 303).await;
    assert_eq!(p.count("DELETE"), 0);
    app.stop().await;
}

#[tokio::test]
async fn retries_back_off_exponentially_up_to_the_cap() {
    let app = spawn_app_with(|c| c.retry.max_interval = Duration::from_millis(800)).await;
    let p = Participant::start().await;
    p.script("confirm", std::iter::repeat_n(Reply::Status(503), 7));

    let ((status, _), _) = confirm_with(&app, &p).await;

    assert_eq!(status, 303);
    let times = p.times("PUT");
    assert_eq!(times.len(), 8);
    let gaps: Vec<_> = times.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        gaps[0] < Duration::from_millis(400),
        "the first retry is quick: {gaps:?}"
    );
    assert!(gaps[5] > gaps[0], "the spacing grows: {gaps:?}");
    // The cap with its jitter, plus room for a busy test machine.
    assert!(
        gaps.iter()
            .all(|g| *g < Duration::from_millis(800 * 3 / 2 + 1500)),
        "the spacing is capped: {gaps:?}"
    );
    app.stop().await;
}

#[tokio::test]
async fn forget_ends_a_conflict_and_only_a_conflict() {
    let app = spawn_app().await;
    let p = Participant::start().await;
    p.set(|x| x.confirm_reply = Reply::Status(409));
    let ((_, body), _) = confirm_with(&app, &p).await;
    let id = body["id"].as_str().unwrap().to_owned();
    assert_eq!(body["state"], "conflict");
    let before = p.calls().len();

    let reserved = app.create(&json!({"participants": []})).await;
    assert_eq!(
        app.post(&format!("/reservations/{reserved}/forget"))
            .await
            .status(),
        409
    );

    assert_eq!(
        app.post(&format!("/reservations/{id}/forget"))
            .await
            .status(),
        204
    );
    assert_eq!(
        app.post(&format!("/reservations/{id}/forget"))
            .await
            .status(),
        204
    );
    let gone = app.get(&format!("/reservations/{id}")).await;
    assert_eq!(gone.status(), 410);
    let gone: Value = gone.json().await.unwrap();
    assert_eq!(gone["state"], "forgotten");
    assert_eq!(
        app.post(&format!("/reservations/{id}/confirm"))
            .await
            .status(),
        410
    );
    assert_eq!(p.calls().len(), before, "forgetting calls no participant");
    app.stop().await;
}

// ---- cancel ------------------------------------------------------------------------------

async fn cancel_answer_ends_in(reply: Reply, deletes: usize, participant_state: &str) {
    let app = spawn_app().await;
    let p = Participant::start().await;
    p.script("cancel", [reply.clone()]);
    let id = app.create(&json!({"participants": [p.link(1)]})).await;

    app.post(&format!("/reservations/{id}/cancel")).await;

    let (status, body) = app.wait_for(&id, is_settled).await;
    assert_eq!(status, 410, "{reply:?}: {body}");
    assert_eq!(
        body["participants"][0]["state"], participant_state,
        "{reply:?}: {body}"
    );
    assert_eq!(p.count("DELETE"), deletes, "{reply:?}: {:?}", p.summary());
    assert_eq!(p.count("PUT"), 0);
    app.stop().await;
}

#[tokio::test]
async fn cancel_answered_200_is_cancelled() {
    cancel_answer_ends_in(Reply::Status(200), 1, "cancelled").await;
}

#[tokio::test]
async fn cancel_answered_204_is_cancelled() {
    cancel_answer_ends_in(Reply::Ok, 1, "cancelled").await;
}

#[tokio::test]
async fn cancel_answered_404_is_cancelled() {
    cancel_answer_ends_in(Reply::Status(404), 1, "cancelled").await;
}

#[tokio::test]
async fn cancel_answered_410_is_cancelled() {
    cancel_answer_ends_in(Reply::Status(410), 1, "cancelled").await;
}

#[tokio::test]
async fn cancel_answered_405_leaves_the_link_to_expire_on_its_own() {
    cancel_answer_ends_in(Reply::Status(405), 1, "cancelled").await;
}

#[tokio::test]
async fn cancel_answered_202_is_asked_again() {
    cancel_answer_ends_in(Reply::Status(202), 2, "cancelled").await;
}

#[tokio::test]
async fn cancel_answered_5xx_is_retried() {
    cancel_answer_ends_in(Reply::Status(500), 2, "cancelled").await;
}

#[tokio::test]
async fn cancel_answered_409_is_retried() {
    cancel_answer_ends_in(Reply::Status(409), 2, "cancelled").await;
}

#[tokio::test]
async fn cancel_answered_429_with_retry_after_is_retried() {
    cancel_answer_ends_in(Reply::RetryAfter(429, 1), 2, "cancelled").await;
}

#[tokio::test]
async fn cancel_on_a_reset_connection_is_retried() {
    cancel_answer_ends_in(Reply::Close, 2, "cancelled").await;
}

#[tokio::test]
async fn cancel_slower_than_the_call_timeout_is_retried() {
    let app = spawn_app_with(|c| c.limits.participant_timeout = Duration::from_millis(300)).await;
    let p = Participant::start().await;
    p.script("cancel", [Reply::Slow(Duration::from_secs(2))]);
    let id = app.create(&json!({"participants": [p.link(1)]})).await;
    app.post(&format!("/reservations/{id}/cancel")).await;
    app.wait_for(&id, |s, _| s == 410).await;
    assert_eq!(p.count("DELETE"), 2);
    app.stop().await;
}

#[tokio::test]
async fn cancel_retries_stop_once_the_link_has_expired_on_its_own() {
    let app = spawn_app_with(|c| c.limits.participant_timeout = Duration::from_millis(300)).await;
    let p = Participant::start().await;
    p.set(|x| x.cancel_reply = Reply::Status(503));
    let id = app
        .create(&json!({"participants": [p.link_expiring(1, &in_secs(2))]}))
        .await;

    app.post(&format!("/reservations/{id}/cancel")).await;

    let (_, body) = app.wait_for(&id, |s, _| s == 410).await;
    assert_eq!(body["participants"][0]["state"], "expired");
    assert_eq!(
        body["participants"][0]["last_error"],
        "503 Service Unavailable"
    );
    let deletes = p.count("DELETE");
    assert!(deletes >= 2, "{deletes}");
    // Given up: no retry is scheduled, and every DELETE sent is one the log recorded.
    assert!(
        body["participants"][0]["next_attempt_at"].is_null(),
        "{body}"
    );
    assert_eq!(
        body["participants"][0]["attempts"].as_u64(),
        Some(deletes as u64),
        "{body}"
    );
    app.stop().await;
    assert_eq!(p.count("DELETE"), deletes, "no DELETE after giving up");
}

// ---- try ---------------------------------------------------------------------------------

/// Creates a reservation whose only participant `p` is tried; returns its id.
async fn tried(app: &TestApp, p: &Participant) -> String {
    app.create(&json!({"timeout_ms": 10_000, "participants": [p.try_("stock")]}))
        .await
}

async fn try_answer_reserves_after(reply: Reply, posts: usize) {
    let app = spawn_app().await;
    let p = Participant::start().await;
    p.script("try", [reply.clone()]);

    let id = tried(&app, &p).await;

    let (_, body) = app.wait_for(&id, |_, b| b["state"] != "trying").await;
    assert_eq!(body["state"], "reserved", "{reply:?}: {body}");
    assert_eq!(p.count("POST"), posts, "{reply:?}: {:?}", p.summary());
    let keys: Vec<_> = p
        .calls()
        .iter()
        .map(|c| c.headers["idempotency-key"].to_str().unwrap().to_owned())
        .collect();
    assert!(keys.iter().all(|k| *k == format!("{id}/0")), "{keys:?}");
    app.stop().await;
}

#[tokio::test]
async fn a_try_answered_201_with_a_link_reserves() {
    try_answer_reserves_after(Reply::Ok, 1).await;
}

#[tokio::test]
async fn a_try_answered_200_with_the_link_in_the_body_reserves() {
    let app = spawn_app().await;
    let p = Participant::start().await;
    let uri = p.hold_uri(42);
    p.script(
        "try",
        [Reply::Body(
            200,
            json!({"uri": uri, "expires": in_secs(300)}).to_string(),
        )],
    );
    let id = tried(&app, &p).await;
    let (_, body) = app.wait_for(&id, |_, b| b["state"] != "trying").await;
    assert_eq!(body["state"], "reserved");
    assert_eq!(body["participants"][0]["uri"], uri);
    app.stop().await;
}

#[tokio::test]
async fn a_try_answered_202_is_asked_again_with_the_same_key() {
    try_answer_reserves_after(Reply::Status(202), 2).await;
}

#[tokio::test]
async fn a_try_answered_5xx_is_retried_with_the_same_key() {
    try_answer_reserves_after(Reply::Status(503), 2).await;
}

#[tokio::test]
async fn a_try_answered_408_is_retried_with_the_same_key() {
    try_answer_reserves_after(Reply::Status(408), 2).await;
}

#[tokio::test]
async fn a_try_answered_429_is_retried_with_the_same_key() {
    try_answer_reserves_after(Reply::RetryAfter(429, 1), 2).await;
}

#[tokio::test]
async fn a_try_on_a_reset_connection_is_retried_with_the_same_key() {
    try_answer_reserves_after(Reply::Close, 2).await;
}

#[tokio::test]
async fn a_try_answered_without_a_link_is_retried_with_the_same_key() {
    try_answer_reserves_after(Reply::Body(201, "held, trust me".into()), 2).await;
}

#[tokio::test]
async fn a_try_slower_than_the_call_timeout_is_retried_and_gets_the_same_link() {
    let app = spawn_app_with(|c| c.limits.participant_timeout = Duration::from_millis(300)).await;
    let p = Participant::start().await;
    p.script("try", [Reply::Slow(Duration::from_secs(1))]);
    let id = tried(&app, &p).await;
    let (_, body) = app.wait_for(&id, |_, b| b["state"] != "trying").await;
    assert_eq!(body["state"], "reserved");
    assert_eq!(body["participants"][0]["uri"], p.hold_uri(1));
    app.stop().await;
}

async fn try_answer_fails(code: u16) {
    let app = spawn_app().await;
    let p = Participant::start().await;
    p.script("try", [Reply::Status(code)]);
    let id = tried(&app, &p).await;
    let (status, body) = app.wait_for(&id, is_settled).await;
    assert_eq!(status, 410);
    assert_eq!(body["reason"], "try_failed");
    assert_eq!(body["participants"][0]["state"], "try_failed");
    assert_eq!(p.count("POST"), 1);
    app.stop().await;
}

#[tokio::test]
async fn a_try_answered_400_fails() {
    try_answer_fails(400).await;
}

#[tokio::test]
async fn a_try_answered_404_fails() {
    try_answer_fails(404).await;
}

#[tokio::test]
async fn a_try_answered_409_fails() {
    try_answer_fails(409).await;
}

#[tokio::test]
async fn a_refused_try_shows_the_participants_reason_and_its_call() {
    let app = spawn_app().await;
    let p = Participant::start().await;
    // What the participant kit answers to `Refusal::refused("seat 7C is taken")`.
    p.script(
        "try",
        [Reply::Body(
            409,
            r#"{"type":"refused","title":"Refused: nothing is held","status":409,"detail":"seat 7C is taken"}"#.into(),
        )],
    );
    let id = tried(&app, &p).await;
    let (status, body) = app.wait_for(&id, is_settled).await;
    assert_eq!(status, 410);
    let refused = &body["participants"][0];
    assert_eq!(refused["state"], "try_failed");
    assert_eq!(
        refused["last_error"],
        "try refused: 409 Conflict: seat 7C is taken"
    );
    assert_eq!(refused["attempts"], 1, "the try was one call: {body:#}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("(try_failed: stock: try refused: 409 Conflict: seat 7C is taken)"),
        "the 410 names who refused and why: {body:#}"
    );
    let history: Value = app.get_json(&format!("/reservations/{id}/events")).await;
    assert!(
        history["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["verb"] == "try"
                && e["result"]
                    .as_str()
                    .unwrap_or("")
                    .contains("seat 7C is taken")),
        "{history:#}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_refused_confirm_shows_the_first_line_of_a_text_reason_and_an_html_page_not_at_all() {
    let app = spawn_app().await;
    let (text, html) = (Participant::start().await, Participant::start().await);
    text.script(
        "confirm",
        [Reply::Body(409, "card expired\nsee the ledger".into())],
    );
    html.script(
        "confirm",
        [Reply::Body(409, "<html><body>409</body></html>".into())],
    );
    let id = app
        .create(&json!({"participants": [text.link(1), html.link(1)]}))
        .await;
    app.post(&format!("/reservations/{id}/confirm")).await;
    let (_, body) = app.wait_for(&id, is_settled).await;
    assert_eq!(body["state"], "conflict");
    let errors: Vec<&str> = body["participants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["last_error"].as_str().unwrap())
        .collect();
    assert!(
        errors[0].ends_with("409 Conflict: card expired"),
        "{errors:?}"
    );
    assert!(errors[1].ends_with("409 Conflict"), "{errors:?}");
    app.stop().await;
}

/// A failed call that is retried shows why as the participant said it (bounded), in
/// `last_error` and in the call's history entry, as a refusal does.
#[tokio::test]
async fn a_retried_confirm_shows_the_reason_in_the_participants_error_body() {
    let app = spawn_app().await;
    let p = Participant::start().await;
    p.script(
        "confirm",
        [Reply::Body(
            503,
            r#"{"title":"Service Unavailable","status":503,"detail":"the ledger database is down"}"#
                .into(),
        )],
    );
    let id = app.create(&json!({"participants": [p.link(1)]})).await;
    app.post(&format!("/reservations/{id}/confirm")).await;
    let (status, _) = app.wait_for(&id, is_settled).await;
    assert_eq!(status, 303, "retried, then confirmed");
    let history: Value = app.get_json(&format!("/reservations/{id}/events")).await;
    let failed: Vec<&str> = history["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["verb"] == "confirm" && !e["retry_at"].is_null())
        .map(|e| e["result"].as_str().unwrap())
        .collect();
    assert_eq!(
        failed,
        ["503 Service Unavailable: the ledger database is down"],
        "{history:#}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_try_to_a_refused_connection_is_retried_until_the_deadline_then_cancelled() {
    let app = spawn_app().await;
    let p = Participant::start().await;
    let other = Participant::start().await;
    p.stop();
    let id = app
        .create(&json!({"timeout_ms": 1000, "participants": [other.link(1), p.try_("down")]}))
        .await;

    let (_, body) = app.wait_for(&id, |s, _| s == 410).await;

    assert_eq!(body["reason"], "expired");
    assert_eq!(body["participants"][1]["state"], "abandoned");
    assert_eq!(
        body["participants"][1]["last_error"]
            .as_str()
            .unwrap()
            .split(';')
            .next(),
        Some("cannot connect")
    );
    assert_eq!(other.paths("DELETE"), ["/holds/1"]);
    app.stop().await;
}

#[tokio::test]
async fn a_try_whose_answer_is_lost_is_asked_again_to_cancel_what_it_holds() {
    // The try answers after the call timeout; meanwhile the client cancels.
    let app = spawn_app_with(|c| c.limits.participant_timeout = Duration::from_millis(300)).await;
    let p = Participant::start().await;
    p.set(|x| x.try_reply = Reply::Slow(Duration::from_secs(1)));
    let id = tried(&app, &p).await;
    p.wait_until("the first try", |p| p.count("POST") == 1)
        .await;
    app.post(&format!("/reservations/{id}/cancel")).await;
    p.set(|x| x.try_reply = Reply::Ok);

    let (_, body) = app.wait_for(&id, |s, _| s == 410).await;

    assert_eq!(body["participants"][0]["state"], "cancelled", "{body}");
    assert_eq!(p.paths("DELETE"), ["/holds/1"], "{:?}", p.summary());
    assert_eq!(p.count("PUT"), 0);
    app.stop().await;
}

// ---- the near-expiry rule ----------------------------------------------------------------

#[tokio::test]
async fn a_confirm_too_close_to_a_link_expiry_cancels_instead() {
    // The per-call timeout (2 s in tests) is the margin: a link expiring in 3 s must be
    // confirmed within 1 s, or never.
    let app = spawn_app().await;
    let p = Participant::start().await;
    let id = app
        .create(&json!({"timeout_ms": 30_000, "participants": [p.link_expiring(1, &in_secs(3))]}))
        .await;
    let body = app.get_json(&format!("/reservations/{id}")).await;
    crate::helpers::wait_past(crate::helpers::expires_at(&body)).await;

    let confirm = app.post(&format!("/reservations/{id}/confirm")).await;

    assert_eq!(confirm.status(), 410);
    let body: Value = confirm.json().await.unwrap();
    assert_eq!(body["reason"], "too_close_to_expiry", "{body}");
    app.wait_for(&id, |s, _| s == 410).await;
    assert_eq!(p.count("PUT"), 0);
    assert_eq!(p.paths("DELETE"), ["/holds/1"]);
    app.stop().await;
}
