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

use keyless_test_support::dev::{AWS_CONTAINER_VARS, Dev};
use keyless_test_support::sdk::{App, json_of};
use keyless_test_support::tools;
use keyless_test_support::verify;

#[tokio::test]
#[cfg_attr(
    not(keyless_tools_go),
    ignore = "needs the pinned Go SDK clients (target/go/bin): ./scripts/test builds them with go >= 1.26"
)]
async fn aws_sdk_go_v2_gets_credentials_from_the_container_endpoint_with_the_token_file_and_from_imdsv2() {
    let go = tools::need(tools::find_go_clients());
    let dev = Dev::start().await;

    // The container endpoint, the token read from the file alone (Go re-reads it on every call).
    let env = dev.env_without(&["AWS_CONTAINER_AUTHORIZATION_TOKEN"]);
    let out = json_of(&dev.run_ok_in(App::go(&go, "aws", &[]), &env).await);
    verify::aws_from_container_endpoint(&dev, &out).await;

    // Without the container variables: IMDSv2 at AWS_EC2_METADATA_SERVICE_ENDPOINT.
    let env = dev.env_without(AWS_CONTAINER_VARS);
    let out = json_of(&dev.run_ok_in(App::go(&go, "aws", &[]), &env).await);
    verify::aws_from_imdsv2(&dev, &out).await;
}

#[tokio::test]
#[cfg_attr(
    not(keyless_tools_go),
    ignore = "needs the pinned Go SDK clients (target/go/bin): ./scripts/test builds them with go >= 1.26"
)]
async fn aws_sdk_go_v2_refuses_a_token_file_ending_in_a_newline_so_keyless_writes_none() {
    let go = tools::need(tools::find_go_clients());
    let dev = Dev::start().await;
    let file = dev.var("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE");
    let token = std::fs::read_to_string(file).unwrap();
    assert!(!token.contains(['\r', '\n']), "keyless's token file holds a line break, which Go refuses");

    // The same token with the newline an editor or `echo` adds: Go refuses it before any request.
    let with_newline = dev.dir.path().join("token-with-newline");
    std::fs::write(&with_newline, format!("{token}\n")).unwrap();
    let mut env = dev.env_without(&["AWS_CONTAINER_AUTHORIZATION_TOKEN"]);
    env.insert("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE".into(), with_newline.display().to_string());
    let out = dev.run_in(App::go(&go, "aws", &[]), &env).await;
    assert!(!out.status.success(), "Go accepted a token with a newline");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("invalid newline sequence"), "{stderr}");
    assert_eq!(dev.requests_counted("aws", "/v1/credentials", 200).await, 0);
}

#[tokio::test]
#[cfg_attr(
    not(keyless_tools_go),
    ignore = "needs the pinned Go SDK clients (target/go/bin): ./scripts/test builds them with go >= 1.26"
)]
async fn google_go_clients_get_a_verified_access_token_and_id_token_from_the_metadata_server() {
    let go = tools::need(tools::find_go_clients());
    let dev = Dev::start().await;
    // Characters a URL-encoder changes: idtoken encodes the query, keyless must decode it.
    let audience = verify::AWKWARD_AUDIENCE;
    let out = json_of(&dev.run_ok_in(App::go(&go, "gcp", &[audience]), &dev.env).await);
    assert_eq!(out["on_gce"], true, "GCE_METADATA_HOST set means on GCE, without a probe: {out}");
    assert_eq!(out["project"], dev.var("KEYLESS_DEV_GCP_PROJECT_ID"), "{out}");
    assert_eq!(out["adc_project"], dev.var("KEYLESS_DEV_GCP_PROJECT_ID"), "{out}");
    verify::google_tokens(&dev, &out, audience).await;
    assert!(dev.requests_counted("gcp", "/computeMetadata/{*path}", 200).await >= 4);
}

#[tokio::test]
#[cfg_attr(
    not(keyless_tools_go),
    ignore = "needs the pinned Go SDK clients (target/go/bin): ./scripts/test builds them with go >= 1.26"
)]
async fn azidentity_gets_tokens_on_app_service_and_cannot_reach_keyless_imds_from_go() {
    let go = tools::need(tools::find_go_clients());
    let dev = Dev::start().await;

    // App Service variables present: both credentials use them.
    for (which, resource) in [("managed", "https://vault.azure.net"), ("default", "https://management.azure.com")] {
        let scope = format!("{resource}/.default");
        let out = json_of(&dev.run_ok_in(App::go(&go, "azure", &[which, &scope]), &dev.env).await);
        verify::entra_output(&dev, &out, resource).await;
    }
    assert!(dev.requests_counted("azure", "/msi/token", 200).await >= 2);

    // Without them: MSAL Go ignores AZURE_POD_IDENTITY_AUTHORITY_HOST and DefaultAzureCredential
    // probes the hard-coded 169.254.169.254 (here through a closed loopback proxy: nothing leaves
    // the machine). Go reaches keyless's IMDS only where that address is routed to it.
    let env = dev.env_without(&["IDENTITY_ENDPOINT", "IDENTITY_HEADER"]);
    let out = dev.run_in(App::go(&go, "azure", &["default", "https://vault.azure.net/.default"]), &env).await;
    assert!(!out.status.success(), "Go got an Azure token without the App Service variables");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("http://169.254.169.254/metadata/identity/oauth2/token"), "{stderr}");
    for path in ["/metadata/identity/oauth2/token", "/metadata/identity/oauth2/token/"] {
        for status in [200, 400] {
            assert_eq!(dev.requests_counted("azure", path, status).await, 0, "{path} {status}");
        }
    }
}
