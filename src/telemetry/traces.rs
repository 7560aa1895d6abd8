//! Traces for a collector: the spans of a reservation (its create, its tries, its decision,
//! each phase and each participant call), in the W3C trace the coordinator propagates,
//! exported over OTLP/HTTP (protobuf) when `--otlp-endpoint` is set.
//!
//! Spans are built with explicit parents, not from the log subscriber's spans: a reservation
//! outlives the request that created it, and its phases run in drivers, on any instance,
//! after any restart. So every parent is computed from what the log keeps (the trace and the
//! reservation id): the create's span id and the decision's span id are derived from the
//! reservation id, and a phase resumed after a crash, or driven by another instance, still
//! hangs under them.
//!
//! Export never blocks a request: ending a span is a non-blocking send into the SDK's batch
//! queue (2,048 spans, `OTEL_BSP_MAX_QUEUE_SIZE`), drained by a thread of its own every 5 s
//! (`OTEL_BSP_SCHEDULE_DELAY`) or every 512 spans. While the collector is down the queue fills
//! and later spans are dropped, so memory stays bounded; what is queued at shutdown is sent
//! before the process exits.

use std::cell::Cell;
use std::time::SystemTime;

use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt as _, TraceFlags, TraceId,
    TraceState, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::trace::{
    BatchSpanProcessor, IdGenerator, RandomIdGenerator, SdkTracer, SdkTracerProvider,
};
use opentelemetry_sdk::Resource;

use crate::domain::{ReservationId, SpanParent, TraceContext};

/// The spans of one coordinator: exported to a collector, or only given ids (for the
/// `traceparent` of participant calls) when no collector is configured. Cheap to clone.
#[derive(Clone, Default)]
pub struct Traces {
    export: Option<Export>,
}

#[derive(Clone)]
struct Export {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

/// The collector could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("cannot export traces to {endpoint}: {reason}")]
pub struct TracesError {
    endpoint: String,
    reason: String,
}

impl Traces {
    /// Spans get ids, nothing is exported.
    #[must_use]
    pub fn off() -> Self {
        Self::default()
    }

    /// Exports to the OTLP/HTTP collector at `endpoint`, the base URL as in
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` (`/v1/traces` is appended, as the specification says).
    /// The other `OTEL_EXPORTER_OTLP_*` and `OTEL_BSP_*` variables (headers, timeout, queue)
    /// and `OTEL_SERVICE_NAME` apply as the OpenTelemetry SDK reads them.
    ///
    /// # Errors
    /// [`TracesError`] when the endpoint is not a URL the exporter accepts.
    pub fn to_collector(endpoint: &url::Url) -> Result<Self, TracesError> {
        let base = endpoint.as_str().trim_end_matches('/');
        let url = format!("{base}/v1/traces");
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(url.clone())
            .build()
            .map_err(|e| TracesError {
                endpoint: url.clone(),
                reason: e.to_string(),
            })?;
        let mut resource = Resource::builder();
        if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
            resource = resource.with_service_name("tcc-coordinator");
        }
        let provider = SdkTracerProvider::builder()
            .with_span_processor(BatchSpanProcessor::builder(exporter).build())
            .with_id_generator(ChosenIds::default())
            .with_resource(
                resource
                    .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
                    .build(),
            )
            .build();
        let tracer = provider.tracer("tcc-coordinator");
        Ok(Self {
            export: Some(Export { provider, tracer }),
        })
    }

    /// Whether spans go to a collector.
    #[must_use]
    pub fn is_exported(&self) -> bool {
        self.export.is_some()
    }

    /// A trace of the coordinator's own, for a client that sent no `traceparent`: sampled
    /// when spans are exported, so that participants record theirs too.
    #[must_use]
    pub fn new_trace(&self) -> TraceContext {
        let trace = TraceContext::new(uuid::Uuid::new_v4().into_bytes())
            .unwrap_or_else(|| TraceContext::new([1; 16]).expect("a non-zero trace id"));
        if self.is_exported() {
            trace.sampled()
        } else {
            trace
        }
    }

    /// Starts a span under `parent`, now. `id` names the span (the reservation's own spans);
    /// `None` draws a random one.
    #[must_use]
    pub fn start(
        &self,
        name: &'static str,
        kind: SpanKind,
        parent: SpanParent,
        id: Option<[u8; 8]>,
    ) -> ActiveSpan {
        self.start_at(name, kind, parent, id, SystemTime::now())
    }

    /// As [`Traces::start`], for a span that began at `started` (a request whose span id is
    /// known only once the reservation exists).
    #[must_use]
    pub fn start_at(
        &self,
        name: &'static str,
        kind: SpanKind,
        parent: SpanParent,
        id: Option<[u8; 8]>,
        started: SystemTime,
    ) -> ActiveSpan {
        let Some(export) = &self.export else {
            return ActiveSpan {
                trace: parent.trace,
                id: id.unwrap_or_else(random_span_id),
                span: None,
            };
        };
        let cx = match parent.span {
            Some(span) => Context::new().with_remote_span_context(SpanContext::new(
                TraceId::from_bytes(parent.trace.trace_id_bytes()),
                SpanId::from_bytes(span),
                TraceFlags::new(parent.trace.flags()),
                true,
                TraceState::default(),
            )),
            None => Context::new(),
        };
        // A root span has no parent to take the trace id from: the SDK asks its id
        // generator, which answers with the reservation's trace.
        CHOSEN.with(|c| {
            c.set(Chosen {
                trace: Some(TraceId::from_bytes(parent.trace.trace_id_bytes())),
                span: id.map(SpanId::from_bytes),
            });
        });
        let span = export
            .tracer
            .span_builder(name)
            .with_kind(kind)
            .with_start_time(started)
            .start_with_context(&export.tracer, &cx);
        CHOSEN.with(|c| c.set(Chosen::default()));
        ActiveSpan {
            trace: parent.trace,
            id: span.span_context().span_id().to_bytes(),
            span: Some(span),
        }
    }

    /// Sends what is queued and stops exporting (at shutdown; blocks up to the export
    /// timeout, so call it off the async workers).
    pub fn shutdown(&self) {
        if let Some(export) = &self.export {
            if let Err(error) = export.provider.shutdown() {
                tracing::warn!(%error, "traces: the last spans could not be sent to the collector");
            }
        }
    }
}

/// A span that has begun; it ends when dropped (or with [`ActiveSpan::end`]).
pub struct ActiveSpan {
    trace: TraceContext,
    id: [u8; 8],
    span: Option<opentelemetry_sdk::trace::Span>,
}

impl ActiveSpan {
    /// Where this span's children hang.
    #[must_use]
    pub fn as_parent(&self) -> SpanParent {
        SpanParent {
            trace: self.trace,
            span: Some(self.id),
        }
    }

    /// The `traceparent` of a call this span makes.
    #[must_use]
    pub fn traceparent(&self) -> String {
        self.trace.child(self.id)
    }

    /// Whether the span goes to a collector: attributes are worth computing.
    #[must_use]
    pub fn is_recording(&self) -> bool {
        self.span
            .as_ref()
            .is_some_and(opentelemetry::trace::Span::is_recording)
    }

    /// Adds an attribute.
    pub fn set(&mut self, key: &'static str, value: impl Into<opentelemetry::Value>) {
        if let Some(span) = &mut self.span {
            span.set_attribute(KeyValue::new(key, value));
        }
    }

    /// Marks the span failed, saying why.
    pub fn fail(&mut self, why: impl Into<String>) {
        if let Some(span) = &mut self.span {
            span.set_status(Status::error(why.into()));
        }
    }

    /// Ends the span now.
    pub fn end(self) {}
}

/// The span id of a reservation's create (and the parent of its tries and callback): bytes
/// 8 to 15 of its id, the random half of a UUIDv7.
#[must_use]
pub fn reservation_span(id: ReservationId) -> [u8; 8] {
    let bytes = id.to_bytes();
    let mut span = [0; 8];
    span.copy_from_slice(&bytes[8..]);
    nonzero(span)
}

/// The span id of a reservation's decision (the parent of its confirm or cancel phase): the
/// create's with its first byte inverted, never equal to any create's (whose first byte has
/// the UUID variant bits `10`).
#[must_use]
pub fn decision_span(id: ReservationId) -> [u8; 8] {
    let mut span = reservation_span(id);
    span[0] = !span[0];
    nonzero(span)
}

fn nonzero(span: [u8; 8]) -> [u8; 8] {
    if span == [0; 8] {
        [1; 8]
    } else {
        span
    }
}

fn random_span_id() -> [u8; 8] {
    let bytes = uuid::Uuid::new_v4().into_bytes();
    let mut span = [0; 8];
    span.copy_from_slice(&bytes[..8]);
    nonzero(span)
}

#[derive(Clone, Copy, Default)]
struct Chosen {
    trace: Option<TraceId>,
    span: Option<SpanId>,
}

thread_local! {
    /// The ids the next span built on this thread must have; set and cleared around the
    /// SDK's synchronous `start_with_context`, which asks the id generator once for each.
    static CHOSEN: Cell<Chosen> = const { Cell::new(Chosen { trace: None, span: None }) };
}

/// The SDK's random ids, unless the span being built on this thread has chosen its own.
#[derive(Debug, Default)]
struct ChosenIds(RandomIdGenerator);

impl IdGenerator for ChosenIds {
    fn new_trace_id(&self) -> TraceId {
        take_chosen(|c| c.trace.take()).unwrap_or_else(|| self.0.new_trace_id())
    }

    fn new_span_id(&self) -> SpanId {
        take_chosen(|c| c.span.take()).unwrap_or_else(|| self.0.new_span_id())
    }
}

/// Takes one of the chosen ids of this thread (each is used once).
fn take_chosen<T>(pick: impl FnOnce(&mut Chosen) -> Option<T>) -> Option<T> {
    CHOSEN.with(|c| {
        let mut chosen = c.get();
        let id = pick(&mut chosen);
        c.set(chosen);
        id
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_create_and_decision_spans_of_a_reservation_differ_and_are_stable() {
        let id = ReservationId::new();
        assert_eq!(reservation_span(id), reservation_span(id));
        assert_ne!(reservation_span(id), decision_span(id));
        assert_ne!(reservation_span(id), [0; 8]);
        assert_ne!(reservation_span(ReservationId::new()), reservation_span(id));
    }

    #[test]
    fn without_a_collector_spans_still_have_ids_for_traceparent() {
        let traces = Traces::off();
        let trace = traces.new_trace();
        assert!(
            trace.child([1; 8]).ends_with("-00"),
            "nobody records an unexported trace"
        );
        let span = traces.start(
            "call",
            SpanKind::Client,
            SpanParent { trace, span: None },
            None,
        );
        assert_eq!(span.as_parent().trace, trace);
        assert!(span
            .traceparent()
            .starts_with(&format!("00-{}-", trace.trace_id())));
        let named = traces.start(
            "create",
            SpanKind::Server,
            SpanParent { trace, span: None },
            Some([7; 8]),
        );
        assert_eq!(named.as_parent().span, Some([7; 8]));
    }
}
