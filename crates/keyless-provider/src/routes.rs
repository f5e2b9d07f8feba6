//! Route claims: every provider declares the paths it will serve and the config key behind each,
//! and one place checks the whole set before anything listens. Two providers (or two settings of
//! one) claiming the same path is a configuration error naming both keys, never a panic.

use std::fmt;

/// One path a provider will serve, in axum's route syntax (`/latest/{*path}` claims everything
/// under `/latest/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteClaim {
    /// The axum route.
    pub route: String,
    /// Who claims it, as a user can find it in the config: a key (`aws.container_path`) or, for
    /// a fixed route, the setting that turns it on (`aws.imds`).
    pub key: String,
    /// A catch-all that answers only what no other route does (every more specific route is
    /// matched before it): another claim under it is no collision, the same path still is.
    pub fallback: bool,
}

impl RouteClaim {
    pub fn new(route: impl Into<String>, key: impl Into<String>) -> Self {
        Self { route: route.into(), key: key.into(), fallback: false }
    }

    /// A [`RouteClaim::fallback`] catch-all (`/v1/credentials/roles/{*name}`: the role names no
    /// role is served on).
    pub fn fallback(route: impl Into<String>, key: impl Into<String>) -> Self {
        Self { fallback: true, ..Self::new(route, key) }
    }

    /// The literal part of the route: everything before the first `{`.
    fn literal(&self) -> &str {
        self.route.split('{').next().unwrap_or_default()
    }

    /// `Some(prefix)` when the route is a catch-all: every path starting with `prefix` is claimed.
    fn catch_all_prefix(&self) -> Option<&str> {
        self.route.find("{*").map(|at| &self.route[..at])
    }

    /// Whether this claim would answer a request for `path`, as far as keyless's own routes go
    /// (its routes are literal paths and trailing catch-alls).
    fn covers(&self, path: &str) -> bool {
        match self.catch_all_prefix() {
            Some(prefix) => path.starts_with(prefix),
            None => self.route == path,
        }
    }
}

/// Two claims that cannot both be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct RouteCollision {
    pub first: Box<RouteClaim>,
    pub second: Box<RouteClaim>,
    pub reason: String,
}

impl fmt::Display for RouteCollision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "route collision: {} (path {}) and {} (path {}) {}; every endpoint needs its own path on the listener: \
             change one of these settings",
            self.first.key, self.first.route, self.second.key, self.second.route, self.reason
        )
    }
}

/// Checks every claim of every enabled provider against every other: a path claimed twice, a
/// path inside another claim's catch-all, or routes axum's router cannot hold together (see
/// [`check_servable`]). Claims under the same key are one setting's own routes and are not
/// checked for overlap with each other.
pub fn check(claims: &[RouteClaim]) -> Result<(), RouteCollision> {
    for (i, first) in claims.iter().enumerate() {
        for second in &claims[i + 1..] {
            if first.key == second.key {
                continue;
            }
            let overlaps =
                |a: &RouteClaim, b: &RouteClaim| a.covers(b.literal()) && !(a.fallback && a.route != b.route);
            if overlaps(first, second) || overlaps(second, first) {
                let reason = if first.route == second.route {
                    "claim the same path"
                } else {
                    "overlap: one path lies under the other's catch-all"
                };
                return Err(RouteCollision {
                    first: Box::new(first.clone()),
                    second: Box::new(second.clone()),
                    reason: reason.to_owned(),
                });
            }
        }
    }
    check_servable(claims)
}

/// Checks routes as the listener's route table ([`crate::Routes`]) will hold them: each
/// well-formed, none twice, and all accepted together by matchit (the engine of that table and
/// of axum's router). What passes cannot make building a router fail or panic.
pub fn check_servable(routes: &[RouteClaim]) -> Result<(), RouteCollision> {
    let mut router = matchit::Router::new();
    for (i, claim) in routes.iter().enumerate() {
        if let Some(reason) = malformed(&claim.route) {
            return Err(RouteCollision { first: Box::new(claim.clone()), second: Box::new(claim.clone()), reason });
        }
        if let Some(first) = routes[..i].iter().find(|c| c.route == claim.route) {
            return Err(RouteCollision {
                first: Box::new(first.clone()),
                second: Box::new(claim.clone()),
                reason: "claim the same path".to_owned(),
            });
        }
        if let Err(e) = router.insert(claim.route.as_str(), i) {
            let other = match &e {
                matchit::InsertError::Conflict { with } => routes.iter().find(|c| &c.route == with),
                _ => None,
            };
            return Err(RouteCollision {
                first: Box::new(other.unwrap_or(claim).clone()),
                second: Box::new(claim.clone()),
                reason: format!("cannot be routed together ({e})"),
            });
        }
    }
    Ok(())
}

/// Checks a user-configured endpoint path (`aws.container_path`, `azure.app_service_path`): a
/// plain absolute URL path, so that it is one literal route (no `{param}` or `*` syntax).
pub fn plain_path(path: &str) -> Result<(), String> {
    let well_formed = path.starts_with('/')
        && path.len() > 1
        && path.len() <= 256
        && path.bytes().all(|b| b.is_ascii_alphanumeric() || b"/-_.~".contains(&b))
        && !path.contains("//");
    if well_formed {
        Ok(())
    } else {
        Err(format!(
            "{path:?} is not a plain absolute URL path: it must start with /, be at most 256 characters of \
             letters, digits and / - _ . ~, without //"
        ))
    }
}

/// What axum would refuse (by panicking) in a single route.
fn malformed(route: &str) -> Option<String> {
    if !route.starts_with('/') {
        return Some("is not a path: it must start with /".to_owned());
    }
    let mut probe = matchit::Router::new();
    probe.insert(route, ()).err().map(|e| format!("is not a valid route ({e})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> Vec<RouteClaim> {
        vec![
            RouteClaim::new("/v1/credentials", "aws.container_path"),
            RouteClaim::new("/latest/api/token", "aws.imds"),
            RouteClaim::new("/latest/{*path}", "aws.imds"),
            RouteClaim::new("/", "gcp"),
            RouteClaim::new("/computeMetadata", "gcp"),
            RouteClaim::new("/computeMetadata/", "gcp"),
            RouteClaim::new("/computeMetadata/{*path}", "gcp"),
            RouteClaim::new("/metadata/identity/oauth2/token", "azure.imds"),
            RouteClaim::new("/metadata/identity/oauth2/token/", "azure.imds"),
            RouteClaim::new("/msi/token", "azure.app_service_path"),
        ]
    }

    #[test]
    fn the_default_routes_of_all_three_clouds_coexist() {
        assert_eq!(check(&defaults()), Ok(()));
    }

    #[test]
    fn collisions_name_both_keys() {
        let cases: &[(&str, &str, &str)] = &[
            // (key, path, the key it must collide with)
            ("aws.container_path", "/msi/token", "azure.app_service_path"),
            ("aws.container_path", "/metadata/identity/oauth2/token", "azure.imds"),
            ("azure.app_service_path", "/latest/meta-data/creds", "aws.imds"),
            ("azure.app_service_path", "/computeMetadata/v1/token", "gcp"),
            ("aws.container_path", "/", "gcp"),
        ];
        for (key, path, other) in cases {
            let mut claims: Vec<_> = defaults().into_iter().filter(|c| c.key != *key).collect();
            claims.push(RouteClaim::new(*path, *key));
            let err = check(&claims).expect_err(&format!("{key} = {path} must collide"));
            let message = err.to_string();
            assert!(message.contains(key) && message.contains(other), "{key} = {path}: {message}");
        }
    }

    /// A fallback catch-all yields to every more specific route, another provider's too; the
    /// same path is still a collision, and a plain catch-all still collides with what lies under it.
    #[test]
    fn a_fallback_catch_all_yields_to_the_routes_under_it() {
        let mut claims = defaults();
        claims.push(RouteClaim::fallback("/v1/credentials/roles/{*name}", "aws.container_path"));
        claims.push(RouteClaim::new("/v1/credentials/roles/writer", "aws.roles[writer].container_path"));
        claims.push(RouteClaim::new("/v1/credentials/roles/x", "azure.app_service_path"));
        assert_eq!(check(&claims), Ok(()));
        claims.push(RouteClaim::new("/v1/credentials/roles/{*name}", "gcp.other"));
        assert!(check(&claims).is_err(), "the same path");
        let plain = vec![
            RouteClaim::new("/v1/credentials/roles/{*name}", "aws.container_path"),
            RouteClaim::new("/v1/credentials/roles/writer", "aws.roles[writer].container_path"),
        ];
        assert!(check(&plain).is_err(), "a plain catch-all still collides");
    }

    #[test]
    fn routes_axum_would_panic_on_are_refused() {
        for bad in ["no-slash", "/a/{x", "/{*rest}/more", "/a/{}"] {
            let claims = vec![RouteClaim::new(bad, "aws.container_path")];
            let err = check(&claims).expect_err(bad);
            assert!(err.to_string().contains("aws.container_path"), "{err}");
        }
        // Two parameters with different names at the same place conflict in matchit.
        let claims =
            vec![RouteClaim::new("/x/{a}", "aws.container_path"), RouteClaim::new("/x/{b}", "azure.app_service_path")];
        assert!(check(&claims).is_err());
    }

    #[test]
    fn configured_paths_are_plain() {
        for good in ["/v1/credentials", "/msi/token", "/a-b_c.d~e"] {
            assert_eq!(plain_path(good), Ok(()), "{good}");
        }
        for bad in ["", "/", "v1", "/a//b", "/{x}", "/a*", "/a b", "/a?b", &format!("/{}", "a".repeat(256))] {
            assert!(plain_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn routes_of_one_setting_are_not_compared_with_each_other() {
        let claims =
            vec![RouteClaim::new("/latest/api/token", "aws.imds"), RouteClaim::new("/latest/{*path}", "aws.imds")];
        assert_eq!(check(&claims), Ok(()));
    }
}
