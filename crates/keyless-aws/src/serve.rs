//! What the container-credentials and IMDS routes share: the cache they serve from, and the native
//! error body `{"Code","Message"}` (docs/protocols.md 2.2).

use std::sync::Arc;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use keyless_core::{CredentialCache, ExchangeError, Expiring};
use keyless_provider::{NativeErrors, Violation};
use serde_json::json;

use crate::credentials::AwsCredentials;
use crate::settings::RoleArn;
use crate::sts::StsExchange;

/// The identity being served and its credential cache.
#[derive(Debug, Clone)]
pub(crate) struct Served {
    pub(crate) cache: CredentialCache<StsExchange>,
    pub(crate) role: RoleArn,
    pub(crate) region: String,
    pub(crate) account_id: String,
}

impl Served {
    /// The cached credential (without waiting when one is valid), or the native error response
    /// carrying the exchange's message and hint.
    pub(crate) async fn credential(&self) -> Result<Arc<Expiring<AwsCredentials>>, Response> {
        self.cache.get(&()).await.map_err(|e| unavailable(&e))
    }
}

/// A pre-rendered JSON body (a credential's: see `Rendered`).
pub(crate) fn json_bytes(body: axum::body::Bytes) -> Response {
    ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response()
}

pub(crate) fn error_json(status: StatusCode, code: &str, message: &str) -> Response {
    (status, Json(json!({ "Code": code, "Message": message }))).into_response()
}

/// No valid credential: 503 while the failure may pass (clients retry), 500 when it needs a fix.
fn unavailable(err: &ExchangeError) -> Response {
    let status = keyless_provider::guard::unavailable_status(err.class, StatusCode::INTERNAL_SERVER_ERROR);
    error_json(status, err.code.as_deref().unwrap_or("CredentialsUnavailable"), &err.to_string())
}

/// The shared request rules' refusals in AWS's shapes: IMDS answers text, the container
/// endpoint `{"Code","Message"}` (docs/protocols.md 2.2, 2.3).
#[derive(Debug, Clone, Copy)]
pub(crate) struct AwsErrors;

impl NativeErrors for AwsErrors {
    fn refuse(&self, path: &str, violation: &Violation) -> Response {
        if path.starts_with("/latest/") {
            crate::imds::text(violation.status(), format!("{}: {}", violation.code(), violation.message()))
        } else {
            error_json(violation.status(), violation.code(), &violation.message())
        }
    }

    /// The container endpoint's `{"Code","Message"}`, on IMDS too (what [`Served::credential`]
    /// answers on every route).
    fn unavailable(&self, _path: &str, err: &ExchangeError) -> Response {
        unavailable(err)
    }
}
