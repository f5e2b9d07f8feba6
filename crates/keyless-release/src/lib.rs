//! What a release ships, read from the repository: the workspace version (Cargo.toml, the one place
//! it is written), the shell blocks of the README's Install section, the install steps of the CI
//! examples, and every place a text names a release's version. Its tests check that the version
//! is the same everywhere (`tests/version.rs`), that the revision crates/keyless/build.rs gives
//! `keyless --version` follows commits without rebuilding keyless otherwise (`tests/revision.rs`),
//! that the release build's environment hides the commit time from the compilers
//! (`tests/release_env.rs`),
//! and run the install commands against a `dist/` written by `scripts/release`
//! (`tests/install_docs.rs`).
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The repository's root (this crate is `crates/keyless-release`).
pub fn workspace_root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    root.canonicalize().unwrap_or(root)
}

/// The workspace version, `[workspace.package] version` of the root Cargo.toml.
pub fn workspace_version(root: &Path) -> Result<String, String> {
    let path = root.join("Cargo.toml");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let manifest: toml::Table = text.parse().map_err(|e| format!("{}: {e}", path.display()))?;
    manifest
        .get("workspace")
        .and_then(|w| w.get("package"))
        .and_then(|p| p.get("version"))
        .and_then(|v| v.as_str())
        .map(str::to_owned)
        .ok_or_else(|| format!("{}: no [workspace.package] version", path.display()))
}

/// A fenced `sh` block of a Markdown text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShellBlock {
    /// The line of its opening fence (1-based), for messages.
    pub line: usize,
    pub code: String,
}

impl ShellBlock {
    /// What the block needs that no test machine has (its first line `# needs your registry`
    /// says `your registry`): such a block is shown to readers and not run.
    pub fn needs(&self) -> Option<&str> {
        self.code.lines().next()?.trim().strip_prefix("# needs ")
    }
}

/// The `## HEADING` section of a Markdown text: from the heading up to the next `## ` heading
/// that is not inside a code fence.
pub fn section<'a>(markdown: &'a str, heading: &str) -> Option<&'a str> {
    let wanted = format!("## {heading}");
    let mut start = None;
    let mut in_fence = false;
    let mut offset = 0;
    for line in markdown.split_inclusive('\n') {
        let trimmed = line.trim_end();
        if trimmed.starts_with("```") {
            in_fence = !in_fence;
        } else if !in_fence && trimmed.starts_with("## ") {
            match start {
                Some(begin) => return Some(&markdown[begin..offset]),
                None if trimmed == wanted => start = Some(offset),
                None => {}
            }
        }
        offset += line.len();
    }
    start.map(|begin| &markdown[begin..])
}

/// Every fenced block of a Markdown text whose info string is `sh`, `bash` or `shell`.
/// `first_line` is the line number of the text's first line (for a section of a larger file).
pub fn shell_blocks(markdown: &str, first_line: usize) -> Vec<ShellBlock> {
    let mut blocks = Vec::new();
    let mut open: Option<(usize, bool, String)> = None;
    for (index, line) in markdown.lines().enumerate() {
        let trimmed = line.trim();
        match open.take() {
            None => {
                if let Some(info) = trimmed.strip_prefix("```") {
                    let shell = matches!(info.trim(), "sh" | "bash" | "shell");
                    open = Some((first_line + index, shell, String::new()));
                }
            }
            Some((line_no, shell, code)) if trimmed == "```" => {
                if shell {
                    blocks.push(ShellBlock { line: line_no, code });
                }
            }
            Some((line_no, shell, mut code)) => {
                code.push_str(line);
                code.push('\n');
                open = Some((line_no, shell, code));
            }
        }
    }
    blocks
}

/// The 1-based line at which `part` (a slice of `whole`) starts.
pub fn line_of(whole: &str, part: &str) -> usize {
    let offset = (part.as_ptr() as usize).saturating_sub(whole.as_ptr() as usize).min(whole.len());
    whole[..offset].matches('\n').count() + 1
}

/// A GitHub Actions step: its `run` script and its `env`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkflowStep {
    pub run: String,
    pub env: BTreeMap<String, String>,
}

/// The step named `name` of any job of a GitHub Actions workflow.
pub fn github_step(workflow: &str, name: &str) -> Result<WorkflowStep, String> {
    let doc: yaml_serde::Value = yaml_serde::from_str(workflow).map_err(|e| e.to_string())?;
    let jobs = doc.get("jobs").and_then(|j| j.as_mapping()).ok_or("no jobs")?;
    for job in jobs.values() {
        let Some(steps) = job.get("steps").and_then(|s| s.as_sequence()) else { continue };
        for step in steps {
            if step.get("name").and_then(|n| n.as_str()) != Some(name) {
                continue;
            }
            let run = step.get("run").and_then(|r| r.as_str()).ok_or_else(|| format!("step {name:?} has no run"))?;
            return Ok(WorkflowStep { run: run.to_owned(), env: string_map(step.get("env")) });
        }
    }
    Err(format!("no step named {name:?}"))
}

/// A GitLab CI job: its `before_script` lines and its `variables`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitlabJob {
    pub before_script: Vec<String>,
    pub variables: BTreeMap<String, String>,
}

/// The job `name` of a GitLab CI pipeline.
pub fn gitlab_job(pipeline: &str, name: &str) -> Result<GitlabJob, String> {
    let doc: yaml_serde::Value = yaml_serde::from_str(pipeline).map_err(|e| e.to_string())?;
    let job = doc.get(name).ok_or_else(|| format!("no job {name:?}"))?;
    let before_script = job
        .get("before_script")
        .and_then(|s| s.as_sequence())
        .ok_or_else(|| format!("job {name:?} has no before_script"))?
        .iter()
        .map(|line| line.as_str().map(str::to_owned).ok_or_else(|| format!("not a string: {line:?}")))
        .collect::<Result<_, _>>()?;
    Ok(GitlabJob { before_script, variables: string_map(job.get("variables")) })
}

fn string_map(value: Option<&yaml_serde::Value>) -> BTreeMap<String, String> {
    let Some(mapping) = value.and_then(|v| v.as_mapping()) else { return BTreeMap::new() };
    mapping.iter().filter_map(|(k, v)| Some((k.as_str()?.to_owned(), v.as_str()?.to_owned()))).collect()
}

/// A release version a text names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionMention {
    /// 1-based line.
    pub line: usize,
    pub version: String,
    /// What named it, e.g. `ghcr.io/keyless-dev/keyless:` or `keyless-sidecar-`.
    pub by: String,
}

/// Where the release's files and images carry its version. A file name counts only when a digit
/// follows the prefix (`keyless-dev` is not a version).
const VERSIONED_PREFIXES: [&str; 6] =
    ["keyless-", "keyless-sidecar-", "keyless-image-", "keyless-webhook-image-", "releases/download/v", "appVersion: "];

/// Every version of keyless a text names: image tags under `ghcr.io/keyless-dev/`, the release's
/// file names (`keyless-0.1.0-x86_64-linux.tar.gz`, `keyless-0.1.0.tgz`), download URLs (`v0.1.0`).
/// A version is its digits and dots (pre-release suffixes are not told apart from the file name's
/// `-x86_64`).
pub fn versions_named(text: &str) -> Vec<VersionMention> {
    let mut found = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let mut push = |by: String, rest: &str| {
            if let Some(version) = leading_version(rest) {
                found.push(VersionMention { line: index + 1, version, by });
            }
        };
        for (at, _) in line.match_indices("ghcr.io/keyless-dev/") {
            let rest = &line[at + "ghcr.io/keyless-dev/".len()..];
            let name_len = rest.find(|c: char| !(c.is_ascii_lowercase() || c == '-')).unwrap_or(rest.len());
            if let Some(tag) = rest[name_len..].strip_prefix(':') {
                push(format!("ghcr.io/keyless-dev/{}:", &rest[..name_len]), tag);
            }
        }
        for prefix in VERSIONED_PREFIXES {
            for (at, _) in line.match_indices(prefix) {
                push(prefix.to_owned(), line[at + prefix.len()..].trim_start_matches('"'));
            }
        }
    }
    found
}

/// `1.2.3` from `1.2.3-x86_64...`, `1.2.3.tgz`, `1.2.3"`; None unless it starts with a digit and
/// has a dot.
fn leading_version(text: &str) -> Option<String> {
    if !text.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    let end = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let version = text[..end].trim_end_matches('.');
    version.contains('.').then(|| version.to_owned())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const MARKDOWN: &str = "# t\n\n## Install\n\ntext\n\n```sh\ncd dist\n## not a heading\n```\n\n```yaml\na: 1\n```\n\n```sh\n# needs your cluster\nhelm install\n```\n\n## Next\n\n```sh\nnot in the section\n```\n";

    #[test]
    fn a_section_ends_at_the_next_heading_outside_fences() {
        let install = section(MARKDOWN, "Install").unwrap();
        assert!(install.starts_with("## Install\n") && install.ends_with("```\n\n"), "{install:?}");
        assert!(install.contains("## not a heading") && !install.contains("## Next"));
        assert_eq!(line_of(MARKDOWN, install), 3);
        assert!(section(MARKDOWN, "Missing").is_none());
    }

    #[test]
    fn shell_blocks_are_the_sh_fences_with_their_line_and_needs() {
        let install = section(MARKDOWN, "Install").unwrap();
        let blocks = shell_blocks(install, line_of(MARKDOWN, install));
        assert_eq!(blocks.len(), 2, "{blocks:?}");
        assert_eq!(blocks[0], ShellBlock { line: 7, code: "cd dist\n## not a heading\n".to_owned() });
        assert_eq!(blocks[0].needs(), None);
        assert_eq!(blocks[1].needs(), Some("your cluster"));
    }

    #[test]
    fn versions_are_found_in_tags_file_names_and_urls() {
        let text = "image: ghcr.io/keyless-dev/keyless:0.1.0  # x\n\
                    tar -xzf keyless-0.2.0-x86_64-linux.tar.gz keyless-dev keyless:dev\n\
                    helm show chart dist/keyless-0.3.0.tgz; KEYLESS: https://x/releases/download/v0.4.0\n\
                    ghcr.io/keyless-dev/keyless-webhook:1.10.2 keyless-webhook-image-5.0.0-amd64.oci.tar\n";
        let found: Vec<_> = versions_named(text).into_iter().map(|m| (m.line, m.version, m.by)).collect();
        let expected = [
            (1, "0.1.0", "ghcr.io/keyless-dev/keyless:"),
            (2, "0.2.0", "keyless-"),
            (3, "0.3.0", "keyless-"),
            (3, "0.4.0", "releases/download/v"),
            (4, "1.10.2", "ghcr.io/keyless-dev/keyless-webhook:"),
            (4, "5.0.0", "keyless-webhook-image-"),
        ];
        let expected: Vec<_> = expected.iter().map(|(l, v, b)| (*l, v.to_string(), b.to_string())).collect();
        assert_eq!(found, expected);
    }

    #[test]
    fn ci_install_steps_are_read_from_the_yaml() {
        let workflow = "jobs:\n  a:\n    steps:\n      - run: x\n      - name: Install keyless\n        env:\n          K: v\n        run: |\n          one\n          two\n";
        let step = github_step(workflow, "Install keyless").unwrap();
        assert_eq!(step.run, "one\ntwo\n");
        assert_eq!(step.env.get("K").map(String::as_str), Some("v"));
        assert!(github_step(workflow, "Other").is_err());
        let pipeline = "deploy:\n  variables:\n    K: v\n  before_script:\n    - one\n    - two\n";
        let job = gitlab_job(pipeline, "deploy").unwrap();
        assert_eq!(job.before_script, ["one", "two"]);
        assert_eq!(job.variables.get("K").map(String::as_str), Some("v"));
    }
}
