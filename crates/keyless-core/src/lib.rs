//! keyless-core: everything keyless does that does not depend on a cloud or an HTTP route.
//!
//! - [`TokenSource`]: the subject token from its source (a file surviving the kubelet's rotations,
//!   GitHub Actions, a variable, a URL, a command: each a [`TokenOrigin`]), bounded and escaped
//!   where it is hostile;
//! - [`Exchange`]: what a cloud adapter implements, with [`ExchangeError`] classification;
//! - [`CredentialCache`]: pre-warm, refresh-ahead, single-flight, backoff, serve-while-valid;
//! - [`Secret`], [`Clock`](clock::Clock), [`Metrics`].
#![forbid(unsafe_code)]

pub mod appenv;
pub mod cache;
pub mod clock;
mod context;
pub mod exchange;
pub mod files;
mod host;
pub mod metrics;
pub mod printable;
mod regular_file;
mod secret;
pub mod source;
mod task;
pub mod token;
pub mod upstream;

pub use appenv::{AppEnvValue, AppEnvVar};
pub use cache::{CachePolicy, CredentialCache, IdentityStatus, Readiness};
pub use context::Context;
pub use exchange::{Attempt, ErrorClass, Exchange, ExchangeError, Expiring, Issued};
pub use host::Host;
pub use metrics::Metrics;
pub use regular_file::{RegularFileError, read_regular_file};
pub use secret::Secret;
pub use source::{
    ChangeFeed, NoChanges, Schedule, SourceConfig, SourceDefaults, SourceId, SourceKind, SourceSpec, TokenOrigin,
    TokenSource, WatchOptions,
};
pub use task::AbortOnDrop;
pub use token::{Claims, MAX_SUBJECT_TOKEN_BYTES, SubjectToken, TokenError, TokenShapeError};
