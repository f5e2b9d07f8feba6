//! The subject token: the pod's projected service-account JWT, and a peek at its claims.
//!
//! keyless never verifies the token (the clouds do); it reads the claims only to log who is asking,
//! to know when the kubelet will have written a new one, and to explain failures.

use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;

use crate::Secret;

/// The claims keyless looks at. Missing claims are `None`: a token without them is still passed
/// to the cloud, which gives the authoritative answer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Claims {
    pub iss: Option<String>,
    pub sub: Option<String>,
    pub aud: Vec<String>,
    pub exp: Option<SystemTime>,
    pub iat: Option<SystemTime>,
}

impl fmt::Display for Claims {
    /// `iss=... sub=... aud=[...] exp=...`: what an error hint shows of the token (never the token).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let or_none = |v: &Option<String>| v.clone().unwrap_or_else(|| "<none>".to_owned());
        write!(f, "iss={} sub={} aud=[{}]", or_none(&self.iss), or_none(&self.sub), self.aud.join(","))?;
        if let Some(exp) = self.exp {
            write!(f, " exp={}", humantime::format_rfc3339_seconds(exp))?;
        }
        Ok(())
    }
}

/// A projected service-account token: the raw JWT (secret) and its peeked claims.
#[derive(Clone, PartialEq, Eq)]
pub struct SubjectToken {
    raw: Secret<String>,
    claims: Claims,
}

impl fmt::Debug for SubjectToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubjectToken").field("claims", &self.claims).finish_non_exhaustive()
    }
}

impl SubjectToken {
    /// Parses a JWT in compact form. Surrounding whitespace is trimmed (a hand-written file often
    /// ends in a newline, which would break every upstream request).
    pub fn parse(raw: &str) -> Result<Self, TokenShapeError> {
        let raw = raw.trim();
        if raw.is_empty() {
            return Err(TokenShapeError::Empty);
        }
        let segments: Vec<&str> = raw.split('.').collect();
        if segments.len() != 3 || segments.iter().any(|s| s.is_empty()) {
            return Err(TokenShapeError::NotAJwt { segments: segments.len() });
        }
        let decode = |s: &str| URL_SAFE_NO_PAD.decode(s.trim_end_matches('='));
        let header = decode(segments[0]).map_err(|_| TokenShapeError::NotBase64Url { part: "header" })?;
        let payload = decode(segments[1]).map_err(|_| TokenShapeError::NotBase64Url { part: "payload" })?;
        if decode(segments[2]).is_err() {
            return Err(TokenShapeError::NotBase64Url { part: "signature" });
        }
        serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&header)
            .map_err(|_| TokenShapeError::NotJson { part: "header" })?;
        let wire: WireClaims =
            serde_json::from_slice(&payload).map_err(|_| TokenShapeError::NotJson { part: "payload" })?;
        Ok(Self { raw: Secret::new(raw.to_owned()), claims: wire.into() })
    }

    pub fn secret(&self) -> &Secret<String> {
        &self.raw
    }

    pub fn claims(&self) -> &Claims {
        &self.claims
    }
}

#[derive(Deserialize)]
struct WireClaims {
    iss: Option<String>,
    sub: Option<String>,
    #[serde(default)]
    aud: Audience,
    exp: Option<f64>,
    iat: Option<f64>,
}

#[derive(Deserialize, Default)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
    #[default]
    None,
}

fn epoch(secs: Option<f64>) -> Option<SystemTime> {
    secs.filter(|s| s.is_finite() && *s >= 0.0)
        .and_then(|s| SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs_f64(s)))
}

impl From<WireClaims> for Claims {
    fn from(w: WireClaims) -> Self {
        let aud = match w.aud {
            Audience::One(a) => vec![a],
            Audience::Many(v) => v,
            Audience::None => Vec::new(),
        };
        Self { iss: w.iss, sub: w.sub, aud, exp: epoch(w.exp), iat: epoch(w.iat) }
    }
}

/// Why content is not a usable JWT. Messages never include the content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenShapeError {
    #[error("the token is empty")]
    Empty,
    #[error("the token is not a JWT (expected 3 dot-separated segments, found {segments})")]
    NotAJwt { segments: usize },
    #[error("the token's {part} is not base64url")]
    NotBase64Url { part: &'static str },
    #[error("the token's {part} is not a JSON object")]
    NotJson { part: &'static str },
}

/// Why the token file could not give a token. Each variant's message says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error(
        "subject token file {path} does not exist: check the projected serviceAccountToken volume is mounted \
         at that path (or that the configured token_file is right)"
    )]
    Missing { path: PathBuf },
    #[error(
        "subject token file {path} is not readable by this process (permission denied): the kubelet writes it \
         mode 0600 for the pod's runAsUser; give the pod an fsGroup (or run keyless as the same UID)"
    )]
    PermissionDenied { path: PathBuf },
    #[error("subject token file {path} could not be read: {reason}")]
    Unreadable { path: PathBuf, reason: String },
    #[error(
        "subject token file {path} does not hold a projected service-account token: {shape}. It should contain \
         exactly one JWT written by the kubelet (projected volume source serviceAccountToken)"
    )]
    Malformed { path: PathBuf, shape: TokenShapeError },
}

impl TokenError {
    pub(crate) fn from_io(path: PathBuf, err: &std::io::Error) -> Self {
        match err.kind() {
            std::io::ErrorKind::NotFound => Self::Missing { path },
            std::io::ErrorKind::PermissionDenied => Self::PermissionDenied { path },
            _ => Self::Unreadable { path, reason: err.to_string() },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(payload: &str) -> String {
        let enc = |s: &str| URL_SAFE_NO_PAD.encode(s);
        format!("{}.{}.{}", enc(r#"{"alg":"RS256","kid":"k"}"#), enc(payload), enc("sig"))
    }

    #[test]
    fn peeks_claims_with_array_or_string_audience() {
        let t = SubjectToken::parse(&jwt(
            r#"{"iss":"https://k8s","sub":"system:serviceaccount:ns:sa","aud":["sts.amazonaws.com"],"exp":1700000000,"iat":1699996400}"#,
        ))
        .expect("valid token");
        assert_eq!(t.claims().sub.as_deref(), Some("system:serviceaccount:ns:sa"));
        assert_eq!(t.claims().aud, vec!["sts.amazonaws.com".to_owned()]);
        assert_eq!(t.claims().exp, Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)));
        let t = SubjectToken::parse(&jwt(r#"{"aud":"api://AzureADTokenExchange"}"#)).expect("valid token");
        assert_eq!(t.claims().aud, vec!["api://AzureADTokenExchange".to_owned()]);
    }

    #[test]
    fn trims_a_trailing_newline() {
        let raw = jwt(r#"{"sub":"x"}"#);
        let t = SubjectToken::parse(&format!("{raw}\n")).expect("valid token");
        assert_eq!(t.secret().expose(), &raw);
    }

    #[test]
    fn rejects_what_is_not_a_jwt() {
        assert_eq!(SubjectToken::parse(" \n"), Err(TokenShapeError::Empty));
        assert_eq!(SubjectToken::parse("garbage"), Err(TokenShapeError::NotAJwt { segments: 1 }));
        assert_eq!(SubjectToken::parse("a.b"), Err(TokenShapeError::NotAJwt { segments: 2 }));
        assert_eq!(SubjectToken::parse("!!.e30.c2ln"), Err(TokenShapeError::NotBase64Url { part: "header" }));
        assert_eq!(
            SubjectToken::parse(&format!("{}.e30.c2ln", URL_SAFE_NO_PAD.encode("[]"))),
            Err(TokenShapeError::NotJson { part: "header" })
        );
    }

    #[test]
    fn permission_denied_says_to_set_fs_group() {
        let err = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let e = TokenError::from_io(PathBuf::from("/var/run/secrets/tokens/aws"), &err);
        assert!(matches!(e, TokenError::PermissionDenied { .. }));
        assert!(e.to_string().contains("fsGroup"), "{e}");
    }

    #[test]
    fn debug_does_not_show_the_token() {
        let raw = jwt(r#"{"sub":"x"}"#);
        let t = SubjectToken::parse(&raw).expect("valid token");
        assert!(!format!("{t:?}").contains(&raw));
    }
}
