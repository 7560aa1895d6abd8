//! The floor: a relay on the coordinator's own stack doing only what a coordinator cannot
//! avoid, run by the benchmark beside the direct baseline and the coordinator.
//!
//! The same two operations the benchmark asks of the coordinator, served through
//! poem-openapi with serde bodies: `POST /reservations` (links, or tries it calls through
//! reqwest) answers 202 (200 once tried) with a `Location`, and
//! `POST /reservations/{id}/confirm` calls `PUT` on every link through reqwest and answers
//! 303. An in-memory map holds the links between the two. With `durable`, each operation
//! first appends a record to a file, made durable by a group commit (one `fdatasync` per
//! batch, on a thread of its own) before it answers or calls: two records per transaction.
//! With `sled`, the same two records go to sled 0.34.7, the log the stack prescribes, the way
//! the coordinator writes it: inserted by the request, then made durable by one thread for
//! every writer waiting (one `flush()` and one `fdatasync` of sled's file per batch): the
//! floor of a coordinator whose log is on sled.
//! Nothing else: no state machine, no retries, no deadlines, no views, no telemetry.

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Mutex};
use std::time::Duration;

use poem::listener::{Acceptor, Listener};
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi, OpenApiService};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

#[derive(Object, Serialize, Deserialize, Clone)]
struct Link {
    uri: String,
    expires: String,
}

#[derive(Object, Serialize, Deserialize)]
struct Try {
    url: String,
    body: serde_json::Value,
}

#[derive(Object, Serialize, Deserialize)]
struct Entry {
    link: Option<Link>,
    #[oai(rename = "try")]
    #[serde(rename = "try")]
    try_: Option<Try>,
}

#[derive(Object, Serialize, Deserialize)]
struct CreateRequest {
    participants: Vec<Entry>,
    timeout_ms: Option<u64>,
}

#[derive(Object, Serialize)]
struct Created {
    id: String,
    state: String,
}

#[derive(ApiResponse)]
enum CreateResponse {
    /// Stored (the client's links).
    #[oai(status = 202)]
    Accepted(Json<Created>, #[oai(header = "Location")] String),
    /// Stored once every try answered.
    #[oai(status = 200)]
    Reserved(Json<Created>, #[oai(header = "Location")] String),
    #[oai(status = 502)]
    BadGateway,
}

#[derive(ApiResponse)]
enum ConfirmResponse {
    #[oai(status = 303)]
    Confirmed(#[oai(header = "Location")] String),
    #[oai(status = 404)]
    NotFound,
    #[oai(status = 502)]
    BadGateway,
}

/// Group commit: records appended by one thread, one `fdatasync` per batch of waiters.
struct GroupLog {
    records: mpsc::Sender<(Vec<u8>, oneshot::Sender<()>)>,
}

impl GroupLog {
    fn start(path: &std::path::Path) -> Self {
        let mut file = std::fs::File::create(path).unwrap();
        let (tx, rx) = mpsc::channel::<(Vec<u8>, oneshot::Sender<()>)>();
        std::thread::spawn(move || {
            while let Ok(first) = rx.recv() {
                std::thread::yield_now();
                let batch: Vec<_> = std::iter::once(first).chain(rx.try_iter()).collect();
                let mut bytes = Vec::new();
                for (record, _) in &batch {
                    bytes.extend_from_slice(record);
                }
                file.write_all(&bytes).unwrap();
                file.sync_data().unwrap();
                for (_, done) in batch {
                    let _ = done.send(());
                }
            }
        });
        Self { records: tx }
    }

    async fn append(&self, record: Vec<u8>) {
        let (tx, rx) = oneshot::channel();
        self.records.send((record, tx)).unwrap();
        rx.await.unwrap();
    }
}

/// Group commit on sled: writers insert, then wait for the next `flush()` and `fdatasync`.
struct SledLog {
    records: sled::Tree,
    waiters: mpsc::Sender<oneshot::Sender<()>>,
}

impl SledLog {
    fn start(dir: &std::path::Path) -> Self {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(64 * 1024 * 1024)
            .open()
            .unwrap();
        let records = db.open_tree("records").unwrap();
        let file = std::fs::File::open(dir.join("db")).unwrap();
        let (tx, rx) = mpsc::channel::<oneshot::Sender<()>>();
        std::thread::spawn(move || {
            while let Ok(first) = rx.recv() {
                let batch: Vec<_> = std::iter::once(first).chain(rx.try_iter()).collect();
                db.flush().unwrap();
                file.sync_data().unwrap();
                for done in batch {
                    let _ = done.send(());
                }
            }
        });
        Self {
            records,
            waiters: tx,
        }
    }

    /// The transaction's record, replaced by its next one (as the coordinator's is).
    async fn append(&self, id: u64, record: Vec<u8>) {
        self.records.insert(id.to_be_bytes(), record).unwrap();
        let (tx, rx) = oneshot::channel();
        self.waiters.send(tx).unwrap();
        rx.await.unwrap();
    }
}

/// Where the relay logs, if anywhere.
pub enum Durability {
    Memory,
    File,
    Sled,
}

enum Log {
    File(GroupLog),
    Sled(SledLog),
}

impl Log {
    async fn append(&self, id: u64, record: Vec<u8>) {
        match self {
            Log::File(log) => log.append(record).await,
            Log::Sled(log) => log.append(id, record).await,
        }
    }
}

struct Relay {
    http: reqwest::Client,
    links: Mutex<HashMap<u64, Vec<Link>>>,
    next: AtomicU64,
    log: Option<Log>,
}

#[OpenApi]
impl Relay {
    #[oai(path = "/reservations", method = "post")]
    async fn create(&self, request: Json<CreateRequest>) -> CreateResponse {
        let tried = request.0.participants.iter().any(|p| p.try_.is_some());
        let calls = request.0.participants.into_iter().map(|p| async move {
            match (p.link, p.try_) {
                (Some(link), _) => Some(link),
                (None, Some(t)) => {
                    let answer = self.http.post(&t.url).json(&t.body).send().await.ok()?;
                    if answer.status() != 201 {
                        return None;
                    }
                    answer.json::<Link>().await.ok()
                }
                (None, None) => None,
            }
        });
        let Some(links) = futures_util::future::join_all(calls)
            .await
            .into_iter()
            .collect::<Option<Vec<Link>>>()
        else {
            return CreateResponse::BadGateway;
        };
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        if let Some(log) = &self.log {
            log.append(id, serde_json::to_vec(&(id, "created", &links)).unwrap())
                .await;
        }
        self.links.lock().unwrap().insert(id, links);
        let created = Json(Created {
            id: id.to_string(),
            state: "reserved".into(),
        });
        let location = format!("/reservations/{id}");
        if tried {
            CreateResponse::Reserved(created, location)
        } else {
            CreateResponse::Accepted(created, location)
        }
    }

    #[oai(path = "/reservations/:id/confirm", method = "post")]
    async fn confirm(&self, id: Path<u64>) -> ConfirmResponse {
        let Some(links) = self.links.lock().unwrap().remove(&id.0) else {
            return ConfirmResponse::NotFound;
        };
        if let Some(log) = &self.log {
            log.append(id.0, serde_json::to_vec(&(id.0, "confirmed")).unwrap())
                .await;
        }
        let puts = links
            .iter()
            .map(|l| async move { self.http.put(&l.uri).send().await.ok().map(|r| r.status()) });
        let answers = futures_util::future::join_all(puts).await;
        if answers
            .iter()
            .all(|s| *s == Some(reqwest::StatusCode::NO_CONTENT))
        {
            ConfirmResponse::Confirmed(format!("/transactions/{}", id.0))
        } else {
            ConfirmResponse::BadGateway
        }
    }
}

/// Serves the relay on a free loopback port (its log, if any, in `dir`) and prints
/// `relay listening on URL`.
pub fn serve(durability: Durability, dir: &std::path::Path) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let relay = Relay {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            links: Mutex::default(),
            next: AtomicU64::new(0),
            log: match durability {
                Durability::Memory => None,
                Durability::File => Some(Log::File(GroupLog::start(&dir.join("relay.log")))),
                Durability::Sled => Some(Log::Sled(SledLog::start(&dir.join("relay-sled")))),
            },
        };
        let api = OpenApiService::new(relay, "relay", "1");
        let acceptor = poem::listener::TcpListener::bind("127.0.0.1:0")
            .into_acceptor()
            .await
            .unwrap();
        let addr = acceptor.local_addr()[0].clone();
        println!(
            "relay listening on http://{}",
            addr.as_socket_addr().unwrap()
        );
        poem::Server::new_with_acceptor(acceptor)
            .run(api)
            .await
            .unwrap();
    });
}
