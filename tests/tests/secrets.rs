//! the security rules, docs/reliability.md: no token, key or secret in any log line at any level. Runs every cloud's
//! client flow against `keyless dev` at trace level, collects every secret the clients received,
//! and greps the whole log for each.
#![allow(clippy::unwrap_used)]

use keyless_test_support::dev::Dev;
use keyless_test_support::logs::assert_holds_no_secret;

/// Prints one secret per line: everything the SDKs obtained through keyless.
const COLLECT: &str = r#"
import os, json
import boto3, google.auth, google.auth.transport.requests
from google.auth import compute_engine
from azure.identity import ManagedIdentityCredential

c = boto3.Session().get_credentials().get_frozen_credentials()
print(c.access_key); print(c.secret_key); print(c.token)

request = google.auth.transport.requests.Request()
creds, _ = google.auth.default()
creds.refresh(request)
print(creds.token)
idc = compute_engine.IDTokenCredentials(request, target_audience="https://example.test", use_metadata_identity_endpoint=True)
idc.refresh(request)
print(idc.token)

print(ManagedIdentityCredential().get_token("https://management.azure.com/.default").token)
"#;

#[tokio::test]
async fn trace_logs_of_a_full_session_hold_none_of_the_secrets_served() {
    let dev = Dev::start_with(&[("KEYLESS_LOG", "trace")]).await;
    let out = dev.python_ok(COLLECT).await;
    let mut secrets: Vec<String> = out.lines().map(str::to_owned).collect();
    assert_eq!(secrets.len(), 6, "{out}");
    secrets.push(dev.var("AWS_CONTAINER_AUTHORIZATION_TOKEN").to_owned());
    secrets.push(dev.var("IDENTITY_HEADER").to_owned());
    for cloud in ["aws", "gcp", "azure"] {
        let token = std::fs::read_to_string(dev.dir.path().join(format!("state/tokens/{cloud}/token"))).unwrap();
        secrets.push(token);
    }
    let metrics = dev.metrics().await;
    let logs = dev.logs();
    assert!(logs.contains("TRACE"), "the log is not at trace level");
    // Each secret whole and in parts (a window from its middle, its tail, a JWT's payload and
    // signature).
    assert_holds_no_secret(&logs, &secrets, "the logs");
    assert_holds_no_secret(&metrics, &secrets, "/metrics");
}
