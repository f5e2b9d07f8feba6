//! What the fuzz targets share: one tokio runtime for the whole process (libFuzzer calls a target
//! millions of times; a runtime per input would measure the runtime), contexts, and tokens.
#![forbid(unsafe_code)]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use keyless_core::clock::SystemClock;
use keyless_core::{CachePolicy, Context, Metrics, WatchOptions};

/// The process-wide runtime the targets block on.
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
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
