//! keyless under a real container engine (podman; keyless-test-support's podman.rs), with the
//! topology of `docker/compose.yaml` run by a real compose tool (podman-compose, pinned in
//! `tests/requirements.txt`) from the file itself: the sidecar image `scripts/image` builds runs
//! as uid 65532 on a read-only root filesystem, the emulator beside it, and the unmodified example
//! apps in the sidecar's network namespace (`network_mode: service:keyless`, the shape of a
//! Kubernetes pod) print the identities they got.
//!
//! What differs from `docker compose up`, and why:
//! - Nothing can be pulled or built from a base image here, so an override file (compose's own
//!   `-f` merging) runs the emulator (the dev image) and the apps (`keyless-examples:dev`) in an
//!   empty image with the host's libraries mounted read-only: the emulator with the keyless binary
//!   under test (its health check the same command at that binary's path), the apps with the test
//!   venv's Python and `examples/` at `/app`. The sidecar is the real image, unchanged.
//! - Debian's podman (4.3) has no `podman wait --condition=healthy`, so podman-compose ignores
//!   `depends_on: condition: service_healthy`, and without systemd podman schedules no health
//!   checks. The test therefore brings the services up in compose's dependency order and runs each
//!   service's own compose health check (`podman healthcheck run`) until it passes, as the engine
//!   would before starting the next.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use keyless_test_support::binary::{keyless_bin, workspace_root};
use keyless_test_support::podman::{self, HOST_IMAGE, Podman};
use keyless_test_support::tools;
use keyless_test_support::wait::{STARTUP_DEADLINE, holds_within};

/// The user every container runs as.
const RUNTIME_UID: u32 = 65532;
/// The example apps and what each prints once it has its cloud's credentials.
const APPS: [(&str, &str); 3] = [
    ("aws-app", "aws: arn:aws:sts::123456789012:assumed-role/keyless-dev/"),
    ("gcp-app", "access token for keyless-dev@keyless-dev.iam.gserviceaccount.com"),
    ("azure-app", "token for app 3f6e8d1c-9b2a-4e7f-8c5d-6a1b2c3d4e5f"),
];

/// The compose project: `docker/compose.yaml` plus the test's override, under a name unique on
/// the machine; taken down with its volumes and network when dropped.
struct Project<'a> {
    podman: &'a Podman,
    name: String,
    dir: tempfile::TempDir,
}

impl<'a> Project<'a> {
    fn new(podman: &'a Podman) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let unique = dir.path().file_name().unwrap().to_string_lossy().replace('.', "").to_lowercase();
        let project = Self { podman, name: format!("keyless-test-{unique}"), dir };
        std::fs::write(project.override_file(), override_yaml()).unwrap();
        project
    }

    fn override_file(&self) -> PathBuf {
        self.dir.path().join("compose.override.yaml")
    }

    /// The `-f`, `-p` options every podman-compose call starts with.
    fn files(&self) -> Vec<String> {
        let compose = workspace_root().join("docker/compose.yaml");
        vec![
            "-f".into(),
            compose.display().to_string(),
            "-f".into(),
            self.override_file().display().to_string(),
            "-p".into(),
            self.name.clone(),
        ]
    }

    /// `podman-compose -f ... -p ... ARGS`; fails the test with its output if it failed.
    async fn compose(&self, args: &[&str]) -> String {
        let mut all = self.files();
        all.extend(args.iter().map(|a| (*a).to_owned()));
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        let out = self.podman.compose(&all).await;
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "podman-compose {args:?} failed ({}):\n{text}", out.status);
        text
    }

    /// The container podman-compose names for `service`.
    fn container(&self, service: &str) -> String {
        format!("{}_{service}_1", self.name)
    }

    /// Starts `services` (already-running dependencies are left as they are).
    async fn up(&self, services: &[&str]) {
        let mut args = vec!["up", "-d", "--no-build", "--no-deps"];
        args.extend(services);
        self.compose(&args).await;
    }

    /// Runs `service`'s compose health check until it passes.
    async fn wait_healthy(&self, service: &str) {
        let container = self.container(service);
        let healthy = holds_within(STARTUP_DEADLINE, || async {
            self.podman.run(&["healthcheck", "run", &container]).await.status.success()
        })
        .await;
        if !healthy {
            panic!("{service} never turned healthy:\n{}", self.logs(&["emulator", "keyless"]).await);
        }
    }

    async fn logs(&self, services: &[&str]) -> String {
        let mut all = String::new();
        for service in services {
            let out = self.podman.run(&["logs", &self.container(service)]).await;
            all += &format!(
                "--- {service}\n{}{}\n",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        all
    }

    /// The host path of the project's named volume `name`.
    async fn volume(&self, name: &str) -> PathBuf {
        let volume = format!("{}_{name}", self.name);
        PathBuf::from(self.podman.ok(&["volume", "inspect", "--format", "{{.Mountpoint}}", &volume]).await.trim())
    }
}

impl Drop for Project<'_> {
    fn drop(&mut self) {
        let mut command = std::process::Command::new(keyless_test_support::tools::python());
        command.args(["-m", "podman_compose"]).args(self.files()).args(["down", "--volumes", "--timeout", "5"]);
        let _ = command
            .env("CONTAINERS_CONF", self.podman.containers_conf())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// The override: the emulator and the apps in [`HOST_IMAGE`] with the host's files they need.
fn override_yaml() -> String {
    let mounts = |extra: &[String]| {
        let mut lines: Vec<String> =
            podman::host_mounts().chunks(2).map(|pair| format!("      - {}\n", pair[1])).collect();
        lines.extend(extra.iter().map(|m| format!("      - {m}\n")));
        lines.concat()
    };
    let bin = keyless_bin().display().to_string();
    let emulator = format!(
        "  emulator:\n    image: {HOST_IMAGE}\n    entrypoint: [\"{bin}\"]\n    volumes:\n{}    healthcheck:\n      \
         test: !override [\"CMD\", \"{bin}\", \"probe\", \"--ca-file\", \"/var/lib/keyless-emulator/ca.pem\", \
         \"https://emulator:9813/.well-known/openid-configuration\"]\n",
        mounts(&[])
    );
    let examples = workspace_root().join("examples");
    let app_mounts = mounts(&[format!("{}:/app:ro", examples.display())]);
    let path = format!("{}:/usr/local/bin:/usr/bin:/bin", podman::venv_bin().display());
    let apps: String = APPS
        .iter()
        .map(|(app, _)| {
            format!(
                "  {app}:\n    image: {HOST_IMAGE}\n    working_dir: /app\n    volumes:\n{app_mounts}    environment:\n      \
                 PATH: \"{path}\"\n      HOME: /tmp\n"
            )
        })
        .collect();
    format!("services:\n{emulator}{apps}")
}

/// The host process of `container`: its uid, and whether its root is mounted read-only.
async fn process_uid(podman: &Podman, container: &str) -> (u32, bool) {
    let pid = podman.ok(&["inspect", "--format", "{{.State.Pid}}", container]).await;
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid.trim())).unwrap();
    let uid = status.lines().find_map(|l| l.strip_prefix("Uid:")).unwrap().split_whitespace().next().unwrap();
    let read_only = podman.ok(&["inspect", "--format", "{{.HostConfig.ReadonlyRootfs}}", container]).await;
    (uid.parse().unwrap(), read_only.trim() == "true")
}

#[tokio::test]
#[cfg_attr(
    not(keyless_tools_podman),
    ignore = "needs root, podman and runc: ./scripts/test installs them when run as root"
)]
async fn podman_compose_runs_the_compose_file_and_the_apps_get_their_identities_from_the_read_only_uid_65532_image() {
    let podman = tools::need(podman::find_podman());
    podman.need_sidecar_image().await;
    podman.build_host_image().await;
    let project = Project::new(&podman);

    project.up(&["emulator"]).await;
    project.wait_healthy("emulator").await;
    project.up(&["keyless"]).await;
    project.wait_healthy("keyless").await;

    // The shipped image as shipped (compose's `image: keyless:dev`, which `scripts/image` tags):
    // its numeric user and a read-only root, as the compose file's hardening asks.
    let sidecar = project.container("keyless");
    let image = podman.ok(&["inspect", "--format", "{{.ImageName}}", &sidecar]).await;
    assert!(image.trim().ends_with("keyless:dev"), "the sidecar runs {image}");
    assert_eq!(process_uid(&podman, &sidecar).await, (RUNTIME_UID, true));
    assert_eq!(process_uid(&podman, &project.container("emulator")).await, (RUNTIME_UID, true));

    let apps: Vec<&str> = APPS.iter().map(|(app, _)| *app).collect();
    project.up(&apps).await;
    for (app, identity) in APPS {
        let container = project.container(app);
        let code = podman.ok(&["wait", &container]).await;
        let output = project.logs(&[app]).await;
        if !(code.trim() == "0" && output.contains(identity)) {
            panic!(
                "{app} exited with {} without printing {identity:?}:\n{output}\n{}",
                code.trim(),
                project.logs(&["emulator", "keyless"]).await
            );
        }
    }
    assert_run_volume_holds_the_authorization_token(&project.volume("keyless-run").await);
}

/// The sidecar (uid 65532, read-only root) wrote the AWS authorization token file the apps read
/// into its one writable volume, and nothing else.
fn assert_run_volume_holds_the_authorization_token(run: &Path) {
    let names: Vec<String> =
        std::fs::read_dir(run).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(names, ["aws-container-authorization-token"], "{names:?}");
}
