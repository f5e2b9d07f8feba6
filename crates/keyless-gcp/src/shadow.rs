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
        kind: ShadowFileKind::DirWith {
            file: "application_default_credentials.json",
            read_at_default_by: Some(
                "Go, Node and Rust programs, which read it under $HOME whatever CLOUDSDK_CONFIG says: \
                 move it or run `gcloud auth application-default revoke` for them to get keyless's identity",
            ),
        },
        profile_var: None,
    }],
};
