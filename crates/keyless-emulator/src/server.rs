//! The one HTTPS listener: TLS handshakes, HTTP/1.1 connections, the path router, bounds, and
//! graceful shutdown.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt as _;
use tower_http::timeout::TimeoutLayer;

use crate::control::Service;
use crate::{SharedState, actions, aws, azure, control, gcp, issuer, quota};

/// No request the emulator accepts comes close: tokens are at most 20 000 characters.
const MAX_BODY_BYTES: usize = 64 * 1024;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_CONNECTIONS: usize = 512;
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Every route, with the clouds' real paths.
pub(crate) fn router(state: SharedState) -> Router {
    // Each token service's calls over its quota are answered before its handler (`quota.rs`).
    let over_quota =
        |service: Service| axum::middleware::from_fn_with_state((Arc::clone(&state), service), quota::enforce);
    Router::new()
        // The cluster's OIDC issuer.
        .route("/.well-known/openid-configuration", get(issuer::discovery))
        .route("/openid/v1/jwks", get(issuer::issuer_jwks))
        // AWS STS (query API: POST form or GET query).
        .route("/", post(aws::sts).get(aws::sts).route_layer(over_quota(Service::AwsSts)))
        // Google STS, IAM Credentials, OAuth2.
        .route("/v1/token", post(gcp::sts_token).route_layer(over_quota(Service::GcpSts)))
        .route(
            "/v1/projects/{project}/serviceAccounts/{target}",
            post(gcp::iam_credentials).route_layer(over_quota(Service::GcpIam)),
        )
        .route("/tokeninfo", get(gcp::tokeninfo))
        .route("/oauth2/v3/tokeninfo", get(gcp::tokeninfo))
        .route("/oauth2/v3/certs", get(gcp::certs))
        // Entra ID.
        .route("/{tenant}/oauth2/v2.0/token", post(azure::token).route_layer(over_quota(Service::AzureToken)))
        .route("/{tenant}/discovery/v2.0/keys", get(azure::keys))
        .route("/{tenant}/v2.0/.well-known/openid-configuration", get(azure::openid_configuration))
        // GitHub Actions' OIDC token endpoint and issuer.
        .route(actions::REQUEST_PATH, get(actions::id_token))
        .route("/_github/.well-known/openid-configuration", get(actions::discovery))
        .route("/_github/.well-known/jwks", get(actions::jwks_document))
        .route("/_emulator/github-actions/fault", post(actions::set_fault))
        // Test controls.
        .route("/_emulator/counters", get(control::counters))
        .route("/_emulator/faults", post(control::inject_fault).delete(control::clear_faults))
        .route("/_emulator/faults/{service}", delete(control::clear_service_faults))
        .route("/_emulator/rotate", post(control::rotate))
        .route("/_emulator/mint", post(control::mint))
        .route("/_emulator/identities", get(control::identities))
        .route("/_emulator/trusted-issuers", post(control::trust_issuer))
        .route("/_emulator/quotas", get(quota::quotas).post(quota::set_quota))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, REQUEST_TIMEOUT))
        .with_state(state)
}

/// Accepts connections until `shutdown` fires (or its sender is dropped), then lets in-flight
/// requests finish for a short grace period.
pub(crate) async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    router: Router,
    mut shutdown: watch::Receiver<bool>,
) {
    let graceful = GracefulShutdown::new();
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            permit = Arc::clone(&permits).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            _ = shutdown.changed() => break,
        };
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a connection failed");
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let acceptor = acceptor.clone();
        let router = router.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _permit = permit;
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed (does the client trust ca.pem?)");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let service =
                hyper::service::service_fn(move |request: hyper::Request<Incoming>| router.clone().oneshot(request));
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(tls), service);
            if let Err(e) = watcher.watch(connection).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown()).await.is_err() {
        tracing::warn!("connections still open after the shutdown grace period; closing them");
    }
}
