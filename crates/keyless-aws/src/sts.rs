//! The exchange: STS `AssumeRoleWithWebIdentity` with the subject token, and the classification
//! of its failures (docs/protocols.md 2.1) with hints that show what the token actually claims.

use std::time::{Duration, SystemTime};

use aws_sdk_sts::error::{DisplayErrorContext, ProvideErrorMetadata as _, SdkError};
use aws_sdk_sts::operation::RequestId as _;
use aws_sdk_sts::operation::assume_role_with_web_identity::{
    AssumeRoleWithWebIdentityError, AssumeRoleWithWebIdentityOutput,
};
use aws_sdk_sts::types::PolicyDescriptorType;
use keyless_core::clock::SharedClock;
use keyless_core::printable::upstream;
use keyless_core::token::Claims;
use keyless_core::{Context, Exchange, ExchangeError, Expiring, Issued, Secret, SubjectToken};
use keyless_provider::Provider as _;
use keyless_provider::upstream::{is_transient_status, throttling, transport_error};

use crate::client::sts_client;
use crate::credentials::AwsCredentials;
use crate::error::ConfigError;
use crate::settings::{RoleArn, RoleSessionName, Settings};

/// The audience IRSA projects and registers as the OIDC provider's client id.
pub(crate) const AUDIENCE: &str = "sts.amazonaws.com";

/// The error codes AWS means "too many requests" by whatever the HTTP status: STS answers
/// `Throttling` with 400 (docs/protocols.md 9); its SDKs also know the other three.
pub(crate) const THROTTLING_CODES: &[&str] =
    &["Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequestsException"];

type StsError = SdkError<AssumeRoleWithWebIdentityError, aws_smithy_runtime_api::client::orchestrator::HttpResponse>;

/// AssumeRoleWithWebIdentity for one role. One credential per role: `Key = ()`.
#[derive(Debug)]
pub struct StsExchange {
    client: aws_sdk_sts::Client,
    role: RoleArn,
    session_name: RoleSessionName,
    duration: Duration,
    policy: Option<String>,
    policy_arns: Vec<String>,
    region: String,
    /// Where requests go, for messages: the override, or the regional endpoint.
    endpoint: String,
    clock: SharedClock,
    /// The `[[aws.roles]]` name of a named role (`None` for the default role).
    name: Option<String>,
    /// What to check when STS says the token expired, for the section's source.
    stale_hint: String,
}

impl StsExchange {
    pub(crate) fn new(settings: &Settings, ctx: &Context) -> Result<Self, ConfigError> {
        let endpoint = settings.sts_endpoint.as_ref().map_or_else(
            || format!("the regional STS endpoint of {}", settings.region),
            |url| url.as_str().trim_end_matches('/').to_owned(),
        );
        Ok(Self {
            client: sts_client(settings, &ctx.cache_policy)?,
            role: settings.role.clone(),
            session_name: settings.session_name.clone(),
            duration: settings.duration,
            policy: settings.policy.clone(),
            policy_arns: settings.policy_arns.clone(),
            region: settings.region.clone(),
            endpoint,
            clock: ctx.clock.clone(),
            name: None,
            stale_hint: settings.source.stale_token_hint("aws.token_file"),
        })
    }

    /// The exchange of the named role `named`, over this (the default role's) exchange's STS
    /// client: region, endpoint and CA certificates are the section's, so every role shares one
    /// client and its connection pool.
    pub(crate) fn for_role(&self, named: &crate::roles::NamedRole) -> Self {
        Self {
            client: self.client.clone(),
            role: named.role.clone(),
            session_name: named.session_name.clone(),
            duration: named.duration,
            policy: named.policy.clone(),
            policy_arns: named.policy_arns.clone(),
            region: self.region.clone(),
            endpoint: self.endpoint.clone(),
            clock: self.clock.clone(),
            name: Some(named.name.clone()),
            stale_hint: self.stale_hint.clone(),
        }
    }

    async fn call(&self, token: &SubjectToken) -> Result<AssumeRoleWithWebIdentityOutput, StsError> {
        let policy_arns = self.policy_arns.iter().map(|arn| PolicyDescriptorType::builder().arn(arn).build()).collect();
        self.client
            .assume_role_with_web_identity()
            .role_arn(self.role.as_str())
            .role_session_name(self.session_name.as_str())
            .web_identity_token(token.secret().expose())
            .duration_seconds(i32::try_from(self.duration.as_secs()).unwrap_or(i32::MAX))
            .set_policy(self.policy.clone())
            .set_policy_arns(Some(policy_arns).filter(|v: &Vec<_>| !v.is_empty()))
            .send()
            .await
    }

    fn credentials(&self, out: &AssumeRoleWithWebIdentityOutput) -> Result<Expiring<AwsCredentials>, ExchangeError> {
        let malformed = |what: &str| {
            ExchangeError::retryable(format!("STS answered AssumeRoleWithWebIdentity for {} without {what}", self.role))
        };
        let creds = out.credentials().ok_or_else(|| malformed("Credentials"))?;
        let expiration = SystemTime::try_from(*creds.expiration()).map_err(|_| malformed("a usable Expiration"))?;
        let now = self.clock.now();
        if expiration <= now {
            // humantime panics on instants before 1970, which a broken answer can carry (found by
            // fuzz/upstream_responses).
            let when = match expiration.duration_since(SystemTime::UNIX_EPOCH) {
                Ok(_) => humantime::format_rfc3339_seconds(expiration).to_string(),
                Err(_) => "a date before 1970".to_owned(),
            };
            return Err(ExchangeError::retryable(format!(
                "STS issued credentials for {} that expired at {when}, before now: is this host's clock right?",
                self.role
            )));
        }
        let assumed_role_arn = out.assumed_role_user().map(|u| u.arn().to_owned());
        let account_id = assumed_role_arn
            .as_deref()
            .and_then(|arn| arn.split(':').nth(4))
            .filter(|a| !a.is_empty())
            .unwrap_or(self.role.account())
            .to_owned();
        Ok(Expiring::new(
            AwsCredentials {
                access_key_id: creds.access_key_id().to_owned(),
                secret_access_key: Secret::new(creds.secret_access_key().to_owned()),
                session_token: Secret::new(creds.session_token().to_owned()),
                expiration,
                last_updated: now,
                assumed_role_arn,
                account_id,
                rendered: Default::default(),
            },
            expiration,
        ))
    }

    /// What went wrong, and what to check (never the token: only its claims).
    fn classify(&self, err: &StsError, claims: &Claims) -> ExchangeError {
        let role = &self.role;
        if keyless_provider::upstream::is_too_large(err) {
            return keyless_provider::upstream::too_large(&format!("STS at {}", self.endpoint));
        }
        match err {
            SdkError::ServiceError(service) => {
                let status = service.raw().status().as_u16();
                // Both from STS's answer, which echoes the token's claims: escaped and capped.
                let code = upstream(err.code().unwrap_or("Unknown")).into_owned();
                let text = upstream(err.message().unwrap_or("no message"));
                let message =
                    format!("STS AssumeRoleWithWebIdentity for {role} failed with HTTP {status} {code}: {text}");
                let e = match code.as_str() {
                    // The account has no provider for the token's issuer: another token from the
                    // same issuer cannot change that.
                    "InvalidIdentityToken" if text.contains("No OpenIDConnect provider found") => {
                        ExchangeError::terminal(message).with_untrusted_issuer()
                    }
                    "InvalidIdentityToken" | "ExpiredTokenException" | "ExpiredToken" => {
                        ExchangeError::reread_token(message)
                    }
                    "IDPCommunicationError" => ExchangeError::retryable(message),
                    _ if is_transient_status(status) => ExchangeError::retryable(message),
                    _ => ExchangeError::terminal(message),
                };
                let e = e.with_code(code.clone());
                let e = match self.hint(&code, status, claims) {
                    Some(hint) => e.with_hint(hint),
                    None => e,
                };
                // STS throttles with HTTP 400 `Throttling` (docs/protocols.md 9).
                let retry_after = service.raw().headers().get("retry-after");
                throttling(e, THROTTLING_CODES, status, retry_after, self.clock.now())
            }
            SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) => transport_error(
                &format!("STS at {} (AssumeRoleWithWebIdentity for {role})", self.endpoint),
                "aws.ca_file",
                err,
            ),
            SdkError::ResponseError(_) => ExchangeError::retryable(format!(
                "STS at {} sent a response keyless could not read: {}",
                self.endpoint,
                upstream(&DisplayErrorContext(err).to_string())
            ))
            .with_code("ResponseError")
            .with_hint("is aws.sts_endpoint an STS endpoint (not a proxy's error page)?"),
            _ => ExchangeError::terminal(format!(
                "could not build the AssumeRoleWithWebIdentity request for {role}: {}",
                DisplayErrorContext(err)
            ))
            .with_code("ConstructionFailure"),
        }
    }

    /// The config key of this role's `what`: `aws.policy`, or `aws.roles[NAME].policy` for a named
    /// role (whose policies are its own, and whose other keys override the default role's).
    fn key(&self, what: &str) -> String {
        match &self.name {
            Some(name) => format!("aws.roles[{name}].{what}"),
            None => format!("aws.{what}"),
        }
    }

    fn hint(&self, code: &str, status: u16, claims: &Claims) -> Option<String> {
        let role = &self.role;
        let issuer = claims
            .iss
            .as_deref()
            .map(|i| i.trim_start_matches("https://").trim_end_matches('/'))
            .unwrap_or("<no iss claim>");
        let sub = claims.sub.as_deref().unwrap_or("<no sub claim>");
        let aud = if claims.aud.is_empty() { "<no aud claim>".to_owned() } else { claims.aud.join(",") };
        // The cloud side is only ever told to trust AUDIENCE: another audience of the token is
        // one minted for someone else (another cloud's), never one to make AWS accept.
        let project = if claims.aud.iter().any(|a| a == AUDIENCE) {
            String::new()
        } else {
            format!("project the token with audience {AUDIENCE} (serviceAccountToken.audience), not {aud}; then ")
        };
        let trust = format!(
            "{project}check the trust policy of {role}: Principal.Federated arn:{}:iam::{}:oidc-provider/{issuer}, \
             Action sts:AssumeRoleWithWebIdentity, Condition StringEquals \"{issuer}:sub\": \"{sub}\" and \
             \"{issuer}:aud\": \"{AUDIENCE}\"; and that the OIDC provider {issuer} is registered in IAM with client id \
             (audience) {AUDIENCE}",
            role.partition(),
            role.account(),
        );
        Some(match code {
            "AccessDenied" | "IDPRejectedClaim" => {
                format!("the token claims sub={sub} aud={aud} iss={issuer}: {trust}")
            }
            "InvalidIdentityToken" => format!(
                "STS could not validate the token ({claims}): {project}check that IAM has an OIDC provider for \
                 {issuer} whose audiences include {AUDIENCE}, that {issuer}/.well-known/openid-configuration and its \
                 JWKS are reachable from AWS, and that aws.token_file is the projected token (keyless re-reads it and \
                 retries)"
            ),
            "ExpiredTokenException" | "ExpiredToken" => {
                format!("the token has expired ({claims}): {}", self.stale_hint)
            }
            "IDPCommunicationError" => format!(
                "AWS could not reach the issuer {issuer} to fetch its signing keys; it is retried. If it persists, \
                 check that the issuer's discovery document and JWKS are publicly reachable"
            ),
            "MalformedPolicyDocument" => {
                format!("STS rejected {}: fix the session policy document (or remove it)", self.key("policy"))
            }
            "PackedPolicyTooLarge" => format!(
                "{} and {} together are too large: shorten the policy or list fewer ARNs",
                self.key("policy"),
                self.key("policy_arns")
            ),
            "RegionDisabledException" => format!(
                "STS is not activated in {} for account {}: activate the region in the IAM account settings, or set \
                 aws.region to an active region",
                self.region,
                role.account()
            ),
            "ValidationError" | "InvalidParameterValue" | "InvalidParameterCombination" => format!(
                "STS rejected a request parameter: check {}, {} and {} ({}), which must not exceed the role's \
                 maximum session duration",
                self.key("role_arn"),
                self.key("session_name"),
                self.key("duration"),
                humantime::format_duration(self.duration)
            ),
            _ if is_transient_status(status) => {
                "STS is failing; keyless retries with backoff and keeps serving the current credential".to_owned()
            }
            _ => return None,
        })
    }
}

impl Exchange for StsExchange {
    type Key = ();
    type Credential = AwsCredentials;

    fn provider(&self) -> &'static str {
        crate::Aws::NAME
    }

    /// The role ARN; a named role's is prefixed with its name, so `/readyz`, metrics and `check`
    /// tell apart two names for one ARN.
    fn identity(&self, _key: &()) -> String {
        match &self.name {
            Some(name) => format!("{name} ({})", self.role),
            None => self.role.to_string(),
        }
    }

    async fn exchange(&self, _key: &(), token: &SubjectToken) -> Result<Issued<AwsCredentials>, ExchangeError> {
        match self.call(token).await {
            Ok(out) => {
                let request_id = out.request_id().map(str::to_owned);
                self.credentials(&out)
                    .map(|c| Issued::new(c).with_request_id(request_id.clone()))
                    .map_err(|e| e.with_request_id(request_id))
            }
            Err(err) => {
                let request_id = err.request_id().map(str::to_owned);
                Err(self.classify(&err, token.claims()).with_request_id(request_id))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::roles::RoleConfig;
    use crate::settings::Host;

    #[test]
    fn a_named_roles_hints_name_its_own_keys() {
        let mut config = Config::new("/t", "arn:aws:iam::123456789012:role/app");
        config.roles = vec![RoleConfig::new("writer", "arn:aws:iam::123456789012:role/writer")];
        let settings = Settings::resolve(&config, &Host { env: &|_| None, hostname_file: None }).expect("valid");
        let ctx = keyless_test_support::context::context(keyless_core::CachePolicy::default());
        let default = StsExchange::new(&settings, &ctx).expect("a client");
        let named = default.for_role(&settings.roles[0]);
        let hint = |exchange: &StsExchange, code| exchange.hint(code, 400, &Claims::default()).expect("a hint");
        assert!(hint(&default, "MalformedPolicyDocument").contains("STS rejected aws.policy:"));
        assert!(hint(&named, "MalformedPolicyDocument").contains("STS rejected aws.roles[writer].policy:"));
        let packed = hint(&named, "PackedPolicyTooLarge");
        assert!(packed.starts_with("aws.roles[writer].policy and aws.roles[writer].policy_arns"), "{packed}");
        let invalid = hint(&named, "ValidationError");
        assert!(invalid.contains("check aws.roles[writer].role_arn, aws.roles[writer].session_name"), "{invalid}");
        assert_eq!(named.identity(&()), "writer (arn:aws:iam::123456789012:role/writer)");
    }

    /// A token minted for another cloud (Azure's audience): the hints tell to project
    /// sts.amazonaws.com and name only it on the IAM side, never the token's audience.
    #[test]
    fn a_foreign_audience_is_never_proposed_for_iam() {
        let config = Config::new("/t", "arn:aws:iam::123456789012:role/app");
        let settings = Settings::resolve(&config, &Host { env: &|_| None, hostname_file: None }).expect("valid");
        let ctx = keyless_test_support::context::context(keyless_core::CachePolicy::default());
        let exchange = StsExchange::new(&settings, &ctx).expect("a client");
        let claims = |aud: &str| Claims {
            iss: Some("https://issuer.example".to_owned()),
            sub: Some("system:serviceaccount:ns:app".to_owned()),
            aud: vec![aud.to_owned()],
            ..Claims::default()
        };
        let foreign = claims("api://AzureADTokenExchange");
        for code in ["InvalidIdentityToken", "AccessDenied"] {
            let hint = exchange.hint(code, 400, &foreign).expect("a hint");
            assert!(hint.contains("project the token with audience sts.amazonaws.com"), "{code}: {hint}");
            for widening in ["include api://", "(audience) api://", ":aud\": \"api://"] {
                assert!(!hint.contains(widening), "{code} proposes {widening}: {hint}");
            }
        }
        let own = exchange.hint("AccessDenied", 403, &claims(AUDIENCE)).expect("a hint");
        assert!(!own.contains("project the token"), "the token has the expected audience: {own}");
    }
}
