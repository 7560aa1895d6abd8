//! Nobody gets in who should not: bearer tokens, the address the coordinator serves on, the
//! cap on requests in flight.

use serde_json::{json, Value};
use tcc_coordinator::{AllowRule, ApiToken, App, AppError, Config, NameResolver};

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::dns::{Name, Resolve, Resolving};

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
    participant
        .wait_until("the slow try, while the create holds the slot", |p| {
            p.count("POST") >= 1
        })
        .await;

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
    let listed = app.get_json("/reservations").await;
    assert_eq!(
        listed["items"].as_array().unwrap().len(),
        1,
        "the refused create stored nothing"
    );
    app.stop().await;
}

// ---- the outgoing call policy -------------------------------------------------------------

/// Answers name lookups from a table the test can change while the coordinator runs.
#[derive(Clone, Default)]
struct Names(Arc<Mutex<HashMap<String, IpAddr>>>);

impl Names {
    fn set(&self, name: &str, addr: &str) {
        self.0
            .lock()
            .unwrap()
            .insert(name.to_owned(), addr.parse().unwrap());
    }
}

impl Resolve for Names {
    fn resolve(&self, name: Name) -> Resolving {
        let found = self.0.lock().unwrap().get(name.as_str()).copied();
        Box::pin(async move {
            let addr = found.ok_or_else(|| std::io::Error::other("no such name in the test"))?;
            Ok(Box::new(std::iter::once(SocketAddr::new(addr, 0))) as reqwest::dns::Addrs)
        })
    }
}

async fn with_names(names: &Names, allow: &[&str]) -> crate::helpers::TestApp {
    let names = names.clone();
    let allow: Vec<AllowRule> = allow.iter().map(|r| r.parse().unwrap()).collect();
    spawn_app_with(move |c| {
        c.participant_resolver = NameResolver(Arc::new(names));
        c.allow_participants = allow;
    })
    .await
}

async fn refused(app: &crate::helpers::TestApp, path: &str, body: &Value) -> Value {
    let request = if path.starts_with("/coordinator/") {
        app.http.put(app.url(path))
    } else {
        app.http.post(app.url(path))
    };
    let response = request.json(body).send().await.unwrap();
    assert_eq!(response.status(), 422, "{:?}", response.text().await);
    response.json().await.unwrap()
}

#[tokio::test]
async fn link_local_and_metadata_urls_are_refused_everywhere_with_the_field_and_url_named() {
    let names = Names::default();
    names.set("sneaky.test", "169.254.169.254");
    let app = with_names(&names, &[]).await;
    let participant = Participant::start().await;
    let expires = crate::helpers::in_secs(600);
    for uri in [
        "http://169.254.169.254/latest/meta-data/",
        "http://[fe80::1]:8080/holds/1",
        "http://metadata.google.internal/computeMetadata/v1/",
        "http://sneaky.test/holds/1",
        "http://[::ffff:169.254.169.254]/holds/1",
    ] {
        let body = json!({"participants": [participant.link(1), {"link": {"uri": uri, "expires": expires}}]});
        let problem = refused(&app, "/reservations", &body).await;
        assert_eq!(problem["field"], "participants[1].link.uri", "{problem}");
        let detail = problem["detail"].as_str().unwrap();
        assert!(
            detail.contains("is refused") && detail.contains("never calls"),
            "{detail}"
        );

        let try_body = json!({"participants": [{"try": {"url": uri}}]});
        let problem = refused(&app, "/reservations", &try_body).await;
        assert_eq!(problem["field"], "participants[0].try.url", "{problem}");

        let problem = refused(
            &app,
            "/coordinator/confirm",
            &json!({"participantLinks": [{"uri": uri, "expires": expires}]}),
        )
        .await;
        assert_eq!(problem["field"], "participantLinks[0].uri", "{problem}");
    }
    let id = app
        .create(&json!({"participants": [participant.link(1)]}))
        .await;
    let problem = refused(
        &app,
        &format!("/reservations/{id}/participants"),
        &json!({"link": {"uri": "http://169.254.169.254/x", "expires": expires}}),
    )
    .await;
    assert_eq!(problem["field"], "link.uri", "{problem}");

    let listed = app.get_json("/reservations").await;
    assert_eq!(
        listed["items"].as_array().unwrap().len(),
        1,
        "only the valid one is stored"
    );
    let (_, body) = app.wait_for(&id, |s, _| s == 200).await;
    assert_eq!(body["participants"].as_array().unwrap().len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn with_an_allow_list_only_listed_hosts_are_called() {
    let allowed = Participant::start().await;
    let other = Participant::start().await;
    let port = allowed.base.rsplit(':').next().unwrap().to_owned();
    let names = Names::default();
    names.set("stock.test", "127.0.0.1");
    let app = with_names(
        &names,
        &[&format!("127.0.0.1:{port}"), &format!("stock.test:{port}")],
    )
    .await;

    let ok = app
        .create(&json!({"participants": [allowed.link(1), {"link": {
            "uri": allowed.hold_uri(2).replace("127.0.0.1", "stock.test"),
            "expires": crate::helpers::in_secs(600)}}]}))
        .await;
    let problem = refused(
        &app,
        "/reservations",
        &json!({"participants": [allowed.link(3), other.link(1)]}),
    )
    .await;
    assert_eq!(problem["field"], "participants[1].link.uri");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("--allow-participant"),
        "{problem}"
    );

    let confirmed = app.post(&format!("/reservations/{ok}/confirm")).await;
    assert!(
        confirmed.status().is_success(),
        "{:?}",
        confirmed.text().await
    );
    app.wait_for(&ok, |s, _| s == 303).await;
    assert_eq!(allowed.count("PUT"), 2);
    assert_eq!(other.calls().len(), 0);
    app.stop().await;
}

#[tokio::test]
async fn a_name_that_resolves_elsewhere_at_call_time_is_not_called() {
    let participant = Participant::start().await;
    let names = Names::default();
    names.set("rebind.test", "127.0.0.1");
    let app = with_names(&names, &[]).await;
    let id = app
        .create(&json!({"participants": [{"link": {
            "uri": participant.hold_uri(1).replace("127.0.0.1", "rebind.test"),
            "expires": crate::helpers::in_secs(600)}}]}))
        .await;

    // DNS rebinding: the name now points at the metadata service.
    names.set("rebind.test", "169.254.169.254");
    app.post(&format!("/reservations/{id}/confirm")).await;
    let (_, body) = app
        .wait_for(&id, |_, b| {
            b["participants"][0]["attempts"].as_u64() >= Some(2)
        })
        .await;
    let error = body["participants"][0]["last_error"].as_str().unwrap();
    assert!(
        error.contains("refused by the outgoing call policy") && error.contains("169.254.169.254"),
        "{error}"
    );
    assert_eq!(participant.count("PUT"), 0);

    // Pointed back at the participant, the confirmation goes through.
    names.set("rebind.test", "127.0.0.1");
    app.wait_for(&id, |s, _| s == 303).await;
    assert_eq!(participant.count("PUT"), 1);
    app.stop().await;
}

#[tokio::test]
async fn a_try_answering_with_a_forbidden_link_fails_the_try() {
    let participant = Participant::start().await;
    participant.script(
        "try",
        [Reply::Body(
            201,
            json!({"uri": "http://169.254.169.254/holds/1", "expires": crate::helpers::in_secs(600)})
                .to_string(),
        )],
    );
    let app = spawn_app_with(|_| {}).await;
    let id = app
        .create(&json!({"participants": [participant.try_("stock")]}))
        .await;
    let (status, body) = app.wait_for(&id, crate::helpers::is_settled).await;
    assert_eq!(status, 410, "{body}");
    assert_eq!(body["reason"], "try_failed", "{body}");
    assert!(
        body["participants"][0]["last_error"]
            .as_str()
            .unwrap()
            .contains("will not call"),
        "{body}"
    );
    assert_eq!(
        participant.count("DELETE"),
        0,
        "nothing the coordinator may call"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_redirecting_participant_is_not_followed() {
    let elsewhere = Participant::start().await;
    let participant = Participant::start().await;
    participant.script("confirm", [Reply::Redirect(elsewhere.hold_uri(1))]);
    let app = spawn_app_with(|_| {}).await;
    let id = app
        .create(&json!({"participants": [participant.link(1)]}))
        .await;
    app.post(&format!("/reservations/{id}/confirm")).await;
    app.wait_for(&id, |s, _| s == 303).await;
    assert_eq!(
        participant.count("PUT"),
        2,
        "the 307 is retried at the same link"
    );
    assert_eq!(elsewhere.calls().len(), 0, "the redirect was not followed");
    app.stop().await;
}

#[tokio::test]
async fn a_saturated_log_answers_503_with_retry_after_and_stores_only_what_it_acknowledged() {
    let app = spawn_app_with(|c| c.max_log_queue = 1).await;
    let participant = Participant::start().await;
    let creates = (0..200).map(|i| {
        let request = app
            .http
            .post(app.url("/reservations"))
            .json(&json!({"participants": [participant.link(i)]}));
        async move { request.send().await.unwrap() }
    });
    let answers = futures_util::future::join_all(creates).await;

    let mut accepted = Vec::new();
    let mut refused = 0;
    for answer in answers {
        match answer.status().as_u16() {
            202 => accepted.push(answer.json::<Value>().await.unwrap()["id"].clone()),
            503 => {
                assert_eq!(answer.headers()["retry-after"], "1");
                let problem: Value = answer.json().await.unwrap();
                assert!(
                    problem["detail"]
                        .as_str()
                        .unwrap()
                        .contains("nothing was stored"),
                    "{problem}"
                );
                refused += 1;
            }
            other => panic!("unexpected {other}: {:?}", answer.text().await),
        }
    }
    assert!(
        refused > 0,
        "200 concurrent creates never met a full log queue of 1"
    );
    assert!(!accepted.is_empty());
    let listed = app.get_json("/reservations?limit=500").await;
    let stored: Vec<Value> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].clone())
        .collect();
    assert_eq!(stored.len(), accepted.len());
    assert!(accepted.iter().all(|id| stored.contains(id)));
    app.stop().await;
}

#[tokio::test]
async fn a_trickling_body_gets_408_and_a_silent_connection_is_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_app_with(|c| {
        c.read_timeout = Duration::from_millis(500);
        c.idle_timeout = Duration::from_secs(1);
        c.limits.max_wait = Duration::from_millis(200);
    })
    .await;
    let addr = app.base.trim_start_matches("http://").to_owned();

    // A body that arrives a byte at a time: never idle, but too slow.
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    slow.write_all(
        b"POST /reservations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
          Content-Length: 100\r\n\r\n{",
    )
    .await
    .unwrap();
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let _ = slow.write_all(b" ").await;
    }
    let mut answer = vec![0; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), slow.read(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("--read-timeout"), "{answer}");

    // Headers that never finish: the connection is closed once it has been silent.
    let started = std::time::Instant::now();
    let mut silent = tokio::net::TcpStream::connect(&addr).await.unwrap();
    silent
        .write_all(b"GET /reservations HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = [0; 64];
    let read = tokio::time::timeout(Duration::from_secs(10), silent.read(&mut buf))
        .await
        .expect("the silent connection was closed");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(started.elapsed() >= Duration::from_millis(900));

    let listed = app.get_json("/reservations").await;
    assert_eq!(listed["items"], json!([]));
    app.stop().await;
}
