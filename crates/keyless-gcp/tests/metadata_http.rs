//! Raw HTTP against the metadata server: every path and header rule of docs/protocols.md 3.3.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use keyless_provider::Started as _;
use std::time::Duration;

use common::{Harness, paused};
use serde_json::json;

const SA: &str = "keyless-dev@keyless-dev.iam.gserviceaccount.com";
const CLOUD_PLATFORM: &str = "https://www.googleapis.com/auth/cloud-platform";

fn flavor(response: &reqwest::Response) -> Option<&str> {
    response.headers().get("metadata-flavor").and_then(|v| v.to_str().ok())
}

fn content_type(response: &reqwest::Response) -> &str {
    response.headers()["content-type"].to_str().unwrap()
}

#[tokio::test]
async fn header_rules_and_the_flavor_on_every_response() {
    let h = Harness::start(|_, _| {}).await;

    // The root probe answers without the request header (tools probe it bare).
    let root = h.http.get(h.url("/")).send().await.unwrap();
    assert_eq!(root.status(), 200);
    assert_eq!(flavor(&root), Some("Google"));

    let bare = h.http.get(h.url("/computeMetadata/v1/project/project-id")).send().await.unwrap();
    assert_eq!(bare.status(), 403);
    assert_eq!(flavor(&bare), Some("Google"));

    for path in ["/", "/computeMetadata/v1/instance/service-accounts/default/token"] {
        let proxied = h
            .http
            .get(h.url(path))
            .header("Metadata-Flavor", "Google")
            .header("X-Forwarded-For", "10.0.0.7")
            .send()
            .await
            .unwrap();
        assert_eq!(proxied.status(), 403, "{path}");
        assert_eq!(flavor(&proxied), Some("Google"));
    }

    let unknown = h.get("/computeMetadata/v1/instance/no-such-thing").await;
    assert_eq!(unknown.status(), 404);
    assert_eq!(flavor(&unknown), Some("Google"));

    let leaf_as_dir = h.get("/computeMetadata/v1/project/project-id/").await;
    assert_eq!(leaf_as_dir.status(), 404);

    let post = h
        .http
        .post(h.url("/computeMetadata/v1/project/project-id"))
        .header("Metadata-Flavor", "Google")
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 405);
    assert_eq!(flavor(&post), Some("Google"));

    let with_body = h
        .http
        .get(h.url("/computeMetadata/v1/project/project-id"))
        .header("Metadata-Flavor", "Google")
        .body("unexpected")
        .send()
        .await
        .unwrap();
    assert_eq!(with_body.status(), 400);
    assert_eq!(flavor(&with_body), Some("Google"));
}

#[tokio::test]
async fn directories_without_their_slash_redirect_to_it() {
    let h = Harness::start(|_, _| {}).await;
    for (path, location) in [
        ("/computeMetadata", "/computeMetadata/"),
        ("/computeMetadata/v1", "/computeMetadata/v1/"),
        ("/computeMetadata/v1/instance", "/computeMetadata/v1/instance/"),
        (
            "/computeMetadata/v1/instance/service-accounts/default?alt=json",
            "/computeMetadata/v1/instance/service-accounts/default/?alt=json",
        ),
    ] {
        let response = h.get(path).await;
        assert_eq!(response.status(), 301, "{path}");
        assert_eq!(response.headers()["location"], location, "{path}");
        assert_eq!(flavor(&response), Some("Google"));
    }
}

#[tokio::test]
async fn listings_values_and_their_content_types() {
    let h = Harness::start(|_, _| {}).await;
    let text = |path: &'static str| {
        let h = &h;
        async move {
            let response = h.get(path).await;
            assert_eq!(response.status(), 200, "{path}");
            assert_eq!(content_type(&response), "application/text", "{path}");
            response.text().await.unwrap()
        }
    };
    assert_eq!(text("/computeMetadata/").await, "v1/\n");
    assert_eq!(text("/computeMetadata/v1/").await, "instance/\nproject/\nuniverse/\n");
    assert_eq!(text("/computeMetadata/v1/instance/service-accounts/").await, format!("default/\n{SA}/\n"));
    assert_eq!(
        text("/computeMetadata/v1/instance/service-accounts/default/").await,
        "aliases\nemail\nidentity\nscopes\ntoken\n"
    );
    for account in ["default", SA] {
        let base = format!("/computeMetadata/v1/instance/service-accounts/{account}");
        let email = h.get(&format!("{base}/email")).await.text().await.unwrap();
        assert_eq!(email, SA);
        let scopes = h.get(&format!("{base}/scopes")).await.text().await.unwrap();
        assert_eq!(scopes, format!("{CLOUD_PLATFORM}\n"));
        let aliases = h.get(&format!("{base}/aliases")).await.text().await.unwrap();
        assert_eq!(aliases, "default\n");
    }
    assert_eq!(text("/computeMetadata/v1/project/project-id").await, "keyless-dev");
    assert_eq!(text("/computeMetadata/v1/project/numeric-project-id").await, "123456789012");
    assert_eq!(text("/computeMetadata/v1/universe/universe-domain").await, "googleapis.com");

    let numeric = h.get("/computeMetadata/v1/project/numeric-project-id?alt=json").await;
    assert_eq!(content_type(&numeric), "application/json");
    assert_eq!(numeric.text().await.unwrap(), "123456789012");
}

#[tokio::test]
async fn recursive_json_has_camel_case_keys() {
    let h = Harness::start(|_, _| {}).await;
    let json_of = |path: &'static str| {
        let h = &h;
        async move {
            let response = h.get(path).await;
            assert_eq!(response.status(), 200, "{path}");
            assert_eq!(content_type(&response), "application/json", "{path}");
            response.json::<serde_json::Value>().await.unwrap()
        }
    };
    let account = json!({"aliases": ["default"], "email": SA, "scopes": [CLOUD_PLATFORM]});
    assert_eq!(json_of("/computeMetadata/v1/instance/service-accounts/default/?recursive=true").await, account);
    // Python asks with the slash; a recursive ask without it is answered, not redirected.
    assert_eq!(json_of("/computeMetadata/v1/instance/service-accounts/default?recursive=true").await, account);
    assert_eq!(
        json_of("/computeMetadata/v1/instance/service-accounts/?recursive=true").await,
        json!({"default": account, SA: account})
    );
    assert_eq!(
        json_of("/computeMetadata/v1/?recursive=true").await,
        json!({
            "instance": {"serviceAccounts": {"default": account, SA: account}},
            "project": {"numericProjectId": 123456789012_u64, "projectId": "keyless-dev"},
            "universe": {"universeDomain": "googleapis.com"},
        })
    );
    let flat = h.get("/computeMetadata/v1/project/?recursive=true&alt=text").await.text().await.unwrap();
    assert_eq!(flat, "numericProjectId 123456789012\nprojectId keyless-dev\n");
}

#[tokio::test]
async fn token_is_json_with_an_integer_expires_in_and_the_email_path_works() {
    let h = Harness::start(|_, _| {}).await;
    let response = h.get(&format!("/computeMetadata/v1/instance/service-accounts/{SA}/token")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(content_type(&response), "application/json");
    assert_eq!(flavor(&response), Some("Google"));
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["token_type"], "Bearer");
    assert!(body["access_token"].is_string());
    let expires_in = body["expires_in"].as_u64().expect("an integer");
    assert!((3000..=3600).contains(&expires_in), "{expires_in}");
    assert_eq!(h.access_token("").await, body["access_token"]);
}

#[tokio::test]
async fn segments_are_percent_decoded_and_an_empty_one_names_nothing() {
    let h = Harness::start(|_, _| {}).await;
    let escaped = SA.replace('@', "%40");
    let email = h.get(&format!("/computeMetadata/v1/instance/service-accounts/{escaped}/email")).await;
    assert_eq!(email.status(), 200);
    assert_eq!(email.text().await.unwrap(), SA);
    let project = h.get("/computeMetadata/v1/project/project%2did").await;
    assert_eq!(project.status(), 200);
    for path in ["/computeMetadata/v1/instance//service-accounts/", "/computeMetadata/v1//project/project-id"] {
        assert_eq!(h.get(path).await.status(), 404, "{path}");
    }
}

#[tokio::test(start_paused = true)]
async fn expires_in_is_the_remaining_lifetime_and_decreases_with_time() {
    let h = Harness::start_with(paused(), |_, _| {}).await;
    let (_, first) = h.token("").await;
    tokio::time::advance(Duration::from_secs(600)).await;
    let (_, later) = h.token("").await;
    assert_eq!(first["access_token"], later["access_token"]);
    let (first, later) = (first["expires_in"].as_u64().unwrap(), later["expires_in"].as_u64().unwrap());
    assert!((600..=602).contains(&(first - later)), "{first} -> {later}");
}

#[tokio::test]
async fn identity_parameters_are_checked_and_a_raw_audience_is_tolerated() {
    let h = Harness::start(|_, _| {}).await;
    let base = "/computeMetadata/v1/instance/service-accounts/default/identity";
    for query in ["", "?audience=", "?audience=x&format=weird"] {
        let response = h.get(&format!("{base}{query}")).await;
        assert_eq!(response.status(), 400, "{query}");
        assert_eq!(flavor(&response), Some("Google"));
    }
    // Node sends the audience without URL-encoding it.
    let audience = "https://svc.example/run?x=1&y=2";
    let response = h.get(&format!("{base}?audience={audience}&format=standard&licenses=FALSE")).await;
    assert_eq!(response.status(), 200);
    let jwt = response.text().await.unwrap();
    let claims = h.verify_id_token(&jwt, audience).await;
    assert_eq!(claims["aud"], audience);
}

#[tokio::test]
async fn invalid_scopes_are_a_bad_request() {
    let h = Harness::start(|_, _| {}).await;
    let many: Vec<String> = (0..40).map(|i| format!("s{i}")).collect();
    let (status, _) = h.token(&format!("?scopes={}", many.join(","))).await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn app_env_points_every_client_at_the_listener() {
    let h = Harness::start(|_, _| {}).await;
    let listen: std::net::SocketAddr = "0.0.0.0:9811".parse().unwrap();
    let env: Vec<String> =
        h.provider.app_env(&keyless_provider::AppHost::for_listener(listen)).iter().map(ToString::to_string).collect();
    assert_eq!(
        env,
        [
            "GCE_METADATA_HOST=127.0.0.1:9811",
            "GCE_METADATA_IP=127.0.0.1:9811",
            "GCE_METADATA_ROOT=127.0.0.1:9811",
            "METADATA_SERVER_DETECTION=assume-present",
            "GOOGLE_CLOUD_PROJECT=keyless-dev",
        ]
    );
}

/// The stand-in for gcloud's application-default credentials (docs/protocols.md 10.4): an
/// `external_account` file, private, whose token URL is keyless's and whose subject token only
/// that file's directory holds. Posting that subject token gets the default account's token in
/// STS's shape; another subject, another grant or an over-long form gets nothing.
#[tokio::test]
async fn the_stand_in_file_gets_the_default_accounts_token_and_nothing_else() {
    use std::os::unix::fs::PermissionsExt as _;
    let h = Harness::start(|_, _| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let app = keyless_provider::AppHost::for_listener(h.served.addr);
    let stand_in = h.provider.stand_in(&app, dir.path()).unwrap().expect("gcp has a stand-in");
    assert_eq!(stand_in.var, "GOOGLE_APPLICATION_CREDENTIALS");
    let file: serde_json::Value = serde_json::from_slice(&std::fs::read(&stand_in.path).unwrap()).unwrap();
    assert_eq!(file["type"], "external_account");
    assert!(file.get("service_account_impersonation_url").is_none(), "nothing leaves the machine: {file}");
    assert!(!file["audience"].as_str().unwrap().contains("/projects/"), "no project for Python to look up: {file}");
    let token_url = file["token_url"].as_str().unwrap();
    assert_eq!(token_url, h.url("/keyless/v1/external-account/token"));
    let subject_path = std::path::PathBuf::from(file["credential_source"]["file"].as_str().unwrap());
    for path in [&stand_in.path, &subject_path] {
        assert_eq!(std::fs::metadata(path).unwrap().permissions().mode() & 0o777, 0o600, "{}", path.display());
    }
    let subject = std::fs::read_to_string(&subject_path).unwrap();
    assert!(subject.len() >= 64, "256 random bits");

    let post = |form: Vec<(&'static str, String)>| {
        let request = h.http.post(token_url).form(&form);
        async move {
            let response = request.send().await.unwrap();
            (response.status().as_u16(), response.json::<serde_json::Value>().await.unwrap())
        }
    };
    let exchange = |subject: &str, scope: &str| {
        vec![
            ("grant_type", "urn:ietf:params:oauth:grant-type:token-exchange".to_owned()),
            ("audience", file["audience"].as_str().unwrap().to_owned()),
            ("requested_token_type", "urn:ietf:params:oauth:token-type:access_token".to_owned()),
            ("subject_token_type", "urn:ietf:params:oauth:token-type:jwt".to_owned()),
            ("subject_token", subject.to_owned()),
            ("scope", scope.to_owned()),
        ]
    };
    let (status, body) = post(exchange(&subject, CLOUD_PLATFORM)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["issued_token_type"], "urn:ietf:params:oauth:token-type:access_token");
    assert!(body["expires_in"].as_u64().unwrap() > 0, "{body}");
    let (_, info) = h.tokeninfo(body["access_token"].as_str().unwrap()).await;
    assert_eq!(info["email"], SA, "the default account's token: {info}");
    // The same token the metadata server serves: one cache.
    assert_eq!(body["access_token"].as_str().unwrap(), h.access_token("").await);

    let (status, body) = post(exchange(&"0".repeat(subject.len()), CLOUD_PLATFORM)).await;
    assert_eq!((status, body["error"].as_str()), (401, Some("invalid_grant")), "{body}");
    let mut wrong_grant = exchange(&subject, CLOUD_PLATFORM);
    wrong_grant[0].1 = "refresh_token".to_owned();
    let (status, body) = post(wrong_grant).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("unsupported_grant_type")), "{body}");
    let long = h.http.post(token_url).body("x".repeat(keyless_provider::MAX_FORM_BODY + 1)).send().await.unwrap();
    assert_eq!(long.status(), 413);
    // The Host rule (DNS rebinding) holds here as on every metadata route.
    let rebound = h.http.post(token_url).header("host", "evil.example").form(&exchange(&subject, "")).send().await;
    assert_eq!(rebound.unwrap().status(), 403);
}
