//! Time as the rest of keyless sees it. Wall-clock reads are banned elsewhere (`clippy.toml`) so
//! that expiry and refresh logic can run under tokio's paused clock in tests.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// The current wall-clock time (credential expiries are wall-clock instants set by the clouds).
pub trait Clock: Debug + Send + Sync + 'static {
    fn now(&self) -> SystemTime;
}

pub type SharedClock = Arc<dyn Clock>;

/// The real clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[allow(clippy::disallowed_methods)] // the one sanctioned wall-clock read
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// Wall time driven by tokio's clock: a fixed wall-clock anchor plus the tokio time elapsed since.
/// Under `tokio::time::pause()` it advances only with `tokio::time::advance` or auto-advance, so
/// tests of expiry and refresh run without sleeping.
#[derive(Debug, Clone)]
pub struct TokioClock {
    anchor_wall: SystemTime,
    anchor: tokio::time::Instant,
}

impl TokioClock {
    pub fn new(anchor_wall: SystemTime) -> Self {
        Self { anchor_wall, anchor: tokio::time::Instant::now() }
    }
}

impl Clock for TokioClock {
    fn now(&self) -> SystemTime {
        self.anchor_wall + self.anchor.elapsed()
    }
}

/// How long until `at`, or zero if it has passed.
pub fn until(clock: &dyn Clock, at: SystemTime) -> Duration {
    at.duration_since(clock.now()).unwrap_or(Duration::ZERO)
}

/// The tokio instant at which `clock` will read `at` (now, if `at` has passed).
pub fn instant_at(clock: &dyn Clock, at: SystemTime) -> tokio::time::Instant {
    tokio::time::Instant::now() + until(clock, at)
}

/// Seconds since the Unix epoch, for metrics and wire formats.
pub fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn tokio_clock_follows_paused_time() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let clock = TokioClock::new(start);
        assert_eq!(clock.now(), start);
        tokio::time::advance(Duration::from_secs(90)).await;
        assert_eq!(clock.now(), start + Duration::from_secs(90));
        assert_eq!(until(&clock, start + Duration::from_secs(100)), Duration::from_secs(10));
        assert_eq!(until(&clock, start), Duration::ZERO);
    }
}
