//! `.../token` and `.../identity`: served from the credential cache, never waiting on upstream
//! while a valid token is held.

use axum::body::Bytes;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use keyless_core::ExchangeError;
use keyless_core::clock::until;
use keyless_provider::body::json_string;

use super::query::Query;
use super::{AccountTokens, MetadataServer, text};
use crate::config::validate_id_token_audience;
use crate::exchange::{GcpToken, TokenKey};
use crate::identity::ScopeSet;

/// `{"access_token":...,"expires_in":N,"token_type":"Bearer"}`, rendered once per token around
/// its countdown. `expires_in` is the integer seconds the cached token has left, not its original
/// lifetime (docs/protocols.md 3.3 traps: Rust google-cloud-auth requires an integer and disables
/// itself on a parse error).
fn access_token_body(token: &GcpToken, expires_in: u64) -> Bytes {
    token.access_body.get_or_render([expires_in], || {
        vec![
            format!(r#"{{"access_token":{},"expires_in":"#, json_string(token.token.expose())).into_bytes(),
            br#","token_type":"Bearer"}"#.to_vec(),
        ]
    })
}

fn with_type(content_type: &'static str, body: Bytes) -> Response {
    (StatusCode::OK, [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))], body).into_response()
}

/// `token[?scopes=a,b]`.
pub(super) async fn access_token(server: &MetadataServer, account: &AccountTokens, query: &Query) -> Response {
    let requested: Vec<&str> =
        query.all("scopes").flat_map(|v| v.split(',')).filter(|s| !s.trim().is_empty()).collect();
    let requested_key;
    let key = if requested.is_empty() {
        &account.default_key
    } else {
        match ScopeSet::new(requested) {
            Ok(set) => {
                requested_key = TokenKey::AccessToken(set);
                &requested_key
            }
            Err(reason) => {
                return text(StatusCode::BAD_REQUEST, format!("Invalid scopes: {reason}.\n"));
            }
        }
    };
    match account.cache.get(key).await {
        Ok(token) => {
            let expires_in = until(server.clock.as_ref(), token.expires_at).as_secs();
            with_type("application/json", access_token_body(&token.value, expires_in))
        }
        Err(err) => exchange_failure(&err),
    }
}

/// `identity?audience=X[&format=standard|full][&licenses=...]`.
pub(super) async fn identity(account: &AccountTokens, query: &Query) -> Response {
    let Some(audience) = query.get("audience").filter(|a| !a.is_empty()) else {
        return text(StatusCode::BAD_REQUEST, "non-empty audience parameter required\n");
    };
    if let Err(reason) = validate_id_token_audience(audience) {
        return text(StatusCode::BAD_REQUEST, format!("Invalid audience: {reason}.\n"));
    }
    if !matches!(query.get("format"), None | Some("standard" | "full")) {
        return text(StatusCode::BAD_REQUEST, "Invalid format: expected standard or full.\n");
    }
    if !account.can_impersonate {
        return text(
            StatusCode::NOT_FOUND,
            "keyless: no ID token available: ID tokens are issued for a service account, and none is configured; \
             set gcp.service_account (a service account the workload identity may impersonate) to enable this \
             endpoint.\n",
        );
    }
    let key = TokenKey::IdToken { audience: audience.to_owned() };
    match account.cache.get(&key).await {
        Ok(token) => {
            let body = token.value.text_body.get_or_render(|| token.value.token.expose().as_bytes().to_vec());
            with_type("application/text", body)
        }
        Err(err) => exchange_failure(&err),
    }
}

/// Nothing valid is cached: the exchange's message and hint (never a secret). Transient
/// failures are 503, which every client retries; a refusal by Google is 502.
pub(crate) fn exchange_failure(err: &ExchangeError) -> Response {
    let status = keyless_provider::guard::unavailable_status(err.class, StatusCode::BAD_GATEWAY);
    text(status, format!("keyless: no Google credential available: {err}\n"))
}
