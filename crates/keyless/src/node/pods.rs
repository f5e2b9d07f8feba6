//! Who is asking: the pods of this node, from a watch of this node's pods only (a kube-rs
//! reflector with the field selector `spec.nodeName=NODE`), and the caller a source address
//! stands for.
//!
//! A lookup reads the watch cache as it is now: a pod that was deleted is gone from it, and the
//! pod that holds its address next is looked up by its own UID, ServiceAccount and state. Two pods
//! of the cache claiming one address (the delete not seen yet when the new pod's IP arrives) are
//! refused rather than guessed between.
//!
//! RBAC cannot restrict a watch by field: the ClusterRole grants list and watch of every pod; the
//! selector keeps what keyless node asks for, holds and is told about to its own node (and the API
//! server's load to one node's pods per agent).

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client};
use tokio::sync::watch;
use tracing::warn;

use keyless_provider::CallerRefusal;

/// A ServiceAccount, by namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AccountRef {
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for AccountRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The pod a request comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub uid: String,
    pub name: String,
    pub account: AccountRef,
}

/// What the node's watch says of one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodView {
    pub uid: String,
    pub name: String,
    pub account: AccountRef,
    pub host_network: bool,
    pub running: bool,
    /// Succeeded or Failed: its containers are gone and its address released (the API keeps the
    /// pod, and its `podIP`, until it is deleted: a completed Job's pod, say).
    pub finished: bool,
    /// Being deleted (a deletion timestamp is set): no token is bound to it any more.
    pub terminating: bool,
    pub ips: Vec<IpAddr>,
}

impl PodView {
    pub fn of(pod: &Pod) -> Option<Self> {
        let meta = &pod.metadata;
        let spec = pod.spec.as_ref()?;
        let status = pod.status.as_ref();
        let mut ips: Vec<IpAddr> = status
            .and_then(|s| s.pod_ips.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|ip| ip.ip.parse::<IpAddr>().ok())
            .collect();
        if let Some(ip) = status.and_then(|s| s.pod_ip.as_deref()).and_then(|ip| ip.parse::<IpAddr>().ok())
            && !ips.contains(&ip)
        {
            ips.push(ip);
        }
        let ips = ips.into_iter().map(|ip| ip.to_canonical()).collect();
        Some(Self {
            uid: meta.uid.clone()?,
            name: meta.name.clone()?,
            account: AccountRef {
                namespace: meta.namespace.clone()?,
                name: spec.service_account_name.clone().unwrap_or_else(|| "default".to_owned()),
            },
            host_network: spec.host_network == Some(true),
            running: status.and_then(|s| s.phase.as_deref()) == Some("Running"),
            finished: matches!(status.and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed")),
            terminating: meta.deletion_timestamp.is_some(),
            ips,
        })
    }

    /// Whether the pod counts for its ServiceAccount's credentials: on the pod network, not done.
    pub fn live(&self) -> bool {
        !self.host_network && !self.terminating && !self.finished
    }
}

/// Who holds `ip` among `pods`: the one pod on the pod network holding it, Running.
pub fn caller_among(pods: impl IntoIterator<Item = PodView>, ip: IpAddr) -> Result<Caller, CallerRefusal> {
    let ip = ip.to_canonical();
    let mut host_network = false;
    let mut found: Option<PodView> = None;
    // A finished pod released its address: the CNI may have given it to a new pod already.
    for pod in pods.into_iter().filter(|p| p.ips.contains(&ip) && !p.finished) {
        if pod.host_network {
            host_network = true;
            continue;
        }
        if found.is_some() {
            // Two pods claim the address: one is gone and the watch has not said so yet.
            return Err(CallerRefusal::UnknownAddress);
        }
        found = Some(pod);
    }
    match found {
        Some(pod) if !pod.running || pod.terminating => Err(CallerRefusal::NotRunning),
        Some(pod) => Ok(Caller { uid: pod.uid, name: pod.name, account: pod.account }),
        None if host_network => Err(CallerRefusal::HostNetwork),
        None => Err(CallerRefusal::UnknownAddress),
    }
}

/// Whether `pod`'s status names `ip` (canonical) among its addresses.
fn names_address(pod: &Pod, ip: IpAddr) -> bool {
    let Some(status) = pod.status.as_ref() else { return false };
    let is = |text: &str| text.parse::<IpAddr>().is_ok_and(|a| a.to_canonical() == ip);
    status.pod_ip.as_deref().is_some_and(is) || status.pod_ips.iter().flatten().any(|p| is(&p.ip))
}

/// This node's pods, kept by a watch.
#[derive(Clone)]
pub struct NodePods {
    store: Store<Pod>,
    synced: Arc<AtomicBool>,
    /// Bumped on every change the watch sees (the ServiceAccounts' reconciler and token binders wait on it).
    changes: watch::Receiver<u64>,
}

impl std::fmt::Debug for NodePods {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodePods")
    }
}

impl NodePods {
    /// Starts the watch of the pods bound to `node`.
    pub fn watch(client: Client, node: &str) -> Self {
        let api: Api<Pod> = Api::all(client);
        let (store, writer) = reflector::store();
        let config = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
        let stream = watcher::watcher(api, config).backoff(crate::webhook::accounts::watch_backoff()).reflect(writer);
        let (tx, changes) = watch::channel(0u64);
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                match event {
                    Ok(_) => {
                        tx.send_modify(|n| *n = n.wrapping_add(1));
                    }
                    Err(e) => warn!(
                        error = %e,
                        "watching this node's pods failed; retrying (check keyless node's RBAC: list and watch pods)"
                    ),
                }
            }
        });
        let synced = Arc::new(AtomicBool::new(false));
        let (ready, flag) = (store.clone(), Arc::clone(&synced));
        tokio::spawn(async move {
            if ready.wait_until_ready().await.is_ok() {
                flag.store(true, Ordering::SeqCst);
            }
        });
        Self { store, synced, changes }
    }

    /// Whether the cache holds the first full list.
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::SeqCst)
    }

    /// Every pod of the node as the watch has it now.
    pub fn views(&self) -> Vec<PodView> {
        self.store.state().iter().filter_map(|p| PodView::of(p)).collect()
    }

    /// Who holds `ip` now. On every request: only the pods naming the address become views (not
    /// every pod of the node).
    pub fn caller(&self, ip: IpAddr) -> Result<Caller, CallerRefusal> {
        let ip = ip.to_canonical();
        let pods = self.store.state();
        caller_among(pods.iter().filter(|p| names_address(p, ip)).filter_map(|p| PodView::of(p)), ip)
    }

    /// A receiver that changes whenever the watch saw a change.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(uid: &str, account: &str, ip: &str) -> PodView {
        PodView {
            uid: uid.to_owned(),
            name: format!("pod-{uid}"),
            account: AccountRef { namespace: "ns".to_owned(), name: account.to_owned() },
            host_network: false,
            running: true,
            finished: false,
            terminating: false,
            ips: vec![ip.parse().expect("an IP")],
        }
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("an IP")
    }

    #[test]
    fn the_running_pod_holding_the_address_is_the_caller() {
        let pods = vec![pod("a", "one", "10.0.0.5"), pod("b", "two", "10.0.0.6")];
        let caller = caller_among(pods.clone(), ip("10.0.0.6")).expect("a caller");
        assert_eq!((caller.uid.as_str(), caller.account.name.as_str()), ("b", "two"));
        // An IPv4 client of a dual-stack listener is the same address.
        let caller = caller_among(pods, ip("::ffff:10.0.0.5")).expect("a caller");
        assert_eq!(caller.uid, "a");
    }

    #[test]
    fn unknown_host_network_and_not_running_callers_are_refused_as_such() {
        let mut host = pod("h", "one", "192.168.1.10");
        host.host_network = true;
        let mut pending = pod("p", "one", "10.0.0.7");
        pending.running = false;
        let mut leaving = pod("l", "one", "10.0.0.8");
        leaving.terminating = true;
        let pods = vec![host, pending, leaving];
        assert_eq!(caller_among(pods.clone(), ip("10.0.0.9")), Err(CallerRefusal::UnknownAddress));
        assert_eq!(caller_among(pods.clone(), ip("192.168.1.10")), Err(CallerRefusal::HostNetwork));
        assert_eq!(caller_among(pods.clone(), ip("10.0.0.7")), Err(CallerRefusal::NotRunning));
        assert_eq!(caller_among(pods, ip("10.0.0.8")), Err(CallerRefusal::NotRunning));
    }

    /// A completed Job's pod keeps its `podIP` in the API; the address is another pod's now.
    #[test]
    fn a_finished_pod_does_not_hold_its_old_address() {
        let mut done = pod("done", "one", "10.0.0.5");
        (done.running, done.finished) = (false, true);
        let pods = vec![done.clone(), pod("new", "two", "10.0.0.5")];
        assert_eq!(caller_among(pods, ip("10.0.0.5")).map(|c| c.uid), Ok("new".to_owned()));
        assert_eq!(caller_among(vec![done.clone()], ip("10.0.0.5")), Err(CallerRefusal::UnknownAddress));
        assert!(!done.live(), "no token is bound to a finished pod");
    }

    /// The old pod's delete not seen yet, the new pod's IP already: neither is served.
    #[test]
    fn two_pods_claiming_one_address_are_refused_not_guessed_between() {
        let pods = vec![pod("old", "one", "10.0.0.5"), pod("new", "two", "10.0.0.5")];
        assert_eq!(caller_among(pods, ip("10.0.0.5")), Err(CallerRefusal::UnknownAddress));
    }
}
