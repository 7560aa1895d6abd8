//! `tcc-participant-check`: runs the participant contract against a live service.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use reqwest::header::{HeaderName, HeaderValue};
use tcc_participant_check::{check, Expiry, Options};
use url::Url;

/// Checks a participant service, written in any language, against tcc-coordinator's
/// participant contract (openapi/participant.yaml): repeated tries, reused keys, idempotent
/// confirms and cancels, a confirm racing a cancel, unknown links, and (opt-in) expiry.
///
/// It makes holds with --body and confirms some of them: point it at a test instance, not
/// at production. It cancels every hold it made and did not settle. Exit status: 0 when
/// every rule held, 1 when one broke, 2 when it could not run (bad arguments, or nothing
/// answers at --try-url).
#[derive(Debug, Parser)]
#[command(name = "tcc-participant-check", version)]
struct Args {
    /// The service's try URL (POST), as a client would give it to the coordinator as `try.url`.
    #[arg(long, value_name = "URL")]
    try_url: Url,
    /// A JSON body the service holds, as a client would give it as `try.body`. The checker
    /// makes about 30 holds with it (plus --races): give one the service can hold that often.
    #[arg(long, value_name = "JSON")]
    body: String,
    /// Another body for the reused-key rule (default: --body with one member more).
    #[arg(long, value_name = "JSON")]
    other_body: Option<String>,
    /// A header every try carries, as `try.headers` would (repeat for several).
    #[arg(long = "header", value_name = "'NAME: VALUE'")]
    headers: Vec<String>,
    /// Write the verdicts as JUnit XML to FILE, for CI systems.
    #[arg(long, value_name = "FILE")]
    junit: Option<PathBuf>,
    /// How long one call may take (the coordinator's per-call timeout).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// How many holds to race a confirm and a cancel on.
    #[arg(long, default_value_t = 20)]
    races: usize,
    /// Check expiry too: the service keeps a hold at most this long past TCC-Deadline
    /// (the kit's `deadline_margin`). The rule waits that long, plus --expiry-deadline.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    expiry_margin: Option<Duration>,
    /// The expiry rule's deadline, from now.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    expiry_deadline: Duration,
}

fn options(args: &Args) -> Result<Options, String> {
    if !matches!(args.try_url.scheme(), "http" | "https") {
        return Err(format!(
            "--try-url must be http or https, not {}",
            args.try_url.scheme()
        ));
    }
    let json = |flag: &str, text: &str| {
        serde_json::from_str::<serde_json::Value>(text)
            .map_err(|e| format!("{flag} is not JSON: {e}"))
    };
    let mut options = Options::new(args.try_url.clone(), json("--body", &args.body)?);
    options.other_body = args
        .other_body
        .as_deref()
        .map(|b| json("--other-body", b))
        .transpose()?;
    for header in &args.headers {
        let (name, value) = header
            .split_once(':')
            .ok_or_else(|| format!("--header '{header}' is not 'Name: value'"))?;
        let name = HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| {
            format!(
                "--header '{header}': `{}` is not a header name",
                name.trim()
            )
        })?;
        let value = HeaderValue::from_str(value.trim())
            .map_err(|_| format!("--header '{header}': the value is not a header value"))?;
        options.headers.push((name, value));
    }
    options.timeout = args.timeout;
    options.patience = args.timeout * 2;
    options.races = args.races;
    options.expiry = args.expiry_margin.map(|margin| Expiry {
        margin,
        deadline_in: args.expiry_deadline,
    });
    Ok(options)
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let options = match options(&args) {
        Ok(options) => options,
        Err(e) => {
            eprintln!("tcc-participant-check: {e}");
            return ExitCode::from(2);
        }
    };
    let report = match check(options).await {
        Ok(report) => report,
        Err(e) => {
            eprintln!("tcc-participant-check: {e}");
            return ExitCode::from(2);
        }
    };
    print!("{report}");
    if let Some(path) = &args.junit {
        if let Err(e) = std::fs::write(path, report.junit()) {
            eprintln!(
                "tcc-participant-check: cannot write {}: {e}",
                path.display()
            );
            return ExitCode::from(2);
        }
    }
    if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
