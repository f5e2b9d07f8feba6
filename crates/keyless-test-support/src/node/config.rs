//! The configuration files of the node's containerd, CNI network and kubelet, and why each
//! setting is what this machine kind needs.

use super::{PAUSE_IMAGE, PERSISTENT, POD_SUBNET, STATE};

pub(super) fn containerd_config() -> String {
    format!(
        r#"version = 2
root = "{PERSISTENT}/containerd"
state = "{STATE}/containerd"

[grpc]
  address = "{STATE}/containerd.sock"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  # Root here lacks CAP_SYS_RESOURCE: a sandbox's negative oom_score_adj would fail runc create.
  restrict_oom_score_adj = true
  # No AppArmor in this kernel.
  disable_apparmor = true
  # The pods' network namespaces under the node's state, not /run/netns: a leftover is found
  # (and unmounted) with the rest of the node's mounts.
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{STATE}/cni"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "/usr/sbin/runc"
        SystemdCgroup = false
"#
    )
}

/// The pod network: a bridge of its own with host-local addresses, the gateway on the bridge (the
/// pods' route to the node's address), no masquerading (no iptables rule anywhere).
pub(super) fn cni_config() -> String {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "keyless-test",
        "plugins": [
            {
                "type": "bridge",
                "bridge": "kpod0",
                "isGateway": true,
                "ipMasq": false,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{ "subnet": POD_SUBNET }]],
                    "routes": [{ "dst": "0.0.0.0/0" }],
                    "dataDir": format!("{STATE}/cni-ipam"),
                },
            },
            { "type": "loopback" },
        ],
    })
    .to_string()
}

pub(super) fn kubelet_config() -> String {
    format!(
        r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix://{STATE}/containerd.sock
cgroupDriver: cgroupfs
# This machine kind has cgroup v1 (hybrid); kubelet 1.35 refuses it unless told.
failCgroupV1: false
failSwapOn: false
# The kubelet's own iptables chains would drop traffic to 127/8 from other sources.
makeIPTablesUtilChains: false
readOnlyPort: 0
# Inside the namespace only: the API server reaches the kubelet (logs, exec) without a client
# certificate.
authentication:
  anonymous:
    enabled: true
  webhook:
    enabled: false
authorization:
  mode: AlwaysAllow
podLogsDir: {PERSISTENT}/pod-logs
resolvConf: ""
# A small test disk: never evict, never collect images.
evictionHard:
  memory.available: "1Mi"
  nodefs.available: "0%"
  nodefs.inodesFree: "0%"
  imagefs.available: "0%"
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
"#
    )
}
