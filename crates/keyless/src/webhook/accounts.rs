//! ServiceAccount annotations through a watch cache (a kube-rs reflector of metadata only: the
//! annotations are all keyless reads). A ServiceAccount the cache has not seen yet (created just
//! before its first pod) is read from the API, with a timeout well inside the API server's.
//!
//! Names come from the review, which anyone reaching the webhook's port can send: they are checked
//! as Kubernetes checks them (DNS-1123) before any lookup, and the live reads are bounded (a short
//! negative cache per name, and a budget for all names), so reviews naming unknown ServiceAccounts
//! cannot turn into as many API reads.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::ServiceAccount;
use keyless_inject::Annotations;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::utils::ResetTimerBackoff;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tracing::warn;

/// The watch's retry delays after a failure: from 200 ms, doubling, jittered, at most 5 s; back to
/// 200 ms after two minutes without one. kube-rs's default (client-go's: up to 30 s) is kind to a
/// struggling API server, but readiness waits for the first full list, and with `failurePolicy:
/// Fail` an unready webhook refuses pods: one list and watch per replica is little load, and
/// readiness should follow the API server back within seconds.
pub(crate) fn watch_backoff() -> ResetTimerBackoff<watcher::ExponentialBackoff> {
    let delays = backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times();
    ResetTimerBackoff::new(delays.into(), Duration::from_secs(120))
}

/// A live read of a ServiceAccount missing from the cache gives up after this long.
const LIVE_READ_TIMEOUT: Duration = Duration::from_secs(3);
/// A ServiceAccount the API did not have is not asked for again for this long (the watch adds it
/// to the cache within a second of its creation anyway).
const NEGATIVE_TTL: Duration = Duration::from_secs(10);
/// Names remembered as missing at most (beyond, the expired are dropped, then all).
const MAX_NEGATIVE: usize = 10_000;
/// Live reads: this many at once, then one per [`LIVE_READ_INTERVAL`]. The creation race they
/// cover is one ServiceAccount per new workload, not hundreds a second.
const LIVE_READ_BURST: u32 = 10;
const LIVE_READ_INTERVAL: Duration = Duration::from_millis(200);

/// Why no annotations could be had for a review.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    /// A namespace or name Kubernetes would not accept: never looked up.
    #[error("{0}")]
    Invalid(String),
    /// The API could not be asked (or not now).
    #[error("{0}")]
    Unavailable(String),
}

#[derive(Clone)]
pub struct ServiceAccounts {
    client: Client,
    store: Store<PartialObjectMeta<ServiceAccount>>,
    synced: Arc<AtomicBool>,
    live: Arc<Mutex<LiveReads>>,
}

impl std::fmt::Debug for ServiceAccounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServiceAccounts")
    }
}

impl ServiceAccounts {
    /// Starts the watch of every namespace's ServiceAccounts (their metadata).
    pub fn watch(client: Client) -> Self {
        // An `Api` of `PartialObjectMeta` lists and watches metadata only.
        let api: Api<PartialObjectMeta<ServiceAccount>> = Api::all(client.clone());
        let (store, writer) = reflector::store();
        let stream = watcher::watcher(api, watcher::Config::default())
            .backoff(watch_backoff())
            .reflect(writer)
            .applied_objects();
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                if let Err(e) = event {
                    warn!(error = %e, "watching ServiceAccounts failed; retrying (check the webhook's RBAC: list and watch serviceaccounts)");
                }
            }
        });
        let synced = Arc::new(AtomicBool::new(false));
        let (ready, flag) = (store.clone(), Arc::clone(&synced));
        tokio::spawn(async move {
            if ready.wait_until_ready().await.is_ok() {
                flag.store(true, Ordering::SeqCst);
            }
        });
        Self { client, store, synced, live: Arc::new(Mutex::new(LiveReads::new(tokio::time::Instant::now()))) }
    }

    /// Whether the cache holds the first full list (readiness).
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::SeqCst)
    }

    /// The annotations of `namespace/name`; none for a ServiceAccount that does not exist.
    pub async fn annotations(&self, namespace: &str, name: &str) -> Result<Annotations, LookupError> {
        check_names(namespace, name).map_err(LookupError::Invalid)?;
        let key = ObjectRef::new(name).within(namespace);
        if let Some(cached) = self.store.get(&key) {
            return Ok(to_annotations(&cached.metadata));
        }
        let now = tokio::time::Instant::now();
        let admitted = self.live.lock().map_or(Admit::OverBudget, |mut live| live.admit(namespace, name, now));
        match admitted {
            Admit::KnownMissing => return Ok(Annotations::new()),
            Admit::OverBudget => {
                return Err(LookupError::Unavailable(format!(
                    "ServiceAccount {namespace}/{name} is not in the webhook's cache yet, and its reads of \
                     ServiceAccounts missing from the cache are spent (at most {LIVE_READ_BURST} at once, then one \
                     per {}ms); the pod's controller retries",
                    LIVE_READ_INTERVAL.as_millis()
                )));
            }
            Admit::Read => {}
        }
        // Checked above as DNS-1123, so encoding changes nothing; it keeps the path a path whatever
        // a later change lets through (kube-rs puts names into the URL as they are).
        let (namespace_segment, name_segment) = (segment(namespace), segment(name));
        let api: Api<PartialObjectMeta<ServiceAccount>> = Api::namespaced(self.client.clone(), &namespace_segment);
        match tokio::time::timeout(LIVE_READ_TIMEOUT, api.get_opt(&name_segment)).await {
            Ok(Ok(Some(account))) => Ok(to_annotations(&account.metadata)),
            Ok(Ok(None)) => {
                if let Ok(mut live) = self.live.lock() {
                    live.missing(namespace, name, tokio::time::Instant::now());
                }
                Ok(Annotations::new())
            }
            Ok(Err(e)) => Err(LookupError::Unavailable(format!("cannot read ServiceAccount {namespace}/{name}: {e}"))),
            Err(_) => Err(LookupError::Unavailable(format!(
                "cannot read ServiceAccount {namespace}/{name}: no answer from the API server within {}s",
                LIVE_READ_TIMEOUT.as_secs()
            ))),
        }
    }
}

/// A path segment, percent-encoded.
fn segment(text: &str) -> String {
    const SEGMENT: &percent_encoding::AsciiSet =
        &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');
    percent_encoding::utf8_percent_encode(text, SEGMENT).to_string()
}

/// A namespace is a DNS-1123 label, a ServiceAccount name a DNS-1123 subdomain (as the API server
/// validates them); the error shows the value escaped and cut short.
fn check_names(namespace: &str, name: &str) -> Result<(), String> {
    let label = |s: &str| {
        (1..=63).contains(&s.len())
            && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !s.starts_with('-')
            && !s.ends_with('-')
    };
    let shown = |s: &str| format!("{:?}", s.chars().take(80).collect::<String>());
    if !label(namespace) {
        return Err(format!("namespace {} is not a DNS-1123 label", shown(namespace)));
    }
    if name.len() > 253 || !name.split('.').all(label) {
        return Err(format!(
            "spec.serviceAccountName {} is not a valid ServiceAccount name (a DNS-1123 subdomain)",
            shown(name)
        ));
    }
    Ok(())
}

/// What a live read may do now.
#[derive(Debug, PartialEq, Eq)]
enum Admit {
    Read,
    /// Read a moment ago, and missing.
    KnownMissing,
    OverBudget,
}

/// The negative cache and the budget of live reads (a token bucket).
struct LiveReads {
    missing: HashMap<(String, String), tokio::time::Instant>,
    tokens: u32,
    refilled: tokio::time::Instant,
}

impl LiveReads {
    fn new(now: tokio::time::Instant) -> Self {
        Self { missing: HashMap::new(), tokens: LIVE_READ_BURST, refilled: now }
    }

    fn admit(&mut self, namespace: &str, name: &str, now: tokio::time::Instant) -> Admit {
        let key = (namespace.to_owned(), name.to_owned());
        match self.missing.get(&key) {
            Some(until) if *until > now => return Admit::KnownMissing,
            Some(_) => {
                self.missing.remove(&key);
            }
            None => {}
        }
        let earned = now.duration_since(self.refilled).as_nanos() / LIVE_READ_INTERVAL.as_nanos();
        if earned > 0 {
            let earned = u32::try_from(earned).unwrap_or(u32::MAX);
            self.tokens = self.tokens.saturating_add(earned).min(LIVE_READ_BURST);
            self.refilled = now;
        }
        if self.tokens == 0 {
            return Admit::OverBudget;
        }
        self.tokens -= 1;
        Admit::Read
    }

    fn missing(&mut self, namespace: &str, name: &str, now: tokio::time::Instant) {
        if self.missing.len() >= MAX_NEGATIVE {
            self.missing.retain(|_, until| *until > now);
            if self.missing.len() >= MAX_NEGATIVE {
                self.missing.clear();
            }
        }
        self.missing.insert((namespace.to_owned(), name.to_owned()), now + NEGATIVE_TTL);
    }
}

fn to_annotations(metadata: &kube::core::ObjectMeta) -> Annotations {
    metadata.annotations.clone().unwrap_or_default().into_iter().collect()
}

#[cfg(test)]
mod lookup_tests {
    use super::*;

    #[test]
    fn names_kubernetes_would_refuse_are_never_looked_up() {
        check_names("shop", "billing").expect("valid");
        check_names("shop", "a.b-c").expect("a subdomain");
        for (namespace, name) in
            [("shop", "../../secrets/x"), ("shop", "a/b"), ("shop", "A"), ("shop", ""), ("Shop", "a"), ("-x", "a")]
        {
            assert!(check_names(namespace, name).is_err(), "{namespace}/{name}");
        }
        assert_eq!(segment("a/b?c#d"), "a%2Fb%3Fc%23d");
        assert_eq!(segment("billing.v2"), "billing.v2");
    }

    /// 300 reviews naming one unknown ServiceAccount cost one read; 300 naming different ones cost
    /// the burst, then one read per interval.
    #[test]
    fn live_reads_are_remembered_when_missing_and_bounded_in_rate() {
        let start = tokio::time::Instant::now();
        let mut live = LiveReads::new(start);
        assert_eq!(live.admit("shop", "ghost", start), Admit::Read);
        live.missing("shop", "ghost", start);
        let reads = (0..300).filter(|_| live.admit("shop", "ghost", start) == Admit::Read).count();
        assert_eq!(reads, 0, "the negative cache answers");
        assert_eq!(live.admit("shop", "ghost", start + NEGATIVE_TTL), Admit::Read, "until it expires");

        let mut live = LiveReads::new(start);
        let reads = (0..300).filter(|i| live.admit("shop", &format!("ghost-{i}"), start) == Admit::Read).count();
        assert_eq!(reads, LIVE_READ_BURST as usize);
        let later = start + LIVE_READ_INTERVAL * 3;
        let reads = (0..300).filter(|i| live.admit("shop", &format!("late-{i}"), later) == Admit::Read).count();
        assert_eq!(reads, 3, "one per interval after the burst");
    }
}

#[cfg(test)]
mod backoff_tests {
    use super::*;

    /// Readiness follows the API server back within seconds: no retry waits anywhere near kube-rs's
    /// default 30 s (backon's jitter adds up to one more delay).
    #[test]
    fn the_watch_retries_within_seconds_however_long_the_api_server_was_away() {
        let delays: Vec<Duration> = watch_backoff().take(50).collect();
        assert_eq!(delays.len(), 50, "the watch never gives up");
        assert!(delays[0] <= Duration::from_millis(400), "{delays:?}");
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(10)), "{delays:?}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `keyless node` logs it: its text, not `Unavailable("...")`.
    #[test]
    fn a_lookup_error_reads_as_its_message() {
        let e = LookupError::Unavailable("the API server did not answer".to_owned());
        assert_eq!(e.to_string(), "the API server did not answer");
        assert_eq!(LookupError::Invalid("bad name".to_owned()).to_string(), "bad name");
    }
}
