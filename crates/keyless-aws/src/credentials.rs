//! The credential STS issues, and the three JSON shapes it is served in (docs/protocols.md 2.2-2.4).

use std::fmt;
use std::time::SystemTime;

use axum::body::Bytes;
use keyless_core::Secret;
use serde::Deserialize;
use serde_json::{Value, json};

/// Temporary credentials of the assumed role.
#[derive(Clone, PartialEq, Eq)]
pub struct AwsCredentials {
    pub access_key_id: String,
    pub secret_access_key: Secret<String>,
    pub session_token: Secret<String>,
    pub expiration: SystemTime,
    /// When keyless obtained them (IMDS `LastUpdated`).
    pub last_updated: SystemTime,
    /// `AssumedRoleUser.Arn` (`arn:aws:sts::ACCOUNT:assumed-role/ROLE/SESSION`) when STS gave it.
    pub assumed_role_arn: Option<String>,
    /// The account of the assumed role.
    pub account_id: String,
    /// The bodies this credential is served as, rendered on first use.
    pub(crate) rendered: Rendered,
}

/// The served JSON bodies of one credential, rendered on first use (`keyless_provider::body`): a
/// credential is served unchanged for its whole life, thousands of times a second on a busy pod.
#[derive(Clone, Default, PartialEq, Eq)]
pub(crate) struct Rendered {
    container: keyless_provider::body::Rendered,
    imds: keyless_provider::body::Rendered,
}

impl fmt::Debug for AwsCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The access key id is not secret by itself, but paired with a leaked log line it narrows
        // the search: show only its prefix.
        let prefix: String = self.access_key_id.chars().take(4).collect();
        f.debug_struct("AwsCredentials")
            .field("access_key_id", &format_args!("{prefix}..."))
            .field("expiration", &timestamp(self.expiration))
            .field("assumed_role_arn", &self.assumed_role_arn)
            .field("account_id", &self.account_id)
            .finish_non_exhaustive()
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ`: UTC, upper-case `Z`, **no fractional seconds** (botocore's IMDS path
/// matches `%Y-%m-%dT%H:%M:%SZ` exactly; Rust rejects `+00:00`: docs/protocols.md 2.2, 2.3).
pub fn timestamp(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

impl AwsCredentials {
    /// [`Self::container_json`] as served, rendered once: a credential belongs to one role.
    pub(crate) fn container_body(&self, role_arn: &str) -> Bytes {
        self.rendered.container.get_or_render(|| self.container_json(role_arn).to_string().into_bytes())
    }

    /// [`Self::imds_json`] as served, rendered once.
    pub(crate) fn imds_body(&self) -> Bytes {
        self.rendered.imds.get_or_render(|| self.imds_json().to_string().into_bytes())
    }

    /// The container-credentials endpoint's body (docs/protocols.md 2.2).
    pub(crate) fn container_json(&self, role_arn: &str) -> Value {
        json!({
            "AccessKeyId": self.access_key_id,
            "SecretAccessKey": self.secret_access_key.expose(),
            "Token": self.session_token.expose(),
            "Expiration": timestamp(self.expiration),
            "AccountId": self.account_id,
            "RoleArn": role_arn,
        })
    }

    /// IMDS `iam/security-credentials/ROLE` (docs/protocols.md 2.3). `Code` must be exactly `Success` (2.2 traps):
    /// the Rust SDK's parser refuses anything else.
    pub(crate) fn imds_json(&self) -> Value {
        json!({
            "Code": "Success",
            "LastUpdated": timestamp(self.last_updated),
            "Type": "AWS-HMAC",
            "AccessKeyId": self.access_key_id,
            "SecretAccessKey": self.secret_access_key.expose(),
            "Token": self.session_token.expose(),
            "Expiration": timestamp(self.expiration),
        })
    }

    /// Parses a container-credentials endpoint body (e.g. a running keyless's, for
    /// `keyless credential-process`). The error never quotes the body.
    pub fn from_container_json(body: &str) -> Result<Self, String> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Wire {
            access_key_id: String,
            secret_access_key: String,
            token: String,
            expiration: String,
            account_id: Option<String>,
            role_arn: Option<String>,
        }
        let wire: Wire = serde_json::from_str(body).map_err(|e| {
            format!(
                "not a container-credentials response (line {} column {}: {})",
                e.line(),
                e.column(),
                json_error_kind(&e)
            )
        })?;
        let expiration = humantime::parse_rfc3339(&wire.expiration)
            .map_err(|_| "its Expiration is not an RFC 3339 UTC timestamp".to_owned())?;
        let account_id = wire
            .account_id
            .or_else(|| wire.role_arn.as_deref().and_then(|arn| arn.split(':').nth(4)).map(str::to_owned))
            .unwrap_or_default();
        Ok(Self {
            access_key_id: wire.access_key_id,
            secret_access_key: Secret::new(wire.secret_access_key),
            session_token: Secret::new(wire.token),
            expiration,
            last_updated: expiration,
            assumed_role_arn: None,
            account_id,
            rendered: Rendered::default(),
        })
    }
}

fn json_error_kind(e: &serde_json::Error) -> &'static str {
    match e.classify() {
        serde_json::error::Category::Io => "read error",
        serde_json::error::Category::Syntax => "not JSON",
        serde_json::error::Category::Data => "a field is missing or has the wrong type",
        serde_json::error::Category::Eof => "truncated",
    }
}

/// The `credential_process` output (docs/protocols.md 2.4): `Version` 1, `AccountId` when known.
pub fn credential_process_json(cred: &AwsCredentials) -> String {
    let mut out = json!({
        "Version": 1,
        "AccessKeyId": cred.access_key_id,
        "SecretAccessKey": cred.secret_access_key.expose(),
        "SessionToken": cred.session_token.expose(),
        "Expiration": timestamp(cred.expiration),
    });
    if !cred.account_id.is_empty() {
        out["AccountId"] = Value::String(cred.account_id.clone());
    }
    out.to_string()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn sample() -> AwsCredentials {
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_790_000_000_123);
        AwsCredentials {
            access_key_id: "ASIAEXAMPLEKEY000001".to_owned(),
            secret_access_key: Secret::new("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".to_owned()),
            session_token: Secret::new("IQoJb3JpZ2luX2VjEXAMPLESESSION".to_owned()),
            expiration: at,
            last_updated: at - Duration::from_secs(3600),
            assumed_role_arn: Some("arn:aws:sts::123456789012:assumed-role/app/s".to_owned()),
            account_id: "123456789012".to_owned(),
            rendered: Rendered::default(),
        }
    }

    #[test]
    fn timestamps_are_utc_seconds_with_an_upper_case_z() {
        assert_eq!(timestamp(sample().expiration), "2026-09-21T14:13:20Z");
    }

    #[test]
    fn credential_process_json_is_version_1_with_account_id() {
        let v: Value = serde_json::from_str(&credential_process_json(&sample())).expect("json");
        assert_eq!(v["Version"], 1);
        assert_eq!(v["AccessKeyId"], "ASIAEXAMPLEKEY000001");
        assert_eq!(v["SecretAccessKey"], "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY");
        assert_eq!(v["SessionToken"], "IQoJb3JpZ2luX2VjEXAMPLESESSION");
        assert_eq!(v["Expiration"], "2026-09-21T14:13:20Z");
        assert_eq!(v["AccountId"], "123456789012");
    }

    #[test]
    fn debug_shows_no_secret_and_only_the_key_prefix() {
        let shown = format!("{:?}", sample());
        assert!(!shown.contains("wJalrXUtnFEMI"), "{shown}");
        assert!(!shown.contains("IQoJb3JpZ2luX2VjEXAMPLESESSION"), "{shown}");
        assert!(!shown.contains("ASIAEXAMPLEKEY000001"), "{shown}");
    }

    #[test]
    fn served_bodies_are_the_rendered_json() {
        let cred = sample();
        let role = "arn:aws:iam::123456789012:role/app";
        assert_eq!(cred.container_body(role), cred.container_json(role).to_string().as_bytes());
        assert_eq!(cred.container_body(role), cred.container_json(role).to_string().as_bytes(), "served again");
        assert_eq!(cred.imds_body(), cred.imds_json().to_string().as_bytes());
    }

    #[test]
    fn container_json_round_trips() {
        let cred = sample();
        let body = cred.container_json("arn:aws:iam::123456789012:role/app").to_string();
        let parsed = AwsCredentials::from_container_json(&body).expect("parses");
        assert_eq!(parsed.access_key_id, cred.access_key_id);
        assert_eq!(parsed.session_token, cred.session_token);
        assert_eq!(parsed.account_id, "123456789012");
        assert_eq!(timestamp(parsed.expiration), timestamp(cred.expiration), "second precision on the wire");
    }

    #[test]
    fn a_bad_container_body_is_reported_without_quoting_it() {
        let err =
            AwsCredentials::from_container_json(r#"{"AccessKeyId":"AKIA-SECRETISH"}"#).expect_err("missing fields");
        assert!(!err.contains("AKIA-SECRETISH"), "{err}");
    }
}
