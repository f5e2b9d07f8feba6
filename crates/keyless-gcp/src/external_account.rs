//! Google's `external_account` credential JSON (what `gcloud iam workload-identity-pools
//! create-cred-config` writes, docs/protocols.md 3.2) read as a source of the same settings as the
//! `[gcp]` section.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::ConfigError;

/// The settings an `external_account` file provides; each is overridden by an explicit key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ExternalAccount {
    pub(crate) audience: Option<String>,
    pub(crate) subject_token_type: Option<String>,
    /// `token_url` without its `/v1/token` path.
    pub(crate) sts_endpoint: Option<String>,
    /// The e-mail in `service_account_impersonation_url`.
    pub(crate) service_account: Option<String>,
    /// `service_account_impersonation_url` up to its `/v1/projects/...` path.
    pub(crate) iam_endpoint: Option<String>,
    pub(crate) token_lifetime: Option<Duration>,
    pub(crate) token_file: Option<PathBuf>,
    /// `credential_source.url` (with `headers` and `format`): a URL source.
    pub(crate) url_source: Option<keyless_core::source::UrlSpec>,
    /// `credential_source.executable`: a command source (Google's JSON output), opt-in.
    pub(crate) executable: Option<Executable>,
    pub(crate) universe_domain: Option<String>,
}

/// `credential_source.executable` (docs/protocols.md 6.3): the command is split on whitespace, no shell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Executable {
    pub(crate) command: Vec<String>,
    pub(crate) timeout: Duration,
}

#[derive(Deserialize)]
struct File {
    #[serde(rename = "type")]
    kind: Option<String>,
    audience: Option<String>,
    subject_token_type: Option<String>,
    token_url: Option<String>,
    service_account_impersonation_url: Option<String>,
    service_account_impersonation: Option<Impersonation>,
    credential_source: Option<CredentialSource>,
    universe_domain: Option<String>,
}

#[derive(Deserialize)]
struct Impersonation {
    token_lifetime_seconds: Option<u64>,
}

#[derive(Deserialize)]
struct CredentialSource {
    file: Option<PathBuf>,
    url: Option<String>,
    #[serde(default)]
    headers: std::collections::BTreeMap<String, String>,
    executable: Option<ExecutableSource>,
    format: Option<SourceFormat>,
}

#[derive(Deserialize)]
struct SourceFormat {
    #[serde(rename = "type")]
    kind: Option<String>,
    subject_token_field_name: Option<String>,
}

#[derive(Deserialize)]
struct ExecutableSource {
    command: Option<String>,
    timeout_millis: Option<u64>,
}

/// google-auth's bounds for `timeout_millis` (pluggable.py).
const EXECUTABLE_TIMEOUT_MILLIS: std::ops::RangeInclusive<u64> = 5_000..=120_000;
const EXECUTABLE_DEFAULT_TIMEOUT_MILLIS: u64 = 30_000;

/// Largest credential file read (real ones are under 2 KiB).
const MAX_FILE_SIZE: u64 = 64 * 1024;

impl ExternalAccount {
    /// Reads the file at `path`; `origin` names where the path came from in errors
    /// (`gcp.credentials_file`, `GOOGLE_APPLICATION_CREDENTIALS`).
    pub(crate) fn load(origin: &str, path: &Path) -> Result<Self, ConfigError> {
        let error = |message: String| ConfigError::CredentialsFile {
            origin: origin.to_owned(),
            path: path.to_owned(),
            message,
        };
        let size = std::fs::metadata(path).map_err(|e| error(format!("cannot be read: {e}")))?.len();
        if size > MAX_FILE_SIZE {
            return Err(error(format!("is {size} bytes, too large for a credential configuration")));
        }
        let text = std::fs::read_to_string(path).map_err(|e| error(format!("cannot be read: {e}")))?;
        Self::parse(&text).map_err(error)
    }

    fn parse(text: &str) -> Result<Self, String> {
        // Deserialization errors are reported by position only: serde_json's messages can quote
        // input, and a misplaced file might hold a private key.
        let file: File = serde_json::from_str(text).map_err(|e| {
            format!("is not a Google credential JSON file (invalid JSON at line {} column {})", e.line(), e.column())
        })?;
        match file.kind.as_deref() {
            Some("external_account") => {}
            Some(other) => {
                return Err(format!(
                    "holds credentials of type {other:?}; keyless needs an \"external_account\" (workload identity \
                     federation) configuration: create one with `gcloud iam workload-identity-pools create-cred-config`, \
                     or configure the [gcp] section directly"
                ));
            }
            None => return Err("has no \"type\"; expected \"external_account\"".to_owned()),
        }
        let source = credential_source(file.credential_source)?;
        let sts_endpoint =
            file.token_url
                .map(|url| {
                    url.trim_end_matches('/').strip_suffix("/v1/token").map(str::to_owned).ok_or_else(|| {
                        format!("token_url {url:?} does not end in /v1/token (the STS token exchange path)")
                    })
                })
                .transpose()?;
        let (iam_endpoint, service_account) = match file.service_account_impersonation_url {
            Some(url) => {
                let (endpoint, email) = split_impersonation_url(&url)?;
                (Some(endpoint), Some(email))
            }
            None => (None, None),
        };
        Ok(Self {
            audience: file.audience,
            subject_token_type: file.subject_token_type,
            sts_endpoint,
            service_account,
            iam_endpoint,
            token_lifetime: file
                .service_account_impersonation
                .and_then(|i| i.token_lifetime_seconds)
                .map(Duration::from_secs),
            token_file: source.file,
            url_source: source.url,
            executable: source.executable,
            universe_domain: file.universe_domain,
        })
    }
}

/// Exactly one of `file`, `url`, `executable` (google-auth: "Ambiguous credential_source").
#[derive(Default)]
struct Sourced {
    file: Option<PathBuf>,
    url: Option<keyless_core::source::UrlSpec>,
    executable: Option<Executable>,
}

fn credential_source(source: Option<CredentialSource>) -> Result<Sourced, String> {
    let Some(source) = source else {
        return Err("has no credential_source: keyless needs its file, url or executable".to_owned());
    };
    let kinds = [source.file.is_some(), source.url.is_some(), source.executable.is_some()];
    match kinds.iter().filter(|k| **k).count() {
        1 => {}
        0 => {
            return Err("credential_source has none of \"file\", \"url\", \"executable\": AWS-sourced \
                        credentials are not supported"
                .to_owned());
        }
        _ => return Err("credential_source is ambiguous: give exactly one of \"file\", \"url\", \"executable\"".into()),
    }
    let format = token_format(source.format)?;
    if let Some(file) = source.file {
        if format != keyless_core::source::TokenFormat::Text {
            return Err("credential_source.format.type is \"json\": keyless reads a token file as text (a projected \
                        token is a bare JWT); remove the format or set it to \"text\""
                .to_owned());
        }
        return Ok(Sourced { file: Some(file), ..Sourced::default() });
    }
    if let Some(url) = source.url {
        let spec =
            keyless_core::source::UrlSpec { url, headers: source.headers.into_iter().collect(), format, ca_file: None };
        spec.validate().map_err(|e| format!("credential_source.url: {e}"))?;
        return Ok(Sourced { url: Some(spec), ..Sourced::default() });
    }
    let executable = source.executable.ok_or("credential_source has no executable")?;
    let command: Vec<String> =
        executable.command.as_deref().unwrap_or_default().split_whitespace().map(str::to_owned).collect();
    if command.is_empty() {
        return Err("credential_source.executable.command is missing or empty".to_owned());
    }
    let millis = executable.timeout_millis.unwrap_or(EXECUTABLE_DEFAULT_TIMEOUT_MILLIS);
    if !EXECUTABLE_TIMEOUT_MILLIS.contains(&millis) {
        return Err(format!("credential_source.executable.timeout_millis {millis} is outside 5000..=120000"));
    }
    Ok(Sourced {
        executable: Some(Executable { command, timeout: Duration::from_millis(millis) }),
        ..Sourced::default()
    })
}

fn token_format(format: Option<SourceFormat>) -> Result<keyless_core::source::TokenFormat, String> {
    let Some(format) = format else {
        return Ok(keyless_core::source::TokenFormat::Text);
    };
    match (format.kind.as_deref(), format.subject_token_field_name) {
        (None | Some("text"), _) => Ok(keyless_core::source::TokenFormat::Text),
        (Some("json"), Some(field)) if !field.is_empty() => Ok(keyless_core::source::TokenFormat::Json { field }),
        (Some("json"), _) => Err("credential_source.format.type is \"json\" without subject_token_field_name".into()),
        (Some(other), _) => Err(format!("credential_source.format.type {other:?} is neither \"text\" nor \"json\"")),
    }
}

/// `https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/EMAIL:generateAccessToken`
/// -> (`https://iamcredentials.googleapis.com`, `EMAIL`).
fn split_impersonation_url(url: &str) -> Result<(String, String), String> {
    let malformed = || {
        format!(
            "service_account_impersonation_url {url:?} is not of the form \
             https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/EMAIL:generateAccessToken"
        )
    };
    let (endpoint, rest) = url.split_once("/v1/projects/").ok_or_else(malformed)?;
    let (_, account) = rest.split_once("/serviceAccounts/").ok_or_else(malformed)?;
    let email = account.strip_suffix(":generateAccessToken").ok_or_else(malformed)?;
    let email = percent_encoding::percent_decode_str(email).decode_utf8().map_err(|_| malformed())?;
    if endpoint.is_empty() || email.is_empty() {
        return Err(malformed());
    }
    Ok((endpoint.to_owned(), email.into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"{
      "universe_domain": "googleapis.com",
      "type": "external_account",
      "audience": "//iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/pool/providers/k8s",
      "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
      "token_url": "https://sts.googleapis.com/v1/token",
      "service_account_impersonation_url": "https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/app@proj.iam.gserviceaccount.com:generateAccessToken",
      "service_account_impersonation": {"token_lifetime_seconds": 1800},
      "credential_source": {"file": "/var/run/secrets/tokens/gcp-token", "format": {"type": "text"}}
    }"#;

    #[test]
    fn reads_every_setting_of_a_gcloud_credential_configuration() {
        let account = ExternalAccount::parse(FILE).expect("valid file");
        assert_eq!(
            account,
            ExternalAccount {
                audience: Some(
                    "//iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/pool/providers/k8s"
                        .to_owned()
                ),
                subject_token_type: Some("urn:ietf:params:oauth:token-type:jwt".to_owned()),
                sts_endpoint: Some("https://sts.googleapis.com".to_owned()),
                service_account: Some("app@proj.iam.gserviceaccount.com".to_owned()),
                iam_endpoint: Some("https://iamcredentials.googleapis.com".to_owned()),
                token_lifetime: Some(Duration::from_secs(1800)),
                token_file: Some(PathBuf::from("/var/run/secrets/tokens/gcp-token")),
                url_source: None,
                executable: None,
                universe_domain: Some("googleapis.com".to_owned()),
            }
        );
    }

    #[test]
    fn names_the_credential_type_it_cannot_use() {
        let err = ExternalAccount::parse(r#"{"type":"service_account","private_key":"-----BEGIN"}"#)
            .expect_err("service account keys are not federation");
        assert!(err.contains("\"service_account\""), "{err}");
        assert!(!err.contains("BEGIN"));
    }

    #[test]
    fn invalid_json_errors_do_not_quote_the_file() {
        let err =
            ExternalAccount::parse(r#"{"type": "external_account", "secret-ish" nope}"#).expect_err("invalid JSON");
        assert!(!err.contains("secret-ish"), "{err}");
    }

    fn with_source(source: &str) -> Result<ExternalAccount, String> {
        ExternalAccount::parse(&FILE.replace(
            r#""credential_source": {"file": "/var/run/secrets/tokens/gcp-token", "format": {"type": "text"}}"#,
            &format!(r#""credential_source": {source}"#),
        ))
    }

    #[test]
    fn url_and_executable_sources_map_onto_keyless_sources() {
        let url = with_source(
            r#"{"url": "http://169.254.169.254/metadata/identity/oauth2/token?resource=x", "headers": {"Metadata": "True"},
                "format": {"type": "json", "subject_token_field_name": "access_token"}}"#,
        )
        .expect("url-sourced");
        let spec = url.url_source.expect("a URL source");
        assert_eq!(spec.headers, [("Metadata".to_owned(), "True".to_owned())]);
        assert_eq!(spec.format, keyless_core::source::TokenFormat::Json { field: "access_token".into() });
        assert!(url.token_file.is_none());
        let exec = with_source(r#"{"executable": {"command": "/usr/bin/get-token --aud x", "timeout_millis": 5000}}"#)
            .expect("executable-sourced");
        let exec = exec.executable.expect("an executable");
        assert_eq!(exec.command, ["/usr/bin/get-token", "--aud", "x"]);
        assert_eq!(exec.timeout, Duration::from_millis(5000));
    }

    #[test]
    fn refuses_ambiguous_or_malformed_credential_sources() {
        let both = with_source(r#"{"file": "/t", "url": "https://h/t"}"#).expect_err("ambiguous");
        assert!(both.contains("ambiguous"), "{both}");
        assert!(with_source(r#"{"url": "https://h/t", "format": {"type": "json"}}"#).is_err());
        assert!(with_source(r#"{"executable": {"command": "x", "timeout_millis": 1000}}"#).is_err());
        let json_file = FILE.replace(r#"{"type": "text"}"#, r#"{"type": "json", "subject_token_field_name": "t"}"#);
        assert!(ExternalAccount::parse(&json_file).is_err());
    }
}
