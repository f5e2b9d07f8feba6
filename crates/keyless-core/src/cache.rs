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
use std::time::SystemTime;

use rustc_hash::FxBuildHasher;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tracing::warn;

use crate::clock::SharedClock;
use crate::exchange::{Exchange, ExchangeError, Expiring};
use crate::metrics::{Lookup, LookupCounter, Metrics};
use crate::source::TokenSource;
use crate::task::AbortOnDrop;

mod budget;
mod driver;
mod policy;
mod status;

use budget::{AdhocBudget, Spent};
use driver::spawn_driver;
pub use policy::CachePolicy;
use policy::{Draws, after};
pub use status::{IdentityStatus, Readiness};

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
pub(super) fn described<E: Exchange>(exchange: &E, key: &E::Key) -> Option<String> {
    Some(exchange.describe_key(key)).filter(|d| !d.is_empty())
}
