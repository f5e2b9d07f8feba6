//! One AdmissionReview (docs/protocols.md 7): a Pod CREATE in, `allowed` with a JSONPatch (or
//! none) out. Pods not opted in are allowed before anything is read; an opted-in pod keyless
//! cannot inject is refused or admitted uninjected as the failure policy says.

use base64::Engine as _;
use keyless_inject::{Namespace, Options, Outcome, TemplateError};
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use serde::Serialize;
use tracing::{info, warn};

use super::accounts::{LookupError, ServiceAccounts};
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

/// The review answered: the AdmissionReview and its JSON Patch. kube-rs writes a patch as a JSON
/// array of numbers (its `Vec<u8>`, 4 bytes a byte); the API server's contract (and the Go client's
/// `[]byte`) is a base64 string, which this sends.
pub struct Answer {
    review: AdmissionReview<DynamicObject>,
    /// The JSON Patch, base64.
    patch: Option<String>,
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

impl Serialize for Answer {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut value = serde_json::to_value(&self.review).map_err(serde::ser::Error::custom)?;
        if let (Some(patch), Some(response)) =
            (&self.patch, value.get_mut("response").and_then(serde_json::Value::as_object_mut))
        {
            response.insert("patch".to_owned(), patch.clone().into());
            response.insert("patchType".to_owned(), "JSONPatch".into());
        }
        value.serialize(serializer)
    }
}

impl Answer {
    fn plain(response: AdmissionResponse) -> Self {
        Self { review: response.into_review(), patch: None }
    }
}

impl Reviewer {
    /// Answers one review body; `Err` is a request that is not an AdmissionReview (HTTP 400).
    /// The body is dropped once parsed: the review then holds the parsed pod only.
    pub async fn review(&self, body: Vec<u8>, namespace: Namespace) -> Result<Answer, String> {
        let started = tokio::time::Instant::now();
        let answered = self.review_body(body, namespace).await;
        self.metrics.reviewed(started.elapsed());
        answered
    }

    async fn review_body(&self, body: Vec<u8>, namespace: Namespace) -> Result<Answer, String> {
        let review: AdmissionReview<DynamicObject> =
            serde_json::from_slice(&body).map_err(|e| format!("not an AdmissionReview: {e}"))?;
        drop(body);
        let request: AdmissionRequest<DynamicObject> =
            review.try_into().map_err(|e| format!("not an AdmissionReview request: {e}"))?;
        Ok(self.answer(request, namespace).await)
    }

    async fn answer(&self, mut request: AdmissionRequest<DynamicObject>, namespace: Namespace) -> Answer {
        let allowed = AdmissionResponse::from(&request);
        let is_pod = request.kind.group.is_empty() && request.kind.kind == "Pod";
        let (true, Operation::Create) = (is_pod, &request.operation) else { return Answer::plain(allowed) };
        let Some(object) = request.object.take() else { return Answer::plain(allowed) };
        let name = if request.name.is_empty() { object.metadata.generate_name.clone() } else { None };
        let ctx = Ctx {
            namespace: request.namespace.clone().unwrap_or_default(),
            pod: name.unwrap_or_else(|| request.name.clone()),
            dry_run: request.dry_run,
        };
        let pod = match pod_json(object) {
            Ok(pod) => pod,
            Err(message) => return self.failed(&ctx, allowed, Failure { reason: "bad_request", message }),
        };
        if !opted_in(&pod, namespace) {
            self.metrics.skipped("not_opted_in");
            return Answer::plain(allowed);
        }
        let account = service_account_name(&pod);
        let annotations = match self.accounts.annotations(&ctx.namespace, &account).await {
            Ok(annotations) => annotations,
            Err(LookupError::Invalid(message)) => {
                return self.failed(&ctx, allowed, Failure { reason: "invalid_pod", message });
            }
            Err(LookupError::Unavailable(message)) => {
                return self.failed(&ctx, allowed, Failure { reason: "service_account", message });
            }
        };
        match keyless_inject::plan(&pod, &annotations, namespace, &self.options) {
            Ok(plan) => match plan.outcome {
                Outcome::Injected { .. } => self.patched(&ctx, allowed, &plan),
                Outcome::Skipped(skip) => {
                    self.metrics.skipped(skip.reason());
                    match skip.warning() {
                        Some(warning) => {
                            info!(
                                namespace = %shown(&ctx.namespace),
                                pod = %shown(&ctx.pod),
                                warning = %shown(&warning),
                                "pod not injected"
                            );
                            Answer::plain(with_warning(allowed, &warning))
                        }
                        None => Answer::plain(allowed),
                    }
                }
            },
            Err(e) => {
                let reason = match e {
                    TemplateError::Annotation(_) | TemplateError::Sidecar(_) => "invalid_annotation",
                    TemplateError::Field { .. } => "invalid_pod",
                };
                let where_ = match &e {
                    TemplateError::Annotation(_) | TemplateError::Sidecar(_) => {
                        format!("ServiceAccount {}/{account}: ", ctx.namespace)
                    }
                    TemplateError::Field { .. } => String::new(),
                };
                self.failed(&ctx, allowed, Failure { reason, message: format!("{where_}{e}") })
            }
        }
    }

    /// The plan's changes as the response's JSON Patch. A pod already injected (reinvoked, or as
    /// the API server stored and defaulted it) has none and counts as `already_injected`; a
    /// reinvocation that only takes over another webhook's variables is not a new injection either.
    fn patched(&self, ctx: &Ctx, mut allowed: AdmissionResponse, plan: &keyless_inject::Plan) -> Answer {
        // What the user should know of an injected pod (its own identity annotations ignored, a
        // variable that makes the app bypass keyless): admission warnings, as for a skipped pod.
        if let Outcome::Injected { warnings, .. } = &plan.outcome {
            for warning in warnings {
                allowed = with_warning(allowed, warning);
            }
        }
        if !plan.first {
            self.metrics.skipped("already_injected");
        } else if !ctx.dry_run {
            self.metrics.injected();
        }
        if plan.ops.is_empty() {
            return Answer::plain(allowed);
        }
        match serde_json::to_vec(&keyless_inject::json_patch(&plan.ops)) {
            Ok(bytes) => Answer {
                review: allowed.into_review(),
                patch: Some(base64::engine::general_purpose::STANDARD.encode(bytes)),
            },
            Err(e) => self.failed(ctx, allowed, Failure { reason: "patch", message: e.to_string() }),
        }
    }

    fn failed(&self, ctx: &Ctx, allowed: AdmissionResponse, failure: Failure) -> Answer {
        self.metrics.error(failure.reason);
        let message = format!("keyless not injected: {}", failure.message);
        warn!(
            namespace = %shown(&ctx.namespace),
            pod = %shown(&ctx.pod),
            reason = failure.reason,
            policy = self.policy.name(),
            "{}",
            shown(&message)
        );
        Answer::plain(match self.policy {
            FailurePolicy::Fail => allowed.deny(shown(&message)),
            FailurePolicy::Ignore => with_warning(allowed, &message),
        })
    }
}

/// Who a review is about, for logs and metrics.
struct Ctx {
    namespace: String,
    /// The pod's name, or its `generateName` (pods of controllers have no name yet).
    pod: String,
    dry_run: bool,
}

/// The pod as one JSON value, moved out of the request (never copied: a pod may be megabytes).
fn pod_json(object: DynamicObject) -> Result<serde_json::Value, String> {
    let DynamicObject { types, metadata, data } = object;
    let mut pod = match data {
        serde_json::Value::Object(map) => map,
        serde_json::Value::Null => serde_json::Map::new(),
        _ => return Err("the pod is not a JSON object".to_owned()),
    };
    pod.insert("metadata".to_owned(), serde_json::to_value(metadata).map_err(|e| e.to_string())?);
    if let Some(types) = types {
        pod.insert("apiVersion".to_owned(), types.api_version.into());
        pod.insert("kind".to_owned(), types.kind.into());
    }
    Ok(serde_json::Value::Object(pod))
}

/// What a log line shows of text the API server's client chose (names, `generateName`, messages
/// naming them): escaped and bounded (keyless-core's `printable`), so a name cannot forge lines
/// or rewrite a terminal. A Kubernetes name is at most 253 bytes; a message names a few of them.
fn shown(text: &str) -> std::borrow::Cow<'_, str> {
    keyless_core::printable::printable(text, MAX_LOGGED_BYTES)
}

const MAX_LOGGED_BYTES: usize = 1024;

/// Adds `warning` (it may quote the pod: escaped, as in the log) to what `kubectl` prints.
fn with_warning(mut response: AdmissionResponse, warning: &str) -> AdmissionResponse {
    response.warnings.get_or_insert_with(Vec::new).push(shown(warning).into_owned());
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
