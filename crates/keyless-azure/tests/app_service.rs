//! The App Service token endpoint over real HTTP (docs/protocols.md 4.3), and the env an app gets.

mod common;

use keyless_provider::Started as _;
use std::net::SocketAddr;

use common::{ARM, Harness, IDENTITY_HEADER, json};
use keyless_azure::DEFAULT_APP_SERVICE_PATH;
use keyless_test_support::context::{context, fast_retries};

fn app_service_url(h: &Harness, api_version: &str, resource: &str) -> String {
    let resource: String = url::form_urlencoded::byte_serialize(resource.as_bytes()).collect();
    h.url(&format!("{DEFAULT_APP_SERVICE_PATH}?api-version={api_version}&resource={resource}"))
}

#[tokio::test]
async fn success_has_expires_on_as_integer_seconds_in_a_string() {
    let h = Harness::start().await;
    let (status, body) = json(h.app_service("https://management.azure.com").await).await;
    assert_eq!(status, 200, "{body}");
    let object = body.as_object().expect("object");
    let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["access_token", "client_id", "expires_on", "resource", "token_type"]);
    let expires_on = body["expires_on"].as_str().expect("a JSON string");
    assert!(expires_on.parse::<u64>().is_ok(), "integer epoch seconds: {expires_on}");
    assert_eq!(body["resource"], "https://management.azure.com");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["client_id"], h.env.emulator.identities().azure_client_id);
    let token = body["access_token"].as_str().expect("token");
    h.verify(token, "https://management.azure.com", &h.env.emulator.identities().azure_client_id).await;
}

#[tokio::test]
async fn missing_identity_header_is_401_and_a_wrong_one_403() {
    let h = Harness::start().await;
    let url = app_service_url(&h, "2019-08-01", ARM);
    let missing = h.http.get(&url).send().await.expect("answers");
    assert_eq!(missing.status(), 401);
    for wrong in ["test-identity-header-0123456788", "test-identity-header-012345678", ""] {
        let response = h.http.get(&url).header("X-IDENTITY-HEADER", wrong).send().await.expect("answers");
        assert_eq!(response.status(), 403, "{wrong:?}");
        let body = response.text().await.expect("body");
        assert!(!body.contains(IDENTITY_HEADER), "the secret is never echoed");
    }
}

#[tokio::test]
async fn only_api_version_2019_08_01_is_served() {
    let h = Harness::start().await;
    for version in ["2017-09-01", ""] {
        let response = h
            .http
            .get(app_service_url(&h, version, ARM))
            .header("X-IDENTITY-HEADER", IDENTITY_HEADER)
            .send()
            .await
            .expect("answers");
        let (status, body) = json(response).await;
        assert_eq!(status, 400, "{version}: {body}");
        assert!(body["error_description"].as_str().is_some_and(|d| d.contains("2019-08-01")));
    }
}

#[tokio::test]
async fn missing_resource_and_unknown_client_are_400() {
    let h = Harness::start().await;
    for query in
        ["api-version=2019-08-01".to_owned(), format!("api-version=2019-08-01&resource={ARM}&client_id=nobody")]
    {
        let response = h
            .http
            .get(h.url(&format!("{DEFAULT_APP_SERVICE_PATH}?{query}")))
            .header("X-IDENTITY-HEADER", IDENTITY_HEADER)
            .send()
            .await
            .expect("answers");
        assert_eq!(response.status(), 400, "{query}");
    }
}

#[tokio::test]
async fn app_env_points_at_loopback_and_redacts_the_identity_header() {
    let h = Harness::start().await;
    let vars = h.provider.app_env(&keyless_provider::AppHost::for_listener(SocketAddr::from(([0, 0, 0, 0], 9811))));
    let lines: Vec<String> = vars.iter().map(ToString::to_string).collect();
    assert_eq!(
        lines,
        [
            "IDENTITY_ENDPOINT=http://127.0.0.1:9811/msi/token",
            "IDENTITY_HEADER=<redacted: see the env file>",
            "AZURE_POD_IDENTITY_AUTHORITY_HOST=http://127.0.0.1:9811",
        ]
    );
    assert_eq!(vars[1].file_value(), IDENTITY_HEADER);
}

#[tokio::test]
async fn disabled_endpoints_are_neither_served_nor_advertised() {
    let h = Harness::start_with(context(fast_retries()), |_, c| c.imds = false).await;
    let vars = h.provider.app_env(&keyless_provider::AppHost::for_listener(h.served.addr));
    assert!(vars.iter().all(|v| v.name != "AZURE_POD_IDENTITY_AUTHORITY_HOST"));
    let imds = h.imds(ARM).await;
    assert_eq!(imds.status(), 404);
    assert_eq!(h.app_service(ARM).await.status(), 200);
}
