//! The benchmark's sequence: emulator, cold starts, idle memory, the load runs (keyless and the
//! bare server alternating on each endpoint), peak memory, then the thundering herds.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hyper::header::HeaderValue;
use rand::Rng as _;
use tokio::process::{Child, Command};
use tokio::time::Instant;

use crate::cold::{self, Burst};
use crate::endpoints::{self, Endpoint, Presented};
use crate::load::{self, Run, Target};
use crate::procs::{self, Memory};
use crate::report::{self, ColdRequests, EndpointResult, Measured, Pair, Results};
use crate::stack::{Emulator, Launcher, Sidecar, sidecar_toml};
use crate::{BenchError, Options};

/// Time the idle process is left alone before its RSS is read.
const SETTLE: Duration = Duration::from_secs(2);
/// How often keyless's RSS is sampled during the load runs.
const RSS_SAMPLE_EVERY: Duration = Duration::from_millis(50);

/// What both the load and the callgrind modes run keyless against: the emulator (from
/// `emulator_bin`), the sidecar's config for it, where keyless writes the AWS authorization
/// token, and the App Service identity header it is given.
pub struct Stack {
    pub dir: tempfile::TempDir,
    pub emulator: Emulator,
    pub config: PathBuf,
    pub auth_file: PathBuf,
    pub identity_header: String,
}

impl Stack {
    pub async fn prepare(emulator_bin: &Path) -> Result<Self, BenchError> {
        let dir = tempfile::tempdir().map_err(|e| BenchError::File { path: std::env::temp_dir(), source: e })?;
        let emulator = Emulator::start(emulator_bin, dir.path()).await?;
        let auth_file = dir.path().join("aws-authorization-token");
        let config = dir.path().join("keyless.toml");
        std::fs::write(&config, sidecar_toml(&emulator, &auth_file)?)
            .map_err(|e| BenchError::File { path: config.clone(), source: e })?;
        Ok(Self { dir, emulator, config, auth_file, identity_header: random_hex() })
    }

    /// The environment `keyless serve` gets besides its config file.
    pub fn env(&self) -> [(&'static str, &str); 1] {
        [("KEYLESS_AZURE__IDENTITY_HEADER", self.identity_header.as_str())]
    }
}

pub async fn bench(opts: Options) -> Result<(), BenchError> {
    let keyless = opts.keyless.clone().unwrap_or_else(default_keyless);
    let ticks = procs::ticks_per_second();
    let load_before = procs::load_average();
    report::header(&opts, &keyless, &load_before);
    let stack = Stack::prepare(opts.emulator.as_deref().unwrap_or(&keyless)).await?;
    let Stack { dir, emulator, config, auth_file, identity_header } = &stack;
    let env = stack.env();

    let mut cold_starts = Vec::new();
    let mut running = None;
    let starts = opts.cold_starts.max(1);
    for i in 0..starts {
        let log = dir.path().join(format!("keyless-{i}.log"));
        let (sidecar, cold) = Sidecar::start(&Launcher::default(), &keyless, config, &env, &log).await?;
        report::progress(&format!(
            "cold start {}/{starts}: listening after {}, /readyz green after {}",
            i + 1,
            report::ms(cold.serving),
            report::ms(cold.ready)
        ));
        cold_starts.push(cold);
        if i + 1 < starts {
            sidecar.stop().await;
        } else {
            running = Some(sidecar);
        }
    }
    let Some(sidecar) = running else { return Err(BenchError::Request("no keyless started".into())) };
    report::progress(&format!("keyless serve is PID {}", sidecar.pid));
    tokio::time::sleep(SETTLE).await;
    let idle = procs::memory(sidecar.pid)?;
    let idle_mappings = procs::rss_by_mapping(sidecar.pid)?;

    let secrets = client_secrets(emulator, &sidecar, auth_file, identity_header).await?;
    let selected: Vec<Endpoint> = if opts.only.is_empty() { Endpoint::ALL.to_vec() } else { opts.only.clone() };
    let mut prepared = Vec::new();
    for endpoint in selected {
        let target = endpoints::target(endpoint, sidecar.listen, &secrets);
        let body_len = endpoints::body_len(&target).await?;
        let bare = BareServer::start(&Launcher::default(), body_len).await?;
        report::progress(&format!("{}: {body_len} bytes; bare server is PID {}", endpoint.label(), bare.pid));
        prepared.push((endpoint, target, body_len, bare));
    }

    let peak_sampled = Arc::new(AtomicU64::new(0));
    let sampler = tokio::spawn(sample_rss(sidecar.pid, peak_sampled.clone()));
    let mut results: Vec<EndpointResult> = prepared
        .iter()
        .map(|(endpoint, _, body_len, _)| EndpointResult {
            endpoint: *endpoint,
            body_len: *body_len,
            rounds: Vec::new(),
        })
        .collect();
    for round in 0..opts.rounds.max(1) {
        for ((endpoint, target, body_len, bare), result) in prepared.iter().zip(results.iter_mut()) {
            let bare_target = target.at(bare.addr);
            let perf = |server: &str| {
                opts.perf.as_deref().filter(|_| round == 0).map(|d| d.join(format!("{endpoint:?}.{server}.perf.data")))
            };
            let (perf_keyless, perf_bare) = (perf("keyless"), perf("bare"));
            let measure_keyless = || measure(&opts, target, *body_len, sidecar.pid, ticks, perf_keyless.as_deref());
            let measure_bare = || measure(&opts, &bare_target, *body_len, bare.pid, ticks, perf_bare.as_deref());
            // Alternate which server goes first, so drift in the machine's load hits both alike.
            let pair = if round % 2 == 0 {
                let bare = measure_bare().await?;
                Pair { keyless: measure_keyless().await?, bare }
            } else {
                let keyless = measure_keyless().await?;
                Pair { keyless, bare: measure_bare().await? }
            };
            report::progress(&report::pair_line(round, *endpoint, &pair));
            result.rounds.push(pair);
        }
    }
    sampler.abort();
    let after_load = procs::memory(sidecar.pid)?;
    drop(prepared);

    let mut herds = Vec::new();
    if opts.cold_requests > 0 {
        let nonce = random_hex();
        let azure = Target {
            path_and_query: format!(
                "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://bench-{nonce}.keyless.test"
            ),
            ..endpoints::target(Endpoint::AzureImds, sidecar.listen, &secrets)
        };
        let gcp = Target {
            path_and_query: format!(
                "/computeMetadata/v1/instance/service-accounts/default/token?scopes=https://www.googleapis.com/auth/bench.{nonce}"
            ),
            ..endpoints::target(Endpoint::GceToken, sidecar.listen, &secrets)
        };
        for (label, target) in [("Azure IMDS, new resource", azure), ("GCE token, new scope set", gcp)] {
            herds.push(herd(emulator, &sidecar, label, &target, opts.cold_requests).await?);
        }
    }
    let after_herds = procs::memory(sidecar.pid)?;
    let results = Results {
        cold_starts,
        idle,
        idle_mappings,
        after_load,
        peak_sampled_kib: peak_sampled.load(Ordering::Relaxed),
        after_herds,
        endpoints: results,
        herds,
        load_before,
        load_after: procs::load_average(),
    };
    report::print(&opts, &results);
    sidecar.stop().await;
    Ok(())
}

/// `keyless` beside this binary (both are built into `target/release` by scripts/bench).
pub fn default_keyless() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("keyless")))
        .unwrap_or_else(|| PathBuf::from("target/release/keyless"))
}

pub fn random_hex() -> String {
    let mut bytes = [0u8; 16];
    rand::rng().fill(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub async fn client_secrets(
    emulator: &Emulator,
    sidecar: &Sidecar,
    auth_file: &Path,
    identity_header: &str,
) -> Result<Presented, BenchError> {
    let auth =
        std::fs::read_to_string(auth_file).map_err(|e| BenchError::File { path: auth_file.to_owned(), source: e })?;
    let header = |v: &str, what: &str| {
        HeaderValue::from_str(v).map_err(|_| BenchError::Request(format!("{what} is not a header value")))
    };
    let role_arn = emulator.identity("aws_role_arn");
    Ok(Presented {
        aws_authorization: header(&auth, "the AWS authorization token")?,
        imds_session: endpoints::imds_session(sidecar.listen).await?,
        identity_header: header(identity_header, "the identity header")?,
        role_name: role_arn.rsplit('/').next().unwrap_or_default().to_owned(),
        azure_resource: endpoints::AZURE_RESOURCE.to_owned(),
    })
}

/// One fixed-duration run against `target`, with the serving process's CPU time over it.
async fn measure(
    opts: &Options,
    target: &Target,
    body_len: usize,
    pid: u32,
    ticks: u64,
    perf: Option<&Path>,
) -> Result<Measured, BenchError> {
    let mut profiler = match perf {
        Some(path) => Some(start_perf(pid, path, &opts.perf_call_graph, opts.warmup + opts.duration)?),
        None => None,
    };
    let own = std::process::id();
    let (cpu_before, own_before) = (procs::cpu_time(pid, ticks)?, procs::cpu_time(own, ticks)?);
    let started = Instant::now();
    let run: Run = load::run(target, body_len, opts.connections, opts.warmup, opts.duration).await?;
    let cpu = procs::cpu_time(pid, ticks)?.saturating_sub(cpu_before);
    let own_cpu = procs::cpu_time(own, ticks)?.saturating_sub(own_before);
    let wall = started.elapsed();
    if let Some(profiler) = profiler.as_mut() {
        let _ = profiler.wait().await;
    }
    // CPU over the whole run (warm-up included) per request answered in it, estimated from the
    // measured window's rate.
    let requests = run.throughput() * wall.as_secs_f64();
    let per_request = |cpu: Duration| if requests > 0.0 { cpu.as_secs_f64() * 1e6 / requests } else { 0.0 };
    Ok(Measured {
        throughput: run.throughput(),
        p50_us: run.quantile_us(0.50),
        p99_us: run.quantile_us(0.99),
        errors: run.errors,
        cpu_us_per_request: per_request(cpu),
        client_cpu_us_per_request: per_request(own_cpu),
    })
}

fn start_perf(pid: u32, output: &Path, call_graph: &str, length: Duration) -> Result<Child, BenchError> {
    if let Some(dir) = output.parent() {
        std::fs::create_dir_all(dir).map_err(|e| BenchError::File { path: dir.to_owned(), source: e })?;
    }
    Command::new("perf")
        .args(["record", "-F", "999", "--call-graph", call_graph, "-q", "-p", &pid.to_string(), "-o"])
        .arg(output)
        .args(["--", "sleep", &format!("{:.3}", length.as_secs_f64())])
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| BenchError::Spawn { path: PathBuf::from("perf"), source: e })
}

async fn sample_rss(pid: u32, peak_kib: Arc<AtomicU64>) {
    loop {
        if let Ok(Memory { rss_kib, .. }) = procs::memory(pid) {
            peak_kib.fetch_max(rss_kib, Ordering::Relaxed);
        }
        tokio::time::sleep(RSS_SAMPLE_EVERY).await;
    }
}

async fn herd(
    emulator: &Emulator,
    sidecar: &Sidecar,
    label: &'static str,
    target: &Target,
    requests: usize,
) -> Result<ColdRequests, BenchError> {
    let counters_before = emulator.counters().await?;
    let exchanges_before = sidecar.exchanges().await?;
    let burst: Burst = cold::burst(target, requests).await?;
    let counters_after = emulator.counters().await?;
    let exchanges = sidecar.exchanges().await?.saturating_sub(exchanges_before);
    let upstream = ["aws-sts", "gcp-sts", "gcp-iam", "azure-token"]
        .into_iter()
        .filter_map(|service| {
            let get = |v: &serde_json::Value| v.get(service).and_then(serde_json::Value::as_u64).unwrap_or(0);
            let delta = get(&counters_after).saturating_sub(get(&counters_before));
            (delta > 0).then_some((service, delta))
        })
        .collect();
    report::progress(&format!("{label}: {} concurrent first requests, {} ok", requests, burst.ok));
    Ok(ColdRequests { label, requests, burst, upstream, exchanges })
}

/// A `keyless-bench bare-server` child answering `body_len` bytes.
pub struct BareServer {
    _child: Child,
    pub pid: u32,
    pub addr: std::net::SocketAddr,
}

impl BareServer {
    pub async fn start(launcher: &Launcher, body_len: usize) -> Result<Self, BenchError> {
        let exe = std::env::current_exe()
            .map_err(|e| BenchError::Spawn { path: PathBuf::from("keyless-bench"), source: e })?;
        let addr = procs::free_port()?;
        let mut child = launcher
            .command(&exe)
            .args(["bare-server", "--listen", &addr.to_string(), "--body-len", &body_len.to_string()])
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| BenchError::Spawn { path: exe.clone(), source: e })?;
        let pid = child.id().ok_or_else(|| BenchError::Request("the bare server exited at once".into()))?;
        let give_up = Instant::now() + launcher.deadline.unwrap_or(Duration::from_secs(10));
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            if child.try_wait().ok().flatten().is_some() || Instant::now() > give_up {
                return Err(BenchError::Request(format!("the bare server did not listen on {addr}")));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(Self { _child: child, pid, addr })
    }
}
