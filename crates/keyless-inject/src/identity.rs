//! The identities of a pod, read from its ServiceAccount's annotations, the ones the clouds' own
//! webhooks read (docs/protocols.md 7). The ServiceAccount is the authority, as for those webhooks:
//! whoever may create a pod may not pick another identity by annotating the pod. Each value is
//! checked here, where it is read, so a malformed annotation is refused with its name before any
//! pod runs.

use std::collections::BTreeMap;
use std::fmt;

/// Annotations of one object, by key.
pub type Annotations = BTreeMap<String, String>;

pub const AWS_ROLE_ARN: &str = "eks.amazonaws.com/role-arn";
pub const AWS_AUDIENCE: &str = "eks.amazonaws.com/audience";
pub const AWS_TOKEN_EXPIRATION: &str = "eks.amazonaws.com/token-expiration";
pub const AWS_STS_REGIONAL_ENDPOINTS: &str = "eks.amazonaws.com/sts-regional-endpoints";
pub const GCP_SERVICE_ACCOUNT: &str = "iam.gke.io/gcp-service-account";
pub const GCP_PROVIDER: &str = "keyless.dev/gcp-workload-identity-provider";
pub const GCP_PROJECT_ID: &str = "keyless.dev/gcp-project-id";
pub const AZURE_CLIENT_ID: &str = "azure.workload.identity/client-id";
pub const AZURE_TENANT_ID: &str = "azure.workload.identity/tenant-id";
/// A Secret (key `identity-header`) holding the App Service `IDENTITY_HEADER`: turns on the App
/// Service endpoint, the only one Rust's `azure_identity` reads (docs/injection.md).
pub const AZURE_IDENTITY_HEADER_SECRET: &str = "keyless.dev/azure-identity-header-secret";

/// The IRSA webhook's default audience and token lifetime, and the floor it raises a shorter one to.
const AWS_DEFAULT_AUDIENCE: &str = "sts.amazonaws.com";
const AWS_DEFAULT_EXPIRATION: i64 = 86_400;
const AWS_MIN_EXPIRATION: i64 = 3_600;
/// The largest `expirationSeconds` the API server accepts for a projected token (2^32 seconds).
const MAX_EXPIRATION: i64 = 1 << 32;
/// Lifetime of the Google Cloud and Azure tokens (the Azure webhook's default is 3600 too).
pub(crate) const TOKEN_EXPIRATION: i64 = 3_600;
/// The global STS endpoint `legacy` selects for the `aws` partition, as the SDKs do.
const AWS_GLOBAL_STS: &str = "https://sts.amazonaws.com";
const AZURE_AUDIENCE: &str = "api://AzureADTokenExchange";
const GCP_PROVIDER_PREFIX: &str = "//iam.googleapis.com/";
const MAX_VALUE_LEN: usize = 2048;

/// Where an annotation was read: always the ServiceAccount (kept in errors, which say so).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    ServiceAccount,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Origin::ServiceAccount => "the ServiceAccount",
        })
    }
}

/// Every identity annotation keyless reads: on a pod they are ignored (with a warning).
pub const IDENTITY_ANNOTATIONS: &[&str] = &[
    AWS_ROLE_ARN,
    AWS_AUDIENCE,
    AWS_TOKEN_EXPIRATION,
    AWS_STS_REGIONAL_ENDPOINTS,
    GCP_SERVICE_ACCOUNT,
    GCP_PROVIDER,
    GCP_PROJECT_ID,
    AZURE_CLIENT_ID,
    AZURE_TENANT_ID,
    AZURE_IDENTITY_HEADER_SECRET,
];

/// The warning for identity annotations found on the pod itself, if any.
pub fn pod_annotation_warning(pod: &Annotations) -> Option<String> {
    let found: Vec<&str> = IDENTITY_ANNOTATIONS.iter().copied().filter(|k| pod.contains_key(*k)).collect();
    (!found.is_empty()).then(|| {
        format!(
            "the pod's own {} ignored: identities come from the ServiceAccount only (annotate it instead)",
            if found.len() == 1 {
                format!("annotation {} is", found[0])
            } else {
                format!("annotations {} are", found.join(", "))
            }
        )
    })
}

/// An annotation keyless cannot use: its key, where it was, and how to fix it. The value is shown
/// (annotations hold identifiers, never secrets), cut to a bounded length.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("annotation {key} on {origin} ({value:?}): {reason}")]
pub struct AnnotationError {
    pub key: &'static str,
    pub origin: Origin,
    pub value: String,
    pub reason: String,
}

/// Every cloud keyless serves to one pod.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identities {
    pub aws: Option<AwsIdentity>,
    pub gcp: Option<GcpIdentity>,
    pub azure: Option<AzureIdentity>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsIdentity {
    pub role_arn: String,
    pub audience: String,
    pub expiration_seconds: i64,
    /// `Some` when `sts-regional-endpoints: legacy` selects the global endpoint.
    pub sts_endpoint: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcpIdentity {
    pub service_account: String,
    /// `//iam.googleapis.com/projects/NUMBER/locations/global/workloadIdentityPools/POOL/providers/ID`:
    /// the token's audience too.
    pub provider: String,
    pub project_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AzureIdentity {
    pub client_id: String,
    pub tenant_id: String,
    pub identity_header_secret: Option<String>,
}

impl Identities {
    pub fn is_empty(&self) -> bool {
        self.aws.is_none() && self.gcp.is_none() && self.azure.is_none()
    }

    /// Whether keyless serves the cloud of that provider name.
    pub fn serves(&self, cloud: &str) -> bool {
        match cloud {
            "aws" => self.aws.is_some(),
            "gcp" => self.gcp.is_some(),
            "azure" => self.azure.is_some(),
            _ => false,
        }
    }

    /// The audience of each cloud's projected token, with its file name and lifetime.
    pub fn tokens(&self) -> Vec<(&'static str, &str, i64)> {
        let mut tokens = Vec::new();
        if let Some(aws) = &self.aws {
            tokens.push(("aws-token", aws.audience.as_str(), aws.expiration_seconds));
        }
        if let Some(gcp) = &self.gcp {
            tokens.push(("gcp-token", gcp.provider.as_str(), TOKEN_EXPIRATION));
        }
        if self.azure.is_some() {
            tokens.push(("azure-token", AZURE_AUDIENCE, TOKEN_EXPIRATION));
        }
        tokens
    }
}

/// The annotations of a pod's ServiceAccount.
#[derive(Debug, Clone, Copy)]
pub struct AnnotationSources<'a> {
    pub service_account: &'a Annotations,
}

/// A looked-up annotation: its trimmed value and where it came from.
struct Found<'a> {
    key: &'static str,
    origin: Origin,
    value: &'a str,
}

impl Found<'_> {
    fn invalid(&self, reason: impl Into<String>) -> AnnotationError {
        let value: String = self.value.chars().take(120).collect();
        AnnotationError { key: self.key, origin: self.origin, value, reason: reason.into() }
    }
}

impl<'a> AnnotationSources<'a> {
    fn get(&self, key: &'static str) -> Option<Found<'a>> {
        let found = |map: &'a Annotations, origin| {
            map.get(key).map(|v| v.trim()).filter(|v| !v.is_empty()).map(|value| Found { key, origin, value })
        };
        found(self.service_account, Origin::ServiceAccount)
    }

    /// Reads every cloud's identity. `default_tenant` is the cluster's Entra tenant (the Azure
    /// webhook's fallback too). Warnings say what was read but not served.
    pub fn identities(&self, default_tenant: Option<&str>) -> Result<(Identities, Vec<String>), AnnotationError> {
        let mut warnings = Vec::new();
        let identities =
            Identities { aws: self.aws()?, gcp: self.gcp(&mut warnings)?, azure: self.azure(default_tenant)? };
        Ok((identities, warnings))
    }

    fn aws(&self) -> Result<Option<AwsIdentity>, AnnotationError> {
        let Some(role) = self.get(AWS_ROLE_ARN) else { return Ok(None) };
        let role_arn = check_role_arn(&role)?;
        let audience = match self.get(AWS_AUDIENCE) {
            Some(found) => printable(&found)?.to_owned(),
            None => AWS_DEFAULT_AUDIENCE.to_owned(),
        };
        let expiration_seconds = match self.get(AWS_TOKEN_EXPIRATION) {
            Some(found) => {
                let seconds: i64 = found.value.parse().map_err(|_| found.invalid("not a whole number of seconds"))?;
                if !(1..=MAX_EXPIRATION).contains(&seconds) {
                    return Err(found.invalid(format!("must be between 1 and {MAX_EXPIRATION} seconds")));
                }
                seconds.max(AWS_MIN_EXPIRATION)
            }
            None => AWS_DEFAULT_EXPIRATION,
        };
        let sts_endpoint = match self.get(AWS_STS_REGIONAL_ENDPOINTS) {
            None => None,
            Some(found) => match found.value.to_ascii_lowercase().as_str() {
                "regional" | "true" => None,
                "legacy" | "false" => role_arn.starts_with("arn:aws:").then(|| AWS_GLOBAL_STS.to_owned()),
                _ => return Err(found.invalid("must be \"regional\" (\"true\") or \"legacy\" (\"false\")")),
            },
        };
        Ok(Some(AwsIdentity { role_arn, audience, expiration_seconds, sts_endpoint }))
    }

    fn gcp(&self, warnings: &mut Vec<String>) -> Result<Option<GcpIdentity>, AnnotationError> {
        let Some(account) = self.get(GCP_SERVICE_ACCOUNT) else { return Ok(None) };
        let service_account = check_service_account(&account)?;
        let Some(provider) = self.get(GCP_PROVIDER) else {
            warnings.push(format!(
                "{GCP_SERVICE_ACCOUNT} is set but {GCP_PROVIDER} is not: keyless leaves Google Cloud to the \
                 GKE metadata server; outside GKE, set {GCP_PROVIDER} to the workload identity pool provider \
                 (projects/NUMBER/locations/global/workloadIdentityPools/POOL/providers/ID)"
            ));
            return Ok(None);
        };
        let provider = check_pool_provider(&provider)?;
        let project_id = match self.get(GCP_PROJECT_ID) {
            Some(found) => Some(check_project_id(&found)?),
            None => None,
        };
        Ok(Some(GcpIdentity { service_account, provider, project_id }))
    }

    fn azure(&self, default_tenant: Option<&str>) -> Result<Option<AzureIdentity>, AnnotationError> {
        let Some(client) = self.get(AZURE_CLIENT_ID) else { return Ok(None) };
        let client_id = check_guid_like(&client, "the Application (client) ID GUID")?;
        let tenant_id = match (self.get(AZURE_TENANT_ID), default_tenant) {
            (Some(found), _) => check_tenant(&found)?,
            (None, Some(tenant)) => tenant.to_owned(),
            (None, None) => {
                return Err(client.invalid(format!(
                    "no tenant: annotate {AZURE_TENANT_ID} too, or give the injector a default tenant \
                     (--azure-tenant-id, the chart's azure.tenantId)"
                )));
            }
        };
        let identity_header_secret = match self.get(AZURE_IDENTITY_HEADER_SECRET) {
            Some(found) => Some(check_dns_name(&found)?),
            None => None,
        };
        Ok(Some(AzureIdentity { client_id, tenant_id, identity_header_secret }))
    }
}

fn printable<'a>(found: &Found<'a>) -> Result<&'a str, AnnotationError> {
    let ok = found.value.len() <= MAX_VALUE_LEN && found.value.chars().all(|c| c.is_ascii_graphic());
    if ok { Ok(found.value) } else { Err(found.invalid("must be printable ASCII without spaces")) }
}

/// `arn:PARTITION:iam::ACCOUNT:role/PATH/NAME`, as STS checks it.
fn check_role_arn(found: &Found<'_>) -> Result<String, AnnotationError> {
    let value = printable(found)?;
    let parts: Vec<&str> = value.splitn(6, ':').collect();
    let valid = matches!(parts.as_slice(), ["arn", partition, "iam", "", account, resource]
        if !partition.is_empty()
            && account.len() == 12
            && account.bytes().all(|b| b.is_ascii_digit())
            && resource.strip_prefix("role/").is_some_and(|name| !name.is_empty()));
    if valid {
        Ok(value.to_owned())
    } else {
        Err(found.invalid("not an IAM role ARN: use arn:aws:iam::123456789012:role/NAME"))
    }
}

fn check_service_account(found: &Found<'_>) -> Result<String, AnnotationError> {
    let value = printable(found)?;
    // The sidecar's own rule at start (keyless-gcp `validate_email`), and a dot in the domain.
    let charset = value.len() <= 254 && value.bytes().all(|b| b.is_ascii_alphanumeric() || b"@.-_+".contains(&b));
    match value.split_once('@') {
        Some((name, domain)) if charset && !name.is_empty() && domain.contains('.') && !domain.contains('@') => {
            Ok(value.to_owned())
        }
        _ => Err(found.invalid("not a service account e-mail: use NAME@PROJECT.iam.gserviceaccount.com")),
    }
}

/// The provider's resource name, with or without the `//iam.googleapis.com/` prefix; kept with it
/// (the form STS wants as audience).
fn check_pool_provider(found: &Found<'_>) -> Result<String, AnnotationError> {
    let value = printable(found)?;
    let name = value.strip_prefix(GCP_PROVIDER_PREFIX).unwrap_or(value);
    let parts: Vec<&str> = name.split('/').collect();
    let valid = matches!(parts.as_slice(),
        ["projects", number, "locations", "global", "workloadIdentityPools", pool, "providers", provider]
        if !number.is_empty() && number.bytes().all(|b| b.is_ascii_digit()) && !pool.is_empty() && !provider.is_empty());
    if valid {
        Ok(format!("{GCP_PROVIDER_PREFIX}{name}"))
    } else {
        Err(found.invalid(
            "not a workload identity pool provider: use \
             projects/NUMBER/locations/global/workloadIdentityPools/POOL/providers/ID (the project number, not its id)",
        ))
    }
}

fn check_project_id(found: &Found<'_>) -> Result<String, AnnotationError> {
    let value = found.value;
    let valid = (6..=63).contains(&value.len())
        && value.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b':' || b == b'.');
    if valid { Ok(value.to_owned()) } else { Err(found.invalid("not a Google Cloud project id (e.g. my-project)")) }
}

fn check_guid_like(found: &Found<'_>, what: &str) -> Result<String, AnnotationError> {
    let value = found.value;
    let valid = value.len() <= 128 && value.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if valid { Ok(value.to_owned()) } else { Err(found.invalid(format!("not a client id: use {what}"))) }
}

fn check_tenant(found: &Found<'_>) -> Result<String, AnnotationError> {
    let value = found.value;
    let valid = value.len() <= 256 && value.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if valid {
        Ok(value.to_owned())
    } else {
        Err(found.invalid("not a tenant id: use the directory (tenant) GUID or a verified domain"))
    }
}

fn check_dns_name(found: &Found<'_>) -> Result<String, AnnotationError> {
    let value = found.value;
    let valid = value.len() <= 253
        && value.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !value.starts_with(['-', '.']);
    if valid { Ok(value.to_owned()) } else { Err(found.invalid("not a Secret name (lower-case DNS name)")) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(pairs: &[(&str, &str)]) -> Annotations {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn read(sa: &[(&str, &str)]) -> Result<Identities, AnnotationError> {
        let sa = annotations(sa);
        AnnotationSources { service_account: &sa }.identities(None).map(|(ids, _)| ids)
    }

    #[test]
    fn reads_every_cloud_from_the_service_account_with_the_irsa_defaults() {
        let ids = read(&[
            (AWS_ROLE_ARN, "arn:aws:iam::111122223333:role/app"),
            (GCP_SERVICE_ACCOUNT, "app@p.iam.gserviceaccount.com"),
            (GCP_PROVIDER, "projects/123/locations/global/workloadIdentityPools/pool/providers/k8s"),
            (AZURE_CLIENT_ID, "11111111-1111-1111-1111-111111111111"),
            (AZURE_TENANT_ID, "00000000-0000-0000-0000-000000000000"),
        ])
        .expect("valid");
        let aws = ids.aws.expect("aws");
        assert_eq!((aws.audience.as_str(), aws.expiration_seconds), ("sts.amazonaws.com", 86_400));
        assert_eq!(
            ids.gcp.expect("gcp").provider,
            "//iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/pool/providers/k8s"
        );
        assert_eq!(ids.azure.expect("azure").tenant_id, "00000000-0000-0000-0000-000000000000");
    }

    #[test]
    fn a_short_expiration_is_raised_to_the_irsa_floor() {
        let ids =
            read(&[(AWS_ROLE_ARN, "arn:aws:iam::111122223333:role/sa"), (AWS_TOKEN_EXPIRATION, "600")]).expect("valid");
        assert_eq!(ids.aws.expect("aws").expiration_seconds, 3600, "raised to the IRSA webhook's floor");
    }

    #[test]
    fn identity_annotations_on_the_pod_are_named_in_a_warning() {
        let pod = annotations(&[(AWS_ROLE_ARN, "arn:aws:iam::111122223333:role/pod"), ("app", "x")]);
        let warning = pod_annotation_warning(&pod).expect("a warning");
        assert!(warning.contains("annotation eks.amazonaws.com/role-arn is ignored"), "{warning}");
        assert_eq!(pod_annotation_warning(&annotations(&[("app", "x")])), None);
    }

    /// The sidecar refuses this e-mail at start (keyless-gcp's rule): refused here, naming the
    /// annotation, instead of a sidecar that never turns ready.
    #[test]
    fn a_service_account_email_with_a_path_or_query_is_refused() {
        let provider = (GCP_PROVIDER, "projects/1/locations/global/workloadIdentityPools/p/providers/k");
        for bad in ["a@b.c/../../x?y#z", "a@b@c.d", "a b@c.d"] {
            let err = read(&[(GCP_SERVICE_ACCOUNT, bad), provider]).expect_err(bad);
            assert_eq!(err.key, GCP_SERVICE_ACCOUNT, "{bad}");
        }
        read(&[(GCP_SERVICE_ACCOUNT, "app+x@p-1.iam.gserviceaccount.com"), provider]).expect("valid");
    }

    #[test]
    fn a_malformed_annotation_is_named_with_where_it_was() {
        let err = read(&[(AWS_ROLE_ARN, "my-role")]).expect_err("not an ARN");
        assert_eq!((err.key, err.origin), (AWS_ROLE_ARN, Origin::ServiceAccount));
        assert!(err.to_string().contains("arn:aws:iam::123456789012:role/NAME"), "{err}");
        let err = read(&[(GCP_SERVICE_ACCOUNT, "a@b.c"), (GCP_PROVIDER, "pools/x")]).expect_err("bad provider");
        assert_eq!(err.key, GCP_PROVIDER);
    }

    #[test]
    fn azure_without_a_tenant_is_an_error_unless_the_cluster_has_one() {
        let sa = annotations(&[(AZURE_CLIENT_ID, "11111111-1111-1111-1111-111111111111")]);
        let sources = AnnotationSources { service_account: &sa };
        assert_eq!(sources.identities(None).expect_err("no tenant").key, AZURE_CLIENT_ID);
        let (ids, _) = sources.identities(Some("contoso.onmicrosoft.com")).expect("default tenant");
        assert_eq!(ids.azure.expect("azure").tenant_id, "contoso.onmicrosoft.com");
    }

    #[test]
    fn a_gke_only_annotation_is_left_to_gke_with_a_warning() {
        let sa = annotations(&[(GCP_SERVICE_ACCOUNT, "app@p.iam.gserviceaccount.com")]);
        let (ids, warnings) = AnnotationSources { service_account: &sa }.identities(None).expect("not an error");
        assert!(ids.is_empty());
        assert!(warnings[0].contains(GCP_PROVIDER), "{warnings:?}");
    }

    #[test]
    fn legacy_sts_endpoints_select_the_global_endpoint() {
        let ids = read(&[(AWS_ROLE_ARN, "arn:aws:iam::111122223333:role/app"), (AWS_STS_REGIONAL_ENDPOINTS, "legacy")])
            .expect("valid");
        assert_eq!(ids.aws.expect("aws").sts_endpoint.as_deref(), Some("https://sts.amazonaws.com"));
    }
}
