//! Shared by the test binaries: a real coordinator on a free loopback port, and real
//! participant servers on loopback that record every call they receive.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use poem::http::StatusCode;
use poem::listener::{Acceptor, Listener, TcpListener};
use poem::{handler, web::Data, EndpointExt, Request, Response, Route};
use serde_json::{json, Value};
use tcc_coordinator::{App, Config, StopHandle};

/// How long a test waits for something the coordinator does in the background.
pub const PATIENCE: Duration = Duration::from_secs(15);

/// A coordinator running in this process.
pub struct TestApp {
    pub base: String,
    pub http: reqwest::Client,
    stop: StopHandle,
    server: tokio::task::JoinHandle<Result<(), tcc_coordinator::AppError>>,
}

/// A coordinator with the test defaults: ephemeral log, free port.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// A coordinator with the test defaults changed by `configure`.
pub async fn spawn_app_with(configure: impl FnOnce(&mut Config)) -> TestApp {
    let mut config = Config::ephemeral();
    config.limits.participant_timeout = Duration::from_secs(2);
    config.retry.max_interval = Duration::from_millis(500);
    configure(&mut config);
    let app = App::build(config).await.expect("the coordinator starts");
    let base = format!("http://{}", app.local_addr());
    let stop = app.stop_handle();
    let server = tokio::spawn(app.run_until_stopped());
    TestApp {
        base,
        http: client(),
        stop,
        server,
    }
}

/// An HTTP client that shows redirects instead of following them.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> reqwest::Response {
        self.http
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn post(&self, path: &str) -> reqwest::Response {
        self.http.post(self.url(path)).send().await.unwrap()
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http.get(self.url(path)).send().await.unwrap()
    }

    pub async fn delete(&self, path: &str) -> reqwest::Response {
        self.http.delete(self.url(path)).send().await.unwrap()
    }

    /// Creates a reservation and returns its id, asserting the 202.
    pub async fn create(&self, body: &Value) -> String {
        create(&self.http, &self.base, body).await
    }

    /// Polls `GET /reservations/{id}` until `done` accepts the answer.
    pub async fn wait_for(&self, id: &str, done: impl Fn(u16, &Value) -> bool) -> (u16, Value) {
        wait_for(&self.http, &self.base, id, done).await
    }

    pub async fn stop(self) {
        self.stop.stop();
        self.server.await.unwrap().unwrap();
    }
}

pub async fn create(http: &reqwest::Client, base: &str, body: &Value) -> String {
    let response = http
        .post(format!("{base}/reservations"))
        .json(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202, "{:?}", response.text().await);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let body: Value = response.json().await.unwrap();
    let id = body["id"].as_str().unwrap().to_owned();
    assert_eq!(location, format!("/reservations/{id}"));
    id
}

pub async fn wait_for(
    http: &reqwest::Client,
    base: &str,
    id: &str,
    done: impl Fn(u16, &Value) -> bool,
) -> (u16, Value) {
    let start = Instant::now();
    loop {
        let response = http
            .get(format!("{base}/reservations/{id}"))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if done(status, &body) {
            return (status, body);
        }
        assert!(
            start.elapsed() < PATIENCE,
            "reservation {id} never got there; last answer {status} {body:#}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A finished reservation: 303 (confirmed) or 410 (cancelled) or a terminal 200 (conflict).
pub fn is_settled(status: u16, body: &Value) -> bool {
    status == 303 || status == 410 || body["state"] == "conflict"
}

pub fn in_secs(secs: i64) -> String {
    (Utc::now() + chrono::Duration::seconds(secs)).to_rfc3339()
}

// ---- participants ------------------------------------------------------------------------

/// One call a participant received.
#[derive(Debug, Clone)]
pub struct Call {
    pub method: String,
    pub path: String,
    pub headers: poem::http::HeaderMap,
    pub body: Vec<u8>,
    pub at: Instant,
}

/// How a participant answers.
#[derive(Debug, Clone)]
pub struct Behaviour {
    pub try_status: u16,
    pub confirm_status: u16,
    pub cancel_status: u16,
    /// How long the links handed out by tries live.
    pub link_ttl: chrono::Duration,
    /// How long every answer waits.
    pub delay: Duration,
}

impl Default for Behaviour {
    fn default() -> Self {
        Self {
            try_status: 201,
            confirm_status: 204,
            cancel_status: 204,
            link_ttl: chrono::Duration::seconds(600),
            delay: Duration::ZERO,
        }
    }
}

#[derive(Default)]
struct State {
    calls: Mutex<Vec<Call>>,
    behaviour: Mutex<Behaviour>,
    next_hold: Mutex<u32>,
}

/// A participant service on loopback: tries at `POST /holds`, links at `/holds/{n}`.
pub struct Participant {
    pub base: String,
    state: Arc<State>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Participant {
    fn drop(&mut self) {
        self.server.abort();
    }
}

#[handler]
async fn participant_endpoint(req: &Request, body: Vec<u8>, state: Data<&Arc<State>>) -> Response {
    let behaviour = state.behaviour.lock().unwrap().clone();
    state.calls.lock().unwrap().push(Call {
        method: req.method().to_string(),
        path: req.uri().path().to_owned(),
        headers: req.headers().clone(),
        body,
        at: Instant::now(),
    });
    if !behaviour.delay.is_zero() {
        tokio::time::sleep(behaviour.delay).await;
    }
    let status = |code: u16| StatusCode::from_u16(code).unwrap();
    match req.method().as_str() {
        "POST" => {
            if behaviour.try_status >= 300 {
                return Response::builder()
                    .status(status(behaviour.try_status))
                    .finish();
            }
            let n = {
                let mut next = state.next_hold.lock().unwrap();
                *next += 1;
                *next
            };
            let host = req.header("host").unwrap_or("127.0.0.1");
            let uri = format!("http://{host}/holds/{n}");
            let expires = (Utc::now() + behaviour.link_ttl).to_rfc3339();
            Response::builder()
                .status(status(behaviour.try_status))
                .header("Location", format!("/holds/{n}"))
                .content_type("application/json")
                .body(json!({"uri": uri, "expires": expires}).to_string())
        }
        "PUT" => Response::builder()
            .status(status(behaviour.confirm_status))
            .finish(),
        "DELETE" => Response::builder()
            .status(status(behaviour.cancel_status))
            .finish(),
        _ => Response::builder()
            .status(StatusCode::METHOD_NOT_ALLOWED)
            .finish(),
    }
}

impl Participant {
    pub async fn start() -> Self {
        Self::start_with(Behaviour::default()).await
    }

    pub async fn start_with(behaviour: Behaviour) -> Self {
        let state = Arc::new(State::default());
        *state.behaviour.lock().unwrap() = behaviour;
        let acceptor = TcpListener::bind("127.0.0.1:0")
            .into_acceptor()
            .await
            .unwrap();
        let addr = *acceptor.local_addr()[0].as_socket_addr().unwrap();
        let app = Route::new()
            .at("/*path", participant_endpoint)
            .data(state.clone());
        let server = tokio::spawn(async move {
            let _ = poem::Server::new_with_acceptor(acceptor).run(app).await;
        });
        Self {
            base: format!("http://{addr}"),
            state,
            server,
        }
    }

    pub fn set(&self, change: impl FnOnce(&mut Behaviour)) {
        change(&mut self.state.behaviour.lock().unwrap());
    }

    /// A participant entry with a link the client already holds (hold `n`).
    pub fn link(&self, n: u32) -> Value {
        self.link_expiring(n, &in_secs(600))
    }

    pub fn link_expiring(&self, n: u32, expires: &str) -> Value {
        json!({"name": format!("link-{n}"), "link": {"uri": self.hold_uri(n), "expires": expires}})
    }

    pub fn hold_uri(&self, n: u32) -> String {
        format!("{}/holds/{n}", self.base)
    }

    /// A participant entry the coordinator tries.
    pub fn try_(&self, name: &str) -> Value {
        json!({"name": name, "try": {"url": format!("{}/holds", self.base), "body": {"sku": name}, "headers": {"Authorization": "Bearer secret"}}})
    }

    pub fn calls(&self) -> Vec<Call> {
        self.state.calls.lock().unwrap().clone()
    }

    /// The paths that received `method`, in order.
    pub fn paths(&self, method: &str) -> Vec<String> {
        self.calls()
            .into_iter()
            .filter(|c| c.method == method)
            .map(|c| c.path)
            .collect()
    }

    pub fn count(&self, method: &str) -> usize {
        self.paths(method).len()
    }

    /// Polls until `done` holds for this participant's calls.
    pub async fn wait_until(&self, what: &str, done: impl Fn(&Participant) -> bool) {
        let start = Instant::now();
        while !done(self) {
            assert!(
                start.elapsed() < PATIENCE,
                "{what}: calls were {:?}",
                self.summary()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn summary(&self) -> Vec<String> {
        self.calls()
            .into_iter()
            .map(|c| format!("{} {}", c.method, c.path))
            .collect()
    }
}

pub fn expires_at(body: &Value) -> DateTime<Utc> {
    body["expires_at"].as_str().unwrap().parse().unwrap()
}
