//! Reading a small file that someone else controls (a subject token, an authorization value).
//!
//! `std::fs::read` trusts the path: a FIFO blocks the open (and then the runtime's shutdown, which
//! waits for blocking threads), `/dev/zero` never ends, a 100 MB file is read whole. Here the final
//! target (symlinks are followed: the kubelet's `token` is one) must be a regular file, the open
//! never blocks, and at most `limit` bytes are read.

use std::fs::{File, FileType, OpenOptions};
use std::io::Read as _;
use std::os::unix::fs::{FileTypeExt as _, OpenOptionsExt as _};
use std::path::Path;

/// Why [`read_regular_file`] read nothing. The messages complete "FILE ..." and never contain the
/// file's content.
#[derive(Debug, thiserror::Error)]
pub enum RegularFileError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("is {kind}, not a regular file")]
    NotRegular { kind: &'static str },
    #[error("is larger than {limit} bytes")]
    TooLarge { limit: u64 },
}

/// The whole content of the regular file at `path` (after symlinks), if it is at most `limit`
/// bytes long. Never blocks on a FIFO or device, never reads more than `limit + 1` bytes.
pub fn read_regular_file(path: &Path, limit: u64) -> Result<Vec<u8>, RegularFileError> {
    // stat first so a device is never even opened (opening some has side effects); fstat after the
    // open because the path may have been swapped in between.
    ensure_regular(std::fs::metadata(path)?.file_type())?;
    let file = OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY).open(path)?;
    let metadata = file.metadata()?;
    ensure_regular(metadata.file_type())?;
    if metadata.len() > limit {
        return Err(RegularFileError::TooLarge { limit });
    }
    read_at_most(file, metadata.len(), limit)
}

fn read_at_most(file: File, expected: u64, limit: u64) -> Result<Vec<u8>, RegularFileError> {
    // The size is a hint: the file may grow while being read, and procfs files report 0.
    let mut bytes = Vec::with_capacity(usize::try_from(expected).unwrap_or(0));
    file.take(limit.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(RegularFileError::TooLarge { limit });
    }
    Ok(bytes)
}

fn ensure_regular(file_type: FileType) -> Result<(), RegularFileError> {
    let kind = if file_type.is_file() {
        return Ok(());
    } else if file_type.is_fifo() {
        "a FIFO (named pipe)"
    } else if file_type.is_char_device() {
        "a character device"
    } else if file_type.is_block_device() {
        "a block device"
    } else if file_type.is_socket() {
        "a socket"
    } else if file_type.is_dir() {
        "a directory"
    } else {
        "a special file"
    };
    Err(RegularFileError::NotRegular { kind })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn fifo(dir: &Path) -> std::path::PathBuf {
        let path = dir.join("fifo");
        let made = std::process::Command::new("mkfifo").arg(&path).status().unwrap();
        assert!(made.success(), "mkfifo failed");
        path
    }

    #[test]
    fn reads_a_regular_file_and_through_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("real"), "content").unwrap();
        std::os::unix::fs::symlink("real", dir.path().join("link")).unwrap();
        assert_eq!(read_regular_file(&dir.path().join("real"), 64).unwrap(), b"content");
        assert_eq!(read_regular_file(&dir.path().join("link"), 64).unwrap(), b"content");
    }

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        // Without a writer, opening a FIFO for reading blocks forever; the test would hang.
        let dir = tempfile::tempdir().unwrap();
        let err = read_regular_file(&fifo(dir.path()), 64).unwrap_err();
        assert_eq!(err.to_string(), "is a FIFO (named pipe), not a regular file");
    }

    #[test]
    fn a_symlink_to_a_device_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("zero");
        std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
        let err = read_regular_file(&link, 64).unwrap_err();
        assert!(matches!(err, RegularFileError::NotRegular { kind: "a character device" }), "{err}");
    }

    #[test]
    fn a_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = read_regular_file(dir.path(), 64).unwrap_err();
        assert!(matches!(err, RegularFileError::NotRegular { kind: "a directory" }), "{err}");
    }

    #[test]
    fn a_file_over_the_limit_is_refused_and_one_at_the_limit_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big");
        // Sparse: a gigabyte on paper, nothing on disk; nothing of it may be read.
        std::fs::File::create(&path).unwrap().set_len(1 << 30).unwrap();
        assert!(matches!(read_regular_file(&path, 64), Err(RegularFileError::TooLarge { limit: 64 })));
        std::fs::write(&path, [b'x'; 64]).unwrap();
        assert_eq!(read_regular_file(&path, 64).unwrap().len(), 64);
        std::fs::write(&path, [b'x'; 65]).unwrap();
        assert!(matches!(read_regular_file(&path, 64), Err(RegularFileError::TooLarge { limit: 64 })));
    }

    #[test]
    fn a_file_reporting_no_size_is_still_bounded() {
        // procfs reports size 0 whatever the content: only the read itself can enforce the limit.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("grows");
        std::fs::write(&path, [b'x'; 100]).unwrap();
        let err = read_at_most(File::open(&path).unwrap(), 0, 10).unwrap_err();
        assert!(matches!(err, RegularFileError::TooLarge { limit: 10 }));
    }

    #[test]
    fn a_missing_file_is_an_io_error_with_its_kind() {
        let dir = tempfile::tempdir().unwrap();
        let err = read_regular_file(&dir.path().join("absent"), 64).unwrap_err();
        assert!(matches!(err, RegularFileError::Io(e) if e.kind() == std::io::ErrorKind::NotFound));
    }
}
