//! Where each span of a reservation hangs in its trace (see [`crate::telemetry::Traces`]):
//!
//! ```text
//! client's span (traceparent of POST /reservations)
//! └── create                         span id derived from the reservation id
//!     ├── tries                      one per run of the try phase
//!     │   └── participant try        one per call; its id goes in the call's traceparent
//!     ├── decision                   span id derived from the reservation id; under the
//!     │   │                          deciding request's traceparent when it sent one
//!     │   └── confirm phase | cancel phase
//!     │       └── participant confirm | participant cancel
//!     └── callback phase
//!         └── callback
//! ```
//!
//! The derived ids let a phase resumed after a crash, or on another instance, find its
//! parent without the log keeping span ids.

use std::time::SystemTime;

use opentelemetry::trace::SpanKind;

use super::Coordinator;
use crate::domain::{
    CallVerb, ParticipantUrl, Reason, Reservation, SpanParent, State, TraceContext,
};
use crate::participant::Outcome;
use crate::telemetry::{decision_span, reservation_span, ActiveSpan};

impl Coordinator {
    /// Records the span of a create that has just become durable: it began at `started`,
    /// under the client's span when the request carried a `traceparent`.
    pub(super) fn create_span(
        &self,
        r: &Reservation,
        caller: Option<SpanParent>,
        started: SystemTime,
    ) {
        let Some(trace) = self.exported_trace(r) else {
            return;
        };
        let parent = caller.unwrap_or(SpanParent { trace, span: None });
        let id = reservation_span(r.id());
        let mut span = self.milestone("create", SpanKind::Server, parent, id, r, started);
        span.set(
            "tcc.participants",
            i64::try_from(r.participants().len()).unwrap_or(i64::MAX),
        );
    }

    /// Records the span of the decision just made durable, which began at `started`: a
    /// client's confirm or cancel (recorded by the command, which knows the request's
    /// `traceparent`), or the coordinator's own (the deadline, a refused try: recorded by
    /// the unit of work as it saves it). A deciding request that carried a `traceparent` of
    /// the reservation's trace is its parent; otherwise the create is.
    pub(super) fn decision_span(
        &self,
        r: &Reservation,
        caller: Option<SpanParent>,
        started: SystemTime,
    ) {
        let Some(trace) = self.exported_trace(r) else {
            return;
        };
        let parent = caller
            .filter(|c| c.trace.trace_id_bytes() == trace.trace_id_bytes())
            .unwrap_or(SpanParent {
                trace,
                span: Some(reservation_span(r.id())),
            });
        let kind = if caller.is_some() {
            SpanKind::Server
        } else {
            SpanKind::Internal
        };
        let id = decision_span(r.id());
        let mut span = self.milestone("decision", kind, parent, id, r, started);
        span.set(
            "tcc.decided_by",
            if decided_by_client(r) {
                "client"
            } else {
                "coordinator"
            },
        );
        if let Some(reason) = r.reason() {
            span.set("tcc.reason", reason.as_str());
        }
    }

    /// The reservation's trace, when its spans are exported.
    fn exported_trace(&self, r: &Reservation) -> Option<TraceContext> {
        r.trace().filter(|_| self.inner.traces.is_exported())
    }

    /// A span of the reservation's own (its create, its decision), named by `id`, with
    /// its id and state.
    fn milestone(
        &self,
        name: &'static str,
        kind: SpanKind,
        parent: SpanParent,
        id: [u8; 8],
        r: &Reservation,
        started: SystemTime,
    ) -> ActiveSpan {
        let mut span = self
            .inner
            .traces
            .start_at(name, kind, parent, Some(id), started);
        span.set("tcc.reservation.id", r.id().to_string());
        span.set("tcc.state", r.state().as_str());
        span
    }

    /// The span of the phase the driver is about to run on `r`; `None` for a reservation
    /// without a trace (written before traces were kept).
    pub(super) fn phase_span(&self, r: &Reservation) -> Option<ActiveSpan> {
        let trace = r.trace()?;
        let (name, parent) = match r.state() {
            State::Trying => ("tries", reservation_span(r.id())),
            State::Confirming => ("confirm phase", decision_span(r.id())),
            State::Cancelling => ("cancel phase", decision_span(r.id())),
            _ => ("callback phase", reservation_span(r.id())),
        };
        let parent = SpanParent {
            trace,
            span: Some(parent),
        };
        let mut span = self
            .inner
            .traces
            .start(name, SpanKind::Internal, parent, None);
        if span.is_recording() {
            span.set("tcc.reservation.id", r.id().to_string());
        }
        Some(span)
    }

    /// The span of one participant call (`index`; `None` for the completion callback)
    /// under its phase's span; the call carries its id in `traceparent`. Only the host and
    /// port are recorded: a link's path and query may be its capability.
    pub(super) fn call_span(
        &self,
        phase: Option<SpanParent>,
        verb: Option<CallVerb>,
        index: Option<usize>,
        url: &ParticipantUrl,
    ) -> Option<ActiveSpan> {
        let (name, method) = match verb {
            Some(CallVerb::Try | CallVerb::TryAgain) => ("participant try", "POST"),
            Some(CallVerb::Confirm) => ("participant confirm", "PUT"),
            Some(CallVerb::Cancel) => ("participant cancel", "DELETE"),
            None => ("callback", "POST"),
        };
        let mut span = self
            .inner
            .traces
            .start(name, SpanKind::Client, phase?, None);
        if !span.is_recording() {
            // Only its id is needed, for the call's traceparent.
            return Some(span);
        }
        if let Some(verb) = verb {
            span.set("tcc.verb", verb.as_str());
        }
        span.set("http.request.method", method);
        if let Some(host) = url.as_url().host_str() {
            span.set("server.address", host.to_owned());
        }
        if let Some(port) = url.as_url().port_or_known_default() {
            span.set("server.port", i64::from(port));
        }
        if let Some(index) = index {
            span.set(
                "tcc.participant.index",
                i64::try_from(index).unwrap_or(i64::MAX),
            );
        }
        Some(span)
    }
}

/// Whether a request's confirm or cancel (a client's or an operator's) made the decision
/// (rather than the deadline, a refused try, or a link about to expire).
pub(super) fn decided_by_client(r: &Reservation) -> bool {
    matches!(r.reason(), None | Some(Reason::Client | Reason::Operator))
}

/// Ends a call's span with its answer (`tcc.outcome`: `ok`, `refused`, `gone`, `retry`,
/// ...), failed when the answer says what went wrong.
pub(super) fn end_call(span: Option<ActiveSpan>, outcome: &impl Outcome) {
    if let Some(mut span) = span {
        span.set("tcc.outcome", outcome.label());
        if let Some(error) = outcome.error() {
            span.fail(error);
        }
    }
}
