//! The stand-in for gcloud's application-default credentials file (docs/protocols.md 10.4).
//!
//! Go, Node and Rust programs read `~/.config/gcloud/application_default_credentials.json`
//! whatever `CLOUDSDK_CONFIG` says, before the metadata server: when that file exists, `keyless
//! exec` (and `keyless dev`'s env file) points `GOOGLE_APPLICATION_CREDENTIALS`, which every
//! Google SDK ranks above it, at an `external_account` file of keyless's own instead. Its
//! `token_url` is this route: the SDK posts an STS token-exchange form whose subject token is a
//! random value only that file's private directory holds, and gets back the default service
//! account's access token from the same cache the metadata server serves. No request leaves the
//! machine: no impersonation URL, no workload pool audience (Python would look its project and
//! access boundary up at Google), the token URL on loopback.
//!
//! Python, Go, Node and Rust accept it. Java's library refuses a token URL that is not `https`
//! (and Node's ignores an `authorized_user` file's `token_uri`, Rust's knows no
//! `external_account_authorized_user`: no file type suits all five); Java reads gcloud's file
//! where `CLOUDSDK_CONFIG` says, so a Java command keeps `GOOGLE_APPLICATION_CREDENTIALS` unset
//! with `--keep-env` and gets keyless's identity through the metadata server.

use std::path::Path;
use std::sync::Arc;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use keyless_core::clock::until;
use keyless_core::{Secret, files};
use keyless_provider::{AppHost, FormBody, Handler, NativeRoute, ProviderError, Request, StandIn};
use serde_json::json;

use crate::exchange::TokenKey;
use crate::identity::ScopeSet;
use crate::metadata::MetadataServer;

/// google-auth-library-java accepts only an `https` token URL, and keyless's is plain HTTP on
/// loopback; Java reads gcloud's file where `CLOUDSDK_CONFIG` says, which keyless sets aside.
const JAVA: &str = "Java programs refuse it and need it unset: exec --keep-env GOOGLE_APPLICATION_CREDENTIALS";

/// The token endpoint the stand-in's `token_url` names.
pub(crate) const ROUTE: &str = "/keyless/v1/external-account/token";

/// The variable every Google SDK reads first (docs/protocols.md 10.2).
const VAR: &str = "GOOGLE_APPLICATION_CREDENTIALS";

const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
/// The subject token type the stand-in declares (a file source's usual one); its subject token is
/// an opaque value every SDK sends as read.
const SUBJECT_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";
/// Not a workload identity pool (`//iam.googleapis.com/projects/N/...`): Python derives a project
/// number from one and asks Cloud Resource Manager and the access-boundary service about it.
const AUDIENCE: &str = "//keyless.dev/external-account-stand-in";

/// The stand-in's route and the value its subject-token file holds (256 random bits, made at
/// start, never logged; known to a program only through the stand-in's private file).
#[derive(Debug)]
pub(crate) struct Bridge {
    subject: Secret<String>,
    server: Arc<MetadataServer>,
}

impl Bridge {
    pub(crate) fn new(server: Arc<MetadataServer>) -> Arc<Self> {
        let bytes: [u8; 32] = rand::random();
        Arc::new(Self { subject: Secret::new(hex::encode(bytes)), server })
    }

    pub(crate) fn route(self: &Arc<Self>) -> NativeRoute {
        NativeRoute::post(ROUTE, Handler::new(self.clone(), token))
    }

    /// Writes `subject-token` and `external-account.json` (both 0600) into `dir`.
    pub(crate) fn write(&self, app: &AppHost, dir: &Path) -> Result<StandIn, ProviderError> {
        let subject_path = dir.join("gcp-subject-token");
        files::write_atomically(&subject_path, self.subject.expose().as_bytes(), 0o600)
            .map_err(|e| std::io::Error::new(e.kind(), format!("cannot write {}: {e}", subject_path.display())))?;
        let config = json!({
            "type": "external_account",
            "audience": AUDIENCE,
            "subject_token_type": SUBJECT_TOKEN_TYPE,
            "token_url": format!("{}{ROUTE}", app.http_base()),
            "credential_source": { "file": subject_path.to_string_lossy() },
        });
        let path = dir.join("gcp-external-account.json");
        files::write_atomically(&path, config.to_string().as_bytes(), 0o600)
            .map_err(|e| std::io::Error::new(e.kind(), format!("cannot write {}: {e}", path.display())))?;
        Ok(StandIn { var: VAR, path, note: Some(JAVA) })
    }
}

/// `POST` an STS token-exchange form: the default service account's access token for the
/// requested scopes (or its default ones), in STS's answer shape; OAuth's error shape otherwise.
async fn token(bridge: Arc<Bridge>, request: Request) -> Response {
    let Some(FormBody(form)) = request.extensions().get::<FormBody>() else {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "a token-exchange form is required");
    };
    let (mut grant, mut subject, mut scopes) = (None, None, Vec::new());
    for (name, value) in url::form_urlencoded::parse(form) {
        match name.as_ref() {
            "grant_type" => grant = Some(value),
            "subject_token" => subject = Some(value),
            "scope" => scopes.extend(value.split_whitespace().map(str::to_owned)),
            _ => {}
        }
    }
    if grant.as_deref() != Some(TOKEN_EXCHANGE) {
        return oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type", "expected a token exchange");
    }
    if !subject.is_some_and(|s| bridge.subject.matches(s.as_bytes())) {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_grant",
            "the subject token is not this keyless's: the external_account file is from another keyless run",
        );
    }
    let Some(account) = bridge.server.default_account() else {
        return oauth_error(StatusCode::NOT_FOUND, "invalid_request", "no service account is served");
    };
    let requested;
    let key = if scopes.is_empty() {
        &account.default_key
    } else {
        match ScopeSet::new(scopes.iter().map(String::as_str)) {
            Ok(set) => {
                requested = TokenKey::AccessToken(set);
                &requested
            }
            Err(reason) => return oauth_error(StatusCode::BAD_REQUEST, "invalid_scope", &reason),
        }
    };
    match account.cache.get(key).await {
        Ok(token) => {
            let expires_in = until(bridge.server.clock().as_ref(), token.expires_at).as_secs();
            let body = json!({
                "access_token": token.value.token.expose(),
                "issued_token_type": ACCESS_TOKEN_TYPE,
                "token_type": "Bearer",
                "expires_in": expires_in,
            });
            json_response(StatusCode::OK, &body)
        }
        Err(err) => unavailable(&err),
    }
}

/// No valid credential: 503 while the failure may pass, 502 for a refusal by Google (as the
/// metadata server answers), in the token-exchange error shape.
pub(crate) fn unavailable(err: &keyless_core::ExchangeError) -> Response {
    let status = keyless_provider::guard::unavailable_status(err.class, StatusCode::BAD_GATEWAY);
    oauth_error(status, "temporarily_unavailable", &format!("keyless: no Google credential available: {err}"))
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    json_response(status, &json!({ "error": error, "error_description": description }))
}

fn json_response(status: StatusCode, body: &serde_json::Value) -> Response {
    (status, [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body.to_string()).into_response()
}
