//! IMDSv2 emulation at the listener root (docs/protocols.md 2.3): SDKs find it through
//! `AWS_EC2_METADATA_SERVICE_ENDPOINT` (no path: the JS client ignores one, botocore appends to it).

mod sessions;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use sha2::{Digest as _, Sha256};

pub(crate) use sessions::ImdsSessions;

use keyless_provider::{Handler, NativeRoute, Request};

use crate::credentials::timestamp;
use crate::serve::{Served, json_bytes};

const TTL_HEADER: HeaderName = HeaderName::from_static("x-aws-ec2-metadata-token-ttl-seconds");
const TOKEN_HEADER: HeaderName = HeaderName::from_static("x-aws-ec2-metadata-token");
/// The TTL range EC2 accepts (the Rust SDK always asks for the maximum).
const TTL_RANGE: std::ops::RangeInclusive<u64> = 1..=21_600;

const TOKEN: &str = "/latest/api/token";
const CREDENTIALS: &str = "/latest/meta-data/iam/security-credentials";
const CREDENTIALS_SLASH: &str = "/latest/meta-data/iam/security-credentials/";
const ROLE_CREDENTIALS: &str = "/latest/meta-data/iam/security-credentials/{role}";
const INFO: &str = "/latest/meta-data/iam/info";
const REGION: &str = "/latest/meta-data/placement/region";
const DOCUMENT: &str = "/latest/dynamic/instance-identity/document";
const EVERYTHING_ELSE: &str = "/latest/{*path}";

/// Every route [`routes`] serves (the provider's claims).
pub(crate) const ROUTES: [&str; 8] =
    [TOKEN, CREDENTIALS, CREDENTIALS_SLASH, ROLE_CREDENTIALS, INFO, REGION, DOCUMENT, EVERYTHING_ELSE];

#[derive(Debug, Clone)]
pub(crate) struct ImdsState {
    pub(crate) served: Served,
    pub(crate) sessions: Arc<ImdsSessions>,
    pub(crate) allow_v1: bool,
    /// When the provider started: `LastUpdated` of `iam/info`.
    pub(crate) started: SystemTime,
}

pub(crate) fn routes(state: ImdsState) -> Vec<NativeRoute> {
    let state = Arc::new(state);
    vec![
        NativeRoute::put(TOKEN, Handler::new(state.clone(), open_session)),
        NativeRoute::get(CREDENTIALS, Handler::new(state.clone(), role_list)),
        NativeRoute::get(CREDENTIALS_SLASH, Handler::new(state.clone(), role_list)),
        NativeRoute::get(ROLE_CREDENTIALS, Handler::new(state.clone(), role_credentials)),
        NativeRoute::get(INFO, Handler::new(state.clone(), iam_info)),
        NativeRoute::get(REGION, Handler::new(state.clone(), region)),
        NativeRoute::get(DOCUMENT, Handler::new(state.clone(), identity_document)),
        NativeRoute::get(EVERYTHING_ELSE, Handler::new(state, not_found)),
    ]
}

pub(crate) fn text(status: StatusCode, body: impl Into<String>) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body.into()).into_response()
}

fn json_body(value: &serde_json::Value) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], value.to_string()).into_response()
}

/// `PUT /latest/api/token`: a session token for the requested TTL, echoed in the TTL header
/// (the Rust and Go SDKs fail without it).
async fn open_session(state: Arc<ImdsState>, request: Request) -> Response {
    // A forwarded PUT (a proxy or SSRF relay must not obtain a session) is refused by the shared
    // rules before this handler runs.
    let ttl = request.headers().get(TTL_HEADER).and_then(|v| parse_ttl(v.as_bytes()));
    let Some(ttl) = ttl else {
        return text(
            StatusCode::BAD_REQUEST,
            "Bad Request: X-aws-ec2-metadata-token-ttl-seconds must be an integer from 1 to 21600",
        );
    };
    let (token, granted) = state.sessions.open(Duration::from_secs(ttl));
    let mut response = text(StatusCode::OK, token.expose().clone());
    response.headers_mut().insert(TTL_HEADER, HeaderValue::from(granted.as_secs()));
    response
}

/// A TTL as EC2 takes it: plain decimal digits within [`TTL_RANGE`], nothing else (no sign, no
/// leading zero, no surrounding space: `+60`, `060` and ` 60` are refused).
fn parse_ttl(value: &[u8]) -> Option<u64> {
    let plain = !value.is_empty() && value.len() <= 5 && value[0] != b'0' && value.iter().all(u8::is_ascii_digit);
    let ttl = std::str::from_utf8(value).ok().filter(|_| plain)?.parse::<u64>().ok()?;
    TTL_RANGE.contains(&ttl).then_some(ttl)
}

/// The 401 for a request without a live session token; `None` when it may be answered. IMDSv1
/// (no token) is answered only when enabled; a token that is present but unknown or expired is
/// refused either way.
fn refusal(state: &ImdsState, headers: &HeaderMap) -> Option<Response> {
    let unauthorized = |why: &str| text(StatusCode::UNAUTHORIZED, format!("Unauthorized: {why}"));
    match headers.get(TOKEN_HEADER) {
        Some(token) if state.sessions.check(token.as_bytes()) => None,
        Some(_) => Some(unauthorized("the session token is unknown or expired; PUT /latest/api/token for a new one")),
        None if state.allow_v1 => None,
        None => Some(unauthorized("IMDSv1 is disabled; PUT /latest/api/token and send X-aws-ec2-metadata-token")),
    }
}

async fn role_list(state: Arc<ImdsState>, request: Request) -> Response {
    if let Some(r) = refusal(&state, request.headers()) {
        return r;
    }
    text(StatusCode::OK, state.served.role.name())
}

/// The hot path of IMDS: shared state, headers read in place, the credential's pre-rendered JSON.
async fn role_credentials(state: Arc<ImdsState>, request: Request) -> Response {
    if let Some(r) = refusal(&state, request.headers()) {
        return r;
    }
    if !names_role(request.uri().path(), state.served.role.name()) {
        return text(StatusCode::NOT_FOUND, "Not Found");
    }
    match state.served.credential().await {
        Ok(c) => json_bytes(c.value.imds_body()),
        Err(response) => response,
    }
}

/// Whether `path` (a match of [`ROLE_CREDENTIALS`]) asks for `role`: its last segment,
/// percent-decoded, is the role's name.
fn names_role(path: &str, role: &str) -> bool {
    let asked = path.strip_prefix(CREDENTIALS_SLASH).unwrap_or_default();
    percent_encoding::percent_decode_str(asked).eq(role.bytes())
}

async fn iam_info(state: Arc<ImdsState>, request: Request) -> Response {
    if let Some(r) = refusal(&state, request.headers()) {
        return r;
    }
    let role = &state.served.role;
    // A stable, plausible instance-profile id (`AIPA` + 17), derived from the role.
    let digest = Sha256::digest(role.as_str().as_bytes());
    let id: String =
        digest.iter().take(17).map(|b| char::from(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"[usize::from(b % 32)])).collect();
    json_body(&json!({
        "Code": "Success",
        "LastUpdated": timestamp(state.started),
        "InstanceProfileArn": format!(
            "arn:{}:iam::{}:instance-profile/{}",
            role.partition(),
            state.served.account_id,
            role.name()
        ),
        "InstanceProfileId": format!("AIPA{id}"),
    }))
}

async fn region(state: Arc<ImdsState>, request: Request) -> Response {
    if let Some(r) = refusal(&state, request.headers()) {
        return r;
    }
    text(StatusCode::OK, state.served.region.clone())
}

async fn identity_document(state: Arc<ImdsState>, request: Request) -> Response {
    if let Some(r) = refusal(&state, request.headers()) {
        return r;
    }
    json_body(&json!({
        "accountId": state.served.account_id,
        "region": state.served.region,
        "version": "2017-09-30",
    }))
}

async fn not_found(state: Arc<ImdsState>, request: Request) -> Response {
    if let Some(r) = refusal(&state, request.headers()) {
        return r;
    }
    text(StatusCode::NOT_FOUND, "Not Found")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_role_is_the_last_segment_percent_decoded() {
        let path = |role: &str| format!("{CREDENTIALS_SLASH}{role}");
        assert!(names_role(&path("app"), "app"));
        assert!(names_role(&path("app%2Bx"), "app+x"));
        assert!(names_role(&path("%61pp"), "app"));
        for other in ["ap", "appx", "App", "app%", "%ff", ""] {
            assert!(!names_role(&path(other), "app"), "{other}");
        }
    }

    #[test]
    fn ttls_are_plain_decimal_numbers_in_range() {
        for (value, ttl) in [("1", Some(1)), ("60", Some(60)), ("21600", Some(21_600))] {
            assert_eq!(parse_ttl(value.as_bytes()), ttl, "{value}");
        }
        for bad in ["", "0", "21601", "+60", "060", " 60", "60 ", "6e1", "-1", "99999999999999999999", "６０"] {
            assert_eq!(parse_ttl(bad.as_bytes()), None, "{bad:?}");
        }
    }
}
