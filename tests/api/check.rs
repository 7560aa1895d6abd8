//! The participant conformance checker (`check/`, crate tcc-participant-check): it passes
//! participants that keep the contract (a model written here, the kit's fake participant),
//! and it catches each deliberately broken participant with the right rule and no other.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use poem::http::StatusCode;
use poem::web::{Data, Json, Path};
use poem::{handler, post, put, EndpointExt, IntoResponse, Request, Response, Route};
use serde_json::{json, Value};
use tcc_participant::fake::{Answer, FakeParticipant, FakeSettings, Verb};
use tcc_participant::{HoldState, Serving};
use tcc_participant_check::{check, Expiry, Options, Report, Rule};

/// What a deliberately broken participant gets wrong (each breaks one rule of the contract).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bug {
    /// Sends the link's JSON as `text/plain`.
    LinkAsText,
    /// `Location` points elsewhere than the body's `uri`.
    LocationElsewhere,
    /// Writes an `expires` an hour in the past (and keeps the hold anyway).
    ExpiresInThePast,
    /// A repeated key and body makes a second hold.
    RepeatMakesAnotherHold,
    /// Looks the key up, then makes the hold a moment later: repeats at once race.
    RepeatsRace,
    /// A reused key with another body gets the first hold.
    ReusedKeyAccepted,
    /// A second PUT on a confirmed hold answers 404.
    ConfirmOnce,
    /// A second DELETE on a cancelled hold answers 409.
    CancelOnce,
    /// DELETE undoes a confirm.
    CancelUndoesConfirm,
    /// PUT brings a cancelled hold back.
    ConfirmRevivesCancelled,
    /// PUT and DELETE on a link it never made answer 204.
    UnknownLinksAccepted,
    /// PUT and DELETE read the state, work a moment, then write it: both can win.
    DecisionsRace,
    /// Holds never expire.
    NeverExpires,
}

impl Bug {
    const ALL: [(Bug, Rule); 13] = [
        (Bug::LinkAsText, Rule::TryAnswersLink),
        (Bug::LocationElsewhere, Rule::LinkAgrees),
        (Bug::ExpiresInThePast, Rule::ExpiresInFuture),
        (Bug::RepeatMakesAnotherHold, Rule::TryRepeat),
        (Bug::RepeatsRace, Rule::TryRepeat),
        (Bug::ReusedKeyAccepted, Rule::KeyReuse),
        (Bug::ConfirmOnce, Rule::ConfirmIdempotent),
        (Bug::CancelOnce, Rule::CancelIdempotent),
        (Bug::CancelUndoesConfirm, Rule::CancelAfterConfirm),
        (Bug::ConfirmRevivesCancelled, Rule::ConfirmAfterCancel),
        (Bug::UnknownLinksAccepted, Rule::UnknownLink),
        (Bug::DecisionsRace, Rule::ConfirmCancelRace),
        (Bug::NeverExpires, Rule::HoldExpires),
    ];
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Held,
    Confirmed,
    Cancelled,
    Expired,
}

struct Hold {
    state: State,
    expires: DateTime<Utc>,
}

#[derive(Default)]
struct Books {
    holds: HashMap<String, Hold>,
    /// Idempotency key → (body, hold).
    keys: HashMap<String, (Value, String)>,
    next: u64,
}

/// A participant written from `openapi/participant.yaml`, correct unless given a bug.
struct Model {
    bug: Option<Bug>,
    margin: Duration,
    books: Mutex<Books>,
    /// The `Authorization` a try must carry, when one is required.
    authorization: Option<&'static str>,
    /// Whether it cancels when asked; if not, DELETE is 405 and holds only expire.
    cancels: bool,
}

/// How long the racing bugs work between reading and writing.
const WORK: Duration = Duration::from_millis(20);

impl Model {
    fn has(&self, bug: Bug) -> bool {
        self.bug == Some(bug)
    }

    fn books(&self) -> std::sync::MutexGuard<'_, Books> {
        self.books.lock().unwrap()
    }

    fn new_hold(
        &self,
        books: &mut Books,
        key: &str,
        body: &Value,
        expires: DateTime<Utc>,
    ) -> String {
        books.next += 1;
        let id = format!("h{}", books.next);
        books.holds.insert(
            id.clone(),
            Hold {
                state: State::Held,
                expires,
            },
        );
        books
            .keys
            .insert(key.to_owned(), (body.clone(), id.clone()));
        id
    }

    /// The hold's state, expiring it first when its time is up.
    fn state(&self, books: &mut Books, id: &str) -> Option<State> {
        let never = self.has(Bug::NeverExpires);
        let hold = books.holds.get_mut(id)?;
        if hold.state == State::Held && hold.expires <= Utc::now() && !never {
            hold.state = State::Expired;
        }
        Some(hold.state)
    }

    fn set(&self, id: &str, state: State) {
        if let Some(hold) = self.books().holds.get_mut(id) {
            hold.state = state;
        }
    }

    /// The hold a try answers with: an existing one (`200`) or a new one (`201`); `Err` is
    /// the refusal of a reused key.
    async fn try_hold(
        &self,
        key: &str,
        body: &Value,
        expires: DateTime<Utc>,
    ) -> Result<(StatusCode, String), ()> {
        if self.has(Bug::RepeatsRace) {
            let known = self.books().keys.get(key).cloned();
            if let Some((first, id)) = known {
                return if first == *body {
                    Ok((StatusCode::OK, id))
                } else {
                    Err(())
                };
            }
            tokio::time::sleep(WORK).await;
            let mut books = self.books();
            return Ok((
                StatusCode::CREATED,
                self.new_hold(&mut books, key, body, expires),
            ));
        }
        let mut books = self.books();
        match books.keys.get(key).cloned() {
            Some((first, id)) if first == *body || self.has(Bug::ReusedKeyAccepted) => {
                if self.has(Bug::RepeatMakesAnotherHold) {
                    Ok((
                        StatusCode::CREATED,
                        self.new_hold(&mut books, key, body, expires),
                    ))
                } else {
                    Ok((StatusCode::OK, id))
                }
            }
            Some(_) => Err(()),
            None => Ok((
                StatusCode::CREATED,
                self.new_hold(&mut books, key, body, expires),
            )),
        }
    }
}

fn problem(status: StatusCode, detail: &str) -> Response {
    Response::builder()
        .status(status)
        .content_type("application/problem+json")
        .body(json!({"title": detail, "status": status.as_u16()}).to_string())
}

#[handler]
async fn try_hold(req: &Request, body: Json<Value>, model: Data<&Arc<Model>>) -> Response {
    if model.authorization.is_some() && req.header("Authorization") != model.authorization {
        return problem(StatusCode::UNAUTHORIZED, "who are you?");
    }
    let Some(key) = req.header("Idempotency-Key").map(str::to_owned) else {
        return problem(StatusCode::BAD_REQUEST, "Idempotency-Key is missing");
    };
    let Some(deadline) = req
        .header("TCC-Deadline")
        .and_then(|d| DateTime::parse_from_rfc3339(d).ok())
    else {
        return problem(StatusCode::BAD_REQUEST, "TCC-Deadline is missing");
    };
    let expires =
        (Utc::now() + Duration::from_secs(60)).min(deadline.with_timezone(&Utc) + model.margin);
    let Ok((status, id)) = model.try_hold(&key, &body, expires).await else {
        return problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "the key was used with another body",
        );
    };
    let host = req.header("host").unwrap_or("127.0.0.1");
    let uri = format!("http://{host}/holds/{id}");
    let location = if model.has(Bug::LocationElsewhere) {
        format!("/elsewhere/{id}")
    } else {
        uri.clone()
    };
    let shown = if model.has(Bug::ExpiresInThePast) {
        Utc::now() - Duration::from_secs(3600)
    } else {
        expires
    };
    let media = if model.has(Bug::LinkAsText) {
        "text/plain"
    } else {
        "application/json"
    };
    Response::builder()
        .status(status)
        .header("Location", location)
        .content_type(media)
        .body(json!({"uri": uri, "expires": shown}).to_string())
}

/// Sets a hold's state and answers 204; the racing bug works a moment between reading the
/// state and writing it.
async fn settle(model: &Model, id: &str, state: State) -> Response {
    if model.has(Bug::DecisionsRace) {
        tokio::time::sleep(WORK).await;
    }
    model.set(id, state);
    StatusCode::NO_CONTENT.into_response()
}

#[handler]
async fn confirm(Path(id): Path<String>, model: Data<&Arc<Model>>) -> Response {
    let state = model.state(&mut model.books(), &id);
    match state {
        None if model.has(Bug::UnknownLinksAccepted) => StatusCode::NO_CONTENT.into_response(),
        None => problem(StatusCode::NOT_FOUND, "no such hold"),
        Some(State::Held) => settle(&model, &id, State::Confirmed).await,
        Some(State::Confirmed) if model.has(Bug::ConfirmOnce) => {
            problem(StatusCode::NOT_FOUND, "already confirmed")
        }
        Some(State::Confirmed) => StatusCode::NO_CONTENT.into_response(),
        Some(State::Cancelled) if model.has(Bug::ConfirmRevivesCancelled) => {
            settle(&model, &id, State::Confirmed).await
        }
        Some(State::Cancelled | State::Expired) => problem(StatusCode::GONE, "cancelled"),
    }
}

#[handler]
async fn cancel(Path(id): Path<String>, model: Data<&Arc<Model>>) -> Response {
    if !model.cancels {
        return problem(StatusCode::METHOD_NOT_ALLOWED, "holds expire on their own");
    }
    let state = model.state(&mut model.books(), &id);
    match state {
        None if model.has(Bug::UnknownLinksAccepted) => StatusCode::NO_CONTENT.into_response(),
        None => problem(StatusCode::NOT_FOUND, "no such hold"),
        Some(State::Held) => settle(&model, &id, State::Cancelled).await,
        Some(State::Cancelled) if model.has(Bug::CancelOnce) => {
            problem(StatusCode::CONFLICT, "already cancelled")
        }
        Some(State::Cancelled | State::Expired) => StatusCode::NO_CONTENT.into_response(),
        Some(State::Confirmed) if model.has(Bug::CancelUndoesConfirm) => {
            settle(&model, &id, State::Cancelled).await
        }
        Some(State::Confirmed) => problem(StatusCode::CONFLICT, "confirmed; stays confirmed"),
    }
}

/// Serves a model participant; the margin is what it keeps a hold past TCC-Deadline.
async fn serve(bug: Option<Bug>) -> (Serving, Arc<Model>) {
    serve_model(Model {
        bug,
        margin: MARGIN,
        books: Mutex::default(),
        authorization: None,
        cancels: true,
    })
    .await
}

async fn serve_model(model: Model) -> (Serving, Arc<Model>) {
    let model = Arc::new(model);
    let app = Route::new()
        .at("/holds", post(try_hold))
        .at("/holds/:id", put(confirm).delete(cancel))
        .data(model.clone());
    let serving = Serving::start(app, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    (serving, model)
}

const MARGIN: Duration = Duration::from_secs(1);

/// Every rule, the expiry rule with a near deadline.
async fn check_every_rule(try_url: &str) -> Report {
    let mut options = Options::new(
        try_url.parse().unwrap(),
        json!({"sku": "apple", "quantity": 1}),
    );
    options.expiry = Some(Expiry {
        margin: MARGIN,
        deadline_in: Duration::from_secs(1),
    });
    check(options).await.unwrap()
}

fn held(model: &Model) -> Vec<String> {
    let mut books = model.books();
    let ids: Vec<String> = books.holds.keys().cloned().collect();
    ids.into_iter()
        .filter(|id| model.state(&mut books, id) == Some(State::Held))
        .collect()
}

#[tokio::test]
async fn the_checker_passes_a_participant_that_keeps_the_contract_and_leaves_no_hold_behind() {
    let (serving, model) = serve(None).await;
    let report = check_every_rule(&format!("{}/holds", serving.url())).await;
    assert!(report.passed(), "{report}");
    assert_eq!(report.results.len(), Rule::ALL.len(), "{report}");
    assert!(
        held(&model).is_empty(),
        "holds left behind: {:?}",
        held(&model)
    );
    assert!(model.books().holds.len() > 20, "the race made its holds");
}

#[tokio::test]
async fn each_broken_participant_is_caught_by_its_rule_and_no_other() {
    let runs = Bug::ALL.map(|(bug, rule)| async move {
        let (serving, model) = serve(Some(bug)).await;
        let report = check_every_rule(&format!("{}/holds", serving.url())).await;
        let left = held(&model);
        (bug, rule, report, left)
    });
    let mut wrong = Vec::new();
    for (bug, rule, report, left) in futures_util::future::join_all(runs).await {
        if report.broken() != vec![rule.id()] {
            wrong.push(format!(
                "{bug:?}: expected only {} broken, got {:?}\n{report}",
                rule.id(),
                report.broken()
            ));
        }
        // What a broken service keeps against its own rules is its own; the others are cancelled.
        if bug != Bug::NeverExpires && bug != Bug::DecisionsRace && !left.is_empty() {
            wrong.push(format!("{bug:?}: holds left behind: {left:?}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n\n"));
}

#[tokio::test]
async fn a_broken_rule_shows_the_request_and_the_answer_that_broke_it() {
    let (serving, _model) = serve(Some(Bug::CancelUndoesConfirm)).await;
    let report = check_every_rule(&format!("{}/holds", serving.url())).await;
    let text = report.to_string();
    assert!(
        text.contains("FAIL  cancel-after-confirm-refused"),
        "{text}"
    );
    assert!(text.contains("> DELETE http://"), "{text}");
    assert!(text.contains("< 204 No Content"), "{text}");
    assert!(
        text.contains("12 rules: 11 held, 1 broken, 0 not checked"),
        "{text}"
    );
    let junit = report.junit();
    assert!(junit.contains(r#"failures="1""#), "{junit}");
    assert!(
        junit.contains(r#"<testcase name="cancel-after-confirm-refused""#),
        "{junit}"
    );
}

#[tokio::test]
async fn the_checker_passes_the_kits_fake_participant_and_cancels_what_it_made() {
    let fake = FakeParticipant::start_with(FakeSettings {
        deadline_margin: MARGIN,
        ..FakeSettings::default()
    })
    .await
    .unwrap();
    let report = check_every_rule(&fake.try_url()).await;
    assert!(report.passed(), "{report}");
    let holds = fake.holds().await;
    assert!(holds.len() > 20, "the race made its holds");
    let held: Vec<_> = holds
        .iter()
        .filter(|h| h.state == HoldState::Held)
        .collect();
    assert!(held.is_empty(), "holds left behind: {held:?}");
}

#[tokio::test]
async fn a_participant_that_is_not_there_is_not_checked_and_the_answer_says_so() {
    let (serving, _model) = serve(None).await;
    let url = format!("{}/holds", serving.url());
    serving.stop().await.unwrap();
    let mut options = Options::new(url.parse().unwrap(), json!({}));
    options.patience = Duration::from_millis(200);
    let refused = check(options).await.unwrap_err();
    assert!(
        refused.starts_with(&format!("nothing answered a try at {url}")),
        "{refused}"
    );
    assert!(
        refused.contains("is the service running and listening there?"),
        "{refused}"
    );
}
#[tokio::test]
async fn the_headers_given_go_with_every_try() {
    let (serving, _model) = serve_model(Model {
        bug: None,
        margin: MARGIN,
        books: Mutex::default(),
        authorization: Some("Bearer t0ken"),
        cancels: true,
    })
    .await;
    let url = format!("{}/holds", serving.url());
    let mut options = Options::new(url.parse().unwrap(), json!({"sku": "apple"}));
    let refused = check(options.clone()).await.unwrap();
    assert_eq!(
        refused.broken(),
        vec![Rule::TryAnswersLink.id()],
        "{refused}"
    );
    assert!(
        refused.to_string().contains("401 Unauthorized"),
        "{refused}"
    );

    options.headers = vec![(
        "authorization".parse().unwrap(),
        "Bearer t0ken".parse().unwrap(),
    )];
    let report = check(options).await.unwrap();
    assert!(report.passed(), "{report}");
}

#[tokio::test]
async fn a_participant_that_does_not_cancel_but_expires_is_checked_without_the_cancel_rules() {
    let (serving, _model) = serve_model(Model {
        bug: None,
        margin: MARGIN,
        books: Mutex::default(),
        authorization: None,
        cancels: false,
    })
    .await;
    let report = check_every_rule(&format!("{}/holds", serving.url())).await;
    assert!(report.passed(), "{report}");
    let skipped: Vec<&str> = report
        .results
        .iter()
        .filter(|r| matches!(r.verdict, tcc_participant_check::Verdict::Skipped(_)))
        .map(|r| r.rule.id())
        .collect();
    assert_eq!(
        skipped,
        [Rule::CancelIdempotent.id(), Rule::ConfirmAfterCancel.id()],
        "{report}"
    );
    assert!(
        report
            .to_string()
            .contains("does not cancel explicitly (405"),
        "{report}"
    );
}

#[tokio::test]
async fn a_participant_answering_503_is_asked_again_as_the_coordinator_would() {
    let fake = FakeParticipant::start().await.unwrap();
    fake.script(Verb::Try, [Answer::status(503), Answer::status(503)]);
    fake.script(Verb::Confirm, [Answer::status(503)]);
    let mut options = Options::new(fake.try_url().parse().unwrap(), json!({"sku": "apple"}));
    options.races = 2;

    let report = check(options).await.unwrap();

    assert!(report.passed(), "{report}");
    let tries: Vec<_> = fake
        .calls_of(Verb::Try)
        .iter()
        .take(3)
        .map(|c| (c.status, c.idempotency_key.clone()))
        .collect();
    assert_eq!(
        tries.iter().map(|t| t.0).collect::<Vec<_>>(),
        [Some(503), Some(503), Some(201)]
    );
    assert!(
        tries.iter().all(|t| t.1 == tries[0].1),
        "asked again with the same key: {tries:?}"
    );
    let confirms: Vec<_> = fake
        .calls_of(Verb::Confirm)
        .iter()
        .take(2)
        .map(|c| c.status)
        .collect();
    assert_eq!(confirms, [Some(503), Some(204)]);
}
