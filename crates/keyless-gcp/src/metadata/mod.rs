//! The GCE metadata server (protocols.md 3.3): what google-auth, the Go, Node and Rust clients
//! and gcloud read through `GCE_METADATA_HOST`.
//!
//! Rules every response follows: `Metadata-Flavor: Google` on all of them (Node rejects a
//! response without it, and Python's ping looks for it); under `/computeMetadata/` the request
//! must carry `Metadata-Flavor: Google`; any `X-Forwarded-For` is refused (a proxied request is
//! not from this pod); `GET /` answers without the request header (real GCE does, and tools
//! probe it bare).

mod query;
mod tokens;
mod tree;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use keyless_core::CredentialCache;
use keyless_core::clock::SharedClock;
use serde_json::Value as Json;

use crate::exchange::GcpExchange;
use crate::identity::ScopeSet;
use query::Query;
use tree::{Node, Value, flatten_text};

const FLAVOR: &str = "metadata-flavor";
/// Longer queries are refused (the longest legitimate one is an ID-token audience).
const MAX_QUERY_LEN: usize = 4096;

/// What the metadata server describes: one service account (or the federated identity).
#[derive(Debug, Clone)]
pub(crate) struct Description {
    /// Served as `email`; also accepted in paths besides `default`.
    pub(crate) email: String,
    pub(crate) scopes: Vec<String>,
    pub(crate) project_id: Option<String>,
    pub(crate) project_number: String,
    pub(crate) universe_domain: String,
}

#[derive(Debug)]
pub(crate) struct MetadataServer {
    tree: Node,
    cache: CredentialCache<GcpExchange>,
    clock: SharedClock,
    default_scopes: ScopeSet,
    /// ID tokens need a service account to impersonate.
    can_impersonate: bool,
}

impl MetadataServer {
    pub(crate) fn new(
        description: &Description,
        cache: CredentialCache<GcpExchange>,
        clock: SharedClock,
        default_scopes: ScopeSet,
        can_impersonate: bool,
    ) -> Self {
        Self { tree: build_tree(description), cache, clock, default_scopes, can_impersonate }
    }
}

fn build_tree(d: &Description) -> Node {
    let account = || {
        Node::dir(vec![
            ("aliases", Node::Value(Value::Lines(vec!["default".to_owned()]))),
            ("email", Node::Value(Value::Text(d.email.clone()))),
            ("identity", Node::Identity),
            ("scopes", Node::Value(Value::Lines(d.scopes.clone()))),
            ("token", Node::Token),
        ])
    };
    let mut accounts = vec![("default", account())];
    if d.email != "default" {
        accounts.push((d.email.as_str(), account()));
    }
    let number = d.project_number.parse::<u64>().map_or_else(|_| Value::Text(d.project_number.clone()), Value::Number);
    let mut project = vec![("numeric-project-id", Node::Value(number))];
    if let Some(id) = &d.project_id {
        project.push(("project-id", Node::Value(Value::Text(id.clone()))));
    }
    Node::dir(vec![
        ("instance", Node::dir(vec![("service-accounts", Node::dir_with(accounts, true))])),
        ("project", Node::dir(project)),
        ("universe", Node::dir(vec![("universe-domain", Node::Value(Value::Text(d.universe_domain.clone())))])),
    ])
}

pub(crate) fn router(server: Arc<MetadataServer>) -> Router {
    Router::new()
        .route("/", get(root))
        .route("/computeMetadata", get(serve))
        .route("/computeMetadata/", get(serve))
        .route("/computeMetadata/{*path}", get(serve))
        .layer(middleware::from_fn(guard))
        .with_state(server)
}

/// The header and body rules, and `Metadata-Flavor: Google` on every response (errors and
/// redirects included).
async fn guard(request: Request, next: Next) -> Response {
    let headers = request.headers();
    let has_body = headers.contains_key(header::TRANSFER_ENCODING)
        || headers.get(header::CONTENT_LENGTH).is_some_and(|v| v.as_bytes() != b"0");
    let flavored = headers.get(FLAVOR).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"Google"));
    let under_metadata = request.uri().path().starts_with("/computeMetadata");
    let mut response = if headers.contains_key("x-forwarded-for") {
        text(
            StatusCode::FORBIDDEN,
            "Request denied: X-Forwarded-For is present; the metadata server answers only direct local clients.\n",
        )
    } else if has_body {
        text(StatusCode::BAD_REQUEST, "The metadata server accepts no request body.\n")
    } else if under_metadata && !flavored {
        text(StatusCode::FORBIDDEN, "Missing Metadata-Flavor:Google header.\n")
    } else if request.uri().query().is_some_and(|q| q.len() > MAX_QUERY_LEN) {
        text(StatusCode::BAD_REQUEST, "The query string is too long.\n")
    } else {
        next.run(request).await
    };
    response.headers_mut().insert(FLAVOR, HeaderValue::from_static("Google"));
    response
}

async fn root() -> Response {
    text(StatusCode::OK, "computeMetadata/\n")
}

async fn serve(State(server): State<Arc<MetadataServer>>, uri: Uri) -> Response {
    let query = Query::parse(uri.query());
    let rest = uri.path().strip_prefix("/computeMetadata").unwrap_or("");
    match rest {
        "" | "/v1" => redirect(&uri),
        "/" => listing(&["v1/".to_owned()], &query),
        _ => match rest.strip_prefix("/v1/") {
            Some(sub) => serve_v1(&server, &uri, sub, &query).await,
            None => not_found(),
        },
    }
}

async fn serve_v1(server: &MetadataServer, uri: &Uri, sub: &str, query: &Query) -> Response {
    let dir_request = sub.is_empty() || sub.ends_with('/');
    let trimmed = sub.strip_suffix('/').unwrap_or(sub);
    let segments: Vec<String> = if trimmed.is_empty() {
        Vec::new()
    } else {
        trimmed.split('/').map(|s| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned()).collect()
    };
    if segments.iter().any(String::is_empty) {
        return not_found();
    }
    let alt = query.get("alt");
    match server.tree.lookup(&segments) {
        None => not_found(),
        Some(node @ Node::Dir { .. }) => {
            if query.recursive() {
                let json = node.recursive_json();
                if alt == Some("text") {
                    text(StatusCode::OK, flatten_text(&json))
                } else {
                    json_response(StatusCode::OK, &json)
                }
            } else if dir_request {
                listing(&node.listing(), query)
            } else {
                // Directory without its slash: 301 to the slash form (Node probes `instance`).
                redirect(uri)
            }
        }
        Some(_) if dir_request => not_found(),
        Some(Node::Value(value)) => match alt {
            Some("json") => json_response(StatusCode::OK, &value.json()),
            _ => text(StatusCode::OK, value.text()),
        },
        Some(Node::Token) => tokens::access_token(server, query).await,
        Some(Node::Identity) => tokens::identity(server, query).await,
    }
}

fn listing(names: &[String], query: &Query) -> Response {
    if query.get("alt") == Some("json") {
        json_response(StatusCode::OK, &Json::from(names.to_vec()))
    } else {
        text(StatusCode::OK, names.iter().map(|n| format!("{n}\n")).collect::<String>())
    }
}

fn redirect(uri: &Uri) -> Response {
    let location = match uri.query() {
        Some(q) => format!("{}/?{q}", uri.path()),
        None => format!("{}/", uri.path()),
    };
    let mut response = text(StatusCode::MOVED_PERMANENTLY, "Moved Permanently\n");
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

fn not_found() -> Response {
    text(StatusCode::NOT_FOUND, "Not Found: no such metadata path.\n")
}

/// Text as GCE sends it: `application/text` (google-auth parses JSON only when the type is
/// exactly `application/json`; every other client reads the body as is).
pub(crate) fn text(status: StatusCode, body: impl Into<String>) -> Response {
    (status, [(header::CONTENT_TYPE, HeaderValue::from_static("application/text"))], body.into()).into_response()
}

/// JSON with exactly `application/json` (no charset: google-auth compares the whole header).
pub(crate) fn json_response(status: StatusCode, body: &Json) -> Response {
    (status, [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body.to_string()).into_response()
}
