//! keyless-registry: the one list of the cloud providers keyless serves ([`visit`]), and what is
//! derived from it for every provider at once: the binary's registry (`crates/keyless/src/
//! providers.rs`), the configuration against the local emulator ([`dev_config`]) that
//! `keyless dev`, the end-to-end tests and the benchmarks run, and the native endpoints those
//! tests and benchmarks ask ([`endpoints`]).
//!
//! Architecture invariant: nothing else lists the providers; whatever needs each of them asks
//! this crate, and each provider answers through the `keyless-provider` contract.
#![forbid(unsafe_code)]

pub mod endpoints;

use keyless_provider::{DevConfig, DevEmulator, DevSection, DevToken, Provider, ProviderError};

/// What is done with each provider type.
pub trait Visit {
    fn provider<P: Provider>(&mut self);
}

/// Calls `visitor` with every provider, in the order they are configured, started and reported.
/// Adding a provider is one line here (ARCHITECTURE.md, "Adding a provider").
pub fn visit(visitor: &mut impl Visit) {
    visitor.provider::<keyless_aws::Aws>();
    visitor.provider::<keyless_gcp::Gcp>();
    visitor.provider::<keyless_azure::Azure>();
}

fn dev_sections() -> Vec<(&'static str, DevSection)> {
    struct Sections(Vec<(&'static str, DevSection)>);
    impl Visit for Sections {
        fn provider<P: Provider>(&mut self) {
            self.0.push((P::NAME, P::dev_section));
        }
    }
    let mut sections = Sections(Vec::new());
    visit(&mut sections);
    sections.0
}

/// Every provider's own security headers ([`Provider::SINGLE_HEADERS`]), each once, in
/// registration order: what a listener serving every provider refuses twice on each route besides
/// `Host` and `Authorization` (`keyless_provider::guard::SINGLE_HEADERS`).
pub fn single_headers() -> Vec<&'static str> {
    struct Headers(Vec<&'static str>);
    impl Visit for Headers {
        fn provider<P: Provider>(&mut self) {
            for header in P::SINGLE_HEADERS {
                if !self.0.contains(header) {
                    self.0.push(header);
                }
            }
        }
    }
    let mut headers = Headers(Vec::new());
    visit(&mut headers);
    headers.0
}

/// Every provider's section against `emulator`, each taking its subject token as `token(name)`
/// says; the caller adds its own settings ([`DevConfig::set`], [`DevConfig::set_in`]).
pub fn dev_config(
    emulator: &DevEmulator<'_>,
    token: &dyn Fn(&'static str) -> DevToken,
) -> Result<DevConfig, ProviderError> {
    DevConfig::new(&dev_sections(), emulator, token)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::path::Path;

    use super::*;

    /// The emulator's identities document, as `keyless dev` reads it.
    fn identities() -> serde_json::Value {
        keyless_emulator::DevIdentities::default().document("https://127.0.0.1:8443")
    }

    /// Every provider's dev section, each with its token, deserializes into that provider's own
    /// configuration type (which refuses unknown keys), with and without the second identities.
    #[test]
    fn every_dev_section_is_a_valid_section_of_its_provider() {
        struct Parse(toml::Table);
        impl Visit for Parse {
            fn provider<P: Provider>(&mut self) {
                let section = self.0.remove(P::NAME).unwrap_or_else(|| panic!("no [{}] section", P::NAME));
                if let Err(e) = section.try_into::<P::Config>() {
                    panic!("[{}]: {e}", P::NAME);
                }
            }
        }
        let identities = identities();
        for second_identities in [false, true] {
            let dev = DevEmulator {
                endpoint: "https://127.0.0.1:8443",
                ca_file: Path::new("/state/ca.pem"),
                identities: &identities,
                state_dir: Some(Path::new("/state")),
                second_identities,
            };
            let config =
                dev_config(&dev, &|name| DevToken::File(format!("/state/tokens/{name}/token").into())).unwrap();
            let mut parse = Parse(config.to_toml().parse().unwrap());
            visit(&mut parse);
            assert!(parse.0.is_empty(), "sections of no provider: {:?}", parse.0);
        }
    }

    /// `second_identities` adds each cloud's second identity, as the emulator names it.
    #[test]
    fn second_identities_name_the_emulators_second_identities() {
        let identities = identities();
        let dev = DevEmulator {
            endpoint: "https://127.0.0.1:8443",
            ca_file: Path::new("/ca.pem"),
            identities: &identities,
            state_dir: None,
            second_identities: true,
        };
        let text = dev_config(&dev, &|_| DevToken::File("/t".into())).unwrap().to_toml();
        for key in ["aws_second_role_arn", "gcp_second_service_account", "azure_second_client_id"] {
            let id = identities[key].as_str().unwrap();
            assert!(text.contains(id), "{key} {id} is not in:\n{text}");
        }
    }
}
