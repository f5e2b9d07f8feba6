//! `keyless webhook`: the mutating admission webhook (docs/injection.md). AdmissionReview v1 over
//! TLS on `--listen` (`/mutate`: pods labelled `keyless.dev/inject: "true"`; `/mutate-namespace`:
//! pods of namespaces labelled `keyless.dev/inject: enabled`), `/healthz`, `/readyz`, `/metrics`
//! in plain HTTP on `--admin-listen`. The injection is keyless-inject's, as `keyless inject`'s.

mod accounts;
mod metrics;
mod review;
mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use keyless_inject::Namespace;
use tokio::net::TcpListener;
use tower::ServiceExt;
use tracing::{debug, info, warn};

pub use review::FailurePolicy;

use crate::inject::InjectArgs;

/// An AdmissionReview holds the object and the old one, each at most the API server's ~3 MiB.
const MAX_BODY: usize = 8 * 1024 * 1024;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; the API server keeps a few open per replica.
const MAX_CONNECTIONS: usize = 256;

#[derive(Debug, Clone, clap::Args)]
pub struct WebhookArgs {
    /// The HTTPS listener the API server calls.
    #[arg(long, default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,
    /// /healthz, /readyz (the ServiceAccount cache is synced), /metrics, in plain HTTP.
    #[arg(long, default_value = "0.0.0.0:9812")]
    pub admin_listen: SocketAddr,
    /// PEM certificate chain of the webhook's Service name.
    #[arg(long)]
    pub tls_cert: PathBuf,
    /// PEM private key of that certificate.
    #[arg(long)]
    pub tls_key: PathBuf,
    /// How often the certificate files are checked for a renewal.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub tls_reload_interval: Duration,
    /// An opted-in pod keyless cannot inject (malformed annotation, unreadable ServiceAccount):
    /// refused (Fail) or admitted without keyless with a warning (Ignore). Give the
    /// MutatingWebhookConfiguration's failurePolicy (the chart does).
    #[arg(long, value_enum, default_value = "fail")]
    pub failure_policy: FailurePolicy,
    #[command(flatten)]
    pub inject: InjectArgs,
}

#[derive(Clone)]
struct App {
    reviewer: Arc<review::Reviewer>,
}

pub async fn run(args: WebhookArgs) -> Result<(), String> {
    let cert = tls::ReloadingCert::load(&args.tls_cert, &args.tls_key)?;
    cert.reload_every(args.tls_reload_interval);
    let client = kube::Client::try_default().await.map_err(|e| {
        format!(
            "cannot configure the Kubernetes client: {e} (in a pod: its ServiceAccount token; elsewhere: KUBECONFIG)"
        )
    })?;
    let accounts = accounts::ServiceAccounts::watch(client);
    let metrics = metrics::WebhookMetrics::new();
    let reviewer = review::Reviewer {
        options: args.inject.options(),
        accounts: accounts.clone(),
        policy: args.failure_policy,
        metrics: metrics.clone(),
    };
    let app = App { reviewer: Arc::new(reviewer) };
    let listener = bind(args.listen, "--listen").await?;
    let admin = bind(args.admin_listen, "--admin-listen").await?;
    info!(listen = %args.listen, admin = %args.admin_listen, "keyless webhook listening");
    let admin_router = admin_router(accounts, metrics);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(admin, admin_router).await {
            warn!(error = %e, "the admin listener stopped");
        }
    });
    let mut server_config = rustls::ServerConfig::builder().with_no_client_auth().with_cert_resolver(cert);
    server_config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config));
    tokio::select! {
        () = serve_tls(listener, acceptor, review_router(app)) => Ok(()),
        () = crate::serve::termination() => Ok(()),
    }
}

async fn bind(address: SocketAddr, flag: &str) -> Result<TcpListener, String> {
    TcpListener::bind(address).await.map_err(|e| format!("cannot listen on {address} ({flag}): {e}"))
}

fn review_router(app: App) -> Router {
    Router::new()
        .route("/mutate", post(|state, body| mutate(state, body, Namespace::Unknown)))
        .route("/mutate-namespace", post(|state, body| mutate(state, body, Namespace::OptedIn)))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(app)
}

async fn mutate(State(app): State<App>, body: Bytes, namespace: Namespace) -> Response {
    match app.reviewer.review(&body, namespace).await {
        Ok(review) => axum::Json(review).into_response(),
        Err(e) => {
            app.reviewer.metrics.error("bad_request");
            (StatusCode::BAD_REQUEST, e).into_response()
        }
    }
}

fn admin_router(accounts: accounts::ServiceAccounts, metrics: metrics::WebhookMetrics) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let synced = accounts.is_synced();
                async move {
                    if synced {
                        (StatusCode::OK, "ready\n")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "the ServiceAccount cache is not synced yet\n")
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let text = metrics.encode();
                async move { text }
            }),
        )
}

/// Accepts TLS connections and serves HTTP/1.1 on each (the API server's admission client).
async fn serve_tls(listener: TcpListener, acceptor: tokio_rustls::TlsAcceptor, router: Router) {
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else { return };
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                warn!(error = %e, "accepting a connection failed");
                continue;
            }
        };
        let (acceptor, router) = (acceptor.clone(), router.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => return debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => return debug!(%peer, "TLS handshake timed out"),
            };
            let service =
                hyper::service::service_fn(move |request: hyper::Request<Incoming>| router.clone().oneshot(request));
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(tls), service);
            if let Err(e) = connection.await {
                debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}
