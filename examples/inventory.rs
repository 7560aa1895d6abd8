//! An example participant: an inventory that holds stock with expiring holds.
//!
//! It implements `openapi/participant.yaml`:
//!
//! - `POST /holds` `{"sku": "apple", "quantity": 2}` tries: it holds the stock and answers
//!   `201` with `Location: /holds/{n}` and `{"uri", "expires"}`. The same `Idempotency-Key`
//!   gets the same hold back. Not enough stock: `409`.
//! - `PUT /holds/{n}` confirms: the stock is sold. `204`; `410` once the hold expired or was
//!   cancelled.
//! - `DELETE /holds/{n}` cancels: the stock is back. `204`; `404` for an unknown hold.
//! - `GET /stock` shows what is available, held and sold.
//!
//! Holds expire on their own after `--hold-ttl-secs` (default 60): the stock comes back
//! even if no coordinator ever calls again.
//!
//! Run: `cargo run --example inventory -- --listen 127.0.0.1:8081`

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use poem::http::StatusCode;
use poem::listener::TcpListener;
use poem::web::{Data, Json, Path};
use poem::{get, handler, post, EndpointExt, IntoResponse, Request, Response, Route, Server};
use serde::Deserialize;
use serde_json::json;

#[derive(Debug, Clone, Copy, PartialEq)]
enum HoldState {
    Held,
    Sold,
    Released,
}

#[derive(Debug, Clone)]
struct Hold {
    sku: String,
    quantity: u32,
    expires: DateTime<Utc>,
    state: HoldState,
}

struct Inventory {
    ttl: chrono::Duration,
    available: HashMap<String, u32>,
    sold: HashMap<String, u32>,
    holds: Vec<Hold>,
    by_key: HashMap<String, usize>,
}

impl Inventory {
    /// Gives back the stock of holds whose time ran out.
    fn expire(&mut self, now: DateTime<Utc>) {
        for hold in &mut self.holds {
            if hold.state == HoldState::Held && hold.expires <= now {
                hold.state = HoldState::Released;
                *self.available.entry(hold.sku.clone()).or_default() += hold.quantity;
            }
        }
    }
}

type Shared = Arc<Mutex<Inventory>>;

#[derive(Deserialize)]
struct TryBody {
    sku: String,
    quantity: u32,
}

fn problem(status: StatusCode, detail: String) -> Response {
    let body = json!({"type": "about:blank", "title": status.canonical_reason(), "status": status.as_u16(), "detail": detail});
    Json(body)
        .with_status(status)
        .with_content_type("application/problem+json")
        .into_response()
}

fn link(req: &Request, n: usize, hold: &Hold) -> serde_json::Value {
    let host = req.header("host").unwrap_or("127.0.0.1");
    json!({"uri": format!("http://{host}/holds/{n}"), "expires": hold.expires.to_rfc3339()})
}

#[handler]
fn try_hold(req: &Request, body: Json<TryBody>, inventory: Data<&Shared>) -> Response {
    let mut inv = inventory.lock().unwrap();
    inv.expire(Utc::now());
    let key = req.header("Idempotency-Key").map(str::to_owned);
    if let Some(&n) = key.as_ref().and_then(|k| inv.by_key.get(k)) {
        let hold = inv.holds[n - 1].clone();
        return Json(link(req, n, &hold))
            .with_header("Location", format!("/holds/{n}"))
            .into_response();
    }
    let available = inv.available.get(&body.sku).copied().unwrap_or(0);
    if available < body.quantity {
        return problem(
            StatusCode::CONFLICT,
            format!("only {available} of {} available", body.sku),
        );
    }
    inv.available
        .insert(body.sku.clone(), available - body.quantity);
    let hold = Hold {
        sku: body.sku.clone(),
        quantity: body.quantity,
        expires: Utc::now() + inv.ttl,
        state: HoldState::Held,
    };
    inv.holds.push(hold.clone());
    let n = inv.holds.len();
    if let Some(key) = key {
        inv.by_key.insert(key, n);
    }
    tracing_line(&format!(
        "held {} x {} as /holds/{n}",
        hold.quantity, hold.sku
    ));
    Json(link(req, n, &hold))
        .with_status(StatusCode::CREATED)
        .with_header("Location", format!("/holds/{n}"))
        .into_response()
}

#[handler]
fn confirm_hold(Path(n): Path<usize>, inventory: Data<&Shared>) -> Response {
    let mut inv = inventory.lock().unwrap();
    inv.expire(Utc::now());
    let Some(hold) = n.checked_sub(1).and_then(|i| inv.holds.get(i)).cloned() else {
        return problem(StatusCode::NOT_FOUND, format!("no hold {n}"));
    };
    match hold.state {
        HoldState::Sold => StatusCode::NO_CONTENT.into_response(),
        HoldState::Released => problem(
            StatusCode::GONE,
            format!("hold {n} expired or was cancelled"),
        ),
        HoldState::Held => {
            inv.holds[n - 1].state = HoldState::Sold;
            *inv.sold.entry(hold.sku.clone()).or_default() += hold.quantity;
            tracing_line(&format!(
                "sold {} x {} (/holds/{n})",
                hold.quantity, hold.sku
            ));
            StatusCode::NO_CONTENT.into_response()
        }
    }
}

#[handler]
fn cancel_hold(Path(n): Path<usize>, inventory: Data<&Shared>) -> Response {
    let mut inv = inventory.lock().unwrap();
    inv.expire(Utc::now());
    let Some(hold) = n.checked_sub(1).and_then(|i| inv.holds.get(i)).cloned() else {
        return problem(StatusCode::NOT_FOUND, format!("no hold {n}"));
    };
    match hold.state {
        HoldState::Released => StatusCode::NO_CONTENT.into_response(),
        HoldState::Sold => problem(StatusCode::CONFLICT, format!("hold {n} is already sold")),
        HoldState::Held => {
            inv.holds[n - 1].state = HoldState::Released;
            *inv.available.entry(hold.sku.clone()).or_default() += hold.quantity;
            tracing_line(&format!(
                "released {} x {} (/holds/{n})",
                hold.quantity, hold.sku
            ));
            StatusCode::NO_CONTENT.into_response()
        }
    }
}

#[handler]
fn stock(inventory: Data<&Shared>) -> Json<serde_json::Value> {
    let mut inv = inventory.lock().unwrap();
    inv.expire(Utc::now());
    let held: HashMap<&str, u32> = inv
        .holds
        .iter()
        .filter(|h| h.state == HoldState::Held)
        .fold(HashMap::new(), |mut m, h| {
            *m.entry(h.sku.as_str()).or_default() += h.quantity;
            m
        });
    Json(json!({"available": inv.available, "held": held, "sold": inv.sold}))
}

fn tracing_line(line: &str) {
    println!("inventory: {line}");
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut listen = "127.0.0.1:8081".to_owned();
    let mut ttl_secs = 60;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--listen", Some(v)) => listen = v,
            ("--hold-ttl-secs", Some(v)) => {
                ttl_secs = v.parse().expect("--hold-ttl-secs takes seconds")
            }
            _ => {
                eprintln!("usage: inventory [--listen ADDR] [--hold-ttl-secs N]");
                std::process::exit(2);
            }
        }
    }
    let inventory: Shared = Arc::new(Mutex::new(Inventory {
        ttl: chrono::Duration::seconds(ttl_secs),
        available: HashMap::from([("apple".to_owned(), 10), ("pear".to_owned(), 5)]),
        sold: HashMap::new(),
        holds: Vec::new(),
        by_key: HashMap::new(),
    }));
    let app = Route::new()
        .at("/holds", post(try_hold))
        .at("/holds/:n", poem::put(confirm_hold).delete(cancel_hold))
        .at("/stock", get(stock))
        .data(inventory);
    println!("inventory participant on http://{listen} (holds expire after {ttl_secs} s)");
    Server::new(TcpListener::bind(listen)).run(app).await
}
