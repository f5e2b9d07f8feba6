//! What `keyless check` needs to know about AWS: which audience the token must carry, one
//! exchange without serving, and the IAM side of the federation (OIDC provider and the role's
//! trust policy) written out for the token actually found.

use std::path::Path;

use keyless_core::{Claims, Context, Exchange as _, SubjectToken};

use crate::config::Config;
use crate::container::ContainerAuth;
use crate::error::ConfigError;
use crate::settings::{Host, Settings};
use crate::sts::StsExchange;

/// The audience IRSA projects and registers as the OIDC provider's client id.
const AUDIENCE: &str = "sts.amazonaws.com";

pub use keyless_core::Attempt;

/// The `[aws]` section as `keyless check` examines it: validated exactly as `keyless serve`
/// validates it, without creating files or starting anything.
#[derive(Debug)]
pub struct Diagnosis {
    settings: Settings,
    exchange: StsExchange,
}

impl Diagnosis {
    pub fn new(config: &Config, ctx: &Context) -> Result<Self, ConfigError> {
        let settings = Settings::resolve(config, &Host::process())?;
        let exchange = StsExchange::new(&settings, ctx.clock.clone())?;
        if let Some(container) = &settings.container {
            // `serve` creates a missing authorization token file; `check` only validates.
            let file = container.token_file.clone().filter(|f| f.exists());
            ContainerAuth::resolve(container.token.clone(), file)?;
        }
        Ok(Self { settings, exchange })
    }

    /// The identity, as the report's heading names it.
    pub fn identity(&self) -> String {
        format!("role {} (region {})", self.settings.role, self.settings.region)
    }

    pub fn token_file(&self) -> &Path {
        &self.settings.token_file
    }

    pub fn expected_audience(&self) -> &str {
        AUDIENCE
    }

    /// Where the expected audience comes from on the cloud side.
    pub fn audience_source(&self) -> &'static str {
        "the client id registered on IAM's OIDC provider for the issuer, by convention (EKS IRSA)"
    }

    pub fn accepts_audience(&self, aud: &[String]) -> bool {
        aud.iter().any(|a| a == AUDIENCE)
    }

    /// What to change when the token's audience is not the expected one.
    pub fn audience_fix(&self, claims: &Claims) -> String {
        let issuer = issuer_host(claims);
        format!(
            "project the token for AWS with audience {AUDIENCE} (serviceAccountToken.audience: {AUDIENCE} in the \
             pod's projected volume), or add the token's audience to the client ids of the IAM OIDC provider \
             {issuer} (aws iam add-client-id-to-open-id-connect-provider)"
        )
    }

    /// One `AssumeRoleWithWebIdentity` with `token`.
    pub async fn exchange_once(&self, token: &SubjectToken) -> Vec<Attempt> {
        let result = self.exchange.exchange(&(), token).await.map(|issued| issued.credential.expires_at);
        let what = format!("AssumeRoleWithWebIdentity for {}", self.settings.role);
        vec![Attempt { what, result }]
    }

    /// The IAM objects that must exist for a token with `claims` (placeholders without claims),
    /// accepted with audience `audience`.
    pub fn binding(&self, claims: Option<&Claims>, audience: &str) -> Vec<String> {
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
