//! What the kernel says about a process and the machine: memory (`/proc/PID/status`), CPU time
//! (`/proc/PID/stat`), load, CPU model.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use keyless_test_support::ports;

use crate::BenchError;

/// `VmRSS`, `VmHWM` (peak RSS) and the split of RSS into anonymous memory (what the process
/// allocated) and file pages (the mapped binary and libraries), in KiB.
#[derive(Debug, Clone, Copy)]
pub struct Memory {
    pub rss_kib: u64,
    pub hwm_kib: u64,
    pub anon_kib: u64,
    pub file_kib: u64,
}

pub fn memory(pid: u32) -> Result<Memory, BenchError> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).map_err(|e| BenchError::Proc { path: path.clone(), source: e })?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .ok_or_else(|| BenchError::Proc { path: path.clone(), source: std::io::Error::other(format!("no {name}")) })
    };
    Ok(Memory {
        rss_kib: field("VmRSS:")?,
        hwm_kib: field("VmHWM:")?,
        anon_kib: field("RssAnon:")?,
        file_kib: field("RssFile:")?,
    })
}

/// Resident KiB of `pid` per mapped file (`[heap]`, `[stack]`, `[anonymous]` for the others),
/// largest first: what the RSS is made of.
pub fn rss_by_mapping(pid: u32) -> Result<Vec<(String, u64)>, BenchError> {
    let path = format!("/proc/{pid}/smaps");
    let smaps = std::fs::read_to_string(&path).map_err(|e| BenchError::Proc { path: path.clone(), source: e })?;
    let mut sums: Vec<(String, u64)> = Vec::new();
    let mut current = String::new();
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let first = fields.next().unwrap_or_default();
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            // A mapping's header: address perms offset dev inode [pathname].
            current = fields.nth(4).map_or_else(|| "[anonymous]".to_owned(), str::to_owned);
        } else if first == "Rss:" {
            let kib = fields.next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            match sums.iter_mut().find(|(name, _)| *name == current) {
                Some((_, total)) => *total += kib,
                None => sums.push((current.clone(), kib)),
            }
        }
    }
    sums.retain(|(_, kib)| *kib > 0);
    sums.sort_by_key(|(_, kib)| std::cmp::Reverse(*kib));
    Ok(sums)
}

/// User plus system CPU time `pid` has used so far.
pub fn cpu_time(pid: u32, ticks_per_second: u64) -> Result<Duration, BenchError> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).map_err(|e| BenchError::Proc { path: path.clone(), source: e })?;
    // Fields after the command name (which may hold spaces, so split after its closing paren):
    // state is field 3, utime 14 and stime 15.
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or_default();
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    let total = ticks(11) + ticks(12);
    Ok(Duration::from_secs_f64(total as f64 / ticks_per_second.max(1) as f64))
}

/// The kernel's clock ticks per second (`getconf CLK_TCK`), 100 where it cannot be asked.
pub fn ticks_per_second() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

/// A loopback port free right now, never handed out before by this process
/// (`keyless_test_support::ports`, the tests' own).
pub fn free_port() -> Result<SocketAddr, BenchError> {
    ports::free_port().map_err(port_error)
}

/// Two such ports.
pub fn free_ports() -> Result<(SocketAddr, SocketAddr), BenchError> {
    let [a, b] = ports::free_ports::<2>().map_err(port_error)?;
    Ok((a, b))
}

fn port_error(source: std::io::Error) -> BenchError {
    BenchError::Connect { addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), source }
}

/// The 1-minute load average (NaN where `/proc/loadavg` cannot be read).
pub fn load_1m() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(f64::NAN)
}

/// The 1-minute load average and the runnable/total task counts, as `/proc/loadavg` says.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(4).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// CPU model, core count and kernel, for the report.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_owned()).unwrap_or_default();
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| s.lines().next().map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_owned()))
        .and_then(|kib| kib.parse::<u64>().ok())
        .map(|kib| format!("{:.0} GiB", kib as f64 / (1024.0 * 1024.0)))
        .unwrap_or_default();
    format!("nproc {cores}, {cpu}, {memory} RAM, Linux {kernel}")
}
