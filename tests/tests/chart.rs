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
fn the_chart_lints_strictly_clean() {
    let Some(helm_bin) = tools::helm() else { return };
    let chart = chart();
    let (ok, text) = helm(&helm_bin, &["lint", "--strict", chart.to_str().expect("utf-8 path")]);
    assert!(ok && text.contains("0 chart(s) failed"), "helm lint --strict:\n{text}");
}

#[test]
fn template_renders_the_webhook_with_a_generated_ca_by_default() {
    let Some(helm_bin) = tools::helm() else { return };
    let out = template(&helm_bin, &[]);
    for expected in [
        "kind: Deployment",
        "replicas: 2",
        "kind: PodDisruptionBudget",
        "podAntiAffinity:",
        "kind: Service",
        "kind: MutatingWebhookConfiguration",
        "failurePolicy: Fail",
        "reinvocationPolicy: IfNeeded",
        "sideEffects: None",
        "kind: Secret",
        "caBundle: ",
        "- --failure-policy=fail",
        "- --max-concurrent-reviews=4",
        "- --image=ghcr.io/keyless-dev/keyless:0.1.0",
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
fn template_uses_cert_manager_when_its_api_is_installed() {
    let Some(helm_bin) = tools::helm() else { return };
    let out = template(&helm_bin, &["--api-versions", "cert-manager.io/v1", "--set", "failurePolicy=Ignore"]);
    assert!(
        out.contains("kind: Certificate")
            && out.contains("cert-manager.io/inject-ca-from: keyless-system/keyless-webhook"),
        "{out}"
    );
    assert!(!out.contains("caBundle: "), "cert-manager injects the CA");
    assert!(out.contains("failurePolicy: Ignore") && out.contains("- --failure-policy=ignore"), "{out}");
}

#[test]
fn template_refuses_an_unknown_tls_source() {
    let Some(helm_bin) = tools::helm() else { return };
    let chart = chart();
    let (ok, text) =
        helm(&helm_bin, &["template", "k", chart.to_str().expect("utf-8 path"), "--set", "tls.source=vault"]);
    assert!(!ok && text.contains("tls.source must be auto, certManager or generated"), "{text}");
}
