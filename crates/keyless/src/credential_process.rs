//! `keyless credential-process`: AWS `credential_process` JSON on stdout (protocols.md 2.4), either
//! from a running keyless's container endpoint or by doing the exchange itself from config.
//! The JSON shapes are keyless-aws's; this file only chooses the source and prints.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use keyless_core::clock::SystemClock;
use keyless_core::{Context, Metrics};

use crate::config;

/// Where the credentials come from.
#[derive(Debug)]
pub enum Source {
    /// `GET` a running keyless's container-credentials endpoint.
    Endpoint { url: String, authorization: String },
    /// One STS exchange from the `[aws]` section (or the IRSA env vars).
    Exchange { config_file: Option<std::path::PathBuf> },
}

impl Source {
    /// `--config` means exchange; otherwise a container endpoint in the environment (as keyless
    /// dev or the pod wiring sets it) is used; otherwise exchange from the IRSA env vars.
    pub fn choose(
        config_file: Option<std::path::PathBuf>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, String> {
        if config_file.is_some() {
            return Ok(Self::Exchange { config_file });
        }
        if let Some(url) = env("AWS_CONTAINER_CREDENTIALS_FULL_URI") {
            let authorization =
                match (env("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"), env("AWS_CONTAINER_AUTHORIZATION_TOKEN")) {
                    (Some(file), _) => std::fs::read_to_string(&file)
                        .map_err(|e| format!("cannot read AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE={file}: {e}"))?,
                    (None, Some(value)) => value,
                    (None, None) => {
                        return Err(
                        "AWS_CONTAINER_CREDENTIALS_FULL_URI is set but neither AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE \
                                nor AWS_CONTAINER_AUTHORIZATION_TOKEN is: keyless's endpoint requires the token"
                            .to_owned(),
                    );
                    }
                };
            return Ok(Self::Endpoint { url, authorization: authorization.trim_end_matches(['\r', '\n']).to_owned() });
        }
        Ok(Self::Exchange { config_file: None })
    }
}

/// The Version 1 JSON, or the reason it could not be produced.
pub async fn run(source: Source) -> Result<String, String> {
    match source {
        Source::Endpoint { url, authorization } => from_endpoint(&url, &authorization).await,
        Source::Exchange { config_file } => from_exchange(config_file.as_deref()).await,
    }
}

async fn from_endpoint(url: &str, authorization: &str) -> Result<String, String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
    let response = client
        .get(url)
        .header("Authorization", authorization)
        .send()
        .await
        .map_err(|e| format!("keyless at {url} did not answer: {e} (is the sidecar running?)"))?;
    let status = response.status();
    let body = response.text().await.map_err(|e| format!("reading the answer of {url}: {e}"))?;
    if !status.is_success() {
        return Err(format!("keyless at {url} answered {status}: {body}"));
    }
    let credentials = keyless_aws::AwsCredentials::from_container_json(&body)
        .map_err(|e| format!("keyless at {url} answered something that is not AWS credentials: {e}"))?;
    Ok(keyless_aws::credential_process_json(&credentials))
}

async fn from_exchange(config_file: Option<&Path>) -> Result<String, String> {
    let env: std::collections::HashMap<String, String> = std::env::vars().collect();
    let (settings, _) = config::settings_from_env(&env);
    let (config, mut sections) = config::load(config_file, settings).map_err(|e| e.to_string())?;
    let process_env = |name: &str| std::env::var(name).ok();
    let section = sections.0.remove(<keyless_aws::Aws as keyless_provider::Provider>::NAME);
    let aws = match section {
        Some(section) => section
            .try_deserialize::<keyless_aws::Config>()
            .map_err(|e| config::explain(&format!("[aws] section: {e}")))?,
        None => keyless_aws::Config::from_env(&process_env).map_err(|e| e.to_string())?.ok_or_else(|| {
            "no AWS identity configured: pass --config with an [aws] section, set AWS_ROLE_ARN and \
             AWS_WEB_IDENTITY_TOKEN_FILE, or point AWS_CONTAINER_CREDENTIALS_FULL_URI at a running keyless"
                .to_owned()
        })?,
    };
    let ctx = Context::new(Arc::new(SystemClock), Metrics::new(), config.cache_policy(), config.watch_options());
    let issued = keyless_aws::fetch_once(&aws, &ctx).await.map_err(|e| e.to_string())?;
    Ok(keyless_aws::credential_process_json(&issued.credential.value))
}
