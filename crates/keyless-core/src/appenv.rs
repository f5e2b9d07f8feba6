//! The environment an app needs to find keyless (`keyless dev` writes it; docs show it).

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
