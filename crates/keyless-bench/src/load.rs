//! The load generator: N keep-alive HTTP/1.1 connections, each sending one request after the
//! other for a fixed time; every request started in the measured window is timed.
//!
//! The same code drives keyless and the bare server, with byte-identical requests, so whatever
//! the generator costs, it costs both the same.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{HOST, HeaderName, HeaderValue};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::BenchError;

/// One request, sent again and again.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub method: Method,
    pub path_and_query: String,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl Target {
    /// The same request sent to another server.
    pub fn at(&self, addr: SocketAddr) -> Self {
        Self { addr, ..self.clone() }
    }

    fn request(&self) -> Result<Request<Empty<Bytes>>, BenchError> {
        let mut builder = Request::builder().method(self.method.clone()).uri(self.path_and_query.as_str());
        if let Some(headers) = builder.headers_mut() {
            headers.insert(HOST, HeaderValue::from_static("127.0.0.1"));
            for (name, value) in &self.headers {
                headers.insert(name.clone(), value.clone());
            }
        }
        builder.body(Empty::new()).map_err(|e| BenchError::Request(format!("{} {e}", self.path_and_query)))
    }
}

/// What one fixed-duration run measured.
#[derive(Debug, Clone)]
pub struct Run {
    /// Requests answered 200 with the expected body length, started in the measured window.
    pub ok: u64,
    /// Requests that failed (transport error, other status, other body length).
    pub errors: u64,
    pub window: Duration,
    /// Latency of every successful measured request, in microseconds, sorted.
    pub latencies_us: Vec<u32>,
}

impl Run {
    pub fn throughput(&self) -> f64 {
        self.ok as f64 / self.window.as_secs_f64()
    }

    /// The `q` quantile (0..=1) of the latencies, in microseconds.
    pub fn quantile_us(&self, q: f64) -> u32 {
        if self.latencies_us.is_empty() {
            return 0;
        }
        let rank = ((self.latencies_us.len() as f64) * q).ceil() as usize;
        self.latencies_us[rank.clamp(1, self.latencies_us.len()) - 1]
    }
}

/// Opens one keep-alive connection; the connection task ends when the sender is dropped.
pub async fn connect(addr: SocketAddr) -> Result<SendRequest<Empty<Bytes>>, BenchError> {
    let stream = TcpStream::connect(addr).await.map_err(|e| BenchError::Connect { addr, source: e })?;
    // Each request is one small write; Nagle would add a delayed-ACK stall to every one.
    stream.set_nodelay(true).map_err(|e| BenchError::Connect { addr, source: e })?;
    let (sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| BenchError::Request(format!("HTTP/1.1 handshake with {addr}: {e}")))?;
    tokio::spawn(connection);
    Ok(sender)
}

/// Sends `target` once on `sender`; the status and body length of the answer.
pub async fn send(sender: &mut SendRequest<Empty<Bytes>>, target: &Target) -> Result<(StatusCode, usize), BenchError> {
    sender.ready().await.map_err(|e| BenchError::Request(format!("connection to {} closed: {e}", target.addr)))?;
    let response = sender
        .send_request(target.request()?)
        .await
        .map_err(|e| BenchError::Request(format!("{} {}: {e}", target.method, target.path_and_query)))?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| BenchError::Request(format!("reading the body of {}: {e}", target.path_and_query)))?
        .to_bytes();
    Ok((status, body.len()))
}

/// Drives `connections` connections against `target` for `warmup` (not measured) then `window`;
/// a request counts as successful when it is answered 200 with `body_len` bytes.
pub async fn run(
    target: &Target,
    body_len: usize,
    connections: usize,
    warmup: Duration,
    window: Duration,
) -> Result<Run, BenchError> {
    let mut senders = Vec::with_capacity(connections);
    for _ in 0..connections {
        senders.push(connect(target.addr).await?);
    }
    let target = Arc::new(target.clone());
    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + window;
    let tasks: Vec<_> = senders
        .into_iter()
        .map(|sender| tokio::spawn(drive(sender, target.clone(), body_len, measure_from, end)))
        .collect();
    let mut total = Run { ok: 0, errors: 0, window, latencies_us: Vec::new() };
    for task in tasks {
        let part = task.await.map_err(|e| BenchError::Request(format!("a connection task failed: {e}")))?;
        total.ok += part.ok;
        total.errors += part.errors;
        total.latencies_us.extend(part.latencies_us);
    }
    total.latencies_us.sort_unstable();
    Ok(total)
}

async fn drive(
    mut sender: SendRequest<Empty<Bytes>>,
    target: Arc<Target>,
    body_len: usize,
    measure_from: Instant,
    end: Instant,
) -> Run {
    let mut run = Run { ok: 0, errors: 0, window: end - measure_from, latencies_us: Vec::with_capacity(1 << 14) };
    loop {
        let started = Instant::now();
        if started >= end {
            return run;
        }
        let outcome = send(&mut sender, &target).await;
        let measured = started >= measure_from;
        match outcome {
            Ok((StatusCode::OK, len)) if len == body_len => {
                if measured {
                    run.ok += 1;
                    run.latencies_us.push(u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX));
                }
            }
            Ok(_) => run.errors += u64::from(measured),
            Err(_) => {
                run.errors += u64::from(measured);
                // The connection is gone: open another one, as a client would.
                match connect(target.addr).await {
                    Ok(fresh) => sender = fresh,
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
        }
    }
}
