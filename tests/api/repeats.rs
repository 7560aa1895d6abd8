//! Clients repeat themselves: repeated creates with an `Idempotency-Key`, repeated
//! decisions, and decisions that race each other.

use serde_json::{json, Value};

use crate::helpers::{is_settled, spawn_app, Participant};

#[tokio::test]
async fn the_same_idempotency_key_and_body_return_the_same_reservation() {
    let app = spawn_app().await;
    let p = Participant::start().await;
    let body = json!({"participants": [p.try_("stock")], "metadata": {"order": "A-17"}});
    let send = || async {
        app.http
            .post(app.url("/reservations"))
            .header("Idempotency-Key", "order-A-17")
            .json(&body)
            .send()
            .await
            .unwrap()
    };

    let first = send().await;
    let second = send().await;

    assert_eq!(first.status(), 202);
    assert_eq!(second.status(), 202);
    assert_eq!(first.headers()["location"], second.headers()["location"]);
    let (a, b): (Value, Value) = (first.json().await.unwrap(), second.json().await.unwrap());
    assert_eq!(a["id"], b["id"]);
    let id = a["id"].as_str().unwrap();
    app.wait_for(id, |_, b| b["state"] == "reserved").await;
    assert_eq!(p.count("POST"), 1, "one reservation, one try");
    let page: Value = app.get("/reservations").await.json().await.unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn the_same_key_with_the_same_json_written_differently_is_the_same_request() {
    let app = spawn_app().await;
    let shared = &app;
    let send = |raw: &'static str| async move {
        let app = shared;
        app.http
            .post(app.url("/reservations"))
            .header("Idempotency-Key", "k-1")
            .header("content-type", "application/json")
            .body(raw)
            .send()
            .await
            .unwrap()
    };
    let a: Value = send(r#"{"timeout_ms": 5000, "metadata": {"a": 1, "b": 2}}"#)
        .await
        .json()
        .await
        .unwrap();
    let b: Value = send(r#"{"metadata":{"b":2,"a":1},"timeout_ms":5000}"#)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(a["id"], b["id"]);
    app.stop().await;
}

#[tokio::test]
async fn the_same_idempotency_key_with_another_body_is_422_and_stores_nothing() {
    let app = spawn_app().await;
    let first = app
        .http
        .post(app.url("/reservations"))
        .header("Idempotency-Key", "order-A-18")
        .json(&json!({"timeout_ms": 5000}))
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 202);

    let second = app
        .http
        .post(app.url("/reservations"))
        .header("Idempotency-Key", "order-A-18")
        .json(&json!({"timeout_ms": 6000}))
        .send()
        .await
        .unwrap();

    assert_eq!(second.status(), 422);
    let problem: Value = second.json().await.unwrap();
    assert_eq!(problem["field"], "Idempotency-Key");
    let page: Value = app.get("/reservations").await.json().await.unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn concurrent_creates_with_one_key_make_one_reservation() {
    let app = spawn_app().await;
    let p = Participant::start().await;
    let body = json!({"participants": [p.try_("stock")]});
    let creates = (0..16).map(|_| {
        app.http
            .post(app.url("/reservations"))
            .header("Idempotency-Key", "burst")
            .json(&body)
            .send()
    });
    let answers = futures_util::future::join_all(creates).await;
    let mut ids = std::collections::BTreeSet::new();
    for answer in answers {
        let answer = answer.unwrap();
        assert_eq!(answer.status(), 202);
        let body: Value = answer.json().await.unwrap();
        ids.insert(body["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(ids.len(), 1, "{ids:?}");
    let id = ids.into_iter().next().unwrap();
    app.wait_for(&id, |_, b| b["state"] == "reserved").await;
    assert_eq!(p.count("POST"), 1);
    app.stop().await;
}

#[tokio::test]
async fn a_malformed_idempotency_key_is_422() {
    let app = spawn_app().await;
    let response = app
        .http
        .post(app.url("/reservations"))
        .header("Idempotency-Key", "x".repeat(300))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 422);
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["field"], "Idempotency-Key");
    app.stop().await;
}

#[tokio::test]
async fn repeated_confirms_and_cancels_give_the_same_answer_and_no_extra_call() {
    let app = spawn_app().await;
    let p = Participant::start().await;
    let confirmed = app.create(&json!({"participants": [p.link(1)]})).await;
    let cancelled = app.create(&json!({"participants": [p.link(2)]})).await;
    app.post(&format!("/reservations/{confirmed}/confirm"))
        .await;
    app.post(&format!("/reservations/{cancelled}/cancel")).await;
    app.wait_for(&confirmed, is_settled).await;
    app.wait_for(&cancelled, is_settled).await;

    for _ in 0..5 {
        assert_eq!(
            app.post(&format!("/reservations/{confirmed}/confirm"))
                .await
                .status(),
            303
        );
        assert_eq!(
            app.post(&format!("/reservations/{cancelled}/cancel"))
                .await
                .status(),
            410
        );
        assert_eq!(
            app.delete(&format!("/reservations/{cancelled}"))
                .await
                .status(),
            410
        );
    }

    assert_eq!(p.paths("PUT"), ["/holds/1"]);
    assert_eq!(p.paths("DELETE"), ["/holds/2"]);
    app.stop().await;
}

/// The calls each link received, as "PUT" / "DELETE" strings.
fn verbs_for(p: &Participant, n: u32) -> Vec<String> {
    let path = format!("/holds/{n}");
    p.calls()
        .into_iter()
        .filter(|c| c.path == path)
        .map(|c| c.method)
        .collect()
}

#[tokio::test]
async fn confirm_and_cancel_racing_have_one_winner_and_participants_see_only_its_calls() {
    let app = spawn_app().await;
    let p = Participant::start().await;
    let mut ids = Vec::new();
    for n in 1..=20 {
        ids.push(app.create(&json!({"participants": [p.link(n)]})).await);
    }

    let app_ref = &app;
    let races = ids.iter().map(|id| async move {
        let (confirm, cancel) = (
            format!("/reservations/{id}/confirm"),
            format!("/reservations/{id}/cancel"),
        );
        let (c, x) = tokio::join!(app_ref.post(&confirm), app_ref.post(&cancel));
        (c.status().as_u16(), x.status().as_u16())
    });
    let answers = futures_util::future::join_all(races).await;

    for ((id, (confirm, cancel)), n) in ids.iter().zip(answers).zip(1..) {
        let (status, _) = app.wait_for(id, is_settled).await;
        match status {
            303 => {
                assert!([202, 303].contains(&confirm), "{id}: confirm {confirm}");
                assert_eq!(cancel, 409, "{id}");
                p.wait_until("the PUT", |p| verbs_for(p, n) == ["PUT"])
                    .await;
            }
            410 => {
                assert_eq!(confirm, 409, "{id}: confirm lost to a client cancel");
                assert!([202, 410].contains(&cancel), "{id}: cancel {cancel}");
                p.wait_until("the DELETE", |p| verbs_for(p, n) == ["DELETE"])
                    .await;
            }
            other => panic!("{id} ended {other}"),
        }
    }
    app.stop().await;
}

#[tokio::test]
async fn a_confirm_racing_the_timeout_either_confirms_or_finds_it_gone() {
    let app = spawn_app().await;
    let p = Participant::start().await;
    let mut ids = Vec::new();
    for n in 1..=20 {
        ids.push(
            app.create(&json!({"timeout_ms": 400, "participants": [p.link(n)]}))
                .await,
        );
    }
    tokio::time::sleep(std::time::Duration::from_millis(350)).await;

    let confirms = ids.iter().enumerate().map(|(i, id)| {
        let app = &app;
        async move {
            tokio::time::sleep(std::time::Duration::from_millis(5 * i as u64)).await;
            app.post(&format!("/reservations/{id}/confirm"))
                .await
                .status()
                .as_u16()
        }
    });
    let answers = futures_util::future::join_all(confirms).await;

    for ((id, confirm), n) in ids.iter().zip(answers).zip(1..) {
        let (status, body) = app.wait_for(id, is_settled).await;
        match status {
            303 => {
                assert!([202, 303].contains(&confirm), "{id}: {confirm}");
                p.wait_until("the PUT", |p| verbs_for(p, n) == ["PUT"])
                    .await;
            }
            410 => {
                assert_eq!(confirm, 410, "{id}");
                assert_eq!(body["reason"], "expired");
                p.wait_until("the DELETE", |p| verbs_for(p, n) == ["DELETE"])
                    .await;
            }
            other => panic!("{id} ended {other}"),
        }
    }
    app.stop().await;
}

#[tokio::test]
async fn a_join_racing_a_cancel_is_cancelled_with_the_rest_or_refused() {
    let app = spawn_app().await;
    let (first, joined) = (Participant::start().await, Participant::start().await);
    let mut ids = Vec::new();
    for n in 1..=10 {
        ids.push(app.create(&json!({"participants": [first.link(n)]})).await);
    }

    let (app_ref, joined_ref) = (&app, &joined);
    let races = ids.iter().zip(1..).map(|(id, n)| async move {
        let (cancel, join, link) = (
            format!("/reservations/{id}/cancel"),
            format!("/reservations/{id}/participants"),
            joined_ref.link(n),
        );
        let (_, j) = tokio::join!(app_ref.post(&cancel), app_ref.post_json(&join, &link));
        j.status().as_u16()
    });
    let joins = futures_util::future::join_all(races).await;

    for ((id, join), n) in ids.iter().zip(joins).zip(1..) {
        app.wait_for(id, |s, _| s == 410).await;
        match join {
            202 => {
                joined
                    .wait_until("the DELETE", |p| verbs_for(p, n) == ["DELETE"])
                    .await
            }
            410 => assert!(verbs_for(&joined, n).is_empty(), "{id}"),
            other => panic!("{id}: join answered {other}"),
        }
        assert!(!verbs_for(&joined, n).contains(&"PUT".to_owned()));
    }
    app.stop().await;
}
