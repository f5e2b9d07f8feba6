//! keyless in real pods: a kubelet and containerd (keyless-test-support's node.rs) run the
//! example manifests, with the sidecar image `scripts/image` builds and the static Go SDK clients
//! of `tests/go` as the apps; the emulator runs in the node's network namespace, where the pods
//! reach it. Without root, containerd, the CNI plugins, podman or the kubelet the tests are
//! reported ignored (cfg `keyless_tools_kubelet`), and fail under `CI=true` saying what is missing.
//!
//! One node serves every scenario (one node per machine; starting one costs seconds, and the
//! token rotation takes eight minutes of the kubelet's own clock): the rotation runs beside the
//! others instead of after them.
//!
//! What differs from `kubectl apply -f examples/kubernetes/aws.yaml` on a real cluster, and why:
//! the images (no registry: the local builds), the app's command (the Go client instead of the
//! Python example; the image has no Python), the identities (the emulator trusts one service
//! account, one role, one Google service account and one Entra application), and the token
//! services' endpoints and their CA (the emulator's), added to the example's own ConfigMap. For
//! Azure, the app gets the App Service endpoint (`IDENTITY_ENDPOINT`, `IDENTITY_HEADER`) instead
//! of `AZURE_POD_IDENTITY_AUTHORITY_HOST`: Go's azidentity (v1.15, MSAL Go v1.10) ignores that
//! variable and asks 169.254.169.254, which this test found (the Python app reads it).
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::{Duration, SystemTime};

use keyless_test_support::binary::workspace_root;
use keyless_test_support::clock::{parse_rfc3339_utc, wall_clock};
use keyless_test_support::jwt::Jwks;
use keyless_test_support::node::{self, APPS_IMAGE, Node, NodeImages, NodeWithEmulator};
use keyless_test_support::tools::need;
use keyless_test_support::wait::holds_within;
use keyless_test_support::{clients, metrics, podman};
use serde_json::{Value, json};

/// The sidecar image as `scripts/image` tags it.
const KEYLESS_IMAGE: &str = "localhost/keyless:dev";
/// How long a pod may take to run to where a scenario needs it.
const POD_DEADLINE: Duration = Duration::from_secs(180);
/// What the emulator's STS waits before answering while the AWS example starts: keyless turns
/// ready that much after it started, and the app must start after that.
const STS_LATENCY: Duration = Duration::from_secs(3);
/// The projected token's lifetime in the rotation scenario; the kubelet rewrites it after 80%.
const SHORT_TOKEN_SECONDS: u64 = 600;
/// The audience the Google example's Go client asks an ID token for.
const ID_TOKEN_AUDIENCE: &str = "https://keyless.test/node-pods";
/// The App Service endpoint's secret in the Azure example (a test's: it sits in the ConfigMap).
const AZURE_IDENTITY_HEADER: &str = "keyless-node-test-identity-header";
/// The resource the Azure example's Go client asks a token for.
const AZURE_RESOURCE: &str = "https://management.azure.com";

/// The node, the emulator in its namespace trusting the cluster's issuer, and the dev identities.
type Setting = NodeWithEmulator;

#[cfg_attr(
    not(keyless_tools_kubelet),
    ignore = "needs root, containerd, runc, the CNI plugins, iptables, podman, go and the node binaries: ./scripts/test"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_examples_run_as_real_pods_with_the_keyless_sidecar() {
    let podman = need(podman::find_podman());
    let images = async { [NodeImages::pause().await, NodeImages::apps().await, NodeImages::keyless(&podman).await] };
    let setting = Setting::start(images).await;
    let subject = setting.ids["subject"].as_str().unwrap();
    let (namespace, name) = subject.strip_prefix("system:serviceaccount:").unwrap().split_once(':').unwrap();
    assert_eq!(namespace, "default", "the examples run in the default namespace");
    setting.node.cluster.create_service_account(namespace, name).await;

    aws_example_runs_as_written(&setting).await;
    // The kubelet's rotation takes minutes: the other scenarios run meanwhile.
    tokio::join!(the_kubelets_token_rotation_is_picked_up(&setting), async {
        the_security_context_holds_under_the_real_runtime_and_deletion_stops_the_app_first(&setting).await;
        gcp_and_azure_examples_run_as_written(&setting).await;
    });
    setting.node.stop().await;
}

/// The harness's own promise: a pod runs on the node, and the machine's own network namespace
/// gains no address, link or iptables rule of the node's meanwhile; once the node is stopped no
/// namespace, mount, cgroup or process of it is left.
#[cfg_attr(
    not(keyless_tools_kubelet),
    ignore = "needs root, containerd, runc, the CNI plugins, iptables, podman, go and the node binaries: ./scripts/test"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_runs_pods_inside_its_own_network_namespace_and_leaves_nothing_behind() {
    let node = Node::start_with_images(async { [NodeImages::apps().await] }).await;
    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": "waits", "namespace": "default" },
        "spec": {
            "automountServiceAccountToken": false,
            "containers": [{ "name": "app", "image": APPS_IMAGE, "command": ["/usr/local/bin/wait"] }],
        },
    });
    let created = node.cluster.kubectl_with_input(&["create", "-f", "-"], Some(&pod.to_string())).await;
    assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));
    let ready = holds_within(POD_DEADLINE, || async {
        node.cluster.kubectl(&["wait", "--for=condition=Ready", "pod/waits", "--timeout=5s"]).await.status.success()
    })
    .await;
    assert!(ready, "the pod did not turn ready:\n{}", node.logs_tail(40));
    let pod = node.cluster.get_json("default", "pod", "waits").await;
    let ip = pod["status"]["podIP"].as_str().unwrap();
    assert!(ip.starts_with("10.201.0."), "the pod's address is on the node's pod network: {pod}");
    assert_eq!(pod["spec"]["nodeName"], node::NODE_NAME, "the scheduler bound it to the node");
    let netns = node.netns.clone();
    node::assert_machine_holds_nothing_of_a_node();
    node.stop().await;
    // Another test's node may start as soon as this one released the lock: checked under it.
    let _lock = node::lock_machine().await;
    node::assert_machine_holds_nothing_of_a_node();
    assert!(!Path::new("/run/netns").join(&netns).exists(), "{netns} is left");
    let namespaces = std::fs::read_dir("/run/netns").unwrap().flatten();
    let left: Vec<String> = namespaces.map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    assert!(!left.iter().any(|n| n.starts_with("keyless-node-")), "namespaces of nodes are left: {left:?}");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let left: Vec<&str> = mounts.lines().filter(|l| l.contains("keyless-test-node")).collect();
    assert!(left.is_empty(), "mounts left: {left:#?}");
    assert!(!Path::new("/sys/fs/cgroup/pids/kubepods").exists(), "the kubepods cgroups are left");
    assert!(!Path::new("/run/keyless-test-node").exists(), "the node's state is left");
    let processes = std::fs::read_dir("/proc").unwrap().flatten().filter(|e| {
        std::fs::read(e.path().join("cmdline")).is_ok_and(|c| String::from_utf8_lossy(&c).contains("keyless-test-node"))
    });
    let processes: Vec<String> = processes.map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    assert!(processes.is_empty(), "processes of the node are left: {processes:?}");
}

/// `examples/kubernetes/aws.yaml` applied as written but for images, app command, identities and
/// the emulator's endpoint: the Job completes, the app printed credentials the emulated STS
/// accepts, the app started only once keyless was ready (its startup probe), keyless exited 0.
async fn aws_example_runs_as_written(setting: &Setting) {
    let cluster = &setting.node.cluster;
    let control = &setting.emulator.control;
    control.fault(json!({ "service": "aws-sts", "latency_ms": STS_LATENCY.as_millis() as u64 })).await;
    let manifest = example_manifest(setting, "aws");
    let applied = cluster.kubectl_with_input(&["apply", "-f", "-"], Some(&manifest)).await;
    assert!(applied.status.success(), "{}", String::from_utf8_lossy(&applied.stderr));
    let job = "keyless-example-aws";
    let done = wait_for(setting, &["wait", "--for=condition=complete", &format!("job/{job}"), "--timeout=5s"]).await;
    control.clear_faults().await;
    let pod = job_pod(setting, job).await;
    assert!(done, "the Job did not complete:\n{}", describe(setting, &pod).await);
    let pod_name = pod["metadata"]["name"].as_str().unwrap();

    let out = cluster.kubectl_ok(&["logs", pod_name, "-c", "app"]).await;
    let credentials: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    let arn = setting.emulator.caller_arn(&credentials).await;
    let role = setting.ids["aws_role_arn"].as_str().unwrap().rsplit('/').next().unwrap();
    assert!(arn.contains(&format!("assumed-role/{role}/")), "{arn}");

    let keyless = container_status(&pod, "initContainerStatuses", "keyless");
    let app = container_status(&pod, "containerStatuses", "app");
    let started = |status: &Value| -> SystemTime {
        parse_rfc3339_utc(status["state"]["terminated"]["startedAt"].as_str().unwrap()).unwrap()
    };
    // Timestamps have whole seconds: the app started at least the STS latency (less a second of
    // rounding) after keyless, which turned ready only once STS answered.
    let gap = started(&app).duration_since(started(&keyless)).unwrap_or_default();
    assert!(gap >= STS_LATENCY - Duration::from_secs(1), "the app started {gap:?} after keyless: not gated\n{pod}");
    assert_eq!(app["state"]["terminated"]["exitCode"], 0, "{app}");
    assert_eq!(keyless["state"]["terminated"]["exitCode"], 0, "keyless stopped after the app: {keyless}");
}

/// `examples/kubernetes/gcp.yaml` and `azure.yaml`, applied the same way: each Job completes, the
/// app's Google access token passes the emulated `tokeninfo`, its ID token and the Entra token
/// verify against the emulated clouds' keys, keyless exited 0 after the app.
async fn gcp_and_azure_examples_run_as_written(setting: &Setting) {
    let cluster = &setting.node.cluster;
    for cloud in ["gcp", "azure"] {
        let manifest = example_manifest(setting, cloud);
        let applied = cluster.kubectl_with_input(&["apply", "-f", "-"], Some(&manifest)).await;
        assert!(applied.status.success(), "{cloud}: {}", String::from_utf8_lossy(&applied.stderr));
    }
    let control = &setting.emulator.control;
    for cloud in ["gcp", "azure"] {
        let job = format!("keyless-example-{cloud}");
        let done =
            wait_for(setting, &["wait", "--for=condition=complete", &format!("job/{job}"), "--timeout=5s"]).await;
        let pod = job_pod(setting, &job).await;
        assert!(done, "{job} did not complete:\n{}", describe(setting, &pod).await);
        let pod_name = pod["metadata"]["name"].as_str().unwrap();
        let out = cluster.kubectl_ok(&["logs", pod_name, "-c", "app"]).await;
        let out: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
        if cloud == "gcp" {
            let account = setting.ids["gcp_service_account"].as_str().unwrap();
            assert_eq!(out["email"], account, "{out}");
            let access_token = out["access_token"].as_str().unwrap();
            let info = control.tokeninfo(access_token, "the pod's access token").await;
            assert_eq!(info["email"], account, "{info}");
            let jwks = Jwks::fetch(control.client(), &control.url("/oauth2/v3/certs")).await;
            let claims =
                jwks.verify(out["id_token"].as_str().unwrap(), ID_TOKEN_AUDIENCE, "https://accounts.google.com");
            assert_eq!(claims["email"], account, "{claims}");
        } else {
            let tenant = setting.ids["azure_tenant_id"].as_str().unwrap();
            let jwks = Jwks::fetch(control.client(), &control.url(&format!("/{tenant}/discovery/v2.0/keys"))).await;
            let claims = jwks.verify(
                out["token"].as_str().unwrap(),
                AZURE_RESOURCE,
                &format!("https://sts.windows.net/{tenant}/"),
            );
            assert_eq!(claims["appid"], setting.ids["azure_client_id"], "{claims}");
        }
        let keyless = container_status(&pod, "initContainerStatuses", "keyless");
        let app = container_status(&pod, "containerStatuses", "app");
        assert_eq!(app["state"]["terminated"]["exitCode"], 0, "{app}");
        assert_eq!(keyless["state"]["terminated"]["exitCode"], 0, "keyless stopped after the app: {keyless}");
    }
}

/// A long-running variant of the AWS example's pod (the app `wait`s for SIGTERM): keyless and
/// the app run as 65532 with no capabilities, no new privileges and a read-only root; the
/// authorization-token file is the app's user's alone. Then the pod is deleted: the app stops
/// first, keyless after it, exiting 0 within its grace period, and no request the app made before
/// its own SIGTERM failed (the app is the AWS Go client's `loop`: a request every 100 ms, each
/// recorded in a hostPath of the node's, read once the pod is gone).
async fn the_security_context_holds_under_the_real_runtime_and_deletion_stops_the_app_first(setting: &Setting) {
    let name = "keyless-security";
    let records = setting.node.shared_dir("security-records");
    let pod = run_long_pod_with(setting, name, None, Some(&records)).await;
    let keyless_id = container_id(&container_status(&pod, "initContainerStatuses", "keyless"));
    let app_id = container_id(&container_status(&pod, "containerStatuses", "app"));
    let tasks = setting.node.ctr(&["tasks", "list"]).await;
    let pid_of = |id: &str| -> u32 {
        let line = tasks.lines().find(|l| l.starts_with(id)).unwrap_or_else(|| panic!("no task {id}:\n{tasks}"));
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    let (keyless_pid, app_pid) = (pid_of(&keyless_id), pid_of(&app_id));
    for (what, pid) in [("keyless", keyless_pid), ("app", app_pid)] {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let field = |name: &str| {
            status.lines().find_map(|l| l.strip_prefix(&format!("{name}:"))).unwrap_or_default().trim().to_owned()
        };
        assert_eq!(field("Uid").split_whitespace().collect::<Vec<_>>(), ["65532"; 4], "{what}: {status}");
        assert_eq!(field("Gid").split_whitespace().collect::<Vec<_>>(), ["65532"; 4], "{what}: {status}");
        for caps in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
            assert_eq!(field(caps), "0000000000000000", "{what}: {caps}\n{status}");
        }
        assert_eq!(field("NoNewPrivs"), "1", "{what}: {status}");
        assert_eq!(field("Seccomp"), "2", "{what}: RuntimeDefault is a filter\n{status}");
        let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
        let root = mountinfo.lines().find(|l| l.split(' ').nth(4) == Some("/")).unwrap();
        let options = root.split(' ').nth(5).unwrap();
        assert!(options.split(',').any(|o| o == "ro"), "{what}: the root is not read-only: {root}");
    }
    // The file keyless writes and the app reads: the same file in both, mode 0600, uid 65532.
    let token_path = "run/keyless/aws-container-authorization-token";
    let in_keyless = Path::new(&format!("/proc/{keyless_pid}/root")).join(token_path);
    let in_app = Path::new(&format!("/proc/{app_pid}/root")).join(token_path);
    let meta = std::fs::metadata(&in_keyless).unwrap();
    use std::os::unix::fs::MetadataExt as _;
    assert_eq!((meta.uid(), meta.gid(), meta.mode() & 0o777), (65532, 65532, 0o600), "{}", in_keyless.display());
    assert_eq!(std::fs::read(&in_app).unwrap(), std::fs::read(&in_keyless).unwrap(), "the app sees keyless's file");

    // Deletion: containerd's task exits, in order.
    let mut events = tokio::process::Command::new("ctr")
        .args(["--address", "/run/keyless-test-node/containerd.sock", "--namespace", "k8s.io", "events"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let deleted_at = wall_clock();
    setting.node.cluster.kubectl_ok(&["delete", "pod", name, "--wait=true", "--timeout=90s"]).await;
    let _ = events.start_kill();
    let out = events.wait_with_output().await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let exits: Vec<Value> = text
        .lines()
        .filter(|l| l.contains("/tasks/exit"))
        .filter_map(|l| l.find('{').and_then(|i| serde_json::from_str(&l[i..]).ok()))
        .collect();
    let position = |id: &str| exits.iter().position(|e| e["container_id"] == id && e["id"] == id);
    let (app_exit, keyless_exit) = (position(&app_id), position(&keyless_id));
    let (Some(app_exit), Some(keyless_exit)) = (app_exit, keyless_exit) else {
        panic!("no exit of the app or of keyless among containerd's events:\n{text}");
    };
    assert!(app_exit < keyless_exit, "keyless stopped before the app:\n{text}");
    assert_eq!(exits[keyless_exit]["exit_status"].as_u64().unwrap_or(0), 0, "keyless's exit:\n{text}");
    // containerd's time has nanoseconds: its whole seconds, rounded down.
    let exited =
        exits[keyless_exit]["exited_at"].as_str().and_then(|t| parse_rfc3339_utc(&format!("{}Z", t.get(..19)?)));
    let exited = exited.unwrap_or_else(|| panic!("no exit time of keyless: {}", exits[keyless_exit]));
    let took = exited.duration_since(deleted_at).unwrap_or_default();
    assert!(took < Duration::from_secs(30), "keyless exited {took:?} after the deletion (grace period 30 s)");
    node::assert_no_request_failed_before_sigterm(&records.join(format!("{name}.jsonl")));
}

/// A pod whose projected token lives 600 s: the kubelet rewrites it after about 480 s; keyless
/// picks the new one up (its subject-token expiry metric moves to the new token's `exp`), and the
/// app still gets credentials from it afterwards.
async fn the_kubelets_token_rotation_is_picked_up(setting: &Setting) {
    let name = "keyless-rotation";
    let pod = run_long_pod(setting, name, Some(SHORT_TOKEN_SECONDS)).await;
    let ip = pod["status"]["podIP"].as_str().unwrap();
    let admin = setting.node.forward(format!("{ip}:9812").parse().unwrap()).await;
    let client = clients::loopback();
    let expiry = || async {
        let Ok(response) = client.get(format!("http://{admin}/metrics")).send().await else { return 0 };
        let text = response.text().await.unwrap_or_default();
        metrics::sum(&text, "keyless_subject_token_expiry_timestamp_seconds", &[])
    };
    let first = expiry().await;
    assert!(first > 0, "no subject-token expiry in keyless's metrics");
    // 80% of 600 s, and the kubelet's own sync period on top.
    let moved = holds_within(Duration::from_secs(SHORT_TOKEN_SECONDS), || async { expiry().await > first }).await;
    let second = expiry().await;
    assert!(moved, "the expiry stayed at {first} for {SHORT_TOKEN_SECONDS} s:\n{}", describe(setting, &pod).await);
    assert!(second >= first + 300, "the new token's expiry {second} is not a later token's (was {first})");
    let out = setting.node.cluster.kubectl_ok(&["exec", name, "-c", "app", "--", "/usr/local/bin/aws"]).await;
    let credentials: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    let arn = setting.emulator.caller_arn(&credentials).await;
    assert!(arn.contains("assumed-role/"), "{arn}");
    setting.node.cluster.kubectl_ok(&["delete", "pod", name, "--wait=false"]).await;
}

/// `examples/kubernetes/{cloud}.yaml` with what must differ here (the module's documentation):
/// each substitution names how often its text occurs, so a changed example fails loudly.
fn example_manifest(setting: &Setting, cloud: &str) -> String {
    let text = std::fs::read_to_string(workspace_root().join(format!("examples/kubernetes/{cloud}.yaml"))).unwrap();
    let ids = &setting.ids;
    let id = |name: &str| ids[name].as_str().unwrap().to_owned();
    let account = id("subject").rsplit(':').next().unwrap().to_owned();
    let url = &setting.emulator.inside_url;
    let ca_file = "ca_file = \"/etc/keyless/emulator-ca.pem\"";
    let ca: String = setting.emulator.ca_pem().lines().map(|l| format!("    {l}\n")).collect();
    let mut substitutions: Vec<(String, String, usize)> = vec![
        ("image: ghcr.io/keyless-dev/keyless:0.1.0".into(), format!("image: {KEYLESS_IMAGE}"), 1),
        ("image: ghcr.io/keyless-dev/keyless-examples:0.1.0".into(), format!("image: {APPS_IMAGE}"), 1),
        (format!("serviceAccountName: keyless-example-{cloud}"), format!("serviceAccountName: {account}"), 1),
        ("\ndata:\n".into(), format!("\ndata:\n  emulator-ca.pem: |\n{ca}"), 1),
    ];
    match cloud {
        "aws" => substitutions.extend([
            (r#"command: ["python", "/app/aws_app.py"]"#.into(), r#"command: ["/usr/local/bin/aws"]"#.into(), 1),
            ("arn:aws:iam::111122223333:role/keyless-example".into(), id("aws_role_arn"), 1),
            (
                "region = \"us-east-1\"\n".into(),
                format!("region = \"us-east-1\"\n    sts_endpoint = \"{url}\"\n    {ca_file}\n"),
                1,
            ),
        ]),
        "gcp" => substitutions.extend([
            (
                r#"command: ["python", "/app/gcp_app.py"]"#.into(),
                format!(r#"command: ["/usr/local/bin/gcp", "{ID_TOKEN_AUDIENCE}"]"#),
                1,
            ),
            ("keyless-example@my-project.iam.gserviceaccount.com".into(), id("gcp_service_account"), 1),
            (
                "//iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/keyless-example/providers/my-cluster".into(),
                ids["audiences"]["gcp"].as_str().unwrap().to_owned(),
                3,
            ),
            ("\"my-project\"".into(), format!("\"{}\"", id("gcp_project_id")), 2),
            (
                "project_number = \"123456789012\"\n".into(),
                format!(
                    "project_number = \"{}\"\n    sts_endpoint = \"{url}\"\n    iam_endpoint = \"{url}\"\n    {ca_file}\n",
                    id("gcp_project_number")
                ),
                1,
            ),
        ]),
        "azure" => substitutions.extend([
            (
                r#"command: ["python", "/app/azure_app.py"]"#.into(),
                format!(r#"command: ["/usr/local/bin/azure", "managed", "{AZURE_RESOURCE}/.default"]"#),
                1,
            ),
            ("\"00000000-0000-0000-0000-000000000000\"".into(), format!("\"{}\"", id("azure_tenant_id")), 1),
            (
                "client_id = \"11111111-1111-1111-1111-111111111111\"\n".into(),
                format!(
                    "client_id = \"{}\"\n    authority_host = \"{url}\"\n    {ca_file}\n    identity_header = \"{AZURE_IDENTITY_HEADER}\"\n",
                    id("azure_client_id")
                ),
                1,
            ),
            // Go's azidentity (MSAL Go) ignores AZURE_POD_IDENTITY_AUTHORITY_HOST and asks
            // 169.254.169.254: the Go app uses the App Service endpoint, as the example's comment
            // says for Rust (the secret in the ConfigMap: a test's only).
            (
                "- name: AZURE_POD_IDENTITY_AUTHORITY_HOST\n              value: \"http://127.0.0.1:9811\"\n".into(),
                format!(
                    "- name: IDENTITY_ENDPOINT\n              value: \"http://127.0.0.1:9811/msi/token\"\n            \
                     - name: IDENTITY_HEADER\n              value: \"{AZURE_IDENTITY_HEADER}\"\n"
                ),
                1,
            ),
        ]),
        other => panic!("no example for {other}"),
    }
    substitutions.iter().fold(text, |text, (from, to, count)| {
        assert_eq!(text.matches(from.as_str()).count(), *count, "{cloud}.yaml no longer has {count} of {from:?}");
        text.replace(from.as_str(), to)
    })
}

/// A bare pod from the AWS Job's template whose app waits for SIGTERM (a long-running app), the
/// token's lifetime `expiration_seconds` when given; its JSON once every container is ready.
async fn run_long_pod(setting: &Setting, name: &str, expiration_seconds: Option<u64>) -> Value {
    run_long_pod_with(setting, name, expiration_seconds, None).await
}

/// [`run_long_pod`], its app the AWS Go client's credential `loop` recording into
/// `records/NAME.jsonl` (a hostPath of the node's) when `records` is given.
async fn run_long_pod_with(
    setting: &Setting,
    name: &str,
    expiration_seconds: Option<u64>,
    records: Option<&Path>,
) -> Value {
    let cluster = &setting.node.cluster;
    let job = cluster.get_json("default", "job", "keyless-example-aws").await;
    let mut spec = job["spec"]["template"]["spec"].clone();
    spec["containers"][0]["command"] = json!(["/usr/local/bin/wait"]);
    if let Some(records) = records {
        spec["containers"][0]["command"] = json!(["/usr/local/bin/aws", "loop", format!("/records/{name}.jsonl")]);
        let mounts = spec["containers"][0]["volumeMounts"].as_array_mut().unwrap();
        mounts.push(json!({ "name": "records", "mountPath": "/records" }));
        let volume = json!({ "name": "records", "hostPath": { "path": records, "type": "Directory" } });
        spec["volumes"].as_array_mut().unwrap().push(volume);
    }
    if let Some(seconds) = expiration_seconds {
        let volumes = spec["volumes"].as_array_mut().unwrap();
        let tokens = volumes.iter_mut().find(|v| v["name"] == "tokens").unwrap();
        tokens["projected"]["sources"][0]["serviceAccountToken"]["expirationSeconds"] = json!(seconds);
    }
    let pod = json!({ "apiVersion": "v1", "kind": "Pod", "metadata": { "name": name, "namespace": "default" }, "spec": spec });
    let created = cluster.kubectl_with_input(&["create", "-f", "-"], Some(&pod.to_string())).await;
    assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));
    let ready = wait_for(setting, &["wait", "--for=condition=Ready", &format!("pod/{name}"), "--timeout=5s"]).await;
    let pod = cluster.get_json("default", "pod", name).await;
    assert!(ready, "{name} did not turn ready:\n{}", describe(setting, &pod).await);
    pod
}

/// `kubectl ARGS` (a `kubectl wait` with a short timeout) repeated until it succeeds or
/// [`POD_DEADLINE`] passes.
async fn wait_for(setting: &Setting, args: &[&str]) -> bool {
    holds_within(POD_DEADLINE, || async { setting.node.cluster.kubectl(args).await.status.success() }).await
}

/// The pod of Job `job`.
async fn job_pod(setting: &Setting, job: &str) -> Value {
    let selector = format!("batch.kubernetes.io/job-name={job}");
    let out = setting.node.cluster.kubectl_ok(&["get", "pods", "-n", "default", "-l", &selector, "-o", "json"]).await;
    let pods: Value = serde_json::from_str(&out).unwrap();
    pods["items"][0].clone()
}

fn container_status(pod: &Value, list: &str, name: &str) -> Value {
    let statuses = pod["status"][list].as_array().unwrap_or_else(|| panic!("no {list}: {pod}"));
    statuses.iter().find(|s| s["name"] == name).unwrap_or_else(|| panic!("no {name} in {list}: {pod}")).clone()
}

/// The containerd id of a container status (`containerd://ID`).
fn container_id(status: &Value) -> String {
    status["containerID"].as_str().unwrap().trim_start_matches("containerd://").to_owned()
}

/// What a failure shows: the pod, its containers' logs, the node's components' logs.
async fn describe(setting: &Setting, pod: &Value) -> String {
    let cluster = &setting.node.cluster;
    let name = pod["metadata"]["name"].as_str().unwrap_or_default();
    let mut out = format!("--- pod\n{pod:#}\n");
    for container in ["keyless", "app"] {
        let logs = cluster.kubectl(&["logs", name, "-c", container]).await;
        out.push_str(&format!("--- {container}\n{}\n", String::from_utf8_lossy(&logs.stdout)));
    }
    out.push_str(&format!("--- emulator\n{}\n", setting.emulator.process.logs()));
    out.push_str(&setting.node.logs_tail(30));
    out
}
