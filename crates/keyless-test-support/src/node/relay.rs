//! Connections into the node's network namespace from the test process: one thread enters the
//! namespace (`setns` changes the calling thread only) and opens each connection from a thread of
//! its own (threads inherit their creator's namespace); a relay on the test's loopback hands them
//! the connections it accepts.

use std::net::SocketAddr;
use std::os::fd::AsFd as _;
use std::time::Duration;

/// At most this many connections through one relay at a time (a test opens a handful; a client
/// that leaks them waits instead of growing the test process without bound).
const MAX_CONNECTIONS: usize = 64;
/// How long opening a connection inside the namespace may take.
const CONNECT_DEADLINE: Duration = Duration::from_secs(10);

/// A thread of the test process inside the node's namespace that opens connections there.
#[derive(Debug, Clone)]
pub(super) struct Dialer {
    requests: std::sync::mpsc::Sender<(SocketAddr, tokio::sync::oneshot::Sender<std::io::Result<std::net::TcpStream>>)>,
}

impl Dialer {
    /// A thread that entered `/run/netns/NETNS` (setns affects that thread only) and connects
    /// there on request, each connection from a thread of its own (which inherits the namespace).
    pub(super) fn enter(netns: &str) -> Self {
        let path = format!("/run/netns/{netns}");
        let (requests, receiver) = std::sync::mpsc::channel::<(
            SocketAddr,
            tokio::sync::oneshot::Sender<std::io::Result<std::net::TcpStream>>,
        )>();
        let (entered, entered_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let entered_result = std::fs::File::open(&path).and_then(|ns| {
                rustix::thread::move_into_link_name_space(ns.as_fd(), Some(rustix::thread::LinkNameSpaceType::Network))
                    .map_err(std::io::Error::from)
            });
            let ok = entered_result.is_ok();
            let _ = entered.send(entered_result);
            if !ok {
                return;
            }
            while let Ok((addr, reply)) = receiver.recv() {
                std::thread::spawn(move || {
                    let stream = std::net::TcpStream::connect_timeout(&addr, CONNECT_DEADLINE);
                    let _ = reply.send(stream);
                });
            }
        });
        entered_rx.recv().expect("the dialer thread").unwrap_or_else(|e| panic!("entering {netns}: {e}"));
        Self { requests }
    }

    /// Relays each connection `listener` accepts to `inside`, at most [`MAX_CONNECTIONS`] at a
    /// time; the connections are this future's own (a `JoinSet`), so dropping or aborting it ends
    /// them too, and with them their hold on the dialer (whose thread then ends, releasing the
    /// namespace).
    pub(super) async fn relay(self, listener: tokio::net::TcpListener, inside: SocketAddr) {
        let mut connections = tokio::task::JoinSet::new();
        loop {
            while connections.try_join_next().is_some() {}
            if connections.len() >= MAX_CONNECTIONS {
                connections.join_next().await;
                continue;
            }
            let Ok((outside, _)) = listener.accept().await else { return };
            connections.spawn(self.clone().carry(outside, inside));
        }
    }

    /// A connection to `inside` opened in the namespace (its error as the namespace saw it).
    pub(super) async fn connect(&self, inside: SocketAddr) -> std::io::Result<std::net::TcpStream> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.requests.send((inside, reply)).map_err(|_| std::io::Error::other("the dialer thread ended"))?;
        answer.await.map_err(|_| std::io::Error::other("the dialer thread ended"))?
    }

    /// A connection to `inside` opened in the namespace, and `outside`'s bytes carried both ways
    /// until either side closes.
    async fn carry(self, mut outside: tokio::net::TcpStream, inside: SocketAddr) {
        let (reply, answer) = tokio::sync::oneshot::channel();
        if self.requests.send((inside, reply)).is_err() {
            return;
        }
        drop(self);
        let Ok(Ok(stream)) = answer.await else { return };
        if stream.set_nonblocking(true).is_err() {
            return;
        }
        let Ok(mut stream) = tokio::net::TcpStream::from_std(stream) else { return };
        let _ = tokio::io::copy_bidirectional(&mut outside, &mut stream).await;
    }
}
