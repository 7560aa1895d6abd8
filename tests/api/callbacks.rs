//! Completion callbacks: the final representation `POST`ed once a reservation is terminal.

use serde_json::{json, Value};

use crate::helpers::{spawn_app, Participant, Reply, TestApp};

/// The callback delivery of the newest reservation in `state`, as the listing shows it (a
/// confirmed reservation answers 303 and a cancelled one 410 to a plain `GET`).
async fn delivery(app: &TestApp, state: &str) -> Value {
    let listed = app.get_json(&format!("/reservations?state={state}")).await;
    listed["items"][0]["callback"].clone()
}

fn posted(callback: &Participant) -> Vec<Value> {
    callback
        .calls()
        .into_iter()
        .filter(|c| c.method == "POST")
        .map(|c| serde_json::from_slice(&c.body).unwrap())
        .collect()
}

#[tokio::test]
async fn a_confirmed_reservation_posts_its_final_representation_once() {
    let app = spawn_app().await;
    let p = Participant::start().await;
    let callback = Participant::start().await;
    let id = app
        .create(&json!({"participants": [p.link(1)],
            "callback": format!("{}/callbacks/order-17", callback.base)}))
        .await;
    app.post(&format!("/reservations/{id}/confirm")).await;
    callback
        .wait_until("the callback", |c| c.count("POST") == 1)
        .await;

    let bodies = posted(&callback);
    assert_eq!(bodies[0]["id"], id.as_str());
    assert_eq!(bodies[0]["state"], "confirmed");
    assert_eq!(bodies[0]["participants"][0]["state"], "confirmed");
    assert_eq!(callback.calls()[0].path, "/callbacks/order-17");
    let shown = delivery(&app, "confirmed").await;
    assert_eq!(shown["attempts"], 1, "{shown}");
    assert!(shown["delivered_at"].is_string(), "{shown}");
    // Every task of the coordinator has ended once it stopped: nothing more can be sent.
    app.stop().await;
    assert_eq!(callback.count("POST"), 1, "delivered once");
}

#[tokio::test]
async fn a_failing_callback_is_retried_until_acknowledged_and_shows_its_delivery() {
    let app = spawn_app().await;
    let p = Participant::start().await;
    let callback = Participant::start().await;
    callback.script("try", [Reply::Status(503), Reply::Close]);
    let id = app
        .create(&json!({"timeout_ms": 200, "participants": [p.link(1)],
            "callback": format!("{}/callbacks/1", callback.base)}))
        .await;
    callback
        .wait_until("three callback attempts", |c| c.count("POST") >= 3)
        .await;
    let bodies = posted(&callback);
    assert!(bodies
        .iter()
        .all(|b| b["id"] == id.as_str() && b["state"] == "cancelled" && b["reason"] == "expired"));

    let shown = delivery(&app, "cancelled").await;
    assert_eq!(shown["attempts"], 3, "{shown}");
    assert!(shown["delivered_at"].is_string(), "{shown}");
    assert_eq!(shown["last_error"], Value::Null);
    app.stop().await;
}

#[tokio::test]
async fn a_callback_the_coordinator_must_not_call_is_refused_with_422() {
    let app = spawn_app().await;
    let p = Participant::start().await;
    for (callback, says) in [
        ("http://169.254.169.254/latest", "never calls"),
        ("ftp://orders/callbacks", "http or https"),
    ] {
        let response = app
            .post_json(
                "/reservations",
                &json!({"participants": [p.link(1)], "callback": callback}),
            )
            .await;
        assert_eq!(response.status(), 422);
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["field"], "callback");
        assert!(
            problem["detail"].as_str().unwrap().contains(says),
            "{problem}"
        );
    }
    app.stop().await;
}
