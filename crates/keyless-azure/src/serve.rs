//! What the IMDS and App Service endpoints share: the token request's query, identity selection,
//! the cache lookup, and the `{"error","error_description"}` answers (docs/protocols.md 4.2; the App Service statuses: 4.3).

use std::borrow::Cow;
use std::sync::Arc;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use keyless_core::clock::SharedClock;
use keyless_core::{CredentialCache, ErrorClass, ExchangeError, Expiring, Secret};
use keyless_provider::{NativeErrors, Violation};

use crate::entra::{AccessToken, EntraExchange, TokenKey};
use crate::identity::{ClientId, Scope};
use crate::rendered::Fields;

/// Query parameters that select a user-assigned identity. Only `client_id` names an app keyless
/// knows; the others name Azure objects keyless has no map for.
const SELECTORS: [&str; 5] = ["client_id", "object_id", "principal_id", "msi_res_id", "mi_res_id"];

/// Shared by the handlers of both endpoints.
#[derive(Debug)]
pub(crate) struct Serving {
    pub cache: CredentialCache<EntraExchange>,
    /// The primary client id first: it answers requests that name no identity.
    pub clients: Vec<ClientId>,
    pub identity_header: Secret<String>,
    pub clock: SharedClock,
}

/// A refused or failed request, answered as `{"error","error_description"}`.
#[derive(Debug)]
pub(crate) struct Refusal {
    status: StatusCode,
    error: &'static str,
    description: String,
}

impl Refusal {
    pub fn new(status: StatusCode, error: &'static str, description: impl Into<String>) -> Self {
        Self { status, error, description: description.into() }
    }

    pub fn bad_request(description: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", description)
    }

    /// A failed exchange, in the native format, with the exchange's message and hint.
    fn exchange_failed(err: &ExchangeError) -> Self {
        let description = match &err.code {
            Some(code) => format!("{code}: {err}"),
            None => err.to_string(),
        };
        let (status, error) = match (err.class, err.code.as_deref()) {
            // The resource asked for is the problem: 400 like IMDS' own `invalid_resource`.
            (ErrorClass::Terminal, Some("AADSTS70011" | "AADSTS500011")) => {
                (StatusCode::BAD_REQUEST, "invalid_resource")
            }
            // Not 400: Python and Rust read a 400 as "identity not assigned" and drop the body;
            // a 403 surfaces our hint at once instead of after ~70 s of 5xx retries.
            (ErrorClass::Terminal, _) => (StatusCode::FORBIDDEN, "unauthorized_client"),
            _ => (StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable"),
        };
        Self::new(status, error, description)
    }
}

impl Refusal {
    /// The App Service shape: msal's App Service path reads only `statusCode` and `message` from
    /// a body without a token (otherwise Python reports "(invalid_scope) None, None" and the
    /// explanation is lost); `error`/`error_description` stay for every other client.
    pub fn into_app_service_response(self) -> Response {
        let body = serde_json::json!({
            "error": self.error,
            "error_description": self.description,
            "statusCode": self.status.as_u16(),
            "message": self.description,
        });
        (self.status, no_store(), Json(body)).into_response()
    }
}

impl IntoResponse for Refusal {
    /// The IMDS shape, exactly as IMDS answers.
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "error": self.error,
            "error_description": self.description,
        });
        (self.status, no_store(), Json(body)).into_response()
    }
}

/// A token body: `application/json`, `no-store`.
pub(crate) fn json_ok(body: impl IntoResponse) -> Response {
    (no_store(), [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response()
}

/// What a token's body says besides IMDS' countdowns (see [`crate::rendered`]).
pub(crate) fn body_fields<'a>(key: &'a TokenKey, token: &'a Expiring<AccessToken>) -> Fields<'a> {
    Fields {
        access_token: token.value.token.expose(),
        client_id: key.client_id.as_str(),
        expires_on: token.expires_at,
        not_before: token.value.issued_at,
        resource: key.scope.resource(),
    }
}

/// Token responses must not be kept by anything between keyless and the app.
pub(crate) fn no_store() -> [(header::HeaderName, HeaderValue); 1] {
    [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))]
}

/// The parameters both endpoints take, trimmed, borrowed from the query unless they had to be
/// decoded (the hot path copies only an escaped value, such as the usual `resource`).
#[derive(Debug, Default)]
pub(crate) struct TokenQuery<'a> {
    pub api_version: Option<Cow<'a, str>>,
    pub resource: Option<Cow<'a, str>>,
    /// The one identity selector given, as (parameter, value).
    selector: Option<(&'static str, Cow<'a, str>)>,
}

impl<'a> TokenQuery<'a> {
    pub fn parse(raw: Option<&'a str>) -> Result<Self, Refusal> {
        // Its length is bounded by the shared rules (`keyless_provider::guard`).
        let raw = raw.unwrap_or_default();
        let mut query = Self::default();
        for (name, value) in form_pairs(raw) {
            // An empty selector is what clients send for "no user-assigned identity".
            let value = trimmed(value);
            let slot = match name.as_ref() {
                "api-version" => &mut query.api_version,
                "resource" => &mut query.resource,
                _ => match SELECTORS.iter().find(|s| **s == name) {
                    Some(selector) if !value.is_empty() => {
                        if let Some((first, _)) = &query.selector {
                            return Err(Refusal::bad_request(format!(
                                "both {first} and {selector} were given: name the identity once, \
                                 with client_id"
                            )));
                        }
                        query.selector = Some((selector, value));
                        continue;
                    }
                    _ => continue,
                },
            };
            if slot.replace(value).is_some() {
                return Err(Refusal::bad_request(format!("query parameter {name} was given twice")));
            }
        }
        Ok(query)
    }

    /// The `resource` as a scope, or why there is none.
    pub fn scope(&self) -> Result<Scope, Refusal> {
        match self.resource.as_deref() {
            None | Some("") => Err(Refusal::bad_request("Required query variable 'resource' is missing")),
            Some(resource) => Scope::for_resource(resource).map_err(Refusal::bad_request),
        }
    }
}

/// The name-value pairs of an `application/x-www-form-urlencoded` query, exactly as
/// `url::form_urlencoded::parse` yields them (`&`-separated, empty pairs skipped, split at the
/// first `=`, `+` as space, `%XX` decoded, invalid UTF-8 replaced), but borrowed when nothing
/// needs decoding and decoded into one right-sized buffer otherwise: this is every token
/// request's path, and that parser grew its buffer byte by byte.
fn form_pairs(raw: &str) -> impl Iterator<Item = (Cow<'_, str>, Cow<'_, str>)> {
    raw.split('&').filter(|pair| !pair.is_empty()).map(|pair| {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        (form_decode(name), form_decode(value))
    })
}

fn form_decode(text: &str) -> Cow<'_, str> {
    let bytes = text.as_bytes();
    if !bytes.iter().any(|b| matches!(b, b'%' | b'+')) {
        return Cow::Borrowed(text);
    }
    let hex = |i: usize| bytes.get(i).and_then(|b| char::from(*b).to_digit(16));
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        i += 1;
        match b {
            b'+' => out.push(b' '),
            b'%' => match (hex(i), hex(i + 1)) {
                (Some(high), Some(low)) => {
                    // Two hex digits: at most 0xff.
                    out.push(u8::try_from(high * 16 + low).unwrap_or(b'%'));
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            other => out.push(other),
        }
    }
    match String::from_utf8(out) {
        Ok(decoded) => Cow::Owned(decoded),
        Err(invalid) => Cow::Owned(String::from_utf8_lossy(invalid.as_bytes()).into_owned()),
    }
}

/// `value` without surrounding whitespace, copied only if it was decoded and had some.
fn trimmed(value: Cow<'_, str>) -> Cow<'_, str> {
    match value {
        Cow::Borrowed(value) => Cow::Borrowed(value.trim()),
        Cow::Owned(value) if value.trim().len() == value.len() => Cow::Owned(value),
        Cow::Owned(value) => Cow::Owned(value.trim().to_owned()),
    }
}

impl Serving {
    /// The configured client the request names (the primary one when it names none).
    pub fn select(&self, query: &TokenQuery<'_>) -> Result<&ClientId, Refusal> {
        let known = || self.clients.iter().map(ClientId::as_str).collect::<Vec<_>>().join(", ");
        match &query.selector {
            None => self.clients.first().ok_or_else(|| Refusal::bad_request("Identity not found")),
            Some(("client_id", requested)) => self.clients.iter().find(|c| c.is_named_by(requested)).ok_or_else(|| {
                Refusal::bad_request(format!(
                    "Identity not found: client_id {requested} is not served by keyless \
                         (served: {}); add it to azure.additional_client_ids",
                    known()
                ))
            }),
            Some((param, _)) => Err(Refusal::bad_request(format!(
                "Identity not found: keyless selects identities by client_id only and cannot map \
                 {param} to an app; ask with client_id (served: {})",
                known()
            ))),
        }
    }

    /// A valid token for the request: from cache without waiting when one is held.
    pub async fn token(&self, query: &TokenQuery<'_>) -> Result<(TokenKey, Arc<Expiring<AccessToken>>), Refusal> {
        let key = TokenKey { client_id: self.select(query)?.clone(), scope: query.scope()? };
        let token = self.cache.get(&key).await.map_err(|e| Refusal::exchange_failed(&e))?;
        Ok((key, token))
    }
}

/// The shared rules' refusals in the shape of the endpoint asked: App Service's for its path,
/// IMDS' otherwise.
#[derive(Debug, Clone)]
pub(crate) struct AzureErrors {
    pub(crate) app_service_path: Option<String>,
}

impl NativeErrors for AzureErrors {
    fn refuse(&self, path: &str, violation: &Violation) -> Response {
        let error = match violation.status() {
            StatusCode::FORBIDDEN => "forbidden",
            // keyless node cannot have the caller's tokens right now: OAuth's retryable error.
            StatusCode::SERVICE_UNAVAILABLE => "temporarily_unavailable",
            _ => "invalid_request",
        };
        self.shaped(path, Refusal::new(violation.status(), error, violation.message()))
    }

    fn unavailable(&self, path: &str, err: &ExchangeError) -> Response {
        self.shaped(path, Refusal::exchange_failed(err))
    }
}

impl AzureErrors {
    /// App Service's shape on its path, IMDS' elsewhere.
    fn shaped(&self, path: &str, refusal: Refusal) -> Response {
        if self.app_service_path.as_deref() == Some(path) {
            refusal.into_app_service_response()
        } else {
            refusal.into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_resource_version_and_one_selector() {
        let q = TokenQuery::parse(Some(
            "api-version=2019-08-01&resource=https%3A%2F%2Fvault.azure.net&client_id=abc&object_id=",
        ))
        .expect("valid");
        assert_eq!(q.api_version.as_deref(), Some("2019-08-01"));
        assert_eq!(q.resource.as_deref(), Some("https://vault.azure.net"));
        assert_eq!(q.selector, Some(("client_id", Cow::Borrowed("abc"))));
    }

    #[test]
    fn values_are_decoded_and_trimmed_and_borrowed_unless_decoded() {
        let q = TokenQuery::parse(Some("api-version=%202019-08-01+&resource=+https://vault.azure.net &client_id=%20"))
            .expect("valid");
        assert_eq!(q.api_version.as_deref(), Some("2019-08-01"));
        assert_eq!(q.resource.as_deref(), Some("https://vault.azure.net"));
        assert_eq!(q.selector, None, "an empty selector names no identity");
        let q = TokenQuery::parse(Some("resource=https://vault.azure.net&api-version=2019-08-01")).expect("valid");
        assert!(matches!(q.resource, Some(Cow::Borrowed(_))) && matches!(q.api_version, Some(Cow::Borrowed(_))));
    }

    #[test]
    fn form_pairs_are_what_the_url_crate_parses() {
        let queries = [
            "",
            "&",
            "a",
            "a=",
            "=b",
            "a=b&&c=d&",
            "a=b=c",
            "resource=https%3A%2F%2Fmanagement.azure.com&api-version=2018-02-01",
            "x=1+2%2B3%20",
            "bad=%&worse=%4&hex=%zz%41%4a%4A",
            "utf8=%C3%A9%E2%9C%93&broken=%C3%28%ff",
            "na%6De=v%61lue&plus+name=plus+value",
            "%%41=%2",
        ];
        for query in queries {
            let ours: Vec<(String, String)> =
                form_pairs(query).map(|(n, v)| (n.into_owned(), v.into_owned())).collect();
            let theirs: Vec<(String, String)> =
                url::form_urlencoded::parse(query.as_bytes()).map(|(n, v)| (n.into_owned(), v.into_owned())).collect();
            assert_eq!(ours, theirs, "{query:?}");
        }
        assert!(matches!(form_decode("plain-value"), Cow::Borrowed("plain-value")));
    }

    #[test]
    fn refuses_duplicates_and_two_selectors() {
        assert!(TokenQuery::parse(Some("resource=a&resource=b")).is_err());
        assert!(TokenQuery::parse(Some("client_id=a&mi_res_id=b")).is_err());
    }

    #[test]
    fn missing_resource_is_the_imds_message() {
        let refusal =
            TokenQuery::parse(Some("api-version=2018-02-01")).expect("valid").scope().expect_err("no resource");
        assert_eq!(refusal.status, StatusCode::BAD_REQUEST);
        assert!(refusal.description.contains("'resource' is missing"));
    }
}
