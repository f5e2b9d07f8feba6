//! Java SDK clients, unmodified, against `keyless dev`: the AWS SDK for Java v2, google-auth-library-java
//! and azure-identity (MSAL4J's managed identity), pinned in `tests/java/pom.xml` and compiled by
//! `scripts/test`. Each prints the credential it got; the test proves the emulated cloud accepts
//! it (SigV4 `GetCallerIdentity`, `tokeninfo`, ID and Entra tokens verified against the emulator's
//! keys) and reads which route served it from `keyless_requests_total`. Their traps
//! (docs/protocols.md 8): google-auth-java wants `Metadata-Flavor: Google` on the detection
//! response, MSAL4J asks IMDS for `//metadata/identity/oauth2/token`, and newer AWS SDKs ask for
//! `security-credentials-extended/` first, falling back only on a 404.
//!
//! Without Java or the compiled clients the tests skip, saying so; under `CI=true` they fail
//! (`tools::java_clients`).
#![allow(clippy::unwrap_used)]

use keyless_test_support::clients;
use keyless_test_support::dev::{AWS_CONTAINER_VARS, Dev};
use keyless_test_support::sdk::{App, json_of};
use keyless_test_support::tools;
use keyless_test_support::verify;

#[tokio::test]
#[cfg_attr(
    not(keyless_tools_java),
    ignore = "needs Java >= 17 and the pinned Java SDK clients (target/java): ./scripts/test compiles them with mvn"
)]
async fn aws_sdk_java_v2_default_chain_gets_credentials_from_the_container_endpoint_then_imdsv2() {
    let java = tools::need(tools::find_java_clients());
    let dev = Dev::start().await;

    // The container provider, the token read from AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE alone.
    let env = dev.env_without(&["AWS_CONTAINER_AUTHORIZATION_TOKEN"]);
    let out = json_of(&dev.run_ok_in(App::java(&java, "AwsCredentials", &[]), &env).await);
    verify::aws_from_container_endpoint(&dev, &out).await;

    // Without the container variables: the instance profile over IMDSv2.
    let env = dev.env_without(AWS_CONTAINER_VARS);
    let out = json_of(&dev.run_ok_in(App::java(&java, "AwsCredentials", &[]), &env).await);
    verify::aws_from_imdsv2(&dev, &out).await;
    // 2.57.8 asks for no `security-credentials-extended/` path (it would be counted as a 404 here).
    assert_eq!(dev.requests_counted("aws", "/latest/{*path}", 404).await, 0);
}

#[tokio::test]
async fn the_security_credentials_extended_path_answers_404_the_one_status_java_falls_back_on() {
    // SDK versions that ask for `security-credentials-extended/` first (the pinned 2.57.8 does
    // not: the test above counts no such request) fall back to `security-credentials/` only on a
    // 404; a 401/403/500 there would fail them.
    let dev = Dev::start().await;
    let base = dev.var("AWS_EC2_METADATA_SERVICE_ENDPOINT");
    let http = clients::loopback();
    let token_request = http.put(format!("{base}/latest/api/token"));
    let token = clients::answer_text(token_request.header("x-aws-ec2-metadata-token-ttl-seconds", "21600")).await;
    let role = dev.var("KEYLESS_DEV_AWS_ROLE_ARN").rsplit('/').next().unwrap().to_owned();
    for path in ["", role.as_str()] {
        let url = format!("{base}/latest/meta-data/iam/security-credentials-extended/{path}");
        let response = http.get(url).header("x-aws-ec2-metadata-token", &token).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 404, "security-credentials-extended/{path}");
    }
}

#[tokio::test]
#[cfg_attr(
    not(keyless_tools_java),
    ignore = "needs Java >= 17 and the pinned Java SDK clients (target/java): ./scripts/test compiles them with mvn"
)]
async fn google_auth_library_java_detects_the_metadata_server_and_gets_verified_access_and_id_tokens() {
    let java = tools::need(tools::find_java_clients());
    let dev = Dev::start().await;
    let audience = verify::AWKWARD_AUDIENCE;
    let out = json_of(&dev.run_ok_in(App::java(&java, "GcpCredentials", &[audience]), &dev.env).await);
    assert_eq!(out["client"], "ComputeEngineCredentials", "{out}");
    verify::google_tokens(&dev, &out, audience).await;
    // Its detection: `GET /` whose response must carry `Metadata-Flavor: Google`.
    assert!(dev.requests_counted("gcp", "/", 200).await >= 1);
    assert!(dev.requests_counted("gcp", "/computeMetadata/{*path}", 200).await >= 2);
}

#[tokio::test]
#[cfg_attr(
    not(keyless_tools_java),
    ignore = "needs Java >= 17 and the pinned Java SDK clients (target/java): ./scripts/test compiles them with mvn"
)]
async fn azure_identity_java_gets_tokens_on_app_service_and_on_imds_through_msal4js_double_slash() {
    let java = tools::need(tools::find_java_clients());
    let dev = Dev::start().await;

    // App Service variables present: ManagedIdentityCredential uses them.
    let managed = App::java(&java, "AzureCredentials", &["managed", "https://vault.azure.net/.default"]);
    let out = json_of(&dev.run_ok_in(managed, &dev.env).await);
    verify::entra_output(&dev, &out, "https://vault.azure.net").await;
    assert!(dev.requests_counted("azure", "/msi/token", 200).await >= 1);

    // Without them: DefaultAzureCredential probes and asks IMDS at AZURE_POD_IDENTITY_AUTHORITY_HOST,
    // MSAL4J with a second slash before the path.
    let env = dev.env_without(&["IDENTITY_ENDPOINT", "IDENTITY_HEADER"]);
    let default = App::java(&java, "AzureCredentials", &["default", "https://management.azure.com/.default"]);
    let out = json_of(&dev.run_ok_in(default, &env).await);
    verify::entra_output(&dev, &out, "https://management.azure.com").await;
    assert!(dev.requests_counted("azure", "//metadata/identity/oauth2/token", 200).await >= 1);
}
