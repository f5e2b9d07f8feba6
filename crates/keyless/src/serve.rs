//! `keyless serve`: the credential listener (every enabled adapter's routes on one loopback
//! address) and the admin listener, with graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use keyless_core::{AppEnvVar, Context, Metrics};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::info;

use crate::admin::{self, AdminState};
use crate::providers::Native;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr} ({what}): {source}; pick a free address with {flag}")]
    Bind { addr: SocketAddr, what: &'static str, flag: &'static str, source: std::io::Error },
    #[error("{0}")]
    Server(std::io::Error),
}

/// Bound listeners with their routes, not yet serving.
pub struct Sidecar {
    credentials: TcpListener,
    admin: TcpListener,
    router: Router,
    admin_router: Router,
    providers: Vec<Box<dyn Native>>,
    gate: Arc<AtomicBool>,
}

impl Sidecar {
    /// Binds both listeners. `gated` holds `/readyz` red until [`Sidecar::open_gate`].
    pub async fn bind(
        listen: SocketAddr,
        admin_listen: SocketAddr,
        providers: Vec<Box<dyn Native>>,
        ctx: &Context,
        gated: bool,
    ) -> Result<Self, ServeError> {
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
        let mut router = Router::new();
        for provider in &providers {
            let counted = provider
                .router()
                .route_layer(middleware::from_fn_with_state((ctx.metrics.clone(), provider.name()), count_request));
            router = router.merge(counted);
        }
        let gate = Arc::new(AtomicBool::new(!gated));
        let admin_router = admin::router(AdminState {
            readiness: providers.iter().flat_map(|p| p.readiness()).collect(),
            metrics: ctx.metrics.clone(),
            gate: gate.clone(),
        });
        Ok(Self { credentials, admin, router, admin_router, providers, gate })
    }

    pub fn listen_addr(&self) -> SocketAddr {
        self.credentials.local_addr().unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.local_addr().unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// The env vars an app needs to reach every enabled provider through this sidecar.
    pub fn app_env(&self) -> Vec<AppEnvVar> {
        let listen = self.listen_addr();
        self.providers.iter().flat_map(|p| p.app_env(listen)).collect()
    }

    pub fn gate(&self) -> Arc<AtomicBool> {
        self.gate.clone()
    }

    /// Serves until `shutdown` resolves, then stops accepting and finishes in-flight requests.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), ServeError> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let stopped = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        info!(listen = %self.listen_addr(), admin = %self.admin_addr(), "keyless is serving");
        let credentials = axum::serve(self.credentials, self.router).with_graceful_shutdown(stopped(stop_rx.clone()));
        let admin = axum::serve(self.admin, self.admin_router).with_graceful_shutdown(stopped(stop_rx));
        let credentials = tokio::spawn(async move { credentials.await });
        let admin = tokio::spawn(async move { admin.await });
        shutdown.await;
        info!("shutting down: finishing in-flight requests");
        self.gate.store(false, Ordering::Release);
        let _ = stop_tx.send(true);
        for server in [credentials, admin] {
            match server.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(ServeError::Server(e)),
                Err(e) => return Err(ServeError::Server(std::io::Error::other(e))),
            }
        }
        Ok(())
    }
}

/// Counts `keyless_requests_total{provider,route,status}`; `route` is the matched route template,
/// so the label set stays bounded whatever paths clients ask for.
async fn count_request(
    State((metrics, provider)): State<(Metrics, &'static str)>,
    request: Request,
    next: Next,
) -> Response {
    let route = request.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned()).unwrap_or_default();
    let response = next.run(request).await;
    metrics.record_request(provider, &route, response.status().as_u16());
    response
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub async fn termination() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
