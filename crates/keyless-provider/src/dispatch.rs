//! The credential listener's request path, the same for every provider: one route table over
//! every provider's native routes (matchit, the engine axum's router uses); for a matched route,
//! the provider's request rules ([`crate::guard`]), the route's method, its handler, then the
//! provider's response headers and `keyless_requests_total{provider,route,status}`.
//!
//! This is the cached-credential path, benchmarked in instructions per request
//! (docs/benchmarks.md): axum's `Router` with a `route_layer` per concern cloned and boxed a
//! service per layer and allocated request extensions (matched path, URL parameters) on every
//! request. Here a request costs one lookup, one reference count and one boxed handler future.
//!
//! What axum's router did, this keeps: a path no route matches gets an empty 404 (no rules, not
//! counted); a method the route does not answer gets an empty 405 with `Allow`, after the rules
//! and counted; `HEAD` on a `GET` route gets the `GET` response's headers with its
//! `Content-Length` and no body.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use axum::body::{Body, HttpBody as _};
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, Method, StatusCode, header};
use keyless_core::Metrics;
use keyless_core::metrics::RouteRequests;

use crate::contract::{BoxFuture, RouteMethod, Started};
use crate::guard::{Rules, Violation};
use crate::routes::{self, RouteClaim, RouteCollision};

/// What a handler is given: the request line and headers. Only a `POST` route takes a body: it
/// is read (bounded) before the handler runs and given as the [`crate::FormBody`] extension; the
/// shared rules refuse one on every other route.
pub type Request = http::Request<()>;

/// A route's handler with its state.
#[derive(Clone)]
pub struct Handler(Arc<dyn Fn(Request) -> BoxFuture<'static, Response> + Send + Sync>);

impl Handler {
    /// `handler(state.clone(), request)` for each request (make `state` an `Arc`).
    pub fn new<S, F, Fut>(state: S, handler: F) -> Self
    where
        S: Clone + Send + Sync + 'static,
        F: Fn(S, Request) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response> + Send + 'static,
    {
        Self(Arc::new(move |request| Box::pin(handler(state.clone(), request))))
    }

    fn call(&self, request: Request) -> BoxFuture<'static, Response> {
        (self.0)(request)
    }
}

impl fmt::Debug for Handler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Handler")
    }
}

impl RouteMethod {
    fn answers(self, method: &Method) -> bool {
        match self {
            Self::Get => method == Method::GET || method == Method::HEAD,
            Self::Put => method == Method::PUT,
            Self::Post => method == Method::POST,
        }
    }

    /// The `Allow` header of a 405, as axum words it.
    fn allow(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            Self::Get => "GET,HEAD",
            Self::Put => "PUT",
            Self::Post => "POST",
        })
    }
}

/// One served route: its method, handler, the rules of its provider and its request counter.
struct Served {
    method: RouteMethod,
    handler: Handler,
    rules: Rules,
    requests: Option<RouteRequests>,
}

impl Served {
    /// What every answer of the route gets, refusals and 405s included.
    fn finish(&self, mut response: Response, head: bool) -> Response {
        let headers = response.headers_mut();
        for (name, value) in self.rules.response_headers {
            headers.insert(name.clone(), value.clone());
        }
        if head {
            if !response.headers().contains_key(header::CONTENT_LENGTH)
                && let Some(len) = response.body().size_hint().exact()
            {
                response.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(len));
            }
            *response.body_mut() = Body::empty();
        }
        if let Some(requests) = &self.requests {
            requests.record(response.status().as_u16());
        }
        response
    }
}

/// Every provider's native routes behind the shared rules: the credential listener's service.
/// Cheap to clone.
#[derive(Clone)]
pub struct Routes {
    table: Arc<matchit::Router<Arc<Served>>>,
}

impl fmt::Debug for Routes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Routes")
    }
}

impl Routes {
    /// The routes of `providers` (each with its name, the `provider` label). Every route is
    /// checked first ([`routes::check_servable`]), so a provider serving a malformed or repeated
    /// path, or another's, is an error, never a panic. With `metrics`, each answer of a matched
    /// route is counted in `keyless_requests_total` under the route as declared (a bounded set,
    /// whatever paths clients ask for).
    pub fn new<'a>(
        providers: impl IntoIterator<Item = (&'static str, &'a dyn Started)>,
        metrics: Option<&Metrics>,
    ) -> Result<Self, RouteCollision> {
        Self::refusing_twice(providers, metrics, &[])
    }

    /// [`Routes::new`], every route also refusing each of `also` given twice: the security
    /// headers of providers the listener does not serve (`keyless_registry::single_headers()`
    /// gives every registered provider's), for a listener whose rules do not depend on which
    /// providers are configured.
    pub fn refusing_twice<'a>(
        providers: impl IntoIterator<Item = (&'static str, &'a dyn Started)>,
        metrics: Option<&Metrics>,
        also: &[&'static str],
    ) -> Result<Self, RouteCollision> {
        let providers: Vec<_> = providers.into_iter().map(|(name, started)| (name, started, started.rules())).collect();
        // Every route refuses twice what any of the listener's providers declares
        // ([`Rules::single_headers`] says why).
        let mut single_headers: Vec<&'static str> = Vec::new();
        for name in providers.iter().flat_map(|(_, _, rules)| rules.single_headers.iter()).chain(also) {
            if !single_headers.iter().any(|n| n.eq_ignore_ascii_case(name)) {
                single_headers.push(name);
            }
        }
        let mut claims = Vec::new();
        let mut served = Vec::new();
        for (name, started, rules) in providers {
            let rules = Rules { single_headers: single_headers.clone().into(), ..rules };
            for route in started.routes() {
                claims.push(RouteClaim::new(route.path.clone(), format!("{name} routes")));
                let requests = metrics.map(|m| m.route_requests(name, &route.path));
                let entry = Served { method: route.method, handler: route.handler, rules: rules.clone(), requests };
                served.push((route.path, Arc::new(entry)));
            }
        }
        routes::check_servable(&claims)?;
        let mut table = matchit::Router::new();
        for ((path, entry), claim) in served.into_iter().zip(&claims) {
            table.insert(path, entry).map_err(|e| RouteCollision {
                first: Box::new(claim.clone()),
                second: Box::new(claim.clone()),
                reason: format!("cannot be routed ({e})"),
            })?;
        }
        Ok(Self { table: Arc::new(table) })
    }

    /// Answers `request` (its body is read only for a `POST` route, and dropped unread otherwise:
    /// the rules refuse any there).
    pub fn serve<B: RequestBody>(&self, request: http::Request<B>) -> Answer {
        self.answer(request, None)
    }

    /// Refuses `request` for `violation` in its route's native error shape, counted and with the
    /// provider's response headers as any answer of the route; a path no route matches gets the
    /// same empty 404 as in [`Routes::serve`].
    pub fn refuse<B: RequestBody>(&self, request: http::Request<B>, violation: &Violation) -> Answer {
        self.answer(request, Some(violation))
    }

    /// `request`'s answer: refused for `refused` (a rule of the connection), else for the first
    /// rule it breaks, else its route's handler's.
    fn answer<B: RequestBody>(&self, request: http::Request<B>, refused: Option<&Violation>) -> Answer {
        let (parts, body) = request.into_parts();
        let Ok(found) = self.table.at(parts.uri.path()) else {
            return Answer {
                state: State::Ready(Some(StatusCode::NOT_FOUND.into_response())),
                route: None,
                head: false,
            };
        };
        let route = found.value.clone();
        let request = Request::from_parts(parts, ());
        let head = request.method() == Method::HEAD;
        let takes_body = route.method == RouteMethod::Post;
        let violation = match refused {
            Some(violation) => Some(violation.clone()),
            None => route.rules.check_route(&request, takes_body),
        };
        let state = if let Some(violation) = violation {
            State::Ready(Some(route.rules.errors.refuse(request.uri().path(), &violation)))
        } else if route.method.answers(request.method()) {
            if takes_body {
                State::Handling(Box::pin(with_form_body(route.clone(), request, body)))
            } else {
                State::Handling(route.handler.call(request))
            }
        } else {
            let mut refused = StatusCode::METHOD_NOT_ALLOWED.into_response();
            refused.headers_mut().insert(header::ALLOW, route.method.allow());
            State::Ready(Some(refused))
        };
        Answer { state, route: Some(route), head }
    }
}

/// A request body [`Routes`] can read for a `POST` route (the listener's, axum's).
pub trait RequestBody: axum::body::HttpBody<Data = bytes::Bytes> + Send + 'static {}

impl<B: axum::body::HttpBody<Data = bytes::Bytes> + Send + 'static> RequestBody for B {}

/// Reads a `POST` route's body, at most [`crate::MAX_FORM_BODY`] bytes (the listener bounds the
/// time), then runs its handler with it; a longer body, or one that fails, gets the route's
/// native 413.
async fn with_form_body<B: RequestBody>(route: Arc<Served>, mut request: Request, body: B) -> Response {
    use http_body_util::BodyExt as _;
    let mut body = std::pin::pin!(body);
    let mut form = bytes::BytesMut::new();
    while let Some(frame) = body.as_mut().frame().await {
        let data = match frame {
            Ok(frame) => frame.into_data().unwrap_or_default(),
            Err(_) => return route.rules.errors.refuse(request.uri().path(), &Violation::BodyTooLarge),
        };
        if form.len() + data.len() > crate::MAX_FORM_BODY {
            return route.rules.errors.refuse(request.uri().path(), &Violation::BodyTooLarge);
        }
        form.extend_from_slice(&data);
    }
    request.extensions_mut().insert(crate::FormBody(form.freeze()));
    route.handler.call(request).await
}

impl<B: RequestBody> tower::Service<http::Request<B>> for Routes {
    type Response = Response;
    type Error = Infallible;
    type Future = Answer;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Answer {
        self.serve(request)
    }
}

enum State {
    Ready(Option<Response>),
    Handling(BoxFuture<'static, Response>),
}

/// The answer to one request.
pub struct Answer {
    state: State,
    /// The matched route, until its answer is finished.
    route: Option<Arc<Served>>,
    head: bool,
}

impl fmt::Debug for Answer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Answer")
    }
}

impl Future for Answer {
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let response = match &mut this.state {
            State::Handling(future) => {
                let response = ready!(future.as_mut().poll(cx));
                this.state = State::Ready(None);
                response
            }
            // Polled again after completion: answer something rather than panic.
            State::Ready(response) => {
                response.take().unwrap_or_else(|| StatusCode::INTERNAL_SERVER_ERROR.into_response())
            }
        };
        Poll::Ready(Ok(match this.route.take() {
            Some(route) => route.finish(response, this.head),
            None => response,
        }))
    }
}

#[cfg(test)]
mod tests {
    use axum::body::to_bytes;
    use http::HeaderName;

    use super::*;
    use crate::contract::NativeRoute;
    use crate::guard::PlainText;
    use crate::listen::AppHost;

    /// Two routes: `GET /creds/{name}` answering the name, and `PUT /session`.
    struct Fake;

    static FLAVOR: [(HeaderName, HeaderValue); 1] =
        [(HeaderName::from_static("x-flavor"), HeaderValue::from_static("fake"))];

    impl Started for Fake {
        fn routes(&self) -> Vec<NativeRoute> {
            vec![
                NativeRoute::get(
                    "/creds/{name}",
                    Handler::new(Arc::new("state"), |state: Arc<&str>, request: Request| async move {
                        format!("{} {}", *state, request.uri().path()).into_response()
                    }),
                ),
                NativeRoute::put("/session", Handler::new((), |(), _| async { "opened".into_response() })),
                NativeRoute::post(
                    "/token",
                    Handler::new((), |(), request: Request| async move {
                        match request.extensions().get::<crate::FormBody>() {
                            Some(form) => format!("form {}", String::from_utf8_lossy(&form.0)).into_response(),
                            None => "no form".into_response(),
                        }
                    }),
                ),
            ]
        }

        fn rules(&self) -> Rules {
            Rules { response_headers: &FLAVOR, ..Rules::credentials(PlainText) }
        }

        fn readiness(&self) -> Vec<Arc<dyn keyless_core::Readiness>> {
            Vec::new()
        }

        fn app_env(&self, _app: &AppHost) -> Vec<keyless_core::AppEnvVar> {
            Vec::new()
        }
    }

    async fn ask(routes: &Routes, method: Method, uri: &str, host: &str) -> (StatusCode, http::HeaderMap, String) {
        let request =
            http::Request::builder().method(method).uri(uri).header("host", host).body(Body::empty()).expect("request");
        let response = routes.serve(request).await.expect("infallible");
        let (parts, body) = response.into_parts();
        let body = to_bytes(body, usize::MAX).await.expect("body");
        (parts.status, parts.headers, String::from_utf8(body.to_vec()).expect("text"))
    }

    fn count(metrics: &Metrics, labels: &str) -> Option<String> {
        let text = metrics.encode();
        text.lines()
            .find(|l| l.starts_with("keyless_requests_total{") && l.contains(labels))
            .and_then(|l| l.rsplit(' ').next())
            .map(str::to_owned)
    }

    #[tokio::test]
    async fn a_matched_route_is_answered_behind_its_rules_and_counted_under_its_template() {
        let metrics = Metrics::new();
        let routes = Routes::new([("fake", &Fake as &dyn Started)], Some(&metrics)).expect("routes");

        let (status, headers, body) = ask(&routes, Method::GET, "/creds/app", "127.0.0.1").await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "state /creds/app"));
        assert_eq!(headers.get("x-flavor").map(HeaderValue::as_bytes), Some(&b"fake"[..]));

        let (status, headers, body) = ask(&routes, Method::GET, "/creds/app", "evil.example").await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        assert!(headers.contains_key("x-flavor"), "refusals carry the provider's headers too");

        let (status, headers, body) = ask(&routes, Method::POST, "/creds/app", "127.0.0.1").await;
        assert_eq!((status, body.as_str()), (StatusCode::METHOD_NOT_ALLOWED, ""));
        assert_eq!(headers.get(header::ALLOW).map(HeaderValue::as_bytes), Some(&b"GET,HEAD"[..]));
        let (status, headers, _) = ask(&routes, Method::GET, "/session", "127.0.0.1").await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(headers.get(header::ALLOW).map(HeaderValue::as_bytes), Some(&b"PUT"[..]));
        let (status, _, body) = ask(&routes, Method::PUT, "/session", "127.0.0.1").await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "opened"));

        let route = r#"provider="fake",route="/creds/{name}""#;
        assert_eq!(count(&metrics, &format!(r#"{route},status="200""#)).as_deref(), Some("1"));
        assert_eq!(count(&metrics, &format!(r#"{route},status="403""#)).as_deref(), Some("1"));
        assert_eq!(count(&metrics, &format!(r#"{route},status="405""#)).as_deref(), Some("1"));
    }

    #[tokio::test]
    async fn a_refused_connection_gets_its_routes_native_refusal_counted() {
        let metrics = Metrics::new();
        let routes = Routes::new([("fake", &Fake as &dyn Started)], Some(&metrics)).expect("routes");
        let request =
            http::Request::get("/creds/app").header("host", "127.0.0.1").body(Body::empty()).expect("request");
        let response = routes.refuse(request, &Violation::OtherUser).await.expect("infallible");
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        assert!(response.headers().contains_key("x-flavor"), "refusals carry the provider's headers");
        let body = to_bytes(response.into_body(), usize::MAX).await.expect("body");
        assert!(String::from_utf8_lossy(&body).contains("another user"));
        let route = r#"provider="fake",route="/creds/{name}",status="403""#;
        assert_eq!(count(&metrics, route).as_deref(), Some("1"));
        let request = http::Request::get("/elsewhere").body(Body::empty()).expect("request");
        let response = routes.refuse(request, &Violation::OtherUser).await.expect("infallible");
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn head_gets_the_get_headers_and_length_without_a_body() {
        let routes = Routes::new([("fake", &Fake as &dyn Started)], None).expect("routes");
        let (status, headers, body) = ask(&routes, Method::HEAD, "/creds/app", "127.0.0.1").await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, ""));
        assert_eq!(headers.get(header::CONTENT_LENGTH).map(HeaderValue::as_bytes), Some(&b"16"[..]));
        assert!(headers.contains_key("x-flavor"));
    }

    #[tokio::test]
    async fn an_unmatched_path_is_an_empty_404_outside_every_rule_and_count() {
        let metrics = Metrics::new();
        let routes = Routes::new([("fake", &Fake as &dyn Started)], Some(&metrics)).expect("routes");
        for host in ["127.0.0.1", "evil.example"] {
            let (status, headers, body) = ask(&routes, Method::GET, "/elsewhere", host).await;
            assert_eq!((status, body.as_str()), (StatusCode::NOT_FOUND, ""));
            assert!(!headers.contains_key("x-flavor"));
        }
        assert!(!metrics.encode().contains("keyless_requests_total{"));
    }

    async fn post(routes: &Routes, body: Body, length: Option<usize>) -> (StatusCode, String) {
        let mut request = http::Request::post("/token").header("host", "127.0.0.1");
        if let Some(length) = length {
            request = request.header(header::CONTENT_LENGTH, length);
        }
        let response = routes.serve(request.body(body).expect("request")).await.expect("infallible");
        let status = response.status();
        let body = to_bytes(response.into_body(), usize::MAX).await.expect("body");
        (status, String::from_utf8(body.to_vec()).expect("text"))
    }

    /// A POST route gets its form, whole; a body over the bound is refused before the handler
    /// runs, whether it says so in `Content-Length` or only as it arrives. Other routes still
    /// refuse every body.
    #[tokio::test]
    async fn a_post_route_reads_a_bounded_form_and_only_it_takes_a_body() {
        let routes = Routes::new([("fake", &Fake as &dyn Started)], None).expect("routes");
        assert_eq!(post(&routes, Body::from("a=1&b=2"), Some(7)).await, (StatusCode::OK, "form a=1&b=2".to_owned()));
        let big = "x".repeat(crate::MAX_FORM_BODY + 1);
        let (status, body) = post(&routes, Body::from(big.clone()), Some(big.len())).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
        // Chunked (no length): bounded as it is read.
        let chunks = futures_util::stream::iter(
            big.into_bytes()
                .chunks(1000)
                .map(|c| Ok::<_, std::io::Error>(bytes::Bytes::copy_from_slice(c)))
                .collect::<Vec<_>>(),
        );
        let (status, body) = post(&routes, Body::from_stream(chunks), None).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
        let exact = "y".repeat(crate::MAX_FORM_BODY);
        assert_eq!(post(&routes, Body::from(exact.clone()), Some(exact.len())).await.0, StatusCode::OK);

        let request = http::Request::put("/session")
            .header("host", "127.0.0.1")
            .header(header::CONTENT_LENGTH, 3)
            .body(Body::from("abc"))
            .expect("request");
        let response = routes.serve(request).await.expect("infallible");
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "a body on a route that takes none");
    }

    /// A provider with one route, `GET {0}`, declaring the security header `{1}`.
    struct Declaring(&'static str, &'static [&'static str]);

    impl Started for Declaring {
        fn routes(&self) -> Vec<NativeRoute> {
            vec![NativeRoute::get(self.0, Handler::new((), |(), _| async { "served".into_response() }))]
        }

        fn rules(&self) -> Rules {
            Rules { single_headers: self.1.into(), ..Rules::credentials(PlainText) }
        }

        fn readiness(&self) -> Vec<Arc<dyn keyless_core::Readiness>> {
            Vec::new()
        }

        fn app_env(&self, _app: &AppHost) -> Vec<keyless_core::AppEnvVar> {
            Vec::new()
        }
    }

    /// A security header one provider declares is refused twice on every route of the listener,
    /// the other provider's included; given once, or undeclared, it is served.
    #[tokio::test]
    async fn a_declared_header_twice_is_refused_on_every_route_of_the_listener() {
        const ONE: &[&str] = &["x-one"];
        const TWO: &[&str] = &["X-Two"];
        let (one, two) = (Declaring("/one", ONE), Declaring("/two", TWO));
        let routes = Routes::new([("one", &one as &dyn Started), ("two", &two)], None).expect("routes");
        for path in ["/one", "/two"] {
            for (name, times, expected) in [
                ("x-one", 2, StatusCode::BAD_REQUEST),
                ("x-two", 2, StatusCode::BAD_REQUEST),
                ("x-one", 1, StatusCode::OK),
                ("x-three", 2, StatusCode::OK),
            ] {
                let mut request = http::Request::get(path).header("host", "127.0.0.1");
                for _ in 0..times {
                    request = request.header(name, "v");
                }
                let response = routes.serve(request.body(Body::empty()).expect("request")).await.expect("infallible");
                assert_eq!(response.status(), expected, "{path} with {name} {times} times");
            }
        }
        // A provider's own router (one provider) refuses its own declaration only, unless told
        // the others'.
        let alone = Routes::new([("one", &one as &dyn Started)], None).expect("routes");
        let told = Routes::refusing_twice([("one", &one as &dyn Started)], None, TWO).expect("routes");
        for (routes, expected) in [(alone, StatusCode::OK), (told, StatusCode::BAD_REQUEST)] {
            let request = http::Request::get("/one").header("x-two", "a").header("x-two", "b").body(Body::empty());
            let response = routes.serve(request.expect("request")).await.expect("infallible");
            assert_eq!(response.status(), expected);
        }
    }

    #[test]
    fn two_providers_serving_one_path_is_an_error_naming_both() {
        let err = Routes::new([("one", &Fake as &dyn Started), ("two", &Fake)], None).expect_err("collision");
        assert!(err.to_string().contains("one routes") && err.to_string().contains("two routes"), "{err}");
    }
}
