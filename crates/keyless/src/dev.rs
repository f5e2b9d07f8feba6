//! `keyless dev` and `keyless emulate`: the local emulation of the three clouds, alone or with
//! the sidecar configured against it in one process.
//!
//! The sidecar's configuration is generated as TOML and parsed by the same code as a user's file,
//! so `keyless dev` exercises the real configuration path.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use keyless_core::clock::SystemClock;
use keyless_core::{AppEnvVar, Context, Host, files};
use keyless_emulator::{Emulator, EmulatorConfig};
use keyless_provider::{DevEmulator, DevToken};
use tracing::info;

use crate::config::{self, Config, Overrides};
use crate::providers;
use crate::serve::{self, Sidecar};
use crate::setaside::{self, SetAside};

#[derive(Debug, Clone)]
pub struct DevOptions {
    pub env_file: PathBuf,
    pub state_dir: PathBuf,
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub emulator_listen: SocketAddr,
    /// Where keyless takes its subject tokens from.
    pub source: DevSource,
}

/// `keyless dev --source`: the projected token files, or the emulated GitHub Actions endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum DevSource {
    #[default]
    File,
    GithubActions,
}

/// `keyless emulate`'s options.
pub struct EmulateOptions {
    pub listen: SocketAddr,
    pub state_dir: PathBuf,
    /// The names other containers reach it by (the first one is the issuer).
    pub hostnames: Vec<String>,
    pub allow_remote_control: bool,
    /// Caps the lifetime of every credential the emulated clouds issue.
    pub credential_lifetime: Option<Duration>,
}

/// `keyless emulate`: the emulator and projector until SIGTERM/Ctrl-C; apps get
/// `STATE/ca-bundle.pem`.
pub async fn emulate(options: EmulateOptions) -> Result<(), String> {
    let EmulateOptions { listen, state_dir, hostnames, allow_remote_control, credential_lifetime } = options;
    if !listen.ip().is_loopback() && !allow_remote_control {
        return Err(format!(
            "--listen {listen} is not a loopback address, and the emulator's control API (/_emulator/: it \
             mints tokens the emulated clouds trust, injects faults) has no authentication: anything that \
             reaches {listen} could use it. Listen on 127.0.0.1, or pass --allow-remote-control when other \
             hosts must reach the emulator (as in docker/compose.yaml)"
        ));
    }
    if let Some(lifetime) = credential_lifetime.filter(|l| *l < Duration::from_secs(1)) {
        return Err(format!(
            "--credential-lifetime {} is too short: the clouds issue credentials of at least a second",
            humantime::format_duration(lifetime)
        ));
    }
    // Before the emulator is seen: a stop the moment it is ready is a clean one.
    let terminated = serve::termination();
    let emulator = start_emulator(listen, &state_dir, hostnames, credential_lifetime, "--listen").await?;
    let bundle = write_ca_bundle(&state_dir, emulator.ca_pem_path())?;
    info!(url = %emulator.url(), ca = %emulator.ca_pem_path().display(), ca_bundle = %bundle.display(), "emulator ready");
    info!(
        request_url = %emulator.github_actions_request_url(),
        request_token_file = %emulator.github_actions_request_token_path().display(),
        "emulated GitHub Actions OIDC endpoint: ACTIONS_ID_TOKEN_REQUEST_URL and the content of ACTIONS_ID_TOKEN_REQUEST_TOKEN"
    );
    terminated.await;
    emulator.shutdown().await;
    Ok(())
}

async fn start_emulator(
    listen: SocketAddr,
    state_dir: &Path,
    hostnames: Vec<String>,
    credential_lifetime: Option<Duration>,
    flag: &'static str,
) -> Result<Emulator, String> {
    let mut config = EmulatorConfig::new(state_dir);
    config.listen = listen;
    config.hostnames = hostnames;
    config.credential_lifetime = credential_lifetime;
    keyless_emulator::start(config).await.map_err(|e| match &e {
        keyless_emulator::EmulatorError::Bind { addr, source } => {
            let in_use = source.kind() == std::io::ErrorKind::AddrInUse;
            // The cause's own hint only (the emulator's error adds a generic one).
            format!(
                "cannot start the emulator: cannot listen on {addr}: {source}; {}",
                crate::serve::bind_hint(source, *addr, flag)
            ) + if in_use && flag == "--emulator-listen" { SECOND_DEV } else { "" }
        }
        _ => format!("cannot start the emulator: {e}"),
    })
}

/// A second `keyless dev` beside a running one collides on every port and on the state dir: the
/// error names every flag that moves it.
const SECOND_DEV: &str = ". To run a second keyless dev beside another, give it other ports and its own files: \
     --listen, --admin-listen, --emulator-listen, --state-dir and --env-file";

/// The sidecar's configuration for the emulator: every registered provider's section with its
/// second identities, endpoints and CA of the emulator, tokens from its projector.
fn sidecar_toml(emulator: &Emulator, opts: &DevOptions) -> Result<String, String> {
    let identities = emulator.identities_document();
    let dev = DevEmulator {
        endpoint: &emulator.url(),
        ca_file: emulator.ca_pem_path(),
        identities: &identities,
        state_dir: Some(&opts.state_dir),
        second_identities: true,
    };
    let token = |name: &'static str| match opts.source {
        DevSource::File => DevToken::File(emulator.token_path_named(name)),
        DevSource::GithubActions => DevToken::github_actions(
            &emulator.github_actions_request_url(),
            &emulator.github_actions_request_token_path(),
            emulator.ca_pem_path(),
        ),
    };
    let config = keyless_registry::dev_config(&dev, &token).map_err(|e| format!("the dev configuration: {e}"))?;
    Ok(config.set("listen", opts.listen.to_string()).set("admin_listen", opts.admin_listen.to_string()).to_toml())
}

/// `keyless dev`: emulator, projector and sidecar in one process; writes the app's env file.
pub async fn dev(mut opts: DevOptions) -> Result<(), String> {
    if !opts.emulator_listen.ip().is_loopback() {
        return Err(format!(
            "--emulator-listen {} is not a loopback address: the emulator's control API has no \
             authentication (it mints tokens the emulated clouds trust). keyless dev keeps it on loopback; \
             for an emulator other hosts reach, run keyless emulate --allow-remote-control",
            opts.emulator_listen
        ));
    }
    std::fs::create_dir_all(&opts.state_dir)
        .map_err(|e| format!("cannot create the state dir {}: {e}", opts.state_dir.display()))?;
    // The env file is read from other directories (apps, compose): every path in it is absolute.
    opts.state_dir = std::path::absolute(&opts.state_dir)
        .map_err(|e| format!("cannot resolve the state dir {}: {e}", opts.state_dir.display()))?;
    // Before the emulator or the env file is seen: a stop the moment either appears is a clean one.
    let terminated = serve::termination();
    let emulator = start_emulator(opts.emulator_listen, &opts.state_dir, Vec::new(), None, "--emulator-listen").await?;
    let bundle = write_ca_bundle(&opts.state_dir, emulator.ca_pem_path())?;

    let config_path = opts.state_dir.join("keyless.toml");
    files::write_atomically(&config_path, sidecar_toml(&emulator, &opts)?.as_bytes(), 0o600)
        .map_err(|e| format!("cannot write {}: {e}", config_path.display()))?;
    let (config, sections) = config::load(Some(&config_path), Default::default()).map_err(|e| e.to_string())?;
    let config: Config = config.finish(&Overrides::default()).map_err(|e| e.to_string())?;
    // The emulated identities only: the host's own cloud env vars (IRSA, azwi, GitHub Actions)
    // must not leak into dev, in zero-config detection or in a section's defaults.
    let ctx =
        Context::new(Arc::new(SystemClock), crate::metrics(), config.one_client_cache_policy(), config.watch_options())
            .with_host(Host::empty());
    let started = providers::start_all(sections, &ctx, &ctx.env()).await.map_err(|e| e.to_string())?;
    let served: Vec<&'static str> = started.iter().map(|p| p.name).collect();
    let sidecar =
        Sidecar::bind(config.listen, config.admin_listen, started, &ctx, true).await.map_err(|e| match &e {
            serve::ServeError::Bind { source, .. } if source.kind() == std::io::ErrorKind::AddrInUse => {
                format!("{e}{SECOND_DEV}")
            }
            _ => e.to_string(),
        })?;

    let mut env = sidecar.app_env();
    env.extend(emulator_env(&emulator, &bundle, sidecar.admin_addr()));
    // The laptop's own credentials must not win over the emulated identities in an app that
    // sourced the env file; kept (the private copies) until dev ends.
    let set_aside = setaside::plan(
        &providers::shadowing(served.iter().copied()),
        &setaside::Host::process(),
        &[],
        &|provider, dir| sidecar.stand_in(provider, dir),
    )?;
    env.extend(set_aside_env(&set_aside, &env));
    write_env_file(&opts.env_file, &env)?;
    print_env(&opts.env_file, &env);
    report_set_aside(&set_aside);
    let gate = sidecar.gate();
    let serving = tokio::spawn(sidecar.run(terminated));
    // The env file is in place: /readyz may turn green once every identity holds a credential.
    gate.store(true, Ordering::Release);
    let result = serving.await.map_err(|e| e.to_string()).and_then(|r| r.map_err(|e| e.to_string()));
    emulator.shutdown().await;
    drop(set_aside);
    result
}

/// The env file's lines for what was set aside: an empty value for each variable found in this
/// environment (SDKs take an empty value as unset; an env file cannot unset), the private copies
/// for the file variables. Variables keyless sets itself keep keyless's value.
fn set_aside_env(set_aside: &SetAside, env: &[AppEnvVar]) -> Vec<AppEnvVar> {
    // A variable set to a private copy (or a stand-in) gets that value, not an empty one first.
    let ours = |name: &str| env.iter().any(|v| v.name == name) || set_aside.set.iter().any(|(n, _)| *n == name);
    let mut lines: Vec<AppEnvVar> =
        set_aside.remove.iter().filter(|name| !ours(name)).map(|name| AppEnvVar::plain(*name, "")).collect();
    lines.extend(set_aside.set.iter().map(|(name, value)| AppEnvVar::plain(*name, value.as_str())));
    lines
}

#[allow(clippy::print_stderr)] // said once at start, whatever the log level
fn report_set_aside(set_aside: &SetAside) {
    if let Some(line) = set_aside.line("keyless dev", "in the env file (apps that read it use the emulated identities)")
    {
        eprintln!("{line}");
    }
    for warning in &set_aside.warnings {
        eprintln!("keyless dev: could not set aside {warning}");
    }
}

/// What an app needs besides each provider's own variables: where the emulated clouds are, the
/// CA bundle, and the identities the emulator trusts.
fn emulator_env(emulator: &Emulator, bundle: &Path, admin: SocketAddr) -> Vec<AppEnvVar> {
    let ids = emulator.identities();
    let bundle = bundle.to_string_lossy().into_owned();
    let ca = emulator.ca_pem_path().to_string_lossy().into_owned();
    let admin_host = if admin.ip().is_unspecified() { SocketAddr::from(([127, 0, 0, 1], admin.port())) } else { admin };
    vec![
        AppEnvVar::plain("AWS_ENDPOINT_URL_STS", emulator.url()),
        // Go and OpenSSL use these files instead of the system store: system CAs plus the emulator's.
        AppEnvVar::plain("AWS_CA_BUNDLE", &bundle),
        AppEnvVar::plain("REQUESTS_CA_BUNDLE", &bundle),
        AppEnvVar::plain("SSL_CERT_FILE", &bundle),
        // Node adds this file to its built-in store (it ignores SSL_CERT_FILE).
        AppEnvVar::plain("NODE_EXTRA_CA_CERTS", &ca),
        AppEnvVar::plain("KEYLESS_DEV_EMULATOR_URL", emulator.url()),
        AppEnvVar::plain("KEYLESS_DEV_EMULATOR_CA", &ca),
        AppEnvVar::plain("KEYLESS_DEV_ADMIN_URL", format!("http://{admin_host}")),
        AppEnvVar::plain("KEYLESS_DEV_AWS_ROLE_ARN", &ids.aws_role_arn),
        AppEnvVar::plain("KEYLESS_DEV_GCP_SERVICE_ACCOUNT", &ids.gcp_service_account),
        AppEnvVar::plain("KEYLESS_DEV_GCP_PROJECT_ID", &ids.gcp_project_id),
        AppEnvVar::plain("KEYLESS_DEV_AZURE_CLIENT_ID", &ids.azure_client_id),
        AppEnvVar::plain("KEYLESS_DEV_AZURE_TENANT_ID", &ids.azure_tenant_id),
        // The second identity per cloud (env-file contract, docs/configuration.md).
        AppEnvVar::plain("KEYLESS_DEV_AWS_SECOND_ROLE_NAME", keyless_aws::DEV_SECOND_ROLE_NAME),
        AppEnvVar::plain("KEYLESS_DEV_AWS_SECOND_ROLE_ARN", &ids.aws_second_role_arn),
        AppEnvVar::plain("KEYLESS_DEV_GCP_SECOND_SERVICE_ACCOUNT", &ids.gcp_second_service_account),
        AppEnvVar::plain("KEYLESS_DEV_AZURE_SECOND_CLIENT_ID", &ids.azure_second_client_id),
    ]
}

/// The system's CA bundle plus the emulator's CA, so an app that points SSL_CERT_FILE at it can
/// still reach everything else it talks to.
fn write_ca_bundle(state_dir: &Path, emulator_ca: &Path) -> Result<PathBuf, String> {
    let mut bundle = Vec::new();
    let probe = openssl_probe::probe();
    match probe.cert_file.as_deref().map(std::fs::read) {
        Some(Ok(system)) => {
            bundle.extend_from_slice(&system);
            if !bundle.ends_with(b"\n") {
                bundle.push(b'\n');
            }
        }
        _ => tracing::warn!(
            "no system CA bundle found: the app's SSL_CERT_FILE will trust only the emulator \
             (install your distribution's ca-certificates package)"
        ),
    }
    bundle.extend_from_slice(
        &std::fs::read(emulator_ca).map_err(|e| format!("cannot read {}: {e}", emulator_ca.display()))?,
    );
    let path = state_dir.join("ca-bundle.pem");
    files::write_atomically(&path, &bundle, 0o644).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(path)
}

/// `KEY=VALUE` lines, no quotes, no `export`, written atomically with mode 0600 (it holds the
/// authorization secrets) through a fresh temporary file, never through one that could be planted.
fn write_env_file(path: &Path, env: &[AppEnvVar]) -> Result<(), String> {
    let fail = |e: std::io::Error| format!("cannot write the env file {}: {e}", path.display());
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(fail)?;
    }
    let mut lines = String::new();
    for var in env {
        lines.push_str(&format!("{}={}\n", var.name, var.file_value()));
    }
    files::write_atomically(path, lines.as_bytes(), 0o600).map_err(fail)
}

#[allow(clippy::print_stdout)] // the env is the command's output
fn print_env(path: &Path, env: &[AppEnvVar]) {
    println!("# keyless dev: app environment written to {} (secret values redacted here)", path.display());
    for var in env {
        println!("{var}");
    }
    let _ = std::io::stdout().flush();
}
