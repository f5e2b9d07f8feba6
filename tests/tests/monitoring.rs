//! What operators watch: the metrics a live keyless exports, the chart's PrometheusRule (checked
//! and unit-tested by promtool, Prometheus's own tool, on series shaped like that live output) and
//! the Grafana dashboard, whose queries must name only metrics keyless exports.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use keyless_test_support::binary::{keyless_bin, workspace_root};
use keyless_test_support::emulate::EmulatorProcess;
use keyless_test_support::process::free_port;
use keyless_test_support::sidecar::{Sidecar, all_clouds_config};
use keyless_test_support::tools;
use keyless_test_support::wait::{STARTUP_DEADLINE, wait_until};
use keyless_test_support::webhook::{
    WebhookFiles, WebhookProcess, kubeconfig_of_no_api_server, pod_review, self_signed_pair,
};

/// A role the emulator's STS refuses (no trust for the dev subject): AccessDenied from the start.
const DENIED_ROLE: &str = "arn:aws:iam::123456789012:role/never-trusted";
/// Its `identity` label: a named role is its name and ARN.
const DENIED: &str = "denied (arn:aws:iam::123456789012:role/never-trusted)";

/// A sidecar with the three clouds' dev identities and one AWS role the cloud refuses.
async fn sidecar_with_a_refused_role(emulator: &EmulatorProcess) -> Sidecar {
    let token = |cloud: &str| format!("token_file = {:?}", emulator.token_file(cloud).to_str().unwrap());
    let mut config = all_clouds_config(emulator, &emulator.url, "", "info", &token).await;
    config.push_str(&format!("\n[[aws.roles]]\nname = \"denied\"\nrole_arn = \"{DENIED_ROLE}\"\n"));
    Sidecar::spawn(&config, &[])
}

/// The value of the sample `name{...}` whose labels contain every one of `labels`.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        let (set, value) = match rest.strip_prefix('{') {
            Some(rest) => rest.rsplit_once("} ")?,
            None => ("", rest.strip_prefix(' ')?),
        };
        let padded = format!(",{set},");
        labels.iter().all(|(k, v)| padded.contains(&format!(",{k}=\"{v}\","))).then(|| value.trim().parse().unwrap())
    })
}

/// The label set (`a="x",b="y"`) of the first sample of `name` whose labels contain `needle`.
fn labels_of(text: &str, name: &str, needle: &str) -> String {
    text.lines()
        .filter_map(|l| l.strip_prefix(name)?.strip_prefix('{')?.rsplit_once("} ").map(|(set, _)| set.to_owned()))
        .find(|set| set.contains(needle))
        .unwrap_or_else(|| panic!("no {name} sample with {needle} in:\n{text}"))
}

/// The body of the first 2xx answer of `url`, polled until [`STARTUP_DEADLINE`].
async fn first_answer(client: &reqwest::Client, url: &str) -> String {
    let deadline = tokio::time::Instant::now() + STARTUP_DEADLINE;
    loop {
        if let Ok(response) = client.get(url).send().await
            && response.status().is_success()
        {
            return response.text().await.unwrap();
        }
        assert!(tokio::time::Instant::now() < deadline, "{url} never answered");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// One AWS credential request, answered: the request and lookup families get series.
async fn credential_request(client: &reqwest::Client, sidecar: &Sidecar) {
    let answer = client
        .get(sidecar.url("/v1/credentials"))
        .header("Authorization", keyless_test_support::sidecar::CONTAINER_AUTHORIZATION)
        .send()
        .await
        .unwrap();
    assert!(answer.status().is_success(), "{}", answer.text().await.unwrap());
}

/// `/metrics` of `sidecar`, or nothing while it does not answer yet.
async fn scrape(sidecar: &Sidecar) -> String {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    match client.get(sidecar.admin_url("/metrics")).send().await {
        Ok(response) => response.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

#[allow(clippy::disallowed_methods)] // process_start_time_seconds is the kernel's clock
fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

#[tokio::test]
async fn every_configured_identity_has_a_readiness_series_from_start_with_build_and_process_metrics() {
    let emulator = EmulatorProcess::start().await;
    let ids = emulator.control.identities().await;
    let role = ids["aws_role_arn"].as_str().unwrap().to_owned();
    let sidecar = sidecar_with_a_refused_role(&emulator).await;
    // The first /metrics that answers already has every identity, before any exchange finished.
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let first = first_answer(&client, &sidecar.admin_url("/metrics")).await;
    for (provider, identity) in [
        ("aws", role.as_str()),
        ("aws", DENIED),
        ("gcp", ids["gcp_service_account"].as_str().unwrap()),
        ("azure", ids["azure_client_id"].as_str().unwrap()),
    ] {
        assert!(
            sample(&first, "keyless_identity_ready", &[("provider", provider), ("identity", identity)]).is_some(),
            "no keyless_identity_ready for {provider} {identity} in the first scrape:\n{first}"
        );
    }

    // The trusted identities turn ready; the refused one stays 0, with its failures counted.
    wait_until("the trusted identities to turn ready", STARTUP_DEADLINE, || async {
        let text = scrape(&sidecar).await;
        ["aws", "gcp", "azure"].iter().all(|p| {
            let ready =
                |identity: &str| sample(&text, "keyless_identity_ready", &[("provider", p), ("identity", identity)]);
            let identity = match *p {
                "aws" => role.clone(),
                "gcp" => ids["gcp_service_account"].as_str().unwrap().to_owned(),
                _ => ids["azure_client_id"].as_str().unwrap().to_owned(),
            };
            ready(&identity) == Some(1.0)
        })
    })
    .await;
    wait_until("the refused role's exchange to fail", STARTUP_DEADLINE, || async {
        let text = scrape(&sidecar).await;
        keyless_test_support::metrics::sum(&text, "keyless_exchanges_total", &[("identity", DENIED)]) > 0
    })
    .await;
    let text = sidecar.metrics().await;
    assert_eq!(sample(&text, "keyless_identity_ready", &[("identity", DENIED)]), Some(0.0), "{text}");
    assert!(
        sample(&text, "keyless_credential_expiry_timestamp_seconds", &[("identity", DENIED)]).is_none(),
        "a refused role has no credential to expire: the readiness series is what an alert sees\n{text}"
    );

    // The version and revision `keyless --version` prints (build.rs determines the revision once).
    let printed = Command::new(keyless_bin()).arg("--version").output().unwrap();
    let printed = String::from_utf8(printed.stdout).unwrap();
    let revision = printed.split_once("(revision ").and_then(|(_, rest)| rest.split_once(',')).unwrap().0;
    let build = [("version", env!("CARGO_PKG_VERSION")), ("revision", revision)];
    assert_eq!(sample(&text, "keyless_build_info", &build), Some(1.0), "keyless --version: {printed}\n{text}");
    let positive = |name: &str| sample(&text, name, &[]).is_some_and(|v| v > 0.0);
    for name in [
        "process_resident_memory_bytes",
        "process_virtual_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_threads",
        "process_cpu_seconds_total",
    ] {
        assert!(positive(name), "{name} missing or not positive:\n{text}");
    }
    let started = sample(&text, "process_start_time_seconds", &[]).unwrap();
    assert!(started <= now() + 1.0 && started > now() - 600.0, "process_start_time_seconds {started}");
    // keyless itself: no Rust Debug text in what /readyz says about the identities.
    let readyz = client.get(sidecar.admin_url("/readyz")).send().await.unwrap().text().await.unwrap();
    assert!(readyz.contains(&format!("ready aws {role}: valid until ")), "{readyz}");
    assert!(readyz.contains(&format!("not ready aws {DENIED}: ")), "{readyz}");
    assert!(readyz.contains("(access token, scopes cloud-platform): valid until"), "{readyz}");
    for debug in ["()", "AccessToken(", "ScopeSet", "TokenKey"] {
        assert!(!readyz.contains(debug), "Debug text {debug:?} in /readyz:\n{readyz}");
    }
    // Nor in its logs: an identity with one credential has no `key` field (it said `key=()`).
    let logs = sidecar.logs();
    assert!(logs.contains(&format!("identity={role} ")) && logs.contains("key=\"access token, scopes"), "{logs}");
    for debug in ["key=()", "AccessToken(", "ScopeSet", "TokenKey"] {
        assert!(!logs.contains(debug), "Debug text {debug:?} in the logs:\n{logs}");
    }

    // The hardened setup (docs/configuration.md): the admin listener on loopback (as here), the
    // kubelet's probes as exec probes of `keyless probe` inside the container.
    let probe = |path: &str| {
        let out = Command::new(keyless_test_support::binary::keyless_bin())
            .args(["probe", &sidecar.admin_url(path)])
            .output()
            .unwrap();
        (out.status.code(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    };
    assert_eq!(probe("/healthz").0, Some(0));
    let (code, said) = probe("/readyz");
    assert_eq!(code, Some(1), "the refused role keeps the pod unready: {said}");
    assert!(said.contains(&format!("not ready aws {DENIED}: ")), "{said}");
}

/// Every sample name a metric family of `text` can have, from its `# TYPE` lines (a family with
/// no series yet is still declared): counters `_total`, histograms `_bucket`, `_sum`, `_count`.
fn exported_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else { continue };
        let (name, kind) = rest.split_once(' ').unwrap();
        match kind {
            "counter" => {
                names.insert(format!("{name}_total"));
            }
            "histogram" => names.extend(["_bucket", "_sum", "_count"].map(|s| format!("{name}{s}"))),
            _ => {
                names.insert(name.to_owned());
            }
        }
    }
    names
}

/// The metric names a PromQL text uses: identifiers of keyless's and the process families.
fn queried_names(promql: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut word = String::new();
    for c in promql.chars().chain([' ']) {
        if c.is_ascii_alphanumeric() || c == '_' {
            word.push(c);
        } else {
            if word.starts_with("keyless_") || word.starts_with("process_") {
                names.insert(std::mem::take(&mut word));
            }
            word.clear();
        }
    }
    names
}

/// `keyless webhook` with its admin listener up: a kubeconfig pointing where no API server
/// listens leaves it unready, but its /metrics answers.
async fn webhook_metrics() -> String {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, ca_pem) = self_signed_pair(dir.path());
    let kubeconfig = kubeconfig_of_no_api_server(dir.path());
    let files = WebhookFiles { cert: &cert, key: &key, kubeconfig: &kubeconfig };
    let webhook = WebhookProcess::start(free_port(), &files, &[], "/healthz").await;
    // Reviews, so that the families with labels have series: a pod not opted in (a skip) and a
    // body that is no AdmissionReview (an error).
    let https = reqwest::Client::builder()
        .no_proxy()
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap())
        .build()
        .unwrap();
    let mutate = format!("https://{}/mutate", webhook.listen);
    let pod = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"},
        "spec": {"containers": [{"name": "app", "image": "app:1"}]}
    });
    let skipped = https.post(&mutate).json(&pod_review("0b6a2f3c", "shop", &pod)).send().await.unwrap();
    assert!(skipped.status().is_success(), "{}", skipped.text().await.unwrap());
    let refused = https.post(&mutate).body("not a review").send().await.unwrap();
    assert_eq!(refused.status(), 400);
    webhook.metrics().await
}

fn helm_template(helm: &Path, set: &[&str]) -> String {
    let chart = workspace_root().join("charts/keyless");
    let mut args = vec!["template", "keyless", chart.to_str().unwrap(), "--namespace", "keyless-system"];
    for s in set {
        args.extend(["--set", s]);
    }
    let output = Command::new(helm).args(&args).output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "helm template: {}{text}", String::from_utf8_lossy(&output.stderr));
    text
}

/// The rendered document of `kind`.
fn document(rendered: &str, kind: &str) -> yaml_serde::Value {
    rendered
        .split("\n---")
        .filter_map(|doc| yaml_serde::from_str::<yaml_serde::Value>(doc).ok())
        .find(|doc| doc["kind"].as_str() == Some(kind))
        .unwrap_or_else(|| panic!("no {kind} in:\n{rendered}"))
}

/// Every `expr` of the PrometheusRule's alerts.
fn rule_exprs(rule: &yaml_serde::Value) -> Vec<String> {
    let groups = rule["spec"]["groups"].as_sequence().unwrap();
    groups
        .iter()
        .flat_map(|g| g["rules"].as_sequence().unwrap().iter().map(|r| r["expr"].as_str().unwrap().to_owned()))
        .collect()
}

#[tokio::test]
#[cfg_attr(not(keyless_tools_helm), ignore = "needs helm (target/tools/bin) or Go to build it: ./scripts/helm")]
async fn the_dashboard_and_the_alerts_query_only_metrics_a_live_keyless_exports() {
    let helm = tools::need(tools::find_helm());
    let emulator = EmulatorProcess::start().await;
    let sidecar = sidecar_with_a_refused_role(&emulator).await;
    // One credential request, so that the request and lookup families have series.
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    first_answer(&client, &sidecar.admin_url("/healthz")).await;
    credential_request(&client, &sidecar).await;
    let mut exported = exported_names(&sidecar.metrics().await);
    exported.extend(exported_names(&webhook_metrics().await));
    for expected in
        ["keyless_identity_ready", "keyless_webhook_review_duration_seconds_bucket", "process_cpu_seconds_total"]
    {
        assert!(exported.contains(expected), "{expected} not exported: {exported:?}");
    }

    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(workspace_root().join("charts/keyless/dashboards/keyless.json")).unwrap(),
    )
    .unwrap();
    let mut queried = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            queried.extend(queried_names(target["expr"].as_str().unwrap()));
        }
    }
    let rendered =
        helm_template(&helm, &["monitoring.prometheusRule.enabled=true", "monitoring.grafanaDashboard.enabled=true"]);
    for expr in rule_exprs(&document(&rendered, "PrometheusRule")) {
        queried.extend(queried_names(&expr));
    }
    assert!(queried.len() >= 12, "the dashboard and rules query too little: {queried:?}");
    let unknown: Vec<_> = queried.difference(&exported).collect();
    assert!(unknown.is_empty(), "queried but not exported by keyless: {unknown:?}\nexported: {exported:?}");
    // The chart's ConfigMap carries the same dashboard.
    let configmap = document(&rendered, "ConfigMap");
    let shipped: serde_json::Value = serde_json::from_str(configmap["data"]["keyless.json"].as_str().unwrap()).unwrap();
    assert_eq!(shipped, dashboard);
}

fn run(tool: &Path, args: &[&str]) -> (bool, String) {
    let output = Command::new(tool).args(args).output().unwrap();
    (
        output.status.success(),
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr)),
    )
}

#[tokio::test]
#[cfg_attr(
    not(all(keyless_tools_helm, keyless_tools_promtool)),
    ignore = "needs helm and promtool (target/tools/bin) or Go to build them: ./scripts/helm, ./scripts/promtool"
)]
async fn promtool_checks_the_rules_and_each_alert_fires_on_series_shaped_like_keyless_output() {
    let (helm, promtool) = (tools::need(tools::find_helm()), tools::need(tools::find_promtool()));
    // The label sets of a live keyless, as Prometheus stores them (plus the scrape's namespace
    // and pod).
    let emulator = EmulatorProcess::start().await;
    let sidecar = sidecar_with_a_refused_role(&emulator).await;
    wait_until("the refused role's exchange to fail", STARTUP_DEADLINE, || async {
        let text = scrape(&sidecar).await;
        keyless_test_support::metrics::sum(&text, "keyless_exchanges_total", &[("identity", DENIED)]) > 0
            && text.contains("keyless_subject_token_expiry_timestamp_seconds{")
            && text.contains("keyless_credential_expiry_timestamp_seconds{")
    })
    .await;
    let live = sidecar.metrics().await;
    let scraped = r#"namespace="shop",pod="web-1""#;
    let series = |name: &str, needle: &str| format!("{name}{{{},{scraped}}}", labels_of(&live, name, needle));
    let ready = series("keyless_identity_ready", DENIED_ROLE);
    let expiry = series("keyless_credential_expiry_timestamp_seconds", "provider=\"aws\"");
    let token = series("keyless_subject_token_expiry_timestamp_seconds", "source=\"file\"");
    // The refused role's exchanges, as the token service's throttling would count them.
    let refused = series("keyless_exchanges_total", DENIED_ROLE);
    let outcome = refused.split("outcome=\"").nth(1).unwrap().split('"').next().unwrap();
    let exchanges = refused.replace(&format!("outcome=\"{outcome}\""), "outcome=\"throttled\"");
    let expiring_identity = labels_of(&live, "keyless_credential_expiry_timestamp_seconds", "provider=\"aws\"");
    let identity = |set: &str| set.split("identity=\"").nth(1).unwrap().split('"').next().unwrap().to_owned();
    let token_path = labels_of(&live, "keyless_subject_token_expiry_timestamp_seconds", "source=\"file\"")
        .split("path=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_owned();

    let rendered = helm_template(&helm, &["monitoring.prometheusRule.enabled=true"]);
    let rule = document(&rendered, "PrometheusRule");
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.yaml");
    let groups =
        yaml_serde::to_string(&yaml_serde::Mapping::from_iter([("groups".into(), rule["spec"]["groups"].clone())]))
            .unwrap();
    std::fs::write(&rules, groups).unwrap();
    let (ok, out) = run(&promtool, &["check", "rules", rules.to_str().unwrap()]);
    assert!(ok && out.contains("SUCCESS: 6 rules found"), "promtool check rules:\n{out}");

    let webhook_bucket = |le: &str, values: &str| {
        format!(
            "      - series: 'keyless_webhook_review_duration_seconds_bucket{{le=\"{le}\",namespace=\"keyless-system\",pod=\"keyless-webhook-0\"}}'\n        values: '{values}'\n"
        )
    };
    let denied = DENIED;
    let aws_identity = identity(&expiring_identity);
    let tests = format!(
        r#"rule_files: [rules.yaml]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: '{ready}'
        values: '0x20'
      - series: '{expiry}'
        values: '600x20'
      - series: '{token}'
        values: '400x20'
      - series: '{exchanges}'
        values: '0+1x30'
      - series: 'keyless_webhook_errors_total{{reason="service_account",namespace="keyless-system",pod="keyless-webhook-0"}}'
        values: '0+1x30'
{buckets}    alert_rule_test:
      - eval_time: 4m
        alertname: KeylessIdentityNotReady
        exp_alerts: []
      - eval_time: 6m
        alertname: KeylessIdentityNotReady
        exp_alerts:
          - exp_labels: {{severity: critical, provider: aws, identity: "{denied}", namespace: shop, pod: web-1}}
            exp_annotations:
              summary: "keyless in shop/web-1 holds no valid credential for aws {denied}"
              description: "The pod's apps get no aws credentials. kubectl exec into the pod and GET http://127.0.0.1:9812/readyz for the cloud's error, or run keyless check with the pod's configuration (docs/troubleshooting.md)."
      - eval_time: 1m
        alertname: KeylessCredentialExpiringSoon
        exp_alerts:
          - exp_labels: {{severity: critical, provider: aws, identity: "{aws_identity}", namespace: shop, pod: web-1}}
            exp_annotations:
              summary: "The aws credential of {aws_identity} in shop/web-1 expires within 15m"
              description: "keyless refreshes at half the lifetime; this close to expiry its refreshes have been failing, and clients that refresh now get no newer credential. See the sidecar's log (outcome=) and keyless_exchanges_total."
      - eval_time: 2m
        alertname: KeylessSubjectTokenExpiring
        exp_alerts:
          - exp_labels: {{severity: warning, source: file, path: "{token_path}", namespace: shop, pod: web-1}}
            exp_annotations:
              summary: "The subject token {token_path} in shop/web-1 is stale or expires within 5m"
              description: "The kubelet rotates a projected token at 80% of its lifetime; a token this close to expiry (or past it) is not being rotated, or the file is a copy. Exchanges fail once it expires."
      - eval_time: 20m
        alertname: KeylessExchangesThrottled
        exp_alerts:
          - exp_labels: {{severity: warning, provider: aws, namespace: shop, pod: web-1}}
            exp_annotations:
              summary: "The aws token service throttles keyless in shop/web-1"
              description: "Credentials still valid keep being served, but refreshes wait. Many pods refreshing at once exceed the cloud's quota: docs/fleet.md."
      - eval_time: 20m
        alertname: KeylessWebhookErrors
        exp_alerts:
          - exp_labels: {{severity: warning, reason: service_account, namespace: keyless-system, pod: keyless-webhook-0}}
            exp_annotations:
              summary: "The keyless webhook could not inject opted-in pods (service_account)"
              description: "With failurePolicy Fail these pods are refused (their controller's FailedCreate event says why); with Ignore they start without credentials. The webhook's log names each pod."
      - eval_time: 20m
        alertname: KeylessWebhookSlow
        exp_alerts:
          - exp_labels: {{severity: warning}}
            exp_annotations:
              summary: "keyless webhook reviews take over 1 s (99th percentile)"
              description: "The API server waits at most timeoutSeconds (5 s) for a review; slower reviews fail pod creation (failurePolicy Fail)."
"#,
        buckets = [
            webhook_bucket("0.5", "0x30"),
            webhook_bucket("1", "0x30"),
            webhook_bucket("2.5", "0+10x30"),
            webhook_bucket("+Inf", "0+10x30"),
        ]
        .concat(),
    );
    let test_file = dir.path().join("tests.yaml");
    std::fs::write(&test_file, tests).unwrap();
    let (ok, out) = run(&promtool, &["test", "rules", test_file.to_str().unwrap()]);
    assert!(ok && out.contains("SUCCESS"), "promtool test rules:\n{out}");
}

/// The README's Observability section, up to the next top-level section.
fn readme_observability() -> String {
    let readme = std::fs::read_to_string(workspace_root().join("README.md")).unwrap();
    let start = readme.find("### Observability").expect("the README's Observability section");
    let rest = &readme[start..];
    rest[..rest.find("\n## ").unwrap_or(rest.len())].to_owned()
}

/// The backquoted words of `cell`.
fn quoted(cell: &str) -> Vec<&str> {
    cell.split('`').skip(1).step_by(2).collect()
}

/// The sample names of each family a `/metrics` text declares, as a person names the family: a
/// counter by its `_total` sample, a histogram by its base name, anything else by its name.
fn family_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|rest| match rest.split_once(' ').unwrap() {
            (name, "counter") => format!("{name}_total"),
            (name, _) => name.to_owned(),
        })
        .collect()
}

/// The README's metrics table names exactly the families a live sidecar and webhook export, each
/// with labels their samples carry; its table of the chart's monitoring values names every value
/// under `monitoring` in charts/keyless/values.yaml with its default.
#[tokio::test]
async fn the_readme_lists_every_metric_a_live_keyless_exports_and_the_charts_monitoring_values() {
    let section = readme_observability();
    let emulator = EmulatorProcess::start().await;
    let sidecar = sidecar_with_a_refused_role(&emulator).await;
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    first_answer(&client, &sidecar.admin_url("/metrics")).await;
    // An exchange and a subject token read, so that those families have series with labels.
    wait_until("an exchange", STARTUP_DEADLINE, || async {
        keyless_test_support::metrics::sum(&scrape(&sidecar).await, "keyless_exchanges_total", &[]) > 0
    })
    .await;
    // A credential request, so that the request and lookup families have series.
    credential_request(&client, &sidecar).await;
    let live = format!("{}\n{}", sidecar.metrics().await, webhook_metrics().await);

    let mut documented = BTreeSet::new();
    for row in section.lines().filter(|l| l.starts_with("| `")).filter(|l| !l.starts_with("| `monitoring.")) {
        let cells: Vec<&str> = row.split('|').collect();
        for quoted_name in quoted(cells[1]) {
            let (name, inline) = quoted_name.split_once('{').unwrap_or((quoted_name, ""));
            documented.insert(name.to_owned());
            let labels =
                quoted(cells[2]).into_iter().chain(inline.trim_end_matches('}').split(',').filter(|l| !l.is_empty()));
            for label in labels {
                let carried = live.lines().any(|l| l.starts_with(name) && l.contains(&format!("{label}=\"")));
                assert!(carried, "README: {name} has label {label}, no live sample carries it:\n{live}");
            }
        }
    }
    let exported = family_names(&live);
    assert_eq!(
        documented, exported,
        "README's metrics table (left) vs a live sidecar's and webhook's /metrics (right)"
    );

    // Every value under `monitoring`, in the row of its group, with its default.
    let values: yaml_serde::Value =
        yaml_serde::from_str(&std::fs::read_to_string(workspace_root().join("charts/keyless/values.yaml")).unwrap())
            .unwrap();
    let monitoring = values["monitoring"].as_mapping().unwrap();
    assert!(monitoring.len() >= 3, "{monitoring:?}");
    for (group, settings) in monitoring {
        let group = group.as_str().unwrap();
        let row = section
            .lines()
            .find(|l| l.starts_with(&format!("| `monitoring.{group}.enabled` | `false` |")))
            .unwrap_or_else(|| panic!("README: no row for monitoring.{group}.enabled (default false):\n{section}"));
        for (key, value) in settings.as_mapping().unwrap() {
            let key = key.as_str().unwrap();
            if key == "enabled" {
                assert_eq!(value.as_bool(), Some(false), "monitoring.{group}.enabled");
                continue;
            }
            assert!(row.contains(&format!("`{key}`")), "README: monitoring.{group}.{key} not named in:\n{row}");
            let default = match value {
                yaml_serde::Value::Mapping(map) if map.is_empty() => continue,
                yaml_serde::Value::Mapping(map) => {
                    map.iter().map(|(k, v)| format!("{}: {:?}", k.as_str().unwrap(), v.as_str().unwrap())).collect()
                }
                yaml_serde::Value::String(s) => s.clone(),
                other => yaml_serde::to_string(other).unwrap().trim().to_owned(),
            };
            assert!(
                row.contains(&format!("`{key}`, `{default}`")) || row.contains(&format!("`{key}` (`{default}`)")),
                "README: monitoring.{group}.{key} without its default {default:?} in:\n{row}"
            );
        }
    }
}
