//! `keyless webhook`: the mutating admission webhook (docs/injection.md). AdmissionReview v1 over
//! TLS on `--listen` (`/mutate`: pods labelled `keyless.dev/inject: "true"`; `/mutate-namespace`:
//! pods of namespaces labelled `keyless.dev/inject: enabled`), `/healthz`, `/readyz`, `/metrics`
//! in plain HTTP on `--admin-listen`. The injection is keyless-inject's, as `keyless inject`'s.

pub(crate) mod accounts;
mod intake;
mod metrics;
mod review;
mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use keyless_inject::Namespace;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::info;

pub use review::FailurePolicy;

use crate::inject::InjectArgs;
use keyless_provider::listener::{Handshake, Limits, Listener, PlainTcp};

/// From accept to the end of the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// From the moment a connection waits for a request (handshake done, or the previous answer
/// written) to the end of the request's head: also how long a keep-alive connection may idle.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// From that same moment to the end of the request's body. The API server sends a whole review at
/// once, inside its own `timeoutSeconds` (10 s by default).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The API server's requests carry a short head (a few hundred bytes).
const MAX_HEAD_BYTES: usize = 16 * 1024;
const MAX_HEADERS: usize = 64;
/// At termination, the reviews in progress get this long to be answered (the API server waits
/// `timeoutSeconds`, at most 30 s, for one).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Open connections to the admin listener at most (the kubelet's probes, a scraper or two); at the
/// limit a new one displaces the oldest not being answered.
const MAX_ADMIN_CONNECTIONS: usize = 128;

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
    /// Open connections at most. At the limit a new connection displaces the oldest one not being
    /// answered (handshaking, idle, or still sending its request).
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u16).range(1..))]
    pub max_connections: u16,
    /// Open connections from one source address at most (the API server needs a few per
    /// replica). Beyond it, a peer's new connection displaces its own oldest one not being
    /// answered, or is closed.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u16).range(1..))]
    pub max_connections_per_peer: u16,
    /// Reviews parsed and answered at once (each holds its pod in memory); others wait up to 2 s,
    /// then get 429 with Retry-After, which the API server retries.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub max_concurrent_reviews: u16,
    #[command(flatten)]
    pub inject: InjectArgs,
}

impl WebhookArgs {
    fn limits(&self) -> Limits {
        limits(usize::from(self.max_connections), usize::from(self.max_connections_per_peer))
    }
}

fn limits(connections: usize, per_peer: usize) -> Limits {
    Limits {
        connections,
        per_peer,
        handshake_timeout: HANDSHAKE_TIMEOUT,
        header_read_timeout: HEADER_READ_TIMEOUT,
        request_timeout: REQUEST_TIMEOUT,
        max_head_bytes: MAX_HEAD_BYTES,
        max_headers: MAX_HEADERS,
        shutdown_grace: SHUTDOWN_GRACE,
    }
}

#[derive(Clone)]
struct App {
    reviewer: Arc<review::Reviewer>,
    intake: intake::Intake,
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
    let app =
        App { reviewer: Arc::new(reviewer), intake: intake::Intake::new(usize::from(args.max_concurrent_reviews)) };
    // Before any port is bound: a stop the moment the webhook answers is a clean one.
    let terminated = crate::serve::termination();
    let listener = bind(args.listen, "--listen").await?;
    let admin = bind(args.admin_listen, "--admin-listen").await?;
    info!(listen = %args.listen, admin = %args.admin_listen, "keyless webhook listening");
    // The probes and the scrapes go through the shared listener too: the admin port is reachable
    // from the whole cluster, and a flood of connections held open there would spend the
    // descriptors the review listener needs.
    let (stop_admin, admin_stopped) = watch::channel(false);
    let admin_limits = limits(MAX_ADMIN_CONNECTIONS, MAX_ADMIN_CONNECTIONS);
    let admin_listener = Listener::new("webhook admin listener", admin_limits);
    let admin = tokio::spawn(admin_listener.serve(admin, PlainTcp, admin_router(accounts, metrics), admin_stopped));
    let mut server_config = rustls::ServerConfig::builder().with_no_client_auth().with_cert_resolver(cert);
    server_config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config));
    serve_tls(listener, acceptor, review_router(app), args.limits(), terminated).await;
    let _ = stop_admin.send(true);
    let _ = admin.await;
    Ok(())
}

async fn bind(address: SocketAddr, flag: &str) -> Result<TcpListener, String> {
    TcpListener::bind(address).await.map_err(|e| format!("cannot listen on {address} ({flag}): {e}"))
}

fn review_router(app: App) -> Router {
    Router::new()
        .route("/mutate", post(|state, request| mutate(state, request, Namespace::Unknown)))
        .route("/mutate-namespace", post(|state, request| mutate(state, request, Namespace::OptedIn)))
        .with_state(app)
}

async fn mutate(State(app): State<App>, request: Request, namespace: Namespace) -> Response {
    let mut turn = match app.intake.admit(request).await {
        Ok(turn) => turn,
        Err(refusal) => {
            app.reviewer.metrics.error(refusal.reason());
            return refusal.into_response();
        }
    };
    match app.reviewer.review(turn.take_body(), namespace).await {
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

/// The TLS handshake of the API server's connections.
#[derive(Clone)]
struct Tls(tokio_rustls::TlsAcceptor);

impl Handshake for Tls {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    type Error = std::io::Error;
    fn handshake(&self, tcp: TcpStream) -> impl Future<Output = Result<Self::Io, std::io::Error>> + Send {
        self.0.accept(tcp)
    }
}

/// Accepts TLS connections and serves HTTP/1.1 on each (the API server's admission client) through
/// the shared listener (`keyless_provider::listener`: deadlines, connection limits, displacement)
/// until `shutdown` resolves; then stops accepting, answers the reviews in progress (for at most
/// [`SHUTDOWN_GRACE`]) and closes idle keep-alive connections, so a rolling update of the webhook
/// does not cut a review short (with `failurePolicy: Fail`, that pod's creation would fail).
async fn serve_tls(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    router: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    let (stop, stopped) = watch::channel(false);
    let serving = Listener::new("webhook listener", limits).serve(listener, Tls(acceptor), router, stopped);
    tokio::pin!(serving);
    tokio::select! {
        () = &mut serving => return,
        () = shutdown => {}
    }
    info!("shutting down: answering the reviews in progress");
    let _ = stop.send(true);
    serving.await;
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
        let limits = limits(16, 16);
        let server = tokio::spawn(serve_tls(listener, acceptor, router, limits, async {
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
