//! The `[gcp]` section, and the settings it resolves to once merged with an `external_account`
//! credential file and the defaults.

use std::path::PathBuf;
use std::time::Duration;

use keyless_provider::{DevEmulator, DevTable, Env, ProviderError, Section};
use serde::Deserialize;
use url::Url;

use crate::ConfigError;
use crate::external_account::ExternalAccount;
use crate::identity::{PoolProvider, ScopeSet, is_project_number, validate_email, validate_project_id};

/// The `[gcp]` section of the config file. Every key is optional where `credentials_file` (an
/// `external_account` JSON) provides it; explicit keys win over the file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The projected service-account token (audience: the provider, see `audience`).
    pub token_file: Option<PathBuf>,
    /// The workload identity pool provider:
    /// `//iam.googleapis.com/projects/NUM/locations/global/workloadIdentityPools/POOL/providers/PROV`.
    pub audience: Option<String>,
    /// Service account to impersonate; without it the federated token is served directly.
    pub service_account: Option<String>,
    /// Served on `project/project-id` and given to apps as `GOOGLE_CLOUD_PROJECT`.
    pub project_id: Option<String>,
    /// Served on `project/numeric-project-id`; default: the project number in `audience`.
    /// TOML may write it as a string or an integer.
    #[serde(default, deserialize_with = "string_or_integer")]
    pub project_number: Option<String>,
    /// Default scopes of served access tokens (default: cloud-platform).
    pub scopes: Option<Vec<String>>,
    /// Lifetime of impersonated access tokens (default 1h; more needs `allow_long_lifetime`).
    #[serde(default, with = "humantime_serde")]
    pub token_lifetime: Option<Duration>,
    /// Allows `token_lifetime` up to 12h (needs the org policy
    /// `constraints/iam.allowServiceAccountCredentialLifetimeExtension`).
    #[serde(default)]
    pub allow_long_lifetime: bool,
    /// Service accounts in the impersonation chain, each granting token creation on the next.
    pub delegates: Option<Vec<String>>,
    /// ID-token audiences fetched at start-up and kept fresh (others are fetched on first use).
    #[serde(default)]
    pub id_token_audiences: Vec<String>,
    /// STS endpoint (default `https://sts.googleapis.com`).
    pub sts_endpoint: Option<String>,
    /// IAM Credentials endpoint (default `https://iamcredentials.googleapis.com`).
    pub iam_endpoint: Option<String>,
    /// Extra PEM roots for STS and IAM (TLS-intercepting proxies, the emulator).
    pub ca_file: Option<PathBuf>,
    /// Google `external_account` credential JSON providing the settings above.
    pub credentials_file: Option<PathBuf>,
    /// Served on `universe/universe-domain` (default `googleapis.com`).
    pub universe_domain: Option<String>,
    /// Service accounts beside the default one (`[[gcp.service_accounts]]`), served by e-mail.
    #[serde(default)]
    pub service_accounts: Vec<crate::accounts::AccountConfig>,
    /// Where the subject token comes from instead of `token_file` (`[gcp.source]`, docs/configuration.md).
    #[serde(default)]
    pub source: Option<keyless_core::SourceConfig>,
}

/// A numeric project id, written in TOML as a string or an integer.
#[derive(Deserialize)]
#[serde(untagged)]
enum StringOrInteger {
    Integer(u64),
    String(String),
}

fn string_or_integer<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(Option::<StringOrInteger>::deserialize(d)?.map(|v| match v {
        StringOrInteger::Integer(n) => n.to_string(),
        StringOrInteger::String(s) => s,
    }))
}

pub(crate) const JWT_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";
const ID_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:id_token";
const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);
const MAX_LIFETIME: Duration = Duration::from_secs(3600);
const MAX_LONG_LIFETIME: Duration = Duration::from_secs(12 * 3600);
const MIN_LIFETIME: Duration = Duration::from_secs(60);
const MAX_AUDIENCE_LEN: usize = 2048;

impl Config {
    /// Merges the section with its credential file and the defaults, validating every value, in
    /// an empty environment (tests).
    #[cfg(test)]
    pub(crate) fn resolve(&self) -> Result<Settings, ConfigError> {
        self.resolve_in(&|_| None)
    }

    /// [`Config::resolve`] with the process environment `env` (GitHub Actions detection, the
    /// command sources' opt-in).
    pub(crate) fn resolve_in(&self, env: &dyn Fn(&str) -> Option<String>) -> Result<Settings, ConfigError> {
        let file = match &self.credentials_file {
            Some(path) => ExternalAccount::load("gcp.credentials_file", path)?,
            None => ExternalAccount::default(),
        };
        let audience = self.audience.clone().or(file.audience.clone()).ok_or(ConfigError::Missing {
            key: "gcp.audience",
            fix: "set it to the workload identity pool provider, \
                  //iam.googleapis.com/projects/NUM/locations/global/workloadIdentityPools/POOL/providers/PROV",
        })?;
        let provider = PoolProvider::parse("gcp.audience", audience.trim())?;
        let subject_token_type = subject_token_type(file.subject_token_type.clone())?;
        let source = crate::sources::token_source(self, &file, &audience, &subject_token_type, env)?;
        let universe_domain = universe_domain(self.universe_domain.clone().or(file.universe_domain))?;
        let service_account = self.service_account.clone().or(file.service_account);
        if let Some(email) = &service_account {
            validate_email("gcp.service_account", email)?;
        }
        if let Some(id) = &self.project_id {
            validate_project_id("gcp.project_id", id)?;
        }
        let project_number = match &self.project_number {
            Some(n) => project_number(n)?,
            None => provider.project_number().to_owned(),
        };
        let scopes = match &self.scopes {
            Some(list) => ScopeSet::new(list).map_err(|m| ConfigError::invalid("gcp.scopes", m))?,
            None => ScopeSet::cloud_platform(),
        };
        let token_lifetime = self.token_lifetime.or(file.token_lifetime).unwrap_or(DEFAULT_LIFETIME);
        validate_lifetime(token_lifetime, self.allow_long_lifetime)?;
        let delegates = self.delegates.iter().flatten().map(|d| delegate_resource(d)).collect::<Result<Vec<_>, _>>()?;
        let id_token_audiences = self.id_token_audiences.clone();
        for audience in &id_token_audiences {
            validate_id_token_audience(audience).map_err(|m| ConfigError::invalid("gcp.id_token_audiences", m))?;
        }
        if service_account.is_none() {
            needs_no_impersonation(&id_token_audiences, &delegates)?;
        }
        let endpoint = |key: &str, explicit: &Option<String>, from_file: Option<String>, default_host: &str| {
            let value =
                explicit.clone().or(from_file).unwrap_or_else(|| format!("https://{default_host}.{universe_domain}"));
            keyless_core::upstream::endpoint(key, &value)
        };
        let sts_endpoint = endpoint("gcp.sts_endpoint", &self.sts_endpoint, file.sts_endpoint, "sts")?;
        let iam_endpoint = endpoint("gcp.iam_endpoint", &self.iam_endpoint, file.iam_endpoint, "iamcredentials")?;
        let ca_pem =
            self.ca_file.as_deref().map(|path| keyless_core::upstream::ca_bundle("gcp.ca_file", path)).transpose()?;
        let mut settings = Settings {
            source,
            provider,
            subject_token_type,
            service_account,
            project_id: self.project_id.clone(),
            project_number,
            scopes,
            token_lifetime,
            delegates,
            id_token_audiences,
            sts_endpoint,
            iam_endpoint,
            ca_pem,
            universe_domain,
            accounts: Vec::new(),
        };
        settings.accounts = crate::accounts::resolve(&self.service_accounts, &settings, self.allow_long_lifetime)?;
        Ok(settings)
    }
}

impl Section for Config {
    type Error = ConfigError;

    /// Zero config from `GOOGLE_APPLICATION_CREDENTIALS` naming an `external_account` file, with
    /// the project id from `GOOGLE_CLOUD_PROJECT` or `CLOUDSDK_CORE_PROJECT`. `Ok(None)` without
    /// `GOOGLE_APPLICATION_CREDENTIALS`; an error when it names another kind of credential.
    fn from_env(env: Env<'_>) -> Result<Option<Config>, ConfigError> {
        let non_empty = |name: &str| env(name).filter(|v| !v.trim().is_empty());
        let Some(path) = non_empty("GOOGLE_APPLICATION_CREDENTIALS") else {
            return Ok(None);
        };
        let path = PathBuf::from(path);
        ExternalAccount::load("GOOGLE_APPLICATION_CREDENTIALS", &path)?;
        Ok(Some(Config {
            credentials_file: Some(path),
            project_id: non_empty("GOOGLE_CLOUD_PROJECT").or_else(|| non_empty("CLOUDSDK_CORE_PROJECT")),
            ..Config::default()
        }))
    }

    fn dev(emulator: &DevEmulator<'_>) -> Result<DevTable, ProviderError> {
        crate::dev::section(emulator)
    }
}

/// The `external_account` file's `subject_token_type`: a JWT type (a projected token is one).
fn subject_token_type(from_file: Option<String>) -> Result<String, ConfigError> {
    let subject_token_type = from_file.unwrap_or_else(|| JWT_TOKEN_TYPE.to_owned());
    if subject_token_type != JWT_TOKEN_TYPE && subject_token_type != ID_TOKEN_TYPE {
        return Err(ConfigError::invalid(
            "gcp.credentials_file",
            format!(
                "subject_token_type {subject_token_type:?} is not a JWT type: a projected token needs \
                 {JWT_TOKEN_TYPE:?} (or {ID_TOKEN_TYPE:?})"
            ),
        ));
    }
    Ok(subject_token_type)
}

fn universe_domain(configured: Option<String>) -> Result<String, ConfigError> {
    let domain = configured.unwrap_or_else(|| "googleapis.com".to_owned());
    if domain.is_empty() || domain.bytes().any(|b| !(b.is_ascii_alphanumeric() || b"-.".contains(&b))) {
        return Err(ConfigError::invalid("gcp.universe_domain", format!("{domain:?} is not a domain name")));
    }
    Ok(domain)
}

fn project_number(configured: &str) -> Result<String, ConfigError> {
    let n = configured.trim().to_owned();
    if !is_project_number(&n) {
        return Err(ConfigError::invalid("gcp.project_number", format!("{n:?} is not a project number (digits only)")));
    }
    Ok(n)
}

/// Without a service account there is nothing to impersonate: no ID tokens, no delegation chain.
fn needs_no_impersonation(id_token_audiences: &[String], delegates: &[String]) -> Result<(), ConfigError> {
    let without_account = |key: &str, what: &str| {
        ConfigError::invalid(key, format!("{what} needs gcp.service_account: set the service account to impersonate"))
    };
    if !id_token_audiences.is_empty() {
        return Err(without_account("gcp.id_token_audiences", "an ID token"));
    }
    if !delegates.is_empty() {
        return Err(without_account("gcp.delegates", "a delegation chain"));
    }
    Ok(())
}

/// The validated section.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// Where the subject token comes from: `token_file`, `[gcp.source]`, the credential file's
    /// url or executable, or GitHub Actions.
    pub(crate) source: keyless_core::SourceSpec,
    pub(crate) provider: PoolProvider,
    pub(crate) subject_token_type: String,
    pub(crate) service_account: Option<String>,
    pub(crate) project_id: Option<String>,
    pub(crate) project_number: String,
    pub(crate) scopes: ScopeSet,
    pub(crate) token_lifetime: Duration,
    /// As IAM wants them: `projects/-/serviceAccounts/EMAIL`.
    pub(crate) delegates: Vec<String>,
    pub(crate) id_token_audiences: Vec<String>,
    pub(crate) sts_endpoint: Url,
    pub(crate) iam_endpoint: Url,
    pub(crate) ca_pem: Option<Vec<u8>>,
    pub(crate) universe_domain: String,
    /// The extra service accounts (`[[gcp.service_accounts]]`), each with its own cache.
    pub(crate) accounts: Vec<crate::accounts::Account>,
}

impl Settings {
    /// Where the subject token comes from, as resolved when the section was validated.
    pub(crate) fn token_source(&self) -> keyless_core::SourceSpec {
        self.source.clone()
    }
}

fn validate_lifetime(lifetime: Duration, allow_long: bool) -> Result<(), ConfigError> {
    validate_lifetime_of("gcp.token_lifetime", lifetime, allow_long)
}

/// The lifetime rules of IAM's `generateAccessToken`, reported under `key`.
pub(crate) fn validate_lifetime_of(key: &str, lifetime: Duration, allow_long: bool) -> Result<(), ConfigError> {
    let max = if allow_long { MAX_LONG_LIFETIME } else { MAX_LIFETIME };
    let problem = if lifetime.subsec_nanos() != 0 {
        Some("must be whole seconds".to_owned())
    } else if lifetime < MIN_LIFETIME {
        Some(format!("must be at least {}", humantime::format_duration(MIN_LIFETIME)))
    } else if lifetime > max {
        Some(if allow_long {
            format!("must be at most {}", humantime::format_duration(max))
        } else {
            "IAM issues tokens for at most 1h unless the org policy constraints/iam.allowServiceAccountCredentialLifetimeExtension \
             lists the service account; with that policy, set gcp.allow_long_lifetime = true (up to 12h)"
                .to_owned()
        })
    } else {
        None
    };
    match problem {
        Some(p) => Err(ConfigError::invalid(key, format!("{} {p}", humantime::format_duration(lifetime)))),
        None => Ok(()),
    }
}

/// A delegate as an e-mail or `projects/-/serviceAccounts/EMAIL`, in the second form.
pub(crate) fn delegate_resource(delegate: &str) -> Result<String, ConfigError> {
    let email = delegate.strip_prefix("projects/-/serviceAccounts/").unwrap_or(delegate);
    validate_email("gcp.delegates", email)?;
    Ok(format!("projects/-/serviceAccounts/{email}"))
}

/// An ID-token audience, as configured or as asked for on the metadata server.
pub(crate) fn validate_id_token_audience(audience: &str) -> Result<(), String> {
    if audience.is_empty() {
        Err("the audience is empty".to_owned())
    } else if audience.len() > MAX_AUDIENCE_LEN {
        Err(format!("the audience is longer than {MAX_AUDIENCE_LEN} characters"))
    } else if audience.chars().any(char::is_control) {
        Err("the audience contains control characters".to_owned())
    } else {
        Ok(())
    }
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
