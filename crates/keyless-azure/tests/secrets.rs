//! SPEC 6: no token, key or secret in any log line at any level. Every log line of an exchange,
//! a refused request and a served token is captured at TRACE (keyless, reqwest, hyper, rustls)
//! and searched for every secret the test saw.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex, PoisonError};

use axum::http::StatusCode;
use common::{ARM, Harness, IDENTITY_HEADER, json};
use keyless_emulator::{Cloud, Fault, Service};

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(PoisonError::into_inner)).into_owned()
    }
}

#[tokio::test]
async fn trace_logs_never_contain_a_token_or_the_identity_header() {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let h = Harness::start().await;
    let mut secrets = vec![
        IDENTITY_HEADER.to_owned(),
        std::fs::read_to_string(h.emulator.token_path(Cloud::Azure)).expect("subject token").trim().to_owned(),
    ];
    let (_, imds) = json(h.imds("https://vault.azure.net").await).await;
    let (_, app_service) = json(h.app_service(ARM).await).await;
    for body in [&imds, &app_service] {
        secrets.push(body["access_token"].as_str().expect("token").to_owned());
    }
    // Failure paths log too: a refused assertion and a retried outage.
    h.emulator.faults().fail_next(Service::AzureToken, 1, Fault::new(StatusCode::BAD_REQUEST).with_code("AADSTS70021"));
    assert_eq!(h.imds("https://storage.azure.com/").await.status(), 403);
    let wrong = h
        .http
        .get(h.url("/msi/token?api-version=2019-08-01&resource=x"))
        .header("X-IDENTITY-HEADER", "test-identity-header-0123456788")
        .send()
        .await
        .expect("answers");
    assert_eq!(wrong.status(), 403);

    let text = logs.text();
    assert!(text.contains("exchange"), "the exchanges were logged");
    for secret in &secrets {
        assert!(secret.len() > 20);
        // A JWT's signature alone identifies it; check the whole and each part.
        for part in std::iter::once(secret.as_str()).chain(secret.split('.').filter(|p| p.len() > 20)) {
            assert!(!text.contains(part), "a secret reached the logs");
        }
    }
}
