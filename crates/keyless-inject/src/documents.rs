//! `keyless inject`: multi-document YAML in, the same documents out, each opted-in workload's pod
//! template injected with the ServiceAccounts found in the input (or read from the cluster by the
//! caller). Other documents pass through. An opted-in workload that gets nothing is reported.

use serde::Deserialize;
use yaml_serde::Value;

use crate::identity::{AWS_ROLE_ARN, Annotations};
use crate::pod::{INJECT_LABEL, Namespace as PodNamespace, TemplateError, annotations_of, opted_in, plan};
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
    /// One line per opted-in workload that got nothing, naming it, why, and the fix.
    pub uninjected: Vec<String>,
}

/// The deepest nesting of flow collections (`[`, `{`) read. The YAML parser's own limit is 128
/// levels, but it reaches it only after scanning the whole document, in time quadratic in the
/// depth (200 KB of `[` took 24-36 s of CPU): the input is refused before it is parsed, counted
/// so as never to see less than the parser will (an unbalanced bracket inside a quoted string may
/// count). A Kubernetes manifest nests about 10 levels.
pub const MAX_NESTING: usize = 100;

/// A ServiceAccount: its namespace (empty when unset), name and annotations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAccount {
    pub namespace: String,
    pub name: String,
    pub annotations: Annotations,
}

/// An opted-in workload's ServiceAccount that is not in the input.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct WorkloadRef {
    /// The workload's namespace; empty when the document names none.
    pub namespace: String,
    pub service_account: String,
}

#[derive(Debug)]
struct Document {
    index: usize,
    value: Value,
}

/// Parsed input documents, ready to inject.
#[derive(Debug)]
pub struct Documents {
    documents: Vec<Document>,
    service_accounts: Vec<ServiceAccount>,
}

/// Injects every opted-in workload of `input` (documents separated by `---`; a `List` counts its
/// items) with the ServiceAccounts of the input. The output has the input's documents in order,
/// key order kept (comments are not).
pub fn inject_documents(input: &str, options: &Options) -> Result<Injected, DocumentError> {
    parse_documents(input)?.inject(None, options)
}

/// Parses `input` (refusing nesting beyond [`MAX_NESTING`] first) and reads its ServiceAccounts.
pub fn parse_documents(input: &str) -> Result<Documents, DocumentError> {
    let documents = parse(input)?;
    let service_accounts = service_accounts(&documents)?;
    Ok(Documents { documents, service_accounts })
}

impl Documents {
    /// The ServiceAccounts opted-in workloads name that the input does not hold (to read them from
    /// the cluster), each once.
    pub fn missing_service_accounts(&self) -> Vec<WorkloadRef> {
        let mut missing = Vec::new();
        for Document { value, .. } in &self.documents {
            for object in objects(value) {
                let Some(path) = template_path(object) else { continue };
                let Some(template) = path.iter().try_fold(object, |v, key| v.get(*key)) else { continue };
                let label = template.get("metadata").and_then(|m| m.get("labels")).and_then(|l| l.get(INJECT_LABEL));
                if !opted_in(label.and_then(Value::as_str), PodNamespace::Unknown) {
                    continue;
                }
                let namespace = metadata_str(object, "namespace");
                let account = service_account_name(template);
                if find(&self.service_accounts, &namespace, &account).is_none() {
                    missing.push(WorkloadRef { namespace, service_account: account });
                }
            }
        }
        missing.sort();
        missing.dedup();
        missing
    }

    /// Injects with the input's ServiceAccounts, then `cluster`'s (`Some` when the cluster was
    /// asked: what it did not have does not exist there).
    pub fn inject(self, cluster: Option<&[ServiceAccount]>, options: &Options) -> Result<Injected, DocumentError> {
        let mut notes = Vec::new();
        let mut uninjected = Vec::new();
        let mut out = Vec::new();
        let accounts = Accounts { input: &self.service_accounts, cluster };
        for Document { index, mut value } in self.documents {
            let object = describe(&value);
            let mut report = |report: Report| match report {
                Report::Note(line) => notes.push(format!("document {index}{object}: {line}")),
                Report::Uninjected(line) => uninjected.push(format!("document {index}{object}: {line}")),
            };
            let error = |reason: String| DocumentError { index, object: object.clone(), reason };
            inject_object(&mut value, &accounts, options, &mut report).map_err(error)?;
            out.push(yaml_serde::to_string(&value).map_err(|e| error(format!("cannot write it back as YAML: {e}")))?);
        }
        Ok(Injected { yaml: out.join("---\n"), notes, uninjected })
    }
}

enum Report {
    Note(String),
    Uninjected(String),
}

struct Accounts<'a> {
    input: &'a [ServiceAccount],
    cluster: Option<&'a [ServiceAccount]>,
}

fn find<'a>(accounts: &'a [ServiceAccount], namespace: &str, name: &str) -> Option<&'a ServiceAccount> {
    accounts
        .iter()
        .find(|sa| sa.name == name && (sa.namespace == namespace || sa.namespace.is_empty() || namespace.is_empty()))
}

fn parse(input: &str) -> Result<Vec<Document>, DocumentError> {
    if crate::nesting::flow_depth(input, MAX_NESTING) > MAX_NESTING {
        return Err(DocumentError {
            index: 1,
            object: String::new(),
            reason: format!(
                "nested deeper than {MAX_NESTING} levels of [ ] or {{ }}: refused before parsing (a Kubernetes \
                 manifest nests about 10 levels; check what produced this input)"
            ),
        });
    }
    let mut documents = Vec::new();
    for (i, document) in yaml_serde::Deserializer::from_str(input).enumerate() {
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
            found.push(ServiceAccount {
                namespace: metadata_str(object, "namespace"),
                name: metadata_str(object, "name"),
                annotations,
            });
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
    accounts: &Accounts<'_>,
    options: &Options,
    report: &mut dyn FnMut(Report),
) -> Result<(), String> {
    if is_list(value) {
        if let Some(Value::Sequence(items)) = value.get_mut("items") {
            for (i, item) in items.iter_mut().enumerate() {
                let object = describe(item);
                let mut item_report = |r: Report| {
                    report(match r {
                        Report::Note(line) => Report::Note(format!("items[{i}]{object}: {line}")),
                        Report::Uninjected(line) => Report::Uninjected(format!("items[{i}]{object}: {line}")),
                    })
                };
                inject_object(item, accounts, options, &mut item_report)
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
    let from_input = find(accounts.input, &namespace, &account);
    let from_cluster = accounts.cluster.and_then(|c| find(c, &namespace, &account));
    let known = from_input.or(from_cluster);
    let empty = Annotations::new();
    let annotations = known.map_or(&empty, |sa| &sa.annotations);
    let plan = plan(&*template, annotations, PodNamespace::Unknown, options).map_err(|e| match e {
        TemplateError::Field { path, reason } => format!("{prefix}{path}: {reason}"),
        TemplateError::Annotation(e) => format!("ServiceAccount {account}: metadata.annotations: {e}"),
        e @ TemplateError::Sidecar(_) => format!("ServiceAccount {account}: {e}"),
    })?;
    crate::tree::apply(template, &plan.ops).map_err(|e| format!("{prefix}: {e}"))?;
    let unknown = || match accounts.cluster {
        None => format!(
            "its ServiceAccount {account:?} is not in the input; fix: add the ServiceAccount to the input, or pass \
             --from-cluster to read it from the cluster"
        ),
        Some(_) => format!(
            "its ServiceAccount {account:?} is neither in the input nor in the cluster{}; fix: create it with \
             its identity annotation (kubectl create serviceaccount {account}; kubectl annotate serviceaccount \
             {account} {AWS_ROLE_ARN}=...)",
            if namespace.is_empty() { String::new() } else { format!(" (namespace {namespace})") }
        ),
    };
    match plan.outcome {
        Outcome::Injected { identities, warnings } => {
            let clouds: Vec<&str> = [("aws", identities.aws.is_some()), ("gcp", identities.gcp.is_some())]
                .into_iter()
                .chain([("azure", identities.azure.is_some())])
                .filter_map(|(name, on)| on.then_some(name))
                .collect();
            let what = if plan.ops.is_empty() { "already injected, unchanged" } else { "injected keyless" };
            report(Report::Note(format!("{what} for {}", clouds.join(", "))));
            warnings.into_iter().for_each(|w| report(Report::Note(w)));
        }
        Outcome::Skipped(Skip::NotOptedIn | Skip::KeylessContainer) => {}
        Outcome::Skipped(Skip::NoIdentity { .. }) if known.is_none() => {
            report(Report::Uninjected(format!("opted in but not injected: {}", unknown())));
        }
        Outcome::Skipped(skip @ Skip::NoIdentity { .. }) => {
            let warning = skip.warning().unwrap_or_default();
            report(Report::Uninjected(format!(
                "opted in but not injected: {}; fix: annotate ServiceAccount {account} with an identity (kubectl \
                 annotate serviceaccount {account} {AWS_ROLE_ARN}=arn:aws:iam::ACCOUNT:role/NAME), or remove the \
                 {INJECT_LABEL} label",
                warning.trim_start_matches("keyless not injected: ")
            )));
        }
        Outcome::Skipped(skip @ Skip::HostNetwork) => {
            let warning = skip.warning().unwrap_or_default();
            report(Report::Uninjected(format!(
                "opted in but not injected: {}; fix: remove hostNetwork or the {INJECT_LABEL} label",
                warning.trim_start_matches("keyless not injected: ")
            )));
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nesting_beyond_the_limit_is_refused_before_parsing() {
        let input = "[".repeat(200_000);
        let err = inject_documents(&input, &Options::default()).expect_err("refused");
        assert!(err.reason.contains("nested deeper than 100 levels"), "{err}");
        // Behind what only looks like a quoted string: 400 KB the parser took minutes over.
        let hidden = format!("a: x-\"\nb: {}{}\nc: y-\"\n", "[".repeat(200_000), "]".repeat(200_000));
        let err = inject_documents(&hidden, &Options::default()).expect_err("refused");
        assert!(err.reason.contains("nested deeper than 100 levels"), "{err}");
        let deep_but_fine = format!("a: {}1{}\n", "[".repeat(MAX_NESTING), "]".repeat(MAX_NESTING));
        inject_documents(&deep_but_fine, &Options::default()).expect("within the limit");
    }

    /// Each alias level multiplies by ten: 10^30 nodes if expanded.
    #[test]
    fn aliases_that_expand_too_far_are_refused() {
        let mut input = String::from("a0: &a0 [x]\n");
        for i in 1..30 {
            input.push_str(&format!("a{i}: &a{i} [{}]\n", vec![format!("*a{}", i - 1); 10].join(", ")));
        }
        let err = inject_documents(&input, &Options::default()).expect_err("refused");
        assert!(err.reason.contains("repetition limit"), "{err}");
    }
}
