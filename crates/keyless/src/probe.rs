//! `keyless probe URL`: a container health check for images that have no shell and no curl (the
//! keyless image is `FROM scratch`). Compose's `healthcheck` runs it against `/readyz`, and
//! against the emulator, so that services start only once what they depend on is ready.

use std::path::Path;
use std::time::Duration;

/// GETs `url` once; `Ok` on a 2xx answer, otherwise what went wrong.
pub async fn probe(url: &str, ca_file: Option<&Path>, timeout: Duration) -> Result<(), String> {
    // Health checks target loopback or a sibling container: a proxy from the env has no business here.
    let mut client = reqwest::Client::builder().no_proxy().timeout(timeout);
    if let Some(path) = ca_file {
        let pem = std::fs::read(path).map_err(|e| format!("cannot read --ca-file {}: {e}", path.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| format!("--ca-file {} is not a PEM certificate bundle: {e}", path.display()))?;
        client = client.tls_certs_only(certs);
    }
    let client = client.build().map_err(|e| format!("cannot build an HTTP client: {e}"))?;
    let response = client.get(url).send().await.map_err(|e| {
        let cause = std::error::Error::source(&e).map(|s| format!(": {s}")).unwrap_or_default();
        format!("GET {url} failed: {e}{cause} (is the service running and listening there?)")
    })?;
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let body = response.text().await.unwrap_or_default();
    let body: String = body.chars().take(300).collect();
    Err(format!("GET {url} answered {status}: {}", body.trim()))
}
