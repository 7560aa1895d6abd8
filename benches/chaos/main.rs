//! The chaos soak: clients, faulty participants and a nemesis against the real coordinator
//! binary, then a checker that finds any answer or hold the coordinator got wrong.
//!
//! ```sh
//! cargo bench --bench chaos -- --seconds 60 --seed 42                   # sled
//! cargo bench --bench chaos -- --seconds 60 --seed 5 --power-loss       # sled, power cuts (root)
//! source .ci/postgres.sh                                                # a throwaway database
//! cargo bench --bench chaos -- --seconds 60 --seed 7 --store postgres   # three instances
//! source .ci/patroni.sh                                                 # a Patroni cluster
//! cargo bench --bench chaos -- --seconds 60 --seed 7 --store postgres --ha   # failovers too
//! ```
//!
//! While it runs it prints a progress line every 5 s; at the end one `key=value` summary line,
//! and exit status 0 only when the checker found no violation. A failing run prints every
//! violation, its seed, the command that repeats it, and keeps the coordinators' logs.
//!
//! The run: participants (`participants`) answer with faults drawn from the seed; clients
//! (`clients`) mix every call a user makes and write down each answer; the nemesis
//! (`nemesis`) SIGKILLs coordinators at moments drawn from the seed and restarts them on the
//! same data (and stops the database, with `--store postgres`). Then everything heals: the
//! nemesis stops, faults stop, every instance runs, and the soak waits until every
//! reservation it heard of is final (at most `SETTLE`). The checker (`checker`) then compares
//! final states, participants' ledgers and clients' answers.

mod checker;
mod clients;
#[path = "../../tests/crash/faultfs.rs"]
mod faultfs;
mod nemesis;
mod participants;
#[path = "../../tests/crash/patroni.rs"]
mod patroni;

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::Value;

use checker::{Evidence, Final};
use clients::{Answer, Client, Op};
use nemesis::{Action, Cluster, DatabaseFaults};
use participants::{HoldState, Service};

/// How long the soak waits, once healed, for every reservation to be final.
const SETTLE: Duration = Duration::from_secs(150);

/// Concurrent clients.
const CLIENTS: usize = 8;

struct Options {
    seconds: f64,
    seed: u64,
    postgres: bool,
    /// On the Patroni cluster of `.ci/patroni.sh`, failing it over.
    ha: bool,
    /// sled on a filesystem whose power the nemesis cuts.
    power_loss: bool,
}

fn options() -> Options {
    let mut o = Options {
        seconds: 60.0,
        seed: Utc::now().timestamp_subsec_nanos().into(),
        postgres: false,
        ha: false,
        power_loss: false,
    };
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    while let Some(arg) = args.next() {
        if arg == "--ha" {
            o.ha = true;
            continue;
        }
        if arg == "--power-loss" {
            o.power_loss = true;
            continue;
        }
        let value = args.next();
        match (arg.as_str(), value) {
            ("--seconds", Some(v)) => {
                o.seconds = v
                    .parse()
                    .unwrap_or_else(|_| usage("--seconds takes a number"));
            }
            ("--seed", Some(v)) => {
                o.seed = v.parse().unwrap_or_else(|_| usage("--seed takes a number"));
            }
            ("--store", Some(v)) if v == "sled" || v == "postgres" => o.postgres = v == "postgres",
            (other, _) => usage(&format!("unknown or incomplete argument `{other}`")),
        }
    }
    if o.seconds < 10.0 {
        usage("--seconds must be at least 10");
    }
    if o.ha && !o.postgres {
        usage("--ha goes with --store postgres");
    }
    if o.power_loss && o.postgres {
        usage("--power-loss goes with the embedded log (--store sled)");
    }
    o
}

fn usage(problem: &str) -> ! {
    eprintln!(
        "chaos: {problem}\nusage: cargo bench --bench chaos -- [--seconds S] [--seed N] \
         [--store sled [--power-loss] | --store postgres [--ha]]"
    );
    std::process::exit(2)
}

fn main() -> ExitCode {
    let o = options();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    if runtime.block_on(run(&o)) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn store_name(o: &Options) -> &'static str {
    match (o.postgres, o.ha) {
        (true, true) => "postgres-ha",
        (true, false) => "postgres",
        (false, _) if o.power_loss => "sled-power-loss",
        (false, _) => "sled",
    }
}

fn faults(o: &Options) -> DatabaseFaults {
    match (o.postgres, o.ha) {
        (true, true) => DatabaseFaults::Ha,
        (true, false) => DatabaseFaults::Single,
        (false, _) => DatabaseFaults::None,
    }
}

async fn run(o: &Options) -> bool {
    let dir = tempfile::Builder::new()
        .prefix(&format!("tcc-chaos-{}-{}-", store_name(o), o.seed))
        .tempdir()
        .unwrap();
    let store = match faults(o) {
        DatabaseFaults::Ha => Some(
            tcc_coordinator::scratch_database(
                &std::env::var("TCC_TEST_PATRONI").unwrap_or_else(|_| {
                    usage("--ha needs TCC_TEST_PATRONI (source .ci/patroni.sh)")
                }),
            )
            .await,
        ),
        DatabaseFaults::Single => Some(
            tcc_coordinator::scratch_database_from_env()
                .await
                .unwrap_or_else(|| usage("--store postgres needs TCC_TEST_POSTGRES")),
        ),
        DatabaseFaults::None => None,
    };
    let instances = if o.postgres { 3 } else { 1 };
    let faulty = Arc::new(AtomicBool::new(true));
    let call_timeout = Duration::from_secs(1);
    let mut services = Vec::new();
    for name in ["stock", "payments", "seats", "callbacks"] {
        services.push(Service::start(name, o.seed, faulty.clone(), call_timeout).await);
    }
    let callbacks = services.pop().unwrap();
    let cluster = Cluster::start(
        std::path::Path::new(env!("CARGO_BIN_EXE_tcc-coordinator")),
        dir.path(),
        instances,
        store,
        faults(o),
        o.power_loss,
    );
    let bases = cluster.bases();
    let http = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    for base in &bases {
        wait_ready(&http, base, Duration::from_secs(60)).await;
    }

    let plan = nemesis::schedule(o.seed, o.seconds, instances, faults(o), o.power_loss);
    println!(
        "chaos seed={} seconds={} store={} instances={instances} clients={CLIENTS} schedule: {}",
        o.seed,
        o.seconds,
        store_name(o),
        describe(&plan)
    );
    let start = Instant::now();
    let until = start + Duration::from_secs_f64(o.seconds);
    let nemesis = {
        let cluster = cluster.clone();
        std::thread::spawn(move || {
            for (at, action) in plan {
                let due = start + Duration::from_secs_f64(at);
                std::thread::sleep(due.saturating_duration_since(Instant::now()));
                cluster.act(action);
            }
        })
    };
    let participants: Vec<String> = services.iter().map(|s| s.base.clone()).collect();
    let callback = format!("{}/callbacks", callbacks.base);
    let running: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let client = Client::new(
                i,
                o.seed,
                bases.clone(),
                participants.clone(),
                callback.clone(),
            );
            tokio::spawn(client.run(until))
        })
        .collect();
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_secs(5).min(until - Instant::now())).await;
        println!(
            "chaos t={:.0}s kills={} power_cuts={} database_stops={} failovers={} participant_calls={} faults={} callbacks={}",
            start.elapsed().as_secs_f64(),
            cluster.kills.lock().unwrap(),
            cluster.power_cuts.lock().unwrap(),
            cluster.database_stops.lock().unwrap(),
            cluster.failovers.lock().unwrap().iter().sum::<u64>(),
            services.iter().map(|s| s.calls()).sum::<u64>(),
            services.iter().map(|s| s.faults()).sum::<u64>() + callbacks.faults(),
            callbacks.calls(),
        );
    }
    tokio::task::spawn_blocking(move || nemesis.join().unwrap())
        .await
        .unwrap();

    // Heal: no more faults, every instance up.
    faulty.store(false, Ordering::Relaxed);
    let mut violations = cluster.heal();
    for base in &bases {
        wait_ready(&http, base, Duration::from_secs(60)).await;
    }
    println!(
        "chaos healed at t={:.0}s; waiting for the clients",
        start.elapsed().as_secs_f64()
    );
    let mut answers: Vec<Answer> = Vec::new();
    for client in running {
        answers.extend(client.await.unwrap().answers);
    }

    println!("chaos settling: every reservation must become final (at most {SETTLE:?})");
    let (finals, unknown, missing_callbacks) =
        settle(&http, &bases, &answers, &services, &callbacks).await;
    violations.extend(missing_callbacks);
    let now = Utc::now();
    let holds: Vec<(String, participants::Hold)> = services
        .iter()
        .flat_map(|s| s.holds(now).into_iter().map(|h| (s.name.clone(), h)))
        .collect();
    violations.extend(checker::check(&Evidence {
        finals: &finals,
        unknown: &unknown,
        holds: &holds,
        answers: &answers,
        retention: nemesis::RETENTION,
    }));
    let logs: Vec<String> = (0..instances)
        .map(|i| cluster.log_of(i).display().to_string())
        .collect();
    cluster.stop();

    let count = |state: &str| finals.values().filter(|f| f.state == state).count();
    let failovers = *cluster.failovers.lock().unwrap();
    let acknowledged = answers
        .iter()
        .filter(|a| a.op == Op::Create && matches!(a.status, Some(200 | 202)))
        .filter_map(|a| a.reservation.as_ref())
        .collect::<std::collections::HashSet<_>>()
        .len();
    println!(
        "chaos seed={} seconds={} store={} instances={instances} kills={} power_cuts={} database_stops={} \
         switchovers={} leader_kills={} silent_leaders={} \
         faults={} participant_calls={} answers={} acknowledged={acknowledged} \
         abandoned_creates={} atomikos_calls={} confirmed={} cancelled={} conflict={} \
         holds={} holds_left_to_expire={} violations={}",
        o.seed,
        o.seconds,
        store_name(o),
        cluster.kills.lock().unwrap(),
        cluster.power_cuts.lock().unwrap(),
        cluster.database_stops.lock().unwrap(),
        failovers[0],
        failovers[1],
        failovers[2],
        services.iter().map(|s| s.faults()).sum::<u64>() + callbacks.faults(),
        services.iter().map(|s| s.calls()).sum::<u64>(),
        answers.len(),
        answers
            .iter()
            .filter(|a| a.op == Op::AbandonedCreate)
            .count(),
        answers
            .iter()
            .filter(|a| matches!(a.op, Op::AtomikosConfirm | Op::AtomikosCancel))
            .count(),
        count("confirmed"),
        count("cancelled"),
        count("conflict"),
        holds.len(),
        holds
            .iter()
            .filter(|(_, h)| h.state == HoldState::Held)
            .count(),
        violations.len(),
    );
    if violations.is_empty() {
        return true;
    }
    for v in violations.iter().take(100) {
        println!("VIOLATION {v}");
    }
    let kept = dir.keep();
    write_evidence(&kept, &answers, &holds);
    println!(
        "chaos FAILED with seed {}: repeat with `cargo bench --bench chaos -- --seconds {} \
         --seed {} --store {}`; coordinator logs: {} (in {})",
        o.seed,
        o.seconds,
        o.seed,
        match faults(o) {
            DatabaseFaults::Ha => "postgres --ha",
            DatabaseFaults::Single => "postgres",
            DatabaseFaults::None if o.power_loss => "sled --power-loss",
            DatabaseFaults::None => "sled",
        },
        logs.join(", "),
        kept.display()
    );
    false
}

fn describe(plan: &[(f64, Action)]) -> String {
    plan.iter()
        .map(|(at, action)| match action {
            Action::Kill { instance, down } => {
                format!("{at:.1}s kill {instance} ({}ms)", down.as_millis())
            }
            Action::PowerCut { instance, down } => {
                format!("{at:.1}s power cut {instance} ({}ms)", down.as_millis())
            }
            Action::StopDatabase { down, restart } => format!(
                "{at:.1}s stop database ({}ms{})",
                down.as_millis(),
                restart.map_or(String::new(), |i| format!(", restart {i} meanwhile"))
            ),
            Action::Switchover => format!("{at:.1}s switchover"),
            Action::KillLeader { down } => {
                format!("{at:.1}s kill the leader's node ({}ms)", down.as_millis())
            }
            Action::SilenceLeader { down } => {
                format!("{at:.1}s silence the leader ({}ms)", down.as_millis())
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

async fn wait_ready(http: &reqwest::Client, base: &str, limit: Duration) {
    let started = Instant::now();
    while started.elapsed() < limit {
        if let Ok(r) = http.get(format!("{base}/health/ready")).send().await {
            if r.status() == 200 {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("chaos: {base} is not ready after {limit:?}");
}

/// Waits until every reservation heard of (from answers, from tries, from callbacks) is final
/// and its completion callback arrived. Returns the final states, those that never settled
/// (and why), and a sentence for each final reservation whose callback never came.
async fn settle(
    http: &reqwest::Client,
    bases: &[String],
    answers: &[Answer],
    services: &[Arc<Service>],
    callbacks: &Service,
) -> (HashMap<String, Final>, HashMap<String, String>, Vec<String>) {
    let mut ids: Vec<String> = answers
        .iter()
        .filter_map(|a| a.reservation.clone())
        .collect();
    let now = Utc::now();
    for service in services {
        ids.extend(service.holds(now).into_iter().filter_map(|h| h.reservation));
    }
    ids.extend(callbacks.callbacks().into_keys());
    ids.sort();
    ids.dedup();
    let started = Instant::now();
    let mut finals = HashMap::new();
    let mut read_finals: HashMap<String, Final> = HashMap::new();
    let mut unknown = HashMap::new();
    loop {
        let delivered = callbacks.callbacks();
        unknown.clear();
        for id in &ids {
            if finals.contains_key(id) {
                continue;
            }
            if let Some(received) = delivered.get(id) {
                let (first, _) = received[0];
                let (_, body) = received.last().unwrap();
                match Final::of(body, Some(first)) {
                    Some(f) if f.is_final() => {
                        finals.insert(id.clone(), f);
                        continue;
                    }
                    _ => {}
                }
            }
            match read_final(http, &bases[0], id).await {
                Ok(f) => {
                    read_finals.insert(id.clone(), f);
                    unknown.insert(id.clone(), "final, but its callback has not arrived".into());
                }
                Err(why) => {
                    unknown.insert(id.clone(), why);
                }
            }
        }
        if unknown.is_empty() || started.elapsed() > SETTLE {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut missing = Vec::new();
    for (id, f) in read_finals {
        if unknown.remove(&id).is_some() {
            missing.push(format!(
                "reservation {id} is {} but its completion callback never arrived",
                f.state
            ));
            finals.insert(id, f);
        }
    }
    (finals, unknown, missing)
}

/// A reservation's final state read from the coordinator, or why it is not final.
async fn read_final(http: &reqwest::Client, base: &str, id: &str) -> Result<Final, String> {
    let read = |url: String| async move {
        let r = http.get(url).send().await.map_err(|e| e.to_string())?;
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        Ok::<_, String>((status, body))
    };
    let (status, body) = read(format!("{base}/reservations/{id}")).await?;
    let (status, body) = if status == 303 {
        let (_, mut body) = read(format!("{base}/transactions/{id}")).await?;
        body["state"] = "confirmed".into();
        (200, body)
    } else {
        (status, body)
    };
    match (status, Final::of(&body, None)) {
        (200 | 410, Some(f)) if f.is_final() => Ok(f),
        (200, Some(f)) => Err(format!("still {} after healing", f.state)),
        _ => Err(format!("answered {status}: {body}")),
    }
}

/// Keeps what the clients were told and what the participants hold, for the post-mortem.
fn write_evidence(
    dir: &std::path::Path,
    answers: &[Answer],
    holds: &[(String, participants::Hold)],
) {
    let answers: Vec<String> = answers
        .iter()
        .map(|a| {
            format!(
                "{} client={} {:?} reservation={} status={:?} links={:?} {}",
                a.at,
                a.client,
                a.op,
                a.reservation.as_deref().unwrap_or("-"),
                a.status,
                a.links,
                a.body
            )
        })
        .collect();
    let holds: Vec<String> = holds
        .iter()
        .map(|(service, h)| format!("{service} {h:?}"))
        .collect();
    let _ = std::fs::write(dir.join("answers.txt"), answers.join("\n"));
    let _ = std::fs::write(dir.join("holds.txt"), holds.join("\n"));
}
