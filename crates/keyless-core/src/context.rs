//! What every adapter needs from the process around it: clock, metrics, cache policy, and one
//! shared [`TokenSource`] per distinct source.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::Mutex;

use crate::cache::{CachePolicy, CredentialCache};
use crate::clock::SharedClock;
use crate::exchange::Exchange;
use crate::host::Host;
use crate::metrics::Metrics;
use crate::source::{SourceSpec, TokenSource, WatchOptions};

/// Built once by the binary and handed to each adapter.
#[derive(Debug, Clone)]
pub struct Context {
    pub clock: SharedClock,
    pub metrics: Metrics,
    pub cache_policy: CachePolicy,
    pub watch_options: WatchOptions,
    /// The environment and host name configuration and sources read ([`Host::process`] unless
    /// [`Context::with_host`] says otherwise).
    pub host: Host,
    sources: Arc<Mutex<HashMap<SourceSpec, TokenSource>>>,
}

impl Context {
    pub fn new(clock: SharedClock, metrics: Metrics, cache_policy: CachePolicy, watch_options: WatchOptions) -> Self {
        Self { clock, metrics, cache_policy, watch_options, host: Host::process(), sources: Arc::default() }
    }

    /// This context reading `host` instead of the process's environment and host name. Its
    /// sources are its own: one opened under another host is not shared.
    #[must_use]
    pub fn with_host(self, host: Host) -> Self {
        Self { host, sources: Arc::default(), ..self }
    }

    /// [`Context::host`]'s variables, as the `&dyn Fn` the configuration code takes.
    pub fn env(&self) -> impl Fn(&str) -> Option<String> + Sync + '_ {
        |name| self.host.var(name)
    }

    /// The token source `spec` describes, shared with every other user of the same spec (ARCHITECTURE.md:
    /// one source per distinct token path).
    pub async fn token_source(&self, spec: &SourceSpec) -> TokenSource {
        let key = spec.normalized();
        let mut sources = self.sources.lock().await;
        if let Some(source) = sources.get(&key) {
            return source.clone();
        }
        let source =
            TokenSource::open(&key, &self.watch_options, &self.env(), self.clock.clone(), self.metrics.clone()).await;
        sources.insert(key, source.clone());
        source
    }

    /// A credential cache over `exchange` with this context's clock, metrics and policy.
    pub fn cache<E: Exchange>(&self, exchange: E, tokens: TokenSource) -> CredentialCache<E> {
        CredentialCache::new(exchange, tokens, self.cache_policy.clone(), self.clock.clone(), self.metrics.clone())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::clock::SystemClock;

    /// A source's variable is read from the context's host: the process's own environment has
    /// no such variable.
    #[tokio::test]
    async fn an_env_source_reads_the_contexts_environment() {
        let jwt = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.c2ln";
        let host = Host::from_vars(HashMap::from([("KEYLESS_TEST_ONLY_TOKEN".to_owned(), jwt.to_owned())]), None);
        let ctx = Context::new(Arc::new(SystemClock), Metrics::new(), CachePolicy::default(), WatchOptions::default());
        let spec = SourceSpec::Env("KEYLESS_TEST_ONLY_TOKEN".to_owned());
        assert!(ctx.token_source(&spec).await.current().is_err(), "the process has no such variable");
        let ctx = ctx.with_host(host);
        let token = ctx.token_source(&spec).await.current().expect("read from the context's host");
        assert_eq!(token.secret().expose(), jwt);
    }
}
