//! The environment-variable source: GitLab CI's `id_tokens:` puts one JWT per name in the job's
//! environment (docs/protocols.md 6.2), CircleCI `CIRCLE_OIDC_TOKEN_V2`. The value is fixed for the
//! process, so the driver only reads it again on its slow poll or when a cloud rejects it.

use std::time::Duration;

use super::{NoChanges, Schedule, SourceId, SourceKind, TokenOrigin};
use crate::token::{MAX_SUBJECT_TOKEN_BYTES, SubjectToken, TokenError};

/// A subject token in an environment variable of this process.
#[derive(Debug)]
pub struct EnvOrigin {
    id: SourceId,
    var: String,
    value: Option<String>,
}

impl EnvOrigin {
    /// The variable `var`, as `env` holds it.
    pub fn new(var: &str, env: &dyn Fn(&str) -> Option<String>) -> Self {
        Self { id: SourceId::new(SourceKind::Env, var), var: var.to_owned(), value: env(var) }
    }
}

impl TokenOrigin for EnvOrigin {
    type Changes = NoChanges;

    fn id(&self) -> &SourceId {
        &self.id
    }

    fn schedule(&self) -> Schedule {
        Schedule {
            debounce: Duration::ZERO,
            poll: Duration::from_secs(3600),
            // The value cannot change: re-reading near `exp` would only repeat it.
            before_exp: Duration::ZERO,
            near_exp: Duration::from_secs(3600),
            after_failure: Duration::from_secs(3600),
            read_timeout: Duration::from_secs(1),
        }
    }

    fn changes(&mut self) -> NoChanges {
        NoChanges
    }

    async fn read(&mut self) -> Result<SubjectToken, TokenError> {
        let unavailable = |reason: String| TokenError::Unavailable { from: self.id.clone(), reason };
        let value = self.value.as_deref().filter(|v| !v.trim().is_empty()).ok_or_else(|| {
            unavailable(format!(
                "environment variable {} is not set (in GitLab CI, declare it under `id_tokens:` with the `aud:` \
                 this cloud expects)",
                self.var
            ))
        })?;
        if value.len() as u64 > MAX_SUBJECT_TOKEN_BYTES {
            return Err(unavailable(format!("its value is larger than {MAX_SUBJECT_TOKEN_BYTES} bytes")));
        }
        SubjectToken::parse(value).map_err(|shape| TokenError::Invalid { from: self.id.clone(), shape })
    }
}
