//! Whose token: a ServiceAccount's subject tokens from the TokenRequest API
//! (`serviceaccounts/NAME/token`), one per cloud audience, each bound to a live pod of the
//! ServiceAccount on this node (`boundObjectRef`: the API server invalidates it when that pod
//! goes), written where the ServiceAccount's providers read them, as the kubelet writes a
//! projected token: a new file renamed over the old one, so a reader never sees half of one.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::PostParams;
use kube::{Api, Client};

use super::pods::{AccountRef, PodView};

/// The shortest lifetime the API server grants (it raises shorter requests to this).
pub const MIN_LIFETIME: Duration = Duration::from_secs(600);
/// One TokenRequest gives up after this long.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Requests tokens of any ServiceAccount (RBAC: create `serviceaccounts/token`).
#[derive(Clone)]
pub struct Requester {
    client: Client,
    lifetime: Duration,
}

impl std::fmt::Debug for Requester {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Requester").field("lifetime", &self.lifetime).finish_non_exhaustive()
    }
}

impl Requester {
    pub fn new(client: Client, lifetime: Duration) -> Self {
        Self { client, lifetime }
    }

    /// A token of `account` for `audience`, bound to `pod`, and when it expires.
    pub async fn request(
        &self,
        account: &AccountRef,
        audience: &str,
        pod: &PodView,
    ) -> Result<(String, SystemTime), String> {
        let api: Api<ServiceAccount> = Api::namespaced(self.client.clone(), &account.namespace);
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: vec![audience.to_owned()],
                expiration_seconds: Some(i64::try_from(self.lifetime.as_secs()).unwrap_or(i64::MAX)),
                bound_object_ref: Some(BoundObjectReference {
                    api_version: Some("v1".to_owned()),
                    kind: Some("Pod".to_owned()),
                    name: Some(pod.name.clone()),
                    uid: Some(pod.uid.clone()),
                }),
            },
            ..TokenRequest::default()
        };
        let asked = tokio::time::timeout(
            REQUEST_TIMEOUT,
            api.create_token_request(&account.name, &PostParams::default(), &request),
        )
        .await
        .map_err(|_| format!("the TokenRequest for {account} did not finish within {REQUEST_TIMEOUT:?}"))?
        .map_err(|e| {
            format!(
                "the TokenRequest for {account} (audience {audience}) failed: {} (keyless node needs create on \
                 serviceaccounts/token)",
                keyless_core::printable::printable(&e.to_string(), 512)
            )
        })?;
        let status = asked.status.ok_or_else(|| format!("the TokenRequest for {account} returned no token"))?;
        let expires = SystemTime::from(status.expiration_timestamp.0);
        Ok((status.token, expires))
    }
}

/// Writes `token` to `path` (mode 0600) through a temporary file renamed over it.
pub fn write_token(path: &Path, token: &str) -> Result<(), String> {
    let dir = path.parent().ok_or_else(|| format!("{} has no directory", path.display()))?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("token");
    let temporary = dir.join(format!(".{name}.new"));
    let _ = std::fs::remove_file(&temporary);
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&temporary)?;
        file.write_all(token.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)
    };
    write().map_err(|e| format!("cannot write the token file {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_replaced_whole_and_readable_by_keyless_only() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("a directory");
        let path = dir.path().join("aws-token");
        write_token(&path, "first").expect("written");
        write_token(&path, "second").expect("replaced");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "second");
        let mode = std::fs::metadata(&path).expect("metadata").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let names: Vec<_> =
            std::fs::read_dir(dir.path()).expect("listing").map(|e| e.expect("entry").file_name()).collect();
        assert_eq!(names.len(), 1, "no temporary file is left: {names:?}");
    }
}
