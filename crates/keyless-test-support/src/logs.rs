//! What keyless logs in-process, captured at every level in the text format, and the check that no
//! secret appears in a log.
//!
//! One global subscriber per test binary: per-test `set_default` subscribers race on tracing's
//! global callsite cache when tests run in parallel (a callsite first hit elsewhere could stay
//! disabled for this test). It writes each line twice: to the writing thread's buffer (a
//! current-thread `#[tokio::test]` runs its spawned tasks on its own thread, so that is the test's
//! own log) and to one buffer for the whole process (logs of any thread, other tests included).

use std::cell::RefCell;
use std::sync::{Mutex, Once, PoisonError};

static ALL_THREADS: Mutex<Vec<u8>> = Mutex::new(Vec::new());

thread_local! {
    static THIS_THREAD: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Starts capturing: this thread's buffer is emptied, the process's is marked.
pub fn capture_logs() -> LogCapture {
    static INSTALLED: Once = Once::new();
    INSTALLED.call_once(|| {
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(|| Tee)
            .with_ansi(false)
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("no other global subscriber");
    });
    THIS_THREAD.with_borrow_mut(Vec::clear);
    LogCapture { all_threads_from: ALL_THREADS.lock().unwrap_or_else(PoisonError::into_inner).len() }
}

/// Logs captured since [`capture_logs`].
#[derive(Debug)]
pub struct LogCapture {
    all_threads_from: usize,
}

impl LogCapture {
    /// What this thread logged: the test's own lines (a current-thread runtime's).
    pub fn text(&self) -> String {
        THIS_THREAD.with_borrow(|bytes| String::from_utf8_lossy(bytes).into_owned())
    }

    /// What every thread logged (worker threads, blocking threads, other tests): what a search for
    /// secrets must cover.
    pub fn all_threads(&self) -> String {
        let all = ALL_THREADS.lock().unwrap_or_else(PoisonError::into_inner);
        String::from_utf8_lossy(&all[self.all_threads_from..]).into_owned()
    }
}

struct Tee;

impl std::io::Write for Tee {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        THIS_THREAD.with_borrow_mut(|bytes| bytes.extend_from_slice(buf));
        ALL_THREADS.lock().unwrap_or_else(PoisonError::into_inner).extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Fails if `secret`, or any recognisable part of it, appears in `text` (`what` names the text):
/// the whole, a 16-character window from its middle, its last 20 characters (a JWT's signature
/// alone identifies it) and, for a JWT, its payload and its signature on their own.
pub fn assert_no_secret(text: &str, secret: &str, what: &str) {
    assert!(secret.len() >= 16, "too short to be a meaningful secret: {} chars", secret.len());
    let middle = secret.len() / 2;
    let mut parts = vec![secret, &secret[middle - 8..middle + 8], &secret[secret.len().saturating_sub(20)..]];
    let segments: Vec<&str> = secret.split('.').collect();
    if segments.len() == 3 {
        parts.extend(segments[1..].iter().filter(|s| s.len() >= 16));
    }
    for part in parts {
        assert!(!text.contains(part), "a secret ({}...) appears in {what}", &secret[..4]);
    }
}

/// [`assert_no_secret`] for each of `secrets`.
pub fn assert_holds_no_secret(text: &str, secrets: &[String], what: &str) {
    for secret in secrets {
        assert_no_secret(text, secret, what);
    }
}
