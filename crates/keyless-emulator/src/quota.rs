//! Per-service quotas: a token bucket of `burst` calls refilled at `per_second`, as the clouds
//! limit their token services (docs/protocols.md 9). A call over quota is answered with the
//! cloud's own throttling response before its handler runs, and counted like any other call.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use axum::Json;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::SharedState;
use crate::control::Service;

/// How many calls a service answers: `per_second` on average, `burst` at once.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Quota {
    pub per_second: f64,
    pub burst: u32,
}

impl Quota {
    /// `per_second` with the default burst: a second's worth of calls, at least one.
    pub fn per_second(per_second: f64) -> Self {
        Self { per_second, burst: default_burst(per_second) }
    }
}

fn default_burst(per_second: f64) -> u32 {
    (per_second.ceil() as u32).max(1)
}

#[derive(Debug)]
struct Bucket {
    quota: Quota,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// Takes a token, or says how long until one is there.
    fn take(&mut self, now: Instant) -> Result<(), Duration> {
        let refill = now.saturating_duration_since(self.at).as_secs_f64() * self.quota.per_second;
        self.tokens = (self.tokens + refill).min(f64::from(self.quota.burst));
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        Err(Duration::from_secs_f64((1.0 - self.tokens) / self.quota.per_second))
    }
}

/// The quota of every service (none by default) and the calls each has throttled.
#[derive(Debug, Default)]
pub struct Quotas {
    buckets: Mutex<[Option<Bucket>; 4]>,
    throttled: [AtomicU64; 4],
}

impl Quotas {
    /// Sets (or with `None` removes) the quota of `service`; its bucket starts full.
    pub fn set(&self, service: Service, quota: Option<Quota>) {
        let bucket = quota.map(|quota| Bucket { quota, tokens: f64::from(quota.burst), at: Instant::now() });
        self.buckets.lock().unwrap_or_else(PoisonError::into_inner)[service as usize] = bucket;
    }

    /// `Ok` when a call to `service` is within its quota; else the `Retry-After` to answer with
    /// (whole seconds, at least one: what the header can say).
    pub fn admit(&self, service: Service) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(bucket) = buckets[service as usize].as_mut() else { return Ok(()) };
        bucket.take(Instant::now()).map_err(|wait| {
            self.throttled[service as usize].fetch_add(1, Ordering::Relaxed);
            Duration::from_secs(wait.as_secs_f64().ceil().max(1.0) as u64)
        })
    }

    /// Calls of `service` answered with throttling so far.
    pub fn throttled(&self, service: Service) -> u64 {
        self.throttled[service as usize].load(Ordering::Relaxed)
    }

    fn report(&self) -> serde_json::Value {
        let buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let services = Service::ALL.into_iter().map(|service| {
            let quota = buckets[service as usize].as_ref().map(|b| b.quota);
            (service.name().to_owned(), serde_json::json!({ "quota": quota, "throttled": self.throttled(service) }))
        });
        serde_json::Value::Object(services.collect())
    }
}

/// The route layer of each token service: answers a call over its quota with the cloud's
/// throttling response (`middleware::from_fn_with_state`).
pub(crate) async fn enforce(
    State((state, service)): State<(SharedState, Service)>,
    request: Request,
    next: Next,
) -> Response {
    match state.gate.quotas.admit(service) {
        Ok(()) => next.run(request).await,
        Err(retry_after) => {
            state.gate.count(service);
            tracing::info!(service = service.name(), retry_after = retry_after.as_secs(), "over quota: throttled");
            throttled_response(service, retry_after)
        }
    }
}

/// What each cloud answers over quota (docs/protocols.md 9).
fn throttled_response(service: Service, retry_after: Duration) -> Response {
    let seconds = retry_after.as_secs().to_string();
    match service {
        // STS: HTTP 400 `Throttling`, `Rate exceeded`, and no Retry-After.
        Service::AwsSts => crate::aws::throttled(),
        // Google: 429 RESOURCE_EXHAUSTED in its API error shape.
        Service::GcpSts | Service::GcpIam => {
            let body = serde_json::json!({ "error": {
                "code": 429,
                "message": format!("Quota exceeded for quota metric '{}' of service '{}' (keyless emulator quota).",
                    if service == Service::GcpSts { "Token exchange requests" } else { "Generate credentials requests" },
                    if service == Service::GcpSts { "sts.googleapis.com" } else { "iamcredentials.googleapis.com" }),
                "status": "RESOURCE_EXHAUSTED",
            }});
            (StatusCode::TOO_MANY_REQUESTS, [("retry-after", seconds)], Json(body)).into_response()
        }
        // Entra ID: 429 with Retry-After; the body is not necessarily JSON.
        Service::AzureToken => {
            (StatusCode::TOO_MANY_REQUESTS, [("retry-after", seconds)], "Too Many Requests").into_response()
        }
    }
}

/// Body of `POST /_emulator/quotas`: `per_second` 0 removes the service's quota.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct QuotaRequest {
    service: String,
    per_second: f64,
    /// Calls answered at once after a quiet period [default: `per_second`, at least 1].
    burst: Option<u32>,
}

/// `POST /_emulator/quotas`.
pub(crate) async fn set_quota(State(state): State<SharedState>, Json(request): Json<QuotaRequest>) -> Response {
    let bad =
        |message: String| (StatusCode::BAD_REQUEST, Json(serde_json::json!({ "error": message }))).into_response();
    let service = match request.service.parse::<Service>() {
        Ok(service) => service,
        Err(message) => return bad(message),
    };
    if !(request.per_second.is_finite() && (0.0..=1_000_000.0).contains(&request.per_second)) {
        return bad(format!("per_second must be between 0 (no quota) and 1000000, not {}", request.per_second));
    }
    let burst = request.burst.unwrap_or_else(|| default_burst(request.per_second)).max(1);
    let quota = (request.per_second > 0.0).then_some(Quota { per_second: request.per_second, burst });
    state.gate.quotas.set(service, quota);
    StatusCode::NO_CONTENT.into_response()
}

/// `GET /_emulator/quotas`: each service's quota and how many calls it throttled.
pub(crate) async fn quotas(State(state): State<SharedState>) -> Json<serde_json::Value> {
    Json(state.gate.quotas.report())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_bucket_answers_its_burst_then_its_rate_and_says_when_to_come_back() {
        let quotas = Quotas::default();
        quotas.set(Service::GcpSts, Some(Quota { per_second: 2.0, burst: 3 }));
        for _ in 0..3 {
            assert_eq!(quotas.admit(Service::GcpSts), Ok(()));
        }
        assert_eq!(quotas.admit(Service::GcpSts), Err(Duration::from_secs(1)));
        assert_eq!(quotas.admit(Service::AwsSts), Ok(()), "other services have no quota");
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(quotas.admit(Service::GcpSts), Ok(()), "one token per half second");
        assert!(quotas.admit(Service::GcpSts).is_err());
        tokio::time::advance(Duration::from_secs(60)).await;
        for _ in 0..3 {
            assert_eq!(quotas.admit(Service::GcpSts), Ok(()), "refilled up to the burst");
        }
        assert!(quotas.admit(Service::GcpSts).is_err());
        assert_eq!(quotas.throttled(Service::GcpSts), 3);
        quotas.set(Service::GcpSts, None);
        assert_eq!(quotas.admit(Service::GcpSts), Ok(()));
    }

    #[test]
    fn the_default_burst_is_a_seconds_worth_and_at_least_one() {
        assert_eq!(Quota::per_second(50.0).burst, 50);
        assert_eq!(Quota::per_second(2.5).burst, 3);
        assert_eq!(Quota::per_second(0.1).burst, 1, "else no call would ever be answered");
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_quota_asks_for_whole_seconds() {
        let quotas = Quotas::default();
        quotas.set(Service::AzureToken, Some(Quota { per_second: 0.1, burst: 1 }));
        assert_eq!(quotas.admit(Service::AzureToken), Ok(()));
        assert_eq!(quotas.admit(Service::AzureToken), Err(Duration::from_secs(10)));
        tokio::time::advance(Duration::from_millis(2500)).await;
        assert_eq!(quotas.admit(Service::AzureToken), Err(Duration::from_secs(8)), "7.5 s, rounded up");
    }
}
