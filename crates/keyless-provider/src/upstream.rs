//! Rules every call to a token service follows, whichever HTTP client makes it:
//!
//! - timeouts come from `cache.exchange_timeout` (connect: at most [`CONNECT_TIMEOUT`]);
//! - redirects are never followed (one would carry the subject token or a bearer token elsewhere);
//! - a loopback or link-local endpoint is never reached through `HTTPS_PROXY`
//!   ([`bypasses_proxy`]); other endpoints honour `HTTPS_PROXY`/`NO_PROXY` as the clouds' SDKs do;
//! - response bodies are read up to [`MAX_BODY`] (reqwest: [`read_bounded`]; the AWS SDK through
//!   a limited body, recognised by [`is_too_large`]), a larger one refused by [`too_large`];
//! - a failure without an HTTP answer is classified by [`transport_error`], and an HTTP status
//!   as transient by [`is_transient_status`], the same way for every cloud;
//! - a throttling answer (any 429, or an error code the provider declares in
//!   [`crate::Provider::THROTTLING_CODES`]: AWS `Throttling`, Google `RESOURCE_EXHAUSTED`) becomes
//!   [`ErrorClass::Throttled`](keyless_core::ErrorClass) with its `Retry-After` by [`throttling`].

use std::error::Error;
use std::time::{Duration, SystemTime};

use keyless_core::{CachePolicy, ErrorClass, ExchangeError};

pub use keyless_core::upstream::client::CONNECT_TIMEOUT;
pub use keyless_core::upstream::{ClientError, bypasses_proxy};

/// Largest response body read from a token service. Token responses are a few KiB (an Entra
/// token with many group claims is the largest); this bounds a misbehaving proxy.
pub const MAX_BODY: usize = 256 * 1024;

/// The timeouts of one upstream request: connect, and the whole request.
pub fn timeouts(policy: &CachePolicy) -> (Duration, Duration) {
    (keyless_core::upstream::client::connect_timeout(policy.exchange_timeout), policy.exchange_timeout)
}

use keyless_core::upstream::{BodyError, ClientRules, cause_chain, is_untrusted_certificate};

/// The reqwest client of a provider (core's one client stack, `keyless_core::upstream::client`):
/// the system roots plus `ca_pem` (named by config key `ca_key` in errors), the whole request
/// bounded by `cache.exchange_timeout`, no redirects, no proxy when every endpoint is loopback or
/// link-local.
pub fn http_client(
    ca_pem: Option<&[u8]>,
    ca_key: &str,
    policy: &CachePolicy,
    endpoints: &[&url::Url],
) -> Result<reqwest::Client, ClientError> {
    keyless_core::upstream::client::client(&ClientRules { endpoints, timeout: policy.exchange_timeout, ca_pem, ca_key })
}

/// Reads a response body up to [`MAX_BODY`] bytes. `service` names the token service in errors.
pub async fn read_bounded(service: &str, ca_key: &str, response: reqwest::Response) -> Result<Vec<u8>, ExchangeError> {
    keyless_core::upstream::read_bounded(response, MAX_BODY).await.map_err(|e| match e {
        BodyError::TooLarge => too_large(service),
        BodyError::Transport(e) => transport_error(service, ca_key, &e),
    })
}

/// A token service's answer over [`MAX_BODY`], refused unread, the same for every client.
pub fn too_large(service: &str) -> ExchangeError {
    ExchangeError::retryable(format!("{service} answered with more than {MAX_BODY} bytes"))
        .with_code("UpstreamResponseTooLarge")
        .with_hint("is the endpoint a token service, and not a proxy's error page?")
}

/// Whether `err` or one of its causes is `http_body_util::Limited`'s refusal of a body over its
/// bound (clients that read the body themselves, as the AWS SDK does, through a limited body).
pub fn is_too_large(err: &(dyn Error + 'static)) -> bool {
    let mut cause = Some(err);
    while let Some(e) = cause {
        if e.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        cause = e.source();
    }
    false
}

/// HTTP statuses worth retrying: timeouts, throttling and server errors.
pub fn is_transient_status(status: u16) -> bool {
    status == 408 || status == 429 || (500..600).contains(&status)
}

/// Longest `Retry-After` honoured: a larger one (or a date far ahead) from a misbehaving proxy
/// must not stop refreshes for longer than a credential lives.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);

/// Whether an answer with `status` and the cloud's error `code` is throttling: any 429, whatever
/// the cloud, or one of `codes`, the error codes the cloud means "too many requests" by whatever
/// the status ([`crate::Provider::THROTTLING_CODES`]).
pub fn is_throttling(status: u16, code: Option<&str>, codes: &[&str]) -> bool {
    status == 429 || code.is_some_and(|c| codes.contains(&c))
}

/// A `Retry-After` header's value (RFC 9110 10.2.3: delay-seconds or an HTTP-date) as a delay
/// from `now`, at most [`MAX_RETRY_AFTER`]; `None` when absent or unreadable.
pub fn retry_after(value: Option<&str>, now: SystemTime) -> Option<Duration> {
    let value = value?.trim();
    let delay = match value.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => httpdate::parse_http_date(value).ok()?.duration_since(now).unwrap_or(Duration::ZERO),
    };
    Some(delay.min(MAX_RETRY_AFTER))
}

/// The `Retry-After` header of a reqwest response, for [`throttling`] (read before the body
/// consumes the response).
pub fn retry_after_header(headers: &http::HeaderMap) -> Option<String> {
    headers.get(http::header::RETRY_AFTER).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

/// `err`, an adapter's classification of a non-success answer with `status` and the header
/// `Retry-After` value `retry_after_header`, turned into a throttled error when the answer is
/// throttling ([`is_throttling`] with the adapter's `codes`): the next attempt waits at least the
/// `Retry-After`, and is counted as `keyless_exchanges_total{outcome="throttled"}`. Other answers
/// are returned as they are.
pub fn throttling(
    err: ExchangeError,
    codes: &[&str],
    status: u16,
    retry_after_header: Option<&str>,
    now: SystemTime,
) -> ExchangeError {
    if !is_throttling(status, err.code.as_deref(), codes) {
        return err;
    }
    let wait = retry_after(retry_after_header, now);
    let after = wait.map_or_else(
        || "with backoff".to_owned(),
        |d| format!("no sooner than its Retry-After ({})", humantime::format_duration(d)),
    );
    ExchangeError {
        class: ErrorClass::Throttled,
        retry_after: wait,
        hint: Some(format!(
            "the token service is throttling this identity: keyless retries {after} and serves the credential it \
             holds meanwhile; across a fleet, see docs/fleet.md (cache.refresh_jitter, the clouds' quotas)"
        )),
        ..err
    }
}

/// A call that got no HTTP answer (DNS, connect, TLS, timeout, reset), classified the same for
/// every cloud and every client library, from the error's whole cause chain:
///
/// - an untrusted or invalid server certificate is `Terminal` (code `UntrustedCertificate`): it
///   does not pass without a change (`ca_file`, or the proxy in the way), so clients are told at
///   once instead of retrying; the cache still retries it every `cache.retry_max`;
/// - a timeout is `Retryable` (`UpstreamTimeout`);
/// - anything else (refused, reset, DNS) is `Retryable` (`UpstreamUnreachable`) with the hint to
///   check the network path.
///
/// `service` names the token service and where it is ("STS at https://sts.amazonaws.com").
pub fn transport_error(service: &str, ca_key: &str, err: &(dyn Error + 'static)) -> ExchangeError {
    let chain = cause_chain(err);
    if is_untrusted_certificate(&chain) {
        return ExchangeError::terminal(format!("TLS to {service} failed: {chain}"))
            .with_code("UntrustedCertificate")
            .with_hint(format!(
                "the server's certificate is not trusted: behind a TLS-intercepting proxy, or with a private \
                 endpoint or the keyless emulator, set {ca_key} to a PEM bundle of its CA"
            ));
    }
    let lower = chain.to_ascii_lowercase();
    if lower.contains("timed out") || lower.contains("timeout") || lower.contains("deadline") {
        return ExchangeError::retryable(format!("{service} did not answer in time: {chain}"))
            .with_code("UpstreamTimeout")
            .with_hint("the token service is slow or unreachable; keyless retries with backoff");
    }
    ExchangeError::retryable(format!("could not reach {service}: {chain}")).with_code("UpstreamUnreachable").with_hint(
        "check DNS, egress network policy and HTTPS_PROXY/NO_PROXY from this pod; keyless retries with backoff",
    )
}

#[cfg(test)]
mod tests {
    use keyless_core::ErrorClass;

    use super::*;

    #[derive(Debug)]
    struct Chain(&'static str, Option<Box<Chain>>);

    impl std::fmt::Display for Chain {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl Error for Chain {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            self.1.as_deref().map(|c| c as &(dyn Error + 'static))
        }
    }

    fn chain(outer: &'static str, inner: &'static str) -> Chain {
        Chain(outer, Some(Box::new(Chain(inner, None))))
    }

    #[test]
    fn transport_failures_are_classified_from_the_whole_chain() {
        let cases = [
            (
                chain("error sending request", "invalid peer certificate: UnknownIssuer"),
                ErrorClass::Terminal,
                "UntrustedCertificate",
            ),
            (chain("dispatch failure", "io error: certificate expired"), ErrorClass::Terminal, "UntrustedCertificate"),
            (chain("error sending request", "operation timed out"), ErrorClass::Retryable, "UpstreamTimeout"),
            (
                chain("dispatch failure", "Connection refused (os error 111)"),
                ErrorClass::Retryable,
                "UpstreamUnreachable",
            ),
            (chain("error sending request", "dns error: no record"), ErrorClass::Retryable, "UpstreamUnreachable"),
        ];
        for (err, class, code) in cases {
            let e = transport_error("STS at https://sts.example", "aws.ca_file", &err);
            assert_eq!((e.class, e.code.as_deref()), (class, Some(code)), "{err}");
            assert!(e.message.contains("STS at https://sts.example"), "{}", e.message);
        }
        let e = transport_error("x", "gcp.ca_file", &chain("a", "bad certificate"));
        assert!(e.hint.as_deref().is_some_and(|h| h.contains("gcp.ca_file")));
    }

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        // 1994-11-06T08:49:37Z, RFC 9110's own example date.
        let now = at(784_111_777);
        assert_eq!(retry_after(Some("60"), now), Some(Duration::from_secs(60)));
        assert_eq!(retry_after(Some(" 0 "), now), Some(Duration::ZERO));
        assert_eq!(retry_after(Some("Sun, 06 Nov 1994 08:50:07 GMT"), now), Some(Duration::from_secs(30)));
        assert_eq!(retry_after(Some("Sun, 06 Nov 1994 08:49:00 GMT"), now), Some(Duration::ZERO), "a past date");
        assert_eq!(retry_after(Some("86400"), now), Some(MAX_RETRY_AFTER));
        assert_eq!(retry_after(Some("Fri, 31 Dec 9999 23:59:59 GMT"), now), Some(MAX_RETRY_AFTER));
        for bad in ["", "-1", "1.5", "soon", "99999999999999999999999"] {
            assert_eq!(retry_after(Some(bad), now), None, "{bad:?}");
        }
        assert_eq!(retry_after(None, now), None);
    }

    #[test]
    fn throttling_answers_of_every_cloud_are_throttled_with_their_retry_after() {
        // The codes each adapter declares are its own (the registry's conformance test runs them
        // through each provider's declaration); these are examples.
        const AWS: &[&str] = &["Throttling"];
        const GOOGLE: &[&str] = &["RESOURCE_EXHAUSTED"];
        let cases = [
            // AWS STS: HTTP 400 <Code>Throttling</Code>, no Retry-After (docs/protocols.md 9).
            (AWS, 400, Some("Throttling"), None, None),
            // Google: 429 RESOURCE_EXHAUSTED.
            (GOOGLE, 429, Some("RESOURCE_EXHAUSTED"), Some("30"), Some(30)),
            // Entra ID: 429 with Retry-After: 60, perhaps a plain-text body (no code), no codes.
            (&[], 429, None, Some("60"), Some(60)),
        ];
        for (codes, status, code, header, wait) in cases {
            let mut err = ExchangeError::retryable("answered with an error");
            if let Some(code) = code {
                err = err.with_code(code);
            }
            let e = throttling(err, codes, status, header, at(0));
            assert_eq!(e.class, ErrorClass::Throttled, "{status} {code:?}");
            assert_eq!(e.retry_after, wait.map(Duration::from_secs));
            assert_eq!(e.code.as_deref(), code, "the cloud's code is kept");
            assert!(e.hint.as_deref().is_some_and(|h| h.contains("throttling")), "{e}");
        }
        for (status, code) in [
            (400, Some("ValidationError")),
            (503, None),
            (403, Some("PERMISSION_DENIED")),
            // Another cloud's throttling code is no throttling here.
            (400, Some("RESOURCE_EXHAUSTED")),
        ] {
            let mut err = ExchangeError::terminal("no");
            if let Some(code) = code {
                err = err.with_code(code);
            }
            assert_eq!(throttling(err.clone(), AWS, status, Some("60"), at(0)), err, "{status} {code:?}");
        }
    }

    #[test]
    fn transient_statuses() {
        for s in [408, 429, 500, 502, 503, 504, 599] {
            assert!(is_transient_status(s), "{s}");
        }
        for s in [200, 400, 401, 403, 404, 409, 600] {
            assert!(!is_transient_status(s), "{s}");
        }
    }

    #[test]
    fn timeouts_follow_the_exchange_timeout() {
        let policy = CachePolicy { exchange_timeout: Duration::from_secs(2), ..CachePolicy::default() };
        assert_eq!(timeouts(&policy), (Duration::from_secs(2), Duration::from_secs(2)));
        assert_eq!(timeouts(&CachePolicy::default()).0, CONNECT_TIMEOUT);
    }
}
