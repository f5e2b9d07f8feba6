//! Metadata-server query strings, parsed tolerantly: Node's gcp-metadata sends the ID-token
//! `audience` without URL-encoding it (docs/protocols.md 3.3 traps), so an audience such as
//! `https://svc.example/path?x=1&y=2` arrives raw and must not be cut at its own `&`.

use std::borrow::Cow;

/// Parameters the metadata server knows. Inside a raw audience, only `&NAME=` of one of these
/// starts the next parameter.
const KNOWN: &[&str] =
    &["alt", "audience", "format", "last_etag", "licenses", "recursive", "scopes", "timeout_sec", "wait_for_change"];

#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Query {
    pairs: Vec<(String, String)>,
}

impl Query {
    pub(crate) fn parse(raw: Option<&str>) -> Self {
        let mut raw_pairs: Vec<(&str, String)> = Vec::new();
        for segment in raw.unwrap_or("").split('&') {
            let (name, value) = segment.split_once('=').unwrap_or((segment, ""));
            match raw_pairs.last_mut() {
                Some((last, audience)) if *last == "audience" && !KNOWN.contains(&name) => {
                    audience.push('&');
                    audience.push_str(segment);
                }
                _ if segment.is_empty() => {}
                _ => raw_pairs.push((name, value.to_owned())),
            }
        }
        let pairs = raw_pairs
            .into_iter()
            .map(|(name, value)| {
                let value = if name == "audience" && is_raw(&value) {
                    decode(&value)
                } else {
                    decode(&value.replace('+', " "))
                };
                (decode(name), value)
            })
            .collect();
        Self { pairs }
    }

    /// The first value of `name`.
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.pairs.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// Every value of `name` (`scopes` may be repeated as well as comma-separated).
    pub(crate) fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.pairs.iter().filter(move |(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// `recursive=true` (any case, as GCE accepts).
    pub(crate) fn recursive(&self) -> bool {
        self.get("recursive").is_some_and(|v| v.eq_ignore_ascii_case("true"))
    }
}

/// `+` is a space in form encoding, but a raw audience URL (Node's) may hold a literal `+`.
///
/// Form encoding (Go's `url.Values`, Python's `urlencode`: docs/protocols.md 8) leaves only
/// `[A-Za-z0-9_.~-]` unescaped and writes a space as `+`; an audience holding any other byte (the
/// `:` and `/` of a URL) was sent raw. Node's raw audience does hold percent-escapes: the URL
/// parser escapes a space as `%20`, and a URL audience may carry its own. An audience of form
/// characters only is read as form-encoded when it holds a percent-escape, else as raw.
fn is_raw(audience: &str) -> bool {
    let form_escaped = |b: u8| !(b.is_ascii_alphanumeric() || b"_.~-%+".contains(&b));
    !audience.contains('%') || audience.bytes().any(form_escaped)
}

fn decode(s: &str) -> String {
    match percent_encoding::percent_decode_str(s).decode_utf8_lossy() {
        Cow::Borrowed(b) => b.to_owned(),
        Cow::Owned(o) => o,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_an_encoded_audience() {
        let q = Query::parse(Some("audience=https%3A%2F%2Fsvc.example%2Fa%3Fx%3D1%26y%3D2&format=full"));
        assert_eq!(q.get("audience"), Some("https://svc.example/a?x=1&y=2"));
        assert_eq!(q.get("format"), Some("full"));
    }

    #[test]
    fn keeps_a_raw_audience_whole_up_to_the_next_known_parameter() {
        let q = Query::parse(Some("audience=https://svc.example/a?x=1&y=2+3&format=full&licenses=TRUE"));
        assert_eq!(q.get("audience"), Some("https://svc.example/a?x=1&y=2+3"));
        assert_eq!(q.get("format"), Some("full"));
        assert_eq!(q.get("licenses"), Some("TRUE"));
    }

    #[test]
    fn reads_a_plus_in_a_form_encoded_audience_as_a_space_and_an_encoded_plus_as_a_plus() {
        // As Go's idtoken sends `https://example.com/run?service=a b&v=1` and `...?x=a+b`.
        let q = Query::parse(Some("audience=https%3A%2F%2Fexample.com%2Frun%3Fservice%3Da+b%26v%3D1&format=full"));
        assert_eq!(q.get("audience"), Some("https://example.com/run?service=a b&v=1"));
        let q = Query::parse(Some("audience=https%3A%2F%2Fexample.com%2F%3Fx%3Da%2Bb&format=full"));
        assert_eq!(q.get("audience"), Some("https://example.com/?x=a+b"));
    }

    #[test]
    fn keeps_a_plus_literal_in_a_raw_audience_that_holds_percent_escapes() {
        // Node's `?format=full&audience=${audience}` for `https://svc.example/run?q=a b+c`: its URL
        // parser escapes the space, not the `+`.
        let q = Query::parse(Some("format=full&audience=https://svc.example/run?q=a%20b+c"));
        assert_eq!(q.get("audience"), Some("https://svc.example/run?q=a b+c"));
        let q = Query::parse(Some("format=full&audience=https://svc.example/a%2Fb?x=1+2"));
        assert_eq!(q.get("audience"), Some("https://svc.example/a/b?x=1+2"));
    }

    #[test]
    fn reads_repeated_and_encoded_scopes() {
        let q = Query::parse(Some("scopes=a%2Cb&scopes=c&recursive=TRUE"));
        assert_eq!(q.all("scopes").collect::<Vec<_>>(), ["a,b", "c"]);
        assert!(q.recursive());
        assert_eq!(Query::parse(None), Query::default());
    }
}
