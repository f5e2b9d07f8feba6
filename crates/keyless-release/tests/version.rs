//! One version everywhere: the workspace version (Cargo.toml) is the only one written by hand;
//! the chart's `version`/`appVersion`, the image `keyless inject` and the webhook default to, the
//! images the chart deploys, and every version the docs and examples name must equal it.
//!
//! Chart.yaml keeps its own copy because Helm reads the chart from its directory (`helm install
//! charts/keyless`, the chart's tests); this test fails when the copy disagrees, and
//! `scripts/release` stamps the package from Cargo.toml (`helm package --version --app-version`)
//! and refuses a disagreeing Chart.yaml. Bumping the version: Cargo.toml, then what this test names.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use keyless_release::{versions_named, workspace_root, workspace_version};

fn version() -> String {
    workspace_version(&workspace_root()).unwrap()
}

fn yaml(path: &Path) -> yaml_serde::Value {
    yaml_serde::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn str_at<'a>(value: &'a yaml_serde::Value, keys: &[&str]) -> &'a str {
    let mut at = value;
    for key in keys {
        at = at.get(*key).unwrap_or_else(|| panic!("no {keys:?}"));
    }
    at.as_str().unwrap_or_else(|| panic!("{keys:?} is not a string"))
}

#[test]
fn the_crates_are_the_workspace_version() {
    // Every crate says `version.workspace = true`, so CARGO_PKG_VERSION is the workspace's.
    assert_eq!(env!("CARGO_PKG_VERSION"), version());
}

#[test]
fn the_chart_is_the_workspace_version_and_its_images_follow_it() {
    let root = workspace_root();
    let chart = yaml(&root.join("charts/keyless/Chart.yaml"));
    let version = version();
    assert_eq!(str_at(&chart, &["version"]), version, "charts/keyless/Chart.yaml version");
    assert_eq!(str_at(&chart, &["appVersion"]), version, "charts/keyless/Chart.yaml appVersion");

    // Empty tags: the templates use the chart's appVersion (templates/deployment.yaml).
    let values = yaml(&root.join("charts/keyless/values.yaml"));
    for image in ["webhook", "sidecar"] {
        assert_eq!(str_at(&values, &[image, "image", "tag"]), "", "{image}.image.tag must follow appVersion");
    }
    let deployment = std::fs::read_to_string(root.join("charts/keyless/templates/deployment.yaml")).unwrap();
    for image in ["webhook", "sidecar"] {
        let follows = format!("${image}Tag := .Values.{image}.image.tag | default .Chart.AppVersion");
        assert!(deployment.contains(&follows), "templates/deployment.yaml no longer has {follows:?}");
    }

    // The sidecar the chart's webhook injects is the one `keyless inject` defaults to.
    let sidecar = format!("{}:{}", str_at(&values, &["sidecar", "image", "repository"]), version);
    assert_eq!(sidecar, keyless_inject::DEFAULT_IMAGE, "values.yaml sidecar vs keyless inject --image's default");
    let webhook = str_at(&values, &["webhook", "image", "repository"]);
    assert_eq!(webhook, "ghcr.io/keyless-dev/keyless-webhook");
}

#[test]
fn the_release_script_tags_the_images_the_chart_and_inject_use() {
    let root = workspace_root();
    let script = std::fs::read_to_string(root.join("scripts/release")).unwrap();
    let registry = script.lines().find_map(|l| l.strip_prefix("registry=")).expect("scripts/release sets registry=");
    let values = yaml(&root.join("charts/keyless/values.yaml"));
    assert_eq!(str_at(&values, &["sidecar", "image", "repository"]), format!("{registry}/keyless"));
    assert_eq!(str_at(&values, &["webhook", "image", "repository"]), format!("{registry}/keyless-webhook"));
    // Node mode's DaemonSet runs the full CLI's image too: the release builds no other with
    // `keyless node`, and the full build must have the feature.
    assert_eq!(str_at(&values, &["node", "image", "repository"]), format!("{registry}/keyless-webhook"));
    let full = script.lines().find(|l| l.starts_with("build full ")).expect("scripts/release builds the full CLI");
    assert!(full.contains("node"), "the full CLI is built without keyless node: {full}");
    for tagged in ["image sidecar \"$registry/keyless\"", "image full \"$registry/keyless-webhook\""] {
        assert!(script.contains(tagged), "scripts/release no longer builds {tagged:?}");
    }
}

/// The files that name a release's version: the docs, the examples, the chart, the injection's
/// golden files.
fn versioned_files(root: &Path) -> Vec<PathBuf> {
    let mut files = vec![root.join("README.md")];
    for dir in ["docs", "examples", "charts", "crates/keyless-inject/tests/golden"] {
        collect(&root.join(dir), &mut files);
    }
    files.push(root.join("tests/tests/chart.rs"));
    files
}

fn collect(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect(&path, files);
        } else if path
            .extension()
            .is_some_and(|e| ["md", "yaml", "yml", "toml", "rs", "tpl", "txt"].iter().any(|x| e == *x))
        {
            files.push(path);
        }
    }
}

#[test]
fn every_version_the_docs_and_examples_name_is_the_workspace_version() {
    let root = workspace_root();
    let version = version();
    let mut wrong = Vec::new();
    let mut seen = 0;
    for path in versioned_files(&root) {
        let text = std::fs::read_to_string(&path).unwrap();
        for mention in versions_named(&text) {
            seen += 1;
            if mention.version != version {
                let file = path.strip_prefix(&root).unwrap().display().to_string();
                wrong.push(format!("{file}:{}: {}{}", mention.line, mention.by, mention.version));
            }
        }
    }
    assert!(wrong.is_empty(), "the workspace version is {version}; these name another:\n{}", wrong.join("\n"));
    // The README's Install section, both CI examples, the Kubernetes examples, Chart.yaml at least.
    assert!(seen >= 20, "only {seen} mentions found: the search no longer sees the versions");
}

#[test]
fn the_changelog_keeps_a_changelog() {
    let changelog = std::fs::read_to_string(workspace_root().join("CHANGELOG.md")).unwrap();
    assert!(changelog.starts_with("# Changelog\n"));
    assert!(changelog.contains("https://keepachangelog.com/"));
    assert!(changelog.contains("\n## [Unreleased]\n"), "an [Unreleased] section for what is not released yet");
    // Every released version has its section, newest first; the workspace version is either
    // released (its section exists) or the one [Unreleased] becomes.
    let version = version();
    let released = changelog.contains(&format!("\n## [{version}] - "));
    let upcoming = changelog.contains(&format!("release, {version}"));
    assert!(released || upcoming, "CHANGELOG.md says nothing of {version}");
}
