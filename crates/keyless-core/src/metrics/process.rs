//! The standard `process_*` metrics (what every Prometheus client library exports: CPU seconds,
//! resident and virtual memory, open and maximum file descriptors, threads, start time), read on
//! each scrape from `/proc/self`. prometheus-client has no process collector, and the crates that
//! do (metrics-process, prometheus) serve other metrics libraries.
//!
//! Every read is bounded (a `stat` line is well under 1 KiB; the descriptor count stops at
//! [`MAX_FDS_COUNTED`]); where `/proc` is missing (not Linux) the metrics are simply absent.

use std::io::Read as _;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// Bound on what is read of one `/proc` file.
const MAX_PROC_READ: u64 = 4096;
/// Bound on the descriptors counted per scrape: past it the count says "at least this many".
const MAX_FDS_COUNTED: u64 = 1 << 20;

/// The fields of `/proc/self/stat` the metrics need.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Stat {
    pub utime_ticks: u64,
    pub stime_ticks: u64,
    pub threads: i64,
    pub start_ticks: u64,
    pub vsize_bytes: u64,
    pub rss_pages: i64,
}

/// Parses a `/proc/PID/stat` line. The command name (field 2) is in parentheses and may hold
/// spaces and parentheses itself: the fields are counted from the last `)`.
pub(crate) fn parse_stat(line: &str) -> Option<Stat> {
    let rest = &line[line.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
    // fields[0] is field 3 (state): field N is fields[N - 3].
    let field = |n: usize| fields.get(n - 3).copied();
    Some(Stat {
        utime_ticks: field(14)?.parse().ok()?,
        stime_ticks: field(15)?.parse().ok()?,
        threads: field(20)?.parse().ok()?,
        start_ticks: field(22)?.parse().ok()?,
        vsize_bytes: field(23)?.parse().ok()?,
        rss_pages: field(24)?.parse().ok()?,
    })
}

fn read_bounded(path: &str) -> Option<String> {
    let mut text = String::new();
    std::fs::File::open(path).ok()?.take(MAX_PROC_READ).read_to_string(&mut text).ok()?;
    Some(text)
}

/// Seconds since boot, from `/proc/uptime`.
fn uptime_seconds() -> Option<f64> {
    read_bounded("/proc/uptime")?.split_ascii_whitespace().next()?.parse().ok()
}

fn open_fds() -> Option<u64> {
    let entries = std::fs::read_dir("/proc/self/fd").ok()?;
    // The directory handle being read is one of them.
    Some(entries.take(MAX_FDS_COUNTED as usize).count().saturating_sub(1) as u64)
}

/// Collects the `process_*` metrics on each scrape.
#[derive(Debug, Default)]
pub(crate) struct ProcessCollector {
    /// The start time (Unix seconds), computed once: boot time plus the start tick.
    start_time: OnceLock<Option<f64>>,
}

impl ProcessCollector {
    // The OS's wall clock, not keyless's `Clock`: uptime and the start tick are the kernel's.
    #[allow(clippy::disallowed_methods)]
    fn start_time(&self, stat: &Stat, ticks: f64) -> Option<f64> {
        *self.start_time.get_or_init(|| {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs_f64();
            let boot = now - uptime_seconds()?;
            Some(boot + stat.start_ticks as f64 / ticks)
        })
    }
}

fn gauge<N: prometheus_client::encoding::EncodeGaugeValue>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: N,
) -> Result<(), std::fmt::Error> {
    let gauge = ConstGauge::new(value);
    gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if let Some(stat) = read_bounded("/proc/self/stat").as_deref().and_then(parse_stat) {
            let ticks = rustix::param::clock_ticks_per_second() as f64;
            let page = rustix::param::page_size() as i64;
            let cpu = ConstCounter::new((stat.utime_ticks + stat.stime_ticks) as f64 / ticks);
            cpu.encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds.",
                None,
                cpu.metric_type(),
            )?)?;
            gauge(
                &mut encoder,
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                stat.rss_pages.saturating_mul(page),
            )?;
            gauge(
                &mut encoder,
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
                i64::try_from(stat.vsize_bytes).unwrap_or(i64::MAX),
            )?;
            gauge(&mut encoder, "process_threads", "Number of OS threads in the process.", stat.threads)?;
            if let Some(start) = self.start_time(&stat, ticks) {
                gauge(
                    &mut encoder,
                    "process_start_time_seconds",
                    "Start time of the process since unix epoch in seconds.",
                    start,
                )?;
            }
        }
        if let Some(open) = open_fds() {
            let open = i64::try_from(open).unwrap_or(i64::MAX);
            gauge(&mut encoder, "process_open_fds", "Number of open file descriptors.", open)?;
        }
        if let Some(max) = rustix::process::getrlimit(rustix::process::Resource::Nofile).current {
            let max = i64::try_from(max).unwrap_or(i64::MAX);
            gauge(&mut encoder, "process_max_fds", "Maximum number of open file descriptors.", max)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_name_with_spaces_and_parentheses_does_not_shift_the_fields() {
        let line = "4242 (a b) (c)) S 1 4242 4242 0 -1 4194560 500 0 0 0 250 75 0 0 20 0 7 0 123456 \
                    1000000 321 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 3 0 0 0 0 0";
        assert_eq!(
            parse_stat(line),
            Some(Stat {
                utime_ticks: 250,
                stime_ticks: 75,
                threads: 7,
                start_ticks: 123456,
                vsize_bytes: 1000000,
                rss_pages: 321
            })
        );
        assert_eq!(parse_stat("4242 (truncated) S 1 2"), None);
        assert_eq!(parse_stat("no parenthesis at all"), None);
    }

    #[test]
    #[cfg_attr(not(target_os = "linux"), ignore = "reads /proc, which only Linux has")]
    #[allow(clippy::disallowed_methods)] // compared with the kernel's clock, as the collector is
    fn this_process_reports_plausible_values() {
        let stat = parse_stat(&read_bounded("/proc/self/stat").expect("readable")).expect("parses");
        assert!(stat.rss_pages > 0 && stat.threads >= 1, "{stat:?}");
        assert!(open_fds().expect("counted") >= 3);
        let start = ProcessCollector::default()
            .start_time(&stat, rustix::param::clock_ticks_per_second() as f64)
            .expect("computed");
        let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_secs_f64();
        assert!(start <= now + 1.0 && start > now - 24.0 * 3600.0, "start {start}, now {now}");
    }
}
