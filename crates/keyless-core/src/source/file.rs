//! The file source: a token file as the kubelet keeps rewriting it, or as a person wrote it.
//!
//! The kubelet's AtomicWriter swaps a `..data` symlink to a new timestamped directory and deletes the
//! old one (docs/protocols.md section 1). A watch on the file itself follows the first inode and goes
//! silent after the first rotation, so we watch the *directory*, treat every event that can change
//! a file as "maybe changed", and re-read through the `token` path.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
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
            first_read_wait: None,
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

/// A subscription to the events of the token's directory, through the process's one watcher
/// ([`SharedWatcher`]), remembering which directory it watches so a removed-and-recreated
/// directory is noticed and watched anew.
#[derive(Debug)]
struct DirWatch {
    id: u64,
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
        let id = SharedWatcher::get().subscribe(dir, identity, Subscriber { tx, failed: failed.clone() })?;
        Ok(Self { id, dir: dir.to_owned(), identity, signals, failed })
    }

    fn is_current(&self) -> bool {
        !self.failed.load(Ordering::Relaxed) && dir_identity(&self.dir) == Some(self.identity)
    }
}

impl Drop for DirWatch {
    fn drop(&mut self) {
        SharedWatcher::get().unsubscribe(&self.dir, self.id);
    }
}

/// One subscriber of a directory's events.
#[derive(Debug)]
struct Subscriber {
    tx: watch::Sender<()>,
    failed: Arc<AtomicBool>,
}

impl Subscriber {
    fn signal(&self) {
        self.tx.send_replace(());
    }

    fn fail(&self) {
        self.failed.store(true, Ordering::Relaxed);
        self.tx.send_replace(());
    }
}

/// The watched directories: the directory's identity when it was watched, and its subscribers.
type Subscriptions = HashMap<PathBuf, ((u64, u64), Vec<(u64, Subscriber)>)>;

/// The process's one inotify (or platform) watcher, shared by every token directory. The kernel
/// allows few inotify instances per user (`fs.inotify.max_user_instances`, 128 by default) and
/// every keyless on a node runs as the same uid: one instance per token directory ran out at
/// about 40 three-cloud pods on a node (docs/fleet.md); one per process, at 128 pods.
///
/// Two locks: `watcher` serialises (un)subscribing and the watcher's calls; `subscriptions` is all
/// the event callback takes, never while a watcher call waits on notify's event thread (which
/// runs the callback), so the two cannot deadlock.
struct SharedWatcher {
    watcher: Mutex<Option<notify::RecommendedWatcher>>,
    subscriptions: Arc<Mutex<Subscriptions>>,
    /// Set by the callback on an error naming no path: the watcher is replaced by a new one.
    broken: Arc<AtomicBool>,
    next_id: AtomicU64,
}

impl SharedWatcher {
    fn get() -> &'static SharedWatcher {
        static SHARED: OnceLock<SharedWatcher> = OnceLock::new();
        SHARED.get_or_init(|| SharedWatcher {
            watcher: Mutex::new(None),
            subscriptions: Arc::default(),
            broken: Arc::default(),
            next_id: AtomicU64::new(0),
        })
    }

    /// Subscribes to `dir`'s events, watching it (anew, if it is another directory by now).
    fn subscribe(&self, dir: &Path, identity: (u64, u64), subscriber: Subscriber) -> notify::Result<u64> {
        let mut slot = lock(&self.watcher);
        if self.broken.swap(false, Ordering::Relaxed) {
            *slot = None;
        }
        let watcher = match &mut *slot {
            Some(watcher) => watcher,
            empty @ None => empty.insert(notify::recommended_watcher(dispatcher(
                Arc::clone(&self.subscriptions),
                Arc::clone(&self.broken),
            ))?),
        };
        let watched = lock(&self.subscriptions).get(dir).map(|(watched, _)| *watched);
        if watched != Some(identity) {
            if watched.is_some() {
                // Removed and recreated: the old watch is silent (or gone with its directory).
                let _ = watcher.unwatch(dir);
            }
            watcher.watch(dir, notify::RecursiveMode::NonRecursive)?;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut subscriptions = lock(&self.subscriptions);
        let entry = subscriptions.entry(dir.to_owned()).or_insert_with(|| (identity, Vec::new()));
        entry.0 = identity;
        entry.1.push((id, subscriber));
        Ok(id)
    }

    /// Ends subscription `id`; the directory's watch ends with its last subscriber.
    fn unsubscribe(&self, dir: &Path, id: u64) {
        let mut watcher = lock(&self.watcher);
        let last = {
            let mut subscriptions = lock(&self.subscriptions);
            let Some((_, subscribers)) = subscriptions.get_mut(dir) else { return };
            subscribers.retain(|(other, _)| *other != id);
            let last = subscribers.is_empty();
            if last {
                subscriptions.remove(dir);
            }
            last
        };
        if let (true, Some(watcher)) = (last, watcher.as_mut()) {
            // Fails when the directory (and so its watch) is gone already: nothing left to end.
            let _ = watcher.unwatch(dir);
        }
    }
}

/// The watcher's event handler: an event that may change a file signals the subscribers of its
/// directory (an event on the directory itself, its own). An error fails the subscribers of the
/// paths it names and forgets those directories, so each subscriber watches anew; an error naming
/// no path fails every subscriber and marks the watcher broken, to be replaced.
fn dispatcher(subscriptions: Arc<Mutex<Subscriptions>>, broken: Arc<AtomicBool>) -> impl notify::EventHandler {
    move |res: notify::Result<notify::Event>| {
        let mut subscriptions = lock(&subscriptions);
        match res {
            Ok(event) if !may_change_content(&event.kind) => {}
            Ok(event) if event.paths.is_empty() => {
                subscriptions.values().flat_map(|(_, s)| s).for_each(|(_, s)| s.signal());
            }
            Ok(event) => {
                for dir in dirs_of(&event.paths) {
                    if let Some((_, subscribers)) = subscriptions.get(dir) {
                        subscribers.iter().for_each(|(_, s)| s.signal());
                    }
                }
            }
            Err(e) if e.paths.is_empty() => {
                broken.store(true, Ordering::Relaxed);
                subscriptions.drain().flat_map(|(_, (_, s))| s).for_each(|(_, s)| s.fail());
            }
            Err(e) => {
                for dir in dirs_of(&e.paths) {
                    if let Some((_, subscribers)) = subscriptions.remove(dir) {
                        subscribers.iter().for_each(|(_, s)| s.fail());
                    }
                }
            }
        }
    }
}

/// The directories an event on `paths` concerns: each path's own (an event on a watched
/// directory itself) and its parent's (an event on a file in one).
fn dirs_of(paths: &[PathBuf]) -> impl Iterator<Item = &Path> {
    paths.iter().flat_map(|p| [Some(p.as_path()), p.parent()]).flatten()
}

/// A lock whose holder panicked still guards consistent data here (every update is one insert or
/// removal), so poisoning is ignored rather than spread.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
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
