//! Entra ID error responses (`{"error","error_description","error_codes":[..],"trace_id",
//! "correlation_id"}`, docs/protocols.md 4.1) turned into classified errors with actionable hints.
//!
//! Hints are built from the subject token's *claims* and the configuration, never from the token.

use keyless_core::{Claims, ErrorClass, ExchangeError};
use serde::Deserialize;

use crate::identity::{ClientId, Scope, TenantId};

/// Longest part of Entra's `error_description` repeated in a message (its first line carries the
/// AADSTS text; the rest is trace ids and timestamps that the request id already covers).
const MAX_DESCRIPTION: usize = 400;

/// Text from Entra's answer as it may be printed: escaped and capped as claims are (Entra quotes
/// the token's claims back).
fn shown(text: &str) -> String {
    keyless_core::printable::upstream(text).into_owned()
}

/// The audience Entra ID recommends for federated identity credentials in `authority`'s cloud:
/// the only one a hint tells the cloud side to accept (another audience of the token is one
/// minted for someone else, another cloud's, never one to make Entra ID take).
pub(crate) fn federation_audience(authority: &str) -> &'static str {
    let url = url::Url::parse(authority).ok();
    match url.as_ref().and_then(|u| u.host_str()) {
        Some(h) if h.ends_with(".microsoftonline.us") => "api://AzureADTokenExchangeUSGov",
        Some(h) if h.ends_with(".chinacloudapi.cn") => "api://AzureADTokenExchangeChina",
        _ => "api://AzureADTokenExchange",
    }
}

/// What the failed request was about, for the hints.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Attempt<'a> {
    pub authority: &'a str,
    pub tenant: &'a TenantId,
    pub client_id: &'a ClientId,
    pub scope: &'a Scope,
    pub claims: &'a Claims,
    /// What to check for a stale token, for the source ([`keyless_core::SourceSpec::stale_token_hint`]).
    pub stale_hint: &'a str,
}

#[derive(Debug, Default, Deserialize)]
struct ErrorBody {
    error: Option<String>,
    error_description: Option<String>,
    #[serde(default)]
    error_codes: Vec<u64>,
    trace_id: Option<String>,
    correlation_id: Option<String>,
}

/// Classifies a non-success answer of the token endpoint.
pub(crate) fn classify(
    status: u16,
    body: &[u8],
    header_request_id: Option<String>,
    attempt: Attempt<'_>,
) -> ExchangeError {
    let parsed = serde_json::from_slice::<ErrorBody>(body).ok();
    let is_json = parsed.is_some();
    let body = parsed.unwrap_or_default();
    let code = body.error_codes.first().copied().or_else(|| body.error_description.as_deref().and_then(aadsts_code));
    // Escaped once, by `with_request_id`.
    let request_id = header_request_id.or_else(|| body.trace_id.clone());

    let mut message = format!(
        "Entra ID refused the token request of client {} for scope {} (HTTP {status}",
        attempt.client_id, attempt.scope
    );
    match (&body.error, is_json) {
        (Some(error), _) => message.push_str(&format!(", {}", shown(error))),
        (None, false) => message.push_str(", body is not Entra ID's JSON error"),
        (None, true) => {}
    }
    message.push(')');
    if let Some(description) = body.error_description.as_deref().map(first_line) {
        message.push_str(": ");
        message.push_str(&shown(description));
    }
    if let Some(correlation) = &body.correlation_id {
        message.push_str(&format!(" [correlation id {}]", shown(correlation)));
    }

    let transient = status == 408 || status == 429 || status >= 500;
    let err = match code.and_then(|c| known_code(c, attempt)) {
        // AADSTS700211: no federated identity credential of the app names the token's issuer.
        Some((class, hint)) if code == Some(700211) => {
            ExchangeError::new(class, message).with_hint(hint).with_untrusted_issuer()
        }
        Some((class, hint)) => ExchangeError::new(class, message).with_hint(hint),
        None if transient => ExchangeError::retryable(message),
        None => ExchangeError::terminal(message).with_hint(format!(
            "check azure.client_id ({}), azure.tenant_id ({}) and the app's federated identity \
             credential against the token's claims ({})",
            attempt.client_id, attempt.tenant, attempt.claims
        )),
    };
    let err = match code {
        Some(c) => err.with_code(format!("AADSTS{c}")),
        None => match body.error {
            Some(e) => err.with_code(shown(&e)),
            None => err,
        },
    };
    err.with_request_id(request_id)
}

/// The class and hint of an AADSTS code keyless knows how to explain.
fn known_code(code: u64, a: Attempt<'_>) -> Option<(ErrorClass, String)> {
    let client = a.client_id.to_string();
    let iss = a.claims.iss.clone().unwrap_or_else(|| "<no iss claim>".to_owned());
    let sub = a.claims.sub.clone().unwrap_or_else(|| "<no sub claim>".to_owned());
    let aud = if a.claims.aud.is_empty() { "<no aud claim>".to_owned() } else { a.claims.aud.join(",") };
    let expected = federation_audience(a.authority);
    let project = format!("project the token with audience {expected} (serviceAccountToken.audience)");
    let hint: String = match code {
        70021 => format!(
            "no federated identity credential on app {client} matches issuer {iss}, subject {sub}, \
             audience {aud}: {}create one with issuer {iss}, subject {sub} and audience {expected}, e.g. \
             `az ad app federated-credential create --id {client} --parameters '{{\"name\":\"keyless\",\
             \"issuer\":\"{iss}\",\"subject\":\"{sub}\",\"audiences\":[\"{expected}\"]}}'` (for a \
             user-assigned managed identity: `az identity federated-credential create --identity-name NAME \
             --resource-group RG --name keyless --issuer {iss} --subject {sub} --audiences {expected}`)",
            if a.claims.aud.iter().any(|x| x == expected) { String::new() } else { format!("{project}, and ") },
        ),
        700211 => format!(
            "no federated identity credential on app {client} has issuer {iss} (the token's iss claim): \
             the credential's issuer must equal the cluster's OIDC issuer URL exactly, trailing slash \
             included (AKS: `az aks show --query oidcIssuerProfile.issuerUrl`)"
        ),
        700212 => format!("no federated identity credential on app {client} accepts audience {aud}: {project}"),
        700213 => format!(
            "no federated identity credential on app {client} with issuer {iss} has subject {sub}: \
             create one for subject {sub} (system:serviceaccount:NAMESPACE:SERVICEACCOUNT of this pod)"
        ),
        700016 => format!(
            "no application with client id {client} exists in tenant {}: check azure.client_id (the \
             Application (client) ID of the app registration or managed identity) and azure.tenant_id",
            a.tenant
        ),
        90002 => format!(
            "tenant {} does not exist at {}: check azure.tenant_id, and azure.authority_host for \
             sovereign clouds (https://login.microsoftonline.us, https://login.chinacloudapi.cn)",
            a.tenant, a.authority
        ),
        70011 | 500011 => format!(
            "resource {} is not valid in tenant {}: ask for the resource's App ID URI (e.g. \
             https://management.azure.com/ or https://vault.azure.net); keyless appends /.default",
            a.scope.resource(),
            a.tenant
        ),
        700024 => format!(
            "the subject token was outside its validity window when Entra ID checked it ({}): keyless re-reads it \
             and retries; {}",
            a.claims, a.stale_hint
        ),
        90061 => format!(
            "Entra ID could not reach issuer {iss} to fetch its signing keys: its \
             /.well-known/openid-configuration and JWKS must be publicly reachable (keyless retries)"
        ),
        _ => return None,
    };
    let class = match code {
        700024 => ErrorClass::RereadToken,
        90061 => ErrorClass::Retryable,
        _ => ErrorClass::Terminal,
    };
    Some((class, hint))
}

/// `AADSTS70021: No matching...` -> 70021 (for bodies without `error_codes`).
fn aadsts_code(description: &str) -> Option<u64> {
    let rest = &description[description.find("AADSTS")? + "AADSTS".len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

fn first_line(description: &str) -> &str {
    let line = description.lines().next().unwrap_or_default().trim();
    match line.char_indices().nth(MAX_DESCRIPTION) {
        Some((cut, _)) => &line[..cut],
        None => line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixture {
        tenant: TenantId,
        client: ClientId,
        scope: Scope,
        claims: Claims,
        authority: &'static str,
    }

    impl Fixture {
        fn new() -> Self {
            Self {
                authority: "https://login.microsoftonline.com",
                tenant: TenantId::parse("tenant-1").expect("tenant"),
                client: ClientId::parse("client-1").expect("client"),
                scope: Scope::for_resource("https://management.azure.com/").expect("scope"),
                claims: Claims {
                    iss: Some("https://issuer.example".to_owned()),
                    sub: Some("system:serviceaccount:ns:sa".to_owned()),
                    aud: vec!["api://AzureADTokenExchange".to_owned()],
                    ..Claims::default()
                },
            }
        }

        fn classify(&self, status: u16, body: &str) -> ExchangeError {
            classify(
                status,
                body.as_bytes(),
                None,
                Attempt {
                    authority: self.authority,
                    tenant: &self.tenant,
                    client_id: &self.client,
                    scope: &self.scope,
                    claims: &self.claims,
                    stale_hint: "the token file must be fresh",
                },
            )
        }
    }

    fn entra(code: u64, error: &str) -> String {
        serde_json::json!({
            "error": error,
            "error_description": format!("AADSTS{code}: something.\r\nTrace ID: t\r\nCorrelation ID: c"),
            "error_codes": [code],
            "trace_id": "trace-1",
            "correlation_id": "corr-1",
        })
        .to_string()
    }

    #[test]
    fn no_matching_federated_credential_names_the_tokens_claims() {
        let err = Fixture::new().classify(400, &entra(70021, "invalid_request"));
        assert_eq!(err.class, ErrorClass::Terminal);
        assert_eq!(err.code.as_deref(), Some("AADSTS70021"));
        assert_eq!(err.request_id.as_deref(), Some("trace-1"));
        let hint = err.hint.expect("hint");
        assert!(hint.contains(
            "no federated identity credential on app client-1 matches issuer https://issuer.example, \
             subject system:serviceaccount:ns:sa, audience api://AzureADTokenExchange"
        ));
        assert!(err.message.contains("corr-1"));
        assert!(!err.message.contains("Trace ID"));
    }

    /// A token minted for another cloud (AWS's audience) under Azure: the hints name the audience
    /// Entra ID expects, in the authority's cloud, and never propose accepting the token's.
    #[test]
    fn a_foreign_audience_is_never_proposed_for_the_credential() {
        let mut f = Fixture::new();
        f.claims.aud = vec!["sts.amazonaws.com".to_owned()];
        f.authority = "https://login.microsoftonline.us";
        for code in [70021, 700212] {
            let hint = f.classify(400, &entra(code, "invalid_request")).hint.expect("hint");
            assert!(hint.contains("project the token with audience api://AzureADTokenExchangeUSGov"), "{code}: {hint}");
            for widening in ["[\"sts.amazonaws.com\"]", "--audiences sts.amazonaws.com", "add sts.amazonaws.com"] {
                assert!(!hint.contains(widening), "{code} proposes {widening}: {hint}");
            }
        }
        let matching = Fixture::new().classify(400, &entra(70021, "invalid_request")).hint.expect("hint");
        assert!(!matching.contains("project the token"), "the token has the expected audience: {matching}");
        assert!(matching.contains("\"audiences\":[\"api://AzureADTokenExchange\"]"), "{matching}");
    }

    #[test]
    fn stale_assertion_asks_for_a_reread_and_issuer_outage_is_retryable() {
        let f = Fixture::new();
        assert_eq!(f.classify(400, &entra(700024, "invalid_client")).class, ErrorClass::RereadToken);
        assert_eq!(f.classify(400, &entra(90061, "invalid_request")).class, ErrorClass::Retryable);
    }

    #[test]
    fn configuration_mistakes_are_terminal_with_their_own_hint() {
        let f = Fixture::new();
        for (code, needle) in [
            (700211, "has issuer https://issuer.example"),
            (700213, "has subject system:serviceaccount:ns:sa"),
            (70011, "resource https://management.azure.com/ is not valid"),
            (700016, "no application with client id client-1"),
            (90002, "tenant tenant-1 does not exist"),
        ] {
            let err = f.classify(400, &entra(code, "invalid_request"));
            assert_eq!(err.class, ErrorClass::Terminal, "{code}");
            assert!(err.hint.as_deref().unwrap_or_default().contains(needle), "{code}: {err}");
            // Only AADSTS700211 says no credential names the token's issuer.
            assert_eq!(err.untrusted_issuer, code == 700211, "{code}");
        }
    }

    #[test]
    fn server_errors_and_throttling_are_retryable_even_without_json() {
        let f = Fixture::new();
        for status in [500, 502, 503, 429, 408] {
            assert_eq!(f.classify(status, "<html>").class, ErrorClass::Retryable);
        }
        let err = f.classify(403, "<html>");
        assert_eq!(err.class, ErrorClass::Terminal);
        assert!(err.message.contains("not Entra ID's JSON"));
    }

    #[test]
    fn reads_the_code_from_the_description_when_error_codes_is_missing() {
        let body = r#"{"error":"invalid_client","error_description":"AADSTS700024: Client assertion is not within its valid time range."}"#;
        let err = Fixture::new().classify(401, body);
        assert_eq!(err.code.as_deref(), Some("AADSTS700024"));
        assert_eq!(err.class, ErrorClass::RereadToken);
    }

    /// Entra ID throttles with 429 and `Retry-After: 60`, the body perhaps plain text (docs/protocols.md
    /// 9, from learn.microsoft.com "Throttling and service limits", MSAL client-and-server throttling).
    #[test]
    fn a_429_with_a_plain_text_body_is_throttled_with_its_retry_after() {
        let f = Fixture::new();
        for body in [
            "Too Many Requests",
            r#"{"error":"temporarily_unavailable","error_description":"AADSTS50196: The server terminated an operation because it encountered a client request loop."}"#,
        ] {
            let err = keyless_provider::upstream::throttling(
                f.classify(429, body),
                <crate::Azure as keyless_provider::Provider>::THROTTLING_CODES,
                429,
                Some("60"),
                std::time::SystemTime::UNIX_EPOCH,
            );
            assert_eq!(err.class, ErrorClass::Throttled, "{body}");
            assert_eq!(err.retry_after, Some(std::time::Duration::from_secs(60)));
        }
    }
}
