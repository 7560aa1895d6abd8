//! The schema: its migrations, applied at start under a lock so that instances starting
//! together wait for each other; and scratch schemas for tests and benchmarks.

use std::time::Duration;

use deadpool_postgres::Object;
use tokio_postgres::error::SqlState;
use uuid::Uuid;

use super::connection::{db_error_text, is_unreachable};

/// Schema migrations, in order: `tcc_schema.version` counts those applied.
pub(super) const MIGRATIONS: &[&str] = &["
    CREATE TABLE tcc_instances (
        id uuid PRIMARY KEY,
        name text NOT NULL,
        started_at timestamptz NOT NULL DEFAULT now(),
        lease_until timestamptz NOT NULL
    );
    CREATE TABLE tcc_reservations (
        id uuid PRIMARY KEY,
        version bigint NOT NULL,
        state text NOT NULL,
        owner uuid,
        active boolean NOT NULL,
        purge_at timestamptz,
        idempotency_key text UNIQUE,
        fingerprint bytea,
        record bytea NOT NULL
    );
    CREATE INDEX tcc_reservations_active ON tcc_reservations (owner) WHERE active;
    CREATE INDEX tcc_reservations_purge ON tcc_reservations (purge_at) WHERE purge_at IS NOT NULL;
    CREATE INDEX tcc_reservations_state ON tcc_reservations (state, id);
"];

/// Creates the schema or brings it up to date, in one transaction holding `tcc_schema`
/// exclusively (instances starting together wait for each other). On failure: the sentence,
/// and whether the database was out of reach (rather than refusing).
pub(super) async fn migrate(client: &mut Object) -> Result<(), (String, bool)> {
    let mut attempts = 0;
    loop {
        attempts += 1;
        match migrate_once(client).await {
            Err(MigrateError::Db(e))
                if attempts < 5
                    && matches!(
                        e.code(),
                        Some(c) if *c == SqlState::UNIQUE_VIOLATION
                            || *c == SqlState::DUPLICATE_TABLE
                            || *c == SqlState::T_R_SERIALIZATION_FAILURE
                            || *c == SqlState::T_R_DEADLOCK_DETECTED
                    ) =>
            {
                // Two instances created `tcc_schema` at the same moment: the loser retries.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(MigrateError::Db(e)) => {
                let unreachable = is_unreachable(&e);
                return Err((db_error_text(&e), unreachable));
            }
            Err(MigrateError::TooNew(found)) => {
                return Err((
                    format!(
                        "the schema is at version {found}, newer than this coordinator knows \
                         ({}): run a newer coordinator",
                        MIGRATIONS.len()
                    ),
                    false,
                ))
            }
            Ok(()) => return Ok(()),
        }
    }
}

enum MigrateError {
    Db(tokio_postgres::Error),
    TooNew(usize),
}

impl From<tokio_postgres::Error> for MigrateError {
    fn from(e: tokio_postgres::Error) -> Self {
        MigrateError::Db(e)
    }
}

async fn migrate_once(client: &mut Object) -> Result<(), MigrateError> {
    client
        .batch_execute("CREATE TABLE IF NOT EXISTS tcc_schema (version integer NOT NULL)")
        .await?;
    let tx = client.transaction().await?;
    tx.batch_execute("LOCK TABLE tcc_schema IN ACCESS EXCLUSIVE MODE")
        .await?;
    let found = tx
        .query_opt("SELECT version FROM tcc_schema", &[])
        .await?
        .map_or(0, |row| row.get::<_, i32>(0));
    let found = usize::try_from(found).unwrap_or(0);
    if found > MIGRATIONS.len() {
        return Err(MigrateError::TooNew(found));
    }
    for (i, migration) in MIGRATIONS.iter().enumerate().skip(found) {
        tracing::info!(version = i + 1, "migrating the PostgreSQL schema");
        tx.batch_execute(migration).await?;
    }
    let now = i32::try_from(MIGRATIONS.len()).unwrap_or(i32::MAX);
    if found == 0 {
        tx.execute("INSERT INTO tcc_schema (version) VALUES ($1)", &[&now])
            .await?;
    } else {
        tx.execute("UPDATE tcc_schema SET version = $1", &[&now])
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Creates a schema with a fresh name in the database at `url` and returns a URL whose
/// connections use it (`search_path`): tests and benchmarks get empty tables of their own.
pub(crate) async fn scratch_schema(url: &str) -> String {
    let schema = format!("tcc_test_{}", Uuid::new_v4().simple());
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("TCC_TEST_POSTGRES must name a reachable database");
    tokio::spawn(connection);
    client
        .batch_execute(&format!("CREATE SCHEMA {schema}"))
        .await
        .expect("a scratch schema");
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}options=-csearch_path%3D{schema}")
}
