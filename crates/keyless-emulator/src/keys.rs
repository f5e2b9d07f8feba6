//! RS256 signing keys: the cluster's OIDC issuer key, Google's and Entra's token-signing keys, and
//! an untrusted key for negative tests. Each publishes itself as a JWK.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::error::EmulatorError;

/// An RSA key pair that signs RS256 JWTs and verifies its own signatures.
pub(crate) struct RsaKey {
    kid: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
    modulus: String,
    exponent: String,
}

impl std::fmt::Debug for RsaKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RsaKey").field("kid", &self.kid).finish_non_exhaustive()
    }
}

/// How a JWT header should look besides `alg` and `kid`: each issuer has its own habits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HeaderStyle {
    /// Kubernetes: `{"alg","kid"}`, no `typ`.
    Kubernetes,
    /// Google: `{"alg","kid","typ":"JWT"}`.
    Google,
    /// Entra: `{"typ":"JWT","alg","x5t","kid"}` with `x5t` == `kid`.
    Entra,
}

impl RsaKey {
    /// Generates a fresh 2048-bit key (aws-lc-rs through rcgen).
    pub(crate) fn generate(what: &'static str) -> Result<Self, EmulatorError> {
        let keygen_error = |reason: String| EmulatorError::KeyGeneration { what, reason };
        // Make sure jsonwebtoken uses aws-lc-rs even if feature unification enabled another backend.
        let _already_installed = jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER.install_default();
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).map_err(|e| keygen_error(e.to_string()))?;
        let encoding =
            EncodingKey::from_rsa_pem(pair.serialize_pem().as_bytes()).map_err(|e| keygen_error(e.to_string()))?;
        let jwk = Jwk::from_encoding_key(&encoding, Algorithm::RS256).map_err(|e| keygen_error(e.to_string()))?;
        let AlgorithmParameters::RSA(rsa) = jwk.algorithm else {
            return Err(keygen_error("the generated key is not an RSA key".into()));
        };
        let decoding = DecodingKey::from_rsa_components(&rsa.n, &rsa.e).map_err(|e| keygen_error(e.to_string()))?;
        // A stable, opaque key id derived from the public key, shaped like Entra's (27 base64url chars).
        let kid = URL_SAFE_NO_PAD.encode(&Sha256::digest(rsa.n.as_bytes())[..20]);
        Ok(Self { kid, encoding, decoding, modulus: rsa.n, exponent: rsa.e })
    }

    /// The public key as a JWK (`kty`, `use`, `alg`, `kid`, `n`, `e`).
    pub(crate) fn jwk(&self) -> serde_json::Value {
        serde_json::json!({
            "kty": "RSA",
            "use": "sig",
            "alg": "RS256",
            "kid": self.kid,
            "n": self.modulus,
            "e": self.exponent,
        })
    }

    /// Signs `claims` as an RS256 JWT.
    pub(crate) fn sign<T: Serialize>(&self, style: HeaderStyle, claims: &T) -> Result<String, EmulatorError> {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(self.kid.clone());
        match style {
            HeaderStyle::Kubernetes => header.typ = None,
            HeaderStyle::Google => {}
            HeaderStyle::Entra => header.x5t = Some(self.kid.clone()),
        }
        jsonwebtoken::encode(&header, claims, &self.encoding).map_err(|e| EmulatorError::Signing(e.to_string()))
    }

    /// Whether `token` carries a valid RS256 signature by this key. Claims are not looked at.
    pub(crate) fn signed(&self, token: &str) -> bool {
        let Ok(header) = jsonwebtoken::decode_header(token) else {
            return false;
        };
        if header.alg != Algorithm::RS256 || header.kid.as_deref().is_some_and(|kid| kid != self.kid) {
            return false;
        }
        let mut validation = Validation::new(Algorithm::RS256);
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        jsonwebtoken::decode::<serde_json::Value>(token, &self.decoding, &validation).is_ok()
    }
}

/// A JWKS document (`{"keys":[...]}`) publishing `keys`.
pub(crate) fn jwks(keys: &[&RsaKey]) -> serde_json::Value {
    serde_json::json!({ "keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>() })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn key_verifies_its_own_signature_only() {
        let key = RsaKey::generate("test key").unwrap();
        let other = RsaKey::generate("other key").unwrap();
        let token = key.sign(HeaderStyle::Kubernetes, &serde_json::json!({"sub": "x"})).unwrap();
        assert!(key.signed(&token));
        assert!(!other.signed(&token));
        assert!(!key.signed("not.a.jwt"));
    }
}
