//! A strict local emulation of the token services keyless talks to, for tests and `keyless dev`:
//! a Kubernetes-style OIDC issuer with a kubelet-like token projector, AWS STS, Google STS and
//! IAM Credentials, and Entra ID, all on one HTTPS listener with a CA generated at start.
//!
//! "Real enough to catch real mistakes": each service rejects what the real one rejects (wrong
//! audience, expired or forged token, untrusted subject, bad SigV4 signature...) with the real
//! error code in the real error format. Faults and call counters are exposed for tests, through
//! [`Emulator::faults`] / [`Emulator::counters`] and the `/_emulator/` HTTP API.
//!
//! Architecture invariant: this crate shares no protocol code with keyless's adapters (a bug must
//! not cancel itself out in tests), and nothing on keyless's serving path depends on it.

#![forbid(unsafe_code)]

mod actions;
mod aws;
mod azure;
mod clock;
mod control;
mod error;
mod external;
mod gcp;
mod ids;
mod issuer;
mod keys;
mod projector;
mod quota;
mod server;
mod sigv4;
mod store;
mod tls;

use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use actions::ActionsFault;
pub use control::{Counters, Fault, Faults, Service};
pub use error::EmulatorError;
pub use issuer::MintClaims;
pub use quota::{Quota, Quotas};

use crate::issuer::Issuer;
use crate::keys::RsaKey;
use crate::projector::Projector;
use crate::store::Issued;

/// Where the emulated GitHub Actions job's request token is written, below the state directory.
const ACTIONS_REQUEST_TOKEN_FILE: &str = "github-actions-request-token";

/// How to run the emulator. [`EmulatorConfig::new`] gives the defaults.
#[derive(Clone, Debug)]
pub struct EmulatorConfig {
    /// Where to listen; port 0 picks a free port. Default `127.0.0.1:0`.
    pub listen: SocketAddr,
    /// Where the CA (`ca.pem`) and the projected tokens (`tokens/<cloud>/token`) are written.
    pub state_dir: PathBuf,
    /// Lifetime of projected tokens. Default one hour (the kubelet's default).
    pub token_lifetime: Duration,
    /// How often the projector rewrites the tokens. Default 80% of `token_lifetime`.
    pub rotate_every: Duration,
    /// The identities every service trusts.
    pub identities: DevIdentities,
    /// Names (DNS names or IP addresses) clients reach the emulator by besides loopback, e.g. the
    /// service name in a compose file. Each is added to the TLS certificate's names; the first one
    /// is the host of [`Emulator::url`], so of the OIDC issuer, since a token's `iss` must be a
    /// URL its verifier can reach. Default: none (the URL is on loopback).
    pub hostnames: Vec<String>,
    /// Caps the lifetime of every cloud credential the emulator issues (AWS STS sessions, Google
    /// access and ID tokens, Entra tokens), as the control API's `lifetime_secs` does per service:
    /// a refresh cycle in minutes instead of half an hour (the fleet benchmark). Default: none,
    /// each cloud's real lifetime (one hour).
    pub credential_lifetime: Option<Duration>,
}

impl EmulatorConfig {
    /// The defaults, writing state into `state_dir`.
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        let token_lifetime = Duration::from_secs(3600);
        Self {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            state_dir: state_dir.into(),
            token_lifetime,
            rotate_every: token_lifetime.mul_f64(0.8),
            identities: DevIdentities::default(),
            hostnames: Vec::new(),
            credential_lifetime: None,
        }
    }
}

/// The identities the emulated clouds trust: one Kubernetes service account, and what it may
/// become in each cloud.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DevIdentities {
    /// Kubernetes namespace of the service account.
    pub namespace: String,
    /// Kubernetes service account name.
    pub service_account: String,
    /// A second service account of the same namespace the dev identities trust as well (two
    /// ServiceAccounts on one node, each with its own identities: `keyless node`'s tests).
    pub other_service_account: String,
    /// AWS account that owns the role.
    pub aws_account_id: String,
    /// The role that may be assumed, by the dev subject only.
    pub aws_role_arn: String,
    /// A second role with the same trust policy (several roles for one token: `[[aws.roles]]`).
    pub aws_second_role_arn: String,
    /// Google project id.
    pub gcp_project_id: String,
    /// Google project number (used in the pool provider's name).
    pub gcp_project_number: String,
    /// Workload identity pool id.
    pub gcp_pool: String,
    /// Workload identity pool provider id.
    pub gcp_provider: String,
    /// The service account the dev principal may impersonate.
    pub gcp_service_account: String,
    /// A second service account the dev principal may impersonate, directly or through the
    /// first one (which holds `roles/iam.serviceAccountTokenCreator` on it: a delegation chain).
    pub gcp_second_service_account: String,
    /// Entra tenant id.
    pub azure_tenant_id: String,
    /// Entra application (client) id with a federated credential for the dev subject.
    pub azure_client_id: String,
    /// A second application with a federated credential for the same subject: one token file,
    /// several client ids (a request's `client_id` picks).
    pub azure_second_client_id: String,
}

impl Default for DevIdentities {
    fn default() -> Self {
        Self {
            namespace: "default".into(),
            service_account: "keyless-dev".into(),
            other_service_account: "keyless-dev-other".into(),
            aws_account_id: "123456789012".into(),
            aws_role_arn: "arn:aws:iam::123456789012:role/keyless-dev".into(),
            aws_second_role_arn: "arn:aws:iam::123456789012:role/keyless-dev-writer".into(),
            gcp_project_id: "keyless-dev".into(),
            gcp_project_number: "123456789012".into(),
            gcp_pool: "keyless-dev".into(),
            gcp_provider: "kubernetes".into(),
            gcp_service_account: "keyless-dev@keyless-dev.iam.gserviceaccount.com".into(),
            gcp_second_service_account: "keyless-deploy@keyless-dev.iam.gserviceaccount.com".into(),
            azure_tenant_id: "7b3c5a9e-2f1d-4c6b-9a8e-1d2c3b4a5f60".into(),
            azure_client_id: "3f6e8d1c-9b2a-4e7f-8c5d-6a1b2c3d4e5f".into(),
            azure_second_client_id: "8a2d4f6b-1c3e-4a5b-9d7f-0e1f2a3b4c5d".into(),
        }
    }
}

impl DevIdentities {
    /// Whether `client_id` names an application that trusts the dev subject.
    pub fn is_azure_app(&self, client_id: &str) -> bool {
        client_id == self.azure_client_id || client_id == self.azure_second_client_id
    }

    /// Whether `role_arn` names a role whose trust policy admits the dev subject.
    pub fn is_aws_role(&self, role_arn: &str) -> bool {
        role_arn == self.aws_role_arn || role_arn == self.aws_second_role_arn
    }

    /// Whether the dev principal may impersonate `email` through `delegates`: either service
    /// account directly, or the second one through the first.
    pub fn may_impersonate(&self, email: &str, delegates: &[String]) -> bool {
        let first = format!("projects/-/serviceAccounts/{}", self.gcp_service_account);
        match delegates {
            [] => email == self.gcp_service_account || email == self.gcp_second_service_account,
            [only] => *only == first && email == self.gcp_second_service_account,
            _ => false,
        }
    }

    /// `system:serviceaccount:NAMESPACE:NAME`.
    pub fn subject(&self) -> String {
        format!("system:serviceaccount:{}:{}", self.namespace, self.service_account)
    }

    /// `system:serviceaccount:NAMESPACE:OTHER`: the second trusted service account.
    pub fn other_subject(&self) -> String {
        format!("system:serviceaccount:{}:{}", self.namespace, self.other_service_account)
    }

    /// Whether the dev identities trust `sub`: the dev service account (or the other one), or the
    /// emulated GitHub Actions job (its issuer is checked by the token's signature).
    pub fn trusts_subject(&self, sub: &str) -> bool {
        sub == self.subject() || sub == self.other_subject() || sub == actions::ActionsIssuer::SUBJECT
    }

    /// The audience of the AWS token: `sts.amazonaws.com`.
    pub fn aws_audience(&self) -> &str {
        "sts.amazonaws.com"
    }

    /// The audience of the GCP token: the pool provider's full resource name.
    pub fn gcp_audience(&self) -> String {
        format!(
            "//iam.googleapis.com/projects/{}/locations/global/workloadIdentityPools/{}/providers/{}",
            self.gcp_project_number, self.gcp_pool, self.gcp_provider
        )
    }

    /// The audience of the Azure token: `api://AzureADTokenExchange`.
    pub fn azure_audience(&self) -> &str {
        "api://AzureADTokenExchange"
    }

    /// The identities as `GET /_emulator/identities` publishes them (the document each
    /// adapter's dev section reads), with `issuer` the issuer's URL.
    pub fn document(&self, issuer: &str) -> serde_json::Value {
        serde_json::json!({
            "issuer": issuer,
            "subject": self.subject(),
            "other_subject": self.other_subject(),
            "audiences": {
                "aws": self.aws_audience(),
                "gcp": self.gcp_audience(),
                "azure": self.azure_audience(),
            },
            "aws_role_arn": self.aws_role_arn,
            "aws_second_role_arn": self.aws_second_role_arn,
            "aws_account_id": self.aws_account_id,
            "gcp_project_id": self.gcp_project_id,
            "gcp_project_number": self.gcp_project_number,
            "gcp_service_account": self.gcp_service_account,
            "gcp_second_service_account": self.gcp_second_service_account,
            "azure_tenant_id": self.azure_tenant_id,
            "azure_client_id": self.azure_client_id,
            "azure_second_client_id": self.azure_second_client_id,
        })
    }
}

/// The cloud a projected token is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Cloud {
    /// Audience `sts.amazonaws.com`.
    Aws,
    /// Audience: the workload identity pool provider.
    Gcp,
    /// Audience `api://AzureADTokenExchange`.
    Azure,
}

impl Cloud {
    /// Every cloud.
    pub const ALL: [Self; 3] = [Self::Aws, Self::Gcp, Self::Azure];

    /// The token directory's name under `STATE/tokens/`: `aws`, `gcp`, `azure`.
    pub fn dir_name(self) -> &'static str {
        match self {
            Self::Aws => "aws",
            Self::Gcp => "gcp",
            Self::Azure => "azure",
        }
    }
}

/// Everything the request handlers share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) identities: DevIdentities,
    pub(crate) issuer: Arc<Issuer>,
    pub(crate) google_key: RsaKey,
    pub(crate) entra_key: RsaKey,
    pub(crate) aws_sessions: Issued<aws::AwsSession>,
    pub(crate) gcp_tokens: Issued<gcp::GcpToken>,
    pub(crate) gate: control::Gate,
    pub(crate) projector: Arc<Projector>,
    /// GitHub Actions' OIDC token endpoint and issuer.
    pub(crate) actions: Arc<actions::ActionsIssuer>,
}

pub(crate) type SharedState = Arc<Shared>;

/// A running emulator. Dropping it stops it too; [`Emulator::shutdown`] waits for the end.
pub struct Emulator {
    shared: SharedState,
    local_addr: SocketAddr,
    url: String,
    state_dir: PathBuf,
    ca_pem_path: PathBuf,
    shutdown: watch::Sender<bool>,
    server: JoinHandle<()>,
    projector: JoinHandle<()>,
}

impl std::fmt::Debug for Emulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Emulator").field("url", &self.url).field("state_dir", &self.state_dir).finish_non_exhaustive()
    }
}

/// The URL clients use: on the first public host name when there is one; otherwise a wildcard
/// listen address is reached through loopback.
fn url_for(addr: SocketAddr, hostname: Option<&tls::HostName>) -> String {
    match hostname {
        Some(tls::HostName::Dns(name)) => return format!("https://{name}:{}", addr.port()),
        Some(tls::HostName::Ip(ip)) => return url_for(SocketAddr::new(*ip, addr.port()), None),
        None => {}
    }
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    match ip {
        IpAddr::V4(ip) => format!("https://{ip}:{}", addr.port()),
        IpAddr::V6(ip) => format!("https://[{ip}]:{}", addr.port()),
    }
}

async fn generate_key(what: &'static str) -> Result<RsaKey, EmulatorError> {
    tokio::task::spawn_blocking(move || RsaKey::generate(what))
        .await
        .map_err(|e| EmulatorError::KeyGeneration { what, reason: e.to_string() })?
}

/// Starts the emulator: returns once it is listening and the first tokens are written.
pub async fn start(config: EmulatorConfig) -> Result<Emulator, EmulatorError> {
    if config.token_lifetime < Duration::from_secs(1) || config.rotate_every.is_zero() {
        return Err(EmulatorError::InvalidConfig(format!(
            "token_lifetime ({:?}) must be at least 1s and rotate_every ({:?}) more than zero",
            config.token_lifetime, config.rotate_every
        )));
    }
    if config.credential_lifetime.is_some_and(|l| l < Duration::from_secs(1)) {
        return Err(EmulatorError::InvalidConfig(format!(
            "credential_lifetime ({:?}) must be at least 1s",
            config.credential_lifetime.unwrap_or_default()
        )));
    }
    let hostnames = config.hostnames.iter().map(|name| tls::HostName::parse(name)).collect::<Result<Vec<_>, _>>()?;
    let state_dir = config.state_dir.clone();
    let state_error = |source| EmulatorError::StateDir { path: state_dir.clone(), source };
    fs::create_dir_all(&state_dir).map_err(state_error)?;

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| EmulatorError::Bind { addr: config.listen, source })?;
    let local_addr = listener.local_addr().map_err(|source| EmulatorError::Bind { addr: config.listen, source })?;
    let url = url_for(local_addr, hostnames.first());

    let ids = config.identities;
    let (issuer_url, namespace, service_account) = (url.clone(), ids.namespace.clone(), ids.service_account.clone());
    let issuer = tokio::task::spawn_blocking(move || Issuer::new(issuer_url, &namespace, &service_account));
    let (issuer, google_key, entra_key) = tokio::join!(
        issuer,
        generate_key("Google ID-token signing key"),
        generate_key("Entra access-token signing key")
    );
    let issuer = Arc::new(
        issuer
            .map_err(|e| EmulatorError::KeyGeneration { what: "OIDC issuer signing key", reason: e.to_string() })??,
    );
    let tls = tls::generate(Some(local_addr.ip()), &hostnames)?;
    let ca_pem_path = state_dir.join("ca.pem");
    // Public (apps in other containers read it), but never written through a planted symlink.
    keyless_core::files::write_atomically(&ca_pem_path, tls.ca_pem.as_bytes(), 0o644).map_err(state_error)?;

    let audiences = [
        (Cloud::Aws, ids.aws_audience().to_owned()),
        (Cloud::Gcp, ids.gcp_audience()),
        (Cloud::Azure, ids.azure_audience().to_owned()),
    ];
    let projector =
        Arc::new(Projector::new(Arc::clone(&issuer), &state_dir.join("tokens"), audiences, config.token_lifetime));
    projector.rotate().await?;

    let actions_url = url.clone();
    let actions =
        tokio::task::spawn_blocking(move || actions::ActionsIssuer::new(&actions_url)).await.map_err(|e| {
            EmulatorError::KeyGeneration { what: "GitHub Actions OIDC signing key", reason: e.to_string() }
        })??;
    let request_token_path = state_dir.join(ACTIONS_REQUEST_TOKEN_FILE);
    // Secret: the job's request token mints tokens every emulated cloud trusts.
    keyless_core::files::write_atomically(&request_token_path, actions.request_token().as_bytes(), 0o600)
        .map_err(state_error)?;
    let shared = Arc::new(Shared {
        identities: ids,
        issuer,
        google_key: google_key?,
        entra_key: entra_key?,
        aws_sessions: Issued::new(),
        gcp_tokens: Issued::new(),
        gate: control::Gate::default(),
        projector: Arc::clone(&projector),
        actions: Arc::new(actions),
    });
    if let Some(lifetime) = config.credential_lifetime {
        for service in Service::ALL {
            shared.gate.faults.cap_lifetime(service, Some(lifetime));
        }
    }
    let (shutdown, shutdown_rx) = watch::channel(false);
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.server_config);
    let server =
        tokio::spawn(server::serve(listener, acceptor, server::router(Arc::clone(&shared)), shutdown_rx.clone()));
    let projector = tokio::spawn(projector.run(config.rotate_every, shutdown_rx));
    tracing::info!(%url, state_dir = %state_dir.display(), "keyless emulator listening");
    Ok(Emulator { shared, local_addr, url, state_dir, ca_pem_path, shutdown, server, projector })
}

impl Emulator {
    /// `https://127.0.0.1:PORT`, or `https://HOSTNAME:PORT` with [`EmulatorConfig::hostnames`] (no
    /// trailing slash): the base of every service and the OIDC issuer.
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// The address actually listened on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// `STATE/ca.pem`: the CA clients must trust.
    pub fn ca_pem_path(&self) -> &Path {
        &self.ca_pem_path
    }

    /// The state directory.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// `STATE/tokens/{aws,gcp,azure}/token`: the user-visible symlink of the projected token.
    pub fn token_path(&self, cloud: Cloud) -> PathBuf {
        self.token_path_named(cloud.dir_name())
    }

    /// [`Emulator::token_path`] by the cloud's name (a provider's name: `aws`, `gcp`, `azure`).
    pub fn token_path_named(&self, name: &str) -> PathBuf {
        self.state_dir.join("tokens").join(name).join(projector::TOKEN_FILE)
    }

    /// The identities every service trusts.
    pub fn identities(&self) -> &DevIdentities {
        &self.shared.identities
    }

    /// [`Emulator::identities`] as `GET /_emulator/identities` publishes them.
    pub fn identities_document(&self) -> serde_json::Value {
        self.shared.identities.document(self.shared.issuer.url())
    }

    /// Signs any JWT with the issuer's key (or an untrusted one): wrong audiences, expired
    /// tokens, other subjects...
    pub fn mint(&self, claims: MintClaims) -> String {
        #[allow(clippy::expect_used)] // our own fresh RSA key and plain claims: signing cannot fail
        self.shared.issuer.mint(&claims, clock::now()).expect("signing with the emulator's own key")
    }

    /// `ACTIONS_ID_TOKEN_REQUEST_URL` of the emulated GitHub Actions job (it already has a query).
    pub fn github_actions_request_url(&self) -> String {
        format!("{}{}?api-version=2.0", self.url, actions::REQUEST_PATH)
    }

    /// `STATE/github-actions-request-token` (mode 0600): `ACTIONS_ID_TOKEN_REQUEST_TOKEN`.
    pub fn github_actions_request_token_path(&self) -> PathBuf {
        self.state_dir.join(ACTIONS_REQUEST_TOKEN_FILE)
    }

    /// The issuer of the emulated GitHub Actions tokens (`URL/_github`).
    pub fn github_actions_issuer(&self) -> String {
        self.shared.actions.url().to_owned()
    }

    /// The `sub` of the emulated job's tokens, which every emulated cloud trusts.
    pub fn github_actions_subject(&self) -> &'static str {
        actions::ActionsIssuer::SUBJECT
    }

    /// Makes the Actions token endpoint misbehave (or behave again, with [`ActionsFault::None`]).
    pub fn set_github_actions_fault(&self, fault: ActionsFault) {
        self.shared.actions.set_fault(fault);
    }

    /// Fault injection, per service.
    pub fn faults(&self) -> &Faults {
        &self.shared.gate.faults
    }

    /// Per-service quotas (none by default): calls over one are throttled as the cloud does.
    pub fn quotas(&self) -> &Quotas {
        &self.shared.gate.quotas
    }

    /// A snapshot of the call counters.
    pub fn counters(&self) -> Counters {
        self.shared.gate.counters()
    }

    /// Rewrites every projected token now; returns once the new tokens are in place.
    pub async fn rotate_tokens(&self) -> Result<(), EmulatorError> {
        self.shared.projector.rotate().await
    }

    /// Stops accepting, lets in-flight requests finish (briefly), stops the projector.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        if let Err(e) = self.server.await {
            tracing::warn!(error = %e, "the emulator's server task failed");
        }
        if let Err(e) = self.projector.await {
            tracing::warn!(error = %e, "the emulator's projector task failed");
        }
        tracing::info!(url = %self.url, "keyless emulator stopped");
    }
}
