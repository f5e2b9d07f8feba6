//! Normal clients while the credential listener is attacked (docs/benchmarks.md, "Normal clients
//! under hostile load"): the latency of a normal request for a cached token, each on a new
//! connection, with nothing else going on and during each attack `tests/tests/hostile.rs` makes.
//! The tests prove the behaviour (431 and a close, the header deadline, the connection bound);
//! how long a normal client waits meanwhile depends on the machine, so it is measured here.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use hyper::StatusCode;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::BenchError;
use crate::bench::{Stack, client_secrets, default_keyless};
use crate::endpoints::{self, Endpoint};
use crate::load::{self, Target};
use crate::report;
use crate::stack::{Launcher, Sidecar};

#[derive(Debug, Clone, clap::Args)]
pub struct HostileOptions {
    /// The keyless binary to measure (a release build) [default: `keyless` beside this binary].
    #[arg(long)]
    keyless: Option<PathBuf>,
    /// Normal requests in each scenario, one after the other, each on a new connection.
    #[arg(long, default_value_t = 200)]
    requests: usize,
}

/// The attacks of `tests/tests/hostile.rs`, at its sizes.
#[derive(Debug, Clone, Copy)]
enum Attack {
    /// Nothing: the baseline.
    None,
    /// 100 clients sending 1 MiB request heads, again and again.
    OversizedHeads,
    /// 200 connections sending one header line every 500 ms, never ending the head (reconnecting
    /// when cut off at the header deadline).
    Slowloris,
    /// 1500 idle connections opened at once, beyond the limit of 1024.
    Flood,
}

impl Attack {
    const ALL: [Attack; 4] = [Attack::None, Attack::OversizedHeads, Attack::Slowloris, Attack::Flood];

    fn label(self) -> &'static str {
        match self {
            Attack::None => "none",
            Attack::OversizedHeads => "100 clients sending 1 MiB heads",
            Attack::Slowloris => "200 slowloris connections",
            Attack::Flood => "1500 idle connections (limit 1024)",
        }
    }

    /// Starts the attack; it runs until the set is dropped.
    async fn start(self, listen: SocketAddr) -> Result<(JoinSet<()>, Vec<TcpStream>), BenchError> {
        let mut tasks = JoinSet::new();
        let mut held = Vec::new();
        match self {
            Attack::None => {}
            Attack::OversizedHeads => {
                for _ in 0..100 {
                    tasks.spawn(oversized_heads(listen));
                }
            }
            Attack::Slowloris => {
                for _ in 0..200 {
                    tasks.spawn(slowloris(listen));
                }
            }
            Attack::Flood => {
                for _ in 0..1500 {
                    held.push(
                        TcpStream::connect(listen)
                            .await
                            .map_err(|e| BenchError::Connect { addr: listen, source: e })?,
                    );
                }
            }
        }
        // Let the attack take hold before the first normal request.
        tokio::time::sleep(Duration::from_secs(1)).await;
        Ok((tasks, held))
    }
}

/// An attacker's connection; after a refusal (keyless gone, no file descriptor left) a pause, so
/// that a hundred attackers do not spin on the machine the normal clients are measured on.
async fn connect(listen: SocketAddr) -> std::io::Result<TcpStream> {
    let connected = TcpStream::connect(listen).await;
    if connected.is_err() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    connected
}

/// Sends a 1 MiB request head and reads until the server closes; again.
async fn oversized_heads(listen: SocketAddr) {
    let head = format!("GET / HTTP/1.1\r\nHost: {listen}\r\nX-Big: {}\r\n\r\n", "a".repeat(1 << 20)).into_bytes();
    loop {
        let Ok(tcp) = connect(listen).await else { continue };
        let (mut rx, mut tx) = tcp.into_split();
        let head = head.clone();
        let writer = tokio::spawn(async move {
            let _ = tx.write_all(&head).await;
            tx
        });
        let mut sink = [0u8; 4096];
        while let Ok(n) = rx.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
        drop(writer.await);
    }
}

/// One header line every 500 ms, never the blank line that ends the head; a new connection when
/// cut off.
async fn slowloris(listen: SocketAddr) {
    loop {
        let Ok(mut tcp) = connect(listen).await else { continue };
        let mut line: &[u8] = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n";
        while tcp.write_all(line).await.is_ok() {
            line = b"X-Slow: 1\r\n";
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// `n` normal requests for `target`, each on a new connection: the latencies of those answered
/// 200 with `body_len` bytes (connecting included), and how many were not.
async fn normal_requests(target: &Target, body_len: usize, n: usize) -> (Vec<Duration>, usize) {
    let mut latencies = Vec::with_capacity(n);
    let mut failed = 0;
    for _ in 0..n {
        let started = Instant::now();
        let answered = async {
            let mut sender = load::connect(target.addr).await?;
            load::send(&mut sender, target).await
        };
        match tokio::time::timeout(Duration::from_secs(10), answered).await {
            Ok(Ok((StatusCode::OK, len))) if len == body_len => latencies.push(started.elapsed()),
            _ => failed += 1,
        }
    }
    latencies.sort_unstable();
    (latencies, failed)
}

/// The `q` quantile (0..=1) of sorted `latencies`.
fn quantile(latencies: &[Duration], q: f64) -> Duration {
    let rank = ((latencies.len() as f64) * q).ceil() as usize;
    latencies.get(rank.clamp(1, latencies.len().max(1)) - 1).copied().unwrap_or_default()
}

#[allow(clippy::print_stdout)] // the report
pub async fn report(opts: &HostileOptions) -> Result<(), BenchError> {
    let keyless = opts.keyless.clone().unwrap_or_else(default_keyless);
    println!("# Normal clients under hostile load\n");
    // The flood alone holds 1500 connections, over the usual soft limit of 1024.
    println!("{}\n", crate::fleet_procs::raise_nofile());
    println!(
        "keyless: {}; {}; load average before: {}\n",
        keyless.display(),
        crate::procs::machine(),
        crate::procs::load_average()
    );
    let stack = Stack::prepare(&keyless).await?;
    let log = stack.dir.path().join("keyless.log");
    let (sidecar, _) = Sidecar::start(&Launcher::default(), &keyless, &stack.config, &stack.env(), &log).await?;
    let secrets = client_secrets(&stack.emulator, &sidecar, &stack.auth_file, &stack.identity_header).await?;
    let target = endpoints::target(Endpoint::GceToken, sidecar.listen, &secrets);
    let body_len = endpoints::body_len(&target).await?;
    let mut rows = Vec::new();
    for attack in Attack::ALL {
        report::progress(&format!("{}: {} normal requests", attack.label(), opts.requests));
        let running = attack.start(sidecar.listen).await?;
        let (latencies, failed) = normal_requests(&target, body_len, opts.requests).await;
        drop(running);
        rows.push((attack, latencies, failed));
        // Let keyless drop the attack's connections before the next scenario.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    sidecar.stop().await;
    println!("\n| attack | normal requests answered | failed | p50 | p99 | max |");
    println!("|---|---|---|---|---|---|");
    for (attack, latencies, failed) in rows {
        println!(
            "| {} | {} | {failed} | {} | {} | {} |",
            attack.label(),
            latencies.len(),
            report::ms(quantile(&latencies, 0.5)),
            report::ms(quantile(&latencies, 0.99)),
            report::ms(latencies.last().copied().unwrap_or_default()),
        );
    }
    println!("\nload average after: {}", crate::procs::load_average());
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn an_attacker_pauses_after_a_refused_connection() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).unwrap();
        let started = Instant::now();
        assert!(connect(closed).await.is_err());
        assert!(started.elapsed() >= Duration::from_millis(100), "{:?}", started.elapsed());
    }
}
