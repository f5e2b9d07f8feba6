//! The Rust SDKs as unmodified apps against the real binary: aws-config's default chain (container
//! endpoint, then IMDSv2) signing a GetCallerIdentity the emulator verifies, and azure_identity's
//! ManagedIdentityCredential through the App Service endpoint (the only route Rust apps have), and
//! google-cloud-auth's application-default credentials, which fall back to the metadata server
//! (found through `GCE_METADATA_HOST` alone) for an access token and an ID token.
//!
//! These SDKs read the process environment, which a test cannot set, so each client runs in a
//! child process (test-support's `child`): this test binary re-executed with exactly the app's
//! env, running the same test, which then plays the app (`is_child`).
#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::collections::BTreeMap;

use keyless_test_support::child::{ChildTest, is_child};
use keyless_test_support::dev::Dev;

/// Runs test `name` as its child with exactly `env` (and PATH, HOME); returns its stdout.
async fn run_child(dev: &Dev, name: &str, env: &BTreeMap<String, String>) -> String {
    ChildTest::new(name).clean_env(dev.dir.path()).envs(env).run(|| dev.logs()).await
}

#[tokio::test]
async fn aws_config_default_chain_uses_the_container_endpoint_then_imds() {
    const NAME: &str = "aws_config_default_chain_uses_the_container_endpoint_then_imds";
    if is_child(NAME) {
        return aws_whoami().await;
    }
    let dev = Dev::start().await;
    let out = run_child(&dev, NAME, &dev.env).await;
    assert!(out.contains("arn:aws:sts::123456789012:assumed-role/keyless-dev/"), "{out}");

    let imds_only = dev.env_without(&[
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_CONTAINER_AUTHORIZATION_TOKEN",
        "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
    ]);
    let out = run_child(&dev, NAME, &imds_only).await;
    assert!(out.contains("arn:aws:sts::123456789012:assumed-role/keyless-dev/"), "{out}");
}

/// The app: aws-config's default chain, configured by the env alone.
async fn aws_whoami() {
    let config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let sts = aws_sdk_sts::Client::new(&config);
    let me = sts.get_caller_identity().send().await.unwrap();
    println!("whoami {}", me.arn().unwrap_or_default());
}

#[tokio::test]
async fn azure_identity_managed_identity_credential_uses_the_app_service_endpoint() {
    const NAME: &str = "azure_identity_managed_identity_credential_uses_the_app_service_endpoint";
    if is_child(NAME) {
        return azure_token().await;
    }
    let dev = Dev::start().await;
    let out = run_child(&dev, NAME, &dev.env).await;
    assert!(out.contains("azure token with more than 30 minutes left"), "{out}");
}

/// The app: azure_identity's ManagedIdentityCredential, configured by the env alone.
async fn azure_token() {
    use azure_core::credentials::TokenCredential as _;
    let credential = azure_identity::ManagedIdentityCredential::new(None).unwrap();
    let token = credential.get_token(&["https://management.azure.com/.default"], None).await.unwrap();
    assert!(!token.token.secret().is_empty());
    let left = token.expires_on - azure_core::time::OffsetDateTime::now_utc();
    assert!(left > azure_core::time::Duration::minutes(30), "{left}");
    println!("azure token with more than 30 minutes left");
}

/// An ID-token audience with characters an encoder would change.
const GOOGLE_AUDIENCE: &str = "https://example.com/rust?a=1&b=2";

#[tokio::test]
async fn google_cloud_auth_default_credentials_use_the_metadata_server_for_access_and_id_tokens() {
    const NAME: &str = "google_cloud_auth_default_credentials_use_the_metadata_server_for_access_and_id_tokens";
    if is_child(NAME) {
        return google_tokens().await;
    }
    let dev = Dev::start().await;
    let out = run_child(&dev, NAME, &dev.env).await;
    let account = dev.var("KEYLESS_DEV_GCP_SERVICE_ACCOUNT");
    assert!(out.contains(&format!("tokeninfo 200 {account}")), "{out}");
    assert!(out.contains(&format!("id token for {GOOGLE_AUDIENCE} verified, email {account}")), "{out}");
}

/// The app: google-cloud-auth's application-default credentials, configured by the env alone.
async fn google_tokens() {
    // Application-default credentials: no GOOGLE_APPLICATION_CREDENTIALS and no gcloud file in
    // HOME, so the metadata server.
    let credentials = google_cloud_auth::credentials::Builder::default().build_access_token_credentials().unwrap();
    let token = credentials.access_token().await.unwrap();
    let emulator = std::env::var("KEYLESS_DEV_EMULATOR_URL").unwrap();
    let ca = std::fs::read(std::env::var("KEYLESS_DEV_EMULATOR_CA").unwrap()).unwrap();
    let http =
        reqwest::Client::builder().tls_certs_only([reqwest::Certificate::from_pem(&ca).unwrap()]).build().unwrap();
    let info = http.get(format!("{emulator}/tokeninfo")).query(&[("access_token", &token.token)]).send().await.unwrap();
    let status = info.status().as_u16();
    let info: serde_json::Value = info.json().await.unwrap();
    println!("tokeninfo {status} {}", info["email"].as_str().unwrap_or_default());

    let id_token = google_cloud_auth::credentials::idtoken::Builder::new(GOOGLE_AUDIENCE)
        .with_include_email()
        .build()
        .unwrap()
        .id_token()
        .await
        .unwrap();
    let claims = google_cloud_auth::credentials::idtoken::verifier::Builder::new([GOOGLE_AUDIENCE])
        .with_jwks_url(format!("{emulator}/oauth2/v3/certs"))
        .build()
        .verify(&id_token)
        .await
        .unwrap();
    println!("id token for {} verified, email {}", claims["aud"].as_str().unwrap(), claims["email"].as_str().unwrap());
}
