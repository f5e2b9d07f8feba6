//! keyless-azure: the subject token exchanged with Entra ID for access tokens (client-credentials
//! grant, token as client assertion), served in the two managed-identity formats Azure SDKs
//! read: IMDS (`AZURE_POD_IDENTITY_AUTHORITY_HOST`) and App Service (`IDENTITY_ENDPOINT` +
//! `IDENTITY_HEADER`). Wire rules: docs/protocols.md section 4. [`Azure`] implements the provider
//! contract of `keyless-provider`.
#![forbid(unsafe_code)]

mod aadsts;
mod app_service;
mod config;
mod dev;
mod diagnose;
mod entra;
mod identity;
mod imds;
mod rendered;
mod serve;
mod shadow;

use std::sync::Arc;

use keyless_core::{AppEnvVar, Context, Readiness};
use keyless_provider::{
    AppHost, BoxFuture, Configured, Diagnosis, Handler, NativeRoute, ProviderError, RouteClaim, Rules, Started,
};

pub use config::{Config, ConfigError, DEFAULT_APP_SERVICE_PATH};

use crate::config::Settings;
use crate::entra::{EntraExchange, TokenKey};
use crate::serve::{AzureErrors, Serving};

/// The request rules of every Azure route (App Service's at `app_service_path`), before and after
/// start.
fn rules(app_service_path: Option<String>) -> Rules {
    Rules {
        single_headers: <Azure as keyless_provider::Provider>::SINGLE_HEADERS.into(),
        ..Rules::credentials(AzureErrors { app_service_path })
    }
}

/// The Azure provider (`[azure]`).
#[derive(Debug, Clone, Copy)]
pub struct Azure;

impl keyless_provider::Provider for Azure {
    const NAME: &'static str = "azure";
    const ENV_ORIGIN: &'static str = "AZURE_CLIENT_ID, AZURE_TENANT_ID and AZURE_FEDERATED_TOKEN_FILE";
    type Config = Config;

    const SHADOWING: keyless_provider::Shadowing = shadow::SHADOWING;

    /// `Metadata` (IMDS clients' claim to be local) and App Service's `X-IDENTITY-HEADER`. Entra
    /// throttles with 429 only: no `THROTTLING_CODES`.
    const SINGLE_HEADERS: &'static [&'static str] = &["metadata", "x-identity-header"];

    /// The client id `client_id` (one of `additional_client_ids`) swapped with `client_id`: served
    /// to requests that name none, the former default still served when named.
    fn select_default(mut config: Config, client_id: &str) -> Result<Config, ProviderError> {
        if config.client_id.eq_ignore_ascii_case(client_id) {
            return Ok(config);
        }
        let Some(at) = config.additional_client_ids.iter().position(|c| c.eq_ignore_ascii_case(client_id)) else {
            return Err(ConfigError::Invalid {
                key: "azure.additional_client_ids".to_owned(),
                reason: format!(
                    "{client_id:?} is not a configured client id (configured: {})",
                    std::iter::once(&config.client_id)
                        .chain(&config.additional_client_ids)
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }
            .into());
        };
        std::mem::swap(&mut config.client_id, &mut config.additional_client_ids[at]);
        Ok(config)
    }

    fn configure(config: Config, ctx: &Context) -> Result<Box<dyn Configured>, ProviderError> {
        Ok(Box::new(AzureConfigured { settings: validate(config, ctx)? }))
    }
}

/// The section's own checks, then the one that depends on the cache's size.
fn validate(config: Config, ctx: &Context) -> Result<Settings, ConfigError> {
    let settings = config.validate_in(&ctx.env())?;
    let pinned = settings.clients.len() * settings.prewarm.len();
    if pinned >= ctx.cache_policy.max_entries {
        return Err(ConfigError::Invalid {
            key: "azure.resources".to_owned(),
            reason: format!(
                "{} client ids x {} resources = {pinned} pre-warmed tokens, but the cache holds {} entries and needs \
                 room for requested resources: list fewer resources or raise cache.max_entries",
                settings.clients.len(),
                settings.prewarm.len(),
                ctx.cache_policy.max_entries
            ),
        });
    }
    Ok(settings)
}

/// The Entra exchange of `settings`: the one construction `serve` and `check` share.
fn exchange(settings: &Settings, ctx: &Context) -> Result<EntraExchange, ConfigError> {
    let http = keyless_provider::upstream::http_client(
        settings.ca_pem.as_deref(),
        "azure.ca_file",
        &ctx.cache_policy,
        &[&settings.authority],
    )
    .map_err(|e| ConfigError::HttpClient(e.to_string()))?;
    EntraExchange::new(http, &settings.authority, settings.tenant.clone(), &settings.token_source(), ctx.clock.clone())
        .map_err(|e| ConfigError::Invalid {
            key: "azure.tenant_id".to_owned(),
            reason: format!("does not make a token URL with azure.authority_host: {e}"),
        })
}

#[derive(Debug)]
struct AzureConfigured {
    settings: Settings,
}

impl Configured for AzureConfigured {
    fn identity(&self) -> String {
        diagnose::identity(&self.settings)
    }

    fn routes(&self) -> Vec<RouteClaim> {
        let mut claims = Vec::new();
        if self.settings.imds {
            claims.extend(imds::PATHS.map(|path| RouteClaim::new(path, "azure.imds")));
        }
        if self.settings.app_service {
            claims.push(RouteClaim::new(self.settings.app_service_path.clone(), "azure.app_service_path"));
        }
        claims
    }

    fn rules(&self) -> Rules {
        let app_service_path = self.settings.app_service.then(|| self.settings.app_service_path.clone());
        rules(app_service_path)
    }

    fn diagnosis(&self, ctx: &Context) -> Result<Box<dyn Diagnosis>, ProviderError> {
        let exchange = exchange(&self.settings, ctx)?;
        Ok(Box::new(diagnose::AzureDiagnosis::new(self.settings.clone(), exchange)))
    }

    fn start<'a>(self: Box<Self>, ctx: &'a Context) -> BoxFuture<'a, Result<Box<dyn Started>, ProviderError>> {
        Box::pin(async move {
            let running: Box<dyn Started> = Box::new(Running::start(self.settings, ctx).await?);
            Ok(running)
        })
    }
}

/// Validates `config` and starts the provider ([`Azure`]'s `configure` then `start`), for
/// callers that hold the concrete type (tests).
pub async fn start(config: Config, ctx: &Context) -> Result<Running, ConfigError> {
    Running::start(validate(config, ctx)?, ctx).await
}

/// The running Azure provider: one Entra ID exchange and cache for every client id sharing the
/// token file.
#[derive(Debug)]
pub struct Running {
    serving: Arc<Serving>,
    imds: bool,
    app_service_path: Option<String>,
}

impl Running {
    /// Builds the exchange and cache, and pins every (client id, pre-warm resource) pair. Does
    /// not wait for the exchanges.
    async fn start(settings: Settings, ctx: &Context) -> Result<Running, ConfigError> {
        let exchange = exchange(&settings, ctx)?;
        let tokens = ctx.token_source(&settings.token_source()).await;
        let cache = ctx.cache(exchange, tokens);
        for client_id in &settings.clients {
            for scope in &settings.prewarm {
                cache.pin(TokenKey { client_id: client_id.clone(), scope: scope.clone() });
            }
        }
        let Settings { clients, identity_header, imds, app_service, app_service_path, .. } = settings;
        let app_service_path = app_service.then_some(app_service_path);
        let serving = Arc::new(Serving { cache, clients, identity_header, clock: ctx.clock.clone() });
        Ok(Running { serving, imds, app_service_path })
    }
}

impl Started for Running {
    /// IMDS at `/metadata/identity/oauth2/token` (and the variants clients ask for:
    /// `imds::PATHS`) and App Service at `app_service_path`, as enabled.
    fn routes(&self) -> Vec<NativeRoute> {
        let mut routes = Vec::new();
        if self.imds {
            for path in imds::PATHS {
                routes.push(NativeRoute::get(path, Handler::new(self.serving.clone(), imds::token)));
            }
        }
        if let Some(path) = &self.app_service_path {
            routes.push(NativeRoute::get(path.clone(), Handler::new(self.serving.clone(), app_service::token)));
        }
        routes
    }

    fn rules(&self) -> Rules {
        rules(self.app_service_path.clone())
    }

    fn readiness(&self) -> Vec<Arc<dyn Readiness>> {
        vec![Arc::new(self.serving.cache.clone())]
    }

    /// `IDENTITY_ENDPOINT` + `IDENTITY_HEADER` (App Service: every SDK, Rust included) and
    /// `AZURE_POD_IDENTITY_AUTHORITY_HOST` (IMDS: Python azure-identity, Node msal-node).
    ///
    /// `MSI_ENDPOINT`/`MSI_SECRET` are deliberately absent: every current SDK checks
    /// `IDENTITY_ENDPOINT` first, and where only `MSI_*` are set they select other protocols
    /// (Azure ML in Python and Rust: `secret` header, api-version 2017-09-01, date-string
    /// `expires_on`; Cloud Shell for `MSI_ENDPOINT` alone) that keyless does not serve.
    fn app_env(&self, app: &AppHost) -> Vec<AppEnvVar> {
        let base = app.http_base();
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
