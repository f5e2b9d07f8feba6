//! The token source against a faithful simulation of the kubelet's AtomicWriter, on a real
//! filesystem with real inotify. Waits are on the source's own change notifications.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use keyless_core::clock::SystemClock;
use keyless_core::{Metrics, TokenError, TokenShapeError, TokenSource, WatchOptions};

const WAIT: Duration = Duration::from_secs(10);

fn options() -> WatchOptions {
    WatchOptions {
        debounce: Duration::from_millis(5),
        // Long enough that only directory events (or an explicit reread) can explain a change.
        poll_interval: Duration::from_secs(3600),
        reread_before_exp: Duration::from_secs(60),
        near_exp_interval: Duration::from_secs(3600),
    }
}

fn in_an_hour() -> SystemTime {
    #[allow(clippy::disallowed_methods)] // real filesystem, real time
    let now = SystemTime::now();
    now + Duration::from_secs(3600)
}

async fn open(dir: &std::path::Path, options: WatchOptions) -> TokenSource {
    TokenSource::open(dir.join("token"), options, Arc::new(SystemClock), Metrics::new()).await
}

async fn wait_until_held(source: &TokenSource, expected: &str) {
    let mut rx = source.subscribe();
    let held =
        tokio::time::timeout(WAIT, rx.wait_for(|t| t.as_ref().is_some_and(|t| t.secret().expose() == expected))).await;
    assert!(held.is_ok(), "the source never held the newest token");
}

#[tokio::test]
async fn follows_a_thousand_atomic_writer_rotations() {
    let dir = tempfile::tempdir().unwrap();
    let first = common::jwt("rotation-0", in_an_hour());
    common::atomic_write(dir.path(), &first, 0);
    let source = open(dir.path(), options()).await;
    assert_eq!(source.current().unwrap().secret().expose(), &first);

    for generation in 1..=1000u64 {
        let token = common::jwt(&format!("rotation-{generation}"), in_an_hour());
        common::atomic_write(dir.path(), &token, generation);
        // Check after every rotation at first, then every 100: in between rotations come faster
        // than the debounce, as bursts do.
        if generation <= 20 || generation % 100 == 0 {
            wait_until_held(&source, &token).await;
        }
    }
    let held = source.current().unwrap();
    assert_eq!(held.claims().sub.as_deref(), Some("rotation-1000"));
    assert_eq!(source.last_error(), None);
}

#[tokio::test]
async fn keeps_the_last_good_token_when_the_file_is_deleted_emptied_or_garbage() {
    let dir = tempfile::tempdir().unwrap();
    let good = common::jwt("good", in_an_hour());
    common::atomic_write(dir.path(), &good, 0);
    let source = open(dir.path(), options()).await;

    common::overwrite(dir.path(), "");
    assert_eq!(source.reread().await.unwrap().secret().expose(), &good);
    assert!(matches!(source.last_error(), Some(TokenError::Malformed { shape: TokenShapeError::Empty, .. })));

    common::overwrite(dir.path(), "this is not a token");
    assert_eq!(source.reread().await.unwrap().secret().expose(), &good);
    assert!(matches!(source.last_error(), Some(TokenError::Malformed { .. })));

    std::fs::remove_file(dir.path().join("token")).unwrap();
    assert_eq!(source.reread().await.unwrap().secret().expose(), &good);
    assert!(matches!(source.last_error(), Some(TokenError::Missing { .. })));

    let next = common::jwt("next", in_an_hour());
    common::atomic_write(dir.path(), &next, 1);
    wait_until_held(&source, &next).await;
    assert_eq!(source.last_error(), None);
}

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn a_broken_file_is_logged_once_not_on_every_read() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let dir = tempfile::tempdir().unwrap();
    let good = common::jwt("good", in_an_hour());
    common::atomic_write(dir.path(), &good, 0);
    let source = open(dir.path(), options()).await;
    common::overwrite(dir.path(), "garbage");
    for _ in 0..25 {
        source.reread().await.unwrap();
    }
    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert_eq!(logs.matches("subject token file unusable").count(), 1, "{logs}");
    assert!(!logs.contains(&good), "the token itself was logged");
}

#[tokio::test]
async fn starts_without_a_token_and_picks_it_up_when_the_kubelet_writes_it() {
    let dir = tempfile::tempdir().unwrap();
    let source = open(dir.path(), options()).await;
    let err = source.current().unwrap_err();
    assert!(matches!(err, TokenError::Missing { .. }));
    assert!(err.to_string().contains("projected serviceAccountToken volume"), "{err}");

    let token = common::jwt("late", in_an_hour());
    common::atomic_write(dir.path(), &token, 0);
    wait_until_held(&source, &token).await;
}

#[tokio::test]
async fn watches_a_directory_that_was_removed_and_recreated() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("tokens");
    std::fs::create_dir(&dir).unwrap();
    let first = common::jwt("first", in_an_hour());
    common::atomic_write(&dir, &first, 0);
    let options = WatchOptions { poll_interval: Duration::from_millis(20), ..options() };
    let source = open(&dir, options).await;

    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::create_dir(&dir).unwrap();
    let second = common::jwt("second", in_an_hour());
    common::atomic_write(&dir, &second, 1);
    wait_until_held(&source, &second).await;

    // And later rotations in the new directory keep being followed.
    let third = common::jwt("third", in_an_hour());
    common::atomic_write(&dir, &third, 2);
    wait_until_held(&source, &third).await;
}
