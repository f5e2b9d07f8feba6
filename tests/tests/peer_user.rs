//! The credential listener serves only processes of keyless's own user (`keyless exec` always;
//! `keyless serve` by default outside Kubernetes, `listen_uid_check`). IMDSv2, the GCE metadata
//! server and Azure IMDS need no secret, so on a shared host any local user could otherwise read
//! them. The other user is a real process (curl, started as uid 65534); keyless and the owner's
//! client run as root, as the suite does.
//!
//! Needs root to start a client as another user: without it the runner reports the tests
//! `ignored` (cfg `keyless_tools_root`); under `CI=true` they run and fail, naming what is missing.
#![allow(clippy::unwrap_used)]

use keyless_test_support::binary::keyless_bin;
use keyless_test_support::emulate::EmulatorProcess;
use keyless_test_support::sidecar::{AZURE_RESOURCE, Sidecar, all_clouds_config};
use keyless_test_support::tools;
use keyless_test_support::wait::{STARTUP_DEADLINE, wait_until};

/// The other user: `nobody`.
const OTHER_UID: u32 = 65534;

const GCE_TOKEN: &str = "/computeMetadata/v1/instance/service-accounts/default/token";

/// The routes that need no secret, with the header their clients send and a word of the native
/// refusal: the GCE metadata server's text, the IMDS text, Entra's JSON `error`.
fn secretless_routes() -> [(&'static str, &'static str, String, &'static str); 3] {
    let resource = AZURE_RESOURCE.replace(':', "%3A").replace('/', "%2F");
    [
        ("GET", "Metadata-Flavor: Google", GCE_TOKEN.to_owned(), "Request denied"),
        ("PUT", "X-aws-ec2-metadata-token-ttl-seconds: 60", "/latest/api/token".to_owned(), "another user"),
        (
            "GET",
            "Metadata: true",
            format!("/metadata/identity/oauth2/token?api-version=2018-02-01&resource={resource}"),
            "\"error\"",
        ),
    ]
}

/// `curl` as `uid` (root: the owner): the status code and the body.
async fn curl_as(uid: u32, method: &str, header: &str, url: &str) -> (u16, String) {
    let out = tokio::process::Command::new("curl")
        .uid(uid)
        .gid(uid)
        .args(["--silent", "--noproxy", "*", "--max-time", "10", "--write-out", "\n%{http_code}"])
        .args(["--request", method, "--header", header, url])
        .env_clear()
        .output()
        .await
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    (status.trim().parse().unwrap_or(0), body.to_owned())
}

/// Every secret-less route, from the owner (served) and from the other user (refused natively).
async fn only_the_owner_is_served(base: &str, logs: &dyn Fn() -> String) {
    for (method, header, path, refusal) in secretless_routes() {
        let url = format!("{base}{path}");
        let (status, body) = curl_as(0, method, header, &url).await;
        assert_eq!(status, 200, "the owner was not served {method} {path}: {body}\n{}", logs());
        let (status, body) = curl_as(OTHER_UID, method, header, &url).await;
        assert_eq!(status, 403, "another user got {method} {path}: {body}\n{}", logs());
        assert!(body.contains(refusal), "{method} {path}: not the native refusal: {body}");
        assert!(!body.contains("AccessKeyId") && !body.contains("access_token"), "{body}");
    }
    assert!(logs().contains("refused a connection of another user"), "{}", logs());
}

fn token_files(emulator: &EmulatorProcess) -> impl Fn(&str) -> String + '_ {
    |cloud| format!("token_file = {}", serde_json::Value::String(emulator.token_file(cloud).display().to_string()))
}

#[cfg_attr(not(keyless_tools_root), ignore = "needs root: run the suite as root, as CI does")]
#[tokio::test]
#[cfg_attr(
    not(keyless_tools_root),
    ignore = "needs root to start a client as another user: run the suite as root, as CI does"
)]
async fn serve_outside_kubernetes_answers_another_users_process_with_each_routes_native_refusal() {
    tools::need(tools::find_root());
    let emulator = EmulatorProcess::start().await;
    let sidecar = Sidecar::all_clouds(&emulator, &emulator.url, "", "info").await;
    only_the_owner_is_served(&sidecar.url(""), &|| sidecar.logs()).await;
}

#[cfg_attr(not(keyless_tools_root), ignore = "needs root: run the suite as root, as CI does")]
#[tokio::test]
#[cfg_attr(
    not(keyless_tools_root),
    ignore = "needs root to start a client as another user: run the suite as root, as CI does"
)]
async fn serve_with_listen_uid_check_off_serves_every_local_user() {
    tools::need(tools::find_root());
    let emulator = EmulatorProcess::start().await;
    let toml = all_clouds_config(&emulator, &emulator.url, "", "info", &token_files(&emulator)).await;
    let sidecar = Sidecar::spawn(&format!("listen_uid_check = false\n{toml}"), &[]);
    sidecar.wait_ready().await;
    let (method, header, path, _) = secretless_routes()[0].clone();
    let (status, body) = curl_as(OTHER_UID, method, header, &sidecar.url(&path)).await;
    assert_eq!(status, 200, "{body}\n{}", sidecar.logs());
}

#[cfg_attr(not(keyless_tools_root), ignore = "needs root: run the suite as root, as CI does")]
#[tokio::test]
#[cfg_attr(
    not(keyless_tools_root),
    ignore = "needs root to start a client as another user: run the suite as root, as CI does"
)]
async fn exec_serves_only_its_own_user() {
    tools::need(tools::find_root());
    let emulator = EmulatorProcess::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("keyless.toml");
    std::fs::write(&config, all_clouds_config(&emulator, &emulator.url, "", "info", &token_files(&emulator)).await)
        .unwrap();
    // The command says where keyless listens, then waits until the test is done with it.
    let (host, done) = (dir.path().join("host"), dir.path().join("done"));
    let script = format!(
        "echo \"$GCE_METADATA_HOST\" > {host}; while [ ! -e {done} ]; do sleep 0.05; done",
        host = host.display(),
        done = done.display()
    );
    let mut exec = tokio::process::Command::new(keyless_bin())
        .args(["exec", "--config", config.to_str().unwrap(), "--", "sh", "-c", &script])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("stderr")).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let logs = || std::fs::read_to_string(dir.path().join("stderr")).unwrap_or_default();
    wait_until("the command to start", STARTUP_DEADLINE, || {
        let written = std::fs::read_to_string(&host).is_ok_and(|h| !h.trim().is_empty());
        async move { written }
    })
    .await;
    let base = format!("http://{}", std::fs::read_to_string(&host).unwrap().trim());
    // exec logs warnings only: the refusal's warning is what shows.
    only_the_owner_is_served(&base, &logs).await;
    std::fs::write(&done, "").unwrap();
    let status = tokio::time::timeout(STARTUP_DEADLINE, exec.wait()).await.unwrap().unwrap();
    assert!(status.success(), "{}", logs());
}
