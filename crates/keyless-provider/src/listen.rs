//! The address an app in the pod dials to reach the credential listener.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// The app-facing host and port of a listen address: a wildcard listener (`0.0.0.0`, `[::]`) is
/// reached as `127.0.0.1` (on Linux a `[::]` socket also accepts IPv4), because Node's
/// `fromContainerMetadata` accepts only `127.0.0.1` and `localhost` for the container endpoint
/// (docs/protocols.md 2.2); any specific address is reached as itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppHost {
    addr: SocketAddr,
}

impl AppHost {
    pub fn for_listener(listen: SocketAddr) -> Self {
        let ip = if listen.ip().is_unspecified() { IpAddr::V4(Ipv4Addr::LOCALHOST) } else { listen.ip() };
        Self { addr: SocketAddr::new(ip, listen.port()) }
    }

    /// `127.0.0.1:9811` or `[::1]:9811`: what `GCE_METADATA_HOST` takes.
    pub fn authority(&self) -> String {
        self.addr.to_string()
    }

    /// `http://127.0.0.1:9811`, without a trailing slash: the base of every app-facing URL.
    pub fn http_base(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl fmt::Display for AppHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.addr, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_are_dialled_on_ipv4_loopback_and_specific_addresses_as_themselves() {
        let host = |listen: &str| AppHost::for_listener(listen.parse().expect("address")).http_base();
        assert_eq!(host("0.0.0.0:9811"), "http://127.0.0.1:9811");
        assert_eq!(host("[::]:9811"), "http://127.0.0.1:9811");
        assert_eq!(host("127.0.0.1:7"), "http://127.0.0.1:7");
        assert_eq!(host("127.0.0.2:7"), "http://127.0.0.2:7");
        assert_eq!(host("[::1]:7"), "http://[::1]:7");
        assert_eq!(AppHost::for_listener("[::]:5".parse().expect("address")).authority(), "127.0.0.1:5");
    }
}
