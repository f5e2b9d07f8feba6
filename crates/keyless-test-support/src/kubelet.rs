//! Token files as the kubelet writes them, and as they go wrong: its AtomicWriter's rotation, a
//! file edited in place, another file renamed over the token, a FIFO.

use std::path::{Path, PathBuf};

/// Writes `payload` as `dir/token` exactly as the kubelet's AtomicWriter does
/// (docs/protocols.md section 1): timestamped dir, payload, `token -> ..data/token` if missing,
/// `..data_tmp -> timestamped dir`, rename over `..data`, remove the old timestamped dir.
pub fn atomic_write(dir: &Path, payload: &str, generation: u64) {
    use std::os::unix::fs::symlink;
    let ts = format!("..2026_11_22_13_41_07.{generation:09}");
    let ts_dir = dir.join(&ts);
    std::fs::create_dir(&ts_dir).expect("the timestamped dir");
    std::fs::write(ts_dir.join("token"), payload).expect("the payload");
    let user_visible = dir.join("token");
    if std::fs::symlink_metadata(&user_visible).is_err() {
        symlink("..data/token", &user_visible).expect("the user-visible symlink");
    }
    let old = std::fs::read_link(dir.join("..data")).ok();
    symlink(&ts, dir.join("..data_tmp")).expect("..data_tmp");
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).expect("the rename over ..data");
    if let Some(old) = old {
        std::fs::remove_dir_all(dir.join(old)).expect("removing the old timestamped dir");
    }
}

/// Overwrites what `dir/token` resolves to, in place (a broken or hand-edited file).
pub fn overwrite(dir: &Path, content: &str) {
    std::fs::write(dir.join("token"), content).expect("overwriting the token");
}

/// A token directory inside a scratch directory, so that [`replace_with`] can stage beside it.
pub fn token_dir() -> (tempfile::TempDir, PathBuf) {
    let root = tempfile::tempdir().expect("a temporary directory");
    let dir = root.path().join("tokens");
    std::fs::create_dir(&dir).expect("the token directory");
    (root, dir)
}

/// Puts what `make` creates at `target` with one rename, so a watched directory sees one event.
/// It is staged in a sibling directory of `target`'s directory, on the same filesystem.
pub fn replace_with(target: &Path, make: impl FnOnce(&Path)) {
    let beside = target.parent().and_then(Path::parent).expect("the token's directory has a parent");
    let staging = tempfile::tempdir_in(beside).expect("a staging directory");
    let staged = staging.path().join("staged");
    make(&staged);
    std::fs::rename(&staged, target).expect("the rename over the token");
}

/// Creates a FIFO (named pipe) at `path`: opening it for reading blocks until someone writes.
pub fn mkfifo(path: &Path) {
    let made = std::process::Command::new("mkfifo").arg(path).status().expect("running mkfifo");
    assert!(made.success(), "mkfifo {} failed", path.display());
}
