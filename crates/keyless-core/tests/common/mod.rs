//! Test helpers: unsigned JWTs and a faithful simulation of the kubelet's AtomicWriter.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::Path;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// A JWT-shaped token with the given `sub` and `exp` (the signature is not checked by keyless).
pub fn jwt(sub: &str, exp: SystemTime) -> String {
    let exp = exp.duration_since(SystemTime::UNIX_EPOCH).unwrap_or(Duration::ZERO).as_secs();
    let enc = |s: &str| URL_SAFE_NO_PAD.encode(s);
    format!(
        "{}.{}.{}",
        enc(r#"{"alg":"RS256","kid":"test"}"#),
        enc(&format!(
            r#"{{"iss":"https://kubernetes.default.svc","sub":"{sub}","aud":["sts.amazonaws.com"],"exp":{exp}}}"#
        )),
        enc("signature")
    )
}

/// Writes `payload` as `dir/token` exactly as the kubelet's AtomicWriter does
/// (protocols.md section 1): timestamped dir, payload, `token -> ..data/token` if missing,
/// `..data_tmp -> timestamped dir`, rename over `..data`, remove the old timestamped dir.
pub fn atomic_write(dir: &Path, payload: &str, generation: u64) {
    use std::os::unix::fs::symlink;
    let ts = format!("..2026_11_22_13_41_07.{generation:09}");
    let ts_dir = dir.join(&ts);
    std::fs::create_dir(&ts_dir).unwrap();
    std::fs::write(ts_dir.join("token"), payload).unwrap();
    let user_visible = dir.join("token");
    if std::fs::symlink_metadata(&user_visible).is_err() {
        symlink("..data/token", &user_visible).unwrap();
    }
    let old = std::fs::read_link(dir.join("..data")).ok();
    symlink(&ts, dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    if let Some(old) = old {
        std::fs::remove_dir_all(dir.join(old)).unwrap();
    }
}

/// Overwrites what `token` resolves to, in place (a broken or hand-edited file).
pub fn overwrite(dir: &Path, content: &str) {
    std::fs::write(dir.join("token"), content).unwrap();
}

/// Captures what keyless logs on this thread (a `#[tokio::test]` runs its spawned tasks on its own
/// thread) at every level, in the text format. One global subscriber for the whole test binary:
/// per-test `set_default` subscribers race on tracing's global callsite cache when tests run in
/// parallel, and a callsite first hit elsewhere could stay disabled for this test.
pub fn capture_logs() -> LogCapture {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(|| ThreadBuffer)
            .with_ansi(false)
            .finish();
        tracing::subscriber::set_global_default(subscriber).unwrap();
    });
    CAPTURED.with_borrow_mut(Vec::clear);
    LogCapture
}

thread_local! {
    static CAPTURED: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// This thread's captured log text.
pub struct LogCapture;

impl LogCapture {
    pub fn text(&self) -> String {
        CAPTURED.with_borrow(|bytes| String::from_utf8_lossy(bytes).into_owned())
    }
}

struct ThreadBuffer;

impl std::io::Write for ThreadBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        CAPTURED.with_borrow_mut(|bytes| bytes.extend_from_slice(buf));
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
