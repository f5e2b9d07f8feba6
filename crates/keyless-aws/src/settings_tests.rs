use super::*;

fn host(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
    move |k| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| (*v).to_owned())
}

fn resolve(
    config: &Config,
    env: &dyn Fn(&str) -> Option<String>,
    hostname: Option<&str>,
) -> Result<Settings, ConfigError> {
    Settings::resolve(config, &Host { env, hostname_file: hostname.map(str::to_owned) })
}

fn base() -> Config {
    Config::new("/var/run/secrets/tokens/aws", "arn:aws:iam::123456789012:role/team/app-role")
}

#[test]
fn defaults_follow_the_environment_then_us_east_1() {
    let s = resolve(&base(), &host(&[]), None).expect("valid");
    assert_eq!(s.region, "us-east-1");
    assert_eq!(s.duration, Duration::from_secs(3600));
    assert_eq!(s.account_id, "123456789012");
    assert_eq!(s.role.name(), "app-role");
    assert_eq!(s.session_name.as_str(), "keyless");
    let s = resolve(&base(), &host(&[("AWS_DEFAULT_REGION", "eu-west-1")]), None).expect("valid");
    assert_eq!(s.region, "eu-west-1");
    let s = resolve(&base(), &host(&[("AWS_REGION", "ap-south-1"), ("AWS_DEFAULT_REGION", "eu-west-1")]), None)
        .expect("valid");
    assert_eq!(s.region, "ap-south-1");
}

#[test]
fn the_default_session_name_is_the_sanitized_pod_name() {
    let s = resolve(&base(), &host(&[("HOSTNAME", "web-7d9f c:x")]), Some("ignored")).expect("valid");
    assert_eq!(s.session_name.as_str(), "keyless-web-7d9f-c-x");
    let s = resolve(&base(), &host(&[]), Some("node-1.example\n")).expect("valid");
    assert_eq!(s.session_name.as_str(), "keyless-node-1.example");
    let long = "p".repeat(100);
    let name = RoleSessionName::from_host(Some(&long));
    assert_eq!(name.as_str().len(), 64);
    assert!(RoleSessionName::parse(name.as_str()).is_ok());
}

#[test]
fn session_names_outside_the_sts_pattern_are_refused() {
    for bad in ["a", "has space", "slash/no", &"x".repeat(65)] {
        let mut c = base();
        c.session_name = Some(bad.to_owned());
        let err = resolve(&c, &host(&[]), None).expect_err(bad);
        assert!(err.to_string().starts_with("aws.session_name:"), "{err}");
    }
    let mut c = base();
    c.session_name = Some("ok_name+=,.@-1".to_owned());
    assert!(resolve(&c, &host(&[]), None).is_ok());
}

#[test]
fn role_arns_must_name_an_iam_role() {
    for bad in [
        "app-role",
        "arn:aws:iam::123456789012:user/someone",
        "arn:aws:iam::12345:role/app",
        "arn:aws:s3:::bucket/role/app-role-name",
        "arn:aws:iam::123456789012:role/",
    ] {
        let mut c = base();
        c.role_arn = bad.to_owned();
        let err = resolve(&c, &host(&[]), None).expect_err(bad);
        assert!(err.to_string().starts_with("aws.role_arn:"), "{err}");
    }
    let mut c = base();
    c.role_arn = "arn:aws-cn:iam::123456789012:role/a/b/c".to_owned();
    let s = resolve(&c, &host(&[]), None).expect("china partition");
    assert_eq!((s.role.partition(), s.role.name()), ("aws-cn", "c"));
}

#[test]
fn duration_is_bounded_to_what_sts_accepts() {
    for (secs, ok) in [(899, false), (900, true), (43_200, true), (43_201, false)] {
        let mut c = base();
        c.duration = Duration::from_secs(secs);
        assert_eq!(resolve(&c, &host(&[]), None).is_ok(), ok, "{secs}s");
    }
}

#[test]
fn session_policies_are_checked_before_any_exchange() {
    let mut c = base();
    c.policy = Some("{not json".to_owned());
    assert!(resolve(&c, &host(&[]), None).expect_err("bad json").to_string().contains("aws.policy"));
    c.policy = Some(format!("{{\"Version\":\"2012-10-17\",\"Pad\":\"{}\"}}", "x".repeat(2048)));
    assert!(resolve(&c, &host(&[]), None).is_err(), "too long");
    c.policy = Some(r#"{"Version":"2012-10-17","Statement":[]}"#.to_owned());
    c.policy_arns = (0..11).map(|i| format!("arn:aws:iam::aws:policy/P{i}")).collect();
    let err = resolve(&c, &host(&[]), None).expect_err("11 arns");
    assert!(err.to_string().contains("aws.policy_arns"), "{err}");
    c.policy_arns.truncate(10);
    assert!(resolve(&c, &host(&[]), None).is_ok());
}

#[test]
fn plain_http_sts_endpoints_are_accepted_only_on_loopback() {
    let mut c = base();
    c.sts_endpoint = Some("http://127.0.0.1:4566".to_owned());
    assert!(resolve(&c, &host(&[]), None).is_ok());
    c.sts_endpoint = Some("http://sts.internal:80".to_owned());
    let err = resolve(&c, &host(&[]), None).expect_err("plain http off-host");
    assert!(err.to_string().contains("aws.sts_endpoint"), "{err}");
}

#[test]
fn container_paths_must_be_plain_paths() {
    for bad in ["/", "relative", "/a//b", "/sp ace", "/{role}", "/creds/{*rest}"] {
        let mut c = base();
        c.container_path = bad.to_owned();
        let err = resolve(&c, &host(&[]), None).expect_err(bad);
        assert!(err.to_string().starts_with("aws.container_path:"), "{err}");
    }
}

#[test]
fn imds_limits_are_validated() {
    let mut c = base();
    c.imds_session_ttl_max = Duration::from_secs(21_601);
    assert!(resolve(&c, &host(&[]), None).is_err());
    let mut c = base();
    c.imds_max_sessions = 0;
    assert!(resolve(&c, &host(&[]), None).is_err());
    let mut c = base();
    c.imds = false;
    c.imds_max_sessions = 0;
    assert!(resolve(&c, &host(&[]), None).expect("imds off").imds.is_none());
}

#[test]
fn ca_files_without_usable_certificates_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ca.pem");
    std::fs::write(&path, "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").expect("write");
    let mut c = base();
    c.ca_file = Some(path);
    let err = resolve(&c, &host(&[]), None).expect_err("garbage certificate");
    assert!(err.to_string().starts_with("aws.ca_file"), "{err}");
}

#[test]
fn every_duration_and_number_is_bounded_and_the_error_names_key_and_range() {
    let absurd = Duration::from_secs(400_000_000_000 * 31_557_600);
    type Set = fn(&mut Config, u64);
    // (key, set the value in seconds or units, lowest, highest, the range as the error gives it)
    let table: [(&str, Set, u64, u64, &str); 3] = [
        ("duration", |c, v| c.duration = Duration::from_secs(v), 900, 43_200, "15m to 12h"),
        (
            "imds_session_ttl_max",
            |c, v| c.imds_session_ttl_max = Duration::from_secs(v),
            1,
            21_600,
            "between 1s and 6h",
        ),
        ("imds_max_sessions", |c, v| c.imds_max_sessions = v as usize, 1, 65_536, "between 1 and 65536"),
    ];
    for (key, set, lowest, highest, range) in table {
        for ok in [lowest, highest] {
            let mut c = base();
            set(&mut c, ok);
            assert!(resolve(&c, &host(&[]), None).is_ok(), "aws.{key} = {ok}");
        }
        for bad in [lowest - 1, highest + 1, absurd.as_secs()] {
            let mut c = base();
            set(&mut c, bad);
            let err = resolve(&c, &host(&[]), None).expect_err(key).to_string();
            assert!(err.starts_with(&format!("aws.{key}:")) && err.contains(range), "aws.{key} = {bad}: {err}");
        }
    }
}

#[test]
fn a_source_mistake_names_the_table_once() {
    let mut config = base();
    let table = serde_json::json!({"type": "command", "command": ["/usr/bin/get-token"]});
    config.source = Some(serde_json::from_value(table).expect("a command table"));
    let err = resolve(&config, &host(&[]), None).expect_err("no opt-in").to_string();
    assert!(err.starts_with("aws.source: type = \"command\" runs a program"), "{err}");
    assert_eq!(err.matches("aws.source").count(), 1, "{err}");
}
