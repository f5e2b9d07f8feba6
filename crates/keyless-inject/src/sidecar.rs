//! What is injected for a set of identities: the native sidecar, its volumes, and each app
//! container's environment. The same shape as the hand-written pods in examples/kubernetes/,
//! configured through `KEYLESS_*` variables instead of a per-workload ConfigMap.

use yaml_serde::{Mapping, Value};

use crate::Options;
use crate::identity::Identities;

/// The container, volume and port names keyless claims in a pod.
pub const CONTAINER: &str = "keyless";
pub const TOKENS_VOLUME: &str = "keyless-tokens";
pub const RUN_VOLUME: &str = "keyless-run";
const ADMIN_PORT_NAME: &str = "keyless-admin";
const ADMIN_PORT: i64 = 9812;
/// Where the sidecar reads the projected tokens; only it mounts them.
pub const TOKENS_DIR: &str = "/var/run/secrets/keyless";
/// The memory `emptyDir` keyless writes the AWS container authorization token into; the app
/// mounts it read-only.
pub const RUN_DIR: &str = "/run/keyless";
const AWS_AUTHORIZATION_TOKEN_FILE: &str = "/run/keyless/aws-container-authorization-token";
const LISTEN: &str = "127.0.0.1:9811";
/// The admin listener of the hardened setup ([`Options::admin_on_loopback`]), and the binary its
/// exec probes run (the image's entrypoint).
const ADMIN_LOOPBACK: &str = "127.0.0.1:9812";
const KEYLESS_BINARY: &str = "/usr/local/bin/keyless";
/// The Secret key an Azure identity header Secret holds (`keyless.dev/azure-identity-header-secret`).
pub const IDENTITY_HEADER_KEY: &str = "identity-header";

/// Node mode: the projected volume of the pod's own token that authorizes the AWS container
/// endpoint of `keyless node`, and where the apps read it.
pub const NODE_TOKEN_VOLUME: &str = "keyless-node-token";
const NODE_TOKEN_DIR: &str = "/var/run/secrets/keyless/node";
pub const NODE_TOKEN_FILE: &str = "/var/run/secrets/keyless/node/token";
/// The kubelet rotates it at 80% of this; AWS SDKs read the file at each credential fetch.
const NODE_TOKEN_EXPIRATION: i64 = 3_600;

/// Where the injected sidecar listens (its `KEYLESS_LISTEN`: part of the signature of an injected sidecar).
pub(crate) const LISTEN_ADDRESS: &str = LISTEN;

/// An ordered mapping from literal pairs (the output keeps the order Kubernetes users read).
pub(crate) fn map<const N: usize>(entries: [(&str, Value); N]) -> Value {
    Value::Mapping(entries.into_iter().map(|(k, v)| (Value::from(k), v)).collect::<Mapping>())
}

fn list<const N: usize>(items: [Value; N]) -> Value {
    Value::Sequence(items.into())
}

pub(crate) fn env_value(name: &str, value: &str) -> Value {
    map([("name", name.into()), ("value", value.into())])
}

fn env_secret(name: &str, secret: &str, key: &str) -> Value {
    let selector = map([("name", secret.into()), ("key", key.into())]);
    map([("name", name.into()), ("valueFrom", map([("secretKeyRef", selector)]))])
}

/// The keyless container: a native sidecar (an init container with `restartPolicy: Always`)
/// whose startup probe holds the app back until every identity holds a credential.
pub(crate) fn container(identities: &Identities, options: &Options, run_as: Option<&Value>) -> Value {
    // The kubelet's HTTP probes come from the node to the pod IP, never to the pod's loopback: a
    // loopback admin listener is probed from inside the container.
    let probe = |path: &str, period: i64| {
        let check = if options.admin_on_loopback {
            let command = [KEYLESS_BINARY.into(), "probe".into(), format!("http://{ADMIN_LOOPBACK}{path}").into()];
            ("exec", map([("command", list(command))]))
        } else {
            ("httpGet", map([("path", path.into()), ("port", ADMIN_PORT_NAME.into())]))
        };
        map([check, ("periodSeconds", period.into())])
    };
    let mut startup = probe("/readyz", 1);
    if let Value::Mapping(m) = &mut startup {
        m.insert("failureThreshold".into(), 120.into());
    }
    let mut entries: Vec<(&str, Value)> = vec![
        ("name", CONTAINER.into()),
        ("image", options.image.as_str().into()),
        ("args", list(["serve".into()])),
        ("restartPolicy", "Always".into()),
    ];
    if !options.admin_on_loopback {
        let port = map([("name", ADMIN_PORT_NAME.into()), ("containerPort", ADMIN_PORT.into())]);
        entries.push(("ports", list([port])));
    }
    entries.extend([
        ("env", Value::Sequence(sidecar_env(identities, options))),
        ("startupProbe", startup),
        ("readinessProbe", probe("/readyz", 10)),
        ("livenessProbe", probe("/healthz", 10)),
        ("resources", resources(options)),
        ("securityContext", security_context(run_as)),
        ("volumeMounts", Value::Sequence(sidecar_mounts(identities))),
    ]);
    let mut container = Value::Mapping(entries.into_iter().map(|(k, v)| (Value::from(k), v)).collect::<Mapping>());
    if let (Some(policy), Value::Mapping(m)) = (&options.image_pull_policy, &mut container) {
        m.insert("imagePullPolicy".into(), policy.as_str().into());
    }
    container
}

fn resources(options: &Options) -> Value {
    let r = &options.resources;
    map([
        ("requests", map([("cpu", r.cpu_request.as_str().into()), ("memory", r.memory_request.as_str().into())])),
        ("limits", map([("memory", r.memory_limit.as_str().into())])),
    ])
}

/// The examples' hardened context, with the seccomp profile set on the container (the pod's is the
/// user's). `run_as` is the app's user when the pod does not set one: the AWS authorization token
/// file keyless writes is readable by its own user only.
fn security_context(run_as: Option<&Value>) -> Value {
    let mut context = map([
        ("allowPrivilegeEscalation", false.into()),
        ("readOnlyRootFilesystem", true.into()),
        ("runAsNonRoot", true.into()),
        ("capabilities", map([("drop", list(["ALL".into()]))])),
        ("seccompProfile", map([("type", "RuntimeDefault".into())])),
    ]);
    if let (Some(user), Value::Mapping(m)) = (run_as, &mut context) {
        m.insert("runAsUser".into(), user.clone());
    }
    context
}

fn sidecar_mounts(identities: &Identities) -> Vec<Value> {
    let mut mounts =
        vec![map([("name", TOKENS_VOLUME.into()), ("mountPath", TOKENS_DIR.into()), ("readOnly", true.into())])];
    if identities.aws.is_some() {
        mounts.push(map([("name", RUN_VOLUME.into()), ("mountPath", RUN_DIR.into())]));
    }
    mounts
}

/// keyless's configuration (docs/configuration.md: `KEYLESS_<SECTION>__<KEY>`), so no ConfigMap
/// per workload is needed. Nothing secret: the AWS authorization token is a file keyless creates.
fn sidecar_env(identities: &Identities, options: &Options) -> Vec<Value> {
    let mut env = vec![env_value("KEYLESS_LISTEN", LISTEN)];
    if options.admin_on_loopback {
        env.push(env_value("KEYLESS_ADMIN_LISTEN", ADMIN_LOOPBACK));
    }
    let token = |name: &str| format!("{TOKENS_DIR}/{name}");
    if let Some(aws) = &identities.aws {
        env.push(env_value("KEYLESS_AWS__TOKEN_FILE", &token("aws-token")));
        env.push(env_value("KEYLESS_AWS__ROLE_ARN", &aws.role_arn));
        env.push(env_value("KEYLESS_AWS__AUTHORIZATION_TOKEN_FILE", AWS_AUTHORIZATION_TOKEN_FILE));
        if let Some(region) = &options.aws_region {
            env.push(env_value("KEYLESS_AWS__REGION", region));
        }
        if let Some(endpoint) = &aws.sts_endpoint {
            env.push(env_value("KEYLESS_AWS__STS_ENDPOINT", endpoint));
        }
    }
    if let Some(gcp) = &identities.gcp {
        env.push(env_value("KEYLESS_GCP__TOKEN_FILE", &token("gcp-token")));
        env.push(env_value("KEYLESS_GCP__AUDIENCE", &gcp.provider));
        env.push(env_value("KEYLESS_GCP__SERVICE_ACCOUNT", &gcp.service_account));
        if let Some(project) = &gcp.project_id {
            env.push(env_value("KEYLESS_GCP__PROJECT_ID", project));
        }
    }
    if let Some(azure) = &identities.azure {
        env.push(env_value("KEYLESS_AZURE__TOKEN_FILE", &token("azure-token")));
        env.push(env_value("KEYLESS_AZURE__TENANT_ID", &azure.tenant_id));
        env.push(env_value("KEYLESS_AZURE__CLIENT_ID", &azure.client_id));
        match &azure.identity_header_secret {
            Some(secret) => env.push(env_secret("KEYLESS_AZURE__IDENTITY_HEADER", secret, IDENTITY_HEADER_KEY)),
            // Without a Secret there is no header to share without writing it into the spec: the
            // App Service endpoint is off and every SDK but Rust's uses IMDS.
            None => env.push(env_value("KEYLESS_AZURE__APP_SERVICE", "false")),
        }
    }
    env.extend(options.sidecar_env.iter().map(|(name, value)| env_value(name, value)));
    env
}

/// One projected volume: a `serviceAccountToken` per cloud audience, rotated by the kubelet.
pub(crate) fn tokens_volume(identities: &Identities) -> Value {
    let sources = identities
        .tokens()
        .into_iter()
        .map(|(path, audience, expiration)| {
            map([(
                "serviceAccountToken",
                map([("audience", audience.into()), ("expirationSeconds", expiration.into()), ("path", path.into())]),
            )])
        })
        .collect();
    map([("name", TOKENS_VOLUME.into()), ("projected", map([("sources", Value::Sequence(sources))]))])
}

pub(crate) fn run_volume() -> Value {
    map([("name", RUN_VOLUME.into()), ("emptyDir", map([("medium", "Memory".into()), ("sizeLimit", "1Mi".into())]))])
}

pub(crate) fn app_mount() -> Value {
    map([("name", RUN_VOLUME.into()), ("mountPath", RUN_DIR.into()), ("readOnly", true.into())])
}

/// Node mode: the projected token of the pod for `keyless node`'s AWS container endpoint.
pub(crate) fn node_token_volume(node: &crate::NodeEndpoints) -> Value {
    let token = map([
        ("audience", node.audience.as_str().into()),
        ("expirationSeconds", NODE_TOKEN_EXPIRATION.into()),
        ("path", "token".into()),
    ]);
    let sources = Value::Sequence(vec![map([("serviceAccountToken", token)])]);
    map([("name", NODE_TOKEN_VOLUME.into()), ("projected", map([("sources", sources)]))])
}

pub(crate) fn node_token_mount() -> Value {
    map([("name", NODE_TOKEN_VOLUME.into()), ("mountPath", NODE_TOKEN_DIR.into()), ("readOnly", true.into())])
}

/// `http://HOST` for `HOST:80`, else `http://HOST:PORT`: the form the SDKs compare with their
/// allowed container hosts.
fn http_base(authority: &str) -> String {
    format!("http://{}", authority.strip_suffix(":80").unwrap_or(authority))
}

/// Node mode: each configured cloud's native variables, pointing at `keyless node`.
fn node_app_env(identities: &Identities, options: &Options, node: &crate::NodeEndpoints) -> Vec<Value> {
    let mut env = Vec::new();
    if identities.aws.is_some() {
        env.push(env_value("AWS_CONTAINER_CREDENTIALS_FULL_URI", &format!("{}/v1/credentials", http_base(&node.aws))));
        env.push(env_value("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", NODE_TOKEN_FILE));
        if let Some(region) = &options.aws_region {
            env.push(env_value("AWS_REGION", region));
            env.push(env_value("AWS_DEFAULT_REGION", region));
        }
    }
    if let Some(gcp) = &identities.gcp {
        let host = node.gcp.as_deref().unwrap_or(&node.aws);
        for name in ["GCE_METADATA_HOST", "GCE_METADATA_IP", "GCE_METADATA_ROOT"] {
            env.push(env_value(name, host));
        }
        env.push(env_value("METADATA_SERVER_DETECTION", "assume-present"));
        if let Some(project) = &gcp.project_id {
            env.push(env_value("GOOGLE_CLOUD_PROJECT", project));
        }
    }
    if identities.azure.is_some() {
        let host = node.azure.as_deref().unwrap_or(&node.aws);
        env.push(env_value("AZURE_POD_IDENTITY_AUTHORITY_HOST", &http_base(host)));
    }
    env
}

/// Every variable [`app_env`] can add: the only names a previous injection's record may make keyless
/// replace or remove (a record naming anything else is not keyless's).
pub(crate) const APP_ENV_NAMES: &[&str] = &[
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "GCE_METADATA_HOST",
    "GCE_METADATA_IP",
    "GCE_METADATA_ROOT",
    "METADATA_SERVER_DETECTION",
    "GOOGLE_CLOUD_PROJECT",
    "AZURE_POD_IDENTITY_AUTHORITY_HOST",
    "IDENTITY_ENDPOINT",
    "IDENTITY_HEADER",
];

/// The two AWS region variables: SDKs differ in which they read (boto3 `AWS_DEFAULT_REGION`, the
/// others `AWS_REGION`), so they must agree.
pub(crate) const REGION_VARS: [&str; 2] = ["AWS_REGION", "AWS_DEFAULT_REGION"];

/// The sidecar's variables as name and value; a variable from a Secret gets a stand-in value of
/// the length the sidecar requires (only its presence matters to a configuration check).
pub fn sidecar_env_pairs(identities: &Identities, options: &Options) -> Vec<(String, String)> {
    sidecar_env(identities, options)
        .iter()
        .map(|var| {
            let name = var.get("name").and_then(Value::as_str).unwrap_or_default().to_owned();
            let value = var.get("value").and_then(Value::as_str).unwrap_or("a-value-from-a-secret-0123456789");
            (name, value.to_owned())
        })
        .collect()
}

/// Each configured cloud's native variables, pointing the SDKs at keyless (docs/configuration.md
/// "What keyless gives the app"). Nothing keyless-specific.
pub(crate) fn app_env(identities: &Identities, options: &Options) -> Vec<Value> {
    if let Some(node) = &options.node {
        return node_app_env(identities, options, node);
    }
    let mut env = Vec::new();
    if identities.aws.is_some() {
        env.push(env_value("AWS_CONTAINER_CREDENTIALS_FULL_URI", "http://127.0.0.1:9811/v1/credentials"));
        env.push(env_value("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", AWS_AUTHORIZATION_TOKEN_FILE));
        if let Some(region) = &options.aws_region {
            env.push(env_value("AWS_REGION", region));
            env.push(env_value("AWS_DEFAULT_REGION", region));
        }
    }
    if let Some(gcp) = &identities.gcp {
        for name in ["GCE_METADATA_HOST", "GCE_METADATA_IP", "GCE_METADATA_ROOT"] {
            env.push(env_value(name, LISTEN));
        }
        env.push(env_value("METADATA_SERVER_DETECTION", "assume-present"));
        if let Some(project) = &gcp.project_id {
            env.push(env_value("GOOGLE_CLOUD_PROJECT", project));
        }
    }
    if let Some(azure) = &identities.azure {
        env.push(env_value("AZURE_POD_IDENTITY_AUTHORITY_HOST", "http://127.0.0.1:9811"));
        if let Some(secret) = &azure.identity_header_secret {
            env.push(env_value("IDENTITY_ENDPOINT", "http://127.0.0.1:9811/msi/token"));
            env.push(env_secret("IDENTITY_HEADER", secret, IDENTITY_HEADER_KEY));
        }
    }
    env
}

/// The values the IRSA and Azure workload identity webhooks write into variables that shadow
/// keyless (web identity precedes the container and IMDS providers in the SDKs' chains). A
/// shadowing variable holding one of these is that webhook's: where keyless serves the cloud it
/// is removed, with the rest of its group (`AWS_ROLE_ARN`). Any other value is the user's and
/// stays (docs/injection.md).
pub(crate) const OTHER_WEBHOOKS_VALUES: &[(&str, &str)] = &[
    ("AWS_WEB_IDENTITY_TOKEN_FILE", "/var/run/secrets/eks.amazonaws.com/serviceaccount/token"),
    ("AZURE_FEDERATED_TOKEN_FILE", "/var/run/secrets/azure/tokens/azure-identity-token"),
];
