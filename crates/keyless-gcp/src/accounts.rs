//! Service accounts beside the default one (`[[gcp.service_accounts]]`): each impersonated with
//! the same federated token, listed on the metadata server by e-mail as on a GCE VM with several
//! accounts, each with its own cache, scopes, lifetime and delegation chain.

use std::time::Duration;

use serde::Deserialize;

use crate::ConfigError;
use crate::config::{Settings, delegate_resource, validate_id_token_audience, validate_lifetime_of};
use crate::identity::{ScopeSet, validate_email};

/// One `[[gcp.service_accounts]]` entry. Unset keys take the section's values (scopes,
/// lifetime); the delegation chain and ID-token audiences are per account and default to none.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountConfig {
    /// The service account to impersonate: what clients ask for in metadata paths.
    pub email: String,
    /// Default scopes of its access tokens; default: `gcp.scopes`.
    pub scopes: Option<Vec<String>>,
    /// Lifetime of its access tokens; default: `gcp.token_lifetime`.
    #[serde(default, with = "humantime_serde")]
    pub token_lifetime: Option<Duration>,
    /// Its impersonation chain, each granting token creation on the next (the last on `email`).
    #[serde(default)]
    pub delegates: Vec<String>,
    /// ID-token audiences fetched at start-up for it.
    #[serde(default)]
    pub id_token_audiences: Vec<String>,
}

/// A validated extra service account.
#[derive(Debug, Clone)]
pub(crate) struct Account {
    pub(crate) email: String,
    pub(crate) scopes: ScopeSet,
    pub(crate) token_lifetime: Duration,
    /// As IAM wants them: `projects/-/serviceAccounts/EMAIL`.
    pub(crate) delegates: Vec<String>,
    pub(crate) id_token_audiences: Vec<String>,
}

impl Account {
    /// The section's settings impersonating this account: what its exchange is built from.
    pub(crate) fn settings(&self, default: &Settings) -> Settings {
        Settings {
            service_account: Some(self.email.clone()),
            scopes: self.scopes.clone(),
            token_lifetime: self.token_lifetime,
            delegates: self.delegates.clone(),
            id_token_audiences: self.id_token_audiences.clone(),
            accounts: Vec::new(),
            ..default.clone()
        }
    }
}

/// Validates every entry: e-mails well formed and distinct from each other and from the default
/// account (one path per account on the metadata server).
pub(crate) fn resolve(
    entries: &[AccountConfig],
    default: &Settings,
    allow_long_lifetime: bool,
) -> Result<Vec<Account>, ConfigError> {
    let mut accounts: Vec<Account> = Vec::with_capacity(entries.len());
    for entry in entries {
        let account = resolve_one(entry, default, allow_long_lifetime)?;
        let taken = default.service_account.as_deref() == Some(account.email.as_str())
            || accounts.iter().any(|a| a.email == account.email);
        if taken {
            return Err(ConfigError::invalid(
                "gcp.service_accounts",
                format!(
                    "{} is configured twice (as gcp.service_account or in two [[gcp.service_accounts]] entries): \
                     the metadata server serves each account once, by its e-mail; remove the duplicate",
                    account.email
                ),
            ));
        }
        accounts.push(account);
    }
    Ok(accounts)
}

fn resolve_one(entry: &AccountConfig, default: &Settings, allow_long: bool) -> Result<Account, ConfigError> {
    let email = entry.email.trim().to_owned();
    validate_email("gcp.service_accounts", &email)?;
    let key = |what: &str| format!("gcp.service_accounts[{email}].{what}");
    let scopes = match &entry.scopes {
        Some(list) => ScopeSet::new(list).map_err(|m| ConfigError::invalid(key("scopes"), m))?,
        None => default.scopes.clone(),
    };
    let token_lifetime = entry.token_lifetime.unwrap_or(default.token_lifetime);
    validate_lifetime_of(&key("token_lifetime"), token_lifetime, allow_long)?;
    let delegates = entry.delegates.iter().map(|d| delegate_resource(d)).collect::<Result<Vec<_>, _>>()?;
    for audience in &entry.id_token_audiences {
        validate_id_token_audience(audience).map_err(|m| ConfigError::invalid(key("id_token_audiences"), m))?;
    }
    Ok(Account { email, scopes, token_lifetime, delegates, id_token_audiences: entry.id_token_audiences.clone() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    const AUDIENCE: &str =
        "//iam.googleapis.com/projects/123456/locations/global/workloadIdentityPools/pool/providers/k8s";

    fn resolve_with(service_account: Option<&str>, accounts: Vec<AccountConfig>) -> Result<Settings, ConfigError> {
        Config {
            token_file: Some("/t".into()),
            audience: Some(AUDIENCE.to_owned()),
            service_account: service_account.map(str::to_owned),
            token_lifetime: Some(Duration::from_secs(1800)),
            service_accounts: accounts,
            ..Config::default()
        }
        .resolve()
    }

    fn account(email: &str) -> AccountConfig {
        AccountConfig { email: email.to_owned(), ..AccountConfig::default() }
    }

    #[test]
    fn an_account_takes_the_sections_scopes_and_lifetime_and_has_its_own_chain() {
        let deploy = AccountConfig {
            delegates: vec!["runtime@p.iam.gserviceaccount.com".into()],
            id_token_audiences: vec!["https://deploy.example".into()],
            ..account("deploy@p.iam.gserviceaccount.com")
        };
        let settings = resolve_with(Some("runtime@p.iam.gserviceaccount.com"), vec![deploy]).expect("valid");
        let [deploy] = settings.accounts.as_slice() else { panic!("{:?}", settings.accounts) };
        assert_eq!(deploy.token_lifetime, Duration::from_secs(1800));
        assert_eq!(deploy.scopes, settings.scopes);
        assert_eq!(deploy.delegates, ["projects/-/serviceAccounts/runtime@p.iam.gserviceaccount.com"]);
        let exchange = deploy.settings(&settings);
        assert_eq!(exchange.service_account.as_deref(), Some("deploy@p.iam.gserviceaccount.com"));
        assert_eq!(exchange.id_token_audiences, ["https://deploy.example"]);
        assert!(settings.delegates.is_empty(), "the default account's chain is its own");
        // Without a default service account, extra accounts are still impersonated.
        assert!(resolve_with(None, vec![account("deploy@p.iam.gserviceaccount.com")]).is_ok());
    }

    #[test]
    fn an_email_served_twice_is_refused_naming_it() {
        let err = resolve_with(Some("a@p.iam.gserviceaccount.com"), vec![account("a@p.iam.gserviceaccount.com")])
            .expect_err("same as the default")
            .to_string();
        assert!(err.starts_with("gcp.service_accounts: a@p.iam.gserviceaccount.com is configured twice"), "{err}");
        let twice = vec![account("b@p.iam.gserviceaccount.com"), account("b@p.iam.gserviceaccount.com")];
        assert!(resolve_with(None, twice).expect_err("twice").to_string().contains("configured twice"));
    }

    #[test]
    fn each_account_is_validated_under_its_own_key() {
        let err = resolve_with(None, vec![account("not-an-email")]).expect_err("email").to_string();
        assert!(err.starts_with("gcp.service_accounts"), "{err}");
        let long =
            AccountConfig { token_lifetime: Some(Duration::from_secs(7200)), ..account("d@p.iam.gserviceaccount.com") };
        let err = resolve_with(None, vec![long]).expect_err("lifetime").to_string();
        assert!(err.starts_with("gcp.service_accounts[d@p.iam.gserviceaccount.com].token_lifetime: 2h"), "{err}");
    }
}
