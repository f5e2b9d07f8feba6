//! The five native endpoints, each asked exactly as its SDKs ask it (docs/protocols.md 2.2, 2.3, 3.3, 4.2, 4.3), for the
//! credential keyless pre-warmed: the cached-credential path.

use std::net::SocketAddr;

use hyper::header::{AUTHORIZATION, HeaderName, HeaderValue};
use hyper::{Method, StatusCode};

use crate::BenchError;
use crate::load::{self, Target};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
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

impl Endpoint {
    pub const ALL: [Self; 5] =
        [Self::AwsContainer, Self::AwsImds, Self::GceToken, Self::AzureImds, Self::AzureAppService];

    pub fn label(self) -> &'static str {
        match self {
            Self::AwsContainer => "AWS container endpoint",
            Self::AwsImds => "AWS IMDSv2 credentials",
            Self::GceToken => "GCE metadata token",
            Self::AzureImds => "Azure IMDS token",
            Self::AzureAppService => "Azure App Service token",
        }
    }
}

/// The values clients present: read from where an app would read them.
#[derive(Debug, Clone)]
pub struct ClientSecrets {
    /// `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`'s content.
    pub aws_authorization: HeaderValue,
    /// An IMDSv2 session token from `PUT /latest/api/token`.
    pub imds_session: HeaderValue,
    /// `IDENTITY_HEADER`.
    pub identity_header: HeaderValue,
    /// The last segment of the role ARN (IMDS serves credentials under it).
    pub role_name: String,
}

/// The Resource Manager resource keyless pre-warms for Azure, as the SDKs ask for it.
const AZURE_RESOURCE: &str = "https%3A%2F%2Fmanagement.azure.com";

fn header(name: &'static str, value: HeaderValue) -> (HeaderName, HeaderValue) {
    (HeaderName::from_static(name), value)
}

pub fn target(endpoint: Endpoint, addr: SocketAddr, secrets: &ClientSecrets) -> Target {
    let get = |path: String, headers| Target { addr, method: Method::GET, path_and_query: path, headers };
    match endpoint {
        Endpoint::AwsContainer => {
            get("/v1/credentials".into(), vec![(AUTHORIZATION, secrets.aws_authorization.clone())])
        }
        Endpoint::AwsImds => get(
            format!("/latest/meta-data/iam/security-credentials/{}", secrets.role_name),
            vec![header("x-aws-ec2-metadata-token", secrets.imds_session.clone())],
        ),
        Endpoint::GceToken => get(
            "/computeMetadata/v1/instance/service-accounts/default/token".into(),
            vec![header("metadata-flavor", HeaderValue::from_static("Google"))],
        ),
        Endpoint::AzureImds => get(
            format!("/metadata/identity/oauth2/token?api-version=2018-02-01&resource={AZURE_RESOURCE}"),
            vec![header("metadata", HeaderValue::from_static("true"))],
        ),
        Endpoint::AzureAppService => get(
            format!("/msi/token?api-version=2019-08-01&resource={AZURE_RESOURCE}"),
            vec![header("x-identity-header", secrets.identity_header.clone())],
        ),
    }
}

/// `PUT /latest/api/token` as the SDKs send it (the Rust SDK always asks for the maximum TTL).
pub async fn imds_session(addr: SocketAddr) -> Result<HeaderValue, BenchError> {
    let put = Target {
        addr,
        method: Method::PUT,
        path_and_query: "/latest/api/token".into(),
        headers: vec![header("x-aws-ec2-metadata-token-ttl-seconds", HeaderValue::from_static("21600"))],
    };
    let client = reqwest::Client::builder().no_proxy().build().map_err(|e| BenchError::Request(e.to_string()))?;
    let response = client
        .put(format!("http://{addr}{}", put.path_and_query))
        .headers(put.headers.into_iter().collect())
        .send()
        .await
        .map_err(|e| BenchError::Request(format!("PUT /latest/api/token: {e}")))?;
    if response.status() != StatusCode::OK {
        return Err(BenchError::Request(format!("PUT /latest/api/token answered {}", response.status())));
    }
    let token = response.text().await.map_err(|e| BenchError::Request(format!("PUT /latest/api/token: {e}")))?;
    HeaderValue::from_str(&token)
        .map_err(|_| BenchError::Request("the IMDS session token is not a header value".into()))
}

/// One request on a fresh connection: the size keyless answers with (the bare server answers
/// the same size). Fails unless it is a 200.
pub async fn body_len(target: &Target) -> Result<usize, BenchError> {
    let mut sender = load::connect(target.addr).await?;
    match load::send(&mut sender, target).await? {
        (StatusCode::OK, len) => Ok(len),
        (status, _) => Err(BenchError::Request(format!("{} answered {status}", target.path_and_query))),
    }
}
