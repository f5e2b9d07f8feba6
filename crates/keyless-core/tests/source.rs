//! The generic source driver under tokio's paused clock, with a scripted origin standing in for a
//! fetching source (GitHub Actions, a URL): fetch before expiry, fetch again when asked, keep the
//! last good token through failures and hangs, debounce change announcements.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use keyless_core::clock::{SharedClock, TokioClock};
use keyless_core::{
    ChangeFeed, Metrics, Schedule, SourceId, SourceKind, SubjectToken, TokenError, TokenOrigin, TokenSource,
};
use keyless_test_support::jwt::unsigned_jwt;
use keyless_test_support::logs::capture_logs;
use tokio::sync::watch;
use tokio::time::Instant;

/// GitHub Actions tokens live 5 minutes (docs/protocols.md 6.1).
const LIFETIME: Duration = Duration::from_secs(300);

fn start() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

fn schedule() -> Schedule {
    Schedule {
        debounce: Duration::from_millis(150),
        poll: Duration::from_secs(3600),
        before_exp: Duration::from_secs(60),
        near_exp: Duration::from_secs(5),
        after_failure: Duration::from_secs(5),
        read_timeout: Duration::from_secs(10),
        first_read_wait: None,
    }
}

/// What the scripted origin does on its n-th read (1-based).
enum Step {
    /// A token with `sub` = `fetch-N`, valid for [`LIFETIME`] from now.
    Token,
    Fail,
    Hang,
    /// [`Step::Token`] after 5 s.
    Slow,
}

/// Announcements the test makes by hand.
struct Announced(watch::Receiver<()>);

impl ChangeFeed for Announced {
    async fn changed(&mut self) {
        if self.0.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

struct Scripted {
    id: SourceId,
    clock: SharedClock,
    script: fn(usize) -> Step,
    reads: usize,
    announcements: Option<watch::Receiver<()>>,
    first_read_wait: Option<Duration>,
}

impl TokenOrigin for Scripted {
    type Changes = Announced;

    fn id(&self) -> &SourceId {
        &self.id
    }

    fn schedule(&self) -> Schedule {
        Schedule { first_read_wait: self.first_read_wait, ..schedule() }
    }

    fn changes(&mut self) -> Announced {
        Announced(self.announcements.take().unwrap())
    }

    async fn read(&mut self) -> Result<SubjectToken, TokenError> {
        self.reads += 1;
        let step = (self.script)(self.reads);
        if let Step::Slow = step {
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        match step {
            Step::Token | Step::Slow => {
                let jwt = unsigned_jwt(&format!("fetch-{}", self.reads), self.clock.now() + LIFETIME);
                Ok(SubjectToken::parse(&jwt).unwrap())
            }
            Step::Fail => Err(TokenError::Unavailable { from: self.id.clone(), reason: "HTTP 503".to_owned() }),
            Step::Hang => std::future::pending().await,
        }
    }
}

struct Harness {
    source: TokenSource,
    clock: SharedClock,
    announce: watch::Sender<()>,
    metrics: Metrics,
}

impl Harness {
    async fn start(script: fn(usize) -> Step) -> Self {
        Self::start_waiting(script, None).await
    }

    /// [`Harness::start`] with an origin whose first read is waited for at most `first_read_wait`.
    async fn start_waiting(script: fn(usize) -> Step, first_read_wait: Option<Duration>) -> Self {
        let clock: SharedClock = Arc::new(TokioClock::new(start()));
        let (announce, announcements) = watch::channel(());
        let id = SourceId::new(SourceKind::Fixed, "scripted");
        let origin = Scripted {
            id,
            clock: clock.clone(),
            script,
            reads: 0,
            announcements: Some(announcements),
            first_read_wait,
        };
        let metrics = Metrics::new();
        let source = TokenSource::start(origin, clock.clone(), metrics.clone()).await;
        Self { source, clock, announce, metrics }
    }

    fn held(&self) -> String {
        self.source.current().unwrap().claims().sub.clone().unwrap()
    }

    fn elapsed(&self) -> Duration {
        self.clock.now().duration_since(start()).unwrap()
    }

    /// Waits (paused time advancing to the next timer) until the source holds `sub`.
    async fn wait_for(&self, sub: &str) {
        let mut rx = self.source.subscribe();
        rx.wait_for(|t| t.as_ref().and_then(|t| t.claims().sub.as_deref()) == Some(sub)).await.unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn a_fetching_source_fetches_a_new_token_before_the_held_one_expires() {
    let h = Harness::start(|_| Step::Token).await;
    assert_eq!(h.held(), "fetch-1");
    for n in 2..=5u32 {
        h.wait_for(&format!("fetch-{n}")).await;
        // One minute (`before_exp`) before each 5-minute token expires: never a gap.
        assert_eq!(h.elapsed(), (LIFETIME - Duration::from_secs(60)) * (n - 1));
    }
    assert_eq!(h.source.reads(), 5);
    let series = r#"keyless_subject_token_expiry_timestamp_seconds{source="fixed",path=""}"#;
    assert!(h.metrics.encode().contains(series), "{}", h.metrics.encode());
}

#[tokio::test(start_paused = true)]
async fn reread_fetches_anew_and_returns_the_new_token_at_once() {
    let h = Harness::start(|_| Step::Token).await;
    let fresh = h.source.reread().await.unwrap();
    assert_eq!(fresh.claims().sub.as_deref(), Some("fetch-2"));
    assert_eq!(h.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn concurrent_rereads_share_one_read() {
    let h = Harness::start(|_| Step::Token).await;
    let (a, b, c) = tokio::join!(h.source.reread(), h.source.reread(), h.source.reread());
    for fresh in [a, b, c] {
        assert_eq!(fresh.unwrap().claims().sub.as_deref(), Some("fetch-2"));
    }
    assert_eq!(h.source.reads(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_failed_fetch_keeps_the_last_good_token_and_is_retried_soon_logging_once() {
    let logs = capture_logs();
    let h = Harness::start(|n| if (2..=3).contains(&n) { Step::Fail } else { Step::Token }).await;
    let held = h.source.reread().await.unwrap();
    assert_eq!(held.claims().sub.as_deref(), Some("fetch-1"), "the last good token is kept");
    assert!(matches!(h.source.last_error(), Some(TokenError::Unavailable { .. })));

    // Retried `after_failure` (5 s) after each failure, not at the hourly poll.
    h.wait_for("fetch-4").await;
    assert_eq!(h.elapsed(), Duration::from_secs(10));
    assert_eq!(h.source.last_error(), None);
    let logs = logs.text();
    assert_eq!(logs.matches("subject token source unusable").count(), 1, "{logs}");
    assert_eq!(logs.matches("subject token source is usable again").count(), 1, "{logs}");
}

#[tokio::test(start_paused = true)]
async fn a_fetch_that_hangs_times_out_and_the_last_good_token_is_kept() {
    let h = Harness::start(|n| if n == 2 { Step::Hang } else { Step::Token }).await;
    let started = Instant::now();
    let held = h.source.reread().await.unwrap();
    assert_eq!(started.elapsed(), schedule().read_timeout);
    assert_eq!(held.claims().sub.as_deref(), Some("fetch-1"));
    let err = h.source.last_error().unwrap();
    assert!(matches!(err, TokenError::TimedOut { .. }), "{err:?}");
    assert_eq!(err.to_string(), "no subject token from fixed scripted: it did not answer within 10s");
    h.wait_for("fetch-3").await;
}

#[tokio::test(start_paused = true)]
async fn a_first_fetch_that_hangs_does_not_hang_the_start() {
    let started = Instant::now();
    let h = Harness::start(|n| if n == 1 { Step::Hang } else { Step::Token }).await;
    assert_eq!(started.elapsed(), schedule().read_timeout);
    assert!(matches!(h.source.current(), Err(TokenError::TimedOut { .. })));
    h.wait_for("fetch-2").await;
}

#[tokio::test(start_paused = true)]
async fn first_read_waits_for_a_first_fetch_that_outlasts_the_start() {
    let h = Harness::start_waiting(|_| Step::Slow, Some(Duration::from_secs(1))).await;
    assert_eq!(h.elapsed(), Duration::from_secs(1), "the start waits only first_read_wait");
    assert!(h.source.current().is_err(), "nothing was read yet");
    let token = h.source.first_read().await.unwrap();
    assert_eq!(token.claims().sub.as_deref(), Some("fetch-1"));
    assert_eq!(h.elapsed(), Duration::from_secs(5));
    assert_eq!(h.source.reads(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_burst_of_changes_is_read_a_debounce_after_its_first_announcement() {
    let h = Harness::start(|_| Step::Token).await;
    // One announcement every 10 ms for a second: reads come every 150 ms + 10 ms (a debounce after
    // the first announcement after each read), not once per announcement and not only at the end.
    for _ in 0..100 {
        h.announce.send_replace(());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let during = h.source.reads() - 1;
    assert!((6..=7).contains(&during), "{during} reads during the burst");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(h.source.reads() - 1, 7, "the last announcement is read once");
}
