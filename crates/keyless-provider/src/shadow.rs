//! What makes a cloud SDK ignore a provider's endpoints: the local credential sources each SDK
//! ranks above them (docs/protocols.md 10). Each adapter
//! declares its own ([`crate::Provider::SHADOWING`]); `keyless exec` and `keyless dev` set them
//! aside for the program they run, and injection takes over the variables another webhook wrote
//! into the containers it changes and names the others in a warning.

/// The sources one provider's endpoints can be shadowed by.
#[derive(Debug, Clone, Copy)]
pub struct Shadowing {
    /// Variables to remove from the program's environment: each one (with its partners)
    /// selects a credential source an SDK tries before the endpoints keyless serves.
    pub vars: &'static [ShadowVar],
    /// Files the SDKs read credentials from unless a variable points them elsewhere.
    pub files: &'static [ShadowFile],
}

impl Shadowing {
    /// Nothing shadows the provider.
    pub const NONE: Self = Self { vars: &[], files: &[] };
}

/// One variable that shadows the endpoints.
#[derive(Debug, Clone, Copy)]
pub struct ShadowVar {
    pub name: &'static str,
    /// The variables reported with it, as one source: `AWS_ROLE_ARN/AWS_WEB_IDENTITY_TOKEN_FILE`
    /// is one line item. Variables of one group share the same `group`.
    pub group: &'static str,
}

impl ShadowVar {
    /// A variable that is a source on its own.
    pub const fn alone(name: &'static str) -> Self {
        Self { name, group: name }
    }

    /// A variable reported together with the others of `group`.
    pub const fn in_group(name: &'static str, group: &'static str) -> Self {
        Self { name, group }
    }
}

/// A credential file an SDK reads by default, and how the program is pointed away from it.
#[derive(Debug, Clone, Copy)]
pub struct ShadowFile {
    /// The variable that moves it (`AWS_SHARED_CREDENTIALS_FILE`, `CLOUDSDK_CONFIG`).
    pub var: &'static str,
    /// Where it is when the variable is unset, relative to `$HOME` (`.aws/credentials`).
    pub default: &'static str,
    pub kind: ShadowFileKind,
    /// The variable that picks a section of the file (`AWS_PROFILE`): kept when the program's
    /// copy still has that section, set aside otherwise.
    pub profile_var: Option<&'static str>,
}

/// What a file holds, and what replaces it for the program.
#[derive(Debug, Clone, Copy)]
pub enum ShadowFileKind {
    /// A file of settings among which credentials: the program gets a copy without them
    /// (settings like the region, endpoints and retries stay). `filter` returns the copy and
    /// what it removed.
    Filtered { filter: fn(text: &str) -> Filtered },
    /// A directory holding `file` (a credential file): when `file` exists in it, the variable
    /// points the program at an empty private directory instead.
    DirWith {
        file: &'static str,
        /// The libraries that read `file` at its default place whatever the variable says, and
        /// what the user can do about it: when it is there, the program is told (a variable
        /// cannot move it for them, and keyless never changes `HOME` nor the user's files).
        read_at_default_by: Option<&'static str>,
    },
}

/// A settings file with its credentials removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filtered {
    pub text: String,
    /// What was removed, one item per section: `[default]`, `[profile ci]`.
    pub removed: Vec<String>,
    /// The sections that remain, by the name the profile variable uses (`ci` for `[profile ci]`).
    pub kept_profiles: Vec<String>,
}
