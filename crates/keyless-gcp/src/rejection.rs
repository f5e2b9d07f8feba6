//! Turning STS and IAM Credentials failures into classified errors with a hint that says what to
//! change. Hints are built from claims, config and Google's error codes, never from a token.

use std::time::SystemTime;

use keyless_core::{Claims, ExchangeError};
use reqwest::StatusCode;
use serde::Deserialize;

use crate::identity::PoolProvider;

/// What a hint may mention about the failed exchange.
#[derive(Debug)]
pub(crate) struct Attempt<'a> {
    pub(crate) provider: &'a PoolProvider,
    pub(crate) claims: &'a Claims,
    pub(crate) now: SystemTime,
    pub(crate) service_account: Option<&'a str>,
    pub(crate) delegates: &'a [String],
    /// What to check for a stale token, for the source ([`keyless_core::SourceSpec::stale_token_hint`]).
    pub(crate) stale_hint: &'a str,
}

impl Attempt<'_> {
    fn sub(&self) -> &str {
        self.claims.sub.as_deref().unwrap_or("SUBJECT")
    }

    fn token_expired(&self) -> bool {
        self.claims.exp.is_some_and(|exp| exp <= self.now)
    }
}

/// An upstream error description or code as it may be printed: Google STS echoes the token's
/// claims in its descriptions, so they are escaped and capped as claims are.
fn clip(text: &str) -> String {
    keyless_core::printable::upstream(text).into_owned()
}

fn transient(status: StatusCode) -> bool {
    keyless_provider::upstream::is_transient_status(status.as_u16())
}

#[derive(Deserialize, Default)]
struct OAuthError {
    error: Option<String>,
    error_description: Option<String>,
}

/// The error code Google's APIs mean "too many requests" by (STS and IAM Credentials over quota:
/// 429 `RESOURCE_EXHAUSTED`, docs/protocols.md 9), the code [`sts`] and [`iam`] give then.
pub(crate) const THROTTLING_CODES: &[&str] = &["RESOURCE_EXHAUSTED"];

/// A non-2xx answer of STS `/v1/token` (`{"error","error_description"}`, docs/protocols.md 3.1).
/// Over quota, STS answers in Google's API error shape instead (`{"error":{"status":
/// "RESOURCE_EXHAUSTED"}}`, docs/protocols.md 9): its `status` is the code then.
pub(crate) fn sts(status: StatusCode, body: &[u8], attempt: &Attempt<'_>) -> ExchangeError {
    let parsed: OAuthError = serde_json::from_slice(body).unwrap_or_else(|_| google_error(body));
    let code = parsed.error.map_or_else(|| status.as_u16().to_string(), |c| clip(&c));
    let description = clip(parsed.error_description.as_deref().unwrap_or(""));
    let message = format!("STS token exchange failed with {status} {code}: {description}");
    let provider = attempt.provider;
    let err = if transient(status) {
        ExchangeError::retryable(message)
    } else {
        match code.as_str() {
            "invalid_grant" => {
                let lower = description.to_ascii_lowercase();
                let stale = attempt.token_expired()
                    || ["expired", "stale", "too old", "not yet valid"].iter().any(|w| lower.contains(w));
                let hint = if stale {
                    format!(
                        "the subject token ({}) is expired or not yet valid: keyless re-reads it and retries; {}",
                        attempt.claims, attempt.stale_hint
                    )
                } else {
                    format!(
                        "STS rejected the subject token for provider {aud}: the token has {claims}; the provider accepts \
                         only tokens whose aud is one of its allowed audiences (by default {aud} itself), whose iss is \
                         its issuer URI, and that pass its attribute condition: project the token with audience \
                         {aud:?} and compare the issuer and \
                         attribute condition with these claims (gcloud iam workload-identity-pools providers describe \
                         {prov} --workload-identity-pool={pool} --location=global --project={num})",
                        aud = provider.audience(),
                        claims = attempt.claims,
                        prov = provider.provider(),
                        pool = provider.pool(),
                        num = provider.project_number(),
                    )
                };
                let err = if stale { ExchangeError::reread_token(message) } else { ExchangeError::terminal(message) };
                // "The issuer in ID Token ... does not match the expected ISSUER": no pool
                // provider of the audience trusts the token's issuer.
                let untrusted_issuer = lower.contains("issuer") && lower.contains("not match");
                let err = if untrusted_issuer { err.with_untrusted_issuer() } else { err };
                err.with_hint(hint)
            }
            "invalid_target" => ExchangeError::terminal(message).with_hint(format!(
                "the audience {aud} names no usable workload identity pool provider: check project number {num}, \
                 pool {pool} and provider {prov} exist and are enabled (gcloud iam workload-identity-pools providers \
                 list --workload-identity-pool={pool} --location=global --project={num}) and set gcp.audience to its \
                 full name",
                aud = provider.audience(),
                num = provider.project_number(),
                pool = provider.pool(),
                prov = provider.provider(),
            )),
            _ => ExchangeError::terminal(message),
        }
    };
    err.with_code(code)
}

#[derive(Deserialize, Default)]
struct GoogleError {
    error: Option<GoogleErrorBody>,
}

#[derive(Deserialize)]
struct GoogleErrorBody {
    message: Option<String>,
    status: Option<String>,
}

/// A Google API error body read as an OAuth one: its `status` as the error, its `message` as
/// the description.
fn google_error(body: &[u8]) -> OAuthError {
    let parsed: GoogleError = serde_json::from_slice(body).unwrap_or_default();
    let (error, error_description) = parsed.error.map(|e| (e.status, e.message)).unwrap_or_default();
    OAuthError { error, error_description }
}

/// Which IAM Credentials method failed.
#[derive(Debug, Clone, Copy)]
pub(crate) enum IamCall {
    AccessToken,
    IdToken,
}

impl IamCall {
    /// The method's name in IAM Credentials' URL (`...:generateAccessToken`) and in errors.
    pub(crate) fn method(self) -> &'static str {
        match self {
            Self::AccessToken => "generateAccessToken",
            Self::IdToken => "generateIdToken",
        }
    }
}

/// A non-2xx answer of IAM Credentials (`{"error":{"code","message","status"}}`).
pub(crate) fn iam(call: IamCall, status: StatusCode, body: &[u8], attempt: &Attempt<'_>) -> ExchangeError {
    let parsed: GoogleError = serde_json::from_slice(body).unwrap_or_default();
    let (google_status, description) = parsed.error.map(|e| (e.status, e.message)).unwrap_or_default();
    let code = google_status.map_or_else(|| status.as_u16().to_string(), |c| clip(&c));
    let account = attempt.service_account.unwrap_or("the service account");
    let message = format!(
        "IAM Credentials {} for {account} failed with {status} {code}: {}",
        call.method(),
        clip(description.as_deref().unwrap_or(""))
    );
    let err = if transient(status) {
        ExchangeError::retryable(message)
    } else if status == StatusCode::UNAUTHORIZED {
        // The federated token STS issued a moment ago was refused: a new exchange fixes it.
        ExchangeError::retryable(message)
    } else if status == StatusCode::FORBIDDEN {
        ExchangeError::terminal(message).with_hint(permission_hint(attempt, account))
    } else if status == StatusCode::NOT_FOUND {
        ExchangeError::terminal(message)
            .with_hint(format!("service account {account} does not exist (or was deleted): check gcp.service_account"))
    } else {
        let mut err = ExchangeError::terminal(message);
        if matches!(call, IamCall::AccessToken) && code == "INVALID_ARGUMENT" {
            err = err.with_hint(
                "check gcp.scopes and gcp.token_lifetime: a lifetime over 1h needs the org policy \
                 constraints/iam.allowServiceAccountCredentialLifetimeExtension for this service account",
            );
        }
        err
    };
    err.with_code(code)
}

fn permission_hint(attempt: &Attempt<'_>, account: &str) -> String {
    let member = attempt.provider.principal(attempt.sub());
    let mut hint = format!(
        "the federated identity {member} needs roles/iam.workloadIdentityUser on service account {account}: \
         gcloud iam service-accounts add-iam-policy-binding {account} --role=roles/iam.workloadIdentityUser \
         --member=\"{member}\" (the member assumes the attribute mapping google.subject=assertion.sub)"
    );
    if !attempt.delegates.is_empty() {
        hint.push_str(&format!(
            "; with delegates, the member needs roles/iam.serviceAccountTokenCreator on the first of {}, and each \
             delegate on the next account of the chain",
            attempt.delegates.join(", ")
        ));
    }
    hint
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyless_core::ErrorClass;
    use std::time::Duration;

    fn provider() -> PoolProvider {
        PoolProvider::parse(
            "gcp.audience",
            "//iam.googleapis.com/projects/42/locations/global/workloadIdentityPools/pool/providers/k8s",
        )
        .expect("valid audience")
    }

    fn claims(exp_in: i64, now: SystemTime) -> Claims {
        Claims {
            iss: Some("https://issuer".to_owned()),
            sub: Some("system:serviceaccount:ns:app".to_owned()),
            aud: vec!["wrong-audience".to_owned()],
            exp: Some(if exp_in >= 0 {
                now + Duration::from_secs(exp_in.unsigned_abs())
            } else {
                now - Duration::from_secs(exp_in.unsigned_abs())
            }),
            iat: None,
        }
    }

    fn attempt<'a>(provider: &'a PoolProvider, claims: &'a Claims, now: SystemTime) -> Attempt<'a> {
        Attempt {
            provider,
            claims,
            now,
            service_account: Some("app@p.iam.gserviceaccount.com"),
            delegates: &[],
            stale_hint: "the token file must be fresh",
        }
    }

    #[test]
    fn invalid_grant_for_a_wrong_audience_is_terminal_and_shows_the_claims() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let (p, c) = (provider(), claims(600, now));
        let body = br#"{"error":"invalid_grant","error_description":"The audience in ID Token [wrong-audience] does not match the expected audience."}"#;
        let err = sts(StatusCode::BAD_REQUEST, body, &attempt(&p, &c, now));
        assert_eq!(err.class, ErrorClass::Terminal);
        assert_eq!(err.code.as_deref(), Some("invalid_grant"));
        let hint = err.hint.expect("hint");
        assert!(hint.contains("aud=[wrong-audience]"), "{hint}");
        assert!(hint.contains("sub=system:serviceaccount:ns:app"), "{hint}");
        assert!(hint.contains(p.audience()), "{hint}");
        assert!(!err.untrusted_issuer, "the audience, not the issuer, was refused");
    }

    #[test]
    fn invalid_grant_for_a_foreign_issuer_marks_it_untrusted() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let (p, c) = (provider(), claims(600, now));
        let body = br#"{"error":"invalid_grant","error_description":"The issuer in ID Token https://evil.example.com does not match the expected ISSUER."}"#;
        let err = sts(StatusCode::BAD_REQUEST, body, &attempt(&p, &c, now));
        assert_eq!(err.class, ErrorClass::Terminal);
        assert!(err.untrusted_issuer, "{err:?}");
    }

    #[test]
    fn invalid_grant_for_an_expired_token_asks_for_a_reread() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let (p, c) = (provider(), claims(-5, now));
        let body = br#"{"error":"invalid_grant","error_description":"The token is invalid."}"#;
        let err = sts(StatusCode::BAD_REQUEST, body, &attempt(&p, &c, now));
        assert_eq!(err.class, ErrorClass::RereadToken);
        // What to check is the source's: a GitHub Actions job has no kubelet.
        let actions = keyless_core::SourceSpec::GithubActions {
            audience: "aud".to_owned(),
            endpoint: keyless_core::source::ActionsEndpoint::default(),
        };
        let hint = actions.stale_token_hint("gcp.token_file");
        let err = sts(StatusCode::BAD_REQUEST, body, &Attempt { stale_hint: &hint, ..attempt(&p, &c, now) });
        let shown = err.hint.expect("hint");
        assert!(shown.contains("GitHub Actions") && !shown.contains("kubelet"), "{shown}");
    }

    #[test]
    fn invalid_target_names_the_pool_and_provider() {
        let now = SystemTime::UNIX_EPOCH;
        let (p, c) = (provider(), claims(600, now));
        let body = br#"{"error":"invalid_target","error_description":"The target service indicated by the \"audience\" parameters is invalid."}"#;
        let err = sts(StatusCode::BAD_REQUEST, body, &attempt(&p, &c, now));
        assert_eq!(err.class, ErrorClass::Terminal);
        let hint = err.hint.expect("hint");
        assert!(hint.contains("pool pool") && hint.contains("provider k8s"), "{hint}");
    }

    #[test]
    fn server_errors_and_throttling_are_retryable() {
        let now = SystemTime::UNIX_EPOCH;
        let (p, c) = (provider(), claims(600, now));
        let a = attempt(&p, &c, now);
        for status in [StatusCode::SERVICE_UNAVAILABLE, StatusCode::TOO_MANY_REQUESTS] {
            assert_eq!(sts(status, b"not json", &a).class, ErrorClass::Retryable);
            assert_eq!(iam(IamCall::AccessToken, status, b"", &a).class, ErrorClass::Retryable);
        }
    }

    #[test]
    fn permission_denied_prints_the_exact_member_to_grant() {
        let now = SystemTime::UNIX_EPOCH;
        let (p, c) = (provider(), claims(600, now));
        let body = br#"{"error":{"code":403,"message":"Permission 'iam.serviceAccounts.getAccessToken' denied on resource (or it may not exist).","status":"PERMISSION_DENIED"}}"#;
        let err = iam(IamCall::AccessToken, StatusCode::FORBIDDEN, body, &attempt(&p, &c, now));
        assert_eq!(err.class, ErrorClass::Terminal);
        assert_eq!(err.code.as_deref(), Some("PERMISSION_DENIED"));
        let hint = err.hint.expect("hint");
        assert!(hint.contains(
            "--member=\"principal://iam.googleapis.com/projects/42/locations/global/workloadIdentityPools/pool/subject/system:serviceaccount:ns:app\""
        ), "{hint}");
        assert!(hint.contains("roles/iam.workloadIdentityUser"));
    }

    /// Google's API error shape over quota (docs/protocols.md 9; the body as Google APIs send it,
    /// e.g. github.com/google-gemini/gemini-cli/issues/1906), for STS and IAM Credentials alike.
    #[test]
    fn resource_exhausted_is_throttled_with_its_retry_after() {
        let now = SystemTime::UNIX_EPOCH;
        let (p, c) = (provider(), claims(600, now));
        let a = attempt(&p, &c, now);
        let body = br#"{"error":{"code":429,"message":"Quota exceeded for quota metric 'Token exchange requests' and limit 'Token exchange requests per minute' of service 'sts.googleapis.com' for consumer 'project_number:42'.","status":"RESOURCE_EXHAUSTED"}}"#;
        let throttled = |err| keyless_provider::upstream::throttling(err, THROTTLING_CODES, 429, Some("7"), now);
        for err in [
            sts(StatusCode::TOO_MANY_REQUESTS, body, &a),
            iam(IamCall::AccessToken, StatusCode::TOO_MANY_REQUESTS, body, &a),
        ] {
            let err = throttled(err);
            assert_eq!(err.class, ErrorClass::Throttled);
            assert_eq!(err.code.as_deref(), Some("RESOURCE_EXHAUSTED"));
            assert_eq!(err.retry_after, Some(Duration::from_secs(7)));
            assert!(err.message.contains("Quota exceeded"), "{}", err.message);
        }
    }
}
