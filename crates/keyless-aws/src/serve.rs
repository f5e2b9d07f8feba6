//! What the container-credentials and IMDS routes share: the cache they serve from, and the native
//! error body `{"Code","Message"}` (protocols.md 2.2).

use std::future::{Ready, ready};
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::Json;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::future::Either;
use keyless_core::{CredentialCache, ErrorClass, ExchangeError, Expiring};
use serde_json::json;
use tower::{Layer, Service};

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
    let status = match err.class {
        ErrorClass::Terminal => StatusCode::INTERNAL_SERVER_ERROR,
        ErrorClass::Retryable | ErrorClass::RereadToken => StatusCode::SERVICE_UNAVAILABLE,
    };
    error_json(status, err.code.as_deref().unwrap_or("CredentialsUnavailable"), &err.to_string())
}

/// No route of this provider takes a request body (SPEC section 6: none accepted where none is
/// expected), so a declared one is refused before any handler runs.
///
/// A plain tower layer rather than `axum::middleware::from_fn`, which boxes a future and clones
/// the inner service on every request: several allocations on the cached path (docs/benchmarks.md).
#[derive(Debug, Clone, Copy)]
pub(crate) struct RefuseBodiesLayer;

impl<S> Layer<S> for RefuseBodiesLayer {
    type Service = RefuseBodies<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RefuseBodies { inner }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct RefuseBodies<S> {
    inner: S,
}

impl<S> Service<Request> for RefuseBodies<S>
where
    S: Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Either<Ready<Result<Response, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let headers = request.headers();
        let declared = headers.contains_key(header::TRANSFER_ENCODING)
            || headers.get(header::CONTENT_LENGTH).is_some_and(|v| v.as_bytes() != b"0");
        if declared {
            return Either::Left(ready(Ok(error_json(
                StatusCode::PAYLOAD_TOO_LARGE,
                "RequestBodyNotAccepted",
                "this endpoint takes no request body",
            ))));
        }
        Either::Right(self.inner.call(request))
    }
}
