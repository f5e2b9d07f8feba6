//! The credential sources AWS SDKs try before the container endpoint and IMDS that keyless
//! serves (docs/protocols.md 10.1): environment keys, web identity, the ECS relative URI, and the
//! shared files' credential, SSO, `credential_process` and role profiles. Each SDK's order:
//! botocore `create_credential_resolver`, aws-sdk-go-v2 `resolveCredentialChain`, the JS v3
//! `defaultProvider`, Java v2 `DefaultCredentialsProvider`, Rust `DefaultCredentialsChain`.

use keyless_provider::{Filtered, ShadowFile, ShadowFileKind, ShadowVar, Shadowing};

const KEYS: &str = "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY";
const WEB_IDENTITY: &str = "AWS_ROLE_ARN/AWS_WEB_IDENTITY_TOKEN_FILE";
const CONTAINER: &str = "AWS_CONTAINER_CREDENTIALS_FULL_URI/AWS_CONTAINER_AUTHORIZATION_TOKEN";

pub(crate) const SHADOWING: Shadowing = Shadowing {
    vars: &[
        // Every SDK's first source (botocore and boto2 also read AWS_SECURITY_TOKEN).
        ShadowVar::in_group("AWS_ACCESS_KEY_ID", KEYS),
        ShadowVar::in_group("AWS_SECRET_ACCESS_KEY", KEYS),
        ShadowVar::in_group("AWS_SESSION_TOKEN", KEYS),
        ShadowVar::in_group("AWS_SECURITY_TOKEN", KEYS),
        // Web identity from the environment (IRSA, EKS runners): before the container endpoint
        // in every SDK.
        ShadowVar::in_group("AWS_ROLE_ARN", WEB_IDENTITY),
        ShadowVar::in_group("AWS_WEB_IDENTITY_TOKEN_FILE", WEB_IDENTITY),
        ShadowVar::in_group("AWS_ROLE_SESSION_NAME", WEB_IDENTITY),
        // The ECS relative URI wins over the full URI in every SDK (169.254.170.2).
        ShadowVar::alone("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"),
        // Another container endpoint's: keyless sets its own; a token file the parent set wins
        // over the token value keyless sets.
        ShadowVar::in_group("AWS_CONTAINER_CREDENTIALS_FULL_URI", CONTAINER),
        ShadowVar::in_group("AWS_CONTAINER_AUTHORIZATION_TOKEN", CONTAINER),
        ShadowVar::in_group("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", CONTAINER),
        // botocore's legacy providers, ranked above the container endpoint.
        ShadowVar::alone("AWS_CREDENTIAL_FILE"),
        ShadowVar::alone("BOTO_CONFIG"),
        // botocore's older name of AWS_PROFILE (AWS_PROFILE itself is kept: see the files).
        ShadowVar::alone("AWS_DEFAULT_PROFILE"),
    ],
    files: &[
        ShadowFile {
            var: "AWS_SHARED_CREDENTIALS_FILE",
            default: ".aws/credentials",
            kind: ShadowFileKind::Filtered { filter: filter_credentials },
            profile_var: Some("AWS_PROFILE"),
        },
        ShadowFile {
            var: "AWS_CONFIG_FILE",
            default: ".aws/config",
            kind: ShadowFileKind::Filtered { filter: filter_config },
            profile_var: Some("AWS_PROFILE"),
        },
    ],
};

/// The keys of a profile that make it a credential source (static keys, role assumption, web
/// identity, SSO, login sessions, credential_process). Everything else (region, endpoints,
/// retries, S3 settings, `ca_bundle`...) is kept.
const CREDENTIAL_KEYS: [&str; 20] = [
    "aws_access_key_id",
    "aws_secret_access_key",
    "aws_session_token",
    "aws_security_token",
    "aws_credential_expiration",
    "role_arn",
    "source_profile",
    "credential_source",
    "role_session_name",
    "external_id",
    "mfa_serial",
    "duration_seconds",
    "web_identity_token_file",
    "credential_process",
    "sso_session",
    "sso_account_id",
    "sso_role_name",
    "sso_region",
    "sso_start_url",
    "login_session",
];

/// Sections that only exist to feed credential profiles.
const CREDENTIAL_SECTIONS: [&str; 2] = ["sso-session ", "login-session "];

/// `~/.aws/credentials`: `[NAME]` sections.
fn filter_credentials(text: &str) -> Filtered {
    filter(text, |section| Some(section.to_owned()))
}

/// `~/.aws/config`: `[default]` and `[profile NAME]`; other sections (`[services X]`) are no
/// profiles.
fn filter_config(text: &str) -> Filtered {
    filter(text, |section| match section {
        "default" => Some("default".to_owned()),
        s => s.strip_prefix("profile ").map(|name| name.trim().to_owned()),
    })
}

/// The file without credential keys (and their indented sub-settings) or credential-only
/// sections; every section kept, emptied or not, so a profile variable naming one still works.
fn filter(text: &str, profile_name: fn(&str) -> Option<String>) -> Filtered {
    let mut out = Filtered::default();
    let mut section: Option<String> = None;
    let mut drop_section = false;
    let mut dropping_key = false;
    let mut removed_here = false;
    for line in text.lines() {
        let trimmed = line.trim();
        let header = trimmed.strip_prefix('[').and_then(|h| h.split(']').next());
        if let Some(header) = header.filter(|_| !line.starts_with([' ', '\t'])) {
            finish(&section, removed_here, &mut out);
            let header = header.trim().to_owned();
            drop_section = CREDENTIAL_SECTIONS.iter().any(|p| header.starts_with(p));
            removed_here = drop_section;
            dropping_key = false;
            if !drop_section {
                out.text.push_str(line);
                out.text.push('\n');
                if let Some(name) = profile_name(&header) {
                    out.kept_profiles.push(name);
                }
            }
            section = Some(header);
            continue;
        }
        if drop_section {
            continue;
        }
        let indented = line.starts_with([' ', '\t']) && !trimmed.is_empty();
        if indented && dropping_key {
            continue;
        }
        dropping_key = false;
        let key = trimmed.split('=').next().unwrap_or("").trim().to_ascii_lowercase();
        if !indented && trimmed.contains('=') && CREDENTIAL_KEYS.contains(&key.as_str()) {
            dropping_key = true;
            removed_here = true;
            continue;
        }
        out.text.push_str(line);
        out.text.push('\n');
    }
    finish(&section, removed_here, &mut out);
    out
}

fn finish(section: &Option<String>, removed_here: bool, out: &mut Filtered) {
    if let (Some(s), true) = (section, removed_here) {
        out.removed.push(format!("[{s}]"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_keeps_settings_and_drops_credential_profiles() {
        let text = "[default]\nregion = eu-west-1\naws_access_key_id = AKIA\naws_secret_access_key = s\n\
                    [profile ci]\nrole_arn = arn:aws:iam::1:role/x\nsource_profile = default\nretry_mode = adaptive\n\
                    [profile sso]\nsso_session = corp\nsso_account_id = 1\nsso_role_name = r\n\
                    [sso-session corp]\nsso_start_url = https://x\nsso_region = us-east-1\n\
                    [profile s3]\ns3 =\n  addressing_style = path\ncredential_process =\n  /bin/creds\n\
                    [services local]\nsts =\n  endpoint_url = http://localhost\n";
        let f = filter_config(text);
        assert_eq!(
            f.text,
            "[default]\nregion = eu-west-1\n[profile ci]\nretry_mode = adaptive\n[profile sso]\n\
             [profile s3]\ns3 =\n  addressing_style = path\n[services local]\nsts =\n  endpoint_url = http://localhost\n"
        );
        assert_eq!(f.removed, ["[default]", "[profile ci]", "[profile sso]", "[sso-session corp]", "[profile s3]"]);
        assert_eq!(f.kept_profiles, ["default", "ci", "sso", "s3"]);
    }

    #[test]
    fn credentials_file_sections_are_profiles_and_clean_files_lose_nothing() {
        let f = filter_credentials("[default]\naws_access_key_id=AKIA\nAWS_SECRET_ACCESS_KEY=s\n[other]\n");
        assert_eq!(f.text, "[default]\n[other]\n");
        assert_eq!(f.removed, ["[default]"]);
        assert_eq!(f.kept_profiles, ["default", "other"]);
        let clean = "# comment\n[default]\nregion = us-east-1\n";
        let f = filter_config(clean);
        assert_eq!(f.text, clean);
        assert!(f.removed.is_empty());
    }
}
