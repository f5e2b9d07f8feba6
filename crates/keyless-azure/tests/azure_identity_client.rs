//! The Rust SDK's own `ManagedIdentityCredential` through the App Service endpoint: the only
//! route Rust apps have (its IMDS route is hard-wired to 169.254.169.254, docs/protocols.md 4.3).
//!
//! azure_identity reads `IDENTITY_ENDPOINT`/`IDENTITY_HEADER` from the process env only, so the
//! client runs in a child process: this test binary re-executed with those vars set.

mod common;

use std::path::Path;

use azure_core::credentials::TokenCredential;
use azure_identity::ManagedIdentityCredential;
use common::{Harness, verify_access_token};
use keyless_provider::Started as _;
use keyless_test_support::child::{ChildTest, child_env, is_child};
use keyless_test_support::clients;

const CHILD: &str = "rust_managed_identity_credential_gets_a_token_that_verifies";
const RESOURCE: &str = "https://management.azure.com";

#[tokio::test]
async fn rust_managed_identity_credential_gets_a_token_that_verifies() {
    if is_child(CHILD) {
        return asks_managed_identity_credential_for_a_token().await;
    }
    let h = Harness::start().await;
    let ids = h.env.emulator.identities();
    let app_env = h.provider.app_env(&keyless_provider::AppHost::for_listener(h.served.addr));
    let stdout = ChildTest::new(CHILD)
        .env("KEYLESS_TEST_EMULATOR_URL", h.env.emulator.url())
        .env("KEYLESS_TEST_EMULATOR_CA", h.env.ca())
        .env("KEYLESS_TEST_TENANT", &ids.azure_tenant_id)
        .env("KEYLESS_TEST_CLIENT", &ids.azure_client_id)
        // Nothing else in the test's env may steer the SDK to another source.
        .env_remove("MSI_ENDPOINT")
        .env_remove("MSI_SECRET")
        .env_remove("IDENTITY_SERVER_THUMBPRINT")
        .env_remove("IMDS_ENDPOINT")
        .envs(app_env.iter().map(|var| (&var.name, var.file_value())))
        .run(String::new)
        .await;
    assert!(stdout.contains("managed identity token verified"), "the child test ran:\n{stdout}");
}

/// The child: a plain azure_identity client, configured by env alone like an unmodified app.
/// It reports to the parent on stdout.
#[allow(clippy::print_stdout)]
async fn asks_managed_identity_credential_for_a_token() {
    let var = |name: &str| child_env(CHILD, name);
    let credential = ManagedIdentityCredential::new(None).expect("App Service source from env");
    let token = credential
        .get_token(&[&format!("{RESOURCE}/.default")], None)
        .await
        .expect("token through the App Service endpoint");
    let client = clients::trusting(Path::new(&var("KEYLESS_TEST_EMULATOR_CA")));
    verify_access_token(
        &client,
        &var("KEYLESS_TEST_EMULATOR_URL"),
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
