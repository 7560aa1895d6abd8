//! Shared by the test binaries: a real coordinator on a free loopback port, and real
//! participant servers on loopback that record every call they receive.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
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
    let base = app.base_url().to_owned();
    let stop = app.stop_handle();
    let server = tokio::spawn(app.run_until_stopped());
    let app = TestApp {
        base,
        http: client(),
        stop,
        server,
    };
    app.wait_ready().await;
    app
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

    /// `GET path` and its JSON body.
    pub async fn get_json(&self, path: &str) -> Value {
        self.get(path).await.json().await.unwrap()
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

    /// Waits for `/health/ready` (recovery finished: writes are accepted).
    pub async fn wait_ready(&self) {
        // Readiness only: a TLS test's own certificate authority is not needed for it.
        let probe = reqwest::Client::builder()
            .tls_danger_accept_invalid_certs(true)
            .no_proxy()
            .build()
            .unwrap();
        let start = Instant::now();
        loop {
            if let Ok(r) = probe.get(self.url("/health/ready")).send().await {
                if r.status() == 200 {
                    return;
                }
            }
            assert!(
                start.elapsed() < PATIENCE,
                "the coordinator never got ready"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
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

/// `POST {base}/reservations/{id}/{verb}` (`confirm`, `cancel`, `forget`) with no body.
pub async fn decide(http: &reqwest::Client, base: &str, id: &str, verb: &str) -> reqwest::Response {
    http.post(format!("{base}/reservations/{id}/{verb}"))
        .send()
        .await
        .unwrap()
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

/// Polls `check` until it answers `Some`, and returns what it found; fails the test after
/// [`PATIENCE`], naming `what` it waited for.
pub async fn eventually<T, Fut>(what: &str, check: impl FnMut() -> Fut) -> T
where
    Fut: std::future::Future<Output = Option<T>>,
{
    eventually_within(PATIENCE, what, check).await
}

/// [`eventually`] with a patience of its own (a database failing over, a cluster rejoining).
pub async fn eventually_within<T, Fut>(
    patience: Duration,
    what: &str,
    mut check: impl FnMut() -> Fut,
) -> T
where
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(found) = check().await {
            return found;
        }
        assert!(start.elapsed() < patience, "this never happened: {what}");
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
    pub headers: hyper::HeaderMap,
    pub body: Vec<u8>,
    pub at: Instant,
}

/// One scripted answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// The verb's usual success (try: 201 with a link; confirm and cancel: 204).
    Ok,
    /// This status, empty body.
    Status(u16),
    /// This status with `Retry-After: secs`.
    RetryAfter(u16, u64),
    /// This status and this raw body (for answers that break the contract).
    Body(u16, String),
    /// `307 Temporary Redirect` to this URL.
    Redirect(String),
    /// Close the connection without answering.
    Close,
    /// The usual success, after this delay.
    Slow(Duration),
    /// The usual success, once the test calls [`Participant::release`]: a call held in
    /// flight for as long as the test needs, whatever the machine's speed.
    UntilReleased,
}

/// How a participant answers: scripted replies first, then the defaults.
#[derive(Debug, Clone)]
pub struct Behaviour {
    pub try_reply: Reply,
    pub confirm_reply: Reply,
    pub cancel_reply: Reply,
    /// How long the links handed out by tries live.
    pub link_ttl: chrono::Duration,
}

impl Default for Behaviour {
    fn default() -> Self {
        Self {
            try_reply: Reply::Ok,
            confirm_reply: Reply::Ok,
            cancel_reply: Reply::Ok,
            link_ttl: chrono::Duration::seconds(600),
        }
    }
}

#[derive(Default)]
struct Shared {
    calls: Mutex<Vec<Call>>,
    behaviour: Mutex<Behaviour>,
    scripts: Mutex<std::collections::HashMap<&'static str, std::collections::VecDeque<Reply>>>,
    /// Hold numbers by `Idempotency-Key`, so a repeated try gets the same link.
    holds_by_key: Mutex<std::collections::HashMap<String, u32>>,
    next_hold: Mutex<u32>,
    /// Opened by [`Participant::release`] for calls answered [`Reply::UntilReleased`].
    released: tokio::sync::watch::Sender<bool>,
}

/// A participant service on loopback: tries at `POST /holds`, links at `/holds/{n}`. It can
/// be stopped and started again on the same port.
pub struct Participant {
    pub base: String,
    addr: std::net::SocketAddr,
    shared: Arc<Shared>,
    server: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Drop for Participant {
    fn drop(&mut self) {
        if let Some(server) = self.server.lock().unwrap().take() {
            server.abort();
        }
    }
}

fn verb(method: &hyper::Method) -> &'static str {
    match method.as_str() {
        "POST" => "try",
        "PUT" => "confirm",
        "DELETE" => "cancel",
        _ => "other",
    }
}

type Answer = Result<hyper::Response<http_body_util::Full<bytes::Bytes>>, std::io::Error>;

async fn answer(shared: Arc<Shared>, request: hyper::Request<hyper::body::Incoming>) -> Answer {
    use http_body_util::BodyExt;
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes().to_vec())
        .unwrap_or_default();
    shared.calls.lock().unwrap().push(Call {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        headers: parts.headers.clone(),
        body,
        at: Instant::now(),
    });
    let verb = verb(&parts.method);
    let behaviour = shared.behaviour.lock().unwrap().clone();
    let scripted = shared
        .scripts
        .lock()
        .unwrap()
        .get_mut(verb)
        .and_then(std::collections::VecDeque::pop_front);
    let reply = scripted.unwrap_or(match verb {
        "try" => behaviour.try_reply.clone(),
        "confirm" => behaviour.confirm_reply.clone(),
        "cancel" => behaviour.cancel_reply.clone(),
        _ => Reply::Status(405),
    });
    let respond = |status: u16, body: String| {
        Ok(hyper::Response::builder()
            .status(status)
            .body(http_body_util::Full::new(bytes::Bytes::from(body)))
            .unwrap())
    };
    match reply {
        Reply::Close => Err(std::io::Error::other(
            "closing the connection without an answer",
        )),
        Reply::Status(code) => respond(code, String::new()),
        Reply::Redirect(to) => {
            let mut response = respond(307, String::new())?;
            response
                .headers_mut()
                .insert("location", to.parse().unwrap());
            Ok(response)
        }
        Reply::RetryAfter(code, secs) => {
            let mut response = respond(code, String::new())?;
            response.headers_mut().insert("retry-after", secs.into());
            Ok(response)
        }
        Reply::Body(code, body) => respond(code, body),
        Reply::Slow(delay) => {
            tokio::time::sleep(delay).await;
            success(&shared, &parts, verb, &behaviour)
        }
        Reply::UntilReleased => {
            let mut released = shared.released.subscribe();
            let _ = released.wait_for(|open| *open).await;
            success(&shared, &parts, verb, &behaviour)
        }
        Reply::Ok => success(&shared, &parts, verb, &behaviour),
    }
}

fn success(
    shared: &Shared,
    parts: &hyper::http::request::Parts,
    verb: &str,
    behaviour: &Behaviour,
) -> Answer {
    if verb != "try" {
        return Ok(hyper::Response::builder()
            .status(204)
            .body(http_body_util::Full::default())
            .unwrap());
    }
    let key = parts
        .headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let n = *shared
        .holds_by_key
        .lock()
        .unwrap()
        .entry(key)
        .or_insert_with(|| {
            let mut next = shared.next_hold.lock().unwrap();
            *next += 1;
            *next
        });
    let host = parts
        .headers
        .get("host")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("127.0.0.1");
    let uri = format!("http://{host}/holds/{n}");
    let expires = (Utc::now() + behaviour.link_ttl).to_rfc3339();
    Ok(hyper::Response::builder()
        .status(201)
        .header("location", format!("/holds/{n}"))
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(
            json!({"uri": uri, "expires": expires}).to_string(),
        )))
        .unwrap())
}

async fn serve(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let shared = shared.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |req| answer(shared.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

impl Participant {
    pub async fn start() -> Self {
        Self::start_with(Behaviour::default()).await
    }

    pub async fn start_with(behaviour: Behaviour) -> Self {
        let shared = Arc::new(Shared::default());
        *shared.behaviour.lock().unwrap() = behaviour;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(serve(listener, shared.clone()));
        Self {
            base: format!("http://{addr}"),
            addr,
            shared,
            server: Mutex::new(Some(server)),
        }
    }

    /// Stops answering: the port refuses connections, open connections are closed.
    pub fn stop(&self) {
        if let Some(server) = self.server.lock().unwrap().take() {
            server.abort();
        }
    }

    /// Serves again on the same port, with the same holds and records.
    pub async fn restart(&self) {
        let listener = tokio::net::TcpListener::bind(self.addr).await.unwrap();
        *self.server.lock().unwrap() = Some(tokio::spawn(serve(listener, self.shared.clone())));
    }

    pub fn set(&self, change: impl FnOnce(&mut Behaviour)) {
        change(&mut self.shared.behaviour.lock().unwrap());
    }

    /// Answers the next calls of `verb` ("try", "confirm" or "cancel") with `replies`, in
    /// order, before the defaults apply again.
    pub fn script(&self, verb: &'static str, replies: impl IntoIterator<Item = Reply>) {
        self.shared
            .scripts
            .lock()
            .unwrap()
            .entry(verb)
            .or_default()
            .extend(replies);
    }

    /// Answers the calls held by [`Reply::UntilReleased`], and every later one at once.
    pub fn release(&self) {
        self.shared.released.send_replace(true);
    }

    /// Drops the replies still scripted for `verb`: the defaults apply from the next call.
    pub fn clear_script(&self, verb: &'static str) {
        self.shared.scripts.lock().unwrap().remove(verb);
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
        self.shared.calls.lock().unwrap().clone()
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

    /// When each call of `method` arrived.
    pub fn times(&self, method: &str) -> Vec<Instant> {
        self.calls()
            .into_iter()
            .filter(|c| c.method == method)
            .map(|c| c.at)
            .collect()
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

/// Returns once `instant` (a deadline the coordinator stated) has passed: a wait computed from
/// the coordinator's own answer, not a guess at how long something takes.
pub async fn wait_past(instant: DateTime<Utc>) {
    let left = (instant - Utc::now()).to_std().unwrap_or_default();
    tokio::time::sleep(left + Duration::from_millis(20)).await;
    assert!(Utc::now() > instant);
}

// ---- an OTLP collector ---------------------------------------------------------------------

/// One span as the collector received it: ids in hex, parent empty for a root.
#[derive(Debug, Clone)]
pub struct ExportedSpan {
    pub trace: String,
    pub id: String,
    pub parent: String,
    pub name: String,
    pub attributes: Vec<(String, String)>,
}

impl ExportedSpan {
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// A small OTLP/HTTP collector: `POST /v1/traces` with an `ExportTraceServiceRequest` in
/// protobuf; keeps every span it receives.
pub struct Collector {
    pub base: String,
    spans: std::sync::Arc<std::sync::Mutex<Vec<ExportedSpan>>>,
    state: std::sync::Arc<Held>,
    server: tokio::task::JoinHandle<()>,
}

/// Whether the collector answers, and how many exports arrived.
#[derive(Default)]
struct Held {
    open: tokio::sync::watch::Sender<bool>,
    requests: std::sync::atomic::AtomicUsize,
}

impl Collector {
    pub async fn start() -> Self {
        let collector = Self::start_held().await;
        collector.release();
        collector
    }

    /// A collector that takes each export in and answers none until [`Collector::release`].
    pub async fn start_held() -> Self {
        use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
        use poem::listener::{Acceptor, Listener};
        use poem::{handler, post, web::Data, EndpointExt, Route};
        use prost::Message;

        type Spans = std::sync::Arc<std::sync::Mutex<Vec<ExportedSpan>>>;

        #[handler]
        async fn export(
            body: Vec<u8>,
            spans: Data<&Spans>,
            state: Data<&std::sync::Arc<Held>>,
        ) -> poem::Result<()> {
            state
                .requests
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut open = state.open.subscribe();
            let _ = open.wait_for(|open| *open).await;
            let request = ExportTraceServiceRequest::decode(body.as_slice()).map_err(|e| {
                poem::Error::from_string(e.to_string(), poem::http::StatusCode::BAD_REQUEST)
            })?;
            let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
            let mut kept = spans.lock().unwrap();
            for resource in request.resource_spans {
                for scope in resource.scope_spans {
                    for span in scope.spans {
                        kept.push(ExportedSpan {
                            trace: hex(&span.trace_id),
                            id: hex(&span.span_id),
                            parent: hex(&span.parent_span_id),
                            name: span.name,
                            attributes: span
                                .attributes
                                .into_iter()
                                .map(|kv| (kv.key, format!("{:?}", kv.value.and_then(|v| v.value))))
                                .collect(),
                        });
                    }
                }
            }
            Ok(())
        }

        let spans = Spans::default();
        let state = std::sync::Arc::new(Held::default());
        let acceptor = poem::listener::TcpListener::bind("127.0.0.1:0")
            .into_acceptor()
            .await
            .unwrap();
        let addr = *acceptor.local_addr()[0].as_socket_addr().unwrap();
        let app = Route::new()
            .at("/v1/traces", post(export))
            .data(spans.clone())
            .data(state.clone());
        let server = tokio::spawn(async move {
            let _ = poem::Server::new_with_acceptor(acceptor).run(app).await;
        });
        Self {
            base: format!("http://{addr}"),
            spans,
            state,
            server,
        }
    }

    pub fn release(&self) {
        self.state.open.send_replace(true);
    }

    pub fn requests(&self) -> usize {
        self.state
            .requests
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn spans(&self) -> Vec<ExportedSpan> {
        self.spans.lock().unwrap().clone()
    }

    /// Waits until `n` spans have arrived, and checks that no more did.
    pub async fn received(&self, n: usize, what: &str) -> Vec<ExportedSpan> {
        let spans = eventually(&format!("the collector receives {n} spans"), || {
            let spans = self.spans();
            async move { (spans.len() >= n).then_some(spans) }
        })
        .await;
        assert_eq!(spans.len(), n, "{what}: {spans:#?}");
        spans
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// The one span named `name`.
pub fn one<'a>(spans: &'a [ExportedSpan], name: &str) -> &'a ExportedSpan {
    let found: Vec<_> = spans.iter().filter(|s| s.name == name).collect();
    assert_eq!(found.len(), 1, "one `{name}` span in {spans:#?}");
    found[0]
}
