//! The clients of the soak: each mixes everything a user does, drawn from its own seeded
//! generator, and writes down every answer it gets (or that it got none).
//!
//! Scenarios: links the client tried itself, then confirm; tries the coordinator performs,
//! then confirm; cancel (`POST …/cancel` or `DELETE`); a reservation left to time out; a join
//! (link or try) before the decision; holds about to expire, confirmed late; the Atomikos
//! `PUT /coordinator/confirm` and `/cancel`. Creates carry an `Idempotency-Key` and are
//! repeated with it after a lost answer (or, sometimes, given up: the checker then finds the
//! reservation from the participants' side). Decisions are repeated, sometimes with
//! `Prefer: wait`, sometimes on another instance.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rand::{RngExt, SeedableRng};
use rand_pcg::Pcg64Mcg;
use serde_json::{json, Value};

/// What a client asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Create,
    /// A create whose answer was lost and that the client gave up on.
    AbandonedCreate,
    Confirm,
    Cancel,
    Delete,
    Get,
    Join,
    AtomikosConfirm,
    AtomikosCancel,
}

/// One answer a client got.
#[derive(Debug, Clone)]
pub struct Answer {
    pub client: usize,
    pub at: DateTime<Utc>,
    pub op: Op,
    /// The reservation it was about, when known.
    pub reservation: Option<String>,
    /// `None`: no answer (the connection failed or timed out).
    pub status: Option<u16>,
    pub body: Value,
    /// The links it named (Atomikos calls, joins of a link) or the try tags it joined.
    pub links: Vec<String>,
}

/// A hold the client tried itself, ready to hand over as a link.
#[derive(Debug, Clone)]
struct Link {
    uri: String,
    expires: String,
}

pub struct Client {
    pub index: usize,
    seed: u64,
    rng: Pcg64Mcg,
    http: reqwest::Client,
    coordinators: Vec<String>,
    participants: Vec<String>,
    callback: String,
    next_tag: u64,
    pub answers: Vec<Answer>,
}

/// How long a client keeps repeating a create whose answer was lost.
const CREATE_PATIENCE: Duration = Duration::from_secs(60);

impl Client {
    pub fn new(
        index: usize,
        seed: u64,
        coordinators: Vec<String>,
        participants: Vec<String>,
        callback: String,
    ) -> Self {
        Self {
            index,
            seed,
            rng: Pcg64Mcg::seed_from_u64(seed.wrapping_mul(1_000_003).wrapping_add(index as u64)),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .no_proxy()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
            coordinators,
            participants,
            callback,
            next_tag: 0,
            answers: Vec::new(),
        }
    }

    /// Runs scenarios until `until`.
    pub async fn run(mut self, until: Instant) -> Self {
        while Instant::now() < until {
            match self.rng.random_range(0..100) {
                0..=19 => self.links_then_decide(false).await,
                20..=39 => self.tries_then_decide().await,
                40..=49 => self.left_to_time_out().await,
                50..=61 => self.join_then_decide().await,
                62..=69 => self.links_then_decide(true).await,
                70..=84 => self.atomikos(true).await,
                _ => self.atomikos(false).await,
            }
        }
        self
    }

    fn coordinator(&mut self) -> String {
        let i = self.rng.random_range(0..self.coordinators.len());
        self.coordinators[i].clone()
    }

    fn participant(&mut self) -> String {
        let i = self.rng.random_range(0..self.participants.len());
        self.participants[i].clone()
    }

    fn tag(&mut self) -> String {
        self.next_tag += 1;
        format!("s{}-c{}-{}", self.seed, self.index, self.next_tag)
    }

    fn record(&mut self, op: Op, reservation: Option<String>, answer: Option<(u16, Value)>) {
        let (status, body) = answer.map_or((None, Value::Null), |(s, b)| (Some(s), b));
        self.answers.push(Answer {
            client: self.index,
            at: Utc::now(),
            op,
            reservation,
            status,
            body,
            links: Vec::new(),
        });
    }

    /// Tries a hold at a participant itself (repeating with the same key through faults).
    async fn try_link(&mut self, ttl_ms: u64) -> Option<Link> {
        let participant = self.participant();
        let tag = self.tag();
        let body = json!({"tag": tag, "ttl_ms": ttl_ms});
        for _ in 0..40 {
            let sent = self
                .http
                .post(format!("{participant}/holds"))
                .header("Idempotency-Key", &tag)
                .json(&body)
                .send()
                .await;
            if let Ok(r) = sent {
                if r.status() == 201 {
                    let link: Value = r.json().await.ok()?;
                    return Some(Link {
                        uri: link["uri"].as_str()?.to_owned(),
                        expires: link["expires"].as_str()?.to_owned(),
                    });
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    fn try_entry(&mut self) -> Value {
        let participant = self.participant();
        let tag = self.tag();
        json!({"name": tag.clone(), "try": {"url": format!("{participant}/holds"),
            "body": {"tag": tag, "ttl_ms": 30_000}}})
    }

    async fn links(&mut self, count: usize, ttl_ms: u64) -> Option<Vec<Link>> {
        let mut links = Vec::new();
        for _ in 0..count {
            links.push(self.try_link(ttl_ms).await?);
        }
        Some(links)
    }

    /// Creates a reservation; repeats it with its key after a lost answer (or gives up).
    async fn create(&mut self, participants: Vec<Value>, timeout_ms: u64) -> Option<String> {
        let key = self.tag();
        let body = json!({"timeout_ms": timeout_ms, "participants": participants,
            "callback": self.callback, "metadata": {"client": self.index, "key": key}});
        let wait = self.rng.random_bool(0.3);
        let give_up_after_loss = self.rng.random_bool(0.15);
        let started = Instant::now();
        loop {
            let base = self.coordinator();
            let mut request = self
                .http
                .post(format!("{base}/reservations"))
                .header("Idempotency-Key", &key)
                .json(&body);
            if wait {
                request = request.header("Prefer", "wait=2");
            }
            let answer = read(request.send().await).await;
            match answer {
                Some((status, body)) if status != 503 => {
                    let id = id_of(&body);
                    self.record(Op::Create, id.clone(), Some((status, body)));
                    return id;
                }
                _ if give_up_after_loss || started.elapsed() > CREATE_PATIENCE => {
                    self.record(Op::AbandonedCreate, None, Some((0, json!({"key": key}))));
                    return None;
                }
                answer => {
                    self.record(Op::Create, None, answer);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    /// Confirms or cancels (by `POST …/cancel` or `DELETE`), repeating after a lost answer
    /// and sometimes after an answer too.
    async fn decide(&mut self, id: &str, op: Op) {
        let repeats = 1 + usize::from(self.rng.random_bool(0.3));
        let mut answered = 0;
        for _ in 0..8 {
            let base = self.coordinator();
            let mut request = match op {
                Op::Confirm => self.http.post(format!("{base}/reservations/{id}/confirm")),
                Op::Cancel => self.http.post(format!("{base}/reservations/{id}/cancel")),
                _ => self.http.delete(format!("{base}/reservations/{id}")),
            };
            if self.rng.random_bool(0.3) {
                request = request.header("Prefer", "wait=2");
            }
            let answer = read(request.send().await).await;
            let got = answer.as_ref().is_some_and(|(s, _)| *s != 503);
            self.record(op, Some(id.to_owned()), answer);
            if got {
                answered += 1;
                if answered >= repeats {
                    return;
                }
            } else {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }

    async fn get(&mut self, id: &str) {
        let base = self.coordinator();
        let answer = read(
            self.http
                .get(format!("{base}/reservations/{id}"))
                .send()
                .await,
        )
        .await;
        self.record(Op::Get, Some(id.to_owned()), answer);
    }

    /// Links tried by the client (about to expire when `late`), then a decision.
    async fn links_then_decide(&mut self, late: bool) {
        let count = self.rng.random_range(1..=3);
        let ttl = if late {
            self.rng.random_range(1_500..3_500)
        } else {
            30_000
        };
        let Some(links) = self.links(count, ttl).await else {
            return;
        };
        let entries = links
            .iter()
            .map(|l| json!({"link": {"uri": l.uri, "expires": l.expires}}))
            .collect();
        let Some(id) = self.create(entries, 10_000).await else {
            return;
        };
        if late {
            tokio::time::sleep(Duration::from_millis(self.rng.random_range(0..2_500))).await;
        }
        let op = self.pick_decision();
        self.decide(&id, op).await;
        if self.rng.random_bool(0.3) {
            self.get(&id).await;
        }
    }

    fn pick_decision(&mut self) -> Op {
        match self.rng.random_range(0..10) {
            0..=5 => Op::Confirm,
            6..=7 => Op::Cancel,
            _ => Op::Delete,
        }
    }

    /// Tries the coordinator performs, then a decision once they answered (or not).
    async fn tries_then_decide(&mut self) {
        let count = self.rng.random_range(1..=3);
        let entries = (0..count).map(|_| self.try_entry()).collect();
        let Some(id) = self.create(entries, 10_000).await else {
            return;
        };
        tokio::time::sleep(Duration::from_millis(self.rng.random_range(0..1_500))).await;
        let op = self.pick_decision();
        self.decide(&id, op).await;
        if self.rng.random_bool(0.3) {
            self.get(&id).await;
        }
    }

    /// A reservation nobody decides: its deadline cancels it.
    async fn left_to_time_out(&mut self) {
        let entries = if self.rng.random_bool(0.5) {
            vec![self.try_entry()]
        } else {
            let Some(links) = self.links(2, 30_000).await else {
                return;
            };
            links
                .iter()
                .map(|l| json!({"link": {"uri": l.uri, "expires": l.expires}}))
                .collect()
        };
        let timeout = self.rng.random_range(1_000..4_000);
        if let Some(id) = self.create(entries, timeout).await {
            if self.rng.random_bool(0.3) {
                tokio::time::sleep(Duration::from_millis(timeout + 500)).await;
                self.get(&id).await;
            }
        }
    }

    /// One participant, one more joined (a link or a try), then a decision.
    async fn join_then_decide(&mut self) {
        let first = vec![self.try_entry()];
        let Some(id) = self.create(first, 10_000).await else {
            return;
        };
        let (entry, named) = if self.rng.random_bool(0.5) {
            let Some(link) = self.try_link(30_000).await else {
                return;
            };
            let uri = link.uri.clone();
            (
                json!({"link": {"uri": link.uri, "expires": link.expires}}),
                uri,
            )
        } else {
            let entry = self.try_entry();
            let tag = entry["name"].as_str().unwrap().to_owned();
            (entry, tag)
        };
        for _ in 0..5 {
            let base = self.coordinator();
            let answer = read(
                self.http
                    .post(format!("{base}/reservations/{id}/participants"))
                    .json(&entry)
                    .send()
                    .await,
            )
            .await;
            let got = answer.as_ref().is_some_and(|(s, _)| *s != 503);
            self.record(Op::Join, Some(id.clone()), answer);
            self.answers.last_mut().unwrap().links = vec![named.clone()];
            if got {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let op = self.pick_decision();
        self.decide(&id, op).await;
    }

    /// The Atomikos-compatible synchronous calls over links the client tried.
    async fn atomikos(&mut self, confirm: bool) {
        let count = self.rng.random_range(1..=3);
        let Some(links) = self.links(count, 30_000).await else {
            return;
        };
        let base = self.coordinator();
        let verb = if confirm { "confirm" } else { "cancel" };
        let body = json!({"participantLinks": links.iter()
            .map(|l| json!({"uri": l.uri, "expires": l.expires})).collect::<Vec<_>>()});
        let answer = read(
            self.http
                .put(format!("{base}/coordinator/{verb}"))
                .header("content-type", "application/tcc+json")
                .body(body.to_string())
                .send()
                .await,
        )
        .await;
        let op = if confirm {
            Op::AtomikosConfirm
        } else {
            Op::AtomikosCancel
        };
        self.record(op, None, answer);
        self.answers.last_mut().unwrap().links = links.into_iter().map(|l| l.uri).collect();
    }
}

/// The status and JSON body of an answer, or `None` when there was none.
async fn read(sent: reqwest::Result<reqwest::Response>) -> Option<(u16, Value)> {
    let response = sent.ok()?;
    let status = response.status().as_u16();
    let location = response
        .headers()
        .get("location")
        .and_then(|l| l.to_str().ok())
        .map(str::to_owned);
    let text = response.text().await.ok()?;
    let mut body = serde_json::from_str::<Value>(&text)
        .ok()
        .filter(Value::is_object)
        .unwrap_or_else(|| json!({}));
    if let Some(location) = location {
        body["location"] = location.into();
    }
    Some((status, body))
}

/// The reservation id in an answer: its body's `id`, or the last segment of `Location`.
fn id_of(body: &Value) -> Option<String> {
    body["id"].as_str().map(str::to_owned).or_else(|| {
        body["location"]
            .as_str()
            .and_then(|l| l.rsplit('/').next())
            .map(str::to_owned)
    })
}
