//! `keyless inject`: multi-document YAML in, the same documents out, each opted-in workload's pod
//! template injected with the ServiceAccounts found in the input. Other documents pass through.

use serde::Deserialize;
use serde_yaml::Value;

use crate::identity::Annotations;
use crate::pod::{Namespace, TemplateError, annotations_of, inject_template};
use crate::{Options, Outcome, Skip};

/// Where a workload kind keeps its pod template.
const TEMPLATE_PATHS: &[(&str, &str, &[&str])] = &[
    ("", "Pod", &[]),
    ("apps", "Deployment", &["spec", "template"]),
    ("apps", "StatefulSet", &["spec", "template"]),
    ("apps", "DaemonSet", &["spec", "template"]),
    ("apps", "ReplicaSet", &["spec", "template"]),
    ("batch", "Job", &["spec", "template"]),
    ("batch", "CronJob", &["spec", "jobTemplate", "spec", "template"]),
];

/// A document keyless cannot inject, named by its position, kind and name, and the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("document {index}{object}: {reason}")]
pub struct DocumentError {
    /// 1-based position in the input.
    pub index: usize,
    /// ` (Kind name)` when known.
    pub object: String,
    pub reason: String,
}

/// The injected documents and what to tell the user about them (one line each).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Injected {
    pub yaml: String,
    pub notes: Vec<String>,
}

struct Document {
    index: usize,
    value: Value,
}

/// Injects every opted-in workload of `input` (documents separated by `---`; a `List` counts its
/// items). The output has the input's documents in order, key order kept (comments are not).
pub fn inject_documents(input: &str, options: &Options) -> Result<Injected, DocumentError> {
    let documents = parse(input)?;
    let service_accounts = service_accounts(&documents)?;
    let mut notes = Vec::new();
    let mut out = Vec::new();
    for Document { index, mut value } in documents {
        let object = describe(&value);
        let mut note = |line: String| notes.push(format!("document {index}{object}: {line}"));
        let error = |reason: String| DocumentError { index, object: object.clone(), reason };
        inject_object(&mut value, &service_accounts, options, &mut note).map_err(error)?;
        out.push(serde_yaml::to_string(&value).map_err(|e| error(format!("cannot write it back as YAML: {e}")))?);
    }
    Ok(Injected { yaml: out.join("---\n"), notes })
}

fn parse(input: &str) -> Result<Vec<Document>, DocumentError> {
    let mut documents = Vec::new();
    for (i, document) in serde_yaml::Deserializer::from_str(input).enumerate() {
        let index = i + 1;
        let value = Value::deserialize(document).map_err(|e| DocumentError {
            index,
            object: String::new(),
            reason: format!("not valid YAML: {e}"),
        })?;
        if !value.is_null() {
            documents.push(Document { index, value });
        }
    }
    Ok(documents)
}

/// ` (Kind name)`, or nothing when the document has neither.
fn describe(value: &Value) -> String {
    let kind = value.get("kind").and_then(Value::as_str);
    let metadata = value.get("metadata");
    let name = metadata.and_then(|m| m.get("name").or_else(|| m.get("generateName"))).and_then(Value::as_str);
    match (kind, name) {
        (Some(kind), Some(name)) => format!(" ({kind} {name})"),
        (Some(kind), None) => format!(" ({kind})"),
        _ => String::new(),
    }
}

/// A ServiceAccount of the input: namespace (empty when unset), name, annotations.
type ServiceAccount = (String, String, Annotations);

fn service_accounts(documents: &[Document]) -> Result<Vec<ServiceAccount>, DocumentError> {
    let mut found = Vec::new();
    for Document { index, value } in documents {
        for object in objects(value) {
            if object.get("kind").and_then(Value::as_str) != Some("ServiceAccount") {
                continue;
            }
            let annotations = annotations_of(object, "metadata.annotations").map_err(|e| DocumentError {
                index: *index,
                object: describe(object),
                reason: e.to_string(),
            })?;
            found.push((metadata_str(object, "namespace"), metadata_str(object, "name"), annotations));
        }
    }
    Ok(found)
}

/// The document, or the items of a `List`.
fn objects(value: &Value) -> Vec<&Value> {
    match value.get("items").and_then(Value::as_sequence) {
        Some(items) if is_list(value) => items.iter().collect(),
        _ => vec![value],
    }
}

fn is_list(value: &Value) -> bool {
    value.get("kind").and_then(Value::as_str).is_some_and(|k| k == "List" || k.ends_with("List"))
}

fn metadata_str(object: &Value, key: &str) -> String {
    object.get("metadata").and_then(|m| m.get(key)).and_then(Value::as_str).unwrap_or_default().to_owned()
}

fn inject_object(
    value: &mut Value,
    service_accounts: &[ServiceAccount],
    options: &Options,
    note: &mut dyn FnMut(String),
) -> Result<(), String> {
    if is_list(value) {
        if let Some(Value::Sequence(items)) = value.get_mut("items") {
            for (i, item) in items.iter_mut().enumerate() {
                let object = describe(item);
                let mut item_note = |line: String| note(format!("items[{i}]{object}: {line}"));
                inject_object(item, service_accounts, options, &mut item_note)
                    .map_err(|e| format!("items[{i}]{object}: {e}"))?;
            }
        }
        return Ok(());
    }
    let Some(path) = template_path(value) else { return Ok(()) };
    let namespace = metadata_str(value, "namespace");
    let prefix: String = path.iter().map(|key| format!("{key}.")).collect();
    let Some(template) = path.iter().try_fold(&mut *value, |v, key| v.get_mut(*key)) else {
        return Err(format!("{}: missing: a workload needs a pod template", prefix.trim_end_matches('.')));
    };
    let account = service_account_name(template);
    let known = service_accounts
        .iter()
        .find(|(ns, name, _)| *name == account && (*ns == namespace || ns.is_empty() || namespace.is_empty()));
    let empty = Annotations::new();
    let annotations = known.map_or(&empty, |(_, _, a)| a);
    let outcome = inject_template(template, annotations, Namespace::Unknown, options).map_err(|e| match e {
        TemplateError::Field { path, reason } => format!("{prefix}{path}: {reason}"),
        TemplateError::Annotation(e) if e.origin == crate::Origin::Pod => format!("{prefix}metadata.annotations: {e}"),
        TemplateError::Annotation(e) => format!("ServiceAccount {account}: metadata.annotations: {e}"),
    })?;
    if outcome != Outcome::Skipped(Skip::NotOptedIn) && known.is_none() {
        note(format!("ServiceAccount {account:?} is not in the input: only the pod's annotations were read"));
    }
    match outcome {
        Outcome::Injected { identities, warnings } => {
            let clouds: Vec<&str> = [("aws", identities.aws.is_some()), ("gcp", identities.gcp.is_some())]
                .into_iter()
                .chain([("azure", identities.azure.is_some())])
                .filter_map(|(name, on)| on.then_some(name))
                .collect();
            note(format!("injected keyless for {}", clouds.join(", ")));
            warnings.into_iter().for_each(&mut *note);
        }
        Outcome::Skipped(skip) => skip.warning().into_iter().for_each(&mut *note),
    }
    Ok(())
}

/// The template path of a workload kind keyless injects, `None` for any other document.
fn template_path(value: &Value) -> Option<&'static [&'static str]> {
    let kind = value.get("kind")?.as_str()?;
    let api_version = value.get("apiVersion")?.as_str()?;
    let group = api_version.rsplit_once('/').map_or("", |(group, _)| group);
    TEMPLATE_PATHS.iter().find(|(g, k, _)| *g == group && *k == kind).map(|(_, _, path)| *path)
}

/// `spec.serviceAccountName` (or the deprecated `serviceAccount`); empty means `default`.
fn service_account_name(template: &Value) -> String {
    let spec = template.get("spec");
    ["serviceAccountName", "serviceAccount"]
        .iter()
        .find_map(|key| spec?.get(*key)?.as_str().filter(|s| !s.is_empty()))
        .unwrap_or("default")
        .to_owned()
}
