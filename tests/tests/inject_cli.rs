//! `keyless inject` as a pipeline stage (issue 29): the README's "Roll out" commands, read from the
//! README and run against a real API server; an opted-in workload that gets nothing fails the
//! command with nothing on stdout; `--from-cluster` reads ServiceAccounts with the kubeconfig;
//! stdin is read with `-f -`, no `-f`, or a bare `-`. Without the cluster's binaries the cluster
//! test is reported ignored (cfg `keyless_tools_kube`), and fails under `CI=true`.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Output, Stdio};

use keyless_test_support::binary::{keyless_bin, workspace_root};
use keyless_test_support::kube::{self, Cluster};
use keyless_test_support::tools::need;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt as _;

const ROLE: &str = "arn:aws:iam::111122223333:role/billing";

/// `keyless inject ARGS` with `input` on stdin and `env`.
async fn inject(args: &[&str], input: &str, env: &[(&str, &str)]) -> Output {
    let mut child = tokio::process::Command::new(keyless_bin())
        .arg("inject")
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.as_bytes()).await.unwrap();
    drop(stdin);
    child.wait_with_output().await.unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn deployment(name: &str, account: &str, labels: Value) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": { "name": name, "namespace": "default" },
        "spec": {
            "selector": { "matchLabels": { "app": name } },
            "template": {
                "metadata": { "labels": labels },
                "spec": { "serviceAccountName": account, "containers": [{ "name": "app", "image": "example/app:1" }] },
            },
        },
    })
}

fn account(name: &str, annotations: Value) -> Value {
    json!({ "apiVersion": "v1", "kind": "ServiceAccount", "metadata": { "name": name, "namespace": "default", "annotations": annotations } })
}

#[tokio::test]
async fn stdin_is_read_with_dash_f_dash_without_f_and_with_a_bare_dash() {
    let input = format!(
        "{}\n---\n{}",
        account("billing", json!({ "eks.amazonaws.com/role-arn": ROLE })),
        deployment("billing", "billing", json!({ "app": "billing", "keyless.dev/inject": "true" }))
    );
    for args in [&["-f", "-"][..], &[], &["-"]] {
        let out = inject(args, &input, &[]).await;
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        assert!(text(&out.stdout).contains("name: keyless\n"), "{args:?}: {}", text(&out.stdout));
    }
}

/// Opted in, but no identity: exit 1, one line naming the workload and the fix, nothing on stdout
/// (so `kubectl apply -f -` applies nothing); `--allow-uninjected` writes the documents. Workloads
/// not opted in are no error.
#[tokio::test]
async fn an_opted_in_workload_that_gets_nothing_fails_the_command_with_nothing_on_stdout() {
    let opted = deployment("billing", "billing", json!({ "app": "billing", "keyless.dev/inject": "true" }));
    let other = deployment("other", "billing", json!({ "app": "other" }));
    let input = format!("{opted}\n---\n{other}");
    let out = inject(&["-f", "-"], &input, &[]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "", "nothing on stdout");
    let stderr = text(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| l.contains("opted in but not injected")).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].contains("(Deployment billing)") && lines[0].contains("--from-cluster"), "{stderr}");

    let out = inject(&["-f", "-", "--allow-uninjected"], &input, &[]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("name: other"), "{}", text(&out.stdout));

    let out = inject(&["-f", "-"], &other.to_string(), &[]).await;
    assert!(out.status.success(), "not opted in is no error: {}", text(&out.stderr));
}

/// Names from the input reach stderr escaped: a workload or ServiceAccount name with an escape
/// sequence or a line break neither rewrites the terminal nor forges a line of its own.
#[tokio::test]
async fn names_from_the_input_are_escaped_on_stderr() {
    let name = "billing\u{1b}[2J\nkeyless inject: forged";
    let input = deployment(name, name, json!({ "app": "billing", "keyless.dev/inject": "true" })).to_string();
    let out = inject(&["-f", "-"], &input, &[]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(!stderr.contains('\u{1b}'), "{stderr:?}");
    assert!(stderr.contains("billing\\u{1b}[2J\\nkeyless inject: forged"), "{stderr:?}");
    assert!(stderr.lines().all(|l| !l.starts_with("keyless inject: forged")), "{stderr}");
}

/// 200 KB of `[`: refused with a clear error before the parser sees it (it took the parser 24-36 s
/// of CPU; docs/reliability.md has the measured times).
#[tokio::test]
async fn deeply_nested_input_is_refused_before_parsing() {
    let input = "[".repeat(200_000);
    let out = inject(&["-f", "-"], &input, &[]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("nested deeper than 100 levels"), "{}", text(&out.stderr));
}

/// The commands between `## Roll out to a cluster` and the next section, from the README's `sh`
/// blocks: one script per block.
fn roll_out_scripts() -> Vec<String> {
    let readme = std::fs::read_to_string(workspace_root().join("README.md")).unwrap();
    let start = readme.find("## Roll out to a cluster").expect("the README's Roll out section");
    let section = &readme[start..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |i| i + 3)];
    let mut scripts = Vec::new();
    let mut current: Option<String> = None;
    for line in section.lines() {
        match (&mut current, line.trim_end()) {
            (None, "```sh") => current = Some(String::new()),
            (Some(script), "```") => {
                scripts.push(std::mem::take(script));
                current = None;
            }
            (Some(script), line) => {
                script.push_str(line);
                script.push('\n');
            }
            (None, _) => {}
        }
    }
    scripts
}

/// Runs `script` with bash (`set -euo pipefail`), with kubectl, keyless and helm on the PATH and
/// the cluster's kubeconfig, in the workspace root (the README's paths are relative to it).
async fn run_script(cluster: &Cluster, script: &str, tools: &Path, home: &Path) -> Output {
    tokio::process::Command::new("bash")
        .args(["-c", &format!("set -euo pipefail\n{script}")])
        .current_dir(workspace_root())
        .env("PATH", format!("{}:{}", tools.display(), std::env::var("PATH").unwrap_or_default()))
        .env("KUBECONFIG", &cluster.kubeconfig)
        .env("HOME", home)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .unwrap()
}

/// The README's "Roll out" commands, as a new user runs them on a cluster holding a `billing`
/// Deployment and ServiceAccount: the webhook installed with helm, the
/// ServiceAccount annotated, the Deployment opted in, and the pipeline without a webhook,
/// `kubectl get deploy billing -o yaml | keyless inject ... | kubectl apply -f -`, stores the
/// injected template.
#[cfg_attr(
    not(all(keyless_tools_kube, keyless_tools_helm)),
    ignore = "needs kube-apiserver, etcd, kubectl and helm: ./scripts/test (scripts/kube, scripts/helm)"
)]
#[tokio::test]
async fn the_readmes_roll_out_commands_inject_a_deployment_on_a_real_api_server() {
    let scripts = roll_out_scripts();
    assert!(scripts.len() >= 2, "the Roll out section's sh blocks: {scripts:?}");
    assert!(scripts.iter().any(|s| s.contains("keyless inject")), "{scripts:?}");
    let binaries = need(kube::find_binaries());
    let cluster = Cluster::start_with(binaries.clone()).await;
    let tools = tempfile::tempdir().unwrap();
    let link = |target: &Path, name: &str| std::os::unix::fs::symlink(target, tools.path().join(name)).unwrap();
    link(&binaries.dir.join("kubectl"), "kubectl");
    link(&keyless_bin(), "keyless");
    link(&need(keyless_test_support::tools::find_helm()), "helm");
    let home = tempfile::tempdir().unwrap();
    let manifest = format!(
        "{}\n---\n{}",
        account("billing", json!({})),
        deployment("billing", "billing", json!({ "app": "billing" }))
    );
    let created = cluster.kubectl_with_input(&["create", "-f", "-"], Some(&manifest)).await;
    assert!(created.status.success(), "{}", text(&created.stderr));

    for script in &scripts {
        let out = run_script(&cluster, script, tools.path(), home.path()).await;
        assert!(out.status.success(), "{script}\n--- stdout\n{}\n--- stderr\n{}", text(&out.stdout), text(&out.stderr));
    }
    let stored = cluster.get_json("default", "deployment", "billing").await;
    let template = &stored["spec"]["template"];
    assert_eq!(template["metadata"]["labels"]["keyless.dev/inject"], "true", "{stored}");
    assert_eq!(template["spec"]["initContainers"][0]["name"], "keyless", "{stored}");
    let env = template["spec"]["initContainers"][0]["env"].as_array().unwrap();
    assert!(env.iter().any(|e| e["name"] == "KEYLESS_AWS__ROLE_ARN"), "{stored}");

    // A ServiceAccount in the input wins over the cluster's.
    let other_role = "arn:aws:iam::111122223333:role/from-input";
    let input = format!(
        "{}\n---\n{}",
        account("billing", json!({ "eks.amazonaws.com/role-arn": other_role })),
        deployment("billing", "billing", json!({ "app": "billing", "keyless.dev/inject": "true" }))
    );
    let kubeconfig = cluster.kubeconfig.to_str().unwrap();
    let out = inject(&["-f", "-", "--from-cluster"], &input, &[("KUBECONFIG", kubeconfig)]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains(other_role) && !text(&out.stdout).contains(ROLE), "{}", text(&out.stdout));

    // The same pipeline for a workload whose ServiceAccount has no identity: it fails and applies
    // nothing (the stored Deployment keeps its generation).
    let manifest = format!(
        "{}\n---\n{}",
        account("plain", json!({})),
        deployment("plain", "plain", json!({ "app": "plain", "keyless.dev/inject": "true" }))
    );
    let created = cluster.kubectl_with_input(&["create", "-f", "-"], Some(&manifest)).await;
    assert!(created.status.success(), "{}", text(&created.stderr));
    let pipeline = scripts.iter().flat_map(|s| s.lines()).find(|l| l.contains("| keyless inject")).unwrap();
    let out = run_script(&cluster, &pipeline.replace("billing", "plain"), tools.path(), home.path()).await;
    assert!(!out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("(Deployment plain)"), "{}", text(&out.stderr));
    let stored = cluster.get_json("default", "deployment", "plain").await;
    assert!(stored["spec"]["template"]["spec"]["initContainers"].is_null(), "{stored}");
    cluster.stop().await;
}
