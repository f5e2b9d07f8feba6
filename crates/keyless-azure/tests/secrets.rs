//! the security rules, docs/reliability.md: no token, key or secret in any log line at any level. Every log line of an exchange,
//! a refused request and a served token is captured at TRACE (keyless, reqwest, hyper, rustls)
//! and searched for every secret the test saw.

mod common;

use axum::http::StatusCode;
use common::{ARM, Harness, IDENTITY_HEADER, json};
use keyless_emulator::{Cloud, Fault, Service};
use keyless_test_support::logs::{assert_holds_no_secret, capture_logs};

#[tokio::test]
async fn trace_logs_never_contain_a_token_or_the_identity_header() {
    let logs = capture_logs();

    let h = Harness::start().await;
    let mut secrets = vec![
        IDENTITY_HEADER.to_owned(),
        std::fs::read_to_string(h.env.emulator.token_path(Cloud::Azure)).expect("subject token").trim().to_owned(),
    ];
    let (_, imds) = json(h.imds("https://vault.azure.net").await).await;
    let (_, app_service) = json(h.app_service(ARM).await).await;
    for body in [&imds, &app_service] {
        secrets.push(body["access_token"].as_str().expect("token").to_owned());
    }
    // Failure paths log too: a refused assertion and a retried outage.
    h.env.emulator.faults().fail_next(
        Service::AzureToken,
        1,
        Fault::new(StatusCode::BAD_REQUEST).with_code("AADSTS70021"),
    );
    assert_eq!(h.imds("https://storage.azure.com/").await.status(), 403);
    let wrong = h
        .http
        .get(h.url("/msi/token?api-version=2019-08-01&resource=x"))
        .header("X-IDENTITY-HEADER", "test-identity-header-0123456788")
        .send()
        .await
        .expect("answers");
    assert_eq!(wrong.status(), 403);

    let text = logs.all_threads();
    assert!(text.contains("exchange"), "the exchanges were logged");
    // Each secret whole and in parts (a JWT's signature alone identifies it).
    assert_holds_no_secret(&text, &secrets, "the trace logs");
}
