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
mod diagnose;
mod error;
mod imds;
mod serve;
mod settings;
mod sts;

use std::sync::Arc;

use keyless_core::{AppEnvVar, Context, CredentialCache, ErrorClass, Issued, Readiness};
use keyless_provider::{
    AppHost, BoxFuture, Configured, Diagnosis, Env, Handler, NativeRoute, ProviderError, RouteClaim, Rules, Started,
};

pub use crate::config::Config;
pub use crate::credentials::{AwsCredentials, credential_process_json, timestamp};
pub use crate::error::ConfigError;
pub use crate::sts::StsExchange;

use crate::container::{ContainerAuth, ContainerState};
use crate::imds::{ImdsSessions, ImdsState};
use crate::serve::{AwsErrors, Served};
use crate::settings::{Host, Settings};

/// The AWS provider (`[aws]`).
#[derive(Debug, Clone, Copy)]
pub struct Aws;

impl keyless_provider::Provider for Aws {
    const NAME: &'static str = "aws";
    const ENV_ORIGIN: &'static str = "AWS_ROLE_ARN and AWS_WEB_IDENTITY_TOKEN_FILE";
    type Config = Config;

    fn from_env(env: Env<'_>) -> Result<Option<Config>, ProviderError> {
        Ok(Config::from_env(env)?)
    }

    fn configure(config: Config, _ctx: &Context) -> Result<Box<dyn Configured>, ProviderError> {
        Ok(Box::new(AwsConfigured { settings: Settings::resolve(&config, &Host::process())? }))
    }
}

/// A validated `[aws]` section.
#[derive(Debug)]
struct AwsConfigured {
    settings: Settings,
}

impl Configured for AwsConfigured {
    fn identity(&self) -> String {
        format!("role {} (region {})", self.settings.role, self.settings.region)
    }

    fn routes(&self) -> Vec<RouteClaim> {
        claims(&self.settings)
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

/// The container path and the IMDS routes, as [`Running::routes`] serves them.
fn claims(settings: &Settings) -> Vec<RouteClaim> {
    let mut claims = Vec::new();
    if let Some(container) = &settings.container {
        claims.push(RouteClaim::new(container.path.clone(), "aws.container_path"));
    }
    if settings.imds.is_some() {
        claims.extend(imds::ROUTES.iter().map(|route| RouteClaim::new(*route, "aws.imds")));
    }
    claims
}

/// Validates `config` and starts the provider: [`Aws`]'s `configure` then `start`, for callers
/// that hold the concrete type (tests).
pub async fn start(config: Config, ctx: &Context) -> Result<Running, ConfigError> {
    Running::start(Settings::resolve(&config, &Host::process())?, ctx).await
}

/// The running AWS provider: one role's credential cache and the routes serving it.
#[derive(Debug)]
pub struct Running {
    served: Served,
    settings: Settings,
    container: Option<Arc<ContainerState>>,
    imds: Option<ImdsState>,
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
            "aws provider started"
        );
        Ok(Running { served, settings, container, imds })
    }

    /// The credential cache (tests).
    pub fn cache(&self) -> &CredentialCache<StsExchange> {
        &self.served.cache
    }
}

impl Started for Running {
    fn routes(&self) -> Vec<NativeRoute> {
        let mut routes = Vec::new();
        if let (Some(state), Some(settings)) = (&self.container, &self.settings.container) {
            routes.push(NativeRoute::get(settings.path.clone(), Handler::new(state.clone(), container::credentials)));
        }
        if let Some(state) = &self.imds {
            routes.extend(imds::routes(state.clone()));
        }
        routes
    }

    fn rules(&self) -> Rules {
        Rules::credentials(AwsErrors)
    }

    /// The role's cache: ready when it holds a valid credential.
    fn readiness(&self) -> Vec<Arc<dyn Readiness>> {
        vec![Arc::new(self.served.cache.clone())]
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
    use keyless_core::Exchange as _;
    let settings = Settings::resolve(config, &Host::process())?;
    let exchange = StsExchange::new(&settings, ctx)?;
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn a_container_path_under_the_imds_routes_collides() {
        let err = keyless_provider::routes::check(&claims(&settings(|c| c.container_path = "/latest/creds".into())))
            .expect_err("collision");
        assert!(err.to_string().contains("aws.container_path") && err.to_string().contains("aws.imds"), "{err}");
    }
}
