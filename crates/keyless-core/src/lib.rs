//! keyless-core: everything keyless does that does not depend on a cloud or an HTTP route.
//!
//! - [`TokenSource`]: the projected service-account token, surviving the kubelet's rotations;
//! - [`Exchange`]: what a cloud adapter implements, with [`ExchangeError`] classification;
//! - [`CredentialCache`]: pre-warm, refresh-ahead, single-flight, backoff, serve-while-valid;
//! - [`Secret`], [`Clock`](clock::Clock), [`Metrics`].
#![forbid(unsafe_code)]

pub mod appenv;
pub mod cache;
pub mod clock;
mod context;
pub mod exchange;
pub mod metrics;
pub mod printable;
mod regular_file;
mod secret;
mod task;
pub mod token;
pub mod upstream;
pub mod watcher;

pub use appenv::{AppEnvValue, AppEnvVar};
pub use cache::{CachePolicy, CredentialCache, IdentityStatus, Readiness};
pub use context::Context;
pub use exchange::{Attempt, ErrorClass, Exchange, ExchangeError, Expiring, Issued};
pub use metrics::Metrics;
pub use regular_file::{RegularFileError, read_regular_file};
pub use secret::Secret;
pub use task::AbortOnDrop;
pub use token::{Claims, SubjectToken, TokenError, TokenShapeError};
pub use watcher::{TokenSource, WatchOptions};
