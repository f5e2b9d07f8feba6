//! keyless under a real container engine (podman; keyless-test-support's podman.rs): the image
//! `scripts/image` builds runs as uid 65532 on a read-only root filesystem in a podman pod (one
//! network namespace, as a Kubernetes pod), next to unmodified example apps, with the topology of
//! `docker/compose.yaml` read from the file itself: each service's command, environment, user,
//! read-only root, capabilities, volumes, config and health check.
//!
//! What differs from `docker compose up`, because nothing can be pulled or built from a base image
//! here: the emulator service (the dev image) and the apps (`keyless-examples:dev`) run in an
//! empty image with the host's libraries mounted read-only, the first with the keyless binary
//! under test, the second with the test venv's Python and `examples/` at `/app`; and the health
//! checks run in the sidecar image (the same binary path) with the service's volumes.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use keyless_test_support::binary::{keyless_bin, workspace_root};
use keyless_test_support::podman::{self, HOST_IMAGE, Pod, Podman, SIDECAR_IMAGE};
use keyless_test_support::tools::python;
use keyless_test_support::wait::{STARTUP_DEADLINE, holds_within};
use serde_json::Value;

/// The user every container runs as.
const RUNTIME_UID: u32 = 65532;

/// `docker/compose.yaml` as compose reads it (anchors and merge keys resolved).
fn compose() -> Value {
    let script = "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))";
    let out = std::process::Command::new(python())
        .args(["-c", script])
        .arg(workspace_root().join("docker/compose.yaml"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn strings(value: &Value) -> Vec<String> {
    value.as_array().map(|a| a.iter().map(|v| v.as_str().unwrap().to_owned()).collect()).unwrap_or_default()
}

/// The compose project's named volumes and configs, as host paths.
struct Project {
    compose: Value,
    dir: tempfile::TempDir,
}

impl Project {
    fn new() -> Self {
        let project = Self { compose: compose(), dir: tempfile::tempdir().unwrap() };
        for volume in project.compose["volumes"].as_object().unwrap().keys() {
            let path = project.volume(volume);
            std::fs::create_dir_all(&path).unwrap();
            std::os::unix::fs::chown(&path, Some(RUNTIME_UID), Some(RUNTIME_UID)).unwrap();
        }
        std::fs::set_permissions(project.dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        project
    }

    fn volume(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn service(&self, name: &str) -> &Value {
        &self.compose["services"][name]
    }

    /// `podman run` options for the hardening, volumes, tmpfs and configs of `service`.
    fn options(&self, service: &Value) -> Vec<String> {
        let mut options = Vec::new();
        if let Some(user) = service["user"].as_str() {
            options.extend(["--user".to_owned(), user.to_owned()]);
        }
        if service["read_only"] == true {
            options.push("--read-only".to_owned());
        }
        for cap in strings(&service["cap_drop"]) {
            options.extend(["--cap-drop".to_owned(), cap]);
        }
        for opt in strings(&service["security_opt"]) {
            options.extend(["--security-opt".to_owned(), opt.replace(":true", "")]);
        }
        for tmpfs in strings(&service["tmpfs"]) {
            options.extend(["--tmpfs".to_owned(), tmpfs]);
        }
        for volume in strings(&service["volumes"]) {
            let (source, rest) = volume.split_once(':').unwrap();
            options.extend(["-v".to_owned(), format!("{}:{rest}", self.volume(source).display())]);
        }
        for config in service["configs"].as_array().cloned().unwrap_or_default() {
            let file = self.compose["configs"][config["source"].as_str().unwrap()]["file"].as_str().unwrap();
            let host = workspace_root().join("docker").join(file);
            options.extend(["-v".to_owned(), format!("{}:{}:ro", host.display(), config["target"].as_str().unwrap())]);
        }
        options
    }

    /// The `-e` options of `service`'s environment, plus `extra`.
    fn env(service: &Value, extra: &[(&str, String)]) -> Vec<String> {
        let mut env: BTreeMap<String, String> = service["environment"]
            .as_object()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned())).collect())
            .unwrap_or_default();
        env.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
        env.into_iter().flat_map(|(k, v)| ["-e".to_owned(), format!("{k}={v}")]).collect()
    }
}

/// `podman run -d` of compose service `name` in `pod`, with `image_options` (image, entrypoint).
async fn start_service(podman: &Podman, pod: &Pod, project: &Project, name: &str, image_options: &[String]) -> String {
    let service = project.service(name);
    let container = format!("{}-{name}", pod.name);
    let mut args = vec!["run".to_owned(), "-d".to_owned(), "--name".to_owned(), container.clone()];
    args.extend(pod.run_options());
    args.extend(project.options(service));
    args.extend(Project::env(service, &[]));
    args.extend(image_options.iter().cloned());
    args.extend(strings(&service["command"]));
    podman.ok(&args.iter().map(String::as_str).collect::<Vec<_>>()).await;
    container
}

/// Waits until `name`'s compose health check passes, run in the sidecar image in the pod with the
/// service's volumes (compose runs it inside the container; the binary path is the same).
async fn wait_healthy(podman: &Podman, pod: &Pod, project: &Project, name: &str, logs_of: &[String]) {
    let service = project.service(name);
    let test = strings(&service["healthcheck"]["test"]);
    assert_eq!(test[0], "CMD", "{name}: a health check in exec form");
    let mut args = vec!["run".to_owned(), "--rm".to_owned()];
    args.extend(pod.run_options());
    args.extend(project.options(service));
    args.extend(["--entrypoint".to_owned(), test[1].clone(), SIDECAR_IMAGE.to_owned()]);
    args.extend(test[2..].iter().cloned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    if !holds_within(STARTUP_DEADLINE, || async { podman.run(&args).await.status.success() }).await {
        panic!("{name} never turned healthy:\n{}", container_logs(podman, logs_of).await);
    }
}

async fn container_logs(podman: &Podman, containers: &[String]) -> String {
    let mut all = String::new();
    for container in containers {
        let out = podman.run(&["logs", container]).await;
        all += &format!(
            "--- {container}\n{}{}\n",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    all
}

/// The host process of `container`: its uid, and whether its root is mounted read-only.
async fn process_uid(podman: &Podman, container: &str) -> (u32, bool) {
    let pid = podman.ok(&["inspect", "--format", "{{.State.Pid}}", container]).await;
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid.trim())).unwrap();
    let uid = status.lines().find_map(|l| l.strip_prefix("Uid:")).unwrap().split_whitespace().next().unwrap();
    let read_only = podman.ok(&["inspect", "--format", "{{.HostConfig.ReadonlyRootfs}}", container]).await;
    (uid.parse().unwrap(), read_only.trim() == "true")
}

fn binary_entrypoint() -> Vec<String> {
    let mut options = podman::host_mounts();
    options.extend(["--entrypoint".to_owned(), keyless_bin().to_string_lossy().into_owned(), HOST_IMAGE.to_owned()]);
    options
}

fn app_options() -> Vec<String> {
    let mut options = podman::host_mounts();
    let examples = workspace_root().join("examples");
    let path = format!("PATH={}:/usr/local/bin:/usr/bin:/bin", podman::venv_bin().display());
    options.extend(["-v".to_owned(), format!("{}:/app:ro", examples.display())]);
    options.extend([
        "-e".to_owned(),
        path,
        "-e".to_owned(),
        "HOME=/tmp".to_owned(),
        "-w".to_owned(),
        "/app".to_owned(),
    ]);
    options.push(HOST_IMAGE.to_owned());
    options
}

/// Runs compose app `name` to completion in `pod`; its output.
async fn run_app(podman: &Podman, pod: &Pod, project: &Project, name: &str) -> (bool, String) {
    let service = project.service(name);
    let mut args = vec!["run".to_owned(), "--rm".to_owned()];
    args.extend(pod.run_options());
    args.extend(project.options(service));
    args.extend(Project::env(service, &[]));
    args.extend(app_options());
    args.extend(strings(&service["command"]));
    let out = podman.run(&args.iter().map(String::as_str).collect::<Vec<_>>()).await;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[tokio::test]
async fn the_image_runs_as_uid_65532_read_only_in_a_podman_pod_and_the_compose_apps_get_their_identities() {
    let Some(podman) = podman::podman() else { return };
    podman.build_sidecar_image().await;
    podman.build_host_image().await;
    let project = Project::new();
    let pod = podman.pod(&["emulator", "keyless"]).await;

    let emulator = start_service(&podman, &pod, &project, "emulator", &binary_entrypoint()).await;
    wait_healthy(&podman, &pod, &project, "emulator", std::slice::from_ref(&emulator)).await;
    let sidecar = start_service(&podman, &pod, &project, "keyless", &[SIDECAR_IMAGE.to_owned()]).await;
    let containers = [emulator.clone(), sidecar.clone()];
    wait_healthy(&podman, &pod, &project, "keyless", &containers).await;

    // The shipped image as shipped: its numeric user, a read-only root, next to the apps.
    assert_eq!(process_uid(&podman, &sidecar).await, (RUNTIME_UID, true));
    assert_eq!(process_uid(&podman, &emulator).await, (RUNTIME_UID, true));

    let expected = [
        ("aws-app", "aws: arn:aws:sts::123456789012:assumed-role/keyless-dev/"),
        ("gcp-app", "access token for keyless-dev@keyless-dev.iam.gserviceaccount.com"),
        ("azure-app", "token for app 3f6e8d1c-9b2a-4e7f-8c5d-6a1b2c3d4e5f"),
    ];
    for (app, identity) in expected {
        let (ok, output) = run_app(&podman, &pod, &project, app).await;
        if !(ok && output.contains(identity)) {
            panic!("{app} did not print {identity:?}:\n{output}\n{}", container_logs(&podman, &containers).await);
        }
    }
    drop(pod);
    assert_run_volume_holds_the_authorization_token(&project.volume("keyless-run"));
}

/// The sidecar (uid 65532, read-only root) wrote the AWS authorization token file the apps read
/// into its one writable volume, and nothing else.
fn assert_run_volume_holds_the_authorization_token(run: &Path) {
    let names: Vec<String> =
        std::fs::read_dir(run).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(names, ["aws-container-authorization-token"], "{names:?}");
}
