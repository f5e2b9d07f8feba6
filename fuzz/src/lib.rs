//! What the fuzz targets share: one tokio runtime for the whole process (libFuzzer calls a target
//! millions of times; a runtime per input would measure the runtime), contexts, and tokens.
#![forbid(unsafe_code)]

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use keyless_core::clock::SystemClock;
use keyless_core::{CachePolicy, Context, Metrics, WatchOptions};

/// The process-wide runtime the targets block on.
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        // libFuzzer's C++ `main` runs instead of Rust's, which would have set SIGPIPE to be
        // ignored: a write to a socket the peer closed then killed the whole run (seen in
        // `routes`). A no-op handler makes it the EPIPE error keyless handles, as in the binary.
        let _ = signal_hook::flag::register(signal_hook::consts::SIGPIPE, Arc::new(AtomicBool::new(false)));
        tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("a tokio runtime")
    })
}

/// A context whose requests wait at most a second for an exchange (a fuzzed request must not
/// stall the run) and whose failed exchanges retry fast.
pub fn context() -> Context {
    let policy = CachePolicy {
        request_wait: Duration::from_secs(1),
        retry_min: Duration::from_millis(50),
        retry_max: Duration::from_secs(1),
        exchange_timeout: Duration::from_secs(2),
        ..CachePolicy::default()
    };
    Context::new(Arc::new(SystemClock), Metrics::new(), policy, WatchOptions::default())
}

/// A JWT-shaped subject token (unsigned: the fuzzed upstreams do not verify it).
pub fn unsigned_jwt(aud: &str) -> String {
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    format!(
        "{}.{}.{}",
        b64(r#"{"alg":"RS256","kid":"fuzz"}"#),
        b64(&format!(
            r#"{{"iss":"https://kubernetes.default.svc","sub":"system:serviceaccount:fuzz:app","aud":["{aud}"],"exp":4102444800}}"#
        )),
        b64("signature")
    )
}

/// An oracle for the `Host` rule, written independently of `keyless_provider::guard`: the host
/// (before an optional `:port` of 1-5 digits) is a dotted-quad IPv4 address, a bracketed IPv6
/// address, or, without a trailing dot and case aside, `localhost` or one of `names`.
pub fn names_keyless(value: &[u8], names: &[&str]) -> bool {
    let Ok(text) = std::str::from_utf8(value) else { return false };
    let (host, port) = if text.starts_with('[') {
        match text.find(']') {
            Some(end) => (&text[..=end], &text[end + 1..]),
            None => return false,
        }
    } else {
        match text.find(':') {
            Some(colon) => (&text[..colon], &text[colon..]),
            None => (text, ""),
        }
    };
    let port_ok = port.is_empty()
        || (port.len() >= 2 && port.len() <= 6 && port.starts_with(':') && port[1..].chars().all(|c| c.is_ascii_digit()));
    if !port_ok {
        return false;
    }
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return v6.parse::<std::net::Ipv6Addr>().is_ok();
    }
    if host.parse::<std::net::Ipv4Addr>().is_ok() {
        return true;
    }
    let name = host.to_ascii_lowercase();
    let name = name.strip_suffix('.').unwrap_or(&name);
    name == "localhost" || names.iter().any(|n| n.eq_ignore_ascii_case(name))
}
