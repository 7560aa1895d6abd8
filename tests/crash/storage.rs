//! The embedded log under storage faults, on [`FaultFs`]: power cuts that lose what was not
//! fsynced, a full disk, a failing fsync, a slow one.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{RngExt, SeedableRng};
use rand_pcg::Pcg64Mcg;
use serde_json::{json, Value};

use crate::faultfs::FaultFs;
use crate::helpers::{
    client, eventually, eventually_within, in_secs, is_settled, wait_for, Participant,
};
use crate::Binary;

/// A scratch directory holding the filesystem's backing data and its mount point.
struct Disk {
    _scratch: tempfile::TempDir,
    base: PathBuf,
    mountpoint: PathBuf,
}

impl Disk {
    fn new() -> Self {
        let scratch = tempfile::Builder::new()
            .prefix("faultfs")
            .tempdir()
            .unwrap();
        let (base, mountpoint) = (scratch.path().join("disk"), scratch.path().join("mnt"));
        Self {
            _scratch: scratch,
            base,
            mountpoint,
        }
    }

    /// Where the coordinator's log lines go (outside the faulty disk).
    fn log(&self) -> PathBuf {
        self.base.with_extension("log")
    }

    fn mount(&self) -> FaultFs {
        FaultFs::mount(&self.base, &self.mountpoint)
            .expect("mounting the FUSE filesystem needs /dev/fuse and root (CI runs as root)")
    }
}

impl Drop for Disk {
    /// A failed test shows the end of what the coordinator logged.
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.log()).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!("the coordinator's last log lines:");
            for line in &lines[lines.len().saturating_sub(30)..] {
                eprintln!("  {line}");
            }
        }
    }
}

#[test]
#[ignore = "needs root and /dev/fuse: mounts a FUSE filesystem"]
fn the_fault_filesystem_keeps_after_a_power_cut_only_what_was_fsynced() {
    // Arrange
    let disk = Disk::new();
    let fs = disk.mount();
    let dir = fs.path().join("dir");
    std::fs::create_dir(&dir).unwrap();
    std::fs::File::open(fs.path()).unwrap().sync_all().unwrap();
    let synced = dir.join("synced");
    std::fs::write(&synced, b"kept").unwrap();
    std::fs::File::open(&synced).unwrap().sync_data().unwrap();
    std::fs::File::open(&dir).unwrap().sync_all().unwrap();

    // Act: more data in the synced file, a new file never fsynced, a file whose data was
    // fsynced but not its directory entry, a rename over the synced file's neighbour.
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&synced)
        .unwrap();
    f.write_all(b" and lost").unwrap();
    drop(f);
    std::fs::write(dir.join("unsynced"), b"lost").unwrap();
    std::fs::write(dir.join("entry-unsynced"), b"data synced").unwrap();
    std::fs::File::open(dir.join("entry-unsynced"))
        .unwrap()
        .sync_all()
        .unwrap();
    assert_eq!(std::fs::read(&synced).unwrap(), b"kept and lost");
    std::fs::write(dir.join("renamed.partial"), b"renamed").unwrap();
    std::fs::rename(dir.join("renamed.partial"), dir.join("renamed")).unwrap();
    assert_eq!(std::fs::read(dir.join("renamed")).unwrap(), b"renamed");
    let undone = fs.faults().cut_power();
    drop(fs);
    let fs = disk.mount();

    // Assert
    let dir = fs.path().join("dir");
    assert!(undone > 0);
    assert_eq!(std::fs::read(dir.join("synced")).unwrap(), b"kept");
    assert!(!dir.join("unsynced").exists());
    assert!(!dir.join("entry-unsynced").exists());
    assert!(!dir.join("renamed").exists());
    assert!(!dir.join("renamed.partial").exists());
}

#[test]
#[ignore = "needs root and /dev/fuse: mounts a FUSE filesystem"]
fn the_fault_filesystem_fails_on_command() {
    // Arrange
    let disk = Disk::new();
    let fs = disk.mount();
    let faults = fs.faults();
    let file = fs.path().join("file");
    std::fs::write(&file, b"before").unwrap();
    std::fs::File::open(&file).unwrap().sync_all().unwrap();

    // Act + Assert: a full disk
    faults.set_full(true);
    let full = std::fs::write(fs.path().join("other"), b"x").unwrap_err();
    assert_eq!(full.raw_os_error(), Some(28), "ENOSPC: {full}");
    faults.set_full(false);

    // A failing fsync drops what it did not make durable.
    faults.set_fsync_fails(true);
    std::fs::write(&file, b"after!").unwrap();
    let failed = std::fs::File::open(&file).unwrap().sync_all().unwrap_err();
    assert_eq!(failed.raw_os_error(), Some(5), "EIO: {failed}");
    assert_eq!(faults.failed_fsyncs(), 1);
    assert_eq!(
        std::fs::read(&file).unwrap(),
        b"before",
        "unsynced writes dropped"
    );
    faults.set_fsync_fails(false);

    // A slow fsync.
    faults.set_fsync_delay(std::time::Duration::from_millis(300));
    let started = std::time::Instant::now();
    std::fs::File::open(&file).unwrap().sync_all().unwrap();
    assert!(started.elapsed() >= std::time::Duration::from_millis(300));
}

/// What a client was told about a reservation: the least the log must still hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Told {
    /// 202 to its create.
    Created,
    /// 202 or 303 to a confirm.
    Confirmed,
    /// 202 to a cancel, or 410 to a confirm (its deadline had passed).
    Cancelled,
}

/// Every reservation a client was answered for, and what it was told.
type Book = Arc<Mutex<HashMap<String, Told>>>;

/// One client: creates over two links of `participant` (one create in four with 48 KiB of
/// metadata, so that the log writes records too large for one page), then confirms, cancels,
/// or leaves the deadline to decide. Records what it was told until `stop`.
async fn client_loop(
    base: String,
    participant: String,
    book: Book,
    next_link: Arc<AtomicU32>,
    seed: u64,
    stop: Arc<AtomicBool>,
) {
    let http = client();
    let mut rng = Pcg64Mcg::seed_from_u64(seed);
    while !stop.load(Ordering::SeqCst) {
        let n = next_link.fetch_add(2, Ordering::SeqCst);
        let links: Vec<Value> = (n..n + 2)
            .map(|i| json!({"link": {"uri": format!("{participant}/holds/{i}"), "expires": in_secs(600)}}))
            .collect();
        let metadata = if rng.random_range(0..4) == 0 {
            json!({"note": "x".repeat(48 << 10)})
        } else {
            json!({"order": n})
        };
        let body = json!({"participants": links, "timeout_ms": 2000, "metadata": metadata});
        let Ok(created) = http
            .post(format!("{base}/reservations"))
            .json(&body)
            .send()
            .await
        else {
            continue;
        };
        if created.status() != 202 {
            eprintln!(
                "DEBUG {} {}",
                created.status(),
                created.text().await.unwrap_or_default()
            );
            continue;
        }
        let Ok(view) = created.json::<Value>().await else {
            continue;
        };
        let id = view["id"].as_str().unwrap().to_owned();
        book.lock().unwrap().insert(id.clone(), Told::Created);
        let verb = match rng.random_range(0..3) {
            0 => "confirm",
            1 => "cancel",
            _ => continue,
        };
        let Ok(decided) = http
            .post(format!("{base}/reservations/{id}/{verb}"))
            .send()
            .await
        else {
            continue;
        };
        let told = match (verb, decided.status().as_u16()) {
            ("confirm", 202 | 303) => Told::Confirmed,
            (_, 202 | 410) => Told::Cancelled,
            _ => continue,
        };
        book.lock().unwrap().insert(id, told);
    }
}

/// Every reservation in `book` is in the log at `base` as its client was told.
async fn check_book(http: &reqwest::Client, base: &str, book: &Book) {
    let told: Vec<(String, Told)> = book.lock().unwrap().clone().into_iter().collect();
    for (id, told) in told {
        let response = http
            .get(format!("{base}/reservations/{id}"))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let state = response.json::<Value>().await.unwrap_or(Value::Null)["state"].clone();
        let kept = match told {
            Told::Created => matches!(status, 200 | 303 | 410),
            Told::Confirmed => status == 303 || (status == 200 && state == "confirming"),
            Told::Cancelled => status == 410 || (status == 200 && state == "cancelling"),
        };
        assert!(
            kept,
            "reservation {id} was acknowledged ({told:?}) but after the power cut it answers \
             {status} {state}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and /dev/fuse: mounts a FUSE filesystem"]
async fn a_power_cut_under_load_loses_nothing_acknowledged() {
    // Arrange
    let disk = Disk::new();
    let participant = Participant::start().await;
    let http = client();
    let book: Book = Arc::default();
    let next_link = Arc::new(AtomicU32::new(0));
    let mut rng = Pcg64Mcg::seed_from_u64(24);

    // Act: cycles of load, each ended by a power cut at a random moment.
    for cycle in 0..POWER_CUTS {
        let fs = disk.mount();
        let data = fs.path().join("data");
        let coordinator = Binary::spawn(crate::command(&data), &disk.log());
        check_book(&http, &coordinator.base, &book).await;
        let stop = Arc::new(AtomicBool::new(false));
        let clients: Vec<_> = (0..6)
            .map(|i| {
                tokio::spawn(client_loop(
                    coordinator.base.clone(),
                    participant.base.clone(),
                    book.clone(),
                    next_link.clone(),
                    cycle * 100 + i,
                    stop.clone(),
                ))
            })
            .collect();
        let cut_after = book.lock().unwrap().len() + rng.random_range(5..60);
        eventually("enough reservations are acknowledged", || {
            let n = book.lock().unwrap().len();
            async move { (n >= cut_after).then_some(()) }
        })
        .await;
        coordinator.kill_9();
        let undone = fs.faults().cut_power();
        stop.store(true, Ordering::SeqCst);
        for c in clients {
            c.await.unwrap();
        }
        drop(fs);
        eprintln!("power cut {cycle}: {undone} unsynced changes undone");
    }

    // Assert: what was acknowledged is there, every decision is carried out (deadlines
    // included), and no link got both a confirm and a cancel.
    let fs = disk.mount();
    let coordinator = Binary::spawn(crate::command(&fs.path().join("data")), &disk.log());
    check_book(&http, &coordinator.base, &book).await;
    let ids: Vec<String> = book.lock().unwrap().keys().cloned().collect();
    for id in ids {
        wait_for(&http, &coordinator.base, &id, is_settled).await;
    }
    let confirmed: HashSet<String> = participant.paths("PUT").into_iter().collect();
    let cancelled: HashSet<String> = participant.paths("DELETE").into_iter().collect();
    let both: Vec<&String> = confirmed.intersection(&cancelled).collect();
    assert!(
        both.is_empty(),
        "links both confirmed and cancelled: {both:?}"
    );
    assert!(book.lock().unwrap().len() > usize::try_from(POWER_CUTS).unwrap() * 5);
}

/// Power cuts in one run of the test.
const POWER_CUTS: u64 = 6;

impl Disk {
    /// The coordinator on this disk's mount, with `args`; returns once it is ready.
    fn start(&self, fs: &FaultFs, args: &[&str]) -> Binary {
        let mut command = crate::command(&fs.path().join("data"));
        command.args(args);
        Binary::spawn(command, &self.log())
    }
}

/// `POST /reservations` of one link, with an optional `Idempotency-Key`.
async fn try_create(
    http: &reqwest::Client,
    base: &str,
    participant: &Participant,
    n: u32,
    key: Option<&str>,
) -> reqwest::Response {
    let mut request = http
        .post(format!("{base}/reservations"))
        .json(&json!({"participants": [participant.link(n)]}));
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    request.send().await.unwrap()
}

/// After a restart: the reservation at `kept` (its `Location`) reads back, and a create is
/// taken.
async fn assert_kept_and_taking_writes(
    http: &reqwest::Client,
    base: &str,
    participant: &Participant,
    kept: &str,
) {
    let read = http.get(format!("{base}{kept}")).send().await.unwrap();
    assert_eq!(
        read.status(),
        200,
        "the acknowledged reservation {kept} is lost"
    );
    let created = try_create(http, base, participant, 9, None).await;
    assert_eq!(created.status(), 202);
}

async fn ready_status(http: &reqwest::Client, base: &str) -> Option<u16> {
    let answer = http.get(format!("{base}/health/ready")).send().await.ok()?;
    Some(answer.status().as_u16())
}

/// A 503 as the coordinator answers one: `Retry-After`, a problem whose detail contains
/// `why`.
async fn assert_503(response: reqwest::Response, why: &str) {
    assert_eq!(response.status(), 503);
    assert!(
        response.headers().contains_key("retry-after"),
        "no Retry-After"
    );
    let problem: Value = response.json().await.unwrap();
    let detail = problem["detail"].as_str().unwrap_or_default();
    assert!(detail.contains(why), "{why:?} not in {detail:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and /dev/fuse: mounts a FUSE filesystem"]
async fn a_disk_below_its_reserve_refuses_writes_serves_reads_and_takes_writes_again_once_it_has_room(
) {
    // Arrange
    let disk = Disk::new();
    let fs = disk.mount();
    let coordinator = disk.start(&fs, &["--disk-reserve", "1048576"]);
    let (http, p) = (client(), Participant::start().await);
    let kept = try_create(&http, &coordinator.base, &p, 1, None).await;
    assert_eq!(kept.status(), 202);
    let kept = kept.headers()["location"].to_str().unwrap().to_owned();

    // Act: the disk fills up to below the reserve.
    fs.faults().set_available(Some(4096));
    eventually(
        "readiness fails while the disk is below its reserve",
        || {
            let (http, base) = (http.clone(), coordinator.base.clone());
            async move { (ready_status(&http, &base).await == Some(503)).then_some(()) }
        },
    )
    .await;

    // Assert: writes are refused, with the reason; reads are served.
    let refused = try_create(&http, &coordinator.base, &p, 2, None).await;
    assert_503(refused, "--disk-reserve").await;
    let read = http
        .get(format!("{}{kept}", coordinator.base))
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 200);

    // Act: room again. Assert: writes are taken within 5 s, by the same process.
    fs.faults().set_available(None);
    eventually_within(Duration::from_secs(5), "writes are taken again", || {
        let (http, base, p) = (http.clone(), coordinator.base.clone(), &p);
        async move { (try_create(&http, &base, p, 3, None).await.status() == 202).then_some(()) }
    })
    .await;
    assert_eq!(ready_status(&http, &coordinator.base).await, Some(200));
    let mut coordinator = coordinator;
    assert!(
        coordinator.child.try_wait().unwrap().is_none(),
        "it restarted"
    );
}

/// Six creates at once on a log that is failing: none may be taken or hang (the client
/// gives up after 30 s). Each is answered 503 with `Retry-After`, or its connection closes as
/// the process stops. Returns how many were answered 503.
async fn creates_while_failing(http: &reqwest::Client, base: &str, p: &Participant) -> usize {
    let writes = (2..8).map(|n| {
        http.post(format!("{base}/reservations"))
            .json(&json!({"participants": [p.link(n)]}))
            .send()
    });
    let mut refused = 0;
    for answer in futures_util::future::join_all(writes).await {
        match answer {
            Ok(answer) => {
                assert_eq!(answer.status(), 503);
                assert!(answer.headers().contains_key("retry-after"));
                refused += 1;
            }
            Err(e) => assert!(!e.is_timeout(), "a request hung: {e}"),
        }
    }
    refused
}

/// Waits for the coordinator to exit; its exit status and the sentence it stopped with.
async fn exited(coordinator: &mut Binary, disk: &Disk) -> (std::process::ExitStatus, String) {
    let status = eventually("the coordinator exits", || {
        let status = coordinator.child.try_wait().unwrap();
        async move { status }
    })
    .await;
    // The process's own last words: sled's threads may still log after them.
    let log = std::fs::read_to_string(disk.log()).unwrap();
    let sentence = log
        .lines()
        .rev()
        .find(|l| l.starts_with("tcc-coordinator: "))
        .unwrap_or_default()
        .to_owned();
    (status, sentence)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and /dev/fuse: mounts a FUSE filesystem"]
async fn a_failed_fsync_is_never_taken_as_durable_and_the_instance_restarts_from_what_the_disk_kept(
) {
    // Arrange
    let disk = Disk::new();
    let fs = disk.mount();
    let mut coordinator = disk.start(&fs, &[]);
    let (http, p) = (client(), Participant::start().await);
    let kept = try_create(&http, &coordinator.base, &p, 1, None).await;
    assert_eq!(kept.status(), 202);
    let kept = kept.headers()["location"].to_str().unwrap().to_owned();

    // Act: every fsync fails from now on, dropping what it could not write.
    fs.faults().set_fsync_fails(true);
    let refused = creates_while_failing(&http, &coordinator.base, &p).await;

    // Assert: nothing written after the failure was acknowledged; the process stops with
    // one sentence and a non-zero status, for its supervisor to restart it.
    assert!(refused > 0, "no create reached the failing log");
    assert_ne!(ready_status(&http, &coordinator.base).await, Some(200));
    let (status, last) = exited(&mut coordinator, &disk).await;
    assert!(!status.success());
    assert!(
        last.starts_with("tcc-coordinator: the transaction log failed (")
            && last.contains("stopped so that a restart reads back what the disk kept"),
        "{last}"
    );

    // Act: the disk is replaced by what it really kept (a power cut drops what the kernel
    // still held), and the coordinator restarts on it.
    fs.faults().cut_power();
    drop(fs);
    let fs = disk.mount();
    let restarted = disk.start(&fs, &[]);

    // Assert: what was acknowledged is there; writes are taken again.
    assert_kept_and_taking_writes(&http, &restarted.base, &p, &kept).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and /dev/fuse: mounts a FUSE filesystem"]
async fn a_disk_that_fills_at_once_never_hangs_a_request_and_writes_resume_once_it_has_room() {
    // Arrange: no reserve, so that the log itself runs into the full disk.
    let disk = Disk::new();
    let fs = disk.mount();
    let mut coordinator = disk.start(&fs, &["--disk-reserve", "0"]);
    let (http, p) = (client(), Participant::start().await);
    let kept = try_create(&http, &coordinator.base, &p, 1, None).await;
    assert_eq!(kept.status(), 202);
    let kept = kept.headers()["location"].to_str().unwrap().to_owned();

    // Act: writes fail with ENOSPC while the disk still claims room.
    fs.faults().set_enospc(true);
    let refused = creates_while_failing(&http, &coordinator.base, &p).await;

    // Assert: no request hangs and none is taken.
    assert!(refused > 0, "no create reached the full log");
    assert_ne!(ready_status(&http, &coordinator.base).await, Some(200));
    fs.faults().set_enospc(false);
    let (status, last) = exited(&mut coordinator, &disk).await;
    assert!(!status.success(), "{last}");
    let restarted = disk.start(&fs, &[]);
    assert_kept_and_taking_writes(&http, &restarted.base, &p, &kept).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and /dev/fuse: mounts a FUSE filesystem"]
async fn a_slow_disk_gets_writes_a_503_within_the_store_timeout_and_shows_its_fsync_latency() {
    // Arrange
    let disk = Disk::new();
    let fs = disk.mount();
    let coordinator = disk.start(&fs, &["--store-timeout", "300ms", "--max-log-queue", "4"]);
    let (http, p) = (client(), Participant::start().await);

    // Act: every fsync takes 2 s; more writes at once than the queue holds.
    fs.faults().set_fsync_delay(Duration::from_secs(2));
    let writes = (0..11).map(|n| try_create(&http, &coordinator.base, &p, n, None));
    let answers = futures_util::future::join_all(writes).await;

    // Assert: every write answered 503, none hung: those admitted once the store timeout
    // passed (the write goes on), the others at once, the queue of writes waiting for the
    // disk full (--max-log-queue) or a flush already late.
    let mut details = Vec::new();
    for answer in answers {
        assert_eq!(answer.status(), 503);
        assert!(answer.headers().contains_key("retry-after"));
        let problem: Value = answer.json().await.unwrap();
        details.push(problem["detail"].as_str().unwrap().to_owned());
    }
    let slow = details
        .iter()
        .filter(|d| d.contains("--store-timeout"))
        .count();
    let busy = details
        .iter()
        .filter(|d| d.contains("--max-log-queue"))
        .count();
    assert!((1..=4).contains(&slow), "{details:#?}");
    assert!(busy >= 1, "{details:#?}");
    eventually("readiness fails while a flush is late", || {
        let (http, base) = (http.clone(), coordinator.base.clone());
        async move { (ready_status(&http, &base).await == Some(503)).then_some(()) }
    })
    .await;

    // The writes answered "slow" went on and are kept once the disk catches up; the
    // others were never stored.
    fs.faults().set_fsync_delay(Duration::ZERO);
    eventually("the slow writes are kept, and the others not", || {
        let (http, base) = (http.clone(), coordinator.base.clone());
        async move {
            let list: Value = http
                .get(format!("{base}/reservations"))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            (list["items"].as_array()?.len() == slow).then_some(())
        }
    })
    .await;
    eventually("readiness returns", || {
        let (http, base) = (http.clone(), coordinator.base.clone());
        async move { (ready_status(&http, &base).await == Some(200)).then_some(()) }
    })
    .await;
    let metrics = http
        .get(format!("{}/metrics", coordinator.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let fsync_seconds: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("tcc_log_fsync_duration_seconds_sum "))
        .expect("the fsync latency is in /metrics")
        .parse()
        .unwrap();
    assert!(fsync_seconds >= 2.0, "{fsync_seconds}");
}
