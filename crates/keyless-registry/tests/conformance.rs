//! One conformance test over every registered provider: what it claims before starting (the
//! routes checked for collisions before anything listens) is exactly what it serves once started.
//! A provider serving a route it did not claim would escape the collision check; one claiming a
//! route it does not serve would refuse another provider's for nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use keyless_core::clock::SystemClock;
use keyless_core::{CachePolicy, Context, Metrics};
use keyless_provider::{Configured, DevEmulator, DevToken, Provider};
use keyless_registry::{Visit, dev_config, visit};

/// Every provider configured from its section of `table`.
struct Configure<'a> {
    table: toml::Table,
    ctx: &'a Context,
    configured: Vec<(&'static str, Box<dyn Configured>)>,
}

impl Visit for Configure<'_> {
    fn provider<P: Provider>(&mut self) {
        let section = self.table.remove(P::NAME).unwrap_or_else(|| panic!("no [{}] section", P::NAME));
        let config: P::Config = section.try_into().unwrap_or_else(|e| panic!("[{}]: {e}", P::NAME));
        let configured = P::configure(config, self.ctx).unwrap_or_else(|e| panic!("[{}]: {e}", P::NAME));
        self.configured.push((P::NAME, configured));
    }
}

#[tokio::test]
async fn every_provider_serves_exactly_the_routes_it_claims() {
    let state = tempfile::tempdir().unwrap();
    let emulator = keyless_emulator::start(keyless_emulator::EmulatorConfig::new(state.path())).await.unwrap();
    let identities = emulator.identities_document();
    let url = emulator.url();
    // The empty environment keyless dev runs in: nothing of this machine's.
    let ctx = Context::new(Arc::new(SystemClock), Metrics::new(), CachePolicy::default(), Default::default())
        .with_host(keyless_core::Host::empty());
    for second_identities in [false, true] {
        let dev = DevEmulator {
            endpoint: &url,
            ca_file: emulator.ca_pem_path(),
            identities: &identities,
            state_dir: Some(state.path()),
            second_identities,
        };
        let config = dev_config(&dev, &|name| DevToken::File(emulator.token_path_named(name))).unwrap();
        let mut configure = Configure { table: config.to_toml().parse().unwrap(), ctx: &ctx, configured: Vec::new() };
        visit(&mut configure);
        assert!(!configure.configured.is_empty());
        for (name, configured) in configure.configured {
            let mut claimed: Vec<String> = configured.routes().into_iter().map(|c| c.route).collect();
            let started = configured.start(&ctx).await.unwrap_or_else(|e| panic!("{name}: {e}"));
            let mut served: Vec<String> = started.routes().into_iter().map(|r| r.path).collect();
            claimed.sort();
            served.sort();
            assert!(!served.is_empty(), "{name} serves nothing");
            assert_eq!(claimed, served, "{name} (second identities: {second_identities})");
        }
    }
}
