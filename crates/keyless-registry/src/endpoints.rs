//! The native endpoints keyless serves, each asked exactly as its SDKs ask it (docs/protocols.md
//! 2.2, 2.3, 3.3, 4.2, 4.3): the one list the end-to-end tests (`keyless-test-support`'s load and
//! serving-rules table) and the benchmarks (`keyless-bench`) drive. A provider's endpoints are
//! listed here once; the conformance test checks that each one is a route its provider claims,
//! authenticated by a header the shared rules refuse twice.

use http::Method;
use http::header::{AUTHORIZATION, HeaderName, HeaderValue};
use keyless_provider::Provider;

/// One native endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Endpoint {
    /// AWS container endpoint (`AWS_CONTAINER_CREDENTIALS_FULL_URI`) with `Authorization`.
    AwsContainer,
    /// AWS IMDSv2 role credentials with a session token.
    AwsImds,
    /// GCE metadata server `.../service-accounts/default/token` with `Metadata-Flavor: Google`.
    GceToken,
    /// Azure IMDS token endpoint with `Metadata: true`.
    AzureImds,
    /// Azure App Service endpoint with `X-IDENTITY-HEADER`.
    AzureAppService,
}

/// What a client presents to the endpoints: read from where an app reads it.
#[derive(Debug, Clone)]
pub struct Presented {
    /// `AWS_CONTAINER_AUTHORIZATION_TOKEN` (or its file's content).
    pub aws_authorization: HeaderValue,
    /// An IMDSv2 session token from `PUT /latest/api/token` ([`imds_session_request`]).
    pub imds_session: HeaderValue,
    /// `IDENTITY_HEADER`.
    pub identity_header: HeaderValue,
    /// The last segment of the role ARN (IMDS serves credentials under it).
    pub role_name: String,
    /// The Azure resource asked for, percent-encoded as a query carries it.
    pub azure_resource: String,
}

/// A request line and the headers that authenticate it.
#[derive(Debug, Clone)]
pub struct ClientRequest {
    pub method: Method,
    pub path_and_query: String,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl Endpoint {
    pub const ALL: [Self; 5] =
        [Self::AwsContainer, Self::AwsImds, Self::GceToken, Self::AzureImds, Self::AzureAppService];

    /// The provider serving it (its `Provider::NAME`).
    pub fn provider(self) -> &'static str {
        match self {
            Self::AwsContainer | Self::AwsImds => keyless_aws::Aws::NAME,
            Self::GceToken => keyless_gcp::Gcp::NAME,
            Self::AzureImds | Self::AzureAppService => keyless_azure::Azure::NAME,
        }
    }

    /// Its name on a command line (`scripts/bench --only aws-imds`).
    pub fn id(self) -> &'static str {
        match self {
            Self::AwsContainer => "aws-container",
            Self::AwsImds => "aws-imds",
            Self::GceToken => "gce-token",
            Self::AzureImds => "azure-imds",
            Self::AzureAppService => "azure-app-service",
        }
    }

    /// The endpoint whose [`Endpoint::id`] is `id`.
    pub fn from_id(id: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.id() == id)
    }

    /// Its name in reports.
    pub fn label(self) -> &'static str {
        match self {
            Self::AwsContainer => "AWS container endpoint",
            Self::AwsImds => "AWS IMDSv2 credentials",
            Self::GceToken => "GCE metadata token",
            Self::AzureImds => "Azure IMDS token",
            Self::AzureAppService => "Azure App Service token",
        }
    }

    /// Whether a failure answer (`status`, `body`) has the endpoint's native error shape: what its
    /// SDKs parse when keyless has no valid credential to serve.
    pub fn is_native_error(self, status: u16, body: &str) -> bool {
        let json: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
        let string = |key: &str| json[key].as_str().is_some_and(|s| !s.is_empty());
        status >= 400
            && match self {
                Self::AwsContainer | Self::AwsImds => string("Code") && string("Message"),
                Self::GceToken => body.starts_with("keyless: no Google credential available"),
                Self::AzureImds => string("error") && string("error_description"),
                Self::AzureAppService => json["statusCode"].as_u64() == Some(u64::from(status)) && string("message"),
            }
    }

    /// The request its SDKs send for the default identity's credential.
    pub fn request(self, presented: &Presented) -> ClientRequest {
        let get = |path_and_query: String, name: HeaderName, value: HeaderValue| ClientRequest {
            method: Method::GET,
            path_and_query,
            headers: vec![(name, value)],
        };
        let resource = &presented.azure_resource;
        match self {
            Self::AwsContainer => get("/v1/credentials".into(), AUTHORIZATION, presented.aws_authorization.clone()),
            Self::AwsImds => get(
                format!("/latest/meta-data/iam/security-credentials/{}", presented.role_name),
                HeaderName::from_static("x-aws-ec2-metadata-token"),
                presented.imds_session.clone(),
            ),
            Self::GceToken => get(
                "/computeMetadata/v1/instance/service-accounts/default/token".into(),
                HeaderName::from_static("metadata-flavor"),
                HeaderValue::from_static("Google"),
            ),
            Self::AzureImds => get(
                format!("/metadata/identity/oauth2/token?api-version=2018-02-01&resource={resource}"),
                HeaderName::from_static("metadata"),
                HeaderValue::from_static("true"),
            ),
            Self::AzureAppService => get(
                format!("/msi/token?api-version=2019-08-01&resource={resource}"),
                HeaderName::from_static("x-identity-header"),
                presented.identity_header.clone(),
            ),
        }
    }
}

/// `PUT /latest/api/token` for an IMDSv2 session of `ttl_seconds` (the Rust SDK always asks for
/// the maximum, 21600).
pub fn imds_session_request(ttl_seconds: u32) -> ClientRequest {
    ClientRequest {
        method: Method::PUT,
        path_and_query: "/latest/api/token".into(),
        headers: vec![(
            HeaderName::from_static("x-aws-ec2-metadata-token-ttl-seconds"),
            HeaderValue::from(ttl_seconds),
        )],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_endpoint_is_named_once_and_found_by_its_name() {
        for endpoint in Endpoint::ALL {
            assert_eq!(Endpoint::from_id(endpoint.id()), Some(endpoint));
        }
        let mut ids: Vec<_> = Endpoint::ALL.iter().map(|e| e.id()).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), Endpoint::ALL.len());
        assert_eq!(Endpoint::from_id("gce"), None);
    }
}
