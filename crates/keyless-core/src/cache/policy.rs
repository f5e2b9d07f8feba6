//! A cache's timing: its policy, the refresh point, retry and throttling delays, the random draws.

use std::fmt::Debug;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use backon::{BackoffBuilder as _, ExponentialBuilder};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use tokio::time::Instant;

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
pub(super) const FOREVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// `at + duration` without overflow: saturates to [`FOREVER`] after `at`. Instants count from
/// boot, so that cannot overflow either; were it to, `at` is an answer and a panic is not.
pub(super) fn after(at: Instant, duration: Duration) -> Instant {
    at.checked_add(duration.min(FOREVER)).unwrap_or(at)
}

/// The refresh point as a fraction of the lifetime. Config validation keeps it inside (0, 1); a
/// policy built in code with anything else (NaN, 0, 7) gets the default, not a panic or a spin.
pub(super) fn refresh_fraction(policy: &CachePolicy) -> f64 {
    let f = policy.refresh_at;
    if f > 0.0 && f < 1.0 { f } else { CachePolicy::default().refresh_at }
}

/// When to refresh a credential that has `lifetime` left: at a uniformly random point (`unit` in
/// [0, 1)) of the window `[refresh_at * (1 - refresh_jitter), refresh_at]` of its lifetime. A
/// jitter outside `[0, 1)` (config validation forbids it) counts as none.
pub(super) fn refresh_delay(policy: &CachePolicy, lifetime: Duration, unit: f64) -> Duration {
    let at = refresh_fraction(policy);
    let jitter = policy.refresh_jitter;
    let jitter = if jitter > 0.0 && jitter < 1.0 { jitter } else { 0.0 };
    let fraction = at * (1.0 - jitter * (1.0 - unit.clamp(0.0, 1.0)));
    Duration::try_from_secs_f64(lifetime.as_secs_f64() * fraction).unwrap_or(lifetime)
}

/// The cache's random draws, seeded by `rng_seed` when given (tests, the fleet simulation).
pub(super) struct Draws(Mutex<StdRng>);

impl Draws {
    pub(super) fn new(seed: Option<u64>) -> Self {
        Self(Mutex::new(seed.map_or_else(StdRng::from_os_rng, StdRng::seed_from_u64)))
    }

    /// A uniform draw in [0, 1).
    pub(super) fn unit(&self) -> f64 {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).random::<f64>()
    }
}

/// (backon's own jitter only adds to the delay, which keeps synchronized clients synchronized).
pub(super) struct RetryDelays {
    schedule: backon::ExponentialBackoff,
    cap: Duration,
}

impl RetryDelays {
    pub(super) fn new(policy: &CachePolicy) -> Self {
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
    pub(super) fn next_delay(&mut self, unit: f64) -> Duration {
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
pub(super) fn throttled_delay(
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
