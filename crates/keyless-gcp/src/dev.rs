//! The `[gcp]` section against the local emulator (`keyless dev`, tests, benchmarks).

use keyless_provider::{DevEmulator, ProviderError};
use serde::{Deserialize, Serialize};

/// The emulator's Google identities, as `/_emulator/identities` publishes them.
#[derive(Deserialize)]
struct Identities {
    audiences: Audiences,
    gcp_service_account: String,
    gcp_second_service_account: String,
    gcp_project_id: String,
    gcp_project_number: String,
}

#[derive(Deserialize)]
struct Audiences {
    gcp: String,
}

#[derive(Serialize)]
struct Section<'a> {
    audience: String,
    service_account: String,
    project_id: String,
    project_number: String,
    sts_endpoint: &'a str,
    iam_endpoint: &'a str,
    ca_file: &'a std::path::Path,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    service_accounts: Vec<ServiceAccount>,
}

#[derive(Serialize)]
struct ServiceAccount {
    email: String,
    /// The second account is reached through the first (a delegation chain).
    delegates: [String; 1],
}

pub(crate) fn section(emulator: &DevEmulator<'_>) -> Result<keyless_provider::DevTable, ProviderError> {
    let ids: Identities = emulator.identities()?;
    let service_accounts = match emulator.second_identities {
        true => {
            vec![ServiceAccount { email: ids.gcp_second_service_account, delegates: [ids.gcp_service_account.clone()] }]
        }
        false => Vec::new(),
    };
    keyless_provider::dev::section(&Section {
        audience: ids.audiences.gcp,
        service_account: ids.gcp_service_account,
        project_id: ids.gcp_project_id,
        project_number: ids.gcp_project_number,
        sts_endpoint: emulator.endpoint,
        iam_endpoint: emulator.endpoint,
        ca_file: emulator.ca_file,
        service_accounts,
    })
}
