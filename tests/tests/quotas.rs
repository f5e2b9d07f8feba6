//! Fleet behaviour (SPEC 12, docs/fleet.md): `keyless serve` against `keyless emulate` whose
//! token services enforce a quota and answer over it as the clouds do (AWS 400 `Throttling`
//! without `Retry-After`, Google 429 `RESOURCE_EXHAUSTED` and Entra 429 with one). keyless is
//! throttled, honours `Retry-After`, keeps refreshing within the quota, and no client request
//! fails while a valid credential exists.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::time::Duration;

use keyless_test_support::emulate::{EmulatorProcess, SERVICES};
use keyless_test_support::load::Load;
use keyless_test_support::metrics;
use keyless_test_support::sidecar::{Sidecar, quick_refresh_cache};
use keyless_test_support::wait::wait_until;
use serde_json::json;

/// Credentials live 30 s; refreshes start between 3 s and 7.5 s (refresh_at 0.25, the default
/// jitter) and retry fast: without the quota every key would call its service every ~6 s.
const LIFETIME_SECS: u64 = 30;
/// One call per 10 s per service: every second refresh is throttled, Retry-After up to 10 s.
const PER_SECOND: f64 = 0.1;
const PROVIDERS: [&str; 3] = ["aws", "gcp", "azure"];

/// The `[cache]` of the fast refreshes and retries above; an exchange times out after 2 s.
fn cache() -> String {
    quick_refresh_cache("2s")
}

fn outcome(text: &str, provider: &str, outcome: &str) -> u64 {
    metrics::sum(text, "keyless_exchanges_total", &[("provider", provider), ("outcome", outcome)])
}

#[tokio::test]
async fn under_a_quota_keyless_is_throttled_honours_retry_after_and_no_request_fails() {
    let emulator = EmulatorProcess::start().await;
    emulator.control.fault_all(json!({ "lifetime_secs": LIFETIME_SECS })).await;
    let sidecar = Sidecar::all_clouds(&emulator, &emulator.url, &cache(), "info").await;
    let load = Load::start(&sidecar, 1, Duration::from_millis(20));
    emulator.control.quota_all(PER_SECOND, 1).await;
    let before = emulator.control.counters().await;

    // Throttled, then refreshed again within the quota (twice), for every provider.
    let phase = tokio::time::Instant::now();
    wait_until("every provider to be throttled", Duration::from_secs(120), || async {
        let text = sidecar.metrics().await;
        PROVIDERS.iter().all(|p| outcome(&text, p, "throttled") >= 1)
    })
    .await;
    let text = sidecar.metrics().await;
    let ok_at_throttling: Vec<u64> = PROVIDERS.iter().map(|p| outcome(&text, p, "success")).collect();
    wait_until("every provider to refresh twice within the quota", Duration::from_secs(120), || async {
        let text = sidecar.metrics().await;
        PROVIDERS.iter().zip(&ok_at_throttling).all(|(p, ok)| outcome(&text, p, "success") >= ok + 2)
    })
    .await;
    let seconds = phase.elapsed().as_secs_f64();
    let report = load.stop().await;

    let failures: Vec<_> = report.samples.iter().filter(|s| s.outcome.is_err()).collect();
    assert!(
        failures.is_empty(),
        "{} of {} requests failed; first: {:?}",
        failures.len(),
        report.samples.len(),
        failures.first()
    );
    let expired = report.samples.iter().find(|s| s.outcome.as_ref().is_ok_and(|expiry| *expiry < s.sent));
    assert!(expired.is_none(), "an expired credential was served: {expired:?}");

    // The emulator throttled every service keyless called, and Google's and Entra's Retry-After
    // (up to 10 s) was a floor: far fewer calls than the 1 s backoff alone would make.
    let quotas = emulator.control.quotas().await;
    let after = emulator.control.counters().await;
    for service in SERVICES {
        let calls = after[service].as_u64().unwrap() - before[service].as_u64().unwrap();
        eprintln!("quotas: {service}: {calls} calls in {seconds:.0} s, {} throttled", quotas[service]["throttled"]);
        if service != "aws-sts" {
            let bound = 2.0 * seconds * PER_SECOND + 4.0;
            assert!((calls as f64) <= bound, "{service}: {calls} calls in {seconds:.0} s: Retry-After not honoured");
        }
    }
    assert!(quotas["aws-sts"]["throttled"].as_u64().unwrap() >= 1, "{quotas}");
    assert!(quotas["azure-token"]["throttled"].as_u64().unwrap() >= 1, "{quotas}");
    assert!(sidecar.process.stop().await.success());
}
