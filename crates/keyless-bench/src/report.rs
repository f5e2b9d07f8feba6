//! What the benchmark prints: progress lines, then Markdown tables with each target and whether
//! this run met it. Printing is this command's purpose.
#![allow(clippy::print_stdout)]

use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

use crate::Options;
use crate::callgrind::CallgrindOptions;
use crate::cold::Burst;
use crate::endpoints::Endpoint;
use crate::procs::{self, Memory};
use crate::stack::ColdStart;

/// the quality bars, docs/benchmarks.md.
const MIN_THROUGHPUT_RATIO: f64 = 0.8;
const MAX_P99_RATIO: f64 = 1.5;
const MAX_IDLE_RSS_MIB: f64 = 10.0;
const MAX_PEAK_RSS_MIB: f64 = 25.0;
const MAX_COLD_START: Duration = Duration::from_millis(100);
const MAX_INSTRUCTION_RATIO: f64 = 2.0;

#[derive(Debug, Clone)]
pub struct Measured {
    pub throughput: f64,
    pub p50_us: u32,
    pub p99_us: u32,
    pub errors: u64,
    /// CPU time of the serving process per request (user + system).
    pub cpu_us_per_request: f64,
    /// CPU time of the load generator (this process) per request.
    pub client_cpu_us_per_request: f64,
}

#[derive(Debug, Clone)]
pub struct Pair {
    pub keyless: Measured,
    pub bare: Measured,
}

impl Pair {
    fn throughput_ratio(&self) -> f64 {
        self.keyless.throughput / self.bare.throughput.max(f64::MIN_POSITIVE)
    }

    fn p99_ratio(&self) -> f64 {
        f64::from(self.keyless.p99_us) / f64::from(self.bare.p99_us.max(1))
    }
}

#[derive(Debug)]
pub struct EndpointResult {
    pub endpoint: Endpoint,
    pub body_len: usize,
    pub rounds: Vec<Pair>,
}

#[derive(Debug)]
pub struct ColdRequests {
    pub label: &'static str,
    pub requests: usize,
    pub burst: Burst,
    /// Emulator calls caused, per service (only those that moved).
    pub upstream: Vec<(&'static str, u64)>,
    /// keyless's own count of exchanges (`keyless_exchanges_total`) caused.
    pub exchanges: u64,
}

#[derive(Debug)]
pub struct Results {
    pub cold_starts: Vec<ColdStart>,
    pub idle: Memory,
    /// Resident KiB per mapping when idle, largest first.
    pub idle_mappings: Vec<(String, u64)>,
    pub after_load: Memory,
    pub peak_sampled_kib: u64,
    pub after_herds: Memory,
    pub endpoints: Vec<EndpointResult>,
    pub herds: Vec<ColdRequests>,
    pub load_before: String,
    pub load_after: String,
}

pub fn progress(line: &str) {
    println!("  {line}");
    let _ = std::io::stdout().flush();
}

pub fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "**missed**" }
}

pub fn header(opts: &Options, keyless: &Path, load: &str) {
    println!("# keyless-bench");
    println!("machine: {}", procs::machine());
    println!("load average before (1m 5m 15m runnable/total): {load}");
    println!(
        "keyless: {}; {} connections, {:?} per run after {:?} warm-up, {} rounds, {} load-generator threads",
        keyless.display(),
        opts.connections,
        opts.duration,
        opts.warmup,
        opts.rounds,
        opts.client_threads
    );
    let _ = std::io::stdout().flush();
}

pub fn pair_line(round: usize, endpoint: Endpoint, pair: &Pair) -> String {
    format!(
        "round {} {:<24} keyless {:>8.0} req/s p99 {:>6} us | bare {:>8.0} req/s p99 {:>6} us | ratio {:.2}",
        round + 1,
        endpoint.label(),
        pair.keyless.throughput,
        pair.keyless.p99_us,
        pair.bare.throughput,
        pair.bare.p99_us,
        pair.throughput_ratio()
    )
}

/// Median and range, e.g. `0.91 (0.88-0.95)`.
fn spread(values: impl IntoIterator<Item = f64>, precision: usize) -> (f64, String) {
    let mut v: Vec<f64> = values.into_iter().collect();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return (0.0, "-".into());
    }
    let median = if v.len() % 2 == 1 { v[v.len() / 2] } else { (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0 };
    let text = if v.len() == 1 {
        format!("{median:.precision$}")
    } else {
        format!("{median:.precision$} ({:.precision$}-{:.precision$})", v[0], v[v.len() - 1])
    };
    (median, text)
}

pub fn print(opts: &Options, r: &Results) {
    println!();
    println!(
        "## Cached-credential path vs bare hyper ({} connections; median (min-max) of {} rounds)",
        opts.connections, opts.rounds
    );
    println!();
    println!(
        "| endpoint | body | keyless req/s | bare req/s | ratio (>= {MIN_THROUGHPUT_RATIO}) | keyless p50 / p99 | bare p50 / p99 | p99 ratio (<= {MAX_P99_RATIO}) | server CPU/req keyless / bare | load generator CPU/req | errors |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let mut all_met = true;
    for e in &r.endpoints {
        let rounds = &e.rounds;
        let (_, k_rps) = spread(rounds.iter().map(|p| p.keyless.throughput), 0);
        let (_, b_rps) = spread(rounds.iter().map(|p| p.bare.throughput), 0);
        let (ratio, ratio_text) = spread(rounds.iter().map(Pair::throughput_ratio), 2);
        let (p99_ratio, p99_ratio_text) = spread(rounds.iter().map(Pair::p99_ratio), 2);
        let (k50, _) = spread(rounds.iter().map(|p| f64::from(p.keyless.p50_us)), 0);
        let (k99, _) = spread(rounds.iter().map(|p| f64::from(p.keyless.p99_us)), 0);
        let (b50, _) = spread(rounds.iter().map(|p| f64::from(p.bare.p50_us)), 0);
        let (b99, _) = spread(rounds.iter().map(|p| f64::from(p.bare.p99_us)), 0);
        let (k_cpu, _) = spread(rounds.iter().map(|p| p.keyless.cpu_us_per_request), 1);
        let (b_cpu, _) = spread(rounds.iter().map(|p| p.bare.cpu_us_per_request), 1);
        let (c_cpu, _) =
            spread(rounds.iter().flat_map(|p| [&p.keyless, &p.bare]).map(|m| m.client_cpu_us_per_request), 1);
        let errors: u64 = rounds.iter().map(|p| p.keyless.errors + p.bare.errors).sum();
        let met = ratio >= MIN_THROUGHPUT_RATIO && p99_ratio <= MAX_P99_RATIO && errors == 0;
        all_met &= met;
        println!(
            "| {} | {} B | {k_rps} | {b_rps} | {ratio_text} {} | {k50:.0} / {k99:.0} us | {b50:.0} / {b99:.0} us | {p99_ratio_text} {} | {k_cpu:.1} / {b_cpu:.1} us | {c_cpu:.1} us | {errors} |",
            e.endpoint.label(),
            e.body_len,
            verdict(ratio >= MIN_THROUGHPUT_RATIO),
            verdict(p99_ratio <= MAX_P99_RATIO),
        );
    }

    println!();
    println!("## Memory of keyless serve (VmRSS / VmHWM from /proc/PID/status)");
    println!();
    println!("| measure | value | target |");
    println!("|---|---|---|");
    let idle = mib(r.idle.rss_kib);
    let peak = mib(r.after_load.hwm_kib);
    all_met &= idle <= MAX_IDLE_RSS_MIB && peak <= MAX_PEAK_RSS_MIB;
    println!(
        "| idle RSS, ready, before load | {idle:.1} MiB | <= {MAX_IDLE_RSS_MIB} MiB {} |",
        verdict(idle <= MAX_IDLE_RSS_MIB)
    );
    println!(
        "| of which anonymous / file-backed (binary, libc) | {:.1} / {:.1} MiB | |",
        mib(r.idle.anon_kib),
        mib(r.idle.file_kib)
    );
    let largest: Vec<String> = r
        .idle_mappings
        .iter()
        .take(5)
        .map(|(name, kib)| format!("{} {:.1}", name.rsplit('/').next().unwrap_or(name), mib(*kib)))
        .collect();
    println!("| idle RSS by mapping, largest first (MiB) | {} | |", largest.join(", "));
    println!(
        "| peak RSS (VmHWM) after the load runs | {peak:.1} MiB | <= {MAX_PEAK_RSS_MIB} MiB {} |",
        verdict(peak <= MAX_PEAK_RSS_MIB)
    );
    println!("| highest RSS sampled during the load runs | {:.1} MiB | |", mib(r.peak_sampled_kib));
    println!(
        "| RSS after the load runs (anonymous / file-backed) | {:.1} MiB ({:.1} / {:.1}) | |",
        mib(r.after_load.rss_kib),
        mib(r.after_load.anon_kib),
        mib(r.after_load.file_kib)
    );
    if !r.herds.is_empty() {
        println!(
            "| peak RSS (VmHWM) after the herds of {} concurrent connections | {:.1} MiB | |",
            opts.cold_requests,
            mib(r.after_herds.hwm_kib)
        );
    }

    println!();
    println!("## Cold start of keyless serve (spawn to first 200 from /readyz; emulator already running)");
    println!();
    let (median, text) = spread(r.cold_starts.iter().map(|c| c.ready.as_secs_f64() * 1e3), 1);
    let runs: Vec<String> = r.cold_starts.iter().map(|c| format!("{:.1}", c.ready.as_secs_f64() * 1e3)).collect();
    let (_, listening) = spread(r.cold_starts.iter().map(|c| c.serving.as_secs_f64() * 1e3), 1);
    let cold_met = median <= MAX_COLD_START.as_secs_f64() * 1e3;
    all_met &= cold_met;
    println!(
        "median {text} ms over {} starts [{} ms]; target <= {} ms {}",
        r.cold_starts.len(),
        runs.join(", "),
        MAX_COLD_START.as_millis(),
        verdict(cold_met)
    );
    println!(
        "listening (first answer of /readyz, any status): median {listening} ms; the rest is the pre-warm exchanges"
    );

    if !r.herds.is_empty() {
        println!();
        println!("## Concurrent cold requests (all connections open, released at once, for a key never asked for)");
        println!();
        println!("| key | requests | answered 200 | slowest | upstream calls | keyless exchanges (target 1) |");
        println!("|---|---|---|---|---|---|");
        for h in &r.herds {
            let upstream: Vec<String> = h.upstream.iter().map(|(s, n)| format!("{s} {n}")).collect();
            let met = h.exchanges == 1 && h.burst.failed == 0;
            all_met &= met;
            println!(
                "| {} | {} | {}{} | {} | {} | {} {} |",
                h.label,
                h.requests,
                h.burst.ok,
                h.burst.first_failure.as_deref().map(|f| format!(" (first failure: {f})")).unwrap_or_default(),
                ms(h.burst.slowest),
                upstream.join(", "),
                h.exchanges,
                verdict(met)
            );
        }
    }
    println!();
    println!("load average before: {}; after: {}", r.load_before, r.load_after);
    println!("{}", if all_met { "every target met" } else { "some targets missed: see **missed** above" });
}

/// One endpoint's instructions per request under callgrind.
#[derive(Debug, Clone)]
pub struct CallgrindResult {
    pub endpoint: Endpoint,
    pub body_len: usize,
    pub keyless: f64,
    pub bare: f64,
}

pub fn callgrind_header(opts: &CallgrindOptions, keyless: &Path, valgrind: &str) {
    println!("# keyless-bench callgrind");
    println!("machine: {}", procs::machine());
    println!(
        "keyless: {}; {valgrind}; {} requests counted per endpoint and server on one keep-alive connection, after {} warm-up requests",
        keyless.display(),
        opts.requests,
        opts.warmup_requests
    );
    let _ = std::io::stdout().flush();
}

pub fn callgrind_table(opts: &CallgrindOptions, results: &[CallgrindResult]) {
    println!();
    println!(
        "## User-space instructions per request (callgrind, {} keep-alive requests, after warm-up)",
        opts.requests
    );
    println!();
    println!("| endpoint | body | keyless instr/req | bare instr/req | ratio (<= {MAX_INSTRUCTION_RATIO:.1}) |");
    println!("|---|---|---|---|---|");
    let mut all_met = true;
    for r in results {
        let ratio = r.keyless / r.bare.max(1.0);
        all_met &= ratio <= MAX_INSTRUCTION_RATIO;
        println!(
            "| {} | {} B | {:.0} | {:.0} | {ratio:.2} {} |",
            r.endpoint.label(),
            r.body_len,
            r.keyless,
            r.bare,
            verdict(ratio <= MAX_INSTRUCTION_RATIO)
        );
    }
    println!();
    println!("{}", if all_met { "every target met" } else { "some targets missed: see **missed** above" });
}
