//! Under systemd (`Type=notify`, see `deploy/`): the binary tells its service manager when it
//! is ready, keeps the watchdog fed, and says when it stops, over the `NOTIFY_SOCKET`
//! datagram socket that systemd would give it (here, one this test listens on).

use std::os::unix::net::UnixDatagram;
use std::process::Command;

use super::helpers::PATIENCE;
use super::{command, Binary};

/// Reads notifications until one contains `wanted`; returns every one read.
fn read_until(socket: &UnixDatagram, wanted: &str, seen: &mut Vec<String>) {
    let mut buffer = [0_u8; 4096];
    loop {
        let n = socket
            .recv(&mut buffer)
            .unwrap_or_else(|e| panic!("no {wanted} after {seen:?}: {e}"));
        let message = String::from_utf8_lossy(&buffer[..n]).into_owned();
        seen.push(message.clone());
        if message.lines().any(|line| line == wanted) {
            return;
        }
    }
}

/// One `GET /health/ready`: whether it answered 200.
fn answers_ready(base: &str) -> bool {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(base.trim_start_matches("http://")).unwrap();
    stream
        .write_all(b"GET /health/ready HTTP/1.0\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200")
}

#[test]
fn under_systemd_it_says_ready_after_recovery_feeds_the_watchdog_and_says_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify");
    let socket = UnixDatagram::bind(&path).unwrap();
    socket.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut command = command(&dir.path().join("data"));
    // A watchdog of 200 ms: pinged every 100 ms.
    command
        .env("NOTIFY_SOCKET", &path)
        .env("WATCHDOG_USEC", "200000");
    let mut coordinator = Binary::launch(command, &dir.path().join("coordinator.log"));

    let mut seen = Vec::new();
    read_until(&socket, "READY=1", &mut seen);
    assert!(
        seen[0].contains("STATUS=recovering"),
        "it says it is recovering before it is ready: {seen:?}"
    );
    // Ready means ready: systemd starts what depends on it at this point.
    assert!(
        answers_ready(&coordinator.base),
        "/health/ready answers 200 once READY=1 is sent"
    );
    for _ in 0..2 {
        read_until(&socket, "WATCHDOG=1", &mut seen);
    }

    Command::new("kill")
        .args(["-TERM", &coordinator.child.id().to_string()])
        .status()
        .unwrap();
    read_until(&socket, "STOPPING=1", &mut seen);
    assert!(
        coordinator.child.wait().unwrap().success(),
        "SIGTERM ends it cleanly"
    );
}

/// `GET /whoami` with this bearer token: the status it answers.
fn status_with_token(base: &str, token: &str) -> u16 {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(base.trim_start_matches("http://")).unwrap();
    write!(
        stream,
        "GET /whoami HTTP/1.0\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Waits until `check` holds.
fn until(what: &str, mut check: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !check() {
        assert!(start.elapsed() < PATIENCE, "waited too long for {what}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// `systemctl reload` sends SIGHUP: the tokens file is read again, so a token is rotated
/// without a restart; a file that cannot be used leaves the tokens as they were; no secret
/// reaches the log either way.
#[test]
fn sighup_reads_the_tokens_file_again_and_a_bad_file_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    let (old, new, bad) = (
        "old-secret-0123456789",
        "new-secret-0123456789",
        "bad-secret-0123456789",
    );
    std::fs::write(&tokens, format!("ci client {old}\n")).unwrap();
    let log = dir.path().join("coordinator.log");
    let mut command = command(&dir.path().join("data"));
    command.arg("--api-tokens-file").arg(&tokens);
    let binary = Binary::spawn(command, &log);
    let hangup = || {
        let pid = binary.child.id().to_string();
        assert!(Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success());
    };
    assert_eq!(status_with_token(&binary.base, old), 200);

    // Rotation: the new token in, the old one out, no restart.
    std::fs::write(&tokens, format!("ci client {new}\n")).unwrap();
    hangup();
    until("the new token", || {
        status_with_token(&binary.base, new) == 200
    });
    assert_eq!(status_with_token(&binary.base, old), 401);

    // A bad line: the tokens stay as they were, and the log says why (without the secret).
    std::fs::write(&tokens, format!("ci client {new}\nbob admin {bad}\n")).unwrap();
    hangup();
    let logged = || std::fs::read_to_string(&log).unwrap_or_default();
    until("the refusal in the log", || {
        logged().contains("kept the API tokens as they were")
    });
    assert!(logged().contains("line 2: unknown role"), "{}", logged());
    assert_eq!(status_with_token(&binary.base, new), 200);
    assert_eq!(status_with_token(&binary.base, bad), 401);

    // Emptied: nobody gets in (never everybody), and the log warns.
    std::fs::write(&tokens, "# nobody for now\n").unwrap();
    hangup();
    until("the warning", || logged().contains("holds no token"));
    assert_eq!(status_with_token(&binary.base, new), 401);
    assert_eq!(status_with_token(&binary.base, "no-token-at-all"), 401);
    for secret in [old, new, bad] {
        assert!(
            !logged().contains(secret),
            "a secret in the log: {}",
            logged()
        );
    }
}
