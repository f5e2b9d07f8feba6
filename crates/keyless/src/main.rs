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

#[derive(Debug, Parser)]
#[command(
    name = "keyless",
    version,
    about = "Short-lived AWS, Google Cloud and Azure credentials for a pod, from its projected service-account token, served on localhost in each cloud's native format"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the sidecar.
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
    /// Run the emulated clouds, the token projector and the sidecar in one process, and write
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
    /// Print AWS credential_process JSON (Version 1) on stdout: from a running keyless's container
    /// endpoint (AWS_CONTAINER_CREDENTIALS_FULL_URI + its token), or, with --config or the IRSA env
    /// vars, from one STS exchange.
    CredentialProcess {
        /// Exchange from this config's [aws] section instead of asking a running keyless.
        #[arg(long, env = "KEYLESS_CONFIG")]
        config: Option<PathBuf>,
        /// A named role (`[[aws.roles]]` name) instead of the default role: asked for on its
        /// container path (`.../roles/NAME` under AWS_CONTAINER_CREDENTIALS_FULL_URI) or exchanged.
        #[arg(long, value_name = "NAME")]
        role: Option<String>,
    },
    /// Exit 0 when URL answers 2xx: a health check for containers without curl (e.g. compose's
    /// `healthcheck` on /readyz).
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
    /// Check the configuration, each subject token and each exchange once; print what to fix and
    /// the cloud-side bindings to create. Exit 1 on any problem.
    Check {
        /// TOML config file (see docs/configuration.md).
        #[arg(long, env = "KEYLESS_CONFIG")]
        config: Option<PathBuf>,
    },
    #[cfg(feature = "inject")]
    /// Inject keyless into the opted-in workloads of multi-document YAML (label keyless.dev/inject:
    /// "true"; identities from ServiceAccount annotations in the input, or the cluster's with
    /// --from-cluster) and write it to stdout. An opted-in workload that gets nothing is an error.
    Inject {
        /// The YAML to read; `-` or none: stdin.
        #[arg(short = 'f', long = "filename", conflicts_with = "input")]
        file: Option<PathBuf>,
        /// The YAML to read, as -f (`-`: stdin).
        #[arg(value_name = "FILE")]
        input: Option<PathBuf>,
        #[command(flatten)]
        cli: inject::CliArgs,
        #[command(flatten)]
        options: inject::InjectArgs,
    },
    /// Run the mutating admission webhook that injects keyless into opted-in pods (AdmissionReview
    /// v1 over TLS; docs/injection.md).
    #[cfg(feature = "webhook")]
    Webhook {
        #[command(flatten)]
        args: webhook::WebhookArgs,
    },
    /// Run CMD with credentials: keyless in-process on ephemeral loopback ports, CMD started once
    /// every configured identity holds a credential, with each cloud's native environment; exits
    /// with CMD's status.
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
    /// Run the emulated clouds and the token projector alone (for docker compose).
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
        Command::Check { config } => runtime.block_on(check::run(config)),
        #[cfg(feature = "inject")]
        Command::Inject { file, input, cli, options } => {
            runtime.block_on(inject(file.or(input).as_deref(), &cli, &options))
        }
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

/// `inject`: the documents on stdout, what was done on stderr. An opted-in workload that got
/// nothing fails the command with nothing on stdout (a pipe into `kubectl apply` applies nothing).
#[cfg(feature = "inject")]
#[allow(clippy::print_stdout, clippy::print_stderr)]
async fn inject(file: Option<&std::path::Path>, cli: &inject::CliArgs, options: &inject::InjectArgs) -> ExitCode {
    match inject::run(file, cli, options).await {
        Ok(injected) => {
            for note in &injected.notes {
                eprintln!("keyless inject: {note}");
            }
            if !injected.uninjected.is_empty() && !cli.allow_uninjected {
                for line in &injected.uninjected {
                    eprintln!("keyless inject: {line}");
                }
                let n = injected.uninjected.len();
                return fail(&format!(
                    "{n} opted-in workload{} would run without keyless: nothing written (--allow-uninjected writes \
                     the documents anyway)",
                    if n == 1 { "" } else { "s" }
                ));
            }
            for line in &injected.uninjected {
                eprintln!("keyless inject: {line}");
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
        Err(e) => {
            error!("{e}");
            fail(&e)
        }
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
    let providers = match providers::start_all(sections, &ctx, &process_env).await {
        Ok(p) => p,
        Err(e) => {
            error!("{e}");
            return fail(&e.to_string());
        }
    };
    let sidecar = match Sidecar::bind(config.listen, config.admin_listen, providers, &ctx, false).await {
        Ok(s) => s,
        Err(e) => return fail(&e.to_string()),
    };
    match sidecar.run(serve::termination()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e.to_string()),
    }
}
