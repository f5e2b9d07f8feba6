#![allow(clippy::unwrap_used)]

use keyless_emulator::Cloud;
use keyless_test_support::emulator::EmulatorEnv;
use keyless_test_support::jwt::Jwks;
use serde_json::Value;

const SCOPE: &str = "https://management.azure.com//.default";

async fn token_request(env: &EmulatorEnv, tenant: &str, client_id: &str, scope: &str, assertion: &str) -> (u16, Value) {
    let form = [
        ("client_id", client_id),
        ("scope", scope),
        ("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"),
        ("client_assertion", assertion),
        ("grant_type", "client_credentials"),
    ];
    let url = env.url(&format!("/{tenant}/oauth2/v2.0/token"));
    let response = env.client.post(url).form(&form).send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

async fn dev_request(env: &EmulatorEnv, assertion: &str) -> (u16, Value) {
    let ids = env.emulator.identities().clone();
    token_request(env, &ids.azure_tenant_id, &ids.azure_client_id, SCOPE, assertion).await
}

fn assert_aadsts(status: u16, body: &Value, expected_status: u16, error: &str, code: u64) {
    assert_eq!(status, expected_status, "{body}");
    assert_eq!(body["error"], error, "{body}");
    assert_eq!(body["error_codes"], serde_json::json!([code]), "{body}");
    assert!(body["error_description"].as_str().unwrap().starts_with(&format!("AADSTS{code}: ")), "{body}");
    for field in ["timestamp", "trace_id", "correlation_id"] {
        assert!(body[field].is_string(), "{field} in {body}");
    }
}

#[tokio::test]
async fn entra_issues_an_access_token_that_verifies_against_the_tenant_keys() {
    let env = EmulatorEnv::start().await;
    let ids = env.emulator.identities().clone();
    let (status, body) = dev_request(&env, &env.projected(Cloud::Azure)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3599);
    assert_eq!(body["ext_expires_in"], 3599);
    let tenant = &ids.azure_tenant_id;
    let keys = env.get_json(&format!("/{tenant}/discovery/v2.0/keys")).await;
    let issuer = format!("https://sts.windows.net/{tenant}/");
    let token = body["access_token"].as_str().unwrap();
    // The resource is the scope minus `/.default`, verbatim (trailing slash kept).
    let claims = Jwks::from_json(&keys).verify(token, "https://management.azure.com/", &issuer);
    assert_eq!(claims["appid"], ids.azure_client_id);
    assert_eq!(claims["azp"], ids.azure_client_id);
    assert_eq!(claims["tid"], *tenant);
    assert_eq!(claims["sub"], claims["oid"]);
    assert!(claims["nbf"].is_i64() && claims["ver"].is_string());
    let discovery = env.get_json(&format!("/{tenant}/v2.0/.well-known/openid-configuration")).await;
    assert_eq!(discovery["token_endpoint"], env.url(&format!("/{tenant}/oauth2/v2.0/token")));
    assert_eq!(env.emulator.counters().azure_token, 1);
}

#[tokio::test]
async fn entra_rejects_an_assertion_for_another_audience_naming_its_claims() {
    let env = EmulatorEnv::start().await;
    let (status, body) = dev_request(&env, &env.projected(Cloud::Aws)).await;
    assert_aadsts(status, &body, 400, "invalid_request", 70021);
    let description = body["error_description"].as_str().unwrap();
    assert!(description.contains(&format!("Assertion Issuer: '{}'", env.emulator.url())), "{description}");
    assert!(description.contains("Assertion Subject: 'system:serviceaccount:default:keyless-dev'"));
    assert!(description.contains("Assertion Audience: 'sts.amazonaws.com'"));
}

#[tokio::test]
async fn entra_rejects_an_assertion_from_an_issuer_no_credential_names_with_700211() {
    let env = EmulatorEnv::start().await;
    let token = env.mint("api://AzureADTokenExchange", |c| c.iss = Some("https://evil.example.com".into()));
    let (status, body) = dev_request(&env, &token).await;
    assert_aadsts(status, &body, 400, "invalid_request", 700211);
    let description = body["error_description"].as_str().unwrap();
    assert!(description.contains("presented assertion issuer 'https://evil.example.com'"), "{description}");
}

#[tokio::test]
async fn entra_rejects_an_untrusted_subject() {
    let env = EmulatorEnv::start().await;
    let token = env.mint("api://AzureADTokenExchange", |c| c.sub = Some("system:serviceaccount:x:y".into()));
    let (status, body) = dev_request(&env, &token).await;
    assert_aadsts(status, &body, 400, "invalid_request", 70021);
}

#[tokio::test]
async fn entra_rejects_an_expired_assertion() {
    let env = EmulatorEnv::start().await;
    let token = env.mint("api://AzureADTokenExchange", |c| {
        c.iat_offset_secs = -4000;
        c.exp_offset_secs = -400;
    });
    let (status, body) = dev_request(&env, &token).await;
    assert_aadsts(status, &body, 400, "invalid_client", 700024);
    assert!(body["error_description"].as_str().unwrap().contains("not within its valid time range"));
}

#[tokio::test]
async fn entra_rejects_an_assertion_signed_by_another_key() {
    let env = EmulatorEnv::start().await;
    let token = env.mint("api://AzureADTokenExchange", |c| c.untrusted_key = true);
    let (status, body) = dev_request(&env, &token).await;
    assert_aadsts(status, &body, 401, "invalid_client", 700027);
}

#[tokio::test]
async fn entra_rejects_unknown_tenant_unknown_client_and_bad_scope() {
    let env = EmulatorEnv::start().await;
    let ids = env.emulator.identities().clone();
    let assertion = env.projected(Cloud::Azure);
    let (status, body) =
        token_request(&env, "00000000-0000-0000-0000-000000000000", &ids.azure_client_id, SCOPE, &assertion).await;
    assert_aadsts(status, &body, 400, "invalid_request", 90002);
    let (status, body) =
        token_request(&env, &ids.azure_tenant_id, "11111111-1111-1111-1111-111111111111", SCOPE, &assertion).await;
    assert_aadsts(status, &body, 400, "unauthorized_client", 700016);
    let (status, body) =
        token_request(&env, &ids.azure_tenant_id, &ids.azure_client_id, "https://management.azure.com/", &assertion)
            .await;
    assert_aadsts(status, &body, 400, "invalid_scope", 70011);
}

#[tokio::test]
async fn entra_echoes_the_client_request_id_as_correlation_id() {
    let env = EmulatorEnv::start().await;
    let url = env.url("/00000000-0000-0000-0000-000000000000/oauth2/v2.0/token");
    let response = env
        .client
        .post(url)
        .header("client-request-id", "4a1f7c2e-0000-4000-8000-000000000001")
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["correlation_id"], "4a1f7c2e-0000-4000-8000-000000000001");
}
