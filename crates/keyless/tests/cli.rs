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

/// Runs `cmd`, which must fail: its stderr.
fn refused(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{cmd:?} did not fail:\n{stderr}");
    stderr
}

/// `keyless serve` with the config file `config` and the flags `extra`, which must fail: its stderr.
fn serve_refused(config: &str, extra: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keyless.toml");
    std::fs::write(&path, config).unwrap();
    refused(keyless().args(["serve", "--config", path.to_str().unwrap(), "--admin-listen", "127.0.0.1:0"]).args(extra))
}

#[test]
fn version_is_printed() {
    let out = keyless().arg("--version").output().unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    // The workspace version, the revision (a commit, or `unknown` outside git) and the features.
    let expected = format!("keyless {} (revision ", env!("CARGO_PKG_VERSION"));
    assert!(stdout.starts_with(&expected), "{stdout}");
    let features = ["emulator", "inject", "node", "webhook"].into_iter().filter(|f| match *f {
        "emulator" => cfg!(feature = "emulator"),
        "inject" => cfg!(feature = "inject"),
        "node" => cfg!(feature = "node"),
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
    let stderr = serve_refused("listne = \"127.0.0.1:9811\"\n", &[]);
    assert!(stderr.contains("listne"), "{stderr}");
}

#[test]
fn a_bad_duration_is_refused_with_key_and_value() {
    let stderr = serve_refused("[cache]\nretry_max = \"a while\"\n", &[]);
    assert!(stderr.contains("retry_max") && stderr.contains("a while"), "{stderr}");
}

#[test]
fn a_toml_syntax_error_names_the_file_and_line() {
    let stderr = serve_refused("listen = \n", &[]);
    assert!(stderr.contains("keyless.toml") && stderr.contains("line 1"), "{stderr}");
}

#[test]
fn a_non_loopback_credential_listener_is_refused() {
    let stderr = serve_refused("", &["--listen", "0.0.0.0:0"]);
    assert!(stderr.contains("not a loopback address") && stderr.contains("allow_non_loopback"), "{stderr}");
}

#[test]
fn a_non_loopback_listener_from_the_environment_is_refused_too() {
    let stderr =
        refused(keyless().args(["serve", "--admin-listen", "127.0.0.1:0"]).env("KEYLESS_LISTEN", "10.1.2.3:9811"));
    assert!(stderr.contains("listen = 10.1.2.3:9811"), "{stderr}");
}

#[test]
fn a_missing_config_file_is_named() {
    let stderr = refused(keyless().args(["serve", "--config", "/nonexistent/keyless.toml"]));
    assert!(stderr.contains("/nonexistent/keyless.toml"), "{stderr}");
}

#[test]
fn nothing_configured_says_how_to_configure_a_provider() {
    let stderr = serve_refused("", &["--listen", "127.0.0.1:0"]);
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

/// Every line of a text-mode failure: the error once, as `keyless: ...`, no log line repeating it.
fn printed_once(stderr: &str, needle: &str) {
    assert_eq!(stderr.matches(needle).count(), 1, "{needle:?} not printed exactly once:\n{stderr}");
    let line = stderr.lines().find(|l| l.contains(needle)).unwrap();
    assert!(line.starts_with("keyless: "), "{line}");
}

#[test]
fn a_startup_error_is_printed_once() {
    let stderr = serve_refused("", &["--listen", "127.0.0.1:0"]);
    printed_once(&stderr, "no cloud provider is configured");
    let stderr = serve_refused("[aws]\nrole_arn = \"not-an-arn\"\ntoken_file = \"/t\"\n", &["--listen", "127.0.0.1:0"]);
    printed_once(&stderr, "not-an-arn");
}

#[test]
fn with_json_logs_a_startup_error_is_one_json_line_only() {
    let stderr = serve_refused("log_format = \"json\"\n", &["--listen", "127.0.0.1:0"]);
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(lines.iter().all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()), "not all JSON:\n{stderr}");
    assert_eq!(stderr.matches("no cloud provider is configured").count(), 1, "{stderr}");
}

#[test]
fn an_unknown_section_lists_every_section() {
    let stderr = serve_refused("[awz]\nrole_arn = \"x\"\n", &[]);
    assert!(
        stderr.contains(
            "unknown field `awz`: the top level has the keys listen, admin_listen, allow_non_loopback, \
             listen_uid_check, log, log_format and the sections [cache], [token], [aws], [gcp], [azure]"
        ),
        "{stderr}"
    );
}

#[test]
fn a_bad_log_format_lists_the_allowed_values() {
    let stderr = serve_refused("log_format = \"yaml\"\n", &[]);
    assert!(stderr.contains(r#"log_format = "yaml": must be "text" (the default) or "json""#), "{stderr}");
    assert!(!stderr.contains("variant"), "{stderr}");
}

#[test]
fn an_error_from_a_keyless_variable_names_the_variable() {
    let run_with = |env: &[(&str, &str)]| {
        refused(
            keyless()
                .args(["serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
                .envs(env.iter().copied()),
        )
    };
    let run = |env: (&str, &str)| run_with(&[env]);
    let stderr = run(("KEYLESS_CACHE__RETRY_MAX", "soon"));
    assert!(stderr.contains("(set by the environment variable KEYLESS_CACHE__RETRY_MAX)"), "{stderr}");
    let stderr = run(("KEYLESS_CACHE__REFRESH_AT", "1.5"));
    assert!(
        stderr.contains("cache.refresh_at = 1.5: ")
            && stderr.contains("(set by the environment variable KEYLESS_CACHE__REFRESH_AT)"),
        "{stderr}"
    );
    let stderr = run(("KEYLESS_LOG_FORMAT", "yaml"));
    assert!(stderr.contains("(set by the environment variable KEYLESS_LOG_FORMAT)"), "{stderr}");
    let stderr = run(("KEYLESS_LOG", "info["));
    printed_once(
        &stderr,
        "keyless: log = \"info[\" is not a valid log filter: invalid filter directive (set by the environment variable \
         KEYLESS_LOG)",
    );
    // Where KEYLESS_LOG is the only filter there is (check, webhook, credential-process).
    for command in [&["check"][..], &["webhook", "--tls-cert", "/c", "--tls-key", "/k"], &["credential-process"]] {
        let stderr = refused(keyless().args(command).env("KEYLESS_LOG", "info["));
        printed_once(
            &stderr,
            "is not a valid log filter: invalid filter directive (set by the environment variable KEYLESS_LOG)",
        );
    }
    let stderr = run_with(&[("KEYLESS_AWS__TOKEN_FILE", "/t"), ("KEYLESS_AWS__ROLE_ARN", "not-an-arn")]);
    assert!(stderr.contains("(set by the environment variable KEYLESS_AWS__ROLE_ARN)"), "{stderr}");
    // A provider section's own errors (serde's) name its keys without the section.
    let aws = [("KEYLESS_AWS__TOKEN_FILE", "/t"), ("KEYLESS_AWS__ROLE_ARN", "arn:aws:iam::123456789012:role/a")];
    let stderr = run_with(&[aws[0], aws[1], ("KEYLESS_AWS__DURATION", "soon")]);
    assert!(stderr.contains("(set by the environment variable KEYLESS_AWS__DURATION)"), "{stderr}");
    let stderr = run_with(&[aws[0], aws[1], ("KEYLESS_AWS__SESSION_DURATION", "1h")]);
    assert!(
        stderr.contains("unknown field `session_duration`")
            && stderr.contains("(set by the environment variable KEYLESS_AWS__SESSION_DURATION)"),
        "{stderr}"
    );
}

#[test]
fn a_second_keyless_dev_names_the_flags_that_move_it() {
    // The first keyless dev's emulator port, taken.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let dir = tempfile::tempdir().unwrap();
    let stderr = refused(
        keyless()
            .args(["dev", "--emulator-listen", &format!("127.0.0.1:{port}")])
            .args(["--state-dir", dir.path().join("state").to_str().unwrap()])
            .args(["--env-file", dir.path().join("app.env").to_str().unwrap()]),
    );
    // One hint, the cause's (the emulator's generic "if the port is in use..." came before it).
    printed_once(
        &stderr,
        &format!(
            "keyless: cannot start the emulator: cannot listen on 127.0.0.1:{port}: Address already in use (os error \
             98); another process (another keyless?) listens there: stop it, or pick a free port with \
             --emulator-listen. To run a second keyless dev beside another, give it other ports and its own files: \
             --listen, --admin-listen, --emulator-listen, --state-dir and --env-file"
        ),
    );
}

#[test]
fn the_webhook_names_the_flag_of_a_file_it_cannot_read() {
    let stderr =
        refused(
            keyless()
                .args(["webhook", "--tls-cert", "/nonexistent/tls.crt", "--tls-key", "/nonexistent/tls.key"])
                .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"]),
        );
    printed_once(&stderr, "cannot read --tls-cert /nonexistent/tls.crt");
    // A file it can read but not use: named by its flag too.
    let dir = tempfile::tempdir().unwrap();
    let pair = rcgen::generate_simple_self_signed(vec!["keyless-webhook".to_owned()]).unwrap();
    let (cert, garbage) = (dir.path().join("tls.crt"), dir.path().join("garbage"));
    std::fs::write(&cert, pair.cert.pem()).unwrap();
    std::fs::write(&garbage, "not PEM\n").unwrap();
    for (cert, key, expected) in [
        (&garbage, &garbage, format!("--tls-cert {}: no certificate in it", garbage.display())),
        (&cert, &garbage, format!("--tls-key {}: not a PEM private key", garbage.display())),
    ] {
        let stderr = refused(
            keyless()
                .args(["webhook", "--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap()])
                .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"]),
        );
        printed_once(&stderr, &expected);
    }
}

#[test]
fn a_dev_state_dir_it_cannot_create_is_printed_once() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let state = file.join("state");
    let stderr = refused(
        keyless()
            .args(["dev", "--state-dir", state.to_str().unwrap()])
            .args(["--env-file", dir.path().join("app.env").to_str().unwrap()]),
    );
    printed_once(&stderr, &format!("cannot create the state dir {}", state.display()));
}

/// A user that is not root, for what root is never refused: reading a file whatever its mode,
/// binding a port below 1024. As root the binary runs as the image's user (65532); otherwise as
/// the user running the tests, who is refused the same.
fn as_a_user(cmd: &mut Command) -> &mut Command {
    use std::os::unix::fs::MetadataExt as _;
    use std::os::unix::process::CommandExt as _;
    if std::fs::metadata("/proc/self").unwrap().uid() == 0 {
        cmd.uid(65532).gid(65532);
    }
    cmd
}

#[test]
fn an_unreadable_config_file_gets_its_own_hint() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = dir.path().join("keyless.toml");
    std::fs::write(&path, "log = \"info\"\n").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o000)).unwrap();
    let stderr = refused(as_a_user(keyless().args(["serve", "--config", path.to_str().unwrap()])).args([
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
    ]));
    printed_once(
        &stderr,
        &format!(
            "keyless: config file {}: Permission denied (os error 13) (keyless runs as a user that may not read it: \
             make it readable to that user (in a pod: the container's runAsUser, or a ConfigMap's defaultMode), or \
             run keyless as a user that may)",
            path.display()
        ),
    );
}

#[test]
fn a_privileged_port_gets_its_own_hint() {
    // Where the kernel lets every user bind every port, there is no EACCES to produce.
    let unprivileged_from = std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start").unwrap();
    assert!(
        unprivileged_from.trim().parse::<u16>().unwrap() > 80,
        "net.ipv4.ip_unprivileged_port_start is {unprivileged_from}: port 80 is not privileged on this host"
    );
    let aws = [
        ("KEYLESS_AWS__ROLE_ARN", "arn:aws:iam::123456789012:role/app"),
        ("KEYLESS_AWS__TOKEN_FILE", "/nonexistent/token"),
        ("KEYLESS_AWS__REGION", "us-east-1"),
    ];
    for (flags, flag) in [
        (["--listen", "127.0.0.1:80", "--admin-listen", "127.0.0.1:0"], "--listen"),
        (["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:80"], "--admin-listen"),
    ] {
        let stderr = refused(as_a_user(keyless().arg("serve").args(flags)).envs(aws));
        let line = stderr.lines().find(|l| l.contains("cannot listen on 127.0.0.1:80")).unwrap_or_default();
        assert!(
            line.starts_with("keyless: cannot listen on 127.0.0.1:80 (")
                && line.ends_with(&format!(
                    "): Permission denied (os error 13); ports below 1024 need root or the CAP_NET_BIND_SERVICE \
                     capability: pick a port above 1023 with {flag}"
                )),
            "{stderr}"
        );
    }
}

/// The top-level help says what keyless is now, in a table whose every line keeps its columns,
/// and every subcommand's help has the same layout: its summary (the one `-h` lists), a blank
/// line, what it does, `Usage:`, then `Arguments:` if it takes any and `Options:` last, ending
/// with `-h, --help`.
#[test]
fn the_help_describes_every_place_keyless_runs() {
    let out = keyless().arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for place in ["a pod ", "injected pods ", "a CI job ", "a laptop ", "a VM or node ", "a node's pods "] {
        assert!(help.contains(place), "{place:?} missing from:\n{help}");
    }
    let table = help.lines().skip_while(|l| *l != "Where it runs:").skip(1).take_while(|l| !l.is_empty());
    let mut rows = 0;
    for line in table {
        // The label column is 18 wide: a label and at least two spaces, or a continuation.
        let (label, text) = line.split_at_checked(18).unwrap_or((line, ""));
        assert!(label.ends_with("  ") && !text.starts_with(' ') && !text.is_empty(), "misaligned: {line:?}\n{help}");
        rows += usize::from(!label.trim().is_empty());
    }
    assert_eq!(rows, 6, "{help}");
    let short = keyless().arg("-h").output().unwrap();
    let short = String::from_utf8_lossy(&short.stdout);
    let commands: Vec<(&str, String)> = short
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.trim().split_once(' ').map(|(c, about)| (c, about.trim().to_owned())))
        .filter(|(c, _)| *c != "help")
        .collect();
    assert!(commands.len() >= 11, "{short}");
    assert!(commands.iter().any(|(c, _)| *c == "node") || !cfg!(feature = "node"), "{short}");
    for (command, about) in commands {
        let out = keyless().args([command, "--help"]).output().unwrap();
        let help = String::from_utf8_lossy(&out.stdout);
        let mut lines = help.lines();
        assert_eq!(lines.next(), Some(format!("{about}.").as_str()), "{command}: summary:\n{help}");
        assert_eq!(lines.next(), Some(""), "{command}: no blank line after the summary:\n{help}");
        assert!(!lines.next().unwrap_or_default().starts_with("Usage:"), "{command}: no description:\n{help}");
        assert!(help.contains(&format!("\nUsage: keyless {command} ")), "{command}:\n{help}");
        let after_usage = help.split("\nUsage: ").nth(1).unwrap_or_default();
        let sections: Vec<&str> =
            after_usage.lines().filter(|l| l.ends_with(':') && !l.starts_with(' ') && !l.contains(' ')).collect();
        assert!(
            sections == ["Options:"] || sections == ["Arguments:", "Options:"],
            "{command}: sections {sections:?}:\n{help}"
        );
        let last_option = after_usage.lines().rev().find(|l| l.trim_start().starts_with('-')).unwrap_or_default();
        assert_eq!(last_option.trim(), "-h, --help", "{command}:\n{help}");
        assert!(!help.contains("[default: \"\"]"), "{command}: an empty default shown:\n{help}");
    }
}

/// `keyless node` says what is missing or refused before it reaches any API server.
#[cfg(feature = "node")]
#[test]
fn keyless_node_names_what_it_needs() {
    let out = keyless().args(["node"]).env_remove("NODE_NAME").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("--node-name"), "{stderr}");
    // Only link-local and unique-local addresses are put on the node's loopback link.
    let out = keyless()
        .args(["node", "--node-name", "n", "--add-addresses", "--setup-only", "--aws-listen", "10.0.0.1:80"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("link-local (169.254.0.0/16)"), "{stderr}");
    let out = keyless().args(["node", "--node-name", "n", "--token-lifetime", "1m"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("between 10m"), "{stderr}");
    // The readiness probe of a keyless node that is not serving.
    let dir = tempfile::tempdir().unwrap();
    let out = keyless().args(["node", "--check-ready", "--state-dir", dir.path().to_str().unwrap()]).output().unwrap();
    assert!(!out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::write(dir.path().join("serving"), "serving\n").unwrap();
    let out = keyless().args(["node", "--check-ready", "--state-dir", dir.path().to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
