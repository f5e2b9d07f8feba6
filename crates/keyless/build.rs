//! Tells `keyless --version` what it was built from: the source revision and the compiled features.
//! The one place the revision is determined: `keyless_build_info{revision}` is the same value
//! (main.rs's `BUILD`, handed to keyless-core's metrics).
//!
//! The revision is `KEYLESS_REVISION` when the build sets it (scripts/release does, so a build from
//! an exported tree without `.git` still names its commit), else the commit of the git checkout
//! this crate sits in, else `unknown` (a source tarball, a Docker build context without `.git`).
//! Only the commit is read, never the working tree's state: a build script that ran `git status`
//! would have to rerun on every edit.
#![forbid(unsafe_code)]
#![allow(clippy::print_stdout)] // a build script talks to cargo on stdout

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo::rerun-if-env-changed=KEYLESS_REVISION");
    let revision = match std::env::var("KEYLESS_REVISION") {
        Ok(set) if !set.trim().is_empty() => set.trim().to_owned(),
        _ => git_revision().unwrap_or_else(|| "unknown".to_owned()),
    };
    // It becomes a Prometheus label value and a line of `--version`: a commit, maybe `-dirty`.
    assert!(
        revision.len() <= 80 && revision.chars().all(|c| c.is_ascii_alphanumeric() || "._+-".contains(c)),
        "KEYLESS_REVISION={revision:?}: a revision is letters, digits and . _ + - (a commit id), at most 80"
    );
    println!("cargo::rustc-env=KEYLESS_REVISION={revision}");

    // Cargo sets CARGO_FEATURE_<NAME> for each enabled feature of this crate.
    let mut features: Vec<String> = std::env::vars()
        .filter_map(|(key, _)| key.strip_prefix("CARGO_FEATURE_").map(|f| f.to_lowercase().replace('_', "-")))
        .filter(|f| f != "default")
        .collect();
    features.sort();
    let features = if features.is_empty() { "none".to_owned() } else { features.join(", ") };
    println!("cargo::rustc-env=KEYLESS_FEATURES={features}");
}

/// The commit checked out in the git work tree this crate belongs to, if git is installed and the
/// workspace is that work tree's top level (not a vendored copy inside someone else's repository).
fn git_revision() -> Option<String> {
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR")?);
    let workspace = manifest_dir.parent()?.parent()?.to_path_buf();
    let top_level = git(&workspace, &["rev-parse", "--show-toplevel"])?;
    if Path::new(&top_level).canonicalize().ok()? != workspace.canonicalize().ok()? {
        return None;
    }
    // Rerun when HEAD moves: HEAD itself (a checkout), the branch it points to (a commit),
    // packed-refs (where a branch lives after `git gc`) and HEAD's reflog, which every commit and
    // checkout appends to (the one file that sees a commit on a packed branch: the loose ref it
    // writes did not exist to be watched). In a worktree these are in different directories, which
    // `--git-path` resolves. Nothing else: a build after any other change to the repository does
    // not run this script, and so does not rebuild keyless.
    for path in ["HEAD", "packed-refs", "logs/HEAD"] {
        rerun_if_changed(&workspace, path);
    }
    if let Some(branch) = git(&workspace, &["symbolic-ref", "-q", "HEAD"]) {
        rerun_if_changed(&workspace, &branch);
    }
    let commit = git(&workspace, &["rev-parse", "HEAD"])?;
    commit.chars().all(|c| c.is_ascii_hexdigit()).then_some(commit)
}

fn rerun_if_changed(workspace: &Path, git_path: &str) {
    if let Some(path) = git(workspace, &["rev-parse", "--git-path", git_path]) {
        let path = workspace.join(path);
        if path.exists() {
            println!("cargo::rerun-if-changed={}", path.display());
        }
    }
}

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git").arg("-C").arg(dir).args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}
