//! keyless-aws: the pod's projected token exchanged with STS `AssumeRoleWithWebIdentity`, and the
//! temporary credentials served the way AWS SDKs look for them (protocols.md section 2):
//!
//! - the container-credentials endpoint (`AWS_CONTAINER_CREDENTIALS_FULL_URI`),
//! - an IMDSv2 emulation at the listener root (`AWS_EC2_METADATA_SERVICE_ENDPOINT`),
//! - `credential_process` JSON ([`credential_process_json`], [`fetch_once`]).
//!
//! Everything served comes from the core [`CredentialCache`]: pre-warmed at start, refreshed
//! ahead, and never waited on while a valid credential is held.
#![forbid(unsafe_code)]

mod client;
mod config;
mod container;
mod credentials;
pub mod diagnose;
mod error;
mod imds;
mod serve;
mod settings;
mod sts;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use keyless_core::{AppEnvVar, Context, CredentialCache, ErrorClass, Issued, Readiness};

pub use crate::config::Config;
pub use crate::credentials::{AwsCredentials, credential_process_json, timestamp};
pub use crate::error::ConfigError;
pub use crate::sts::StsExchange;

use crate::container::{ContainerAuth, ContainerState};
use crate::imds::{ImdsSessions, ImdsState};
use crate::serve::{RefuseBodiesLayer, Served};
use crate::settings::{Host, Settings};

/// The AWS provider: one role's credential cache and the routes serving it.
#[derive(Debug)]
pub struct Provider {
    served: Served,
    container: Option<(String, ContainerAuth)>,
    imds: Option<ImdsState>,
}

impl Provider {
    /// Validates `config` (errors name the key and the fix), creates the authorization token file
    /// if needed, builds the STS client and the cache, and pins the role (pre-warm). Does not
    /// wait for the exchange.
    pub async fn start(config: Config, ctx: &Context) -> Result<Provider, ConfigError> {
        let settings = Settings::resolve(&config, &Host::process())?;
        let exchange = StsExchange::new(&settings, ctx.clock.clone())?;
        let container = settings
            .container
            .as_ref()
            .map(|c| ContainerAuth::resolve(c.token.clone(), c.token_file.clone()).map(|auth| (c.path.clone(), auth)))
            .transpose()?;
        let tokens = ctx.token_source(&keyless_core::SourceSpec::File(settings.token_file.clone())).await;
        let cache = ctx.cache(exchange, tokens);
        cache.pin(());
        let served = Served {
            cache,
            role: settings.role.clone(),
            region: settings.region.clone(),
            account_id: settings.account_id.clone(),
        };
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
            container = container.as_ref().map(|(path, _)| path.as_str()).unwrap_or("off"),
            imds = if imds.is_some() { "on" } else { "off" },
            "aws provider started"
        );
        Ok(Provider { served, container, imds })
    }

    /// The container-credentials endpoint (at `container_path`) and the IMDSv2 routes (under
    /// `/latest/`), as configured. No route accepts a request body.
    pub fn router(&self) -> Router {
        let mut router = Router::new();
        if let Some((path, auth)) = &self.container {
            let state = Arc::new(ContainerState { served: self.served.clone(), auth: auth.clone() });
            router = router.route(path, get(container::credentials).with_state(state));
        }
        if let Some(state) = &self.imds {
            router = router.merge(imds::router(state.clone()));
        }
        router.layer(RefuseBodiesLayer)
    }

    /// The role's cache: ready when it holds a valid credential.
    pub fn readiness(&self) -> Vec<Arc<dyn Readiness>> {
        vec![Arc::new(self.served.cache.clone())]
    }

    /// The credential cache (for `keyless check` and tests).
    pub fn cache(&self) -> &CredentialCache<StsExchange> {
        &self.served.cache
    }

    /// What an app needs to reach this provider through keyless at `listen`. `AWS_ROLE_ARN` is
    /// deliberately absent: with it, SDKs would try web identity themselves.
    pub fn app_env(&self, listen: SocketAddr) -> Vec<AppEnvVar> {
        let base = format!("http://{}", app_host(listen));
        let mut env = Vec::new();
        if let Some((path, auth)) = &self.container {
            env.push(AppEnvVar::plain("AWS_CONTAINER_CREDENTIALS_FULL_URI", format!("{base}{path}")));
            // The same token as a value and as a file: some SDKs read only one of them
            // (protocols.md 2.2 traps).
            env.push(AppEnvVar::secret("AWS_CONTAINER_AUTHORIZATION_TOKEN", auth.token.clone()));
            if let Some(file) = auth.file.as_ref().filter(|f| f.exists()) {
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

/// `127.0.0.1` whenever it reaches the listener: Node's `fromContainerMetadata` accepts only
/// `127.0.0.1` and `localhost` (protocols.md 2.2).
fn app_host(listen: SocketAddr) -> String {
    let port = listen.port();
    match listen.ip() {
        ip if ip.is_unspecified() || ip.is_loopback() && ip.is_ipv4() => {
            format!("{}:{port}", Ipv4Addr::LOCALHOST)
        }
        IpAddr::V6(ip) => format!("[{ip}]:{port}"),
        IpAddr::V4(ip) => format!("{ip}:{port}"),
    }
}

/// One exchange from `config`, without serving (`keyless credential-process`): reads the token,
/// calls STS, and on an invalid-token answer re-reads the token and tries once more.
pub async fn fetch_once(config: &Config, ctx: &Context) -> Result<Issued<AwsCredentials>, ConfigError> {
    use keyless_core::Exchange as _;
    let settings = Settings::resolve(config, &Host::process())?;
    let exchange = StsExchange::new(&settings, ctx.clock.clone())?;
    let tokens = ctx.token_source(&keyless_core::SourceSpec::File(settings.token_file.clone())).await;
    let token = tokens.current()?;
    match exchange.exchange(&(), &token).await {
        Err(e) if e.class == ErrorClass::RereadToken => {
            let fresh = tokens.reread().await?;
            Ok(exchange.exchange(&(), &fresh).await?)
        }
        other => Ok(other?),
    }
}
