//! Credential bodies rendered once per credential. A cached credential is served unchanged for
//! its whole life, thousands of times a second on a busy pod: rendering it per request (escaping
//! a 1-2 KB token into JSON) was a fifth of a request's cost (docs/benchmarks.md).
//!
//! Both types live inside the cached credential, so a body lives and dies with its credential.
//! They are derived data: a clone starts empty, equality ignores them, `Debug` never shows them
//! (a body holds the token).

use std::fmt;
use std::io::Write as _;
use std::sync::{OnceLock, PoisonError, RwLock};

use bytes::Bytes;

/// A body that never changes for its credential.
#[derive(Default)]
pub struct Rendered(OnceLock<Bytes>);

impl Rendered {
    /// The body, rendered by `render` on first use.
    pub fn get_or_render(&self, render: impl FnOnce() -> Vec<u8>) -> Bytes {
        self.0.get_or_init(|| Bytes::from(render())).clone()
    }
}

/// A body with `N` whole-second countdowns (`expires_in`...) in it: the text around them is
/// rendered once, and the last body is served again while its countdowns are unchanged (they
/// change once a second), so a busy client shares bytes instead of getting a new body each time.
pub struct Countdowns<const N: usize> {
    /// The `N + 1` pieces of text between the countdowns.
    pieces: OnceLock<Vec<Vec<u8>>>,
    latest: RwLock<Option<([u64; N], Bytes)>>,
}

impl<const N: usize> Default for Countdowns<N> {
    fn default() -> Self {
        Self { pieces: OnceLock::new(), latest: RwLock::new(None) }
    }
}

impl<const N: usize> Countdowns<N> {
    /// The body for `values`. `pieces` renders the `N + 1` texts around the countdowns (called
    /// once); a countdown is written in decimal.
    pub fn get_or_render(&self, values: [u64; N], pieces: impl FnOnce() -> Vec<Vec<u8>>) -> Bytes {
        if let Some((seen, body)) = self.latest.read().unwrap_or_else(PoisonError::into_inner).as_ref()
            && *seen == values
        {
            return body.clone();
        }
        let pieces = self.pieces.get_or_init(pieces);
        let len = pieces.iter().map(Vec::len).sum::<usize>() + values.iter().map(|v| digits(*v)).sum::<usize>();
        // Exactly the body's length: the response takes the buffer without copying it.
        let mut body = Vec::with_capacity(len);
        for (i, piece) in pieces.iter().enumerate() {
            body.extend_from_slice(piece);
            if let Some(value) = values.get(i) {
                let _ = write!(body, "{value}");
            }
        }
        let body = Bytes::from(body);
        *self.latest.write().unwrap_or_else(PoisonError::into_inner) = Some((values, body.clone()));
        body
    }
}

fn digits(n: u64) -> usize {
    n.checked_ilog10().map_or(1, |d| d as usize + 1)
}

/// `s` as a JSON string literal, quotes included.
pub fn json_string(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

macro_rules! derived_data {
    ($($ty:ty),*) => {$(
        impl Clone for $ty {
            fn clone(&self) -> Self {
                Self::default()
            }
        }
        impl PartialEq for $ty {
            fn eq(&self, _: &Self) -> bool {
                true
            }
        }
        impl Eq for $ty {}
        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("(rendered body)")
            }
        }
    )*};
}

derived_data!(Rendered);

impl<const N: usize> Clone for Countdowns<N> {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl<const N: usize> PartialEq for Countdowns<N> {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl<const N: usize> Eq for Countdowns<N> {}

impl<const N: usize> fmt::Debug for Countdowns<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("(rendered body)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_countdown_body_is_rendered_exactly_and_reused_while_unchanged() {
        let body = Countdowns::<2>::default();
        let pieces = || vec![b"{\"a\":".to_vec(), b",\"b\":\"".to_vec(), b"\"}".to_vec()];
        for (a, b) in [(0, 9), (3599, 7199), (10, 100)] {
            let first = body.get_or_render([a, b], pieces);
            assert_eq!(first, Bytes::from(format!("{{\"a\":{a},\"b\":\"{b}\"}}")));
            assert_eq!(body.get_or_render([a, b], || unreachable!()).as_ptr(), first.as_ptr(), "the same bytes");
        }
    }

    #[test]
    fn a_fixed_body_is_rendered_once() {
        let body = Rendered::default();
        let first = body.get_or_render(|| b"x".to_vec());
        assert_eq!(body.get_or_render(|| unreachable!()).as_ptr(), first.as_ptr());
        assert_eq!(format!("{body:?}"), "(rendered body)");
        assert_eq!(format!("{:?}", body.clone()), "(rendered body)");
    }

    #[test]
    fn json_strings_escape_quotes_backslashes_and_controls() {
        for s in ["plain", "q\"b\\s", "nl\nesc\u{1b}", "é✓"] {
            let back: String = serde_json::from_str(&json_string(s)).expect("a JSON string");
            assert_eq!(back, s);
        }
    }
}
