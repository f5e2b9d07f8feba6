//! The test story's setting: the emulator, keyless-gcp configured against it, its router on a
//! loopback port, and clients for both.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // shared by several test binaries

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use keyless_core::clock::{Clock, SharedClock, SystemClock, TokioClock};
use keyless_core::{CachePolicy, Context, Metrics, WatchOptions};
use keyless_emulator::{Cloud, Emulator, EmulatorConfig};
use keyless_gcp::{Config, Running as Provider};
use serde_json::Value;

pub struct Harness {
    pub emulator: Emulator,
    pub provider: Provider,
    /// Where the metadata server listens.
    pub addr: SocketAddr,
    /// Plain HTTP to the metadata server; never follows redirects (they are under test).
    pub http: reqwest::Client,
    /// HTTPS to the emulator (trusts its CA).
    pub upstream: reqwest::Client,
    _server: tokio::task::JoinHandle<()>,
    _state: tempfile::TempDir,
}

pub struct Options {
    pub clock: SharedClock,
    pub policy: CachePolicy,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            clock: Arc::new(SystemClock),
            policy: CachePolicy {
                retry_min: Duration::from_millis(20),
                retry_max: Duration::from_millis(200),
                ..CachePolicy::default()
            },
        }
    }
}

impl Options {
    /// Wall time that follows tokio's (paused) clock; generous waits, since paused time jumps.
    pub fn paused() -> Self {
        Self {
            clock: Arc::new(TokioClock::new(SystemClock.now())),
            policy: CachePolicy { request_wait: Duration::from_secs(600), ..CachePolicy::default() },
        }
    }
}

/// The `[gcp]` section `keyless dev` would write for this emulator, with the service account.
pub fn dev_config(emulator: &Emulator) -> Config {
    let ids = emulator.identities();
    Config {
        token_file: Some(emulator.token_path(Cloud::Gcp)),
        audience: Some(ids.gcp_audience()),
        service_account: Some(ids.gcp_service_account.clone()),
        project_id: Some(ids.gcp_project_id.clone()),
        sts_endpoint: Some(emulator.url()),
        iam_endpoint: Some(emulator.url()),
        ca_file: Some(emulator.ca_pem_path().to_owned()),
        ..Config::default()
    }
}

impl Harness {
    /// `configure` may change the section, and gets the emulator to mint tokens with.
    pub async fn start(configure: impl FnOnce(&mut Config, &Emulator)) -> Self {
        Self::start_with(Options::default(), configure).await
    }

    pub async fn start_with(options: Options, configure: impl FnOnce(&mut Config, &Emulator)) -> Self {
        let state = tempfile::tempdir().unwrap();
        let emulator = keyless_emulator::start(EmulatorConfig::new(state.path())).await.unwrap();
        let mut config = dev_config(&emulator);
        configure(&mut config, &emulator);
        let ctx = Context::new(options.clock, Metrics::new(), options.policy, WatchOptions::default());
        let provider = keyless_gcp::start(config, &ctx).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = keyless_provider::router("gcp", &provider).unwrap();
        let server = tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
        });
        let pem = std::fs::read(emulator.ca_pem_path()).unwrap();
        let upstream = reqwest::Client::builder()
            .tls_certs_only(reqwest::Certificate::from_pem_bundle(&pem).unwrap())
            .build()
            .unwrap();
        let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        Self { emulator, provider, addr, http, upstream, _server: server, _state: state }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// A GET as the Google clients send it (with `Metadata-Flavor: Google`).
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http.get(self.url(path)).header("Metadata-Flavor", "Google").send().await.unwrap()
    }

    /// `GET .../token{query}`: (status, body as JSON or as a string).
    pub async fn token(&self, query: &str) -> (u16, Value) {
        let response = self.get(&format!("/computeMetadata/v1/instance/service-accounts/default/token{query}")).await;
        let status = response.status().as_u16();
        let body = response.text().await.unwrap();
        (status, serde_json::from_str(&body).unwrap_or(Value::String(body)))
    }

    /// The access token of a successful `.../token{query}`.
    pub async fn access_token(&self, query: &str) -> String {
        let (status, body) = self.token(query).await;
        assert_eq!(status, 200, "{body}");
        body["access_token"].as_str().unwrap().to_owned()
    }

    /// The emulator's OAuth2 tokeninfo for `token`.
    pub async fn tokeninfo(&self, token: &str) -> (u16, Value) {
        let response = self
            .upstream
            .get(format!("{}/tokeninfo", self.emulator.url()))
            .query(&[("access_token", token)])
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }

    /// Verifies an ID token against the emulator's `/oauth2/v3/certs` and returns its claims.
    pub async fn verify_id_token(&self, token: &str, audience: &str) -> Value {
        let jwks: jsonwebtoken::jwk::JwkSet = self
            .upstream
            .get(format!("{}/oauth2/v3/certs", self.emulator.url()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let header = jsonwebtoken::decode_header(token).unwrap();
        let jwk = jwks.find(header.kid.as_deref().unwrap()).expect("the ID token's kid is published");
        let key = jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap();
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
        validation.set_audience(&[audience]);
        validation.set_issuer(&["https://accounts.google.com"]);
        jsonwebtoken::decode::<Value>(token, &key, &validation).unwrap().claims
    }
}
