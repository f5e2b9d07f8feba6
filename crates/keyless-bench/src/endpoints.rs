//! The five native endpoints, each asked exactly as its SDKs ask it (docs/protocols.md 2.2, 2.3, 3.3, 4.2, 4.3), for the
//! credential keyless pre-warmed: the cached-credential path.

use std::net::SocketAddr;

use hyper::StatusCode;
use hyper::header::HeaderValue;
use keyless_registry::endpoints::{ClientRequest, imds_session_request};
pub use keyless_registry::endpoints::{Endpoint, Presented};

use crate::BenchError;
use crate::load::{self, Target};

/// The Resource Manager resource keyless pre-warms for Azure, as the SDKs ask for it.
pub const AZURE_RESOURCE: &str = "https%3A%2F%2Fmanagement.azure.com";

/// `--only`'s values: the [`Endpoint::id`]s, listed in `--help`.
pub fn parser() -> impl clap::builder::TypedValueParser<Value = Endpoint> {
    use clap::builder::TypedValueParser as _;
    // Only the listed ids get through, each an endpoint's.
    clap::builder::PossibleValuesParser::new(Endpoint::ALL.map(Endpoint::id))
        .map(|id| Endpoint::from_id(&id).unwrap_or(Endpoint::AwsContainer))
}

fn at(addr: SocketAddr, request: ClientRequest) -> Target {
    Target { addr, method: request.method, path_and_query: request.path_and_query, headers: request.headers }
}

pub fn target(endpoint: Endpoint, addr: SocketAddr, presented: &Presented) -> Target {
    at(addr, endpoint.request(presented))
}

/// `PUT /latest/api/token` as the SDKs send it (the Rust SDK always asks for the maximum TTL).
pub async fn imds_session(addr: SocketAddr) -> Result<HeaderValue, BenchError> {
    let put = at(addr, imds_session_request(21600));
    let client = reqwest::Client::builder().no_proxy().build().map_err(|e| BenchError::Request(e.to_string()))?;
    let response = client
        .put(format!("http://{addr}{}", put.path_and_query))
        .headers(put.headers.into_iter().collect())
        .send()
        .await
        .map_err(|e| BenchError::Request(format!("PUT /latest/api/token: {e}")))?;
    if response.status() != StatusCode::OK {
        return Err(BenchError::Request(format!("PUT /latest/api/token answered {}", response.status())));
    }
    let token = response.text().await.map_err(|e| BenchError::Request(format!("PUT /latest/api/token: {e}")))?;
    HeaderValue::from_str(&token)
        .map_err(|_| BenchError::Request("the IMDS session token is not a header value".into()))
}

/// One request on a fresh connection: the size keyless answers with (the bare server answers
/// the same size). Fails unless it is a 200.
pub async fn body_len(target: &Target) -> Result<usize, BenchError> {
    let mut sender = load::connect(target.addr).await?;
    match load::send(&mut sender, target).await? {
        (StatusCode::OK, len) => Ok(len),
        (status, _) => Err(BenchError::Request(format!("{} answered {status}", target.path_and_query))),
    }
}
