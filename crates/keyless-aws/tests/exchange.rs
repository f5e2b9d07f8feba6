//! The exchange against the emulated STS: success, the re-read path, hints, and storms.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use axum::http::StatusCode;
use futures_util::StreamExt as _;
use keyless_aws::{AwsCredentials, credential_process_json, fetch_once};
use keyless_core::{CachePolicy, ErrorClass};
use keyless_emulator::{Fault, Service};
use keyless_provider::Started as _;
use keyless_test_support::child::{ChildTest, child_env, is_child};
use keyless_test_support::clients;
use keyless_test_support::clock::is_whole_second_utc;
use keyless_test_support::context::{context, fast_retries, patient, paused_context};
use keyless_test_support::emulator::EmulatorEnv;
use keyless_test_support::serving::serve;
use keyless_test_support::wait::wait_until;

use common::AwsDev as _;

#[tokio::test]
async fn exchanges_the_projected_token_for_role_credentials() {
    let env = EmulatorEnv::start().await;
    let ctx = context(CachePolicy::default());
    let provider = keyless_aws::start(env.config(), &ctx).await.unwrap();
    let cred = provider.cache().get(&()).await.expect("credential");
    let c = &cred.value;
    assert!(c.access_key_id.starts_with("ASIA"));
    assert_eq!(c.assumed_role_arn.as_deref(), Some("arn:aws:sts::123456789012:assumed-role/keyless-dev/keyless-test"));
    assert_eq!(c.account_id, "123456789012");
    let lifetime = c.expiration.duration_since(c.last_updated).unwrap();
    assert!(lifetime > Duration::from_secs(3500) && lifetime <= Duration::from_secs(3600), "{lifetime:?}");
    assert_eq!(cred.expires_at, c.expiration);
    let statuses = provider.readiness()[0].statuses();
    assert!(statuses.iter().all(|s| s.ready()), "{statuses:?}");
    assert_eq!(env.emulator.counters().aws_sts, 1, "pre-warm and get share one exchange");
}

#[tokio::test]
async fn an_invalid_identity_token_answer_rereads_the_token_and_retries_once() {
    let env = EmulatorEnv::start().await;
    env.emulator.faults().fail_next(
        Service::AwsSts,
        1,
        Fault::new(StatusCode::BAD_REQUEST).with_code("InvalidIdentityToken"),
    );
    let ctx = context(fast_retries());
    let provider = keyless_aws::start(env.config(), &ctx).await.unwrap();
    let cred = provider.cache().get(&()).await.expect("the retry with the re-read token succeeds");
    assert!(cred.value.access_key_id.starts_with("ASIA"));
    assert_eq!(env.emulator.counters().aws_sts, 2, "one rejected call, one retry");
}

#[tokio::test]
async fn access_denied_is_terminal_and_its_hint_shows_the_tokens_actual_sub() {
    let env = EmulatorEnv::start().await;
    let mut config = env.config();
    config.token_file = env.minted_token_file("other-sa-token", &env.audience(), |c| {
        c.sub = Some("system:serviceaccount:payments:api".to_owned());
    });
    let ctx = context(fast_retries());
    let provider = keyless_aws::start(config, &ctx).await.unwrap();
    let err = provider.cache().get(&()).await.expect_err("the trust policy refuses this subject");
    assert_eq!(err.class, ErrorClass::Terminal);
    assert_eq!(err.code.as_deref(), Some("AccessDenied"));
    assert!(!err.untrusted_issuer, "the issuer is trusted, the subject is not");
    assert!(err.request_id.is_some(), "the upstream request id is kept");
    let hint = err.hint.clone().expect("a hint");
    let issuer = env.emulator.url().trim_start_matches("https://").to_owned();
    assert!(hint.contains("sub=system:serviceaccount:payments:api"), "{hint}");
    assert!(hint.contains("aud=sts.amazonaws.com"), "{hint}");
    assert!(hint.contains(&format!("\"{issuer}:sub\": \"system:serviceaccount:payments:api\"")), "{hint}");
    assert!(hint.contains(&format!("oidc-provider/{issuer}")), "{hint}");
    assert!(hint.contains(&env.role_arn()), "{hint}");
    let statuses = provider.readiness()[0].statuses();
    assert!(statuses.iter().all(|s| !s.ready()), "readiness is red");
}

#[tokio::test]
async fn a_wrong_audience_is_reported_with_the_tokens_audience() {
    let env = EmulatorEnv::start().await;
    let mut config = env.config();
    config.token_file = env
        .minted_token_file("wrong-aud-token", &env.audience(), |c| c.aud = vec!["api://AzureADTokenExchange".into()]);
    let ctx = context(fast_retries());
    let err = fetch_once(&config, &ctx).await.expect_err("the OIDC provider does not list this audience");
    let shown = err.to_string();
    assert!(shown.contains("InvalidIdentityToken"), "{shown}");
    assert!(shown.contains("aud=[api://AzureADTokenExchange]"), "{shown}");
    assert_eq!(env.emulator.counters().aws_sts, 2, "re-read once, then give up");
}

/// STS has no OIDC provider for the token's issuer: the classifier marks it (what `keyless check`
/// questions before proposing to trust that issuer), and it is terminal.
#[tokio::test]
async fn an_issuer_without_an_oidc_provider_is_marked_untrusted() {
    let env = EmulatorEnv::start().await;
    let mut config = env.config();
    config.token_file =
        env.minted_token_file("foreign-token", &env.audience(), |c| c.iss = Some("https://evil.example.com".into()));
    let provider = keyless_aws::start(config, &context(fast_retries())).await.unwrap();
    let err = provider.cache().get(&()).await.expect_err("no OIDC provider for this issuer");
    assert!(err.message.contains("No OpenIDConnect provider found"), "{err:?}");
    assert!(err.untrusted_issuer, "{err:?}");
    assert_eq!(err.class, ErrorClass::Terminal);
}

/// On the paused clock: refreshes, retries and their backoff run in virtual time, the emulator and
/// the clients in the same runtime.
#[tokio::test(start_paused = true)]
async fn a_5xx_storm_is_retried_while_the_valid_credential_keeps_being_served() {
    let env = EmulatorEnv::start().await;
    // Refresh after 90 s (10% of the 15-minute lifetime, no jitter), so the storm hits a refresh.
    let ctx = paused_context(patient(CachePolicy { refresh_at: 0.1, refresh_jitter: 0.0, ..fast_retries() }));
    let mut config = env.config();
    config.duration = Duration::from_secs(900);
    let provider = keyless_aws::start(config, &ctx).await.unwrap();
    let first = provider.cache().get(&()).await.expect("pre-warmed");
    const STORM: u64 = 8;
    env.emulator.faults().fail_next(Service::AwsSts, STORM as u32, Fault::new(StatusCode::SERVICE_UNAVAILABLE));
    let served = serve("aws", &provider).await;
    let token = std::fs::read_to_string(env.path("auth-token")).unwrap();
    let http = clients::loopback();
    let url = served.url("/v1/credentials");
    // Clients ask every second until the storm is over: each gets the credential held.
    let mut served_during_storm = 0;
    while env.emulator.counters().aws_sts <= STORM {
        let response = http.get(&url).header("Authorization", &token).send().await.unwrap();
        assert_eq!(response.status(), 200, "served while STS fails");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["AccessKeyId"], first.value.access_key_id.as_str());
        served_during_storm += 1;
        assert!(served_during_storm < 300, "the storm was not retried through in 5 minutes");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // The storm met the refresh due at 90 s, not a cold start.
    assert!(served_during_storm >= 60, "served only {served_during_storm} times before the storm ended");
    wait_until("a fresh credential after the storm", Duration::from_secs(30), || async {
        provider.cache().get(&()).await.expect("valid throughout").value.access_key_id != first.value.access_key_id
    })
    .await;
    let fresh = provider.cache().get(&()).await.unwrap();
    // The emulator issues by real time, of which little passed: an expiry at least as late.
    assert!(fresh.expires_at >= first.expires_at);
    assert_eq!(env.emulator.counters().aws_sts, 1 + STORM + 1, "the pre-warm, the storm, one success");
}

#[tokio::test]
async fn sts_error_codes_are_classified_per_protocol_with_hints() {
    let env = EmulatorEnv::start().await;
    let ctx = context(fast_retries());
    let cases = [
        (StatusCode::BAD_REQUEST, "IDPCommunicationError", ErrorClass::Retryable),
        (StatusCode::BAD_REQUEST, "Throttling", ErrorClass::Throttled),
        (StatusCode::BAD_GATEWAY, "InternalFailure", ErrorClass::Retryable),
        (StatusCode::BAD_REQUEST, "ExpiredTokenException", ErrorClass::RereadToken),
        (StatusCode::FORBIDDEN, "IDPRejectedClaim", ErrorClass::Terminal),
        (StatusCode::BAD_REQUEST, "MalformedPolicyDocument", ErrorClass::Terminal),
        (StatusCode::BAD_REQUEST, "PackedPolicyTooLarge", ErrorClass::Terminal),
        (StatusCode::FORBIDDEN, "RegionDisabledException", ErrorClass::Terminal),
        (StatusCode::BAD_REQUEST, "ValidationError", ErrorClass::Terminal),
    ];
    for (status, code, class) in cases {
        // Two failures: fetch_once re-reads and retries once on the token-rejected class.
        env.emulator.faults().fail_next(Service::AwsSts, 2, Fault::new(status).with_code(code));
        let err = fetch_once(&env.config(), &ctx).await.expect_err(code);
        env.emulator.faults().clear(Service::AwsSts);
        let keyless_aws::ConfigError::Exchange(err) = err else { panic!("{code}: {err}") };
        assert_eq!((err.code.as_deref(), err.class), (Some(code), class), "{err}");
        assert!(err.hint.is_some(), "{code} has a hint");
    }
}

#[tokio::test]
async fn an_unreachable_sts_is_retryable_with_a_network_hint() {
    let env = EmulatorEnv::start().await;
    let mut config = env.config();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    config.sts_endpoint = Some(format!("https://{closed}"));
    let ctx = context(fast_retries());
    let err = fetch_once(&config, &ctx).await.expect_err("nothing listens there");
    let keyless_aws::ConfigError::Exchange(err) = err else { panic!("{err}") };
    assert_eq!(err.class, ErrorClass::Retryable);
    assert_eq!(err.code.as_deref(), Some("UpstreamUnreachable"), "{err}");
    assert!(err.hint.as_deref().unwrap_or_default().contains("HTTPS_PROXY"), "{err}");
}

/// An STS endpoint (a misbehaving proxy) answering 200 with a body of 32 MiB: the SDK's read
/// stops at `keyless_provider::upstream::MAX_BODY` with the same error the other clouds give,
/// instead of holding the whole body in memory. A hand-written server: the emulator cannot send
/// an answer that large.
#[tokio::test]
async fn an_sts_answer_larger_than_the_body_bound_is_refused_unread() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const CHUNK: usize = 64 * 1024;
    const CHUNKS: usize = 512;
    let sent = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&sent);
    let app = axum::Router::new().route(
        "/",
        axum::routing::post(move || {
            let counted = Arc::clone(&counted);
            let chunks = futures_util::stream::iter(0..CHUNKS).map(move |_| {
                counted.fetch_add(CHUNK, Ordering::Relaxed);
                Ok::<_, std::convert::Infallible>(axum::body::Bytes::from(vec![b' '; CHUNK]))
            });
            async move { ([("content-type", "text/xml")], axum::body::Body::from_stream(chunks)) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let env = EmulatorEnv::start().await;
    let mut config = env.config();
    config.sts_endpoint = Some(format!("http://{addr}"));
    let err = fetch_once(&config, &context(fast_retries())).await.expect_err("an answer over the bound");
    let keyless_aws::ConfigError::Exchange(err) = err else { panic!("{err}") };
    assert_eq!(err.code.as_deref(), Some("UpstreamResponseTooLarge"), "{err}");
    assert_eq!(err.class, ErrorClass::Retryable, "{err}");
    assert!(err.message.contains(&format!("more than {} bytes", keyless_provider::upstream::MAX_BODY)), "{err}");
    let sent = sent.load(Ordering::Relaxed);
    assert!(sent < CHUNK * CHUNKS / 4, "the server produced {sent} bytes: the answer was read on");
}

#[tokio::test]
async fn fetch_once_prints_credential_process_json() {
    let env = EmulatorEnv::start().await;
    let ctx = context(CachePolicy::default());
    let issued = fetch_once(&env.config(), &ctx).await.expect("exchange");
    assert!(issued.request_id.is_some());
    let json: serde_json::Value = serde_json::from_str(&credential_process_json(&issued.credential.value)).unwrap();
    assert_eq!(json["Version"], 1);
    assert_eq!(json["AccountId"], "123456789012");
    assert!(is_whole_second_utc(json["Expiration"].as_str().unwrap()), "{json}");
    let parsed: AwsCredentials = AwsCredentials::from_container_json(
        &serde_json::json!({
            "AccessKeyId": json["AccessKeyId"],
            "SecretAccessKey": json["SecretAccessKey"],
            "Token": json["SessionToken"],
            "Expiration": json["Expiration"],
        })
        .to_string(),
    )
    .unwrap();
    assert_eq!(parsed.access_key_id, issued.credential.value.access_key_id);
}

#[tokio::test]
async fn a_loopback_sts_endpoint_is_reached_directly_even_with_https_proxy_set() {
    if is_child(PROXIED_TEST) {
        return proxied_fetch_child().await;
    }
    let env = EmulatorEnv::start().await;
    let dead_proxy = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    // The proxy settings come from the process env only: run the exchange in a child process.
    let stdout = ChildTest::new(PROXIED_TEST)
        .env("HTTPS_PROXY", format!("http://{dead_proxy}"))
        .env("https_proxy", format!("http://{dead_proxy}"))
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .env("KEYLESS_TEST_TOKEN_FILE", env.emulator.token_path(keyless_emulator::Cloud::Aws))
        .env("KEYLESS_TEST_ROLE_ARN", env.role_arn())
        .env("KEYLESS_TEST_EMULATOR_URL", env.emulator.url())
        .env("KEYLESS_TEST_EMULATOR_CA", env.ca())
        .run(String::new)
        .await;
    assert!(stdout.contains("exchanged: ASIA"), "{stdout}");
}

const PROXIED_TEST: &str = "a_loopback_sts_endpoint_is_reached_directly_even_with_https_proxy_set";

/// The child of the test above: one exchange with the proxy variables set.
#[allow(clippy::print_stdout)] // the child's report to its parent
async fn proxied_fetch_child() {
    let var = |name: &str| child_env(PROXIED_TEST, name);
    let mut config = keyless_aws::Config::new(var("KEYLESS_TEST_TOKEN_FILE"), var("KEYLESS_TEST_ROLE_ARN"));
    config.sts_endpoint = Some(var("KEYLESS_TEST_EMULATOR_URL"));
    config.ca_file = Some(var("KEYLESS_TEST_EMULATOR_CA").into());
    let issued = fetch_once(&config, &context(CachePolicy::default())).await.expect("exchange");
    println!("exchanged: {}", &issued.credential.value.access_key_id[..4]);
}
