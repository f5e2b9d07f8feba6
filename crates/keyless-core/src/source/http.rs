//! The bounded HTTP GET shared by the fetching sources (GitHub Actions, URL).

use std::path::PathBuf;
use std::time::Duration;

use crate::printable;
use crate::secret::Secret;
use crate::token::MAX_SUBJECT_TOKEN_BYTES;
use crate::upstream;

/// Longest wait for a whole fetch (the connection's: `upstream::client::CONNECT_TIMEOUT`).
pub(super) const FETCH_TIMEOUT: Duration = Duration::from_secs(15);

/// The largest response body read: a JSON wrapper around at most one subject token.
const MAX_BODY_BYTES: usize = (MAX_SUBJECT_TOKEN_BYTES as usize) + 4096;

/// One header of a request, its value secret (an `Authorization`, an API key).
pub(super) type Header = (String, Secret<String>);

/// The upstream client (`upstream::client`: no redirects, bounded time, no proxy for a loopback
/// or link-local URL) for `url`, `ca_file` added to the system roots.
pub(super) fn client(url: &url::Url, ca_file: Option<&PathBuf>) -> Result<reqwest::Client, String> {
    let pem = match ca_file {
        Some(path) => Some(upstream::ca_bundle("ca_file", path).map_err(|e| e.to_string())?),
        None => None,
    };
    let rules =
        upstream::ClientRules { endpoints: &[url], timeout: FETCH_TIMEOUT, ca_pem: pem.as_deref(), ca_key: "ca_file" };
    upstream::client::client(&rules).map_err(|e| match ca_file {
        Some(path) => format!("{e} ({})", path.display()),
        None => e.to_string(),
    })
}

/// Why a fetch gave no body. Never holds a header value or the URL's query.
#[derive(Debug)]
pub(super) enum FetchError {
    /// No HTTP answer (DNS, connect, TLS, timeout).
    Transport(String),
    /// An answer other than 200: the status and an escaped excerpt of the body.
    Status(u16, String),
    TooLarge,
}

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Transport(e) => {
                write!(f, "no answer: {e}")?;
                if upstream::is_untrusted_certificate(e) {
                    f.write_str(
                        " (the server's certificate is not trusted here: set the source's ca_file to a PEM bundle of \
                         its CA, or SSL_CERT_FILE to a bundle that holds it)",
                    )?;
                }
                Ok(())
            }
            Self::Status(status, body) => write!(f, "it answered HTTP {status}: {body}"),
            Self::TooLarge => write!(f, "it answered with more than {MAX_BODY_BYTES} bytes"),
        }
    }
}

impl FetchError {
    /// No answer: the error and its causes, without the URL reqwest puts in its own message (its
    /// query may be secret).
    fn transport(err: reqwest::Error) -> Self {
        Self::Transport(upstream::cause_chain(&err.without_url()))
    }
}

/// `GET url` with `headers`; the body of a 200 answer, at most [`MAX_BODY_BYTES`].
pub(super) async fn get(client: &reqwest::Client, url: &url::Url, headers: &[Header]) -> Result<Vec<u8>, FetchError> {
    let mut request = client.get(url.clone());
    for (name, value) in headers {
        request = request.header(name.as_str(), value.expose().as_str());
    }
    let response = request.send().await.map_err(FetchError::transport)?;
    let status = response.status().as_u16();
    let body = upstream::read_bounded(response, MAX_BODY_BYTES).await.map_err(|e| match e {
        upstream::BodyError::TooLarge => FetchError::TooLarge,
        upstream::BodyError::Transport(e) => FetchError::transport(e),
    })?;
    if status != 200 {
        let text = String::from_utf8_lossy(&body);
        return Err(FetchError::Status(status, printable::upstream(text.trim()).into_owned()));
    }
    Ok(body)
}

/// `url` as shown in logs and reports: scheme, host, port and path; never the query or userinfo.
pub(super) fn display_url(url: &url::Url) -> String {
    let mut shown = url.clone();
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.set_query(None);
    shown.set_fragment(None);
    shown.to_string()
}

/// Parses a source's URL: https anywhere; plain http only to loopback or a link-local metadata
/// address (169.254.0.0/16, fe80::/10: the clouds' instance metadata, as Google's url-sourced
/// credentials use on Azure VMs).
pub(super) fn source_url(key: &str, value: &str) -> Result<url::Url, String> {
    let url = url::Url::parse(value.trim()).map_err(|e| format!("{key} is not a URL: {e}"))?;
    match url.scheme() {
        "https" => Ok(url),
        "http" if upstream::is_loopback_host(&url) || upstream::is_link_local_host(&url) => Ok(url),
        "http" => Err(format!(
            "{key} {} uses plain http to a host that is neither loopback nor link-local: the token would cross \
             the network unencrypted; use https",
            display_url(&url)
        )),
        other => Err(format!("{key} has scheme {other:?}: use https")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_url_is_https_or_local_http() {
        assert!(source_url("k", "https://example.com/t").is_ok());
        assert!(source_url("k", "http://127.0.0.1:8080/t").is_ok());
        assert!(source_url("k", "http://169.254.169.254/metadata/identity").is_ok());
        assert!(source_url("k", "http://[fe80::1]/t").is_ok());
        assert!(source_url("k", "http://10.0.0.1/t").expect_err("off-host http").contains("plain http"));
        assert!(source_url("k", "ftp://example.com/t").expect_err("ftp").contains("scheme"));
    }

    #[test]
    fn link_local_hosts_are_recognised() {
        let url = |s: &str| url::Url::parse(s).expect("a URL");
        for local in ["http://169.254.169.254/x", "https://169.254.0.1/", "http://[fe80::1]/", "http://[febf::1]/"] {
            assert!(upstream::is_link_local_host(&url(local)), "{local}");
        }
        for other in ["http://169.253.0.1/", "http://127.0.0.1/", "http://[fec0::1]/", "http://metadata.internal/"] {
            assert!(!upstream::is_link_local_host(&url(other)), "{other}");
        }
    }

    #[test]
    fn a_displayed_url_has_no_query_and_no_credentials() {
        let url = url::Url::parse("https://user:pw@host.example/p/idtoken?sig=SECRET&api-version=2.0").expect("a URL");
        let shown = display_url(&url);
        assert_eq!(shown, "https://host.example/p/idtoken");
    }

    #[test]
    fn an_untrusted_certificate_names_ca_file_and_ssl_cert_file() {
        let untrusted = FetchError::Transport("error sending request: invalid peer certificate: UnknownIssuer".into());
        let text = untrusted.to_string();
        assert!(text.contains("set the source's ca_file") && text.contains("SSL_CERT_FILE"), "{text}");
        let refused = FetchError::Transport("error sending request: connection refused".into()).to_string();
        assert!(!refused.contains("ca_file"), "{refused}");
    }
}
