//! The composition root: opens the log, builds the client, the coordinator and the timers,
//! binds the listener, and shuts everything down in order.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use poem::endpoint::BoxEndpoint;
use poem::listener::{Acceptor, AcceptorExt, BoxAcceptor, Listener, TcpListener};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, Storage};
use crate::coordinator::RecoveryError;
use crate::coordinator::{Coordinator, Parts, Topology};
use crate::listener::{self, SilenceCutting};
use crate::participant::{CallPolicy, ClientError, ParticipantClient};
use crate::store::{EmbeddedOptions, PostgresOptions, Retention, Store, StoreError};
use crate::telemetry::{Metrics, Traces, TracesError};
use crate::{api, cluster, coordinator, timers};

/// How long open connections get to finish at shutdown.
const GRACE: Duration = Duration::from_secs(5);

/// The coordinator could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("cannot create a temporary data directory: {0}")]
    TempDir(std::io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the HTTP server failed: {0}")]
    Serve(std::io::Error),
    #[error("cannot start the deadline thread: {0}")]
    TimerThread(std::io::Error),
    #[error(
        "the deadline thread stopped unexpectedly (see the panic above), so the coordinator \
         stopped too; start it again: deadlines are re-armed at start (with --store, by the \
         instance that takes the reservations over)"
    )]
    DeadlineThread,
    #[error(
        "refusing to serve {0} without authentication: give --api-token (or TCC_API_TOKENS), \
         listen on a loopback address, or pass --allow-unauthenticated"
    )]
    Unauthenticated(SocketAddr),
    #[error(transparent)]
    Recovery(#[from] RecoveryError),
    /// The embedded log could not make writes durable (a failed fsync, a full disk sled ran
    /// into): the process stops so that its supervisor restarts it on what the disk kept.
    #[error(
        "the transaction log failed ({0}); stopped so that a restart reads back what the disk kept"
    )]
    LogFailed(String),
    #[error("cannot serve HTTPS: {0}")]
    Tls(String),
    #[error("cannot use --participant-ca: {0}")]
    ParticipantCa(String),
    #[error(transparent)]
    Traces(#[from] TracesError),
    #[error("cannot use --api-tokens-file {0}")]
    Tokens(#[from] api::access::TokensFileError),
}

/// Reads the tokens file again into `tokens`, or leaves them as they were.
fn reload_tokens(
    path: &std::path::Path,
    tokens: &api::access::Tokens,
) -> Result<usize, api::access::TokensFileError> {
    let from_file = api::access::read_tokens_file(path)?;
    let named = from_file.len();
    if named == 0 {
        tracing::warn!(file = %path.display(),
            "the API tokens file holds no token: only --api-token values are accepted now (with none, every request gets 401)");
    }
    tokens.replace_file_tokens(from_file);
    tracing::info!(file = %path.display(), tokens = named, "read the API tokens file again");
    Ok(named)
}

/// On every SIGHUP, reads the tokens file again: rotating a token needs no restart. The
/// handler is in place when this returns (a SIGHUP before it would end the process).
fn reload_tokens_on_hangup(
    path: PathBuf,
    tokens: api::access::Tokens,
    tasks: &TaskTracker,
    shutdown: CancellationToken,
) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hangups) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP: the API tokens file is read only at start");
            return;
        };
        tasks.spawn(async move {
            loop {
                tokio::select! {
                    received = hangups.recv() => {
                        if received.is_none() {
                            return;
                        }
                        if let Err(error) = reload_tokens(&path, &tokens) {
                            tracing::error!(%error, "kept the API tokens as they were");
                        }
                    }
                    () = shutdown.cancelled() => return,
                }
            }
        });
    }
    #[cfg(not(unix))]
    let _ = (path, tokens, tasks, shutdown);
}

/// Stops a running [`App`]. Cheap to clone.
#[derive(Debug, Clone)]
pub struct StopHandle(CancellationToken);

impl StopHandle {
    /// Asks the app to stop: no new requests, participant calls end, the log is flushed.
    pub fn stop(&self) {
        self.0.cancel();
    }
}

/// A coordinator, built and bound, ready to serve.
///
/// ```no_run
/// # async fn demo() -> Result<(), tcc_coordinator::AppError> {
/// use tcc_coordinator::{App, Config};
///
/// // In another service's integration tests: a real coordinator on a free loopback port,
/// // with its log in a temporary directory.
/// let app = App::build(Config::ephemeral()).await?;
/// let base_url = app.base_url().to_owned();
/// let stop = app.stop_handle();
/// let server = tokio::spawn(app.run_until_stopped());
/// // ... POST {base_url}/reservations from the code under test ...
/// stop.stop();
/// server.await.expect("server task")?;
/// # Ok(()) }
/// ```
pub struct App {
    acceptor: BoxAcceptor,
    base_url: String,
    local_addr: SocketAddr,
    data_dir: Option<PathBuf>,
    coordinator: Coordinator,
    routes: BoxEndpoint<'static>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
    deadlines: std::thread::JoinHandle<()>,
    recovery_failed: Arc<Mutex<Option<RecoveryError>>>,
    /// Why the embedded log failed for good, once it has (the process then stops).
    log_failed: Arc<Mutex<Option<String>>>,
    traces: Traces,
    _temp_dir: Option<tempfile::TempDir>,
}

impl App {
    /// Opens the log, binds the listener and starts recovery in the background: readiness
    /// turns on when it finishes, and writes that arrive before wait for it (up to 5 s), so
    /// a request made as soon as [`App::base_url`] is known is answered as documented.
    ///
    /// # Errors
    /// [`AppError`] when the data directory or the address cannot be used.
    pub async fn build(config: Config) -> Result<Self, AppError> {
        let from_file = config
            .api_tokens_file
            .as_deref()
            .map(api::access::read_tokens_file)
            .transpose()?;
        if from_file.as_ref().is_some_and(Vec::is_empty) {
            tracing::warn!(
                "the API tokens file holds no token: only --api-token values are accepted (with none, every request gets 401)"
            );
        }
        let tokens = api::access::Tokens::new(
            api::access::operator_tokens(&config.api_tokens),
            from_file,
            config.protect_metrics,
        );
        let open = config.api_tokens.is_empty() && config.api_tokens_file.is_none();
        if !config.listen.ip().is_loopback() && open && !config.allow_unauthenticated {
            return Err(AppError::Unauthenticated(config.listen));
        }
        if open && !config.listen.ip().is_loopback() {
            tracing::warn!(listen = %config.listen,
                "serving a non-loopback address without --api-token: anyone who reaches it can create, confirm and cancel");
        }
        let (data_dir, temp_dir) = match &config.storage {
            Storage::Dir(dir) => (Some(dir.clone()), None),
            Storage::Ephemeral => {
                // Private, as any data directory: the log holds participant links.
                #[cfg(unix)]
                let private =
                    <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o700);
                let mut builder = tempfile::Builder::new();
                builder.prefix("tcc-coordinator-");
                #[cfg(unix)]
                builder.permissions(private);
                let temp = builder.tempdir().map_err(AppError::TempDir)?;
                (Some(temp.path().to_owned()), Some(temp))
            }
            Storage::Postgres(_) => (None, None),
        };
        // The one place that decides between one process on its own log and several on one
        // database; everything that differs follows from it (see `coordinator::topology`).
        let topology = match config.storage {
            Storage::Postgres(_) => Topology::Shared,
            Storage::Dir(_) | Storage::Ephemeral => Topology::Embedded,
        };
        let tasks = TaskTracker::new();
        let shutdown = CancellationToken::new();
        let metrics = Metrics::default();
        let queue = config.max_log_queue;

        let acceptor = TcpListener::bind(config.listen)
            .into_acceptor()
            .await
            .map_err(|source| AppError::Bind {
                addr: config.listen,
                source,
            })?;
        let local_addr = acceptor
            .local_addr()
            .first()
            .and_then(|a| a.as_socket_addr().copied())
            .unwrap_or(config.listen);
        let scheme = if config.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let base_url = format!("{scheme}://{local_addr}");

        let store = match (&config.storage, &data_dir) {
            (Storage::Postgres(url), _) => {
                let options = PostgresOptions {
                    url: url.expose().to_owned(),
                    connections: config.store_connections,
                    statement_timeout: config.store_timeout,
                    lease: config.lease,
                    retention: Retention {
                        retention: config.limits.retention,
                        transaction_retention: config.limits.transaction_retention,
                    },
                    ca: config.store_ca.clone(),
                    instance_name: config.public_url.as_ref().map_or_else(
                        || format!("{base_url} (pid {})", std::process::id()),
                        ToString::to_string,
                    ),
                };
                Store::connect(options, queue).await?
            }
            (_, dir) => {
                let dir = dir.clone().unwrap_or_default();
                let options = EmbeddedOptions {
                    cache_bytes: config.cache_bytes,
                    sync: config.sync,
                    disk_reserve: config.disk_reserve,
                    write_timeout: config.store_timeout,
                    retention: crate::store::Retention {
                        retention: config.limits.retention,
                        transaction_retention: config.limits.transaction_retention,
                    },
                };
                let metrics = metrics.clone();
                tokio::task::spawn_blocking(move || Store::open(&dir, &options, queue, &metrics))
                    .await
                    .map_err(|e| StoreError::Blocking(e.to_string()))??
            }
        };

        let silence_cutting = SilenceCutting::new(acceptor, config.idle_timeout);
        let acceptor = match &config.tls {
            Some(files) => {
                let tls = listener::tls_config(&files.cert, &files.key).map_err(AppError::Tls)?;
                silence_cutting
                    .rustls(futures_util::stream::iter([tls]))
                    .boxed()
            }
            None => silence_cutting.boxed(),
        };
        let extra_roots = match &config.participant_ca {
            Some(path) => {
                let pem = std::fs::read(path)
                    .map_err(|e| AppError::ParticipantCa(format!("{}: {e}", path.display())))?;
                reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                    AppError::ParticipantCa(format!("{} is not a PEM bundle: {e}", path.display()))
                })?
            }
            None => Vec::new(),
        };
        let public_url = config
            .public_url
            .as_ref()
            .map_or_else(|| base_url.clone(), ToString::to_string);

        let policy = CallPolicy::new(
            config.allow_participants.clone(),
            config.participant_resolver.clone(),
        );
        if !policy.is_restricted() {
            tracing::warn!(
                "no --allow-participant given: the coordinator will call any http(s) host its \
                 clients name, except link-local and cloud metadata addresses"
            );
        }
        let traces = match &config.otlp_endpoint {
            Some(endpoint) => {
                let traces = Traces::to_collector(endpoint)?;
                tracing::info!(%endpoint, "exporting traces over OTLP/HTTP");
                traces
            }
            None => Traces::off(),
        };
        let log_failure = store.failure();
        let deadlines = timers::TimerQueue::default();
        let armed = deadlines.clone();
        let coordinator = Coordinator::new(Parts {
            store,
            client: Arc::new(ParticipantClient::new(
                config.limits.participant_timeout,
                policy,
                extra_roots,
                metrics.clone(),
            )?),
            traces: traces.clone(),
            retry: config.retry,
            limits: config.limits,
            // Milliseconds: the log keeps instants to the millisecond, so reads equal writes.
            clock: Arc::new(|| chrono::SubsecRound::trunc_subsecs(chrono::Utc::now(), 3)),
            public_url,
            deadlines,
            metrics,
            render: api::callback_body(config.limits.participant_timeout),
            tasks: tasks.clone(),
            shutdown: shutdown.clone(),
            topology,
        });
        let deadlines = timers::start(
            armed,
            Arc::new(coordinator.clone()),
            tasks.clone(),
            shutdown.clone(),
        )
        .map_err(AppError::TimerThread)?;
        if topology.sweeps_its_own_log() {
            tasks.spawn(coordinator.clone().sweep_retention_until(shutdown.clone()));
        }
        if topology.has_cluster_duties() {
            tasks.spawn(cluster::run(
                coordinator.clone(),
                config.lease,
                shutdown.clone(),
            ));
        }
        if let Some(path) = config.api_tokens_file.clone() {
            reload_tokens_on_hangup(path, tokens.clone(), &tasks, shutdown.clone());
        }
        if let Some(every) = crate::systemd::watchdog_interval() {
            tasks.spawn(crate::systemd::watchdog(every, shutdown.clone()));
        }
        crate::systemd::recovering();
        let stopping = shutdown.clone();
        tasks.spawn(async move {
            stopping.cancelled().await;
            crate::systemd::stopping();
        });
        let log_failed = Arc::new(Mutex::new(None));
        if let Some(mut failure) = log_failure {
            let (record, stop) = (log_failed.clone(), shutdown.clone());
            tasks.spawn(async move {
                tokio::select! {
                    failed = failure.wait_for(Option::is_some) => {
                        if let Ok(failed) = failed {
                            let failed = failed.as_deref().map(str::to_owned);
                            *record.lock().expect("log failure lock") = failed;
                            stop.cancel();
                        }
                    }
                    () = stop.cancelled() => {}
                }
            });
        }
        let recovering = coordinator.clone();
        let failed = Arc::new(Mutex::new(None));
        let (failure, stop) = (failed.clone(), shutdown.clone());
        let skip_unreadable = config.recover_skip_unreadable;
        tasks.spawn(async move {
            match coordinator::recover(&recovering, skip_unreadable).await {
                Ok(found) => {
                    tracing::info!(
                        resumed = found.resumed,
                        skipped_unreadable = found.skipped,
                        "recovery finished; ready"
                    );
                    recovering.mark_ready();
                    crate::systemd::ready();
                }
                Err(error) => {
                    // A coordinator that cannot account for its whole log must not run.
                    tracing::error!(%error, "recovery failed; stopping");
                    *failure.lock().expect("recovery failure lock") = Some(error);
                    stop.cancel();
                }
            }
        });
        let routes = api::routes(
            coordinator.clone(),
            &api::RouteOptions {
                max_body_bytes: config.max_body_bytes,
                max_in_flight: config.max_in_flight,
                read_timeout: config.read_timeout,
                spec: api::SpecLimits {
                    max_timeout_ms: u64::try_from(config.limits.max_timeout.as_millis())
                        .unwrap_or(u64::MAX),
                    max_participants: config.limits.max_participants,
                },
                tokens,
                stuck_after: config.stuck_after,
            },
        );
        Ok(Self {
            acceptor,
            base_url,
            local_addr,
            data_dir,
            coordinator,
            routes,
            tasks,
            shutdown,
            deadlines,
            recovery_failed: failed,
            log_failed,
            traces,
            _temp_dir: temp_dir,
        })
    }

    /// The address the server is bound to (the real port when `listen` asked for port 0).
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The URL the API is served at: `http://` or, with TLS, `https://` and the bound address.
    #[must_use]
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Where the log lives; `None` with a PostgreSQL store.
    #[must_use]
    pub fn data_dir(&self) -> Option<&std::path::Path> {
        self.data_dir.as_deref()
    }

    /// A handle that stops [`App::run_until_stopped`].
    #[must_use]
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle(self.shutdown.clone())
    }

    /// Serves until the [`StopHandle`] is used (or recovery fails), then stops accepting requests, lets open
    /// connections finish (up to 5 s), stops participant calls (they resume at the next
    /// start), and closes the log.
    ///
    /// # Errors
    /// [`AppError::Serve`] when the server fails; [`AppError::Recovery`] when the log could not
    /// be read back (an unreadable record, without `recover_skip_unreadable`).
    pub async fn run_until_stopped(self) -> Result<(), AppError> {
        let Self {
            acceptor,
            coordinator,
            routes,
            tasks,
            shutdown,
            deadlines,
            recovery_failed,
            log_failed,
            traces,
            _temp_dir,
            ..
        } = self;
        let served = poem::Server::new_with_acceptor(acceptor)
            .run_with_graceful_shutdown(routes, shutdown.clone().cancelled_owned(), Some(GRACE))
            .await;
        shutdown.cancel();
        let deadlines_failed = !matches!(
            tokio::task::spawn_blocking(move || deadlines.join()).await,
            Ok(Ok(()))
        );
        let flushes = coordinator.store().flushes();
        let store = coordinator.store().clone();
        drop(coordinator);
        tasks.close();
        if tokio::time::timeout(GRACE, tasks.wait()).await.is_err() {
            tracing::warn!(
                "background tasks did not stop in time; the log may not be closed cleanly"
            );
        } else {
            store.close(GRACE).await;
            tracing::info!(flushes, "stopped; the transaction log is closed");
        }
        // The spans still queued go to the collector before the process ends.
        let _ = tokio::task::spawn_blocking(move || traces.shutdown()).await;
        if deadlines_failed {
            return Err(AppError::DeadlineThread);
        }
        if let Some(error) = recovery_failed
            .lock()
            .expect("recovery failure lock")
            .take()
        {
            return Err(AppError::Recovery(error));
        }
        if let Some(failure) = log_failed.lock().expect("log failure lock").take() {
            return Err(AppError::LogFailed(failure));
        }
        served.map_err(AppError::Serve)
    }
}
