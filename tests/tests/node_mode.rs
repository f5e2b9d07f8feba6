//! `keyless node` on a real node (keyless-test-support's node.rs: a kubelet, containerd and the
//! controllers in a network namespace of the test's), deployed as the chart renders it in node mode
//! (the DaemonSet with its init container, RBAC and probes, run by the DaemonSet controller and the
//! kubelet): pods of two ServiceAccounts, injected by `keyless inject --mode node` (env only), get
//! their own identities through the unmodified Go SDKs of the apps image; a pod of a ServiceAccount
//! without identities and a `hostNetwork` pod are refused; an SDK request survives a rolling update
//! of the DaemonSet and the agent's pod being deleted. Without root, containerd, the CNI plugins,
//! podman, helm or the kubelet the test is reported ignored (cfg `keyless_tools_kubelet`,
//! `keyless_tools_helm`), and fails under `CI=true` saying what is missing.
//!
//! What differs from the chart's DaemonSet, and why: the image (no registry, and the chart's
//! full-CLI image would be one more static release build per run: the agent's pod runs the test's own
//! keyless build from the host, with the host's C libraries, in the apps image); the API server's
//! address (no Service proxy on this node: `KUBERNETES_SERVICE_HOST` is its address on the node's
//! loopback); the CA bundle (the host's, as docker/rootfs.sh copies it into the image); and the
//! token services' endpoints and CA (the emulator's). Azure IMDS is on 169.254.169.254 (the
//! chart's `node.takeOverMetadataServerAddress`): Azure's Go SDK asks that address whatever
//! `AZURE_POD_IDENTITY_AUTHORITY_HOST` says (tests/tests/node_pods.rs).
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use keyless_test_support::binary::{keyless_bin, workspace_root};
use keyless_test_support::jwt::claims_of;
use keyless_test_support::node::{self, APPS_IMAGE, Node, NodeEmulator, NodeImages, NodeWithEmulator};
use keyless_test_support::tools::{self, need};
use keyless_test_support::wait::holds_within;
use serde_json::{Value, json};

const NAMESPACE: &str = "default";
/// Where the chart is installed.
const AGENT_NAMESPACE: &str = "keyless-system";
const AWS_ADDRESS: &str = "169.254.170.23:80";
const GCP_ADDRESS: &str = "169.254.170.24:80";
const AZURE_ADDRESS: &str = "169.254.169.254:80";
const ID_TOKEN_AUDIENCE: &str = "https://keyless.test/node-mode";
const AZURE_SCOPE: &str = "https://management.azure.com/.default";
/// How long a pod may take to turn Ready.
const POD_DEADLINE: Duration = Duration::from_secs(180);

struct Setting {
    node: Node,
    emulator: NodeEmulator,
    ids: Value,
}

impl Setting {
    /// The chart's node mode applied (changed as the module says), and its agent's pod Ready.
    async fn deploy(&self) {
        let values = json!({
            "mode": "node",
            "aws": { "region": "us-east-1" },
            "node": {
                "gcpAddress": "169.254.170.24",
                "azureAddress": "169.254.169.254",
                "takeOverMetadataServerAddress": true,
                "logLevel": "info,keyless=debug",
            },
            "sidecar": { "env": self.emulator.sidecar_env() },
        });
        let dir = tempfile::tempdir().unwrap();
        let values_file = dir.path().join("values.yaml");
        std::fs::write(&values_file, yaml_serde::to_string(&values).unwrap()).unwrap();
        let helm = need(tools::find_helm());
        let chart = workspace_root().join("charts/keyless");
        let out = std::process::Command::new(&helm)
            .args(["template", "keyless", chart.to_str().unwrap(), "--namespace", AGENT_NAMESPACE])
            .args(["--values", values_file.to_str().unwrap(), "--show-only", "templates/node.yaml"])
            .output()
            .unwrap();
        assert!(out.status.success(), "helm template: {}", String::from_utf8_lossy(&out.stderr));
        let rendered = String::from_utf8(out.stdout).unwrap();
        let port = self.node.cluster.server.rsplit(':').next().unwrap().to_owned();
        let mut documents = Vec::new();
        for text in rendered.split("\n---\n") {
            let mut document: Value = yaml_serde::from_str(text).unwrap();
            if document.is_null() {
                continue;
            }
            if document["kind"] == "DaemonSet" {
                run_from_host(&mut document["spec"]["template"]["spec"], &self.emulator.ca, &port);
            }
            documents.push(serde_json::to_string(&document).unwrap());
        }
        self.node.cluster.create_namespace(AGENT_NAMESPACE).await;
        let applied = self.node.cluster.kubectl_with_input(&["apply", "-f", "-"], Some(&documents.join("\n"))).await;
        assert!(applied.status.success(), "{}", String::from_utf8_lossy(&applied.stderr));
        self.wait_agent_ready().await;
    }

    /// The DaemonSet's pod on the node, Ready (its own `--check-ready`).
    async fn wait_agent_ready(&self) {
        let ready = holds_within(POD_DEADLINE, || async {
            let args = ["rollout", "status", "daemonset/keyless-node", "-n", AGENT_NAMESPACE, "--timeout=5s"];
            self.node.cluster.kubectl(&args).await.status.success()
        })
        .await;
        assert!(ready, "keyless node's DaemonSet did not roll out:\n{}", self.agent_logs().await);
    }

    /// What the agent's pods logged, and the node's components.
    async fn agent_logs(&self) -> String {
        let args = [
            "logs",
            "-n",
            AGENT_NAMESPACE,
            "-l",
            "app.kubernetes.io/name=keyless-node",
            "--all-containers",
            "--tail=200",
        ];
        let logs = self.node.cluster.kubectl(&args).await;
        let pods = self.node.cluster.kubectl(&["get", "pods", "-A", "-o", "wide"]).await;
        format!(
            "--- keyless node\n{}{}\n--- pods\n{}\n--- emulator\n{}\n{}",
            String::from_utf8_lossy(&logs.stdout),
            String::from_utf8_lossy(&logs.stderr),
            String::from_utf8_lossy(&pods.stdout),
            self.emulator.process.logs(),
            self.node.logs_tail(30)
        )
    }

    /// A long-running pod of `account` labelled for injection, injected by `keyless inject --mode
    /// node` (its ServiceAccount in the input, as the webhook reads it from the cluster), applied;
    /// `extra` merged into its spec. Returns once it is Ready.
    async fn pod(&self, name: &str, account: &Value, extra: Value) {
        let mut pod = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": { "name": name, "namespace": NAMESPACE, "labels": { "keyless.dev/inject": "true" } },
            "spec": {
                "serviceAccountName": account["metadata"]["name"],
                "automountServiceAccountToken": false,
                "containers": [{
                    "name": "app",
                    "image": APPS_IMAGE,
                    "imagePullPolicy": "Never",
                    "command": ["/usr/local/bin/wait"],
                }],
            },
        });
        if let (Some(spec), Some(extra)) = (pod["spec"].as_object_mut(), extra.as_object()) {
            for (k, v) in extra {
                spec.insert(k.clone(), v.clone());
            }
        }
        let input = format!("{}\n---\n{}\n", account, pod);
        let injected = inject(&input).await;
        let applied = self.node.cluster.kubectl_with_input(&["apply", "-f", "-"], Some(&injected)).await;
        assert!(applied.status.success(), "{}\n{injected}", String::from_utf8_lossy(&applied.stderr));
        let ready = holds_within(POD_DEADLINE, || async {
            let args = ["wait", "--for=condition=Ready", &format!("pod/{name}"), "--timeout=5s"];
            self.node.cluster.kubectl(&args).await.status.success()
        })
        .await;
        assert!(ready, "{name} did not turn ready:\n{}", self.node.logs_tail(40));
    }

    /// `kubectl exec POD -c app -- ARGS`: its stdout, or (as the error) its output.
    async fn exec(&self, pod: &str, args: &[&str]) -> Result<String, String> {
        self.node.cluster.exec(NAMESPACE, pod, "app", args).await
    }

    /// The three clouds' SDKs in `pod`: the role, the Google service account and the Entra app.
    async fn identities_of(&self, pod: &str, context: &dyn Fn() -> String) -> (String, String, String) {
        let aws =
            self.exec(pod, &["/usr/local/bin/aws"]).await.unwrap_or_else(|e| panic!("{pod}: aws: {e}\n{}", context()));
        let arn = self.emulator.caller_arn(&serde_json::from_str(aws.trim()).unwrap()).await;
        let gcp = self
            .exec(pod, &["/usr/local/bin/gcp", ID_TOKEN_AUDIENCE])
            .await
            .unwrap_or_else(|e| panic!("{pod}: gcp: {e}\n{}", context()));
        let gcp: Value = serde_json::from_str(gcp.trim()).unwrap();
        let access_token = gcp["access_token"].as_str().unwrap();
        let info = self.emulator.control.tokeninfo(access_token, &format!("{pod}'s access token")).await;
        assert_eq!(info["email"], gcp["email"], "{pod}: {info}");
        let azure = self
            .exec(pod, &["/usr/local/bin/azure", "managed", AZURE_SCOPE])
            .await
            .unwrap_or_else(|e| panic!("{pod}: azure: {e}\n{}", context()));
        let azure: Value = serde_json::from_str(azure.trim()).unwrap();
        let appid = claims_of(azure["token"].as_str().unwrap())["appid"].as_str().unwrap_or_default().to_owned();
        (arn, gcp["email"].as_str().unwrap_or_default().to_owned(), appid)
    }
}

/// `keyless inject --mode node` of `input`.
async fn inject(input: &str) -> String {
    use tokio::io::AsyncWriteExt as _;
    let mut child = tokio::process::Command::new(keyless_bin())
        .args(["inject", "-f", "-", "--mode", "node", "--aws-region", "us-east-1"])
        .args(["--node-aws-address", AWS_ADDRESS, "--node-gcp-address", GCP_ADDRESS])
        .args(["--node-azure-address", AZURE_ADDRESS, "--allow-uninjected"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input.as_bytes()).await.unwrap();
    let out = child.wait_with_output().await.unwrap();
    assert!(out.status.success(), "keyless inject --mode node: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// A ServiceAccount named `name` with the identities `ids[role]`, `ids[gcp]`, `ids[azure]`.
fn account(ids: &Value, name: &str, role: &str, gcp: &str, azure: &str) -> Value {
    node::service_account(ids, NAMESPACE, name, [role, gcp, azure])
}

#[cfg_attr(
    not(all(keyless_tools_kubelet, keyless_tools_helm)),
    ignore = "needs root, containerd, runc, the CNI plugins, iptables, podman, go and the node binaries: ./scripts/test; needs helm: ./scripts/helm"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_charts_daemonset_serves_two_service_accounts_pods_through_unmodified_sdks_across_its_restarts() {
    let NodeWithEmulator { node, emulator, ids } = NodeWithEmulator::start(async { [NodeImages::apps().await] }).await;
    let setting = Setting { node, emulator, ids };
    let ids = &setting.ids;
    let name_of = |subject: &str| ids[subject].as_str().unwrap().rsplit(':').next().unwrap().to_owned();
    let first = account(ids, &name_of("subject"), "aws_role_arn", "gcp_service_account", "azure_client_id");
    let second = account(
        ids,
        &name_of("other_subject"),
        "aws_second_role_arn",
        "gcp_second_service_account",
        "azure_second_client_id",
    );
    let plain = json!({ "apiVersion": "v1", "kind": "ServiceAccount", "metadata": { "name": "plain", "namespace": NAMESPACE } });

    setting.deploy().await;
    setting.pod("app-a", &first, json!({})).await;
    setting.pod("app-b", &second, json!({})).await;
    let logs = || async { setting.agent_logs().await };

    let role = |key: &str| format!("assumed-role/{}/", ids[key].as_str().unwrap().rsplit('/').next().unwrap());
    for (pod, role_key, gcp_key, azure_key) in [
        ("app-a", "aws_role_arn", "gcp_service_account", "azure_client_id"),
        ("app-b", "aws_second_role_arn", "gcp_second_service_account", "azure_second_client_id"),
    ] {
        let context = logs().await;
        let (arn, email, appid) = setting.identities_of(pod, &|| context.clone()).await;
        assert!(arn.contains(&role(role_key)), "{pod}: {arn}");
        assert_eq!(email, ids[gcp_key].as_str().unwrap(), "{pod}");
        assert_eq!(appid, ids[azure_key].as_str().unwrap(), "{pod}");
    }

    // A pod of a ServiceAccount without identities (injection leaves it alone: it is given the
    // node's env by hand) and a hostNetwork pod of an annotated one are refused.
    let by_hand = json!({
        "volumes": [{ "name": "node-token", "projected": { "sources": [{ "serviceAccountToken": { "audience": "keyless.dev/node", "path": "token" } }] } }],
        "containers": [{
            "name": "app",
            "image": APPS_IMAGE,
            "imagePullPolicy": "Never",
            "command": ["/usr/local/bin/wait"],
            "env": [
                { "name": "AWS_CONTAINER_CREDENTIALS_FULL_URI", "value": "http://169.254.170.23/v1/credentials" },
                { "name": "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", "value": "/var/run/secrets/keyless/node/token" },
                { "name": "AWS_REGION", "value": "us-east-1" },
            ],
            "volumeMounts": [{ "name": "node-token", "mountPath": "/var/run/secrets/keyless/node", "readOnly": true }],
        }],
    });
    setting.pod("app-plain", &plain, by_hand.clone()).await;
    let mut host = by_hand;
    host["hostNetwork"] = true.into();
    setting.pod("host-agent", &first, host).await;
    // The SDK's error carries the container endpoint's code. A hostNetwork pod's connection to an
    // address of the node comes from that address, which no pod holds.
    for (pod, codes) in
        [("app-plain", &["NotOptedIn"][..]), ("host-agent", &["HostNetworkCaller", "UnknownCaller"][..])]
    {
        let refused = setting.exec(pod, &["/usr/local/bin/aws"]).await;
        let error = refused.err().unwrap_or_else(|| panic!("{pod} got credentials"));
        assert!(codes.iter().any(|c| error.contains(c)), "{pod}: not keyless node's refusal: {error}");
    }

    // A rolling update of the DaemonSet (the chart's maxSurge: 1): the new agent starts beside the
    // old one, sharing its addresses; the old one stops once the new one is Ready. SDK requests all
    // along succeed.
    let cluster = &setting.node.cluster;
    cluster.kubectl_ok(&["rollout", "restart", "daemonset/keyless-node", "-n", AGENT_NAMESPACE]).await;
    let rolled = async {
        setting.wait_agent_ready().await;
    };
    let asking = async {
        let mut answers = Vec::new();
        for _ in 0..3 {
            answers.push(setting.exec("app-b", &["/usr/local/bin/aws"]).await);
        }
        answers
    };
    let ((), answers) = tokio::join!(rolled, asking);
    for answer in answers {
        let credentials = answer.unwrap_or_else(|e| panic!("an SDK request failed during the update: {e}"));
        let arn = setting.emulator.caller_arn(&serde_json::from_str(credentials.trim()).unwrap()).await;
        assert!(arn.contains(&role("aws_second_role_arn")), "{arn}");
    }

    // The agent's pod deleted (as a crash or an eviction): the DaemonSet makes a new one while the
    // SDK asks; the SDK's retries carry its request over the gap.
    let selector = "app.kubernetes.io/name=keyless-node";
    let deleted = async {
        cluster.kubectl_ok(&["delete", "pod", "-n", AGENT_NAMESPACE, "-l", selector, "--wait=false"]).await;
    };
    let asked = async { setting.exec("app-a", &["/usr/local/bin/aws"]).await };
    let ((), answer) = tokio::join!(deleted, asked);
    let context = logs().await;
    let credentials = answer.unwrap_or_else(|e| panic!("the SDK's request failed across the restart: {e}\n{context}"));
    let arn = setting.emulator.caller_arn(&serde_json::from_str(credentials.trim()).unwrap()).await;
    assert!(arn.contains(&role("aws_role_arn")), "{arn}");
    setting.wait_agent_ready().await;
    setting.node.stop().await;
}

/// The rendered DaemonSet's pod changed to run the test's keyless build from the host (see the
/// module's documentation), against the API server on the node's loopback.
fn run_from_host(spec: &mut Value, emulator_ca: &std::path::Path, api_port: &str) {
    let binary = keyless_bin();
    let host_path =
        |name: &str, path: &str, kind: &str| json!({ "name": name, "hostPath": { "path": path, "type": kind } });
    let volumes = spec["volumes"].as_array_mut().unwrap();
    volumes.push(host_path("keyless-binary", binary.to_str().unwrap(), "File"));
    volumes.push(host_path("host-lib", "/usr/lib", "Directory"));
    volumes.push(host_path("host-lib64", "/usr/lib64", "Directory"));
    volumes.push(host_path("emulator-ca", emulator_ca.to_str().unwrap(), "File"));
    // The image's CA bundle (docker/rootfs.sh puts the system's there): the AWS SDK's HTTPS client
    // wants system roots even beside a configured CA file.
    volumes.push(host_path("host-certs", "/etc/ssl/certs", "Directory"));
    let mounts = [
        ("keyless-binary", "/usr/local/bin/keyless"),
        ("host-lib", "/lib"),
        ("host-lib64", "/lib64"),
        ("emulator-ca", node::EMULATOR_CA_IN_IMAGE),
        ("host-certs", "/etc/ssl/certs"),
    ];
    for list in ["initContainers", "containers"] {
        for container in spec[list].as_array_mut().unwrap() {
            container["image"] = APPS_IMAGE.into();
            container["imagePullPolicy"] = "Never".into();
            container["command"] = json!(["/usr/local/bin/keyless"]);
            let existing = container["volumeMounts"].as_array().cloned().unwrap_or_default();
            let mut all = existing;
            all.extend(mounts.iter().map(|(name, path)| json!({ "name": name, "mountPath": path, "readOnly": true })));
            container["volumeMounts"] = Value::Array(all);
            let mut env = container["env"].as_array().cloned().unwrap_or_default();
            env.push(json!({ "name": "KUBERNETES_SERVICE_HOST", "value": "127.0.0.1" }));
            env.push(json!({ "name": "KUBERNETES_SERVICE_PORT", "value": api_port }));
            container["env"] = Value::Array(env);
        }
    }
}
