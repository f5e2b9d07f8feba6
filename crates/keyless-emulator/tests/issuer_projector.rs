#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::Duration;

use keyless_emulator::Cloud;
use keyless_test_support::clients::answer_json;
use keyless_test_support::emulator::EmulatorEnv;
use keyless_test_support::jwt::Jwks;
use keyless_test_support::wait::wait_until;

#[tokio::test]
async fn discovery_names_the_issuer_and_its_jwks() {
    let env = EmulatorEnv::start().await;
    let discovery = env.get_json("/.well-known/openid-configuration").await;
    assert_eq!(discovery["issuer"], env.emulator.url());
    assert_eq!(discovery["jwks_uri"], env.url("/openid/v1/jwks"));
    let jwks = env.get_json("/openid/v1/jwks").await;
    assert_eq!(jwks["keys"][0]["kty"], "RSA");
    assert_eq!(jwks["keys"][0]["alg"], "RS256");
}

#[tokio::test]
async fn projected_tokens_carry_kubelet_claims_and_verify_against_the_jwks() {
    let env = EmulatorEnv::start().await;
    let jwks = env.get_json("/openid/v1/jwks").await;
    let ids = env.emulator.identities().clone();
    for (cloud, aud) in [
        (Cloud::Aws, ids.aws_audience().to_owned()),
        (Cloud::Gcp, ids.gcp_audience()),
        (Cloud::Azure, ids.azure_audience().to_owned()),
    ] {
        let token = env.projected(cloud);
        let claims = Jwks::from_json(&jwks).verify(&token, &aud, &env.emulator.url());
        assert_eq!(claims["aud"], serde_json::json!([aud]), "aud is an array, like the kubelet's");
        assert_eq!(claims["sub"], ids.subject());
        assert_eq!(claims["kubernetes.io"]["namespace"], "default");
        assert_eq!(claims["kubernetes.io"]["serviceaccount"]["name"], "keyless-dev");
        assert!(claims["kubernetes.io"]["pod"]["uid"].is_string());
        let (iat, exp) = (claims["iat"].as_i64().unwrap(), claims["exp"].as_i64().unwrap());
        assert_eq!(exp - iat, 3600);
        assert_eq!(claims["nbf"], claims["iat"]);
    }
}

fn assert_atomic_writer_layout(dir: &Path) -> std::path::PathBuf {
    assert_eq!(std::fs::read_link(dir.join("token")).unwrap(), Path::new("..data/token"));
    let data = std::fs::read_link(dir.join("..data")).unwrap();
    let name = data.to_str().unwrap();
    // ..YYYY_MM_DD_HH_MM_SS.nnnnnnnnn
    assert_eq!(name.len(), 31, "{name}");
    assert!(name.starts_with("..") && name.as_bytes()[21] == b'.', "{name}");
    let payload = dir.join(&data).join("token");
    assert_eq!(std::fs::metadata(&payload).unwrap().permissions().mode() & 0o777, 0o600);
    assert!(!dir.join("..data_tmp").exists());
    let entries: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(entries.len(), 3, "token, ..data and one timestamped dir: {entries:?}");
    data
}

#[tokio::test]
async fn rotation_follows_the_atomic_writer_layout_and_removes_the_old_dir() {
    let env = EmulatorEnv::start().await;
    let dir = env.emulator.token_path(Cloud::Aws).parent().unwrap().to_owned();
    let first_dir = assert_atomic_writer_layout(&dir);
    let first = env.projected(Cloud::Aws);
    assert!(!first.ends_with('\n') && first.split('.').count() == 3);

    let response = env.client.post(env.url("/_emulator/rotate")).send().await.unwrap();
    assert_eq!(response.status(), 204);

    let second_dir = assert_atomic_writer_layout(&dir);
    assert_ne!(first_dir, second_dir);
    assert!(!dir.join(&first_dir).exists(), "the old timestamped dir is removed");
    let second = env.projected(Cloud::Aws);
    assert_ne!(first, second);
    assert!(!second.ends_with('\n'));
}

/// On the paused clock: not a rotation before the period, one as soon as it is over.
#[tokio::test(start_paused = true)]
async fn projector_rotates_on_its_period() {
    const PERIOD: Duration = Duration::from_secs(600);
    let env = EmulatorEnv::start_with(|c| c.rotate_every = PERIOD).await;
    let first = env.projected(Cloud::Gcp);
    tokio::time::sleep(PERIOD - Duration::from_secs(1)).await;
    assert_eq!(env.projected(Cloud::Gcp), first, "rotated before its period");
    wait_until("the rotation at the end of the period", Duration::from_secs(2), || {
        let rotated = env.projected(Cloud::Gcp) != first;
        async move { rotated }
    })
    .await;
}

#[tokio::test]
async fn rust_api_rotation_replaces_every_token() {
    let env = EmulatorEnv::start().await;
    let before: Vec<String> = Cloud::ALL.iter().map(|c| env.projected(*c)).collect();
    env.emulator.rotate_tokens().await.unwrap();
    for (cloud, old) in Cloud::ALL.iter().zip(before) {
        assert_ne!(env.projected(*cloud), old, "{cloud:?}");
    }
}

#[tokio::test]
async fn ca_pem_is_written_and_the_server_speaks_tls_with_it() {
    let env = EmulatorEnv::start().await;
    let pem = std::fs::read_to_string(env.emulator.ca_pem_path()).unwrap();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));
    let url = format!("https://localhost:{}/openid/v1/jwks", env.emulator.local_addr().port());
    assert!(env.client.get(url).send().await.unwrap().status().is_success(), "the leaf covers localhost");
}

#[tokio::test]
async fn start_reports_a_port_in_use() {
    let env = EmulatorEnv::start().await;
    let state = tempfile::tempdir().unwrap();
    let mut config = keyless_emulator::EmulatorConfig::new(state.path());
    config.listen = env.emulator.local_addr();
    let error = keyless_emulator::start(config).await.unwrap_err();
    assert!(error.to_string().contains("port"), "{error}");
}

#[tokio::test]
async fn shutdown_stops_serving() {
    let env = EmulatorEnv::start().await;
    let url = env.url("/openid/v1/jwks");
    let EmulatorEnv { emulator, client, .. } = env;
    emulator.shutdown().await;
    assert!(client.get(url).send().await.is_err());
}

#[tokio::test]
async fn start_reports_an_unusable_state_dir() {
    let parent = tempfile::tempdir().unwrap();
    let file = parent.path().join("not-a-dir");
    std::fs::write(&file, b"").unwrap();
    let error = keyless_emulator::start(keyless_emulator::EmulatorConfig::new(file.join("state"))).await.unwrap_err();
    let message = error.to_string();
    assert!(message.contains("state directory") && message.contains("writable"), "{message}");
}

/// A compose service reaches the emulator by its service name: that name must be in the
/// certificate and be the issuer, or the sidecar's TLS check and the token's `iss` both fail.
#[tokio::test]
async fn a_public_host_name_is_the_issuer_and_is_in_the_certificate() {
    let env = EmulatorEnv::start_with(|c| c.hostnames = vec!["Emulator.Test".to_owned()]).await;
    let port = env.emulator.local_addr().port();
    assert_eq!(env.emulator.url(), format!("https://emulator.test:{port}"));

    let pem = std::fs::read(env.emulator.ca_pem_path()).unwrap();
    let client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&pem).unwrap()])
        .resolve("emulator.test", env.emulator.local_addr())
        .build()
        .unwrap();
    let discovery = answer_json(client.get(format!("{}/.well-known/openid-configuration", env.emulator.url()))).await;
    assert_eq!(discovery["issuer"], env.emulator.url());
    assert_eq!(discovery["jwks_uri"], format!("https://emulator.test:{port}/openid/v1/jwks"));

    let jwks = Jwks::fetch(&client, &format!("{}/openid/v1/jwks", env.emulator.url())).await;
    let token = env.projected(Cloud::Aws);
    let claims = jwks.verify(&token, "sts.amazonaws.com", &env.emulator.url());
    assert_eq!(claims["iss"], env.emulator.url());
    // Loopback keeps working beside the public name.
    let loopback = format!("https://127.0.0.1:{port}/openid/v1/jwks");
    assert!(env.client.get(loopback).send().await.unwrap().status().is_success());
}

#[tokio::test]
async fn an_ip_address_host_name_is_bracketed_in_urls_when_ipv6() {
    let env = EmulatorEnv::start_with(|c| c.hostnames = vec!["::1".to_owned()]).await;
    assert_eq!(env.emulator.url(), format!("https://[::1]:{}", env.emulator.local_addr().port()));
}

#[tokio::test]
async fn start_rejects_host_names_no_client_can_use() {
    for bad in ["https://emulator", "emulator:9813", "", "0.0.0.0", "bad_name", "-x"] {
        let state = tempfile::tempdir().unwrap();
        let mut config = keyless_emulator::EmulatorConfig::new(state.path());
        config.hostnames = vec![bad.to_owned()];
        let error = keyless_emulator::start(config).await.unwrap_err();
        assert!(error.to_string().contains("host name"), "{bad}: {error}");
    }
}
