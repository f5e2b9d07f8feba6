//! The Helm chart (charts/keyless): `helm lint --strict` clean, and `helm template` renders what
//! docs/injection.md promises, with a generated CA or with cert-manager.

use std::path::{Path, PathBuf};
use std::process::Command;

use keyless_test_support::binary::workspace_root;
use keyless_test_support::tools;

fn chart() -> PathBuf {
    workspace_root().join("charts/keyless")
}

fn helm(helm: &Path, args: &[&str]) -> (bool, String) {
    let output = Command::new(helm).args(args).output().expect("runs helm");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

fn template(helm_bin: &Path, extra: &[&str]) -> String {
    let chart = chart();
    let mut args = vec!["template", "keyless", chart.to_str().expect("utf-8 path"), "--namespace", "keyless-system"];
    args.extend_from_slice(extra);
    let (ok, text) = helm(helm_bin, &args);
    assert!(ok, "helm template failed:\n{text}");
    text
}

#[test]
#[cfg_attr(not(keyless_tools_helm), ignore = "needs helm (target/tools/bin) or Go to build it: ./scripts/helm")]
fn the_chart_lints_strictly_clean() {
    let helm_bin = tools::need(tools::find_helm());
    let chart = chart();
    let (ok, text) = helm(&helm_bin, &["lint", "--strict", chart.to_str().expect("utf-8 path")]);
    assert!(ok && text.contains("0 chart(s) failed"), "helm lint --strict:\n{text}");
}

#[test]
#[cfg_attr(not(keyless_tools_helm), ignore = "needs helm (target/tools/bin) or Go to build it: ./scripts/helm")]
fn template_renders_the_webhook_with_a_generated_ca_by_default() {
    let helm_bin = tools::need(tools::find_helm());
    let out = template(&helm_bin, &[]);
    for expected in [
        "kind: Deployment",
        "replicas: 2",
        "kind: PodDisruptionBudget",
        "podAntiAffinity:",
        "kind: Service",
        "kind: MutatingWebhookConfiguration",
        "failurePolicy: \"Fail\"",
        "reinvocationPolicy: IfNeeded",
        "sideEffects: None",
        "kind: Secret",
        "caBundle: ",
        "- \"--failure-policy=fail\"",
        "- \"--max-concurrent-reviews=4\"",
        "- \"--image=ghcr.io/keyless-dev/keyless:0.1.0\"",
        "kind: NetworkPolicy",
        "resources: [\"serviceaccounts\"]",
        "verbs: [\"get\", \"list\", \"watch\"]",
    ] {
        assert!(out.contains(expected), "{expected:?} missing from:\n{out}");
    }
    assert!(!out.contains("cert-manager.io"), "no cert-manager objects without cert-manager");
    assert!(
        out.contains("- keyless-system\n") && out.contains("- kube-system\n"),
        "own namespace and kube-system excluded"
    );
}

#[test]
#[cfg_attr(not(keyless_tools_helm), ignore = "needs helm (target/tools/bin) or Go to build it: ./scripts/helm")]
fn template_uses_cert_manager_when_its_api_is_installed() {
    let helm_bin = tools::need(tools::find_helm());
    let out = template(&helm_bin, &["--api-versions", "cert-manager.io/v1", "--set", "failurePolicy=Ignore"]);
    assert!(
        out.contains("kind: Certificate")
            && out.contains("cert-manager.io/inject-ca-from: keyless-system/keyless-webhook"),
        "{out}"
    );
    assert!(!out.contains("caBundle: "), "cert-manager injects the CA");
    assert!(out.contains("failurePolicy: \"Ignore\"") && out.contains("- \"--failure-policy=ignore\""), "{out}");
}

#[test]
#[cfg_attr(not(keyless_tools_helm), ignore = "needs helm (target/tools/bin) or Go to build it: ./scripts/helm")]
fn template_refuses_an_unknown_tls_source() {
    let helm_bin = tools::need(tools::find_helm());
    let chart = chart();
    let (ok, text) =
        helm(&helm_bin, &["template", "k", chart.to_str().expect("utf-8 path"), "--set", "tls.source=vault"]);
    assert!(!ok && text.contains("tls.source must be auto, certManager or generated"), "{text}");
}

/// The rendered documents of `helm template` with `values` (a values file: no `--set` escaping).
fn rendered(helm_bin: &Path, values: &str) -> Vec<yaml_serde::Value> {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let file = dir.path().join("values.yaml");
    std::fs::write(&file, values).expect("writes the values");
    let out = template(helm_bin, &["--values", file.to_str().expect("utf-8 path")]);
    let mut documents = Vec::new();
    for document in out.split("\n---\n") {
        let value: yaml_serde::Value =
            yaml_serde::from_str(document).unwrap_or_else(|e| panic!("helm rendered invalid YAML: {e}\n{document}"));
        if !value.is_null() {
            documents.push(value);
        }
    }
    documents
}

fn of_kind<'a>(documents: &'a [yaml_serde::Value], kind: &str) -> Vec<&'a yaml_serde::Value> {
    documents.iter().filter(|d| d["kind"].as_str() == Some(kind)).collect()
}

/// A value with ` #` (a YAML comment when unquoted) or `: ` (a mapping) reaches the webhook as it
/// is, and the Deployment stays valid.
#[test]
#[cfg_attr(not(keyless_tools_helm), ignore = "needs helm (target/tools/bin) or Go to build it: ./scripts/helm")]
fn values_with_yaml_syntax_reach_the_webhook_as_given() {
    let helm_bin = tools::need(tools::find_helm());
    let values = "sidecar:\n  env:\n    HTTPS_PROXY: 'http://proxy:3128 #c'\n    NO_PROXY: 'a: b'\naws:\n  region: 'eu-west-1 #x'\n";
    let documents = rendered(&helm_bin, values);
    let deployment = of_kind(&documents, "Deployment");
    let args: Vec<&str> = deployment[0]["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_sequence()
        .expect("args is a list")
        .iter()
        .map(|a| a.as_str().expect("every argument is a string"))
        .collect();
    for expected in
        ["--sidecar-env=HTTPS_PROXY=http://proxy:3128 #c", "--sidecar-env=NO_PROXY=a: b", "--aws-region=eu-west-1 #x"]
    {
        assert!(args.contains(&expected), "{expected:?} not in {args:?}");
    }
}

/// On by default; the admission port admits only the configured peers (the API server), and a
/// value turns it off.
#[test]
#[cfg_attr(not(keyless_tools_helm), ignore = "needs helm (target/tools/bin) or Go to build it: ./scripts/helm")]
fn a_network_policy_admits_only_the_api_server_to_the_admission_port() {
    let helm_bin = tools::need(tools::find_helm());
    let peers = "networkPolicy:\n  apiServer:\n    - ipBlock:\n        cidr: 10.0.0.0/28\n";
    let documents = rendered(&helm_bin, peers);
    let policies = of_kind(&documents, "NetworkPolicy");
    assert_eq!(policies.len(), 1, "{documents:?}");
    let spec = &policies[0]["spec"];
    assert_eq!(spec["podSelector"]["matchLabels"]["app.kubernetes.io/name"].as_str(), Some("keyless-webhook"));
    let ingress = spec["ingress"].as_sequence().expect("ingress rules");
    let https = ingress.iter().find(|r| r["ports"][0]["port"].as_str() == Some("https")).expect("the admission port");
    let from = https["from"].as_sequence().expect("peers");
    assert_eq!(from.len(), 1);
    assert_eq!(from[0]["ipBlock"]["cidr"].as_str(), Some("10.0.0.0/28"));
    // Without a cluster to look the API server up in, the documented fallback.
    let documents = rendered(&helm_bin, "");
    let https = &of_kind(&documents, "NetworkPolicy")[0]["spec"]["ingress"][0];
    assert_eq!(https["from"][0]["ipBlock"]["cidr"].as_str(), Some("0.0.0.0/0"));
    let documents = rendered(&helm_bin, "networkPolicy:\n  enabled: false\n");
    assert!(of_kind(&documents, "NetworkPolicy").is_empty());
}

/// `sidecar.adminOnLoopback` reaches the webhook as the flag the keyless binary takes (the sidecar
/// it injects then keeps its admin listener on loopback, probed by exec probes: keyless's own
/// tests), is off by default, and refuses to render with a PodMonitor of the sidecars, which would
/// scrape a port the sidecars no longer have.
#[test]
#[cfg_attr(not(keyless_tools_helm), ignore = "needs helm (target/tools/bin) or Go to build it: ./scripts/helm")]
fn the_hardened_admin_listener_is_one_value_and_excludes_scraping_the_sidecars() {
    let helm_bin = tools::need(tools::find_helm());
    let args = |values: &str| -> Vec<String> {
        let documents = rendered(&helm_bin, values);
        let deployment = of_kind(&documents, "Deployment");
        deployment[0]["spec"]["template"]["spec"]["containers"][0]["args"]
            .as_sequence()
            .expect("args is a list")
            .iter()
            .map(|a| a.as_str().expect("a string").to_owned())
            .collect()
    };
    const FLAG: &str = "--sidecar-admin-on-loopback";
    assert!(!args("{}\n").iter().any(|a| a == FLAG));
    assert!(args("sidecar:\n  adminOnLoopback: true\n").iter().any(|a| a == FLAG));
    let help = Command::new(keyless_test_support::binary::keyless_bin())
        .args(["webhook", "--help"])
        .output()
        .expect("runs keyless");
    assert!(String::from_utf8_lossy(&help.stdout).contains(FLAG), "keyless webhook takes no {FLAG}");

    let chart = chart();
    let (ok, text) = helm(
        &helm_bin,
        &[
            "template",
            "k",
            chart.to_str().expect("utf-8 path"),
            "--set",
            "sidecar.adminOnLoopback=true",
            "--set",
            "monitoring.podMonitor.enabled=true",
        ],
    );
    assert!(!ok && text.contains("sidecar.adminOnLoopback removes"), "{text}");
}

/// The documents of `helm template` with `--set` pairs.
fn rendered_with(helm_bin: &Path, set: &[&str]) -> Vec<yaml_serde::Value> {
    let mut extra = Vec::new();
    for pair in set {
        extra.extend(["--set", pair]);
    }
    let out = template(helm_bin, &extra);
    out.split("\n---\n")
        .map(|d| yaml_serde::from_str::<yaml_serde::Value>(d).unwrap_or_else(|e| panic!("invalid YAML: {e}\n{d}")))
        .filter(|d| !d.is_null())
        .collect()
}

fn strings(value: &yaml_serde::Value) -> Vec<&str> {
    value.as_sequence().map(|s| s.iter().filter_map(yaml_serde::Value::as_str).collect()).unwrap_or_default()
}

/// `mode: node`: keyless node as a hostNetwork DaemonSet with its node's name from the downward
/// API, one capability per container (NET_ADMIN for the address setup, NET_BIND_SERVICE to bind
/// port 80), the least-privilege RBAC, and the webhook injecting the apps' env only.
#[test]
#[cfg_attr(not(keyless_tools_helm), ignore = "needs helm (target/tools/bin) or Go to build it: ./scripts/helm")]
fn node_mode_renders_the_daemonset_its_least_privilege_rbac_and_env_only_injection() {
    let helm_bin = tools::need(tools::find_helm());
    let sidecar = rendered_with(&helm_bin, &[]);
    assert!(of_kind(&sidecar, "DaemonSet").is_empty(), "no node agent in sidecar mode");

    let documents = rendered_with(&helm_bin, &["mode=node", "aws.region=eu-west-1"]);
    let daemonsets = of_kind(&documents, "DaemonSet");
    assert_eq!(daemonsets.len(), 1);
    let spec = &daemonsets[0]["spec"]["template"]["spec"];
    assert_eq!(spec["hostNetwork"].as_bool(), Some(true));
    // An update starts the new agent beside the old one (they share the addresses): no host port
    // may stand in the way.
    let update = &daemonsets[0]["spec"]["updateStrategy"]["rollingUpdate"];
    assert_eq!((update["maxSurge"].as_i64(), update["maxUnavailable"].as_i64()), (Some(1), Some(0)));
    assert!(spec["containers"][0].get("ports").is_none(), "a port on the host network is a host port");
    let probe = strings(&spec["containers"][0]["readinessProbe"]["exec"]["command"]);
    assert!(probe.contains(&"--check-ready"), "readiness from the agent's own state, not the shared port: {probe:?}");
    assert_eq!(spec["serviceAccountName"].as_str(), Some("keyless-node"));
    let main = &spec["containers"][0];
    let args = strings(&main["args"]);
    for expected in
        ["node", "--aws-listen=169.254.170.23:80", "--state-dir=/run/keyless-node", "--aws-region=eu-west-1"]
    {
        assert!(args.contains(&expected), "{expected:?} not in {args:?}");
    }
    let node_name = main["env"]
        .as_sequence()
        .expect("rendered")
        .iter()
        .find(|e| e["name"].as_str() == Some("NODE_NAME"))
        .expect("rendered");
    assert_eq!(node_name["valueFrom"]["fieldRef"]["fieldPath"].as_str(), Some("spec.nodeName"));
    let context = &main["securityContext"];
    assert_eq!(strings(&context["capabilities"]["drop"]), ["ALL"]);
    assert_eq!(strings(&context["capabilities"]["add"]), ["NET_BIND_SERVICE"]);
    assert_eq!(context["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert_eq!(context["readOnlyRootFilesystem"].as_bool(), Some(true));
    let init = &spec["initContainers"][0];
    assert_eq!(strings(&init["securityContext"]["capabilities"]["add"]), ["NET_ADMIN"]);
    assert!(strings(&init["args"]).contains(&"--setup-only"));
    let state = spec["volumes"]
        .as_sequence()
        .expect("rendered")
        .iter()
        .find(|v| v["name"].as_str() == Some("state"))
        .expect("rendered");
    assert_eq!(state["emptyDir"]["medium"].as_str(), Some("Memory"), "tokens never on the node's disk");

    let role = of_kind(&documents, "ClusterRole")
        .into_iter()
        .find(|r| r["metadata"]["name"].as_str() == Some("keyless-node"))
        .expect("rendered");
    let rules: Vec<(Vec<&str>, Vec<&str>)> = role["rules"]
        .as_sequence()
        .expect("rendered")
        .iter()
        .map(|r| (strings(&r["resources"]), strings(&r["verbs"])))
        .collect();
    assert_eq!(
        rules,
        [
            (vec!["serviceaccounts/token"], vec!["create"]),
            (vec!["pods"], vec!["get", "list", "watch"]),
            (vec!["serviceaccounts"], vec!["get", "list", "watch"]),
        ],
        "exactly the least privilege of docs: nothing else"
    );

    let webhook = of_kind(&documents, "Deployment");
    let webhook_args = strings(&webhook[0]["spec"]["template"]["spec"]["containers"][0]["args"]);
    for expected in
        ["--mode=node", "--node-aws-address=169.254.170.23:80", "--node-authorization-audience=keyless.dev/node"]
    {
        assert!(webhook_args.contains(&expected), "{expected:?} not in {webhook_args:?}");
    }
}

/// The readiness gate adds exactly what it needs (its node's label: get and patch nodes), and
/// only when asked for; addresses of their own for Google and Azure reach both the agent and the
/// injection; a wrong mode and the clouds' own metadata address are refused.
#[test]
#[cfg_attr(not(keyless_tools_helm), ignore = "needs helm (target/tools/bin) or Go to build it: ./scripts/helm")]
fn node_mode_options_render_and_mistakes_are_refused() {
    let helm_bin = tools::need(tools::find_helm());
    let set = [
        "mode=node",
        "node.readyLabel=keyless.dev/node-ready",
        "node.gcpAddress=169.254.170.24",
        "node.azureAddress=fd00:ec2::24",
    ];
    let documents = rendered_with(&helm_bin, &set);
    let role = of_kind(&documents, "ClusterRole")
        .into_iter()
        .find(|r| r["metadata"]["name"].as_str() == Some("keyless-node"))
        .expect("rendered");
    let last = role["rules"].as_sequence().expect("rendered").last().expect("rendered");
    assert_eq!((strings(&last["resources"]), strings(&last["verbs"])), (vec!["nodes"], vec!["get", "patch"]));
    let args = strings(&of_kind(&documents, "DaemonSet")[0]["spec"]["template"]["spec"]["containers"][0]["args"]);
    for expected in
        ["--ready-label=keyless.dev/node-ready", "--gcp-listen=169.254.170.24:80", "--azure-listen=[fd00:ec2::24]:80"]
    {
        assert!(args.contains(&expected), "{expected:?} not in {args:?}");
    }
    let webhook_args =
        strings(&of_kind(&documents, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["args"]);
    assert!(webhook_args.contains(&"--node-gcp-address=169.254.170.24:80"), "{webhook_args:?}");

    let chart = chart();
    let chart = chart.to_str().expect("utf-8 path");
    let (ok, text) = helm(&helm_bin, &["template", "k", chart, "--set", "mode=daemon"]);
    assert!(!ok && text.contains("mode must be sidecar or node"), "{text}");
    let (ok, text) =
        helm(&helm_bin, &["template", "k", chart, "--set", "mode=node", "--set", "node.gcpAddress=169.254.169.254"]);
    assert!(!ok && text.contains("169.254.169.254 is a cloud node's own metadata server"), "{text}");
    let take_over = ["mode=node", "node.azureAddress=169.254.169.254", "node.takeOverMetadataServerAddress=true"];
    let documents = rendered_with(&helm_bin, &take_over);
    let args = strings(&of_kind(&documents, "DaemonSet")[0]["spec"]["template"]["spec"]["containers"][0]["args"]);
    assert!(args.contains(&"--azure-listen=169.254.169.254:80"), "explicitly configured: {args:?}");
    let (ok, text) =
        helm(&helm_bin, &["lint", "--strict", chart, "--set", "mode=node", "--set", "node.readyLabel=x/ready"]);
    assert!(ok && text.contains("0 chart(s) failed"), "helm lint --strict in node mode:\n{text}");
}
