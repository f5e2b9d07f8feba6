//! The `Exchange` trait each cloud adapter implements, and how its failures are classified.

use std::fmt::Debug;
use std::future::Future;
use std::hash::Hash;
use std::time::{Duration, SystemTime};

use crate::printable::upstream;
use crate::token::SubjectToken;

/// A value that stops being valid at a wall-clock instant set by the cloud.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expiring<T> {
    pub value: T,
    pub expires_at: SystemTime,
}

impl<T> Expiring<T> {
    pub fn new(value: T, expires_at: SystemTime) -> Self {
        Self { value, expires_at }
    }

    pub fn is_valid_at(&self, now: SystemTime) -> bool {
        now < self.expires_at
    }
}

/// What a successful exchange produced.
#[derive(Debug, Clone)]
pub struct Issued<C> {
    pub credential: Expiring<C>,
    /// The upstream's request id, for the exchange log line ([`request_id`]).
    pub request_id: Option<String>,
}

impl<C> Issued<C> {
    pub fn new(credential: Expiring<C>) -> Self {
        Self { credential, request_id: None }
    }

    pub fn with_request_id(mut self, id: Option<String>) -> Self {
        self.request_id = request_id(id);
        self
    }
}

/// A request id as an upstream's answer carries it (a header, a body's `trace_id`), escaped and
/// capped with [`upstream`] once, here: every adapter's ids reach the log lines through it.
fn request_id(id: Option<String>) -> Option<String> {
    id.map(|id| upstream(&id).into_owned())
}

/// One exchange tried outside the cache (`keyless check`): what was asked for (no secret), and
/// until when the issued credential is valid, or why none was issued.
#[derive(Debug)]
pub struct Attempt {
    pub what: String,
    pub result: Result<SystemTime, ExchangeError>,
}

/// How the cache should react to a failed exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Transient (5xx, timeouts, the IdP unreachable): retry with backoff.
    Retryable,
    /// The token service said "too many requests" (HTTP 429, AWS `Throttling`, Google
    /// `RESOURCE_EXHAUSTED`; docs/protocols.md 9): retry with backoff, never before its
    /// `Retry-After`, and never brought forward by a waiting request.
    Throttled,
    /// The cloud rejected the token as invalid or expired: re-read the token file, retry once.
    RereadToken,
    /// Will not succeed until configuration or the token changes (access denied, bad audience...).
    Terminal,
}

impl ErrorClass {
    pub fn label(self) -> &'static str {
        match self {
            ErrorClass::Retryable => "retryable_error",
            ErrorClass::Throttled => "throttled",
            ErrorClass::RereadToken => "token_rejected",
            ErrorClass::Terminal => "terminal_error",
        }
    }
}

/// A failed exchange. `message` says what failed; `hint` says what to do. Neither may contain a
/// token or key (adapters build them from claims and upstream error codes, never from secrets).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}{}", hint.as_ref().map(|h| format!(" (hint: {h})")).unwrap_or_default())]
pub struct ExchangeError {
    pub class: ErrorClass,
    /// The cloud's error code (`InvalidIdentityToken`, `invalid_grant`, `AADSTS70021`...), if any.
    pub code: Option<String>,
    pub message: String,
    pub hint: Option<String>,
    pub request_id: Option<String>,
    /// The upstream's `Retry-After`: the next attempt waits at least this long.
    pub retry_after: Option<Duration>,
    /// The cloud trusts no identity provider for the token's `iss` (no IAM OIDC provider, no
    /// pool provider, no federated credential names it). Set where the adapter classifies the
    /// answer, the one place that reads its text: `keyless check` then questions the token
    /// before anything proposes trusting that issuer.
    pub untrusted_issuer: bool,
}

impl ExchangeError {
    pub fn new(class: ErrorClass, message: impl Into<String>) -> Self {
        Self {
            class,
            code: None,
            message: message.into(),
            hint: None,
            request_id: None,
            retry_after: None,
            untrusted_issuer: false,
        }
    }

    /// Throttled by the token service; `retry_after` is its `Retry-After`, if it sent one.
    pub fn throttled(message: impl Into<String>, retry_after: Option<Duration>) -> Self {
        Self { retry_after, ..Self::new(ErrorClass::Throttled, message) }
    }

    pub fn retryable(message: impl Into<String>) -> Self {
        Self::new(ErrorClass::Retryable, message)
    }

    pub fn reread_token(message: impl Into<String>) -> Self {
        Self::new(ErrorClass::RereadToken, message)
    }

    pub fn terminal(message: impl Into<String>) -> Self {
        Self::new(ErrorClass::Terminal, message)
    }

    pub fn with_code(mut self, code: impl Into<String>) -> Self {
        self.code = Some(code.into());
        self
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Marks the error as the cloud trusting no identity provider for the token's issuer.
    pub fn with_untrusted_issuer(mut self) -> Self {
        self.untrusted_issuer = true;
        self
    }

    pub fn with_request_id(mut self, id: Option<String>) -> Self {
        self.request_id = request_id(id);
        self
    }
}

/// One cloud's token exchange: subject token in, short-lived credential out.
///
/// `Key` names what is being asked for within one configured identity (a scope set, an ID-token
/// audience, an Azure resource); an adapter with one credential per identity uses `()`.
pub trait Exchange: Send + Sync + 'static {
    type Key: Clone + Eq + Hash + Debug + Send + Sync + 'static;
    type Credential: Clone + Send + Sync + 'static;

    /// `aws`, `gcp` or `azure`: the `provider` label of logs and metrics.
    fn provider(&self) -> &'static str;

    /// The identity a key belongs to (role ARN, service-account e-mail, client id): the `identity`
    /// label of logs and metrics. Must not be secret.
    fn identity(&self, key: &Self::Key) -> String;

    /// What `key` asks for within its identity, in words a person reads beside the identity
    /// (`/readyz`, `keyless exec`, log lines): `access token, scopes cloud-platform`. Empty when
    /// the identity has one credential (`Key = ()`). Never Rust `Debug` text.
    fn describe_key(&self, _key: &Self::Key) -> String {
        String::new()
    }

    fn exchange(
        &self,
        key: &Self::Key,
        token: &SubjectToken,
    ) -> impl Future<Output = Result<Issued<Self::Credential>, ExchangeError>> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_id_is_escaped_and_capped_once_where_it_is_set() {
        let forged = Some("req-1\nlevel=INFO msg=\"credential refreshed\"".to_owned());
        let err = ExchangeError::retryable("x").with_request_id(forged.clone());
        assert_eq!(err.request_id.as_deref(), Some(r#"req-1\nlevel=INFO msg="credential refreshed""#));
        let issued =
            Issued::new(Expiring::new((), SystemTime::UNIX_EPOCH)).with_request_id(Some("r".repeat(64 * 1024)));
        assert!(issued.request_id.is_some_and(|id| id.len() < 2 * crate::printable::MAX_UPSTREAM_TEXT_BYTES));
        assert_eq!(ExchangeError::retryable("x").with_request_id(None).request_id, None);
    }
}
