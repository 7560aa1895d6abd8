//! Who may do what: tokens with names and roles from `--api-tokens-file`, 403 naming the role
//! an operation needs (and nothing changed), and every operator action on the record.

use serde_json::{json, Value};
use tcc_coordinator::ApiToken;

use crate::helpers::{is_settled, spawn_app_with, Participant, Reply, TestApp};

const VIEWER: &str = "viewer-secret-0123456789";
const CLIENT: &str = "client-secret-0123456789";
const OPERATOR: &str = "operator-secret-0123456";
const FLAG_TOKEN: &str = "flag-token-0123456789";

/// A coordinator with a tokens file (grafana: viewer, ci: client, alice: operator) and one
/// `--api-token`, which is an operator's.
async fn with_roles() -> (TestApp, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens");
    std::fs::write(
        &file,
        format!(
            "# name  role  secret\ngrafana viewer {VIEWER}\nci client {CLIENT}  # the CI pipeline\n\nalice operator {OPERATOR}\n"
        ),
    )
    .unwrap();
    let mut app = spawn_app_with(|c| {
        c.api_tokens_file = Some(file);
        c.api_tokens = vec![ApiToken::new(FLAG_TOKEN)];
    })
    .await;
    // The helpers' own reads (waiting for a state) go as a viewer; `send` overrides it.
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {VIEWER}").parse().unwrap(),
    );
    app.http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .default_headers(headers)
        .build()
        .unwrap();
    (app, dir)
}

async fn send(
    app: &TestApp,
    token: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> (u16, Value) {
    let mut request = app
        .http
        .request(method.parse().unwrap(), app.url(path))
        .bearer_auth(token);
    if let Some(body) = body {
        request = request.json(body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// The reservation as an operator reads it (its state, its participants, its history).
async fn events(app: &TestApp, id: &str) -> Value {
    send(
        app,
        OPERATOR,
        "GET",
        &format!("/reservations/{id}/events"),
        None,
    )
    .await
    .1
}

/// The operators' actions in a reservation's history.
fn acted(history: &Value) -> Vec<&Value> {
    history["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "acted")
        .collect()
}

fn assert_forbidden(answer: &(u16, Value), role: &str, what: &str) {
    assert_eq!(answer.0, 403, "{what}: {}", answer.1);
    assert_eq!(answer.1["required_role"], role, "{what}");
    assert_eq!(answer.1["type"], "urn:tcc-coordinator:problem:forbidden");
    assert!(
        answer.1["detail"].as_str().unwrap().contains(role),
        "{what}: {}",
        answer.1
    );
}

#[tokio::test]
async fn each_role_may_do_its_part_and_is_refused_the_rest_with_nothing_changed() {
    let (app, _dir) = with_roles().await;
    let p = Participant::start().await;
    let create = |n: u32| json!({"participants": [p.link(n)]});
    let listed = || async {
        send(&app, OPERATOR, "GET", "/reservations?limit=1000", None)
            .await
            .1["items"]
            .as_array()
            .unwrap()
            .len()
    };

    // Who each token is.
    for (token, name, role) in [
        (VIEWER, "grafana", "viewer"),
        (CLIENT, "ci", "client"),
        (OPERATOR, "alice", "operator"),
        (FLAG_TOKEN, "api-token", "operator"),
    ] {
        let (status, me) = send(&app, token, "GET", "/whoami", None).await;
        assert_eq!(
            (status, me["name"].as_str(), me["role"].as_str()),
            (200, Some(name), Some(role))
        );
    }

    // A viewer reads, and creates, joins, confirms, cancels nothing.
    let id = app_create(&app, CLIENT, &create(1)).await;
    for path in [
        "/reservations".to_owned(),
        format!("/reservations/{id}"),
        format!("/reservations/{id}/events"),
    ] {
        assert_eq!(
            send(&app, VIEWER, "GET", &path, None).await.0,
            200,
            "{path}"
        );
    }
    let before = listed().await;
    assert_forbidden(
        &send(&app, VIEWER, "POST", "/reservations", Some(&create(2))).await,
        "client",
        "viewer creates",
    );
    assert_eq!(listed().await, before, "nothing stored");
    for (method, path, body) in [
        ("POST", format!("/reservations/{id}/confirm"), None),
        ("POST", format!("/reservations/{id}/cancel"), None),
        ("DELETE", format!("/reservations/{id}"), None),
        (
            "POST",
            format!("/reservations/{id}/participants"),
            Some(p.link(3)),
        ),
    ] {
        assert_forbidden(
            &send(&app, VIEWER, method, &path, body.as_ref()).await,
            "client",
            &path,
        );
    }
    let unchanged = events(&app, &id).await;
    assert_eq!(unchanged["state"], "reserved");
    assert_eq!(unchanged["participants"].as_array().unwrap().len(), 1);

    // A client decides, but neither forgets a conflict nor retries a participant now.
    let (status, _) = send(
        &app,
        CLIENT,
        "POST",
        &format!("/reservations/{id}/confirm"),
        None,
    )
    .await;
    assert!(matches!(status, 202 | 303), "{status}");
    let gone = Participant::start().await;
    gone.script("confirm", [Reply::Status(404)]);
    let conflict = app_create(
        &app,
        CLIENT,
        &json!({"participants": [p.link(4), gone.link(5)]}),
    )
    .await;
    send(
        &app,
        CLIENT,
        "POST",
        &format!("/reservations/{conflict}/confirm"),
        None,
    )
    .await;
    app.wait_for(&conflict, |_, body| body["state"] == "conflict")
        .await;
    let waiting = Participant::start().await;
    waiting.script("confirm", [Reply::RetryAfter(503, 3600)]);
    let stuck = app_create(&app, CLIENT, &json!({"participants": [waiting.link(6)]})).await;
    send(
        &app,
        CLIENT,
        "POST",
        &format!("/reservations/{stuck}/confirm"),
        None,
    )
    .await;
    app.wait_for(&stuck, |_, body| {
        !body["participants"][0]["next_attempt_at"].is_null()
    })
    .await;
    for token in [VIEWER, CLIENT] {
        assert_forbidden(
            &send(
                &app,
                token,
                "POST",
                &format!("/reservations/{conflict}/forget"),
                None,
            )
            .await,
            "operator",
            "forget",
        );
        assert_forbidden(
            &send(
                &app,
                token,
                "POST",
                &format!("/reservations/{stuck}/participants/0/retry"),
                None,
            )
            .await,
            "operator",
            "retry now",
        );
        assert_forbidden(
            &send(
                &app,
                token,
                "POST",
                &format!(
                    "/participants/retry?participant_host={}",
                    waiting.base.trim_start_matches("http://")
                ),
                None,
            )
            .await,
            "operator",
            "retry now on a host",
        );
    }
    assert_eq!(
        events(&app, &conflict).await["state"],
        "conflict",
        "not forgotten"
    );
    assert_eq!(waiting.count("PUT"), 1, "not called again");

    // An operator does both, and each is on the record with its name.
    assert_eq!(
        send(
            &app,
            OPERATOR,
            "POST",
            &format!("/reservations/{stuck}/participants/0/retry"),
            None
        )
        .await
        .0,
        202
    );
    let (status, _) = app.wait_for(&stuck, is_settled).await;
    assert_eq!(status, 303);
    assert_eq!(
        send(
            &app,
            OPERATOR,
            "POST",
            &format!("/reservations/{conflict}/forget"),
            None
        )
        .await
        .0,
        204
    );
    let who_did_what = |history: &Value| -> Vec<(String, String, Value)> {
        acted(history)
            .iter()
            .map(|e| {
                (
                    e["by"].as_str().unwrap().to_owned(),
                    e["action"].as_str().unwrap().to_owned(),
                    e["participant_name"].clone(),
                )
            })
            .collect()
    };
    assert_eq!(
        who_did_what(&events(&app, &stuck).await),
        [("alice".to_owned(), "retry_now".to_owned(), json!("link-6"))]
    );
    assert_eq!(
        who_did_what(&events(&app, &conflict).await),
        [("alice".to_owned(), "forget".to_owned(), Value::Null)]
    );
    app.stop().await;
}

/// Creates a reservation with this token, asserting the 202; returns its id.
async fn app_create(app: &TestApp, token: &str, body: &Value) -> String {
    let (status, created) = send(app, token, "POST", "/reservations", Some(body)).await;
    assert_eq!(status, 202, "{created}");
    created["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn an_operators_cancel_and_confirm_say_who_and_a_clients_do_not() {
    let (app, _dir) = with_roles().await;
    let p = Participant::start().await;

    let by_client = app_create(&app, CLIENT, &json!({"participants": [p.link(1)]})).await;
    send(
        &app,
        CLIENT,
        "POST",
        &format!("/reservations/{by_client}/cancel"),
        None,
    )
    .await;
    let by_operator = app_create(&app, CLIENT, &json!({"participants": [p.link(2)]})).await;
    assert_eq!(
        send(
            &app,
            OPERATOR,
            "POST",
            &format!("/reservations/{by_operator}/cancel"),
            None
        )
        .await
        .0,
        202
    );
    let confirmed = app_create(&app, CLIENT, &json!({"participants": [p.link(3)]})).await;
    let (status, _) = send(
        &app,
        OPERATOR,
        "POST",
        &format!("/reservations/{confirmed}/confirm"),
        None,
    )
    .await;
    assert!(matches!(status, 202 | 303));

    for id in [&by_client, &by_operator, &confirmed] {
        app.wait_for(id, is_settled).await;
    }
    let client = events(&app, &by_client).await;
    assert_eq!(client["reason"], "client");
    assert!(acted(&client).is_empty());

    let operator = events(&app, &by_operator).await;
    assert_eq!(
        operator["reason"], "operator",
        "the decision's reason says an operator cancelled"
    );
    let (status, gone) = send(
        &app,
        CLIENT,
        "GET",
        &format!("/reservations/{by_operator}"),
        None,
    )
    .await;
    assert_eq!((status, gone["reason"].as_str()), (410, Some("operator")));
    let cancel = acted(&operator);
    assert_eq!(cancel.len(), 1, "{operator}");
    assert_eq!(
        (cancel[0]["by"].as_str(), cancel[0]["action"].as_str()),
        (Some("alice"), Some("cancel"))
    );
    assert!(cancel[0]["at"].is_string());

    let confirm = events(&app, &confirmed).await;
    let confirmed_by = acted(&confirm);
    assert_eq!(
        (confirmed_by.len(), confirmed_by[0]["action"].as_str()),
        (1, Some("confirm"))
    );

    // Repeating a decision changes nothing, so nothing more is recorded.
    send(
        &app,
        OPERATOR,
        "POST",
        &format!("/reservations/{by_operator}/cancel"),
        None,
    )
    .await;
    let again = events(&app, &by_operator).await;
    assert_eq!(acted(&again).len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn a_tokens_file_with_a_bad_line_stops_the_start_naming_the_line_not_the_secret() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens");
    std::fs::write(
        &file,
        format!("ci client {CLIENT}\nbob superuser {OPERATOR}\n"),
    )
    .unwrap();
    let mut config = tcc_coordinator::Config::ephemeral();
    config.api_tokens_file = Some(file);
    let error = tcc_coordinator::App::build(config)
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(error.contains("line 2: unknown role"), "{error}");
    assert!(
        !error.contains(OPERATOR) && !error.contains(CLIENT),
        "{error}"
    );
}
