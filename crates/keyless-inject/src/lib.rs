//! The pod injection keyless's `inject` command and admission webhook share (docs/injection.md):
//! from a pod template and its ServiceAccount's annotations, the native sidecar, one projected
//! token per cloud audience, and the clouds' own variables on every app container.
//!
//! Architecture invariant: pure functions over Kubernetes objects as YAML values (`keyless inject`)
//! or JSON values (the webhook's review), read through one [`Tree`] trait and changed through one
//! list of [`Op`]s (unknown fields pass through untouched); no I/O, no Kubernetes client, no clock.
#![forbid(unsafe_code)]

mod documents;
mod identity;
mod nesting;
mod pod;
mod sidecar;
mod tree;

pub use documents::{
    DocumentError, Documents, Injected, MAX_NESTING, ServiceAccount, WorkloadRef, inject_documents, parse_documents,
};
pub use identity::{
    AWS_AUDIENCE, AWS_ROLE_ARN, AWS_STS_REGIONAL_ENDPOINTS, AWS_TOKEN_EXPIRATION, AZURE_CLIENT_ID,
    AZURE_IDENTITY_HEADER_SECRET, AZURE_TENANT_ID, AnnotationError, AnnotationSources, Annotations, GCP_PROJECT_ID,
    GCP_PROVIDER, GCP_SERVICE_ACCOUNT, IDENTITY_ANNOTATIONS, Identities, Origin,
};
pub use pod::{
    INJECT_LABEL, INJECTED_ANNOTATION, Namespace, Plan, TemplateError, annotations_of, inject_pod_json,
    inject_template, opted_in, plan,
};
pub use sidecar::{CONTAINER, IDENTITY_HEADER_KEY, NODE_TOKEN_FILE, NODE_TOKEN_VOLUME, TOKENS_DIR, sidecar_env_pairs};
pub use tree::{Op, Step, Tree, json_patch, pointer};

/// The sidecar image of this keyless version.
pub const DEFAULT_IMAGE: &str = concat!("ghcr.io/keyless-dev/keyless:", env!("CARGO_PKG_VERSION"));

/// What the injection needs besides the pod: the cluster-wide choices of the platform team.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub image: String,
    pub image_pull_policy: Option<String>,
    pub resources: Resources,
    /// Told to keyless (`KEYLESS_AWS__REGION`) and to the apps (`AWS_REGION`, `AWS_DEFAULT_REGION`).
    pub aws_region: Option<String>,
    /// The Entra tenant of a pod whose annotations name a client but no tenant.
    pub azure_tenant_id: Option<String>,
    /// More `KEYLESS_*` (or proxy) variables for every sidecar, e.g. `KEYLESS_LOG_FORMAT=json`.
    pub sidecar_env: Vec<(String, String)>,
    /// The sidecar's own configuration check at start, run on the sidecar's variables before
    /// anything is injected (the keyless binary passes it; this crate cannot depend on the clouds').
    pub check_sidecar: Option<SidecarCheck>,
    /// The variables that make each cloud's SDKs use another source before keyless, as the clouds'
    /// adapters declare them (the keyless binary passes every adapter's, the list `keyless exec`
    /// sets aside). In the app containers of a cloud keyless serves, another webhook's are taken
    /// over and a user's own are named in a warning (docs/injection.md).
    pub shadowing: Vec<ShadowingVar>,
    /// The hardened admin listener: the sidecar's probes, `/readyz` details and `/metrics` on the
    /// pod's loopback only (`KEYLESS_ADMIN_LISTEN=127.0.0.1:9812`), probed with `keyless probe` as
    /// exec probes, no admin port. `/metrics` names the pod's identities; with this, nothing outside
    /// the pod reads them, and nothing scrapes the sidecar either (docs/configuration.md).
    pub admin_on_loopback: bool,
    /// Node mode (`keyless node` serves the pods): no sidecar, only the apps' env pointing at the
    /// node agent, and the AWS endpoint's authorization token projected into the pod.
    pub node: Option<NodeEndpoints>,
}

/// One variable that shadows keyless for a cloud's SDKs (keyless-provider's `ShadowVar`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShadowingVar {
    /// The provider's name: `aws`, `gcp`, `azure`.
    pub cloud: &'static str,
    pub name: &'static str,
    /// The source it selects, shared by the variables that select it together
    /// (`AWS_ROLE_ARN/AWS_WEB_IDENTITY_TOKEN_FILE`).
    pub group: &'static str,
}

/// Where the node agent (`keyless node`) serves each cloud, as the apps dial it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeEndpoints {
    /// `HOST:PORT` of the AWS container endpoint (EKS Pod Identity's `169.254.170.23:80`).
    pub aws: String,
    /// `HOST:PORT` of the GCE metadata server (`None`: the AWS address serves it too).
    pub gcp: Option<String>,
    /// `HOST:PORT` of Azure IMDS (`None`: the AWS address serves it too).
    pub azure: Option<String>,
    /// The audience of the pod's projected token that authorizes the AWS container endpoint.
    pub audience: String,
}

impl NodeEndpoints {
    /// `keyless node`'s defaults.
    pub const DEFAULT_AWS: &str = "169.254.170.23:80";
    pub const DEFAULT_AUDIENCE: &str = "keyless.dev/node";
}

/// A check of the sidecar's variables (name, value): `Err` says what keyless would refuse at start.
pub type CheckFn = fn(&[(String, String)]) -> Result<(), String>;

/// The [`CheckFn`] the injection runs (a newtype, to compare and print [`Options`]).
#[derive(Clone, Copy)]
pub struct SidecarCheck(pub CheckFn);

impl std::fmt::Debug for SidecarCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SidecarCheck")
    }
}

impl PartialEq for SidecarCheck {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::fn_addr_eq(self.0, other.0)
    }
}

impl Eq for SidecarCheck {}

impl Default for Options {
    fn default() -> Self {
        Self {
            image: DEFAULT_IMAGE.to_owned(),
            image_pull_policy: None,
            resources: Resources::default(),
            aws_region: None,
            azure_tenant_id: None,
            sidecar_env: Vec::new(),
            check_sidecar: None,
            shadowing: Vec::new(),
            admin_on_loopback: false,
            node: None,
        }
    }
}

/// The sidecar's requests and limit. The defaults are the examples' (examples/kubernetes/), from
/// the measured idle and peak memory of the sidecar build (docs/benchmarks.md: 12.2 and 14.5 MiB).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resources {
    pub cpu_request: String,
    pub memory_request: String,
    pub memory_limit: String,
}

impl Resources {
    /// The defaults, as `keyless inject`'s and `keyless webhook`'s flags default to them.
    pub const DEFAULT_CPU_REQUEST: &str = "10m";
    pub const DEFAULT_MEMORY_REQUEST: &str = "16Mi";
    pub const DEFAULT_MEMORY_LIMIT: &str = "64Mi";
}

impl Default for Resources {
    fn default() -> Self {
        Self {
            cpu_request: Self::DEFAULT_CPU_REQUEST.to_owned(),
            memory_request: Self::DEFAULT_MEMORY_REQUEST.to_owned(),
            memory_limit: Self::DEFAULT_MEMORY_LIMIT.to_owned(),
        }
    }
}

/// What the injection did to one pod template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Injected { identities: Box<Identities>, warnings: Vec<String> },
    Skipped(Skip),
}

/// Why a pod template was left as it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    NotOptedIn,
    /// A container named `keyless` that keyless did not inject: a hand-written setup.
    KeylessContainer,
    /// `127.0.0.1` is the node's: keyless would serve every pod on it.
    HostNetwork,
    /// Opted in, but no annotation names an identity keyless serves.
    NoIdentity {
        warnings: Vec<String>,
    },
}

impl Skip {
    /// The reason as a metric label value.
    pub fn reason(&self) -> &'static str {
        match self {
            Skip::NotOptedIn => "not_opted_in",
            Skip::KeylessContainer => "keyless_container",
            Skip::HostNetwork => "host_network",
            Skip::NoIdentity { .. } => "no_identity",
        }
    }

    /// What to tell the user, for the skips they would not expect.
    pub fn warning(&self) -> Option<String> {
        match self {
            Skip::NotOptedIn | Skip::KeylessContainer => None,
            Skip::HostNetwork => Some(
                "keyless not injected: the pod uses hostNetwork, where 127.0.0.1 is the node's and keyless would \
                 serve this pod's credentials to every process on the node"
                    .to_owned(),
            ),
            Skip::NoIdentity { warnings } => Some(match warnings.first() {
                Some(w) => format!("keyless not injected: {w}"),
                None => format!(
                    "keyless not injected: opted in with {INJECT_LABEL}, but its ServiceAccount has no identity \
                     annotation ({AWS_ROLE_ARN}, {GCP_SERVICE_ACCOUNT} with {GCP_PROVIDER}, {AZURE_CLIENT_ID})"
                ),
            }),
        }
    }
}
