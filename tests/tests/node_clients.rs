//! Node.js SDK clients, unmodified, against `keyless dev`: the AWS SDK for JavaScript v3,
//! google-auth-library and @azure/identity (msal-node), pinned in `tests/node/package-lock.json`.
//! Each one has its own traps (docs/protocols.md 2.2, 2.3, 3.3, 4.2): `fromHttp` prefers the token file, the JS IMDS client
//! ignores any path, gcp-metadata wants `Metadata-Flavor` on every response and does not URL-encode
//! an ID-token audience, msal-node asks IMDS for `.../token/` with a trailing slash, and Node trusts
//! only `NODE_EXTRA_CA_CERTS` for the emulator. Which route served each client is read from
//! `keyless_requests_total`.
//!
//! Without Node.js the tests skip, saying so; under `CI=true` they fail (`tools::node_clients`).
#![allow(clippy::unwrap_used)]

use keyless_test_support::dev::{AWS_CONTAINER_VARS, Dev};
use keyless_test_support::sdk::json_of;
use keyless_test_support::tools;
use keyless_test_support::verify;

#[tokio::test]
#[cfg_attr(
    not(keyless_tools_node),
    ignore = "needs Node.js >= 20 and the pinned Node SDK clients (target/node): ./scripts/test installs them"
)]
async fn aws_sdk_js_signs_with_credentials_from_the_container_endpoint_and_from_imdsv2() {
    let node = tools::need(tools::find_node_clients());
    let dev = Dev::start().await;

    // The default chain with the container variables: `fromHttp`, token from the file.
    let out = json_of(&dev.node_ok_in(&node, "aws.cjs", &[], &dev.env).await);
    verify::aws_from_container_endpoint(&dev, &out).await;

    // Without them: the JS IMDS client, IMDSv2 only, at the root of the listener.
    let mut env = dev.env_without(AWS_CONTAINER_VARS);
    env.insert("AWS_EC2_METADATA_V1_DISABLED".into(), "true".into());
    let out = json_of(&dev.node_ok_in(&node, "aws.cjs", &[], &env).await);
    verify::aws_from_imdsv2(&dev, &out).await;
}

#[tokio::test]
#[cfg_attr(
    not(keyless_tools_node),
    ignore = "needs Node.js >= 20 and the pinned Node SDK clients (target/node): ./scripts/test installs them"
)]
async fn google_auth_library_finds_the_metadata_server_and_gets_verified_access_and_id_tokens() {
    let node = tools::need(tools::find_node_clients());
    let dev = Dev::start().await;
    // Characters a URL-encoder would change: the ID token must carry the audience as given.
    let audience = verify::AWKWARD_AUDIENCE;
    let out = json_of(&dev.node_ok_in(&node, "gcp.cjs", &[audience], &dev.env).await);
    let account = dev.var("KEYLESS_DEV_GCP_SERVICE_ACCOUNT");
    assert_eq!(out["client"], "Compute", "{out}");
    assert_eq!(out["tokeninfo"], 200, "the emulator's tokeninfo refused the access token: {out}");
    assert_eq!(out["tokeninfo_email"], account, "{out}");
    assert_eq!(out["project"], dev.var("KEYLESS_DEV_GCP_PROJECT_ID"), "{out}");
    assert_eq!(out["email"], account, "{out}");
    assert_eq!(out["id_token_aud"], audience, "{out}");
    assert_eq!(out["id_token_email"], account, "{out}");
}

#[tokio::test]
#[cfg_attr(
    not(keyless_tools_node),
    ignore = "needs Node.js >= 20 and the pinned Node SDK clients (target/node): ./scripts/test installs them"
)]
async fn azure_identity_js_gets_tokens_on_app_service_and_on_imds_with_msal_nodes_trailing_slash() {
    let node = tools::need(tools::find_node_clients());
    let dev = Dev::start().await;
    let client_id = dev.var("KEYLESS_DEV_AZURE_CLIENT_ID");

    // App Service variables present: ManagedIdentityCredential uses them.
    let out =
        json_of(&dev.node_ok_in(&node, "azure.cjs", &["managed", "https://vault.azure.net/.default"], &dev.env).await);
    assert_eq!(out["aud"], "https://vault.azure.net", "{out}");
    assert_eq!(out["appid"], client_id, "{out}");
    assert!(out["left_s"].as_i64().unwrap() > 55 * 60, "{out}");
    assert!(dev.requests_counted("azure", "/msi/token", 200).await >= 1);

    // Without them: DefaultAzureCredential reaches IMDS through AZURE_POD_IDENTITY_AUTHORITY_HOST,
    // and msal-node asks for the path with a slash before the query.
    let env = dev.env_without(&["IDENTITY_ENDPOINT", "IDENTITY_HEADER"]);
    let out =
        json_of(&dev.node_ok_in(&node, "azure.cjs", &["default", "https://management.azure.com/.default"], &env).await);
    assert_eq!(out["aud"], "https://management.azure.com", "{out}");
    assert_eq!(out["appid"], client_id, "{out}");
    assert!(dev.requests_counted("azure", "/metadata/identity/oauth2/token/", 200).await >= 1);
}
