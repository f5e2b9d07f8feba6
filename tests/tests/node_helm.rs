//! The chart as a user installs it, on a real node (keyless-test-support's node.rs: a kubelet,
//! containerd, the controller-manager and the scheduler in a network namespace of the test's):
//! `helm install` of charts/keyless in its default (sidecar) mode runs the webhook as pods on the
//! node from the release's full-CLI image (`scripts/image --full`); a Deployment's pods, made by
//! the real controller-manager and scheduler, are injected by that webhook with the sidecar image
//! of `scripts/image`, run, and the unmodified Go SDKs of the apps image get credentials from the
//! emulator through the injected sidecar. Then `helm upgrade` to the hardened admin listener
//! (`sidecar.adminOnLoopback`), the pods' exec probes under the real kubelet; the pods' deletion
//! (no request an app made before its own SIGTERM failed); and `helm uninstall`, which must leave
//! nothing of the release. Without root, containerd, the CNI plugins, podman, helm or the kubelet
//! the test is reported ignored (cfg `keyless_tools_kubelet`, `keyless_tools_helm`), and fails
//! under `CI=true` saying what is missing.
//!
//! One node serves every scenario, in order (one node per machine; the images and the install are
//! the costly part). What differs from `helm install keyless charts/keyless` on a real cluster,
//! and why: the images (no registry: the local builds, `pullPolicy: Never`); the sidecar image
//! carries the emulator's CA (`/etc/keyless/emulator-ca.pem`, the only way to a file in the
//! injected sidecar without a volume; a cluster whose token services sit behind a private CA does
//! the same), and `sidecar.env` points the token services at the emulator. The node has no
//! kube-proxy: the API server calls the webhook at its pod IP (`--enable-aggregator-routing`), and
//! a rule in the node's namespace forwards the `kubernetes` Service's ClusterIP to the API server
//! (the webhook's ServiceAccount cache).
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use keyless_test_support::binary::workspace_root;
use keyless_test_support::jwt::claims_of;
use keyless_test_support::node::{self, APPS_IMAGE, Node, NodeEmulator, NodeImages, NodeWithEmulator};
use keyless_test_support::tools::{self, need};
use keyless_test_support::wait::holds_within;
use keyless_test_support::{clients, podman};
use serde_json::{Value, json};

/// The release's name and namespace.
const RELEASE: &str = "keyless";
const RELEASE_NAMESPACE: &str = "keyless-system";
/// The app's namespace (the emulator's identities trust `default`'s ServiceAccounts).
const NAMESPACE: &str = "default";
/// The app's Deployment, and its pods' label.
const APP: &str = "keyless-helm-app";
/// The sidecar image with the emulator's CA in it.
const SIDECAR_TEST_IMAGE: &str = "localhost/keyless-test-sidecar:dev";
/// Where the app's loop (tests/go/aws `loop`) writes its record, a hostPath of the node's.
const RECORDS: &str = "/records";
const ID_TOKEN_AUDIENCE: &str = "https://keyless.test/node-helm";
const AZURE_SCOPE: &str = "https://management.azure.com/.default";
/// The App Service endpoint's secret (Go's azidentity reaches keyless only through it).
const AZURE_IDENTITY_HEADER: &str = "keyless-node-helm-identity-header";
/// The sidecar's admin port.
const ADMIN_PORT: u16 = 9812;
/// How long a rollout, a pod or a deletion may take (a loaded 2-core machine).
const DEADLINE: Duration = Duration::from_secs(180);

struct Setting {
    node: Node,
    emulator: NodeEmulator,
    ids: Value,
    helm: std::path::PathBuf,
    /// The helm's own directories (cache, config, data), the values file.
    dir: tempfile::TempDir,
    /// The node's directory the app's record goes to.
    records: std::path::PathBuf,
}

#[cfg_attr(
    not(all(keyless_tools_kubelet, keyless_tools_helm)),
    ignore = "needs root, containerd, runc, the CNI plugins, iptables, podman, go and the node binaries: ./scripts/test; needs helm: ./scripts/helm"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chart_installed_with_helm_injects_a_deployment_on_a_real_node_and_uninstalls_without_a_trace() {
    let helm = need(tools::find_helm());
    let podman = need(podman::find_podman());
    let images =
        async { [NodeImages::apps().await, NodeImages::keyless(&podman).await, NodeImages::webhook(&podman).await] };
    let NodeWithEmulator { node, emulator, ids } = NodeWithEmulator::start(images).await;
    let sidecar = NodeImages::with_files(
        podman::SIDECAR_IMAGE,
        SIDECAR_TEST_IMAGE,
        &[(node::EMULATOR_CA_IN_IMAGE, &emulator.ca_pem())],
    )
    .await;
    sidecar.import(&node).await;
    let records = node.shared_dir("records");
    let setting = Setting { node, emulator, ids, helm, dir: tempfile::tempdir().unwrap(), records };

    setting.create_identity().await;
    the_webhook_runs_as_pods_and_injects_a_deployments_pods(&setting).await;
    the_hardened_admin_listener_is_probed_by_the_kubelet_and_closed_to_the_pod_network(&setting).await;
    deletion_fails_no_request_made_before_the_apps_sigterm(&setting).await;
    helm_uninstall_leaves_nothing_of_the_release(&setting).await;
    setting.node.stop().await;
    // The API server's wider listen address and the ClusterIP rule lived in the node's namespace.
    node::assert_machine_holds_nothing_of_a_node();
}

/// `helm install` with the images and the emulator's endpoints: the webhook's replicas run on the
/// node, from the full-CLI image; the app's Deployment (created after the webhook is ready) gets
/// its pod from the ReplicaSet controller and the scheduler, injected by the webhook with the
/// sidecar image; the app's three SDKs get the ServiceAccount's identities, and the (default)
/// admin listener answers on the pod IP.
async fn the_webhook_runs_as_pods_and_injects_a_deployments_pods(setting: &Setting) {
    setting.helm_ok(&["install", RELEASE, &chart(), "--namespace", RELEASE_NAMESPACE, "--create-namespace"]).await;
    setting.wait_webhook_rolled_out().await;
    let webhooks = setting.release_pods().await;
    assert_eq!(webhooks.len(), 2, "the chart's two replicas: {webhooks:#?}");
    for pod in &webhooks {
        assert_eq!(pod["spec"]["nodeName"], node::NODE_NAME, "{pod}");
        let container = &pod["spec"]["containers"][0];
        assert_eq!(container["image"], podman::WEBHOOK_IMAGE, "the release's full-CLI image: {container}");
        assert_eq!(container["args"][0], "webhook", "{container}");
    }

    setting.create_deployment().await;
    let pod = setting.app_pod().await;
    let owner = &pod["metadata"]["ownerReferences"][0];
    assert_eq!(owner["kind"], "ReplicaSet", "the Deployment's controller made the pod: {pod}");
    assert_eq!(pod["spec"]["nodeName"], node::NODE_NAME, "the scheduler bound it: {pod}");
    let sidecar = &pod["spec"]["initContainers"][0];
    assert_eq!(sidecar["name"], "keyless", "the webhook injected the sidecar: {pod}");
    assert_eq!(sidecar["image"], SIDECAR_TEST_IMAGE, "{sidecar}");
    assert_eq!(sidecar["restartPolicy"], "Always", "a native sidecar: {sidecar}");
    assert!(sidecar["startupProbe"]["httpGet"].is_object(), "the kubelet's HTTP probes by default: {sidecar}");
    assert_eq!(sidecar["ports"][0]["containerPort"], ADMIN_PORT, "the default admin port: {sidecar}");
    let name = pod["metadata"]["name"].as_str().unwrap();
    setting.assert_identities(name).await;

    // The default admin listener is on the pod IP: the kubelet's HTTP probes reach it, and so does
    // anyone on the pod network (what the hardened setting closes).
    let ip = pod["status"]["podIP"].as_str().unwrap();
    let admin = setting.node.forward(SocketAddr::new(ip.parse().unwrap(), ADMIN_PORT)).await;
    let ready = clients::loopback().get(format!("http://{admin}/readyz")).send().await.unwrap();
    assert_eq!(ready.status().as_u16(), 200, "the admin listener on {ip}");
}

/// `helm upgrade --set sidecar.adminOnLoopback=true`, the webhook's new replicas, then a rollout
/// of the app: its new pod's sidecar has exec probes (`keyless probe http://127.0.0.1:9812/...`)
/// and no admin port; the real kubelet runs them and the pod turns Ready; the app gets
/// credentials; and nothing listens on the pod IP's admin port (refused from the node's namespace).
async fn the_hardened_admin_listener_is_probed_by_the_kubelet_and_closed_to_the_pod_network(setting: &Setting) {
    let upgrade = [
        "upgrade",
        RELEASE,
        &chart(),
        "--namespace",
        RELEASE_NAMESPACE,
        "--reuse-values",
        "--set",
        "sidecar.adminOnLoopback=true",
    ];
    setting.helm_ok(&upgrade).await;
    setting.wait_webhook_rolled_out().await;
    for pod in setting.release_pods().await {
        let args = pod["spec"]["containers"][0]["args"].as_array().unwrap().clone();
        assert!(args.contains(&json!("--sidecar-admin-on-loopback")), "a webhook of the old release: {args:?}");
    }
    let cluster = &setting.node.cluster;
    cluster.kubectl_ok(&["rollout", "restart", &format!("deployment/{APP}"), "-n", NAMESPACE]).await;
    setting.wait_app_rolled_out().await;
    let pod = setting.app_pod().await;
    let sidecar = &pod["spec"]["initContainers"][0];
    for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
        let command = &sidecar[probe]["exec"]["command"];
        assert_eq!(command[0], "/usr/local/bin/keyless", "{probe}: {sidecar}");
        assert_eq!(command[1], "probe", "{probe}: {sidecar}");
        let url = command[2].as_str().unwrap_or_default();
        assert!(url.starts_with(&format!("http://127.0.0.1:{ADMIN_PORT}/")), "{probe}: {sidecar}");
        assert!(sidecar[probe]["httpGet"].is_null(), "{probe}: {sidecar}");
    }
    assert!(sidecar["ports"].as_array().is_none_or(|p| p.is_empty()), "an admin port: {sidecar}");
    let statuses = pod["status"]["initContainerStatuses"].as_array().unwrap();
    let keyless = statuses.iter().find(|s| s["name"] == "keyless").unwrap();
    assert_eq!((&keyless["started"], &keyless["ready"]), (&json!(true), &json!(true)), "{keyless}");
    let name = pod["metadata"]["name"].as_str().unwrap();
    let aws = setting.exec(name, &["/usr/local/bin/aws"]).await.unwrap_or_else(|e| panic!("aws: {e}"));
    let arn = setting.emulator.caller_arn(&serde_json::from_str(aws.trim()).unwrap()).await;
    assert!(arn.contains(&setting.role("aws_role_arn")), "{arn}");

    let ip = pod["status"]["podIP"].as_str().unwrap();
    let refused = setting.node.connect(SocketAddr::new(ip.parse().unwrap(), ADMIN_PORT)).await;
    match refused {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
        other => panic!("the admin port on the pod IP {ip} is not refused: {other:?}"),
    }
}

/// The app (tests/go/aws `loop`: a credential request every 100 ms, each recorded) of every pod
/// the Deployment had, deleted (the rollout above replaced the first, scaling to zero removes the
/// second): each got SIGTERM (a graceful stop), every request it made before its SIGTERM
/// succeeded, and it was still asking in the last second before it.
async fn deletion_fails_no_request_made_before_the_apps_sigterm(setting: &Setting) {
    let cluster = &setting.node.cluster;
    cluster.kubectl_ok(&["scale", &format!("deployment/{APP}"), "-n", NAMESPACE, "--replicas=0"]).await;
    let gone = holds_within(DEADLINE, || async {
        let out =
            cluster.kubectl_ok(&["get", "pods", "-n", NAMESPACE, "-l", &format!("app={APP}"), "-o", "name"]).await;
        out.trim().is_empty()
    })
    .await;
    assert!(gone, "the app's pods are still there:\n{}", setting.context().await);
    let mut records: Vec<_> = std::fs::read_dir(&setting.records).unwrap().flatten().map(|e| e.path()).collect();
    records.sort();
    assert_eq!(records.len(), 2, "a record per pod (the first replaced by the rollout): {records:?}");
    for record in records {
        node::assert_no_request_failed_before_sigterm(&record);
    }
}

/// `helm uninstall`: once the webhook's pods are gone, no object of any kind the chart renders
/// (and none its controllers made: ReplicaSets, pods, endpoints) is left, by the release's label
/// or by name; the query found each of them before the uninstall.
async fn helm_uninstall_leaves_nothing_of_the_release(setting: &Setting) {
    let before = setting.objects_of_the_release().await;
    for kind in [
        "deployments.apps",
        "replicasets.apps",
        "pods",
        "services",
        "endpoints",
        "endpointslices.discovery.k8s.io",
        "secrets",
        "serviceaccounts",
        "clusterroles.rbac.authorization.k8s.io",
        "clusterrolebindings.rbac.authorization.k8s.io",
        "mutatingwebhookconfigurations.admissionregistration.k8s.io",
        "poddisruptionbudgets.policy",
        "networkpolicies.networking.k8s.io",
    ] {
        assert!(before.iter().any(|o| o.starts_with(&format!("{kind}/"))), "no {kind} found before: {before:#?}");
    }
    setting.helm_ok(&["uninstall", RELEASE, "--namespace", RELEASE_NAMESPACE, "--wait"]).await;
    let clean = holds_within(DEADLINE, || async { setting.objects_of_the_release().await.is_empty() }).await;
    assert!(clean, "helm uninstall left: {:#?}", setting.objects_of_the_release().await);
}

impl Setting {
    /// `helm ARGS` against the cluster (its own directories); stdout, or the test fails.
    async fn helm_ok(&self, args: &[&str]) -> String {
        let values = self.values_file();
        let mut command = tokio::process::Command::new(&self.helm);
        command.args(args).arg("--kubeconfig").arg(&self.node.cluster.kubeconfig);
        if args[0] != "uninstall" && !args.contains(&"--reuse-values") {
            command.arg("--values").arg(&values);
        }
        for (variable, dir) in
            [("HELM_CACHE_HOME", "cache"), ("HELM_CONFIG_HOME", "config"), ("HELM_DATA_HOME", "data")]
        {
            command.env(variable, self.dir.path().join(dir));
        }
        command.kill_on_drop(true).stdin(std::process::Stdio::null());
        let out = tokio::time::timeout(DEADLINE, command.output()).await;
        let out = out.unwrap_or_else(|_| panic!("helm {args:?} took over {DEADLINE:?}")).unwrap();
        if !out.status.success() {
            panic!("helm {args:?} failed: {}\n{}", String::from_utf8_lossy(&out.stderr), self.context().await);
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The chart's values: the local images, the region, the emulator's endpoints and CA.
    fn values_file(&self) -> std::path::PathBuf {
        let (sidecar_repository, sidecar_tag) = SIDECAR_TEST_IMAGE.rsplit_once(':').unwrap();
        let (webhook_repository, webhook_tag) = podman::WEBHOOK_IMAGE.rsplit_once(':').unwrap();
        let values = json!({
            "webhook": {
                "image": { "repository": webhook_repository, "tag": webhook_tag, "pullPolicy": "Never" },
                "logLevel": "info,keyless=debug",
            },
            "sidecar": {
                "image": { "repository": sidecar_repository, "tag": sidecar_tag, "pullPolicy": "Never" },
                "env": self.emulator.sidecar_env(),
            },
            "aws": { "region": "us-east-1" },
        });
        let path = self.dir.path().join("values.yaml");
        std::fs::write(&path, yaml_serde::to_string(&values).unwrap()).unwrap();
        path
    }

    /// The ServiceAccount the emulator trusts, annotated with its three identities, and the Secret
    /// holding the App Service endpoint's header.
    async fn create_identity(&self) {
        let name = self.ids["subject"].as_str().unwrap().rsplit(':').next().unwrap();
        let identities = ["aws_role_arn", "gcp_service_account", "azure_client_id"];
        let mut account = node::service_account(&self.ids, NAMESPACE, name, identities);
        account["metadata"]["annotations"]["keyless.dev/azure-identity-header-secret"] =
            json!("keyless-identity-header");
        let secret = json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": { "name": "keyless-identity-header", "namespace": NAMESPACE },
            "stringData": { "identity-header": AZURE_IDENTITY_HEADER },
        });
        let input = format!("{account}\n---\n{secret}\n");
        let applied = self.node.cluster.kubectl_with_input(&["apply", "-f", "-"], Some(&input)).await;
        assert!(applied.status.success(), "{}", String::from_utf8_lossy(&applied.stderr));
    }

    /// The app's Deployment: one replica of the apps image labelled for injection, its app the
    /// credential loop writing to `RECORDS/<pod>.jsonl` (a hostPath of the node's).
    async fn create_deployment(&self) {
        let account = self.ids["subject"].as_str().unwrap().rsplit(':').next().unwrap().to_owned();
        let deployment = json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": { "name": APP, "namespace": NAMESPACE },
            "spec": {
                "replicas": 1,
                "selector": { "matchLabels": { "app": APP } },
                "template": {
                    "metadata": { "labels": { "app": APP, "keyless.dev/inject": "true" } },
                    "spec": {
                        "serviceAccountName": account,
                        "containers": [{
                            "name": "app",
                            "image": APPS_IMAGE,
                            "imagePullPolicy": "Never",
                            "command": ["/usr/local/bin/aws", "loop", format!("{RECORDS}/$(POD_NAME).jsonl")],
                            "env": [{ "name": "POD_NAME", "valueFrom": { "fieldRef": { "fieldPath": "metadata.name" } } }],
                            "volumeMounts": [{ "name": "records", "mountPath": RECORDS }],
                        }],
                        "volumes": [{
                            "name": "records",
                            "hostPath": { "path": self.records.to_str().unwrap(), "type": "Directory" },
                        }],
                    },
                },
            },
        });
        let input = deployment.to_string();
        let applied = self.node.cluster.kubectl_with_input(&["apply", "-f", "-"], Some(&input)).await;
        assert!(applied.status.success(), "{}", String::from_utf8_lossy(&applied.stderr));
        self.wait_app_rolled_out().await;
    }

    async fn wait_app_rolled_out(&self) {
        let args = ["rollout", "status", &format!("deployment/{APP}"), "-n", NAMESPACE, "--timeout=5s"];
        let done = holds_within(DEADLINE, || async { self.node.cluster.kubectl(&args).await.status.success() }).await;
        assert!(done, "the app's Deployment did not roll out:\n{}", self.context().await);
        // Only the new pod is left (the old one's deletion is awaited, not raced).
        let one =
            holds_within(DEADLINE, || async { self.pods(NAMESPACE, &format!("app={APP}")).await.len() == 1 }).await;
        assert!(one, "the app's old pod is still there:\n{}", self.context().await);
    }

    /// The webhook's Deployment rolled out, and only its current pods left (an old replica could
    /// still answer the API server otherwise).
    async fn wait_webhook_rolled_out(&self) {
        let name = format!("deployment/{RELEASE}-webhook");
        let args = ["rollout", "status", &name, "-n", RELEASE_NAMESPACE, "--timeout=5s"];
        let done = holds_within(DEADLINE, || async { self.node.cluster.kubectl(&args).await.status.success() }).await;
        assert!(done, "the webhook's Deployment did not roll out:\n{}", self.context().await);
        let settled = holds_within(DEADLINE, || async { self.release_pods().await.len() == 2 }).await;
        assert!(settled, "the webhook's old pods are still there:\n{}", self.context().await);
    }

    /// The pods of the release (the webhook's), as JSON.
    async fn release_pods(&self) -> Vec<Value> {
        self.pods(RELEASE_NAMESPACE, &format!("app.kubernetes.io/instance={RELEASE}")).await
    }

    async fn pods(&self, namespace: &str, selector: &str) -> Vec<Value> {
        let args = ["get", "pods", "-n", namespace, "-l", selector, "-o", "json"];
        let out = self.node.cluster.kubectl_ok(&args).await;
        let list: Value = serde_json::from_str(&out).unwrap();
        list["items"].as_array().cloned().unwrap_or_default()
    }

    /// The app's one pod, Ready.
    async fn app_pod(&self) -> Value {
        let pods = self.pods(NAMESPACE, &format!("app={APP}")).await;
        assert_eq!(pods.len(), 1, "{pods:#?}");
        let pod = pods[0].clone();
        let conditions = pod["status"]["conditions"].as_array().cloned().unwrap_or_default();
        let ready = conditions.iter().any(|c| c["type"] == "Ready" && c["status"] == "True");
        assert!(ready, "the app's pod is not Ready:\n{pod:#}\n{}", self.context().await);
        pod
    }

    /// Every object of the release, as `KIND/NAMESPACE/NAME`: by the chart's instance label in
    /// every namespace, and by name (`keyless-webhook...`: what the controllers made for it), over
    /// every kind the chart renders or its objects make; and the release's own record (helm's
    /// Secret).
    async fn objects_of_the_release(&self) -> Vec<String> {
        let kinds = [
            "deployments.apps",
            "replicasets.apps",
            "controllerrevisions.apps",
            "pods",
            "services",
            "endpoints",
            "endpointslices.discovery.k8s.io",
            "secrets",
            "configmaps",
            "serviceaccounts",
            "roles.rbac.authorization.k8s.io",
            "rolebindings.rbac.authorization.k8s.io",
            "clusterroles.rbac.authorization.k8s.io",
            "clusterrolebindings.rbac.authorization.k8s.io",
            "mutatingwebhookconfigurations.admissionregistration.k8s.io",
            "validatingwebhookconfigurations.admissionregistration.k8s.io",
            "poddisruptionbudgets.policy",
            "networkpolicies.networking.k8s.io",
        ];
        let template = "{range .items[*]}{.metadata.namespace}/{.metadata.name} {.metadata.labels}{\"\\n\"}{end}";
        let mut found = Vec::new();
        for kind in kinds {
            let args = ["get", kind, "-A", "-o", &format!("jsonpath={template}")];
            let out = self.node.cluster.kubectl_ok(&args).await;
            for line in out.lines() {
                let (name, labels) = line.split_once(' ').unwrap_or((line, ""));
                let labels: Value = serde_json::from_str(labels).unwrap_or(Value::Null);
                let ours = labels["app.kubernetes.io/instance"] == RELEASE
                    || (labels["owner"] == "helm" && labels["name"] == RELEASE)
                    || name.rsplit('/').next().unwrap_or_default().starts_with(&format!("{RELEASE}-webhook"));
                if ours {
                    found.push(format!("{kind}/{name}"));
                }
            }
        }
        found
    }

    /// `kubectl exec POD -c app -- ARGS`: its stdout, or (as the error) its output.
    async fn exec(&self, pod: &str, args: &[&str]) -> Result<String, String> {
        self.node.cluster.exec(NAMESPACE, pod, "app", args).await
    }

    /// `assumed-role/NAME/` of the role `ids[key]`.
    fn role(&self, key: &str) -> String {
        format!("assumed-role/{}/", self.ids[key].as_str().unwrap().rsplit('/').next().unwrap())
    }

    /// The three clouds' Go SDKs in `pod` get the ServiceAccount's role, Google service account
    /// and Entra application, proven against the emulator.
    async fn assert_identities(&self, pod: &str) {
        let ids = &self.ids;
        let aws = self.exec(pod, &["/usr/local/bin/aws"]).await;
        let aws = aws.unwrap_or_else(|e| panic!("{pod}: aws: {e}"));
        let arn = self.emulator.caller_arn(&serde_json::from_str(aws.trim()).unwrap()).await;
        assert!(arn.contains(&self.role("aws_role_arn")), "{pod}: {arn}");
        let gcp = self.exec(pod, &["/usr/local/bin/gcp", ID_TOKEN_AUDIENCE]).await;
        let gcp: Value = serde_json::from_str(gcp.unwrap_or_else(|e| panic!("{pod}: gcp: {e}")).trim()).unwrap();
        let access_token = gcp["access_token"].as_str().unwrap();
        let info = self.emulator.control.tokeninfo(access_token, &format!("{pod}'s access token")).await;
        assert_eq!(info["email"], ids["gcp_service_account"], "{pod}: {info}");
        let azure = self.exec(pod, &["/usr/local/bin/azure", "managed", AZURE_SCOPE]).await;
        let azure: Value = serde_json::from_str(azure.unwrap_or_else(|e| panic!("{pod}: azure: {e}")).trim()).unwrap();
        let claims = claims_of(azure["token"].as_str().unwrap());
        assert_eq!(claims["appid"], ids["azure_client_id"], "{pod}: {claims}");
    }

    /// What a failure shows: the pods, the webhook's and the app's logs, the events, the node.
    async fn context(&self) -> String {
        let cluster = &self.node.cluster;
        let text = |out: std::process::Output| {
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
        };
        let pods = text(cluster.kubectl(&["get", "pods", "-A", "-o", "wide"]).await);
        let selector = format!("app.kubernetes.io/instance={RELEASE}");
        let webhook = ["logs", "-n", RELEASE_NAMESPACE, "-l", &selector, "--all-containers", "--tail=100"];
        let webhook = text(cluster.kubectl(&webhook).await);
        let app = ["logs", "-n", NAMESPACE, "-l", &format!("app={APP}"), "--all-containers", "--tail=100"];
        let app = text(cluster.kubectl(&app).await);
        let events = text(cluster.kubectl(&["get", "events", "-A", "--sort-by=.lastTimestamp"]).await);
        format!(
            "--- pods\n{pods}\n--- webhook\n{webhook}\n--- app\n{app}\n--- events\n{events}\n--- emulator\n{}\n{}",
            self.emulator.process.logs(),
            self.node.logs_tail(30)
        )
    }
}

fn chart() -> String {
    workspace_root().join("charts/keyless").display().to_string()
}
