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

use std::borrow::Cow;
use std::future::{Ready, ready};
use std::sync::Arc;
use std::task::Poll;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::TryFutureExt as _;
use futures_util::future::{Either, MapOk};
use keyless_core::CredentialCache;
use keyless_core::clock::SharedClock;
use serde_json::Value as Json;
use tower::{Layer, Service};

use crate::exchange::{GcpExchange, TokenKey};
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
    /// The key of a `token` request without `scopes`, built once (the hot path clones nothing).
    default_key: TokenKey,
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
        let default_key = TokenKey::AccessToken(default_scopes);
        Self { tree: build_tree(description), cache, clock, default_key, can_impersonate }
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
        .layer(GuardLayer)
        .with_state(server)
}

/// The header and body rules, and `Metadata-Flavor: Google` on every response (errors and
/// redirects included).
///
/// A plain tower layer rather than `axum::middleware::from_fn`, which boxes a future and clones
/// the inner service on every request: several allocations on the cached path (docs/benchmarks.md).
#[derive(Debug, Clone, Copy)]
struct GuardLayer;

impl<S> Layer<S> for GuardLayer {
    type Service = Guard<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Guard { inner }
    }
}

#[derive(Debug, Clone)]
struct Guard<S> {
    inner: S,
}

impl<S> Service<Request> for Guard<S>
where
    S: Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Either<Ready<Result<Response, S::Error>>, MapOk<S::Future, fn(Response) -> Response>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        match refusal(&request) {
            Some(refused) => Either::Left(ready(Ok(flavored(refused)))),
            None => Either::Right(self.inner.call(request).map_ok(flavored as fn(Response) -> Response)),
        }
    }
}

/// The answer to a request the metadata server refuses, if it is one.
fn refusal(request: &Request) -> Option<Response> {
    let headers = request.headers();
    let has_body = headers.contains_key(header::TRANSFER_ENCODING)
        || headers.get(header::CONTENT_LENGTH).is_some_and(|v| v.as_bytes() != b"0");
    let flavored = headers.get(FLAVOR).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"Google"));
    let under_metadata = request.uri().path().starts_with("/computeMetadata");
    if headers.contains_key("x-forwarded-for") {
        Some(text(
            StatusCode::FORBIDDEN,
            "Request denied: X-Forwarded-For is present; the metadata server answers only direct local clients.\n",
        ))
    } else if has_body {
        Some(text(StatusCode::BAD_REQUEST, "The metadata server accepts no request body.\n"))
    } else if under_metadata && !flavored {
        Some(text(StatusCode::FORBIDDEN, "Missing Metadata-Flavor:Google header.\n"))
    } else if request.uri().query().is_some_and(|q| q.len() > MAX_QUERY_LEN) {
        Some(text(StatusCode::BAD_REQUEST, "The query string is too long.\n"))
    } else {
        None
    }
}

fn flavored(mut response: Response) -> Response {
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
    // Borrowed unless a segment is percent-encoded: the token path allocates nothing here.
    let segments: Vec<Cow<'_, str>> = if trimmed.is_empty() {
        Vec::new()
    } else {
        trimmed.split('/').map(|s| percent_encoding::percent_decode_str(s).decode_utf8_lossy()).collect()
    };
    if segments.iter().any(|s| s.is_empty()) {
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
    json_bytes(status, body.to_string().into_bytes())
}

/// [`json_response`] of an already serialized body.
pub(crate) fn json_bytes(status: StatusCode, body: Vec<u8>) -> Response {
    (status, [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response()
}
