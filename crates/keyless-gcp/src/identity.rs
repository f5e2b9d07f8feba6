//! The names GCP identities are made of, validated once where they are parsed.

use std::collections::BTreeSet;
use std::fmt;

use crate::ConfigError;

/// `https://www.googleapis.com/auth/cloud-platform`: the scope IAM Credentials needs from the
/// federated token, and the default scope of served access tokens.
pub(crate) const CLOUD_PLATFORM: &str = "https://www.googleapis.com/auth/cloud-platform";

/// The STS audience: the full resource name of a workload identity pool provider,
/// `//iam.googleapis.com/projects/NUM/locations/global/workloadIdentityPools/POOL/providers/PROV`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PoolProvider {
    audience: String,
    iam_host: String,
    project_number: String,
    location: String,
    pool: String,
    provider: String,
}

impl PoolProvider {
    pub(crate) fn parse(key: &str, audience: &str) -> Result<Self, ConfigError> {
        let invalid = || {
            ConfigError::invalid(
                key,
                format!(
                    "{audience:?} is not a workload identity pool provider name; expected \
                     //iam.googleapis.com/projects/PROJECT_NUMBER/locations/global/workloadIdentityPools/POOL/providers/PROVIDER \
                     (gcloud iam workload-identity-pools providers describe PROVIDER --workload-identity-pool=POOL \
                     --location=global --format='value(name)' prints it without the leading //iam.googleapis.com/)"
                ),
            )
        };
        let rest = audience.strip_prefix("//").ok_or_else(invalid)?;
        let parts: Vec<&str> = rest.split('/').collect();
        let [iam_host, "projects", number, "locations", location, "workloadIdentityPools", pool, "providers", provider] =
            parts.as_slice()
        else {
            return Err(invalid());
        };
        let segment_ok = |s: &str| {
            !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        };
        if !iam_host.starts_with("iam.")
            || !is_project_number(number)
            || ![location, pool, provider].into_iter().all(|s| segment_ok(s))
        {
            return Err(invalid());
        }
        Ok(Self {
            audience: audience.to_owned(),
            iam_host: (*iam_host).to_owned(),
            project_number: (*number).to_owned(),
            location: (*location).to_owned(),
            pool: (*pool).to_owned(),
            provider: (*provider).to_owned(),
        })
    }

    pub(crate) fn audience(&self) -> &str {
        &self.audience
    }

    pub(crate) fn project_number(&self) -> &str {
        &self.project_number
    }

    pub(crate) fn pool(&self) -> &str {
        &self.pool
    }

    pub(crate) fn provider(&self) -> &str {
        &self.provider
    }

    /// The IAM member that a federated token for subject `sub` acts as (with the usual attribute
    /// mapping `google.subject=assertion.sub`).
    pub(crate) fn principal(&self, sub: &str) -> String {
        format!(
            "principal://{}/projects/{}/locations/{}/workloadIdentityPools/{}/subject/{sub}",
            self.iam_host, self.project_number, self.location, self.pool
        )
    }
}

pub(crate) fn is_project_number(s: &str) -> bool {
    !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit())
}

/// A service-account e-mail (`name@project.iam.gserviceaccount.com`).
pub(crate) fn validate_email(key: &str, email: &str) -> Result<(), ConfigError> {
    let well_formed = email.len() <= 254
        && email.split('@').count() == 2
        && !email.starts_with('@')
        && !email.ends_with('@')
        && email.bytes().all(|b| b.is_ascii_alphanumeric() || b"@.-_+".contains(&b));
    if well_formed {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            key,
            format!("{email:?} is not a service-account e-mail (expected NAME@PROJECT.iam.gserviceaccount.com)"),
        ))
    }
}

/// A project id as served on `project/project-id` (text, so no whitespace or separators).
pub(crate) fn validate_project_id(key: &str, id: &str) -> Result<(), ConfigError> {
    let well_formed =
        !id.is_empty() && id.len() <= 100 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.:_".contains(&b));
    if well_formed {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            key,
            format!("{id:?} is not a project id (lowercase letters, digits and hyphens, e.g. my-project-123)"),
        ))
    }
}

/// Most scopes one token request may name (the cache key must stay small).
pub(crate) const MAX_SCOPES: usize = 32;
const MAX_SCOPE_LEN: usize = 512;

/// A set of OAuth scopes: order and duplicates do not make a different token.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) struct ScopeSet(BTreeSet<String>);

impl ScopeSet {
    /// `Err` says what is wrong with the scopes (for a config key or a request parameter).
    pub(crate) fn new<I, S>(scopes: I) -> Result<Self, String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut set = BTreeSet::new();
        for scope in scopes {
            let scope = scope.as_ref().trim();
            if scope.is_empty() {
                continue;
            }
            if scope.len() > MAX_SCOPE_LEN
                || scope.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control() || b == b',')
            {
                // The client's text, quoted back: escaped and bounded.
                let shown = keyless_core::printable::printable(scope, 100);
                return Err(format!(
                    "\"{shown}\" is not an OAuth scope (a URL such as {CLOUD_PLATFORM}, at most {MAX_SCOPE_LEN} characters)"
                ));
            }
            set.insert(scope.to_owned());
            if set.len() > MAX_SCOPES {
                return Err(format!("more than {MAX_SCOPES} scopes"));
            }
        }
        if set.is_empty() {
            return Err("no scope given".to_owned());
        }
        Ok(Self(set))
    }

    pub(crate) fn cloud_platform() -> Self {
        Self(BTreeSet::from([CLOUD_PLATFORM.to_owned()]))
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(String::as_str)
    }

    /// Space-separated, as the STS `scope` parameter wants them.
    pub(crate) fn space_separated(&self) -> String {
        self.iter().collect::<Vec<_>>().join(" ")
    }
}

impl fmt::Debug for ScopeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AUDIENCE: &str =
        "//iam.googleapis.com/projects/123456789/locations/global/workloadIdentityPools/my-pool/providers/k8s";

    #[test]
    fn parses_the_provider_name_and_builds_the_principal_member() {
        let p = PoolProvider::parse("gcp.audience", AUDIENCE).expect("valid audience");
        assert_eq!(p.project_number(), "123456789");
        assert_eq!(p.pool(), "my-pool");
        assert_eq!(p.provider(), "k8s");
        assert_eq!(
            p.principal("system:serviceaccount:ns:app"),
            "principal://iam.googleapis.com/projects/123456789/locations/global/workloadIdentityPools/my-pool/subject/system:serviceaccount:ns:app"
        );
    }

    #[test]
    fn rejects_audiences_that_are_not_provider_names() {
        for bad in [
            "sts.amazonaws.com",
            "//iam.googleapis.com/projects/abc/locations/global/workloadIdentityPools/p/providers/x",
            "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p",
            "iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/x",
        ] {
            let err = PoolProvider::parse("gcp.audience", bad).expect_err(bad);
            assert!(err.to_string().starts_with("gcp.audience: "), "{err}");
        }
    }

    #[test]
    fn scope_sets_ignore_order_and_duplicates() {
        let a = ScopeSet::new(["b", "a", "a"]).expect("scopes");
        let b = ScopeSet::new(["a", "b"]).expect("scopes");
        assert_eq!(a, b);
        assert_eq!(a.space_separated(), "a b");
        assert!(ScopeSet::new(["has space"]).is_err());
        assert!(ScopeSet::new(Vec::<String>::new()).is_err());
        assert!(ScopeSet::new((0..=MAX_SCOPES).map(|i| format!("s{i}"))).is_err());
    }

    #[test]
    fn validates_emails_and_project_ids() {
        assert!(validate_email("k", "app@proj.iam.gserviceaccount.com").is_ok());
        assert!(validate_email("k", "app").is_err());
        assert!(validate_email("k", "a@b@c").is_err());
        assert!(validate_email("k", "a b@c").is_err());
        assert!(validate_project_id("k", "my-project").is_ok());
        assert!(validate_project_id("k", "my project").is_err());
    }
}
