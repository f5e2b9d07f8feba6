//! The request rules every native route shares, checked once in front of each provider's routes
//! (by the credential listener's route table, [`crate::dispatch`]) and, for `Host`, of the admin
//! routes (by [`GuardLayer`]), answered in each route's native error shape (the security rules,
//! docs/reliability.md; docs/reliability.md "hostile input" lists every case):
//!
//! | violation | status | why |
//! |---|---|---|
//! | `Host` not an IP literal, `localhost` or a name the cloud's own clients use | 403 | a DNS-rebinding web page sends its own name |
//! | a security header given twice (`Host`, `Authorization`, and each header a provider declares in its [`Rules::single_headers`]: `Metadata`, `Metadata-Flavor`, `X-IDENTITY-HEADER`, the IMDSv2 token and TTL headers) | 400 | first-wins would let a proxy or a confused client pick the value |
//! | `X-Forwarded-For`, `Forwarded` or `X-Real-IP` present | 403 | the request came through a proxy: the GCE metadata server's rule, applied to every route |
//! | a request body (`Content-Length` other than 0, or `Transfer-Encoding`) | 400 | no native route takes one, but a `POST` route ([`crate::RouteMethod::Post`]) |
//! | a `POST` route's body over [`crate::MAX_FORM_BODY`] (by `Content-Length`, or as it arrives) | 413 | a token request's form is far shorter |
//! | a query string over 4 KiB | 400 | the longest legitimate one (an ID-token audience) is far shorter |
//! | the connection comes from another user's process (`keyless exec`; `listen_uid_check`) | 403 | IMDSv2, the GCE metadata server and Azure IMDS need no secret: on a shared host any local user could read them |
//! | `keyless node`: the source address is no Running pod of the node that is opted in, or the AWS authorization token is not that pod's ([`CallerRefusal`]) | 403 (503 while its ServiceAccount's tokens cannot be had) | the node agent serves each pod its own ServiceAccount's identities only |
//!
//! The check allocates nothing for an accepted request; the layer's future wraps the route's own.

use std::borrow::Cow;
use std::future::Future;
use std::net::Ipv6Addr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tower::{Layer, Service};

/// Longest query string accepted.
pub const MAX_QUERY: usize = 4096;

/// The headers any request may carry at most once, whichever cloud it asks: the target host (the
/// admin routes check only this one) and a credential. The headers a cloud's own clients send to
/// claim they are local or to carry its session token are the provider's to declare
/// ([`Rules::single_headers`]).
pub const SINGLE_HEADERS: [HeaderName; 2] = [header::HOST, header::AUTHORIZATION];

/// Headers a forwarding proxy adds.
const FORWARDING_HEADERS: [HeaderName; 3] = [
    HeaderName::from_static("x-forwarded-for"),
    HeaderName::from_static("forwarded"),
    HeaderName::from_static("x-real-ip"),
];

/// A request the shared rules refuse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    HostNotAllowed,
    DuplicateHeader(HeaderName),
    Forwarded,
    Body,
    /// A `POST` route's body is over [`crate::MAX_FORM_BODY`], or could not be read whole.
    BodyTooLarge,
    QueryTooLong,
    /// The connection's peer socket belongs to another user (or cannot be told): checked once per
    /// connection by the credential listener, not by [`Rules::check`].
    OtherUser,
    /// `keyless node`: the caller (the pod holding the connection's source address) is not served.
    Caller(CallerRefusal),
}

/// Why `keyless node` serves nothing to a caller. The messages never name the pod or echo what the
/// client sent: the caller learns the rule it broke, the node's log has the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallerRefusal {
    /// No pod of this node holds the source address (or more than one claims it).
    UnknownAddress,
    /// The address is the node's own, shared by every `hostNetwork` pod and process of the node.
    HostNetwork,
    /// The pod holding the address is not Running.
    NotRunning,
    /// The pod's ServiceAccount has no identity annotation keyless serves.
    NotOptedIn,
    /// The AWS authorization token is not a valid token of the pod holding the address.
    BadAuthorization,
    /// The ServiceAccount's tokens cannot be had right now (TokenRequest failed): retry.
    Unavailable,
}

impl CallerRefusal {
    fn message(self) -> &'static str {
        match self {
            Self::UnknownAddress => {
                "keyless node knows no Running pod of this node at the connection's source address (a pod that \
                 just started is served once the node's watch has seen it)"
            }
            Self::HostNetwork => {
                "the connection comes from the node's own address (a hostNetwork pod or a process of the node): \
                 keyless node serves pods on the pod network only"
            }
            Self::NotRunning => "the pod at the connection's source address is not Running",
            Self::NotOptedIn => {
                "the pod's ServiceAccount has no identity annotation keyless serves (eks.amazonaws.com/role-arn, \
                 iam.gke.io/gcp-service-account with keyless.dev/gcp-workload-identity-provider, \
                 azure.workload.identity/client-id)"
            }
            Self::BadAuthorization => {
                "the Authorization header is not a valid keyless node token of the pod at the connection's source \
                 address: point AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE at the pod's projected keyless token"
            }
            Self::Unavailable => "keyless node cannot get the ServiceAccount's tokens right now; retry",
        }
    }

    /// The code of the refusal's answer, also what `keyless node` logs it as.
    pub fn code(self) -> &'static str {
        match self {
            Self::UnknownAddress => "UnknownCaller",
            Self::HostNetwork => "HostNetworkCaller",
            Self::NotRunning => "CallerNotRunning",
            Self::NotOptedIn => "NotOptedIn",
            Self::BadAuthorization => "AccessDenied",
            Self::Unavailable => "ServiceUnavailable",
        }
    }
}

impl Violation {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::HostNotAllowed | Self::Forwarded | Self::OtherUser => StatusCode::FORBIDDEN,
            Self::Caller(CallerRefusal::Unavailable) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Caller(_) => StatusCode::FORBIDDEN,
            Self::DuplicateHeader(_) | Self::Body | Self::QueryTooLong => StatusCode::BAD_REQUEST,
            Self::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        }
    }

    /// What the client is told. Never echoes what the client sent (a rebinding page's host name
    /// or a header value has no place in a response).
    pub fn message(&self) -> Cow<'static, str> {
        match self {
            Self::HostNotAllowed => Cow::Borrowed(
                "the Host header is not an IP address, localhost or a metadata server name: keyless answers only \
                 requests addressed to it (DNS-rebinding protection)",
            ),
            Self::DuplicateHeader(name) => Cow::Owned(format!("the {name} header is given more than once")),
            Self::Forwarded => Cow::Borrowed(
                "the request carries X-Forwarded-For, Forwarded or X-Real-IP: keyless answers only direct local \
                 clients, not requests relayed by a proxy",
            ),
            Self::Body => Cow::Borrowed("this endpoint takes no request body"),
            Self::BodyTooLarge => Cow::Borrowed("the request body is larger than 16384 bytes, or was not sent whole"),
            Self::QueryTooLong => Cow::Borrowed("the query string is longer than 4096 bytes"),
            Self::OtherUser => Cow::Borrowed(
                "the connection comes from a process of another user: this keyless serves credentials only to \
                 processes of its own user (listen_uid_check, docs/configuration.md)",
            ),
            Self::Caller(refusal) => Cow::Borrowed(refusal.message()),
        }
    }

    /// A stable name, for native error codes and tests.
    pub fn code(&self) -> &'static str {
        match self {
            Self::HostNotAllowed => "HostNotAllowed",
            Self::DuplicateHeader(_) => "DuplicateHeader",
            Self::Forwarded => "ForwardedRequest",
            Self::Body => "RequestBodyNotAccepted",
            Self::BodyTooLarge => "RequestBodyTooLarge",
            Self::QueryTooLong => "QueryTooLong",
            Self::OtherUser => "OtherUser",
            Self::Caller(refusal) => refusal.code(),
        }
    }
}

/// A provider's error answers, in the shape a route's clients parse (AWS `{"Code","Message"}`, the
/// GCE metadata server's text, Entra's `{"error","error_description"}`...).
pub trait NativeErrors: Send + Sync + 'static {
    /// A request the shared rules refuse.
    fn refuse(&self, path: &str, violation: &Violation) -> Response;

    /// The answer to a credential request while no valid credential is held (the exchange
    /// failed), with the exchange's message and hint: an adapter's handlers answer with the
    /// functions its implementation delegates to. The contract, checked over every registered
    /// provider by keyless-registry's conformance test: a failure that may pass (retryable,
    /// throttled, a token to re-read) is 503, which every SDK retries; a terminal one is never 503
    /// nor a success, but the status the cloud's SDKs surface at once (AWS 500, Google 502, Entra
    /// 403, or 400 where Entra's own answer is "invalid resource").
    fn unavailable(&self, path: &str, err: &keyless_core::ExchangeError) -> Response;
}

/// The status of a [`NativeErrors::unavailable`] answer: 503 while the failure may pass (retryable,
/// throttled, a token to re-read), which every SDK retries; `terminal`, the cloud's own status for
/// a refused identity, when it will not.
pub fn unavailable_status(class: keyless_core::ErrorClass, terminal: StatusCode) -> StatusCode {
    match class {
        keyless_core::ErrorClass::Terminal => terminal,
        keyless_core::ErrorClass::Retryable
        | keyless_core::ErrorClass::Throttled
        | keyless_core::ErrorClass::RereadToken => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// Plain-text refusals (the admin listener).
#[derive(Debug, Clone, Copy)]
pub struct PlainText;

impl NativeErrors for PlainText {
    fn refuse(&self, _path: &str, violation: &Violation) -> Response {
        (violation.status(), format!("{}\n", violation.message())).into_response()
    }

    fn unavailable(&self, _path: &str, err: &keyless_core::ExchangeError) -> Response {
        (unavailable_status(err.class, StatusCode::INTERNAL_SERVER_ERROR), format!("{err}\n")).into_response()
    }
}

/// Which rules apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Every rule: the credential routes.
    Credentials,
    /// Only `Host` (and a repeated `Host`): the admin routes, which kubelet probes and scrapers
    /// reach through the pod IP.
    Admin,
}

/// How the shared rules apply to one provider's routes.
#[derive(Clone)]
pub struct Rules {
    pub scope: Scope,
    pub errors: Arc<dyn NativeErrors>,
    /// Host names the cloud's own clients use for its metadata server (`metadata.google.internal`),
    /// accepted besides IP literals and `localhost`.
    pub host_names: &'static [&'static str],
    /// Headers every response of these routes carries (the GCE metadata server's
    /// `Metadata-Flavor: Google`).
    pub response_headers: &'static [(HeaderName, HeaderValue)],
    /// The cloud's own security headers ([`crate::Provider::SINGLE_HEADERS`], lowercase), refused
    /// when given twice besides [`SINGLE_HEADERS`].
    ///
    /// A provider's rules carry its own declaration; the credential listener ([`crate::Routes`]) refuses the
    /// union of what its providers declare on **every** route, not only on the declaring cloud's:
    /// the listener keeps one rule set whichever route a request names, as it did when the list
    /// was closed (the serving-rules table and the routes fuzz target check that no credential
    /// route answers any of these twice), and a request carrying a cloud's security header twice
    /// is malformed or crafted whichever route it asks. A cloud the listener does not serve
    /// declares nothing there (its header means nothing on that listener) unless the listener is
    /// built with every registered provider's ([`crate::Routes::refusing_twice`]).
    pub single_headers: Cow<'static, [&'static str]>,
}

impl std::fmt::Debug for Rules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rules")
            .field("scope", &self.scope)
            .field("host_names", &self.host_names)
            .field("single_headers", &self.single_headers)
            .finish_non_exhaustive()
    }
}

impl Rules {
    /// The credential-route rules with `errors` and nothing else.
    pub fn credentials(errors: impl NativeErrors) -> Self {
        Self {
            scope: Scope::Credentials,
            errors: Arc::new(errors),
            host_names: &[],
            response_headers: &[],
            single_headers: Cow::Borrowed(&[]),
        }
    }

    /// The admin listener's rules.
    pub fn admin() -> Self {
        Self {
            scope: Scope::Admin,
            errors: Arc::new(PlainText),
            host_names: &[],
            response_headers: &[],
            single_headers: Cow::Borrowed(&[]),
        }
    }

    /// The first rule `request` breaks, if any.
    pub fn check<B>(&self, request: &http::Request<B>) -> Option<Violation> {
        self.check_route(request, false)
    }

    /// [`Rules::check`] for a route that reads a body of at most [`crate::MAX_FORM_BODY`] bytes
    /// (`takes_body`) or none.
    pub fn check_route<B>(&self, request: &http::Request<B>, takes_body: bool) -> Option<Violation> {
        let headers = request.headers();
        let host_ok = headers.get(header::HOST).is_none_or(|h| host_allowed(h.as_bytes(), self.host_names))
            && request.uri().authority().is_none_or(|a| host_allowed(a.as_str().as_bytes(), self.host_names));
        if !host_ok {
            return Some(Violation::HostNotAllowed);
        }
        // A map whose every name appears once has as many keys as values: the usual case costs
        // one comparison.
        if headers.keys_len() != headers.len() {
            let (generic, declared) = match self.scope {
                Scope::Credentials => (&SINGLE_HEADERS[..], &self.single_headers[..]),
                Scope::Admin => (&SINGLE_HEADERS[..1], &[][..]),
            };
            if let Some(name) = generic.iter().find(|name| headers.get_all(*name).iter().nth(1).is_some()) {
                return Some(Violation::DuplicateHeader(name.clone()));
            }
            // By name: a name that is no valid header name is in no request.
            let twice = declared.iter().find(|name| headers.get_all(**name).iter().nth(1).is_some());
            if let Some(name) = twice.and_then(|name| HeaderName::from_bytes(name.as_bytes()).ok()) {
                return Some(Violation::DuplicateHeader(name));
            }
        }
        if self.scope == Scope::Admin {
            return None;
        }
        // One pass over the headers (a request has a handful) rather than a map lookup per name.
        let (mut forwarded, mut transfer_encoding, mut content_length) = (false, false, None);
        for (name, value) in headers {
            if name == header::CONTENT_LENGTH {
                content_length.get_or_insert(value);
            } else if name == header::TRANSFER_ENCODING {
                transfer_encoding = true;
            } else if FORWARDING_HEADERS.contains(name) {
                forwarded = true;
            }
        }
        if forwarded {
            return Some(Violation::Forwarded);
        }
        if takes_body {
            // A chunked body is bounded as it is read.
            let declared = content_length.map(|v| v.to_str().ok().and_then(|v| v.parse::<usize>().ok()));
            if declared.is_some_and(|n| n.is_none_or(|n| n > crate::MAX_FORM_BODY)) {
                return Some(Violation::BodyTooLarge);
            }
        } else if transfer_encoding || content_length.is_some_and(|v| v.as_bytes() != b"0") {
            return Some(Violation::Body);
        }
        if request.uri().query().is_some_and(|q| q.len() > MAX_QUERY) {
            return Some(Violation::QueryTooLong);
        }
        None
    }
}

/// Whether a `Host` value (or a request target's authority) names keyless: an IP literal (any
/// port), `localhost`, or one of `names`, case-insensitively, with an optional trailing dot.
/// A web page can make its own name resolve to 127.0.0.1 (DNS rebinding), but a browser then
/// still sends that name: refusing it is what keeps the page from reading credentials.
pub fn host_allowed(value: &[u8], names: &[&str]) -> bool {
    if let Some(rest) = value.strip_prefix(b"[") {
        let Ok(rest) = std::str::from_utf8(rest) else { return false };
        let Some((ip, after)) = rest.split_once(']') else { return false };
        return ip.parse::<Ipv6Addr>().is_ok()
            && (after.is_empty() || after.strip_prefix(':').is_some_and(|port| is_port(port.as_bytes())));
    }
    // Bytes, not text: every request's `Host` goes through this. A byte that is not ASCII
    // matches no IP literal and no name.
    let name = match value.iter().rposition(|b| *b == b':') {
        Some(colon) if is_port(&value[colon + 1..]) => &value[..colon],
        Some(_) => return false,
        None => value,
    };
    if is_ipv4(name) {
        return true;
    }
    let name = name.strip_suffix(b".").unwrap_or(name);
    name.eq_ignore_ascii_case(b"localhost") || names.iter().any(|n| name.eq_ignore_ascii_case(n.as_bytes()))
}

/// Whether `text` is what `Ipv4Addr::from_str` accepts: four dot-separated decimal octets of one to
/// three digits, at most 255, without a leading zero.
fn is_ipv4(text: &[u8]) -> bool {
    let (mut dots, mut digits, mut octet, mut leading_zero) = (0, 0, 0u32, false);
    for &b in text {
        if b.is_ascii_digit() {
            if digits == 1 && leading_zero {
                return false;
            }
            leading_zero = digits == 0 && b == b'0';
            octet = octet * 10 + u32::from(b - b'0');
            digits += 1;
            if octet > 255 {
                return false;
            }
        } else if b == b'.' && digits > 0 && dots < 3 {
            (dots, digits, octet) = (dots + 1, 0, 0);
        } else {
            return false;
        }
    }
    dots == 3 && digits > 0
}

fn is_port(text: &[u8]) -> bool {
    !text.is_empty() && text.len() <= 5 && text.iter().all(u8::is_ascii_digit)
}

/// The layer applying [`Rules`] in front of an axum router's routes (the admin listener's; the
/// credential routes get theirs from [`crate::Routes`]).
#[derive(Debug, Clone)]
pub struct GuardLayer {
    rules: Rules,
}

impl GuardLayer {
    pub fn new(rules: Rules) -> Self {
        Self { rules }
    }
}

impl<S> Layer<S> for GuardLayer {
    type Service = Guard<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Guard { inner, rules: self.rules.clone() }
    }
}

#[derive(Debug, Clone)]
pub struct Guard<S> {
    inner: S,
    rules: Rules,
}

impl<S> Service<Request> for Guard<S>
where
    S: Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = GuardFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let headers = self.rules.response_headers;
        match self.rules.check(&request) {
            Some(violation) => {
                let response = self.rules.errors.refuse(request.uri().path(), &violation);
                GuardFuture::Refused { response: Some(with_headers(response, headers)) }
            }
            None => GuardFuture::Accepted { inner: self.inner.call(request), headers },
        }
    }
}

fn with_headers(mut response: Response, headers: &[(HeaderName, HeaderValue)]) -> Response {
    for (name, value) in headers {
        response.headers_mut().insert(name.clone(), value.clone());
    }
    response
}

pin_project_lite::pin_project! {
    /// The route's own future (with the response headers added), or the refusal.
    #[project = GuardProjection]
    pub enum GuardFuture<F> {
        Accepted { #[pin] inner: F, headers: &'static [(HeaderName, HeaderValue)] },
        Refused { response: Option<Response> },
    }
}

impl<F, E> Future for GuardFuture<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            GuardProjection::Accepted { inner, headers } => {
                let output = ready!(inner.poll(cx));
                Poll::Ready(output.map(|response| with_headers(response, headers)))
            }
            GuardProjection::Refused { response } => match response.take() {
                Some(response) => Poll::Ready(Ok(response)),
                // Polled again after completion: answer something rather than panic.
                None => Poll::Ready(Ok(StatusCode::INTERNAL_SERVER_ERROR.into_response())),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_that_name_keyless_are_allowed_and_others_refused() {
        let names = ["metadata.google.internal", "metadata"];
        let allowed = [
            "127.0.0.1",
            "127.0.0.1:9811",
            "169.254.169.254",
            "169.254.170.2:80",
            "[::1]",
            "[::1]:9811",
            "[fd00:ec2::23]",
            "localhost",
            "LOCALHOST:80",
            "localhost.",
            "metadata.google.internal",
            "Metadata.Google.Internal.:80",
            "metadata",
        ];
        for host in allowed {
            assert!(host_allowed(host.as_bytes(), &names), "{host} must be allowed");
        }
        let refused = [
            "evil.example",
            "evil.example:9811",
            "127.0.0.1.nip.io",
            "localhost.evil.example",
            "metadata.google.internal.evil.example",
            "foo.localhost",
            "127.0.0.1:",
            "127.0.0.1:99999x",
            "127.0.0.1:123456",
            "[::1",
            "[not-an-ip]",
            "[::1]x",
            "user@127.0.0.1",
            "",
            "0x7f.1",
        ];
        for host in refused {
            assert!(!host_allowed(host.as_bytes(), &names), "{host} must be refused");
        }
        assert!(!host_allowed("metadata".as_bytes(), &[]), "names are per provider");
        assert!(!host_allowed(b"\xff\xfe", &names));
    }

    fn request(build: impl FnOnce(http::request::Builder) -> http::request::Builder) -> Request {
        build(Request::builder().uri("/x")).body(axum::body::Body::empty()).expect("request")
    }

    #[test]
    fn each_rule_is_found_and_the_admin_scope_checks_only_the_host() {
        const DECLARED: &[&str] = &["metadata-flavor"];
        let credentials = Rules { single_headers: Cow::Borrowed(DECLARED), ..Rules::credentials(PlainText) };
        let admin = Rules::admin();
        let cases: Vec<(Request, Option<Violation>, Option<Violation>)> = vec![
            (request(|r| r.header("host", "127.0.0.1:1")), None, None),
            (request(|r| r), None, None),
            (
                request(|r| r.header("host", "evil.example")),
                Some(Violation::HostNotAllowed),
                Some(Violation::HostNotAllowed),
            ),
            (
                request(|r| r.uri("http://evil.example/x").header("host", "127.0.0.1")),
                Some(Violation::HostNotAllowed),
                Some(Violation::HostNotAllowed),
            ),
            (
                request(|r| r.header("host", "127.0.0.1").header("host", "evil.example")),
                Some(Violation::DuplicateHeader(header::HOST)),
                Some(Violation::DuplicateHeader(header::HOST)),
            ),
            (
                request(|r| r.header("host", "127.0.0.1").header("host", "127.0.0.1")),
                Some(Violation::DuplicateHeader(header::HOST)),
                Some(Violation::DuplicateHeader(header::HOST)),
            ),
            (
                request(|r| r.header("authorization", "a").header("authorization", "b")),
                Some(Violation::DuplicateHeader(header::AUTHORIZATION)),
                None,
            ),
            (
                request(|r| r.header("metadata-flavor", "Google").header("Metadata-Flavor", "Google")),
                Some(Violation::DuplicateHeader(HeaderName::from_static("metadata-flavor"))),
                None,
            ),
            // A header no provider of these rules declares.
            (request(|r| r.header("metadata", "true").header("metadata", "true")), None, None),
            (request(|r| r.header("accept", "a").header("accept", "b")), None, None),
            (request(|r| r.header("x-forwarded-for", "1.2.3.4")), Some(Violation::Forwarded), None),
            (request(|r| r.header("forwarded", "for=1.2.3.4")), Some(Violation::Forwarded), None),
            (request(|r| r.header("x-real-ip", "1.2.3.4")), Some(Violation::Forwarded), None),
            (request(|r| r.header("content-length", "5")), Some(Violation::Body), None),
            (request(|r| r.header("content-length", "0")), None, None),
            (request(|r| r.header("transfer-encoding", "chunked")), Some(Violation::Body), None),
            (request(|r| r.uri(format!("/x?{}", "a".repeat(MAX_QUERY + 1)))), Some(Violation::QueryTooLong), None),
            (request(|r| r.uri(format!("/x?{}", "a".repeat(MAX_QUERY)))), None, None),
        ];
        for (request, for_credentials, for_admin) in cases {
            let what = format!("{} {:?}", request.uri(), request.headers());
            assert_eq!(credentials.check(&request), for_credentials, "credentials: {what}");
            assert_eq!(admin.check(&request), for_admin, "admin: {what}");
        }
    }

    #[test]
    fn ipv4_literals_are_exactly_what_the_standard_parser_accepts() {
        let agrees = |text: &str| {
            assert_eq!(is_ipv4(text.as_bytes()), text.parse::<std::net::Ipv4Addr>().is_ok(), "{text:?}");
        };
        // Every string of up to 6 characters over digits, dots and a letter.
        let alphabet = ['0', '1', '2', '5', '6', '9', '.', 'a'];
        let mut texts = vec![String::new()];
        for _ in 0..6 {
            texts = texts.iter().flat_map(|t| alphabet.iter().map(move |c| format!("{t}{c}"))).collect();
            texts.iter().for_each(|t| agrees(t));
        }
        // Four pieces that are octets or nearly so, joined by dots or not.
        let pieces = [
            "0", "00", "01", "1", "9", "10", "99", "100", "199", "249", "250", "255", "256", "299", "999", "1000", "",
            "x", "+1", "-1",
        ];
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            usize::try_from(state % n as u64).unwrap_or(0)
        };
        for _ in 0..20_000 {
            let count = 3 + next(3);
            let text: Vec<&str> = (0..count).map(|_| pieces[next(pieces.len())]).collect();
            agrees(&text.join("."));
            agrees(&text.concat());
        }
        for text in
            ["127.0.0.1", "255.255.255.255", "0.0.0.0", "1.2.3.04", "1.2.3.4.", ".1.2.3.4", "1..2.3", "１.2.3.4"]
        {
            agrees(text);
        }
    }

    #[test]
    fn messages_never_echo_the_request() {
        for v in [Violation::HostNotAllowed, Violation::Forwarded, Violation::Body, Violation::QueryTooLong] {
            assert!(!v.message().contains("evil"));
        }
        assert!(Violation::DuplicateHeader(header::AUTHORIZATION).message().contains("authorization"));
    }
}
