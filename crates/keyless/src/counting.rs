//! `keyless_requests_total{provider,route,status}`: a tower layer on each provider's routes.
//!
//! It runs after routing (axum's `route_layer`), so `route` is the matched route template and the
//! label set stays bounded whatever paths clients ask for. It is a plain tower service rather than
//! `axum::middleware::from_fn`: that one clones its state, builds a `Next` and boxes a future on
//! every request, which the benchmark's profile showed as a measurable share of the cached path.
//! This layer's future lives inside the route's existing one: no allocation per request.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use axum::extract::{MatchedPath, Request};
use axum::response::Response;
use keyless_core::Metrics;
use pin_project_lite::pin_project;
use tower::{Layer, Service};

/// Counts every request answered by the routes it wraps under one provider's name.
#[derive(Clone, Debug)]
pub struct CountRequests {
    metrics: Metrics,
    provider: &'static str,
}

impl CountRequests {
    pub fn new(metrics: Metrics, provider: &'static str) -> Self {
        Self { metrics, provider }
    }
}

impl<S> Layer<S> for CountRequests {
    type Service = Counted<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Counted { inner, counter: self.clone() }
    }
}

#[derive(Clone, Debug)]
pub struct Counted<S> {
    inner: S,
    counter: CountRequests,
}

impl<S, E> Service<Request> for Counted<S>
where
    S: Service<Request, Response = Response, Error = E>,
{
    type Response = Response;
    type Error = E;
    type Future = CountedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), E>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        // `MatchedPath` is a shared string: cloning it does not copy the route.
        let route = request.extensions().get::<MatchedPath>().cloned();
        CountedFuture { inner: self.inner.call(request), record: Some((self.counter.clone(), route)) }
    }
}

pin_project! {
    #[derive(Debug)]
    pub struct CountedFuture<F> {
        #[pin]
        inner: F,
        record: Option<(CountRequests, Option<MatchedPath>)>,
    }
}

impl<F, E> Future for CountedFuture<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let output = ready!(this.inner.poll(cx));
        if let (Ok(response), Some((counter, route))) = (&output, this.record.take()) {
            let route = route.as_ref().map_or("", MatchedPath::as_str);
            counter.metrics.record_request(counter.provider, route, response.status().as_u16());
        }
        Poll::Ready(output)
    }
}
