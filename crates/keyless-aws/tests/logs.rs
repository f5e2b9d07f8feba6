//! SPEC section 6: no token, key or secret in any log line at any level, the SDK's included (its
//! orchestrator logs every request and response with `Debug` at trace level).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use keyless_core::CachePolicy;
use keyless_emulator::Cloud;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_logs_of_an_exchange_and_its_serving_hold_no_secret() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();

    let env = common::emulator().await;
    let ctx = common::context(CachePolicy::default());
    let provider = keyless_aws::start(env.config(), &ctx).await.unwrap();
    let cred = provider.cache().get(&()).await.expect("credential");
    let addr = common::serve(&provider).await;
    let auth = std::fs::read_to_string(env.path("auth-token")).unwrap();
    let response = common::http()
        .get(format!("http://{addr}/v1/credentials"))
        .header("Authorization", &auth)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("transmitting request"), "the SDK's trace lines were captured");
    assert!(logs.contains("exchange"), "the exchange line was captured");
    let subject_token = std::fs::read_to_string(env.emulator.token_path(Cloud::Aws)).unwrap();
    // The token's signature segment alone is unique enough to spot any partial leak.
    let signature = subject_token.trim().rsplit('.').next().unwrap();
    for (what, secret) in [
        ("subject token signature", signature),
        ("secret access key", cred.value.secret_access_key.expose().as_str()),
        ("session token", cred.value.session_token.expose().as_str()),
        ("authorization token", auth.as_str()),
    ] {
        assert!(!logs.contains(secret), "the {what} appears in the trace logs");
    }
}
