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
