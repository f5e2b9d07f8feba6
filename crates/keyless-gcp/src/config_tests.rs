use std::collections::HashMap;
use std::io::Write as _;

use super::*;

const AUDIENCE: &str = "//iam.googleapis.com/projects/123456/locations/global/workloadIdentityPools/pool/providers/k8s";

fn section(toml_text: &str) -> Result<Config, toml::de::Error> {
    toml::from_str(toml_text)
}

fn minimal() -> Config {
    Config {
        token_file: Some("/var/run/secrets/gcp/token".into()),
        audience: Some(AUDIENCE.to_owned()),
        ..Config::default()
    }
}

fn credentials_file(json: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    file.write_all(json.as_bytes()).expect("write");
    file
}

const EXTERNAL_ACCOUNT: &str = r#"{
  "type": "external_account",
  "audience": "//iam.googleapis.com/projects/999/locations/global/workloadIdentityPools/p2/providers/k8s",
  "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
  "token_url": "https://sts.googleapis.com/v1/token",
  "service_account_impersonation_url": "https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/file@p.iam.gserviceaccount.com:generateAccessToken",
  "service_account_impersonation": {"token_lifetime_seconds": 1200},
  "credential_source": {"file": "/from/file/token"}
}"#;

#[test]
fn parses_the_section_the_binary_generates() {
    let config = section(&format!(
        r#"
        token_file = "/tmp/token"
        audience = "{AUDIENCE}"
        service_account = "app@proj.iam.gserviceaccount.com"
        project_id = "proj"
        project_number = "123456"
        sts_endpoint = "https://127.0.0.1:8443"
        iam_endpoint = "https://127.0.0.1:8443"
        scopes = ["https://www.googleapis.com/auth/devstorage.read_only"]
        token_lifetime = "30m"
        delegates = ["mid@proj.iam.gserviceaccount.com"]
        id_token_audiences = ["https://svc.example"]
        "#
    ))
    .expect("valid section");
    let s = config.resolve().expect("resolves");
    assert_eq!(s.project_number, "123456");
    assert_eq!(s.token_lifetime, Duration::from_secs(1800));
    assert_eq!(s.delegates, ["projects/-/serviceAccounts/mid@proj.iam.gserviceaccount.com"]);
    assert_eq!(s.sts_endpoint.as_str(), "https://127.0.0.1:8443/");
    assert_eq!(s.scopes.iter().collect::<Vec<_>>(), ["https://www.googleapis.com/auth/devstorage.read_only"]);
}

#[test]
fn unknown_keys_are_named() {
    let err = section("token_file = \"/t\"\naudiense = \"x\"").expect_err("typo");
    assert!(err.to_string().contains("audiense"), "{err}");
}

#[test]
fn defaults_come_from_the_audience_and_google() {
    let s = minimal().resolve().expect("resolves");
    assert_eq!(s.project_number, "123456");
    assert_eq!(s.scopes, ScopeSet::cloud_platform());
    assert_eq!(s.token_lifetime, Duration::from_secs(3600));
    assert_eq!(s.sts_endpoint.as_str(), "https://sts.googleapis.com/");
    assert_eq!(s.iam_endpoint.as_str(), "https://iamcredentials.googleapis.com/");
    assert_eq!(s.universe_domain, "googleapis.com");
    assert_eq!(s.subject_token_type, JWT_TOKEN_TYPE);
}

#[test]
fn project_number_may_be_an_integer() {
    let config = section(&format!("token_file = \"/t\"\naudience = \"{AUDIENCE}\"\nproject_number = 77"))
        .expect("valid section");
    assert_eq!(config.resolve().expect("resolves").project_number, "77");
}

#[test]
fn missing_and_invalid_values_name_their_key() {
    let cases: Vec<(Config, &str)> = vec![
        (Config { token_file: None, ..minimal() }, "gcp.token_file"),
        (Config { audience: Some("sts.amazonaws.com".into()), ..minimal() }, "gcp.audience"),
        (Config { token_lifetime: Some(Duration::from_secs(7200)), ..minimal() }, "gcp.token_lifetime"),
        (Config { id_token_audiences: vec!["https://svc".into()], ..minimal() }, "gcp.id_token_audiences"),
        (Config { sts_endpoint: Some("http://10.1.2.3".into()), ..minimal() }, "gcp.sts_endpoint"),
        (Config { service_account: Some("not-an-email".into()), ..minimal() }, "gcp.service_account"),
        (Config { scopes: Some(vec![]), ..minimal() }, "gcp.scopes"),
    ];
    for (config, key) in cases {
        let err = config.resolve().expect_err(key);
        assert!(err.to_string().contains(key), "{key}: {err}");
    }
}

#[test]
fn long_lifetimes_need_the_explicit_opt_in() {
    let config = Config { token_lifetime: Some(Duration::from_secs(4 * 3600)), allow_long_lifetime: true, ..minimal() };
    assert_eq!(config.resolve().expect("resolves").token_lifetime, Duration::from_secs(4 * 3600));
}

#[test]
fn the_credentials_file_provides_settings_and_explicit_keys_win() {
    let file = credentials_file(EXTERNAL_ACCOUNT);
    let from_file =
        Config { credentials_file: Some(file.path().to_owned()), ..Config::default() }.resolve().expect("resolves");
    assert_eq!(from_file.source, keyless_core::SourceSpec::File(PathBuf::from("/from/file/token")));
    assert_eq!(from_file.provider.project_number(), "999");
    assert_eq!(from_file.service_account.as_deref(), Some("file@p.iam.gserviceaccount.com"));
    assert_eq!(from_file.token_lifetime, Duration::from_secs(1200));

    let explicit = Config {
        credentials_file: Some(file.path().to_owned()),
        service_account: Some("explicit@p.iam.gserviceaccount.com".into()),
        ..minimal()
    }
    .resolve()
    .expect("resolves");
    assert_eq!(explicit.source, keyless_core::SourceSpec::File(PathBuf::from("/var/run/secrets/gcp/token")));
    assert_eq!(explicit.provider.audience(), AUDIENCE);
    assert_eq!(explicit.service_account.as_deref(), Some("explicit@p.iam.gserviceaccount.com"));
}

#[test]
fn from_env_reads_google_application_credentials_and_the_project() {
    let file = credentials_file(EXTERNAL_ACCOUNT);
    let vars = HashMap::from([
        ("GOOGLE_APPLICATION_CREDENTIALS", file.path().to_string_lossy().into_owned()),
        ("CLOUDSDK_CORE_PROJECT", "from-gcloud".to_owned()),
    ]);
    let env = |name: &str| vars.get(name).cloned();
    let config = Config::from_env(&env).expect("valid env").expect("configured");
    assert_eq!(config.credentials_file.as_deref(), Some(file.path()));
    assert_eq!(config.project_id.as_deref(), Some("from-gcloud"));
    assert!(config.resolve().is_ok());

    assert!(matches!(Config::from_env(&|_| None), Ok(None)));
}

#[test]
fn from_env_names_a_credential_type_it_cannot_use() {
    let file = credentials_file(r#"{"type": "authorized_user", "refresh_token": "secret-value"}"#);
    let path = file.path().to_string_lossy().into_owned();
    let env = |name: &str| (name == "GOOGLE_APPLICATION_CREDENTIALS").then(|| path.clone());
    let err = Config::from_env(&env).expect_err("wrong type");
    let text = err.to_string();
    assert!(text.contains("GOOGLE_APPLICATION_CREDENTIALS"), "{text}");
    assert!(text.contains("\"authorized_user\""), "{text}");
    assert!(!text.contains("secret-value"), "{text}");
}

#[test]
fn the_token_lifetime_is_bounded_and_the_error_names_the_range() {
    let absurd = Duration::from_secs(400_000_000_000 * 31_557_600);
    for (lifetime, long, range) in [
        (Duration::from_secs(59), false, "at least 1m"),
        (Duration::from_secs(3601), false, "at most 1h"),
        (absurd, false, "at most 1h"),
        (Duration::from_secs(12 * 3600 + 1), true, "at most 12h"),
        (absurd, true, "at most 12h"),
    ] {
        let config = Config { token_lifetime: Some(lifetime), allow_long_lifetime: long, ..minimal() };
        let err = config.resolve().expect_err("out of range").to_string();
        assert!(err.starts_with("gcp.token_lifetime") && err.contains(range), "{err}");
    }
}
