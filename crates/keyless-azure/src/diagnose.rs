//! What `keyless check` needs to know about Azure: which audience the token must carry, one
//! exchange per (client id, pre-warmed resource) without serving, and the federated identity
//! credential each app needs, written out for the token found.

use keyless_core::{Attempt, Claims, Exchange as _, SourceSpec, SubjectToken};
use keyless_provider::{BoxFuture, Diagnosis};

use crate::config::Settings;
use crate::entra::{EntraExchange, TokenKey};

/// The heading of the identity in reports.
pub(crate) fn identity(settings: &Settings) -> String {
    let clients: Vec<&str> = settings.clients.iter().map(|c| c.as_str()).collect();
    format!("client id {} in tenant {}", clients.join(", "), settings.tenant)
}

/// The `[azure]` section as `keyless check` examines it: the settings `keyless serve` would run
/// with, without starting anything.
#[derive(Debug)]
pub(crate) struct AzureDiagnosis {
    settings: Settings,
    exchange: EntraExchange,
}

impl AzureDiagnosis {
    pub(crate) fn new(settings: Settings, exchange: EntraExchange) -> Self {
        Self { settings, exchange }
    }

    /// The audience Entra ID recommends for federated credentials in the authority's cloud.
    fn recommended_audience(&self) -> &'static str {
        crate::aadsts::federation_audience(self.settings.authority.as_str())
    }
}

impl Diagnosis for AzureDiagnosis {
    fn identity(&self) -> String {
        identity(&self.settings)
    }

    fn token_source(&self) -> SourceSpec {
        self.settings.token_source()
    }

    fn expected_audience(&self) -> &str {
        self.recommended_audience()
    }

    /// Where the expected audience comes from on the cloud side.
    fn audience_source(&self) -> &'static str {
        "the audience Entra ID recommends for federated identity credentials, as the Azure workload identity \
         webhook projects it"
    }

    fn accepts_audience(&self, aud: &[String]) -> bool {
        aud.iter().any(|a| a == self.expected_audience())
    }

    /// What to change when the token's audience is not the expected one.
    fn audience_fix(&self, _claims: &Claims) -> String {
        let expected = self.expected_audience();
        format!(
            "project the token for Azure with audience {expected} (serviceAccountToken.audience in the pod's \
             projected volume)"
        )
    }

    /// One token request per client id and pre-warmed resource: what `serve` needs for readiness.
    fn exchange_once<'a>(&'a self, token: &'a SubjectToken) -> BoxFuture<'a, Vec<Attempt>> {
        Box::pin(async move {
            let mut attempts = Vec::new();
            for client_id in &self.settings.clients {
                for scope in &self.settings.prewarm {
                    let key = TokenKey { client_id: client_id.clone(), scope: scope.clone() };
                    let result = self.exchange.exchange(&key, token).await.map(|issued| issued.credential.expires_at);
                    let what = format!("access token for client {client_id}, resource {}", scope.resource());
                    attempts.push(Attempt { what, result });
                }
            }
            attempts
        })
    }

    /// The federated identity credential every configured app needs for a token with `claims`
    /// (placeholders without claims), accepted with audience `audience`.
    fn binding(&self, claims: Option<&Claims>, audience: &str) -> Vec<String> {
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
    use keyless_core::{CachePolicy, Context, Metrics, WatchOptions};

    use super::*;
    use crate::config::Config;

    fn diagnosis(authority: &str) -> AzureDiagnosis {
        let ctx = Context::new(Arc::new(SystemClock), Metrics::new(), CachePolicy::default(), WatchOptions::default());
        let config: Config = toml::from_str(&format!(
            "token_file = \"/t\"\ntenant_id = \"tenant-1\"\nclient_id = \"client-1\"\n\
             additional_client_ids = [\"client-2\"]\nauthority_host = \"{authority}\""
        ))
        .expect("valid section");
        let settings = config.validate().expect("valid section");
        let exchange = crate::exchange(&settings, &ctx).expect("exchange");
        AzureDiagnosis::new(settings, exchange)
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
