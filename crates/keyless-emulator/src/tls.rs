//! A throwaway CA and a server certificate for loopback (and any public host names), generated at
//! every start.
//!
//! Strict verifiers are the point: Python 3.13's `VERIFY_X509_STRICT` wants a critical
//! basicConstraints on the CA, key usage, an authority key identifier on the leaf and SANs (never
//! the CN) for the names; Go wants serverAuth in the EKU.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::ServerConfig;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::error::EmulatorError;

/// The generated CA (as PEM, for clients) and the server's TLS configuration.
#[derive(Debug)]
pub(crate) struct TlsMaterial {
    pub(crate) ca_pem: String,
    pub(crate) server_config: Arc<ServerConfig>,
}

/// A name clients reach the emulator by (`EmulatorConfig::hostnames`), validated once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HostName {
    /// A DNS name, e.g. a compose service name.
    Dns(String),
    /// An IP address (IPv6 without brackets).
    Ip(IpAddr),
}

impl HostName {
    pub(crate) fn parse(name: &str) -> Result<Self, EmulatorError> {
        if let Ok(ip) = name.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
            if ip.is_unspecified() {
                return Err(EmulatorError::InvalidConfig(format!(
                    "host name {name} is a wildcard address, which no client can connect to: \
                     give the name or address clients use to reach the emulator"
                )));
            }
            return Ok(Self::Ip(ip));
        }
        // RFC 1123 labels: what a certificate's dNSName and a URL's host both accept.
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if name.len() > 253 || !name.split('.').all(label_ok) {
            return Err(EmulatorError::InvalidConfig(format!(
                "host name {name:?} is not a DNS name or an IP address: give a name like `emulator` or \
                 `emulator.example.test` (letters, digits, `-` and dots; no scheme, port or path)"
            )));
        }
        Ok(Self::Dns(name.to_ascii_lowercase()))
    }
}

fn cert_error(reason: impl ToString) -> EmulatorError {
    EmulatorError::KeyGeneration { what: "TLS CA and server certificate", reason: reason.to_string() }
}

/// Generates the CA and a leaf for `127.0.0.1`, `::1`, `localhost`, `extra_ip` (the listen
/// address when it is a specific non-loopback one) and `hostnames`.
pub(crate) fn generate(extra_ip: Option<IpAddr>, hostnames: &[HostName]) -> Result<TlsMaterial, EmulatorError> {
    let ca_key = KeyPair::generate().map_err(cert_error)?;
    let mut ca_params = CertificateParams::default();
    ca_params.distinguished_name = DistinguishedName::new();
    ca_params.distinguished_name.push(DnType::CommonName, "keyless emulator CA");
    ca_params.distinguished_name.push(DnType::OrganizationName, "keyless");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key).map_err(cert_error)?;
    let ca = Issuer::new(ca_params, ca_key);

    let leaf_key = KeyPair::generate().map_err(cert_error)?;
    let mut dns_names = vec!["localhost".to_owned()];
    let mut ips = vec![IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V6(Ipv6Addr::LOCALHOST)];
    ips.extend(extra_ip.filter(|ip| !ip.is_loopback() && !ip.is_unspecified()));
    for name in hostnames {
        match name {
            HostName::Dns(dns) if !dns_names.contains(dns) => dns_names.push(dns.clone()),
            HostName::Ip(ip) if !ips.contains(ip) => ips.push(*ip),
            _ => {}
        }
    }
    let mut leaf_params = CertificateParams::new(dns_names).map_err(cert_error)?;
    leaf_params.distinguished_name = DistinguishedName::new();
    leaf_params.distinguished_name.push(DnType::CommonName, "keyless emulator");
    leaf_params.subject_alt_names.extend(ips.into_iter().map(SanType::IpAddress));
    leaf_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf_params.use_authority_key_identifier_extension = true;
    let leaf_cert = leaf_params.signed_by(&leaf_key, &ca).map_err(cert_error)?;

    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    let mut server_config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(cert_error)?
        .with_no_client_auth()
        .with_single_cert(vec![leaf_cert.der().clone()], key)
        .map_err(cert_error)?;
    // The server speaks HTTP/1.1 only; say so, so that clients never try h2.
    server_config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsMaterial { ca_pem: ca_cert.pem(), server_config: Arc::new(server_config) })
}
