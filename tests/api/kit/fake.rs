//! The fake participant's control API over HTTP: scripts used in order, the lost-answer case,
//! the calls and holds it shows, reset.

use serde_json::{json, Value};
use tcc_participant::fake::{Answer, FakeParticipant, Verb};
use tcc_participant::HoldState;

use crate::helpers::client;

async fn script(fake: &FakeParticipant, script: Value) -> reqwest::Response {
    client()
        .post(format!("{}/_script", fake.url()))
        .json(&script)
        .send()
        .await
        .unwrap()
}

async fn get(fake: &FakeParticipant, path: &str) -> Value {
    client()
        .get(format!("{}{path}", fake.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn try_hold(fake: &FakeParticipant, key: &str) -> reqwest::Response {
    client()
        .post(fake.try_url())
        .header("Idempotency-Key", key)
        .header("TCC-Reservation", "http://coordinator/reservations/r1")
        .json(&json!({"sku": "apple"}))
        .send()
        .await
        .unwrap()
}

/// A hold made by a try with `key`: its link.
async fn held(fake: &FakeParticipant, key: &str) -> String {
    try_hold(fake, key).await.headers()["location"]
        .to_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn fake_participant_uses_scripted_answers_in_order_then_answers_normally() {
    let fake = FakeParticipant::start().await.unwrap();
    let link = held(&fake, "r1/0").await;

    let scripted = script(
        &fake,
        json!({"verb": "confirm", "answers": [{"status": 503}, {"status": 429, "retry_after_secs": 2}]}),
    )
    .await;
    let first = client().put(&link).send().await.unwrap();
    let second = client().put(&link).send().await.unwrap();
    let third = client().put(&link).send().await.unwrap();

    assert_eq!(scripted.status(), 204);
    assert_eq!(first.status(), 503);
    assert_eq!(second.status(), 429);
    assert_eq!(second.headers()["retry-after"], "2");
    assert_eq!(third.status(), 204);
    let calls = get(&fake, "/_calls").await;
    let seen: Vec<(&str, u64, bool)> = calls
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["verb"].as_str().unwrap(),
                c["status"].as_u64().unwrap(),
                c["scripted"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("try", 201, false),
            ("confirm", 503, true),
            ("confirm", 429, true),
            ("confirm", 204, false)
        ]
    );
    assert_eq!(calls[0]["idempotency_key"], "r1/0");
    assert_eq!(
        calls[0]["reservation"],
        "http://coordinator/reservations/r1"
    );
    let hold = link.rsplit('/').next().unwrap();
    assert!(
        calls.as_array().unwrap().iter().all(|c| c["hold"] == hold),
        "{calls:#}"
    );
    assert_eq!(get(&fake, "/_holds").await[0]["state"], "confirmed");
    fake.stop().await.unwrap();
}

#[tokio::test]
async fn fake_participant_applies_then_loses_the_answer_when_told() {
    let fake = FakeParticipant::start().await.unwrap();
    script(
        &fake,
        json!({"verb": "try", "answers": [{"status": 503, "apply": true, "delay_ms": 10}]}),
    )
    .await;

    let lost = try_hold(&fake, "r1/0").await;
    let holds = get(&fake, "/_holds").await;
    let repeated = try_hold(&fake, "r1/0").await;

    assert_eq!(lost.status(), 503);
    assert_eq!(
        holds.as_array().unwrap().len(),
        1,
        "the try was applied: {holds:#}"
    );
    assert_eq!(holds[0]["state"], "held");
    assert_eq!(
        repeated.status(),
        200,
        "the repeat finds the hold the lost answer made"
    );
    let calls = fake.calls();
    assert_eq!(calls[0].hold.as_deref(), holds[0]["id"].as_str());
    assert_eq!(calls[0].status, Some(503));
    fake.stop().await.unwrap();
}

#[tokio::test]
async fn fake_participant_reset_forgets_scripts_calls_and_holds() {
    let fake = FakeParticipant::start().await.unwrap();
    try_hold(&fake, "r1/0").await;
    script(&fake, json!({"verb": "try", "answers": [{"status": 500}]})).await;

    let reset = client()
        .post(format!("{}/_reset", fake.url()))
        .send()
        .await
        .unwrap();

    assert_eq!(reset.status(), 204);
    assert_eq!(get(&fake, "/_calls").await, json!([]));
    assert_eq!(get(&fake, "/_holds").await, json!([]));
    assert_eq!(
        try_hold(&fake, "r1/0").await.status(),
        201,
        "no script left, the key is new"
    );
    fake.stop().await.unwrap();
}

#[tokio::test]
async fn fake_participant_refuses_a_bad_script_naming_the_field() {
    let fake = FakeParticipant::start().await.unwrap();

    let bad = script(
        &fake,
        json!({"verb": "confirm", "answers": [{"status": 42}]}),
    )
    .await;
    let unknown_verb = script(&fake, json!({"verb": "prepare", "answers": []})).await;

    assert_eq!(bad.status(), 400);
    assert_eq!(bad.headers()["content-type"], "application/problem+json");
    let problem: Value = bad.json().await.unwrap();
    assert!(
        problem["detail"].as_str().unwrap().contains("`status`"),
        "{problem}"
    );
    assert_eq!(unknown_verb.status(), 400);
    assert!(fake.calls().is_empty());
    fake.stop().await.unwrap();
}

// ---- the coordinator against the fake, as the README's recipe ----------------------------

fn tried_at(fake: &FakeParticipant) -> Value {
    json!({"participants": [{"name": "stock", "try": {"url": fake.try_url(), "body": {"sku": "apple"}}}]})
}

#[tokio::test]
async fn fake_participant_confirm_answering_503_twice_is_confirmed_by_the_coordinator() {
    let app = crate::helpers::spawn_app().await;
    let stock = FakeParticipant::start().await.unwrap();
    stock.script(Verb::Confirm, [Answer::status(503), Answer::status(503)]);

    let id = app.create(&tried_at(&stock)).await;
    app.wait_for(&id, |_, b| b["state"] == "reserved").await;
    app.post(&format!("/reservations/{id}/confirm")).await;
    let (status, _) = app.wait_for(&id, crate::helpers::is_settled).await;

    assert_eq!(status, 303);
    let confirms: Vec<_> = stock
        .calls_of(Verb::Confirm)
        .iter()
        .map(|c| c.status)
        .collect();
    assert_eq!(confirms, [Some(503), Some(503), Some(204)]);
    assert_eq!(stock.holds().await[0].state, HoldState::Confirmed);
    stock.stop().await.unwrap();
    app.stop().await;
}

#[tokio::test]
async fn a_try_applied_but_answered_503_is_repeated_with_its_key_and_holds_once() {
    let app = crate::helpers::spawn_app().await;
    let stock = FakeParticipant::start().await.unwrap();
    stock.script(Verb::Try, [Answer::status(503).applied()]);

    let id = app.create(&tried_at(&stock)).await;
    let (_, body) = app.wait_for(&id, |_, b| b["state"] != "trying").await;

    assert_eq!(body["state"], "reserved", "{body:#}");
    let tries = stock.calls_of(Verb::Try);
    let statuses: Vec<_> = tries.iter().map(|c| c.status).collect();
    assert_eq!(statuses, [Some(503), Some(200)]);
    assert_eq!(tries[0].idempotency_key, tries[1].idempotency_key);
    assert_eq!(tries[0].hold, tries[1].hold);
    let holds = stock.holds().await;
    assert_eq!(holds.len(), 1);
    assert!(body["participants"][0]["uri"]
        .as_str()
        .unwrap()
        .ends_with(&holds[0].id));
    stock.stop().await.unwrap();
    app.stop().await;
}

#[tokio::test]
async fn fake_participant_refuses_a_script_with_an_unknown_field_naming_it() {
    let fake = FakeParticipant::start().await.unwrap();
    let typo = script(
        &fake,
        json!({"verb": "confirm", "answers": [{"status": 503, "delay": 100}]}),
    )
    .await;
    assert_eq!(typo.status(), 400);
    let problem: Value = typo.json().await.unwrap();
    assert!(
        problem["detail"].as_str().unwrap().contains("delay"),
        "{problem:#}"
    );
    // Nothing was queued: the next confirm is answered normally.
    let link = held(&fake, "r1/0").await;
    assert_eq!(client().put(&link).send().await.unwrap().status(), 204);
    fake.stop().await.unwrap();
}

#[tokio::test]
async fn fake_participant_drops_queued_answers_and_keeps_its_holds_and_calls() {
    let fake = FakeParticipant::start().await.unwrap();
    let link = held(&fake, "r1/0").await;
    script(
        &fake,
        json!({"verb": "confirm", "answers": [{"status": 503}, {"status": 503}]}),
    )
    .await;

    let cleared = client()
        .delete(format!("{}/_script", fake.url()))
        .send()
        .await
        .unwrap();

    assert_eq!(cleared.status(), 204);
    assert_eq!(client().put(&link).send().await.unwrap().status(), 204);
    assert_eq!(get(&fake, "/_holds").await[0]["state"], "confirmed");
    assert_eq!(get(&fake, "/_calls").await.as_array().unwrap().len(), 2);
    // The same from Rust.
    fake.script(Verb::Cancel, [Answer::status(500)]);
    fake.clear_scripts();
    assert_eq!(client().delete(&link).send().await.unwrap().status(), 409);
    fake.stop().await.unwrap();
}

#[tokio::test]
async fn fake_participant_serves_swagger_ui() {
    let fake = FakeParticipant::start().await.unwrap();
    let docs = client()
        .get(format!("{}/docs", fake.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(docs.status(), 200);
    assert!(docs.text().await.unwrap().contains("swagger-ui"));
    fake.stop().await.unwrap();
}
