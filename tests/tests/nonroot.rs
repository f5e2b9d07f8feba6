//! keyless as the image runs it: a numeric non-root user (65532) reading a projected token the
//! kubelet wrote for the pod. Without the pod's `fsGroup` the file is unreadable: keyless must say
//! so with the fix and stay not-ready; once the kubelet rewrites it group-readable (what `fsGroup`
//! does), keyless must pick it up by itself and serve.
//!
//! Needs root to start keyless as another user: without it the test skips, saying so; under
//! `CI=true` it fails (`tools::root`). CI runs as root (`scripts/image` requires it).
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use keyless_test_support::emulate::EmulatorProcess;
use keyless_test_support::kubelet::replace_with;
use keyless_test_support::sidecar::Sidecar;
use keyless_test_support::tools;
use keyless_test_support::wait::{STARTUP_DEADLINE, wait_until};

/// The image's user and group (docker/Dockerfile).
const IMAGE_UID: u32 = 65532;
const FS_GROUP: u32 = 65532;
const AUTHORIZATION: &str = "e2e-nonroot-container-authorization-5d1f";

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Writes `content` the way the kubelet's AtomicWriter does: a new file renamed over `token`,
/// with the owner, group and mode it was given.
fn project(dir: &Path, content: &str, mode: u32, gid: u32) {
    replace_with(&dir.join("token"), |staged| {
        std::fs::write(staged, content).unwrap();
        chmod(staged, mode);
        std::os::unix::fs::chown(staged, Some(0), Some(gid)).unwrap();
    });
}

#[tokio::test]
#[cfg_attr(not(keyless_tools_root), ignore = "needs root: run the suite as root, as CI does")]
async fn as_the_image_user_an_unreadable_token_is_reported_with_the_fs_group_fix_and_then_picked_up() {
    tools::need(tools::find_root());
    let emulator = EmulatorProcess::start().await;
    let ids = emulator.control.identities().await;

    // Everything keyless needs, readable by any user, in a directory it may traverse.
    let dir = tempfile::tempdir().unwrap();
    chmod(dir.path(), 0o755);
    let tokens = dir.path().join("tokens");
    std::fs::create_dir(&tokens).unwrap();
    chmod(&tokens, 0o755);
    let ca = dir.path().join("ca.pem");
    std::fs::copy(&emulator.ca, &ca).unwrap();
    chmod(&ca, 0o644);
    let token = std::fs::read_to_string(emulator.token_file("aws")).unwrap();
    // The pod has no fsGroup: root's file, mode 0600.
    project(&tokens, &token, 0o600, 0);

    let config = format!(
        r#"[aws]
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
    );
    // In the pod this models, the kubelet sets KUBERNETES_SERVICE_HOST: the peer-uid check is off
    // there (the test's client runs as root, keyless as the image user, as two containers may).
    let pod = [("KEYLESS_LOG", "info"), ("KUBERNETES_SERVICE_HOST", "10.96.0.1")];
    let sidecar = Sidecar::spawn_as(IMAGE_UID, &config, &pod);
    let logs = || sidecar.logs();

    wait_until("keyless to report the unreadable token", STARTUP_DEADLINE, || {
        let logs = logs();
        async move { logs.contains("permission denied") }
    })
    .await;
    let reported = logs();
    assert!(reported.contains("fsGroup"), "the fix is not named:\n{reported}");
    assert!(reported.contains(tokens.join("token").to_str().unwrap()), "the file is not named:\n{reported}");
    assert_eq!(sidecar.readyz().await, 503, "ready without a credential:\n{reported}");

    // The kubelet, now with fsGroup 65532, rewrites the token group-readable.
    project(&tokens, &token, 0o640, FS_GROUP);
    wait_until("keyless to read the token and turn ready", STARTUP_DEADLINE, || async {
        sidecar.readyz().await == 200
    })
    .await;
    let credentials = reqwest::Client::new()
        .get(sidecar.url("/v1/credentials"))
        .header("Authorization", AUTHORIZATION)
        .send()
        .await
        .unwrap();
    assert_eq!(credentials.status(), 200);
    let body: serde_json::Value = credentials.json().await.unwrap();
    assert!(body["AccessKeyId"].as_str().is_some_and(|k| !k.is_empty()), "{body}");

    let logs = sidecar.logs();
    let status = sidecar.process.stop().await;
    assert!(status.success(), "exit {status:?}:\n{logs}");
}
