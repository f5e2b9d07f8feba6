//! The end-to-end test environment: the real `keyless` binary (built by `scripts/test`, found
//! through `KEYLESS_BIN`), the real Python SDK clients (in `target/venv`, found through
//! `KEYLESS_TEST_PYTHON`) and the emulator that `keyless dev` runs. Each test reads as a story:
//! start `keyless dev`, run a client with the app's env, check what the cloud saw.
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use tokio::process::{Child, Command};

/// How long start-up and readiness may take before a test fails (a deadline, not a sleep).
pub const STARTUP_DEADLINE: Duration = Duration::from_secs(60);

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

/// The keyless binary under test.
pub fn keyless_bin() -> PathBuf {
    let path = std::env::var_os("KEYLESS_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/debug/keyless"));
    assert!(path.exists(), "{} does not exist: run the suite with ./scripts/test (it builds keyless)", path.display());
    path
}

/// The venv Python with the pinned SDK clients.
pub fn python() -> PathBuf {
    let path = std::env::var_os("KEYLESS_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/venv/bin/python"));
    assert!(
        path.exists(),
        "{} does not exist: run the suite with ./scripts/test (it installs the Python clients)",
        path.display()
    );
    path
}

/// Waits for `condition` to hold, checking every 20 ms until `deadline`; panics with `what`.
pub async fn wait_until<F, Fut>(what: &str, deadline: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let give_up = tokio::time::Instant::now() + deadline;
    while !condition().await {
        assert!(tokio::time::Instant::now() < give_up, "timed out after {deadline:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends SIGTERM (graceful shutdown), as Kubernetes does.
pub fn terminate(child: &Child) {
    if let Some(pid) = child.id() {
        let _ = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status();
    }
}

/// A running `keyless dev`: emulator, projector and sidecar, with the app env it wrote.
#[derive(Debug)]
pub struct Dev {
    child: Child,
    pub dir: tempfile::TempDir,
    pub env: BTreeMap<String, String>,
    pub stdout_path: PathBuf,
    pub stderr_path: PathBuf,
}

impl Dev {
    /// Starts `keyless dev` on free ports and waits until its env file exists and `/readyz` is green.
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    pub async fn start_with(extra_env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let env_file = dir.path().join("app.env");
        let stdout_path = dir.path().join("stdout.log");
        let stderr_path = dir.path().join("stderr.log");
        let child = Command::new(keyless_bin())
            .args(["dev", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .args(["--emulator-listen", "127.0.0.1:0"])
            .arg("--env-file")
            .arg(&env_file)
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .env("KEYLESS_LOG", std::env::var("KEYLESS_LOG").unwrap_or_else(|_| "debug".to_owned()))
            .envs(extra_env.iter().copied())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout_path).unwrap())
            .stderr(std::fs::File::create(&stderr_path).unwrap())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut dev = Self { child, dir, env: BTreeMap::new(), stdout_path, stderr_path };
        let env_file_ref = &env_file;
        let exited = std::sync::atomic::AtomicBool::new(false);
        wait_until("keyless dev to write its env file", STARTUP_DEADLINE, || {
            let exists = env_file_ref.exists();
            let gone = dev.child.try_wait().ok().flatten().is_some();
            exited.store(gone, std::sync::atomic::Ordering::Relaxed);
            async move { exists || gone }
        })
        .await;
        assert!(!exited.into_inner(), "keyless dev exited early:\n{}", dev.logs());
        dev.env = parse_env_file(&std::fs::read_to_string(&env_file).unwrap());
        dev.wait_ready().await;
        dev
    }

    pub fn var(&self, name: &str) -> &str {
        self.env.get(name).unwrap_or_else(|| panic!("{name} missing from the env file: {:?}", self.env.keys()))
    }

    pub fn admin_url(&self) -> &str {
        self.var("KEYLESS_ADMIN_URL")
    }

    pub async fn readyz(&self) -> reqwest::StatusCode {
        match reqwest::get(format!("{}/readyz", self.admin_url())).await {
            Ok(r) => r.status(),
            Err(_) => reqwest::StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    pub async fn wait_ready(&self) {
        wait_until("/readyz to turn green", STARTUP_DEADLINE, || async {
            self.readyz().await == reqwest::StatusCode::OK
        })
        .await;
    }

    /// An HTTPS client that trusts the emulator's CA (for the emulator's control API).
    pub fn emulator_client(&self) -> reqwest::Client {
        let ca = std::fs::read(self.var("KEYLESS_EMULATOR_CA")).unwrap();
        reqwest::Client::builder().tls_certs_only([reqwest::Certificate::from_pem(&ca).unwrap()]).build().unwrap()
    }

    /// `POST /_emulator/faults` with `body`.
    pub async fn inject_fault(&self, body: serde_json::Value) {
        let url = format!("{}/_emulator/faults", self.var("KEYLESS_EMULATOR_URL"));
        let r = self.emulator_client().post(url).json(&body).send().await.unwrap();
        assert!(r.status().is_success(), "fault injection refused: {}", r.text().await.unwrap_or_default());
    }

    /// The emulator's per-service call counters.
    pub async fn counters(&self) -> serde_json::Value {
        let url = format!("{}/_emulator/counters", self.var("KEYLESS_EMULATOR_URL"));
        self.emulator_client().get(url).send().await.unwrap().json().await.unwrap()
    }

    /// The app's environment without `names` (e.g. to steer an SDK to another provider).
    pub fn env_without(&self, names: &[&str]) -> BTreeMap<String, String> {
        self.env.iter().filter(|(k, _)| !names.contains(&k.as_str())).map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// Runs a Python snippet with exactly `env` (and PATH, HOME), like an unmodified app.
    pub async fn python_in(&self, script: &str, env: &BTreeMap<String, String>) -> Output {
        Command::new(python())
            .arg("-c")
            .arg(script)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", self.dir.path())
            .envs(env)
            .output()
            .await
            .unwrap()
    }

    /// Runs a Python snippet with the app's environment; returns its stdout, failing the test
    /// with its stderr and keyless's logs if it fails.
    pub async fn python_ok(&self, script: &str) -> String {
        self.python_ok_in(script, &self.env).await
    }

    pub async fn python_ok_in(&self, script: &str, env: &BTreeMap<String, String>) -> String {
        let out = self.python_in(script, env).await;
        assert!(
            out.status.success(),
            "python failed:\n--- stderr\n{}\n--- keyless\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.logs()
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// What keyless printed so far (stdout, then stderr).
    pub fn logs(&self) -> String {
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        format!("{}{}", read(&self.stdout_path), read(&self.stderr_path))
    }

    /// SIGTERM, and the exit status.
    pub async fn stop(mut self) -> std::process::ExitStatus {
        terminate(&self.child);
        tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await.unwrap().unwrap()
    }
}

/// Parses `KEY=VALUE` lines (the format SPEC section 4 fixes: no quotes, no export).
pub fn parse_env_file(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap_or_else(|| panic!("not a KEY=VALUE line: {l:?}"));
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

/// A free loopback port (bound and released: for processes that need a fixed port up front).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A JWT-shaped token (unsigned: for upstreams that do not verify, like moto).
pub fn unsigned_jwt(sub: &str, aud: &str) -> String {
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let exp = std::time::SystemTime::UNIX_EPOCH.elapsed().unwrap().as_secs() + 3600;
    format!(
        "{}.{}.{}",
        b64(r#"{"alg":"RS256","kid":"e2e"}"#),
        b64(&format!(r#"{{"iss":"https://kubernetes.default.svc","sub":"{sub}","aud":["{aud}"],"exp":{exp}}}"#)),
        b64("signature")
    )
}

/// A `keyless serve` (or any keyless subcommand) child process with captured logs.
#[derive(Debug)]
pub struct Process {
    child: Child,
    pub log_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Process {
    /// Spawns `keyless ARGS` with exactly `env` (plus PATH).
    pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let log_path = dir.path().join("keyless.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let child = Command::new(keyless_bin())
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        Self { child, log_path, _dir: dir }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn has_exited(&mut self) -> bool {
        self.child.try_wait().ok().flatten().is_some()
    }

    pub async fn stop(mut self) -> std::process::ExitStatus {
        terminate(&self.child);
        tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await.unwrap().unwrap()
    }
}

/// `GET url` status, or 599 when nothing answers.
pub async fn status_of(url: &str) -> u16 {
    reqwest::get(url).await.map(|r| r.status().as_u16()).unwrap_or(599)
}
