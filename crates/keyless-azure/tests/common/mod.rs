//! What only the Azure adapter's tests need: the dev `[azure]` section, the provider served on
//! loopback, requests as the protocol makes them (IMDS, App Service), and the checks of an Entra
//! access token.
#![allow(dead_code)] // each test binary uses its own part of the harness

use keyless_azure::{Config, Running as Provider};
use keyless_core::Context;
use keyless_emulator::Cloud;
use keyless_test_support::context::{context, fast_retries};
use keyless_test_support::emulator::EmulatorEnv;
use keyless_test_support::jwt::Jwks;
use keyless_test_support::serving::{ProviderEnv, wait_ready};
use serde_json::Value;

pub const IMDS_PATH: &str = "/metadata/identity/oauth2/token";
pub const ARM: &str = "https://management.azure.com/";
pub const IDENTITY_HEADER: &str = "test-identity-header-0123456789";

/// The emulator's dev identity, configured for these tests (with their resources and identity
/// header; keyless dev's own section is the adapter's `dev_section`).
pub fn dev_config(env: &EmulatorEnv) -> Config {
    let ids = env.emulator.identities();
    Config {
        token_file: env.emulator.token_path(Cloud::Azure),
        tenant_id: ids.azure_tenant_id.clone(),
        client_id: ids.azure_client_id.clone(),
        additional_client_ids: Vec::new(),
        authority_host: format!("{}/", env.emulator.url()),
        ca_file: Some(env.ca().to_owned()),
        resources: Some(vec![ARM.to_owned()]),
        imds: true,
        app_service: true,
        app_service_path: keyless_azure::DEFAULT_APP_SERVICE_PATH.to_owned(),
        identity_header: Some(keyless_core::Secret::new(IDENTITY_HEADER.to_owned())),
        source: None,
    }
}

keyless_test_support::provider_harness!(
    /// The emulator, keyless-azure started against it, its routes on loopback.
    Harness,
    Provider
);

impl Harness {
    /// The dev configuration, quick retries, the real clock.
    pub async fn start() -> Self {
        Self::start_with(context(fast_retries()), |_, _| {}).await
    }

    /// Starts the emulator, then the provider in `ctx` with the dev config changed by `tweak`, and
    /// waits until its pre-warmed tokens are held.
    pub async fn start_with(ctx: Context, tweak: impl FnOnce(&EmulatorEnv, &mut Config)) -> Self {
        let config = |env: &EmulatorEnv| {
            let mut config = dev_config(env);
            tweak(env, &mut config);
            config
        };
        let started =
            ProviderEnv::start("azure", ctx, config, |c, ctx| async move { keyless_azure::start(c, &ctx).await });
        let harness = Self(started.await);
        wait_ready(&harness.provider).await;
        harness
    }

    /// `GET /metadata/identity/oauth2/token?api-version=2018-02-01&resource=R` with `Metadata: true`.
    pub async fn imds(&self, resource: &str) -> reqwest::Response {
        self.http
            .get(self.url(IMDS_PATH))
            .query(&[("api-version", "2018-02-01"), ("resource", resource)])
            .header("Metadata", "true")
            .send()
            .await
            .expect("IMDS answers")
    }

    /// The App Service endpoint with the right `X-IDENTITY-HEADER`.
    pub async fn app_service(&self, resource: &str) -> reqwest::Response {
        self.http
            .get(self.url(keyless_azure::DEFAULT_APP_SERVICE_PATH))
            .query(&[("api-version", "2019-08-01"), ("resource", resource)])
            .header("X-IDENTITY-HEADER", IDENTITY_HEADER)
            .send()
            .await
            .expect("App Service answers")
    }

    pub fn exchanges(&self) -> u64 {
        self.env.emulator.counters().azure_token
    }

    /// Checks an access token against the emulator's Entra keys (see [`verify_access_token`]).
    pub async fn verify(&self, token: &str, resource: &str, client_id: &str) -> Value {
        let tenant = &self.env.emulator.identities().azure_tenant_id;
        verify_access_token(&self.env.client, &self.env.emulator.url(), tenant, token, resource, client_id).await
    }
}

/// Verifies an Entra access token with the JWKS at `{emulator}/{tenant}/discovery/v2.0/keys`:
/// signature, `aud` = `resource` exactly, `appid` = `client_id`, `tid` = the tenant. Returns its
/// claims.
pub async fn verify_access_token(
    client: &reqwest::Client,
    emulator_url: &str,
    tenant: &str,
    token: &str,
    resource: &str,
    client_id: &str,
) -> Value {
    let jwks = Jwks::fetch(client, &format!("{emulator_url}/{tenant}/discovery/v2.0/keys")).await;
    let claims = jwks.verify(token, resource, &format!("https://sts.windows.net/{tenant}/"));
    assert_eq!(claims["aud"], resource, "aud is the resource asked for");
    assert_eq!(claims["appid"], client_id);
    assert_eq!(claims["tid"], tenant);
    claims
}

pub async fn json(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let body = response.json().await.expect("JSON body");
    (status, body)
}
