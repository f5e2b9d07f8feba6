//! The fleet benchmark's report: a Markdown table per run against the goals (issues 17 and 28,
//! docs/fleet.md), and exchanges per second as CSV for `scripts/fleet-plot`. The default schedule
//! missing a goal of issue 28 (ready, throttled, expired) fails the command: a regression shows.

use std::fmt::Write as _;
use std::path::Path;

use crate::BenchError;
use crate::fleet::{Cloud, FleetOptions, FleetRun, Schedule, simulate};

/// Ready within this many times the floor N/Q.
pub const READY_GOAL: f64 = 1.3;
/// Throttled calls at most this many times the unavoidable ones (`N - Q*T`, issue 28).
pub const THROTTLED_GOAL: f64 = 2.0;
/// Steady-state 10-second peak under this many times the mean.
pub const PEAK_GOAL: f64 = 1.5;

/// Every cloud under both schedules: the table on stdout, the CSVs into `--csv`.
#[allow(clippy::print_stdout)] // the report is the output
pub fn report(options: &FleetOptions) -> Result<(), BenchError> {
    println!(
        "fleet: {} pods started evenly over {}, credentials of {}, quota {}/s per cloud, {} of virtual time\n",
        options.pods,
        humantime::format_duration(options.rollout),
        humantime::format_duration(options.lifetime),
        options.quota,
        humantime::format_duration(options.duration),
    );
    println!("{}", header());
    let clouds = if options.clouds.is_empty() { Cloud::ALL.to_vec() } else { options.clouds.clone() };
    let mut missed = Vec::new();
    for cloud in clouds {
        let mut runs = Vec::new();
        for schedule in [Schedule::Fixed, Schedule::Jittered] {
            #[allow(clippy::disallowed_methods)] // how long the simulation took on this machine, not its clock
            let started = std::time::Instant::now();
            let run = simulate(options, cloud, schedule).map_err(|e| BenchError::Request(e.to_string()))?;
            println!("{} | {:.1}s", row(&run), started.elapsed().as_secs_f64());
            if schedule == Schedule::Jittered {
                missed.extend(missed_goals(&run).into_iter().map(|goal| format!("{}: {goal}", cloud.dir_name())));
            }
            runs.push(run);
        }
        if let Some(dir) = &options.csv {
            write_csv(dir, cloud, &runs)?;
        }
    }
    if missed.is_empty() { Ok(()) } else { Err(BenchError::Goals(missed.join("; "))) }
}

/// The goals of issue 28 a run of the default schedule misses: every pod ready within
/// [`READY_GOAL`] of the floor, throttled calls at most [`THROTTLED_GOAL`] times the unavoidable
/// ones, no expired credential served.
pub fn missed_goals(run: &FleetRun) -> Vec<String> {
    let mut missed = Vec::new();
    match run.ready_ratio() {
        Some(ratio) if ratio <= READY_GOAL => {}
        Some(ratio) => missed.push(format!("all ready at {ratio:.2}x the floor N/Q (goal {READY_GOAL}x)")),
        None => missed.push("some pods never got a credential".to_owned()),
    }
    if let Some(ratio) = run.throttled_ratio().filter(|ratio| *ratio > THROTTLED_GOAL) {
        missed.push(format!("{ratio:.2}x the unavoidable throttled calls (goal {THROTTLED_GOAL}x)"));
    }
    if run.unavoidable == 0 && run.throttled > run.units as u64 {
        missed.push(format!("{} throttled calls where none are unavoidable", run.throttled));
    }
    if run.expired_served > 0 {
        missed.push(format!("{} expired credentials served", run.expired_served));
    }
    missed
}

fn header() -> String {
    "| cloud | schedule | all ready (x floor N/Q) | calls | throttled (x unavoidable N-QT; share of calls) | \
     steady 10 s peak / mean | expired served | failed after ready | wall time |\n|---|---|---|---|---|---|---|---|---|"
        .to_owned()
}

pub fn row(run: &FleetRun) -> String {
    let ready = match (run.all_ready, run.ready_ratio()) {
        (Some(at), Some(ratio)) => {
            format!("{}s ({ratio:.2}x of {}s){}", at.as_secs(), run.floor.as_secs(), goal(ratio <= READY_GOAL))
        }
        _ => "never (goal missed)".to_owned(),
    };
    let throttled = match run.throttled_ratio() {
        Some(ratio) => format!("{ratio:.2}x of {}{}", run.unavoidable, goal(ratio <= THROTTLED_GOAL)),
        None => "none unavoidable".to_owned(),
    };
    table_row(&[
        &run.cloud.dir_name(),
        &format_args!("refresh_jitter = {}", run.jitter),
        &ready,
        &run.calls,
        &format_args!("{} ({throttled}; {:.1}%)", run.throttled, 100.0 * run.throttled_share()),
        &format_args!("{:.2}{}", run.steady_peak_over_mean, goal(run.steady_peak_over_mean < PEAK_GOAL)),
        &format_args!("{}{}", run.expired_served, goal(run.expired_served == 0)),
        &run.failed_after_ready,
    ])
}

/// A row of a markdown table, `| a | b | c` (the wall time cell is appended by the caller), the
/// fleet reports' and the node report's.
pub fn table_row(cells: &[&dyn std::fmt::Display]) -> String {
    let mut out = String::new();
    for cell in cells {
        let _ = write!(out, "| {cell} ");
    }
    out.pop();
    out
}

fn goal(met: bool) -> &'static str {
    if met { "" } else { " (goal missed)" }
}

/// `DIR/fleet-CLOUD.csv`: second, then calls and throttled calls of each schedule.
fn write_csv(dir: &Path, cloud: Cloud, runs: &[FleetRun]) -> Result<(), BenchError> {
    let file_error = |source| BenchError::File { path: dir.to_owned(), source };
    std::fs::create_dir_all(dir).map_err(file_error)?;
    let mut csv = String::from("second,fixed_calls,fixed_throttled,jittered_calls,jittered_throttled\n");
    let seconds = runs.iter().map(|r| r.per_second.len()).min().unwrap_or(0);
    for second in 0..seconds {
        let _ = write!(csv, "{second}");
        for run in runs {
            let (calls, throttled) = run.per_second[second];
            let _ = write!(csv, ",{calls},{throttled}");
        }
        csv.push('\n');
    }
    let path = dir.join(format!("fleet-{}.csv", cloud.dir_name()));
    std::fs::write(&path, csv).map_err(|source| BenchError::File { path, source })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_table_row_is_its_cells_between_pipes() {
        assert_eq!(table_row(&[&"aws", &3, &format_args!("{:.1}", 2.0)]), "| aws | 3 | 2.0");
        assert_eq!(table_row(&[]), "");
    }

    /// The benchmark's small configuration, so it cannot rot: 200 pods at 1 exchange/s (the
    /// 10,000 pods at 50/s, scaled down), two hours of virtual time.
    fn small() -> FleetOptions {
        FleetOptions {
            pods: 200,
            quota: 1.0,
            rollout: Duration::from_secs(60),
            lifetime: Duration::from_secs(3600),
            duration: Duration::from_secs(2 * 3600),
            csv: None,
            clouds: Vec::new(),
            jitter: None,
            throttle_retry: None,
        }
    }

    #[test]
    fn a_small_fleet_gets_ready_and_is_never_served_an_expired_credential() {
        for cloud in Cloud::ALL {
            for schedule in [Schedule::Fixed, Schedule::Jittered] {
                let run = simulate(&small(), cloud, schedule).unwrap();
                let row = row(&run);
                assert!(run.all_ready.is_some(), "{row}");
                assert_eq!(run.expired_served, 0, "{row}");
                assert_eq!(run.failed_after_ready, 0, "{row}");
                assert!(run.throttled > 0, "a rollout 3x over quota is throttled: {row}");

                assert!(run.calls >= 200 * 3, "every pod refreshed at least twice in two hours: {row}");
            }
        }
    }

    /// Issue 28's rollout scaled down by five: 2,000 pods over 60 s against 10 exchanges a second
    /// (7,000 and 50/s; at 1/s the bucket's burst of one throttles random arrivals far more often
    /// than a burst of 50 does, so the 200-pod configuration is not the same shape).
    #[test]
    fn a_rollout_over_quota_meets_the_goals_of_issue_28() {
        let options = FleetOptions { pods: 2000, quota: 10.0, duration: Duration::from_secs(3600), ..small() };
        for cloud in Cloud::ALL {
            let run = simulate(&options, cloud, Schedule::Jittered).unwrap();
            assert_eq!(run.unavoidable, 1400);
            assert_eq!(missed_goals(&run), Vec::<String>::new(), "{}", row(&run));
        }
    }

    #[test]
    fn jitter_flattens_the_refresh_waves_of_a_fleet_started_together() {
        let fixed = simulate(&small(), Cloud::Gcp, Schedule::Fixed).unwrap();
        let jittered = simulate(&small(), Cloud::Gcp, Schedule::Jittered).unwrap();
        assert!(jittered.steady_peak_over_mean < fixed.steady_peak_over_mean, "{}\n{}", row(&fixed), row(&jittered));
    }
}
