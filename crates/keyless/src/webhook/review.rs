//! One AdmissionReview (docs/protocols.md 7): a Pod CREATE in, `allowed` with a JSONPatch (or
//! none) out. Pods not opted in are allowed before anything is read; an opted-in pod keyless
//! cannot inject is refused or admitted uninjected as the failure policy says.

use keyless_inject::{Namespace, Options, Outcome, TemplateError, inject_pod_json};
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use tracing::{info, warn};

use super::accounts::ServiceAccounts;
use super::metrics::WebhookMetrics;

/// What to do with an opted-in pod keyless cannot inject (a malformed annotation, an unreadable
/// ServiceAccount): the chart passes its `failurePolicy`, so a webhook error and a webhook that
/// is down mean the same thing to the pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FailurePolicy {
    /// Refuse the pod with the reason (the controller's FailedCreate event shows it).
    Fail,
    /// Admit the pod without keyless, with the reason as an admission warning.
    Ignore,
}

impl FailurePolicy {
    /// As the flag spells it (`fail`, `ignore`), for the log.
    fn name(self) -> &'static str {
        match self {
            Self::Fail => "fail",
            Self::Ignore => "ignore",
        }
    }
}

pub struct Reviewer {
    pub options: Options,
    pub accounts: ServiceAccounts,
    pub policy: FailurePolicy,
    pub metrics: WebhookMetrics,
}

/// Why an opted-in pod could not be injected.
struct Failure {
    reason: &'static str,
    message: String,
}

impl Reviewer {
    /// Answers one review body; `Err` is a request that is not an AdmissionReview (HTTP 400).
    pub async fn review(&self, body: &[u8], namespace: Namespace) -> Result<AdmissionReview<DynamicObject>, String> {
        let started = tokio::time::Instant::now();
        let answered = self.review_body(body, namespace).await;
        self.metrics.reviewed(started.elapsed());
        answered
    }

    async fn review_body(&self, body: &[u8], namespace: Namespace) -> Result<AdmissionReview<DynamicObject>, String> {
        let review: AdmissionReview<DynamicObject> =
            serde_json::from_slice(body).map_err(|e| format!("not an AdmissionReview: {e}"))?;
        let request: AdmissionRequest<DynamicObject> =
            review.try_into().map_err(|e| format!("not an AdmissionReview request: {e}"))?;
        Ok(self.answer(&request, namespace).await.into_review())
    }

    async fn answer(&self, request: &AdmissionRequest<DynamicObject>, namespace: Namespace) -> AdmissionResponse {
        let allowed = AdmissionResponse::from(request);
        let is_pod = request.kind.group.is_empty() && request.kind.kind == "Pod";
        let (Some(object), true, Operation::Create) = (&request.object, is_pod, &request.operation) else {
            return allowed;
        };
        let pod = match serde_json::to_value(object) {
            Ok(pod) => pod,
            Err(e) => return self.failed(request, allowed, Failure { reason: "bad_request", message: e.to_string() }),
        };
        let pod_namespace = request.namespace.clone().unwrap_or_default();
        if !opted_in(&pod, namespace) {
            self.metrics.skipped("not_opted_in");
            return allowed;
        }
        let account = service_account_name(&pod);
        let annotations = match self.accounts.annotations(&pod_namespace, &account).await {
            Ok(annotations) => annotations,
            Err(message) => {
                return self.failed(request, allowed, Failure { reason: "service_account", message });
            }
        };
        match inject_pod_json(&pod, &annotations, namespace, &self.options) {
            Ok((injected, Outcome::Injected { .. })) => self.patched(request, allowed, &pod, &injected),
            Ok((_, Outcome::Skipped(skip))) => {
                self.metrics.skipped(skip.reason());
                match skip.warning() {
                    Some(warning) => {
                        info!(namespace = %pod_namespace, pod = %pod_name(request), %warning, "pod not injected");
                        with_warning(allowed, warning)
                    }
                    None => allowed,
                }
            }
            Err(e) => {
                let reason =
                    if matches!(e, TemplateError::Annotation(_)) { "invalid_annotation" } else { "invalid_pod" };
                let where_ = match &e {
                    TemplateError::Annotation(a) if a.origin == keyless_inject::Origin::ServiceAccount => {
                        format!("ServiceAccount {pod_namespace}/{account}: ")
                    }
                    _ => String::new(),
                };
                self.failed(request, allowed, Failure { reason, message: format!("{where_}{e}") })
            }
        }
    }

    fn patched(
        &self,
        request: &AdmissionRequest<DynamicObject>,
        allowed: AdmissionResponse,
        before: &serde_json::Value,
        after: &serde_json::Value,
    ) -> AdmissionResponse {
        let patch = json_patch::diff(before, after);
        if patch.0.is_empty() {
            // Reinvoked on a pod already injected as its annotations say: nothing to change.
            self.metrics.skipped("already_injected");
            return allowed;
        }
        if !request.dry_run {
            self.metrics.injected();
        }
        match allowed.clone().with_patch(patch) {
            Ok(response) => response,
            Err(e) => self.failed(request, allowed, Failure { reason: "patch", message: e.to_string() }),
        }
    }

    fn failed(
        &self,
        request: &AdmissionRequest<DynamicObject>,
        allowed: AdmissionResponse,
        failure: Failure,
    ) -> AdmissionResponse {
        self.metrics.error(failure.reason);
        let namespace = request.namespace.as_deref().unwrap_or_default();
        let message = format!("keyless not injected: {}", failure.message);
        warn!(namespace, pod = %pod_name(request), reason = failure.reason, policy = self.policy.name(), "{message}");
        match self.policy {
            FailurePolicy::Fail => allowed.deny(message),
            FailurePolicy::Ignore => with_warning(allowed, message),
        }
    }
}

fn with_warning(mut response: AdmissionResponse, warning: String) -> AdmissionResponse {
    response.warnings.get_or_insert_with(Vec::new).push(warning);
    response
}

/// The opt-in rule, checked before anything is read.
fn opted_in(pod: &serde_json::Value, namespace: Namespace) -> bool {
    keyless_inject::opted_in(pod["metadata"]["labels"][keyless_inject::INJECT_LABEL].as_str(), namespace)
}

/// `spec.serviceAccountName`; empty means `default` (docs/protocols.md 7).
fn service_account_name(pod: &serde_json::Value) -> String {
    let spec = &pod["spec"];
    spec["serviceAccountName"]
        .as_str()
        .or_else(|| spec["serviceAccount"].as_str())
        .filter(|s| !s.is_empty())
        .unwrap_or("default")
        .to_owned()
}

/// Pods of controllers have no name yet: their `generateName` then.
fn pod_name(request: &AdmissionRequest<DynamicObject>) -> String {
    if !request.name.is_empty() {
        return request.name.clone();
    }
    request.object.as_ref().and_then(|o| o.metadata.generate_name.clone()).unwrap_or_default()
}
