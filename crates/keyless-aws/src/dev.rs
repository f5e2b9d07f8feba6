//! The `[aws]` section against the local emulator (`keyless dev`, tests, benchmarks).

use std::path::PathBuf;

use keyless_provider::{DevEmulator, ProviderError};
use serde::{Deserialize, Serialize};

/// The `[[aws.roles]]` name of the emulator's second role (`keyless dev`'s
/// `KEYLESS_DEV_AWS_SECOND_ROLE_NAME`).
pub const DEV_SECOND_ROLE_NAME: &str = "writer";

/// The emulator's AWS identities, as `/_emulator/identities` publishes them.
#[derive(Deserialize)]
struct Identities {
    aws_role_arn: String,
    aws_second_role_arn: String,
}

#[derive(Serialize)]
struct Section<'a> {
    role_arn: String,
    region: &'static str,
    sts_endpoint: &'a str,
    ca_file: &'a std::path::Path,
    #[serde(skip_serializing_if = "Option::is_none")]
    authorization_token_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    roles: Vec<Role>,
}

#[derive(Serialize)]
struct Role {
    name: &'static str,
    role_arn: String,
}

pub(crate) fn section(emulator: &DevEmulator<'_>) -> Result<keyless_provider::DevTable, ProviderError> {
    let ids: Identities = emulator.identities()?;
    let roles = match emulator.second_identities {
        true => vec![Role { name: DEV_SECOND_ROLE_NAME, role_arn: ids.aws_second_role_arn }],
        false => Vec::new(),
    };
    keyless_provider::dev::section(&Section {
        role_arn: ids.aws_role_arn,
        region: "us-east-1",
        sts_endpoint: emulator.endpoint,
        ca_file: emulator.ca_file,
        authorization_token_file: emulator.state_dir.map(|dir| dir.join("aws-container-authorization-token")),
        roles,
    })
}
