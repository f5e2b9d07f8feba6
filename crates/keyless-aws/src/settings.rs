//! The `[aws]` section validated once into typed settings: every later step can rely on them.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use keyless_core::Secret;
use keyless_core::upstream;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;
use url::Url;

use crate::config::Config;
use crate::error::ConfigError;

/// An IAM role ARN: `arn:PARTITION:iam::ACCOUNT:role/[PATH/]NAME`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RoleArn {
    arn: String,
    partition: String,
    account: String,
    name: String,
}

impl RoleArn {
    pub(crate) fn parse(value: &str) -> Result<Self, String> {
        let fix = "expected arn:aws:iam::123456789012:role/NAME (the role's ARN from the IAM console)";
        // docs/protocols.md 2.1: RoleArn is 20-2048 characters.
        if !(20..=2048).contains(&value.len()) {
            return Err(format!("{value:?} must be 20 to 2048 characters long; {fix}"));
        }
        let parts: Vec<&str> = value.splitn(6, ':').collect();
        let ok_shape =
            parts.len() == 6 && parts[0] == "arn" && !parts[1].is_empty() && parts[2] == "iam" && parts[3].is_empty();
        if !ok_shape {
            return Err(format!("{value:?} is not an IAM ARN; {fix}"));
        }
        let account = parts[4];
        if account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("{value:?} has account {account:?}, not 12 digits; {fix}"));
        }
        let name = parts[5]
            .strip_prefix("role/")
            .and_then(|path| path.rsplit('/').next())
            .filter(|n| !n.is_empty())
            .ok_or_else(|| format!("{value:?} does not name a role (role/NAME); {fix}"))?;
        Ok(Self {
            arn: value.to_owned(),
            partition: parts[1].to_owned(),
            account: account.to_owned(),
            name: name.to_owned(),
        })
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.arn
    }

    pub(crate) fn partition(&self) -> &str {
        &self.partition
    }

    pub(crate) fn account(&self) -> &str {
        &self.account
    }

    /// The last path segment: what IMDS lists under `iam/security-credentials/`.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }
}

impl fmt::Display for RoleArn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.arn)
    }
}

/// `RoleSessionName`: 2-64 characters of `[\w+=,.@-]` (docs/protocols.md 2.1). It shows in CloudTrail
/// as the assumed-role session, so the default names the pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RoleSessionName(String);

impl RoleSessionName {
    fn allowed(c: char) -> bool {
        c.is_ascii_alphanumeric() || "_+=,.@-".contains(c)
    }

    pub(crate) fn parse(value: &str) -> Result<Self, String> {
        if !(2..=64).contains(&value.len()) {
            return Err(format!("{value:?} must be 2 to 64 characters long"));
        }
        if let Some(bad) = value.chars().find(|c| !Self::allowed(*c)) {
            return Err(format!("{value:?} contains {bad:?}; only letters, digits and _+=,.@- are allowed"));
        }
        Ok(Self(value.to_owned()))
    }

    /// `keyless-<host>`, with characters STS refuses replaced by `-` and cut to 64 characters.
    pub(crate) fn from_host(host: Option<&str>) -> Self {
        let host = host.map(str::trim).filter(|h| !h.is_empty());
        let mut name = String::from("keyless");
        if let Some(host) = host {
            name.push('-');
            name.extend(host.chars().map(|c| if Self::allowed(c) { c } else { '-' }));
        }
        name.truncate(64);
        Self(name)
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

/// The IMDSv2 emulation's limits.
#[derive(Debug, Clone)]
pub(crate) struct ImdsSettings {
    pub(crate) v1: bool,
    pub(crate) session_ttl_max: Duration,
    pub(crate) max_sessions: usize,
}

/// The container-credentials endpoint's path and authorization source.
#[derive(Debug, Clone)]
pub(crate) struct ContainerSettings {
    pub(crate) path: String,
    pub(crate) token: Option<Secret<String>>,
    pub(crate) token_file: Option<PathBuf>,
}

/// A validated `[aws]` section.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// Where the subject token comes from: `token_file`, `[aws.source]`, or GitHub Actions.
    pub(crate) source: keyless_core::SourceSpec,
    pub(crate) role: RoleArn,
    pub(crate) session_name: RoleSessionName,
    pub(crate) duration: Duration,
    pub(crate) policy: Option<String>,
    pub(crate) policy_arns: Vec<String>,
    pub(crate) region: String,
    pub(crate) sts_endpoint: Option<Url>,
    /// One PEM block per extra trusted CA certificate.
    pub(crate) ca_certs: Vec<String>,
    pub(crate) account_id: String,
    pub(crate) container: Option<ContainerSettings>,
    pub(crate) imds: Option<ImdsSettings>,
    /// The named roles (`[[aws.roles]]`), each with its own cache and container path.
    pub(crate) roles: Vec<crate::roles::NamedRole>,
}

impl Settings {
    /// Where the subject token comes from, as resolved when the section was validated.
    pub(crate) fn token_source(&self) -> keyless_core::SourceSpec {
        self.source.clone()
    }
}

/// The process environment and host name, where the defaults come from.
pub(crate) struct Host<'a> {
    pub(crate) env: &'a dyn Fn(&str) -> Option<String>,
    pub(crate) hostname_file: Option<String>,
}

impl Host<'_> {
    fn var(&self, name: &str) -> Option<String> {
        (self.env)(name).filter(|v| !v.trim().is_empty())
    }
}

const DURATION_MIN: Duration = Duration::from_secs(900);
const DURATION_MAX: Duration = Duration::from_secs(43_200);
const IMDS_TTL_MAX: Duration = Duration::from_secs(21_600);

impl Settings {
    /// [`Settings::resolve`] with the context's environment and host name.
    pub(crate) fn resolve_in(config: &Config, ctx: &keyless_core::Context) -> Result<Self, ConfigError> {
        let env = ctx.env();
        Self::resolve(config, &Host { env: &env, hostname_file: ctx.host.hostname().map(str::to_owned) })
    }

    pub(crate) fn resolve(config: &Config, host: &Host<'_>) -> Result<Self, ConfigError> {
        let source = token_source(config, host)?;
        let role = RoleArn::parse(config.role_arn.trim()).map_err(|m| ConfigError::invalid("role_arn", m))?;
        let session_name = match &config.session_name {
            Some(name) => RoleSessionName::parse(name.trim()).map_err(|m| ConfigError::invalid("session_name", m))?,
            None => RoleSessionName::from_host(host.var("HOSTNAME").or_else(|| host.hostname_file.clone()).as_deref()),
        };
        validate_duration(config.duration).map_err(|m| ConfigError::invalid("duration", m))?;
        let policy =
            config.policy.as_deref().map(validate_policy).transpose().map_err(|m| ConfigError::invalid("policy", m))?;
        let policy_arns =
            validate_policy_arns(&config.policy_arns).map_err(|m| ConfigError::invalid("policy_arns", m))?;
        let region = region(config, host)?;
        let sts_endpoint =
            config.sts_endpoint.as_deref().map(|v| upstream::endpoint("aws.sts_endpoint", v)).transpose()?;
        let ca_certs = match &config.ca_file {
            Some(path) => trusted_certificates(path)?,
            None => Vec::new(),
        };
        let account_id = match &config.account_id {
            Some(id) if id.len() == 12 && id.bytes().all(|b| b.is_ascii_digit()) => id.clone(),
            Some(id) => {
                return Err(ConfigError::invalid("account_id", format!("{id:?} is not a 12-digit AWS account id")));
            }
            None => role.account().to_owned(),
        };
        let container = config
            .container_credentials
            .then(|| {
                validate_container_path(&config.container_path).map(|path| ContainerSettings {
                    path,
                    token: config.authorization_token.clone(),
                    token_file: config.authorization_token_file.clone(),
                })
            })
            .transpose()?;
        let imds = config.imds.then(|| imds_settings(config)).transpose()?;
        let mut settings = Self {
            source,
            role,
            session_name,
            duration: config.duration,
            policy,
            policy_arns,
            region,
            sts_endpoint,
            ca_certs,
            account_id,
            container,
            imds,
            roles: Vec::new(),
        };
        settings.roles = crate::roles::resolve(&config.roles, &settings, &config.container_path)?;
        Ok(settings)
    }
}

pub(crate) fn validate_duration(duration: Duration) -> Result<(), String> {
    if (DURATION_MIN..=DURATION_MAX).contains(&duration) {
        return Ok(());
    }
    Err(format!(
        "{} is outside what STS accepts: use 15m to 12h (and at most the role's maximum session duration)",
        humantime::format_duration(duration)
    ))
}

/// The audience GitHub Actions tokens are minted for by default (aws-actions/configure-aws-credentials').
const GITHUB_ACTIONS_AUDIENCE: &str = "sts.amazonaws.com";

/// `[aws.source]`, else `token_file`, else GitHub Actions inside a job.
fn token_source(config: &Config, host: &Host<'_>) -> Result<keyless_core::SourceSpec, ConfigError> {
    let defaults = keyless_core::SourceDefaults { audience: GITHUB_ACTIONS_AUDIENCE.to_owned() };
    if let Some(source) = &config.source {
        return source.resolve(&defaults, host.env).map_err(|m| ConfigError::invalid("source", m));
    }
    if !config.token_file.as_os_str().is_empty() {
        return Ok(keyless_core::SourceSpec::File(config.token_file.clone()));
    }
    keyless_core::source::detected(&defaults, host.env).ok_or_else(|| {
        ConfigError::invalid(
            "token_file",
            "is empty: set it to the projected service-account token's path, or configure [aws.source] \
             (docs/configuration.md: GitHub Actions, an environment variable, a URL, a command)",
        )
    })
}

/// The message says what is wrong with the value; the caller names its key (`aws.policy`, or a
/// named role's).
pub(crate) fn validate_policy(policy: &str) -> Result<String, String> {
    // docs/protocols.md 2.1: Policy <= 2048 characters. A syntax error is caught here rather than as a
    // MalformedPolicyDocument on every exchange.
    if policy.chars().count() > 2048 {
        return Err("is longer than the 2048 characters STS accepts: use policy_arns for larger policies".to_owned());
    }
    serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(policy)
        .map_err(|e| format!("is not a JSON policy document: {e}"))?;
    Ok(policy.to_owned())
}

/// As [`validate_policy`], for `policy_arns`.
pub(crate) fn validate_policy_arns(arns: &[String]) -> Result<Vec<String>, String> {
    if arns.len() > 10 {
        return Err(format!("lists {} policies; STS accepts at most 10", arns.len()));
    }
    arns.iter()
        .map(|arn| {
            let arn = arn.trim();
            if arn.starts_with("arn:") && (20..=2048).contains(&arn.len()) {
                Ok(arn.to_owned())
            } else {
                Err(format!("{arn:?} is not a policy ARN (arn:aws:iam::aws:policy/NAME)"))
            }
        })
        .collect()
}

/// `aws.region`, else `AWS_REGION`, else `AWS_DEFAULT_REGION`, else `us-east-1`.
fn region(config: &Config, host: &Host<'_>) -> Result<String, ConfigError> {
    let region = config
        .region
        .clone()
        .or_else(|| host.var("AWS_REGION"))
        .or_else(|| host.var("AWS_DEFAULT_REGION"))
        .unwrap_or_else(|| "us-east-1".to_owned());
    let region = region.trim().to_owned();
    let region_ok =
        !region.is_empty() && region.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !region_ok {
        return Err(ConfigError::invalid("region", format!("{region:?} is not a region name (e.g. us-east-1)")));
    }
    Ok(region)
}

/// The IMDSv2 emulation's limits, checked against what EC2 allows.
fn imds_settings(config: &Config) -> Result<ImdsSettings, ConfigError> {
    if !(Duration::from_secs(1)..=IMDS_TTL_MAX).contains(&config.imds_session_ttl_max) {
        return Err(ConfigError::invalid(
            "imds_session_ttl_max",
            "must be between 1s and 6h (the IMDS token TTL range)",
        ));
    }
    if !(1..=65_536).contains(&config.imds_max_sessions) {
        return Err(ConfigError::invalid("imds_max_sessions", "must be between 1 and 65536"));
    }
    Ok(ImdsSettings {
        v1: config.imds_v1,
        session_ttl_max: config.imds_session_ttl_max,
        max_sessions: config.imds_max_sessions,
    })
}

/// A plain path; whether it collides with another endpoint is checked over every provider's
/// routes by the binary (`keyless_provider::routes::check`).
fn validate_container_path(path: &str) -> Result<String, ConfigError> {
    keyless_provider::routes::plain_path(path).map_err(|m| ConfigError::invalid("container_path", m))?;
    Ok(path.to_owned())
}

/// The certificates of `path` that can be trust anchors, one PEM block each. Unusable ones are
/// skipped (a system bundle may hold a few); the SDK's TLS setup would panic on them.
fn trusted_certificates(path: &Path) -> Result<Vec<String>, ConfigError> {
    let pem = upstream::ca_bundle("aws.ca_file", path)?;
    let mut usable = Vec::new();
    let mut skipped = 0usize;
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let Ok(cert) = cert else {
            skipped += 1;
            continue;
        };
        let mut probe = rustls::RootCertStore::empty();
        if probe.add(cert.clone()).is_ok() {
            usable.push(to_pem(&cert));
        } else {
            skipped += 1;
        }
    }
    if skipped > 0 {
        tracing::warn!(path = %path.display(), skipped, "aws.ca_file: skipped certificates that cannot be trust anchors");
    }
    if usable.is_empty() {
        return Err(ConfigError::invalid(
            "ca_file",
            format!("{} holds no usable CA certificate: give a PEM file of CA certificates", path.display()),
        ));
    }
    Ok(usable)
}

fn to_pem(cert: &CertificateDer<'_>) -> String {
    let b64 = STANDARD.encode(cert.as_ref());
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}

#[cfg(test)]
#[path = "settings_tests.rs"]
mod tests;
