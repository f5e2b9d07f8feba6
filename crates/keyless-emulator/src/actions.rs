//! GitHub Actions' OIDC token endpoint, as strict as the real one (docs/protocols.md 6.1): the job
//! gets `ACTIONS_ID_TOKEN_REQUEST_URL` (which already has a query, `api-version=2.0`) and
//! `ACTIONS_ID_TOKEN_REQUEST_TOKEN`; `GET URL&audience=AUD` with `Authorization: Bearer TOKEN`
//! answers `{"value": JWT}`, a 5-minute token from the Actions issuer with GitHub's claim set.
//!
//! Its issuer (`URL/_github`) publishes discovery and JWKS like token.actions.githubusercontent.com,
//! and the three emulated clouds trust it for the dev identities with the GitHub subject
//! [`ActionsIssuer::SUBJECT`]. A test control makes the endpoint fail the way a real one can
//! (`POST /_emulator/github-actions/fault`).

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use axum::Json;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use crate::SharedState;
use crate::clock;
use crate::error::EmulatorError;
use crate::issuer::{SubjectClaims, TokenRejection};
use crate::keys::{HeaderStyle, RsaKey, jwks};

/// The path of the token request; the request URL adds `?api-version=2.0`.
pub(crate) const REQUEST_PATH: &str = "/_github/idtoken";
/// The issuer's path below the emulator's URL.
const ISSUER_PATH: &str = "/_github";
/// GitHub's token lifetime, not extendable.
pub(crate) const TOKEN_LIFETIME: Duration = Duration::from_secs(300);

/// How the endpoint misbehaves for the next requests (test control).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ActionsFault {
    #[default]
    None,
    /// 401: the request token is no longer accepted.
    Unauthorized,
    /// 503 from the token service.
    Unavailable,
    /// 200 with a body that is not `{"value": JWT}`.
    Garbage,
    /// No answer for longer than any client waits.
    Hang,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FaultRequest {
    #[serde(default)]
    fault: ActionsFault,
    /// Lifetime of the tokens minted from now on (tests that watch tokens expire); absent: kept.
    token_lifetime_secs: Option<u64>,
}

/// The Actions issuer: its key, the job's request token, the faults to play.
#[derive(Debug)]
pub(crate) struct ActionsIssuer {
    url: String,
    key: RsaKey,
    request_token: String,
    fault: Mutex<ActionsFault>,
    lifetime_secs: std::sync::atomic::AtomicU64,
}

/// GitHub's claims (docs.github.com OIDC reference), for a push to `main` of the dev repository.
#[derive(Debug, Serialize)]
struct ActionsClaims<'a> {
    jti: String,
    sub: &'a str,
    aud: &'a str,
    r#ref: &'a str,
    sha: &'a str,
    repository: &'a str,
    repository_owner: &'a str,
    repository_id: &'a str,
    repository_owner_id: &'a str,
    run_id: &'a str,
    run_number: &'a str,
    run_attempt: &'a str,
    repository_visibility: &'a str,
    actor: &'a str,
    actor_id: &'a str,
    workflow: &'a str,
    workflow_ref: &'a str,
    job_workflow_ref: &'a str,
    head_ref: &'a str,
    base_ref: &'a str,
    event_name: &'a str,
    ref_type: &'a str,
    runner_environment: &'a str,
    iss: &'a str,
    nbf: i64,
    exp: i64,
    iat: i64,
}

impl ActionsIssuer {
    /// The subject GitHub gives a job on a push to `main` of the dev repository.
    pub(crate) const SUBJECT: &'static str = "repo:keyless-dev/app:ref:refs/heads/main";
    const REPOSITORY: &'static str = "keyless-dev/app";

    pub(crate) fn new(emulator_url: &str) -> Result<Self, EmulatorError> {
        Ok(Self {
            url: format!("{emulator_url}{ISSUER_PATH}"),
            key: RsaKey::generate("GitHub Actions OIDC signing key")?,
            request_token: crate::ids::random_token(48),
            fault: Mutex::new(ActionsFault::None),
            lifetime_secs: std::sync::atomic::AtomicU64::new(TOKEN_LIFETIME.as_secs()),
        })
    }

    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    pub(crate) fn request_token(&self) -> &str {
        &self.request_token
    }

    fn mint(&self, audience: &str, now: SystemTime) -> Result<String, EmulatorError> {
        let iat = clock::unix_secs(now);
        let workflow_ref = format!("{}/.github/workflows/ci.yml@refs/heads/main", Self::REPOSITORY);
        let claims = ActionsClaims {
            jti: uuid::Uuid::new_v4().to_string(),
            sub: Self::SUBJECT,
            aud: audience,
            r#ref: "refs/heads/main",
            sha: "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c",
            repository: Self::REPOSITORY,
            repository_owner: "keyless-dev",
            repository_id: "100000001",
            repository_owner_id: "100000000",
            run_id: "1",
            run_number: "1",
            run_attempt: "1",
            repository_visibility: "private",
            actor: "keyless-dev",
            actor_id: "100000000",
            workflow: "ci",
            workflow_ref: &workflow_ref,
            job_workflow_ref: &workflow_ref,
            head_ref: "",
            base_ref: "",
            event_name: "push",
            ref_type: "branch",
            runner_environment: "github-hosted",
            iss: &self.url,
            nbf: iat - 5,
            exp: iat.saturating_add_unsigned(self.lifetime_secs.load(std::sync::atomic::Ordering::Relaxed)),
            iat,
        };
        self.key.sign(HeaderStyle::Google, &claims)
    }

    /// Checks a token the Actions issuer signed: signature and validity window.
    pub(crate) fn verify(&self, token: &str, now: SystemTime) -> Result<SubjectClaims, TokenRejection> {
        let claims = SubjectClaims::peek(token)?;
        if claims.iss != self.url {
            return Err(TokenRejection::UntrustedIssuer);
        }
        if !self.key.signed(token) {
            return Err(TokenRejection::BadSignature);
        }
        claims.check_validity(now)?;
        Ok(claims)
    }

    fn take_fault(&self) -> ActionsFault {
        *self.fault.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn set_fault(&self, fault: ActionsFault) {
        *self.fault.lock().unwrap_or_else(PoisonError::into_inner) = fault;
    }
}

/// Verifies a subject token from any issuer the emulated clouds trust (the cluster's, or the
/// Actions issuer), picked by its `iss`.
pub(crate) fn verify_trusted(
    state: &SharedState,
    token: &str,
    now: SystemTime,
) -> Result<SubjectClaims, TokenRejection> {
    match SubjectClaims::peek(token) {
        Ok(claims) if claims.iss == state.actions.url() => state.actions.verify(token, now),
        _ => state.issuer.verify(token, now),
    }
}

/// Whether `iss` is an issuer the clouds trust.
pub(crate) fn is_trusted_issuer(state: &SharedState, iss: &str) -> bool {
    state.issuer.trusts(iss) || iss == state.actions.url()
}

/// Whether `token` is signed by the key of its issuer `iss`.
pub(crate) fn signed_by_issuer(state: &SharedState, iss: &str, token: &str) -> bool {
    if iss == state.actions.url() {
        state.actions.key.signed(token)
    } else {
        state.issuer.check_signature(token).is_ok()
    }
}

/// `GET /_github/idtoken?api-version=2.0&audience=AUD`.
pub(crate) async fn id_token(
    State(state): State<SharedState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let actions = &state.actions;
    let fault = actions.take_fault();
    if fault == ActionsFault::Hang {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
    let bearer = headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    let authorized = bearer == Some(actions.request_token.as_str());
    if !authorized || fault == ActionsFault::Unauthorized {
        return (StatusCode::UNAUTHORIZED, "Unauthorized: the request token is missing, wrong or expired")
            .into_response();
    }
    if fault == ActionsFault::Unavailable {
        return (StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable").into_response();
    }
    if fault == ActionsFault::Garbage {
        return (StatusCode::OK, "<html>proxy error</html>").into_response();
    }
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let api_versions: Vec<&str> = pairs.iter().filter(|(k, _)| k == "api-version").map(|(_, v)| v.as_str()).collect();
    if api_versions != ["2.0"] {
        return (
            StatusCode::BAD_REQUEST,
            format!(
                "api-version must be given once as 2.0, got {api_versions:?} (was ?audience= appended to a URL that \
                 already has a query?)"
            ),
        )
            .into_response();
    }
    let audiences: Vec<&str> = pairs.iter().filter(|(k, _)| k == "audience").map(|(_, v)| v.as_str()).collect();
    let default_audience = format!("https://github.com/{}", "keyless-dev");
    let audience = match audiences.as_slice() {
        [] => default_audience.as_str(),
        [one] => one,
        _ => return (StatusCode::BAD_REQUEST, "audience given more than once").into_response(),
    };
    match actions.mint(audience, clock::now()) {
        Ok(token) => Json(serde_json::json!({ "count": token.len(), "value": token })).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// `GET /_github/.well-known/openid-configuration`, as token.actions.githubusercontent.com serves it.
pub(crate) async fn discovery(State(state): State<SharedState>) -> Json<serde_json::Value> {
    let url = state.actions.url();
    Json(serde_json::json!({
        "issuer": url,
        "jwks_uri": format!("{url}/.well-known/jwks"),
        "subject_types_supported": ["public", "pairwise"],
        "response_types_supported": ["id_token"],
        "claims_supported": ["sub", "aud", "exp", "iat", "iss", "jti", "nbf", "ref", "repository", "repository_id",
            "repository_owner", "repository_owner_id", "run_id", "run_number", "run_attempt", "actor", "actor_id",
            "workflow", "workflow_ref", "job_workflow_ref", "head_ref", "base_ref", "event_name", "ref_type",
            "environment", "runner_environment"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "scopes_supported": ["openid"],
    }))
}

/// `GET /_github/.well-known/jwks`.
pub(crate) async fn jwks_document(State(state): State<SharedState>) -> Json<serde_json::Value> {
    Json(jwks(&[&state.actions.key]))
}

/// `POST /_emulator/github-actions/fault` `{"fault": "unauthorized"|"unavailable"|"garbage"|"hang"|"none",
/// "token_lifetime_secs": N}`: every later request fails so until `none`; tokens live N seconds
/// (default GitHub's 300).
pub(crate) async fn set_fault(State(state): State<SharedState>, Json(request): Json<FaultRequest>) -> StatusCode {
    state.actions.set_fault(request.fault);
    if let Some(secs) = request.token_lifetime_secs {
        state.actions.lifetime_secs.store(secs.clamp(1, 3600), std::sync::atomic::Ordering::Relaxed);
    }
    StatusCode::NO_CONTENT
}
