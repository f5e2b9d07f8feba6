#![allow(clippy::unwrap_used)]

mod common;

use common::xml_text;
use keyless_emulator::Cloud;
use keyless_test_support::emulator::EmulatorEnv;

const ROLE: &str = "arn:aws:iam::123456789012:role/keyless-dev";

async fn assume_role(env: &EmulatorEnv, role: &str, token: &str, extra: &[(&str, &str)]) -> (u16, String) {
    let mut form = vec![
        ("Action", "AssumeRoleWithWebIdentity"),
        ("Version", "2011-06-15"),
        ("RoleArn", role),
        ("RoleSessionName", "keyless-test"),
        ("WebIdentityToken", token),
    ];
    form.extend_from_slice(extra);
    let response = env.client.post(env.url("/")).form(&form).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

fn assert_error(status: u16, body: &str, expected_status: u16, code: &str) {
    assert_eq!(status, expected_status, "{body}");
    assert!(body.starts_with("<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">"), "{body}");
    assert_eq!(xml_text(body, "Code").as_deref(), Some(code), "{body}");
    assert!(xml_text(body, "RequestId").is_some());
}

#[tokio::test]
async fn sts_issues_credentials_for_the_projected_token() {
    let env = EmulatorEnv::start().await;
    let token = env.projected(Cloud::Aws);
    let response = env
        .client
        .post(env.url("/"))
        .form(&[
            ("Action", "AssumeRoleWithWebIdentity"),
            ("Version", "2011-06-15"),
            ("RoleArn", ROLE),
            ("RoleSessionName", "keyless-test"),
            ("WebIdentityToken", &token),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers().contains_key("x-amzn-requestid"));
    let body = response.text().await.unwrap();
    assert!(
        body.starts_with("<AssumeRoleWithWebIdentityResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">")
    );
    let key = xml_text(&body, "AccessKeyId").unwrap();
    assert!(key.starts_with("ASIA") && key.len() == 20, "{key}");
    assert_eq!(xml_text(&body, "SecretAccessKey").unwrap().len(), 40);
    assert!(xml_text(&body, "SessionToken").unwrap().len() > 100);
    let expiration = xml_text(&body, "Expiration").unwrap();
    assert!(expiration.ends_with('Z') && !expiration.contains('.'), "{expiration}");
    assert_eq!(xml_text(&body, "SubjectFromWebIdentityToken").unwrap(), "system:serviceaccount:default:keyless-dev");
    assert_eq!(xml_text(&body, "Arn").unwrap(), "arn:aws:sts::123456789012:assumed-role/keyless-dev/keyless-test");
    assert!(xml_text(&body, "AssumedRoleId").unwrap().starts_with("AROA"));
    assert_eq!(xml_text(&body, "Audience").unwrap(), "sts.amazonaws.com");
    let provider = xml_text(&body, "Provider").unwrap();
    assert!(provider.starts_with("arn:aws:iam::123456789012:oidc-provider/127.0.0.1:"), "{provider}");
    assert!(xml_text(&body, "RequestId").is_some());
    assert_eq!(env.emulator.counters().aws_sts, 1);
}

#[tokio::test]
async fn sts_accepts_the_get_query_style() {
    let env = EmulatorEnv::start().await;
    let token = env.projected(Cloud::Aws);
    let response = env
        .client
        .get(env.url("/"))
        .query(&[
            ("Action", "AssumeRoleWithWebIdentity"),
            ("Version", "2011-06-15"),
            ("RoleArn", ROLE),
            ("RoleSessionName", "query-style"),
            ("WebIdentityToken", &token),
            ("DurationSeconds", "900"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.text().await.unwrap().contains("assumed-role/keyless-dev/query-style"));
}

#[tokio::test]
async fn sts_rejects_token_for_another_audience() {
    let env = EmulatorEnv::start().await;
    let token = env.mint("api://AzureADTokenExchange", |_| {});
    let (status, body) = assume_role(&env, ROLE, &token, &[]).await;
    assert_error(status, &body, 400, "InvalidIdentityToken");
    assert_eq!(xml_text(&body, "Message").as_deref(), Some("Incorrect token audience"));
}

#[tokio::test]
async fn sts_rejects_an_expired_token() {
    let env = EmulatorEnv::start().await;
    let token = env.mint("sts.amazonaws.com", |c| {
        c.iat_offset_secs = -7200;
        c.exp_offset_secs = -60;
    });
    let (status, body) = assume_role(&env, ROLE, &token, &[]).await;
    assert_error(status, &body, 400, "ExpiredTokenException");
    assert!(xml_text(&body, "Message").unwrap().starts_with("Token expired: current date/time"));
}

#[tokio::test]
async fn sts_rejects_a_token_signed_by_another_key() {
    let env = EmulatorEnv::start().await;
    let token = env.mint("sts.amazonaws.com", |c| c.untrusted_key = true);
    let (status, body) = assume_role(&env, ROLE, &token, &[]).await;
    assert_error(status, &body, 400, "InvalidIdentityToken");
}

#[tokio::test]
async fn sts_rejects_a_token_from_an_unknown_issuer() {
    let env = EmulatorEnv::start().await;
    let token = env.mint("sts.amazonaws.com", |c| c.iss = Some("https://elsewhere.example".into()));
    let (status, body) = assume_role(&env, ROLE, &token, &[]).await;
    assert_error(status, &body, 400, "InvalidIdentityToken");
    assert!(xml_text(&body, "Message").unwrap().contains("No OpenIDConnect provider found"));
}

#[tokio::test]
async fn sts_rejects_garbage_instead_of_a_jwt() {
    let env = EmulatorEnv::start().await;
    let (status, body) = assume_role(&env, ROLE, "not-a-jwt-at-all", &[]).await;
    assert_error(status, &body, 400, "InvalidIdentityToken");
}

#[tokio::test]
async fn sts_denies_an_untrusted_subject() {
    let env = EmulatorEnv::start().await;
    let token = env.mint("sts.amazonaws.com", |c| c.sub = Some("system:serviceaccount:other:intruder".into()));
    let (status, body) = assume_role(&env, ROLE, &token, &[]).await;
    assert_error(status, &body, 403, "AccessDenied");
    assert_eq!(xml_text(&body, "Message").as_deref(), Some("Not authorized to perform sts:AssumeRoleWithWebIdentity"));
}

#[tokio::test]
async fn sts_denies_an_unknown_role() {
    let env = EmulatorEnv::start().await;
    let token = env.projected(Cloud::Aws);
    let (status, body) = assume_role(&env, "arn:aws:iam::123456789012:role/someone-else", &token, &[]).await;
    assert_error(status, &body, 403, "AccessDenied");
}

#[tokio::test]
async fn sts_validates_parameters_like_aws() {
    let env = EmulatorEnv::start().await;
    let token = env.projected(Cloud::Aws);
    let form = [
        ("Action", "AssumeRoleWithWebIdentity"),
        ("Version", "2011-06-15"),
        ("RoleArn", ROLE),
        ("RoleSessionName", "has spaces"),
        ("WebIdentityToken", token.as_str()),
    ];
    let response = env.client.post(env.url("/")).form(&form).send().await.unwrap();
    let status = response.status().as_u16();
    let body = response.text().await.unwrap();
    assert_error(status, &body, 400, "ValidationError");
    assert!(body.contains("roleSessionName"), "{body}");
    assert!(!body.contains(&token), "the token is never echoed");

    let (status, body) = assume_role(&env, ROLE, &token, &[("DurationSeconds", "7200")]).await;
    assert_error(status, &body, 400, "ValidationError");
    assert!(body.contains("MaxSessionDuration"), "{body}");

    let (status, body) = assume_role(&env, ROLE, &token, &[("DurationSeconds", "60")]).await;
    assert_error(status, &body, 400, "ValidationError");

    let response = env.client.post(env.url("/")).form(&[("Action", "AssumeRoleWithWebIdentity")]).send().await.unwrap();
    let status = response.status().as_u16();
    assert_error(status, &response.text().await.unwrap(), 400, "InvalidAction");
}
