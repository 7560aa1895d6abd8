//! Connections to the database: setting up (connect, migrate, register) with the difference
//! between a database out of reach (waited for) and one that refuses (a configuration to
//! fix); TLS; and how the driver's errors read.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{
    Hook, HookError, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime, TimeoutType,
};
use uuid::Uuid;

use super::failover::{is_read_only_server, EachHost, Failures};
use super::schema::migrate;
use super::{PgLog, PostgresOptions, StoreError, CONNECT_TIMEOUT};

impl PgLog {
    pub(in crate::store) async fn connect(options: PostgresOptions) -> Result<Self, StoreError> {
        let mut config: tokio_postgres::Config =
            options.url.parse().map_err(|e: tokio_postgres::Error| {
                // The driver's own text is "invalid connection string"; its cause names the option.
                let cause = std::error::Error::source(&e)
                    .map_or_else(|| e.to_string(), ToString::to_string);
                StoreError::Setup(format!(
                    "--store is not a PostgreSQL URL ({cause}): expected \
                 postgres://user:password@host:port[,host:port…]/database[?options], for \
                 example ?target_session_attrs=read-write (or any, read-only)"
                ))
            })?;
        let connect_timeout = *config.get_connect_timeout().unwrap_or(&CONNECT_TIMEOUT);
        config.connect_timeout(connect_timeout);
        let target = describe(&config);
        let recycling = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = if config.get_ssl_mode() == tokio_postgres::config::SslMode::Require {
            let tls = tls_config(options.ca.as_deref()).map_err(StoreError::Setup)?;
            let tls = rustls_tokio_postgres::MakeRustlsConnect::new(tls);
            EachHost::manager(config, tls, connect_timeout, recycling)
        } else {
            EachHost::manager(config, tokio_postgres::NoTls, connect_timeout, recycling)
        };
        let failures = Failures::default();
        let stale = failures.clone();
        let pool = Pool::builder(manager)
            .max_size(options.connections.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(options.statement_timeout))
            // Each host's attempt is bounded by the connect timeout; this ends the wait when
            // every host stayed silent.
            .create_timeout(Some(connect_timeout + Duration::from_millis(250)))
            .recycle_timeout(Some(options.statement_timeout))
            .pre_recycle(Hook::sync_fn(move |_, metrics| {
                if stale.predates(metrics.created) {
                    Err(HookError::Message(
                        "made before the database was last found gone".into(),
                    ))
                } else {
                    Ok(())
                }
            }))
            .build()
            .map_err(|e| {
                StoreError::Setup(format!("cannot set up connections to {target}: {e}"))
            })?;
        let log = Self {
            pool,
            instance: Uuid::now_v7(),
            options: Arc::new(options),
            target: Arc::from(target.as_str()),
            reachable: Arc::new(AtomicBool::new(true)),
            interrupted: Arc::new(AtomicBool::new(false)),
            set_up: Arc::new(AtomicBool::new(false)),
            failures,
            connect_timeout,
            writer: None,
            reader: None,
        };
        let connections = log.options.connections;
        let log = Self {
            writer: Some(super::batch::Writer::start(log.clone(), connections)),
            reader: Some(super::batch::Reader::start(log.clone(), connections)),
            ..log
        };
        match log.set_up().await {
            Ok(()) => {}
            // Started before its database (a reboot, a rolling restart), or while only
            // standbys answer: wait for it, unready, rather than exit; the heartbeat tries
            // again every tick.
            Err(StoreError::Unavailable(error)) => {
                log.reachable.store(false, Ordering::Relaxed);
                tracing::warn!(database = %target, %error,
                    "PostgreSQL cannot be used yet: waiting for it (not ready, and requests \
                     answer 503, until it answers)");
            }
            Err(e) => return Err(e),
        }
        Ok(log)
    }

    /// Connects, creates or migrates the schema, and registers this instance; bounded by
    /// the connect timeout and three statement timeouts.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the server cannot be reached or is no primary (try
    /// again later); [`StoreError::Setup`], one sentence, when it answered with a refusal (a
    /// wrong password, an untrusted certificate, a schema too new).
    pub(super) async fn set_up(&self) -> Result<(), StoreError> {
        let limit = self.connect_timeout + self.options.statement_timeout * 3;
        let Ok(outcome) = tokio::time::timeout(limit, self.set_up_unbounded()).await else {
            self.failures.mark();
            return Err(StoreError::Unavailable(format!(
                "PostgreSQL at {} did not finish setting up within {}",
                self.target,
                humantime::format_duration(limit)
            )));
        };
        outcome
    }

    async fn set_up_unbounded(&self) -> Result<(), StoreError> {
        let target = &self.target;
        let mut client = self
            .pool
            .get()
            .await
            .map_err(|e| match self.pool_error(e) {
                StoreError::Unavailable(text) => StoreError::Unavailable(text),
                other => {
                    StoreError::Setup(format!("cannot connect to PostgreSQL at {target}: {other}"))
                }
            })?;
        migrate(&mut client).await.map_err(|(text, unreachable)| {
            if unreachable {
                StoreError::Unavailable(format!("cannot reach PostgreSQL at {target}: {text}"))
            } else {
                StoreError::Setup(format!("cannot prepare the schema in {target}: {text}"))
            }
        })?;
        client
            .execute(
                "INSERT INTO tcc_instances (id, name, lease_until) \
                 VALUES ($1, $2, now() + make_interval(secs => $3)) ON CONFLICT (id) DO NOTHING",
                &[
                    &self.instance,
                    &self.options.instance_name,
                    &self.lease_seconds(),
                ],
            )
            .await
            .map_err(|e| match db_error(e) {
                StoreError::Unavailable(text) => StoreError::Unavailable(text),
                other => StoreError::Setup(format!("cannot register in {target}: {other}")),
            })?;
        self.set_up.store(true, Ordering::Release);
        self.reachable.store(true, Ordering::Relaxed);
        tracing::info!(database = %target, instance = %self.instance,
            lease = ?self.options.lease, "connected to PostgreSQL");
        Ok(())
    }

    /// The pool's failure to hand out a connection, saying why: no primary among the hosts,
    /// no host answering in time, every connection busy, or the server's refusal.
    pub(super) fn pool_error(&self, e: PoolError) -> StoreError {
        let why = match e {
            PoolError::Backend(e) if is_read_only_server(&e) => {
                "no primary found: every server that answered takes no writes (a standby; the \
                 URL asks for target_session_attrs=read-write); waiting for one to be promoted"
                    .to_owned()
            }
            // A refusal (a wrong password, an untrusted certificate): a configuration to fix.
            PoolError::Backend(e) if !is_unreachable(&e) => {
                return StoreError::Database(format!(
                    "cannot connect to PostgreSQL at {}: {}",
                    self.target,
                    db_error_text(&e)
                ))
            }
            PoolError::Backend(e) => db_error_text(&e),
            PoolError::Timeout(TimeoutType::Create) => format!(
                "no server answered within {} (the URL's connect_timeout)",
                humantime::format_duration(self.connect_timeout)
            ),
            PoolError::Timeout(TimeoutType::Wait) => format!(
                "every connection stayed busy for {} (--store-timeout; there are at most {} of \
                 them, --store-connections)",
                humantime::format_duration(self.options.statement_timeout),
                self.options.connections
            ),
            other => other.to_string(),
        };
        StoreError::Unavailable(format!(
            "cannot connect to PostgreSQL at {}: {why}",
            self.target
        ))
    }
}

/// The TLS client for `sslmode=require`: the server's certificate is verified against the
/// system's roots and `ca` (stricter than libpq's `require`, which encrypts without checking
/// who answers).
pub(super) fn tls_config(ca: Option<&std::path::Path>) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let mut roots = rustls::RootCertStore::empty();
    let (system, _) =
        roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    let mut added = 0;
    if let Some(path) = ca {
        let unusable =
            |e: &dyn std::fmt::Display| format!("cannot use --store-ca {}: {e}", path.display());
        for cert in CertificateDer::pem_file_iter(path).map_err(|e| unusable(&e))? {
            roots
                .add(cert.map_err(|e| unusable(&e))?)
                .map_err(|e| unusable(&e))?;
            added += 1;
        }
        if added == 0 {
            return Err(unusable(&"it holds no PEM certificate"));
        }
    }
    tracing::debug!(
        system,
        added,
        "trusting certificate authorities for the database"
    );
    Ok(rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// `user@host:port,host:port/database`: the URL without its password, for messages.
pub(super) fn describe(config: &tokio_postgres::Config) -> String {
    let ports = config.get_ports();
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let host = match h {
                tokio_postgres::config::Host::Tcp(name) => name.clone(),
                #[cfg(unix)]
                tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
            };
            let port = ports
                .get(i)
                .or_else(|| ports.first())
                .copied()
                .unwrap_or(5432);
            format!("{host}:{port}")
        })
        .collect();
    let hosts = if hosts.is_empty() {
        "localhost:5432".to_owned()
    } else {
        hosts.join(",")
    };
    let user = config.get_user().unwrap_or("");
    let db = config.get_dbname().unwrap_or(user);
    format!("{user}@{hosts}/{db}")
}

/// The database could not be reached (nothing listens, the connection broke or timed out,
/// the server is starting or shutting down), as opposed to a refusal by a server that
/// answered (a wrong password, an untrusted certificate, a missing database): the first is
/// waited for, the second is a configuration to fix.
pub(super) fn is_unreachable(e: &tokio_postgres::Error) -> bool {
    use std::io::ErrorKind;
    if let Some(code) = e.code() {
        // 57P01-03: the server is shutting down, restarting or starting; 53300: too many
        // connections for now.
        return matches!(code.code(), "57P01" | "57P02" | "57P03" | "53300");
    }
    if e.is_closed() || is_read_only_server(e) {
        return true;
    }
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                ErrorKind::ConnectionRefused
                    | ErrorKind::ConnectionReset
                    | ErrorKind::ConnectionAborted
                    | ErrorKind::NotConnected
                    | ErrorKind::TimedOut
                    | ErrorKind::UnexpectedEof
                    | ErrorKind::HostUnreachable
                    | ErrorKind::NetworkUnreachable
                    | ErrorKind::AddrNotAvailable
            );
        }
        source = cause.source();
    }
    // tokio-postgres' own connect timeout carries no io error.
    e.to_string().contains("timeout")
}

/// Connection trouble (no answer, a closed connection, the server shutting down or out of
/// connections) is `Unavailable`; anything the database refused is `Database`.
pub(super) fn db_error(e: tokio_postgres::Error) -> StoreError {
    let unavailable = match e.code() {
        None => true,
        Some(code) => {
            let class = &code.code()[..2];
            // 08: connection exception; 53: insufficient resources; 57: operator intervention;
            // 25006: a read-only transaction, from a primary demoted to a standby under us.
            matches!(class, "08" | "53" | "57") || code.code() == "25006"
        }
    };
    if unavailable {
        StoreError::Unavailable(db_error_text(&e))
    } else {
        StoreError::Database(db_error_text(&e))
    }
}

/// The error with its cause (tokio-postgres' Display alone says only "error connecting to
/// server").
pub(super) fn db_error_text(e: &tokio_postgres::Error) -> String {
    match (e.as_db_error(), std::error::Error::source(e)) {
        (Some(db), _) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        (None, Some(cause)) => format!("{e}: {cause}"),
        (None, None) => e.to_string(),
    }
}
