//! Named roles beside the default one (`[[aws.roles]]`): each exchanged with the same subject
//! token, served on its own container-credentials path and through
//! `keyless credential-process --role NAME`.
//!
//! IMDS keeps serving the default role only: an EC2 instance profile holds exactly one role, and
//! SDKs read only the first name `iam/security-credentials/` lists (docs/protocols.md 2.3).

use std::time::Duration;

use serde::Deserialize;

use crate::error::ConfigError;
use crate::settings::{RoleArn, RoleSessionName, Settings};

/// One `[[aws.roles]]` entry. Unset keys take the default role's values (session name,
/// duration); policies are per role and default to none.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleConfig {
    /// What `credential-process --role` takes and the default path names: `[A-Za-z0-9_.-]`,
    /// 1-64 characters, unique.
    pub name: String,
    /// The IAM role to assume.
    pub role_arn: String,
    /// `RoleSessionName`; default: the default role's.
    #[serde(default)]
    pub session_name: Option<String>,
    /// Requested credential lifetime, 15m..12h; default: the default role's.
    #[serde(default, with = "humantime_serde")]
    pub duration: Option<Duration>,
    /// Inline session policy (JSON, at most 2048 characters).
    #[serde(default)]
    pub policy: Option<String>,
    /// Managed policy ARNs narrowing the role's permissions (at most 10).
    #[serde(default)]
    pub policy_arns: Vec<String>,
    /// Its container-credentials path; default `{aws.container_path}/roles/{name}`.
    #[serde(default)]
    pub container_path: Option<String>,
}

impl RoleConfig {
    /// A role with every optional key at its default.
    pub fn new(name: impl Into<String>, role_arn: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            role_arn: role_arn.into(),
            session_name: None,
            duration: None,
            policy: None,
            policy_arns: Vec::new(),
            container_path: None,
        }
    }
}

/// A validated named role.
#[derive(Debug, Clone)]
pub(crate) struct NamedRole {
    pub(crate) name: String,
    pub(crate) role: RoleArn,
    pub(crate) session_name: RoleSessionName,
    pub(crate) duration: Duration,
    pub(crate) policy: Option<String>,
    pub(crate) policy_arns: Vec<String>,
    /// Where the container endpoint serves it.
    pub(crate) path: String,
}

/// The path of `name` when its entry names none: under the default container path, so it can
/// only collide where the default path already would.
pub(crate) fn default_path(container_path: &str, name: &str) -> String {
    format!("{}/roles/{name}", container_path.trim_end_matches('/'))
}

/// Validates every entry against the default role's settings: names well formed and unique,
/// each role's own values as STS accepts them.
pub(crate) fn resolve(
    roles: &[RoleConfig],
    default: &Settings,
    container_path: &str,
) -> Result<Vec<NamedRole>, ConfigError> {
    let mut named: Vec<NamedRole> = Vec::with_capacity(roles.len());
    for entry in roles {
        let role = resolve_one(entry, default, container_path)?;
        if named.iter().any(|n| n.name == role.name) {
            return Err(ConfigError::invalid(
                "roles",
                format!("the name {:?} is given to two roles: every [[aws.roles]] entry needs its own name", role.name),
            ));
        }
        named.push(role);
    }
    Ok(named)
}

fn resolve_one(entry: &RoleConfig, default: &Settings, container_path: &str) -> Result<NamedRole, ConfigError> {
    let name = validate_name(&entry.name)?;
    let invalid = |m: String| ConfigError::invalid("roles", format!("role {name:?}: {m}"));
    let role = RoleArn::parse(entry.role_arn.trim()).map_err(|m| invalid(format!("role_arn {m}")))?;
    let session_name = match &entry.session_name {
        Some(s) => RoleSessionName::parse(s.trim()).map_err(|m| invalid(format!("session_name {m}")))?,
        None => default.session_name.clone(),
    };
    let duration = entry.duration.unwrap_or(default.duration);
    crate::settings::validate_duration(duration).map_err(|m| invalid(format!("duration {m}")))?;
    let policy = entry
        .policy
        .as_deref()
        .map(crate::settings::validate_policy)
        .transpose()
        .map_err(|m| invalid(format!("policy {m}")))?;
    let policy_arns =
        crate::settings::validate_policy_arns(&entry.policy_arns).map_err(|m| invalid(format!("policy_arns {m}")))?;
    let path = match &entry.container_path {
        Some(path) => {
            keyless_provider::routes::plain_path(path).map_err(|m| invalid(format!("container_path {m}")))?;
            path.clone()
        }
        None => default_path(container_path, &name),
    };
    Ok(NamedRole { name, role, session_name, duration, policy, policy_arns, path })
}

/// Whether `name` can name a role (`[[aws.roles]]`, `credential-process --role`): safe in a URL
/// path segment and in a shell profile line.
pub fn is_role_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        && !name.starts_with('.')
}

fn validate_name(name: &str) -> Result<String, ConfigError> {
    if !is_role_name(name) {
        return Err(ConfigError::invalid(
            "roles",
            format!("the name {name:?} must be 1 to 64 letters, digits, '_', '.' or '-' (not starting with '.')"),
        ));
    }
    Ok(name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::settings::Host;

    fn resolve_with(roles: Vec<RoleConfig>) -> Result<Settings, ConfigError> {
        let mut config = Config::new("/t", "arn:aws:iam::123456789012:role/app");
        config.session_name = Some("pod-1".into());
        config.policy_arns = vec!["arn:aws:iam::aws:policy/ReadOnlyAccess".into()];
        config.roles = roles;
        Settings::resolve(&config, &Host { env: &|_| None, hostname_file: None })
    }

    #[test]
    fn a_named_role_takes_the_default_session_and_duration_but_not_its_policies() {
        let mut writer = RoleConfig::new("writer", "arn:aws:iam::210987654321:role/writer");
        writer.duration = Some(Duration::from_secs(7200));
        let settings = resolve_with(vec![writer, RoleConfig::new("reader.v2", "arn:aws:iam::123456789012:role/r")])
            .expect("valid");
        let [writer, reader] = settings.roles.as_slice() else { panic!("two roles: {:?}", settings.roles) };
        assert_eq!(
            (writer.path.as_str(), reader.path.as_str()),
            ("/v1/credentials/roles/writer", "/v1/credentials/roles/reader.v2")
        );
        assert_eq!((writer.session_name.as_str(), writer.duration), ("pod-1", Duration::from_secs(7200)));
        assert_eq!(reader.duration, settings.duration);
        assert!(writer.policy_arns.is_empty());
        assert_eq!(
            (writer.role.as_str(), writer.role.account()),
            ("arn:aws:iam::210987654321:role/writer", "210987654321")
        );
    }

    #[test]
    fn names_must_be_unique_and_path_safe() {
        let twice = vec![
            RoleConfig::new("w", "arn:aws:iam::123456789012:role/a"),
            RoleConfig::new("w", "arn:aws:iam::123456789012:role/b"),
        ];
        let err = resolve_with(twice).expect_err("duplicate").to_string();
        assert!(err.starts_with("aws.roles: the name \"w\" is given to two roles"), "{err}");
        for bad in ["", "a/b", ".x", "a b", "{x}", &"n".repeat(65)] {
            let err = resolve_with(vec![RoleConfig::new(bad, "arn:aws:iam::123456789012:role/a")])
                .expect_err(bad)
                .to_string();
            assert!(err.contains("must be 1 to 64 letters"), "{err}");
        }
    }

    #[test]
    fn each_role_is_validated_and_the_error_names_it() {
        let mut bad = RoleConfig::new("writer", "arn:aws:iam::123456789012:role/w");
        bad.duration = Some(Duration::from_secs(60));
        let err = resolve_with(vec![bad]).expect_err("too short").to_string();
        assert!(err.starts_with("aws.roles: role \"writer\": duration 1m is outside"), "{err}");
        let err =
            resolve_with(vec![RoleConfig::new("writer", "not-an-arn-but-long-enough")]).expect_err("arn").to_string();
        assert!(err.contains("role \"writer\": role_arn") && err.contains("is not an IAM ARN"), "{err}");
        // A named role's policies are its own: the error names the role, not `aws.policy`.
        let mut bad = RoleConfig::new("writer", "arn:aws:iam::123456789012:role/w");
        bad.policy = Some("not json".into());
        let err = resolve_with(vec![bad]).expect_err("policy").to_string();
        assert!(err.starts_with("aws.roles: role \"writer\": policy is not a JSON policy document"), "{err}");
        let mut bad = RoleConfig::new("writer", "arn:aws:iam::123456789012:role/w");
        bad.policy_arns = vec!["nope".into()];
        let err = resolve_with(vec![bad]).expect_err("policy_arns").to_string();
        assert!(err.starts_with("aws.roles: role \"writer\": policy_arns \"nope\" is not a policy ARN"), "{err}");
        let mut bad = RoleConfig::new("writer", "arn:aws:iam::123456789012:role/w");
        bad.container_path = Some("no-slash".into());
        let err = resolve_with(vec![bad]).expect_err("path").to_string();
        assert!(err.contains("role \"writer\": container_path"), "{err}");
    }
}
