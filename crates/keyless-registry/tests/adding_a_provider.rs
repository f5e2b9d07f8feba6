//! ARCHITECTURE.md's "Adding a provider" lists every file outside a provider's own crate (and the
//! emulator, where each cloud has its module) that names the clouds; this test keeps the list
//! exactly true, so a file that starts naming them fails until the list (and so the cost of a
//! new provider) says so.
//!
//! A file names the clouds when it is a `.rs` or `.toml` file git knows (tracked, or new and not
//! ignored) (docs describe the clouds by
//! nature, lock files are generated) outside `crates/keyless-{aws,gcp,azure}` and
//! `crates/keyless-emulator`, and either
//! - names a provider crate (`keyless_aws`, `keyless-gcp`, ...): it links a provider's code, so a
//!   new provider's crate is a new name there too; or
//! - names all three clouds as words `Aws`, `Gcp` and `Azure` (an enum's variants, the provider
//!   types): a closed list of clouds, which a new provider would have to join.
//!
//! Words, not substrings: `AwsContainer` or an `AZURE_CLIENT_ID` variable is one cloud's
//! protocol, which a test of that cloud names without listing the clouds.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

const PROVIDER_DIRS: [&str; 4] =
    ["crates/keyless-aws/", "crates/keyless-gcp/", "crates/keyless-azure/", "crates/keyless-emulator/"];
const THIS: &str = "crates/keyless-registry/tests/adding_a_provider.rs";
const CRATES: [&str; 6] =
    ["keyless_aws", "keyless_gcp", "keyless_azure", "keyless-aws", "keyless-gcp", "keyless-azure"];
const CLOUDS: [&str; 3] = ["Aws", "Gcp", "Azure"];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().and_then(Path::parent).expect("the workspace root")
}

/// Whether `text` holds `word` delimited by non-identifier characters.
fn has_word(text: &str, word: &str) -> bool {
    let ident = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    text.match_indices(word)
        .any(|(at, _)| !ident(text[..at].chars().next_back()) && !ident(text[at + word.len()..].chars().next()))
}

fn names_the_clouds(text: &str) -> bool {
    CRATES.iter().any(|c| has_word(text, c)) || CLOUDS.iter().all(|c| has_word(text, c))
}

/// The files that name the clouds, by the criterion above.
fn naming_files() -> BTreeSet<String> {
    let output = Command::new("git")
        .args(["ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", "*.rs", "*.toml"])
        .current_dir(root())
        .output()
        .expect("git, to list the workspace's files (this test needs a git checkout)");
    assert!(output.status.success(), "git ls-files: {}", String::from_utf8_lossy(&output.stderr));
    let listing = String::from_utf8(output.stdout).unwrap();
    listing
        .split('\0')
        .filter(|path| !path.is_empty() && !PROVIDER_DIRS.iter().any(|dir| path.starts_with(dir)))
        // This file names them to look for them.
        .filter(|path| *path != THIS)
        // A file listed but deleted in the work tree names nothing.
        .filter(|path| std::fs::read_to_string(root().join(path)).is_ok_and(|text| names_the_clouds(&text)))
        .map(str::to_owned)
        .collect()
}

/// The files ARCHITECTURE.md's "Adding a provider" lists: its bullets "- `path`".
fn documented_files() -> BTreeSet<String> {
    let text = std::fs::read_to_string(root().join("ARCHITECTURE.md")).unwrap();
    let section = text.split("\n## Adding a provider\n").nth(1).expect("ARCHITECTURE.md has `## Adding a provider`");
    let section = section.split("\n#").next().unwrap_or(section);
    section
        .lines()
        .filter_map(|line| line.trim_start().strip_prefix("- `"))
        .filter_map(|rest| rest.split_once('`').map(|(path, _)| path.to_owned()))
        .collect()
}

#[test]
fn the_files_that_name_the_clouds_are_exactly_those_architecture_md_lists() {
    let (found, documented) = (naming_files(), documented_files());
    assert!(!documented.is_empty(), "no \"- `path`\" bullets in ARCHITECTURE.md's \"Adding a provider\"");
    let undocumented: Vec<_> = found.difference(&documented).collect();
    let stale: Vec<_> = documented.difference(&found).collect();
    assert!(
        undocumented.is_empty() && stale.is_empty(),
        "ARCHITECTURE.md \"Adding a provider\" is out of date.\nname the clouds but are not listed: \
         {undocumented:?}\nlisted but name no cloud (or do not exist): {stale:?}"
    );
}

#[test]
fn the_criterion_tells_a_list_of_clouds_from_one_clouds_protocol() {
    assert!(names_the_clouds("use keyless_gcp::Gcp;"));
    assert!(names_the_clouds("keyless-azure = { workspace = true }"));
    assert!(names_the_clouds("enum Cloud { Aws, Gcp, Azure }"));
    assert!(!names_the_clouds("enum Cloud { Aws, Gcp }"), "two clouds are no list of all");
    assert!(!names_the_clouds("Endpoint::AwsContainer, GcpToken, AzureImds"));
    assert!(!names_the_clouds("AZURE_CLIENT_ID keyless_awsome my-keyless-aws-thing"));
}
