//! the security rules, docs/reliability.md: no token, key or secret in any log line at any level, the SDK's included (its
//! orchestrator logs every request and response with `Debug` at trace level).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::AwsDev as _;
use keyless_core::CachePolicy;
use keyless_emulator::Cloud;
use keyless_test_support::clients;
use keyless_test_support::context::context;
use keyless_test_support::emulator::EmulatorEnv;
use keyless_test_support::logs::{assert_no_secret, capture_logs};
use keyless_test_support::serving::serve;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_logs_of_an_exchange_and_its_serving_hold_no_secret() {
    let captured = capture_logs();

    let env = EmulatorEnv::start().await;
    let ctx = context(CachePolicy::default());
    let provider = keyless_aws::start(env.config(), &ctx).await.unwrap();
    let cred = provider.cache().get(&()).await.expect("credential");
    let served = serve("aws", &provider).await;
    let auth = std::fs::read_to_string(env.path("auth-token")).unwrap();
    let response =
        clients::loopback().get(served.url("/v1/credentials")).header("Authorization", &auth).send().await.unwrap();
    assert_eq!(response.status(), 200);

    // The SDK's and hyper's lines come from the runtime's worker threads.
    let logs = captured.all_threads();
    assert!(logs.contains("transmitting request"), "the SDK's trace lines were captured");
    assert!(logs.contains("exchange"), "the exchange line was captured");
    let subject_token = std::fs::read_to_string(env.emulator.token_path(Cloud::Aws)).unwrap();
    // assert_no_secret looks for the whole and for parts: a JWT's signature alone identifies it.
    for (what, secret) in [
        ("subject token", subject_token.trim()),
        ("secret access key", cred.value.secret_access_key.expose().as_str()),
        ("session token", cred.value.session_token.expose().as_str()),
        ("authorization token", auth.as_str()),
    ] {
        assert_no_secret(&logs, secret, &format!("the trace logs (the {what})"));
    }
}
