//! The names Entra ID deals in, each validated once where it is parsed: tenant, client id,
//! resource, and the `/.default` scope a resource becomes (docs/protocols.md 4.1).

use std::fmt;
use std::sync::Arc;

/// Longest resource accepted from config or a request. App ID URIs are short; the bound keeps a
/// request from making keyless send arbitrary amounts of data upstream.
const MAX_RESOURCE_LEN: usize = 1024;

/// The `/.default` suffix that turns a v1 resource into a v2 scope.
const DEFAULT_SUFFIX: &str = "/.default";

/// A directory (tenant): a GUID or a verified domain such as `contoso.onmicrosoft.com`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TenantId(String);

impl TenantId {
    pub fn parse(value: &str) -> Result<Self, String> {
        let value = value.trim();
        let valid = !value.is_empty()
            && value.len() <= 256
            && value.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
        if valid {
            Ok(Self(value.to_owned()))
        } else {
            Err(format!(
                "{value:?} is not a tenant id: use the directory (tenant) GUID or a verified domain \
                 such as contoso.onmicrosoft.com (letters, digits, '-' and '.' only)"
            ))
        }
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An application (client) id: the app registration's or user-assigned managed identity's GUID.
/// Kept as configured; requests name it case-insensitively (GUIDs are, and msal-node lower-cases
/// the whole URL it sends, docs/protocols.md 4.2). Shared: every token request's cache key holds one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClientId(Arc<str>);

impl ClientId {
    pub fn parse(value: &str) -> Result<Self, String> {
        let value = value.trim();
        let valid =
            !value.is_empty() && value.len() <= 128 && value.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        if valid {
            Ok(Self(Arc::from(value)))
        } else {
            Err(format!(
                "{value:?} is not a client id: use the Application (client) ID GUID of the app \
                 registration or of the user-assigned managed identity"
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether a request's `client_id` names this client.
    pub fn is_named_by(&self, candidate: &str) -> bool {
        self.0.eq_ignore_ascii_case(candidate.trim())
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A v2 scope of the form `{resource}/.default`. Keyless caches and exchanges per exact scope, so
/// `https://management.azure.com` and `https://management.azure.com/` are distinct entries, each
/// served back with the resource its client asked for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Scope(String);

impl Scope {
    /// The scope of `resource`: `/.default` appended verbatim, so a trailing slash stays and
    /// becomes `//.default` (docs/protocols.md 4.1).
    pub fn for_resource(resource: &str) -> Result<Self, String> {
        if resource.is_empty() {
            return Err("the resource is empty".to_owned());
        }
        if resource.len() > MAX_RESOURCE_LEN {
            return Err(format!("the resource is longer than {MAX_RESOURCE_LEN} bytes"));
        }
        if resource.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!("the resource {resource:?} contains whitespace"));
        }
        if resource.ends_with(DEFAULT_SUFFIX) {
            return Err(format!(
                "{resource:?} is a scope, not a resource: drop the trailing /.default \
                 (managed-identity endpoints take the resource, e.g. https://management.azure.com/)"
            ));
        }
        let mut scope = String::with_capacity(resource.len() + DEFAULT_SUFFIX.len());
        scope.push_str(resource);
        scope.push_str(DEFAULT_SUFFIX);
        Ok(Self(scope))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The resource this scope was made from: the scope with only its `/.default` suffix removed.
    pub fn resource(&self) -> &str {
        self.0.strip_suffix(DEFAULT_SUFFIX).unwrap_or(&self.0)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_appends_default_verbatim_and_reverses_exactly() {
        let with_slash = Scope::for_resource("https://management.azure.com/").expect("resource");
        assert_eq!(with_slash.as_str(), "https://management.azure.com//.default");
        assert_eq!(with_slash.resource(), "https://management.azure.com/");
        let without = Scope::for_resource("https://management.azure.com").expect("resource");
        assert_eq!(without.as_str(), "https://management.azure.com/.default");
        assert_eq!(without.resource(), "https://management.azure.com");
        assert_ne!(with_slash, without);
        let app = Scope::for_resource("api://my-app").expect("resource");
        assert_eq!(app.resource(), "api://my-app");
    }

    #[test]
    fn scope_refuses_scopes_blanks_and_oversized_resources() {
        assert!(Scope::for_resource("").is_err());
        assert!(Scope::for_resource("https://x y").is_err());
        assert!(Scope::for_resource(&"a".repeat(MAX_RESOURCE_LEN + 1)).is_err());
        let err = Scope::for_resource("https://vault.azure.net/.default").expect_err("a scope");
        assert!(err.contains("drop the trailing /.default"));
    }

    #[test]
    fn client_ids_are_guid_like_and_matched_case_insensitively() {
        let id = ClientId::parse("00000000-AAAA-4000-8000-000000000001").expect("client id");
        assert!(id.is_named_by("00000000-aaaa-4000-8000-000000000001"));
        assert!(!id.is_named_by("00000000-aaaa-4000-8000-000000000002"));
        assert!(ClientId::parse("").is_err());
        assert!(ClientId::parse("a b").is_err());
        assert!(ClientId::parse("../x").is_err());
    }

    #[test]
    fn tenant_ids_are_guids_or_domains() {
        assert!(TenantId::parse("72f988bf-86f1-41af-91ab-2d7cd011db47").is_ok());
        assert!(TenantId::parse("contoso.onmicrosoft.com").is_ok());
        assert!(TenantId::parse("a/b").is_err());
        assert!(TenantId::parse("").is_err());
    }
}
