//! ServiceAccount annotations through a watch cache (a kube-rs reflector of metadata only: the
//! annotations are all keyless reads). A ServiceAccount the cache has not seen yet (created just
//! before its first pod) is read from the API once, with a timeout well inside the API server's.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::ServiceAccount;
use keyless_inject::Annotations;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::utils::ResetTimerBackoff;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tracing::warn;

/// The watch's retry delays after a failure: from 200 ms, doubling, jittered, at most 5 s; back to
/// 200 ms after two minutes without one. kube-rs's default (client-go's: up to 30 s) is kind to a
/// struggling API server, but readiness waits for the first full list, and with `failurePolicy:
/// Fail` an unready webhook refuses pods: one list and watch per replica is little load, and
/// readiness should follow the API server back within seconds.
fn watch_backoff() -> ResetTimerBackoff<watcher::ExponentialBackoff> {
    let delays = backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times();
    ResetTimerBackoff::new(delays.into(), Duration::from_secs(120))
}

/// A live read of a ServiceAccount missing from the cache gives up after this long.
const LIVE_READ_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Clone)]
pub struct ServiceAccounts {
    client: Client,
    store: Store<PartialObjectMeta<ServiceAccount>>,
    synced: Arc<AtomicBool>,
}

impl std::fmt::Debug for ServiceAccounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServiceAccounts")
    }
}

impl ServiceAccounts {
    /// Starts the watch of every namespace's ServiceAccounts (their metadata).
    pub fn watch(client: Client) -> Self {
        // An `Api` of `PartialObjectMeta` lists and watches metadata only.
        let api: Api<PartialObjectMeta<ServiceAccount>> = Api::all(client.clone());
        let (store, writer) = reflector::store();
        let stream = watcher::watcher(api, watcher::Config::default())
            .backoff(watch_backoff())
            .reflect(writer)
            .applied_objects();
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                if let Err(e) = event {
                    warn!(error = %e, "watching ServiceAccounts failed; retrying (check the webhook's RBAC: list and watch serviceaccounts)");
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
        Self { client, store, synced }
    }

    /// Whether the cache holds the first full list (readiness).
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::SeqCst)
    }

    /// The annotations of `namespace/name`; none for a ServiceAccount that does not exist.
    pub async fn annotations(&self, namespace: &str, name: &str) -> Result<Annotations, String> {
        let key = ObjectRef::new(name).within(namespace);
        if let Some(cached) = self.store.get(&key) {
            return Ok(to_annotations(&cached.metadata));
        }
        let api: Api<PartialObjectMeta<ServiceAccount>> = Api::namespaced(self.client.clone(), namespace);
        match tokio::time::timeout(LIVE_READ_TIMEOUT, api.get_opt(name)).await {
            Ok(Ok(Some(account))) => Ok(to_annotations(&account.metadata)),
            Ok(Ok(None)) => Ok(Annotations::new()),
            Ok(Err(e)) => Err(format!("cannot read ServiceAccount {namespace}/{name}: {e}")),
            Err(_) => Err(format!(
                "cannot read ServiceAccount {namespace}/{name}: no answer from the API server within {}s",
                LIVE_READ_TIMEOUT.as_secs()
            )),
        }
    }
}

fn to_annotations(metadata: &kube::core::ObjectMeta) -> Annotations {
    metadata.annotations.clone().unwrap_or_default().into_iter().collect()
}

#[cfg(test)]
mod backoff_tests {
    use super::*;

    /// Readiness follows the API server back within seconds: no retry waits anywhere near kube-rs's
    /// default 30 s (backon's jitter adds up to one more delay).
    #[test]
    fn the_watch_retries_within_seconds_however_long_the_api_server_was_away() {
        let delays: Vec<Duration> = watch_backoff().take(50).collect();
        assert_eq!(delays.len(), 50, "the watch never gives up");
        assert!(delays[0] <= Duration::from_millis(400), "{delays:?}");
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(10)), "{delays:?}");
    }
}
