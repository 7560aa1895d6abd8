//! Several coordinator processes on one PostgreSQL database (`--store`), killed with SIGKILL.
//!
//! Run when `TCC_TEST_POSTGRES` names a database (`.ci/postgres.sh` starts a throwaway
//! cluster and sets it); each test gets a schema of its own. They are
//! `#[ignore = "needs TCC_TEST_POSTGRES"]`: run them with `--include-ignored`.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::json;

use super::helpers::{
    client, create, decide, eventually, in_secs, wait_for, Participant, PATIENCE,
};
use super::{command_without_log, Binary};

/// Short, so that takeovers happen within a test's patience.
const LEASE: Duration = Duration::from_secs(2);

/// A coordinator process on the shared database, its stderr in `{dir}/{name}.log`.
pub(super) fn instance(database: &str, dir: &std::path::Path, name: &str) -> Binary {
    instance_with(database, dir, name, &[])
}

/// [`instance`] with more environment variables.
fn instance_with(
    database: &str,
    dir: &std::path::Path,
    name: &str,
    env: &[(&str, &str)],
) -> Binary {
    let mut command = command_without_log();
    command
        .args(["--store", database, "--lease"])
        .arg(format!("{}ms", LEASE.as_millis()))
        .envs(env.iter().copied());
    Binary::spawn(command, &dir.join(format!("{name}.log")))
}

/// Coordinator processes named `names` on a fresh schema of the test database, their logs in
/// the returned directory.
pub(super) async fn cluster<const N: usize>(names: [&str; N]) -> (tempfile::TempDir, [Binary; N]) {
    let database = tcc_coordinator::required_scratch_database().await;
    let dir = tempfile::tempdir().unwrap();
    let instances = names.map(|name| instance(&database, dir.path(), name));
    (dir, instances)
}

/// Every link (`/holds/{n}`) got at most one kind of decision: never both `PUT` and `DELETE`.
pub(super) fn no_link_got_both(participants: &[&Participant]) {
    for p in participants {
        let put: BTreeSet<_> = p.paths("PUT").into_iter().collect();
        let deleted: BTreeSet<_> = p.paths("DELETE").into_iter().collect();
        let both: Vec<_> = put.intersection(&deleted).collect();
        assert!(
            both.is_empty(),
            "links that got both PUT and DELETE: {both:?}"
        );
    }
}

#[tokio::test]
#[ignore = "needs TCC_TEST_POSTGRES"]
async fn any_instance_answers_and_a_killed_owners_confirmation_is_finished_by_another() {
    let (_dir, [first, second, third]) = cluster(["first", "second", "third"]).await;
    let http = client();
    let (up, down) = (Participant::start().await, Participant::start().await);

    // Create on the first; the third reads it.
    let id = create(
        &http,
        &first.base,
        &json!({"participants": [up.link(1), down.link(1)]}),
    )
    .await;
    let (status, body) = wait_for(&http, &third.base, &id, |_, _| true).await;
    assert_eq!((status, body["state"].as_str()), (200, Some("reserved")));

    // Confirm on the second, with one participant down: it keeps retrying its PUT.
    down.stop();
    let confirm = decide(&http, &second.base, &id, "confirm").await;
    assert_eq!(confirm.status(), 202);
    wait_for(&http, &third.base, &id, |_, b| {
        b["participants"][1]["attempts"].as_u64() >= Some(1)
    })
    .await;
    assert_eq!(up.paths("PUT"), ["/holds/1"]);

    // Kill the second mid-confirmation; bring the participant back.
    second.kill_9();
    down.restart().await;

    // Another instance takes over once the lease lapses, and finishes. A client holding a
    // repeated confirm on the third (`Prefer: wait`) is answered when it is done, whichever
    // instance finished it.
    let held = http
        .post(format!("{}/reservations/{id}/confirm", third.base))
        .header("Prefer", "wait=14")
        .send()
        .await
        .unwrap();
    assert_eq!(held.status(), 303, "{:?}", held.text().await);
    let (status, _) = wait_for(&http, &third.base, &id, |s, _| s == 303).await;
    assert_eq!(status, 303);
    let (status, _) = wait_for(&http, &first.base, &id, |s, _| s == 303).await;
    assert_eq!(status, 303, "every instance tells the same truth");
    assert!(down.paths("PUT").iter().all(|p| p == "/holds/1"));
    assert!(!down.paths("PUT").is_empty());
    assert_eq!(up.count("DELETE") + down.count("DELETE"), 0);
    no_link_got_both(&[&up, &down]);
}

#[tokio::test]
#[ignore = "needs TCC_TEST_POSTGRES"]
async fn pending_reservations_of_a_killed_instance_are_cancelled_at_their_deadlines_by_survivors() {
    let (_dir, [doomed, survivor]) = cluster(["doomed", "survivor"]).await;
    let http = client();
    let p = Participant::start().await;
    let timeout = Duration::from_secs(4);
    let mut ids = Vec::new();
    for n in 1..=5 {
        let body = json!({"timeout_ms": timeout.as_millis(), "participants": [p.link(n)]});
        ids.push(create(&http, &doomed.base, &body).await);
    }
    let deadline = Instant::now() + timeout;
    doomed.kill_9();

    for id in &ids {
        let (status, body) = wait_for(&http, &survivor.base, id, |s, _| s == 410).await;
        assert_eq!(status, 410, "{body}");
    }
    p.wait_until("a DELETE for every link", |p| p.count("DELETE") >= 5)
        .await;
    assert_eq!(p.count("PUT"), 0);
    no_link_got_both(&[&p]);
    // A deadline that fell while its owner was dead fires within the lease period (plus
    // one heartbeat tick and the call itself; the slack is for a loaded machine).
    let last = p.times("DELETE").into_iter().max().unwrap();
    let late = last.saturating_duration_since(deadline);
    assert!(
        late <= LEASE + Duration::from_secs(3),
        "the last DELETE came {late:?} after the deadline"
    );
}

#[tokio::test]
#[ignore = "needs TCC_TEST_POSTGRES"]
async fn confirm_and_cancel_racing_on_two_instances_resolve_to_exactly_one_decision() {
    const RACES: u32 = 1000;
    let (_dir, [left, right]) = cluster(["left", "right"]).await;
    let http = client();
    let p = Participant::start().await;
    let expires = in_secs(600);

    let outcomes: Vec<(u32, u16, u16)> = futures_util::stream::iter(1..=RACES)
        .map(|n| {
            let (http, left, right, p, expires) = (&http, &left.base, &right.base, &p, &expires);
            async move {
                let body = json!({"participants": [p.link_expiring(n, expires)]});
                let id = create(http, if n % 2 == 0 { left } else { right }, &body).await;
                // Alternate which instance gets which verb.
                let (confirm_on, cancel_on) = if n % 3 == 0 {
                    (right, left)
                } else {
                    (left, right)
                };
                let (confirm, cancel) = tokio::join!(
                    decide(http, confirm_on, &id, "confirm"),
                    decide(http, cancel_on, &id, "cancel")
                );
                (n, confirm.status().as_u16(), cancel.status().as_u16())
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;

    let start = Instant::now();
    while (p.count("PUT") + p.count("DELETE")) < RACES as usize {
        assert!(
            start.elapsed() < PATIENCE * 4,
            "only {} PUTs and {} DELETEs for {RACES} races",
            p.count("PUT"),
            p.count("DELETE")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let put: BTreeSet<_> = p.paths("PUT").into_iter().collect();
    let deleted: BTreeSet<_> = p.paths("DELETE").into_iter().collect();
    for (n, confirm, cancel) in outcomes {
        let path = format!("/holds/{n}");
        let confirmed = confirm == 202;
        let cancelled = cancel == 202;
        assert!(
            confirmed != cancelled,
            "race {n}: confirm answered {confirm} and cancel {cancel}: exactly one must win"
        );
        assert_eq!(
            put.contains(&path),
            confirmed,
            "race {n}: PUT iff the confirm won"
        );
        assert_eq!(
            deleted.contains(&path),
            cancelled,
            "race {n}: DELETE iff the cancel won"
        );
    }
    no_link_got_both(&[&p]);
}

/// Runs the binary until it exits (it is expected to refuse to start); returns the one line
/// it wrote to stderr.
pub(super) fn refused_start(args: &[&str]) -> String {
    let output = command_without_log()
        .args(args)
        .stdout(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!output.status.success(), "it started: {args:?}");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(stderr.trim().lines().count(), 1, "one sentence: {stderr}");
    stderr
}

#[tokio::test]
#[ignore = "needs TCC_TEST_POSTGRES"]
async fn a_database_reached_with_sslmode_require_is_verified_tls() {
    let database = tcc_coordinator::required_scratch_database().await;
    let ca = std::env::var("TCC_TEST_POSTGRES_CA")
        .expect("TCC_TEST_POSTGRES_CA names the CA of the test cluster (.ci/postgres.sh sets it)");
    let role = std::env::var("TCC_TEST_POSTGRES_TLS_ROLE")
        .expect("TCC_TEST_POSTGRES_TLS_ROLE names a TLS-only role (.ci/postgres.sh sets it)");
    // The role may connect over TLS only: a plain connection is refused by the server.
    let mut url = url::Url::parse(&database).unwrap();
    url.set_username(&role).unwrap();
    let plain = url.to_string();
    let stderr = refused_start(&["--store", &plain]);
    assert!(stderr.contains("cannot connect to PostgreSQL"), "{stderr}");

    url.query_pairs_mut().append_pair("sslmode", "require");
    let tls = url.to_string();
    // The certificate is verified: without the CA that signed it, no connection.
    let stderr = refused_start(&["--store", &tls]);
    assert!(stderr.contains("cannot connect to PostgreSQL"), "{stderr}");
    assert!(stderr.to_lowercase().contains("certificate"), "{stderr}");

    // With it, the coordinator runs over TLS.
    let dir = tempfile::tempdir().unwrap();
    let mut command = command_without_log();
    command.args(["--store", &tls, "--store-ca", &ca]);
    let coordinator = Binary::spawn(command, &dir.path().join("tls.log"));
    let http = client();
    let p = Participant::start().await;
    let id = create(
        &http,
        &coordinator.base,
        &json!({"participants": [p.link(1)]}),
    )
    .await;
    let (status, _) = wait_for(&http, &coordinator.base, &id, |_, _| true).await;
    assert_eq!(status, 200);
}

#[tokio::test]
#[ignore = "needs TCC_TEST_POSTGRES"]
async fn a_confirm_repeated_on_another_instance_leaves_the_work_to_its_owner() {
    let database = tcc_coordinator::required_scratch_database().await;
    let dir = tempfile::tempdir().unwrap();
    // A call timeout longer than any test: the owner's PUT stays in flight until released.
    let slow_calls = [("TCC_PARTICIPANT_TIMEOUT", "60s")];
    let owner = instance_with(&database, dir.path(), "owner", &slow_calls);
    let other = instance_with(&database, dir.path(), "other", &slow_calls);
    let http = client();
    let p = Participant::start().await;
    p.script("confirm", [super::Reply::UntilReleased]);
    let id = create(&http, &owner.base, &json!({"participants": [p.link(1)]})).await;
    let confirmed = decide(&http, &owner.base, &id, "confirm").await;
    assert_eq!(confirmed.status(), 202);
    p.wait_until("the PUT arrived", |p| p.count("PUT") >= 1)
        .await;

    // The client retries on the other instance while the owner's PUT is still in flight.
    let repeated = decide(&http, &other.base, &id, "confirm").await;
    assert_eq!(repeated.status(), 202);
    p.release();
    let (status, _) = wait_for(&http, &other.base, &id, |s, _| s == 303).await;
    assert_eq!(status, 303);
    assert_eq!(
        p.paths("PUT"),
        ["/holds/1"],
        "only the owner calls the participant: {:?}",
        p.summary()
    );
}

#[tokio::test]
#[ignore = "needs TCC_TEST_POSTGRES"]
async fn every_acknowledged_reservation_survives_kill_9_of_its_instance() {
    let (_dir, [doomed, survivor]) = cluster(["doomed", "survivor"]).await;
    let http = client();
    let p = Participant::start().await;

    // 40 concurrent creates, each acknowledged, then SIGKILL at once.
    let creates = (0..40).map(|n| {
        let (http, base, body) = (&http, &doomed.base, json!({"participants": [p.link(n)]}));
        async move { create(http, base, &body).await }
    });
    let ids = futures_util::future::join_all(creates).await;
    doomed.kill_9();

    for id in &ids {
        let read = http
            .get(format!("{}/reservations/{id}", survivor.base))
            .send()
            .await
            .unwrap();
        assert_eq!(
            read.status(),
            200,
            "reservation {id} was acknowledged but lost"
        );
    }
}

/// The instance that created a reservation keeps its own copy as a first guess for the
/// decision (so deciding reads nothing). When another instance decided meanwhile, that copy
/// is stale: neither a write from it (conditional on the revision) nor an answer that
/// changes nothing (a repeated join) may rest on it.
#[tokio::test]
#[ignore = "needs TCC_TEST_POSTGRES"]
async fn the_creators_copy_never_answers_for_a_decision_made_on_another_instance() {
    let (_dir, [creator, other]) = cluster(["creator", "other"]).await;
    let http = client();
    let p = Participant::start().await;
    let (first, second) = (p.link(1), p.link(2));
    let cancelled = create(&http, &creator.base, &json!({"participants": [first]})).await;
    let confirmed = create(&http, &creator.base, &json!({"participants": [second]})).await;
    assert_eq!(
        decide(&http, &other.base, &cancelled, "cancel")
            .await
            .status(),
        202
    );
    assert_eq!(
        decide(&http, &other.base, &confirmed, "confirm")
            .await
            .status(),
        202
    );

    // A confirm from the stale copy would be a write: it must find the cancel.
    let late_confirm = decide(&http, &creator.base, &cancelled, "confirm").await;
    assert!(
        [409, 410].contains(&late_confirm.status().as_u16()),
        "a confirm after another instance's cancel answered {}",
        late_confirm.status()
    );
    // A repeated join changes nothing on the stale copy: it must still see the confirm.
    let rejoined = http
        .post(format!(
            "{}/reservations/{confirmed}/participants",
            creator.base
        ))
        .json(&second)
        .send()
        .await
        .unwrap();
    assert_eq!(
        rejoined.status(),
        409,
        "a join after another instance's confirm"
    );

    wait_for(&http, &other.base, &confirmed, |s, _| s == 303).await;
    wait_for(&http, &other.base, &cancelled, |s, _| s == 410).await;
    assert_eq!(p.paths("PUT"), ["/holds/2"], "{:?}", p.summary());
    assert_eq!(p.paths("DELETE"), ["/holds/1"], "{:?}", p.summary());
}

/// The stuck view and "retry now on a host" are the cluster's, not one instance's: asked of
/// another instance than the one calling, it lists the stuck reservation and retries it
/// (taking it over), and it is confirmed.
#[tokio::test]
#[ignore = "needs TCC_TEST_POSTGRES"]
async fn the_stuck_view_and_a_host_wide_retry_reach_every_instances_reservations() {
    let database = tcc_coordinator::required_scratch_database().await;
    let dir = tempfile::tempdir().unwrap();
    let fast = [("TCC_STUCK_AFTER", "100ms")];
    let caller = instance_with(&database, dir.path(), "caller", &fast);
    let asked = instance_with(&database, dir.path(), "asked", &fast);
    let http = client();
    let p = Participant::start().await;
    p.script("confirm", [super::Reply::RetryAfter(503, 3600)]);
    let id = create(&http, &caller.base, &json!({"participants": [p.link(1)]})).await;
    decide(&http, &caller.base, &id, "confirm").await;
    wait_for(&http, &caller.base, &id, |_, body| {
        !body["participants"][0]["next_attempt_at"].is_null()
    })
    .await;

    // Listed by the instance that is not calling it.
    eventually("listed as stuck by the other instance", || async {
        let page: serde_json::Value = http
            .get(format!("{}/reservations?stuck=true", asked.base))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        let items = page["items"].as_array()?;
        items.iter().any(|r| r["id"] == id.as_str()).then_some(())
    })
    .await;
    let host = p.base.trim_start_matches("http://");
    let retried: serde_json::Value = http
        .post(format!(
            "{}/participants/retry?participant_host={host}",
            asked.base
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        retried["retried"][0]["reservation_id"],
        id.as_str(),
        "{retried}"
    );
    let (status, _) = wait_for(&http, &asked.base, &id, |s, _| s == 303).await;
    assert_eq!(status, 303);
    assert_eq!(p.count("PUT"), 2, "{:?}", p.summary());
}
