//! `node-memory`: what `keyless node` holds in memory, measured (issue 28 point 6; the memory
//! figures of `keyless-bench fleet-node`). Run by hand, never as a test:
//!
//! ```sh
//! ./scripts/kube   # once: etcd, kube-apiserver, kubectl into target/kube/bin (or KEYLESS_TEST_KUBE_BIN)
//! cargo run -p keyless-bench --example node-memory -- --accounts 1,10,50 --pods 1,5,20
//! ```
//!
//! An example of keyless-bench, not one of its subcommands: it runs the real parts exactly as
//! `tests/tests/node_agent.rs` does, through keyless-test-support (a real etcd + kube-apiserver,
//! `keyless emulate`, the `keyless` binary cargo builds for the tests), and keyless-test-support
//! may only ever be a dev-dependency (its `tests/dev_only.rs`), which examples may use and the
//! `keyless-bench` binary may not.
//!
//! One cluster and one emulator; per ServiceAccount count S a Node object of its own and a fresh
//! `keyless node` for it (the chart's flags, as node_agent.rs starts it). Its `VmRSS` and `RssAnon`
//! (`/proc/PID/status`) are read ready with no pod, then after each pod count P: S ServiceAccounts
//! (annotated for AWS, Google and Azure identities) with P Running pods each on its node (pods
//! created as API objects, their status patched to Running with a 127.0.0.0/8 podIP, no kubelet),
//! and one request per ServiceAccount and cloud from one of its pods' address, so each set of
//! providers has started and fetched its credentials once.
//!
//! The emulator trusts two ServiceAccounts only (`keyless-dev` and `keyless-dev-other` of
//! `default`: DevIdentities::trusts_subject). The others' sets start the same providers with the
//! same identities, but their exchanges are refused (403) and their caches hold the refusal and
//! retry, not a credential: the report counts how many sets hold credentials.
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::print_stdout, clippy::print_stderr)]

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use clap::Parser;
use keyless_test_support::emulate::EmulatorProcess;
use keyless_test_support::kube::{self, Cluster};
use keyless_test_support::node_agent::{self, NodeAgent};
use keyless_test_support::process::Process;
use keyless_test_support::sidecar::Sidecar;
use keyless_test_support::wait::{STARTUP_DEADLINE, wait_until};
use serde_json::{Value, json};

const NAMESPACE: &str = "default";
/// The audience of the pods' keyless node token (keyless node's default).
const NODE_AUDIENCE: &str = "keyless.dev/node";
const AZURE_RESOURCE: &str = "https://management.azure.com";
/// The cluster admin's bearer token (keyless-test-support's kube.rs; loopback only).
const ADMIN_TOKEN: &str = "keyless-test-admin-token";
/// The memory is read once it settled (the background tasks the first requests started: token
/// binding, refresh scheduling): two readings this far apart whose `RssAnon` differs by at most
/// [`SETTLED_KIB`], within [`SETTLE_DEADLINE`] (else the last reading, said on stderr).
const SETTLE_STEP: Duration = Duration::from_millis(500);
const SETTLED_KIB: u64 = 16;
const SETTLE_DEADLINE: Duration = Duration::from_secs(30);

#[derive(Debug, Parser)]
#[command(name = "node-memory", about = "keyless node's VmRSS and RssAnon by ServiceAccounts and pods on its node")]
struct Options {
    /// ServiceAccount counts S (each a fresh keyless node on a node of its own).
    #[arg(long, value_delimiter = ',', default_value = "1,10,50")]
    accounts: Vec<usize>,
    /// Pods per ServiceAccount P, in increasing order (pods are added to reach each).
    #[arg(long, value_delimiter = ',', default_value = "1,5,20")]
    pods: Vec<usize>,
}

/// One reading.
#[derive(Debug, Clone, Copy)]
struct Reading {
    accounts: usize,
    pods_each: usize,
    rss_kib: u64,
    anon_kib: u64,
    /// Sets whose three requests were answered 200 (credentials held).
    holding: usize,
}

fn main() {
    let options = Options::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(run(options));
}

/// The API server, as its admin, over reqwest (a kubectl process per pod would take minutes for
/// a thousand pods).
struct Api {
    cluster: Cluster,
    client: reqwest::Client,
}

impl Api {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.cluster.server)
    }

    async fn send(&self, request: reqwest::RequestBuilder, what: &str) -> Value {
        let response = request.bearer_auth(ADMIN_TOKEN).send().await.unwrap_or_else(|e| panic!("{what}: {e}"));
        let status = response.status();
        let body = response.text().await.unwrap();
        assert!(status.is_success(), "{what}: {status}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    /// Pod `name` of `account` on `node`, Running at `ip`; its UID.
    async fn pod(&self, node: &str, name: &str, account: &str, ip: &str) -> String {
        let pod = node_agent::pod_manifest(NAMESPACE, node, name, account, false);
        let path = format!("/api/v1/namespaces/{NAMESPACE}/pods");
        let created = self.send(self.client.post(self.url(&path)).json(&pod), "creating a pod").await;
        let status = node_agent::pod_status("Running", ip);
        let request = self
            .client
            .patch(self.url(&format!("{path}/{name}/status")))
            .header("content-type", "application/merge-patch+json")
            .body(status.to_string());
        self.send(request, "patching a pod's status").await;
        created["metadata"]["uid"].as_str().unwrap().to_owned()
    }

    /// The pod's keyless node token (what the kubelet projects for it): bound to the pod.
    async fn pod_token(&self, name: &str, account: &str, uid: &str) -> String {
        let request = json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "audiences": [NODE_AUDIENCE],
                "expirationSeconds": 600,
                "boundObjectRef": { "kind": "Pod", "apiVersion": "v1", "name": name, "uid": uid },
            },
        });
        let path = format!("/api/v1/namespaces/{NAMESPACE}/serviceaccounts/{account}/token");
        let answer = self.send(self.client.post(self.url(&path)).json(&request), "a TokenRequest").await;
        answer["status"]["token"].as_str().unwrap().to_owned()
    }
}

async fn run(options: Options) {
    let binaries = kube::find_binaries().unwrap_or_else(|missing| panic!("{missing:?}"));
    let cluster = Cluster::start_with(binaries).await;
    let emulator = EmulatorProcess::start().await;
    emulator.control.trust_issuer(cluster.issuer(), &cluster.ca_pem_text()).await;
    let ids = emulator.control.identities().await;
    let client = keyless_test_support::clients::trusting(&cluster.ca_pem);
    let api = Api { cluster, client };

    let most = options.accounts.iter().copied().max().unwrap_or(0);
    let accounts = account_names(&ids, most);
    annotate(&api.cluster, &ids, &accounts).await;

    // The same build's sidecar, ready (its three credentials held), for the comparison with run P1's
    // release sidecar (docs/benchmarks.md) and with the node agent.
    let sidecar = Sidecar::all_clouds(&emulator, &emulator.url, "", "info").await;
    let reference = settled(sidecar.process.pid().unwrap(), 0, 0, 1).await;
    sidecar.process.stop().await;
    eprintln!("sidecar: {reference:?}");

    let mut readings = Vec::new();
    for (run, &count) in options.accounts.iter().enumerate() {
        let node = format!("node-memory-{count}");
        let object = json!({ "apiVersion": "v1", "kind": "Node", "metadata": { "name": node } });
        api.cluster.kubectl_with_input(&["create", "-f", "-"], Some(&object.to_string())).await;
        let agent = Agent::start(&api.cluster, &emulator, &node).await;
        let pid = agent.process.pid().unwrap();
        readings.push(read(pid, count, 0, 0));
        eprintln!("S={count} P=0: {:?}", readings.last().unwrap());
        // Per ServiceAccount: its pods' addresses, and the first pod's name and UID.
        let mut pods: Vec<Vec<String>> = vec![Vec::new(); count];
        let mut first: Vec<(String, String)> = Vec::new();
        for &each in &options.pods {
            for (a, account) in accounts.iter().take(count).enumerate() {
                while pods[a].len() < each {
                    let p = pods[a].len();
                    // 127.R.A.P+10: unique per run, ServiceAccount and pod.
                    let ip = format!("127.{}.{}.{}", run + 10, a, p + 10);
                    let name = format!("{node}-{a}-{p}");
                    let uid = api.pod(&node, &name, account, &ip).await;
                    if p == 0 {
                        first.push((name, uid));
                    }
                    pods[a].push(ip);
                }
            }
            wait_until("keyless node to serve every ServiceAccount", STARTUP_DEADLINE, || async {
                agent.served().await.lines().count() == count
            })
            .await;
            let mut holding = 0;
            for (a, account) in accounts.iter().take(count).enumerate() {
                let (name, uid) = &first[a];
                let token = api.pod_token(name, account, uid).await;
                holding += usize::from(agent.fetch(&pods[a][0], &token).await);
            }
            readings.push(settled(pid, count, each, holding).await);
            eprintln!("S={count} P={each}: {:?}", readings.last().unwrap());
        }
        agent.process.stop().await;
    }
    report(&readings);
    println!(
        "keyless serve (a sidecar, three clouds, credentials held), same build: VmRSS {:.1} MiB, RssAnon {:.1} MiB",
        reference.rss_kib as f64 / 1024.0,
        reference.anon_kib as f64 / 1024.0
    );
    emulator.stop().await;
    api.cluster.stop().await;
}

/// `count` ServiceAccount names: the two the emulator trusts first, then `bench-N`.
fn account_names(ids: &Value, count: usize) -> Vec<String> {
    let trusted = ["subject", "other_subject"].map(|k| ids[k].as_str().unwrap().rsplit(':').next().unwrap().to_owned());
    trusted.into_iter().chain((2..).map(|n| format!("bench-{n}"))).take(count).collect()
}

/// Creates the ServiceAccounts with the annotations node_agent.rs gives its two, alternating the
/// emulator's first and second identities (keyless-test-support's node_agent).
async fn annotate(cluster: &Cluster, ids: &Value, accounts: &[String]) {
    for (n, account) in accounts.iter().enumerate() {
        let named = node_agent::identities(ids, n);
        node_agent::annotated_service_account(cluster, ids, NAMESPACE, account, &named).await;
    }
}

/// `keyless node` for one node, started as node_agent.rs starts it (keyless-test-support's
/// node_agent: the chart's flags).
struct Agent {
    process: Process,
    listen: SocketAddr,
    admin: SocketAddr,
    _state: tempfile::TempDir,
}

impl Agent {
    async fn start(cluster: &Cluster, emulator: &EmulatorProcess, node: &str) -> Self {
        let NodeAgent { process, listen, admin, state } =
            NodeAgent::start(emulator, node, &cluster.kubeconfig, "info", &[]).await;
        Self { process, listen, admin, _state: state }
    }

    async fn served(&self) -> String {
        let url = format!("http://{}/service-accounts", self.admin);
        let client = keyless_test_support::clients::loopback();
        match client.get(url).send().await {
            Ok(response) => response.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// One request per cloud from `ip` (the pod presenting `token` to the AWS endpoint): whether
    /// all three were answered with credentials.
    async fn fetch(&self, ip: &str, token: &str) -> bool {
        let source: IpAddr = ip.parse().unwrap();
        let client = reqwest::Client::builder().local_address(source).no_proxy().build().unwrap();
        let base = format!("http://{}", self.listen);
        let requests = [
            client.get(format!("{base}/v1/credentials")).header("authorization", token),
            client
                .get(format!("{base}/computeMetadata/v1/instance/service-accounts/default/token"))
                .header("metadata-flavor", "Google"),
            client
                .get(format!("{base}/metadata/identity/oauth2/token?api-version=2018-02-01&resource={AZURE_RESOURCE}"))
                .header("metadata", "true"),
        ];
        let mut all = true;
        for request in requests {
            let status = match request.timeout(Duration::from_secs(60)).send().await {
                Ok(response) => response.status().as_u16(),
                Err(e) => panic!("a request from {ip}: {e}\n{}", self.process.logs()),
            };
            all &= status == 200;
        }
        all
    }
}

/// [`read`] once the process's memory stopped moving (see [`SETTLE_STEP`]).
async fn settled(pid: u32, accounts: usize, pods_each: usize, holding: usize) -> Reading {
    let deadline = tokio::time::Instant::now() + SETTLE_DEADLINE;
    let mut last = read(pid, accounts, pods_each, holding);
    loop {
        tokio::time::sleep(SETTLE_STEP).await;
        let now = read(pid, accounts, pods_each, holding);
        if now.anon_kib.abs_diff(last.anon_kib) <= SETTLED_KIB {
            return now;
        }
        if tokio::time::Instant::now() >= deadline {
            eprintln!("the memory did not settle within {SETTLE_DEADLINE:?}: the last reading");
            return now;
        }
        last = now;
    }
}

fn read(pid: u32, accounts: usize, pods_each: usize, holding: usize) -> Reading {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u64 {
        let line = status.lines().find_map(|l| l.strip_prefix(name)).unwrap_or_else(|| panic!("no {name}"));
        line.trim().trim_end_matches("kB").trim().parse().unwrap()
    };
    Reading { accounts, pods_each, rss_kib: field("VmRSS:"), anon_kib: field("RssAnon:"), holding }
}

/// The table, then the fit `memory = base + per_set * S + per_pod * S * P` over the readings with
/// pods (least squares), for VmRSS and for RssAnon.
fn report(readings: &[Reading]) {
    println!("| ServiceAccounts S | pods each P | pods | sets holding credentials | VmRSS (MiB) | RssAnon (MiB) |");
    println!("|---|---|---|---|---|---|");
    for r in readings {
        println!(
            "| {} | {} | {} | {} | {:.1} | {:.1} |",
            r.accounts,
            r.pods_each,
            r.accounts * r.pods_each,
            r.holding,
            r.rss_kib as f64 / 1024.0,
            r.anon_kib as f64 / 1024.0
        );
    }
    slopes(readings);
    let with_pods: Vec<&Reading> = readings.iter().filter(|r| r.pods_each > 0).collect();
    let idle: Vec<&Reading> = readings.iter().filter(|r| r.pods_each == 0).collect();
    for (what, value) in [
        ("VmRSS", (|r: &Reading| r.rss_kib as f64) as fn(&Reading) -> f64),
        ("RssAnon", |r: &Reading| r.anon_kib as f64),
    ] {
        let base = idle.iter().map(|r| value(r)).sum::<f64>() / idle.len().max(1) as f64;
        let rows: Vec<[f64; 3]> =
            with_pods.iter().map(|r| [1.0, r.accounts as f64, (r.accounts * r.pods_each) as f64]).collect();
        let ys: Vec<f64> = with_pods.iter().map(|r| value(r)).collect();
        match least_squares(&rows, &ys) {
            Some([fit_base, per_set, per_pod]) => println!(
                "{what}: idle {:.1} MiB (mean of {} agents with no pod); fit over {} readings: base {:.1} MiB, \
                 per ServiceAccount set {:.0} KiB ({:.2} MiB), per pod {:.1} KiB",
                base / 1024.0,
                idle.len(),
                rows.len(),
                fit_base / 1024.0,
                per_set,
                per_set / 1024.0,
                per_pod
            ),
            None => println!("{what}: idle {:.1} MiB; too few readings with pods for a fit", base / 1024.0),
        }
    }
}

/// The slopes read directly, in `RssAnon` (VmRSS adds the file pages a process happens to have
/// faulted in, which differ by about half a MiB between two processes of the same binary): per pod
/// over P at each S, and per set over S at the least P (less that many pods at the per-pod slope of
/// the larger S).
fn slopes(readings: &[Reading]) {
    let anon =
        |s: usize, p: usize| readings.iter().find(|r| r.accounts == s && r.pods_each == p).map(|r| r.anon_kib as f64);
    let mut counts: Vec<usize> = readings.iter().map(|r| r.accounts).collect();
    counts.sort_unstable();
    counts.dedup();
    let least = readings.iter().map(|r| r.pods_each).filter(|&p| p > 0).min().unwrap_or(1);
    let most = readings.iter().map(|r| r.pods_each).max().unwrap_or(1);
    let mut per_pod = Vec::new();
    for &s in &counts {
        if let (Some(a), Some(b)) = (anon(s, least), anon(s, most))
            && most > least
        {
            let slope = (b - a) / (s * (most - least)) as f64;
            per_pod.push((s, slope));
            println!("RssAnon per pod at S={s} (P {least} to {most}): {slope:.1} KiB");
        }
    }
    for pair in counts.windows(2) {
        let (s1, s2) = (pair[0], pair[1]);
        let pod = per_pod.iter().find(|(s, _)| *s == s2).map_or(0.0, |(_, k)| *k);
        if let (Some(a), Some(b)) = (anon(s1, least), anon(s2, least)) {
            let per_set = (b - a - pod * ((s2 - s1) * least) as f64) / (s2 - s1) as f64;
            println!("RssAnon per ServiceAccount set, S {s1} to {s2} at P={least}: {:.2} MiB", per_set / 1024.0);
        }
    }
}

/// Least squares for three unknowns (normal equations, Cramer's rule).
fn least_squares(rows: &[[f64; 3]], ys: &[f64]) -> Option<[f64; 3]> {
    let mut a = [[0.0; 3]; 3];
    let mut b = [0.0; 3];
    for (row, y) in rows.iter().zip(ys) {
        for i in 0..3 {
            for j in 0..3 {
                a[i][j] += row[i] * row[j];
            }
            b[i] += row[i] * y;
        }
    }
    let det = |m: &[[f64; 3]; 3]| {
        m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1]) - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
            + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0])
    };
    let d = det(&a);
    if d.abs() < 1e-9 {
        return None;
    }
    let mut out = [0.0; 3];
    for (k, slot) in out.iter_mut().enumerate() {
        let mut m = a;
        for i in 0..3 {
            m[i][k] = b[i];
        }
        *slot = det(&m) / d;
    }
    Some(out)
}
