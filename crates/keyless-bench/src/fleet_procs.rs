//! `keyless-bench fleet-procs`: the fleet benchmark with real processes (issue 17). One
//! `keyless emulate` whose token services enforce a quota, and one `keyless serve` per pod (its
//! own process, ports, config and AWS authorization file; all three clouds), started evenly over
//! the rollout. Each pod's app asks its three credential endpoints every few seconds and checks
//! the served expiry is in the future. The emulator caps the lifetime of what it issues
//! (`keyless emulate --credential-lifetime`), so three refresh cycles take minutes, not 1.5 h: a
//! time-scaled run (docs/benchmarks.md, "Fleet").

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use hyper::header::HeaderValue;
use keyless_registry::endpoints::{ClientRequest, Endpoint, Presented};
use rand::Rng as _;
use serde_json::{Value, json};
use tokio::process::Child;
use tokio::time::Instant;

use crate::endpoints::AZURE_RESOURCE;
use crate::stack::{self, Emulator, Launcher, sidecar_toml};
use crate::{BenchError, procs};

/// The clouds each pod uses, in report order.
pub const CLOUDS: [&str; 3] = ["aws", "gcp", "azure"];
/// The emulated token service whose quota is each cloud's (Google's STS: IAM's quota is 10x it,
/// as Google's real quotas are: docs/fleet.md).
const QUOTA_SERVICES: [&str; 3] = ["aws-sts", "gcp-sts", "azure-token"];
/// Every emulated token service the pods call, in CSV order.
const SERVICES: [&str; 4] = ["aws-sts", "gcp-sts", "gcp-iam", "azure-token"];
/// keyless's default `cache.refresh_at`: a refresh cycle is this share of the lifetime.
const REFRESH_AT: f64 = 0.5;
/// The width of the bins the steady-state peak is measured in.
const BIN: usize = 10;
/// How often a pod not yet ready is asked `/readyz` (the resolution of the ready times).
const READY_POLL: Duration = Duration::from_millis(1000);

#[derive(Debug, Clone, clap::Args)]
pub struct FleetProcsOptions {
    /// `keyless serve` processes (pods), started evenly over --rollout.
    #[arg(long, default_value_t = 300)]
    pub pods: usize,
    /// Exchanges per second each cloud's token service answers (and its burst).
    #[arg(long, default_value_t = 5.0)]
    pub quota: f64,
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub rollout: Duration,
    /// The lifetime the emulator caps every credential it issues at (real clouds: 1 h).
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub credential_lifetime: Duration,
    /// Refresh cycles (`refresh_at` = 0.5 of the lifetime each) before the steady state is measured.
    #[arg(long, default_value_t = 3)]
    pub cycles: u32,
    /// The steady state measured after the cycles [default: one credential lifetime].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub steady: Option<Duration>,
    /// How often each pod's app asks each of its three credential endpoints.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    pub app_period: Duration,
    /// The `keyless` that runs as each pod (the sidecar build) [default: `keyless` beside this binary].
    #[arg(long)]
    pub keyless: Option<PathBuf>,
    /// The `keyless` that runs `keyless emulate` (a full build) [default: --keyless].
    #[arg(long)]
    pub emulator: Option<PathBuf>,
    /// Write calls and throttled calls per second of each service here (`fleet-procs.csv`).
    #[arg(long, value_name = "DIR")]
    pub csv: Option<PathBuf>,
    /// Keep the pods' configs and logs here [default: a temporary directory, removed at the end].
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
}

impl FleetProcsOptions {
    /// From the start of the rollout: when the steady state begins, and when the run ends.
    fn schedule(&self) -> (Duration, Duration) {
        let steady_from = self.credential_lifetime.mul_f64(f64::from(self.cycles) * REFRESH_AT);
        let steady = self.steady.unwrap_or(self.credential_lifetime);
        (steady_from, steady_from.max(self.rollout) + steady)
    }
}

/// What one pod's app saw, per cloud (index as [`CLOUDS`]).
#[derive(Debug, Default)]
struct AppStats {
    requests: [AtomicU64; 3],
    expired: [AtomicU64; 3],
    failed: [AtomicU64; 3],
    /// The least lifetime left of any credential served, in seconds (i64::MAX: none served).
    min_left_secs: [AtomicI64; 3],
}

impl AppStats {
    fn new() -> Self {
        let stats = Self::default();
        for min in &stats.min_left_secs {
            min.store(i64::MAX, Ordering::Relaxed);
        }
        stats
    }
}

/// One pod's measurements.
#[derive(Debug, Clone, Default)]
pub struct PodResult {
    /// Since the rollout started, per cloud: when the pod first held its credential.
    pub ready: [Option<Duration>; 3],
    /// Times `keyless serve` was started again because it exited before getting ready (a port
    /// another process took between the bench picking it and keyless binding it).
    pub restarts: u32,
    /// It exited after getting ready.
    pub died: bool,
    /// utime + stime.
    pub cpu: Duration,
    /// How long the process ran.
    pub alive: Duration,
    pub rss_kib: u64,
    pub hwm_kib: u64,
    pub anon_kib: u64,
    /// Proportional set size (shared pages split between the processes sharing them).
    pub pss_kib: u64,
}

/// Everything measured.
#[derive(Debug, Clone)]
pub struct FleetProcsRun {
    pub pods: Vec<PodResult>,
    /// Per second since the rollout started, per service in [`SERVICES`] order: (calls, throttled).
    pub per_second: Vec<[(u64, u64); 4]>,
    pub steady_from: Duration,
    pub floor: Duration,
    pub requests: [u64; 3],
    pub expired: [u64; 3],
    pub failed: [u64; 3],
    pub min_left_secs: [i64; 3],
    /// 1-minute load averages sampled during the run.
    pub load: Vec<f64>,
    pub emulator_cpu: Duration,
    pub emulator_rss_kib: u64,
    pub wall: Duration,
}

impl FleetProcsRun {
    /// When the last pod held a credential of `cloud` (`None`: some never did).
    pub fn all_ready(&self, cloud: usize) -> Option<Duration> {
        self.pods
            .iter()
            .map(|p| p.ready[cloud])
            .collect::<Option<Vec<_>>>()
            .map(|r| r.into_iter().max().unwrap_or_default())
    }

    /// Calls and throttled calls of a service over the whole run.
    pub fn totals(&self, service: usize) -> (u64, u64) {
        self.per_second.iter().fold((0, 0), |(c, t), s| (c + s[service].0, t + s[service].1))
    }

    /// The seconds of the steady state.
    fn steady(&self) -> &[[(u64, u64); 4]] {
        let from = usize::try_from(self.steady_from.as_secs()).unwrap_or(usize::MAX).min(self.per_second.len());
        &self.per_second[from..]
    }

    /// The highest [`BIN`]-second call count of a service in the steady state, over its mean.
    pub fn steady_peak_over_mean(&self, service: usize) -> f64 {
        let bins: Vec<u64> =
            self.steady().chunks_exact(BIN).map(|bin| bin.iter().map(|s| s[service].0).sum()).collect();
        let mean = bins.iter().sum::<u64>() as f64 / bins.len().max(1) as f64;
        let peak = bins.iter().copied().max().unwrap_or(0) as f64;
        if mean > 0.0 { peak / mean } else { 0.0 }
    }

    /// Mean steady-state calls per second of a service.
    pub fn steady_rate(&self, service: usize) -> f64 {
        let steady = self.steady();
        steady.iter().map(|s| s[service].0).sum::<u64>() as f64 / steady.len().max(1) as f64
    }
}

/// Raises the soft limit of open files to the hard one: the bench holds connections to every pod.
pub fn raise_nofile() -> String {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let raised = rustix::process::Rlimit { current: limit.maximum, maximum: limit.maximum };
    let show = |n: Option<u64>| n.map_or_else(|| "unlimited".to_owned(), |n| n.to_string());
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => format!("open files: {} (the soft limit raised to the hard one)", show(limit.maximum)),
        Err(e) => format!("open files: {} (cannot raise it to {}: {e})", show(limit.current), show(limit.maximum)),
    }
}

/// Runs the fleet; `progress` gets a line now and then.
pub async fn run(options: &FleetProcsOptions, progress: &(dyn Fn(&str) + Sync)) -> Result<FleetProcsRun, BenchError> {
    if options.pods == 0 || !(options.quota.is_finite() && options.quota > 0.0) {
        return Err(BenchError::Request("--pods and --quota must be more than zero".into()));
    }
    if options.credential_lifetime < Duration::from_secs(2) {
        return Err(BenchError::Request("--credential-lifetime must be at least 2s".into()));
    }
    progress(&raise_nofile());
    let keyless = options.keyless.clone().unwrap_or_else(crate::bench::default_keyless);
    let emulator_bin = options.emulator.clone().unwrap_or_else(|| keyless.clone());
    let temp;
    let dir = match &options.work_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(|e| BenchError::File { path: dir.clone(), source: e })?;
            dir.clone()
        }
        None => {
            temp = tempfile::tempdir().map_err(|e| BenchError::File { path: std::env::temp_dir(), source: e })?;
            temp.path().to_owned()
        }
    };
    let lifetime = format!("{}s", options.credential_lifetime.as_secs().max(1));
    let emulator = Emulator::start_with(&emulator_bin, &dir, &["--credential-lifetime".to_owned(), lifetime]).await?;
    let emulator_pid = emulator.pid;
    for service in QUOTA_SERVICES {
        emulator.post("quotas", &json!({ "service": service, "per_second": options.quota })).await?;
    }
    emulator.post("quotas", &json!({ "service": "gcp-iam", "per_second": options.quota * 10.0 })).await?;
    let emulator = Arc::new(emulator);

    let (steady_from, length) = options.schedule();
    let identity_header = crate::bench::random_hex();
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| BenchError::Request(e.to_string()))?;
    let stats = Arc::new(AppStats::new());
    let start = Instant::now() + Duration::from_millis(500);
    let end = start + length;
    let before = snapshot(&emulator).await?;
    progress(&format!(
        "{} pods over {}, quota {}/s, credentials of {}; steady state from {} to {} after the rollout started",
        options.pods,
        humantime::format_duration(options.rollout),
        options.quota,
        humantime::format_duration(options.credential_lifetime),
        humantime::format_duration(steady_from),
        humantime::format_duration(length),
    ));

    let mut pods = tokio::task::JoinSet::new();
    for i in 0..options.pods {
        let pod = PodSpec {
            index: i,
            dir: dir.join(format!("pod-{i}")),
            keyless: keyless.clone(),
            starts_at: start + options.rollout.mul_f64(i as f64 / options.pods as f64),
            start,
            end,
            app_period: options.app_period,
            identity_header: identity_header.clone(),
        };
        let (emulator, http, stats) = (emulator.clone(), http.clone(), stats.clone());
        pods.spawn(async move { pod.run(&emulator, &http, &stats).await });
    }

    // The emulator's counters every second, the load every ten.
    let mut per_second = Vec::new();
    let mut load = Vec::new();
    let mut last = before;
    let mut ticker = tokio::time::interval_at(start + Duration::from_secs(1), Duration::from_secs(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut second = 0usize;
    while Instant::now() < end {
        ticker.tick().await;
        second += 1;
        let now = match snapshot(&emulator).await {
            Ok(now) => now,
            Err(e) => {
                progress(&format!("second {second}: cannot read the emulator's counters: {e}"));
                continue;
            }
        };
        let at = usize::try_from(start.elapsed().as_secs()).unwrap_or(usize::MAX).saturating_sub(1);
        if per_second.len() <= at {
            per_second.resize(at + 1, [(0, 0); 4]);
        }
        for (s, slot) in per_second[at].iter_mut().enumerate() {
            slot.0 += now[s].0.saturating_sub(last[s].0);
            slot.1 += now[s].1.saturating_sub(last[s].1);
        }
        last = now;
        if second.is_multiple_of(10) {
            load.push(procs::load_1m());
        }
        if second.is_multiple_of(60) {
            let totals: Vec<String> = SERVICES
                .iter()
                .enumerate()
                .map(|(s, name)| format!("{name} {}/{}", last[s].0 - before[s].0, last[s].1 - before[s].1))
                .collect();
            progress(&format!(
                "{second} s: calls/throttled {}; load {}; app requests {} expired {} failed {}",
                totals.join(", "),
                procs::load_average(),
                stats.requests.iter().map(|r| r.load(Ordering::Relaxed)).sum::<u64>(),
                stats.expired.iter().map(|r| r.load(Ordering::Relaxed)).sum::<u64>(),
                stats.failed.iter().map(|r| r.load(Ordering::Relaxed)).sum::<u64>(),
            ));
        }
    }
    let ticks = procs::ticks_per_second();
    let emulator_cpu = procs::cpu_time(emulator_pid, ticks).unwrap_or_default();
    let emulator_rss_kib = procs::memory(emulator_pid).map(|m| m.rss_kib).unwrap_or(0);
    let mut results = Vec::with_capacity(options.pods);
    while let Some(joined) = pods.join_next().await {
        match joined {
            Ok(Ok(result)) => results.push(result),
            Ok(Err(e)) => return Err(e),
            Err(e) => return Err(BenchError::Request(format!("a pod's task failed: {e}"))),
        }
    }
    let values = |a: &[AtomicU64; 3]| a.each_ref().map(|v| v.load(Ordering::Relaxed));
    Ok(FleetProcsRun {
        pods: results,
        per_second,
        steady_from,
        floor: Duration::from_secs_f64(options.pods as f64 / options.quota),
        requests: values(&stats.requests),
        expired: values(&stats.expired),
        failed: values(&stats.failed),
        min_left_secs: stats.min_left_secs.each_ref().map(|v| v.load(Ordering::Relaxed)),
        load,
        emulator_cpu,
        emulator_rss_kib,
        wall: start.elapsed(),
    })
}

/// Cumulative (calls, throttled) of every service in [`SERVICES`] order.
async fn snapshot(emulator: &Emulator) -> Result<[(u64, u64); 4], BenchError> {
    let counters = emulator.counters().await?;
    let quotas = emulator.get("quotas").await?;
    Ok(SERVICES.map(|s| {
        (
            counters.get(s).and_then(Value::as_u64).unwrap_or(0),
            quotas.pointer(&format!("/{s}/throttled")).and_then(Value::as_u64).unwrap_or(0),
        )
    }))
}

struct PodSpec {
    index: usize,
    dir: PathBuf,
    keyless: PathBuf,
    starts_at: Instant,
    /// The rollout's start.
    start: Instant,
    end: Instant,
    app_period: Duration,
    identity_header: String,
}

/// A running `keyless serve`.
struct Process {
    child: Child,
    pid: u32,
    listen: std::net::SocketAddr,
    admin: std::net::SocketAddr,
    spawned: Instant,
}

impl PodSpec {
    async fn run(self, emulator: &Emulator, http: &reqwest::Client, stats: &AppStats) -> Result<PodResult, BenchError> {
        let file_error = |path: &Path| {
            let path = path.to_owned();
            move |source| BenchError::File { path, source }
        };
        std::fs::create_dir_all(&self.dir).map_err(file_error(&self.dir))?;
        let auth_file = self.dir.join("aws-authorization-token");
        let config = self.dir.join("keyless.toml");
        std::fs::write(&config, sidecar_toml(emulator, &auth_file)?).map_err(file_error(&config))?;
        tokio::time::sleep_until(self.starts_at).await;

        let mut result = PodResult::default();
        let mut process = self.spawn(&config, result.restarts)?;
        // Ready: every cloud holds a credential; a process that exits first is started again.
        while result.ready.iter().any(Option::is_none) && Instant::now() < self.end {
            if process.child.try_wait().ok().flatten().is_some() {
                result.restarts += 1;
                if result.restarts > 5 {
                    return Err(BenchError::NotReady { what: "keyless serve", log: self.log(result.restarts - 1) });
                }
                process = self.spawn(&config, result.restarts)?;
                continue;
            }
            if let Ok(body) = readyz(http, process.admin).await {
                let at = self.start.elapsed();
                for (cloud, ready) in CLOUDS.iter().zip(result.ready.iter_mut()) {
                    if ready.is_none() && cloud_ready(&body, cloud) {
                        *ready = Some(at);
                    }
                }
            }
            tokio::time::sleep(READY_POLL).await;
        }

        // The app: each endpoint every `app_period`, from a random phase.
        let aws_authorization = self.aws_authorization(&auth_file);
        let phase = self.app_period.mul_f64(rand::rng().random::<f64>());
        tokio::time::sleep_until((Instant::now() + phase).min(self.end)).await;
        while Instant::now() < self.end {
            if process.child.try_wait().ok().flatten().is_some() {
                result.died = true;
                break;
            }
            for (cloud, name) in CLOUDS.iter().enumerate() {
                stats.requests[cloud].fetch_add(1, Ordering::Relaxed);
                match ask(http, process.listen, cloud, &aws_authorization).await {
                    Ok((left, expired)) => {
                        stats.min_left_secs[cloud].fetch_min(left, Ordering::Relaxed);
                        if expired {
                            stats.expired[cloud].fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(e) => {
                        if stats.failed[cloud].fetch_add(1, Ordering::Relaxed) < 5 {
                            print_failure(&format!("pod {}: {name}: {e}", self.index));
                        }
                    }
                }
            }
            tokio::time::sleep(self.app_period.min(self.end.saturating_duration_since(Instant::now()))).await;
        }

        let ticks = procs::ticks_per_second();
        if let (Ok(cpu), Ok(memory)) = (procs::cpu_time(process.pid, ticks), procs::memory(process.pid)) {
            result.cpu = cpu;
            result.rss_kib = memory.rss_kib;
            result.hwm_kib = memory.hwm_kib;
            result.anon_kib = memory.anon_kib;
            result.pss_kib = pss_kib(process.pid).unwrap_or(0);
        }
        result.alive = process.spawned.elapsed();
        let _ = process.child.kill().await;
        Ok(result)
    }

    fn log(&self, attempt: u32) -> PathBuf {
        self.dir.join(format!("keyless-{attempt}.log"))
    }

    fn spawn(&self, config: &Path, attempt: u32) -> Result<Process, BenchError> {
        let (listen, admin) = procs::free_ports()?;
        let mut command =
            stack::serve_command(&Launcher::default(), &self.keyless, &self.log(attempt), config, listen, admin)?;
        command.env("KEYLESS_AZURE__IDENTITY_HEADER", &self.identity_header);
        let spawned = Instant::now();
        let child = stack::spawn(command, &self.keyless)?;
        let pid = child.id().ok_or_else(|| BenchError::NotReady { what: "keyless serve", log: self.log(attempt) })?;
        Ok(Process { child, pid, listen, admin, spawned })
    }

    /// The AWS container authorization token keyless wrote for this pod (empty until written).
    fn aws_authorization(&self, auth_file: &Path) -> String {
        std::fs::read_to_string(auth_file).map(|s| s.trim().to_owned()).unwrap_or_default()
    }
}

#[allow(clippy::print_stderr)] // a pod's first failures, as they happen
fn print_failure(line: &str) {
    eprintln!("fleet-procs: {line}");
}

async fn readyz(http: &reqwest::Client, admin: std::net::SocketAddr) -> Result<String, reqwest::Error> {
    http.get(format!("http://{admin}/readyz")).send().await?.text().await
}

/// `/readyz` (to a loopback peer) lists `ready PROVIDER ...` or `not ready PROVIDER ...` per identity.
fn cloud_ready(body: &str, cloud: &str) -> bool {
    let ready = format!("ready {cloud} ");
    let not_ready = format!("not ready {cloud} ");
    body.lines().any(|l| l.starts_with(&ready)) && !body.lines().any(|l| l.starts_with(&not_ready))
}

/// One request to a cloud's endpoint as its SDK asks it: the served credential's lifetime left in
/// seconds, and whether it was served expired. AWS and Azure name the instant it expires; the GCE
/// metadata server only the whole seconds left, so a Google token with 0 left (under a second)
/// counts as expired: the check is strict where the answer is coarse.
async fn ask(
    http: &reqwest::Client,
    listen: std::net::SocketAddr,
    cloud: usize,
    aws_authorization: &str,
) -> Result<(i64, bool), String> {
    let endpoint = [Endpoint::AwsContainer, Endpoint::GceToken, Endpoint::AzureImds][cloud.min(2)];
    let presented = Presented {
        aws_authorization: HeaderValue::from_str(aws_authorization).map_err(|e| format!("authorization: {e}"))?,
        imds_session: HeaderValue::from_static(""),
        identity_header: HeaderValue::from_static(""),
        role_name: String::new(),
        azure_resource: AZURE_RESOURCE.to_owned(),
    };
    let ClientRequest { method, path_and_query, headers } = endpoint.request(&presented);
    let request =
        http.request(method, format!("http://{listen}{path_and_query}")).headers(headers.into_iter().collect());
    let response = request.send().await.map_err(|e| format!("request: {e}"))?;
    let status = response.status();
    let text = response.text().await.map_err(|e| format!("{status}, body: {e}"))?;
    if !status.is_success() {
        return Err(format!("{status}: {}", text.trim()));
    }
    // A 200's body is a credential: an error names what is wrong with it, never what it holds.
    let body: Value = serde_json::from_str(&text).map_err(|e| format!("{status}, not JSON ({e})"))?;
    // The wall clock the served expiry is compared with: the apps' own (the bench's), not a test clock.
    #[allow(clippy::disallowed_methods)]
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
    let missing = || {
        let fields: Vec<&str> = body.as_object().map(|o| o.keys().map(String::as_str).collect()).unwrap_or_default();
        format!("no expiry among the fields {fields:?}")
    };
    let (left, expired) = match cloud {
        0 => {
            let expiration = body.get("Expiration").and_then(Value::as_str).ok_or_else(missing)?;
            let at = humantime::parse_rfc3339_weak(expiration).map_err(|e| format!("Expiration {expiration}: {e}"))?;
            let left = at.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0) - now;
            (left, left < 0.0)
        }
        1 => {
            let left = body.get("expires_in").and_then(Value::as_f64).ok_or_else(missing)?;
            (left, left <= 0.0)
        }
        _ => {
            let on = body.get("expires_on").ok_or_else(missing)?;
            let on = on.as_str().and_then(|s| s.parse::<f64>().ok()).or_else(|| on.as_f64()).ok_or_else(missing)?;
            (on - now, on - now < 0.0)
        }
    };
    Ok((left.floor() as i64, expired))
}

/// `Pss:` of `/proc/PID/smaps_rollup`, in KiB.
fn pss_kib(pid: u32) -> Option<u64> {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    rollup
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_cloud_is_ready_when_every_identity_of_it_is() {
        let body = "ready aws arn:x token: valid until 2030-01-01T00:00:00Z\n\
                    not ready gcp sa@x ScopeSet: first exchange in progress\n\
                    ready azure app ()\n";
        assert!(cloud_ready(body, "aws"));
        assert!(!cloud_ready(body, "gcp"));
        assert!(cloud_ready(body, "azure"));
        assert!(!cloud_ready("not ready: still starting\n", "aws"));
    }

    /// The small configuration, so it cannot rot: three real `keyless serve` processes against a
    /// real `keyless emulate` (the binary cargo builds for the tests) with a quota and 12 s
    /// credentials; three refresh cycles and a steady state in about 30 s. The quota (2/s) is
    /// well above what three pods refresh at (0.7/s), as 5/s is for 300 pods with 10-minute
    /// credentials (1.4/s): at 1/s the throttled retries of refreshes, which come every 2.4 to
    /// 6 s here, can outlast a 12 s credential.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn three_real_pods_get_ready_refresh_and_are_never_served_an_expired_credential() {
        let keyless = keyless_test_support::binary::keyless_bin();
        let options = FleetProcsOptions {
            pods: 3,
            quota: 2.0,
            rollout: Duration::from_secs(2),
            credential_lifetime: Duration::from_secs(12),
            cycles: 3,
            steady: Some(Duration::from_secs(10)),
            app_period: Duration::from_secs(1),
            keyless: Some(keyless),
            emulator: None,
            csv: None,
            work_dir: None,
        };
        let run = run(&options, &|_| {}).await.unwrap();
        let table = crate::fleet_procs_report::table(&options, &run);
        #[allow(clippy::print_stderr)]
        {
            eprintln!("{table}");
        }
        for cloud in 0..CLOUDS.len() {
            assert!(run.all_ready(cloud).is_some(), "{table}");
            assert!(run.requests[cloud] > 3 * 10, "{table}");
        }
        assert_eq!(run.expired, [0, 0, 0], "{table}");
        assert_eq!(run.failed, [0, 0, 0], "{table}");
        assert!(run.pods.iter().all(|p| !p.died && p.rss_kib > 0 && p.cpu > Duration::ZERO), "{table}");
        for service in [0, 1, 3] {
            // A first exchange and at least three refreshes per pod in ~30 s of 12 s credentials.
            assert!(run.totals(service).0 >= 3 * 4, "{}: {table}", SERVICES[service]);
        }
    }
}
