//! The Rust SDKs as unmodified apps against the real binary: aws-config's default chain (container
//! endpoint, then IMDSv2) signing a GetCallerIdentity the emulator verifies, and azure_identity's
//! ManagedIdentityCredential through the App Service endpoint (the only route Rust apps have), and
//! google-cloud-auth's application-default credentials, which fall back to the metadata server
//! (found through `GCE_METADATA_HOST` alone) for an access token and an ID token.
//!
//! These SDKs read the process environment, which a test cannot set (edition 2024 makes
//! `set_var` unsafe and unsafe code is forbidden), so each client runs in a child process: this
//! test binary re-executed with the app's env, running one `child_*` test that does nothing
//! unless the marker variable is set.
#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::collections::BTreeMap;

use keyless_e2e::Dev;

const CHILD_MARKER: &str = "KEYLESS_E2E_RUST_CHILD";

/// Runs child test `name` with exactly `env`; returns its stdout.
async fn run_child(dev: &Dev, name: &str, env: &BTreeMap<String, String>) -> String {
    let out = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", dev.dir.path())
        .env(CHILD_MARKER, "1")
        .envs(env)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "child {name} failed:\n{stdout}\n{}\n--- keyless\n{}",
        String::from_utf8_lossy(&out.stderr),
        dev.logs()
    );
    stdout
}

fn is_child() -> bool {
    std::env::var_os(CHILD_MARKER).is_some()
}

#[tokio::test]
async fn aws_config_default_chain_uses_the_container_endpoint_then_imds() {
    let dev = Dev::start().await;
    let out = run_child(&dev, "child_aws_whoami", &dev.env).await;
    assert!(out.contains("arn:aws:sts::123456789012:assumed-role/keyless-dev/"), "{out}");

    let imds_only = dev.env_without(&[
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_CONTAINER_AUTHORIZATION_TOKEN",
        "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
    ]);
    let out = run_child(&dev, "child_aws_whoami", &imds_only).await;
    assert!(out.contains("arn:aws:sts::123456789012:assumed-role/keyless-dev/"), "{out}");
}

#[tokio::test]
async fn child_aws_whoami() {
    if !is_child() {
        return;
    }
    let config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let sts = aws_sdk_sts::Client::new(&config);
    let me = sts.get_caller_identity().send().await.unwrap();
    println!("whoami {}", me.arn().unwrap_or_default());
}

#[tokio::test]
async fn azure_identity_managed_identity_credential_uses_the_app_service_endpoint() {
    let dev = Dev::start().await;
    let out = run_child(&dev, "child_azure_token", &dev.env).await;
    assert!(out.contains("azure token with more than 30 minutes left"), "{out}");
}

#[tokio::test]
async fn child_azure_token() {
    use azure_core::credentials::TokenCredential as _;
    if !is_child() {
        return;
    }
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
    let dev = Dev::start().await;
    let out = run_child(&dev, "child_google_tokens", &dev.env).await;
    let account = dev.var("KEYLESS_GCP_SERVICE_ACCOUNT");
    assert!(out.contains(&format!("tokeninfo 200 {account}")), "{out}");
    assert!(out.contains(&format!("id token for {GOOGLE_AUDIENCE} verified, email {account}")), "{out}");
}

#[tokio::test]
async fn child_google_tokens() {
    if !is_child() {
        return;
    }
    // Application-default credentials: no GOOGLE_APPLICATION_CREDENTIALS and no gcloud file in
    // HOME, so the metadata server.
    let credentials = google_cloud_auth::credentials::Builder::default().build_access_token_credentials().unwrap();
    let token = credentials.access_token().await.unwrap();
    let emulator = std::env::var("KEYLESS_EMULATOR_URL").unwrap();
    let ca = std::fs::read(std::env::var("KEYLESS_EMULATOR_CA").unwrap()).unwrap();
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
