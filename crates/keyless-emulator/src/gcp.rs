//! Google Cloud: STS token exchange (`POST /v1/token`), IAM Credentials impersonation
//! (`generateAccessToken`, `generateIdToken`), OAuth2 `tokeninfo` and the ID-token JWKS.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use crate::control::Service;
use crate::issuer::TokenRejection;
use crate::keys::{HeaderStyle, jwks};
use crate::{SharedState, clock, ids};

const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
const SUBJECT_TOKEN_TYPES: [&str; 2] =
    ["urn:ietf:params:oauth:token-type:jwt", "urn:ietf:params:oauth:token-type:id_token"];
const CLOUD_PLATFORM: &str = "https://www.googleapis.com/auth/cloud-platform";
/// Scopes that let a token call the IAM Credentials API.
const IAM_SCOPES: [&str; 2] = [CLOUD_PLATFORM, "https://www.googleapis.com/auth/iam"];
const TOKEN_LIFETIME: Duration = Duration::from_secs(3600);
/// Workload Identity Federation's limit on the mapped `google.subject`.
const MAX_SUBJECT_BYTES: usize = 127;

/// A Google access token the emulator issued, for IAM Credentials and tokeninfo.
#[derive(Clone, Debug)]
pub(crate) enum GcpToken {
    /// From STS: a workload identity pool principal.
    Federated { subject: String, scopes: Vec<String> },
    /// From `generateAccessToken`: the service account itself.
    ServiceAccount { email: String, scopes: Vec<String> },
}

/// An OAuth-style STS error: `{"error","error_description"}`.
fn oauth_error(status: StatusCode, error: &str, description: impl Into<String>) -> Response {
    tracing::info!(status = status.as_u16(), error, "gcp sts: rejected");
    let body = serde_json::json!({ "error": error, "error_description": description.into() });
    (status, Json(body)).into_response()
}

fn google_status(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        409 => "ABORTED",
        429 => "RESOURCE_EXHAUSTED",
        499 => "CANCELLED",
        501 => "UNIMPLEMENTED",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        s if s >= 500 => "INTERNAL",
        _ => "FAILED_PRECONDITION",
    }
}

/// A Google API error: `{"error":{"code","message","status"}}`.
#[derive(Debug)]
struct GoogleError {
    status: StatusCode,
    status_name: String,
    message: String,
}

fn google_error(status: StatusCode, status_name: &str, message: impl Into<String>) -> GoogleError {
    GoogleError { status, status_name: status_name.to_owned(), message: message.into() }
}

impl IntoResponse for GoogleError {
    fn into_response(self) -> Response {
        tracing::info!(status = self.status.as_u16(), google_status = %self.status_name, "gcp iam: rejected");
        let body = serde_json::json!({
            "error": { "code": self.status.as_u16(), "message": self.message, "status": self.status_name }
        });
        (self.status, Json(body)).into_response()
    }
}

fn form_or_json(headers: &HeaderMap, body: &[u8]) -> Option<HashMap<String, String>> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/json"));
    if is_json {
        let map: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(body).ok()?;
        Some(
            map.into_iter()
                .filter_map(|(k, v)| match v {
                    serde_json::Value::String(s) => Some((k, s)),
                    _ => None,
                })
                .collect(),
        )
    } else {
        let mut params = HashMap::new();
        for (k, v) in url::form_urlencoded::parse(body) {
            params.entry(k.into_owned()).or_insert_with(|| v.into_owned());
        }
        Some(params)
    }
}

/// `POST /v1/token`.
pub(crate) async fn sts_token(State(state): State<SharedState>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(fault) = state.gate.enter(Service::GcpSts).await {
        if let Some(garbage) = fault.malformed_response(Service::GcpSts) {
            return garbage;
        }
        let default = if fault.status == StatusCode::SERVICE_UNAVAILABLE {
            "temporarily_unavailable"
        } else if fault.status.is_server_error() {
            "server_error"
        } else {
            "invalid_request"
        };
        return oauth_error(fault.status, fault.code.as_deref().unwrap_or(default), fault.message());
    }
    let Some(params) = form_or_json(&headers, &body) else {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "Request body is not valid JSON.");
    };
    let now = clock::now();
    match federated_subject(&state, &params, now) {
        Ok(subject) => {
            let get = |k: &str| params.get(k).map(String::as_str).unwrap_or("");
            let mut scopes: Vec<String> = get("scope").split_whitespace().map(str::to_owned).collect();
            if scopes.is_empty() {
                scopes.push(CLOUD_PLATFORM.to_owned());
            }
            let access_token = format!("ya29.d.{}", ids::random_token(96));
            let token = GcpToken::Federated { subject, scopes };
            let lifetime = state.gate.faults.lifetime(Service::GcpSts, TOKEN_LIFETIME);
            state.gcp_tokens.insert(access_token.clone(), now + lifetime, token, now);
            tracing::info!("gcp sts: issued a federated token");
            Json(serde_json::json!({
                "access_token": access_token,
                "issued_token_type": ACCESS_TOKEN_TYPE,
                "token_type": "Bearer",
                "expires_in": lifetime.as_secs(),
            }))
            .into_response()
        }
        Err((error, description)) => oauth_error(StatusCode::BAD_REQUEST, error, description),
    }
}

/// Validates a token-exchange request as STS does (its form, then the subject token against the
/// pool provider) and returns the federated subject, or the OAuth error and its description.
fn federated_subject(
    state: &SharedState,
    params: &HashMap<String, String>,
    now: SystemTime,
) -> Result<String, (&'static str, String)> {
    let get = |k: &str| params.get(k).map(String::as_str).unwrap_or("");
    if get("grant_type") != TOKEN_EXCHANGE {
        return Err((
            "unsupported_grant_type",
            format!("Invalid value for \"grant_type\". Supported values: [{TOKEN_EXCHANGE}]."),
        ));
    }
    let provider = state.identities.gcp_audience();
    if get("audience").is_empty() {
        return Err(("invalid_request", "The \"audience\" parameter is required.".into()));
    }
    if get("audience") != provider {
        return Err((
            "invalid_target",
            "The target service indicated by the \"audience\" parameters is invalid. This might either be because \
             the pool or provider is disabled or deleted or because it doesn't exist."
                .into(),
        ));
    }
    if !SUBJECT_TOKEN_TYPES.contains(&get("subject_token_type")) {
        return Err((
            "invalid_request",
            format!("Invalid value for \"subject_token_type\". Supported values: {SUBJECT_TOKEN_TYPES:?}."),
        ));
    }
    if get("requested_token_type") != ACCESS_TOKEN_TYPE {
        return Err((
            "invalid_request",
            format!("Invalid value for \"requested_token_type\". Supported values: [{ACCESS_TOKEN_TYPE}]."),
        ));
    }
    let claims = crate::actions::verify_trusted(state, get("subject_token"), now).map_err(|rejection| {
        let description = match rejection {
            TokenRejection::Malformed => "Unable to parse the ID Token.".to_owned(),
            TokenRejection::UntrustedIssuer => {
                "The issuer in ID Token does not match the issuer configured for the provider.".to_owned()
            }
            TokenRejection::BadSignature => "Invalid ID Token signature.".to_owned(),
            TokenRejection::Expired { exp, now } => {
                format!("The ID Token expired at {exp}; the current time is {now}.")
            }
            TokenRejection::NotYetValid { nbf, .. } => format!("The ID Token is not valid before {nbf}."),
        };
        ("invalid_grant", description)
    })?;
    // Without explicit allowed audiences a provider accepts its full name, with or without `https:`.
    let allowed = [provider.clone(), format!("https:{provider}")];
    if !claims.aud.iter().any(|a| allowed.contains(a)) {
        return Err((
            "invalid_grant",
            format!(
                "The audience in ID Token [{}] does not match the expected audience https:{provider}.",
                claims.aud_display()
            ),
        ));
    }
    if claims.sub.len() > MAX_SUBJECT_BYTES {
        return Err((
            "invalid_grant",
            format!("The size of mapped attribute google.subject exceeds the {MAX_SUBJECT_BYTES} bytes limit."),
        ));
    }
    Ok(claims.sub)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct GenerateAccessTokenRequest {
    #[serde(default)]
    scope: Vec<String>,
    lifetime: Option<String>,
    #[serde(default)]
    delegates: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct GenerateIdTokenRequest {
    #[serde(default)]
    audience: String,
    #[serde(default, alias = "include_email")]
    include_email: bool,
    #[serde(default)]
    delegates: Vec<String>,
}

#[derive(Debug, Serialize)]
struct GoogleIdClaims<'a> {
    aud: &'a str,
    azp: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    email: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    email_verified: Option<bool>,
    exp: i64,
    iat: i64,
    iss: &'static str,
    sub: &'a str,
}

/// Parses a protobuf JSON duration: `"3600s"`, `"3600.5s"`.
fn parse_lifetime(raw: &str) -> Option<Duration> {
    let secs = raw.strip_suffix('s')?;
    if secs.is_empty() || !secs.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return None;
    }
    Duration::try_from_secs_f64(secs.parse::<f64>().ok()?).ok()
}

fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, GoogleError> {
    serde_json::from_slice(body).map_err(|e| {
        google_error(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", format!("Invalid JSON payload received. {e}"))
    })
}

/// `POST /v1/projects/{project}/serviceAccounts/{email}:{method}`.
pub(crate) async fn iam_credentials(
    State(state): State<SharedState>,
    Path((project, target)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some((email, method)) = target.rsplit_once(':') else {
        return google_error(StatusCode::NOT_FOUND, "NOT_FOUND", "Requested entity was not found.").into_response();
    };
    let permission = match method {
        "generateAccessToken" => "iam.serviceAccounts.getAccessToken",
        "generateIdToken" => "iam.serviceAccounts.getOpenIdToken",
        _ => {
            return google_error(StatusCode::NOT_FOUND, "NOT_FOUND", format!("Method not found: {method}."))
                .into_response();
        }
    };
    if let Some(fault) = state.gate.enter(Service::GcpIam).await {
        if let Some(garbage) = fault.malformed_response(Service::GcpIam) {
            return garbage;
        }
        let status = fault.code.clone().unwrap_or_else(|| google_status(fault.status).to_owned());
        return google_error(fault.status, &status, fault.message()).into_response();
    }
    match impersonate(&state, &project, email, method, permission, &headers, &body) {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

fn impersonate(
    state: &SharedState,
    project: &str,
    email: &str,
    method: &str,
    permission: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, GoogleError> {
    let now = clock::now();
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let caller = state.gcp_tokens.get(bearer).filter(|(exp, _)| *exp > now).map(|(_, token)| token);
    let Some(caller) = caller else {
        return Err(google_error(
            StatusCode::UNAUTHORIZED,
            "UNAUTHENTICATED",
            "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other \
             valid authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project.",
        ));
    };
    let caller_scopes = match &caller {
        GcpToken::Federated { scopes, .. } | GcpToken::ServiceAccount { scopes, .. } => scopes,
    };
    if !caller_scopes.iter().any(|s| IAM_SCOPES.contains(&s.as_str())) {
        return Err(google_error(
            StatusCode::FORBIDDEN,
            "PERMISSION_DENIED",
            "Request had insufficient authentication scopes.",
        ));
    }
    if project != "-" {
        return Err(google_error(
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            "The project in the resource name must be the '-' wildcard: projects/-/serviceAccounts/EMAIL.",
        ));
    }
    let ids = &state.identities;
    let (delegates, response) = if method == "generateAccessToken" {
        let request: GenerateAccessTokenRequest = parse_body(body)?;
        (request.delegates.clone(), AccessOrId::Access(request))
    } else {
        let request: GenerateIdTokenRequest = parse_body(body)?;
        (request.delegates.clone(), AccessOrId::Id(request))
    };
    // IAM policy of the dev service account: roles/iam.workloadIdentityUser for the dev principal.
    let allowed = matches!(&caller, GcpToken::Federated { subject, .. } if ids.trusts_subject(subject))
        && ids.may_impersonate(email, &delegates);
    if !allowed {
        return Err(google_error(
            StatusCode::FORBIDDEN,
            "PERMISSION_DENIED",
            format!("Permission '{permission}' denied on resource (or it may not exist)."),
        ));
    }
    match response {
        AccessOrId::Access(request) => generate_access_token(state, email, request, now),
        AccessOrId::Id(request) => generate_id_token(state, email, &request, now),
    }
}

enum AccessOrId {
    Access(GenerateAccessTokenRequest),
    Id(GenerateIdTokenRequest),
}

fn generate_access_token(
    state: &SharedState,
    email: &str,
    request: GenerateAccessTokenRequest,
    now: std::time::SystemTime,
) -> Result<Response, GoogleError> {
    let invalid = |m: String| google_error(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", m);
    if request.scope.is_empty() {
        return Err(invalid("Scope required.".into()));
    }
    let lifetime = match request.lifetime.as_deref() {
        None => TOKEN_LIFETIME,
        Some(raw) => parse_lifetime(raw).ok_or_else(|| {
            invalid(format!(
                "Invalid value at 'lifetime' (type.googleapis.com/google.protobuf.Duration), Field 'lifetime', \
                 Illegal duration format; duration must end with 's': '{raw}'"
            ))
        })?,
    };
    if lifetime > TOKEN_LIFETIME {
        return Err(invalid(format!(
            "Requested lifetime {}s exceeds the maximum of 3600s (longer lifetimes need the \
             constraints/iam.allowServiceAccountCredentialLifetimeExtension organization policy).",
            lifetime.as_secs()
        )));
    }
    let access_token = format!("ya29.c.{}", ids::random_token(120));
    let expires = now + state.gate.faults.lifetime(Service::GcpIam, lifetime);
    let token = GcpToken::ServiceAccount { email: email.to_owned(), scopes: request.scope };
    state.gcp_tokens.insert(access_token.clone(), expires, token, now);
    tracing::info!("gcp iam: issued a service-account access token");
    Ok(Json(serde_json::json!({
        "accessToken": access_token,
        "expireTime": clock::rfc3339_seconds(expires),
    }))
    .into_response())
}

fn generate_id_token(
    state: &SharedState,
    email: &str,
    request: &GenerateIdTokenRequest,
    now: std::time::SystemTime,
) -> Result<Response, GoogleError> {
    if request.audience.is_empty() {
        return Err(google_error(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", "Invalid audience: must not be empty."));
    }
    let unique_id = ids::gcp_unique_id(email);
    let iat = clock::unix_secs(now);
    let claims = GoogleIdClaims {
        aud: &request.audience,
        azp: &unique_id,
        email: request.include_email.then_some(email),
        email_verified: request.include_email.then_some(true),
        exp: iat.saturating_add_unsigned(state.gate.faults.lifetime(Service::GcpIam, TOKEN_LIFETIME).as_secs()),
        iat,
        iss: "https://accounts.google.com",
        sub: &unique_id,
    };
    let token = state
        .google_key
        .sign(HeaderStyle::Google, &claims)
        .map_err(|e| google_error(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL", e.to_string()))?;
    tracing::info!("gcp iam: issued an ID token");
    Ok(Json(serde_json::json!({ "token": token })).into_response())
}

#[derive(Debug, Deserialize)]
pub(crate) struct TokenInfoQuery {
    access_token: Option<String>,
}

/// `GET /tokeninfo?access_token=...` (also at `/oauth2/v3/tokeninfo`).
pub(crate) async fn tokeninfo(State(state): State<SharedState>, Query(query): Query<TokenInfoQuery>) -> Response {
    let now = clock::now();
    let found = query.access_token.as_deref().and_then(|t| state.gcp_tokens.get(t)).filter(|(exp, _)| *exp > now);
    let Some((expires, token)) = found else {
        let body = serde_json::json!({ "error": "invalid_token", "error_description": "Invalid Value" });
        return (StatusCode::BAD_REQUEST, Json(body)).into_response();
    };
    let exp = clock::unix_secs(expires);
    let expires_in = exp - clock::unix_secs(now);
    let mut info = serde_json::Map::new();
    let (party, scopes) = match &token {
        GcpToken::ServiceAccount { email, scopes } => {
            info.insert("email".into(), email.clone().into());
            info.insert("email_verified".into(), "true".into());
            (ids::gcp_unique_id(email), scopes)
        }
        GcpToken::Federated { scopes, .. } => (state.identities.gcp_audience(), scopes),
    };
    info.insert("azp".into(), party.clone().into());
    info.insert("aud".into(), party.into());
    info.insert("scope".into(), scopes.join(" ").into());
    info.insert("exp".into(), exp.to_string().into());
    info.insert("expires_in".into(), expires_in.to_string().into());
    info.insert("access_type".into(), "online".into());
    Json(serde_json::Value::Object(info)).into_response()
}

/// `GET /oauth2/v3/certs`: the keys that sign the ID tokens.
pub(crate) async fn certs(State(state): State<SharedState>) -> Json<serde_json::Value> {
    Json(jwks(&[&state.google_key]))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn lifetime_parses_protobuf_durations() {
        assert_eq!(parse_lifetime("3600s"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_lifetime("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_lifetime("3600"), None);
        assert_eq!(parse_lifetime("-1s"), None);
    }

    #[test]
    fn fault_status_names_follow_google_codes() {
        assert_eq!(google_status(StatusCode::SERVICE_UNAVAILABLE), "UNAVAILABLE");
        assert_eq!(google_status(StatusCode::TOO_MANY_REQUESTS), "RESOURCE_EXHAUSTED");
    }
}
