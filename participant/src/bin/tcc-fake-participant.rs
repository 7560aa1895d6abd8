//! `tcc-fake-participant`: the scriptable fake participant as a program, for test suites in
//! any language. `--listen 127.0.0.1:0 --port-file FILE` picks a free port and writes it
//! to FILE once it serves.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use tcc_participant::fake::{FakeParticipant, FakeSettings};

/// A fake TCC participant with a control API: script answers (`POST /_script`), read the
/// calls received (`GET /_calls`) and the holds (`GET /_holds`), start over (`POST /_reset`).
/// Its OpenAPI document is at `/openapi.json`.
#[derive(Debug, Parser)]
#[command(name = "tcc-fake-participant", version)]
struct Args {
    /// Where to listen; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:8090")]
    listen: SocketAddr,
    /// Write the port it listens on to this file (atomically, once it serves).
    #[arg(long)]
    port_file: Option<PathBuf>,
    /// How long holds live unless confirmed, in seconds.
    #[arg(long, default_value_t = 60)]
    hold_ttl_secs: u64,
    /// How long a hold may outlive its reservation's deadline (TCC-Deadline), in seconds.
    #[arg(long, default_value_t = 30)]
    deadline_margin_secs: u64,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let fake = FakeParticipant::start_with(FakeSettings {
        listen: args.listen,
        hold_ttl: Duration::from_secs(args.hold_ttl_secs),
        deadline_margin: Duration::from_secs(args.deadline_margin_secs),
    })
    .await?;
    let port = fake.url().rsplit(':').next().unwrap_or_default().to_owned();
    if let Some(path) = &args.port_file {
        // Written beside, then renamed: a reader never sees a half-written port.
        let partial = path.with_extension("partial");
        std::fs::write(&partial, &port)?;
        std::fs::rename(&partial, path)?;
    }
    println!(
        "tcc-fake-participant on {} (tries: POST {}/holds)",
        fake.url(),
        fake.url()
    );
    shutdown_signal().await;
    fake.stop().await
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM can be handled");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
