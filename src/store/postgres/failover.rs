//! Following the primary when it moves, also when the old one goes silent.
//!
//! A multi-host URL (`postgres://…@a:5432,b:5432/db?target_session_attrs=read-write`) names
//! every server that may be the primary. tokio-postgres tries its hosts one after the other
//! and bounds only the TCP connect of each: a primary gone silent (a partition, a hung host:
//! the kernel still completes the handshake, nobody answers the startup) holds every new
//! connection for good, and the standby promoted in its place is never tried. Here:
//!
//! - [`EachHost`] connects to every host at once, each attempt as a whole (TCP, TLS,
//!   authentication, the read-write check) bounded by the connect timeout, and keeps the
//!   first that takes writes; when every host answered and none takes writes, the error
//!   says that no primary was found;
//! - [`Failures`] remembers when a statement last found the database gone (no answer within
//!   the statement timeout, a connection closed under it, a server that has turned
//!   read-only): pooled connections made before that are not used again, since they may
//!   lead to the old primary.
//!
//! It must not: retry statements (the caller does, and decides what a lost answer means),
//! or keep a connection whose statement timed out.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deadpool_postgres::Connect;
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::task::JoinHandle;
use tokio_postgres::config::Host;
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::{Client, Config, Error, Socket};

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Connects to every host of a configuration at once and keeps the first that answers as
/// the configuration asks (with `target_session_attrs=read-write`: the primary).
pub(super) struct EachHost<T> {
    tls: T,
    /// Bounds each host's attempt as a whole.
    timeout: Duration,
}

impl<T> EachHost<T>
where
    T: MakeTlsConnect<Socket> + Clone + Sync + Send + 'static,
    T::Stream: Sync + Send,
    T::TlsConnect: Sync + Send,
    <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
{
    /// The pool's manager for `config`, connecting through `tls`, each host's attempt bounded
    /// by `timeout`.
    pub(super) fn manager(
        config: Config,
        tls: T,
        timeout: Duration,
        recycling: deadpool_postgres::ManagerConfig,
    ) -> deadpool_postgres::Manager {
        deadpool_postgres::Manager::from_connect(config, Self { tls, timeout }, recycling)
    }
}

impl<T> Connect for EachHost<T>
where
    T: MakeTlsConnect<Socket> + Clone + Sync + Send + 'static,
    T::Stream: Sync + Send,
    T::TlsConnect: Sync + Send,
    <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
{
    fn connect(&self, config: &Config) -> BoxFuture<'_, Result<(Client, JoinHandle<()>), Error>> {
        let mut attempts: FuturesUnordered<_> = single_hosts(config)
            .into_iter()
            .map(|config| {
                let tls = self.tls.clone();
                async move { tokio::time::timeout(self.timeout, config.connect(tls)).await }
            })
            .collect();
        Box::pin(async move {
            let mut telling: Option<Error> = None;
            while let Some(attempt) = attempts.next().await {
                match attempt {
                    Ok(Ok((client, connection))) => {
                        let task = tokio::spawn(async move {
                            if let Err(error) = connection.await {
                                tracing::debug!(%error, "a database connection ended");
                            }
                        });
                        return Ok((client, task));
                    }
                    // "Only standbys answered" says more than "one host refused".
                    Ok(Err(e)) if telling.is_none() || is_read_only_server(&e) => {
                        telling = Some(e);
                    }
                    Ok(Err(_)) | Err(_) => {}
                }
            }
            match telling {
                Some(error) => Err(error),
                // Every host was silent: the pool's create timeout ends the wait.
                None => std::future::pending().await,
            }
        })
    }
}

/// One configuration per host of `config`, each with everything else of it.
pub(super) fn single_hosts(config: &Config) -> Vec<Config> {
    let hosts = config.get_hosts();
    let count = hosts.len().max(config.get_hostaddrs().len());
    (0..count)
        .map(|i| {
            let mut one = Config::new();
            if let Some(host) = hosts.get(i) {
                match host {
                    Host::Tcp(name) => one.host(name),
                    #[cfg(unix)]
                    Host::Unix(path) => one.host_path(path),
                };
            }
            if let Some(addr) = config.get_hostaddrs().get(i) {
                one.hostaddr(*addr);
            }
            let ports = config.get_ports();
            if let Some(port) = ports.get(i).or_else(|| ports.first()) {
                one.port(*port);
            }
            if let Some(user) = config.get_user() {
                one.user(user);
            }
            if let Some(password) = config.get_password() {
                one.password(password);
            }
            if let Some(dbname) = config.get_dbname() {
                one.dbname(dbname);
            }
            if let Some(options) = config.get_options() {
                one.options(options);
            }
            if let Some(name) = config.get_application_name() {
                one.application_name(name);
            }
            if let Some(timeout) = config.get_connect_timeout() {
                one.connect_timeout(*timeout);
            }
            if let Some(timeout) = config.get_tcp_user_timeout() {
                one.tcp_user_timeout(*timeout);
            }
            if let Some(interval) = config.get_keepalives_interval() {
                one.keepalives_interval(interval);
            }
            if let Some(retries) = config.get_keepalives_retries() {
                one.keepalives_retries(retries);
            }
            one.ssl_mode(config.get_ssl_mode())
                .ssl_negotiation(config.get_ssl_negotiation())
                .keepalives(config.get_keepalives())
                .keepalives_idle(config.get_keepalives_idle())
                .target_session_attrs(config.get_target_session_attrs())
                .channel_binding(config.get_channel_binding());
            one
        })
        .collect()
}

/// The refusal of a server that answered but takes no writes (a standby), under
/// `target_session_attrs=read-write`.
pub(super) fn is_read_only_server(e: &Error) -> bool {
    std::error::Error::source(e)
        .and_then(|cause| cause.downcast_ref::<std::io::Error>())
        .is_some_and(|io| {
            io.kind() == std::io::ErrorKind::PermissionDenied
                && io.to_string().contains("does not allow writes")
        })
}

/// Whether a statement's error says its server is gone for this connection (closed, broken,
/// shutting down, or a primary turned read-only), so that connections made before may lead
/// to a server that is no longer the primary. Not a server that is merely busy (too many
/// connections, out of disk): dropping every connection would only add to its load.
pub(super) fn server_is_gone(e: &Error) -> bool {
    match e.code() {
        None => super::connection::is_unreachable(e),
        Some(code) => {
            let code = code.code();
            code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03" | "25006")
        }
    }
}

/// When the database was last found gone. Cheap to clone.
#[derive(Clone, Default)]
pub(super) struct Failures(Arc<Mutex<Option<Instant>>>);

impl Failures {
    /// A statement found the database gone now.
    pub(super) fn mark(&self) {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Instant::now());
    }

    /// Whether a connection made at `created` predates the last failure.
    pub(super) fn predates(&self, created: Instant) -> bool {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some_and(|failed| created <= failed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_host_keeps_everything_else_of_the_url() {
        let config: Config = "postgres://app:secret@db-a:5433,db-b/tcc?connect_timeout=3\
            &target_session_attrs=read-write&application_name=coordinator&keepalives_idle=7\
            &options=-csearch_path%3Dx"
            .parse()
            .unwrap();
        let hosts = single_hosts(&config);
        assert_eq!(hosts.len(), 2);
        for (one, (host, port)) in hosts.iter().zip([("db-a", 5433), ("db-b", 5432)]) {
            assert_eq!(one.get_hosts(), [Host::Tcp(host.into())]);
            assert_eq!(one.get_ports(), [port]);
            assert_eq!(one.get_user(), Some("app"));
            assert_eq!(one.get_password(), Some(&b"secret"[..]));
            assert_eq!(one.get_dbname(), Some("tcc"));
            assert_eq!(one.get_options(), Some("-csearch_path=x"));
            assert_eq!(one.get_application_name(), Some("coordinator"));
            assert_eq!(one.get_connect_timeout(), Some(&Duration::from_secs(3)));
            assert_eq!(one.get_keepalives_idle(), Duration::from_secs(7));
            assert_eq!(
                one.get_target_session_attrs(),
                tokio_postgres::config::TargetSessionAttrs::ReadWrite
            );
        }
    }

    #[tokio::test]
    #[ignore = "needs TCC_TEST_POSTGRES"]
    async fn a_server_turned_read_only_is_gone_and_a_refused_statement_is_not() {
        let url = crate::store::required_scratch_database().await;
        let (db, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        db.batch_execute("CREATE TABLE probe (id int PRIMARY KEY); INSERT INTO probe VALUES (1)")
            .await
            .unwrap();

        // What a primary demoted under a pooled connection answers (SQLSTATE 25006).
        db.batch_execute("SET default_transaction_read_only = on")
            .await
            .unwrap();
        let read_only = db
            .execute("INSERT INTO probe VALUES (2)", &[])
            .await
            .unwrap_err();
        db.batch_execute("SET default_transaction_read_only = off")
            .await
            .unwrap();
        // A statement the server refuses for what it says (a unique violation, 23505).
        let refused = db
            .execute("INSERT INTO probe VALUES (1)", &[])
            .await
            .unwrap_err();

        assert!(server_is_gone(&read_only), "{read_only}");
        assert!(!server_is_gone(&refused), "{refused}");
        // And the caller answers 503 for the first, as for any database out of reach.
        let read_only = super::super::connection::db_error(read_only);
        assert!(
            matches!(read_only, crate::store::StoreError::Unavailable(_)),
            "{read_only}"
        );
    }

    /// A log on `url` with `connections` pooled and statements bounded by `statement_timeout`.
    async fn log_at(
        url: String,
        connections: usize,
        statement_timeout: Duration,
    ) -> super::super::PgLog {
        super::super::PgLog::connect(crate::store::PostgresOptions {
            url,
            connections,
            lease: Duration::from_secs(10),
            retention: crate::store::Retention {
                retention: Duration::from_secs(60),
                transaction_retention: Duration::from_secs(60),
            },
            instance_name: "failover test".into(),
            ca: None,
            statement_timeout,
        })
        .await
        .unwrap()
    }

    /// The backend process of each of `n` connections taken from the pool at once.
    async fn backends(log: &super::super::PgLog, n: usize) -> Vec<i32> {
        let taken = futures_util::future::join_all((0..n).map(|_| log.pool.get())).await;
        let mut pids = Vec::new();
        for client in taken {
            let client = client.expect("a pooled connection");
            let row = client
                .query_one("SELECT pg_backend_pid()", &[])
                .await
                .unwrap();
            pids.push(row.get::<_, i32>(0));
        }
        pids
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs TCC_TEST_POSTGRES"]
    async fn after_a_failure_the_pool_hands_out_no_connection_made_before_it() {
        let url = crate::store::required_scratch_database().await;
        let log = log_at(url, 4, Duration::from_secs(2)).await;
        // Four connections at once, back in the pool: they may lead to a primary that is gone.
        let before = backends(&log, 4).await;
        assert_eq!(backends(&log, 4).await.len(), 4);
        assert!(
            backends(&log, 1)
                .await
                .iter()
                .all(|pid| before.contains(pid)),
            "without a failure the pool reuses its connections"
        );

        log.failures.mark();

        let after = backends(&log, 4).await;
        assert!(
            after.iter().all(|pid| !before.contains(pid)),
            "connections made before the failure were handed out again: {before:?} then {after:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs TCC_TEST_POSTGRES"]
    async fn a_request_waiting_on_a_batch_that_never_ends_gets_unavailable_and_marks_the_interruption(
    ) {
        let url = crate::store::required_scratch_database().await;
        let separator = if url.contains('?') { '&' } else { '?' };
        // The bound is (connect_timeout + statement timeout) x 2: 2.2 s here.
        let url = format!("{url}{separator}connect_timeout=1");
        let log = log_at(url, 2, Duration::from_millis(100)).await;
        assert!(!log.take_interrupted());

        // A batch stuck behind a silent server, as the request sees it: it never answers.
        let never = std::future::pending::<Result<(), crate::store::StoreError>>();
        let waited = tokio::time::timeout(Duration::from_secs(20), log.bounded(never))
            .await
            .expect("the request got an answer: it did not wait on the batch for good");

        assert!(
            matches!(&waited, Err(crate::store::StoreError::Unavailable(why)) if why.contains("did not answer within 2s 200ms")),
            "{waited:?}"
        );
        assert!(
            log.take_interrupted(),
            "the heartbeat resumes what the request left"
        );
    }

    #[test]
    fn connections_made_before_a_failure_predate_it_and_later_ones_do_not() {
        let failures = Failures::default();
        let before = Instant::now();
        assert!(!failures.predates(before), "nothing has failed yet");
        failures.mark();
        let after = Instant::now() + Duration::from_millis(1);
        assert!(failures.predates(before));
        assert!(!failures.predates(after));
    }
}
