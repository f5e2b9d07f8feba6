//! `keyless credential-process`: AWS `credential_process` JSON on stdout (docs/protocols.md 2.4), either
//! from a running keyless's container endpoint or by doing the exchange itself from config.
//! The JSON shapes are keyless-aws's; this file only chooses the source and prints.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use keyless_core::Context;
use keyless_core::clock::SystemClock;
use keyless_core::printable::upstream;
use keyless_core::upstream::ClientRules;
use keyless_core::upstream::client::client_builder;
use keyless_provider::Section as _;
use url::Url;

use crate::config;

/// Where the credentials come from.
#[derive(Debug)]
pub enum Source {
    /// `GET` a running keyless's container-credentials endpoint.
    Endpoint { url: Url, authorization: String },
    /// One STS exchange from the `[aws]` section (or the IRSA env vars); with `role`, for that
    /// `[[aws.roles]]` entry.
    Exchange { config_file: Option<std::path::PathBuf>, role: Option<String> },
}

impl Source {
    /// `--config` means exchange; otherwise a container endpoint in the environment (as keyless
    /// dev or the pod wiring sets it) is used; otherwise exchange from the IRSA env vars.
    pub fn choose(
        config_file: Option<std::path::PathBuf>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, String> {
        if config_file.is_some() {
            return Ok(Self::Exchange { config_file, role: None });
        }
        if let Some(url) = env("AWS_CONTAINER_CREDENTIALS_FULL_URI") {
            // Checked before the token is even read: it must not go anywhere an SDK would not send it.
            let url = container_endpoint(&url)?;
            let authorization =
                match (env("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"), env("AWS_CONTAINER_AUTHORIZATION_TOKEN")) {
                    (Some(file), _) => read_token_file(&file)?,
                    (None, Some(value)) => value,
                    (None, None) => {
                        return Err(
                        "AWS_CONTAINER_CREDENTIALS_FULL_URI is set but neither AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE \
                                nor AWS_CONTAINER_AUTHORIZATION_TOKEN is: keyless's endpoint requires the token"
                            .to_owned(),
                    );
                    }
                };
            return Ok(Self::Endpoint { url, authorization: authorization.trim_end_matches(['\r', '\n']).to_owned() });
        }
        Ok(Self::Exchange { config_file: None, role: None })
    }

    /// The named role `role` (`--role NAME`) instead of the default one: its container path,
    /// `{AWS_CONTAINER_CREDENTIALS_FULL_URI}/roles/NAME` (the default of `aws.roles[].container_path`),
    /// or its own exchange.
    pub fn for_role(self, role: Option<String>) -> Result<Self, String> {
        let Some(role) = role else { return Ok(self) };
        if !keyless_aws::is_role_name(&role) {
            return Err(format!(
                "--role {role:?} is not a role name: names are 1 to 64 letters, digits, '_', '.' or '-', as in \
                 the name of an [[aws.roles]] entry"
            ));
        }
        Ok(match self {
            Self::Endpoint { mut url, authorization } => {
                let path = format!("{}/roles/{role}", url.path().trim_end_matches('/'));
                url.set_path(&path);
                Self::Endpoint { url, authorization }
            }
            Self::Exchange { config_file, .. } => Self::Exchange { config_file, role: Some(role) },
        })
    }
}

/// The Version 1 JSON, or the reason it could not be produced.
pub async fn run(source: Source) -> Result<String, String> {
    match source {
        Source::Endpoint { url, authorization } => from_endpoint(&url, &authorization).await,
        Source::Exchange { config_file, role } => from_exchange(config_file.as_deref(), role.as_deref()).await,
    }
}

/// Longest authorization value read from `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`: keyless's own
/// endpoint accepts at most 4096 bytes (it travels as one header), plus a trailing newline.
const MAX_TOKEN_FILE_BYTES: u64 = 4097;

/// The authorization value in `file`, read as the sidecar reads token files: a FIFO, a device or a
/// huge file is refused at once instead of hanging or filling memory.
fn read_token_file(file: &str) -> Result<String, String> {
    let cannot =
        |why: &dyn std::fmt::Display| format!("cannot read AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE={file}: {why}");
    let bytes = keyless_core::read_regular_file(Path::new(file), MAX_TOKEN_FILE_BYTES).map_err(|e| cannot(&e))?;
    String::from_utf8(bytes).map_err(|_| cannot(&"it is not UTF-8 text"))
}

/// The link-local hosts the AWS SDKs accept for a plain-http container endpoint: ECS (IPv4), EKS
/// Pod Identity (IPv4 and IPv6) (docs/protocols.md 2.2 and 8).
const CONTAINER_HOSTS: [IpAddr; 3] = [
    IpAddr::V4(Ipv4Addr::new(169, 254, 170, 2)),
    IpAddr::V4(Ipv4Addr::new(169, 254, 170, 23)),
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x23)),
];

/// `AWS_CONTAINER_CREDENTIALS_FULL_URI` as the AWS SDKs accept it: https to any host, plain http
/// only to loopback (127.0.0.0/8, ::1, `localhost`) or the ECS/EKS hosts, where the
/// authorization value does not cross a network in clear.
fn container_endpoint(value: &str) -> Result<Url, String> {
    let refuse = |why: &str| {
        Err(format!(
            "AWS_CONTAINER_CREDENTIALS_FULL_URI={value} {why}: the authorization token would be sent there. \
             Like the AWS SDKs, keyless credential-process allows https to any host and plain http only to \
             loopback (127.0.0.0/8, [::1], localhost), 169.254.170.2, 169.254.170.23 and [fd00:ec2::23]; \
             point it at the keyless sidecar (http://127.0.0.1:9811/v1/credentials)"
        ))
    };
    let Ok(url) = Url::parse(value) else { return refuse("is not a URL") };
    match url.scheme() {
        "https" => Ok(url),
        "http" if is_local_container_host(&url) => Ok(url),
        "http" => refuse("is plain http to a host that is neither loopback nor an ECS/EKS container host"),
        _ => refuse("is neither http nor https"),
    }
}

fn is_local_container_host(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback() || CONTAINER_HOSTS.contains(&IpAddr::V4(ip)),
        Some(url::Host::Ipv6(ip)) => ip.to_canonical().is_loopback() || CONTAINER_HOSTS.contains(&IpAddr::V6(ip)),
        None => false,
    }
}

/// The client for the container endpoint: the upstream client stack (`keyless_core::upstream::
/// client`: no redirect followed, as the token would be re-sent to the next hop; bounded time), no
/// proxy for the local hosts (a proxy would see the authorization token and could answer
/// credentials of its choosing), `localhost` resolved to loopback only.
fn endpoint_client(url: &Url) -> Result<reqwest::Client, String> {
    let rules =
        ClientRules { endpoints: &[url], timeout: Duration::from_secs(10), ca_pem: None, ca_key: "SSL_CERT_FILE" };
    let mut builder = client_builder(&rules).map_err(|e| e.to_string())?;
    if is_local_container_host(url) {
        builder = builder.no_proxy();
        if let Some(url::Host::Domain(name)) = url.host() {
            let port = url.port_or_known_default().unwrap_or(80);
            let loopback =
                [SocketAddr::from((Ipv4Addr::LOCALHOST, port)), SocketAddr::from((Ipv6Addr::LOCALHOST, port))];
            builder = builder.resolve_to_addrs(name, &loopback);
        }
    }
    builder.build().map_err(|e| format!("cannot build an HTTP client: {e}"))
}

async fn from_endpoint(url: &Url, authorization: &str) -> Result<String, String> {
    let client = endpoint_client(url)?;
    let response = client
        .get(url.clone())
        .header("Authorization", authorization)
        .send()
        .await
        .map_err(|e| format!("keyless at {url} did not answer: {e} (is the sidecar running?)"))?;
    let status = response.status();
    if status.is_redirection() {
        let to = response.headers().get(reqwest::header::LOCATION).map_or_else(
            || "(no Location)".to_owned(),
            |l| upstream(&String::from_utf8_lossy(l.as_bytes())).into_owned(),
        );
        return Err(format!(
            "the endpoint at {url} answered {status}, a redirect to {to}: keyless credential-process follows no \
             redirect (the authorization token would be sent on); set AWS_CONTAINER_CREDENTIALS_FULL_URI to the \
             credentials endpoint itself"
        ));
    }
    // Bounded as every answer of a token service is: an endpoint that streams without end must not
    // fill this process's memory within the request's timeout.
    let body = keyless_provider::upstream::read_bounded(&format!("keyless at {url}"), "SSL_CERT_FILE", response)
        .await
        .map_err(|e| e.to_string())?;
    let body = String::from_utf8_lossy(&body);
    if status == reqwest::StatusCode::NOT_FOUND
        && let Some((_, role)) = url.path().rsplit_once("/roles/")
    {
        // keyless answers which roles it serves (its 404's Message); an older one answers nothing.
        let message = serde_json::from_str::<serde_json::Value>(&body).ok().and_then(|v| match &v["Message"] {
            serde_json::Value::String(m) => Some(upstream(m).into_owned()),
            _ => None,
        });
        return Err(match message {
            Some(said) => format!(
                "keyless at {url} serves no role named \"{role}\" (404): {said}; --role names one of them (an \
                 [[aws.roles]] entry of the running keyless's configuration)"
            ),
            None => format!(
                "keyless at {url} serves no role named \"{role}\" (404): --role names one of the [[aws.roles]] \
                 entries of the running keyless's configuration (`keyless check` with that configuration lists \
                 them, one AssumeRoleWithWebIdentity line per role), served at \
                 AWS_CONTAINER_CREDENTIALS_FULL_URI/roles/NAME"
            ),
        });
    }
    if !status.is_success() {
        // An endpoint chooses what it answers: escaped and capped as any upstream text.
        let quoted = if body.is_empty() { "(no message)".into() } else { upstream(&body) };
        return Err(format!("keyless at {url} answered {status}: {quoted}"));
    }
    let credentials = keyless_aws::AwsCredentials::from_container_json(&body)
        .map_err(|e| format!("keyless at {url} answered something that is not AWS credentials: {e}"))?;
    Ok(keyless_aws::credential_process_json(&credentials))
}

async fn from_exchange(config_file: Option<&Path>, role: Option<&str>) -> Result<String, String> {
    let env: std::collections::HashMap<String, String> = std::env::vars().collect();
    let (settings, _) = config::settings_from_env(&env);
    let (config, mut sections) = config::load(config_file, settings).map_err(|e| e.to_string())?;
    let process_env = |name: &str| std::env::var(name).ok();
    let section = sections.values.remove(<keyless_aws::Aws as keyless_provider::Provider>::NAME);
    let aws = match section {
        Some(section) => section
            .try_deserialize::<keyless_aws::Config>()
            .map_err(|e| config::explain(&format!("[aws] section: {e}")))?,
        None => keyless_aws::Config::from_env(&process_env).map_err(|e| e.to_string())?.ok_or_else(|| {
            "no AWS identity configured: pass --config with an [aws] section, set AWS_ROLE_ARN and \
             AWS_WEB_IDENTITY_TOKEN_FILE, or point AWS_CONTAINER_CREDENTIALS_FULL_URI at a running keyless"
                .to_owned()
        })?,
    };
    let ctx =
        Context::new(Arc::new(SystemClock), crate::metrics(), config.one_client_cache_policy(), config.watch_options());
    let issued = keyless_aws::fetch_role_once(&aws, role, &ctx).await.map_err(|e| e.to_string())?;
    Ok(keyless_aws::credential_process_json(&issued.credential.value))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_container_endpoint_follows_the_aws_sdks_host_rules() {
        let allowed = [
            "http://127.0.0.1:9811/v1/credentials",
            "http://127.8.9.10/x",
            "http://[::1]:9811/v1/credentials",
            "http://[::ffff:127.0.0.1]/x",
            "http://localhost:9811/v1/credentials",
            "http://LOCALHOST/x",
            "http://169.254.170.2/v2/credentials/abc",
            "http://169.254.170.23/v1/credentials",
            "http://[fd00:ec2::23]/v1/credentials",
            "https://credentials.example.com/v1",
        ];
        for url in allowed {
            assert!(container_endpoint(url).is_ok(), "{url} refused");
        }
        let refused = [
            "http://evil.example/x",
            "http://10.0.0.1/x",
            "http://169.254.169.254/latest/meta-data/",
            "http://localhost.evil.example/x",
            "http://127.0.0.1@evil.example/x",
            "http://[fd00:ec2::254]/x",
            "ftp://127.0.0.1/x",
            "127.0.0.1:9811/v1/credentials",
        ];
        for url in refused {
            let err = container_endpoint(url).unwrap_err();
            assert!(err.starts_with(&format!("AWS_CONTAINER_CREDENTIALS_FULL_URI={url} ")), "{err}");
            assert!(err.contains("loopback"), "{err}");
        }
    }

    #[test]
    fn a_named_role_is_asked_for_under_the_container_path_or_exchanged_by_name() {
        let endpoint = Source::Endpoint {
            url: Url::parse("http://127.0.0.1:9811/v1/credentials").unwrap(),
            authorization: "a".into(),
        };
        match endpoint.for_role(Some("writer".into())).unwrap() {
            Source::Endpoint { url, .. } => {
                assert_eq!(url.as_str(), "http://127.0.0.1:9811/v1/credentials/roles/writer")
            }
            other => panic!("{other:?}"),
        }
        let exchange = Source::Exchange { config_file: None, role: None }.for_role(Some("writer".into())).unwrap();
        assert!(matches!(exchange, Source::Exchange { role: Some(r), .. } if r == "writer"));
        for bad in ["../x", "a/b", "", "a?b", ".hidden"] {
            let err = Source::Exchange { config_file: None, role: None }.for_role(Some(bad.into())).unwrap_err();
            assert!(err.contains("--role"), "{err}");
        }
    }

    /// `Source::choose` with the endpoint set and the token file at `path`.
    fn choose_with_token_file(path: &Path) -> Result<Source, String> {
        let path = path.to_str().unwrap().to_owned();
        let env = move |name: &str| match name {
            "AWS_CONTAINER_CREDENTIALS_FULL_URI" => Some("http://127.0.0.1:9811/v1/credentials".to_owned()),
            "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE" => Some(path.clone()),
            _ => None,
        };
        Source::choose(None, &env)
    }

    #[test]
    fn the_token_file_is_read_with_its_trailing_newline_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "secret-value\n").unwrap();
        match choose_with_token_file(&path).unwrap() {
            Source::Endpoint { authorization, .. } => assert_eq!(authorization, "secret-value"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_fifo_as_the_token_file_is_refused_without_blocking() {
        // Opening a FIFO without a writer blocks forever: on the old code this test hangs.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fifo");
        assert!(std::process::Command::new("mkfifo").arg(&path).status().unwrap().success());
        let err = choose_with_token_file(&path).unwrap_err();
        assert!(err.contains("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE=") && err.contains("FIFO"), "{err}");
    }

    #[test]
    fn dev_zero_as_the_token_file_is_refused_without_reading_it() {
        let err = choose_with_token_file(Path::new("/dev/zero")).unwrap_err();
        assert!(err.contains("/dev/zero") && err.contains("not a regular file"), "{err}");
    }

    #[test]
    fn a_huge_token_file_is_refused_without_reading_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("huge");
        // Sparse: a gigabyte on paper that the old code read whole.
        std::fs::File::create(&path).unwrap().set_len(1 << 30).unwrap();
        let err = choose_with_token_file(&path).unwrap_err();
        assert!(err.contains("larger than 4097 bytes"), "{err}");
    }

    #[tokio::test]
    async fn an_endless_answer_is_read_no_further_than_the_bound() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = Url::parse(&format!("http://{}/v1/credentials", listener.local_addr().unwrap())).unwrap();
        // A 200 with no length that goes on (up to 1 GiB) while the client reads.
        let server = tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let mut head = [0u8; 4096];
            let _ = tcp.read(&mut head).await;
            tcp.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n").await.unwrap();
            let chunk = vec![b'x'; 64 * 1024];
            let mut sent = 0usize;
            while sent < 1 << 30 && tcp.write_all(&chunk).await.is_ok() {
                sent += chunk.len();
            }
            sent
        });
        let err = from_endpoint(&url, "a").await.unwrap_err();
        assert!(err.contains("more than 262144 bytes"), "{err}");
        let sent = server.await.unwrap();
        assert!(sent < 16 << 20, "the client read {sent} bytes before giving up");
    }

    #[tokio::test]
    async fn a_redirect_is_quoted_escaped_and_capped() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = Url::parse(&format!("http://{}/v1/credentials", listener.local_addr().unwrap())).unwrap();
        let location = format!("http://elsewhere.example/\u{202e}{}", "a".repeat(64 * 1024));
        tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let mut head = [0u8; 4096];
            let _ = tcp.read(&mut head).await;
            let answer = format!("HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\n\r\n");
            tcp.write_all(answer.as_bytes()).await.unwrap();
        });
        let err = from_endpoint(&url, "a").await.unwrap_err();
        assert!(err.contains(r"elsewhere.example/\u{202e}aaa"), "{err}");
        assert!(err.len() < 8 * 1024, "{} bytes quoted", err.len());
    }

    #[test]
    fn a_refused_endpoint_is_refused_before_the_token_is_read() {
        let env = |name: &str| match name {
            "AWS_CONTAINER_CREDENTIALS_FULL_URI" => Some("http://evil.example/x".to_owned()),
            "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE" => Some("/nonexistent/token".to_owned()),
            _ => None,
        };
        let err = Source::choose(None, &env).unwrap_err();
        assert!(err.contains("evil.example") && !err.contains("/nonexistent/token"), "{err}");
    }
}
