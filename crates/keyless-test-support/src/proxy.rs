//! A TCP relay between keyless and its upstream whose failures the test chooses.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use keyless_core::AbortOnDrop;

/// What the proxy does with a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyMode {
    /// Relays bytes to this address.
    Forward(SocketAddr),
    /// Accepts and closes at once (a proxy or load balancer that drops connections).
    Close,
}

/// A TCP relay on loopback. Switching its mode cuts every open connection, so a pooled
/// keep-alive connection cannot carry the old behaviour past the switch.
#[derive(Debug)]
pub struct Proxy {
    pub addr: SocketAddr,
    mode: tokio::sync::watch::Sender<ProxyMode>,
    accepted: Arc<AtomicU64>,
    _task: AbortOnDrop,
}

impl Proxy {
    pub async fn start(mode: ProxyMode) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a loopback port");
        let addr = listener.local_addr().expect("the bound address");
        let (tx, rx) = tokio::sync::watch::channel(mode);
        let accepted = Arc::new(AtomicU64::new(0));
        let counted = accepted.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                let mut rx = rx.clone();
                let mode = *rx.borrow_and_update();
                tokio::spawn(async move {
                    let ProxyMode::Forward(to) = mode else { return };
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(to).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = rx.changed() => {}
                    }
                });
            }
        });
        Self { addr, mode: tx, accepted, _task: AbortOnDrop::new(task) }
    }

    pub fn set(&self, mode: ProxyMode) {
        self.mode.send_replace(mode);
    }

    /// How many connections it accepted so far (a client's attempts, one connection each when
    /// none is kept alive).
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }

    /// The upstream URL keyless is configured with.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }
}
