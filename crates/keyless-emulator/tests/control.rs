//! Fault injection and call counters, through the Rust API and the `/_emulator/` HTTP API.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::xml_text;
use http::StatusCode;
use keyless_emulator::{Cloud, Counters, Fault, MintClaims, Service};
use keyless_test_support::clock::wall_clock;
use keyless_test_support::emulator::EmulatorEnv;
use serde_json::{Value, json};

async fn assume_role(env: &EmulatorEnv) -> (u16, String) {
    let token = env.projected(Cloud::Aws);
    let form = [
        ("Action", "AssumeRoleWithWebIdentity"),
        ("Version", "2011-06-15"),
        ("RoleArn", "arn:aws:iam::123456789012:role/keyless-dev"),
        ("RoleSessionName", "faults"),
        ("WebIdentityToken", token.as_str()),
    ];
    let response = env.client.post(env.url("/")).form(&form).send().await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

async fn azure_token(env: &EmulatorEnv) -> (u16, Value) {
    let ids = env.emulator.identities().clone();
    let assertion = env.projected(Cloud::Azure);
    let form = [
        ("client_id", ids.azure_client_id.as_str()),
        ("scope", "https://vault.azure.net/.default"),
        ("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"),
        ("client_assertion", assertion.as_str()),
        ("grant_type", "client_credentials"),
    ];
    let url = env.url(&format!("/{}/oauth2/v2.0/token", ids.azure_tenant_id));
    let response = env.client.post(url).form(&form).send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

async fn post_json(env: &EmulatorEnv, path: &str, body: Value) -> reqwest::Response {
    env.client.post(env.url(path)).json(&body).send().await.unwrap()
}

#[tokio::test]
async fn injected_aws_faults_fail_the_next_calls_in_the_native_format_and_are_counted() {
    let env = EmulatorEnv::start().await;
    let fault = json!({"service": "aws-sts", "fail_next": 2, "status": 400, "code": "IDPCommunicationError"});
    assert_eq!(post_json(&env, "/_emulator/faults", fault).await.status(), 204);
    for _ in 0..2 {
        let (status, body) = assume_role(&env).await;
        assert_eq!(status, 400);
        assert_eq!(xml_text(&body, "Code").unwrap(), "IDPCommunicationError");
        assert_eq!(xml_text(&body, "Type").unwrap(), "Sender");
    }
    assert_eq!(assume_role(&env).await.0, 200, "only the next two calls fail");
    assert_eq!(env.emulator.counters().aws_sts, 3, "faulted calls are counted too");
}

#[tokio::test]
async fn injected_azure_fault_renders_the_aadsts_code() {
    let env = EmulatorEnv::start().await;
    env.emulator.faults().fail_next(
        Service::AzureToken,
        1,
        Fault::new(StatusCode::BAD_REQUEST).with_code("AADSTS700024"),
    );
    let (status, body) = azure_token(&env).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "invalid_client");
    assert_eq!(body["error_codes"], json!([700024]));
    assert!(body["error_description"].as_str().unwrap().starts_with("AADSTS700024: "));
    assert_eq!(azure_token(&env).await.0, 200);
}

#[tokio::test]
async fn injected_server_errors_use_each_services_format() {
    let env = EmulatorEnv::start().await;
    let faults = env.emulator.faults();
    for service in Service::ALL {
        faults.fail_next(service, 1, Fault::new(StatusCode::SERVICE_UNAVAILABLE));
    }
    let (status, body) = assume_role(&env).await;
    assert_eq!((status, xml_text(&body, "Code").unwrap()), (503, "ServiceUnavailable".to_owned()));
    assert_eq!(xml_text(&body, "Type").unwrap(), "Receiver");

    let response = env.client.post(env.url("/v1/token")).form(&[("grant_type", "x")]).send().await.unwrap();
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "temporarily_unavailable");

    let url = env.url("/v1/projects/-/serviceAccounts/a@b.iam.gserviceaccount.com:generateAccessToken");
    let response = env.client.post(url).json(&json!({})).send().await.unwrap();
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["status"], "UNAVAILABLE");
    assert_eq!(body["error"]["code"], 503);

    let (status, body) = azure_token(&env).await;
    assert_eq!(status, 503);
    assert_eq!(body["error"], "temporarily_unavailable");
    assert_eq!(env.emulator.counters(), Counters { aws_sts: 1, gcp_sts: 1, gcp_iam: 1, azure_token: 1 });
}

/// On the paused clock: the latency is exactly what was asked, and no real time passes.
#[tokio::test(start_paused = true)]
async fn latency_delays_every_call_until_cleared() {
    let env = EmulatorEnv::start().await;
    // Under the emulator's 60 s request timeout.
    let latency = Duration::from_secs(30);
    let fault = json!({"service": "aws-sts", "latency_ms": latency.as_millis()});
    assert_eq!(post_json(&env, "/_emulator/faults", fault).await.status(), 204);
    for _ in 0..2 {
        let started = tokio::time::Instant::now();
        assert_eq!(assume_role(&env).await.0, 200);
        let took = started.elapsed();
        assert!(took >= latency && took < latency + Duration::from_secs(1), "every call is delayed: {took:?}");
    }

    let response = env.client.delete(env.url("/_emulator/faults/aws-sts")).send().await.unwrap();
    assert_eq!(response.status(), 204);
    let started = tokio::time::Instant::now();
    assert_eq!(assume_role(&env).await.0, 200);
    assert!(started.elapsed() < Duration::from_secs(1), "the latency was cleared: {:?}", started.elapsed());
    env.emulator.faults().fail_next(Service::GcpSts, 5, Fault::new(StatusCode::BAD_GATEWAY));
    assert_eq!(env.client.delete(env.url("/_emulator/faults")).send().await.unwrap().status(), 204);
    let response = env.client.post(env.url("/v1/token")).form(&[("grant_type", "x")]).send().await.unwrap();
    assert_eq!(response.status(), 400, "cleared faults no longer fire");
}

#[tokio::test]
async fn counters_over_http_match_the_rust_api() {
    let env = EmulatorEnv::start().await;
    assume_role(&env).await;
    azure_token(&env).await;
    let counters: Counters = env.client.get(env.url("/_emulator/counters")).send().await.unwrap().json().await.unwrap();
    assert_eq!(counters, env.emulator.counters());
    let raw = env.get_json("/_emulator/counters").await;
    assert_eq!(raw, json!({"aws-sts": 1, "gcp-sts": 0, "gcp-iam": 0, "azure-token": 1}));
}

#[tokio::test]
async fn control_api_rejects_an_unknown_service_and_non_error_status() {
    let env = EmulatorEnv::start().await;
    let response = post_json(&env, "/_emulator/faults", json!({"service": "aws-s3", "fail_next": 1})).await;
    assert_eq!(response.status(), 400);
    let response =
        post_json(&env, "/_emulator/faults", json!({"service": "aws-sts", "fail_next": 1, "status": 200})).await;
    assert_eq!(response.status(), 400);
}

#[tokio::test]
async fn mint_over_http_signs_what_the_test_asks_for() {
    let env = EmulatorEnv::start().await;
    let claims = json!({"aud": ["sts.amazonaws.com"], "sub": "system:serviceaccount:x:y", "exp_offset_secs": -5});
    let response = post_json(&env, "/_emulator/mint", claims).await;
    assert_eq!(response.status(), 200);
    let token = response.json::<Value>().await.unwrap()["token"].as_str().unwrap().to_owned();
    let payload: Value = {
        use base64::Engine as _;
        let part = token.split('.').nth(1).unwrap();
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
    };
    assert_eq!(payload["sub"], "system:serviceaccount:x:y");
    assert_eq!(payload["iss"], env.emulator.url());
    assert!(payload["exp"].as_i64().unwrap() < payload["iat"].as_i64().unwrap());
    let same_shape = env.emulator.mint(MintClaims::new("sts.amazonaws.com"));
    assert_eq!(same_shape.split('.').count(), 3);

    let identities = env.get_json("/_emulator/identities").await;
    assert_eq!(identities["subject"], "system:serviceaccount:default:keyless-dev");
    assert_eq!(identities["audiences"]["gcp"], env.emulator.identities().gcp_audience());
}

#[tokio::test]
async fn oversized_request_bodies_are_refused() {
    let env = EmulatorEnv::start().await;
    let huge = "a".repeat(100 * 1024);
    let response =
        env.client.post(env.url("/")).body(format!("Action=GetCallerIdentity&x={huge}")).send().await.unwrap();
    assert_eq!(response.status(), 413);
    assert_eq!(env.emulator.counters(), Counters::default());
}

#[tokio::test]
async fn malformed_faults_answer_200_with_a_cut_off_body_in_the_success_content_type() {
    let env = EmulatorEnv::start().await;
    let fault = json!({"service": "aws-sts", "fail_next": 1, "malformed": true});
    assert_eq!(post_json(&env, "/_emulator/faults", fault).await.status(), 204);
    let (status, body) = assume_role(&env).await;
    assert_eq!(status, 200);
    assert!(body.starts_with("<AssumeRoleWithWebIdentityResponse") && !body.contains("</Credentials>"), "{body}");
    assert_eq!(assume_role(&env).await.0, 200);

    let fault = json!({"service": "azure-token", "fail_next": 1, "malformed": true});
    assert_eq!(post_json(&env, "/_emulator/faults", fault).await.status(), 204);
    let ids = env.emulator.identities().clone();
    let form = [
        ("client_id", ids.azure_client_id.as_str()),
        ("scope", "https://vault.azure.net/.default"),
        ("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"),
        ("client_assertion", env.projected(Cloud::Azure).leak()),
        ("grant_type", "client_credentials"),
    ];
    let url = env.url(&format!("/{}/oauth2/v2.0/token", ids.azure_tenant_id));
    let response = env.client.post(url).form(&form).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    let text = response.text().await.unwrap();
    assert!(serde_json::from_str::<Value>(&text).is_err(), "not cut off: {text}");
    assert_eq!(azure_token(&env).await.0, 200, "only the next call is malformed");

    let both = json!({"service": "gcp-sts", "fail_next": 1, "malformed": true, "status": 500});
    assert_eq!(post_json(&env, "/_emulator/faults", both).await.status(), 400, "a malformed answer has no status");
}

#[tokio::test]
async fn a_lifetime_cap_shortens_issued_credentials_and_survives_clearing_faults() {
    let env = EmulatorEnv::start().await;
    let cap = json!({"service": "azure-token", "lifetime_secs": 20});
    assert_eq!(post_json(&env, "/_emulator/faults", cap).await.status(), 204);
    assert_eq!(env.client.delete(env.url("/_emulator/faults")).send().await.unwrap().status(), 204);
    let (status, body) = azure_token(&env).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["expires_in"], 20, "{body}");

    let cap = json!({"service": "aws-sts", "lifetime_secs": 30});
    assert_eq!(post_json(&env, "/_emulator/faults", cap).await.status(), 204);
    let (_, xml) = assume_role(&env).await;
    let expiration = xml_text(&xml, "Expiration").unwrap();
    let expiration = humantime::parse_rfc3339(&expiration).unwrap();
    let left = expiration.duration_since(wall_clock()).unwrap_or_default();
    assert!(left <= Duration::from_secs(30) && left >= Duration::from_secs(25), "{left:?}");

    let uncap = json!({"service": "azure-token", "lifetime_secs": 0});
    assert_eq!(post_json(&env, "/_emulator/faults", uncap).await.status(), 204);
    assert_eq!(azure_token(&env).await.1["expires_in"], 3599);
}
