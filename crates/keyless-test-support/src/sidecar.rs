//! `keyless serve` in its own process, on free ports, with the configuration a test writes.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;

use keyless_provider::{DevConfig, DevEmulator, DevToken};

use crate::clients::{self, status_of};
use crate::emulate::EmulatorProcess;
use crate::metrics;
use crate::process::{Process, free_port};
use crate::wait::{STARTUP_DEADLINE, wait_until};

/// Secrets the all-clouds sidecar is configured with (long enough for the log probes).
pub const CONTAINER_AUTHORIZATION: &str = "e2e-faults-container-authorization-2f9c1b7d";
pub const IDENTITY_HEADER: &str = "e2e-faults-identity-header-8a4e6c0f13d5";
/// The resource the all-clouds sidecar pre-warms for Azure.
pub const AZURE_RESOURCE: &str = "https://management.azure.com/";

/// `keyless serve --config FILE` with `toml` as the file, for a configuration it must refuse at
/// load: waits for it to exit (at most 30 s), asserts it exited 1 without panicking and without
/// ever binding its two ports, and returns its stderr.
pub async fn serve_refuses(toml: &str) -> String {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("keyless.toml");
    std::fs::write(&path, toml).expect("writing the config");
    let (listen, admin) = (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()));
    let output = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        tokio::process::Command::new(crate::binary::keyless_bin())
            .args(["serve", "--config", path.to_str().expect("a UTF-8 path")])
            .args(["--listen", &listen, "--admin-listen", &admin])
            .env_remove("KEYLESS_CONFIG")
            .output(),
    )
    .await
    .expect("serve exits at once")
    .expect("running keyless");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    for addr in [&listen, &admin] {
        assert!(std::net::TcpListener::bind(addr.as_str()).is_ok(), "{addr} was bound: {stderr}");
    }
    stderr
}

/// A running `keyless serve`.
#[derive(Debug)]
pub struct Sidecar {
    pub process: Process,
    /// The credential listener.
    pub listen: SocketAddr,
    /// The admin listener (`/healthz`, `/readyz`, `/metrics`).
    pub admin: SocketAddr,
    /// Its configuration file (absent for a zero-config sidecar).
    pub config: Option<PathBuf>,
    _dir: tempfile::TempDir,
}

impl Sidecar {
    /// `keyless serve --config FILE` with `toml` as the file (listen addresses are given as flags)
    /// and exactly `env`; does not wait for anything.
    pub fn spawn(toml: &str, env: &[(&str, &str)]) -> Self {
        Self::launch(None, Some(toml), env)
    }

    /// [`Sidecar::spawn`] as user and group `uid` (needs root); its config is readable by anyone.
    pub fn spawn_as(uid: u32, toml: &str, env: &[(&str, &str)]) -> Self {
        Self::launch(Some(uid), Some(toml), env)
    }

    /// `keyless serve` with no configuration file: what the workload-identity env vars in `env`
    /// configure.
    pub fn zero_config(env: &[(&str, &str)]) -> Self {
        Self::launch(None, None, env)
    }

    fn launch(uid: Option<u32>, toml: Option<&str>, env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let (listen_arg, admin_arg) = (listen.to_string(), admin.to_string());
        let mut args = vec!["serve", "--listen", &listen_arg, "--admin-listen", &admin_arg];
        let config = toml.map(|toml| {
            let path = dir.path().join("keyless.toml");
            std::fs::write(&path, toml).expect("writing the config");
            if uid.is_some() {
                std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
            }
            path
        });
        let config_arg = config.as_ref().map(|p| p.to_str().expect("a UTF-8 path").to_owned());
        if let Some(path) = &config_arg {
            args.extend(["--config", path]);
        }
        let process = Process::spawn_as(uid, &args, env);
        Self { process, listen, admin, config, _dir: dir }
    }

    /// `keyless serve` with all three providers against `upstream` (the emulator, or a proxy to it),
    /// `cache` as the lines of its `[cache]` section, logging at `log`; waits until it is ready.
    pub async fn all_clouds(emulator: &EmulatorProcess, upstream: &str, cache: &str, log: &str) -> Self {
        let projected = |cloud: &str| token_file_line(&emulator.token_file(cloud));
        let sidecar = Self::spawn(&all_clouds_config(emulator, upstream, cache, log, &projected).await, &[]);
        sidecar.wait_ready().await;
        sidecar
    }

    /// [`Sidecar::all_clouds`] reading each cloud's (`aws`, `gcp`, `azure`) token from
    /// `token_file(cloud)` instead of the emulator's projector (e.g. a real API server's tokens).
    pub async fn all_clouds_with_tokens(
        emulator: &EmulatorProcess,
        upstream: &str,
        log: &str,
        token_file: &dyn Fn(&str) -> PathBuf,
    ) -> Self {
        let token = |cloud: &str| token_file_line(&token_file(cloud));
        let sidecar = Self::spawn(&all_clouds_config(emulator, upstream, "", log, &token).await, &[]);
        sidecar.wait_ready().await;
        sidecar
    }

    /// `http://{listen}{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.listen)
    }

    /// `http://{admin}{path}`.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// `/readyz`'s status (599: nothing answers).
    pub async fn readyz(&self) -> u16 {
        status_of(&self.admin_url("/readyz")).await
    }

    pub async fn wait_ready(&self) {
        wait_until("keyless serve to turn ready", STARTUP_DEADLINE, || async { self.readyz().await == 200 }).await;
    }

    /// Waits until keyless has logged `what`.
    pub async fn wait_logged(&self, what: &str) {
        wait_until(&format!("keyless to log {what:?}"), STARTUP_DEADLINE, || {
            let logged = self.process.logs().contains(what);
            async move { logged }
        })
        .await;
    }

    pub async fn metrics(&self) -> String {
        let response = clients::loopback().get(self.admin_url("/metrics")).send().await.expect("/metrics answers");
        response.text().await.expect("the metrics")
    }

    /// `keyless_exchanges_total` of `provider`, summed over identities: `(succeeded, failed)`.
    pub async fn exchanges(&self, provider: &str) -> (u64, u64) {
        let text = self.metrics().await;
        let all = metrics::sum(&text, "keyless_exchanges_total", &[("provider", provider)]);
        let ok = metrics::sum(&text, "keyless_exchanges_total", &[("provider", provider), ("outcome", "success")]);
        (ok, all - ok)
    }

    pub fn logs(&self) -> String {
        self.process.logs()
    }
}

fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// `token_file = "PATH"`, a line of a cloud's section.
pub fn token_file_line(path: &std::path::Path) -> String {
    format!("token_file = {}", toml_string(path.to_str().expect("a UTF-8 path")))
}

/// The configuration of the all-clouds sidecar: every provider on the emulator's dev identities
/// against `upstream`, `cache` as the lines of `[cache]`, logging at `log`; each cloud's (`aws`,
/// `gcp`, `azure`) subject token as the line `token(cloud)` gives (`token_file = "..."` or
/// `source = { ... }`).
pub async fn all_clouds_config(
    emulator: &EmulatorProcess,
    upstream: &str,
    cache: &str,
    log: &str,
    token: &dyn Fn(&str) -> String,
) -> String {
    let cache: toml::Table = cache.parse().expect("the [cache] lines are TOML");
    all_clouds_dev_config(emulator, upstream, log, token, false).await.set("cache", cache).to_toml()
}

/// [`all_clouds_config`] without `[cache]`, as a [`DevConfig`] to add settings to, with the
/// emulator's second identities too when `second_identities` (as `keyless dev` has them).
pub async fn all_clouds_dev_config(
    emulator: &EmulatorProcess,
    upstream: &str,
    log: &str,
    token: &dyn Fn(&str) -> String,
    second_identities: bool,
) -> DevConfig {
    let identities = emulator.control.identities().await;
    let dev = DevEmulator {
        endpoint: upstream,
        ca_file: &emulator.ca,
        identities: &identities,
        state_dir: None,
        second_identities,
    };
    keyless_registry::dev_config(&dev, &|cloud| dev_token(&token(cloud)))
        .expect("every provider's dev section")
        .set("log", log)
        .set_in("aws", "authorization_token", CONTAINER_AUTHORIZATION)
        .set_in("azure", "resources", vec![AZURE_RESOURCE])
        .set_in("azure", "identity_header", IDENTITY_HEADER)
}

/// A cloud section's token line (`token_file = "..."` or `source = { ... }`) as the keys it sets.
fn dev_token(line: &str) -> DevToken {
    let mut keys: toml::Table = line.parse().unwrap_or_else(|e| panic!("{line:?} is not a TOML line: {e}"));
    match (keys.remove("token_file"), keys.remove("source")) {
        (Some(toml::Value::String(path)), None) => DevToken::File(path.into()),
        (None, Some(toml::Value::Table(source))) => DevToken::Source(source),
        _ => panic!("{line:?} sets neither token_file nor source"),
    }
}

/// `[cache]` lines (for [`Sidecar::all_clouds`]) of the tests that watch refreshes within seconds:
/// a refresh from a quarter of a credential's lifetime, retries from 100 ms to 1 s, an exchange
/// timing out after `exchange_timeout`, a request waiting at most 2 s for one.
pub fn quick_refresh_cache(exchange_timeout: &str) -> String {
    format!(
        "refresh_at = 0.25\nretry_min = \"100ms\"\nretry_max = \"1s\"\nexchange_timeout = {}\nrequest_wait = \"2s\"",
        toml_string(exchange_timeout)
    )
}
