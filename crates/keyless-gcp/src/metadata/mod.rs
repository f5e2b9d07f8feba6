//! The GCE metadata server (docs/protocols.md 3.3): what google-auth, the Go, Node and Rust
//! clients and gcloud read through `GCE_METADATA_HOST`.
//!
//! Rules of its own, besides the shared ones (`keyless_provider::guard`): under
//! `/computeMetadata/` the request must carry `Metadata-Flavor: Google`; `GET /` answers without
//! it (real GCE does, and tools probe it bare); every response carries `Metadata-Flavor: Google`
//! (added by the shared guard from the provider's rules).

mod query;
mod tokens;
mod tree;

use std::borrow::Cow;
use std::sync::Arc;

use axum::http::{HeaderName, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use keyless_core::CredentialCache;
use keyless_core::clock::SharedClock;
use keyless_provider::{Handler, NativeErrors, NativeRoute, Request, Violation};
use serde_json::Value as Json;

use crate::exchange::{GcpExchange, TokenKey};
use crate::identity::ScopeSet;
use query::Query;
use tree::{Node, Value, flatten_text};

const FLAVOR: HeaderName = HeaderName::from_static("metadata-flavor");

/// Every route [`routes`] serves (the provider's claims).
pub(crate) const ROUTES: [&str; 4] = ["/", "/computeMetadata", "/computeMetadata/", "/computeMetadata/{*path}"];

/// What the metadata server describes: one service account (or the federated identity).
#[derive(Debug, Clone)]
pub(crate) struct Description {
    /// Served as `email`; also accepted in paths besides `default`.
    pub(crate) email: String,
    pub(crate) scopes: Vec<String>,
    pub(crate) project_id: Option<String>,
    pub(crate) project_number: String,
    pub(crate) universe_domain: String,
    /// The extra service accounts (`[[gcp.service_accounts]]`), in the order of
    /// [`MetadataServer::new`]'s accounts after the default.
    pub(crate) extra: Vec<AccountDescription>,
}

/// An extra service account as the metadata server lists it: by e-mail, without an alias.
#[derive(Debug, Clone)]
pub(crate) struct AccountDescription {
    pub(crate) email: String,
    pub(crate) scopes: Vec<String>,
}

/// One service account's tokens: its cache and what a request without parameters asks for.
#[derive(Debug)]
pub(crate) struct AccountTokens {
    pub(crate) cache: CredentialCache<GcpExchange>,
    /// The key of a `token` request without `scopes`, built once (the hot path clones nothing).
    pub(crate) default_key: TokenKey,
    /// ID tokens need a service account to impersonate.
    pub(crate) can_impersonate: bool,
}

impl AccountTokens {
    pub(crate) fn new(cache: CredentialCache<GcpExchange>, default_scopes: ScopeSet, can_impersonate: bool) -> Self {
        Self { cache, default_key: TokenKey::AccessToken(default_scopes), can_impersonate }
    }
}

#[derive(Debug)]
pub(crate) struct MetadataServer {
    tree: Node,
    /// The default account first, then the extra ones; the tree's token nodes index it.
    accounts: Vec<AccountTokens>,
    clock: SharedClock,
}

impl MetadataServer {
    /// `accounts`: the default account's tokens, then one per `description.extra` entry.
    pub(crate) fn new(description: &Description, accounts: Vec<AccountTokens>, clock: SharedClock) -> Self {
        Self { tree: build_tree(description), accounts, clock }
    }

    /// The default account's tokens.
    pub(crate) fn default_account(&self) -> Option<&AccountTokens> {
        self.accounts.first()
    }

    pub(crate) fn clock(&self) -> &SharedClock {
        &self.clock
    }

    /// Every account's cache, the default one's first.
    pub(crate) fn caches(&self) -> impl Iterator<Item = &CredentialCache<GcpExchange>> {
        self.accounts.iter().map(|a| &a.cache)
    }
}

/// An account's directory; `account` indexes [`MetadataServer::accounts`].
fn account_dir(email: &str, aliases: Vec<String>, scopes: &[String], account: usize) -> Node {
    Node::dir(vec![
        ("aliases", Node::Value(Value::Lines(aliases))),
        ("email", Node::Value(Value::Text(email.to_owned()))),
        ("identity", Node::Identity(account)),
        ("scopes", Node::Value(Value::Lines(scopes.to_vec()))),
        ("token", Node::Token(account)),
    ])
}

fn build_tree(d: &Description) -> Node {
    let account = || account_dir(&d.email, vec!["default".to_owned()], &d.scopes, 0);
    let mut accounts = vec![("default", account())];
    if d.email != "default" {
        accounts.push((d.email.as_str(), account()));
    }
    // GCE lists every attached account by e-mail; only the default one has the alias.
    for (i, extra) in d.extra.iter().enumerate() {
        accounts.push((extra.email.as_str(), account_dir(&extra.email, Vec::new(), &extra.scopes, i + 1)));
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

pub(crate) fn routes(server: Arc<MetadataServer>) -> Vec<NativeRoute> {
    let [root_path, rest @ ..] = ROUTES;
    let mut routes = vec![NativeRoute::get(root_path, Handler::new((), root))];
    routes.extend(rest.iter().map(|path| NativeRoute::get(*path, Handler::new(server.clone(), serve))));
    routes
}

/// The shared rules' refusals as the metadata server words its own: text.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GcpErrors;

impl NativeErrors for GcpErrors {
    fn refuse(&self, _path: &str, violation: &Violation) -> Response {
        text(violation.status(), format!("Request denied: {}.\n", violation.message()))
    }

    /// The metadata server's text, or the token-exchange JSON on the stand-in's route.
    fn unavailable(&self, path: &str, err: &keyless_core::ExchangeError) -> Response {
        if path == crate::bridge::ROUTE { crate::bridge::unavailable(err) } else { tokens::exchange_failure(err) }
    }
}

async fn root((): (), _: Request) -> Response {
    text(StatusCode::OK, "computeMetadata/\n")
}

async fn serve(server: Arc<MetadataServer>, request: Request) -> Response {
    let flavored = request.headers().get(FLAVOR).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"Google"));
    if !flavored {
        return text(StatusCode::FORBIDDEN, "Missing Metadata-Flavor:Google header.\n");
    }
    let uri = request.uri();
    let query = Query::parse(uri.query());
    let rest = uri.path().strip_prefix("/computeMetadata").unwrap_or("");
    match rest {
        "" | "/v1" => redirect(uri),
        "/" => listing(&["v1/".to_owned()], &query),
        _ => match rest.strip_prefix("/v1/") {
            Some(sub) => serve_v1(&server, uri, sub, &query).await,
            None => not_found(),
        },
    }
}

async fn serve_v1(server: &MetadataServer, uri: &Uri, sub: &str, query: &Query) -> Response {
    let dir_request = sub.is_empty() || sub.ends_with('/');
    let trimmed = sub.strip_suffix('/').unwrap_or(sub);
    // Walked in place, decoded only when a segment is percent-encoded: the token path allocates
    // nothing here. An empty segment (`a//b`) names nothing.
    let escaped = trimmed.contains('%');
    let segments = trimmed
        .split('/')
        .filter(|_| !trimmed.is_empty())
        .map(|s| if escaped { percent_encoding::percent_decode_str(s).decode_utf8_lossy() } else { Cow::Borrowed(s) });
    let alt = query.get("alt");
    match server.tree.lookup(segments) {
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
        Some(Node::Token(account)) => match server.accounts.get(*account) {
            Some(account) => tokens::access_token(server, account, query).await,
            None => not_found(),
        },
        Some(Node::Identity(account)) => match server.accounts.get(*account) {
            Some(account) => tokens::identity(account, query).await,
            None => not_found(),
        },
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
