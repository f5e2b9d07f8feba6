//! Tests that need a process environment of their own. SDKs that read only the process env (the
//! AWS SDK's container and IMDS providers, azure_identity, google-cloud-auth, proxy settings) cannot
//! be configured from a test: edition 2024 makes `set_var` unsafe and unsafe code is forbidden. So
//! the test re-executes its own binary to run one *child test* with the env it chose.
//!
//! A child test is `#[ignore]`d, so that a normal run lists it as ignored instead of passing it
//! without testing, and it starts with [`child_env`], which fails it when run by hand.

use std::process::Stdio;

use tokio::process::Command;

/// Set in the child to the name of the child test it runs.
const CHILD: &str = "KEYLESS_TEST_CHILD";

/// This test binary, about to run only the (ignored) test `name`.
#[derive(Debug)]
pub struct ChildTest {
    name: String,
    command: Command,
}

impl ChildTest {
    pub fn new(name: &str) -> Self {
        let exe = std::env::current_exe().expect("the test binary's path");
        let mut command = Command::new(exe);
        command.args(["--exact", name, "--ignored", "--nocapture", "--test-threads=1"]).stdin(Stdio::null());
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

    /// Runs it; returns its stdout. Fails the test if the child failed, with its output and
    /// `context` (e.g. keyless's logs), or if it did not run exactly its one test.
    pub async fn run(mut self, context: impl FnOnce() -> String) -> String {
        let out = self.command.output().await.expect("re-running the test binary");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let report = || {
            format!(
                "child test {} ({}):\n--- stdout\n{stdout}\n--- stderr\n{}\n--- context\n{}",
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stderr),
                context()
            )
        };
        assert!(out.status.success(), "{}", report());
        // A renamed child would otherwise be filtered out and "pass" with 0 tests run.
        assert!(stdout.contains("test result: ok. 1 passed"), "did not run exactly one test: {}", report());
        stdout
    }
}

/// In a child test: the env var `name`. Panics unless this process is the child running `test`
/// (a child test run by hand, e.g. with `--include-ignored`, has nothing to test).
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
