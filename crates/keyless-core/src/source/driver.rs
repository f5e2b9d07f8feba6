//! The one loop that keeps any [`TokenOrigin`] fresh and publishes what it reads.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{info, warn};

use super::{ChangeFeed as _, RereadRequest, Schedule, State, TokenOrigin};
use crate::clock::{SharedClock, instant_at};
use crate::metrics::Metrics;
use crate::token::{SubjectToken, TokenError};

pub(super) struct Driver<O: TokenOrigin> {
    origin: O,
    changes: O::Changes,
    schedule: Schedule,
    state: Arc<State>,
    clock: SharedClock,
    metrics: Metrics,
    /// The error last logged, so a broken source is logged once, not on every read.
    reported: Option<TokenError>,
    last_read: Instant,
}

impl<O: TokenOrigin> Driver<O> {
    /// Starts the origin's change feed, then reads it once.
    pub(super) async fn start(origin: O, state: Arc<State>, clock: SharedClock, metrics: Metrics) -> Self {
        let mut driver = Self::new(origin, state, clock, metrics);
        driver.read().await;
        driver
    }

    /// Starts the origin's change feed without reading (the caller asks for the first read).
    pub(super) fn new(mut origin: O, state: Arc<State>, clock: SharedClock, metrics: Metrics) -> Self {
        let changes = origin.changes();
        let schedule = origin.schedule();
        Self { origin, changes, schedule, state, clock, metrics, reported: None, last_read: Instant::now() }
    }

    pub(super) async fn run(mut self, mut rereads: mpsc::Receiver<RereadRequest>) {
        let mut pending: Option<Instant> = None;
        loop {
            let due = self.next_due();
            let due = pending.map_or(due, |at| at.min(due));
            tokio::select! {
                Some(first) = rereads.recv() => {
                    // Everyone who asked meanwhile gets the same fresh read.
                    let mut waiting = vec![first];
                    while let Ok(more) = rereads.try_recv() {
                        waiting.push(more);
                    }
                    pending = None;
                    self.read().await;
                    for done in waiting {
                        let _ = done.send(());
                    }
                }
                () = self.changes.changed() => {
                    pending.get_or_insert_with(|| Instant::now() + self.schedule.debounce);
                }
                () = tokio::time::sleep_until(due) => {
                    pending = None;
                    self.read().await;
                }
            }
        }
    }

    /// When to read next without being asked: the poll timer, sooner after a failure, and from
    /// `before_exp` ahead of the held token's `exp` on, every `near_exp`.
    fn next_due(&self) -> Instant {
        let s = &self.schedule;
        let mut due = self.last_read + s.poll;
        if self.reported.is_some() {
            due = due.min(self.last_read + s.after_failure);
        }
        let exp = self.state.token.borrow().as_ref().and_then(|t| t.claims().exp);
        if let Some(exp) = exp {
            let near = exp.checked_sub(s.before_exp).unwrap_or(exp);
            let near_exp = if self.clock.now() < near {
                instant_at(self.clock.as_ref(), near)
            } else {
                self.last_read + s.near_exp
            };
            due = due.min(near_exp);
        }
        due
    }

    async fn read(&mut self) {
        let timeout = self.schedule.read_timeout;
        let result = match tokio::time::timeout(timeout, self.origin.read()).await {
            Ok(result) => result,
            Err(_) => Err(TokenError::TimedOut { from: self.origin.id().clone(), after: timeout }),
        };
        self.last_read = Instant::now();
        match result {
            Ok(token) => self.publish(token),
            Err(e) => self.keep_last_good(e),
        }
        // Counted once its outcome is held: whoever waits for a read then finds it.
        self.state.reads.send_modify(|n| *n += 1);
    }

    fn publish(&mut self, token: SubjectToken) {
        let id = self.origin.id();
        if self.reported.take().is_some() {
            info!(source = %id, "subject token source is usable again");
        }
        self.state.set_error(None);
        let changed = self.state.token.send_if_modified(|held| {
            if held.as_deref() == Some(&token) {
                return false;
            }
            *held = Some(Arc::new(token.clone()));
            true
        });
        if changed {
            let claims = token.claims();
            info!(source = %id, %claims, "subject token loaded");
            if let Some(exp) = claims.exp {
                self.metrics.set_subject_token_expiry(id.kind().label(), id.path_label(), exp);
            }
        }
    }

    fn keep_last_good(&mut self, e: TokenError) {
        if self.reported.as_ref() != Some(&e) {
            let holding = self.state.token.borrow().is_some();
            warn!(error = %e, keeping_last_good_token = holding, "subject token source unusable");
            self.reported = Some(e.clone());
        }
        self.state.set_error(Some(e));
    }
}
