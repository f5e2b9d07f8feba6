//! The cluster's OIDC issuer: signs projected service-account tokens (and whatever a test mints),
//! publishes discovery and JWKS like the Kubernetes API server, and judges subject tokens for the
//! three clouds' token services.

use std::time::SystemTime;

use axum::Json;
use axum::extract::State;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

use crate::SharedState;
use crate::clock;
use crate::error::EmulatorError;
use crate::external::ExternalIssuers;
use crate::keys::{HeaderStyle, RsaKey, jwks};

/// Claims of a JWT for [`crate::Emulator::mint`] and `POST /_emulator/mint`: start from
/// [`MintClaims::new`] and change what the test is about.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MintClaims {
    /// `aud` (always written as an array, like the kubelet does).
    pub aud: Vec<String>,
    /// `sub`; `None` means the dev subject `system:serviceaccount:NS:SA`.
    #[serde(default)]
    pub sub: Option<String>,
    /// `iss`; `None` means the emulator's issuer URL.
    #[serde(default)]
    pub iss: Option<String>,
    /// `iat` and `nbf` relative to now, in seconds (negative: in the past).
    #[serde(default)]
    pub iat_offset_secs: i64,
    /// `exp` relative to now, in seconds (negative: already expired).
    #[serde(default = "default_exp_offset")]
    pub exp_offset_secs: i64,
    /// Sign with a key the issuer does not publish (a forged token).
    #[serde(default)]
    pub untrusted_key: bool,
}

fn default_exp_offset() -> i64 {
    3600
}

impl MintClaims {
    /// A valid token for `aud`: dev subject, emulator issuer, issued now, valid for one hour.
    pub fn new(aud: impl Into<String>) -> Self {
        Self {
            aud: vec![aud.into()],
            sub: None,
            iss: None,
            iat_offset_secs: 0,
            exp_offset_secs: default_exp_offset(),
            untrusted_key: false,
        }
    }
}

/// The `kubernetes.io` claim of a projected token.
#[derive(Debug, Serialize)]
struct KubernetesClaim<'a> {
    namespace: &'a str,
    pod: NamedObject<'a>,
    serviceaccount: NamedObject<'a>,
}

#[derive(Debug, Serialize)]
struct NamedObject<'a> {
    name: &'a str,
    uid: &'a str,
}

/// Claims as the kubelet's TokenRequest writes them.
#[derive(Debug, Serialize)]
struct ProjectedClaims<'a> {
    aud: &'a [String],
    exp: i64,
    iat: i64,
    iss: &'a str,
    jti: String,
    #[serde(rename = "kubernetes.io")]
    kubernetes: KubernetesClaim<'a>,
    nbf: i64,
    sub: &'a str,
}

/// The issuer: its URL, its published key, and a key nobody trusts.
#[derive(Debug)]
pub(crate) struct Issuer {
    url: String,
    key: RsaKey,
    untrusted: RsaKey,
    namespace: String,
    service_account: String,
    pod_uid: String,
    service_account_uid: String,
    /// Issuers trusted besides this one (a real cluster's): `POST /_emulator/trusted-issuers`.
    pub(crate) external: ExternalIssuers,
}

impl Issuer {
    pub(crate) fn new(url: String, namespace: &str, service_account: &str) -> Result<Self, EmulatorError> {
        Ok(Self {
            url,
            key: RsaKey::generate("OIDC issuer signing key")?,
            untrusted: RsaKey::generate("untrusted test signing key")?,
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
            pod_uid: uuid::Uuid::new_v4().to_string(),
            service_account_uid: uuid::Uuid::new_v4().to_string(),
            external: ExternalIssuers::default(),
        })
    }

    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// Whether tokens of `iss` are accepted: this issuer's, or a registered external one's.
    pub(crate) fn trusts(&self, iss: &str) -> bool {
        iss == self.url || self.external.trusts(iss)
    }

    fn subject(&self) -> String {
        format!("system:serviceaccount:{}:{}", self.namespace, self.service_account)
    }

    /// Signs `claims` (see [`MintClaims`]).
    pub(crate) fn mint(&self, claims: &MintClaims, now: SystemTime) -> Result<String, EmulatorError> {
        let now = clock::unix_secs(now);
        let iat = now.saturating_add(claims.iat_offset_secs);
        let subject = claims.sub.clone().unwrap_or_else(|| self.subject());
        let projected = ProjectedClaims {
            aud: &claims.aud,
            exp: now.saturating_add(claims.exp_offset_secs),
            iat,
            iss: claims.iss.as_deref().unwrap_or(&self.url),
            jti: uuid::Uuid::new_v4().to_string(),
            kubernetes: KubernetesClaim {
                namespace: &self.namespace,
                pod: NamedObject { name: "keyless-dev", uid: &self.pod_uid },
                serviceaccount: NamedObject { name: &self.service_account, uid: &self.service_account_uid },
            },
            nbf: iat,
            sub: &subject,
        };
        let key = if claims.untrusted_key { &self.untrusted } else { &self.key };
        key.sign(HeaderStyle::Kubernetes, &projected)
    }

    /// Checks a subject token completely: shape, issuer, signature, validity window.
    /// Audience and subject are for each cloud's own trust rule.
    pub(crate) fn verify(&self, token: &str, now: SystemTime) -> Result<SubjectClaims, TokenRejection> {
        let claims = SubjectClaims::peek(token)?;
        if !self.trusts(&claims.iss) {
            return Err(TokenRejection::UntrustedIssuer);
        }
        self.check_signature(token)?;
        claims.check_validity(now)?;
        Ok(claims)
    }

    /// Checks the signature against the keys of the token's issuer (this one's, or an external one's).
    pub(crate) fn check_signature(&self, token: &str) -> Result<(), TokenRejection> {
        let iss = SubjectClaims::peek(token)?.iss;
        let signed = if iss == self.url { self.key.signed(token) } else { self.external.signed(&iss, token) };
        if signed { Ok(()) } else { Err(TokenRejection::BadSignature) }
    }
}

/// The claims the clouds look at, read before any verification.
#[derive(Clone, Debug)]
pub(crate) struct SubjectClaims {
    pub(crate) iss: String,
    pub(crate) sub: String,
    pub(crate) aud: Vec<String>,
    pub(crate) exp: i64,
    pub(crate) nbf: Option<i64>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct RawClaims {
    iss: String,
    sub: String,
    aud: Audience,
    exp: i64,
    nbf: Option<i64>,
}

impl SubjectClaims {
    /// Decodes the payload without verifying anything: three base64url segments, JSON object with
    /// string `iss`, `sub`, `aud` (string or array) and numeric `exp`.
    pub(crate) fn peek(token: &str) -> Result<Self, TokenRejection> {
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenRejection::Malformed);
        };
        if header.is_empty() || signature.is_empty() {
            return Err(TokenRejection::Malformed);
        }
        let bytes = URL_SAFE_NO_PAD.decode(payload).map_err(|_| TokenRejection::Malformed)?;
        let raw: RawClaims = serde_json::from_slice(&bytes).map_err(|_| TokenRejection::Malformed)?;
        let aud = match raw.aud {
            Audience::One(a) => vec![a],
            Audience::Many(a) => a,
        };
        Ok(Self { iss: raw.iss, sub: raw.sub, aud, exp: raw.exp, nbf: raw.nbf })
    }

    pub(crate) fn check_validity(&self, now: SystemTime) -> Result<(), TokenRejection> {
        let now = clock::unix_secs(now);
        if self.exp <= now {
            return Err(TokenRejection::Expired { exp: self.exp, now });
        }
        // A minute of tolerance for clock skew between the signer and the verifier.
        if let Some(nbf) = self.nbf
            && nbf > now + 60
        {
            return Err(TokenRejection::NotYetValid { nbf, now });
        }
        Ok(())
    }

    /// `aud` as Entra and AWS print it in error messages.
    pub(crate) fn aud_display(&self) -> String {
        self.aud.join(",")
    }
}

/// Why a subject token is not acceptable, before any cloud-specific trust rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TokenRejection {
    /// Not a JWT, or lacking the required claims.
    Malformed,
    /// `iss` is not the emulator's issuer.
    UntrustedIssuer,
    /// Not signed by the issuer's published key.
    BadSignature,
    /// `exp` is in the past.
    Expired { exp: i64, now: i64 },
    /// `nbf` is in the future.
    NotYetValid { nbf: i64, now: i64 },
}

/// `GET /.well-known/openid-configuration`, as the Kubernetes API server serves it.
pub(crate) async fn discovery(State(state): State<SharedState>) -> Json<serde_json::Value> {
    let url = state.issuer.url();
    Json(serde_json::json!({
        "issuer": url,
        "jwks_uri": format!("{url}/openid/v1/jwks"),
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
    }))
}

/// `GET /openid/v1/jwks`.
pub(crate) async fn issuer_jwks(State(state): State<SharedState>) -> Json<serde_json::Value> {
    Json(jwks(&[&state.issuer.key]))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn peek_accepts_string_and_array_audiences() {
        let payload = |json: &str| format!("e30.{}.c2ln", URL_SAFE_NO_PAD.encode(json));
        let one = SubjectClaims::peek(&payload(r#"{"iss":"i","sub":"s","aud":"a","exp":1}"#)).unwrap();
        let many = SubjectClaims::peek(&payload(r#"{"iss":"i","sub":"s","aud":["a","b"],"exp":1}"#)).unwrap();
        assert_eq!(one.aud, ["a"]);
        assert_eq!(many.aud, ["a", "b"]);
    }

    #[test]
    fn peek_rejects_non_jwts() {
        for bad in ["", "abc", "a.b", "a.b.c.d", "e30.e30.c2ln", "e30.!!!.c2ln"] {
            assert_eq!(SubjectClaims::peek(bad).unwrap_err(), TokenRejection::Malformed, "{bad}");
        }
    }
}
