//! The enabled cloud adapters, behind one interface so the binary can compose them. Each adapter
//! crate owns its protocol; this file only starts them from their config sections (or, when a
//! section is absent, from the env vars a workload-identity webhook injects).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use keyless_core::{AppEnvVar, Context, Readiness};

/// One started adapter, as the listener composition sees it.
pub trait Native: Send + Sync {
    fn name(&self) -> &'static str;
    fn router(&self) -> Router;
    fn readiness(&self) -> Vec<Arc<dyn Readiness>>;
    fn app_env(&self, listen: SocketAddr) -> Vec<AppEnvVar>;
}

/// Every adapter exposes the same four calls; this forwards them.
macro_rules! native {
    ($wrapper:ident, $provider:ty, $name:literal) => {
        struct $wrapper($provider);

        impl Native for $wrapper {
            fn name(&self) -> &'static str {
                $name
            }
            fn router(&self) -> Router {
                self.0.router()
            }
            fn readiness(&self) -> Vec<Arc<dyn Readiness>> {
                self.0.readiness()
            }
            fn app_env(&self, listen: SocketAddr) -> Vec<AppEnvVar> {
                self.0.app_env(listen)
            }
        }
    };
}

native!(Aws, keyless_aws::Provider, "aws");
native!(Azure, keyless_azure::Provider, "azure");
native!(Gcp, keyless_gcp::Provider, "gcp");

/// The provider sections of the configuration.
#[derive(Debug, Default)]
pub struct Sections {
    pub aws: Option<keyless_aws::Config>,
    pub azure: Option<keyless_azure::Config>,
    pub gcp: Option<keyless_gcp::Config>,
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
    #[error("{0}")]
    Aws(#[from] keyless_aws::ConfigError),
    #[error("{0}")]
    Azure(#[from] keyless_azure::ConfigError),
    #[error("{0}")]
    Gcp(#[from] keyless_gcp::ConfigError),
}

/// Starts every adapter whose section is present, or whose webhook env vars are set when it is
/// absent (`env` reads the process environment; `keyless dev` passes one that reads nothing).
/// Pre-warm begins; nothing waits for it.
pub async fn start_all(
    sections: Sections,
    ctx: &Context,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<Box<dyn Native>>, StartError> {
    let mut started: Vec<Box<dyn Native>> = Vec::new();
    let aws = match sections.aws {
        Some(c) => Some(c),
        None => keyless_aws::Config::from_env(env)?,
    };
    if let Some(config) = aws {
        started.push(Box::new(Aws(keyless_aws::Provider::start(config, ctx).await?)));
    }
    let azure = match sections.azure {
        Some(c) => Some(c),
        None => keyless_azure::Config::from_env(env)?,
    };
    if let Some(config) = azure {
        started.push(Box::new(Azure(keyless_azure::Provider::start(config, ctx).await?)));
    }
    let gcp = match sections.gcp {
        Some(c) => Some(c),
        None => keyless_gcp::Config::from_env(env)?,
    };
    if let Some(config) = gcp {
        started.push(Box::new(Gcp(keyless_gcp::Provider::start(config, ctx).await?)));
    }
    if started.is_empty() {
        return Err(StartError::NothingConfigured);
    }
    Ok(started)
}
