//! Wall-clock time as clients see it: credential expiries are wall-clock instants, in the clouds'
//! formats.

use std::time::{Duration, SystemTime};

/// The test's wall clock (keyless's own reads go through `keyless_core::clock`).
#[allow(clippy::disallowed_methods)] // comparing with the expiries the clouds and keyless serve
pub fn wall_clock() -> SystemTime {
    SystemTime::now()
}

/// `YYYY-MM-DDTHH:MM:SSZ` exactly: the AWS `Expiration` format (botocore's IMDS path accepts no
/// fractional seconds).
pub fn is_whole_second_utc(value: &str) -> bool {
    let b = value.as_bytes();
    let digit = |i: usize| b[i].is_ascii_digit();
    b.len() == 20
        && [0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18].into_iter().all(digit)
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && b[19] == b'Z'
}

/// `YYYY-MM-DDTHH:MM:SSZ` as a wall-clock instant.
pub fn parse_rfc3339_utc(text: &str) -> Option<SystemTime> {
    if !is_whole_second_utc(text) {
        return None;
    }
    let num = |r: std::ops::Range<usize>| text.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    // Howard Hinnant's days_from_civil.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = u64::try_from(days * 86_400 + hh * 3600 + mm * 60 + ss).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_aws_expiration_format_and_nothing_else() {
        let t = parse_rfc3339_utc("2026-03-01T12:34:56Z").unwrap();
        assert_eq!(t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs(), 1_772_368_496);
        for bad in ["2026-03-01T12:34:56.5Z", "2026-03-01 12:34:56Z", "2026-03-01T12:34:56+00:00", ""] {
            assert!(parse_rfc3339_utc(bad).is_none(), "{bad}");
        }
    }
}
