//! `keyless serve`: the credential listener (every enabled adapter's routes on one loopback
//! address) and the admin listener, with graceful shutdown.
//!
//! Each listener is the shared accept loop (`keyless_provider::listener`) with the sidecar's
//! bounds (the security rules, docs/reliability.md): a deadline for a request's headers
//! (slowloris), a size bound on them (431), and a bounded number of connections where idle ones
//! give way to new clients, so a connection flood cannot starve a real client.
//! With the peer check on (`keyless exec`; `listen_uid_check`), the credential listener asks the
//! kernel once per connection which user the peer is (`keyless_provider::peer_user`) and answers
//! every request of another user's connection with its route's native 403.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use keyless_core::{AppEnvVar, Context};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::info;

use keyless_provider::guard::GuardLayer;
use keyless_provider::listener::{Limits, Listener, PlainTcp};
use keyless_provider::peer_user::OwnUser;
use keyless_provider::{AppHost, RouteCollision, Routes, Rules, StandIn};

use crate::admin::{self, AdminState};
use crate::providers::Running;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr} ({what}): {source}; {}", bind_hint(source, *addr, flag))]
    Bind { addr: SocketAddr, what: &'static str, flag: &'static str, source: std::io::Error },
    #[error("{0}")]
    Routes(#[from] RouteCollision),
    #[error("{0}")]
    Server(std::io::Error),
}

/// What to do about a listener that could not bind, by cause.
pub fn bind_hint(error: &std::io::Error, addr: SocketAddr, flag: &str) -> String {
    match error.kind() {
        std::io::ErrorKind::PermissionDenied if addr.port() < 1024 => format!(
            "ports below 1024 need root or the CAP_NET_BIND_SERVICE capability: pick a port above 1023 with {flag}"
        ),
        std::io::ErrorKind::PermissionDenied => {
            format!("the system refused this address to this user (a security policy?): pick another with {flag}")
        }
        std::io::ErrorKind::AddrInUse => {
            format!("another process (another keyless?) listens there: stop it, or pick a free port with {flag}")
        }
        std::io::ErrorKind::AddrNotAvailable => {
            format!("no network interface of this machine has that address: pick a local address with {flag}")
        }
        _ => format!("pick another address with {flag}"),
    }
}

/// Bound listeners with their routes, not yet serving.
pub struct Sidecar {
    credentials: TcpListener,
    admin: TcpListener,
    routes: Routes,
    admin_router: Router,
    providers: Vec<Running>,
    gate: Arc<AtomicBool>,
    /// Set: the credential listener serves only this user's processes. On unless turned off
    /// ([`Sidecar::with_uid_check`]): `keyless exec` and `keyless dev` keep it, `keyless serve`
    /// follows `listen_uid_check`.
    own_user: Option<OwnUser>,
}

impl Sidecar {
    /// Binds both listeners. `gated` holds `/readyz` red until [`Sidecar::open_gate`].
    pub async fn bind(
        listen: SocketAddr,
        admin_listen: SocketAddr,
        providers: Vec<Running>,
        ctx: &Context,
        gated: bool,
    ) -> Result<Self, ServeError> {
        // Routes first: a collision is a configuration error reported before anything listens.
        let routes = crate::providers::routes(&providers, &ctx.metrics)?;
        let credentials = TcpListener::bind(listen).await.map_err(|source| ServeError::Bind {
            addr: listen,
            what: "credential listener",
            flag: "--listen",
            source,
        })?;
        let admin = TcpListener::bind(admin_listen).await.map_err(|source| ServeError::Bind {
            addr: admin_listen,
            what: "admin listener",
            flag: "--admin-listen",
            source,
        })?;
        let gate = Arc::new(AtomicBool::new(!gated));
        let admin_router = admin::router(AdminState {
            readiness: providers.iter().flat_map(|p| p.started.readiness()).collect(),
            metrics: ctx.metrics.clone(),
            gate: gate.clone(),
        })
        // The Host rule (DNS rebinding) holds on the admin routes too.
        .route_layer(GuardLayer::new(Rules::admin()));
        Ok(Self { credentials, admin, routes, admin_router, providers, gate, own_user: Some(OwnUser::current()) })
    }

    /// With `on` (the default), credentials are served only to processes of the user keyless runs
    /// as: any other user's connection gets each route's native 403. `keyless serve` sets it from
    /// `listen_uid_check`; in a pod only the pod's containers reach loopback, and they may run as
    /// other users.
    pub fn with_uid_check(mut self, on: bool) -> Self {
        self.own_user = on.then(OwnUser::current);
        self
    }

    pub fn listen_addr(&self) -> SocketAddr {
        self.credentials.local_addr().unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.local_addr().unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// The env vars an app needs to reach every enabled provider through this sidecar.
    pub fn app_env(&self) -> Vec<AppEnvVar> {
        let app = AppHost::for_listener(self.listen_addr());
        self.providers.iter().flat_map(|p| p.started.app_env(&app)).collect()
    }

    /// Writes `provider`'s stand-in credential file into `dir` ([`Started::stand_in`]), for a
    /// program that reaches this sidecar; `None` when it has none or is not served.
    pub fn stand_in(&self, provider: &str, dir: &std::path::Path) -> Result<Option<StandIn>, String> {
        let app = AppHost::for_listener(self.listen_addr());
        match self.providers.iter().find(|p| p.name == provider) {
            Some(p) => p.started.stand_in(&app, dir).map_err(|e| format!("{provider}: {e}")),
            None => Ok(None),
        }
    }

    /// Every configured identity's readiness (what `/readyz` reports; `keyless exec` waits on it).
    pub fn readiness(&self) -> Vec<Arc<dyn keyless_core::Readiness>> {
        self.providers.iter().flat_map(|p| p.started.readiness()).collect()
    }

    #[cfg_attr(
        not(feature = "emulator"),
        expect(dead_code, reason = "keyless dev opens it once the env file is written")
    )]
    pub fn gate(&self) -> Arc<AtomicBool> {
        self.gate.clone()
    }

    /// Serves until `shutdown` resolves, then stops accepting, finishes in-flight requests (for at
    /// most [`SHUTDOWN_GRACE`]) and closes idle connections.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), ServeError> {
        let (stop_tx, stop_rx) = watch::channel(false);
        info!(listen = %self.listen_addr(), admin = %self.admin_addr(), "keyless is serving");
        if let Some(own) = self.own_user {
            info!(uid = own.uid(), "serving credentials only to processes of this user (listen_uid_check)");
        }
        let credentials = Listener::serving_only("credential listener", limits(MAX_CONNECTIONS), self.own_user);
        let admin = Listener::new("admin listener", limits(MAX_ADMIN_CONNECTIONS));
        let credentials = tokio::spawn(credentials.serve(self.credentials, PlainTcp, self.routes, stop_rx.clone()));
        let admin = tokio::spawn(admin.serve(self.admin, PlainTcp, self.admin_router, stop_rx));
        shutdown.await;
        info!("shutting down: finishing in-flight requests");
        self.gate.store(false, Ordering::Release);
        let _ = stop_tx.send(true);
        for server in [credentials, admin] {
            server.await.map_err(|e| ServeError::Server(std::io::Error::other(e)))?;
        }
        Ok(())
    }
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
///
/// On unix the handlers are installed by this call, not when the future is first polled (elsewhere
/// Ctrl-C's is, at the first poll): a command calls
/// it before anyone can see it started (a port bound, a file written), so a signal sent the moment
/// it looks ready is a clean stop, never the default action (death with the signal).
pub fn termination() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let (term, interrupt) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()));
        async move {
            match (term, interrupt) {
                (Ok(mut term), Ok(mut interrupt)) => {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = interrupt.recv() => {}
                    }
                }
                (Ok(mut one), Err(_)) | (Err(_), Ok(mut one)) => {
                    one.recv().await;
                }
                // Neither could be installed: the signals keep their default action.
                (Err(_), Err(_)) => std::future::pending().await,
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// How long a client may take to send a request's headers. It also bounds how long a keep-alive
/// connection may sit idle between requests (hyper starts the clock when it waits for a head):
/// loopback clients send a request at once, so this only ever cuts off slow or stuck peers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head (request line and headers) accepted; a larger one gets 431. Real clients
/// send well under 2 KiB; the longest legitimate part is a GCE ID-token audience.
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Most header fields in one request (431 beyond).
const MAX_HEADERS: usize = 64;
/// Open connections per listener. At the limit a new connection displaces the oldest one that has
/// no request in progress (idle keep-alive or still sending its headers), so a flood of silent or
/// slow connections cannot lock out a real client; it waits only while every connection is busy.
/// No cap per peer: on loopback every client is the same address.
const MAX_CONNECTIONS: usize = 1024;
const MAX_ADMIN_CONNECTIONS: usize = 128;
/// In-flight requests may take up to `cache.request_wait` (10 s by default) when nothing is cached.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

/// The bounds of a sidecar listener holding at most `connections`.
pub(crate) fn limits(connections: usize) -> Limits {
    Limits {
        connections,
        per_peer: connections,
        handshake_timeout: HEADER_READ_TIMEOUT,
        header_read_timeout: HEADER_READ_TIMEOUT,
        // Head and body together: only the one POST route reads a body (a form of at most
        // `keyless_provider::MAX_FORM_BODY`, which arrives with its head); the rules refuse one
        // everywhere else.
        request_timeout: HEADER_READ_TIMEOUT,
        max_head_bytes: MAX_HEAD_BYTES,
        max_headers: MAX_HEADERS,
        shutdown_grace: SHUTDOWN_GRACE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A SIGTERM between the call and the first poll is caught. Before the handlers were installed
    /// by the call, a `keyless dev` stopped the moment its env file appeared died of the signal
    /// (the default action) instead of exiting 0; here the test process itself would die.
    #[cfg(unix)]
    #[tokio::test]
    async fn a_signal_before_the_first_poll_is_a_clean_stop() {
        let terminated = termination();
        rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::TERM)
            .expect("kill(self, SIGTERM)");
        tokio::time::timeout(Duration::from_secs(30), terminated).await.expect("the SIGTERM was not seen");
    }
}
