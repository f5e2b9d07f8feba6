//! `inject_documents` on every workload kind and multi-document input, against golden files
//! (tests/golden/NAME.out.yaml; `KEYLESS_UPDATE_GOLDEN=1` rewrites them, to be reviewed in the diff).

use std::path::PathBuf;

use keyless_inject::{Options, ShadowingVar, inject_documents};

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// With the part of the adapters' shadowing declarations the inputs exercise (the keyless binary
/// passes all of it).
fn options() -> Options {
    let web_identity = "AWS_ROLE_ARN/AWS_WEB_IDENTITY_TOKEN_FILE";
    let shadowing = [("AWS_ROLE_ARN", web_identity), ("AWS_WEB_IDENTITY_TOKEN_FILE", web_identity)]
        .into_iter()
        .map(|(name, group)| ShadowingVar { cloud: "aws", name, group })
        .collect();
    Options { aws_region: Some("us-east-1".to_owned()), shadowing, ..Options::default() }
}

fn read(name: &str) -> String {
    std::fs::read_to_string(golden_dir().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn check_golden(name: &str) -> String {
    let injected = inject_documents(&read(&format!("{name}.in.yaml")), &options()).expect("injects");
    let mut actual = format!("{}\n# notes:\n{}", injected.yaml, comment(&injected.notes));
    if !injected.uninjected.is_empty() {
        actual.push_str(&format!("# uninjected:\n{}", comment(&injected.uninjected)));
    }
    let path = golden_dir().join(format!("{name}.out.yaml"));
    if std::env::var_os("KEYLESS_UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &actual).expect("writes the golden file");
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(actual == expected, "{name}: output differs from {}:\n{actual}", path.display());
    injected.yaml
}

fn comment(notes: &[String]) -> String {
    notes.iter().map(|n| format!("# {n}\n")).collect()
}

#[test]
fn injects_every_workload_kind_and_passes_other_documents_through() {
    let output = check_golden("every-kind");
    assert_eq!(output.matches("name: keyless\n").count(), 7, "one sidecar per opted-in workload");
}

#[test]
fn pod_annotations_are_ignored_user_variables_win_and_unsafe_pods_are_left_alone() {
    check_golden("overrides");
}

#[test]
fn injecting_injected_documents_changes_nothing() {
    for name in ["every-kind", "overrides"] {
        let once = inject_documents(&read(&format!("{name}.in.yaml")), &options()).expect("injects").yaml;
        let twice = inject_documents(&once, &options()).expect("injects again").yaml;
        assert_eq!(once, twice, "{name}");
    }
}

#[test]
fn changed_annotations_re_inject() {
    let input = read("every-kind.in.yaml");
    let injected = inject_documents(&input, &options()).expect("injects").yaml;
    let without_azure = |text: &str| {
        text.lines().filter(|l| !l.trim_start().starts_with("azure.workload.identity/")).collect::<Vec<_>>().join("\n")
    };
    let reinjected = inject_documents(&without_azure(&injected), &options()).expect("re-injects").yaml;
    let fresh = inject_documents(&without_azure(&input), &options()).expect("injects").yaml;
    assert_eq!(reinjected, fresh);
    assert!(!reinjected.contains("AZURE_POD_IDENTITY_AUTHORITY_HOST"));
}

#[test]
fn a_malformed_annotation_is_an_error_naming_the_document_and_the_annotation() {
    let input = read("every-kind.in.yaml").replace("arn:aws:iam::111122223333:role/app", "app-role");
    let err = inject_documents(&input, &options()).expect_err("malformed role ARN").to_string();
    assert!(err.starts_with("document 3 (Pod pod): ServiceAccount app: metadata.annotations: annotation eks.amazonaws.com/role-arn on the ServiceAccount"), "{err}");
}

#[test]
fn a_field_of_the_wrong_type_is_an_error_naming_the_document_and_the_field() {
    let input = "apiVersion: batch/v1\nkind: Job\nmetadata: {name: j}\nspec:\n  template:\n    metadata:\n      labels: {keyless.dev/inject: \"true\"}\n      annotations: {eks.amazonaws.com/role-arn: \"arn:aws:iam::111122223333:role/a\"}\n    spec:\n      containers: {name: app}\n";
    let err = inject_documents(input, &options()).expect_err("containers is not a list").to_string();
    assert_eq!(err, "document 1 (Job j): spec.template.spec.containers: expected a list");
    let err = inject_documents("a: [1\n", &options()).expect_err("syntax").to_string();
    assert!(err.starts_with("document 1: not valid YAML"), "{err}");
}
