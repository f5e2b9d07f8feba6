//! The `[aws]` configuration section, and its zero-config form built from the env vars the EKS
//! IRSA webhook injects (docs/protocols.md 2.1).

use std::path::PathBuf;
use std::time::Duration;

use keyless_core::Secret;
use keyless_provider::{DevEmulator, DevTable, Env, ProviderError, Section};
use serde::{Deserialize, Deserializer};

use crate::error::ConfigError;

/// The `[aws]` section, validated by [`crate::Provider::start`]. `Debug` redacts
/// `authorization_token`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The projected service-account token (audience `sts.amazonaws.com` by convention). May be
    /// left out when `source` is set, or inside a GitHub Actions job (its OIDC endpoint is used).
    #[serde(default)]
    pub token_file: PathBuf,
    /// Where the subject token comes from instead of `token_file` (`[aws.source]`, docs/configuration.md).
    #[serde(default)]
    pub source: Option<keyless_core::SourceConfig>,
    /// The IAM role to assume: `arn:aws:iam::123456789012:role/NAME`.
    pub role_arn: String,
    /// `RoleSessionName` (`[\w+=,.@-]{2,64}`); default `keyless-<pod or host name>`.
    #[serde(default)]
    pub session_name: Option<String>,
    /// Requested credential lifetime, 15m..12h (capped by the role's maximum session duration).
    #[serde(default = "default_duration", with = "humantime_serde")]
    pub duration: Duration,
    /// Inline session policy (JSON, at most 2048 characters) narrowing the role's permissions.
    #[serde(default)]
    pub policy: Option<String>,
    /// Managed policy ARNs narrowing the role's permissions (at most 10).
    #[serde(default)]
    pub policy_arns: Vec<String>,
    /// Region of the STS endpoint and of what apps are told; default `AWS_REGION`,
    /// `AWS_DEFAULT_REGION`, else `us-east-1`.
    #[serde(default)]
    pub region: Option<String>,
    /// STS endpoint override (https; plain http only to loopback). Default: the regional endpoint.
    #[serde(default)]
    pub sts_endpoint: Option<String>,
    /// Extra PEM CA certificates to trust for STS (TLS-intercepting proxies, the emulator).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Serve the container-credentials endpoint.
    #[serde(default = "enabled")]
    pub container_credentials: bool,
    /// Path of the container-credentials endpoint on the listener.
    #[serde(default = "default_container_path")]
    pub container_path: String,
    /// The `Authorization` value clients must send to the container-credentials endpoint.
    #[serde(default, deserialize_with = "secret")]
    pub authorization_token: Option<Secret<String>>,
    /// File holding the `Authorization` value; created (mode 0600, no trailing newline) with a
    /// random value when it does not exist.
    #[serde(default)]
    pub authorization_token_file: Option<PathBuf>,
    /// Serve the IMDSv2 emulation at the listener root.
    #[serde(default = "enabled")]
    pub imds: bool,
    /// Also answer IMDSv1 requests (no session token). Off: IMDSv2 is what SSRF protection needs.
    #[serde(default)]
    pub imds_v1: bool,
    /// Longest IMDS session granted (clients ask for up to 6h).
    #[serde(default = "default_imds_session_ttl_max", with = "humantime_serde")]
    pub imds_session_ttl_max: Duration,
    /// Most IMDS sessions held at once; the least recently used is dropped beyond it.
    #[serde(default = "default_imds_max_sessions")]
    pub imds_max_sessions: usize,
    /// The account apps are told about (IMDS identity document, `AccountId`); default: the role's.
    #[serde(default)]
    pub account_id: Option<String>,
    /// Named roles beside the default one (`[[aws.roles]]`), on their own container paths.
    #[serde(default)]
    pub roles: Vec<crate::roles::RoleConfig>,
}

pub(crate) const DEFAULT_CONTAINER_PATH: &str = "/v1/credentials";
const GLOBAL_STS_ENDPOINT: &str = "https://sts.amazonaws.com";

fn enabled() -> bool {
    true
}

fn default_duration() -> Duration {
    Duration::from_secs(3600)
}

fn default_container_path() -> String {
    DEFAULT_CONTAINER_PATH.to_owned()
}

fn default_imds_session_ttl_max() -> Duration {
    Duration::from_secs(21_600)
}

fn default_imds_max_sessions() -> usize {
    1024
}

fn secret<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Secret<String>>, D::Error> {
    Ok(Option::<String>::deserialize(d)?.map(Secret::new))
}

impl Config {
    /// A section with every optional key at its default.
    pub fn new(token_file: impl Into<PathBuf>, role_arn: impl Into<String>) -> Self {
        Self {
            token_file: token_file.into(),
            source: None,
            role_arn: role_arn.into(),
            session_name: None,
            duration: default_duration(),
            policy: None,
            policy_arns: Vec::new(),
            region: None,
            sts_endpoint: None,
            ca_file: None,
            container_credentials: true,
            container_path: default_container_path(),
            authorization_token: None,
            authorization_token_file: None,
            imds: true,
            imds_v1: false,
            imds_session_ttl_max: default_imds_session_ttl_max(),
            imds_max_sessions: default_imds_max_sessions(),
            account_id: None,
            roles: Vec::new(),
        }
    }
}

impl Section for Config {
    type Error = ConfigError;

    /// Zero config: the section built from the env vars the IRSA webhook injects
    /// (`AWS_ROLE_ARN`, `AWS_WEB_IDENTITY_TOKEN_FILE`, `AWS_ROLE_SESSION_NAME`, `AWS_REGION` /
    /// `AWS_DEFAULT_REGION`, `AWS_ENDPOINT_URL_STS` / `AWS_ENDPOINT_URL`, `AWS_CA_BUNDLE`,
    /// `AWS_STS_REGIONAL_ENDPOINTS`). `Ok(None)` when neither of the first two is set.
    fn from_env(env: Env<'_>) -> Result<Option<Config>, ConfigError> {
        let var = |name: &str| env(name).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        let (role_arn, token_file) = match (var("AWS_ROLE_ARN"), var("AWS_WEB_IDENTITY_TOKEN_FILE")) {
            (None, None) => return Ok(None),
            (Some(role), Some(file)) => (role, file),
            (Some(_), None) => {
                return Err(ConfigError::env(
                    "AWS_WEB_IDENTITY_TOKEN_FILE",
                    "AWS_ROLE_ARN is set but AWS_WEB_IDENTITY_TOKEN_FILE is not: set it to the projected \
                     service-account token's path (or configure an [aws] section)",
                ));
            }
            (None, Some(_)) => {
                return Err(ConfigError::env(
                    "AWS_ROLE_ARN",
                    "AWS_WEB_IDENTITY_TOKEN_FILE is set but AWS_ROLE_ARN is not: set it to the IAM role to \
                     assume (or configure an [aws] section)",
                ));
            }
        };
        let mut config = Config::new(token_file, role_arn);
        config.session_name = var("AWS_ROLE_SESSION_NAME");
        config.region = var("AWS_REGION").or_else(|| var("AWS_DEFAULT_REGION"));
        config.sts_endpoint = var("AWS_ENDPOINT_URL_STS").or_else(|| var("AWS_ENDPOINT_URL"));
        config.ca_file = var("AWS_CA_BUNDLE").map(PathBuf::from);
        match var("AWS_STS_REGIONAL_ENDPOINTS").map(|v| v.to_ascii_lowercase()).as_deref() {
            None | Some("regional") => {}
            // `legacy` sends aws-partition calls to the global endpoint, as the SDKs do; an explicit
            // endpoint URL still wins.
            Some("legacy") => {
                if config.sts_endpoint.is_none() && config.role_arn.starts_with("arn:aws:") {
                    config.sts_endpoint = Some(GLOBAL_STS_ENDPOINT.to_owned());
                }
            }
            Some(other) => {
                return Err(ConfigError::env(
                    "AWS_STS_REGIONAL_ENDPOINTS",
                    format!("{other:?} is neither \"regional\" nor \"legacy\""),
                ));
            }
        }
        Ok(Some(config))
    }

    fn dev(emulator: &DevEmulator<'_>) -> Result<DevTable, ProviderError> {
        crate::dev::section(emulator)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| (*v).to_owned())
    }

    #[test]
    fn from_env_is_none_without_the_webhook_vars() {
        let config = Config::from_env(&env_of(&[("AWS_REGION", "eu-west-1")])).expect("no error");
        assert!(config.is_none());
    }

    #[test]
    fn from_env_reads_every_irsa_var() {
        let config = Config::from_env(&env_of(&[
            ("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/app"),
            ("AWS_WEB_IDENTITY_TOKEN_FILE", "/var/run/secrets/eks.amazonaws.com/serviceaccount/token"),
            ("AWS_ROLE_SESSION_NAME", "my-session"),
            ("AWS_DEFAULT_REGION", "eu-west-1"),
            ("AWS_ENDPOINT_URL", "https://sts.example.com"),
            ("AWS_CA_BUNDLE", "/etc/ca.pem"),
        ]))
        .expect("valid")
        .expect("configured");
        assert_eq!(config.role_arn, "arn:aws:iam::123456789012:role/app");
        assert_eq!(config.token_file, PathBuf::from("/var/run/secrets/eks.amazonaws.com/serviceaccount/token"));
        assert_eq!(config.session_name.as_deref(), Some("my-session"));
        assert_eq!(config.region.as_deref(), Some("eu-west-1"));
        assert_eq!(config.sts_endpoint.as_deref(), Some("https://sts.example.com"));
        assert_eq!(config.ca_file, Some(PathBuf::from("/etc/ca.pem")));
    }

    #[test]
    fn from_env_prefers_the_sts_specific_endpoint_and_aws_region() {
        let config = Config::from_env(&env_of(&[
            ("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/app"),
            ("AWS_WEB_IDENTITY_TOKEN_FILE", "/t"),
            ("AWS_REGION", "us-west-2"),
            ("AWS_DEFAULT_REGION", "eu-west-1"),
            ("AWS_ENDPOINT_URL", "https://generic.example.com"),
            ("AWS_ENDPOINT_URL_STS", "https://sts.example.com"),
        ]))
        .expect("valid")
        .expect("configured");
        assert_eq!(config.region.as_deref(), Some("us-west-2"));
        assert_eq!(config.sts_endpoint.as_deref(), Some("https://sts.example.com"));
    }

    #[test]
    fn legacy_sts_endpoints_mean_the_global_endpoint() {
        let config = Config::from_env(&env_of(&[
            ("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/app"),
            ("AWS_WEB_IDENTITY_TOKEN_FILE", "/t"),
            ("AWS_STS_REGIONAL_ENDPOINTS", "legacy"),
        ]))
        .expect("valid")
        .expect("configured");
        assert_eq!(config.sts_endpoint.as_deref(), Some(GLOBAL_STS_ENDPOINT));
    }

    #[test]
    fn half_an_irsa_setup_names_the_missing_var() {
        let err = Config::from_env(&env_of(&[("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/app")]))
            .expect_err("incomplete");
        assert!(err.to_string().contains("AWS_WEB_IDENTITY_TOKEN_FILE"), "{err}");
    }

    #[test]
    fn toml_section_uses_human_durations_and_rejects_unknown_keys() {
        let config: Config = toml_section(
            r#"
            token_file = "/t"
            role_arn = "arn:aws:iam::123456789012:role/app"
            duration = "2h"
            imds_session_ttl_max = "15m"
            authorization_token = "s3cret-value"
            "#,
        )
        .expect("valid");
        assert_eq!(config.duration, Duration::from_secs(7200));
        assert_eq!(config.imds_session_ttl_max, Duration::from_secs(900));
        assert!(config.container_credentials && config.imds && !config.imds_v1);
        assert!(!format!("{config:?}").contains("s3cret-value"));

        let err = toml_section("token_file = \"/t\"\nrole_arn = \"x\"\nrole = \"y\"").expect_err("unknown key");
        assert!(err.contains("role"), "{err}");
    }

    fn toml_section(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }
}
