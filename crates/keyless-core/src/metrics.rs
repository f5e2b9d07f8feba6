//! Prometheus metrics. The names are an interface (dashboards depend on them): the metrics interface, README.
//! Labels carry identities (role ARNs, e-mails, client ids) and paths, never a token or key.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, PoisonError, RwLock};
use std::time::SystemTime;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::clock::unix_seconds;

mod process;

/// What `keyless_build_info` reports: the binary's version and the source revision it was built
/// from. Only the binary knows them (its build script determines the revision, the same one
/// `keyless --version` prints: crates/keyless/build.rs); this library only reports what it is given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BuildInfo {
    pub version: &'static str,
    pub revision: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
    revision: &'static str,
}

/// Registers what every keyless process exports, the sidecar and the webhook alike:
/// `keyless_build_info{version,revision} 1` (of `build`) and the standard `process_*` metrics.
pub fn register_process_metrics(registry: &mut Registry, build: BuildInfo) {
    let build_info = Family::<BuildLabels, Gauge>::default();
    build_info.get_or_create(&BuildLabels { version: build.version, revision: build.revision }).set(1);
    registry.register("keyless_build_info", "The keyless version and git revision running (always 1)", build_info);
    registry.register_collector(Box::new(process::ProcessCollector::default()));
}

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
struct SourceLabels {
    source: &'static str,
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

/// One `keyless_cache_lookups_total{provider,result}` series (clones share its value).
#[derive(Clone, Debug)]
pub struct LookupCounter(Counter);

impl LookupCounter {
    pub fn inc(&self) {
        self.0.inc();
    }
}

/// All keyless metrics, cheap to clone: one shared allocation (a clone is made per request).
#[derive(Clone, Debug)]
pub struct Metrics {
    inner: Arc<Families>,
}

/// (provider, status) -> route -> the counter of `keyless_requests_total` with those labels.
type RequestCounters = HashMap<(&'static str, u16), HashMap<String, Counter>>;

#[derive(Debug)]
struct Families {
    registry: Registry,
    exchanges: Family<ExchangeLabels, Counter>,
    exchange_duration: Family<ProviderLabels, Histogram>,
    requests: Family<RequestLabels, Counter>,
    /// `requests`' counters by (provider, status) then route, found without building an owned
    /// label set: counting a request allocates nothing once its labels have been seen.
    request_counters: RwLock<RequestCounters>,
    lookups: Family<LookupLabels, Counter>,
    credential_expiry: Family<IdentityLabels, Gauge>,
    identity_ready: Family<IdentityLabels, Gauge>,
    subject_token_expiry: Family<SourceLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// The families keyless-core records, without what only a binary knows of itself
    /// (`keyless_build_info`, `process_*`): for tests and benchmarks.
    pub fn new() -> Self {
        Self::with_registry(Registry::default())
    }

    /// The metrics a keyless process serves: also `keyless_build_info` of `build` and the
    /// `process_*` metrics.
    pub fn with_build_info(build: BuildInfo) -> Self {
        let mut registry = Registry::default();
        register_process_metrics(&mut registry, build);
        Self::with_registry(registry)
    }

    /// The families, registered in `registry` beside what it already has.
    fn with_registry(mut registry: Registry) -> Self {
        let exchanges = Family::<ExchangeLabels, Counter>::default();
        let exchange_duration = Family::<ProviderLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0])
        });
        let requests = Family::<RequestLabels, Counter>::default();
        let lookups = Family::<LookupLabels, Counter>::default();
        let credential_expiry = Family::<IdentityLabels, Gauge>::default();
        let identity_ready = Family::<IdentityLabels, Gauge>::default();
        let subject_token_expiry = Family::<SourceLabels, Gauge>::default();
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
            "Expiry (Unix seconds) of the configured credential that expires first, per identity",
            credential_expiry.clone(),
        );
        registry.register(
            "keyless_identity_ready",
            "1 when every configured credential of the identity is held and valid, else 0; one series per \
             configured identity from start",
            identity_ready.clone(),
        );
        registry.register(
            "keyless_subject_token_expiry_timestamp_seconds",
            "The exp claim (Unix seconds) of the subject token now held, per source (kind; path for a file)",
            subject_token_expiry.clone(),
        );
        Self {
            inner: Arc::new(Families {
                registry,
                exchanges,
                exchange_duration,
                requests,
                request_counters: RwLock::default(),
                lookups,
                credential_expiry,
                identity_ready,
                subject_token_expiry,
            }),
        }
    }

    pub fn record_exchange(&self, provider: &'static str, identity: &str, outcome: &'static str, seconds: f64) {
        let m = &self.inner;
        m.exchanges.get_or_create(&ExchangeLabels { provider, identity: identity.to_owned(), outcome }).inc();
        m.exchange_duration.get_or_create(&ProviderLabels { provider }).observe(seconds);
    }

    /// `route` must come from a bounded set (a route template, not the request path).
    pub fn record_request(&self, provider: &'static str, route: &str, status: u16) {
        let m = &self.inner;
        let known = m.request_counters.read().unwrap_or_else(PoisonError::into_inner);
        if let Some(counter) = known.get(&(provider, status)).and_then(|by_route| by_route.get(route)) {
            counter.inc();
            return;
        }
        drop(known);
        // First request with these labels: a clone of a counter shares its value.
        let counter = m.requests.get_or_create(&RequestLabels { provider, route: route.to_owned(), status }).clone();
        counter.inc();
        let mut known = m.request_counters.write().unwrap_or_else(PoisonError::into_inner);
        known.entry((provider, status)).or_default().insert(route.to_owned(), counter);
    }

    /// `keyless_requests_total` of one route, for a caller that counts its requests on a hot path.
    pub fn route_requests(&self, provider: &'static str, route: &str) -> RouteRequests {
        RouteRequests { metrics: self.clone(), provider, route: route.to_owned(), ok: OnceLock::new() }
    }

    pub fn record_lookup(&self, provider: &'static str, result: Lookup) {
        self.lookup_counter(provider, result).inc();
    }

    /// The counter of one `keyless_cache_lookups_total` series, for a caller that counts on a
    /// hot path without looking the series up each time.
    pub fn lookup_counter(&self, provider: &'static str, result: Lookup) -> LookupCounter {
        LookupCounter(self.inner.lookups.get_or_create(&LookupLabels { provider, result: result.label() }).clone())
    }

    /// `expiry`: the earliest among the identity's configured (pre-warmed) credentials; an ad-hoc
    /// key's credential (an audience a client asked for) must not move it, or an alert would lie.
    pub fn set_credential_expiry(&self, provider: &'static str, identity: &str, expiry: SystemTime) {
        self.inner
            .credential_expiry
            .get_or_create(&IdentityLabels { provider, identity: identity.to_owned() })
            .set(i64::try_from(unix_seconds(expiry)).unwrap_or(i64::MAX));
    }

    /// Sets `keyless_identity_ready` of every configured identity from `statuses` (one per
    /// configured credential): 1 when all of the identity's are ready. Called on each scrape, so
    /// the series exists from start even for an identity that never got a credential.
    pub fn set_identity_readiness(&self, statuses: &[crate::IdentityStatus]) {
        let mut identities: HashMap<(&'static str, &str), bool> = HashMap::new();
        for s in statuses {
            *identities.entry((s.provider, s.identity.as_str())).or_insert(true) &= s.ready();
        }
        for ((provider, identity), ready) in identities {
            self.inner
                .identity_ready
                .get_or_create(&IdentityLabels { provider, identity: identity.to_owned() })
                .set(i64::from(ready));
        }
    }

    /// `source` is the source's kind (`file`), `path` the file's path for a file source, else empty.
    pub fn set_subject_token_expiry(&self, source: &'static str, path: &str, expiry: SystemTime) {
        self.inner
            .subject_token_expiry
            .get_or_create(&SourceLabels { source, path: path.to_owned() })
            .set(i64::try_from(unix_seconds(expiry)).unwrap_or(i64::MAX));
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.inner.registry);
        out
    }
}

/// The `keyless_requests_total` series of one route. A 200, what nearly every request gets, is
/// counted by one atomic add (its series is found on first use); other statuses go through
/// [`Metrics::record_request`]. Counts land in the same series either way.
#[derive(Debug)]
pub struct RouteRequests {
    metrics: Metrics,
    provider: &'static str,
    route: String,
    ok: OnceLock<Counter>,
}

impl RouteRequests {
    pub fn record(&self, status: u16) {
        if status != 200 {
            self.metrics.record_request(self.provider, &self.route, status);
            return;
        }
        let requests = &self.metrics.inner.requests;
        self.ok
            .get_or_init(|| {
                let labels = RequestLabels { provider: self.provider, route: self.route.clone(), status };
                requests.get_or_create(&labels).clone()
            })
            .inc();
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
        m.set_subject_token_expiry("file", "/var/run/token", SystemTime::UNIX_EPOCH);
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
        assert!(
            text.contains(r#"keyless_subject_token_expiry_timestamp_seconds{source="file",path="/var/run/token"} 0"#),
            "{text}"
        );
    }

    #[test]
    fn an_identity_is_ready_when_every_configured_credential_of_it_is() {
        use crate::{ExchangeError, IdentityStatus};
        let status = |identity: &str, key: &str, ready: bool| IdentityStatus {
            provider: "gcp",
            identity: identity.to_owned(),
            key: key.to_owned(),
            valid_until: ready.then_some(SystemTime::UNIX_EPOCH),
            last_error: (!ready).then(|| ExchangeError::terminal("PERMISSION_DENIED")),
        };
        let m = Metrics::new();
        m.set_identity_readiness(&[
            status("a@p.iam.gserviceaccount.com", "access token, scopes cloud-platform", true),
            status("a@p.iam.gserviceaccount.com", "ID token for audience https://x", false),
            status("b@p.iam.gserviceaccount.com", "access token, scopes cloud-platform", true),
        ]);
        let text = m.encode();
        assert!(text.contains("keyless_identity_ready{provider=\"gcp\",identity=\"a@p.iam.gserviceaccount.com\"} 0\n"));
        assert!(text.contains("keyless_identity_ready{provider=\"gcp\",identity=\"b@p.iam.gserviceaccount.com\"} 1\n"));
    }

    #[test]
    fn the_build_info_given_and_the_process_metrics_are_exported() {
        let text = Metrics::with_build_info(BuildInfo { version: "9.8.7", revision: "0123abc" }).encode();
        assert!(text.contains("keyless_build_info{version=\"9.8.7\",revision=\"0123abc\"} 1\n"), "{text}");
        // Without a binary's build info, no invented one.
        assert!(!Metrics::new().encode().contains("keyless_build_info"));
        // keyless runs on Linux, where /proc always exists: the process metrics must be there.
        if cfg!(target_os = "linux") {
            for name in [
                "# TYPE process_cpu_seconds counter",
                "process_cpu_seconds_total ",
                "process_resident_memory_bytes ",
                "process_virtual_memory_bytes ",
                "process_open_fds ",
                "process_max_fds ",
                "process_threads ",
                "process_start_time_seconds ",
            ] {
                assert!(text.contains(name), "{name} missing from:\n{text}");
            }
        }
    }

    /// The value of the `keyless_requests_total{provider,route,status}` series, if it exists.
    fn requests_total(m: &Metrics, provider: &str, route: &str, status: u16) -> Option<u64> {
        let series =
            format!("keyless_requests_total{{provider=\"{provider}\",route=\"{route}\",status=\"{status}\"}} ");
        m.encode().lines().find_map(|l| l.strip_prefix(&series)?.parse().ok())
    }

    #[test]
    fn requests_are_counted_per_label_set_across_clones() {
        let m = Metrics::new();
        let clone = m.clone();
        for _ in 0..3 {
            m.record_request("aws", "/v1/credentials", 200);
        }
        clone.record_request("aws", "/v1/credentials", 200);
        clone.record_request("aws", "/v1/credentials", 403);
        m.record_request("gcp", "/v1/credentials", 200);
        assert_eq!(requests_total(&m, "aws", "/v1/credentials", 200), Some(4));
        assert_eq!(requests_total(&m, "aws", "/v1/credentials", 403), Some(1));
        assert_eq!(requests_total(&m, "gcp", "/v1/credentials", 200), Some(1));
    }

    #[test]
    fn a_route_counter_counts_into_the_same_series_as_record_request() {
        let m = Metrics::new();
        let route = m.route_requests("aws", "/v1/credentials");
        assert!(!m.encode().contains("keyless_requests_total{"), "no series before the first request");
        route.record(200);
        route.record(200);
        route.record(403);
        m.record_request("aws", "/v1/credentials", 200);
        m.record_request("aws", "/v1/credentials", 403);
        assert_eq!(requests_total(&m, "aws", "/v1/credentials", 200), Some(3));
        assert_eq!(requests_total(&m, "aws", "/v1/credentials", 403), Some(2));
    }
}
