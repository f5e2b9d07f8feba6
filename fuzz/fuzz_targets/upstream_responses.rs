//! Parsing of what the token services answer: AWS STS XML (through aws-sdk-sts), Google STS and
//! IAM Credentials JSON, Entra ID JSON. A local upstream answers each adapter's one-shot exchange
//! (the one `keyless check` runs) with the fuzzed status and body. Besides not panicking and
//! finishing in time, an exchange may only succeed on a 200.
//!
//! Input: byte 0 picks the service, byte 1 the status, the rest is the body.
#![no_main]

use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use keyless_core::SubjectToken;
use keyless_provider::{Diagnosis, Provider};
use libfuzzer_sys::fuzz_target;

const STATUSES: [u16; 8] = [200, 400, 401, 403, 404, 429, 500, 503];
const GCP_AUDIENCE: &str =
    "//iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/p/providers/k";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Service {
    AwsSts,
    GcpSts,
    GcpIam,
    AzureToken,
}

/// What the local upstream answers to the service under test.
struct Canned {
    service: Service,
    status: StatusCode,
    body: Vec<u8>,
}

struct Harness {
    canned: Arc<Mutex<Canned>>,
    aws: Box<dyn Diagnosis>,
    gcp_direct: Box<dyn Diagnosis>,
    gcp_impersonated: Box<dyn Diagnosis>,
    azure: Box<dyn Diagnosis>,
    aws_token: SubjectToken,
    gcp_token: SubjectToken,
    azure_token: SubjectToken,
}

async fn answer(State(canned): State<Arc<Mutex<Canned>>>, uri: Uri) -> Response {
    let canned = canned.lock().unwrap_or_else(PoisonError::into_inner);
    // Impersonation first needs a good STS answer for its IAM call to be reached.
    if canned.service == Service::GcpIam && uri.path() == "/v1/token" {
        let sts = r#"{"access_token":"ya29.fuzz-federated","issued_token_type":"urn:ietf:params:oauth:token-type:access_token","token_type":"Bearer","expires_in":3600}"#;
        return ([(header::CONTENT_TYPE, "application/json")], sts).into_response();
    }
    let content_type = if canned.service == Service::AwsSts { "text/xml" } else { "application/json" };
    (canned.status, [(header::CONTENT_TYPE, content_type)], canned.body.clone()).into_response()
}

/// The diagnosis `keyless check` runs: the same exchange code as `keyless serve`, without a cache.
fn diagnosis<P: Provider>(config: P::Config, ctx: &keyless_core::Context) -> Box<dyn Diagnosis> {
    P::configure(config, ctx).expect("a valid section").diagnosis(ctx).expect("a diagnosis")
}

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| keyless_fuzz::runtime().block_on(start()))
}

async fn start() -> Harness {
    let canned = Arc::new(Mutex::new(Canned { service: Service::AwsSts, status: StatusCode::OK, body: Vec::new() }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a loopback port");
    let url = format!("http://{}", listener.local_addr().expect("its address"));
    let app = Router::new().fallback(answer).with_state(canned.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let ctx = keyless_fuzz::context();
    let aws: keyless_aws::Config = serde_json::from_value(serde_json::json!({
        "token_file": "/nonexistent/aws", "role_arn": "arn:aws:iam::123456789012:role/fuzz", "region": "us-east-1",
        "sts_endpoint": url,
    }))
    .expect("aws config");
    let gcp = |service_account: Option<&str>| -> keyless_gcp::Config {
        let mut config = serde_json::json!({
            "token_file": "/nonexistent/gcp", "audience": GCP_AUDIENCE, "project_id": "fuzz",
            "sts_endpoint": url, "iam_endpoint": url,
        });
        if let Some(sa) = service_account {
            config["service_account"] = sa.into();
        }
        serde_json::from_value(config).expect("gcp config")
    };
    let azure: keyless_azure::Config = serde_json::from_value(serde_json::json!({
        "token_file": "/nonexistent/azure", "tenant_id": "7b3c5a9e-2f1d-4c6b-9a8e-1d2c3b4a5f60",
        "client_id": "3f6e8d1c-9b2a-4e7f-8c5d-6a1b2c3d4e5f", "authority_host": url,
    }))
    .expect("azure config");
    let token = |aud: &str| SubjectToken::parse(&keyless_fuzz::unsigned_jwt(aud)).expect("a JWT-shaped token");
    Harness {
        canned,
        aws: diagnosis::<keyless_aws::Aws>(aws, &ctx),
        gcp_direct: diagnosis::<keyless_gcp::Gcp>(gcp(None), &ctx),
        gcp_impersonated: diagnosis::<keyless_gcp::Gcp>(gcp(Some("fuzz@fuzz.iam.gserviceaccount.com")), &ctx),
        azure: diagnosis::<keyless_azure::Azure>(azure, &ctx),
        aws_token: token("sts.amazonaws.com"),
        gcp_token: token(GCP_AUDIENCE),
        azure_token: token("api://AzureADTokenExchange"),
    }
}

fuzz_target!(|data: &[u8]| {
    let (Some(&pick), Some(&status)) = (data.first(), data.get(1)) else { return };
    let service = [Service::AwsSts, Service::GcpSts, Service::GcpIam, Service::AzureToken][usize::from(pick % 4)];
    let status = STATUSES[usize::from(status) % STATUSES.len()];
    let h = harness();
    {
        let mut canned = h.canned.lock().unwrap_or_else(PoisonError::into_inner);
        *canned = Canned { service, status: StatusCode::from_u16(status).expect("a status"), body: data[2..].to_vec() };
    }
    let results: Vec<Result<std::time::SystemTime, String>> = keyless_fuzz::runtime().block_on(async {
        let attempts = async {
            match service {
                Service::AwsSts => {
                    h.aws.exchange_once(&h.aws_token).await.into_iter().map(|a| a.result).collect::<Vec<_>>()
                }
                Service::GcpSts => {
                    h.gcp_direct.exchange_once(&h.gcp_token).await.into_iter().map(|a| a.result).collect()
                }
                Service::GcpIam => {
                    h.gcp_impersonated.exchange_once(&h.gcp_token).await.into_iter().map(|a| a.result).collect()
                }
                Service::AzureToken => {
                    h.azure.exchange_once(&h.azure_token).await.into_iter().map(|a| a.result).collect()
                }
            }
        };
        let attempts = tokio::time::timeout(Duration::from_secs(10), attempts).await.expect("an exchange hung");
        attempts.into_iter().map(|r| r.map_err(|e| e.to_string())).collect()
    });
    for result in results {
        if result.is_ok() {
            assert_eq!(status, 200, "an exchange succeeded on HTTP {status}");
        }
    }
});
