//! SDK clients run as unmodified apps: a Python snippet (the venv's pinned clients), a script of
//! `tests/node/` (the pinned Node clients), a program of `tests/go/` or a class of `tests/java/`,
//! with exactly the env a test gives them, plus PATH and a HOME of their own (no credentials or
//! config of the machine's user).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Output, Stdio};

use tokio::process::{Child, Command};

use crate::binary::workspace_root;
use crate::process::free_port;
use crate::tools::{self, GoClients, JavaClients, NodeClients};

/// A Python snippet printing how botocore found its credentials (`container-role`, `iam-role`,
/// `custom-process`, ...), then the ARN GetCallerIdentity names: read by [`boto3_whoami`].
pub const BOTO3_WHOAMI: &str = r#"
import boto3
session = boto3.Session()
print(session.get_credentials().method)
print(session.client("sts").get_caller_identity()["Arn"])
"#;

/// The two lines [`BOTO3_WHOAMI`] prints: (credential method, caller ARN), empty where missing.
pub fn boto3_whoami(out: &str) -> (String, String) {
    let mut lines = out.lines().map(str::to_owned);
    (lines.next().unwrap_or_default(), lines.next().unwrap_or_default())
}

/// A client process about to run.
#[derive(Debug)]
pub struct App {
    command: Command,
    what: String,
}

impl App {
    /// `python -c script` with the venv's Python.
    pub fn python(script: &str) -> Self {
        let mut command = Command::new(tools::python());
        command.arg("-c").arg(script);
        Self::new(command, "python".to_owned())
    }

    /// `node tests/node/{script} args...` with the pinned clients on `NODE_PATH`.
    pub fn node(clients: &NodeClients, script: &str, args: &[&str]) -> Self {
        let mut command = Command::new("node");
        command.arg(workspace_root().join("tests/node").join(script)).args(args);
        let mut app = Self::new(command, format!("node {script}"));
        app.command.env("NODE_PATH", &clients.modules);
        app
    }

    /// `tests/go`'s `program args...` (built by scripts/test). Its HTTP(S)_PROXY is a closed
    /// loopback port: Go never proxies loopback, so keyless is reached as usual, while a request
    /// to any other host (a hard-coded 169.254.169.254) fails at once, naming its URL, and no
    /// packet leaves the machine.
    pub fn go(clients: &GoClients, program: &str, args: &[&str]) -> Self {
        let mut command = Command::new(clients.bin.join(program));
        command.args(args);
        let mut app = Self::new(command, format!("go {program}"));
        // A port bound and released: nothing listens on it.
        let proxy = format!("http://127.0.0.1:{}", free_port());
        app.command.env("HTTP_PROXY", &proxy).env("HTTPS_PROXY", &proxy);
        app
    }

    /// `java keyless.{class} args...` with the pinned clients on the classpath (a quick-starting
    /// JVM: client compiler only, serial GC).
    pub fn java(clients: &JavaClients, class: &str, args: &[&str]) -> Self {
        let mut command = Command::new("java");
        command
            .args(["-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC", "-cp", &clients.classpath])
            .arg(format!("keyless.{class}"))
            .args(args);
        Self::new(command, format!("java {class}"))
    }

    fn new(mut command: Command, what: String) -> Self {
        command.env_clear().env("PATH", std::env::var("PATH").unwrap_or_default()).stdin(Stdio::null());
        Self { command, what }
    }

    /// Adds `env` (an app's environment).
    pub fn env(mut self, env: &BTreeMap<String, String>) -> Self {
        self.command.envs(env);
        self
    }

    /// Adds `vars`.
    pub fn vars(mut self, vars: &[(&str, &str)]) -> Self {
        self.command.envs(vars.iter().copied());
        self
    }

    /// The app's HOME.
    pub fn home(mut self, dir: &Path) -> Self {
        self.command.env("HOME", dir);
        self
    }

    pub async fn output(mut self) -> Output {
        self.command.output().await.unwrap_or_else(|e| panic!("running {}: {e}", self.what))
    }

    /// Its stdout; if it fails, the test fails with its stderr and `context` (keyless's logs).
    pub async fn stdout_ok(self, context: impl FnOnce() -> String) -> String {
        let what = self.what.clone();
        stdout_of_success(&what, self.output().await, context)
    }

    /// Starts it in the background, stdout and stderr piped.
    pub fn spawn(mut self) -> Child {
        self.command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", self.what))
    }
}

/// A client's stdout as the JSON it printed; the test fails, showing it, if it is not JSON.
pub fn json_of(stdout: &str) -> serde_json::Value {
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

/// `out`'s stdout; if it failed, the test fails with its stderr and `context`.
pub fn stdout_of_success(what: &str, out: Output, context: impl FnOnce() -> String) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n--- stdout\n{}\n--- stderr\n{}\n--- keyless\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        context()
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}
