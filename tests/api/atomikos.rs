//! The Atomikos-compatible synchronous API, on the same engine and log.

use serde_json::{json, Value};

use crate::helpers::{in_secs, Participant, Reply, TestApp};

fn links(links: &[(&Participant, u32, String)]) -> Value {
    json!({"participantLinks": links
        .iter()
        .map(|(p, n, expires)| json!({"uri": p.hold_uri(*n), "expires": expires}))
        .collect::<Vec<_>>()})
}

async fn put(app: &TestApp, path: &str, body: &Value) -> reqwest::Response {
    app.http
        .put(app.url(path))
        .header("content-type", "application/tcc+json")
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn confirm_answers_204_once_every_link_confirmed() {
    let app = crate::helpers::spawn_app().await;
    let (a, b) = (Participant::start().await, Participant::start().await);

    let response = put(
        &app,
        "/coordinator/confirm",
        &links(&[(&a, 1, in_secs(60)), (&b, 7, in_secs(60))]),
    )
    .await;

    assert_eq!(response.status(), 204);
    assert_eq!(a.paths("PUT"), ["/holds/1"]);
    assert_eq!(b.paths("PUT"), ["/holds/7"]);
    let page: Value = app
        .get("/reservations?state=confirmed")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        page["items"].as_array().unwrap().len(),
        1,
        "kept as a reservation"
    );
    app.stop().await;
}

#[tokio::test]
async fn confirm_answers_404_when_every_participant_is_gone() {
    let app = crate::helpers::spawn_app().await;
    let (a, b) = (Participant::start().await, Participant::start().await);
    a.set(|x| x.confirm_reply = Reply::Status(404));
    b.set(|x| x.confirm_reply = Reply::Status(410));

    let response = put(
        &app,
        "/coordinator/confirm",
        &links(&[(&a, 1, in_secs(60)), (&b, 1, in_secs(60))]),
    )
    .await;

    assert_eq!(response.status(), 404);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    app.stop().await;
}

#[tokio::test]
async fn confirm_of_expired_links_answers_404_and_cancels_without_any_put() {
    let app = crate::helpers::spawn_app().await;
    let a = Participant::start().await;

    let response = put(
        &app,
        "/coordinator/confirm",
        &links(&[(&a, 1, in_secs(-1))]),
    )
    .await;

    assert_eq!(response.status(), 404);
    a.wait_until("the DELETE", |p| p.paths("DELETE") == ["/holds/1"])
        .await;
    assert_eq!(a.count("PUT"), 0);
    app.stop().await;
}

#[tokio::test]
async fn confirm_answers_409_with_a_report_per_link_on_a_mixed_outcome() {
    let app = crate::helpers::spawn_app().await;
    let (ok, refusing) = (Participant::start().await, Participant::start().await);
    refusing.set(|x| x.confirm_reply = Reply::Status(409));

    let response = put(
        &app,
        "/coordinator/confirm",
        &links(&[(&ok, 1, in_secs(60)), (&refusing, 1, in_secs(60))]),
    )
    .await;

    assert_eq!(response.status(), 409);
    let report: Value = response.json().await.unwrap();
    let states: Vec<_> = report["participantLinks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["uri"].as_str().unwrap().to_owned(),
                l["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        states,
        [
            (ok.hold_uri(1), "confirmed".to_owned()),
            (refusing.hold_uri(1), "refused".to_owned())
        ]
    );
    app.stop().await;
}

#[tokio::test]
async fn cancel_answers_204_and_every_link_gets_delete() {
    let app = crate::helpers::spawn_app().await;
    let (a, b) = (Participant::start().await, Participant::start().await);

    let response = app
        .http
        .put(app.url("/coordinator/cancel"))
        .json(&links(&[(&a, 1, in_secs(60)), (&b, 2, in_secs(60))]))
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 204);
    a.wait_until("the DELETE", |p| p.paths("DELETE") == ["/holds/1"])
        .await;
    b.wait_until("the DELETE", |p| p.paths("DELETE") == ["/holds/2"])
        .await;
    assert_eq!(a.count("PUT") + b.count("PUT"), 0);
    app.stop().await;
}

/// As Atomikos's own coordinator: the 204 comes once every participant has answered its
/// first `DELETE`, so a client that reads a participant right after it finds it cancelled.
#[tokio::test]
async fn cancel_answers_204_only_once_every_link_has_answered_its_first_delete() {
    let app = crate::helpers::spawn_app().await;
    let (a, b) = (Participant::start().await, Participant::start().await);
    b.script("cancel", [Reply::UntilReleased]);

    let body = links(&[(&a, 1, in_secs(60)), (&b, 2, in_secs(60))]);
    let request = app
        .http
        .put(app.url("/coordinator/cancel"))
        .json(&body)
        .send();
    let answered = tokio::spawn(async move {
        let response = request.await.unwrap();
        (response.status(), std::time::Instant::now())
    });
    b.wait_until("the held DELETE", |p| p.count("DELETE") == 1)
        .await;
    let released = std::time::Instant::now();
    b.release();

    let (status, at) = answered.await.unwrap();
    assert_eq!(status, 204);
    assert!(
        at > released,
        "the 204 came before the held DELETE was answered"
    );
    assert_eq!(a.paths("DELETE"), ["/holds/1"]);
    assert_eq!(b.paths("DELETE"), ["/holds/2"]);
    app.stop().await;
}

#[tokio::test]
async fn a_bad_link_is_422_naming_it_and_nothing_is_called() {
    let app = crate::helpers::spawn_app().await;
    let a = Participant::start().await;
    let body = json!({"participantLinks": [
        {"uri": a.hold_uri(1), "expires": in_secs(60)},
        {"uri": "ftp://x/1", "expires": in_secs(60)},
    ]});

    let response = put(&app, "/coordinator/confirm", &body).await;

    assert_eq!(response.status(), 422);
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["field"], "participantLinks[1].uri");
    assert!(a.calls().is_empty());
    app.stop().await;
}

#[tokio::test]
async fn an_atomikos_confirm_is_one_trace_create_decision_phase_and_calls() {
    let collector = crate::helpers::Collector::start().await;
    let endpoint = collector.base.parse().unwrap();
    let app = crate::helpers::spawn_app_with(|c| c.otlp_endpoint = Some(endpoint)).await;
    let (a, b) = (Participant::start().await, Participant::start().await);
    let response = app
        .http
        .put(app.url("/coordinator/confirm"))
        .header("content-type", "application/tcc+json")
        .header(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
        .body(links(&[(&a, 1, in_secs(60)), (&b, 2, in_secs(60))]).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    app.stop().await;

    let spans = collector
        .received(5, "create, decision, phase, 2 confirms")
        .await;
    assert!(spans
        .iter()
        .all(|s| s.trace == "0af7651916cd43dd8448eb211c80319c"));
    let create = crate::helpers::one(&spans, "create");
    assert_eq!(create.parent, "b7ad6b7169203331");
    let decision = crate::helpers::one(&spans, "decision");
    assert_eq!(decision.parent, create.id);
    let phase = crate::helpers::one(&spans, "confirm phase");
    assert_eq!(phase.parent, decision.id);
    assert_eq!(
        spans
            .iter()
            .filter(|s| s.name == "participant confirm" && s.parent == phase.id)
            .count(),
        2
    );
}
