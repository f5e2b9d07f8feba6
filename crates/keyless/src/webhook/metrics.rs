//! The webhook's `/metrics`: injections, skips and errors by reason (Prometheus text, as the
//! sidecar's).

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
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
}

impl WebhookMetrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let injections = Counter::default();
        let skips = Family::<Reason, Counter>::default();
        let errors = Family::<Reason, Counter>::default();
        registry.register("keyless_webhook_injections", "Pods injected (dry runs not counted)", injections.clone());
        registry.register("keyless_webhook_skips", "Pods admitted unchanged, by reason", skips.clone());
        registry.register(
            "keyless_webhook_errors",
            "Opted-in pods keyless could not inject, by reason (refused or admitted per the failure policy)",
            errors.clone(),
        );
        Self { registry: Arc::new(registry), injections, skips, errors }
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

    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
