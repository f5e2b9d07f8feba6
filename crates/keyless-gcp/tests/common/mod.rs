//! What only the GCP adapter's tests need: the dev `[gcp]` section, the metadata server on
//! loopback, requests as the Google clients send them, and the emulator's views of a token.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // shared by several test binaries

use keyless_core::{CachePolicy, Context};
use keyless_emulator::Cloud;
use keyless_gcp::{Config, Running as Provider};
use keyless_test_support::context::{context, fast_retries, patient, paused_context};
use keyless_test_support::emulator::EmulatorEnv;
use keyless_test_support::jwt::Jwks;
use keyless_test_support::serving::ProviderEnv;
use serde_json::Value;

/// A `[gcp]` section for the emulator's dev identity, with the service account (written for these
/// tests; keyless dev's own is the adapter's `dev_section`, which also sets `project_number`).
pub fn dev_config(env: &EmulatorEnv) -> Config {
    let ids = env.emulator.identities();
    Config {
        token_file: Some(env.emulator.token_path(Cloud::Gcp)),
        audience: Some(ids.gcp_audience()),
        service_account: Some(ids.gcp_service_account.clone()),
        project_id: Some(ids.gcp_project_id.clone()),
        sts_endpoint: Some(env.emulator.url()),
        iam_endpoint: Some(env.emulator.url()),
        ca_file: Some(env.ca().to_owned()),
        ..Config::default()
    }
}

/// For `#[tokio::test(start_paused = true)]`: keyless on the paused clock, default retries.
pub fn paused() -> Context {
    paused_context(patient(CachePolicy::default()))
}

keyless_test_support::provider_harness!(
    /// The emulator, keyless-gcp started against it, the metadata server on loopback.
    Harness,
    Provider
);

impl Harness {
    /// Quick retries on the real clock; `configure` may change the section.
    pub async fn start(configure: impl FnOnce(&mut Config, &EmulatorEnv)) -> Self {
        Self::start_with(context(fast_retries()), configure).await
    }

    /// Starts the emulator, then the provider in `ctx` (without waiting for its pre-warm).
    pub async fn start_with(ctx: Context, configure: impl FnOnce(&mut Config, &EmulatorEnv)) -> Self {
        let config = |env: &EmulatorEnv| {
            let mut config = dev_config(env);
            configure(&mut config, env);
            config
        };
        let started = ProviderEnv::start("gcp", ctx, config, |c, ctx| async move { keyless_gcp::start(c, &ctx).await });
        Self(started.await)
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
        let url = self.env.url("/tokeninfo");
        let response = self.env.client.get(url).query(&[("access_token", token)]).send().await.unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }

    /// Verifies an ID token against the emulator's `/oauth2/v3/certs` and returns its claims.
    pub async fn verify_id_token(&self, token: &str, audience: &str) -> Value {
        let certs = Jwks::fetch(&self.env.client, &self.env.url("/oauth2/v3/certs")).await;
        certs.verify(token, audience, "https://accounts.google.com")
    }
}
