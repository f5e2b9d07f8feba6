//! The readiness gate users can put workloads behind: once keyless node serves (its watches are
//! synced, its listeners bound), it labels its Node `LABEL=true` (`--ready-label`, the chart's
//! `node.readyLabel`). A workload whose pods require the label (node affinity) is scheduled only on
//! nodes where keyless node is ready: a pod on a fresh node cannot ask before the agent is there.
//! The label stays through keyless node's restarts (the kubelet brings it back within seconds, and
//! SDKs retry; pods already running are not moved either way).
//!
//! Off by default: it needs `patch` on nodes, beyond the least-privilege RBAC of node mode
//! (a ClusterRole cannot limit it to the agent's own node).

use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use tracing::{info, warn};

/// Labels `node` with `label=true`, retrying until it is done.
pub async fn label_when_ready(client: Client, node: String, label: String, ready: impl Fn() -> bool) {
    let api: Api<Node> = Api::all(client);
    let patch = serde_json::json!({ "metadata": { "labels": { label.as_str(): "true" } } });
    let mut delay = Duration::from_millis(200);
    loop {
        if ready() {
            match api.patch(&node, &PatchParams::default(), &Patch::Merge(&patch)).await {
                Ok(_) => {
                    info!(node = %node, label = %label, "keyless node is ready: labelled the node");
                    return;
                }
                Err(e) => {
                    warn!(node = %node, error = %e, "cannot label the node (keyless node needs patch on nodes for --ready-label)")
                }
            }
            delay = (delay * 2).min(Duration::from_secs(10));
        }
        tokio::time::sleep(delay).await;
    }
}
