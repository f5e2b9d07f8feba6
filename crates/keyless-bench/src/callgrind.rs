//! Instructions per request, counted by valgrind's callgrind (keyless's quality bars, docs/benchmarks.md): deterministic on a
//! shared machine, where req/s is not.
//!
//! `keyless serve` and, per endpoint, the bare server run under `valgrind --tool=callgrind
//! --instr-atstart=no` (start-up runs uninstrumented: fast, and never counted). On one keep-alive
//! connection per endpoint: warm-up requests (the credential is cached, lazy inits and first-use
//! renderings are done, the connection's buffers have grown), then `callgrind_control -z` zeroes
//! the counters, exactly N requests are sent one after the other, each answered 200 with the
//! expected length before the next, and `callgrind_control -d` dumps the counters. Instructions per
//! request = the dump's `totals` (user-space instructions of every thread of the process) / N.
//! The connection's accept and the process's start-up are outside the window; what the window
//! holds besides the N requests is what the process does by itself for those seconds (timers),
//! measured by an empty window and printed with the results.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper::StatusCode;
use tokio::process::Command;

use crate::BenchError;
use crate::bench::{BareServer, Stack, client_secrets, default_keyless};
use crate::endpoints::{self, Endpoint};
use crate::load::{self, Target};
use crate::report::{self, CallgrindResult};
use crate::stack::{Launcher, Sidecar};

/// Start-up under valgrind (uninstrumented) takes seconds; a loaded machine makes it minutes.
const START_UNDER_VALGRIND: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, clap::Args)]
pub struct CallgrindOptions {
    /// The keyless binary to measure [default: `keyless` beside this binary]. Build with
    /// `CARGO_PROFILE_RELEASE_STRIP=false` for `callgrind_annotate` to name functions.
    #[arg(long)]
    pub keyless: Option<PathBuf>,
    /// The keyless binary that runs `keyless emulate` (not measured) [default: --keyless].
    #[arg(long)]
    pub emulator: Option<PathBuf>,
    /// Requests counted per endpoint and server, one after the other on one connection.
    #[arg(long, default_value_t = 2000)]
    pub requests: usize,
    /// Requests on the same connection before counting starts.
    #[arg(long, default_value_t = 200)]
    pub warmup_requests: usize,
    /// Endpoints to measure (all five when absent).
    #[arg(long, value_delimiter = ',', value_parser = endpoints::parser())]
    pub only: Vec<Endpoint>,
    /// Where callgrind writes its dumps and logs (one dump per endpoint and server, for
    /// `callgrind_annotate`).
    #[arg(long, default_value = "target/callgrind")]
    pub out_dir: PathBuf,
    /// The valgrind executable.
    #[arg(long, default_value = "valgrind")]
    pub valgrind: PathBuf,
}

pub async fn callgrind(opts: CallgrindOptions) -> Result<(), BenchError> {
    let version = valgrind_version(&opts.valgrind).await?;
    let keyless = opts.keyless.clone().unwrap_or_else(default_keyless);
    std::fs::create_dir_all(&opts.out_dir).map_err(|e| BenchError::File { path: opts.out_dir.clone(), source: e })?;
    let out_dir =
        std::fs::canonicalize(&opts.out_dir).map_err(|e| BenchError::File { path: opts.out_dir.clone(), source: e })?;
    report::callgrind_header(&opts, &keyless, &version);

    let stack = Stack::prepare(opts.emulator.as_deref().unwrap_or(&keyless)).await?;
    let Stack { emulator, config, auth_file, identity_header, .. } = &stack;
    let env = stack.env();

    let log = out_dir.join("keyless.log");
    let (sidecar, cold) =
        Sidecar::start(&under_callgrind(&opts, &out_dir, "keyless"), &keyless, config, &env, &log).await?;
    report::progress(&format!(
        "keyless serve under callgrind is PID {}, ready after {} (uninstrumented)",
        sidecar.pid,
        report::ms(cold.ready)
    ));
    let secrets = client_secrets(emulator, &sidecar, auth_file, identity_header).await?;
    let keyless_counter = Counter::new(sidecar.pid, &out_dir, "keyless");
    keyless_counter.control(&["--instr=on"]).await?;

    let selected: Vec<Endpoint> = if opts.only.is_empty() { Endpoint::ALL.to_vec() } else { opts.only.clone() };
    let mut results = Vec::new();
    for endpoint in selected {
        let target = endpoints::target(endpoint, sidecar.listen, &secrets);
        let keyless = keyless_counter.count(&target, &opts).await?;
        let body_len = keyless.body_len;
        report::progress(&format!(
            "{}: keyless {:.0} instr/req ({body_len} B body; empty window {} instr; {})",
            endpoint.label(),
            keyless.per_request,
            keyless.idle,
            keyless.dump.display()
        ));
        let bare_server =
            BareServer::start(&under_callgrind(&opts, &out_dir, &format!("bare-{body_len}")), body_len).await?;
        let bare_counter = Counter::new(bare_server.pid, &out_dir, &format!("bare-{body_len}"));
        bare_counter.control(&["--instr=on"]).await?;
        let bare = bare_counter.count(&target.at(bare_server.addr), &opts).await?;
        report::progress(&format!(
            "{}: bare {:.0} instr/req (empty window {} instr; {})",
            endpoint.label(),
            bare.per_request,
            bare.idle,
            bare.dump.display()
        ));
        drop(bare_server);
        results.push(CallgrindResult { endpoint, body_len, keyless: keyless.per_request, bare: bare.per_request });
    }
    report::callgrind_table(&opts, &results);
    sidecar.stop().await;
    Ok(())
}

fn under_callgrind(opts: &CallgrindOptions, out_dir: &Path, name: &str) -> Launcher {
    let arg = |s: String| OsString::from(s);
    Launcher {
        prefix: vec![
            opts.valgrind.clone().into_os_string(),
            arg("--tool=callgrind".into()),
            // Start-up is not measured: run it without instrumentation (several times faster).
            arg("--instr-atstart=no".into()),
            arg(format!("--callgrind-out-file={}", out_dir.join(format!("{name}.%p")).display())),
            arg(format!("--log-file={}", out_dir.join(format!("{name}.%p.valgrind.log")).display())),
        ],
        deadline: Some(START_UNDER_VALGRIND),
    }
}

async fn valgrind_version(valgrind: &Path) -> Result<String, BenchError> {
    let output = Command::new(valgrind).arg("--version").output().await.map_err(|e| BenchError::Spawn {
        path: valgrind.to_owned(),
        source: std::io::Error::new(e.kind(), format!("{e} (install valgrind: apt-get install valgrind)")),
    })?;
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// One measured window.
struct Counted {
    body_len: usize,
    per_request: f64,
    /// Instructions of a window without requests (what the process does by itself meanwhile).
    idle: u64,
    /// The dump of the N-request window.
    dump: PathBuf,
}

/// `callgrind_control` for one process under callgrind.
struct Counter {
    pid: u32,
    out_dir: PathBuf,
    name: String,
}

impl Counter {
    fn new(pid: u32, out_dir: &Path, name: &str) -> Self {
        Self { pid, out_dir: out_dir.to_owned(), name: name.to_owned() }
    }

    async fn control(&self, args: &[&str]) -> Result<(), BenchError> {
        let output = Command::new("callgrind_control")
            .args(args)
            .arg(self.pid.to_string())
            .output()
            .await
            .map_err(|e| BenchError::Spawn { path: PathBuf::from("callgrind_control"), source: e })?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() || !stdout.contains("OK") {
            return Err(BenchError::Request(format!(
                "callgrind_control {} {} failed: {stdout}{}",
                args.join(" "),
                self.pid,
                String::from_utf8_lossy(&output.stderr)
            )));
        }
        Ok(())
    }

    /// Dumps the counters since the last zero; the instructions and the dump's path.
    async fn dump(&self) -> Result<(u64, PathBuf), BenchError> {
        let before = self.latest_dump()?.map_or(0, |(n, _)| n);
        self.control(&["--dump"]).await?;
        match self.latest_dump()? {
            Some((n, path)) if n > before => Ok((totals(&path)?, path)),
            _ => Err(BenchError::Request(format!("callgrind wrote no dump for PID {}", self.pid))),
        }
    }

    /// The highest-numbered dump of this process (`NAME.PID.N`).
    fn latest_dump(&self) -> Result<Option<(u64, PathBuf)>, BenchError> {
        let prefix = format!("{}.{}.", self.name, self.pid);
        let entries =
            std::fs::read_dir(&self.out_dir).map_err(|e| BenchError::File { path: self.out_dir.clone(), source: e })?;
        Ok(entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let n = name.strip_prefix(&prefix)?.parse::<u64>().ok()?;
                Some((n, e.path()))
            })
            .max_by_key(|(n, _)| *n))
    }

    /// Warm-up, an empty window, then the window of `opts.requests` requests.
    async fn count(&self, target: &Target, opts: &CallgrindOptions) -> Result<Counted, BenchError> {
        let mut sender = load::connect(target.addr).await?;
        let body_len = match load::send(&mut sender, target).await? {
            (StatusCode::OK, len) => len,
            (status, _) => return Err(BenchError::Request(format!("{} answered {status}", target.path_and_query))),
        };
        exactly(&mut sender, target, body_len, opts.warmup_requests).await?;
        self.control(&["--zero"]).await?;
        let (idle, _) = self.dump().await?;
        self.control(&["--zero"]).await?;
        exactly(&mut sender, target, body_len, opts.requests).await?;
        let (instructions, dump) = self.dump().await?;
        Ok(Counted { body_len, per_request: instructions as f64 / opts.requests.max(1) as f64, idle, dump })
    }
}

/// `n` requests, one after the other; each must be answered 200 with `body_len` bytes.
async fn exactly(
    sender: &mut hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>>,
    target: &Target,
    body_len: usize,
    n: usize,
) -> Result<(), BenchError> {
    for _ in 0..n {
        match load::send(sender, target).await? {
            (StatusCode::OK, len) if len == body_len => {}
            (status, len) => {
                return Err(BenchError::Request(format!(
                    "{} answered {status} with {len} bytes (expected 200 with {body_len})",
                    target.path_and_query
                )));
            }
        }
    }
    Ok(())
}

/// The `totals:` (or, failing that, `summary:`) line of a callgrind dump: its instruction count.
fn totals(dump: &Path) -> Result<u64, BenchError> {
    let text = std::fs::read_to_string(dump).map_err(|e| BenchError::File { path: dump.to_owned(), source: e })?;
    let field = |name: &str| {
        text.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
    };
    field("totals:").or_else(|| field("summary:")).ok_or_else(|| BenchError::File {
        path: dump.to_owned(),
        source: std::io::Error::other("no totals: line (not a callgrind dump?)"),
    })
}
