//! ARCHITECTURE.md: the library crates read the environment and the host name only through
//! `Context::host` (keyless-core's `Host`), so detection is tested in-process and `keyless dev`
//! runs in an empty environment. This scans their non-test source for a direct read.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use keyless_test_support::binary::workspace_root;

/// Where a direct read is the point: `Host::process` itself, and the list of keyless's own
/// settings a child process must not inherit.
const ALLOWED: [&str; 2] = ["keyless-core/src/host.rs", "keyless-core/src/appenv.rs"];

const READS: [&str; 4] = ["std::env::var", "env::var_os", "std::env::vars", "/etc/hostname"];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn the_library_crates_read_the_environment_only_through_the_contexts_host() {
    let crates = workspace_root().join("crates");
    let mut files = Vec::new();
    for name in ["keyless-core", "keyless-provider", "keyless-aws", "keyless-gcp", "keyless-azure"] {
        rust_files(&crates.join(name).join("src"), &mut files);
    }
    assert!(files.len() > 40, "too few sources found: {}", files.len());
    let mut found = Vec::new();
    for file in &files {
        let shown = file.strip_prefix(&crates).unwrap().display().to_string();
        if ALLOWED.contains(&shown.as_str()) || shown.ends_with("_tests.rs") {
            continue;
        }
        let text = std::fs::read_to_string(file).unwrap();
        // The code before its test module.
        let code = text.split("#[cfg(test)]\nmod ").next().unwrap_or_default();
        for read in READS {
            if code.contains(read) {
                found.push(format!("{shown}: {read}"));
            }
        }
    }
    assert!(found.is_empty(), "read the environment through Context::host (keyless_core::Host): {found:#?}");
}
