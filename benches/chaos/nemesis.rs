//! The coordinators under test and the nemesis that hurts them.
//!
//! The coordinators are the real release binary, each on a fixed loopback port (so that a
//! restarted one is found where its clients and participants expect it) and, on sled, its own
//! data directory kept across restarts. With PostgreSQL there are three instances on one
//! database, which the nemesis also stops (`pg_ctl -m immediate`, a crash for the database) and
//! starts again. With `--ha` the database is the Patroni cluster of `.ci/patroni.sh` (two
//! nodes, synchronous replication), and the nemesis switches its leader over, kills the
//! leader's node, or stops every process of the leader (silent, as behind a partition) for a
//! while, each time waiting until the cluster has a leader and a synchronous standby again.
//!
//! With `--power-loss` (sled), each instance's data directory is on a filesystem that fails on
//! command (`tests/crash/faultfs.rs`), and half the kills are power cuts: the instance is
//! killed, every write no fsync made durable is undone, the filesystem is mounted again, and
//! the instance restarts on what a real disk would have kept.
//!
//! The schedule of kills and database stops is drawn from the seed before the run starts, so
//! the same seed gives the same schedule.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::{RngExt, SeedableRng};
use rand_pcg::Pcg64Mcg;

use crate::faultfs::FaultFs;
use crate::patroni::Patroni;

/// What the nemesis does at one moment of the run.
#[derive(Debug, Clone, Copy)]
pub enum Action {
    /// SIGKILL instance `instance`, start it again after `down`.
    Kill { instance: usize, down: Duration },
    /// SIGKILL instance `instance` and cut the power of its disk (every write not fsynced is
    /// lost), start it again after `down` on what the disk kept.
    PowerCut { instance: usize, down: Duration },
    /// Stop the database, start it again after `down`; with `restart`, also kill that
    /// instance while the database is down and start it again before the database is back.
    StopDatabase {
        down: Duration,
        restart: Option<usize>,
    },
    /// A planned switchover of the Patroni cluster to its synchronous standby.
    Switchover,
    /// SIGKILL every process of the Patroni leader's node; start its Patroni again after
    /// `down` (the standby takes over once the leader key's ttl has passed, unless the node
    /// is back first).
    KillLeader { down: Duration },
    /// SIGSTOP every process of the Patroni leader for `down`, then SIGCONT: past the ttl
    /// (10 s) the standby is promoted and the old leader rejoins as a replica; shorter, a
    /// stall.
    SilenceLeader { down: Duration },
}

/// What the nemesis does to the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatabaseFaults {
    /// No database (sled).
    None,
    /// One PostgreSQL server, stopped and started.
    Single,
    /// A Patroni cluster, failed over.
    Ha,
}

/// The nemesis' plan: actions and when, from the start of the run.
pub fn schedule(
    seed: u64,
    seconds: f64,
    instances: usize,
    database: DatabaseFaults,
    power_loss: bool,
) -> Vec<(f64, Action)> {
    let mut rng = Pcg64Mcg::seed_from_u64(seed ^ 0x6e65_6d65_7369_7321);
    let mut plan = Vec::new();
    let mut at = 0.0;
    loop {
        at += rng.random_range(2.0..9.0);
        if at > seconds - 2.0 {
            return plan;
        }
        let instance = rng.random_range(0..instances);
        let action = if database == DatabaseFaults::Single && rng.random_bool(0.3) {
            Action::StopDatabase {
                down: Duration::from_millis(rng.random_range(2_000..6_000)),
                restart: rng.random_bool(0.5).then_some(instance),
            }
        } else if database == DatabaseFaults::Ha && rng.random_bool(0.35) {
            match rng.random_range(0..3) {
                0 => Action::Switchover,
                1 => Action::KillLeader {
                    down: Duration::from_millis(rng.random_range(1_000..6_000)),
                },
                _ => Action::SilenceLeader {
                    down: Duration::from_millis(rng.random_range(3_000..16_000)),
                },
            }
        } else if power_loss && rng.random_bool(0.5) {
            Action::PowerCut {
                instance,
                down: Duration::from_millis(rng.random_range(0..1_500)),
            }
        } else {
            Action::Kill {
                instance,
                down: Duration::from_millis(rng.random_range(0..1_500)),
            }
        };
        plan.push((at, action));
    }
}

/// The flags every instance runs with: short timeouts so that a minute holds many deadlines,
/// retries and retention ends.
pub const COORDINATOR_FLAGS: &[&str] = &[
    "--participant-timeout",
    "1s",
    "--max-retry-interval",
    "2s",
    "--max-wait",
    "5s",
    "--default-timeout",
    "10s",
];

/// How long finished reservations stay readable in the soak (short, to check that nothing is
/// called after it ends).
pub const RETENTION: Duration = Duration::from_secs(45);

/// One coordinator process, started again after each kill.
struct Instance {
    port: u16,
    data_dir: PathBuf,
    /// With `--power-loss`: the filesystem the data directory is on, and where it keeps its
    /// data.
    disk: Option<(FaultFs, PathBuf)>,
    log: PathBuf,
    child: Option<Child>,
}

/// The coordinators of the run and, with PostgreSQL, the database.
pub struct Cluster {
    binary: PathBuf,
    store: Option<String>,
    database: Option<Database>,
    instances: Vec<Mutex<Instance>>,
    pub kills: Mutex<u64>,
    pub power_cuts: Mutex<u64>,
    pub database_stops: Mutex<u64>,
    /// Switchovers, leader nodes killed, leaders silenced.
    pub failovers: Mutex<[u64; 3]>,
}

impl Cluster {
    /// Starts `count` instances with their logs and data under `dir`.
    pub fn start(
        binary: &Path,
        dir: &Path,
        count: usize,
        store: Option<String>,
        faults: DatabaseFaults,
        power_loss: bool,
    ) -> Arc<Self> {
        let database = match faults {
            DatabaseFaults::None => None,
            DatabaseFaults::Single => Some(Database::Single(Server::from_env())),
            DatabaseFaults::Ha => Some(Database::Ha(Patroni::from_env())),
        };
        let instances = (0..count)
            .map(|i| {
                let data_dir = dir.join(format!("coordinator-{i}"));
                std::fs::create_dir_all(&data_dir).unwrap();
                let disk = power_loss.then(|| {
                    let (base, mountpoint) = (data_dir.join("disk"), data_dir.join("mnt"));
                    let fs = FaultFs::mount(&base, &mountpoint).expect(
                        "--power-loss mounts a FUSE filesystem: it needs root and /dev/fuse",
                    );
                    (fs, base)
                });
                let data = match &disk {
                    Some((fs, _)) => fs.path().join("data"),
                    None => data_dir.join("data"),
                };
                Mutex::new(Instance {
                    port: free_port(),
                    log: dir.join(format!("coordinator-{i}.log")),
                    data_dir: data,
                    disk,
                    child: None,
                })
            })
            .collect();
        let cluster = Arc::new(Self {
            binary: binary.to_owned(),
            store,
            database,
            instances,
            kills: Mutex::new(0),
            power_cuts: Mutex::new(0),
            database_stops: Mutex::new(0),
            failovers: Mutex::new([0; 3]),
        });
        for i in 0..count {
            cluster.launch(i);
        }
        cluster
    }

    /// The API's base URL of every instance.
    pub fn bases(&self) -> Vec<String> {
        self.instances
            .iter()
            .map(|i| format!("http://127.0.0.1:{}", i.lock().unwrap().port))
            .collect()
    }

    /// Where instance `i` writes its log lines.
    pub fn log_of(&self, i: usize) -> PathBuf {
        self.instances[i].lock().unwrap().log.clone()
    }

    fn launch(&self, i: usize) {
        let mut instance = self.instances[i].lock().unwrap();
        if instance.child.is_some() {
            return;
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&instance.log)
            .unwrap();
        let mut command = Command::new(&self.binary);
        command
            .args(["--listen", &format!("127.0.0.1:{}", instance.port)])
            .args(COORDINATOR_FLAGS)
            .args(["--retention", &format!("{}s", RETENTION.as_secs())])
            .args([
                "--transaction-retention",
                &format!("{}s", RETENTION.as_secs()),
            ]);
        match &self.store {
            Some(url) => command.args(["--store", url, "--lease", "2s"]),
            None => command.arg("--data-dir").arg(&instance.data_dir),
        };
        let child = command
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("the coordinator binary starts");
        instance.child = Some(child);
    }

    /// SIGKILL: no flush, no goodbye.
    fn kill(&self, i: usize) {
        let mut instance = self.instances[i].lock().unwrap();
        if let Some(mut child) = instance.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Cuts the power of instance `i`'s disk (killed before) and mounts what it kept.
    fn cut_power(&self, i: usize) {
        let mut instance = self.instances[i].lock().unwrap();
        if let Some((fs, base)) = instance.disk.take() {
            fs.faults().cut_power();
            let mountpoint = fs.path().to_owned();
            drop(fs);
            let fs = FaultFs::mount(&base, &mountpoint).expect("the disk mounts again");
            instance.disk = Some((fs, base));
        }
    }

    /// Carries out one action of the schedule (blocking: run it on a thread of its own).
    pub fn act(&self, action: Action) {
        match action {
            Action::Kill { instance, down } => {
                self.kill(instance);
                *self.kills.lock().unwrap() += 1;
                std::thread::sleep(down);
                self.launch(instance);
            }
            Action::PowerCut { instance, down } => {
                self.kill(instance);
                self.cut_power(instance);
                *self.power_cuts.lock().unwrap() += 1;
                std::thread::sleep(down);
                self.launch(instance);
            }
            Action::StopDatabase { down, restart } => {
                let Some(Database::Single(database)) = &self.database else {
                    return;
                };
                database.stop();
                *self.database_stops.lock().unwrap() += 1;
                let started = Instant::now();
                if let Some(i) = restart {
                    std::thread::sleep(down / 3);
                    self.kill(i);
                    *self.kills.lock().unwrap() += 1;
                    self.launch(i);
                }
                std::thread::sleep(down.saturating_sub(started.elapsed()));
                database.start();
            }
            Action::Switchover | Action::KillLeader { .. } | Action::SilenceLeader { .. } => {
                let Some(Database::Ha(cluster)) = &self.database else {
                    return;
                };
                let Some((leader, standby)) = healthy(cluster) else {
                    return;
                };
                let kind = match action {
                    Action::Switchover => {
                        if let Err(refused) = cluster.switchover(&leader, &standby) {
                            println!("chaos: {refused}");
                        }
                        0
                    }
                    Action::KillLeader { down } => {
                        cluster.signal(&leader, "KILL");
                        std::thread::sleep(down);
                        cluster.start(&leader);
                        1
                    }
                    Action::SilenceLeader { down } => {
                        cluster.signal(&leader, "STOP");
                        std::thread::sleep(down);
                        cluster.signal(&leader, "CONT");
                        2
                    }
                    _ => unreachable!(),
                };
                self.failovers.lock().unwrap()[kind] += 1;
                // The next fault only once the cluster is whole again.
                if healthy(cluster).is_none() {
                    println!("chaos: the Patroni cluster is not whole after {action:?}");
                }
            }
        }
    }

    /// Everything up again: the database started, every instance running (an instance that
    /// exited by itself is a finding: it is reported, and started again).
    pub fn heal(&self) -> Vec<String> {
        let mut exited = Vec::new();
        match &self.database {
            Some(Database::Single(server)) => server.start(),
            Some(Database::Ha(cluster)) if healthy(cluster).is_none() => {
                exited.push(
                    "the Patroni cluster never had a leader and a synchronous standby again".into(),
                );
            }
            Some(Database::Ha(_)) | None => {}
        }
        for (i, instance) in self.instances.iter().enumerate() {
            let mut instance = instance.lock().unwrap();
            if let Some(child) = &mut instance.child {
                if let Ok(Some(status)) = child.try_wait() {
                    exited.push(format!(
                        "coordinator {i} exited by itself ({status}); see {}",
                        instance.log.display()
                    ));
                    instance.child = None;
                }
            }
            drop(instance);
            self.launch(i);
        }
        exited
    }

    /// Stops every instance (at the end of the run).
    pub fn stop(&self) {
        for i in 0..self.instances.len() {
            self.kill(i);
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
        if let Some(Database::Single(server)) = &self.database {
            server.start();
        }
    }
}

/// The database the nemesis hurts.
enum Database {
    Single(Server),
    Ha(Patroni),
}

/// Waits (at most 120 s) until the Patroni cluster has a running leader and a streaming
/// synchronous standby, and returns them; `None` if it never does.
fn healthy(cluster: &Patroni) -> Option<(String, String)> {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(120) {
        if let Some(found) = cluster.leader_and_standby() {
            return Some(found);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

/// The PostgreSQL cluster `.ci/postgres.sh` started (it exports its data directory and
/// binaries as `TCC_TEST_POSTGRES_DIR` and `TCC_TEST_POSTGRES_BIN`).
struct Server {
    dir: String,
    pg_ctl: String,
}

impl Server {
    fn from_env() -> Self {
        let var = |name: &str| {
            std::env::var(name).unwrap_or_else(|_| {
                eprintln!("chaos: --store postgres needs {name} (source .ci/postgres.sh)");
                std::process::exit(2)
            })
        };
        Self {
            dir: var("TCC_TEST_POSTGRES_DIR"),
            pg_ctl: format!("{}/pg_ctl", var("TCC_TEST_POSTGRES_BIN")),
        }
    }

    fn pg_ctl(&self, args: &[&str]) {
        // The server refuses to run as root: as the owner of its data directory.
        let mut command = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--", &self.pg_ctl]);
            c
        } else {
            Command::new(&self.pg_ctl)
        };
        let _ = command
            .args(["-D", &self.dir])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    fn stop(&self) {
        self.pg_ctl(&["-m", "immediate", "stop"]);
    }

    fn start(&self) {
        let log = format!("{}/server.log", self.dir);
        self.pg_ctl(&["-l", &log, "-w", "start"]);
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
