//! AWS end to end: the real binary serving real botocore/boto3, against the emulator (which
//! verifies SigV4) and against moto, an independent STS implementation.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use keyless_test_support::binary::keyless_bin;
use keyless_test_support::clock::wall_clock;
use keyless_test_support::dev::Dev;
use keyless_test_support::emulate::EmulatorProcess;
use keyless_test_support::jwt::unsigned_jwt;
use keyless_test_support::process::free_port;
use keyless_test_support::sdk::{App, BOTO3_WHOAMI, boto3_whoami};
use keyless_test_support::sidecar::Sidecar;
use keyless_test_support::tools::venv_tool;
use keyless_test_support::wait::{STARTUP_DEADLINE, wait_until};

#[tokio::test]
async fn boto3_uses_the_container_endpoint_and_the_emulator_verifies_the_signature() {
    let dev = Dev::start().await;
    let out = dev.python_ok(BOTO3_WHOAMI).await;
    let (method, arn) = boto3_whoami(&out);
    assert_eq!(method, "container-role", "{out}");
    assert!(arn.starts_with("arn:aws:sts::123456789012:assumed-role/keyless-dev/"), "{out}");
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
    let out = dev.python_ok_in(BOTO3_WHOAMI, &env).await;
    let (method, arn) = boto3_whoami(&out);
    assert_eq!(method, "iam-role", "{out}");
    assert!(arn.starts_with("arn:aws:sts::123456789012:assumed-role/keyless-dev/"), "{out}");
}

#[tokio::test]
async fn a_5xx_storm_at_sts_does_not_fail_a_single_client_request() {
    let dev = Dev::start().await;
    dev.emulator.fault(serde_json::json!({"service": "aws-sts", "fail_next": 1000, "status": 503})).await;
    let script = r#"
import botocore.session
for _ in range(20):
    s = botocore.session.get_session()
    c = s.get_credentials().get_frozen_credentials()
    assert c.access_key.startswith("ASIA"), c.access_key
print("ok")
"#;
    assert_eq!(dev.python_ok(script).await.trim(), "ok");
    assert_eq!(dev.readyz().await, 200);
}

/// Zero config from the env vars the EKS IRSA webhook injects, against moto's STS.
#[tokio::test]
async fn zero_config_from_irsa_env_vars_against_moto() {
    let moto_port = free_port();
    let mut moto = tokio::process::Command::new(venv_tool("moto_server"))
        .args(["-H", "127.0.0.1", "-p", &moto_port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let moto_url = format!("http://127.0.0.1:{moto_port}");
    let moto_api = format!("{moto_url}/moto-api/");
    wait_until("moto to listen", STARTUP_DEADLINE, || async {
        keyless_test_support::clients::status_of(&moto_api).await < 500
    })
    .await;

    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    let token = unsigned_jwt("system:serviceaccount:apps:billing", wall_clock() + Duration::from_secs(3600));
    std::fs::write(&token_file, token).unwrap();
    let role = "arn:aws:iam::123456789012:role/billing";
    let sidecar = Sidecar::zero_config(&[
        ("AWS_ROLE_ARN", role),
        ("AWS_WEB_IDENTITY_TOKEN_FILE", token_file.to_str().unwrap()),
        ("AWS_REGION", "eu-west-1"),
        ("AWS_ENDPOINT_URL_STS", &moto_url),
        ("KEYLESS_LOG", "debug"),
    ]);
    sidecar.wait_ready().await;

    let stdout = App::python(BOTO3_WHOAMI)
        .vars(&[
            ("AWS_EC2_METADATA_SERVICE_ENDPOINT", &sidecar.url("")),
            ("AWS_EC2_METADATA_V1_DISABLED", "true"),
            ("AWS_DEFAULT_REGION", "eu-west-1"),
            ("AWS_ENDPOINT_URL_STS", &moto_url),
        ])
        .home(dir.path())
        .stdout_ok(|| sidecar.logs())
        .await;
    let (method, arn) = boto3_whoami(&stdout);
    assert_eq!(method, "iam-role");
    assert!(arn.starts_with("arn:aws:sts::123456789012:assumed-role/billing/"), "{stdout}");
    assert!(sidecar.process.stop().await.success());
    let _ = moto.kill().await;
}

/// With STS down from the start nothing valid exists: clients get the native error body and
/// readiness is red; when STS comes back keyless recovers by itself.
#[tokio::test]
async fn with_nothing_valid_clients_get_the_native_error_and_readiness_recovers() {
    let emulator = EmulatorProcess::start().await;
    let fault =
        serde_json::json!({"service": "aws-sts", "fail_next": 100000, "status": 400, "code": "IDPCommunicationError"});
    emulator.control.fault(fault).await;

    let config = format!(
        "[aws]\ntoken_file = {:?}\nrole_arn = \"arn:aws:iam::123456789012:role/keyless-dev\"\nsts_endpoint = {:?}\n\
         ca_file = {:?}\nauthorization_token = \"e2e-authorization-token-value\"\n\n[cache]\nretry_max = \"1s\"\nrequest_wait = \"1s\"\n",
        emulator.token_file("aws"),
        emulator.url,
        emulator.ca
    );
    let sidecar = Sidecar::spawn(&config, &[]);
    wait_until("keyless serve to answer /readyz", STARTUP_DEADLINE, || async { sidecar.readyz().await != 599 }).await;
    assert_eq!(sidecar.readyz().await, 503);

    let response = reqwest::Client::new()
        .get(sidecar.url("/v1/credentials"))
        .header("Authorization", "e2e-authorization-token-value")
        .send()
        .await
        .unwrap();
    assert!(response.status().is_server_error(), "{}", response.status());
    let body: serde_json::Value = response.json().await.unwrap();
    assert!(body["Code"].is_string() && body["Message"].as_str().unwrap().contains("IDPCommunicationError"), "{body}");

    emulator.control.clear_faults().await;
    wait_until("readiness to recover by itself", STARTUP_DEADLINE, || async { sidecar.readyz().await == 200 }).await;
    assert!(sidecar.process.stop().await.success());
    assert!(emulator.stop().await.success());
}

/// On a machine without a CA bundle (a minimal image, `SSL_CERT_FILE` and `SSL_CERT_DIR` empty),
/// keyless trusts `ca_file` alone and exchanges: aws-smithy-http-client's assertion that the
/// system store is not empty aborted the exchange's task in debug builds, and the sidecar never
/// turned ready.
#[tokio::test]
async fn without_system_roots_the_ca_file_alone_is_trusted() {
    let emulator = EmulatorProcess::start().await;
    let empty = tempfile::tempdir().unwrap();
    let bundle = empty.path().join("no-certificates.pem");
    std::fs::write(&bundle, "").unwrap();
    let config = format!(
        "[aws]\ntoken_file = {:?}\nrole_arn = \"arn:aws:iam::123456789012:role/keyless-dev\"\nsts_endpoint = {:?}\n\
         ca_file = {:?}\nauthorization_token = \"e2e-authorization-token-value\"\n",
        emulator.token_file("aws"),
        emulator.url,
        emulator.ca
    );
    let env = [("SSL_CERT_FILE", bundle.to_str().unwrap()), ("SSL_CERT_DIR", empty.path().to_str().unwrap())];
    let sidecar = Sidecar::spawn(&config, &env);
    wait_until("the exchange with ca_file's roots alone", STARTUP_DEADLINE, || async { sidecar.readyz().await == 200 })
        .await;
    assert!(!sidecar.logs().contains("panicked"), "{}", sidecar.logs());
    assert!(sidecar.process.stop().await.success());
    assert!(emulator.stop().await.success());
}

/// botocore's `credential_process` provider running `keyless credential-process`, both from the
/// running sidecar's endpoint and from its own exchange with the config.
#[tokio::test]
async fn boto3_credential_process_from_the_endpoint_and_from_an_exchange() {
    let dev = Dev::start().await;
    let bin = keyless_bin();
    let sidecar_config = dev.dir.path().join("state/keyless.toml");
    for (name, command) in [
        ("endpoint", format!("{} credential-process", bin.display())),
        ("exchange", format!("{} credential-process --config {}", bin.display(), sidecar_config.display())),
    ] {
        let profile = dev.dir.path().join(format!("aws-config-{name}"));
        std::fs::write(&profile, format!("[default]\ncredential_process = {command}\n")).unwrap();
        let mut env = dev.env.clone();
        env.insert("AWS_CONFIG_FILE".into(), profile.to_string_lossy().into_owned());
        let out = dev.python_ok_in(BOTO3_WHOAMI, &env).await;
        let (method, arn) = boto3_whoami(&out);
        assert_eq!(method, "custom-process", "{name}: {out}");
        assert!(arn.starts_with("arn:aws:sts::123456789012:assumed-role/keyless-dev/"), "{name}: {out}");
    }
}

#[tokio::test]
async fn credential_process_fails_with_the_reason_on_stderr() {
    let out = tokio::process::Command::new(keyless_bin())
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
