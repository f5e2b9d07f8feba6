//! `keyless node`: one keyless per node (a `hostNetwork` DaemonSet) serving every opted-in pod of
//! the node its own ServiceAccount's identities, on the native endpoints the sidecar serves
//! (SPEC section 13, README "Node mode", docs/node-mode.md).
//!
//! - `pods`: who is asking (the Running pod of this node holding the source address).
//! - `served`: whose credentials (one set of the sidecar's providers per ServiceAccount, fed by
//!   TokenRequest, dropped with the ServiceAccount's last pod on the node).
//! - `tokens`: the TokenRequests and their files.
//! - `authz`: the AWS container endpoint's per-pod authorization (the pod's projected token).
//! - `respond`: the listeners' request path.

mod authz;
mod link;
mod pods;
mod ready;
mod respond;
mod served;
mod tokens;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use keyless_core::Metrics;
use keyless_inject::{AnnotationSources, Annotations, Options};
use keyless_provider::guard::GuardLayer;
use keyless_provider::{Configured, Routes, Rules, Started};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::serve::bind_hint;
use keyless_provider::listener::{Limits, Listener, PlainTcp};

/// EKS Pod Identity's container endpoint address: AWS SDKs accept it (with 127.0.0.1, the ECS
/// address and `[fd00:ec2::23]`) as a plain-HTTP `AWS_CONTAINER_CREDENTIALS_FULL_URI`.
pub const AWS_DEFAULT_LISTEN: &str = "169.254.170.23:80";
/// The audience of the pods' projected token that authorizes the AWS container endpoint.
pub const DEFAULT_AUTHORIZATION_AUDIENCE: &str = "keyless.dev/node";
/// Open connections per listener, and from one pod: a node runs at most a few hundred pods.
const MAX_CONNECTIONS: usize = 4096;
const MAX_PER_POD: usize = 64;
/// In --state-dir while the credential listeners are open (`--check-ready`).
const READY_FILE: &str = "serving";
/// How often the start checks whether the watches have listed.
const SYNC_POLL: Duration = Duration::from_millis(50);
/// ServiceAccount annotations are looked at again this often even when no pod changes.
const RECONCILE_PERIOD: Duration = Duration::from_secs(30);

/// `keyless node`'s flags.
#[derive(Debug, Clone, clap::Args)]
pub struct NodeArgs {
    /// This node's name (the pods served are those with spec.nodeName = it): the downward API's
    /// spec.nodeName.
    #[arg(
        long,
        env = "NODE_NAME",
        required_unless_present = "check_ready",
        default_value = "",
        hide_default_value = true
    )]
    pub node_name: String,
    /// The AWS container endpoint (the address must be on a link of the node; AWS SDKs accept
    /// plain HTTP to 169.254.170.23, 169.254.170.2, [fd00:ec2::23] and loopback only).
    #[arg(long, default_value = AWS_DEFAULT_LISTEN)]
    pub aws_listen: SocketAddr,
    /// The GCE metadata server's address, if it gets one of its own (every listener serves every
    /// cloud's routes; this is where injection points Google's SDKs). Never 169.254.169.254 unless
    /// you mean to take over the node's own metadata server.
    #[arg(long)]
    pub gcp_listen: Option<SocketAddr>,
    /// Azure IMDS' address, if it gets one of its own (as --gcp-listen).
    #[arg(long)]
    pub azure_listen: Option<SocketAddr>,
    /// /healthz, /readyz (the node's watches are synced), /metrics.
    #[arg(long, default_value = "0.0.0.0:9812")]
    pub admin_listen: SocketAddr,
    /// Where the ServiceAccounts' subject tokens are written (a memory volume: mode 0700 directories).
    #[arg(long, default_value = "/run/keyless-node")]
    pub state_dir: PathBuf,
    /// Lifetime asked of each TokenRequest (at least 10m; renewed at 80% of it).
    #[arg(long, default_value = "1h", value_parser = token_lifetime)]
    pub token_lifetime: Duration,
    /// The audience of the pods' projected token that authorizes the AWS container endpoint.
    #[arg(long, default_value = DEFAULT_AUTHORIZATION_AUDIENCE)]
    pub authorization_audience: String,
    /// AWS region of every ServiceAccount's AWS identity (as the injection's --aws-region).
    #[arg(long)]
    pub aws_region: Option<String>,
    /// Entra tenant of ServiceAccounts whose annotations name a client id but no tenant id.
    #[arg(long)]
    pub azure_tenant_id: Option<String>,
    /// Put the listen addresses on the node's loopback link first (link-local and unique-local
    /// addresses only; needs CAP_NET_ADMIN): pods reach 169.254.170.23 only where a link of the
    /// node has it.
    #[arg(long)]
    pub add_addresses: bool,
    /// Only put the addresses on the loopback link, then exit (the chart's init container, the one
    /// with CAP_NET_ADMIN).
    #[arg(long, requires = "add_addresses")]
    pub setup_only: bool,
    /// Exit 0 if the keyless node of --state-dir serves (its credential listeners are open), else
    /// 1: the DaemonSet's readiness probe. An HTTP probe cannot tell two agents apart while an
    /// update runs them side by side on one port; each has its own state directory.
    #[arg(long)]
    pub check_ready: bool,
    /// Once serving, label this Node LABEL=true, a readiness gate for workloads (node affinity);
    /// needs patch on nodes.
    #[arg(long, value_name = "LABEL")]
    pub ready_label: Option<String>,
    /// A setting for every ServiceAccount's providers, NAME=VALUE (repeatable), e.g.
    /// KEYLESS_AWS__STS_ENDPOINT=https://sts.eu-west-1.amazonaws.com; a cloud's settings apply to
    /// the ServiceAccounts with an identity of that cloud.
    #[arg(long = "provider-setting", value_name = "NAME=VALUE", value_parser = crate::inject::parse_env)]
    pub provider_settings: Vec<(String, String)>,
}

/// A background task that ends with its owner (a ServiceAccount's token binder, the reconciler).
#[derive(Debug)]
pub struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl AbortOnDrop {
    pub fn new(handle: tokio::task::JoinHandle<()>) -> Self {
        Self(handle)
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn token_lifetime(text: &str) -> Result<Duration, String> {
    let lifetime = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if lifetime < tokens::MIN_LIFETIME || lifetime > Duration::from_secs(86_400) {
        return Err("must be between 10m (the API server's minimum) and 24h".to_owned());
    }
    Ok(lifetime)
}

/// Runs `keyless node` until SIGTERM or SIGINT.
pub async fn run(args: NodeArgs) -> Result<(), String> {
    let ready_file = args.state_dir.join(READY_FILE);
    if args.check_ready {
        return if ready_file.exists() {
            Ok(())
        } else {
            Err(format!("not serving yet ({} is missing)", ready_file.display()))
        };
    }
    let mut addresses = vec![args.aws_listen];
    for addr in [args.gcp_listen, args.azure_listen].into_iter().flatten() {
        if !addresses.contains(&addr) {
            addresses.push(addr);
        }
    }
    if args.add_addresses {
        for addr in &addresses {
            let ip = addr.ip();
            if !link::may_add(ip) {
                return Err(format!(
                    "--add-addresses adds link-local (169.254.0.0/16) and unique-local IPv6 addresses only, not {ip}"
                ));
            }
            match link::add_to_loopback(ip) {
                Ok(true) => info!(address = %ip, "added the address to the loopback link"),
                Ok(false) => info!(address = %ip, "the loopback link has the address already"),
                Err(e) => return Err(format!("cannot add {ip} to the loopback link: {e} (needs CAP_NET_ADMIN)")),
            }
        }
        if args.setup_only {
            return Ok(());
        }
    }
    let client = kube::Client::try_default().await.map_err(|e| {
        format!("cannot reach the Kubernetes API: {e} (in a pod: its ServiceAccount token; elsewhere: KUBECONFIG)")
    })?;
    let metrics = crate::metrics();
    let settings = served::Settings {
        state_dir: args.state_dir.clone(),
        options: Options {
            aws_region: args.aws_region.clone(),
            azure_tenant_id: args.azure_tenant_id.clone(),
            sidecar_env: args.provider_settings.clone(),
            ..Options::default()
        },
    };
    std::fs::create_dir_all(&args.state_dir)
        .map_err(|e| format!("cannot create --state-dir {}: {e}", args.state_dir.display()))?;
    let _ = std::fs::remove_file(&ready_file);
    let refusals = refusal_routes(&settings.options, &metrics)?;
    let tokens = authz::PodTokens::discover(client.clone(), args.authorization_audience.clone())
        .await
        .map_err(|e| format!("cannot read the API server's service-account issuer and keys: {e}"))?;
    let pods = pods::NodePods::watch(client.clone(), &args.node_name);
    let accounts = crate::webhook::accounts::ServiceAccounts::watch(client.clone());
    let requester = tokens::Requester::new(client.clone(), args.token_lifetime);
    let shared = Arc::new(served::Shared::new(pods.clone(), accounts.clone(), requester, settings, metrics.clone()));
    let registry = served::Registry::new(shared);
    let reconciler = AbortOnDrop::new(tokio::spawn(registry.clone().run_reconciler(RECONCILE_PERIOD)));

    let service = respond::NodeService {
        pods: pods.clone(),
        registry: registry.clone(),
        tokens: Arc::new(tokens),
        refusals,
        refusal_logged: Arc::new(AtomicBool::new(false)),
    };
    let _labeller = args.ready_label.clone().map(|label| {
        let (pods, accounts) = (pods.clone(), accounts.clone());
        let ready = move || pods.is_synced() && accounts.is_synced();
        AbortOnDrop::new(tokio::spawn(ready::label_when_ready(client.clone(), args.node_name.clone(), label, ready)))
    });
    let synced = {
        let (pods, accounts) = (pods.clone(), accounts.clone());
        move || pods.is_synced() && accounts.is_synced()
    };
    let admin_router = admin_router(NodeAdmin { pods, accounts, metrics, registry });

    // Before any port is bound: a stop the moment keyless node answers is a clean one. Not
    // earlier: until here a SIGTERM (the API server slow to answer the discovery) ends the
    // process at once, as it should.
    let terminated = crate::serve::termination();
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut servers = Vec::new();
    let admin = bind_shared(args.admin_listen).map_err(|e| {
        format!(
            "cannot listen on {} (admin): {e}; {}",
            args.admin_listen,
            bind_hint(&e, args.admin_listen, "--admin-listen")
        )
    })?;
    let admin_server = Listener::new("admin listener", crate::serve::limits(128));
    servers.push(tokio::spawn(admin_server.serve(admin, PlainTcp, admin_router, stop_rx.clone())));

    // The credential listeners open once the watches have listed: a pod's request before that
    // would be refused as unknown (a 403, which SDKs do not retry); a closed port is retried.
    tokio::pin!(terminated);
    let mut waited = Duration::ZERO;
    while !synced() {
        tokio::select! {
            () = &mut terminated => return Ok(()),
            () = tokio::time::sleep(SYNC_POLL) => {}
        }
        waited += SYNC_POLL;
        if waited.as_secs() > 0 && waited.as_millis().is_multiple_of(30_000) {
            warn!(waited = ?waited, "still listing this node's pods and the ServiceAccounts (check the API server and keyless node's RBAC)");
        }
    }
    for addr in &addresses {
        let listener = bind_shared(*addr).map_err(|e| {
            format!(
                "cannot listen on {addr}: {e}; {}",
                bind_hint(&e, *addr, "--aws-listen/--gcp-listen/--azure-listen")
            )
        })?;
        info!(listen = %addr, node = %args.node_name, "keyless node is serving");
        let limits = Limits { per_peer: MAX_PER_POD, ..crate::serve::limits(MAX_CONNECTIONS) };
        let server = Listener::new("node credential listener", limits);
        servers.push(tokio::spawn(server.serve(listener, PlainTcp, service.clone(), stop_rx.clone())));
    }
    std::fs::write(&ready_file, b"serving\n").map_err(|e| format!("cannot write {}: {e}", ready_file.display()))?;
    (&mut terminated).await;
    let _ = std::fs::remove_file(&ready_file);
    info!("shutting down: finishing in-flight requests");
    let _ = stop_tx.send(true);
    for server in servers {
        let _ = server.await;
    }
    drop(reconciler);
    Ok(())
}

/// A listener on `addr` that a second keyless node may share (SO_REUSEPORT): the DaemonSet's
/// rolling update starts the new agent beside the old one (`maxSurge: 1`), so the addresses are
/// never without a listener. Only processes of the same user can share it (the kernel's rule).
fn bind_shared(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// The admin routes' state.
#[derive(Clone)]
struct NodeAdmin {
    pods: pods::NodePods,
    accounts: crate::webhook::accounts::ServiceAccounts,
    metrics: Metrics,
    registry: Arc<served::Registry>,
}

fn admin_router(state: NodeAdmin) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/service-accounts", get(service_accounts))
        .with_state(state)
        .route_layer(GuardLayer::new(Rules::admin()))
}

/// Ready once the node's pods and the ServiceAccounts are listed: from then on a pod's request is
/// answered from what the watches say, not refused because they have not spoken yet.
async fn readyz(State(state): State<NodeAdmin>) -> impl IntoResponse {
    match (state.pods.is_synced(), state.accounts.is_synced()) {
        (true, true) => (StatusCode::OK, "ready: the node's pods and the ServiceAccounts are watched\n"),
        (false, _) => (StatusCode::SERVICE_UNAVAILABLE, "not ready: listing this node's pods\n"),
        (true, false) => (StatusCode::SERVICE_UNAVAILABLE, "not ready: listing the ServiceAccounts\n"),
    }
}

async fn metrics(State(state): State<NodeAdmin>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], state.metrics.encode())
}

/// The ServiceAccounts served now, one `NAMESPACE/NAME` a line (names only: what an operator
/// checks, and what the tests watch come and go).
async fn service_accounts(State(state): State<NodeAdmin>) -> impl IntoResponse {
    let mut body = String::new();
    for account in state.registry.accounts() {
        body.push_str(&account.to_string());
        body.push('\n');
    }
    body
}

/// A provider's routes and rules without an identity: answers nothing but refusals.
struct Refusing {
    claims: Vec<keyless_provider::RouteClaim>,
    rules: Rules,
}

impl Started for Refusing {
    fn routes(&self) -> Vec<keyless_provider::NativeRoute> {
        let never = keyless_provider::Handler::new((), |(), _| async { StatusCode::NOT_FOUND.into_response() });
        self.claims.iter().map(|c| keyless_provider::NativeRoute::get(c.route.clone(), never.clone())).collect()
    }

    fn rules(&self) -> Rules {
        self.rules.clone()
    }

    fn readiness(&self) -> Vec<Arc<dyn keyless_core::Readiness>> {
        Vec::new()
    }

    fn app_env(&self, _app: &keyless_provider::AppHost) -> Vec<keyless_core::AppEnvVar> {
        Vec::new()
    }
}

/// Every cloud's routes as a ServiceAccount's set has them, configured (not started) from
/// placeholder identities: the native shape of a refusal before the caller's set is known.
fn refusal_routes(options: &Options, metrics: &Metrics) -> Result<Routes, String> {
    let annotations: Annotations = [
        (keyless_inject::AWS_ROLE_ARN, "arn:aws:iam::000000000000:role/keyless-node"),
        (keyless_inject::GCP_SERVICE_ACCOUNT, "keyless-node@keyless-node.iam.gserviceaccount.com"),
        (keyless_inject::GCP_PROVIDER, "projects/0/locations/global/workloadIdentityPools/keyless/providers/node"),
        (keyless_inject::AZURE_CLIENT_ID, "00000000-0000-0000-0000-000000000000"),
        (keyless_inject::AZURE_TENANT_ID, "00000000-0000-0000-0000-000000000000"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    let (identities, _) = AnnotationSources { service_account: &annotations }
        .identities(None)
        .map_err(|e| format!("the placeholder identities: {e}"))?;
    let account = pods::AccountRef { namespace: "keyless-node".to_owned(), name: "refusals".to_owned() };
    let env = served::provider_env(&identities, options, std::path::Path::new("/nonexistent"), &account);
    let (settings, _) = crate::config::settings_from_env(&env);
    let (config, sections) = crate::config::load(None, settings).map_err(|e| e.to_string())?;
    let config = config.finish(&crate::config::Overrides::default()).map_err(|e| e.to_string())?;
    let ctx = keyless_core::Context::new(
        Arc::new(keyless_core::clock::SystemClock),
        metrics.clone(),
        config.cache_policy(),
        config.watch_options(),
    );
    let mut refusing: Vec<(&'static str, Refusing)> = Vec::new();
    for provider in crate::providers::configure_all(sections, &ctx, &|_| None) {
        match provider.configured {
            Ok(configured) => {
                let configured: Box<dyn Configured> = configured;
                refusing.push((provider.name, Refusing { claims: configured.routes(), rules: configured.rules() }));
            }
            Err(e) => {
                warn!(provider = provider.name, error = %e, "the provider settings do not configure: its pods will not be served")
            }
        }
    }
    crate::providers::routes_of(refusing.iter().map(|(name, r)| (*name, r as &dyn Started)), None)
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn callers_are_refused_in_each_endpoints_native_shape() {
        let routes = refusal_routes(&Options::default(), &Metrics::new()).expect("the refusal routes");
        let ask = |path: &'static str| {
            let request = axum::http::Request::get(path)
                .header("host", "169.254.170.23")
                .body(axum::body::Body::empty())
                .expect("a request");
            routes.refuse(request, &keyless_provider::Violation::Caller(keyless_provider::CallerRefusal::NotOptedIn))
        };
        for (path, shape) in [
            ("/v1/credentials", "\"Code\":\"NotOptedIn\""),
            ("/computeMetadata/v1/instance/service-accounts/default/token", "Request denied: "),
            ("/metadata/identity/oauth2/token", "\"error\":\"forbidden\""),
        ] {
            let response = ask(path).await.expect("infallible");
            assert_eq!(response.status(), StatusCode::FORBIDDEN, "{path}");
            let body = axum::body::to_bytes(response.into_body(), 1 << 16).await.expect("a body");
            let body = String::from_utf8_lossy(&body);
            assert!(body.contains(shape), "{path}: {body}");
        }
    }

    #[test]
    fn the_token_lifetime_is_one_the_api_server_grants() {
        assert!(token_lifetime("5m").is_err());
        assert!(token_lifetime("2d").is_err());
        assert_eq!(token_lifetime("1h"), Ok(Duration::from_secs(3600)));
    }

    #[test]
    fn the_default_aws_address_is_eks_pod_identitys() {
        let addr: SocketAddr = AWS_DEFAULT_LISTEN.parse().expect("an address");
        assert_eq!(addr, SocketAddr::from(([169, 254, 170, 23], 80)));
    }
}
