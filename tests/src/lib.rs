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

/// The pinned Node SDK clients' `node_modules` (installed by `scripts/test` into `target/node` when
/// the machine has Node.js >= 20), or `None`.
pub fn node_modules() -> Option<PathBuf> {
    std::env::var_os("KEYLESS_TEST_NODE_MODULES").map(PathBuf::from).filter(|p| p.is_dir())
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
        self.stdout_of_success("python", out)
    }

    /// A client's stdout, or the test fails with its stderr and keyless's logs.
    fn stdout_of_success(&self, what: &str, out: Output) -> String {
        assert!(
            out.status.success(),
            "{what} failed:\n--- stderr\n{}\n--- keyless\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.logs()
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs `tests/node/SCRIPT` with `args` and exactly `env` (and PATH, HOME, the Node clients);
    /// returns its stdout, failing the test with its stderr and keyless's logs if it fails.
    pub async fn node_ok_in(
        &self,
        node_modules: &Path,
        script: &str,
        args: &[&str],
        env: &BTreeMap<String, String>,
    ) -> String {
        let out = Command::new("node")
            .arg(workspace_root().join("tests/node").join(script))
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", self.dir.path())
            .env("NODE_PATH", node_modules)
            .envs(env)
            .output()
            .await
            .unwrap();
        self.stdout_of_success(&format!("node {script}"), out)
    }

    /// `keyless_requests_total{provider,route,status}` now (0 when never counted).
    pub async fn requests_counted(&self, provider: &str, route: &str, status: u16) -> u64 {
        let metrics = reqwest::get(format!("{}/metrics", self.admin_url())).await.unwrap().text().await.unwrap();
        let labels = format!(r#"{{provider="{provider}",route="{route}",status="{status}"}}"#);
        metrics
            .lines()
            .find(|l| l.starts_with("keyless_requests_total") && l.contains(&labels))
            .map_or(0, |l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap() as u64)
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
        Self::spawn_as(None, args, env)
    }

    /// [`Process::spawn`] as user and group `uid` (needs root), like a container's `USER`.
    pub fn spawn_as(uid: Option<u32>, args: &[&str], env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let log_path = dir.path().join("keyless.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let mut command = Command::new(keyless_bin());
        if let Some(uid) = uid {
            command.uid(uid).gid(uid);
        }
        let child = command
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

// ------------------------------------------------------------------------------------------------
// The fault and load suite's environment: `keyless emulate` and `keyless serve` as two processes,
// a TCP proxy between them whose failures the test chooses, and continuous raw-HTTP load on every
// native endpoint, recording each request's outcome.

/// The test's wall clock: credential expiries are wall-clock instants.
#[allow(clippy::disallowed_methods)] // comparing with the expiries keyless serves needs real time
pub fn wall_clock() -> std::time::SystemTime {
    std::time::SystemTime::now()
}

impl Process {
    /// The child's process id (while it runs).
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Sends SIGTERM without waiting.
    pub fn terminate(&self) {
        terminate(&self.child);
    }

    /// Waits (at most 30 s) for the child to exit.
    pub async fn wait(mut self) -> std::process::ExitStatus {
        tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await.unwrap().unwrap()
    }
}

/// `keyless emulate` in its own process, with its `/_emulator/` control API.
#[derive(Debug)]
pub struct Emulator {
    process: Process,
    pub state: tempfile::TempDir,
    pub addr: std::net::SocketAddr,
    pub url: String,
    pub ca: PathBuf,
    client: reqwest::Client,
}

impl Emulator {
    /// Starts it on a free port and waits until its CA, its projected tokens and its API are there.
    pub async fn start() -> Self {
        let state = tempfile::tempdir().unwrap();
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
        let process = Process::spawn(
            &["emulate", "--listen", &addr.to_string(), "--state-dir", state.path().to_str().unwrap()],
            &[("KEYLESS_LOG", "info")],
        );
        let ca = state.path().join("ca.pem");
        let tokens = ["aws", "gcp", "azure"].map(|cloud| state.path().join("tokens").join(cloud).join("token"));
        wait_until("the emulator's CA and tokens", STARTUP_DEADLINE, || {
            let ready = ca.exists() && tokens.iter().all(|t| t.exists());
            async move { ready }
        })
        .await;
        let client = reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(&std::fs::read(&ca).unwrap()).unwrap()])
            .no_proxy()
            .build()
            .unwrap();
        let url = format!("https://{addr}");
        let emulator = Self { process, state, addr, url, ca, client };
        wait_until("the emulator's control API", STARTUP_DEADLINE, || async {
            emulator.client.get(format!("{}/_emulator/counters", emulator.url)).send().await.is_ok()
        })
        .await;
        emulator
    }

    /// The projector's directory for `cloud` (`aws`, `gcp`, `azure`): `token -> ..data/token`.
    pub fn token_dir(&self, cloud: &str) -> PathBuf {
        self.state.path().join("tokens").join(cloud)
    }

    /// `POST /_emulator/faults` with `body`.
    pub async fn fault(&self, body: serde_json::Value) {
        let r = self.client.post(format!("{}/_emulator/faults", self.url)).json(&body).send().await.unwrap();
        assert!(r.status().is_success(), "fault refused: {}", r.text().await.unwrap_or_default());
    }

    /// The same fault settings for every token service (`service` is added to `body`).
    pub async fn fault_all(&self, body: serde_json::Value) {
        for service in ["aws-sts", "gcp-sts", "gcp-iam", "azure-token"] {
            let mut body = body.clone();
            body["service"] = service.into();
            self.fault(body).await;
        }
    }

    /// Removes every fault and latency (lifetime caps stay).
    pub async fn clear_faults(&self) {
        let r = self.client.delete(format!("{}/_emulator/faults", self.url)).send().await.unwrap();
        assert!(r.status().is_success());
    }

    /// `POST /_emulator/rotate`: every projected token rewritten, kubelet style.
    pub async fn rotate(&self) {
        let r = self.client.post(format!("{}/_emulator/rotate", self.url)).send().await.unwrap();
        assert!(r.status().is_success(), "rotate failed: {}", r.text().await.unwrap_or_default());
    }

    pub async fn counters(&self) -> serde_json::Value {
        self.client.get(format!("{}/_emulator/counters", self.url)).send().await.unwrap().json().await.unwrap()
    }

    /// `POST /_emulator/mint`: a token signed by the emulator's issuer with `claims`.
    pub async fn mint(&self, claims: serde_json::Value) -> String {
        let r = self.client.post(format!("{}/_emulator/mint", self.url)).json(&claims).send().await.unwrap();
        assert!(r.status().is_success(), "mint refused: {}", r.text().await.unwrap_or_default());
        r.json::<serde_json::Value>().await.unwrap()["token"].as_str().unwrap().to_owned()
    }

    pub async fn identities(&self) -> serde_json::Value {
        self.client.get(format!("{}/_emulator/identities", self.url)).send().await.unwrap().json().await.unwrap()
    }

    pub async fn stop(self) -> std::process::ExitStatus {
        self.process.stop().await
    }
}

/// What the proxy between keyless and the emulator does with a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyMode {
    /// Relays bytes to this address.
    Forward(std::net::SocketAddr),
    /// Accepts and closes at once (a proxy or load balancer that drops connections).
    Close,
}

/// A TCP relay on loopback. Switching its mode cuts every open connection, so a pooled
/// keep-alive connection cannot carry the old behaviour past the switch.
#[derive(Debug)]
pub struct Proxy {
    pub addr: std::net::SocketAddr,
    mode: tokio::sync::watch::Sender<ProxyMode>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(mode: ProxyMode) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::watch::channel(mode);
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let mut rx = rx.clone();
                let mode = *rx.borrow_and_update();
                tokio::spawn(async move {
                    let ProxyMode::Forward(to) = mode else { return };
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(to).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = rx.changed() => {}
                    }
                });
            }
        });
        Self { addr, mode: tx, task }
    }

    pub fn set(&self, mode: ProxyMode) {
        self.mode.send_replace(mode);
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Secrets keyless's fault-suite sidecar is configured with (long enough for the log probes).
pub const CONTAINER_AUTHORIZATION: &str = "e2e-faults-container-authorization-2f9c1b7d";
pub const IDENTITY_HEADER: &str = "e2e-faults-identity-header-8a4e6c0f13d5";
/// The resource the Azure endpoints are loaded with (pre-warmed).
pub const AZURE_RESOURCE: &str = "https://management.azure.com/";

/// `keyless serve` with all three providers against `upstream` (the emulator, or a proxy to it).
#[derive(Debug)]
pub struct Sidecar {
    pub process: Process,
    pub listen: std::net::SocketAddr,
    pub admin: std::net::SocketAddr,
    pub config: PathBuf,
    _dir: tempfile::TempDir,
}

impl Sidecar {
    /// Starts it with `cache` (TOML lines of the `[cache]` section) and the log filter `log`, and
    /// waits for `/readyz` to turn green.
    pub async fn start(emulator: &Emulator, upstream: &str, cache: &str, log: &str) -> Self {
        let sidecar = Self::spawn(emulator, upstream, cache, log).await;
        wait_until("keyless serve to turn ready", STARTUP_DEADLINE, || async { sidecar.readyz().await == 200 }).await;
        sidecar
    }

    /// Starts it without waiting for readiness.
    pub async fn spawn(emulator: &Emulator, upstream: &str, cache: &str, log: &str) -> Self {
        let ids = emulator.identities().await;
        let id = |key: &str| toml_string(ids[key].as_str().unwrap());
        let token = |cloud: &str| toml_string(emulator.token_dir(cloud).join("token").to_str().unwrap());
        let (upstream, ca) = (toml_string(upstream), toml_string(emulator.ca.to_str().unwrap()));
        let listen = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
        let admin = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
        let toml = format!(
            r#"listen = "{listen}"
admin_listen = "{admin}"
log = {log}

[cache]
{cache}

[aws]
token_file = {aws_token}
role_arn = {role}
region = "us-east-1"
sts_endpoint = {upstream}
ca_file = {ca}
authorization_token = "{CONTAINER_AUTHORIZATION}"

[gcp]
token_file = {gcp_token}
audience = {gcp_audience}
service_account = {gcp_sa}
project_id = {gcp_project}
project_number = {gcp_number}
sts_endpoint = {upstream}
iam_endpoint = {upstream}
ca_file = {ca}

[azure]
token_file = {azure_token}
tenant_id = {tenant}
client_id = {client}
authority_host = {upstream}
ca_file = {ca}
resources = ["{AZURE_RESOURCE}"]
identity_header = "{IDENTITY_HEADER}"
"#,
            log = toml_string(log),
            aws_token = token("aws"),
            role = id("aws_role_arn"),
            gcp_token = token("gcp"),
            gcp_audience = toml_string(ids["audiences"]["gcp"].as_str().unwrap()),
            gcp_sa = id("gcp_service_account"),
            gcp_project = id("gcp_project_id"),
            gcp_number = id("gcp_project_number"),
            azure_token = token("azure"),
            tenant = id("azure_tenant_id"),
            client = id("azure_client_id"),
        );
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("keyless.toml");
        std::fs::write(&config, toml).unwrap();
        let process = Process::spawn(&["serve", "--config", config.to_str().unwrap()], &[]);
        Self { process, listen, admin, config, _dir: dir }
    }

    pub async fn readyz(&self) -> u16 {
        status_of(&format!("http://{}/readyz", self.admin)).await
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.admin)).await.unwrap().text().await.unwrap()
    }

    /// `keyless_exchanges_total` of `provider`, summed over identities: `(succeeded, failed)`.
    pub async fn exchanges(&self, provider: &str) -> (u64, u64) {
        let metrics = self.metrics().await;
        let (mut ok, mut failed) = (0, 0);
        for line in metrics.lines().filter(|l| l.starts_with("keyless_exchanges_total{")) {
            if !line.contains(&format!("provider=\"{provider}\"")) {
                continue;
            }
            let value = line.rsplit(' ').next().unwrap().parse::<f64>().unwrap() as u64;
            if line.contains("outcome=\"success\"") { ok += value } else { failed += value }
        }
        (ok, failed)
    }

    pub fn logs(&self) -> String {
        self.process.logs()
    }
}

fn toml_string(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

/// The five native endpoints keyless serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Endpoint {
    AwsContainer,
    AwsImds,
    GceToken,
    AzureImds,
    AzureAppService,
}

impl Endpoint {
    pub const ALL: [Self; 5] =
        [Self::AwsContainer, Self::AwsImds, Self::GceToken, Self::AzureImds, Self::AzureAppService];

    /// Whether a failure answer has the endpoint's native error shape (what its SDKs parse).
    pub fn is_native_error(self, status: u16, body: &str) -> bool {
        let json: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
        let string = |key: &str| json[key].as_str().is_some_and(|s| !s.is_empty());
        status >= 400
            && match self {
                Self::AwsContainer | Self::AwsImds => string("Code") && string("Message"),
                Self::GceToken => body.starts_with("keyless: no Google credential available"),
                Self::AzureImds => string("error") && string("error_description"),
                Self::AzureAppService => json["statusCode"].as_u64() == Some(u64::from(status)) && string("message"),
            }
    }
}

/// One request of the load: when it was sent, how long it took, and what came back.
#[derive(Clone, Debug)]
pub struct Sample {
    pub endpoint: Endpoint,
    pub sent: std::time::SystemTime,
    pub took: Duration,
    /// The served credential's expiry, or the failure (status 0: no HTTP answer).
    pub outcome: Result<std::time::SystemTime, (u16, String)>,
}

#[derive(Debug, Default)]
struct LoadRecord {
    samples: std::sync::Mutex<Vec<Sample>>,
    secrets: std::sync::Mutex<std::collections::BTreeSet<String>>,
}

/// Continuous raw-HTTP clients on every endpoint, each with its own keep-alive connection pool,
/// one request every `pace` per client.
#[derive(Debug)]
pub struct Load {
    record: std::sync::Arc<LoadRecord>,
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// What a load run saw.
#[derive(Debug)]
pub struct LoadReport {
    pub samples: Vec<Sample>,
    /// Every distinct secret the clients were served (keys, session tokens, access tokens).
    pub secrets: Vec<String>,
}

impl Load {
    pub fn start(sidecar: &Sidecar, clients_per_endpoint: usize, pace: Duration) -> Self {
        let record = std::sync::Arc::new(LoadRecord::default());
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let mut tasks = Vec::new();
        for endpoint in Endpoint::ALL {
            for _ in 0..clients_per_endpoint {
                let (record, mut stopped, listen) = (record.clone(), stopped.clone(), sidecar.listen);
                tasks.push(tokio::spawn(async move {
                    let http = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(5)).build().unwrap();
                    let mut imds_session = None;
                    let mut tick = tokio::time::interval(pace);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    loop {
                        tokio::select! {
                            _ = tick.tick() => {}
                            _ = stopped.wait_for(|s| *s) => break,
                        }
                        let sent = wall_clock();
                        let started = tokio::time::Instant::now();
                        let (outcome, secrets) = request(&http, endpoint, listen, &mut imds_session, sent).await;
                        let sample = Sample { endpoint, sent, took: started.elapsed(), outcome };
                        record.samples.lock().unwrap().push(sample);
                        if !secrets.is_empty() {
                            record.secrets.lock().unwrap().extend(secrets);
                        }
                    }
                }));
            }
        }
        Self { record, stop, tasks }
    }

    /// How many samples so far satisfy `f`.
    pub fn count(&self, f: impl Fn(&Sample) -> bool) -> usize {
        self.record.samples.lock().unwrap().iter().filter(|s| f(s)).count()
    }

    pub async fn stop(self) -> LoadReport {
        self.stop.send_replace(true);
        for task in self.tasks {
            task.await.unwrap();
        }
        let samples = std::mem::take(&mut *self.record.samples.lock().unwrap());
        let secrets = self.record.secrets.lock().unwrap().iter().cloned().collect();
        LoadReport { samples, secrets }
    }
}

/// One request as the endpoint's SDKs make it: the expiry served (and the secrets in the
/// answer), or the failure.
async fn request(
    http: &reqwest::Client,
    endpoint: Endpoint,
    listen: std::net::SocketAddr,
    imds_session: &mut Option<String>,
    sent: std::time::SystemTime,
) -> (Result<std::time::SystemTime, (u16, String)>, Vec<String>) {
    let base = format!("http://{listen}");
    let resource = AZURE_RESOURCE.replace(':', "%3A").replace('/', "%2F");
    let request = match endpoint {
        Endpoint::AwsContainer => {
            http.get(format!("{base}/v1/credentials")).header("Authorization", CONTAINER_AUTHORIZATION)
        }
        Endpoint::AwsImds => {
            if imds_session.is_none() {
                let put = http
                    .put(format!("{base}/latest/api/token"))
                    .header("X-aws-ec2-metadata-token-ttl-seconds", "21600")
                    .send()
                    .await;
                match put {
                    Ok(r) if r.status().is_success() => *imds_session = Some(r.text().await.unwrap_or_default()),
                    Ok(r) => return (Err((r.status().as_u16(), r.text().await.unwrap_or_default())), Vec::new()),
                    Err(e) => return (Err((0, e.to_string())), Vec::new()),
                }
            }
            http.get(format!("{base}/latest/meta-data/iam/security-credentials/keyless-dev"))
                .header("X-aws-ec2-metadata-token", imds_session.clone().unwrap_or_default())
        }
        Endpoint::GceToken => http
            .get(format!("{base}/computeMetadata/v1/instance/service-accounts/default/token"))
            .header("Metadata-Flavor", "Google"),
        Endpoint::AzureImds => http
            .get(format!("{base}/metadata/identity/oauth2/token?api-version=2018-02-01&resource={resource}"))
            .header("Metadata", "true"),
        Endpoint::AzureAppService => http
            .get(format!("{base}/msi/token?api-version=2019-08-01&resource={resource}"))
            .header("X-IDENTITY-HEADER", IDENTITY_HEADER),
    };
    let response = match request.send().await {
        Ok(r) => r,
        Err(e) => return (Err((0, e.to_string())), Vec::new()),
    };
    let status = response.status().as_u16();
    let body = response.text().await.unwrap_or_default();
    if status != 200 {
        if status == 401 && endpoint == Endpoint::AwsImds {
            *imds_session = None;
        }
        return (Err((status, body)), Vec::new());
    }
    let json: serde_json::Value = match serde_json::from_str(&body) {
        Ok(json) => json,
        Err(_) => return (Err((status, body)), Vec::new()),
    };
    let text = |key: &str| json[key].as_str().unwrap_or_default().to_owned();
    let epoch = |secs: u64| std::time::UNIX_EPOCH + Duration::from_secs(secs);
    let (expiry, secrets) = match endpoint {
        Endpoint::AwsContainer | Endpoint::AwsImds => {
            (parse_rfc3339_utc(&text("Expiration")), vec![text("AccessKeyId"), text("SecretAccessKey"), text("Token")])
        }
        Endpoint::GceToken => {
            (json["expires_in"].as_u64().map(|s| sent + Duration::from_secs(s)), vec![text("access_token")])
        }
        Endpoint::AzureImds | Endpoint::AzureAppService => {
            (text("expires_on").parse().ok().map(epoch), vec![text("access_token")])
        }
    };
    match expiry {
        Some(expiry) if secrets.iter().all(|s| !s.is_empty()) => (Ok(expiry), secrets),
        _ => (Err((status, body)), Vec::new()),
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` (the AWS `Expiration` format) as a wall-clock instant.
pub fn parse_rfc3339_utc(text: &str) -> Option<std::time::SystemTime> {
    let b = text.as_bytes();
    if b.len() != 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' || b[19] != b'Z'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| text.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    // Howard Hinnant's days_from_civil.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = u64::try_from(days * 86_400 + hh * 3600 + mm * 60 + ss).ok()?;
    Some(std::time::UNIX_EPOCH + Duration::from_secs(secs))
}

/// Requests, failures and latency of some samples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tally {
    pub requests: usize,
    pub failures: usize,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl Tally {
    pub fn of<'a>(samples: impl IntoIterator<Item = &'a Sample>) -> Self {
        let mut took = Vec::new();
        let mut failures = 0;
        for s in samples {
            took.push(s.took);
            failures += usize::from(s.outcome.is_err());
        }
        took.sort_unstable();
        let at = |q: f64| took.get(((took.len() as f64 * q) as usize).min(took.len().saturating_sub(1))).copied();
        Self {
            requests: took.len(),
            failures,
            p50: at(0.5).unwrap_or_default(),
            p99: at(0.99).unwrap_or_default(),
            max: took.last().copied().unwrap_or_default(),
        }
    }
}

impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} requests, {} failed, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            self.requests,
            self.failures,
            self.p50.as_secs_f64() * 1e3,
            self.p99.as_secs_f64() * 1e3,
            self.max.as_secs_f64() * 1e3
        )
    }
}

/// Fails if any of `secrets` (or a 16-character window from its middle) appears in `text`.
pub fn assert_holds_no_secret(text: &str, secrets: &[String], what: &str) {
    for secret in secrets {
        assert!(secret.len() >= 16, "too short to be a meaningful secret: {} chars", secret.len());
        let probe = &secret[secret.len() / 2 - 8..secret.len() / 2 + 8];
        assert!(!text.contains(probe), "a secret ({}...) appears in {what}", &secret[..4]);
    }
}
