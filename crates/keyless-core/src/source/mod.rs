//! Subject-token sources: where a workload's OIDC token comes from, kept fresh in the background.
//!
//! A [`TokenOrigin`] is one *kind* of source (a file, GitHub Actions, an environment variable, a
//! URL, a command): it names itself ([`SourceId`]), reads or fetches the
//! token once, bounded, and may announce changes. One generic driver (`driver.rs`) runs any kind:
//! debounced change events, the poll timer, re-reads near `exp`, explicit re-reads, the last good
//! token kept through failures, each distinct problem logged once. [`TokenSource`] is the cheap
//! handle the cache and adapters hold; requests only ever read its watch channel.

mod command;
mod config;
mod driver;
mod env;
mod file;
mod github_actions;
mod http;
mod url_origin;

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

use crate::clock::SharedClock;
use crate::metrics::Metrics;
use crate::printable::printable;
use crate::task::AbortOnDrop;
use crate::token::{SubjectToken, TokenError};

pub use command::{ALLOW_COMMANDS_VAR, CommandFormat, CommandOrigin, CommandSpec, GOOGLE_ALLOW_EXECUTABLES_VAR};
pub use config::{SourceConfig, SourceDefaults, detected, in_github_actions, require_command_opt_in};
pub use env::EnvOrigin;
pub use file::{DirChanges, FileOrigin};
pub use github_actions::{ActionsEndpoint, REQUEST_TOKEN_VAR, REQUEST_URL_VAR, with_audience};
pub use url_origin::{TokenFormat, UrlOrigin, UrlSpec};

/// Where a provider's subject token comes from, as configured. Equal specs share one source.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SourceSpec {
    /// A file someone keeps rewriting (the kubelet's projected service-account token).
    File(PathBuf),
    /// GitHub Actions OIDC: a fresh 5-minute JWT for `audience` from the job's token endpoint.
    GithubActions { audience: String, endpoint: ActionsEndpoint },
    /// An environment variable of this process (GitLab CI `id_tokens:`).
    Env(String),
    /// A URL (GET; headers; the body or a JSON field).
    Url(UrlSpec),
    /// A program that prints the token (opt-in).
    Command(CommandSpec),
}

impl std::fmt::Display for SourceSpec {
    /// `file /var/run/secrets/tokens/aws`: what a report shows of the source (nothing secret).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(path) => write!(f, "file {}", path.display()),
            Self::GithubActions { audience, .. } => write!(f, "github-actions audience={audience}"),
            Self::Env(var) => write!(f, "env {var}"),
            Self::Url(spec) => write!(f, "url {}", spec.shown()),
            Self::Command(spec) => write!(f, "command {}", spec.argv.first().map_or("", String::as_str)),
        }
    }
}

impl SourceSpec {
    /// What to check when a token service says the subject token is expired or not yet valid, for
    /// this kind of source (`key`: the setting naming a token file, `aws.token_file`). keyless
    /// re-reads the source and retries either way.
    pub fn stale_token_hint(&self, key: &str) -> String {
        match self {
            Self::File(_) => format!(
                "{key} must be a token its issuer keeps fresh (the kubelet rotates a projected token; a copied token \
                 file goes stale), and the clock in sync"
            ),
            Self::GithubActions { .. } => "the GitHub Actions token is requested anew for each read and lives \
                                           minutes: check the runner's clock"
                .to_owned(),
            Self::Env(var) => format!(
                "{var} holds one token for as long as keyless runs: a token that expires needs a source keyless can \
                 read again (a file, a url or a command)"
            ),
            Self::Url(_) => "the URL must serve a fresh token on each request, and the clock be in sync".to_owned(),
            Self::Command(_) => {
                "the command must print a fresh token each time it runs, and the clock be in sync".to_owned()
            }
        }
    }

    /// The same spec in the form that compares equal for the same source (absolute paths).
    pub(crate) fn normalized(&self) -> Self {
        match self {
            Self::File(path) => Self::File(std::path::absolute(path).unwrap_or_else(|_| path.clone())),
            other => other.clone(),
        }
    }
}

/// The kind of a source, as in the `source` label of `keyless_subject_token_expiry_timestamp_seconds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SourceKind {
    File,
    GithubActions,
    Env,
    Url,
    Command,
    /// A token handed in by value ([`TokenSource::fixed`]).
    Fixed,
}

impl SourceKind {
    pub fn label(self) -> &'static str {
        match self {
            Self::File => "file",
            Self::GithubActions => "github-actions",
            Self::Env => "env",
            Self::Url => "url",
            Self::Command => "command",
            Self::Fixed => "fixed",
        }
    }
}

/// Which source a token or an error is from: its kind and a location that is never secret (a
/// path, an audience, a variable's name; never a URL's credentials or a header). Displays as
/// `file /var/run/secrets/tokens/aws`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SourceId {
    kind: SourceKind,
    location: String,
}

/// The longest location kept (a path is at most 4096 bytes on Linux).
const MAX_LOCATION_BYTES: usize = 4096;

impl SourceId {
    pub fn new(kind: SourceKind, location: impl AsRef<str>) -> Self {
        Self { kind, location: printable(location.as_ref(), MAX_LOCATION_BYTES).into_owned() }
    }

    pub fn file(path: &std::path::Path) -> Self {
        Self::new(SourceKind::File, path.to_string_lossy())
    }

    pub fn kind(&self) -> SourceKind {
        self.kind
    }

    pub fn location(&self) -> &str {
        &self.location
    }

    /// The `path` label of the expiry metric: the file's path for a file source, else empty (so
    /// dashboards that filter on `path` keep working).
    pub fn path_label(&self) -> &str {
        match self.kind {
            SourceKind::File => &self.location,
            _ => "",
        }
    }
}

impl fmt::Display for SourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind.label())?;
        if !self.location.is_empty() {
            write!(f, " {}", self.location)?;
        }
        Ok(())
    }
}

/// Timing of the file source, configurable (`[token]`). The defaults follow docs/protocols.md section 1.
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

/// When the driver reads a source without being asked. Times count from the end of the last read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    /// A change announcement schedules a read this long after the *first* announcement of a burst
    /// (not the last: a rotation storm must not starve reads).
    pub debounce: Duration,
    /// Read this often whatever happens.
    pub poll: Duration,
    /// Start reading again this long before the held token's `exp` (a fetching source gets a new
    /// token before the held one expires: a GitHub Actions token lives 5 minutes)...
    pub before_exp: Duration,
    /// ... and from then on, this often until a newer token is held.
    pub near_exp: Duration,
    /// After a failed read, try again this soon.
    pub after_failure: Duration,
    /// A read that has not finished by then fails with [`TokenError::TimedOut`].
    pub read_timeout: Duration,
    /// How long [`TokenSource::start`] waits for the first read before returning (the read goes on
    /// in the background). `None`: until it is done, as a local file's read is quick. A fetching
    /// source bounds it, so a hung endpoint delays nothing else's start.
    pub first_read_wait: Option<Duration>,
}

impl Schedule {
    /// A source that learns of a new token only by fetching one (a URL, a command, GitHub Actions):
    /// a new token 2 minutes before the held one's `exp`, so the one held always has 2 minutes left,
    /// then every 5 s until it arrives; `poll` as a backstop. Its start waits for the first fetch
    /// at most 3 s.
    pub fn fetching(poll: Duration, after_failure: Duration, read_timeout: Duration) -> Self {
        Self {
            debounce: Duration::ZERO,
            poll,
            before_exp: Duration::from_secs(120),
            near_exp: Duration::from_secs(5),
            after_failure,
            read_timeout,
            first_read_wait: Some(FIRST_FETCH_WAIT),
        }
    }
}

/// Resolves when a source's token may have changed. Dropped and called again whenever another
/// event wins the driver's `select!`, so `changed` must be cancel-safe.
pub trait ChangeFeed: Send + 'static {
    fn changed(&mut self) -> impl Future<Output = ()> + Send;
}

/// The feed of a source that learns of changes only by reading (a URL, a command).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoChanges;

impl ChangeFeed for NoChanges {
    async fn changed(&mut self) {
        std::future::pending().await
    }
}

/// One kind of place a subject token comes from. The driver owns the origin and is its only caller.
pub trait TokenOrigin: Send + 'static {
    type Changes: ChangeFeed;

    fn id(&self) -> &SourceId;

    fn schedule(&self) -> Schedule;

    /// Starts announcing changes. Called once, before the first read, so that a change between the
    /// first read and the start of the announcements is not missed.
    fn changes(&mut self) -> Self::Changes;

    /// Reads or fetches the token once: bounded in size ([`crate::MAX_SUBJECT_TOKEN_BYTES`]) and in
    /// time (the driver gives up after [`Schedule::read_timeout`], dropping this future). A fetching
    /// origin must fetch anew on every call: that is how a cloud's "token expired" gets a fresh one.
    fn read(&mut self) -> impl Future<Output = Result<SubjectToken, TokenError>> + Send;
}

type Held = Option<Arc<SubjectToken>>;

#[derive(Debug)]
struct State {
    token: watch::Sender<Held>,
    last_error: Mutex<Option<TokenError>>,
    /// How many reads have finished, failed ones included (watched: [`TokenSource::first_read`]).
    reads: watch::Sender<u64>,
}

impl State {
    fn new(token: Held) -> Arc<Self> {
        Arc::new(Self { token: watch::channel(token).0, last_error: Mutex::new(None), reads: watch::channel(0).0 })
    }

    fn last_error(&self) -> Option<TokenError> {
        self.last_error.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn set_error(&self, e: Option<TokenError>) {
        *self.last_error.lock().unwrap_or_else(PoisonError::into_inner) = e;
    }
}

/// How long opening a fetching source waits for its first token before going on without it (the
/// fetch continues; the cache exchanges as soon as it lands).
const FIRST_FETCH_WAIT: Duration = Duration::from_secs(3);

/// An explicit re-read: answered once the read it asked for is done.
type RereadRequest = oneshot::Sender<()>;

#[derive(Debug)]
struct Inner {
    id: SourceId,
    state: Arc<State>,
    rereads: Option<mpsc::Sender<RereadRequest>>,
    _task: Option<AbortOnDrop>,
}

/// The newest good subject token of one source, shared by every exchange that uses that source.
/// Clones share one driver; the driver stops when the last clone is dropped.
#[derive(Debug, Clone)]
pub struct TokenSource {
    inner: Arc<Inner>,
}

impl TokenSource {
    /// The source `spec` describes, its variables read through `env` (the context's
    /// [`crate::Host`]). Reads it once before returning; never fails: if that read fails, the
    /// error is kept (see [`TokenSource::current`]) and the driver keeps trying.
    pub async fn open(
        spec: &SourceSpec,
        options: &WatchOptions,
        env: &(dyn Fn(&str) -> Option<String> + Sync),
        clock: SharedClock,
        metrics: Metrics,
    ) -> Self {
        match spec {
            SourceSpec::File(path) => Self::start(FileOrigin::new(path.clone(), options), clock, metrics).await,
            SourceSpec::GithubActions { audience, endpoint } => {
                let origin = github_actions::origin(audience, endpoint, env);
                Self::start(origin, clock, metrics).await
            }
            SourceSpec::Env(var) => Self::start(EnvOrigin::new(var, env), clock, metrics).await,
            SourceSpec::Url(spec) => Self::start(UrlOrigin::new(spec), clock, metrics).await,
            SourceSpec::Command(spec) => {
                let origin = CommandOrigin::new(spec.clone(), clock.clone());
                Self::start(origin, clock, metrics).await
            }
        }
    }

    /// Runs `origin` under the generic driver: reads it once, then keeps it fresh in the background.
    pub async fn start<O: TokenOrigin>(origin: O, clock: SharedClock, metrics: Metrics) -> Self {
        let id = origin.id().clone();
        let first_read_wait = origin.schedule().first_read_wait;
        let state = State::new(None);
        let (tx, rx) = mpsc::channel(16);
        let task = match first_read_wait {
            None => {
                let driver = driver::Driver::start(origin, state.clone(), clock, metrics).await;
                tokio::spawn(driver.run(rx))
            }
            Some(limit) => {
                let driver = driver::Driver::new(origin, state.clone(), clock, metrics);
                let task = tokio::spawn(driver.run(rx));
                // The first read is an explicit one: waited for at most `limit`, never repeated.
                let (done_tx, done_rx) = oneshot::channel();
                if tx.send(done_tx).await.is_ok() {
                    let _ = tokio::time::timeout(limit, done_rx).await;
                }
                task
            }
        };
        Self { inner: Arc::new(Inner { id, state, rereads: Some(tx), _task: Some(AbortOnDrop::new(task)) }) }
    }

    /// A source whose token is set by the caller ([`TokenSource::set`]) instead of read (tests,
    /// and tokens passed in by value). Its `reread` returns the token it holds.
    pub fn fixed(token: SubjectToken) -> Self {
        let state = State::new(Some(Arc::new(token)));
        let id = SourceId::new(SourceKind::Fixed, "");
        Self { inner: Arc::new(Inner { id, state, rereads: None, _task: None }) }
    }

    /// Replaces the held token as if the source had produced a new one.
    pub fn set(&self, token: SubjectToken) {
        self.inner.state.token.send_if_modified(|held| {
            let changed = held.as_deref() != Some(&token);
            *held = Some(Arc::new(token));
            changed
        });
    }

    pub fn id(&self) -> &SourceId {
        &self.inner.id
    }

    /// The last good token; if there never was one, why not.
    pub fn current(&self) -> Result<Arc<SubjectToken>, TokenError> {
        if let Some(token) = self.inner.state.token.borrow().clone() {
            return Ok(token);
        }
        Err(self.inner.state.last_error().unwrap_or_else(|| TokenError::Unavailable {
            from: self.inner.id.clone(),
            reason: "nothing was read yet".to_owned(),
        }))
    }

    /// The error of the most recent read, if it failed (the last good token may still be held).
    pub fn last_error(&self) -> Option<TokenError> {
        self.inner.state.last_error()
    }

    /// How many reads (or fetches) the source has made, failed ones included.
    pub fn reads(&self) -> u64 {
        *self.inner.state.reads.borrow()
    }

    /// [`TokenSource::current`] once the source has been read at least once. [`TokenSource::open`]
    /// waits only a few seconds for a fetching source's first fetch, which may take up to its read
    /// timeout; a one-shot caller (`keyless check`) must not take "nothing was read yet" for an answer.
    pub async fn first_read(&self) -> Result<Arc<SubjectToken>, TokenError> {
        if self.inner.rereads.is_some() {
            let _ = self.inner.state.reads.subscribe().wait_for(|n| *n > 0).await;
        }
        self.current()
    }

    /// Notified whenever a different good token is read.
    pub fn subscribe(&self) -> watch::Receiver<Held> {
        self.inner.state.token.subscribe()
    }

    /// Reads the source again now (e.g. after a cloud said the token is invalid or expired: a
    /// fetching source fetches a new one) and returns the token then held. Concurrent callers
    /// share one read.
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

#[cfg(test)]
mod stale_hint_tests {
    use super::*;

    /// Each kind of source gets its own advice: only a file is the kubelet's business.
    #[test]
    fn the_stale_token_hint_names_what_the_source_can_do() {
        let file = SourceSpec::File(PathBuf::from("/t")).stale_token_hint("aws.token_file");
        assert!(file.starts_with("aws.token_file must be") && file.contains("kubelet"), "{file}");
        let others = [
            SourceSpec::GithubActions { audience: "a".to_owned(), endpoint: ActionsEndpoint::default() },
            SourceSpec::Env("CI_TOKEN".to_owned()),
        ];
        for spec in others {
            let hint = spec.stale_token_hint("aws.token_file");
            assert!(!hint.contains("kubelet") && !hint.contains("token_file"), "{spec}: {hint}");
        }
        assert!(SourceSpec::Env("CI_TOKEN".to_owned()).stale_token_hint("k").starts_with("CI_TOKEN holds one token"));
    }
}
