//! IMDSv2 emulation at the listener root (protocols.md 2.3): SDKs find it through
//! `AWS_EC2_METADATA_SERVICE_ENDPOINT` (no path: the JS client ignores one, botocore appends to it).

mod sessions;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use serde_json::json;
use sha2::{Digest as _, Sha256};

pub(crate) use sessions::ImdsSessions;

use crate::credentials::timestamp;
use crate::serve::{Served, json_bytes};

const TTL_HEADER: HeaderName = HeaderName::from_static("x-aws-ec2-metadata-token-ttl-seconds");
const TOKEN_HEADER: HeaderName = HeaderName::from_static("x-aws-ec2-metadata-token");
const FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// The TTL range EC2 accepts (the Rust SDK always asks for the maximum).
const TTL_RANGE: std::ops::RangeInclusive<u64> = 1..=21_600;

#[derive(Debug, Clone)]
pub(crate) struct ImdsState {
    pub(crate) served: Served,
    pub(crate) sessions: Arc<ImdsSessions>,
    pub(crate) allow_v1: bool,
    /// When the provider started: `LastUpdated` of `iam/info`.
    pub(crate) started: SystemTime,
}

pub(crate) fn router(state: ImdsState) -> Router {
    const CREDS: &str = "/latest/meta-data/iam/security-credentials";
    Router::new()
        .route("/latest/api/token", put(open_session))
        .route(CREDS, get(role_list))
        .route(&format!("{CREDS}/"), get(role_list))
        .route(&format!("{CREDS}/{{role}}"), get(role_credentials))
        .route("/latest/meta-data/iam/info", get(iam_info))
        .route("/latest/meta-data/placement/region", get(region))
        .route("/latest/dynamic/instance-identity/document", get(identity_document))
        .route("/latest/{*path}", get(not_found))
        .with_state(Arc::new(state))
}

fn text(status: StatusCode, body: impl Into<String>) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body.into()).into_response()
}

fn json_body(value: &serde_json::Value) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], value.to_string()).into_response()
}

/// `PUT /latest/api/token`: a session token for the requested TTL, echoed in the TTL header
/// (the Rust and Go SDKs fail without it).
async fn open_session(State(state): State<Arc<ImdsState>>, headers: HeaderMap) -> Response {
    // EC2 refuses a forwarded PUT: a proxy or SSRF relay must not obtain a session.
    if headers.contains_key(FORWARDED_FOR) {
        return text(StatusCode::FORBIDDEN, "Forbidden: X-Forwarded-For is not allowed on session token requests");
    }
    let ttl = headers
        .get(TTL_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|t| TTL_RANGE.contains(t));
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

async fn role_list(State(state): State<Arc<ImdsState>>, headers: HeaderMap) -> Response {
    if let Some(r) = refusal(&state, &headers) {
        return r;
    }
    text(StatusCode::OK, state.served.role.name())
}

/// The hot path of IMDS: shared state, headers read in place (the `HeaderMap` extractor would
/// copy them), the credential's pre-rendered JSON.
async fn role_credentials(State(state): State<Arc<ImdsState>>, Path(role): Path<String>, request: Request) -> Response {
    if let Some(r) = refusal(&state, request.headers()) {
        return r;
    }
    if role != state.served.role.name() {
        return text(StatusCode::NOT_FOUND, "Not Found");
    }
    match state.served.credential().await {
        Ok(c) => json_bytes(c.value.imds_body()),
        Err(response) => response,
    }
}

async fn iam_info(State(state): State<Arc<ImdsState>>, headers: HeaderMap) -> Response {
    if let Some(r) = refusal(&state, &headers) {
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

async fn region(State(state): State<Arc<ImdsState>>, headers: HeaderMap) -> Response {
    if let Some(r) = refusal(&state, &headers) {
        return r;
    }
    text(StatusCode::OK, state.served.region.clone())
}

async fn identity_document(State(state): State<Arc<ImdsState>>, headers: HeaderMap) -> Response {
    if let Some(r) = refusal(&state, &headers) {
        return r;
    }
    json_body(&json!({
        "accountId": state.served.account_id,
        "region": state.served.region,
        "version": "2017-09-30",
    }))
}

async fn not_found(State(state): State<Arc<ImdsState>>, headers: HeaderMap) -> Response {
    if let Some(r) = refusal(&state, &headers) {
        return r;
    }
    text(StatusCode::NOT_FOUND, "Not Found")
}
