//! `keyless webhook` registered with a real API server over TLS (keyless-test-support's kube.rs),
//! and `keyless inject`'s output applied to it: stored pods carry the injection; malformed and
//! missing annotations, a webhook that is down and a renewed certificate behave as
//! docs/injection.md says; the injected pod's tokens, minted through TokenRequest, are exchanged
//! by keyless for credentials boto3, google-auth and azure-identity accept. Without the cluster's
//! binaries the tests are reported ignored (cfg `keyless_tools_kube`), and fail under `CI=true`.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use keyless_test_support::binary::workspace_root;
use keyless_test_support::emulate::EmulatorProcess;
use keyless_test_support::kube::{self, Cluster};
use keyless_test_support::process::{Process, free_port};
use keyless_test_support::sdk::App;
use keyless_test_support::tools;
use keyless_test_support::wait::{STARTUP_DEADLINE, wait_until};
use keyless_test_support::webhook::{WebhookFiles, WebhookProcess, pod_review};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
use serde_json::{Value, json};

const NAMESPACE: &str = "shop";
const ROLE: &str = "arn:aws:iam::111122223333:role/shop";

/// A CA and a serving certificate for 127.0.0.1 (the API server calls the webhook by URL).
struct WebhookPki {
    dir: tempfile::TempDir,
    ca_pem: String,
}

impl WebhookPki {
    fn new() -> Self {
        let pki = Self { dir: tempfile::tempdir().unwrap(), ca_pem: String::new() };
        pki.renewed()
    }

    /// A new CA and serving pair, written over the old files.
    fn renewed(mut self) -> Self {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.subject_alt_names.push(SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
        let cert = params.signed_by(&key, &issuer).unwrap();
        std::fs::write(self.key(), key.serialize_pem()).unwrap();
        std::fs::write(self.cert(), cert.pem()).unwrap();
        self.ca_pem = ca_cert.pem();
        self
    }

    fn cert(&self) -> PathBuf {
        self.dir.path().join("tls.crt")
    }

    fn key(&self) -> PathBuf {
        self.dir.path().join("tls.key")
    }

    fn ca_bundle(&self) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(&self.ca_pem)
    }
}

/// `keyless webhook` on `port` with `pki`'s pair, reading ServiceAccounts from `cluster`, once its
/// cache is synced.
async fn start_webhook(cluster: &Cluster, pki: &WebhookPki, policy: &str, port: u16) -> WebhookProcess {
    let extra = ["--tls-reload-interval", "200ms", "--failure-policy", policy, "--aws-region", "eu-west-1"];
    start_webhook_with(cluster, pki, port, &extra).await
}

/// `keyless webhook` on `port` with `pki`'s pair and the flags `extra`, reading ServiceAccounts
/// from `cluster`, once its cache is synced.
async fn start_webhook_with(cluster: &Cluster, pki: &WebhookPki, port: u16, extra: &[&str]) -> WebhookProcess {
    let (cert, key) = (pki.cert(), pki.key());
    let files = WebhookFiles { cert: &cert, key: &key, kubeconfig: &cluster.kubeconfig };
    WebhookProcess::start(port, &files, extra, "/readyz").await
}

/// A cluster with the namespace [`NAMESPACE`] and its ServiceAccounts `billing` (annotated with
/// [`ROLE`]) and `plain` (no annotation).
async fn cluster_with_billing_and_plain() -> Cluster {
    let cluster = Cluster::start_with(tools::need(kube::find_binaries())).await;
    cluster.create_namespace(NAMESPACE).await;
    service_account(&cluster, "billing", json!({ "eks.amazonaws.com/role-arn": ROLE })).await;
    service_account(&cluster, "plain", json!({})).await;
    cluster
}

/// The webhook (failure policy `fail`) on a fresh port, registered with `cluster` (`Fail`), once
/// the API server has it inject a pod of `billing`.
async fn registered_webhook(cluster: &Cluster) -> (WebhookPki, u16, WebhookProcess) {
    let pki = WebhookPki::new();
    let port = free_port();
    let webhook = start_webhook(cluster, &pki, "fail", port).await;
    register(cluster, &pki, port, "Fail").await;
    wait_admitted(cluster, "the webhook's registration", &pod("probe", "billing", opted_in()), true).await;
    (pki, port, webhook)
}

/// The MutatingWebhookConfiguration the chart renders, pointed at the webhook by URL (no Service
/// without kube-proxy) and registered with the API server.
async fn register(cluster: &Cluster, pki: &WebhookPki, port: u16, policy: &str) {
    let hook = |name: &str, path: &str, namespaces: Value, objects: Value| {
        json!({
            "name": name,
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            "failurePolicy": policy,
            "timeoutSeconds": 5,
            "reinvocationPolicy": "IfNeeded",
            "clientConfig": { "url": format!("https://127.0.0.1:{port}{path}"), "caBundle": pki.ca_bundle() },
            "rules": [{ "operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"], "scope": "Namespaced" }],
            "namespaceSelector": namespaces,
            "objectSelector": objects,
        })
    };
    let excluded = json!({ "key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["keyless-system", "kube-system"] });
    let configuration = json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": { "name": "keyless-webhook" },
        "webhooks": [
            hook("pod.inject.keyless.dev", "/mutate", json!({ "matchExpressions": [excluded] }), json!({ "matchLabels": { "keyless.dev/inject": "true" } })),
            hook(
                "namespace.inject.keyless.dev",
                "/mutate-namespace",
                json!({ "matchExpressions": [{ "key": "keyless.dev/inject", "operator": "In", "values": ["enabled"] }, excluded] }),
                json!({ "matchExpressions": [{ "key": "keyless.dev/inject", "operator": "DoesNotExist" }] }),
            ),
        ],
    });
    apply(cluster, &configuration).await.unwrap();
}

async fn apply(cluster: &Cluster, object: &Value) -> Result<String, String> {
    let out = cluster
        .kubectl_with_input(
            &["apply", "--server-side", "--force-conflicts", "--field-manager=keyless-tests", "-f", "-"],
            Some(&object.to_string()),
        )
        .await;
    result(out)
}

/// `kubectl create -f -`: `Ok(stderr)` (where admission warnings are) or `Err(stderr)`.
async fn create(cluster: &Cluster, object: &Value) -> Result<String, String> {
    let out = cluster.kubectl_with_input(&["create", "-f", "-"], Some(&object.to_string())).await;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if out.status.success() { Ok(stderr) } else { Err(stderr) }
}

fn result(out: std::process::Output) -> Result<String, String> {
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if out.status.success() { Ok(text) } else { Err(text) }
}

async fn service_account(cluster: &Cluster, name: &str, annotations: Value) {
    let account = json!({
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": { "name": name, "namespace": NAMESPACE, "annotations": annotations },
    });
    apply(cluster, &account).await.unwrap();
}

fn pod(name: &str, account: &str, labels: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": name, "namespace": NAMESPACE, "labels": labels },
        "spec": {
            "serviceAccountName": account,
            "containers": [{ "name": "app", "image": "example/app:1", "env": [{ "name": "AWS_REGION", "value": "mine" }] }],
        },
    })
}

fn opted_in() -> Value {
    json!({ "keyless.dev/inject": "true" })
}

fn init_names(pod: &Value) -> Vec<String> {
    let init = pod["spec"]["initContainers"].as_array().cloned().unwrap_or_default();
    init.iter().map(|c| c["name"].as_str().unwrap().to_owned()).collect()
}

fn env_of(container: &Value) -> BTreeMap<String, String> {
    let env = container["env"].as_array().cloned().unwrap_or_default();
    env.iter().filter_map(|e| Some((e["name"].as_str()?.to_owned(), e["value"].as_str()?.to_owned()))).collect()
}

/// Waits until the API server admits a dry run of `pod` with (or without) the injection: it
/// applies a changed MutatingWebhookConfiguration (or namespace label) from its informer cache,
/// a moment after the change.
async fn wait_admitted(cluster: &Cluster, what: &str, pod: &Value, injected: bool) {
    let manifest = pod.to_string();
    let want: &[&str] = if injected { &["keyless"] } else { &[] };
    wait_until(what, STARTUP_DEADLINE, || async {
        match cluster.create_dry_run(&manifest).await {
            Ok(out) => serde_json::from_str(&out).is_ok_and(|pod: Value| init_names(&pod) == want),
            Err(_) => false,
        }
    })
    .await;
}

/// A counter of the webhook's /metrics (0 when absent).
fn counter(metrics: &str, series: &str) -> u64 {
    metrics.lines().find_map(|l| l.strip_prefix(series)?.trim().parse().ok()).unwrap_or(0)
}

#[tokio::test]
#[cfg_attr(
    not(keyless_tools_kube),
    ignore = "needs kube-apiserver, kubectl and etcd (target/kube/bin): ./scripts/kube, with Go >= 1.25"
)]
async fn the_webhook_injects_pods_stored_by_a_real_api_server_and_respects_the_failure_policy() {
    let cluster = cluster_with_billing_and_plain().await;
    service_account(&cluster, "broken", json!({ "eks.amazonaws.com/role-arn": "billing-role" })).await;
    let (pki, port, webhook) = registered_webhook(&cluster).await;
    let context = || format!("--- webhook\n{}", webhook.process.logs());

    // A bare pod: stored with the sidecar, the token volume and the app's variables (its own win).
    create(&cluster, &pod("bare", "billing", opted_in())).await.unwrap_or_else(|e| panic!("{e}\n{}", context()));
    let stored = cluster.get_json(NAMESPACE, "pod", "bare").await;
    assert_eq!(init_names(&stored), ["keyless"], "{stored}");
    let sidecar = &stored["spec"]["initContainers"][0];
    assert_eq!(sidecar["restartPolicy"], "Always");
    assert_eq!(env_of(sidecar)["KEYLESS_AWS__ROLE_ARN"], ROLE);
    let app = env_of(&stored["spec"]["containers"][0]);
    assert_eq!(app["AWS_CONTAINER_CREDENTIALS_FULL_URI"], "http://127.0.0.1:9811/v1/credentials");
    assert_eq!(app["AWS_REGION"], "mine", "the user's value wins");
    assert_eq!(app["AWS_DEFAULT_REGION"], "mine", "for both region variables");
    let volumes = stored["spec"]["volumes"].as_array().unwrap();
    let tokens = volumes.iter().find(|v| v["name"] == "keyless-tokens").unwrap();
    let sources = &tokens["projected"]["sources"];
    assert_eq!(sources[0]["serviceAccountToken"]["audience"], "sts.amazonaws.com", "{stored}");

    // A Deployment's pod, as its ReplicaSet controller creates it (no controller manager here):
    // generateName, the template's labels.
    let template_spec = pod("unused", "billing", json!({}))["spec"].clone();
    let deployment = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": { "name": "web", "namespace": NAMESPACE },
        "spec": {
            "selector": { "matchLabels": { "app": "web" } },
            "template": { "metadata": { "labels": { "app": "web", "keyless.dev/inject": "true" } }, "spec": template_spec },
        },
    });
    create(&cluster, &deployment).await.unwrap();
    let stored_deployment = cluster.get_json(NAMESPACE, "deployment", "web").await;
    assert!(init_names(&stored_deployment["spec"]["template"]).is_empty(), "the webhook mutates pods, not templates");
    let replica = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "generateName": "web-", "namespace": NAMESPACE, "labels": stored_deployment["spec"]["template"]["metadata"]["labels"] },
        "spec": stored_deployment["spec"]["template"]["spec"],
    });
    let out = cluster.kubectl_with_input(&["create", "-o", "name", "-f", "-"], Some(&replica.to_string())).await;
    let name = result(out).unwrap().trim().trim_start_matches("pod/").to_owned();
    let stored = cluster.get_json(NAMESPACE, "pod", &name).await;
    assert_eq!(init_names(&stored), ["keyless"], "{stored}");

    // A ServiceAccount created just before its pod (the creation race of controllers): read live
    // when the watch cache has not seen it yet, so the pod is injected all the same.
    service_account(&cluster, "fresh", json!({ "eks.amazonaws.com/role-arn": ROLE })).await;
    create(&cluster, &pod("fresh", "fresh", opted_in())).await.unwrap_or_else(|e| panic!("{e}\n{}", context()));
    assert_eq!(init_names(&cluster.get_json(NAMESPACE, "pod", "fresh").await), ["keyless"]);

    // A dry run gets the same injection and is not counted.
    let before = counter(&webhook.metrics().await, "keyless_webhook_injections_total");
    let dry = cluster.create_dry_run(&pod("dry", "billing", opted_in()).to_string()).await.unwrap();
    assert_eq!(init_names(&serde_json::from_str(&dry).unwrap()), ["keyless"], "{dry}");
    assert_eq!(counter(&webhook.metrics().await, "keyless_webhook_injections_total"), before);

    // No identity annotation: admitted uninjected, with a warning naming the annotations.
    let warning = create(&cluster, &pod("plain", "plain", opted_in())).await.unwrap();
    assert!(warning.contains("eks.amazonaws.com/role-arn"), "{warning}");
    assert!(init_names(&cluster.get_json(NAMESPACE, "pod", "plain").await).is_empty());

    // A malformed annotation under Fail: refused, naming the annotation and the ServiceAccount.
    let refused = create(&cluster, &pod("broken", "broken", opted_in())).await.unwrap_err();
    assert!(
        refused.contains("eks.amazonaws.com/role-arn") && refused.contains("ServiceAccount shop/broken"),
        "{refused}"
    );
    assert!(webhook.process.logs().contains("invalid_annotation"), "{}", context());

    // Not opted in: never sent (object selector), never refused, even a broken ServiceAccount's.
    create(&cluster, &pod("other", "broken", json!({}))).await.unwrap();

    // A renewed certificate (a new CA even) is served without a restart.
    let pki = pki.renewed();
    register(&cluster, &pki, port, "Fail").await;
    wait_until("the renewed certificate", STARTUP_DEADLINE, || async {
        webhook.process.logs().contains("loaded the renewed TLS certificate")
    })
    .await;
    wait_admitted(&cluster, "the renewed CA's registration", &pod("probe", "billing", opted_in()), true).await;
    create(&cluster, &pod("after-renewal", "billing", opted_in()))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", context()));
    assert_eq!(init_names(&cluster.get_json(NAMESPACE, "pod", "after-renewal").await), ["keyless"]);
    let metrics = webhook.metrics().await;
    assert!(counter(&metrics, "keyless_webhook_injections_total") >= 3, "{metrics}");
    assert_eq!(counter(&metrics, "keyless_webhook_errors_total{reason=\"invalid_annotation\"}"), 1, "{metrics}");

    // The webhook down under Fail: opted-in pods are refused, others are not affected.
    webhook.process.stop().await;
    let refused = create(&cluster, &pod("while-down", "billing", opted_in())).await.unwrap_err();
    assert!(refused.contains("pod.inject.keyless.dev"), "{refused}");
    create(&cluster, &pod("unaffected", "billing", json!({}))).await.unwrap();

    // Under Ignore: down, the pod is admitted uninjected; up, a malformed annotation is a warning.
    register(&cluster, &pki, port, "Ignore").await;
    wait_admitted(&cluster, "failurePolicy Ignore", &pod("probe", "billing", opted_in()), false).await;
    create(&cluster, &pod("down-ignored", "billing", opted_in())).await.unwrap();
    assert!(init_names(&cluster.get_json(NAMESPACE, "pod", "down-ignored").await).is_empty());
    let webhook = start_webhook(&cluster, &pki, "ignore", port).await;
    let warning = create(&cluster, &pod("broken-ignored", "broken", opted_in())).await.unwrap();
    assert!(warning.contains("eks.amazonaws.com/role-arn"), "{warning}");
    assert!(init_names(&cluster.get_json(NAMESPACE, "pod", "broken-ignored").await).is_empty());

    // A namespace opted in: its unlabelled pods are injected, a pod labelled "false" is not.
    cluster.kubectl_ok(&["label", "namespace", NAMESPACE, "keyless.dev/inject=enabled"]).await;
    wait_admitted(&cluster, "the namespace label", &pod("probe", "billing", json!({})), true).await;
    create(&cluster, &pod("by-namespace", "billing", json!({}))).await.unwrap();
    assert_eq!(init_names(&cluster.get_json(NAMESPACE, "pod", "by-namespace").await), ["keyless"]);
    create(&cluster, &pod("opted-out", "billing", json!({ "keyless.dev/inject": "false" }))).await.unwrap();
    assert!(init_names(&cluster.get_json(NAMESPACE, "pod", "opted-out").await).is_empty());
    webhook.process.stop().await;
    cluster.stop().await;
}

/// `keyless inject`'s output for the golden inputs, and the chart's `helm template`, are valid
/// against the real API server (server-side apply validates every field).
#[tokio::test]
#[cfg_attr(
    not(all(keyless_tools_helm, keyless_tools_kube)),
    ignore = "needs helm (target/tools/bin) or Go to build it: ./scripts/helm; needs kube-apiserver, kubectl and etcd (target/kube/bin): ./scripts/kube, with Go >= 1.25"
)]
async fn inject_and_helm_template_output_is_accepted_by_the_real_api_server() {
    let helm = tools::need(tools::find_helm());
    let cluster = Cluster::start_with(tools::need(kube::find_binaries())).await;
    let dir = tempfile::tempdir().unwrap();
    cluster.create_namespace("shop").await;
    for name in ["every-kind", "overrides"] {
        let input = workspace_root().join(format!("crates/keyless-inject/tests/golden/{name}.in.yaml"));
        // `overrides` holds a hostNetwork pod that is opted in but left alone.
        let injected = inject_file(&input, &["--aws-region", "us-east-1", "--allow-uninjected"]).await;
        let path = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&path, &injected).unwrap();
        let applied = cluster.apply_server_side(&path).await.unwrap_or_else(|e| panic!("{name}: {e}\n{injected}"));
        assert!(applied.contains("serverside-applied"), "{applied}");
    }
    let stored = cluster.get_json("shop", "deployment", "deployment").await;
    // The sidecar first, so the user's own init container (`migrate`) already has credentials.
    assert_eq!(init_names(&stored["spec"]["template"]), ["keyless", "migrate"], "{stored}");
    assert_eq!(stored["spec"]["template"]["spec"]["initContainers"][0]["restartPolicy"], "Always");

    let chart = workspace_root().join("charts/keyless");
    let out = std::process::Command::new(&helm)
        .args(["template", "keyless", chart.to_str().unwrap(), "--namespace", "keyless-system"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    cluster.create_namespace("keyless-system").await;
    let path = dir.path().join("chart.yaml");
    std::fs::write(&path, &out.stdout).unwrap();
    let applied = cluster.apply_server_side(&path).await.unwrap_or_else(|e| panic!("helm template: {e}"));
    assert!(applied.contains("mutatingwebhookconfiguration.admissionregistration.k8s.io/keyless-webhook"), "{applied}");

    // With a cluster to look in, the NetworkPolicy admits the API server's own addresses (the
    // `kubernetes` Service's endpoints; this test API server reconciles none, so one is made).
    let slice = json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": { "name": "kubernetes-test", "namespace": "default", "labels": { "kubernetes.io/service-name": "kubernetes" } },
        "addressType": "IPv4",
        "endpoints": [{ "addresses": ["10.0.0.1"] }],
        "ports": [{ "name": "https", "port": 6443, "protocol": "TCP" }],
    });
    apply(&cluster, &slice).await.unwrap();
    let out = std::process::Command::new(&helm)
        .args(["template", "keyless", chart.to_str().unwrap(), "--namespace", "keyless-system", "--dry-run=server"])
        .env("KUBECONFIG", &cluster.kubeconfig)
        .env("HOME", dir.path())
        .output()
        .unwrap();
    let rendered = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let policy = rendered.split("\n---\n").find(|d| d.contains("kind: NetworkPolicy")).unwrap();
    assert!(policy.contains("cidr: 10.0.0.1/32") && !policy.contains("0.0.0.0/0"), "{policy}");
    cluster.stop().await;
}

/// `keyless inject -f FILE` with `args`; its stdout.
async fn inject_file(input: &Path, args: &[&str]) -> String {
    let output = tokio::process::Command::new(keyless_test_support::binary::keyless_bin())
        .args(["inject", "-f", input.to_str().unwrap()])
        .args(args)
        .output()
        .await
        .unwrap();
    assert!(output.status.success(), "keyless inject failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

/// The injected pod run as processes: each projected token minted through TokenRequest for its
/// audience, keyless started with exactly the sidecar's environment from the stored spec (paths
/// and ports moved to the test's, the clouds' endpoints to the emulator), and the example apps with
/// exactly the app container's.
#[tokio::test]
#[cfg_attr(
    not(keyless_tools_kube),
    ignore = "needs kube-apiserver, kubectl and etcd (target/kube/bin): ./scripts/kube, with Go >= 1.25"
)]
async fn the_injected_pods_tokens_are_exchanged_for_credentials_the_sdks_accept() {
    let cluster = Cluster::start_with(tools::need(kube::find_binaries())).await;
    let emulator = EmulatorProcess::start().await;
    let ids = emulator.control.identities().await;
    let subject = ids["subject"].as_str().unwrap().strip_prefix("system:serviceaccount:").unwrap().to_owned();
    let (namespace, account) = subject.split_once(':').unwrap();
    emulator.control.trust_issuer(cluster.issuer(), &cluster.ca_pem_text()).await;
    if namespace != "default" {
        cluster.create_namespace(namespace).await;
    }
    let id = |key: &str| ids[key].as_str().unwrap().to_owned();
    let manifest = format!(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: {account}\n  namespace: {namespace}\n  annotations:\n    eks.amazonaws.com/role-arn: {role}\n    iam.gke.io/gcp-service-account: {sa}\n    keyless.dev/gcp-workload-identity-provider: {provider}\n    keyless.dev/gcp-project-id: {project}\n    azure.workload.identity/client-id: {client}\n    azure.workload.identity/tenant-id: {tenant}\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: app\n  namespace: {namespace}\n  labels:\n    keyless.dev/inject: \"true\"\nspec:\n  serviceAccountName: {account}\n  containers:\n    - name: app\n      image: example/app:1\n",
        role = id("aws_role_arn"),
        sa = id("gcp_service_account"),
        provider = ids["audiences"]["gcp"].as_str().unwrap(),
        project = id("gcp_project_id"),
        client = id("azure_client_id"),
        tenant = id("azure_tenant_id"),
    );
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("app.yaml");
    std::fs::write(&input, manifest).unwrap();
    let injected_path = dir.path().join("injected.yaml");
    std::fs::write(&injected_path, inject_file(&input, &["--aws-region", "us-east-1"]).await).unwrap();
    cluster.apply_server_side(&injected_path).await.unwrap();
    let pod = cluster.get_json(namespace, "pod", "app").await;

    // The projected volume: one token per audience, minted for the pod's ServiceAccount.
    let tokens = dir.path().join("tokens");
    std::fs::create_dir(&tokens).unwrap();
    let volume = pod["spec"]["volumes"].as_array().unwrap().iter().find(|v| v["name"] == "keyless-tokens").unwrap();
    for source in volume["projected"]["sources"].as_array().unwrap() {
        let token = &source["serviceAccountToken"];
        let lifetime = Duration::from_secs(token["expirationSeconds"].as_u64().unwrap());
        let jwt = cluster.token(namespace, account, token["audience"].as_str().unwrap(), lifetime).await;
        std::fs::write(tokens.join(token["path"].as_str().unwrap()), jwt).unwrap();
    }

    let run = dir.path().join("run");
    std::fs::create_dir(&run).unwrap();
    let (port, admin) = (free_port(), free_port());
    let listen = format!("127.0.0.1:{port}");
    let moved = |value: &str| {
        value
            .replace("/var/run/secrets/keyless", tokens.to_str().unwrap())
            .replace("/run/keyless", run.to_str().unwrap())
            .replace("127.0.0.1:9811", &listen)
    };
    let ca = emulator.ca.to_str().unwrap().to_owned();
    let mut sidecar_env: Vec<(String, String)> =
        env_of(&pod["spec"]["initContainers"][0]).into_iter().map(|(k, v)| (k, moved(&v))).collect();
    for (key, value) in [
        ("KEYLESS_ADMIN_LISTEN", format!("127.0.0.1:{admin}")),
        ("KEYLESS_AWS__STS_ENDPOINT", emulator.url.clone()),
        ("KEYLESS_AWS__CA_FILE", ca.clone()),
        ("KEYLESS_GCP__STS_ENDPOINT", emulator.url.clone()),
        ("KEYLESS_GCP__IAM_ENDPOINT", emulator.url.clone()),
        ("KEYLESS_GCP__CA_FILE", ca.clone()),
        ("KEYLESS_AZURE__AUTHORITY_HOST", emulator.url.clone()),
        ("KEYLESS_AZURE__CA_FILE", ca.clone()),
    ] {
        sidecar_env.push((key.to_owned(), value));
    }
    let env: Vec<(&str, &str)> = sidecar_env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let keyless = Process::spawn(&["serve"], &env);
    let client = reqwest::Client::new();
    let readyz = format!("http://127.0.0.1:{admin}/readyz");
    let context = || format!("--- keyless\n{}\n--- emulator\n{}", keyless.logs(), emulator.logs());
    wait_until("keyless's /readyz", STARTUP_DEADLINE, || async {
        client.get(&readyz).send().await.is_ok_and(|r| r.status().is_success())
    })
    .await;

    let app_env: BTreeMap<String, String> =
        env_of(&pod["spec"]["containers"][0]).into_iter().map(|(k, v)| (k, moved(&v))).collect();
    let common = [
        ("KEYLESS_DEV_EMULATOR_URL", emulator.url.as_str()),
        ("REQUESTS_CA_BUNDLE", ca.as_str()),
        ("SSL_CERT_FILE", ca.as_str()),
    ];
    let home = tempfile::tempdir().unwrap();
    let example = |name: &str, extra: Vec<(&'static str, String)>| {
        let script = std::fs::read_to_string(workspace_root().join("examples").join(name)).unwrap();
        let extra: Vec<(&str, &str)> = extra.iter().map(|(k, v)| (*k, v.as_str())).collect::<Vec<_>>();
        App::python(&script).env(&app_env).vars(&common).vars(&extra).home(home.path())
    };
    let aws = example(
        "aws_app.py",
        vec![
            ("AWS_ENDPOINT_URL_STS", emulator.url.clone()),
            ("AWS_CA_BUNDLE", ca.clone()),
            ("KEYLESS_DEV_AWS_ROLE_ARN", id("aws_role_arn")),
        ],
    )
    .stdout_ok(context)
    .await;
    assert!(aws.contains("aws: arn:aws:sts::123456789012:assumed-role/"), "{aws}");
    let gcp = example("gcp_app.py", vec![("KEYLESS_DEV_GCP_SERVICE_ACCOUNT", id("gcp_service_account"))])
        .stdout_ok(context)
        .await;
    assert!(gcp.contains(&format!("access token for {}", id("gcp_service_account"))), "{gcp}");
    let azure = example(
        "azure_app.py",
        vec![
            ("KEYLESS_DEV_AZURE_TENANT_ID", id("azure_tenant_id")),
            ("KEYLESS_DEV_AZURE_CLIENT_ID", id("azure_client_id")),
        ],
    )
    .stdout_ok(context)
    .await;
    assert!(azure.contains(&format!("token for app {}", id("azure_client_id"))), "{azure}");
    keyless.stop().await;
    cluster.stop().await;
}

/// An AdmissionReview of a Pod CREATE in `shop`, as the API server sends it.
fn review_of(pod: &Value) -> Value {
    pod_review("00000000-0000-0000-0000-000000000001", NAMESPACE, pod)
}

/// Posts `review` to the webhook directly (as any client reaching its port can): the raw JSON
/// response.
async fn post_review(client: &reqwest::Client, port: u16, review: &Value) -> Value {
    let url = format!("https://127.0.0.1:{port}/mutate");
    let response = client.post(url).json(review).send().await.unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    serde_json::from_slice(&response.bytes().await.unwrap()).unwrap()
}

fn webhook_client(pki: &WebhookPki) -> reqwest::Client {
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(pki.ca_pem.as_bytes()).unwrap())
        .build()
        .unwrap()
}

/// The API server's count of GETs of ServiceAccounts (its own /metrics).
async fn service_account_gets(cluster: &Cluster) -> u64 {
    let metrics = cluster.kubectl_ok(&["get", "--raw", "/metrics"]).await;
    metrics
        .lines()
        .filter(|l| {
            l.starts_with("apiserver_request_total{")
                && l.contains("resource=\"serviceaccounts\"")
                && l.contains("verb=\"GET\"")
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Pods read back from the real API server (stored and defaulted: probe schemes and thresholds,
/// port protocols, pull policies, termination-message fields, its token volume mounted into every
/// container) replayed as reviews: no patch, counted as already injected. A new pod's patch is
/// the documented base64 JSON Patch. The pod's own annotations are no authority: identity
/// annotations on the pod and a `keyless.dev/injected` record it brings change nothing of its own.
/// A ServiceAccount annotation the sidecar would refuse at start is refused at admission.
#[cfg_attr(not(keyless_tools_kube), ignore = "needs kube-apiserver, etcd and kubectl: ./scripts/test (scripts/kube)")]
#[tokio::test]
async fn stored_pods_replayed_get_no_patch_and_the_pod_is_no_authority() {
    let cluster = cluster_with_billing_and_plain().await;
    let provider = "projects/123/locations/global/workloadIdentityPools/pool/providers/k8s";
    service_account(
        &cluster,
        "gke",
        json!({ "iam.gke.io/gcp-service-account": "a@b.c/../../x?y#z", "keyless.dev/gcp-workload-identity-provider": provider }),
    )
    .await;
    let (pki, port, webhook) = registered_webhook(&cluster).await;
    let context = || format!("--- webhook\n{}", webhook.process.logs());
    let client = webhook_client(&pki);

    // A new pod: the patch is a base64 string (not kube-rs's array of numbers) of a JSON Patch.
    let answer = post_review(&client, port, &review_of(&pod("fresh", "billing", opted_in()))).await;
    let response = &answer["response"];
    assert_eq!(response["allowed"], true, "{answer}");
    assert_eq!(response["patchType"], "JSONPatch", "{answer}");
    use base64::Engine as _;
    let patch = response["patch"].as_str().unwrap_or_else(|| panic!("patch is not a string: {answer}"));
    let ops: Value = serde_json::from_slice(&base64::engine::general_purpose::STANDARD.decode(patch).unwrap()).unwrap();
    assert!(
        ops.as_array().unwrap().iter().any(|op| op["op"] == "add" && op["path"] == "/spec/initContainers"),
        "{ops}"
    );

    // Stored pods, injected by the webhook at creation, replayed: nothing to change.
    let mut bare = pod("stored", "billing", opted_in());
    bare["spec"]["containers"][0]["ports"] = json!([{ "containerPort": 8080 }]);
    bare["spec"]["containers"][0]["readinessProbe"] = json!({ "httpGet": { "path": "/", "port": 8080 } });
    create(&cluster, &bare).await.unwrap_or_else(|e| panic!("{e}\n{}", context()));
    let mut workloads = vec![cluster.get_json(NAMESPACE, "pod", "stored").await];
    // A pod stored from `keyless inject`'s output (not through the webhook: the pod is not opted
    // in at creation, then replayed as opted in).
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("pod.yaml");
    let manifest = json!({
        "apiVersion": "v1", "kind": "List",
        "items": [
            { "apiVersion": "v1", "kind": "ServiceAccount", "metadata": { "name": "billing", "namespace": NAMESPACE, "annotations": { "eks.amazonaws.com/role-arn": ROLE } } },
            pod("from-inject", "billing", json!({ "keyless.dev/inject": "true", "stage": "x" })),
        ],
    });
    std::fs::write(&input, manifest.to_string()).unwrap();
    let injected = inject_file(&input, &["--aws-region", "eu-west-1"]).await;
    let injected = injected.replace("keyless.dev/inject: 'true'", "keyless.dev/inject: 'false'");
    let path = dir.path().join("injected.yaml");
    std::fs::write(&path, &injected).unwrap();
    cluster.apply_server_side(&path).await.unwrap();
    let mut from_inject = cluster.get_json(NAMESPACE, "pod", "from-inject").await;
    from_inject["metadata"]["labels"]["keyless.dev/inject"] = "true".into();
    workloads.push(from_inject);
    let before = webhook.metrics().await;
    for stored in &workloads {
        assert_eq!(init_names(stored), ["keyless"], "{stored}");
        let answer = post_review(&client, port, &review_of(stored)).await;
        assert_eq!(answer["response"]["allowed"], true, "{answer}");
        assert!(answer["response"].get("patch").is_none(), "a stored pod got a patch: {answer}\n{stored}");
    }
    let after = webhook.metrics().await;
    let skips = "keyless_webhook_skips_total{reason=\"already_injected\"}";
    assert_eq!(counter(&after, skips), counter(&before, skips) + 2, "{after}");
    assert_eq!(
        counter(&after, "keyless_webhook_injections_total"),
        counter(&before, "keyless_webhook_injections_total"),
        "{after}"
    );

    // The pod's own identity annotation is not read: its ServiceAccount has none.
    let mut annotated = pod("annotated", "plain", opted_in());
    annotated["metadata"]["annotations"] = json!({ "eks.amazonaws.com/role-arn": ROLE });
    let warning = create(&cluster, &annotated).await.unwrap();
    assert!(warning.contains("ignored"), "{warning}");
    assert!(init_names(&cluster.get_json(NAMESPACE, "pod", "annotated").await).is_empty());
    // Injected, the pod still hears what it should know: its own annotation ignored, and a static
    // key of its own that AWS SDKs use before keyless (escaped: the container name is the pod's).
    let mut keyed = pod("keyed", "billing", opted_in());
    keyed["metadata"]["annotations"] = json!({ "eks.amazonaws.com/role-arn": ROLE });
    keyed["spec"]["containers"][0]["name"] = json!("app\u{1b}[2J");
    keyed["spec"]["containers"][0]["env"] = json!([{ "name": "AWS_SECRET_ACCESS_KEY", "value": "x" }]);
    let answer = post_review(&client, port, &review_of(&keyed)).await;
    assert!(answer["response"]["patch"].is_string(), "{answer}");
    let warnings = answer["response"]["warnings"].to_string();
    assert!(warnings.contains("ignored") && warnings.contains("AWS_SECRET_ACCESS_KEY"), "{answer}");
    assert!(!warnings.contains('\u{1b}'), "{answer}");

    // A record of its own beside its own `keyless` container: nothing of the pod's is removed.
    let mut own = pod("own-record", "billing", opted_in());
    own["metadata"]["annotations"] = json!({ "keyless.dev/injected": "{\"app\":[\"AWS_REGION\",\"MINE\"]}" });
    own["spec"]["containers"][0]["env"] =
        json!([{ "name": "MINE", "value": "1" }, { "name": "AWS_REGION", "value": "r" }]);
    own["spec"]["initContainers"] = json!([{ "name": "keyless", "image": "example/own:1", "restartPolicy": "Always" }]);
    create(&cluster, &own).await.unwrap_or_else(|e| panic!("{e}\n{}", context()));
    let stored = cluster.get_json(NAMESPACE, "pod", "own-record").await;
    assert_eq!(stored["spec"]["initContainers"][0]["image"], "example/own:1", "{stored}");
    let env = env_of(&stored["spec"]["containers"][0]);
    assert_eq!(
        (env.get("MINE").map(String::as_str), env.get("AWS_REGION").map(String::as_str)),
        (Some("1"), Some("r"))
    );

    // An annotation the sidecar would refuse at start: refused at admission, naming it.
    let refused = create(&cluster, &pod("gke", "gke", opted_in())).await.unwrap_err();
    assert!(refused.contains("iam.gke.io/gcp-service-account"), "{refused}");

    // The container's AWS_REGION is the region of both variables.
    let stored = cluster.get_json(NAMESPACE, "pod", "stored").await;
    let env = env_of(&stored["spec"]["containers"][0]);
    assert_eq!((env["AWS_REGION"].as_str(), env["AWS_DEFAULT_REGION"].as_str()), ("mine", "mine"), "{stored}");
    webhook.process.stop().await;
    cluster.stop().await;
}

/// Reviews sent straight to the webhook's port: a ServiceAccount name Kubernetes would refuse is
/// never looked up, and 300 reviews naming ServiceAccounts that do not exist cost a bounded
/// number of API reads (a negative cache per name, a budget for all), counted by the API server.
#[cfg_attr(not(keyless_tools_kube), ignore = "needs kube-apiserver, etcd and kubectl: ./scripts/test (scripts/kube)")]
#[tokio::test]
async fn reviews_naming_unknown_service_accounts_cost_bounded_api_reads() {
    let cluster = Cluster::start_with(tools::need(kube::find_binaries())).await;
    cluster.create_namespace(NAMESPACE).await;
    let pki = WebhookPki::new();
    let port = free_port();
    let webhook = start_webhook(&cluster, &pki, "fail", port).await;
    let client = webhook_client(&pki);

    let answer = post_review(&client, port, &review_of(&pod("p", "../../../api/v1/secrets", opted_in()))).await;
    assert_eq!(answer["response"]["allowed"], false, "{answer}");
    let message = answer["response"]["status"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("not a valid ServiceAccount name"), "{answer}");

    // The bounds: one read per name per 10 s; 10 at once, then one per 200 ms (accounts.rs).
    let before = service_account_gets(&cluster).await;
    let started = tokio::time::Instant::now();
    for _ in 0..300 {
        post_review(&client, port, &review_of(&pod("p", "ghost", opted_in()))).await;
    }
    let one_name = service_account_gets(&cluster).await - before;
    let bound = 1 + started.elapsed().as_secs() / 10;
    assert!(one_name <= bound, "300 reviews of one unknown ServiceAccount cost {one_name} GETs (bound {bound})");
    let before = service_account_gets(&cluster).await;
    let started = tokio::time::Instant::now();
    for i in 0..300 {
        post_review(&client, port, &review_of(&pod("p", &format!("ghost-{i}"), opted_in()))).await;
    }
    let many = service_account_gets(&cluster).await - before;
    let bound = 10 + 1 + (started.elapsed().as_millis() / 200) as u64;
    assert!(many <= bound, "300 reviews of unknown ServiceAccounts cost {many} GETs (bound {bound})");
    assert!(many < 300, "{many}");
    webhook.process.stop().await;
    cluster.stop().await;
}

/// `keyless webhook --mode node` (the chart's `mode: node`): an opted-in pod is stored with no
/// container of keyless's, its apps' env pointing at keyless node, and its own projected token for
/// keyless node's AWS endpoint; a pod of a ServiceAccount without identities is left alone.
#[tokio::test]
#[cfg_attr(
    not(keyless_tools_kube),
    ignore = "needs kube-apiserver, kubectl and etcd (target/kube/bin): ./scripts/kube, with Go >= 1.25"
)]
async fn in_node_mode_the_webhook_injects_the_apps_env_and_the_pods_token_only() {
    let cluster = cluster_with_billing_and_plain().await;
    let pki = WebhookPki::new();
    let port = free_port();
    let extra = ["--failure-policy", "fail", "--aws-region", "eu-west-1", "--mode", "node"];
    let webhook = start_webhook_with(&cluster, &pki, port, &extra).await;
    register(&cluster, &pki, port, "Fail").await;
    let probe = pod("probe", "billing", opted_in()).to_string();
    wait_until("the webhook's registration", STARTUP_DEADLINE, || async {
        let admitted = cluster.create_dry_run(&probe).await;
        admitted.is_ok_and(|out| out.contains("keyless-node-token"))
    })
    .await;

    create(&cluster, &pod("node-mode", "billing", opted_in()))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", webhook.process.logs()));
    let stored = cluster.get_json(NAMESPACE, "pod", "node-mode").await;
    assert!(init_names(&stored).is_empty(), "no sidecar in node mode: {stored}");
    let app = &stored["spec"]["containers"][0];
    let env = env_of(app);
    assert_eq!(env["AWS_CONTAINER_CREDENTIALS_FULL_URI"], "http://169.254.170.23/v1/credentials", "{stored}");
    assert_eq!(env["AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"], "/var/run/secrets/keyless/node/token");
    assert!(!env.keys().any(|k| k.starts_with("KEYLESS_")), "{env:?}");
    let volumes = stored["spec"]["volumes"].as_array().unwrap();
    let token = volumes.iter().find(|v| v["name"] == "keyless-node-token").unwrap_or_else(|| panic!("{stored}"));
    assert_eq!(token["projected"]["sources"][0]["serviceAccountToken"]["audience"], "keyless.dev/node");
    assert!(!volumes.iter().any(|v| v["name"] == "keyless-tokens"), "no cloud token reaches the pod: {stored}");
    let mounts = app["volumeMounts"].as_array().unwrap();
    assert!(mounts.iter().any(|m| m["name"] == "keyless-node-token" && m["readOnly"] == true), "{stored}");

    create(&cluster, &pod("plain-node-mode", "plain", opted_in())).await.unwrap();
    let plain = cluster.get_json(NAMESPACE, "pod", "plain-node-mode").await;
    assert!(!plain.to_string().contains("keyless-node-token"), "{plain}");
    cluster.stop().await;
}
