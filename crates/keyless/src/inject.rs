//! `keyless inject`: the injection of keyless-inject on YAML from a file or stdin, to stdout
//! (docs/injection.md). What it did and warnings go to stderr; an opted-in workload that gets
//! nothing is an error unless `--allow-uninjected`.

use std::io::Read;
use std::path::Path;

use keyless_inject::{NodeEndpoints, Options, Resources, ShadowingVar, SidecarCheck};

/// Largest input read: far above any manifest set, and a bound on what a pipe can make keyless hold.
const MAX_INPUT: u64 = 64 * 1024 * 1024;

/// Longest line `keyless inject` prints on stderr (each quotes the input, escaped).
pub const MAX_SHOWN_BYTES: usize = 4096;

/// The platform team's choices, shared by `inject` and `webhook` (the chart's values).
#[derive(Debug, Clone, clap::Args)]
pub struct InjectArgs {
    /// The sidecar image.
    #[arg(long, default_value = keyless_inject::DEFAULT_IMAGE)]
    pub image: String,
    /// The sidecar's imagePullPolicy (Kubernetes' default when not given).
    #[arg(long)]
    pub image_pull_policy: Option<String>,
    /// AWS region told to keyless and to the apps (AWS_REGION, AWS_DEFAULT_REGION).
    #[arg(long)]
    pub aws_region: Option<String>,
    /// Entra tenant of pods whose annotations name a client id but no tenant id.
    #[arg(long)]
    pub azure_tenant_id: Option<String>,
    #[command(flatten)]
    pub resources: ResourceArgs,
    /// A variable for every sidecar, NAME=VALUE (repeatable), e.g. KEYLESS_LOG_FORMAT=json.
    #[arg(long = "sidecar-env", value_name = "NAME=VALUE", value_parser = parse_env)]
    pub sidecar_env: Vec<(String, String)>,
    /// Keep the sidecar's admin listener (probes, /readyz details, /metrics, which names the
    /// pod's identities) on the pod's loopback, probed with `keyless probe` exec probes; no admin
    /// port, nothing scrapes the sidecar (docs/configuration.md, "Keeping /metrics inside the pod").
    #[arg(long)]
    pub sidecar_admin_on_loopback: bool,
    /// `sidecar`: a keyless sidecar in every opted-in pod. `node`: `keyless node` (one per node)
    /// serves the pods: only the apps' env and the pod's token for the AWS endpoint are injected.
    #[arg(long, value_enum, default_value = "sidecar")]
    pub mode: Mode,
    #[command(flatten)]
    pub node: NodeModeArgs,
}

/// The sidecar's resources (`--sidecar-cpu-request` ...), as [`Resources`] holds them.
#[derive(Debug, Clone, clap::Args)]
pub struct ResourceArgs {
    /// The sidecar's CPU request.
    #[arg(long = "sidecar-cpu-request", default_value = Resources::DEFAULT_CPU_REQUEST)]
    pub cpu_request: String,
    /// The sidecar's memory request.
    #[arg(long = "sidecar-memory-request", default_value = Resources::DEFAULT_MEMORY_REQUEST)]
    pub memory_request: String,
    /// The sidecar's memory limit.
    #[arg(long = "sidecar-memory-limit", default_value = Resources::DEFAULT_MEMORY_LIMIT)]
    pub memory_limit: String,
}

/// Where `keyless node` serves the pods (`--node-aws-address` ...), as [`NodeEndpoints`] holds it.
#[derive(Debug, Clone, clap::Args)]
pub struct NodeModeArgs {
    /// Node mode: HOST:PORT of keyless node's AWS container endpoint.
    #[arg(long = "node-aws-address", default_value = NodeEndpoints::DEFAULT_AWS)]
    pub aws: String,
    /// Node mode: HOST:PORT of keyless node's GCE metadata server (default: the AWS address).
    #[arg(long = "node-gcp-address")]
    pub gcp: Option<String>,
    /// Node mode: HOST:PORT of keyless node's Azure IMDS (default: the AWS address).
    #[arg(long = "node-azure-address")]
    pub azure: Option<String>,
    /// Node mode: the audience of the pod's token that authorizes the AWS endpoint (keyless node's
    /// --authorization-audience).
    #[arg(long = "node-authorization-audience", default_value = NodeEndpoints::DEFAULT_AUDIENCE)]
    pub audience: String,
}

/// Who serves the injected pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    Sidecar,
    Node,
}

pub(crate) fn parse_env(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.is_empty() && !name.contains(char::is_whitespace) => {
            Ok((name.to_owned(), value.to_owned()))
        }
        _ => Err(format!("{text:?} is not NAME=VALUE")),
    }
}

impl InjectArgs {
    pub fn options(&self) -> Options {
        Options {
            image: self.image.clone(),
            image_pull_policy: self.image_pull_policy.clone(),
            resources: Resources {
                cpu_request: self.resources.cpu_request.clone(),
                memory_request: self.resources.memory_request.clone(),
                memory_limit: self.resources.memory_limit.clone(),
            },
            aws_region: self.aws_region.clone(),
            azure_tenant_id: self.azure_tenant_id.clone(),
            sidecar_env: self.sidecar_env.clone(),
            check_sidecar: Some(SidecarCheck(check_sidecar)),
            shadowing: shadowing(),
            admin_on_loopback: self.sidecar_admin_on_loopback,
            node: (self.mode == Mode::Node).then(|| NodeEndpoints {
                aws: self.node.aws.clone(),
                gcp: self.node.gcp.clone(),
                azure: self.node.azure.clone(),
                audience: self.node.audience.clone(),
            }),
        }
    }
}

/// Every adapter's shadowing variables (what `keyless exec` sets aside), for the injection.
fn shadowing() -> Vec<ShadowingVar> {
    crate::providers::shadowing(crate::providers::names())
        .into_iter()
        .flat_map(|(cloud, shadowing)| {
            shadowing.vars.iter().map(move |var| ShadowingVar { cloud, name: var.name, group: var.group })
        })
        .collect()
}

/// `keyless inject`'s own flags (the webhook has no use for them).
#[derive(Debug, Clone, clap::Args)]
pub struct CliArgs {
    /// Read the ServiceAccounts the input does not hold from the cluster of the current kubeconfig
    /// context (`get serviceaccounts`, read-only); one in the input wins.
    #[arg(long)]
    pub from_cluster: bool,
    /// Write the documents even when an opted-in workload gets nothing (by default that is an
    /// error: one line per workload on stderr, nothing on stdout).
    #[arg(long)]
    pub allow_uninjected: bool,
}

/// The variables of an injected sidecar, loaded as `keyless serve` loads its environment at start
/// (the same settings, provider validators and route check): what the sidecar would refuse, the
/// injection refuses now, instead of a sidecar that never turns ready. Results are remembered (a
/// webhook sees the same few ServiceAccounts again and again; building the providers is not free).
fn check_sidecar(env: &[(String, String)]) -> Result<(), String> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    type Checked = HashMap<Vec<(String, String)>, Result<(), String>>;
    static CHECKED: OnceLock<Mutex<Checked>> = OnceLock::new();
    const REMEMBERED: usize = 1024;
    let checked = CHECKED.get_or_init(Default::default);
    if let Some(result) = checked.lock().ok().and_then(|c| c.get(env).cloned()) {
        return result;
    }
    let result = load_sidecar(env);
    if let Ok(mut checked) = checked.lock() {
        if checked.len() >= REMEMBERED {
            checked.clear();
        }
        checked.insert(env.to_vec(), result.clone());
    }
    result
}

fn load_sidecar(env: &[(String, String)]) -> Result<(), String> {
    // A CA file (`KEYLESS_<SECTION>__CA_FILE`, from the chart's `sidecar.env`) is a path in the
    // sidecar's container (its image or a volume), not where the injection runs: the webhook's
    // container has no such file, and reading it there refused every pod (found on a real node,
    // tests/tests/node_helm.rs). The sidecar reads and checks it at start.
    let env: std::collections::HashMap<String, String> =
        env.iter().filter(|(name, _)| !name.to_ascii_uppercase().ends_with("__CA_FILE")).cloned().collect();
    let (settings, _) = crate::config::settings_from_env(&env);
    let (config, sections) = crate::config::load(None, settings).map_err(|e| e.to_string())?;
    let config = config.finish(&crate::config::Overrides::default()).map_err(|e| e.to_string())?;
    // The sidecar's environment, not the injection's own: the webhook's variables (a GitHub
    // Actions job's, an IRSA webhook's) must not change what the sidecar is judged to run.
    let ctx = keyless_core::Context::new(
        std::sync::Arc::new(keyless_core::clock::SystemClock),
        keyless_core::Metrics::new(),
        config.cache_policy(),
        config.watch_options(),
    )
    .with_host(keyless_core::Host::from_vars(env, None));
    let mut accepted = Vec::new();
    for provider in crate::providers::configure_all(sections, &ctx, &ctx.env()) {
        accepted.push(provider.configured.map_err(|e| format!("[{}] {e}", provider.name))?);
    }
    crate::providers::check_routes(accepted.iter().map(|c| c.as_ref())).map_err(|e| e.to_string())
}

/// What `keyless inject` writes: the documents for stdout, the notes and the workloads left
/// uninjected for stderr.
pub type Output = keyless_inject::Injected;

/// Reads `file` (`-` or none: stdin), reads missing ServiceAccounts from the cluster when asked,
/// injects.
pub async fn run(file: Option<&Path>, cli: &CliArgs, args: &InjectArgs) -> Result<Output, String> {
    let input = read_input(file)?;
    let source = file.filter(|f| *f != Path::new("-")).map_or_else(|| "stdin".to_owned(), |f| f.display().to_string());
    let documents = keyless_inject::parse_documents(&input).map_err(|e| format!("{source}: {e}"))?;
    let cluster = if cli.from_cluster {
        Some(cluster::service_accounts(&documents.missing_service_accounts()).await?)
    } else {
        None
    };
    documents.inject(cluster.as_deref(), &args.options()).map_err(|e| format!("{source}: {e}"))
}

mod cluster {
    //! `--from-cluster`: the ServiceAccounts the input lacks, read with the user's kubeconfig.

    use std::time::Duration;

    use k8s_openapi::api::core::v1::ServiceAccount;
    use keyless_inject::WorkloadRef;
    use kube::{Api, Client, Config};

    /// One read may take this long (a kubeconfig pointing at a cluster that is not there).
    const READ_TIMEOUT: Duration = Duration::from_secs(15);

    /// Reads each of `wanted` (a workload without a namespace: the context's namespace); those the
    /// cluster does not have are left out. An error (no kubeconfig, no access) is an error.
    pub async fn service_accounts(wanted: &[WorkloadRef]) -> Result<Vec<keyless_inject::ServiceAccount>, String> {
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        let config = Config::infer()
            .await
            .map_err(|e| format!("--from-cluster: cannot load a kubeconfig: {e} (set KUBECONFIG or ~/.kube/config)"))?;
        let default_namespace = config.default_namespace.clone();
        let client = Client::try_from(config).map_err(|e| format!("--from-cluster: {e}"))?;
        let mut found = Vec::new();
        for WorkloadRef { namespace, service_account } in wanted {
            let namespace = if namespace.is_empty() { default_namespace.as_str() } else { namespace.as_str() };
            let api: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
            let read = tokio::time::timeout(READ_TIMEOUT, api.get_metadata_opt(service_account)).await;
            let what = || format!("--from-cluster: cannot read ServiceAccount {namespace}/{service_account}");
            match read {
                Ok(Ok(Some(account))) => found.push(keyless_inject::ServiceAccount {
                    namespace: namespace.to_owned(),
                    name: service_account.clone(),
                    annotations: account.metadata.annotations.unwrap_or_default().into_iter().collect(),
                }),
                Ok(Ok(None)) => {}
                Ok(Err(e)) => return Err(format!("{}: {e} (inject needs get on serviceaccounts)", what())),
                Err(_) => return Err(format!("{}: no answer within {}s", what(), READ_TIMEOUT.as_secs())),
            }
        }
        Ok(found)
    }
}

fn read_input(file: Option<&Path>) -> Result<String, String> {
    let (name, reader): (String, Box<dyn Read>) = match file {
        None => ("stdin".to_owned(), Box::new(std::io::stdin())),
        Some(path) if path == Path::new("-") => ("stdin".to_owned(), Box::new(std::io::stdin())),
        Some(path) => {
            let f = std::fs::File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
            (path.display().to_string(), Box::new(f))
        }
    };
    let mut text = String::new();
    let read = reader
        .take(MAX_INPUT + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read {name}: {e} (the input must be UTF-8 YAML)"))?;
    if read as u64 > MAX_INPUT {
        return Err(format!("{name} is larger than {} MiB: split it", MAX_INPUT / 1024 / 1024));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;

    use clap::Parser;
    use keyless_core::clock::SystemClock;
    use keyless_core::{Context, Metrics};
    use keyless_inject::{Annotations, Namespace, Outcome};

    use super::*;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        inject: InjectArgs,
    }

    #[test]
    fn without_flags_the_options_are_the_librarys_defaults() {
        let cli = Cli::try_parse_from(["keyless"]).expect("parses");
        let checked =
            Options { check_sidecar: Some(SidecarCheck(check_sidecar)), shadowing: shadowing(), ..Options::default() };
        assert_eq!(cli.inject.options(), checked);
    }

    /// The flags of the sidecar's resources and of node mode keep their names (the chart passes
    /// them) and land in the library's `Resources` and `NodeEndpoints`.
    #[test]
    fn the_resource_and_node_flags_fill_the_librarys_structures() {
        let cli = Cli::try_parse_from([
            "keyless",
            "--sidecar-cpu-request=5m",
            "--sidecar-memory-request=6Mi",
            "--sidecar-memory-limit=7Mi",
            "--mode=node",
            "--node-aws-address=169.254.170.23:80",
            "--node-gcp-address=169.254.169.254:80",
            "--node-azure-address=169.254.169.253:80",
            "--node-authorization-audience=keyless.dev/node",
        ])
        .expect("parses");
        let options = cli.inject.options();
        assert_eq!(
            options.resources,
            Resources { cpu_request: "5m".into(), memory_request: "6Mi".into(), memory_limit: "7Mi".into() }
        );
        assert_eq!(
            options.node,
            Some(NodeEndpoints {
                aws: "169.254.170.23:80".into(),
                gcp: Some("169.254.169.254:80".into()),
                azure: Some("169.254.169.253:80".into()),
                audience: "keyless.dev/node".into(),
            })
        );
    }

    fn annotations(pairs: &[(&str, &str)]) -> Annotations {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    /// A pod opted in by its label, one container `app` with the variables `env`.
    fn opted_in_pod(env: serde_json::Value) -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": { "name": "app", "labels": { keyless_inject::INJECT_LABEL: "true" } },
            "spec": { "containers": [{ "name": "app", "image": "app:1", "env": env }] },
        })
    }

    /// The variables injection looks for are the adapters' own declarations, `keyless exec`'s list:
    /// with the options the binary passes, the IRSA webhook's pair is taken over and a static key
    /// or a Google credentials file the container sets itself is named.
    #[test]
    fn injection_takes_over_or_names_what_each_adapter_declares_as_shadowing() {
        let declared: Vec<&str> = crate::providers::shadowing(crate::providers::names())
            .iter()
            .flat_map(|(_, s)| s.vars.iter().map(|v| v.name))
            .collect();
        let options = Cli::try_parse_from(["keyless"]).expect("parses").inject.options();
        let names: Vec<&str> = options.shadowing.iter().map(|v| v.name).collect();
        assert_eq!(names, declared);
        assert!(names.contains(&"GOOGLE_APPLICATION_CREDENTIALS") && names.contains(&"AZURE_CLIENT_SECRET"));

        let annotations = annotations(&[
            (keyless_inject::AWS_ROLE_ARN, "arn:aws:iam::111122223333:role/app"),
            (keyless_inject::GCP_SERVICE_ACCOUNT, "app@project.iam.gserviceaccount.com"),
            (keyless_inject::GCP_PROVIDER, "projects/123/locations/global/workloadIdentityPools/pool/providers/k8s"),
        ]);
        let pod = opted_in_pod(serde_json::json!([
            { "name": "AWS_ROLE_ARN", "value": "arn:aws:iam::111122223333:role/irsa" },
            { "name": "AWS_WEB_IDENTITY_TOKEN_FILE", "value": "/var/run/secrets/eks.amazonaws.com/serviceaccount/token" },
            { "name": "AWS_SECRET_ACCESS_KEY", "value": "x" },
            { "name": "GOOGLE_APPLICATION_CREDENTIALS", "value": "/key.json" },
        ]));
        let (injected, outcome) =
            keyless_inject::inject_pod_json(&pod, &annotations, Namespace::Unknown, &options).expect("injects");
        let env: Vec<&str> = injected["spec"]["containers"][0]["env"]
            .as_array()
            .expect("env")
            .iter()
            .filter_map(|e| e["name"].as_str())
            .collect();
        assert!(!env.contains(&"AWS_ROLE_ARN") && !env.contains(&"AWS_WEB_IDENTITY_TOKEN_FILE"), "{env:?}");
        assert!(env.contains(&"AWS_SECRET_ACCESS_KEY") && env.contains(&"GOOGLE_APPLICATION_CREDENTIALS"), "{env:?}");
        let Outcome::Injected { warnings, .. } = outcome else { panic!("{outcome:?}") };
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].contains("AWS_SECRET_ACCESS_KEY, GOOGLE_APPLICATION_CREDENTIALS")
                && warnings[0].contains("aws and gcp SDKs"),
            "{warnings:?}"
        );
    }

    /// A GCP sidecar's variables for `account`, and `extra`.
    fn gcp_sidecar_env(account: &str, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        [
            ("KEYLESS_LISTEN", "127.0.0.1:9811"),
            ("KEYLESS_GCP__TOKEN_FILE", "/var/run/secrets/keyless/gcp-token"),
            (
                "KEYLESS_GCP__AUDIENCE",
                "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/k",
            ),
            ("KEYLESS_GCP__SERVICE_ACCOUNT", account),
        ]
        .iter()
        .chain(extra)
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
    }

    /// The check is `keyless serve`'s own loading: a service account e-mail the GCP adapter refuses
    /// at start is refused, naming the setting; the injection's usual variables pass.
    #[test]
    fn the_sidecar_check_refuses_what_the_sidecar_would_refuse_at_start() {
        check_sidecar(&gcp_sidecar_env("app@p.iam.gserviceaccount.com", &[])).expect("accepted");
        let err = check_sidecar(&gcp_sidecar_env("a@b.c/../../x?y#z", &[])).expect_err("refused at start");
        assert!(err.contains("service_account"), "{err}");
    }

    /// A CA file names a path in the sidecar's container (a private CA baked into its image), which
    /// the webhook's container does not have: the check does not read it (the sidecar does, at
    /// start), and still refuses what is wrong beside it.
    #[test]
    fn the_sidecar_check_leaves_the_sidecars_ca_file_to_the_sidecar() {
        let ca = [("KEYLESS_GCP__CA_FILE", "/etc/keyless/only-in-the-sidecar-image/ca.pem")];
        let env = |account: &str| gcp_sidecar_env(account, &ca);
        check_sidecar(&env("ca-file@p.iam.gserviceaccount.com")).expect("accepted: the file is the sidecar's");
        // Keys are case-insensitive (settings_from_env lowercases them): so is what is left out.
        let lower = [("KEYLESS_GCP__ca_file", "/etc/keyless/only-in-the-sidecar-image/ca.pem")];
        check_sidecar(&gcp_sidecar_env("ca-lower@p.iam.gserviceaccount.com", &lower)).expect("accepted, lowercase key");
        let err = check_sidecar(&env("a@b.c/../../ca?y#z")).expect_err("refused at start");
        assert!(err.contains("service_account"), "{err}");
    }

    /// keyless-inject names keyless's settings (`KEYLESS_<SECTION>__<KEY>`) as strings: the
    /// sidecar it injects for every cloud, with every optional setting, must start with exactly
    /// those variables (none skipped, none unknown to its provider, no route collision), and its
    /// probes must find keyless's admin listener.
    #[test]
    fn the_injected_sidecars_environment_is_a_configuration_keyless_accepts() {
        let annotations = annotations(&[
            (keyless_inject::AWS_ROLE_ARN, "arn:aws:iam::111122223333:role/app"),
            (keyless_inject::AWS_STS_REGIONAL_ENDPOINTS, "legacy"),
            (keyless_inject::GCP_SERVICE_ACCOUNT, "app@project.iam.gserviceaccount.com"),
            (keyless_inject::GCP_PROVIDER, "projects/123/locations/global/workloadIdentityPools/pool/providers/k8s"),
            (keyless_inject::GCP_PROJECT_ID, "my-project"),
            (keyless_inject::AZURE_CLIENT_ID, "11111111-1111-1111-1111-111111111111"),
            (keyless_inject::AZURE_TENANT_ID, "00000000-0000-0000-0000-000000000000"),
            (keyless_inject::AZURE_IDENTITY_HEADER_SECRET, "app-identity-header"),
        ]);
        let pod = opted_in_pod(serde_json::json!([]));
        for admin_on_loopback in [false, true] {
            let options = Options { aws_region: Some("eu-west-1".to_owned()), admin_on_loopback, ..Options::default() };
            let (injected, outcome) =
                keyless_inject::inject_pod_json(&pod, &annotations, Namespace::Unknown, &options).expect("injects");
            assert!(matches!(outcome, Outcome::Injected { .. }), "{outcome:?}");
            sidecar_starts_and_is_probed(&injected["spec"]["initContainers"][0], admin_on_loopback);
        }
    }

    fn sidecar_starts_and_is_probed(sidecar: &serde_json::Value, admin_on_loopback: bool) {
        assert_eq!(sidecar["name"], keyless_inject::CONTAINER);
        // A variable from a Secret gets a stand-in value: only its name matters here.
        let env: HashMap<String, String> = sidecar["env"]
            .as_array()
            .expect("an env list")
            .iter()
            .map(|var| {
                let value = var["value"].as_str().unwrap_or("a-value-from-a-secret-0123456789");
                (var["name"].as_str().expect("a name").to_owned(), value.to_owned())
            })
            .collect();
        assert!(env.contains_key("KEYLESS_AZURE__IDENTITY_HEADER"), "{env:?}");

        let (settings, skipped) = crate::config::settings_from_env(&env);
        assert!(skipped.is_empty(), "not keyless settings: {skipped:?}");
        let (config, sections) = crate::config::load(None, settings).expect("keyless loads the settings");
        let config = config.finish(&crate::config::Overrides::default()).expect("a valid configuration");
        if admin_on_loopback {
            // The hardened setup: no admin port; every probe is `keyless probe` of the admin
            // listener keyless binds, on loopback (the kubelet's HTTP probes could not reach it).
            assert!(config.admin_listen.ip().is_loopback(), "{}", config.admin_listen);
            assert!(sidecar.get("ports").is_none(), "{sidecar}");
            for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
                let command: Vec<&str> = sidecar[probe]["exec"]["command"]
                    .as_array()
                    .unwrap_or_else(|| panic!("{probe} is no exec probe: {sidecar}"))
                    .iter()
                    .map(|a| a.as_str().expect("a string"))
                    .collect();
                assert_eq!(command[0], "/usr/local/bin/keyless", "the image's binary");
                let cli = crate::Cli::try_parse_from(&command).unwrap_or_else(|e| panic!("{command:?}: {e}"));
                let crate::Command::Probe { url, .. } = cli.command else { panic!("{command:?} is no probe") };
                let url = url::Url::parse(&url).expect("a URL");
                let host: std::net::IpAddr = url.host_str().expect("a host").parse().expect("an address");
                assert_eq!((host, url.port()), (config.admin_listen.ip(), Some(config.admin_listen.port())), "{url}");
            }
        } else {
            // The probes reach the admin listener on the port the sidecar declares; keyless's default.
            let probe_port = sidecar["ports"][0]["containerPort"].as_u64().expect("the admin port");
            assert_eq!(u64::from(config.admin_listen.port()), probe_port, "{sidecar}");
            assert!(sidecar["startupProbe"]["httpGet"].is_object(), "{sidecar}");
        }
        let names: Vec<&str> = sections.values.keys().copied().collect();
        assert_eq!(names, ["aws", "azure", "gcp"]);
        let ctx = Context::new(Arc::new(SystemClock), Metrics::new(), config.cache_policy(), config.watch_options());
        let configured = crate::providers::configure_all(sections, &ctx, &|_| None);
        let mut accepted = Vec::new();
        for provider in configured {
            let configured = provider.configured.unwrap_or_else(|e| panic!("[{}]: {e}", provider.name));
            accepted.push(configured);
        }
        assert_eq!(accepted.len(), 3);
        crate::providers::check_routes(accepted.iter().map(|c| c.as_ref())).expect("no route collision");
    }
}
