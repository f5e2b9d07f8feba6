//! Prometheus metrics. The names are an interface (dashboards depend on them): SPEC section 7.
//! Labels carry identities (role ARNs, e-mails, client ids) and paths, never a token or key.

use std::sync::Arc;
use std::time::SystemTime;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::clock::unix_seconds;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ExchangeLabels {
    provider: &'static str,
    identity: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProviderLabels {
    provider: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    provider: &'static str,
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LookupLabels {
    provider: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IdentityLabels {
    provider: &'static str,
    identity: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PathLabels {
    path: String,
}

/// Outcome of one cache lookup, as counted in `keyless_cache_lookups_total{result}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// Served a cached, valid credential without waiting.
    Hit,
    /// Nothing valid was cached; the request waited for an exchange that succeeded.
    Miss,
    /// Nothing valid was cached and the exchange failed: the client got an error.
    Error,
}

impl Lookup {
    fn label(self) -> &'static str {
        match self {
            Lookup::Hit => "hit",
            Lookup::Miss => "miss",
            Lookup::Error => "error",
        }
    }
}

/// All keyless metrics, cheap to clone (every family is shared).
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Arc<Registry>,
    exchanges: Family<ExchangeLabels, Counter>,
    exchange_duration: Family<ProviderLabels, Histogram>,
    requests: Family<RequestLabels, Counter>,
    lookups: Family<LookupLabels, Counter>,
    credential_expiry: Family<IdentityLabels, Gauge>,
    subject_token_expiry: Family<PathLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let exchanges = Family::<ExchangeLabels, Counter>::default();
        let exchange_duration = Family::<ProviderLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0])
        });
        let requests = Family::<RequestLabels, Counter>::default();
        let lookups = Family::<LookupLabels, Counter>::default();
        let credential_expiry = Family::<IdentityLabels, Gauge>::default();
        let subject_token_expiry = Family::<PathLabels, Gauge>::default();
        registry.register(
            "keyless_exchanges",
            "Token exchanges with a cloud's token service, by outcome",
            exchanges.clone(),
        );
        registry.register(
            "keyless_exchange_duration_seconds",
            "Duration of token exchanges with a cloud's token service",
            exchange_duration.clone(),
        );
        registry.register("keyless_requests", "Requests served on the credential listener", requests.clone());
        registry.register(
            "keyless_cache_lookups",
            "Credential cache lookups by result (hit, miss, error)",
            lookups.clone(),
        );
        registry.register(
            "keyless_credential_expiry_timestamp_seconds",
            "Expiry (Unix seconds) of the newest credential held per identity",
            credential_expiry.clone(),
        );
        registry.register(
            "keyless_subject_token_expiry_timestamp_seconds",
            "The exp claim (Unix seconds) of the subject token now held, per token file",
            subject_token_expiry.clone(),
        );
        Self {
            registry: Arc::new(registry),
            exchanges,
            exchange_duration,
            requests,
            lookups,
            credential_expiry,
            subject_token_expiry,
        }
    }

    pub fn record_exchange(&self, provider: &'static str, identity: &str, outcome: &'static str, seconds: f64) {
        self.exchanges.get_or_create(&ExchangeLabels { provider, identity: identity.to_owned(), outcome }).inc();
        self.exchange_duration.get_or_create(&ProviderLabels { provider }).observe(seconds);
    }

    /// `route` must come from a bounded set (a route template, not the request path).
    pub fn record_request(&self, provider: &'static str, route: &str, status: u16) {
        self.requests.get_or_create(&RequestLabels { provider, route: route.to_owned(), status }).inc();
    }

    pub fn record_lookup(&self, provider: &'static str, result: Lookup) {
        self.lookups.get_or_create(&LookupLabels { provider, result: result.label() }).inc();
    }

    pub fn set_credential_expiry(&self, provider: &'static str, identity: &str, expiry: SystemTime) {
        self.credential_expiry
            .get_or_create(&IdentityLabels { provider, identity: identity.to_owned() })
            .set(i64::try_from(unix_seconds(expiry)).unwrap_or(i64::MAX));
    }

    pub fn set_subject_token_expiry(&self, path: &str, expiry: SystemTime) {
        self.subject_token_expiry
            .get_or_create(&PathLabels { path: path.to_owned() })
            .set(i64::try_from(unix_seconds(expiry)).unwrap_or(i64::MAX));
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_the_documented_names() {
        let m = Metrics::new();
        m.record_exchange("aws", "arn:aws:iam::1:role/r", "success", 0.1);
        m.record_request("aws", "container", 200);
        m.record_lookup("aws", Lookup::Hit);
        m.set_credential_expiry("aws", "arn:aws:iam::1:role/r", SystemTime::UNIX_EPOCH);
        m.set_subject_token_expiry("/var/run/token", SystemTime::UNIX_EPOCH);
        let text = m.encode();
        for name in [
            "keyless_exchanges_total{",
            "keyless_exchange_duration_seconds_bucket{",
            "keyless_requests_total{",
            "keyless_cache_lookups_total{",
            "keyless_credential_expiry_timestamp_seconds{",
            "keyless_subject_token_expiry_timestamp_seconds{",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
        assert!(text.contains(r#"status="200""#));
    }
}
