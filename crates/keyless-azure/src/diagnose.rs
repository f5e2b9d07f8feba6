//! What `keyless check` needs to know about Azure: which audience the token must carry, one
//! exchange per (client id, pre-warmed resource) without serving, and the federated identity
//! credential each app needs, written out for the token found.

use std::path::Path;

use keyless_core::{Claims, Context, Exchange as _, SubjectToken};

use crate::config::{Config, ConfigError, Settings};
use crate::entra::{EntraExchange, TokenKey};

pub use keyless_core::Attempt;

/// The `[azure]` section as `keyless check` examines it: validated exactly as `keyless serve`
/// validates it, without starting anything.
#[derive(Debug)]
pub struct Diagnosis {
    settings: Settings,
    exchange: EntraExchange,
}

impl Diagnosis {
    pub fn new(config: &Config, ctx: &Context) -> Result<Self, ConfigError> {
        let settings = config.clone().validate()?;
        let pinned = settings.clients.len() * settings.prewarm.len();
        if pinned >= ctx.cache_policy.max_entries {
            return Err(ConfigError::Invalid {
                key: "azure.resources".to_owned(),
                reason: format!(
                    "{pinned} pre-warmed tokens do not fit a cache of {} entries with room for requested resources: \
                     list fewer resources or raise cache.max_entries",
                    ctx.cache_policy.max_entries
                ),
            });
        }
        let http = crate::http_client(&settings, &ctx.cache_policy)?;
        let exchange = EntraExchange::new(http, &settings.authority, settings.tenant.clone(), ctx.clock.clone())
            .map_err(|e| ConfigError::Invalid {
                key: "azure.tenant_id".to_owned(),
                reason: format!("does not make a token URL with azure.authority_host: {e}"),
            })?;
        Ok(Self { settings, exchange })
    }

    /// The identity, as the report's heading names it.
    pub fn identity(&self) -> String {
        let clients: Vec<&str> = self.settings.clients.iter().map(|c| c.as_str()).collect();
        format!("client id {} in tenant {}", clients.join(", "), self.settings.tenant)
    }

    pub fn token_file(&self) -> &Path {
        &self.settings.token_file
    }

    /// The audience Entra ID recommends for federated credentials in the authority's cloud.
    pub fn expected_audience(&self) -> &str {
        match self.settings.authority.host_str() {
            Some(h) if h.ends_with(".microsoftonline.us") => "api://AzureADTokenExchangeUSGov",
            Some(h) if h.ends_with(".chinacloudapi.cn") => "api://AzureADTokenExchangeChina",
            _ => "api://AzureADTokenExchange",
        }
    }

    /// Where the expected audience comes from on the cloud side.
    pub fn audience_source(&self) -> &'static str {
        "the audience Entra ID recommends for federated identity credentials, as the Azure workload identity \
         webhook projects it"
    }

    pub fn accepts_audience(&self, aud: &[String]) -> bool {
        aud.iter().any(|a| a == self.expected_audience())
    }

    /// What to change when the token's audience is not the expected one.
    pub fn audience_fix(&self, _claims: &Claims) -> String {
        let expected = self.expected_audience();
        format!(
            "project the token for Azure with audience {expected} (serviceAccountToken.audience in the pod's \
             projected volume), or set the federated identity credential's audience to the token's audience"
        )
    }

    /// One token request per client id and pre-warmed resource: what `serve` needs for readiness.
    pub async fn exchange_once(&self, token: &SubjectToken) -> Vec<Attempt> {
        let mut attempts = Vec::new();
        for client_id in &self.settings.clients {
            for scope in &self.settings.prewarm {
                let key = TokenKey { client_id: client_id.clone(), scope: scope.clone() };
                let result = match self.exchange.exchange(&key, token).await {
                    Ok(issued) => Ok(issued.credential.expires_at),
                    Err(e) if e.hint.is_none() && e.code.as_deref() == Some("EntraUnreachable") => {
                        Err(e.with_hint(format!(
                            "check that azure.authority_host ({}) is reachable from this pod (DNS, egress \
                             NetworkPolicy, HTTPS_PROXY/NO_PROXY) and is an Entra ID host",
                            self.settings.authority.as_str().trim_end_matches('/')
                        )))
                    }
                    Err(e) => Err(e),
                };
                let what = format!("access token for client {client_id}, resource {}", scope.resource());
                attempts.push(Attempt { what, result });
            }
        }
        attempts
    }

    /// The federated identity credential every configured app needs for a token with `claims`
    /// (placeholders without claims), accepted with audience `audience`.
    pub fn binding(&self, claims: Option<&Claims>, audience: &str) -> Vec<String> {
        let iss = claims.and_then(|c| c.iss.clone()).unwrap_or_else(|| "ISSUER_URL".to_owned());
        let sub = claims
            .and_then(|c| c.sub.clone())
            .unwrap_or_else(|| "system:serviceaccount:NAMESPACE:SERVICEACCOUNT".to_owned());
        let mut lines = Vec::new();
        for client_id in &self.settings.clients {
            // Written by hand to keep the order of the portal's form; values are JSON-quoted.
            let q = |s: &str| serde_json::Value::from(s).to_string();
            let parameters = format!(
                r#"{{"name":"keyless","issuer":{},"subject":{},"audiences":[{}]}}"#,
                q(&iss),
                q(&sub),
                q(audience)
            );
            lines.push(format!(
                "a federated identity credential on app {client_id} (tenant {}): issuer {iss}, subject {sub}, \
                 audience {audience}:",
                self.settings.tenant
            ));
            lines.push(format!("  az ad app federated-credential create --id {client_id} --parameters '{parameters}'"));
        }
        lines.push(format!(
            "(for a user-assigned managed identity: az identity federated-credential create --name keyless \
             --identity-name NAME --resource-group RG --issuer {iss} --subject {sub} --audiences {audience})"
        ));
        lines
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use keyless_core::clock::SystemClock;
    use keyless_core::{CachePolicy, Metrics, WatchOptions};

    use super::*;

    fn diagnosis(authority: &str) -> Diagnosis {
        let ctx = Context::new(Arc::new(SystemClock), Metrics::new(), CachePolicy::default(), WatchOptions::default());
        let config: Config = toml::from_str(&format!(
            "token_file = \"/t\"\ntenant_id = \"tenant-1\"\nclient_id = \"client-1\"\n\
             additional_client_ids = [\"client-2\"]\nauthority_host = \"{authority}\""
        ))
        .expect("valid section");
        Diagnosis::new(&config, &ctx).expect("valid section")
    }

    #[test]
    fn each_cloud_expects_its_own_token_exchange_audience() {
        assert_eq!(diagnosis("https://login.microsoftonline.com").expected_audience(), "api://AzureADTokenExchange");
        assert_eq!(
            diagnosis("https://login.microsoftonline.us").expected_audience(),
            "api://AzureADTokenExchangeUSGov"
        );
        assert_eq!(diagnosis("https://login.chinacloudapi.cn").expected_audience(), "api://AzureADTokenExchangeChina");
    }

    #[test]
    fn every_client_id_gets_its_federated_credential() {
        let claims = Claims {
            iss: Some("https://issuer.example/".to_owned()),
            sub: Some("system:serviceaccount:ns:app".to_owned()),
            ..Claims::default()
        };
        let d = diagnosis("https://login.microsoftonline.com");
        let lines = d.binding(Some(&claims), d.expected_audience()).join("\n");
        for client in ["client-1", "client-2"] {
            assert!(
                lines.contains(&format!(
                    "--id {client} --parameters '{{\"name\":\"keyless\",\"issuer\":\"https://issuer.example/\",\
                     \"subject\":\"system:serviceaccount:ns:app\",\"audiences\":[\"api://AzureADTokenExchange\"]}}'"
                )),
                "{lines}"
            );
        }
    }
}
