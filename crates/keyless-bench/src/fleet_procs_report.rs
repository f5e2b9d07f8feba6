//! `keyless-bench fleet-procs`'s report: a Markdown table per cloud against the goals (issue 17),
//! keyless's CPU and memory per pod, and calls per second as CSV.

use std::fmt::Write as _;
use std::time::Duration;

use crate::BenchError;
use crate::fleet_procs::{CLOUDS, FleetProcsOptions, FleetProcsRun, PodResult, run};
use crate::fleet_report::{PEAK_GOAL, READY_GOAL, THROTTLED_GOAL};
use crate::procs;

/// The service whose calls are each cloud's exchanges (index into the run's services).
const CLOUD_SERVICE: [usize; 3] = [0, 1, 3];

/// Runs the fleet and prints the report (progress on stderr, the report on stdout).
#[allow(clippy::print_stdout, clippy::print_stderr)] // the report is the output
pub async fn report(options: &FleetProcsOptions) -> Result<(), BenchError> {
    let load_before = procs::load_average();
    eprintln!("fleet-procs: {}; load average before: {load_before}", procs::machine());
    let progress = |line: &str| eprintln!("fleet-procs: {line}");
    let run = run(options, &progress).await?;
    println!("{}", table(options, &run));
    println!("load average (1 min, /proc/loadavg) before: {load_before}; after: {}", procs::load_average());
    println!("machine: {}", procs::machine());
    if let Some(dir) = &options.csv {
        write_csv(dir, &run)?;
    }
    Ok(())
}

fn goal(met: bool) -> &'static str {
    if met { "" } else { " (goal missed)" }
}

/// The whole report as Markdown.
pub fn table(options: &FleetProcsOptions, run: &FleetProcsRun) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "fleet-procs: {} `keyless serve` processes started evenly over {}, quota {}/s per cloud, credentials \
         capped at {}; steady state from {} (after {} refresh cycles); {} of wall time\n",
        options.pods,
        humantime::format_duration(options.rollout),
        options.quota,
        humantime::format_duration(options.credential_lifetime),
        humantime::format_duration(run.steady_from),
        options.cycles,
        humantime::format_duration(Duration::from_secs(run.wall.as_secs())),
    );
    let _ = writeln!(
        out,
        "| cloud (service) | all ready (x floor N/Q = {} s) | calls | throttled | steady calls/s | steady 10 s peak / mean | app requests | expired served | failed | least lifetime left served |",
        run.floor.as_secs()
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|");
    for (cloud, name) in CLOUDS.iter().enumerate() {
        let service = CLOUD_SERVICE[cloud];
        let ready = match run.all_ready(cloud) {
            Some(at) => {
                let ratio = at.as_secs_f64() / run.floor.as_secs_f64();
                format!("{:.0} s ({ratio:.2}x){}", at.as_secs_f64(), goal(ratio <= READY_GOAL))
            }
            None => {
                let ready = run.pods.iter().filter(|p| p.ready[cloud].is_some()).count();
                format!("never: {ready} of {} pods", run.pods.len())
            }
        };
        let (calls, throttled) = run.totals(service);
        let share = if calls == 0 { 0.0 } else { throttled as f64 / calls as f64 };
        let peak = run.steady_peak_over_mean(service);
        let left = run.min_left_secs[cloud];
        let left = if left == i64::MAX { "none served".to_owned() } else { format!("{left} s") };
        let _ = writeln!(
            out,
            "| {name} ({}) | {ready} | {calls} | {throttled} ({:.1}%){} | {:.2} | {peak:.2}{} | {} | {}{} | {} | {left} |",
            SERVICE_NAMES[service],
            100.0 * share,
            goal(share < THROTTLED_GOAL),
            run.steady_rate(service),
            goal(peak < PEAK_GOAL),
            run.requests[cloud],
            run.expired[cloud],
            goal(run.expired[cloud] == 0),
            run.failed[cloud],
        );
    }
    let (iam_calls, iam_throttled) = run.totals(2);
    let _ = writeln!(
        out,
        "| gcp (gcp-iam, quota 10x) | | {iam_calls} | {iam_throttled} | {:.2} | {:.2} | | | | |",
        run.steady_rate(2),
        run.steady_peak_over_mean(2)
    );
    let _ = writeln!(out, "\n{}", per_pod(&run.pods));
    let restarts: u32 = run.pods.iter().map(|p| p.restarts).sum();
    let died = run.pods.iter().filter(|p| p.died).count();
    let _ = writeln!(
        out,
        "pods started again (exited before ready): {restarts}; pods that exited after ready: {died}; \
         emulator: {:.1} s CPU, {:.0} MiB RSS",
        run.emulator_cpu.as_secs_f64(),
        run.emulator_rss_kib as f64 / 1024.0
    );
    let load: Vec<f64> = run.load.iter().copied().filter(|l| l.is_finite()).collect();
    if !load.is_empty() {
        let mean = load.iter().sum::<f64>() / load.len() as f64;
        let max = load.iter().copied().fold(f64::MIN, f64::max);
        let min = load.iter().copied().fold(f64::MAX, f64::min);
        let _ = writeln!(
            out,
            "1-minute load average during the run (every 10 s): min {min:.1}, mean {mean:.1}, max {max:.1}"
        );
    }
    out
}

const SERVICE_NAMES: [&str; 4] = ["aws-sts", "gcp-sts", "gcp-iam", "azure-token"];

/// keyless's CPU and memory per pod: mean, median, max.
fn per_pod(pods: &[PodResult]) -> String {
    let measured: Vec<&PodResult> = pods.iter().filter(|p| p.rss_kib > 0).collect();
    let stat = |values: Vec<f64>| {
        let mut values = values;
        values.sort_by(f64::total_cmp);
        let mean = values.iter().sum::<f64>() / values.len().max(1) as f64;
        let median = values.get(values.len() / 2).copied().unwrap_or(0.0);
        let max = values.last().copied().unwrap_or(0.0);
        format!("{mean:.3} | {median:.3} | {max:.3}")
    };
    let mib = |kib: u64| kib as f64 / 1024.0;
    let mut out = format!(
        "keyless per pod ({} pods measured at the end of the run) | mean | median | max\n|---|---|---|---|\n",
        measured.len()
    );
    let rows: [(&str, Vec<f64>); 6] = [
        ("CPU, utime + stime (s)", measured.iter().map(|p| p.cpu.as_secs_f64()).collect()),
        (
            "CPU, share of one core over its life (%)",
            measured.iter().map(|p| 100.0 * p.cpu.as_secs_f64() / p.alive.as_secs_f64().max(1.0)).collect(),
        ),
        ("RSS (MiB, VmRSS)", measured.iter().map(|p| mib(p.rss_kib)).collect()),
        ("of which anonymous (MiB, RssAnon)", measured.iter().map(|p| mib(p.anon_kib)).collect()),
        ("PSS (MiB, smaps_rollup: shared pages split)", measured.iter().map(|p| mib(p.pss_kib)).collect()),
        ("peak RSS (MiB, VmHWM)", measured.iter().map(|p| mib(p.hwm_kib)).collect()),
    ];
    for (label, values) in rows {
        let _ = writeln!(out, "| {label} | {} |", stat(values));
    }
    out
}

/// `DIR/fleet-procs.csv`: second, then calls and throttled calls of each service.
fn write_csv(dir: &std::path::Path, run: &FleetProcsRun) -> Result<(), BenchError> {
    let file_error = |source| BenchError::File { path: dir.to_owned(), source };
    std::fs::create_dir_all(dir).map_err(file_error)?;
    let mut csv = String::from("second");
    for name in SERVICE_NAMES {
        let _ = write!(csv, ",{name}_calls,{name}_throttled");
    }
    csv.push('\n');
    for (second, services) in run.per_second.iter().enumerate() {
        let _ = write!(csv, "{second}");
        for (calls, throttled) in services {
            let _ = write!(csv, ",{calls},{throttled}");
        }
        csv.push('\n');
    }
    let path = dir.join("fleet-procs.csv");
    std::fs::write(&path, csv).map_err(|source| BenchError::File { path, source })
}
