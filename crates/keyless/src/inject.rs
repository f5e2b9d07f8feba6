//! `keyless inject`: the injection of keyless-inject on YAML from a file or stdin, to stdout
//! (docs/injection.md). What it did and warnings go to stderr.

use std::io::Read;
use std::path::Path;

use keyless_inject::{Options, Resources};

/// Largest input read: far above any manifest set, and a bound on what a pipe can make keyless hold.
const MAX_INPUT: u64 = 64 * 1024 * 1024;

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
    /// The sidecar's CPU request.
    #[arg(long, default_value = Resources::DEFAULT_CPU_REQUEST)]
    pub sidecar_cpu_request: String,
    /// The sidecar's memory request.
    #[arg(long, default_value = Resources::DEFAULT_MEMORY_REQUEST)]
    pub sidecar_memory_request: String,
    /// The sidecar's memory limit.
    #[arg(long, default_value = Resources::DEFAULT_MEMORY_LIMIT)]
    pub sidecar_memory_limit: String,
    /// A variable for every sidecar, NAME=VALUE (repeatable), e.g. KEYLESS_LOG_FORMAT=json.
    #[arg(long = "sidecar-env", value_name = "NAME=VALUE", value_parser = parse_env)]
    pub sidecar_env: Vec<(String, String)>,
}

fn parse_env(text: &str) -> Result<(String, String), String> {
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
                cpu_request: self.sidecar_cpu_request.clone(),
                memory_request: self.sidecar_memory_request.clone(),
                memory_limit: self.sidecar_memory_limit.clone(),
            },
            aws_region: self.aws_region.clone(),
            azure_tenant_id: self.azure_tenant_id.clone(),
            sidecar_env: self.sidecar_env.clone(),
        }
    }
}

/// Reads `file` (`-` or none: stdin), injects, returns the YAML and the notes for stderr.
pub fn run(file: Option<&Path>, args: &InjectArgs) -> Result<keyless_inject::Injected, String> {
    let input = read_input(file)?;
    keyless_inject::inject_documents(&input, &args.options()).map_err(|e| {
        let source =
            file.filter(|f| *f != Path::new("-")).map_or_else(|| "stdin".to_owned(), |f| f.display().to_string());
        format!("{source}: {e}")
    })
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
        assert_eq!(cli.inject.options(), Options::default());
    }

    /// keyless-inject names keyless's settings (`KEYLESS_<SECTION>__<KEY>`) as strings: the
    /// sidecar it injects for every cloud, with every optional setting, must start with exactly
    /// those variables (none skipped, none unknown to its provider, no route collision), and its
    /// probes must find keyless's admin listener.
    #[test]
    fn the_injected_sidecars_environment_is_a_configuration_keyless_accepts() {
        let annotations: Annotations = [
            (keyless_inject::AWS_ROLE_ARN, "arn:aws:iam::111122223333:role/app"),
            (keyless_inject::AWS_STS_REGIONAL_ENDPOINTS, "legacy"),
            (keyless_inject::GCP_SERVICE_ACCOUNT, "app@project.iam.gserviceaccount.com"),
            (keyless_inject::GCP_PROVIDER, "projects/123/locations/global/workloadIdentityPools/pool/providers/k8s"),
            (keyless_inject::GCP_PROJECT_ID, "my-project"),
            (keyless_inject::AZURE_CLIENT_ID, "11111111-1111-1111-1111-111111111111"),
            (keyless_inject::AZURE_TENANT_ID, "00000000-0000-0000-0000-000000000000"),
            (keyless_inject::AZURE_IDENTITY_HEADER_SECRET, "app-identity-header"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let pod = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": { "name": "app", "labels": { keyless_inject::INJECT_LABEL: "true" } },
            "spec": { "containers": [{ "name": "app", "image": "app:1" }] },
        });
        let options = Options { aws_region: Some("eu-west-1".to_owned()), ..Options::default() };
        let (injected, outcome) =
            keyless_inject::inject_pod_json(&pod, &annotations, Namespace::Unknown, &options).expect("injects");
        assert!(matches!(outcome, Outcome::Injected { .. }), "{outcome:?}");
        let sidecar = &injected["spec"]["initContainers"][0];
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
        // The probes reach the admin listener on the port the sidecar declares; keyless's default.
        let probe_port = sidecar["ports"][0]["containerPort"].as_u64().expect("the admin port");
        assert_eq!(u64::from(config.admin_listen.port()), probe_port, "{sidecar}");
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
