//! The tools some tests need beyond cargo: the pinned Python, Node, Go and Java SDK clients, root.
//!
//! One rule decides what a missing tool does to a test: under `CI=true` the test fails, saying
//! what is missing and how `scripts/test` provides it; anywhere else it prints that it skipped and
//! passes without testing. The Python clients are not optional anywhere: `scripts/test` installs
//! them on any machine with python3, so a missing venv is a setup error and fails every test that
//! needs it.
#![allow(clippy::print_stderr)] // a skip says so where the test runner shows it

use std::os::unix::fs::MetadataExt as _;
use std::path::PathBuf;

use crate::binary::workspace_root;

/// A tool a test cannot run without.
#[derive(Debug, Clone, Copy)]
pub struct Missing {
    /// What is missing.
    pub what: &'static str,
    /// How to get it.
    pub fix: &'static str,
}

impl Missing {
    fn fail(self) -> ! {
        panic!("missing: {}. {}", self.what, self.fix)
    }
}

/// Whether this is a CI run (`CI=true`, as CI services set it).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// `found`, or, when it is `None`: under `CI=true` a failure naming what is missing; elsewhere a
/// printed skip and `None` (the test then returns).
pub fn or_skip<T>(found: Option<T>, missing: Missing) -> Option<T> {
    if found.is_none() {
        if in_ci() {
            missing.fail();
        }
        let test = std::thread::current().name().unwrap_or("a test").to_owned();
        eprintln!("SKIPPED {test}: missing {} ({}). Under CI=true this fails.", missing.what, missing.fix);
    }
    found
}

/// The path the env var `var` names, else `default` under the workspace root (where
/// `scripts/test` puts it).
pub(crate) fn path_from_env(var: &str, default: &str) -> PathBuf {
    std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| workspace_root().join(default))
}

/// Whether `tool version_arg` runs and succeeds: the tool is on PATH and works.
pub(crate) fn runs(tool: &str, version_arg: &str) -> bool {
    std::process::Command::new(tool).arg(version_arg).output().is_ok_and(|o| o.status.success())
}

/// Whether this process runs as root (/proc/self belongs to the effective user of its reader).
pub(crate) fn is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// The pinned Node SDK clients (`tests/node/package-lock.json`).
#[derive(Debug, Clone)]
pub struct NodeClients {
    /// Their `node_modules`, for `NODE_PATH`.
    pub modules: PathBuf,
}

/// The Node clients and a `node` to run them, or a skip (see [`or_skip`]).
pub fn node_clients() -> Option<NodeClients> {
    let modules = path_from_env("KEYLESS_TEST_NODE_MODULES", "target/node/node_modules");
    let found = (runs("node", "--version") && modules.is_dir()).then_some(NodeClients { modules });
    or_skip(
        found,
        Missing {
            what: "Node.js >= 20 with the pinned Node SDK clients",
            fix: "scripts/test installs the clients into target/node when node and npm (Node.js >= 20) are on PATH",
        },
    )
}

/// The pinned Go SDK clients (`tests/go`), built by `scripts/test`: one program per cloud.
#[derive(Debug, Clone)]
pub struct GoClients {
    /// The directory holding the `aws`, `gcp` and `azure` programs.
    pub bin: PathBuf,
}

/// The built Go clients, or a skip (see [`or_skip`]).
pub fn go_clients() -> Option<GoClients> {
    let bin = path_from_env("KEYLESS_TEST_GO_BIN", "target/go/bin");
    let built = ["aws", "gcp", "azure"].iter().all(|program| bin.join(program).is_file());
    or_skip(
        built.then_some(GoClients { bin }),
        Missing {
            what: "the pinned Go SDK clients (target/go/bin)",
            fix: "scripts/test builds tests/go into target/go/bin when go (>= 1.26) is on PATH",
        },
    )
}

/// The pinned Java SDK clients (`tests/java/pom.xml`), compiled by `scripts/test`.
#[derive(Debug, Clone)]
pub struct JavaClients {
    /// Their classes and the resolved jars, for `java -cp`.
    pub classpath: String,
}

/// The compiled Java clients and a `java` to run them, or a skip (see [`or_skip`]).
pub fn java_clients() -> Option<JavaClients> {
    let dir = path_from_env("KEYLESS_TEST_JAVA_DIR", "target/java");
    let compiled = dir.join("classes/keyless").is_dir() && runs("java", "-version");
    let jars = std::fs::read_to_string(dir.join("classpath.txt")).ok().filter(|_| compiled);
    let found =
        jars.map(|jars| JavaClients { classpath: format!("{}:{}", dir.join("classes").display(), jars.trim()) });
    or_skip(
        found,
        Missing {
            what: "Java (>= 17) with the pinned Java SDK clients (target/java)",
            fix: "scripts/test compiles tests/java into target/java when java and mvn are on PATH",
        },
    )
}

/// Root, to start keyless as another user (the image's); or a skip (see [`or_skip`]).
pub fn root() -> Option<()> {
    or_skip(
        is_root().then_some(()),
        Missing { what: "root", fix: "run the suite as root, as CI does (scripts/image needs it too)" },
    )
}

/// The venv Python with the pinned SDK clients (`tests/requirements.txt`); required everywhere.
pub fn python() -> PathBuf {
    let path = path_from_env("KEYLESS_TEST_PYTHON", "target/venv/bin/python");
    if !path.exists() {
        Missing {
            what: "the Python SDK clients (target/venv)",
            fix: "run the suite with ./scripts/test, which installs tests/requirements.txt into target/venv",
        }
        .fail();
    }
    path
}

/// A command the test venv installs (`moto_server`, `check-jsonschema`, `kubernetes-validate`).
pub fn venv_tool(name: &str) -> PathBuf {
    python().with_file_name(name)
}

/// Helm, built once by `scripts/helm` (pinned, from the Go module proxy) into target/tools/bin;
/// or a skip (see [`or_skip`]) where Go is missing.
pub fn helm() -> Option<PathBuf> {
    let output = std::process::Command::new(workspace_root().join("scripts/helm"))
        .stderr(std::process::Stdio::inherit())
        .output()
        .ok()
        .filter(|o| o.status.success());
    let found = output.map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    or_skip(
        found,
        Missing {
            what: "helm (scripts/helm builds it with Go)",
            fix: "install Go >= 1.24; scripts/helm then builds helm v3.22.0 from the Go module proxy",
        },
    )
}
