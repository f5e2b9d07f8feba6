//! `keyless node` on a real node (keyless-test-support's node.rs: a kubelet and containerd in a
//! network namespace of the test's): pods of two ServiceAccounts, injected by `keyless inject
//! --mode node` (env only), get their own identities through the unmodified Go SDKs of the apps
//! image; a pod of a ServiceAccount without identities and a `hostNetwork` pod are refused; the
//! agent restarting does not fail the SDK's request. Without root, containerd, the CNI plugins,
//! podman or the kubelet the test is reported ignored (cfg `keyless_tools_kubelet`), and fails
//! under `CI=true` saying what is missing.
//!
//! What differs from the chart's DaemonSet, and why: keyless node runs as a process in the node's
//! network namespace (the host network of the node's pods: where a `hostNetwork` pod runs), not as
//! a pod: no registry, and the node-feature image would be one more static release build per run.
//! It puts its addresses on the namespace's loopback link itself (`--add-addresses`), as the
//! chart's init container does. Azure's Go SDK asks 169.254.169.254 whatever
//! `AZURE_POD_IDENTITY_AUTHORITY_HOST` says (tests/tests/node_pods.rs), so in this namespace of the
//! test's keyless node is explicitly given that address for Azure IMDS.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use keyless_test_support::binary::keyless_bin;
use keyless_test_support::clients;
use keyless_test_support::jwt::claims_of;
use keyless_test_support::node::{self, APPS_IMAGE, NODE_IP, Node, NodeEmulator, NodeImages};
use keyless_test_support::process::Process;
use keyless_test_support::tools::need;
use keyless_test_support::wait::holds_within;
use serde_json::{Value, json};

const NAMESPACE: &str = "default";
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

/// A keyless node and its state directory.
struct Agent {
    process: Process,
    _state: tempfile::TempDir,
}

impl Setting {
    /// `keyless node` in the node's namespace, serving (its own `--check-ready`: during an update
    /// two agents share the admin port, so /readyz could be the other's).
    async fn agent(&self) -> Agent {
        let state = tempfile::tempdir().unwrap();
        let ca = self.emulator.ca.to_str().unwrap().to_owned();
        let url = self.emulator.inside_url.clone();
        let admin = SocketAddr::from((NODE_IP, 9815)).to_string();
        let mut args: Vec<String> = [
            "node",
            "--node-name",
            node::NODE_NAME,
            "--add-addresses",
            "--aws-listen",
            AWS_ADDRESS,
            "--gcp-listen",
            GCP_ADDRESS,
            "--azure-listen",
            AZURE_ADDRESS,
            "--admin-listen",
            &admin,
            "--state-dir",
            state.path().to_str().unwrap(),
            "--aws-region",
            "us-east-1",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        for (name, value) in [
            ("KEYLESS_AWS__STS_ENDPOINT", &url),
            ("KEYLESS_AWS__CA_FILE", &ca),
            ("KEYLESS_GCP__STS_ENDPOINT", &url),
            ("KEYLESS_GCP__IAM_ENDPOINT", &url),
            ("KEYLESS_GCP__CA_FILE", &ca),
            ("KEYLESS_AZURE__AUTHORITY_HOST", &url),
            ("KEYLESS_AZURE__CA_FILE", &ca),
        ] {
            args.push("--provider-setting".to_owned());
            args.push(format!("{name}={value}"));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let kubeconfig = self.node.cluster.kubeconfig.to_str().unwrap().to_owned();
        let agent = Process::spawn_in(
            Some(&self.node.netns),
            None,
            &args,
            &[("KUBECONFIG", &kubeconfig), ("KEYLESS_LOG", "info")],
        );
        let state_dir = state.path().to_str().unwrap().to_owned();
        let ready = holds_within(Duration::from_secs(60), || async {
            let check = tokio::process::Command::new(keyless_bin())
                .args(["node", "--check-ready", "--state-dir", &state_dir])
                .output()
                .await;
            check.is_ok_and(|out| out.status.success())
        })
        .await;
        assert!(ready, "keyless node did not turn ready:\n{}", agent.logs());
        Agent { process: agent, _state: state }
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

    /// `kubectl exec POD -c app -- ARGS`: its stdout, or its stderr as the error.
    async fn exec(&self, pod: &str, args: &[&str]) -> Result<String, String> {
        let mut full = vec!["exec", pod, "-c", "app", "--"];
        full.extend_from_slice(args);
        let out = self.node.cluster.kubectl(&full).await;
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        if out.status.success() { Ok(stdout.into_owned()) } else { Err(format!("{stderr}{stdout}")) }
    }

    async fn caller_arn(&self, credentials: &Value) -> String {
        use aws_sdk_sts::config::{Credentials, SharedCredentialsProvider};
        let field =
            |name: &str| credentials[name].as_str().unwrap_or_else(|| panic!("{name}: {credentials}")).to_owned();
        let keys = Credentials::new(
            field("access_key_id"),
            field("secret_access_key"),
            Some(field("session_token")),
            None,
            "pod",
        );
        let sts = clients::aws_sts(
            &self.emulator.url,
            &self.emulator.ca,
            "us-east-1",
            Some(SharedCredentialsProvider::new(keys)),
        );
        let who = sts.get_caller_identity().send().await.unwrap_or_else(|e| panic!("GetCallerIdentity refused: {e:?}"));
        who.arn().unwrap_or_default().to_owned()
    }

    /// The three clouds' SDKs in `pod`: the role, the Google service account and the Entra app.
    async fn identities_of(&self, pod: &str, context: &dyn Fn() -> String) -> (String, String, String) {
        let aws =
            self.exec(pod, &["/usr/local/bin/aws"]).await.unwrap_or_else(|e| panic!("{pod}: aws: {e}\n{}", context()));
        let arn = self.caller_arn(&serde_json::from_str(aws.trim()).unwrap()).await;
        let gcp = self
            .exec(pod, &["/usr/local/bin/gcp", ID_TOKEN_AUDIENCE])
            .await
            .unwrap_or_else(|e| panic!("{pod}: gcp: {e}\n{}", context()));
        let gcp: Value = serde_json::from_str(gcp.trim()).unwrap();
        let control = &self.emulator.control;
        let info = control.client().get(control.url("/tokeninfo"));
        let info = info.query(&[("access_token", gcp["access_token"].as_str().unwrap())]).send().await.unwrap();
        assert_eq!(info.status().as_u16(), 200, "{pod}: tokeninfo refused the access token");
        let info: Value = info.json().await.unwrap();
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
    let id = |key: &str| ids[key].as_str().unwrap().to_owned();
    let provider = ids["audiences"]["gcp"].as_str().unwrap().trim_start_matches("//iam.googleapis.com/").to_owned();
    json!({
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {
            "name": name,
            "namespace": NAMESPACE,
            "annotations": {
                "eks.amazonaws.com/role-arn": id(role),
                "iam.gke.io/gcp-service-account": id(gcp),
                "keyless.dev/gcp-workload-identity-provider": provider,
                "keyless.dev/gcp-project-id": id("gcp_project_id"),
                "azure.workload.identity/client-id": id(azure),
                "azure.workload.identity/tenant-id": id("azure_tenant_id"),
            },
        },
    })
}

#[cfg_attr(
    not(keyless_tools_kubelet),
    ignore = "needs root, containerd, runc, the CNI plugins, podman, go and the node binaries: ./scripts/test"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyless_node_serves_two_service_accounts_pods_through_unmodified_sdks_and_survives_its_restart() {
    let tools = need(node::find_tools());
    // The image first: building it must not hold the machine's node lock.
    let apps = NodeImages::apps().await;
    let node = Node::start(tools).await;
    apps.import(&node).await;
    let emulator = node.start_emulator().await;
    emulator.control.trust_issuer(node.cluster.issuer(), &node.cluster.ca_pem_text()).await;
    let ids = emulator.control.identities().await;
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

    let agent = setting.agent().await;
    setting.pod("app-a", &first, json!({})).await;
    setting.pod("app-b", &second, json!({})).await;
    let logs = |agent: &Agent| {
        format!("--- keyless node\n{}\n--- emulator\n{}", agent.process.logs(), setting.emulator.process.logs())
    };

    let role = |key: &str| format!("assumed-role/{}/", ids[key].as_str().unwrap().rsplit('/').next().unwrap());
    for (pod, role_key, gcp_key, azure_key) in [
        ("app-a", "aws_role_arn", "gcp_service_account", "azure_client_id"),
        ("app-b", "aws_second_role_arn", "gcp_second_service_account", "azure_second_client_id"),
    ] {
        let (arn, email, appid) = setting.identities_of(pod, &|| logs(&agent)).await;
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
        let error = refused.err().unwrap_or_else(|| panic!("{pod} got credentials\n{}", logs(&agent)));
        assert!(codes.iter().any(|c| error.contains(c)), "{pod}: not keyless node's refusal: {error}");
    }

    // A rolling update (the chart's maxSurge: 1): the new agent starts beside the old one, sharing
    // its addresses, then the old one stops, while the SDK asks. No request fails.
    let old = agent;
    let new = setting.agent().await;
    old.process.terminate();
    let (answer, _) = tokio::join!(setting.exec("app-b", &["/usr/local/bin/aws"]), old.process.wait());
    let credentials =
        answer.unwrap_or_else(|e| panic!("the SDK's request failed across the update: {e}\n{}", logs(&new)));
    let arn = setting.caller_arn(&serde_json::from_str(credentials.trim()).unwrap()).await;
    assert!(arn.contains(&role("aws_second_role_arn")), "{arn}");
    let after = setting.exec("app-b", &["/usr/local/bin/aws"]).await;
    after.unwrap_or_else(|e| panic!("the new agent alone: {e}\n{}", logs(&new)));

    // The agent restarts (SIGTERM, then a new one, as the kubelet restarts a crashed agent) while
    // the SDK asks: the SDK's retries carry its request over the gap.
    let old = new;
    old.process.terminate();
    let asked = async { setting.exec("app-a", &["/usr/local/bin/aws"]).await };
    let restarted = async {
        let _ = old.process.wait().await;
        setting.agent().await
    };
    let (answer, agent) = tokio::join!(asked, restarted);
    let credentials =
        answer.unwrap_or_else(|e| panic!("the SDK's request failed across the restart: {e}\n{}", logs(&agent)));
    let arn = setting.caller_arn(&serde_json::from_str(credentials.trim()).unwrap()).await;
    assert!(arn.contains(&role("aws_role_arn")), "{arn}");
    drop(agent);
    setting.node.stop().await;
}
