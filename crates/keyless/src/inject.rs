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
    use clap::Parser;

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
}
