//! Logging, metrics and traces: the tracing subscriber (the only global of the process), the
//! Prometheus registry of one coordinator, and its spans for an OTLP collector ([`Traces`]).
//!
//! Each [`crate::App`] has its own registry and its own trace exporter, so that several
//! coordinators in one process (a test suite) count and export apart.

mod traces;

pub use traces::{decision_span, reservation_span, ActiveSpan, Traces, TracesError};

use std::sync::Arc;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tracing_subscriber::EnvFilter;

use crate::domain::State;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Installs the log subscriber on stderr, filtered by `RUST_LOG` (default: `info` for the
/// coordinator, `warn` for its libraries). Safe to call twice.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("warn,tcc_coordinator=info,tcc-coordinator=info"));
    // Colours only for a person at a terminal: a file, a pipe, journald or a CI log gets
    // plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// A state as a label value.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub struct StateLabel(pub State);

impl EncodeLabelValue for StateLabel {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelValueEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.0.as_str())
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: StateLabel,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransitionLabels {
    pub from: StateLabel,
    pub to: StateLabel,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    /// `try`, `confirm` or `cancel`.
    pub verb: &'static str,
    /// `ok`, `refused`, `gone`, `retry`, `expired`.
    pub outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerbLabels {
    pub verb: &'static str,
}

/// Every metric of one coordinator. Cheap to clone: the handles share their values.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    pub reservations: Family<StateLabels, Gauge>,
    pub transitions: Family<TransitionLabels, Counter>,
    pub calls: Family<CallLabels, Counter>,
    pub call_seconds: Family<VerbLabels, Histogram>,
    pub retries: Family<VerbLabels, Counter>,
    pub deadlines_fired: Counter,
    pub deadline_lateness_seconds: Histogram,
    pub log_batch_writes: Histogram,
    pub log_flush_seconds: Histogram,
    pub log_fsync_seconds: Histogram,
    pub log_disk_available_bytes: Gauge,
    pub stuck: Gauge,
}

/// Bucket bounds in seconds, from a millisecond to a minute.
const SECONDS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0, 60.0,
];

fn seconds() -> Histogram {
    Histogram::new(SECONDS)
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("tcc");
        let reservations = Family::<StateLabels, Gauge>::default();
        registry.register(
            "reservations",
            "Reservations by state (those still in the log)",
            reservations.clone(),
        );
        let transitions = Family::<TransitionLabels, Counter>::default();
        registry.register(
            "transitions",
            "State changes of reservations, by from and to state",
            transitions.clone(),
        );
        let calls = Family::<CallLabels, Counter>::default();
        registry.register(
            "participant_calls",
            "Calls to participants, by verb and outcome",
            calls.clone(),
        );
        let call_seconds =
            Family::<VerbLabels, Histogram>::new_with_constructor(seconds as fn() -> Histogram);
        registry.register(
            "participant_call_duration_seconds",
            "Time from sending a participant call to its answer (or failure)",
            call_seconds.clone(),
        );
        let retries = Family::<VerbLabels, Counter>::default();
        registry.register(
            "participant_retries",
            "Participant calls scheduled again after a failure",
            retries.clone(),
        );
        let deadlines_fired = Counter::default();
        registry.register(
            "deadlines_fired",
            "Reservations cancelled because their deadline passed",
            deadlines_fired.clone(),
        );
        let deadline_lateness_seconds = seconds();
        registry.register(
            "deadline_lateness_seconds",
            "Time from a reservation's deadline to the decision to cancel it",
            deadline_lateness_seconds.clone(),
        );
        let log_batch_writes = Histogram::new([
            1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0,
        ]);
        registry.register(
            "log_flush_batch_writes",
            "Writers made durable by one flush of the transaction log (group commit)",
            log_batch_writes.clone(),
        );
        let log_flush_seconds = seconds();
        registry.register(
            "log_flush_duration_seconds",
            "Time one flush of the transaction log takes",
            log_flush_seconds.clone(),
        );
        let log_fsync_seconds = seconds();
        registry.register(
            "log_fsync_duration_seconds",
            "Time the fsyncs of one flush take (new blob files, then fdatasync of the log's data file)",
            log_fsync_seconds.clone(),
        );
        let log_disk_available_bytes = Gauge::default();
        registry.register(
            "log_disk_available_bytes",
            "Free space on the disk holding the log (writes are refused below --disk-reserve)",
            log_disk_available_bytes.clone(),
        );
        let stuck = Gauge::default();
        registry.register(
            "reservations_stuck",
            "Reservations confirming or cancelling for longer than --stuck-after",
            stuck.clone(),
        );
        Self {
            registry: Arc::new(registry),
            reservations,
            transitions,
            calls,
            call_seconds,
            retries,
            deadlines_fired,
            deadline_lateness_seconds,
            log_batch_writes,
            log_flush_seconds,
            log_fsync_seconds,
            log_disk_available_bytes,
            stuck,
        }
    }
}

impl Metrics {
    /// One more reservation in `state` (a new one, or one read back at start).
    pub fn entered(&self, state: State) {
        self.reservations
            .get_or_create(&StateLabels {
                state: StateLabel(state),
            })
            .inc();
    }

    /// A reservation went from `from` to `to`.
    pub fn moved(&self, from: State, to: State) {
        self.left(from);
        self.entered(to);
        self.transitions
            .get_or_create(&TransitionLabels {
                from: StateLabel(from),
                to: StateLabel(to),
            })
            .inc();
    }

    /// A reservation in `state` is no longer in the log.
    /// Sets the state counts read from a shared store; states missing from `counts` are 0.
    pub fn set_states(&self, counts: &[(State, u64)]) {
        for state in State::ALL {
            let count = counts
                .iter()
                .find(|(s, _)| *s == state)
                .map_or(0, |(_, n)| i64::try_from(*n).unwrap_or(i64::MAX));
            self.reservations
                .get_or_create(&StateLabels {
                    state: StateLabel(state),
                })
                .set(count);
        }
    }

    pub fn left(&self, state: State) {
        self.reservations
            .get_or_create(&StateLabels {
                state: StateLabel(state),
            })
            .dec();
    }

    /// One participant call and how it ended.
    pub fn called(&self, verb: &'static str, outcome: &'static str, took: std::time::Duration) {
        self.calls
            .get_or_create(&CallLabels { verb, outcome })
            .inc();
        self.call_seconds
            .get_or_create(&VerbLabels { verb })
            .observe(took.as_secs_f64());
    }

    /// The registry in the text exposition format (OpenMetrics).
    #[must_use]
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// The registry in the format `exposition` names.
    #[must_use]
    pub fn render_as(&self, exposition: Exposition) -> String {
        match exposition {
            Exposition::OpenMetrics => self.render(),
            Exposition::Prometheus => prometheus_text(&self.render()),
        }
    }
}

/// The text formats `/metrics` speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exposition {
    /// OpenMetrics 1.0, what Prometheus asks for first.
    OpenMetrics,
    /// Prometheus's classic text format 0.0.4, what curl, older agents and anything that
    /// asks for nothing in particular get.
    Prometheus,
}

impl Exposition {
    /// Chooses from a scraper's `Accept` (RFC 9110 quality values): OpenMetrics when it is
    /// asked for at least as strongly as plain text, else the classic format.
    #[must_use]
    pub fn negotiate(accept: Option<&str>) -> Self {
        let (mut openmetrics, mut plain) = (0.0_f32, 0.0_f32);
        for range in accept.unwrap_or("").split(',') {
            let mut parts = range.split(';');
            let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let quality = parts
                .find_map(|p| p.trim().strip_prefix("q="))
                .and_then(|q| q.trim().parse().ok())
                .unwrap_or(1.0);
            match media.as_str() {
                "application/openmetrics-text" => openmetrics = openmetrics.max(quality),
                "text/plain" | "text/*" | "*/*" => plain = plain.max(quality),
                _ => {}
            }
        }
        if openmetrics > 0.0 && openmetrics >= plain {
            Exposition::OpenMetrics
        } else {
            Exposition::Prometheus
        }
    }

    /// The `Content-Type` of a body in this format.
    #[must_use]
    pub fn content_type(self) -> &'static str {
        match self {
            Exposition::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Exposition::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

/// Rewrites OpenMetrics text as Prometheus text 0.0.4: a counter's `HELP` and `TYPE` name its
/// samples (`…_total`), types 0.0.4 lacks are `untyped`, `HELP` unescapes quotes, and `UNIT`
/// and `# EOF` go (0.0.4 has neither).
fn prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let family = |name: &str| {
        if counters.contains(name) {
            format!("{name}_total")
        } else {
            name.to_owned()
        }
    };
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            out.push_str(&format!(
                "# HELP {} {}\n",
                family(name),
                help.replace("\\\"", "\"")
            ));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let kind = match kind {
                "counter" | "gauge" | "histogram" | "summary" => kind,
                _ => "untyped",
            };
            out.push_str(&format!("# TYPE {} {kind}\n", family(name)));
        } else if !(line.starts_with("# UNIT ") || line == "# EOF") {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}
