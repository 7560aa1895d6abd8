//! Crash tests: the real binary, killed with SIGKILL and restarted on the same data
//! directory. Participants are real servers in this test process, so they outlive the
//! coordinator and record everything it sent before and after the crash.

#[path = "../api/helpers.rs"]
mod helpers;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

mod choreography;
mod cluster;
mod database;
mod failover;
mod faultfs;
mod patroni;
mod storage;
mod systemd;

use helpers::{client, create, decide, wait_for, Behaviour, Participant, Reply};
use serde_json::json;

/// The real coordinator binary, running.
struct Binary {
    child: Child,
    base: String,
}

impl Binary {
    /// Starts the binary on a free port with its log in `data_dir`; returns once it serves.
    /// Its stderr goes to `{data_dir}.log`.
    fn start(data_dir: &Path) -> Self {
        Self::start_with(data_dir, &[], &[])
    }

    /// [`Binary::start`] with more flags and environment variables.
    fn start_with(data_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut command = command(data_dir);
        command.args(args).envs(env.iter().copied());
        Self::spawn(command, &data_dir.with_extension("log"))
    }

    /// Runs `command`, appending its stderr to `log`; returns once it serves.
    pub(crate) fn spawn(command: Command, log: &Path) -> Self {
        let binary = Self::launch(command, log);
        wait_ready_blocking(&binary.base);
        binary
    }

    /// [`Binary::spawn`], returning once it listens, ready or not.
    fn launch(mut command: Command, log: &Path) -> Self {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let mut child = command.stdout(Stdio::piped()).stderr(log).spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let base = loop {
            let line = lines
                .next()
                .expect("the coordinator printed its address")
                .unwrap();
            if let Some(url) = line.strip_prefix("tcc-coordinator listening on ") {
                break url.trim().to_owned();
            }
        };
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Self { child, base }
    }

    /// SIGKILL: no shutdown code runs.
    fn kill_9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

/// Waits until `GET /health/ready` answers 200: recovery has finished and writes are taken.
fn wait_ready_blocking(base: &str) {
    use std::io::{Read, Write};
    let addr = base.trim_start_matches("http://");
    let start = std::time::Instant::now();
    loop {
        if let Ok(mut stream) = std::net::TcpStream::connect(addr) {
            let _ = stream.write_all(b"GET /health/ready HTTP/1.0\r\nHost: x\r\n\r\n");
            let mut answer = String::new();
            let _ = stream.read_to_string(&mut answer);
            if answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200") {
                return;
            }
        }
        assert!(
            start.elapsed() < helpers::PATIENCE,
            "the coordinator never got ready"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Scripted answers that hold each call for `secs` (longer than the coordinator's call
/// timeout): whatever the machine's speed, a kill lands while a call is in flight.
fn held(secs: u64) -> Vec<Reply> {
    vec![Reply::Slow(Duration::from_secs(secs)); 50]
}

/// The coordinator's command line as the tests run it, on a free port.
fn command(data_dir: &Path) -> Command {
    let mut command = command_without_log();
    command.arg("--data-dir").arg(data_dir);
    command
}

/// [`command`] without saying where the log is.
fn command_without_log() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tcc-coordinator"));
    // The call timeout as a variable, so that a test can set a longer one.
    command
        .args(["--listen", "127.0.0.1:0", "--max-retry-interval", "500ms"])
        .env("TCC_PARTICIPANT_TIMEOUT", "2s");
    command
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fresh data directory (kept while the returned guard lives), the binary started on it,
/// and a client.
fn fresh() -> (
    tempfile::TempDir,
    std::path::PathBuf,
    Binary,
    reqwest::Client,
) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let coordinator = Binary::start(&data);
    (dir, data, coordinator, client())
}

async fn wait_ready(base: &str) {
    let http = client();
    let start = std::time::Instant::now();
    loop {
        if let Ok(r) = http.get(format!("{base}/health/ready")).send().await {
            if r.status() == 200 {
                return;
            }
        }
        assert!(start.elapsed() < helpers::PATIENCE, "never ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn every_acknowledged_reservation_survives_kill_9() {
    // Arrange
    let (_dir, data, coordinator, http) = fresh();
    let p = Participant::start().await;

    // Act: 40 concurrent creates, each acknowledged, then SIGKILL at once.
    let creates = (0..40).map(|i| {
        let (http, base, body) = (
            http.clone(),
            coordinator.base.clone(),
            json!({"participants": [p.link(i)]}),
        );
        async move { create(&http, &base, &body).await }
    });
    let ids = futures_util::future::join_all(creates).await;
    coordinator.kill_9();

    // Assert
    let restarted = Binary::start(&data);
    for id in &ids {
        let response = http
            .get(format!("{}/reservations/{id}", restarted.base))
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            200,
            "reservation {id} was acknowledged but lost"
        );
    }
}

#[tokio::test]
async fn a_restart_cancels_deadlines_that_passed_while_down_and_keeps_later_ones() {
    // Arrange: one reservation whose deadline passes while the coordinator is down, one
    // whose deadline is far away.
    let (_dir, data, coordinator, http) = fresh();
    let p = Participant::start().await;
    let short = create(
        &http,
        &coordinator.base,
        &json!({"timeout_ms": 1500, "participants": [p.link(1)]}),
    )
    .await;
    let long = create(
        &http,
        &coordinator.base,
        &json!({"timeout_ms": 60_000, "participants": [p.link(2)]}),
    )
    .await;
    let (_, read) = wait_for(&http, &coordinator.base, &short, |_, _| true).await;
    coordinator.kill_9();
    helpers::wait_past(helpers::expires_at(&read)).await;
    assert!(
        p.calls().is_empty(),
        "nothing was called while down: {:?}",
        p.summary()
    );

    // Act
    let restarted = Binary::start(&data);

    // Assert: the passed deadline fires at once, the later one does not.
    let (_, gone) = wait_for(&http, &restarted.base, &short, |s, _| s == 410).await;
    assert_eq!(gone["reason"], "expired");
    p.wait_until("DELETE of the expired link", |p| {
        p.paths("DELETE") == ["/holds/1"]
    })
    .await;
    wait_ready(&restarted.base).await;
    let still = http
        .get(format!("{}/reservations/{long}", restarted.base))
        .send()
        .await
        .unwrap();
    assert_eq!(still.status(), 200);
    let still: serde_json::Value = still.json().await.unwrap();
    assert_eq!(still["state"], "reserved");

    let confirm = http
        .post(format!("{}/reservations/{long}/confirm", restarted.base))
        .send()
        .await
        .unwrap();
    assert!([202, 303].contains(&confirm.status().as_u16()));
    wait_for(&http, &restarted.base, &long, |s, _| s == 303).await;
    assert_eq!(p.paths("PUT"), ["/holds/2"]);
    assert_eq!(
        p.paths("DELETE"),
        ["/holds/1"],
        "no link got both PUT and DELETE"
    );
}

#[tokio::test]
async fn a_logged_confirm_decision_completes_after_kill_9() {
    // Arrange: a participant that holds its confirm answers until told otherwise, so the
    // crash lands while a PUT is in flight.
    let (_dir, data, coordinator, http) = fresh();
    let slow = Participant::start().await;
    slow.script("confirm", held(60));
    let id = create(
        &http,
        &coordinator.base,
        &json!({"participants": [slow.link(1)]}),
    )
    .await;
    let confirm = decide(&http, &coordinator.base, &id, "confirm").await;
    assert_eq!(confirm.status(), 202);
    slow.wait_until("the first PUT", |p| p.count("PUT") == 1)
        .await;

    // Act
    coordinator.kill_9();
    slow.clear_script("confirm");
    let restarted = Binary::start(&data);

    // Assert: the decision stands; the participant is confirmed, never cancelled.
    wait_for(&http, &restarted.base, &id, |s, _| s == 303).await;
    assert!(slow.count("PUT") >= 1);
    assert_eq!(slow.count("DELETE"), 0);
}

#[tokio::test]
async fn after_kill_9_the_resumed_confirm_phase_hangs_under_the_decision_made_before() {
    // Arrange: spans exported every 100 ms; a participant that holds its confirm, so the
    // crash lands mid-phase, after the decision's span has reached the collector.
    let collector = helpers::Collector::start().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let args = ["--otlp-endpoint", collector.base.as_str()];
    let env = [("OTEL_BSP_SCHEDULE_DELAY", "100")];
    let coordinator = Binary::start_with(&data, &args, &env);
    let http = client();
    let slow = Participant::start().await;
    slow.script("confirm", held(60));
    let id = create(
        &http,
        &coordinator.base,
        &json!({"participants": [slow.link(1)]}),
    )
    .await;
    let confirm = decide(&http, &coordinator.base, &id, "confirm").await;
    assert_eq!(confirm.status(), 202);
    slow.wait_until("the first PUT", |p| p.count("PUT") == 1)
        .await;
    let decision = helpers::eventually("the decision's span reaches the collector", || {
        let spans = collector.spans();
        async move { spans.into_iter().find(|s| s.name == "decision") }
    })
    .await;

    // Act
    coordinator.kill_9();
    slow.clear_script("confirm");
    let restarted = Binary::start_with(&data, &args, &env);
    wait_for(&http, &restarted.base, &id, |s, _| s == 303).await;

    // Assert: the restarted coordinator's confirm phase, and its call, hang under the
    // decision the killed one made.
    let (phase, call) = helpers::eventually("the resumed phase's spans arrive", || {
        let spans = collector.spans();
        async move {
            let call = spans.iter().find(|s| {
                s.name == "participant confirm"
                    && s.attribute("tcc.outcome").is_some_and(|o| o.contains("ok"))
            })?;
            let phase = spans.iter().find(|s| s.id == call.parent)?;
            Some((phase.clone(), call.clone()))
        }
    })
    .await;
    assert_eq!(phase.name, "confirm phase");
    assert_eq!(phase.parent, decision.id);
    assert_eq!(
        (&phase.trace, &call.trace),
        (&decision.trace, &decision.trace)
    );
    drop(restarted);
}

#[test]
fn a_bad_flag_or_an_unusable_data_directory_exits_non_zero_with_one_sentence() {
    let bin = env!("CARGO_BIN_EXE_tcc-coordinator");
    let out = Command::new(bin)
        .args(["--default-timeout", "2h"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.trim(),
        "tcc-coordinator: --default-timeout (2h) is longer than --max-timeout (1h)"
    );

    let out = Command::new(bin)
        .args(["--listen", "nonsense"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("--listen"), "{stderr}");

    let file = tempfile::NamedTempFile::new().unwrap();
    let out = Command::new(bin)
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(file.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot open the data directory"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}

#[tokio::test]
async fn kill_9_after_the_confirm_decision_and_before_any_put_lands() {
    // Arrange: the participant is down, so the logged decision reaches nobody.
    let (_dir, data, coordinator, http) = fresh();
    let p = Participant::start().await;
    let id = create(
        &http,
        &coordinator.base,
        &json!({"participants": [p.link(1)]}),
    )
    .await;
    p.stop();
    let confirm = decide(&http, &coordinator.base, &id, "confirm").await;
    assert_eq!(confirm.status(), 202);
    wait_for(&http, &coordinator.base, &id, |_, b| {
        b["participants"][0]["attempts"].as_u64() >= Some(1)
    })
    .await;

    // Act
    coordinator.kill_9();
    p.restart().await;
    let restarted = Binary::start(&data);

    // Assert
    wait_for(&http, &restarted.base, &id, |s, _| s == 303).await;
    assert_eq!(p.paths("PUT"), ["/holds/1"]);
    assert_eq!(p.count("DELETE"), 0);
}

/// A reservation over `up` (answers at once) and `down` (unreachable), decided with `verb`
/// (`confirm` or `cancel`) until `up` reached `up_state` and `down` was tried; then the
/// coordinator is killed, `down` comes back, and the coordinator restarts.
async fn decided_then_killed_with_one_participant_down(
    verb: &str,
    up_state: &str,
) -> (
    tempfile::TempDir,
    Binary,
    reqwest::Client,
    Participant,
    Participant,
    String,
) {
    let (dir, data, coordinator, http) = fresh();
    let (up, down) = (Participant::start().await, Participant::start().await);
    let id = create(
        &http,
        &coordinator.base,
        &json!({"participants": [up.link(1), down.link(1)]}),
    )
    .await;
    down.stop();
    http.post(format!("{}/reservations/{id}/{verb}", coordinator.base))
        .send()
        .await
        .unwrap();
    wait_for(&http, &coordinator.base, &id, |_, b| {
        b["participants"][0]["state"] == up_state
            && b["participants"][1]["attempts"].as_u64() >= Some(1)
    })
    .await;
    coordinator.kill_9();
    down.restart().await;
    let restarted = Binary::start(&data);
    (dir, restarted, http, up, down, id)
}

#[tokio::test]
async fn kill_9_while_some_puts_landed_and_others_not() {
    let (_dir, restarted, http, up, down, id) =
        decided_then_killed_with_one_participant_down("confirm", "confirmed").await;

    // The logged confirmation is not repeated; the unknown one is.
    wait_for(&http, &restarted.base, &id, |s, _| s == 303).await;
    assert_eq!(
        up.paths("PUT"),
        ["/holds/1"],
        "a logged outcome is not called again"
    );
    assert_eq!(down.paths("PUT"), ["/holds/1"]);
    assert_eq!(up.count("DELETE") + down.count("DELETE"), 0);
}

#[tokio::test]
async fn kill_9_during_a_cancel() {
    let (_dir, restarted, http, up, down, id) =
        decided_then_killed_with_one_participant_down("cancel", "cancelled").await;

    let (_, body) = wait_for(&http, &restarted.base, &id, |s, _| s == 410).await;
    assert_eq!(body["reason"], "client");
    assert_eq!(up.paths("DELETE"), ["/holds/1"]);
    assert_eq!(down.paths("DELETE"), ["/holds/1"]);
    assert_eq!(up.count("PUT") + down.count("PUT"), 0);
}

#[tokio::test]
async fn kill_9_during_a_coordinator_driven_try() {
    // Arrange: a slow try is in flight when the coordinator dies; the participant holds
    // stock the coordinator never heard about, and the deadline passes while it is down.
    let (_dir, data, coordinator, http) = fresh();
    let p = Participant::start().await;
    p.script("try", held(60));
    let id = create(
        &http,
        &coordinator.base,
        &json!({"timeout_ms": 1500, "participants": [p.try_("stock")]}),
    )
    .await;
    let (_, read) = wait_for(&http, &coordinator.base, &id, |_, _| true).await;
    p.wait_until("the try", |p| p.count("POST") >= 1).await;

    // Act
    coordinator.kill_9();
    p.clear_script("try");
    helpers::wait_past(helpers::expires_at(&read)).await;
    let restarted = Binary::start(&data);

    // Assert: the try is repeated with the same key, the same link comes back, and it is
    // cancelled.
    let (_, body) = wait_for(&http, &restarted.base, &id, |s, _| s == 410).await;
    assert_eq!(body["reason"], "expired");
    let keys: Vec<_> = p
        .calls()
        .iter()
        .filter(|c| c.method == "POST")
        .map(|c| c.headers["idempotency-key"].to_str().unwrap().to_owned())
        .collect();
    assert!(keys.len() >= 2, "{keys:?}");
    assert!(keys.iter().all(|k| *k == format!("{id}/0")), "{keys:?}");
    assert_eq!(p.paths("DELETE"), ["/holds/1"]);
    assert_eq!(p.count("PUT"), 0);
}

#[tokio::test]
async fn an_unreadable_record_stops_the_coordinator_naming_it_unless_told_to_skip() {
    // Arrange: one good reservation, then a record from a future version beside it.
    let (_dir, data, coordinator, http) = fresh();
    let p = Participant::start().await;
    let good = create(
        &http,
        &coordinator.base,
        &json!({"participants": [p.link(1)]}),
    )
    .await;
    coordinator.kill_9();
    let bad = uuid::Uuid::now_v7();
    {
        let db = sled::open(&data).unwrap();
        let tree = db.open_tree("reservations").unwrap();
        tree.insert(bad.as_bytes(), &b"\x09{\"from\":\"the future\"}"[..])
            .unwrap();
        db.flush().unwrap();
    }

    // Act: start as usual.
    let mut refusing = command(&data)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(status) = refusing.try_wait().unwrap() {
            break status;
        }
        assert!(
            start.elapsed() < helpers::PATIENCE,
            "the coordinator kept running"
        );
        std::thread::sleep(Duration::from_millis(50));
    };

    // Assert: it stopped, named the record and the way out, and called nobody.
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut refusing.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success());
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.starts_with("tcc-coordinator: "), "{stderr}");
    assert!(last.contains(&bad.to_string()), "{stderr}");
    assert!(last.contains("unknown record version 9"), "{stderr}");
    assert!(last.contains("--recover-skip-unreadable"), "{stderr}");
    assert_eq!(p.calls().len(), 0);

    // With the flag it resumes the rest and reports what it skipped.
    let coordinator = Binary::start_with(&data, &["--recover-skip-unreadable"], &[]);
    wait_ready(&coordinator.base).await;
    let (status, _) = wait_for(&http, &coordinator.base, &good, |s, _| s == 200).await;
    assert_eq!(status, 200);
    let log = std::fs::read_to_string(data.with_extension("log")).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("unreadable record") && l.contains(&bad.to_string())),
        "{log}"
    );
}

#[tokio::test]
async fn participant_credentials_stay_out_of_logs_and_answers_and_the_log_is_private() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let coordinator =
        Binary::start_with(&data, &[], &[("RUST_LOG", "debug,tcc_coordinator=trace")]);
    let http = client();
    let p = Participant::start_with(Behaviour {
        confirm_reply: Reply::Status(503),
        ..Behaviour::default()
    })
    .await;
    let secret = "Bearer do-not-print-me-7f3a";
    let body = json!({"participants": [{"name": "stock", "try": {
        "url": format!("{}/holds", p.base), "body": {}, "headers": {"Authorization": secret}}}]});
    let id = create(&http, &coordinator.base, &body).await;
    wait_for(&http, &coordinator.base, &id, |_, b| {
        b["state"] == "reserved"
    })
    .await;
    decide(&http, &coordinator.base, &id, "confirm").await;
    p.wait_until("two failed confirms", |p| p.count("PUT") >= 2)
        .await;

    let mut answers = String::new();
    for path in [format!("/reservations/{id}"), "/reservations".into()] {
        let text = http
            .get(format!("{}{path}", coordinator.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        answers.push_str(&text);
    }
    coordinator.kill_9();
    let log = std::fs::read_to_string(data.with_extension("log")).unwrap();
    assert!(
        log.contains(&id),
        "the log shows the reservation at trace level"
    );
    assert!(!log.contains("do-not-print-me"), "{log}");
    assert!(!answers.contains("do-not-print-me"), "{answers}");
    assert_eq!(p.calls()[0].headers["authorization"], secret);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&data).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }
}

#[tokio::test]
async fn an_ephemeral_coordinator_keeps_its_temporary_log_private_and_writes_plain_log_lines() {
    // Arrange: its temporary directory goes where TMPDIR says; its log lines go to a file.
    let dir = tempfile::tempdir().unwrap();
    let temp = dir.path().join("tmp");
    std::fs::create_dir(&temp).unwrap();
    let mut command = command_without_log();
    command.arg("--ephemeral").env("TMPDIR", &temp);
    let coordinator = Binary::spawn(command, &dir.path().join("coordinator.log"));
    let p = Participant::start().await;
    create(
        &client(),
        &coordinator.base,
        &json!({"participants": [p.link(1)]}),
    )
    .await;

    // Assert: one private directory, no warning about it, no colour codes in the file.
    let made: Vec<_> = std::fs::read_dir(&temp)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(made.len(), 1, "{made:?}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&made[0]).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "{}", made[0].display());
    }
    let log = std::fs::read_to_string(dir.path().join("coordinator.log")).unwrap();
    assert!(log.contains("ready"), "the log has lines: {log}");
    assert!(!log.contains("open to other users"), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "no ANSI escape codes in a file: {log:?}"
    );
}

#[tokio::test]
async fn a_suite_in_any_language_finds_the_port_and_reads_json_logs() {
    // Arrange: the binary as a non-Rust suite would run it.
    let dir = tempfile::tempdir().unwrap();
    let port_file = dir.path().join("port");
    let log = dir.path().join("stderr.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_tcc-coordinator"))
        .args([
            "--ephemeral",
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ])
        .arg("--port-file")
        .arg(&port_file)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();

    // Act: the first line of output names the URL; the port file holds the same port.
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let base = first
        .strip_prefix("tcc-coordinator listening on ")
        .expect("the first line gives the address")
        .trim()
        .to_owned();
    let port: u16 = std::fs::read_to_string(&port_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(base, format!("http://127.0.0.1:{port}"));
    wait_ready_blocking(&base);
    let p = Participant::start().await;
    let id = create(&client(), &base, &json!({"participants": [p.link(1)]})).await;

    // Assert: every log line is one JSON object, and the creation names the reservation.
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success(), "SIGTERM ends it cleanly");
    let lines = std::fs::read_to_string(&log).unwrap();
    let events: Vec<serde_json::Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(events
        .iter()
        .any(|e| e["message"] == "reservation created" && e["reservation_id"] == id.as_str()));
    assert!(events
        .iter()
        .all(|e| e["level"].is_string() && e["timestamp"].is_string()));
}

#[tokio::test]
async fn sigterm_under_load_loses_nothing_acknowledged() {
    // Arrange: clients creating reservations as fast as they can.
    let (_dir, data, coordinator, http) = fresh();
    let p = Participant::start().await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let created = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let clients: Vec<_> = (0..16)
        .map(|c| {
            let (http, base, stop, link, created) = (
                http.clone(),
                coordinator.base.clone(),
                stop.clone(),
                p.link(c),
                created.clone(),
            );
            tokio::spawn(async move {
                let mut acknowledged = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let sent = http
                        .post(format!("{base}/reservations"))
                        .json(&json!({"participants": [link]}))
                        .send()
                        .await;
                    match sent {
                        Ok(r) if r.status() == 202 => {
                            let body: serde_json::Value = r.json().await.unwrap();
                            acknowledged.push(body["id"].as_str().unwrap().to_owned());
                            created.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        _ => break, // refused or cut off by the shutdown: not acknowledged
                    }
                }
                acknowledged
            })
        })
        .collect();
    // Under load: clients have been acknowledged and keep sending.
    helpers::eventually("50 creates acknowledged", || async {
        (created.load(std::sync::atomic::Ordering::Relaxed) >= 50).then_some(())
    })
    .await;

    // Act: SIGTERM while requests are in flight.
    let mut coordinator = coordinator;
    std::process::Command::new("kill")
        .args(["-TERM", &coordinator.child.id().to_string()])
        .status()
        .unwrap();
    let exit = coordinator.child.wait().unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut acknowledged = Vec::new();
    for c in clients {
        acknowledged.extend(c.await.unwrap());
    }
    assert!(exit.success(), "{exit:?}");
    assert!(
        acknowledged.len() > 10,
        "only {} created",
        acknowledged.len()
    );

    // Assert: after a restart, every acknowledged reservation is there.
    let restarted = Binary::start(&data);
    for id in &acknowledged {
        let (status, _) = wait_for(&http, &restarted.base, id, |_, _| true).await;
        assert_eq!(status, 200, "reservation {id} was acknowledged, then lost");
    }
}

#[tokio::test]
async fn a_pending_completion_callback_is_delivered_after_a_restart() {
    // Arrange: a reservation that ends while its callback's receiver is down.
    let (_dir, data, coordinator, http) = fresh();
    let p = Participant::start().await;
    let receiver = Participant::start().await;
    receiver.stop();
    let id = create(
        &http,
        &coordinator.base,
        &json!({"timeout_ms": 100, "participants": [p.link(1)],
            "callback": format!("{}/callbacks/1", receiver.base)}),
    )
    .await;
    wait_for(&http, &coordinator.base, &id, |s, _| s == 410).await;
    // A delivery failed (the listing shows the callback's attempts; a 410 does not).
    let listing = format!("{}/reservations", coordinator.base);
    helpers::eventually("a failed delivery", || async {
        let listed: serde_json::Value = http.get(&listing).send().await.ok()?.json().await.ok()?;
        (listed["items"][0]["callback"]["attempts"].as_u64() >= Some(1)).then_some(())
    })
    .await;

    // Act: kill -9, bring the receiver back, restart.
    coordinator.kill_9();
    receiver.restart().await;
    let _restarted = Binary::start(&data);

    // Assert: the final representation arrives.
    receiver
        .wait_until("the callback", |r| r.count("POST") >= 1)
        .await;
    let body: serde_json::Value = serde_json::from_slice(&receiver.calls()[0].body).unwrap();
    assert_eq!(body["id"], id.as_str());
    assert_eq!(body["state"], "cancelled");
}
