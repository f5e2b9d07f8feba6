//! Whether each tool beyond cargo is on this machine, where `scripts/test` puts or finds it. The
//! standard library only: `tests/build.rs` includes this file (`#[path]`) to gate the tests that
//! need a tool at build time, and [`crate::tools`] uses it when those tests run, so the two never
//! disagree on what "present" means.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

/// The env vars the probes read (a build script reruns when one changes). `KEYLESS_TEST_TOOLS`
/// is read by no probe: `scripts/test` sets it to the tools it provided, so that installing one
/// (podman, say, which changes no other variable) reruns the probes.
pub const ENV_VARS: &[&str] = &[
    "KEYLESS_TEST_NODE_MODULES",
    "KEYLESS_TEST_GO_BIN",
    "KEYLESS_TEST_JAVA_DIR",
    "KEYLESS_TEST_KUBE_BIN",
    "KEYLESS_TEST_TOOLS",
    "PATH",
    "CI",
];

/// Whether this is a CI run (`CI=true`, as CI services set it).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// The path the env var `var` names, else `default` under the workspace `root` (where
/// `scripts/test` puts it).
pub fn path_from_env(root: &Path, var: &str, default: &str) -> PathBuf {
    std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| root.join(default))
}

/// Whether `tool version_arg` runs and succeeds: the tool is on PATH and works.
pub fn runs(tool: &str, version_arg: &str) -> bool {
    std::process::Command::new(tool)
        .arg(version_arg)
        .stdin(std::process::Stdio::null())
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Whether this process runs as root (/proc/self belongs to the effective user of its reader).
pub fn is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// The pinned Node clients' `node_modules`, when it is there and a `node` runs.
pub fn node_modules(root: &Path) -> Option<PathBuf> {
    let modules = path_from_env(root, "KEYLESS_TEST_NODE_MODULES", "target/node/node_modules");
    (modules.is_dir() && runs("node", "--version")).then_some(modules)
}

/// The directory of the built Go clients (`aws`, `gcp`, `azure`), when all three are there.
pub fn go_bin(root: &Path) -> Option<PathBuf> {
    let bin = path_from_env(root, "KEYLESS_TEST_GO_BIN", "target/go/bin");
    GO_PROGRAMS.iter().all(|program| bin.join(program).is_file()).then_some(bin)
}

/// The programs `scripts/test` builds from `tests/go`.
pub const GO_PROGRAMS: [&str; 3] = ["aws", "gcp", "azure"];

/// The compiled Java clients' classpath (their classes, then the jars), when they are compiled
/// and a `java` runs.
pub fn java_classpath(root: &Path) -> Option<String> {
    let dir = path_from_env(root, "KEYLESS_TEST_JAVA_DIR", "target/java");
    let compiled = dir.join("classes/keyless").is_dir();
    let jars = std::fs::read_to_string(dir.join("classpath.txt")).ok().filter(|_| compiled);
    let jars = jars.filter(|_| runs("java", "-version"))?;
    Some(format!("{}:{}", dir.join("classes").display(), jars.trim()))
}

/// The directory of kube-apiserver, kubectl and etcd (`scripts/kube`), when all three are there.
pub fn kube_bin(root: &Path) -> Option<PathBuf> {
    let dir = path_from_env(root, "KEYLESS_TEST_KUBE_BIN", "target/kube/bin");
    KUBE_PROGRAMS.iter().all(|b| dir.join(b).is_file()).then_some(dir)
}

/// The programs `scripts/kube` builds.
pub const KUBE_PROGRAMS: [&str; 3] = ["kube-apiserver", "kubectl", "etcd"];

/// The programs `scripts/kube` builds for the node harness beside [`KUBE_PROGRAMS`].
pub const NODE_PROGRAMS: [&str; 3] = ["kubelet", "kube-controller-manager", "kube-scheduler"];
/// The runtime the node's containerd runs containers with (Debian's `runc`).
pub const RUNC: &str = "/usr/sbin/runc";
/// The CNI plugins the node's pod network uses (Debian's `containernetworking-plugins`).
pub const CNI_PLUGINS: [&str; 3] = ["/usr/lib/cni/bridge", "/usr/lib/cni/host-local", "/usr/lib/cni/loopback"];

/// What the node harness (keyless-test-support's `node.rs`) misses on this machine, each named:
/// root, containerd, ctr, nsenter, ip, podman and go on PATH, runc and the CNI plugins, and the
/// Kubernetes binaries of `scripts/kube` (the control plane's and the node's). Empty: all there.
pub fn node_missing(root: &Path) -> Vec<String> {
    let mut missing = Vec::new();
    if !is_root() {
        missing.push("root".to_owned());
    }
    let on_path = [
        ("containerd", "--version"),
        ("ctr", "--version"),
        ("nsenter", "--version"),
        ("ip", "-V"),
        ("iptables", "--version"),
        ("podman", "--version"),
        ("go", "version"),
    ];
    missing.extend(on_path.iter().filter(|(tool, arg)| !runs(tool, arg)).map(|(tool, _)| (*tool).to_owned()));
    missing.extend([RUNC].iter().chain(&CNI_PLUGINS).filter(|f| !Path::new(f).is_file()).map(|f| (*f).to_owned()));
    let dir = path_from_env(root, "KEYLESS_TEST_KUBE_BIN", "target/kube/bin");
    let programs = KUBE_PROGRAMS.iter().chain(&NODE_PROGRAMS);
    missing.extend(programs.map(|p| dir.join(p)).filter(|p| !p.is_file()).map(|p| p.display().to_string()));
    missing
}

/// Root, podman and runc: what the container tests need.
pub fn podman() -> bool {
    is_root() && runs("podman", "--version") && runs("runc", "--version")
}

/// Where `scripts/helm` puts helm.
pub const HELM: &str = "target/tools/bin/helm";

/// Whether helm is built (`scripts/helm`), or can be: Go is on PATH.
pub fn helm_available(root: &Path) -> bool {
    root.join(HELM).is_file() || runs("go", "version")
}

/// Where `scripts/promtool` puts promtool.
pub const PROMTOOL: &str = "target/tools/bin/promtool";

/// Whether promtool is built (`scripts/promtool`), or can be: Go is on PATH.
pub fn promtool_available(root: &Path) -> bool {
    root.join(PROMTOOL).is_file() || runs("go", "version")
}

/// The files whose removal makes a probe's answer change from present to missing, for a build
/// script to watch (`rerun-if-changed`): only files that exist (cargo reruns a build script on
/// every build while a file it watches is missing).
pub fn present_markers(root: &Path) -> Vec<PathBuf> {
    let mut markers = Vec::new();
    if let Some(modules) = node_modules(root) {
        markers.push(modules.join(".package-lock.json"));
    }
    if let Some(bin) = go_bin(root) {
        markers.extend(GO_PROGRAMS.iter().map(|p| bin.join(p)));
    }
    let java = path_from_env(root, "KEYLESS_TEST_JAVA_DIR", "target/java");
    markers.push(java.join("classpath.txt"));
    if let Some(dir) = kube_bin(root) {
        markers.extend(KUBE_PROGRAMS.iter().map(|p| dir.join(p)));
    }
    if node_missing(root).is_empty() {
        let dir = path_from_env(root, "KEYLESS_TEST_KUBE_BIN", "target/kube/bin");
        markers.extend(NODE_PROGRAMS.iter().map(|p| dir.join(p)));
        markers.extend([RUNC].iter().chain(&CNI_PLUGINS).map(PathBuf::from));
    }
    markers.push(root.join(HELM));
    markers.push(root.join(PROMTOOL));
    markers.retain(|m| m.is_file());
    markers
}
