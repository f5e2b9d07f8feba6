//! Hostile input (the security rules, docs/reliability.md, "bounded everything"). On the credential listener: oversized
//! request heads get 431 and the connection is closed, slowloris connections are cut off at the
//! header deadline, and a flood of idle connections beyond the limit is bounded; none of them
//! keeps a normal client from being served. In the token file: a FIFO, `/dev/zero` or a huge file
//! is reported while keyless keeps serving, with bounded memory, and still ends on SIGTERM; claims
//! cannot forge log lines. How fast normal clients are served meanwhile is a benchmark's question
//! (`scripts/bench hostile`, docs/benchmarks.md), not these tests': the figures they print are
//! for reading, not asserted.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use keyless_test_support::binary::keyless_bin;
use keyless_test_support::clients::{answer_text, status_of};
use keyless_test_support::clock::wall_clock;
use keyless_test_support::dev::Dev;
use keyless_test_support::emulate::EmulatorProcess;
use keyless_test_support::jwt::unsigned_jwt;
use keyless_test_support::kubelet::{mkfifo, replace_with, token_dir};
use keyless_test_support::load::Tally;
use keyless_test_support::sidecar::Sidecar;
use keyless_test_support::wait::{STARTUP_DEADLINE, wait_until};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// keyless's bounds (crates/keyless/src/serve.rs).
const MAX_CONNECTIONS: usize = 1024;
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
const TOKEN_PATH: &str = "/computeMetadata/v1/instance/service-accounts/default/token";

fn listen(dev: &Dev) -> SocketAddr {
    dev.var("GCE_METADATA_HOST").parse().unwrap()
}

/// `n` normal requests for a cached token, each on a new connection (a pooled one would not show
/// whether new clients get in); every one must succeed. Returns their latency figures.
async fn normal_requests(listen: SocketAddr, n: usize) -> Tally {
    let http = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut latencies = Vec::new();
    for _ in 0..n {
        let started = Instant::now();
        let response =
            http.get(format!("http://{listen}{TOKEN_PATH}")).header("Metadata-Flavor", "Google").send().await;
        let took = started.elapsed();
        let response = response.unwrap_or_else(|e| panic!("a normal client was not served: {e}"));
        assert_eq!(response.status(), 200);
        assert!(response.text().await.unwrap().contains("access_token"));
        latencies.push((took, false));
    }
    Tally::of_latencies(latencies)
}

/// How the server ended a connection [`raw`] opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// It closed the connection (FIN), or reset it (RST: it closed with bytes of ours unread).
    Closed,
    /// It kept the connection open, saying nothing more, for [`HANG`].
    Open,
}

/// How long [`raw`] waits for the server to end the connection: far beyond the moment keyless
/// answers, so `End::Open` means it never would.
const HANG: Duration = Duration::from_secs(30);

/// Sends `request` while reading the answer (the server may answer and close before all of an
/// oversized head is written), until the server ends the connection or [`HANG`] passes.
async fn raw(listen: SocketAddr, request: Vec<u8>) -> (String, End) {
    let (mut rx, mut tx) = TcpStream::connect(listen).await.unwrap().into_split();
    // The write half stays open while reading: closing it would end the request early.
    let writer = tokio::spawn(async move {
        let _ = tx.write_all(&request).await;
        tx
    });
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let end = loop {
        match tokio::time::timeout(HANG, rx.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => break End::Closed,
            Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
            Err(_) => break End::Open,
        }
    };
    drop(writer.await.unwrap());
    (String::from_utf8_lossy(&answer).into_owned(), end)
}

/// The status line of an answer.
fn status_line(answer: &str) -> &str {
    answer.lines().next().unwrap_or_default()
}

/// What keyless answers a request head over its bound, before it closes the connection.
const TOO_LARGE: (&str, End) = ("HTTP/1.1 431 Request Header Fields Too Large", End::Closed);

/// Server-side established connections on `port` (from /proc/net/tcp: local port, state 01).
fn established_on(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port = fields[1].rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok());
            local_port == Some(port) && fields[3] == "01"
        })
        .count()
}

#[tokio::test]
async fn oversized_request_heads_get_431_and_a_closed_connection_and_others_are_served() {
    let dev = Dev::start().await;
    let listen = listen(&dev);
    let big_header = |size: usize| {
        format!(
            "GET {TOKEN_PATH} HTTP/1.1\r\nHost: {listen}\r\nMetadata-Flavor: Google\r\nX-Big: {}\r\n\r\n",
            "a".repeat(size)
        )
        .into_bytes()
    };
    let many_headers = {
        let headers: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();
        format!("GET {TOKEN_PATH} HTTP/1.1\r\nHost: {listen}\r\nMetadata-Flavor: Google\r\n{headers}\r\n").into_bytes()
    };
    let answered = |(answer, end): (String, End)| (status_line(&answer).to_owned(), end);
    let too_large = (TOO_LARGE.0.to_owned(), TOO_LARGE.1);
    assert_eq!(answered(raw(listen, many_headers).await), too_large, "200 headers");
    assert_eq!(answered(raw(listen, big_header(20 * 1024)).await), too_large, "a 20 KiB header");
    // Just under the bound is still a normal request (answered; the connection stays open).
    let (answer, _) = raw_first_answer(listen, big_header(12 * 1024)).await;
    assert_eq!(status_line(&answer), "HTTP/1.1 200 OK", "a 12 KiB header");

    // 100 clients sending 1 MiB heads while normal clients keep asking.
    let attackers: Vec<_> = (0..100).map(|_| tokio::spawn(raw(listen, big_header(1024 * 1024)))).collect();
    let normal = normal_requests(listen, 100).await;
    let mut refused = 0;
    for attacker in attackers {
        assert_eq!(answered(attacker.await.unwrap()), too_large, "a 1 MiB head");
        refused += 1;
    }
    eprintln!(
        "hostile: {refused} clients sending 1 MiB heads were refused with 431; meanwhile normal clients: {normal}"
    );
}

/// Sends `request` and reads until the end of the first answer's head.
async fn raw_first_answer(listen: SocketAddr, request: Vec<u8>) -> (String, TcpStream) {
    let mut tcp = TcpStream::connect(listen).await.unwrap();
    tcp.write_all(&request).await.unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(HANG, tcp.read(&mut buf)).await.expect("an answer").unwrap();
        assert_ne!(n, 0, "closed without an answer: {}", String::from_utf8_lossy(&answer));
        answer.extend_from_slice(&buf[..n]);
    }
    (String::from_utf8_lossy(&answer).into_owned(), tcp)
}

#[tokio::test]
async fn slowloris_connections_are_cut_at_the_header_deadline_and_do_not_starve_others() {
    let dev = Dev::start().await;
    let listen = listen(&dev);
    const SLOW: usize = 200;
    let started = Instant::now();
    let mut slow = Vec::new();
    for _ in 0..SLOW {
        let mut tcp = TcpStream::connect(listen).await.unwrap();
        tcp.write_all(format!("GET {TOKEN_PATH} HTTP/1.1\r\nHost: {listen}\r\n").as_bytes()).await.unwrap();
        // One header line every 500 ms, never the blank line that ends the head: until cut off.
        slow.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            let mut buf = [0u8; 512];
            loop {
                tokio::select! {
                    read = tcp.read(&mut buf) => match read {
                        Ok(0) | Err(_) => return started.elapsed(),
                        Ok(_) => {}
                    },
                    _ = tick.tick() => if tcp.write_all(b"X-Slow: 1\r\n").await.is_err() {
                        return started.elapsed();
                    },
                }
            }
        }));
    }
    let normal = normal_requests(listen, 50).await;
    let open_meanwhile = slow.iter().filter(|t| !t.is_finished()).count();
    assert_eq!(open_meanwhile, SLOW, "slowloris connections were cut before their deadline");

    let slow_ref = &slow;
    wait_until("every slowloris connection to be cut off", HEADER_READ_TIMEOUT * 3, || async move {
        slow_ref.iter().all(|t| t.is_finished())
    })
    .await;
    let mut cut_after = Vec::new();
    for task in slow {
        cut_after.push(task.await.unwrap());
    }
    let latest = cut_after.iter().max().unwrap();
    let earliest = cut_after.iter().min().unwrap();
    eprintln!(
        "hostile: {SLOW} slowloris connections open; normal clients meanwhile: {normal}; the slow ones were cut \
         after {:.1}-{:.1} s",
        earliest.as_secs_f64(),
        latest.as_secs_f64()
    );
    assert!(*earliest >= HEADER_READ_TIMEOUT - Duration::from_secs(1), "cut before the deadline: {earliest:?}");
    assert!(*latest <= HEADER_READ_TIMEOUT + Duration::from_secs(10), "a slowloris connection lived {latest:?}");
}

/// The one route that reads a body (the GCP stand-in's token endpoint, a POST) is bounded in time
/// as a head is: a body that never arrives ends at the request deadline, with the route's 413 or
/// a closed connection, never a credential and never an open connection.
#[tokio::test]
async fn a_post_body_that_never_arrives_is_cut_at_the_request_deadline() {
    let dev = Dev::start().await;
    let listen = listen(&dev);
    let mut tcp = TcpStream::connect(listen).await.unwrap();
    let started = Instant::now();
    let head = format!(
        "POST /keyless/v1/external-account/token HTTP/1.1\r\nHost: {listen}\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\ngrant_type="
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    let ended = tokio::time::timeout(HEADER_READ_TIMEOUT * 3, async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let elapsed = started.elapsed();
    let answer = String::from_utf8_lossy(&answer);
    assert!(ended.is_ok(), "the connection outlived three request deadlines: {answer}");
    assert!(elapsed >= HEADER_READ_TIMEOUT - Duration::from_secs(1), "cut before the deadline: {elapsed:?}");
    assert!(answer.is_empty() || status_line(&answer).starts_with("HTTP/1.1 413"), "{answer}");
}

#[tokio::test]
async fn a_connection_flood_beyond_the_limit_is_bounded_and_new_clients_still_get_in() {
    let dev = Dev::start().await;
    let listen = listen(&dev);
    const FLOOD: usize = 1500;
    let mut flood = Vec::with_capacity(FLOOD);
    let started = Instant::now();
    for _ in 0..FLOOD {
        flood.push(TcpStream::connect(listen).await.unwrap());
    }
    let connected_in = started.elapsed();
    wait_until("keyless to shed the connections beyond its limit", Duration::from_secs(20), || async {
        established_on(listen.port()) <= MAX_CONNECTIONS
    })
    .await;
    let held = established_on(listen.port());
    let normal = normal_requests(listen, 50).await;
    assert_eq!(dev.readyz().await, 200, "the admin listener must not be affected");
    let held_after = established_on(listen.port());
    // The connections keyless displaced see the close.
    let mut closed = 0;
    for tcp in &mut flood {
        let mut byte = [0u8; 1];
        if let Ok(Ok(0) | Err(_)) = tokio::time::timeout(Duration::from_millis(1), tcp.read(&mut byte)).await {
            closed += 1;
        }
    }
    eprintln!(
        "hostile: {FLOOD} idle connections opened in {:.2} s; keyless holds {held} (limit {MAX_CONNECTIONS}), \
         {held_after} after 50 new clients, closed {closed} of the flood; normal clients meanwhile: {normal}",
        connected_in.as_secs_f64()
    );
    assert!(held <= MAX_CONNECTIONS && held_after <= MAX_CONNECTIONS, "{held} / {held_after} connections held");
    assert!(closed >= FLOOD - MAX_CONNECTIONS, "only {closed} flood connections were closed");
}

/// `keyless serve` with only AWS, its token at `token_file`, and an STS nobody listens on: the
/// token source is what these tests watch, exchanges simply fail.
fn token_file_sidecar(token_file: &Path) -> Sidecar {
    let toml = format!(
        "log = \"info\"\n\n[aws]\ntoken_file = {}\nrole_arn = \"arn:aws:iam::123456789012:role/app\"\n\
         region = \"us-east-1\"\nsts_endpoint = \"http://127.0.0.1:1\"\n",
        serde_json::Value::String(token_file.to_str().unwrap().to_owned())
    );
    Sidecar::spawn(&toml, &[])
}

async fn wait_healthy(sidecar: &Sidecar) {
    let url = sidecar.admin_url("/healthz");
    wait_until("/healthz to answer", STARTUP_DEADLINE, || async { status_of(&url).await == 200 }).await;
}

/// Peak resident memory of the process (VmHWM), in MiB.
fn peak_rss_mib(sidecar: &Sidecar) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", sidecar.process.pid().unwrap())).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib / 1024
}

/// SIGTERM; returns how long the process took to exit, measured on its exit rather than on a
/// poll of it (panics after `Process::stop`'s deadline).
async fn terminate(sidecar: Sidecar) -> Duration {
    let started = Instant::now();
    sidecar.process.stop().await;
    started.elapsed()
}

fn in_an_hour() -> std::time::SystemTime {
    wall_clock() + Duration::from_secs(3600)
}

/// A [`token_file_sidecar`] that has loaded a good token, and its token file.
async fn serving_a_good_token() -> (tempfile::TempDir, PathBuf, Sidecar) {
    let (root, dir) = token_dir();
    let token = dir.join("token");
    std::fs::write(&token, unsigned_jwt("system:serviceaccount:ns:app", in_an_hour())).unwrap();
    let sidecar = token_file_sidecar(&token);
    wait_healthy(&sidecar).await;
    sidecar.wait_logged("subject token loaded").await;
    (root, token, sidecar)
}

const NOT_A_FIFO: &str = "is a FIFO (named pipe), not a regular file";

#[tokio::test]
async fn a_fifo_token_file_at_start_still_serves_healthz_and_sigterm_ends_it() {
    let (_root, dir) = token_dir();
    let token = dir.join("token");
    mkfifo(&token);
    let sidecar = token_file_sidecar(&token);
    wait_healthy(&sidecar).await;
    sidecar.wait_logged(NOT_A_FIFO).await;
    let took = terminate(sidecar).await;
    eprintln!("hostile: FIFO token file at start: /healthz answered, SIGTERM ended keyless in {took:.2?}");
    assert!(took < Duration::from_secs(5), "SIGTERM took {took:?}");
}

#[tokio::test]
async fn a_fifo_swapped_in_at_run_time_is_reported_and_sigterm_still_ends_keyless() {
    let (_root, token, sidecar) = serving_a_good_token().await;
    replace_with(&token, mkfifo);
    sidecar.wait_logged(NOT_A_FIFO).await;
    assert!(sidecar.logs().contains("keeping_last_good_token=true"), "{}", sidecar.logs());
    let took = terminate(sidecar).await;
    eprintln!("hostile: FIFO swapped in at run time: reported, SIGTERM ended keyless in {took:.2?}");
    assert!(took < Duration::from_secs(5), "SIGTERM took {took:?}");
}

#[tokio::test]
async fn dev_zero_and_huge_token_files_are_reported_and_memory_stays_bounded() {
    const BOUND_MIB: u64 = 200;
    let (_root, token, sidecar) = serving_a_good_token().await;
    let before = peak_rss_mib(&sidecar);

    replace_with(&token, |p| std::os::unix::fs::symlink("/dev/zero", p).unwrap());
    sidecar.wait_logged("is a character device, not a regular file").await;
    let after_zero = peak_rss_mib(&sidecar);

    // Sparse: a gigabyte for a reader that trusts the file, nothing on disk.
    replace_with(&token, |p| std::fs::File::create(p).unwrap().set_len(1 << 30).unwrap());
    sidecar.wait_logged("is larger than 65536 bytes").await;
    let after_huge = peak_rss_mib(&sidecar);

    assert_eq!(status_of(&sidecar.admin_url("/healthz")).await, 200);
    eprintln!(
        "hostile: peak RSS {before} MiB before, {after_zero} MiB after a /dev/zero symlink, {after_huge} MiB after a \
         1 GiB token file (bound {BOUND_MIB} MiB)"
    );
    assert!(after_huge < BOUND_MIB, "peak RSS {after_huge} MiB");
    terminate(sidecar).await;
}

#[tokio::test]
async fn claims_with_line_breaks_and_escapes_forge_no_log_line() {
    let (_root, dir) = token_dir();
    let token = dir.join("token");
    let forged = "2026-01-01T00:00:00.000000Z  INFO keyless: forged";
    // JSON escapes: the claims hold real CR, LF and ESC characters.
    let jwt = unsigned_jwt(&format!("app\\r\\n{forged}\\u001b[2K"), in_an_hour());
    std::fs::write(&token, &jwt).unwrap();
    let sidecar = token_file_sidecar(&token);
    sidecar.wait_logged("subject token loaded").await;
    // The exchange log line carries the subject too.
    sidecar.wait_logged("outcome=").await;
    let logs = sidecar.logs();
    let check = tokio::process::Command::new(keyless_bin())
        .args(["check", "--config", sidecar.config.as_ref().unwrap().to_str().unwrap()])
        .env_clear()
        .output();
    let check = tokio::time::timeout(STARTUP_DEADLINE, check).await.unwrap().unwrap();
    terminate(sidecar).await;

    let report = String::from_utf8_lossy(&check.stdout).into_owned() + &String::from_utf8_lossy(&check.stderr);
    for (what, text) in [("the log", &logs), ("keyless check", &report)] {
        assert!(!text.contains('\u{1b}') && !text.contains('\r'), "{what} holds a raw ESC or CR: {text:?}");
        assert!(!text.lines().any(|l| l.starts_with(forged)), "{what} has a forged line:\n{text}");
        assert!(
            text.contains(&format!(r"app\r\n{forged}\u{{1b}}[2K")),
            "{what} does not show the escaped sub:\n{text}"
        );
    }
}

/// An unsigned JWT for AWS with `iss` as its issuer.
fn jwt_with_issuer(iss: &str, exp: std::time::SystemTime) -> String {
    use base64::Engine as _;
    let encode = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let exp = exp.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let claims = serde_json::json!({"iss": iss, "sub": "system:serviceaccount:ns:app", "aud": ["sts.amazonaws.com"], "exp": exp});
    format!("{}.{}.{}", encode(r#"{"alg":"RS256","kid":"test"}"#), encode(&claims.to_string()), encode("signature"))
}

#[tokio::test]
async fn an_sts_error_echoing_a_forged_issuer_forges_no_log_or_readyz_line() {
    // AWS STS answers an unknown issuer with "No OpenIDConnect provider found in your account for
    // ISS", the issuer as the token has it; the emulator does the same.
    let emulator = EmulatorProcess::start().await;
    let (_root, dir) = token_dir();
    let token = dir.join("token");
    let forged = "2026-01-01T00:00:00.000000Z  INFO keyless: forged";
    std::fs::write(&token, jwt_with_issuer(&format!("https://issuer.example/\n{forged}"), in_an_hour())).unwrap();
    let ids = emulator.control.identities().await;
    let text = |s: &str| serde_json::Value::String(s.to_owned()).to_string();
    let toml = format!(
        "log = \"info\"\n\n[aws]\ntoken_file = {}\nrole_arn = {}\nregion = \"us-east-1\"\nsts_endpoint = {}\n\
         ca_file = {}\n",
        text(token.to_str().unwrap()),
        text(ids["aws_role_arn"].as_str().unwrap()),
        text(&emulator.url),
        text(emulator.ca.to_str().unwrap()),
    );
    let sidecar = Sidecar::spawn(&toml, &[]);
    const ECHO: &str = "No OpenIDConnect provider found in your account for";
    sidecar.wait_logged(ECHO).await;
    let readyz = answer_text(keyless_test_support::clients::loopback().get(sidecar.admin_url("/readyz"))).await;
    let logs = sidecar.logs();
    terminate(sidecar).await;

    let escaped = format!(r"https://issuer.example/\n{forged}");
    for (what, text) in [("the log", &logs), ("/readyz", &readyz)] {
        assert!(!text.lines().any(|l| l.starts_with(forged)), "{what} has a forged line:\n{text}");
        let echoes: Vec<&str> = text.lines().filter(|l| l.contains(ECHO)).collect();
        assert!(!echoes.is_empty(), "{what} does not show STS's answer:\n{text}");
        for line in echoes {
            assert!(
                line.contains(&format!("{ECHO} {escaped}")),
                "{what}: STS's answer is not one escaped line: {line}"
            );
        }
    }
}
