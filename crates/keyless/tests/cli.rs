//! The real binary's command line: configuration mistakes are refused with a message that names
//! the key and the fix, before anything listens.
#![allow(clippy::unwrap_used)]

use std::process::Command;

fn keyless() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_keyless"));
    // Only what the test sets: no KEYLESS_* or cloud env vars from the machine running the tests.
    cmd.env_clear().env("PATH", std::env::var("PATH").unwrap_or_default());
    cmd
}

fn serve_with(config: &str, extra: &[&str]) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keyless.toml");
    std::fs::write(&path, config).unwrap();
    let out = keyless()
        .args(["serve", "--config", path.to_str().unwrap(), "--admin-listen", "127.0.0.1:0"])
        .args(extra)
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn version_is_printed() {
    let out = keyless().arg("--version").output().unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    // The workspace version, the revision (a commit, or `unknown` outside git) and the features.
    let expected = format!("keyless {} (revision ", env!("CARGO_PKG_VERSION"));
    assert!(stdout.starts_with(&expected), "{stdout}");
    let features = ["emulator", "inject", "webhook"].into_iter().filter(|f| match *f {
        "emulator" => cfg!(feature = "emulator"),
        "inject" => cfg!(feature = "inject"),
        _ => cfg!(feature = "webhook"),
    });
    let features = features.collect::<Vec<_>>().join(", ");
    let features = if features.is_empty() { "none".to_owned() } else { features };
    assert!(stdout.trim_end().ends_with(&format!(", features: {features})")), "{stdout}");
    let revision = stdout.split("(revision ").nth(1).and_then(|r| r.split(',').next()).unwrap_or_default();
    assert!(
        revision == "unknown" || (revision.len() == 40 && revision.chars().all(|c| c.is_ascii_hexdigit())),
        "{stdout}"
    );
}

#[test]
fn an_unknown_key_is_refused_by_name() {
    let (ok, stderr) = serve_with("listne = \"127.0.0.1:9811\"\n", &[]);
    assert!(!ok);
    assert!(stderr.contains("listne"), "{stderr}");
}

#[test]
fn a_bad_duration_is_refused_with_key_and_value() {
    let (ok, stderr) = serve_with("[cache]\nretry_max = \"a while\"\n", &[]);
    assert!(!ok);
    assert!(stderr.contains("retry_max") && stderr.contains("a while"), "{stderr}");
}

#[test]
fn a_toml_syntax_error_names_the_file_and_line() {
    let (ok, stderr) = serve_with("listen = \n", &[]);
    assert!(!ok);
    assert!(stderr.contains("keyless.toml") && stderr.contains("line 1"), "{stderr}");
}

#[test]
fn a_non_loopback_credential_listener_is_refused() {
    let (ok, stderr) = serve_with("", &["--listen", "0.0.0.0:0"]);
    assert!(!ok);
    assert!(stderr.contains("not a loopback address") && stderr.contains("allow_non_loopback"), "{stderr}");
}

#[test]
fn a_non_loopback_listener_from_the_environment_is_refused_too() {
    let out = keyless()
        .args(["serve", "--admin-listen", "127.0.0.1:0"])
        .env("KEYLESS_LISTEN", "10.1.2.3:9811")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("listen = 10.1.2.3:9811"), "{stderr}");
}

#[test]
fn a_missing_config_file_is_named() {
    let out = keyless().args(["serve", "--config", "/nonexistent/keyless.toml"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("/nonexistent/keyless.toml"), "{stderr}");
}

#[test]
fn nothing_configured_says_how_to_configure_a_provider() {
    let (ok, stderr) = serve_with("", &["--listen", "127.0.0.1:0"]);
    assert!(!ok);
    assert!(stderr.contains("no cloud provider is configured") && stderr.contains("[aws]"), "{stderr}");
}

#[test]
fn json_logs_are_one_json_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keyless.toml");
    std::fs::write(&path, "log_format = \"json\"\nlog = \"info\"\n").unwrap();
    let out = keyless()
        .args(["serve", "--config", path.to_str().unwrap(), "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let json_lines: Vec<serde_json::Value> =
        stderr.lines().filter(|l| l.starts_with('{')).map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(!json_lines.is_empty(), "{stderr}");
    assert!(json_lines.iter().any(|l| l["level"] == "ERROR"), "{stderr}");
}
