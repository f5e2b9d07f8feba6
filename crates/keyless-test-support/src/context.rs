//! The [`Context`] an adapter is started with, and the cache policies tests use.

use std::sync::Arc;
use std::time::Duration;

use keyless_core::clock::{Clock as _, SystemClock, TokioClock};
use keyless_core::{CachePolicy, Context, Metrics, WatchOptions};

/// A context on the real clock.
pub fn context(policy: CachePolicy) -> Context {
    Context::new(Arc::new(SystemClock), Metrics::new(), policy, WatchOptions::default())
}

/// A context whose wall time follows tokio's clock (for `#[tokio::test(start_paused = true)]`):
/// keyless then sees refreshes, retries and expiries at virtual times, while the emulator, which
/// issues and checks credentials by real time, keeps running on the same runtime.
pub fn paused_context(policy: CachePolicy) -> Context {
    Context::new(Arc::new(TokioClock::new(SystemClock.now())), Metrics::new(), policy, WatchOptions::default())
}

/// Quick retries (20 to 200 ms, after a throttle too), so failure stories finish in moments.
pub fn fast_retries() -> CachePolicy {
    CachePolicy {
        retry_min: Duration::from_millis(20),
        retry_max: Duration::from_millis(200),
        throttle_retry: Duration::from_millis(200),
        ..CachePolicy::default()
    }
}

/// `policy` with requests that wait as long as an exchange takes: on the paused clock a jump of
/// virtual time must not turn a waiting request into a timeout.
pub fn patient(policy: CachePolicy) -> CachePolicy {
    CachePolicy { request_wait: Duration::from_secs(600), ..policy }
}
