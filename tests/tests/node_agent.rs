//! `keyless node` against a real API server (etcd + kube-apiserver, keyless-test-support's
//! kube.rs) and the emulated clouds: Pod objects on a node name of the test's, given a status
//! (`phase: Running`, a `podIP` in 127.0.0.0/8) with `kubectl patch --subresource=status`, no
//! kubelet. The test's clients bind their source address to a pod's IP, so keyless node (on
//! 127.0.0.1) sees each request come from that pod, as a pod's request reaches the node agent.
//! Subject tokens come from the real TokenRequest API, the AWS authorization from a real
//! pod-bound token, the credentials from the emulator, which trusts the cluster's issuer.
//!
//! The same on a real kubelet and containerd, with unmodified SDKs: tests/tests/node_mode.rs.
#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use keyless_test_support::emulate::EmulatorProcess;
use keyless_test_support::jwt::claims_of;
use keyless_test_support::kube::{self, Cluster};
use keyless_test_support::node_agent::{self, NodeAgent};
use keyless_test_support::process::Process;
use keyless_test_support::tools;
use keyless_test_support::wait::{STARTUP_DEADLINE, wait_until};
use serde_json::{Value, json};

const NODE: &str = "node-under-test";
const NAMESPACE: &str = "default";
/// The audience of the pods' keyless node token (keyless node's default).
const NODE_AUDIENCE: &str = "keyless.dev/node";
/// The resource the Azure provider pre-warms (its default), so every pod asks for the cached one.
const AZURE_RESOURCE: &str = "https://management.azure.com";
/// A ServiceAccount without identity annotations.
const PLAIN: &str = "plain";
/// The readiness gate's label (the chart's `node.readyLabel`), with the chart's RBAC.
const READY_LABEL: &str = "keyless.dev/node-ready";

/// A cluster, the emulator trusting its issuer, two annotated ServiceAccounts and a plain one, the
/// test's node, and keyless node serving it.
struct Setting {
    cluster: Cluster,
    emulator: EmulatorProcess,
    ids: Value,
    node: Process,
    listen: SocketAddr,
    admin: SocketAddr,
    state: tempfile::TempDir,
}

/// One of the two annotated ServiceAccounts and the identities its annotations name.
struct Account {
    name: String,
    role: String,
    gcp: String,
    azure: String,
}

/// How keyless node reaches the API server.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Access {
    /// As the cluster's admin.
    Admin,
    /// As the chart's node-mode ServiceAccount, with the chart's RBAC only (`helm template` of
    /// `mode: node`, applied server-side: every object validated by the API server).
    ChartRbac,
}

impl Setting {
    async fn start(access: Access) -> Self {
        Self::start_logged(access, "info,keyless=debug").await
    }

    /// [`Setting::start`] with keyless node's log filter `log`.
    async fn start_logged(access: Access, log: &str) -> Self {
        let cluster = Cluster::start_with(tools::need(kube::find_binaries())).await;
        let kubeconfig = match access {
            Access::Admin => cluster.kubeconfig.clone(),
            Access::ChartRbac => chart_kubeconfig(&cluster).await,
        };
        let emulator = EmulatorProcess::start().await;
        emulator.control.trust_issuer(cluster.issuer(), &cluster.ca_pem_text()).await;
        let ids = emulator.control.identities().await;
        let node_object = json!({ "apiVersion": "v1", "kind": "Node", "metadata": { "name": NODE } });
        cluster.kubectl_with_input(&["create", "-f", "-"], Some(&node_object.to_string())).await;
        for account in [Account::first(&ids), Account::second(&ids)] {
            let named = [account.role, account.gcp, account.azure];
            node_agent::annotated_service_account(&cluster, &ids, NAMESPACE, &account.name, &named).await;
        }
        cluster.create_service_account(NAMESPACE, PLAIN).await;
        let extra: &[&str] = if access == Access::ChartRbac { &["--ready-label", READY_LABEL] } else { &[] };
        let NodeAgent { process: node, listen, admin, state } =
            NodeAgent::start(&emulator, NODE, &kubeconfig, log, extra).await;
        Self { cluster, emulator, ids, node, listen, admin, state }
    }

    fn context(&self) -> String {
        format!("--- keyless node\n{}\n--- emulator\n{}", self.node.logs(), self.emulator.logs())
    }

    /// Creates pod `name` of `account` on the node, Running at `ip` (`host_network`: on the node's
    /// network); returns its UID.
    async fn pod(&self, name: &str, account: &str, ip: &str, host_network: bool) -> String {
        let pod = node_agent::pod_manifest(NAMESPACE, NODE, name, account, host_network);
        self.cluster.kubectl_with_input(&["create", "-f", "-"], Some(&pod.to_string())).await;
        self.set_status(name, "Running", ip).await;
        self.cluster.get_json(NAMESPACE, "pod", name).await["metadata"]["uid"].as_str().unwrap().to_owned()
    }

    async fn set_status(&self, name: &str, phase: &str, ip: &str) {
        let status = node_agent::pod_status(phase, ip).to_string();
        let args = ["patch", "pod", name, "-n", NAMESPACE, "--subresource=status", "--type=merge", "-p", &status];
        self.cluster.kubectl_ok(&args).await;
    }

    async fn delete_pod(&self, name: &str) {
        self.cluster.kubectl_ok(&["delete", "pod", name, "-n", NAMESPACE, "--grace-period=0", "--force"]).await;
    }

    /// The pod's keyless node token (what the kubelet projects for it): bound to the pod.
    async fn pod_token(&self, name: &str, account: &str, uid: &str) -> String {
        let args = [
            "create",
            "token",
            account,
            "-n",
            NAMESPACE,
            "--audience",
            NODE_AUDIENCE,
            "--bound-object-kind",
            "Pod",
            "--bound-object-name",
            name,
            "--bound-object-uid",
            uid,
            "--duration",
            "10m",
        ];
        self.cluster.kubectl_ok(&args).await.trim().to_owned()
    }

    /// `GET path` from `ip` with `headers`: status and body.
    async fn ask(&self, ip: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
        let source: IpAddr = ip.parse().unwrap();
        let client = reqwest::Client::builder().local_address(source).no_proxy().build().unwrap();
        let mut request = client.get(format!("http://{}{path}", self.listen)).timeout(Duration::from_secs(30));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.unwrap_or_else(|e| panic!("GET {path} from {ip}: {e}\n{}", self.context()));
        (response.status().as_u16(), response.text().await.unwrap())
    }

    /// The AWS container endpoint's credentials for the pod at `ip` presenting `token`.
    async fn aws(&self, ip: &str, token: &str) -> (u16, String) {
        self.ask(ip, "/v1/credentials", &[("authorization", token)]).await
    }

    async fn gcp_token(&self, ip: &str) -> (u16, String) {
        let path = "/computeMetadata/v1/instance/service-accounts/default/token";
        self.ask(ip, path, &[("metadata-flavor", "Google")]).await
    }

    async fn azure_token(&self, ip: &str) -> (u16, String) {
        let path = format!("/metadata/identity/oauth2/token?api-version=2018-02-01&resource={AZURE_RESOURCE}");
        self.ask(ip, &path, &[("metadata", "true")]).await
    }

    /// Who STS says the AWS credentials in `body` are.
    async fn aws_caller(&self, body: &str) -> String {
        use aws_sdk_sts::config::{Credentials, SharedCredentialsProvider};
        let creds: Value = serde_json::from_str(body).unwrap();
        let keys = Credentials::new(
            creds["AccessKeyId"].as_str().unwrap(),
            creds["SecretAccessKey"].as_str().unwrap(),
            Some(creds["Token"].as_str().unwrap().to_owned()),
            None,
            "node-test",
        );
        let sts = keyless_test_support::clients::aws_sts(
            &self.emulator.url,
            &self.emulator.ca,
            "us-east-1",
            Some(SharedCredentialsProvider::new(keys)),
        );
        let who = sts.get_caller_identity().send().await.unwrap();
        who.arn().unwrap().to_owned()
    }

    /// The service account the emulated Google says a metadata-server token body is for.
    async fn gcp_email(&self, body: &str) -> String {
        let token: Value = serde_json::from_str(body).unwrap();
        let info =
            self.emulator.control.tokeninfo(token["access_token"].as_str().unwrap(), "the pod's access token").await;
        info["email"].as_str().unwrap_or_default().to_owned()
    }

    /// The application an Entra token body is for.
    fn azure_app(body: &str) -> String {
        let token: Value = serde_json::from_str(body).unwrap();
        claims_of(token["access_token"].as_str().unwrap())["appid"].as_str().unwrap_or_default().to_owned()
    }

    /// The ServiceAccounts keyless node serves now.
    async fn served(&self) -> String {
        let url = format!("http://{}/service-accounts", self.admin);
        keyless_test_support::clients::loopback().get(url).send().await.unwrap().text().await.unwrap()
    }

    /// The ServiceAccounts' token directories keyless node holds now (`STATE/NAMESPACE/NAME`).
    fn token_dirs(&self) -> Vec<std::path::PathBuf> {
        let dirs = |path: &std::path::Path| -> Vec<std::path::PathBuf> {
            let entries = std::fs::read_dir(path).into_iter().flatten().flatten().map(|e| e.path());
            entries.filter(|p| p.is_dir()).collect()
        };
        dirs(self.state.path()).iter().flat_map(|namespace| dirs(namespace)).collect()
    }

    /// keyless node's /metrics.
    async fn metrics(&self) -> String {
        let url = format!("http://{}/metrics", self.admin);
        keyless_test_support::clients::loopback().get(url).send().await.unwrap().text().await.unwrap()
    }

    /// keyless node's successful AWS exchanges of `role`.
    async fn exchanges(&self, role: &str) -> u64 {
        let text = self.metrics().await;
        let labels = [("provider", "aws"), ("identity", role), ("outcome", "success")];
        keyless_test_support::metrics::sum(&text, "keyless_exchanges_total", &labels)
    }

    async fn counter(&self, service: &str) -> u64 {
        self.emulator.control.counter(service).await
    }
}

impl Account {
    fn first(ids: &Value) -> Self {
        Self::nth(ids, 0, "subject")
    }

    fn second(ids: &Value) -> Self {
        Self::nth(ids, 1, "other_subject")
    }

    /// The emulator's `n`-th trusted ServiceAccount (its `subject_key`'s name) and identities.
    fn nth(ids: &Value, n: usize, subject_key: &str) -> Self {
        let name = ids[subject_key].as_str().unwrap().rsplit(':').next().unwrap().to_owned();
        let [role, gcp, azure] = node_agent::identities(ids, n);
        Self { name, role, gcp, azure }
    }

    /// `arn:aws:sts::ACCOUNT:assumed-role/NAME/`: how GetCallerIdentity names the role's sessions.
    fn assumed_role(&self) -> String {
        let (account, name) = (self.role.split(':').nth(4).unwrap(), self.role.rsplit('/').next().unwrap());
        format!("arn:aws:sts::{account}:assumed-role/{name}/")
    }
}

/// A kubeconfig of the chart's node-mode ServiceAccount, after applying what the chart renders
/// in node mode.
async fn chart_kubeconfig(cluster: &Cluster) -> std::path::PathBuf {
    let helm = tools::need(tools::find_helm());
    let chart = keyless_test_support::binary::workspace_root().join("charts/keyless");
    let out = std::process::Command::new(&helm)
        .args(["template", "keyless", chart.to_str().unwrap(), "--namespace", "keyless-system", "--set", "mode=node"])
        .args(["--set", &format!("node.readyLabel={READY_LABEL}")])
        .args(["--show-only", "templates/node.yaml"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    cluster.create_namespace("keyless-system").await;
    let path = cluster.dir().join("node-mode.yaml");
    std::fs::write(&path, &out.stdout).unwrap();
    cluster.apply_server_side(&path).await.unwrap_or_else(|e| panic!("the chart's node mode: {e}"));
    let token =
        cluster.kubectl_ok(&["create", "token", "keyless-node", "-n", "keyless-system", "--duration", "1h"]).await;
    let kubeconfig = cluster.dir().join("keyless-node.kubeconfig");
    let config = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {}\n    certificate-authority: {}\n\
         users:\n- name: keyless-node\n  user:\n    token: {}\ncontexts:\n- name: c\n  context:\n    cluster: c\n    \
         user: keyless-node\ncurrent-context: c\n",
        cluster.server,
        cluster.ca_pem.display(),
        token.trim()
    );
    std::fs::write(&kubeconfig, config).unwrap();
    kubeconfig
}

/// Whether `body` is the refusal `code` in the shape of the endpoint asked.
fn assert_refused(what: &str, (status, body): &(u16, String), code: u16, shape: &str) {
    assert_eq!(*status, code, "{what}: {body}");
    assert!(body.contains(shape), "{what}: not the endpoint's own error shape: {body}");
}

/// keyless node runs with the chart's RBAC only: what it needs is exactly what the chart grants.
#[tokio::test]
#[cfg_attr(
    not(all(keyless_tools_kube, keyless_tools_helm)),
    ignore = "needs kube-apiserver, kubectl and etcd (target/kube/bin): ./scripts/kube, with Go >= 1.25; needs helm: ./scripts/helm"
)]
async fn pods_of_two_service_accounts_get_their_own_identities_and_the_rest_are_refused_in_each_endpoints_shape() {
    let s = Setting::start(Access::ChartRbac).await;
    let (first, second) = (Account::first(&s.ids), Account::second(&s.ids));
    // The readiness gate: serving, keyless node labelled its Node (with the chart's RBAC for it).
    wait_until("the node's readiness label", STARTUP_DEADLINE, || async {
        let node = s.cluster.kubectl_ok(&["get", "node", NODE, "-o", "json"]).await;
        let node: Value = serde_json::from_str(&node).unwrap();
        node["metadata"]["labels"][READY_LABEL] == "true"
    })
    .await;
    let uid_a = s.pod("app-a", &first.name, "127.0.0.11", false).await;
    let uid_b = s.pod("app-b", &second.name, "127.0.0.12", false).await;
    s.pod("app-plain", PLAIN, "127.0.0.13", false).await;
    s.pod("host-agent", &first.name, "127.0.0.14", true).await;
    let uid_pending = s.pod("app-pending", &first.name, "127.0.0.16", false).await;
    s.set_status("app-pending", "Pending", "127.0.0.16").await;
    let token_a = s.pod_token("app-a", &first.name, &uid_a).await;
    let token_b = s.pod_token("app-b", &second.name, &uid_b).await;

    for (ip, account, token) in [("127.0.0.11", &first, &token_a), ("127.0.0.12", &second, &token_b)] {
        let aws = s.aws(ip, token).await;
        assert_eq!(aws.0, 200, "{ip}: {}\n{}", aws.1, s.context());
        let arn = s.aws_caller(&aws.1).await;
        assert!(arn.starts_with(&account.assumed_role()), "{ip}: {arn}");
        // CloudTrail names the ServiceAccount: the session is named after it.
        assert!(arn.ends_with(&format!("/keyless-{NAMESPACE}-{}", account.name)), "{ip}: {arn}");
        let gcp = s.gcp_token(ip).await;
        assert_eq!(gcp.0, 200, "{ip}: {}\n{}", gcp.1, s.context());
        assert_eq!(s.gcp_email(&gcp.1).await, account.gcp, "{ip}");
        let azure = s.azure_token(ip).await;
        assert_eq!(azure.0, 200, "{ip}: {}\n{}", azure.1, s.context());
        assert_eq!(Setting::azure_app(&azure.1), account.azure, "{ip}");
    }

    // The AWS endpoint wants the caller's own token: none, another pod's, a pending pod's.
    let missing = s.ask("127.0.0.11", "/v1/credentials", &[]).await;
    assert_refused("no token", &missing, 401, "\"Code\":\"Unauthorized\"");
    assert_refused("another pod's token", &s.aws("127.0.0.11", &token_b).await, 403, "\"Code\":\"AccessDenied\"");
    assert_refused("a forged token", &s.aws("127.0.0.11", "e30.e30.e30").await, 403, "\"Code\":\"AccessDenied\"");
    let token_pending = s.pod_token("app-pending", &first.name, &uid_pending).await;

    // Every other caller, on every endpoint, in the endpoint's own shape.
    for (ip, code, token) in [
        ("127.0.0.13", "NotOptedIn", token_a.as_str()),
        ("127.0.0.14", "HostNetworkCaller", token_a.as_str()),
        ("127.0.0.15", "UnknownCaller", token_a.as_str()),
        ("127.0.0.16", "CallerNotRunning", token_pending.as_str()),
    ] {
        assert_refused(ip, &s.aws(ip, token).await, 403, &format!("\"Code\":\"{code}\""));
        assert_refused(ip, &s.gcp_token(ip).await, 403, "Request denied: ");
        assert_refused(ip, &s.azure_token(ip).await, 403, "\"error\":\"forbidden\"");
    }
    assert_eq!(s.served().await, format!("{NAMESPACE}/{}\n{NAMESPACE}/{}\n", first.name, second.name));
    s.cluster.stop().await;
}

#[tokio::test]
#[cfg_attr(
    not(keyless_tools_kube),
    ignore = "needs kube-apiserver, kubectl and etcd (target/kube/bin): ./scripts/kube, with Go >= 1.25"
)]
async fn an_address_reused_by_a_pod_of_another_service_account_never_gets_the_old_pods_credentials() {
    let s = Setting::start(Access::Admin).await;
    let (first, second) = (Account::first(&s.ids), Account::second(&s.ids));
    let ip = "127.0.0.21";
    let uid_old = s.pod("old", &first.name, ip, false).await;
    let token_old = s.pod_token("old", &first.name, &uid_old).await;
    let old = s.aws(ip, &token_old).await;
    assert_eq!(old.0, 200, "{}\n{}", old.1, s.context());
    let old_key = serde_json::from_str::<Value>(&old.1).unwrap()["AccessKeyId"].as_str().unwrap().to_owned();
    let old_gcp = s.gcp_token(ip).await;
    assert_eq!(old_gcp.0, 200, "{}", old_gcp.1);

    // The old pod goes: its ServiceAccount's last pod on the node, so its set goes too.
    s.delete_pod("old").await;
    wait_until("the first ServiceAccount's set to be dropped", STARTUP_DEADLINE, || async {
        !s.served().await.contains(&first.name)
    })
    .await;
    assert!(s.token_dirs().is_empty(), "its token files are gone too: {:?}", s.token_dirs());
    let dropped = s.gcp_token(ip).await;
    assert_refused("the deleted pod's address", &dropped, 403, "Request denied: ");

    // A pod of the other ServiceAccount gets the address.
    let uid_new = s.pod("new", &second.name, ip, false).await;
    let token_new = s.pod_token("new", &second.name, &uid_new).await;
    // The old pod's token (its copy kept by someone) is not the new pod's.
    assert_refused("the old pod's token", &s.aws(ip, &token_old).await, 403, "\"Code\":\"AccessDenied\"");
    let new = s.aws(ip, &token_new).await;
    assert_eq!(new.0, 200, "{}\n{}", new.1, s.context());
    let new_key = serde_json::from_str::<Value>(&new.1).unwrap()["AccessKeyId"].as_str().unwrap().to_owned();
    assert_ne!(new_key, old_key);
    assert!(s.aws_caller(&new.1).await.starts_with(&second.assumed_role()));
    let gcp = s.gcp_token(ip).await;
    assert_eq!(gcp.0, 200, "{}", gcp.1);
    assert_ne!(gcp.1, old_gcp.1);
    assert_eq!(s.gcp_email(&gcp.1).await, second.gcp);
    let azure = s.azure_token(ip).await;
    assert_eq!(Setting::azure_app(&azure.1), second.azure);
    assert_eq!(s.served().await, format!("{NAMESPACE}/{}\n", second.name));

    // A completed pod keeps its podIP in the API after its address went to a new pod (a Job's pod,
    // kept until deleted): the new pod is served its own credentials.
    let reused = "127.0.0.22";
    s.pod("done", &first.name, reused, false).await;
    s.set_status("done", "Succeeded", reused).await;
    s.pod("next", &second.name, reused, false).await;
    let gcp = s.gcp_token(reused).await;
    assert_eq!(gcp.0, 200, "{}\n{}", gcp.1, s.context());
    assert_eq!(s.gcp_email(&gcp.1).await, second.gcp);
    s.cluster.stop().await;
}

#[tokio::test]
#[cfg_attr(
    not(keyless_tools_kube),
    ignore = "needs kube-apiserver, kubectl and etcd (target/kube/bin): ./scripts/kube, with Go >= 1.25"
)]
async fn twenty_pods_of_one_service_account_cost_one_exchange_per_identity() {
    // Logging everything: no secret it handled may be in it (checked at the end).
    let s = Setting::start_logged(Access::Admin, "trace").await;
    let first = Account::first(&s.ids);
    let before: Vec<u64> = {
        let mut counts = Vec::new();
        for service in ["aws-sts", "gcp-sts", "azure-token"] {
            counts.push(s.counter(service).await);
        }
        counts
    };
    let mut pods = Vec::new();
    for n in 0..20 {
        let (name, ip) = (format!("replica-{n}"), format!("127.0.1.{}", n + 10));
        let uid = s.pod(&name, &first.name, &ip, false).await;
        pods.push((ip, s.pod_token(&name, &first.name, &uid).await));
    }
    for (ip, token) in &pods {
        let aws = s.aws(ip, token).await;
        assert_eq!(aws.0, 200, "{ip}: {}\n{}", aws.1, s.context());
        assert_eq!(s.gcp_token(ip).await.0, 200, "{ip}");
        assert_eq!(s.azure_token(ip).await.0, 200, "{ip}");
    }
    for (service, before) in ["aws-sts", "gcp-sts", "azure-token"].into_iter().zip(before) {
        let spent = s.counter(service).await - before;
        assert_eq!(spent, 1, "{service}: {spent} exchanges for 20 pods of one ServiceAccount\n{}", s.context());
    }
    // The secrets keyless node held: the pods' tokens, the ServiceAccount's subject tokens, the
    // credentials it served, the API server credential of its kubeconfig.
    let mut secrets: Vec<String> = pods.iter().map(|(_, token)| token.clone()).collect();
    for dir in s.token_dirs() {
        for file in ["aws-token", "gcp-token", "azure-token"] {
            secrets.push(std::fs::read_to_string(dir.join(file)).unwrap());
        }
    }
    let (ip, token) = &pods[0];
    let aws: Value = serde_json::from_str(&s.aws(ip, token).await.1).unwrap();
    secrets.push(aws["SecretAccessKey"].as_str().unwrap().to_owned());
    secrets.push(aws["Token"].as_str().unwrap().to_owned());
    let gcp: Value = serde_json::from_str(&s.gcp_token(ip).await.1).unwrap();
    secrets.push(gcp["access_token"].as_str().unwrap().to_owned());
    let azure: Value = serde_json::from_str(&s.azure_token(ip).await.1).unwrap();
    secrets.push(azure["access_token"].as_str().unwrap().to_owned());
    secrets.push("keyless-test-admin-token".to_owned());
    let logs = s.node.logs();
    assert!(logs.lines().count() > 100, "trace logging is on: {} lines", logs.lines().count());
    for secret in &secrets {
        // A JWT's signature alone identifies it; the first 32 characters of an opaque secret.
        let needle = secret.rsplit('.').next().unwrap_or(secret);
        let needle = &needle[..needle.len().min(32)];
        assert!(!logs.contains(needle), "a secret is in keyless node's trace log: {needle}");
    }
    s.cluster.stop().await;
}

/// The ServiceAccount's tokens are bound to one of its pods; when that pod is deleted, the next
/// tokens are bound to another live pod of the ServiceAccount at once (the API server invalidates
/// tokens bound to a deleted pod), and its other pods keep being served.
#[tokio::test]
#[cfg_attr(
    not(keyless_tools_kube),
    ignore = "needs kube-apiserver, kubectl and etcd (target/kube/bin): ./scripts/kube, with Go >= 1.25"
)]
async fn a_deleted_pods_tokens_are_bound_again_to_a_live_pod_of_its_service_account() {
    let s = Setting::start(Access::Admin).await;
    let first = Account::first(&s.ids);
    let uid_one = s.pod("one", &first.name, "127.0.0.31", false).await;
    let uid_two = s.pod("two", &first.name, "127.0.0.32", false).await;
    let token_two = s.pod_token("two", &first.name, &uid_two).await;
    let aws = s.aws("127.0.0.32", &token_two).await;
    assert_eq!(aws.0, 200, "{}\n{}", aws.1, s.context());
    let bound = || {
        let dirs = s.token_dirs();
        let [dir] = dirs.as_slice() else { return None };
        let token = std::fs::read_to_string(dir.join("aws-token")).ok()?;
        claims_of(&token)["kubernetes.io"]["pod"]["uid"].as_str().map(str::to_owned)
    };
    let before = bound().unwrap_or_else(|| panic!("no token file in {:?}", s.token_dirs()));
    assert!(before == uid_one || before == uid_two, "bound to a pod of the ServiceAccount: {before}");
    let (gone, stays, stays_ip) =
        if before == uid_one { ("one", uid_two.clone(), "127.0.0.32") } else { ("two", uid_one.clone(), "127.0.0.31") };
    s.delete_pod(gone).await;
    wait_until("the tokens to be bound to the remaining pod", STARTUP_DEADLINE, || {
        let now = bound();
        let stays = stays.clone();
        async move { now.as_deref() == Some(stays.as_str()) }
    })
    .await;
    let gcp = s.gcp_token(stays_ip).await;
    assert_eq!(gcp.0, 200, "{}\n{}", gcp.1, s.context());
    s.cluster.stop().await;
}

/// A ServiceAccount whose last pod left the node is never refreshed again, while one that stays is
/// (the emulated STS issues 20 s sessions: a refresh every few seconds). The clouds' own node agents
/// were seen renewing dead pods' credentials into 429s.
#[tokio::test]
#[cfg_attr(
    not(keyless_tools_kube),
    ignore = "needs kube-apiserver, kubectl and etcd (target/kube/bin): ./scripts/kube, with Go >= 1.25"
)]
async fn a_service_account_that_left_the_node_is_never_refreshed_again() {
    let s = Setting::start(Access::Admin).await;
    let (first, second) = (Account::first(&s.ids), Account::second(&s.ids));
    s.emulator.control.fault(json!({ "service": "aws-sts", "lifetime_secs": 20 })).await;
    let uid_leaves = s.pod("leaves", &first.name, "127.0.0.41", false).await;
    let uid_stays = s.pod("stays", &second.name, "127.0.0.42", false).await;
    for (ip, name, account, uid) in
        [("127.0.0.41", "leaves", &first, &uid_leaves), ("127.0.0.42", "stays", &second, &uid_stays)]
    {
        let token = s.pod_token(name, &account.name, uid).await;
        let aws = s.aws(ip, &token).await;
        assert_eq!(aws.0, 200, "{ip}: {}\n{}", aws.1, s.context());
    }
    s.delete_pod("leaves").await;
    wait_until("the leaving ServiceAccount's set to be dropped", STARTUP_DEADLINE, || async {
        !s.served().await.contains(&format!("/{}\n", first.name))
    })
    .await;
    let (left, stayed) = (s.exchanges(&first.role).await, s.exchanges(&second.role).await);
    // Two refreshes of the one that stayed: more than a refresh period went by.
    wait_until("two refreshes of the ServiceAccount that stayed", STARTUP_DEADLINE, || async {
        s.exchanges(&second.role).await >= stayed + 2
    })
    .await;
    let after = s.exchanges(&first.role).await;
    assert_eq!(after, left, "a ServiceAccount with no pod left was refreshed\n{}", s.context());
    s.cluster.stop().await;
}
