//! Connections to the database: setting up (connect, migrate, register) with the difference
//! between a database out of reach (waited for) and one that refuses (a configuration to
//! fix); TLS; and how the driver's errors read.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use uuid::Uuid;

use super::schema::migrate;
use super::{PgLog, PostgresOptions, StoreError, CONNECT_TIMEOUT};

impl PgLog {
    pub(in crate::store) async fn connect(options: PostgresOptions) -> Result<Self, StoreError> {
        let mut config: tokio_postgres::Config = options.url.parse().map_err(|e| {
            StoreError::Setup(format!(
                "--store is not a PostgreSQL URL (postgres://user:password@host:port/database): {e}"
            ))
        })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        let target = describe(&config);
        let recycling = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = if config.get_ssl_mode() == tokio_postgres::config::SslMode::Require {
            let tls = tls_config(options.ca.as_deref()).map_err(StoreError::Setup)?;
            let tls = rustls_tokio_postgres::MakeRustlsConnect::new(tls);
            Manager::from_config(config, tls, recycling)
        } else {
            Manager::from_config(config, tokio_postgres::NoTls, recycling)
        };
        let pool = Pool::builder(manager)
            .max_size(options.connections.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(CONNECT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
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
            // Started before its database (a reboot, a rolling restart): wait for it,
            // unready, rather than exit; the heartbeat tries again every tick.
            Err(StoreError::Unavailable(error)) => {
                log.reachable.store(false, Ordering::Relaxed);
                tracing::warn!(database = %target, %error,
                    "PostgreSQL cannot be reached yet: waiting for it (not ready, and requests \
                     answer 503, until it answers)");
            }
            Err(e) => return Err(e),
        }
        Ok(log)
    }

    /// Connects, creates or migrates the schema, and registers this instance.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the server cannot be reached (try again later);
    /// [`StoreError::Setup`], one sentence, when it answered with a refusal (a wrong
    /// password, an untrusted certificate, a schema too new).
    pub(super) async fn set_up(&self) -> Result<(), StoreError> {
        let target = &self.target;
        let unreachable_or = |text: String, unreachable: bool| {
            let text = format!("cannot connect to PostgreSQL at {target}: {text}");
            if unreachable {
                StoreError::Unavailable(text)
            } else {
                StoreError::Setup(text)
            }
        };
        let mut client = self
            .pool
            .get()
            .await
            .map_err(|e| unreachable_or(pool_text(&e), pool_unreachable(&e)))?;
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

/// `user@host:port/database`: the URL without its password, for messages.
pub(super) fn describe(config: &tokio_postgres::Config) -> String {
    let host = config
        .get_hosts()
        .first()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(name) => name.clone(),
            #[cfg(unix)]
            tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .unwrap_or_else(|| "localhost".into());
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let user = config.get_user().unwrap_or("");
    let db = config.get_dbname().unwrap_or(user);
    format!("{user}@{host}:{port}/{db}")
}

pub(super) fn pool_text(e: &PoolError) -> String {
    match e {
        PoolError::Backend(e) => db_error_text(e),
        other => other.to_string(),
    }
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
    if e.is_closed() {
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

pub(super) fn pool_unreachable(e: &PoolError) -> bool {
    match e {
        PoolError::Backend(e) => is_unreachable(e),
        PoolError::Timeout(_) => true,
        _ => false,
    }
}

pub(super) fn pool_error(e: PoolError) -> StoreError {
    match e {
        PoolError::Backend(e) => db_error(e),
        other => StoreError::Unavailable(other.to_string()),
    }
}

/// Connection trouble (no answer, a closed connection, the server shutting down or out of
/// connections) is `Unavailable`; anything the database refused is `Database`.
pub(super) fn db_error(e: tokio_postgres::Error) -> StoreError {
    let unavailable = match e.code() {
        None => true,
        Some(code) => {
            let class = &code.code()[..2];
            // 08: connection exception; 53: insufficient resources; 57: operator intervention.
            matches!(class, "08" | "53" | "57")
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
