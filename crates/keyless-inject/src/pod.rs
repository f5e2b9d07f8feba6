//! The injection on one pod template (`metadata` + `spec`): decide, remove a previous injection,
//! apply the current one. Removing exactly what was added and adding it again at the same places
//! makes the injection idempotent, and a changed annotation re-injects.

use std::collections::BTreeMap;

use serde_yaml::{Mapping, Value};

use crate::identity::{AnnotationError, AnnotationSources, Annotations, Identities};
use crate::sidecar::{self, BYPASSING_WEBHOOK_ENV, CONTAINER, RUN_VOLUME, TOKENS_VOLUME};
use crate::{Options, Outcome, Skip};

/// The opt-in label, on the pod (template) or (webhook) on the namespace.
pub const INJECT_LABEL: &str = "keyless.dev/inject";
/// Set on an injected pod: per app container, the variables keyless added (JSON), so a later
/// injection removes exactly those and a user's own stay.
pub const INJECTED_ANNOTATION: &str = "keyless.dev/injected";

/// A field of the template that is not what Kubernetes allows, by its path under the template.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("{path}: {reason}")]
    Field { path: String, reason: String },
    #[error("metadata.annotations: {0}")]
    Annotation(#[from] AnnotationError),
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

/// Injects into `template` (a Pod, or a workload's `spec.template`).
pub fn inject_template(
    template: &mut Value,
    service_account: &Annotations,
    namespace: Namespace,
    options: &Options,
) -> Result<Outcome, TemplateError> {
    let label = string_at(template, &["metadata", "labels", INJECT_LABEL]);
    if !opted_in(label.as_deref(), namespace) {
        return Ok(Outcome::Skipped(Skip::NotOptedIn));
    }
    if template.get("spec").and_then(|s| s.get("hostNetwork")).and_then(Value::as_bool) == Some(true) {
        return Ok(Outcome::Skipped(Skip::HostNetwork));
    }
    let injected_before = string_at(template, &["metadata", "annotations", INJECTED_ANNOTATION]);
    if injected_before.is_none() && has_keyless_container(template) {
        return Ok(Outcome::Skipped(Skip::KeylessContainer));
    }
    let pod_annotations = annotations_of(template, "metadata.annotations")?;
    let sources = AnnotationSources { pod: &pod_annotations, service_account };
    let (identities, warnings) = sources.identities(options.azure_tenant_id.as_deref())?;
    check_shape(template)?;
    let Value::Mapping(template) = template else { return Err(field("", "expected a mapping")) };
    if let Some(record) = injected_before {
        remove(template, &record);
    }
    if identities.is_empty() {
        return Ok(Outcome::Skipped(Skip::NoIdentity { warnings }));
    }
    apply(template, &identities, options)?;
    Ok(Outcome::Injected { identities: Box::new(identities), warnings })
}

/// The lists the injection edits must be lists (of maps) when present.
fn check_shape(template: &Value) -> Result<(), TemplateError> {
    let Some(spec) = template.get("spec") else { return Err(field("spec", "missing: a pod template needs a spec")) };
    if !spec.is_mapping() {
        return Err(field("spec", "expected a mapping"));
    }
    for key in ["containers", "initContainers", "volumes"] {
        match spec.get(key) {
            None | Some(Value::Null) => {}
            Some(Value::Sequence(items)) => {
                if let Some(i) = items.iter().position(|c| !c.is_mapping()) {
                    return Err(field(&format!("spec.{key}[{i}]"), "expected a mapping"));
                }
            }
            Some(_) => return Err(field(&format!("spec.{key}"), "expected a list")),
        }
    }
    let containers = spec.get("containers").and_then(Value::as_sequence);
    for (i, container) in containers.into_iter().flatten().enumerate() {
        for key in ["env", "volumeMounts"] {
            if !matches!(container.get(key), None | Some(Value::Null) | Some(Value::Sequence(_))) {
                return Err(field(&format!("spec.containers[{i}].{key}"), "expected a list"));
            }
        }
    }
    if containers.is_none_or(|c| c.is_empty()) {
        return Err(field("spec.containers", "missing: a pod template needs at least one container"));
    }
    Ok(())
}

fn string_at(value: &Value, path: &[&str]) -> Option<String> {
    path.iter().try_fold(value, |v, key| v.get(*key))?.as_str().map(str::to_owned)
}

fn has_keyless_container(template: &Value) -> bool {
    ["containers", "initContainers"].iter().any(|list| {
        let items = template.get("spec").and_then(|s| s.get(*list)).and_then(Value::as_sequence);
        items.into_iter().flatten().any(|c| c.get("name").and_then(Value::as_str) == Some(CONTAINER))
    })
}

/// The string annotations of an object (`path` names the field in errors).
pub fn annotations_of(object: &Value, path: &str) -> Result<Annotations, TemplateError> {
    let Some(found) = object.get("metadata").and_then(|m| m.get("annotations")) else { return Ok(Annotations::new()) };
    let Value::Mapping(mapping) = found else {
        return match found {
            Value::Null => Ok(Annotations::new()),
            _ => Err(field(path, "expected a mapping of strings")),
        };
    };
    let mut annotations = Annotations::new();
    for (key, value) in mapping {
        match (key.as_str(), value.as_str()) {
            (Some(k), Some(v)) => annotations.insert(k.to_owned(), v.to_owned()),
            (Some(k), None) => return Err(field(&format!("{path}[{k}]"), "expected a string (quote the value)")),
            (None, _) => return Err(field(path, "expected string keys")),
        };
    }
    Ok(annotations)
}

/// The environment variables added per app container, by container name.
type Record = BTreeMap<String, Vec<String>>;

fn apply(template: &mut Mapping, identities: &Identities, options: &Options) -> Result<(), TemplateError> {
    let run_as = template.get("spec").and_then(sidecar_user);
    let sidecar = sidecar::container(identities, options, run_as.as_ref());
    let app_env = sidecar::app_env(identities, options);
    let spec = mapping_mut(template, "spec");
    list_mut(spec, "initContainers").insert(0, sidecar);
    let volumes = list_mut(spec, "volumes");
    volumes.push(sidecar::tokens_volume(identities));
    if identities.aws.is_some() {
        volumes.push(sidecar::run_volume());
    }
    let mut record = Record::new();
    for container in list_mut(spec, "containers").iter_mut().filter_map(Value::as_mapping_mut) {
        let name = container.get("name").and_then(Value::as_str).unwrap_or_default().to_owned();
        take_over(container, identities);
        let env = list_mut(container, "env");
        let mut added = Vec::new();
        for var in &app_env {
            let var_name = var.get("name").and_then(Value::as_str).unwrap_or_default();
            if !env.iter().any(|e| e.get("name").and_then(Value::as_str) == Some(var_name)) {
                added.push(var_name.to_owned());
                env.push(var.clone());
            }
        }
        if identities.aws.is_some() {
            list_mut(container, "volumeMounts").push(sidecar::app_mount());
        }
        record.insert(name, added);
    }
    let record = serde_json::to_string(&record).unwrap_or_default();
    let metadata = mapping_mut(template, "metadata");
    mapping_mut(metadata, "annotations").insert(INJECTED_ANNOTATION.into(), record.into());
    Ok(())
}

/// The user the sidecar runs as: the pod's when it sets one (then nothing is needed), else the
/// one non-root user every app container that names one agrees on.
fn sidecar_user(spec: &Value) -> Option<Value> {
    if spec.get("securityContext").and_then(|c| c.get("runAsUser")).is_some() {
        return None;
    }
    let mut users = spec
        .get("containers")?
        .as_sequence()?
        .iter()
        .filter_map(|c| c.get("securityContext")?.get("runAsUser")?.as_i64());
    let first = users.next()?;
    (first != 0 && users.all(|u| u == first)).then(|| first.into())
}

/// Removes the IRSA / Azure webhook variables that would make the SDKs bypass keyless for a
/// cloud keyless serves (with `AWS_ROLE_ARN`, which only means something beside the token file).
fn take_over(container: &mut Mapping, identities: &Identities) {
    let Some(Value::Sequence(env)) = container.get_mut("env") else { return };
    let value_of = |env: &[Value], name: &str| {
        env.iter()
            .find(|e| e.get("name").and_then(Value::as_str) == Some(name))?
            .get("value")?
            .as_str()
            .map(str::to_owned)
    };
    for (cloud, name, webhook_value) in BYPASSING_WEBHOOK_ENV {
        let serves = match *cloud {
            "aws" => identities.aws.is_some(),
            _ => identities.azure.is_some(),
        };
        if !serves || value_of(env, name).as_deref() != Some(*webhook_value) {
            continue;
        }
        let also = if *cloud == "aws" { "AWS_ROLE_ARN" } else { *name };
        env.retain(|e| !matches!(e.get("name").and_then(Value::as_str), Some(n) if n == *name || n == also));
    }
}

/// Undoes [`apply`]: the sidecar, keyless's volumes and mounts, and the recorded variables.
fn named(value: &Value, name: &str) -> bool {
    value.get("name").and_then(Value::as_str) == Some(name)
}

fn remove(template: &mut Mapping, record: &str) {
    let record: Record = serde_json::from_str(record).unwrap_or_default();
    let spec = mapping_mut(template, "spec");
    retain_in(spec, "initContainers", |c| !named(c, CONTAINER));
    retain_in(spec, "volumes", |v| !named(v, TOKENS_VOLUME) && !named(v, RUN_VOLUME));
    if let Some(Value::Sequence(containers)) = spec.get_mut("containers") {
        for container in containers.iter_mut().filter_map(Value::as_mapping_mut) {
            let name = container.get("name").and_then(Value::as_str).unwrap_or_default().to_owned();
            retain_in(container, "volumeMounts", |m| !named(m, RUN_VOLUME));
            let added = record.get(&name).cloned().unwrap_or_default();
            retain_in(container, "env", |e| {
                !e.get("name").and_then(Value::as_str).is_some_and(|n| added.iter().any(|a| a == n))
            });
        }
    }
    if let Some(Value::Mapping(metadata)) = template.get_mut("metadata")
        && let Some(Value::Mapping(annotations)) = metadata.get_mut("annotations")
    {
        annotations.remove(INJECTED_ANNOTATION);
        if annotations.is_empty() {
            metadata.remove("annotations");
        }
    }
}

/// Keeps the items of list `key` that pass; drops the key when that empties it.
fn retain_in(map: &mut Mapping, key: &str, keep: impl Fn(&Value) -> bool) {
    if let Some(Value::Sequence(items)) = map.get_mut(key) {
        items.retain(keep);
        if items.is_empty() {
            map.remove(key);
        }
    }
}

/// The mapping at `key`, created (or replacing a null) when absent. Shapes were checked before.
fn mapping_mut<'a>(map: &'a mut Mapping, key: &str) -> &'a mut Mapping {
    let slot = map.entry(key.into()).or_insert(Value::Null);
    if !slot.is_mapping() {
        *slot = Value::Mapping(Mapping::new());
    }
    slot.as_mapping_mut().expect("a mapping was just put there")
}

/// The list at `key`, created (or replacing a null) when absent.
fn list_mut<'a>(map: &'a mut Mapping, key: &str) -> &'a mut Vec<Value> {
    let slot = map.entry(key.into()).or_insert(Value::Null);
    if !slot.is_sequence() {
        *slot = Value::Sequence(Vec::new());
    }
    slot.as_sequence_mut().expect("a list was just put there")
}

/// The injection on a Pod as JSON (an admission request's object): the injected pod and what was
/// done. JSON goes through the YAML value losslessly (strings stay strings, integers integers).
pub fn inject_pod_json(
    pod: &serde_json::Value,
    service_account: &Annotations,
    namespace: Namespace,
    options: &Options,
) -> Result<(serde_json::Value, Outcome), TemplateError> {
    let mut template = serde_yaml::to_value(pod).map_err(|e| field("", &format!("not a Kubernetes object: {e}")))?;
    let outcome = inject_template(&mut template, service_account, namespace, options)?;
    let injected =
        serde_json::to_value(&template).map_err(|e| field("", &format!("cannot write the pod back as JSON: {e}")))?;
    Ok((injected, outcome))
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

    #[test]
    fn a_reinvoked_webhook_changes_nothing_in_an_injected_pod() {
        let options = Options::default();
        let sa = account("arn:aws:iam::111122223333:role/a");
        let (once, outcome) = inject_pod_json(&pod(), &sa, Namespace::Unknown, &options).expect("injects");
        assert!(matches!(outcome, Outcome::Injected { .. }));
        let (twice, _) = inject_pod_json(&once, &sa, Namespace::Unknown, &options).expect("injects again");
        assert_eq!(once, twice);
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

    #[test]
    fn a_namespace_opt_in_injects_unlabelled_pods_but_not_those_labelled_false() {
        assert!(opted_in(None, Namespace::OptedIn));
        assert!(!opted_in(Some("false"), Namespace::OptedIn));
        assert!(!opted_in(None, Namespace::Unknown));
        assert!(opted_in(Some("true"), Namespace::Unknown));
    }
}
