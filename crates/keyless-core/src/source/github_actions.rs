//! The GitHub Actions OIDC source (docs/protocols.md 6.1): inside a job with
//! `permissions: id-token: write`, `ACTIONS_ID_TOKEN_REQUEST_URL` + `ACTIONS_ID_TOKEN_REQUEST_TOKEN`
//! mint a JWT for any audience. The JWT lives 5 minutes, so the driver fetches a new one 2 minutes
//! before `exp`, and again whenever a cloud rejects one (every read is a fresh mint).
//!
//! Traps handled: the request URL already has a query (`api-version=...`), so the audience is *set*
//! with a URL parser, never appended as `?audience=`; the request token lives for the whole job and
//! is a [`Secret`]: it never reaches a log, an error or a file.

use std::path::PathBuf;
use std::time::Duration;

use super::http::{self, FetchError};
use super::url_origin::{Fetch, FetchFailure, TokenFormat, UrlOrigin};
use super::{SourceId, SourceKind};
use crate::secret::Secret;

pub const REQUEST_URL_VAR: &str = "ACTIONS_ID_TOKEN_REQUEST_URL";
pub const REQUEST_TOKEN_VAR: &str = "ACTIONS_ID_TOKEN_REQUEST_TOKEN";

/// Where the request URL and token come from. By default the job's environment; `keyless dev`
/// points at the emulator's endpoint with a file instead (no env var can carry it in-process).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct ActionsEndpoint {
    /// `None`: `ACTIONS_ID_TOKEN_REQUEST_URL`.
    pub request_url: Option<String>,
    /// `None`: `ACTIONS_ID_TOKEN_REQUEST_TOKEN`.
    pub request_token_file: Option<PathBuf>,
    /// Extra CA certificates for the endpoint (the emulator's).
    pub ca_file: Option<PathBuf>,
}

/// A fresh GitHub Actions OIDC token for `audience` on every read, with the endpoint from
/// `endpoint` or the environment `env`: a URL origin (`GET` with `Authorization: Bearer
/// REQUEST_TOKEN`, the token in the JSON field `value`) with the Actions-specific errors.
pub fn origin(audience: &str, endpoint: &ActionsEndpoint, env: &dyn Fn(&str) -> Option<String>) -> UrlOrigin {
    let id = SourceId::new(SourceKind::GithubActions, format!("audience={audience}"));
    // The exp-driven re-fetch does the work; the poll only backs it up.
    UrlOrigin::fetching(id, Duration::from_secs(240), resolve(audience, endpoint, env), explain)
}

/// The error of a job whose token cannot be requested: the variables appear only with the permission.
fn missing_permission(var: &str) -> String {
    format!(
        "{var} is not set: GitHub Actions sets {REQUEST_URL_VAR} and {REQUEST_TOKEN_VAR} only for jobs with \
         `permissions: id-token: write`; add it to the workflow (or the job), or configure another token source"
    )
}

/// The fetch of `audience`'s token from the endpoint.
fn resolve(audience: &str, endpoint: &ActionsEndpoint, env: &dyn Fn(&str) -> Option<String>) -> Result<Fetch, String> {
    let non_empty = |v: Option<String>| v.filter(|v| !v.trim().is_empty());
    let raw_url = non_empty(endpoint.request_url.clone().or_else(|| env(REQUEST_URL_VAR)))
        .ok_or_else(|| missing_permission(REQUEST_URL_VAR))?;
    let token = match &endpoint.request_token_file {
        Some(path) => read_token_file(path)?,
        None => non_empty(env(REQUEST_TOKEN_VAR)).ok_or_else(|| missing_permission(REQUEST_TOKEN_VAR))?,
    };
    let url = with_audience(&raw_url, audience)?;
    let bearer = Secret::new(format!("Bearer {}", token.trim()));
    let format = TokenFormat::Json { field: "value".to_owned() };
    Fetch::new(url, vec![("authorization".to_owned(), bearer)], format, endpoint.ca_file.as_ref())
}

fn read_token_file(path: &std::path::Path) -> Result<String, String> {
    let bytes = crate::read_regular_file(path, 16 * 1024)
        .map_err(|e| format!("cannot read the Actions request token file {}: {e}", path.display()))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// The request URL with its `audience` query parameter set to `audience` (replacing any), the
/// rest of its query kept: `...?api-version=2.0&audience=sts.amazonaws.com`. Only https, or plain
/// http to loopback (the emulator): the request carries the job's bearer token, and GitHub's
/// endpoint is never a link-local metadata address.
pub fn with_audience(request_url: &str, audience: &str) -> Result<url::Url, String> {
    let mut url = http::source_url(REQUEST_URL_VAR, request_url)?;
    if url.scheme() == "http" && !crate::upstream::is_loopback_host(&url) {
        return Err(format!(
            "{REQUEST_URL_VAR} {} uses plain http to a host that is not loopback: the request token would be \
             sent unencrypted; GitHub's endpoint is https",
            http::display_url(&url)
        ));
    }
    let kept: Vec<(String, String)> =
        url.query_pairs().filter(|(k, _)| k != "audience").map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
    {
        let mut query = url.query_pairs_mut();
        query.clear();
        query.extend_pairs(kept);
        if !audience.is_empty() {
            query.append_pair("audience", audience);
        }
    }
    Ok(url)
}

/// A failed fetch as the job's author can act on it.
fn explain(fetch: &Fetch, failure: FetchFailure) -> String {
    let shown = fetch.shown();
    match failure {
        FetchFailure::Request(e @ FetchError::Status(401 | 403, _)) => format!(
            "the Actions token endpoint {shown} refused the request token ({e}): it is valid only while its job \
             runs, and only with `permissions: id-token: write`"
        ),
        FetchFailure::Request(e) => format!("the Actions token endpoint {shown}: {e}"),
        FetchFailure::Answer(_) => {
            "the Actions token endpoint's answer has no ID token (expected JSON {\"value\": JWT})".to_owned()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::TokenOrigin as _;

    #[test]
    fn the_audience_is_set_in_a_url_that_already_has_a_query() {
        let url = with_audience("https://pipelines.example/x/idtoken?api-version=2.0", "sts.amazonaws.com")
            .expect("a valid URL");
        assert_eq!(url.as_str(), "https://pipelines.example/x/idtoken?api-version=2.0&audience=sts.amazonaws.com");
        let google = "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/gh";
        let url = with_audience("https://pipelines.example/x/idtoken?audience=old&api-version=2.0", google)
            .expect("a valid URL");
        let pairs: Vec<(String, String)> = url.query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
        assert_eq!(pairs, [("api-version".into(), "2.0".into()), ("audience".into(), google.to_owned())]);
    }

    #[test]
    fn the_request_url_is_https_or_loopback_http_only() {
        assert!(with_audience("http://127.0.0.1:9/idtoken?api-version=2.0", "a").is_ok());
        assert!(with_audience("https://169.254.169.254/idtoken", "a").is_ok());
        for plain in ["http://169.254.169.254/idtoken", "http://[fe80::1]/idtoken", "http://10.0.0.1/idtoken"] {
            let err = with_audience(plain, "a").expect_err(plain);
            assert!(err.contains(REQUEST_URL_VAR) && err.contains("plain http"), "{err}");
        }
    }

    #[tokio::test]
    async fn missing_variables_name_the_permission_to_add() {
        let mut actions = origin("sts.amazonaws.com", &ActionsEndpoint::default(), &|_| None);
        let err = actions.read().await.expect_err("no endpoint").to_string();
        assert!(err.contains("permissions: id-token: write"), "{err}");
        assert!(err.contains(REQUEST_URL_VAR), "{err}");
    }

    #[tokio::test]
    async fn the_request_token_is_never_in_an_error() {
        let env = |k: &str| match k {
            REQUEST_URL_VAR => Some("http://127.0.0.1:9/idtoken?api-version=2.0".to_owned()),
            REQUEST_TOKEN_VAR => Some("request-token-SECRET".to_owned()),
            _ => None,
        };
        let mut actions = origin("aud", &ActionsEndpoint::default(), &env);
        let err = actions.read().await.expect_err("nothing listens on port 9");
        assert!(!err.to_string().contains("SECRET"), "{err}");
        assert!(!format!("{actions:?}").contains("SECRET"));
    }
}
