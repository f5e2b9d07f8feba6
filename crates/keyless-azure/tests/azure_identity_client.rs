//! The Rust SDK's own `ManagedIdentityCredential` through the App Service endpoint: the only
//! route Rust apps have (its IMDS route is hard-wired to 169.254.169.254, protocols.md 4.3).
//!
//! azure_identity reads `IDENTITY_ENDPOINT`/`IDENTITY_HEADER` from the process env only, so the
//! client runs in a child process: this test binary re-executed with those vars set.

mod common;

use keyless_provider::Started as _;
use std::process::Command;

use azure_core::credentials::TokenCredential;
use azure_identity::ManagedIdentityCredential;
use common::{Harness, verify_access_token};

/// Set in the child only; the child test does nothing without it.
const CHILD_MARKER: &str = "KEYLESS_AZURE_TEST_CHILD";
const RESOURCE: &str = "https://management.azure.com";

#[tokio::test]
async fn rust_managed_identity_credential_gets_a_token_that_verifies() {
    let h = Harness::start().await;
    let ids = h.emulator.identities();
    let mut command = Command::new(std::env::current_exe().expect("test binary"));
    command
        .args(["--exact", "child_asks_managed_identity_credential_for_a_token", "--nocapture", "--test-threads=1"])
        .env(CHILD_MARKER, "1")
        .env("KEYLESS_TEST_EMULATOR_URL", h.emulator.url())
        .env("KEYLESS_TEST_EMULATOR_CA", h.emulator.ca_pem_path())
        .env("KEYLESS_TEST_TENANT", &ids.azure_tenant_id)
        .env("KEYLESS_TEST_CLIENT", &ids.azure_client_id)
        // Nothing else in the test's env may steer the SDK to another source.
        .env_remove("MSI_ENDPOINT")
        .env_remove("MSI_SECRET")
        .env_remove("IDENTITY_SERVER_THUMBPRINT")
        .env_remove("IMDS_ENDPOINT");
    for var in h.provider.app_env(&keyless_provider::AppHost::for_listener(h.listen)) {
        command.env(&var.name, var.file_value());
    }
    let output = tokio::task::spawn_blocking(move || command.output()).await.expect("joined").expect("child runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "child failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("managed identity token verified"), "the child test ran:\n{stdout}");
}

/// The child: a plain azure_identity client, configured by env alone like an unmodified app.
/// It reports to the parent on stdout.
#[tokio::test]
#[allow(clippy::print_stdout)]
async fn child_asks_managed_identity_credential_for_a_token() {
    if std::env::var_os(CHILD_MARKER).is_none() {
        return;
    }
    let var = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name} is set"));
    let credential = ManagedIdentityCredential::new(None).expect("App Service source from env");
    let token = credential
        .get_token(&[&format!("{RESOURCE}/.default")], None)
        .await
        .expect("token through the App Service endpoint");
    verify_access_token(
        &var("KEYLESS_TEST_EMULATOR_URL"),
        std::path::Path::new(&var("KEYLESS_TEST_EMULATOR_CA")),
        &var("KEYLESS_TEST_TENANT"),
        token.token.secret(),
        RESOURCE,
        &var("KEYLESS_TEST_CLIENT"),
    )
    .await;
    let left = token.expires_on - azure_core::time::OffsetDateTime::now_utc();
    assert!(left > azure_core::time::Duration::minutes(30), "{left}");
    println!("managed identity token verified");
}
