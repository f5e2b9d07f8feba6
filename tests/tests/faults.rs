//! The fault and load suite (the quality bars, docs/benchmarks.md, "survives"): `keyless serve` under continuous raw-HTTP
//! load on all five native endpoints while its upstream or its token file misbehaves. Zero client
//! requests may fail while a valid credential exists; once nothing valid remains, clients get the
//! native error and readiness turns red, and both recover by themselves with the upstream.
//!
//! The emulator caps credential lifetimes at a few seconds, so refreshes (and their failures)
//! happen within a test's run, and a credential can be watched to its end. Each test runs keyless
//! at trace level and checks that its whole log holds none of the secrets the clients were served.
//! Figures (requests, failures, latency) are printed for docs/reliability.md (`--no-capture`).
#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use keyless_test_support::clock::wall_clock;
use keyless_test_support::emulate::EmulatorProcess;
use keyless_test_support::load::{Endpoint, Load, LoadReport, Sample, Tally};
use keyless_test_support::logs::assert_holds_no_secret;
use keyless_test_support::proxy::{Proxy, ProxyMode};
use keyless_test_support::sidecar::{CONTAINER_AUTHORIZATION, IDENTITY_HEADER, Sidecar, quick_refresh_cache};
use keyless_test_support::wait::wait_until;
use serde_json::json;

/// Credential lifetime the emulator grants in these tests.
const LIFETIME_SECS: u64 = 20;
const PROVIDERS: [&str; 3] = ["aws", "gcp", "azure"];
/// One request every 5 ms per client: about 1000 requests a second over the five endpoints.
const PACE: Duration = Duration::from_millis(5);
const PHASE_DEADLINE: Duration = Duration::from_secs(30);

/// Fast refreshes (every 5 s at a 20 s lifetime) and quick retries: faults meet refreshes within
/// seconds. Exchanges time out after 1 s (the slow-upstream case).
fn fast_cache() -> String {
    quick_refresh_cache("1s")
}

/// A running emulator whose services issue short-lived credentials.
async fn short_lived_emulator() -> EmulatorProcess {
    let emulator = EmulatorProcess::start().await;
    emulator.control.fault_all(json!({ "lifetime_secs": LIFETIME_SECS })).await;
    emulator
}

/// Every provider's `(succeeded, failed)` exchange counts.
async fn exchange_counts(sidecar: &Sidecar) -> BTreeMap<&'static str, (u64, u64)> {
    let mut counts = BTreeMap::new();
    for provider in PROVIDERS {
        counts.insert(provider, sidecar.exchanges(provider).await);
    }
    counts
}

/// Waits until every provider has `failed` more failed exchanges than in `before` (the fault met
/// real refreshes), then returns the counts.
async fn wait_for_failed_refreshes(
    sidecar: &Sidecar,
    before: &BTreeMap<&'static str, (u64, u64)>,
    failed: u64,
    what: &str,
) -> BTreeMap<&'static str, (u64, u64)> {
    wait_until(what, PHASE_DEADLINE, || async {
        let now = exchange_counts(sidecar).await;
        PROVIDERS.iter().all(|p| now[p].1 >= before[p].1 + failed)
    })
    .await;
    exchange_counts(sidecar).await
}

/// Waits until every provider has a successful exchange more than in `before`.
async fn wait_for_successful_refreshes(sidecar: &Sidecar, before: &BTreeMap<&'static str, (u64, u64)>, what: &str) {
    wait_until(what, PHASE_DEADLINE, || async {
        let now = exchange_counts(sidecar).await;
        PROVIDERS.iter().all(|p| now[p].0 > before[p].0)
    })
    .await;
}

fn tally_between(samples: &[Sample], from: SystemTime, to: SystemTime) -> Tally {
    Tally::of(samples.iter().filter(|s| s.sent >= from && s.sent < to))
}

fn print_per_endpoint(test: &str, samples: &[Sample]) {
    for endpoint in Endpoint::ALL {
        eprintln!("{test}: {endpoint:?}: {}", Tally::of(samples.iter().filter(|s| s.endpoint == endpoint)));
    }
}

/// Every request succeeded with a credential that was still valid when it was sent.
fn assert_all_served(report: &LoadReport, sidecar: &Sidecar) {
    let failures: Vec<&Sample> = report.samples.iter().filter(|s| s.outcome.is_err()).collect();
    assert!(
        failures.is_empty(),
        "{} of {} requests failed; first: {:?}\n--- keyless\n{}",
        failures.len(),
        report.samples.len(),
        failures.first(),
        tail(&sidecar.logs())
    );
    for endpoint in Endpoint::ALL {
        let served = report.samples.iter().filter(|s| s.endpoint == endpoint).count();
        assert!(served >= 50, "{endpoint:?} got only {served} requests: the load did not run");
    }
    let expired = report.samples.iter().find(|s| s.outcome.as_ref().is_ok_and(|expiry| *expiry < s.sent));
    assert!(expired.is_none(), "an expired credential was served: {expired:?}");
}

/// The sidecar's trace-level log holds none of the secrets served or configured.
fn assert_logs_hold_no_secret(sidecar: &Sidecar, report: &LoadReport, subject_tokens: &[String]) {
    let logs = sidecar.logs();
    assert!(logs.contains("TRACE"), "the log is not at trace level");
    let mut secrets = report.secrets.clone();
    secrets.extend([CONTAINER_AUTHORIZATION.to_owned(), IDENTITY_HEADER.to_owned()]);
    secrets.extend(subject_tokens.iter().cloned());
    assert!(secrets.len() > 10, "too few secrets collected: {}", secrets.len());
    assert_holds_no_secret(&logs, &secrets, "keyless's trace log");
    eprintln!("secrets: {} distinct secrets checked against {} bytes of trace log", secrets.len(), logs.len());
}

fn subject_tokens(emulator: &EmulatorProcess) -> Vec<String> {
    PROVIDERS.iter().map(|cloud| std::fs::read_to_string(emulator.token_file(cloud)).unwrap()).collect()
}

fn tail(logs: &str) -> &str {
    &logs[logs.len().saturating_sub(8000)..]
}

/// 5xx storms, an upstream slower than `exchange_timeout`, malformed 200 answers, an upstream whose
/// certificate is not trusted, and a proxy that closes every connection: each meets real refreshes
/// of every provider, and then the upstream comes back.
#[tokio::test]
async fn every_endpoint_is_served_through_storms_timeouts_garbage_and_tls_failures() {
    let (emulator, impostor) = tokio::join!(short_lived_emulator(), EmulatorProcess::start());
    // Same address family and port space, a CA keyless does not trust: a TLS-intercepting proxy
    // that nobody configured, or a spoofed endpoint.
    let proxy = Proxy::start(ProxyMode::Forward(emulator.addr)).await;
    let sidecar = Sidecar::all_clouds(&emulator, &proxy.url(), &fast_cache(), "trace").await;
    let load = Load::start(&sidecar, 1, PACE);
    let test_started = wall_clock();

    let phases: [(&str, ProxyMode, Option<serde_json::Value>); 5] = [
        ("5xx storm", ProxyMode::Forward(emulator.addr), Some(json!({"fail_next": 1_000_000, "status": 503}))),
        (
            "slow upstream (3 s > exchange_timeout 1 s)",
            ProxyMode::Forward(emulator.addr),
            Some(json!({"latency_ms": 3000})),
        ),
        (
            "malformed 200 responses",
            ProxyMode::Forward(emulator.addr),
            Some(json!({"fail_next": 1_000_000, "malformed": true})),
        ),
        ("TLS: untrusted CA", ProxyMode::Forward(impostor.addr), None),
        ("TLS: connections closed", ProxyMode::Close, None),
    ];
    let mut windows = Vec::new();
    for (name, mode, fault) in phases {
        let before = exchange_counts(&sidecar).await;
        let started = wall_clock();
        proxy.set(mode);
        if let Some(fault) = fault {
            emulator.control.fault_all(fault).await;
        }
        let during = wait_for_failed_refreshes(&sidecar, &before, 2, &format!("refreshes to fail: {name}")).await;
        proxy.set(ProxyMode::Forward(emulator.addr));
        emulator.control.clear_faults().await;
        wait_for_successful_refreshes(&sidecar, &during, &format!("refreshes to recover after: {name}")).await;
        let failed: u64 = PROVIDERS.iter().map(|p| during[p].1 - before[p].1).sum();
        windows.push((name, started, wall_clock(), failed));
    }
    let report = load.stop().await;

    for (name, from, to, failed) in &windows {
        let took = to.duration_since(*from).unwrap_or_default().as_secs_f64();
        eprintln!(
            "faults: {name}: {took:.1} s, {failed} failed refreshes, {}",
            tally_between(&report.samples, *from, *to)
        );
    }
    eprintln!("faults: whole run: {}", tally_between(&report.samples, test_started, wall_clock()));
    print_per_endpoint("faults", &report.samples);
    assert_all_served(&report, &sidecar);
    // The client path never waits for the upstream: even with a 3 s upstream, answers are local.
    let slowest = Tally::of(&report.samples).max;
    assert!(slowest < Duration::from_secs(1), "a request took {slowest:?}: did it wait for the upstream?");
    assert_logs_hold_no_secret(&sidecar, &report, &subject_tokens(&emulator));
    assert!(sidecar.process.stop().await.success());
}

/// The upstream goes down for good while every credential is fresh: each is served to its last
/// second; then clients get the native error and `/readyz` turns red; when the upstream returns,
/// both recover without a restart.
#[tokio::test]
async fn each_credential_is_served_to_its_end_then_errors_are_native_and_recovery_is_automatic() {
    let emulator = short_lived_emulator().await;
    let cache = "retry_min = \"100ms\"\nretry_max = \"1s\"\nexchange_timeout = \"1s\"\nrequest_wait = \"1s\"";
    let sidecar = Sidecar::all_clouds(&emulator, &emulator.url, cache, "trace").await;
    let load = Load::start(&sidecar, 1, PACE);
    let down = wall_clock();
    emulator.control.fault_all(json!({"fail_next": 1_000_000, "status": 503})).await;

    wait_until(
        "/readyz to turn red once the credentials expire",
        PHASE_DEADLINE + Duration::from_secs(LIFETIME_SECS),
        || async { sidecar.readyz().await == 503 },
    )
    .await;
    let red = wall_clock();
    wait_until("every endpoint to answer with an error", PHASE_DEADLINE, || async {
        Endpoint::ALL.iter().all(|e| load.count(|s| s.endpoint == *e && s.outcome.is_err()) >= 3)
    })
    .await;
    let up = wall_clock();
    emulator.control.clear_faults().await;
    wait_until("/readyz to recover by itself", PHASE_DEADLINE, || async { sidecar.readyz().await == 200 }).await;
    let green = wall_clock();
    wait_until("every endpoint to serve again", PHASE_DEADLINE, || async {
        Endpoint::ALL.iter().all(|e| load.count(|s| s.endpoint == *e && s.sent >= up && s.outcome.is_ok()) >= 3)
    })
    .await;
    let report = load.stop().await;

    let secs = |t: SystemTime| t.duration_since(down).unwrap_or_default().as_secs_f64();
    for endpoint in Endpoint::ALL {
        let mine: Vec<&Sample> = report.samples.iter().filter(|s| s.endpoint == endpoint).collect();
        // Answered before the upstream came back (a request waiting at that moment may get a new one).
        let outage: Vec<&&Sample> = mine.iter().filter(|s| s.sent + s.took < up).collect();
        // The last credential fetched before the outage: nothing newer could be issued during it.
        let last_expiry = outage.iter().filter_map(|s| s.outcome.as_ref().ok()).max().copied().unwrap();
        let last_served = outage.iter().filter(|s| s.outcome.is_ok()).map(|s| s.sent).max().unwrap();
        let first_failure = outage.iter().filter(|s| s.outcome.is_err()).map(|s| s.sent).min().unwrap();
        // GCE's `expires_in` is whole seconds: the expiry the client computes may be up to 1 s early.
        let slack = Duration::from_millis(1500);
        assert!(
            first_failure + slack >= last_expiry,
            "{endpoint:?}: a request failed {:?} before the credential expired",
            last_expiry.duration_since(first_failure).unwrap_or_default()
        );
        assert!(last_served + slack >= last_expiry, "{endpoint:?}: the credential was not served to its end");
        // Expiries are whole seconds on the wire while keyless holds sub-second ones: a credential
        // may be served up to a second past the second it advertises, never more.
        let late = outage.iter().filter(|s| s.outcome.as_ref().is_ok_and(|e| s.sent > *e + Duration::from_secs(1)));
        assert_eq!(late.count(), 0, "{endpoint:?}: a credential was served after it expired");
        for sample in &mine {
            if let Err((status, body)) = &sample.outcome {
                assert!(endpoint.is_native_error(*status, body), "{endpoint:?}: not the native error: {status} {body}");
            }
        }
        let recovered = mine.iter().filter(|s| s.sent >= up && s.outcome.is_ok()).map(|s| s.sent).min().unwrap();
        eprintln!(
            "expiry: {endpoint:?}: outage {} ({} before expiry, all served); expiry at +{:.1} s, last served at \
             +{:.1} s, first native error at +{:.1} s; upstream back at +{:.1} s, served again at +{:.1} s",
            Tally::of(outage.iter().copied().copied()),
            Tally::of(outage.iter().filter(|s| s.sent < last_expiry).copied().copied()).requests,
            secs(last_expiry),
            secs(last_served),
            secs(first_failure),
            secs(up),
            secs(recovered),
        );
    }
    eprintln!("expiry: /readyz red at +{:.1} s, green again at +{:.1} s", secs(red), secs(green));
    assert_logs_hold_no_secret(&sidecar, &report, &subject_tokens(&emulator));
    assert!(sidecar.process.stop().await.success());
}

/// Hundreds of kubelet-style rotations, interleaved with the token file deleted, emptied and
/// overwritten with garbage, while refreshes keep happening: not one client request fails, and
/// every refresh uses a good token.
#[tokio::test]
async fn token_file_deleted_emptied_garbage_and_rotated_hundreds_of_times_under_load() {
    let emulator = short_lived_emulator().await;
    let sidecar = Sidecar::all_clouds(&emulator, &emulator.url, &fast_cache(), "trace").await;
    let load = Load::start(&sidecar, 1, PACE);
    let before = exchange_counts(&sidecar).await;
    let started = wall_clock();
    let mut seen_tokens = std::collections::BTreeSet::new();
    let (mut rotations, mut corruptions) = (0, 0);
    // One step every 20 ms: 600 steps span about three refresh periods of every provider.
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    for step in 0..600 {
        tick.tick().await;
        let token_files = PROVIDERS.map(|cloud| emulator.token_file(cloud));
        match step % 6 {
            0 | 2 | 4 => {
                emulator.control.rotate().await;
                rotations += 1;
                seen_tokens.extend(token_files.iter().map(|f| std::fs::read_to_string(f).unwrap()));
            }
            // Through the symlink, in place: what a non-atomic writer leaves half-way.
            1 => token_files.iter().for_each(|f| std::fs::write(f, b"").unwrap()),
            3 => token_files.iter().for_each(|f| std::fs::write(f, b"this is not a JWT\n").unwrap()),
            // The user-visible symlink itself; the next rotation recreates it, as the kubelet does.
            _ => token_files.iter().for_each(|f| std::fs::remove_file(f).unwrap()),
        }
        corruptions += usize::from(step % 2 == 1);
    }
    emulator.control.rotate().await;
    let during = exchange_counts(&sidecar).await;
    wait_for_successful_refreshes(&sidecar, &during, "a refresh after the last rotation").await;
    let report = load.stop().await;

    let after = exchange_counts(&sidecar).await;
    let refreshes: u64 = PROVIDERS.iter().map(|p| during[p].0 - before[p].0).sum();
    let failed: u64 = PROVIDERS.iter().map(|p| after[p].1 - before[p].1).sum();
    eprintln!(
        "token file: {rotations} rotations and {corruptions} corruptions (deleted, emptied, garbage) in {:.1} s, \
         {refreshes} successful refreshes meanwhile, {failed} failed exchanges; {}",
        wall_clock().duration_since(started).unwrap_or_default().as_secs_f64(),
        Tally::of(&report.samples)
    );
    print_per_endpoint("token file", &report.samples);
    assert_all_served(&report, &sidecar);
    assert!(
        PROVIDERS.iter().all(|p| during[p].0 >= before[p].0 + 2),
        "too few refreshes happened during the storm: {before:?} -> {during:?}"
    );
    assert_eq!(failed, 0, "an exchange used a bad token (the last good one must be kept)");
    let tokens: Vec<String> = seen_tokens.into_iter().collect();
    assert_logs_hold_no_secret(&sidecar, &report, &tokens);
    assert!(sidecar.process.stop().await.success());
}

/// SIGTERM while a request waits for a slow exchange: keyless stops accepting connections at once,
/// finishes the request with 200, and exits 0.
#[tokio::test]
async fn sigterm_mid_request_finishes_the_request_and_exits_cleanly() {
    let emulator = EmulatorProcess::start().await;
    let cache = "request_wait = \"10s\"";
    let sidecar = Sidecar::all_clouds(&emulator, &emulator.url, cache, "debug").await;
    emulator.control.fault(json!({"service": "gcp-sts", "latency_ms": 3000})).await;
    let sts_calls = emulator.control.counter("gcp-sts").await;

    // A scope set nobody asked for yet: the request has to wait for its exchange.
    let url = format!(
        "http://{}/computeMetadata/v1/instance/service-accounts/default/token?scopes=https://www.googleapis.com/auth/pubsub",
        sidecar.listen
    );
    let started = tokio::time::Instant::now();
    let in_flight = tokio::spawn(async move {
        let http = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(30)).build().unwrap();
        let response = http.get(url).header("Metadata-Flavor", "Google").send().await.unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    });
    wait_until("the exchange to reach the slow upstream", PHASE_DEADLINE, || async {
        emulator.control.counter("gcp-sts").await > sts_calls
    })
    .await;
    sidecar.process.terminate();
    let listen = sidecar.listen;
    wait_until("new connections to be refused", Duration::from_secs(5), || async move {
        tokio::net::TcpStream::connect(listen).await.is_err()
    })
    .await;
    let refused_after = started.elapsed();
    assert!(!in_flight.is_finished(), "the request finished before shutdown began: nothing was in flight");

    let (status, body) = in_flight.await.unwrap();
    let took = started.elapsed();
    assert_eq!(status, 200, "the in-flight request did not complete: {body}\n{}", sidecar.logs());
    assert!(body.contains("access_token"), "{body}");
    let logs_before_exit = sidecar.logs();
    let exit = sidecar.process.wait().await;
    assert!(exit.success(), "keyless exited with {exit:?}\n{logs_before_exit}");
    eprintln!(
        "sigterm: new connections refused {:.2} s after the request started; the in-flight request completed \
         200 after {:.2} s; exit code {:?}",
        refused_after.as_secs_f64(),
        took.as_secs_f64(),
        exit.code()
    );
}
