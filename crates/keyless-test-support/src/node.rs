//! A real Kubernetes node in the test loop: containerd (Debian's, with runc and the CNI plugins)
//! and a kubelet built by `scripts/kube`, with kube-controller-manager (ServiceAccounts,
//! `kube-root-ca.crt`, Jobs, Deployments) and kube-scheduler, on the harness's own etcd and
//! kube-apiserver ([`crate::kube`]).
//!
//! **Everything lives in a network namespace the harness creates** (`keyless-node-<pid>-<n>`): the
//! control plane on the namespace's loopback, the node's address on a bridge of its own
//! ([`NODE_IP`]), the pods on the CNI bridge's subnet. The machine's own namespace gains no address
//! and no iptables rule (the kubelet's iptables chains are off, the CNI bridge masquerades
//! nothing); the test reaches the API server, the emulator and the pods through relays: a listener
//! on the test's loopback whose connections are made from inside the namespace (a thread of the
//! test process that entered it, [`Node::forward`]). The API server's port is the same on both
//! sides, so its URL (and its service-account issuer) is one URL everywhere.
//!
//! One node per machine (fixed kubelet ports, the `kubepods` cgroups, one containerd state): a
//! file lock ([`LOCK`]) serializes node tests across processes, and whoever takes it first
//! removes what a killed run left (processes recorded in a pid file, shims of the node's
//! containerd, mounts under the node's directories, pod network namespaces, cgroups, the
//! namespace itself). The same clean-up runs when a [`Node`] is dropped, so a failing test
//! leaves nothing either.
//!
//! What this machine kind needs (`../shared/kubelet-notes.md` in the team's notes): cgroup v1
//! allowed (`failCgroupV1: false`), no negative `oom_score_adj` for sandboxes
//! (`restrict_oom_score_adj`), no AppArmor, `/run/netns` a shared mount, `makeIPTablesUtilChains:
//! false`. Images come from no registry: [`NodeImages`] builds them with podman (`FROM scratch`)
//! and imports them with `ctr images import`.

use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsFd as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::binary::workspace_root;
use crate::kube::{self, Cluster, ClusterOptions, KubeBinaries};
use crate::tools::{self, Missing};
use crate::wait::holds_within;

/// The node's name (`spec.nodeName`).
pub const NODE_NAME: &str = "keyless-node";
/// The node's address, on a bridge inside the namespace: pods reach what runs in the namespace
/// (the emulator) there.
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 1);
/// The pod subnet (the CNI bridge's; its gateway is `.1`).
pub const POD_SUBNET: &str = "10.201.0.0/24";
/// The sandbox ("pause") image, built from a static Go program by [`NodeImages`].
pub const PAUSE_IMAGE: &str = "localhost/keyless-test-pause:dev";
/// The app image: the static Go SDK clients of `tests/go` at `/usr/local/bin/{aws,gcp,azure}`.
pub const APPS_IMAGE: &str = "localhost/keyless-test-apps:dev";
/// The prefix of the harness's network namespaces (a leftover of a killed run is removed).
const NETNS_PREFIX: &str = "keyless-node-";
/// The machine-wide lock serializing node tests (flock; released when its process dies).
pub const LOCK: &str = "/run/keyless-test-node.lock";
/// Runtime state (sockets, configuration, pid file, CNI IPAM): emptied at every start.
const STATE: &str = "/run/keyless-test-node";
/// containerd's root (images survive runs: an import of an unchanged image is quick) and the
/// kubelet's root.
const PERSISTENT: &str = "/var/lib/keyless-test-node";
/// How long the node may take to turn Ready (a loaded 2-core machine).
const READY_DEADLINE: Duration = Duration::from_secs(180);
/// How long one `ctr` or `podman` call may take.
const TOOL_DEADLINE: Duration = Duration::from_secs(300);
/// The node's bearer token (`system:node:NAME` in `system:nodes`), on the namespace's loopback only.
const NODE_TOKEN: &str = "keyless-test-node-token";
/// The cgroup controllers (v1) the kubelet's `kubepods` hierarchy is created in.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Everything the node needs on the machine, found.
#[derive(Debug, Clone)]
pub struct NodeTools {
    pub kube: KubeBinaries,
}

/// Root, containerd, runc, the CNI plugins, nsenter, ip, podman, Go, and the kubelet,
/// controller-manager and scheduler from `scripts/kube`; or a skip (a failure under `CI=true`,
/// naming what is missing).
pub fn tools() -> Option<NodeTools> {
    let kube = kube::binaries()?;
    let mut missing = Vec::new();
    if !tools::is_root() {
        missing.push("root".to_owned());
    }
    for (tool, arg) in [("containerd", "--version"), ("ctr", "--version"), ("nsenter", "--version"), ("ip", "-V")] {
        if !tools::runs(tool, arg) {
            missing.push(tool.to_owned());
        }
    }
    for (tool, arg) in [("podman", "--version"), ("go", "version")] {
        if !tools::runs(tool, arg) {
            missing.push(tool.to_owned());
        }
    }
    if !Path::new("/usr/sbin/runc").is_file() {
        missing.push("/usr/sbin/runc".to_owned());
    }
    for plugin in ["bridge", "host-local", "loopback"] {
        if !Path::new("/usr/lib/cni").join(plugin).is_file() {
            missing.push(format!("/usr/lib/cni/{plugin}"));
        }
    }
    for binary in ["kubelet", "kube-controller-manager", "kube-scheduler"] {
        if !kube.path(binary).is_file() {
            missing.push(format!("{} (scripts/kube builds it)", kube.path(binary).display()));
        }
    }
    let found = missing.is_empty().then_some(NodeTools { kube });
    if found.is_none() {
        // The reason, whatever or_skip then does with it.
        #[allow(clippy::print_stderr)]
        {
            eprintln!("the node harness is missing: {}", missing.join(", "));
        }
    }
    tools::or_skip(
        found,
        Missing {
            what: "a node's tools: root, containerd, ctr, runc, CNI plugins (/usr/lib/cni), nsenter, ip, podman, go, and kubelet, kube-controller-manager, kube-scheduler in target/kube/bin (the line above names what is missing)",
            fix: "as root: apt-get install --no-install-recommends containerd runc containernetworking-plugins podman, then ./scripts/kube (./scripts/test does both)",
        },
    )
}

/// A running node and its control plane. Dropped: every process killed, every mount, cgroup,
/// network namespace and link it made removed.
#[derive(Debug)]
pub struct Node {
    pub cluster: Cluster,
    /// The network namespace everything runs in.
    pub netns: String,
    dialer: Dialer,
    relays: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
    children: Vec<(&'static str, Child)>,
    tools: NodeTools,
    // Dropped after every process was killed and before the lock is released.
    _cleanup: Cleanup,
    _lock: std::fs::File,
}

/// Removes what the node made when dropped: also when its start failed midway.
#[derive(Debug)]
struct Cleanup;

impl Drop for Cleanup {
    fn drop(&mut self) {
        clean_leftovers();
    }
}

impl Node {
    /// Takes the machine's node lock (waiting for another test's node to stop), removes what a
    /// killed run left, and starts the namespace, the control plane, containerd, the
    /// controller-manager, the scheduler and the kubelet; returns once the node is Ready and the
    /// `default` ServiceAccount exists. `None` when a tool is missing (skip; CI fails).
    pub async fn start() -> Option<Self> {
        let tools = tools()?;
        let lock = tokio::task::spawn_blocking(take_lock).await.expect("the lock task");
        clean_leftovers();
        let cleanup = Cleanup;
        static STARTED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let nth = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let netns = format!("{NETNS_PREFIX}{}-{nth}", std::process::id());
        prepare_machine(&netns);
        let dialer = Dialer::enter(&netns);

        // The API server's port: reserved on the test's loopback by the relay's own listener, and
        // the same number inside the namespace (where every port is free).
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a loopback port");
        let port = listener.local_addr().expect("the relay's address").port();
        let relays = vec![dialer.relay(listener, SocketAddr::from((Ipv4Addr::LOCALHOST, port)))];
        let options = ClusterOptions {
            netns: Some(netns.clone()),
            port: Some(port),
            extra_tokens: vec![format!("{NODE_TOKEN},system:node:{NODE_NAME},keyless-test-node,\"system:nodes\"")],
            with_nodes: true,
            dir_in: Some(PathBuf::from(STATE)),
        };
        let cluster = Cluster::start_with(&tools.kube, options).await;
        let mut node = Self {
            cluster,
            netns,
            dialer,
            relays: std::sync::Mutex::new(relays),
            children: Vec::new(),
            tools,
            _cleanup: cleanup,
            _lock: lock,
        };
        node.record_pids(&node.cluster.pids());

        node.start_containerd().await;
        NodeImages::pause().await.import(&node).await;
        node.start_controllers();
        node.start_kubelet();
        node.wait_ready().await;
        Some(node)
    }

    /// `binary ARGS` inside the namespace, logged to `STATE/NAME.log`, recorded in the pid file.
    fn spawn(&mut self, name: &'static str, binary: &Path, args: &[String]) {
        let log = Path::new(STATE).join(format!("{name}.log"));
        let child = kube::spawn_logged(Some(&self.netns), binary, args, &log);
        self.record_pids(&child.id().into_iter().collect::<Vec<_>>());
        self.children.push((name, child));
    }

    fn record_pids(&self, pids: &[u32]) {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(Path::new(STATE).join("pids"))
            .expect("the pid file");
        for pid in pids {
            writeln!(file, "{pid}").expect("writing the pid file");
        }
    }

    /// What component `name` (`containerd`, `kubelet`, `kube-controller-manager`,
    /// `kube-scheduler`) logged so far.
    pub fn log_of(&self, name: &str) -> String {
        std::fs::read_to_string(Path::new(STATE).join(format!("{name}.log"))).unwrap_or_default()
    }

    /// The last `lines` lines of every component's log (for a failure message).
    pub fn logs_tail(&self, lines: usize) -> String {
        let mut out = String::new();
        for name in ["containerd", "kubelet", "kube-controller-manager", "kube-scheduler"] {
            let log = self.log_of(name);
            let tail: Vec<&str> = log.lines().rev().take(lines).collect();
            out.push_str(&format!("--- {name} (last {lines} lines)\n"));
            for line in tail.into_iter().rev() {
                out.push_str(line);
                out.push('\n');
            }
        }
        out.push_str(&format!("--- kube-apiserver (last {lines} lines)\n"));
        let log = self.cluster.apiserver_logs();
        let tail: Vec<&str> = log.lines().rev().take(lines).collect();
        out.push_str(&tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
        out
    }

    async fn start_containerd(&mut self) {
        let config = Path::new(STATE).join("containerd.toml");
        std::fs::write(&config, containerd_config()).expect("containerd's configuration");
        let cni = Path::new(STATE).join("cni");
        std::fs::create_dir_all(&cni).expect("the CNI configuration directory");
        std::fs::write(cni.join("10-keyless-test.conflist"), cni_config()).expect("the CNI configuration");
        let args = vec![format!("--config={}", config.display())];
        self.spawn("containerd", Path::new("/usr/bin/containerd"), &args);
        let ready = holds_within(READY_DEADLINE, || async {
            Command::new("ctr")
                .args(["--address", &socket(), "version"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .await
                .is_ok_and(|s| s.success())
        })
        .await;
        assert!(ready, "containerd did not answer within {READY_DEADLINE:?}:\n{}", self.logs_tail(40));
    }

    fn start_controllers(&mut self) {
        let kubeconfig = self.cluster.kubeconfig.display().to_string();
        let controller_manager = vec![
            format!("--kubeconfig={kubeconfig}"),
            format!("--authentication-kubeconfig={kubeconfig}"),
            format!("--authorization-kubeconfig={kubeconfig}"),
            "--leader-elect=false".to_owned(),
            // kube-root-ca.crt in every namespace holds the cluster's CA.
            format!("--root-ca-file={}", self.cluster.ca_pem.display()),
            format!("--service-account-private-key-file={}", self.cluster.sa_key().display()),
            "--use-service-account-credentials=false".to_owned(),
            "--bind-address=127.0.0.1".to_owned(),
            "--v=1".to_owned(),
        ];
        let binary = self.tools.kube.path("kube-controller-manager");
        self.spawn("kube-controller-manager", &binary, &controller_manager);
        let scheduler = vec![
            format!("--kubeconfig={kubeconfig}"),
            format!("--authentication-kubeconfig={kubeconfig}"),
            format!("--authorization-kubeconfig={kubeconfig}"),
            "--leader-elect=false".to_owned(),
            "--bind-address=127.0.0.1".to_owned(),
            "--v=1".to_owned(),
        ];
        let binary = self.tools.kube.path("kube-scheduler");
        self.spawn("kube-scheduler", &binary, &scheduler);
    }

    fn start_kubelet(&mut self) {
        let dir = Path::new(STATE);
        let kubeconfig = dir.join("kubelet.kubeconfig");
        let config = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: keyless-test\n  cluster:\n    server: {}\n    \
             certificate-authority: {}\nusers:\n- name: node\n  user:\n    token: {NODE_TOKEN}\ncontexts:\n\
             - name: node\n  context:\n    cluster: keyless-test\n    user: node\ncurrent-context: node\n",
            self.cluster.server,
            self.cluster.ca_pem.display()
        );
        std::fs::write(&kubeconfig, config).expect("the kubelet's kubeconfig");
        let config_file = dir.join("kubelet.yaml");
        std::fs::write(&config_file, kubelet_config()).expect("the kubelet's configuration");
        let root = Path::new(PERSISTENT).join("kubelet");
        std::fs::create_dir_all(&root).expect("the kubelet's root");
        let args = vec![
            format!("--config={}", config_file.display()),
            format!("--kubeconfig={}", kubeconfig.display()),
            format!("--root-dir={}", root.display()),
            format!("--cert-dir={}", dir.join("kubelet-pki").display()),
            format!("--hostname-override={NODE_NAME}"),
            format!("--node-ip={NODE_IP}"),
            "--v=1".to_owned(),
        ];
        let binary = self.tools.kube.path("kubelet");
        self.spawn("kubelet", &binary, &args);
    }

    /// Waits until the node is Ready and the controller-manager made the `default` ServiceAccount.
    async fn wait_ready(&self) {
        let args = ["get", "node", NODE_NAME, "-o", "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}"];
        let ready = holds_within(READY_DEADLINE, || async {
            let out = self.cluster.kubectl(&args).await;
            out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "True"
        })
        .await;
        assert!(ready, "the node did not turn Ready within {READY_DEADLINE:?}:\n{}", self.logs_tail(40));
        let account = holds_within(READY_DEADLINE, || async {
            self.cluster.kubectl(&["get", "serviceaccount", "default", "-n", "default"]).await.status.success()
        })
        .await;
        assert!(account, "no default ServiceAccount within {READY_DEADLINE:?}:\n{}", self.logs_tail(40));
    }

    /// A listener on the test's loopback relaying every connection to `inside` (an address in the
    /// node's namespace: the emulator, a pod's IP); its address.
    pub async fn forward(&self, inside: SocketAddr) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a loopback port");
        let addr = listener.local_addr().expect("the relay's address");
        let relay = self.dialer.relay(listener, inside);
        self.relays.lock().expect("the relays").push(relay);
        addr
    }

    /// `keyless emulate` inside the namespace on [`NODE_IP`] (pods reach it there; its
    /// certificate names that address), relayed to the test's loopback for the control API.
    pub async fn start_emulator(&self) -> NodeEmulator {
        let state = tempfile::tempdir_in(STATE).expect("the emulator's directory");
        let inside = SocketAddr::from((NODE_IP, EMULATOR_PORT));
        let state_dir = state.path().to_str().expect("a UTF-8 path").to_owned();
        let process = crate::process::Process::spawn_in(
            Some(&self.netns),
            None,
            &[
                "emulate",
                "--listen",
                &inside.to_string(),
                "--hostname",
                &NODE_IP.to_string(),
                "--allow-remote-control",
                "--state-dir",
                &state_dir,
            ],
            &[("KEYLESS_LOG", "info")],
        );
        self.record_pids(&process.pid().into_iter().collect::<Vec<_>>());
        let ca = state.path().join("ca.pem");
        let relayed = self.forward(inside).await;
        let url = format!("https://{relayed}");
        crate::wait::wait_until("the emulator's CA", crate::wait::STARTUP_DEADLINE, || {
            let exists = ca.exists();
            async move { exists }
        })
        .await;
        let control = crate::emulate::ControlApi::new(&url, &ca);
        let answers = holds_within(crate::wait::STARTUP_DEADLINE, || async {
            control.client().get(control.url("/_emulator/counters")).send().await.is_ok()
        })
        .await;
        assert!(answers, "the emulator in the node's namespace never answered:\n{}", process.logs());
        NodeEmulator { process, url, inside_url: format!("https://{inside}"), ca, control, _state: state }
    }

    /// `ctr -n k8s.io ARGS` against the node's containerd; stdout, or the test fails.
    pub async fn ctr(&self, args: &[&str]) -> String {
        let mut command = Command::new("ctr");
        command.args(["--address", &socket(), "--namespace", "k8s.io"]).args(args);
        run_ok(command, &format!("ctr {args:?}")).await
    }

    /// Deletes every pod (so that the CNI plugin releases their networks) and stops the node;
    /// [`Drop`] then removes what is left. A test that fails midway gets the same clean-up from
    /// [`Drop`], without the graceful pod deletion.
    pub async fn stop(self) {
        let args = ["delete", "pods", "--all", "--all-namespaces", "--grace-period=5", "--wait=true", "--timeout=60s"];
        let _ = self.cluster.kubectl(&args).await;
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        for relay in
            self.relays.lock().map(|r| r.iter().map(|h| h.abort_handle()).collect()).unwrap_or_else(|_| Vec::new())
        {
            relay.abort();
        }
        // The kubelet first (it would restart what is killed), then the controllers; containerd's
        // tasks are killed through their cgroups, containerd, then the control plane.
        for name in ["kubelet", "kube-scheduler", "kube-controller-manager"] {
            for (_, child) in self.children.iter_mut().filter(|(n, _)| *n == name) {
                let _ = child.start_kill();
            }
        }
        kill_cgroup_tasks();
        kill_shims();
        for (_, child) in &mut self.children {
            let _ = child.start_kill();
        }
        for pid in self.cluster.pids() {
            kill(pid);
        }
        // `_cleanup` removes the rest once the fields drop.
    }
}

/// The emulator's port on [`NODE_IP`].
const EMULATOR_PORT: u16 = 9813;

/// `keyless emulate` in the node's namespace.
#[derive(Debug)]
pub struct NodeEmulator {
    pub process: crate::process::Process,
    /// Its URL from the test (through a relay).
    pub url: String,
    /// Its URL from the pods and the node (`https://NODE_IP:PORT`).
    pub inside_url: String,
    /// Its CA (PEM file).
    pub ca: PathBuf,
    pub control: crate::emulate::ControlApi,
    _state: tempfile::TempDir,
}

impl NodeEmulator {
    /// Its CA certificate (PEM text).
    pub fn ca_pem(&self) -> String {
        std::fs::read_to_string(&self.ca).expect("the emulator's CA")
    }
}

/// The machine's node lock, held: no node runs while it is (for a test checking that a stopped
/// node left nothing).
#[derive(Debug)]
pub struct MachineLock {
    _file: std::fs::File,
}

/// Waits for [`LOCK`] (another test's node to stop) and holds it.
pub async fn lock_machine() -> MachineLock {
    MachineLock { _file: tokio::task::spawn_blocking(take_lock).await.expect("the lock task") }
}

/// Takes [`LOCK`] (blocking): one node on the machine at a time.
fn take_lock() -> std::fs::File {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(LOCK)
        .unwrap_or_else(|e| panic!("opening {LOCK}: {e}"));
    if rustix::fs::flock(file.as_fd(), rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
        #[allow(clippy::print_stderr)]
        {
            eprintln!("waiting for {LOCK}: another test's node is running");
        }
        rustix::fs::flock(file.as_fd(), rustix::fs::FlockOperation::LockExclusive)
            .unwrap_or_else(|e| panic!("locking {LOCK}: {e}"));
    }
    file
}

/// The machine as the node needs it: `/run/netns` a shared mount (else a pod's network namespace
/// cannot be removed once another tool bind-mounted `/run/netns` over itself), the namespace with
/// its loopback up and the node's bridge and address, fresh state directories.
fn prepare_machine(netns: &str) {
    std::fs::create_dir_all("/run/netns").expect("/run/netns");
    if !run_status("mountpoint", &["-q", "/run/netns"]) {
        run_checked("mount", &["--bind", "/run/netns", "/run/netns"]);
    }
    run_checked("mount", &["--make-shared", "/run/netns"]);
    std::fs::create_dir_all(STATE).expect("the node's state directory");
    std::fs::create_dir_all(PERSISTENT).expect("the node's persistent directory");
    run_checked("ip", &["netns", "add", netns]);
    run_checked("ip", &["-n", netns, "link", "set", "lo", "up"]);
    run_checked("ip", &["-n", netns, "link", "add", "knode0", "type", "bridge"]);
    run_checked("ip", &["-n", netns, "addr", "add", &format!("{NODE_IP}/24"), "dev", "knode0"]);
    run_checked("ip", &["-n", netns, "link", "set", "knode0", "up"]);
}

/// Removes what a node left: its processes (the pid file, the shims of its containerd, the tasks
/// in the `kubepods` cgroups), mounts under its directories (the pods' volumes, root filesystems
/// and network namespaces), cgroups, the harness's namespaces (with the links in them), the
/// runtime state. Called under the lock only.
fn clean_leftovers() {
    if let Ok(pids) = std::fs::read_to_string(Path::new(STATE).join("pids")) {
        // A recorded pid is killed only while its command line still names the node's state
        // (every component's does): after a reboot the number may be another process's.
        for pid in pids.lines().filter_map(|l| l.trim().parse::<u32>().ok()) {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(STATE) {
                kill(pid);
            }
        }
    }
    kill_cgroup_tasks();
    kill_shims();
    // Give the killed processes a moment to exit, so that their mounts and cgroups can go.
    for _ in 0..50 {
        if cgroup_tasks().is_empty() && shim_pids().is_empty() {
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

fn kill_cgroup_tasks() {
    for pid in cgroup_tasks() {
        kill(pid);
    }
}

/// The containerd shims serving the node's containerd (their command line names its socket).
fn shim_pids() -> Vec<u32> {
    let socket = socket();
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
                let text = String::from_utf8_lossy(&cmdline);
                text.contains("containerd-shim") && text.contains(&socket)
            })
        })
        .collect()
}

fn kill_shims() {
    for pid in shim_pids() {
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

fn socket() -> String {
    format!("{STATE}/containerd.sock")
}

fn containerd_config() -> String {
    format!(
        r#"version = 2
root = "{PERSISTENT}/containerd"
state = "{STATE}/containerd"

[grpc]
  address = "{STATE}/containerd.sock"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  # Root here lacks CAP_SYS_RESOURCE: a sandbox's negative oom_score_adj would fail runc create.
  restrict_oom_score_adj = true
  # No AppArmor in this kernel.
  disable_apparmor = true
  # The pods' network namespaces under the node's state, not /run/netns: a leftover is found
  # (and unmounted) with the rest of the node's mounts.
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{STATE}/cni"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "/usr/sbin/runc"
        SystemdCgroup = false
"#
    )
}

/// The pod network: a bridge of its own with host-local addresses, the gateway on the bridge (the
/// pods' route to the node's address), no masquerading (no iptables rule anywhere).
fn cni_config() -> String {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "keyless-test",
        "plugins": [
            {
                "type": "bridge",
                "bridge": "kpod0",
                "isGateway": true,
                "ipMasq": false,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{ "subnet": POD_SUBNET }]],
                    "routes": [{ "dst": "0.0.0.0/0" }],
                    "dataDir": format!("{STATE}/cni-ipam"),
                },
            },
            { "type": "loopback" },
        ],
    })
    .to_string()
}

fn kubelet_config() -> String {
    format!(
        r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix://{STATE}/containerd.sock
cgroupDriver: cgroupfs
# This machine kind has cgroup v1 (hybrid); kubelet 1.35 refuses it unless told.
failCgroupV1: false
failSwapOn: false
# The kubelet's own iptables chains would drop traffic to 127/8 from other sources.
makeIPTablesUtilChains: false
readOnlyPort: 0
# Inside the namespace only: the API server reaches the kubelet (logs, exec) without a client
# certificate.
authentication:
  anonymous:
    enabled: true
  webhook:
    enabled: false
authorization:
  mode: AlwaysAllow
podLogsDir: {PERSISTENT}/pod-logs
resolvConf: ""
# A small test disk: never evict, never collect images.
evictionHard:
  memory.available: "1Mi"
  nodefs.available: "0%"
  nodefs.inodesFree: "0%"
  imagefs.available: "0%"
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
"#
    )
}

/// A thread of the test process inside the node's namespace that opens connections there.
#[derive(Debug, Clone)]
struct Dialer {
    requests: std::sync::mpsc::Sender<(SocketAddr, tokio::sync::oneshot::Sender<std::io::Result<std::net::TcpStream>>)>,
}

impl Dialer {
    /// A thread that entered `/run/netns/NETNS` (setns affects that thread only) and connects
    /// there on request, each connection from a thread of its own (which inherits the namespace).
    fn enter(netns: &str) -> Self {
        let path = format!("/run/netns/{netns}");
        let (requests, receiver) = std::sync::mpsc::channel::<(
            SocketAddr,
            tokio::sync::oneshot::Sender<std::io::Result<std::net::TcpStream>>,
        )>();
        let (entered, entered_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let entered_result = std::fs::File::open(&path).and_then(|ns| {
                rustix::thread::move_into_link_name_space(ns.as_fd(), Some(rustix::thread::LinkNameSpaceType::Network))
                    .map_err(std::io::Error::from)
            });
            let ok = entered_result.is_ok();
            let _ = entered.send(entered_result);
            if !ok {
                return;
            }
            while let Ok((addr, reply)) = receiver.recv() {
                std::thread::spawn(move || {
                    let stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(10));
                    let _ = reply.send(stream);
                });
            }
        });
        entered_rx.recv().expect("the dialer thread").unwrap_or_else(|e| panic!("entering {netns}: {e}"));
        Self { requests }
    }

    /// A task relaying each connection `listener` accepts to `inside`.
    fn relay(&self, listener: tokio::net::TcpListener, inside: SocketAddr) -> tokio::task::JoinHandle<()> {
        let dialer = self.clone();
        tokio::spawn(async move {
            while let Ok((mut outside, _)) = listener.accept().await {
                let dialer = dialer.clone();
                tokio::spawn(async move {
                    let (reply, answer) = tokio::sync::oneshot::channel();
                    if dialer.requests.send((inside, reply)).is_err() {
                        return;
                    }
                    let Ok(Ok(stream)) = answer.await else { return };
                    if stream.set_nonblocking(true).is_err() {
                        return;
                    }
                    let Ok(mut stream) = tokio::net::TcpStream::from_std(stream) else { return };
                    let _ = tokio::io::copy_bidirectional(&mut outside, &mut stream).await;
                });
            }
        })
    }
}

/// An image built without a registry (podman, `FROM scratch`), saved as an archive for
/// `ctr images import`.
#[derive(Debug)]
pub struct NodeImages {
    tag: String,
    archive: PathBuf,
}

impl NodeImages {
    /// [`PAUSE_IMAGE`]: a static Go program that waits for SIGTERM (the sandbox's process).
    pub async fn pause() -> Self {
        let rootfs = images_dir().join("pause-rootfs");
        std::fs::create_dir_all(&rootfs).expect("the pause root");
        go_build_static(&pause_source(), ".", &rootfs.join("pause")).await;
        Self::build(PAUSE_IMAGE, &rootfs, "ENTRYPOINT [\"/pause\"]\n", "pause").await
    }

    /// [`APPS_IMAGE`]: the Go SDK clients of `tests/go` built static (`CGO_ENABLED=0`) at
    /// `/usr/local/bin/{aws,gcp,azure}`, and `/usr/local/bin/wait` (the pause program: a
    /// long-running app that stops on SIGTERM), a `/tmp`, running as 65532.
    pub async fn apps() -> Self {
        let dir = images_dir();
        let rootfs = dir.join("apps-rootfs");
        let bin = rootfs.join("usr/local/bin");
        std::fs::create_dir_all(&bin).expect("the apps' bin directory");
        std::fs::create_dir_all(rootfs.join("tmp")).expect("the apps' tmp");
        let source = workspace_root().join("tests/go");
        for program in ["aws", "gcp", "azure"] {
            go_build_static(&source, &format!("./{program}"), &bin.join(program)).await;
        }
        go_build_static(&pause_source(), ".", &bin.join("wait")).await;
        Self::build(APPS_IMAGE, &rootfs, "USER 65532:65532\n", "apps").await
    }

    /// The keyless image `scripts/image` builds (`localhost/keyless:dev`, static).
    pub async fn keyless(podman: &crate::podman::Podman) -> Self {
        podman.build_sidecar_image().await;
        Self::save(crate::podman::SIDECAR_IMAGE, "keyless").await
    }

    async fn build(tag: &str, rootfs: &Path, instructions: &str, name: &str) -> Self {
        let dir = images_dir();
        let containerfile = dir.join(format!("{name}.Containerfile"));
        std::fs::write(&containerfile, format!("FROM scratch\nCOPY rootfs/ /\n{instructions}"))
            .expect("a Containerfile");
        let context = dir.join(format!("{name}-context"));
        let _ = std::fs::remove_dir_all(&context);
        std::fs::create_dir_all(&context).expect("a build context");
        run_checked("cp", &["-a", &rootfs.display().to_string(), &context.join("rootfs").display().to_string()]);
        let mut command = Command::new("podman");
        command.args(["build", "--quiet", "--pull=never", "-f"]).arg(&containerfile).args(["-t", tag]).arg(&context);
        run_ok(command, &format!("podman build {tag}")).await;
        Self::save(tag, name).await
    }

    async fn save(tag: &str, name: &str) -> Self {
        let archive = images_dir().join(format!("{name}.tar"));
        let _ = std::fs::remove_file(&archive);
        let mut command = Command::new("podman");
        command.args(["save", "--format", "docker-archive", "-o"]).arg(&archive).arg(tag);
        run_ok(command, &format!("podman save {tag}")).await;
        Self { tag: tag.to_owned(), archive }
    }

    /// Imports the image into the node's containerd (namespace `k8s.io`, where the kubelet looks).
    pub async fn import(&self, node: &Node) {
        let archive = self.archive.display().to_string();
        node.ctr(&["images", "import", &archive]).await;
        let listed = node.ctr(&["images", "list", "--quiet"]).await;
        assert!(
            listed.lines().any(|l| l == self.tag || l == format!("docker.io/{}", self.tag)),
            "{} is not among the node's images after the import:\n{listed}",
            self.tag
        );
    }
}

/// The source of the pause program (waits for SIGTERM or SIGINT), written under
/// `target/node-images`.
fn pause_source() -> PathBuf {
    let source = images_dir().join("pause-src");
    std::fs::create_dir_all(&source).expect("the pause source directory");
    std::fs::write(source.join("go.mod"), "module keyless.test/pause\n\ngo 1.22\n").expect("go.mod");
    std::fs::write(
        source.join("main.go"),
        "// The sandbox's process: waits for SIGTERM or SIGINT.\npackage main\n\nimport (\n\t\"os\"\n\t\"os/signal\"\n\t\"syscall\"\n)\n\nfunc main() {\n\tc := make(chan os.Signal, 1)\n\tsignal.Notify(c, syscall.SIGTERM, syscall.SIGINT)\n\t<-c\n}\n",
    )
    .expect("main.go");
    source
}

fn images_dir() -> PathBuf {
    let dir = workspace_root().join("target/node-images");
    std::fs::create_dir_all(&dir).expect("target/node-images");
    dir
}

/// `go build` of `package` in `module` with `CGO_ENABLED=0` into `out`, checked static (no
/// program interpreter: the binary runs in an image with nothing else).
async fn go_build_static(module: &Path, package: &str, out: &Path) {
    let mut command = Command::new("go");
    command
        .args(["build", "-trimpath", "-buildvcs=false", "-o"])
        .arg(out)
        .arg(package)
        .current_dir(module)
        .env("CGO_ENABLED", "0")
        .env("GOFLAGS", "-mod=readonly");
    run_ok(command, &format!("go build {package} in {}", module.display())).await;
    assert!(is_static(out), "{} is not static (it has a program interpreter)", out.display());
}

/// Whether the ELF file at `path` has no `PT_INTERP` program header (needs no dynamic loader).
pub fn is_static(path: &Path) -> bool {
    let Ok(bytes) = std::fs::read(path) else { return false };
    // ELF64 little-endian only (this machine kind): e_phoff at 32, e_phentsize at 54, e_phnum at 56.
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" || bytes[4] != 2 || bytes[5] != 1 {
        return false;
    }
    let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(bytes[32..40].try_into().expect("8 bytes")) as usize;
    let (size, count) = (u16_at(54), u16_at(56));
    (0..count).all(|i| {
        let at = phoff + i * size;
        // PT_INTERP is 3.
        bytes.get(at..at + 4).is_some_and(|t| u32::from_le_bytes(t.try_into().expect("4 bytes")) != 3)
    })
}

/// Runs `command`; its stdout, or the test fails with its output.
async fn run_ok(mut command: Command, what: &str) -> String {
    command.stdin(Stdio::null()).kill_on_drop(true);
    let out = tokio::time::timeout(TOOL_DEADLINE, command.output())
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish in {TOOL_DEADLINE:?}"))
        .unwrap_or_else(|e| panic!("running {what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn run_status(program: &str, args: &[&str]) -> bool {
    std::process::Command::new(program).args(args).status().is_ok_and(|s| s.success())
}

fn run_checked(program: &str, args: &[&str]) {
    let out =
        std::process::Command::new(program).args(args).output().unwrap_or_else(|e| panic!("running {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}
