//! The environment an app needs to find keyless (`keyless dev` writes it; docs show it), and
//! what a program keyless starts must not inherit ([`remove_keyless_settings`]).

use std::fmt;

use crate::Secret;

/// One `KEY=VALUE` line for the app. Secret values (authorization tokens, identity headers) are
/// written to the env file but redacted wherever the variable is displayed.
#[derive(Clone, PartialEq, Eq)]
pub struct AppEnvVar {
    pub name: String,
    pub value: AppEnvValue,
}

#[derive(Clone, PartialEq, Eq, Debug)]
pub enum AppEnvValue {
    Plain(String),
    Secret(Secret<String>),
}

impl AppEnvVar {
    pub fn plain(name: impl Into<String>, value: impl Into<String>) -> Self {
        Self { name: name.into(), value: AppEnvValue::Plain(value.into()) }
    }

    pub fn secret(name: impl Into<String>, value: Secret<String>) -> Self {
        Self { name: name.into(), value: AppEnvValue::Secret(value) }
    }

    /// The value as written to the env file (the one place a secret value is meant to go).
    pub fn file_value(&self) -> &str {
        match &self.value {
            AppEnvValue::Plain(v) => v,
            AppEnvValue::Secret(s) => s.expose(),
        }
    }
}

impl fmt::Display for AppEnvVar {
    /// `KEY=VALUE`, with secret values redacted.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            AppEnvValue::Plain(v) => write!(f, "{}={v}", self.name),
            AppEnvValue::Secret(_) => write!(f, "{}=<redacted: see the env file>", self.name),
        }
    }
}

impl fmt::Debug for AppEnvVar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The prefix of keyless's own settings: `KEYLESS_CONFIG`, `KEYLESS_<KEY>`,
/// `KEYLESS_<SECTION>__<KEY>`.
const KEYLESS_PREFIX: &str = "KEYLESS_";

/// Keeps every `KEYLESS_*` variable of this process from `command` (a command token source,
/// `keyless exec`'s command). keyless's settings configure keyless, and some are secrets
/// (`KEYLESS_AWS__AUTHORIZATION_TOKEN`, `KEYLESS_AZURE__IDENTITY_HEADER`); what a program needs
/// from keyless it gets through each cloud's native variables. The whole prefix, so a setting
/// added later does not leak by default.
pub fn remove_keyless_settings(command: &mut tokio::process::Command) {
    for (name, _) in std::env::vars_os() {
        if name.as_encoded_bytes().starts_with(KEYLESS_PREFIX.as_bytes()) {
            command.env_remove(name);
        }
    }
}
