//! The admin listener: `/healthz` (the process answers), `/readyz` (every configured identity holds
//! a valid credential), `/metrics` (Prometheus text). Kubelet probes reach it on the pod IP.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use keyless_core::{Metrics, Readiness};

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

/// 200 when every configured identity holds a valid credential, else 503; the body lists each
/// identity with its state and, when not ready, the last error with its hint.
async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    let statuses: Vec<_> = state.readiness.iter().flat_map(|r| r.statuses()).collect();
    let mut ready = !statuses.is_empty() && state.gate.load(Ordering::Acquire);
    let mut body = String::new();
    for s in &statuses {
        ready &= s.ready();
        match (s.valid_until, &s.last_error) {
            (Some(until), _) => {
                let _ = writeln!(
                    body,
                    "ready {} {} {}: valid until {}",
                    s.provider,
                    s.identity,
                    s.key,
                    humantime::format_rfc3339_seconds(until)
                );
            }
            (None, Some(err)) => {
                let _ = writeln!(body, "not ready {} {} {}: {err}", s.provider, s.identity, s.key);
            }
            (None, None) => {
                let _ = writeln!(body, "not ready {} {} {}: first exchange in progress", s.provider, s.identity, s.key);
            }
        }
    }
    if statuses.is_empty() {
        body.push_str("not ready: no identity configured\n");
    } else if !state.gate.load(Ordering::Acquire) {
        body.push_str("not ready: still starting\n");
    }
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, body)
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], state.metrics.encode())
}
