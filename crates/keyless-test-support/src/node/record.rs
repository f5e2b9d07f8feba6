//! The record an app of the apps image writes with `aws loop FILE` (tests/go/aws): one JSON line
//! per credential request (`at`, `ok`, `error`), then `{"at": ..., "sigterm": true}` when SIGTERM
//! came. A pod's deletion must fail no request the app made before its own SIGTERM: keyless (the
//! native sidecar) stops only after the app.

use std::path::Path;
use std::time::{Duration, SystemTime};

use serde_json::Value;

use crate::clock::parse_rfc3339_utc;

/// Fewer requests than this before SIGTERM: the app hardly ran, and the record proves little.
const MIN_REQUESTS: usize = 10;

/// The record at `record`: the app got SIGTERM (a graceful stop, not a kill), made at least
/// [`MIN_REQUESTS`] requests before it, every one of them succeeded, and the last came less than
/// a second before SIGTERM (it was still asking when the deletion began). The number of requests
/// before SIGTERM, for the caller's message.
pub fn assert_no_request_failed_before_sigterm(record: &Path) -> usize {
    let shown = record.display();
    let text = std::fs::read_to_string(record).unwrap_or_else(|e| panic!("{shown}: {e}"));
    let lines: Vec<Value> =
        text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{shown}: {e}: {l}"))).collect();
    let sigterm = lines.iter().position(|l| l["sigterm"] == true);
    let sigterm = sigterm.unwrap_or_else(|| panic!("{shown}: the app never got SIGTERM (killed?):\n{text}"));
    let before = &lines[..sigterm];
    assert!(before.len() >= MIN_REQUESTS, "{shown}: the app made few requests ({}):\n{text}", before.len());
    let failed: Vec<&Value> = before.iter().filter(|l| l["ok"] != true).collect();
    assert!(failed.is_empty(), "{shown}: requests before the app's SIGTERM failed: {failed:#?}");
    let last = before.last().map(at).unwrap_or_else(|| panic!("{shown}: no request"));
    let gap = at(&lines[sigterm]).duration_since(last).unwrap_or_default();
    assert!(gap < Duration::from_secs(1), "{shown}: no request in the last second before SIGTERM ({gap:?})");
    before.len()
}

/// A line's `at`: RFC 3339 UTC with up to nine fractional digits (Go's `RFC3339Nano`).
fn at(line: &Value) -> SystemTime {
    let text = line["at"].as_str().unwrap_or_else(|| panic!("no time: {line}"));
    let text = text.strip_suffix('Z').unwrap_or_else(|| panic!("not UTC: {line}"));
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    let digits = format!("{fraction:0<9}");
    let nanos: u64 = digits.get(..9).and_then(|d| d.parse().ok()).unwrap_or_else(|| panic!("bad time: {line}"));
    parse_rfc3339_utc(&format!("{whole}Z")).unwrap_or_else(|| panic!("bad time: {line}")) + Duration::from_nanos(nanos)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn record(lines: &[String]) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), lines.join("\n") + "\n").unwrap();
        file
    }

    fn requests(from_ms: u64, count: u64, ok: bool) -> Vec<String> {
        (0..count)
            .map(|i| {
                let ms = from_ms + i * 100;
                format!(r#"{{"at":"2026-12-07T11:00:{:02}.{:03}5Z","ok":{ok}}}"#, ms / 1000, ms % 1000)
            })
            .collect()
    }

    #[test]
    fn a_record_with_every_request_before_sigterm_answered_passes() {
        let mut lines = requests(0, 20, true);
        lines.push(r#"{"at":"2026-12-07T11:00:02.3Z","sigterm":true}"#.into());
        // After SIGTERM the app may see failures: they do not count.
        lines.extend(requests(2400, 2, false));
        assert_eq!(assert_no_request_failed_before_sigterm(record(&lines).path()), 20);
    }

    #[test]
    fn a_failed_request_before_sigterm_or_a_missing_sigterm_or_a_quiet_end_fails() {
        let cases: [(Vec<String>, &str); 3] = [
            (
                [
                    requests(0, 10, true),
                    requests(1000, 1, false),
                    vec![r#"{"at":"2026-12-07T11:00:01.2Z","sigterm":true}"#.into()],
                ]
                .concat(),
                "requests before the app's SIGTERM failed",
            ),
            (requests(0, 20, true), "never got SIGTERM"),
            (
                [requests(0, 20, true), vec![r#"{"at":"2026-12-07T11:00:09Z","sigterm":true}"#.into()]].concat(),
                "no request in the last second",
            ),
        ];
        for (lines, expected) in cases {
            let file = record(&lines);
            let path = file.path().to_owned();
            let failure = std::panic::catch_unwind(|| assert_no_request_failed_before_sigterm(&path)).unwrap_err();
            let message = failure.downcast_ref::<String>().unwrap();
            assert!(message.contains(expected), "{message}");
        }
    }
}
