//! HTTP clients: plain ones for keyless's loopback listeners, and ones that trust the emulator's CA
//! (reqwest, and the AWS SDK's STS client).

use std::path::Path;

use aws_sdk_sts::config::{BehaviorVersion, Region, SharedCredentialsProvider};
use aws_smithy_http_client::tls::rustls_provider::CryptoMode;
use aws_smithy_http_client::tls::{Provider as TlsProvider, TlsContext, TrustStore};

/// For keyless's listeners: never through a proxy the machine may configure, never following a
/// redirect (they are under test).
pub fn loopback() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().redirect(reqwest::redirect::Policy::none()).build().expect("an HTTP client")
}

/// HTTPS trusting only the certificates in `ca_pem` (the emulator's CA), never through a proxy.
pub fn trusting(ca_pem: &Path) -> reqwest::Client {
    let pem = std::fs::read(ca_pem).unwrap_or_else(|e| panic!("reading {}: {e}", ca_pem.display()));
    let certificates = reqwest::Certificate::from_pem_bundle(&pem).expect("the CA file holds PEM certificates");
    reqwest::Client::builder().tls_certs_only(certificates).no_proxy().build().expect("an HTTPS client")
}

/// `GET url`'s status, or 599 when nothing answers.
pub async fn status_of(url: &str) -> u16 {
    loopback().get(url).send().await.map(|r| r.status().as_u16()).unwrap_or(599)
}

/// Sends `request` and reads the answer's body as JSON, whatever its status (no answer, or a body
/// that is not JSON, fails the test).
pub async fn answer_json(request: reqwest::RequestBuilder) -> serde_json::Value {
    let response = request.send().await.expect("an answer");
    response.json().await.expect("a JSON body")
}

/// Sends `request` and reads the answer's body as text, whatever its status.
pub async fn answer_text(request: reqwest::RequestBuilder) -> String {
    let response = request.send().await.expect("an answer");
    response.text().await.expect("a body")
}

/// An STS client of the AWS SDK against `endpoint` (the emulator), trusting only `ca_pem`, signing
/// with `credentials` (none: unsigned calls such as AssumeRoleWithWebIdentity).
pub fn aws_sts(
    endpoint: &str,
    ca_pem: &Path,
    region: &str,
    credentials: Option<SharedCredentialsProvider>,
) -> aws_sdk_sts::Client {
    let pem = std::fs::read(ca_pem).unwrap_or_else(|e| panic!("reading {}: {e}", ca_pem.display()));
    let tls = TlsContext::builder()
        .with_trust_store(TrustStore::empty().with_pem_certificate(pem))
        .build()
        .expect("a TLS context");
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(TlsProvider::Rustls(CryptoMode::AwsLc))
        .tls_context(tls)
        .build_https();
    let mut config = aws_sdk_sts::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(region.to_owned()))
        .endpoint_url(endpoint)
        .http_client(http);
    config.set_credentials_provider(credentials);
    aws_sdk_sts::Client::from_conf(config.build())
}
