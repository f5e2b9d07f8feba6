//! A running emulator in a temporary state directory, and a client that trusts its CA.

#![allow(dead_code, clippy::unwrap_used)] // shared by several test binaries, each using a part

use std::time::SystemTime;

use keyless_emulator::{Cloud, Emulator, EmulatorConfig, MintClaims};

pub struct TestEnv {
    pub emulator: Emulator,
    pub client: reqwest::Client,
    _state: tempfile::TempDir,
}

pub async fn start() -> TestEnv {
    start_with(|_| {}).await
}

pub async fn start_with(configure: impl FnOnce(&mut EmulatorConfig)) -> TestEnv {
    let state = tempfile::tempdir().unwrap();
    let mut config = EmulatorConfig::new(state.path());
    configure(&mut config);
    let emulator = keyless_emulator::start(config).await.unwrap();
    let pem = std::fs::read(emulator.ca_pem_path()).unwrap();
    let client =
        reqwest::Client::builder().tls_certs_only([reqwest::Certificate::from_pem(&pem).unwrap()]).build().unwrap();
    TestEnv { emulator, client, _state: state }
}

impl TestEnv {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.emulator.url())
    }

    /// The projected token of `cloud`, read through the user-visible symlink.
    pub fn projected(&self, cloud: Cloud) -> String {
        std::fs::read_to_string(self.emulator.token_path(cloud)).unwrap()
    }

    /// A valid token for `aud` with one change applied.
    pub fn mint(&self, aud: &str, change: impl FnOnce(&mut MintClaims)) -> String {
        let mut claims = MintClaims::new(aud);
        change(&mut claims);
        self.emulator.mint(claims)
    }

    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        let response = self.client.get(self.url(path)).send().await.unwrap();
        assert!(response.status().is_success(), "GET {path}: {}", response.status());
        response.json().await.unwrap()
    }
}

/// The wall clock, for signing times (the emulator judges them by real time too).
#[allow(clippy::disallowed_methods)]
pub fn wall_clock() -> SystemTime {
    SystemTime::now()
}

/// The text of the first `<tag>` element in an XML body.
pub fn xml_text(body: &str, tag: &str) -> Option<String> {
    let start = body.find(&format!("<{tag}>"))? + tag.len() + 2;
    let end = start + body[start..].find(&format!("</{tag}>"))?;
    Some(body[start..end].to_owned())
}

/// Verifies an RS256 JWT against a JWKS document and returns its claims.
pub fn verify_with_jwks(token: &str, jwks: &serde_json::Value, aud: &str, iss: &str) -> serde_json::Value {
    let header = jsonwebtoken::decode_header(token).unwrap();
    let set: jsonwebtoken::jwk::JwkSet = serde_json::from_value(jwks.clone()).unwrap();
    let jwk = set.find(header.kid.as_deref().unwrap()).expect("the token's kid is published");
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.set_audience(&[aud]);
    validation.set_issuer(&[iss]);
    jsonwebtoken::decode::<serde_json::Value>(token, &key, &validation).unwrap().claims
}
