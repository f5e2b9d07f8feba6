//! Wall-clock access and the few time formats the clouds use.
//!
//! The emulator is a test double whose clock is real time: tokens it issues must be judged by the
//! same clock as the client's. Tests that need expired tokens mint them with past offsets instead
//! of moving the clock.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The emulator's one sanctioned wall-clock read.
#[allow(clippy::disallowed_methods)] // a test double serving real clients: its clock is real time
pub(crate) fn now() -> SystemTime {
    SystemTime::now()
}

/// Seconds since the Unix epoch (negative before it).
pub(crate) fn unix_secs(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

/// The instant `secs` seconds after the Unix epoch.
pub(crate) fn from_unix(secs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}

/// `2026-11-22T14:41:07Z`: UTC, whole seconds, uppercase `Z` (what AWS and Google return).
pub(crate) fn rfc3339_seconds(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Civil date and time (UTC) of a Unix timestamp: (year, month, day, hour, minute, second).
pub(crate) fn civil(secs: i64) -> (i64, u32, u32, u32, u32, u32) {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let as_u32 = |v: i64| u32::try_from(v).unwrap_or(0);
    (year, as_u32(month), as_u32(day), as_u32(rem / 3600), as_u32(rem % 3600 / 60), as_u32(rem % 60))
}

/// Unix timestamp of a civil date and time (UTC).
pub(crate) fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let m = i64::from(month);
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parses the SigV4 `X-Amz-Date` form `20150830T123600Z`.
pub(crate) fn parse_amz_date(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let digits = |r: std::ops::Range<usize>| -> Option<u32> {
        let part = s.get(r)?;
        if !part.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        part.parse().ok()
    };
    let (year, month, day) = (digits(0..4)?, digits(4..6)?, digits(6..8)?);
    let (hour, minute, second) = (digits(9..11)?, digits(11..13)?, digits(13..15)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let days = days_from_civil(i64::from(year), month, day);
    Some(from_unix(days * 86_400 + i64::from(hour) * 3600 + i64::from(minute) * 60 + i64::from(second)))
}

/// Formats a time the way SigV4 does: `20150830T123600Z`.
pub(crate) fn amz_date(t: SystemTime) -> String {
    let (y, mo, d, h, mi, s) = civil(unix_secs(t));
    format!("{y:04}{mo:02}{d:02}T{h:02}{mi:02}{s:02}Z")
}

/// Entra's timestamp form in error bodies: `2026-11-22 14:41:07Z`.
pub(crate) fn entra_timestamp(t: SystemTime) -> String {
    let (y, mo, d, h, mi, s) = civil(unix_secs(t));
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}Z")
}

/// The kubelet AtomicWriter's timestamped directory name: `..2026_11_22_13_41_07.123456789`.
pub(crate) fn atomic_writer_dir_name(t: SystemTime) -> String {
    let (y, mo, d, h, mi, s) = civil(unix_secs(t));
    let nanos = t.duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    format!("..{y:04}_{mo:02}_{d:02}_{h:02}_{mi:02}_{s:02}.{nanos:09}")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn civil_round_trips_through_amz_date() {
        let t = from_unix(1_440_938_160); // 2015-08-30T12:36:00Z, the SigV4 docs' example
        assert_eq!(amz_date(t), "20150830T123600Z");
        assert_eq!(parse_amz_date("20150830T123600Z"), Some(t));
        assert_eq!(rfc3339_seconds(t), "2015-08-30T12:36:00Z");
        assert_eq!(entra_timestamp(t), "2015-08-30 12:36:00Z");
    }

    #[test]
    fn amz_date_rejects_other_forms() {
        for bad in ["2015-08-30T12:36:00Z", "20150830T123600", "20151330T123600Z", "2015083xT123600Z"] {
            assert_eq!(parse_amz_date(bad), None, "{bad}");
        }
    }

    #[test]
    fn atomic_writer_dir_name_has_nanoseconds() {
        let t = from_unix(1_795_354_867) + Duration::from_nanos(123_456_789);
        assert_eq!(atomic_writer_dir_name(t), "..2026_11_22_13_41_07.123456789");
    }
}
