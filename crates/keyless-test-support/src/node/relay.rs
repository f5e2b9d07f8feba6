//! Connections into the node's network namespace from the test process: one thread enters the
//! namespace (`setns` changes the calling thread only) and opens each connection from a thread of
//! its own (threads inherit their creator's namespace); a relay on the test's loopback hands them
//! the connections it accepts.

use std::net::SocketAddr;
use std::os::fd::AsFd as _;
use std::time::Duration;

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
                    let stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(10));
                    let _ = reply.send(stream);
                });
            }
        });
        entered_rx.recv().expect("the dialer thread").unwrap_or_else(|e| panic!("entering {netns}: {e}"));
        Self { requests }
    }

    /// A task relaying each connection `listener` accepts to `inside`.
    pub(super) fn relay(&self, listener: tokio::net::TcpListener, inside: SocketAddr) -> tokio::task::JoinHandle<()> {
        let dialer = self.clone();
        tokio::spawn(async move {
            while let Ok((mut outside, _)) = listener.accept().await {
                let dialer = dialer.clone();
                tokio::spawn(async move {
                    let (reply, answer) = tokio::sync::oneshot::channel();
                    if dialer.requests.send((inside, reply)).is_err() {
                        return;
                    }
                    let Ok(Ok(stream)) = answer.await else { return };
                    if stream.set_nonblocking(true).is_err() {
                        return;
                    }
                    let Ok(mut stream) = tokio::net::TcpStream::from_std(stream) else { return };
                    let _ = tokio::io::copy_bidirectional(&mut outside, &mut stream).await;
                });
            }
        })
    }
}
