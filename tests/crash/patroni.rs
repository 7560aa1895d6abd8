//! The Patroni cluster `.ci/patroni.sh` started, driven as an operator would: who leads, a
//! switchover, the leader's node killed or stopped (SIGSTOP: silent, as behind a partition)
//! and brought back. Blocking calls, each bounded: the failover tests and the chaos soak's
//! nemesis (which includes this file) share them.

// Each includer uses part of it.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

/// The cluster, from the variables `.ci/patroni.sh` exports.
pub struct Patroni {
    pub dir: PathBuf,
    pub nodes: Vec<String>,
    /// The multi-host URL with `target_session_attrs=read-write`.
    pub url: String,
}

impl Patroni {
    /// # Panics
    /// When `.ci/patroni.sh` was not sourced.
    pub fn from_env() -> Self {
        let var = |name: &str| {
            std::env::var(name).unwrap_or_else(|_| {
                panic!("this needs the Patroni cluster `.ci/patroni.sh` starts: {name} is unset")
            })
        };
        Self {
            dir: var("TCC_TEST_PATRONI_DIR").into(),
            nodes: var("TCC_TEST_PATRONI_NODES")
                .split_whitespace()
                .map(str::to_owned)
                .collect(),
            url: var("TCC_TEST_PATRONI"),
        }
    }

    fn file(&self, node: &str, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(node).join(name))
            .unwrap_or_default()
            .trim()
            .to_owned()
    }

    /// The port `node`'s PostgreSQL listens on.
    pub fn pg_port(&self, node: &str) -> String {
        self.file(node, "pg_port")
    }

    fn rest(&self, node: &str) -> String {
        format!("127.0.0.1:{}", self.file(node, "rest_port"))
    }

    /// The members as the first node that answers sees them.
    pub fn members(&self) -> Option<Vec<Value>> {
        self.nodes.iter().find_map(|node| {
            let (status, body) = http(&self.rest(node), "GET", "/cluster", None, 2)?;
            let cluster: Value = (status == 200).then(|| serde_json::from_str(&body).ok())??;
            cluster["members"].as_array().cloned()
        })
    }

    /// The running leader and the streaming synchronous standby, when there are both.
    pub fn leader_and_standby(&self) -> Option<(String, String)> {
        let members = self.members()?;
        let named = |role: &str| {
            members
                .iter()
                .find(|m| {
                    m["role"] == role
                        && matches!(m["state"].as_str(), Some("running" | "streaming"))
                })
                .and_then(|m| m["name"].as_str().map(str::to_owned))
        };
        Some((named("leader")?, named("sync_standby")?))
    }

    /// A planned switchover from `leader` to `candidate`; returns once Patroni answered.
    ///
    /// # Errors
    /// Patroni's answer when it refused.
    pub fn switchover(&self, leader: &str, candidate: &str) -> Result<(), String> {
        let body = json!({"leader": leader, "candidate": candidate}).to_string();
        match http(&self.rest(leader), "POST", "/switchover", Some(&body), 60) {
            Some((200, _)) => Ok(()),
            other => Err(format!(
                "switchover from {leader} to {candidate}: {other:?}"
            )),
        }
    }

    /// Every process of `node`: its Patroni (and what started it), its postmaster (which
    /// Patroni starts detached), and their descendants.
    pub fn processes(&self, node: &str) -> Vec<u32> {
        let config = self.dir.join(node).join("patroni.yml");
        let config = config.to_str().unwrap();
        // (pid, parent, command line) of every process.
        let all: Vec<(u32, u32, String)> = std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|entry| {
                let pid: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
                // pid (comm) state ppid …: the command may hold spaces and parentheses.
                let parent = stat[stat.rfind(')')? + 2..]
                    .split_whitespace()
                    .nth(1)?
                    .parse()
                    .ok()?;
                let command = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
                Some((
                    pid,
                    parent,
                    String::from_utf8_lossy(&command).replace('\0', " "),
                ))
            })
            .collect();
        let mut found: Vec<u32> = all
            .iter()
            .filter(|(_, _, command)| command.contains(config))
            .map(|(pid, _, _)| *pid)
            .collect();
        found.extend(self.file(node, "patroni.pid").parse::<u32>().ok());
        let postmaster = std::fs::read_to_string(self.dir.join(node).join("data/postmaster.pid"))
            .ok()
            .and_then(|text| text.lines().next()?.trim().parse::<u32>().ok());
        found.extend(postmaster);
        found.sort_unstable();
        found.dedup();
        found.retain(|pid| all.iter().any(|(p, _, _)| p == pid));
        let mut next = 0;
        while next < found.len() {
            let parent = found[next];
            for (pid, _, _) in all.iter().filter(|(_, p, _)| *p == parent) {
                if !found.contains(pid) {
                    found.push(*pid);
                }
            }
            next += 1;
        }
        found
    }

    /// Sends `signal` (`KILL`, `STOP`, `CONT`) to every process of `node`. A backend may end
    /// between the listing and the signal: that one is passed over.
    ///
    /// # Panics
    /// When `node` has no process.
    pub fn signal(&self, node: &str, signal: &str) {
        let pids = self.processes(node);
        assert!(!pids.is_empty(), "no process of {node} found");
        let _ = Command::new("kill")
            .arg(format!("-{signal}"))
            .args(pids.iter().map(ToString::to_string))
            .stderr(std::process::Stdio::null())
            .status();
    }

    /// Starts `node`'s Patroni again (after a kill); it rejoins as a replica.
    ///
    /// # Panics
    /// When the start script fails.
    pub fn start(&self, node: &str) {
        let status = Command::new("sh")
            .arg(self.dir.join(node).join("start"))
            .status()
            .unwrap();
        assert!(status.success());
    }
}

/// One HTTP/1.0 request to Patroni's REST API: the status and body, or `None` when it did not
/// answer within `secs`.
fn http(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
    secs: u64,
) -> Option<(u16, String)> {
    let limit = Duration::from_secs(secs);
    let mut stream = TcpStream::connect_timeout(&addr.parse().ok()?, limit).ok()?;
    stream.set_read_timeout(Some(limit)).ok()?;
    stream.set_write_timeout(Some(limit)).ok()?;
    let body = body.unwrap_or("");
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    let status = answer.split_whitespace().nth(1)?.parse().ok()?;
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Some((status, body.to_owned()))
}
