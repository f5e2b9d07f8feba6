//! Gates the tests that need a tool beyond cargo, so the runner's own counts show what ran: for
//! each tool the probe finds (keyless-test-support's `probe.rs`, the same checks the tests make
//! when they run, on the env vars and paths `scripts/test` sets), the cfg `keyless_tools_<tool>`;
//! a test `#[cfg_attr(not(keyless_tools_<tool>), ignore = "...")]` is then reported `ignored`
//! with its reason where the tool is missing. Under `CI=true` every cfg is set: the tests run and
//! fail, naming what is missing (keyless-test-support's `tools.rs`).
//!
//! cfgs from a build script, not RUSTFLAGS: only this package recompiles when the answer
//! changes. It is asked again when `scripts/test`'s env vars, PATH or `CI` change, or when a tool
//! it found is removed; a tool installed by hand without `scripts/test` is seen after
//! `touch tests/build.rs`.
#![allow(clippy::print_stdout)] // a build script speaks to cargo on stdout

#[path = "../crates/keyless-test-support/src/probe.rs"]
mod probe;

use std::path::Path;

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ is in the workspace");
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed=../crates/keyless-test-support/src/probe.rs");
    for var in probe::ENV_VARS {
        println!("cargo::rerun-if-env-changed={var}");
    }
    for marker in probe::present_markers(root) {
        println!("cargo::rerun-if-changed={}", marker.display());
    }
    let ci = probe::in_ci();
    let tools = [
        ("keyless_tools_node", probe::node_modules(root).is_some()),
        ("keyless_tools_go", probe::go_bin(root).is_some()),
        ("keyless_tools_java", probe::java_classpath(root).is_some()),
        ("keyless_tools_kube", probe::kube_bin(root).is_some()),
        ("keyless_tools_helm", probe::helm_available(root)),
        ("keyless_tools_promtool", probe::promtool_available(root)),
        ("keyless_tools_podman", probe::podman()),
        ("keyless_tools_root", probe::is_root()),
        ("keyless_tools_kubelet", probe::node_missing(root).is_empty()),
    ];
    for (cfg, found) in tools {
        println!("cargo::rustc-check-cfg=cfg({cfg})");
        if found || ci {
            println!("cargo::rustc-cfg={cfg}");
        }
    }
}
