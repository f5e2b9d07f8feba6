//! The admin listener: `/healthz` (the process answers), `/readyz` (every configured identity holds
//! a valid credential), `/metrics` (Prometheus text). Kubelet probes reach it on the pod IP, so it
//! listens on every interface, unauthenticated: what it tells a peer that is not on loopback is
//! only what a probe or a scraper needs.
//!
//! - `/readyz` answers such a peer with the status and a count; the details (role ARNs, e-mails,
//!   client ids, cache keys, the last upstream error) go to loopback peers only, which is where
//!   `kubectl exec` and `kubectl port-forward` arrive.
//! - `/metrics` keeps its labels (the metrics interface, README): identities (role ARNs, service-account e-mails,
//!   client ids) are names, not secrets; holding one grants nothing without a token the cloud
//!   trusts, and dashboards need them.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use keyless_core::{ErrorClass, ExchangeError, Metrics, Readiness};

#[derive(Clone)]
pub struct AdminState {
    pub readiness: Vec<Arc<dyn Readiness>>,
    pub metrics: Metrics,
    /// Further conditions (e.g. `keyless dev` has written the app's env file).
    pub gate: Arc<AtomicBool>,
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// 200 when every configured identity holds a valid credential, else 503. A loopback peer gets
/// each identity with its state and, when not ready, the last error with its hint; any other peer
/// (or one the listener did not name) gets the status and a count.
async fn readyz(State(state): State<AdminState>, request: Request) -> impl IntoResponse {
    let peer = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|ConnectInfo(peer)| *peer);
    let local = peer.is_some_and(|p| p.ip().to_canonical().is_loopback());
    let statuses: Vec<_> = state.readiness.iter().flat_map(|r| r.statuses()).collect();
    let starting = !state.gate.load(Ordering::Acquire);
    let held = statuses.iter().filter(|s| s.ready()).count();
    let ready = !statuses.is_empty() && !starting && held == statuses.len();
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    if !local {
        let state = if ready { "ready" } else { "not ready" };
        let starting = if starting && !statuses.is_empty() { ", still starting" } else { "" };
        let body = format!(
            "{state}: {held}/{} identities hold a valid credential{starting} (details: GET /readyz from inside \
             the pod, e.g. kubectl exec or kubectl port-forward)\n",
            statuses.len()
        );
        return (status, body);
    }
    let mut body = String::new();
    for s in &statuses {
        match (s.valid_until, &s.last_error) {
            (Some(until), last) => {
                let _ = writeln!(
                    body,
                    "ready {}: valid until {}{}",
                    s.name(),
                    humantime::format_rfc3339_seconds(until),
                    throttled_refresh(last.as_ref())
                );
            }
            (None, Some(err)) => {
                let throttled = if err.class == ErrorClass::Throttled { "throttled: " } else { "" };
                let _ = writeln!(body, "not ready {}: {throttled}{err}", s.name());
            }
            (None, None) => {
                let _ = writeln!(body, "not ready {}: first exchange in progress", s.name());
            }
        }
    }
    if statuses.is_empty() {
        body.push_str("not ready: no identity configured\n");
    } else if starting {
        body.push_str("not ready: still starting\n");
    }
    (status, body)
}

/// A ready identity whose refresh the token service throttles says so: a fleet-wide problem
/// shows on every pod before any credential runs out.
fn throttled_refresh(last: Option<&ExchangeError>) -> String {
    match last {
        Some(err) if err.class == ErrorClass::Throttled => format!(" (refresh throttled, retrying: {err})"),
        _ => String::new(),
    }
}

/// The metrics, with `keyless_identity_ready` brought up to date first.
async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    let statuses: Vec<_> = state.readiness.iter().flat_map(|r| r.statuses()).collect();
    state.metrics.set_identity_readiness(&statuses);
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], state.metrics.encode())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::time::{Duration, UNIX_EPOCH};

    use keyless_core::IdentityStatus;
    use tower::ServiceExt as _;

    use super::*;

    const ROLE: &str = "arn:aws:iam::123456789012:role/payments";
    const EMAIL: &str = "reader@project.iam.gserviceaccount.com";
    const UPSTREAM_ERROR: &str = "AccessDenied: not authorized to assume payments";

    struct Identities;

    impl Readiness for Identities {
        fn statuses(&self) -> Vec<IdentityStatus> {
            vec![
                IdentityStatus {
                    provider: "aws",
                    identity: ROLE.to_owned(),
                    key: String::new(),
                    valid_until: Some(UNIX_EPOCH + Duration::from_secs(4_000_000_000)),
                    last_error: None,
                },
                IdentityStatus {
                    provider: "gcp",
                    identity: EMAIL.to_owned(),
                    key: "access token, scopes cloud-platform".to_owned(),
                    valid_until: None,
                    last_error: Some(ExchangeError::retryable(UPSTREAM_ERROR)),
                },
            ]
        }
    }

    async fn readyz_from(peer: Option<&str>) -> (StatusCode, String) {
        let router = router(AdminState {
            readiness: vec![Arc::new(Identities)],
            metrics: Metrics::new(),
            gate: Arc::new(AtomicBool::new(true)),
        });
        let mut request = axum::http::Request::get("/readyz").body(axum::body::Body::empty()).unwrap();
        if let Some(peer) = peer {
            request.extensions_mut().insert(ConnectInfo(peer.parse::<SocketAddr>().unwrap()));
        }
        let response = router.oneshot(request).await.unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 16).await.unwrap();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn readyz_tells_a_peer_off_loopback_only_the_status_and_a_count() {
        for peer in [Some("10.1.2.3:40000"), Some("[fd00::5]:40000"), None] {
            let (status, body) = readyz_from(peer).await;
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
            assert!(body.starts_with("not ready: 1/2 identities hold a valid credential"), "{body}");
            for detail in [ROLE, EMAIL, UPSTREAM_ERROR, "cloud-platform"] {
                assert!(!body.contains(detail), "{peer:?} was told {detail}: {body}");
            }
        }
    }

    #[tokio::test]
    async fn readyz_gives_a_loopback_peer_every_identity_and_its_last_error() {
        for peer in ["127.0.0.1:40000", "[::1]:40000", "[::ffff:127.0.0.1]:40000"] {
            let (status, body) = readyz_from(Some(peer)).await;
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
            for detail in [ROLE, EMAIL, UPSTREAM_ERROR] {
                assert!(body.contains(detail), "{peer}: {body}");
            }
        }
    }

    /// What a person reads on the pod's loopback: each credential in words, never Rust Debug
    /// text (`()`, `AccessToken([...])`).
    #[tokio::test]
    async fn readyz_on_loopback_reads_as_text_for_people() {
        let (_, body) = readyz_from(Some("127.0.0.1:40000")).await;
        assert_eq!(
            body,
            "ready aws arn:aws:iam::123456789012:role/payments: valid until 2096-10-02T07:06:40Z\n\
             not ready gcp reader@project.iam.gserviceaccount.com (access token, scopes cloud-platform): \
             AccessDenied: not authorized to assume payments\n"
        );
    }

    /// `keyless_identity_ready` has a series for every configured identity at every scrape, 0 for
    /// one that never got a credential (it has no expiry series an alert could watch).
    #[tokio::test]
    async fn metrics_have_a_readiness_series_for_every_identity() {
        let router = router(AdminState {
            readiness: vec![Arc::new(Identities)],
            metrics: Metrics::new(),
            gate: Arc::new(AtomicBool::new(true)),
        });
        let request = axum::http::Request::get("/metrics").body(axum::body::Body::empty()).unwrap();
        let response = router.oneshot(request).await.unwrap();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
        let text = String::from_utf8(body.to_vec()).unwrap();
        assert!(
            text.contains(&format!("keyless_identity_ready{{provider=\"aws\",identity=\"{ROLE}\"}} 1\n")),
            "{text}"
        );
        assert!(
            text.contains(&format!("keyless_identity_ready{{provider=\"gcp\",identity=\"{EMAIL}\"}} 0\n")),
            "{text}"
        );
    }

    struct Throttled;

    impl Readiness for Throttled {
        fn statuses(&self) -> Vec<IdentityStatus> {
            let throttled = || ExchangeError::throttled("HTTP 429 Too Many Requests", Some(Duration::from_secs(60)));
            let status = |identity: &str, valid_until| IdentityStatus {
                provider: "azure",
                identity: identity.to_owned(),
                key: "resource https://vault.azure.net".to_owned(),
                valid_until,
                last_error: Some(throttled()),
            };
            vec![status("held", Some(UNIX_EPOCH + Duration::from_secs(4_000_000_000))), status("starting", None)]
        }
    }

    #[tokio::test]
    async fn readyz_shows_throttling_of_ready_and_unready_identities() {
        let router = router(AdminState {
            readiness: vec![Arc::new(Throttled)],
            metrics: Metrics::new(),
            gate: Arc::new(AtomicBool::new(true)),
        });
        let mut request = axum::http::Request::get("/readyz").body(axum::body::Body::empty()).unwrap();
        request.extensions_mut().insert(ConnectInfo("127.0.0.1:40000".parse::<SocketAddr>().unwrap()));
        let response = router.oneshot(request).await.unwrap();
        let body = axum::body::to_bytes(response.into_body(), 1 << 16).await.unwrap();
        let body = String::from_utf8(body.to_vec()).unwrap();
        assert!(
            body.contains(
                "ready azure held (resource https://vault.azure.net): valid until 2096-10-02T07:06:40Z (refresh \
                 throttled, retrying: HTTP 429"
            ),
            "{body}"
        );
        assert!(
            body.contains("not ready azure starting (resource https://vault.azure.net): throttled: HTTP 429"),
            "{body}"
        );
    }
}
