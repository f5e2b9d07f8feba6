//! `TokenSource`: the subject token as the kubelet keeps rewriting it.
//!
//! The kubelet's AtomicWriter swaps a `..data` symlink to a new timestamped directory and deletes the
//! old one (protocols.md section 1). A watch on the file itself follows the first inode and goes
//! silent after the first rotation, so we watch the *directory*, treat every event as "maybe
//! changed", re-read through the `token` path, and also re-read on a timer and near `exp`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use notify::Watcher as _;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::clock::{SharedClock, instant_at};
use crate::metrics::Metrics;
use crate::task::AbortOnDrop;
use crate::token::{SubjectToken, TokenError};

/// Timing of the watcher. The defaults follow protocols.md section 1.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// Quiet time after a directory event before reading (the AtomicWriter emits a burst).
    pub debounce: Duration,
    /// Re-read this often even without events (client-go re-reads every minute).
    pub poll_interval: Duration,
    /// Start re-reading this long before the held token's `exp`.
    pub reread_before_exp: Duration,
    /// Re-read cadence once the held token is within `reread_before_exp` of its `exp`.
    pub near_exp_interval: Duration,
}

impl Default for WatchOptions {
    fn default() -> Self {
        Self {
            debounce: Duration::from_millis(150),
            poll_interval: Duration::from_secs(45),
            reread_before_exp: Duration::from_secs(120),
            near_exp_interval: Duration::from_secs(5),
        }
    }
}

type Held = Option<Arc<SubjectToken>>;

#[derive(Debug)]
struct State {
    token: watch::Sender<Held>,
    last_error: Mutex<Option<TokenError>>,
}

impl State {
    fn last_error(&self) -> Option<TokenError> {
        self.last_error.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn set_error(&self, e: Option<TokenError>) {
        *self.last_error.lock().unwrap_or_else(PoisonError::into_inner) = e;
    }
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    state: Arc<State>,
    rereads: Option<mpsc::Sender<oneshot::Sender<()>>>,
    _task: Option<AbortOnDrop>,
}

/// The newest good subject token from one file, shared by every exchange that uses that file.
/// Clones share one watcher; the watcher stops when the last clone is dropped.
#[derive(Debug, Clone)]
pub struct TokenSource {
    inner: Arc<Inner>,
}

impl TokenSource {
    /// Reads `path` once and starts watching it. Never fails: if the first read fails, the error is
    /// kept (see [`TokenSource::current`]) and the watcher keeps trying.
    pub async fn open(path: impl Into<PathBuf>, options: WatchOptions, clock: SharedClock, metrics: Metrics) -> Self {
        let path = path.into();
        let state = Arc::new(State { token: watch::channel(None).0, last_error: Mutex::new(None) });
        let mut reader = Reader { path: path.clone(), state: state.clone(), metrics, reported: None };
        reader.read().await;
        let (tx, rx) = mpsc::channel(16);
        let task = tokio::spawn(run(reader, options, clock, rx));
        Self { inner: Arc::new(Inner { path, state, rereads: Some(tx), _task: Some(AbortOnDrop::new(task)) }) }
    }

    /// A source whose token is set by the caller ([`TokenSource::set`]) instead of read from a
    /// file (tests, and tokens passed in by value).
    pub fn fixed(token: SubjectToken) -> Self {
        let state = Arc::new(State { token: watch::channel(Some(Arc::new(token))).0, last_error: Mutex::new(None) });
        Self { inner: Arc::new(Inner { path: PathBuf::new(), state, rereads: None, _task: None }) }
    }

    /// Replaces the held token as if the file had been rotated.
    pub fn set(&self, token: SubjectToken) {
        self.inner.state.token.send_if_modified(|held| {
            let changed = held.as_deref() != Some(&token);
            *held = Some(Arc::new(token));
            changed
        });
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The last good token; if there never was one, why not.
    pub fn current(&self) -> Result<Arc<SubjectToken>, TokenError> {
        if let Some(token) = self.inner.state.token.borrow().clone() {
            return Ok(token);
        }
        Err(self.inner.state.last_error().unwrap_or_else(|| TokenError::Missing { path: self.inner.path.clone() }))
    }

    /// The error of the most recent read, if it failed (the last good token may still be held).
    pub fn last_error(&self) -> Option<TokenError> {
        self.inner.state.last_error()
    }

    /// Notified whenever a different good token is read.
    pub fn subscribe(&self) -> watch::Receiver<Held> {
        self.inner.state.token.subscribe()
    }

    /// Reads the file now (e.g. after a cloud said the token is invalid or expired) and returns the
    /// token then held.
    pub async fn reread(&self) -> Result<Arc<SubjectToken>, TokenError> {
        if let Some(tx) = &self.inner.rereads {
            let (done_tx, done_rx) = oneshot::channel();
            if tx.send(done_tx).await.is_ok() {
                let _ = done_rx.await;
            }
        }
        self.current()
    }
}

/// Reads the file and publishes changes; remembers which error it last reported so a broken file
/// is logged once, not on every poll.
struct Reader {
    path: PathBuf,
    state: Arc<State>,
    metrics: Metrics,
    reported: Option<TokenError>,
}

impl Reader {
    async fn read(&mut self) {
        let result = match tokio::fs::read(&self.path).await {
            Ok(bytes) => SubjectToken::parse(&String::from_utf8_lossy(&bytes))
                .map_err(|shape| TokenError::Malformed { path: self.path.clone(), shape }),
            Err(e) => Err(TokenError::from_io(self.path.clone(), &e)),
        };
        match result {
            Ok(token) => {
                if self.reported.take().is_some() {
                    info!(path = %self.path.display(), "subject token file is readable again");
                }
                self.state.set_error(None);
                let changed = self.state.token.send_if_modified(|held| {
                    if held.as_deref() == Some(&token) {
                        return false;
                    }
                    *held = Some(Arc::new(token.clone()));
                    true
                });
                if changed {
                    let claims = token.claims();
                    info!(path = %self.path.display(), %claims, "subject token loaded");
                    if let Some(exp) = claims.exp {
                        self.metrics.set_subject_token_expiry(&self.path.to_string_lossy(), exp);
                    }
                }
            }
            Err(e) => {
                if self.reported.as_ref() != Some(&e) {
                    let holding = self.state.token.borrow().is_some();
                    warn!(error = %e, keeping_last_good_token = holding, "subject token file unusable");
                    self.reported = Some(e.clone());
                }
                self.state.set_error(Some(e));
            }
        }
    }

    fn next_poll(&self, options: &WatchOptions, clock: &SharedClock) -> Instant {
        let regular = Instant::now() + options.poll_interval;
        let exp = self.state.token.borrow().as_ref().and_then(|t| t.claims().exp);
        let Some(exp) = exp else { return regular };
        let near = instant_at(clock.as_ref(), exp.checked_sub(options.reread_before_exp).unwrap_or(exp));
        if near > Instant::now() { regular.min(near) } else { regular.min(Instant::now() + options.near_exp_interval) }
    }
}

/// The inotify (or platform) watch on the token's directory, remembering which directory it
/// watches so a removed-and-recreated directory is noticed and watched anew.
struct DirWatch {
    _watcher: notify::RecommendedWatcher,
    dir: PathBuf,
    identity: Option<(u64, u64)>,
}

fn dir_identity(dir: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(dir).ok().map(|m| (m.dev(), m.ino()))
}

impl DirWatch {
    fn new(dir: &Path, events: mpsc::UnboundedSender<bool>) -> notify::Result<Self> {
        let identity = dir_identity(dir);
        let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            // `true` = the watch itself failed and must be recreated.
            let _ = events.send(res.is_err());
        })?;
        watcher.watch(dir, notify::RecursiveMode::NonRecursive)?;
        Ok(Self { _watcher: watcher, dir: dir.to_owned(), identity })
    }

    fn is_current(&self) -> bool {
        self.identity.is_some() && dir_identity(&self.dir) == self.identity
    }
}

async fn run(
    mut reader: Reader,
    options: WatchOptions,
    clock: SharedClock,
    mut rereads: mpsc::Receiver<oneshot::Sender<()>>,
) {
    let dir = match reader.path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    let (events_tx, mut events) = mpsc::unbounded_channel::<bool>();
    let mut dir_watch: Option<DirWatch> = None;
    let mut watch_error_reported = false;
    let mut pending: Option<Instant> = None;
    loop {
        if !dir_watch.as_ref().is_some_and(DirWatch::is_current) {
            dir_watch = match DirWatch::new(&dir, events_tx.clone()) {
                Ok(w) => {
                    if watch_error_reported {
                        info!(dir = %dir.display(), "watching the token directory again");
                    }
                    watch_error_reported = false;
                    // The directory may be new: what it holds now was never read.
                    reader.read().await;
                    Some(w)
                }
                Err(e) => {
                    if !watch_error_reported {
                        warn!(dir = %dir.display(), error = %e, "cannot watch the token directory; polling");
                        watch_error_reported = true;
                    }
                    None
                }
            };
        }
        // A burst of directory events schedules one read `debounce` after its first event (not
        // after its last: a rotation storm must not starve reads). Explicit re-reads never wait.
        let next_read = match pending {
            Some(at) => at.min(reader.next_poll(&options, &clock)),
            None => reader.next_poll(&options, &clock),
        };
        tokio::select! {
            Some(watch_failed) = events.recv() => {
                if watch_failed {
                    debug!(dir = %dir.display(), "directory watch reported an error; recreating it");
                    dir_watch = None;
                }
                pending.get_or_insert_with(|| Instant::now() + options.debounce);
            }
            Some(done) = rereads.recv() => {
                pending = None;
                reader.read().await;
                let _ = done.send(());
            }
            () = tokio::time::sleep_until(next_read) => {
                pending = None;
                reader.read().await;
            }
        }
    }
}
