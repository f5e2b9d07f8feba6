//! The tools some tests need beyond cargo: the pinned Node, Go and Java SDK clients, helm, the
//! Kubernetes binaries, podman, root; and the pinned Python clients, which every machine has.
//!
//! # How a test that needs a tool is written
//!
//! The runner's own counts show what ran. `tests/build.rs` probes for each tool when it builds the
//! end-to-end suite ([`crate::probe`], the same checks as here, the same env vars and paths
//! `scripts/test` sets) and sets a cfg for each one it finds: `keyless_tools_node`,
//! `keyless_tools_go`, `keyless_tools_java`, `keyless_tools_helm`, `keyless_tools_promtool`,
//! `keyless_tools_kube`, `keyless_tools_podman`, `keyless_tools_root`, `keyless_tools_kubelet` (the
//! node harness's tools, [`crate::node::find_tools`]). A test that needs a tool is ignored, with the
//! reason, where its cfg is missing, and takes the tool with [`need`]:
//!
//! ```text
//! #[tokio::test]
//! #[cfg_attr(not(keyless_tools_node), ignore = "needs Node.js >= 20 and the pinned Node clients: ./scripts/test")]
//! async fn the_node_sdks_get_credentials() {
//!     let node = tools::need(tools::find_node_clients());
//! ```
//!
//! So `cargo test` reports it `ignored` where the tool is missing, and `scripts/test` counts it
//! as skipped. Under `CI=true` the build script sets every cfg: the test runs, and [`need`] fails
//! it, saying what is missing and how `scripts/test` provides it. Where the tool is there the test
//! runs. Only the suite's package recompiles when a tool appears (the build script reruns when
//! `scripts/test`'s env vars or PATH change, or a tool it found is removed); a tool installed by
//! hand without `scripts/test` is seen after `touch tests/build.rs`.
//!
//! There is no other form: a test that printed a skip and returned would report `ok`, which the
//! counts cannot tell from a pass.
//!
//! The Python clients are not optional anywhere: `scripts/test` installs them on any machine with
//! python3, so a missing venv is a setup error and fails every test that needs it ([`python`]).

use std::path::PathBuf;

use crate::binary::workspace_root;
use crate::probe;

/// A tool a test cannot run without.
#[derive(Debug, Clone, Copy)]
pub struct Missing {
    /// What is missing.
    pub what: &'static str,
    /// How to get it.
    pub fix: &'static str,
}

impl Missing {
    /// Fails the test, naming what is missing and how to get it.
    pub fn fail(self) -> ! {
        panic!("missing: {}. {}", self.what, self.fix)
    }
}

/// The tool, for a test its tool's cfg gates (see the module documentation); a failure naming
/// what is missing otherwise (the build found the tool, or this is `CI=true`: either way, its
/// absence is a failure).
pub fn need<T>(found: Result<T, Missing>) -> T {
    found.unwrap_or_else(|missing| missing.fail())
}

/// The path the env var `var` names, else `default` under the workspace root (where
/// `scripts/test` puts it).
pub(crate) fn path_from_env(var: &str, default: &str) -> PathBuf {
    probe::path_from_env(&workspace_root(), var, default)
}

/// The pinned Node SDK clients (`tests/node/package-lock.json`).
#[derive(Debug, Clone)]
pub struct NodeClients {
    /// Their `node_modules`, for `NODE_PATH`.
    pub modules: PathBuf,
}

/// What a test needing the Node clients misses without them.
pub const NODE: Missing = Missing {
    what: "Node.js >= 20 with the pinned Node SDK clients",
    fix: "scripts/test installs the clients into target/node when node and npm (Node.js >= 20) are on PATH",
};

/// The Node clients and a `node` to run them (cfg `keyless_tools_node`).
pub fn find_node_clients() -> Result<NodeClients, Missing> {
    probe::node_modules(&workspace_root()).map(|modules| NodeClients { modules }).ok_or(NODE)
}

/// The pinned Go SDK clients (`tests/go`), built by `scripts/test`: one program per cloud.
#[derive(Debug, Clone)]
pub struct GoClients {
    /// The directory holding the `aws`, `gcp` and `azure` programs.
    pub bin: PathBuf,
}

/// What a test needing the Go clients misses without them.
pub const GO: Missing = Missing {
    what: "the pinned Go SDK clients (target/go/bin)",
    fix: "scripts/test builds tests/go into target/go/bin when go (>= 1.26) is on PATH",
};

/// The built Go clients (cfg `keyless_tools_go`).
pub fn find_go_clients() -> Result<GoClients, Missing> {
    probe::go_bin(&workspace_root()).map(|bin| GoClients { bin }).ok_or(GO)
}

/// The pinned Java SDK clients (`tests/java/pom.xml`), compiled by `scripts/test`.
#[derive(Debug, Clone)]
pub struct JavaClients {
    /// Their classes and the resolved jars, for `java -cp`.
    pub classpath: String,
}

/// What a test needing the Java clients misses without them.
pub const JAVA: Missing = Missing {
    what: "Java (>= 17) with the pinned Java SDK clients (target/java)",
    fix: "scripts/test compiles tests/java into target/java when java and mvn are on PATH",
};

/// The compiled Java clients and a `java` to run them (cfg `keyless_tools_java`).
pub fn find_java_clients() -> Result<JavaClients, Missing> {
    probe::java_classpath(&workspace_root()).map(|classpath| JavaClients { classpath }).ok_or(JAVA)
}

/// What a test needing root misses without it.
pub const ROOT: Missing =
    Missing { what: "root", fix: "run the suite as root, as CI does (scripts/image needs it too)" };

/// Root, to start keyless as another user (the image's) (cfg `keyless_tools_root`).
pub fn find_root() -> Result<(), Missing> {
    if probe::is_root() { Ok(()) } else { Err(ROOT) }
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

/// What a test needing helm misses without it.
pub const HELM: Missing = Missing {
    what: "helm (scripts/helm builds it with Go)",
    fix: "install Go >= 1.24; scripts/helm then builds helm v3.22.0 from the Go module proxy",
};

/// Helm, built once by `scripts/helm` (pinned, from the Go module proxy) into target/tools/bin
/// (cfg `keyless_tools_helm`: helm is there, or Go is, to build it).
pub fn find_helm() -> Result<PathBuf, Missing> {
    built_by("scripts/helm").ok_or(HELM)
}

/// What a test needing promtool misses without it.
pub const PROMTOOL: Missing = Missing {
    what: "promtool (scripts/promtool builds it with Go)",
    fix: "install Go >= 1.26; scripts/promtool then builds promtool from the Go module proxy",
};

/// promtool, Prometheus's rule checker, built once by `scripts/promtool` (pinned, from the Go
/// module proxy) into target/tools/bin (cfg `keyless_tools_promtool`: promtool is there, or Go
/// is, to build it).
pub fn find_promtool() -> Result<PathBuf, Missing> {
    built_by("scripts/promtool").ok_or(PROMTOOL)
}

/// The binary a `scripts/` builder prints the path of (building it first if needed).
fn built_by(script: &str) -> Option<PathBuf> {
    let output = std::process::Command::new(workspace_root().join(script))
        .stderr(std::process::Stdio::inherit())
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    Some(PathBuf::from(String::from_utf8_lossy(&output.stdout).trim()))
}
