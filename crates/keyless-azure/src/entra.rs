//! The exchange: Entra ID v2 client-credentials grant with the projected service-account token as
//! the client assertion (docs/protocols.md 4.1).
//!
//! Why `reqwest` and not `azure_identity`'s `ClientAssertionCredential` (checked against
//! azure_identity 1.0.0): the credential keeps its own token cache (`cache.rs`: a token is returned
//! from it until 5 minutes before expiry), so the refresh-ahead of keyless' `CredentialCache` at
//! half the lifetime would get the *same* token back: refreshes would be hidden from our cache and
//! a rotated subject token would not be used until then. It also stamps expiry with
//! `OffsetDateTime::now_utc()`, bypassing the injected clock, and wraps Entra's error into a
//! generic `Credential` error, where the AADSTS code survives only as a comma-joined string inside
//! a nested error. A plain POST meets every requirement: custom authority host and CA, our
//! classification, our timeouts, no cache but ours.

use std::fmt;
use std::time::{Duration, SystemTime};

use keyless_core::clock::SharedClock;
use keyless_core::{Exchange, ExchangeError, Expiring, Issued, Secret, SourceSpec, SubjectToken};
use keyless_provider::Provider as _;
use keyless_provider::upstream::{read_bounded, retry_after_header, throttling, transport_error};

use crate::aadsts::{self, Attempt};
use crate::identity::{ClientId, Scope, TenantId};
use crate::rendered::Rendered;

const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
const CA_KEY: &str = "azure.ca_file";

/// What is asked for within one provider: an app (client id) and the scope of one resource.
/// Tenant and authority are fixed per provider, so this is the (authority, tenant, client id,
/// scope) key of docs/protocols.md 4.1.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TokenKey {
    pub client_id: ClientId,
    pub scope: Scope,
}

/// The scope alone, shorter than the derived `TokenKey { client_id: ClientId("..."), scope: ... }`
/// in a test's assertion. What people read (`/readyz`, `keyless exec`, log lines) is
/// [`EntraExchange`]'s `describe_key`: `resource https://vault.azure.net`.
impl fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.scope.as_str())
    }
}

/// An Entra ID access token, as cached and served.
#[derive(Debug, Clone)]
pub struct AccessToken {
    pub token: Secret<String>,
    /// When keyless asked for it (served as `not_before`).
    pub issued_at: SystemTime,
    /// The end of Entra's extended lifetime (`ext_expires_in`), for IMDS' `ext_expires_in`.
    pub ext_expires_at: SystemTime,
    /// Its served bodies, rendered on first use.
    pub(crate) rendered: Rendered,
}

/// Client-credentials exchanges against one authority and tenant.
#[derive(Debug)]
pub struct EntraExchange {
    http: reqwest::Client,
    authority: String,
    tenant: TenantId,
    token_url: url::Url,
    clock: SharedClock,
    /// What to check when Entra says the token is stale, for the section's source.
    stale_hint: String,
}

impl EntraExchange {
    /// `authority` is already validated and has no trailing slash; `source` is where the subject
    /// token comes from (what a stale-token hint tells to check).
    pub fn new(
        http: reqwest::Client,
        authority: &url::Url,
        tenant: TenantId,
        source: &SourceSpec,
        clock: SharedClock,
    ) -> Result<Self, url::ParseError> {
        // `url::Url` renders a bare host with a trailing slash: trim before joining (docs/protocols.md 4.1).
        let authority = authority.as_str().trim_end_matches('/').to_owned();
        let token_url = url::Url::parse(&format!("{authority}/{tenant}/oauth2/v2.0/token"))?;
        let stale_hint = source.stale_token_hint("azure.token_file");
        Ok(Self { http, authority, tenant, token_url, clock, stale_hint })
    }

    /// The token endpoint as errors name it.
    fn service(&self) -> String {
        format!("Entra ID at {}", self.token_url)
    }
}

impl Exchange for EntraExchange {
    type Key = TokenKey;
    type Credential = AccessToken;

    fn provider(&self) -> &'static str {
        crate::Azure::NAME
    }

    fn identity(&self, key: &TokenKey) -> String {
        key.client_id.to_string()
    }

    fn describe_key(&self, key: &TokenKey) -> String {
        format!("resource {}", key.scope.resource())
    }

    async fn exchange(&self, key: &TokenKey, token: &SubjectToken) -> Result<Issued<AccessToken>, ExchangeError> {
        // Expiry counts from before the request, so it never overstates the token's life.
        let asked_at = self.clock.now();
        let form = [
            ("client_id", key.client_id.as_str()),
            ("scope", key.scope.as_str()),
            ("client_assertion_type", ASSERTION_TYPE),
            ("client_assertion", token.secret().expose().as_str()),
            ("grant_type", "client_credentials"),
        ];
        let response = self
            .http
            .post(self.token_url.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .form(&form)
            .send()
            .await
            .map_err(|e| transport_error(&self.service(), CA_KEY, &e.without_url()))?;
        let status = response.status();
        let request_id = response.headers().get("x-ms-request-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let retry_after = retry_after_header(response.headers());
        let body =
            read_bounded(&self.service(), CA_KEY, response).await.map_err(|e| e.with_request_id(request_id.clone()))?;
        if !status.is_success() {
            let err = aadsts::classify(
                status.as_u16(),
                &body,
                request_id,
                Attempt {
                    authority: &self.authority,
                    tenant: &self.tenant,
                    client_id: &key.client_id,
                    scope: &key.scope,
                    claims: token.claims(),
                    stale_hint: &self.stale_hint,
                },
            );
            // Entra throttles with 429 and `Retry-After`, its body perhaps not JSON (docs/protocols.md 9).
            return Err(throttling(
                err,
                crate::Azure::THROTTLING_CODES,
                status.as_u16(),
                retry_after.as_deref(),
                self.clock.now(),
            ));
        }
        let granted = Granted::parse(&body).map_err(|what| {
            ExchangeError::retryable(format!(
                "Entra ID at {} answered HTTP {status} without a usable token: {what}",
                self.token_url
            ))
            .with_request_id(request_id.clone())
        })?;
        // Whole seconds, rounded down: `expires_on` is advertised in whole seconds, and keyless
        // must stop serving the token no later than the second it advertised.
        let expires_at = floor_to_second(asked_at + granted.expires_in);
        let credential = AccessToken {
            token: granted.access_token,
            issued_at: asked_at,
            ext_expires_at: asked_at + granted.ext_expires_in.max(granted.expires_in),
            rendered: Rendered::default(),
        };
        Ok(Issued::new(Expiring::new(credential, expires_at)).with_request_id(request_id))
    }
}

/// A success body `{"token_type":"Bearer","expires_in":3599,"ext_expires_in":3599,"access_token"}`.
struct Granted {
    access_token: Secret<String>,
    expires_in: Duration,
    ext_expires_in: Duration,
}

impl Granted {
    /// Picks the fields by hand: serde's messages could quote a value, and a value here may be
    /// the token. The error names the field only.
    fn parse(body: &[u8]) -> Result<Self, &'static str> {
        let value: serde_json::Value = serde_json::from_slice(body).map_err(|_| "the body is not JSON")?;
        let access_token = value
            .get("access_token")
            .and_then(serde_json::Value::as_str)
            .filter(|t| !t.is_empty())
            .ok_or("access_token is missing")?;
        let expires_in = seconds(value.get("expires_in"))
            .filter(|d| !d.is_zero())
            .ok_or("expires_in is missing or not a positive number")?;
        Ok(Self {
            access_token: Secret::new(access_token.to_owned()),
            expires_in,
            ext_expires_in: seconds(value.get("ext_expires_in")).unwrap_or(expires_in),
        })
    }
}

/// `3599` or `"3599"` (Entra sends numbers; some proxies and ADFS send strings).
fn seconds(value: Option<&serde_json::Value>) -> Option<Duration> {
    match value? {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
    .map(Duration::from_secs)
}

/// `t` without its fraction of a second.
fn floor_to_second(t: SystemTime) -> SystemTime {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| SystemTime::UNIX_EPOCH + Duration::from_secs(d.as_secs()))
        .unwrap_or(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `expires_on` is whole seconds: a token must not be served past the second it advertises.
    #[test]
    fn expiry_is_rounded_down_to_the_advertised_second() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_800_000_000_999);
        assert_eq!(floor_to_second(t), SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000));
    }

    #[test]
    fn parses_numeric_and_string_lifetimes() {
        let g =
            Granted::parse(br#"{"token_type":"Bearer","expires_in":3599,"ext_expires_in":"7200","access_token":"t"}"#)
                .map_err(str::to_owned)
                .expect("granted");
        assert_eq!(g.expires_in, Duration::from_secs(3599));
        assert_eq!(g.ext_expires_in, Duration::from_secs(7200));
        assert_eq!(g.access_token.expose(), "t");
    }

    #[test]
    fn malformed_success_names_the_field_but_never_a_value() {
        let secret_looking = br#"{"access_token":"eyJsecret","expires_in":"soon"}"#;
        let what = Granted::parse(secret_looking).err().expect("refused");
        assert!(what.contains("expires_in"));
        assert!(!what.contains("eyJ"));
        assert!(Granted::parse(br#"{"expires_in":10}"#).is_err());
        assert!(Granted::parse(b"<html>").is_err());
    }
}
