//! Files keyless creates (the security rules, docs/reliability.md: "created exclusively with its final mode, then renamed
//! into place").
//!
//! A fixed temporary name (`app.tmp`) opened with create+truncate follows a symlink planted there
//! and keeps an existing file's mode: another local user could have keyless write its secrets into
//! a file of their choosing, readable by them. A fresh name created exclusively (`O_EXCL`, which
//! never follows a symlink) with its final mode cannot be planted, and the rename replaces
//! whatever was at the destination (a symlink included) instead of writing through it.

use std::io::{self, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

/// Writes `contents` to `path` through a fresh temporary file in the same directory, created
/// exclusively with `mode` (before any byte is written), synced, then renamed over `path`.
/// Readers see the old file or the new one, never a partial one; the directory must exist.
pub fn write_atomically(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let name =
        path.file_name().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the path does not name a file"))?;
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut prefix = std::ffi::OsString::from(".");
    prefix.push(name);
    prefix.push(".");
    let mut file =
        tempfile::Builder::new().prefix(&prefix).permissions(std::fs::Permissions::from_mode(mode)).tempfile_in(dir)?;
    file.write_all(contents)?;
    file.as_file().sync_all()?;
    file.persist(path).map_err(|e| e.error)?;
    // The rename itself survives a crash once the directory is synced.
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::symlink_metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn a_planted_symlink_is_replaced_not_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let (victim, path) = (dir.path().join("victim"), dir.path().join("app.env"));
        std::fs::write(&victim, "untouched").unwrap();
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        write_atomically(&path, b"SECRET=1\n", 0o600).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched");
        assert!(std::fs::symlink_metadata(&path).unwrap().file_type().is_file());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "SECRET=1\n");
    }

    #[test]
    fn an_existing_file_gets_the_new_mode_and_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.env");
        std::fs::write(&path, "OLD=1\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_atomically(&path, b"NEW=1\n", 0o600).unwrap();
        assert_eq!(mode(&path), 0o600);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "NEW=1\n");
    }

    #[test]
    fn nothing_is_left_beside_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca-bundle.pem");
        write_atomically(&path, b"pem", 0o644).unwrap();
        write_atomically(&path, b"pem again", 0o644).unwrap();
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["ca-bundle.pem"]);
    }

    #[test]
    fn a_missing_directory_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        assert!(write_atomically(&dir.path().join("missing/app.env"), b"x", 0o600).is_err());
        assert!(write_atomically(Path::new("/"), b"x", 0o600).is_err());
    }
}
