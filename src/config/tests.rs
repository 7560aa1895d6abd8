//! The configuration's defaults, flags and refusals.
use super::*;

#[test]
fn the_test_configuration_ignores_the_environment() {
    // A variable no other test reads, set as a developer's shell might have it.
    std::env::set_var("TCC_STUCK_AFTER", "7m");
    let config = Config::ephemeral();
    std::env::remove_var("TCC_STUCK_AFTER");
    assert_eq!(config.stuck_after, Duration::from_secs(60));
    assert_eq!(config.storage, Storage::Ephemeral);
}

#[test]
fn the_defaults_match_the_documentation() {
    let config = Config::default();
    assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(config.storage, Storage::Dir("./data".into()));
    assert_eq!(config.limits.default_timeout, Duration::from_secs(30));
    assert_eq!(config.limits.max_timeout, Duration::from_secs(3600));
    assert_eq!(config.limits.participant_timeout, Duration::from_secs(5));
    assert_eq!(config.limits.max_participants, 64);
    assert_eq!(config.max_body_bytes, 1024 * 1024);
    assert_eq!(config.limits.retention, Duration::from_secs(24 * 3600));
    assert_eq!(
        config.limits.transaction_retention,
        Duration::from_secs(7 * 24 * 3600)
    );
    assert_eq!(config.lease, Duration::from_secs(10));
    assert_eq!(config.store_connections, 16);
}

#[test]
fn a_postgres_store_is_chosen_by_url_and_its_password_never_shows() {
    let config = Cli::parse_from(["x", "--store", "postgres://tcc:hunter2@db/tcc"])
        .into_config()
        .unwrap();
    assert!(matches!(&config.storage, Storage::Postgres(url)
        if url.expose() == "postgres://tcc:hunter2@db/tcc"));
    assert!(!format!("{config:?}").contains("hunter2"));

    let error = Cli::parse_from(["x", "--store", "mysql://db/tcc"])
        .into_config()
        .unwrap_err();
    assert!(error
        .to_string()
        .starts_with("--store takes a PostgreSQL URL"));
    let error = Cli::parse_from(["x", "--store", "postgres://db/tcc", "--ephemeral"])
        .into_config()
        .unwrap_err();
    assert!(error.to_string().contains("cannot be combined"));
    let error = Cli::parse_from(["x", "--lease", "100ms"])
        .into_config()
        .unwrap_err();
    assert!(error
        .to_string()
        .starts_with("--lease must be at least 500ms"));
}

#[test]
fn a_default_timeout_above_the_maximum_is_one_clear_sentence() {
    let error = Cli::parse_from(["x", "--default-timeout", "2h"])
        .into_config()
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "--default-timeout (2h) is longer than --max-timeout (1h)"
    );
}

#[test]
fn tokens_come_from_repeated_flags_and_never_show_in_debug_output() {
    let config = Cli::parse_from(["x", "--api-token", "s3cret-one", "--api-token", "two"])
        .into_config()
        .unwrap();
    assert_eq!(
        config.api_tokens,
        [ApiToken::new("s3cret-one"), ApiToken::new("two")]
    );
    let shown = format!("{config:?}");
    assert!(!shown.contains("s3cret-one"), "{shown}");
    let error = Cli::parse_from(["x", "--api-token", ""])
        .into_config()
        .unwrap_err();
    assert!(error.to_string().starts_with("--api-token"), "{error}");
}

#[test]
fn the_idle_timeout_follows_a_long_max_wait_unless_given() {
    let config = Cli::parse_from(["x", "--max-wait", "60s"])
        .into_config()
        .unwrap();
    assert_eq!(config.idle_timeout, Duration::from_secs(90));
    assert_eq!(Config::default().idle_timeout, Duration::from_secs(60));
    let error = Cli::parse_from(["x", "--max-wait", "60s", "--idle-timeout", "60s"])
        .into_config()
        .unwrap_err();
    assert!(
        error.to_string().starts_with("--idle-timeout (1m)"),
        "{error}"
    );
}

#[test]
fn durations_read_like_people_write_them() {
    let config = Cli::parse_from(["x", "--participant-timeout", "750ms"])
        .into_config()
        .unwrap();
    assert_eq!(
        config.limits.participant_timeout,
        Duration::from_millis(750)
    );
}
