//! `keyless node` against the harness's API server ([`crate::kube`]) and the emulator, as
//! tests/tests/node_agent.rs and keyless-bench's node-memory benchmark run it: ServiceAccounts
//! annotated for the emulator's identities, and the agent on loopback with the chart's flags, its
//! token services the emulator's.

use std::net::SocketAddr;
use std::path::Path;

use serde_json::Value;

use crate::emulate::EmulatorProcess;
use crate::kube::Cluster;
use crate::process::{Process, free_port};
use crate::wait::{STARTUP_DEADLINE, holds_within};

/// The identities the emulator's `n`-th ServiceAccount is annotated with: its first identities
/// for even `n`, its second for odd (`aws_role_arn` / `aws_second_role_arn`, ...).
pub fn identities(ids: &Value, n: usize) -> [String; 3] {
    let keys = if n.is_multiple_of(2) {
        ["aws_role_arn", "gcp_service_account", "azure_client_id"]
    } else {
        ["aws_second_role_arn", "gcp_second_service_account", "azure_second_client_id"]
    };
    keys.map(|k| ids[k].as_str().unwrap_or_else(|| panic!("the emulator names no {k}")).to_owned())
}

/// Creates ServiceAccount `account` of `namespace` with the annotations injection reads for an
/// AWS role, a Google service account and its workload identity provider, an Azure application
/// and tenant: the emulator's identities `[role, gcp, azure]` ([`identities`]).
pub async fn annotated_service_account(
    cluster: &Cluster,
    ids: &Value,
    namespace: &str,
    account: &str,
    [role, gcp, azure]: &[String; 3],
) {
    cluster.create_service_account(namespace, account).await;
    let id = |key: &str| ids[key].as_str().unwrap_or_else(|| panic!("the emulator names no {key}")).to_owned();
    let provider = format!(
        "projects/{}/locations/global/workloadIdentityPools/keyless-dev/providers/kubernetes",
        id("gcp_project_number")
    );
    let annotations = [
        format!("eks.amazonaws.com/role-arn={role}"),
        format!("iam.gke.io/gcp-service-account={gcp}"),
        format!("keyless.dev/gcp-workload-identity-provider={provider}"),
        format!("azure.workload.identity/client-id={azure}"),
        format!("azure.workload.identity/tenant-id={}", id("azure_tenant_id")),
    ];
    let mut args = vec!["annotate", "serviceaccount", account, "-n", namespace];
    args.extend(annotations.iter().map(String::as_str));
    cluster.kubectl_ok(&args).await;
}

/// A Pod object of `account` bound to `node` (no kubelet runs it: a test gives it a status).
pub fn pod_manifest(namespace: &str, node: &str, name: &str, account: &str, host_network: bool) -> Value {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": name, "namespace": namespace },
        "spec": {
            "nodeName": node,
            "serviceAccountName": account,
            "automountServiceAccountToken": false,
            "hostNetwork": host_network,
            "containers": [{ "name": "app", "image": "registry.invalid/app:1" }],
        },
    })
}

/// The status patch that makes a pod `phase` at `ip` (its `podIP` and `podIPs`).
pub fn pod_status(phase: &str, ip: &str) -> Value {
    serde_json::json!({ "status": { "phase": phase, "podIP": ip, "podIPs": [{ "ip": ip }] } })
}

/// `keyless node` serving `node` on loopback: the chart's flags, every provider's token service
/// the emulator's, the API server through `kubeconfig`; started and ready.
#[derive(Debug)]
pub struct NodeAgent {
    pub process: Process,
    /// Its credential listener (every cloud's routes).
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub state: tempfile::TempDir,
}

impl NodeAgent {
    /// Starts it with `extra` arguments and log filter `log`; panics with its log unless it
    /// turns ready within [`STARTUP_DEADLINE`].
    pub async fn start(emulator: &EmulatorProcess, node: &str, kubeconfig: &Path, log: &str, extra: &[&str]) -> Self {
        let state = tempfile::tempdir().expect("a state directory");
        let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let (listen_arg, admin_arg) = (listen.to_string(), admin.to_string());
        let ca = emulator.ca.to_str().expect("a UTF-8 path").to_owned();
        let upstream = emulator.url.as_str();
        let settings: Vec<String> = [
            ("KEYLESS_AWS__STS_ENDPOINT", upstream),
            ("KEYLESS_AWS__CA_FILE", ca.as_str()),
            ("KEYLESS_GCP__STS_ENDPOINT", upstream),
            ("KEYLESS_GCP__IAM_ENDPOINT", upstream),
            ("KEYLESS_GCP__CA_FILE", ca.as_str()),
            ("KEYLESS_AZURE__AUTHORITY_HOST", upstream),
            ("KEYLESS_AZURE__CA_FILE", ca.as_str()),
        ]
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
        let state_arg = state.path().to_str().expect("a UTF-8 path").to_owned();
        let mut args = vec![
            "node",
            "--node-name",
            node,
            "--aws-listen",
            &listen_arg,
            "--admin-listen",
            &admin_arg,
            "--state-dir",
            &state_arg,
            "--token-lifetime",
            "10m",
            "--aws-region",
            "us-east-1",
        ];
        for setting in &settings {
            args.extend(["--provider-setting", setting.as_str()]);
        }
        args.extend_from_slice(extra);
        let kubeconfig = kubeconfig.to_str().expect("a UTF-8 path");
        let process = Process::spawn(&args, &[("KUBECONFIG", kubeconfig), ("KEYLESS_LOG", log)]);
        let agent = Self { process, listen, admin, state };
        let ready = || async { crate::clients::status_of(&format!("http://{}/readyz", agent.admin)).await == 200 };
        if !holds_within(STARTUP_DEADLINE, ready).await {
            panic!("keyless node did not turn ready:\n{}", agent.process.logs());
        }
        agent
    }
}
