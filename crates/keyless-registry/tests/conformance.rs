//! One conformance test over every registered provider: what it claims before starting (the
//! routes checked for collisions before anything listens) is exactly what it serves once started.
//! A provider serving a route it did not claim would escape the collision check; one claiming a
//! route it does not serve would refuse another provider's for nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use axum::http::StatusCode;
use keyless_core::clock::SystemClock;
use keyless_core::{CachePolicy, Context, ErrorClass, ExchangeError, Metrics};
use keyless_provider::{Configured, DevEmulator, DevToken, Provider};
use keyless_registry::{Visit, dev_config, visit};

/// Every provider configured from its section of `table`.
struct Configure<'a> {
    table: toml::Table,
    ctx: &'a Context,
    configured: Vec<(&'static str, Box<dyn Configured>)>,
}

impl Visit for Configure<'_> {
    fn provider<P: Provider>(&mut self) {
        let section = self.table.remove(P::NAME).unwrap_or_else(|| panic!("no [{}] section", P::NAME));
        let config: P::Config = section.try_into().unwrap_or_else(|e| panic!("[{}]: {e}", P::NAME));
        let configured = P::configure(config, self.ctx).unwrap_or_else(|e| panic!("[{}]: {e}", P::NAME));
        self.configured.push((P::NAME, configured));
    }
}

/// Every registered provider configured against a fresh emulator (the emulator kept alive with
/// them), with or without the emulator's second identities.
async fn configured_providers(
    state: &std::path::Path,
    ctx: &Context,
    second_identities: bool,
) -> (keyless_emulator::Emulator, Vec<(&'static str, Box<dyn Configured>)>) {
    let emulator = keyless_emulator::start(keyless_emulator::EmulatorConfig::new(state)).await.unwrap();
    let identities = emulator.identities_document();
    let url = emulator.url();
    let dev = DevEmulator {
        endpoint: &url,
        ca_file: emulator.ca_pem_path(),
        identities: &identities,
        state_dir: Some(state),
        second_identities,
    };
    let config = dev_config(&dev, &|name| DevToken::File(emulator.token_path_named(name))).unwrap();
    let mut configure = Configure { table: config.to_toml().parse().unwrap(), ctx, configured: Vec::new() };
    visit(&mut configure);
    assert!(!configure.configured.is_empty());
    (emulator, configure.configured)
}

/// The empty environment keyless dev runs in: nothing of this machine's.
fn dev_context() -> Context {
    Context::new(Arc::new(SystemClock), Metrics::new(), CachePolicy::default(), Default::default())
        .with_host(keyless_core::Host::empty())
}

#[tokio::test]
async fn every_provider_serves_exactly_the_routes_it_claims() {
    let ctx = dev_context();
    for second_identities in [false, true] {
        let state = tempfile::tempdir().unwrap();
        let (_emulator, configured) = configured_providers(state.path(), &ctx, second_identities).await;
        for (name, configured) in configured {
            let mut claimed: Vec<String> = configured.routes().into_iter().map(|c| c.route).collect();
            let started = configured.start(&ctx).await.unwrap_or_else(|e| panic!("{name}: {e}"));
            let mut served: Vec<String> = started.routes().into_iter().map(|r| r.path).collect();
            claimed.sort();
            served.sort();
            assert!(!served.is_empty(), "{name} serves nothing");
            assert_eq!(claimed, served, "{name} (second identities: {second_identities})");
        }
    }
}

/// The "no valid credential" answer of every provider on every route it serves keeps
/// `NativeErrors::unavailable`'s contract for each error class: 503 (which every SDK retries)
/// while the failure may pass, never 503 nor a success when it will not, and the exchange's
/// message in the body either way.
#[tokio::test]
async fn every_provider_answers_no_valid_credential_by_error_class() {
    let ctx = dev_context();
    let state = tempfile::tempdir().unwrap();
    let (_emulator, configured) = configured_providers(state.path(), &ctx, true).await;
    let marker = "the exchange failed <marker>";
    let errors = [
        ExchangeError::retryable(marker),
        ExchangeError::throttled(marker, Some(std::time::Duration::from_secs(30))),
        ExchangeError::reread_token(marker),
        ExchangeError::terminal(marker).with_code("AccessDenied"),
    ];
    for (name, configured) in configured {
        let started = configured.start(&ctx).await.unwrap_or_else(|e| panic!("{name}: {e}"));
        let native = started.rules().errors;
        for route in started.routes() {
            for err in &errors {
                let response = native.unavailable(&route.path, err);
                let status = response.status();
                let body = axum::body::to_bytes(response.into_body(), 64 * 1024).await.unwrap();
                let body = String::from_utf8_lossy(&body);
                let case = format!("{name} {} {:?}: {status} {body}", route.path, err.class);
                if err.class == ErrorClass::Terminal {
                    assert!(status.is_client_error() || status.is_server_error(), "{case}");
                    assert_ne!(status, StatusCode::SERVICE_UNAVAILABLE, "{case}");
                } else {
                    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{case}");
                }
                // Escaped for JSON bodies (`<` may become \u003c), so the words are checked.
                assert!(body.contains("the exchange failed"), "{case}");
            }
        }
    }
}
