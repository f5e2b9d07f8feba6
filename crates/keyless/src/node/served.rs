//! The ServiceAccounts keyless node serves: for each with live pods on the node and an identity
//! annotation, the providers a sidecar of that ServiceAccount would run (the same settings
//! injection gives a sidecar, keyless-inject's `sidecar_env_pairs`, loaded and started as
//! `keyless serve` loads its environment), reading subject tokens keyless node requests for it.
//!
//! Invariants (ARCHITECTURE.md, node mode):
//! - one set of providers per (ServiceAccount, identities): every pod of the ServiceAccount on
//!   the node shares its caches, so one exchange per identity serves them all; a pod of another
//!   ServiceAccount never reaches them (the set is chosen by the caller's ServiceAccount, looked up
//!   by the caller's pod UID at each request);
//! - when the last live pod of a ServiceAccount leaves the node, its set is dropped: its caches'
//!   refresh tasks end with it and its token files are removed, so nothing is refreshed for it
//!   again;
//! - changed annotations make a new set (the old one is dropped), never a mix.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use keyless_core::clock::SystemClock;
use keyless_core::{AppEnvValue, Context, Metrics, Secret};
use keyless_inject::{AnnotationSources, Identities, Options};
use keyless_provider::{AppHost, CallerRefusal, Routes};
use tokio::sync::OnceCell;
use tokio::time::Instant;
use tracing::{info, warn};

use super::AbortOnDrop;
use super::pods::{AccountRef, Caller, NodePods, PodView};
use super::tokens::{Requester, write_token};
use crate::providers::Running;
use crate::webhook::accounts::ServiceAccounts;

/// A ServiceAccount whose set could not be started is tried again after this long (not at every
/// request of its pods).
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(5);
/// Tokens are requested again at this fraction of their lifetime (the kubelet's rotation point).
const REFRESH_FRACTION: f64 = 0.8;

/// What every ServiceAccount's set is built from.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where the subject tokens are written (a directory per set, removed with it).
    pub state_dir: PathBuf,
    /// The injection's cluster-wide choices: region, default tenant, and further `KEYLESS_*`
    /// settings of every set (`sidecar_env`: `--provider-setting`).
    pub options: Options,
}

/// What the sets share: the node's watches, the TokenRequest client, the metrics.
pub struct Shared {
    pub pods: NodePods,
    pub accounts: ServiceAccounts,
    pub requester: Requester,
    pub settings: Settings,
    pub metrics: Metrics,
}

impl Shared {
    pub fn new(
        pods: NodePods,
        accounts: ServiceAccounts,
        requester: Requester,
        settings: Settings,
        metrics: Metrics,
    ) -> Self {
        Self { pods, accounts, requester, settings, metrics }
    }
}

/// One ServiceAccount's running providers.
pub struct Served {
    pub routes: Routes,
    /// The AWS container endpoint's own authorization value, which keyless node puts in place of a
    /// verified pod token (`None`: the ServiceAccount has no AWS identity).
    pub aws_authorization: Option<Secret<String>>,
    _providers: Vec<Running>,
    _binder: AbortOnDrop,
}

struct Slot {
    identities: Identities,
    created: Instant,
    cell: OnceCell<Result<Arc<Served>, String>>,
}

/// The sets, by ServiceAccount.
pub struct Registry {
    shared: Arc<Shared>,
    slots: Mutex<HashMap<AccountRef, Arc<Slot>>>,
    /// The problems already logged as warnings: a pod asking again and again (or every pod event)
    /// logs each once; repeats go to debug.
    logged: Mutex<HashSet<(AccountRef, String)>>,
}

/// Problems remembered as logged at most (then forgotten, and logged once more).
const MAX_LOGGED: usize = 1024;

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Registry")
    }
}

impl Registry {
    pub fn new(shared: Arc<Shared>) -> Arc<Self> {
        Arc::new(Self { shared, slots: Mutex::new(HashMap::new()), logged: Mutex::new(HashSet::new()) })
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<AccountRef, Arc<Slot>>> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Logs `problem` of `account` as a warning the first time, at debug level after that. It may
    /// quote an annotation (anyone who may annotate a ServiceAccount wrote it): escaped, bounded.
    fn log_once(&self, account: &AccountRef, problem: &str) {
        let problem = keyless_core::printable::printable(problem, 1024);
        let problem = problem.as_ref();
        let first = {
            let mut logged = self.logged.lock().unwrap_or_else(PoisonError::into_inner);
            if logged.len() >= MAX_LOGGED {
                logged.clear();
            }
            logged.insert((account.clone(), problem.to_owned()))
        };
        if first {
            warn!(account = %account, "{problem}");
        } else {
            tracing::debug!(account = %account, "{problem}");
        }
    }

    /// The ServiceAccounts with a set now (started or starting).
    pub fn accounts(&self) -> Vec<AccountRef> {
        let mut accounts: Vec<AccountRef> = self.slots().keys().cloned().collect();
        accounts.sort();
        accounts
    }

    /// The identities `account`'s annotations name; refused when none (or a malformed one).
    async fn identities(&self, account: &AccountRef) -> Result<Identities, CallerRefusal> {
        let annotations = self.shared.accounts.annotations(&account.namespace, &account.name).await.map_err(|e| {
            self.log_once(account, &format!("cannot read the ServiceAccount's annotations: {e}"));
            CallerRefusal::Unavailable
        })?;
        let tenant = self.shared.settings.options.azure_tenant_id.as_deref();
        match (AnnotationSources { service_account: &annotations }).identities(tenant) {
            Ok((identities, _)) if !identities.is_empty() => Ok(identities),
            Ok(_) => Err(CallerRefusal::NotOptedIn),
            Err(e) => {
                self.log_once(
                    account,
                    &format!("the ServiceAccount's identity annotation is malformed, its pods are not served: {e}"),
                );
                Err(CallerRefusal::NotOptedIn)
            }
        }
    }

    /// The set serving `caller`'s ServiceAccount, started if need be.
    pub async fn served_for(&self, caller: &Caller) -> Result<Arc<Served>, CallerRefusal> {
        self.ensure(&caller.account).await
    }

    /// `account`'s set, started if need be (by the first of its callers; the others wait for it).
    pub async fn ensure(&self, account: &AccountRef) -> Result<Arc<Served>, CallerRefusal> {
        let identities = self.identities(account).await?;
        let slot = {
            let mut slots = self.slots();
            let reusable = slots.get(account).filter(|slot| {
                let failed = matches!(slot.cell.get(), Some(Err(_)));
                slot.identities == identities && !(failed && slot.created.elapsed() >= RETRY_AFTER_FAILURE)
            });
            match reusable {
                Some(slot) => Arc::clone(slot),
                None => {
                    let slot = Arc::new(Slot {
                        identities: identities.clone(),
                        created: Instant::now(),
                        cell: OnceCell::new(),
                    });
                    // A replaced set (new annotations, or a failed start) is dropped here.
                    slots.insert(account.clone(), Arc::clone(&slot));
                    slot
                }
            }
        };
        let started = slot.cell.get_or_init(|| start(Arc::clone(&self.shared), account.clone(), identities)).await;
        match started {
            Ok(served) => Ok(Arc::clone(served)),
            Err(e) => {
                self.log_once(account, &format!("cannot serve the ServiceAccount's pods: {e}"));
                Err(CallerRefusal::Unavailable)
            }
        }
    }

    /// Drops the sets of ServiceAccounts without a live pod on the node; starts those of the
    /// ServiceAccounts that have one (so the first request of a new pod finds credentials).
    pub fn reconcile(self: &Arc<Self>) {
        let live: HashSet<AccountRef> =
            self.shared.pods.views().into_iter().filter(PodView::live).map(|p| p.account).collect();
        let dropped: Vec<AccountRef> = {
            let mut slots = self.slots();
            let gone: Vec<AccountRef> = slots.keys().filter(|a| !live.contains(*a)).cloned().collect();
            for account in &gone {
                slots.remove(account);
            }
            // Under the lock: a set starting now has its slot already, so its directory stays.
            let keep: HashSet<AccountRef> = slots.keys().cloned().collect();
            remove_stale_dirs(&self.shared.settings.state_dir, &keep);
            gone
        };
        for account in dropped {
            info!(account = %account, "no pod of the ServiceAccount is left on the node: its credentials are dropped");
        }
        let known: HashSet<AccountRef> = self.slots().keys().cloned().collect();
        for account in live.into_iter().filter(|a| !known.contains(a)) {
            let registry = Arc::clone(self);
            tokio::spawn(async move {
                // Not opted in, or failing: the requests of its pods say so.
                let _ = registry.ensure(&account).await;
            });
        }
    }

    /// Reconciles at every change of the node's pods (and every `period`, for annotations).
    pub async fn run_reconciler(self: Arc<Self>, period: Duration) {
        let mut changes = self.shared.pods.changes();
        loop {
            self.reconcile();
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { return },
                () = tokio::time::sleep(period) => {}
            }
        }
    }
}

/// Each token of a set: where it is written and its audience.
type TokenFiles = Vec<(PathBuf, String)>;

/// Starts `account`'s set: its tokens first, then its providers.
async fn start(shared: Arc<Shared>, account: AccountRef, identities: Identities) -> Result<Arc<Served>, String> {
    // One directory per ServiceAccount, the same for every set it gets: the token files' paths are
    // label values of keyless_subject_token_expiry_timestamp_seconds, which must not grow with the
    // sets that come and go. The reconciler removes it once the ServiceAccount has no set.
    let dir = account_dir(&shared.settings.state_dir, &account);
    create_private_dir(&dir)?;
    let (providers, routes, aws_authorization, tokens, bound) = start_in(&shared, &account, &identities, &dir).await?;
    let binder = AbortOnDrop::new(tokio::spawn(bind(Arc::clone(&shared), account.clone(), tokens, bound)));
    info!(account = %account, providers = ?providers.iter().map(|p| p.name).collect::<Vec<_>>(), "serving the ServiceAccount's pods on this node");
    Ok(Arc::new(Served { routes, aws_authorization, _providers: providers, _binder: binder }))
}

type Started = (Vec<Running>, Routes, Option<Secret<String>>, TokenFiles, Bound);

async fn start_in(
    shared: &Shared,
    account: &AccountRef,
    identities: &Identities,
    dir: &Path,
) -> Result<Started, String> {
    let tokens: TokenFiles =
        identities.tokens().into_iter().map(|(file, audience, _)| (dir.join(file), audience.to_owned())).collect();
    let bound = issue(shared, account, &tokens).await?;
    let env = provider_env(identities, &shared.settings.options, dir, account);
    let (settings, _) = crate::config::settings_from_env(&env);
    let (config, sections) = crate::config::load(None, settings).map_err(|e| e.to_string())?;
    let config = config.finish(&crate::config::Overrides::default()).map_err(|e| e.to_string())?;
    let ctx =
        Context::new(Arc::new(SystemClock), shared.metrics.clone(), config.cache_policy(), config.watch_options());
    let providers = start_providers(sections, &ctx).await?;
    let routes = crate::providers::routes(&providers, &shared.metrics).map_err(|e| e.to_string())?;
    let app = AppHost::for_listener(SocketAddr::from(([127, 0, 0, 1], 0)));
    let aws_authorization = providers
        .iter()
        .flat_map(|p| p.started.app_env(&app))
        .find(|var| var.name == "AWS_CONTAINER_AUTHORIZATION_TOKEN")
        .and_then(|var| match var.value {
            AppEnvValue::Secret(secret) => Some(secret),
            AppEnvValue::Plain(_) => None,
        });
    Ok((providers, routes, aws_authorization, tokens, bound))
}

/// `providers::start_all` for a set (configured synchronously, so the start is a `Send` future:
/// it runs on the request path and in spawned tasks).
async fn start_providers(sections: crate::providers::Sections, ctx: &Context) -> Result<Vec<Running>, String> {
    let mut configured = Vec::new();
    for provider in crate::providers::configure_all(sections, ctx, &|_| None) {
        configured.push((provider.name, provider.configured.map_err(|e| format!("[{}] {e}", provider.name))?));
    }
    crate::providers::check_routes(configured.iter().map(|(_, c)| c.as_ref())).map_err(|e| e.to_string())?;
    let mut running = Vec::new();
    for (name, c) in configured {
        let started = c.start(ctx).await.map_err(|e| format!("[{name}] {e}"))?;
        running.push(Running { name, started });
    }
    Ok(running)
}

/// The settings of a ServiceAccount's providers: the sidecar's (keyless-inject), with the token
/// files keyless node writes in `dir`; the AWS container endpoint's authorization kept in memory
/// (keyless node checks the pods' own tokens, then presents it); no IMDS (its source address is all
/// it would trust: the container endpoint is AWS's way on a node) and no App Service endpoint (its
/// header would have to be shared with every pod). Further settings of a cloud the ServiceAccount
/// has no identity for are left out (a section with nothing but an endpoint is not a configuration).
/// The AWS session is named after the ServiceAccount (CloudTrail shows whose it is):
/// `keyless-NAMESPACE-NAME`, cut to STS's 64 characters (Kubernetes names are already in its set).
pub fn provider_env(
    identities: &Identities,
    options: &Options,
    dir: &Path,
    account: &AccountRef,
) -> HashMap<String, String> {
    let serves = |name: &str| match name.split_once("__").map(|(section, _)| section) {
        Some("KEYLESS_AWS") => identities.aws.is_some(),
        Some("KEYLESS_GCP") => identities.gcp.is_some(),
        Some("KEYLESS_AZURE") => identities.azure.is_some(),
        _ => true,
    };
    let extras = options.sidecar_env.iter().filter(|(name, _)| serves(name)).cloned().collect();
    let options = Options { sidecar_env: extras, check_sidecar: None, ..options.clone() };
    let tokens_dir = keyless_inject::TOKENS_DIR;
    let mut env: HashMap<String, String> = keyless_inject::sidecar_env_pairs(identities, &options)
        .into_iter()
        .filter(|(name, _)| {
            !matches!(
                name.as_str(),
                "KEYLESS_LISTEN" | "KEYLESS_AWS__AUTHORIZATION_TOKEN_FILE" | "KEYLESS_AZURE__IDENTITY_HEADER"
            )
        })
        .map(|(name, value)| {
            let value = match value.strip_prefix(tokens_dir) {
                Some(file) if name.ends_with("__TOKEN_FILE") => {
                    dir.join(file.trim_start_matches('/')).to_string_lossy().into_owned()
                }
                _ => value,
            };
            (name, value)
        })
        .collect();
    if identities.aws.is_some() {
        env.insert("KEYLESS_AWS__IMDS".to_owned(), "false".to_owned());
        let session: String = format!("keyless-{}-{}", account.namespace, account.name).chars().take(64).collect();
        env.entry("KEYLESS_AWS__SESSION_NAME".to_owned()).or_insert(session);
    }
    if identities.azure.is_some() {
        env.insert("KEYLESS_AZURE__APP_SERVICE".to_owned(), "false".to_owned());
    }
    env
}

/// `STATE/NAMESPACE/NAME`: both are DNS-1123 names (no `/`, never `.` or `..`).
fn account_dir(state: &Path, account: &AccountRef) -> PathBuf {
    state.join(&account.namespace).join(&account.name)
}

/// Removes the token directories of ServiceAccounts without a set (`keep`); empty namespace
/// directories go too. Files of the state directory itself (the readiness file) stay.
fn remove_stale_dirs(state: &Path, keep: &HashSet<AccountRef>) {
    let Ok(namespaces) = std::fs::read_dir(state) else { return };
    for namespace in namespaces.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())) {
        let ns = namespace.file_name().to_string_lossy().into_owned();
        let Ok(accounts) = std::fs::read_dir(namespace.path()) else { continue };
        for account in accounts.flatten() {
            let name = account.file_name().to_string_lossy().into_owned();
            if !keep.contains(&AccountRef { namespace: ns.clone(), name }) {
                let _ = std::fs::remove_dir_all(account.path());
            }
        }
        // Only if empty.
        let _ = std::fs::remove_dir(namespace.path());
    }
}

fn create_private_dir(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("cannot create {}: {e} (--state-dir must be writable by keyless)", dir.display()))
}

/// The pod a set's tokens are bound to, and when to request them again.
type Bound = (String, Instant);

/// Requests every token of `account`, bound to one of its live pods (a Running one first), and
/// writes them.
async fn issue(shared: &Shared, account: &AccountRef, tokens: &TokenFiles) -> Result<Bound, String> {
    let mut pods: Vec<PodView> =
        shared.pods.views().into_iter().filter(|p| p.live() && &p.account == account).collect();
    pods.sort_by_key(|p| !p.running);
    let pod = pods.into_iter().next().ok_or_else(|| format!("no live pod of {account} on this node"))?;
    let mut earliest: Option<SystemTime> = None;
    for (path, audience) in tokens {
        let (token, expires) = shared.requester.request(account, audience, &pod).await?;
        write_token(path, &token)?;
        earliest = Some(earliest.map_or(expires, |e| e.min(expires)));
    }
    let now = keyless_core::clock::Clock::now(&SystemClock);
    let left = earliest.and_then(|e| e.duration_since(now).ok()).unwrap_or_default();
    Ok((pod.uid, Instant::now() + left.mul_f64(REFRESH_FRACTION)))
}

/// Keeps `account`'s tokens fresh: again at 80% of their lifetime, and at once when the pod they
/// are bound to leaves (the API server invalidates them with it).
async fn bind(shared: Arc<Shared>, account: AccountRef, tokens: TokenFiles, bound: Bound) {
    let (mut pod, mut refresh_at) = bound;
    let mut changes = shared.pods.changes();
    let mut failures = 0u32;
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(refresh_at) => {}
            () = gone(&shared.pods, &mut changes, &pod) => {}
        }
        match issue(&shared, &account, &tokens).await {
            Ok((uid, at)) => {
                failures = 0;
                (pod, refresh_at) = (uid, at);
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                let delay = Duration::from_secs(1u64 << failures.min(5));
                warn!(account = %account, error = %e, retry_in = ?delay, "cannot renew the ServiceAccount's tokens");
                tokio::time::sleep(delay).await;
                refresh_at = Instant::now();
            }
        }
    }
}

/// Resolves once the pod `uid` is no longer live on the node.
async fn gone(pods: &NodePods, changes: &mut tokio::sync::watch::Receiver<u64>, uid: &str) {
    loop {
        if !pods.views().iter().any(|p| p.uid == uid && p.live()) {
            return;
        }
        if changes.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_providers_read_keyless_nodes_token_files_and_no_shared_secret() {
        let sa = [
            (keyless_inject::AWS_ROLE_ARN, "arn:aws:iam::111122223333:role/app"),
            (keyless_inject::AZURE_CLIENT_ID, "11111111-1111-1111-1111-111111111111"),
            (keyless_inject::AZURE_TENANT_ID, "22222222-2222-2222-2222-222222222222"),
            (keyless_inject::AZURE_IDENTITY_HEADER_SECRET, "header"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        let (identities, _) = AnnotationSources { service_account: &sa }.identities(None).expect("identities");
        let options = Options {
            sidecar_env: vec![
                ("KEYLESS_AWS__STS_ENDPOINT".to_owned(), "https://127.0.0.1:1".to_owned()),
                ("KEYLESS_GCP__STS_ENDPOINT".to_owned(), "https://127.0.0.1:1".to_owned()),
            ],
            ..Options::default()
        };
        let account = AccountRef { namespace: "shop".to_owned(), name: "billing".to_owned() };
        let env = provider_env(&identities, &options, Path::new("/run/keyless-node/shop/billing"), &account);
        assert_eq!(env.get("KEYLESS_AWS__SESSION_NAME").map(String::as_str), Some("keyless-shop-billing"));
        assert_eq!(
            env.get("KEYLESS_AWS__TOKEN_FILE").map(String::as_str),
            Some("/run/keyless-node/shop/billing/aws-token")
        );
        assert_eq!(
            env.get("KEYLESS_AZURE__TOKEN_FILE").map(String::as_str),
            Some("/run/keyless-node/shop/billing/azure-token")
        );
        assert_eq!(env.get("KEYLESS_AWS__IMDS").map(String::as_str), Some("false"));
        assert_eq!(env.get("KEYLESS_AZURE__APP_SERVICE").map(String::as_str), Some("false"));
        assert_eq!(env.get("KEYLESS_AWS__STS_ENDPOINT").map(String::as_str), Some("https://127.0.0.1:1"));
        for absent in [
            "KEYLESS_LISTEN",
            "KEYLESS_AWS__AUTHORIZATION_TOKEN_FILE",
            "KEYLESS_AZURE__IDENTITY_HEADER",
            "KEYLESS_GCP__STS_ENDPOINT",
        ] {
            assert!(!env.contains_key(absent), "{absent}: {env:?}");
        }
    }
}

#[cfg(test)]
mod dir_tests {
    use super::*;

    #[test]
    fn the_directories_of_service_accounts_without_a_set_are_removed_and_nothing_else() {
        let state = tempfile::tempdir().expect("a directory");
        let keep = AccountRef { namespace: "shop".to_owned(), name: "billing".to_owned() };
        let gone = AccountRef { namespace: "shop".to_owned(), name: "old".to_owned() };
        let gone_too = AccountRef { namespace: "jobs".to_owned(), name: "nightly".to_owned() };
        for account in [&keep, &gone, &gone_too] {
            create_private_dir(&account_dir(state.path(), account)).expect("created");
            std::fs::write(account_dir(state.path(), account).join("aws-token"), "t").expect("written");
        }
        std::fs::write(state.path().join("serving"), "serving").expect("written");
        remove_stale_dirs(state.path(), &HashSet::from([keep.clone()]));
        assert!(account_dir(state.path(), &keep).join("aws-token").exists());
        assert!(!account_dir(state.path(), &gone).exists());
        assert!(!state.path().join("jobs").exists(), "an empty namespace directory goes too");
        assert!(state.path().join("serving").exists());
    }
}
