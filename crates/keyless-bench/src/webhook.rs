//! `keyless webhook` under hostile connections and under the largest reviews (docs/benchmarks.md,
//! "Webhook"). The webhook runs as its own process (its memory is its own) against a stand-in
//! for the API server's ServiceAccount reads ([`ServiceAccountApi`]: a list, a watch that stays
//! open, a GET), so an opted-in pod goes through the whole injection as in a cluster.
//!
//! - `webhook-hostile`: a review's latency (a new TLS connection each, as after the API server's
//!   pool is displaced) alone, then with `--hostile` connections held open from eight source
//!   addresses: a third stall their body, a third never start TLS, a third dribble their head.
//!   Each hostile client reconnects when it is cut, so the pressure lasts the whole measurement.
//! - `webhook-memory`: peak RSS (`VmHWM`) of a fresh webhook after one review of `--pod-bytes`
//!   (3 MiB: the largest request body the API server accepts), and of another after
//!   `--concurrent` such reviews sent at once.

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpSocket};
use tokio::process::Child;
use tokio::time::Instant;

use crate::BenchError;
use crate::procs::{self, free_ports};
use crate::stack::{Launcher, command, spawn};

const NAMESPACE: &str = "shop";
const ACCOUNT: &str = "billing";
const ROLE: &str = "arn:aws:iam::111122223333:role/shop";

#[derive(Debug, Clone, clap::Args)]
pub struct WebhookOptions {
    /// The keyless binary to measure (a release build with the webhook) [default: `keyless`
    /// beside this binary].
    #[arg(long)]
    keyless: Option<PathBuf>,
    /// Hostile connections held open (webhook-hostile).
    #[arg(long, default_value_t = 1000)]
    hostile: usize,
    /// Reviews measured, one after the other, each on a new connection (webhook-hostile).
    #[arg(long, default_value_t = 200)]
    reviews: usize,
    /// The JSON size of the large pod's review (webhook-memory).
    #[arg(long, default_value_t = 3 * 1024 * 1024)]
    pod_bytes: usize,
    /// Large reviews sent at once (webhook-memory).
    #[arg(long, default_value_t = 16)]
    concurrent: usize,
    /// Passed to `keyless webhook --max-concurrent-reviews` [default: the webhook's].
    #[arg(long)]
    max_concurrent_reviews: Option<u16>,
}

impl WebhookOptions {
    fn keyless(&self) -> PathBuf {
        self.keyless.clone().unwrap_or_else(crate::bench::default_keyless)
    }
}

/// The API server's ServiceAccount reads, as the webhook makes them: one annotated account.
struct ServiceAccountApi {
    address: SocketAddr,
}

/// A watch that stays open with nothing to say.
struct Silent;

impl hyper::body::Body for Silent {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Pending
    }
}

type Answer = http_body_util::Either<Full<Bytes>, Silent>;

impl ServiceAccountApi {
    async fn start() -> Result<Self, BenchError> {
        let any = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let listener = TcpListener::bind(any).await.map_err(|e| BenchError::Connect { addr: any, source: e })?;
        let address = listener.local_addr().map_err(|e| BenchError::Connect { addr: any, source: e })?;
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    // Out of descriptors, most likely: a pause rather than a spin.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(|request: Request<Incoming>| async move {
                        Ok::<_, Infallible>(Self::answer(&request))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Self { address })
    }

    fn answer(request: &Request<Incoming>) -> Response<Answer> {
        let account = json!({
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": { "name": ACCOUNT, "namespace": NAMESPACE, "resourceVersion": "1",
                          "annotations": { "eks.amazonaws.com/role-arn": ROLE } },
        });
        let path = request.uri().path();
        let query = request.uri().query().unwrap_or_default();
        let json = |status: u16, body: Value| {
            let mut response = Response::new(http_body_util::Either::Left(Full::new(Bytes::from(body.to_string()))));
            *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::OK);
            response
                .headers_mut()
                .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
            response
        };
        if path == "/api/v1/serviceaccounts" && query.contains("watch=true") {
            return Response::new(http_body_util::Either::Right(Silent));
        }
        if path == "/api/v1/serviceaccounts" {
            return json(
                200,
                json!({ "kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1",
                        "metadata": { "resourceVersion": "1" }, "items": [account] }),
            );
        }
        if path == format!("/api/v1/namespaces/{NAMESPACE}/serviceaccounts/{ACCOUNT}") {
            return json(200, account);
        }
        json(
            404,
            json!({ "kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404 }),
        )
    }

    fn kubeconfig(&self, dir: &Path) -> Result<PathBuf, BenchError> {
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: bench\n  cluster:\n    server: http://{}\nusers:\n- name: u\n  user:\n    token: t\ncontexts:\n- name: c\n  context:\n    cluster: bench\n    user: u\ncurrent-context: c\n",
            self.address
        );
        std::fs::write(&path, text).map_err(|e| BenchError::File { path: path.clone(), source: e })?;
        Ok(path)
    }
}

/// A running `keyless webhook` with a self-signed certificate for 127.0.0.1.
struct Webhook {
    _child: Child,
    pid: u32,
    address: SocketAddr,
    tls: tokio_rustls::TlsConnector,
    http: reqwest::Client,
}

impl Webhook {
    async fn start(
        options: &WebhookOptions,
        api: &ServiceAccountApi,
        dir: &Path,
        name: &str,
    ) -> Result<Self, BenchError> {
        let keyless = options.keyless();
        let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()])
            .map_err(|e| BenchError::Request(format!("cannot make a certificate: {e}")))?;
        let (cert, key) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
        let write = |path: &Path, text: String| {
            std::fs::write(path, text).map_err(|e| BenchError::File { path: path.to_owned(), source: e })
        };
        write(&cert, certified.cert.pem())?;
        write(&key, certified.signing_key.serialize_pem())?;
        let (listen, admin) = free_ports()?;
        let log = dir.join(format!("{name}.log"));
        let mut command = command(&Launcher::default(), &keyless, &log)?;
        command
            .arg("webhook")
            .args(["--listen", &listen.to_string(), "--admin-listen", &admin.to_string()])
            .arg("--tls-cert")
            .arg(&cert)
            .arg("--tls-key")
            .arg(&key)
            .args(["--aws-region", "eu-west-1"])
            .env("KUBECONFIG", api.kubeconfig(dir)?);
        if let Some(n) = options.max_concurrent_reviews {
            command.args(["--max-concurrent-reviews", &n.to_string()]);
        }
        let mut child = spawn(command, &keyless)?;
        let pem = certified.cert.pem();
        let http = reqwest::Client::builder()
            .no_proxy()
            .add_root_certificate(
                reqwest::Certificate::from_pem(pem.as_bytes()).map_err(|e| BenchError::Request(e.to_string()))?,
            )
            .local_address(IpAddr::V4(Ipv4Addr::LOCALHOST))
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| BenchError::Request(e.to_string()))?;
        let readyz = format!("http://{admin}/readyz");
        let give_up = Instant::now() + Duration::from_secs(60);
        loop {
            if http.get(&readyz).send().await.is_ok_and(|r| r.status().is_success()) {
                break;
            }
            if child.try_wait().ok().flatten().is_some() || Instant::now() > give_up {
                return Err(BenchError::NotReady { what: "keyless webhook", log });
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let pid = child.id().ok_or(BenchError::NotReady { what: "keyless webhook", log })?;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(certified.cert.der().clone()).map_err(|e| BenchError::Request(e.to_string()))?;
        let config =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|e| BenchError::Request(e.to_string()))?
                .with_root_certificates(roots)
                .with_no_client_auth();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config));
        Ok(Self { _child: child, pid, address: listen, tls, http })
    }

    /// Sends `body` to `/mutate`; the answer's status and whether it carries a patch.
    async fn review(&self, body: Bytes) -> Result<(u16, bool), BenchError> {
        let response = self
            .http
            .post(format!("https://{}/mutate", self.address))
            .header("Content-Type", "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| BenchError::Request(format!("a review: {e}")))?;
        let status = response.status().as_u16();
        let answer: Value = response.json().await.unwrap_or_default();
        // Today a JSON array of bytes; the documented base64 string once the patch is rebuilt.
        let patch = &answer["response"]["patch"];
        Ok((status, patch.is_string() || patch.is_array()))
    }
}

/// A Pod CREATE review of `pod`, as the tests send it (`keyless_test_support::webhook`), as a dry
/// run: the benchmark's thousands of reviews are not counted as injections.
fn review(pod: Value) -> Bytes {
    let mut review = keyless_test_support::webhook::pod_review("0f5b2c4e-bench", NAMESPACE, &pod);
    review["request"]["dryRun"] = json!(true);
    Bytes::from(review.to_string())
}

/// An opted-in pod of 400 containers with 200 variables each, padded to a review of `bytes`.
fn large_review(bytes: usize) -> Bytes {
    let pod = |value_len: usize| {
        let env: Vec<Value> =
            (0..200).map(|i| json!({ "name": format!("VAR_{i:03}"), "value": "v".repeat(value_len) })).collect();
        let containers: Vec<Value> =
            (0..400).map(|i| json!({ "name": format!("c{i:03}"), "image": "example/app:1", "env": env })).collect();
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": { "generateName": "big-", "namespace": NAMESPACE, "labels": { "keyless.dev/inject": "true" } },
            "spec": { "serviceAccountName": ACCOUNT, "containers": containers },
        })
    };
    let bare = review(pod(0)).len();
    review(pod(bytes.saturating_sub(bare) / (400 * 200)))
}

fn small_review(opted_in: bool) -> Bytes {
    let labels = if opted_in { json!({ "keyless.dev/inject": "true" }) } else { json!({}) };
    review(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": "app", "namespace": NAMESPACE, "labels": labels },
        "spec": { "serviceAccountName": ACCOUNT, "containers": [{ "name": "app", "image": "example/app:1" }] },
    }))
}

/// The three kinds of hostile client.
#[derive(Debug, Clone, Copy)]
enum Hostile {
    StalledBody,
    SilentTls,
    SlowHead,
}

/// Keeps one hostile connection of `kind` open from `source` until the bench ends: reconnects
/// whenever the webhook cuts it. `open` counts those open now.
async fn hostile(webhook: Arc<Webhook>, kind: Hostile, source: Ipv4Addr, open: Arc<AtomicUsize>) {
    loop {
        let socket = match TcpSocket::new_v4() {
            Ok(s) => s,
            Err(_) => return,
        };
        if socket.bind(SocketAddr::new(IpAddr::V4(source), 0)).is_err() {
            return;
        }
        let Ok(mut tcp) = socket.connect(webhook.address).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        open.fetch_add(1, Ordering::SeqCst);
        match kind {
            Hostile::SilentTls => {
                let mut buf = [0u8; 1];
                let _ = tcp.read(&mut buf).await;
            }
            Hostile::StalledBody | Hostile::SlowHead => {
                let name = ServerName::IpAddress(Ipv4Addr::LOCALHOST.into());
                if let Ok(mut tls) = webhook.tls.connect(name, tcp).await {
                    let start: &[u8] = match kind {
                        Hostile::StalledBody => {
                            b"POST /mutate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 4096\r\n\r\n{"
                        }
                        _ => b"POST /mutate HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: a",
                    };
                    let _ = tls.write_all(start).await;
                    let _ = tls.flush().await;
                    let mut buf = [0u8; 512];
                    loop {
                        // The slow head dribbles a byte a second; both wait for the cut.
                        match tokio::time::timeout(Duration::from_secs(1), tls.read(&mut buf)).await {
                            Ok(Ok(0) | Err(_)) => break,
                            Ok(Ok(_)) => {}
                            Err(_) => {
                                if matches!(kind, Hostile::SlowHead)
                                    && (tls.write_all(b"a").await.is_err() || tls.flush().await.is_err())
                                {
                                    break;
                                }
                            }
                        }
                    }
                }
            }
        }
        open.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Latencies of `n` reviews of a small pod not opted in, one after the other, each on a new
/// connection; failures counted.
async fn latencies(webhook: &Webhook, n: usize) -> (Vec<Duration>, usize) {
    let body = small_review(false);
    let mut took = Vec::with_capacity(n);
    let mut failed = 0;
    for _ in 0..n {
        let started = Instant::now();
        match webhook.review(body.clone()).await {
            Ok((200, _)) => took.push(started.elapsed()),
            _ => failed += 1,
        }
    }
    took.sort();
    (took, failed)
}

fn quantile(sorted: &[Duration], q: f64) -> String {
    if sorted.is_empty() {
        return "-".to_owned();
    }
    let at = ((sorted.len() - 1) as f64 * q).round() as usize;
    format!("{:.1} ms", sorted[at].as_secs_f64() * 1000.0)
}

#[allow(clippy::print_stdout)] // the report
pub async fn hostile_report(options: &WebhookOptions) -> Result<(), BenchError> {
    println!("{}", crate::fleet_procs::raise_nofile());
    let dir = tempfile::tempdir().map_err(|e| BenchError::File { path: std::env::temp_dir(), source: e })?;
    let api = ServiceAccountApi::start().await?;
    let webhook = Arc::new(Webhook::start(options, &api, dir.path(), "hostile").await?);
    println!("{}; load average {}", procs::machine(), procs::load_average());
    println!();
    println!("| hostile connections open | reviews | failed | p50 | p99 | max | webhook RSS (peak) |");
    println!("|---|---|---|---|---|---|---|");
    let row = |open: usize, (took, failed): (Vec<Duration>, usize), pid: u32| {
        let memory = procs::memory(pid).map_or_else(
            |_| "-".to_owned(),
            |m| format!("{:.1} MiB ({:.1} MiB)", m.rss_kib as f64 / 1024.0, m.hwm_kib as f64 / 1024.0),
        );
        println!(
            "| {open} | {} | {failed} | {} | {} | {} | {memory} |",
            took.len() + failed,
            quantile(&took, 0.5),
            quantile(&took, 0.99),
            quantile(&took, 1.0)
        );
    };
    row(0, latencies(&webhook, options.reviews).await, webhook.pid);

    let open = Arc::new(AtomicUsize::new(0));
    let kinds = [Hostile::StalledBody, Hostile::SilentTls, Hostile::SlowHead];
    let mut tasks = Vec::new();
    for i in 0..options.hostile {
        // Eight source addresses: each stays under the per-address cap, together they fill the
        // listener as a few attacking pods would.
        let source = Ipv4Addr::new(127, 0, 0, 2 + (i % 8) as u8);
        tasks.push(tokio::spawn(hostile(Arc::clone(&webhook), kinds[i % 3], source, Arc::clone(&open))));
    }
    let give_up = Instant::now() + Duration::from_secs(30);
    while open.load(Ordering::SeqCst) < options.hostile && Instant::now() < give_up {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let held = open.load(Ordering::SeqCst);
    row(held, latencies(&webhook, options.reviews).await, webhook.pid);
    println!();
    println!(
        "Hostile: a third stalled bodies (`Content-Length: 4096`, one byte), a third silent TCP (no ClientHello), a third slow heads (a byte a second), from 8 source addresses, each reconnecting when cut; reviews of a small pod not opted in, each on a new TLS connection from 127.0.0.1."
    );
    for task in tasks {
        task.abort();
    }
    Ok(())
}

#[allow(clippy::print_stdout)] // the report
pub async fn memory_report(options: &WebhookOptions) -> Result<(), BenchError> {
    println!("{}", crate::fleet_procs::raise_nofile());
    let dir = tempfile::tempdir().map_err(|e| BenchError::File { path: std::env::temp_dir(), source: e })?;
    let api = ServiceAccountApi::start().await?;
    let large = large_review(options.pod_bytes);
    println!("{}; load average {}", procs::machine(), procs::load_average());
    println!();
    println!("| scenario | answers | slowest | webhook peak RSS (VmHWM) |");
    println!("|---|---|---|---|");
    let mib = |kib: u64| format!("{:.1} MiB", kib as f64 / 1024.0);

    let webhook = Webhook::start(options, &api, dir.path(), "idle").await?;
    let (status, patched) = webhook.review(small_review(true)).await?;
    let hwm = procs::memory(webhook.pid)?.hwm_kib;
    println!("| one small opted-in pod | {status}{} | - | {} |", if patched { " with a patch" } else { "" }, mib(hwm));
    drop(webhook);

    let webhook = Webhook::start(options, &api, dir.path(), "one").await?;
    let started = Instant::now();
    let (status, patched) = webhook.review(large.clone()).await?;
    let took = started.elapsed();
    let hwm = procs::memory(webhook.pid)?.hwm_kib;
    println!(
        "| one review of {} bytes (400 containers x 200 variables) | {status}{} | {:.0} ms | {} |",
        large.len(),
        if patched { " with a patch" } else { "" },
        took.as_secs_f64() * 1000.0,
        mib(hwm)
    );
    drop(webhook);

    let webhook = Arc::new(Webhook::start(options, &api, dir.path(), "concurrent").await?);
    let started = Instant::now();
    let sent: Vec<_> = (0..options.concurrent)
        .map(|_| {
            let (webhook, large) = (Arc::clone(&webhook), large.clone());
            tokio::spawn(async move { (webhook.review(large).await, started.elapsed()) })
        })
        .collect();
    let mut statuses = std::collections::BTreeMap::<String, usize>::new();
    let mut slowest = Duration::ZERO;
    for task in sent {
        let (answer, took) = task.await.map_err(|e| BenchError::Request(e.to_string()))?;
        let key = match answer {
            Ok((status, _)) => status.to_string(),
            Err(e) => format!("error ({e})"),
        };
        *statuses.entry(key).or_default() += 1;
        slowest = slowest.max(took);
    }
    let hwm = procs::memory(webhook.pid)?.hwm_kib;
    let answers: Vec<String> = statuses.iter().map(|(k, n)| format!("{n} x {k}")).collect();
    println!(
        "| {} such reviews at once | {} | {:.0} ms | {} |",
        options.concurrent,
        answers.join(", "),
        slowest.as_secs_f64() * 1000.0,
        mib(hwm)
    );
    Ok(())
}
