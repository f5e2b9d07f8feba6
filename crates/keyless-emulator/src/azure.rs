//! Entra ID: the v2.0 token endpoint for client credentials with a federated client assertion,
//! the tenant's signing keys and its OpenID configuration.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::control::{Fault, Service};
use crate::issuer::{SubjectClaims, TokenRejection};
use crate::keys::{HeaderStyle, jwks};
use crate::{SharedState, clock, ids};

const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
const DEFAULT_SUFFIX: &str = "/.default";
const EXPIRES_IN: i64 = 3599;

/// An Entra error: `{"error","error_description":"AADSTSn: ...","error_codes":[n],...}`.
#[derive(Debug)]
struct EntraError {
    status: StatusCode,
    error: String,
    code: u32,
    description: String,
}

impl EntraError {
    fn new(status: StatusCode, error: &str, code: u32, description: impl Into<String>) -> Self {
        Self { status, error: error.to_owned(), code, description: description.into() }
    }

    fn bad_request(error: &str, code: u32, description: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, error, code, description)
    }

    fn missing(parameter: &str) -> Self {
        Self::bad_request(
            "invalid_request",
            900_144,
            format!("The request body must contain the following parameter: '{parameter}'."),
        )
    }

    fn from_fault(fault: Fault) -> Self {
        let code = fault.code.as_deref().map(|c| c.trim_start_matches("AADSTS")).and_then(|c| c.parse::<u32>().ok());
        let code = code.unwrap_or(if fault.status.is_server_error() { 90_033 } else { 50_000 });
        let error = match code {
            700_024 | 700_027 | 7_000_216 => "invalid_client",
            700_016 => "unauthorized_client",
            70_011 => "invalid_scope",
            90_033 | 90_061 => "temporarily_unavailable",
            _ if fault.status.is_server_error() => "temporarily_unavailable",
            _ => "invalid_request",
        };
        Self::new(fault.status, error, code, fault.message())
    }

    fn render(self, correlation_id: Option<&str>) -> Response {
        let trace_id = uuid::Uuid::new_v4().to_string();
        let correlation_id = correlation_id.map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned);
        let timestamp = clock::entra_timestamp(clock::now());
        tracing::info!(status = self.status.as_u16(), code = self.code, "azure token: rejected");
        let body = serde_json::json!({
            "error": self.error,
            "error_description": format!(
                "AADSTS{}: {}\r\nTrace ID: {trace_id}\r\nCorrelation ID: {correlation_id}\r\nTimestamp: {timestamp}",
                self.code, self.description
            ),
            "error_codes": [self.code],
            "timestamp": timestamp,
            "trace_id": trace_id,
            "correlation_id": correlation_id,
        });
        (self.status, Json(body)).into_response()
    }
}

fn tenant_not_found(tenant: &str) -> EntraError {
    EntraError::bad_request(
        "invalid_request",
        90_002,
        format!(
            "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the \
             correct cloud. Check with your subscription administrator, this may happen if there are no active \
             subscriptions for the tenant."
        ),
    )
}

/// Claims of an Entra v1.0 app-only access token.
#[derive(Debug, Serialize)]
struct AccessTokenClaims<'a> {
    aud: &'a str,
    iss: &'a str,
    iat: i64,
    nbf: i64,
    exp: i64,
    aio: String,
    appid: &'a str,
    appidacr: &'static str,
    azp: &'a str,
    azpacr: &'static str,
    idp: &'a str,
    idtyp: &'static str,
    oid: &'a str,
    rh: String,
    sub: &'a str,
    tid: &'a str,
    uti: String,
    ver: &'static str,
}

/// `POST /{tenant}/oauth2/v2.0/token`.
pub(crate) async fn token(
    State(state): State<SharedState>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    // Entra echoes the client's request id as the correlation id.
    let correlation_id = headers.get("client-request-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let result = match state.gate.enter(Service::AzureToken).await {
        Some(fault) => match fault.malformed_response(Service::AzureToken) {
            Some(garbage) => return garbage,
            None => Err(EntraError::from_fault(fault)),
        },
        None => issue(&state, &tenant, &body, clock::now()),
    };
    result.unwrap_or_else(|e| e.render(correlation_id.as_deref()))
}

fn issue(state: &SharedState, tenant: &str, body: &[u8], now: SystemTime) -> Result<Response, EntraError> {
    if tenant != state.identities.azure_tenant_id {
        return Err(tenant_not_found(tenant));
    }
    let mut params = HashMap::new();
    for (k, v) in url::form_urlencoded::parse(body) {
        params.entry(k.into_owned()).or_insert_with(|| v.into_owned());
    }
    let request = TokenRequest::parse(state, tenant, &params)?;
    check_assertion(state, request.assertion, now)?;
    let (access_token, expires_in) = mint_access_token(state, tenant, &request, now)?;
    tracing::info!("azure token: issued an access token");
    Ok(Json(serde_json::json!({
        "token_type": "Bearer",
        "expires_in": expires_in,
        "ext_expires_in": expires_in,
        "access_token": access_token,
    }))
    .into_response())
}

/// A client-credentials request with a client assertion, as Entra validates its form.
struct TokenRequest<'a> {
    client_id: &'a str,
    resource: &'a str,
    assertion: &'a str,
}

impl<'a> TokenRequest<'a> {
    fn parse(state: &SharedState, tenant: &str, params: &'a HashMap<String, String>) -> Result<Self, EntraError> {
        let required = |name: &str| params.get(name).filter(|v| !v.is_empty()).ok_or_else(|| EntraError::missing(name));
        let grant_type = required("grant_type")?;
        if grant_type != "client_credentials" {
            return Err(EntraError::bad_request(
                "unsupported_grant_type",
                70_003,
                format!("The app requested an unsupported grant type '{grant_type}'."),
            ));
        }
        let client_id = required("client_id")?;
        if !state.identities.is_azure_app(client_id) {
            return Err(EntraError::bad_request(
                "unauthorized_client",
                700_016,
                format!(
                    "Application with identifier '{client_id}' was not found in the directory '{tenant}'. This can \
                     happen if the application has not been installed by the administrator of the tenant or \
                     consented to by any user in the tenant. You may have sent your authentication request to the \
                     wrong tenant."
                ),
            ));
        }
        let resource = resource_of(tenant, required("scope")?)?;
        let assertion = params.get("client_assertion").filter(|v| !v.is_empty());
        let (Some(assertion), Some(ASSERTION_TYPE)) =
            (assertion, params.get("client_assertion_type").map(String::as_str))
        else {
            return Err(EntraError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                7_000_216,
                format!(
                    "'client_assertion', 'client_secret' or 'request' is required for the 'client_credentials' grant \
                     type, with client_assertion_type '{ASSERTION_TYPE}'."
                ),
            ));
        };
        Ok(Self { client_id, resource, assertion })
    }
}

/// The resource of a client-credentials `scope` (`{resource}/.default`), if Entra knows it.
fn resource_of<'a>(tenant: &str, scope: &'a str) -> Result<&'a str, EntraError> {
    let resource = match scope.strip_suffix(DEFAULT_SUFFIX) {
        Some(resource) if !resource.is_empty() && !scope.contains(' ') => resource,
        _ => {
            return Err(EntraError::bad_request(
                "invalid_scope",
                70_011,
                format!(
                    "The provided value for the input parameter 'scope' is not valid. The scope {scope} is not valid. \
                     Client credential flows must have a scope value with /.default suffixed to the resource \
                     identifier (application ID URI)."
                ),
            ));
        }
    };
    let known_resource =
        resource.starts_with("https://") || resource.starts_with("api://") || uuid::Uuid::parse_str(resource).is_ok();
    if !known_resource {
        return Err(EntraError::bad_request(
            "invalid_resource",
            500_011,
            format!(
                "The resource principal named {resource} was not found in the tenant named {tenant}. This can happen \
                 if the application has not been installed by the administrator of the tenant or consented to by any \
                 user in the tenant. You might have sent your authentication request to the wrong tenant."
            ),
        ));
    }
    Ok(resource)
}

/// The app's federated identity credential: issuer, subject and audience must all match, the
/// signature verify against the issuer's keys, and the assertion be within its validity.
fn check_assertion(state: &SharedState, assertion: &str, now: SystemTime) -> Result<(), EntraError> {
    let ids = &state.identities;
    let claims = SubjectClaims::peek(assertion)
        .map_err(|_| EntraError::bad_request("invalid_request", 50_027, "JWT token is invalid or malformed."))?;
    // No credential of the app names the issuer at all: Entra's own code for it.
    if !crate::actions::is_trusted_issuer(state, &claims.iss) {
        return Err(EntraError::bad_request(
            "invalid_request",
            700_211,
            format!(
                "No matching federated identity record found for presented assertion issuer '{}'. Please check your \
                 federated identity credential Subject, Audience and Issuer against the presented assertion. \
                 https://learn.microsoft.com/entra/workload-id/workload-identity-federation",
                claims.iss
            ),
        ));
    }
    let matches = ids.trusts_subject(&claims.sub) && claims.aud.iter().any(|a| a == ids.azure_audience());
    if !matches {
        return Err(EntraError::bad_request(
            "invalid_request",
            70_021,
            format!(
                "No matching federated identity record found for presented assertion. Assertion Issuer: '{}'. \
                 Assertion Subject: '{}'. Assertion Audience: '{}'. \
                 https://docs.microsoft.com/en-us/azure/active-directory/develop/workload-identity-federation",
                claims.iss,
                claims.sub,
                claims.aud_display()
            ),
        ));
    }
    crate::actions::signed_by_issuer(state, &claims.iss, assertion).then_some(()).ok_or_else(|| {
        EntraError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            700_027,
            "Client assertion failed signature validation.",
        )
    })?;
    if let Err(TokenRejection::Expired { .. } | TokenRejection::NotYetValid { .. }) = claims.check_validity(now) {
        let iso = |secs: i64| clock::rfc3339_seconds(clock::from_unix(secs));
        return Err(EntraError::bad_request(
            "invalid_client",
            700_024,
            format!(
                "Client assertion is not within its valid time range. Current time: {}, assertion valid from {}, \
                 expiry time of assertion {}. Review the documentation at \
                 https://docs.microsoft.com/azure/active-directory/develop/active-directory-certificate-credentials .",
                clock::rfc3339_seconds(now),
                claims.nbf.map_or_else(|| "unset".to_owned(), iso),
                iso(claims.exp),
            ),
        ));
    }
    Ok(())
}

/// A signed v1 access token for the app and resource, and its lifetime in seconds.
fn mint_access_token(
    state: &SharedState,
    tenant: &str,
    request: &TokenRequest<'_>,
    now: SystemTime,
) -> Result<(String, i64), EntraError> {
    let issuer = format!("https://sts.windows.net/{tenant}/");
    let oid = ids::stable_uuid(&format!("service principal {}", request.client_id));
    let now_secs = clock::unix_secs(now);
    let real = Duration::from_secs(EXPIRES_IN.unsigned_abs());
    let expires_in =
        i64::try_from(state.gate.faults.lifetime(Service::AzureToken, real).as_secs()).unwrap_or(EXPIRES_IN);
    let claims = AccessTokenClaims {
        aud: request.resource,
        iss: &issuer,
        iat: now_secs - 300,
        nbf: now_secs - 300,
        exp: now_secs + expires_in,
        aio: ids::random_token(48),
        appid: request.client_id,
        appidacr: "2",
        azp: request.client_id,
        azpacr: "2",
        idp: &issuer,
        idtyp: "app",
        oid: &oid,
        rh: format!("0.A{}.", ids::random_token(40)),
        sub: &oid,
        tid: tenant,
        uti: ids::random_token(16),
        ver: "1.0",
    };
    let access_token = state.entra_key.sign(HeaderStyle::Entra, &claims).map_err(|e| {
        EntraError::new(StatusCode::INTERNAL_SERVER_ERROR, "temporarily_unavailable", 90_033, e.to_string())
    })?;
    Ok((access_token, expires_in))
}

/// `GET /{tenant}/discovery/v2.0/keys`.
pub(crate) async fn keys(State(state): State<SharedState>, Path(tenant): Path<String>) -> Response {
    if tenant != state.identities.azure_tenant_id {
        return tenant_not_found(&tenant).render(None);
    }
    Json(jwks(&[&state.entra_key])).into_response()
}

/// `GET /{tenant}/v2.0/.well-known/openid-configuration`.
pub(crate) async fn openid_configuration(State(state): State<SharedState>, Path(tenant): Path<String>) -> Response {
    if tenant != state.identities.azure_tenant_id {
        return tenant_not_found(&tenant).render(None);
    }
    let base = format!("{}/{tenant}", state.issuer.url());
    Json(serde_json::json!({
        "token_endpoint": format!("{base}/oauth2/v2.0/token"),
        "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
        "jwks_uri": format!("{base}/discovery/v2.0/keys"),
        "response_modes_supported": ["query", "fragment", "form_post"],
        "subject_types_supported": ["pairwise"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
        "scopes_supported": ["openid", "profile", "email", "offline_access"],
        "issuer": format!("{base}/v2.0"),
        "request_uri_parameter_supported": false,
        "authorization_endpoint": format!("{base}/oauth2/v2.0/authorize"),
        "device_authorization_endpoint": format!("{base}/oauth2/v2.0/devicecode"),
        "end_session_endpoint": format!("{base}/oauth2/v2.0/logout"),
        "tenant_region_scope": "NA",
        "cloud_instance_name": "microsoftonline.com",
        "cloud_graph_host_name": "graph.windows.net",
        "msgraph_host": "graph.microsoft.com",
    }))
    .into_response()
}
