//! Continuous raw-HTTP load on the five native endpoints of a sidecar, recording each request's
//! outcome, as each endpoint's SDKs make the request.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use reqwest::header::HeaderValue;

use crate::clock::{parse_rfc3339_utc, wall_clock};
use crate::sidecar::{AZURE_RESOURCE, CONTAINER_AUTHORIZATION, IDENTITY_HEADER, Sidecar};

/// The native endpoints keyless serves: the registry's one list, shared with the benchmarks.
pub use keyless_registry::endpoints::{ClientRequest, Endpoint, Presented, imds_session_request};

/// The headers every credential route of a sidecar serving every provider refuses when given
/// twice: `Host`, `Authorization`, and each registered provider's declared security headers
/// (`keyless_registry::single_headers`), lowercase.
pub fn single_headers() -> Vec<String> {
    let generic = keyless_provider::guard::SINGLE_HEADERS.iter().map(|h| h.as_str().to_owned());
    generic.chain(keyless_registry::single_headers().into_iter().map(str::to_owned)).collect()
}

/// One request of the load: when it was sent, how long it took, and what came back.
#[derive(Clone, Debug)]
pub struct Sample {
    pub endpoint: Endpoint,
    pub sent: SystemTime,
    pub took: Duration,
    /// The served credential's expiry, or the failure (status 0: no HTTP answer).
    pub outcome: Result<SystemTime, (u16, String)>,
}

#[derive(Debug, Default)]
struct Record {
    samples: Mutex<Vec<Sample>>,
    secrets: Mutex<BTreeSet<String>>,
}

/// Raw-HTTP clients on every endpoint, each with its own keep-alive connection pool, one request
/// every `pace` per client.
#[derive(Debug)]
pub struct Load {
    record: Arc<Record>,
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// What a load run saw.
#[derive(Debug)]
pub struct LoadReport {
    pub samples: Vec<Sample>,
    /// Every distinct secret the clients were served (keys, session tokens, access tokens).
    pub secrets: Vec<String>,
}

impl Load {
    pub fn start(sidecar: &Sidecar, clients_per_endpoint: usize, pace: Duration) -> Self {
        let record = Arc::new(Record::default());
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let mut tasks = Vec::new();
        for endpoint in Endpoint::ALL {
            for _ in 0..clients_per_endpoint {
                let (record, mut stopped, listen) = (record.clone(), stopped.clone(), sidecar.listen);
                tasks.push(tokio::spawn(async move {
                    let http = reqwest::Client::builder()
                        .no_proxy()
                        .timeout(Duration::from_secs(5))
                        .build()
                        .expect("an HTTP client");
                    let mut imds_session = None;
                    let mut tick = tokio::time::interval(pace);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    loop {
                        tokio::select! {
                            _ = tick.tick() => {}
                            _ = stopped.wait_for(|s| *s) => break,
                        }
                        let sent = wall_clock();
                        let started = tokio::time::Instant::now();
                        let (outcome, secrets) = request(&http, endpoint, listen, &mut imds_session, sent).await;
                        let sample = Sample { endpoint, sent, took: started.elapsed(), outcome };
                        record.samples.lock().unwrap_or_else(PoisonError::into_inner).push(sample);
                        if !secrets.is_empty() {
                            record.secrets.lock().unwrap_or_else(PoisonError::into_inner).extend(secrets);
                        }
                    }
                }));
            }
        }
        Self { record, stop, tasks }
    }

    /// How many samples so far satisfy `f`.
    pub fn count(&self, f: impl Fn(&Sample) -> bool) -> usize {
        self.record.samples.lock().unwrap_or_else(PoisonError::into_inner).iter().filter(|s| f(s)).count()
    }

    pub async fn stop(self) -> LoadReport {
        self.stop.send_replace(true);
        for task in self.tasks {
            task.await.expect("a load client panicked");
        }
        let samples = std::mem::take(&mut *self.record.samples.lock().unwrap_or_else(PoisonError::into_inner));
        let secrets = self.record.secrets.lock().unwrap_or_else(PoisonError::into_inner).iter().cloned().collect();
        LoadReport { samples, secrets }
    }
}

type Outcome = (Result<SystemTime, (u16, String)>, Vec<String>);

/// `request` on `base` as a reqwest request.
fn send(http: &reqwest::Client, base: &str, request: ClientRequest) -> reqwest::RequestBuilder {
    let headers = request.headers.into_iter().collect();
    http.request(request.method, format!("{base}{}", request.path_and_query)).headers(headers)
}

/// One request as the endpoint's SDKs make it: the expiry served (and the secrets in the
/// answer), or the failure.
async fn request(
    http: &reqwest::Client,
    endpoint: Endpoint,
    listen: SocketAddr,
    imds_session: &mut Option<String>,
    sent: SystemTime,
) -> Outcome {
    let base = format!("http://{listen}");
    if endpoint == Endpoint::AwsImds && imds_session.is_none() {
        match send(http, &base, imds_session_request(21600)).send().await {
            Ok(r) if r.status().is_success() => *imds_session = Some(r.text().await.unwrap_or_default()),
            Ok(r) => return (Err((r.status().as_u16(), r.text().await.unwrap_or_default())), Vec::new()),
            Err(e) => return (Err((0, e.to_string())), Vec::new()),
        }
    }
    let presented = Presented {
        aws_authorization: HeaderValue::from_static(CONTAINER_AUTHORIZATION),
        imds_session: imds_session
            .as_deref()
            .and_then(|s| HeaderValue::from_str(s).ok())
            .unwrap_or(HeaderValue::from_static("")),
        identity_header: HeaderValue::from_static(IDENTITY_HEADER),
        role_name: "keyless-dev".to_owned(),
        azure_resource: AZURE_RESOURCE.replace(':', "%3A").replace('/', "%2F"),
    };
    let request = send(http, &base, endpoint.request(&presented));
    let response = match request.send().await {
        Ok(r) => r,
        Err(e) => return (Err((0, e.to_string())), Vec::new()),
    };
    let status = response.status().as_u16();
    let body = response.text().await.unwrap_or_default();
    if status != 200 {
        if status == 401 && endpoint == Endpoint::AwsImds {
            *imds_session = None;
        }
        return (Err((status, body)), Vec::new());
    }
    let json: serde_json::Value = match serde_json::from_str(&body) {
        Ok(json) => json,
        Err(_) => return (Err((status, body)), Vec::new()),
    };
    let text = |key: &str| json[key].as_str().unwrap_or_default().to_owned();
    let epoch = |secs: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
    let (expiry, secrets) = match endpoint {
        Endpoint::AwsContainer | Endpoint::AwsImds => {
            (parse_rfc3339_utc(&text("Expiration")), vec![text("AccessKeyId"), text("SecretAccessKey"), text("Token")])
        }
        Endpoint::GceToken => {
            (json["expires_in"].as_u64().map(|s| sent + Duration::from_secs(s)), vec![text("access_token")])
        }
        Endpoint::AzureImds | Endpoint::AzureAppService => {
            (text("expires_on").parse().ok().map(epoch), vec![text("access_token")])
        }
    };
    match expiry {
        Some(expiry) if secrets.iter().all(|s| !s.is_empty()) => (Ok(expiry), secrets),
        _ => (Err((status, body)), Vec::new()),
    }
}

/// Requests, failures and latency of some samples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tally {
    pub requests: usize,
    pub failures: usize,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl Tally {
    pub fn of<'a>(samples: impl IntoIterator<Item = &'a Sample>) -> Self {
        Self::of_latencies(samples.into_iter().map(|s| (s.took, s.outcome.is_err())))
    }

    /// From `(latency, failed)` pairs.
    pub fn of_latencies(samples: impl IntoIterator<Item = (Duration, bool)>) -> Self {
        let mut took = Vec::new();
        let mut failures = 0;
        for (latency, failed) in samples {
            took.push(latency);
            failures += usize::from(failed);
        }
        took.sort_unstable();
        let at = |q: f64| took.get(((took.len() as f64 * q) as usize).min(took.len().saturating_sub(1))).copied();
        Self {
            requests: took.len(),
            failures,
            p50: at(0.5).unwrap_or_default(),
            p99: at(0.99).unwrap_or_default(),
            max: took.last().copied().unwrap_or_default(),
        }
    }
}

impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} requests, {} failed, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            self.requests,
            self.failures,
            self.p50.as_secs_f64() * 1e3,
            self.p99.as_secs_f64() * 1e3,
            self.max.as_secs_f64() * 1e3
        )
    }
}
