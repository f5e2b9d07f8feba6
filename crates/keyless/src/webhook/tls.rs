//! The webhook's certificate, reloaded when its files change (cert-manager and the chart's
//! Secret rotate it in place, through the kubelet's atomic symlink swap): no restart, and a
//! handshake always gets a whole certificate and key pair. A broken new pair is logged and the
//! previous one kept.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tracing::{info, warn};

/// The certificate chain and key files, as read last.
type Loaded = (Vec<u8>, Vec<u8>);

#[derive(Debug)]
pub struct ReloadingCert {
    cert_file: PathBuf,
    key_file: PathBuf,
    current: RwLock<(Loaded, Arc<CertifiedKey>)>,
}

impl ReloadingCert {
    pub fn load(cert_file: &Path, key_file: &Path) -> Result<Arc<Self>, String> {
        let files = read(cert_file, key_file)?;
        let key = certified_key(&files, cert_file, key_file)?;
        Ok(Arc::new(Self {
            cert_file: cert_file.to_owned(),
            key_file: key_file.to_owned(),
            current: RwLock::new((files, key)),
        }))
    }

    /// Re-reads the files every `interval`, swapping the pair in when their bytes changed.
    pub fn reload_every(self: &Arc<Self>, interval: Duration) {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                this.reload();
            }
        });
    }

    fn reload(&self) {
        let files = match read(&self.cert_file, &self.key_file) {
            Ok(files) => files,
            Err(e) => return warn!("{e}; serving the previous certificate"),
        };
        if self.current.read().is_ok_and(|current| current.0 == files) {
            return;
        }
        match certified_key(&files, &self.cert_file, &self.key_file) {
            Ok(key) => {
                if let Ok(mut current) = self.current.write() {
                    *current = (files, key);
                    info!(cert = %self.cert_file.display(), "loaded the renewed TLS certificate");
                }
            }
            // Mid-rotation, one file may be new and the other old: the next tick sees both.
            Err(e) => warn!("{e}; serving the previous certificate"),
        }
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|current| Arc::clone(&current.1))
    }
}

fn read(cert_file: &Path, key_file: &Path) -> Result<Loaded, String> {
    let read = |path: &Path, flag: &str| {
        std::fs::read(path).map_err(|e| format!("cannot read {flag} {}: {e}", path.display()))
    };
    Ok((read(cert_file, "--tls-cert")?, read(key_file, "--tls-key")?))
}

fn certified_key(files: &Loaded, cert_file: &Path, key_file: &Path) -> Result<Arc<CertifiedKey>, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&files.0)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("--tls-cert {}: not PEM certificates: {e}", cert_file.display()))?;
    if chain.is_empty() {
        return Err(format!("--tls-cert {}: no certificate in it", cert_file.display()));
    }
    let key = PrivateKeyDer::from_pem_slice(&files.1)
        .map_err(|e| format!("--tls-key {}: not a PEM private key: {e}", key_file.display()))?;
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("--tls-key {}: unusable private key: {e}", key_file.display()))?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|e| {
        format!("--tls-cert {} and --tls-key {} do not belong together: {e}", cert_file.display(), key_file.display())
    })?;
    Ok(Arc::new(certified))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh self-signed pair for `name`, written to `dir` as cert.pem and key.pem.
    fn write_pair(dir: &Path, name: &str) -> Vec<u8> {
        let rcgen::CertifiedKey { cert, signing_key } =
            rcgen::generate_simple_self_signed(vec![name.to_owned()]).expect("generates a certificate");
        std::fs::write(dir.join("cert.pem"), cert.pem()).expect("writes cert");
        std::fs::write(dir.join("key.pem"), signing_key.serialize_pem()).expect("writes key");
        cert.der().to_vec()
    }

    fn served(cert: &ReloadingCert) -> Vec<u8> {
        let current = cert.current.read().expect("not poisoned");
        current.1.cert[0].to_vec()
    }

    #[test]
    fn a_renewed_pair_is_served_without_a_restart_and_a_broken_one_is_not() {
        let dir = tempfile::tempdir().expect("temp dir");
        let first = write_pair(dir.path(), "first.example");
        let cert = ReloadingCert::load(&dir.path().join("cert.pem"), &dir.path().join("key.pem")).expect("loads");
        assert_eq!(served(&cert), first);

        let second = write_pair(dir.path(), "second.example");
        cert.reload();
        assert_eq!(served(&cert), second, "the renewed certificate");

        std::fs::write(dir.path().join("key.pem"), "not a key").expect("writes");
        cert.reload();
        assert_eq!(served(&cert), second, "a broken pair keeps the previous one");
    }

    #[test]
    fn a_certificate_and_a_key_that_do_not_match_are_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        write_pair(dir.path(), "a.example");
        let other = tempfile::tempdir().expect("temp dir");
        write_pair(other.path(), "b.example");
        let err =
            ReloadingCert::load(&dir.path().join("cert.pem"), &other.path().join("key.pem")).expect_err("mismatch");
        assert!(err.contains("do not belong together"), "{err}");
    }
}
