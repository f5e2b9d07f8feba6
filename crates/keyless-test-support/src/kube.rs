//! A real Kubernetes control plane on loopback, started and stopped by the test: etcd and
//! kube-apiserver built by `scripts/kube` from the pinned releases, with a service-account issuer
//! and signing key, `--api-audiences`, RBAC and the default admission chain (which includes
//! `MutatingAdmissionWebhook`), plus `kubectl` from the same release. No kubelet and no controller
//! manager: objects are created and validated, pods are not scheduled.
//!
//! The issuer's discovery (`/.well-known/openid-configuration`, `/openid/v1/jwks`) is made public
//! (`system:service-account-issuer-discovery` bound to `system:unauthenticated`), as a cluster whose
//! issuer the clouds trust must: the emulator then fetches it anonymously, as AWS, Google and Entra do.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair, SanType};
use tokio::io::AsyncWriteExt as _;
use tokio::process::{Child, Command};

use crate::process::free_port;
use crate::tools::Missing;
use crate::wait::holds_within;

/// How long etcd and the API server may take to turn ready (a loaded 2-core machine is slow).
const START_DEADLINE: Duration = Duration::from_secs(180);
/// How long one kubectl call may take.
const KUBECTL_DEADLINE: Duration = Duration::from_secs(60);
/// The bearer token of the cluster admin (`system:masters`), only ever on loopback.
const ADMIN_TOKEN: &str = "keyless-test-admin-token";

/// Where `scripts/kube` put kube-apiserver, kubectl and etcd.
#[derive(Debug, Clone)]
pub struct KubeBinaries {
    pub dir: PathBuf,
}

impl KubeBinaries {
    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// What a Kubernetes test misses without the binaries.
pub const KUBE: Missing = Missing {
    what: "kube-apiserver, kubectl and etcd (target/kube/bin)",
    fix: "run ./scripts/kube (needs Go >= 1.25 and the Go module proxy); ./scripts/test runs it",
};

/// The binaries `scripts/kube` builds (`KEYLESS_TEST_KUBE_BIN`, else `target/kube/bin`)
/// (cfg `keyless_tools_kube`, see [`tools`]).
pub fn find_binaries() -> Result<KubeBinaries, Missing> {
    crate::probe::kube_bin(&crate::binary::workspace_root()).map(|dir| KubeBinaries { dir }).ok_or(KUBE)
}

/// How [`Cluster::start_with`] starts the control plane: [`Cluster::start`] uses the defaults
/// (loopback of the test's own network namespace, no nodes); the node harness (`node.rs`) starts
/// it inside the node's namespace, on a port relayed to the test's loopback.
#[derive(Debug, Default)]
pub(crate) struct ClusterOptions {
    /// The network namespace (`/run/netns/NAME`) etcd and the API server run in.
    pub netns: Option<String>,
    /// The API server's port (the caller reserved it); else a free one.
    pub port: Option<u16>,
    /// Lines added to the API server's static token file (`token,user,uid,"group"`).
    pub extra_tokens: Vec<String>,
    /// The node's authorizer and admission plugin (`Node,RBAC`, `NodeRestriction`) and the
    /// kubelet address type, for a cluster with a kubelet.
    pub with_nodes: bool,
    /// Where the cluster's files go (else a temporary directory).
    pub dir_in: Option<PathBuf>,
}

/// A running etcd + kube-apiserver, stopped (killed) when dropped.
#[derive(Debug)]
pub struct Cluster {
    /// `https://127.0.0.1:PORT`: the API server, and its service-account issuer (`iss`).
    pub server: String,
    /// The CA of the API server's serving certificate (PEM file).
    pub ca_pem: PathBuf,
    /// A kubeconfig for the cluster admin.
    pub kubeconfig: PathBuf,
    sa_key: PathBuf,
    kubectl: PathBuf,
    apiserver: Child,
    etcd: Child,
    dir: tempfile::TempDir,
}

/// The files the API server is started with.
struct Pki {
    ca_pem: PathBuf,
    serving_cert: PathBuf,
    serving_key: PathBuf,
    sa_public: PathBuf,
    sa_private: PathBuf,
}

impl Cluster {
    /// Starts etcd and kube-apiserver from `binaries` on free loopback ports and waits until the
    /// API server is ready and its issuer discovery is public. A gated test (cfg
    /// `keyless_tools_kube`): `Cluster::start_with(tools::need(kube::find_binaries()))`.
    pub async fn start_with(binaries: KubeBinaries) -> Self {
        Self::start_with_options(&binaries, ClusterOptions::default()).await
    }

    /// [`Cluster::start_with`] with `options`.
    pub(crate) async fn start_with_options(binaries: &KubeBinaries, options: ClusterOptions) -> Self {
        let dir = match &options.dir_in {
            Some(parent) => tempfile::tempdir_in(parent),
            None => tempfile::tempdir(),
        }
        .expect("a temporary directory");
        let netns = options.netns.as_deref();
        let pki = write_pki(dir.path());
        let port = options.port.unwrap_or_else(free_port);
        let (etcd_url, etcd_peer) = match netns {
            // A namespace of the harness's own: every port is free.
            Some(_) => ("http://127.0.0.1:2379".to_owned(), "http://127.0.0.1:2380".to_owned()),
            None => (format!("http://127.0.0.1:{}", free_port()), format!("http://127.0.0.1:{}", free_port())),
        };
        let etcd = start_etcd(binaries, netns, dir.path(), &etcd_url, &etcd_peer);
        if netns.is_none() {
            wait_ready("etcd", &format!("{etcd_url}/health"), None, &dir.path().join("etcd.log")).await;
        }
        let server = format!("https://127.0.0.1:{port}");
        let apiserver = start_apiserver(binaries, &options, dir.path(), &pki, &etcd_url, port);
        let client = crate::clients::trusting(&pki.ca_pem);
        wait_ready("kube-apiserver", &format!("{server}/readyz"), Some(&client), &dir.path().join("apiserver.log"))
            .await;
        let kubeconfig = write_kubeconfig(dir.path(), &server, &pki.ca_pem);
        let cluster = Self {
            server,
            ca_pem: pki.ca_pem,
            sa_key: pki.sa_private,
            kubeconfig,
            kubectl: binaries.path("kubectl"),
            apiserver,
            etcd,
            dir,
        };
        cluster
            .kubectl_ok(&[
                "create",
                "clusterrolebinding",
                "keyless-test-public-issuer-discovery",
                "--clusterrole=system:service-account-issuer-discovery",
                "--group=system:unauthenticated",
            ])
            .await;
        cluster
    }

    /// The directory of the cluster's files and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The service-account signing key (PEM file; the controller-manager's token controller).
    pub(crate) fn sa_key(&self) -> &Path {
        &self.sa_key
    }

    /// The service-account issuer (`iss` of its tokens): the API server's URL.
    pub fn issuer(&self) -> &str {
        &self.server
    }

    /// The CA certificate (PEM text) of the API server.
    pub fn ca_pem_text(&self) -> String {
        std::fs::read_to_string(&self.ca_pem).expect("the cluster CA")
    }

    /// `kubectl ARGS` against the cluster as its admin.
    pub async fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_with_input(args, None).await
    }

    /// `kubectl ARGS` with `input` on its stdin (for `-f -`).
    pub async fn kubectl_with_input(&self, args: &[&str], input: Option<&str>) -> Output {
        let mut command = Command::new(&self.kubectl);
        command
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", self.dir.path())
            .env("KUBECONFIG", &self.kubeconfig)
            .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().expect("running kubectl");
        if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
            stdin.write_all(input.as_bytes()).await.expect("writing kubectl's stdin");
        }
        tokio::time::timeout(KUBECTL_DEADLINE, child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("kubectl {args:?} did not finish in {KUBECTL_DEADLINE:?}"))
            .expect("kubectl's output")
    }

    /// `kubectl ARGS`' stdout; fails the test with its stderr if it failed.
    pub async fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args).await;
        ok_or_panic(args, out)
    }

    /// `kubectl create namespace NAME`.
    pub async fn create_namespace(&self, name: &str) {
        self.kubectl_ok(&["create", "namespace", name]).await;
    }

    /// `kubectl create serviceaccount NAME -n NAMESPACE`.
    pub async fn create_service_account(&self, namespace: &str, name: &str) {
        self.kubectl_ok(&["create", "serviceaccount", name, "-n", namespace]).await;
    }

    /// A token of `namespace/service_account` for `audience` from the TokenRequest API
    /// (`kubectl create token`), valid for `lifetime`.
    pub async fn token(&self, namespace: &str, service_account: &str, audience: &str, lifetime: Duration) -> String {
        let duration = format!("{}s", lifetime.as_secs());
        let args =
            ["create", "token", service_account, "-n", namespace, "--audience", audience, "--duration", &duration];
        self.kubectl_ok(&args).await.trim().to_owned()
    }

    /// `kubectl apply --server-side -f FILE`: the API server validates and stores every object;
    /// `Err` holds kubectl's stderr (what did not validate).
    pub async fn apply_server_side(&self, file: &Path) -> Result<String, String> {
        let file = file.to_str().expect("a UTF-8 path");
        let args = ["apply", "--server-side", "--field-manager=keyless-tests", "-f", file];
        result_of(self.kubectl(&args).await)
    }

    /// `kubectl create --dry-run=server -f -` of `manifest`: validated and admitted (the whole
    /// admission chain) but not stored; `Err` holds kubectl's stderr.
    pub async fn create_dry_run(&self, manifest: &str) -> Result<String, String> {
        let args = ["create", "--dry-run=server", "-o", "json", "-f", "-"];
        result_of(self.kubectl_with_input(&args, Some(manifest)).await)
    }

    /// `kubectl exec POD -n NAMESPACE -c CONTAINER -- ARGS`: its stdout; `Err` holds its exit
    /// status, stdout and stderr.
    pub async fn exec(&self, namespace: &str, pod: &str, container: &str, args: &[&str]) -> Result<String, String> {
        let mut full = vec!["exec", pod, "-n", namespace, "-c", container, "--"];
        full.extend_from_slice(args);
        result_of(self.kubectl(&full).await)
    }

    /// `kubectl get KIND NAME -n NAMESPACE -o json`.
    pub async fn get_json(&self, namespace: &str, kind: &str, name: &str) -> serde_json::Value {
        let out = self.kubectl_ok(&["get", kind, name, "-n", namespace, "-o", "json"]).await;
        serde_json::from_str(&out).expect("kubectl's JSON")
    }

    /// What the API server logged so far (for failure messages).
    pub fn apiserver_logs(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("apiserver.log")).unwrap_or_default()
    }

    /// Stops the API server, then etcd (SIGKILL: nothing of theirs is kept).
    pub async fn stop(mut self) {
        let _ = self.apiserver.kill().await;
        let _ = self.etcd.kill().await;
    }
}

fn ok_or_panic(args: &[&str], out: Output) -> String {
    result_of(out).unwrap_or_else(|stderr| panic!("kubectl {args:?} failed:\n{stderr}"))
}

fn result_of(out: Output) -> Result<String, String> {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!("{}\n{stdout}{}", out.status, String::from_utf8_lossy(&out.stderr)))
    }
}

/// The ClusterIP of the `kubernetes` Service (the first address of `--service-cluster-ip-range`):
/// pods reach the API server there (`KUBERNETES_SERVICE_HOST`), on a node of the harness through
/// the rule [`crate::node`] adds in its namespace in place of kube-proxy.
pub const KUBERNETES_SERVICE_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 1);

/// A CA, the API server's serving certificate for 127.0.0.1 and the `kubernetes` Service's
/// ClusterIP (what in-cluster clients dial), and an RSA service-account key.
fn write_pki(dir: &Path) -> Pki {
    let ca_key = KeyPair::generate().expect("a CA key");
    let mut ca_params = CertificateParams::default();
    ca_params.distinguished_name = DistinguishedName::new();
    ca_params.distinguished_name.push(DnType::CommonName, "keyless test cluster CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    let ca_cert = ca_params.self_signed(&ca_key).expect("the CA certificate");
    let ca = Issuer::new(ca_params, ca_key);

    let serving_key = KeyPair::generate().expect("a serving key");
    let mut params = CertificateParams::new(vec!["localhost".to_owned()]).expect("serving certificate names");
    params.distinguished_name.push(DnType::CommonName, "kube-apiserver");
    params.subject_alt_names.push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    params.subject_alt_names.push(SanType::IpAddress(IpAddr::V4(KUBERNETES_SERVICE_IP)));
    let serving_cert = params.signed_by(&serving_key, &ca).expect("the serving certificate");

    let sa_key = KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).expect("an RSA service-account key");
    let write = |name: &str, content: String| {
        let path = dir.join(name);
        std::fs::write(&path, content).expect("writing the cluster's PKI");
        path
    };
    Pki {
        ca_pem: write("ca.pem", ca_cert.pem()),
        serving_cert: write("apiserver.pem", serving_cert.pem()),
        serving_key: write("apiserver-key.pem", serving_key.serialize_pem()),
        sa_public: write("sa.pub", sa_key.public_key_pem()),
        sa_private: write("sa.key", sa_key.serialize_pem()),
    }
}

/// `binary ARGS` with output to `log`, in the network namespace `netns` when given (`nsenter`
/// enters it and then execs the binary: the child's pid is the binary's), killed when dropped.
pub(crate) fn spawn_logged(netns: Option<&str>, binary: &Path, args: &[String], log: &Path) -> Child {
    let log = std::fs::File::create(log).expect("a log file");
    let mut command = match netns {
        Some(netns) => {
            let mut command = Command::new("nsenter");
            command.arg(format!("--net=/run/netns/{netns}")).arg("--").arg(binary);
            command
        }
        None => Command::new(binary),
    };
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("the log file"))
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()))
}

fn start_etcd(binaries: &KubeBinaries, netns: Option<&str>, dir: &Path, client_url: &str, peer_url: &str) -> Child {
    let args = [
        format!("--data-dir={}", dir.join("etcd").display()),
        format!("--listen-client-urls={client_url}"),
        format!("--advertise-client-urls={client_url}"),
        format!("--listen-peer-urls={peer_url}"),
        format!("--initial-advertise-peer-urls={peer_url}"),
        format!("--initial-cluster=default={peer_url}"),
        // A test's cluster lives for seconds: durability costs only time.
        "--unsafe-no-fsync".to_owned(),
        "--log-level=warn".to_owned(),
    ];
    spawn_logged(netns, &binaries.path("etcd"), &args, &dir.join("etcd.log"))
}

fn start_apiserver(
    binaries: &KubeBinaries,
    options: &ClusterOptions,
    dir: &Path,
    pki: &Pki,
    etcd_url: &str,
    port: u16,
) -> Child {
    let issuer = format!("https://127.0.0.1:{port}");
    let tokens = dir.join("tokens.csv");
    let mut token_lines = format!("{ADMIN_TOKEN},keyless-test-admin,keyless-test-admin,\"system:masters\"\n");
    for line in &options.extra_tokens {
        token_lines.push_str(line);
        token_lines.push('\n');
    }
    std::fs::write(&tokens, token_lines).expect("the token file");
    let path = |p: &Path| p.display().to_string();
    let mut admission = "NamespaceLifecycle,ServiceAccount,MutatingAdmissionWebhook,ValidatingAdmissionWebhook,ValidatingAdmissionPolicy,ResourceQuota".to_owned();
    let mut args = vec![
        format!("--etcd-servers={etcd_url}"),
        // With a node, pods reach the API server too (the webhook's ServiceAccount cache): every
        // address of the node's own namespace (the harness's, private), not only its loopback.
        // Only inside such a namespace: in the machine's own it stays on loopback.
        format!(
            "--bind-address={}",
            if options.with_nodes && options.netns.is_some() { "0.0.0.0" } else { "127.0.0.1" }
        ),
        "--advertise-address=127.0.0.1".to_owned(),
        format!("--secure-port={port}"),
        format!("--tls-cert-file={}", path(&pki.serving_cert)),
        format!("--tls-private-key-file={}", path(&pki.serving_key)),
        format!("--cert-dir={}", dir.join("certs").display()),
        format!("--token-auth-file={}", path(&tokens)),
        format!("--authorization-mode={}", if options.with_nodes { "Node,RBAC" } else { "RBAC" }),
        format!("--service-account-issuer={issuer}"),
        format!("--service-account-key-file={}", path(&pki.sa_public)),
        format!("--service-account-signing-key-file={}", path(&pki.sa_private)),
        format!("--api-audiences={issuer}"),
        "--service-cluster-ip-range=10.96.0.0/16".to_owned(),
        // The `kubernetes` Service's endpoints stay unreconciled (nothing in a test pod calls it).
        "--endpoint-reconciler-type=none".to_owned(),
        "--v=1".to_owned(),
    ];
    if options.with_nodes {
        // The kubelet's credential may touch its own Node and its pods only, as on a real cluster.
        admission.push_str(",NodeRestriction");
        args.push("--kubelet-preferred-address-types=InternalIP".to_owned());
        // No kube-proxy on the node: the API server calls an admission webhook's Service at one of
        // its endpoints (a pod IP, routable from the node's namespace) instead of its ClusterIP
        // (kube-apiserver's buildServiceResolver: NewEndpointServiceResolver with this flag,
        // NewClusterIPServiceResolver without).
        args.push("--enable-aggregator-routing=true".to_owned());
    }
    // The default chain, with the webhook admission plugins named so that a change of defaults shows.
    args.push(format!("--enable-admission-plugins={admission}"));
    spawn_logged(options.netns.as_deref(), &binaries.path("kube-apiserver"), &args, &dir.join("apiserver.log"))
}

fn write_kubeconfig(dir: &Path, server: &str, ca: &Path) -> PathBuf {
    let path = dir.join("kubeconfig");
    let config = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: keyless-test\n  cluster:\n    server: {server}\n    \
         certificate-authority: {}\nusers:\n- name: admin\n  user:\n    token: {ADMIN_TOKEN}\ncontexts:\n\
         - name: keyless-test\n  context:\n    cluster: keyless-test\n    user: admin\ncurrent-context: keyless-test\n",
        ca.display()
    );
    std::fs::write(&path, config).expect("the kubeconfig");
    path
}

/// Waits until `url` answers 200 (as the admin when `client` is the API server's), or fails the
/// test with the component's log.
async fn wait_ready(what: &str, url: &str, client: Option<&reqwest::Client>, log: &Path) {
    let plain = crate::clients::loopback();
    let client = client.unwrap_or(&plain);
    let answers =
        || async { client.get(url).bearer_auth(ADMIN_TOKEN).send().await.is_ok_and(|r| r.status().is_success()) };
    if !holds_within(START_DEADLINE, answers).await {
        let logs = std::fs::read_to_string(log).unwrap_or_default();
        let tail: String =
            logs.lines().rev().take(40).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
        panic!("{what} did not turn ready at {url} within {START_DEADLINE:?}; its log ends:\n{tail}");
    }
}
