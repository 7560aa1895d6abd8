//! `/reservations`: create, read, confirm, cancel, join.

// A response is built once and moved once into poem; boxing its large variant buys nothing.
#![allow(clippy::large_enum_variant)]

use poem::web::Data;
use poem_openapi::param::{Header, Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::OpenApi;

use super::access::Identity;
use super::body::JsonBody;
use super::error::ApiError;
use super::problem::{GoneProblem, Problem};
use super::requests::{CreateReservationBody, ParticipantBody};
use super::view_json::ViewJson;
use super::views::{
    HistoryView, ReservationPage, ReservationView, RetriedOnHost, RetriedParticipant, StateCounts,
    StateView,
};
use super::ApiTags;
use super::StuckAfter;

mod responses;

use crate::coordinator::{Coordinator, IdempotencyKey};
use crate::domain::{Reservation, ReservationId, SpanParent, State};
use crate::store::{ListQuery, MAX_SCAN};
use responses::{
    CancelResponse, ConfirmResponse, CreateResponse, ForgetResponse, GetResponse, HistoryResponse,
    JoinResponse, ListResponse, RetryHostResponse, RetryResponse,
};

/// The reservation operations.
pub struct ReservationsApi;

fn location(r: &Reservation) -> String {
    format!("/reservations/{}", r.id())
}

fn transaction_location(r: &Reservation) -> String {
    format!("/transactions/{}", r.id())
}

/// `Retry-After` in whole seconds while the coordinator is working.
fn retry_after(r: &Reservation, coordinator: &Coordinator) -> Option<u64> {
    r.poll_after(coordinator.now())
        .map(|d| d.as_secs() + u64::from(d.subsec_nanos() > 0))
}

fn view(coordinator: &Coordinator, r: &Reservation) -> ReservationView {
    ReservationView::of(
        r,
        coordinator.now(),
        coordinator.limits().participant_timeout,
    )
}

/// What a 202 carries: the reservation's view, its `Location`, and `Retry-After`.
fn accepted(
    coordinator: &Coordinator,
    r: &Reservation,
) -> (ViewJson<ReservationView>, String, Option<u64>) {
    (
        ViewJson(view(coordinator, r)),
        location(r),
        retry_after(r, coordinator),
    )
}

fn parse_id(id: &str) -> Result<ReservationId, ApiError> {
    id.parse().map_err(|_| {
        ApiError::Problem(Problem::not_found(format!(
            "no reservation has the id `{id}`"
        )))
    })
}

/// Answers a cancel (both verbs share it).
async fn cancel(
    coordinator: &Coordinator,
    identity: &Identity,
    id: &str,
    prefer: Option<&str>,
    caller: Option<SpanParent>,
) -> CancelResponse {
    let result = async {
        let id = parse_id(id)?;
        let r = coordinator
            .decide_as(id, false, caller, identity.operator())
            .await?;
        hold_answer(coordinator, r, prefer, |r| r.state().is_terminal()).await
    }
    .await;
    match result {
        Ok((r, Some(applied))) if r.state() == State::Cancelled => {
            CancelResponse::Gone(Json(GoneProblem::of(&r)), Some(applied))
        }
        Ok((r, _)) => {
            let (v, at, retry) = accepted(coordinator, &r);
            CancelResponse::Accepted(v, at, retry)
        }
        Err(e) => e.into(),
    }
}

/// The link to the listing page after `after`, with the same filters.
fn next_page(query: &ListQuery, limit: u32, after: ReservationId) -> String {
    let mut link = url::form_urlencoded::Serializer::new(String::new());
    if let Some(state) = query.state {
        link.append_pair("state", state.as_str());
    }
    if let Some(host) = &query.participant_host {
        link.append_pair("participant_host", host);
    }
    if let Some(text) = &query.text {
        link.append_pair("q", text);
    }
    let instant =
        |t: &chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    if let Some(t) = &query.created_after {
        link.append_pair("created_after", &instant(t));
    }
    if let Some(t) = &query.created_before {
        link.append_pair("created_before", &instant(t));
    }
    link.append_pair("limit", &limit.to_string());
    link.append_pair("after", &after.to_string());
    format!("/reservations?{}", link.finish())
}

/// The seconds of a `Prefer: wait=N` (RFC 7240), when the header asks for it.
fn wait_preference(prefer: Option<&str>) -> Option<u64> {
    prefer?.split(',').find_map(|preference| {
        let (name, value) = preference.split(';').next()?.split_once('=')?;
        if name.trim().eq_ignore_ascii_case("wait") {
            value.trim().trim_matches('"').parse().ok()
        } else {
            None
        }
    })
}

/// Honours `Prefer: wait=N`: holds the answer until `settled` holds or N seconds (capped by
/// `--max-wait`) pass. Returns the reservation as it then stands, and the
/// `Preference-Applied` value when it settled in time.
async fn hold_answer(
    coordinator: &Coordinator,
    reservation: Reservation,
    prefer: Option<&str>,
    settled: impl Fn(&Reservation) -> bool,
) -> Result<(Reservation, Option<String>), ApiError> {
    let Some(secs) = wait_preference(prefer) else {
        return Ok((reservation, None));
    };
    if settled(&reservation) {
        return Ok((reservation, Some(format!("wait={secs}"))));
    }
    let limit = std::time::Duration::from_secs(secs);
    // Boxed: only answers that wait carry its future.
    let (reservation, done) =
        Box::pin(coordinator.wait_until(reservation.id(), settled, limit)).await?;
    Ok((reservation, done.then(|| format!("wait={secs}"))))
}

#[OpenApi(tag = "ApiTags::Reservations")]
impl ReservationsApi {
    /// Create a reservation
    ///
    /// Holds a set of participants together. Participants given as `link` are held at once;
    /// participants given as `try` are tried by the coordinator (`POST try.url`) right after
    /// the answer. The answer comes once the reservation is durable in the log. If nobody
    /// confirms before `expires_at`, every participant is cancelled.
    #[oai(path = "/reservations", method = "post")]
    async fn create(
        &self,
        coordinator: Data<&Coordinator>,
        body: JsonBody<CreateReservationBody>,
        /// Makes retries safe: the same key with the same body returns the reservation the
        /// first request created; the same key with another body is refused (422). At most
        /// 255 visible ASCII characters.
        #[oai(name = "Idempotency-Key")]
        idempotency_key: Header<Option<String>>,
        /// `wait=N`: answer once every try has answered (200 when `reserved`, 410 when a try
        /// failed), or after N seconds (capped by `--max-wait`) with the usual 202.
        #[oai(name = "Prefer")]
        prefer: Header<Option<String>>,
        /// W3C Trace Context: every participant call of this reservation carries this trace
        /// (an invalid value is ignored; without one the coordinator starts a trace).
        #[oai(name = "traceparent")]
        traceparent: Header<Option<String>>,
    ) -> CreateResponse {
        let result = async {
            let idempotency = match idempotency_key.0 {
                Some(key)
                    if key.is_empty()
                        || key.len() > 255
                        || !key.bytes().all(|b| b.is_ascii_graphic()) =>
                {
                    return Err(ApiError::Problem(Problem::invalid(
                        "Idempotency-Key",
                        "must be 1 to 255 visible ASCII characters",
                    )));
                }
                Some(key) => Some(IdempotencyKey {
                    key,
                    fingerprint: body.fingerprint(),
                }),
                None => None,
            };
            let mut request = body
                .value
                .into_domain()
                .map_err(|(field, message)| ApiError::Problem(Problem::invalid(field, message)))?;
            request.trace = super::trace_of(&traceparent);
            let r = coordinator.create(request, idempotency).await?;
            let settled = |r: &Reservation| r.state() == State::Reserved || r.state().is_terminal();
            hold_answer(&coordinator, r, prefer.0.as_deref(), settled).await
        }
        .await;
        match result {
            Ok((r, Some(applied))) if r.state() == State::Reserved => {
                let v = view(&coordinator, &r);
                CreateResponse::Settled(ViewJson(v), location(&r), applied)
            }
            Ok((r, Some(applied))) if r.state() == State::Cancelled => {
                CreateResponse::Gone(Json(GoneProblem::of(&r)), Some(applied))
            }
            Ok((r, _)) => {
                let (v, at, retry) = accepted(&coordinator, &r);
                CreateResponse::Accepted(v, at, retry)
            }
            Err(e) => e.into(),
        }
    }

    /// List reservations
    ///
    /// Newest first, optionally only those in one `state`, calling one participant host,
    /// matching a text, or created within a time range. Follow `next` for older ones. With
    /// `participant_host`, `q` or a time range, one page examines at most 10,000
    /// reservations: it may then hold fewer than `limit` (even none) and still have a `next`
    /// to continue the search from. `stuck=true` lists instead the reservations confirming
    /// or cancelling for longer than `--stuck-after` (oldest decision first; with several
    /// instances, every instance's). `counts=true` adds how many match in each state, the state filter aside.
    #[oai(path = "/reservations", method = "get")]
    #[allow(clippy::too_many_arguments)]
    async fn list(
        &self,
        coordinator: Data<&Coordinator>,
        stuck_after: Data<&StuckAfter>,
        /// Only reservations in this state.
        state: Query<Option<StateView>>,
        /// Only reservations with a participant (try URL or link) whose `host:port`
        /// contains this, case-insensitively; e.g. `stock` or `stock.internal:8080`.
        #[oai(validator(min_length = 1, max_length = 255))]
        participant_host: Query<Option<String>>,
        /// Only reservations whose id contains this (its last characters, say), or with a
        /// metadata value containing it (compared with the value's JSON text,
        /// case-insensitively).
        #[oai(validator(min_length = 1, max_length = 255))]
        q: Query<Option<String>>,
        /// Page size, 1 to 1000 (default 50).
        #[oai(validator(minimum(value = "1"), maximum(value = "1000")))]
        limit: Query<Option<u32>>,
        /// Only reservations older than this id (the cursor `next` carries).
        after: Query<Option<String>>,
        /// Only reservations created at or after this instant (RFC 3339).
        created_after: Query<Option<chrono::DateTime<chrono::Utc>>>,
        /// Only reservations created before this instant (RFC 3339).
        created_before: Query<Option<chrono::DateTime<chrono::Utc>>>,
        /// `true`: the reservations confirming or cancelling for longer than
        /// `--stuck-after`, whose participants keep failing (the other filters apply too).
        stuck: Query<Option<bool>>,
        /// `true`: also count the matching reservations in each state (the state filter
        /// aside), among the newest 10,000 that match the other filters.
        counts: Query<Option<bool>>,
    ) -> ListResponse {
        let result = async {
            let before = after
                .0
                .as_deref()
                .map(|a| {
                    a.parse::<ReservationId>().map_err(|e| {
                        ApiError::Problem(
                            Problem::new(
                                poem::http::StatusCode::BAD_REQUEST,
                                "bad-request",
                                "The request cannot be read",
                                e.to_string(),
                            )
                            .with_field("after"),
                        )
                    })
                })
                .transpose()?;
            let limit = limit.0.unwrap_or(50);
            let query = ListQuery {
                before,
                limit: usize::try_from(limit).unwrap_or(50),
                state: state.0.map(Into::into),
                participant_host: participant_host.0,
                text: q.0,
                created_after: created_after.0,
                created_before: created_before.0,
                max_scan: MAX_SCAN,
            };
            let counted = match counts.0 {
                Some(true) => Some(coordinator.count_by_state(&query).await?),
                _ => None,
            };
            let (items, next) = if stuck.0 == Some(true) {
                (
                    coordinator
                        .stuck_reservations(stuck_after.0 .0, &query)
                        .await?,
                    None,
                )
            } else {
                coordinator.list(query.clone()).await?
            };
            let next = next.map(|after| next_page(&query, limit, after));
            let items = items.iter().map(|r| view(&coordinator, r)).collect();
            Ok::<_, ApiError>(ReservationPage {
                items,
                next,
                counts: counted.map(|(counts, complete)| StateCounts {
                    counts: counts
                        .into_iter()
                        .map(|(state, n)| (state.to_owned(), n))
                        .collect(),
                    complete,
                }),
            })
        }
        .await;
        match result {
            Ok(page) => ListResponse::Ok(Json(page)),
            Err(e) => e.into(),
        }
    }

    /// Read a reservation
    ///
    /// 200 while undecided, being worked on, or in conflict; 303 to the transaction once
    /// confirmed; 410 once cancelled.
    #[oai(path = "/reservations/:id", method = "get")]
    async fn get(&self, coordinator: Data<&Coordinator>, id: Path<String>) -> GetResponse {
        let result = match parse_id(&id) {
            Ok(id) => coordinator.get(id).await.map_err(ApiError::from),
            Err(e) => Err(e),
        };
        match result {
            Ok(r) => match r.state() {
                State::Confirmed => GetResponse::SeeOther(transaction_location(&r)),
                State::Cancelled | State::Forgotten => GetResponse::Gone(Json(GoneProblem::of(&r))),
                _ => {
                    let v = view(&coordinator, &r);
                    let retry = retry_after(&r, &coordinator);
                    GetResponse::Ok(ViewJson(v), retry)
                }
            },
            Err(e) => e.into(),
        }
    }

    /// Read a reservation's history
    ///
    /// What happened, oldest first: its creation, each state change, and every participant
    /// call with its verb, result, duration and next retry (the latest 100 entries). Served
    /// in every state, cancelled ones included, until the retention ends.
    #[oai(path = "/reservations/:id/events", method = "get")]
    async fn events(&self, coordinator: Data<&Coordinator>, id: Path<String>) -> HistoryResponse {
        let result = match parse_id(&id) {
            Ok(id) => coordinator.get(id).await.map_err(ApiError::from),
            Err(e) => Err(e),
        };
        match result {
            Ok(r) => HistoryResponse::Ok(Json(HistoryView::from(&r))),
            Err(e) => e.into(),
        }
    }

    /// Confirm a reservation
    ///
    /// Decides to confirm: the decision is logged, then every participant gets `PUT`.
    /// Repeating it is harmless. Past the deadline the answer is 410 and nobody is called.
    #[oai(path = "/reservations/:id/confirm", method = "post")]
    async fn confirm(
        &self,
        coordinator: Data<&Coordinator>,
        identity: Data<&Identity>,
        id: Path<String>,
        /// `wait=N`: answer once confirming has ended (303, or 200 in `conflict`, or 410 when
        /// every participant was gone), or after N seconds with the usual 202.
        #[oai(name = "Prefer")]
        prefer: Header<Option<String>>,
        /// W3C Trace Context: the decision's span hangs under this one when it is of the
        /// reservation's trace (an invalid value is ignored).
        #[oai(name = "traceparent")]
        traceparent: Header<Option<String>>,
    ) -> ConfirmResponse {
        let caller = super::trace_of(&traceparent);
        let result = async {
            let id = parse_id(&id)?;
            let r = coordinator
                .decide_as(id, true, caller, identity.operator())
                .await?;
            hold_answer(&coordinator, r, prefer.0.as_deref(), |r| {
                r.state().is_terminal()
            })
            .await
        }
        .await;
        match result {
            Ok((r, applied)) if r.state() == State::Confirmed => {
                ConfirmResponse::SeeOther(transaction_location(&r), applied)
            }
            Ok((r, Some(applied))) if r.state() == State::Cancelled => {
                ConfirmResponse::Gone(Json(GoneProblem::of(&r)), Some(applied))
            }
            Ok((r, Some(applied))) if r.state() == State::Conflict => {
                ConfirmResponse::Settled(ViewJson(view(&coordinator, &r)), applied)
            }
            Ok((r, _)) => {
                let (v, at, retry) = accepted(&coordinator, &r);
                ConfirmResponse::Accepted(v, at, retry)
            }
            Err(e) => e.into(),
        }
    }

    /// Cancel a reservation
    ///
    /// Decides to cancel: the decision is logged, then every participant gets `DELETE`.
    /// Repeating it is harmless.
    #[oai(path = "/reservations/:id/cancel", method = "post")]
    async fn cancel(
        &self,
        coordinator: Data<&Coordinator>,
        identity: Data<&Identity>,
        id: Path<String>,
        /// `wait=N`: answer once every participant is cancelled (410), or after N seconds
        /// with the usual 202.
        #[oai(name = "Prefer")]
        prefer: Header<Option<String>>,
        /// W3C Trace Context: the decision's span hangs under this one when it is of the
        /// reservation's trace (an invalid value is ignored).
        #[oai(name = "traceparent")]
        traceparent: Header<Option<String>>,
    ) -> CancelResponse {
        let caller = super::trace_of(&traceparent);
        cancel(&coordinator, &identity, &id, prefer.0.as_deref(), caller).await
    }

    /// Cancel a reservation (same as `POST /reservations/{id}/cancel`)
    #[oai(path = "/reservations/:id", method = "delete")]
    async fn delete(
        &self,
        coordinator: Data<&Coordinator>,
        identity: Data<&Identity>,
        id: Path<String>,
        /// As for `POST /reservations/{id}/cancel`.
        #[oai(name = "Prefer")]
        prefer: Header<Option<String>>,
        /// As for `POST /reservations/{id}/cancel`.
        #[oai(name = "traceparent")]
        traceparent: Header<Option<String>>,
    ) -> CancelResponse {
        let caller = super::trace_of(&traceparent);
        cancel(&coordinator, &identity, &id, prefer.0.as_deref(), caller).await
    }

    /// Forget a conflict
    ///
    /// For a reservation in `conflict` only, once an operator has reconciled its
    /// participants by hand. Afterwards the reservation answers 410.
    #[oai(path = "/reservations/:id/forget", method = "post")]
    async fn forget(
        &self,
        coordinator: Data<&Coordinator>,
        identity: Data<&Identity>,
        id: Path<String>,
    ) -> ForgetResponse {
        let result = async {
            let id = parse_id(&id)?;
            Ok::<_, ApiError>(coordinator.forget(id, &identity.name).await?)
        }
        .await;
        match result {
            Ok(_) => ForgetResponse::Forgotten,
            Err(e) => e.into(),
        }
    }

    /// Retry a participant now
    ///
    /// For a participant waiting in backoff after a failed call (its `next_attempt_at` is
    /// set), typically once an operator has fixed it: the coordinator calls it again at once
    /// instead of at `next_attempt_at`, together with any other participant of the
    /// reservation that waits. `index` is the participant's place in `participants`.
    /// Idempotent; 409 when the participant does not wait.
    #[oai(path = "/reservations/:id/participants/:index/retry", method = "post")]
    async fn retry(
        &self,
        coordinator: Data<&Coordinator>,
        identity: Data<&Identity>,
        id: Path<String>,
        /// The participant's place in `participants`: 0, 1, …
        index: Path<String>,
    ) -> RetryResponse {
        let result = async {
            let id = parse_id(&id)?;
            let index = index.parse().map_err(|_| {
                ApiError::Problem(Problem::not_found(format!(
                    "reservation {id} has no participant `{}`",
                    index.0
                )))
            })?;
            Ok::<_, ApiError>(coordinator.retry_now(id, index, &identity.name).await?)
        }
        .await;
        match result {
            Ok(r) => {
                let (v, at, retry) = accepted(&coordinator, &r);
                RetryResponse::Accepted(v, at, retry)
            }
            Err(e) => e.into(),
        }
    }

    /// Retry now every participant waiting on a host
    ///
    /// Once an operator has fixed a participant service: every participant whose try URL or
    /// link is on `participant_host` (its `host:port` contains it, case-insensitively) and
    /// that waits in backoff is called again at once (with several instances, every
    /// instance's: this one takes them over). Each is recorded in its reservation's
    /// history with the operator's name. The answer lists them.
    #[oai(path = "/participants/retry", method = "post")]
    async fn retry_host(
        &self,
        coordinator: Data<&Coordinator>,
        identity: Data<&Identity>,
        /// The host (or `host:port`, or a part of it) whose waiting participants to call.
        #[oai(validator(min_length = 1, max_length = 255))]
        participant_host: Query<String>,
    ) -> RetryHostResponse {
        let result = coordinator
            .retry_now_on_host(&participant_host, &identity.name)
            .await;
        match result {
            Ok(retried) => {
                let listed = retried
                    .into_iter()
                    .map(|(id, index, name)| RetriedParticipant {
                        reservation_id: id.to_string(),
                        participant: index as u64,
                        name,
                    })
                    .collect();
                RetryHostResponse::Ok(Json(RetriedOnHost { retried: listed }))
            }
            Err(e) => ApiError::from(e).into(),
        }
    }

    /// Join a participant
    ///
    /// Adds one more participant (a `link`, or a `try` the coordinator performs) while the
    /// reservation is `trying` or `reserved`. A link that expires soon moves the deadline
    /// earlier; it never moves later.
    #[oai(path = "/reservations/:id/participants", method = "post")]
    async fn join(
        &self,
        coordinator: Data<&Coordinator>,
        id: Path<String>,
        body: JsonBody<ParticipantBody>,
    ) -> JoinResponse {
        let result = async {
            let id = parse_id(&id)?;
            let participant = body
                .value
                .into_domain("")
                .map_err(|(field, message)| ApiError::Problem(Problem::invalid(field, message)))?;
            Ok::<_, ApiError>(coordinator.join(id, participant).await?)
        }
        .await;
        match result {
            Ok(r) => {
                let (v, at, retry) = accepted(&coordinator, &r);
                JoinResponse::Accepted(v, at, retry)
            }
            Err(e) => e.into(),
        }
    }
}
