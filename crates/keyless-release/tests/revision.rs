//! The revision `keyless --version` and `keyless_build_info` report is determined by
//! crates/keyless/build.rs alone. Here that build script, copied into a scratch git checkout of a
//! one-file crate, is built by cargo as keyless is: the binary must name the commit checked out
//! after each commit and checkout (the revision is never stale), and a build with nothing changed
//! must not compile it again (the build script does not force a rebuild of keyless).
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Command;

use keyless_release::workspace_root;

struct Checkout {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl Checkout {
    fn new() -> Checkout {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let krate = root.join("crates/keyless");
        std::fs::create_dir_all(krate.join("src")).unwrap();
        std::fs::write(root.join("Cargo.toml"), "[workspace]\nmembers = [\"crates/keyless\"]\nresolver = \"3\"\n")
            .unwrap();
        std::fs::write(root.join(".gitignore"), "/target\n").unwrap();
        std::fs::write(
            krate.join("Cargo.toml"),
            "[package]\nname = \"probe\"\nversion = \"0.0.0\"\nedition = \"2024\"\npublish = false\n",
        )
        .unwrap();
        std::fs::copy(workspace_root().join("crates/keyless/build.rs"), krate.join("build.rs")).unwrap();
        std::fs::write(
            krate.join("src/main.rs"),
            "fn main() {\n    println!(\"{}\", env!(\"KEYLESS_REVISION\"));\n}\n",
        )
        .unwrap();
        let checkout = Checkout { _dir: dir, root };
        checkout.git(&["init", "--quiet", "--initial-branch=main"]);
        checkout.git(&["add", "."]);
        checkout.commit();
        checkout
    }

    /// `git ARGS` in the checkout, its trimmed stdout.
    fn git(&self, args: &[&str]) -> String {
        let output = Command::new("git")
            .arg("-C")
            .arg(&self.root)
            .args(["-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "commit.gpgsign=false"])
            .args(args)
            .env_remove("GIT_DIR")
            .env_remove("GIT_WORK_TREE")
            .output()
            .unwrap_or_else(|e| panic!("git (the build script's source of the revision) must be installed: {e}"));
        assert!(output.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap().trim().to_owned()
    }

    /// A new commit; its id.
    fn commit(&self) -> String {
        self.git(&["commit", "--quiet", "--allow-empty", "-m", "c"]);
        self.git(&["rev-parse", "HEAD"])
    }

    /// `cargo build`, then the binary's output: (what it says, whether cargo compiled it).
    fn build(&self) -> (String, bool) {
        let output = Command::new(env!("CARGO"))
            .args(["build", "--offline", "--manifest-path"])
            .arg(self.root.join("Cargo.toml"))
            .env("CARGO_TARGET_DIR", self.root.join("target"))
            .env("CARGO_TERM_COLOR", "never")
            .env_remove("KEYLESS_REVISION")
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_BUILD_TARGET")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(output.status.success(), "{stderr}");
        let printed = Command::new(self.root.join("target/debug/probe")).output().unwrap();
        let revision = String::from_utf8(printed.stdout).unwrap().trim().to_owned();
        (revision, stderr.contains("Compiling probe"))
    }
}

#[test]
fn the_revision_follows_each_commit_and_checkout_and_nothing_else_rebuilds() {
    let checkout = Checkout::new();
    let first = checkout.git(&["rev-parse", "HEAD"]);
    assert_eq!(checkout.build(), (first.clone(), true));
    assert_eq!(checkout.build(), (first.clone(), false), "rebuilt with nothing changed");

    let second = checkout.commit();
    assert_eq!(checkout.build().0, second, "a commit");
    assert_eq!(checkout.build(), (second.clone(), false), "rebuilt with nothing changed");

    // After `git gc` packs the branch, the next commit writes its loose ref anew.
    checkout.git(&["pack-refs", "--all"]);
    assert!(!checkout.root.join(".git/refs/heads/main").exists(), "the branch is packed");
    assert_eq!(checkout.build().0, second);
    let third = checkout.commit();
    assert_eq!(checkout.build().0, third, "a commit after the branch was packed");

    checkout.git(&["checkout", "--quiet", "--detach", &first]);
    assert_eq!(checkout.build().0, first, "a checkout");
    let detached = checkout.commit();
    assert_eq!(checkout.build().0, detached, "a commit on a detached HEAD");
    assert_eq!(checkout.build(), (detached, false), "rebuilt with nothing changed");
}
