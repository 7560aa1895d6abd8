//! A scriptable fake participant, for tests of a choreography in any language: the kit's
//! contract with holds in memory (tries at `POST /holds`, links `/holds/{id}`), plus a control
//! API (`/_script`, `/_calls`, `/_holds`, `/_reset`) documented in its own OpenAPI document.
//!
//! From Rust, [`FakeParticipant::start`] runs one in-process on port 0; from any language,
//! start the `tcc-fake-participant` binary with `--listen 127.0.0.1:0 --port-file FILE`.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use poem::http::{Method, StatusCode};
use poem::{Endpoint, EndpointExt, IntoResponse, Request, Response, Route};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Enum, Object, OpenApi, OpenApiService};
use serde::{Deserialize, Serialize};

use crate::api::Problem;
use crate::desk::Desk;
use crate::{HoldView, Participant, Refusal, Resource, Serving, TryContext, Unavailable};

/// A participant call the fake can script.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Enum)]
#[serde(rename_all = "lowercase")]
#[oai(rename_all = "lowercase", rename = "Verb")]
pub enum Verb {
    /// `POST /holds`.
    Try,
    /// `PUT /holds/{id}`.
    Confirm,
    /// `DELETE /holds/{id}`.
    Cancel,
}

/// One scripted answer. Unknown fields are refused (a typo would otherwise script nothing).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Object)]
#[oai(rename = "ScriptedAnswer", deny_unknown_fields)]
pub struct Answer {
    /// The status to answer.
    #[oai(validator(minimum(value = "200"), maximum(value = "599")))]
    pub status: u16,
    /// How long to wait before answering, in milliseconds.
    #[oai(default)]
    #[serde(default)]
    pub delay_ms: u64,
    /// Make the change first (hold, confirm or cancel as an unscripted call would), then
    /// answer as scripted: the answer-lost case.
    #[oai(default)]
    #[serde(default)]
    pub apply: bool,
    /// A `Retry-After` header (seconds) to answer with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_secs: Option<u64>,
}

impl Answer {
    /// Answers `status` at once, changing nothing.
    #[must_use]
    pub fn status(status: u16) -> Self {
        Self {
            status,
            delay_ms: 0,
            apply: false,
            retry_after_secs: None,
        }
    }

    /// Waits `delay` before answering.
    #[must_use]
    pub fn after(mut self, delay: Duration) -> Self {
        self.delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self
    }

    /// Makes the change before answering.
    #[must_use]
    pub fn applied(mut self) -> Self {
        self.apply = true;
        self
    }
}

/// Answers queued for the next calls of one verb. Unknown fields are refused.
#[derive(Debug, Clone, Serialize, Deserialize, Object)]
#[oai(rename = "Script", deny_unknown_fields)]
pub struct Script {
    pub verb: Verb,
    /// Used in order, one per call; once used up, calls are answered normally.
    pub answers: Vec<Answer>,
}

/// A call the fake received.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Object)]
#[oai(rename = "Call")]
pub struct Call {
    pub verb: Verb,
    /// The hold called (for a try: the hold it made, if any).
    pub hold: Option<String>,
    /// The status answered; empty while the call is in progress.
    pub status: Option<u16>,
    /// Whether the answer came from a script (`/_script`) rather than the contract's usual
    /// answer.
    pub scripted: bool,
    /// When the call arrived.
    pub at: DateTime<Utc>,
    pub idempotency_key: Option<String>,
    /// `TCC-Reservation`.
    pub reservation: Option<String>,
    /// `TCC-Deadline`.
    pub deadline: Option<String>,
    pub traceparent: Option<String>,
}

#[derive(Default)]
struct Recorder {
    scripts: Mutex<[VecDeque<Answer>; 3]>,
    calls: Mutex<Vec<Call>>,
}

impl Recorder {
    fn script(&self, verb: Verb, answers: impl IntoIterator<Item = Answer>) {
        self.scripts.lock().expect("poisoned")[verb as usize].extend(answers);
    }

    fn next_answer(&self, verb: Verb) -> Option<Answer> {
        self.scripts.lock().expect("poisoned")[verb as usize].pop_front()
    }

    fn arrive(&self, call: Call) -> usize {
        let mut calls = self.calls.lock().expect("poisoned");
        calls.push(call);
        calls.len() - 1
    }

    fn answered(&self, index: usize, status: StatusCode, hold: Option<String>) {
        let mut calls = self.calls.lock().expect("poisoned");
        if let Some(call) = calls.get_mut(index) {
            call.status = Some(status.as_u16());
            if call.hold.is_none() {
                call.hold = hold;
            }
        }
    }

    fn clear_scripts(&self) {
        *self.scripts.lock().expect("poisoned") = Default::default();
    }

    fn reset(&self) {
        self.clear_scripts();
        self.calls.lock().expect("poisoned").clear();
    }
}

/// Holds anything; confirms and releases at once.
struct Anything;

impl Resource for Anything {
    type Request = serde_json::Value;
    type Hold = ();

    async fn reserve(&self, _: serde_json::Value, _: &TryContext) -> Result<(), Refusal> {
        Ok(())
    }

    async fn confirm(&self, (): &()) -> Result<(), Unavailable> {
        Ok(())
    }

    async fn release(&self, (): &()) -> Result<(), Unavailable> {
        Ok(())
    }
}

/// Which scriptable call a request is, and the hold it names.
fn classify(req: &Request) -> Option<(Verb, Option<String>)> {
    let path = req.uri().path().trim_end_matches('/');
    let hold = path.strip_prefix("/holds/").filter(|id| !id.contains('/'));
    match (req.method(), hold) {
        (&Method::POST, None) if path == "/holds" => Some((Verb::Try, None)),
        (&Method::PUT, Some(id)) => Some((Verb::Confirm, Some(id.to_owned()))),
        (&Method::DELETE, Some(id)) => Some((Verb::Cancel, Some(id.to_owned()))),
        _ => None,
    }
}

fn header(req: &Request, name: &str) -> Option<String> {
    req.header(name).map(str::to_owned)
}

/// The hold a try answer links to (the last segment of its `Location`).
fn hold_of(response: &Response) -> Option<String> {
    let location = response.headers().get("location")?.to_str().ok()?;
    location.rsplit('/').next().map(str::to_owned)
}

fn scripted(answer: &Answer) -> Response {
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = if status.is_client_error() || status.is_server_error() {
        poem::web::Json(serde_json::json!({
            "type": "urn:tcc-participant:problem:scripted",
            "title": status.canonical_reason().unwrap_or("Scripted"),
            "status": answer.status,
            "detail": "a scripted answer of tcc-fake-participant",
        }))
        .with_status(status)
        .with_content_type("application/problem+json")
        .into_response()
    } else {
        status.into_response()
    };
    if let Some(secs) = answer.retry_after_secs {
        response.headers_mut().insert("retry-after", secs.into());
    }
    response
}

async fn record_and_answer<E: Endpoint>(
    next: Arc<E>,
    req: Request,
    recorder: Arc<Recorder>,
) -> poem::Result<Response> {
    let Some((verb, hold)) = classify(&req) else {
        return Ok(next.get_response(req).await);
    };
    let index = recorder.arrive(Call {
        verb,
        hold,
        status: None,
        scripted: false,
        at: Utc::now(),
        idempotency_key: header(&req, "idempotency-key"),
        reservation: header(&req, "tcc-reservation"),
        deadline: header(&req, "tcc-deadline"),
        traceparent: header(&req, "traceparent"),
    });
    let (response, made) = match recorder.next_answer(verb) {
        Some(answer) => {
            let made = if answer.apply {
                hold_of(&next.get_response(req).await)
            } else {
                None
            };
            tokio::time::sleep(Duration::from_millis(answer.delay_ms)).await;
            recorder.calls.lock().expect("poisoned")[index].scripted = true;
            (scripted(&answer), made)
        }
        None => {
            let response = next.get_response(req).await;
            let made = hold_of(&response);
            (response, made)
        }
    };
    recorder.answered(index, response.status(), made);
    Ok(response)
}

#[derive(ApiResponse)]
#[oai(bad_request_handler = "control_bad_request")]
enum ControlResponse {
    /// Done.
    #[oai(status = 204)]
    Done,
    /// The body is not a valid script.
    #[oai(status = 400, content_type = "application/problem+json")]
    BadRequest(Json<Problem>),
}

fn control_bad_request(error: poem::Error) -> ControlResponse {
    ControlResponse::BadRequest(Json(Problem::new(
        400,
        "invalid-script",
        "The script is not valid",
        error.to_string(),
    )))
}

/// The control API of the fake participant.
struct ControlApi {
    recorder: Arc<Recorder>,
    desk: Arc<dyn Desk>,
}

#[OpenApi]
impl ControlApi {
    /// Queue answers for the next calls of a verb
    ///
    /// Each of the next calls of `verb` takes the next answer: it waits `delay_ms`, then
    /// answers `status` without changing anything, or, with `apply: true`, after making the
    /// change as an unscripted call would (the lost-answer case). Once the queue is empty,
    /// calls are answered normally. Scripts add to what is already queued.
    #[oai(path = "/_script", method = "post", operation_id = "script")]
    async fn script(&self, script: Json<Script>) -> ControlResponse {
        self.recorder.script(script.0.verb, script.0.answers);
        ControlResponse::Done
    }

    /// Drop the answers still queued
    ///
    /// Every verb's queue is emptied: calls are answered normally from now on. The calls
    /// received and the holds are kept (`/_reset` forgets those too).
    #[oai(path = "/_script", method = "delete", operation_id = "clearScripts")]
    async fn clear_scripts(&self) -> ControlResponse {
        self.recorder.clear_scripts();
        ControlResponse::Done
    }

    /// Every call received, in order of arrival
    #[oai(path = "/_calls", method = "get", operation_id = "calls")]
    async fn calls(&self) -> Json<Vec<Call>> {
        Json(self.recorder.calls.lock().expect("poisoned").clone())
    }

    /// Every hold and its state
    #[oai(path = "/_holds", method = "get", operation_id = "holds")]
    async fn holds(&self) -> Json<Vec<HoldView>> {
        Json(self.desk.list().await)
    }

    /// Forget scripts, calls and holds
    #[oai(path = "/_reset", method = "post", operation_id = "reset")]
    async fn reset(&self) -> ControlResponse {
        self.recorder.reset();
        match self.desk.clear().await {
            Ok(()) => ControlResponse::Done,
            Err(e) => control_bad_request(poem::Error::from_string(
                e.to_string(),
                StatusCode::INTERNAL_SERVER_ERROR,
            )),
        }
    }
}

/// The fake's whole document: the participant operations and the control API.
fn service(
    participant: &Participant,
    recorder: &Arc<Recorder>,
) -> OpenApiService<impl OpenApi, ()> {
    OpenApiService::new(
        (
            participant.api(),
            ControlApi {
                recorder: recorder.clone(),
                desk: participant.desk(),
            },
        ),
        "tcc-fake-participant",
        env!("CARGO_PKG_VERSION"),
    )
    .description(
        "A scriptable fake participant for tests: the participant contract with holds in \
         memory (tries at `POST /holds`, links `/holds/{id}`), and a control API to script \
         answers (`POST /_script`) or drop those still queued (`DELETE /_script`), read the \
         calls received (`/_calls`) and the holds (`/_holds`), and start over (`/_reset`). \
         Swagger UI at `/docs`.",
    )
}

/// How to start a fake participant.
#[derive(Debug, Clone)]
pub struct FakeSettings {
    /// Where to listen (port 0: any free port).
    pub listen: SocketAddr,
    /// How long holds live unless confirmed.
    pub hold_ttl: Duration,
    /// How long a hold may outlive its reservation's deadline (`TCC-Deadline`).
    pub deadline_margin: Duration,
}

impl Default for FakeSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            hold_ttl: Duration::from_secs(60),
            deadline_margin: Duration::from_secs(30),
        }
    }
}

/// A fake participant running in this process.
pub struct FakeParticipant {
    url: String,
    recorder: Arc<Recorder>,
    participant: Participant,
    serving: Serving,
}

impl FakeParticipant {
    /// Starts one on a free loopback port, holds living 60 s.
    ///
    /// # Errors
    /// When no port can be bound.
    pub async fn start() -> std::io::Result<Self> {
        Self::start_with(FakeSettings::default()).await
    }

    /// Starts one as `settings` say.
    ///
    /// # Errors
    /// When the address cannot be bound.
    pub async fn start_with(settings: FakeSettings) -> std::io::Result<Self> {
        let participant = Participant::builder(Anything)
            .hold_ttl(settings.hold_ttl)
            .deadline_margin(settings.deadline_margin)
            .start()
            .map_err(std::io::Error::other)?;
        let recorder = Arc::new(Recorder::default());
        let service = service(&participant, &recorder);
        let spec_json = service.spec_endpoint();
        let spec_yaml = service.spec_endpoint_yaml();
        let docs = service.swagger_ui();
        let shared = recorder.clone();
        let app = Route::new()
            .nest("/", service)
            .at("/openapi.json", spec_json)
            .at("/openapi.yaml", spec_yaml)
            .nest("/docs", docs)
            .around(move |next, req| record_and_answer(next, req, shared.clone()));
        let serving = Serving::start(app, settings.listen).await?;
        Ok(Self {
            url: serving.url(),
            recorder,
            participant,
            serving,
        })
    }

    /// `http://127.0.0.1:{port}`.
    #[must_use]
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Where tries go: `{url}/holds`.
    #[must_use]
    pub fn try_url(&self) -> String {
        format!("{}/holds", self.url)
    }

    /// Queues answers for the next calls of `verb` (as `POST /_script`).
    pub fn script(&self, verb: Verb, answers: impl IntoIterator<Item = Answer>) {
        self.recorder.script(verb, answers);
    }

    /// Every call received, in order (as `GET /_calls`).
    #[must_use]
    pub fn calls(&self) -> Vec<Call> {
        self.recorder.calls.lock().expect("poisoned").clone()
    }

    /// The calls of one verb, in order.
    #[must_use]
    pub fn calls_of(&self, verb: Verb) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| c.verb == verb)
            .collect()
    }

    /// Every hold (as `GET /_holds`).
    pub async fn holds(&self) -> Vec<HoldView> {
        self.participant.holds().await
    }

    /// Drops the answers still queued, keeping calls and holds (as `DELETE /_script`).
    pub fn clear_scripts(&self) {
        self.recorder.clear_scripts();
    }

    /// Forgets scripts, calls and holds (as `POST /_reset`).
    ///
    /// # Panics
    /// Never: the fake's store is in memory.
    pub async fn reset(&self) {
        self.recorder.reset();
        self.participant
            .desk()
            .clear()
            .await
            .expect("the memory store does not fail");
    }

    /// The fake's OpenAPI document (participant operations and control API), as YAML.
    #[must_use]
    pub fn spec_yaml(&self) -> String {
        service(&self.participant, &self.recorder).spec_yaml()
    }

    /// Stops serving and waits for the server to end.
    ///
    /// # Errors
    /// When the server failed.
    pub async fn stop(self) -> std::io::Result<()> {
        let served = self.serving.stop().await;
        self.participant.shutdown().await;
        served
    }
}
