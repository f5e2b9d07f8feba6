//! `keyless dev` in its own process: emulator, projector and sidecar, with the app env it writes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

use tokio::process::{Child, Command};

use crate::binary::keyless_bin;
use crate::clients::{self, status_of};
use crate::emulate::ControlApi;
use crate::metrics;
use crate::process::stop_child;
use crate::sdk::App;
use crate::tools::NodeClients;
use crate::wait::{STARTUP_DEADLINE, wait_until};

/// The app env's variables of AWS's container provider: without them an SDK turns to IMDS.
pub const AWS_CONTAINER_VARS: &[&str] = &[
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
];

/// A running `keyless dev` and the app env it wrote.
#[derive(Debug)]
pub struct Dev {
    child: Child,
    pub dir: tempfile::TempDir,
    /// The app env file's variables.
    pub env: BTreeMap<String, String>,
    pub stdout_path: PathBuf,
    pub stderr_path: PathBuf,
    /// Its emulator's control API.
    pub emulator: ControlApi,
}

impl Dev {
    /// Starts `keyless dev` on free ports and waits until its env file exists and `/readyz` is green.
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// [`Dev::start`] with `extra_env` in keyless's environment.
    pub async fn start_with(extra_env: &[(&str, &str)]) -> Self {
        Self::start_with_args(&[], extra_env).await
    }

    /// [`Dev::start_with`] with `extra_args` given to `keyless dev` (e.g. `--source github-actions`).
    pub async fn start_with_args(extra_args: &[&str], extra_env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let env_file = dir.path().join("app.env");
        let stdout_path = dir.path().join("stdout.log");
        let stderr_path = dir.path().join("stderr.log");
        let mut child = Command::new(keyless_bin())
            .args(["dev", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .args(["--emulator-listen", "127.0.0.1:0"])
            .args(extra_args)
            .arg("--env-file")
            .arg(&env_file)
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .env("KEYLESS_LOG", std::env::var("KEYLESS_LOG").unwrap_or_else(|_| "debug".to_owned()))
            .envs(extra_env.iter().copied())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout_path).expect("the stdout log"))
            .stderr(std::fs::File::create(&stderr_path).expect("the stderr log"))
            .kill_on_drop(true)
            .spawn()
            .expect("spawning keyless dev");
        let mut exited = false;
        wait_until("keyless dev to write its env file", STARTUP_DEADLINE, || {
            exited = child.try_wait().ok().flatten().is_some();
            let written = env_file.exists();
            async move { written || exited }
        })
        .await;
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        assert!(!exited, "keyless dev exited early:\n{}{}", read(&stdout_path), read(&stderr_path));
        let env = parse_env_file(&std::fs::read_to_string(&env_file).expect("the env file"));
        let var = |name: &str| env.get(name).unwrap_or_else(|| panic!("{name} missing from the env file"));
        let emulator = ControlApi::new(var("KEYLESS_DEV_EMULATOR_URL"), Path::new(var("KEYLESS_DEV_EMULATOR_CA")));
        let dev = Self { child, dir, env, stdout_path, stderr_path, emulator };
        dev.wait_ready().await;
        dev
    }

    /// A variable of the app env.
    pub fn var(&self, name: &str) -> &str {
        self.env.get(name).unwrap_or_else(|| panic!("{name} missing from the env file: {:?}", self.env.keys()))
    }

    pub fn admin_url(&self) -> &str {
        self.var("KEYLESS_DEV_ADMIN_URL")
    }

    /// `/readyz`'s status (599: nothing answers).
    pub async fn readyz(&self) -> u16 {
        status_of(&format!("{}/readyz", self.admin_url())).await
    }

    pub async fn wait_ready(&self) {
        wait_until("/readyz to turn green", STARTUP_DEADLINE, || async { self.readyz().await == 200 }).await;
    }

    /// The app's environment without `names` (e.g. to steer an SDK to another provider).
    pub fn env_without(&self, names: &[&str]) -> BTreeMap<String, String> {
        self.env.iter().filter(|(k, _)| !names.contains(&k.as_str())).map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// `app` (an SDK client: [`App::python`], [`App::node`], [`App::go`], [`App::java`]) with
    /// exactly `env` (and PATH, HOME), like an unmodified app: its output, success or not.
    pub async fn run_in(&self, app: App, env: &BTreeMap<String, String>) -> Output {
        app.env(env).home(self.dir.path()).output().await
    }

    /// [`Dev::run_in`]'s stdout, or the test fails with its stderr and keyless's logs.
    pub async fn run_ok_in(&self, app: App, env: &BTreeMap<String, String>) -> String {
        app.env(env).home(self.dir.path()).stdout_ok(|| self.logs()).await
    }

    /// A Python snippet with exactly `env` (and PATH, HOME), like an unmodified app.
    pub async fn python_in(&self, script: &str, env: &BTreeMap<String, String>) -> Output {
        self.run_in(App::python(script), env).await
    }

    /// A Python snippet with the app's env: its stdout, or the test fails with its stderr and
    /// keyless's logs.
    pub async fn python_ok(&self, script: &str) -> String {
        self.python_ok_in(script, &self.env).await
    }

    pub async fn python_ok_in(&self, script: &str, env: &BTreeMap<String, String>) -> String {
        self.run_ok_in(App::python(script), env).await
    }

    /// `tests/node/SCRIPT args` with exactly `env` (and PATH, HOME, the Node clients): its stdout,
    /// or the test fails with its stderr and keyless's logs.
    pub async fn node_ok_in(
        &self,
        clients: &NodeClients,
        script: &str,
        args: &[&str],
        env: &BTreeMap<String, String>,
    ) -> String {
        self.run_ok_in(App::node(clients, script, args), env).await
    }

    pub async fn metrics(&self) -> String {
        let url = format!("{}/metrics", self.admin_url());
        clients::loopback().get(url).send().await.expect("/metrics answers").text().await.expect("the metrics")
    }

    /// `keyless_requests_total{provider,route,status}` now (0 when never counted).
    pub async fn requests_counted(&self, provider: &str, route: &str, status: u16) -> u64 {
        let labels = [("provider", provider), ("route", route), ("status", &status.to_string())];
        metrics::sum(&self.metrics().await, "keyless_requests_total", &labels)
    }

    /// What keyless printed so far (stdout, then stderr).
    pub fn logs(&self) -> String {
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        format!("{}{}", read(&self.stdout_path), read(&self.stderr_path))
    }

    /// SIGTERM, and the exit status.
    pub async fn stop(self) -> std::process::ExitStatus {
        stop_child(self.child).await
    }
}

/// Parses `KEY=VALUE` lines (the format the interface, README and docs/configuration.md fixes: no quotes, no export).
pub fn parse_env_file(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap_or_else(|| panic!("not a KEY=VALUE line: {l:?}"));
            (k.to_owned(), v.to_owned())
        })
        .collect()
}
