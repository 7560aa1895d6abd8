//! The `tcc-coordinator` binary: parse flags, start, serve until SIGINT or SIGTERM.

use std::io::Write;
use std::process::ExitCode;

use tcc_coordinator::{telemetry, App, Cli, Storage};

/// mimalloc instead of the system allocator: request handling allocates many small, short-lived
/// buffers, and glibc's malloc was a sixth of the coordinator's CPU time under load. Built with
/// `no_thp`: mimalloc otherwise asks for transparent huge pages, and the kernel then zeroes 2 MiB
/// at each first touch of a fresh page; in a storm of 100,000 deadlines that zeroing was a third
/// of the coordinator's CPU (docs/benchmark.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = match Cli::from_process() {
        Ok(cli) => cli,
        Err(error) => {
            eprintln!("tcc-coordinator: {error}");
            return ExitCode::from(2);
        }
    };
    let config = match cli.into_config() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("tcc-coordinator: {error}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(config.log_format);
    let app = match App::build(config.clone()).await {
        Ok(app) => app,
        Err(error) => {
            eprintln!("tcc-coordinator: {error}");
            return ExitCode::FAILURE;
        }
    };
    let base = app.base_url().to_owned();
    let dir = app
        .data_dir()
        .map(|d| d.display().to_string())
        .unwrap_or_default();
    let log = match &config.storage {
        Storage::Ephemeral => format!("{dir} (temporary, removed at exit)"),
        Storage::Dir(_) => dir,
        Storage::Postgres(_) => "PostgreSQL, shared with the other instances (--store)".into(),
    };
    if let Some(path) = &config.port_file {
        // Written whole then renamed, so a reader never sees half a port.
        let partial = path.with_extension("partial");
        let written = std::fs::write(&partial, format!("{}\n", app.local_addr().port()))
            .and_then(|()| std::fs::rename(&partial, path));
        if let Err(error) = written {
            eprintln!(
                "tcc-coordinator: cannot write --port-file {}: {error}",
                path.display()
            );
            return ExitCode::FAILURE;
        }
    }
    // A test suite may read the first line and close the pipe: a failed write is no reason
    // to stop serving (println! would panic).
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "tcc-coordinator listening on {base}")
        .and_then(|()| writeln!(out, "  API:        {base}/reservations"))
        .and_then(|()| writeln!(out, "  Swagger UI: {base}/docs"))
        .and_then(|()| writeln!(out, "  dashboard:  {base}/ui"))
        .and_then(|()| writeln!(out, "  log:        {log}"))
        .and_then(|()| out.flush());
    drop(out);

    let stop = app.stop_handle();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("stopping: finishing open requests");
        stop.stop();
    });
    match app.run_until_stopped().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tcc-coordinator: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
