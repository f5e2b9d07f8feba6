//! `keyless dev`: the env file contract of the interface, README and docs/configuration.md, readiness, clean shutdown.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt as _;

use keyless_test_support::dev::Dev;

const REQUIRED: &[&str] = &[
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
    "AWS_EC2_METADATA_SERVICE_ENDPOINT",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL_STS",
    "AWS_CA_BUNDLE",
    "GCE_METADATA_HOST",
    "GCE_METADATA_IP",
    "GCE_METADATA_ROOT",
    "IDENTITY_ENDPOINT",
    "IDENTITY_HEADER",
    "AZURE_POD_IDENTITY_AUTHORITY_HOST",
    "KEYLESS_DEV_EMULATOR_URL",
    "KEYLESS_DEV_EMULATOR_CA",
    "REQUESTS_CA_BUNDLE",
    "SSL_CERT_FILE",
    "NODE_EXTRA_CA_CERTS",
    "KEYLESS_DEV_AWS_ROLE_ARN",
    "KEYLESS_DEV_GCP_SERVICE_ACCOUNT",
    "KEYLESS_DEV_GCP_PROJECT_ID",
    "KEYLESS_DEV_AZURE_CLIENT_ID",
    "KEYLESS_DEV_AZURE_TENANT_ID",
    "KEYLESS_DEV_AWS_SECOND_ROLE_NAME",
    "KEYLESS_DEV_AWS_SECOND_ROLE_ARN",
    "KEYLESS_DEV_GCP_SECOND_SERVICE_ACCOUNT",
    "KEYLESS_DEV_AZURE_SECOND_CLIENT_ID",
];

#[tokio::test]
async fn writes_the_app_env_file_that_spec_section_4_promises() {
    let dev = Dev::start().await;
    for key in REQUIRED {
        assert!(dev.env.contains_key(*key), "{key} missing; have {:?}", dev.env.keys());
    }
    for (key, value) in &dev.env {
        assert!(!value.is_empty(), "{key} is empty");
        assert!(!value.starts_with('"') && !value.starts_with('\''), "{key} is quoted");
        assert!(!key.starts_with("export "), "{key} has export");
        if value.starts_with("http") {
            assert!(!value.ends_with('/'), "{key}={value} ends in a slash");
        }
    }
    let full_uri = dev.var("AWS_CONTAINER_CREDENTIALS_FULL_URI");
    assert!(full_uri.starts_with("http://127.0.0.1:"), "{full_uri}");
    let imds = dev.var("AWS_EC2_METADATA_SERVICE_ENDPOINT");
    assert_eq!(imds.matches('/').count(), 2, "IMDS endpoint must have no path: {imds}");
    assert_eq!(dev.var("AWS_REGION"), dev.var("AWS_DEFAULT_REGION"));

    let mode = std::fs::metadata(dev.dir.path().join("app.env")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the env file holds secrets");

    // The bundle apps get in SSL_CERT_FILE trusts the emulator and the system's CAs alike.
    let bundle = std::fs::read_to_string(dev.var("SSL_CERT_FILE")).unwrap();
    let emulator_ca = std::fs::read_to_string(dev.var("KEYLESS_DEV_EMULATOR_CA")).unwrap();
    assert!(bundle.contains(emulator_ca.trim()));
    assert!(bundle.matches("BEGIN CERTIFICATE").count() > 1, "no system CA in the bundle");
}

#[tokio::test]
async fn the_terminal_shows_the_env_with_secrets_redacted() {
    let dev = Dev::start().await;
    let printed = std::fs::read_to_string(&dev.stdout_path).unwrap();
    for secret in ["AWS_CONTAINER_AUTHORIZATION_TOKEN", "IDENTITY_HEADER"] {
        let value = dev.var(secret);
        assert!(printed.contains(&format!("{secret}=")), "{secret} not shown");
        assert!(!printed.contains(value), "{secret}'s value was printed");
        assert!(!dev.logs().contains(value), "{secret}'s value was logged");
    }
    assert!(printed.contains(&format!("AWS_REGION={}", dev.var("AWS_REGION"))));
}

#[tokio::test]
async fn stops_cleanly_on_sigterm() {
    let dev = Dev::start().await;
    let status = dev.stop().await;
    assert!(status.success(), "exit status {status:?}");
}

/// `keyless_requests_total{provider,route,status}` counts every answered request once, under the
/// provider that served it and the matched route template (not the raw path), with its status.
#[tokio::test]
async fn every_answered_request_is_counted_by_provider_route_and_status() {
    let dev = Dev::start().await;
    dev.wait_ready().await;
    let http = reqwest::Client::new();
    let gce = format!("http://{}", dev.var("GCE_METADATA_HOST"));
    let token_path = "/computeMetadata/v1/instance/service-accounts/default/token";
    for _ in 0..3 {
        let ok = http.get(format!("{gce}{token_path}")).header("Metadata-Flavor", "Google").send().await.unwrap();
        assert_eq!(ok.status(), 200);
    }
    let refused = http.get(format!("{gce}{token_path}")).send().await.unwrap();
    assert_eq!(refused.status(), 403);
    let full_uri = dev.var("AWS_CONTAINER_CREDENTIALS_FULL_URI");
    let wrong = http.get(full_uri).header("Authorization", "not-the-token").send().await.unwrap();
    assert_eq!(wrong.status(), 403);
    let imds = format!("{gce}/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://vault.azure.net");
    let no_header = http.get(imds).send().await.unwrap();
    assert_eq!(no_header.status(), 400);

    // http://127.0.0.1:PORT/path -> /path
    let container_path = &format!("/{}", full_uri.splitn(4, '/').nth(3).unwrap());
    assert_eq!(dev.requests_counted("gcp", "/computeMetadata/{*path}", 200).await, 3);
    assert_eq!(dev.requests_counted("gcp", "/computeMetadata/{*path}", 403).await, 1);
    assert_eq!(dev.requests_counted("aws", container_path, 403).await, 1);
    assert_eq!(dev.requests_counted("azure", "/metadata/identity/oauth2/token", 400).await, 1);
    assert_eq!(dev.requests_counted("aws", container_path, 200).await, 0, "a request that was not made is counted");
}

/// A laptop with its own AWS keys, a credentials file and a Google credential file: the app that
/// sourced the env file still gets the emulated identities, `keyless dev` says what it set aside,
/// and `keyless check` in that shell has no note about the env file's variables (issue 23).
#[tokio::test]
async fn the_env_file_sets_aside_the_laptops_own_credentials() {
    let laptop = tempfile::tempdir().unwrap();
    // gcloud's own file, which Go, Node and Rust read under HOME whatever CLOUDSDK_CONFIG says.
    let gcloud = laptop.path().join(".config/gcloud");
    std::fs::create_dir_all(&gcloud).unwrap();
    std::fs::write(gcloud.join("application_default_credentials.json"), r#"{"type":"authorized_user"}"#).unwrap();
    let credentials = laptop.path().join("credentials");
    std::fs::write(&credentials, "[default]\naws_access_key_id = AKIALAPTOPKEY\naws_secret_access_key = laptop\n")
        .unwrap();
    let laptop_env = [
        ("HOME", laptop.path().to_str().unwrap()),
        ("AWS_SHARED_CREDENTIALS_FILE", credentials.to_str().unwrap()),
        ("AWS_ACCESS_KEY_ID", "AKIASTATICKEY"),
        ("AWS_SECRET_ACCESS_KEY", "static"),
        ("GOOGLE_APPLICATION_CREDENTIALS", "/nonexistent/adc.json"),
    ];
    let dev = Dev::start_with_args(&[], &laptop_env).await;
    assert!(
        dev.logs().contains(
            "keyless dev: set aside AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, ~/credentials [default], \
             GOOGLE_APPLICATION_CREDENTIALS, ~/.config/gcloud/application_default_credentials.json \
             (GOOGLE_APPLICATION_CREDENTIALS set to keyless's stand-in; Java programs refuse it and need it unset: \
             exec --keep-env GOOGLE_APPLICATION_CREDENTIALS) in the env file"
        ),
        "{}",
        dev.logs()
    );
    // The shell that sourced the env file: the laptop's variables, the file's on top.
    let mut shell: std::collections::BTreeMap<String, String> =
        laptop_env.iter().filter(|(k, _)| *k != "HOME").map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    shell.extend(dev.env.clone());
    let out = dev
        .python_ok_in(
            "import boto3, google.auth, google.auth.transport.requests as tr\n\
             print(boto3.client('sts').get_caller_identity()['Arn'])\n\
             creds, project = google.auth.default(scopes=['https://www.googleapis.com/auth/cloud-platform'])\n\
             creds.refresh(tr.Request())\nprint(project, type(creds).__module__, len(creds.token))",
            &shell,
        )
        .await;
    let role = dev.var("KEYLESS_DEV_AWS_ROLE_ARN").rsplit('/').next().unwrap().to_owned();
    assert!(out.contains(&format!("assumed-role/{role}/")), "{out}");
    assert!(out.contains(dev.var("KEYLESS_DEV_GCP_PROJECT_ID")), "{out}");
    // The stand-in, not gcloud's file: keyless's token through its own token URL.
    assert!(out.contains("google.auth.identity_pool"), "{out}");
    let check = std::process::Command::new(keyless_test_support::binary::keyless_bin())
        .arg("check")
        .env_clear()
        .envs(&shell)
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&check.stdout);
    assert!(!printed.contains("is not a keyless setting"), "{printed}");
}
