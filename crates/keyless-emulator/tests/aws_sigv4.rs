//! GetCallerIdentity verifies SigV4 signatures made by the `aws-sigv4` crate (an independent
//! signer) with the credentials AssumeRoleWithWebIdentity issued.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use common::xml_text;
use keyless_emulator::Cloud;
use keyless_test_support::clock::wall_clock;
use keyless_test_support::emulator::EmulatorEnv;

const FORM: &str = "application/x-www-form-urlencoded; charset=utf-8";
const BODY: &str = "Action=GetCallerIdentity&Version=2011-06-15";

#[derive(Clone)]
struct Issued {
    access_key_id: String,
    secret_access_key: String,
    session_token: String,
}

async fn issue(env: &EmulatorEnv) -> Issued {
    let token = env.projected(Cloud::Aws);
    let form = [
        ("Action", "AssumeRoleWithWebIdentity"),
        ("Version", "2011-06-15"),
        ("RoleArn", "arn:aws:iam::123456789012:role/keyless-dev"),
        ("RoleSessionName", "sigv4-test"),
        ("WebIdentityToken", token.as_str()),
    ];
    let body = env.client.post(env.url("/")).form(&form).send().await.unwrap().text().await.unwrap();
    Issued {
        access_key_id: xml_text(&body, "AccessKeyId").unwrap(),
        secret_access_key: xml_text(&body, "SecretAccessKey").unwrap(),
        session_token: xml_text(&body, "SessionToken").unwrap(),
    }
}

/// The headers `aws-sigv4` adds (authorization, x-amz-date, x-amz-security-token).
fn sign_request(credentials: &Issued, method: &str, url: &str, body: &[u8], at: SystemTime) -> Vec<(String, String)> {
    let identity: Identity = Credentials::new(
        &credentials.access_key_id,
        &credentials.secret_access_key,
        Some(credentials.session_token.clone()),
        None,
        "test",
    )
    .into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region("us-east-1")
        .name("sts")
        .time(at)
        .settings(SigningSettings::default())
        .build()
        .unwrap()
        .into();
    let headers = [("content-type", FORM)];
    let signable = SignableRequest::new(method, url, headers.into_iter(), SignableBody::Bytes(body)).unwrap();
    let (instructions, _signature) = sign(signable, &params).unwrap().into_parts();
    instructions.headers().map(|(k, v)| (k.to_owned(), v.to_owned())).collect()
}

async fn send(env: &EmulatorEnv, method: &str, url: &str, body: &str, headers: &[(String, String)]) -> (u16, String) {
    let mut request = match method {
        "GET" => env.client.get(url),
        _ => env.client.post(url).body(body.to_owned()),
    };
    request = request.header("content-type", FORM);
    for (k, v) in headers {
        request = request.header(k, v);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

fn replace_header(headers: &mut [(String, String)], name: &str, value: String) {
    for (k, v) in headers.iter_mut() {
        if k.eq_ignore_ascii_case(name) {
            *v = value.clone();
        }
    }
}

#[tokio::test]
async fn get_caller_identity_accepts_a_request_signed_by_aws_sigv4() {
    let env = EmulatorEnv::start().await;
    let credentials = issue(&env).await;
    let url = env.url("/");
    let headers = sign_request(&credentials, "POST", &url, BODY.as_bytes(), wall_clock());
    let (status, body) = send(&env, "POST", &url, BODY, &headers).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("<GetCallerIdentityResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">"));
    assert_eq!(xml_text(&body, "Arn").unwrap(), "arn:aws:sts::123456789012:assumed-role/keyless-dev/sigv4-test");
    let user_id = xml_text(&body, "UserId").unwrap();
    assert!(user_id.starts_with("AROA") && user_id.ends_with(":sigv4-test"), "{user_id}");
    assert_eq!(xml_text(&body, "Account").unwrap(), "123456789012");
}

#[tokio::test]
async fn get_caller_identity_accepts_the_get_query_style() {
    let env = EmulatorEnv::start().await;
    let credentials = issue(&env).await;
    let url = env.url(&format!("/?{BODY}"));
    let headers = sign_request(&credentials, "GET", &url, b"", wall_clock());
    let (status, body) = send(&env, "GET", &url, "", &headers).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("assumed-role/keyless-dev/sigv4-test"));
}

#[tokio::test]
async fn get_caller_identity_rejects_a_tampered_signature() {
    let env = EmulatorEnv::start().await;
    let credentials = issue(&env).await;
    let url = env.url("/");
    let mut headers = sign_request(&credentials, "POST", &url, BODY.as_bytes(), wall_clock());
    let authorization = headers.iter().find(|(k, _)| k.eq_ignore_ascii_case("authorization")).unwrap().1.clone();
    let last = authorization.chars().last().unwrap();
    let flipped = if last == '0' { '1' } else { '0' };
    replace_header(&mut headers, "authorization", format!("{}{flipped}", &authorization[..authorization.len() - 1]));
    let (status, body) = send(&env, "POST", &url, BODY, &headers).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(xml_text(&body, "Code").unwrap(), "SignatureDoesNotMatch");
}

#[tokio::test]
async fn get_caller_identity_rejects_a_signature_made_with_the_wrong_secret() {
    let env = EmulatorEnv::start().await;
    let mut credentials = issue(&env).await;
    credentials.secret_access_key = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into();
    let url = env.url("/");
    let headers = sign_request(&credentials, "POST", &url, BODY.as_bytes(), wall_clock());
    let (status, body) = send(&env, "POST", &url, BODY, &headers).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(xml_text(&body, "Code").unwrap(), "SignatureDoesNotMatch");
}

#[tokio::test]
async fn get_caller_identity_rejects_a_body_changed_after_signing() {
    let env = EmulatorEnv::start().await;
    let credentials = issue(&env).await;
    let url = env.url("/");
    let headers = sign_request(&credentials, "POST", &url, BODY.as_bytes(), wall_clock());
    let (status, body) = send(&env, "POST", &url, "Action=GetCallerIdentity&Version=2011-06-15&x=1", &headers).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(xml_text(&body, "Code").unwrap(), "SignatureDoesNotMatch");
}

#[tokio::test]
async fn get_caller_identity_rejects_an_unknown_access_key() {
    let env = EmulatorEnv::start().await;
    let mut credentials = issue(&env).await;
    credentials.access_key_id = "ASIAUNKNOWNUNKNOWN12".into();
    let url = env.url("/");
    let headers = sign_request(&credentials, "POST", &url, BODY.as_bytes(), wall_clock());
    let (status, body) = send(&env, "POST", &url, BODY, &headers).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(xml_text(&body, "Code").unwrap(), "InvalidClientTokenId");
}

#[tokio::test]
async fn get_caller_identity_rejects_another_session_token() {
    let env = EmulatorEnv::start().await;
    let first = issue(&env).await;
    let second = issue(&env).await;
    let mixed = Issued { session_token: second.session_token, ..first };
    let url = env.url("/");
    let headers = sign_request(&mixed, "POST", &url, BODY.as_bytes(), wall_clock());
    let (status, body) = send(&env, "POST", &url, BODY, &headers).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(xml_text(&body, "Code").unwrap(), "InvalidClientTokenId");
}

#[tokio::test]
async fn get_caller_identity_rejects_a_signature_older_than_fifteen_minutes() {
    let env = EmulatorEnv::start().await;
    let credentials = issue(&env).await;
    let url = env.url("/");
    let at = wall_clock() - Duration::from_secs(20 * 60);
    let headers = sign_request(&credentials, "POST", &url, BODY.as_bytes(), at);
    let (status, body) = send(&env, "POST", &url, BODY, &headers).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(xml_text(&body, "Code").unwrap(), "SignatureDoesNotMatch");
    assert!(xml_text(&body, "Message").unwrap().starts_with("Signature expired"));
}

#[tokio::test]
async fn get_caller_identity_requires_a_signature() {
    let env = EmulatorEnv::start().await;
    let (status, body) = send(&env, "POST", &env.url("/"), BODY, &[]).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(xml_text(&body, "Code").unwrap(), "MissingAuthenticationToken");
}
