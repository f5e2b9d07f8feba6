//! keyless-provider: the contract every cloud adapter implements, and the rules every native
//! route shares.
//!
//! - [`Provider`]: one cloud (its config section, zero-config from the environment, validation),
//!   with [`Configured`] (the routes it will claim, a diagnosis for `keyless check`, start) and
//!   [`Started`] (its native routes, readiness, the app's environment). The binary iterates
//!   providers through this contract; it lists none of their methods by hand.
//! - [`routes`]: route claims, checked for collisions before anything listens.
//! - [`guard`]: the request rules of every native route (Host, forwarding headers, duplicated
//!   security headers, request bodies, query length), answered in each route's native shape.
//! - [`upstream`]: the HTTPS client rules of every token-service call (timeouts from
//!   `cache.exchange_timeout`, no redirects, loopback without proxy, bounded bodies) and one
//!   classification of transport failures and transient statuses.
//! - [`body`]: credential bodies rendered once, with per-second countdowns.
//! - [`AppHost`]: the address an app in the pod dials for a listen address.
//!
//! Core stays free of HTTP; this crate holds the HTTP the adapters would otherwise each repeat.
#![forbid(unsafe_code)]

pub mod body;
mod contract;
pub mod guard;
mod listen;
pub mod routes;
pub mod upstream;

use axum::Router;

pub use contract::{BoxFuture, Configured, Diagnosis, Env, NativeRoute, Provider, ProviderError, Started};
pub use guard::{NativeErrors, Rules, Violation};
pub use listen::AppHost;
pub use routes::{RouteClaim, RouteCollision};

/// One provider's native routes behind the shared request rules ([`guard`]), as the credential
/// listener serves them. Its routes are checked first ([`routes::check_servable`]), so a
/// provider serving a malformed or repeated path is an error, not a panic in axum.
pub fn router(name: &str, started: &dyn Started) -> Result<Router, RouteCollision> {
    let routes = started.routes();
    let served: Vec<RouteClaim> =
        routes.iter().map(|r| RouteClaim::new(r.path.clone(), format!("{name} routes"))).collect();
    routes::check_servable(&served)?;
    let router = routes.into_iter().fold(Router::new(), |router, route| router.route(&route.path, route.handler));
    Ok(router.route_layer(guard::GuardLayer::new(started.rules())))
}
