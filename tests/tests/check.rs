//! `keyless check` against the emulator that `keyless emulate` runs: a working setup passes, and
//! each common misconfiguration exits 1 with a report that names the problem, the fix and the
//! cloud-side binding to create, without ever printing a token.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use keyless_test_support::binary::keyless_bin;
use keyless_test_support::emulate::EmulatorProcess;
use keyless_test_support::process::free_port;
use serde_json::{Value, json};

/// The clouds in the order of [`Emulator::all_clouds`].
const CLOUDS: [&str; 3] = ["aws", "gcp", "azure"];

/// A running `keyless emulate` and a directory for configs and token files.
struct Emulator {
    shared: EmulatorProcess,
    dir: tempfile::TempDir,
    ids: Value,
}

impl Emulator {
    async fn start() -> Self {
        let shared = EmulatorProcess::start().await;
        let ids = shared.control.identities().await;
        Self { shared, dir: tempfile::tempdir().unwrap(), ids }
    }

    fn id(&self, name: &str) -> String {
        self.ids[name].as_str().unwrap().to_owned()
    }

    fn audience(&self, cloud: &str) -> String {
        self.ids["audiences"][cloud].as_str().unwrap().to_owned()
    }

    fn ca(&self) -> PathBuf {
        self.shared.ca.clone()
    }

    /// The projected token the emulator's kubelet-like projector keeps fresh.
    fn projected(&self, cloud: &str) -> PathBuf {
        self.shared.token_file(cloud)
    }

    /// A token signed by the emulator's issuer with `claims` (see the emulator's MintClaims),
    /// written to a file of its own.
    async fn minted(&self, name: &str, claims: Value) -> (PathBuf, String) {
        let token = self.shared.control.mint(claims).await;
        (self.write(name, &token), token)
    }

    fn write(&self, name: &str, content: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, content).unwrap();
        path
    }

    /// `[aws]` trusting the emulator's CA (`ca = None`: no ca_file).
    fn aws(&self, token: &Path, endpoint: &str, ca: Option<&Path>) -> String {
        format!(
            "[aws]\ntoken_file = {}\nrole_arn = {}\nsts_endpoint = {}\n{}",
            q(token.to_str().unwrap()),
            q(&self.id("aws_role_arn")),
            q(endpoint),
            ca_line(ca)
        )
    }

    fn gcp(&self, token: &Path, endpoint: &str, ca: Option<&Path>) -> String {
        format!(
            "[gcp]\ntoken_file = {}\naudience = {}\nservice_account = {}\nsts_endpoint = {e}\niam_endpoint = {e}\n{}",
            q(token.to_str().unwrap()),
            q(&self.audience("gcp")),
            q(&self.id("gcp_service_account")),
            ca_line(ca),
            e = q(endpoint),
        )
    }

    fn azure(&self, token: &Path, endpoint: &str, ca: Option<&Path>) -> String {
        format!(
            "[azure]\ntoken_file = {}\ntenant_id = {}\nclient_id = {}\nauthority_host = {}\n{}",
            q(token.to_str().unwrap()),
            q(&self.id("azure_tenant_id")),
            q(&self.id("azure_client_id")),
            q(endpoint),
            ca_line(ca)
        )
    }

    /// `[aws]`, `[gcp]` and `[azure]`, reading `tokens` (in that order).
    fn all_clouds(&self, tokens: &[PathBuf; 3], endpoint: &str, ca: Option<&Path>) -> String {
        let [aws, gcp, azure] = tokens;
        [self.aws(aws, endpoint, ca), self.gcp(gcp, endpoint, ca), self.azure(azure, endpoint, ca)].join("\n")
    }

    /// The projected token of each cloud, in [`Emulator::all_clouds`]' order.
    fn projected_all(&self) -> [PathBuf; 3] {
        CLOUDS.map(|cloud| self.projected(cloud))
    }

    /// A token per cloud minted with `claims(that cloud's audience)`, in [`Emulator::all_clouds`]'
    /// order.
    async fn minted_for_each_cloud(&self, claims: impl Fn(String) -> Value) -> [PathBuf; 3] {
        let mut tokens = Vec::new();
        for cloud in CLOUDS {
            tokens.push(self.minted(cloud, claims(self.audience(cloud))).await.0);
        }
        tokens.try_into().unwrap()
    }

    /// The three sections as `keyless dev` would write them: everything works.
    fn working(&self) -> String {
        self.all_clouds(&self.projected_all(), &self.shared.url, Some(&self.ca()))
    }

    /// Runs `keyless check --config FILE` with `toml` as the file.
    async fn check(&self, toml: &str) -> Checked {
        let path = self.write("keyless.toml", toml);
        check(&["--config", path.to_str().unwrap()]).await
    }
}

fn q(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

fn ca_line(ca: Option<&Path>) -> String {
    ca.map(|p| format!("ca_file = {}\n", q(p.to_str().unwrap()))).unwrap_or_default()
}

/// What `keyless check` printed and how it exited.
#[derive(Debug)]
struct Checked {
    code: Option<i32>,
    report: String,
}

impl Checked {
    /// Exit 1, and every needle in the report.
    fn fails_with(&self, needles: &[&str]) {
        assert_eq!(self.code, Some(1), "expected exit 1:\n{}", self.report);
        self.says(needles);
    }

    fn says(&self, needles: &[&str]) {
        for needle in needles {
            assert!(self.report.contains(needle), "the report lacks {needle:?}:\n{}", self.report);
        }
        // JWTs (subject tokens, Entra access tokens, Google ID tokens) all start with eyJ.
        assert!(!self.report.contains("eyJ"), "the report shows a token:\n{}", self.report);
    }
}

/// `keyless check ARGS` with no environment but PATH: no cloud env vars from this machine.
async fn check(args: &[&str]) -> Checked {
    check_with_env(args, &[]).await
}

/// `keyless check ARGS` with exactly `env` (and PATH).
async fn check_with_env(args: &[&str], env: &[(&str, &str)]) -> Checked {
    let out = tokio::process::Command::new(keyless_bin())
        .arg("check")
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .output()
        .await
        .unwrap();
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    Checked { code: out.status.code(), report }
}

#[tokio::test]
async fn a_working_setup_exits_0_and_prints_each_clouds_binding() {
    let emu = Emulator::start().await;
    let checked = emu.check(&emu.working()).await;
    assert_eq!(checked.code, Some(0), "{}", checked.report);
    let issuer = emu.id("issuer");
    let host = issuer.trim_start_matches("https://");
    let sub = emu.id("subject");
    checked.says(&[
        "result: ok",
        "ok: the token has sts.amazonaws.com",
        "ok: the token has api://AzureADTokenExchange",
        &format!("ok: the token has {}", emu.audience("gcp")),
        // AWS: the OIDC provider and the trust policy condition on ISSUER_HOST:sub and :aud.
        &format!("\"Federated\": \"arn:aws:iam::123456789012:oidc-provider/{host}\""),
        &format!("\"{host}:sub\": \"{sub}\""),
        &format!("\"{host}:aud\": \"sts.amazonaws.com\""),
        // GCP: the principal member and its roles/iam.workloadIdentityUser binding.
        &format!(
            "--role=roles/iam.workloadIdentityUser --member=\"principal://iam.googleapis.com/projects/123456789012/\
             locations/global/workloadIdentityPools/keyless-dev/subject/{sub}\""
        ),
        // Azure: the federated credential's issuer, subject and audience.
        &format!("issuer {issuer}, subject {sub}, audience api://AzureADTokenExchange"),
    ]);
    assert!(!checked.report.contains("PROBLEM"), "{}", checked.report);
    for cloud in ["aws", "gcp", "azure"] {
        let token = std::fs::read_to_string(emu.projected(cloud)).unwrap();
        assert!(!checked.report.contains(token.trim()), "the {cloud} token was printed");
    }
}

#[tokio::test]
async fn aws_with_a_token_for_another_audience_names_sts_amazonaws_com() {
    let emu = Emulator::start().await;
    let (token, _) = emu.minted("token", json!({"aud": [emu.audience("azure")]})).await;
    let checked = emu.check(&emu.aws(&token, &emu.shared.url, Some(&emu.ca()))).await;
    checked.fails_with(&[
        "aws expects sts.amazonaws.com",
        "the token has [api://AzureADTokenExchange]",
        "fix: project the token for AWS with audience sts.amazonaws.com",
        "(InvalidIdentityToken)",
        "result: 2 problems (aws audience, aws exchange)",
    ]);
}

#[tokio::test]
async fn gcp_with_a_token_for_another_audience_names_the_pool_provider() {
    let emu = Emulator::start().await;
    let (token, _) = emu.minted("token", json!({"aud": ["sts.amazonaws.com"]})).await;
    let checked = emu.check(&emu.gcp(&token, &emu.shared.url, Some(&emu.ca()))).await;
    let provider = emu.audience("gcp");
    checked.fails_with(&[
        &format!("gcp expects {provider}"),
        "the token has [sts.amazonaws.com]",
        &format!("fix: project the token for Google Cloud with audience {provider}"),
        "(invalid_grant)",
    ]);
}

#[tokio::test]
async fn azure_with_a_token_for_another_audience_names_api_azureadtokenexchange() {
    let emu = Emulator::start().await;
    let (token, _) = emu.minted("token", json!({"aud": ["sts.amazonaws.com"]})).await;
    let checked = emu.check(&emu.azure(&token, &emu.shared.url, Some(&emu.ca()))).await;
    checked.fails_with(&[
        "azure expects api://AzureADTokenExchange",
        "fix: project the token for Azure with audience api://AzureADTokenExchange",
        "(AADSTS70021)",
    ]);
}

/// The pod's service account is not the one the clouds trust: each report spells out the
/// binding for the subject the token actually has.
#[tokio::test]
async fn a_subject_without_a_binding_gets_the_exact_binding_to_create() {
    let emu = Emulator::start().await;
    let sub = "system:serviceaccount:payments:api";
    let tokens = emu.minted_for_each_cloud(|aud| json!({"aud": [aud], "sub": sub})).await;
    let config = emu.all_clouds(&tokens, &emu.shared.url, Some(&emu.ca()));
    let checked = emu.check(&config).await;
    let issuer = emu.id("issuer");
    let host = issuer.trim_start_matches("https://");
    checked.fails_with(&[
        "(AccessDenied)",
        &format!("\"{host}:sub\": \"{sub}\""),
        "(PERMISSION_DENIED)",
        &format!(
            "gcloud iam service-accounts add-iam-policy-binding {} --role=roles/iam.workloadIdentityUser \
             --member=\"principal://iam.googleapis.com/projects/123456789012/locations/global/\
             workloadIdentityPools/keyless-dev/subject/{sub}\"",
            emu.id("gcp_service_account")
        ),
        "(AADSTS70021)",
        &format!("\"issuer\":\"{issuer}\",\"subject\":\"{sub}\",\"audiences\":[\"api://AzureADTokenExchange\"]"),
        "result: 3 problems (aws exchange, gcp exchange, azure exchange)",
    ]);
}

#[tokio::test]
async fn a_missing_token_file_says_to_mount_the_projected_volume() {
    let emu = Emulator::start().await;
    let missing = emu.dir.path().join("no-such-dir/token");
    let checked = emu.check(&emu.aws(&missing, &emu.shared.url, Some(&emu.ca()))).await;
    checked.fails_with(&[
        "does not exist",
        "projected serviceAccountToken volume",
        "not tried: there is no token to exchange",
        // The binding is still shown, with placeholders for what only the token could tell.
        "\"ISSUER_HOST/PATH:sub\": \"system:serviceaccount:NAMESPACE:SERVICEACCOUNT\"",
    ]);
}

#[tokio::test]
async fn an_unreadable_token_file_is_reported_with_its_path() {
    let emu = Emulator::start().await;
    // A directory where the file should be: unreadable for any user, root included.
    let dir = emu.dir.path().join("token-dir");
    std::fs::create_dir(&dir).unwrap();
    let checked = emu.check(&emu.gcp(&dir, &emu.shared.url, Some(&emu.ca()))).await;
    checked.fails_with(&[&format!("subject token file {} could not be read", dir.display()), "gcp token"]);
}

#[tokio::test]
async fn a_garbage_token_file_is_not_a_projected_token() {
    let emu = Emulator::start().await;
    let garbage = emu.write("token", "this is not a JWT\n");
    let checked = emu.check(&emu.azure(&garbage, &emu.shared.url, Some(&emu.ca()))).await;
    checked.fails_with(&["does not hold a projected service-account token", "not a JWT", "azure token"]);
}

#[tokio::test]
async fn an_expired_token_is_named_and_every_cloud_refuses_it() {
    let emu = Emulator::start().await;
    let expired = |aud| json!({"aud": [aud], "iat_offset_secs": -7200, "exp_offset_secs": -60});
    let tokens = emu.minted_for_each_cloud(expired).await;
    let config = emu.all_clouds(&tokens, &emu.shared.url, Some(&emu.ca()));
    let checked = emu.check(&config).await;
    checked.fails_with(&[
        "PROBLEM: the token expired at",
        "must be the token the kubelet projects",
        "(ExpiredTokenException)",
        "(invalid_grant)",
        "(AADSTS700024)",
        "aws expiry, aws exchange, gcp expiry, gcp exchange, azure expiry, azure exchange",
    ]);
}

#[tokio::test]
async fn an_unknown_key_is_named_with_where_to_look() {
    let emu = Emulator::start().await;
    let config = emu.working().replace("role_arn =", "role =");
    let checked = emu.check(&config).await;
    // The section's own problem: the other providers are still checked.
    checked.fails_with(&["unknown field `role`", "docs/configuration.md", "aws config", "gcp:", "azure:"]);
}

#[tokio::test]
async fn unreachable_endpoints_say_what_to_check() {
    let emu = Emulator::start().await;
    // A port nothing listens on.
    let closed = format!("https://127.0.0.1:{}", free_port());
    let config = emu.all_clouds(&emu.projected_all(), &closed, Some(&emu.ca()));
    let checked = emu.check(&config).await;
    checked.fails_with(&[
        // One classification of transport failures for every provider (keyless_provider::upstream).
        &format!("could not reach STS at {closed}"),
        &format!("could not reach Google STS at {closed}"),
        &format!("could not reach Entra ID at {closed}/"),
        "fix: check DNS, egress network policy and HTTPS_PROXY/NO_PROXY",
        "result: 3 problems (aws exchange, gcp exchange, azure exchange)",
    ]);
}

#[tokio::test]
async fn a_ca_file_that_holds_no_certificate_is_a_config_problem() {
    let emu = Emulator::start().await;
    let not_pem = emu.write("ca.pem", "not a certificate\n");
    let config = emu.all_clouds(&emu.projected_all(), &emu.shared.url, Some(&not_pem));
    let checked = emu.check(&config).await;
    checked.fails_with(&[
        "aws.ca_file = ",
        "gcp.ca_file = ",
        "azure.ca_file = ",
        "holds no PEM certificate",
        "result: 3 problems (aws config, gcp config, azure config)",
    ]);
}

#[tokio::test]
async fn without_the_ca_file_the_untrusted_endpoint_points_at_ca_file() {
    let emu = Emulator::start().await;
    let config = emu.all_clouds(&emu.projected_all(), &emu.shared.url, None);
    let checked = emu.check(&config).await;
    checked.fails_with(&[
        "set aws.ca_file to a PEM bundle",
        "set gcp.ca_file to a PEM bundle",
        "set azure.ca_file to a PEM bundle",
        "result: 3 problems (aws exchange, gcp exchange, azure exchange)",
    ]);
}

#[tokio::test]
async fn nothing_configured_says_how_to_configure_a_provider() {
    let checked = check(&[]).await;
    checked.fails_with(&["no cloud provider is configured", "add an [aws], [gcp] or [azure] section"]);
}

/// Zero config: the env vars the EKS and Azure workload-identity webhooks inject, loaded as
/// `keyless serve` loads them; the system CA store (SSL_CERT_FILE) is what trusts the emulator.
#[tokio::test]
async fn webhook_env_vars_are_checked_like_a_config_file() {
    let emu = Emulator::start().await;
    let ca = emu.ca();
    let (aws_token, azure_token) = (emu.projected("aws"), emu.projected("azure"));
    let (role, client, tenant) = (emu.id("aws_role_arn"), emu.id("azure_client_id"), emu.id("azure_tenant_id"));
    let env = [
        ("AWS_ROLE_ARN", role.as_str()),
        ("AWS_WEB_IDENTITY_TOKEN_FILE", aws_token.to_str().unwrap()),
        ("AWS_ENDPOINT_URL_STS", emu.shared.url.as_str()),
        ("AWS_CA_BUNDLE", ca.to_str().unwrap()),
        ("AZURE_FEDERATED_TOKEN_FILE", azure_token.to_str().unwrap()),
        ("AZURE_CLIENT_ID", client.as_str()),
        ("AZURE_TENANT_ID", tenant.as_str()),
        ("AZURE_AUTHORITY_HOST", emu.shared.url.as_str()),
        ("SSL_CERT_FILE", ca.to_str().unwrap()),
    ];
    let checked = check_with_env(&[], &env).await;
    assert_eq!(checked.code, Some(0), "{}", checked.report);
    checked.says(&[
        "ok (from AWS_ROLE_ARN and AWS_WEB_IDENTITY_TOKEN_FILE)",
        "ok (from AZURE_CLIENT_ID, AZURE_TENANT_ID and AZURE_FEDERATED_TOKEN_FILE)",
        "result: ok",
    ]);

    // Half an IRSA setup is a problem that names the missing variable.
    let checked = check_with_env(&[], &[("AWS_ROLE_ARN", role.as_str())]).await;
    checked.fails_with(&["AWS_WEB_IDENTITY_TOKEN_FILE: AWS_ROLE_ARN is set but AWS_WEB_IDENTITY_TOKEN_FILE is not"]);
}

/// Two endpoints on one path: `keyless check` reports it naming both keys, and `keyless serve`
/// exits with the same message before it listens (axum used to panic while merging the routes,
/// and `panic = "abort"` ended the process without a word).
#[tokio::test]
async fn two_endpoints_on_one_path_are_a_configuration_error_naming_both_keys() {
    let emu = Emulator::start().await;
    let config = emu.working().replace("[aws]\n", "[aws]\ncontainer_path = \"/msi/token\"\n");
    let checked = emu.check(&config).await;
    checked.fails_with(&[
        "route collision: aws.container_path (path /msi/token) and azure.app_service_path (path /msi/token)",
        "keyless routes",
    ]);

    let path = emu.write("colliding.toml", &config);
    let listen = format!("127.0.0.1:{}", free_port());
    let admin = format!("127.0.0.1:{}", free_port());
    let output = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        tokio::process::Command::new(keyless_bin())
            .args(["serve", "--config", path.to_str().unwrap(), "--listen", &listen, "--admin-listen", &admin])
            .env_remove("KEYLESS_CONFIG")
            .output(),
    )
    .await
    .expect("serve exits at once")
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("aws.container_path") && stderr.contains("azure.app_service_path"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    // Nothing was listening: both ports are still free.
    for addr in [&listen, &admin] {
        assert!(std::net::TcpListener::bind(addr.as_str()).is_ok(), "{addr} was bound");
    }
}

/// A token service slower than `cache.exchange_timeout`: every provider's own HTTP client gives
/// up at that timeout and reports it the same way (it used to be 15-25 s hard-coded in AWS and
/// GCP, whatever the setting).
#[tokio::test]
async fn every_provider_honours_the_exchange_timeout_and_reports_it_alike() {
    let emu = Emulator::start().await;
    emu.shared.control.fault_all(json!({ "latency_ms": 10_000 })).await;
    let config = format!("[cache]\nexchange_timeout = \"1s\"\n\n{}", emu.working());
    let started = tokio::time::Instant::now();
    let checked = emu.check(&config).await;
    emu.shared.control.clear_faults().await;
    checked.fails_with(&[
        "STS at ",
        "Google STS at ",
        "Entra ID at ",
        "(UpstreamTimeout)",
        "result: 3 problems (aws exchange, gcp exchange, azure exchange)",
    ]);
    assert_eq!(checked.report.matches("(UpstreamTimeout)").count(), 3, "{}", checked.report);
    assert!(started.elapsed() < std::time::Duration::from_secs(9), "took {:?}", started.elapsed());
}

/// A token minted for AWS under `[azure]`: the audience line and the AADSTS70021 hint say to
/// project the right audience, and nothing proposes making Entra accept `sts.amazonaws.com` (the
/// hint used to say `"audiences":["sts.amazonaws.com"]`).
#[tokio::test]
async fn an_aws_token_under_azure_never_gets_its_audience_trusted() {
    let emu = Emulator::start().await;
    let (token, _) = emu.minted("token", json!({"aud": ["sts.amazonaws.com"]})).await;
    let checked = emu.check(&emu.azure(&token, &emu.shared.url, Some(&emu.ca()))).await;
    checked.fails_with(&[
        "  audience    PROBLEM: azure expects api://AzureADTokenExchange",
        "fix: project the token for Azure with audience api://AzureADTokenExchange (serviceAccountToken.audience in \
         the pod's projected volume)\n",
        "audience sts.amazonaws.com: project the token with audience api://AzureADTokenExchange \
         (serviceAccountToken.audience), and create one with issuer",
        "\"audiences\":[\"api://AzureADTokenExchange\"]",
    ]);
    for widening in
        ["\"audiences\":[\"sts.amazonaws.com\"]", "--audiences sts.amazonaws.com", "to the token's audience"]
    {
        assert!(!checked.report.contains(widening), "proposes {widening}:\n{}", checked.report);
    }
}

/// The same for AWS and Google: a token of another cloud's audience is never to be trusted.
#[tokio::test]
async fn no_cloud_proposes_trusting_an_audience_the_audience_check_flagged() {
    let emu = Emulator::start().await;
    let (aws, _) = emu.minted("aws", json!({"aud": [emu.audience("azure")]})).await;
    let (gcp, _) = emu.minted("gcp", json!({"aud": ["sts.amazonaws.com"]})).await;
    let ca = emu.ca();
    let config = [emu.aws(&aws, &emu.shared.url, Some(&ca)), emu.gcp(&gcp, &emu.shared.url, Some(&ca))].join("\n");
    let checked = emu.check(&config).await;
    checked.fails_with(&[
        "aws audience, aws exchange, gcp audience, gcp exchange",
        "project the token with audience sts.amazonaws.com (serviceAccountToken.audience), not \
         api://AzureADTokenExchange; then check that IAM has an OIDC provider",
    ]);
    for widening in [
        "add-client-id-to-open-id-connect-provider",
        "--client-id-list api://AzureADTokenExchange",
        "allowed-audiences=sts.amazonaws.com",
        "allowed audiences (gcloud",
        "whose audiences include api://AzureADTokenExchange",
    ] {
        assert!(!checked.report.contains(widening), "proposes {widening}:\n{}", checked.report);
    }
}

/// A token from an issuer no cloud knows: each cloud first asks whether it is the cluster's
/// issuer at all, and no command registers the foreign issuer.
#[tokio::test]
async fn a_foreign_issuer_is_questioned_first_and_never_registered() {
    let emu = Emulator::start().await;
    let evil = "https://evil.example.com";
    let tokens = emu.minted_for_each_cloud(|aud| json!({"aud": [aud], "iss": evil})).await;
    let config = emu.all_clouds(&tokens, &emu.shared.url, Some(&emu.ca()));
    let checked = emu.check(&config).await;
    checked.fails_with(&[
        "(AADSTS700211)",
        "aws issuer, aws exchange, gcp issuer, gcp exchange, azure issuer, azure exchange",
        // The binding keeps the issuer a placeholder.
        "create-open-id-connect-provider --url https://ISSUER_HOST/PATH",
        "--issuer-uri=ISSUER_URL",
        "\"issuer\":\"ISSUER_URL\"",
    ]);
    for trusting in [
        "create-open-id-connect-provider --url https://evil.example.com",
        "oidc-provider/evil.example.com",
        "--issuer-uri=https://evil.example.com",
        "\"issuer\":\"https://evil.example.com\"",
        "--issuer https://evil.example.com",
    ] {
        assert!(!checked.report.contains(trusting), "proposes {trusting}:\n{}", checked.report);
    }
    // Each cloud's issuer problem, then at once the question naming that cloud's token file, both
    // before the cloud's exchange lines.
    let report = &checked.report;
    for (cloud, token) in ["aws", "gcp", "azure"].into_iter().zip(&tokens) {
        let problem =
            format!("  issuer      PROBLEM: {cloud} trusts no identity provider for the token's issuer {evil}\n");
        let question = format!(
            "fix: if this is not your cluster's issuer (kubectl get --raw /.well-known/openid-configuration shows \
             it), token_file ({}) points at the wrong token",
            token.display()
        );
        let at = report.find(&problem).unwrap_or_else(|| panic!("{cloud}: no issuer problem in:\n{report}"));
        let after = &report[at + problem.len()..];
        let fix = after.lines().find(|l| l.trim_start().starts_with("fix:")).unwrap_or_default();
        assert!(fix.trim_start().starts_with(&question), "{cloud}: the first fix is {fix:?}:\n{report}");
        let exchange = after.find("  exchange  ").unwrap_or(after.len());
        assert!(after.find(&question).is_some_and(|q| q < exchange), "{cloud}: question after the exchange:\n{report}");
    }
}

/// `--output json`: one JSON object (schema in docs/troubleshooting.md), the same outcome and exit
/// code as the text report.
#[tokio::test]
async fn json_output_has_the_documented_schema() {
    let emu = Emulator::start().await;
    let (token, _) = emu.minted("token", json!({"aud": ["sts.amazonaws.com"]})).await;
    let path = emu.write("keyless.toml", &emu.azure(&token, &emu.shared.url, Some(&emu.ca())));
    let checked = check(&["--config", path.to_str().unwrap(), "--output", "json"]).await;
    assert_eq!(checked.code, Some(1), "{}", checked.report);
    let report: Value = serde_json::from_str(&checked.report).unwrap_or_else(|e| panic!("{e}:\n{}", checked.report));
    assert_eq!(report["schema_version"], 1);
    assert_eq!(report["config"], path.to_str().unwrap());
    assert_eq!(report["outcome"], "problems");
    assert_eq!(report["problems"], json!(["azure audience", "azure exchange"]));
    let checks = report["checks"].as_array().unwrap();
    let audience = checks.iter().find(|c| c["check"] == "audience").unwrap();
    assert_eq!(audience["provider"], "azure");
    assert_eq!(audience["status"], "problem");
    assert!(audience["message"].as_str().unwrap().starts_with("azure expects api://AzureADTokenExchange"));
    assert!(audience["fix"].as_str().unwrap().starts_with("project the token for Azure"));
    let binding = checks.iter().find(|c| c["check"] == "binding").unwrap();
    assert_eq!(binding["status"], "info");
    assert!(binding["details"].as_array().unwrap().iter().any(|l| l.as_str().unwrap().contains("az ad app")));
    for c in checks {
        for field in ["provider", "check", "status", "message", "details", "fix"] {
            assert!(c.get(field).is_some(), "{field} missing from {c}");
        }
    }
    let fixes = report["fixes"].as_array().unwrap();
    assert!(fixes.iter().any(|f| f["provider"] == "azure" && f["check"] == "audience"), "{fixes:?}");
    assert!(!checked.report.contains("eyJ"));

    let working = emu.write("working.toml", &emu.working());
    let checked = check(&["--config", working.to_str().unwrap(), "--output", "json"]).await;
    assert_eq!(checked.code, Some(0), "{}", checked.report);
    let report: Value = serde_json::from_str(&checked.report).unwrap();
    assert_eq!((report["outcome"].as_str(), report["problems"].as_array().map(Vec::len)), (Some("ok"), Some(0)));
    assert!(report["checks"].as_array().unwrap().iter().all(|c| c["status"] != "problem"));
}
