//! The credential cache: pre-warm, serve from cache, refresh ahead, single-flight, backoff with
//! full jitter, and keep serving a still-valid credential while refreshes fail (the credential lifecycle, ARCHITECTURE.md).
//!
//! Every key has one background *driver* task, the only caller of `Exchange::exchange` for that
//! key: single-flight is structural. Requests read the driver's published [`Slot`]; they wait for
//! an exchange only when nothing valid is cached.
//!
//! Exchanges of keys nobody configured (audiences, scopes, resources a local client asks for)
//! spend from a per-cache [`budget::AdhocBudget`], so no client can make keyless call the clouds
//! without limit (fleet behaviour, docs/reliability.md). Only exchanges consult it, never a cache hit.
//!
//! No policy value can make instant arithmetic overflow: every deadline goes through [`after`].

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use backon::{BackoffBuilder as _, ExponentialBuilder};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use rustc_hash::FxBuildHasher;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::clock::SharedClock;
use crate::exchange::{ErrorClass, Exchange, ExchangeError, Expiring, Issued};
use crate::metrics::{Lookup, LookupCounter, Metrics};
use crate::source::TokenSource;
use crate::task::AbortOnDrop;
use crate::token::{SubjectToken, TokenError};

mod budget;
use budget::{AdhocBudget, Spent};

/// Timing and bounds of a cache. Validated where the config is parsed.
#[derive(Debug, Clone)]
pub struct CachePolicy {
    /// Refresh when this fraction of a credential's lifetime has passed (0 < f < 1), at the latest.
    pub refresh_at: f64,
    /// Refreshes spread uniformly over this share of the time to `refresh_at`, just before it
    /// (0 <= j < 1; at 0.6 and `refresh_at` 0.5: between 20% and 50% of the lifetime), so that
    /// pods started together do not refresh together forever (docs/fleet.md). Only ever earlier:
    /// no client's refresh margin ever sees an older credential than without it.
    pub refresh_jitter: f64,
    /// Seeds the cache's random draws (refresh jitter, retry jitter), for deterministic tests and
    /// the fleet simulation; `None` (production): seeded from the OS.
    pub rng_seed: Option<u64>,
    /// First retry delay after a failed exchange (full jitter: a random delay up to this).
    pub retry_min: Duration,
    /// Cap of the retry delay (throttled exchanges wait by `throttle_retry` instead); also the
    /// retry period of terminal errors.
    pub retry_max: Duration,
    /// The scale of the wait after a throttling answer: a random delay between 0.75x and 1.5x of
    /// this after the first throttle in a row, then between 0.5x and 1x; a longer `Retry-After`
    /// moves the window's start to it; never past half the time a held credential has left
    /// ([`throttled_delay`]).
    pub throttle_retry: Duration,
    /// How long one exchange may take before it counts as a retryable failure.
    pub exchange_timeout: Duration,
    /// How long a request waits for an exchange when nothing valid is cached.
    pub request_wait: Duration,
    /// Most distinct keys held (scope sets, audiences, resources); the least recently used
    /// non-configured key is dropped first.
    pub max_entries: usize,
    /// Exchanges of keys nobody configured (first exchanges, refreshes and retries alike) that may
    /// happen at once; 0: only configured keys are ever exchanged.
    pub adhoc_burst: u32,
    /// After the burst, one more such exchange per this interval. Configured keys never wait.
    pub adhoc_interval: Duration,
}

impl Default for CachePolicy {
    fn default() -> Self {
        Self {
            refresh_at: 0.5,
            // Measured (docs/benchmarks.md, "Fleet"): refreshes between 20% and 50% of the
            // lifetime bring the steady-state peak of 10,000 pods rolled out in a minute under
            // 1.5x the mean after three refresh cycles (0.4 left it at 1.58), for 43% more
            // exchanges than refreshing all at `refresh_at` (a mean of 0.35 of the lifetime).
            refresh_jitter: 0.6,
            rng_seed: None,
            retry_min: Duration::from_secs(1),
            retry_max: Duration::from_secs(30),
            // Measured (docs/benchmarks.md, "Fleet", run G): 10,000 pods rolled out in 60 s against
            // a quota of 50/s make under 2x the throttled calls no retry policy can avoid, and
            // are all ready within 1.3x of the time the quota needs (docs/fleet.md).
            throttle_retry: Duration::from_secs(60),
            exchange_timeout: Duration::from_secs(30),
            request_wait: Duration::from_secs(10),
            max_entries: 64,
            // A real app asks for a handful of audiences, scope sets or resources (its services
            // and APIs); 20 covers them all at start-up. One per 10 s (360 an hour) refreshes
            // more one-hour keys than `max_entries` holds (each twice an hour at `refresh_at`
            // 0.5), while a runaway client costs the cloud 6 exchanges a minute, not 100 a second.
            adhoc_burst: 20,
            adhoc_interval: Duration::from_secs(10),
        }
    }
}

/// Longer than anything a deadline can usefully mean: a longer duration is treated as this one,
/// so a policy of `400000000000y` waits "forever" instead of overflowing an `Instant`.
const FOREVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// `at + duration` without overflow: saturates to [`FOREVER`] after `at`. Instants count from
/// boot, so that cannot overflow either; were it to, `at` is an answer and a panic is not.
fn after(at: Instant, duration: Duration) -> Instant {
    at.checked_add(duration.min(FOREVER)).unwrap_or(at)
}

/// A wall-clock instant for a log line. humantime prints only years 1970 to 9999: it panics
/// before, and fails after, which a JSON log formatter turns into a panic; an upstream can send
/// any expiry.
fn loggable_time(at: SystemTime) -> String {
    match at.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(since) if since.as_secs() < 253_402_300_800 => humantime::format_rfc3339_seconds(at).to_string(),
        _ => format!("{at:?}"),
    }
}

/// The refresh point as a fraction of the lifetime. Config validation keeps it inside (0, 1); a
/// policy built in code with anything else (NaN, 0, 7) gets the default, not a panic or a spin.
fn refresh_fraction(policy: &CachePolicy) -> f64 {
    let f = policy.refresh_at;
    if f > 0.0 && f < 1.0 { f } else { CachePolicy::default().refresh_at }
}

/// When to refresh a credential that has `lifetime` left: at a uniformly random point (`unit` in
/// [0, 1)) of the window `[refresh_at * (1 - refresh_jitter), refresh_at]` of its lifetime. A
/// jitter outside `[0, 1)` (config validation forbids it) counts as none.
fn refresh_delay(policy: &CachePolicy, lifetime: Duration, unit: f64) -> Duration {
    let at = refresh_fraction(policy);
    let jitter = policy.refresh_jitter;
    let jitter = if jitter > 0.0 && jitter < 1.0 { jitter } else { 0.0 };
    let fraction = at * (1.0 - jitter * (1.0 - unit.clamp(0.0, 1.0)));
    Duration::try_from_secs_f64(lifetime.as_secs_f64() * fraction).unwrap_or(lifetime)
}

/// The cache's random draws, seeded by `rng_seed` when given (tests, the fleet simulation).
struct Draws(Mutex<StdRng>);

impl Draws {
    fn new(seed: Option<u64>) -> Self {
        Self(Mutex::new(seed.map_or_else(StdRng::from_os_rng, StdRng::seed_from_u64)))
    }

    /// A uniform draw in [0, 1).
    fn unit(&self) -> f64 {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).random::<f64>()
    }
}

/// What a driver publishes about its key.
struct Slot<C> {
    credential: Option<Arc<Expiring<C>>>,
    error: Option<ExchangeError>,
    /// Completed exchange attempts (each attempt includes its one re-read retry).
    attempts: u64,
    in_flight: bool,
    /// When the driver will try again after a failure.
    next_attempt: Option<Instant>,
    /// After a retryable failure, a waiting request may bring the retry forward to this instant
    /// (one `retry_min` after the failure: demand speeds recovery without hammering upstream).
    on_demand_after: Option<Instant>,
}

impl<C> Slot<C> {
    fn valid(&self, now: SystemTime) -> Option<&Arc<Expiring<C>>> {
        self.credential.as_ref().filter(|c| c.is_valid_at(now))
    }
}

/// Signals between requests and a key's driver.
#[derive(Debug, Default)]
struct Control {
    wake: Notify,
    pinned: AtomicBool,
    /// A request asked for this key since the driver's last exchange.
    used: AtomicBool,
    /// The driver is waiting for a request before it refreshes again (a quiet, unconfigured key).
    dormant: AtomicBool,
    /// Recency for LRU eviction: the global sequence number of the last use (0: never used).
    last_used: AtomicU64,
}

struct Entry<C> {
    slot: watch::Receiver<Slot<C>>,
    control: Arc<Control>,
    _driver: AbortOnDrop,
}

struct Shared<E: Exchange> {
    exchange: E,
    tokens: TokenSource,
    policy: CachePolicy,
    clock: SharedClock,
    metrics: Metrics,
    /// `keyless_cache_lookups_total{result="hit"}`, found once (a hit is the hot path).
    hits: OnceLock<LookupCounter>,
    adhoc: AdhocBudget,
    draws: Draws,
    /// The identity and credential expiry of each configured key, for
    /// `keyless_credential_expiry_timestamp_seconds`. Its lock also orders `pin` of an existing
    /// key against that key's driver publishing a credential (neither misses the other).
    configured_expiries: Mutex<HashMap<E::Key, (String, SystemTime)>>,
}

impl<E: Exchange> Shared<E> {
    /// Records the expiry of the credential `key` now holds if `key` is configured, and sets its
    /// identity's gauge to the earliest expiry among the identity's configured keys: what an alert
    /// must see is the configured credential that expires first, never an ad-hoc key's.
    fn publish_expiry(&self, key: &E::Key, control: &Control, expires_at: SystemTime) {
        let mut expiries = self.configured_expiries.lock().unwrap_or_else(PoisonError::into_inner);
        if control.pinned.load(Ordering::Relaxed) {
            self.set_expiry(&mut expiries, key, expires_at);
        }
    }

    fn set_expiry(&self, expiries: &mut HashMap<E::Key, (String, SystemTime)>, key: &E::Key, expires_at: SystemTime) {
        let identity = self.exchange.identity(key);
        expiries.insert(key.clone(), (identity.clone(), expires_at));
        let earliest =
            expiries.values().filter(|(other, _)| *other == identity).map(|(_, at)| *at).min().unwrap_or(expires_at);
        self.metrics.set_credential_expiry(self.exchange.provider(), &identity, earliest);
    }
}

/// Hashed with FxHash, not SipHash: every request hashes its key here, and SipHash's resistance
/// to collision flooding buys nothing for a map of at most `max_entries` keys (a flood of
/// colliding keys costs at most one comparison per entry held).
type Entries<E> = HashMap<<E as Exchange>::Key, Arc<Entry<<E as Exchange>::Credential>>, FxBuildHasher>;

struct CacheInner<E: Exchange> {
    shared: Arc<Shared<E>>,
    entries: RwLock<Entries<E>>,
    lookups: AtomicU64,
}

/// Credentials of one exchange (one configured identity), per key. Cheap to clone.
pub struct CredentialCache<E: Exchange> {
    inner: Arc<CacheInner<E>>,
}

impl<E: Exchange> Clone for CredentialCache<E> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone() }
    }
}

impl<E: Exchange> Debug for CredentialCache<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialCache").field("provider", &self.inner.shared.exchange.provider()).finish()
    }
}

impl<E: Exchange> CredentialCache<E> {
    pub fn new(exchange: E, tokens: TokenSource, policy: CachePolicy, clock: SharedClock, metrics: Metrics) -> Self {
        Self {
            inner: Arc::new(CacheInner {
                shared: Arc::new(Shared {
                    adhoc: AdhocBudget::new(&policy),
                    draws: Draws::new(policy.rng_seed),
                    exchange,
                    tokens,
                    policy,
                    clock,
                    metrics,
                    hits: OnceLock::new(),
                    configured_expiries: Mutex::default(),
                }),
                entries: RwLock::new(HashMap::default()),
                // Above every new entry's 0, so an entry's first use always takes a fresh number.
                lookups: AtomicU64::new(1),
            }),
        }
    }

    /// Makes `key` part of this identity's configuration: exchanged now (pre-warm), refreshed
    /// ahead for as long as the cache lives, never evicted, and counted by readiness.
    pub fn pin(&self, key: E::Key) {
        // A configured key is never limited: `entry` does not refuse it.
        let Ok(entry) = self.entry(&key, true) else { return };
        let shared = &self.inner.shared;
        // Under the expiries' lock: the driver publishing a credential at this moment either
        // sees the key pinned or has published before we read its slot.
        let mut expiries = shared.configured_expiries.lock().unwrap_or_else(PoisonError::into_inner);
        entry.control.pinned.store(true, Ordering::Relaxed);
        let held = entry.slot.borrow().credential.as_ref().map(|c| c.expires_at);
        if let Some(expires_at) = held {
            shared.set_expiry(&mut expiries, &key, expires_at);
        }
    }

    /// A valid credential for `key`: from cache without waiting when one is held; otherwise after
    /// the key's next exchange (at most `request_wait`). The error says why nothing is available.
    pub async fn get(&self, key: &E::Key) -> Result<Arc<Expiring<E::Credential>>, ExchangeError> {
        let shared = &self.inner.shared;
        let provider = shared.exchange.provider();
        let entry = match self.entry(key, false) {
            Ok(entry) => entry,
            Err(refused) => {
                shared.metrics.record_lookup(provider, Lookup::Error);
                return Err(refused);
            }
        };
        // SeqCst with the driver's `dormant`/`used` pair: a store-then-load handshake on two
        // variables, which weaker orderings could reorder into a lost wake-up. The store is
        // skipped while the flag is already set: a write per request to a line every core reads
        // costs each of them a cache miss (docs/benchmarks.md). A stale `true` seen here could at
        // worst let a key used this instant go quiet one refresh early; its next use wakes it.
        if !entry.control.used.load(Ordering::SeqCst) {
            entry.control.used.store(true, Ordering::SeqCst);
        }
        let now = shared.clock.now();
        if let Some(credential) = entry.slot.borrow().valid(now) {
            shared.hits.get_or_init(|| shared.metrics.lookup_counter(provider, Lookup::Hit)).inc();
            // A key that went quiet stops refreshing; this use wakes it (the request is served now).
            if entry.control.dormant.load(Ordering::SeqCst) {
                entry.control.wake.notify_waiters();
            }
            return Ok(credential.clone());
        }
        let result = self.wait_for_exchange(&entry).await;
        shared.metrics.record_lookup(provider, if result.is_ok() { Lookup::Miss } else { Lookup::Error });
        result
    }

    async fn wait_for_exchange(
        &self,
        entry: &Entry<E::Credential>,
    ) -> Result<Arc<Expiring<E::Credential>>, ExchangeError> {
        let shared = &self.inner.shared;
        let wait = shared.policy.request_wait;
        let deadline = after(Instant::now(), wait);
        // The driver will not try again before we give up: its error is the answer, now.
        let retry_is_far = |s: &Slot<E::Credential>| {
            let retry_at = s.next_attempt.map(|at| s.on_demand_after.map_or(at, |d| d.min(at)));
            !s.in_flight && retry_at.is_some_and(|at| at > deadline)
        };
        let mut slot = entry.slot.clone();
        let seen = {
            let s = slot.borrow_and_update();
            if let (true, Some(err)) = (retry_is_far(&s), &s.error) {
                return Err(err.clone());
            }
            s.attempts
        };
        entry.control.wake.notify_waiters();
        let clock = shared.clock.clone();
        // Also done when the driver, woken by us, finds it must wait for the ad-hoc budget longer
        // than we may wait.
        let outcome = tokio::time::timeout_at(
            deadline,
            slot.wait_for(|s| s.attempts > seen || s.valid(clock.now()).is_some() || retry_is_far(s)),
        )
        .await;
        let s = entry.slot.borrow();
        if let Some(credential) = s.valid(clock.now()) {
            return Ok(credential.clone());
        }
        Err(match (&s.error, outcome) {
            (Some(err), Ok(_)) => err.clone(),
            (last, _) => {
                let provider = shared.exchange.provider();
                let mut err = ExchangeError::retryable(format!(
                    "no {provider} credential yet: the exchange did not finish within {}",
                    humantime::format_duration(wait)
                ));
                if let Some(last) = last {
                    err = err.with_hint(format!("the previous attempt failed: {last}"));
                }
                err
            }
        })
    }

    /// The entry of `key`, created with its driver if there is none. Creating one for a key
    /// that is not `configured` spends from the ad-hoc budget first; when it is spent the key is
    /// refused, and nothing is created or evicted.
    fn entry(&self, key: &E::Key, configured: bool) -> Result<Arc<Entry<E::Credential>>, ExchangeError> {
        let found = self.inner.entries.read().unwrap_or_else(PoisonError::into_inner).get(key).cloned();
        let entry = match found {
            Some(entry) => entry,
            None => {
                let shared = &self.inner.shared;
                let mut entries = self.inner.entries.write().unwrap_or_else(PoisonError::into_inner);
                if let Some(entry) = entries.get(key) {
                    entry.clone()
                } else {
                    if !configured {
                        let now = Instant::now();
                        shared.adhoc.try_take(now).map_err(|spent| self.refuse(key, &spent, now))?;
                    }
                    if entries.len() >= shared.policy.max_entries {
                        evict_least_recently_used(&mut entries);
                    }
                    let entry = Arc::new(spawn_driver(shared.clone(), key.clone(), configured));
                    entries.insert(key.clone(), entry.clone());
                    entry
                }
            }
        };
        self.touch(&entry.control);
        Ok(entry)
    }

    fn refuse(&self, key: &E::Key, spent: &Spent, now: Instant) -> ExchangeError {
        let shared = &self.inner.shared;
        let provider = shared.exchange.provider();
        let err = shared.adhoc.spent(provider, Some(spent.ready_at.saturating_duration_since(now)));
        if spent.first {
            let identity = shared.exchange.identity(key);
            let key = described(&shared.exchange, key);
            warn!(provider, %identity, key = key.as_deref(), outcome = "rate_limited", error = %err,
                "exchange refused (further refusals and delays are not logged until the budget suffices again)");
        }
        err
    }

    /// Marks a key most recently used (LRU order). Using the key that already is changes
    /// nothing, so a busy key's lookups write no shared counter.
    fn touch(&self, control: &Control) {
        let latest = self.inner.lookups.load(Ordering::Relaxed);
        if control.last_used.load(Ordering::Relaxed) != latest {
            let seq = self.inner.lookups.fetch_add(1, Ordering::Relaxed) + 1;
            control.last_used.store(seq, Ordering::Relaxed);
        }
    }

    /// The state of every configured (pinned) key, for readiness and `keyless check`.
    pub fn statuses(&self) -> Vec<IdentityStatus> {
        let shared = &self.inner.shared;
        let now = shared.clock.now();
        let entries = self.inner.entries.read().unwrap_or_else(PoisonError::into_inner);
        let mut out: Vec<IdentityStatus> = entries
            .iter()
            .filter(|(_, e)| e.control.pinned.load(Ordering::Relaxed))
            .map(|(key, e)| {
                let s = e.slot.borrow();
                IdentityStatus {
                    provider: shared.exchange.provider(),
                    identity: shared.exchange.identity(key),
                    key: shared.exchange.describe_key(key),
                    valid_until: s.valid(now).map(|c| c.expires_at),
                    last_error: s.error.clone(),
                }
            })
            .collect();
        out.sort_by(|a, b| (&a.identity, &a.key).cmp(&(&b.identity, &b.key)));
        out
    }
}

fn evict_least_recently_used<K: Clone + Eq + std::hash::Hash, C>(
    entries: &mut HashMap<K, Arc<Entry<C>>, FxBuildHasher>,
) {
    let victim = entries
        .iter()
        .filter(|(_, e)| !e.control.pinned.load(Ordering::Relaxed))
        .min_by_key(|(_, e)| e.control.last_used.load(Ordering::Relaxed))
        .map(|(k, _)| k.clone());
    if let Some(k) = victim {
        entries.remove(&k);
    }
}

/// A key as a log field: its description, or no field at all when there is nothing to say
/// (an identity with one credential), never `key=()`.
fn described<E: Exchange>(exchange: &E, key: &E::Key) -> Option<String> {
    Some(exchange.describe_key(key)).filter(|d| !d.is_empty())
}

/// Whether one configured identity holds a valid credential, and if not, why.
#[derive(Debug, Clone)]
pub struct IdentityStatus {
    pub provider: &'static str,
    pub identity: String,
    /// What the credential is for within the identity ([`Exchange::describe_key`]); empty when
    /// the identity has one credential.
    pub key: String,
    pub valid_until: Option<SystemTime>,
    pub last_error: Option<ExchangeError>,
}

impl IdentityStatus {
    pub fn ready(&self) -> bool {
        self.valid_until.is_some()
    }

    /// `aws arn:aws:iam::1:role/app`, `gcp app@p.iam.gserviceaccount.com (access token, scopes
    /// cloud-platform)`: the credential as a person reads it in `/readyz` and `keyless exec`.
    pub fn name(&self) -> String {
        if self.key.is_empty() {
            format!("{} {}", self.provider, self.identity)
        } else {
            format!("{} {} ({})", self.provider, self.identity, self.key)
        }
    }
}

/// Anything whose configured identities count for `/readyz`.
pub trait Readiness: Send + Sync {
    fn statuses(&self) -> Vec<IdentityStatus>;
}

impl<E: Exchange> Readiness for CredentialCache<E> {
    fn statuses(&self) -> Vec<IdentityStatus> {
        CredentialCache::statuses(self)
    }
}

fn spawn_driver<E: Exchange>(shared: Arc<Shared<E>>, key: E::Key, configured: bool) -> Entry<E::Credential> {
    let (tx, rx) = watch::channel(Slot {
        credential: None,
        error: None,
        attempts: 0,
        in_flight: true,
        next_attempt: None,
        on_demand_after: None,
    });
    // Pinned before the driver can look: a configured key's first exchange spends no budget.
    let control = Arc::new(Control { pinned: AtomicBool::new(configured), ..Control::default() });
    let task = tokio::spawn(drive(shared, key, tx, control.clone()));
    Entry { slot: rx, control, _driver: AbortOnDrop::new(task) }
}

/// Full jitter over an exponential schedule: a uniformly random delay in [0, min(cap, base * 2^n)]
/// (backon's own jitter only adds to the delay, which keeps synchronized clients synchronized).
struct RetryDelays {
    schedule: backon::ExponentialBackoff,
    cap: Duration,
}

impl RetryDelays {
    fn new(policy: &CachePolicy) -> Self {
        Self {
            schedule: ExponentialBuilder::new()
                .with_min_delay(policy.retry_min)
                .with_max_delay(policy.retry_max)
                .without_max_times()
                .build(),
            cap: policy.retry_max,
        }
    }

    /// The next delay; `unit` is a uniform draw in [0, 1).
    fn next_delay(&mut self, unit: f64) -> Duration {
        let ceiling = self.schedule.next().unwrap_or(self.cap);
        Duration::try_from_secs_f64(ceiling.as_secs_f64() * unit).unwrap_or(ceiling)
    }
}

/// The wait after a throttling answer, the `consecutive`-th in a row (1: the first); `unit` is a
/// uniform draw in [0, 1), `left` how long the credential this key holds is still valid.
///
/// A throttled call says the token service is over its quota, which a fleet reaches together:
/// every pod of a rollout is throttled in the same seconds, and each one sees only its own
/// answers. Retrying on a request's time scale (the 1 s full-jitter backoff) keeps thousands of
/// pods asking several times a second while the quota drains their backlog, about ten throttled
/// calls per pod that waits (docs/fleet.md). So the first retry after a throttle waits on a
/// fleet's time scale, 0.75-1.5x `throttle_retry` (45-90 s by default), so that the pods
/// throttled together come back spread over the minutes the quota needs for them; each further
/// throttle in a row retries after 0.5-1x of it (30-60 s): those pods are the backlog's tail, and
/// a longer wait would keep them unready after the quota is free again (measured,
/// docs/benchmarks.md "Fleet").
///
/// The answer's `Retry-After` is a floor: a longer one moves the window's start to it, keeping
/// the window's width (Entra answers `Retry-After: 60` to every pod: they come back over 60-105 s,
/// not all at 60 s).
///
/// A held credential must not expire for lack of retries: the wait is at most half the time it
/// has left (at least `retry_min`), never less than `Retry-After`.
fn throttled_delay(
    policy: &CachePolicy,
    consecutive: u32,
    retry_after: Option<Duration>,
    left: Option<Duration>,
    unit: f64,
) -> Duration {
    let (low, high) = if consecutive <= 1 { (0.75, 1.5) } else { (0.5, 1.0) };
    let scale = policy.throttle_retry.min(FOREVER).as_secs_f64();
    let seconds = |s: f64| Duration::try_from_secs_f64(s).unwrap_or(FOREVER);
    let floor = retry_after.unwrap_or_default();
    let start = floor.max(seconds(scale * low));
    let delay = start.saturating_add(seconds(scale * (high - low) * unit.clamp(0.0, 1.0)));
    match left {
        Some(left) => delay.min((left / 2).max(policy.retry_min)).max(floor),
        None => delay,
    }
}

async fn drive<E: Exchange>(
    shared: Arc<Shared<E>>,
    key: E::Key,
    tx: watch::Sender<Slot<E::Credential>>,
    control: Arc<Control>,
) {
    let policy = &shared.policy;
    let clock = shared.clock.clone();
    let mut tokens = shared.tokens.subscribe();
    let mut delays = RetryDelays::new(policy);
    // Throttling answers since the last success.
    let mut throttles: u32 = 0;
    // The first exchange of a key nobody configured was paid for when its entry was created.
    let mut paid = true;
    loop {
        if !std::mem::take(&mut paid) && !control.pinned.load(Ordering::Relaxed) {
            wait_for_adhoc_budget(&shared, &key, &tx).await;
        }
        control.used.store(false, Ordering::Relaxed);
        tx.send_modify(|s| {
            s.in_flight = true;
            s.next_attempt = None;
            s.on_demand_after = None;
        });
        match attempt(&shared, &key).await {
            Ok(issued) => {
                delays = RetryDelays::new(policy);
                throttles = 0;
                let credential = Arc::new(issued.credential);
                let expires_at = credential.expires_at;
                let lifetime = expires_at.duration_since(clock.now()).unwrap_or(Duration::ZERO);
                let refresh_in = refresh_delay(policy, lifetime, shared.draws.unit());
                let refresh_at = after(Instant::now(), refresh_in);
                tx.send_modify(|s| {
                    s.credential = Some(credential);
                    s.error = None;
                    s.attempts += 1;
                    s.in_flight = false;
                });
                shared.publish_expiry(&key, &control, expires_at);
                tokio::time::sleep_until(refresh_at).await;
            }
            Err(err) => {
                let delay = match err.class {
                    ErrorClass::Terminal => policy.retry_max,
                    ErrorClass::Retryable | ErrorClass::RereadToken => delays.next_delay(shared.draws.unit()),
                    ErrorClass::Throttled => {
                        throttles = throttles.saturating_add(1);
                        let left = tx
                            .borrow()
                            .valid(clock.now())
                            .map(|c| c.expires_at.duration_since(clock.now()).unwrap_or(Duration::ZERO));
                        throttled_delay(policy, throttles, err.retry_after, left, shared.draws.unit())
                    }
                };
                let next = after(Instant::now(), delay);
                // Terminal errors wait for their period or a new token, whoever asks; throttled
                // ones for their delay: a waiting request must not make keyless ask again sooner
                // than the service allows.
                let on_demand = matches!(err.class, ErrorClass::Retryable | ErrorClass::RereadToken)
                    .then(|| after(Instant::now(), policy.retry_min));
                let throttled = err.class == ErrorClass::Throttled;
                // Listen before publishing: a request that reads the failure and then wakes us
                // must not be missed.
                let woken = control.wake.notified();
                tokio::pin!(woken);
                woken.as_mut().enable();
                tx.send_modify(|s| {
                    s.error = Some(err);
                    s.attempts += 1;
                    s.in_flight = false;
                    s.next_attempt = Some(next);
                    s.on_demand_after = on_demand;
                });
                tokio::select! {
                    () = tokio::time::sleep_until(next) => {}
                    // A new token may fix what failed: try it at once rather than after the backoff
                    // (not a throttled call: a new token does not lift the service's limit).
                    changed = tokens.changed(), if !throttled => if changed.is_err() {
                        tokio::time::sleep_until(next).await;
                    },
                    // A request is waiting with nothing valid to serve: retry as soon as allowed.
                    () = &mut woken, if on_demand.is_some() => {
                        tokio::time::sleep_until(on_demand.unwrap_or(next).min(next)).await;
                    }
                }
            }
        }
        // A key nobody configured and nobody asked for since the last exchange goes quiet until
        // it is asked for again (unused ID-token audiences must not cost upstream calls forever).
        if !control.pinned.load(Ordering::Relaxed) && !control.used.load(Ordering::Relaxed) {
            let woken = control.wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            control.dormant.store(true, Ordering::SeqCst);
            if !control.used.load(Ordering::SeqCst) {
                woken.await;
            }
            control.dormant.store(false, Ordering::SeqCst);
        }
    }
}

/// Waits for the ad-hoc budget's next token before a refresh or retry of a key nobody
/// configured. Its still-valid credential is served meanwhile; a request finding nothing valid is
/// told why at once when the wait outlasts `request_wait`.
async fn wait_for_adhoc_budget<E: Exchange>(shared: &Shared<E>, key: &E::Key, tx: &watch::Sender<Slot<E::Credential>>) {
    let now = Instant::now();
    let Err(spent) = shared.adhoc.reserve(now) else { return };
    let start_at = spent.ready_at;
    let provider = shared.exchange.provider();
    let mut err = shared.adhoc.spent(provider, None);
    if spent.first {
        let identity = shared.exchange.identity(key);
        let key = described(&shared.exchange, key);
        let wait = humantime::format_duration(Duration::from_secs(start_at.saturating_duration_since(now).as_secs()));
        warn!(provider, %identity, key = key.as_deref(), outcome = "rate_limited", error = %err, %wait,
            "exchange delayed (further delays and refusals are not logged until the budget suffices again)");
    }
    tx.send_modify(|s| {
        if let Some(last) = s.error.take().filter(|e| e.code != err.code) {
            err.message = format!("{}; the last exchange failed: {last}", err.message);
        }
        s.error = Some(err);
        s.in_flight = false;
        s.next_attempt = Some(start_at);
        s.on_demand_after = None;
    });
    tokio::time::sleep_until(start_at).await;
}

/// No subject token: retryable, unless the source cannot give one without a change.
fn token_unavailable(e: TokenError) -> ExchangeError {
    let err = if e.heals() { ExchangeError::retryable(e.to_string()) } else { ExchangeError::terminal(e.to_string()) };
    err.with_code("SubjectTokenUnavailable")
}

/// One exchange, and on a token-rejected error one retry with a freshly read token.
async fn attempt<E: Exchange>(shared: &Shared<E>, key: &E::Key) -> Result<Issued<E::Credential>, ExchangeError> {
    let token = shared.tokens.current().map_err(token_unavailable)?;
    match exchange_once(shared, key, &token).await {
        Err(e) if e.class == ErrorClass::RereadToken => {
            let fresh = shared.tokens.reread().await.map_err(token_unavailable)?;
            exchange_once(shared, key, &fresh).await
        }
        other => other,
    }
}

async fn exchange_once<E: Exchange>(
    shared: &Shared<E>,
    key: &E::Key,
    token: &SubjectToken,
) -> Result<Issued<E::Credential>, ExchangeError> {
    let provider = shared.exchange.provider();
    let identity = shared.exchange.identity(key);
    let described_key = described(&shared.exchange, key);
    let subject = token.claims().sub.as_deref().unwrap_or("<no sub claim>");
    let started = Instant::now();
    let timeout = shared.policy.exchange_timeout;
    let result = match tokio::time::timeout(timeout, shared.exchange.exchange(key, token)).await {
        Ok(r) => r,
        Err(_) => Err(ExchangeError::retryable(format!(
            "the {provider} token service did not answer within {}",
            humantime::format_duration(timeout)
        ))),
    };
    let elapsed = started.elapsed();
    match &result {
        Ok(issued) => {
            let expires = loggable_time(issued.credential.expires_at);
            info!(provider, %identity, subject, key = described_key.as_deref(), outcome = "success", %expires,
                duration_ms = elapsed.as_millis() as u64, request_id = issued.request_id.as_deref().unwrap_or("-"),
                "exchange");
            shared.metrics.record_exchange(provider, &identity, "success", elapsed.as_secs_f64());
        }
        Err(e) => {
            warn!(provider, %identity, subject, key = described_key.as_deref(), outcome = e.class.label(), error = %e,
                duration_ms = elapsed.as_millis() as u64, request_id = e.request_id.as_deref().unwrap_or("-"),
                "exchange");
            shared.metrics.record_exchange(provider, &identity, e.class.label(), elapsed.as_secs_f64());
        }
    }
    result
}
