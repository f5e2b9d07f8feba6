//! Text from untrusted input (a token's claims), made safe to print.
//!
//! A claim reaches log lines, error hints and `keyless check`'s report. Printed as is, a `sub` with
//! `\n` forges whole log lines in the text format, an ESC sequence rewrites the operator's terminal,
//! and a 50 KB `sub` is logged on every exchange attempt.

use std::borrow::Cow;
use std::fmt::Write as _;

/// `text` with every character that could forge a line or rewrite what a reader sees escaped, cut
/// after `max_bytes` bytes of output. Escaped: control characters (C0 including `\n`, `\r`, `\t`
/// and ESC; DEL; C1), the Unicode line and paragraph separators (some viewers break lines there)
/// and the bidirectional formatting characters (they reorder the text around them on screen).
/// Escapes are Rust's: `\n`, `\r`, `\t`, `\u{1b}`. A cut is marked `…(+N bytes)`, N counting the
/// original text left out. Returns `text` itself when nothing needs changing.
pub fn printable(text: &str, max_bytes: usize) -> Cow<'_, str> {
    if text.len() <= max_bytes && !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len().min(max_bytes) + 24);
    for (at, c) in text.char_indices() {
        let before = out.len();
        if needs_escape(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
        if out.len() > max_bytes {
            out.truncate(before);
            let _ = write!(out, "…(+{} bytes)", text.len() - at);
            break;
        }
    }
    Cow::Owned(out)
}

/// Longest text kept from a service's answer (an error's message, description, code or id): a
/// claim's cap, since the services quote claims back in their errors.
pub const MAX_UPSTREAM_TEXT_BYTES: usize = crate::token::MAX_CLAIM_BYTES;

/// Text from an upstream answer (a token service's error body, a token endpoint's reply), made
/// printable as a claim is. AWS STS and Google STS echo the token's `iss` and `aud` in their
/// messages: a token with a newline in `iss` would otherwise forge log and `/readyz` lines.
/// Applied where the error is built, so no later reader has to remember it.
pub fn upstream(text: &str) -> Cow<'_, str> {
    printable(text, MAX_UPSTREAM_TEXT_BYTES)
}

fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{061c}' | '\u{200e}' | '\u{200f}')
        || ('\u{202a}'..='\u{202e}').contains(&c)
        || ('\u{2066}'..='\u{2069}').contains(&c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_text_is_returned_as_is() {
        let sub = "system:serviceaccount:payments:api";
        assert!(matches!(printable(sub, 1024), Cow::Borrowed(s) if s == sub));
        assert_eq!(printable("répertoire/ü-ß \"quoted\" back\\slash", 1024), "répertoire/ü-ß \"quoted\" back\\slash");
    }

    #[test]
    fn line_breaks_escape_and_bidi_overrides_are_escaped() {
        assert_eq!(printable("a\nb\rc\td", 1024), r"a\nb\rc\td");
        assert_eq!(printable("red\u{1b}[31m", 1024), r"red\u{1b}[31m");
        assert_eq!(printable("del\u{7f} c1\u{85}", 1024), r"del\u{7f} c1\u{85}");
        assert_eq!(printable("a\u{2028}b\u{202e}c\u{2066}d", 1024), r"a\u{2028}b\u{202e}c\u{2066}d");
        assert!(!printable("x\ny\u{1b}", 1024).chars().any(char::is_control));
    }

    #[test]
    fn upstream_text_is_escaped_and_capped_like_a_claim() {
        let forged = "Incorrect token audience\nlevel=INFO msg=\"credential refreshed\"";
        assert_eq!(upstream(forged), r#"Incorrect token audience\nlevel=INFO msg="credential refreshed""#);
        let long = "x".repeat(5000);
        assert_eq!(upstream(&long), printable(&long, crate::token::MAX_CLAIM_BYTES));
    }

    #[test]
    fn long_text_is_cut_with_the_count_of_bytes_left_out() {
        let long = "a".repeat(5000);
        assert_eq!(printable(&long, 10), format!("aaaaaaaaaa…(+4990 bytes)"));
        assert_eq!(printable(&"a".repeat(10), 10), "aaaaaaaaaa");
    }

    #[test]
    fn a_cut_never_splits_a_character_or_an_escape() {
        // "é" is 2 bytes: 9 of them do not fit in 17 bytes, 8 do.
        assert_eq!(printable(&"é".repeat(9), 17), format!("{}…(+2 bytes)", "é".repeat(8)));
        // "\u{1b}" escapes to 6 bytes; the second does not fit in 10.
        assert_eq!(printable("\u{1b}\u{1b}", 10), r"\u{1b}…(+1 bytes)");
    }
}
