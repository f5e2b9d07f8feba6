//! keyless against a real Kubernetes API server (etcd + kube-apiserver built by `scripts/kube`,
//! started by each test on loopback; keyless-test-support's kube.rs): tokens from the real
//! TokenRequest API, trusted by the emulator through the API server's own discovery document and
//! JWKS, exchanged by keyless for the unmodified example apps; and every manifest under
//! `examples/kubernetes/` validated and admitted by the API server. Without the binaries the tests
//! skip, and fail under `CI=true`.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use keyless_test_support::binary::workspace_root;
use keyless_test_support::emulate::EmulatorProcess;
use keyless_test_support::jwt::claims_of;
use keyless_test_support::kube::{self, Cluster};
use keyless_test_support::sdk::App;
use keyless_test_support::sidecar::{CONTAINER_AUTHORIZATION, Sidecar};
use keyless_test_support::tools;
use serde_json::Value;

/// What TokenRequest is asked for (the kubelet's default projection is one hour too).
const TOKEN_LIFETIME: Duration = Duration::from_secs(3600);

/// A real cluster holding the emulator's dev service account (its subject
/// `system:serviceaccount:NS:SA`), and the emulator (the tests using it are gated on `keyless_tools_kube`).
struct Setting {
    cluster: Cluster,
    emulator: EmulatorProcess,
    /// The emulator's dev identities.
    ids: Value,
    namespace: String,
    name: String,
}

impl Setting {
    async fn start() -> Self {
        let cluster = Cluster::start_with(tools::need(kube::find_binaries())).await;
        let emulator = EmulatorProcess::start().await;
        let ids = emulator.control.identities().await;
        let subject = ids["subject"].as_str().unwrap();
        let rest = subject.strip_prefix("system:serviceaccount:").unwrap();
        let (namespace, name) = rest.split_once(':').map(|(ns, sa)| (ns.to_owned(), sa.to_owned())).unwrap();
        cluster.create_service_account(&namespace, &name).await;
        Self { cluster, emulator, ids, namespace, name }
    }
}

/// `POST /` AssumeRoleWithWebIdentity to the emulator's STS with `token`: `(status, body)`.
async fn assume_role(emulator: &EmulatorProcess, role_arn: &str, token: &str) -> (u16, String) {
    let form = [
        ("Action", "AssumeRoleWithWebIdentity"),
        ("Version", "2011-06-15"),
        ("RoleArn", role_arn),
        ("RoleSessionName", "kubernetes-test"),
        ("WebIdentityToken", token),
    ];
    let response = emulator.control.client().post(emulator.control.url("/")).form(&form).send().await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

/// The example app `examples/{name}` (an unmodified SDK app) with `env`; its stdout.
async fn run_example(name: &str, env: &[(&str, &str)], home: &Path, context: impl FnOnce() -> String) -> String {
    let script = std::fs::read_to_string(workspace_root().join("examples").join(name)).unwrap();
    App::python(&script).vars(env).home(home).stdout_ok(context).await
}

#[tokio::test]
#[cfg_attr(
    not(keyless_tools_kube),
    ignore = "needs kube-apiserver, kubectl and etcd (target/kube/bin): ./scripts/kube, with Go >= 1.25"
)]
async fn the_emulator_trusts_a_real_api_servers_issuer_only_once_registered_and_checks_its_subject() {
    let Setting { cluster, emulator, ids, namespace, name } = Setting::start().await;
    cluster.create_service_account(&namespace, "someone-else").await;
    let (role, audience) = (ids["aws_role_arn"].as_str().unwrap(), ids["audiences"]["aws"].as_str().unwrap());
    let token = cluster.token(&namespace, &name, audience, TOKEN_LIFETIME).await;

    // An issuer nobody registered: STS refuses its tokens, as AWS does without an OIDC provider.
    let (status, body) = assume_role(&emulator, role, &token).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("InvalidIdentityToken"), "{body}");

    // Registration fails, saying why, when the discovery document names another issuer (as the
    // clouds refuse it) or the issuer's certificate is not trusted.
    let with_slash = format!("{}/", cluster.issuer());
    let wrong_issuer = serde_json::json!({ "issuer": with_slash, "ca_pem": cluster.ca_pem_text() });
    let (status, body) = emulator.control.register_issuer(&wrong_issuer).await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("names the issuer"), "{body}");
    let (status, body) = emulator.control.register_issuer(&serde_json::json!({ "issuer": cluster.issuer() })).await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("/.well-known/openid-configuration"), "{body}");
    assert_eq!(assume_role(&emulator, role, &token).await.0, 400, "nothing was registered");

    emulator.control.trust_issuer(cluster.issuer(), &cluster.ca_pem_text()).await;
    let (status, body) = assume_role(&emulator, role, &token).await;
    assert_eq!(status, 200, "{body}\n{}", emulator.logs());
    let provider = cluster.issuer().trim_start_matches("https://");
    assert!(body.contains(&format!("oidc-provider/{provider}</Provider>")), "{body}");

    // The role's trust policy names one service account: another one of the same cluster is refused.
    let other = cluster.token(&namespace, "someone-else", audience, TOKEN_LIFETIME).await;
    let (status, body) = assume_role(&emulator, role, &other).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("AccessDenied"), "{body}");
    cluster.stop().await;
}

#[tokio::test]
#[cfg_attr(
    not(keyless_tools_kube),
    ignore = "needs kube-apiserver, kubectl and etcd (target/kube/bin): ./scripts/kube, with Go >= 1.25"
)]
async fn real_token_request_tokens_are_exchanged_and_every_example_app_gets_its_identity() {
    let Setting { cluster, emulator, ids, namespace, name } = Setting::start().await;
    emulator.control.trust_issuer(cluster.issuer(), &cluster.ca_pem_text()).await;

    let tokens = tempfile::tempdir().unwrap();
    for cloud in ["aws", "gcp", "azure"] {
        let audience = ids["audiences"][cloud].as_str().unwrap();
        let token = cluster.token(&namespace, &name, audience, TOKEN_LIFETIME).await;
        assert_real_claims(&claims_of(&token), &cluster, audience, &name);
        std::fs::write(tokens.path().join(cloud), token).unwrap();
    }
    let token_file = |cloud: &str| -> PathBuf { tokens.path().join(cloud) };
    let sidecar = Sidecar::all_clouds_with_tokens(&emulator, &emulator.url, "info", &token_file).await;

    let home = tempfile::tempdir().unwrap();
    let (listen, ca) = (sidecar.listen.to_string(), emulator.ca.to_str().unwrap());
    let common =
        [("KEYLESS_DEV_EMULATOR_URL", emulator.url.as_str()), ("REQUESTS_CA_BUNDLE", ca), ("SSL_CERT_FILE", ca)];
    let context = || format!("--- keyless\n{}\n--- emulator\n{}", sidecar.logs(), emulator.logs());

    let aws_uri = sidecar.url("/v1/credentials");
    let aws_env = [
        ("AWS_CONTAINER_CREDENTIALS_FULL_URI", aws_uri.as_str()),
        ("AWS_CONTAINER_AUTHORIZATION_TOKEN", CONTAINER_AUTHORIZATION),
        ("AWS_DEFAULT_REGION", "us-east-1"),
        ("AWS_ENDPOINT_URL_STS", emulator.url.as_str()),
        ("AWS_CA_BUNDLE", ca),
        ("KEYLESS_DEV_AWS_ROLE_ARN", ids["aws_role_arn"].as_str().unwrap()),
    ];
    let aws = run_example("aws_app.py", &[&common[..], &aws_env].concat(), home.path(), context).await;
    assert!(aws.contains("aws: arn:aws:sts::123456789012:assumed-role/keyless-dev/"), "{aws}");

    let gcp_sa = ids["gcp_service_account"].as_str().unwrap();
    let gcp_env = [
        ("GCE_METADATA_HOST", listen.as_str()),
        ("GCE_METADATA_IP", listen.as_str()),
        ("METADATA_SERVER_DETECTION", "assume-present"),
        ("GOOGLE_CLOUD_PROJECT", ids["gcp_project_id"].as_str().unwrap()),
        ("KEYLESS_DEV_GCP_SERVICE_ACCOUNT", gcp_sa),
    ];
    let gcp = run_example("gcp_app.py", &[&common[..], &gcp_env].concat(), home.path(), context).await;
    assert!(gcp.contains(&format!("access token for {gcp_sa}")) && gcp.contains("signature verified"), "{gcp}");

    let client_id = ids["azure_client_id"].as_str().unwrap();
    let authority = format!("http://{listen}");
    let azure_env = [
        ("AZURE_POD_IDENTITY_AUTHORITY_HOST", authority.as_str()),
        ("KEYLESS_DEV_AZURE_TENANT_ID", ids["azure_tenant_id"].as_str().unwrap()),
        ("KEYLESS_DEV_AZURE_CLIENT_ID", client_id),
    ];
    let azure = run_example("azure_app.py", &[&common[..], &azure_env].concat(), home.path(), context).await;
    assert!(azure.contains(&format!("token for app {client_id}")) && azure.contains("signature verified"), "{azure}");

    // Every exchange was of a real cluster token: the emulator's own projector's were never read.
    for provider in ["aws", "gcp", "azure"] {
        let (ok, failed) = sidecar.exchanges(provider).await;
        assert!(ok >= 1 && failed == 0, "{provider}: {ok} exchanges succeeded, {failed} failed\n{}", context());
    }
    cluster.stop().await;
}

/// The claim set of a TokenRequest token: issuer, one audience, the `kubernetes.io` claim naming the
/// service account, `nbf`, and the lifetime asked for.
fn assert_real_claims(claims: &Value, cluster: &Cluster, audience: &str, service_account: &str) {
    assert_eq!(claims["iss"], cluster.issuer(), "{claims}");
    assert_eq!(claims["aud"], serde_json::json!([audience]), "{claims}");
    assert_eq!(claims["kubernetes.io"]["serviceaccount"]["name"], service_account, "{claims}");
    assert!(claims["kubernetes.io"]["serviceaccount"]["uid"].is_string(), "{claims}");
    assert!(claims["kubernetes.io"].get("pod").is_none(), "a TokenRequest without a pod binding: {claims}");
    let (iat, nbf, exp) = (claims["iat"].as_i64().unwrap(), claims["nbf"].as_i64().unwrap(), claims["exp"].as_i64());
    assert_eq!(nbf, iat, "{claims}");
    assert_eq!(exp, Some(iat + TOKEN_LIFETIME.as_secs() as i64), "{claims}");
}

fn manifests() -> Vec<PathBuf> {
    let dir = workspace_root().join("examples/kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no manifest under {}", dir.display());
    files
}

/// The Pod a Job's controller would create: its template, admitted by the whole chain (dry run).
fn pod_of(job: &Value) -> String {
    let name = job["metadata"]["name"].as_str().unwrap();
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": format!("{name}-pod"), "namespace": job["metadata"]["namespace"] },
        "spec": job["spec"]["template"]["spec"],
    })
    .to_string()
}

#[tokio::test]
#[cfg_attr(
    not(keyless_tools_kube),
    ignore = "needs kube-apiserver, kubectl and etcd (target/kube/bin): ./scripts/kube, with Go >= 1.25"
)]
async fn every_manifest_under_examples_kubernetes_is_accepted_by_the_real_api_server() {
    let cluster = Cluster::start_with(tools::need(kube::find_binaries())).await;
    for manifest in manifests() {
        let shown = manifest.file_name().unwrap().to_string_lossy().into_owned();
        let applied = cluster.apply_server_side(&manifest).await;
        let applied = applied.unwrap_or_else(|e| panic!("{shown} does not validate against the API server:\n{e}"));
        let jobs: Vec<&str> = applied.lines().filter_map(|l| l.strip_prefix("job.batch/")).collect();
        // Else a change of kubectl's output would leave every Job below unchecked.
        let has_job = std::fs::read_to_string(&manifest).unwrap().contains("kind: Job");
        assert_eq!(!jobs.is_empty(), has_job, "{shown}: the Jobs kubectl applied: {applied}");
        for line in jobs {
            let job_name = line.split_whitespace().next().unwrap();
            let job = cluster.get_json("default", "job", job_name).await;
            // The native sidecar survived validation as written (a field the server dropped would not).
            let init = &job["spec"]["template"]["spec"]["initContainers"];
            let keyless = init.as_array().unwrap().iter().find(|c| c["name"] == "keyless");
            let keyless = keyless.unwrap_or_else(|| panic!("{shown}: no keyless init container: {init}"));
            assert_eq!(keyless["restartPolicy"], "Always", "{shown}: {keyless}");
            let pod = cluster.create_dry_run(&pod_of(&job)).await;
            pod.unwrap_or_else(|e| panic!("{shown}: the Job's pod is not admitted:\n{e}"));
        }
    }
    cluster.stop().await;
}

#[tokio::test]
#[cfg_attr(
    not(keyless_tools_kube),
    ignore = "needs kube-apiserver, kubectl and etcd (target/kube/bin): ./scripts/kube, with Go >= 1.25"
)]
async fn a_manifest_that_breaks_the_native_sidecar_rules_is_refused() {
    let cluster = Cluster::start_with(tools::need(kube::find_binaries())).await;
    let manifest = manifests().into_iter().find(|m| m.ends_with("aws.yaml")).unwrap();
    let text = std::fs::read_to_string(&manifest).unwrap();
    assert!(text.contains("restartPolicy: Always"), "aws.yaml runs keyless as a native sidecar");
    let scratch = tempfile::tempdir().unwrap();
    let broken = scratch.path().join("broken.yaml");
    std::fs::write(&broken, text.replace("restartPolicy: Always", "restartPolicy: Sometimes")).unwrap();
    let refused = cluster.apply_server_side(&broken).await.unwrap_err();
    assert!(refused.contains("restartPolicy"), "{refused}");
    cluster.stop().await;
}
