//! The `tcc-coordinator` binary: parse flags, start, serve until SIGINT or SIGTERM.

use std::process::ExitCode;

use clap::Parser;
use tcc_coordinator::{telemetry, App, Cli, Storage};

#[tokio::main]
async fn main() -> ExitCode {
    let config = match Cli::parse().into_config() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("tcc-coordinator: {error}");
            return ExitCode::from(2);
        }
    };
    telemetry::init();
    let app = match App::build(config.clone()).await {
        Ok(app) => app,
        Err(error) => {
            eprintln!("tcc-coordinator: {error}");
            return ExitCode::FAILURE;
        }
    };
    let base = format!("http://{}", app.local_addr());
    let log = match &config.storage {
        Storage::Ephemeral => format!("{} (temporary, removed at exit)", app.data_dir().display()),
        Storage::Dir(_) => app.data_dir().display().to_string(),
    };
    println!("tcc-coordinator listening on {base}");
    println!("  API:        {base}/reservations");
    println!("  Swagger UI: {base}/docs");
    println!("  log:        {log}");

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
