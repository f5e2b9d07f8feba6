//! The one HTTP client stack of every call to a token service (GCP, Azure; AWS applies the same
//! rules to its SDK's client) and of every fetching token source (GitHub Actions, URL):
//!
//! - a timeout for the whole request, the connection within [`CONNECT_TIMEOUT`] of it;
//! - redirects are never followed (one would carry the subject token or a bearer token elsewhere);
//! - the proxy rule ([`bypasses_proxy`]): a loopback endpoint (the emulator, moto, a local proxy)
//!   or a link-local one (this host's own instance metadata) is never reached through
//!   `HTTPS_PROXY`, which would see the request's tokens; others honour `HTTPS_PROXY`/`NO_PROXY`
//!   as the clouds' SDKs do;
//! - the configured CA bundle added to the system roots;
//! - response bodies read up to a bound ([`read_bounded`]).
//!
//! Errors quoting an answer go through [`crate::printable::upstream`]: one escape, one length.

use std::time::Duration;

use super::{is_link_local_host, is_loopback_host};

/// Longest wait for a TCP/TLS connection, within the request's timeout.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What an upstream client is built from.
#[derive(Debug, Clone, Copy)]
pub struct ClientRules<'a> {
    /// Every endpoint the client calls: without a proxy only when every one [`bypasses_proxy`].
    pub endpoints: &'a [&'a url::Url],
    /// The whole request's timeout (the connection's is at most [`CONNECT_TIMEOUT`] of it).
    pub timeout: Duration,
    /// PEM certificates trusted besides the system roots.
    pub ca_pem: Option<&'a [u8]>,
    /// The config key of `ca_pem`, for errors.
    pub ca_key: &'a str,
}

/// Why an upstream client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{key} holds a certificate that cannot be parsed: {reason}")]
    CaFile { key: String, reason: String },
    #[error("cannot build the HTTPS client for the token service: {0}")]
    Build(String),
}

/// Whether a request to `url` goes without a proxy: loopback and link-local hosts.
pub fn bypasses_proxy(url: &url::Url) -> bool {
    is_loopback_host(url) || is_link_local_host(url)
}

/// The connection's timeout within a request's `total`: [`CONNECT_TIMEOUT`], or the whole
/// request's when that is shorter (the rule reqwest and the AWS SDK's client are both given).
pub fn connect_timeout(total: Duration) -> Duration {
    CONNECT_TIMEOUT.min(total)
}

/// A reqwest builder with every rule of this module, for a caller that adds its own (a resolver
/// override); [`client`] builds it as it is.
pub fn client_builder(rules: &ClientRules<'_>) -> Result<reqwest::ClientBuilder, ClientError> {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(connect_timeout(rules.timeout))
        .timeout(rules.timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("keyless/", env!("CARGO_PKG_VERSION")));
    if rules.endpoints.iter().all(|url| bypasses_proxy(url)) {
        builder = builder.no_proxy();
    }
    if let Some(pem) = rules.ca_pem {
        let certs = reqwest::Certificate::from_pem_bundle(pem)
            .map_err(|e| ClientError::CaFile { key: rules.ca_key.to_owned(), reason: e.to_string() })?;
        builder = builder.tls_certs_merge(certs);
    }
    Ok(builder)
}

/// The client of `rules`.
pub fn client(rules: &ClientRules<'_>) -> Result<reqwest::Client, ClientError> {
    client_builder(rules)?.build().map_err(|e| ClientError::Build(e.to_string()))
}

/// Why [`read_bounded`] gave no body.
#[derive(Debug)]
pub enum BodyError {
    /// The body is longer than the bound: the rest was not read.
    TooLarge,
    /// The connection failed while the body was read.
    Transport(reqwest::Error),
}

/// `response`'s body, at most `max` bytes: a longer one is refused without being read further
/// (a misbehaving proxy or endpoint must not fill the memory within the request's timeout).
pub async fn read_bounded(mut response: reqwest::Response, max: usize) -> Result<Vec<u8>, BodyError> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(BodyError::Transport)? {
        if body.len() + chunk.len() > max {
            return Err(BodyError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> url::Url {
        url::Url::parse(s).expect("a URL")
    }

    /// Loopback and link-local endpoints (this host's instance metadata) are reached without a
    /// proxy, by token services and sources alike; anything else through it.
    #[test]
    fn loopback_and_link_local_endpoints_bypass_the_proxy() {
        for local in ["https://127.0.0.1:1", "https://localhost/x", "http://[::1]:2", "https://169.254.169.254/t"] {
            assert!(bypasses_proxy(&url(local)), "{local}");
        }
        for remote in ["https://sts.amazonaws.com", "https://10.0.0.1", "https://metadata.google.internal"] {
            assert!(!bypasses_proxy(&url(remote)), "{remote}");
        }
    }
}
