//! Azure end to end: the real binary serving real Python azure-identity (msal underneath) through
//! IMDS (`AZURE_POD_IDENTITY_AUTHORITY_HOST`) and App Service (`IDENTITY_ENDPOINT` +
//! `IDENTITY_HEADER`), against the emulated Entra ID. Every token a client gets is verified
//! against the emulator's signing keys: signature, `aud` = the resource asked, `appid` = the app.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use keyless_test_support::dev::Dev;
use keyless_test_support::metrics;
use keyless_test_support::wait::wait_until;

/// The resource every Azure SDK asks for first, and its scope as SDK callers write it.
const MANAGEMENT: &str = "https://management.azure.com";

/// An app-side client id no keyless configuration serves.
const UNKNOWN_CLIENT_ID: &str = "0badc0de-0000-4000-8000-0000000000ff";

/// Python helpers prepended to every script: `verify(token, resource)` checks a token against
/// the emulated tenant's JWKS (fetched over TLS trusting the app env's CA bundle) and prints one
/// line `route aud appid`; `route(credential)` names the managed-identity route azure-identity
/// picked (ImdsCredential or AppServiceCredential).
const PRELUDE: &str = r#"
import os, ssl, sys, time
import jwt
from azure.identity import DefaultAzureCredential, ManagedIdentityCredential

TENANT = os.environ["KEYLESS_DEV_AZURE_TENANT_ID"]
CLIENT_ID = os.environ["KEYLESS_DEV_AZURE_CLIENT_ID"]
_ctx = ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
_jwks = jwt.PyJWKClient(f"{os.environ['KEYLESS_DEV_EMULATOR_URL']}/{TENANT}/discovery/v2.0/keys", ssl_context=_ctx)

def route(credential):
    inner = getattr(credential, "_successful_credential", None) or credential
    return type(inner._credential).__name__

def verify(token, resource):
    key = _jwks.get_signing_key_from_jwt(token.token).key
    claims = jwt.decode(
        token.token, key, algorithms=["RS256"], audience=resource,
        issuer=f"https://sts.windows.net/{TENANT}/",
    )
    assert claims["appid"] == CLIENT_ID, claims
    assert claims["tid"] == TENANT, claims
    # Python treats a token with less than 5 minutes left as expired.
    assert token.expires_on > time.time() + 300, (token.expires_on, time.time())
    return claims
"#;

fn script(body: &str) -> String {
    format!("{PRELUDE}\n{body}")
}

/// The app env with the App Service variables removed: with `IDENTITY_ENDPOINT` set, Python
/// picks App Service; without it, IMDS at `AZURE_POD_IDENTITY_AUTHORITY_HOST`.
fn imds_env(dev: &Dev) -> BTreeMap<String, String> {
    dev.env_without(&["IDENTITY_ENDPOINT", "IDENTITY_HEADER"])
}

/// Calls that reached the emulated Entra ID token endpoint (faulted ones included).
async fn entra_calls(dev: &Dev) -> u64 {
    dev.emulator.counter("azure-token").await
}

/// Azure requests keyless answered with `result` (`hit`: from its cache; `miss`: after waiting
/// for an exchange), from `keyless_cache_lookups_total`.
async fn azure_lookups(dev: &Dev, result: &str) -> u64 {
    metrics::sum(&dev.metrics().await, "keyless_cache_lookups_total", &[("provider", "azure"), ("result", result)])
}

/// A raw App Service token request, as every SDK sends it.
async fn app_service_get(dev: &Dev, client: &reqwest::Client, resource: &str) -> reqwest::Response {
    client
        .get(dev.var("IDENTITY_ENDPOINT"))
        .query(&[("api-version", "2019-08-01"), ("resource", resource)])
        .header("X-IDENTITY-HEADER", dev.var("IDENTITY_HEADER"))
        .send()
        .await
        .unwrap()
}

/// `ManagedIdentityCredential` for the management API with the app env `env`: azure-identity
/// picks `route`, and the token it gets verifies, for the management API and keyless dev's app.
async fn assert_managed_identity_gets_a_verified_token(dev: &Dev, env: &BTreeMap<String, String>, route: &str) {
    let body = r#"
credential = ManagedIdentityCredential()
token = credential.get_token("https://management.azure.com/.default")
claims = verify(token, "https://management.azure.com")
print(route(credential), claims["aud"], claims["appid"])
"#;
    let out = dev.python_ok_in(&script(body), env).await;
    let client_id = dev.var("KEYLESS_DEV_AZURE_CLIENT_ID");
    assert_eq!(out.trim(), format!("{route} {MANAGEMENT} {client_id}"));
}

#[tokio::test]
async fn managed_identity_credential_through_imds_gets_a_verified_token() {
    let dev = Dev::start().await;
    assert_managed_identity_gets_a_verified_token(&dev, &imds_env(&dev), "ImdsCredential").await;
}

#[tokio::test]
async fn managed_identity_credential_through_app_service_gets_a_verified_token() {
    let dev = Dev::start().await;
    assert_managed_identity_gets_a_verified_token(&dev, &dev.env, "AppServiceCredential").await;
}

/// `DefaultAzureCredential` with nothing but the env `keyless dev` writes: the chain lands on
/// managed identity (App Service); with the App Service variables gone, on IMDS.
#[tokio::test]
async fn default_azure_credential_with_the_dev_env_lands_on_managed_identity() {
    let dev = Dev::start().await;
    let body = r#"
credential = DefaultAzureCredential()
token = credential.get_token("https://vault.azure.net/.default")
claims = verify(token, "https://vault.azure.net")
print(type(credential._successful_credential).__name__, route(credential), claims["aud"])
"#;
    let out = dev.python_ok(&script(body)).await;
    assert_eq!(out.trim(), "ManagedIdentityCredential AppServiceCredential https://vault.azure.net");
    let out = dev.python_ok_in(&script(body), &imds_env(&dev)).await;
    assert_eq!(out.trim(), "ManagedIdentityCredential ImdsCredential https://vault.azure.net");
}

#[tokio::test]
async fn an_explicit_client_id_is_served_on_both_routes() {
    let dev = Dev::start().await;
    let body = r#"
for drop in ([], ["IDENTITY_ENDPOINT", "IDENTITY_HEADER"]):
    for name in drop:
        os.environ.pop(name)
    credential = ManagedIdentityCredential(client_id=CLIENT_ID)
    claims = verify(credential.get_token("https://management.azure.com/.default"), "https://management.azure.com")
    print(route(credential), claims["appid"])
"#;
    let out = dev.python_ok(&script(body)).await;
    let client_id = dev.var("KEYLESS_DEV_AZURE_CLIENT_ID");
    assert_eq!(out.trim(), format!("AppServiceCredential {client_id}\nImdsCredential {client_id}"));
}

/// Prints the class and message of the error the credential raises for `UNKNOWN_CLIENT_ID`.
fn unknown_client_script() -> String {
    script(&format!(
        r#"
credential = ManagedIdentityCredential(client_id="{UNKNOWN_CLIENT_ID}")
try:
    credential.get_token("https://management.azure.com/.default")
    print("unexpectedly got a token")
except Exception as e:
    print(type(e).__name__, str(e).replace("\n", " "))
"#
    ))
}

#[tokio::test]
async fn an_unknown_client_id_is_a_clear_error_through_imds() {
    let dev = Dev::start().await;
    let before = entra_calls(&dev).await;
    let out = dev.python_ok_in(&unknown_client_script(), &imds_env(&dev)).await;
    assert!(out.starts_with("CredentialUnavailableError "), "{out}");
    // The credential's message carries keyless' explanation: which id, which ids it serves.
    assert!(out.contains(&format!("client_id {UNKNOWN_CLIENT_ID} is not served by keyless")), "{out}");
    assert!(out.contains(dev.var("KEYLESS_DEV_AZURE_CLIENT_ID")), "{out}");
    assert_eq!(entra_calls(&dev).await, before, "an unknown client id must not reach Entra ID");
}

/// msal's App Service route reads only `statusCode`/`message` of an error body: keyless gives them
/// too, or Python would show "(invalid_scope) None, None" and lose the explanation.
#[tokio::test]
async fn an_unknown_client_id_is_a_clear_error_through_app_service() {
    let dev = Dev::start().await;
    let out = dev.python_ok(&unknown_client_script()).await;
    assert!(out.starts_with("CredentialUnavailableError "), "{out}");
    assert!(out.contains(&format!("client_id {UNKNOWN_CLIENT_ID} is not served by keyless")), "{out}");
}

/// 512 clients ask at once for a resource nobody asked for before; Entra ID is slow (500 ms), so
/// they all wait on the same exchange: exactly one upstream call, one token for everyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_requests_for_a_new_resource_make_one_exchange() {
    let dev = Dev::start().await;
    let resource = "https://storage.azure.com";
    dev.emulator.fault(serde_json::json!({"service": "azure-token", "latency_ms": 500})).await;
    let before = entra_calls(&dev).await;
    let waited_before = azure_lookups(&dev, "miss").await;

    let client = reqwest::Client::new();
    let url = dev.var("IDENTITY_ENDPOINT").to_owned();
    let header = dev.var("IDENTITY_HEADER").to_owned();
    let requests: Vec<_> = (0..512)
        .map(|_| {
            let request = client
                .get(&url)
                .query(&[("api-version", "2019-08-01"), ("resource", resource)])
                .header("X-IDENTITY-HEADER", &header);
            tokio::spawn(async move {
                let response = request.send().await.unwrap();
                (response.status(), response.json::<serde_json::Value>().await.unwrap())
            })
        })
        .collect();
    let mut tokens = std::collections::BTreeSet::new();
    for request in requests {
        let (status, body) = request.await.unwrap();
        assert_eq!(status, reqwest::StatusCode::OK, "{body}");
        assert_eq!(body["resource"], resource, "{body}");
        assert_eq!(body["token_type"], "Bearer", "{body}");
        assert_eq!(body["client_id"], dev.var("KEYLESS_DEV_AZURE_CLIENT_ID"), "{body}");
        let expires_on = body["expires_on"].as_str().unwrap_or_else(|| panic!("expires_on not a string: {body}"));
        assert!(expires_on.parse::<u64>().is_ok(), "expires_on is not integer epoch seconds: {body}");
        tokens.insert(body["access_token"].as_str().unwrap().to_owned());
    }
    assert_eq!(entra_calls(&dev).await - before, 1, "single flight: one exchange for 512 first requests");
    assert_eq!(tokens.len(), 1, "every client got the one token exchanged");
    let waited = azure_lookups(&dev, "miss").await - waited_before;
    assert!(waited > 1, "the requests overlapped the exchange: {waited} of 512 waited for it");
    dev.emulator.clear_faults().await;
}

/// Entra ID says the assertion is stale (AADSTS700024): keyless re-reads the token file and
/// retries at once, and the client never sees the failure.
#[tokio::test]
async fn a_stale_assertion_is_re_read_and_retried_and_the_client_succeeds() {
    let dev = Dev::start().await;
    let before = entra_calls(&dev).await;
    dev.emulator
        .fault(serde_json::json!({
            "service": "azure-token", "fail_next": 1, "status": 400, "code": "AADSTS700024",
        }))
        .await;
    let body = r#"
credential = ManagedIdentityCredential()
claims = verify(credential.get_token("https://storage.azure.com/.default"), "https://storage.azure.com")
print(claims["aud"])
"#;
    let out = dev.python_ok_in(&script(body), &imds_env(&dev)).await;
    assert_eq!(out.trim(), "https://storage.azure.com");
    assert_eq!(entra_calls(&dev).await - before, 2, "the refused exchange and its retry");
    let logs = dev.logs();
    assert!(logs.contains("AADSTS700024"), "the refusal is logged:\n{logs}");
}

/// Entra ID answers nothing but 503 for a while: every Python client, on both routes, keeps
/// getting the cached token, and keyless does not even knock on the door meanwhile.
#[tokio::test]
async fn a_5xx_storm_does_not_fail_a_single_python_request_for_a_cached_token() {
    let dev = Dev::start().await;
    let warm = r#"
print(ManagedIdentityCredential().get_token("https://management.azure.com/.default").token)
"#;
    let cached = dev.python_ok(&script(warm)).await.trim().to_owned();
    let calls = entra_calls(&dev).await;
    let hits = azure_lookups(&dev, "hit").await;

    dev.emulator.fault(serde_json::json!({"service": "azure-token", "fail_next": 100000, "status": 503})).await;
    let storm = r#"
tokens = set()
for drop in ([], ["IDENTITY_ENDPOINT", "IDENTITY_HEADER"]):
    for name in drop:
        os.environ.pop(name)
    for _ in range(10):
        credential = ManagedIdentityCredential()
        token = credential.get_token("https://management.azure.com/.default")
        verify(token, "https://management.azure.com")
        tokens.add((route(credential), token.token))
for r, t in sorted(tokens):
    print(r, t)
"#;
    let out = dev.python_ok(&script(storm)).await;
    assert_eq!(out.trim(), format!("AppServiceCredential {cached}\nImdsCredential {cached}"));
    assert_eq!(azure_lookups(&dev, "hit").await - hits, 20, "every request answered from the cache");
    assert_eq!(entra_calls(&dev).await, calls, "no upstream call while the token is fresh");
    dev.emulator.clear_faults().await;
}

/// A resource nobody asked for yet, while Entra ID answers 503: the client gets the native
/// error JSON promptly (not a hang); once Entra ID is back the same request succeeds.
#[tokio::test]
async fn a_cold_resource_during_a_storm_gets_the_native_error_then_recovers() {
    let dev = Dev::start().await;
    let resource = "https://vault.azure.net";
    dev.emulator.fault(serde_json::json!({"service": "azure-token", "fail_next": 100000, "status": 503})).await;
    let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();

    let started = tokio::time::Instant::now();
    let response = app_service_get(&dev, &client, resource).await;
    let elapsed = started.elapsed();
    assert_eq!(response.status(), reqwest::StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["content-type"], "application/json");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"], "temporarily_unavailable", "{body}");
    let description = body["error_description"].as_str().unwrap();
    assert!(description.contains("HTTP 503") && description.contains(resource), "{body}");
    // Keyless waits for at most its request_wait (10 s by default) before answering.
    assert!(elapsed < Duration::from_secs(11), "answered after {elapsed:?}");
    assert!(entra_calls(&dev).await >= 1);

    dev.emulator.clear_faults().await;
    wait_until("the cold resource to be served once Entra ID is back", Duration::from_secs(60), || async {
        app_service_get(&dev, &client, resource).await.status() == reqwest::StatusCode::OK
    })
    .await;
    let body = r#"
claims = verify(ManagedIdentityCredential().get_token("https://vault.azure.net/.default"), "https://vault.azure.net")
print(claims["aud"])
"#;
    assert_eq!(dev.python_ok(&script(body)).await.trim(), resource);
}
