//! The Rust client (`client/`, crate tcc-client): its types against `openapi/coordinator.yaml`
//! (every schema filled and read back unchanged), and its calls against the real coordinator.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use poem::web::Data;
use poem::{handler, EndpointExt, Request, Response, Route};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};
use tcc_client::{
    Callback, Client, Link, NewParticipant, NewReservation, Outcome, Participant, ParticipantLink,
    ParticipantState, Problem, Reason, Reservation, ReservationLinks, State, Transaction,
    TransactionParticipant, TryRequest,
};
use tcc_participant::fake::{Answer, FakeParticipant, Verb};
use tcc_participant::Serving;

use crate::helpers::spawn_app;

const DOCUMENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/coordinator.yaml");

fn document() -> Value {
    serde_yaml::from_str(&std::fs::read_to_string(DOCUMENT).unwrap()).unwrap()
}

fn schema<'a>(doc: &'a Value, name: &str) -> &'a Value {
    &doc["components"]["schemas"][name]
}

fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(reference) => {
            let name = reference.trim_start_matches("#/components/schemas/");
            resolve(doc, self::schema(doc, name))
        }
        None => match schema.get("allOf").and_then(|all| all.get(0)) {
            Some(first) => resolve(doc, first),
            None => schema,
        },
    }
}

/// A value for `schema` with every property filled, optional ones too.
fn sample(doc: &Value, schema: &Value) -> Value {
    let schema = resolve(doc, schema);
    if let Some(values) = schema.get("enum") {
        return values[0].clone();
    }
    if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
        return properties
            .iter()
            .map(|(name, property)| (name.clone(), sample(doc, property)))
            .collect::<serde_json::Map<_, _>>()
            .into();
    }
    match schema.get("type").and_then(Value::as_str) {
        Some("object") => match schema.get("additionalProperties") {
            Some(values) => json!({ "key": sample(doc, values) }),
            None => json!({}),
        },
        Some("array") => json!([sample(doc, &schema["items"])]),
        Some("string") if schema.get("format") == Some(&json!("date-time")) => {
            json!("2026-01-02T03:04:05.678Z")
        }
        Some("string")
            if schema
                .get("pattern")
                .is_some_and(|p| p.to_string().contains("[Hh][Tt]")) =>
        {
            json!("http://stock.test/holds/7")
        }
        Some("string") => json!("text"),
        Some("integer") => json!(7),
        Some("boolean") => json!(true),
        _ => json!({"any": "json"}),
    }
}

/// Fills `name`'s schema, reads it as `T` and writes it back: nothing may change.
fn reads_and_writes_back<T: Serialize + DeserializeOwned>(
    doc: &Value,
    name: &str,
) -> Option<String> {
    let filled = sample(doc, schema(doc, name));
    let read: T = match serde_json::from_value(filled.clone()) {
        Ok(read) => read,
        Err(e) => return Some(format!("{name}: the client cannot read {filled}: {e}")),
    };
    let written = serde_json::to_value(read).unwrap();
    (written != filled)
        .then(|| format!("{name}: the document's {filled}\n  came back as {written}"))
}

/// Every enum value of `name`'s schema reads and writes back.
fn every_value_reads_back<T: Serialize + DeserializeOwned>(doc: &Value, name: &str) -> Vec<String> {
    let values = schema(doc, name)["enum"].as_array().unwrap();
    values
        .iter()
        .filter(|v| {
            serde_json::from_value::<T>((*v).clone())
                .ok()
                .and_then(|t| serde_json::to_value(t).ok())
                .as_ref()
                != Some(*v)
        })
        .map(|v| format!("{name}: the client does not read and write {v}"))
        .collect()
}

/// The paths in `value` that `schema` does not name.
fn strays(doc: &Value, schema: &Value, value: &Value, path: &str) -> Vec<String> {
    let schema = resolve(doc, schema);
    match value {
        Value::Object(members) => {
            // A schema that names no properties (a free-form body, metadata) takes anything.
            let Some(properties) = schema.get("properties").and_then(Value::as_object) else {
                return Vec::new();
            };
            let properties = Some(properties);
            let mut found = Vec::new();
            for (name, member) in members {
                match properties.and_then(|p| p.get(name)) {
                    Some(property) => {
                        found.extend(strays(doc, property, member, &format!("{path}.{name}")))
                    }
                    None if schema
                        .get("additionalProperties")
                        .is_some_and(|a| a != &json!(false)) => {}
                    None => found.push(format!("{path}.{name}")),
                }
            }
            found
        }
        Value::Array(items) => items
            .iter()
            .enumerate()
            .flat_map(|(i, item)| strays(doc, &schema["items"], item, &format!("{path}[{i}]")))
            .collect(),
        _ => Vec::new(),
    }
}

#[test]
fn the_clients_types_read_and_write_every_property_of_the_documents_schemas() {
    let doc = document();
    let mut drift: Vec<String> = [
        reads_and_writes_back::<NewReservation>(&doc, "NewReservation"),
        reads_and_writes_back::<NewParticipant>(&doc, "NewParticipant"),
        reads_and_writes_back::<TryRequest>(&doc, "TryRequest"),
        reads_and_writes_back::<ParticipantLink>(&doc, "ParticipantLink"),
        reads_and_writes_back::<Reservation>(&doc, "Reservation"),
        reads_and_writes_back::<Participant>(&doc, "Participant"),
        reads_and_writes_back::<Callback>(&doc, "Callback"),
        reads_and_writes_back::<ReservationLinks>(&doc, "ReservationLinks"),
        reads_and_writes_back::<Link>(&doc, "Link"),
        reads_and_writes_back::<Transaction>(&doc, "Transaction"),
        reads_and_writes_back::<TransactionParticipant>(&doc, "TransactionParticipant"),
        reads_and_writes_back::<Problem>(&doc, "Problem"),
        reads_and_writes_back::<Problem>(&doc, "GoneProblem"),
    ]
    .into_iter()
    .flatten()
    .collect();
    drift.extend(every_value_reads_back::<State>(&doc, "State"));
    drift.extend(every_value_reads_back::<ParticipantState>(
        &doc,
        "ParticipantState",
    ));
    drift.extend(every_value_reads_back::<Reason>(&doc, "Reason"));

    // What the client writes, the document names.
    let everything = NewReservation::new()
        .timeout(Duration::from_secs(30))
        .metadata("order", "A-1")
        .callback("http://orders.test/done")
        .participant(
            NewParticipant::try_at("http://stock.test/holds", json!({"sku": "apple"}))
                .named("stock")
                .header("Authorization", "Bearer x"),
        )
        .participant(NewParticipant::link(
            "http://pay.test/holds/1",
            chrono::Utc::now(),
        ));
    let written = serde_json::to_value(&everything).unwrap();
    drift.extend(
        strays(&doc, schema(&doc, "NewReservation"), &written, "$")
            .into_iter()
            .map(|path| {
                format!(
                    "NewReservation: the client writes {path}, which the document does not name"
                )
            }),
    );
    assert!(
        drift.is_empty(),
        "tcc-client and openapi/coordinator.yaml differ:\n{}",
        drift.join("\n")
    );
}

#[test]
fn the_drift_check_sees_a_property_the_client_lacks() {
    let mut doc = document();
    doc["components"]["schemas"]["Transaction"]["properties"]["refunded_at"] =
        json!({"type": "string"});
    let found = reads_and_writes_back::<Transaction>(&doc, "Transaction").unwrap();
    assert!(found.contains("refunded_at"), "{found}");
    let mut doc = document();
    doc["components"]["schemas"]["TryRequest"]["properties"]
        .as_object_mut()
        .unwrap()
        .remove("headers");
    let request = serde_json::to_value(
        NewParticipant::try_at("http://stock.test/holds", json!({})).header("A", "b"),
    )
    .unwrap();
    assert_eq!(
        strays(&doc, schema(&doc, "NewParticipant"), &request, "$"),
        ["$.try.headers"]
    );
}

fn stock_try(fake: &FakeParticipant) -> NewReservation {
    NewReservation::new()
        .participant(NewParticipant::try_at(fake.try_url(), json!({"sku": "apple"})).named("stock"))
        .metadata("order", "A-1")
}

#[tokio::test]
async fn the_client_creates_once_per_key_and_follows_a_confirm_to_its_transaction() {
    let app = spawn_app().await;
    let fake = FakeParticipant::start().await.unwrap();
    let coordinator = Client::new(&app.base).unwrap().wait(Duration::from_secs(5));
    let order = stock_try(&fake);

    let first = coordinator
        .create_with_key("order-A-1", &order)
        .await
        .unwrap()
        .open()
        .unwrap();
    let again = coordinator
        .create_with_key("order-A-1", &order)
        .await
        .unwrap()
        .open()
        .unwrap();
    assert_eq!(
        first.state,
        State::Reserved,
        "Prefer: wait answered once the try held"
    );
    assert_eq!(again.id, first.id, "the same key is the same reservation");
    assert_eq!(fake.calls_of(Verb::Try).len(), 1, "tried once");
    let other = coordinator.create(&order).await.unwrap().open().unwrap();
    assert_ne!(
        other.id, first.id,
        "create makes a key of its own each time"
    );

    let transaction = coordinator
        .confirm(&first.id)
        .await
        .unwrap()
        .confirmed()
        .unwrap();
    assert_eq!(transaction.id, first.id);
    assert_eq!(transaction.metadata["order"], "A-1");
    assert_eq!(transaction.participants[0].name, "stock");
    assert_eq!(
        coordinator.reservation(&first.id).await.unwrap(),
        Outcome::Confirmed(Box::new(transaction.clone())),
        "a confirmed reservation's 303 leads to its transaction"
    );
    assert_eq!(
        coordinator.transaction(&first.id).await.unwrap(),
        transaction
    );
    fake.stop().await.unwrap();
    app.stop().await;
}

#[tokio::test]
async fn the_clients_errors_are_typed_problems_and_a_cancel_is_an_outcome() {
    let app = spawn_app().await;
    let fake = FakeParticipant::start().await.unwrap();
    let coordinator = Client::new(&app.base).unwrap().wait(Duration::from_secs(5));

    let bad =
        NewReservation::new().participant(NewParticipant::try_at("ftp://stock.test", json!({})));
    let problem = coordinator.create(&bad).await.unwrap_err();
    let problem = problem.problem().expect("a problem answer");
    assert_eq!(
        (problem.status, problem.kind()),
        (422, "invalid-request"),
        "{problem}"
    );
    assert_eq!(
        problem.field.as_deref(),
        Some("participants[0].try.url"),
        "{problem}"
    );

    let unknown = coordinator
        .reservation("01a24600-0000-7000-8000-000000000000")
        .await
        .unwrap_err();
    assert_eq!(
        unknown.problem().map(Problem::kind),
        Some("not-found"),
        "{unknown}"
    );

    let reserved = coordinator
        .create(&stock_try(&fake))
        .await
        .unwrap()
        .open()
        .unwrap();
    let Outcome::Cancelled(cancelled) = coordinator.cancel(&reserved.id).await.unwrap() else {
        panic!("a cancel with Prefer: wait ends cancelled");
    };
    assert_eq!(cancelled.reason, Some(Reason::Client));
    assert_eq!(cancelled.participants[0].state, ParticipantState::Cancelled);
    // Too late to confirm: the 410 says how it ended.
    let Outcome::Cancelled(late) = coordinator.confirm(&reserved.id).await.unwrap() else {
        panic!("a confirm after the cancel finds it cancelled");
    };
    assert_eq!((late.status, late.reason), (410, Some(Reason::Client)));
    // Joining it now is a problem, not an outcome.
    let joining = NewParticipant::try_at(fake.try_url(), json!({"sku": "pear"}));
    let refused = coordinator.join(&reserved.id, &joining).await.unwrap_err();
    assert_eq!(refused.problem().map(|p| p.status), Some(410), "{refused}");
    // Joining an open one answers the reservation with its new participant.
    let open = coordinator
        .create(&stock_try(&fake))
        .await
        .unwrap()
        .open()
        .unwrap();
    let joined = coordinator
        .join(&open.id, &joining.named("pears"))
        .await
        .unwrap();
    assert_eq!(joined.participants.len(), 2);
    assert_eq!(joined.participants[1].name, "pears");

    fake.script(Verb::Try, [Answer::status(409)]);
    let Outcome::Cancelled(refused) = coordinator.create(&stock_try(&fake)).await.unwrap() else {
        panic!("a refused try ends the reservation cancelled");
    };
    assert_eq!(refused.reason, Some(Reason::TryFailed));
    fake.stop().await.unwrap();
    app.stop().await;
}

/// Between the client and the coordinator: answers 503 to the first request, forwards the
/// rest, and keeps each request's `Idempotency-Key`.
struct Flaky {
    coordinator: String,
    keys: Mutex<Vec<Option<String>>>,
}

#[handler]
async fn flaky(req: &Request, body: poem::Body, flaky: Data<&Arc<Flaky>>) -> Response {
    let key = req.header("Idempotency-Key").map(str::to_owned);
    let first = {
        let mut keys = flaky.keys.lock().unwrap();
        keys.push(key.clone());
        keys.len() == 1
    };
    if first {
        return Response::builder()
            .status(poem::http::StatusCode::SERVICE_UNAVAILABLE)
            .content_type("application/problem+json")
            .body(r#"{"type":"urn:tcc-coordinator:problem:unavailable","title":"Unavailable","status":503,"detail":"the log is busy"}"#);
    }
    let mut forward = reqwest::Client::new()
        .post(format!("{}{}", flaky.coordinator, req.uri().path()))
        .header("content-type", "application/json")
        .body(body.into_bytes().await.unwrap());
    for name in ["Idempotency-Key", "Prefer"] {
        if let Some(value) = req.header(name) {
            forward = forward.header(name, value);
        }
    }
    let answer = forward.send().await.unwrap();
    let mut response = Response::builder().status(answer.status());
    for (name, value) in answer.headers() {
        response = response.header(name, value);
    }
    response.body(answer.bytes().await.unwrap())
}

#[tokio::test]
async fn the_client_sends_a_create_again_with_its_key_after_a_503() {
    let app = spawn_app().await;
    let fake = FakeParticipant::start().await.unwrap();
    let state = Arc::new(Flaky {
        coordinator: app.base.clone(),
        keys: Mutex::default(),
    });
    let proxy = Serving::start(
        Route::new()
            .at("/reservations", poem::post(flaky))
            .data(state.clone()),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let coordinator = Client::new(&proxy.url())
        .unwrap()
        .wait(Duration::from_secs(5));

    let created = coordinator
        .create(&stock_try(&fake))
        .await
        .unwrap()
        .open()
        .unwrap();

    let keys = state.keys.lock().unwrap().clone();
    assert_eq!(keys.len(), 2, "sent again after the 503");
    assert!(
        keys[0].is_some() && keys[0] == keys[1],
        "with the same key: {keys:?}"
    );
    assert_eq!(created.state, State::Reserved);
    assert_eq!(fake.calls_of(Verb::Try).len(), 1);
    proxy.stop().await.unwrap();
    fake.stop().await.unwrap();
    app.stop().await;
}
