//! `keyless webhook`: the mutating admission webhook (docs/injection.md). AdmissionReview v1 over
//! TLS on `--listen` (`/mutate`: pods labelled `keyless.dev/inject: "true"`; `/mutate-namespace`:
//! pods of namespaces labelled `keyless.dev/inject: enabled`), `/healthz`, `/readyz`, `/metrics`
//! in plain HTTP on `--admin-listen`. The injection is keyless-inject's, as `keyless inject`'s.

mod accounts;
mod metrics;
mod review;
mod tls;

use std::future::Future;
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
use hyper_util::server::graceful::GracefulShutdown;
use keyless_inject::Namespace;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
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
/// At termination, the reviews in progress get this long to be answered (the API server waits
/// `timeoutSeconds`, at most 30 s, for one).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Pause after an accept error such as EMFILE, so a full descriptor table does not spin the loop.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

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
    /// How often the certificate files are checked for a renewal (1s to 1 day).
    #[arg(long, default_value = "10s", value_parser = crate::durations::reload_interval)]
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
    serve_tls(listener, acceptor, review_router(app), crate::serve::termination()).await;
    Ok(())
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

/// Accepts TLS connections and serves HTTP/1.1 on each (the API server's admission client) until
/// `shutdown` resolves; then stops accepting, answers the reviews in progress (for at most
/// [`SHUTDOWN_GRACE`]) and closes idle keep-alive connections, so a rolling update of the webhook
/// does not cut a review short (with `failurePolicy: Fail`, that pod's creation would fail).
async fn serve_tls(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    router: Router,
    shutdown: impl Future<Output = ()>,
) {
    let graceful = GracefulShutdown::new();
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => None,
            accepted = accept(&listener, &permits) => accepted,
        };
        let Some((permit, tcp, peer)) = accepted else { break };
        let (acceptor, router, watcher) = (acceptor.clone(), router.clone(), graceful.watcher());
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
            if let Err(e) = watcher.watch(connection).await {
                debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    info!("shutting down: answering the reviews in progress");
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown()).await.is_err() {
        warn!(grace = ?SHUTDOWN_GRACE, "reviews still in progress after the shutdown grace period; closing them");
    }
}

/// The next connection, once one of the [`MAX_CONNECTIONS`] permits is free (`None`: the
/// semaphore was closed, which nothing does).
async fn accept(
    listener: &TcpListener,
    permits: &Arc<Semaphore>,
) -> Option<(OwnedSemaphorePermit, TcpStream, SocketAddr)> {
    loop {
        let permit = Arc::clone(permits).acquire_owned().await.ok()?;
        match listener.accept().await {
            Ok((tcp, peer)) => return Some((permit, tcp, peer)),
            Err(e) => {
                // EMFILE/ENFILE/ECONNABORTED: the listener itself is fine; try again shortly.
                warn!(error = %e, "accepting a connection failed");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::sync::Notify;

    use super::*;

    #[tokio::test]
    async fn at_termination_a_review_in_progress_is_answered_before_the_server_returns() {
        let rcgen::CertifiedKey { cert, signing_key } =
            rcgen::generate_simple_self_signed(vec!["webhook.test".to_owned()]).expect("generates a certificate");
        let key = rustls_pki_types::PrivateKeyDer::Pkcs8(signing_key.serialize_der().into());
        let config =
            rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("protocol versions")
                .with_no_client_auth()
                .with_single_cert(vec![cert.der().clone()], key)
                .expect("a usable pair");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let (started, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        let router = Router::new().route(
            "/mutate",
            post({
                let (started, release) = (Arc::clone(&started), Arc::clone(&release));
                move || async move {
                    started.notify_one();
                    release.notified().await;
                    "answered"
                }
            }),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
        let address = listener.local_addr().expect("bound");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve_tls(listener, acceptor, router, async {
            let _ = stopped.await;
        }));
        let client = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(cert.pem().as_bytes()).expect("PEM"))
            .resolve("webhook.test", address)
            .build()
            .expect("client");
        let url = format!("https://webhook.test:{}/mutate", address.port());
        let review = tokio::spawn({
            let (client, url) = (client.clone(), url.clone());
            async move { client.post(url).send().await?.text().await }
        });
        started.notified().await;

        stop.send(()).expect("the server listens for shutdown");
        // The listener closes at once; the review in progress holds the server open.
        wait_until_refused(address).await;
        let mut server = server;
        let returned = tokio::time::timeout(Duration::from_millis(200), &mut server).await;
        assert!(returned.is_err(), "the server returned with a review in progress");
        release.notify_one();
        let answer = tokio::time::timeout(Duration::from_secs(5), review).await.expect("answered in time");
        assert_eq!(answer.expect("joins").expect("the review is answered"), "answered");
        tokio::time::timeout(Duration::from_secs(5), server).await.expect("returns once answered").expect("joins");
    }

    /// Waits until a new connection is refused (the accept loop has stopped and closed the listener).
    async fn wait_until_refused(address: SocketAddr) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(address).await.is_ok() {
            assert!(tokio::time::Instant::now() < deadline, "the listener still accepts after shutdown");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
