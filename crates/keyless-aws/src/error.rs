//! The crate's one error enum: what can stop the AWS provider from starting, or a one-shot fetch
//! (`keyless credential-process`) from producing credentials.

use std::path::PathBuf;

use keyless_core::ExchangeError;
use keyless_core::token::TokenError;
use keyless_core::upstream::UpstreamError;

/// Every message names the config key (`aws.role_arn`) or env var and says how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("aws.{key}: {message}")]
    Invalid { key: &'static str, message: String },
    #[error("{var}: {message}")]
    Env { var: &'static str, message: String },
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("aws.authorization_token_file = {path:?}: {reason}")]
    AuthorizationTokenFile { path: PathBuf, reason: String },
    /// The subject token could not be read (one-shot fetch only; the provider keeps retrying).
    #[error(transparent)]
    Token(#[from] TokenError),
    /// STS refused or could not be reached (one-shot fetch only).
    #[error(transparent)]
    Exchange(#[from] ExchangeError),
}

impl ConfigError {
    pub(crate) fn invalid(key: &'static str, message: impl Into<String>) -> Self {
        Self::Invalid { key, message: message.into() }
    }

    pub(crate) fn env(var: &'static str, message: impl Into<String>) -> Self {
        Self::Env { var, message: message.into() }
    }

    pub(crate) fn token_file(path: &std::path::Path, reason: impl Into<String>) -> Self {
        Self::AuthorizationTokenFile { path: path.to_owned(), reason: reason.into() }
    }
}
