//! The provider contract for Google Cloud: one exchange, one cache, the metadata routes.

use std::path::Path;
use std::sync::Arc;

use axum::http::{HeaderName, HeaderValue};
use keyless_core::{AppEnvVar, Context, CredentialCache, Readiness};
use keyless_provider::{
    AppHost, BoxFuture, Configured, Diagnosis, NativeRoute, ProviderError, RouteClaim, Rules, StandIn, Started,
};

use crate::ConfigError;
use crate::bridge::{self, Bridge};
use crate::config::{Config, Settings};
use crate::diagnose::{GcpDiagnosis, identity};
use crate::exchange::{GcpExchange, TokenKey};
use crate::metadata::{self, AccountDescription, AccountTokens, Description, GcpErrors, MetadataServer};

/// The Google Cloud provider (`[gcp]`, or Google's `external_account` credential file).
#[derive(Debug, Clone, Copy)]
pub struct Gcp;

impl keyless_provider::Provider for Gcp {
    const NAME: &'static str = "gcp";
    const ENV_ORIGIN: &'static str = "GOOGLE_APPLICATION_CREDENTIALS";
    type Config = Config;

    const SHADOWING: keyless_provider::Shadowing = crate::shadow::SHADOWING;

    const THROTTLING_CODES: &'static [&'static str] = crate::rejection::THROTTLING_CODES;

    /// `Metadata-Flavor`, the clients' claim to be local.
    const SINGLE_HEADERS: &'static [&'static str] = &["metadata-flavor"];

    /// The `[[gcp.service_accounts]]` entry `email` swapped with the default service account:
    /// the metadata server's `default` is then `email`, and the former default is served by its
    /// own e-mail.
    fn select_default(mut config: Config, email: &str) -> Result<Config, ProviderError> {
        let Some(at) = config.service_accounts.iter().position(|a| a.email.eq_ignore_ascii_case(email)) else {
            if config.service_account.as_deref().is_some_and(|d| d.eq_ignore_ascii_case(email)) {
                return Ok(config);
            }
            let emails: Vec<&str> = config.service_accounts.iter().map(|a| a.email.as_str()).collect();
            return Err(crate::ConfigError::invalid(
                "gcp.service_accounts",
                format!(
                    "{email:?} is not a configured service account (configured besides the default: {})",
                    if emails.is_empty() { "none".to_owned() } else { emails.join(", ") }
                ),
            )
            .into());
        };
        let chosen = config.service_accounts.remove(at);
        if let Some(former) = config.service_account.take() {
            let delegates = std::mem::take(&mut config.delegates).unwrap_or_default();
            config.service_accounts.push(crate::accounts::AccountConfig {
                email: former,
                delegates,
                ..Default::default()
            });
        }
        config.service_account = Some(chosen.email);
        config.delegates = Some(chosen.delegates);
        config.scopes = chosen.scopes.or(config.scopes);
        config.token_lifetime = chosen.token_lifetime.or(config.token_lifetime);
        config.id_token_audiences.extend(chosen.id_token_audiences);
        Ok(config)
    }

    fn configure(config: Config, ctx: &Context) -> Result<Box<dyn Configured>, ProviderError> {
        Ok(Box::new(GcpConfigured { settings: config.resolve_in(&ctx.env())? }))
    }
}

#[derive(Debug)]
struct GcpConfigured {
    settings: Settings,
}

impl Configured for GcpConfigured {
    fn identity(&self) -> String {
        identity(&self.settings)
    }

    fn routes(&self) -> Vec<RouteClaim> {
        metadata::ROUTES.iter().chain([&bridge::ROUTE]).map(|route| RouteClaim::new(*route, "gcp")).collect()
    }

    fn rules(&self) -> Rules {
        rules()
    }

    fn diagnosis(&self, ctx: &Context) -> Result<Box<dyn Diagnosis>, ProviderError> {
        Ok(Box::new(GcpDiagnosis::new(self.settings.clone(), ctx)?))
    }

    fn start<'a>(self: Box<Self>, ctx: &'a Context) -> BoxFuture<'a, Result<Box<dyn Started>, ProviderError>> {
        Box::pin(async move {
            let running: Box<dyn Started> = Box::new(Running::start(self.settings, ctx).await?);
            Ok(running)
        })
    }
}

/// Validates `config` and starts the provider ([`Gcp`]'s `configure` then `start`), for callers
/// that hold the concrete type (tests).
pub async fn start(config: Config, ctx: &Context) -> Result<Running, ConfigError> {
    Running::start(config.resolve_in(&ctx.env())?, ctx).await
}

/// Google Cloud through keyless: STS (+ impersonation) behind the GCE metadata server.
#[derive(Debug)]
pub struct Running {
    /// Every account's tokens (the default one first); its caches are what `/readyz` reports.
    metadata: Arc<MetadataServer>,
    /// The stand-in for gcloud's application-default credentials ([`bridge`]).
    bridge: Arc<Bridge>,
    project_id: Option<String>,
}

/// Every response of the metadata server carries `Metadata-Flavor: Google`: Node rejects one
/// without it and Python's ping looks for it (docs/protocols.md 3.3).
static FLAVOR: [(HeaderName, HeaderValue); 1] =
    [(HeaderName::from_static("metadata-flavor"), HeaderValue::from_static("Google"))];

/// The names Google's clients use for the metadata server (accepted as `Host`).
const HOST_NAMES: &[&str] = &["metadata.google.internal", "metadata"];

/// The request rules of every metadata route, before and after start.
fn rules() -> Rules {
    Rules {
        host_names: HOST_NAMES,
        response_headers: &FLAVOR,
        single_headers: <Gcp as keyless_provider::Provider>::SINGLE_HEADERS.into(),
        ..Rules::credentials(GcpErrors)
    }
}

impl Running {
    /// Builds the exchange and its cache, and pins the default scope set and every configured
    /// ID-token audience (pre-warm). Does not wait for the exchanges.
    async fn start(settings: Settings, ctx: &Context) -> Result<Running, ConfigError> {
        let exchange = GcpExchange::new(&settings, ctx)?;
        let extra = exchange.for_accounts(&settings);
        let cache = start_account(&settings, exchange, ctx).await;
        // Without a service account the token belongs to the pool's federated identity; GKE's
        // metadata server names it PROJECT_ID.svc.id.goog, and clients need some e-mail
        // (google-auth puts it in the token path).
        let email = match (&settings.service_account, &settings.project_id) {
            (Some(email), _) => email.clone(),
            (None, Some(project)) => format!("{project}.svc.id.goog"),
            (None, None) => "default".to_owned(),
        };
        let description = Description {
            email,
            scopes: settings.scopes.iter().map(str::to_owned).collect(),
            project_id: settings.project_id.clone(),
            project_number: settings.project_number.clone(),
            universe_domain: settings.universe_domain.clone(),
            extra: settings
                .accounts
                .iter()
                .map(|a| AccountDescription {
                    email: a.email.clone(),
                    scopes: a.scopes.iter().map(str::to_owned).collect(),
                })
                .collect(),
        };
        tracing::info!(
            audience = settings.provider.audience(),
            service_account = settings.service_account.as_deref().unwrap_or("-"),
            source = %settings.source,
            sts = %settings.sts_endpoint,
            iam = %settings.iam_endpoint,
            "gcp provider configured"
        );
        let mut accounts = vec![AccountTokens::new(cache, settings.scopes.clone(), settings.service_account.is_some())];
        for (account, (account_settings, exchange)) in settings.accounts.iter().zip(extra) {
            let cache = start_account(&account_settings, exchange, ctx).await;
            tracing::info!(service_account = account.email.as_str(), "gcp service account configured");
            accounts.push(AccountTokens::new(cache, account.scopes.clone(), true));
        }
        let metadata = Arc::new(MetadataServer::new(&description, accounts, ctx.clock.clone()));
        let bridge = Bridge::new(metadata.clone());
        Ok(Running { metadata, bridge, project_id: settings.project_id })
    }
}

/// One service account's cache (the default one's or an extra one's), its default scopes and
/// ID-token audiences pinned (pre-warmed). Every account shares the one token source.
async fn start_account(settings: &Settings, exchange: GcpExchange, ctx: &Context) -> CredentialCache<GcpExchange> {
    let cache = ctx.cache(exchange, ctx.token_source(&settings.token_source()).await);
    cache.pin(TokenKey::AccessToken(settings.scopes.clone()));
    for audience in &settings.id_token_audiences {
        cache.pin(TokenKey::IdToken { audience: audience.clone() });
    }
    cache
}

impl Started for Running {
    /// The GCE metadata server (`GET /` and everything under `/computeMetadata/`), and the token
    /// endpoint of the stand-in for gcloud's application-default credentials.
    fn routes(&self) -> Vec<NativeRoute> {
        let mut routes = metadata::routes(self.metadata.clone());
        routes.push(self.bridge.route());
        routes
    }

    fn rules(&self) -> Rules {
        rules()
    }

    /// Every account's cache: `/readyz` names each service account.
    fn readiness(&self) -> Vec<Arc<dyn Readiness>> {
        self.metadata.caches().map(|c| Arc::new(c.clone()) as Arc<dyn Readiness>).collect()
    }

    /// `GCE_METADATA_HOST`/`_IP`/`_ROOT` as `127.0.0.1:PORT` (Python, Go, Node, gcloud each read a
    /// different one), `METADATA_SERVER_DETECTION=assume-present` (Node skips its probe), and
    /// `GOOGLE_CLOUD_PROJECT` when a project id is configured.
    fn app_env(&self, app: &AppHost) -> Vec<AppEnvVar> {
        let host = app.authority();
        let mut env = vec![
            AppEnvVar::plain("GCE_METADATA_HOST", host.clone()),
            AppEnvVar::plain("GCE_METADATA_IP", host.clone()),
            AppEnvVar::plain("GCE_METADATA_ROOT", host),
            AppEnvVar::plain("METADATA_SERVER_DETECTION", "assume-present"),
        ];
        if let Some(project) = &self.project_id {
            env.push(AppEnvVar::plain("GOOGLE_CLOUD_PROJECT", project.clone()));
        }
        env
    }

    /// An `external_account` file whose token URL is keyless's ([`bridge`]): Go, Node and Rust
    /// programs read gcloud's application-default credentials under `$HOME` whatever
    /// `CLOUDSDK_CONFIG` says, and every SDK ranks `GOOGLE_APPLICATION_CREDENTIALS` above them.
    fn stand_in(&self, app: &AppHost, dir: &Path) -> Result<Option<StandIn>, ProviderError> {
        self.bridge.write(app, dir).map(Some)
    }
}
