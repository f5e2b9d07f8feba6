//! The fetching and command token sources against a hostile or careless environment: a command
//! that hangs with children of its own is killed as a whole group at its timeout (one that prints
//! without end, at its output bound), reaped, and never sees keyless's own secrets; a proxy in
//! `HTTP_PROXY` never sees a link-local request (bearer headers included). The tests that need an
//! environment of their own re-run themselves as a child with it (edition 2024
//! makes `set_var` unsafe; test-support's `child`); the proxy test's child in a network namespace
//! of its own, where a link-local address is unreachable, so nothing leaves this machine.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use keyless_core::clock::SystemClock;
use keyless_core::source::{ActionsEndpoint, CommandFormat, CommandSpec, TokenFormat, UrlSpec};
use keyless_core::{Metrics, SourceSpec, TokenSource, WatchOptions};
use keyless_test_support::child::{CHILD, CHILD_ARGS, ChildTest, is_child, quoted};
use keyless_test_support::wait::wait_until;

/// keyless's secrets as the sidecar's env would hold them.
const SECRETS: [(&str, &str); 2] = [
    ("KEYLESS_AWS__AUTHORIZATION_TOKEN", "aws-authorization-SECRET-2b7e"),
    ("KEYLESS_AZURE__IDENTITY_HEADER", "azure-identity-header-SECRET-9c1d"),
];

async fn open(spec: SourceSpec) -> TokenSource {
    TokenSource::open(
        &spec,
        &WatchOptions::default(),
        &|k| std::env::var(k).ok(),
        Arc::new(SystemClock),
        Metrics::new(),
    )
    .await
}

/// Process `pid`'s state and parent (`/proc/PID/stat`), or `None` when there is no such process.
fn state(pid: &str) -> Option<(char, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(") ")?;
    let mut fields = rest.split(' ');
    let state = fields.next()?.chars().next()?;
    Some((state, fields.next()?.parse().ok()?))
}

/// Whether process `pid` still runs (a zombie waiting for its reaper does not).
fn running(pid: &str) -> bool {
    state(pid).is_some_and(|(state, _)| state != 'Z' && state != 'X')
}

/// Whether `pid` is a child of this process that ended and was never reaped.
fn our_zombie(pid: &str) -> bool {
    state(pid).is_some_and(|(state, parent)| state == 'Z' && parent == std::process::id())
}

const COMMAND_TEST: &str = "a_command_that_hangs_is_killed_with_its_children_and_never_sees_keyless_secrets";

#[tokio::test]
async fn a_command_that_hangs_is_killed_with_its_children_and_never_sees_keyless_secrets() {
    if is_child(COMMAND_TEST) {
        return command_group_and_env_child().await;
    }
    let dir = tempfile::tempdir().unwrap();
    ChildTest::new(COMMAND_TEST).envs(SECRETS).env("KEYLESS_TEST_DIR", dir.path()).run(String::new).await;
}

/// The child of the test above: keyless's secrets are in its environment.
async fn command_group_and_env_child() {
    let dir = std::path::PathBuf::from(std::env::var("KEYLESS_TEST_DIR").unwrap());
    let (pids, env) = (dir.join("pids"), dir.join("env"));
    // Two grandchildren that would sleep for minutes, the shell waiting on them: only the
    // timeout ends it.
    let script = format!(
        "env > {env}; sleep 300 & echo $! >> {pids}; sleep 300 & echo $! >> {pids}; echo $$ >> {pids}; wait",
        env = env.display(),
        pids = pids.display()
    );
    let spec = CommandSpec {
        argv: vec!["sh".into(), "-c".into(), script],
        timeout: Duration::from_secs(1),
        format: CommandFormat::Token(TokenFormat::Text),
        env: vec![("GOOGLE_EXTERNAL_ACCOUNT_AUDIENCE".into(), "aud".into())],
    };
    let source = open(SourceSpec::Command(spec)).await;
    let err = source.first_read().await.expect_err("the command never prints a token").to_string();
    // No retry may start the command again while its first run is checked.
    drop(source);
    assert!(err.contains("timed out") || err.contains("did not answer"), "{err}");

    let started: Vec<String> = std::fs::read_to_string(&pids).unwrap().lines().map(str::to_owned).collect();
    assert_eq!(started.len(), 3, "{started:?}");
    wait_until("every process of the command to end", Duration::from_secs(10), || {
        let left = started.iter().any(|pid| running(pid));
        async move { !left }
    })
    .await;
    // The shell, keyless's own child, is reaped too (its children are their new parent's).
    let leader = started.last().unwrap();
    wait_until("the command's process to be reaped", Duration::from_secs(10), || {
        let zombie = our_zombie(leader);
        async move { !zombie }
    })
    .await;

    let seen = std::fs::read_to_string(&env).unwrap();
    for (name, value) in SECRETS {
        assert!(!seen.contains(name) && !seen.contains(value), "the command saw {name}:\n{seen}");
    }
    assert!(!seen.contains("KEYLESS_TEST_DIR"), "a KEYLESS_ setting reached the command");
    assert!(seen.contains("GOOGLE_EXTERNAL_ACCOUNT_AUDIENCE=aud"), "the command's own env is missing:\n{seen}");
    assert!(seen.contains("PATH="), "the rest of the environment is inherited:\n{seen}");
}

#[tokio::test]
async fn a_command_that_prints_without_end_is_cut_off_and_killed_with_its_children() {
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().join("pids");
    let script = format!("sleep 300 & echo $! >> {pids}; echo $$ >> {pids}; exec yes", pids = pids.display());
    let spec = CommandSpec {
        argv: vec!["sh".into(), "-c".into(), script],
        timeout: Duration::from_secs(120),
        format: CommandFormat::Token(TokenFormat::Text),
        env: Vec::new(),
    };
    let source = open(SourceSpec::Command(spec)).await;
    let err = source.first_read().await.expect_err("no token in endless output").to_string();
    drop(source);
    assert!(err.contains("printed more than"), "cut off at the bound, not at the timeout: {err}");
    let started: Vec<String> = std::fs::read_to_string(&pids).unwrap().lines().map(str::to_owned).collect();
    assert_eq!(started.len(), 2, "{started:?}");
    wait_until("every process of the command to end and be reaped", Duration::from_secs(10), || {
        let left = started.iter().any(|pid| running(pid) || our_zombie(pid));
        async move { !left }
    })
    .await;
}

/// The proxy every child's `HTTP_PROXY` and `HTTPS_PROXY` name, inside the child's namespace.
const PROXY: &str = "127.0.0.1:3128";

/// This test binary, running only the test `name` as its child (test-support's `is_child`) in a
/// new network namespace with only loopback up (`unshare --net`, root).
/// How long the child in its own network namespace may run before it is killed.
const CHILD_DEADLINE: Duration = Duration::from_secs(120);

async fn run_in_own_network(name: &str) {
    let exe = std::env::current_exe().unwrap();
    let proxy = format!("http://{PROXY}");
    let mut command = tokio::process::Command::new("unshare");
    command
        .args(["--net", "--", "sh", "-c", "ip link set lo up && exec \"$0\" \"$@\""])
        .arg(exe)
        .args(CHILD_ARGS)
        .arg(name)
        .env(CHILD, name)
        .envs(["HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY"].map(|v| (v, proxy.as_str())))
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(CHILD_DEADLINE, command.output())
        .await
        .unwrap_or_else(|_| panic!("child test {name} did not finish in {CHILD_DEADLINE:?} (killed)"))
        .expect("unshare runs (util-linux; a network namespace needs root)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("test result: ok. 1 passed"),
        "child test {name} ({}):\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        quoted(&stdout),
        quoted(&String::from_utf8_lossy(&out.stderr))
    );
}

const PROXY_TEST: &str = "a_proxy_never_sees_a_link_local_request_of_the_url_or_actions_source";

#[tokio::test]
async fn a_proxy_never_sees_a_link_local_request_of_the_url_or_actions_source() {
    if is_child(PROXY_TEST) {
        return link_local_requests_bypass_the_proxy_child().await;
    }
    run_in_own_network(PROXY_TEST).await;
}

/// A proxy that only counts the connections it gets (and closes them).
async fn recording_proxy() -> Arc<AtomicUsize> {
    let listener = tokio::net::TcpListener::bind(PROXY).await.unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    tokio::spawn(async move {
        while let Ok((connection, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            drop(connection);
        }
    });
    seen
}

fn url_source(url: &str) -> SourceSpec {
    SourceSpec::Url(UrlSpec {
        url: url.to_owned(),
        headers: vec![("Authorization".into(), "Bearer SECRET-bearer".into())],
        format: TokenFormat::Text,
        ca_file: None,
    })
}

fn actions_source(request_url: &str, token_file: &Path) -> SourceSpec {
    SourceSpec::GithubActions {
        audience: "sts.amazonaws.com".into(),
        endpoint: ActionsEndpoint {
            request_url: Some(request_url.to_owned()),
            request_token_file: Some(token_file.to_owned()),
            ca_file: None,
        },
    }
}

/// The child of the test above: every proxy variable names [`PROXY`], in a network of its own.
async fn link_local_requests_bypass_the_proxy_child() {
    let seen = recording_proxy().await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("request-token");
    std::fs::write(&token_file, "SECRET-request-token").unwrap();

    // The proxy is in force: a request to an ordinary host goes to it.
    let err = open(url_source("https://token.example/t")).await.first_read().await.unwrap_err();
    assert_eq!(seen.load(Ordering::SeqCst), 1, "the proxy is not in force, the test proves nothing: {err}");

    // Link-local, plain http or https: straight to the (here unreachable) address.
    for url in ["http://169.254.169.254/metadata/identity/oauth2/token?resource=x", "https://169.254.169.254/t"] {
        let err = open(url_source(url)).await.first_read().await.unwrap_err().to_string();
        assert_eq!(seen.load(Ordering::SeqCst), 1, "{url} went through the proxy: {err}");
        assert!(!err.contains("SECRET"), "{err}");
    }
    // The Actions source refuses plain http outside loopback before sending anything.
    let err = open(actions_source("http://169.254.169.254/idtoken?api-version=2.0", &token_file))
        .await
        .first_read()
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("plain http"), "{err}");
    assert_eq!(seen.load(Ordering::SeqCst), 1, "the Actions request went through the proxy: {err}");
}
