#![allow(clippy::unwrap_used)]

use keyless_emulator::Cloud;
use keyless_test_support::emulator::EmulatorEnv;
use keyless_test_support::jwt::Jwks;
use serde_json::{Value, json};

const SA: &str = "keyless-dev@keyless-dev.iam.gserviceaccount.com";

async fn exchange(env: &EmulatorEnv, audience: &str, subject_token: &str) -> (u16, Value) {
    let form = [
        ("grant_type", "urn:ietf:params:oauth:grant-type:token-exchange"),
        ("audience", audience),
        ("scope", "https://www.googleapis.com/auth/cloud-platform"),
        ("requested_token_type", "urn:ietf:params:oauth:token-type:access_token"),
        ("subject_token", subject_token),
        ("subject_token_type", "urn:ietf:params:oauth:token-type:jwt"),
    ];
    let response = env.client.post(env.url("/v1/token")).form(&form).send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

async fn federated_token(env: &EmulatorEnv, subject_token: &str) -> String {
    let audience = env.emulator.identities().gcp_audience();
    let (status, body) = exchange(env, &audience, subject_token).await;
    assert_eq!(status, 200, "{body}");
    body["access_token"].as_str().unwrap().to_owned()
}

async fn iam(env: &EmulatorEnv, email: &str, method: &str, bearer: &str, body: Value) -> (u16, Value) {
    let url = env.url(&format!("/v1/projects/-/serviceAccounts/{email}:{method}"));
    let response = env.client.post(url).bearer_auth(bearer).json(&body).send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

fn scope_body() -> Value {
    json!({ "scope": ["https://www.googleapis.com/auth/cloud-platform"], "lifetime": "3600s" })
}

#[tokio::test]
async fn sts_exchanges_the_projected_token_for_a_federated_token() {
    let env = EmulatorEnv::start().await;
    let audience = env.emulator.identities().gcp_audience();
    let (status, body) = exchange(&env, &audience, &env.projected(Cloud::Gcp)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["issued_token_type"], "urn:ietf:params:oauth:token-type:access_token");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3600);
    assert!(body["access_token"].as_str().unwrap().starts_with("ya29."));
    assert_eq!(env.emulator.counters().gcp_sts, 1);
}

#[tokio::test]
async fn gcp_sts_rejects_token_for_another_audience() {
    let env = EmulatorEnv::start().await;
    let audience = env.emulator.identities().gcp_audience();
    let (status, body) = exchange(&env, &audience, &env.projected(Cloud::Aws)).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "invalid_grant");
    assert!(body["error_description"].as_str().unwrap().contains("does not match the expected audience"));
}

#[tokio::test]
async fn gcp_sts_rejects_an_expired_token() {
    let env = EmulatorEnv::start().await;
    let audience = env.emulator.identities().gcp_audience();
    let token = env.mint(&audience, |c| c.exp_offset_secs = -1);
    let (status, body) = exchange(&env, &audience, &token).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_grant")), "{body}");
}

#[tokio::test]
async fn gcp_sts_rejects_a_token_signed_by_another_key() {
    let env = EmulatorEnv::start().await;
    let audience = env.emulator.identities().gcp_audience();
    let token = env.mint(&audience, |c| c.untrusted_key = true);
    let (status, body) = exchange(&env, &audience, &token).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_grant")), "{body}");
}

#[tokio::test]
async fn gcp_sts_rejects_an_unknown_provider() {
    let env = EmulatorEnv::start().await;
    let audience = "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/nope/providers/nope";
    let (status, body) = exchange(&env, audience, &env.projected(Cloud::Gcp)).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_target")), "{body}");
}

#[tokio::test]
async fn iam_issues_an_access_token_for_the_dev_principal_and_tokeninfo_describes_it() {
    let env = EmulatorEnv::start().await;
    let federated = federated_token(&env, &env.projected(Cloud::Gcp)).await;
    let (status, body) = iam(&env, SA, "generateAccessToken", &federated, scope_body()).await;
    assert_eq!(status, 200, "{body}");
    let access_token = body["accessToken"].as_str().unwrap();
    let expire_time = body["expireTime"].as_str().unwrap();
    assert!(expire_time.ends_with('Z') && expire_time.len() == 20, "{expire_time}");
    assert_eq!(env.emulator.counters().gcp_iam, 1);

    let info = env.get_json(&format!("/tokeninfo?access_token={access_token}")).await;
    assert_eq!(info["email"], SA);
    assert_eq!(info["email_verified"], "true");
    assert_eq!(info["scope"], "https://www.googleapis.com/auth/cloud-platform");
    assert_eq!(info["access_type"], "online");
    assert!(info["azp"].is_string() && info["aud"] == info["azp"]);
    let expires_in: i64 = info["expires_in"].as_str().unwrap().parse().unwrap();
    assert!((3590..=3600).contains(&expires_in), "{expires_in}");
    assert!(info["exp"].as_str().unwrap().parse::<i64>().is_ok());

    let federated_info = env.get_json(&format!("/tokeninfo?access_token={federated}")).await;
    assert_eq!(federated_info["scope"], "https://www.googleapis.com/auth/cloud-platform");
}

#[tokio::test]
async fn iam_denies_an_untrusted_subject() {
    let env = EmulatorEnv::start().await;
    let audience = env.emulator.identities().gcp_audience();
    let token = env.mint(&audience, |c| c.sub = Some("system:serviceaccount:other:intruder".into()));
    let federated = federated_token(&env, &token).await;
    let (status, body) = iam(&env, SA, "generateAccessToken", &federated, scope_body()).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        body,
        json!({"error": {
            "code": 403,
            "message": "Permission 'iam.serviceAccounts.getAccessToken' denied on resource (or it may not exist).",
            "status": "PERMISSION_DENIED"
        }})
    );
}

#[tokio::test]
async fn iam_denies_impersonating_another_service_account() {
    let env = EmulatorEnv::start().await;
    let federated = federated_token(&env, &env.projected(Cloud::Gcp)).await;
    let other = "admin@keyless-dev.iam.gserviceaccount.com";
    let (status, body) = iam(&env, other, "generateIdToken", &federated, json!({"audience": "x"})).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["status"], "PERMISSION_DENIED");
}

#[tokio::test]
async fn iam_rejects_an_unknown_bearer_token() {
    let env = EmulatorEnv::start().await;
    let (status, body) = iam(&env, SA, "generateAccessToken", "ya29.made-up", scope_body()).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["status"], "UNAUTHENTICATED");
}

#[tokio::test]
async fn iam_rejects_a_lifetime_over_one_hour_and_unknown_fields() {
    let env = EmulatorEnv::start().await;
    let federated = federated_token(&env, &env.projected(Cloud::Gcp)).await;
    let body = json!({"scope": ["https://www.googleapis.com/auth/cloud-platform"], "lifetime": "7200s"});
    let (status, response) = iam(&env, SA, "generateAccessToken", &federated, body).await;
    assert_eq!((status, &response["error"]["status"]), (400, &json!("INVALID_ARGUMENT")), "{response}");
    let body = json!({"scope": ["x"], "lifetme": "60s"});
    let (status, response) = iam(&env, SA, "generateAccessToken", &federated, body).await;
    assert_eq!((status, &response["error"]["status"]), (400, &json!("INVALID_ARGUMENT")), "{response}");
}

#[tokio::test]
async fn iam_id_tokens_verify_against_the_published_certs() {
    let env = EmulatorEnv::start().await;
    let federated = federated_token(&env, &env.projected(Cloud::Gcp)).await;
    let request = json!({"audience": "https://service.example", "includeEmail": true});
    let (status, body) = iam(&env, SA, "generateIdToken", &federated, request).await;
    assert_eq!(status, 200, "{body}");
    let certs = env.get_json("/oauth2/v3/certs").await;
    let token = body["token"].as_str().unwrap();
    let claims = Jwks::from_json(&certs).verify(token, "https://service.example", "https://accounts.google.com");
    assert_eq!(claims["email"], SA);
    assert_eq!(claims["email_verified"], true);
    assert!(claims["sub"].as_str().unwrap().chars().all(|c| c.is_ascii_digit()));
    assert_eq!(claims["azp"], claims["sub"]);
    assert_eq!(claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(), 3600);

    let request = json!({"audience": "https://service.example"});
    let (_, body) = iam(&env, SA, "generateIdToken", &federated, request).await;
    let claims = Jwks::from_json(&certs).verify(
        body["token"].as_str().unwrap(),
        "https://service.example",
        "https://accounts.google.com",
    );
    assert!(claims.get("email").is_none(), "no email unless includeEmail");
}

#[tokio::test]
async fn tokeninfo_rejects_tokens_it_did_not_issue() {
    let env = EmulatorEnv::start().await;
    let response = env.client.get(env.url("/tokeninfo?access_token=ya29.nope")).send().await.unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body, json!({"error": "invalid_token", "error_description": "Invalid Value"}));
}

/// `EmulatorConfig::credential_lifetime` (`keyless emulate --credential-lifetime`) caps every
/// Google credential, ID tokens included, from the start.
#[tokio::test]
async fn a_credential_lifetime_caps_federated_access_and_id_tokens() {
    let env = EmulatorEnv::start_with(|c| c.credential_lifetime = Some(std::time::Duration::from_secs(90))).await;
    let audience = env.emulator.identities().gcp_audience();
    let (status, body) = exchange(&env, &audience, &env.projected(Cloud::Gcp)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["expires_in"], 90, "{body}");
    let federated = body["access_token"].as_str().unwrap().to_owned();
    let (status, body) = iam(&env, SA, "generateAccessToken", &federated, scope_body()).await;
    assert_eq!(status, 200, "{body}");
    let expire_time = humantime::parse_rfc3339_weak(body["expireTime"].as_str().unwrap()).unwrap();
    let left = expire_time.duration_since(keyless_test_support::clock::wall_clock()).unwrap_or_default();
    assert!(left.as_secs() <= 90 && left.as_secs() >= 85, "{left:?}");
    let request = json!({"audience": "https://service.example"});
    let (status, body) = iam(&env, SA, "generateIdToken", &federated, request).await;
    assert_eq!(status, 200, "{body}");
    let certs = env.get_json("/oauth2/v3/certs").await;
    let claims = Jwks::from_json(&certs).verify(
        body["token"].as_str().unwrap(),
        "https://service.example",
        "https://accounts.google.com",
    );
    assert_eq!(claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(), 90);
}
