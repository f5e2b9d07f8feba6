//! JWTs: unsigned ones for code that does not verify (keyless itself, moto), reading claims, and
//! verifying what the emulator signs against its published keys (JWKS).

use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;

/// A JWT-shaped token as the kubelet projects it for AWS (`aud` the list `[sts.amazonaws.com]`,
/// the in-cluster issuer) for `sub`, expiring at `exp`, with a signature nobody can check.
pub fn unsigned_jwt(sub: &str, exp: SystemTime) -> String {
    let exp = exp.duration_since(SystemTime::UNIX_EPOCH).unwrap_or(Duration::ZERO).as_secs();
    let encode = |s: &str| URL_SAFE_NO_PAD.encode(s);
    format!(
        "{}.{}.{}",
        encode(r#"{"alg":"RS256","kid":"test"}"#),
        encode(&format!(
            r#"{{"iss":"https://kubernetes.default.svc","sub":"{sub}","aud":["sts.amazonaws.com"],"exp":{exp}}}"#
        )),
        encode("signature")
    )
}

/// The claims of a JWT, unverified.
pub fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap_or_else(|| panic!("not a JWT: {token}"));
    let json = URL_SAFE_NO_PAD.decode(payload).expect("a base64url payload");
    serde_json::from_slice(&json).expect("a JSON payload")
}

/// A published key set (`/openid/v1/jwks`, Google's `/oauth2/v3/certs`, an Entra tenant's keys).
#[derive(Debug, Clone)]
pub struct Jwks(jsonwebtoken::jwk::JwkSet);

impl Jwks {
    /// `GET url` with `client` (one that trusts the emulator's CA).
    pub async fn fetch(client: &reqwest::Client, url: &str) -> Self {
        let response = client.get(url).send().await.unwrap_or_else(|e| panic!("GET {url}: {e}"));
        assert!(response.status().is_success(), "GET {url}: {}", response.status());
        Self(response.json().await.unwrap_or_else(|e| panic!("GET {url}: not a JWKS: {e}")))
    }

    pub fn from_json(jwks: &Value) -> Self {
        Self(serde_json::from_value(jwks.clone()).expect("a JWKS document"))
    }

    /// Verifies an RS256 `token`: its key published here (by `kid`), its signature, `exp`, and
    /// `aud` and `iss` exactly. Returns its claims; panics saying what failed.
    pub fn verify(&self, token: &str, aud: &str, iss: &str) -> Value {
        let header = jsonwebtoken::decode_header(token).expect("a JWT header");
        let kid = header.kid.expect("the token names its key (kid)");
        let jwk = self.0.find(&kid).unwrap_or_else(|| panic!("the token's key {kid} is not published"));
        let key = jsonwebtoken::DecodingKey::from_jwk(jwk).expect("an RSA key");
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
        validation.set_audience(&[aud]);
        validation.set_issuer(&[iss]);
        let data = jsonwebtoken::decode::<Value>(token, &key, &validation)
            .unwrap_or_else(|e| panic!("the token does not verify for aud {aud}, iss {iss}: {e}"));
        data.claims
    }
}
