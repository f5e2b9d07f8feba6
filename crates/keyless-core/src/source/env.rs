//! The environment-variable source: GitLab CI's `id_tokens:` puts one JWT per name in the job's
//! environment (docs/protocols.md 6.2), CircleCI `CIRCLE_OIDC_TOKEN_V2`. The value is fixed for the
//! process, so the driver only reads it again on its slow poll or when a cloud rejects it.

use std::time::Duration;

use super::{NoChanges, Schedule, SourceId, SourceKind, TokenOrigin};
use crate::secret::Secret;
use crate::token::{MAX_SUBJECT_TOKEN_BYTES, SubjectToken, TokenError};

/// A subject token in an environment variable of this process.
#[derive(Debug)]
pub struct EnvOrigin {
    id: SourceId,
    var: String,
    /// The token itself: never in `Debug`.
    value: Option<Secret<String>>,
}

impl EnvOrigin {
    /// The variable `var`, as `env` holds it.
    pub fn new(var: &str, env: &dyn Fn(&str) -> Option<String>) -> Self {
        Self { id: SourceId::new(SourceKind::Env, var), var: var.to_owned(), value: env(var).map(Secret::new) }
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
            first_read_wait: None,
        }
    }

    fn changes(&mut self) -> NoChanges {
        NoChanges
    }

    async fn read(&mut self) -> Result<SubjectToken, TokenError> {
        let unavailable = |reason: String| TokenError::Unavailable { from: self.id.clone(), reason };
        let value = self.value.as_ref().map(|v| v.expose().as_str()).filter(|v| !v.trim().is_empty());
        let value = value.ok_or_else(|| TokenError::Unconfigured {
            from: self.id.clone(),
            reason: format!(
                "environment variable {} is not set (in GitLab CI, declare it under `id_tokens:` with the `aud:` \
                 this cloud expects)",
                self.var
            ),
        })?;
        if value.len() as u64 > MAX_SUBJECT_TOKEN_BYTES {
            return Err(unavailable(format!("its value is larger than {MAX_SUBJECT_TOKEN_BYTES} bytes")));
        }
        SubjectToken::parse(value).map_err(|shape| TokenError::Invalid { from: self.id.clone(), shape })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_token_is_read_but_never_in_debug() {
        let payload = "eyJzdWIiOiJzZWNyZXQifQ";
        let token = format!("eyJhbGciOiJub25lIn0.{payload}.c2ln");
        let mut origin = EnvOrigin::new("CI_ID_TOKEN", &|_| Some(token.clone()));
        assert!(!format!("{origin:?}").contains(payload), "{origin:?}");
        assert!(origin.read().await.is_ok());
    }
}
