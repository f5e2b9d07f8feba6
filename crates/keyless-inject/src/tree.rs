//! The two shapes a pod reaches the injection in: a YAML value (`keyless inject`) and a JSON value
//! (the webhook's AdmissionReview). The injection reads either through [`Tree`] and says what to
//! change as [`Op`]s: applied in place to the YAML, or sent as the JSON Patch of the admission
//! response. So the webhook never copies the pod into another shape, and nothing diffs documents.

use yaml_serde::Value as Yaml;

/// Read access to a JSON or YAML value, as much as the injection needs.
pub trait Tree: Sized {
    fn get(&self, key: &str) -> Option<&Self>;
    fn as_str(&self) -> Option<&str>;
    fn as_list(&self) -> Option<&[Self]>;
    fn as_bool(&self) -> Option<bool>;
    fn as_i64(&self) -> Option<i64>;
    fn is_map(&self) -> bool;
    fn is_null(&self) -> bool;
    /// The entries of a mapping (`None` for the key of a non-string key), else `None`.
    fn entries(&self) -> Option<Vec<(Option<&str>, &Self)>>;
}

impl Tree for Yaml {
    fn get(&self, key: &str) -> Option<&Self> {
        Yaml::get(self, key)
    }
    fn as_str(&self) -> Option<&str> {
        Yaml::as_str(self)
    }
    fn as_list(&self) -> Option<&[Self]> {
        self.as_sequence().map(Vec::as_slice)
    }
    fn as_bool(&self) -> Option<bool> {
        Yaml::as_bool(self)
    }
    fn as_i64(&self) -> Option<i64> {
        Yaml::as_i64(self)
    }
    fn is_map(&self) -> bool {
        self.is_mapping()
    }
    fn is_null(&self) -> bool {
        Yaml::is_null(self)
    }
    fn entries(&self) -> Option<Vec<(Option<&str>, &Self)>> {
        Some(self.as_mapping()?.iter().map(|(k, v)| (k.as_str(), v)).collect())
    }
}

impl Tree for serde_json::Value {
    fn get(&self, key: &str) -> Option<&Self> {
        self.as_object()?.get(key)
    }
    fn as_str(&self) -> Option<&str> {
        serde_json::Value::as_str(self)
    }
    fn as_list(&self) -> Option<&[Self]> {
        self.as_array().map(Vec::as_slice)
    }
    fn as_bool(&self) -> Option<bool> {
        serde_json::Value::as_bool(self)
    }
    fn as_i64(&self) -> Option<i64> {
        serde_json::Value::as_i64(self)
    }
    fn is_map(&self) -> bool {
        self.is_object()
    }
    fn is_null(&self) -> bool {
        serde_json::Value::is_null(self)
    }
    fn entries(&self) -> Option<Vec<(Option<&str>, &Self)>> {
        Some(self.as_object()?.iter().map(|(k, v)| (Some(k.as_str()), v)).collect())
    }
}

/// Whether `actual` is what `desired` says, give or take what others add: every key of a mapping
/// (more keys are fine: the API server fills in defaults such as a probe's `scheme` or a port's
/// `protocol`), the items of a list one for one (a list keyless writes is keyless's: an item more
/// or less is a difference), except `volumeMounts`, where more items are fine (the ServiceAccount
/// admission plugin mounts its token into every container), scalars equal.
pub fn covers<T: Tree>(actual: &T, desired: &Yaml) -> bool {
    covers_in(actual, desired, false)
}

fn covers_in<T: Tree>(actual: &T, desired: &Yaml, extra_items: bool) -> bool {
    match desired {
        Yaml::Mapping(map) => {
            actual.is_map()
                && map.iter().all(|(k, v)| {
                    k.as_str().is_some_and(|k| actual.get(k).is_some_and(|a| covers_in(a, v, k == "volumeMounts")))
                })
        }
        Yaml::Sequence(items) => {
            let Some(actual) = actual.as_list() else { return false };
            if extra_items {
                let mut actual = actual.iter();
                items.iter().all(|want| actual.any(|a| covers_in(a, want, false)))
            } else {
                actual.len() == items.len() && actual.iter().zip(items).all(|(a, want)| covers_in(a, want, false))
            }
        }
        Yaml::String(s) => actual.as_str() == Some(s.as_str()),
        Yaml::Bool(b) => actual.as_bool() == Some(*b),
        Yaml::Number(n) => n.as_i64().is_some_and(|n| actual.as_i64() == Some(n)),
        Yaml::Null => actual.is_null(),
        Yaml::Tagged(tagged) => covers_in(actual, &tagged.value, extra_items),
    }
}

/// One step of a path: a mapping key, a list index, or the end of a list (append).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Key(String),
    Index(usize),
    End,
}

/// A path from the pod (template) root.
pub type Path = Vec<Step>;

pub(crate) fn path(steps: &[&str]) -> Path {
    steps.iter().map(|s| Step::Key((*s).to_owned())).collect()
}

pub(crate) fn with(base: &[Step], more: impl IntoIterator<Item = Step>) -> Path {
    base.iter().cloned().chain(more).collect()
}

/// One change, with JSON Patch's meaning (RFC 6902): applied in order, each to the result of the
/// previous one.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// Into a mapping: set the key. Into a list: insert before the index, or append at [`Step::End`].
    Add(Path, Yaml),
    Replace(Path, Yaml),
    Remove(Path),
}

impl Op {
    fn path(&self) -> &Path {
        match self {
            Op::Add(p, _) | Op::Replace(p, _) | Op::Remove(p) => p,
        }
    }

    /// The JSON Patch operation.
    pub fn to_json(&self) -> serde_json::Value {
        let pointer = pointer(self.path());
        let value = |v: &Yaml| serde_json::to_value(v).unwrap_or(serde_json::Value::Null);
        match self {
            Op::Add(_, v) => serde_json::json!({ "op": "add", "path": pointer, "value": value(v) }),
            Op::Replace(_, v) => serde_json::json!({ "op": "replace", "path": pointer, "value": value(v) }),
            Op::Remove(_) => serde_json::json!({ "op": "remove", "path": pointer }),
        }
    }
}

/// The JSON Pointer (RFC 6901) of a path: `~` and `/` in keys escaped.
pub fn pointer(path: &[Step]) -> String {
    let mut out = String::new();
    for step in path {
        out.push('/');
        match step {
            Step::Key(k) => out.push_str(&k.replace('~', "~0").replace('/', "~1")),
            Step::Index(i) => out.push_str(&i.to_string()),
            Step::End => out.push('-'),
        }
    }
    out
}

/// The JSON Patch document of `ops`.
pub fn json_patch(ops: &[Op]) -> serde_json::Value {
    serde_json::Value::Array(ops.iter().map(Op::to_json).collect())
}

/// Applies `ops` to a YAML value in order. An op whose parent is missing or of another shape is an
/// error: [`crate::pod`] only plans ops on shapes it checked.
pub fn apply(root: &mut Yaml, ops: &[Op]) -> Result<(), String> {
    for op in ops {
        apply_one(root, op).map_err(|e| format!("{} {}: {e}", kind(op), pointer(op.path())))?;
    }
    Ok(())
}

fn kind(op: &Op) -> &'static str {
    match op {
        Op::Add(..) => "add",
        Op::Replace(..) => "replace",
        Op::Remove(..) => "remove",
    }
}

fn apply_one(root: &mut Yaml, op: &Op) -> Result<(), &'static str> {
    let (last, parent_path) = op.path().split_last().ok_or("the root cannot be changed")?;
    let parent = parent_path.iter().try_fold(root, |v, step| match (step, v) {
        (Step::Key(k), Yaml::Mapping(m)) => m.get_mut(k.as_str()),
        (Step::Index(i), Yaml::Sequence(s)) => s.get_mut(*i),
        _ => None,
    });
    let parent = parent.ok_or("no such parent")?;
    match (op, last, parent) {
        (Op::Add(_, v) | Op::Replace(_, v), Step::Key(k), Yaml::Mapping(m)) => {
            if matches!(op, Op::Replace(..)) && !m.contains_key(k.as_str()) {
                return Err("no such key");
            }
            m.insert(Yaml::from(k.as_str()), v.clone());
        }
        (Op::Remove(_), Step::Key(k), Yaml::Mapping(m)) => {
            m.remove(k.as_str()).ok_or("no such key")?;
        }
        (Op::Add(_, v), Step::End, Yaml::Sequence(s)) => s.push(v.clone()),
        (Op::Add(_, v), Step::Index(i), Yaml::Sequence(s)) if *i <= s.len() => s.insert(*i, v.clone()),
        (Op::Replace(_, v), Step::Index(i), Yaml::Sequence(s)) if *i < s.len() => s[*i] = v.clone(),
        (Op::Remove(_), Step::Index(i), Yaml::Sequence(s)) if *i < s.len() => {
            s.remove(*i);
        }
        _ => return Err("not a path of this document"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointers_escape_slashes_and_tildes() {
        let p = with(&path(&["metadata", "annotations", "keyless.dev/injected~x"]), []);
        assert_eq!(pointer(&p), "/metadata/annotations/keyless.dev~1injected~0x");
        assert_eq!(pointer(&[Step::Key("a".into()), Step::Index(3), Step::End]), "/a/3/-");
    }

    #[test]
    fn defaults_and_extra_items_still_cover_what_was_injected() {
        let desired: Yaml = yaml_serde::from_str(
            "{name: k, ports: [{containerPort: 9812}], probe: {path: /readyz}, env: [{name: A}], volumeMounts: [{name: t}]}",
        )
        .expect("YAML");
        let stored = serde_json::json!({
            "name": "k", "imagePullPolicy": "IfNotPresent",
            "ports": [{ "containerPort": 9812, "protocol": "TCP" }],
            "probe": { "path": "/readyz", "scheme": "HTTP" },
            "env": [{ "name": "A" }],
            "volumeMounts": [{ "name": "t" }, { "name": "kube-api-access-x" }],
        });
        assert!(covers(&stored, &desired));
        let mut changed = stored.clone();
        changed["ports"][0]["containerPort"] = 9813.into();
        assert!(!covers(&changed, &desired));
        let mut stale = stored.clone();
        stale["env"] = serde_json::json!([{ "name": "A" }, { "name": "KEYLESS_AZURE__CLIENT_ID" }]);
        assert!(!covers(&stale, &desired), "a variable more in keyless's own list is a difference");
    }
}
