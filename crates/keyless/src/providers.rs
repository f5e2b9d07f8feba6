//! The enabled cloud adapters, behind one interface so the binary can compose them. Each adapter
//! crate owns its protocol; this file only starts them from their config sections.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use keyless_core::{AppEnvVar, Context, Readiness};

use crate::config::Config;

/// One started adapter, as the listener composition sees it.
pub trait Native: Send + Sync {
    fn name(&self) -> &'static str;
    fn router(&self) -> Router;
    fn readiness(&self) -> Vec<Arc<dyn Readiness>>;
    fn app_env(&self, listen: SocketAddr) -> Vec<AppEnvVar>;
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
}

/// Starts every adapter whose section is present (pre-warm begins; nothing waits for it).
pub async fn start_all(_config: &Config, _ctx: &Context) -> Result<Vec<Box<dyn Native>>, StartError> {
    let started: Vec<Box<dyn Native>> = Vec::new();
    if started.is_empty() {
        return Err(StartError::NothingConfigured);
    }
    Ok(started)
}
