//! A real container engine: podman (Debian's package), with the runtime settings this kind of
//! sandbox needs set for the harness only, through a `containers.conf` of its own
//! (`CONTAINERS_CONF`): the `runc` runtime (crun cannot set up cgroups in a hybrid hierarchy), the
//! `cgroupfs` manager (no systemd), and no default ulimits (raising RLIMIT_NOFILE is not permitted
//! here). Nothing of the machine's podman configuration, nor `docker/compose.yaml`, changes.
//!
//! Images: the sidecar image that `scripts/image` builds ([`SIDECAR_IMAGE`]), and, since no base
//! image can be pulled here, [`HOST_IMAGE`]: an empty root filesystem into which a container
//! bind-mounts, read-only, the host's libraries and the test venv's Python, or the keyless binary
//! under test (the emulation, which the sidecar image leaves out).

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use tokio::process::Command;

use crate::binary::{keyless_bin, workspace_root};
use crate::process::{output_within, succeeded};
use crate::tools::{self, Missing};

/// The sidecar image, as `scripts/image` tags it.
pub const SIDECAR_IMAGE: &str = "localhost/keyless:dev";
/// The release's full-CLI image (`keyless webhook`, `keyless node`), as `scripts/image --full`
/// tags it.
pub const WEBHOOK_IMAGE: &str = "localhost/keyless-webhook:dev";
/// The empty image the host's files are mounted into.
pub const HOST_IMAGE: &str = "localhost/keyless-test-host:dev";
/// How long one podman command may take.
const PODMAN_DEADLINE: Duration = Duration::from_secs(300);
/// The label `scripts/image` gives its images: the revision they were built from
/// (`KEYLESS_REVISION`, scripts/release-env).
const REVISION_LABEL_FORMAT: &str = "{{index .Labels \"org.opencontainers.image.revision\"}}";

/// The harness's runtime settings (see the module documentation).
const CONTAINERS_CONF: &str =
    "[containers]\ndefault_ulimits = []\n\n[engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\n";

/// podman with the harness's `containers.conf`.
#[derive(Debug)]
pub struct Podman {
    conf_dir: tempfile::TempDir,
}

/// What a container test misses without podman, runc and root.
pub const PODMAN: Missing = Missing {
    what: "root with podman and runc",
    fix: "apt-get install podman runc catatonit (scripts/test installs them when apt-get is there), and run as root",
};

/// podman, runc and root (cfg `keyless_tools_podman`, see [`tools`]).
pub fn find_podman() -> Result<Podman, Missing> {
    if !crate::probe::podman() {
        return Err(PODMAN);
    }
    let conf_dir = tempfile::tempdir().expect("a temporary directory");
    std::fs::write(conf_dir.path().join("containers.conf"), CONTAINERS_CONF).expect("containers.conf");
    Ok(Podman { conf_dir })
}

impl Podman {
    /// `program` with the harness's `containers.conf`, no stdin, killed when dropped.
    fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new(program);
        command
            .env("CONTAINERS_CONF", self.conf_dir.path().join("containers.conf"))
            .stdin(Stdio::null())
            .kill_on_drop(true);
        command
    }

    /// `podman ARGS` with the harness's configuration; output captured.
    pub async fn run(&self, args: &[&str]) -> Output {
        let mut command = self.command("podman");
        command.args(args);
        output_within(command, PODMAN_DEADLINE, &format!("podman {args:?}")).await
    }

    /// `podman-compose ARGS` with the harness's configuration; output captured. podman-compose is
    /// the test venv's (pinned in `tests/requirements.txt`, installed by `scripts/test`), run as a
    /// module of the venv's Python (a venv's scripts break when the venv moves).
    pub async fn compose(&self, args: &[&str]) -> Output {
        let mut command = self.command(tools::python());
        command.args(["-m", "podman_compose"]).args(args);
        output_within(command, PODMAN_DEADLINE, &format!("podman-compose {args:?}")).await
    }

    /// The harness's `containers.conf` (for a clean-up that cannot be async).
    pub fn containers_conf(&self) -> PathBuf {
        self.conf_dir.path().join("containers.conf")
    }

    /// `podman ARGS`' stdout; fails the test with its stderr if it failed.
    pub async fn ok(&self, args: &[&str]) -> String {
        succeeded(&format!("podman {args:?}"), self.run(args).await)
    }

    /// Asserts that [`SIDECAR_IMAGE`] is there and of this tree's revision. The tests never build
    /// it: `scripts/test` runs `scripts/image` before them (a static release build, minutes cold).
    pub async fn need_sidecar_image(&self) {
        self.need_image(SIDECAR_IMAGE, "./scripts/image").await;
    }

    /// Asserts that [`WEBHOOK_IMAGE`] is there and of this tree's revision (`scripts/test` runs
    /// `scripts/image --full` before the tests).
    pub async fn need_webhook_image(&self) {
        self.need_image(WEBHOOK_IMAGE, "./scripts/image --full").await;
    }

    /// The image `tag`, labelled by `built_by` (`scripts/image`) with the revision it was built
    /// from: a missing image or one of another commit fails the test, naming the command to run.
    async fn need_image(&self, tag: &str, built_by: &str) {
        let fix = format!("run {built_by} (./scripts/test builds it before the tests)");
        let inspected = self.run(&["image", "inspect", "--format", REVISION_LABEL_FORMAT, tag]).await;
        assert!(
            inspected.status.success(),
            "missing: the image {tag}: {fix}\n{}",
            String::from_utf8_lossy(&inspected.stderr).trim()
        );
        let image = String::from_utf8_lossy(&inspected.stdout).trim().to_owned();
        let tree = tree_revision();
        assert_eq!(image, tree, "the image {tag} was built from revision {image:?}, this tree is {tree:?}: {fix}");
    }

    /// Builds [`HOST_IMAGE`]: an empty root (merged-/usr links, mount points, and `hosts: files dns`
    /// for a compose network's DNS).
    pub async fn build_host_image(&self) {
        let context = tempfile::tempdir().expect("a temporary directory");
        let rootfs = context.path().join("rootfs");
        for dir in ["usr", "etc", "tmp", "proc", "sys", "dev", "app"] {
            std::fs::create_dir_all(rootfs.join(dir)).expect("a mount point");
        }
        for link in ["bin", "lib", "sbin"] {
            std::os::unix::fs::symlink(format!("usr/{link}"), rootfs.join(link)).expect("a merged-/usr link");
        }
        std::os::unix::fs::symlink("usr/lib64", rootfs.join("lib64")).expect("the lib64 link");
        std::fs::write(rootfs.join("etc/nsswitch.conf"), "hosts: files dns\n").expect("nsswitch.conf");
        std::fs::write(context.path().join("Containerfile"), "FROM scratch\nCOPY rootfs/ /\n").expect("Containerfile");
        let context = context.path().to_str().expect("a UTF-8 path");
        self.ok(&["build", "--quiet", "--pull=never", "-t", HOST_IMAGE, context]).await;
    }
}

/// `-v` options that mount, read-only at the same paths, what a [`HOST_IMAGE`] container needs to
/// run the test venv's Python and the keyless binary under test: the host's `/usr`, the Python
/// installation the venv was made from, the venv, and the binary's directory.
pub fn host_mounts() -> Vec<String> {
    let python = tools::python();
    let venv = python.parent().and_then(Path::parent).expect("the venv of target/venv/bin/python");
    let prefix = std::process::Command::new(&python)
        .args(["-c", "import sys; print(sys.base_prefix)"])
        .output()
        .expect("running the venv's python");
    let prefix = String::from_utf8(prefix.stdout).expect("a UTF-8 path").trim().to_owned();
    let binary_dir = keyless_bin().parent().expect("the binary's directory").to_path_buf();
    let mut dirs = vec![PathBuf::from("/usr"), venv.to_path_buf(), binary_dir];
    if !prefix.starts_with("/usr/") {
        dirs.push(PathBuf::from(prefix));
    }
    dirs.iter().flat_map(|d| ["-v".to_owned(), format!("{0}:{0}:ro", d.display())]).collect()
}

/// The venv's `bin` directory (for a container's `PATH`, so that `python` is the venv's).
pub fn venv_bin() -> PathBuf {
    tools::python().parent().expect("the venv's bin directory").to_path_buf()
}

/// This tree's revision as `scripts/release-env` names it for `scripts/image`: `KEYLESS_REVISION`
/// when set, else the commit, `-dirty` when the work tree has changes (a change made after the
/// image was built, on a tree already dirty, goes unseen), `unknown` outside git.
fn tree_revision() -> String {
    if let Some(set) = std::env::var("KEYLESS_REVISION").ok().filter(|r| !r.trim().is_empty()) {
        return set.trim().to_owned();
    }
    let root = workspace_root();
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .current_dir(&root)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let Some(commit) = git(&["rev-parse", "HEAD"]) else {
        return "unknown".to_owned();
    };
    match git(&["status", "--porcelain", "--untracked-files=normal"]) {
        Some(changes) if !changes.is_empty() => format!("{commit}-dirty"),
        _ => commit,
    }
}
