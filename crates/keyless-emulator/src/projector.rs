//! A kubelet-like projector: one service-account token per cloud audience, rewritten on a period
//! with the kubelet's AtomicWriter sequence so that watchers see exactly what they see in a pod.

use std::fs;
use std::io::{self, Write as _};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use crate::Cloud;
use crate::clock;
use crate::error::EmulatorError;
use crate::issuer::{Issuer, MintClaims};

/// The name of the projected file, as in a pod's `serviceAccountToken.path`.
pub(crate) const TOKEN_FILE: &str = "token";
const DATA_LINK: &str = "..data";
const DATA_TMP_LINK: &str = "..data_tmp";

/// One projected token: where it goes and for which audience.
#[derive(Debug)]
struct Projection {
    cloud: Cloud,
    dir: PathBuf,
    audience: String,
}

#[derive(Debug)]
pub(crate) struct Projector {
    issuer: Arc<Issuer>,
    projections: Vec<Projection>,
    lifetime: Duration,
    /// Serialises periodic and on-demand rotations.
    writing: tokio::sync::Mutex<()>,
}

impl Projector {
    pub(crate) fn new(
        issuer: Arc<Issuer>,
        tokens_dir: &Path,
        audiences: [(Cloud, String); 3],
        lifetime: Duration,
    ) -> Self {
        let projections = audiences
            .into_iter()
            .map(|(cloud, audience)| Projection { cloud, dir: tokens_dir.join(cloud.dir_name()), audience })
            .collect();
        Self { issuer, projections, lifetime, writing: tokio::sync::Mutex::new(()) }
    }

    /// Writes a fresh token for every audience; returns once all are in place.
    pub(crate) async fn rotate(&self) -> Result<(), EmulatorError> {
        let _writing = self.writing.lock().await;
        let now = clock::now();
        let lifetime = i64::try_from(self.lifetime.as_secs()).unwrap_or(i64::MAX);
        for projection in &self.projections {
            let claims = MintClaims { exp_offset_secs: lifetime, ..MintClaims::new(projection.audience.clone()) };
            let token = self.issuer.mint(&claims, now)?;
            let dir = projection.dir.clone();
            let written = tokio::task::spawn_blocking(move || atomic_write(&dir, TOKEN_FILE, token.as_bytes(), now))
                .await
                .unwrap_or_else(|join| Err(io::Error::other(join.to_string())));
            written.map_err(|source| EmulatorError::Projector { path: projection.dir.clone(), source })?;
            tracing::debug!(cloud = ?projection.cloud, "projected a new service-account token");
        }
        Ok(())
    }

    /// Rotates every `every` until `shutdown` fires (or its sender is dropped).
    pub(crate) async fn run(self: Arc<Self>, every: Duration, mut shutdown: watch::Receiver<bool>) {
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {
                    if let Err(e) = self.rotate().await {
                        tracing::warn!(error = %e, "token rotation failed; retrying at the next period");
                    }
                }
                _ = shutdown.changed() => break,
            }
        }
    }
}

/// The kubelet's AtomicWriter, for one file, in its order:
/// 1. create `..YYYY_MM_DD_HH_MM_SS.nnnnnnnnn` beside the files;
/// 2. write the payload into it;
/// 3. create the user-visible symlink `token -> ..data/token` if missing;
/// 4. create `..data_tmp -> ..YYYY...`;
/// 5. rename `..data_tmp` to `..data` (atomic);
/// 6. remove the old dir.
pub(crate) fn atomic_write(dir: &Path, file_name: &str, payload: &[u8], now: SystemTime) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let data_link = dir.join(DATA_LINK);
    let old_dir = fs::read_link(&data_link).ok();

    // 1. A fresh timestamped directory (bumping the nanoseconds on the unlikely collision).
    let mut stamp = now;
    let ts_name = loop {
        let name = clock::atomic_writer_dir_name(stamp);
        match fs::create_dir(dir.join(&name)) {
            Ok(()) => break name,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => stamp += Duration::from_nanos(1),
            Err(e) => return Err(e),
        }
    };
    let ts_dir = dir.join(&ts_name);
    fs::set_permissions(&ts_dir, fs::Permissions::from_mode(0o755))?;

    // 2. The payload, mode 0600, no trailing newline.
    let file_path = ts_dir.join(file_name);
    let mut file = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&file_path)?;
    file.set_permissions(fs::Permissions::from_mode(0o600))?;
    file.write_all(payload)?;
    file.sync_all()?;
    drop(file);

    // 3. The user-visible symlink, only if missing.
    let visible = dir.join(file_name);
    if let Err(e) = fs::symlink_metadata(&visible) {
        if e.kind() != io::ErrorKind::NotFound {
            return Err(e);
        }
        std::os::unix::fs::symlink(Path::new(DATA_LINK).join(file_name), &visible)?;
    }

    // 4. and 5. Swap `..data` atomically through `..data_tmp`.
    let tmp_link = dir.join(DATA_TMP_LINK);
    match fs::remove_file(&tmp_link) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    std::os::unix::fs::symlink(&ts_name, &tmp_link)?;
    fs::rename(&tmp_link, &data_link)?;

    // 6. The previous payload directory.
    if let Some(old) = old_dir
        && old != Path::new(&ts_name)
        && old.file_name().is_some_and(|n| n.to_string_lossy().starts_with(".."))
    {
        fs::remove_dir_all(dir.join(old))?;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_swaps_data_and_removes_the_old_dir() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = clock::from_unix(1_795_354_867);
        atomic_write(dir.path(), "token", b"one", t0).unwrap();
        let first = fs::read_link(dir.path().join("..data")).unwrap();
        atomic_write(dir.path(), "token", b"two", t0).unwrap();
        let second = fs::read_link(dir.path().join("..data")).unwrap();
        assert_ne!(first, second, "a second write in the same nanosecond still gets its own dir");
        assert!(!dir.path().join(&first).exists());
        assert_eq!(fs::read(dir.path().join("token")).unwrap(), b"two");
        assert_eq!(fs::read_link(dir.path().join("token")).unwrap(), Path::new("..data/token"));
    }
}
