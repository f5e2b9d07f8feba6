//! The emulator running in the test's own runtime, in a temporary directory that also holds the
//! test's own files, with a client that trusts its CA.

use std::path::{Path, PathBuf};

use keyless_emulator::{Cloud, Emulator, EmulatorConfig, MintClaims};

use crate::clients;

/// A running emulator (state in `<dir>/emulator`) and a scratch directory for the test's files.
#[derive(Debug)]
pub struct EmulatorEnv {
    pub emulator: Emulator,
    /// HTTPS to the emulator, trusting its CA.
    pub client: reqwest::Client,
    dir: tempfile::TempDir,
}

impl EmulatorEnv {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts the emulator with its configuration changed by `configure`.
    pub async fn start_with(configure: impl FnOnce(&mut EmulatorConfig)) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut config = EmulatorConfig::new(dir.path().join("emulator"));
        configure(&mut config);
        let emulator = keyless_emulator::start(config).await.expect("the emulator starts");
        let client = clients::trusting(emulator.ca_pem_path());
        Self { emulator, client, dir }
    }

    /// `{emulator URL}{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.emulator.url())
    }

    /// A path in the scratch directory (beside, not inside, the emulator's state).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes `content` to `name` in the scratch directory; returns its path.
    pub fn write(&self, name: &str, content: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, content).expect("writing a test file");
        path
    }

    /// The projected token of `cloud`, read through the user-visible symlink.
    pub fn projected(&self, cloud: Cloud) -> String {
        std::fs::read_to_string(self.emulator.token_path(cloud)).expect("the projected token")
    }

    /// A token for `aud` signed by the emulator's issuer, with one change to the dev claims.
    pub fn mint(&self, aud: &str, change: impl FnOnce(&mut MintClaims)) -> String {
        let mut claims = MintClaims::new(aud);
        change(&mut claims);
        self.emulator.mint(claims)
    }

    /// [`EmulatorEnv::mint`] written to `name` in the scratch directory; returns its path.
    pub fn minted_token_file(&self, name: &str, aud: &str, change: impl FnOnce(&mut MintClaims)) -> PathBuf {
        self.write(name, &self.mint(aud, change))
    }

    /// `GET path` as JSON; fails the test on a non-2xx status.
    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        let response = self.client.get(self.url(path)).send().await.expect("the emulator answers");
        assert!(response.status().is_success(), "GET {path}: {}", response.status());
        response.json().await.expect("a JSON body")
    }

    /// The emulator's CA certificate file.
    pub fn ca(&self) -> &Path {
        self.emulator.ca_pem_path()
    }
}
