//! Setting aside the local credentials SDKs would use instead of keyless's endpoints, for a
//! program `keyless exec` runs or `keyless dev`'s env file serves: what each served provider
//! declares ([`keyless_provider::Shadowing`]), applied to this process's environment and home.
//!
//! Variables are removed; credential files are replaced by copies without their credentials (or
//! an empty directory) in a private directory (0700, files 0600), removed when the plan is
//! dropped. The files themselves are never changed.

use std::path::{Path, PathBuf};

use keyless_core::files;
use keyless_provider::{ShadowFileKind, Shadowing, StandIn};

/// Settings files larger than this are left alone (and reported): a credentials file is a few KB.
const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// The longest path, section list or value one item of the report shows.
const MAX_SHOWN_BYTES: usize = 512;

/// Text from the environment or a settings file as the user reads it on stderr: escaped (a
/// profile name with an ESC in it must not rewrite the terminal) and bounded.
fn shown(text: &str) -> String {
    keyless_core::printable::printable(text, MAX_SHOWN_BYTES).into_owned()
}

/// What to change in the program's environment.
#[derive(Debug, Default)]
pub struct SetAside {
    /// Variables to remove.
    pub remove: Vec<&'static str>,
    /// Variables to set (to the private copies).
    pub set: Vec<(&'static str, String)>,
    /// What was set aside, one item per source, for the one line the user reads.
    pub report: Vec<String>,
    /// Sources that could not be set aside, and why.
    pub warnings: Vec<String>,
    /// The private directory holding the copies, removed on drop.
    dir: Option<tempfile::TempDir>,
}

impl SetAside {
    /// `keyless exec: set aside A, B WHERE` (or nothing to say).
    pub fn line(&self, who: &str, r#where: &str) -> Option<String> {
        (!self.report.is_empty()).then(|| format!("{who}: set aside {} {where}", self.report.join(", ")))
    }

    /// The private directory (0700: tempfile's default mode is the umask's), created on first use.
    fn dir(&mut self) -> Result<&Path, String> {
        use std::os::unix::fs::PermissionsExt as _;
        if self.dir.is_none() {
            let dir = tempfile::Builder::new()
                .prefix("keyless-exec-")
                .permissions(std::fs::Permissions::from_mode(0o700))
                .tempdir()
                .map_err(|e| format!("cannot create a private directory for the command's settings: {e}"))?;
            self.dir = Some(dir);
        }
        Ok(self.dir.as_ref().map(tempfile::TempDir::path).unwrap_or(Path::new("/")))
    }
}

/// Where this process's environment and files come from (tests give others).
pub struct Host<'a> {
    pub env: &'a dyn Fn(&str) -> Option<String>,
    pub home: Option<PathBuf>,
}

impl Host<'_> {
    pub fn process() -> Host<'static> {
        Host { env: &|name| std::env::var(name).ok(), home: std::env::var_os("HOME").map(PathBuf::from) }
    }

    /// `~/x` for a path under the home directory, as users write it.
    fn shown(&self, path: &Path) -> String {
        match self.home.as_deref().and_then(|h| path.strip_prefix(h).ok()) {
            Some(rest) => shown(&format!("~/{}", rest.display())),
            None => shown(&path.display().to_string()),
        }
    }
}

/// Writes a provider's stand-in credential file into a directory
/// ([`keyless_provider::Started::stand_in`]): `(provider, dir)`.
pub type StandIns<'a> = &'a dyn Fn(&'static str, &Path) -> Result<Option<StandIn>, String>;

/// No provider has a stand-in.
#[cfg(test)]
pub fn no_stand_ins(_: &'static str, _: &Path) -> Result<Option<StandIn>, String> {
    Ok(None)
}

/// The plan for the providers in `shadowing`, keeping the variables (or file variables) named
/// in `keep`. A credential file that SDKs read at its default place whatever a variable says is
/// met by the provider's stand-in (`stand_ins`), when it has one.
pub fn plan(
    shadowing: &[(&'static str, &'static Shadowing)],
    host: &Host<'_>,
    keep: &[String],
    stand_ins: StandIns<'_>,
) -> Result<SetAside, String> {
    let mut out = SetAside::default();
    let kept = |name: &str| keep.iter().any(|k| k == name);
    for (provider, shadowing) in shadowing {
        let mut groups: Vec<&'static str> = Vec::new();
        for var in shadowing.vars.iter().filter(|v| !kept(v.name)) {
            let Some(value) = (host.env)(var.name) else { continue };
            out.remove.push(var.name);
            if !value.is_empty() && !groups.contains(&var.group) {
                groups.push(var.group);
            }
        }
        out.report.extend(groups.iter().map(|g| (*g).to_owned()));
        let mut profiles: Vec<(&'static str, Vec<String>)> = Vec::new();
        for file in shadowing.files.iter().filter(|f| !kept(f.var)) {
            let path = match (host.env)(file.var).filter(|v| !v.is_empty()) {
                Some(path) => PathBuf::from(path),
                None => match &host.home {
                    Some(home) => home.join(file.default),
                    None => continue,
                },
            };
            match file.kind {
                ShadowFileKind::Filtered { filter } => {
                    let text = match read_settings(&path) {
                        Ok(Some(text)) => text,
                        Ok(None) => continue,
                        Err(e) => {
                            out.warnings.push(format!("{}: {e}", host.shown(&path)));
                            continue;
                        }
                    };
                    let filtered = filter(&text);
                    if let Some(var) = file.profile_var {
                        profiles.push((var, filtered.kept_profiles.clone()));
                    }
                    if filtered.removed.is_empty() {
                        continue;
                    }
                    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                    let copy = out.dir()?.join(format!("{}-{name}", file.var.to_ascii_lowercase()));
                    files::write_atomically(&copy, filtered.text.as_bytes(), 0o600)
                        .map_err(|e| format!("cannot write {}: {e}", copy.display()))?;
                    out.set.push((file.var, copy.display().to_string()));
                    out.report.push(format!("{} {}", host.shown(&path), shown(&filtered.removed.join(" "))));
                }
                ShadowFileKind::DirWith { file: inner, read_at_default_by } => {
                    // No variable moves the file for libraries that read it under HOME: the
                    // provider's stand-in, which they rank above it, leads them back to keyless;
                    // without one they are told.
                    let mut stood_in = None;
                    if let (Some(who), Some(home)) = (read_at_default_by, &host.home) {
                        let at_default = home.join(file.default).join(inner);
                        if at_default.exists() {
                            let dir = out.dir()?.to_owned();
                            match stand_ins(provider, &dir)? {
                                Some(stand_in) if !kept(stand_in.var) => {
                                    let note = stand_in.note.map(|n| format!("; {n}")).unwrap_or_default();
                                    out.report.push(format!(
                                        "{} ({} set to keyless's stand-in{note})",
                                        host.shown(&at_default),
                                        stand_in.var
                                    ));
                                    out.set.push((stand_in.var, stand_in.path.display().to_string()));
                                    stood_in = Some(at_default);
                                }
                                _ => out.warnings.push(format!("{} for {who}", host.shown(&at_default))),
                            }
                        }
                    }
                    let held = path.join(inner);
                    if !held.exists() {
                        continue;
                    }
                    let empty = out.dir()?.join(file.var.to_ascii_lowercase());
                    std::fs::create_dir_all(&empty).map_err(|e| format!("cannot create {}: {e}", empty.display()))?;
                    out.set.push((file.var, empty.display().to_string()));
                    if stood_in.as_ref() != Some(&held) {
                        out.report.push(host.shown(&held));
                    }
                }
            }
        }
        // A profile variable naming a section no settings file has (or with no settings file at
        // all) would make SDKs fail.
        let mut vars: Vec<&'static str> = shadowing.files.iter().filter_map(|f| f.profile_var).collect();
        vars.dedup();
        for var in vars.into_iter().filter(|v| !kept(v)) {
            let Some(value) = (host.env)(var).filter(|v| !v.is_empty()) else { continue };
            if !profiles.iter().any(|(v, names)| *v == var && names.contains(&value)) {
                out.remove.push(var);
                out.report.push(format!("{var}={}", shown(&value)));
            }
        }
    }
    Ok(out)
}

/// The file's text; `None` when it does not exist.
fn read_settings(path: &Path) -> Result<Option<String>, String> {
    match keyless_core::read_regular_file(path, MAX_FILE_BYTES) {
        Ok(bytes) => Ok(Some(String::from_utf8_lossy(&bytes).into_owned())),
        Err(keyless_core::RegularFileError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("left as it is: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn aws() -> Vec<(&'static str, &'static Shadowing)> {
        crate::providers::shadowing(["aws"])
    }

    #[test]
    fn aws_keys_web_identity_and_credential_profiles_are_set_aside() {
        let home = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(home.path().join(".aws")).expect("mkdir");
        std::fs::write(home.path().join(".aws/credentials"), "[default]\naws_access_key_id = AKIA\n").expect("write");
        std::fs::write(home.path().join(".aws/config"), "[default]\nregion = eu-west-1\n").expect("write");
        let env: HashMap<&str, &str> = [
            ("AWS_ROLE_ARN", "arn:aws:iam::1:role/other"),
            ("AWS_WEB_IDENTITY_TOKEN_FILE", "/t"),
            ("AWS_SECRET_ACCESS_KEY", "s"),
            ("AWS_PROFILE", "default"),
        ]
        .into();
        let lookup = |n: &str| env.get(n).map(|v| (*v).to_owned());
        let host = Host { env: &lookup, home: Some(home.path().to_owned()) };
        let plan = plan(&aws(), &host, &[], &no_stand_ins).expect("plan");
        assert_eq!(
            plan.report,
            [
                "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY",
                "AWS_ROLE_ARN/AWS_WEB_IDENTITY_TOKEN_FILE",
                "~/.aws/credentials [default]"
            ]
        );
        assert!(!plan.remove.contains(&"AWS_PROFILE"), "the profile still exists: {:?}", plan.remove);
        let (var, copy) = &plan.set[0];
        assert_eq!(*var, "AWS_SHARED_CREDENTIALS_FILE");
        assert_eq!(std::fs::read_to_string(copy).expect("copy"), "[default]\n");
        assert_private(Path::new(copy));
        let line = plan.line("keyless exec", "for the command").expect("a line");
        assert!(line.starts_with("keyless exec: set aside AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "), "{line}");
        let kept = plan_with_keep(&host);
        assert!(!kept.remove.contains(&"AWS_ROLE_ARN"), "{:?}", kept.remove);
    }

    /// Only the user reads the copy and its directory: 0600 in 0700.
    fn assert_private(copy: &Path) {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode(copy), 0o600, "{}", copy.display());
        let dir = copy.parent().expect("the private directory");
        assert_eq!(mode(dir), 0o700, "{}", dir.display());
    }

    fn plan_with_keep(host: &Host<'_>) -> SetAside {
        plan(&aws(), host, &["AWS_ROLE_ARN".to_owned(), "AWS_WEB_IDENTITY_TOKEN_FILE".to_owned()], &no_stand_ins)
            .expect("plan")
    }

    #[test]
    fn a_profile_no_file_has_is_set_aside_and_the_copies_go_away() {
        let env: HashMap<&str, &str> = [("AWS_PROFILE", "gone")].into();
        let lookup = |n: &str| env.get(n).map(|v| (*v).to_owned());
        let home = tempfile::tempdir().expect("tempdir");
        let host = Host { env: &lookup, home: Some(home.path().to_owned()) };
        let plan = plan(&aws(), &host, &[], &no_stand_ins).expect("plan");
        assert_eq!(plan.report, ["AWS_PROFILE=gone"]);
        assert_eq!(plan.remove, ["AWS_PROFILE"]);
    }

    /// The report is read on a terminal: a value or a section name cannot rewrite it.
    #[test]
    fn the_report_escapes_what_the_environment_and_the_files_hold() {
        let home = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(home.path().join(".aws")).expect("mkdir");
        std::fs::write(home.path().join(".aws/credentials"), "[x\u{1b}[2J]\naws_access_key_id = AKIA\n")
            .expect("write");
        let env: HashMap<&str, &str> = [("AWS_PROFILE", "gone\u{1b}[2J")].into();
        let lookup = |n: &str| env.get(n).map(|v| (*v).to_owned());
        let host = Host { env: &lookup, home: Some(home.path().to_owned()) };
        let plan = plan(&aws(), &host, &[], &no_stand_ins).expect("plan");
        assert_eq!(plan.report, ["~/.aws/credentials [x\\u{1b}[2J]", "AWS_PROFILE=gone\\u{1b}[2J"]);
    }

    #[test]
    fn gcloud_adc_file_points_cloudsdk_config_at_an_empty_dir() {
        let home = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(home.path().join(".config/gcloud")).expect("mkdir");
        std::fs::write(home.path().join(".config/gcloud/application_default_credentials.json"), "{}").expect("write");
        let lookup = |_: &str| None;
        let host = Host { env: &lookup, home: Some(home.path().to_owned()) };
        let plan = plan(&crate::providers::shadowing(["gcp"]), &host, &[], &no_stand_ins).expect("plan");
        assert_eq!(plan.report, ["~/.config/gcloud/application_default_credentials.json"]);
        assert_eq!(plan.warnings.len(), 1, "{:?}", plan.warnings);
        assert!(
            plan.warnings[0].starts_with("~/.config/gcloud/application_default_credentials.json for Go, Node and Rust"),
            "{:?}",
            plan.warnings
        );
        let (var, dir) = &plan.set[0];
        assert_eq!(*var, "CLOUDSDK_CONFIG");
        let dir = PathBuf::from(dir);
        assert_eq!(std::fs::read_dir(&dir).expect("empty dir").count(), 0);
        drop(plan);
        assert!(!dir.exists(), "the private directory is removed with the plan");
    }

    /// Go, Node and Rust read gcloud's file under HOME whatever CLOUDSDK_CONFIG names: an empty
    /// CLOUDSDK_CONFIG directory does not set it aside for them, and the user is told.
    #[test]
    fn gcloud_adc_file_under_home_is_reported_whatever_cloudsdk_config_names() {
        let home = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(home.path().join(".config/gcloud")).expect("mkdir");
        std::fs::write(home.path().join(".config/gcloud/application_default_credentials.json"), "{}").expect("write");
        let elsewhere = tempfile::tempdir().expect("tempdir");
        let elsewhere_path = elsewhere.path().display().to_string();
        let lookup = |n: &str| (n == "CLOUDSDK_CONFIG").then(|| elsewhere_path.clone());
        let host = Host { env: &lookup, home: Some(home.path().to_owned()) };
        let plan = plan(&crate::providers::shadowing(["gcp"]), &host, &[], &no_stand_ins).expect("plan");
        assert!(plan.report.is_empty(), "nothing in CLOUDSDK_CONFIG to set aside: {:?}", plan.report);
        assert!(plan.set.is_empty(), "{:?}", plan.set);
        assert_eq!(plan.warnings.len(), 1, "{:?}", plan.warnings);
        assert!(plan.warnings[0].contains("revoke"), "{:?}", plan.warnings);
        // Kept on purpose: no word about it.
        let kept =
            super::plan(&crate::providers::shadowing(["gcp"]), &host, &["CLOUDSDK_CONFIG".to_owned()], &no_stand_ins)
                .expect("plan");
        assert!(kept.warnings.is_empty(), "{:?}", kept.warnings);
    }

    /// A stand-in written by the provider into the private directory.
    fn gcp_stand_in(provider: &'static str, dir: &Path) -> Result<Option<StandIn>, String> {
        assert_eq!(provider, "gcp");
        let path = dir.join("stand-in.json");
        std::fs::write(&path, "{}").map_err(|e| e.to_string())?;
        Ok(Some(StandIn { var: "GOOGLE_APPLICATION_CREDENTIALS", path, note: Some("a note") }))
    }

    /// With the provider's stand-in, the file under HOME is met for every SDK: the stand-in's
    /// variable, which they rank above it, points into the private directory; one report item,
    /// no warning. A user keeping that variable keeps their own, and is told about the file.
    #[test]
    fn gcloud_adc_file_under_home_is_met_by_the_providers_stand_in() {
        let home = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(home.path().join(".config/gcloud")).expect("mkdir");
        std::fs::write(home.path().join(".config/gcloud/application_default_credentials.json"), "{}").expect("write");
        let lookup = |_: &str| None;
        let host = Host { env: &lookup, home: Some(home.path().to_owned()) };
        let plan = plan(&crate::providers::shadowing(["gcp"]), &host, &[], &gcp_stand_in).expect("plan");
        assert_eq!(
            plan.report,
            ["~/.config/gcloud/application_default_credentials.json (GOOGLE_APPLICATION_CREDENTIALS set to keyless's \
              stand-in; a note)"]
        );
        assert!(plan.warnings.is_empty(), "{:?}", plan.warnings);
        let vars: Vec<&str> = plan.set.iter().map(|(k, _)| *k).collect();
        assert_eq!(vars, ["GOOGLE_APPLICATION_CREDENTIALS", "CLOUDSDK_CONFIG"]);
        let stand_in = PathBuf::from(&plan.set[0].1);
        assert!(stand_in.exists());
        drop(plan);
        assert!(!stand_in.exists(), "the stand-in goes with the private directory");

        let kept = super::plan(
            &crate::providers::shadowing(["gcp"]),
            &host,
            &["GOOGLE_APPLICATION_CREDENTIALS".to_owned()],
            &gcp_stand_in,
        )
        .expect("plan");
        assert!(!kept.set.iter().any(|(k, _)| *k == "GOOGLE_APPLICATION_CREDENTIALS"), "{:?}", kept.set);
        assert_eq!(kept.warnings.len(), 1, "{:?}", kept.warnings);
    }
}
