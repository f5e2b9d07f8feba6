//! Several identities per cloud (SPEC section 11), end to end: real SDK clients selecting a
//! non-default identity from the one sidecar `keyless dev` runs (its env file names the second
//! identity of each cloud), every credential checked by the emulator (GetCallerIdentity,
//! tokeninfo, the Entra token's signed claims); a second identity the clouds refuse does not keep
//! the default from serving, and readiness names it; configuration mistakes stop `serve` at load.
#![allow(clippy::unwrap_used)]

use keyless_test_support::binary::keyless_bin;
use keyless_test_support::clients;
use keyless_test_support::dev::Dev;
use keyless_test_support::emulate::EmulatorProcess;
use keyless_test_support::sdk::{BOTO3_WHOAMI, boto3_whoami};
use keyless_test_support::sidecar::{Sidecar, serve_refuses};
use keyless_test_support::tools;
use keyless_test_support::wait::{STARTUP_DEADLINE, wait_until};
use serde_json::Value;

const CONTAINER_URI: &str = "AWS_CONTAINER_CREDENTIALS_FULL_URI";

/// `arn:aws:sts::ACCOUNT:assumed-role/NAME/` of a role ARN: how GetCallerIdentity names a session.
fn assumed_role_prefix(role_arn: &str) -> String {
    let (account, name) = (role_arn.split(':').nth(4).unwrap(), role_arn.rsplit('/').next().unwrap());
    format!("arn:aws:sts::{account}:assumed-role/{name}/")
}

#[tokio::test]
async fn boto3_selects_a_named_role_with_credential_process_and_with_its_container_path() {
    let dev = Dev::start().await;
    let name = dev.var("KEYLESS_DEV_AWS_SECOND_ROLE_NAME").to_owned();
    let second = assumed_role_prefix(dev.var("KEYLESS_DEV_AWS_SECOND_ROLE_ARN"));
    let default = assumed_role_prefix(dev.var("KEYLESS_DEV_AWS_ROLE_ARN"));
    assert_ne!(second, default);

    // A `credential_process` profile per source: the running sidecar's endpoint, and an exchange.
    let bin = keyless_bin();
    let config = dev.dir.path().join("state/keyless.toml");
    for (source, command) in [
        ("endpoint", format!("{} credential-process --role {name}", bin.display())),
        ("exchange", format!("{} credential-process --config {} --role {name}", bin.display(), config.display())),
    ] {
        let profile = dev.dir.path().join(format!("aws-config-{source}"));
        std::fs::write(&profile, format!("[profile writer]\ncredential_process = {command}\n")).unwrap();
        let mut env = dev.env.clone();
        env.insert("AWS_CONFIG_FILE".into(), profile.to_string_lossy().into_owned());
        env.insert("AWS_PROFILE".into(), "writer".into());
        let (method, arn) = boto3_whoami(&dev.python_ok_in(BOTO3_WHOAMI, &env).await);
        assert_eq!(method, "custom-process", "{source}");
        assert!(arn.starts_with(&second), "{source}: {arn}");
    }

    // The named role's own container path: `{container path}/roles/NAME`.
    let mut env = dev.env.clone();
    env.insert(CONTAINER_URI.into(), format!("{}/roles/{name}", dev.var(CONTAINER_URI)));
    let (method, arn) = boto3_whoami(&dev.python_ok_in(BOTO3_WHOAMI, &env).await);
    assert_eq!((method.as_str(), arn.starts_with(&second)), ("container-role", true), "{arn}");

    // The default is untouched.
    let (_, arn) = boto3_whoami(&dev.python_ok(BOTO3_WHOAMI).await);
    assert!(arn.starts_with(&default), "{arn}");
}

#[tokio::test]
async fn an_unknown_role_name_is_a_clear_credential_process_error() {
    let dev = Dev::start().await;
    let config = dev.dir.path().join("state/keyless.toml");
    let out = tokio::process::Command::new(keyless_bin())
        .args(["credential-process", "--config", config.to_str().unwrap(), "--role", "nobody"])
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && out.stdout.is_empty(), "{stderr}");
    assert!(stderr.contains("no role named \"nobody\"") && stderr.contains("writer"), "{stderr}");

    // From the running sidecar (AWS_CONTAINER_CREDENTIALS_FULL_URI): it names the roles it serves.
    let name = dev.var("KEYLESS_DEV_AWS_SECOND_ROLE_NAME").to_owned();
    let out = tokio::process::Command::new(keyless_bin())
        .args(["credential-process", "--role", "nobody"])
        .env_clear()
        .envs(&dev.env)
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && out.stdout.is_empty(), "{stderr}");
    let served = format!("{}/roles/{name}", dev.var(CONTAINER_URI));
    let path =
        served.split_once("://").and_then(|(_, rest)| rest.split_once('/')).map(|(_, p)| format!("/{p}")).unwrap();
    assert!(
        stderr.contains(&format!(
            "serves no role named \"nobody\" (404): no role named \"nobody\" is served here; named roles: {name} (on \
             {path})"
        )),
        "{stderr}"
    );
    // Anyone else learns nothing: the names are told only with the authorization token.
    let anonymous = reqwest::Client::builder().no_proxy().build().unwrap();
    let unknown = format!("{}/roles/nobody", dev.var(CONTAINER_URI));
    let refused = anonymous.get(&unknown).send().await.unwrap();
    assert_eq!(refused.status(), 401);
    assert!(!refused.text().await.unwrap().contains(&name));
}

/// google-auth selecting the second account by e-mail: its metadata client's token for that
/// account and its ID token name it (the emulator's tokeninfo, its certs). google-auth 2.62's
/// `compute_engine.Credentials(service_account_email=...)` reads the account's info by e-mail but
/// always fetches `default/token` (as on a GCE VM, where one account is attached): asserted here
/// so that a google-auth that starts honouring the e-mail is noticed (docs/configuration.md).
#[tokio::test]
async fn google_auth_selects_a_service_account_by_email() {
    let dev = Dev::start().await;
    let script = r#"
import json, os
import requests
import google.auth.transport.requests
from google.auth import compute_engine
from google.auth.compute_engine import _metadata
from google.oauth2 import id_token
request = google.auth.transport.requests.Request()
email = os.environ["KEYLESS_DEV_GCP_SECOND_SERVICE_ACCOUNT"]
def tokeninfo(token):
    return requests.get(os.environ["KEYLESS_DEV_EMULATOR_URL"] + "/tokeninfo", params={"access_token": token}, timeout=10).json()
token, _ = _metadata.get_service_account_token(request, service_account=email)
raw = _metadata.get(request, f"instance/service-accounts/{email}/identity?audience=https://deploy.example.com")
claims = id_token.verify_token(raw, request, audience="https://deploy.example.com",
                               certs_url=os.environ["KEYLESS_DEV_EMULATOR_URL"] + "/oauth2/v3/certs")
credentials = compute_engine.Credentials(service_account_email=email)
credentials.refresh(request)
print(json.dumps({"tokeninfo": tokeninfo(token), "id_email": claims.get("email"),
                  "credentials_email": credentials.service_account_email,
                  "credentials_token_email": tokeninfo(credentials.token).get("email")}))
"#;
    let out: Value = serde_json::from_str(dev.python_ok(script).await.trim()).unwrap();
    let second = dev.var("KEYLESS_DEV_GCP_SECOND_SERVICE_ACCOUNT");
    assert_eq!(out["tokeninfo"]["email"], second, "{out}");
    assert_eq!(out["id_email"], second, "{out}");
    assert_eq!(out["credentials_email"], second, "{out}");
    assert_eq!(
        out["credentials_token_email"],
        dev.var("KEYLESS_DEV_GCP_SERVICE_ACCOUNT"),
        "google-auth fetched by e-mail: {out}"
    );
}

/// The metadata server as a GCE VM with several accounts: every account by e-mail, the default
/// also as `default` (its alias), each with `email`, `aliases`, `scopes`, `token`, `identity`.
#[tokio::test]
async fn the_metadata_server_lists_every_account() {
    let dev = Dev::start().await;
    let http = clients::loopback();
    let root = format!("http://{}/computeMetadata/v1/instance/service-accounts", dev.var("GCE_METADATA_HOST"));
    let get = |path: String| {
        let request = http.get(format!("{root}/{path}")).header("Metadata-Flavor", "Google");
        async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 200, "{path}");
            response.text().await.unwrap()
        }
    };
    let (first, second) =
        (dev.var("KEYLESS_DEV_GCP_SERVICE_ACCOUNT"), dev.var("KEYLESS_DEV_GCP_SECOND_SERVICE_ACCOUNT"));
    let mut listing: Vec<String> = get(String::new()).await.lines().map(str::to_owned).collect();
    listing.sort();
    let mut expected = vec!["default/".to_owned(), format!("{first}/"), format!("{second}/")];
    expected.sort();
    assert_eq!(listing, expected);

    let all: Value = serde_json::from_str(&get("?recursive=true".into()).await).unwrap();
    let scopes = serde_json::json!(["https://www.googleapis.com/auth/cloud-platform"]);
    assert_eq!(all[second], serde_json::json!({"aliases": [], "email": second, "scopes": scopes}), "{all}");
    assert_eq!(all["default"]["email"], first, "{all}");
    assert_eq!(get(format!("{second}/email")).await, second);
    assert_eq!(get(format!("{second}/aliases")).await, "");
    let token: Value = serde_json::from_str(&get(format!("{second}/token")).await).unwrap();
    let default: Value = serde_json::from_str(&get("default/token".into()).await).unwrap();
    assert_ne!(token["access_token"], default["access_token"]);
    assert!(!get(format!("{second}/identity?audience=x")).await.is_empty());
}

/// Node google-auth-library's `Compute` client with `serviceAccountEmail`.
#[tokio::test]
#[cfg_attr(
    not(keyless_tools_node),
    ignore = "needs Node.js >= 20 and the pinned Node SDK clients (target/node): ./scripts/test installs them"
)]
async fn google_auth_library_selects_a_service_account_by_email() {
    let node = tools::need(tools::find_node_clients());
    let dev = Dev::start().await;
    let second = dev.var("KEYLESS_DEV_GCP_SECOND_SERVICE_ACCOUNT");
    let out = dev.node_ok_in(&node, "gcp_account.cjs", &[second], &dev.env).await;
    let out: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(out["tokeninfo"], 200, "{out}");
    assert_eq!(out["tokeninfo_email"], second, "{out}");
}

/// Python's `ManagedIdentityCredential(client_id=...)` for the second app, on App Service and
/// on IMDS: each token signed by the emulated tenant for that app.
#[tokio::test]
async fn azure_identity_selects_the_second_client_id_on_imds_and_app_service() {
    let dev = Dev::start().await;
    let script = r#"
import os, ssl
import jwt
from azure.identity import ManagedIdentityCredential
TENANT = os.environ["KEYLESS_DEV_AZURE_TENANT_ID"]
SECOND = os.environ["KEYLESS_DEV_AZURE_SECOND_CLIENT_ID"]
ctx = ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
jwks = jwt.PyJWKClient(f"{os.environ['KEYLESS_DEV_EMULATOR_URL']}/{TENANT}/discovery/v2.0/keys", ssl_context=ctx)
for drop in ([], ["IDENTITY_ENDPOINT", "IDENTITY_HEADER"]):
    for name in drop:
        os.environ.pop(name)
    credential = ManagedIdentityCredential(client_id=SECOND)
    token = credential.get_token("https://vault.azure.net/.default")
    claims = jwt.decode(token.token, jwks.get_signing_key_from_jwt(token.token).key, algorithms=["RS256"],
                        audience="https://vault.azure.net", issuer=f"https://sts.windows.net/{TENANT}/")
    print(type(credential._credential).__name__, claims["appid"] == SECOND)
"#;
    let out = dev.python_ok(script).await;
    assert_eq!(out.trim(), "AppServiceCredential True\nImdsCredential True");
}

/// IMDS and App Service refuse the selectors keyless cannot map to an app (`object_id`,
/// `msi_res_id`, `mi_res_id`, `principal_id`) with their own error shape, as the real endpoints
/// refuse an identity that is not assigned; `client_id` picks, case-insensitively.
#[tokio::test]
async fn imds_and_app_service_refuse_selectors_keyless_cannot_map_in_their_native_shape() {
    let dev = Dev::start().await;
    let http = clients::loopback();
    let imds = format!("{}/metadata/identity/oauth2/token", dev.var("AZURE_POD_IDENTITY_AUTHORITY_HOST"));
    let resource = ("resource", "https://vault.azure.net");
    for selector in ["object_id", "msi_res_id", "mi_res_id", "principal_id"] {
        let value = "/subscriptions/x/resourcegroups/y/providers/Microsoft.ManagedIdentity/userAssignedIdentities/z";
        let imds_answer = http
            .get(&imds)
            .query(&[("api-version", "2018-02-01"), resource, (selector, value)])
            .header("Metadata", "true")
            .send()
            .await
            .unwrap();
        assert_eq!(imds_answer.status(), 400, "{selector}");
        let body: Value = imds_answer.json().await.unwrap();
        assert_eq!(body["error"], "invalid_request", "{body}");
        assert!(body["error_description"].as_str().unwrap().contains(selector), "{body}");

        let app_service = http
            .get(dev.var("IDENTITY_ENDPOINT"))
            .query(&[("api-version", "2019-08-01"), resource, (selector, value)])
            .header("X-IDENTITY-HEADER", dev.var("IDENTITY_HEADER"))
            .send()
            .await
            .unwrap();
        assert_eq!(app_service.status(), 400, "{selector}");
        let body: Value = app_service.json().await.unwrap();
        assert_eq!(body["statusCode"], 400, "{body}");
        assert!(body["message"].as_str().unwrap().contains(selector), "{body}");
    }
    let second = dev.var("KEYLESS_DEV_AZURE_SECOND_CLIENT_ID").to_uppercase();
    let answer = http
        .get(&imds)
        .query(&[("api-version", "2018-02-01"), resource, ("client_id", second.as_str())])
        .header("Metadata", "true")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["client_id"].as_str().unwrap().to_uppercase(), second, "{body}");
}

/// `/readyz` and the metrics name each identity of each cloud.
#[tokio::test]
async fn readiness_and_metrics_name_every_identity() {
    let dev = Dev::start().await;
    dev.wait_ready().await;
    let readyz = clients::loopback().get(format!("{}/readyz", dev.admin_url())).send().await.unwrap();
    let body = readyz.text().await.unwrap();
    let metrics = dev.metrics().await;
    let name = dev.var("KEYLESS_DEV_AWS_SECOND_ROLE_NAME");
    for identity in [
        dev.var("KEYLESS_DEV_AWS_ROLE_ARN").to_owned(),
        format!("{name} ({})", dev.var("KEYLESS_DEV_AWS_SECOND_ROLE_ARN")),
        dev.var("KEYLESS_DEV_GCP_SERVICE_ACCOUNT").to_owned(),
        dev.var("KEYLESS_DEV_GCP_SECOND_SERVICE_ACCOUNT").to_owned(),
    ] {
        assert!(body.lines().any(|l| l.starts_with("ready ") && l.contains(&identity)), "{identity}: {body}");
        let series = format!("identity=\"{identity}\"");
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("keyless_credential_expiry_timestamp_seconds{") && l.contains(&series)),
            "{identity}: {metrics}"
        );
    }
    assert!(body.contains(dev.var("KEYLESS_DEV_AZURE_SECOND_CLIENT_ID")), "{body}");
}

/// A second AWS role and a second service account the clouds refuse: the default identities
/// serve, the second ones answer the native error, and `/readyz` names the missing ones.
#[tokio::test]
async fn a_refused_second_identity_does_not_block_the_default_and_readiness_names_it() {
    let emulator = EmulatorProcess::start().await;
    let ids = emulator.control.identities().await;
    let token = |cloud| format!("{:?}", emulator.token_file(cloud).to_str().unwrap());
    let config = format!(
        r#"[aws]
token_file = {aws_token}
role_arn = {role:?}
sts_endpoint = {url:?}
ca_file = {ca:?}
authorization_token = "e2e-authorization-token-value"
imds = false

[[aws.roles]]
name = "ghost"
role_arn = "arn:aws:iam::123456789012:role/nobody-trusts-this"

[gcp]
token_file = {gcp_token}
audience = {audience:?}
service_account = {sa:?}
sts_endpoint = {url:?}
iam_endpoint = {url:?}
ca_file = {ca:?}

[[gcp.service_accounts]]
email = "stranger@keyless-dev.iam.gserviceaccount.com"
"#,
        aws_token = token("aws"),
        role = ids["aws_role_arn"].as_str().unwrap(),
        url = emulator.url,
        ca = emulator.ca,
        gcp_token = token("gcp"),
        audience = ids["audiences"]["gcp"].as_str().unwrap(),
        sa = ids["gcp_service_account"].as_str().unwrap(),
    );
    let sidecar = Sidecar::spawn(&config, &[]);
    let http = clients::loopback();
    let aws = |path: &str| http.get(sidecar.url(path)).header("Authorization", "e2e-authorization-token-value").send();
    wait_until("the default role to be served", STARTUP_DEADLINE, || async {
        aws("/v1/credentials").await.is_ok_and(|r| r.status() == 200)
    })
    .await;
    let ghost = aws("/v1/credentials/roles/ghost").await.unwrap();
    assert_eq!(ghost.status(), 500, "a refused role is a terminal error");
    let body: Value = ghost.json().await.unwrap();
    assert_eq!(body["Code"], "AccessDenied", "{body}");

    let gcp = |account: &str| {
        http.get(sidecar.url(&format!("/computeMetadata/v1/instance/service-accounts/{account}/token")))
            .header("Metadata-Flavor", "Google")
            .send()
    };
    assert_eq!(gcp("default").await.unwrap().status(), 200);
    assert!(gcp("stranger@keyless-dev.iam.gserviceaccount.com").await.unwrap().status().is_server_error());

    let readyz = http.get(sidecar.admin_url("/readyz")).send().await.unwrap();
    assert_eq!(readyz.status(), 503);
    let body = readyz.text().await.unwrap();
    let not_ready: Vec<&str> = body.lines().filter(|l| l.starts_with("not ready")).collect();
    assert_eq!(not_ready.len(), 2, "{body}");
    assert!(
        not_ready.iter().any(|l| l.contains("ghost (arn:aws:iam::123456789012:role/nobody-trusts-this)")),
        "{body}"
    );
    assert!(not_ready.iter().any(|l| l.contains("stranger@keyless-dev.iam.gserviceaccount.com")), "{body}");
    assert!(body.lines().any(|l| l.starts_with("ready aws") && l.contains(ids["aws_role_arn"].as_str().unwrap())));
    assert!(sidecar.process.stop().await.success());
    assert!(emulator.stop().await.success());
}

#[tokio::test]
async fn duplicate_names_and_colliding_paths_are_configuration_errors_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "unused").unwrap();
    let aws = format!(
        "[aws]\ntoken_file = {token:?}\nrole_arn = \"arn:aws:iam::123456789012:role/app\"\nauthorization_token = \"x-token\"\n"
    );
    let role = |name: &str, path: Option<&str>| {
        let path = path.map(|p| format!("container_path = {p:?}\n")).unwrap_or_default();
        format!("\n[[aws.roles]]\nname = {name:?}\nrole_arn = \"arn:aws:iam::123456789012:role/{name}\"\n{path}")
    };

    let stderr = serve_refuses(&format!("{aws}{}{}", role("reader", None), role("reader", None))).await;
    assert!(stderr.contains("aws.roles: the name \"reader\" is given to two roles"), "{stderr}");

    let stderr = serve_refuses(&format!("{aws}{}", role("reader", Some("/v1/credentials")))).await;
    assert!(
        stderr.contains(
            "route collision: aws.container_path (path /v1/credentials) and aws.roles[reader].container_path"
        ),
        "{stderr}"
    );

    let stderr = serve_refuses(&format!("{aws}{}", role("reader", Some("/latest/reader")))).await;
    assert!(stderr.contains("aws.roles[reader].container_path") && stderr.contains("aws.imds"), "{stderr}");

    let stderr = serve_refuses(&format!("{aws}{}", role("no/slash", None))).await;
    assert!(stderr.contains("the name \"no/slash\" must be"), "{stderr}");

    let gcp = format!(
        "[gcp]\ntoken_file = {token:?}\naudience = \"//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/k\"\n\
         service_account = \"a@p.iam.gserviceaccount.com\"\n"
    );
    let account = |email: &str| format!("\n[[gcp.service_accounts]]\nemail = {email:?}\n");
    let stderr = serve_refuses(&format!("{gcp}{}", account("a@p.iam.gserviceaccount.com"))).await;
    assert!(stderr.contains("gcp.service_accounts: a@p.iam.gserviceaccount.com is configured twice"), "{stderr}");
    let stderr = serve_refuses(&format!(
        "{gcp}{}{}",
        account("b@p.iam.gserviceaccount.com"),
        account("b@p.iam.gserviceaccount.com")
    ))
    .await;
    assert!(stderr.contains("b@p.iam.gserviceaccount.com is configured twice"), "{stderr}");
}

/// `keyless check` on the configuration `keyless dev` runs: one exchange per identity of each
/// cloud, each named, all succeeding against the emulator.
#[tokio::test]
async fn check_reports_every_identity() {
    let dev = Dev::start().await;
    let config = dev.dir.path().join("state/keyless.toml");
    let out = tokio::process::Command::new(keyless_bin())
        .args(["check", "--config", config.to_str().unwrap()])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .output()
        .await
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{report}\n{}", String::from_utf8_lossy(&out.stderr));
    let name = dev.var("KEYLESS_DEV_AWS_SECOND_ROLE_NAME");
    for needle in [
        format!("AssumeRoleWithWebIdentity for {}", dev.var("KEYLESS_DEV_AWS_ROLE_ARN")),
        format!("AssumeRoleWithWebIdentity for {name} ({})", dev.var("KEYLESS_DEV_AWS_SECOND_ROLE_ARN")),
        format!("role {name} {}", dev.var("KEYLESS_DEV_AWS_SECOND_ROLE_ARN")),
        format!("access token for {}", dev.var("KEYLESS_DEV_GCP_SERVICE_ACCOUNT")),
        format!("access token for {}", dev.var("KEYLESS_DEV_GCP_SECOND_SERVICE_ACCOUNT")),
        format!("service account {}", dev.var("KEYLESS_DEV_GCP_SECOND_SERVICE_ACCOUNT")),
        format!("access token for client {}", dev.var("KEYLESS_DEV_AZURE_SECOND_CLIENT_ID")),
    ] {
        assert!(report.contains(&needle), "{needle:?} missing:\n{report}");
    }
}
