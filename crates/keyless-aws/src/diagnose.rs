//! What `keyless check` needs to know about AWS: which audience the token must carry, one
//! exchange without serving, and the IAM side of the federation (OIDC provider and the role's
//! trust policy) written out for the token actually found.

use keyless_core::{Attempt, Claims, Context, Exchange as _, SourceSpec, SubjectToken};
use keyless_provider::{BoxFuture, Diagnosis};

use crate::container::ContainerAuth;
use crate::error::ConfigError;
use crate::settings::Settings;
use crate::sts::{AUDIENCE, StsExchange};

/// The `[aws]` section as `keyless check` examines it: the settings `keyless serve` would run
/// with, without creating files or starting anything.
#[derive(Debug)]
pub(crate) struct AwsDiagnosis {
    settings: Settings,
    exchange: StsExchange,
    /// The named roles' exchanges, tried after the default's.
    named: Vec<StsExchange>,
}

impl AwsDiagnosis {
    pub(crate) fn new(settings: Settings, ctx: &Context) -> Result<Self, ConfigError> {
        let exchange = StsExchange::new(&settings, ctx)?;
        if let Some(container) = &settings.container {
            // `serve` creates a missing authorization token file; `check` only validates.
            let file = container.token_file.clone().filter(|f| f.exists());
            ContainerAuth::resolve(container.token.clone(), file)?;
        }
        let named = settings.roles.iter().map(|r| exchange.for_role(r)).collect();
        Ok(Self { settings, exchange, named })
    }
}

impl Diagnosis for AwsDiagnosis {
    fn identity(&self) -> String {
        crate::identity_line(&self.settings)
    }

    fn token_source(&self) -> SourceSpec {
        self.settings.token_source()
    }

    fn expected_audience(&self) -> &str {
        AUDIENCE
    }

    fn audience_source(&self) -> &'static str {
        "the client id registered on IAM's OIDC provider for the issuer, by convention (EKS IRSA)"
    }

    fn accepts_audience(&self, aud: &[String]) -> bool {
        aud.iter().any(|a| a == AUDIENCE)
    }

    fn audience_fix(&self, _claims: &Claims) -> String {
        format!(
            "project the token for AWS with audience {AUDIENCE} (serviceAccountToken.audience: {AUDIENCE} in the \
             pod's projected volume)"
        )
    }

    /// One `AssumeRoleWithWebIdentity` with `token` per role: the default, then each named one.
    fn exchange_once<'a>(&'a self, token: &'a SubjectToken) -> BoxFuture<'a, Vec<Attempt>> {
        Box::pin(async move {
            let mut attempts = Vec::with_capacity(1 + self.named.len());
            for exchange in std::iter::once(&self.exchange).chain(&self.named) {
                let result = exchange.exchange(&(), token).await.map(|issued| issued.credential.expires_at);
                let what = format!("AssumeRoleWithWebIdentity for {}", exchange.identity(&()));
                attempts.push(Attempt { what, result });
            }
            attempts
        })
    }

    /// The IAM objects that must exist for a token with `claims` (placeholders without claims),
    /// accepted with audience `audience`.
    fn binding(&self, claims: Option<&Claims>, audience: &str) -> Vec<String> {
        let role = &self.settings.role;
        let issuer = claims.map_or_else(|| "ISSUER_HOST/PATH".to_owned(), issuer_host);
        let sub = claims
            .and_then(|c| c.sub.clone())
            .unwrap_or_else(|| "system:serviceaccount:NAMESPACE:SERVICEACCOUNT".to_owned());
        let provider_arn = format!("arn:{}:iam::{}:oidc-provider/{issuer}", role.partition(), role.account());
        // Written by hand to keep IAM's usual key order; values are JSON-quoted.
        let q = |s: &str| serde_json::Value::from(s).to_string();
        vec![
            format!("IAM OIDC provider {provider_arn} for issuer https://{issuer} with client id {audience}:"),
            format!("  aws iam create-open-id-connect-provider --url https://{issuer} --client-id-list {audience}"),
            format!("a statement in the trust policy of {role}:"),
            "  {".to_owned(),
            "    \"Effect\": \"Allow\",".to_owned(),
            format!("    \"Principal\": {{ \"Federated\": {} }},", q(&provider_arn)),
            "    \"Action\": \"sts:AssumeRoleWithWebIdentity\",".to_owned(),
            "    \"Condition\": { \"StringEquals\": {".to_owned(),
            format!("      {}: {},", q(&format!("{issuer}:sub")), q(&sub)),
            format!("      {}: {}", q(&format!("{issuer}:aud")), q(audience)),
            "    } }".to_owned(),
            "  }".to_owned(),
        ]
    }
}

/// The issuer as IAM names it: the URL without `https://` and without a trailing slash.
fn issuer_host(claims: &Claims) -> String {
    claims
        .iss
        .as_deref()
        .map(|i| i.trim_start_matches("https://").trim_end_matches('/').to_owned())
        .unwrap_or_else(|| "ISSUER_HOST/PATH".to_owned())
}
