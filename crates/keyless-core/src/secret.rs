//! `Secret`: a value that cannot be printed, logged or serialized by accident.

use std::fmt;

use subtle::ConstantTimeEq;

/// Holds a token, key or password. `Debug` and `Display` print `<redacted>`; there is no
/// `Serialize` impl, so a secret reaches a response body or a file only through an explicit
/// [`Secret::expose`] at the place that means to send it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    pub fn new(value: T) -> Self {
        Self(value)
    }

    /// The secret value. Call this only where the value is meant to leave the process
    /// (a response body, an upstream request), never to format it into a message.
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T: AsRef<[u8]>> Secret<T> {
    /// Compares `candidate` with the secret in constant time (for request authorization headers).
    pub fn matches(&self, candidate: &[u8]) -> bool {
        let ours = self.0.as_ref();
        // The length is not secret (it is fixed by the generator); the bytes are.
        ours.len() == candidate.len() && bool::from(ours.ct_eq(candidate))
    }
}

impl<T> From<T> for Secret<T> {
    fn from(value: T) -> Self {
        Self(value)
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl<T> fmt::Display for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_never_show_the_value() {
        let s = Secret::new("hunter2-token".to_owned());
        assert!(!format!("{s:?}").contains("hunter2"));
        assert!(!format!("{s}").contains("hunter2"));
        assert!(!format!("{:?}", Some(&s)).contains("hunter2"));
    }

    #[test]
    fn matches_compares_whole_values() {
        let s = Secret::new("abc".to_owned());
        assert!(s.matches(b"abc"));
        assert!(!s.matches(b"ab"));
        assert!(!s.matches(b"abd"));
        assert!(!s.matches(b"abcd"));
    }
}
