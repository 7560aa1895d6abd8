//! Nobody gets in who should not: bearer tokens, the address the coordinator serves on, the
//! cap on requests in flight.

use serde_json::{json, Value};
use tcc_coordinator::{ApiToken, App, AppError, Config};

use std::time::Duration;

use crate::helpers::{spawn_app_with, Behaviour, Participant, Reply};

const TOKEN: &str = "a-long-enough-test-token";

async fn with_token() -> crate::helpers::TestApp {
    spawn_app_with(|c| c.api_tokens = vec![ApiToken::new("other-token"), ApiToken::new(TOKEN)])
        .await
}

#[tokio::test]
async fn without_a_valid_token_every_api_call_is_401_and_nothing_is_stored() {
    let app = with_token().await;
    let participant = Participant::start().await;
    let body = json!({"participants": [participant.link(1)]});

    let missing = app.post_json("/reservations", &body).await;
    assert_eq!(missing.status(), 401);
    assert_eq!(
        missing.headers()["www-authenticate"],
        r#"Bearer realm="tcc-coordinator""#
    );
    assert_eq!(
        missing.headers()["content-type"],
        "application/problem+json"
    );
    let problem: Value = missing.json().await.unwrap();
    assert_eq!(problem["status"], 401);
    assert!(problem["detail"].as_str().unwrap().contains("Bearer"));

    let wrong = app
        .http
        .post(app.url("/reservations"))
        .bearer_auth("a-long-enough-test-tokeN")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    assert!(wrong.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .contains(r#"error="invalid_token""#));

    let basic = app
        .http
        .get(app.url("/reservations"))
        .basic_auth("user", Some(TOKEN))
        .send()
        .await
        .unwrap();
    assert_eq!(basic.status(), 401, "only the Bearer scheme counts");

    // Unknown paths do not tell an anonymous caller what exists.
    assert_eq!(app.get("/no/such/path").await.status(), 401);
    assert_eq!(app.get("/transactions/whatever").await.status(), 401);

    let listed: Value = app
        .http
        .get(app.url("/reservations"))
        .header("authorization", format!("bearer {TOKEN}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        listed["items"],
        json!([]),
        "a refused create stored nothing"
    );
    assert_eq!(participant.calls().len(), 0);
    app.stop().await;
}

#[tokio::test]
async fn any_configured_token_opens_the_api() {
    let app = with_token().await;
    let participant = Participant::start().await;
    for token in [TOKEN, "other-token"] {
        let created = app
            .http
            .post(app.url("/reservations"))
            .bearer_auth(token)
            .json(&json!({"participants": [participant.link(1)]}))
            .send()
            .await
            .unwrap();
        assert_eq!(created.status(), 202, "{:?}", created.text().await);
    }
    app.stop().await;
}

#[tokio::test]
async fn health_and_the_documentation_need_no_token() {
    let app = with_token().await;
    for path in ["/health/live", "/openapi.json", "/openapi.yaml", "/docs"] {
        assert_eq!(app.get(path).await.status(), 200, "{path}");
    }
    app.stop().await;
}

#[tokio::test]
async fn a_non_loopback_address_without_a_token_refuses_to_start() {
    let mut config = Config::ephemeral();
    config.listen = "0.0.0.0:0".parse().unwrap();
    let refused = App::build(config.clone()).await;
    let Err(AppError::Unauthenticated(addr)) = refused else {
        panic!("expected a refusal");
    };
    assert_eq!(addr.to_string(), "0.0.0.0:0");

    let mut allowed = config.clone();
    allowed.allow_unauthenticated = true;
    assert!(App::build(allowed).await.is_ok());

    let mut with_tokens = config;
    with_tokens.api_tokens = vec![ApiToken::new(TOKEN)];
    assert!(App::build(with_tokens).await.is_ok());
}

#[tokio::test]
async fn past_the_in_flight_cap_requests_get_503_with_retry_after_and_health_still_answers() {
    let app = spawn_app_with(|c| c.max_in_flight = 1).await;
    let participant = Participant::start_with(Behaviour {
        try_reply: Reply::Slow(Duration::from_secs(1)),
        ..Behaviour::default()
    })
    .await;
    // A create waiting for a slow try holds the only slot.
    let holder = app
        .http
        .post(app.url("/reservations"))
        .header("Prefer", "wait=5")
        .json(&json!({"participants": [participant.try_("stock")]}))
        .send();
    let holder = tokio::spawn(holder);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let refused = app
        .post_json(
            "/reservations",
            &json!({"participants": [participant.link(2)]}),
        )
        .await;
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "1");
    let problem: Value = refused.json().await.unwrap();
    assert!(problem["detail"]
        .as_str()
        .unwrap()
        .contains("--max-in-flight"));
    assert_eq!(app.get("/health/live").await.status(), 200);

    assert_eq!(holder.await.unwrap().unwrap().status(), 200);
    let listed: Value = app.get("/reservations").await.json().await.unwrap();
    assert_eq!(
        listed["items"].as_array().unwrap().len(),
        1,
        "the refused create stored nothing"
    );
    app.stop().await;
}
