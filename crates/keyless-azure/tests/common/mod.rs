//! The test environment: the emulator, a provider against it served on a real loopback port,
//! and helpers that read like the protocol (an IMDS call, an App Service call, a token check).
#![allow(dead_code)] // each test binary uses its own part of the harness

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use keyless_azure::{Config, Running as Provider};
use keyless_core::clock::SystemClock;
use keyless_core::{AbortOnDrop, CachePolicy, Context, Metrics, WatchOptions};
use keyless_emulator::{Cloud, Emulator, EmulatorConfig};
use keyless_provider::Started as _;
use serde_json::Value;

pub const IMDS_PATH: &str = "/metadata/identity/oauth2/token";
pub const ARM: &str = "https://management.azure.com/";
pub const IDENTITY_HEADER: &str = "test-identity-header-0123456789";

pub struct Harness {
    pub emulator: Emulator,
    pub provider: Provider,
    pub ctx: Context,
    pub listen: SocketAddr,
    pub http: reqwest::Client,
    _server: AbortOnDrop,
    _state: tempfile::TempDir,
}

/// The emulator's dev identity, as `keyless dev` would configure it.
pub fn dev_config(emulator: &Emulator) -> Config {
    let ids = emulator.identities();
    Config {
        token_file: emulator.token_path(Cloud::Azure),
        tenant_id: ids.azure_tenant_id.clone(),
        client_id: ids.azure_client_id.clone(),
        additional_client_ids: Vec::new(),
        authority_host: format!("{}/", emulator.url()),
        ca_file: Some(emulator.ca_pem_path().to_owned()),
        resources: Some(vec![ARM.to_owned()]),
        imds: true,
        app_service: true,
        app_service_path: keyless_azure::DEFAULT_APP_SERVICE_PATH.to_owned(),
        identity_header: Some(keyless_core::Secret::new(IDENTITY_HEADER.to_owned())),
    }
}

pub fn fast_policy() -> CachePolicy {
    CachePolicy {
        retry_min: Duration::from_millis(20),
        retry_max: Duration::from_millis(200),
        ..CachePolicy::default()
    }
}

impl Harness {
    pub async fn start() -> Self {
        Self::start_with(fast_policy(), |_, _| {}).await
    }

    /// Starts the emulator, then the provider with the dev config changed by `tweak`.
    pub async fn start_with(policy: CachePolicy, tweak: impl FnOnce(&Emulator, &mut Config)) -> Self {
        let state = tempfile::tempdir().expect("state dir");
        let emulator = keyless_emulator::start(EmulatorConfig::new(state.path())).await.expect("emulator starts");
        let mut config = dev_config(&emulator);
        tweak(&emulator, &mut config);
        let ctx = Context::new(Arc::new(SystemClock), Metrics::new(), policy, WatchOptions::default());
        let provider = keyless_azure::start(config, &ctx).await.expect("provider starts");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let listen = listener.local_addr().expect("local addr");
        let router = keyless_provider::router("azure", &provider).expect("routes");
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        let harness = Self {
            emulator,
            provider,
            ctx,
            listen,
            http: reqwest::Client::new(),
            _server: AbortOnDrop::new(server),
            _state: state,
        };
        harness.wait_ready().await;
        harness
    }

    /// Waits (bounded) until every pre-warmed token is held, as the binary's /readyz would.
    pub async fn wait_ready(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let readiness = self.provider.readiness();
        while !readiness.iter().all(|r| r.statuses().iter().all(|s| s.ready())) {
            assert!(tokio::time::Instant::now() < deadline, "pre-warm never finished");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{path_and_query}", self.listen)
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
        self.emulator.counters().azure_token
    }

    /// Checks an access token against the emulator's Entra keys: signature, `aud` = `resource`
    /// exactly, `appid` = `client_id`, `tid` = the tenant. Returns its claims.
    pub async fn verify(&self, token: &str, resource: &str, client_id: &str) -> Value {
        verify_access_token(
            &self.emulator.url(),
            self.emulator.ca_pem_path(),
            &self.emulator.identities().azure_tenant_id,
            token,
            resource,
            client_id,
        )
        .await
    }
}

/// Verifies an Entra access token with the JWKS at `{emulator}/{tenant}/discovery/v2.0/keys`.
pub async fn verify_access_token(
    emulator_url: &str,
    ca_pem: &std::path::Path,
    tenant: &str,
    token: &str,
    resource: &str,
    client_id: &str,
) -> Value {
    let ca = std::fs::read(ca_pem).expect("emulator CA");
    let http = reqwest::Client::builder()
        .tls_certs_only(reqwest::Certificate::from_pem_bundle(&ca).expect("CA parses"))
        .build()
        .expect("client");
    let jwks: jsonwebtoken::jwk::JwkSet = http
        .get(format!("{emulator_url}/{tenant}/discovery/v2.0/keys"))
        .send()
        .await
        .expect("JWKS")
        .json()
        .await
        .expect("JWKS JSON");
    let header = jsonwebtoken::decode_header(token).expect("JWT header");
    let kid = header.kid.expect("kid");
    let jwk = jwks.find(&kid).expect("signing key published");
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).expect("decoding key");
    let mut validation = jsonwebtoken::Validation::new(header.alg);
    validation.set_audience(&[resource]);
    validation.set_issuer(&[format!("https://sts.windows.net/{tenant}/")]);
    let data = jsonwebtoken::decode::<Value>(token, &key, &validation).expect("token verifies");
    let claims = data.claims;
    assert_eq!(claims["aud"], resource, "aud is the resource asked for");
    assert_eq!(claims["appid"], client_id);
    assert_eq!(claims["tid"], tenant);
    claims
}

/// Writes `jwt` to a file of its own in the emulator's state dir and returns the path (for
/// tokens the projector would never write).
pub fn token_file(emulator: &Emulator, name: &str, jwt: &str) -> PathBuf {
    let path = emulator.state_dir().join(name);
    std::fs::write(&path, jwt).expect("write token");
    path
}

pub async fn json(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let body = response.json().await.expect("JSON body");
    (status, body)
}
