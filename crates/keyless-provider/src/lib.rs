//! keyless-provider: the contract every cloud adapter implements, and the rules every native
//! route shares.
//!
//! - [`Provider`]: one cloud (its config section, zero-config from the environment, validation),
//!   with [`Configured`] (the routes it will claim, a diagnosis for `keyless check`, start) and
//!   [`Started`] (its native routes, readiness, the app's environment). The binary iterates
//!   providers through this contract; it lists none of their methods by hand.
//! - [`shadow`]: the local credential sources SDKs rank above each provider's endpoints.
//! - [`routes`]: route claims, checked for collisions before anything listens.
//! - [`dispatch`]: the credential listener's request path: every provider's routes in one table,
//!   each behind its provider's rules, with the request counter.
//! - [`listener`]: the accept loop every keyless HTTP/1.1 server shares (the credential, admin,
//!   webhook and node listeners), each with its own [`listener::Limits`]; with [`peer_user`], the
//!   kernel's answer to which user a loopback connection comes from.
//! - [`guard`]: the request rules of every native route (Host, forwarding headers, duplicated
//!   security headers, request bodies, query length), answered in each route's native shape.
//! - [`upstream`]: the HTTPS client rules of every token-service call (timeouts from
//!   `cache.exchange_timeout`, no redirects, loopback and link-local without proxy, bounded bodies) and one
//!   classification of transport failures and transient statuses.
//! - [`body`]: credential bodies rendered once, with per-second countdowns.
//! - [`dev`]: each provider's section of a configuration against the local emulator, assembled
//!   into one typed configuration.
//! - [`AppHost`]: the address an app in the pod dials for a listen address.
//!
//! Core serves no HTTP (it holds only the one upstream client stack); this crate holds the serving
//! side the adapters would otherwise each repeat, and the listener that serves it: the binary only
//! wires commands.
#![forbid(unsafe_code)]

pub mod body;
mod contract;
pub mod dev;
pub mod dispatch;
pub mod guard;
mod listen;
pub mod listener;
pub mod peer_user;
pub mod routes;
pub mod shadow;
pub mod upstream;

use axum::Router;

pub use contract::{
    BoxFuture, Configured, Diagnosis, Env, FormBody, MAX_FORM_BODY, NativeRoute, Provider, ProviderError, RouteMethod,
    Section, StandIn, Started,
};
pub use dev::{DevConfig, DevEmulator, DevSection, DevTable, DevToken};
pub use dispatch::{Handler, Request, Routes};
pub use guard::{CallerRefusal, NativeErrors, Rules, Violation};
pub use listen::AppHost;
pub use routes::{RouteClaim, RouteCollision};
pub use shadow::{Filtered, ShadowFile, ShadowFileKind, ShadowVar, Shadowing};

/// One provider's native routes behind the shared request rules, as the credential listener
/// serves them ([`Routes`]), as an axum `Router` (the adapters' tests serve it with
/// `axum::serve`). Its routes are checked first, so a provider serving a malformed or repeated
/// path is an error, not a panic.
pub fn router(name: &'static str, started: &dyn Started) -> Result<Router, RouteCollision> {
    Ok(Router::new().fallback_service(Routes::new([(name, started)], None)?))
}
