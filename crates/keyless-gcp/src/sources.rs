//! Where the GCP provider's subject token comes from: `[gcp.source]`, else `token_file`, else the
//! `external_account` file's `credential_source` (file, url or executable: docs/protocols.md 6.3),
//! else GitHub Actions inside a job. The GitHub Actions audience defaults to the pool provider, as
//! google-github-actions/auth does.

use keyless_core::SourceSpec;
use keyless_core::source::{
    ALLOW_COMMANDS_VAR, CommandFormat, CommandSpec, GOOGLE_ALLOW_EXECUTABLES_VAR, SourceDefaults, detected,
    require_command_opt_in,
};

use crate::ConfigError;
use crate::config::Config;
use crate::external_account::{Executable, ExternalAccount};

pub(crate) fn token_source(
    config: &Config,
    file: &ExternalAccount,
    audience: &str,
    subject_token_type: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<SourceSpec, ConfigError> {
    let defaults = SourceDefaults { audience: audience.trim().to_owned() };
    if let Some(source) = &config.source {
        return source.resolve(&defaults, env).map_err(|m| ConfigError::invalid("gcp.source", m));
    }
    if let Some(path) = config.token_file.clone().or(file.token_file.clone()) {
        return Ok(SourceSpec::File(path));
    }
    if let Some(url) = &file.url_source {
        return Ok(SourceSpec::Url(url.clone()));
    }
    if let Some(executable) = &file.executable {
        let email = config.service_account.clone().or(file.service_account.clone());
        return executable_source(executable, &defaults.audience, subject_token_type, email, env);
    }
    detected(&defaults, env).ok_or(ConfigError::Missing {
        key: "gcp.token_file",
        fix: "set it to the projected service-account token whose audience is the pool provider, configure \
              [gcp.source] (GitHub Actions, an environment variable, a URL, a command), or give a credentials_file \
              whose credential_source names a file, url or executable",
    })
}

/// The credential file's executable as a command source, with the variables google-auth gives it.
fn executable_source(
    executable: &Executable,
    audience: &str,
    subject_token_type: &str,
    impersonated: Option<String>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<SourceSpec, ConfigError> {
    // Google's own gate, or keyless's.
    require_command_opt_in("credential_source.executable", env, GOOGLE_ALLOW_EXECUTABLES_VAR)
        .or_else(|e| require_command_opt_in("", env, ALLOW_COMMANDS_VAR).map_err(|_| e))
        .map_err(|m| ConfigError::invalid("gcp.credentials_file", m))?;
    let mut vars = vec![
        ("GOOGLE_EXTERNAL_ACCOUNT_AUDIENCE".to_owned(), audience.to_owned()),
        ("GOOGLE_EXTERNAL_ACCOUNT_TOKEN_TYPE".to_owned(), subject_token_type.to_owned()),
        ("GOOGLE_EXTERNAL_ACCOUNT_INTERACTIVE".to_owned(), "0".to_owned()),
    ];
    if let Some(email) = impersonated {
        vars.push(("GOOGLE_EXTERNAL_ACCOUNT_IMPERSONATED_EMAIL".to_owned(), email));
    }
    Ok(SourceSpec::Command(CommandSpec {
        argv: executable.command.clone(),
        timeout: executable.timeout,
        format: CommandFormat::GoogleExecutable,
        env: vars,
    }))
}
