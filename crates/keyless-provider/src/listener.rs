//! The accept loop keyless's HTTP/1.1 servers share: the sidecar's credential and admin listeners,
//! the admission webhook's admin listener and `keyless node`'s credential and admin listeners
//! (plain TCP), and the webhook's review listener (TLS, called by the API server). It lives beside
//! [`crate::Routes`], which it serves on the credential listeners; the binary only wires each
//! command's listeners (their [`Limits`], their [`Respond`]er).
//!
//! Every listener is on someone's critical path, so each bounds what a peer can hold
//! (docs/reliability.md): the TLS handshake, the request head and the whole request (head and
//! body) each have a deadline, keep-alive connections idle too long are closed, at most
//! `connections` are open and at most `per_peer` from one source address. At the limit a new
//! connection displaces the oldest one that is not busy, where busy means its request has fully
//! arrived and is being answered: connections still handshaking, idle between requests, sending
//! their head or still sending their body give way. So a flood of silent, slow or stalled
//! connections cannot lock out a real client, which waits only while every connection is busy.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::Poll;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::response::Response;
use futures_util::task::AtomicWaker;
use hyper::body::{Body as _, Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::time::{Instant, Sleep};
use tower::ServiceExt as _;
use tracing::{debug, warn};

use crate::dispatch::{Answer, Routes};
use crate::guard::Violation;
use crate::peer_user::{OwnUser, Peer};

/// Pause after an accept error such as EMFILE, so a full descriptor table does not spin the loop.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// What one listener allows each peer.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Open connections at most.
    pub connections: usize,
    /// Open connections from one source address at most. A peer at its cap displaces its own
    /// oldest connection that is not busy; a new connection beyond it is closed at once.
    pub per_peer: usize,
    /// From accept to the end of the TLS handshake (plain listeners have none).
    pub handshake_timeout: Duration,
    /// From the moment a connection waits for a request (handshake done, or the previous answer
    /// written) to the end of the request's head: also how long a keep-alive connection may idle.
    pub header_read_timeout: Duration,
    /// From that same moment to the end of the request's body: the body's read then fails with
    /// [`BodyError::TimedOut`] (the webhook answers 408).
    pub request_timeout: Duration,
    /// Largest request head (request line and headers); larger gets 431.
    pub max_head_bytes: usize,
    /// Most header fields in one request (431 beyond).
    pub max_headers: usize,
    /// At shutdown, requests in progress get this long to be answered.
    pub shutdown_grace: Duration,
}

/// What a new connection goes through before HTTP: nothing, or a TLS handshake.
pub trait Handshake: Clone + Send + Sync + 'static {
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    type Error: std::fmt::Display;
    fn handshake(&self, tcp: TcpStream) -> impl Future<Output = Result<Self::Io, Self::Error>> + Send;
}

/// Plain HTTP: the connection is ready at once.
#[derive(Debug, Clone, Copy)]
pub struct PlainTcp;

impl Handshake for PlainTcp {
    type Io = TcpStream;
    type Error = Infallible;
    fn handshake(&self, tcp: TcpStream) -> impl Future<Output = Result<TcpStream, Infallible>> + Send {
        std::future::ready(Ok(tcp))
    }
}

/// What a listener answers with: the credential routes, the admin router, the webhook's router.
pub trait Respond: Clone + Send + Sync + 'static {
    type Future: Future<Output = Result<Response, Infallible>> + Send + 'static;
    /// Answers `request` from `peer`.
    fn respond(&self, request: hyper::Request<RequestBody>, peer: SocketAddr) -> Self::Future;
    /// Refuses `request` for `violation`, in the shape its route's clients parse.
    fn refuse(&self, request: hyper::Request<RequestBody>, violation: &Violation) -> Self::Future;
}

impl Respond for Router {
    type Future = tower::util::Oneshot<Router, hyper::Request<RequestBody>>;
    /// Who is asking goes with the request (the admin listener's `/readyz` tells a peer off
    /// loopback less), and by when its body must have arrived (the webhook's reviews).
    fn respond(&self, mut request: hyper::Request<RequestBody>, peer: SocketAddr) -> Self::Future {
        let deadline = RequestDeadline(request.body().deadline);
        request.extensions_mut().insert(axum::extract::ConnectInfo(peer));
        request.extensions_mut().insert(deadline);
        self.clone().oneshot(request)
    }

    /// Plain text, as the admin routes' other refusals (no admin or webhook listener has a peer
    /// check today; this keeps the trait whole).
    fn refuse(&self, request: hyper::Request<RequestBody>, violation: &Violation) -> Self::Future {
        let (status, message) = (violation.status(), format!("{}\n", violation.message()));
        Router::new().fallback(move || std::future::ready((status, message.clone()))).oneshot(request)
    }
}

/// The credential listener's answer: every provider's routes, each behind its rules.
impl Respond for Routes {
    type Future = Answer;
    fn respond(&self, request: hyper::Request<RequestBody>, _peer: SocketAddr) -> Answer {
        self.serve(request)
    }

    fn refuse(&self, request: hyper::Request<RequestBody>, violation: &Violation) -> Answer {
        Routes::refuse(self, request, violation)
    }
}

/// One listener's connections: the bounds on their number, and who may be displaced.
#[derive(Debug)]
pub struct Listener {
    what: &'static str,
    limits: Limits,
    next_id: AtomicU64,
    table: Mutex<Table>,
    /// A connection closed or a request finished: the accept loop may find room, shutdown may end.
    changed: Notify,
    /// Set while at the limit, so an overload is logged once rather than once per connection.
    saturated: AtomicBool,
    /// Set once a peer reached its cap, so that is logged once per overload too.
    peer_saturated: AtomicBool,
    /// Set: connections from other users' processes are refused (`keyless exec`,
    /// `listen_uid_check`).
    own_user: Option<OwnUser>,
    /// Set once a refused connection was logged as a warning; later ones are logged at debug, so
    /// a local user cannot flood the log.
    refusal_logged: AtomicBool,
    /// Peer-check lookups running on the blocking pool, at most [`MAX_PEER_LOOKUPS`]: a lookup
    /// that outlives its connection (displaced, or past the handshake deadline) keeps its thread
    /// until the kernel answers, so without a cap a stalled sock_diag would pile threads up.
    peer_lookups: Arc<tokio::sync::Semaphore>,
}

/// Peer-check lookups at once per listener (each a blocking-pool thread while the kernel answers).
const MAX_PEER_LOOKUPS: usize = 16;

/// The open connections, oldest first, and how many each peer holds.
#[derive(Debug, Default)]
struct Table {
    open: BTreeMap<u64, Arc<Connection>>,
    per_peer: HashMap<IpAddr, usize>,
}

impl Table {
    /// The oldest connection of `peer` (of anyone: `None`) that is not busy.
    fn oldest_displaceable(&self, peer: Option<IpAddr>) -> Option<u64> {
        self.open.iter().find(|(_, c)| peer.is_none_or(|p| c.peer == p) && c.displaceable()).map(|(id, _)| *id)
    }

    fn remove(&mut self, id: u64) -> Option<Arc<Connection>> {
        let connection = self.open.remove(&id)?;
        if let Some(count) = self.per_peer.get_mut(&connection.peer) {
            *count -= 1;
            if *count == 0 {
                self.per_peer.remove(&connection.peer);
            }
        }
        Some(connection)
    }
}

/// What the accept loop knows about one open connection.
#[derive(Debug)]
struct Connection {
    peer: IpAddr,
    /// Requests being handled or whose response is still being written.
    in_request: AtomicUsize,
    /// The request in progress is still sending its body: the connection may be displaced.
    receiving: AtomicBool,
    /// When the connection last started waiting for a request (the request deadline's start).
    ready_at: Mutex<Instant>,
    /// The connection must close: displaced, or the listener is shutting down.
    closing: AtomicBool,
    /// Displaced (not shutdown): a request still sending its body is cut, not awaited.
    displaced: AtomicBool,
    /// The connection's task, woken when `closing` is set. A flag and a waker rather than a
    /// `Notify` or a `watch`: the task checks them each time it wakes, several times a request,
    /// and those re-register under a lock every time (docs/benchmarks.md).
    task: AtomicWaker,
}

impl Connection {
    fn new(peer: IpAddr) -> Self {
        Self {
            peer,
            in_request: AtomicUsize::new(0),
            receiving: AtomicBool::new(false),
            ready_at: Mutex::new(Instant::now()),
            closing: AtomicBool::new(false),
            displaced: AtomicBool::new(false),
            task: AtomicWaker::new(),
        }
    }

    /// Handshaking, idle, sending a head or sending a body: nothing is being answered.
    fn displaceable(&self) -> bool {
        self.in_request.load(Ordering::SeqCst) == 0 || self.receiving.load(Ordering::SeqCst)
    }

    fn ready_now(&self) {
        *self.ready_at.lock().unwrap_or_else(PoisonError::into_inner) = Instant::now();
    }

    fn ready_at(&self) -> Instant {
        *self.ready_at.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn ask_to_close(&self, displaced: bool) {
        if displaced {
            self.displaced.store(true, Ordering::SeqCst);
        }
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
/// written (hyper drops the body then), or the connection died; then the connection is ready for
/// the next request.
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
        self.connection.ready_now();
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
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// When the request's body must have arrived (a request extension, for a handler that waits on
/// something else while it reads the body).
#[derive(Debug, Clone, Copy)]
pub struct RequestDeadline(pub Instant);

/// Why a request body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the request was not complete within {0:?} (head and body)")]
    TimedOut(Duration),
    #[error("reading the request body failed: {0}")]
    Read(#[from] hyper::Error),
}

/// A request's body as the listener hands it on: while it is still arriving, its connection may be
/// displaced; it fails with [`BodyError::TimedOut`] at the request deadline. A handler that never
/// reads it (the sidecar's routes) drops it, and with it both.
#[derive(Debug)]
pub struct RequestBody {
    inner: Incoming,
    /// The connection, while the body is still arriving.
    receiving: Option<Arc<Connection>>,
    deadline: Instant,
    timeout: Duration,
    /// Armed the first time the body is not ready: a handler that never waits on it costs nothing.
    timer: Option<Pin<Box<Sleep>>>,
}

impl RequestBody {
    fn new(inner: Incoming, connection: &Arc<Connection>, timeout: Duration) -> Self {
        let receiving = (!inner.is_end_stream()).then(|| {
            connection.receiving.store(true, Ordering::SeqCst);
            Arc::clone(connection)
        });
        let deadline = connection.ready_at() + timeout;
        Self { inner, receiving, deadline, timeout, timer: None }
    }

    fn received(&mut self) {
        if let Some(connection) = self.receiving.take() {
            connection.receiving.store(false, Ordering::SeqCst);
        }
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        self.received();
    }
}

impl hyper::body::Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if this.inner.is_end_stream() {
                    this.received();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.received();
                Poll::Ready(Some(Err(BodyError::Read(e))))
            }
            Poll::Ready(None) => {
                this.received();
                Poll::Ready(None)
            }
            Poll::Pending => {
                let deadline = this.deadline;
                let timer = this.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if timer.as_mut().poll(cx).is_ready() {
                    this.received();
                    return Poll::Ready(Some(Err(BodyError::TimedOut(this.timeout))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What [`Listener::admit`] decided for a new connection.
enum Admission {
    Admitted(u64, Arc<Connection>),
    /// Every connection is busy: wait for one to finish.
    Full,
    /// The peer holds its cap of busy connections: close the new one.
    PeerFull,
}

impl Listener {
    pub fn new(what: &'static str, limits: Limits) -> Arc<Self> {
        Self::serving_only(what, limits, None)
    }

    /// A listener whose connections from processes of users other than `own_user` (when set) get
    /// every request refused with [`Violation::OtherUser`].
    pub fn serving_only(what: &'static str, limits: Limits, own_user: Option<OwnUser>) -> Arc<Self> {
        Arc::new(Self {
            own_user,
            refusal_logged: AtomicBool::new(false),
            peer_lookups: Arc::new(tokio::sync::Semaphore::new(MAX_PEER_LOOKUPS)),
            what,
            limits,
            next_id: AtomicU64::new(0),
            table: Mutex::new(Table::default()),
            changed: Notify::new(),
            saturated: AtomicBool::new(false),
            peer_saturated: AtomicBool::new(false),
        })
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Admits a connection from `peer`: at once below both limits; at a limit by displacing the
    /// oldest connection (the peer's own at its cap) that is not busy.
    fn admit(&self, peer: IpAddr) -> Admission {
        let mut table = self.table();
        if table.per_peer.get(&peer).is_some_and(|n| *n >= self.limits.per_peer) {
            if !self.peer_saturated.swap(true, Ordering::Relaxed) {
                warn!(
                    listener = self.what,
                    %peer,
                    limit = self.limits.per_peer,
                    "a peer reached its connection cap: its new connections displace its own oldest ones, or are closed"
                );
            }
            let Some(oldest) = table.oldest_displaceable(Some(peer)) else { return Admission::PeerFull };
            self.displace(&mut table, oldest);
        } else if table.open.len() >= self.limits.connections {
            if !self.saturated.swap(true, Ordering::Relaxed) {
                warn!(
                    listener = self.what,
                    limit = self.limits.connections,
                    "connection limit reached: new connections displace the oldest ones not being answered"
                );
            }
            let Some(oldest) = table.oldest_displaceable(None) else { return Admission::Full };
            self.displace(&mut table, oldest);
        } else if table.open.len() < self.limits.connections / 2 {
            self.saturated.store(false, Ordering::Relaxed);
            self.peer_saturated.store(false, Ordering::Relaxed);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let connection = Arc::new(Connection::new(peer));
        table.open.insert(id, Arc::clone(&connection));
        *table.per_peer.entry(peer).or_default() += 1;
        Admission::Admitted(id, connection)
    }

    fn displace(&self, table: &mut Table, id: u64) {
        if let Some(displaced) = table.remove(id) {
            displaced.ask_to_close(true);
            debug!(listener = self.what, peer = %displaced.peer, "displaced the oldest connection not being answered");
        }
    }

    fn close(&self, id: u64) {
        self.table().remove(id);
        self.changed.notify_waiters();
    }

    /// Accepts until `stop`, then waits (at most `shutdown_grace`) for open connections to end.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        handshake: impl Handshake,
        router: impl Respond,
        mut stop: watch::Receiver<bool>,
    ) {
        'accept: loop {
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
            // An IPv4 client of a dual-stack listener is one peer whichever way it is written.
            let ip = peer.ip().to_canonical();
            let (id, connection) = loop {
                let changed = self.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                match self.admit(ip) {
                    Admission::Admitted(id, connection) => break (id, connection),
                    Admission::PeerFull => {
                        debug!(listener = self.what, %peer, "closed a connection beyond the peer's cap");
                        continue 'accept;
                    }
                    Admission::Full => {}
                }
                tokio::select! {
                    () = changed => {}
                    () = stopped(&mut stop) => break 'accept,
                }
            };
            let _ = tcp.set_nodelay(true);
            let task = self.clone().connection(id, connection, tcp, peer, handshake.clone(), router.clone());
            tokio::spawn(task);
        }
        // New connections are refused from here on; open ones close, idle ones at once.
        drop(listener);
        for connection in self.table().open.values() {
            connection.ask_to_close(false);
        }
        let drained = async {
            loop {
                let changed = self.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                if self.table().open.is_empty() {
                    break;
                }
                changed.await;
            }
        };
        let grace = self.limits.shutdown_grace;
        if tokio::time::timeout(grace, drained).await.is_err() {
            warn!(
                listener = self.what,
                ?grace,
                "requests still in progress after the shutdown grace period; closing them"
            );
        }
    }

    /// Whether the connection `tcp` from `peer` is refused by the peer check: once per
    /// connection, before its first request is read. The kernel is asked on the blocking pool:
    /// sock_diag does its lookup inside the `send`, which can wait (for `modprobe` of inet_diag
    /// and tcp_diag on a host's first lookup; for sock_diag's lock, held by any user's `ss`, on
    /// kernels before 6.9), and a runtime worker must not. At most [`MAX_PEER_LOOKUPS`] run at
    /// once, and a verdict not had within the handshake deadline is a refusal (fail closed).
    async fn refuses(&self, tcp: &TcpStream, peer: SocketAddr) -> bool {
        let Some(own) = self.own_user else { return false };
        let verdict = match tcp.local_addr() {
            Ok(local) => {
                let lookup = async {
                    let permit = self.peer_lookups.clone().acquire_owned().await;
                    tokio::task::spawn_blocking(move || {
                        let _running = permit;
                        own.judge(local, peer)
                    })
                    .await
                    .unwrap_or_else(|e| Peer::Unknown { why: format!("the lookup failed: {e}") })
                };
                let deadline = self.limits.handshake_timeout;
                tokio::time::timeout(deadline, lookup).await.unwrap_or_else(|_| Peer::Unknown {
                    why: format!("the kernel's socket table did not answer within {deadline:?}"),
                })
            }
            Err(e) => Peer::Unknown { why: format!("the connection's own address is unknown: {e}") },
        };
        let why = match verdict {
            Peer::Own => return false,
            Peer::Other { uid } => format!("its process runs as uid {uid}, keyless as uid {}", own.uid()),
            Peer::Unknown { why } => why,
        };
        if self.refusal_logged.swap(true, Ordering::Relaxed) {
            debug!(listener = self.what, %peer, reason = %why, "refused a connection of another user");
        } else {
            warn!(
                listener = self.what,
                %peer,
                reason = %why,
                "refused a connection of another user: credentials are served only to processes of keyless's own \
                 user (listen_uid_check); further refusals are logged at debug level"
            );
        }
        true
    }

    /// Serves one connection until the peer closes it, it is displaced, a deadline passes, or
    /// shutdown closes it (at once when idle, after its response when a request is in progress).
    async fn connection(
        self: Arc<Self>,
        id: u64,
        state: Arc<Connection>,
        tcp: TcpStream,
        peer: SocketAddr,
        handshake: impl Handshake,
        router: impl Respond,
    ) {
        let refused = tokio::select! {
            biased;
            () = state.close_asked() => return self.close(id),
            refused = self.refuses(&tcp, peer) => refused,
        };
        let handshaken = tokio::select! {
            biased;
            () = state.close_asked() => None,
            result = tokio::time::timeout(self.limits.handshake_timeout, handshake.handshake(tcp)) => match result {
                Ok(Ok(io)) => Some(io),
                Ok(Err(e)) => {
                    debug!(listener = self.what, %peer, error = %e, "TLS handshake failed");
                    None
                }
                Err(_) => {
                    debug!(listener = self.what, %peer, "TLS handshake timed out");
                    None
                }
            },
        };
        if let Some(io) = handshaken {
            state.ready_now();
            self.clone().http(&state, io, peer, router, refused).await;
        }
        self.close(id);
    }

    async fn http(
        self: Arc<Self>,
        state: &Arc<Connection>,
        io: impl AsyncRead + AsyncWrite + Unpin + Send + 'static,
        peer: SocketAddr,
        router: impl Respond,
        refused: bool,
    ) {
        let (listener, counted, timeout) = (self.clone(), state.clone(), self.limits.request_timeout);
        let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            let in_request = InRequest::new(listener.clone(), counted.clone());
            let request = request.map(|body| RequestBody::new(body, &counted, timeout));
            let response =
                if refused { router.refuse(request, &Violation::OtherUser) } else { router.respond(request, peer) };
            async move {
                let response = response.await?;
                Ok::<_, Infallible>(response.map(|inner| CountedBody { inner, _in_request: in_request }))
            }
        });
        let connection = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(self.limits.header_read_timeout)
            .max_buf_size(self.limits.max_head_bytes)
            .max_header_size(self.limits.max_head_bytes)
            .max_headers(self.limits.max_headers)
            .keep_alive(true)
            .serve_connection(TokioIo::new(io), service);
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
                    // A displaced connection was chosen because nothing was being answered on it;
                    // its request, if any, is still arriving and is cut (its sender stalled, or is
                    // one of many at the limit). At shutdown, a request in progress is answered
                    // first, one still arriving within its deadline.
                    let cut = state.in_request.load(Ordering::SeqCst) == 0
                        || (state.displaced.load(Ordering::SeqCst) && state.receiving.load(Ordering::SeqCst));
                    if cut {
                        break;
                    }
                    connection.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
        }
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

    fn limits(connections: usize, per_peer: usize) -> Limits {
        Limits {
            connections,
            per_peer,
            handshake_timeout: Duration::from_secs(5),
            header_read_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            max_head_bytes: 16 * 1024,
            max_headers: 64,
            shutdown_grace: Duration::from_secs(10),
        }
    }

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 3));

    fn admitted(admission: Admission) -> (u64, Arc<Connection>) {
        match admission {
            Admission::Admitted(id, connection) => (id, connection),
            Admission::Full => panic!("not admitted: full"),
            Admission::PeerFull => panic!("not admitted: the peer is at its cap"),
        }
    }

    fn open(listener: &Listener) -> usize {
        listener.table().open.len()
    }

    #[test]
    fn at_the_limit_a_new_connection_displaces_the_oldest_idle_one_and_never_a_busy_one() {
        let listener = Listener::new("test", limits(2, 2));
        let (first, first_state) = admitted(listener.admit(A));
        let (_, second_state) = admitted(listener.admit(B));
        // The oldest is busy with a request: the second (idle) one gives way.
        let _busy = InRequest::new(listener.clone(), first_state.clone());
        let (_, third_state) = admitted(listener.admit(B));
        assert_eq!(open(&listener), 2);
        assert!(listener.table().open.contains_key(&first), "a connection with a request in progress was displaced");
        assert!(!Arc::ptr_eq(&second_state, &third_state));
        // Every connection busy: the newcomer waits.
        let _busy_too = InRequest::new(listener.clone(), third_state);
        assert!(matches!(listener.admit(A), Admission::Full));
        drop(_busy);
        assert!(
            matches!(listener.admit(A), Admission::Admitted(..)),
            "a finished request makes its connection displaceable"
        );
    }

    #[test]
    fn a_connection_still_sending_its_body_gives_way_and_one_being_answered_does_not() {
        let listener = Listener::new("test", limits(2, 2));
        let (receiving, receiving_state) = admitted(listener.admit(A));
        let (answered, answered_state) = admitted(listener.admit(B));
        let _in_request = InRequest::new(listener.clone(), receiving_state.clone());
        receiving_state.receiving.store(true, Ordering::SeqCst);
        let _answering = InRequest::new(listener.clone(), answered_state.clone());
        let _ = admitted(listener.admit(A));
        let table = listener.table();
        assert!(!table.open.contains_key(&receiving), "the stalled body was kept");
        assert!(table.open.contains_key(&answered), "a request being answered was displaced");
        assert!(receiving_state.displaced.load(Ordering::SeqCst));
    }

    #[test]
    fn a_peer_at_its_cap_displaces_its_own_connections_and_never_anothers() {
        let listener = Listener::new("test", limits(10, 2));
        let (other, _) = admitted(listener.admit(B));
        let (a1, a1_state) = admitted(listener.admit(A));
        let (a2, _) = admitted(listener.admit(A));
        let (a3, _) = admitted(listener.admit(A));
        {
            let table = listener.table();
            assert!(table.open.contains_key(&other), "another peer's connection was displaced");
            assert!(!table.open.contains_key(&a1) && table.open.contains_key(&a2) && table.open.contains_key(&a3));
            assert_eq!(table.per_peer[&A], 2);
        }
        assert!(a1_state.closing.load(Ordering::SeqCst));
        // Both of the peer's connections busy: its next one is closed, not queued.
        let states: Vec<_> = listener.table().open.values().filter(|c| c.peer == A).cloned().collect();
        let _busy: Vec<_> = states.into_iter().map(|c| InRequest::new(listener.clone(), c)).collect();
        assert!(matches!(listener.admit(A), Admission::PeerFull));
        assert!(matches!(listener.admit(B), Admission::Admitted(..)), "another peer still gets in");
        listener.close(a2);
        listener.close(a3);
        assert!(!listener.table().per_peer.contains_key(&A), "a peer with no connection is forgotten");
    }

    #[tokio::test]
    async fn a_displaced_connection_is_told_to_close() {
        let listener = Listener::new("test", limits(1, 1));
        let (_, idle) = admitted(listener.admit(A));
        let waiting = tokio::spawn({
            let idle = idle.clone();
            async move { idle.close_asked().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        let _ = admitted(listener.admit(B));
        tokio::time::timeout(Duration::from_secs(1), waiting).await.unwrap().unwrap();
        // Asked before it listens: it still hears it.
        tokio::time::timeout(Duration::from_secs(1), idle.close_asked()).await.unwrap();
    }
}
