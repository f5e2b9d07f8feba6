//! Go SDK clients, unmodified, against `keyless dev`: aws-sdk-go-v2, golang.org/x/oauth2/google,
//! cloud.google.com/go/compute/metadata, google.golang.org/api/idtoken and azidentity, pinned in
//! `tests/go/go.mod` and built by `scripts/test`. Each prints the credential it got; the test proves
//! the emulated cloud accepts it (SigV4 `GetCallerIdentity`, `tokeninfo`, ID and Entra tokens
//! verified against the emulator's keys) and reads which route served it from
//! `keyless_requests_total`. Their traps (docs/protocols.md 8): Go refuses a container
//! authorization token with a `\r` or `\n`, and azidentity's IMDS host is hard-coded.
//!
//! Without the built clients the tests skip, saying so; under `CI=true` they fail (`tools::go_clients`).
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use keyless_test_support::clock::{parse_rfc3339_utc, wall_clock};
use keyless_test_support::dev::Dev;
use keyless_test_support::tools::go_clients;
use keyless_test_support::verify;
use serde_json::Value;

fn json(out: &str) -> Value {
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

const CONTAINER_VARS: &[&str] = &[
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
];

#[tokio::test]
async fn aws_sdk_go_v2_gets_credentials_from_the_container_endpoint_with_the_token_file_and_from_imdsv2() {
    let Some(go) = go_clients() else { return };
    let dev = Dev::start().await;
    let role = dev.var("KEYLESS_AWS_ROLE_ARN").rsplit('/').next().unwrap().to_owned();

    // The container endpoint, the token read from the file alone (Go re-reads it on every call).
    let env = dev.env_without(&["AWS_CONTAINER_AUTHORIZATION_TOKEN"]);
    let out = json(&dev.go_ok_in(&go, "aws", &[], &env).await);
    assert!(verify::aws_caller_arn(&dev, &out).await.contains(&format!("assumed-role/{role}/")), "{out}");
    let expiration = parse_rfc3339_utc(out["expiration"].as_str().unwrap()).unwrap();
    assert!(expiration > wall_clock() + Duration::from_secs(15 * 60), "served with too little left: {out}");
    assert!(dev.requests_counted("aws", "/v1/credentials", 200).await >= 1);
    assert_eq!(dev.requests_counted("aws", "/latest/api/token", 200).await, 0);

    // Without the container variables: IMDSv2 at AWS_EC2_METADATA_SERVICE_ENDPOINT.
    let env = dev.env_without(CONTAINER_VARS);
    let out = json(&dev.go_ok_in(&go, "aws", &[], &env).await);
    assert!(verify::aws_caller_arn(&dev, &out).await.contains(&format!("assumed-role/{role}/")), "{out}");
    assert!(dev.requests_counted("aws", "/latest/api/token", 200).await >= 1);
    assert!(dev.requests_counted("aws", "/latest/meta-data/iam/security-credentials/{role}", 200).await >= 1);
}

#[tokio::test]
async fn aws_sdk_go_v2_refuses_a_token_file_ending_in_a_newline_so_keyless_writes_none() {
    let Some(go) = go_clients() else { return };
    let dev = Dev::start().await;
    let file = dev.var("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE");
    let token = std::fs::read_to_string(file).unwrap();
    assert!(!token.contains(['\r', '\n']), "keyless's token file holds a line break, which Go refuses");

    // The same token with the newline an editor or `echo` adds: Go refuses it before any request.
    let with_newline = dev.dir.path().join("token-with-newline");
    std::fs::write(&with_newline, format!("{token}\n")).unwrap();
    let mut env = dev.env_without(&["AWS_CONTAINER_AUTHORIZATION_TOKEN"]);
    env.insert("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE".into(), with_newline.display().to_string());
    let out = dev.go_in(&go, "aws", &[], &env).await;
    assert!(!out.status.success(), "Go accepted a token with a newline");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("invalid newline sequence"), "{stderr}");
    assert_eq!(dev.requests_counted("aws", "/v1/credentials", 200).await, 0);
}

#[tokio::test]
async fn google_go_clients_get_a_verified_access_token_and_id_token_from_the_metadata_server() {
    let Some(go) = go_clients() else { return };
    let dev = Dev::start().await;
    let account = dev.var("KEYLESS_GCP_SERVICE_ACCOUNT");
    // Characters a URL-encoder changes: idtoken encodes the query, keyless must decode it.
    let audience = "https://example.com/run?service=a b&v=1";
    let out = json(&dev.go_ok_in(&go, "gcp", &[audience], &dev.env).await);
    assert_eq!(out["on_gce"], true, "GCE_METADATA_HOST set means on GCE, without a probe: {out}");
    assert_eq!(out["project"], dev.var("KEYLESS_GCP_PROJECT_ID"), "{out}");
    assert_eq!(out["adc_project"], dev.var("KEYLESS_GCP_PROJECT_ID"), "{out}");
    assert_eq!(out["email"], account, "{out}");
    let info = verify::google_tokeninfo(&dev, out["access_token"].as_str().unwrap()).await;
    assert_eq!(info["email"], account, "{info}");
    let claims = verify::google_id_token(&dev, out["id_token"].as_str().unwrap(), audience).await;
    assert_eq!(claims["email"], account, "{claims}");
    assert!(dev.requests_counted("gcp", "/computeMetadata/{*path}", 200).await >= 4);
}

#[tokio::test]
async fn azidentity_gets_tokens_on_app_service_and_cannot_reach_keyless_imds_from_go() {
    let Some(go) = go_clients() else { return };
    let dev = Dev::start().await;

    // App Service variables present: both credentials use them.
    for (which, resource) in [("managed", "https://vault.azure.net"), ("default", "https://management.azure.com")] {
        let scope = format!("{resource}/.default");
        let out = json(&dev.go_ok_in(&go, "azure", &[which, &scope], &dev.env).await);
        verify::entra_token(&dev, out["token"].as_str().unwrap(), resource).await;
        assert!(out["left_s"].as_i64().unwrap() > 55 * 60, "{out}");
    }
    assert!(dev.requests_counted("azure", "/msi/token", 200).await >= 2);

    // Without them: MSAL Go ignores AZURE_POD_IDENTITY_AUTHORITY_HOST and DefaultAzureCredential
    // probes the hard-coded 169.254.169.254 (here through a closed loopback proxy: nothing leaves
    // the machine). Go reaches keyless's IMDS only where that address is routed to it.
    let env = dev.env_without(&["IDENTITY_ENDPOINT", "IDENTITY_HEADER"]);
    let out = dev.go_in(&go, "azure", &["default", "https://vault.azure.net/.default"], &env).await;
    assert!(!out.status.success(), "Go got an Azure token without the App Service variables");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("http://169.254.169.254/metadata/identity/oauth2/token"), "{stderr}");
    for path in ["/metadata/identity/oauth2/token", "/metadata/identity/oauth2/token/"] {
        for status in [200, 400] {
            assert_eq!(dev.requests_counted("azure", path, status).await, 0, "{path} {status}");
        }
    }
}
