//! The `[azure]` section against the local emulator (`keyless dev`, tests, benchmarks).

use keyless_provider::{DevEmulator, ProviderError};
use serde::{Deserialize, Serialize};

/// The emulator's Entra identities, as `/_emulator/identities` publishes them.
#[derive(Deserialize)]
struct Identities {
    azure_tenant_id: String,
    azure_client_id: String,
    azure_second_client_id: String,
}

#[derive(Serialize)]
struct Section<'a> {
    tenant_id: String,
    client_id: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    additional_client_ids: Vec<String>,
    authority_host: &'a str,
    ca_file: &'a std::path::Path,
}

pub(crate) fn section(emulator: &DevEmulator<'_>) -> Result<keyless_provider::DevTable, ProviderError> {
    let ids: Identities = emulator.identities()?;
    keyless_provider::dev::section(&Section {
        tenant_id: ids.azure_tenant_id,
        client_id: ids.azure_client_id,
        additional_client_ids: match emulator.second_identities {
            true => vec![ids.azure_second_client_id],
            false => Vec::new(),
        },
        authority_host: emulator.endpoint,
        ca_file: emulator.ca_file,
    })
}
