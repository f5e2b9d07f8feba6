//! What a hostile local process, web page or file can make the keyless binary do (the security rules, docs/reliability.md),
//! each test a way in that is closed.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::os::unix::fs::PermissionsExt as _;
use std::process::{Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keyless_test_support::binary::keyless_bin;
use keyless_test_support::dev::Dev;
use keyless_test_support::process::{Process, free_port};
use keyless_test_support::wait::{STARTUP_DEADLINE, wait_until};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::process::Command;

/// What the fake endpoints answer: credentials that must never be printed as valid.
const FAKE_CREDENTIALS: &str = r#"{"AccessKeyId":"ASIAFAKEFAKEFAKEFAKE","SecretAccessKey":"fake-secret-access-key-0000","Token":"fake-session-token-0000","Expiration":"2099-01-01T00:00:00Z"}"#;
/// An authorization value a test hands to `keyless credential-process`.
const AUTHORIZATION: &str = "hardening-container-authorization-5b7e21c9";

/// A loopback HTTP server that records the head of every request it gets and answers each with
/// `response` (a whole HTTP/1.1 response), closing the connection.
struct Recorder {
    addr: std::net::SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
    connections: Arc<Mutex<usize>>,
    probes: usize,
    task: tokio::task::JoinHandle<()>,
}

impl Recorder {
    async fn start(response: String) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (heads, connections) = (Arc::new(Mutex::new(Vec::new())), Arc::new(Mutex::new(0)));
        let (seen, counted) = (heads.clone(), connections.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                *counted.lock().unwrap() += 1;
                let (seen, response) = (seen.clone(), response.clone());
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tcp.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    seen.lock().unwrap().push(String::from_utf8_lossy(&head).into_owned());
                    let _ = tcp.write_all(response.as_bytes()).await;
                    let _ = tcp.shutdown().await;
                });
            }
        });
        Self { addr, heads, connections, probes: 0, task }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }

    /// Connections a client that has exited made (not counting this method's own). They are in
    /// the accept queue already: a connection of our own, made after them, is accepted after
    /// them, so once it is counted they are too.
    async fn connections(&mut self) -> usize {
        self.probes += 1;
        let before = *self.connections.lock().unwrap();
        let _probe = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        wait_until("the recorder to accept its probe", STARTUP_DEADLINE, || {
            let now = *self.connections.lock().unwrap();
            async move { now > before }
        })
        .await;
        *self.connections.lock().unwrap() - self.probes
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn http_response(status: &str, headers: &str, body: &str) -> String {
    format!("HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
}

/// `keyless credential-process` with exactly `env` (plus PATH): its output, within a deadline.
async fn credential_process(env: &[(&str, &str)]) -> Output {
    let child = Command::new(keyless_bin())
        .arg("credential-process")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(Duration::from_secs(30), child).await.expect("keyless credential-process hung").unwrap()
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[tokio::test]
async fn credential_process_refuses_plain_http_to_a_remote_host_before_connecting() {
    // A proxy on loopback would see any attempt: reqwest sends plain-http requests to it.
    let mut proxy = Recorder::start(http_response("200 OK", "", FAKE_CREDENTIALS)).await;
    let out = credential_process(&[
        ("AWS_CONTAINER_CREDENTIALS_FULL_URI", "http://evil.example/x"),
        ("AWS_CONTAINER_AUTHORIZATION_TOKEN", AUTHORIZATION),
        ("HTTP_PROXY", &proxy.url()),
        ("http_proxy", &proxy.url()),
    ])
    .await;
    let said = text(&out);
    assert!(!out.status.success(), "printed credentials from a remote plain-http endpoint:\n{said}");
    assert_eq!(proxy.connections().await, 0, "keyless connected before refusing: {:?}", proxy.heads());
    assert!(said.contains("AWS_CONTAINER_CREDENTIALS_FULL_URI") && said.contains("loopback"), "{said}");
    assert!(!said.contains(AUTHORIZATION), "{said}");
}

#[tokio::test]
async fn credential_process_never_sends_the_authorization_through_a_proxy() {
    let dev = Dev::start().await;
    let mut proxy =
        Recorder::start(http_response("200 OK", "Content-Type: application/json\r\n", FAKE_CREDENTIALS)).await;
    let out = credential_process(&[
        ("AWS_CONTAINER_CREDENTIALS_FULL_URI", dev.var("AWS_CONTAINER_CREDENTIALS_FULL_URI")),
        ("AWS_CONTAINER_AUTHORIZATION_TOKEN", dev.var("AWS_CONTAINER_AUTHORIZATION_TOKEN")),
        ("HTTP_PROXY", &proxy.url()),
        ("http_proxy", &proxy.url()),
        ("ALL_PROXY", &proxy.url()),
    ])
    .await;
    let said = text(&out);
    assert_eq!(proxy.connections().await, 0, "the proxy saw: {:?}", proxy.heads());
    assert!(out.status.success(), "{said}\n--- keyless dev\n{}", dev.logs());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["Version"], 1);
    assert_ne!(json["AccessKeyId"], "ASIAFAKEFAKEFAKEFAKE", "the proxy's credentials were printed");
}

#[tokio::test]
async fn credential_process_follows_no_redirect() {
    let mut elsewhere = Recorder::start(http_response("200 OK", "", FAKE_CREDENTIALS)).await;
    let location = format!("Location: {}/v1/credentials\r\n", elsewhere.url());
    let endpoint = Recorder::start(http_response("302 Found", &location, "")).await;
    let out = credential_process(&[
        ("AWS_CONTAINER_CREDENTIALS_FULL_URI", &format!("{}/v1/credentials", endpoint.url())),
        ("AWS_CONTAINER_AUTHORIZATION_TOKEN", AUTHORIZATION),
    ])
    .await;
    let said = text(&out);
    assert!(!out.status.success(), "followed a redirect and printed its credentials:\n{said}");
    assert!(said.contains("redirect"), "{said}");
    assert_eq!(endpoint.heads().len(), 1, "asked the endpoint more than once: {:?}", endpoint.heads());
    assert_eq!(elsewhere.connections().await, 0, "the redirect target saw: {:?}", elsewhere.heads());
}

/// `keyless ARGS` with the config `toml` (written to a fresh file): its exit status and output.
async fn run_with_config(args: &[&str], toml: &str) -> (std::process::ExitStatus, String) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("keyless.toml");
    std::fs::write(&config, toml).unwrap();
    let mut argv = args.to_vec();
    argv.extend(["--config", config.to_str().unwrap()]);
    exit_of(Process::spawn(&argv, &[("KEYLESS_LOG", "debug")])).await
}

/// Waits for `process` to exit on its own: its status and what it printed.
async fn exit_of(mut process: Process) -> (std::process::ExitStatus, String) {
    wait_until("keyless to exit", STARTUP_DEADLINE, || {
        let exited = process.has_exited();
        async move { exited }
    })
    .await;
    let said = process.logs();
    (process.wait().await, said)
}

const AWS_SECTION: &str = "[aws]\ntoken_file = \"/nonexistent/keyless-token\"\n\
    role_arn = \"arn:aws:iam::123456789012:role/app\"\nsts_endpoint = \"http://127.0.0.1:9\"\n";

#[tokio::test]
async fn serve_with_an_absurd_request_wait_exits_naming_the_key() {
    let toml = format!("[cache]\nrequest_wait = \"400000000000y\"\n\n{AWS_SECTION}");
    let (status, said) =
        run_with_config(&["serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"], &toml).await;
    assert_eq!(status.code(), Some(1), "{said}");
    assert!(said.contains("cache.request_wait"), "{said}");
    assert!(!said.contains("panicked"), "{said}");
}

#[tokio::test]
async fn a_toml_syntax_error_names_the_line_but_never_echoes_the_secret() {
    let secret = "hardening-unterminated-secret-9d3f0a";
    let configs = [
        format!("{AWS_SECTION}authorization_token = \"{secret}\n"),
        format!(
            "[azure]\ntoken_file = \"/t\"\ntenant_id = \"contoso.onmicrosoft.com\"\n\
             client_id = \"00000000-0000-0000-0000-000000000000\"\nidentity_header = \"{secret}\n"
        ),
    ];
    for toml in &configs {
        let line = toml.lines().position(|l| l.contains(secret)).unwrap() + 1;
        for command in ["serve", "check"] {
            let (status, said) = run_with_config(&[command], toml).await;
            assert_eq!(status.code(), Some(1), "{command}: {said}");
            assert!(!said.contains(&secret[..16]) && !said.contains(&secret[16..]), "{command} echoed it: {said}");
            assert!(said.contains(&format!("line {line}")), "{command} does not name line {line}: {said}");
        }
    }
}

#[tokio::test]
async fn dev_writes_its_files_fresh_and_never_through_a_planted_symlink() {
    let dir = tempfile::tempdir().unwrap();
    let (env_file, state) = (dir.path().join("app.env"), dir.path().join("state"));
    std::fs::create_dir(&state).unwrap();
    // A victim per file keyless dev or its emulator writes, reached through a planted symlink.
    let planted =
        [dir.path().join("app.tmp"), state.join("keyless.toml"), state.join("ca.pem"), state.join("ca-bundle.pem")];
    let victims: Vec<_> = (0..planted.len()).map(|i| dir.path().join(format!("victim-{i}"))).collect();
    for (link, victim) in planted.iter().zip(&victims) {
        std::fs::write(victim, "untouched\n").unwrap();
        std::os::unix::fs::symlink(victim, link).unwrap();
    }
    std::fs::write(&env_file, "OLD=1\n").unwrap();
    std::fs::set_permissions(&env_file, std::fs::Permissions::from_mode(0o644)).unwrap();

    let mut dev = Process::spawn(
        &[
            "dev",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--emulator-listen",
            "127.0.0.1:0",
            "--env-file",
            env_file.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
        ],
        &[("KEYLESS_LOG", "info")],
    );
    let mut exited = false;
    wait_until("keyless dev to write its env file", STARTUP_DEADLINE, || {
        exited = dev.has_exited();
        let written = std::fs::read_to_string(&env_file).is_ok_and(|t| t.contains("KEYLESS_DEV_ADMIN_URL="));
        async move { written || exited }
    })
    .await;
    assert!(!exited, "keyless dev exited:\n{}", dev.logs());
    for victim in &victims {
        assert_eq!(std::fs::read_to_string(victim).unwrap(), "untouched\n", "{} was written through", victim.display());
    }
    let meta = std::fs::symlink_metadata(&env_file).unwrap();
    assert!(meta.file_type().is_file(), "app.env is not a regular file");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "app.env keeps the old file's mode");
    for written in ["keyless.toml", "ca.pem", "ca-bundle.pem"] {
        assert!(std::fs::symlink_metadata(state.join(written)).unwrap().file_type().is_file(), "{written}");
    }
    // The temporary files were renamed into place, none left behind.
    for d in [dir.path(), &state] {
        let names: Vec<_> = std::fs::read_dir(d).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert!(names.iter().all(|n| !n.to_string_lossy().starts_with('.')), "left behind: {names:?}");
    }
    assert!(dev.stop().await.success());
}

#[tokio::test]
async fn emulate_off_loopback_needs_the_remote_control_flag() {
    let state = tempfile::tempdir().unwrap();
    let listen = format!("0.0.0.0:{}", free_port());
    let args = ["emulate", "--listen", &listen, "--state-dir", state.path().to_str().unwrap()];
    let (status, said) = exit_of(Process::spawn(&args, &[])).await;
    assert_eq!(status.code(), Some(1), "{said}");
    assert!(said.contains("--allow-remote-control"), "{said}");

    let mut allowed = Process::spawn(&[&args[..], &["--allow-remote-control"]].concat(), &[("KEYLESS_LOG", "info")]);
    let mut exited = false;
    wait_until("keyless emulate --allow-remote-control to be ready", STARTUP_DEADLINE, || {
        exited = allowed.has_exited();
        let ready = allowed.logs().contains("emulator ready");
        async move { ready || exited }
    })
    .await;
    assert!(!exited, "{}", allowed.logs());
    assert!(allowed.stop().await.success());
}

#[tokio::test]
async fn readyz_details_still_reach_a_loopback_peer() {
    let dev = Dev::start().await;
    let body = reqwest::get(format!("{}/readyz", dev.admin_url())).await.unwrap().text().await.unwrap();
    assert!(body.contains(dev.var("KEYLESS_DEV_AWS_ROLE_ARN")), "{body}");
    assert!(body.contains(dev.var("KEYLESS_DEV_GCP_SERVICE_ACCOUNT")), "{body}");
    assert!(dev.stop().await.success());
}
