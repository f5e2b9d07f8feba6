//! ARCHITECTURE.md: test-support is only ever a dev-dependency. A production crate that depended on
//! it would link the emulator into what users run.
#![allow(clippy::unwrap_used)]

use keyless_test_support::binary::workspace_root;

#[test]
fn no_manifest_depends_on_test_support_outside_dev_dependencies() {
    let root = workspace_root();
    let mut manifests: Vec<_> = std::fs::read_dir(root.join("crates"))
        .unwrap()
        .map(|e| e.unwrap().path().join("Cargo.toml"))
        .filter(|p| p.exists())
        .collect();
    manifests.extend([root.join("tests/Cargo.toml"), root.join("fuzz/Cargo.toml")].into_iter().filter(|p| p.exists()));
    assert!(manifests.len() >= 9, "too few manifests found: {manifests:?}");
    let mut users = 0;
    for manifest in &manifests {
        // keyless-bench measures keyless with what the tests drive it with (ports, endpoints,
        // AdmissionReviews); a tool run by hand, never built into what users run.
        if manifest.ends_with("crates/keyless-bench/Cargo.toml") {
            continue;
        }
        let toml: toml::Table = std::fs::read_to_string(manifest).unwrap().parse().unwrap();
        for section in ["dependencies", "build-dependencies"] {
            let deps = toml.get(section).and_then(|d| d.as_table());
            assert!(
                deps.is_none_or(|d| !d.contains_key("keyless-test-support")),
                "{} has keyless-test-support in [{section}]: it may only be a dev-dependency",
                manifest.display()
            );
        }
        let targets = toml.get("target").and_then(|t| t.as_table()).into_iter().flat_map(|t| t.values());
        for target in targets {
            let deps = target.get("dependencies").and_then(|d| d.as_table());
            assert!(deps.is_none_or(|d| !d.contains_key("keyless-test-support")), "{}", manifest.display());
        }
        let dev = toml.get("dev-dependencies").and_then(|d| d.as_table());
        users += usize::from(dev.is_some_and(|d| d.contains_key("keyless-test-support")));
    }
    assert!(users >= 5, "the crates' tests share test-support: only {users} manifests use it");
}
