//! The benchmark: the coordinator against the same work done directly, side by side.
//!
//! ```sh
//! cargo bench --bench tcc -- confirm                 # one scenario
//! cargo bench --bench tcc -- confirm try fanout      # several
//! cargo bench --bench tcc -- all --json bench.json   # every scenario, and a JSON report
//! ```
//!
//! Options: `--rounds N` (pairs of direct and coordinator rounds, default 5), `--seconds S`
//! (length of a round, default 5), `--count N` (reservations for `timeout-storm` and
//! `pending`), `--minutes M` (how long `memory` loads the coordinator, default 10), `--json FILE`, and for `confirm`, `try` and `fanout`: `--store postgres` (the
//! log in the PostgreSQL database `TCC_TEST_POSTGRES` names, a fresh schema per run; see
//! `.ci/postgres.sh`) and `--instances N` (N coordinator processes on that database, requests
//! spread round-robin: each transaction is created on one and confirmed on the next).
//!
//! It starts, on loopback, the real coordinator binary (release build, fresh data directory,
//! durable log) and a participant service with K participants in a separate process (this
//! program again), then drives C transactions in flight from this process. Rounds alternate
//! the direct baseline (tries and confirms sent straight to the participants, no coordinator,
//! no log) and the coordinator, because this machine's speed drifts.

// Counts, rates and milliseconds are converted between integers and floats throughout; the
// values are far from the limits where that loses anything that matters to a report.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_precision_loss,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

#[path = "tcc/relay.rs"]
mod relay;

// ---- options -----------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Options {
    scenarios: Vec<String>,
    rounds: usize,
    seconds: f64,
    count: Option<usize>,
    json: Option<String>,
    /// The coordinators' log: `sled` (each its own data directory) or `postgres`.
    store: String,
    instances: usize,
    /// How long `memory` keeps the coordinator loaded.
    minutes: f64,
}

const SCENARIOS: [&str; 6] = [
    "confirm",
    "try",
    "fanout",
    "timeout-storm",
    "pending",
    "memory",
];

fn options() -> Options {
    let mut o = Options {
        scenarios: Vec::new(),
        rounds: 5,
        seconds: 5.0,
        count: None,
        json: None,
        store: "sled".into(),
        instances: 1,
        minutes: 10.0,
    };
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .unwrap_or_else(|| usage(&format!("{name} needs a value")))
        };
        match arg.as_str() {
            "--rounds" => {
                o.rounds = value("--rounds")
                    .parse()
                    .unwrap_or_else(|_| usage("--rounds takes a number"))
            }
            "--seconds" => {
                o.seconds = value("--seconds")
                    .parse()
                    .unwrap_or_else(|_| usage("--seconds takes a number"))
            }
            "--count" => {
                o.count = Some(
                    value("--count")
                        .parse()
                        .unwrap_or_else(|_| usage("--count takes a number")),
                )
            }
            "--json" => o.json = Some(value("--json")),
            "--minutes" => {
                o.minutes = value("--minutes")
                    .parse()
                    .unwrap_or_else(|_| usage("--minutes takes a number"))
            }
            "--store" => {
                o.store = value("--store");
                if !["sled", "postgres"].contains(&o.store.as_str()) {
                    usage("--store is sled or postgres");
                }
            }
            "--instances" => {
                o.instances = value("--instances")
                    .parse()
                    .ok()
                    .filter(|n| *n >= 1)
                    .unwrap_or_else(|| usage("--instances takes a number, at least 1"))
            }
            "all" => o.scenarios.extend(SCENARIOS.map(String::from)),
            name if SCENARIOS.contains(&name) => o.scenarios.push(name.to_owned()),
            other => usage(&format!("unknown argument `{other}`")),
        }
    }
    if o.scenarios.is_empty() {
        o.scenarios.push("confirm".into());
    }
    if o.instances > 1 && o.store != "postgres" {
        usage("several --instances share a log only with --store postgres");
    }
    if o.store == "postgres" && std::env::var_os("TCC_TEST_POSTGRES").is_none() {
        usage("--store postgres needs TCC_TEST_POSTGRES=postgres://… (bash .ci/postgres.sh starts one)");
    }
    o
}

fn usage(problem: &str) -> ! {
    eprintln!(
        "tcc bench: {problem}\nusage: cargo bench --bench tcc -- [confirm|try|fanout|timeout-storm|pending|memory|all]... \
         [--rounds N] [--seconds S] [--count N] [--minutes M] [--json FILE] [--store sled|postgres] [--instances N]"
    );
    std::process::exit(2)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("participant-server") {
        let k = args.get(2).and_then(|k| k.parse().ok()).unwrap_or(2);
        return participant_server(k);
    }
    if let (Some("relay-server"), Some(kind), Some(dir)) = (
        args.get(1).map(String::as_str),
        args.get(2).map(String::as_str),
        args.get(3),
    ) {
        let durability = match kind {
            "durable" => relay::Durability::File,
            "sled" => relay::Durability::Sled,
            _ => relay::Durability::Memory,
        };
        return relay::serve(durability, std::path::Path::new(dir));
    }
    let options = options();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut reports = Vec::new();
    for scenario in &options.scenarios {
        let report = runtime.block_on(run_scenario(scenario, &options));
        let line: Vec<String> = report
            .as_object()
            .unwrap()
            .iter()
            .filter(|(_, v)| !v.is_array())
            .map(|(k, v)| {
                format!(
                    "{k}={}",
                    v.as_str().map_or_else(|| v.to_string(), str::to_owned)
                )
            })
            .collect();
        println!("{}", line.join(" "));
        reports.push(report);
    }
    if let Some(path) = &options.json {
        std::fs::write(path, serde_json::to_string_pretty(&reports).unwrap()).unwrap();
        println!("wrote {path}");
    }
}

async fn run_scenario(name: &str, o: &Options) -> Value {
    match name {
        "confirm" => throughput(name, 2, 64, Style::Links, o).await,
        "try" => throughput(name, 2, 64, Style::Tries, o).await,
        "fanout" => throughput(name, 8, 64, Style::Links, o).await,
        "timeout-storm" => timeout_storm(o.count.unwrap_or(100_000)).await,
        "pending" => pending(o.count.unwrap_or(1_000_000)).await,
        "memory" => memory(o.minutes).await,
        _ => unreachable!(),
    }
}

// ---- processes ---------------------------------------------------------------------------

/// A child process killed when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        if wrapper().is_some() {
            // A wrapped coordinator writes its profile on a clean exit: SIGTERM, then wait.
            let _ = Command::new("kill")
                .args(["-TERM", &self.0.id().to_string()])
                .status();
            let _ = self.0.wait();
            return;
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Process {
    fn pid(&self) -> u32 {
        self.0.id()
    }
}

/// Reads lines from the child's stdout until `prefix`; returns the rest of that line.
fn read_until(child: &mut Child, prefix: &str) -> String {
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let found = loop {
        let line = lines
            .next()
            .expect("the process printed what it serves")
            .unwrap();
        if let Some(rest) = line.strip_prefix(prefix) {
            break rest.trim().to_owned();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    found
}

fn start_participants(k: usize) -> (Process, Vec<String>) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["participant-server", &k.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let ports = read_until(&mut child, "participants on ");
    let bases = ports
        .split(',')
        .map(|p| format!("http://127.0.0.1:{p}"))
        .collect();
    (Process(child), bases)
}

/// The floor (see `relay`): the relay of `kind` (`memory`, `durable` with its log in a file,
/// `sled` with its log on sled), its log in `dir`.
fn start_relay(kind: &str, dir: &std::path::Path) -> (Process, String) {
    // Under `TCC_BENCH_WRAPPER` too, so that the ledger counts both the same way.
    let mut command = wrapped(std::env::current_exe().unwrap());
    let mut child = command
        .args(["relay-server", kind])
        .arg(dir)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let base = read_until(&mut child, "relay listening on ");
    (Process(child), base)
}

/// Where a coordinator keeps its log.
enum Log<'a> {
    Dir(&'a std::path::Path),
    Postgres(&'a str),
}

/// `TCC_BENCH_WRAPPER`, when set, runs the coordinator under it, for example
/// `valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.out`: instructions counted per
/// transaction, the same from run to run whatever the machine's speed does.
fn wrapper() -> Option<Vec<String>> {
    std::env::var("TCC_BENCH_WRAPPER")
        .ok()
        .map(|w| w.split_whitespace().map(str::to_owned).collect())
        .filter(|w: &Vec<String>| !w.is_empty())
}

/// A command running `binary`, under `TCC_BENCH_WRAPPER` when it is set.
fn wrapped(binary: impl AsRef<std::ffi::OsStr>) -> Command {
    match wrapper() {
        Some(wrapper) => {
            let mut command = Command::new(&wrapper[0]);
            command.args(&wrapper[1..]).arg(binary);
            command
        }
        None => Command::new(binary),
    }
}

fn start_coordinator(log: &Log<'_>) -> (Process, String) {
    let mut command = wrapped(env!("CARGO_BIN_EXE_tcc-coordinator"));
    command.args([
        "--listen",
        "127.0.0.1:0",
        "--max-timeout",
        "2h",
        "--max-wait",
        "60s",
    ]);
    match log {
        Log::Dir(dir) => command.arg("--data-dir").arg(dir),
        Log::Postgres(url) => command.args(["--store", url, "--store-connections", "8"]),
    };
    let mut child = command
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let base = read_until(&mut child, "tcc-coordinator listening on ");
    (Process(child), base)
}

async fn wait_ready(http: &reqwest::Client, base: &str) -> Duration {
    let start = Instant::now();
    loop {
        if let Ok(r) = http.get(format!("{base}/health/ready")).send().await {
            if r.status() == 200 {
                return start.elapsed();
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn client(c: usize) -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .pool_max_idle_per_host(c * 2)
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap()
}

// ---- throughput scenarios ----------------------------------------------------------------

#[derive(Clone, Copy, PartialEq)]
enum Style {
    /// The client tries, then hands the links to the coordinator.
    Links,
    /// The coordinator tries.
    Tries,
}

/// One transaction sent straight to the participants: K tries, then K confirms.
async fn direct(http: &reqwest::Client, participants: &[String]) {
    let tries = participants.iter().map(|p| try_hold(http, p));
    let links = futures_util::future::join_all(tries).await;
    let puts = links.iter().map(|l| async move {
        let r = http.put(l["uri"].as_str().unwrap()).send().await.unwrap();
        assert_eq!(r.status(), 204);
    });
    futures_util::future::join_all(puts).await;
}

async fn try_hold(http: &reqwest::Client, participant: &str) -> Value {
    let r = http
        .post(format!("{participant}/holds"))
        .json(&json!({"sku": "apple", "quantity": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    r.json().await.unwrap()
}

/// One transaction through the coordinator: created, then confirmed with `Prefer: wait`.
/// With several coordinators, created on `coordinators[n]` and confirmed on the next one.
async fn coordinated(
    http: &reqwest::Client,
    coordinators: &[String],
    n: usize,
    participants: &[String],
    style: Style,
) -> Duration {
    let base = &coordinators[n % coordinators.len()];
    let confirm_base = &coordinators[(n + 1) % coordinators.len()];
    let entries: Vec<Value> = match style {
        Style::Links => {
            let tries = participants.iter().map(|p| try_hold(http, p));
            futures_util::future::join_all(tries)
                .await
                .into_iter()
                .map(|link| json!({"link": link}))
                .collect()
        }
        Style::Tries => participants
            .iter()
            .map(|p| json!({"try": {"url": format!("{p}/holds"), "body": {"sku": "apple", "quantity": 1}}}))
            .collect(),
    };
    let start = Instant::now();
    let mut create = http
        .post(format!("{base}/reservations"))
        .json(&json!({"timeout_ms": 60_000, "participants": entries}));
    if style == Style::Tries {
        create = create.header("Prefer", "wait=30");
    }
    let created = create.send().await.unwrap();
    assert!(
        [200, 202].contains(&created.status().as_u16()),
        "create: {}",
        created.status()
    );
    let body: Value = created.json().await.unwrap();
    let id = body["id"].as_str().unwrap();
    let confirmed = http
        .post(format!("{confirm_base}/reservations/{id}/confirm"))
        .header("Prefer", "wait=30")
        .send()
        .await
        .unwrap();
    assert_eq!(confirmed.status(), 303, "confirm of {id}");
    start.elapsed()
}

/// Runs `c` workers repeating `work` for `seconds`; returns transactions per second and
/// each transaction's latency.
async fn round<F, Fut>(c: usize, seconds: f64, work: F) -> (f64, Vec<Duration>)
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Duration> + Send,
{
    let stop = Instant::now() + Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let workers = (0..c).map(|_| {
        let work = work.clone();
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < stop {
                latencies.push(work().await);
            }
            latencies
        })
    });
    let latencies: Vec<Duration> = futures_util::future::join_all(workers)
        .await
        .into_iter()
        .flat_map(Result::unwrap)
        .collect();
    let elapsed = start.elapsed().as_secs_f64();
    let tps = latencies.len() as f64 / elapsed;
    (tps, latencies)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1000.0
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn round2(x: f64) -> Value {
    json!((x * 100.0).round() / 100.0)
}

async fn throughput(name: &str, k: usize, c: usize, style: Style, o: &Options) -> Value {
    let (_participants, bases) = start_participants(k);
    let dir = tempfile::tempdir().unwrap();
    let database = if o.store == "postgres" {
        tcc_coordinator::scratch_database_from_env().await
    } else {
        None
    };
    let (coordinator_processes, coordinators): (Vec<Process>, Vec<String>) = (0..o.instances)
        .map(|i| match &database {
            Some(url) => start_coordinator(&Log::Postgres(url)),
            None => start_coordinator(&Log::Dir(&dir.path().join(format!("data-{i}")))),
        })
        .unzip();
    let http = client(c);
    for base in &coordinators {
        wait_ready(&http, base).await;
    }
    // The floor: the relay on the same crates, without a log, with a durable log in a file,
    // and with its durable log on sled.
    let (_relay, relay) = start_relay("memory", dir.path());
    let (durable_relay_process, durable_relay) = start_relay("durable", dir.path());
    let (sled_relay_process, sled_relay) = start_relay("sled", dir.path());
    let bases = Arc::new(bases);
    let coordinators = Arc::new(coordinators);
    let sequence = Arc::new(AtomicU64::new(0));

    let direct_round = |seconds: f64| {
        let (http, bases) = (http.clone(), bases.clone());
        round(c, seconds, move || {
            let (http, bases) = (http.clone(), bases.clone());
            async move {
                let t = Instant::now();
                direct(&http, &bases).await;
                t.elapsed()
            }
        })
    };
    let coordinated_round = |seconds: f64| {
        let (http, bases, coordinators, sequence) = (
            http.clone(),
            bases.clone(),
            coordinators.clone(),
            sequence.clone(),
        );
        round(c, seconds, move || {
            let (http, bases, coordinators) = (http.clone(), bases.clone(), coordinators.clone());
            let n = sequence.fetch_add(1, Ordering::Relaxed) as usize;
            async move { coordinated(&http, &coordinators, n, &bases, style).await }
        })
    };

    // Transactions each relay was sent (warm-up included), for instructions per transaction.
    let relay_counts: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    let relay_round = |seconds: f64, relay: &str| {
        let (http, bases, relays) = (
            http.clone(),
            bases.clone(),
            Arc::new(vec![relay.to_owned()]),
        );
        let counts = relay_counts.clone();
        let sequence = Arc::new(AtomicU64::new(0));
        let counted = sequence.clone();
        let name = relay.to_owned();
        let round = round(c, seconds, move || {
            let (http, bases, relays) = (http.clone(), bases.clone(), relays.clone());
            let n = sequence.fetch_add(1, Ordering::Relaxed) as usize;
            async move { coordinated(&http, &relays, n, &bases, style).await }
        });
        async move {
            let result = round.await;
            *counts.lock().unwrap().entry(name).or_default() += counted.load(Ordering::Relaxed);
            result
        }
    };

    // Warm up every path (connections, caches) before measuring.
    direct_round(0.5).await;
    relay_round(0.5, &relay).await;
    relay_round(0.5, &durable_relay).await;
    relay_round(0.5, &sled_relay).await;
    coordinated_round(0.5).await;

    let exchanges = 2.0 * k as f64;
    let mut ratios = Vec::new();
    let mut rounds = Vec::new();
    let (mut direct_latency, mut coordinated_latency) = (Vec::new(), Vec::new());
    let (mut direct_tps_all, mut coordinator_tps_all) = (Vec::new(), Vec::new());
    let (mut cpu_per_tx_all, mut relay_cpu_per_tx_all) = (Vec::new(), Vec::new());
    let (mut relay_ratios, mut durable_relay_ratios) = (Vec::new(), Vec::new());
    let (mut vs_relay, mut vs_durable_relay) = (Vec::new(), Vec::new());
    let (mut sled_relay_ratios, mut vs_sled_relay, mut sled_relay_cpu_per_tx_all) =
        (Vec::new(), Vec::new(), Vec::new());
    let coordinator_written = || -> f64 {
        coordinator_processes
            .iter()
            .map(|p| written_bytes(p.pid()))
            .sum()
    };
    let coordinator_cpu = || -> f64 {
        coordinator_processes
            .iter()
            .map(|p| cpu_seconds(p.pid()))
            .sum()
    };
    for i in 1..=o.rounds {
        let (direct_tps, mut dl) = direct_round(o.seconds).await;
        let (relay_tps, _) = relay_round(o.seconds, &relay).await;
        // A relay's throughput, CPU and bytes written per transaction.
        let measured = |process: &Process, base: &str| {
            let pid = process.pid();
            let (cpu_before, written_before) = (cpu_seconds(pid), written_bytes(pid));
            let round = relay_round(o.seconds, base);
            async move {
                let (tps, _) = round.await;
                let txs = (tps * o.seconds).max(1.0);
                let cpu_us = (cpu_seconds(pid) - cpu_before) * 1e6 / txs;
                let disk = (written_bytes(pid) - written_before) / txs;
                (tps, cpu_us, disk)
            }
        };
        let (durable_relay_tps, relay_cpu_per_tx_us, relay_disk_per_tx) =
            measured(&durable_relay_process, &durable_relay).await;
        let (sled_relay_tps, sled_relay_cpu_per_tx_us, sled_relay_disk_per_tx) =
            measured(&sled_relay_process, &sled_relay).await;
        let cpu_before = coordinator_cpu();
        let written_before = coordinator_written();
        let (coordinator_tps, mut cl) = coordinated_round(o.seconds).await;
        // CPU time the coordinators spent per transaction: steadier than throughput on a
        // machine whose speed drifts, and what an optimisation changes.
        let cpu_per_tx_us =
            (coordinator_cpu() - cpu_before) * 1e6 / (coordinator_tps * o.seconds).max(1.0);
        let disk_per_tx =
            (coordinator_written() - written_before) / (coordinator_tps * o.seconds).max(1.0);
        let of_direct = |tps: f64| tps / (direct_tps * exchanges / (exchanges + 2.0));
        let ratio = of_direct(coordinator_tps);
        eprintln!(
            "{name} round {i}: direct {direct_tps:.0} tx/s, relay {relay_tps:.0} ({:.2}), durable relay {durable_relay_tps:.0} ({:.2}), sled relay {sled_relay_tps:.0} ({:.2}), coordinator {coordinator_tps:.0} tx/s, ratio {ratio:.2} (of the durable relay {:.2}, of the sled relay {:.2}), coordinator CPU {cpu_per_tx_us:.0} µs/tx (durable relay {relay_cpu_per_tx_us:.0}, sled relay {sled_relay_cpu_per_tx_us:.0}), written to disk {disk_per_tx:.0} bytes/tx (durable relay {relay_disk_per_tx:.0}, sled relay {sled_relay_disk_per_tx:.0})",
            of_direct(relay_tps),
            of_direct(durable_relay_tps),
            of_direct(sled_relay_tps),
            coordinator_tps / durable_relay_tps,
            coordinator_tps / sled_relay_tps,
        );
        rounds.push(json!({"round": i, "direct_tps": round2(direct_tps), "relay_tps": round2(relay_tps), "durable_relay_tps": round2(durable_relay_tps), "sled_relay_tps": round2(sled_relay_tps), "coordinator_tps": round2(coordinator_tps), "ratio": round2(ratio), "coordinator_cpu_us_per_tx": round2(cpu_per_tx_us), "durable_relay_cpu_us_per_tx": round2(relay_cpu_per_tx_us), "sled_relay_cpu_us_per_tx": round2(sled_relay_cpu_per_tx_us), "disk_bytes_per_tx": round2(disk_per_tx), "durable_relay_disk_bytes_per_tx": round2(relay_disk_per_tx), "sled_relay_disk_bytes_per_tx": round2(sled_relay_disk_per_tx)}));
        sled_relay_ratios.push(of_direct(sled_relay_tps));
        vs_sled_relay.push(coordinator_tps / sled_relay_tps);
        sled_relay_cpu_per_tx_all.push(sled_relay_cpu_per_tx_us);
        relay_ratios.push(of_direct(relay_tps));
        durable_relay_ratios.push(of_direct(durable_relay_tps));
        vs_relay.push(coordinator_tps / relay_tps);
        vs_durable_relay.push(coordinator_tps / durable_relay_tps);
        cpu_per_tx_all.push(cpu_per_tx_us);
        relay_cpu_per_tx_all.push(relay_cpu_per_tx_us);
        ratios.push(ratio);
        direct_tps_all.push(direct_tps);
        coordinator_tps_all.push(coordinator_tps);
        direct_latency.append(&mut dl);
        coordinated_latency.append(&mut cl);
    }
    let sent = |relay: &str| {
        relay_counts
            .lock()
            .unwrap()
            .get(relay)
            .copied()
            .unwrap_or(0)
    };
    let (to_relay, to_durable_relay, to_sled_relay) =
        (sent(&relay), sent(&durable_relay), sent(&sled_relay));
    eprintln!(
        "{name}: {} coordinated transactions started in all (warm-up included); relay {to_relay}, durable relay {to_durable_relay}, sled relay {to_sled_relay}",
        sequence.load(Ordering::Relaxed),
    );
    direct_latency.sort();
    coordinated_latency.sort();
    let (min, max) = ratios
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), r| (a.min(*r), b.max(*r)));
    json!({
        "scenario": name,
        "store": o.store,
        "instances": o.instances,
        "k": k,
        "c": c,
        "rounds": o.rounds,
        "seconds": o.seconds,
        "ratio_median": round2(median(&mut ratios)),
        "ratio_min": round2(min),
        "ratio_max": round2(max),
        "relay_ratio_median": round2(median(&mut relay_ratios)),
        "durable_relay_ratio_median": round2(median(&mut durable_relay_ratios)),
        "coordinator_of_relay_median": round2(median(&mut vs_relay)),
        "coordinator_of_durable_relay_median": round2(median(&mut vs_durable_relay)),
        "sled_relay_ratio_median": round2(median(&mut sled_relay_ratios)),
        "coordinator_of_sled_relay_median": round2(median(&mut vs_sled_relay)),
        "sled_relay_cpu_us_per_tx_median": round2(median(&mut sled_relay_cpu_per_tx_all)),
        "coordinator_tps_median": round2(median(&mut coordinator_tps_all)),
        "coordinator_cpu_us_per_tx_median": round2(median(&mut cpu_per_tx_all)),
        "durable_relay_cpu_us_per_tx_median": round2(median(&mut relay_cpu_per_tx_all)),
        "direct_tps_median": round2(median(&mut direct_tps_all)),
        "p50_ms": round2(percentile(&coordinated_latency, 0.50)),
        "p99_ms": round2(percentile(&coordinated_latency, 0.99)),
        "direct_p50_ms": round2(percentile(&direct_latency, 0.50)),
        "direct_p99_ms": round2(percentile(&direct_latency, 0.99)),
        "per_round": rounds,
    })
}

async fn get_json(http: &reqwest::Client, url: &str) -> Value {
    http.get(url).send().await.unwrap().json().await.unwrap()
}

// ---- timeout storm -----------------------------------------------------------------------

/// Creates `count` reservations with `participants` links each, `c` at a time; `timeout`
/// gives each one's `timeout_ms` from its index. Returns each one's id and deadline.
async fn create_many(
    http: &reqwest::Client,
    base: &str,
    participant: &str,
    count: usize,
    links_each: usize,
    c: usize,
    timeout: impl Fn(usize) -> i64 + Send + Sync + 'static,
) -> Vec<(String, DateTime<Utc>)> {
    let next = Arc::new(AtomicU64::new(0));
    let timeout = Arc::new(timeout);
    let expires = (Utc::now() + chrono::Duration::hours(3)).to_rfc3339();
    let workers = (0..c).map(|_| {
        let (http, base, participant, next, timeout, expires) = (
            http.clone(),
            base.to_owned(),
            participant.to_owned(),
            next.clone(),
            timeout.clone(),
            expires.clone(),
        );
        tokio::spawn(async move {
            let mut made = Vec::new();
            loop {
                let i = usize::try_from(next.fetch_add(1, Ordering::Relaxed)).unwrap();
                if i >= count {
                    return made;
                }
                let links: Vec<Value> = (0..links_each)
                    .map(|j| json!({"link": {"uri": format!("{participant}/holds/{}", i * links_each + j), "expires": expires}}))
                    .collect();
                let r = http
                    .post(format!("{base}/reservations"))
                    .json(&json!({"timeout_ms": timeout(i).max(1), "participants": links}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 202);
                let body: Value = r.json().await.unwrap();
                let deadline = body["expires_at"].as_str().unwrap().parse().unwrap();
                made.push((body["id"].as_str().unwrap().to_owned(), deadline));
            }
        })
    });
    futures_util::future::join_all(workers)
        .await
        .into_iter()
        .flat_map(Result::unwrap)
        .collect()
}

async fn timeout_storm(count: usize) -> Value {
    let (_participants, bases) = start_participants(1);
    let participant = bases[0].clone();
    let dir = tempfile::tempdir().unwrap();
    let (_coordinator, base) = start_coordinator(&Log::Dir(&dir.path().join("data")));
    let http = client(64);
    wait_ready(&http, &base).await;

    // Calibrate the creation rate, so every deadline falls in one second after creation.
    let t = Instant::now();
    let calibration = 2000;
    create_many(&http, &base, &participant, calibration, 0, 64, |_| {
        3_600_000
    })
    .await;
    let rate = calibration as f64 / t.elapsed().as_secs_f64();
    let window =
        Utc::now() + chrono::Duration::milliseconds((count as f64 / rate * 1500.0) as i64 + 3000);
    eprintln!("timeout-storm: creating {count} reservations at about {rate:.0}/s; deadlines from {window}");
    let made = create_many(&http, &base, &participant, count, 1, 64, move |i| {
        let deadline = window + chrono::Duration::milliseconds(i64::try_from(i % 1000).unwrap());
        (deadline - Utc::now()).num_milliseconds()
    })
    .await;
    let last_deadline = made.iter().map(|(_, d)| *d).max().unwrap();
    let late_at_creation = made.iter().filter(|(_, d)| *d < window).count();

    // Wait for every DELETE.
    let deletes = loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let stats = get_json(&http, &format!("{participant}/stats")).await;
        let deletes = stats["deletes"].as_object().unwrap().clone();
        if deletes.len() >= count || Utc::now() > last_deadline + chrono::Duration::seconds(60) {
            break deletes;
        }
    };
    let mut lateness: Vec<Duration> = Vec::new();
    let mut last_delete = 0i64;
    for (i, (_, deadline)) in made.iter().enumerate() {
        if let Some(at) = deletes.get(&i.to_string()).and_then(Value::as_i64) {
            last_delete = last_delete.max(at);
            let late = at - deadline.timestamp_millis();
            lateness.push(Duration::from_millis(u64::try_from(late.max(0)).unwrap()));
        }
    }
    lateness.sort();
    let all_done = (last_delete - last_deadline.timestamp_millis()) as f64 / 1000.0;
    // From the first deadline to the last DELETE: how long the coordinator took to send the
    // whole storm's cancellations, against the same number of DELETEs sent directly (as
    // many in flight as the coordinator allows itself), in the same run.
    let first_deadline = made.iter().map(|(_, d)| *d).min().unwrap();
    let storm_s = (last_delete - first_deadline.timestamp_millis()) as f64 / 1000.0;
    let direct_s = direct_deletes(&participant, count, count).await;
    eprintln!(
        "timeout-storm: cancellations sent in {storm_s:.2} s from the first deadline; the same {count} DELETEs sent directly: {direct_s:.2} s"
    );

    // When each cancel was decided (logged), from a sample of the reservations.
    let sample: Vec<_> = made.iter().step_by(10).map(|(id, _)| id.clone()).collect();
    let mut decided: Vec<Duration> = futures_util::future::join_all(
        sample.chunks(sample.len().div_ceil(64).max(1)).map(|ids| {
            let (http, base) = (http.clone(), base.clone());
            let ids = ids.to_vec();
            async move {
                let mut late = Vec::new();
                for id in ids {
                    let body = get_json(&http, &format!("{base}/reservations/{id}")).await;
                    let at = |k: &str| {
                        body[k]
                            .as_str()
                            .and_then(|t| t.parse::<DateTime<Utc>>().ok())
                    };
                    if let (Some(decided), Some(deadline)) = (at("decided_at"), at("expires_at")) {
                        late.push(Duration::from_millis(
                            u64::try_from((decided - deadline).num_milliseconds().max(0)).unwrap(),
                        ));
                    }
                }
                late
            }
        }),
    )
    .await
    .into_iter()
    .flatten()
    .collect();
    decided.sort();
    json!({
        "scenario": "timeout-storm",
        "reservations": count,
        "cancelled": lateness.len(),
        "created_with_deadline_already_due": late_at_creation,
        "decision_lateness_p50_ms": round2(percentile(&decided, 0.5)),
        "decision_lateness_p99_ms": round2(percentile(&decided, 0.99)),
        "decision_lateness_max_ms": round2(percentile(&decided, 1.0)),
        "decisions_sampled": decided.len(),
        "delete_lateness_p50_ms": round2(percentile(&lateness, 0.5)),
        "delete_lateness_p99_ms": round2(percentile(&lateness, 0.99)),
        "delete_lateness_max_ms": round2(percentile(&lateness, 1.0)),
        "all_cancelled_s_after_last_deadline": round2(all_done),
        "storm_sent_s": round2(storm_s),
        "direct_deletes_s": round2(direct_s),
        "storm_to_direct": round2(storm_s / direct_s),
    })
}

/// Sends `count` DELETEs straight to the participant (holds `from..from + count`), as many
/// in flight as the coordinator's own cap; answers how long they took, in seconds.
async fn direct_deletes(participant: &str, from: usize, count: usize) -> f64 {
    let in_flight = tcc_coordinator::MAX_CALLS_IN_FLIGHT;
    let http = client(in_flight);
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let workers = (0..in_flight).map(|_| {
        let (http, participant, next) = (http.clone(), participant.to_owned(), next.clone());
        tokio::spawn(async move {
            loop {
                let i = usize::try_from(next.fetch_add(1, Ordering::Relaxed)).unwrap();
                if i >= count {
                    return;
                }
                let r = http
                    .delete(format!("{participant}/holds/{}", from + i))
                    .send()
                    .await
                    .unwrap();
                assert!(r.status().is_success(), "{}", r.status());
            }
        })
    });
    for worker in futures_util::future::join_all(workers).await {
        worker.unwrap();
    }
    started.elapsed().as_secs_f64()
}

// ---- pending -----------------------------------------------------------------------------

/// Bytes a process has handed to `write` so far (its log, its sockets), from `/proc`.
fn written_bytes(pid: u32) -> f64 {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
    io.lines()
        .find_map(|line| line.strip_prefix("write_bytes:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// CPU time (user + system) a process has used so far, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) end with ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(vec![], |(_, rest)| rest.split_whitespace().collect());
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    (ticks(11) + ticks(12)) / clock_ticks_per_second()
}

fn clock_ticks_per_second() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

fn resident_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(f64::NAN);
    kib / 1024.0
}

fn disk_mib(dir: &std::path::Path) -> f64 {
    fn walk(dir: &std::path::Path) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .map(|e| match e.metadata() {
                        Ok(m) if m.is_dir() => walk(&e.path()),
                        Ok(m) => m.blocks() * 512,
                        Err(_) => 0,
                    })
                    .sum()
            })
            .unwrap_or(0)
    }
    walk(dir) as f64 / (1024.0 * 1024.0)
}

async fn pending(count: usize) -> Value {
    let (_participants, bases) = start_participants(1);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (coordinator, base) = start_coordinator(&Log::Dir(&data));
    let http = client(64);
    wait_ready(&http, &base).await;

    let t = Instant::now();
    create_many(&http, &base, &bases[0], count, 2, 64, |_| 7_000_000).await;
    let create_s = t.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_running = resident_mib(coordinator.pid());
    drop(coordinator);

    // From starting the process to `/health/ready` answering 200 (recovery finished).
    let t = Instant::now();
    let (restarted, base) = start_coordinator(&Log::Dir(&data));
    wait_ready(&http, &base).await;
    let ready_s = t.elapsed().as_secs_f64();
    let rss_restarted = resident_mib(restarted.pid());
    json!({
        "scenario": "pending",
        "reservations": count,
        "links_each": 2,
        "create_s": round2(create_s),
        "rss_mib": round2(rss_running),
        "rss_after_restart_mib": round2(rss_restarted),
        "log_mib": round2(disk_mib(&data)),
        "restart_to_ready_s": round2(ready_s),
    })
}

/// The `confirm` workload without pause for `minutes`, the coordinator on its defaults
/// (retention included): its resident memory sampled every 15 s, and how much it grew from
/// the second minute (caches warm) to the end.
async fn memory(minutes: f64) -> Value {
    let (_participants, bases) = start_participants(2);
    let dir = tempfile::tempdir().unwrap();
    let (coordinator, base) = start_coordinator(&Log::Dir(&dir.path().join("data")));
    let http = client(64);
    wait_ready(&http, &base).await;
    let pid = coordinator.pid();
    let sampler = tokio::spawn(async move {
        let mut samples = Vec::new();
        let start = Instant::now();
        loop {
            samples.push((start.elapsed().as_secs_f64(), resident_mib(pid)));
            eprintln!(
                "memory: {:.0} s, {:.1} MiB",
                samples.last().unwrap().0,
                samples.last().unwrap().1
            );
            if start.elapsed().as_secs_f64() >= minutes * 60.0 {
                return samples;
            }
            tokio::time::sleep(Duration::from_secs(15)).await;
        }
    });
    let (bases, coordinators) = (Arc::new(bases), Arc::new(vec![base]));
    let sequence = Arc::new(AtomicU64::new(0));
    let (tps, _) = round(64, minutes * 60.0, move || {
        let (http, bases, coordinators) = (http.clone(), bases.clone(), coordinators.clone());
        let n = sequence.fetch_add(1, Ordering::Relaxed) as usize;
        async move { coordinated(&http, &coordinators, n, &bases, Style::Links).await }
    })
    .await;
    let samples = sampler.await.unwrap();
    let after_first_minute: Vec<f64> = samples
        .iter()
        .filter(|(t, _)| *t >= 60.0)
        .map(|(_, m)| *m)
        .collect();
    let (first, last) = (
        after_first_minute.first().copied().unwrap_or(f64::NAN),
        samples.last().map_or(f64::NAN, |(_, m)| *m),
    );
    json!({
        "scenario": "memory",
        "minutes": minutes,
        "transactions": (tps * minutes * 60.0).round(),
        "tps": round2(tps),
        "rss_at_1_min_mib": round2(first),
        "rss_at_end_mib": round2(last),
        "rss_max_mib": round2(samples.iter().map(|(_, m)| *m).fold(0.0, f64::max)),
        "growth_after_1_min_mib": round2(last - first),
        "rss_samples_mib": samples.iter().map(|(_, m)| round2(*m)).collect::<Vec<_>>(),
    })
}

// ---- the participant service -------------------------------------------------------------

type Body = http_body_util::Full<bytes::Bytes>;

/// K participants, one port each: `POST /holds` holds (201 with a link), `PUT` confirms,
/// `DELETE` cancels (and is recorded with its arrival time), `GET /stats` reports them.
fn participant_server(k: usize) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let deletes: Arc<Mutex<HashMap<String, i64>>> = Arc::default();
        let mut ports = Vec::new();
        for _ in 0..k {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr: SocketAddr = listener.local_addr().unwrap();
            ports.push(addr.port().to_string());
            let deletes = deletes.clone();
            tokio::spawn(async move {
                let next = Arc::new(AtomicU64::new(0));
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let (deletes, next) = (deletes.clone(), next.clone());
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(move |req| {
                            let (deletes, next) = (deletes.clone(), next.clone());
                            async move {
                                Ok::<_, std::convert::Infallible>(answer(
                                    req, addr, &deletes, &next,
                                ))
                            }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                            .await;
                    });
                }
            });
        }
        println!("participants on {}", ports.join(","));
        std::future::pending::<()>().await;
    });
}

fn answer(
    req: hyper::Request<hyper::body::Incoming>,
    addr: SocketAddr,
    deletes: &Mutex<HashMap<String, i64>>,
    next: &AtomicU64,
) -> hyper::Response<Body> {
    let path = req.uri().path();
    let response = |status: u16, body: String| {
        hyper::Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Body::from(body))
            .unwrap()
    };
    match (req.method().as_str(), path) {
        ("POST", "/holds") => {
            let n = next.fetch_add(1, Ordering::Relaxed);
            let expires = (Utc::now() + chrono::Duration::minutes(10)).to_rfc3339();
            let mut r = response(
                201,
                json!({"uri": format!("http://{addr}/holds/{n}"), "expires": expires}).to_string(),
            );
            r.headers_mut()
                .insert("location", format!("/holds/{n}").parse().unwrap());
            r
        }
        ("PUT", _) => response(204, String::new()),
        ("DELETE", p) => {
            if let Some(n) = p.strip_prefix("/holds/") {
                deletes
                    .lock()
                    .unwrap()
                    .insert(n.to_owned(), Utc::now().timestamp_millis());
            }
            response(204, String::new())
        }
        ("GET", "/stats") => response(
            200,
            json!({"deletes": *deletes.lock().unwrap()}).to_string(),
        ),
        _ => response(404, String::new()),
    }
}
