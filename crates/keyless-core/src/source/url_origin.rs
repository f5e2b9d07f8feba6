//! The URL source: `GET` with configured headers, the token as the body or as one field of a JSON
//! body: the shape of Google's url-sourced credentials (docs/protocols.md 6.3), which fetch anew for
//! every exchange. Header values are secrets (they often authorize the fetch).

use std::path::PathBuf;
use std::time::Duration;

use super::http::{self, FetchError, Header};
use super::{NoChanges, Schedule, SourceId, SourceKind, TokenOrigin};
use crate::token::{SubjectToken, TokenError};

/// How a response (or a command's output) holds the token.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub enum TokenFormat {
    /// The whole body, surrounding whitespace trimmed.
    #[default]
    Text,
    /// A top-level string field of a JSON object.
    Json { field: String },
}

impl TokenFormat {
    /// The token in `body`, or why there is none (never quoting the body: it may be a token).
    pub(super) fn extract(&self, body: &[u8]) -> Result<String, String> {
        match self {
            Self::Text => Ok(String::from_utf8_lossy(body).into_owned()),
            Self::Json { field } => {
                let json: serde_json::Value =
                    serde_json::from_slice(body).map_err(|_| "the answer is not JSON (format is json)".to_owned())?;
                json.get(field)
                    .and_then(|v| v.as_str())
                    .map(str::to_owned)
                    .ok_or_else(|| format!("the JSON answer has no string field {field:?}"))
            }
        }
    }
}

/// What to fetch: a URL (its query may be secret: shown without it), headers, the format.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct UrlSpec {
    pub url: String,
    /// Name and value; values are secret.
    pub headers: Vec<(String, String)>,
    pub format: TokenFormat,
    pub ca_file: Option<PathBuf>,
}

impl std::fmt::Debug for UrlSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.headers.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("UrlSpec")
            .field("url", &url::Url::parse(&self.url).map(|u| http::display_url(&u)).unwrap_or_default())
            .field("headers", &names)
            .field("format", &self.format)
            .finish_non_exhaustive()
    }
}

impl UrlSpec {
    /// `https://host/path` (no query, no credentials).
    pub fn shown(&self) -> String {
        url::Url::parse(&self.url).map(|u| http::display_url(&u)).unwrap_or_else(|_| "<not a URL>".to_owned())
    }

    /// Checks the URL and headers (config validation; the origin reports the same errors on read).
    pub fn validate(&self) -> Result<(), String> {
        http::source_url("url", &self.url)?;
        for (name, value) in &self.headers {
            reqwest::header::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("header name {name:?} is not a valid HTTP header name"))?;
            reqwest::header::HeaderValue::from_str(value)
                .map_err(|_| format!("the value of header {name:?} is not a valid HTTP header value"))?;
        }
        Ok(())
    }
}

/// A ready `GET`: the URL, its headers (values secret), the client, how the answer holds the
/// token. The URL source is one; the GitHub Actions source is one with a bearer header and the
/// JSON field `value`. `Debug` shows neither the URL's query nor the header values.
pub(super) struct Fetch {
    url: url::Url,
    headers: Vec<Header>,
    client: reqwest::Client,
    format: TokenFormat,
}

impl std::fmt::Debug for Fetch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.headers.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("Fetch")
            .field("url", &self.shown())
            .field("headers", &names)
            .field("format", &self.format)
            .finish_non_exhaustive()
    }
}

/// Why a [`Fetch`] gave no token.
pub(super) enum FetchFailure {
    /// No answer, or not a 200.
    Request(FetchError),
    /// A 200 whose body does not hold the token as [`TokenFormat`] says (never quoting the body).
    Answer(String),
}

impl Fetch {
    pub(super) fn new(
        url: url::Url,
        headers: Vec<Header>,
        format: TokenFormat,
        ca_file: Option<&PathBuf>,
    ) -> Result<Self, String> {
        let client = http::client(&url, ca_file)?;
        Ok(Self { url, headers, client, format })
    }

    /// `https://host/path`, as errors show it.
    pub(super) fn shown(&self) -> String {
        http::display_url(&self.url)
    }

    /// Fetches once: the token as the answer holds it.
    pub(super) async fn token(&self) -> Result<String, FetchFailure> {
        let body = http::get(&self.client, &self.url, &self.headers).await.map_err(FetchFailure::Request)?;
        self.format.extract(&body).map_err(FetchFailure::Answer)
    }
}

/// Fetches the token from a URL on every read. The GitHub Actions source is one too
/// ([`super::github_actions::origin`]), with its own name, poll and error wording.
#[derive(Debug)]
pub struct UrlOrigin {
    id: SourceId,
    /// The backstop poll (the fetch before `exp` does the work).
    poll: Duration,
    /// The ready request, or why there cannot be one (reported on every read).
    fetch: Result<Fetch, String>,
    /// What a failed fetch is reported as.
    explain: fn(&Fetch, FetchFailure) -> String,
}

impl UrlOrigin {
    pub fn new(spec: &UrlSpec) -> Self {
        let id = SourceId::new(SourceKind::Url, spec.shown());
        let fetch = spec.validate().and_then(|()| {
            let url = http::source_url("url", &spec.url)?;
            let headers = spec.headers.iter().map(|(n, v)| (n.clone(), v.clone().into())).collect();
            Fetch::new(url, headers, spec.format.clone(), spec.ca_file.as_ref())
        });
        Self::fetching(id, Duration::from_secs(300), fetch, |_, failure| match failure {
            FetchFailure::Request(e) => e.to_string(),
            FetchFailure::Answer(why) => why,
        })
    }

    /// An origin named `id` that runs `fetch` on every read, polled every `poll` at least.
    pub(super) fn fetching(
        id: SourceId,
        poll: Duration,
        fetch: Result<Fetch, String>,
        explain: fn(&Fetch, FetchFailure) -> String,
    ) -> Self {
        Self { id, poll, fetch, explain }
    }
}

impl TokenOrigin for UrlOrigin {
    type Changes = NoChanges;

    fn id(&self) -> &SourceId {
        &self.id
    }

    fn schedule(&self) -> Schedule {
        Schedule::fetching(self.poll, Duration::from_secs(5), http::FETCH_TIMEOUT + Duration::from_secs(1))
    }

    fn changes(&mut self) -> NoChanges {
        NoChanges
    }

    async fn read(&mut self) -> Result<SubjectToken, TokenError> {
        let unavailable = |reason: String| TokenError::Unavailable { from: self.id.clone(), reason };
        // The fetch could not be built (a variable unset, a malformed URL): no retry changes that.
        let fetch =
            self.fetch.as_ref().map_err(|e| TokenError::Unconfigured { from: self.id.clone(), reason: e.clone() })?;
        let token = fetch.token().await.map_err(|failure| unavailable((self.explain)(fetch, failure)))?;
        SubjectToken::parse(&token).map_err(|shape| TokenError::Invalid { from: self.id.clone(), shape })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_format_takes_one_string_field_and_never_quotes_the_body() {
        let json = TokenFormat::Json { field: "value".into() };
        assert_eq!(json.extract(br#"{"value":"a.b.c","count":1}"#).as_deref(), Ok("a.b.c"));
        let err = json.extract(br#"{"access_token":"SECRET"}"#).expect_err("no such field");
        assert!(!err.contains("SECRET"), "{err}");
        assert!(json.extract(b"SECRET").expect_err("not JSON").contains("not JSON"));
    }

    #[test]
    fn debug_shows_header_names_only() {
        let spec = UrlSpec {
            url: "https://h.example/t?key=QUERYSECRET".into(),
            headers: vec![("Authorization".into(), "Bearer HEADERSECRET".into())],
            format: TokenFormat::Text,
            ca_file: None,
        };
        let shown = format!("{spec:?}");
        assert!(!shown.contains("SECRET"), "{shown}");
        assert!(shown.contains("Authorization"));
        let origin = format!("{:?}", UrlOrigin::new(&spec));
        assert!(!origin.contains("SECRET"), "{origin}");
        assert!(origin.contains("https://h.example/t"), "{origin}");
    }
}
