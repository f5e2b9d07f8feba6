//! The request rules every native route shares (`keyless_provider::guard`), tested once over all
//! five endpoints of the real binary from one table: the same violation gets the same status on
//! every endpoint, in that endpoint's native error shape, and a request that breaks no rule is
//! served.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use keyless_test_support::dev::Dev;
use keyless_test_support::load::{self, Endpoint};
use reqwest::header::{HOST, HeaderName};

const ARM: &str = "https%3A%2F%2Fmanagement.azure.com%2F";

/// A request that gets a credential from `endpoint`: method, URL, and the header that
/// authenticates it (the one a duplicate is tried with).
struct Valid {
    put: bool,
    url: String,
    auth: (&'static str, String),
    /// `host:port` of the listener (what a direct client sends as `Host`).
    authority: String,
}

async fn valid(dev: &Dev, http: &reqwest::Client, endpoint: Endpoint) -> Valid {
    let authority = dev.var("GCE_METADATA_HOST").to_owned();
    let base = format!("http://{authority}");
    match endpoint {
        Endpoint::AwsContainer => Valid {
            put: false,
            url: dev.var("AWS_CONTAINER_CREDENTIALS_FULL_URI").to_owned(),
            auth: ("authorization", dev.var("AWS_CONTAINER_AUTHORIZATION_TOKEN").to_owned()),
            authority,
        },
        Endpoint::AwsImds => {
            let session = http
                .put(format!("{base}/latest/api/token"))
                .header("x-aws-ec2-metadata-token-ttl-seconds", "60")
                .send()
                .await
                .unwrap();
            assert_eq!(session.status(), 200);
            let role = dev.var("KEYLESS_DEV_AWS_ROLE_ARN").rsplit('/').next().unwrap().to_owned();
            Valid {
                put: false,
                url: format!("{base}/latest/meta-data/iam/security-credentials/{role}"),
                auth: ("x-aws-ec2-metadata-token", session.text().await.unwrap()),
                authority,
            }
        }
        Endpoint::GceToken => Valid {
            put: false,
            url: format!("{base}/computeMetadata/v1/instance/service-accounts/default/token"),
            auth: ("metadata-flavor", "Google".to_owned()),
            authority,
        },
        Endpoint::AzureImds => Valid {
            put: false,
            url: format!(
                "{}/metadata/identity/oauth2/token?api-version=2018-02-01&resource={ARM}",
                dev.var("AZURE_POD_IDENTITY_AUTHORITY_HOST")
            ),
            auth: ("metadata", "true".to_owned()),
            authority,
        },
        Endpoint::AzureAppService => Valid {
            put: false,
            url: format!("{}?api-version=2019-08-01&resource={ARM}", dev.var("IDENTITY_ENDPOINT")),
            auth: ("x-identity-header", dev.var("IDENTITY_HEADER").to_owned()),
            authority,
        },
    }
}

/// One rule broken on purpose, and the status every endpoint answers it with.
#[derive(Debug, Clone)]
enum Breach {
    None,
    ForeignHost,
    /// A header every route refuses twice (`load::single_headers`: `Authorization` and each
    /// registered provider's declared security headers), given twice: with the endpoint's own
    /// value when it is the one that authenticates it, else with `x`.
    Duplicate(String),
    DuplicateHost,
    XForwardedFor,
    Forwarded,
    XRealIp,
    Body,
    LongQuery,
}

impl Breach {
    /// Every breach: the fixed ones, and each header every route refuses twice but `Host` (which
    /// [`Breach::DuplicateHost`] gives with the listener's own authority).
    fn all() -> Vec<Self> {
        let mut all = vec![
            Self::None,
            Self::ForeignHost,
            Self::DuplicateHost,
            Self::XForwardedFor,
            Self::Forwarded,
            Self::XRealIp,
            Self::Body,
            Self::LongQuery,
        ];
        all.extend(load::single_headers().into_iter().filter(|h| h != "host").map(Self::Duplicate));
        all
    }

    fn status(&self) -> u16 {
        match self {
            Self::None => 200,
            Self::ForeignHost | Self::XForwardedFor | Self::Forwarded | Self::XRealIp => 403,
            Self::Duplicate(_) | Self::DuplicateHost | Self::Body | Self::LongQuery => 400,
        }
    }
}

async fn send(http: &reqwest::Client, valid: &Valid, breach: &Breach) -> (u16, reqwest::header::HeaderMap, String) {
    let mut url = valid.url.clone();
    if let Breach::LongQuery = breach {
        url.push(if url.contains('?') { '&' } else { '?' });
        url.push_str(&format!("pad={}", "a".repeat(5000)));
    }
    let mut request = if valid.put { http.put(&url) } else { http.get(&url) };
    let auth = HeaderName::from_static(valid.auth.0);
    request = request.header(auth.clone(), &valid.auth.1);
    request = match breach {
        Breach::None | Breach::LongQuery => request,
        Breach::ForeignHost => request.header(HOST, format!("rebind.evil.example:{}", port(&valid.authority))),
        Breach::Duplicate(name) if name == valid.auth.0 => request.header(auth, &valid.auth.1),
        Breach::Duplicate(name) => request.header(name.as_str(), "x").header(name.as_str(), "x"),
        Breach::DuplicateHost => request.header(HOST, &valid.authority).header(HOST, &valid.authority),
        Breach::XForwardedFor => request.header("x-forwarded-for", "203.0.113.7"),
        Breach::Forwarded => request.header("forwarded", "for=203.0.113.7"),
        Breach::XRealIp => request.header("x-real-ip", "203.0.113.7"),
        Breach::Body => request.body("unexpected"),
    };
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, headers, response.text().await.unwrap())
}

fn port(authority: &str) -> &str {
    authority.rsplit(':').next().unwrap()
}

/// Whether a refusal has the endpoint's native shape (what its SDKs parse).
fn native_refusal(endpoint: Endpoint, status: u16, headers: &reqwest::header::HeaderMap, body: &str) -> bool {
    let json: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    let string = |key: &str| json[key].as_str().is_some_and(|s| !s.is_empty());
    match endpoint {
        Endpoint::AwsContainer => string("Code") && string("Message"),
        Endpoint::AwsImds => body.contains(": ") && json.is_null(),
        Endpoint::GceToken => {
            body.starts_with("Request denied: ") && headers.get("metadata-flavor").is_some_and(|v| v == "Google")
        }
        Endpoint::AzureImds => string("error") && string("error_description"),
        Endpoint::AzureAppService => json["statusCode"].as_u64() == Some(u64::from(status)) && string("message"),
    }
}

#[tokio::test]
async fn every_endpoint_answers_every_shared_rule_alike_in_its_native_shape() {
    let dev = Dev::start().await;
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut failures = Vec::new();
    let breaches = Breach::all();
    for endpoint in Endpoint::ALL {
        let valid = valid(&dev, &http, endpoint).await;
        assert!(
            load::single_headers().iter().any(|h| h == valid.auth.0),
            "{endpoint:?} authenticates by {}, which no provider declares a security header",
            valid.auth.0
        );
        for breach in &breaches {
            let (status, headers, body) = send(&http, &valid, breach).await;
            let shaped = breach.status() == 200 || native_refusal(endpoint, status, &headers, &body);
            if status != breach.status() || !shaped {
                failures.push(format!("{endpoint:?} {breach:?}: expected {}, got {status}: {body}", breach.status()));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn host_names_the_clouds_clients_use_are_accepted_only_on_their_cloud() {
    let dev = Dev::start().await;
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    for endpoint in Endpoint::ALL {
        let valid = valid(&dev, &http, endpoint).await;
        let p = port(&valid.authority).to_owned();
        for (host, gce_only) in [
            (format!("localhost:{p}"), false),
            (format!("127.0.0.1:{p}"), false),
            (format!("[::1]:{p}"), false),
            (format!("metadata.google.internal:{p}"), true),
            (format!("metadata.google.internal.:{p}"), true),
            ("metadata".to_owned(), true),
        ] {
            let auth = HeaderName::from_static(valid.auth.0);
            let status = http
                .get(&valid.url)
                .header(auth, &valid.auth.1)
                .header(HOST, &host)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16();
            let expected = if gce_only && endpoint != Endpoint::GceToken { 403 } else { 200 };
            assert_eq!(status, expected, "{endpoint:?} with Host {host}");
        }
    }
}

#[tokio::test]
async fn the_admin_listener_answers_only_requests_addressed_to_it() {
    let dev = Dev::start().await;
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let readyz = format!("{}/readyz", dev.admin_url());
    let admin = readyz.trim_start_matches("http://").split('/').next().unwrap().to_owned();
    for (host, expected) in
        [(admin.clone(), 200), (format!("localhost:{}", port(&admin)), 200), ("evil.example".to_owned(), 403)]
    {
        let status = http.get(&readyz).header(HOST, &host).send().await.unwrap().status().as_u16();
        assert_eq!(status, expected, "/readyz with Host {host}");
    }
    // The probe's own headers are not security headers there: a forwarded scrape is answered.
    let scraped = http.get(format!("{}/metrics", dev.admin_url())).header("x-forwarded-for", "10.0.0.9").send().await;
    assert_eq!(scraped.unwrap().status(), 200);
}

/// A listener serving AWS alone refuses every registered cloud's security header given twice, as
/// one serving all three does: the rules do not change with which clouds are configured (the
/// binary builds its routes with `Routes::refusing_twice` over the registry's headers).
#[tokio::test]
async fn a_listener_serving_one_cloud_refuses_every_clouds_security_headers_twice() {
    let emulator = keyless_test_support::emulate::EmulatorProcess::start().await;
    let token = |cloud: &str| keyless_test_support::sidecar::token_file_line(&emulator.token_file(cloud));
    let config = keyless_test_support::sidecar::all_clouds_config(&emulator, &emulator.url, "", "info", &token).await;
    let mut config: toml::Table = config.parse().unwrap();
    config.retain(|key, _| key != "gcp" && key != "azure");
    let sidecar = keyless_test_support::sidecar::Sidecar::spawn(&toml::to_string(&config).unwrap(), &[]);
    sidecar.wait_ready().await;
    let http = keyless_test_support::clients::loopback();
    let every_cloud = keyless_registry::single_headers();
    assert!(every_cloud.len() >= 3, "the registry declares no security headers: {every_cloud:?}");
    for header in every_cloud {
        let response = http
            .put(sidecar.url("/latest/api/token"))
            .header("x-aws-ec2-metadata-token-ttl-seconds", "60")
            .header(header, "a")
            .header(header, "b")
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body = response.text().await.unwrap();
        assert_eq!((status, body.contains("more than once")), (400, true), "{header} twice: {body}");
    }
    // The same request with each header once is served: the refusals above are the duplicates'.
    let session = http
        .put(sidecar.url("/latest/api/token"))
        .header("x-aws-ec2-metadata-token-ttl-seconds", "60")
        .header("metadata-flavor", "Google")
        .send()
        .await
        .unwrap();
    assert_eq!(session.status(), 200, "{}", session.text().await.unwrap());
}
