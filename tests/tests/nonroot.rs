//! keyless as the image runs it: a numeric non-root user (65532) reading a projected token the
//! kubelet wrote for the pod. Without the pod's `fsGroup` the file is unreadable: keyless must say
//! so with the fix and stay not-ready; once the kubelet rewrites it group-readable (what `fsGroup`
//! does), keyless must pick it up by itself and serve.
//!
//! Needs root to start keyless as another user; CI runs as root (`scripts/image` requires it).
#![allow(clippy::unwrap_used)]
#![allow(clippy::print_stderr)] // says why it skipped when not root

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::Path;

use keyless_e2e::{Emulator, Process, STARTUP_DEADLINE, free_port, status_of, wait_until};

/// The image's user and group (docker/Dockerfile).
const IMAGE_UID: u32 = 65532;
const FS_GROUP: u32 = 65532;
const AUTHORIZATION: &str = "e2e-nonroot-container-authorization-5d1f";

fn running_as_root() -> bool {
    // /proc/self belongs to the effective user of the process reading it.
    std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false)
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Writes `content` the way the kubelet's AtomicWriter does: a new file renamed over `token`,
/// with the owner, group and mode it was given.
fn project(dir: &Path, content: &str, mode: u32, gid: u32) {
    let staged = dir.join("..token.tmp");
    std::fs::write(&staged, content).unwrap();
    chmod(&staged, mode);
    std::os::unix::fs::chown(&staged, Some(0), Some(gid)).unwrap();
    std::fs::rename(&staged, dir.join("token")).unwrap();
}

#[tokio::test]
async fn as_the_image_user_an_unreadable_token_is_reported_with_the_fs_group_fix_and_then_picked_up() {
    if !running_as_root() {
        eprintln!("skipped: starting keyless as uid {IMAGE_UID} needs root (CI runs as root)");
        return;
    }
    let emulator = Emulator::start().await;
    let ids = emulator.identities().await;

    // Everything keyless needs, readable by any user, in a directory it may traverse.
    let dir = tempfile::tempdir().unwrap();
    chmod(dir.path(), 0o755);
    let tokens = dir.path().join("tokens");
    std::fs::create_dir(&tokens).unwrap();
    chmod(&tokens, 0o755);
    let ca = dir.path().join("ca.pem");
    std::fs::copy(&emulator.ca, &ca).unwrap();
    chmod(&ca, 0o644);
    let token = std::fs::read_to_string(emulator.token_dir("aws").join("token")).unwrap();
    // The pod has no fsGroup: root's file, mode 0600.
    project(&tokens, &token, 0o600, 0);

    let (listen, admin) = (free_port(), free_port());
    let config = dir.path().join("keyless.toml");
    std::fs::write(
        &config,
        format!(
            r#"listen = "127.0.0.1:{listen}"
admin_listen = "127.0.0.1:{admin}"

[aws]
token_file = "{token_file}"
role_arn = "{role}"
region = "us-east-1"
sts_endpoint = "{sts}"
ca_file = "{ca}"
authorization_token = "{AUTHORIZATION}"
"#,
            token_file = tokens.join("token").display(),
            role = ids["aws_role_arn"].as_str().unwrap(),
            sts = emulator.url,
            ca = ca.display(),
        ),
    )
    .unwrap();
    chmod(&config, 0o644);

    let process = Process::spawn_as(
        Some(IMAGE_UID),
        &["serve", "--config", config.to_str().unwrap()],
        &[("KEYLESS_LOG", "info")],
    );
    let logs = || process.logs();
    let readyz = format!("http://127.0.0.1:{admin}/readyz");

    wait_until("keyless to report the unreadable token", STARTUP_DEADLINE, || {
        let logs = logs();
        async move { logs.contains("permission denied") }
    })
    .await;
    let reported = logs();
    assert!(reported.contains("fsGroup"), "the fix is not named:\n{reported}");
    assert!(reported.contains(tokens.join("token").to_str().unwrap()), "the file is not named:\n{reported}");
    assert_eq!(status_of(&readyz).await, 503, "ready without a credential:\n{reported}");

    // The kubelet, now with fsGroup 65532, rewrites the token group-readable.
    project(&tokens, &token, 0o640, FS_GROUP);
    wait_until("keyless to read the token and turn ready", STARTUP_DEADLINE, || {
        let readyz = readyz.clone();
        async move { status_of(&readyz).await == 200 }
    })
    .await;
    let credentials = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{listen}/v1/credentials"))
        .header("Authorization", AUTHORIZATION)
        .send()
        .await
        .unwrap();
    assert_eq!(credentials.status(), 200);
    let body: serde_json::Value = credentials.json().await.unwrap();
    assert!(body["AccessKeyId"].as_str().is_some_and(|k| !k.is_empty()), "{body}");

    let logs = process.logs();
    let status = process.stop().await;
    assert!(status.success(), "exit {status:?}:\n{logs}");
}
