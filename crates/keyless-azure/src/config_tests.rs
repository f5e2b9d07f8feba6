use super::*;

fn parse(toml_text: &str) -> Result<Config, toml::de::Error> {
    toml::from_str(toml_text)
}

const MINIMAL: &str = r#"
token_file = "/var/run/secrets/azure/tokens/azure-identity-token"
tenant_id = "tenant-1"
client_id = "client-1"
"#;

fn minimal() -> Config {
    parse(MINIMAL).expect("minimal section parses")
}

fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let pairs: Vec<(String, String)> = pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    move |name| pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
}

#[test]
fn minimal_section_gets_public_cloud_defaults_and_both_endpoints() {
    let settings = minimal().validate().expect("valid");
    assert_eq!(settings.authority.as_str(), "https://login.microsoftonline.com/");
    assert!(settings.imds && settings.app_service);
    assert_eq!(settings.app_service_path, "/msi/token");
    assert_eq!(settings.clients.len(), 1);
    let prewarm: Vec<&str> = settings.prewarm.iter().map(Scope::as_str).collect();
    assert_eq!(prewarm, ["https://management.azure.com/.default"]);
    assert_eq!(settings.identity_header.expose().len(), 64);
}

#[test]
fn every_key_of_the_section_is_accepted() {
    let config = parse(
        r#"
token_file = "/t"
tenant_id = "tenant-1"
client_id = "client-1"
additional_client_ids = ["client-2", "client-3"]
authority_host = "https://login.microsoftonline.us/"
ca_file = "/nonexistent-but-only-read-at-validation.pem"
resources = ["https://management.azure.com/", "https://vault.azure.net"]
imds = false
app_service = true
app_service_path = "/identity/token"
identity_header = "0123456789abcdef0123"
"#,
    )
    .expect("parses");
    assert_eq!(config.additional_client_ids.len(), 2);
    assert!(!format!("{config:?}").contains("0123456789abcdef0123"));
}

#[test]
fn unknown_keys_are_named() {
    let err = parse(&format!("{MINIMAL}\nclient_secret = \"x\"\n")).expect_err("unknown key");
    assert!(err.to_string().contains("client_secret"), "{err}");
}

#[test]
fn authority_host_of_sovereign_clouds_changes_the_default_prewarm() {
    for (host, arm) in [
        ("https://login.microsoftonline.us/", "https://management.usgovcloudapi.net/.default"),
        ("https://login.chinacloudapi.cn", "https://management.chinacloudapi.cn/.default"),
    ] {
        let settings = Config { authority_host: host.to_owned(), ..minimal() }.validate().expect("valid");
        assert_eq!(settings.prewarm[0].as_str(), arm);
        assert!(!settings.authority.path().ends_with("//"));
    }
}

#[test]
fn plain_http_authority_off_loopback_is_refused_with_its_key() {
    let err = Config { authority_host: "http://login.example.com".to_owned(), ..minimal() }
        .validate()
        .expect_err("plain http");
    assert!(err.to_string().contains("azure.authority_host"), "{err}");
}

#[test]
fn resources_that_are_scopes_are_refused_with_their_index() {
    let err = Config {
        resources: Some(vec![
            "https://management.azure.com/".to_owned(),
            "https://vault.azure.net/.default".to_owned(),
        ]),
        ..minimal()
    }
    .validate()
    .expect_err("a scope");
    assert!(err.to_string().contains("azure.resources[1]"), "{err}");
    let empty =
        Config { resources: Some(Vec::new()), ..minimal() }.validate().expect("an empty pre-warm list is allowed");
    assert!(empty.prewarm.is_empty());
}

#[test]
fn duplicate_client_ids_are_refused() {
    let err = Config { client_id: "ABC-1".to_owned(), additional_client_ids: vec!["abc-1".to_owned()], ..minimal() }
        .validate()
        .expect_err("duplicate");
    assert!(err.to_string().contains("azure.additional_client_ids[0]"), "{err}");
}

#[test]
fn app_service_path_must_be_a_plain_path() {
    for path in ["/", "msi", "/a b", "/{x}", "/a//b"] {
        let err = Config { app_service_path: path.to_owned(), ..minimal() }.validate().expect_err(path);
        assert!(err.to_string().contains("azure.app_service_path"), "{err}");
    }
}

#[test]
fn a_weak_identity_header_is_refused_and_a_generated_one_is_fresh() {
    let err =
        Config { identity_header: Some(Secret::new("short".to_owned())), ..minimal() }.validate().expect_err("weak");
    assert!(err.to_string().contains("azure.identity_header"));
    assert!(!err.to_string().contains("short"));
    let a = minimal().validate().expect("valid").identity_header;
    let b = minimal().validate().expect("valid").identity_header;
    assert_ne!(a.expose(), b.expose());
}

#[test]
fn the_identity_header_length_is_bounded_and_the_error_names_the_range() {
    let header = |len: usize| Config { identity_header: Some(Secret::new("h".repeat(len))), ..minimal() };
    for ok in [16, 4096] {
        assert!(header(ok).validate().is_ok(), "{ok} characters");
    }
    for bad in [15, 4097, 1 << 20] {
        let err = header(bad).validate().expect_err("out of range").to_string();
        assert!(err.starts_with("azure.identity_header:") && err.contains("16 to 4096"), "{bad}: {err}");
    }
}

#[test]
fn serving_nothing_is_refused() {
    let err = Config { imds: false, app_service: false, ..minimal() }.validate().expect_err("nothing served");
    assert!(err.to_string().contains("azure.imds"));
}

#[test]
fn from_env_reads_the_workload_identity_webhook_vars() {
    assert!(Config::from_env(&env_of(&[("AZURE_CLIENT_ID", "c")])).expect("ok").is_none());
    let config = Config::from_env(&env_of(&[
        ("AZURE_CLIENT_ID", "client-1"),
        ("AZURE_TENANT_ID", "tenant-1"),
        ("AZURE_FEDERATED_TOKEN_FILE", "/var/run/secrets/azure/tokens/azure-identity-token"),
        ("AZURE_AUTHORITY_HOST", "https://login.microsoftonline.com/"),
    ]))
    .expect("ok")
    .expect("configured");
    assert_eq!(config.client_id, "client-1");
    assert_eq!(config.tenant_id, "tenant-1");
    let settings = config.validate().expect("valid");
    assert_eq!(settings.authority.as_str(), "https://login.microsoftonline.com/");
}

#[test]
fn from_env_without_authority_host_uses_the_public_cloud() {
    let config = Config::from_env(&env_of(&[
        ("AZURE_CLIENT_ID", "client-1"),
        ("AZURE_TENANT_ID", "tenant-1"),
        ("AZURE_FEDERATED_TOKEN_FILE", "/t"),
    ]))
    .expect("ok")
    .expect("configured");
    assert_eq!(config.authority_host, PUBLIC_AUTHORITY_HOST);
}

#[test]
fn from_env_with_a_token_file_but_no_tenant_says_what_is_missing() {
    let err = Config::from_env(&env_of(&[("AZURE_CLIENT_ID", "client-1"), ("AZURE_FEDERATED_TOKEN_FILE", "/t")]))
        .expect_err("incomplete");
    assert!(err.to_string().contains("AZURE_TENANT_ID"), "{err}");
    assert!(!err.to_string().contains("AZURE_CLIENT_ID and"), "{err}");
}
