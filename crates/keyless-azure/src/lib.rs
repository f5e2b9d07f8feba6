//! keyless-azure: the projected service-account token exchanged with Entra ID for access tokens
//! (client-credentials grant, token as client assertion), served in the two managed-identity
//! formats Azure SDKs read: IMDS (`AZURE_POD_IDENTITY_AUTHORITY_HOST`) and App Service
//! (`IDENTITY_ENDPOINT` + `IDENTITY_HEADER`). Wire rules: `protocols.md` section 4.
#![forbid(unsafe_code)]

mod aadsts;
mod app_service;
mod config;
pub mod diagnose;
mod entra;
mod identity;
mod imds;
mod rendered;
mod serve;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use keyless_core::{AppEnvVar, CachePolicy, Context, Readiness};

pub use config::{Config, ConfigError, DEFAULT_APP_SERVICE_PATH, PUBLIC_AUTHORITY_HOST};
pub use entra::{AccessToken, EntraExchange, TokenKey};
pub use identity::{ClientId, Scope, TenantId};

use crate::config::Settings;
use crate::serve::Serving;

/// Longest wait for a TCP/TLS connection to the authority host, within the exchange timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The Azure provider: one Entra ID exchange and cache for every client id sharing the token file.
#[derive(Debug)]
pub struct Provider {
    serving: Arc<Serving>,
    imds: bool,
    app_service_path: Option<String>,
}

impl Provider {
    /// Validates the config, builds the exchange and cache, and pins every (client id, pre-warm
    /// resource) pair. Does not wait for the exchanges.
    pub async fn start(config: Config, ctx: &Context) -> Result<Provider, ConfigError> {
        let settings = config.validate()?;
        let pinned = settings.clients.len() * settings.prewarm.len();
        if pinned >= ctx.cache_policy.max_entries {
            return Err(ConfigError::Invalid {
                key: "azure.resources".to_owned(),
                reason: format!(
                    "{} client ids x {} resources = {pinned} pre-warmed tokens, but the cache holds \
                     {} entries and needs room for requested resources: list fewer resources or \
                     raise the cache's max_entries",
                    settings.clients.len(),
                    settings.prewarm.len(),
                    ctx.cache_policy.max_entries
                ),
            });
        }
        let http = http_client(&settings, &ctx.cache_policy)?;
        let exchange = EntraExchange::new(http, &settings.authority, settings.tenant.clone(), ctx.clock.clone())
            .map_err(|e| ConfigError::Invalid {
                key: "azure.tenant_id".to_owned(),
                reason: format!("does not make a token URL with azure.authority_host: {e}"),
            })?;
        let tokens = ctx.token_source(&keyless_core::SourceSpec::File(settings.token_file.clone())).await;
        let cache = ctx.cache(exchange, tokens);
        for client_id in &settings.clients {
            for scope in &settings.prewarm {
                cache.pin(TokenKey { client_id: client_id.clone(), scope: scope.clone() });
            }
        }
        let Settings { clients, identity_header, imds, app_service, app_service_path, .. } = settings;
        Ok(Provider {
            serving: Arc::new(Serving { cache, clients, identity_header, clock: ctx.clock.clone() }),
            imds,
            app_service_path: app_service.then_some(app_service_path),
        })
    }

    /// IMDS at `/metadata/identity/oauth2/token` (with and without a trailing slash) and App
    /// Service at `app_service_path`, as enabled.
    pub fn router(&self) -> Router {
        let mut router = Router::new();
        if self.imds {
            router = router.route(imds::PATH, get(imds::token)).route(imds::PATH_SLASH, get(imds::token));
        }
        if let Some(path) = &self.app_service_path {
            router = router.route(path, get(app_service::token));
        }
        router.with_state(self.serving.clone())
    }

    pub fn readiness(&self) -> Vec<Arc<dyn Readiness>> {
        vec![Arc::new(self.serving.cache.clone())]
    }

    /// `IDENTITY_ENDPOINT` + `IDENTITY_HEADER` (App Service: every SDK, Rust included) and
    /// `AZURE_POD_IDENTITY_AUTHORITY_HOST` (IMDS: Python azure-identity, Node msal-node).
    ///
    /// `MSI_ENDPOINT`/`MSI_SECRET` are deliberately absent: every current SDK checks
    /// `IDENTITY_ENDPOINT` first, and where only `MSI_*` are set they select other protocols
    /// (Azure ML in Python and Rust: `secret` header, api-version 2017-09-01, date-string
    /// `expires_on`; Cloud Shell for `MSI_ENDPOINT` alone) that keyless does not serve.
    pub fn app_env(&self, listen: SocketAddr) -> Vec<AppEnvVar> {
        let base = format!("http://{}", SocketAddr::new(reachable(listen.ip()), listen.port()));
        let mut vars = Vec::new();
        if let Some(path) = &self.app_service_path {
            vars.push(AppEnvVar::plain("IDENTITY_ENDPOINT", format!("{base}{path}")));
            vars.push(AppEnvVar::secret("IDENTITY_HEADER", self.serving.identity_header.clone()));
        }
        if self.imds {
            vars.push(AppEnvVar::plain("AZURE_POD_IDENTITY_AUTHORITY_HOST", base));
        }
        vars
    }
}

/// The address an app in the same pod dials: loopback for a wildcard listener.
fn reachable(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        other => other,
    }
}

fn http_client(settings: &Settings, policy: &CachePolicy) -> Result<reqwest::Client, ConfigError> {
    let mut builder = reqwest::Client::builder()
        .timeout(policy.exchange_timeout)
        .connect_timeout(CONNECT_TIMEOUT.min(policy.exchange_timeout))
        // A redirect from the token endpoint would carry the client assertion elsewhere.
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("keyless/", env!("CARGO_PKG_VERSION")));
    if let Some(pem) = &settings.ca_pem {
        let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(|e| ConfigError::Invalid {
            key: "azure.ca_file".to_owned(),
            reason: format!("holds a certificate that cannot be parsed: {e}"),
        })?;
        builder = builder.tls_certs_merge(certs);
    }
    builder.build().map_err(|e| ConfigError::HttpClient(e.to_string()))
}
