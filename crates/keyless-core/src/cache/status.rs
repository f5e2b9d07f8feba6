//! What `/readyz` and `keyless exec` read of a cache: each configured identity's status.

use std::fmt::Debug;
use std::time::SystemTime;

use crate::exchange::{Exchange, ExchangeError};

use super::CredentialCache;

/// Whether one configured identity holds a valid credential, and if not, why.
#[derive(Debug, Clone)]
pub struct IdentityStatus {
    pub provider: &'static str,
    pub identity: String,
    /// What the credential is for within the identity ([`Exchange::describe_key`]); empty when
    /// the identity has one credential.
    pub key: String,
    pub valid_until: Option<SystemTime>,
    pub last_error: Option<ExchangeError>,
}

impl IdentityStatus {
    pub fn ready(&self) -> bool {
        self.valid_until.is_some()
    }

    /// `aws arn:aws:iam::1:role/app`, `gcp app@p.iam.gserviceaccount.com (access token, scopes
    /// cloud-platform)`: the credential as a person reads it in `/readyz` and `keyless exec`.
    pub fn name(&self) -> String {
        if self.key.is_empty() {
            format!("{} {}", self.provider, self.identity)
        } else {
            format!("{} {} ({})", self.provider, self.identity, self.key)
        }
    }
}

/// Anything whose configured identities count for `/readyz`.
pub trait Readiness: Send + Sync {
    fn statuses(&self) -> Vec<IdentityStatus>;
}

impl<E: Exchange> Readiness for CredentialCache<E> {
    fn statuses(&self) -> Vec<IdentityStatus> {
        CredentialCache::statuses(self)
    }
}
