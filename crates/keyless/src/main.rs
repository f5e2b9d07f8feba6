//! The `keyless` binary: CLI, configuration, composition of the cloud adapters, listeners,
//! logging and signals. No protocol logic lives here (see ARCHITECTURE.md).
#![forbid(unsafe_code)]

mod admin;
mod check;
mod config;
mod credential_process;
#[cfg(feature = "emulator")]
mod dev;
mod exec;
#[cfg(feature = "inject")]
mod inject;
mod logging;
mod probe;
mod providers;
mod serve;
#[cfg(feature = "webhook")]
mod webhook;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use keyless_core::clock::SystemClock;
use keyless_core::{Context, Metrics};
use tracing::{error, warn};

use crate::config::{Config, Overrides};
use crate::serve::Sidecar;

const ABOUT: &str = "Short-lived AWS, Google Cloud and Azure credentials from a workload's OIDC token, served on \
     localhost in each cloud's native format";

/// `keyless --help`: what keyless is, where it runs, which subcommand does what there.
const LONG_ABOUT: &str = "Short-lived AWS, Google Cloud and Azure credentials from a workload's OIDC token, served on \
localhost in each cloud's native format (AWS container endpoint and IMDSv2, the GCE metadata server, Azure IMDS and \
App Service): unmodified SDKs in any language pick them up, and no static key exists anywhere.

Where it runs:
  a pod           keyless serve, a native sidecar beside the app, with the pod's projected
                  service-account token (examples/kubernetes)
  injected pods   keyless webhook adds that sidecar to every pod labelled keyless.dev/inject=true
                  (the Helm chart, charts/keyless); keyless inject does the same to YAML
  a CI job        keyless exec -- CMD, with the job's OIDC token (GitHub Actions, GitLab id_tokens)
  a laptop        keyless dev: the three clouds emulated locally, keyless against them
  a VM or node    keyless serve or keyless exec with a token source: a file, a URL, a command

keyless check tries each token and exchange once and prints what to fix (docs/troubleshooting.md).";

#[derive(Debug, Parser)]
#[command(name = "keyless", version, about = ABOUT, long_about = LONG_ABOUT)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve credentials: the sidecar.
    ///
    /// Exchanges each configured identity's token, keeps the credentials fresh and serves them on
    /// the credential listener in each cloud's native format; /healthz, /readyz and /metrics on
    /// the admin listener.
    Serve {
        /// TOML config file (see docs/configuration.md).
        #[arg(long, env = "KEYLESS_CONFIG")]
        config: Option<PathBuf>,
        /// Credential listener address (loopback unless allow_non_loopback) [default: 127.0.0.1:9811].
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Admin listener address for /healthz, /readyz, /metrics [default: 0.0.0.0:9812].
        #[arg(long)]
        admin_listen: Option<SocketAddr>,
    },
    /// Develop locally: the three clouds emulated, keyless against them.
    ///
    /// Runs the emulated clouds, the token projector and the sidecar in one process, and writes
    /// the app's environment to --env-file.
    Dev {
        /// Where to write the app's env file (KEY=VALUE lines, mode 0600).
        #[arg(long, default_value = ".keyless-dev/app.env")]
        env_file: PathBuf,
        /// Emulator state: CA, CA bundle, projected tokens, generated sidecar config.
        #[arg(long, default_value = ".keyless-dev")]
        state_dir: PathBuf,
        /// Credential listener.
        #[arg(long, default_value = "127.0.0.1:9811")]
        listen: SocketAddr,
        /// Admin listener (/healthz, /readyz, /metrics).
        #[arg(long, default_value = "127.0.0.1:9812")]
        admin_listen: SocketAddr,
        /// The emulated clouds' HTTPS listener.
        #[arg(long, default_value = "127.0.0.1:9813")]
        emulator_listen: SocketAddr,
        /// Where keyless takes its subject tokens from: the projected token files, or the
        /// emulated GitHub Actions OIDC endpoint (as in a CI job).
        #[cfg(feature = "emulator")]
        #[arg(long, value_enum, default_value = "file")]
        source: dev::DevSource,
    },
    /// Print AWS credential_process JSON for an AWS profile.
    ///
    /// Prints credential_process JSON (Version 1) on stdout: from a running keyless's container
    /// endpoint (AWS_CONTAINER_CREDENTIALS_FULL_URI and its token), or, with --config or the IRSA
    /// env vars, from one STS exchange.
    CredentialProcess {
        /// Exchange from this config's [aws] section instead of asking a running keyless.
        #[arg(long, env = "KEYLESS_CONFIG")]
        config: Option<PathBuf>,
        /// A named role (`[[aws.roles]]` name) instead of the default role: asked for on its
        /// container path (`.../roles/NAME` under AWS_CONTAINER_CREDENTIALS_FULL_URI) or exchanged.
        #[arg(long, value_name = "NAME")]
        role: Option<String>,
    },
    /// Check a URL answers 2xx: a health check for images without curl.
    ///
    /// Exits 0 when URL answers 2xx, else prints the answer and exits 1: compose's healthcheck,
    /// or an exec probe of an admin listener kept on loopback (docs/configuration.md).
    Probe {
        /// The URL to GET, e.g. http://127.0.0.1:9812/readyz.
        url: String,
        /// PEM CA certificates to trust (only these) for an https URL.
        #[arg(long)]
        ca_file: Option<PathBuf>,
        /// Give up after this long.
        #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Diagnose: the configuration, each token and exchange tried once, the fixes printed.
    ///
    /// Checks the configuration, each subject token and each exchange once, and prints what to fix
    /// and the cloud-side bindings to create. Exits 1 on any problem.
    Check {
        /// TOML config file (see docs/configuration.md).
        #[arg(long, env = "KEYLESS_CONFIG")]
        config: Option<PathBuf>,
        /// `text` for a person; `json` for scripts and CI gates (one object: schema_version,
        /// outcome, problems, checks, fixes; docs/troubleshooting.md).
        #[arg(long, value_enum, default_value = "text")]
        output: check::Output,
    },
    #[cfg(feature = "inject")]
    /// Inject the sidecar into Kubernetes YAML (stdin or -f) and print it.
    ///
    /// Injects keyless into the opted-in workloads of multi-document YAML (label
    /// keyless.dev/inject: "true"; identities from ServiceAccount annotations in the input) and
    /// writes it to stdout.
    Inject {
        /// The YAML to read; `-` or none: stdin.
        #[arg(short = 'f', long = "filename")]
        file: Option<PathBuf>,
        #[command(flatten)]
        options: inject::InjectArgs,
    },
    /// Run the admission webhook that injects the sidecar into opted-in pods.
    ///
    /// The mutating admission webhook (AdmissionReview v1 over TLS) that injects keyless into
    /// opted-in pods; /healthz, /readyz and /metrics on the admin listener (docs/injection.md).
    #[cfg(feature = "webhook")]
    Webhook {
        #[command(flatten)]
        args: webhook::WebhookArgs,
    },
    /// Run a command with credentials: CI jobs, VMs, laptops.
    ///
    /// Runs keyless in-process on ephemeral loopback ports and starts CMD once every configured
    /// identity holds a credential, with each cloud's native environment; exits with CMD's status.
    Exec {
        /// TOML config file (see docs/configuration.md).
        #[arg(long, env = "KEYLESS_CONFIG")]
        config: Option<PathBuf>,
        /// Give up (without running CMD) if a credential is not ready by then.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        ready_timeout: std::time::Duration,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true, value_name = "CMD")]
        command: Vec<String>,
    },
    /// Run the emulated clouds alone, for docker compose.
    ///
    /// Runs the emulated clouds and the token projector, without a sidecar.
    Emulate {
        /// The emulated clouds' HTTPS listener.
        #[arg(long, default_value = "127.0.0.1:9813")]
        listen: SocketAddr,
        /// Where the CA, the CA bundle for apps and the projected tokens are written.
        #[arg(long, default_value = ".keyless-emulator")]
        state_dir: PathBuf,
        /// A name other hosts reach the emulator by (e.g. its compose service name): added to its
        /// TLS certificate; the first one given is the host of its URLs and of the tokens' issuer.
        #[arg(long = "hostname", value_name = "NAME")]
        hostnames: Vec<String>,
        /// Allow a non-loopback --listen: the control API (/_emulator/, which mints tokens the
        /// emulated clouds trust) has no authentication, so anything that reaches it may use it.
        #[arg(long)]
        allow_remote_control: bool,
        /// Cap the lifetime of every cloud credential the emulator issues (AWS sessions, Google
        /// access and ID tokens, Entra tokens), e.g. `10m`: refresh cycles in minutes, not half an
        /// hour (the fleet benchmark). Default: each cloud's own (one hour).
        #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
        credential_lifetime: Option<std::time::Duration>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("cannot start the async runtime: {e}")),
    };
    // One crypto provider for every TLS client in the process (aws-lc-rs; see Cargo.toml).
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    match cli.command {
        Command::Serve { config, listen, admin_listen } => {
            runtime.block_on(serve(config, Overrides { listen, admin_listen }))
        }
        #[cfg(feature = "emulator")]
        Command::Dev { env_file, state_dir, listen, admin_listen, emulator_listen, source } => {
            let options = dev::DevOptions { env_file, state_dir, listen, admin_listen, emulator_listen, source };
            runtime.block_on(run_logged(dev::dev(options)))
        }
        #[cfg(not(feature = "emulator"))]
        Command::Dev { .. } => fail(WITHOUT_EMULATOR),
        Command::CredentialProcess { config, role } => runtime.block_on(credential_process(config, role)),
        Command::Check { config, output } => runtime.block_on(check::run(config, output)),
        #[cfg(feature = "inject")]
        Command::Inject { file, options } => inject(file.as_deref(), &options),
        #[cfg(feature = "webhook")]
        Command::Webhook { args } => runtime.block_on(run_logged(webhook::run(args))),
        Command::Exec { config, ready_timeout, command } => {
            runtime.block_on(exec::exec(exec::ExecOptions { config, ready_timeout, command }))
        }
        Command::Probe { url, ca_file, timeout } => {
            match runtime.block_on(probe::probe(&url, ca_file.as_deref(), timeout)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&e),
            }
        }
        #[cfg(feature = "emulator")]
        Command::Emulate { listen, state_dir, hostnames, allow_remote_control, credential_lifetime } => {
            let options =
                dev::EmulateOptions { listen, state_dir, hostnames, allow_remote_control, credential_lifetime };
            runtime.block_on(run_logged(dev::emulate(options)))
        }
        #[cfg(not(feature = "emulator"))]
        Command::Emulate { .. } => fail(WITHOUT_EMULATOR),
    }
}

/// What `keyless dev` and `keyless emulate` say in a build without the emulator.
#[cfg(not(feature = "emulator"))]
const WITHOUT_EMULATOR: &str = "this keyless is the sidecar build, without the cloud emulation: run `keyless dev` and \
     `keyless emulate` from the dev image (docker/Dockerfile target `dev`) or from a source build (`cargo run -p keyless -- dev`)";

#[allow(clippy::print_stderr)] // before logging exists, stderr is the only channel
fn fail(message: &str) -> ExitCode {
    eprintln!("keyless: {message}");
    ExitCode::FAILURE
}

/// A fatal error once logging is up, printed once in the format the operator chose: a JSON log
/// line for a log pipeline, else the plain `keyless: ...` line (not a log line and then the same
/// words again).
fn fatal(format: config::LogFormat, message: &str) -> ExitCode {
    match format {
        config::LogFormat::Json => {
            error!("{message}");
            ExitCode::FAILURE
        }
        config::LogFormat::Text => fail(message),
    }
}

/// `credential_process`: only the JSON on stdout (botocore parses it), the reason on stderr.
#[allow(clippy::print_stdout)]
async fn credential_process(config: Option<PathBuf>, role: Option<String>) -> ExitCode {
    let filter = std::env::var("KEYLESS_LOG").unwrap_or_else(|_| "warn".to_owned());
    if let Err(e) = logging::init(Some(&filter), config::LogFormat::Text) {
        return fail(&e);
    }
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let result = match credential_process::Source::choose(config, &env).and_then(|s| s.for_role(role)) {
        Ok(source) => credential_process::run(source).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(json) => {
            println!("{json}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

/// `inject`: the documents on stdout, what was done on stderr.
#[cfg(feature = "inject")]
#[allow(clippy::print_stdout, clippy::print_stderr)]
fn inject(file: Option<&std::path::Path>, options: &inject::InjectArgs) -> ExitCode {
    match inject::run(file, options) {
        Ok(injected) => {
            for note in &injected.notes {
                eprintln!("keyless inject: {note}");
            }
            print!("{}", injected.yaml);
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

/// Runs a command with logging from `KEYLESS_LOG` / `RUST_LOG` (these commands take no config file).
#[cfg(any(feature = "emulator", feature = "webhook"))]
async fn run_logged(command: impl std::future::Future<Output = Result<(), String>>) -> ExitCode {
    let filter = std::env::var("KEYLESS_LOG").ok();
    if let Err(e) = logging::init(filter.as_deref(), config::LogFormat::Text) {
        return fail(&e);
    }
    match command.await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

/// The configuration (flags, file, `KEYLESS_*` env vars), the provider sections, and the
/// `KEYLESS_*` variables that are not settings.
fn load_config(
    file: Option<&std::path::Path>,
    overrides: &Overrides,
) -> Result<(Config, providers::Sections, Vec<String>), String> {
    let env: HashMap<String, String> = std::env::vars().collect();
    let (settings, skipped) = config::settings_from_env(&env);
    let (config, sections) = config::load(file, settings).map_err(|e| e.to_string())?;
    let config = config.finish(overrides).map_err(|e| e.to_string())?;
    Ok((config, sections, skipped))
}

async fn serve(file: Option<PathBuf>, overrides: Overrides) -> ExitCode {
    let (config, sections, skipped) = match load_config(file.as_deref(), &overrides) {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    if let Err(e) = logging::init(config.log.as_deref(), config.log_format) {
        return fail(&e);
    }
    for name in skipped {
        warn!(variable = %name, "ignoring an environment variable that is not a keyless setting \
            (settings are KEYLESS_<KEY>, or KEYLESS_<SECTION>__<KEY> for a section's key)");
    }
    let ctx = Context::new(Arc::new(SystemClock), Metrics::new(), config.cache_policy(), config.watch_options());
    let process_env = |name: &str| std::env::var(name).ok();
    let format = config.log_format;
    let providers = match providers::start_all(sections, &ctx, &process_env).await {
        Ok(p) => p,
        Err(e) => return fatal(format, &e.to_string()),
    };
    let sidecar = match Sidecar::bind(config.listen, config.admin_listen, providers, &ctx, false).await {
        Ok(s) => s,
        Err(e) => return fatal(format, &e.to_string()),
    };
    match sidecar.run(serve::termination()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fatal(format, &e.to_string()),
    }
}
