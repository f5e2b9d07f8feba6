//! The webhook's `/metrics`: reviews and how long they took, injections, skips and errors by
//! reason, plus what every keyless process exports (`keyless_build_info`, `process_*`), as
//! Prometheus text like the sidecar's.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: &'static str,
}

#[derive(Debug, Clone)]
pub struct WebhookMetrics {
    registry: Arc<Registry>,
    injections: Counter,
    skips: Family<Reason, Counter>,
    errors: Family<Reason, Counter>,
    review_duration: Histogram,
}

impl WebhookMetrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let injections = Counter::default();
        let skips = Family::<Reason, Counter>::default();
        let errors = Family::<Reason, Counter>::default();
        // The API server waits `timeoutSeconds` (the chart: 10 s) for an answer; most take
        // milliseconds (a cached ServiceAccount, one JSON patch).
        let review_duration =
            Histogram::new([0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]);
        registry.register("keyless_webhook_injections", "Pods injected (dry runs not counted)", injections.clone());
        registry.register("keyless_webhook_skips", "Pods admitted unchanged, by reason", skips.clone());
        registry.register(
            "keyless_webhook_errors",
            "Opted-in pods keyless could not inject, by reason (refused or admitted per the failure policy)",
            errors.clone(),
        );
        registry.register(
            "keyless_webhook_review_duration_seconds",
            "Time to answer one AdmissionReview (every review, whatever its outcome)",
            review_duration.clone(),
        );
        keyless_core::metrics::register_process_metrics(&mut registry, crate::BUILD);
        Self { registry: Arc::new(registry), injections, skips, errors, review_duration }
    }

    pub fn injected(&self) {
        self.injections.inc();
    }

    pub fn skipped(&self, reason: &'static str) {
        self.skips.get_or_create(&Reason { reason }).inc();
    }

    pub fn error(&self, reason: &'static str) {
        self.errors.get_or_create(&Reason { reason }).inc();
    }

    pub fn reviewed(&self, took: Duration) {
        self.review_duration.observe(took.as_secs_f64());
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
