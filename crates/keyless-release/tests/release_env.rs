//! `scripts/release-env`, the environment scripts/release, scripts/image and the install-docs test
//! build in: what the compilers see, and what it refuses.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Output};

use keyless_release::workspace_root;

/// `bash -c 'source release-env; SCRIPT'` with `env` on top of this process's environment.
fn sourced(script: &str, env: &[(&str, &str)]) -> Output {
    let release_env = workspace_root().join("scripts/release-env");
    let mut command = Command::new("bash");
    command
        .arg("-c")
        .arg(format!(". \"$1\" || exit $?\n{script}"))
        .arg("release-env-test")
        .arg(release_env)
        .env_remove("SOURCE_DATE_EPOCH")
        .env_remove("KEYLESS_REVISION");
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().unwrap()
}

#[test]
fn the_commit_time_is_set_for_the_scripts_and_hidden_from_the_compilers() {
    // The cc crate reruns every C build (aws-lc) when SOURCE_DATE_EPOCH changes, i.e. each commit.
    let output = sourced(
        "echo \"shell: $SOURCE_DATE_EPOCH $KEYLESS_REVISION\"\n\
         env | grep -E '^(SOURCE_DATE_EPOCH|KEYLESS_REVISION|RUSTFLAGS)=' | cut -d= -f1 | sort",
        &[("SOURCE_DATE_EPOCH", "1700000000"), ("KEYLESS_REVISION", "0123abc")],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(stdout, "shell: 1700000000 0123abc\nKEYLESS_REVISION\nRUSTFLAGS\n");
}

#[test]
fn a_path_with_whitespace_is_refused_with_the_reason() {
    let output = sourced("echo sourced", &[("SOURCE_DATE_EPOCH", "1"), ("CARGO_HOME", "/tmp/cargo home")]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && output.stdout.is_empty(), "{stderr}");
    assert!(stderr.contains("whitespace") && stderr.contains("/tmp/cargo home"), "{stderr}");
}
