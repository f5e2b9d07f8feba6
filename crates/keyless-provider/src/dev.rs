//! Each provider's section of a configuration against the local emulator (`keyless dev`, the
//! end-to-end tests, the benchmarks), and their assembly into one typed configuration.
//!
//! The provider writes its own section ([`crate::Provider::dev_section`]) from what the emulator
//! publishes: its URL, its CA and the `/_emulator/identities` document. The adapter reads that
//! document as it reads any cloud's wire format, so the emulator still shares no code with it.
//! [`DevConfig`] adds what every section shares (where the subject token comes from) and the
//! caller's own settings, and serializes the whole with the `toml` crate.

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::ProviderError;

/// A provider's section, as a TOML table.
pub type DevTable = toml::Table;

/// The emulator a dev section points at.
#[derive(Debug, Clone, Copy)]
pub struct DevEmulator<'a> {
    /// Every emulated token service's endpoint: the emulator's URL, or a proxy in front of it.
    pub endpoint: &'a str,
    /// The emulator's CA (PEM).
    pub ca_file: &'a Path,
    /// The emulator's `/_emulator/identities` document: the identities its clouds trust.
    pub identities: &'a serde_json::Value,
    /// Where a provider may keep the files its section names (AWS's authorization token file);
    /// `None`: no such file.
    pub state_dir: Option<&'a Path>,
    /// Whether each section configures the emulator's second identities too (`[[aws.roles]]`,
    /// `[[gcp.service_accounts]]`, Azure's `additional_client_ids`), as `keyless dev` does.
    pub second_identities: bool,
}

impl DevEmulator<'_> {
    /// The identities document read into the adapter's own view of it (the fields it needs).
    pub fn identities<T: DeserializeOwned>(&self) -> Result<T, ProviderError> {
        Ok(T::deserialize(self.identities)?)
    }
}

/// `value` (a provider's typed section) as a TOML table.
pub fn section(value: &impl Serialize) -> Result<toml::Table, ProviderError> {
    Ok(toml::Table::try_from(value)?)
}

/// Where each section's subject token comes from: the keys every provider's section shares.
#[derive(Debug, Clone)]
pub enum DevToken {
    /// `token_file`: the emulator's projected token, or any other file.
    File(PathBuf),
    /// `source = { ... }`: a token source, as its inline table.
    Source(toml::Table),
}

impl DevToken {
    /// The emulated GitHub Actions job's OIDC endpoint (each cloud's default audience).
    pub fn github_actions(request_url: &str, request_token_file: &Path, ca_file: &Path) -> Self {
        #[derive(Serialize)]
        struct GithubActions<'a> {
            r#type: &'static str,
            request_url: &'a str,
            request_token_file: &'a Path,
            ca_file: &'a Path,
        }
        let source = GithubActions { r#type: "github-actions", request_url, request_token_file, ca_file };
        #[allow(clippy::expect_used)] // strings and paths: always a table (a non-UTF-8 path is lossy, not an error)
        Self::Source(toml::Table::try_from(source).expect("a table of strings"))
    }

    fn insert_into(&self, section: &mut toml::Table) {
        match self {
            Self::File(path) => {
                section.insert("token_file".into(), toml::Value::String(path.to_string_lossy().into_owned()))
            }
            Self::Source(table) => section.insert("source".into(), toml::Value::Table(table.clone())),
        };
    }
}

/// One provider's dev section, by name; the registry lists these.
pub type DevSection = fn(&DevEmulator<'_>) -> Result<DevTable, ProviderError>;

/// A whole configuration against the emulator: every registered provider's section, each
/// section's token, the caller's own settings.
#[derive(Debug, Clone, Default)]
pub struct DevConfig {
    table: toml::Table,
}

impl DevConfig {
    /// The sections of `providers` (name and section, in the registry's order) for `emulator`,
    /// each taking its subject token as `token(name)` says.
    pub fn new(
        providers: &[(&'static str, DevSection)],
        emulator: &DevEmulator<'_>,
        token: &dyn Fn(&'static str) -> DevToken,
    ) -> Result<Self, ProviderError> {
        let mut table = toml::Table::new();
        for (name, dev_section) in providers {
            let mut section = dev_section(emulator)?;
            token(name).insert_into(&mut section);
            table.insert((*name).to_owned(), toml::Value::Table(section));
        }
        Ok(Self { table })
    }

    /// A top-level key or section (`listen`, `log`, `[cache]`).
    pub fn set(mut self, key: &str, value: impl Into<toml::Value>) -> Self {
        self.table.insert(key.to_owned(), value.into());
        self
    }

    /// A key of a provider's section (a setting the emulator's identities do not decide), added
    /// or replaced; nothing when the section is absent.
    pub fn set_in(mut self, section: &str, key: &str, value: impl Into<toml::Value>) -> Self {
        if let Some(toml::Value::Table(section)) = self.table.get_mut(section) {
            section.insert(key.to_owned(), value.into());
        }
        self
    }

    /// The configuration as a TOML table.
    pub fn table(&self) -> &toml::Table {
        &self.table
    }

    /// The configuration as a file's text.
    pub fn to_toml(&self) -> String {
        self.table.to_string()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn endpoint_section(emulator: &DevEmulator<'_>) -> Result<toml::Table, ProviderError> {
        #[derive(serde::Deserialize)]
        struct Ids {
            role: String,
        }
        #[derive(Serialize)]
        struct Section<'a> {
            role: String,
            endpoint: &'a str,
        }
        let ids: Ids = emulator.identities()?;
        section(&Section { role: ids.role, endpoint: emulator.endpoint })
    }

    fn emulator<'a>(identities: &'a serde_json::Value) -> DevEmulator<'a> {
        DevEmulator {
            endpoint: "https://127.0.0.1:1",
            ca_file: Path::new("/ca \"quoted\".pem"),
            identities,
            state_dir: None,
            second_identities: false,
        }
    }

    #[test]
    fn sections_carry_their_token_and_the_callers_settings_and_round_trip_through_toml() {
        let ids = serde_json::json!({ "role": "r\"1\n" });
        let token = |name: &'static str| DevToken::File(PathBuf::from(format!("/tokens/{name}")));
        let config = DevConfig::new(&[("one", endpoint_section), ("two", endpoint_section)], &emulator(&ids), &token)
            .unwrap()
            .set("log", "debug")
            .set_in("two", "extra", vec!["a"])
            .set_in("absent", "extra", 1);
        let parsed: toml::Table = config.to_toml().parse().unwrap();
        assert_eq!(&parsed, config.table());
        assert_eq!(parsed["one"]["role"].as_str(), Some("r\"1\n"));
        assert_eq!(parsed["one"]["token_file"].as_str(), Some("/tokens/one"));
        assert_eq!(parsed["two"]["extra"][0].as_str(), Some("a"));
        assert_eq!(parsed["log"].as_str(), Some("debug"));
        assert!(parsed.get("absent").is_none());
    }

    #[test]
    fn a_missing_identity_is_an_error_naming_it() {
        let ids = serde_json::json!({});
        let err = DevConfig::new(&[("one", endpoint_section)], &emulator(&ids), &|_| DevToken::File("/t".into()))
            .unwrap_err();
        assert!(err.to_string().contains("role"), "{err}");
    }

    #[test]
    fn a_github_actions_source_is_an_inline_table_of_its_keys() {
        let token = DevToken::github_actions("https://e/x?api-version=2.0", Path::new("/r"), Path::new("/ca"));
        let mut section = toml::Table::new();
        token.insert_into(&mut section);
        assert_eq!(section["source"]["type"].as_str(), Some("github-actions"));
        assert_eq!(section["source"]["request_token_file"].as_str(), Some("/r"));
    }
}
