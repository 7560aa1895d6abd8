//! Flags and environment variables, parsed once into a typed [`Config`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use url::Url;

use crate::domain::Limits;
use crate::participant::{AllowRule, NameResolver};
use crate::retry::RetryPolicy;
use crate::store::SyncMode;
use crate::telemetry::LogFormat;

/// Where the transaction log lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Storage {
    /// A directory kept across restarts.
    Dir(PathBuf),
    /// A temporary directory removed when the coordinator stops (for tests).
    Ephemeral,
    /// A PostgreSQL database, shared with every coordinator given the same one.
    Postgres(DatabaseUrl),
}

/// A PostgreSQL URL (`postgres://user:password@host:port/database`). Never printed: it may
/// hold a password.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    /// # Errors
    /// When `url` does not start with `postgres://` or `postgresql://`.
    pub fn new(url: impl Into<String>) -> Result<Self, ConfigError> {
        let url = url.into();
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Self(url))
        } else {
            Err(ConfigError(
                "--store takes a PostgreSQL URL (postgres://user:password@host:port/database); \
                 without --store the log is kept in --data-dir"
                    .into(),
            ))
        }
    }

    /// The URL itself, for connecting.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DatabaseUrl(<hidden>)")
    }
}

/// A bearer token clients must present. Never printed: its `Debug` shows only its length.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiToken(String);

impl ApiToken {
    #[must_use]
    pub fn new(token: impl Into<String>) -> Self {
        Self(token.into())
    }

    /// The token itself, for comparing.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiToken(<{} characters>)", self.0.chars().count())
    }
}

/// The certificate chain and private key the API is served with (PEM files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Everything the coordinator is configured with.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// Tokens of which a request must present one (`Authorization: Bearer`), each with the
    /// operator role; with no tokens here nor in `api_tokens_file`: no check.
    pub api_tokens: Vec<ApiToken>,
    /// Named tokens with roles, one a line (`NAME ROLE SECRET`), read again on SIGHUP.
    pub api_tokens_file: Option<PathBuf>,
    /// Serve a non-loopback address without tokens.
    pub allow_unauthenticated: bool,
    /// Most requests served at once; more get 503 with `Retry-After`.
    pub max_in_flight: usize,
    /// Hosts the coordinator may call; empty: any but link-local and metadata addresses.
    pub allow_participants: Vec<AllowRule>,
    /// Answers name lookups for participant calls (the system's resolver by default; tests
    /// give their own).
    pub participant_resolver: NameResolver,
    pub storage: Storage,
    /// With a PostgreSQL store: how long this instance's lease lasts without a heartbeat.
    pub lease: Duration,
    /// With a PostgreSQL store: connections kept open at most.
    pub store_connections: usize,
    /// With a PostgreSQL store: how long one statement may go unanswered.
    pub store_timeout: Duration,
    /// With a PostgreSQL store and `sslmode=require`: more CAs trusted for its certificate.
    pub store_ca: Option<PathBuf>,
    pub limits: Limits,
    pub max_body_bytes: usize,
    /// The URL participants see in `TCC-Reservation`; `http://{listen address}` when unset.
    pub public_url: Option<Url>,
    pub retry: RetryPolicy,
    pub sync: SyncMode,
    /// Free bytes kept on the embedded log's disk (client writes refused below).
    pub disk_reserve: u64,
    /// sled's page cache, in bytes.
    pub cache_bytes: u64,
    /// Most client writes waiting for the disk at once; more get 503 with `Retry-After`.
    pub max_log_queue: usize,
    /// How long a request body may take to arrive (408 after).
    pub read_timeout: Duration,
    /// A connection silent this long is closed.
    pub idle_timeout: Duration,
    /// Skip records of the log that cannot be read (each is logged) instead of refusing to run.
    pub recover_skip_unreadable: bool,
    /// How log lines are written.
    pub log_format: LogFormat,
    /// Where the binary writes its port once it listens (for test suites in any language).
    pub port_file: Option<PathBuf>,
    /// A reservation confirming or cancelling longer than this counts as stuck (metrics).
    pub stuck_after: Duration,
    /// Require a token for `/metrics` too.
    pub protect_metrics: bool,
    /// Serve HTTPS with these files; plain HTTP when `None`.
    pub tls: Option<TlsFiles>,
    /// More certificate authorities (a PEM bundle) trusted for participant calls, besides
    /// the system's.
    pub participant_ca: Option<PathBuf>,
    /// Where spans go (an OTLP/HTTP collector's base URL); none: they are not exported.
    pub otlp_endpoint: Option<Url>,
}

impl Default for Config {
    /// The defaults of the command line: `127.0.0.1:8080`, log in `./data`. Only the
    /// defaults: the `TCC_*` variables of the environment are not read (a test suite run
    /// where `TCC_STORE` or `TCC_DATA_DIR` happens to be set must not pick them up).
    fn default() -> Self {
        use clap::{CommandFactory, FromArgMatches};
        let command = Cli::command().mut_args(|arg| arg.env(None));
        let matches = command.get_matches_from(["tcc-coordinator"]);
        Cli::from_arg_matches(&matches)
            .expect("the defaults parse")
            .into_config()
            .expect("the defaults are valid")
    }
}

impl Config {
    /// A coordinator for tests: a free port on loopback and a temporary log.
    #[must_use]
    pub fn ephemeral() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            storage: Storage::Ephemeral,
            ..Self::default()
        }
    }
}

/// `--sync flush|fdatasync` (the store's type; its command-line form lives here, with clap).
impl clap::ValueEnum for SyncMode {
    fn value_variants<'a>() -> &'a [Self] {
        &[SyncMode::Flush, SyncMode::Fdatasync]
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(match self {
            SyncMode::Flush => clap::builder::PossibleValue::new("flush").help(
                "sled's flush (sync_file_range): survives a crash of the process, not a power loss",
            ),
            SyncMode::Fdatasync => clap::builder::PossibleValue::new("fdatasync")
                .help("flush, then fdatasync of the log: also survives a power loss"),
        })
    }
}

/// `--log-format text|json`.
impl clap::ValueEnum for LogFormat {
    fn value_variants<'a>() -> &'a [Self] {
        &[LogFormat::Text, LogFormat::Json]
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(match self {
            LogFormat::Text => {
                clap::builder::PossibleValue::new("text").help("one human-readable line per event")
            }
            LogFormat::Json => clap::builder::PossibleValue::new("json")
                .help("one JSON object per line, for log collectors"),
        })
    }
}

/// A flag's value cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

/// tcc-coordinator: a try/confirm/cancel transaction coordinator for REST services.
///
/// Every flag can also be set with the environment variable named in brackets.
#[derive(Debug, Parser)]
#[command(name = "tcc-coordinator", version, about, long_about = None)]
pub struct Cli {
    /// Address and port to serve the API on (loopback by default; 0.0.0.0:8080 serves every
    /// interface).
    #[arg(long, env = "TCC_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,

    /// A bearer token clients must present (`Authorization: Bearer <token>`); repeat the flag
    /// for several tokens, or give them comma-separated in the variable. Every endpoint but
    /// /health/* and the documentation requires one.
    #[arg(
        long = "api-token",
        env = "TCC_API_TOKENS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    api_tokens: Vec<String>,

    /// Named tokens with roles, one a line: `NAME ROLE SECRET` separated by spaces, `#` at the
    /// start of a word starts a comment. Roles: viewer (reads), client (also creates,
    /// confirms, cancels, joins), operator (also forgets conflicts and retries participants
    /// now). Read again on SIGHUP.
    #[arg(long, env = "TCC_API_TOKENS_FILE", value_name = "FILE")]
    api_tokens_file: Option<PathBuf>,

    /// Serve a non-loopback --listen address without any --api-token (anyone who reaches the
    /// port can then create, confirm and cancel).
    #[arg(long, env = "TCC_ALLOW_UNAUTHENTICATED")]
    allow_unauthenticated: bool,

    /// Most requests served at once; further ones get 503 with Retry-After.
    #[arg(long, env = "TCC_MAX_IN_FLIGHT", default_value_t = 10_000)]
    max_in_flight: usize,

    /// A participant host the coordinator may call: `host`, `host:port`, `*.domain` or a CIDR
    /// network such as 10.0.0.0/8; repeatable (comma-separated in the variable). Without it,
    /// every host is allowed but link-local and cloud metadata addresses, which are always
    /// refused.
    #[arg(
        long = "allow-participant",
        env = "TCC_ALLOW_PARTICIPANTS",
        value_delimiter = ','
    )]
    allow_participants: Vec<AllowRule>,

    /// Directory of the transaction log; created when missing.
    #[arg(long, env = "TCC_DATA_DIR", default_value = "./data")]
    data_dir: PathBuf,

    /// Keep the log in a temporary directory removed at exit (for tests and demos).
    #[arg(long, env = "TCC_EPHEMERAL", conflicts_with = "data_dir")]
    ephemeral: bool,

    /// Reservation timeout when a request gives no `timeout_ms` (e.g. 30s, 2m).
    #[arg(long, env = "TCC_DEFAULT_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    default_timeout: Duration,

    /// Largest `timeout_ms` a request may ask for.
    #[arg(long, env = "TCC_MAX_TIMEOUT", default_value = "1h", value_parser = humantime::parse_duration)]
    max_timeout: Duration,

    /// Time limit of one call to a participant; also the safety margin kept before a
    /// participant link expires.
    #[arg(long, env = "TCC_PARTICIPANT_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    participant_timeout: Duration,

    /// Most participants one reservation may hold.
    #[arg(long, env = "TCC_MAX_PARTICIPANTS", default_value_t = 64)]
    max_participants: usize,

    /// Longest time a `Prefer: wait=N` request is held before answering.
    #[arg(long, env = "TCC_MAX_WAIT", default_value = "30s", value_parser = humantime::parse_duration)]
    max_wait: Duration,

    /// How long a finished reservation stays readable (303/410 with its details); then it
    /// answers 410 and its record is dropped.
    #[arg(long, env = "TCC_RETENTION", default_value = "24h", value_parser = humantime::parse_duration)]
    retention: Duration,

    /// How long a confirmed transaction stays at /transactions/{id}.
    #[arg(long, env = "TCC_TRANSACTION_RETENTION", default_value = "7d", value_parser = humantime::parse_duration)]
    transaction_retention: Duration,

    /// Largest request body accepted, in bytes (larger ones get 413).
    #[arg(long, env = "TCC_MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    max_body_bytes: usize,

    /// Base URL participants use to reach this coordinator (sent in `TCC-Reservation`);
    /// defaults to http://{listen address}.
    #[arg(long, env = "TCC_PUBLIC_URL")]
    public_url: Option<Url>,

    /// Longest wait between two retries of a participant call.
    #[arg(long, env = "TCC_MAX_RETRY_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    max_retry_interval: Duration,

    /// What an acknowledged write survives: `flush` survives a crash of the process,
    /// `fdatasync` also a power loss.
    #[arg(long, env = "TCC_SYNC", value_enum, default_value = "fdatasync")]
    sync: SyncMode,

    /// Free space, in bytes, kept on the disk holding the embedded log: below it client
    /// writes (creates, decisions, joins) are refused (503 with Retry-After, readiness fails)
    /// and reads are still served, until space returns. Free space is read every 250 ms: keep
    /// more than clients can write in that time, so that the log itself never meets a full
    /// disk (if it does, the process stops for its supervisor to restart it).
    #[arg(long, env = "TCC_DISK_RESERVE", default_value_t = 64 * 1024 * 1024)]
    disk_reserve: u64,

    /// Keep the log in PostgreSQL instead of --data-dir: postgres://user:password@host:port/database.
    /// Every coordinator started with the same database shares its reservations: any of
    /// them answers for any reservation, and the others finish the work of one that dies.
    /// The schema is created or migrated at start.
    #[arg(long, env = "TCC_STORE", hide_env_values = true)]
    store: Option<String>,

    /// With --store: how long this instance's lease lasts without a heartbeat (it renews it
    /// every second); once it lapses, other instances take over its unfinished reservations.
    #[arg(long, env = "TCC_LEASE", default_value = "10s", value_parser = humantime::parse_duration)]
    lease: Duration,

    /// With --store: database connections this instance keeps open at most.
    #[arg(long, env = "TCC_STORE_CONNECTIONS", default_value_t = 16)]
    store_connections: usize,

    /// How long the log may keep a request waiting. With the embedded log: how long a
    /// client's write waits for the disk; past it the request answers 503 with Retry-After
    /// while the write goes on (a slow disk), and readiness fails while a flush is that late.
    /// With --store: how long one database statement may go unanswered (and a request wait
    /// for a free connection); past it the connection is dropped, as the server may have gone
    /// silent (a partition, a hung host, a primary that failed over), and the request
    /// answers 503 with Retry-After. Connecting is bounded by the URL's `connect_timeout`
    /// (2 s when it names none), for each of its hosts at once.
    #[arg(long, env = "TCC_STORE_TIMEOUT", default_value = "2s", value_parser = humantime::parse_duration)]
    store_timeout: Duration,

    /// With --store …?sslmode=require: a PEM bundle of certificate authorities trusted for
    /// the database's certificate, besides the system's (the certificate is always verified).
    #[arg(long, env = "TCC_STORE_CA")]
    store_ca: Option<PathBuf>,

    /// Memory for the log's page cache, in bytes.
    #[arg(long, env = "TCC_CACHE_BYTES", default_value_t = 64 * 1024 * 1024)]
    cache_bytes: u64,

    /// Most client writes (creates, decisions, joins) waiting for the log's flush at once;
    /// further ones get 503 with Retry-After and store nothing.
    #[arg(long, env = "TCC_MAX_LOG_QUEUE", default_value_t = 4096)]
    max_log_queue: usize,

    /// How long a request's body may take to arrive; slower ones get 408 and store nothing.
    #[arg(long, env = "TCC_READ_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    read_timeout: Duration,

    /// A client connection with no traffic for this long is closed (against clients that
    /// open connections and stall). Must be longer than --max-wait; by default 60s, or
    /// --max-wait plus 30s when that is longer.
    #[arg(long, env = "TCC_IDLE_TIMEOUT", value_parser = humantime::parse_duration)]
    idle_timeout: Option<Duration>,

    /// Write the port the API listens on to this file once it listens (useful with
    /// `--listen 127.0.0.1:0` in test suites); the first line of output also gives the URL.
    #[arg(long, env = "TCC_PORT_FILE")]
    port_file: Option<PathBuf>,

    /// How log lines are written: `text` for people, `json` for log collectors.
    #[arg(long, env = "TCC_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,

    /// A reservation still confirming or cancelling this long after its decision counts as
    /// stuck (the `tcc_reservations_stuck` metric).
    #[arg(long, env = "TCC_STUCK_AFTER", default_value = "1m", value_parser = humantime::parse_duration)]
    stuck_after: Duration,

    /// Require an --api-token for /metrics too (by default scrapers need none).
    #[arg(long, env = "TCC_PROTECT_METRICS")]
    protect_metrics: bool,

    /// Serve HTTPS with this certificate chain (PEM); needs --tls-key.
    #[arg(long, env = "TCC_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "TCC_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,

    /// Certificate authorities (a PEM bundle) trusted for https participants, besides the
    /// system's.
    #[arg(long, env = "TCC_PARTICIPANT_CA")]
    participant_ca: Option<PathBuf>,

    /// Resume everything else when records of the log cannot be read, logging each one
    /// (by default the coordinator stops and names the first).
    #[arg(long, env = "TCC_RECOVER_SKIP_UNREADABLE")]
    recover_skip_unreadable: bool,

    /// Export traces (each reservation's create, tries, decision, phases and participant
    /// calls, in the W3C trace it propagates) to this OpenTelemetry collector over OTLP/HTTP,
    /// e.g. http://localhost:4318 (`/v1/traces` is appended). The other OTEL_EXPORTER_OTLP_*
    /// and OTEL_BSP_* variables (headers, timeout, queue size) and OTEL_SERVICE_NAME apply.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    otlp_endpoint: Option<Url>,
}

impl Cli {
    /// Reads the process's flags and `TCC_*` variables. `--help` and `--version` print and
    /// exit here.
    ///
    /// # Errors
    /// A bad flag: clap's first line saying what is wrong, as one sentence.
    pub fn from_process() -> Result<Self, ConfigError> {
        match Self::try_parse() {
            Ok(cli) => Ok(cli),
            Err(error) if !error.use_stderr() => error.exit(), // --help, --version
            Err(error) => {
                // The usage text that follows clap's first line is in --help.
                let rendered = error.render().to_string();
                let first = rendered.lines().next().unwrap_or_default();
                Err(ConfigError(format!(
                    "{} (see --help)",
                    first.trim_start_matches("error: ")
                )))
            }
        }
    }

    /// Checks the flags against each other and builds the [`Config`].
    ///
    /// # Errors
    /// [`ConfigError`] with one sentence naming the flag.
    pub fn into_config(self) -> Result<Config, ConfigError> {
        let positive = |name: &str, d: Duration| {
            if d.is_zero() {
                Err(ConfigError(format!("--{name} must be longer than zero")))
            } else {
                Ok(())
            }
        };
        positive("default-timeout", self.default_timeout)?;
        positive("max-timeout", self.max_timeout)?;
        positive("participant-timeout", self.participant_timeout)?;
        positive("max-retry-interval", self.max_retry_interval)?;
        positive("store-timeout", self.store_timeout)?;
        if self.default_timeout > self.max_timeout {
            return Err(ConfigError(format!(
                "--default-timeout ({}) is longer than --max-timeout ({})",
                humantime::format_duration(self.default_timeout),
                humantime::format_duration(self.max_timeout)
            )));
        }
        if self.max_participants == 0 {
            return Err(ConfigError("--max-participants must be at least 1".into()));
        }
        if self.max_body_bytes < 1024 {
            return Err(ConfigError("--max-body-bytes must be at least 1024".into()));
        }
        positive("read-timeout", self.read_timeout)?;
        if self.lease < Duration::from_millis(500) {
            return Err(ConfigError(
                "--lease must be at least 500ms: it is renewed every quarter of it, at most every second".into(),
            ));
        }
        let idle_timeout = self.idle_timeout.unwrap_or_else(|| {
            Duration::from_secs(60).max(self.max_wait + Duration::from_secs(30))
        });
        if idle_timeout <= self.max_wait {
            return Err(ConfigError(format!(
                "--idle-timeout ({}) must be longer than --max-wait ({}), or waiting requests \
                 would be cut off",
                humantime::format_duration(idle_timeout),
                humantime::format_duration(self.max_wait)
            )));
        }
        if self.max_log_queue == 0 {
            return Err(ConfigError("--max-log-queue must be at least 1".into()));
        }
        if self.max_in_flight == 0 {
            return Err(ConfigError("--max-in-flight must be at least 1".into()));
        }
        if self
            .api_tokens
            .iter()
            .any(|t| t.is_empty() || t.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            return Err(ConfigError(
                "--api-token must not be empty or contain spaces or control characters".into(),
            ));
        }
        if let Some(url) = &self.otlp_endpoint {
            if !matches!(url.scheme(), "http" | "https") {
                return Err(ConfigError(format!(
                    "--otlp-endpoint must be an http or https URL, not `{url}`"
                )));
            }
        }
        if let Some(url) = &self.public_url {
            if !matches!(url.scheme(), "http" | "https") {
                return Err(ConfigError(format!(
                    "--public-url must be an http or https URL, not `{url}`"
                )));
            }
        }
        Ok(Config {
            listen: self.listen,
            api_tokens: self.api_tokens.into_iter().map(ApiToken).collect(),
            api_tokens_file: self.api_tokens_file,
            allow_unauthenticated: self.allow_unauthenticated,
            max_in_flight: self.max_in_flight,
            allow_participants: self.allow_participants,
            participant_resolver: NameResolver::default(),
            storage: match (self.store, self.ephemeral) {
                (Some(_), true) => {
                    return Err(ConfigError(
                        "--ephemeral and --store cannot be combined: --ephemeral is a temporary \
                         local log"
                            .into(),
                    ))
                }
                (Some(url), false) => Storage::Postgres(DatabaseUrl::new(url)?),
                (None, true) => Storage::Ephemeral,
                (None, false) => Storage::Dir(self.data_dir),
            },
            lease: self.lease,
            store_connections: self.store_connections,
            store_timeout: self.store_timeout,
            store_ca: self.store_ca,
            limits: Limits {
                default_timeout: self.default_timeout,
                max_timeout: self.max_timeout,
                max_participants: self.max_participants,
                participant_timeout: self.participant_timeout,
                max_wait: self.max_wait,
                retention: self.retention,
                transaction_retention: self.transaction_retention,
            },
            max_body_bytes: self.max_body_bytes,
            public_url: self.public_url,
            retry: RetryPolicy {
                max_interval: self.max_retry_interval,
                ..RetryPolicy::default()
            },
            sync: self.sync,
            disk_reserve: self.disk_reserve,
            cache_bytes: self.cache_bytes,
            max_log_queue: self.max_log_queue,
            read_timeout: self.read_timeout,
            idle_timeout,
            recover_skip_unreadable: self.recover_skip_unreadable,
            tls: self
                .tls_cert
                .zip(self.tls_key)
                .map(|(cert, key)| TlsFiles { cert, key }),
            participant_ca: self.participant_ca,
            otlp_endpoint: self.otlp_endpoint,
            log_format: self.log_format,
            port_file: self.port_file,
            stuck_after: self.stuck_after,
            protect_metrics: self.protect_metrics,
        })
    }
}

#[cfg(test)]
mod tests;
