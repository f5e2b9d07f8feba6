//! The AWS container endpoint's per-pod authorization token (`AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`).
//!
//! In a sidecar the token is a secret keyless writes into the pod's own memory volume. A node agent
//! has no such private channel to each pod, and a value in the pod spec would be readable by anyone
//! who may read pods. So the pod's own projected ServiceAccount token with keyless node's audience
//! is the authorization: the kubelet writes and rotates it in the pod, and keyless node verifies it
//! locally: its signature against the API server's keys (`/openid/v1/jwks`, readable by every
//! ServiceAccount through the default `system:service-account-issuer-discovery` binding), its
//! issuer, audience and lifetime, and that its `kubernetes.io` pod claim is the pod that holds the
//! connection's source address now (UID, namespace, ServiceAccount). A token copied out of another
//! pod, or kept after its pod was deleted, does not match the caller.
//!
//! The source address alone (what IMDS-style endpoints trust) would do as well on a pod network
//! nobody can spoof; the token makes the AWS endpoint's authorization hold even where a pod can
//! spoof its source address (NET_RAW), as the protocol expects (docs/protocols.md).

use std::time::Duration;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use kube::Client;
use serde::Deserialize;
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::pods::Caller;

/// The keys are fetched again for an unknown key id at most this often (a flood of forged key ids
/// does not become a flood of API reads).
const REFETCH_INTERVAL: Duration = Duration::from_secs(10);
/// How long a read of the issuer or its keys may take (a request waiting for a refetch waits this
/// at most).
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest token considered (a projected token is about 1 KiB).
const MAX_TOKEN_LEN: usize = 16 * 1024;

#[derive(Debug, Deserialize)]
struct Discovery {
    issuer: String,
}

#[derive(Debug, Deserialize)]
struct Claims {
    #[serde(rename = "kubernetes.io")]
    kubernetes: KubernetesClaims,
}

#[derive(Debug, Deserialize)]
struct KubernetesClaims {
    namespace: String,
    pod: Option<ObjectClaim>,
    serviceaccount: NameClaim,
}

#[derive(Debug, Deserialize)]
struct NameClaim {
    name: String,
}

#[derive(Debug, Deserialize)]
struct ObjectClaim {
    name: String,
    uid: String,
}

/// Verifies pods' keyless node tokens.
pub struct PodTokens {
    client: Client,
    audience: String,
    issuer: String,
    keys: Mutex<(JwkSet, Instant)>,
}

impl std::fmt::Debug for PodTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodTokens").field("audience", &self.audience).field("issuer", &self.issuer).finish()
    }
}

async fn get_json<T: serde::de::DeserializeOwned>(client: &Client, path: &str) -> Result<T, String> {
    let request = axum::http::Request::get(path).body(Vec::new()).map_err(|e| e.to_string())?;
    let text = tokio::time::timeout(FETCH_TIMEOUT, client.request_text(request))
        .await
        .map_err(|_| format!("GET {path}: no answer within {FETCH_TIMEOUT:?}"))?
        .map_err(|e| format!("GET {path}: {e}"))?;
    serde_json::from_str(&text).map_err(|e| format!("GET {path}: not the expected JSON: {e}"))
}

impl PodTokens {
    /// Reads the issuer and its keys from the API server.
    pub async fn discover(client: Client, audience: String) -> Result<Self, String> {
        let discovery: Discovery = get_json(&client, "/.well-known/openid-configuration").await?;
        let keys: JwkSet = get_json(&client, "/openid/v1/jwks").await?;
        Ok(Self { client, audience, issuer: discovery.issuer, keys: Mutex::new((keys, Instant::now())) })
    }

    /// The key `kid` names, fetching the keys again (rate-limited) when it is not known (the API
    /// server's signing key was rotated).
    async fn key(&self, kid: Option<&str>) -> Result<DecodingKey, String> {
        let mut keys = self.keys.lock().await;
        let find = |set: &JwkSet| match kid {
            Some(kid) => set.find(kid).cloned(),
            None if set.keys.len() == 1 => set.keys.first().cloned(),
            None => None,
        };
        let jwk = match find(&keys.0) {
            Some(jwk) => jwk,
            None if keys.1.elapsed() >= REFETCH_INTERVAL => {
                let fresh: JwkSet = get_json(&self.client, "/openid/v1/jwks").await?;
                *keys = (fresh, Instant::now());
                find(&keys.0).ok_or("signed with a key the API server does not publish")?
            }
            None => return Err("signed with a key the API server does not publish".to_owned()),
        };
        DecodingKey::from_jwk(&jwk).map_err(|e| format!("the API server's key is unusable: {e}"))
    }

    /// Whether `token` is a valid keyless node token of `caller`; `Err` says why not (for the log,
    /// never for the client: it may quote claims).
    pub async fn verify(&self, token: &str, caller: &Caller) -> Result<(), String> {
        if token.len() > MAX_TOKEN_LEN {
            return Err("longer than any projected token".to_owned());
        }
        let header = jsonwebtoken::decode_header(token).map_err(|e| format!("not a JWT: {e}"))?;
        // The algorithms a Kubernetes service-account signing key can have; never `none` or HMAC.
        let allowed = [Algorithm::RS256, Algorithm::RS384, Algorithm::RS512, Algorithm::ES256, Algorithm::ES384];
        if !allowed.contains(&header.alg) {
            return Err(format!("signed with {:?}, not a service-account key's algorithm", header.alg));
        }
        let key = self.key(header.kid.as_deref()).await?;
        let mut validation = Validation::new(header.alg);
        validation.set_audience(&[&self.audience]);
        validation.set_issuer(&[&self.issuer]);
        validation.set_required_spec_claims(&["exp", "aud", "iss"]);
        validation.validate_nbf = true;
        validation.leeway = 5;
        let claims = jsonwebtoken::decode::<Claims>(token, &key, &validation)
            .map_err(|e| format!("not valid: {e}"))?
            .claims
            .kubernetes;
        let pod = claims.pod.ok_or("not bound to a pod (a projected token is)")?;
        let matches = pod.uid == caller.uid
            && pod.name == caller.name
            && claims.namespace == caller.account.namespace
            && claims.serviceaccount.name == caller.account.name;
        if matches {
            Ok(())
        } else {
            Err("a token of another pod than the one at the connection's source address".to_owned())
        }
    }
}
