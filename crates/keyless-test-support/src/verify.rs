//! Proof that a credential an SDK client got from keyless is one the emulated cloud accepts: AWS
//! keys sign a `GetCallerIdentity` the emulator verifies (SigV4), a Google access token passes its
//! `tokeninfo`, ID tokens and Entra tokens verify against its published keys. For clients (Go,
//! Java) that print what they got for the test to check.

use aws_sdk_sts::config::{Credentials, SharedCredentialsProvider};
use serde_json::Value;

use crate::clients;
use crate::dev::Dev;
use crate::jwt::Jwks;

/// The ARN `GetCallerIdentity` names when signed with `credentials` (JSON with `access_key_id`,
/// `secret_access_key`, `session_token`); the test fails if the emulator refuses the signature.
pub async fn aws_caller_arn(dev: &Dev, credentials: &Value) -> String {
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
    let sts = clients::aws_sts(
        dev.var("AWS_ENDPOINT_URL_STS"),
        std::path::Path::new(dev.var("KEYLESS_EMULATOR_CA")),
        dev.var("AWS_REGION"),
        Some(SharedCredentialsProvider::new(keys)),
    );
    let who = sts.get_caller_identity().send().await.unwrap_or_else(|e| panic!("GetCallerIdentity refused: {e:?}"));
    who.arn().unwrap_or_default().to_owned()
}

/// The emulator's `tokeninfo` for a Google access token; the test fails unless it answers 200.
pub async fn google_tokeninfo(dev: &Dev, access_token: &str) -> Value {
    let response = dev
        .emulator
        .client()
        .get(dev.emulator.url("/tokeninfo"))
        .query(&[("access_token", access_token)])
        .send()
        .await
        .expect("tokeninfo answers");
    assert_eq!(response.status().as_u16(), 200, "tokeninfo refused the access token");
    response.json().await.expect("tokeninfo's JSON")
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
    let tenant = dev.var("KEYLESS_AZURE_TENANT_ID");
    let jwks = Jwks::fetch(dev.emulator.client(), &dev.emulator.url(&format!("/{tenant}/discovery/v2.0/keys"))).await;
    let claims = jwks.verify(token, resource, &format!("https://sts.windows.net/{tenant}/"));
    assert_eq!(claims["appid"], dev.var("KEYLESS_AZURE_CLIENT_ID"), "the token is not the identity's: {claims}");
    claims
}
