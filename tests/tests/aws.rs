//! AWS end to end: the real binary serving real botocore/boto3, against the emulator (which
//! verifies SigV4) and against moto, an independent STS implementation.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use keyless_e2e::{Dev, Process, free_port, python, status_of, unsigned_jwt, wait_until};

/// Prints how botocore found its credentials, then who STS says we are.
const WHOAMI: &str = r#"
import boto3
session = boto3.Session()
print(session.get_credentials().method)
print(session.client("sts").get_caller_identity()["Arn"])
"#;

#[tokio::test]
async fn boto3_uses_the_container_endpoint_and_the_emulator_verifies_the_signature() {
    let dev = Dev::start().await;
    let out = dev.python_ok(WHOAMI).await;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "container-role", "{out}");
    assert!(lines[1].starts_with("arn:aws:sts::123456789012:assumed-role/keyless-dev/"), "{out}");
}

#[tokio::test]
async fn boto3_uses_imdsv2_with_v1_disabled() {
    let dev = Dev::start().await;
    let mut env = dev.env_without(&[
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_CONTAINER_AUTHORIZATION_TOKEN",
        "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
    ]);
    env.insert("AWS_EC2_METADATA_V1_DISABLED".into(), "true".into());
    let out = dev.python_ok_in(WHOAMI, &env).await;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "iam-role", "{out}");
    assert!(lines[1].starts_with("arn:aws:sts::123456789012:assumed-role/keyless-dev/"), "{out}");
}

#[tokio::test]
async fn a_5xx_storm_at_sts_does_not_fail_a_single_client_request() {
    let dev = Dev::start().await;
    dev.inject_fault(serde_json::json!({"service": "aws-sts", "fail_next": 1000, "status": 503})).await;
    let script = r#"
import botocore.session
for _ in range(20):
    s = botocore.session.get_session()
    c = s.get_credentials().get_frozen_credentials()
    assert c.access_key.startswith("ASIA"), c.access_key
print("ok")
"#;
    assert_eq!(dev.python_ok(script).await.trim(), "ok");
    assert_eq!(dev.readyz().await, reqwest::StatusCode::OK);
}

/// Zero config from the env vars the EKS IRSA webhook injects, against moto's STS.
#[tokio::test]
async fn zero_config_from_irsa_env_vars_against_moto() {
    let moto_port = free_port();
    let moto_bin = python().parent().unwrap().join("moto_server");
    let mut moto = tokio::process::Command::new(&moto_bin)
        .args(["-H", "127.0.0.1", "-p", &moto_port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let moto_url = format!("http://127.0.0.1:{moto_port}");
    wait_until("moto to listen", Duration::from_secs(60), || async {
        status_of(&format!("{moto_url}/moto-api/")).await < 500
    })
    .await;

    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, unsigned_jwt("system:serviceaccount:apps:billing", "sts.amazonaws.com")).unwrap();
    let (listen, admin) = (free_port(), free_port());
    let role = "arn:aws:iam::123456789012:role/billing";
    let sidecar = Process::spawn(
        &["serve", "--listen", &format!("127.0.0.1:{listen}"), "--admin-listen", &format!("127.0.0.1:{admin}")],
        &[
            ("AWS_ROLE_ARN", role),
            ("AWS_WEB_IDENTITY_TOKEN_FILE", token_file.to_str().unwrap()),
            ("AWS_REGION", "eu-west-1"),
            ("AWS_ENDPOINT_URL_STS", &moto_url),
            ("KEYLESS_LOG", "debug"),
        ],
    );
    let readyz = format!("http://127.0.0.1:{admin}/readyz");
    wait_until("keyless serve to turn ready", Duration::from_secs(60), || async { status_of(&readyz).await == 200 })
        .await;

    let env: BTreeMap<String, String> = [
        ("AWS_EC2_METADATA_SERVICE_ENDPOINT", format!("http://127.0.0.1:{listen}")),
        ("AWS_EC2_METADATA_V1_DISABLED", "true".to_owned()),
        ("AWS_DEFAULT_REGION", "eu-west-1".to_owned()),
        ("AWS_ENDPOINT_URL_STS", moto_url.clone()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let out =
        tokio::process::Command::new(python()).args(["-c", WHOAMI]).env_clear().envs(&env).output().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stderr), sidecar.logs());
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], "iam-role");
    assert!(lines[1].starts_with("arn:aws:sts::123456789012:assumed-role/billing/"), "{stdout}");
    assert!(sidecar.stop().await.success());
    let _ = moto.kill().await;
}

/// With STS down from the start nothing valid exists: clients get the native error body and
/// readiness is red; when STS comes back keyless recovers by itself.
#[tokio::test]
async fn with_nothing_valid_clients_get_the_native_error_and_readiness_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let emulator_port = free_port();
    let emulator = Process::spawn(
        &["emulate", "--listen", &format!("127.0.0.1:{emulator_port}"), "--state-dir", dir.path().to_str().unwrap()],
        &[],
    );
    let ca = dir.path().join("ca.pem");
    wait_until("the emulator's CA and tokens", Duration::from_secs(60), || {
        let ready = ca.exists() && dir.path().join("tokens/aws/token").exists();
        async move { ready }
    })
    .await;
    let url = format!("https://127.0.0.1:{emulator_port}");
    let client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&std::fs::read(&ca).unwrap()).unwrap()])
        .build()
        .unwrap();
    wait_until("the emulator to answer", Duration::from_secs(60), || async {
        client.get(format!("{url}/_emulator/counters")).send().await.is_ok()
    })
    .await;
    let fault =
        serde_json::json!({"service": "aws-sts", "fail_next": 100000, "status": 400, "code": "IDPCommunicationError"});
    client.post(format!("{url}/_emulator/faults")).json(&fault).send().await.unwrap().error_for_status().unwrap();

    let config = dir.path().join("keyless.toml");
    std::fs::write(
        &config,
        format!(
            "[aws]\ntoken_file = {:?}\nrole_arn = \"arn:aws:iam::123456789012:role/keyless-dev\"\nsts_endpoint = {url:?}\n\
             ca_file = {:?}\nauthorization_token = \"e2e-authorization-token-value\"\n\n[cache]\nretry_max = \"1s\"\nrequest_wait = \"1s\"\n",
            dir.path().join("tokens/aws/token"),
            ca
        ),
    )
    .unwrap();
    let (listen, admin) = (free_port(), free_port());
    let sidecar = Process::spawn(
        &[
            "serve",
            "--config",
            config.to_str().unwrap(),
            "--listen",
            &format!("127.0.0.1:{listen}"),
            "--admin-listen",
            &format!("127.0.0.1:{admin}"),
        ],
        &[],
    );
    let readyz = format!("http://127.0.0.1:{admin}/readyz");
    wait_until("keyless serve to answer /readyz", Duration::from_secs(60), || async {
        status_of(&readyz).await != 599
    })
    .await;
    assert_eq!(status_of(&readyz).await, 503);

    let response = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{listen}/v1/credentials"))
        .header("Authorization", "e2e-authorization-token-value")
        .send()
        .await
        .unwrap();
    assert!(response.status().is_server_error(), "{}", response.status());
    let body: serde_json::Value = response.json().await.unwrap();
    assert!(body["Code"].is_string() && body["Message"].as_str().unwrap().contains("IDPCommunicationError"), "{body}");

    client.delete(format!("{url}/_emulator/faults")).send().await.unwrap().error_for_status().unwrap();
    wait_until("readiness to recover by itself", Duration::from_secs(60), || async { status_of(&readyz).await == 200 })
        .await;
    assert!(sidecar.stop().await.success());
    assert!(emulator.stop().await.success());
}

/// botocore's `credential_process` provider running `keyless credential-process`, both from the
/// running sidecar's endpoint and from its own exchange with the config.
#[tokio::test]
async fn boto3_credential_process_from_the_endpoint_and_from_an_exchange() {
    let dev = Dev::start().await;
    let bin = keyless_e2e::keyless_bin();
    let sidecar_config = dev.dir.path().join("state/keyless.toml");
    for (name, command) in [
        ("endpoint", format!("{} credential-process", bin.display())),
        ("exchange", format!("{} credential-process --config {}", bin.display(), sidecar_config.display())),
    ] {
        let profile = dev.dir.path().join(format!("aws-config-{name}"));
        std::fs::write(&profile, format!("[default]\ncredential_process = {command}\n")).unwrap();
        let mut env = dev.env.clone();
        env.insert("AWS_CONFIG_FILE".into(), profile.to_string_lossy().into_owned());
        let out = dev.python_ok_in(WHOAMI, &env).await;
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "custom-process", "{name}: {out}");
        assert!(lines[1].starts_with("arn:aws:sts::123456789012:assumed-role/keyless-dev/"), "{name}: {out}");
    }
}

#[tokio::test]
async fn credential_process_fails_with_the_reason_on_stderr() {
    let out = tokio::process::Command::new(keyless_e2e::keyless_bin())
        .arg("credential-process")
        .env_clear()
        .env("AWS_CONTAINER_CREDENTIALS_FULL_URI", format!("http://127.0.0.1:{}/v1/credentials", free_port()))
        .env("AWS_CONTAINER_AUTHORIZATION_TOKEN", "x")
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "stdout must hold only credentials");
    assert!(String::from_utf8_lossy(&out.stderr).contains("is the sidecar running?"));
}
