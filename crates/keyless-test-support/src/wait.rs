//! Waiting on a condition, bounded: for readiness of processes, files and endpoints. A deadline,
//! never a sleep that hopes something happened meanwhile.

use std::time::Duration;

/// How long start-up and readiness may take before a test fails.
pub const STARTUP_DEADLINE: Duration = Duration::from_secs(60);

/// Waits for `condition` to hold, checking every 20 ms until `deadline`; panics naming `what`.
///
/// On tokio's paused clock the checks and the deadline are virtual time: the condition must then
/// depend on what the runtime drives (its timers, its own tasks), not on other processes.
pub async fn wait_until<F, Fut>(what: &str, deadline: Duration, condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    assert!(holds_within(deadline, condition).await, "timed out after {deadline:?} waiting for {what}");
}

/// Whether `condition` came to hold within `deadline` (checked every 20 ms, as [`wait_until`]):
/// for a caller whose failure must say more than what it waited for (a component's log).
pub async fn holds_within<F, Fut>(deadline: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let give_up = tokio::time::Instant::now() + deadline;
    loop {
        if condition().await {
            return true;
        }
        if tokio::time::Instant::now() >= give_up {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
