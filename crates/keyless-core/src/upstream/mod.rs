//! Rules every adapter applies to the upstream endpoints it is configured with (the security rules, docs/reliability.md:
//! upstream TLS only, except loopback endpoints named explicitly in config).

pub mod client;

pub use client::{BodyError, ClientError, ClientRules, bypasses_proxy, read_bounded};

use std::error::Error;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// A configuration mistake in an upstream setting; the message names the key and the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    #[error("{key} = {value:?} is not a URL: {reason}")]
    NotAUrl { key: String, value: String, reason: String },
    #[error(
        "{key} = {value:?} uses plain http to a host that is not loopback: credentials would cross the network \
         unencrypted; use https (plain http is accepted only for 127.0.0.0/8, ::1 and localhost)"
    )]
    PlainHttp { key: String, value: String },
    #[error("{key} = {value:?} has scheme {scheme:?}: use https")]
    Scheme { key: String, value: String, scheme: String },
    #[error("{key} = {path:?} cannot be read: {reason}")]
    CaFile { key: String, path: PathBuf, reason: String },
    #[error("{key} = {path:?} holds no PEM certificate (expected one or more -----BEGIN CERTIFICATE----- blocks)")]
    CaFileEmpty { key: String, path: PathBuf },
}

/// Parses an upstream endpoint from config key `key`: https anywhere, http only to loopback.
/// A trailing slash is removed so callers can append paths.
pub fn endpoint(key: &str, value: &str) -> Result<url::Url, UpstreamError> {
    let trimmed = value.trim().trim_end_matches('/');
    let url = url::Url::parse(trimmed).map_err(|e| UpstreamError::NotAUrl {
        key: key.to_owned(),
        value: value.to_owned(),
        reason: e.to_string(),
    })?;
    match url.scheme() {
        "https" => Ok(url),
        "http" if is_loopback_host(&url) => Ok(url),
        "http" => Err(UpstreamError::PlainHttp { key: key.to_owned(), value: value.to_owned() }),
        other => Err(UpstreamError::Scheme { key: key.to_owned(), value: value.to_owned(), scheme: other.to_owned() }),
    }
}

/// Whether `url`'s host is loopback (127.0.0.0/8, `::1`, `localhost`).
pub fn is_loopback_host(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    }
}

/// Whether `url`'s host is a link-local address (169.254.0.0/16, fe80::/10): the clouds' instance
/// metadata, reached on this host's own link.
pub fn is_link_local_host(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_link_local(),
        Some(url::Host::Ipv6(ip)) => match ip.to_ipv4_mapped() {
            Some(v4) => v4.is_link_local(),
            None => (ip.segments()[0] & 0xffc0) == 0xfe80,
        },
        _ => false,
    }
}

/// `err: cause: cause...`, each distinct message once (clients often repeat their cause): a
/// transport error as errors show it, for the token services and the fetching sources alike.
pub fn cause_chain(err: &(dyn Error + 'static)) -> String {
    let mut chain = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !chain.contains(&text) {
            chain.push_str(": ");
            chain.push_str(&text);
        }
        source = cause.source();
    }
    chain
}

/// Whether a transport error's [`cause_chain`] says the server's certificate is not trusted
/// here (rustls: `invalid peer certificate: UnknownIssuer`): the one reading of it, so a token
/// service and a token source name the same fix for the same failure.
pub fn is_untrusted_certificate(chain: &str) -> bool {
    let lower = chain.to_ascii_lowercase();
    lower.contains("certificate") || lower.contains("unknownissuer") || lower.contains("invalid peer")
}

/// Reads a PEM CA bundle named by config key `key` (for TLS-intercepting proxies and the
/// emulator) and returns its bytes, checked to contain at least one certificate.
pub fn ca_bundle(key: &str, path: &Path) -> Result<Vec<u8>, UpstreamError> {
    let pem = std::fs::read(path).map_err(|e| UpstreamError::CaFile {
        key: key.to_owned(),
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
        return Err(UpstreamError::CaFileEmpty { key: key.to_owned(), path: path.to_owned() });
    }
    Ok(pem)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_anywhere_http_only_on_loopback() {
        assert_eq!(
            endpoint("k", "https://sts.amazonaws.com/").map(|u| u.to_string()).ok().as_deref(),
            Some("https://sts.amazonaws.com/")
        );
        assert!(endpoint("k", "http://127.0.0.1:5000").is_ok());
        assert!(endpoint("k", "http://[::1]:5000").is_ok());
        assert!(endpoint("k", "http://localhost:5000").is_ok());
        let err = endpoint("aws.sts_endpoint", "http://10.0.0.1").expect_err("plain http off-host");
        assert!(err.to_string().contains("aws.sts_endpoint"));
        assert!(matches!(endpoint("k", "ftp://x"), Err(UpstreamError::Scheme { .. })));
        assert!(matches!(endpoint("k", "not a url"), Err(UpstreamError::NotAUrl { .. })));
    }
}
