//! The credential sources Google's auth libraries try before the metadata server keyless serves
//! (docs/protocols.md 10.2): `GOOGLE_APPLICATION_CREDENTIALS`, then gcloud's application-default
//! credentials file. Python google-auth and Java read it from `CLOUDSDK_CONFIG` when set (else
//! `~/.config/gcloud`); Go (`golang.org/x/oauth2/google`, `cloud.google.com/go/auth`), Node
//! (`google-auth-library`) and Rust (`google-cloud-auth`) read `$HOME/.config/gcloud` only.

use keyless_provider::{ShadowFile, ShadowFileKind, ShadowVar, Shadowing};

pub(crate) const SHADOWING: Shadowing = Shadowing {
    vars: &[ShadowVar::alone("GOOGLE_APPLICATION_CREDENTIALS")],
    files: &[ShadowFile {
        var: "CLOUDSDK_CONFIG",
        default: ".config/gcloud",
        kind: ShadowFileKind::DirWith { file: "application_default_credentials.json" },
        profile_var: None,
    }],
};
