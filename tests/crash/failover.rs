//! PostgreSQL that fails over: two coordinator processes on a Patroni cluster of two nodes
//! with synchronous replication (`.ci/patroni.sh`), under a steady stream of creates and
//! confirms, through a planned switchover, the leader's node killed, and the leader gone
//! silent (every process of it stopped with SIGSTOP, as behind a partition or on a hung
//! host). Each test measures how long after the new primary took writes each instance served
//! again, and checks that no request hung, nothing acknowledged was lost, no link got both
//! calls, every deadline that fell meanwhile fired, no instance exited, and that once the
//! old primary is back as a replica every write still succeeds (no pooled connection to it).
//!
//! Run when `TCC_TEST_PATRONI` names the cluster's multi-host URL (`.ci/patroni.sh` starts
//! one and sets it): `#[ignore = "needs TCC_TEST_PATRONI"]`. The tests share the cluster and
//! so take turns.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::cluster::{no_link_got_both, refused_start};
use super::helpers::{client, create, eventually, eventually_within, Participant};
use super::patroni::Patroni;
use super::{command_without_log, Binary};

/// The cluster is one for all the tests here.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How long the cluster may take to elect a leader, promote it, or take a node back
/// (Patroni's ttl is 10 s; a rejoin may rewind the old primary).
const CLUSTER_PATIENCE: Duration = Duration::from_secs(90);

/// Longer than any bound README documents for a request that needs the database: a request
/// unanswered after it has hung.
const ANSWER_PATIENCE: Duration = Duration::from_secs(30);

/// The longest a request may take while the database fails over: each database call it
/// makes is bounded by (connect timeout + `--store-timeout`) × 2, 8 s by default, and the
/// slack is for a loaded machine.
const LONGEST_ANSWER: Duration = Duration::from_secs(12);

/// Polls `check` until it finds something, for [`CLUSTER_PATIENCE`].
async fn until<T, Fut>(cluster: &Patroni, what: &str, check: impl FnMut() -> Fut) -> T
where
    Fut: std::future::Future<Output = Option<T>>,
{
    let what = format!(
        "{what} (the Patroni cluster's logs: {}/*/patroni.log)",
        cluster.dir.display()
    );
    eventually_within(CLUSTER_PATIENCE, &what, check).await
}

/// Waits for a running leader and a streaming synchronous standby, the leader taking writes;
/// returns their names.
async fn healthy(cluster: &Patroni) -> (String, String) {
    let found = until(cluster, "a leader and a synchronous standby", || async {
        cluster.leader_and_standby()
    })
    .await;
    wait_writable(cluster, &found.0).await;
    found
}

/// Waits until `node` commits a write of its own (a row in `tcc_failover_probe`), and
/// returns when it first did.
async fn wait_writable(cluster: &Patroni, node: &str) -> Instant {
    let url = format!(
        "postgres://postgres@127.0.0.1:{}/postgres",
        cluster.pg_port(node)
    );
    until(cluster, &format!("{node} takes writes"), || async {
        let attempt = async {
            let (db, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .ok()?;
            tokio::spawn(connection);
            db.batch_execute(
                "CREATE TABLE IF NOT EXISTS tcc_failover_probe (at timestamptz); \
                 INSERT INTO tcc_failover_probe VALUES (now())",
            )
            .await
            .ok()
        };
        tokio::time::timeout(Duration::from_millis(500), attempt)
            .await
            .ok()
            .flatten()
            .map(|()| Instant::now())
    })
    .await
}

/// One request the load sent, and how it was answered.
#[derive(Debug, Clone)]
struct Outcome {
    instance: usize,
    what: &'static str,
    id: Option<String>,
    /// The participant hold it names.
    hold: u32,
    started: Instant,
    took: Duration,
    status: Option<u16>,
    retry_after: bool,
}

/// Creates (and confirms every second one) on each instance, one request at a time per
/// instance, until stopped.
struct Load {
    outcomes: Arc<Mutex<Vec<Outcome>>>,
    running: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(bases: &[String], p: &Arc<Participant>) -> Self {
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        let running = Arc::new(AtomicBool::new(true));
        let holds = Arc::new(AtomicU32::new(1000));
        let http = reqwest::Client::builder()
            .timeout(ANSWER_PATIENCE)
            .build()
            .unwrap();
        let tasks = bases
            .iter()
            .enumerate()
            .map(|(instance, base)| {
                let (base, p, http) = (base.clone(), p.clone(), http.clone());
                let (outcomes, running, holds) = (outcomes.clone(), running.clone(), holds.clone());
                tokio::spawn(async move {
                    while running.load(Ordering::SeqCst) {
                        let hold = holds.fetch_add(1, Ordering::SeqCst);
                        let body = json!({"timeout_ms": 600_000, "participants": [p.link(hold)]});
                        let created = send(
                            instance,
                            "create",
                            hold,
                            http.post(format!("{base}/reservations")).json(&body),
                        )
                        .await;
                        let confirm = created.status == Some(202) && hold % 2 == 0;
                        let id = created.id.clone();
                        outcomes.lock().unwrap().push(created);
                        if let (true, Some(id)) = (confirm, id) {
                            let request = http.post(format!("{base}/reservations/{id}/confirm"));
                            let mut confirmed = send(instance, "confirm", hold, request).await;
                            confirmed.id = Some(id);
                            outcomes.lock().unwrap().push(confirmed);
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                })
            })
            .collect();
        Self {
            outcomes,
            running,
            tasks,
        }
    }

    async fn stop(self) -> Vec<Outcome> {
        self.running.store(false, Ordering::SeqCst);
        for task in self.tasks {
            task.await.unwrap();
        }
        let outcomes = self.outcomes.lock().unwrap().clone();
        outcomes
    }

    fn outcomes(&self) -> Vec<Outcome> {
        self.outcomes.lock().unwrap().clone()
    }
}

async fn send(
    instance: usize,
    what: &'static str,
    hold: u32,
    request: reqwest::RequestBuilder,
) -> Outcome {
    let started = Instant::now();
    let answer = request.send().await;
    let took = started.elapsed();
    let (status, retry_after, id) = match answer {
        Ok(answer) => {
            let status = answer.status().as_u16();
            let retry_after = answer.headers().contains_key("retry-after");
            let body: Value = answer.json().await.unwrap_or(Value::Null);
            (
                Some(status),
                retry_after,
                body["id"].as_str().map(str::to_owned),
            )
        }
        Err(_) => (None, false, None),
    };
    Outcome {
        instance,
        what,
        id,
        hold,
        started,
        took,
        status,
        retry_after,
    }
}

/// What a test does to the leader, given the cluster, the leader and its synchronous
/// standby; it returns once the standby has been asked to take over or the leader has been
/// hit, and the test then waits for the standby to take writes.
#[derive(Clone, Copy, Debug)]
enum Fault {
    Switchover,
    NodeKilled,
    Silent,
}

impl Fault {
    fn strike(self, cluster: &Patroni, leader: &str, standby: &str) {
        match self {
            Fault::Switchover => cluster.switchover(leader, standby).unwrap(),
            Fault::NodeKilled => cluster.signal(leader, "KILL"),
            Fault::Silent => cluster.signal(leader, "STOP"),
        }
    }

    /// Brings the old leader back (as a replica, which Patroni makes of it).
    fn heal(self, cluster: &Patroni, old_leader: &str) {
        match self {
            Fault::Switchover => {}
            Fault::NodeKilled => cluster.start(old_leader),
            Fault::Silent => cluster.signal(old_leader, "CONT"),
        }
    }
}

/// A coordinator on the cluster's multi-host URL, with the defaults a user gets (lease
/// 10 s, `--store-timeout` 2 s, connect timeout 2 s).
fn coordinator(url: &str, dir: &std::path::Path, name: &str) -> Binary {
    let mut command = command_without_log();
    command.args(["--store", url]);
    Binary::spawn(command, &dir.join(format!("{name}.log")))
}

/// GET of a reservation on `base`: its status, with a patience of its own.
async fn status_of(http: &reqwest::Client, base: &str, id: &str) -> Option<u16> {
    let answer = http
        .get(format!("{base}/reservations/{id}"))
        .send()
        .await
        .ok()?;
    Some(answer.status().as_u16())
}

/// Waits until `GET` of `id` on `base` answers one of `wanted`.
async fn settles(http: &reqwest::Client, base: &str, id: &str, wanted: &[u16]) {
    let start = Instant::now();
    loop {
        let status = status_of(http, base, id).await;
        if status.is_some_and(|s| wanted.contains(&s)) {
            return;
        }
        assert!(
            start.elapsed() < CLUSTER_PATIENCE,
            "reservation {id} on {base}: {status:?}, never one of {wanted:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The whole case: two coordinators under load, `fault` on the leader, then the checks.
async fn fails_over(fault: Fault) {
    let _turn = ONE_AT_A_TIME.lock().await;
    let cluster = Patroni::from_env();
    let (leader, standby) = healthy(&cluster).await;
    let database = tcc_coordinator::scratch_database(&cluster.url).await;
    let dir = tempfile::tempdir().unwrap();
    let mut instances = [
        coordinator(&database, dir.path(), "first"),
        coordinator(&database, dir.path(), "second"),
    ];
    let bases: Vec<String> = instances.iter().map(|i| i.base.clone()).collect();
    let http = client();
    let p = Arc::new(Participant::start().await);
    let expiring = Participant::start().await;

    // Reservations whose deadlines fall while the database fails over.
    let mut doomed = Vec::new();
    for (n, base) in (1..=4).zip(bases.iter().cycle()) {
        let body = json!({"timeout_ms": 3000, "participants": [expiring.link(n)]});
        doomed.push(create(&http, base, &body).await);
    }
    let load = Load::start(&bases, &p);
    let warmed = Instant::now();
    while load
        .outcomes()
        .iter()
        .filter(|o| o.status == Some(202))
        .count()
        < 20
    {
        assert!(
            warmed.elapsed() < CLUSTER_PATIENCE,
            "the load never got going"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The fault, and the standby taking writes.
    let struck = Instant::now();
    fault.strike(&cluster, &leader, &standby);
    let writable = wait_writable(&cluster, &standby).await;
    eprintln!(
        "{fault:?}: {standby} took writes {:.1} s after the fault",
        (writable - struck).as_secs_f64()
    );

    // Each instance serves again: a create answered 202 that was sent after the new primary
    // took writes.
    let mut served_again = Vec::new();
    for instance in 0..bases.len() {
        let served = until(
            &cluster,
            &format!("instance {instance} serves again"),
            || async {
                load.outcomes()
                    .into_iter()
                    .find(|o| {
                        o.instance == instance && o.status == Some(202) && o.started >= writable
                    })
                    .map(|o| o.started + o.took)
            },
        )
        .await;
        served_again.push(served - writable);
    }
    eprintln!("{fault:?}: the instances served again {served_again:.2?} after the new primary took writes");

    // The old primary comes back as a replica; the load goes on through it all.
    fault.heal(&cluster, &leader);
    let (new_leader, _) = healthy(&cluster).await;
    assert_eq!(new_leader, standby, "the old primary rejoined as a replica");
    let rejoined = Instant::now();
    until(
        &cluster,
        "20 creates answered after the old primary rejoined",
        || async {
            (load
                .outcomes()
                .iter()
                .filter(|o| o.what == "create" && o.started >= rejoined)
                .count()
                >= 20)
                .then_some(())
        },
    )
    .await;
    let outcomes = load.stop().await;

    // No request hung; each was answered 202 (a create or a confirm under way), 303 (a
    // confirm already done) or 503 with Retry-After.
    let longest = outcomes.iter().map(|o| o.took).max().unwrap();
    eprintln!(
        "{fault:?}: {} requests, {} answered 503, the longest took {longest:.2?}",
        outcomes.len(),
        outcomes.iter().filter(|o| o.status == Some(503)).count()
    );
    for o in &outcomes {
        assert!(
            matches!(o.status, Some(202 | 303)) || (o.status == Some(503) && o.retry_after),
            "{o:?}"
        );
        assert!(o.took <= LONGEST_ANSWER, "a request took too long: {o:?}");
    }
    // Everything written after the old primary rejoined went to the new one.
    for o in outcomes.iter().filter(|o| o.started >= rejoined) {
        assert!(
            o.status != Some(503),
            "a request failed after the old primary rejoined as a replica: {o:?}"
        );
    }

    // Nothing acknowledged is lost: every 202 create is there on both instances; every
    // acknowledged confirm ends confirmed, its link confirmed and never cancelled.
    for o in outcomes
        .iter()
        .filter(|o| o.status == Some(202) && o.what == "create")
    {
        let id = o.id.as_deref().unwrap();
        for base in &bases {
            settles(&http, base, id, &[200, 303]).await;
        }
    }
    let confirmed: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| o.what == "confirm" && matches!(o.status, Some(202 | 303)))
        .collect();
    for o in &confirmed {
        let id = o.id.as_deref().unwrap();
        for base in &bases {
            settles(&http, base, id, &[303]).await;
        }
    }
    let put = p.paths("PUT");
    for o in &confirmed {
        assert!(
            put.contains(&format!("/holds/{}", o.hold)),
            "hold {} was not confirmed",
            o.hold
        );
    }

    // Every deadline that fell meanwhile fired: cancelled, each link cancelled once it was over.
    for id in &doomed {
        settles(&http, &bases[0], id, &[410]).await;
    }
    expiring
        .wait_until("a DELETE for every expired link", |e| {
            e.count("DELETE") >= 4
        })
        .await;
    assert_eq!(expiring.count("PUT"), 0);
    no_link_got_both(&[&p, &expiring]);

    // No instance exited.
    for instance in &mut instances {
        assert!(
            instance.child.try_wait().unwrap().is_none(),
            "an instance exited"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs TCC_TEST_PATRONI"]
async fn coordinators_follow_a_planned_switchover_under_load() {
    fails_over(Fault::Switchover).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs TCC_TEST_PATRONI"]
async fn coordinators_follow_a_failover_after_the_leaders_node_is_killed() {
    fails_over(Fault::NodeKilled).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs TCC_TEST_PATRONI"]
async fn coordinators_follow_a_failover_after_the_leader_goes_silent() {
    fails_over(Fault::Silent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs TCC_TEST_PATRONI"]
async fn a_url_naming_only_standbys_waits_unready_saying_no_primary_was_found_until_one_is_promoted(
) {
    let _turn = ONE_AT_A_TIME.lock().await;
    let cluster = Patroni::from_env();
    let (leader, standby) = healthy(&cluster).await;
    let database = tcc_coordinator::scratch_database(&cluster.url).await;
    // The same database and schema, through the standby alone.
    let only_standby = database.replacen(
        &format!(
            "127.0.0.1:{},127.0.0.1:{}",
            cluster.pg_port(&cluster.nodes[0]),
            cluster.pg_port(&cluster.nodes[1])
        ),
        &format!("127.0.0.1:{}", cluster.pg_port(&standby)),
        1,
    );
    assert_ne!(only_standby, database);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("standby.log");
    let mut command = command_without_log();
    command.args(["--store", &only_standby]);
    let mut coordinator = Binary::launch(command, &log);
    let http = client();

    let ready = || async {
        let answer = http
            .get(format!("{}/health/ready", coordinator.base))
            .send()
            .await
            .ok()?;
        Some(answer.status().as_u16())
    };
    eventually("the log says no primary was found", || async {
        std::fs::read_to_string(&log)
            .ok()
            .filter(|text| text.contains("no primary found"))
    })
    .await;
    assert_eq!(
        ready().await,
        Some(503),
        "not ready while no primary is found"
    );
    let lines = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        lines.matches("no primary found").count(),
        1,
        "one line says so: {lines}"
    );
    assert!(
        coordinator.child.try_wait().unwrap().is_none(),
        "it waits, it does not exit"
    );

    // The standby becomes the primary: the instance serves.
    cluster.switchover(&leader, &standby).unwrap();
    until(&cluster, "the instance gets ready", || async {
        (ready().await == Some(200)).then_some(())
    })
    .await;
    let p = Participant::start().await;
    create(
        &http,
        &coordinator.base,
        &json!({"participants": [p.link(1)]}),
    )
    .await;
    healthy(&cluster).await;
}

#[test]
fn an_unknown_target_session_attrs_stops_the_start_with_one_sentence() {
    let stderr = refused_start(&[
        "--store",
        "postgres://tcc@127.0.0.1:1,127.0.0.1:2/tcc?target_session_attrs=primary-please",
    ]);
    assert!(
        stderr.contains("invalid value for option `target_session_attrs`"),
        "{stderr}"
    );
}
