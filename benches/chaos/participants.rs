//! The participant services of the soak, and the receiver of completion callbacks: real HTTP
//! servers on loopback, in this process (separate from the coordinator's), that keep a ledger
//! of every hold and every call, and answer with faults while the soak runs.
//!
//! They follow `openapi/participant.yaml` like the inventory example: `POST /holds` tries
//! (the same `Idempotency-Key` and body give the same hold back; another body, 422), `PUT
//! /holds/{n}` confirms (404 once cancelled or expired), `DELETE /holds/{n}` cancels (409 once
//! confirmed), and holds expire by themselves. The body of a try is `{"tag", "ttl_ms"}`: the
//! tag is the client's name for the hold, so that which faults hit it depends on the seed and
//! not on the order in which calls arrive.
//!
//! A fault is drawn per call from (seed, service, verb, tag, how many such calls came before):
//! the same seed gives the same faults to the same hold's calls.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde_json::{json, Value};

type Body = Full<Bytes>;

/// What a participant does to one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None,
    /// 500, nothing changed.
    ServerError,
    /// 429 with `Retry-After: 1`, nothing changed.
    TooMany,
    /// Applied, answered after a short delay (within the coordinator's call timeout).
    Slow,
    /// Applied, answered only after the coordinator's call timeout: the answer is lost.
    LostAfterApply,
    /// The connection is closed without an answer, nothing changed.
    ResetBefore,
    /// Applied, then the connection is closed without an answer.
    ResetAfter,
    /// A confirm refused with 409 (nothing changed): the coordinator must end in `conflict`.
    Refuse,
}

impl Fault {
    /// Per mille of calls, while faults are on: 500, 429, slow, lost, reset before, reset
    /// after, and (confirms only) refused.
    const TABLE: [(Fault, u64); 7] = [
        (Fault::ServerError, 60),
        (Fault::TooMany, 40),
        (Fault::Slow, 50),
        (Fault::LostAfterApply, 40),
        (Fault::ResetBefore, 30),
        (Fault::ResetAfter, 30),
        (Fault::Refuse, 4),
    ];

    fn draw(seed: u64, service: &str, verb: &str, tag: &str, attempt: u32) -> Fault {
        let mut h = DefaultHasher::new();
        (seed, service, verb, tag, attempt).hash(&mut h);
        let mut roll = h.finish() % 1000;
        for (fault, per_mille) in Self::TABLE {
            if roll < per_mille {
                return if fault == Fault::Refuse && verb != "PUT" {
                    Fault::None
                } else {
                    fault
                };
            }
            roll -= per_mille;
        }
        Fault::None
    }
}

/// Where a hold stands at its participant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldState {
    Held,
    Confirmed,
    Cancelled,
    /// Released by its own expiry.
    Expired,
}

/// One hold, as its participant saw it.
#[derive(Debug, Clone)]
pub struct Hold {
    pub uri: String,
    pub tag: String,
    /// The reservation named by `TCC-Reservation`: set when the coordinator made the try.
    pub reservation: Option<String>,
    pub expires: DateTime<Utc>,
    pub state: HoldState,
    /// `PUT`s and `DELETE`s received (faulted ones too).
    pub puts: u32,
    pub deletes: u32,
    /// It answered 409 to a `PUT`.
    pub refused: bool,
    /// When each `PUT` or `DELETE` arrived.
    pub calls: Vec<DateTime<Utc>>,
    body: Value,
}

impl Hold {
    fn expire(&mut self, now: DateTime<Utc>) {
        if self.state == HoldState::Held && self.expires <= now {
            self.state = HoldState::Expired;
        }
    }
}

#[derive(Default)]
struct Ledger {
    holds: Vec<Hold>,
    by_key: HashMap<String, usize>,
    attempts: HashMap<(&'static str, String), u32>,
    /// Callbacks received (callback service only): reservation id → (when, body).
    callbacks: HashMap<String, Vec<(DateTime<Utc>, Value)>>,
}

/// One participant service (or the callback receiver).
pub struct Service {
    pub name: String,
    pub base: String,
    seed: u64,
    faulty: Arc<AtomicBool>,
    /// How long a lost answer is held back: longer than the coordinator's call timeout.
    lost_for: Duration,
    calls: AtomicU64,
    faults: AtomicU64,
    ledger: Mutex<Ledger>,
}

/// The call was answered by closing the connection (hyper drops it on a service error).
#[derive(Debug)]
struct Reset;

impl std::fmt::Display for Reset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection closed by the chaos participant")
    }
}

impl std::error::Error for Reset {}

impl Service {
    /// Starts a service on a free loopback port.
    pub async fn start(
        name: &str,
        seed: u64,
        faulty: Arc<AtomicBool>,
        call_timeout: Duration,
    ) -> Arc<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let service = Arc::new(Self {
            name: name.to_owned(),
            base: format!("http://{addr}"),
            seed,
            faulty,
            lost_for: call_timeout + Duration::from_millis(500),
            calls: AtomicU64::new(0),
            faults: AtomicU64::new(0),
            ledger: Mutex::default(),
        });
        let serving = service.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let this = serving.clone();
                tokio::spawn(async move {
                    let handler = hyper::service::service_fn(move |req| {
                        let this = this.clone();
                        async move { this.handle(req).await }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), handler)
                        .await;
                });
            }
        });
        service
    }

    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    pub fn faults(&self) -> u64 {
        self.faults.load(Ordering::Relaxed)
    }

    /// Every hold, expired as of `now`.
    pub fn holds(&self, now: DateTime<Utc>) -> Vec<Hold> {
        let mut ledger = self.ledger.lock().unwrap();
        ledger.holds.iter_mut().for_each(|h| h.expire(now));
        ledger.holds.clone()
    }

    /// Every callback received: reservation id → (when, body), in arrival order.
    pub fn callbacks(&self) -> HashMap<String, Vec<(DateTime<Utc>, Value)>> {
        self.ledger.lock().unwrap().callbacks.clone()
    }

    async fn handle(
        self: Arc<Self>,
        req: hyper::Request<Incoming>,
    ) -> Result<hyper::Response<Body>, Reset> {
        let (parts, body) = req.into_parts();
        let body = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let header = |name: &str| {
            parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let path = parts.uri.path();
        let hold = path
            .strip_prefix("/holds/")
            .and_then(|n| n.parse::<usize>().ok());
        match (parts.method.as_str(), path, hold) {
            ("POST", "/holds", _) => {
                let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let tag = request["tag"].as_str().unwrap_or_default().to_owned();
                let fault = self.fault("try", &tag);
                let (key, reservation) = (header("idempotency-key"), header("tcc-reservation"));
                self.answer(fault, || self.try_hold(key, reservation, request))
                    .await
            }
            ("PUT", _, Some(n)) => self.decide(n, "PUT").await,
            ("DELETE", _, Some(n)) => self.decide(n, "DELETE").await,
            ("POST", "/callbacks", _) => {
                let representation: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let id = representation["id"].as_str().unwrap_or_default().to_owned();
                let fault = self.fault("callback", &id);
                self.answer(fault, || {
                    let mut ledger = self.ledger.lock().unwrap();
                    let received = ledger.callbacks.entry(id).or_default();
                    received.push((Utc::now(), representation));
                    status(204)
                })
                .await
            }
            _ => Ok(status(404)),
        }
    }

    /// Counts the call and draws its fault (none once the soak heals).
    fn fault(&self, verb: &'static str, tag: &str) -> Fault {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let attempt = {
            let mut ledger = self.ledger.lock().unwrap();
            let n = ledger.attempts.entry((verb, tag.to_owned())).or_default();
            *n += 1;
            *n
        };
        if !self.faulty.load(Ordering::Relaxed) {
            return Fault::None;
        }
        let fault = Fault::draw(self.seed, &self.name, verb, tag, attempt);
        if fault != Fault::None {
            self.faults.fetch_add(1, Ordering::Relaxed);
        }
        fault
    }

    async fn answer(
        &self,
        fault: Fault,
        apply: impl FnOnce() -> hyper::Response<Body>,
    ) -> Result<hyper::Response<Body>, Reset> {
        match fault {
            Fault::None => Ok(apply()),
            Fault::ServerError => Ok(status(500)),
            Fault::TooMany => {
                let mut r = status(429);
                r.headers_mut().insert("retry-after", "1".parse().unwrap());
                Ok(r)
            }
            Fault::Refuse => Ok(status(409)),
            Fault::Slow => {
                let r = apply();
                tokio::time::sleep(Duration::from_millis(200)).await;
                Ok(r)
            }
            Fault::LostAfterApply => {
                let r = apply();
                tokio::time::sleep(self.lost_for).await;
                Ok(r)
            }
            Fault::ResetBefore => Err(Reset),
            Fault::ResetAfter => {
                apply();
                Err(Reset)
            }
        }
    }

    fn try_hold(
        &self,
        key: Option<String>,
        reservation: Option<String>,
        request: Value,
    ) -> hyper::Response<Body> {
        let mut ledger = self.ledger.lock().unwrap();
        let existing = key.as_ref().and_then(|k| ledger.by_key.get(k).copied());
        let n = match existing {
            Some(n) if ledger.holds[n].body != request => {
                return status(422);
            }
            Some(n) => n,
            None => {
                let n = ledger.holds.len();
                let ttl = request["ttl_ms"].as_i64().unwrap_or(30_000);
                ledger.holds.push(Hold {
                    uri: format!("{}/holds/{n}", self.base),
                    tag: request["tag"].as_str().unwrap_or_default().to_owned(),
                    reservation: reservation.and_then(|r| r.rsplit('/').next().map(str::to_owned)),
                    expires: Utc::now() + chrono::Duration::milliseconds(ttl),
                    state: HoldState::Held,
                    puts: 0,
                    deletes: 0,
                    refused: false,
                    calls: Vec::new(),
                    body: request,
                });
                if let Some(key) = key {
                    ledger.by_key.insert(key, n);
                }
                n
            }
        };
        let hold = &ledger.holds[n];
        let mut r = json_response(
            201,
            &json!({"uri": hold.uri, "expires": hold.expires.to_rfc3339()}),
        );
        r.headers_mut()
            .insert("location", format!("/holds/{n}").parse().unwrap());
        r
    }

    async fn decide(&self, n: usize, verb: &'static str) -> Result<hyper::Response<Body>, Reset> {
        let tag = {
            let mut ledger = self.ledger.lock().unwrap();
            let Some(hold) = ledger.holds.get_mut(n) else {
                return Ok(status(404));
            };
            if verb == "PUT" {
                hold.puts += 1;
            } else {
                hold.deletes += 1;
            }
            hold.calls.push(Utc::now());
            hold.tag.clone()
        };
        let mut fault = self.fault(verb, &tag);
        if fault == Fault::Refuse {
            // A participant refuses a hold it has not confirmed; a repeated confirm of a
            // confirmed hold is answered 204, as the contract asks.
            let mut ledger = self.ledger.lock().unwrap();
            let hold = &mut ledger.holds[n];
            if hold.state == HoldState::Confirmed {
                fault = Fault::None;
            } else {
                hold.refused = true;
            }
        }
        self.answer(fault, || {
            let mut ledger = self.ledger.lock().unwrap();
            let hold = &mut ledger.holds[n];
            hold.expire(Utc::now());
            let (next, code) = match (verb, hold.state) {
                ("PUT", HoldState::Held | HoldState::Confirmed) => (HoldState::Confirmed, 204),
                ("PUT", s) => (s, 404),
                (_, HoldState::Held | HoldState::Cancelled) => (HoldState::Cancelled, 204),
                (_, HoldState::Confirmed) => (HoldState::Confirmed, 409),
                (_, s) => (s, 404),
            };
            hold.state = next;
            status(code)
        })
        .await
    }
}

fn status(code: u16) -> hyper::Response<Body> {
    hyper::Response::builder()
        .status(code)
        .body(Body::default())
        .unwrap()
}

fn json_response(code: u16, body: &Value) -> hyper::Response<Body> {
    hyper::Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}
