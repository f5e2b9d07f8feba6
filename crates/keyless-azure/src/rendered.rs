//! The token bodies as served, rendered once per token. A cached token is served unchanged for
//! its whole life (IMDS' two countdowns aside), thousands of times a second on a busy pod;
//! serializing it on every request (escaping a ~1.5 KB JWT, building a JSON value) was about a
//! fifth of the request's cost (docs/benchmarks.md).

use std::fmt;
use std::io::Write as _;
use std::sync::{OnceLock, PoisonError, RwLock};
use std::time::SystemTime;

use axum::body::Bytes;
use keyless_core::clock::unix_seconds;

/// A token's bodies, filled on first use. Part of [`AccessToken`](crate::entra::AccessToken),
/// so it lives and dies with the token; a token is cached under one key, so its client id and
/// resource never change.
#[derive(Default)]
pub struct Rendered {
    app_service: OnceLock<Bytes>,
    imds: OnceLock<ImdsParts>,
    /// The last IMDS body served, with its two countdowns: they change once a second, so a busy
    /// client is served shared bytes rather than a new 1.6 KB body per request.
    imds_latest: RwLock<Option<ImdsBody>>,
}

/// Derived data: a copy starts empty and renders again on first use.
impl Clone for Rendered {
    fn clone(&self) -> Self {
        Self::default()
    }
}

struct ImdsBody {
    expires_in: u64,
    ext_expires_in: u64,
    body: Bytes,
}

impl fmt::Debug for Rendered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The bodies hold the token.
        f.write_str("Rendered(..)")
    }
}

/// The IMDS body around its two countdowns: `head` expires_in `middle` ext_expires_in `tail`.
#[derive(Clone)]
struct ImdsParts {
    head: Vec<u8>,
    middle: Vec<u8>,
    tail: Vec<u8>,
}

/// What a body says besides the countdowns.
pub(crate) struct Fields<'a> {
    pub access_token: &'a str,
    pub client_id: &'a str,
    pub expires_on: SystemTime,
    pub not_before: SystemTime,
    pub resource: &'a str,
}

/// `s` as a JSON string literal, quotes included.
fn json_str(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

fn digits(n: u64) -> usize {
    n.checked_ilog10().map_or(1, |d| d as usize + 1)
}

impl Rendered {
    /// The App Service body (protocols.md 4.3): `expires_on` is integer epoch seconds *as a JSON
    /// string* (Rust's azure_identity refuses a number; the 2017 date-string form broke .NET and
    /// Java).
    pub(crate) fn app_service(&self, fields: &Fields<'_>) -> Bytes {
        self.app_service
            .get_or_init(|| {
                Bytes::from(format!(
                    r#"{{"access_token":{},"client_id":{},"expires_on":"{}","resource":{},"token_type":"Bearer"}}"#,
                    json_str(fields.access_token),
                    json_str(fields.client_id),
                    unix_seconds(fields.expires_on),
                    json_str(fields.resource),
                ))
            })
            .clone()
    }

    /// The IMDS body (protocols.md 4.2): every field a JSON string; `expires_in` and
    /// `ext_expires_in` are what is left of the token now, not its original lifetime.
    pub(crate) fn imds(&self, fields: &Fields<'_>, expires_in: u64, ext_expires_in: u64) -> Bytes {
        let latest = self.imds_latest.read().unwrap_or_else(PoisonError::into_inner);
        if let Some(latest) =
            latest.as_ref().filter(|l| (l.expires_in, l.ext_expires_in) == (expires_in, ext_expires_in))
        {
            return latest.body.clone();
        }
        drop(latest);
        let body = Bytes::from(self.render_imds(fields, expires_in, ext_expires_in));
        let fresh = ImdsBody { expires_in, ext_expires_in, body: body.clone() };
        *self.imds_latest.write().unwrap_or_else(PoisonError::into_inner) = Some(fresh);
        body
    }

    fn render_imds(&self, fields: &Fields<'_>, expires_in: u64, ext_expires_in: u64) -> Vec<u8> {
        let parts = self.imds.get_or_init(|| ImdsParts {
            head: format!(
                r#"{{"access_token":{},"client_id":{},"expires_in":""#,
                json_str(fields.access_token),
                json_str(fields.client_id)
            )
            .into_bytes(),
            middle: format!(r#"","expires_on":"{}","ext_expires_in":""#, unix_seconds(fields.expires_on)).into_bytes(),
            tail: format!(
                r#"","not_before":"{}","resource":{},"token_type":"Bearer"}}"#,
                unix_seconds(fields.not_before),
                json_str(fields.resource)
            )
            .into_bytes(),
        });
        // Exactly the body's length: the response takes the buffer without copying it.
        let len =
            parts.head.len() + parts.middle.len() + parts.tail.len() + digits(expires_in) + digits(ext_expires_in);
        let mut body = Vec::with_capacity(len);
        body.extend_from_slice(&parts.head);
        let _ = write!(body, "{expires_in}");
        body.extend_from_slice(&parts.middle);
        let _ = write!(body, "{ext_expires_in}");
        body.extend_from_slice(&parts.tail);
        body
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::{Value, json};

    use super::*;

    fn fields() -> Fields<'static> {
        Fields {
            // A quote and a backslash: whatever Entra returns, the body stays valid JSON.
            access_token: "eyJ0eXAi.x\"y\\z.sig",
            client_id: "3f6e8d1c-9b2a-4e7f-8c5d-6a1b2c3d4e5f",
            expires_on: SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_003_600),
            not_before: SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000),
            resource: "https://management.azure.com",
        }
    }

    #[test]
    fn the_imds_body_has_every_field_as_a_string_with_the_countdowns_of_now() {
        let rendered = Rendered::default();
        for (expires_in, ext) in [(3599, 7199), (0, 9), (10, 100)] {
            assert_eq!(
                rendered.render_imds(&fields(), expires_in, ext).capacity(),
                rendered.render_imds(&fields(), expires_in, ext).len()
            );
            let body = rendered.imds(&fields(), expires_in, ext);
            let again = rendered.imds(&fields(), expires_in, ext);
            assert_eq!(again.as_ptr(), body.as_ptr(), "the same countdowns are served from the same bytes");
            let parsed: Value = serde_json::from_slice(&body).expect("valid JSON");
            assert_eq!(
                parsed,
                json!({
                    "access_token": "eyJ0eXAi.x\"y\\z.sig",
                    "client_id": "3f6e8d1c-9b2a-4e7f-8c5d-6a1b2c3d4e5f",
                    "expires_in": expires_in.to_string(),
                    "expires_on": "1790003600",
                    "ext_expires_in": ext.to_string(),
                    "not_before": "1790000000",
                    "resource": "https://management.azure.com",
                    "token_type": "Bearer",
                })
            );
        }
    }

    #[test]
    fn the_app_service_body_has_expires_on_as_a_string_and_is_rendered_once() {
        let rendered = Rendered::default();
        let body = rendered.app_service(&fields());
        let parsed: Value = serde_json::from_slice(&body).expect("valid JSON");
        assert_eq!(
            parsed,
            json!({
                "access_token": "eyJ0eXAi.x\"y\\z.sig",
                "client_id": "3f6e8d1c-9b2a-4e7f-8c5d-6a1b2c3d4e5f",
                "expires_on": "1790003600",
                "resource": "https://management.azure.com",
                "token_type": "Bearer",
            })
        );
        assert_eq!(rendered.app_service(&fields()).as_ptr(), body.as_ptr(), "the same bytes, not a new rendering");
    }

    #[test]
    fn debug_does_not_show_the_token() {
        let rendered = Rendered::default();
        let _ = rendered.app_service(&fields());
        assert!(!format!("{rendered:?}").contains("eyJ0eXAi"));
    }
}
