//! # tcc-participant
//!
//! The participant side of tcc-coordinator's try/confirm/cancel protocol, done right once:
//! a service implements one [`Resource`] (reserve, confirm, release) and the kit serves the
//! participant contract (`openapi/participant.yaml`) over HTTP with poem-openapi:
//!
//! - `POST /holds` tries: a try repeated with the same `Idempotency-Key` and body gets the
//!   same hold and reserves once (also while the first is still running); the same key with
//!   another body is `422`.
//! - `PUT /holds/{id}` confirms: idempotent; `404` once the hold expired or was cancelled.
//! - `DELETE /holds/{id}` cancels: idempotent; `409` once the hold was confirmed.
//! - `GET /holds/{id}` reads a hold.
//!
//! Holds expire by themselves (released exactly once), never later than the reservation's
//! deadline (`TCC-Deadline`, sent by the coordinator with every try) plus a margin the service
//! sets. A confirm and a cancel racing on one hold: exactly one wins. With a durable
//! [`HoldStore`] ([`SledStore`]) holds survive a restart, their expiry still counting.
//!
//! [`fake`] is a scriptable fake participant for tests (also the `tcc-fake-participant`
//! binary).
//!
//! ```no_run
//! use tcc_participant::{Participant, Refusal, Resource, TryContext, Unavailable};
//!
//! struct Seats;
//!
//! #[derive(serde::Deserialize)]
//! struct Booking { seat: String }
//!
//! impl Resource for Seats {
//!     type Request = Booking;
//!     type Hold = String;
//!     async fn reserve(&self, b: Booking, _: &TryContext) -> Result<String, Refusal> {
//!         if b.seat == "13A" { Err(Refusal::refused("seat 13A is taken")) } else { Ok(b.seat) }
//!     }
//!     async fn confirm(&self, _seat: &String) -> Result<(), Unavailable> { Ok(()) }
//!     async fn release(&self, _seat: &String) -> Result<(), Unavailable> { Ok(()) }
//! }
//!
//! # async fn run() -> std::io::Result<()> {
//! let seats = Participant::builder(Seats).start().expect("the memory store opens");
//! poem::Server::new(poem::listener::TcpListener::bind("127.0.0.1:8082"))
//!     .run(seats.endpoint())
//!     .await
//! # }
//! ```

mod api;
mod desk;
pub mod fake;
mod hold;
mod resource;
mod serve;
mod store;

use std::sync::Arc;
use std::time::Duration;

use poem::{Endpoint, EndpointExt};
use poem_openapi::OpenApiService;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use api::{LinkBody, Problem};
pub use hold::{HoldRecord, HoldState, HoldView, RECORD_VERSION};
pub use resource::{Refusal, Resource, TryContext, Unavailable};
pub use serve::Serving;
pub use store::{HoldStore, MemoryStore, SledStore, StoreError};

use api::ParticipantApi;
use desk::{Desk, Holds};

/// How the kit treats holds, as the [`Builder`] sets it.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// How long a hold lives unless confirmed (default 60 s).
    pub(crate) hold_ttl: Duration,
    /// How long a hold may outlive the reservation's deadline (`TCC-Deadline`), so that a
    /// confirm the coordinator starts just before the deadline still finds it (default 30 s).
    pub(crate) deadline_margin: Duration,
    /// How long a settled hold is remembered, to answer repeated confirms and cancels
    /// (default 24 h).
    pub(crate) retention: Duration,
    /// The base of the links handed out (`https://inventory.example`); by default
    /// `http://{Host header}`.
    pub(crate) public_url: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            hold_ttl: Duration::from_secs(60),
            deadline_margin: Duration::from_secs(30),
            retention: Duration::from_secs(24 * 3600),
            public_url: None,
        }
    }
}

/// Builds a [`Participant`].
pub struct Builder<R: Resource> {
    resource: R,
    settings: Settings,
    store: Arc<dyn HoldStore>,
}

impl<R: Resource> Builder<R> {
    /// How long a hold lives unless confirmed.
    #[must_use]
    pub fn hold_ttl(mut self, ttl: Duration) -> Self {
        self.settings.hold_ttl = ttl;
        self
    }

    /// How long a hold may outlive the reservation's deadline.
    #[must_use]
    pub fn deadline_margin(mut self, margin: Duration) -> Self {
        self.settings.deadline_margin = margin;
        self
    }

    /// How long settled holds are remembered.
    #[must_use]
    pub fn retention(mut self, retention: Duration) -> Self {
        self.settings.retention = retention;
        self
    }

    /// The base URL of the links handed out.
    #[must_use]
    pub fn public_url(mut self, url: impl Into<String>) -> Self {
        self.settings.public_url = Some(url.into());
        self
    }

    /// Where holds are kept (default: in memory).
    #[must_use]
    pub fn store(mut self, store: impl HoldStore) -> Self {
        self.store = Arc::new(store);
        self
    }

    /// Loads the stored holds and starts the expiry loop (on the current tokio runtime);
    /// holds that expired while the service was down are released at once.
    ///
    /// # Errors
    /// When the store cannot be read.
    pub fn start(self) -> Result<Participant, StoreError> {
        let holds = Arc::new(Holds::open(
            self.resource,
            self.store,
            self.settings.clone(),
        )?);
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        let expiring = holds.clone();
        let token = stop.clone();
        tasks.spawn(async move { expiring.run(token).await });
        tasks.close();
        Ok(Participant {
            desk: holds,
            settings: self.settings,
            stop,
            tasks,
        })
    }
}

/// A running participant: its holds, its expiry loop, and the HTTP endpoint that serves them.
pub struct Participant {
    desk: Arc<dyn Desk>,
    settings: Settings,
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl Participant {
    /// Starts building a participant for `resource`.
    pub fn builder<R: Resource>(resource: R) -> Builder<R> {
        Builder {
            resource,
            settings: Settings::default(),
            store: Arc::new(MemoryStore::default()),
        }
    }

    pub(crate) fn api(&self) -> ParticipantApi {
        ParticipantApi {
            desk: self.desk.clone(),
            public_url: self.settings.public_url.clone(),
        }
    }

    /// The OpenAPI service of the participant operations, to serve (with its spec or
    /// Swagger UI) where the service wants.
    #[must_use]
    pub fn openapi(
        &self,
        title: &str,
        version: &str,
    ) -> OpenApiService<impl poem_openapi::OpenApi, ()> {
        OpenApiService::new(self.api(), title, version)
    }

    /// The participant operations (`/holds`, `/holds/{id}`), to nest in the service's routes.
    #[must_use]
    pub fn endpoint(&self) -> impl Endpoint + 'static {
        poem::Route::new()
            .nest("/", self.openapi("participant", env!("CARGO_PKG_VERSION")))
            .boxed()
    }

    /// The OpenAPI document of the participant operations, as YAML.
    #[must_use]
    pub fn spec_yaml(&self) -> String {
        self.openapi(
            "TCC participant (tcc-participant kit)",
            env!("CARGO_PKG_VERSION"),
        )
        .spec_yaml()
    }

    /// Every hold the participant remembers, oldest first.
    pub async fn holds(&self) -> Vec<HoldView> {
        self.desk.list().await
    }

    /// One hold.
    pub async fn hold(&self, id: &str) -> Option<HoldView> {
        self.desk.read(id).await
    }

    /// Stops the expiry loop and waits for it.
    pub async fn shutdown(&self) {
        self.stop.cancel();
        self.tasks.wait().await;
    }

    pub(crate) fn desk(&self) -> Arc<dyn Desk> {
        self.desk.clone()
    }
}

impl Drop for Participant {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
