//! The App Service managed-identity endpoint (docs/protocols.md 4.3): `IDENTITY_ENDPOINT` +
//! `IDENTITY_HEADER`, the one route every Azure SDK honours, Rust's `azure_identity` included
//! (its IMDS route is hard-wired to 169.254.169.254).

use std::sync::Arc;

use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use keyless_provider::Request;

use crate::serve::{Refusal, Serving, TokenQuery, body_fields, json_ok};

/// The one api-version of the `IDENTITY_ENDPOINT` protocol; the 2017 one (`MSI_ENDPOINT`,
/// `secret` header, date-string `expires_on`) broke .NET and Java clients and is not served.
const API_VERSION: &str = "2019-08-01";

/// The headers and query are read in place (docs/benchmarks.md: this is the hot path).
pub(crate) async fn token(serving: Arc<Serving>, request: Request) -> Response {
    match answer(&serving, request.headers(), request.uri().query()).await {
        Ok(response) => response,
        Err(refusal) => refusal.into_app_service_response(),
    }
}

async fn answer(serving: &Serving, headers: &HeaderMap, query: Option<&str>) -> Result<Response, Refusal> {
    match headers.get("x-identity-header") {
        None => {
            return Err(Refusal::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "X-IDENTITY-HEADER is required: send the value of IDENTITY_HEADER",
            ));
        }
        // Constant time: the header is the endpoint's only guard (the security rules, docs/reliability.md).
        Some(given) if !serving.identity_header.matches(given.as_bytes()) => {
            return Err(Refusal::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "X-IDENTITY-HEADER does not match IDENTITY_HEADER",
            ));
        }
        Some(_) => {}
    }
    let query = TokenQuery::parse(query)?;
    match query.api_version.as_deref() {
        Some(API_VERSION) => {}
        None | Some("") => {
            return Err(Refusal::bad_request(format!(
                "Required query variable 'api-version' is missing: use {API_VERSION}"
            )));
        }
        Some(other) => {
            return Err(Refusal::bad_request(format!("api-version {other} is not supported: use {API_VERSION}")));
        }
    }
    let (key, token) = serving.token(&query).await?;
    Ok(json_ok(token.value.rendered.app_service(&body_fields(&key, &token))))
}
