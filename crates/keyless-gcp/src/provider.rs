//! The provider the `keyless` binary composes: one exchange, one cache, the metadata routes.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use keyless_core::{AppEnvVar, Context, CredentialCache, Readiness};

use crate::ConfigError;
use crate::config::Config;
use crate::exchange::{GcpExchange, TokenKey};
use crate::metadata::{self, Description, MetadataServer};

/// Google Cloud through keyless: STS (+ impersonation) behind the GCE metadata server.
#[derive(Debug)]
pub struct Provider {
    cache: CredentialCache<GcpExchange>,
    metadata: Arc<MetadataServer>,
    project_id: Option<String>,
}

impl Provider {
    /// Validates the config, builds the exchange and its cache, and pins the default scope set
    /// and every configured ID-token audience (pre-warm). Does not wait for the exchanges.
    pub async fn start(config: Config, ctx: &Context) -> Result<Provider, ConfigError> {
        let settings = config.resolve()?;
        let exchange = GcpExchange::new(&settings, ctx.clock.clone())?;
        let tokens = ctx.token_source(&keyless_core::SourceSpec::File(settings.token_file.clone())).await;
        let cache = ctx.cache(exchange, tokens);
        cache.pin(TokenKey::AccessToken(settings.scopes.clone()));
        for audience in &settings.id_token_audiences {
            cache.pin(TokenKey::IdToken { audience: audience.clone() });
        }
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
        };
        tracing::info!(
            audience = settings.provider.audience(),
            service_account = settings.service_account.as_deref().unwrap_or("-"),
            token_file = %settings.token_file.display(),
            sts = %settings.sts_endpoint,
            iam = %settings.iam_endpoint,
            "gcp provider configured"
        );
        let metadata = Arc::new(MetadataServer::new(
            &description,
            cache.clone(),
            ctx.clock.clone(),
            settings.scopes.clone(),
            settings.service_account.is_some(),
        ));
        Ok(Provider { cache, metadata, project_id: settings.project_id })
    }

    /// The GCE metadata server: `GET /` and everything under `/computeMetadata/`.
    pub fn router(&self) -> axum::Router {
        metadata::router(self.metadata.clone())
    }

    pub fn readiness(&self) -> Vec<Arc<dyn Readiness>> {
        vec![Arc::new(self.cache.clone())]
    }

    /// `GCE_METADATA_HOST`/`_IP`/`_ROOT` as `127.0.0.1:PORT` (Python, Go, Node, gcloud each read a
    /// different one), `METADATA_SERVER_DETECTION=assume-present` (Node skips its probe), and
    /// `GOOGLE_CLOUD_PROJECT` when a project id is configured.
    pub fn app_env(&self, listen: SocketAddr) -> Vec<AppEnvVar> {
        let ip = if listen.ip().is_unspecified() { IpAddr::V4(Ipv4Addr::LOCALHOST) } else { listen.ip() };
        let host = SocketAddr::new(ip, listen.port()).to_string();
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
}
