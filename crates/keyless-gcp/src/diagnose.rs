//! What `keyless check` needs to know about Google Cloud: which audience the token must carry,
//! one exchange per configured token without serving, and the IAM side of the federation (pool
//! provider, principal, `roles/iam.workloadIdentityUser`) written out for the token found.

use keyless_core::{Attempt, Claims, Context, Exchange as _, SourceSpec, SubjectToken};
use keyless_provider::{BoxFuture, Diagnosis};

use crate::ConfigError;
use crate::config::Settings;
use crate::exchange::{GcpExchange, TokenKey};

/// The heading of the identity in reports.
pub(crate) fn identity(settings: &Settings) -> String {
    let provider = settings.provider.audience();
    let mut line = match &settings.service_account {
        Some(email) => format!("service account {email} through {provider}"),
        None => format!("the federated identity of {provider} (no service account)"),
    };
    for account in &settings.accounts {
        line.push_str(&format!("; service account {}", account.email));
    }
    line
}

/// One account's access token (its default scopes), then each of its ID-token audiences.
async fn account_attempts(s: &Settings, exchange: &GcpExchange, token: &SubjectToken) -> Vec<Attempt> {
    let mut attempts = Vec::new();
    let scopes = s.scopes.iter().collect::<Vec<_>>().join(" ");
    let what = match &s.service_account {
        Some(email) => {
            format!("access token for {email} (STS, then IAM generateAccessToken; scopes {scopes})")
        }
        None => format!("federated access token from STS (scopes {scopes})"),
    };
    let key = TokenKey::AccessToken(s.scopes.clone());
    let result = exchange.exchange(&key, token).await.map(|issued| issued.credential.expires_at);
    attempts.push(Attempt { what, result });
    for audience in &s.id_token_audiences {
        let key = TokenKey::IdToken { audience: audience.clone() };
        let result = exchange.exchange(&key, token).await.map(|issued| issued.credential.expires_at);
        attempts.push(Attempt { what: format!("ID token for audience {audience}"), result });
    }
    attempts
}

/// The `[gcp]` section (or `external_account` file) as `keyless check` examines it: the
/// settings `keyless serve` would run with, without starting anything.
#[derive(Debug)]
pub(crate) struct GcpDiagnosis {
    settings: Settings,
    exchange: GcpExchange,
    /// The extra service accounts' settings and exchanges, tried after the default's.
    extra: Vec<(Settings, GcpExchange)>,
}

impl GcpDiagnosis {
    pub(crate) fn new(settings: Settings, ctx: &Context) -> Result<Self, ConfigError> {
        let exchange = GcpExchange::new(&settings, ctx)?;
        let extra = exchange.for_accounts(&settings);
        Ok(Self { settings, exchange, extra })
    }
}

impl Diagnosis for GcpDiagnosis {
    fn identity(&self) -> String {
        identity(&self.settings)
    }

    fn token_source(&self) -> SourceSpec {
        self.settings.token_source()
    }

    fn expected_audience(&self) -> &str {
        self.settings.provider.audience()
    }

    fn audience_source(&self) -> &'static str {
        "the pool provider's default allowed audience, its own full name (gcp.audience)"
    }

    /// A provider without explicit allowed audiences accepts its full name, with or without an
    /// `https:` prefix.
    fn accepts_audience(&self, aud: &[String]) -> bool {
        let name = self.settings.provider.audience();
        aud.iter().any(|a| a == name || a.strip_prefix("https:") == Some(name))
    }

    fn audience_fix(&self, _claims: &Claims) -> String {
        let p = &self.settings.provider;
        format!(
            "project the token for Google Cloud with audience {aud} (serviceAccountToken.audience in the pod's \
             projected volume)",
            aud = p.audience(),
        )
    }

    /// Per account (the default, then each extra one): its access token, then each of its
    /// ID-token audiences, once each.
    fn exchange_once<'a>(&'a self, token: &'a SubjectToken) -> BoxFuture<'a, Vec<Attempt>> {
        Box::pin(async move {
            let mut attempts = account_attempts(&self.settings, &self.exchange, token).await;
            for (settings, exchange) in &self.extra {
                attempts.extend(account_attempts(settings, exchange, token).await);
            }
            attempts
        })
    }

    /// What Google Cloud IAM must hold for a token with `claims` (placeholders without claims),
    /// accepted with audience `audience`.
    fn binding(&self, claims: Option<&Claims>, audience: &str) -> Vec<String> {
        let s = &self.settings;
        let p = &s.provider;
        let iss = claims.and_then(|c| c.iss.clone()).unwrap_or_else(|| "ISSUER_URL".to_owned());
        let sub = claims
            .and_then(|c| c.sub.clone())
            .unwrap_or_else(|| "system:serviceaccount:NAMESPACE:SERVICEACCOUNT".to_owned());
        let member = p.principal(&sub);
        let allowed = if self.accepts_audience(&[audience.to_owned()]) {
            String::new()
        } else {
            format!(" --allowed-audiences={audience}")
        };
        let mut lines = vec![
            format!(
                "workload identity pool provider {prov} of pool {pool} (project {num}) trusting issuer {iss}, \
                 mapping google.subject=assertion.sub:",
                prov = p.provider(),
                pool = p.pool(),
                num = p.project_number(),
            ),
            format!(
                "  gcloud iam workload-identity-pools providers create-oidc {prov} --workload-identity-pool={pool} \
                 --location=global --project={num} --issuer-uri={iss} --attribute-mapping=google.subject=assertion.sub{allowed}",
                prov = p.provider(),
                pool = p.pool(),
                num = p.project_number(),
            ),
            format!("the token's principal: {member}"),
        ];
        match &s.service_account {
            Some(email) => {
                lines.push(format!("roles/iam.workloadIdentityUser on {email} for that principal:"));
                lines.push(format!(
                    "  gcloud iam service-accounts add-iam-policy-binding {email} \
                     --role=roles/iam.workloadIdentityUser --member=\"{member}\""
                ));
                if !s.delegates.is_empty() {
                    lines.push(format!(
                        "with delegates: roles/iam.serviceAccountTokenCreator for {email} on the first of {}, and for \
                         each delegate on the next account of the chain",
                        s.delegates.join(", ")
                    ));
                }
            }
            None => {
                let project = s.project_id.as_deref().unwrap_or("PROJECT_ID");
                lines.push("without gcp.service_account, grant the roles the app needs to that principal:".to_owned());
                lines.push(format!(
                    "  gcloud projects add-iam-policy-binding {project} --role=ROLE --member=\"{member}\""
                ));
            }
        }
        lines
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use keyless_core::clock::SystemClock;
    use keyless_core::{CachePolicy, Metrics, WatchOptions};

    use crate::config::Config;

    use super::*;

    const PROVIDER: &str = "//iam.googleapis.com/projects/42/locations/global/workloadIdentityPools/pool/providers/k8s";

    fn diagnosis(service_account: Option<&str>) -> GcpDiagnosis {
        let ctx = Context::new(Arc::new(SystemClock), Metrics::new(), CachePolicy::default(), WatchOptions::default());
        let config = Config {
            token_file: Some("/t".into()),
            audience: Some(PROVIDER.to_owned()),
            service_account: service_account.map(str::to_owned),
            project_id: Some("proj".to_owned()),
            ..Config::default()
        };
        GcpDiagnosis::new(config.resolve().expect("valid section"), &ctx).expect("valid section")
    }

    fn claims() -> Claims {
        Claims {
            iss: Some("https://issuer.example".to_owned()),
            sub: Some("system:serviceaccount:ns:app".to_owned()),
            ..Claims::default()
        }
    }

    #[test]
    fn the_provider_name_is_accepted_with_or_without_https() {
        let d = diagnosis(None);
        assert!(d.accepts_audience(&[PROVIDER.to_owned()]));
        assert!(d.accepts_audience(&[format!("https:{PROVIDER}")]));
        assert!(!d.accepts_audience(&["sts.amazonaws.com".to_owned()]));
    }

    #[test]
    fn without_a_service_account_the_principal_is_granted_roles_directly() {
        let lines = diagnosis(None).binding(Some(&claims()), PROVIDER).join("\n");
        let member = "principal://iam.googleapis.com/projects/42/locations/global/workloadIdentityPools/pool/subject/\
                      system:serviceaccount:ns:app";
        assert!(
            lines.contains(&format!("gcloud projects add-iam-policy-binding proj --role=ROLE --member=\"{member}\""))
        );
        assert!(!lines.contains("workloadIdentityUser"), "{lines}");
        assert!(lines.contains("--issuer-uri=https://issuer.example"), "{lines}");
    }

    #[test]
    fn a_custom_audience_is_listed_in_the_providers_allowed_audiences() {
        let lines = diagnosis(Some("app@proj.iam.gserviceaccount.com")).binding(Some(&claims()), "custom").join("\n");
        assert!(lines.contains("--allowed-audiences=custom"), "{lines}");
        assert!(lines.contains("--role=roles/iam.workloadIdentityUser"), "{lines}");
    }
}
