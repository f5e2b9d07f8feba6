//! Hostile clients of `keyless webhook` (docs/reliability.md, "Hostile input on the webhook"): the
//! real binary over TLS, with small connection limits (32 in all, 8 per source address) so each
//! case fills them. Connections that stall their body, never start TLS, dribble their head or idle
//! on keep-alive give way to a new client, so a review is still answered; each then gets the
//! answer the deadlines give it. One source address cannot hold more than its cap. Names the API
//! server's client chose are logged escaped.
//!
//! No API server is needed for the listener: the reviews sent are of pods not opted in (allowed
//! before anything is read) and the kubeconfig points at a closed port (an opted-in pod's
//! ServiceAccount cannot be read, which is the failure the escaping test logs).
#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use keyless_test_support::clients::answer_json;
use keyless_test_support::process::free_port;
use keyless_test_support::wait::wait_until;
use keyless_test_support::webhook::{
    WebhookFiles, WebhookProcess, kubeconfig_of_no_api_server, pod_review, self_signed_pair,
};
use rustls_pki_types::ServerName;
use rustls_pki_types::pem::PemObject as _;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// The webhook's bounds in these tests (`--max-connections`, `--max-connections-per-peer`).
const MAX_CONNECTIONS: usize = 32;
const PER_PEER: usize = 8;
/// Guards against a hang; never a latency bound (each case's deadline is 5 or 10 s).
const GUARD: Duration = Duration::from_secs(60);

/// `keyless webhook` on loopback with a self-signed certificate for 127.0.0.1.
struct Webhook {
    running: WebhookProcess,
    ca_pem: String,
    _dir: tempfile::TempDir,
}

impl Webhook {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key, ca_pem) = self_signed_pair(dir.path());
        let kubeconfig = kubeconfig_of_no_api_server(dir.path());
        let files = WebhookFiles { cert: &cert, key: &key, kubeconfig: &kubeconfig };
        let (max, per_peer) = (MAX_CONNECTIONS.to_string(), PER_PEER.to_string());
        let extra = ["--max-connections", &max, "--max-connections-per-peer", &per_peer, "--aws-region", "eu-west-1"];
        // /healthz answers once both listeners are bound (the review listener is bound first).
        let running = WebhookProcess::start(free_port(), &files, &extra, "/healthz").await;
        Self { running, ca_pem, _dir: dir }
    }

    /// A TCP connection from `source` (any 127.0.0.0/8 address is this host's).
    async fn tcp_from(&self, source: Ipv4Addr) -> TcpStream {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(IpAddr::V4(source), 0)).unwrap();
        socket.connect(self.running.listen).await.unwrap()
    }

    /// A TLS connection from `source`, handshake done.
    async fn tls_from(&self, source: Ipv4Addr) -> TlsStream<TcpStream> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pki_types::CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        let config =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
        let tcp = self.tcp_from(source).await;
        let name = ServerName::IpAddress(Ipv4Addr::LOCALHOST.into());
        TlsConnector::from(Arc::new(config)).connect(name, tcp).await.unwrap()
    }

    /// A review of a pod not opted in, as the API server sends it, from 127.0.0.1 on a new
    /// connection: the answer must be exactly "allowed, unchanged" for that review.
    async fn review_is_answered(&self) {
        let http = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(self.ca_pem.as_bytes()).unwrap())
            .local_address(IpAddr::V4(Ipv4Addr::LOCALHOST))
            .pool_max_idle_per_host(0)
            .timeout(GUARD)
            .build()
            .unwrap();
        let uid = "4e1c5b0a-legit";
        let response = http
            .post(format!("https://{}/mutate", self.running.listen))
            .json(&review(uid, &pod(json!({ "name": "legit" }))))
            .send()
            .await
            .unwrap_or_else(|e| panic!("the review was not answered: {e}\n{}", self.running.process.logs()));
        assert_eq!(response.status(), 200);
        let answer: Value = response.json().await.unwrap();
        assert_eq!(answer["kind"], "AdmissionReview");
        assert_eq!(answer["response"]["uid"], uid);
        assert_eq!(answer["response"]["allowed"], true);
        assert!(answer["response"].get("patch").is_none(), "{answer}");
    }
}

/// The `n`-th hostile source address (127.0.0.2, 127.0.0.3, ...).
fn peer(n: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, 2 + u8::try_from(n).unwrap())
}

/// The limit's worth of connections made by `open`, `PER_PEER` from each of four addresses, in
/// the order opened (oldest first).
async fn fill<F, Fut, C>(open: F) -> Vec<C>
where
    F: Fn(Ipv4Addr) -> Fut,
    Fut: std::future::Future<Output = C>,
{
    let mut connections = Vec::new();
    for n in 0..MAX_CONNECTIONS {
        connections.push(open(peer(n / PER_PEER)).await);
    }
    connections
}

fn pod(metadata: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": { "serviceAccountName": "billing", "containers": [{ "name": "app", "image": "example/app:1" }] },
    })
}

fn review(uid: &str, pod: &Value) -> Value {
    pod_review(uid, "shop", pod)
}

/// Everything the server sends until it closes the connection (with or without TLS's
/// close_notify: a cut connection is an error to rustls, and its end all the same).
async fn until_closed(mut connection: impl AsyncRead + Unpin) -> String {
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(GUARD, connection.read(&mut buf)).await.expect("the server closes it") {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}

/// Whether the server still holds the connection open (nothing to read, no end), checked at once.
fn still_open(tcp: &TcpStream) -> bool {
    let mut buf = [0u8; 1];
    matches!(tcp.try_read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

#[tokio::test]
async fn stalled_bodies_give_way_to_a_review_and_are_answered_408_at_the_deadline() {
    let webhook = Webhook::start().await;
    // Each promises a 4 KiB review and sends one byte of it.
    let stalled = fill(|source| {
        let webhook = &webhook;
        async move {
            let mut tls = webhook.tls_from(source).await;
            let head = "POST /mutate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 4096\r\n\r\n{";
            tls.write_all(head.as_bytes()).await.unwrap();
            tls.flush().await.unwrap();
            tls
        }
    })
    .await;

    webhook.review_is_answered().await;

    let mut answers = Vec::new();
    for connection in stalled {
        answers.push(until_closed(connection).await);
    }
    assert_eq!(answers[0], "", "the oldest stalled body was displaced without an answer");
    for answer in &answers[1..] {
        assert!(answer.starts_with("HTTP/1.1 408"), "a stalled body at the deadline: {answer}");
        assert!(answer.contains("the AdmissionReview did not arrive in time"), "{answer}");
    }
}

#[tokio::test]
async fn silent_tls_clients_give_way_to_a_review_and_are_cut_at_the_handshake_deadline() {
    let webhook = Webhook::start().await;
    let silent = fill(|source| webhook.tcp_from(source)).await;

    webhook.review_is_answered().await;

    // The newest were not cut by a deadline to make room: the oldest was displaced.
    assert!(still_open(&silent[MAX_CONNECTIONS - 1]), "the newest silent connection was closed");
    for connection in silent {
        assert_eq!(until_closed(connection).await, "", "a silent client gets no answer");
    }
}

#[tokio::test]
async fn slowloris_heads_give_way_to_a_review_and_are_cut_at_the_header_deadline() {
    let webhook = Webhook::start().await;
    let slow = fill(|source| {
        let webhook = &webhook;
        async move {
            let mut tls = webhook.tls_from(source).await;
            tls.write_all(b"POST /mutate HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: a").await.unwrap();
            tls.flush().await.unwrap();
            tls
        }
    })
    .await;
    // Each keeps dribbling its head, a byte a second, and never ends it.
    let dribbling: Vec<_> = slow
        .into_iter()
        .map(|mut tls| {
            tokio::spawn(async move {
                while tls.write_all(b"a").await.is_ok() && tls.flush().await.is_ok() {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    let mut buf = [0u8; 1];
                    if let Ok(Ok(read)) = tokio::time::timeout(Duration::from_millis(1), tls.read(&mut buf)).await {
                        return if read == 0 { String::new() } else { String::from_utf8_lossy(&buf).into_owned() };
                    }
                }
                String::new()
            })
        })
        .collect();

    webhook.review_is_answered().await;

    for task in dribbling {
        let answer = tokio::time::timeout(GUARD, task).await.expect("cut in time").unwrap();
        assert_eq!(answer, "", "a slow head gets no answer, only a closed connection");
    }
}

#[tokio::test]
async fn idle_keep_alive_connections_give_way_to_a_review_and_close_after_the_idle_deadline() {
    let webhook = Webhook::start().await;
    // Each asks one review, reads its answer, and keeps the connection open.
    let idle = fill(|source| {
        let webhook = &webhook;
        async move {
            let mut tls = webhook.tls_from(source).await;
            let body = review("idle", &pod(json!({ "name": "idle" }))).to_string();
            let request = format!(
                "POST /mutate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            tls.write_all(request.as_bytes()).await.unwrap();
            tls.flush().await.unwrap();
            let answer = read_response(&mut tls).await;
            assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
            tls
        }
    })
    .await;

    webhook.review_is_answered().await;

    for connection in idle {
        assert_eq!(until_closed(connection).await, "", "an idle connection is closed without another answer");
    }
}

/// One response on a keep-alive connection: its head and its `Content-Length` body.
async fn read_response(tls: &mut TlsStream<TcpStream>) -> String {
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(GUARD, tls.read(&mut buf)).await.unwrap().unwrap();
        assert_ne!(n, 0, "closed before the whole response");
        received.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&received).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let length: usize = text[..end]
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
                .unwrap();
            if received.len() >= end + 4 + length {
                return text;
            }
        }
    }
}

#[tokio::test]
async fn one_source_address_holds_at_most_its_cap_and_displaces_only_its_own() {
    let webhook = Webhook::start().await;
    let mut others = Vec::new();
    for _ in 0..PER_PEER {
        others.push(webhook.tcp_from(peer(1)).await);
    }
    let mut greedy = Vec::new();
    for _ in 0..2 * PER_PEER {
        greedy.push(webhook.tcp_from(peer(0)).await);
    }

    webhook.review_is_answered().await;

    assert!(others.iter().all(still_open), "another address's connections were displaced");
    let (oldest, newest) = greedy.split_at(PER_PEER);
    assert!(newest.iter().all(still_open), "the address's newest connections were closed");
    for connection in oldest {
        let mut buf = [0u8; 1];
        connection.readable().await.unwrap();
        assert!(
            matches!(connection.try_read(&mut buf), Ok(0) | Err(_)),
            "a connection beyond the address's cap was kept"
        );
    }
}

#[tokio::test]
async fn the_admin_listener_cuts_a_silent_connection_at_its_header_deadline() {
    let webhook = Webhook::start().await;
    let silent = TcpStream::connect(webhook.running.admin).await.unwrap();
    assert!(still_open(&silent), "closed before its deadline");
    assert_eq!(until_closed(silent).await, "", "a silent client of the admin port gets no answer");
}

#[tokio::test]
async fn names_the_api_servers_client_chose_are_logged_escaped_on_one_line() {
    let webhook = Webhook::start().await;
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(webhook.ca_pem.as_bytes()).unwrap())
        .timeout(GUARD)
        .build()
        .unwrap();
    // An opted-in pod whose ServiceAccount cannot be read (no API server): refused, and logged.
    let generate_name = "web-\n2026-12-07T04:00:00Z ERROR FORGED line \u{1b}[31mred-";
    let metadata = json!({ "generateName": generate_name, "labels": { "keyless.dev/inject": "true" } });
    let mutate = http.post(format!("https://{}/mutate", webhook.running.listen));
    let answer = answer_json(mutate.json(&review("escape", &pod(metadata)))).await;
    assert_eq!(answer["response"]["allowed"], false, "{answer}");

    wait_until("the refusal's log line", GUARD, || async {
        webhook.running.process.logs().contains("keyless not injected")
    })
    .await;
    let logs = webhook.running.process.logs();
    let lines: Vec<&str> = logs.lines().filter(|l| l.contains("FORGED")).collect();
    assert_eq!(lines.len(), 1, "{logs}");
    assert!(lines[0].contains(r"web-\n2026-12-07T04:00:00Z ERROR FORGED line \u{1b}[31mred-"), "{logs}");
    assert!(!logs.contains('\u{1b}'), "an escape sequence reached the log: {logs}");
}
