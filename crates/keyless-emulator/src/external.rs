//! Issuers the emulator trusts besides its own: a real cluster's service-account issuer (a
//! Kubernetes API server), registered through `POST /_emulator/trusted-issuers`. As AWS, Google and
//! Entra do with a cluster's public issuer, the emulator fetches the issuer's discovery document
//! (`{issuer}/.well-known/openid-configuration`), checks that it names the same issuer, and fetches
//! the JWKS it points to; tokens of that issuer are then verified against those keys.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

/// How long one fetch of a discovery document or JWKS may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest discovery document or JWKS accepted.
const MAX_DOCUMENT_BYTES: usize = 64 * 1024;

/// An external issuer and its published keys.
#[derive(Debug)]
struct External {
    url: String,
    keys: JwkSet,
}

/// The external issuers, by URL (a later registration of the same URL replaces its keys).
#[derive(Debug, Default)]
pub(crate) struct ExternalIssuers {
    issuers: Mutex<Vec<External>>,
}

impl ExternalIssuers {
    /// Whether `iss` is a registered external issuer.
    pub(crate) fn trusts(&self, iss: &str) -> bool {
        self.lock().iter().any(|e| e.url == iss)
    }

    /// Whether `token` is signed (RS256 or ES256) by one of `iss`'s published keys.
    pub(crate) fn signed(&self, iss: &str, token: &str) -> bool {
        self.lock().iter().find(|e| e.url == iss).is_some_and(|e| signed_by(&e.keys, token))
    }

    /// Adds (or refreshes) `issuer` with `keys`.
    fn insert(&self, issuer: String, keys: JwkSet) {
        let mut issuers = self.lock();
        issuers.retain(|e| e.url != issuer);
        issuers.push(External { url: issuer, keys });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<External>> {
        self.issuers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Fetches `issuer`'s discovery document and JWKS (over HTTPS, trusting `ca_pem` if given,
    /// else the system's roots) and trusts it; returns how many keys it publishes.
    pub(crate) async fn register(&self, issuer: &str, ca_pem: Option<&str>) -> Result<usize, String> {
        let client = https_client(ca_pem)?;
        let discovery_url = format!("{}/.well-known/openid-configuration", issuer.trim_end_matches('/'));
        let discovery: Discovery = fetch_json(&client, &discovery_url).await?;
        if discovery.issuer != issuer {
            return Err(format!(
                "{discovery_url} names the issuer {:?}, not {issuer:?}: the clouds refuse such a provider",
                discovery.issuer
            ));
        }
        let keys: JwkSet = fetch_json(&client, &discovery.jwks_uri).await?;
        if keys.keys.is_empty() {
            return Err(format!("{} publishes no key", discovery.jwks_uri));
        }
        let count = keys.keys.len();
        self.insert(issuer.to_owned(), keys);
        tracing::info!(issuer, keys = count, "trusting an external OIDC issuer");
        Ok(count)
    }
}

/// The fields of an OpenID discovery document the clouds use.
#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
}

fn https_client(ca_pem: Option<&str>) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder().timeout(FETCH_TIMEOUT).no_proxy();
    if let Some(pem) = ca_pem {
        let certificates = reqwest::Certificate::from_pem_bundle(pem.as_bytes())
            .map_err(|e| format!("ca_pem is not a PEM certificate bundle: {e}"))?;
        builder = builder.tls_certs_only(certificates);
    }
    builder.build().map_err(|e| format!("building the HTTPS client: {e}"))
}

/// `GET url` as JSON, bounded in time and size (read chunk by chunk: a chunked answer names no
/// length, and is never held beyond [`MAX_DOCUMENT_BYTES`]).
async fn fetch_json<T: serde::de::DeserializeOwned>(client: &reqwest::Client, url: &str) -> Result<T, String> {
    let mut response = client.get(url).send().await.map_err(|e| format!("GET {url}: {e}"))?;
    let status = response.status();
    if !status.is_success() {
        return Err(format!("GET {url}: {status} (is the issuer's discovery public?)"));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| format!("GET {url}: reading the body: {e}"))? {
        if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
            return Err(format!("GET {url}: the document is over {MAX_DOCUMENT_BYTES} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    serde_json::from_slice(&body).map_err(|e| format!("GET {url}: not the expected JSON document: {e}"))
}

/// Whether `token`'s signature verifies against the key of `keys` its header names.
fn signed_by(keys: &JwkSet, token: &str) -> bool {
    let Ok(header) = jsonwebtoken::decode_header(token) else {
        return false;
    };
    if !matches!(header.alg, Algorithm::RS256 | Algorithm::ES256) {
        return false;
    }
    let jwk = match header.kid.as_deref() {
        Some(kid) => keys.find(kid),
        None => keys.keys.first(),
    };
    let Some(key) = jwk.and_then(|jwk| DecodingKey::from_jwk(jwk).ok()) else {
        return false;
    };
    let mut validation = Validation::new(header.alg);
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    jsonwebtoken::decode::<serde_json::Value>(token, &key, &validation).is_ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    /// A one-shot HTTP/1.1 server answering 200 with `body` sent chunked (no Content-Length), then,
    /// if `endless`, more chunks until the client hangs up.
    async fn chunked_server(body: &'static [u8], endless: bool) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 4096];
            let _ = socket.read(&mut request).await;
            let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n";
            socket.write_all(head.as_bytes()).await.unwrap();
            let chunk = |piece: &[u8]| {
                [format!("{:x}\r\n", piece.len()).into_bytes(), piece.to_vec(), b"\r\n".to_vec()].concat()
            };
            socket.write_all(&chunk(body)).await.unwrap();
            let padding = chunk(&[b' '; 8192]);
            while endless && socket.write_all(&padding).await.is_ok() {}
            let _ = socket.write_all(b"0\r\n\r\n").await;
        });
        format!("http://{addr}/jwks")
    }

    #[tokio::test]
    async fn a_chunked_document_is_refused_once_over_the_bound_not_read_to_its_end() {
        let url = chunked_server(b"{\"keys\":[]}", true).await;
        let client = https_client(None).unwrap();
        let fetch = fetch_json::<serde_json::Value>(&client, &url);
        // Reading it whole would last until the fetch timeout (10 s), then fail on the timeout.
        let err = tokio::time::timeout(Duration::from_secs(5), fetch).await.expect("refused at once").unwrap_err();
        assert!(err.contains(&format!("is over {MAX_DOCUMENT_BYTES} bytes")), "{err}");
    }

    #[tokio::test]
    async fn a_chunked_document_within_the_bound_is_read() {
        let url = chunked_server(br#"{"keys":[]}"#, false).await;
        let keys: JwkSet = fetch_json(&https_client(None).unwrap(), &url).await.unwrap();
        assert!(keys.keys.is_empty());
    }
}
