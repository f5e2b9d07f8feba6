//! The container-credentials endpoint on a real loopback port, driven by raw HTTP and by the Rust
//! SDK's ECS provider (docs/protocols.md 2.2).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use aws_config::ecs::EcsCredentialsProvider;
use aws_sdk_sts::config::SharedCredentialsProvider;
use common::{AwsDev as _, serving};
use keyless_aws::Config;
use keyless_core::{AppEnvValue, CachePolicy};
use keyless_provider::Started as _;
use keyless_test_support::child::{ChildTest, child_env, is_child};
use keyless_test_support::clients;
use keyless_test_support::clock::is_whole_second_utc;
use keyless_test_support::context::{context, fast_retries};
use keyless_test_support::emulator::EmulatorEnv;
use keyless_test_support::kubelet::mkfifo;
use keyless_test_support::serving::serve;

#[tokio::test]
async fn the_rust_sdk_ecs_provider_loads_credentials_that_sign_get_caller_identity() {
    if is_child(ECS_PROVIDER_TEST) {
        return ecs_provider_child().await;
    }
    let h = serving(|_| {}).await;
    // aws-config reads the container-credentials variables from the process env only (its
    // env injection is crate-private): run the SDK in a child with exactly the app_env.
    let app_env = h.provider.app_env(&keyless_provider::AppHost::for_listener(h.served.addr));
    let stdout = ChildTest::new(ECS_PROVIDER_TEST)
        .env("KEYLESS_TEST_EMULATOR_URL", h.env.emulator.url())
        .env("KEYLESS_TEST_EMULATOR_CA", h.env.ca())
        .env_remove("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
        .envs(app_env.iter().map(|var| (&var.name, var.file_value())))
        .run(String::new)
        .await;
    assert!(stdout.contains("arn=arn:aws:sts::123456789012:assumed-role/keyless-dev/keyless-test\n"), "{stdout}");
}

const ECS_PROVIDER_TEST: &str = "the_rust_sdk_ecs_provider_loads_credentials_that_sign_get_caller_identity";

/// The child of the test above: the SDK's ECS provider, configured by the env alone.
#[allow(clippy::print_stdout)] // the child's report to its parent
async fn ecs_provider_child() {
    let url = child_env(ECS_PROVIDER_TEST, "KEYLESS_TEST_EMULATOR_URL");
    let ca = child_env(ECS_PROVIDER_TEST, "KEYLESS_TEST_EMULATOR_CA");
    let credentials = SharedCredentialsProvider::new(EcsCredentialsProvider::builder().build());
    let client = clients::aws_sts(&url, Path::new(&ca), common::REGION, Some(credentials));
    let identity = client.get_caller_identity().send().await.expect("GetCallerIdentity");
    println!("arn={}", identity.arn().unwrap());
}

#[tokio::test]
async fn the_endpoint_requires_the_exact_authorization_token() {
    let h = serving(|_| {}).await;
    let url = h.url("/v1/credentials");
    let http = clients::loopback();
    let token = std::fs::read_to_string(h.env.path("auth-token")).unwrap();

    let missing = http.get(&url).send().await.unwrap();
    assert_eq!(missing.status(), 401);
    let body: serde_json::Value = missing.json().await.unwrap();
    assert!(body["Code"].is_string() && body["Message"].is_string(), "{body}");

    for wrong in [format!("{token}x"), token[..token.len() - 1].to_owned(), format!("Bearer {token}")] {
        let response = http.get(&url).header("Authorization", wrong).send().await.unwrap();
        assert_eq!(response.status(), 403);
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["Code"], "AccessDenied");
    }

    let ok = http.get(&url).header("Authorization", &token).send().await.unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.headers()["content-type"], "application/json");
    let body: serde_json::Value = ok.json().await.unwrap();
    let keys: Vec<&str> = body.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys.len(), 6, "{keys:?}");
    for key in ["AccessKeyId", "SecretAccessKey", "Token", "Expiration", "AccountId", "RoleArn"] {
        assert!(body[key].is_string(), "{key} is a string: {body}");
    }
    assert!(is_whole_second_utc(body["Expiration"].as_str().unwrap()), "{body}");
    assert_eq!(body["AccountId"], "123456789012");
    assert_eq!(body["RoleArn"], h.env.role_arn().as_str());

    let post = http.post(&url).header("Authorization", &token).send().await.unwrap();
    assert_eq!(post.status(), 405, "GET only");
    let with_body = http.get(&url).header("Authorization", &token).body("x").send().await.unwrap();
    // 400 on every provider's routes (the shared request rules); AWS answered 413 before.
    assert_eq!(with_body.status(), 400, "no request body accepted");
    let refusal: serde_json::Value = with_body.json().await.unwrap();
    assert_eq!(refusal["Code"], "RequestBodyNotAccepted", "{refusal}");
}

#[tokio::test]
async fn nothing_valid_gives_the_native_error_body_with_the_exchange_hint() {
    let env = EmulatorEnv::start().await;
    let mut config = env.config();
    config.role_arn = "arn:aws:iam::123456789012:role/not-trusted".to_owned();
    let ctx = context(fast_retries());
    let provider = keyless_aws::start(config, &ctx).await.unwrap();
    let served = serve("aws", &provider).await;
    let addr = served.addr;
    let token = std::fs::read_to_string(env.path("auth-token")).unwrap();
    let response = clients::loopback()
        .get(format!("http://{addr}/v1/credentials"))
        .header("Authorization", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 500, "terminal: needs a fix, not a retry");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["Code"], "AccessDenied");
    let message = body["Message"].as_str().unwrap();
    assert!(message.contains("system:serviceaccount:default:keyless-dev"), "{message}");
    assert!(message.contains("role/not-trusted"), "{message}");
}

#[tokio::test]
async fn a_generated_token_file_is_private_and_has_no_trailing_newline() {
    let env = EmulatorEnv::start().await;
    let ctx = context(CachePolicy::default());
    let provider = keyless_aws::start(env.config(), &ctx).await.unwrap();
    let path = env.path("auth-token");
    let content = std::fs::read(&path).unwrap();
    assert!(!content.ends_with(b"\n") && !content.ends_with(b"\r"), "no trailing newline");
    assert!(content.len() >= 43, "256 random bits");
    assert!(content.iter().all(|b| b.is_ascii_graphic()));
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);

    // The file and the value handed to apps are the same token.
    let addr = "127.0.0.1:9811".parse().unwrap();
    let app_env = provider.app_env(&keyless_provider::AppHost::for_listener(addr));
    let value = |name: &str| app_env.iter().find(|v| v.name == name).map(|v| v.file_value().to_owned());
    assert_eq!(value("AWS_CONTAINER_AUTHORIZATION_TOKEN").unwrap().as_bytes(), content.as_slice());
    assert_eq!(value("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE").unwrap(), path.display().to_string());

    // A restart reads the same file rather than replacing it.
    let again = keyless_aws::start(env.config(), &ctx).await.unwrap();
    let value_again = again
        .app_env(&keyless_provider::AppHost::for_listener(addr))
        .into_iter()
        .find(|v| v.name == "AWS_CONTAINER_AUTHORIZATION_TOKEN")
        .unwrap();
    assert_eq!(value_again.file_value().as_bytes(), content.as_slice());
}

#[tokio::test]
async fn app_env_points_sdks_at_loopback_and_redacts_the_token_when_shown() {
    let env = EmulatorEnv::start().await;
    let ctx = context(CachePolicy::default());
    let provider = keyless_aws::start(env.config(), &ctx).await.unwrap();
    let app_env = provider.app_env(&keyless_provider::AppHost::for_listener("0.0.0.0:9811".parse().unwrap()));
    let value = |name: &str| app_env.iter().find(|v| v.name == name).map(|v| v.file_value().to_owned());
    assert_eq!(value("AWS_CONTAINER_CREDENTIALS_FULL_URI").unwrap(), "http://127.0.0.1:9811/v1/credentials");
    assert_eq!(value("AWS_EC2_METADATA_SERVICE_ENDPOINT").unwrap(), "http://127.0.0.1:9811");
    assert_eq!(value("AWS_REGION").unwrap(), "eu-central-1");
    assert_eq!(value("AWS_DEFAULT_REGION").unwrap(), "eu-central-1");
    assert!(value("AWS_ROLE_ARN").is_none(), "SDKs would try web identity themselves");
    let token = app_env.iter().find(|v| v.name == "AWS_CONTAINER_AUTHORIZATION_TOKEN").unwrap();
    assert!(matches!(token.value, AppEnvValue::Secret(_)));
    assert!(!token.to_string().contains(token.file_value()));
}

#[tokio::test]
async fn a_token_file_with_a_trailing_newline_is_refused_at_start() {
    let env = EmulatorEnv::start().await;
    let path = env.path("hand-written-token");
    std::fs::write(&path, "abcdefghijklmnop\n").unwrap();
    let mut config = env.config();
    config.authorization_token_file = Some(path);
    let ctx = context(CachePolicy::default());
    let err = keyless_aws::start(config, &ctx).await.expect_err("a newline breaks every SDK");
    let shown = err.to_string();
    assert!(shown.starts_with("aws.authorization_token_file"), "{shown}");
    assert!(shown.contains("newline"), "{shown}");
    assert!(!shown.contains("abcdefghijklmnop"), "the value is never shown: {shown}");
}

#[tokio::test]
async fn a_configured_value_is_written_to_a_missing_token_file() {
    let env = EmulatorEnv::start().await;
    let mut config: Config = env.config();
    config.authorization_token = Some(keyless_core::Secret::new("configured-value-123".to_owned()));
    let ctx = context(CachePolicy::default());
    keyless_aws::start(config.clone(), &ctx).await.unwrap();
    assert_eq!(std::fs::read_to_string(env.path("auth-token")).unwrap(), "configured-value-123");
    config.authorization_token = Some(keyless_core::Secret::new("another-value-456".to_owned()));
    let err = keyless_aws::start(config, &ctx).await.expect_err("file and value disagree");
    assert!(!err.to_string().contains("another-value-456"), "{err}");
}

#[tokio::test]
async fn a_fifo_device_or_huge_token_file_is_refused_at_start_without_blocking() {
    let env = EmulatorEnv::start().await;
    let fifo = env.path("fifo");
    mkfifo(&fifo);
    let zero = env.path("zero");
    std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
    let huge = env.path("huge");
    // Sparse: a gigabyte for a reader that trusts the file, nothing on disk.
    std::fs::File::create(&huge).unwrap().set_len(1 << 30).unwrap();
    let ctx = context(CachePolicy::default());
    for (path, expected) in [
        (fifo, "is a FIFO (named pipe), not a regular file"),
        (zero, "is a character device, not a regular file"),
        (huge, "is larger than 4096 bytes"),
    ] {
        let mut config = env.config();
        config.authorization_token_file = Some(path.clone());
        let started = keyless_aws::start(config, &ctx);
        let result = tokio::time::timeout(std::time::Duration::from_secs(10), started).await;
        let err = result.unwrap_or_else(|_| panic!("reading {} blocked the start", path.display())).unwrap_err();
        let shown = err.to_string();
        assert!(shown.starts_with("aws.authorization_token_file"), "{shown}");
        assert!(shown.ends_with(expected), "{shown}");
    }
}
