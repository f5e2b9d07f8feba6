//! Proof that a credential an SDK client got from keyless is one the emulated cloud accepts: AWS
//! keys sign a `GetCallerIdentity` the emulator verifies (SigV4), a Google access token passes its
//! `tokeninfo`, ID tokens and Entra tokens verify against its published keys. For clients (Go,
//! Java) that print what they got for the test to check; the checks each SDK matrix (Go, Java,
//! Node) makes of the same route are here once.

use std::time::Duration;

use aws_sdk_sts::config::{Credentials, SharedCredentialsProvider};
use serde_json::Value;

use crate::clients;
use crate::clock::{parse_rfc3339_utc, wall_clock};
use crate::dev::Dev;
use crate::jwt::Jwks;

/// An ID-token audience with characters a URL encoder changes: a client that encodes the query
/// must get it back as given.
pub const AWKWARD_AUDIENCE: &str = "https://example.com/run?service=a b&v=1";

/// That an AWS client's output (`expiration`, and `arn` if the client signed a call itself, else
/// the keys [`aws_caller_arn`] checks) is the dev role's, served by the container endpoint with
/// more than 15 minutes left, and that no IMDS token was asked for.
pub async fn aws_from_container_endpoint(dev: &Dev, out: &Value) {
    assert_dev_role(dev, out).await;
    let expiration = out["expiration"].as_str().and_then(parse_rfc3339_utc);
    let expiration = expiration.unwrap_or_else(|| panic!("no RFC 3339 expiration: {out}"));
    assert!(expiration > wall_clock() + Duration::from_secs(15 * 60), "served with too little left: {out}");
    assert!(dev.requests_counted("aws", "/v1/credentials", 200).await >= 1);
    assert_eq!(dev.requests_counted("aws", "/latest/api/token", 200).await, 0);
}

/// That an AWS client's output is the dev role's, served by IMDSv2 (a session token, then the
/// role's credentials).
pub async fn aws_from_imdsv2(dev: &Dev, out: &Value) {
    assert_dev_role(dev, out).await;
    assert!(dev.requests_counted("aws", "/latest/api/token", 200).await >= 1);
    assert!(dev.requests_counted("aws", "/latest/meta-data/iam/security-credentials/{role}", 200).await >= 1);
}

async fn assert_dev_role(dev: &Dev, out: &Value) {
    let role = dev.var("KEYLESS_DEV_AWS_ROLE_ARN").rsplit('/').next().unwrap_or_default();
    let arn = match out["arn"].as_str() {
        Some(arn) => arn.to_owned(),
        None => aws_caller_arn(dev, out).await,
    };
    assert!(arn.contains(&format!("assumed-role/{role}/")), "not the dev role's: {arn}\n{out}");
}

/// That a Google client's output (`email`, `access_token`, `id_token` for `audience`) is the dev
/// service account's, each token accepted by the emulated Google.
pub async fn google_tokens(dev: &Dev, out: &Value, audience: &str) {
    let account = dev.var("KEYLESS_DEV_GCP_SERVICE_ACCOUNT");
    let field = |name: &str| out[name].as_str().unwrap_or_else(|| panic!("{name} missing: {out}")).to_owned();
    assert_eq!(field("email"), account, "{out}");
    let info = google_tokeninfo(dev, &field("access_token")).await;
    assert_eq!(info["email"], account, "{info}");
    let claims = google_id_token(dev, &field("id_token"), audience).await;
    assert_eq!(claims["email"], account, "{claims}");
}

/// That an Azure client's output (`token`, `left_s`) is an Entra token of the identity for
/// `resource` with more than 55 minutes left.
pub async fn entra_output(dev: &Dev, out: &Value, resource: &str) {
    let token = out["token"].as_str().unwrap_or_else(|| panic!("token missing: {out}"));
    entra_token(dev, token, resource).await;
    assert!(out["left_s"].as_i64().is_some_and(|left| left > 55 * 60), "served with too little left: {out}");
}

/// The ARN `GetCallerIdentity` names when signed with `credentials` (JSON with `access_key_id`,
/// `secret_access_key`, `session_token`); the test fails if the emulator refuses the signature.
pub async fn aws_caller_arn(dev: &Dev, credentials: &Value) -> String {
    let ca = std::path::Path::new(dev.var("KEYLESS_DEV_EMULATOR_CA"));
    aws_caller_arn_at(dev.var("AWS_ENDPOINT_URL_STS"), ca, dev.var("AWS_REGION"), credentials).await
}

/// [`aws_caller_arn`] against the STS at `endpoint` (trusting `ca`) in `region`.
pub async fn aws_caller_arn_at(endpoint: &str, ca: &std::path::Path, region: &str, credentials: &Value) -> String {
    let field = |name: &str| {
        credentials[name].as_str().unwrap_or_else(|| panic!("{name} missing from the client's output")).to_owned()
    };
    let keys = Credentials::new(
        field("access_key_id"),
        field("secret_access_key"),
        Some(field("session_token")),
        None,
        "sdk-client",
    );
    let sts = clients::aws_sts(endpoint, ca, region, Some(SharedCredentialsProvider::new(keys)));
    let who = sts.get_caller_identity().send().await.unwrap_or_else(|e| panic!("GetCallerIdentity refused: {e:?}"));
    who.arn().unwrap_or_default().to_owned()
}

/// The emulator's `tokeninfo` for a Google access token; the test fails unless it answers 200.
pub async fn google_tokeninfo(dev: &Dev, access_token: &str) -> Value {
    dev.emulator.tokeninfo(access_token, "the access token").await
}

/// The claims of a Google ID token for `audience`, verified against the emulator's
/// `/oauth2/v3/certs` (signature, expiry, `aud` exactly, issuer `https://accounts.google.com`).
pub async fn google_id_token(dev: &Dev, id_token: &str, audience: &str) -> Value {
    let jwks = Jwks::fetch(dev.emulator.client(), &dev.emulator.url("/oauth2/v3/certs")).await;
    jwks.verify(id_token, audience, "https://accounts.google.com")
}

/// The claims of an Entra access token for `resource`, verified against the tenant's keys
/// (signature, expiry, `aud` exactly, issuer `https://sts.windows.net/{tenant}/`), with the
/// identity's `appid`.
pub async fn entra_token(dev: &Dev, token: &str, resource: &str) -> Value {
    let tenant = dev.var("KEYLESS_DEV_AZURE_TENANT_ID");
    let jwks = Jwks::fetch(dev.emulator.client(), &dev.emulator.url(&format!("/{tenant}/discovery/v2.0/keys"))).await;
    let claims = jwks.verify(token, resource, &format!("https://sts.windows.net/{tenant}/"));
    assert_eq!(claims["appid"], dev.var("KEYLESS_DEV_AZURE_CLIENT_ID"), "the token is not the identity's: {claims}");
    claims
}
