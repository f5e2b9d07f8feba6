//! A story's props: the emulator in a temp dir, a keyless AWS provider configured against it and
//! served on a real loopback port, and SDK clients that trust the emulator's CA.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // shared by several test binaries

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_sts::config::{BehaviorVersion, Region, SharedCredentialsProvider};
use aws_smithy_http_client::tls::rustls_provider::CryptoMode;
use aws_smithy_http_client::tls::{Provider as TlsProvider, TlsContext, TrustStore};
use keyless_aws::{Config, Running as Provider};
use keyless_core::clock::SystemClock;
use keyless_core::{CachePolicy, Context, Metrics, WatchOptions};
use keyless_emulator::{Cloud, Emulator, EmulatorConfig, MintClaims};

pub struct TestEnv {
    pub emulator: Emulator,
    pub dir: tempfile::TempDir,
}

pub async fn emulator() -> TestEnv {
    let dir = tempfile::tempdir().unwrap();
    let emulator = keyless_emulator::start(EmulatorConfig::new(dir.path().join("emulator"))).await.unwrap();
    TestEnv { emulator, dir }
}

pub fn context(policy: CachePolicy) -> Context {
    Context::new(Arc::new(SystemClock), Metrics::new(), policy, WatchOptions::default())
}

/// Quick retries, so failure stories finish in milliseconds.
pub fn fast_retries() -> CachePolicy {
    CachePolicy { retry_min: Duration::from_millis(5), retry_max: Duration::from_millis(40), ..CachePolicy::default() }
}

impl TestEnv {
    pub fn role_arn(&self) -> String {
        self.emulator.identities().aws_role_arn.clone()
    }

    /// The `[aws]` section `keyless dev` would write for this emulator.
    pub fn config(&self) -> Config {
        let mut config = Config::new(self.emulator.token_path(Cloud::Aws), self.role_arn());
        config.region = Some("eu-central-1".to_owned());
        config.sts_endpoint = Some(self.emulator.url());
        config.ca_file = Some(self.emulator.ca_pem_path().to_owned());
        config.session_name = Some("keyless-test".to_owned());
        config.authorization_token_file = Some(self.path("auth-token"));
        config
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes a token with one change to the dev identity's claims; returns its path.
    pub fn minted_token_file(&self, name: &str, change: impl FnOnce(&mut MintClaims)) -> PathBuf {
        let mut claims = MintClaims::new(self.emulator.identities().aws_audience());
        change(&mut claims);
        let path = self.path(name);
        std::fs::write(&path, self.emulator.mint(claims)).unwrap();
        path
    }

    /// An STS client against the emulator, signing with `credentials`.
    pub fn sts_client(&self, credentials: SharedCredentialsProvider) -> aws_sdk_sts::Client {
        let pem = std::fs::read(self.emulator.ca_pem_path()).unwrap();
        let tls =
            TlsContext::builder().with_trust_store(TrustStore::empty().with_pem_certificate(pem)).build().unwrap();
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(TlsProvider::Rustls(CryptoMode::AwsLc))
            .tls_context(tls)
            .build_https();
        let config = aws_sdk_sts::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("eu-central-1"))
            .endpoint_url(self.emulator.url())
            .http_client(http)
            .credentials_provider(credentials)
            .build();
        aws_sdk_sts::Client::from_conf(config)
    }
}

/// Serves `provider`'s routes on a fresh loopback port (what the binary does, minus the others).
pub async fn serve(provider: &Provider) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = keyless_provider::router("aws", provider).unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    addr
}

/// Waits until the provider holds a valid credential (the pre-warm finished).
pub async fn ready(provider: &Provider) {
    let cache = provider.cache();
    tokio::time::timeout(Duration::from_secs(20), cache.get(&()))
        .await
        .expect("pre-warm within 20s")
        .expect("pre-warm succeeded");
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// `YYYY-MM-DDTHH:MM:SSZ` exactly: what botocore's IMDS path accepts (no fractional seconds).
pub fn is_whole_second_utc(value: &str) -> bool {
    let b = value.as_bytes();
    let digit = |i: usize| b[i].is_ascii_digit();
    b.len() == 20
        && [0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18].into_iter().all(digit)
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && b[19] == b'Z'
}
