//! The metadata tree under `/computeMetadata/v1/`: directories, values, and the two token
//! endpoints, with GCE's three renderings (listing, `recursive=true` JSON, `alt=text`).

use serde_json::{Map, Value as Json};

/// A value leaf, rendered as text or (with `alt=json` / `recursive=true`) JSON.
#[derive(Debug, Clone)]
pub(crate) enum Value {
    Text(String),
    Number(u64),
    /// Newline-separated as text (`scopes`, `aliases`), an array as JSON.
    Lines(Vec<String>),
}

impl Value {
    pub(crate) fn text(&self) -> String {
        match self {
            Self::Text(s) => s.clone(),
            Self::Number(n) => n.to_string(),
            Self::Lines(lines) => lines.iter().map(|l| format!("{l}\n")).collect(),
        }
    }

    pub(crate) fn json(&self) -> Json {
        match self {
            Self::Text(s) => Json::from(s.as_str()),
            Self::Number(n) => Json::from(*n),
            Self::Lines(lines) => Json::from(lines.clone()),
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) enum Node {
    /// Children sorted by name. `literal_keys`: recursive JSON keeps the names (service-account
    /// names and e-mails) instead of camel-casing them.
    Dir {
        children: Vec<(String, Node)>,
        literal_keys: bool,
    },
    Value(Value),
    /// `.../token`: an access token for the service account (its index among the server's).
    Token(usize),
    /// `.../identity`: an ID token for the service account (its index among the server's).
    Identity(usize),
}

impl Node {
    pub(crate) fn dir(children: Vec<(&str, Node)>) -> Self {
        Self::dir_with(children, false)
    }

    pub(crate) fn dir_with(children: Vec<(&str, Node)>, literal_keys: bool) -> Self {
        let mut children: Vec<(String, Node)> =
            children.into_iter().map(|(name, node)| (name.to_owned(), node)).collect();
        children.sort_by(|a, b| a.0.cmp(&b.0));
        Self::Dir { children, literal_keys }
    }

    /// The node at `segments` (none for an empty segment: no name is empty).
    pub(crate) fn lookup<S: AsRef<str>>(&self, segments: impl IntoIterator<Item = S>) -> Option<&Node> {
        segments.into_iter().try_fold(self, |node, name| match node {
            Node::Dir { children, .. } => children.iter().find(|(n, _)| n == name.as_ref()).map(|(_, c)| c),
            _ => None,
        })
    }

    /// The non-recursive listing: one name per line, directories with a trailing `/`.
    pub(crate) fn listing(&self) -> Vec<String> {
        match self {
            Node::Dir { children, .. } => children
                .iter()
                .map(|(name, child)| match child {
                    Node::Dir { .. } => format!("{name}/"),
                    _ => name.clone(),
                })
                .collect(),
            _ => Vec::new(),
        }
    }

    /// `recursive=true`: the subtree as JSON with camelCase keys; token endpoints are omitted.
    pub(crate) fn recursive_json(&self) -> Json {
        match self {
            Node::Dir { children, literal_keys } => {
                let mut map = Map::new();
                for (name, child) in children {
                    if matches!(child, Node::Token(_) | Node::Identity(_)) {
                        continue;
                    }
                    let key = if *literal_keys { name.clone() } else { camel_case(name) };
                    map.insert(key, child.recursive_json());
                }
                Json::Object(map)
            }
            Node::Value(v) => v.json(),
            Node::Token(_) | Node::Identity(_) => Json::Null,
        }
    }
}

/// `recursive=true&alt=text`: one `path value` line per leaf, list items as `path/N`.
pub(crate) fn flatten_text(json: &Json) -> String {
    fn walk(prefix: &str, json: &Json, out: &mut String) {
        let join = |key: &str| {
            if prefix.is_empty() { key.to_owned() } else { format!("{prefix}/{key}") }
        };
        match json {
            Json::Object(map) => map.iter().for_each(|(k, v)| walk(&join(k), v, out)),
            Json::Array(items) => items.iter().enumerate().for_each(|(i, v)| walk(&join(&i.to_string()), v, out)),
            Json::String(s) => out.push_str(&format!("{prefix} {s}\n")),
            other => out.push_str(&format!("{prefix} {other}\n")),
        }
    }
    let mut out = String::new();
    walk("", json, &mut out);
    out
}

/// `service-accounts` -> `serviceAccounts`, `numeric-project-id` -> `numericProjectId`.
fn camel_case(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = false;
    for c in name.chars() {
        if c == '-' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> Node {
        Node::dir(vec![
            (
                "project",
                Node::dir(vec![
                    ("numeric-project-id", Node::Value(Value::Number(42))),
                    ("project-id", Node::Value(Value::Text("p".to_owned()))),
                ]),
            ),
            (
                "accounts",
                Node::dir_with(
                    vec![(
                        "my-sa@p.iam.gserviceaccount.com",
                        Node::dir(vec![
                            ("scopes", Node::Value(Value::Lines(vec!["a".into(), "b".into()]))),
                            ("token", Node::Token(0)),
                        ]),
                    )],
                    true,
                ),
            ),
        ])
    }

    #[test]
    fn recursive_json_camel_cases_keys_except_literal_ones_and_skips_tokens() {
        assert_eq!(
            tree().recursive_json(),
            serde_json::json!({
                "accounts": {"my-sa@p.iam.gserviceaccount.com": {"scopes": ["a", "b"]}},
                "project": {"numericProjectId": 42, "projectId": "p"}
            })
        );
    }

    #[test]
    fn listings_mark_directories_and_text_flattens_paths() {
        assert_eq!(tree().listing(), ["accounts/", "project/"]);
        let project = tree().lookup(["project"]).map(Node::recursive_json).expect("project");
        assert!(tree().lookup(["project", ""]).is_none() && tree().lookup(["", "project"]).is_none());
        assert_eq!(flatten_text(&project), "numericProjectId 42\nprojectId p\n");
        let scopes = Value::Lines(vec!["a".into(), "b".into()]);
        assert_eq!(scopes.text(), "a\nb\n");
        assert_eq!(flatten_text(&serde_json::json!({"s": ["a"]})), "s/0 a\n");
    }
}
