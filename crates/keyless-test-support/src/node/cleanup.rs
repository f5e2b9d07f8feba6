//! Removing what a node left, after a test (`Drop`) or a killed run (the next start): processes,
//! mounts, cgroups, the harness's network namespaces, the runtime state.

use std::path::Path;
use std::time::Duration;

use super::{NETNS_PREFIX, PERSISTENT, STATE};

/// The cgroup controllers (v1) the kubelet's `kubepods` hierarchy is created in.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Removes what a node left: its processes ([`node_pids`], and the tasks in the `kubepods`
/// cgroups), mounts under its directories (the pods' volumes, root filesystems and network
/// namespaces), cgroups, the harness's namespaces (with the links in them), the runtime state.
/// Called under the lock only.
pub(super) fn clean_leftovers() {
    kill_cgroup_tasks();
    kill_node_processes();
    // Give the killed processes a moment to exit, so that their mounts and cgroups can go.
    for _ in 0..50 {
        if cgroup_tasks().is_empty() && node_pids().is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    unmount_under(&[STATE, PERSISTENT]);
    // The harness's namespaces (the pods' are under STATE: `netns_mounts_under_state_dir`).
    if let Ok(entries) = std::fs::read_dir("/run/netns") {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(NETNS_PREFIX) {
                let _ = std::process::Command::new("ip").args(["netns", "delete", &name]).status();
                let path = entry.path();
                let _ = rustix::mount::unmount(&path, rustix::mount::UnmountFlags::DETACH);
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    remove_kubepods_cgroups();
    let _ = std::fs::remove_dir_all(STATE);
    let _ = std::fs::remove_dir_all(Path::new(PERSISTENT).join("kubelet"));
    let _ = std::fs::remove_dir_all(Path::new(PERSISTENT).join("pod-logs"));
}

fn kill(pid: u32) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
    }
}

/// The pids of every task in the `kubepods` cgroups (the pods' processes).
fn cgroup_tasks() -> Vec<u32> {
    let mut pids = Vec::new();
    let mut stack = vec![Path::new(CGROUP_ROOT).join("pids/kubepods")];
    while let Some(dir) = stack.pop() {
        if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            pids.extend(procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
        }
        if let Ok(entries) = std::fs::read_dir(&dir) {
            stack.extend(entries.flatten().filter(|e| e.path().is_dir()).map(|e| e.path()));
        }
    }
    pids
}

pub(super) fn kill_cgroup_tasks() {
    for pid in cgroup_tasks() {
        kill(pid);
    }
}

/// The node's processes, also those of a run that was killed: every process whose command line
/// names the node's state directory (each component's does: its configuration, data directory or
/// socket is there, a shim's too) and that runs in another network namespace than this test (the
/// node's; a process of the machine's own namespace that merely names the directory, a `tail -f`
/// of a log, is left alone). Zombies have no command line: nothing to kill.
fn node_pids() -> Vec<u32> {
    let own = std::fs::read_link("/proc/self/ns/net").ok();
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter(|pid| {
            let names_state = std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).contains(STATE));
            names_state && std::fs::read_link(format!("/proc/{pid}/ns/net")).ok().is_some_and(|net| Some(net) != own)
        })
        .collect()
}

pub(super) fn kill_node_processes() {
    for pid in node_pids() {
        kill(pid);
    }
}

/// Lazily unmounts every mount point under `dirs`, deepest first.
fn unmount_under(dirs: &[&str]) {
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else { return };
    let mut points: Vec<String> = mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|p| p.replace("\\040", " "))
        .filter(|p| dirs.iter().any(|d| p == d || p.starts_with(&format!("{d}/"))))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for point in points {
        let _ = rustix::mount::unmount(point.as_str(), rustix::mount::UnmountFlags::DETACH);
    }
}

/// Removes the kubelet's `kubepods` cgroups (children first) in every v1 hierarchy.
fn remove_kubepods_cgroups() {
    let Ok(controllers) = std::fs::read_dir(CGROUP_ROOT) else { return };
    for controller in controllers.flatten() {
        let top = controller.path().join("kubepods");
        if !top.is_dir() {
            continue;
        }
        let mut dirs = Vec::new();
        let mut stack = vec![top];
        while let Some(dir) = stack.pop() {
            if let Ok(entries) = std::fs::read_dir(&dir) {
                stack.extend(entries.flatten().filter(|e| e.path().is_dir()).map(|e| e.path()));
            }
            dirs.push(dir);
        }
        dirs.sort_by_key(|d| std::cmp::Reverse(d.as_os_str().len()));
        for dir in dirs {
            for _ in 0..20 {
                if std::fs::remove_dir(&dir).is_ok() || !dir.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}
