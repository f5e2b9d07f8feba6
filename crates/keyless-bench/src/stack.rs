//! The processes under test: `keyless emulate` (the clouds, on loopback) and `keyless serve`
//! configured against it, each its own process so keyless's memory is measured alone.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::process::{Child, Command};
use tokio::time::Instant;

use keyless_provider::{DevEmulator, DevToken};

use crate::BenchError;
use crate::procs::free_port;

const START_DEADLINE: Duration = Duration::from_secs(60);

/// How a process under test is started: directly, or under a tool (valgrind) that runs it in the
/// same process, so its PID is the program's.
#[derive(Debug, Clone, Default)]
pub struct Launcher {
    /// The tool and its arguments, before the program's path; empty: run the program itself.
    pub prefix: Vec<std::ffi::OsString>,
    /// How long the program may take to get ready.
    pub deadline: Option<Duration>,
}

impl Launcher {
    pub fn command(&self, program: &Path) -> Command {
        match self.prefix.split_first() {
            None => Command::new(program),
            Some((tool, args)) => {
                let mut command = Command::new(tool);
                command.args(args).arg(program);
                command
            }
        }
    }

    fn deadline(&self) -> Duration {
        self.deadline.unwrap_or(START_DEADLINE)
    }
}

pub(crate) fn command(launcher: &Launcher, keyless: &Path, log: &Path) -> Result<Command, BenchError> {
    let file_error = |e| BenchError::File { path: log.to_owned(), source: e };
    let stdout = std::fs::File::create(log).map_err(file_error)?;
    let stderr = stdout.try_clone().map_err(file_error)?;
    let mut command = launcher.command(keyless);
    // Only what the bench sets: a KEYLESS_* or cloud variable of this shell must not change the run.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy().into_owned();
        if name.starts_with("KEYLESS_") || name == "RUST_LOG" {
            command.env_remove(name);
        }
    }
    command.stdin(Stdio::null()).stdout(stdout).stderr(stderr).kill_on_drop(true);
    Ok(command)
}

/// `keyless serve --config CONFIG --listen LISTEN --admin-listen ADMIN`, as [`command`] prepares it.
pub(crate) fn serve_command(
    launcher: &Launcher,
    keyless: &Path,
    log: &Path,
    config: &Path,
    listen: SocketAddr,
    admin: SocketAddr,
) -> Result<Command, BenchError> {
    let mut command = command(launcher, keyless, log)?;
    command
        .arg("serve")
        .arg("--config")
        .arg(config)
        .arg("--listen")
        .arg(listen.to_string())
        .arg("--admin-listen")
        .arg(admin.to_string());
    Ok(command)
}

pub(crate) fn spawn(mut command: Command, keyless: &Path) -> Result<Child, BenchError> {
    command.spawn().map_err(|e| BenchError::Spawn { path: keyless.to_owned(), source: e })
}

/// A running `keyless emulate`.
pub struct Emulator {
    _child: Child,
    pub pid: u32,
    pub url: String,
    pub state_dir: PathBuf,
    client: reqwest::Client,
    pub identities: Value,
}

impl Emulator {
    pub async fn start(keyless: &Path, dir: &Path) -> Result<Self, BenchError> {
        Self::start_with(keyless, dir, &[]).await
    }

    /// `keyless emulate` with further arguments (e.g. `--credential-lifetime`).
    pub async fn start_with(keyless: &Path, dir: &Path, args: &[String]) -> Result<Self, BenchError> {
        let addr = free_port()?;
        let state_dir = dir.join("emulator");
        let log = dir.join("emulator.log");
        let mut command = command(&Launcher::default(), keyless, &log)?;
        command.arg("emulate").arg("--listen").arg(addr.to_string()).arg("--state-dir").arg(&state_dir).args(args);
        let mut child = spawn(command, keyless)?;
        let url = format!("https://{addr}");
        let ca_path = state_dir.join("ca.pem");
        let give_up = Instant::now() + START_DEADLINE;
        loop {
            if let Some(client) = std::fs::read(&ca_path).ok().and_then(|pem| https_client(&pem)) {
                let identities = client.get(format!("{url}/_emulator/identities")).send().await;
                if let Ok(response) = identities.and_then(reqwest::Response::error_for_status) {
                    let identities = response.json().await.map_err(|e| BenchError::Emulator(e.to_string()))?;
                    let pid = child.id().unwrap_or(0);
                    return Ok(Self { _child: child, pid, url, state_dir, client, identities });
                }
            }
            if child.try_wait().ok().flatten().is_some() || Instant::now() > give_up {
                return Err(BenchError::NotReady { what: "keyless emulate", log });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn identity(&self, name: &str) -> String {
        self.identities.get(name).and_then(Value::as_str).unwrap_or_default().to_owned()
    }

    pub fn token_path(&self, cloud: &str) -> PathBuf {
        self.state_dir.join("tokens").join(cloud).join("token")
    }

    pub fn ca_path(&self) -> PathBuf {
        self.state_dir.join("ca.pem")
    }

    /// Calls that reached each emulated service so far (`/_emulator/counters`).
    pub async fn counters(&self) -> Result<Value, BenchError> {
        self.get("counters").await
    }

    /// `GET /_emulator/{path}`'s JSON.
    pub async fn get(&self, path: &str) -> Result<Value, BenchError> {
        let response = self
            .client
            .get(format!("{}/_emulator/{path}", self.url))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| BenchError::Emulator(e.to_string()))?;
        response.json().await.map_err(|e| BenchError::Emulator(e.to_string()))
    }
}

impl Emulator {
    /// `POST /_emulator/{path}` with a JSON body; fails unless it answers 2xx.
    pub async fn post(&self, path: &str, body: &Value) -> Result<(), BenchError> {
        let response = self
            .client
            .post(format!("{}/_emulator/{path}", self.url))
            .json(body)
            .send()
            .await
            .map_err(|e| BenchError::Emulator(format!("POST /_emulator/{path}: {e}")))?;
        if !response.status().is_success() {
            let status = response.status();
            let text = response.text().await.unwrap_or_default();
            return Err(BenchError::Emulator(format!("POST /_emulator/{path} {body} answered {status}: {text}")));
        }
        Ok(())
    }
}

fn https_client(ca_pem: &[u8]) -> Option<reqwest::Client> {
    let ca = reqwest::Certificate::from_pem(ca_pem).ok()?;
    reqwest::Client::builder().tls_certs_only([ca]).no_proxy().build().ok()
}

/// `keyless serve`'s configuration for the emulator: every provider, every native endpoint, AWS's
/// authorization token in `aws_authorization_file`.
pub fn sidecar_toml(emulator: &Emulator, aws_authorization_file: &Path) -> Result<String, BenchError> {
    let ca_file = emulator.ca_path();
    let dev = DevEmulator {
        endpoint: &emulator.url,
        ca_file: &ca_file,
        identities: &emulator.identities,
        state_dir: None,
        second_identities: false,
    };
    let config = keyless_registry::dev_config(&dev, &|cloud| DevToken::File(emulator.token_path(cloud)))
        .map_err(|e| BenchError::Emulator(format!("the sidecar's configuration: {e}")))?;
    Ok(config
        .set_in("aws", "authorization_token_file", aws_authorization_file.to_string_lossy().into_owned())
        .to_toml())
}

/// Times from spawning `keyless serve`.
#[derive(Debug, Clone, Copy)]
pub struct ColdStart {
    /// To the first answer of `/readyz`, whatever its status: the listeners are up.
    pub serving: Duration,
    /// To the first 200 of `/readyz`: every configured identity holds a credential.
    pub ready: Duration,
}

/// A running `keyless serve`.
pub struct Sidecar {
    child: Child,
    pub pid: u32,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    http: reqwest::Client,
}

impl Sidecar {
    /// Spawns `keyless serve` and waits for `/readyz` to answer 200 (polled every millisecond).
    pub async fn start(
        launcher: &Launcher,
        keyless: &Path,
        config: &Path,
        env: &[(&str, &str)],
        log: &Path,
    ) -> Result<(Self, ColdStart), BenchError> {
        let listen = free_port()?;
        let admin = free_port()?;
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(2))
            .build()
            .map_err(|e| BenchError::Request(e.to_string()))?;
        let readyz = format!("http://{admin}/readyz");
        let mut command = serve_command(launcher, keyless, log, config, listen, admin)?;
        command.envs(env.iter().copied());
        let spawned = Instant::now();
        let mut child = spawn(command, keyless)?;
        let give_up = spawned + launcher.deadline();
        let mut serving = None;
        loop {
            if let Ok(r) = http.get(&readyz).send().await {
                let serving = *serving.get_or_insert_with(|| spawned.elapsed());
                if r.status() == reqwest::StatusCode::OK {
                    let ready = spawned.elapsed();
                    let pid = child
                        .id()
                        .ok_or_else(|| BenchError::NotReady { what: "keyless serve", log: log.to_owned() })?;
                    return Ok((Self { child, pid, listen, admin, http }, ColdStart { serving, ready }));
                }
            }
            if child.try_wait().ok().flatten().is_some() || Instant::now() > give_up {
                return Err(BenchError::NotReady { what: "keyless serve", log: log.to_owned() });
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// The sum of `keyless_exchanges_total` over every label set.
    pub async fn exchanges(&self) -> Result<u64, BenchError> {
        let text = self
            .http
            .get(format!("http://{}/metrics", self.admin))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| BenchError::Request(format!("GET /metrics: {e}")))?
            .text()
            .await
            .map_err(|e| BenchError::Request(format!("GET /metrics: {e}")))?;
        Ok(text
            .lines()
            .filter(|l| l.starts_with("keyless_exchanges_total{"))
            .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
            .sum::<f64>() as u64)
    }

    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}
