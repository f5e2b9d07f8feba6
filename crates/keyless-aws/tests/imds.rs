//! The IMDSv2 emulation on a real loopback port, driven by raw HTTP and by the Rust SDK's IMDS
//! credentials provider (docs/protocols.md 2.3).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;

use aws_config::imds;
use aws_config::imds::credentials::ImdsCredentialsProvider;
use aws_sdk_sts::config::SharedCredentialsProvider;
use common::{AwsDev as _, serving};
use keyless_provider::Started as _;
use keyless_test_support::clients;
use keyless_test_support::clock::is_whole_second_utc;

const TTL: &str = "x-aws-ec2-metadata-token-ttl-seconds";
const TOKEN: &str = "x-aws-ec2-metadata-token";

async fn session(addr: SocketAddr) -> String {
    let response =
        clients::loopback().put(format!("http://{addr}/latest/api/token")).header(TTL, "21600").send().await.unwrap();
    assert_eq!(response.status(), 200);
    response.text().await.unwrap()
}

#[tokio::test]
async fn the_rust_sdk_imds_provider_loads_credentials_that_sign_get_caller_identity() {
    let h = serving(|_| {}).await;
    let addr = h.served.addr;
    let client = imds::Client::builder().endpoint(format!("http://{addr}")).unwrap().build();
    let credentials = ImdsCredentialsProvider::builder().imds_client(client).build();
    let sts = h.env.sts_client(SharedCredentialsProvider::new(credentials));
    let identity = sts.get_caller_identity().send().await.expect("GetCallerIdentity signed with IMDS credentials");
    assert_eq!(identity.arn(), Some("arn:aws:sts::123456789012:assumed-role/keyless-dev/keyless-test"));
    assert_eq!(identity.account(), Some("123456789012"));
}

#[tokio::test]
async fn session_tokens_follow_the_ttl_rules_and_echo_the_ttl() {
    let h = serving(|_| {}).await;
    let addr = h.served.addr;
    let http = clients::loopback();
    let url = format!("http://{addr}/latest/api/token");
    let missing = http.put(&url).send().await.unwrap();
    assert_eq!(missing.status(), 400, "TTL header missing");
    for bad in ["0", "21601", "-1", "abc", ""] {
        let response = http.put(&url).header(TTL, bad).send().await.unwrap();
        assert_eq!(response.status(), 400, "TTL {bad:?}");
    }
    for good in ["1", "300", "21600"] {
        let response = http.put(&url).header(TTL, good).send().await.unwrap();
        assert_eq!(response.status(), 200, "TTL {good}");
        assert_eq!(response.headers()[TTL], good, "the TTL is echoed");
        assert!(response.text().await.unwrap().len() >= 43);
    }
    let forwarded = http.put(&url).header(TTL, "60").header("X-Forwarded-For", "10.0.0.1").send().await.unwrap();
    assert_eq!(forwarded.status(), 403);
    let get = http.get(&url).header(TTL, "60").send().await.unwrap();
    assert_eq!(get.status(), 405);
}

#[tokio::test]
async fn the_granted_ttl_is_capped_by_imds_session_ttl_max() {
    let h = serving(|c| c.imds_session_ttl_max = std::time::Duration::from_secs(600)).await;
    let addr = h.served.addr;
    let response =
        clients::loopback().put(format!("http://{addr}/latest/api/token")).header(TTL, "21600").send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()[TTL], "600");
}

#[tokio::test]
async fn credentials_need_a_live_session_and_imdsv1_is_refused() {
    let h = serving(|_| {}).await;
    let addr = h.served.addr;
    let http = clients::loopback();
    let listing = format!("http://{addr}/latest/meta-data/iam/security-credentials/");
    assert_eq!(http.get(&listing).send().await.unwrap().status(), 401, "IMDSv1 refused");
    let bogus = http.get(&listing).header(TOKEN, "not-a-session").send().await.unwrap();
    assert_eq!(bogus.status(), 401, "unknown session");
    let token = session(addr).await;
    let ok = http.get(&listing).header(TOKEN, &token).send().await.unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.text().await.unwrap(), "keyless-dev");

    let creds = http.get(format!("{listing}keyless-dev")).header(TOKEN, &token).send().await.unwrap();
    assert_eq!(creds.status(), 200);
    let body: serde_json::Value = creds.json().await.unwrap();
    assert_eq!(body["Code"], "Success");
    assert_eq!(body["Type"], "AWS-HMAC");
    for key in ["AccessKeyId", "SecretAccessKey", "Token"] {
        assert!(body[key].as_str().is_some_and(|v| !v.is_empty()), "{key}: {body}");
    }
    for key in ["Expiration", "LastUpdated"] {
        let value = body[key].as_str().unwrap();
        assert!(is_whole_second_utc(value), "{key} = {value:?} must match %Y-%m-%dT%H:%M:%SZ");
    }
    let other = http.get(format!("{listing}some-other-role")).header(TOKEN, &token).send().await.unwrap();
    assert_eq!(other.status(), 404);
    let unknown_path = http.get(format!("http://{addr}/latest/meta-data/nothing")).send().await.unwrap();
    assert_eq!(unknown_path.status(), 401, "the session is checked before anything else");
}

#[tokio::test]
async fn imdsv1_is_answered_only_when_enabled_and_bad_tokens_still_fail() {
    let h = serving(|c| c.imds_v1 = true).await;
    let addr = h.served.addr;
    let http = clients::loopback();
    let listing = format!("http://{addr}/latest/meta-data/iam/security-credentials/");
    let v1 = http.get(&listing).send().await.unwrap();
    assert_eq!(v1.status(), 200);
    assert_eq!(v1.text().await.unwrap(), "keyless-dev");
    let bogus = http.get(&listing).header(TOKEN, "expired-or-forged").send().await.unwrap();
    assert_eq!(bogus.status(), 401);
}

#[tokio::test]
async fn region_identity_document_and_iam_info_are_served() {
    let h = serving(|_| {}).await;
    let addr = h.served.addr;
    let http = clients::loopback();
    let token = session(addr).await;
    let get = |path: &str| http.get(format!("http://{addr}{path}")).header(TOKEN, &token).send();
    let region = get("/latest/meta-data/placement/region").await.unwrap();
    assert_eq!(region.text().await.unwrap(), "eu-central-1");
    let document: serde_json::Value =
        get("/latest/dynamic/instance-identity/document").await.unwrap().json().await.unwrap();
    assert_eq!(document["region"], "eu-central-1");
    assert_eq!(document["accountId"], "123456789012");
    let info: serde_json::Value = get("/latest/meta-data/iam/info").await.unwrap().json().await.unwrap();
    assert_eq!(info["Code"], "Success");
    assert_eq!(info["InstanceProfileArn"], "arn:aws:iam::123456789012:instance-profile/keyless-dev");
    assert!(is_whole_second_utc(info["LastUpdated"].as_str().unwrap()), "{info}");
}

#[tokio::test]
async fn imds_can_be_turned_off_leaving_the_container_endpoint() {
    let h = serving(|c| c.imds = false).await;
    let addr = h.served.addr;
    let response =
        clients::loopback().put(format!("http://{addr}/latest/api/token")).header(TTL, "60").send().await.unwrap();
    assert_eq!(response.status(), 404);
    assert!(
        h.provider
            .app_env(&keyless_provider::AppHost::for_listener(addr))
            .iter()
            .all(|v| v.name != "AWS_EC2_METADATA_SERVICE_ENDPOINT")
    );
}
