//! keyless-aws: the subject token exchanged with STS `AssumeRoleWithWebIdentity`, and the
//! temporary credentials served the way AWS SDKs look for them (docs/protocols.md section 2):
//!
//! - the container-credentials endpoint (`AWS_CONTAINER_CREDENTIALS_FULL_URI`),
//! - an IMDSv2 emulation at the listener root (`AWS_EC2_METADATA_SERVICE_ENDPOINT`),
//! - `credential_process` JSON ([`credential_process_json`], [`fetch_once`]).
//!
//! [`Aws`] implements the provider contract of `keyless-provider`. Everything served comes from
//! the core [`CredentialCache`]: pre-warmed at start, refreshed ahead, and never waited on while
//! a valid credential is held.
#![forbid(unsafe_code)]

mod client;
mod config;
mod container;
mod credentials;
mod dev;
mod diagnose;
mod error;
mod imds;
mod roles;
mod serve;
mod settings;
mod shadow;
mod sts;

use std::sync::Arc;

use keyless_core::{AppEnvVar, Context, CredentialCache, ErrorClass, Issued, Readiness};
use keyless_provider::{
    AppHost, BoxFuture, Configured, Diagnosis, Handler, NativeRoute, ProviderError, RouteClaim, Rules, Started,
};

pub use crate::config::Config;
pub use crate::credentials::{AwsCredentials, credential_process_json, timestamp};
pub use crate::dev::DEV_SECOND_ROLE_NAME;
pub use crate::error::ConfigError;
pub use crate::roles::{RoleConfig, is_role_name};
pub use crate::sts::StsExchange;

use crate::container::{ContainerAuth, ContainerState};
use crate::imds::{ImdsSessions, ImdsState};
use crate::serve::{AwsErrors, Served};
use crate::settings::Settings;

/// The request rules of every AWS route, before and after start.
fn rules() -> Rules {
    Rules {
        single_headers: <Aws as keyless_provider::Provider>::SINGLE_HEADERS.into(),
        ..Rules::credentials(AwsErrors)
    }
}

/// The AWS provider (`[aws]`).
#[derive(Debug, Clone, Copy)]
pub struct Aws;

impl keyless_provider::Provider for Aws {
    const NAME: &'static str = "aws";
    const ENV_ORIGIN: &'static str = "AWS_ROLE_ARN and AWS_WEB_IDENTITY_TOKEN_FILE";
    type Config = Config;

    const SHADOWING: keyless_provider::Shadowing = shadow::SHADOWING;

    const THROTTLING_CODES: &'static [&'static str] = sts::THROTTLING_CODES;

    /// IMDSv2's session token and its TTL request. The container endpoint's `Authorization` is
    /// every cloud's.
    const SINGLE_HEADERS: &'static [&'static str] =
        &["x-aws-ec2-metadata-token", "x-aws-ec2-metadata-token-ttl-seconds"];

    /// The named role `name` (`[[aws.roles]]`) as the default role too: served on the default
    /// container path and IMDS as well as on its own path.
    fn select_default(mut config: Config, name: &str) -> Result<Config, ProviderError> {
        let Some(role) = config.roles.iter().find(|r| r.name == name).cloned() else {
            let names: Vec<&str> = config.roles.iter().map(|r| r.name.as_str()).collect();
            return Err(ConfigError::invalid(
                "roles",
                format!(
                    "no [[aws.roles]] entry is named {name:?} (configured: {})",
                    if names.is_empty() { "none".to_owned() } else { names.join(", ") }
                ),
            )
            .into());
        };
        config.role_arn = role.role_arn;
        config.session_name = role.session_name.or(config.session_name);
        config.duration = role.duration.unwrap_or(config.duration);
        config.policy = role.policy;
        config.policy_arns = role.policy_arns;
        Ok(config)
    }

    fn configure(config: Config, ctx: &Context) -> Result<Box<dyn Configured>, ProviderError> {
        Ok(Box::new(AwsConfigured { settings: Settings::resolve_in(&config, ctx)? }))
    }
}

/// A validated `[aws]` section.
#[derive(Debug)]
struct AwsConfigured {
    settings: Settings,
}

impl Configured for AwsConfigured {
    fn identity(&self) -> String {
        identity_line(&self.settings)
    }

    fn routes(&self) -> Vec<RouteClaim> {
        claims(&self.settings)
    }

    fn rules(&self) -> Rules {
        rules()
    }

    fn diagnosis(&self, ctx: &Context) -> Result<Box<dyn Diagnosis>, ProviderError> {
        Ok(Box::new(diagnose::AwsDiagnosis::new(self.settings.clone(), ctx)?))
    }

    fn start<'a>(self: Box<Self>, ctx: &'a Context) -> BoxFuture<'a, Result<Box<dyn Started>, ProviderError>> {
        Box::pin(async move {
            let running: Box<dyn Started> = Box::new(Running::start(self.settings, ctx).await?);
            Ok(running)
        })
    }
}

/// The default role, and the named ones by name (`keyless check`, the start-up heading).
pub(crate) fn identity_line(settings: &Settings) -> String {
    let mut line = format!("role {} (region {})", settings.role, settings.region);
    for named in &settings.roles {
        line.push_str(&format!("; role {} {} on {}", named.name, named.role, named.path));
    }
    line
}

/// The container paths (default and named roles) and the IMDS routes, as [`Running::routes`]
/// serves them.
fn claims(settings: &Settings) -> Vec<RouteClaim> {
    let mut claims = Vec::new();
    if let Some(container) = &settings.container {
        claims.push(RouteClaim::new(container.path.clone(), "aws.container_path"));
        claims.push(RouteClaim::fallback(unknown_role_route(&container.path), "aws.container_path"));
        for named in &settings.roles {
            claims.push(RouteClaim::new(named.path.clone(), format!("aws.roles[{}].container_path", named.name)));
        }
    }
    if settings.imds.is_some() {
        claims.extend(imds::ROUTES.iter().map(|route| RouteClaim::new(*route, "aws.imds")));
    }
    claims
}

/// `{container path}/roles/{*name}`: what answers a role name no role is served on (a named
/// role's own path, static, is routed before it).
fn unknown_role_route(container_path: &str) -> String {
    format!("{}/roles/{{*name}}", container_path.trim_end_matches('/'))
}

/// Validates `config` and starts the provider: [`Aws`]'s `configure` then `start`, for callers
/// that hold the concrete type (tests).
pub async fn start(config: Config, ctx: &Context) -> Result<Running, ConfigError> {
    Running::start(Settings::resolve_in(&config, ctx)?, ctx).await
}

/// The running AWS provider: one role's credential cache and the routes serving it.
#[derive(Debug)]
pub struct Running {
    served: Served,
    settings: Settings,
    container: Option<Arc<ContainerState>>,
    imds: Option<ImdsState>,
    /// The named roles served on their container paths, each with its own cache.
    named: Vec<(String, Arc<ContainerState>)>,
}

impl Running {
    /// Creates the authorization token file if needed, builds the STS client and the cache, and
    /// pins the role (pre-warm). Does not wait for the exchange.
    async fn start(settings: Settings, ctx: &Context) -> Result<Running, ConfigError> {
        let exchange = StsExchange::new(&settings, ctx)?;
        let container = settings
            .container
            .as_ref()
            .map(|c| ContainerAuth::resolve(c.token.clone(), c.token_file.clone()))
            .transpose()?;
        // Named roles are served on container paths only.
        let named = match &container {
            Some(auth) => start_named(&settings, &exchange, auth, ctx).await,
            None => Vec::new(),
        };
        let tokens = ctx.token_source(&settings.token_source()).await;
        let cache = ctx.cache(exchange, tokens);
        cache.pin(());
        let served = Served {
            cache,
            role: settings.role.clone(),
            region: settings.region.clone(),
            account_id: settings.account_id.clone(),
        };
        let container = container.map(|auth| Arc::new(ContainerState { served: served.clone(), auth }));
        let imds = settings.imds.as_ref().map(|imds| ImdsState {
            served: served.clone(),
            sessions: Arc::new(ImdsSessions::new(imds.max_sessions, imds.session_ttl_max)),
            allow_v1: imds.v1,
            started: ctx.clock.now(),
        });
        tracing::info!(
            role = %settings.role,
            session_name = settings.session_name.as_str(),
            region = %settings.region,
            container = settings.container.as_ref().map(|c| c.path.as_str()).unwrap_or("off"),
            imds = if imds.is_some() { "on" } else { "off" },
            named_roles = named.len(),
            "aws provider started"
        );
        Ok(Running { served, settings, container, imds, named })
    }

    /// The credential cache (tests).
    pub fn cache(&self) -> &CredentialCache<StsExchange> {
        &self.served.cache
    }
}

/// One cache per named role, pinned (pre-warmed) like the default's, over the same token source
/// and the default exchange's STS client, served with the default's authorization token.
async fn start_named(
    settings: &Settings,
    default: &StsExchange,
    auth: &ContainerAuth,
    ctx: &Context,
) -> Vec<(String, Arc<ContainerState>)> {
    let tokens = ctx.token_source(&settings.token_source()).await;
    let mut named = Vec::with_capacity(settings.roles.len());
    for role in &settings.roles {
        let cache = ctx.cache(default.for_role(role), tokens.clone());
        cache.pin(());
        let served = Served {
            cache,
            role: role.role.clone(),
            region: settings.region.clone(),
            account_id: role.role.account().to_owned(),
        };
        tracing::info!(name = role.name.as_str(), role = %role.role, path = role.path.as_str(), "aws named role");
        named.push((role.path.clone(), Arc::new(ContainerState { served, auth: auth.clone() })));
    }
    named
}

impl Started for Running {
    fn routes(&self) -> Vec<NativeRoute> {
        let mut routes = Vec::new();
        if let (Some(state), Some(settings)) = (&self.container, &self.settings.container) {
            routes.push(NativeRoute::get(settings.path.clone(), Handler::new(state.clone(), container::credentials)));
            // A name no role is served on gets the names that are (a role's own path, static,
            // is routed before this catch-all).
            let unknown = Arc::new(container::UnknownRole {
                auth: state.auth.clone(),
                roles: self.settings.roles.iter().map(|r| (r.name.clone(), r.path.clone())).collect(),
            });
            routes.push(NativeRoute::get(
                unknown_role_route(&settings.path),
                Handler::new(unknown, container::unknown_role),
            ));
        }
        for (path, state) in &self.named {
            routes.push(NativeRoute::get(path.clone(), Handler::new(state.clone(), container::credentials)));
        }
        if let Some(state) = &self.imds {
            routes.extend(imds::routes(state.clone()));
        }
        routes
    }

    fn rules(&self) -> Rules {
        rules()
    }

    /// Every role's cache (the default and the named ones): ready when each holds a valid
    /// credential; `/readyz` names each.
    fn readiness(&self) -> Vec<Arc<dyn Readiness>> {
        let mut caches: Vec<Arc<dyn Readiness>> = vec![Arc::new(self.served.cache.clone())];
        caches.extend(self.named.iter().map(|(_, s)| Arc::new(s.served.cache.clone()) as Arc<dyn Readiness>));
        caches
    }

    /// `AWS_ROLE_ARN` is deliberately absent: with it, SDKs would try web identity themselves.
    fn app_env(&self, app: &AppHost) -> Vec<AppEnvVar> {
        let base = app.http_base();
        let mut env = Vec::new();
        if let (Some(state), Some(settings)) = (&self.container, &self.settings.container) {
            env.push(AppEnvVar::plain("AWS_CONTAINER_CREDENTIALS_FULL_URI", format!("{base}{}", settings.path)));
            // The same token as a value and as a file: some SDKs read only one of them
            // (docs/protocols.md 2.2 traps).
            env.push(AppEnvVar::secret("AWS_CONTAINER_AUTHORIZATION_TOKEN", state.auth.token.clone()));
            if let Some(file) = state.auth.file.as_ref().filter(|f| f.exists()) {
                env.push(AppEnvVar::plain("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", file.display().to_string()));
            }
        }
        if self.imds.is_some() {
            env.push(AppEnvVar::plain("AWS_EC2_METADATA_SERVICE_ENDPOINT", base));
        }
        // botocore reads only AWS_DEFAULT_REGION; the Rust, Go and JS SDKs read AWS_REGION.
        env.push(AppEnvVar::plain("AWS_REGION", self.served.region.clone()));
        env.push(AppEnvVar::plain("AWS_DEFAULT_REGION", self.served.region.clone()));
        env
    }
}

/// One exchange from `config`, without serving (`keyless credential-process`): reads the token,
/// calls STS, and on an invalid-token answer re-reads the token and tries once more, as the
/// cache does.
pub async fn fetch_once(config: &Config, ctx: &Context) -> Result<Issued<AwsCredentials>, ConfigError> {
    fetch_role_once(config, None, ctx).await
}

/// [`fetch_once`] for the named role `role` (`[[aws.roles]]`), or the default role with `None`.
pub async fn fetch_role_once(
    config: &Config,
    role: Option<&str>,
    ctx: &Context,
) -> Result<Issued<AwsCredentials>, ConfigError> {
    use keyless_core::Exchange as _;
    let settings = Settings::resolve_in(config, ctx)?;
    let exchange = StsExchange::new(&settings, ctx)?;
    let exchange = match role {
        None => exchange,
        Some(name) => {
            let named = settings.roles.iter().find(|r| r.name == name).ok_or_else(|| unknown_role(&settings, name))?;
            exchange.for_role(named)
        }
    };
    let tokens = ctx.token_source(&settings.token_source()).await;
    let token = tokens.current()?;
    match exchange.exchange(&(), &token).await {
        Err(e) if e.class == ErrorClass::RereadToken => {
            let fresh = tokens.reread().await?;
            Ok(exchange.exchange(&(), &fresh).await?)
        }
        other => Ok(other?),
    }
}

fn unknown_role(settings: &Settings, name: &str) -> ConfigError {
    let known: Vec<&str> = settings.roles.iter().map(|r| r.name.as_str()).collect();
    ConfigError::invalid(
        "roles",
        format!(
            "no role named {name:?} is configured (named roles: {}): add an [[aws.roles]] entry with name = {name:?}, \
             or drop --role to use the default role",
            if known.is_empty() { "none".to_owned() } else { known.join(", ") }
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::Host;

    fn settings(change: impl FnOnce(&mut Config)) -> Settings {
        let mut config = Config::new("/t", "arn:aws:iam::123456789012:role/app");
        change(&mut config);
        let host = Host { env: &|_| None, hostname_file: None };
        Settings::resolve(&config, &host).expect("valid")
    }

    #[test]
    fn claims_follow_the_configured_endpoints() {
        let all = claims(&settings(|_| {}));
        assert!(all.iter().any(|c| c.route == "/v1/credentials" && c.key == "aws.container_path"));
        assert!(all.iter().any(|c| c.route == "/latest/{*path}" && c.key == "aws.imds"));
        assert_eq!(keyless_provider::routes::check(&all), Ok(()));
        assert!(claims(&settings(|c| c.imds = false)).iter().all(|c| c.key != "aws.imds"));
        assert!(claims(&settings(|c| c.container_credentials = false)).iter().all(|c| c.key == "aws.imds"));
    }

    #[test]
    fn named_roles_claim_their_paths_and_a_shared_path_collides() {
        let named = |path: Option<&str>| {
            settings(|c| {
                let mut role = RoleConfig::new("writer", "arn:aws:iam::123456789012:role/writer");
                role.container_path = path.map(str::to_owned);
                c.roles = vec![role];
            })
        };
        let all = claims(&named(None));
        assert!(
            all.iter()
                .any(|c| c.route == "/v1/credentials/roles/writer" && c.key == "aws.roles[writer].container_path")
        );
        assert_eq!(keyless_provider::routes::check(&all), Ok(()));
        let err = keyless_provider::routes::check(&claims(&named(Some("/v1/credentials")))).expect_err("collision");
        assert!(err.to_string().contains("aws.roles[writer].container_path"), "{err}");
        assert!(claims(&settings(|c| c.container_credentials = false)).iter().all(|c| !c.key.starts_with("aws.roles")));
    }

    #[test]
    fn a_container_path_under_the_imds_routes_collides() {
        let err = keyless_provider::routes::check(&claims(&settings(|c| c.container_path = "/latest/creds".into())))
            .expect_err("collision");
        assert!(err.to_string().contains("aws.container_path") && err.to_string().contains("aws.imds"), "{err}");
    }
}
