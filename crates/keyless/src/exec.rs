//! `keyless exec [--config FILE] -- CMD [ARGS...]`: keyless in-process on ephemeral loopback ports
//! for the length of one command (a CI step, a script on a laptop). CMD starts once every
//! configured identity holds a credential, with each enabled cloud's native environment (the same
//! variables `keyless dev` writes to its env file); SIGINT and SIGTERM are passed on to it; keyless
//! exits with CMD's status (128+N when a signal N ended it) and stops.

use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt as _;
use std::path::PathBuf;
use std::process::{ExitCode, ExitStatus};
use std::sync::Arc;
use std::time::Duration;

use keyless_core::clock::SystemClock;
use keyless_core::{AppEnvVar, Context, IdentityStatus, Metrics, Readiness};
use tokio::signal::unix::{SignalKind, signal};
use tracing::info;

use crate::config::Overrides;
use crate::providers;
use crate::serve::Sidecar;

/// How often readiness is looked at while CMD waits to start.
const READY_POLL: Duration = Duration::from_millis(50);

/// Variables that would make an SDK ignore what keyless serves (static keys come first in every
/// AWS SDK's chain; a credentials file first in Google's), removed from CMD's environment when
/// the cloud they shadow is served.
const SHADOWING: [(&str, &[&str]); 2] = [
    (
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        &["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"],
    ),
    ("GCE_METADATA_HOST", &["GOOGLE_APPLICATION_CREDENTIALS"]),
];

#[derive(Debug)]
pub struct ExecOptions {
    pub config: Option<PathBuf>,
    pub ready_timeout: Duration,
    pub command: Vec<String>,
}

pub async fn exec(opts: ExecOptions) -> ExitCode {
    match run(opts).await {
        Ok(code) => code,
        Err(e) => crate::fail(&e),
    }
}

async fn run(opts: ExecOptions) -> Result<ExitCode, String> {
    let loopback = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    let overrides = Overrides { listen: loopback, admin_listen: loopback };
    let (config, sections, _skipped) = crate::load_config(opts.config.as_deref(), &overrides)?;
    // CMD owns stdout; keyless logs warnings and errors to stderr unless told otherwise.
    crate::logging::init(Some(config.log.as_deref().unwrap_or("warn")), config.log_format)?;
    let ctx = Context::new(Arc::new(SystemClock), Metrics::new(), config.cache_policy(), config.watch_options());
    let process_env = |name: &str| std::env::var(name).ok();
    let started = providers::start_all(sections, &ctx, &process_env).await.map_err(|e| e.to_string())?;
    let sidecar =
        Sidecar::bind(config.listen, config.admin_listen, started, &ctx, false).await.map_err(|e| e.to_string())?;
    let readiness = sidecar.readiness();
    let env = sidecar.app_env();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(sidecar.run(async move {
        let _ = stop_rx.await;
    }));
    let outcome = match wait_until_ready(&readiness, opts.ready_timeout).await {
        Ok(()) => run_command(&opts.command, &env).await,
        Err(e) => Err(e),
    };
    let _ = stop_tx.send(());
    let _ = serving.await;
    outcome.map(exit_code)
}

/// Waits until every configured identity holds a credential, or says which do not and why.
async fn wait_until_ready(readiness: &[Arc<dyn Readiness>], timeout: Duration) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let statuses: Vec<IdentityStatus> = readiness.iter().flat_map(|r| r.statuses()).collect();
        if statuses.iter().all(IdentityStatus::ready) {
            info!(identities = statuses.len(), "every identity holds a credential; starting the command");
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(not_ready(&statuses, timeout));
        }
        tokio::time::sleep(READY_POLL).await;
    }
}

fn not_ready(statuses: &[IdentityStatus], timeout: Duration) -> String {
    let mut text = format!(
        "not every credential was ready within {} (--ready-timeout); the command was not run:",
        humantime::format_duration(timeout)
    );
    for s in statuses.iter().filter(|s| !s.ready()) {
        text.push_str(&format!("\n  {}: ", s.name()));
        match &s.last_error {
            Some(e) => {
                text.push_str(&e.message);
                if let Some(hint) = &e.hint {
                    text.push_str(&format!(" (fix: {hint})"));
                }
            }
            None => text.push_str("still fetching"),
        }
    }
    text.push_str("\nrun `keyless check` with the same configuration for a full diagnosis");
    text
}

/// Runs CMD with the app environment, passing SIGINT and SIGTERM on, until it exits.
async fn run_command(command: &[String], env: &[AppEnvVar]) -> Result<ExitStatus, String> {
    let (program, args) = command.split_first().ok_or("no command given: keyless exec -- CMD [ARGS...]")?;
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args).envs(env.iter().map(|v| (v.name.as_str(), v.file_value())));
    for (served, shadows) in SHADOWING {
        if env.iter().any(|v| v.name == served) {
            for var in shadows {
                cmd.env_remove(var);
            }
        }
    }
    let mut child = cmd.spawn().map_err(|e| format!("cannot run {program}: {e}"))?;
    let pid = child.id().and_then(|id| i32::try_from(id).ok()).and_then(rustix::process::Pid::from_raw);
    let mut interrupt = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    let mut terminate = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    loop {
        let forward = tokio::select! {
            status = child.wait() => return status.map_err(|e| format!("waiting for {program}: {e}")),
            _ = interrupt.recv() => rustix::process::Signal::INT,
            _ = terminate.recv() => rustix::process::Signal::TERM,
        };
        if let Some(pid) = pid {
            info!(signal = ?forward, "passing the signal on to the command");
            let _ = rustix::process::kill_process(pid, forward);
        }
    }
}

/// CMD's exit code; a signal N that ended it is 128+N, as shells report it.
fn exit_code(status: ExitStatus) -> ExitCode {
    let code = status.code().or_else(|| status.signal().map(|n| 128 + n)).unwrap_or(1);
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
