//! The credential sources Azure SDKs try before the managed identity endpoints keyless serves
//! (docs/protocols.md 10.3). `DefaultAzureCredential` (Python, Go, JS, Java, .NET) tries the
//! environment credential (secret, certificate, username/password) and workload identity before
//! managed identity, and managed identity picks its protocol from the variables present (Service
//! Fabric, Azure Arc, Azure ML, Cloud Shell before App Service and IMDS). Developer credentials
//! (Azure CLI, azd, PowerShell, VS Code) come after managed identity: nothing to set aside.

use keyless_provider::{ShadowVar, Shadowing};

const SECRET: &str = "AZURE_CLIENT_SECRET";
const CERTIFICATE: &str = "AZURE_CLIENT_CERTIFICATE_PATH";
const USER: &str = "AZURE_USERNAME/AZURE_PASSWORD";
const MSI: &str = "MSI_ENDPOINT/MSI_SECRET";

pub(crate) const SHADOWING: Shadowing = Shadowing {
    vars: &[
        ShadowVar::alone(SECRET),
        ShadowVar::in_group("AZURE_CLIENT_CERTIFICATE_PATH", CERTIFICATE),
        ShadowVar::in_group("AZURE_CLIENT_CERTIFICATE_PASSWORD", CERTIFICATE),
        ShadowVar::in_group("AZURE_USERNAME", USER),
        ShadowVar::in_group("AZURE_PASSWORD", USER),
        ShadowVar::alone("AZURE_FEDERATED_TOKEN_FILE"),
        // Managed identity's user-assigned client id: an identity keyless may not serve
        // (`keyless exec --azure-client-id` sets it on purpose).
        ShadowVar::alone("AZURE_CLIENT_ID"),
        // `dev` makes DefaultAzureCredential skip managed identity (azure-identity 1.23+).
        ShadowVar::alone("AZURE_TOKEN_CREDENTIALS"),
        // Other managed identity protocols, chosen before App Service and IMDS.
        ShadowVar::alone("IDENTITY_SERVER_THUMBPRINT"),
        ShadowVar::alone("IMDS_ENDPOINT"),
        ShadowVar::in_group("MSI_ENDPOINT", MSI),
        ShadowVar::in_group("MSI_SECRET", MSI),
        // Another App Service endpoint's (keyless sets its own when it serves one).
        ShadowVar::in_group("IDENTITY_ENDPOINT", "IDENTITY_ENDPOINT/IDENTITY_HEADER"),
        ShadowVar::in_group("IDENTITY_HEADER", "IDENTITY_ENDPOINT/IDENTITY_HEADER"),
    ],
    files: &[],
};
