//! Configuration: flags, then the TOML file, then `KEYLESS_*` env vars, then the clouds' own env
//! vars (the interface, README and docs/configuration.md), earlier sources winning. Unknown keys are errors that name the key.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use keyless_core::{CachePolicy, WatchOptions};
use serde::Deserialize;

use crate::providers::Sections;

/// Top-level keys; a `KEYLESS_<KEY>` env var sets one, `KEYLESS_<SECTION>__<KEY>` a section's key.
pub(crate) const TOP_LEVEL_KEYS: &[&str] =
    &["listen", "admin_listen", "allow_non_loopback", "listen_uid_check", "log", "log_format"];
/// The sections besides the providers' own (`crate::providers::names`).
pub(crate) const SECTIONS: &[&str] = &["cache", "token"];

/// Bounds of `cache.adhoc_burst` and `cache.adhoc_interval`. A burst beyond this many exchanges
/// is no limit any cloud's quota would notice; an interval beyond a day would let no refresh of
/// an unconfigured key through before it expires.
const MAX_ADHOC_BURST: u32 = 10_000;
const MAX_ADHOC_INTERVAL: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where credentials are served. Loopback only unless `allow_non_loopback`.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// `/healthz`, `/readyz`, `/metrics` (on all interfaces: kubelet probes use the pod IP).
    #[serde(default = "default_admin_listen")]
    pub admin_listen: SocketAddr,
    #[serde(default)]
    pub allow_non_loopback: bool,
    /// Serve credentials only to processes of keyless's own user; unset: on outside Kubernetes
    /// ([`Config::uid_check`]).
    pub listen_uid_check: Option<bool>,
    /// Log filter (`info`, `keyless=debug`...); `RUST_LOG` is used when this is not set.
    pub log: Option<String>,
    #[serde(default)]
    pub log_format: LogFormat,
    #[serde(default)]
    pub cache: CacheSection,
    #[serde(default)]
    pub token: TokenSection,
    /// The keys only a `KEYLESS_*` variable set, to name the variable in an error.
    #[serde(skip)]
    pub env_keys: EnvKeys,
    // The provider sections (`[aws]`, `[gcp]`, `[azure]`) are split off by `load` and
    // deserialized by each provider (`crate::providers`).
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(try_from = "String")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Parsed by hand: serde's own error for an unknown variant reads "enum LogFormat does not have
/// variant constructor yaml" through the config crate.
impl TryFrom<String> for LogFormat {
    type Error = String;

    fn try_from(value: String) -> Result<Self, String> {
        match value.as_str() {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(format!(
                "log_format = {:?}: must be \"text\" (the default) or \"json\" (one JSON object per line)",
                keyless_core::printable::printable(other, 64)
            )),
        }
    }
}

/// `[cache]`: refresh and retry timing shared by every provider.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSection {
    #[serde(default = "default_refresh_at")]
    pub refresh_at: f64,
    /// Refreshes spread over this fraction of the lifetime before `refresh_at` (docs/fleet.md).
    #[serde(default = "default_refresh_jitter")]
    pub refresh_jitter: f64,
    #[serde(default = "default_retry_min", with = "humantime_serde")]
    pub retry_min: Duration,
    #[serde(default = "default_retry_max", with = "humantime_serde")]
    pub retry_max: Duration,
    /// The scale of the wait after a throttling answer (docs/fleet.md). Unset: a fleet's (60 s)
    /// for `serve` and `node`, a single client's ([`ONE_CLIENT_THROTTLE_RETRY`]) for `exec`,
    /// `token`, `dev`, `check` and `credential-process`.
    #[serde(default, with = "humantime_serde::option")]
    pub throttle_retry: Option<Duration>,
    #[serde(default = "default_exchange_timeout", with = "humantime_serde")]
    pub exchange_timeout: Duration,
    #[serde(default = "default_request_wait", with = "humantime_serde")]
    pub request_wait: Duration,
    #[serde(default = "default_max_entries")]
    pub max_entries: usize,
    /// Exchanges of keys nobody configured that may happen at once (0: none at all).
    #[serde(default = "default_adhoc_burst")]
    pub adhoc_burst: u32,
    /// After the burst, one more such exchange per this interval.
    #[serde(default = "default_adhoc_interval", with = "humantime_serde")]
    pub adhoc_interval: Duration,
}

/// `[token]`: how projected token files are watched.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenSection {
    #[serde(default = "default_poll_interval", with = "humantime_serde")]
    pub poll_interval: Duration,
    #[serde(default = "default_debounce", with = "humantime_serde")]
    pub debounce: Duration,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9811))
}
fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 9812))
}
fn default_refresh_at() -> f64 {
    CachePolicy::default().refresh_at
}
fn default_refresh_jitter() -> f64 {
    CachePolicy::default().refresh_jitter
}
fn default_retry_min() -> Duration {
    CachePolicy::default().retry_min
}
fn default_retry_max() -> Duration {
    CachePolicy::default().retry_max
}
/// The throttled-retry scale of a command that is one client of the token services, not one of a
/// fleet's pods (`exec`, `token`, `dev`, `check`, `credential-process`): a laptop or a CI job
/// throttled at its start waits seconds, not the minute a fleet's rollout needs (which would
/// outlast exec's 60 s ready timeout).
pub const ONE_CLIENT_THROTTLE_RETRY: Duration = Duration::from_secs(2);
fn default_exchange_timeout() -> Duration {
    CachePolicy::default().exchange_timeout
}
fn default_request_wait() -> Duration {
    CachePolicy::default().request_wait
}
fn default_max_entries() -> usize {
    CachePolicy::default().max_entries
}
fn default_adhoc_burst() -> u32 {
    CachePolicy::default().adhoc_burst
}
fn default_adhoc_interval() -> Duration {
    CachePolicy::default().adhoc_interval
}
fn default_poll_interval() -> Duration {
    WatchOptions::default().poll_interval
}
fn default_debounce() -> Duration {
    WatchOptions::default().debounce
}

impl Default for CacheSection {
    fn default() -> Self {
        Self {
            refresh_at: default_refresh_at(),
            refresh_jitter: default_refresh_jitter(),
            retry_min: default_retry_min(),
            retry_max: default_retry_max(),
            throttle_retry: None,
            exchange_timeout: default_exchange_timeout(),
            request_wait: default_request_wait(),
            max_entries: default_max_entries(),
            adhoc_burst: default_adhoc_burst(),
            adhoc_interval: default_adhoc_interval(),
        }
    }
}

impl Default for TokenSection {
    fn default() -> Self {
        Self { poll_interval: default_poll_interval(), debounce: default_debounce() }
    }
}

/// The allowed ranges (inclusive) of the `[cache]` and `[token]` numbers (docs/configuration.md).
const RETRY: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(3600));
const EXCHANGE_TIMEOUT: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(300));
const REQUEST_WAIT: (Duration, Duration) = (Duration::ZERO, Duration::from_secs(300));
const POLL_INTERVAL: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(3600));
const DEBOUNCE: (Duration, Duration) = (Duration::ZERO, Duration::from_secs(10));
const MAX_ENTRIES: std::ops::RangeInclusive<usize> = 1..=10_000;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
    #[error("{key} = {value}: {reason}")]
    Value { key: &'static str, value: String, reason: String },
}

/// Command-line overrides (the highest-precedence source).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub admin_listen: Option<SocketAddr>,
}

/// The `KEYLESS_*` variables that are settings. `KEYLESS_DEV_*` are `keyless dev`'s env file for
/// apps (no setting or section is named `dev`): ignored without a word, so a shell that sourced
/// the env file runs keyless without notes. Others are not ours to reject: they are skipped with
/// a warning.
/// The prefix (after `KEYLESS_`) of the variables `keyless dev` writes for apps.
pub const DEV_APP_PREFIX: &str = "DEV_";

pub fn settings_from_env(env: &HashMap<String, String>) -> (HashMap<String, String>, Vec<String>) {
    let mut settings = HashMap::new();
    let mut skipped = Vec::new();
    for (name, value) in env {
        let Some(rest) = name.strip_prefix("KEYLESS_") else { continue };
        if rest == "CONFIG" || rest.starts_with(DEV_APP_PREFIX) {
            continue;
        }
        let key = rest.to_ascii_lowercase();
        let known = match key.split_once("__") {
            Some((section, _)) => SECTIONS.iter().copied().chain(crate::providers::names()).any(|s| s == section),
            None => TOP_LEVEL_KEYS.contains(&key.as_str()),
        };
        if known {
            settings.insert(name.clone(), value.clone());
        } else {
            skipped.push(name.clone());
        }
    }
    skipped.sort();
    (settings, skipped)
}

/// The settings a `KEYLESS_*` variable gave and the file did not (the file wins): an error about
/// one names the variable, since the key appears in no file the user could look at.
#[derive(Debug, Default, Clone)]
pub struct EnvKeys(Vec<(String, String)>);

impl EnvKeys {
    fn new(env_settings: &HashMap<String, String>, file: Option<&toml::Table>) -> Self {
        let in_file = |dotted: &str| {
            let mut table = file;
            let mut parts = dotted.split('.').peekable();
            while let Some(part) = parts.next() {
                let Some(value) = table.and_then(|t| t.get(part)) else { return false };
                if parts.peek().is_none() {
                    return true;
                }
                table = value.as_table();
            }
            false
        };
        let mut keys: Vec<(String, String)> = env_settings
            .keys()
            .filter_map(|var| {
                let dotted = var.strip_prefix("KEYLESS_")?.to_ascii_lowercase().replace("__", ".");
                (!in_file(&dotted)).then(|| (dotted, var.clone()))
            })
            .collect();
        // Longest first: `cache.retry_max` is named before a top-level key it contains.
        keys.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        Self(keys)
    }

    /// `message` with the variable named when it is about a key only a variable set.
    pub fn name_in(&self, message: &str) -> String {
        self.name_in_section(None, message)
    }

    /// [`Self::name_in`] for an error of section `section` (a provider's), which names its keys
    /// without the section (serde's "unknown field `session_duration`", "for key `duration`").
    pub fn name_in_section(&self, section: Option<&str>, message: &str) -> String {
        let in_section = |key: &str| {
            section
                .and_then(|s| key.strip_prefix(s))
                .and_then(|k| k.strip_prefix('.'))
                .is_some_and(|k| mentions(message, k))
        };
        let Some((_, var)) = self.0.iter().find(|(key, _)| mentions(message, key) || in_section(key)) else {
            return message.to_owned();
        };
        let message = message.replace(" in the environment", "");
        format!("{message} (set by the environment variable {var})")
    }
}

/// Whether `message` names `key` as a whole word (`log` is not in `log_format`).
fn mentions(message: &str, key: &str) -> bool {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '.';
    message.match_indices(key).any(|(at, _)| {
        let before = message[..at].chars().next_back();
        let after = message[at + key.len()..].chars().next();
        !before.is_some_and(word) && !after.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
    })
}

/// Loads the config: file (if any) over `KEYLESS_*` env settings. The provider sections are split
/// off, for each provider to deserialize its own; the rest is keyless's [`Config`], where an
/// unknown key (a misspelt section too) is an error naming it.
pub fn load(file: Option<&Path>, env_settings: HashMap<String, String>) -> Result<(Config, Sections), ConfigError> {
    let mut file_table = None;
    let env_for_keys = env_settings.clone();
    let mut builder = config::Config::builder().add_source(
        config::Environment::with_prefix("KEYLESS").prefix_separator("_").separator("__").source(Some(env_settings)),
    );
    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::File { path: path.to_owned(), reason: unreadable(&e) })?;
        // Parse with `toml` first: its errors carry the position.
        let table = toml::from_str::<toml::Table>(&text)
            .map_err(|e| ConfigError::File { path: path.to_owned(), reason: syntax_error(&text, &e) })?;
        file_table = Some(table);
        builder = builder.add_source(config::File::from_str(&text, config::FileFormat::Toml));
    }
    let env_keys = EnvKeys::new(&env_for_keys, file_table.as_ref());
    let invalid = |message: String| ConfigError::Invalid(env_keys.name_in(&message));
    let merged = builder.build().map_err(|e| invalid(e.to_string()))?;
    let mut table: config::Map<String, config::Value> =
        merged.try_deserialize().map_err(|e| invalid(explain(&e.to_string())))?;
    let mut sections = Sections { env_keys: env_keys.clone(), ..Sections::default() };
    for name in crate::providers::names() {
        if let Some(section) = table.remove(name) {
            sections.values.insert(name, section);
        }
    }
    let mut config: Config = config::Value::new(None, config::ValueKind::Table(table))
        .try_deserialize()
        .map_err(|e| invalid(explain(&top_level(&e.to_string()))))?;
    config.env_keys = env_keys;
    Ok((config, sections))
}

/// Why the config file could not be read, and what to do about it.
fn unreadable(e: &std::io::Error) -> String {
    let hint = match e.kind() {
        std::io::ErrorKind::NotFound => "pass an existing file with --config (or KEYLESS_CONFIG), or omit it",
        std::io::ErrorKind::PermissionDenied => {
            "keyless runs as a user that may not read it: make it readable to that user (in a pod: the \
             container's runAsUser, or a ConfigMap's defaultMode), or run keyless as a user that may"
        }
        std::io::ErrorKind::IsADirectory => "--config names a directory: name the TOML file in it",
        _ => "pass a readable TOML file with --config",
    };
    format!("{e} ({hint})")
}

/// A TOML syntax error by its position and, when it can be told, the key. Never the line itself
/// (the `toml` crate's `Display` quotes it): an unterminated `authorization_token` or
/// `identity_header` would put the secret in the error.
fn syntax_error(text: &str, error: &toml::de::Error) -> String {
    // The message says what was expected, not the text found.
    let message = error.message().lines().next().unwrap_or_default();
    let Some(at) = error.span().map(|span| span.start.min(text.len())) else {
        return format!("TOML syntax error: {message}");
    };
    let before = text.get(..at).unwrap_or_default();
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    // The line's key, only if everything before the line is valid TOML: then the line does not
    // start inside a string, and what precedes its `=` is a key, not part of a value.
    let key = Some(&text[..line_start])
        .filter(|prefix| toml::from_str::<toml::Table>(prefix).is_ok())
        .and_then(|_| text[line_start..].lines().next()?.split_once('='))
        .map(|(key, _)| key.trim())
        .filter(|key| {
            !key.is_empty() && key.len() <= 64 && key.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b))
        });
    // The section: the last of keyless's section headers before the line (no other name is shown).
    let section = before.lines().rev().find_map(|l| l.trim().strip_prefix('[')?.strip_suffix(']')).map(str::trim);
    let known = |s: &str| SECTIONS.iter().copied().chain(crate::providers::names()).find(|known| *known == s);
    let key = match (key, section.and_then(known)) {
        (Some(key), Some(section)) => format!(" (key {section}.{key})"),
        (Some(key), None) if section.is_none() => format!(" (key {key})"),
        _ => String::new(),
    };
    format!(
        "TOML syntax error at line {line}, column {column}{key}: {message} (the line is not shown: it may hold a secret)"
    )
}

/// serde's "unknown field `x`, expected one of ..." at the top level lists only [`Config`]'s own
/// fields: the provider sections were split off before. This lists every key and section.
fn top_level(message: &str) -> String {
    let Some(rest) = message.strip_prefix("unknown field `") else { return message.to_owned() };
    let Some((name, list)) = rest.split_once("`, expected one of ") else { return message.to_owned() };
    if !list.contains("`admin_listen`") {
        return message.to_owned();
    }
    let sections: Vec<String> =
        SECTIONS.iter().copied().chain(crate::providers::names()).map(|s| format!("[{s}]")).collect();
    format!(
        "unknown field `{}`: the top level has the keys {} and the sections {}",
        keyless_core::printable::printable(name, 64),
        TOP_LEVEL_KEYS.join(", "),
        sections.join(", ")
    )
}

/// Turns serde's wording into one that says where to look.
pub(crate) fn explain(message: &str) -> String {
    if message.contains("unknown field") {
        format!("{message} (check the spelling; docs/configuration.md lists every key)")
    } else {
        message.to_owned()
    }
}

impl Config {
    /// Applies flags and checks what serde cannot; an error about a key only a `KEYLESS_*`
    /// variable set names the variable.
    pub fn finish(mut self, overrides: &Overrides) -> Result<Self, ConfigError> {
        let env_keys = std::mem::take(&mut self.env_keys);
        match self.checked(overrides) {
            Ok(mut config) => {
                config.env_keys = env_keys;
                Ok(config)
            }
            Err(ConfigError::Value { key, value, reason }) => {
                let reason = match env_keys.0.iter().find(|(k, _)| k == key) {
                    Some((_, var)) => format!("{reason} (set by the environment variable {var})"),
                    None => reason,
                };
                Err(ConfigError::Value { key, value, reason })
            }
            Err(other) => Err(other),
        }
    }

    fn checked(mut self, overrides: &Overrides) -> Result<Self, ConfigError> {
        if let Some(listen) = overrides.listen {
            self.listen = listen;
        }
        if let Some(admin) = overrides.admin_listen {
            self.admin_listen = admin;
        }
        if !self.listen.ip().is_loopback() && !self.allow_non_loopback {
            return Err(ConfigError::Value {
                key: "listen",
                value: self.listen.to_string(),
                reason: "not a loopback address: credentials would be served to anything that can reach this \
                         address. Use 127.0.0.1 (the pod's containers share it), or set allow_non_loopback = true \
                         if you really mean it"
                    .to_owned(),
            });
        }
        let c = &self.cache;
        if !(c.refresh_at > 0.0 && c.refresh_at < 1.0) {
            return Err(ConfigError::Value {
                key: "cache.refresh_at",
                value: c.refresh_at.to_string(),
                reason: "must be a fraction of the credential lifetime between 0 and 1 (default 0.5)".to_owned(),
            });
        }
        check_refresh_jitter(c)?;
        // A timer computes `now + value`: an absurd duration would overflow and abort keyless.
        // Within the bounds, every value still means something for a sidecar.
        let t = &self.token;
        for (key, value, (min, max)) in [
            ("cache.retry_max", c.retry_max, RETRY),
            ("cache.retry_min", c.retry_min, (RETRY.0, RETRY.1.min(c.retry_max))),
            ("cache.throttle_retry", c.throttle_retry.unwrap_or(RETRY.0), RETRY),
            ("cache.exchange_timeout", c.exchange_timeout, EXCHANGE_TIMEOUT),
            ("cache.request_wait", c.request_wait, REQUEST_WAIT),
            ("token.poll_interval", t.poll_interval, POLL_INTERVAL),
            ("token.debounce", t.debounce, DEBOUNCE),
        ] {
            if !(min..=max).contains(&value) {
                let at_most_retry_max = if key == "cache.retry_min" { " (at most cache.retry_max)" } else { "" };
                return Err(ConfigError::Value {
                    key,
                    value: humantime::format_duration(value).to_string(),
                    reason: format!(
                        "must be between {} and {}{at_most_retry_max}",
                        humantime::format_duration(min),
                        humantime::format_duration(max)
                    ),
                });
            }
        }
        if !MAX_ENTRIES.contains(&c.max_entries) {
            return Err(ConfigError::Value {
                key: "cache.max_entries",
                value: c.max_entries.to_string(),
                reason: format!("must be between {} and {}", MAX_ENTRIES.start(), MAX_ENTRIES.end()),
            });
        }
        if c.adhoc_burst > MAX_ADHOC_BURST {
            return Err(ConfigError::Value {
                key: "cache.adhoc_burst",
                value: c.adhoc_burst.to_string(),
                reason: format!(
                    "must be at most {MAX_ADHOC_BURST} (0 exchanges only the configured keys; default {})",
                    default_adhoc_burst()
                ),
            });
        }
        if c.adhoc_interval.is_zero() || c.adhoc_interval > MAX_ADHOC_INTERVAL {
            return Err(ConfigError::Value {
                key: "cache.adhoc_interval",
                value: humantime::format_duration(c.adhoc_interval).to_string(),
                reason: format!(
                    "must be above zero and at most {} (default {})",
                    humantime::format_duration(MAX_ADHOC_INTERVAL),
                    humantime::format_duration(default_adhoc_interval())
                ),
            });
        }
        Ok(self)
    }

    /// Whether the credential listener serves only keyless's own user (`listen_uid_check`): as
    /// set, else on outside Kubernetes. In a pod (`KUBERNETES_SERVICE_HOST`, which the kubelet sets
    /// in every container) loopback is the pod's own and its containers may run as other users.
    pub fn uid_check(&self, env: &dyn Fn(&str) -> Option<String>) -> bool {
        self.listen_uid_check.unwrap_or_else(|| env("KUBERNETES_SERVICE_HOST").is_none())
    }

    pub fn cache_policy(&self) -> CachePolicy {
        let c = &self.cache;
        CachePolicy {
            refresh_at: c.refresh_at,
            refresh_jitter: c.refresh_jitter,
            rng_seed: None,
            retry_min: c.retry_min,
            retry_max: c.retry_max,
            throttle_retry: c.throttle_retry.unwrap_or(CachePolicy::default().throttle_retry),
            exchange_timeout: c.exchange_timeout,
            request_wait: c.request_wait,
            max_entries: c.max_entries,
            adhoc_burst: c.adhoc_burst,
            adhoc_interval: c.adhoc_interval,
        }
    }

    /// [`Self::cache_policy`] for a command that is one client, not a fleet's pod: throttled
    /// retries on a client's time scale unless `cache.throttle_retry` says otherwise.
    pub fn one_client_cache_policy(&self) -> CachePolicy {
        let throttle_retry = self.cache.throttle_retry.unwrap_or(ONE_CLIENT_THROTTLE_RETRY);
        CachePolicy { throttle_retry, ..self.cache_policy() }
    }

    pub fn watch_options(&self) -> WatchOptions {
        WatchOptions {
            poll_interval: self.token.poll_interval,
            debounce: self.token.debounce,
            ..WatchOptions::default()
        }
    }
}

/// `cache.refresh_jitter` moves refreshes only earlier than `cache.refresh_at`, and never to the
/// moment a credential is issued (docs/fleet.md).
fn check_refresh_jitter(c: &CacheSection) -> Result<(), ConfigError> {
    if c.refresh_jitter >= 0.0 && c.refresh_jitter < 1.0 {
        return Ok(());
    }
    Err(ConfigError::Value {
        key: "cache.refresh_jitter",
        value: c.refresh_jitter.to_string(),
        reason: format!(
            "must be at least 0 (no spreading) and below 1: refreshes spread over this share of the time to \
             cache.refresh_at, just before it (default {}: between 20% and 50% of the lifetime)",
            default_refresh_jitter()
        ),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn load_str(toml: &str, env_pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyless.toml");
        std::fs::write(&path, toml).unwrap();
        let (settings, _) = settings_from_env(&env(env_pairs));
        load(Some(&path), settings)?.0.finish(&Overrides::default())
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = load_str("listne = \"127.0.0.1:1\"\n", &[]).unwrap_err().to_string();
        assert!(err.contains("listne"), "{err}");
        let err = load_str("[cache]\nrefresh_after = 0.5\n", &[]).unwrap_err().to_string();
        assert!(err.contains("refresh_after"), "{err}");
    }

    #[test]
    fn durations_are_human_and_bad_ones_are_named() {
        let c = load_str("[cache]\nretry_max = \"2m\"\n", &[]).unwrap();
        assert_eq!(c.cache.retry_max, Duration::from_secs(120));
        let err = load_str("[cache]\nretry_max = \"soon\"\n", &[]).unwrap_err().to_string();
        assert!(err.contains("retry_max") && err.contains("soon"), "{err}");
    }

    #[test]
    fn the_file_wins_over_keyless_env_vars() {
        let c = load_str(
            "listen = \"127.0.0.1:7000\"\n",
            &[("KEYLESS_LISTEN", "127.0.0.1:7001"), ("KEYLESS_ADMIN_LISTEN", "127.0.0.1:7002")],
        )
        .unwrap();
        assert_eq!(c.listen, "127.0.0.1:7000".parse().unwrap());
        assert_eq!(c.admin_listen, "127.0.0.1:7002".parse().unwrap());
    }

    #[test]
    fn env_settings_reach_sections_and_are_typed() {
        let c = load_str(
            "",
            &[
                ("KEYLESS_CACHE__REFRESH_AT", "0.75"),
                ("KEYLESS_CACHE__MAX_ENTRIES", "8"),
                ("KEYLESS_ALLOW_NON_LOOPBACK", "true"),
            ],
        )
        .unwrap();
        assert!((c.cache.refresh_at - 0.75).abs() < f64::EPSILON);
        assert_eq!(c.cache.max_entries, 8);
        assert!(c.allow_non_loopback);
    }

    #[test]
    fn app_env_vars_that_are_not_settings_are_skipped() {
        let (settings, skipped) = settings_from_env(&env(&[
            ("KEYLESS_AWS_ROLE_ARN", "arn:aws:iam::1:role/r"),
            ("KEYLESS_LOG", "debug"),
            ("KEYLESS_CONFIG", "/etc/keyless.toml"),
            // keyless dev's env file, sourced into the shell: not a setting, and no note.
            ("KEYLESS_DEV_AWS_ROLE_ARN", "arn:aws:iam::1:role/r"),
            ("KEYLESS_DEV_EMULATOR_URL", "https://127.0.0.1:9813"),
        ]));
        assert_eq!(settings.len(), 1);
        assert_eq!(skipped, vec!["KEYLESS_AWS_ROLE_ARN".to_owned()]);
    }

    #[test]
    fn the_uid_check_is_on_outside_kubernetes_unless_set() {
        let outside = |_: &str| None;
        let in_a_pod = |name: &str| (name == "KUBERNETES_SERVICE_HOST").then(|| "10.96.0.1".to_owned());
        let default = load_str("", &[]).unwrap();
        assert!(default.uid_check(&outside));
        assert!(!default.uid_check(&in_a_pod));
        let off = load_str("listen_uid_check = false\n", &[]).unwrap();
        assert!(!off.uid_check(&outside));
        let on = load_str("", &[("KEYLESS_LISTEN_UID_CHECK", "true")]).unwrap();
        assert!(on.uid_check(&in_a_pod));
    }

    #[test]
    fn a_non_loopback_listener_is_refused_unless_allowed() {
        let err = load_str("listen = \"0.0.0.0:9811\"\n", &[]).unwrap_err().to_string();
        assert!(err.contains("listen = 0.0.0.0:9811") && err.contains("allow_non_loopback"), "{err}");
        assert!(load_str("listen = \"0.0.0.0:9811\"\nallow_non_loopback = true\n", &[]).is_ok());
    }

    #[test]
    fn every_duration_and_number_is_bounded_and_the_error_names_key_and_range() {
        // (section, other keys, key, below the range or None, lowest, highest, above the range)
        let table = [
            ("cache", "", "retry_min", Some("9ms"), "10ms", "30s", "2h"),
            ("cache", "retry_min = \"10ms\"", "retry_max", Some("9ms"), "10ms", "1h", "1h 1ms"),
            ("cache", "", "throttle_retry", Some("9ms"), "10ms", "1h", "1h 1ms"),
            ("cache", "", "exchange_timeout", Some("99ms"), "100ms", "5m", "400000000000y"),
            ("cache", "", "request_wait", None, "0s", "5m", "400000000000y"),
            ("cache", "", "max_entries", Some("0"), "1", "10000", "10001"),
            ("token", "", "poll_interval", Some("999ms"), "1s", "1h", "400000000000y"),
            ("token", "", "debounce", None, "0s", "10s", "10s 1ms"),
        ];
        for (section, others, key, below, lowest, highest, above) in table {
            let toml = |value: &str| {
                let value = if key == "max_entries" { value.to_owned() } else { format!("{value:?}") };
                format!("[{section}]\n{others}\n{key} = {value}\n")
            };
            for ok in [lowest, highest] {
                let loaded = load_str(&toml(ok), &[]);
                assert!(loaded.is_ok(), "{section}.{key} = {ok}: {}", loaded.unwrap_err());
            }
            for bad in below.into_iter().chain([above]) {
                let err = load_str(&toml(bad), &[]).unwrap_err().to_string();
                let (named, range) = (format!("{section}.{key} = "), format!("must be between {lowest} and {highest}"));
                assert!(err.starts_with(&named) && err.contains(&range), "{section}.{key} = {bad}: {err}");
            }
        }
    }

    #[test]
    fn a_syntax_error_gives_its_position_and_key_but_never_the_line() {
        let secret = "s3cret-in-the-config-4b1e9";
        // (the config, the line of the error, the key it names)
        let cases = [
            (
                format!("[aws]\nrole_arn = \"x\"\nauthorization_token = \"{secret}\n"),
                3,
                Some("aws.authorization_token"),
            ),
            (format!("[azure]\nidentity_header = '{secret}\n"), 2, Some("azure.identity_header")),
            (format!("[azure]\nidentity_header = {secret}\n"), 2, Some("azure.identity_header")),
            (format!("[aws]\nauthorization_token = \"\"\"{secret}\n"), 3, None),
            (format!("[aws]\nauthorization_token = \"{secret}\\q\"\n"), 2, Some("aws.authorization_token")),
            (format!("[aws]\nauthorization_token = \"{secret}\" trailing\n"), 2, Some("aws.authorization_token")),
            (format!("[aws]\n{secret} x = 1\n"), 2, None),
            (format!("[aws\nauthorization_token = \"{secret}\"\n"), 1, None),
            (format!("[aws]\npolicy = \"\"\"\n[{secret}]\n{secret}=\\q\n\"\"\"\n"), 4, None),
        ];
        for (toml, line, key) in cases {
            let err = load_str(&toml, &[]).unwrap_err().to_string();
            assert!(!err.contains(&secret[..12]) && !err.contains(&secret[12..]), "echoed: {err}");
            assert!(err.contains(&format!("line {line}, column ")), "{toml:?}: {err}");
            if let Some(key) = key {
                assert!(err.contains(&format!("(key {key})")), "{toml:?}: {err}");
            }
        }
    }

    #[test]
    fn an_unreadable_config_file_gets_the_hint_of_its_cause() {
        use std::io::{Error, ErrorKind};
        assert_eq!(
            unreadable(&Error::from(ErrorKind::PermissionDenied)),
            "permission denied (keyless runs as a user that may not read it: make it readable to that user (in a pod: \
             the container's runAsUser, or a ConfigMap's defaultMode), or run keyless as a user that may)"
        );
        assert!(unreadable(&Error::from(ErrorKind::NotFound)).contains("pass an existing file with --config"));
    }

    #[test]
    fn log_format_says_its_allowed_values() {
        let err = load_str("log_format = \"yaml\"\n", &[]).unwrap_err().to_string();
        assert!(err.contains(r#"log_format = "yaml": must be "text" (the default) or "json""#), "{err}");
        assert_eq!(load_str("log_format = \"json\"\n", &[]).unwrap().log_format, LogFormat::Json);
    }

    #[test]
    fn an_error_names_the_variable_only_when_the_file_did_not_set_the_key() {
        let err = load_str("", &[("KEYLESS_CACHE__RETRY_MAX", "soon")]).unwrap_err().to_string();
        assert!(err.contains("(set by the environment variable KEYLESS_CACHE__RETRY_MAX)"), "{err}");
        let err =
            load_str("[cache]\nretry_max = \"soon\"\n", &[("KEYLESS_CACHE__RETRY_MAX", "1s")]).unwrap_err().to_string();
        assert!(!err.contains("KEYLESS_CACHE__RETRY_MAX"), "the file's value is the one refused: {err}");
        let err = load_str("", &[("KEYLESS_LOG", "x"), ("KEYLESS_LOG_FORMAT", "yaml")]).unwrap_err().to_string();
        assert!(err.contains("KEYLESS_LOG_FORMAT") && !err.contains("KEYLESS_LOG)"), "{err}");
    }

    #[test]
    fn refresh_fraction_must_be_inside_the_lifetime() {
        let err = load_str("[cache]\nrefresh_at = 1.5\n", &[]).unwrap_err().to_string();
        assert!(err.contains("cache.refresh_at"), "{err}");
    }

    #[test]
    fn the_ad_hoc_exchange_budget_is_configurable_and_bounded() {
        let c = load_str("[cache]\nadhoc_burst = 5\nadhoc_interval = \"1m\"\n", &[]).unwrap();
        let policy = c.cache_policy();
        assert_eq!((policy.adhoc_burst, policy.adhoc_interval), (5, Duration::from_secs(60)));
        let c = load_str("", &[("KEYLESS_CACHE__ADHOC_BURST", "0")]).unwrap();
        assert_eq!(c.cache_policy().adhoc_burst, 0, "0: only configured keys");
        let defaults = load_str("", &[]).unwrap().cache_policy();
        assert_eq!((defaults.adhoc_burst, defaults.adhoc_interval), (20, Duration::from_secs(10)));

        let err = load_str("[cache]\nadhoc_burst = 10001\n", &[]).unwrap_err().to_string();
        assert!(err.contains("cache.adhoc_burst = 10001") && err.contains("at most 10000"), "{err}");
        for bad in ["0s", "2days"] {
            let err = load_str(&format!("[cache]\nadhoc_interval = \"{bad}\"\n"), &[]).unwrap_err().to_string();
            assert!(err.contains("cache.adhoc_interval") && err.contains("at most 1day"), "{err}");
        }
        let err = load_str("[cache]\nadhoc_burst = -1\n", &[]).unwrap_err().to_string();
        assert!(err.contains("adhoc_burst"), "{err}");
    }

    /// A fleet's pods (serve, node) retry a throttled exchange on a rollout's time scale; a
    /// command that is one client (exec, token, dev, check) on a client's, unless the file says.
    #[test]
    fn throttled_retries_wait_on_a_fleets_scale_for_serve_and_a_clients_for_exec() {
        let unset = load_str("", &[]).unwrap();
        assert_eq!(unset.cache_policy().throttle_retry, CachePolicy::default().throttle_retry);
        assert_eq!(unset.one_client_cache_policy().throttle_retry, ONE_CLIENT_THROTTLE_RETRY);
        assert!(ONE_CLIENT_THROTTLE_RETRY * 10 < CachePolicy::default().throttle_retry);
        let set = load_str("[cache]\nthrottle_retry = \"20s\"\n", &[]).unwrap();
        assert_eq!(set.cache_policy().throttle_retry, Duration::from_secs(20));
        assert_eq!(set.one_client_cache_policy().throttle_retry, Duration::from_secs(20));
    }

    #[test]
    fn refresh_jitter_reaches_the_policy_and_is_range_checked() {
        assert_eq!(load_str("", &[]).unwrap().cache_policy().refresh_jitter, 0.6);
        let c = load_str("[cache]\nrefresh_jitter = 0\n", &[]).unwrap();
        assert_eq!(c.cache_policy().refresh_jitter, 0.0, "0: no spreading");
        let c = load_str("", &[("KEYLESS_CACHE__REFRESH_JITTER", "0.9")]).unwrap();
        assert_eq!(c.cache_policy().refresh_jitter, 0.9);
        for bad in ["1", "1.5", "-0.1", "nan"] {
            let err = load_str(&format!("[cache]\nrefresh_jitter = {bad}\n"), &[]).unwrap_err().to_string();
            assert!(err.contains("cache.refresh_jitter") && err.contains("below 1"), "{bad}: {err}");
        }
    }
}
