//! The `keyless` binary: CLI, configuration, composition of the cloud adapters, listeners,
//! logging and signals. No protocol logic lives here (see ARCHITECTURE.md).
#![forbid(unsafe_code)]

mod admin;
mod check;
mod config;
mod credential_process;
#[cfg(feature = "emulator")]
mod dev;
mod durations;
mod exec;
#[cfg(feature = "inject")]
mod inject;
mod logging;
#[cfg(feature = "node")]
mod node;
mod probe;
mod providers;
mod serve;
mod setaside;
mod token;
#[cfg(feature = "webhook")]
mod webhook;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use keyless_core::clock::SystemClock;
use keyless_core::metrics::BuildInfo;
use keyless_core::{Context, Metrics};
use tracing::{error, warn};

use crate::config::{Config, Overrides};
use crate::serve::Sidecar;

/// What this binary was built from: the workspace version (Cargo.toml, the one place it is
/// written) and the source revision (build.rs, the one place it is determined). `--version` and
/// every `keyless_build_info` this binary exports say these.
const BUILD: BuildInfo = BuildInfo { version: env!("CARGO_PKG_VERSION"), revision: env!("KEYLESS_REVISION") };

/// A fresh set of this process's metrics, its `keyless_build_info` being [`BUILD`].
fn metrics() -> Metrics {
    Metrics::with_build_info(BUILD)
}

/// `keyless --version`: [`BUILD`] and the compiled features (build.rs), e.g.
/// `keyless 0.1.0 (revision 781920b..., features: emulator, inject, node, webhook)`.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (revision ",
    env!("KEYLESS_REVISION"),
    ", features: ",
    env!("KEYLESS_FEATURES"),
    ")"
);

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
  a node's pods   keyless node, one per node (a hostNetwork DaemonSet) instead of a sidecar per
                  pod (the Helm chart's mode: node)

keyless check tries each token and exchange once and prints what to fix (docs/troubleshooting.md).";

#[derive(Debug, Parser)]
#[command(name = "keyless", version = VERSION, about = ABOUT, long_about = LONG_ABOUT)]
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
        /// Give up after this long (at most 1h).
        #[arg(long, default_value = "3s", value_parser = durations::probe_timeout)]
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
    /// keyless.dev/inject: "true"; identities from ServiceAccount annotations in the input, or the
    /// cluster's with --from-cluster) and writes it to stdout. An opted-in workload that gets
    /// nothing is an error.
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
    /// Run the admission webhook that injects the sidecar into opted-in pods.
    ///
    /// The mutating admission webhook (AdmissionReview v1 over TLS) that injects keyless into
    /// opted-in pods; /healthz, /readyz and /metrics on the admin listener (docs/injection.md).
    #[cfg(feature = "webhook")]
    Webhook {
        #[command(flatten)]
        args: webhook::WebhookArgs,
    },
    /// Serve every opted-in pod of this node: one keyless per node (DaemonSet).
    ///
    /// One keyless per node (a hostNetwork DaemonSet) serves every opted-in pod of the node the
    /// identities of its own ServiceAccount's annotations (the ones injection reads), on the native
    /// endpoints the sidecar serves. The caller is the Running pod of this node holding the
    /// connection's source address (a watch of this node's pods; hostNetwork pods, unknown
    /// addresses, pods not Running and ServiceAccounts without identities are refused in each
    /// endpoint's error shape). Subject tokens come from the TokenRequest API, bound to a live pod
    /// of the ServiceAccount; pods of one ServiceAccount share one exchange per identity. The AWS
    /// container endpoint also wants the pod's own projected token (--authorization-audience) as
    /// AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE. Injection in node mode sets the apps' env only
    /// (keyless webhook --mode node). RBAC: create serviceaccounts/token; get, list, watch pods and
    /// serviceaccounts. When to choose it over the sidecar, and its trust model: docs/node-mode.md.
    #[cfg(feature = "node")]
    Node {
        #[command(flatten)]
        args: node::NodeArgs,
    },
    /// Run a command with credentials: CI jobs, VMs, laptops.
    ///
    /// Runs keyless in-process on ephemeral loopback ports and starts CMD once every configured
    /// identity holds a credential, with each cloud's native environment and without the local
    /// credentials its SDKs would use instead (named on stderr). Only CMD's own user is served.
    ///
    /// Exit status: CMD's (128+N when signal N ended it); 125 when keyless fails (an identity
    /// that cannot get a credential ends it at once; transient failures are retried until
    /// --ready-timeout); 126 when CMD cannot run; 127 when it is not found. SIGINT, SIGTERM,
    /// SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 are passed on to CMD; CMD is killed if keyless dies.
    Exec {
        /// TOML config file (see docs/configuration.md).
        #[arg(long, env = "KEYLESS_CONFIG")]
        config: Option<PathBuf>,
        /// Give up (exit 125, without running CMD) if a credential is not ready by then (at most 1 day).
        #[arg(long, default_value = "60s", value_parser = durations::ready_timeout)]
        ready_timeout: std::time::Duration,
        #[command(flatten)]
        choice: ChoiceArgs,
        /// Keep this variable (or the file a file variable like AWS_CONFIG_FILE or CLOUDSDK_CONFIG
        /// points to) for CMD although it would make an SDK ignore keyless. Repeatable.
        #[arg(long = "keep-env", value_name = "NAME")]
        keep_env: Vec<String>,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true, value_name = "CMD")]
        command: Vec<String>,
    },
    /// Print one credential on stdout, for scripts.
    ///
    /// From the same configuration and sources as `keyless exec`: AWS as `export` lines or
    /// credential_process JSON, a Google access or ID token, an Entra access token. Exit 125 when
    /// it cannot be had.
    Token {
        /// Which cloud's credential.
        #[arg(value_enum)]
        cloud: token::Cloud,
        /// TOML config file (see docs/configuration.md).
        #[arg(long, env = "KEYLESS_CONFIG")]
        config: Option<PathBuf>,
        /// A configured identity other than the default: an [[aws.roles]] name, a
        /// [[gcp.service_accounts]] e-mail, an azure.additional_client_ids client id.
        #[arg(long, value_name = "NAME")]
        role: Option<String>,
        /// GCP: an ID token for this audience instead of an access token.
        #[arg(long, value_name = "AUD")]
        audience: Option<String>,
        /// GCP: the access token's scopes (repeatable; default: the configured scopes).
        #[arg(long = "scope", value_name = "SCOPE")]
        scopes: Vec<String>,
        /// Azure: the resource the token is for [default: https://management.azure.com/].
        #[arg(long, value_name = "RESOURCE")]
        resource: Option<String>,
        /// env: `export NAME=value` lines (default for aws); json: the JSON document; raw: the
        /// token alone (default for gcp and azure).
        #[arg(long, value_enum)]
        format: Option<token::Format>,
        /// Give up (exit 125) if the credential is not ready by then (at most 1 day).
        #[arg(long, default_value = "60s", value_parser = durations::ready_timeout)]
        ready_timeout: std::time::Duration,
    },
    /// `keyless exec`'s own: become CMD, killed when process PID (keyless exec) ends.
    #[command(hide = true)]
    ExecSupervised {
        #[arg(long)]
        parent: i32,
        #[arg(last = true, required = true)]
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
        #[arg(long, value_parser = durations::credential_lifetime, value_name = "DURATION")]
        credential_lifetime: Option<std::time::Duration>,
    },
}

/// `keyless exec`'s choice of providers and default identities.
#[derive(Debug, clap::Args)]
struct ChoiceArgs {
    /// Serve only these clouds (comma-separated), the others' configuration is ignored.
    #[arg(long, value_delimiter = ',', value_parser = clap::builder::PossibleValuesParser::new(providers::names()),
        value_name = "CLOUDS")]
    only: Option<Vec<String>>,
    /// The [[aws.roles]] entry CMD gets as its default AWS credentials.
    #[arg(long, value_name = "NAME")]
    aws_role: Option<String>,
    /// The [[gcp.service_accounts]] entry CMD gets as the metadata server's default account.
    #[arg(long, value_name = "EMAIL")]
    gcp_service_account: Option<String>,
    /// The azure.additional_client_ids entry CMD gets when it names no client id.
    #[arg(long, value_name = "CLIENT_ID")]
    azure_client_id: Option<String>,
}

impl ChoiceArgs {
    fn choice(self) -> providers::Choice {
        let defaults = [("aws", self.aws_role), ("gcp", self.gcp_service_account), ("azure", self.azure_client_id)]
            .into_iter()
            .filter_map(|(name, value)| value.map(|v| (name, v)))
            .collect();
        providers::Choice { only: self.only, defaults }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Before any thread exists: this process becomes CMD.
    if let Command::ExecSupervised { parent, command } = &cli.command {
        return exec::supervised(*parent, command);
    }
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
        Command::Inject { file, input, cli, options } => {
            runtime.block_on(inject(file.or(input).as_deref(), &cli, &options))
        }
        #[cfg(feature = "webhook")]
        Command::Webhook { args } => runtime.block_on(run_logged(webhook::run(args))),
        #[cfg(feature = "node")]
        Command::Node { args } => runtime.block_on(run_logged(node::run(args))),
        Command::Exec { config, ready_timeout, choice, keep_env, command } => {
            runtime.block_on(exec::exec(exec::ExecOptions {
                config,
                ready_timeout,
                command,
                keep_env,
                choice: choice.choice(),
            }))
        }
        Command::Token { cloud, config, role, audience, scopes, resource, format, ready_timeout } => {
            let options =
                token::TokenOptions { cloud, config, role, audience, scopes, resource, format, ready_timeout };
            runtime.block_on(token::run(options))
        }
        Command::ExecSupervised { .. } => ExitCode::from(exec::EXIT_OWN_FAILURE),
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
    if let Err(e) = logging::init_from_variable(Some(&filter), config::LogFormat::Text) {
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
    // Every line quotes the input (kinds, names, annotation keys, parser errors) or the cluster's
    // answer: escaped and bounded here, where all of them are printed.
    let shown = |line: &str| keyless_core::printable::printable(line, inject::MAX_SHOWN_BYTES).into_owned();
    match inject::run(file, cli, options).await {
        Ok(injected) => {
            for note in &injected.notes {
                eprintln!("keyless inject: {}", shown(note));
            }
            if !injected.uninjected.is_empty() && !cli.allow_uninjected {
                for line in &injected.uninjected {
                    eprintln!("keyless inject: {}", shown(line));
                }
                let n = injected.uninjected.len();
                return fail(&format!(
                    "{n} opted-in workload{} would run without keyless: nothing written (--allow-uninjected writes \
                     the documents anyway)",
                    if n == 1 { "" } else { "s" }
                ));
            }
            for line in &injected.uninjected {
                eprintln!("keyless inject: {}", shown(line));
            }
            print!("{}", injected.yaml);
            ExitCode::SUCCESS
        }
        Err(e) => fail(&shown(&e)),
    }
}

/// Runs a command with logging from `KEYLESS_LOG` / `RUST_LOG` (these commands take no config file).
#[cfg(any(feature = "emulator", feature = "webhook"))]
async fn run_logged(command: impl std::future::Future<Output = Result<(), String>>) -> ExitCode {
    let filter = std::env::var("KEYLESS_LOG").ok();
    if let Err(e) = logging::init_from_variable(filter.as_deref(), config::LogFormat::Text) {
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
        return fail(&config.env_keys.name_in(&e));
    }
    for name in skipped {
        warn!(variable = %name, "ignoring an environment variable that is not a keyless setting \
            (settings are KEYLESS_<KEY>, or KEYLESS_<SECTION>__<KEY> for a section's key)");
    }
    let ctx = Context::new(Arc::new(SystemClock), metrics(), config.cache_policy(), config.watch_options());
    let format = config.log_format;
    let providers = match providers::start_all(sections, &ctx, &ctx.env()).await {
        Ok(p) => p,
        Err(e) => return fatal(format, &e.to_string()),
    };
    // Before any port is bound: a stop the moment the sidecar answers is a clean one.
    let terminated = serve::termination();
    let sidecar = match Sidecar::bind(config.listen, config.admin_listen, providers, &ctx, false).await {
        Ok(s) => s.with_uid_check(config.uid_check(&ctx.env())),
        Err(e) => return fatal(format, &e.to_string()),
    };
    match sidecar.run(terminated).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fatal(format, &e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_metrics_report_the_version_and_revision_version_prints() {
        let revision = VERSION.split_once("(revision ").and_then(|(_, rest)| rest.split_once(',')).map(|(r, _)| r);
        let expected = format!(
            "keyless_build_info{{version=\"{}\",revision=\"{}\"}} 1\n",
            env!("CARGO_PKG_VERSION"),
            revision.unwrap_or("(none in --version)")
        );
        let text = metrics().encode();
        assert!(text.contains(&expected), "--version says {VERSION:?}; /metrics:\n{text}");
    }
}
