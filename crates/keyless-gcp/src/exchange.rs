//! The GCP exchange: STS token exchange (docs/protocols.md 3.1), then, with a service account,
//! IAM Credentials `generateAccessToken` / `generateIdToken` (3.2).

use std::time::{Duration, SystemTime};

use keyless_core::clock::SharedClock;
use keyless_core::{Context, Exchange, ExchangeError, Expiring, Issued, Secret, SubjectToken};
use keyless_provider::Provider as _;
use keyless_provider::body::{Countdowns, Rendered};
use keyless_provider::upstream::{self, read_bounded, retry_after_header, throttling, transport_error};
use serde::Deserialize;
use serde_json::json;
use url::Url;

use crate::ConfigError;
use crate::config::Settings;
use crate::identity::{PoolProvider, ScopeSet};
use crate::rejection::{self, Attempt, IamCall};

/// A Google access or ID token as cached, with its bodies as served, rendered on first use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GcpToken {
    pub(crate) token: Secret<String>,
    /// `{"access_token","expires_in","token_type"}` around its one countdown.
    pub(crate) access_body: Countdowns<1>,
    /// The ID token as the `identity` endpoint's text body.
    pub(crate) text_body: Rendered,
}

impl GcpToken {
    fn new(token: String) -> Self {
        Self { token: Secret::new(token), access_body: Countdowns::default(), text_body: Rendered::default() }
    }
}

/// What one cached token is for.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub(crate) enum TokenKey {
    /// An access token for a set of scopes.
    AccessToken(ScopeSet),
    /// An ID token for an audience (needs a service account). The metadata server's `format`
    /// is not part of the key: IAM issues the same token for both formats, since a federated
    /// identity has no instance for the `google.compute_engine` claims of `full`.
    IdToken { audience: String },
}

const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
const CA_KEY: &str = "gcp.ca_file";

#[derive(Debug)]
struct Impersonation {
    iam_endpoint: Url,
    email: String,
    delegates: Vec<String>,
    lifetime: Duration,
}

#[derive(Debug)]
pub(crate) struct GcpExchange {
    http: reqwest::Client,
    sts_endpoint: Url,
    provider: PoolProvider,
    subject_token_type: String,
    impersonation: Option<Impersonation>,
    clock: SharedClock,
    /// What to check when STS says the token is stale, for the section's source.
    stale_hint: String,
}

impl GcpExchange {
    pub(crate) fn new(settings: &Settings, ctx: &Context) -> Result<Self, ConfigError> {
        let endpoints = [&settings.sts_endpoint, &settings.iam_endpoint];
        let http = upstream::http_client(settings.ca_pem.as_deref(), CA_KEY, &ctx.cache_policy, &endpoints)
            .map_err(|e| ConfigError::HttpClient(e.to_string()))?;
        Ok(Self::with_client(settings, http, ctx.clock.clone()))
    }

    /// The exchange of `account` (another service account of this exchange's section, as
    /// `Account::settings` gives it) over this exchange's HTTP client: endpoints and CA
    /// certificates are the section's, so every account shares one client and its connection pool.
    fn for_account(&self, account: &Settings) -> Self {
        Self::with_client(account, self.http.clone(), self.clock.clone())
    }

    /// The exchanges of `settings`' extra service accounts, each with its settings, in order: one
    /// HTTP client for all ([`Self::for_account`]).
    pub(crate) fn for_accounts(&self, settings: &Settings) -> Vec<(Settings, Self)> {
        settings
            .accounts
            .iter()
            .map(|account| {
                let account_settings = account.settings(settings);
                let exchange = self.for_account(&account_settings);
                (account_settings, exchange)
            })
            .collect()
    }

    fn with_client(settings: &Settings, http: reqwest::Client, clock: SharedClock) -> Self {
        Self {
            http,
            sts_endpoint: settings.sts_endpoint.clone(),
            provider: settings.provider.clone(),
            subject_token_type: settings.subject_token_type.clone(),
            impersonation: settings.service_account.as_ref().map(|email| Impersonation {
                iam_endpoint: settings.iam_endpoint.clone(),
                email: email.clone(),
                delegates: settings.delegates.clone(),
                lifetime: settings.token_lifetime,
            }),
            clock,
            stale_hint: settings.source.stale_token_hint("gcp.token_file"),
        }
    }

    fn attempt<'a>(&'a self, token: &'a SubjectToken) -> Attempt<'a> {
        Attempt {
            provider: &self.provider,
            claims: token.claims(),
            now: self.clock.now(),
            service_account: self.impersonation.as_ref().map(|i| i.email.as_str()),
            delegates: self.impersonation.as_ref().map_or(&[], |i| i.delegates.as_slice()),
            stale_hint: &self.stale_hint,
        }
    }

    /// STS: the subject token for a federated access token with `scopes`.
    async fn federated_token(
        &self,
        token: &SubjectToken,
        scopes: &ScopeSet,
    ) -> Result<Expiring<GcpToken>, ExchangeError> {
        let started = self.clock.now();
        let scope = scopes.space_separated();
        let form = [
            ("grant_type", GRANT_TYPE),
            ("audience", self.provider.audience()),
            ("scope", scope.as_str()),
            ("requested_token_type", ACCESS_TOKEN_TYPE),
            ("subject_token", token.secret().expose().as_str()),
            ("subject_token_type", self.subject_token_type.as_str()),
        ];
        let response = self
            .http
            .post(join(&self.sts_endpoint, "/v1/token")?)
            .form(&form)
            .send()
            .await
            .map_err(|e| transport_error(&self.sts_name(), CA_KEY, &e))?;
        let status = response.status();
        let retry_after = retry_after_header(response.headers());
        let body = read_bounded(&self.sts_name(), CA_KEY, response).await?;
        if !status.is_success() {
            let err = rejection::sts(status, &body, &self.attempt(token));
            return Err(throttling(
                err,
                rejection::THROTTLING_CODES,
                status.as_u16(),
                retry_after.as_deref(),
                self.clock.now(),
            ));
        }
        let parsed: StsResponse = serde_json::from_slice(&body)
            .map_err(|_| ExchangeError::retryable("STS answered 200 with a body that is not a token response"))?;
        let lifetime = parsed
            .expires_in
            .and_then(|e| e.seconds())
            .ok_or_else(|| ExchangeError::retryable("STS answered without a usable expires_in"))?;
        expiring(parsed.access_token, started + lifetime, started)
    }

    async fn generate_access_token(
        &self,
        imp: &Impersonation,
        federated: &GcpToken,
        scopes: &ScopeSet,
        token: &SubjectToken,
    ) -> Result<Expiring<GcpToken>, ExchangeError> {
        let mut body = json!({
            "scope": scopes.iter().collect::<Vec<_>>(),
            "lifetime": format!("{}s", imp.lifetime.as_secs()),
        });
        if !imp.delegates.is_empty() {
            body["delegates"] = json!(imp.delegates);
        }
        let answer = self.iam_call(imp, IamCall::AccessToken, federated, &body, token).await?;
        let parsed: AccessTokenResponse = serde_json::from_slice(&answer)
            .map_err(|_| ExchangeError::retryable("IAM generateAccessToken answered 200 with an unexpected body"))?;
        expiring(parsed.access_token, expire_time(&parsed.expire_time)?, self.clock.now())
    }

    async fn generate_id_token(
        &self,
        imp: &Impersonation,
        federated: &GcpToken,
        audience: &str,
        token: &SubjectToken,
    ) -> Result<Expiring<GcpToken>, ExchangeError> {
        let mut body = json!({ "audience": audience, "includeEmail": true });
        if !imp.delegates.is_empty() {
            body["delegates"] = json!(imp.delegates);
        }
        let answer = self.iam_call(imp, IamCall::IdToken, federated, &body, token).await?;
        let parsed: IdTokenResponse = serde_json::from_slice(&answer)
            .map_err(|_| ExchangeError::retryable("IAM generateIdToken answered 200 with an unexpected body"))?;
        // The answer carries no expiry; the JWT's own `exp` is it.
        let exp = SubjectToken::parse(&parsed.token).ok().and_then(|jwt| jwt.claims().exp).ok_or_else(|| {
            ExchangeError::retryable("IAM generateIdToken answered a token that is not a JWT with exp")
        })?;
        expiring(parsed.token, exp, self.clock.now())
    }

    async fn iam_call(
        &self,
        imp: &Impersonation,
        call: IamCall,
        federated: &GcpToken,
        body: &serde_json::Value,
        token: &SubjectToken,
    ) -> Result<Vec<u8>, ExchangeError> {
        let path = format!("/v1/projects/-/serviceAccounts/{}:{}", imp.email, call.method());
        let response = self
            .http
            .post(join(&imp.iam_endpoint, &path)?)
            .bearer_auth(federated.token.expose())
            .json(body)
            .send()
            .await
            .map_err(|e| transport_error(&iam_name(imp), CA_KEY, &e))?;
        let status = response.status();
        let retry_after = retry_after_header(response.headers());
        let answer = read_bounded(&iam_name(imp), CA_KEY, response).await?;
        if status.is_success() {
            return Ok(answer);
        }
        let err = rejection::iam(call, status, &answer, &self.attempt(token));
        Err(throttling(err, rejection::THROTTLING_CODES, status.as_u16(), retry_after.as_deref(), self.clock.now()))
    }

    /// STS as errors name it.
    fn sts_name(&self) -> String {
        format!("Google STS at {}", self.sts_endpoint.as_str().trim_end_matches('/'))
    }

    fn need_impersonation(&self) -> Result<&Impersonation, ExchangeError> {
        self.impersonation.as_ref().ok_or_else(|| {
            ExchangeError::terminal("an ID token needs a service account to impersonate")
                .with_hint("set gcp.service_account")
        })
    }
}

impl Exchange for GcpExchange {
    type Key = TokenKey;
    type Credential = GcpToken;

    fn provider(&self) -> &'static str {
        crate::Gcp::NAME
    }

    fn identity(&self, _key: &TokenKey) -> String {
        match &self.impersonation {
            Some(imp) => imp.email.clone(),
            None => self.provider.audience().to_owned(),
        }
    }

    fn describe_key(&self, key: &TokenKey) -> String {
        match key {
            TokenKey::AccessToken(scopes) => {
                // The common scope by its short name, as gcloud prints it.
                let short = |s: &str| s.strip_prefix("https://www.googleapis.com/auth/").unwrap_or(s).to_owned();
                format!("access token, scopes {}", scopes.iter().map(short).collect::<Vec<_>>().join(" "))
            }
            TokenKey::IdToken { audience } => format!("ID token for audience {audience}"),
        }
    }

    async fn exchange(&self, key: &TokenKey, token: &SubjectToken) -> Result<Issued<GcpToken>, ExchangeError> {
        let credential = match (key, &self.impersonation) {
            (TokenKey::AccessToken(scopes), None) => self.federated_token(token, scopes).await?,
            (TokenKey::AccessToken(scopes), Some(imp)) => {
                // IAM Credentials itself needs cloud-platform; the requested scopes go on the
                // impersonated token (as google-auth's external_account does).
                let federated = self.federated_token(token, &ScopeSet::cloud_platform()).await?;
                self.generate_access_token(imp, &federated.value, scopes, token).await?
            }
            (TokenKey::IdToken { audience }, _) => {
                let imp = self.need_impersonation()?;
                let federated = self.federated_token(token, &ScopeSet::cloud_platform()).await?;
                self.generate_id_token(imp, &federated.value, audience, token).await?
            }
        };
        Ok(Issued::new(credential))
    }
}

/// IAM Credentials as errors name it.
fn iam_name(imp: &Impersonation) -> String {
    format!("IAM Credentials at {}", imp.iam_endpoint.as_str().trim_end_matches('/'))
}

fn join(base: &Url, path: &str) -> Result<Url, ExchangeError> {
    let joined = format!("{}{path}", base.as_str().trim_end_matches('/'));
    Url::parse(&joined).map_err(|e| ExchangeError::terminal(format!("bad upstream URL {joined:?}: {e}")))
}

/// generateAccessToken's `expireTime`. Quoted escaped once, by `upstream` alone (`{:?}` on top
/// would escape its escapes again).
fn expire_time(text: &str) -> Result<SystemTime, ExchangeError> {
    humantime::parse_rfc3339_weak(text).map_err(|_| {
        ExchangeError::retryable(format!(
            "IAM generateAccessToken answered an expireTime that is not RFC 3339: \"{}\"",
            keyless_core::printable::upstream(text)
        ))
    })
}

/// A token that is still valid now (an already-expired answer would make the cache refresh in
/// a tight loop).
fn expiring(token: String, expires_at: SystemTime, now: SystemTime) -> Result<Expiring<GcpToken>, ExchangeError> {
    if expires_at <= now {
        return Err(ExchangeError::retryable(format!(
            "the token service answered a token that expired at {}: check the clock of this machine",
            humantime::format_rfc3339_seconds(expires_at)
        )));
    }
    Ok(Expiring::new(GcpToken::new(token), expires_at))
}

#[derive(Deserialize)]
struct StsResponse {
    access_token: String,
    expires_in: Option<ExpiresIn>,
}

/// STS sends `expires_in` as a number or as a string of digits (docs/protocols.md 3.1).
#[derive(Deserialize)]
#[serde(untagged)]
enum ExpiresIn {
    Number(serde_json::Number),
    Text(String),
}

impl ExpiresIn {
    fn seconds(&self) -> Option<Duration> {
        let secs = match self {
            Self::Number(n) => n.as_f64()?,
            Self::Text(s) => s.trim().parse::<f64>().ok()?,
        };
        (secs.is_finite() && secs > 0.0).then(|| Duration::from_secs_f64(secs.floor()))
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AccessTokenResponse {
    access_token: String,
    expire_time: String,
}

#[derive(Deserialize)]
struct IdTokenResponse {
    token: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expires_in_may_be_a_number_or_a_string() {
        let parse = |s: &str| serde_json::from_str::<ExpiresIn>(s).ok().and_then(|e| e.seconds());
        assert_eq!(parse("3599"), Some(Duration::from_secs(3599)));
        assert_eq!(parse("\"3599\""), Some(Duration::from_secs(3599)));
        assert_eq!(parse("3599.7"), Some(Duration::from_secs(3599)));
        assert_eq!(parse("0"), None);
        assert_eq!(parse("\"soon\""), None);
    }

    #[test]
    fn an_unreadable_expire_time_is_quoted_escaped_once() {
        let at = expire_time("2030-01-01T00:00:00Z").expect("RFC 3339");
        assert_eq!(at, humantime::parse_rfc3339("2030-01-01T00:00:00Z").expect("a time"));
        let err = expire_time("soon\nlevel=INFO").expect_err("not RFC 3339").to_string();
        assert!(err.ends_with(r#": "soon\nlevel=INFO""#), "{err}");
    }

    #[test]
    fn joins_paths_onto_endpoints_with_or_without_a_path() {
        let base = Url::parse("https://sts.googleapis.com").expect("url");
        assert_eq!(
            join(&base, "/v1/token").map(String::from).ok().as_deref(),
            Some("https://sts.googleapis.com/v1/token")
        );
        let base = Url::parse("http://127.0.0.1:9/gcp").expect("url");
        assert_eq!(join(&base, "/v1/token").map(String::from).ok().as_deref(), Some("http://127.0.0.1:9/gcp/v1/token"));
    }
}
