//! The container-credentials endpoint (`AWS_CONTAINER_CREDENTIALS_FULL_URI`, docs/protocols.md 2.2) and
//! the `Authorization` value clients must present to it.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::http::{StatusCode, header};
use axum::response::Response;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use keyless_core::Secret;
use keyless_provider::Request;
use rand::Rng as _;

use crate::error::ConfigError;
use crate::serve::{Served, error_json, json_bytes};

/// The `Authorization` value of the endpoint, and the file apps read it from (if any).
#[derive(Debug, Clone)]
pub(crate) struct ContainerAuth {
    pub(crate) token: Secret<String>,
    pub(crate) file: Option<PathBuf>,
}

/// Longest value accepted: it travels as one HTTP header.
const MAX_TOKEN_LEN: usize = 4096;

impl ContainerAuth {
    /// The configured value, else the file's content; when the file does not exist it is created
    /// (mode 0600) with the value or a random one; with neither, a random value held in memory.
    pub(crate) fn resolve(token: Option<Secret<String>>, file: Option<PathBuf>) -> Result<Self, ConfigError> {
        if let Some(t) = &token {
            check_value(t.expose()).map_err(|m| ConfigError::invalid("authorization_token", m))?;
        }
        let Some(path) = file else {
            let token = token.unwrap_or_else(generate);
            return Ok(Self { token, file: None });
        };
        // Bounded: a FIFO, a device or a huge file here must not hang or bloat the start.
        let token = match keyless_core::read_regular_file(&path, MAX_TOKEN_LEN as u64) {
            Ok(bytes) => {
                let content =
                    String::from_utf8(bytes).map_err(|_| ConfigError::token_file(&path, "is not UTF-8 text"))?;
                check_value(&content).map_err(|m| ConfigError::token_file(&path, m))?;
                let content = Secret::new(content);
                if token.as_ref().is_some_and(|t| t != &content) {
                    return Err(ConfigError::token_file(
                        &path,
                        "holds a different value than aws.authorization_token: SDKs that read the file and SDKs that \
                         read the value would disagree; set only one of them",
                    ));
                }
                content
            }
            Err(keyless_core::RegularFileError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                let token = token.unwrap_or_else(generate);
                write_new(&path, &token)?;
                token
            }
            Err(e) => return Err(ConfigError::token_file(&path, e.to_string())),
        };
        Ok(Self { token, file: Some(path) })
    }
}

/// A header-safe value. A trailing newline is the classic mistake (`echo` instead of `printf`):
/// botocore raises on CR/LF, Rust rejects the header, Node throws (docs/protocols.md 2.2 traps).
fn check_value(value: &str) -> Result<(), String> {
    if value.ends_with('\n') || value.ends_with('\r') {
        return Err(
            "ends with a newline, which every AWS SDK rejects in the Authorization header; write it without one \
             (printf '%s' \"$TOKEN\" > FILE)"
                .to_owned(),
        );
    }
    if value.is_empty() || value.len() > MAX_TOKEN_LEN {
        return Err(format!("must be 1 to {MAX_TOKEN_LEN} characters long"));
    }
    if value.starts_with(' ') || value.ends_with(' ') || !value.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(
            "must be printable ASCII without leading or trailing spaces (it is sent as an HTTP header)".to_owned()
        );
    }
    Ok(())
}

/// 256 random bits, base64url: unguessable and header-safe.
fn generate() -> Secret<String> {
    let mut bytes = [0u8; 32];
    rand::rng().fill(&mut bytes);
    Secret::new(URL_SAFE_NO_PAD.encode(bytes))
}

/// Creates `path` with `token` and nothing else: no trailing newline, mode 0600, never replacing
/// a file that appeared in the meantime.
fn write_new(path: &Path, token: &Secret<String>) -> Result<(), ConfigError> {
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(|e| {
        ConfigError::token_file(
            path,
            format!("cannot be created ({e}): its directory must exist and be writable by keyless"),
        )
    })?;
    file.write_all(token.expose().as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| ConfigError::token_file(path, format!("cannot be written: {e}")))
}

/// The refusal of a request without the configured authorization token, in the endpoint's shape.
fn unauthorized(auth: &ContainerAuth, request: &Request) -> Option<Response> {
    let Some(given) = request.headers().get(header::AUTHORIZATION) else {
        return Some(error_json(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "missing Authorization header: set AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE (or \
             AWS_CONTAINER_AUTHORIZATION_TOKEN) to what keyless was configured with",
        ));
    };
    (!auth.token.matches(given.as_bytes())).then(|| {
        error_json(
            StatusCode::FORBIDDEN,
            "AccessDenied",
            "the Authorization header does not match keyless's authorization token",
        )
    })
}

/// What answers `{container path}/roles/NAME` when no role is served there: the named roles,
/// told only to a client holding the authorization token (which may fetch any of them anyway).
#[derive(Debug)]
pub(crate) struct UnknownRole {
    pub(crate) auth: ContainerAuth,
    /// Each named role's name and container path.
    pub(crate) roles: Vec<(String, String)>,
}

/// The longest role name quoted back (names are at most 64 characters).
const MAX_QUOTED_NAME: usize = 80;

/// `GET {container path}/roles/NAME` for a NAME no role is served on: 404 naming the roles that
/// are (`keyless credential-process --role NAME` prints it).
pub(crate) async fn unknown_role(state: Arc<UnknownRole>, request: Request) -> Response {
    if let Some(refused) = unauthorized(&state.auth, &request) {
        return refused;
    }
    let asked = request.uri().path().rsplit_once("/roles/").map_or("", |(_, name)| name);
    let asked = keyless_core::printable::printable(asked, MAX_QUOTED_NAME);
    let known = if state.roles.is_empty() {
        "none is configured ([[aws.roles]])".to_owned()
    } else {
        let roles: Vec<String> = state.roles.iter().map(|(name, path)| format!("{name} (on {path})")).collect();
        roles.join(", ")
    };
    error_json(
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!("no role named \"{asked}\" is served here; named roles: {known}"),
    )
}

#[derive(Debug, Clone)]
pub(crate) struct ContainerState {
    pub(crate) served: Served,
    pub(crate) auth: ContainerAuth,
}

/// `GET` with `Authorization: <token>` -> the credential JSON of docs/protocols.md 2.2.
///
/// The hot path of the endpoint: the state is shared (not cloned per request), the headers are
/// read in place and the body is the credential's pre-rendered JSON.
pub(crate) async fn credentials(state: Arc<ContainerState>, request: Request) -> Response {
    if let Some(refused) = unauthorized(&state.auth, &request) {
        return refused;
    }
    match state.served.credential().await {
        Ok(c) => json_bytes(c.value.container_body(state.served.role.as_str())),
        Err(response) => response,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn asked(path: &str, authorization: Option<&str>) -> (StatusCode, String) {
        let state = Arc::new(UnknownRole {
            auth: ContainerAuth { token: Secret::new("t0ken".to_owned()), file: None },
            roles: vec![("writer".to_owned(), "/v1/credentials/roles/writer".to_owned())],
        });
        let mut request = Request::new(());
        *request.uri_mut() = path.parse().expect("a path");
        if let Some(value) = authorization {
            request.headers_mut().insert(header::AUTHORIZATION, value.parse().expect("a header"));
        }
        let response = unknown_role(state, request).await;
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 64 * 1024).await.expect("a body");
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn an_unknown_role_is_told_the_named_roles_only_with_the_token() {
        let (status, body) = asked("/v1/credentials/roles/nobody", Some("t0ken")).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(
            body.contains(
                r#"no role named \"nobody\" is served here; named roles: writer (on /v1/credentials/roles/writer)"#
            ),
            "{body}"
        );
        for refused in [None, Some("wrong")] {
            let (status, body) = asked("/v1/credentials/roles/nobody", refused).await;
            assert!(status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN, "{status}");
            assert!(!body.contains("writer"), "{body}");
        }
        // The name asked for is the client's text: bounded when quoted back.
        let (_, body) = asked(&format!("/v1/credentials/roles/{}", "x".repeat(4096)), Some("t0ken")).await;
        assert!(body.len() < 1024, "{} bytes", body.len());
    }
}
