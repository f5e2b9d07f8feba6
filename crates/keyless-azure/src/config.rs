//! The `[azure]` section of the configuration, its zero-config form from the Azure workload
//! identity webhook's env vars, and its validation into [`Settings`].

use std::path::PathBuf;

use keyless_core::Secret;
use keyless_core::upstream::{self, UpstreamError};
use keyless_provider::{DevEmulator, DevTable, Env, ProviderError, Section};
use serde::{Deserialize, Deserializer};

use crate::identity::{ClientId, Scope, TenantId};

/// Entra ID of the public cloud (docs/protocols.md 4.1).
pub const PUBLIC_AUTHORITY_HOST: &str = "https://login.microsoftonline.com";
pub const DEFAULT_APP_SERVICE_PATH: &str = "/msi/token";

/// The `[azure]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The projected service-account token (audience `api://AzureADTokenExchange`). May be left
    /// out when `source` is set, or inside a GitHub Actions job (its OIDC endpoint is used).
    #[serde(default)]
    pub token_file: PathBuf,
    /// Where the subject token comes from instead of `token_file` (`[azure.source]`, docs/configuration.md).
    #[serde(default)]
    pub source: Option<keyless_core::SourceConfig>,
    /// Directory (tenant) id or verified domain.
    pub tenant_id: String,
    /// Application (client) id served when a request names none.
    pub client_id: String,
    /// More apps federated with the same token file; a request's `client_id` picks one.
    #[serde(default)]
    pub additional_client_ids: Vec<String>,
    /// Entra ID host; `.us` and China hosts, or the emulator's. A trailing `/` is ignored.
    #[serde(default = "default_authority_host")]
    pub authority_host: String,
    /// Extra CA bundle (PEM) trusted for the authority host, beside the system roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Resources fetched at start-up and kept fresh (pre-warm; they count for readiness).
    /// Absent: the Resource Manager resource of the authority's cloud. `[]`: none.
    #[serde(default)]
    pub resources: Option<Vec<String>>,
    /// Serve the IMDS endpoint (`/metadata/identity/oauth2/token`).
    #[serde(default = "yes")]
    pub imds: bool,
    /// Serve the App Service endpoint at `app_service_path`.
    #[serde(default = "yes")]
    pub app_service: bool,
    #[serde(default = "default_app_service_path")]
    pub app_service_path: String,
    /// The App Service `X-IDENTITY-HEADER` secret; generated at start when absent.
    #[serde(default, deserialize_with = "optional_secret")]
    pub identity_header: Option<Secret<String>>,
}

fn default_authority_host() -> String {
    PUBLIC_AUTHORITY_HOST.to_owned()
}

fn default_app_service_path() -> String {
    DEFAULT_APP_SERVICE_PATH.to_owned()
}

fn yes() -> bool {
    true
}

fn optional_secret<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Secret<String>>, D::Error> {
    Ok(Option::<String>::deserialize(d)?.map(Secret::new))
}

/// A configuration problem; the message names the key and says how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{key}: {reason}")]
    Invalid { key: String, reason: String },
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error(
        "{var} is set but {missing} is not: the Azure workload identity webhook sets AZURE_CLIENT_ID, \
         AZURE_TENANT_ID and AZURE_FEDERATED_TOKEN_FILE together; label the pod \
         azure.workload.identity/use=true and annotate its service account with \
         azure.workload.identity/client-id, or configure an [azure] section"
    )]
    IncompleteEnv { var: &'static str, missing: String },
    #[error("azure: could not build the HTTP client for Entra ID: {0}")]
    HttpClient(String),
}

impl ConfigError {
    fn invalid(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid { key: key.into(), reason: reason.into() }
    }
}

impl Config {
    /// Checks every key, in an empty environment (tests); the first problem found is reported
    /// with its key.
    #[cfg(test)]
    pub(crate) fn validate(self) -> Result<Settings, ConfigError> {
        self.validate_in(&|_| None)
    }

    /// [`Config::validate`] with the process environment `env` (GitHub Actions detection, the
    /// command sources' opt-in).
    pub(crate) fn validate_in(self, env: &dyn Fn(&str) -> Option<String>) -> Result<Settings, ConfigError> {
        let source = self.token_source(env)?;
        let tenant = TenantId::parse(&self.tenant_id).map_err(|r| ConfigError::invalid("azure.tenant_id", r))?;
        let authority = upstream::endpoint("azure.authority_host", &self.authority_host)?;
        if authority.query().is_some() || authority.fragment().is_some() {
            return Err(ConfigError::invalid(
                "azure.authority_host",
                format!(
                    "{:?} has a query or fragment: give the host only, e.g. {PUBLIC_AUTHORITY_HOST}",
                    self.authority_host
                ),
            ));
        }
        let clients = parse_clients(&self.client_id, &self.additional_client_ids)?;
        let resources = match &self.resources {
            Some(listed) => listed.clone(),
            None => vec![resource_manager(&authority).to_owned()],
        };
        let mut scopes = Vec::with_capacity(resources.len());
        for (i, resource) in resources.iter().enumerate() {
            let scope =
                Scope::for_resource(resource).map_err(|r| ConfigError::invalid(format!("azure.resources[{i}]"), r))?;
            if !scopes.contains(&scope) {
                scopes.push(scope);
            }
        }
        if !self.imds && !self.app_service {
            return Err(ConfigError::invalid(
                "azure.imds",
                "azure.imds and azure.app_service are both false: keyless would serve no Azure \
                 endpoint; enable one (or remove the [azure] section)",
            ));
        }
        validate_app_service_path(&self.app_service_path)?;
        let identity_header = match self.identity_header {
            Some(secret) => {
                validate_identity_header(secret.expose())?;
                secret
            }
            None => generate_identity_header(),
        };
        let ca_pem = self.ca_file.as_deref().map(|path| upstream::ca_bundle("azure.ca_file", path)).transpose()?;
        Ok(Settings {
            source,
            tenant,
            authority,
            ca_pem,
            clients,
            prewarm: scopes,
            imds: self.imds,
            app_service: self.app_service,
            app_service_path: self.app_service_path,
            identity_header,
        })
    }
}

impl Section for Config {
    type Error = ConfigError;

    /// Zero config from the env vars the Azure workload identity webhook injects. `Ok(None)` when
    /// `AZURE_FEDERATED_TOKEN_FILE` is absent (without it there is nothing to exchange; a lone
    /// `AZURE_CLIENT_ID` is common in pods that use other credentials).
    fn from_env(env: Env<'_>) -> Result<Option<Config>, ConfigError> {
        let var = |name: &str| env(name).filter(|v| !v.trim().is_empty());
        let Some(token_file) = var("AZURE_FEDERATED_TOKEN_FILE") else {
            return Ok(None);
        };
        let missing: Vec<&str> =
            ["AZURE_CLIENT_ID", "AZURE_TENANT_ID"].into_iter().filter(|name| var(name).is_none()).collect();
        let (Some(client_id), Some(tenant_id)) = (var("AZURE_CLIENT_ID"), var("AZURE_TENANT_ID")) else {
            return Err(ConfigError::IncompleteEnv {
                var: "AZURE_FEDERATED_TOKEN_FILE",
                missing: missing.join(" and "),
            });
        };
        Ok(Some(Config {
            token_file: PathBuf::from(token_file),
            tenant_id,
            client_id,
            additional_client_ids: Vec::new(),
            authority_host: var("AZURE_AUTHORITY_HOST").unwrap_or_else(default_authority_host),
            ca_file: None,
            resources: None,
            imds: true,
            app_service: true,
            app_service_path: default_app_service_path(),
            identity_header: None,
            source: None,
        }))
    }

    fn dev(emulator: &DevEmulator<'_>) -> Result<DevTable, ProviderError> {
        crate::dev::section(emulator)
    }
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// Where the subject token comes from: `token_file`, `[azure.source]`, or GitHub Actions.
    pub source: keyless_core::SourceSpec,
    pub tenant: TenantId,
    pub authority: url::Url,
    pub ca_pem: Option<Vec<u8>>,
    /// The primary client id first.
    pub clients: Vec<ClientId>,
    pub prewarm: Vec<Scope>,
    pub imds: bool,
    pub app_service: bool,
    pub app_service_path: String,
    pub identity_header: Secret<String>,
}

impl Settings {
    /// Where the subject token comes from, as resolved when the section was validated.
    pub(crate) fn token_source(&self) -> keyless_core::SourceSpec {
        self.source.clone()
    }
}

/// The audience Entra federated credentials expect (azure/login's default).
const FEDERATION_AUDIENCE: &str = "api://AzureADTokenExchange";

impl Config {
    /// `[azure.source]`, else `token_file`, else GitHub Actions inside a job.
    fn token_source(&self, env: &dyn Fn(&str) -> Option<String>) -> Result<keyless_core::SourceSpec, ConfigError> {
        let defaults = keyless_core::SourceDefaults { audience: FEDERATION_AUDIENCE.to_owned() };
        if let Some(source) = &self.source {
            return source.resolve(&defaults, env).map_err(|m| ConfigError::invalid("azure.source", m));
        }
        if !self.token_file.as_os_str().is_empty() {
            return Ok(keyless_core::SourceSpec::File(self.token_file.clone()));
        }
        keyless_core::source::detected(&defaults, env).ok_or_else(|| {
            ConfigError::invalid(
                "azure.token_file",
                "is empty: name the projected service-account token file (audience api://AzureADTokenExchange), or \
                 configure [azure.source] (GitHub Actions, an environment variable, a URL, a command)",
            )
        })
    }
}

fn parse_clients(primary: &str, additional: &[String]) -> Result<Vec<ClientId>, ConfigError> {
    let mut clients = vec![ClientId::parse(primary).map_err(|r| ConfigError::invalid("azure.client_id", r))?];
    for (i, raw) in additional.iter().enumerate() {
        let key = format!("azure.additional_client_ids[{i}]");
        let id = ClientId::parse(raw).map_err(|r| ConfigError::invalid(&key, r))?;
        if clients.iter().any(|c| c.is_named_by(id.as_str())) {
            return Err(ConfigError::invalid(
                key,
                format!("{id} is listed twice (client ids are compared case-insensitively): remove the duplicate"),
            ));
        }
        clients.push(id);
    }
    Ok(clients)
}

/// The Resource Manager resource of the authority's cloud: a token for it proves the federation
/// works (every app may get one, no role needed), so it is the default pre-warm. Without a
/// trailing slash, as the SDKs ask for it (`https://management.azure.com/.default` scope).
fn resource_manager(authority: &url::Url) -> &'static str {
    match authority.host_str() {
        Some(h) if h.ends_with(".microsoftonline.us") => "https://management.usgovcloudapi.net",
        Some(h) if h.ends_with(".chinacloudapi.cn") => "https://management.chinacloudapi.cn",
        _ => "https://management.azure.com",
    }
}

/// A plain path; whether it collides with another endpoint is checked over every provider's
/// routes by the binary (`keyless_provider::routes::check`).
fn validate_app_service_path(path: &str) -> Result<(), ConfigError> {
    keyless_provider::routes::plain_path(path).map_err(|m| ConfigError::invalid("azure.app_service_path", m))
}

/// Longest `identity_header`: far more than a secret needs, and a header the listener accepts
/// (request heads are bounded) and that fits an env file line.
const MAX_IDENTITY_HEADER_LEN: usize = 4096;

fn validate_identity_header(value: &str) -> Result<(), ConfigError> {
    let usable = (16..=MAX_IDENTITY_HEADER_LEN).contains(&value.len()) && value.bytes().all(|b| b.is_ascii_graphic());
    if usable {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            "azure.identity_header",
            format!(
                "must be 16 to {MAX_IDENTITY_HEADER_LEN} printable ASCII characters without spaces (it is an \
                 HTTP header value and the only thing guarding the App Service endpoint); or remove it to have \
                 keyless generate one"
            ),
        ))
    }
}

/// 256 random bits, hex: a header value every client can send.
fn generate_identity_header() -> Secret<String> {
    let bytes: [u8; 32] = rand::random();
    Secret::new(hex::encode(bytes))
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
