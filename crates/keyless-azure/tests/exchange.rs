//! The Entra ID exchange against the emulator: tokens that verify, single-flight, re-read on a
//! stale assertion, hints with the token's real claims, retries behind a still-valid token.

mod common;

use keyless_provider::Started as _;
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use common::{ARM, Harness, json};
use futures_util::future::join_all;
use keyless_core::CachePolicy;
use keyless_emulator::{Fault, MintClaims, Service};
use keyless_test_support::context::{context, fast_retries, patient, paused_context};
use keyless_test_support::wait::wait_until;

#[tokio::test]
async fn exchanged_token_verifies_with_the_resource_as_audience_and_the_client_as_appid() {
    let h = Harness::start().await;
    let client_id = h.env.emulator.identities().azure_client_id.clone();
    for resource in [ARM, "https://management.azure.com", "https://vault.azure.net"] {
        let (status, body) = json(h.imds(resource).await).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["resource"], resource);
        let token = body["access_token"].as_str().expect("token");
        h.verify(token, resource, &client_id).await;
    }
}

#[tokio::test]
async fn prewarmed_resource_is_served_without_an_exchange() {
    let h = Harness::start().await;
    let statuses = h.provider.readiness()[0].statuses();
    assert_eq!(statuses.len(), 1);
    assert!(statuses[0].ready());
    assert_eq!(statuses[0].identity, h.env.emulator.identities().azure_client_id);
    // What `/readyz` and `keyless exec` print after the identity: the resource, not a Debug struct.
    assert_eq!(statuses[0].key, format!("resource {ARM}"));
    let before = h.exchanges();
    assert_eq!(before, 1, "the pre-warm exchange");
    assert_eq!(h.imds(ARM).await.status(), 200);
    assert_eq!(h.exchanges(), before, "served from the pre-warmed cache");
}

#[tokio::test]
async fn concurrent_first_requests_for_a_new_resource_cause_one_exchange() {
    let h = Arc::new(Harness::start().await);
    let before = h.exchanges();
    let requests = (0..512).map(|i| {
        let h = h.clone();
        async move {
            // Both endpoints share the cache entry of one (client, scope).
            if i % 2 == 0 {
                h.imds("https://storage.azure.com/").await.status()
            } else {
                h.app_service("https://storage.azure.com/").await.status()
            }
        }
    });
    let statuses = join_all(requests).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(h.exchanges() - before, 1, "exactly one upstream exchange");
}

#[tokio::test]
async fn stale_assertion_rereads_the_token_and_retries_at_once() {
    // A backoff retry would come only after 60 s: success within the request proves the
    // immediate re-read-and-retry of AADSTS700024.
    let policy = CachePolicy {
        retry_min: Duration::from_secs(60),
        retry_max: Duration::from_secs(60),
        ..CachePolicy::default()
    };
    let h = Harness::start_with(context(policy), |_, c| c.resources = Some(Vec::new())).await;
    h.env.emulator.faults().fail_next(
        Service::AzureToken,
        1,
        Fault::new(StatusCode::BAD_REQUEST).with_code("AADSTS700024"),
    );
    let before = h.exchanges();
    let (status, body) = json(h.imds(ARM).await).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(h.exchanges() - before, 2, "the rejected call and its retry");
}

#[tokio::test]
async fn no_matching_federated_credential_hint_names_the_tokens_actual_claims() {
    let h = Harness::start_with(context(fast_retries()), |env, config| {
        let mut claims = MintClaims::new("api://AzureADTokenExchange");
        claims.sub = Some("system:serviceaccount:payments:api".to_owned());
        config.token_file = env.write("foreign-subject", &env.emulator.mint(claims));
        config.resources = Some(Vec::new());
    })
    .await;
    let (status, body) = json(h.imds(ARM).await).await;
    assert_eq!(status, 403, "{body}");
    let description = body["error_description"].as_str().expect("description");
    assert!(description.starts_with("AADSTS70021"), "{description}");
    let expected = format!(
        "no federated identity credential on app {} matches issuer {}, subject \
         system:serviceaccount:payments:api, audience api://AzureADTokenExchange",
        h.env.emulator.identities().azure_client_id,
        h.env.emulator.url()
    );
    assert!(description.contains(&expected), "{description}");
}

/// On the paused clock: the refresh, its retries and their backoff run in virtual time.
#[tokio::test(start_paused = true)]
async fn server_errors_are_retried_while_the_cached_token_keeps_being_served() {
    // Refresh after 360 s (10% of the emulator's 3599 s tokens), so a refresh meets the storm;
    // no refresh jitter, which would move it anywhere from 144 s on.
    let policy = patient(CachePolicy { refresh_at: 0.1, refresh_jitter: 0.0, ..fast_retries() });
    let h = Harness::start_with(paused_context(policy), |_, _| {}).await;
    let (status, first) = json(h.imds(ARM).await).await;
    assert_eq!(status, 200);
    let first_token = first["access_token"].clone();
    let storm = 4;
    h.env.emulator.faults().fail_next(Service::AzureToken, storm, Fault::new(StatusCode::SERVICE_UNAVAILABLE));
    let before = h.exchanges();
    // A request every second: each one during the storm is answered with the still-valid token;
    // the storm is over once the refresh got through (the failed attempts and one success).
    let mut served = 0;
    loop {
        let (status, body) = json(h.imds(ARM).await).await;
        assert_eq!(status, 200, "{body}");
        served += 1;
        if body["access_token"] != first_token {
            break;
        }
        assert!(served < 600, "the refresh never succeeded in 10 minutes");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(h.exchanges() - before, u64::from(storm) + 1, "the refresh was retried through the storm");
    assert!(served >= 300, "the storm met the refresh due at 360 s, not the start: {served} requests");
}

/// Real time: every attempt times out on a connection of its own, and tokio's paused clock
/// advances to the next timer (this 300 ms timeout) whenever the runtime waits for a new
/// connection's I/O, which would time out attempts that are not slow.
#[tokio::test]
async fn a_slow_entra_times_out_as_retryable_and_recovers() {
    let policy = CachePolicy {
        exchange_timeout: Duration::from_millis(300),
        request_wait: Duration::from_secs(2),
        ..fast_retries()
    };
    let h = Harness::start_with(context(policy), |_, c| c.resources = Some(Vec::new())).await;
    h.env.emulator.faults().set_latency(Service::AzureToken, Duration::from_secs(5));
    let asked = tokio::time::Instant::now();
    let (status, body) = json(h.imds(ARM).await).await;
    let waited = asked.elapsed();
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "temporarily_unavailable");
    // Answered by the attempt that timed out, not at the end of request_wait.
    assert!(waited >= Duration::from_millis(300) && waited < Duration::from_secs(2), "answered after {waited:?}");
    h.env.emulator.faults().clear(Service::AzureToken);
    wait_until("the token to be served once Entra ID is fast again", Duration::from_secs(10), || async {
        json(h.imds(ARM).await).await.0 == 200
    })
    .await;
}

#[tokio::test]
async fn an_untrusted_authority_certificate_points_at_ca_file() {
    let h = Harness::start_with(context(fast_retries()), |_, c| {
        c.ca_file = None;
        c.resources = Some(Vec::new());
    })
    .await;
    let (status, body) = json(h.imds(ARM).await).await;
    // An untrusted certificate does not pass by itself: terminal, so clients are told at once
    // (the same class in every provider: keyless_provider::upstream::transport_error).
    assert_eq!(status, 403, "{body}");
    let description = body["error_description"].as_str().expect("description");
    assert!(description.starts_with("UntrustedCertificate"), "{description}");
    assert!(description.contains("set azure.ca_file"), "{description}");
}
