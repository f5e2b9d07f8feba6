//! The injection on one pod template (`metadata` + `spec`): decide, then plan the changes as
//! [`Op`]s against the template as it is (JSON or YAML, read through [`Tree`]). What is already
//! there as keyless would inject it is left alone, so an injected pod, even as the API server stored
//! and defaulted it, gets no change; a previous injection that differs (changed annotations) is
//! replaced in place, and what it added but is no longer wanted is removed.
//!
//! The `keyless.dev/injected` record is keyless's own: it is read only beside a sidecar that
//! carries the signature of keyless's injection, and it can only make keyless change the variables
//! keyless itself adds. A pod cannot use it to have its own containers or variables removed.

use std::collections::BTreeMap;

use yaml_serde::Value;

use crate::identity::{AnnotationError, AnnotationSources, Annotations, Identities, pod_annotation_warning};
use crate::sidecar::{
    self, APP_ENV_NAMES, CONTAINER, LISTEN_ADDRESS, NODE_TOKEN_VOLUME, OTHER_WEBHOOKS_VALUES, REGION_VARS, RUN_VOLUME,
    TOKENS_VOLUME,
};
use crate::tree::{self, Op, Step, Tree, covers, path, with};
use crate::{Options, Outcome, ShadowingVar, Skip};

/// The opt-in label, on the pod (template) or (webhook) on the namespace.
pub const INJECT_LABEL: &str = "keyless.dev/inject";
/// Set on an injected pod: per app container, the variables keyless added (JSON), so a later
/// injection replaces or removes exactly those and a user's own stay.
pub const INJECTED_ANNOTATION: &str = "keyless.dev/injected";

/// A field of the template that is not what Kubernetes allows, by its path under the template.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("{path}: {reason}")]
    Field { path: String, reason: String },
    #[error("metadata.annotations: {0}")]
    Annotation(#[from] AnnotationError),
    /// The sidecar the annotations make would be refused by keyless at start.
    #[error("the ServiceAccount's annotations make a sidecar keyless refuses at start: {0}")]
    Sidecar(String),
}

fn field(path: &str, reason: &str) -> TemplateError {
    TemplateError::Field { path: path.to_owned(), reason: reason.to_owned() }
}

/// Whether the namespace opted in (the webhook's namespace rule; `keyless inject` never knows).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Namespace {
    OptedIn,
    Unknown,
}

/// The opt-in rule: the pod's label `keyless.dev/inject` (`"true"` in, `"false"` out), else the
/// namespace's.
pub fn opted_in(label: Option<&str>, namespace: Namespace) -> bool {
    match label {
        Some("true") => true,
        Some("false") => false,
        _ => namespace == Namespace::OptedIn,
    }
}

/// What the injection does to one template: the outcome and the changes (none: leave it as it is).
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub outcome: Outcome,
    pub ops: Vec<Op>,
    /// The sidecar is added now (not kept or replaced): a first injection.
    pub first: bool,
}

impl Plan {
    fn skip(skip: Skip) -> Self {
        Self { outcome: Outcome::Skipped(skip), ops: Vec::new(), first: false }
    }
}

/// Injects into `template` (a Pod, or a workload's `spec.template`) in place.
pub fn inject_template(
    template: &mut Value,
    service_account: &Annotations,
    namespace: Namespace,
    options: &Options,
) -> Result<Outcome, TemplateError> {
    let plan = plan(&*template, service_account, namespace, options)?;
    tree::apply(template, &plan.ops).map_err(|e| field("", &e))?;
    Ok(plan.outcome)
}

/// The injection on a Pod as JSON, applied: the injected pod and what was done. For tools and
/// tests; the webhook sends [`plan`]'s ops as a JSON Patch instead.
pub fn inject_pod_json(
    pod: &serde_json::Value,
    service_account: &Annotations,
    namespace: Namespace,
    options: &Options,
) -> Result<(serde_json::Value, Outcome), TemplateError> {
    let plan = plan(pod, service_account, namespace, options)?;
    let mut yaml = yaml_serde::to_value(pod).map_err(|e| field("", &format!("not a Kubernetes object: {e}")))?;
    tree::apply(&mut yaml, &plan.ops).map_err(|e| field("", &e))?;
    let injected = serde_json::to_value(&yaml).map_err(|e| field("", &format!("cannot write it as JSON: {e}")))?;
    Ok((injected, plan.outcome))
}

/// Decides and plans the injection of `template` with its ServiceAccount's annotations.
pub fn plan<T: Tree>(
    template: &T,
    service_account: &Annotations,
    namespace: Namespace,
    options: &Options,
) -> Result<Plan, TemplateError> {
    let label = str_at(template, &["metadata", "labels", INJECT_LABEL]);
    if !opted_in(label, namespace) {
        return Ok(Plan::skip(Skip::NotOptedIn));
    }
    if template.get("spec").and_then(|s| s.get("hostNetwork")).and_then(Tree::as_bool) == Some(true) {
        return Ok(Plan::skip(Skip::HostNetwork));
    }
    let pod_annotations = annotations_of(template, "metadata.annotations")?;
    let spec = template.get("spec");
    let list = |key: &str| spec.and_then(|s| s.get(key)).and_then(Tree::as_list);
    if list("containers").unwrap_or_default().iter().any(|c| named(c, CONTAINER)) {
        return Ok(Plan::skip(Skip::KeylessContainer));
    }
    let init = list("initContainers");
    let previous = match init.and_then(|list| list.iter().position(|c| named(c, CONTAINER))) {
        Some(i) if looks_injected(&init.unwrap_or_default()[i]) => Some(i),
        // A container named `keyless` keyless did not inject: a hand-written setup, left alone.
        Some(_) => return Ok(Plan::skip(Skip::KeylessContainer)),
        None => None,
    };
    let (identities, mut warnings) =
        AnnotationSources { service_account }.identities(options.azure_tenant_id.as_deref())?;
    warnings.extend(pod_annotation_warning(&pod_annotations));
    check_shape(template)?;
    let spec = spec.ok_or_else(|| field("spec", "missing"))?;
    // Injected before: a sidecar of keyless's, or in node mode (no sidecar) keyless's record.
    let injected_before =
        previous.is_some() || (options.node.is_some() && pod_annotations.contains_key(INJECTED_ANNOTATION));
    let record: Record = if injected_before {
        pod_annotations.get(INJECTED_ANNOTATION).and_then(|r| serde_json::from_str(r).ok()).unwrap_or_default()
    } else {
        Record::new()
    };
    let planner = Planner { template, spec, init, previous, injected_before, record: &record };
    if identities.is_empty() {
        let ops = planner.ops(None, options, &mut Vec::new());
        return Ok(Plan { outcome: Outcome::Skipped(Skip::NoIdentity { warnings }), ops, first: false });
    }
    if let Some(check) = options.check_sidecar {
        (check.0)(&sidecar::sidecar_env_pairs(&identities, options)).map_err(TemplateError::Sidecar)?;
    }
    let ops = planner.ops(Some(&identities), options, &mut warnings);
    Ok(Plan {
        outcome: Outcome::Injected { identities: Box::new(identities), warnings },
        ops,
        first: previous.is_none(),
    })
}

/// The environment variables added per app container, by container name.
type Record = BTreeMap<String, Vec<String>>;

struct Planner<'a, T> {
    template: &'a T,
    spec: &'a T,
    init: Option<&'a [T]>,
    /// The index of keyless's sidecar from a previous injection.
    previous: Option<usize>,
    /// A previous injection exists (its sidecar, or in node mode its record).
    injected_before: bool,
    /// What the previous injection added (empty without one).
    record: &'a Record,
}

impl<T: Tree> Planner<'_, T> {
    /// The changes from the template as it is to the injection of `identities` (`None`: to no
    /// injection at all), and what to tell the user about it.
    fn ops(&self, identities: Option<&Identities>, options: &Options, warnings: &mut Vec<String>) -> Vec<Op> {
        let mut ops = Vec::new();
        let node = options.node.as_ref();
        // Node mode: the node agent serves the pod; no sidecar, no volume of its.
        let sidecar = identities.filter(|_| node.is_none());
        let aws = sidecar.is_some_and(|ids| ids.aws.is_some());
        let node_aws = node.filter(|_| identities.is_some_and(|ids| ids.aws.is_some()));
        // The sidecar, first of the init containers: the user's own then already have credentials.
        let base = path(&["spec", "initContainers"]);
        let mut edits = ListEdits::default();
        match (sidecar, self.previous) {
            (Some(ids), Some(i)) => {
                let run_as = sidecar_user(self.spec);
                let wanted = sidecar::container(ids, options, run_as.as_ref());
                if !covers(&self.init.unwrap_or_default()[i], &wanted) {
                    edits.replaces.push((i, wanted));
                }
            }
            (Some(ids), None) => {
                let run_as = sidecar_user(self.spec);
                edits.prepend = Some(sidecar::container(ids, options, run_as.as_ref()));
            }
            (None, Some(i)) => edits.removes.push(i),
            (None, None) if identities.is_none() => return ops,
            (None, None) => {}
        }
        ops.extend(edits.ops(&base, self.init));

        let volumes = self.spec.get("volumes").and_then(Tree::as_list);
        let mut edits = ListEdits::default();
        let mut wanted = Vec::new();
        if let Some(ids) = sidecar {
            wanted.push((TOKENS_VOLUME, Some(sidecar::tokens_volume(ids))));
        } else {
            wanted.push((TOKENS_VOLUME, None));
        }
        wanted.push((RUN_VOLUME, aws.then(sidecar::run_volume)));
        wanted.push((NODE_TOKEN_VOLUME, node_aws.map(sidecar::node_token_volume)));
        for (name, want) in wanted {
            let found = volumes.and_then(|v| v.iter().position(|x| named(x, name)));
            match (found, want) {
                (Some(i), Some(want)) if !covers(&volumes.unwrap_or_default()[i], &want) => {
                    edits.replaces.push((i, want))
                }
                (Some(_), Some(_)) => {}
                (None, Some(want)) => edits.appends.push(want),
                (Some(i), None) if self.injected_before => edits.removes.push(i),
                _ => {}
            }
        }
        ops.extend(edits.ops(&path(&["spec", "volumes"]), volumes));

        let mut record = Record::new();
        let containers = self.spec.get("containers").and_then(Tree::as_list).unwrap_or_default();
        for (i, container) in containers.iter().enumerate() {
            let name = str_at(container, &["name"]).unwrap_or_default().to_owned();
            let base = with(&path(&["spec", "containers"]), [Step::Index(i)]);
            let (env_ops, added) = self.env_ops(container, &base, identities, options, warnings);
            ops.extend(env_ops);
            let mounts = container.get("volumeMounts").and_then(Tree::as_list);
            let mut edits = ListEdits::default();
            match (mounts.and_then(|m| m.iter().position(|x| named(x, RUN_VOLUME))), aws) {
                (None, true) => edits.appends.push(sidecar::app_mount()),
                (Some(j), false) if self.injected_before => edits.removes.push(j),
                _ => {}
            }
            match (mounts.and_then(|m| m.iter().position(|x| named(x, NODE_TOKEN_VOLUME))), node_aws.is_some()) {
                (None, true) => edits.appends.push(sidecar::node_token_mount()),
                (Some(j), false) if self.injected_before => edits.removes.push(j),
                _ => {}
            }
            ops.extend(edits.ops(&with(&base, [Step::Key("volumeMounts".into())]), mounts));
            if identities.is_some() {
                record.insert(name, added);
            }
        }
        ops.extend(self.record_ops(identities.map(|_| record)));
        ops
    }

    /// The changes to one app container's `env`, and the variables keyless added to it.
    fn env_ops(
        &self,
        container: &T,
        base: &[Step],
        identities: Option<&Identities>,
        options: &Options,
        warnings: &mut Vec<String>,
    ) -> (Vec<Op>, Vec<String>) {
        let env = container.get("env").and_then(Tree::as_list);
        let entries = env.unwrap_or_default();
        let position = |name: &str| entries.iter().position(|e| named(e, name));
        let empty = Vec::new();
        let recorded: Vec<&String> = self
            .record
            .get(str_at(container, &["name"]).unwrap_or_default())
            .unwrap_or(&empty)
            .iter()
            .filter(|n| APP_ENV_NAMES.contains(&n.as_str()))
            .collect();
        let is_recorded = |name: &str| recorded.iter().any(|r| *r == name);
        let mut wanted = identities.map(|ids| sidecar::app_env(ids, options)).unwrap_or_default();
        if identities.is_some_and(|ids| ids.aws.is_some()) {
            // A region the user set, in either variable, is the region of both.
            let users = REGION_VARS.iter().find_map(|var| {
                let i = position(var).filter(|_| !is_recorded(var))?;
                Some(match str_at(&entries[i], &["value"]) {
                    Some(value) => value.to_owned(),
                    None => format!("$({var})"),
                })
            });
            if let Some(region) = users {
                wanted.retain(|w| !REGION_VARS.contains(&var_name(w)));
                wanted.extend(REGION_VARS.iter().map(|var| sidecar::env_value(var, &region)));
            }
        }
        let mut edits = ListEdits::default();
        // What the SDKs of a served cloud use before keyless, as its adapter declares it: another
        // webhook's variables are taken over (with their group), a user's own named in a warning.
        if let Some(ids) = identities {
            let served = || options.shadowing.iter().filter(|v| ids.serves(v.cloud) && !is_recorded(v.name));
            let mut taken_over = Vec::new();
            let mut users = Vec::new();
            for var in served() {
                let Some(i) = position(var.name) else { continue };
                let value = str_at(&entries[i], &["value"]);
                if value.is_some_and(|v| OTHER_WEBHOOKS_VALUES.contains(&(var.name, v))) {
                    taken_over.push((var.cloud, var.group));
                } else if !is_keyless_own(var.name, value, ids, &wanted) {
                    users.push(var);
                }
            }
            for var in served().filter(|v| taken_over.contains(&(v.cloud, v.group))) {
                edits.removes.extend(position(var.name));
            }
            users.retain(|v| !taken_over.contains(&(v.cloud, v.group)));
            if !users.is_empty() {
                let container = str_at(container, &["name"]).unwrap_or_default();
                warnings.push(shadowing_warning(container, &users));
            }
        }
        let mut added = Vec::new();
        for name in &recorded {
            let Some(i) = position(name) else { continue };
            match wanted.iter().find(|w| var_name(w) == name.as_str()) {
                None => edits.removes.push(i),
                Some(want) => {
                    if !covers(&entries[i], want) {
                        edits.replaces.push((i, want.clone()));
                    }
                    added.push((*name).clone());
                }
            }
        }
        for want in wanted {
            let name = var_name(&want);
            if position(name).is_none() {
                added.push(name.to_owned());
                edits.appends.push(want);
            }
        }
        (edits.ops(&with(base, [Step::Key("env".into())]), env), added)
    }

    /// Writes (or, with no injection, removes) the record, unless it already says the same.
    fn record_ops(&self, record: Option<Record>) -> Vec<Op> {
        let annotations = self.template.get("metadata").and_then(|m| m.get("annotations"));
        let current = annotations.and_then(|a| a.get(INJECTED_ANNOTATION)).and_then(Tree::as_str);
        let key = with(&path(&["metadata", "annotations"]), [Step::Key(INJECTED_ANNOTATION.into())]);
        let Some(record) = record else {
            if current.is_none() || !self.injected_before {
                return Vec::new();
            }
            let only = annotations.and_then(Tree::entries).is_some_and(|e| e.len() == 1);
            return vec![Op::Remove(if only { path(&["metadata", "annotations"]) } else { key })];
        };
        let text = serde_json::to_string(&record).unwrap_or_default();
        if current == Some(text.as_str()) {
            return Vec::new();
        }
        let entry = |text: String| {
            Value::Mapping([(Value::from(INJECTED_ANNOTATION), Value::from(text))].into_iter().collect())
        };
        if annotations.is_some_and(Tree::is_map) {
            vec![Op::Add(key, text.into())]
        } else if self.template.get("metadata").is_some_and(Tree::is_map) {
            vec![Op::Add(path(&["metadata", "annotations"]), entry(text))]
        } else {
            let metadata = [(Value::from("annotations"), entry(text))].into_iter().collect();
            vec![Op::Add(path(&["metadata"]), Value::Mapping(metadata))]
        }
    }
}

/// Whether a shadowing variable the container sets holds what keyless itself would set, or names
/// the identity keyless serves (the Azure webhook's `AZURE_CLIENT_ID`): then it shadows nothing.
fn is_keyless_own(name: &str, value: Option<&str>, identities: &Identities, wanted: &[Value]) -> bool {
    let Some(value) = value else { return false };
    wanted.iter().any(|w| var_name(w) == name && w.get("value").and_then(Value::as_str) == Some(value))
        || (name == "AZURE_CLIENT_ID" && identities.azure.as_ref().is_some_and(|a| a.client_id == value))
}

fn shadowing_warning(container: &str, vars: &[&ShadowingVar]) -> String {
    let names: Vec<&str> = vars.iter().map(|v| v.name).collect();
    let mut clouds: Vec<&str> = vars.iter().map(|v| v.cloud).collect();
    clouds.dedup();
    format!(
        "container {container:?} sets {}, which the {} SDKs use before keyless: the app does not get keyless's \
         credentials while it is set (remove it for the app to use keyless)",
        names.join(", "),
        clouds.join(" and "),
    )
}

fn var_name(var: &Value) -> &str {
    var.get("name").and_then(Value::as_str).unwrap_or_default()
}

/// The changes to one list, as ops that apply in order: replacements (at the original indices),
/// removals from the last, then the sidecar's insertion at the front and appends. A list that
/// would end up empty is removed, as the injection would never have written it.
#[derive(Default)]
struct ListEdits {
    replaces: Vec<(usize, Value)>,
    removes: Vec<usize>,
    prepend: Option<Value>,
    appends: Vec<Value>,
}

impl ListEdits {
    fn ops<T: Tree>(mut self, base: &[Step], list: Option<&[T]>) -> Vec<Op> {
        let Some(list) = list else {
            let items: Vec<Value> = self.prepend.into_iter().chain(self.appends).collect();
            return if items.is_empty() { Vec::new() } else { vec![Op::Add(base.to_vec(), Value::Sequence(items))] };
        };
        self.removes.sort_unstable();
        self.removes.dedup();
        let added = self.appends.len() + usize::from(self.prepend.is_some());
        if !list.is_empty() && list.len() == self.removes.len() && added == 0 {
            return vec![Op::Remove(base.to_vec())];
        }
        let at = |i: usize| with(base, [Step::Index(i)]);
        let mut ops: Vec<Op> = self.replaces.into_iter().map(|(i, v)| Op::Replace(at(i), v)).collect();
        ops.extend(self.removes.into_iter().rev().map(|i| Op::Remove(at(i))));
        ops.extend(self.prepend.map(|v| Op::Add(at(0), v)));
        ops.extend(self.appends.into_iter().map(|v| Op::Add(with(base, [Step::End]), v)));
        ops
    }
}

/// The signature of the sidecar keyless injects: `serve` as a native sidecar, listening where the
/// injection points the apps, with the token volume. A hand-written `keyless` container (the
/// examples' use a config file) does not carry it and is left alone.
fn looks_injected<T: Tree>(container: &T) -> bool {
    let args_serve =
        container.get("args").and_then(Tree::as_list).is_some_and(|a| a.len() == 1 && a[0].as_str() == Some("serve"));
    let env = container.get("env").and_then(Tree::as_list).unwrap_or_default();
    let listens = env.iter().any(|e| named(e, "KEYLESS_LISTEN") && str_at(e, &["value"]) == Some(LISTEN_ADDRESS));
    let mounts = container.get("volumeMounts").and_then(Tree::as_list).unwrap_or_default();
    args_serve
        && str_at(container, &["restartPolicy"]) == Some("Always")
        && listens
        && mounts.iter().any(|m| named(m, TOKENS_VOLUME))
}

/// The lists the injection edits must be lists (of maps) when present.
fn check_shape<T: Tree>(template: &T) -> Result<(), TemplateError> {
    let Some(spec) = template.get("spec") else { return Err(field("spec", "missing: a pod template needs a spec")) };
    if !spec.is_map() {
        return Err(field("spec", "expected a mapping"));
    }
    if let Some(metadata) = template.get("metadata")
        && !metadata.is_map()
        && !metadata.is_null()
    {
        return Err(field("metadata", "expected a mapping"));
    }
    for key in ["containers", "initContainers", "volumes"] {
        match spec.get(key) {
            None => {}
            Some(v) if v.is_null() => {}
            Some(v) => match v.as_list() {
                Some(items) => {
                    if let Some(i) = items.iter().position(|c| !c.is_map()) {
                        return Err(field(&format!("spec.{key}[{i}]"), "expected a mapping"));
                    }
                }
                None => return Err(field(&format!("spec.{key}"), "expected a list")),
            },
        }
    }
    let containers = spec.get("containers").and_then(Tree::as_list);
    for (i, container) in containers.into_iter().flatten().enumerate() {
        for key in ["env", "volumeMounts"] {
            match container.get(key) {
                None => {}
                Some(v) if v.is_null() => {}
                Some(v) => match v.as_list() {
                    Some(items) => {
                        if let Some(j) = items.iter().position(|e| !e.is_map()) {
                            return Err(field(&format!("spec.containers[{i}].{key}[{j}]"), "expected a mapping"));
                        }
                    }
                    None => return Err(field(&format!("spec.containers[{i}].{key}"), "expected a list")),
                },
            }
        }
    }
    if containers.is_none_or(<[T]>::is_empty) {
        return Err(field("spec.containers", "missing: a pod template needs at least one container"));
    }
    Ok(())
}

fn str_at<'a, T: Tree>(value: &'a T, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(value, |v, key| v.get(key))?.as_str()
}

fn named<T: Tree>(value: &T, name: &str) -> bool {
    str_at(value, &["name"]) == Some(name)
}

/// The string annotations of an object (`path` names the field in errors).
pub fn annotations_of<T: Tree>(object: &T, path: &str) -> Result<Annotations, TemplateError> {
    let Some(found) = object.get("metadata").and_then(|m| m.get("annotations")) else { return Ok(Annotations::new()) };
    if found.is_null() {
        return Ok(Annotations::new());
    }
    let Some(entries) = found.entries() else { return Err(field(path, "expected a mapping of strings")) };
    let mut annotations = Annotations::new();
    for (key, value) in entries {
        match (key, value.as_str()) {
            (Some(k), Some(v)) => annotations.insert(k.to_owned(), v.to_owned()),
            (Some(k), None) => return Err(field(&format!("{path}[{k}]"), "expected a string (quote the value)")),
            (None, _) => return Err(field(path, "expected string keys")),
        };
    }
    Ok(annotations)
}

/// The user the sidecar runs as: the pod's when it sets one (then nothing is needed), else the
/// one non-root user every app container that names one agrees on.
fn sidecar_user<T: Tree>(spec: &T) -> Option<Value> {
    if spec.get("securityContext").and_then(|c| c.get("runAsUser")).is_some() {
        return None;
    }
    let containers = spec.get("containers")?.as_list()?;
    let mut users = containers.iter().filter_map(|c| c.get("securityContext")?.get("runAsUser")?.as_i64());
    let first = users.next()?;
    (first != 0 && users.all(|u| u == first)).then(|| first.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::AWS_ROLE_ARN;

    fn pod() -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": { "generateName": "web-", "labels": { INJECT_LABEL: "true" } },
            "spec": { "containers": [{ "name": "app", "image": "app:1" }] },
        })
    }

    fn account(role: &str) -> Annotations {
        [(AWS_ROLE_ARN.to_owned(), role.to_owned())].into()
    }

    /// Part of what the adapters declare (the keyless binary passes all of it; its tests check
    /// the real declarations).
    fn shadowing() -> Vec<ShadowingVar> {
        let web_identity = "AWS_ROLE_ARN/AWS_WEB_IDENTITY_TOKEN_FILE";
        let keys = "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY";
        let container = "AWS_CONTAINER_CREDENTIALS_FULL_URI/AWS_CONTAINER_AUTHORIZATION_TOKEN";
        [
            ("aws", "AWS_ACCESS_KEY_ID", keys),
            ("aws", "AWS_SECRET_ACCESS_KEY", keys),
            ("aws", "AWS_ROLE_ARN", web_identity),
            ("aws", "AWS_WEB_IDENTITY_TOKEN_FILE", web_identity),
            ("aws", "AWS_CONTAINER_CREDENTIALS_FULL_URI", container),
            ("aws", "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", container),
            ("azure", "AZURE_CLIENT_ID", "AZURE_CLIENT_ID"),
            ("azure", "AZURE_FEDERATED_TOKEN_FILE", "AZURE_FEDERATED_TOKEN_FILE"),
        ]
        .into_iter()
        .map(|(cloud, name, group)| ShadowingVar { cloud, name, group })
        .collect()
    }

    #[test]
    fn a_reinvoked_webhook_changes_nothing_in_an_injected_pod() {
        let options = Options::default();
        let sa = account("arn:aws:iam::111122223333:role/a");
        let (once, outcome) = inject_pod_json(&pod(), &sa, Namespace::Unknown, &options).expect("injects");
        assert!(matches!(outcome, Outcome::Injected { .. }));
        let (twice, _) = inject_pod_json(&once, &sa, Namespace::Unknown, &options).expect("injects again");
        assert_eq!(once, twice);
    }

    /// The hardened admin listener: the sidecar keeps its admin listener on loopback, probed from
    /// inside (exec probes), with no port; injecting again changes nothing, and turning the option
    /// off gives the default sidecar back.
    #[test]
    fn the_admin_listener_on_loopback_is_probed_from_inside_and_stays_so() {
        let hardened = Options { admin_on_loopback: true, ..Options::default() };
        let sa = account("arn:aws:iam::111122223333:role/a");
        let (once, _) = inject_pod_json(&pod(), &sa, Namespace::Unknown, &hardened).expect("injects");
        let sidecar = &once["spec"]["initContainers"][0];
        assert!(sidecar.get("ports").is_none(), "{sidecar}");
        assert_eq!(
            sidecar["startupProbe"]["exec"]["command"],
            serde_json::json!(["/usr/local/bin/keyless", "probe", "http://127.0.0.1:9812/readyz"])
        );
        assert_eq!(
            sidecar["livenessProbe"]["exec"]["command"],
            serde_json::json!(["/usr/local/bin/keyless", "probe", "http://127.0.0.1:9812/healthz"])
        );
        assert!(
            sidecar["env"]
                .as_array()
                .expect("env")
                .iter()
                .any(|v| v["name"] == "KEYLESS_ADMIN_LISTEN" && v["value"] == "127.0.0.1:9812")
        );
        let (twice, _) = inject_pod_json(&once, &sa, Namespace::Unknown, &hardened).expect("injects again");
        assert_eq!(once, twice);
        let (back, _) = inject_pod_json(&once, &sa, Namespace::Unknown, &Options::default()).expect("re-injects");
        let (plain, _) = inject_pod_json(&pod(), &sa, Namespace::Unknown, &Options::default()).expect("injects");
        assert_eq!(back, plain);
    }

    #[test]
    fn a_changed_service_account_re_injects_an_injected_pod() {
        let options = Options::default();
        let (once, _) =
            inject_pod_json(&pod(), &account("arn:aws:iam::111122223333:role/a"), Namespace::Unknown, &options)
                .expect("injects");
        let b = account("arn:aws:iam::111122223333:role/b");
        let (again, _) = inject_pod_json(&once, &b, Namespace::Unknown, &options).expect("re-injects");
        let (fresh, _) = inject_pod_json(&pod(), &b, Namespace::Unknown, &options).expect("injects");
        assert_eq!(again, fresh);
    }

    /// The JSON Patch the webhook sends, applied as the API server applies it, gives the pod
    /// `keyless inject` writes.
    #[test]
    fn the_webhooks_patch_and_the_in_place_injection_give_the_same_pod() {
        let options =
            Options { aws_region: Some("eu-west-1".to_owned()), shadowing: shadowing(), ..Options::default() };
        let mut pod = pod();
        pod["spec"]["containers"][0]["env"] = serde_json::json!([
            { "name": "AWS_WEB_IDENTITY_TOKEN_FILE", "value": "/var/run/secrets/eks.amazonaws.com/serviceaccount/token" },
            { "name": "AWS_ROLE_ARN", "value": "arn:aws:iam::111122223333:role/irsa" },
            { "name": "MINE", "value": "1" },
        ]);
        let sa = account("arn:aws:iam::111122223333:role/a");
        let (injected, _) = inject_pod_json(&pod, &sa, Namespace::Unknown, &options).expect("injects");
        let plan = plan(&pod, &sa, Namespace::Unknown, &options).expect("plans");
        let patch: json_patch::Patch = serde_json::from_value(crate::json_patch(&plan.ops)).expect("a JSON Patch");
        let mut patched = pod.clone();
        json_patch::patch(&mut patched, &patch).expect("applies");
        assert_eq!(patched, injected);
        let env: Vec<&str> = injected["spec"]["containers"][0]["env"]
            .as_array()
            .expect("env")
            .iter()
            .map(|e| e["name"].as_str().expect("name"))
            .collect();
        assert!(env.starts_with(&["MINE", "AWS_CONTAINER_CREDENTIALS_FULL_URI"]), "{env:?}");
    }

    /// What the API server stores: defaults filled in (probe scheme and thresholds, port protocol,
    /// pull policy, termination message, the projected volume's mode) and its own token volume
    /// mounted into every container, the sidecar too. Replayed, it needs no change.
    #[test]
    fn an_injected_pod_as_the_api_server_stores_it_gets_no_change() {
        let options = Options::default();
        let sa = account("arn:aws:iam::111122223333:role/a");
        let (mut stored, _) = inject_pod_json(&pod(), &sa, Namespace::Unknown, &options).expect("injects");
        let mount = serde_json::json!({ "name": "kube-api-access-x", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true });
        for list in ["initContainers", "containers"] {
            for c in stored["spec"][list].as_array_mut().expect("containers") {
                c["imagePullPolicy"] = "IfNotPresent".into();
                c["terminationMessagePath"] = "/dev/termination-log".into();
                c["terminationMessagePolicy"] = "File".into();
                c["volumeMounts"].as_array_mut().expect("mounts").push(mount.clone());
                for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
                    if c[probe].is_object() {
                        c[probe]["httpGet"]["scheme"] = "HTTP".into();
                        c[probe]["timeoutSeconds"] = 1.into();
                        c[probe]["successThreshold"] = 1.into();
                    }
                }
                if let Some(ports) = c["ports"].as_array_mut() {
                    ports[0]["protocol"] = "TCP".into();
                }
            }
        }
        stored["spec"]["volumes"][0]["projected"]["defaultMode"] = 420.into();
        stored["spec"]["volumes"]
            .as_array_mut()
            .expect("volumes")
            .push(serde_json::json!({ "name": "kube-api-access-x", "projected": { "sources": [] } }));
        let plan = plan(&stored, &sa, Namespace::Unknown, &options).expect("plans");
        assert_eq!(plan.ops, Vec::new());
        assert!(matches!(plan.outcome, Outcome::Injected { .. }) && !plan.first);
    }

    fn env_names(pod: &serde_json::Value, i: usize) -> Vec<(String, String)> {
        pod["spec"]["containers"][i]["env"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| {
                (e["name"].as_str().unwrap_or_default().to_owned(), e["value"].as_str().unwrap_or("<from>").to_owned())
            })
            .collect()
    }

    #[test]
    fn a_region_the_container_sets_in_either_variable_is_the_region_of_both() {
        let options = Options { aws_region: Some("eu-west-1".to_owned()), ..Options::default() };
        let sa = account("arn:aws:iam::111122223333:role/a");
        for (set, other) in [("AWS_REGION", "AWS_DEFAULT_REGION"), ("AWS_DEFAULT_REGION", "AWS_REGION")] {
            let mut pod = pod();
            pod["spec"]["containers"][0]["env"] = serde_json::json!([{ "name": set, "value": "eu-central-1" }]);
            let (injected, _) = inject_pod_json(&pod, &sa, Namespace::Unknown, &options).expect("injects");
            let env = env_names(&injected, 0);
            assert!(env.contains(&(set.to_owned(), "eu-central-1".to_owned())), "{env:?}");
            assert!(env.contains(&(other.to_owned(), "eu-central-1".to_owned())), "{env:?}");
            let (again, _) = inject_pod_json(&injected, &sa, Namespace::Unknown, &options).expect("again");
            assert_eq!(again, injected, "idempotent");
        }
        // From a ConfigMap: the other refers to it.
        let mut pod = pod();
        pod["spec"]["containers"][0]["env"] = serde_json::json!([{ "name": "AWS_REGION", "valueFrom": { "configMapKeyRef": { "name": "c", "key": "r" } } }]);
        let (injected, _) = inject_pod_json(&pod, &sa, Namespace::Unknown, &options).expect("injects");
        assert!(env_names(&injected, 0).contains(&("AWS_DEFAULT_REGION".to_owned(), "$(AWS_REGION)".to_owned())));
    }

    /// Node mode: no sidecar and no volume of its; the apps' env points at the node agent, and the
    /// AWS endpoint's authorization is the pod's own projected token; injecting again changes nothing.
    #[test]
    fn node_mode_injects_the_apps_env_and_the_pods_token_only() {
        let node = crate::NodeEndpoints {
            aws: crate::NodeEndpoints::DEFAULT_AWS.to_owned(),
            gcp: Some("169.254.170.24:80".to_owned()),
            azure: None,
            audience: crate::NodeEndpoints::DEFAULT_AUDIENCE.to_owned(),
        };
        let options = Options { aws_region: Some("eu-west-1".to_owned()), node: Some(node), ..Options::default() };
        let mut sa = account("arn:aws:iam::111122223333:role/a");
        sa.insert(crate::identity::GCP_SERVICE_ACCOUNT.to_owned(), "app@p.iam.gserviceaccount.com".to_owned());
        sa.insert(
            crate::identity::GCP_PROVIDER.to_owned(),
            "projects/1/locations/global/workloadIdentityPools/p/providers/k".to_owned(),
        );
        sa.insert(crate::identity::AZURE_CLIENT_ID.to_owned(), "11111111-1111-1111-1111-111111111111".to_owned());
        sa.insert(crate::identity::AZURE_TENANT_ID.to_owned(), "22222222-2222-2222-2222-222222222222".to_owned());
        let (injected, outcome) = inject_pod_json(&pod(), &sa, Namespace::Unknown, &options).expect("injects");
        assert!(matches!(outcome, Outcome::Injected { .. }), "{outcome:?}");
        assert!(injected["spec"].get("initContainers").is_none(), "no sidecar: {injected}");
        let volumes = injected["spec"]["volumes"].as_array().expect("volumes");
        assert_eq!(volumes.len(), 1, "{volumes:?}");
        let token = &volumes[0]["projected"]["sources"][0]["serviceAccountToken"];
        assert_eq!(
            (volumes[0]["name"].as_str(), token["audience"].as_str()),
            (Some("keyless-node-token"), Some("keyless.dev/node"))
        );
        let mounts = &injected["spec"]["containers"][0]["volumeMounts"];
        assert_eq!(mounts[0]["mountPath"], "/var/run/secrets/keyless/node");
        let env = env_names(&injected, 0);
        for (name, value) in [
            ("AWS_CONTAINER_CREDENTIALS_FULL_URI", "http://169.254.170.23/v1/credentials"),
            ("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", crate::NODE_TOKEN_FILE),
            ("AWS_REGION", "eu-west-1"),
            ("GCE_METADATA_HOST", "169.254.170.24:80"),
            ("AZURE_POD_IDENTITY_AUTHORITY_HOST", "http://169.254.170.23"),
        ] {
            assert!(env.contains(&(name.to_owned(), value.to_owned())), "{name}: {env:?}");
        }
        assert!(!env.iter().any(|(name, _)| name.starts_with("KEYLESS_") || name == "IDENTITY_HEADER"), "{env:?}");
        let (again, _) = inject_pod_json(&injected, &sa, Namespace::Unknown, &options).expect("again");
        assert_eq!(again, injected, "idempotent");
    }

    #[test]
    fn identities_come_from_the_service_account_only() {
        let mut pod = pod();
        pod["metadata"]["annotations"] = serde_json::json!({ AWS_ROLE_ARN: "arn:aws:iam::999999999999:role/mine" });
        let sa = account("arn:aws:iam::111122223333:role/a");
        let plan = plan(&pod, &sa, Namespace::Unknown, &Options::default()).expect("plans");
        let Outcome::Injected { identities, warnings } = plan.outcome else { panic!("{:?}", plan.outcome) };
        assert_eq!(identities.aws.expect("aws").role_arn, "arn:aws:iam::111122223333:role/a");
        assert!(warnings.iter().any(|w| w.contains("ignored")), "{warnings:?}");
        let plan = plan_of(&pod, &Annotations::new());
        assert!(
            matches!(plan.outcome, Outcome::Skipped(Skip::NoIdentity { .. })),
            "the pod's annotation alone is nothing"
        );
    }

    fn plan_of(pod: &serde_json::Value, sa: &Annotations) -> Plan {
        plan(pod, sa, Namespace::Unknown, &Options::default()).expect("plans")
    }

    /// A pod cannot make keyless remove its own containers or variables with a
    /// `keyless.dev/injected` record of its own.
    #[test]
    fn a_record_the_pod_brings_removes_nothing_of_the_pods() {
        let sa = account("arn:aws:iam::111122223333:role/a");
        let record = serde_json::json!({ "app": ["MINE", "AWS_REGION"] }).to_string();
        let mut pod = pod();
        pod["metadata"]["annotations"] = serde_json::json!({ INJECTED_ANNOTATION: record });
        pod["spec"]["containers"][0]["env"] =
            serde_json::json!([{ "name": "MINE", "value": "1" }, { "name": "AWS_REGION", "value": "r" }]);
        // With its own `keyless` container: a hand-written setup, left exactly as it is.
        let mut hand_written = pod.clone();
        hand_written["spec"]["initContainers"] =
            serde_json::json!([{ "name": "keyless", "image": "mine", "restartPolicy": "Always" }]);
        let plan = plan_of(&hand_written, &sa);
        assert_eq!(plan.outcome, Outcome::Skipped(Skip::KeylessContainer));
        assert!(plan.ops.is_empty());
        // Without: injected, its variables kept, the record replaced by keyless's.
        let (injected, _) = inject_pod_json(&pod, &sa, Namespace::Unknown, &Options::default()).expect("injects");
        let env = env_names(&injected, 0);
        assert!(
            env.contains(&("MINE".to_owned(), "1".to_owned()))
                && env.contains(&("AWS_REGION".to_owned(), "r".to_owned())),
            "{env:?}"
        );
        let record = injected["metadata"]["annotations"][INJECTED_ANNOTATION].as_str().expect("a record");
        assert!(!record.contains("MINE"), "{record}");
    }

    #[test]
    fn a_namespace_opt_in_injects_unlabelled_pods_but_not_those_labelled_false() {
        assert!(opted_in(None, Namespace::OptedIn));
        assert!(!opted_in(Some("false"), Namespace::OptedIn));
        assert!(!opted_in(None, Namespace::Unknown));
        assert!(opted_in(Some("true"), Namespace::Unknown));
    }

    /// Where keyless serves a cloud, what its SDKs use first (the adapters' declarations): the IRSA
    /// and Azure webhooks' variables are taken over with their group; a user's own stay, named in
    /// a warning; keyless's own values and the served Azure client id are no such thing.
    #[test]
    fn variables_that_shadow_keyless_are_taken_over_or_named() {
        let options = Options { shadowing: shadowing(), ..Options::default() };
        let sa = account("arn:aws:iam::111122223333:role/a");
        let mut pod = pod();
        pod["spec"]["containers"][0]["env"] = serde_json::json!([
            { "name": "AWS_ROLE_ARN", "value": "arn:aws:iam::111122223333:role/irsa" },
            { "name": "AWS_WEB_IDENTITY_TOKEN_FILE", "value": "/var/run/secrets/eks.amazonaws.com/serviceaccount/token" },
            { "name": "AZURE_FEDERATED_TOKEN_FILE", "value": "/var/run/secrets/azure/tokens/azure-identity-token" },
        ]);
        pod["spec"]["containers"].as_array_mut().expect("containers").push(
            serde_json::json!({ "name": "worker", "image": "w:1", "env": [
                { "name": "AWS_ACCESS_KEY_ID", "value": "AKIA" },
                { "name": "AWS_SECRET_ACCESS_KEY", "valueFrom": { "secretKeyRef": { "name": "s", "key": "k" } } },
                { "name": "AWS_CONTAINER_CREDENTIALS_FULL_URI", "value": "http://127.0.0.1:9811/v1/credentials" },
            ] }),
        );
        let (injected, outcome) = inject_pod_json(&pod, &sa, Namespace::Unknown, &options).expect("injects");
        let names = |i| env_names(&injected, i).into_iter().map(|(n, _)| n).collect::<Vec<_>>();
        // AWS is served: IRSA's pair is gone; Azure is not: its webhook's variable stays.
        assert!(!names(0).iter().any(|n| n.starts_with("AWS_ROLE") || n.starts_with("AWS_WEB")), "{:?}", names(0));
        assert!(names(0).contains(&"AZURE_FEDERATED_TOKEN_FILE".to_owned()), "{:?}", names(0));
        assert!(names(1).contains(&"AWS_ACCESS_KEY_ID".to_owned()), "the user's own stays: {:?}", names(1));
        let Outcome::Injected { warnings, .. } = outcome else { panic!("{outcome:?}") };
        assert_eq!(
            warnings,
            ["container \"worker\" sets AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, which the aws SDKs use before \
                 keyless: the app does not get keyless's credentials while it is set (remove it for the app to use \
                 keyless)"]
        );
        let (_, again) = inject_pod_json(&injected, &sa, Namespace::Unknown, &options).expect("again");
        assert!(matches!(again, Outcome::Injected { warnings, .. } if warnings.len() == 1));

        // Served Azure: the Azure webhook's client id names the same identity; another one does not.
        let sa: Annotations = [
            (crate::AZURE_CLIENT_ID.to_owned(), "11111111-1111-1111-1111-111111111111".to_owned()),
            (crate::AZURE_TENANT_ID.to_owned(), "contoso.onmicrosoft.com".to_owned()),
        ]
        .into();
        for (client, warned) in [("11111111-1111-1111-1111-111111111111", false), ("22222222", true)] {
            let mut azure = self::pod();
            azure["spec"]["containers"][0]["env"] = serde_json::json!([{ "name": "AZURE_CLIENT_ID", "value": client }]);
            let plan = plan(&azure, &sa, Namespace::Unknown, &options).expect("plans");
            let Outcome::Injected { warnings, .. } = plan.outcome else { panic!("{:?}", plan.outcome) };
            assert_eq!(warnings.len() == 1, warned, "{client}: {warnings:?}");
        }
    }
}
