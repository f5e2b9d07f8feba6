//! The providers this binary serves (`keyless-registry`'s list, as [`PROVIDERS`]), and their composition through
//! the contract of `keyless-provider`: configure each from its config section (or, when the
//! section is absent, from the env vars a workload-identity webhook injects), check their routes
//! against each other before anything listens, start them, merge their routes.

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::sync::LazyLock;

use keyless_core::Context;
use keyless_provider::{Configured, Env, Provider, RouteClaim, RouteCollision, Routes, Shadowing, Started};

/// One provider as the binary sees it: a name, and how to configure it. Implemented once, for
/// every [`Provider`], by [`Entry`].
pub trait Registered: Sync {
    fn name(&self) -> &'static str;
    /// Configures the provider from its section, or from `with.env` when there is none.
    /// `None`: neither is there, the provider is off.
    fn configure_choosing(&self, section: Option<config::Value>, with: &ConfigureWith<'_>) -> Option<ProviderConfig>;
    /// The local credential sources SDKs rank above this provider's endpoints.
    fn shadowing(&self) -> &'static Shadowing;
}

/// What every provider is configured with besides its own section: the same for each.
pub struct ConfigureWith<'a> {
    /// The environment detection reads: the context's (`keyless dev`'s is empty; the webhook's
    /// sidecar check passes the sidecar's variables).
    pub env: Env<'a>,
    pub ctx: &'a Context,
    /// The default identity chosen for a provider (`keyless exec --aws-role` and its siblings).
    pub choice: &'a Choice,
}

/// Adapts a [`Provider`] type to [`Registered`].
struct Entry<P>(PhantomData<fn() -> P>);

impl<P: Provider> Registered for Entry<P> {
    fn name(&self) -> &'static str {
        P::NAME
    }

    fn shadowing(&self) -> &'static Shadowing {
        &P::SHADOWING
    }

    fn configure_choosing(&self, section: Option<config::Value>, with: &ConfigureWith<'_>) -> Option<ProviderConfig> {
        let (origin, config) = match section {
            Some(value) => {
                let config = value
                    .try_deserialize::<P::Config>()
                    .map_err(|e| crate::config::explain(&format!("[{}] section: {e}", P::NAME)));
                (Origin::File, config)
            }
            None => match P::from_env(with.env) {
                Ok(None) => return None,
                Ok(Some(config)) => (Origin::Env(P::ENV_ORIGIN), Ok(config)),
                Err(e) => (Origin::Env(P::ENV_ORIGIN), Err(e.to_string())),
            },
        };
        let config = match with.choice.defaults.get(P::NAME) {
            Some(identity) => config.and_then(|c| P::select_default(c, identity).map_err(|e| e.to_string())),
            None => config,
        };
        let configured = config.and_then(|c| P::configure(c, with.ctx).map_err(|e| e.to_string()));
        Some(ProviderConfig { name: P::NAME, origin, configured })
    }
}

/// Every provider, in the order they are configured, started and reported: the list of
/// `keyless-registry` (ARCHITECTURE.md, "Adding a provider").
pub static PROVIDERS: LazyLock<Vec<&'static dyn Registered>> = LazyLock::new(|| {
    struct Entries(Vec<&'static dyn Registered>);
    impl keyless_registry::Visit for Entries {
        fn provider<P: Provider>(&mut self) {
            self.0.push(&Entry::<P>(PhantomData));
        }
    }
    let mut entries = Entries(Vec::new());
    keyless_registry::visit(&mut entries);
    entries.0
});

/// The names of the provider sections.
pub fn names() -> impl Iterator<Item = &'static str> {
    PROVIDERS.iter().map(|p| p.name())
}

/// Where a provider's settings came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    File,
    /// The env vars a workload-identity webhook sets, as named by the provider.
    Env(&'static str),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File => f.write_str("the config file and KEYLESS_* env vars"),
            Origin::Env(vars) => f.write_str(vars),
        }
    }
}

/// The provider sections of the configuration, by provider name (split off the rest of the
/// config by `config::load`).
#[derive(Debug, Default)]
pub struct Sections {
    pub values: BTreeMap<&'static str, config::Value>,
    /// Keys only a `KEYLESS_<SECTION>__<KEY>` variable set: a section's error names it.
    pub env_keys: crate::config::EnvKeys,
}

/// One provider's configuration outcome.
pub struct ProviderConfig {
    pub name: &'static str,
    pub origin: Origin,
    pub configured: Result<Box<dyn Configured>, String>,
}

/// Every provider whose section is present, or whose webhook env vars are set when it is absent
/// (`env` reads the process environment; `keyless dev` passes one that reads nothing).
pub fn configure_all(sections: Sections, ctx: &Context, env: Env<'_>) -> Vec<ProviderConfig> {
    configure_chosen(sections, ctx, env, &Choice::default())
}

/// Which providers to serve and which identity each serves by default (`keyless exec --only`,
/// `--aws-role`, `--gcp-service-account`, `--azure-client-id`; `keyless token`).
#[derive(Debug, Default, Clone)]
pub struct Choice {
    /// Only these providers, by name; `None`: every configured one.
    pub only: Option<Vec<String>>,
    /// The default identity of a provider, by provider name.
    pub defaults: BTreeMap<&'static str, String>,
}

impl Choice {
    pub fn serves(&self, name: &str) -> bool {
        self.only.as_ref().is_none_or(|only| only.iter().any(|o| o == name))
    }
}

/// [`configure_all`], narrowed and with defaults chosen by `choice`. A provider `choice` names
/// that is not configured is simply absent ([`start_chosen`] makes it an error).
pub fn configure_chosen(mut sections: Sections, ctx: &Context, env: Env<'_>, choice: &Choice) -> Vec<ProviderConfig> {
    let with = ConfigureWith { env, ctx, choice };
    PROVIDERS
        .iter()
        .filter(|p| choice.serves(p.name()))
        .filter_map(|p| p.configure_choosing(sections.values.remove(p.name()), &with))
        .map(|mut p| {
            // An error from a KEYLESS_<SECTION>__<KEY> variable names the variable.
            p.configured = p.configured.map_err(|e| sections.env_keys.name_in_section(Some(p.name), &e));
            p
        })
        .collect()
}

/// The shadowing declarations of the providers named `names`.
pub fn shadowing<'a>(names: impl IntoIterator<Item = &'a str>) -> Vec<(&'static str, &'static Shadowing)> {
    let names: Vec<&str> = names.into_iter().collect();
    PROVIDERS.iter().filter(|p| names.contains(&p.name())).map(|p| (p.name(), p.shadowing())).collect()
}

/// Every route every configured provider claims, checked as one set.
pub fn check_routes<'a>(configured: impl IntoIterator<Item = &'a dyn Configured>) -> Result<(), RouteCollision> {
    let claims: Vec<RouteClaim> = configured.into_iter().flat_map(|c| c.routes()).collect();
    keyless_provider::routes::check(&claims)
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "no cloud provider is configured: add an [aws], [gcp] or [azure] section to the config file (--config), \
         or run where a workload-identity webhook has set AWS_ROLE_ARN + AWS_WEB_IDENTITY_TOKEN_FILE, \
         AZURE_CLIENT_ID + AZURE_TENANT_ID + AZURE_FEDERATED_TOKEN_FILE, or GOOGLE_APPLICATION_CREDENTIALS \
         (an external_account file)"
    )]
    NothingConfigured,
    #[error("{name} (from {origin}): {message}")]
    Provider { name: &'static str, origin: Origin, message: String },
    #[error(
        "{name} is not configured: add an [{name}] section to the config file (--config), or leave it out of \
         --only and of the identity flags"
    )]
    NotConfigured { name: String },
    #[error(
        "an identity flag chooses the default {name} identity, but --only leaves {name} out: add it to --only, or drop the flag"
    )]
    LeftOut { name: &'static str },
    #[error("{0}")]
    Routes(#[from] RouteCollision),
}

/// A started provider and its name.
pub struct Running {
    pub name: &'static str,
    pub started: Box<dyn Started>,
}

/// Configures every provider, checks their routes, then starts them (pre-warm begins; nothing
/// waits for it). Any configuration error stops everything before anything is started.
pub async fn start_all(sections: Sections, ctx: &Context, env: Env<'_>) -> Result<Vec<Running>, StartError> {
    start_chosen(sections, ctx, env, &Choice::default()).await
}

/// [`start_all`] narrowed and with defaults chosen by `choice`; a provider it names that is not
/// configured is an error.
pub async fn start_chosen(
    sections: Sections,
    ctx: &Context,
    env: Env<'_>,
    choice: &Choice,
) -> Result<Vec<Running>, StartError> {
    if let Some(name) = choice.defaults.keys().find(|name| !choice.serves(name)) {
        return Err(StartError::LeftOut { name });
    }
    let mut configured = Vec::new();
    let chosen = configure_chosen(sections, ctx, env, choice);
    let named = choice.only.iter().flatten().map(String::as_str).chain(choice.defaults.keys().copied());
    for name in named {
        if !chosen.iter().any(|p| p.name == name) {
            return Err(StartError::NotConfigured { name: name.to_owned() });
        }
    }
    for p in chosen {
        match p.configured {
            Ok(c) => configured.push((p.name, p.origin, c)),
            Err(message) => return Err(StartError::Provider { name: p.name, origin: p.origin, message }),
        }
    }
    if configured.is_empty() {
        return Err(StartError::NothingConfigured);
    }
    check_routes(configured.iter().map(|(_, _, c)| c.as_ref()))?;
    let mut running = Vec::new();
    for (name, origin, c) in configured {
        let started = c.start(ctx).await.map_err(|e| StartError::Provider { name, origin, message: e.to_string() })?;
        running.push(Running { name, started });
    }
    Ok(running)
}

/// The credential listener's routes: each provider's behind its shared request rules, each
/// answer counted in `keyless_requests_total`. The routes were checked as claims before start;
/// they are checked again as served, so a provider serving other paths than it claimed is an
/// error, not a panic.
pub fn routes(running: &[Running], metrics: &keyless_core::Metrics) -> Result<Routes, RouteCollision> {
    routes_of(running.iter().map(|p| (p.name, p.started.as_ref())), Some(metrics))
}

/// A credential listener's routes of `providers` (the sidecar's, `keyless node`'s): every
/// registered provider's security headers refused twice on every route, whichever are
/// configured, so the rules do not change with the configuration.
pub fn routes_of<'a>(
    providers: impl IntoIterator<Item = (&'static str, &'a dyn keyless_provider::Started)>,
    metrics: Option<&keyless_core::Metrics>,
) -> Result<Routes, RouteCollision> {
    Routes::refusing_twice(providers, metrics, &keyless_registry::single_headers())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// The first name `names` holds a second time.
    fn first_repeated<'a>(names: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
        let mut seen = BTreeSet::new();
        names.into_iter().find(|name| !seen.insert(*name))
    }

    /// `--only gcp --aws-role writer`: the flag names a cloud --only leaves out, whether or not
    /// it is configured.
    #[tokio::test]
    async fn an_identity_flag_for_a_cloud_only_leaves_out_is_refused_as_such() {
        let ctx = Context::new(
            std::sync::Arc::new(keyless_core::clock::SystemClock),
            keyless_core::Metrics::new(),
            keyless_core::CachePolicy::default(),
            Default::default(),
        );
        let choice = Choice { only: Some(vec!["gcp".to_owned()]), defaults: [("aws", "writer".to_owned())].into() };
        let err = start_chosen(Sections::default(), &ctx, &|_| None, &choice).await.err().expect("refused");
        assert!(err.to_string().contains("--only leaves aws out"), "{err}");
    }

    /// Zero-config detection reads the context's environment, not the process's: the IRSA and
    /// Azure workload identity webhooks' variables in a made-up environment configure both
    /// clouds; the same configuration in an empty one (`keyless dev`'s) configures nothing.
    #[test]
    fn detection_reads_the_contexts_environment() {
        let dir = tempfile::tempdir().expect("tempdir");
        let token = dir.path().join("token");
        std::fs::write(&token, "x").expect("write");
        let token = token.to_str().expect("utf-8").to_owned();
        let vars = [
            ("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/from-irsa"),
            ("AWS_WEB_IDENTITY_TOKEN_FILE", &token),
            ("AZURE_CLIENT_ID", "0f0e0d0c-0b0a-0908-0706-050403020100"),
            ("AZURE_TENANT_ID", "00010203-0405-0607-0809-0a0b0c0d0e0f"),
            ("AZURE_FEDERATED_TOKEN_FILE", &token),
        ];
        let host = keyless_core::Host::from_vars(
            vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
            Some("pod-7\n".to_owned()),
        );
        let ctx = Context::new(
            std::sync::Arc::new(keyless_core::clock::SystemClock),
            keyless_core::Metrics::new(),
            keyless_core::CachePolicy::default(),
            Default::default(),
        )
        .with_host(host);
        let configured = configure_all(Sections::default(), &ctx, &ctx.env());
        let found: Vec<(&str, String)> = configured
            .iter()
            .map(|p| (p.name, p.configured.as_ref().map(|c| c.identity()).unwrap_or_else(Clone::clone)))
            .collect();
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[0].0 == "aws" && found[0].1.contains("role/from-irsa"), "{found:?}");
        assert!(found[1].0 == "azure" && found[1].1.contains("0f0e0d0c-0b0a-0908-0706-050403020100"), "{found:?}");

        let empty = ctx.with_host(keyless_core::Host::empty());
        assert!(configure_all(Sections::default(), &empty, &empty.env()).is_empty());
    }

    #[test]
    fn first_repeated_finds_a_name_given_twice_anywhere() {
        assert_eq!(first_repeated(["aws", "gcp", "azure"]), None);
        assert_eq!(first_repeated(["aws", "gcp", "aws"]), Some("aws"));
        assert_eq!(first_repeated(["gcp", "gcp"]), Some("gcp"));
    }

    /// A provider's name is its config section and the prefix of its `KEYLESS_<NAME>__*` env
    /// vars: one shared with another provider, or with a section or key of the config's own,
    /// would hand one's settings to the other.
    #[test]
    fn provider_names_are_distinct_from_each_other_and_from_the_configs_own_keys() {
        let own = crate::config::SECTIONS.iter().chain(crate::config::TOP_LEVEL_KEYS).copied();
        assert_eq!(first_repeated(names().chain(own)), None);
        assert_eq!(names().count(), PROVIDERS.len());
        for name in names() {
            assert!(!name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase()), "{name:?}");
        }
    }
}
