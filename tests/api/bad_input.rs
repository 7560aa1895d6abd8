//! Bad input gets a problem+json naming the problem, and nothing is stored.

use serde_json::{json, Value};

use crate::helpers::{in_secs, spawn_app, spawn_app_with, Participant, TestApp};

/// Sends `body` raw to `POST /reservations`; asserts the status, problem+json, the named
/// field, and that no reservation exists afterwards.
async fn rejects(app: &TestApp, body: &str, status: u16, field: Option<&str>) -> Value {
    let response = app
        .http
        .post(app.url("/reservations"))
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), status, "{body}");
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["status"], status, "{problem}");
    assert!(problem["type"]
        .as_str()
        .unwrap()
        .starts_with("urn:tcc-coordinator:problem:"));
    assert!(!problem["detail"].as_str().unwrap().is_empty());
    if let Some(field) = field {
        assert_eq!(problem["field"], field, "{problem}");
    }
    nothing_stored(app).await;
    problem
}

async fn nothing_stored(app: &TestApp) {
    let page: Value = app.get("/reservations").await.json().await.unwrap();
    assert_eq!(
        page["items"],
        json!([]),
        "a rejected request left a reservation behind"
    );
}

#[tokio::test]
async fn malformed_json_is_400() {
    let app = spawn_app().await;
    rejects(&app, r#"{"timeout_ms": 10"#, 400, None).await;
    rejects(&app, "", 400, None).await;
    app.stop().await;
}

#[tokio::test]
async fn a_field_of_the_wrong_type_is_422_naming_it() {
    let app = spawn_app().await;
    rejects(&app, r#"{"timeout_ms": "soon"}"#, 422, Some("timeout_ms")).await;
    rejects(&app, r#"{"participants": {}}"#, 422, Some("participants")).await;
    rejects(
        &app,
        r#"{"participants": [{"link": {"uri": "http://a/1", "expires": "tomorrow"}}]}"#,
        422,
        Some("participants[0].link.expires"),
    )
    .await;
    rejects(&app, r#"{"timeout": 5}"#, 422, Some("timeout")).await;
    app.stop().await;
}

#[tokio::test]
async fn a_participant_uri_that_is_not_http_is_422_naming_it() {
    let app = spawn_app().await;
    let expires = in_secs(60);
    for uri in [
        "ftp://stock/holds/1",
        "file:///etc/passwd",
        "/holds/1",
        "http://user:pw@stock/1",
    ] {
        let body = json!({"participants": [
            {"link": {"uri": "http://ok/1", "expires": expires}},
            {"link": {"uri": uri, "expires": expires}},
        ]});
        rejects(
            &app,
            &body.to_string(),
            422,
            Some("participants[1].link.uri"),
        )
        .await;
    }
    let body = json!({"participants": [{"try": {"url": "gopher://x/holds"}}]});
    rejects(
        &app,
        &body.to_string(),
        422,
        Some("participants[0].try.url"),
    )
    .await;
    app.stop().await;
}

#[tokio::test]
async fn a_participant_with_both_or_neither_link_and_try_is_422() {
    let app = spawn_app().await;
    let p = Participant::start().await;
    let both = json!({"participants": [{"link": p.link(1)["link"], "try": p.try_("x")["try"]}]});
    rejects(&app, &both.to_string(), 422, Some("participants[0]")).await;
    rejects(
        &app,
        r#"{"participants": [{"name": "x"}]}"#,
        422,
        Some("participants[0]"),
    )
    .await;
    app.stop().await;
}

#[tokio::test]
async fn a_link_expiring_in_the_past_is_422_naming_it() {
    let app = spawn_app().await;
    let p = Participant::start().await;
    let body = json!({"participants": [p.link_expiring(1, &in_secs(-5))]});
    rejects(
        &app,
        &body.to_string(),
        422,
        Some("participants[0].link.expires"),
    )
    .await;
    assert!(p.calls().is_empty());

    // Joining: the body is the participant itself, so the path starts at `link`.
    let id = app.create(&json!({"participants": [p.link(2)]})).await;
    let joined = app
        .post_json(
            &format!("/reservations/{id}/participants"),
            &p.link_expiring(3, &in_secs(-5)),
        )
        .await;
    assert_eq!(joined.status(), 422);
    let problem: serde_json::Value = joined.json().await.unwrap();
    assert_eq!(problem["field"], "link.expires", "{problem}");
    app.stop().await;
}

#[tokio::test]
async fn a_timeout_of_zero_or_above_the_maximum_is_422() {
    let app = spawn_app().await;
    rejects(&app, r#"{"timeout_ms": 0}"#, 422, Some("timeout_ms")).await;
    rejects(&app, r#"{"timeout_ms": 3600001}"#, 422, Some("timeout_ms")).await;
    rejects(&app, r#"{"timeout_ms": -1}"#, 422, Some("timeout_ms")).await;
    app.stop().await;
}

#[tokio::test]
async fn too_many_participants_is_422() {
    let app = spawn_app_with(|c| c.limits.max_participants = 3).await;
    let p = Participant::start().await;
    let body = json!({"participants": [p.link(1), p.link(2), p.link(3), p.link(4)]});
    rejects(&app, &body.to_string(), 422, Some("participants")).await;

    let id = app
        .create(&json!({"participants": [p.link(1), p.link(2), p.link(3)]}))
        .await;
    let join = app
        .post_json(&format!("/reservations/{id}/participants"), &p.link(4))
        .await;
    assert_eq!(join.status(), 422);
    let problem: Value = join.json().await.unwrap();
    assert_eq!(problem["field"], "participants");
    app.stop().await;
}

#[tokio::test]
async fn a_body_over_the_limit_is_413() {
    let app = spawn_app_with(|c| c.max_body_bytes = 4096).await;
    let big = json!({"metadata": {"blob": "x".repeat(5000)}});
    rejects(&app, &big.to_string(), 413, None).await;

    // Without Content-Length (chunked), the limit holds while reading.
    let body = big.to_string();
    let addr = app.base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "POST /reservations HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
        body.len()
    );
    tokio::io::AsyncWriteExt::write_all(&mut stream, request.as_bytes())
        .await
        .unwrap();
    let mut answer = String::new();
    let _ = tokio::io::AsyncReadExt::read_to_string(&mut stream, &mut answer).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    nothing_stored(&app).await;
    app.stop().await;
}

#[tokio::test]
async fn an_unknown_id_is_404_for_every_verb() {
    let app = spawn_app().await;
    // A fresh id: ids older than the retention answer 410 (they may have been purged).
    let unknown = uuid::Uuid::now_v7().to_string();
    for path in [
        format!("/reservations/{unknown}"),
        "/reservations/not-an-id".to_owned(),
    ] {
        let get = app.get(&path).await;
        assert_eq!(get.status(), 404);
        assert_eq!(get.headers()["content-type"], "application/problem+json");
        assert_eq!(app.post(&format!("{path}/confirm")).await.status(), 404);
        assert_eq!(app.post(&format!("{path}/cancel")).await.status(), 404);
        assert_eq!(app.delete(&path).await.status(), 404);
    }
    assert_eq!(
        app.get(&format!("/transactions/{unknown}")).await.status(),
        404
    );
    app.stop().await;
}

#[tokio::test]
async fn confirm_while_trying_is_409_and_calls_no_participant() {
    let app = spawn_app().await;
    let slow = Participant::start_with(crate::helpers::Behaviour {
        try_reply: crate::helpers::Reply::Slow(std::time::Duration::from_millis(800)),
        ..Default::default()
    })
    .await;
    let id = app
        .create(&json!({"participants": [slow.try_("slow")]}))
        .await;

    let confirm = app.post(&format!("/reservations/{id}/confirm")).await;

    assert_eq!(confirm.status(), 409);
    assert_eq!(
        confirm.headers()["content-type"],
        "application/problem+json"
    );
    app.wait_for(&id, |_, b| b["state"] == "reserved").await;
    assert_eq!(slow.count("PUT"), 0);
    app.stop().await;
}

#[tokio::test]
async fn cancel_after_confirmed_is_409_and_sends_no_delete() {
    let app = spawn_app().await;
    let p = Participant::start().await;
    let id = app.create(&json!({"participants": [p.link(1)]})).await;
    app.post(&format!("/reservations/{id}/confirm")).await;
    app.wait_for(&id, |s, _| s == 303).await;

    assert_eq!(
        app.post(&format!("/reservations/{id}/cancel"))
            .await
            .status(),
        409
    );
    assert_eq!(
        app.delete(&format!("/reservations/{id}")).await.status(),
        409
    );
    assert_eq!(p.count("DELETE"), 0);
    app.stop().await;
}

#[tokio::test]
async fn a_bad_listing_query_is_400_naming_the_parameter() {
    let app = spawn_app().await;
    for (query, field) in [
        ("state=sleeping", "state"),
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("after=x", "after"),
    ] {
        let response = app.get(&format!("/reservations?{query}")).await;
        assert_eq!(response.status(), 400, "{query}");
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["field"], field, "{query}: {problem}");
    }
    app.stop().await;
}

#[tokio::test]
async fn an_unknown_path_or_method_is_problem_json() {
    let app = spawn_app().await;
    let response = app.get("/nowhere").await;
    assert_eq!(response.status(), 404);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let response = app
        .http
        .patch(app.url("/reservations"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_wrong_method_is_405_naming_the_allowed_ones() {
    let app = spawn_app().await;
    let response = app
        .http
        .request(reqwest::Method::PATCH, app.url("/reservations"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(response.headers()["allow"], "POST, GET, HEAD");
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let response = app
        .http
        .delete(app.url("/reservations/0190a4e2-0000-7000-8000-000000000000/confirm"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(response.headers()["allow"], "POST");
    app.stop().await;
}

#[tokio::test]
async fn too_many_request_headers_are_431() {
    let app = spawn_app().await;
    let mut request = app.http.get(app.url("/reservations"));
    for i in 0..150 {
        request = request.header(format!("x-filler-{i}"), "x");
    }
    assert_eq!(request.send().await.unwrap().status(), 431);
    app.stop().await;
}
