//! The credential cache under tokio's paused clock: refresh timing, single-flight, failures,
//! rotation, eviction. The exchange is scripted: these are faults no real upstream produces on cue.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use keyless_core::clock::{SharedClock, TokioClock};
use keyless_core::{
    CachePolicy, CredentialCache, ErrorClass, Exchange, ExchangeError, Expiring, Issued, Metrics, SubjectToken,
    TokenSource,
};
use tokio::sync::watch;

const HOUR: Duration = Duration::from_secs(3600);

fn start() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

#[derive(Debug, Clone)]
struct Call {
    at: SystemTime,
    sub: Option<String>,
}

type Script = dyn Fn(usize, &SubjectToken) -> Result<(), ExchangeError> + Send + Sync;

/// An exchange whose outcome per call is decided by `script(call_number, token)`; it issues
/// credentials valid for `lifetime` whose value is the call number.
struct Scripted {
    clock: SharedClock,
    lifetime: Duration,
    latency: Duration,
    script: Box<Script>,
    calls: Arc<Mutex<Vec<Call>>>,
    count: watch::Sender<usize>,
}

impl Exchange for Scripted {
    type Key = &'static str;
    type Credential = usize;

    fn provider(&self) -> &'static str {
        "test"
    }

    fn identity(&self, _key: &Self::Key) -> String {
        "test-identity".to_owned()
    }

    async fn exchange(&self, _key: &Self::Key, token: &SubjectToken) -> Result<Issued<usize>, ExchangeError> {
        let n = {
            let mut calls = self.calls.lock().unwrap();
            calls.push(Call { at: self.clock.now(), sub: token.claims().sub.clone() });
            calls.len()
        };
        self.count.send_replace(n);
        tokio::time::sleep(self.latency).await;
        (self.script)(n, token)?;
        Ok(Issued::new(Expiring::new(n, self.clock.now() + self.lifetime)))
    }
}

struct Harness {
    cache: CredentialCache<Scripted>,
    clock: SharedClock,
    calls: Arc<Mutex<Vec<Call>>>,
    count: watch::Receiver<usize>,
    tokens: TokenSource,
}

impl Harness {
    fn new(
        policy: CachePolicy,
        latency: Duration,
        script: impl Fn(usize, &SubjectToken) -> Result<(), ExchangeError> + Send + Sync + 'static,
    ) -> Self {
        let clock: SharedClock = Arc::new(TokioClock::new(start()));
        let calls = Arc::new(Mutex::new(Vec::new()));
        let (count_tx, count) = watch::channel(0);
        let exchange = Scripted {
            clock: clock.clone(),
            lifetime: HOUR,
            latency,
            script: Box::new(script),
            calls: calls.clone(),
            count: count_tx,
        };
        let tokens = TokenSource::fixed(token("pod-a"));
        let cache = CredentialCache::new(exchange, tokens.clone(), policy, clock.clone(), Metrics::new());
        Self { cache, clock, calls, count, tokens }
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    /// Waits (letting paused time auto-advance to the next timer) until `n` exchanges happened.
    async fn wait_for_calls(&mut self, n: usize) {
        self.count.wait_for(|c| *c >= n).await.unwrap();
    }

    fn elapsed(&self, at: SystemTime) -> Duration {
        at.duration_since(start()).unwrap()
    }
}

fn token(sub: &str) -> SubjectToken {
    SubjectToken::parse(&common::jwt(sub, start() + 2 * HOUR)).unwrap()
}

fn ok(_: usize, _: &SubjectToken) -> Result<(), ExchangeError> {
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn refresh_starts_at_half_the_lifetime_by_default() {
    let mut h = Harness::new(CachePolicy::default(), Duration::ZERO, ok);
    h.cache.pin("k");
    h.wait_for_calls(2).await;
    let calls = h.calls();
    assert_eq!(h.elapsed(calls[0].at), Duration::ZERO);
    assert_eq!(h.elapsed(calls[1].at), HOUR / 2);
}

#[tokio::test(start_paused = true)]
async fn refresh_starts_at_the_configured_fraction() {
    let policy = CachePolicy { refresh_at: 0.8, ..CachePolicy::default() };
    let mut h = Harness::new(policy, Duration::ZERO, ok);
    h.cache.pin("k");
    h.wait_for_calls(3).await;
    let calls = h.calls();
    assert_eq!(h.elapsed(calls[1].at), HOUR.mul_f64(0.8));
    assert_eq!(h.elapsed(calls[2].at), HOUR.mul_f64(1.6));
}

#[tokio::test(start_paused = true)]
async fn a_thousand_concurrent_cold_lookups_cause_exactly_one_exchange() {
    let h = Harness::new(CachePolicy::default(), Duration::from_millis(200), ok);
    let lookups: Vec<_> = (0..1000)
        .map(|_| {
            let cache = h.cache.clone();
            tokio::spawn(async move { cache.get(&"cold").await })
        })
        .collect();
    for lookup in lookups {
        assert_eq!(lookup.await.unwrap().unwrap().value, 1);
    }
    assert_eq!(h.calls().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn serves_the_valid_credential_to_its_end_while_upstream_fails_then_a_clear_error() {
    let h = Harness::new(CachePolicy::default(), Duration::ZERO, |n, _| {
        if n == 1 { Ok(()) } else { Err(ExchangeError::retryable("token service answered 503")) }
    });
    h.cache.pin("k");
    assert_eq!(h.cache.get(&"k").await.unwrap().value, 1);
    // Every minute until a second before expiry: the first credential, without waiting.
    for minute in 1..60u64 {
        tokio::time::sleep_until(tokio::time::Instant::now() + Duration::from_secs(60)).await;
        let before = h.clock.now();
        let credential = h.cache.get(&"k").await.unwrap();
        assert_eq!(credential.value, 1, "minute {minute}");
        assert_eq!(h.clock.now(), before, "a cached lookup waited");
        assert!(h.cache.statuses()[0].ready());
    }
    tokio::time::sleep_until(tokio::time::Instant::now() + Duration::from_secs(59)).await;
    assert_eq!(h.cache.get(&"k").await.unwrap().value, 1);
    let refreshes = h.calls().len();
    assert!(refreshes > 10, "refresh was retried with backoff, {refreshes} calls");

    tokio::time::sleep_until(tokio::time::Instant::now() + Duration::from_secs(2)).await;
    let err = h.cache.get(&"k").await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Retryable);
    assert!(err.to_string().contains("503"), "{err}");
    assert!(!h.cache.statuses()[0].ready());
}

#[tokio::test(start_paused = true)]
async fn recovers_by_itself_when_the_upstream_comes_back() {
    let h = Harness::new(CachePolicy::default(), Duration::ZERO, |n, _| {
        if n <= 5 { Err(ExchangeError::retryable("token service answered 503")) } else { Ok(()) }
    });
    h.cache.pin("k");
    let mut rx_ready = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_secs(10)).await;
        if h.cache.statuses()[0].ready() {
            rx_ready = true;
            break;
        }
    }
    assert!(rx_ready, "never recovered");
    assert_eq!(h.cache.get(&"k").await.unwrap().value, 6);
}

#[tokio::test]
async fn a_rejected_token_is_re_read_from_the_file_and_retried_once() {
    let dir = tempfile::tempdir().unwrap();
    common::atomic_write(dir.path(), &common::jwt("stale", start() + 2 * HOUR), 0);
    // Events and polls are slowed to an hour: only the cache's explicit re-read can see the new file.
    let options =
        keyless_core::WatchOptions { debounce: HOUR, poll_interval: HOUR, ..keyless_core::WatchOptions::default() };
    let clock: SharedClock = Arc::new(keyless_core::clock::SystemClock);
    let spec = keyless_core::SourceSpec::File(dir.path().join("token"));
    let tokens = TokenSource::open(&spec, &options, clock.clone(), Metrics::new()).await;
    let calls = Arc::new(Mutex::new(Vec::new()));
    let dir_path = dir.path().to_owned();
    let exchange = Scripted {
        clock: clock.clone(),
        lifetime: HOUR,
        latency: Duration::ZERO,
        script: Box::new(move |_, token| {
            if token.claims().sub.as_deref() == Some("stale") {
                // The kubelet rotated while the cloud was looking at the old token.
                common::atomic_write(&dir_path, &common::jwt("fresh", start() + 2 * HOUR), 1);
                return Err(ExchangeError::reread_token("InvalidIdentityToken: token expired"));
            }
            Ok(())
        }),
        calls: calls.clone(),
        count: watch::channel(0).0,
    };
    let cache = CredentialCache::new(exchange, tokens, CachePolicy::default(), clock, Metrics::new());
    assert_eq!(cache.get(&"k").await.unwrap().value, 2);
    let subs: Vec<_> = calls.lock().unwrap().iter().map(|c| c.sub.clone().unwrap()).collect();
    assert_eq!(subs, ["stale", "fresh"]);
}

#[tokio::test(start_paused = true)]
async fn a_terminal_error_is_answered_at_once_and_not_retried_per_request() {
    let h = Harness::new(CachePolicy::default(), Duration::ZERO, |_, _| {
        Err(ExchangeError::terminal("AccessDenied: not authorized").with_hint("check the trust policy"))
    });
    let err = h.cache.get(&"k").await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Terminal);
    assert!(err.to_string().contains("hint: check the trust policy"), "{err}");
    let before = h.clock.now();
    for _ in 0..50 {
        assert!(h.cache.get(&"k").await.is_err());
    }
    assert_eq!(h.clock.now(), before, "requests waited for a retry that is far away");
    assert_eq!(h.calls().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_rotated_token_does_not_discard_valid_credentials_and_is_used_next() {
    let mut h = Harness::new(CachePolicy::default(), Duration::ZERO, ok);
    h.cache.pin("k");
    assert_eq!(h.cache.get(&"k").await.unwrap().value, 1);
    h.tokens.set(token("pod-b"));
    tokio::task::yield_now().await;
    assert_eq!(h.cache.get(&"k").await.unwrap().value, 1);
    assert_eq!(h.calls().len(), 1);
    h.wait_for_calls(2).await;
    assert_eq!(h.calls()[1].sub.as_deref(), Some("pod-b"));
}

#[tokio::test(start_paused = true)]
async fn evicts_the_least_recently_used_key_when_full() {
    let policy = CachePolicy { max_entries: 2, ..CachePolicy::default() };
    let h = Harness::new(policy, Duration::ZERO, ok);
    h.cache.get(&"a").await.unwrap();
    h.cache.get(&"b").await.unwrap();
    h.cache.get(&"a").await.unwrap();
    h.cache.get(&"c").await.unwrap(); // evicts b, the least recently used
    assert_eq!(h.calls().len(), 3);
    h.cache.get(&"a").await.unwrap();
    assert_eq!(h.calls().len(), 3, "a was still cached");
    h.cache.get(&"b").await.unwrap();
    assert_eq!(h.calls().len(), 4, "b had been evicted");
}

#[tokio::test(start_paused = true)]
async fn a_key_nobody_asks_for_stops_refreshing_until_asked_again() {
    let mut h = Harness::new(CachePolicy::default(), Duration::ZERO, ok);
    assert_eq!(h.cache.get(&"audience").await.unwrap().value, 1);
    // Unused since its exchange: no refresh at half-life, nor ever while nobody asks.
    tokio::time::sleep(5 * HOUR).await;
    assert_eq!(h.calls().len(), 1);
    // Asked again after expiry: a fresh exchange.
    assert_eq!(h.cache.get(&"audience").await.unwrap().value, 2);
    // Used after its refresh point: served from cache and refreshed in the background.
    tokio::time::sleep(HOUR.mul_f64(0.6)).await;
    assert_eq!(h.cache.get(&"audience").await.unwrap().value, 2);
    h.wait_for_calls(3).await;
}

#[tokio::test(start_paused = true)]
async fn a_slow_upstream_times_out_as_a_retryable_failure() {
    let policy = CachePolicy { exchange_timeout: Duration::from_secs(5), ..CachePolicy::default() };
    let h = Harness::new(policy, Duration::from_secs(60), ok);
    let err = h.cache.get(&"k").await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Retryable);
    assert!(err.to_string().contains("did not answer within 5s"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn a_waiting_request_brings_a_far_retry_forward_once_the_upstream_is_back() {
    let up = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let up_in_script = up.clone();
    let policy = CachePolicy {
        retry_min: Duration::from_secs(1),
        retry_max: HOUR,
        request_wait: Duration::from_secs(5),
        ..CachePolicy::default()
    };
    let mut h = Harness::new(policy, Duration::ZERO, move |_, _| {
        if up_in_script.load(std::sync::atomic::Ordering::SeqCst) {
            Ok(())
        } else {
            Err(ExchangeError::retryable("token service answered 503"))
        }
    });
    // Many failures: the scheduled retry drifts towards an hour away.
    for _ in 0..12 {
        assert!(h.cache.get(&"k").await.is_err());
    }
    let failures = h.calls().len();
    up.store(true, std::sync::atomic::Ordering::SeqCst);
    let before = h.clock.now();
    let credential = h.cache.get(&"k").await.unwrap();
    h.wait_for_calls(failures + 1).await;
    assert!(
        h.clock.now().duration_since(before).unwrap() <= Duration::from_secs(1),
        "the request waited for the backoff"
    );
    assert_eq!(credential.value, failures + 1);
}
