//! The budget of exchanges of keys nobody configured (fleet behaviour, docs/reliability.md): a client asking for ever
//! new audiences, scopes or resources must not get the pod's identity throttled by the cloud.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use super::CachePolicy;
use super::policy::{FOREVER, after};
use crate::exchange::ExchangeError;

/// The budget of exchanges of keys nobody configured, shared by every such key of one cache: a
/// token bucket of `adhoc_burst` tokens refilled one per `adhoc_interval`, kept as the generic
/// cell rate algorithm's one instant (no refill timer, no float).
pub(super) struct AdhocBudget {
    burst: u32,
    interval: Duration,
    /// `burst` intervals: how far ahead of now the schedule of spent tokens may run.
    tolerance: Duration,
    state: Mutex<BudgetState>,
}

struct BudgetState {
    /// When the bucket will be full again (the past: it is full).
    full_at: Instant,
    /// A refusal or delay was logged and no exchange was allowed at once since: the next ones
    /// are not logged (a client cycling keys would fill the log).
    refusing: bool,
}

/// The budget is spent: a new key is refused, an existing key's exchange waits.
pub(super) struct Spent {
    /// When the next token is available (for a new key: unless a waiting refresh reserves it).
    pub(super) ready_at: Instant,
    /// The first refusal or delay since an exchange was last allowed at once (the one worth a
    /// log line).
    pub(super) first: bool,
}

impl AdhocBudget {
    pub(super) fn new(policy: &CachePolicy) -> Self {
        // Capped like every deadline, so that the schedule and its tolerance agree.
        let interval = policy.adhoc_interval.min(FOREVER);
        Self {
            burst: policy.adhoc_burst,
            interval,
            tolerance: interval.saturating_mul(policy.adhoc_burst),
            state: Mutex::new(BudgetState { full_at: Instant::now(), refusing: false }),
        }
    }

    /// A token for a new key's first exchange, now or never: a new key does not wait (nor hold
    /// a driver) for a budget a client is busy spending.
    pub(super) fn try_take(&self, now: Instant) -> Result<(), Spent> {
        self.spend(now, false)
    }

    /// The next token for a key that exists (a refresh or a retry), reserved now so that new
    /// keys cannot take it first: `Ok` to start at once, else when it may start.
    pub(super) fn reserve(&self, now: Instant) -> Result<(), Spent> {
        self.spend(now, true)
    }

    fn spend(&self, now: Instant, reserve: bool) -> Result<(), Spent> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        // Spending one more token moves the instant the bucket is full again one interval on;
        // that is allowed while it stays within `burst` intervals of now.
        let full_at = after(state.full_at.max(now), self.interval);
        let allowed_at = full_at.checked_sub(self.tolerance).map_or(now, |at| at.max(now));
        let now_allowed = self.burst > 0 && allowed_at <= now;
        if now_allowed || reserve {
            state.full_at = full_at;
        }
        if now_allowed {
            state.refusing = false;
            Ok(())
        } else {
            let first = !std::mem::replace(&mut state.refusing, true);
            Err(Spent { ready_at: allowed_at, first })
        }
    }

    /// Why nothing was exchanged, and how to get more. `ready_in`: when a new key could be
    /// asked for again; `None` for a key whose refresh waits (a time published then would be
    /// stale by the time a request reads it). No key in it: the client knows what it asked for,
    /// and the log line names it.
    pub(super) fn spent(&self, provider: &str, ready_in: Option<Duration>) -> ExchangeError {
        let message = if self.burst == 0 {
            format!("keyless exchanges no {provider} key that is not in its configuration (cache.adhoc_burst = 0)")
        } else {
            let next = match ready_in {
                // Whole seconds, rounded up: "in 0s" would be a lie.
                Some(d) => format!(
                    "the next can start in {}",
                    humantime::format_duration(Duration::from_secs(
                        d.as_secs().saturating_add(u64::from(d.subsec_nanos() > 0))
                    ))
                ),
                None => "this key's next exchange waits for its turn".to_owned(),
            };
            format!(
                "keyless limits exchanges of {provider} keys that are not in its configuration to {} at once, \
                 then one every {}, and the limit is reached: {next}",
                self.burst,
                humantime::format_duration(self.interval),
            )
        };
        ExchangeError::retryable(message).with_code("KeylessRateLimited").with_hint(
            "list the ID-token audiences or resources the workload uses in the configuration \
             (gcp.id_token_audiences, azure.resources): configured keys are pre-warmed and never limited; or \
             raise cache.adhoc_burst or lower cache.adhoc_interval",
        )
    }
}
