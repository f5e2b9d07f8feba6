//! `keyless serve`: the credential listener (every enabled adapter's routes on one loopback
//! address) and the admin listener, with graceful shutdown.
//!
//! Each listener is a hyper HTTP/1.1 accept loop with bounds (the security rules, docs/reliability.md): a deadline for a
//! request's headers (slowloris), a size bound on them (431), and a bounded number of connections
//! where idle ones give way to new clients, so a connection flood cannot starve a real client.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::Poll;
use std::time::Duration;

use axum::Router;
use axum::response::Response;
use futures_util::task::AtomicWaker;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use keyless_core::{AppEnvVar, Context};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tower::ServiceExt as _;
use tracing::{debug, info, warn};

use keyless_provider::dispatch::Answer;
use keyless_provider::guard::GuardLayer;
use keyless_provider::{AppHost, RouteCollision, Routes, Rules};

use crate::admin::{self, AdminState};
use crate::providers::Running;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr} ({what}): {source}; {}", bind_hint(source, *addr, flag))]
    Bind { addr: SocketAddr, what: &'static str, flag: &'static str, source: std::io::Error },
    #[error("{0}")]
    Routes(#[from] RouteCollision),
    #[error("{0}")]
    Server(std::io::Error),
}

/// What to do about a listener that could not bind, by cause.
pub fn bind_hint(error: &std::io::Error, addr: SocketAddr, flag: &str) -> String {
    match error.kind() {
        std::io::ErrorKind::PermissionDenied if addr.port() < 1024 => format!(
            "ports below 1024 need root or the CAP_NET_BIND_SERVICE capability: pick a port above 1023 with {flag}"
        ),
        std::io::ErrorKind::PermissionDenied => {
            format!("the system refused this address to this user (a security policy?): pick another with {flag}")
        }
        std::io::ErrorKind::AddrInUse => {
            format!("another process (another keyless?) listens there: stop it, or pick a free port with {flag}")
        }
        std::io::ErrorKind::AddrNotAvailable => {
            format!("no network interface of this machine has that address: pick a local address with {flag}")
        }
        _ => format!("pick another address with {flag}"),
    }
}

/// Bound listeners with their routes, not yet serving.
pub struct Sidecar {
    credentials: TcpListener,
    admin: TcpListener,
    routes: Routes,
    admin_router: Router,
    providers: Vec<Running>,
    gate: Arc<AtomicBool>,
}

impl Sidecar {
    /// Binds both listeners. `gated` holds `/readyz` red until [`Sidecar::open_gate`].
    pub async fn bind(
        listen: SocketAddr,
        admin_listen: SocketAddr,
        providers: Vec<Running>,
        ctx: &Context,
        gated: bool,
    ) -> Result<Self, ServeError> {
        // Routes first: a collision is a configuration error reported before anything listens.
        let routes = crate::providers::routes(&providers, &ctx.metrics)?;
        let credentials = TcpListener::bind(listen).await.map_err(|source| ServeError::Bind {
            addr: listen,
            what: "credential listener",
            flag: "--listen",
            source,
        })?;
        let admin = TcpListener::bind(admin_listen).await.map_err(|source| ServeError::Bind {
            addr: admin_listen,
            what: "admin listener",
            flag: "--admin-listen",
            source,
        })?;
        let gate = Arc::new(AtomicBool::new(!gated));
        let admin_router = admin::router(AdminState {
            readiness: providers.iter().flat_map(|p| p.started.readiness()).collect(),
            metrics: ctx.metrics.clone(),
            gate: gate.clone(),
        })
        // The Host rule (DNS rebinding) holds on the admin routes too.
        .route_layer(GuardLayer::new(Rules::admin()));
        Ok(Self { credentials, admin, routes, admin_router, providers, gate })
    }

    pub fn listen_addr(&self) -> SocketAddr {
        self.credentials.local_addr().unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.local_addr().unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// The env vars an app needs to reach every enabled provider through this sidecar.
    pub fn app_env(&self) -> Vec<AppEnvVar> {
        let app = AppHost::for_listener(self.listen_addr());
        self.providers.iter().flat_map(|p| p.started.app_env(&app)).collect()
    }

    /// Every configured identity's readiness (what `/readyz` reports; `keyless exec` waits on it).
    pub fn readiness(&self) -> Vec<Arc<dyn keyless_core::Readiness>> {
        self.providers.iter().flat_map(|p| p.started.readiness()).collect()
    }

    #[cfg_attr(
        not(feature = "emulator"),
        expect(dead_code, reason = "keyless dev opens it once the env file is written")
    )]
    pub fn gate(&self) -> Arc<AtomicBool> {
        self.gate.clone()
    }

    /// Serves until `shutdown` resolves, then stops accepting, finishes in-flight requests (for at
    /// most [`SHUTDOWN_GRACE`]) and closes idle connections.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), ServeError> {
        let (stop_tx, stop_rx) = watch::channel(false);
        info!(listen = %self.listen_addr(), admin = %self.admin_addr(), "keyless is serving");
        let credentials = Listener::new("credential listener", MAX_CONNECTIONS);
        let admin = Listener::new("admin listener", MAX_ADMIN_CONNECTIONS);
        let credentials = tokio::spawn(credentials.serve(self.credentials, self.routes, stop_rx.clone()));
        let admin = tokio::spawn(admin.serve(self.admin, self.admin_router, stop_rx));
        shutdown.await;
        info!("shutting down: finishing in-flight requests");
        self.gate.store(false, Ordering::Release);
        let _ = stop_tx.send(true);
        for server in [credentials, admin] {
            server.await.map_err(|e| ServeError::Server(std::io::Error::other(e)))?;
        }
        Ok(())
    }
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub async fn termination() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// How long a client may take to send a request's headers. It also bounds how long a keep-alive
/// connection may sit idle between requests (hyper starts the clock when it waits for a head):
/// loopback clients send a request at once, so this only ever cuts off slow or stuck peers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head (request line and headers) accepted; a larger one gets 431. Real clients
/// send well under 2 KiB; the longest legitimate part is a GCE ID-token audience.
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Most header fields in one request (431 beyond).
const MAX_HEADERS: usize = 64;
/// Open connections per listener. At the limit a new connection displaces the oldest one that has
/// no request in progress (idle keep-alive or still sending its headers), so a flood of silent or
/// slow connections cannot lock out a real client; it waits only while every connection is busy.
const MAX_CONNECTIONS: usize = 1024;
const MAX_ADMIN_CONNECTIONS: usize = 128;
/// In-flight requests may take up to `cache.request_wait` (10 s by default) when nothing is cached.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);
/// Pause after an accept error such as EMFILE, so a full descriptor table does not spin the loop.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// What a listener answers with: the credential routes, or the admin router.
trait Respond: Clone + Send + Sync + 'static {
    type Future: Future<Output = Result<Response, Infallible>> + Send + 'static;
    /// Answers `request` from `peer`.
    fn respond(&self, request: hyper::Request<Incoming>, peer: SocketAddr) -> Self::Future;
}

impl Respond for Routes {
    type Future = Answer;
    fn respond(&self, request: hyper::Request<Incoming>, _peer: SocketAddr) -> Answer {
        self.serve(request)
    }
}

impl Respond for Router {
    type Future = tower::util::Oneshot<Router, hyper::Request<Incoming>>;
    /// The admin listener: who is asking goes with the request (`/readyz` tells a peer off
    /// loopback less).
    fn respond(&self, mut request: hyper::Request<Incoming>, peer: SocketAddr) -> Self::Future {
        request.extensions_mut().insert(axum::extract::ConnectInfo(peer));
        self.clone().oneshot(request)
    }
}

/// One listener's connections: the bound on their number, and who may be displaced.
struct Listener {
    what: &'static str,
    limit: usize,
    next_id: AtomicU64,
    open: Mutex<BTreeMap<u64, Arc<Connection>>>,
    /// A connection closed or a request finished: the accept loop may find room, shutdown may end.
    changed: Notify,
    /// Set while at the limit, so an overload is logged once rather than once per connection.
    saturated: AtomicBool,
}

/// What the accept loop knows about one open connection.
#[derive(Default)]
struct Connection {
    /// Requests being handled or whose response is still being written.
    in_request: AtomicUsize,
    /// The connection must close: it was displaced (it had no request in progress), or the
    /// listener is shutting down.
    closing: AtomicBool,
    /// The connection's task, woken when `closing` is set. A flag and a waker rather than a
    /// `Notify` or a `watch`: the task checks them each time it wakes, several times a request,
    /// and those re-register under a lock every time (docs/benchmarks.md).
    task: AtomicWaker,
}

impl Connection {
    fn ask_to_close(&self) {
        self.closing.store(true, Ordering::SeqCst);
        self.task.wake();
    }

    /// Resolves once the connection is asked to close.
    fn close_asked(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| {
            if !self.closing.load(Ordering::SeqCst) {
                self.task.register(cx.waker());
                if !self.closing.load(Ordering::SeqCst) {
                    return Poll::Pending;
                }
            }
            Poll::Ready(())
        })
    }
}

/// Counts one request as in progress from the service call until its response body has been
/// written (hyper drops the body then), or the connection died.
struct InRequest {
    listener: Arc<Listener>,
    connection: Arc<Connection>,
}

impl InRequest {
    fn new(listener: Arc<Listener>, connection: Arc<Connection>) -> Self {
        connection.in_request.fetch_add(1, Ordering::SeqCst);
        Self { listener, connection }
    }
}

impl Drop for InRequest {
    fn drop(&mut self) {
        self.connection.in_request.fetch_sub(1, Ordering::SeqCst);
        self.listener.changed.notify_waiters();
    }
}

/// A response body that keeps its request counted as in progress until it is dropped.
struct CountedBody {
    inner: axum::body::Body,
    _in_request: InRequest,
}

impl hyper::body::Body for CountedBody {
    type Data = <axum::body::Body as hyper::body::Body>::Data;
    type Error = <axum::body::Body as hyper::body::Body>::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

impl Listener {
    fn new(what: &'static str, limit: usize) -> Arc<Self> {
        Arc::new(Self {
            what,
            limit,
            next_id: AtomicU64::new(0),
            open: Mutex::new(BTreeMap::new()),
            changed: Notify::new(),
            saturated: AtomicBool::new(false),
        })
    }

    fn open(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Arc<Connection>>> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Admits a new connection: at once below the limit; at the limit by displacing the oldest
    /// connection without a request in progress; `None` while every connection is busy.
    fn admit(&self) -> Option<(u64, Arc<Connection>)> {
        let mut open = self.open();
        if open.len() >= self.limit {
            if !self.saturated.swap(true, Ordering::Relaxed) {
                warn!(
                    listener = self.what,
                    limit = self.limit,
                    "connection limit reached: new connections displace the oldest idle ones"
                );
            }
            let idle = open.iter().find(|(_, c)| c.in_request.load(Ordering::SeqCst) == 0).map(|(id, _)| *id);
            let displaced = open.remove(&idle?)?;
            displaced.ask_to_close();
            debug!(listener = self.what, "displaced the oldest idle connection");
        } else if open.len() < self.limit / 2 {
            self.saturated.store(false, Ordering::Relaxed);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let connection = Arc::new(Connection::default());
        open.insert(id, connection.clone());
        Some((id, connection))
    }

    fn close(&self, id: u64) {
        self.open().remove(&id);
        self.changed.notify_waiters();
    }

    /// Accepts until `stop`, then waits (at most [`SHUTDOWN_GRACE`]) for open connections to end.
    async fn serve(self: Arc<Self>, listener: TcpListener, router: impl Respond, mut stop: watch::Receiver<bool>) {
        loop {
            let (tcp, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // EMFILE/ENFILE/ECONNABORTED: the listener itself is fine; try again shortly.
                        warn!(listener = self.what, error = %e, "accepting a connection failed");
                        tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                        continue;
                    }
                },
                () = stopped(&mut stop) => break,
            };
            let admitted = loop {
                let changed = self.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                if let Some(admitted) = self.admit() {
                    break Some(admitted);
                }
                tokio::select! {
                    () = changed => {}
                    () = stopped(&mut stop) => break None,
                }
            };
            let Some((id, connection)) = admitted else { break };
            let _ = tcp.set_nodelay(true);
            tokio::spawn(self.clone().connection(id, connection, tcp, peer, router.clone()));
        }
        // New connections are refused from here on; open ones close, idle ones at once.
        drop(listener);
        for connection in self.open().values() {
            connection.ask_to_close();
        }
        let drained = async {
            loop {
                let changed = self.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                if self.open().is_empty() {
                    break;
                }
                changed.await;
            }
        };
        if tokio::time::timeout(SHUTDOWN_GRACE, drained).await.is_err() {
            warn!(listener = self.what, grace = ?SHUTDOWN_GRACE, "requests still in progress after the shutdown grace period; closing them");
        }
    }

    /// Serves one connection until the peer closes it, it is displaced, or shutdown closes it
    /// (at once when idle, after its response when a request is in progress).
    async fn connection(
        self: Arc<Self>,
        id: u64,
        state: Arc<Connection>,
        tcp: TcpStream,
        peer: SocketAddr,
        router: impl Respond,
    ) {
        let (listener, counted) = (self.clone(), state.clone());
        let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            let in_request = InRequest::new(listener.clone(), counted.clone());
            let response = router.respond(request, peer);
            async move {
                let response = response.await?;
                Ok::<_, Infallible>(response.map(|inner| CountedBody { inner, _in_request: in_request }))
            }
        });
        let connection = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .max_buf_size(MAX_HEAD_BYTES)
            .max_header_size(MAX_HEAD_BYTES)
            .max_headers(MAX_HEADERS)
            .keep_alive(true)
            .serve_connection(TokioIo::new(tcp), service);
        tokio::pin!(connection);
        let mut closing = false;
        loop {
            tokio::select! {
                biased;
                result = connection.as_mut() => {
                    if let Err(e) = result {
                        debug!(listener = self.what, %peer, error = %e, "connection ended with an error");
                    }
                    break;
                }
                () = state.close_asked(), if !closing => {
                    // A displaced connection was chosen because it had no request in progress;
                    // nothing ran since (this task alone polls the connection), so closing it
                    // cuts no response. At shutdown, a request in progress is answered first.
                    if state.in_request.load(Ordering::SeqCst) == 0 {
                        break;
                    }
                    connection.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
        }
        self.close(id);
    }
}

/// Resolves once shutdown has begun (or the server is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn at_the_limit_a_new_connection_displaces_the_oldest_idle_one_and_never_a_busy_one() {
        let listener = Listener::new("test", 2);
        let (first, first_state) = listener.admit().unwrap();
        let (_, second_state) = listener.admit().unwrap();
        // The oldest is busy with a request: the second (idle) one gives way.
        let _busy = InRequest::new(listener.clone(), first_state.clone());
        let (_, third_state) = listener.admit().unwrap();
        assert_eq!(listener.open().len(), 2);
        assert!(listener.open().contains_key(&first), "a connection with a request in progress was displaced");
        assert!(!Arc::ptr_eq(&second_state, &third_state));
        // Every connection busy: the newcomer waits.
        let _busy_too = InRequest::new(listener.clone(), third_state);
        assert!(listener.admit().is_none());
        drop(_busy);
        assert!(listener.admit().is_some(), "a finished request makes its connection displaceable");
    }

    #[test]
    fn a_bind_error_says_what_to_do_about_its_cause() {
        use std::io::{Error, ErrorKind};
        let addr = |port| SocketAddr::from(([0, 0, 0, 0], port));
        let err = ServeError::Bind {
            addr: addr(443),
            what: "admin listener",
            flag: "--admin-listen",
            source: Error::from(ErrorKind::PermissionDenied),
        };
        assert_eq!(
            err.to_string(),
            "cannot listen on 0.0.0.0:443 (admin listener): permission denied; ports below 1024 need root or the \
             CAP_NET_BIND_SERVICE capability: pick a port above 1023 with --admin-listen"
        );
        let in_use = bind_hint(&Error::from(ErrorKind::AddrInUse), addr(9811), "--listen");
        assert_eq!(
            in_use,
            "another process (another keyless?) listens there: stop it, or pick a free port with --listen"
        );
        let foreign = bind_hint(&Error::from(ErrorKind::AddrNotAvailable), addr(9811), "--listen");
        assert!(foreign.starts_with("no network interface of this machine has that address"), "{foreign}");
    }

    #[tokio::test]
    async fn a_displaced_connection_is_told_to_close() {
        let listener = Listener::new("test", 1);
        let (_, idle) = listener.admit().unwrap();
        let waiting = tokio::spawn({
            let idle = idle.clone();
            async move { idle.close_asked().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        let _ = listener.admit().unwrap();
        tokio::time::timeout(Duration::from_secs(1), waiting).await.unwrap().unwrap();
        // Asked before it listens: it still hears it.
        tokio::time::timeout(Duration::from_secs(1), idle.close_asked()).await.unwrap();
    }
}
