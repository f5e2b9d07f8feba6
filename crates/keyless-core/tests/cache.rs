//! The credential cache under tokio's paused clock: refresh timing, single-flight, failures,
//! rotation, eviction, the ad-hoc exchange budget, the expiry gauge, absurd policies. The exchange
//! is scripted: these are faults no real upstream produces on cue.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use keyless_core::clock::{SharedClock, TokioClock};
use keyless_core::{
    CachePolicy, CredentialCache, ErrorClass, Exchange, ExchangeError, Expiring, Issued, Metrics, SubjectToken,
    TokenSource,
};
use keyless_test_support::jwt::unsigned_jwt;
use keyless_test_support::kubelet;
use tokio::sync::watch;

const HOUR: Duration = Duration::from_secs(3600);

fn start() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

#[derive(Debug, Clone)]
struct Call {
    at: SystemTime,
    key: &'static str,
    sub: Option<String>,
}

type Script = dyn Fn(usize, &SubjectToken) -> Result<(), ExchangeError> + Send + Sync;

/// An exchange whose outcome per call is decided by `script(call_number, token)`; it issues
/// credentials valid for `lifetime(key)` whose value is the call number. A key `id/name` belongs
/// to identity `id`; any other key to `test-identity`.
struct Scripted {
    clock: SharedClock,
    lifetime: fn(&str) -> Duration,
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

    fn identity(&self, key: &Self::Key) -> String {
        key.split_once('/').map_or("test-identity", |(identity, _)| identity).to_owned()
    }

    async fn exchange(&self, key: &Self::Key, token: &SubjectToken) -> Result<Issued<usize>, ExchangeError> {
        let n = {
            let mut calls = self.calls.lock().unwrap();
            calls.push(Call { at: self.clock.now(), key, sub: token.claims().sub.clone() });
            calls.len()
        };
        self.count.send_replace(n);
        tokio::time::sleep(self.latency).await;
        (self.script)(n, token)?;
        Ok(Issued::new(Expiring::new(n, self.clock.now() + (self.lifetime)(key))))
    }
}

struct Harness {
    cache: CredentialCache<Scripted>,
    clock: SharedClock,
    calls: Arc<Mutex<Vec<Call>>>,
    count: watch::Receiver<usize>,
    tokens: TokenSource,
    metrics: Metrics,
}

impl Harness {
    fn new(
        policy: CachePolicy,
        latency: Duration,
        script: impl Fn(usize, &SubjectToken) -> Result<(), ExchangeError> + Send + Sync + 'static,
    ) -> Self {
        Self::with_lifetimes(policy, latency, script, |_| HOUR)
    }

    fn with_lifetimes(
        policy: CachePolicy,
        latency: Duration,
        script: impl Fn(usize, &SubjectToken) -> Result<(), ExchangeError> + Send + Sync + 'static,
        lifetime: fn(&str) -> Duration,
    ) -> Self {
        let clock: SharedClock = Arc::new(TokioClock::new(start()));
        let calls = Arc::new(Mutex::new(Vec::new()));
        let (count_tx, count) = watch::channel(0);
        let exchange = Scripted {
            clock: clock.clone(),
            lifetime,
            latency,
            script: Box::new(script),
            calls: calls.clone(),
            count: count_tx,
        };
        let tokens = TokenSource::fixed(token("pod-a"));
        let metrics = Metrics::new();
        let cache = CredentialCache::new(exchange, tokens.clone(), policy, clock.clone(), metrics.clone());
        Self { cache, clock, calls, count, tokens, metrics }
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    /// The exchanges made for `key`.
    fn calls_for(&self, key: &str) -> usize {
        self.calls().iter().filter(|c| c.key == key).count()
    }

    /// `keyless_credential_expiry_timestamp_seconds` of `identity`, as `/metrics` shows it.
    fn expiry_gauge(&self, identity: &str) -> Option<SystemTime> {
        let series =
            format!(r#"keyless_credential_expiry_timestamp_seconds{{provider="test",identity="{identity}"}} "#);
        let text = self.metrics.encode();
        let value = text.lines().find_map(|l| l.strip_prefix(&series))?;
        Some(SystemTime::UNIX_EPOCH + Duration::from_secs(value.parse().unwrap()))
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
    SubjectToken::parse(&unsigned_jwt(sub, start() + 2 * HOUR)).unwrap()
}

fn ok(_: usize, _: &SubjectToken) -> Result<(), ExchangeError> {
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn without_jitter_refresh_starts_at_half_the_lifetime_by_default() {
    let mut h = Harness::new(CachePolicy { refresh_jitter: 0.0, ..CachePolicy::default() }, Duration::ZERO, ok);
    h.cache.pin("k");
    h.wait_for_calls(2).await;
    let calls = h.calls();
    assert_eq!(h.elapsed(calls[0].at), Duration::ZERO);
    assert_eq!(h.elapsed(calls[1].at), HOUR / 2);
}

#[tokio::test(start_paused = true)]
async fn without_jitter_refresh_starts_at_the_configured_fraction() {
    let policy = CachePolicy { refresh_at: 0.8, refresh_jitter: 0.0, ..CachePolicy::default() };
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
    kubelet::atomic_write(dir.path(), &unsigned_jwt("stale", start() + 2 * HOUR), 0);
    // Events and polls are slowed to an hour: only the cache's explicit re-read can see the new file.
    let options =
        keyless_core::WatchOptions { debounce: HOUR, poll_interval: HOUR, ..keyless_core::WatchOptions::default() };
    let clock: SharedClock = Arc::new(keyless_core::clock::SystemClock);
    let spec = keyless_core::SourceSpec::File(dir.path().join("token"));
    let tokens = TokenSource::open(&spec, &options, &|_| None, clock.clone(), Metrics::new()).await;
    let calls = Arc::new(Mutex::new(Vec::new()));
    let dir_path = dir.path().to_owned();
    let exchange = Scripted {
        clock: clock.clone(),
        lifetime: |_| HOUR,
        latency: Duration::ZERO,
        script: Box::new(move |_, token| {
            if token.claims().sub.as_deref() == Some("stale") {
                // The kubelet rotated while the cloud was looking at the old token.
                kubelet::atomic_write(&dir_path, &unsigned_jwt("fresh", start() + 2 * HOUR), 1);
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

fn rate_limited(err: &ExchangeError) -> bool {
    err.class == ErrorClass::Retryable && err.code.as_deref() == Some("KeylessRateLimited")
}

fn unavailable(_: usize, _: &SubjectToken) -> Result<(), ExchangeError> {
    Err(ExchangeError::retryable("token service answered 503"))
}

#[tokio::test(start_paused = true)]
async fn new_keys_beyond_the_ad_hoc_burst_are_refused_at_once_and_leave_no_driver() {
    let policy = CachePolicy {
        adhoc_burst: 3,
        adhoc_interval: Duration::from_secs(10),
        max_entries: 3,
        ..CachePolicy::default()
    };
    let h = Harness::new(policy, Duration::ZERO, ok);
    let before = h.clock.now();
    for key in ["aud-1", "aud-2", "aud-3"] {
        h.cache.get(&key).await.unwrap();
    }
    for key in ["aud-4", "aud-5", "aud-6"] {
        let err = h.cache.get(&key).await.unwrap_err();
        assert!(rate_limited(&err), "{err:?}");
        let text = err.to_string();
        for says in ["keys that are not in its configuration to 3 at once, then one every 10s", "next can start in 10s"]
        {
            assert!(text.contains(says), "{says:?} missing from: {text}");
        }
        assert!(
            text.contains("cache.adhoc_burst") && text.contains("gcp.id_token_audiences, azure.resources"),
            "{text}"
        );
    }
    assert_eq!(h.clock.now(), before, "a refused request waited");
    assert_eq!(h.calls().len(), 3);
    // Refused keys evicted nothing: the three admitted ones are still cached.
    for key in ["aud-1", "aud-2", "aud-3"] {
        h.cache.get(&key).await.unwrap();
    }
    assert_eq!(h.calls().len(), 3);

    // One more new key per interval.
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(h.cache.get(&"aud-4").await.unwrap().value, 4);
    assert!(rate_limited(&h.cache.get(&"aud-5").await.unwrap_err()));

    // No driver was left behind for a refused key: none of them is ever exchanged by itself.
    tokio::time::sleep(5 * HOUR).await;
    assert_eq!((h.calls_for("aud-5"), h.calls_for("aud-6")), (0, 0), "{:?}", h.calls());
}

#[tokio::test(start_paused = true)]
async fn configured_keys_are_never_limited() {
    let policy = CachePolicy { adhoc_burst: 0, refresh_jitter: 0.0, ..CachePolicy::default() };
    let mut h = Harness::new(policy, Duration::ZERO, ok);
    for key in ["a", "b", "c"] {
        h.cache.pin(key);
    }
    for key in ["a", "b", "c"] {
        h.cache.get(&key).await.unwrap();
    }
    let err = h.cache.get(&"not-configured").await.unwrap_err();
    assert!(rate_limited(&err) && err.to_string().contains("cache.adhoc_burst = 0"), "{err}");
    // Their refreshes spend nothing either.
    h.wait_for_calls(9).await;
    assert_eq!(h.elapsed(h.calls()[8].at), HOUR);
    assert_eq!(h.calls_for("not-configured"), 0);
}

#[tokio::test(start_paused = true)]
async fn an_ad_hoc_key_waits_for_the_budget_to_refresh_and_serves_its_credential_meanwhile() {
    let policy = CachePolicy { adhoc_burst: 2, adhoc_interval: 2 * HOUR, ..CachePolicy::default() };
    let mut h = Harness::new(policy, Duration::ZERO, ok);
    assert_eq!(h.cache.get(&"a").await.unwrap().value, 1);
    assert_eq!(h.cache.get(&"b").await.unwrap().value, 2);
    // The budget is spent; "a" stays in use past its refresh point (30 min), "b" goes quiet.
    tokio::time::sleep(Duration::from_secs(10 * 60)).await;
    h.cache.get(&"a").await.unwrap();
    tokio::time::sleep(Duration::from_secs(21 * 60)).await;
    for minute in 31..60 {
        let before = h.clock.now();
        assert_eq!(h.cache.get(&"a").await.unwrap().value, 1, "minute {minute}");
        assert_eq!(h.clock.now(), before, "a cached lookup waited");
        tokio::time::sleep(Duration::from_secs(60)).await;
    }
    assert_eq!(h.calls().len(), 2, "a refresh did not wait for the budget");

    // Expired, with the next token an hour away: told why at once, not after request_wait.
    tokio::time::sleep(Duration::from_secs(2 * 60)).await;
    let before = h.clock.now();
    let err = h.cache.get(&"a").await.unwrap_err();
    assert!(rate_limited(&err) && err.to_string().contains("this key's next exchange waits for its turn"), "{err}");
    // A quiet key woken by a request finds the budget spent too, and says so at once.
    let err = h.cache.get(&"b").await.unwrap_err();
    assert!(rate_limited(&err), "{err}");
    assert_eq!(h.clock.now(), before, "a request waited for a budget that is far away");
    assert!(rate_limited(&h.cache.get(&"c").await.unwrap_err()), "a new key took a waiting refresh's token");

    // The reserved token arrives: "a" is refreshed then, and served again.
    h.wait_for_calls(3).await;
    assert_eq!((h.calls()[2].key, h.elapsed(h.calls()[2].at)), ("a", 2 * HOUR));
    assert_eq!(h.cache.get(&"a").await.unwrap().value, 3);
}

#[tokio::test(start_paused = true)]
async fn retries_of_an_ad_hoc_key_spend_the_budget_too() {
    let policy = CachePolicy { adhoc_burst: 3, adhoc_interval: HOUR, ..CachePolicy::default() };
    let h = Harness::new(policy, Duration::ZERO, unavailable);
    let mut last = None;
    // A client asking every second for ten minutes while the token service is down.
    for _ in 0..600 {
        last = h.cache.get(&"k").await.err();
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(h.calls().len(), 3, "every attempt spends a token");
    let last = last.unwrap();
    assert!(rate_limited(&last), "{last:?}");
    assert!(last.to_string().contains("the last exchange failed: token service answered 503"), "{last}");
}

#[tokio::test(start_paused = true)]
async fn the_expiry_gauge_ignores_keys_nobody_configured() {
    let h = Harness::with_lifetimes(CachePolicy::default(), Duration::ZERO, ok, |key| {
        if key == "sa/adhoc" { 2 * HOUR } else { HOUR }
    });
    h.cache.pin("sa/configured");
    h.cache.get(&"sa/configured").await.unwrap();
    assert_eq!(h.expiry_gauge("sa"), Some(start() + HOUR));
    // An audience a client asked for, exchanged last and expiring later: the gauge does not move.
    h.cache.get(&"sa/adhoc").await.unwrap();
    assert_eq!(h.expiry_gauge("sa"), Some(start() + HOUR));
    // Nor does an identity with no configured key get one.
    h.cache.get(&"unconfigured/adhoc").await.unwrap();
    assert_eq!(h.expiry_gauge("unconfigured"), None);
}

#[tokio::test(start_paused = true)]
async fn the_expiry_gauge_shows_the_earliest_of_an_identitys_configured_keys() {
    const MINUTE: Duration = Duration::from_secs(60);
    let policy = CachePolicy { refresh_jitter: 0.0, ..CachePolicy::default() };
    let h = Harness::with_lifetimes(policy, Duration::ZERO, ok, |key| match key {
        "sa/scopes" => 30 * MINUTE,
        "sa/audience" => 100 * MINUTE,
        _ => HOUR,
    });
    for key in ["sa/scopes", "sa/audience", "other/scopes"] {
        h.cache.pin(key);
        h.cache.get(&key).await.unwrap();
    }
    assert_eq!(h.expiry_gauge("sa"), Some(start() + 30 * MINUTE));
    assert_eq!(h.expiry_gauge("other"), Some(start() + HOUR));
    // At 50 min the audience is refreshed last (to 150 min); the scopes' token, refreshed at
    // 45 min, expires first (75 min).
    tokio::time::sleep(50 * MINUTE + Duration::from_secs(1)).await;
    assert_eq!((h.calls_for("sa/scopes"), h.calls_for("sa/audience")), (4, 2));
    assert_eq!(h.expiry_gauge("sa"), Some(start() + 75 * MINUTE));
}

#[tokio::test(start_paused = true)]
async fn a_request_wait_of_forever_waits_for_the_retry_instead_of_panicking() {
    // What `request_wait = "400000000000y"` would build, were it not refused at load.
    let policy = CachePolicy { request_wait: Duration::MAX, exchange_timeout: Duration::MAX, ..CachePolicy::default() };
    let h = Harness::new(policy, Duration::ZERO, |n, _| {
        if n == 1 { Err(ExchangeError::retryable("token service answered 503")) } else { Ok(()) }
    });
    assert!(h.cache.get(&"k").await.unwrap_err().to_string().contains("503"));
    // A retry is scheduled: this request waits for it, however long it may wait.
    assert_eq!(h.cache.get(&"k").await.unwrap().value, 2);
}

#[tokio::test(start_paused = true)]
async fn retry_delays_of_forever_and_a_refresh_point_that_is_no_fraction_cannot_panic_the_driver() {
    let policy = CachePolicy {
        refresh_at: f64::NAN,
        refresh_jitter: f64::NAN,
        retry_min: Duration::MAX,
        retry_max: Duration::MAX,
        adhoc_burst: u32::MAX,
        adhoc_interval: Duration::MAX,
        ..CachePolicy::default()
    };
    let mut h = Harness::new(policy, Duration::ZERO, |n, _| {
        if n == 1 { Err(ExchangeError::retryable("token service answered 503")) } else { Ok(()) }
    });
    h.cache.pin("k");
    assert!(h.cache.get(&"k").await.unwrap_err().to_string().contains("503"));
    // The retry is "never": the next request is answered at once.
    let before = h.clock.now();
    assert!(h.cache.get(&"k").await.unwrap_err().to_string().contains("503"));
    assert_eq!(h.clock.now(), before);
    // The driver is alive: a new token makes it retry at once.
    h.tokens.set(token("pod-b"));
    h.wait_for_calls(2).await;
    assert_eq!(h.cache.get(&"k").await.unwrap().value, 2);
    // A refresh point that is not a fraction of the lifetime: the default one (half of it), and
    // a jitter that is not one: none.
    h.wait_for_calls(3).await;
    let calls = h.calls();
    assert_eq!(calls[2].at.duration_since(calls[1].at).unwrap(), HOUR / 2);
    // An interval of "forever" with a burst of u32::MAX: new keys are still served.
    for key in ["x", "y", "z"] {
        h.cache.get(&key).await.unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn an_interval_of_forever_refuses_new_keys_after_the_burst() {
    let policy = CachePolicy { adhoc_burst: 1, adhoc_interval: Duration::MAX, ..CachePolicy::default() };
    let h = Harness::new(policy, Duration::ZERO, ok);
    h.cache.get(&"x").await.unwrap();
    let err = h.cache.get(&"y").await.unwrap_err();
    assert!(rate_limited(&err), "{err}");
}

#[tokio::test(start_paused = true)]
async fn an_expiry_past_year_9999_does_not_panic_the_json_exchange_log_line() {
    let json_logs = tracing_subscriber::fmt().json().with_writer(std::io::sink).finish();
    let _logging = tracing::subscriber::set_default(json_logs);
    // What a broken token service (or a proxy) could answer: valid for ten thousand years.
    let h = Harness::with_lifetimes(CachePolicy::default(), Duration::ZERO, ok, |_| {
        Duration::from_secs(10_000 * 365 * 24 * 3600)
    });
    assert_eq!(h.cache.get(&"k").await.unwrap().value, 1);
}

/// The instants (since start) of the exchanges of each of `keys` keys pinned at once, after
/// `cycles` refreshes each.
async fn refresh_times(policy: CachePolicy, keys: usize, cycles: usize) -> Vec<Vec<Duration>> {
    let mut h = Harness::new(CachePolicy { max_entries: keys, ..policy }, Duration::ZERO, ok);
    let names: Vec<&'static str> = (0..keys).map(|i| &*Box::leak(format!("k{i}").into_boxed_str())).collect();
    for name in &names {
        h.cache.pin(name);
    }
    // Keys refreshing early may refresh again before the last one's first refresh.
    let mut n = keys * (cycles + 1);
    while names.iter().any(|name| h.calls_for(name) <= cycles) {
        h.wait_for_calls(n).await;
        n += 1;
    }
    let calls = h.calls();
    names
        .iter()
        .map(|name| calls.iter().filter(|c| c.key == *name).map(|c| h.elapsed(c.at)).take(cycles + 1).collect())
        .collect()
}

#[tokio::test(start_paused = true)]
async fn refreshes_of_credentials_issued_together_spread_over_the_window_before_refresh_at() {
    // Default: refresh_at 0.5, jitter 0.6: between 20% and 50% of the lifetime.
    let times = refresh_times(CachePolicy { rng_seed: Some(7), ..CachePolicy::default() }, 50, 1).await;
    let firsts: Vec<Duration> = times.iter().map(|t| t[1]).collect();
    for at in &firsts {
        assert!((HOUR.mul_f64(0.2)..=HOUR / 2).contains(at), "refresh at {at:?}");
    }
    let (early, late) = (firsts.iter().min().unwrap(), firsts.iter().max().unwrap());
    assert!(*late - *early > HOUR / 10, "refreshes bunched between {early:?} and {late:?}");
    let distinct: std::collections::HashSet<_> = firsts.iter().collect();
    assert!(distinct.len() > 45, "only {} distinct refresh instants of 50", distinct.len());
}

#[tokio::test(start_paused = true)]
async fn every_refresh_is_jittered_anew_and_never_later_than_refresh_at() {
    let policy = CachePolicy { refresh_at: 0.8, refresh_jitter: 0.25, rng_seed: Some(1), ..CachePolicy::default() };
    for key in refresh_times(policy, 5, 4).await {
        for pair in key.windows(2) {
            let interval = pair[1] - pair[0];
            assert!((HOUR.mul_f64(0.6)..=HOUR.mul_f64(0.8)).contains(&interval), "refreshed after {interval:?}");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn the_same_seed_gives_the_same_schedule() {
    let policy = CachePolicy { rng_seed: Some(42), ..CachePolicy::default() };
    let first = refresh_times(policy.clone(), 10, 2).await;
    let again = refresh_times(policy, 10, 2).await;
    let other = refresh_times(CachePolicy { rng_seed: Some(43), ..CachePolicy::default() }, 10, 2).await;
    assert_eq!(first, again);
    assert_ne!(first, other);
}

fn throttled_for_a_minute(n: usize, _: &SubjectToken) -> Result<(), ExchangeError> {
    if n <= 2 {
        Err(ExchangeError::throttled("HTTP 429 Too Many Requests", Some(Duration::from_secs(60))))
    } else {
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn a_throttled_exchange_is_retried_no_sooner_than_retry_after() {
    // A spread of 1 s above the floor, so that the floor is what this test sees (the default
    // spread is on a fleet's time scale: the tests below).
    let mut h = Harness::new(
        CachePolicy { rng_seed: Some(3), throttle_retry: Duration::from_secs(1), ..CachePolicy::default() },
        Duration::ZERO,
        throttled_for_a_minute,
    );
    h.cache.pin("k");
    h.wait_for_calls(3).await;
    let at: Vec<Duration> = h.calls().iter().map(|c| h.elapsed(c.at)).collect();
    for pair in at.windows(2) {
        let gap = pair[1] - pair[0];
        // The floor, plus at most the window's width (0.75x `throttle_retry`, then 0.5x).
        assert!((Duration::from_secs(60)..=Duration::from_secs(62)).contains(&gap), "retried after {gap:?}");
    }
    assert!(h.cache.statuses()[0].ready());
    let text = h.metrics.encode();
    assert!(
        text.contains(r#"keyless_exchanges_total{provider="test",identity="test-identity",outcome="throttled"} 2"#),
        "{text}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_waiting_request_does_not_bring_a_throttled_retry_forward() {
    let h = Harness::new(
        CachePolicy { request_wait: Duration::from_secs(5), ..CachePolicy::default() },
        Duration::ZERO,
        throttled_for_a_minute,
    );
    h.cache.pin("k");
    let err = h.cache.get(&"k").await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Throttled);
    assert_eq!(err.retry_after, Some(Duration::from_secs(60)));
    // Requests keep coming; the retry stays a minute away, and is answered with the throttling at once.
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(h.cache.get(&"k").await.unwrap_err().class, ErrorClass::Throttled);
    }
    assert_eq!(h.calls().len(), 1);
    let status = &h.cache.statuses()[0];
    assert_eq!(status.last_error.as_ref().map(|e| e.class), Some(ErrorClass::Throttled));
}

#[tokio::test(start_paused = true)]
async fn a_new_token_does_not_bring_a_throttled_retry_forward() {
    let mut h = Harness::new(CachePolicy::default(), Duration::ZERO, throttled_for_a_minute);
    h.cache.pin("k");
    h.wait_for_calls(1).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    h.tokens.set(token("pod-b"));
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(h.calls().len(), 1, "retried 20 s after a Retry-After of 60 s");
    h.wait_for_calls(2).await;
    assert!(h.elapsed(h.calls()[1].at) >= Duration::from_secs(60));
}

/// The gaps between the exchanges made so far.
fn gaps(h: &Harness) -> Vec<Duration> {
    let at: Vec<Duration> = h.calls().iter().map(|c| h.elapsed(c.at)).collect();
    at.windows(2).map(|pair| pair[1] - pair[0]).collect()
}

/// Throttled four times without `Retry-After` (AWS STS's answer), then issued.
fn throttled_four_times(n: usize, _: &SubjectToken) -> Result<(), ExchangeError> {
    if n <= 4 { Err(ExchangeError::throttled("Throttling: Rate exceeded", None)) } else { Ok(()) }
}

/// A fleet throttled together must not come back together within seconds (issue 28): ten
/// thousand pods retrying on a 1 s backoff made ten throttled calls per waiting pod. The first
/// retry waits 45-90 s, each further one 30-60 s (the default `throttle_retry` of 60 s).
#[tokio::test(start_paused = true)]
async fn throttled_retries_wait_on_a_fleets_time_scale() {
    for seed in 0..20 {
        let mut h = Harness::new(
            CachePolicy { rng_seed: Some(seed), ..CachePolicy::default() },
            Duration::ZERO,
            throttled_four_times,
        );
        h.cache.pin("k");
        h.wait_for_calls(5).await;
        let gaps = gaps(&h);
        let secs = |s| Duration::from_secs(s);
        assert!((secs(45)..=secs(90)).contains(&gaps[0]), "seed {seed}: first retry after {gaps:?}");
        for gap in &gaps[1..] {
            assert!((secs(30)..=secs(60)).contains(gap), "seed {seed}: further retries after {gaps:?}");
        }
        assert!(h.cache.statuses()[0].ready());
    }
}

/// A `Retry-After` longer than the window's start moves it there, and the window keeps its
/// width: pods told the same `Retry-After` (Entra sends 60 s) do not all return in its second.
#[tokio::test(start_paused = true)]
async fn a_longer_retry_after_moves_the_throttled_window_and_keeps_its_spread() {
    let mut firsts = Vec::new();
    for seed in 0..10 {
        let mut h = Harness::new(
            CachePolicy { rng_seed: Some(seed), ..CachePolicy::default() },
            Duration::ZERO,
            throttled_for_a_minute,
        );
        h.cache.pin("k");
        h.wait_for_calls(3).await;
        let gaps = gaps(&h);
        let secs = |s| Duration::from_secs(s);
        assert!((secs(60)..=secs(60 + 45)).contains(&gaps[0]), "seed {seed}: {gaps:?}");
        assert!((secs(60)..=secs(60 + 30)).contains(&gaps[1]), "seed {seed}: {gaps:?}");
        firsts.push(gaps[0]);
    }
    firsts.sort();
    firsts.dedup_by(|a, b| a.as_secs() == b.as_secs());
    assert!(firsts.len() >= 5, "ten pods throttled together came back in {} distinct seconds", firsts.len());
}

/// Issued once, then throttled without `Retry-After` for good.
fn throttled_after_the_first(n: usize, _: &SubjectToken) -> Result<(), ExchangeError> {
    if n == 1 { Ok(()) } else { Err(ExchangeError::throttled("HTTP 429 Too Many Requests", None)) }
}

/// The fleet-scale wait never outlasts a held credential: a throttled refresh retries within
/// half the time the credential has left, so a credential of a few minutes (quotas.rs runs 30 s
/// ones) is retried several times before it expires, and it is served until then.
#[tokio::test(start_paused = true)]
async fn a_throttled_refresh_retries_within_half_the_time_the_credential_has_left() {
    let mut h = Harness::with_lifetimes(
        CachePolicy { refresh_jitter: 0.0, rng_seed: Some(5), ..CachePolicy::default() },
        Duration::ZERO,
        throttled_after_the_first,
        |_| Duration::from_secs(120),
    );
    h.cache.pin("k");
    // Refreshed at 60 s (half the lifetime), then throttled; the credential expires at 120 s.
    h.wait_for_calls(4).await;
    let expiry = Duration::from_secs(120);
    let at: Vec<Duration> = h.calls().iter().map(|c| h.elapsed(c.at)).collect();
    assert_eq!(at[1], Duration::from_secs(60), "{at:?}");
    for pair in at[1..].windows(2) {
        let left = expiry - pair[0];
        assert!(
            pair[1] - pair[0] <= left / 2,
            "retried {:?} after a throttle with {left:?} left: {at:?}",
            pair[1] - pair[0]
        );
    }
    // Served to its end.
    tokio::time::sleep_until(tokio::time::Instant::now() + (expiry - at[3]) - Duration::from_secs(1)).await;
    assert_eq!(h.cache.get(&"k").await.unwrap().value, 1);
}
