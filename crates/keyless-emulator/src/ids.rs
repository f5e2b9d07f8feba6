//! Identifiers and opaque secrets shaped like the clouds' own.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::Rng as _;
use sha2::{Digest as _, Sha256};

const UPPER_BASE32: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
const BASE64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// `len` characters drawn uniformly from `alphabet` by a CSPRNG.
pub(crate) fn random_from(alphabet: &[u8], len: usize) -> String {
    let mut rng = rand::rng();
    (0..len).map(|_| char::from(alphabet[rng.random_range(0..alphabet.len())])).collect()
}

/// `len` random bytes, base64url without padding.
pub(crate) fn random_token(len: usize) -> String {
    let mut bytes = vec![0u8; len];
    rand::rng().fill(bytes.as_mut_slice());
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A temporary AWS access key id: `ASIA` + 16 characters.
pub(crate) fn aws_temporary_access_key_id() -> String {
    format!("ASIA{}", random_from(UPPER_BASE32, 16))
}

/// A 40-character AWS secret access key.
pub(crate) fn aws_secret_access_key() -> String {
    random_from(BASE64, 40)
}

/// An AWS session token (opaque, long, base64 like the real ones).
pub(crate) fn aws_session_token() -> String {
    format!("IQoJb3JpZ2luX2VjE{}", random_from(BASE64, 360))
}

fn digest(seed: &str) -> [u8; 32] {
    Sha256::digest(seed.as_bytes()).into()
}

/// A stable IAM unique id (`AROA` + 17 characters) for a role ARN.
pub(crate) fn aws_role_id(role_arn: &str) -> String {
    let bytes = digest(role_arn);
    let tail: String = bytes.iter().take(17).map(|b| char::from(UPPER_BASE32[usize::from(b % 32)])).collect();
    format!("AROA{tail}")
}

/// A stable 21-digit unique id for a Google service account email.
pub(crate) fn gcp_unique_id(email: &str) -> String {
    let bytes = digest(email);
    let digits: String = bytes.iter().take(20).map(|b| char::from(b'0' + b % 10)).collect();
    format!("1{digits}")
}

/// A stable UUID for an object (e.g. Entra's service principal object id) named by `seed`.
pub(crate) fn stable_uuid(seed: &str) -> String {
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest(seed)[..16]);
    uuid::Builder::from_random_bytes(bytes).into_uuid().to_string()
}
