//! `keyless` subcommands as child processes: exactly the env a test gives them, output captured
//! to a file the test reads, SIGTERM as Kubernetes sends it.

use std::path::PathBuf;
use std::process::{ExitStatus, Output, Stdio};
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::binary::keyless_bin;

/// How long a process may take to exit once told to.
const EXIT_DEADLINE: Duration = Duration::from_secs(30);

/// A free loopback port (bound and released: for processes that need a fixed port up front),
/// never one this process handed out before ([`crate::ports`]).
pub fn free_port() -> u16 {
    crate::ports::free_port().expect("a loopback port").port()
}

/// Sends SIGTERM (graceful shutdown), as Kubernetes does.
pub fn terminate(child: &Child) {
    if let Some(pid) = child.id() {
        let _ = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status();
    }
}

/// A `keyless` child process whose stdout and stderr go to one log file.
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
        Self::spawn_in(None, uid, args, env)
    }

    /// [`Process::spawn_as`] in the network namespace `/run/netns/NETNS` when given (`nsenter`
    /// enters it, then execs keyless: the pid is keyless's).
    pub fn spawn_in(netns: Option<&str>, uid: Option<u32>, args: &[&str], env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let log_path = dir.path().join("keyless.log");
        let log = std::fs::File::create(&log_path).expect("the log file");
        let mut command = match netns {
            Some(netns) => {
                let mut command = Command::new("nsenter");
                command.arg(format!("--net=/run/netns/{netns}")).arg("--").arg(keyless_bin());
                command
            }
            None => Command::new(keyless_bin()),
        };
        if let Some(uid) = uid {
            command.uid(uid).gid(uid);
        }
        let child = command
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("the log file"))
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("spawning keyless");
        Self { child, log_path, _dir: dir }
    }

    /// What it printed so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn has_exited(&mut self) -> bool {
        self.child.try_wait().ok().flatten().is_some()
    }

    /// The process id (while it runs).
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// SIGTERM without waiting.
    pub fn terminate(&self) {
        terminate(&self.child);
    }

    /// Waits (bounded) for the process to exit by itself.
    pub async fn wait(mut self) -> ExitStatus {
        tokio::time::timeout(EXIT_DEADLINE, self.child.wait()).await.expect("keyless exits").expect("its status")
    }

    /// SIGTERM, and the exit status.
    pub async fn stop(self) -> ExitStatus {
        self.terminate();
        self.wait().await
    }
}

/// Waits (bounded) for `child` to exit after SIGTERM.
pub async fn stop_child(mut child: Child) -> ExitStatus {
    terminate(&child);
    tokio::time::timeout(EXIT_DEADLINE, child.wait()).await.expect("the process exits").expect("its status")
}

/// `command`'s output; the test fails if it takes longer than `deadline`.
pub(crate) async fn output_within(mut command: Command, deadline: Duration, what: &str) -> Output {
    tokio::time::timeout(deadline, command.output())
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish in {deadline:?}"))
        .unwrap_or_else(|e| panic!("running {what}: {e}"))
}

/// `out`'s stdout; the test fails with its output if `what` failed.
pub(crate) fn succeeded(what: &str, out: Output) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
