//! What every adapter needs from the process around it: clock, metrics, cache policy, and one
//! shared [`TokenSource`] per distinct source.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::Mutex;

use crate::cache::{CachePolicy, CredentialCache};
use crate::clock::SharedClock;
use crate::exchange::Exchange;
use crate::metrics::Metrics;
use crate::source::{SourceSpec, TokenSource, WatchOptions};

/// Built once by the binary and handed to each adapter.
#[derive(Debug, Clone)]
pub struct Context {
    pub clock: SharedClock,
    pub metrics: Metrics,
    pub cache_policy: CachePolicy,
    pub watch_options: WatchOptions,
    sources: Arc<Mutex<HashMap<SourceSpec, TokenSource>>>,
}

impl Context {
    pub fn new(clock: SharedClock, metrics: Metrics, cache_policy: CachePolicy, watch_options: WatchOptions) -> Self {
        Self { clock, metrics, cache_policy, watch_options, sources: Arc::default() }
    }

    /// The token source `spec` describes, shared with every other user of the same spec (ARCHITECTURE.md:
    /// one source per distinct token path).
    pub async fn token_source(&self, spec: &SourceSpec) -> TokenSource {
        let key = spec.normalized();
        let mut sources = self.sources.lock().await;
        if let Some(source) = sources.get(&key) {
            return source.clone();
        }
        let source = TokenSource::open(&key, &self.watch_options, self.clock.clone(), self.metrics.clone()).await;
        sources.insert(key, source.clone());
        source
    }

    /// A credential cache over `exchange` with this context's clock, metrics and policy.
    pub fn cache<E: Exchange>(&self, exchange: E, tokens: TokenSource) -> CredentialCache<E> {
        CredentialCache::new(exchange, tokens, self.cache_policy.clone(), self.clock.clone(), self.metrics.clone())
    }
}
