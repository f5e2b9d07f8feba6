//! Tests that need a process environment of their own. SDKs that read only the process env (the
//! AWS SDK's container and IMDS providers, azure_identity, google-cloud-auth, proxy settings) cannot
//! be configured from a test: edition 2024 makes `set_var` unsafe and unsafe code is forbidden. So
//! the test re-executes its own binary to run one *child test* with the env it chose.
//!
//! The test is its own child, so the runner counts one test that ran: it starts with
//! `if is_child(NAME) { return the_child().await; }` and runs `ChildTest::new(NAME)`; in the
//! child, [`is_child`] is true and the test runs only the child's part (an ordinary function, not
//! a test), whose report the parent reads on stdout. No `#[ignore]`d child tests, so `ignored` in
//! the runner's counts means only a test that could not run (keyless-test-support's `tools`).
//!
//! The older form, an `#[ignore]`d child test that starts with [`expect_child`] or [`child_env`],
//! still works; it shows as `ignored` in every run.

use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

/// How long a child test may run (an SDK's retries included) before the parent fails it, killing it.
const CHILD_DEADLINE: Duration = Duration::from_secs(300);

/// Set in the child to the name of the test it runs. Not a `KEYLESS_*` name: `keyless exec` and
/// command sources keep every `KEYLESS_*` variable from the programs they start, so a child run
/// as exec's command would not see it and would run the parent's half again.
pub const CHILD: &str = "TEST_SUPPORT_CHILD";

/// The test binary's arguments before the test's name: that test alone (both a test of that name
/// and an older `#[ignore]`d child test), its output shown.
pub const CHILD_ARGS: [&str; 5] = ["--include-ignored", "--nocapture", "--test-threads=1", "--exact", "--"];

/// Whether this process is the child that `test` started: its env names `test`. Panics when it
/// names another test (a child runs one test only, `--exact`).
pub fn is_child(test: &str) -> bool {
    match std::env::var(CHILD) {
        Ok(name) if name == test => true,
        Ok(name) => panic!("{test} ran in the child process of {name}"),
        Err(_) => false,
    }
}

/// This test binary, about to run only the test `name`, as the child (see [`is_child`]).
#[derive(Debug)]
pub struct ChildTest {
    name: String,
    command: Command,
}

impl ChildTest {
    pub fn new(name: &str) -> Self {
        let exe = std::env::current_exe().expect("the test binary's path");
        let mut command = Command::new(exe);
        command.args(CHILD_ARGS).arg(name).stdin(Stdio::null()).kill_on_drop(true);
        let child = Self { name: name.to_owned(), command };
        child.marked()
    }

    fn marked(mut self) -> Self {
        self.command.env(CHILD, &self.name);
        self
    }

    /// Nothing of this process's env but PATH, and `home` as HOME: an app that sees only what the
    /// test gives it.
    pub fn clean_env(mut self, home: &std::path::Path) -> Self {
        self.command.env_clear().env("PATH", std::env::var("PATH").unwrap_or_default()).env("HOME", home);
        self.marked()
    }

    pub fn env(mut self, name: &str, value: impl AsRef<std::ffi::OsStr>) -> Self {
        self.command.env(name, value);
        self
    }

    pub fn envs<K: AsRef<std::ffi::OsStr>, V: AsRef<std::ffi::OsStr>>(
        mut self,
        vars: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        self.command.envs(vars);
        self
    }

    pub fn env_remove(mut self, name: &str) -> Self {
        self.command.env_remove(name);
        self
    }

    /// Runs it; returns its stdout, [`quoted`]. Fails the test if the child failed, with its
    /// output and `context` (e.g. keyless's logs), if it did not run exactly its one test, or if
    /// it did not finish within [`CHILD_DEADLINE`] (it is then killed).
    pub async fn run(mut self, context: impl FnOnce() -> String) -> String {
        let Ok(out) = tokio::time::timeout(CHILD_DEADLINE, self.command.output()).await else {
            panic!("child test {} did not finish in {CHILD_DEADLINE:?} (killed)\n--- context\n{}", self.name, context())
        };
        let out = out.expect("re-running the test binary");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let report = || {
            format!(
                "child test {} ({}):\n--- stdout\n{}\n--- stderr\n{}\n--- context\n{}",
                self.name,
                out.status,
                quoted(&stdout),
                quoted(&String::from_utf8_lossy(&out.stderr)),
                context()
            )
        };
        assert!(out.status.success(), "{}", report());
        // A renamed child would otherwise be filtered out and "pass" with 0 tests run.
        assert!(stdout.contains("test result: ok. 1 passed"), "did not run exactly one test: {}", report());
        quoted(&stdout)
    }
}

/// A child's output, every line indented: in a parent's report (a failure message), the child's
/// `test result:` line is then never read as a test binary's summary (`scripts/test` counts those
/// lines, at the start of a line).
pub fn quoted(output: &str) -> String {
    output.lines().map(|line| format!("    {line}\n")).collect()
}

/// In a child: the env var `name`. Panics unless this process is the child running `test`.
pub fn child_env(test: &str, name: &str) -> String {
    expect_child(test);
    std::env::var(name).unwrap_or_else(|_| panic!("{test}: {name} is not set"))
}

/// In a child test that reads its env through an SDK: panics unless this is the child running `test`.
pub fn expect_child(test: &str) {
    assert_eq!(
        std::env::var(CHILD).ok().as_deref(),
        Some(test),
        "{test} runs only as a child test, re-executed by its parent with the env it needs"
    );
}
