//! # tcc-coordinator
//!
//! A try/confirm/cancel (TCC) transaction coordinator for REST services.
//!
//! ## Layout
//!
//! | module | owns |
//! |---|---|
//! | [`config`] | flags and environment variables into a typed [`Config`] |
//! | `app` | the composition root: [`App::build`], [`App::run_until_stopped`] |
//! | `listener` | TLS, and cutting connections that stay silent |
//! | `api` | HTTP shape only: routes, request/response types, problem+json, tokens, the dashboard |
//! | `coordinator` | the use cases, a room per job: `commands`, `queries` (and waiting), `unit_of_work` (the only writer), `drivers`, `tries`, `decisions` (confirm and cancel phases), `callbacks`, `deadlines` (and purges), `resumption` (recovery and takeover), `admission` (and validation), `topology` (every embedded/shared difference) |
//! | `domain` | ids, links, limits, the reservation's and the participants' state machines, deadlines, history, trace context: pure, no I/O |
//! | `participant` | the `Participants` seam; `http`: one call per verb, each answer classified; `policy`: which hosts may be called |
//! | [`telemetry`] | the log subscriber, the metrics of one coordinator, and its spans for an OTLP collector |
//! | `retry` | the backoff policy |
//! | `store` | the log behind one interface with conditional writes: `embedded` (sled, group commit), `postgres` (statements, `connection`, `failover`, `schema`), `record` (the versioned format) |
//! | `cluster` | with PostgreSQL: the lease heartbeat, takeover of lapsed instances' work, resuming own work after an outage, retention |
//! | `timers` | the deadline heap and its thread: handed what to call (`Fire`), it knows no coordinator |
//!
//! Dependencies point one way: `api -> coordinator -> {domain, store, participant}`; the
//! deadline thread calls what it was handed; `domain` depends on nothing; only `app` names
//! every concrete type (and decides, once, between an embedded and a shared log).
//!
//! ## Guarantees
//!
//! - **Durable before visible**: a reservation is flushed to the log before `202`, and a
//!   decision before the first participant call; concurrent writers share one flush.
//! - **No participant left behind**: after a restart every unfinished reservation resumes;
//!   deadlines that passed meanwhile fire at once. A link gets `PUT` or `DELETE`, never both.
//! - **Timeouts from a heap**, not a scan: an expired reservation's cancellation starts at its
//!   deadline.
//! - **Several instances, one truth** (`--store postgres://…`): every write is conditional on
//!   the revision it read, so two instances never both decide a reservation; one live instance
//!   owns each reservation's work, and others take it over once its lease lapses.
//! - **The database may move**: with a multi-host URL every host is tried at once and the one
//!   that takes writes kept; every statement is bounded (`--store-timeout`), so a primary gone
//!   silent costs 503s for a bounded time, never a hung request.
//!
//! ## Running one inside your tests
//!
//! See [`App`]: `App::build(Config::ephemeral())`, `local_addr()`, `run_until_stopped()`.

pub mod api;
mod app;
mod cluster;
pub mod config;
mod coordinator;
pub mod domain;
mod listener;
mod participant;

mod retry;
mod store;
mod systemd;
pub mod telemetry;
mod timers;

pub use app::{App, AppError, StopHandle};
pub use config::{ApiToken, Cli, Config, DatabaseUrl, Storage, TlsFiles};
pub use coordinator::{RecoveryError, PHASES_AT_ONCE};
pub use domain::Limits;
pub use participant::{AllowRule, AllowRuleError, NameResolver, MAX_CALLS_IN_FLIGHT};
pub use retry::RetryPolicy;
pub use store::{
    required_scratch_database, scratch_database, scratch_database_from_env, EmbeddedOptions,
    StoreError, SyncMode,
};
