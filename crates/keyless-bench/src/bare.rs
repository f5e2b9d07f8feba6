//! The baseline: a bare hyper HTTP/1.1 server answering every request with a fixed body of the
//! size keyless answers the same endpoint with. Run as its own process (`keyless-bench
//! bare-server`, multi-threaded tokio runtime with the default worker count, as keyless), so the
//! two servers get the same share of the machine.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::BenchError;

/// Serves until killed.
pub async fn serve(listen: SocketAddr, body_len: usize) -> Result<(), BenchError> {
    let listener = TcpListener::bind(listen).await.map_err(|e| BenchError::Connect { addr: listen, source: e })?;
    let body = Bytes::from(vec![b'x'; body_len]);
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        // As keyless's listener does: a response is one write, and no Nagle delay on loopback.
        let _ = stream.set_nodelay(true);
        let body = body.clone();
        tokio::spawn(async move {
            let service = service_fn(move |_request: Request<Incoming>| {
                let mut response = Response::new(Full::new(body.clone()));
                response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                async move { Ok::<_, Infallible>(response) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
