//! A started provider's routes served on a loopback port, as the binary serves them (behind the
//! shared request rules), minus the other providers and the binary's own accept loop.

use std::fmt::Debug;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use keyless_core::{AbortOnDrop, Context};
use keyless_provider::Started;

use crate::clients;
use crate::emulator::EmulatorEnv;
use crate::wait::wait_until;

/// A provider's router listening on `127.0.0.1`; dropping it stops serving.
#[derive(Debug)]
pub struct Served {
    pub addr: SocketAddr,
    _server: AbortOnDrop,
}

impl Served {
    /// `http://{addr}{path_and_query}`.
    pub fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{path_and_query}", self.addr)
    }
}

/// Serves `provider`'s routes (named `name`, as in the binary's `PROVIDERS`) on a fresh port.
pub async fn serve(name: &'static str, provider: &dyn Started) -> Served {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a loopback port");
    let addr = listener.local_addr().expect("the bound address");
    let router = keyless_provider::router(name, provider).expect("the provider's routes are servable");
    let server = tokio::spawn(async move {
        axum::serve(listener, router).await.expect("serving on loopback");
    });
    Served { addr, _server: AbortOnDrop::new(server) }
}

/// Waits (at most 20 s) until every configured identity of `provider` holds a valid credential, as
/// the binary's `/readyz` would report it.
pub async fn wait_ready(provider: &dyn Started) {
    let readiness = provider.readiness();
    wait_until("the pre-warm to finish (every configured identity ready)", Duration::from_secs(20), || {
        let ready = readiness.iter().all(|r| r.statuses().iter().all(|s| s.ready()));
        async move { ready }
    })
    .await;
}

/// `pub struct NAME(ProviderEnv<PROVIDER>)`, dereferencing to its [`ProviderEnv`]: an adapter's
/// test harness, to which the adapter's tests add the requests its protocol makes (a type of their
/// own, since they cannot add methods to `ProviderEnv`).
#[macro_export]
macro_rules! provider_harness {
    ($(#[$meta:meta])* $name:ident, $provider:ty) => {
        $(#[$meta])*
        pub struct $name($crate::serving::ProviderEnv<$provider>);

        impl ::std::ops::Deref for $name {
            type Target = $crate::serving::ProviderEnv<$provider>;

            fn deref(&self) -> &Self::Target {
                &self.0
            }
        }
    };
}

/// An adapter's test setting: the emulator, the provider started against it, its routes served on
/// loopback, and a plain client for them.
#[derive(Debug)]
pub struct ProviderEnv<P> {
    pub env: EmulatorEnv,
    pub provider: P,
    pub served: Served,
    /// For the provider's routes: no proxy, no redirects followed (they are under test).
    pub http: reqwest::Client,
}

impl<P: Started> ProviderEnv<P> {
    /// Starts the emulator, then provider `name` with the configuration `config` makes for that
    /// emulator, started in `ctx` by `start` (the adapter's `start`); serves its routes. Does not
    /// wait for the pre-warm: see [`wait_ready`].
    pub async fn start<C, E: Debug, F: Future<Output = Result<P, E>>>(
        name: &'static str,
        ctx: Context,
        config: impl FnOnce(&EmulatorEnv) -> C,
        start: impl FnOnce(C, Context) -> F,
    ) -> Self {
        let env = EmulatorEnv::start().await;
        let config = config(&env);
        let provider = start(config, ctx).await.unwrap_or_else(|e| panic!("{name} does not start: {e:?}"));
        let served = serve(name, &provider).await;
        Self { env, provider, served, http: clients::loopback() }
    }

    /// `http://{addr}{path_and_query}` of the provider's routes.
    pub fn url(&self, path_and_query: &str) -> String {
        self.served.url(path_and_query)
    }
}
