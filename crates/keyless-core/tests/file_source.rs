//! The file source against a faithful simulation of the kubelet's AtomicWriter and against hostile
//! files (a plain file, FIFOs, devices, huge files, forged claims), on a real filesystem with real
//! inotify. Waits are on the source's own change notifications, bounded.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use keyless_core::clock::SystemClock;
use keyless_core::{
    MAX_SUBJECT_TOKEN_BYTES, Metrics, SourceSpec, TokenError, TokenShapeError, TokenSource, WatchOptions,
};
use keyless_test_support::clock::wall_clock;
use keyless_test_support::jwt::unsigned_jwt;
use keyless_test_support::kubelet::{self, mkfifo, replace_with, token_dir};
use keyless_test_support::logs::capture_logs;

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
    wall_clock() + Duration::from_secs(3600)
}

async fn open(dir: &Path, options: WatchOptions) -> TokenSource {
    open_file(&dir.join("token"), options, Metrics::new()).await
}

async fn open_file(path: &Path, options: WatchOptions, metrics: Metrics) -> TokenSource {
    let spec = SourceSpec::File(path.to_owned());
    let opened = TokenSource::open(&spec, &options, &|_| None, Arc::new(SystemClock), metrics);
    tokio::time::timeout(WAIT, opened).await.expect("opening the source blocked")
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
    let first = unsigned_jwt("rotation-0", in_an_hour());
    kubelet::atomic_write(dir.path(), &first, 0);
    let source = open(dir.path(), options()).await;
    assert_eq!(source.current().unwrap().secret().expose(), &first);

    for generation in 1..=1000u64 {
        let token = unsigned_jwt(&format!("rotation-{generation}"), in_an_hour());
        kubelet::atomic_write(dir.path(), &token, generation);
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
    let good = unsigned_jwt("good", in_an_hour());
    kubelet::atomic_write(dir.path(), &good, 0);
    let source = open(dir.path(), options()).await;

    kubelet::overwrite(dir.path(), "");
    assert_eq!(source.reread().await.unwrap().secret().expose(), &good);
    assert!(matches!(source.last_error(), Some(TokenError::Malformed { shape: TokenShapeError::Empty, .. })));

    kubelet::overwrite(dir.path(), "this is not a token");
    assert_eq!(source.reread().await.unwrap().secret().expose(), &good);
    assert!(matches!(source.last_error(), Some(TokenError::Malformed { .. })));

    std::fs::remove_file(dir.path().join("token")).unwrap();
    assert_eq!(source.reread().await.unwrap().secret().expose(), &good);
    assert!(matches!(source.last_error(), Some(TokenError::Missing { .. })));

    let next = unsigned_jwt("next", in_an_hour());
    kubelet::atomic_write(dir.path(), &next, 1);
    wait_until_held(&source, &next).await;
    assert_eq!(source.last_error(), None);
}

#[tokio::test]
async fn a_broken_file_is_logged_once_not_on_every_read() {
    let logs = capture_logs();

    let dir = tempfile::tempdir().unwrap();
    let good = unsigned_jwt("good", in_an_hour());
    kubelet::atomic_write(dir.path(), &good, 0);
    let source = open(dir.path(), options()).await;
    kubelet::overwrite(dir.path(), "garbage");
    for _ in 0..25 {
        source.reread().await.unwrap();
    }
    let logs = logs.text();
    assert_eq!(logs.matches("subject token source unusable").count(), 1, "{logs}");
    assert!(!logs.contains(&good), "the token itself was logged");
}

#[tokio::test]
async fn starts_without_a_token_and_picks_it_up_when_the_kubelet_writes_it() {
    let dir = tempfile::tempdir().unwrap();
    let source = open(dir.path(), options()).await;
    let err = source.current().unwrap_err();
    assert!(matches!(err, TokenError::Missing { .. }));
    assert!(err.to_string().contains("projected serviceAccountToken volume"), "{err}");

    let token = unsigned_jwt("late", in_an_hour());
    kubelet::atomic_write(dir.path(), &token, 0);
    wait_until_held(&source, &token).await;
}

#[tokio::test]
async fn watches_a_directory_that_was_removed_and_recreated() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("tokens");
    std::fs::create_dir(&dir).unwrap();
    let first = unsigned_jwt("first", in_an_hour());
    kubelet::atomic_write(&dir, &first, 0);
    let options = WatchOptions { poll_interval: Duration::from_millis(20), ..options() };
    let source = open(&dir, options).await;

    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::create_dir(&dir).unwrap();
    let second = unsigned_jwt("second", in_an_hour());
    kubelet::atomic_write(&dir, &second, 1);
    wait_until_held(&source, &second).await;

    // And later rotations in the new directory keep being followed.
    let third = unsigned_jwt("third", in_an_hour());
    kubelet::atomic_write(&dir, &third, 2);
    wait_until_held(&source, &third).await;
}

#[tokio::test]
async fn a_plain_token_file_is_not_re_read_by_its_own_reads() {
    let (_root, dir) = token_dir();
    let path = dir.join("token");
    std::fs::write(&path, unsigned_jwt("plain", in_an_hour())).unwrap();
    let source = open_file(&path, options(), Metrics::new()).await;
    assert_eq!(source.reads(), 1);
    // Each read opens the file, an event in the watched directory (with the kubelet's layout it
    // happens in an unwatched subdirectory). When that counted, every read scheduled the next a
    // debounce (5 ms here) later: about 50 reads in this window.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(source.reads(), 1, "the source kept reading an unchanged file");

    // A real change is still seen, and read once.
    let next = unsigned_jwt("plain-2", in_an_hour());
    replace_with(&path, |staged| std::fs::write(staged, &next).unwrap());
    wait_until_held(&source, &next).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(source.reads(), 2, "one change, one read");
}

#[tokio::test]
async fn a_fifo_as_the_token_file_is_reported_without_blocking_and_replaced_later() {
    let (_root, dir) = token_dir();
    let path = dir.join("token");
    mkfifo(&path);
    // Opening a FIFO that no one writes to blocks for ever: `open_file` fails after WAIT if it does.
    let source = open_file(&path, options(), Metrics::new()).await;
    let err = source.current().unwrap_err();
    assert!(matches!(err, TokenError::NotARegularFile { kind: "a FIFO (named pipe)", .. }), "{err:?}");
    assert!(err.to_string().contains("not a regular file"), "{err}");

    let token = unsigned_jwt("after-the-fifo", in_an_hour());
    replace_with(&path, |staged| std::fs::write(staged, &token).unwrap());
    wait_until_held(&source, &token).await;
}

#[tokio::test]
async fn hostile_files_swapped_in_are_reported_and_the_last_good_token_kept() {
    let (_root, dir) = token_dir();
    let path = dir.join("token");
    let good = unsigned_jwt("good", in_an_hour());
    std::fs::write(&path, &good).unwrap();
    let source = open_file(&path, options(), Metrics::new()).await;

    type Make = fn(&Path);
    type Check = fn(&TokenError) -> bool;
    let cases: [(&str, Make, Check); 4] = [
        ("a FIFO", mkfifo, |e| matches!(e, TokenError::NotARegularFile { kind: "a FIFO (named pipe)", .. })),
        (
            "a symlink to /dev/zero",
            |p| std::os::unix::fs::symlink("/dev/zero", p).unwrap(),
            |e| matches!(e, TokenError::NotARegularFile { kind: "a character device", .. }),
        ),
        (
            // Sparse: a gigabyte to read for anyone who trusts the size, nothing on disk.
            "a 1 GiB file",
            |p| std::fs::File::create(p).unwrap().set_len(1 << 30).unwrap(),
            |e| matches!(e, TokenError::TooLarge { limit: MAX_SUBJECT_TOKEN_BYTES, .. }),
        ),
        (
            "a JWT one byte over the limit",
            |p| {
                let limit = usize::try_from(MAX_SUBJECT_TOKEN_BYTES).unwrap();
                let huge = unsigned_jwt(&"s".repeat(limit), in_an_hour());
                std::fs::write(p, &huge.as_bytes()[..=limit]).unwrap();
            },
            |e| matches!(e, TokenError::TooLarge { .. }),
        ),
    ];
    for (what, make, expected) in cases {
        replace_with(&path, make);
        let reread = tokio::time::timeout(WAIT, source.reread()).await;
        let held = reread.unwrap_or_else(|_| panic!("re-reading {what} blocked")).unwrap();
        assert_eq!(held.secret().expose(), &good, "{what}: the last good token was dropped");
        let err = source.last_error().unwrap();
        assert!(expected(&err), "{what}: {err:?}");
        assert!(err.to_string().contains(&path.display().to_string()), "{what}: {err}");
    }
}

#[tokio::test]
async fn the_expiry_metric_is_labelled_with_the_source_kind_and_path() {
    let (_root, dir) = token_dir();
    let path = dir.join("token");
    std::fs::write(&path, unsigned_jwt("metered", in_an_hour())).unwrap();
    let metrics = Metrics::new();
    let _source = open_file(&path, options(), metrics.clone()).await;
    let text = metrics.encode();
    let series =
        format!(r#"keyless_subject_token_expiry_timestamp_seconds{{source="file",path="{}"}}"#, path.display());
    assert!(text.contains(&series), "{series} missing from:\n{text}");
}

#[tokio::test]
async fn claims_with_line_breaks_and_escapes_cannot_forge_log_lines() {
    let logs = capture_logs();
    let (_root, dir) = token_dir();
    let path = dir.join("token");
    let forged = "x\\n2026-01-01T00:00:00.000000Z  INFO keyless: forged line\\r\\u001b[2K";
    std::fs::write(&path, unsigned_jwt(forged, in_an_hour())).unwrap();
    let source = open_file(&path, options(), Metrics::new()).await;
    assert!(source.current().is_ok());

    let logs = logs.text();
    assert_eq!(logs.lines().count(), 1, "one event, one line:\n{logs}");
    assert!(logs.contains(r"sub=x\n2026-01-01T00:00:00.000000Z  INFO keyless: forged line\r\u{1b}[2K"), "{logs}");
    assert!(!logs.trim_end_matches('\n').chars().any(char::is_control), "{logs:?}");
}

/// The process's inotify instances (`/proc/self/fd` entries that are one).
fn inotify_instances() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy() == "anon_inode:inotify")
        .count()
}

/// Writes `payload` to `path` the way a person's tool would: a temporary file renamed over it.
fn write_renamed(path: &Path, payload: &str) {
    let staged = path.with_extension("staged");
    std::fs::write(&staged, payload).unwrap();
    std::fs::rename(&staged, path).unwrap();
}

/// The kernel allows 128 inotify instances per user by default and every keyless on a node runs
/// as the same uid: one instance per token directory ran out at about 40 three-cloud pods on a
/// node (the 300-process fleet run, docs/benchmarks.md). Every source shares one.
#[tokio::test]
async fn token_directories_share_one_inotify_instance_and_each_follows_its_own_changes() {
    let dirs: Vec<tempfile::TempDir> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut sources = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        kubelet::atomic_write(dir.path(), &unsigned_jwt(&format!("dir-{i}-0"), in_an_hour()), 0);
        sources.push(open(dir.path(), options()).await);
    }
    // Two files of one directory: two subscribers of one watch.
    let shared = tempfile::tempdir().unwrap();
    let (first, second) = (shared.path().join("first"), shared.path().join("second"));
    write_renamed(&first, &unsigned_jwt("first-0", in_an_hour()));
    write_renamed(&second, &unsigned_jwt("second-0", in_an_hour()));
    let first_source = open_file(&first, options(), Metrics::new()).await;
    let second_source = open_file(&second, options(), Metrics::new()).await;
    assert_eq!(inotify_instances(), 1, "six sources in five directories, one inotify instance");

    // Each directory's events reach its own sources (polling is an hour: only events explain it).
    for (i, (dir, source)) in dirs.iter().zip(&sources).enumerate() {
        let next = unsigned_jwt(&format!("dir-{i}-1"), in_an_hour());
        kubelet::atomic_write(dir.path(), &next, 1);
        wait_until_held(source, &next).await;
    }
    let next = unsigned_jwt("second-1", in_an_hour());
    write_renamed(&second, &next);
    wait_until_held(&second_source, &next).await;

    // One subscriber of a directory leaving does not end the other's watch.
    drop(first_source);
    let last = unsigned_jwt("second-2", in_an_hour());
    write_renamed(&second, &last);
    wait_until_held(&second_source, &last).await;
    assert_eq!(inotify_instances(), 1);
}
