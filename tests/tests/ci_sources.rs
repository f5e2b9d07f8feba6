//! Subject tokens outside Kubernetes (SPEC section 9): `keyless exec` and `keyless dev --source
//! github-actions` with the real SDK clients, each token source against `keyless emulate`, and an
//! Actions token endpoint that fails (401, 503, garbage): native errors while nothing valid is
//! held, recovery when it comes back, the request token never logged.
#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::path::Path;
use std::process::Output;

use keyless_test_support::binary::keyless_bin;
use keyless_test_support::child;
use keyless_test_support::clients;
use keyless_test_support::clock::wall_clock;
use keyless_test_support::dev::Dev;
use keyless_test_support::emulate::EmulatorProcess;
use keyless_test_support::load::Load;
use keyless_test_support::proxy::{Proxy, ProxyMode};
use keyless_test_support::sidecar::{CONTAINER_AUTHORIZATION, Sidecar, all_clouds_config, quick_refresh_cache};
use keyless_test_support::tools;
use keyless_test_support::wait::{STARTUP_DEADLINE, wait_until};

/// Every cloud through its own SDK, with nothing but the environment `keyless exec` gives.
const ALL_CLOUDS: &str = r#"
import boto3, google.auth, google.auth.transport.requests as transport
from azure.identity import ManagedIdentityCredential
aws = boto3.Session().get_credentials().get_frozen_credentials()
print("aws", aws.access_key.startswith("ASIA"))
gcp, project = google.auth.default()
gcp.refresh(transport.Request())
print("gcp", project, bool(gcp.token))
azure = ManagedIdentityCredential().get_token("https://management.azure.com/.default")
print("azure", bool(azure.token))
"#;

const ALL_CLOUDS_OK: &str = "aws True\ngcp keyless-dev True\nazure True\n";

fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

fn path_str(p: &Path) -> String {
    toml_string(p.to_str().unwrap())
}

/// The emulated Actions job: request URL (with its query) and request token.
fn actions_env(emulator: &EmulatorProcess) -> [(String, String); 2] {
    let token = std::fs::read_to_string(emulator.state.path().join("github-actions-request-token")).unwrap();
    [
        ("ACTIONS_ID_TOKEN_REQUEST_URL".into(), format!("{}/_github/idtoken?api-version=2.0", emulator.url)),
        ("ACTIONS_ID_TOKEN_REQUEST_TOKEN".into(), token),
    ]
}

/// A configuration for the three emulated clouds whose sections take their tokens from the
/// `source` inline tables given (AWS, GCP, Azure).
async fn config(emulator: &EmulatorProcess, sources: [String; 3]) -> String {
    config_with_cache(emulator, sources, "").await
}

/// [`config`] with `cache` as the `[cache]` section.
async fn config_with_cache(emulator: &EmulatorProcess, sources: [String; 3], cache: &str) -> String {
    let [aws, gcp, azure] = sources;
    let source = |cloud: &str| {
        let table = match cloud {
            "aws" => &aws,
            "gcp" => &gcp,
            _ => &azure,
        };
        format!("source = {table}")
    };
    all_clouds_config(emulator, &emulator.url, cache, "debug", &source).await
}

/// `{ type = "github-actions", ca_file = ... }`: the job's env vars, the cloud's default audience.
fn github_actions_source(emulator: &EmulatorProcess) -> String {
    format!(r#"{{ type = "github-actions", ca_file = {} }}"#, path_str(&emulator.ca))
}

/// `keyless exec --config FILE -- ARGS` with exactly `env` (plus PATH and a HOME of its own).
async fn exec(toml: &str, env: &[(String, String)], args: &[&str]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keyless.toml");
    std::fs::write(&file, toml).unwrap();
    let run = tokio::process::Command::new(keyless_bin())
        .arg("exec")
        .arg("--config")
        .arg(&file)
        .args(["--ready-timeout", "30s", "--"])
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", dir.path())
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(STARTUP_DEADLINE, run).await.expect("keyless exec finishes").unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn python_all_clouds() -> Vec<String> {
    vec![tools::python().to_str().unwrap().to_owned(), "-c".into(), ALL_CLOUDS.into()]
}

#[tokio::test]
async fn exec_gives_boto3_google_auth_and_azure_identity_credentials_from_github_actions_tokens() {
    let emulator = EmulatorProcess::start().await;
    let gh = github_actions_source(&emulator);
    let toml = config(&emulator, [gh.clone(), gh.clone(), gh]).await;
    let env = actions_env(&emulator);
    let python = python_all_clouds();
    let out = exec(&toml, &env, &python.iter().map(String::as_str).collect::<Vec<_>>()).await;
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "exec failed: {stdout}\n{stderr}");
    assert_eq!(stdout, ALL_CLOUDS_OK, "{stderr}");
    // Tokens minted for each cloud's own audience, by the Actions issuer, with GitHub's subject.
    for audience in ["sts.amazonaws.com", "api://AzureADTokenExchange", "//iam.googleapis.com/projects/"] {
        assert!(stderr.contains(&format!("source=github-actions audience={audience}")), "{audience}: {stderr}");
    }
    assert!(stderr.contains("sub=repo:keyless-dev/app:ref:refs/heads/main"), "{stderr}");
    let request_token = &env[1].1;
    assert!(!stderr.contains(request_token.as_str()), "the Actions request token was logged");
}

/// The same three clouds through the pinned Node clients (AWS SDK v3's default chain,
/// google-auth-library, @azure/identity), with nothing but the environment `keyless exec` gives.
const NODE_ALL_CLOUDS: &str = r#"
const { fromNodeProviderChain } = require("@aws-sdk/credential-providers");
const { GoogleAuth } = require("google-auth-library");
const { ManagedIdentityCredential } = require("@azure/identity");
(async () => {
  const aws = await fromNodeProviderChain()();
  console.log("aws", aws.accessKeyId.startsWith("ASIA"));
  const auth = new GoogleAuth();
  const token = await auth.getAccessToken();
  console.log("gcp", await auth.getProjectId(), Boolean(token));
  const azure = await new ManagedIdentityCredential().getToken("https://management.azure.com/.default");
  console.log("azure", Boolean(azure.token));
})().catch((e) => { console.error(e); process.exit(1); });
"#;

#[tokio::test]
#[cfg_attr(
    not(keyless_tools_node),
    ignore = "needs Node.js >= 20 and the pinned Node SDK clients (target/node): ./scripts/test installs them"
)]
async fn exec_gives_the_node_clients_credentials_from_github_actions_tokens() {
    let node = tools::need(tools::find_node_clients());
    let emulator = EmulatorProcess::start().await;
    let gh = github_actions_source(&emulator);
    let toml = config(&emulator, [gh.clone(), gh.clone(), gh]).await;
    let mut env = actions_env(&emulator).to_vec();
    env.push(("NODE_PATH".to_owned(), node.modules.to_str().unwrap().to_owned()));
    let out = exec(&toml, &env, &["node", "-e", NODE_ALL_CLOUDS]).await;
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "exec failed: {stdout}\n{stderr}");
    assert_eq!(stdout, "aws true\ngcp keyless-dev true\nazure true\n", "{stderr}");
    assert!(!stderr.contains(env[1].1.as_str()), "the Actions request token was logged");
}

#[tokio::test]
async fn exec_gives_the_rust_clients_credentials_from_github_actions_tokens() {
    const NAME: &str = "exec_gives_the_rust_clients_credentials_from_github_actions_tokens";
    if child::is_child(NAME) {
        return rust_all_clouds().await;
    }
    let emulator = EmulatorProcess::start().await;
    let gh = github_actions_source(&emulator);
    let toml = config(&emulator, [gh.clone(), gh.clone(), gh]).await;
    let mut env = actions_env(&emulator).to_vec();
    // This test binary as the command, running this test as its child (test-support's `child`).
    env.push((child::CHILD.to_owned(), NAME.to_owned()));
    let exe = std::env::current_exe().unwrap();
    let args: Vec<&str> = [exe.to_str().unwrap()].into_iter().chain(child::CHILD_ARGS).chain([NAME]).collect();
    let out = exec(&toml, &env, &args).await;
    let (stdout, stderr) = (child::quoted(&text(&out.stdout)), child::quoted(&text(&out.stderr)));
    assert!(out.status.success(), "exec failed: {stdout}\n{stderr}");
    assert!(stdout.contains("aws ASIA gcp true azure true"), "{stdout}\n{stderr}");
}

/// aws-config's default chain, google-cloud-auth's application-default credentials and
/// azure_identity's ManagedIdentityCredential, with only the environment `keyless exec` gives.
async fn rust_all_clouds() {
    use aws_sdk_sts::config::ProvideCredentials as _;
    use azure_core::credentials::TokenCredential as _;
    let aws = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let aws = aws.credentials_provider().unwrap().provide_credentials().await.unwrap();
    let gcp = google_cloud_auth::credentials::Builder::default().build_access_token_credentials().unwrap();
    let gcp = gcp.access_token().await.unwrap();
    let azure = azure_identity::ManagedIdentityCredential::new(None).unwrap();
    let azure = azure.get_token(&["https://management.azure.com/.default"], None).await.unwrap();
    println!(
        "aws {} gcp {} azure {}",
        &aws.access_key_id()[..4],
        !gcp.token.is_empty(),
        !azure.token.secret().is_empty()
    );
}

#[tokio::test]
async fn exec_takes_tokens_from_an_env_var_a_url_and_a_command() {
    let emulator = EmulatorProcess::start().await;
    let [(_, request_url), (_, request_token)] = actions_env(&emulator);
    let aws_token = std::fs::read_to_string(emulator.token_file("aws")).unwrap();
    // GCP: the Actions endpoint fetched as a plain URL source (audience in the URL, bearer header,
    // the token in JSON field "value"): the shape of Google's url-sourced credentials.
    let ids = emulator.control.identities().await;
    let gcp_audience = ids["audiences"]["gcp"].as_str().unwrap();
    let url = keyless_core::source::with_audience(&request_url, gcp_audience).unwrap();
    let gcp = format!(
        r#"{{ type = "url", url = {}, headers = {{ Authorization = {} }}, format = "json", field = "value", ca_file = {} }}"#,
        toml_string(url.as_str()),
        toml_string(&format!("Bearer {request_token}")),
        path_str(&emulator.ca)
    );
    let azure = format!(
        r#"{{ type = "command", command = ["cat", {}], timeout = "5s" }}"#,
        path_str(&emulator.token_file("azure"))
    );
    let aws = r#"{ type = "env", var = "AWS_ID_TOKEN" }"#.to_owned();
    let toml = config(&emulator, [aws, gcp, azure]).await;
    let env = [
        ("AWS_ID_TOKEN".to_owned(), aws_token.trim().to_owned()),
        ("KEYLESS_ALLOW_COMMAND_SOURCES".to_owned(), "1".to_owned()),
    ];
    let python = python_all_clouds();
    let out = exec(&toml, &env, &python.iter().map(String::as_str).collect::<Vec<_>>()).await;
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "exec failed: {stdout}\n{stderr}");
    assert_eq!(stdout, ALL_CLOUDS_OK, "{stderr}");
    for source in ["source=env AWS_ID_TOKEN", "source=url https://", "source=command cat"] {
        assert!(stderr.contains(source), "{source}: {stderr}");
    }
    assert!(!stderr.contains(&request_token), "the bearer header's value was logged");
    assert!(!stderr.contains(aws_token.trim()), "the token in the environment was logged");
}

#[tokio::test]
async fn a_command_source_needs_the_explicit_opt_in() {
    let emulator = EmulatorProcess::start().await;
    let azure = r#"{ type = "command", command = ["cat", "/dev/null"] }"#.to_owned();
    let gh = github_actions_source(&emulator);
    let toml = config(&emulator, [gh.clone(), gh, azure]).await;
    let out = exec(&toml, &actions_env(&emulator), &["true"]).await;
    // keyless's own failure: 125, as `env` and `docker run` report theirs.
    assert_eq!(out.status.code(), Some(125));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("KEYLESS_ALLOW_COMMAND_SOURCES=1"), "{stderr}");
}

#[tokio::test]
async fn exec_exits_with_the_commands_status_and_128_plus_its_signal() {
    let emulator = EmulatorProcess::start().await;
    let gh = github_actions_source(&emulator);
    let toml = config(&emulator, [gh.clone(), gh.clone(), gh]).await;
    let env = actions_env(&emulator);
    let out = exec(&toml, &env, &["sh", "-c", "exit 7"]).await;
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
    let out = exec(&toml, &env, &["sh", "-c", "kill -TERM $$"]).await;
    assert_eq!(out.status.code(), Some(128 + 15), "{}", text(&out.stderr));
    // The native variables, and nothing that would shadow keyless (a static key set earlier).
    let mut with_static_key = env.to_vec();
    with_static_key.push(("AWS_ACCESS_KEY_ID".into(), "AKIASTATICKEY".into()));
    let out = exec(&toml, &with_static_key, &["sh", "-c", "env"]).await;
    let printed = text(&out.stdout);
    for var in
        ["AWS_CONTAINER_CREDENTIALS_FULL_URI=http://127.0.0.1:", "GCE_METADATA_HOST=127.0.0.1:", "IDENTITY_ENDPOINT="]
    {
        assert!(printed.contains(var), "{var} missing: {printed}");
    }
    assert!(!printed.contains("AKIASTATICKEY"), "a static AWS key would shadow keyless");
}

#[tokio::test]
async fn exec_forwards_sigterm_to_the_command() {
    let emulator = EmulatorProcess::start().await;
    let gh = github_actions_source(&emulator);
    let toml = config(&emulator, [gh.clone(), gh.clone(), gh]).await;
    let dir = tempfile::tempdir().unwrap();
    let (file, started) = (dir.path().join("keyless.toml"), dir.path().join("started"));
    std::fs::write(&file, toml).unwrap();
    // The command records that it runs, then waits; on SIGTERM it exits 42.
    let script = format!("trap 'exit 42' TERM; touch {}; while :; do sleep 0.1; done", started.display());
    let mut child = tokio::process::Command::new(keyless_bin())
        .arg("exec")
        .arg("--config")
        .arg(&file)
        .args(["--", "sh", "-c", &script])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(actions_env(&emulator))
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_until("the command to start", STARTUP_DEADLINE, || {
        let exists = started.exists();
        async move { exists }
    })
    .await;
    let pid = rustix::process::Pid::from_raw(i32::try_from(child.id().unwrap()).unwrap()).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let status = tokio::time::timeout(STARTUP_DEADLINE, child.wait()).await.unwrap().unwrap();
    assert_eq!(status.code(), Some(42));
}

#[tokio::test]
async fn without_the_id_token_permission_exec_names_it_and_runs_nothing() {
    let emulator = EmulatorProcess::start().await;
    let gh = github_actions_source(&emulator);
    let toml = config(&emulator, [gh.clone(), gh.clone(), gh]).await;
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let file = dir.path().join("keyless.toml");
    std::fs::write(&file, toml).unwrap();
    let out = tokio::process::Command::new(keyless_bin())
        .arg("exec")
        .arg("--config")
        .arg(&file)
        .args(["--ready-timeout", "2s", "--", "touch"])
        .arg(&marker)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(125));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("permissions: id-token: write"), "{stderr}");
    assert!(!marker.exists(), "the command ran without credentials");
}

#[tokio::test]
async fn dev_with_github_actions_tokens_serves_the_three_sdks() {
    let dev = Dev::start_with_args(&["--source", "github-actions"], &[]).await;
    let out = dev.python_ok(ALL_CLOUDS).await;
    assert_eq!(out, ALL_CLOUDS_OK);
    assert!(dev.logs().contains("sub=repo:keyless-dev/app:ref:refs/heads/main"), "{}", dev.logs());
    let request_token =
        std::fs::read_to_string(dev.dir.path().join("state").join("github-actions-request-token")).unwrap();
    assert!(!dev.logs().contains(request_token.trim()), "the Actions request token was logged");
}

async fn set_actions_fault(emulator: &EmulatorProcess, fault: &str) {
    set_actions_endpoint(emulator, serde_json::json!({ "fault": fault })).await;
}

async fn set_actions_endpoint(emulator: &EmulatorProcess, settings: serde_json::Value) {
    let control = &emulator.control;
    let r = control.client().post(control.url("/_emulator/github-actions/fault")).json(&settings).send().await.unwrap();
    assert!(r.status().is_success(), "{}", r.status());
}

#[tokio::test]
async fn a_failing_actions_endpoint_gives_native_errors_then_recovers() {
    let emulator = EmulatorProcess::start().await;
    let env = actions_env(&emulator);
    let env_refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    for (fault, shown) in [("unauthorized", "HTTP 401"), ("unavailable", "HTTP 503"), ("garbage", "has no ID token")] {
        set_actions_fault(&emulator, fault).await;
        let gh = github_actions_source(&emulator);
        let sidecar = Sidecar::spawn(&config(&emulator, [gh.clone(), gh.clone(), gh]).await, &env_refs);
        // Nothing valid held: the AWS SDKs' container endpoint answers with its native error.
        let client = clients::loopback();
        let credentials = sidecar.url("/v1/credentials");
        let answer = std::sync::Mutex::new(String::new());
        wait_until(&format!("a native error while the endpoint is {fault}"), STARTUP_DEADLINE, || {
            let request = client.get(&credentials).header("authorization", CONTAINER_AUTHORIZATION).send();
            let answer = &answer;
            async move {
                let Ok(response) = request.await else { return false };
                let status = response.status().as_u16();
                let body = response.text().await.unwrap_or_default();
                let native = status >= 500 && body.contains(shown);
                *answer.lock().unwrap() = body;
                native
            }
        })
        .await;
        let answer = answer.into_inner().unwrap();
        let body: serde_json::Value = serde_json::from_str(&answer).expect("a JSON error body");
        assert!(body["Code"].is_string() && body["Message"].is_string(), "{body}");
        assert_eq!(sidecar.readyz().await, 503);
        // Back: every identity gets a credential without a restart.
        set_actions_fault(&emulator, "none").await;
        sidecar.wait_ready().await;
        let logs = sidecar.logs();
        assert!(!logs.contains(env[1].1.as_str()), "the Actions request token was logged");
        assert!(logs.contains("subject token source is usable again"), "{logs}");
        sidecar.process.stop().await;
    }
}

/// Refreshes as fast as the faults suite's: credentials are exchanged again every few seconds.
fn fast_cache() -> String {
    quick_refresh_cache("2s")
}

/// GitHub's tokens live 5 minutes and keyless fetches a new one from 2 minutes before `exp`; here
/// they live 30 s (so every fetch is already inside that window: a new token every 5 s) and the
/// clouds' credentials 20 s, so in 45 s every provider exchanges several times, some of them with
/// tokens minted after the first ones expired. About 1000 requests a second meanwhile: none fails.
#[tokio::test]
async fn expiring_actions_tokens_are_fetched_again_under_load_with_no_failed_request() {
    let emulator = EmulatorProcess::start().await;
    set_actions_endpoint(&emulator, serde_json::json!({ "token_lifetime_secs": 30 })).await;
    emulator.control.fault_all(serde_json::json!({ "lifetime_secs": 20 })).await;
    let env = actions_env(&emulator);
    let env_refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let gh = github_actions_source(&emulator);
    let sidecar =
        Sidecar::spawn(&config_with_cache(&emulator, [gh.clone(), gh.clone(), gh], &fast_cache()).await, &env_refs);
    sidecar.wait_ready().await;
    let mut before = Vec::new();
    for provider in ["aws", "gcp", "azure"] {
        before.push(sidecar.exchanges(provider).await);
    }
    let started = wall_clock();
    let load = Load::start(&sidecar, 1, std::time::Duration::from_millis(5));
    let past_expiry = started + std::time::Duration::from_secs(45);
    wait_until("the first Actions tokens to expire, and more", std::time::Duration::from_secs(120), || async move {
        wall_clock() >= past_expiry
    })
    .await;
    let report = load.stop().await;
    let failed: Vec<_> = report.samples.iter().filter(|s| s.outcome.is_err()).take(5).collect();
    assert!(failed.is_empty(), "requests failed: {failed:?}");
    assert!(report.samples.len() > 1000, "only {} requests", report.samples.len());
    for (provider, (ok_before, failed_before)) in ["aws", "gcp", "azure"].into_iter().zip(before) {
        let (ok, failed) = sidecar.exchanges(provider).await;
        assert!(ok >= ok_before + 3, "{provider}: {ok_before} -> {ok} successful exchanges");
        assert_eq!(failed, failed_before, "{provider}: an exchange failed (a stale subject token?)");
    }
    let logs = sidecar.logs();
    let minted = logs.matches("subject token loaded source=github-actions audience=sts.amazonaws.com").count();
    assert!(minted >= 5, "only {minted} AWS Actions tokens fetched in 45 s");
    assert!(!logs.contains(env[1].1.as_str()), "the Actions request token was logged");
}

#[tokio::test]
async fn check_shows_what_the_actions_source_fetched_and_the_exact_sub_to_trust() {
    let emulator = EmulatorProcess::start().await;
    let gh = github_actions_source(&emulator);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keyless.toml");
    std::fs::write(&file, config(&emulator, [gh.clone(), gh.clone(), gh]).await).unwrap();
    let env = actions_env(&emulator);
    let out = tokio::process::Command::new(keyless_bin())
        .arg("check")
        .arg("--config")
        .arg(&file)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .await
        .unwrap();
    let report = text(&out.stdout);
    assert!(out.status.success(), "{report}{}", text(&out.stderr));
    let issuer = format!("{}/_github", emulator.url.trim_start_matches("https://"));
    let sub = "repo:keyless-dev/app:ref:refs/heads/main";
    for expected in [
        "github-actions audience=sts.amazonaws.com".to_owned(),
        "github-actions audience=api://AzureADTokenExchange".to_owned(),
        format!("sub={sub}"),
        "note: GitHub sets sub to repo:ORG/REPO".to_owned(),
        // The AWS trust policy condition and the Entra federated credential, with this job's sub.
        format!("\"{issuer}:sub\": \"{sub}\""),
        sub.to_owned(),
    ] {
        assert!(report.contains(&expected), "{expected:?} missing from:\n{report}");
    }
    assert!(!report.contains(env[1].1.as_str()), "the request token was printed");
}

/// A token endpoint that never answers: keyless still starts at once (it waits a few seconds for
/// each first fetch, not for the fetch), answers with native errors naming the source, and
/// recovers when the endpoint does. Before, three hung sources held the start for 3 x 16 s.
#[tokio::test]
async fn a_hung_actions_endpoint_holds_nothing_up_and_recovers() {
    let emulator = EmulatorProcess::start().await;
    set_actions_fault(&emulator, "hang").await;
    let env = actions_env(&emulator);
    let env_refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let gh = github_actions_source(&emulator);
    let started = tokio::time::Instant::now();
    let toml = config_with_cache(&emulator, [gh.clone(), gh.clone(), gh], &fast_cache()).await;
    let sidecar = Sidecar::spawn(&toml, &env_refs);
    wait_until("/readyz to answer", STARTUP_DEADLINE, || async { sidecar.readyz().await == 503 }).await;
    let took = started.elapsed();
    assert!(took < std::time::Duration::from_secs(40), "keyless took {took:?} to listen");
    let client = clients::loopback();
    let credentials = sidecar.url("/v1/credentials");
    wait_until("a native error naming the source", STARTUP_DEADLINE, || {
        let request = client.get(&credentials).header("authorization", CONTAINER_AUTHORIZATION).send();
        async move {
            let Ok(response) = request.await else { return false };
            response.status().as_u16() >= 500
                && response.text().await.unwrap_or_default().contains("no subject token from github-actions")
        }
    })
    .await;
    set_actions_fault(&emulator, "none").await;
    sidecar.wait_ready().await;
}

/// An Actions token endpoint whose CA this host does not trust (no `ca_file`): the error says to
/// set the source's `ca_file` or `SSL_CERT_FILE`, and it is logged once however often the fetch is
/// retried (every 5 s). The TLS verifier's own ERROR line came at each retry before.
#[tokio::test]
async fn an_untrusted_token_endpoint_is_hinted_and_logged_once() {
    let emulator = EmulatorProcess::start().await;
    // Counts the fetches: each failed TLS handshake is a connection of its own.
    let relay = Proxy::start(ProxyMode::Forward(emulator.addr)).await;
    let [(_, _), (token_var, token)] = actions_env(&emulator);
    let url = format!("{}/_github/idtoken?api-version=2.0", relay.url());
    let role = emulator.control.identities().await["aws_role_arn"].as_str().unwrap().to_owned();
    let toml = format!(
        "log = \"info\"\n[aws]\nrole_arn = {}\nregion = \"us-east-1\"\nsts_endpoint = {}\n\
         source = {{ type = \"github-actions\" }}\n",
        toml_string(&role),
        toml_string(&emulator.url),
    );
    let env = [("ACTIONS_ID_TOKEN_REQUEST_URL", url.as_str()), (token_var.as_str(), token.as_str())];
    let sidecar = Sidecar::spawn(&toml, &env);
    wait_until("four fetches of the token", std::time::Duration::from_secs(60), || {
        let fetched = relay.accepted();
        async move { fetched >= 4 }
    })
    .await;
    let logs = sidecar.logs();
    assert!(
        logs.contains(
            "(the server's certificate is not trusted here: set the source's ca_file to a PEM bundle of its \
             CA, or SSL_CERT_FILE to a bundle that holds it)"
        ),
        "{logs}"
    );
    assert_eq!(logs.matches("subject token source unusable").count(), 1, "{logs}");
    assert_eq!(logs.matches("invalid peer certificate").count(), 1, "the cause repeated:\n{logs}");
    assert!(!logs.contains(&token), "the request token was logged");
}
