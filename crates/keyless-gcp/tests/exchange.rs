//! The exchange against the emulated STS and IAM Credentials, seen through the metadata server.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use keyless_provider::Started as _;
use std::time::Duration;

use axum::http::StatusCode;
use common::{Harness, paused};
use keyless_emulator::{Cloud, Fault, MintClaims, Service};
use keyless_test_support::kubelet;
use keyless_test_support::logs::{assert_no_secret, capture_logs};

const CLOUD_PLATFORM: &str = "https://www.googleapis.com/auth/cloud-platform";
const READ_ONLY: &str = "https://www.googleapis.com/auth/devstorage.read_only";

#[tokio::test]
async fn serves_an_impersonated_access_token_that_tokeninfo_accepts() {
    let h = Harness::start(|_, _| {}).await;
    let token = h.access_token("").await;
    let (status, info) = h.tokeninfo(&token).await;
    assert_eq!(status, 200, "{info}");
    assert_eq!(info["email"], h.env.emulator.identities().gcp_service_account);
    assert_eq!(info["scope"], CLOUD_PLATFORM);
    let counters = h.env.emulator.counters();
    assert_eq!((counters.gcp_sts, counters.gcp_iam), (1, 1));
}

#[tokio::test]
async fn serves_the_federated_token_directly_without_a_service_account() {
    let h = Harness::start(|c, _| c.service_account = None).await;
    let token = h.access_token("").await;
    let (status, info) = h.tokeninfo(&token).await;
    assert_eq!(status, 200, "{info}");
    assert_eq!(info["aud"], h.env.emulator.identities().gcp_audience());
    assert_eq!(info.get("email"), None);
    let counters = h.env.emulator.counters();
    assert_eq!((counters.gcp_sts, counters.gcp_iam), (1, 0));
    // The federated identity is named like GKE's: PROJECT_ID.svc.id.goog.
    let email = h.get("/computeMetadata/v1/instance/service-accounts/default/email").await;
    assert_eq!(email.text().await.unwrap(), "keyless-dev.svc.id.goog");
}

#[tokio::test]
async fn other_scopes_get_their_own_token_and_scope_order_does_not_matter() {
    let h = Harness::start(|_, _| {}).await;
    let default = h.access_token("").await;
    let read_only = h.access_token(&format!("?scopes={READ_ONLY},{CLOUD_PLATFORM}")).await;
    assert_ne!(default, read_only);
    let (_, info) = h.tokeninfo(&read_only).await;
    assert_eq!(info["scope"], format!("{CLOUD_PLATFORM} {READ_ONLY}"));
    let counters = h.env.emulator.counters();
    assert_eq!((counters.gcp_sts, counters.gcp_iam), (2, 2));

    let reordered = h.access_token(&format!("?scopes={CLOUD_PLATFORM}&scopes={READ_ONLY}")).await;
    assert_eq!(reordered, read_only);
    assert_eq!(h.env.emulator.counters().gcp_iam, 2);
}

#[tokio::test]
async fn id_token_verifies_against_the_emulator_certs_with_the_requested_audience() {
    let h = Harness::start(|_, _| {}).await;
    let audience = "https://backend.example.com/api";
    let response = h
        .get(&format!("/computeMetadata/v1/instance/service-accounts/default/identity?audience={audience}&format=full"))
        .await;
    assert_eq!(response.status(), 200);
    let jwt = response.text().await.unwrap();
    let claims = h.verify_id_token(&jwt, audience).await;
    assert_eq!(claims["aud"], audience);
    assert_eq!(claims["email"], h.env.emulator.identities().gcp_service_account);
}

#[tokio::test]
async fn configured_id_token_audiences_are_pre_warmed_and_count_for_readiness() {
    let h = Harness::start(|c, _| c.id_token_audiences = vec!["https://warm.example".into()]).await;
    let statuses = h.provider.readiness()[0].statuses();
    assert_eq!(statuses.len(), 2, "{statuses:?}");
    // Requesting it now finds it cached or in flight: one generateIdToken, however many asks.
    for _ in 0..3 {
        let response =
            h.get("/computeMetadata/v1/instance/service-accounts/default/identity?audience=https://warm.example").await;
        assert_eq!(response.status(), 200);
    }
    let statuses = h.provider.readiness()[0].statuses();
    assert!(statuses.iter().all(|s| s.ready()), "{statuses:?}");
    // One STS + IAM pair per key: the default scope set and the audience.
    assert_eq!(h.env.emulator.counters().gcp_iam, 2);
}

#[tokio::test]
async fn identity_without_a_service_account_answers_404_saying_why() {
    let h = Harness::start(|c, _| c.service_account = None).await;
    let response =
        h.get("/computeMetadata/v1/instance/service-accounts/default/identity?audience=https://x.example").await;
    assert_eq!(response.status(), 404);
    assert_eq!(response.headers()["metadata-flavor"], "Google");
    let body = response.text().await.unwrap();
    assert!(body.contains("gcp.service_account"), "{body}");
}

#[tokio::test]
async fn permission_denied_hint_names_the_exact_principal_member_to_grant() {
    let h =
        Harness::start(|c, _| c.service_account = Some("stranger@keyless-dev.iam.gserviceaccount.com".into())).await;
    let (status, body) = h.token("").await;
    assert_eq!(status, 502, "{body}");
    let body = body.as_str().unwrap().to_owned();
    let ids = h.env.emulator.identities();
    let member = format!(
        "principal://iam.googleapis.com/projects/{}/locations/global/workloadIdentityPools/{}/subject/{}",
        ids.gcp_project_number,
        ids.gcp_pool,
        ids.subject()
    );
    assert!(body.contains(&format!("--member=\"{member}\"")), "{body}");
    assert!(body.contains("roles/iam.workloadIdentityUser"), "{body}");
    let statuses = h.provider.readiness()[0].statuses();
    assert!(!statuses[0].ready());
    let hint = statuses[0].last_error.as_ref().and_then(|e| e.hint.clone());
    assert!(hint.unwrap_or_default().contains(&member));
}

#[tokio::test]
async fn an_unknown_pool_provider_is_reported_with_its_parts() {
    let h = Harness::start(|c, _| {
        c.audience = Some(
            "//iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/nope/providers/kubernetes"
                .into(),
        )
    })
    .await;
    let (status, body) = h.token("").await;
    assert_eq!(status, 502, "{body}");
    let body = body.as_str().unwrap();
    assert!(body.contains("invalid_target") && body.contains("pool nope"), "{body}");
}

#[tokio::test]
async fn a_token_for_another_audience_is_refused_with_its_claims_in_the_hint() {
    let h = Harness::start(|c, e| c.token_file = Some(e.emulator.token_path(Cloud::Aws))).await;
    let (status, body) = h.token("").await;
    assert_eq!(status, 502, "{body}");
    let body = body.as_str().unwrap();
    assert!(body.contains("invalid_grant"), "{body}");
    assert!(body.contains("aud=[sts.amazonaws.com]"), "{body}");
    assert!(body.contains("sub=system:serviceaccount:default:keyless-dev"), "{body}");
    assert!(body.contains(&h.env.emulator.identities().gcp_audience()), "{body}");
}

/// Writes `token` the way the kubelet's AtomicWriter ends up doing: a rename over the file.
fn replace_token(path: &std::path::Path, token: &str) {
    kubelet::replace_with(path, |staged| std::fs::write(staged, token).unwrap());
}

#[tokio::test]
async fn an_expired_subject_token_is_re_read_and_the_rotated_one_used() {
    let h = Harness::start(|c, e| {
        let dir = e.path("stale");
        std::fs::create_dir_all(&dir).unwrap();
        let expired = e.mint(&e.emulator.identities().gcp_audience(), |claims| {
            claims.iat_offset_secs = -3700;
            claims.exp_offset_secs = -100;
        });
        replace_token(&dir.join("token"), &expired);
        c.token_file = Some(dir.join("token"));
    })
    .await;
    let (status, body) = h.token("").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.as_str().unwrap().contains("expired"), "{body}");

    let fresh = h.env.emulator.mint(MintClaims::new(h.env.emulator.identities().gcp_audience()));
    replace_token(&h.env.path("stale/token"), &fresh);
    // The watcher publishes the new token and the cache tries it at once; a client retrying its
    // 503s (as google-auth does) gets the token.
    let mut answers = Vec::new();
    while answers.last() != Some(&200) && answers.len() < 10 {
        answers.push(h.token("").await.0);
    }
    assert_eq!(answers.last(), Some(&200), "{answers:?}");
}

#[tokio::test]
async fn an_untrusted_upstream_certificate_points_at_ca_file() {
    let h = Harness::start(|c, _| c.ca_file = None).await;
    let (status, body) = h.token("").await;
    assert_eq!(status, 502, "{body}");
    assert!(body.as_str().unwrap().contains("gcp.ca_file"), "{body}");
}

/// On the paused clock: the retries' backoff in virtual time.
#[tokio::test(start_paused = true)]
async fn sts_5xx_at_start_up_are_retried_until_a_token_is_served() {
    let h = Harness::start_with(paused(), |c, _| c.service_account = None).await;
    // Once the pre-warm is done, ask for a key nobody has asked for yet.
    h.access_token("").await;
    h.env.emulator.faults().fail_next(Service::GcpSts, 3, Fault::new(StatusCode::SERVICE_UNAVAILABLE));
    let before = h.env.emulator.counters().gcp_sts;
    // A cold request answers the attempt it waited for; clients retry 503 (google-auth 5 times).
    let mut answers = Vec::new();
    let token = loop {
        let (status, body) = h.token(&format!("?scopes={READ_ONLY}")).await;
        answers.push(status);
        if status == 200 || answers.len() == 5 {
            break body["access_token"].as_str().map(str::to_owned);
        }
        assert_eq!(status, 503, "{body}");
    };
    let token = token.unwrap_or_else(|| panic!("no token after {answers:?}"));
    assert_eq!(h.tokeninfo(&token).await.0, 200);
    assert_eq!(h.env.emulator.counters().gcp_sts - before, 4);
}

#[tokio::test(start_paused = true)]
async fn refresh_retries_5xx_while_the_valid_token_keeps_being_served() {
    let h = Harness::start_with(paused(), |_, _| {}).await;
    let first = h.access_token("").await;
    let before = h.env.emulator.counters();
    h.env.emulator.faults().fail_next(Service::GcpSts, 3, Fault::new(StatusCode::BAD_GATEWAY));

    // Past half of the hour-long lifetime: the refresh starts, and fails three times.
    tokio::time::advance(Duration::from_secs(31 * 60)).await;
    assert_eq!(h.access_token("").await, first);
    // Virtual time: enough for the backoff schedule to run its course.
    tokio::time::sleep(Duration::from_secs(120)).await;

    let after = h.env.emulator.counters();
    assert_eq!(after.gcp_sts - before.gcp_sts, 4);
    assert_eq!(after.gcp_iam - before.gcp_iam, 1);
    let refreshed = h.access_token("").await;
    assert_ne!(refreshed, first);
    assert_eq!(h.tokeninfo(&refreshed).await.0, 200);
}

#[tokio::test(start_paused = true)]
async fn answers_503_with_the_reason_once_nothing_valid_remains() {
    let h = Harness::start_with(paused(), |_, _| {}).await;
    h.access_token("").await;
    h.env.emulator.faults().fail_next(Service::GcpSts, u32::MAX, Fault::new(StatusCode::SERVICE_UNAVAILABLE));
    // Past the token's end (by keyless's clock): refreshes have failed all along.
    tokio::time::advance(Duration::from_secs(61 * 60)).await;
    let (status, body) = h.token("").await;
    assert_eq!(status, 503, "{body}");
    let body = body.as_str().unwrap();
    assert!(body.contains("503") && body.contains("STS"), "{body}");
    assert!(!h.provider.readiness()[0].statuses()[0].ready());
}

#[tokio::test]
async fn no_token_appears_in_trace_level_logs() {
    let captured = capture_logs();

    let h = Harness::start(|c, _| c.id_token_audiences = vec!["https://logs.example".into()]).await;
    let subject = std::fs::read_to_string(h.env.emulator.token_path(keyless_emulator::Cloud::Gcp)).unwrap();
    let access = h.access_token("").await;
    let other = h.access_token(&format!("?scopes={READ_ONLY}")).await;
    let id_token = h
        .get("/computeMetadata/v1/instance/service-accounts/default/identity?audience=https://logs.example")
        .await
        .text()
        .await
        .unwrap();
    // A failing exchange logs its error and hint too.
    h.env.emulator.faults().fail_next(Service::GcpIam, 1, Fault::new(StatusCode::FORBIDDEN));
    let _ = h.token("?scopes=https://www.googleapis.com/auth/iam").await;

    let logs = captured.all_threads();
    assert!(logs.contains("exchange"), "the exchanges were logged");
    for (name, secret) in [
        ("subject token", subject.trim()),
        ("access token", access.as_str()),
        ("access token", other.as_str()),
        ("ID token", id_token.as_str()),
    ] {
        assert!(secret.len() > 20, "{name} looks real");
        // The whole and its parts (a JWT's signature alone identifies it).
        assert_no_secret(&logs, secret, &format!("the logs (the {name})"));
    }
}
