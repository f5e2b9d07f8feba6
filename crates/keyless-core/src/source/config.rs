//! The `source` table of a cloud section: which [`SourceSpec`] a provider takes its subject token
//! from (docs/configuration.md, "Subject-token sources"). Shared by the three adapters so the keys
//! and their checks are the same everywhere.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::SourceSpec;
use super::command::{ALLOW_COMMANDS_VAR, CommandFormat, CommandSpec, DEFAULT_TIMEOUT};
use super::github_actions::ActionsEndpoint;
use super::url_origin::{TokenFormat, UrlSpec};

/// `[<cloud>.source]`, tagged by `type`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum SourceConfig {
    /// `type = "file"`, `path = "..."`.
    File { path: PathBuf },
    /// `type = "github-actions"`; `audience` defaults to the cloud's (sts.amazonaws.com,
    /// api://AzureADTokenExchange, the pool provider's `//iam.googleapis.com/...`).
    GithubActions {
        #[serde(default)]
        audience: Option<String>,
        #[serde(default)]
        request_url: Option<String>,
        #[serde(default)]
        request_token_file: Option<PathBuf>,
        #[serde(default)]
        ca_file: Option<PathBuf>,
    },
    /// `type = "env"`, `var = "NAME"`.
    Env { var: String },
    /// `type = "url"`, `url`, optional `headers`, `format` (`text` or `json` with `field`), `ca_file`.
    Url {
        url: String,
        #[serde(default)]
        headers: Headers,
        #[serde(default)]
        format: FormatName,
        #[serde(default)]
        field: Option<String>,
        #[serde(default)]
        ca_file: Option<PathBuf>,
    },
    /// `type = "command"`, `command = ["prog", "arg"]`, `format` (`text`, `json` with `field`, or
    /// `google-executable`), `timeout` (default 30s). Needs `KEYLESS_ALLOW_COMMAND_SOURCES=1`.
    Command {
        command: Vec<String>,
        #[serde(default)]
        format: FormatName,
        #[serde(default)]
        field: Option<String>,
        #[serde(default)]
        timeout: Option<String>,
    },
}

/// Header names and (secret) values; `Debug` shows the names only.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Headers(BTreeMap<String, String>);

impl std::fmt::Debug for Headers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.keys()).finish()
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FormatName {
    #[default]
    Text,
    Json,
    GoogleExecutable,
}

/// What a cloud supplies to a source left unspecified.
#[derive(Debug, Clone)]
pub struct SourceDefaults {
    /// The audience the cloud expects of a minted token (GitHub Actions).
    pub audience: String,
}

impl SourceConfig {
    /// The spec, validated. Errors name the key within the table and the fix (`path is empty`);
    /// the caller names the table (`aws.source: path is empty`).
    pub fn resolve(
        &self,
        defaults: &SourceDefaults,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<SourceSpec, String> {
        match self {
            Self::File { path } if path.as_os_str().is_empty() => Err("path is empty".to_owned()),
            Self::File { path } => Ok(SourceSpec::File(path.clone())),
            Self::GithubActions { audience, request_url, request_token_file, ca_file } => {
                let audience = audience.clone().unwrap_or_else(|| defaults.audience.clone());
                let endpoint = ActionsEndpoint {
                    request_url: request_url.clone(),
                    request_token_file: request_token_file.clone(),
                    ca_file: ca_file.clone(),
                };
                Ok(SourceSpec::GithubActions { audience, endpoint })
            }
            Self::Env { var } if var.trim().is_empty() => Err("var is empty: name the variable".to_owned()),
            Self::Env { var } => Ok(SourceSpec::Env(var.trim().to_owned())),
            Self::Url { url, headers, format, field, ca_file } => {
                let format = token_format(*format, field.as_deref())?;
                let spec = UrlSpec {
                    url: url.clone(),
                    headers: headers.0.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                    format,
                    ca_file: ca_file.clone(),
                };
                spec.validate()?;
                Ok(SourceSpec::Url(spec))
            }
            Self::Command { command, format, field, timeout } => {
                require_command_opt_in("type = \"command\"", env, ALLOW_COMMANDS_VAR)?;
                let format = match format {
                    FormatName::GoogleExecutable => CommandFormat::GoogleExecutable,
                    other => CommandFormat::Token(token_format(*other, field.as_deref())?),
                };
                let timeout = match timeout {
                    Some(t) => humantime::parse_duration(t).map_err(|e| format!("timeout {t:?}: {e}"))?,
                    None => DEFAULT_TIMEOUT,
                };
                let spec = CommandSpec { argv: command.clone(), timeout, format, env: Vec::new() };
                spec.validate()?;
                Ok(SourceSpec::Command(spec))
            }
        }
    }
}

/// Running a program is opt-in: `var` must be `1`. `what` names the setting that would run one.
pub fn require_command_opt_in(what: &str, env: &dyn Fn(&str) -> Option<String>, var: &str) -> Result<(), String> {
    if env(var).as_deref().map(str::trim) == Some("1") {
        return Ok(());
    }
    Err(format!(
        "{what} runs a program to get the subject token, which keyless does only when {var}=1 is set in its \
         environment (an explicit opt-in: the configuration then decides what keyless executes)"
    ))
}

fn token_format(format: FormatName, field: Option<&str>) -> Result<TokenFormat, String> {
    match (format, field) {
        (FormatName::Text, None) => Ok(TokenFormat::Text),
        (FormatName::Text, Some(_)) => Err("field is set but format is text: set format = \"json\"".to_owned()),
        (FormatName::Json, Some(f)) if !f.is_empty() => Ok(TokenFormat::Json { field: f.to_owned() }),
        (FormatName::Json, _) => Err("format = \"json\" needs field, the JSON field holding the token".to_owned()),
        (FormatName::GoogleExecutable, _) => {
            Err("format = \"google-executable\" is for command sources only".to_owned())
        }
    }
}

/// `GITHUB_ACTIONS=true`: inside a GitHub Actions job, where a provider with no configured source
/// takes its tokens from the job's OIDC endpoint.
pub fn in_github_actions(env: &dyn Fn(&str) -> Option<String>) -> bool {
    env("GITHUB_ACTIONS").as_deref() == Some("true")
}

/// The source of a provider whose section names neither a `source` nor a token file: GitHub
/// Actions inside a job, else `None` (the caller's "token_file is missing" error).
pub fn detected(defaults: &SourceDefaults, env: &dyn Fn(&str) -> Option<String>) -> Option<SourceSpec> {
    in_github_actions(env).then(|| SourceSpec::GithubActions {
        audience: defaults.audience.clone(),
        endpoint: ActionsEndpoint::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_table: serde_json::Value) -> Result<SourceSpec, String> {
        let config: SourceConfig = serde_json::from_value(toml_table).map_err(|e| e.to_string())?;
        let defaults = SourceDefaults { audience: "sts.amazonaws.com".into() };
        config.resolve(&defaults, &|k| (k == ALLOW_COMMANDS_VAR).then(|| "1".to_owned()))
    }

    #[test]
    fn each_type_resolves_with_the_clouds_defaults() {
        let gh = parse(serde_json::json!({"type": "github-actions"})).expect("github-actions");
        assert_eq!(gh.to_string(), "github-actions audience=sts.amazonaws.com");
        let env = parse(serde_json::json!({"type": "env", "var": "AWS_ID_TOKEN"})).expect("env");
        assert_eq!(env, SourceSpec::Env("AWS_ID_TOKEN".into()));
        let url = parse(
            serde_json::json!({"type": "url", "url": "https://h.example/t?k=s", "format": "json", "field": "value"}),
        )
        .expect("url");
        assert_eq!(url.to_string(), "url https://h.example/t");
        let cmd =
            parse(serde_json::json!({"type": "command", "command": ["/bin/tok", "-a"], "timeout": "5s"})).expect("cmd");
        assert_eq!(cmd.to_string(), "command /bin/tok");
    }

    #[test]
    fn mistakes_name_the_key_and_the_fix() {
        let json_without_field = parse(serde_json::json!({"type": "url", "url": "https://h/t", "format": "json"}));
        assert!(json_without_field.expect_err("no field").contains("needs field"));
        let plain_http = parse(serde_json::json!({"type": "url", "url": "http://10.1.1.1/t"}));
        assert!(plain_http.expect_err("http").contains("plain http"));
        let unknown = parse(serde_json::json!({"type": "env", "var": "X", "audience": "a"}));
        assert!(unknown.expect_err("unknown key").contains("audience"));
        let config: SourceConfig =
            serde_json::from_value(serde_json::json!({"type": "command", "command": ["x"]})).expect("a command table");
        let defaults = SourceDefaults { audience: String::new() };
        let err = config.resolve(&defaults, &|_| None).expect_err("no opt-in");
        assert!(err.contains(ALLOW_COMMANDS_VAR), "{err}");
    }

    #[test]
    fn github_actions_is_detected_only_inside_a_job() {
        let defaults = SourceDefaults { audience: "api://AzureADTokenExchange".into() };
        assert!(detected(&defaults, &|_| None).is_none());
        let job = |k: &str| (k == "GITHUB_ACTIONS").then(|| "true".to_owned());
        assert_eq!(
            detected(&defaults, &job).map(|s| s.to_string()).as_deref(),
            Some("github-actions audience=api://AzureADTokenExchange")
        );
    }
}
