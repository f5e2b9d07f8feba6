//! The `aws-sdk-sts` client keyless exchanges with: no credentials (AssumeRoleWithWebIdentity is
//! unsigned), aws-lc TLS trusting the system roots plus `ca_file`, explicit timeouts, and no SDK
//! retries (the core cache retries with backoff and keeps serving while it does).

use std::sync::{Arc, OnceLock};

use aws_sdk_sts::config::retry::RetryConfig;
use aws_sdk_sts::config::timeout::TimeoutConfig;
use aws_sdk_sts::config::{BehaviorVersion, Region};
use aws_smithy_http_client::proxy::ProxyConfig;
use aws_smithy_http_client::tls::rustls_provider::CryptoMode;
use aws_smithy_http_client::tls::{Provider, TlsContext, TrustStore};
use aws_smithy_http_client::{Connector, ConnectorBuilder};
use aws_smithy_runtime_api::client::http::{
    HttpConnector, HttpConnectorFuture, SharedHttpClient, SharedHttpConnector, http_client_fn,
};
use aws_smithy_runtime_api::client::orchestrator::HttpRequest;
use aws_smithy_types::body::SdkBody;

use keyless_core::CachePolicy;
use keyless_provider::upstream;

use crate::error::ConfigError;
use crate::settings::Settings;

/// An STS client for `settings`' region, endpoint and CA certificates, with the upstream rules
/// every provider follows (`keyless_provider::upstream`): timeouts from `cache.exchange_timeout`,
/// no proxy for a loopback or link-local endpoint (`upstream::bypasses_proxy`), the response body
/// bounded by `upstream::MAX_BODY` ([`BoundedBody`]).
pub(crate) fn sts_client(settings: &Settings, policy: &CachePolicy) -> Result<aws_sdk_sts::Client, ConfigError> {
    let proxy = match settings.sts_endpoint.as_ref() {
        Some(url) if upstream::bypasses_proxy(url) => ProxyConfig::disabled(),
        _ => ProxyConfig::from_env(),
    };
    let (connect, request) = upstream::timeouts(policy);
    let http = https_client(&settings.ca_certs, proxy)?;
    let mut config = aws_sdk_sts::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(settings.region.clone()))
        .http_client(http)
        .retry_config(RetryConfig::disabled())
        .timeout_config(
            TimeoutConfig::builder().connect_timeout(connect).read_timeout(request).operation_timeout(request).build(),
        );
    if let Some(endpoint) = &settings.sts_endpoint {
        config = config.endpoint_url(endpoint.as_str().trim_end_matches('/'));
    }
    Ok(aws_sdk_sts::Client::from_conf(config.build()))
}

fn https_client(ca_certs: &[String], proxy: ProxyConfig) -> Result<SharedHttpClient, ConfigError> {
    let system = TrustStore::default().with_native_roots(system_roots_present());
    let trust = ca_certs.iter().fold(system, |trust, pem| trust.with_pem_certificate(pem.as_bytes()));
    let tls = TlsContext::builder()
        .with_trust_store(trust)
        .build()
        .map_err(|e| ConfigError::invalid("ca_file", e.to_string()))?;
    // One connector (one connection pool) for the client's life: the settings passed in are the
    // client's fixed timeouts, the same on every call.
    let connector: Arc<OnceLock<SharedHttpConnector>> = Arc::default();
    Ok(http_client_fn(move |settings, components| {
        connector
            .get_or_init(|| {
                let mut builder = ConnectorBuilder::default()
                    .tls_provider(Provider::Rustls(CryptoMode::AwsLc))
                    .tls_context(tls.clone());
                builder.set_connector_settings(Some(settings.clone()));
                builder.set_sleep_impl(components.sleep_impl());
                // As the SDK's own default client does: honour HTTPS_PROXY / NO_PROXY.
                builder.set_proxy_config(Some(proxy.clone()));
                let connector: Connector = builder.build();
                SharedHttpConnector::new(BoundedBody(SharedHttpConnector::new(connector)))
            })
            .clone()
    }))
}

/// A connector whose responses' bodies end in an error past `upstream::MAX_BODY` bytes: the SDK
/// reads STS's answer itself, and would otherwise hold whatever a misbehaving endpoint or proxy
/// sends. The error is recognised by `upstream::is_too_large` when the exchange is classified.
#[derive(Debug)]
struct BoundedBody(SharedHttpConnector);

impl HttpConnector for BoundedBody {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let call = self.0.call(request);
        HttpConnectorFuture::new(async move {
            let response = call.await?;
            Ok(response.map(|body| SdkBody::from_body_1_x(http_body_util::Limited::new(body, upstream::MAX_BODY))))
        })
    }
}

/// Whether the system store (what rustls-native-certs loads: `SSL_CERT_FILE`, `SSL_CERT_DIR` or
/// the platform's bundle) holds any certificate. aws-smithy-http-client asserts that an enabled
/// native store is not empty, a `debug_assert!` that aborted the exchange's task in debug builds
/// on a machine without a CA bundle, `ca_file` or not (the exchange then never finished). Without
/// system roots keyless trusts only `ca_file`'s, and an unknown certificate is a TLS error that
/// says so. Loaded once: the store does not change under a running keyless.
fn system_roots_present() -> bool {
    static PRESENT: OnceLock<bool> = OnceLock::new();
    *PRESENT.get_or_init(|| !rustls_native_certs::load_native_certs().certs.is_empty())
}
