//! The token bodies as served, rendered once per token. A cached token is served unchanged for
//! its whole life (IMDS' two countdowns aside), thousands of times a second on a busy pod;
//! serializing it on every request (escaping a ~1.5 KB JWT, building a JSON value) was about a
//! fifth of the request's cost (docs/benchmarks.md).

use std::time::SystemTime;

use axum::body::Bytes;
use keyless_core::clock::unix_seconds;
use keyless_provider::body::{Countdowns, Rendered as Once, json_string};

/// A token's bodies, filled on first use (`keyless_provider::body`). Part of
/// [`AccessToken`](crate::entra::AccessToken), so it lives and dies with the token; a token is
/// cached under one key, so its client id and resource never change. Derived data: a clone starts
/// empty, `Debug` never shows it (the bodies hold the token).
#[derive(Clone, Debug, Default)]
pub struct Rendered {
    app_service: Once,
    /// The IMDS body around its two countdowns (`expires_in`, `ext_expires_in`).
    imds: Countdowns<2>,
}

/// What a body says besides the countdowns.
pub(crate) struct Fields<'a> {
    pub access_token: &'a str,
    pub client_id: &'a str,
    pub expires_on: SystemTime,
    pub not_before: SystemTime,
    pub resource: &'a str,
}

impl Rendered {
    /// The App Service body (docs/protocols.md 4.3): `expires_on` is integer epoch seconds *as a JSON
    /// string* (Rust's azure_identity refuses a number; the 2017 date-string form broke .NET and
    /// Java).
    pub(crate) fn app_service(&self, fields: &Fields<'_>) -> Bytes {
        self.app_service.get_or_render(|| {
            format!(
                r#"{{"access_token":{},"client_id":{},"expires_on":"{}","resource":{},"token_type":"Bearer"}}"#,
                json_string(fields.access_token),
                json_string(fields.client_id),
                unix_seconds(fields.expires_on),
                json_string(fields.resource),
            )
            .into_bytes()
        })
    }

    /// The IMDS body (docs/protocols.md 4.2): every field a JSON string; `expires_in` and
    /// `ext_expires_in` are what is left of the token now, not its original lifetime.
    pub(crate) fn imds(&self, fields: &Fields<'_>, expires_in: u64, ext_expires_in: u64) -> Bytes {
        self.imds.get_or_render([expires_in, ext_expires_in], || {
            vec![
                format!(
                    r#"{{"access_token":{},"client_id":{},"expires_in":""#,
                    json_string(fields.access_token),
                    json_string(fields.client_id)
                )
                .into_bytes(),
                format!(r#"","expires_on":"{}","ext_expires_in":""#, unix_seconds(fields.expires_on)).into_bytes(),
                format!(
                    r#"","not_before":"{}","resource":{},"token_type":"Bearer"}}"#,
                    unix_seconds(fields.not_before),
                    json_string(fields.resource)
                )
                .into_bytes(),
            ]
        })
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

    /// [`fields`] as the App Service body has them, every value a string; IMDS adds its
    /// countdowns and `not_before`.
    fn app_service_fields() -> serde_json::Map<String, Value> {
        let Value::Object(map) = json!({
            "access_token": "eyJ0eXAi.x\"y\\z.sig",
            "client_id": "3f6e8d1c-9b2a-4e7f-8c5d-6a1b2c3d4e5f",
            "expires_on": "1790003600",
            "resource": "https://management.azure.com",
            "token_type": "Bearer",
        }) else {
            unreachable!("an object literal")
        };
        map
    }

    #[test]
    fn the_imds_body_has_every_field_as_a_string_with_the_countdowns_of_now() {
        let rendered = Rendered::default();
        for (expires_in, ext) in [(3599, 7199), (0, 9), (10, 100)] {
            let body = rendered.imds(&fields(), expires_in, ext);
            let again = rendered.imds(&fields(), expires_in, ext);
            assert_eq!(again.as_ptr(), body.as_ptr(), "the same countdowns are served from the same bytes");
            let mut expected = app_service_fields();
            expected.insert("expires_in".to_owned(), json!(expires_in.to_string()));
            expected.insert("ext_expires_in".to_owned(), json!(ext.to_string()));
            expected.insert("not_before".to_owned(), json!("1790000000"));
            assert_eq!(serde_json::from_slice::<Value>(&body).expect("valid JSON"), Value::Object(expected));
        }
    }

    #[test]
    fn the_app_service_body_has_expires_on_as_a_string_and_is_rendered_once() {
        let rendered = Rendered::default();
        let body = rendered.app_service(&fields());
        let parsed: Value = serde_json::from_slice(&body).expect("valid JSON");
        assert_eq!(parsed, Value::Object(app_service_fields()));
        assert_eq!(rendered.app_service(&fields()).as_ptr(), body.as_ptr(), "the same bytes, not a new rendering");
    }

    #[test]
    fn debug_does_not_show_the_token() {
        let rendered = Rendered::default();
        let _ = rendered.app_service(&fields());
        assert!(!format!("{rendered:?}").contains("eyJ0eXAi"));
    }
}
