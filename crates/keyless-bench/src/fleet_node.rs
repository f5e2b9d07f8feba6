//! `keyless-bench fleet-node`: the fleet with one keyless per pod (sidecar mode) against one per
//! node (node mode, SPEC 13): exchanges per hour and total memory (issue 28, point 6).
//!
//! Both modes run the same simulation as `keyless-bench fleet` (fleet.rs: one real
//! `CredentialCache` per exchanging unit on the paused clock, the emulator's quota as the token
//! service). They differ only in who exchanges: a sidecar exchanges for its own pod; a node agent
//! exchanges once per ServiceAccount and identity on its node and serves every pod of that
//! ServiceAccount there, so its unit is (node, ServiceAccount). A Deployment is one
//! ServiceAccount. Memory is a model over figures measured elsewhere (docs/benchmarks.md: run P1
//! for the sidecar, run NM1 for the node agent): the simulation has no processes.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom as _;
use rand::{Rng as _, SeedableRng as _};

use crate::BenchError;
use crate::fleet::{Cloud, FleetOptions, FleetRun, Layout, Schedule, simulate_layout};

/// The fleet, its nodes and Deployments, and the memory figures of each mode.
#[derive(Debug, Clone, clap::Args)]
pub struct FleetNodeOptions {
    #[command(flatten)]
    pub fleet: FleetOptions,
    #[arg(long, default_value_t = 100)]
    pub nodes: usize,
    /// Deployments have 1 to this many replicas, drawn with P(r) proportional to 1/r.
    #[arg(long, default_value_t = 100)]
    pub max_replicas: usize,
    /// Seeds the Deployments' sizes, the pods' start order and random placement.
    #[arg(long, default_value_t = 28)]
    pub seed: u64,
    /// Memory of one keyless sidecar (MiB). Default: `VmRSS` of run P1 (docs/benchmarks.md).
    #[arg(long, default_value_t = 12.6)]
    pub sidecar_mib: f64,
    /// The same by PSS (MiB): the binary's pages split between the sidecars of a node (run P1).
    #[arg(long, default_value_t = 2.7)]
    pub sidecar_pss_mib: f64,
    /// Memory of one node agent serving pods (MiB), before the per-pod and per-ServiceAccount
    /// costs. Default: run P1's sidecar RSS (12.6) plus what `keyless node` with its first set of
    /// providers measured over a ready sidecar of the same build (5.1 MiB: 45.4 against 40.3, debug
    /// build; run NM1, `cargo run -p keyless-bench --example node-memory`, docs/benchmarks.md).
    #[arg(long, default_value_t = 17.7)]
    pub agent_mib: f64,
    /// A node agent's memory per pod on its node (KiB). Default: measured (run NM1: the slope of
    /// `RssAnon` and `VmRSS` over 1 to 1,000 pods: 13.9 and 14.0 KiB).
    #[arg(long, default_value_t = 14.0)]
    pub per_pod_kib: f64,
    /// The least a set of providers per (node, ServiceAccount) costs, per identity (KiB). Unset
    /// (the default): every set costs `--per-set-mib`, measured; given: the memory is a range from
    /// this (a cached credential and its task) to `--per-set-mib` (the model before node mode
    /// could be measured, with 8 KiB).
    #[arg(long)]
    pub per_key_kib: Option<f64>,
    /// A node agent's set of providers per ServiceAccount on its node (MiB; three identities).
    /// Default: measured (run NM1: `RssAnon` of a second set holding credentials, 0.68 MiB; sets
    /// whose exchanges were refused cost 0.52-0.54).
    #[arg(long, default_value_t = 0.68)]
    pub per_set_mib: f64,
    /// Identities per pod the memory is counted for (the runs of P1: one per cloud).
    #[arg(long, default_value_t = 3)]
    pub identities: usize,
}

/// Where the scheduler puts a Deployment's replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Spread evenly (the scheduler's default topology spreading, at its best): replicas go to
    /// the nodes round-robin, so a Deployment of at most `nodes` replicas has one pod per node.
    Spread,
    /// Each pod on a node drawn at random: co-located replicas as a scheduler that packs by
    /// resources, not by Deployment, leaves them.
    Random,
}

impl Placement {
    fn name(self) -> &'static str {
        match self {
            Self::Spread => "spread",
            Self::Random => "random",
        }
    }
}

/// The fleet's pods: per pod, its Deployment and when it starts.
#[derive(Debug, Clone)]
pub struct Fleet {
    /// Replicas of each Deployment.
    pub deployments: Vec<usize>,
    /// Per pod (grouped by Deployment, in order): its start since the rollout began.
    pub starts: Vec<Duration>,
}

impl Fleet {
    /// Deployments of 1 to `max_replicas` replicas, P(r) proportional to 1/r (most are small, a
    /// few large hold most pods), until there are `pods` (the last one cut to fit); the pods start
    /// evenly over `rollout` in a random order (every Deployment rolls out at once).
    pub fn new(pods: usize, max_replicas: usize, rollout: Duration, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let max_replicas = max_replicas.max(1);
        let weights: Vec<f64> = (1..=max_replicas).map(|r| 1.0 / r as f64).collect();
        let total: f64 = weights.iter().sum();
        let mut deployments = Vec::new();
        let mut placed = 0;
        while placed < pods {
            let mut draw = rng.random::<f64>() * total;
            let mut replicas = max_replicas;
            for (r, w) in weights.iter().enumerate() {
                if draw < *w {
                    replicas = r + 1;
                    break;
                }
                draw -= w;
            }
            let replicas = replicas.min(pods - placed);
            deployments.push(replicas);
            placed += replicas;
        }
        let mut order: Vec<usize> = (0..pods).collect();
        order.shuffle(&mut rng);
        let starts = order.iter().map(|&slot| rollout.mul_f64(slot as f64 / pods.max(1) as f64)).collect();
        Self { deployments, starts }
    }

    /// Node mode's units: the pods of one Deployment (ServiceAccount) on one node.
    pub fn node_layout(&self, nodes: usize, placement: Placement, seed: u64) -> Layout {
        let nodes = nodes.max(1);
        let mut rng = StdRng::seed_from_u64(seed ^ 0x6e6f_6465);
        let mut units: BTreeMap<(usize, usize), Vec<Duration>> = BTreeMap::new();
        let mut pod = 0;
        for (deployment, &replicas) in self.deployments.iter().enumerate() {
            for _ in 0..replicas {
                let node = match placement {
                    Placement::Spread => pod % nodes,
                    Placement::Random => rng.random_range(0..nodes),
                };
                units.entry((node, deployment)).or_default().push(self.starts[pod]);
                pod += 1;
            }
        }
        let units = units
            .into_values()
            .map(|mut starts| {
                starts.sort();
                starts
            })
            .collect();
        Layout { units }
    }
}

/// One mode's run and its memory.
struct ModeRun {
    mode: String,
    run: FleetRun,
    /// Total memory, as a person reads it (sidecars: by RSS and PSS; nodes: the least and most).
    memory: String,
}

/// Sidecar mode and node mode under both placements, per cloud: the table on stdout, the CSVs
/// into `--csv`.
#[allow(clippy::print_stdout)] // the report is the output
pub fn report(options: &FleetNodeOptions) -> Result<(), BenchError> {
    let fleet_options = &options.fleet;
    let fleet = Fleet::new(fleet_options.pods, options.max_replicas, fleet_options.rollout, options.seed);
    let sizes = &fleet.deployments;
    let largest = sizes.iter().copied().max().unwrap_or(0);
    let singles = sizes.iter().filter(|&&r| r == 1).count();
    println!(
        "fleet-node: {} pods on {} nodes in {} Deployments (1 to {largest} replicas, {singles} of one; seed {}), \
         started over {}, credentials of {}, quota {}/s, {} of virtual time\n",
        fleet_options.pods,
        options.nodes,
        sizes.len(),
        options.seed,
        humantime::format_duration(fleet_options.rollout),
        humantime::format_duration(fleet_options.lifetime),
        fleet_options.quota,
        humantime::format_duration(fleet_options.duration),
    );
    println!(
        "| cloud | mode | caches exchanging | all ready | throttled (x unavoidable) | exchanges per hour (steady) | \
         memory, {} identities | expired served | wall time |\n|---|---|---|---|---|---|---|---|---|",
        options.identities
    );
    let layouts = [
        ("sidecar".to_owned(), Layout::sidecars(fleet_options.pods, fleet_options.rollout)),
        (
            format!("node, {}", Placement::Spread.name()),
            fleet.node_layout(options.nodes, Placement::Spread, options.seed),
        ),
        (
            format!("node, {}", Placement::Random.name()),
            fleet.node_layout(options.nodes, Placement::Random, options.seed),
        ),
    ];
    let clouds = if fleet_options.clouds.is_empty() { Cloud::ALL.to_vec() } else { fleet_options.clouds.clone() };
    let mut expired = Vec::new();
    for cloud in clouds {
        let mut runs = Vec::new();
        for (i, (mode, layout)) in layouts.iter().enumerate() {
            #[allow(clippy::disallowed_methods)] // how long the simulation took on this machine, not its clock
            let started = std::time::Instant::now();
            let run = simulate_layout(fleet_options, cloud, Schedule::Jittered, layout)
                .map_err(|e| BenchError::Request(e.to_string()))?;
            let memory = if i == 0 { sidecar_memory(options) } else { node_memory(options, run.units) };
            let mode_run = ModeRun { mode: mode.clone(), run, memory };
            println!("{} | {:.1}s", row(&mode_run), started.elapsed().as_secs_f64());
            if mode_run.run.expired_served > 0 {
                expired.push(format!(
                    "{} {}: {} expired credentials served",
                    cloud.dir_name(),
                    mode,
                    mode_run.run.expired_served
                ));
            }
            runs.push(mode_run);
        }
        if let Some(dir) = &fleet_options.csv {
            write_csv(dir, cloud, &runs)?;
        }
    }
    if expired.is_empty() { Ok(()) } else { Err(BenchError::Goals(expired.join("; "))) }
}

const MIB_PER_GIB: f64 = 1024.0;

/// Every pod's sidecar, by RSS (what each container shows) and by PSS (what the node spends).
fn sidecar_memory(options: &FleetNodeOptions) -> String {
    let pods = options.fleet.pods as f64;
    format!(
        "{:.1} GiB by RSS, {:.1} GiB by PSS",
        pods * options.sidecar_mib / MIB_PER_GIB,
        pods * options.sidecar_pss_mib / MIB_PER_GIB
    )
}

/// Every node's agent, its state per pod, and per (node, ServiceAccount) a set of providers: the
/// measured cost, or with `--per-key-kib` a range from a credential per identity to it.
fn node_memory(options: &FleetNodeOptions, units: usize) -> String {
    let base = options.nodes as f64 * options.agent_mib + options.fleet.pods as f64 * options.per_pod_kib / 1024.0;
    let most = base + units as f64 * options.per_set_mib;
    match options.per_key_kib {
        Some(per_key_kib) => {
            let least = base + (units * options.identities) as f64 * per_key_kib / 1024.0;
            format!("{:.1}-{:.1} GiB", least / MIB_PER_GIB, most / MIB_PER_GIB)
        }
        None => format!("{:.1} GiB", most / MIB_PER_GIB),
    }
}

fn row(mode_run: &ModeRun) -> String {
    let run = &mode_run.run;
    let ready = match run.all_ready {
        Some(at) => format!("{}s", at.as_secs()),
        None => "never".to_owned(),
    };
    let throttled = match run.throttled_ratio() {
        Some(ratio) => format!("{} ({ratio:.2}x of {})", run.throttled, run.unavoidable),
        None => format!("{} (none unavoidable)", run.throttled),
    };
    crate::fleet_report::table_row(&[
        &run.cloud.dir_name(),
        &mode_run.mode,
        &run.units,
        &ready,
        &throttled,
        &format_args!("{:.0}", run.steady_per_hour),
        &mode_run.memory,
        &run.expired_served,
    ])
}

/// `DIR/fleet-node-CLOUD.csv`: second, then calls and throttled calls of each mode.
fn write_csv(dir: &Path, cloud: Cloud, runs: &[ModeRun]) -> Result<(), BenchError> {
    let file_error = |source| BenchError::File { path: dir.to_owned(), source };
    std::fs::create_dir_all(dir).map_err(file_error)?;
    let mut csv = String::from("second");
    let mut meta = String::from("# ");
    for (i, mode_run) in runs.iter().enumerate() {
        let _ = write!(csv, ",m{i}_calls,m{i}_throttled");
        let _ = write!(
            meta,
            "m{i}={};caches={};per_hour={:.0};memory={}|",
            mode_run.mode, mode_run.run.units, mode_run.run.steady_per_hour, mode_run.memory
        );
    }
    csv.push('\n');
    let seconds = runs.iter().map(|r| r.run.per_second.len()).min().unwrap_or(0);
    for second in 0..seconds {
        let _ = write!(csv, "{second}");
        for mode_run in runs {
            let (calls, throttled) = mode_run.run.per_second[second];
            let _ = write!(csv, ",{calls},{throttled}");
        }
        csv.push('\n');
    }
    let path = dir.join(format!("fleet-node-{}.csv", cloud.dir_name()));
    std::fs::write(&path, format!("{}\n{csv}", meta.trim_end_matches('|')))
        .map_err(|source| BenchError::File { path, source })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_deployments_hold_every_pod_and_spreading_puts_one_replica_per_node() {
        let fleet = Fleet::new(10_000, 100, Duration::from_secs(60), 28);
        assert_eq!(fleet.deployments.iter().sum::<usize>(), 10_000);
        assert!(fleet.deployments.iter().all(|&r| (1..=100).contains(&r)));
        let spread = fleet.node_layout(100, Placement::Spread, 28);
        assert_eq!(spread.pods(), 10_000);
        // At most 100 replicas on 100 nodes, spread: no two pods of a Deployment share a node.
        assert_eq!(spread.units.len(), 10_000);
        let random = fleet.node_layout(100, Placement::Random, 28);
        assert_eq!(random.pods(), 10_000);
        assert!(random.units.len() < 9_000, "{} units", random.units.len());
        assert!(random.units.iter().all(|starts| starts.windows(2).all(|w| w[0] <= w[1])));
    }

    /// With the per-set cost measured, node mode's memory is one figure (agents, pods' state, sets);
    /// `--per-key-kib` gives the earlier model's range.
    #[test]
    fn node_memory_is_one_figure_unless_a_least_per_identity_is_given() {
        use clap::Parser as _;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            options: FleetNodeOptions,
        }
        let mut options = Cli::parse_from(["fleet-node"]).options;
        // 100 agents of 17.7 MiB, 10,000 pods of 14 KiB, 10,000 sets of 0.68 MiB: 8,506.7 MiB.
        assert_eq!(node_memory(&options, 10_000), "8.5 GiB");
        options.per_key_kib = Some(8.0);
        assert_eq!(node_memory(&options, 10_000), "2.1-8.5 GiB");
    }

    /// A node agent exchanges once per ServiceAccount on its node: 20 pods of one Deployment on
    /// one node are one unit, ready when their one exchange is.
    #[test]
    fn pods_of_one_service_account_on_a_node_share_one_exchange() {
        let options = FleetOptions {
            pods: 20,
            quota: 50.0,
            rollout: Duration::from_secs(10),
            lifetime: Duration::from_secs(3600),
            duration: Duration::from_secs(3600),
            csv: None,
            jitter: None,
            throttle_retry: None,
            clouds: Vec::new(),
        };
        let fleet = Fleet { deployments: vec![20], starts: (0..20).map(|i| Duration::from_millis(i * 500)).collect() };
        let layout = fleet.node_layout(1, Placement::Spread, 1);
        assert_eq!(layout.units.len(), 1);
        let node = simulate_layout(&options, Cloud::Gcp, Schedule::Jittered, &layout).unwrap();
        let sidecars =
            simulate_layout(&options, Cloud::Gcp, Schedule::Jittered, &Layout::sidecars(20, options.rollout)).unwrap();
        // One first exchange and its refreshes, against twenty of each.
        assert!(node.calls * 10 < sidecars.calls, "node {} calls, sidecars {}", node.calls, sidecars.calls);
        assert_eq!(node.all_ready, Some(Duration::from_millis(19 * 500)), "the last pod, at its start");
        assert_eq!(node.expired_served, 0);
    }
}
