//! `keyless-bench fleet`: a rollout of many pods against token services with a quota, simulated
//! with the real `keyless-core` cache (its refresh schedule, jitter, backoff and throttling
//! rules: one `CredentialCache` per pod) on tokio's paused clock, so 10,000 pods over six hours
//! of virtual time run in seconds. Only the token service is a model: the emulator's quota (a
//! token bucket of `quota` exchanges per second, `keyless_emulator::Quotas`) answering what the
//! cloud answers over quota (docs/fleet.md).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use keyless_core::clock::{SharedClock, TokioClock};
use keyless_core::{
    CachePolicy, CredentialCache, Exchange, ExchangeError, Expiring, Issued, Metrics, SubjectToken, TokenSource,
};
use keyless_emulator::{Quota, Quotas, Service};
use tokio::sync::Notify;
use tokio::time::Instant;

/// How long an exchange takes (the clouds answer in tens of milliseconds).
const LATENCY: Duration = Duration::from_millis(50);
/// How often each pod's app asks for its credential (often enough to catch one served past its
/// expiry: a 1 h credential refreshed at 30-50% of its lifetime has 30 minutes of retries left).
const APP_PERIOD: Duration = Duration::from_secs(600);
/// The width of the bins the steady-state peak is measured in.
const BIN: usize = 10;

/// The simulated fleet.
#[derive(Debug, Clone, clap::Args)]
pub struct FleetOptions {
    /// Pods, started evenly over --rollout.
    #[arg(long, default_value_t = 10_000)]
    pub pods: usize,
    /// Exchanges per second each cloud's token service answers (and its burst).
    #[arg(long, default_value_t = 50.0)]
    pub quota: f64,
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub rollout: Duration,
    /// Lifetime of the credentials the clouds issue.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub lifetime: Duration,
    /// Virtual time simulated.
    #[arg(long, default_value = "6h", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Write exchanges per second (CSV per cloud) here, for scripts/fleet-plot.
    #[arg(long, value_name = "DIR")]
    pub csv: Option<PathBuf>,
    /// The jittered schedule's `cache.refresh_jitter` [default: keyless's default].
    #[arg(long)]
    pub jitter: Option<f64>,
    /// `cache.throttle_retry` of every pod [default: keyless's default].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub throttle_retry: Option<Duration>,
    /// The clouds whose throttling answers to simulate [default: all three].
    #[arg(long, value_delimiter = ',', value_parser = cloud_parser())]
    pub clouds: Vec<Cloud>,
}

/// Which cloud's answer over quota the token service gives (docs/protocols.md 9): AWS STS 400
/// `Throttling` without `Retry-After`, Google 429 `RESOURCE_EXHAUSTED` and Entra 429 with
/// `Retry-After` (when the next call fits). The emulator's clouds, whose quotas these are.
pub use keyless_emulator::Cloud;

/// `--clouds`'s values: each cloud's name (`aws`, `gcp`, `azure`), listed in `--help`.
pub fn cloud_parser() -> impl clap::builder::TypedValueParser<Value = Cloud> {
    use clap::builder::TypedValueParser as _;
    // Only the listed names get through, each a cloud's.
    clap::builder::PossibleValuesParser::new(Cloud::ALL.map(Cloud::dir_name))
        .map(|name| Cloud::ALL.into_iter().find(|c| c.dir_name() == name).unwrap_or(Cloud::Aws))
}

fn sends_retry_after(cloud: Cloud) -> bool {
    cloud != Cloud::Aws
}

/// The emulated token service whose quota the simulated one is: the cloud's first service in the
/// emulator's order (`aws-sts`, `gcp-sts`, `azure-token`; Google's IAM Credentials comes after its
/// STS), found by the emulator's names rather than listed again here.
fn service(cloud: Cloud) -> Service {
    let prefix = format!("{}-", cloud.dir_name());
    Service::ALL.into_iter().find(|s| s.name().starts_with(&prefix)).unwrap_or(Service::AwsSts)
}

/// Today's schedule (every refresh at `refresh_at`) or the new one (jittered, the default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schedule {
    Fixed,
    Jittered,
}

impl Schedule {
    fn policy(self, seed: u64, options: &FleetOptions) -> CachePolicy {
        let defaults = CachePolicy::default();
        let jitter = if self == Self::Fixed { 0.0 } else { options.jitter.unwrap_or(defaults.refresh_jitter) };
        let throttle_retry = options.throttle_retry.unwrap_or(defaults.throttle_retry);
        CachePolicy { refresh_jitter: jitter, throttle_retry, rng_seed: Some(seed), ..defaults }
    }
}

/// The emulator's quota of the cloud's token service, with the cloud's answer over it; counts
/// every call per second.
struct TokenService {
    cloud: Cloud,
    quotas: Quotas,
    start: Instant,
    /// Per second since `start`: (calls, throttled calls).
    per_second: Mutex<Vec<(u32, u32)>>,
}

impl TokenService {
    fn new(cloud: Cloud, quota: f64, duration: Duration) -> Self {
        let quotas = Quotas::default();
        quotas.set(service(cloud), Some(Quota::per_second(quota)));
        let seconds = usize::try_from(duration.as_secs()).unwrap_or(usize::MAX).saturating_add(1);
        Self { cloud, quotas, start: Instant::now(), per_second: Mutex::new(vec![(0, 0); seconds]) }
    }

    /// `Ok` within the quota; else the throttling error the adapter would make of the answer.
    fn call(&self) -> Result<(), ExchangeError> {
        let admitted = self.quotas.admit(service(self.cloud));
        let second = usize::try_from(self.start.elapsed().as_secs()).unwrap_or(usize::MAX);
        if let Some(count) = self.per_second.lock().unwrap_or_else(PoisonError::into_inner).get_mut(second) {
            count.0 += 1;
            count.1 += u32::from(admitted.is_err());
        }
        admitted.map_err(|retry_after| {
            let retry_after = sends_retry_after(self.cloud).then_some(retry_after);
            ExchangeError::throttled("throttled by the simulated token service", retry_after)
        })
    }
}

/// One pod's exchange with the shared token service. Its first success is the instant the pod
/// turns ready (the cache publishes a credential as soon as it has one).
struct PodExchange {
    service: Arc<TokenService>,
    clock: SharedClock,
    lifetime: Duration,
    ready: Arc<Notify>,
}

impl Exchange for PodExchange {
    type Key = ();
    type Credential = ();

    fn provider(&self) -> &'static str {
        self.service.cloud.dir_name()
    }

    fn identity(&self, _key: &()) -> String {
        "pod".to_owned()
    }

    async fn exchange(&self, _key: &(), _token: &SubjectToken) -> Result<Issued<()>, ExchangeError> {
        tokio::time::sleep(LATENCY).await;
        self.service.call()?;
        self.ready.notify_one();
        Ok(Issued::new(Expiring::new((), self.clock.now() + self.lifetime)))
    }
}

/// What the apps saw.
#[derive(Debug, Default)]
struct Apps {
    expired_served: AtomicU64,
    failed_after_ready: AtomicU64,
}

/// Who exchanges: one credential cache per unit, started when the unit's first pod starts; every
/// pod of a unit is served by its cache. A sidecar is a unit of one pod; in node mode the unit is
/// the pods of one ServiceAccount on one node (fleet_node.rs).
#[derive(Debug, Clone)]
pub struct Layout {
    /// Per unit, when each of its pods starts after the rollout began (ascending).
    pub units: Vec<Vec<Duration>>,
}

impl Layout {
    /// One sidecar per pod, the pods started evenly over `rollout`.
    pub fn sidecars(pods: usize, rollout: Duration) -> Self {
        Self { units: (0..pods).map(|i| vec![rollout.mul_f64(i as f64 / pods.max(1) as f64)]).collect() }
    }

    #[cfg(test)]
    pub fn pods(&self) -> usize {
        self.units.iter().map(Vec::len).sum()
    }
}

/// The measurements of one cloud under one schedule.
#[derive(Debug, Clone)]
pub struct FleetRun {
    pub cloud: Cloud,
    /// The `refresh_jitter` the pods ran with (0: [`Schedule::Fixed`]).
    pub jitter: f64,
    /// Credential caches that exchange (pods in sidecar mode).
    pub units: usize,
    /// When the last pod held a valid credential (`None`: some never did).
    pub all_ready: Option<Duration>,
    /// units / Q: no schedule can be faster.
    pub floor: Duration,
    /// `units - Q * T` over a rollout of `T` seconds: first exchanges no retry policy can keep
    /// from being throttled once (the quota admits `Q * T` of them while the rollout lasts).
    pub unavoidable: u64,
    pub calls: u64,
    pub throttled: u64,
    /// Mean exchanges per hour after three refresh cycles (the steady state).
    pub steady_per_hour: f64,
    /// The highest 10-second exchange rate after three refresh cycles, over its mean.
    pub steady_peak_over_mean: f64,
    pub expired_served: u64,
    pub failed_after_ready: u64,
    /// Per second: (calls, throttled calls).
    pub per_second: Vec<(u32, u32)>,
}

impl FleetRun {
    pub fn ready_ratio(&self) -> Option<f64> {
        self.all_ready.map(|at| at.as_secs_f64() / self.floor.as_secs_f64())
    }

    pub fn throttled_share(&self) -> f64 {
        if self.calls == 0 { 0.0 } else { self.throttled as f64 / self.calls as f64 }
    }

    /// Throttled calls over the unavoidable ones (`None` when none are unavoidable).
    pub fn throttled_ratio(&self) -> Option<f64> {
        (self.unavoidable > 0).then(|| self.throttled as f64 / self.unavoidable as f64)
    }
}

/// Runs one cloud under one schedule on a fresh paused-clock runtime, one sidecar per pod.
pub fn simulate(options: &FleetOptions, cloud: Cloud, schedule: Schedule) -> std::io::Result<FleetRun> {
    simulate_layout(options, cloud, schedule, &Layout::sidecars(options.pods, options.rollout))
}

/// Runs one cloud under one schedule with the caches of `layout`.
pub fn simulate_layout(
    options: &FleetOptions,
    cloud: Cloud,
    schedule: Schedule,
    layout: &Layout,
) -> std::io::Result<FleetRun> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build()?;
    Ok(runtime.block_on(run(options, cloud, schedule, layout)))
}

async fn run(options: &FleetOptions, cloud: Cloud, schedule: Schedule, layout: &Layout) -> FleetRun {
    let start = Instant::now();
    let end = start + options.duration;
    let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let clock: SharedClock = Arc::new(TokioClock::new(wall));
    let service = Arc::new(TokenService::new(cloud, options.quota, options.duration));
    let apps = Arc::new(Apps::default());
    let tokens = TokenSource::fixed(subject_token(wall + options.duration * 2));
    let metrics = Metrics::new();
    let policy_options = Arc::new(options.clone());
    // When each unit first held a credential, since the rollout started.
    let ready_at: Arc<Mutex<Vec<Option<Duration>>>> = Arc::new(Mutex::new(vec![None; layout.units.len()]));
    let mut units = tokio::task::JoinSet::new();
    for (i, pods) in layout.units.iter().enumerate() {
        let starts_at = start + pods.first().copied().unwrap_or_default();
        let ready = Arc::new(Notify::new());
        let exchange = PodExchange {
            service: service.clone(),
            clock: clock.clone(),
            lifetime: options.lifetime,
            ready: ready.clone(),
        };
        let (tokens, clock, metrics, apps, ready_at, policy_options) =
            (tokens.clone(), clock.clone(), metrics.clone(), apps.clone(), ready_at.clone(), policy_options.clone());
        units.spawn(async move {
            tokio::time::sleep_until(starts_at).await;
            let policy = schedule.policy(i as u64, &policy_options);
            let cache = CredentialCache::new(exchange, tokens, policy, clock.clone(), metrics);
            cache.pin(());
            ready.notified().await;
            ready_at.lock().unwrap_or_else(PoisonError::into_inner)[i] = Some(Instant::now() - start);
            app(&cache, end, &apps, &clock).await;
        });
    }
    tokio::time::sleep_until(end).await;
    units.abort_all();
    let per_second = std::mem::take(&mut *service.per_second.lock().unwrap_or_else(PoisonError::into_inner));
    let ready_at = ready_at.lock().unwrap_or_else(PoisonError::into_inner).clone();
    // A pod is ready once it has started and its unit holds a credential.
    let all_ready = layout.units.iter().zip(&ready_at).try_fold(Duration::ZERO, |latest, (pods, ready)| {
        let ready = (*ready)?;
        Some(pods.iter().map(|&started| started.max(ready)).fold(latest, Duration::max))
    });
    let steady_from = options.lifetime.mul_f64(3.0 * CachePolicy::default().refresh_at);
    let units = layout.units.len();
    let admitted_during_rollout = (options.quota * options.rollout.as_secs_f64()).floor() as u64;
    FleetRun {
        cloud,
        jitter: schedule.policy(0, options).refresh_jitter,
        units,
        all_ready,
        floor: Duration::from_secs_f64(units as f64 / options.quota),
        unavoidable: (units as u64).saturating_sub(admitted_during_rollout),
        calls: per_second.iter().map(|c| u64::from(c.0)).sum(),
        throttled: per_second.iter().map(|c| u64::from(c.1)).sum(),
        steady_per_hour: per_hour(&per_second, steady_from),
        steady_peak_over_mean: peak_over_mean(&per_second, steady_from),
        expired_served: apps.expired_served.load(Ordering::Relaxed),
        failed_after_ready: apps.failed_after_ready.load(Ordering::Relaxed),
        per_second,
    }
}

/// A ready pod's app: asks for its credential every [`APP_PERIOD`] until `end`.
async fn app<E: Exchange<Key = ()>>(cache: &CredentialCache<E>, end: Instant, apps: &Apps, clock: &SharedClock) {
    while Instant::now() < end {
        match cache.get(&()).await {
            Ok(credential) if !credential.is_valid_at(clock.now()) => {
                apps.expired_served.fetch_add(1, Ordering::Relaxed);
            }
            Ok(_) => {}
            Err(_) => {
                apps.failed_after_ready.fetch_add(1, Ordering::Relaxed);
            }
        }
        tokio::time::sleep(APP_PERIOD).await;
    }
}

/// Mean calls per hour from `from` on.
fn per_hour(per_second: &[(u32, u32)], from: Duration) -> f64 {
    let from = usize::try_from(from.as_secs()).unwrap_or(usize::MAX).min(per_second.len());
    let steady = &per_second[from..];
    let calls: u64 = steady.iter().map(|c| u64::from(c.0)).sum();
    if steady.is_empty() { 0.0 } else { calls as f64 * 3600.0 / steady.len() as f64 }
}

/// The highest [`BIN`]-second call count from `from` on, over the mean of those bins.
fn peak_over_mean(per_second: &[(u32, u32)], from: Duration) -> f64 {
    let from = usize::try_from(from.as_secs()).unwrap_or(usize::MAX).min(per_second.len());
    let bins: Vec<u64> =
        per_second[from..].chunks_exact(BIN).map(|bin| bin.iter().map(|c| u64::from(c.0)).sum()).collect();
    let mean = bins.iter().sum::<u64>() as f64 / bins.len().max(1) as f64;
    let peak = bins.iter().copied().max().unwrap_or(0) as f64;
    if mean > 0.0 { peak / mean } else { 0.0 }
}

/// An unsigned projected-token-shaped JWT: the simulated token services do not look at it.
fn subject_token(exp: SystemTime) -> SubjectToken {
    use base64::Engine as _;
    let b64 = |v: &serde_json::Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let exp = exp.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let header = b64(&serde_json::json!({ "alg": "RS256", "typ": "JWT" }));
    let claims = b64(&serde_json::json!({
        "iss": "https://fleet.invalid", "sub": "system:serviceaccount:fleet:pod", "aud": ["fleet"], "exp": exp
    }));
    #[allow(clippy::expect_used)] // a well-formed JWT built just above
    SubjectToken::parse(&format!("{header}.{claims}.c2ln")).expect("the simulation's JWT parses")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A quota below one exchange a second still admits one at a time: the burst is at least one
    /// (the simulation's own bucket once held at most `quota` tokens, so below 1 never a whole one).
    #[test]
    fn a_quota_below_one_exchange_a_second_admits_exchanges() {
        let options = FleetOptions {
            pods: 10,
            quota: 0.5,
            rollout: Duration::from_secs(10),
            lifetime: Duration::from_secs(3600),
            duration: Duration::from_secs(600),
            csv: None,
            jitter: None,
            throttle_retry: None,
            clouds: Vec::new(),
        };
        for cloud in Cloud::ALL {
            let run = simulate(&options, cloud, Schedule::Jittered).unwrap();
            assert!(
                run.all_ready.is_some(),
                "{cloud:?}: never ready ({} calls, {} throttled)",
                run.calls,
                run.throttled
            );
            assert!(run.throttled > 0, "{cloud:?}: 10 pods in 10 s over a quota of 0.5/s are throttled");
        }
    }
}
