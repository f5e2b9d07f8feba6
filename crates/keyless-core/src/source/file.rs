//! The file source: a token file as the kubelet keeps rewriting it, or as a person wrote it.
//!
//! The kubelet's AtomicWriter swaps a `..data` symlink to a new timestamped directory and deletes the
//! old one (docs/protocols.md section 1). A watch on the file itself follows the first inode and goes
//! silent after the first rotation, so we watch the *directory*, treat every event that can change
//! a file as "maybe changed", and re-read through the `token` path.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, Watcher as _};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::{ChangeFeed, Schedule, SourceId, TokenOrigin, WatchOptions};
use crate::regular_file::{RegularFileError, read_regular_file};
use crate::token::{MAX_SUBJECT_TOKEN_BYTES, SubjectToken, TokenError};

/// A read of a local file that takes longer than this is stuck (a hung network filesystem).
const FILE_READ_TIMEOUT: Duration = Duration::from_secs(10);

type FileRead = JoinHandle<Result<Vec<u8>, RegularFileError>>;

/// A subject token in a file: only a regular file (or a symlink to one), at most
/// [`MAX_SUBJECT_TOKEN_BYTES`], read without ever blocking on a FIFO or device.
#[derive(Debug)]
pub struct FileOrigin {
    id: SourceId,
    path: PathBuf,
    schedule: Schedule,
    /// A read still running on the blocking pool after the driver stopped waiting: the next read
    /// waits for it instead of starting another thread.
    in_flight: Option<FileRead>,
}

impl FileOrigin {
    pub fn new(path: PathBuf, options: &WatchOptions) -> Self {
        let schedule = Schedule {
            debounce: options.debounce,
            poll: options.poll_interval,
            before_exp: options.reread_before_exp,
            near_exp: options.near_exp_interval,
            // A fixed file announces itself through directory events; polling is the backstop.
            after_failure: options.poll_interval,
            read_timeout: FILE_READ_TIMEOUT,
        };
        Self { id: SourceId::file(&path), path, schedule, in_flight: None }
    }
}

impl TokenOrigin for FileOrigin {
    type Changes = DirChanges;

    fn id(&self) -> &SourceId {
        &self.id
    }

    fn schedule(&self) -> Schedule {
        self.schedule.clone()
    }

    fn changes(&mut self) -> DirChanges {
        let dir = match self.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        DirChanges::new(dir)
    }

    async fn read(&mut self) -> Result<SubjectToken, TokenError> {
        let read = self.in_flight.get_or_insert_with(|| {
            let path = self.path.clone();
            tokio::task::spawn_blocking(move || read_regular_file(&path, MAX_SUBJECT_TOKEN_BYTES))
        });
        let outcome = read.await;
        self.in_flight = None;
        match outcome {
            Ok(Ok(bytes)) => SubjectToken::parse(&String::from_utf8_lossy(&bytes))
                .map_err(|shape| TokenError::Malformed { path: self.path.clone(), shape }),
            Ok(Err(e)) => Err(TokenError::from_file_read(self.path.clone(), e)),
            Err(e) => Err(TokenError::Unreadable { path: self.path.clone(), reason: e.to_string() }),
        }
    }
}

/// Whether a directory event can mean a file in it changed. keyless's own reads open the file
/// (`IN_OPEN`); with a plain token file (not the kubelet's `..data` layout, whose reads happen in an
/// unwatched subdirectory) that event lands in the watched directory, and counting it made every
/// read schedule the next: about 7 reads a second, forever. Counted: create, modify (content,
/// attributes: a chmod can fix EACCES; renames), close-after-write, remove, and anything notify
/// cannot classify (including its "rescan": the kernel's event queue overflowed).
fn may_change_content(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        EventKind::Any | EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_) | EventKind::Other => true,
    }
}

/// Directory events of the token's directory, coalesced. Recreates the watch when the directory
/// was removed and recreated (the old watch is then silent), or when the watch reported an error.
#[derive(Debug)]
pub struct DirChanges {
    dir: PathBuf,
    watch: Option<DirWatch>,
    failure_reported: bool,
}

impl DirChanges {
    fn new(dir: PathBuf) -> Self {
        let mut changes = Self { dir, watch: None, failure_reported: false };
        changes.rewatch();
        changes
    }

    /// Watches the directory anew; `true` if that worked.
    fn rewatch(&mut self) -> bool {
        match DirWatch::new(&self.dir) {
            Ok(w) => {
                if self.failure_reported {
                    info!(dir = %self.dir.display(), "watching the token directory again");
                }
                self.failure_reported = false;
                self.watch = Some(w);
                true
            }
            Err(e) => {
                if !self.failure_reported {
                    warn!(dir = %self.dir.display(), error = %e, "cannot watch the token directory; polling");
                    self.failure_reported = true;
                }
                self.watch = None;
                false
            }
        }
    }
}

impl ChangeFeed for DirChanges {
    async fn changed(&mut self) {
        let current = self.watch.as_mut().filter(|w| w.is_current());
        let Some(watch) = current else {
            if self.rewatch() {
                // The directory may be new: what it holds now was never read.
                return;
            }
            // Polling only; the driver calls again (and so retries the watch) after each read.
            return std::future::pending().await;
        };
        if watch.signals.changed().await.is_err() || watch.failed.load(Ordering::Relaxed) {
            debug!(dir = %self.dir.display(), "directory watch reported an error; recreating it");
            self.watch = None;
        }
    }
}

/// The inotify (or platform) watch on the token's directory, remembering which directory it
/// watches so a removed-and-recreated directory is noticed and watched anew.
#[derive(Debug)]
struct DirWatch {
    _watcher: notify::RecommendedWatcher,
    dir: PathBuf,
    identity: (u64, u64),
    /// Marked changed on every event that may change the token: a burst coalesces into one.
    signals: watch::Receiver<()>,
    failed: Arc<AtomicBool>,
}

fn dir_identity(dir: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(dir).ok().map(|m| (m.dev(), m.ino()))
}

impl DirWatch {
    fn new(dir: &Path) -> notify::Result<Self> {
        let identity = dir_identity(dir).ok_or_else(|| notify::Error::path_not_found().add_path(dir.to_owned()))?;
        let (tx, signals) = watch::channel(());
        let failed = Arc::new(AtomicBool::new(false));
        let failed_in_callback = failed.clone();
        let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
            Ok(event) if !may_change_content(&event.kind) => {}
            Ok(_) => tx.send_replace(()),
            Err(_) => {
                failed_in_callback.store(true, Ordering::Relaxed);
                tx.send_replace(());
            }
        })?;
        watcher.watch(dir, notify::RecursiveMode::NonRecursive)?;
        Ok(Self { _watcher: watcher, dir: dir.to_owned(), identity, signals, failed })
    }

    fn is_current(&self) -> bool {
        !self.failed.load(Ordering::Relaxed) && dir_identity(&self.dir) == Some(self.identity)
    }
}

#[cfg(test)]
mod tests {
    use notify::event::{CreateKind, DataChange, MetadataKind, ModifyKind, RemoveKind, RenameMode};

    use super::*;

    #[test]
    fn only_events_that_can_change_a_file_count() {
        let counted = [
            EventKind::Create(CreateKind::File),
            EventKind::Modify(ModifyKind::Data(DataChange::Any)),
            EventKind::Modify(ModifyKind::Metadata(MetadataKind::Any)),
            EventKind::Modify(ModifyKind::Name(RenameMode::To)),
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
            EventKind::Remove(RemoveKind::File),
            EventKind::Other,
        ];
        for kind in counted {
            assert!(may_change_content(&kind), "{kind:?} must count");
        }
        let ignored = [
            EventKind::Access(AccessKind::Open(AccessMode::Any)),
            EventKind::Access(AccessKind::Read),
            EventKind::Access(AccessKind::Close(AccessMode::Read)),
        ];
        for kind in ignored {
            assert!(!may_change_content(&kind), "{kind:?} must not count");
        }
    }
}
