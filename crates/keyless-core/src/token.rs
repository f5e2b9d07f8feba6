//! The subject token: the workload's OIDC JWT, and a peek at its claims.
//!
//! keyless never verifies the token (the clouds do); it reads the claims only to log who is asking,
//! to know when a new one is due, and to explain failures.

use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;

use crate::Secret;
use crate::printable::printable;
use crate::regular_file::RegularFileError;
use crate::source::SourceId;

/// The largest subject token keyless reads from any source, in bytes. A projected service-account
/// token is about 1 KB (2 KB with every pod and node claim), a GitHub Actions token about the same;
/// AWS STS refuses a `WebIdentityToken` over 20 000 characters, so nothing larger could ever be
/// exchanged. 64 KiB leaves three times that margin and costs nothing to read.
pub const MAX_SUBJECT_TOKEN_BYTES: u64 = 64 * 1024;

/// The longest claim value keyless keeps for display, in bytes (after escaping). Longer than any
/// real `iss`, `sub` or `aud` (a Kubernetes `sub` is at most 339 bytes, a GitHub Actions `sub`
/// about 420), short enough that a claim cannot flood a log line.
pub const MAX_CLAIM_BYTES: usize = 1024;

/// The most audiences keyless keeps (a real token has one, rarely a few).
pub const MAX_AUDIENCES: usize = 16;

/// The claims keyless looks at, made safe to print where they are built (from the token): control
/// characters escaped and each value cut at [`MAX_CLAIM_BYTES`] (see [`printable`]), at most
/// [`MAX_AUDIENCES`] audiences (then one last entry `…(+N more)`). So every log line, hint and
/// report that shows a claim is safe; the raw token still goes to the cloud untouched. Missing
/// claims are `None`: a token without them is still passed to the cloud, which gives the
/// authoritative answer.
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

/// 9999-12-31T23:59:59Z, the last second RFC 3339 (and humantime, which fails on later ones) can
/// print. A later `exp` or `iat` is clamped to it: for keyless that is "never", and every consumer
/// that prints the claim keeps working.
const LAST_PRINTABLE_SECOND: f64 = 253_402_300_799.0;

fn epoch(secs: Option<f64>) -> Option<SystemTime> {
    secs.filter(|s| s.is_finite() && *s >= 0.0)
        .and_then(|s| Duration::try_from_secs_f64(s.min(LAST_PRINTABLE_SECOND)).ok())
        .and_then(|d| SystemTime::UNIX_EPOCH.checked_add(d))
}

impl From<WireClaims> for Claims {
    fn from(w: WireClaims) -> Self {
        let aud = match w.aud {
            Audience::One(a) => vec![a],
            Audience::Many(v) => v,
            Audience::None => Vec::new(),
        };
        Self {
            iss: w.iss.as_deref().map(displayable),
            sub: w.sub.as_deref().map(displayable),
            aud: displayable_audiences(&aud),
            exp: epoch(w.exp),
            iat: epoch(w.iat),
        }
    }
}

fn displayable(claim: &str) -> String {
    printable(claim, MAX_CLAIM_BYTES).into_owned()
}

fn displayable_audiences(aud: &[String]) -> Vec<String> {
    let mut kept: Vec<String> = aud.iter().take(MAX_AUDIENCES).map(|a| displayable(a)).collect();
    if aud.len() > MAX_AUDIENCES {
        kept.push(format!("…(+{} more)", aud.len() - MAX_AUDIENCES));
    }
    kept
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

/// Why a source could not give a token. Each variant's message says what to do. The file variants
/// carry the path and the Kubernetes fixes (fsGroup, the projected volume); the others carry the
/// [`SourceId`] of the source that failed.
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
    #[error(
        "subject token file {path} could not be read: it is {kind}, not a regular file; keyless reads only \
         regular files (or a symlink to one), so point token_file at the token itself"
    )]
    NotARegularFile { path: PathBuf, kind: &'static str },
    #[error(
        "subject token file {path} could not be read: it is larger than {limit} bytes, and a projected \
         service-account token is about 1 KB; point token_file at the token itself"
    )]
    TooLarge { path: PathBuf, limit: u64 },
    #[error("subject token file {path} could not be read: {reason}")]
    Unreadable { path: PathBuf, reason: String },
    #[error(
        "subject token file {path} does not hold a projected service-account token: {shape}. It should contain \
         exactly one JWT written by the kubelet (projected volume source serviceAccountToken)"
    )]
    Malformed { path: PathBuf, shape: TokenShapeError },
    #[error("no subject token from {from}: {reason}")]
    Unavailable { from: SourceId, reason: String },
    /// The source cannot give a token without a change of configuration or environment (a
    /// variable that is unset in this process): retrying cannot help.
    #[error("no subject token from {from}: {reason}")]
    Unconfigured { from: SourceId, reason: String },
    #[error("the subject token from {from} is unusable: {shape}")]
    Invalid { from: SourceId, shape: TokenShapeError },
    #[error("no subject token from {from}: it did not answer within {}", humantime::format_duration(*.after))]
    TimedOut { from: SourceId, after: Duration },
}

impl TokenError {
    /// Whether trying again later may succeed: false for a source missing its configuration
    /// (`keyless exec` then stops at once instead of waiting out its ready timeout).
    pub fn heals(&self) -> bool {
        !matches!(self, Self::Unconfigured { .. })
    }

    /// The error of reading the token file at `path` with [`crate::read_regular_file`].
    pub(crate) fn from_file_read(path: PathBuf, err: RegularFileError) -> Self {
        match err {
            RegularFileError::Io(e) => match e.kind() {
                std::io::ErrorKind::NotFound => Self::Missing { path },
                std::io::ErrorKind::PermissionDenied => Self::PermissionDenied { path },
                _ => Self::Unreadable { path, reason: e.to_string() },
            },
            RegularFileError::NotRegular { kind } => Self::NotARegularFile { path, kind },
            RegularFileError::TooLarge { limit } => Self::TooLarge { path, limit },
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
        let e = TokenError::from_file_read(PathBuf::from("/var/run/secrets/tokens/aws"), err.into());
        assert!(matches!(e, TokenError::PermissionDenied { .. }));
        assert!(e.to_string().contains("fsGroup"), "{e}");
    }

    #[test]
    fn only_file_errors_carry_kubernetes_fixes() {
        let path = PathBuf::from("/var/run/secrets/tokens/aws");
        let file_errors = [
            TokenError::from_file_read(path.clone(), RegularFileError::NotRegular { kind: "a FIFO (named pipe)" }),
            TokenError::from_file_read(path.clone(), RegularFileError::TooLarge { limit: MAX_SUBJECT_TOKEN_BYTES }),
            TokenError::Malformed { path: path.clone(), shape: TokenShapeError::Empty },
        ];
        for e in file_errors {
            assert!(e.to_string().starts_with("subject token file /var/run/secrets/tokens/aws "), "{e}");
        }
        let from = SourceId::new(crate::SourceKind::Fixed, "test");
        let others = [
            TokenError::Unavailable { from: from.clone(), reason: "HTTP 503".to_owned() },
            TokenError::Invalid { from: from.clone(), shape: TokenShapeError::Empty },
            TokenError::TimedOut { from, after: Duration::from_secs(10) },
        ];
        for e in others {
            let shown = e.to_string();
            assert!(shown.contains("from fixed test"), "{shown}");
            for kubelet_hint in ["fsGroup", "kubelet", "serviceAccountToken", "token_file"] {
                assert!(!shown.contains(kubelet_hint), "{shown}");
            }
        }
    }

    #[test]
    fn claims_are_escaped_and_bounded_where_they_are_built() {
        // JSON escapes: the claims hold a real newline, CR and ESC.
        let forged = r"x\n2026-01-01T00:00:00Z  INFO keyless: forged\u001b[31m";
        let long = "s".repeat(75_000);
        let t =
            SubjectToken::parse(&jwt(&format!(r#"{{"iss":"https://k8s\r","sub":"{forged}","aud":["a\n","{long}"]}}"#)))
                .expect("valid token");
        let claims = t.claims();
        assert_eq!(claims.iss.as_deref(), Some(r"https://k8s\r"));
        assert_eq!(claims.sub.as_deref(), Some(r"x\n2026-01-01T00:00:00Z  INFO keyless: forged\u{1b}[31m"));
        assert_eq!(claims.aud[0], r"a\n");
        assert_eq!(claims.aud[1], format!("{}…(+{} bytes)", "s".repeat(MAX_CLAIM_BYTES), 75_000 - MAX_CLAIM_BYTES));
        let shown = claims.to_string();
        assert!(!shown.chars().any(char::is_control), "{shown}");
        assert!(shown.len() < 3 * MAX_CLAIM_BYTES, "{} bytes", shown.len());
        // The raw token is what the cloud gets: untouched.
        assert!(t.secret().expose().len() > 75_000);
    }

    #[test]
    fn audiences_beyond_the_bound_are_counted_not_kept() {
        let many: Vec<String> = (0..1000).map(|i| format!("\"aud-{i}\"")).collect();
        let t = SubjectToken::parse(&jwt(&format!(r#"{{"aud":[{}]}}"#, many.join(",")))).expect("valid token");
        let aud = &t.claims().aud;
        assert_eq!(aud.len(), MAX_AUDIENCES + 1);
        assert_eq!(aud[0], "aud-0");
        assert_eq!(aud[MAX_AUDIENCES], format!("…(+{} more)", 1000 - MAX_AUDIENCES));
    }

    #[test]
    fn absurd_times_are_clamped_or_dropped_never_fatal() {
        let at = |secs: u64| Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs));
        let last = at(253_402_300_799);
        for (exp, expected) in [("1e300", last), ("1e12", last), ("-5", None), ("1700000000", at(1_700_000_000))] {
            let t = SubjectToken::parse(&jwt(&format!(r#"{{"exp":{exp},"iat":{exp}}}"#))).expect("valid token");
            assert_eq!(t.claims().exp, expected, "{exp}");
            assert_eq!(t.claims().iat, expected, "{exp}");
            // Printing must not fail (humantime refuses years after 9999; `to_string` would panic).
            let _ = t.claims().to_string();
        }
        let t = SubjectToken::parse(&jwt(r#"{"exp":1e300}"#)).expect("valid token");
        assert!(t.claims().to_string().ends_with("exp=9999-12-31T23:59:59Z"), "{}", t.claims());
    }

    #[test]
    fn debug_does_not_show_the_token() {
        let raw = jwt(r#"{"sub":"x"}"#);
        let t = SubjectToken::parse(&raw).expect("valid token");
        assert!(!format!("{t:?}").contains(&raw));
    }
}
