//! The Azure IMDS managed-identity token endpoint (docs/protocols.md 4.2), for clients that honour
//! `AZURE_POD_IDENTITY_AUTHORITY_HOST` (Python azure-identity, Node msal-node).

use std::sync::Arc;
use std::time::SystemTime;

use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use keyless_provider::Request;

use crate::serve::{Refusal, Serving, TokenQuery, body_fields, json_ok};

/// Every path the endpoint answers on, as clients ask for it: `/metadata/identity/oauth2/token`;
/// with a trailing `/` (msal-node lower-cases the URL and appends one before the query,
/// docs/protocols.md 4.2); with a leading `//` (MSAL4J, azure-identity for Java, joins
/// `AZURE_POD_IDENTITY_AUTHORITY_HOST` and the path with a second slash, docs/protocols.md 8).
pub(crate) const PATHS: [&str; 3] =
    ["/metadata/identity/oauth2/token", "/metadata/identity/oauth2/token/", "//metadata/identity/oauth2/token"];

/// The oldest api-version of the identity endpoint; every later dated version is accepted.
const OLDEST_API_VERSION: &str = "2018-02-01";

/// The headers and query are read in place (docs/benchmarks.md: this is the hot path).
pub(crate) async fn token(serving: Arc<Serving>, request: Request) -> Response {
    match answer(&serving, request.headers(), request.uri().query()).await {
        Ok(response) => response,
        Err(refusal) => refusal.into_response(),
    }
}

async fn answer(serving: &Serving, headers: &HeaderMap, query: Option<&str>) -> Result<Response, Refusal> {
    // Checked first: Python's credential chain probes without the header and must get exactly
    // this 400 (any answer means "IMDS is available"), as real IMDS gives it.
    let metadata = headers.get("metadata").is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"));
    if !metadata {
        return Err(Refusal::bad_request("Required metadata header not specified"));
    }
    let query = TokenQuery::parse(query)?;
    match query.api_version.as_deref() {
        None | Some("") => {
            return Err(Refusal::bad_request("Required query variable 'api-version' is missing"));
        }
        Some(version) if !is_supported_version(version) => {
            return Err(Refusal::bad_request(format!(
                "api-version {version} is not supported: use {OLDEST_API_VERSION} or later"
            )));
        }
        Some(_) => {}
    }
    let (key, token) = serving.token(&query).await?;
    // Every field a JSON string, as IMDS sends them (docs/protocols.md 4.2); `expires_in` is what is
    // left of the cached token, not its original lifetime. One clock read for both.
    let now = serving.clock.now();
    let left = |t: SystemTime| t.duration_since(now).unwrap_or_default().as_secs();
    let body =
        token.value.rendered.imds(&body_fields(&key, &token), left(token.expires_at), left(token.value.ext_expires_at));
    Ok(json_ok(body))
}

/// `YYYY-MM-DD` (with an optional `-preview` style suffix), not older than the first version.
fn is_supported_version(version: &str) -> bool {
    let date = version.get(..10).unwrap_or_default();
    let shaped = date.len() == 10
        && date.char_indices().all(|(i, c)| if i == 4 || i == 7 { c == '-' } else { c.is_ascii_digit() });
    let suffix_ok = version[date.len()..].is_empty() || version[date.len()..].starts_with('-');
    shaped && suffix_ok && date >= OLDEST_API_VERSION
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_dated_versions_from_2018_02_01() {
        for v in ["2018-02-01", "2019-08-01", "2021-12-13", "2025-01-01-preview"] {
            assert!(is_supported_version(v), "{v}");
        }
        for v in ["2017-09-01", "latest", "2019-8-1", "2019-08-01x", ""] {
            assert!(!is_supported_version(v), "{v}");
        }
    }
}
