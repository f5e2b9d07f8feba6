//! Conformance tests over every registered provider:
//!
//! - what it claims before starting (the routes checked for collisions before anything listens)
//!   is exactly what it serves once started. A provider serving a route it did not claim would
//!   escape the collision check; one claiming a route it does not serve would refuse another
//!   provider's for nothing;
//! - what it declares to the shared layers is what they apply: its security headers
//!   (`Provider::SINGLE_HEADERS`) are refused twice on every route of a listener serving every
//!   provider, and its token service's throttling answer (the emulator's, as the cloud words it)
//!   is counted as throttling, which for AWS's HTTP 400 `Throttling` only its declared
//!   `THROTTLING_CODES` make so;
//! - its "no valid credential" answer (`NativeErrors::unavailable`) keeps the contract for each
//!   error class on every route it serves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use http::HeaderValue;
use keyless_core::clock::SystemClock;
use keyless_core::{CachePolicy, Context, ErrorClass, ExchangeError, Metrics};
use keyless_provider::{Configured, DevEmulator, DevToken, Provider, Routes, Started};
use keyless_registry::endpoints::{Endpoint, Presented};
use keyless_registry::{Visit, dev_config, visit};

/// Every provider configured from its section of `table`, with what it declares.
struct Configure<'a> {
    table: toml::Table,
    ctx: &'a Context,
    configured: Vec<(&'static str, Box<dyn Configured>)>,
    declared: Vec<Declared>,
}

/// What a provider declares to the shared layers.
struct Declared {
    name: &'static str,
    single_headers: &'static [&'static str],
    throttling_codes: &'static [&'static str],
}

impl Visit for Configure<'_> {
    fn provider<P: Provider>(&mut self) {
        let section = self.table.remove(P::NAME).unwrap_or_else(|| panic!("no [{}] section", P::NAME));
        let config: P::Config = section.try_into().unwrap_or_else(|e| panic!("[{}]: {e}", P::NAME));
        let configured = P::configure(config, self.ctx).unwrap_or_else(|e| panic!("[{}]: {e}", P::NAME));
        self.configured.push((P::NAME, configured));
        self.declared.push(Declared {
            name: P::NAME,
            single_headers: P::SINGLE_HEADERS,
            throttling_codes: P::THROTTLING_CODES,
        });
    }
}

/// The empty environment keyless dev runs in: nothing of this machine's.
fn context() -> Context {
    Context::new(Arc::new(SystemClock), Metrics::new(), CachePolicy::default(), Default::default())
        .with_host(keyless_core::Host::empty())
}

/// Every provider configured against `emulator`.
fn configure_all<'a>(
    emulator: &keyless_emulator::Emulator,
    state: &std::path::Path,
    ctx: &'a Context,
    second_identities: bool,
) -> Configure<'a> {
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
    let mut configure =
        Configure { table: config.to_toml().parse().unwrap(), ctx, configured: Vec::new(), declared: Vec::new() };
    visit(&mut configure);
    assert!(!configure.configured.is_empty());
    configure
}

#[tokio::test]
async fn every_provider_serves_exactly_the_routes_it_claims() {
    let state = tempfile::tempdir().unwrap();
    let emulator = keyless_emulator::start(keyless_emulator::EmulatorConfig::new(state.path())).await.unwrap();
    let ctx = context();
    for second_identities in [false, true] {
        let configure = configure_all(&emulator, state.path(), &ctx, second_identities);
        for (name, configured) in configure.configured {
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

/// A path `route` (axum's syntax) matches: each `{param}` or `{*rest}` segment filled in.
fn concrete(route: &str) -> String {
    route.split('/').map(|s| if s.starts_with('{') { "x" } else { s }).collect::<Vec<_>>().join("/")
}

#[tokio::test]
async fn every_provider_s_declared_headers_and_throttling_codes_are_applied() {
    let state = tempfile::tempdir().unwrap();
    let emulator = keyless_emulator::start(keyless_emulator::EmulatorConfig::new(state.path())).await.unwrap();
    // Every token service over quota from the first call: each provider's pre-warm exchange gets
    // its cloud's throttling answer.
    for service in keyless_emulator::Service::ALL {
        emulator.quotas().set(service, Some(keyless_emulator::Quota { per_second: 0.001, burst: 0 }));
    }
    let ctx = context();
    let configure = configure_all(&emulator, state.path(), &ctx, false);
    let mut started: Vec<(&'static str, Box<dyn Started>)> = Vec::new();
    for ((name, configured), declared) in configure.configured.into_iter().zip(&configure.declared) {
        assert_eq!(&configured.rules().single_headers[..], declared.single_headers, "{name}: rules before start");
        let running = configured.start(&ctx).await.unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(&running.rules().single_headers[..], declared.single_headers, "{name}: rules once started");
        started.push((name, running));
    }

    // One listener serving every provider: each declared header twice is refused on every route.
    let routes = Routes::new(started.iter().map(|(name, s)| (*name, s.as_ref())), None).unwrap();
    let paths: Vec<String> = started.iter().flat_map(|(_, s)| s.routes()).map(|r| concrete(&r.path)).collect();
    let mut failures = Vec::new();
    for declared in &configure.declared {
        for header in declared.single_headers {
            assert_eq!(*header, header.to_ascii_lowercase(), "{}: declared names are lowercase", declared.name);
            for path in &paths {
                let request = http::Request::get(path.as_str())
                    .header("host", "127.0.0.1")
                    .header(*header, "a")
                    .header(*header, "a")
                    .body(axum::body::Body::empty())
                    .unwrap();
                let response = routes.serve(request).await.unwrap();
                let status = response.status();
                let body = axum::body::to_bytes(response.into_body(), 64 * 1024).await.unwrap();
                let body = String::from_utf8_lossy(&body);
                if status != 400 || !body.contains("more than once") {
                    failures.push(format!("{path} with {header} ({}) twice: {status} {body}", declared.name));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // The registry's endpoints (what the tests and benchmarks ask): each is a route of its
    // provider (a request relayed by a proxy is refused there, 403, where a path no route
    // matches gets an empty 404), authenticated by a header the rules refuse twice, and every
    // provider has one.
    let presented = Presented {
        aws_authorization: HeaderValue::from_static("a"),
        imds_session: HeaderValue::from_static("s"),
        identity_header: HeaderValue::from_static("i"),
        role_name: emulator.identities().aws_role_arn.rsplit('/').next().unwrap().to_owned(),
        azure_resource: "https%3A%2F%2Fmanagement.azure.com%2F".to_owned(),
    };
    for endpoint in Endpoint::ALL {
        let declared = configure.declared.iter().find(|d| d.name == endpoint.provider());
        let declared =
            declared.unwrap_or_else(|| panic!("{endpoint:?}: no registered provider {}", endpoint.provider()));
        let request = endpoint.request(&presented);
        for (name, _) in &request.headers {
            let generic = keyless_provider::guard::SINGLE_HEADERS.contains(name);
            assert!(
                generic || declared.single_headers.contains(&name.as_str()),
                "{endpoint:?} is authenticated by {name}, which {} does not declare",
                declared.name
            );
        }
        let mut relayed = http::Request::builder().method(request.method).uri(request.path_and_query.as_str());
        for (name, value) in request.headers {
            relayed = relayed.header(name, value);
        }
        let relayed = relayed.header("host", "127.0.0.1").header("x-forwarded-for", "10.0.0.1");
        let response = routes.serve(relayed.body(axum::body::Body::empty()).unwrap()).await.unwrap();
        assert_eq!(
            response.status(),
            403,
            "{endpoint:?} ({}) is no route of {}",
            request.path_and_query,
            declared.name
        );
    }
    for declared in &configure.declared {
        assert!(Endpoint::ALL.iter().any(|e| e.provider() == declared.name), "{} has no endpoint", declared.name);
    }

    // Each provider's first exchange was throttled, and counted as such.
    let throttled = |name: &str| {
        let provider = format!("provider=\"{name}\"");
        ctx.metrics.encode().lines().any(|l| {
            l.starts_with("keyless_exchanges_total{") && l.contains(&provider) && l.contains("outcome=\"throttled\"")
        })
    };
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    for declared in &configure.declared {
        while !throttled(declared.name) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} counted no throttled exchange (codes {:?}):\n{}",
                declared.name,
                declared.throttling_codes,
                ctx.metrics.encode()
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

/// The "no valid credential" answer of every provider on every route it serves keeps
/// `NativeErrors::unavailable`'s contract for each error class: 503 (which every SDK retries)
/// while the failure may pass, never 503 nor a success when it will not, and the exchange's
/// message in the body either way.
#[tokio::test]
async fn every_provider_answers_no_valid_credential_by_error_class() {
    let state = tempfile::tempdir().unwrap();
    let emulator = keyless_emulator::start(keyless_emulator::EmulatorConfig::new(state.path())).await.unwrap();
    let ctx = context();
    let configure = configure_all(&emulator, state.path(), &ctx, true);
    let marker = "the exchange failed <marker>";
    let errors = [
        ExchangeError::retryable(marker),
        ExchangeError::throttled(marker, Some(std::time::Duration::from_secs(30))),
        ExchangeError::reread_token(marker),
        ExchangeError::terminal(marker).with_code("AccessDenied"),
    ];
    for (name, configured) in configure.configured {
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
                    assert_ne!(status, http::StatusCode::SERVICE_UNAVAILABLE, "{case}");
                } else {
                    assert_eq!(status, http::StatusCode::SERVICE_UNAVAILABLE, "{case}");
                }
                // Escaped in JSON bodies (`<` may become \u003c): the words are checked.
                assert!(body.contains("the exchange failed"), "{case}");
            }
        }
    }
}
