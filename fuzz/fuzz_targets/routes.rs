//! Request parsing of every native route, through the routes as the binary serves them
//! (`keyless_provider::Routes`: one table over every provider's routes, each behind its shared
//! request rules): a fuzzed request line and headers go to the AWS, GCP and Azure routes together,
//! serving real cached credentials from an in-process emulator. Besides not panicking and
//! answering in time, a 200 from a credential route must carry that route's required header and
//! break none of the shared rules (an allowed `Host`, no forwarding header, no security header
//! twice).
//!
//! Input: `METHOD TARGET\nName: value\n...` (what hyper would hand over after parsing a head).
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Uri};
use keyless_emulator::{Cloud, Emulator, EmulatorConfig};
use keyless_provider::{Routes, Started};
use libfuzzer_sys::fuzz_target;

const AUTHORIZATION: &str = "fuzz-container-authorization-value";
const IDENTITY_HEADER: &str = "fuzz-app-service-identity-header";

struct Harness {
    routes: Routes,
    /// Every registered cloud's security headers: what the routes refuse twice, as the binary's do.
    single_headers: Vec<&'static str>,
    _emulator: Emulator,
    _state: tempfile::TempDir,
}

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| keyless_fuzz::runtime().block_on(start()))
}

async fn start() -> Harness {
    let state = tempfile::tempdir().expect("a temp dir");
    let emulator = keyless_emulator::start(EmulatorConfig::new(state.path())).await.expect("the emulator");
    let ids = emulator.identities().clone();
    let (url, ca) = (emulator.url(), emulator.ca_pem_path().to_string_lossy().into_owned());
    let token = |cloud| emulator.token_path(cloud).to_string_lossy().into_owned();
    let ctx = keyless_fuzz::context();
    let aws: keyless_aws::Config = serde_json::from_value(serde_json::json!({
        "token_file": token(Cloud::Aws), "role_arn": ids.aws_role_arn, "region": "us-east-1",
        "sts_endpoint": url, "ca_file": ca, "authorization_token": AUTHORIZATION,
    }))
    .expect("aws config");
    let gcp: keyless_gcp::Config = serde_json::from_value(serde_json::json!({
        "token_file": token(Cloud::Gcp), "audience": ids.gcp_audience(), "service_account": ids.gcp_service_account,
        "project_id": ids.gcp_project_id, "project_number": ids.gcp_project_number,
        "sts_endpoint": url, "iam_endpoint": url, "ca_file": ca,
    }))
    .expect("gcp config");
    let azure: keyless_azure::Config = serde_json::from_value(serde_json::json!({
        "token_file": token(Cloud::Azure), "tenant_id": ids.azure_tenant_id, "client_id": ids.azure_client_id,
        "authority_host": url, "ca_file": ca, "identity_header": IDENTITY_HEADER,
    }))
    .expect("azure config");
    let aws = keyless_aws::start(aws, &ctx).await.expect("aws provider");
    let gcp = keyless_gcp::start(gcp, &ctx).await.expect("gcp provider");
    let azure = keyless_azure::start(azure, &ctx).await.expect("azure provider");
    let readiness: Vec<_> = [aws.readiness(), gcp.readiness(), azure.readiness()].concat();
    // Serve cached credentials, so that a fuzzed request reaches the answering code.
    for _ in 0..600 {
        if readiness.iter().flat_map(|r| r.statuses()).all(|s| s.ready()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Not `keyless_provider::router` per provider, merged: each such router answers through a
    // fallback service, and axum refuses to merge two fallbacks (it panics).
    let providers: [(&'static str, &dyn Started); 3] = [("aws", &aws), ("gcp", &gcp), ("azure", &azure)];
    // Built as the binary builds its listener's (keyless's `providers::routes_of`).
    let single_headers = keyless_registry::single_headers();
    let routes = Routes::refusing_twice(providers, None, &single_headers).expect("the providers' routes");
    Harness { routes, single_headers, _emulator: emulator, _state: state }
}

/// The request a fuzzed head describes, or `None` when hyper would have refused it already.
fn request(data: &[u8]) -> Option<Request<Body>> {
    let mut lines = data.split(|b| *b == b'\n');
    let line = lines.next()?;
    let space = line.iter().position(|b| *b == b' ')?;
    let method = Method::from_bytes(&line[..space]).ok()?;
    let uri = Uri::try_from(line[space + 1..].trim_ascii()).ok()?;
    let mut builder = Request::builder().method(method).uri(uri);
    for line in lines {
        let Some(colon) = line.iter().position(|b| *b == b':') else { continue };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(line[..colon].trim_ascii()),
            HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) else {
            continue;
        };
        builder = builder.header(name, value);
    }
    builder.body(Body::empty()).ok()
}

fn header_is(headers: &HeaderMap, name: &str, expected: &str) -> bool {
    headers.get(name).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(expected.as_bytes()))
}

/// Security rules of the security rules, docs/reliability.md that a 200 must respect.
fn check_authorized(path: &str, headers: &HeaderMap, single_headers: &[&'static str]) {
    if path == "/v1/credentials" {
        assert_eq!(headers.get("authorization").map(|v| v.as_bytes()), Some(AUTHORIZATION.as_bytes()));
    }
    if path.trim_end_matches('/') == "/msi/token" {
        assert_eq!(headers.get("x-identity-header").map(|v| v.as_bytes()), Some(IDENTITY_HEADER.as_bytes()));
    }
    if path.starts_with("/metadata/identity/") {
        assert!(header_is(headers, "metadata", "true"), "IMDS answered without `Metadata: true`");
    }
    if path.starts_with("/computeMetadata/") {
        assert!(header_is(headers, "metadata-flavor", "Google"), "GCE answered without `Metadata-Flavor: Google`");
    }
    if path.starts_with("/latest/meta-data/iam/security-credentials/") && path.len() > 43 {
        assert!(headers.contains_key("x-aws-ec2-metadata-token"), "IMDS credentials without a session token");
    }
    for name in ["x-forwarded-for", "forwarded", "x-real-ip"] {
        assert!(!headers.contains_key(name), "a credential route answered a request relayed by a proxy ({name})");
    }
    // Host and Authorization, and every registered cloud's own (as the binary's routes refuse).
    for name in keyless_provider::guard::SINGLE_HEADERS.iter().map(|h| h.as_str()).chain(single_headers.iter().copied()) {
        assert!(headers.get_all(name).iter().count() <= 1, "answered with {name} given twice");
    }
    if let Some(host) = headers.get("host") {
        assert!(keyless_fuzz::names_keyless(host.as_bytes(), &["metadata.google.internal", "metadata"]), "answered Host {host:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some(request) = request(data) else { return };
    let harness = harness();
    let (path, headers) = (request.uri().path().to_owned(), request.headers().clone());
    let response = keyless_fuzz::runtime().block_on(async {
        tokio::time::timeout(Duration::from_secs(5), harness.routes.serve(request)).await
    });
    let response = response.expect("a request hung for 5 s").expect("the routes are infallible");
    if response.status().is_success() {
        check_authorized(&path, &headers, &harness.single_headers);
    }
});
