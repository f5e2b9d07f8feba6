//! The `keyless` binary under test, built by cargo for this test process.
//!
//! Why a build and not a path: a path (an env var, or `target/debug/keyless`) lets a suite pass
//! against whatever binary happens to be there, stale ones included; and refusing a binary older
//! than its sources means comparing mtimes, which misses a changed feature set, profile or
//! `Cargo.lock`, and a fresh checkout trips it. Asking cargo is the one check cargo itself trusts:
//! `cargo build -p keyless` is a no-op (half a second) when the binary is fresh, a rebuild when it
//! is not. It runs once per test process (a `OnceLock`), with the cargo that compiled this crate
//! (the same toolchain), in the profile of the test binary.
//!
//! It builds into its own target directory (`<target>/e2e/`), never into the one the outer
//! `cargo test` uses: there, `cargo test --workspace` (features unified with every crate's
//! dev-dependencies) and `cargo build -p keyless` (the features users get) make two different
//! binaries of the same path, each build relinking `target/<profile>/keyless` while other test
//! processes may be running it. The binary tested here is the one `cargo build -p keyless` gives
//! users, with production features.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// The freshly built `keyless` (panics with cargo's errors if it does not build).
pub fn keyless_bin() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(build).clone()
}

/// The workspace root (where `Cargo.toml` and `tests/` are).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).ancestors().nth(2).expect("crates/keyless-test-support").to_owned()
}

fn build() -> PathBuf {
    let test_exe = std::env::current_exe().expect("the test binary's path");
    // <target>/<profile dir>/deps/<test binary>
    let profile_dir =
        test_exe.parent().and_then(Path::parent).expect("the test binary lives in <target>/<profile>/deps");
    let target_dir = profile_dir.parent().expect("a target directory").join("e2e");
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => "dev",
        Some(name) => name,
    };
    let root = workspace_root();
    let output = Command::new(env!("CARGO"))
        .args(["build", "--package", "keyless", "--bin", "keyless", "--profile", profile])
        .args(["--message-format", "json-render-diagnostics", "--manifest-path"])
        .arg(root.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        .current_dir(&root)
        .stdin(Stdio::null())
        // Progress and compiler errors go where the test runner shows them.
        .stderr(Stdio::inherit())
        .output()
        .expect("running cargo");
    assert!(output.status.success(), "cargo build -p keyless failed (its errors are above)");
    let built = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "keyless")
        .find_map(|m| m["executable"].as_str().map(PathBuf::from));
    built.unwrap_or_else(|| panic!("cargo built no keyless executable into {}", target_dir.display()))
}
