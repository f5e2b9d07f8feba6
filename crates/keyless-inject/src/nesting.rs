//! The flow-collection depth of YAML text, bounded from above before the YAML parser sees it.
//!
//! The parser (libyaml, through yaml_serde) spends time quadratic in the depth of `[` / `{` before
//! its own depth limit stops it, so the depth is checked first, by a scan that must never see less
//! nesting than the parser will. Brackets inside quoted scalars and comments are not nesting, but
//! a scan that merely guesses where those start can be led to skip real brackets (a `"` inside a
//! plain scalar such as `x-"`, a comment ended by a lone `\r`, a `#` after a non-breaking space).
//! So the scan follows every reading the parser could have: the states it may be in (structure,
//! double-quoted, single-quoted, comment), forking where a quote or a `#` may or may not start
//! one, each reading counting its own depth, readings that reach the same state keeping the deeper
//! count. The deepest count is then never below the parser's depth; on ordinary manifests the
//! readings meet again at the next closing quote with the same count.

/// The states the parser may be in, as indices.
const STRUCTURE: usize = 0;
const DOUBLE: usize = 1;
/// Inside a double-quoted scalar, just after a `\`.
const DOUBLE_ESCAPE: usize = 2;
const SINGLE: usize = 3;
/// Inside a single-quoted scalar, just after a `'`: a second one is an escaped quote, anything
/// else means the scalar ended.
const SINGLE_QUOTE: usize = 4;
const COMMENT: usize = 5;

/// The depth of each reading, by state (`None`: no reading is in it).
type Readings = [Option<usize>; 6];

fn enter(readings: &mut Readings, state: usize, depth: usize) {
    readings[state] = Some(readings[state].map_or(depth, |d| d.max(depth)));
}

/// The deepest flow-collection nesting of `input` any reading gives; stops counting past `limit`.
pub(crate) fn flow_depth(input: &str, limit: usize) -> usize {
    let mut readings: Readings = [Some(0), None, None, None, None, None];
    let mut deepest = 0;
    // The start of the input is the start of a line.
    let mut previous = '\n';
    for (at, c) in input.char_indices() {
        if is_break(previous) && starts_a_document(&input[at..]) {
            // Whatever the reading, a new document starts here at depth 0, or the parser stops
            // (inside a quoted scalar or a flow collection): what one document's strings made a
            // reading count does not add up over a stream of documents.
            readings = [Some(0), None, None, None, None, None];
        }
        let mut next: Readings = [None; 6];
        for (state, depth) in readings.iter().enumerate() {
            let Some(depth) = *depth else { continue };
            match state {
                // A `'` after a closing one is an escaped quote; anything else is read as structure.
                SINGLE_QUOTE if c == '\'' => enter(&mut next, SINGLE, depth),
                STRUCTURE | SINGLE_QUOTE => {
                    let depth = match c {
                        '[' | '{' => depth + 1,
                        ']' | '}' => depth.saturating_sub(1),
                        _ => depth,
                    };
                    deepest = deepest.max(depth);
                    if deepest > limit {
                        return deepest;
                    }
                    let (to, or) = match c {
                        '#' if is_blank_or_break(previous) => (COMMENT, None),
                        '#' if may_start_after(previous) || matches!(previous, ']' | '}' | '"' | '\'') => {
                            (STRUCTURE, Some(COMMENT))
                        }
                        '"' if may_start_after(previous) || is_blank_or_break(previous) => (STRUCTURE, Some(DOUBLE)),
                        '\'' if may_start_after(previous) || is_blank_or_break(previous) => (STRUCTURE, Some(SINGLE)),
                        _ => (STRUCTURE, None),
                    };
                    enter(&mut next, to, depth);
                    if let Some(or) = or {
                        enter(&mut next, or, depth);
                    }
                }
                DOUBLE => {
                    let to = match c {
                        '\\' => DOUBLE_ESCAPE,
                        '"' => STRUCTURE,
                        _ => DOUBLE,
                    };
                    enter(&mut next, to, depth);
                }
                DOUBLE_ESCAPE => enter(&mut next, DOUBLE, depth),
                SINGLE => enter(&mut next, if c == '\'' { SINGLE_QUOTE } else { SINGLE }, depth),
                _ => enter(&mut next, if is_break(c) { STRUCTURE } else { COMMENT }, depth),
            }
        }
        readings = next;
        previous = c;
    }
    deepest
}

/// `---` or `...` at the start of a line, then a blank, a break or the end: a document marker
/// (inside a block scalar too, whose text is indented at least one column).
fn starts_a_document(rest: &str) -> bool {
    (rest.starts_with("---") || rest.starts_with("...")) && rest[3..].chars().next().is_none_or(is_blank_or_break)
}

/// libyaml's line breaks (`IS_BREAK`): a comment ends at any of them, not only at `\n`.
fn is_break(c: char) -> bool {
    matches!(c, '\n' | '\r' | '\u{85}' | '\u{2028}' | '\u{2029}')
}

/// What certainly separates tokens: a `#` after it starts a comment (or, inside a block scalar,
/// text to the end of the line, as harmless to skip). Only space and tab are blanks to YAML (not
/// a non-breaking space).
fn is_blank_or_break(c: char) -> bool {
    matches!(c, ' ' | '\t') || is_break(c)
}

/// A character a token may end with and a scalar begin right after: `[`, `{`, `,`, and `:` and
/// `?` (indicators in a flow collection), the byte order mark. Elsewhere (a plain scalar) they are
/// text, so a quote or `#` after them may or may not start anything. A scalar right after a
/// closing `]`, `}` or quote is an error the parser stops at there and then, so a quote there
/// starts nothing worth following (a `#` there does start a comment).
fn may_start_after(c: char) -> bool {
    matches!(c, '[' | '{' | ',' | ':' | '?' | '\u{feff}')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deep(n: usize) -> String {
        format!("{}{}", "[".repeat(n), "]".repeat(n))
    }

    /// Each of these hides 200 levels from a scan that guesses where quotes and comments start;
    /// the parser sees every level.
    #[test]
    fn nesting_behind_what_only_looks_like_a_quote_or_a_comment_is_counted() {
        let hidden = [
            // A `"` inside a plain scalar, and the "closing" one after the brackets.
            format!("a: x-\"\nb: {}\nc: y-\"\n", deep(200)),
            format!("a: (it)'s\nb: {}\nc: y-'\n", deep(200)),
            // A `"` in a literal block scalar is text.
            format!("a: |\n  echo \"\nb: {}\nc: |\n  \"\n", deep(200)),
            // A multi-line plain scalar continued by a line starting with `"`.
            format!("a: x\n  \"y\nb: {}\nc: \"\n", deep(200)),
            // libyaml ends a comment at a lone `\r` (and at U+0085, U+2028, U+2029).
            format!("# note\r{}\n", deep(200)),
            format!("# note\u{2028}{}\n", deep(200)),
            // A non-breaking space is no blank: `x\u{a0}#y` is a plain scalar (a key here).
            format!("x\u{a0}#y: {}\n", deep(200)),
            // libyaml takes `#` right after `[` for a comment: closers after it are not closers.
            "[#]\n".repeat(200),
        ];
        for text in hidden {
            assert!(flow_depth(&text, 100) > 100, "{text:?}");
        }
    }

    /// What manifests hold: JSON in annotations and block scalars (a Grafana dashboard's
    /// `"${datasource}"`), commands, regular expressions, empty strings, prose with apostrophes,
    /// comments. A reading inside a string may count its brackets, and an unbalanced one in a
    /// string stays counted to the end of the document; a stream of 500 such documents counts as one.
    #[test]
    fn brackets_in_strings_and_comments_do_not_add_up() {
        let json = r#"{"metadata":{"annotations":{"x":"","y":"/","uid":"${datasource}","legend":"{{pod}}"}},"spec":{"containers":[{"args":["--flag=","-c","echo \"[\"","rate(x[5m])"],"env":[{"name":"A","value":"a-"}]}]}}"#;
        let text = format!(
            "  kubectl.kubernetes.io/last-applied-configuration: |\n    {json}\n  note: 'it''s [x]' # ok [\n  \
             re: \"^[a-z]+$\"\n  cmd: [\"sh\", \"-c\", \"test -f x && [ -d y ]\"]\n  e: \"\"\n  f: [a, \"\"]\n  \
             g: \"[[[[\" # [[[[\n  h: '[[''[['\n  i: [x, {{y: z}}]\n  j: it's [1]\n  k: \"\\\"[[\"\n"
        );
        let once = flow_depth(&text, 100);
        assert!(once <= 12, "{once}");
        let document = format!("metadata:\n  annotations:\n{text}");
        assert_eq!(flow_depth(&[document.as_str(); 500].join("---\n"), 100), once);
    }
}
