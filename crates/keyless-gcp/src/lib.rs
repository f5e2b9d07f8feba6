//! keyless for Google Cloud.
//!
//! - Exchange (`reqwest`): the projected token goes to STS (`/v1/token`, docs/protocols.md 3.1) for a
//!   federated access token, optionally impersonating a service account through IAM Credentials
//!   (`generateAccessToken` / `generateIdToken`, 3.2).
//! - Serving: the GCE metadata server (3.3) that google-auth, the Go, Node and Rust clients and
//!   gcloud find through `GCE_METADATA_HOST` and friends.
//!
//! Configuration is the `[gcp]` section ([`Config`]) or Google's `external_account` credential
//! JSON, which carries the same settings.
#![forbid(unsafe_code)]

mod accounts;
mod bridge;
mod config;
mod dev;
mod diagnose;
mod exchange;
mod external_account;
mod identity;
mod metadata;
mod provider;
mod rejection;
mod shadow;
mod sources;

pub use accounts::AccountConfig;
pub use config::Config;
pub use provider::{Gcp, Running, start};

/// Why the GCP section cannot be used. Every message names the key (`gcp.audience`, or the env
/// var / credential file it came from) and says how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
    #[error("{key}: is required: {fix}")]
    Missing { key: &'static str, fix: &'static str },
    #[error("{origin} {path}: {message}")]
    CredentialsFile { origin: String, path: std::path::PathBuf, message: String },
    #[error(transparent)]
    Upstream(#[from] keyless_core::upstream::UpstreamError),
    #[error("gcp: cannot build the HTTPS client for STS and IAM Credentials: {0}")]
    HttpClient(String),
}

impl ConfigError {
    fn invalid(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid { key: key.into(), message: message.into() }
    }
}
