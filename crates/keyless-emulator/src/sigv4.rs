//! Verification of AWS Signature Version 4 over whatever headers the client chose to sign.
//!
//! Written from the SigV4 specification, independently of any signer: the tests check it against
//! requests signed by the `aws-sigv4` crate. The canonical request is rebuilt from the request as
//! received (method, path, query, the listed headers, a hash of the body actually sent), never
//! from values the client claims.

use hmac::{Hmac, Mac as _};
use http::HeaderMap;
use sha2::{Digest as _, Sha256};

type HmacSha256 = Hmac<Sha256>;

pub(crate) const ALGORITHM: &str = "AWS4-HMAC-SHA256";

/// The parsed `Authorization: AWS4-HMAC-SHA256 Credential=..., SignedHeaders=..., Signature=...`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Authorization {
    pub(crate) access_key_id: String,
    pub(crate) date: String,
    pub(crate) region: String,
    pub(crate) service: String,
    pub(crate) terminator: String,
    pub(crate) signed_headers: String,
    pub(crate) signature: String,
}

impl Authorization {
    /// `DATE/REGION/SERVICE/aws4_request`.
    pub(crate) fn scope(&self) -> String {
        format!("{}/{}/{}/{}", self.date, self.region, self.service, self.terminator)
    }

    /// Parses the header value; the error is the message AWS answers with `IncompleteSignature`.
    pub(crate) fn parse(value: &str) -> Result<Self, String> {
        let rest = value
            .strip_prefix(ALGORITHM)
            .filter(|rest| rest.starts_with(' '))
            .ok_or_else(|| format!("Authorization header must use the {ALGORITHM} algorithm."))?;
        let (mut credential, mut signed_headers, mut signature) = (None, None, None);
        for part in rest.split(',') {
            let part = part.trim();
            match part.split_once('=') {
                Some(("Credential", v)) => credential = Some(v),
                Some(("SignedHeaders", v)) => signed_headers = Some(v),
                Some(("Signature", v)) => signature = Some(v),
                _ => {
                    return Err(format!(
                        "'{part}' not a valid key=value pair (missing equal-sign) in Authorization header"
                    ));
                }
            }
        }
        let missing = |name: &str| format!("Authorization header requires '{name}' parameter.");
        let credential = credential.ok_or_else(|| missing("Credential"))?;
        let signed_headers = signed_headers.ok_or_else(|| missing("SignedHeaders"))?;
        let signature = signature.ok_or_else(|| missing("Signature"))?;
        let fields: Vec<&str> = credential.split('/').collect();
        let [access_key_id, date, region, service, terminator] = fields.as_slice() else {
            return Err(format!(
                "Credential should be scoped to a valid region, the form is ACCESS_KEY/DATE/REGION/SERVICE/aws4_request; got '{}' parts",
                fields.len()
            ));
        };
        if access_key_id.is_empty() || signed_headers.is_empty() || signature.is_empty() {
            return Err("Authorization header has an empty Credential, SignedHeaders or Signature.".into());
        }
        Ok(Self {
            access_key_id: (*access_key_id).to_owned(),
            date: (*date).to_owned(),
            region: (*region).to_owned(),
            service: (*service).to_owned(),
            terminator: (*terminator).to_owned(),
            signed_headers: signed_headers.to_owned(),
            signature: signature.to_ascii_lowercase(),
        })
    }
}

/// The parts of a received request that SigV4 covers.
#[derive(Debug)]
pub(crate) struct ReceivedRequest<'a> {
    pub(crate) method: &'a str,
    pub(crate) path: &'a str,
    pub(crate) query: Option<&'a str>,
    pub(crate) headers: &'a HeaderMap,
    /// The `Host` to use when the request has no `Host` header (the URI authority).
    pub(crate) authority: Option<&'a str>,
    pub(crate) body: &'a [u8],
}

/// AWS's URI encoding: unreserved characters stay, every other byte is `%XX` (uppercase).
fn uri_encode(input: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(input.len());
    for byte in input.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(char::from(byte)),
            b'/' if keep_slash => out.push('/'),
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

fn percent_decode(input: &str) -> String {
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex_pair = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex_pair.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(decoded)) => {
                out.push(decoded);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The canonical URI for every service but S3: dot segments removed, then the (already encoded)
/// path encoded once more.
fn canonical_uri(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    for segment in path.split('/').skip(1) {
        match segment {
            "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let normalized = format!("/{}", segments.join("/"));
    uri_encode(&normalized, true)
}

fn canonical_query(query: Option<&str>) -> String {
    let mut pairs: Vec<(String, String)> = query
        .unwrap_or("")
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (uri_encode(&percent_decode(k), false), uri_encode(&percent_decode(v), false))
        })
        .filter(|(k, _)| k != "X-Amz-Signature")
        .collect();
    pairs.sort();
    pairs.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&")
}

/// A header value as SigV4 canonicalises it: trimmed, inner runs of spaces collapsed.
fn canonical_header_value(value: &[u8]) -> String {
    String::from_utf8_lossy(value).split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Rebuilds the canonical request; `Err(name)` names a signed header the request does not carry.
pub(crate) fn canonical_request(request: &ReceivedRequest<'_>, signed_headers: &str) -> Result<String, String> {
    let mut canonical_headers = String::new();
    for name in signed_headers.split(';') {
        let values: Vec<String> =
            request.headers.get_all(name).iter().map(|v| canonical_header_value(v.as_bytes())).collect();
        let value = if values.is_empty() && name == "host" {
            request.authority.map(str::to_owned).ok_or_else(|| name.to_owned())?
        } else if values.is_empty() {
            return Err(name.to_owned());
        } else {
            values.join(",")
        };
        canonical_headers.push_str(&format!("{name}:{value}\n"));
    }
    Ok(format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        request.method,
        canonical_uri(request.path),
        canonical_query(request.query),
        canonical_headers,
        signed_headers,
        hex::encode(Sha256::digest(request.body)),
    ))
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
    let mut mac = HmacSha256::new_from_slice(key).unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

/// The expected signature (lowercase hex) of `canonical_request` under `secret_access_key`.
pub(crate) fn expected_signature(
    secret_access_key: &str,
    authorization: &Authorization,
    amz_date: &str,
    canonical_request: &str,
) -> String {
    let string_to_sign = format!(
        "{ALGORITHM}\n{amz_date}\n{}\n{}",
        authorization.scope(),
        hex::encode(Sha256::digest(canonical_request.as_bytes()))
    );
    let k_date = hmac(format!("AWS4{secret_access_key}").as_bytes(), authorization.date.as_bytes());
    let k_region = hmac(&k_date, authorization.region.as_bytes());
    let k_service = hmac(&k_region, authorization.service.as_bytes());
    let k_signing = hmac(&k_service, authorization.terminator.as_bytes());
    hex::encode(hmac(&k_signing, string_to_sign.as_bytes()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The `get-vanilla` example of the SigV4 test suite (AWS documentation).
    #[test]
    fn reproduces_the_documented_get_vanilla_signature() {
        let mut headers = HeaderMap::new();
        headers.insert("host", "example.amazonaws.com".parse().unwrap());
        headers.insert("x-amz-date", "20150830T123600Z".parse().unwrap());
        let request =
            ReceivedRequest { method: "GET", path: "/", query: None, headers: &headers, authority: None, body: b"" };
        let auth = Authorization::parse(
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
             SignedHeaders=host;x-amz-date, \
             Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
        )
        .unwrap();
        let canonical = canonical_request(&request, &auth.signed_headers).unwrap();
        let signature =
            expected_signature("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", &auth, "20150830T123600Z", &canonical);
        assert_eq!(signature, auth.signature);
    }

    #[test]
    fn canonical_query_sorts_and_reencodes() {
        assert_eq!(canonical_query(Some("b=2&a=x%20y&a=1&c")), "a=1&a=x%20y&b=2&c=");
        assert_eq!(canonical_query(Some("X-Amz-Signature=abc&k=v~")), "k=v~");
    }

    #[test]
    fn rejects_malformed_authorization() {
        assert!(Authorization::parse("AWS4-HMAC-SHA256 Credential=A/B/C, SignedHeaders=host, Signature=ab").is_err());
        assert!(Authorization::parse("Bearer abc").is_err());
        assert!(Authorization::parse("AWS4-HMAC-SHA256 Credential=A/20150830/r/s/aws4_request").is_err());
    }
}
