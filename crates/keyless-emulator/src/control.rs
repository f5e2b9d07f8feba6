//! Test controls: fault injection and call counters per emulated service, and the
//! `/_emulator/` HTTP API exposing them (plus token rotation and minting).

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use crate::SharedState;
use crate::clock;
use crate::issuer::MintClaims;

/// An emulated token service that faults and counters apply to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Service {
    /// `aws-sts`: STS `AssumeRoleWithWebIdentity` (`POST /`).
    AwsSts,
    /// `gcp-sts`: Google STS token exchange (`POST /v1/token`).
    GcpSts,
    /// `gcp-iam`: IAM Credentials `generateAccessToken` and `generateIdToken`.
    GcpIam,
    /// `azure-token`: Entra ID token endpoint (`POST /{tenant}/oauth2/v2.0/token`).
    AzureToken,
}

impl Service {
    /// Every service, in counter order.
    pub const ALL: [Self; 4] = [Self::AwsSts, Self::GcpSts, Self::GcpIam, Self::AzureToken];

    /// The name used by the control API: `aws-sts`, `gcp-sts`, `gcp-iam`, `azure-token`.
    pub fn name(self) -> &'static str {
        match self {
            Self::AwsSts => "aws-sts",
            Self::GcpSts => "gcp-sts",
            Self::GcpIam => "gcp-iam",
            Self::AzureToken => "azure-token",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl FromStr for Service {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|service| service.name() == s)
            .ok_or_else(|| format!("unknown service {s:?}; expected one of aws-sts, gcp-sts, gcp-iam, azure-token"))
    }
}

/// A failure to answer instead of the real response, rendered in the service's native error
/// format (AWS XML, Google JSON, Entra AADSTS JSON).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fault {
    /// HTTP status of the failure.
    pub status: StatusCode,
    /// The cloud's error code (`IDPCommunicationError`, `AADSTS700024`, `invalid_grant`,
    /// `UNAVAILABLE`, ...); `None` picks the service's usual code for `status`.
    pub code: Option<String>,
    /// The error message; `None` says that the fault was injected.
    pub message: Option<String>,
    /// Answer `200 OK` with the service's success content type and a body no client can parse
    /// (cut off mid-document), instead of an error: a broken proxy or a truncated response.
    pub malformed: bool,
}

impl Fault {
    /// A failure with `status` and the service's usual code for it.
    pub fn new(status: StatusCode) -> Self {
        Self { status, code: None, message: None, malformed: false }
    }

    /// A `200 OK` whose body is cut off mid-document (see [`Fault::malformed`]).
    pub fn malformed() -> Self {
        Self { malformed: true, ..Self::new(StatusCode::OK) }
    }

    /// The same failure with a specific cloud error code.
    #[must_use]
    pub fn with_code(mut self, code: impl Into<String>) -> Self {
        self.code = Some(code.into());
        self
    }

    /// The garbage answer of a malformed fault, in `service`'s success content type.
    pub(crate) fn malformed_response(&self, service: Service) -> Option<Response> {
        if !self.malformed {
            return None;
        }
        // Real responses cut off after their first field: syntactically broken, plausibly typed.
        let (content_type, body) = match service {
            Service::AwsSts => (
                "text/xml",
                "<AssumeRoleWithWebIdentityResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">\n  \
                 <AssumeRoleWithWebIdentityResult>\n    <Credentials>\n      <AccessKeyId>ASIA",
            ),
            Service::GcpSts => ("application/json", "{\"access_token\": \"ya29.d.trunc"),
            Service::GcpIam => ("application/json", "{\"accessToken\": \"ya29.c.trunc"),
            Service::AzureToken => ("application/json", "{\"token_type\": \"Bearer\", \"expires_in\": 35"),
        };
        tracing::info!(service = service.name(), "answering with an injected malformed response");
        Some((StatusCode::OK, [(axum::http::header::CONTENT_TYPE, content_type)], body).into_response())
    }

    /// The message, defaulting to one that says it was injected.
    pub(crate) fn message(&self) -> String {
        self.message.clone().unwrap_or_else(|| "Fault injected by the keyless emulator.".to_owned())
    }
}

#[derive(Clone, Debug, Default)]
struct Plan {
    remaining: u32,
    fault: Option<Fault>,
    latency: Duration,
    /// Cap on the lifetime of what the service issues (not a fault: [`Faults::clear`] keeps it).
    lifetime: Option<Duration>,
}

/// Faults to inject, per service. Cheap to clone; clones share the same plans.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    plans: Arc<Mutex<[Plan; 4]>>,
}

impl Faults {
    fn with_plan<R>(&self, service: Service, f: impl FnOnce(&mut Plan) -> R) -> R {
        let mut plans = self.plans.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut plans[service.index()])
    }

    /// The next `count` calls to `service` fail with `fault` (replacing any pending failure).
    pub fn fail_next(&self, service: Service, count: u32, fault: Fault) {
        self.with_plan(service, |plan| {
            plan.remaining = count;
            plan.fault = (count > 0).then_some(fault);
        });
    }

    /// Every call to `service` waits `latency` before being answered (zero removes it).
    pub fn set_latency(&self, service: Service, latency: Duration) {
        self.with_plan(service, |plan| plan.latency = latency);
    }

    /// Caps the lifetime of the credentials `service` issues (`None` restores the real one), so a
    /// test can watch a credential live and die in seconds. Like a role's MaxSessionDuration, it
    /// is a setting of the service rather than a fault: clearing faults keeps it.
    pub fn cap_lifetime(&self, service: Service, lifetime: Option<Duration>) {
        self.with_plan(service, |plan| plan.lifetime = lifetime);
    }

    /// The lifetime of what `service` issues now: `real`, or less when capped.
    pub(crate) fn lifetime(&self, service: Service, real: Duration) -> Duration {
        self.with_plan(service, |plan| plan.lifetime.map_or(real, |cap| cap.min(real)))
    }

    /// Removes pending failures and latency of `service`.
    pub fn clear(&self, service: Service) {
        self.with_plan(service, |plan| *plan = Plan { lifetime: plan.lifetime, ..Plan::default() });
    }

    /// Removes every fault of every service.
    pub fn clear_all(&self) {
        for service in Service::ALL {
            self.clear(service);
        }
    }

    /// The latency to add and the failure to answer with (consuming one), for one call.
    fn take(&self, service: Service) -> (Duration, Option<Fault>) {
        self.with_plan(service, |plan| {
            let fault = if plan.remaining > 0 {
                plan.remaining -= 1;
                let fault = plan.fault.clone();
                if plan.remaining == 0 {
                    plan.fault = None;
                }
                fault
            } else {
                None
            };
            (plan.latency, fault)
        })
    }
}

/// Calls that reached each service, faulted ones included.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// `AssumeRoleWithWebIdentity` calls.
    #[serde(rename = "aws-sts")]
    pub aws_sts: u64,
    /// Google STS `/v1/token` calls.
    #[serde(rename = "gcp-sts")]
    pub gcp_sts: u64,
    /// IAM Credentials `generateAccessToken` + `generateIdToken` calls.
    #[serde(rename = "gcp-iam")]
    pub gcp_iam: u64,
    /// Entra ID token endpoint calls.
    #[serde(rename = "azure-token")]
    pub azure_token: u64,
}

impl Counters {
    /// The count of one service.
    pub fn get(&self, service: Service) -> u64 {
        match service {
            Service::AwsSts => self.aws_sts,
            Service::GcpSts => self.gcp_sts,
            Service::GcpIam => self.gcp_iam,
            Service::AzureToken => self.azure_token,
        }
    }
}

/// The door every call to an emulated service goes through: counted, delayed, maybe failed.
#[derive(Debug, Default)]
pub(crate) struct Gate {
    pub(crate) faults: Faults,
    calls: [AtomicU64; 4],
    pub(crate) quotas: crate::quota::Quotas,
}

impl Gate {
    /// Counts a call answered before its handler ran (over quota).
    pub(crate) fn count(&self, service: Service) {
        self.calls[service.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts the call, applies latency, and returns the fault to answer with, if any.
    pub(crate) async fn enter(&self, service: Service) -> Option<Fault> {
        self.calls[service.index()].fetch_add(1, Ordering::Relaxed);
        let (latency, fault) = self.faults.take(service);
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        if let Some(fault) = fault.as_ref().filter(|f| !f.malformed) {
            tracing::info!(
                service = service.name(),
                status = fault.status.as_u16(),
                "answering with an injected fault"
            );
        }
        fault
    }

    pub(crate) fn counters(&self) -> Counters {
        let get = |s: Service| self.calls[s.index()].load(Ordering::Relaxed);
        Counters {
            aws_sts: get(Service::AwsSts),
            gcp_sts: get(Service::GcpSts),
            gcp_iam: get(Service::GcpIam),
            azure_token: get(Service::AzureToken),
        }
    }
}

/// Body of `POST /_emulator/faults`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FaultRequest {
    service: String,
    #[serde(default)]
    fail_next: u32,
    status: Option<u16>,
    code: Option<String>,
    message: Option<String>,
    latency_ms: Option<u64>,
    /// `fail_next` calls answer 200 with a cut-off body instead of an error.
    #[serde(default)]
    malformed: bool,
    /// Caps the lifetime of issued credentials (0 removes the cap); kept when faults are cleared.
    lifetime_secs: Option<u64>,
}

fn control_error(status: StatusCode, message: String) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

/// `POST /_emulator/faults`.
pub(crate) async fn inject_fault(State(state): State<SharedState>, Json(request): Json<FaultRequest>) -> Response {
    let service = match request.service.parse::<Service>() {
        Ok(service) => service,
        Err(message) => return control_error(StatusCode::BAD_REQUEST, message),
    };
    if request.malformed && request.status.is_some() {
        return control_error(StatusCode::BAD_REQUEST, "a malformed fault answers 200: give no status".into());
    }
    let status = match request.status.map(StatusCode::from_u16).transpose() {
        Ok(status) => status.unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
        Err(_) => return control_error(StatusCode::BAD_REQUEST, "status must be an HTTP status code".into()),
    };
    if !(status.is_client_error() || status.is_server_error()) {
        return control_error(StatusCode::BAD_REQUEST, format!("status {status} is not an error status (400-599)"));
    }
    let faults = &state.gate.faults;
    if request.fail_next > 0 {
        let fault = if request.malformed {
            Fault::malformed()
        } else {
            Fault { status, code: request.code, message: request.message, malformed: false }
        };
        faults.fail_next(service, request.fail_next, fault);
    }
    if let Some(secs) = request.lifetime_secs {
        faults.cap_lifetime(service, (secs > 0).then(|| Duration::from_secs(secs)));
    }
    if let Some(ms) = request.latency_ms {
        faults.set_latency(service, Duration::from_millis(ms));
    }
    StatusCode::NO_CONTENT.into_response()
}

/// `DELETE /_emulator/faults`.
pub(crate) async fn clear_faults(State(state): State<SharedState>) -> StatusCode {
    state.gate.faults.clear_all();
    StatusCode::NO_CONTENT
}

/// `DELETE /_emulator/faults/{service}`.
pub(crate) async fn clear_service_faults(State(state): State<SharedState>, Path(service): Path<String>) -> Response {
    match service.parse::<Service>() {
        Ok(service) => {
            state.gate.faults.clear(service);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(message) => control_error(StatusCode::NOT_FOUND, message),
    }
}

/// `GET /_emulator/counters`.
pub(crate) async fn counters(State(state): State<SharedState>) -> Json<Counters> {
    Json(state.gate.counters())
}

/// `POST /_emulator/rotate`: answers once the new tokens are in place.
pub(crate) async fn rotate(State(state): State<SharedState>) -> Response {
    match state.projector.rotate().await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => control_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// `POST /_emulator/mint`.
pub(crate) async fn mint(State(state): State<SharedState>, Json(claims): Json<MintClaims>) -> Response {
    match state.issuer.mint(&claims, clock::now()) {
        Ok(token) => Json(serde_json::json!({ "token": token })).into_response(),
        Err(e) => control_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// `POST /_emulator/trusted-issuers`'s body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TrustIssuerRequest {
    /// The issuer URL (`iss` of its tokens), e.g. a Kubernetes API server's `--service-account-issuer`.
    issuer: String,
    /// The CA to trust when fetching its discovery document and JWKS (PEM); the system's roots if absent.
    #[serde(default)]
    ca_pem: Option<String>,
}

/// `POST /_emulator/trusted-issuers`: trusts a real cluster's service-account issuer through its
/// discovery document and JWKS, as the clouds do (see `external.rs`).
pub(crate) async fn trust_issuer(
    State(state): State<SharedState>,
    Json(request): Json<TrustIssuerRequest>,
) -> Response {
    if !request.issuer.starts_with("https://") {
        return control_error(StatusCode::BAD_REQUEST, format!("issuer {:?} is not an https:// URL", request.issuer));
    }
    match state.issuer.external.register(&request.issuer, request.ca_pem.as_deref()).await {
        Ok(keys) => Json(serde_json::json!({ "issuer": request.issuer, "keys": keys })).into_response(),
        Err(message) => control_error(StatusCode::BAD_GATEWAY, message),
    }
}

/// `GET /_emulator/identities`: what the emulator trusts, for scripts and compose files.
pub(crate) async fn identities(State(state): State<SharedState>) -> Json<serde_json::Value> {
    Json(state.identities.document(state.issuer.url()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn gate_counts_faulted_calls_and_consumes_faults() {
        let gate = Gate::default();
        gate.faults.fail_next(Service::GcpSts, 2, Fault::new(StatusCode::BAD_GATEWAY));
        assert!(gate.enter(Service::GcpSts).await.is_some());
        assert!(gate.enter(Service::AwsSts).await.is_none());
        assert!(gate.enter(Service::GcpSts).await.is_some());
        assert!(gate.enter(Service::GcpSts).await.is_none());
        let counters = gate.counters();
        assert_eq!((counters.gcp_sts, counters.aws_sts, counters.azure_token), (3, 1, 0));
    }

    #[tokio::test]
    async fn malformed_faults_are_consumed_and_lifetime_caps_outlive_clearing() {
        let gate = Gate::default();
        gate.faults.fail_next(Service::AwsSts, 1, Fault::malformed());
        let fault = gate.enter(Service::AwsSts).await.unwrap();
        let response = fault.malformed_response(Service::AwsSts).unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert!(gate.enter(Service::AwsSts).await.is_none());
        assert!(Fault::new(StatusCode::BAD_GATEWAY).malformed_response(Service::AwsSts).is_none());

        let hour = Duration::from_secs(3600);
        gate.faults.cap_lifetime(Service::GcpSts, Some(Duration::from_secs(20)));
        gate.faults.clear_all();
        assert_eq!(gate.faults.lifetime(Service::GcpSts, hour), Duration::from_secs(20));
        assert_eq!(gate.faults.lifetime(Service::GcpSts, Duration::from_secs(5)), Duration::from_secs(5));
        assert_eq!(gate.faults.lifetime(Service::GcpIam, hour), hour);
        gate.faults.cap_lifetime(Service::GcpSts, None);
        assert_eq!(gate.faults.lifetime(Service::GcpSts, hour), hour);
    }
}
