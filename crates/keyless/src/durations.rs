//! Durations given on the command line, bounded where they are parsed: a value beyond what the
//! timers can add to "now" (`--ready-timeout 400000000000y`) would abort the process, and a zero
//! interval (`--tls-reload-interval 0s`) would panic tokio's interval.

use std::time::Duration;

/// A humantime duration within `min..=max`, or an error naming the range.
fn within(text: &str, min: Duration, max: Duration) -> Result<Duration, String> {
    let value = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if value < min || value > max {
        return Err(format!(
            "must be between {} and {}",
            humantime::format_duration(min),
            humantime::format_duration(max)
        ));
    }
    Ok(value)
}

/// `keyless exec --ready-timeout`, `keyless token --ready-timeout`: up to a day.
pub fn ready_timeout(text: &str) -> Result<Duration, String> {
    within(text, Duration::ZERO, crate::exec::MAX_READY_TIMEOUT)
}

/// `keyless probe --timeout`: up to an hour.
pub fn probe_timeout(text: &str) -> Result<Duration, String> {
    within(text, Duration::from_millis(1), Duration::from_secs(3600))
}

/// `keyless webhook --tls-reload-interval`: 100 ms (the rotation tests reload every 200 ms) to a
/// day; `0s` would spin the reload loop.
#[cfg(feature = "webhook")]
pub fn reload_interval(text: &str) -> Result<Duration, String> {
    within(text, Duration::from_millis(100), Duration::from_secs(24 * 3600))
}

/// `keyless emulate --credential-lifetime`: up to a day (its lower bound is checked with a
/// message of its own). The subcommand exists in every build (without the emulator it says so).
pub fn credential_lifetime(text: &str) -> Result<Duration, String> {
    within(text, Duration::ZERO, Duration::from_secs(24 * 3600))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absurd_and_zero_durations_are_refused_with_the_range() {
        assert!(ready_timeout("400000000000y").expect_err("too long").contains("between 0s and 1day"));
        assert_eq!(ready_timeout("90s"), Ok(Duration::from_secs(90)));
        assert!(ready_timeout("soon").is_err());
        assert!(probe_timeout("0s").is_err());
    }
}
