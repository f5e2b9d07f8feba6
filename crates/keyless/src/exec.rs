//! `keyless exec [--config FILE] -- CMD [ARGS...]`: keyless in-process on ephemeral loopback ports
//! for the length of one command (a CI step, a script on a laptop). CMD starts once every
//! configured identity holds a credential, with each served cloud's native environment (the same
//! variables `keyless dev` writes to its env file) and without the local credentials its SDKs
//! would rank above them ([`crate::setaside`]).
//!
//! Conventions of `env`, `timeout` and `docker run`: exit 125 for keyless's own failures (an
//! identity that cannot get a credential ends it at once, one that keeps failing transiently at
//! `--ready-timeout`), 126 when CMD cannot run, 127 when it is not found, otherwise CMD's status
//! (128+N when signal N ended it). SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 are
//! passed on to CMD, and CMD dies with keyless: it is started through `keyless exec-supervised`,
//! which asks the kernel for SIGKILL when keyless ends (`PR_SET_PDEATHSIG`, a safe call on the
//! calling process) and then replaces itself with CMD (`execve` keeps that setting). No `unsafe`
//! `pre_exec` hook is needed.

use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, ExitStatus};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use keyless_core::clock::SystemClock;
use keyless_core::{AppEnvVar, Context, ErrorClass, IdentityStatus, Readiness};
use rustix::process::Signal;
use tokio::signal::unix::{SignalKind, signal};
use tracing::info;

use crate::config::Overrides;
use crate::providers::{self, Choice};
use crate::serve::Sidecar;
use crate::setaside::{self, SetAside};

/// How often readiness is looked at while CMD waits to start.
const READY_POLL: Duration = Duration::from_millis(50);

/// An identity still without a credential after this long gets one progress line.
pub const PROGRESS_AFTER: Duration = Duration::from_secs(2);

/// keyless's own failure (`env`, `timeout`, `docker run`).
pub const EXIT_OWN_FAILURE: u8 = 125;
/// CMD was found but cannot be run.
pub const EXIT_CANNOT_RUN: u8 = 126;
/// CMD was not found.
pub const EXIT_NOT_FOUND: u8 = 127;

/// The longest `--ready-timeout` (a day): beyond it the deadline arithmetic would overflow.
pub const MAX_READY_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// Signals passed on to CMD, with the name logs give them.
const FORWARDED: [(&str, Signal); 6] = [
    ("SIGINT", Signal::INT),
    ("SIGTERM", Signal::TERM),
    ("SIGHUP", Signal::HUP),
    ("SIGQUIT", Signal::QUIT),
    ("SIGUSR1", Signal::USR1),
    ("SIGUSR2", Signal::USR2),
];

#[derive(Debug)]
pub struct ExecOptions {
    pub config: Option<PathBuf>,
    pub ready_timeout: Duration,
    pub command: Vec<String>,
    /// Variables (or file variables) the command keeps although they shadow keyless.
    pub keep_env: Vec<String>,
    pub choice: Choice,
}

pub async fn exec(opts: ExecOptions) -> ExitCode {
    match run(opts).await {
        Ok(code) => code,
        Err(e) => own_failure("keyless exec", &e),
    }
}

/// Exit 125 with `message` on stderr.
#[allow(clippy::print_stderr)] // CMD owns stdout; this is keyless's own last word
pub fn own_failure(who: &str, message: &str) -> ExitCode {
    eprintln!("{who}: {message}");
    ExitCode::from(EXIT_OWN_FAILURE)
}

/// keyless serving in this process on loopback ports, for `exec` and `token`.
pub struct InProcess {
    /// The command's environment: each served cloud's variables.
    pub env: Vec<AppEnvVar>,
    /// What was set aside for the command ([`InProcess::start`]'s `keep`).
    pub set_aside: Option<SetAside>,
    readiness: Vec<Arc<dyn Readiness>>,
    stop: tokio::sync::oneshot::Sender<()>,
    serving: tokio::task::JoinHandle<Result<(), crate::serve::ServeError>>,
}

impl InProcess {
    /// Loads the configuration, starts the chosen providers and serves them on ephemeral
    /// loopback ports. Logs warnings and errors to stderr unless the config says otherwise. With
    /// `keep`, also sets aside the local credentials the served clouds' SDKs would rank above
    /// keyless for a command ([`setaside::plan`]), but the variables `keep` names.
    pub async fn start(config: Option<&Path>, choice: &Choice, keep: Option<&[String]>) -> Result<Self, String> {
        let loopback = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        let overrides = Overrides { listen: loopback, admin_listen: loopback };
        let (config, sections, _skipped) = crate::load_config(config, &overrides)?;
        crate::logging::init(Some(config.log.as_deref().unwrap_or("warn")), config.log_format)
            .map_err(|e| config.env_keys.name_in(&e))?;
        let ctx = Context::new(
            Arc::new(SystemClock),
            crate::metrics(),
            config.one_client_cache_policy(),
            config.watch_options(),
        );
        let started = providers::start_chosen(sections, &ctx, &ctx.env(), choice).await.map_err(|e| e.to_string())?;
        let served: Vec<&'static str> = started.iter().map(|p| p.name).collect();
        let sidecar =
            Sidecar::bind(config.listen, config.admin_listen, started, &ctx, false).await.map_err(|e| e.to_string())?;
        let readiness = sidecar.readiness();
        let env = sidecar.app_env();
        let set_aside = match keep {
            Some(keep) => Some(setaside::plan(
                &providers::shadowing(served.iter().copied()),
                &setaside::Host::process(),
                keep,
                &|provider, dir| sidecar.stand_in(provider, dir),
            )?),
            None => None,
        };
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let serving = tokio::spawn(sidecar.run(async move {
            let _ = stop_rx.await;
        }));
        Ok(Self { env, set_aside, readiness, stop, serving })
    }

    /// Waits until every configured identity holds a credential (see [`wait_until_ready`]).
    pub async fn ready(&self, timeout: Duration, who: &str) -> Result<(), String> {
        wait_until_ready(&self.readiness, timeout, who).await
    }

    /// The value of one of the command's variables.
    pub fn var(&self, name: &str) -> Option<&str> {
        self.env.iter().find(|v| v.name == name).map(AppEnvVar::file_value)
    }

    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.serving.await;
    }
}

async fn run(opts: ExecOptions) -> Result<ExitCode, String> {
    if opts.command.is_empty() {
        return Err("no command given: keyless exec -- CMD [ARGS...]".to_owned());
    }
    // Before anything needs cleaning up: a signal while CMD waits ends keyless in order.
    let mut signals = Signals::listen()?;
    let mut keyless = InProcess::start(opts.config.as_deref(), &opts.choice, Some(&opts.keep_env)).await?;
    let set_aside = keyless.set_aside.take().unwrap_or_default();
    let outcome = async {
        report(&set_aside);
        tokio::select! {
            ready = keyless.ready(opts.ready_timeout, "keyless exec") => ready?,
            Some((name, signal)) = signals.next() => return Ok(not_started(name, signal)),
        }
        run_command(&opts.command, &keyless.env, &set_aside, &mut signals).await.map(exit_code)
    }
    .await;
    keyless.stop().await;
    outcome
}

/// The [`FORWARDED`] signals as they arrive, listened for from the start of `keyless exec`: one
/// that comes before CMD runs ends keyless in order (the private directory of [`SetAside`]
/// removed) instead of killing it where it stands; afterwards each is passed on to CMD.
struct Signals(tokio::sync::mpsc::Receiver<(&'static str, Signal)>);

impl Signals {
    fn listen() -> Result<Self, String> {
        let (tx, rx) = tokio::sync::mpsc::channel(FORWARDED.len());
        for (name, forward) in FORWARDED {
            let kind = SignalKind::from_raw(forward.as_raw());
            let mut listener = signal(kind).map_err(|e| format!("cannot listen for {name}: {e}"))?;
            let tx = tx.clone();
            // While the channel is full, tokio coalesces further deliveries of this signal.
            tokio::spawn(async move {
                while listener.recv().await.is_some() {
                    if tx.send((name, forward)).await.is_err() {
                        break;
                    }
                }
            });
        }
        Ok(Self(rx))
    }

    async fn next(&mut self) -> Option<(&'static str, Signal)> {
        self.0.recv().await
    }
}

/// A signal ended `keyless exec` before CMD started: 128+N, as if it had ended CMD.
#[allow(clippy::print_stderr)] // keyless's own last word
fn not_started(name: &str, signal: Signal) -> ExitCode {
    eprintln!("keyless exec: {name} before the command started; it was not run");
    ExitCode::from(u8::try_from(128 + signal.as_raw()).unwrap_or(EXIT_OWN_FAILURE))
}

#[allow(clippy::print_stderr)] // one line per run, whatever the log level
fn report(set_aside: &SetAside) {
    if let Some(line) = set_aside.line("keyless exec", "for the command (--keep-env NAME keeps one)") {
        eprintln!("{line}");
    }
    for warning in &set_aside.warnings {
        eprintln!("keyless exec: could not set aside {warning}");
    }
}

/// Waits until every configured identity holds a credential. Ends at once when one failed in a
/// way that cannot heal (access denied, an untrusted issuer, an unset token variable: the
/// adapters class these as terminal); transient failures are retried until `timeout`. An
/// identity still waiting after [`PROGRESS_AFTER`] gets one progress line on stderr.
pub async fn wait_until_ready(readiness: &[Arc<dyn Readiness>], timeout: Duration, who: &str) -> Result<(), String> {
    let started = tokio::time::Instant::now();
    let since = keyless_core::clock::Clock::now(&SystemClock);
    let deadline = started + timeout;
    let mut announced: Vec<(String, String)> = Vec::new();
    loop {
        let statuses: Vec<IdentityStatus> = readiness.iter().flat_map(|r| r.statuses()).collect();
        if statuses.iter().all(IdentityStatus::ready) {
            info!(identities = statuses.len(), "every identity holds a credential; starting the command");
            return Ok(());
        }
        let hopeless: Vec<&IdentityStatus> = statuses
            .iter()
            .filter(|s| !s.ready() && s.last_error.as_ref().is_some_and(|e| e.class == ErrorClass::Terminal))
            .collect();
        if !hopeless.is_empty() {
            return Err(cannot_heal(&hopeless));
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(not_ready(&statuses, timeout));
        }
        if started.elapsed() >= PROGRESS_AFTER {
            for s in statuses.iter().filter(|s| !s.ready()) {
                let id = (s.identity.clone(), s.key.clone());
                if !announced.contains(&id) {
                    progress(who, s, since);
                    announced.push(id);
                }
            }
        }
        tokio::time::sleep(READY_POLL).await;
    }
}

fn progress(who: &str, s: &IdentityStatus, since: SystemTime) {
    progress_line(who, &waiting_for(s), since);
}

/// What a progress line waits for: the credential as `/readyz` names it, and why.
fn waiting_for(s: &IdentityStatus) -> String {
    let why = match &s.last_error {
        Some(e) => format!("the last attempt failed: {}", e.message),
        None => "the exchange has not answered yet".to_owned(),
    };
    format!("{} ({why})", s.name())
}

/// `WHO: waiting for WHAT since TIME`: one line per identity whose exchange is slow.
#[allow(clippy::print_stderr)] // the user waits and reads stderr
pub fn progress_line(who: &str, what: &str, since: SystemTime) {
    eprintln!("{who}: waiting for {what} since {}", humantime::format_rfc3339_seconds(since));
}

/// One identity's reason, with the adapter's fix.
fn reason(s: &IdentityStatus) -> String {
    let mut text = format!("\n  {}: ", s.name());
    match &s.last_error {
        Some(e) => {
            text.push_str(&e.message);
            if let Some(hint) = &e.hint {
                text.push_str(&format!(" (fix: {hint})"));
            }
        }
        None => text.push_str("still fetching"),
    }
    text
}

fn cannot_heal(statuses: &[&IdentityStatus]) -> String {
    let mut text =
        "an identity cannot get a credential until its configuration changes; the command was not run:".to_owned();
    for s in statuses {
        text.push_str(&reason(s));
    }
    text.push_str("\nrun `keyless check` with the same configuration for a full diagnosis");
    text
}

fn not_ready(statuses: &[IdentityStatus], timeout: Duration) -> String {
    let mut text = format!(
        "not every credential was ready within {} (--ready-timeout); the command was not run:",
        humantime::format_duration(timeout)
    );
    for s in statuses.iter().filter(|s| !s.ready()) {
        text.push_str(&reason(s));
    }
    text.push_str("\nrun `keyless check` with the same configuration for a full diagnosis");
    text
}

/// Runs CMD (through `keyless exec-supervised`) with the app environment, without what was set
/// aside and without keyless's own `KEYLESS_*` settings, passing `signals` on, until it exits.
async fn run_command(
    command: &[String],
    env: &[AppEnvVar],
    set_aside: &SetAside,
    signals: &mut Signals,
) -> Result<ExitStatus, String> {
    let supervisor = std::env::current_exe().map_err(|e| format!("cannot find the keyless binary to run: {e}"))?;
    let mut cmd = tokio::process::Command::new(supervisor);
    cmd.arg("exec-supervised").arg("--parent").arg(std::process::id().to_string()).arg("--").args(command);
    // CMD gets keyless's secrets only as the native variables it needs (AWS_CONTAINER_AUTHORIZATION_TOKEN,
    // IDENTITY_HEADER), never as keyless's own settings.
    keyless_core::appenv::remove_keyless_settings(&mut cmd);
    for var in &set_aside.remove {
        cmd.env_remove(var);
    }
    cmd.envs(set_aside.set.iter().map(|(k, v)| (*k, v.as_str())));
    cmd.envs(env.iter().map(|v| (v.name.as_str(), v.file_value())));
    let program = &command[0];
    let mut child = cmd.spawn().map_err(|e| format!("cannot start {program}: {e}"))?;
    let pid = child.id().and_then(|id| i32::try_from(id).ok()).and_then(rustix::process::Pid::from_raw);
    loop {
        tokio::select! {
            status = child.wait() => return status.map_err(|e| format!("waiting for {program}: {e}")),
            Some((name, forward)) = signals.next() => {
                if let Some(pid) = pid {
                    info!(signal = name, "passing the signal on to the command");
                    let _ = rustix::process::kill_process(pid, forward);
                }
            }
        }
    }
}

/// CMD's exit code; a signal N that ended it is 128+N, as shells report it.
fn exit_code(status: ExitStatus) -> ExitCode {
    let code = status.code().or_else(|| status.signal().map(|n| 128 + n)).unwrap_or(1);
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

/// `keyless exec-supervised --parent PID -- CMD`: the process `keyless exec` starts. It asks
/// the kernel to SIGKILL it when its parent ends, checks the parent is still `parent` (it may
/// have ended before the request), then becomes CMD, which keeps the request. Exits 127 when CMD
/// is not found, 126 when it cannot run.
#[allow(clippy::print_stderr)]
pub fn supervised(parent: i32, command: &[String]) -> ExitCode {
    use std::os::unix::process::CommandExt as _;
    let Some((program, args)) = command.split_first() else {
        return own_failure("keyless exec", "no command given");
    };
    if let Err(e) = rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL)) {
        return own_failure("keyless exec", &format!("cannot tie {program} to keyless's lifetime: {e}"));
    }
    let parent_alive = rustix::process::getppid().is_some_and(|p| p.as_raw_nonzero().get() == parent);
    if !parent_alive {
        return own_failure("keyless exec", "keyless ended before the command started");
    }
    let err = std::process::Command::new(program).args(args).exec();
    eprintln!("keyless exec: cannot run {program}: {err}");
    ExitCode::from(if err.kind() == std::io::ErrorKind::NotFound { EXIT_NOT_FOUND } else { EXIT_CANNOT_RUN })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The credential as `/readyz` names it: no empty key (`aws ARN  (...)`), a key in parentheses.
    #[test]
    fn a_progress_line_names_the_credential_as_readyz_does() {
        let status = |key: &str| IdentityStatus {
            provider: "gcp",
            identity: "app@p.iam.gserviceaccount.com".to_owned(),
            key: key.to_owned(),
            valid_until: None,
            last_error: None,
        };
        assert_eq!(waiting_for(&status("")), "gcp app@p.iam.gserviceaccount.com (the exchange has not answered yet)");
        assert_eq!(
            waiting_for(&status("access token, scopes cloud-platform")),
            "gcp app@p.iam.gserviceaccount.com (access token, scopes cloud-platform) (the exchange has not answered yet)"
        );
    }
}
