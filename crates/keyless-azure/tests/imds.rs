//! The IMDS token endpoint over real HTTP, rule by rule (docs/protocols.md 4.2).

mod common;

use common::{ARM, Harness, IMDS_PATH, json};
use keyless_test_support::context::{context, fast_retries};
use serde_json::{Value, json};

async fn get(h: &Harness, path_and_query: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    let mut request = h.http.get(h.url(path_and_query));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    json(request.send().await.expect("answers")).await
}

const METADATA: (&str, &str) = ("Metadata", "true");

fn query(resource: &str) -> String {
    format!("{IMDS_PATH}?api-version=2018-02-01&resource={}", urlencode(resource))
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[tokio::test]
async fn probe_without_metadata_header_gets_the_imds_400() {
    let h = Harness::start().await;
    for headers in [&[][..], &[("Metadata", "false")][..]] {
        let (status, body) = get(&h, &query(ARM), headers).await;
        assert_eq!(status, 400);
        assert_eq!(
            body,
            json!({"error":"invalid_request","error_description":"Required metadata header not specified"})
        );
    }
    // Python's probe sends no resource either.
    let (status, _) = get(&h, &format!("{IMDS_PATH}?api-version=2018-02-01"), &[]).await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn success_has_every_field_as_a_json_string() {
    let h = Harness::start().await;
    let (status, body) = get(&h, &query(ARM), &[METADATA]).await;
    assert_eq!(status, 200, "{body}");
    let fields = [
        "access_token",
        "client_id",
        "expires_in",
        "expires_on",
        "ext_expires_in",
        "not_before",
        "resource",
        "token_type",
    ];
    let object = body.as_object().expect("object");
    assert_eq!(object.len(), fields.len(), "{body}");
    for field in fields {
        assert!(body[field].is_string(), "{field} must be a string: {body}");
    }
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["client_id"], h.env.emulator.identities().azure_client_id);
    let number = |f: &str| body[f].as_str().and_then(|s| s.parse::<u64>().ok()).expect(f);
    let expires_in = number("expires_in");
    assert!(expires_in > 3000 && expires_in <= 3599, "{expires_in}");
    assert!(number("expires_on") > number("not_before"));
    assert!(number("ext_expires_in") >= expires_in);
}

#[tokio::test]
async fn resource_is_served_back_exactly_as_asked_with_or_without_trailing_slash() {
    let h = Harness::start().await;
    for resource in ["https://management.azure.com", ARM] {
        let (status, body) = get(&h, &query(resource), &[METADATA]).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["resource"], resource);
    }
}

#[tokio::test]
async fn path_with_a_trailing_slash_is_served_for_msal_node() {
    let h = Harness::start().await;
    let (status, body) =
        get(&h, &format!("{IMDS_PATH}/?api-version=2019-08-01&resource={}", urlencode(ARM)), &[METADATA]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["resource"], ARM);
}

#[tokio::test]
async fn missing_resource_or_api_version_is_a_400_in_the_imds_shape() {
    let h = Harness::start().await;
    let cases = [
        (format!("{IMDS_PATH}?api-version=2018-02-01"), "'resource' is missing"),
        (format!("{IMDS_PATH}?resource={}", urlencode(ARM)), "'api-version' is missing"),
        (format!("{IMDS_PATH}?api-version=2017-09-01&resource={}", urlencode(ARM)), "not supported"),
        (
            format!("{IMDS_PATH}?api-version=2018-02-01&resource={}", urlencode("https://vault.azure.net/.default")),
            "drop the trailing /.default",
        ),
    ];
    for (path, needle) in cases {
        let (status, body) = get(&h, &path, &[METADATA]).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(body["error"], "invalid_request");
        let description = body["error_description"].as_str().expect("description");
        assert!(description.contains(needle), "{path}: {description}");
    }
}

#[tokio::test]
async fn client_id_selects_a_configured_identity_case_insensitively() {
    let h = Harness::start().await;
    let client_id = h.env.emulator.identities().azure_client_id.to_uppercase();
    let path = format!("{}&client_id={client_id}", query(ARM));
    let (status, body) = get(&h, &path, &[METADATA]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["client_id"], h.env.emulator.identities().azure_client_id);
}

#[tokio::test]
async fn unknown_or_unmappable_identities_are_refused_with_a_clear_400() {
    let h = Harness::start().await;
    let cases = [
        ("client_id=00000000-0000-0000-0000-000000000000", "add it to azure.additional_client_ids"),
        ("object_id=00000000-0000-0000-0000-000000000000", "cannot map object_id"),
        ("msi_res_id=/subscriptions/x/resourcegroups/y", "cannot map msi_res_id"),
        ("mi_res_id=/subscriptions/x/resourcegroups/y", "cannot map mi_res_id"),
    ];
    for (selector, needle) in cases {
        let path = format!("{}&{selector}", query(ARM));
        let (status, body) = get(&h, &path, &[METADATA]).await;
        assert_eq!(status, 400, "{selector}: {body}");
        assert_eq!(body["error"], "invalid_request");
        let description = body["error_description"].as_str().expect("description");
        assert!(description.starts_with("Identity not found"), "{description}");
        assert!(description.contains(needle), "{description}");
    }
}

#[tokio::test]
async fn an_additional_client_id_shares_the_token_file_and_gets_its_own_token() {
    // The emulator trusts a second application for the same subject: one token file, two client
    // ids, each request's client_id picks, each gets a token issued to itself.
    let h = Harness::start_with(context(fast_retries()), |env, c| {
        c.additional_client_ids = vec![env.emulator.identities().azure_second_client_id.clone()];
    })
    .await;
    let (primary, second) = {
        let ids = h.env.emulator.identities();
        (ids.azure_client_id.clone(), ids.azure_second_client_id.clone())
    };
    for client_id in [&second, &primary] {
        let path = format!("{}&client_id={client_id}", query(ARM));
        let (status, body) = get(&h, &path, &[METADATA]).await;
        assert_eq!(status, 200, "{client_id}: {body}");
        assert_eq!(body["client_id"], client_id.as_str());
        let claims = h.verify(body["access_token"].as_str().expect("token"), ARM, client_id).await;
        assert_eq!(claims["appid"], client_id.as_str());
    }
}

#[tokio::test]
async fn an_additional_client_id_entra_does_not_know_is_refused_by_entra_with_the_hint() {
    // An application without a federated credential: the request's client_id picked it (Entra
    // refuses that one, not the primary), and the answer carries Entra's reason.
    let other = "11111111-2222-4333-8444-555555555555";
    let h = Harness::start_with(context(fast_retries()), |_, c| {
        c.additional_client_ids = vec![other.to_owned()];
        // Pre-warming the unknown client would fail for the same reason.
        c.resources = Some(Vec::new());
    })
    .await;
    let path = format!("{}&client_id={other}", query(ARM));
    let (status, body) = get(&h, &path, &[METADATA]).await;
    assert_eq!(status, 403, "{body}");
    let description = body["error_description"].as_str().expect("description");
    assert!(description.starts_with("AADSTS700016"), "{description}");
    assert!(description.contains(&format!("no application with client id {other}")));
}

#[tokio::test]
async fn forwarded_requests_bodies_and_other_methods_are_refused() {
    let h = Harness::start().await;
    // 403 on every provider's routes (the shared request rules follow the GCE metadata server).
    let (status, body) = get(&h, &query(ARM), &[METADATA, ("X-Forwarded-For", "10.0.0.1")]).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"], "forbidden", "{body}");
    let with_body =
        h.http.get(h.url(&query(ARM))).header("Metadata", "true").body("unexpected").send().await.expect("answers");
    assert_eq!(with_body.status(), 400);
    let post = h.http.post(h.url(&query(ARM))).header("Metadata", "true").send().await.expect("answers");
    assert_eq!(post.status(), 405);
}

#[tokio::test]
async fn msal4js_double_slash_path_is_served_like_the_plain_one() {
    // MSAL4J (azure-identity for Java) appends "/" + "/metadata/identity/oauth2/token" to
    // AZURE_POD_IDENTITY_AUTHORITY_HOST (docs/protocols.md 8): without this route it got a 404.
    let h = Harness::start().await;
    let (status, body) = get(&h, &format!("/{}", query(ARM)), &[METADATA]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["resource"], ARM);
    let client_id = h.env.emulator.identities().azure_client_id.clone();
    h.verify(body["access_token"].as_str().expect("a token"), ARM, &client_id).await;
    // Only that one extra slash: any other doubling is still not a route.
    let other = h.url("/metadata//identity/oauth2/token?api-version=2018-02-01");
    let response = h.http.get(other).header(METADATA.0, METADATA.1).send().await.expect("answers");
    assert_eq!(response.status(), 404);
}
