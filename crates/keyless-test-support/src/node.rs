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
//! removes what a killed run left (processes in another network namespace whose command line
//! names the node's state, the shims of its containerd among them; the pods' processes in the
//! `kubepods` cgroups; mounts under the node's directories, pod network namespaces, cgroups, the
//! namespace itself). The same clean-up runs when a [`Node`] is dropped, so a failing test
//! leaves nothing either.
//!
//! What this machine kind needs (`../shared/kubelet-notes.md` in the team's notes): cgroup v1
//! allowed (`failCgroupV1: false`), no negative `oom_score_adj` for sandboxes
//! (`restrict_oom_score_adj`), no AppArmor, `/run/netns` a shared mount, `makeIPTablesUtilChains:
//! false`. Images come from no registry: [`NodeImages`] builds them with podman (`FROM scratch`)
//! and imports them with `ctr images import`.

mod cleanup;
mod config;
mod images;
mod record;
mod relay;

use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsFd as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use self::cleanup::{clean_leftovers, kill_cgroup_tasks, kill_node_processes};
use self::config::{cni_config, containerd_config, kubelet_config};
pub use self::images::{NodeImages, is_static};
pub use self::record::assert_no_request_failed_before_sigterm;
use self::relay::Dialer;
use crate::kube::{self, Cluster, ClusterOptions, KubeBinaries};
use crate::tools::Missing;
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
/// Runtime state (sockets, configuration, logs, the control plane's files, CNI IPAM): emptied at
/// every start. Every process of the node names it on its command line.
const STATE: &str = "/run/keyless-test-node";
/// containerd's root (images survive runs: an import of an unchanged image is quick) and the
/// kubelet's root.
const PERSISTENT: &str = "/var/lib/keyless-test-node";
/// How long the node may take to turn Ready (a loaded 2-core machine).
const READY_DEADLINE: Duration = Duration::from_secs(180);
/// How long a test waits for another's node to stop (the examples' test holds it for the
/// kubelet's token rotation, about ten minutes).
const LOCK_DEADLINE: Duration = Duration::from_secs(30 * 60);
/// How long one `ctr` or `podman` call may take.
const TOOL_DEADLINE: Duration = Duration::from_secs(300);
/// The node's bearer token (`system:node:NAME` in `system:nodes`), on the namespace's loopback only.
const NODE_TOKEN: &str = "keyless-test-node-token";

/// Everything the node needs on the machine, found.
#[derive(Debug, Clone)]
pub struct NodeTools {
    pub kube: KubeBinaries,
}

/// What a node test misses without the node's tools.
pub const NODE_TOOLS: Missing = Missing {
    what: "a node's tools: root, containerd, ctr, runc, CNI plugins (/usr/lib/cni), nsenter, ip, iptables, podman, go, and kubelet, kube-controller-manager, kube-scheduler beside the control plane in target/kube/bin (the line above names what is missing)",
    fix: "as root: apt-get install --no-install-recommends containerd runc containernetworking-plugins podman, then ./scripts/kube (./scripts/test does both)",
};

/// Root, containerd, runc, the CNI plugins, nsenter, ip, podman, Go, and the control plane's and
/// node's binaries from `scripts/kube` (cfg `keyless_tools_kubelet`, see [`tools`]): a gated
/// test takes them with `tools::need(node::find_tools())`.
pub fn find_tools() -> Result<NodeTools, Missing> {
    let missing = crate::probe::node_missing(&crate::binary::workspace_root());
    if !missing.is_empty() {
        // The details, printed where the test's failure shows them.
        #[allow(clippy::print_stderr)]
        {
            eprintln!("the node harness is missing: {}", missing.join(", "));
        }
        return Err(NODE_TOOLS);
    }
    Ok(NodeTools { kube: kube::find_binaries()? })
}

/// A running node and its control plane. Dropped: every process killed, every mount, cgroup,
/// network namespace and link it made removed.
#[derive(Debug)]
pub struct Node {
    pub cluster: Cluster,
    /// The network namespace everything runs in.
    pub netns: String,
    dialer: Dialer,
    /// The relays into the namespace (aborted, with their connections, when dropped).
    relays: std::sync::Mutex<tokio::task::JoinSet<()>>,
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
    /// A node running `images`: the node's tools found first (or the test reported as
    /// [`crate::tools::need`] says), then the images built (before the node starts: building them
    /// must not hold the machine's node lock), then [`Node::start`] and each image imported.
    pub async fn start_with_images<I>(images: impl std::future::Future<Output = I>) -> Self
    where
        I: IntoIterator<Item = NodeImages>,
    {
        let tools = crate::tools::need(find_tools());
        let images = images.await;
        let node = Self::start(tools).await;
        for image in images {
            image.import(&node).await;
        }
        node
    }

    /// Takes the machine's node lock (waiting for another test's node to stop), removes what a
    /// killed run left, and starts the namespace, the control plane, containerd, the
    /// controller-manager, the scheduler and the kubelet; returns once the node is Ready and the
    /// `default` ServiceAccount exists.
    pub async fn start(tools: NodeTools) -> Self {
        let lock = take_lock().await;
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
        let mut relays = tokio::task::JoinSet::new();
        relays.spawn(dialer.clone().relay(listener, SocketAddr::from((Ipv4Addr::LOCALHOST, port))));
        let options = ClusterOptions {
            netns: Some(netns.clone()),
            port: Some(port),
            extra_tokens: vec![format!("{NODE_TOKEN},system:node:{NODE_NAME},keyless-test-node,\"system:nodes\"")],
            with_nodes: true,
            dir_in: Some(PathBuf::from(STATE)),
        };
        let cluster = Cluster::start_with_options(&tools.kube, options).await;
        route_kubernetes_service(&netns, port);
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

        node.start_containerd().await;
        NodeImages::pause().await.import(&node).await;
        node.start_controllers();
        node.start_kubelet();
        node.wait_ready().await;
        node
    }

    /// `binary ARGS` inside the namespace, logged to `STATE/NAME.log` (the command line names
    /// the node's state: a run that is killed leaves it to the next one's clean-up).
    fn spawn(&mut self, name: &'static str, binary: &Path, args: &[String]) {
        let log = Path::new(STATE).join(format!("{name}.log"));
        let child = kube::spawn_logged(Some(&self.netns), binary, args, &log);
        self.children.push((name, child));
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
        self.relays.lock().expect("the relays").spawn(self.dialer.clone().relay(listener, inside));
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

    /// A TCP connection opened from inside the node's namespace (as the node, the kubelet or the
    /// API server would open it): to a pod's IP, say; the error as the namespace saw it
    /// (`ConnectionRefused` when nothing listens on that address).
    pub async fn connect(&self, inside: SocketAddr) -> std::io::Result<std::net::TcpStream> {
        self.dialer.connect(inside).await
    }

    /// A directory of the node's state (`STATE/shared/NAME`, emptied at every start), writable by
    /// every user: a pod mounts it as a `hostPath` to leave a record the test reads after the pod
    /// is gone.
    pub fn shared_dir(&self, name: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = Path::new(STATE).join("shared").join(name);
        std::fs::create_dir_all(&dir).expect("a shared directory");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777)).expect("its mode");
        dir
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
        // The kubelet first (it would restart what is killed), then the controllers; containerd's
        // tasks are killed through their cgroups, then every other process of the node (the shims,
        // containerd, the emulator, the control plane).
        for name in ["kubelet", "kube-scheduler", "kube-controller-manager"] {
            for (_, child) in self.children.iter_mut().filter(|(n, _)| *n == name) {
                let _ = child.start_kill();
            }
        }
        kill_cgroup_tasks();
        kill_node_processes();
        // `_cleanup` removes the rest once the fields drop.
    }
}

/// A node, `keyless emulate` in its namespace trusting the cluster's issuer, and the emulator's
/// dev identities: where the node tests running the SDKs start.
#[derive(Debug)]
pub struct NodeWithEmulator {
    pub node: Node,
    pub emulator: NodeEmulator,
    pub ids: serde_json::Value,
}

impl NodeWithEmulator {
    /// [`Node::start_with_images`], then [`Node::start_emulator`], trusting the cluster's issuer.
    pub async fn start<I>(images: impl std::future::Future<Output = I>) -> Self
    where
        I: IntoIterator<Item = NodeImages>,
    {
        let node = Node::start_with_images(images).await;
        let emulator = node.start_emulator().await;
        emulator.control.trust_issuer(node.cluster.issuer(), &node.cluster.ca_pem_text()).await;
        let ids = emulator.control.identities().await;
        Self { node, emulator, ids }
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

/// Where the node tests' sidecars read the emulator's CA (what the chart's `sidecar.env` names): a
/// file of the image in `node_helm`, a hostPath mounted there in `node_mode`.
pub const EMULATOR_CA_IN_IMAGE: &str = "/etc/keyless/emulator-ca.pem";

impl NodeEmulator {
    /// Its CA certificate (PEM text).
    pub fn ca_pem(&self) -> String {
        std::fs::read_to_string(&self.ca).expect("the emulator's CA")
    }

    /// The ARN the emulated STS names for `credentials` (the JSON of AWS keys an SDK got:
    /// `access_key_id`, ...), from a SigV4-signed GetCallerIdentity; the test fails if STS refuses.
    pub async fn caller_arn(&self, credentials: &serde_json::Value) -> String {
        crate::verify::aws_caller_arn_at(&self.url, &self.ca, "us-east-1", credentials).await
    }

    /// The chart's `sidecar.env` pointing every cloud's token service at this emulator, its CA at
    /// [`EMULATOR_CA_IN_IMAGE`].
    pub fn sidecar_env(&self) -> serde_json::Value {
        let (url, ca) = (&self.inside_url, EMULATOR_CA_IN_IMAGE);
        serde_json::json!({
            "KEYLESS_AWS__STS_ENDPOINT": url,
            "KEYLESS_AWS__CA_FILE": ca,
            "KEYLESS_GCP__STS_ENDPOINT": url,
            "KEYLESS_GCP__IAM_ENDPOINT": url,
            "KEYLESS_GCP__CA_FILE": ca,
            "KEYLESS_AZURE__AUTHORITY_HOST": url,
            "KEYLESS_AZURE__CA_FILE": ca,
        })
    }
}

/// The ServiceAccount `namespace/name` annotated (as injection reads it) with the emulator's
/// identities `ids[role]`, `ids[gcp]`, `ids[azure]` (keys of its identities document).
pub fn service_account(
    ids: &serde_json::Value,
    namespace: &str,
    name: &str,
    [role, gcp, azure]: [&str; 3],
) -> serde_json::Value {
    let id = |key: &str| ids[key].as_str().unwrap_or_else(|| panic!("the emulator names no {key}")).to_owned();
    let provider = ids["audiences"]["gcp"].as_str().expect("the GCP audience");
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "annotations": {
                "eks.amazonaws.com/role-arn": id(role),
                "iam.gke.io/gcp-service-account": id(gcp),
                "keyless.dev/gcp-workload-identity-provider": provider.trim_start_matches("//iam.googleapis.com/"),
                "keyless.dev/gcp-project-id": id("gcp_project_id"),
                "azure.workload.identity/client-id": id(azure),
                "azure.workload.identity/tenant-id": id("azure_tenant_id"),
            },
        },
    })
}

/// The machine's node lock, held: no node runs while it is (for a test checking that a stopped
/// node left nothing).
#[derive(Debug)]
pub struct MachineLock {
    _file: std::fs::File,
}

/// Waits for [`LOCK`] (another test's node to stop) and holds it.
pub async fn lock_machine() -> MachineLock {
    MachineLock { _file: take_lock().await }
}

/// Takes [`LOCK`]: one node on the machine at a time.
async fn take_lock() -> std::fs::File {
    lock_within(Path::new(LOCK), LOCK_DEADLINE, "another test's node is running").await
}

/// An exclusive flock on `path` (created if missing), taken within `deadline` or the test fails:
/// tried at once, then again while `held_by` says (once) why it waits.
pub(super) async fn lock_within(path: &Path, deadline: Duration, held_by: &str) -> std::fs::File {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    let try_lock = || rustix::fs::flock(file.as_fd(), rustix::fs::FlockOperation::NonBlockingLockExclusive).is_ok();
    if !try_lock() {
        #[allow(clippy::print_stderr)]
        {
            eprintln!("waiting for {}: {held_by}", path.display());
        }
        let taken = holds_within(deadline, || {
            let taken = try_lock();
            async move { taken }
        })
        .await;
        assert!(taken, "{} was not free within {deadline:?}: {held_by}", path.display());
    }
    file
}

/// No address of the node's networks, no link of its, and no rule of the kubelet's or one naming
/// the node's networks in the machine's own network namespace (the test runs in it), in either
/// iptables back end (the `kubernetes` Service's ClusterIP rule included). Rules of others (podman's CNI chains, say, which its firewall plugin leaves
/// for good) are not the node's: only what names the node counts.
pub fn assert_machine_holds_nothing_of_a_node() {
    // A listing that failed would hide what it should show: only iptables-legacy may fail (not
    // installed, or its tables never loaded: then it holds no rule either); any other failure
    // fails the check.
    let run = |program: &str, args: &[&str]| match std::process::Command::new(program).args(args).output() {
        Ok(out) if program == "iptables-legacy" && !out.status.success() => String::new(),
        Err(_) if program == "iptables-legacy" => String::new(),
        Err(e) => panic!("{program} {args:?} could not run: {e}"),
        Ok(out) => {
            assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8_lossy(&out.stdout).into_owned()
        }
    };
    let node_networks = [" 10.200.", " 10.201.", " 10.96.", "knode0", "kpod0"];
    let addresses = run("ip", &["-o", "addr", "show"]);
    assert!(addresses.contains("127.0.0.1"), "`ip -o addr show` listed nothing: {addresses}");
    for line in addresses.lines() {
        assert!(!node_networks.iter().any(|n| line.contains(n)), "the node's address or link is outside: {line}");
    }
    for iptables in ["iptables", "iptables-legacy"] {
        for table in ["filter", "nat", "mangle"] {
            let rules = run(iptables, &["-t", table, "-S"]);
            // A listing of a table holds its chains' policies (`-P ...`) at least.
            let legacy_absent = iptables == "iptables-legacy" && rules.is_empty();
            assert!(legacy_absent || rules.contains("-P "), "{iptables} -t {table} -S listed nothing: {rules}");
            for line in rules.lines() {
                assert!(
                    !line.contains("KUBE") && !["10.201.", "10.200.", "10.96."].iter().any(|n| line.contains(n)),
                    "a rule of the node's in the machine's namespace ({iptables} -t {table}): {line}"
                );
            }
        }
    }
}

/// kube-proxy's part for the one Service pods call here, `kubernetes` (the webhook's
/// ServiceAccount cache, in-cluster clients): its ClusterIP's port 443 forwarded to the API
/// server, on the node's address. A rule of the node's own namespace (gone with it); the
/// machine's namespace gains none.
fn route_kubernetes_service(netns: &str, port: u16) {
    let service = format!("{}/32", kube::KUBERNETES_SERVICE_IP);
    let to = format!("{NODE_IP}:{port}");
    let rule = ["-t", "nat", "-A", "PREROUTING", "-d", &service, "-p", "tcp", "--dport", "443", "-j", "DNAT"];
    let mut args = vec!["netns", "exec", netns, "iptables"];
    args.extend(rule);
    args.extend(["--to-destination", &to]);
    run_checked("ip", &args);
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

pub(super) fn socket() -> String {
    format!("{STATE}/containerd.sock")
}

/// Runs `command` (no stdin, killed when dropped) within [`TOOL_DEADLINE`]; its stdout, or the
/// test fails with its output.
async fn run_ok(mut command: Command, what: &str) -> String {
    command.stdin(Stdio::null()).kill_on_drop(true);
    crate::process::succeeded(what, crate::process::output_within(command, TOOL_DEADLINE, what).await)
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A lock another holder keeps fails the wait at its deadline, naming why it waited; once
    /// released it is taken.
    #[tokio::test]
    async fn a_lock_held_elsewhere_fails_the_wait_at_its_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        let held = lock_within(&path, Duration::from_secs(1), "nobody").await;
        let waiting = tokio::spawn({
            let path = path.clone();
            async move { lock_within(&path, Duration::from_millis(300), "the test holds it").await }
        });
        let failure = waiting.await.unwrap_err().into_panic();
        let message = failure.downcast_ref::<String>().unwrap();
        assert!(message.contains("was not free within 300ms: the test holds it"), "{message}");
        drop(held);
        let _taken = lock_within(&path, Duration::from_secs(1), "nobody").await;
    }
}
