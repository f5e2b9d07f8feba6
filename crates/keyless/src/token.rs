//! `keyless token aws|gcp|azure`: one credential on stdout for a script, as `aws configure
//! export-credentials`, `gcloud auth print-access-token` / `print-identity-token` and `az account
//! get-access-token` print them. The same configuration and sources as `keyless exec`: keyless
//! starts in-process on loopback, the one provider asked for only, and the credential is read
//! from its own native endpoint (so it is exactly what an SDK under `exec` would get).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use keyless_provider::Provider as _;
use serde_json::Value;

use crate::exec::{InProcess, own_failure};
use crate::providers::Choice;

/// Which cloud's credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Cloud {
    Aws,
    Gcp,
    Azure,
}

impl Cloud {
    /// The provider's name, as the provider states it (the `--only` and config section it is).
    fn name(self) -> &'static str {
        match self {
            Cloud::Aws => keyless_aws::Aws::NAME,
            Cloud::Gcp => keyless_gcp::Gcp::NAME,
            Cloud::Azure => keyless_azure::Azure::NAME,
        }
    }
}

/// How the credential is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// `export NAME=value` lines for `eval`.
    Env,
    /// The endpoint's JSON (AWS: credential_process JSON).
    Json,
    /// The token alone (GCP, Azure).
    Raw,
}

#[derive(Debug)]
pub struct TokenOptions {
    pub cloud: Cloud,
    pub config: Option<PathBuf>,
    /// A named identity: an `[[aws.roles]]` name, a service account e-mail, a client id.
    pub role: Option<String>,
    pub audience: Option<String>,
    pub scopes: Vec<String>,
    pub resource: Option<String>,
    pub format: Option<Format>,
    pub ready_timeout: Duration,
}

#[allow(clippy::print_stdout)] // the credential is the command's output
pub async fn run(opts: TokenOptions) -> ExitCode {
    match fetch(&opts).await {
        Ok(text) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => own_failure("keyless token", &e),
    }
}

async fn fetch(opts: &TokenOptions) -> Result<String, String> {
    let name = opts.cloud.name();
    check_flags(opts)?;
    let mut choice = Choice { only: Some(vec![name.to_owned()]), ..Choice::default() };
    if let Some(role) = &opts.role {
        choice.defaults.insert(name, role.clone());
    }
    let keyless = InProcess::start(opts.config.as_deref(), &choice, None).await?;
    let result = async {
        keyless.ready(opts.ready_timeout, "keyless token").await?;
        match opts.cloud {
            Cloud::Aws => aws(&keyless, opts.format.unwrap_or(Format::Env)).await,
            Cloud::Gcp => gcp(&keyless, opts).await,
            Cloud::Azure => azure(&keyless, opts).await,
        }
    }
    .await;
    keyless.stop().await;
    result
}

/// Flags that belong to another cloud are refused rather than ignored.
fn check_flags(opts: &TokenOptions) -> Result<(), String> {
    let misplaced = match opts.cloud {
        Cloud::Aws => [
            ("--audience", opts.audience.is_some()),
            ("--scope", !opts.scopes.is_empty()),
            ("--resource", opts.resource.is_some()),
        ]
        .into_iter()
        .find(|(_, set)| *set),
        Cloud::Gcp => [("--resource", opts.resource.is_some())].into_iter().find(|(_, set)| *set),
        Cloud::Azure => [("--audience", opts.audience.is_some()), ("--scope", !opts.scopes.is_empty())]
            .into_iter()
            .find(|(_, set)| *set),
    };
    if let Some((flag, _)) = misplaced {
        return Err(format!("{flag} does not apply to {}", opts.cloud.name()));
    }
    if opts.audience.is_some() && !opts.scopes.is_empty() {
        return Err("--scope applies to access tokens, not to an ID token (--audience)".to_owned());
    }
    if opts.cloud == Cloud::Aws && opts.format == Some(Format::Raw) {
        return Err("an AWS credential is three values: use --format env or json".to_owned());
    }
    Ok(())
}

fn need<'a>(keyless: &'a InProcess, var: &str) -> Result<&'a str, String> {
    keyless.var(var).ok_or_else(|| format!("keyless serves no endpoint that sets {var}; check the configuration"))
}

async fn get(url: &str, headers: &[(&str, &str)]) -> Result<Value, String> {
    let client =
        reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(60)).build().map_err(|e| e.to_string())?;
    let mut request = client.get(url);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let response = request.send().await.map_err(|e| format!("keyless's own endpoint did not answer: {e}"))?;
    let status = response.status();
    let body = response.text().await.map_err(|e| e.to_string())?;
    if !status.is_success() {
        let shown = keyless_core::printable::printable(&body, 400);
        return Err(format!("keyless answered HTTP {status}: {shown}"));
    }
    // An ID token is a bare JWT, everything else JSON.
    Ok(serde_json::from_str(&body).unwrap_or(Value::String(body)))
}

fn field<'a>(json: &'a Value, key: &str) -> Result<&'a str, String> {
    json.get(key).and_then(Value::as_str).ok_or_else(|| format!("the answer has no {key}"))
}

async fn aws(keyless: &InProcess, format: Format) -> Result<String, String> {
    let uri = need(keyless, "AWS_CONTAINER_CREDENTIALS_FULL_URI")?;
    let auth = need(keyless, "AWS_CONTAINER_AUTHORIZATION_TOKEN")?;
    let json = get(uri, &[("authorization", auth)]).await?;
    let (id, secret, session, expiration) = (
        field(&json, "AccessKeyId")?,
        field(&json, "SecretAccessKey")?,
        field(&json, "Token")?,
        field(&json, "Expiration")?,
    );
    Ok(match format {
        Format::Json => serde_json::json!({
            "Version": 1,
            "AccessKeyId": id,
            "SecretAccessKey": secret,
            "SessionToken": session,
            "Expiration": expiration,
        })
        .to_string(),
        _ => format!(
            "export AWS_ACCESS_KEY_ID={id}\nexport AWS_SECRET_ACCESS_KEY={secret}\nexport AWS_SESSION_TOKEN={session}\n\
             export AWS_CREDENTIAL_EXPIRATION={expiration}"
        ),
    })
}

async fn gcp(keyless: &InProcess, opts: &TokenOptions) -> Result<String, String> {
    let host = need(keyless, "GCE_METADATA_HOST")?;
    let base = format!("http://{host}/computeMetadata/v1/instance/service-accounts/default");
    let flavor = [("metadata-flavor", "Google")];
    let format = opts.format.unwrap_or(Format::Raw);
    if let Some(audience) = &opts.audience {
        let url = url::Url::parse_with_params(
            &format!("{base}/identity"),
            [("audience", audience.as_str()), ("format", "full")],
        )
        .map_err(|e| e.to_string())?;
        let token = get(url.as_str(), &flavor).await?;
        let token = token.as_str().ok_or("the ID token answer is not a JWT")?.trim().to_owned();
        return Ok(match format {
            Format::Raw => token,
            Format::Json => serde_json::json!({ "id_token": token }).to_string(),
            Format::Env => format!("export GOOGLE_ID_TOKEN={token}"),
        });
    }
    let mut url = url::Url::parse(&format!("{base}/token")).map_err(|e| e.to_string())?;
    if !opts.scopes.is_empty() {
        url.query_pairs_mut().append_pair("scopes", &opts.scopes.join(","));
    }
    let json = get(url.as_str(), &flavor).await?;
    let token = field(&json, "access_token")?;
    Ok(match format {
        Format::Raw => token.to_owned(),
        Format::Json => json.to_string(),
        // gcloud reads the first, Terraform's Google provider the second.
        Format::Env => format!("export CLOUDSDK_AUTH_ACCESS_TOKEN={token}\nexport GOOGLE_OAUTH_ACCESS_TOKEN={token}"),
    })
}

async fn azure(keyless: &InProcess, opts: &TokenOptions) -> Result<String, String> {
    let resource = opts.resource.as_deref().unwrap_or("https://management.azure.com/");
    let json = match (keyless.var("IDENTITY_ENDPOINT"), keyless.var("IDENTITY_HEADER")) {
        (Some(endpoint), Some(header)) => {
            let url = url::Url::parse_with_params(endpoint, [("api-version", "2019-08-01"), ("resource", resource)])
                .map_err(|e| e.to_string())?;
            get(url.as_str(), &[("x-identity-header", header)]).await?
        }
        _ => {
            let base = need(keyless, "AZURE_POD_IDENTITY_AUTHORITY_HOST")?;
            let url = url::Url::parse_with_params(
                &format!("{}/metadata/identity/oauth2/token", base.trim_end_matches('/')),
                [("api-version", "2018-02-01"), ("resource", resource)],
            )
            .map_err(|e| e.to_string())?;
            get(url.as_str(), &[("metadata", "true")]).await?
        }
    };
    let token = field(&json, "access_token")?;
    Ok(match opts.format.unwrap_or(Format::Raw) {
        Format::Raw => token.to_owned(),
        Format::Json => json.to_string(),
        Format::Env => format!("export AZURE_ACCESS_TOKEN={token}"),
    })
}

#[cfg(test)]
mod tests {
    use clap::ValueEnum as _;

    use super::*;

    /// `keyless token CLOUD` takes each provider by its own name, and only those.
    #[test]
    fn each_cloud_is_a_provider_by_its_name() {
        for cloud in Cloud::value_variants() {
            let value = cloud.to_possible_value().expect("no cloud is hidden");
            assert_eq!(value.get_name(), cloud.name());
        }
        let names: Vec<&str> = Cloud::value_variants().iter().map(|c| c.name()).collect();
        assert_eq!(names, crate::providers::names().collect::<Vec<_>>());
    }

    #[test]
    fn flags_of_another_kind_of_token_are_refused_before_keyless_starts() {
        let opts = |cloud, audience: Option<&str>, scopes: &[&str]| TokenOptions {
            cloud,
            config: None,
            role: None,
            audience: audience.map(str::to_owned),
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            resource: None,
            format: None,
            ready_timeout: Duration::ZERO,
        };
        let err = check_flags(&opts(Cloud::Gcp, Some("https://a"), &["s"])).expect_err("an ID token has no scopes");
        assert!(err.contains("--scope applies to access tokens"), "{err}");
        assert!(check_flags(&opts(Cloud::Gcp, Some("https://a"), &[])).is_ok());
        let err = check_flags(&opts(Cloud::Azure, None, &["s"])).expect_err("Entra takes a resource");
        assert!(err.contains("--scope does not apply to azure"), "{err}");
    }
}
