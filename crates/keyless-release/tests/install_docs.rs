//! The install commands users copy are run: every `sh` block of the README's Install section and
//! the install steps of `examples/ci/*.yml`, against a `dist/` written by `scripts/release`, in a
//! scratch HOME, install root and container storage, with no network (the CI steps' download URL
//! becomes a `file://` URL of that `dist/`). A command that does not exist, a file name that is not
//! in the release, a checksum that does not verify fail here before they are published.
//!
//! It needs a `dist/` (a release build: minutes), so it is `#[ignore]`d in the main test run;
//! `.ci/run` runs it right after `scripts/release`:
//!
//!   ./scripts/release && cargo test -p keyless-release --test install_docs -- --ignored
//!
//! `KEYLESS_RELEASE_DIST` names another `dist/`. Blocks whose first line is `# needs your registry`
//! or `# needs your cluster` are shown to readers and not run (no registry or cluster here).
//! `cargo install` runs with the release build's environment (`scripts/release-env`), so it finds
//! that build fresh instead of compiling for minutes; the install itself is real.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use keyless_release::{github_step, gitlab_job, line_of, section, shell_blocks, workspace_root, workspace_version};

const FULL_FEATURES: &str = "features: emulator, inject, node, webhook)";
const SIDECAR_FEATURES: &str = "features: none)";
const GITHUB_RELEASES: &str = "https://github.com/keyless-dev/keyless/releases/download/v";
/// The longest one block or install step may take: a `cargo install` that finds the release
/// build fresh takes seconds, one that compiles it about ten minutes on a small machine.
const SCRIPT_LIMIT: Duration = Duration::from_secs(20 * 60);

fn dist(root: &Path) -> PathBuf {
    let dist = std::env::var_os("KEYLESS_RELEASE_DIST").map(PathBuf::from).unwrap_or_else(|| root.join("dist"));
    assert!(
        dist.join("SHA256SUMS").is_file(),
        "no release in {}: run ./scripts/release first (or set KEYLESS_RELEASE_DIST)",
        dist.display()
    );
    dist
}

/// A scratch machine: its own HOME, cargo install root, temp dir and container storage; the
/// toolchain, cargo's registry cache and the system's tools are the real ones.
struct Scratch {
    _dir: tempfile::TempDir,
    root: PathBuf,
    home: PathBuf,
    path: String,
}

impl Scratch {
    fn new(repo: &Path) -> Scratch {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let home = root.join("home");
        for sub in ["home", "tmp", "cargo", "containers/tmp"] {
            std::fs::create_dir_all(root.join(sub)).unwrap();
        }
        std::fs::write(
            root.join("containers/storage.conf"),
            format!(
                "[storage]\ndriver = \"vfs\"\ngraphroot = \"{0}/containers/root\"\nrunroot = \"{0}/containers/run\"\n",
                root.display()
            ),
        )
        .unwrap();
        std::fs::write(
            root.join("containers/containers.conf"),
            format!("[engine]\ntmp_dir = \"{}/containers/tmp\"\n", root.display()),
        )
        .unwrap();
        let helm_dir = repo.join("target/tools/bin");
        assert!(helm_dir.join("helm").is_file(), "no helm in {}: run ./scripts/helm", helm_dir.display());
        // The installs come first: `keyless` must be the one a block installed, never another.
        let path = format!(
            "{}:{}:{}:{}",
            root.join("cargo/bin").display(),
            home.join(".local/bin").display(),
            helm_dir.display(),
            std::env::var("PATH").unwrap()
        );
        Scratch { _dir: dir, root, home, path }
    }

    /// `shell -c script` in `cwd` on the scratch machine, with `env` on top, killed with all it
    /// started after [`SCRIPT_LIMIT`] (coreutils' `timeout` signals its process group).
    fn run(&self, shell: &[&str], script: &str, cwd: &Path, env: &[(&str, String)]) -> Output {
        let real_home = PathBuf::from(std::env::var_os("HOME").unwrap());
        let cargo_home = std::env::var_os("CARGO_HOME").map(PathBuf::from).unwrap_or(real_home.join(".cargo"));
        let rustup_home = std::env::var_os("RUSTUP_HOME").map(PathBuf::from).unwrap_or(real_home.join(".rustup"));
        let mut command = Command::new("timeout");
        command
            .args(["--kill-after=10s", &format!("{}s", SCRIPT_LIMIT.as_secs())])
            .args(shell)
            .arg(script)
            .current_dir(cwd)
            .env_clear()
            .env("PATH", &self.path)
            .env("HOME", &self.home)
            .env("TMPDIR", self.root.join("tmp"))
            .env("CARGO_HOME", cargo_home)
            .env("RUSTUP_HOME", rustup_home)
            .env("CARGO_INSTALL_ROOT", self.root.join("cargo"))
            .env("CARGO_NET_OFFLINE", "true")
            .env("CONTAINERS_STORAGE_CONF", self.root.join("containers/storage.conf"))
            .env("CONTAINERS_CONF", self.root.join("containers/containers.conf"));
        for (key, value) in env {
            command.env(key, value);
        }
        let output = command.output().unwrap();
        // timeout's status when it had to end the script.
        assert!(
            !matches!(output.status.code(), Some(124 | 137)),
            "killed after {} s:\n{script}\nstdout:\n{}\nstderr:\n{}",
            SCRIPT_LIMIT.as_secs(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }
}

/// `path` as one shell word.
fn quoted(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', "'\\''"))
}

fn text(output: &Output) -> (String, String) {
    (String::from_utf8_lossy(&output.stdout).into_owned(), String::from_utf8_lossy(&output.stderr).into_owned())
}

#[test]
#[ignore = "needs a dist/ from ./scripts/release; .ci/run runs it after the release"]
fn the_readme_install_commands_work_on_the_release() {
    let repo = workspace_root();
    let dist = dist(&repo);
    let version = workspace_version(&repo).unwrap();
    let readme = std::fs::read_to_string(repo.join("README.md")).unwrap();
    let install = section(&readme, "Install").expect("the README has an Install section");
    let blocks = shell_blocks(install, line_of(&readme, install));
    let scratch = Scratch::new(&repo);

    let (mut ran, mut shown) = (0, Vec::new());
    for block in &blocks {
        if let Some(needs) = block.needs() {
            assert!(matches!(needs, "your registry" | "your cluster"), "README.md:{}: needs {needs:?}?", block.line);
            shown.push(block.line);
            continue;
        }
        // The README's commands run from a checkout with dist/ in it; dist/ may be elsewhere.
        let script = block
            .code
            .replace("dist/", &format!("{}/", quoted(&dist)))
            .replace("cd dist\n", &format!("cd {}\n", quoted(&dist)));
        // The release build's environment, so that `cargo install` finds that build fresh.
        let script = format!(". {}\n{script}", quoted(&repo.join("scripts/release-env")));
        eprintln!("== README.md:{}\n{}", block.line, block.code);
        let output = scratch.run(&["bash", "-e", "-o", "pipefail", "-c"], &script, &repo, &[]);
        let (stdout, stderr) = text(&output);
        assert!(
            output.status.success(),
            "README.md:{} failed:\n{}\nstdout:\n{stdout}\nstderr:\n{stderr}",
            block.line,
            block.code
        );
        // Each block shows the release's version: `keyless --version`, the image's label, the chart.
        assert!(stdout.contains(&version), "README.md:{} printed no {version}:\n{stdout}", block.line);
        if block.code.contains("keyless --version") {
            let expected = format!("keyless {version} (revision ");
            let features = if block.code.contains("--no-default-features") { SIDECAR_FEATURES } else { FULL_FEATURES };
            assert!(stdout.contains(&expected) && stdout.contains(features), "README.md:{}:\n{stdout}", block.line);
        }
        ran += 1;
    }
    // From a release, the two from source, the images, the chart; the push and the cluster install shown.
    assert!(ran >= 5, "only {ran} blocks ran");
    assert_eq!(shown.len(), 2, "blocks not run: {shown:?}");
    let installed = scratch.home.join(".local/bin/keyless");
    assert!(installed.is_file(), "the release's block installs {}", installed.display());
}

/// A CI example's install run on a scratch machine against `dist/`: `release` is what the example
/// sets `KEYLESS_RELEASE` to (the release's download URL, checked); `install` runs the example's
/// install with `KEYLESS_RELEASE` at `dist/` (a `file://` URL) and then, as the job's next
/// command would, `command -v keyless` and `keyless --version`, and returns that output. The
/// `keyless` the job then finds must be the release's full CLI, installed into `~/.local/bin`.
fn check_ci_install(example: &str, release: Option<&String>, install: impl FnOnce(&Scratch, (&str, String)) -> Output) {
    let repo = workspace_root();
    let dist = dist(&repo);
    let version = workspace_version(&repo).unwrap();
    assert_eq!(release, Some(&format!("{GITHUB_RELEASES}{version}")), "{example}: KEYLESS_RELEASE");
    let scratch = Scratch::new(&repo);
    let output = install(&scratch, ("KEYLESS_RELEASE", format!("file://{}", dist.display())));
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{example}'s install failed:\nstdout:\n{stdout}\nstderr:\n{stderr}");
    let installed = scratch.home.join(".local/bin/keyless").display().to_string();
    assert!(stdout.lines().any(|line| line == installed), "{example}: not the keyless on PATH:\n{stdout}");
    assert!(stdout.contains(&format!("keyless {version} (revision ")) && stdout.contains(FULL_FEATURES), "{stdout}");
}

#[test]
#[ignore = "needs a dist/ from ./scripts/release; .ci/run runs it after the release"]
fn the_github_actions_install_step_works_on_the_release() {
    let example = "examples/ci/github-actions.yml";
    let step =
        github_step(&std::fs::read_to_string(workspace_root().join(example)).unwrap(), "Install keyless").unwrap();
    check_ci_install(example, step.env.get("KEYLESS_RELEASE"), |scratch, release| {
        let runner_temp = scratch.root.join("runner-temp");
        std::fs::create_dir_all(&runner_temp).unwrap();
        let github_path = scratch.root.join("github-path");
        std::fs::write(&github_path, "").unwrap();
        let env = [
            release,
            ("RUNNER_TEMP", runner_temp.display().to_string()),
            ("GITHUB_PATH", github_path.display().to_string()),
        ];
        // GitHub's `run` shell on Linux: bash --noprofile --norc -eo pipefail.
        let shell = ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c"];
        let output = scratch.run(&shell, &step.run, &scratch.root, &env);
        if !output.status.success() {
            return output;
        }
        // The next step: GITHUB_PATH's lines come first on its PATH.
        let added: Vec<String> = std::fs::read_to_string(&github_path).unwrap().lines().map(str::to_owned).collect();
        assert!(!added.is_empty(), "the step puts nothing on GITHUB_PATH");
        let next = format!("export PATH=\"{}:$PATH\"; command -v keyless; keyless --version", added.join(":"));
        scratch.run(&shell, &next, &scratch.root, &[])
    });
}

#[test]
#[ignore = "needs a dist/ from ./scripts/release; .ci/run runs it after the release"]
fn the_gitlab_install_step_works_on_the_release() {
    let example = "examples/ci/gitlab-ci.yml";
    let job = gitlab_job(&std::fs::read_to_string(workspace_root().join(example)).unwrap(), "deploy").unwrap();
    check_ci_install(example, job.variables.get("KEYLESS_RELEASE"), |scratch, release| {
        // GitLab runs before_script and script in one shell: the PATH it sets holds for the script.
        let script = format!("{}\ncommand -v keyless\nkeyless --version\n", job.before_script.join("\n"));
        scratch.run(&["sh", "-e", "-c"], &script, &scratch.root, &[release])
    });
}
