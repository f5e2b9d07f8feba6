//! The driver: one task per key, the only caller of `Exchange::exchange` for it (single-flight),
//! exchanging, refreshing ahead, retrying and publishing its [`super::Slot`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::exchange::{ErrorClass, Exchange, ExchangeError, Issued};
use crate::task::AbortOnDrop;
use crate::token::{SubjectToken, TokenError};

use super::policy::{RetryDelays, after, refresh_delay, throttled_delay};
use super::{Control, Entry, Shared, Slot, described};

/// A wall-clock instant for a log line. humantime prints only years 1970 to 9999: it panics
/// before, and fails after, which a JSON log formatter turns into a panic; an upstream can send
/// any expiry.
pub(super) fn loggable_time(at: SystemTime) -> String {
    match at.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(since) if since.as_secs() < 253_402_300_800 => humantime::format_rfc3339_seconds(at).to_string(),
        _ => format!("{at:?}"),
    }
}

pub(super) fn spawn_driver<E: Exchange>(shared: Arc<Shared<E>>, key: E::Key, configured: bool) -> Entry<E::Credential> {
    let (tx, rx) = watch::channel(Slot {
        credential: None,
        error: None,
        attempts: 0,
        in_flight: true,
        next_attempt: None,
        on_demand_after: None,
    });
    // Pinned before the driver can look: a configured key's first exchange spends no budget.
    let control = Arc::new(Control { pinned: AtomicBool::new(configured), ..Control::default() });
    let task = tokio::spawn(drive(shared, key, tx, control.clone()));
    Entry { slot: rx, control, _driver: AbortOnDrop::new(task) }
}

async fn drive<E: Exchange>(
    shared: Arc<Shared<E>>,
    key: E::Key,
    tx: watch::Sender<Slot<E::Credential>>,
    control: Arc<Control>,
) {
    let policy = &shared.policy;
    let clock = shared.clock.clone();
    let mut tokens = shared.tokens.subscribe();
    let mut delays = RetryDelays::new(policy);
    // Throttling answers since the last success.
    let mut throttles: u32 = 0;
    // The first exchange of a key nobody configured was paid for when its entry was created.
    let mut paid = true;
    loop {
        if !std::mem::take(&mut paid) && !control.pinned.load(Ordering::Relaxed) {
            wait_for_adhoc_budget(&shared, &key, &tx).await;
        }
        control.used.store(false, Ordering::Relaxed);
        tx.send_modify(|s| {
            s.in_flight = true;
            s.next_attempt = None;
            s.on_demand_after = None;
        });
        match attempt(&shared, &key).await {
            Ok(issued) => {
                delays = RetryDelays::new(policy);
                throttles = 0;
                let credential = Arc::new(issued.credential);
                let expires_at = credential.expires_at;
                let lifetime = expires_at.duration_since(clock.now()).unwrap_or(Duration::ZERO);
                let refresh_in = refresh_delay(policy, lifetime, shared.draws.unit());
                let refresh_at = after(Instant::now(), refresh_in);
                tx.send_modify(|s| {
                    s.credential = Some(credential);
                    s.error = None;
                    s.attempts += 1;
                    s.in_flight = false;
                });
                shared.publish_expiry(&key, &control, expires_at);
                tokio::time::sleep_until(refresh_at).await;
            }
            Err(err) => {
                let delay = match err.class {
                    ErrorClass::Terminal => policy.retry_max,
                    ErrorClass::Retryable | ErrorClass::RereadToken => delays.next_delay(shared.draws.unit()),
                    ErrorClass::Throttled => {
                        throttles = throttles.saturating_add(1);
                        let left = tx
                            .borrow()
                            .valid(clock.now())
                            .map(|c| c.expires_at.duration_since(clock.now()).unwrap_or(Duration::ZERO));
                        throttled_delay(policy, throttles, err.retry_after, left, shared.draws.unit())
                    }
                };
                let next = after(Instant::now(), delay);
                // Terminal errors wait for their period or a new token, whoever asks; throttled
                // ones for their delay: a waiting request must not make keyless ask again sooner
                // than the service allows.
                let on_demand = matches!(err.class, ErrorClass::Retryable | ErrorClass::RereadToken)
                    .then(|| after(Instant::now(), policy.retry_min));
                let throttled = err.class == ErrorClass::Throttled;
                // Listen before publishing: a request that reads the failure and then wakes us
                // must not be missed.
                let woken = control.wake.notified();
                tokio::pin!(woken);
                woken.as_mut().enable();
                tx.send_modify(|s| {
                    s.error = Some(err);
                    s.attempts += 1;
                    s.in_flight = false;
                    s.next_attempt = Some(next);
                    s.on_demand_after = on_demand;
                });
                tokio::select! {
                    () = tokio::time::sleep_until(next) => {}
                    // A new token may fix what failed: try it at once rather than after the backoff
                    // (not a throttled call: a new token does not lift the service's limit).
                    changed = tokens.changed(), if !throttled => if changed.is_err() {
                        tokio::time::sleep_until(next).await;
                    },
                    // A request is waiting with nothing valid to serve: retry as soon as allowed.
                    () = &mut woken, if on_demand.is_some() => {
                        tokio::time::sleep_until(on_demand.unwrap_or(next).min(next)).await;
                    }
                }
            }
        }
        // A key nobody configured and nobody asked for since the last exchange goes quiet until
        // it is asked for again (unused ID-token audiences must not cost upstream calls forever).
        if !control.pinned.load(Ordering::Relaxed) && !control.used.load(Ordering::Relaxed) {
            let woken = control.wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            control.dormant.store(true, Ordering::SeqCst);
            if !control.used.load(Ordering::SeqCst) {
                woken.await;
            }
            control.dormant.store(false, Ordering::SeqCst);
        }
    }
}

/// Waits for the ad-hoc budget's next token before a refresh or retry of a key nobody
/// configured. Its still-valid credential is served meanwhile; a request finding nothing valid is
/// told why at once when the wait outlasts `request_wait`.
async fn wait_for_adhoc_budget<E: Exchange>(shared: &Shared<E>, key: &E::Key, tx: &watch::Sender<Slot<E::Credential>>) {
    let now = Instant::now();
    let Err(spent) = shared.adhoc.reserve(now) else { return };
    let start_at = spent.ready_at;
    let provider = shared.exchange.provider();
    let mut err = shared.adhoc.spent(provider, None);
    if spent.first {
        let identity = shared.exchange.identity(key);
        let key = described(&shared.exchange, key);
        let wait = humantime::format_duration(Duration::from_secs(start_at.saturating_duration_since(now).as_secs()));
        warn!(provider, %identity, key = key.as_deref(), outcome = "rate_limited", error = %err, %wait,
            "exchange delayed (further delays and refusals are not logged until the budget suffices again)");
    }
    tx.send_modify(|s| {
        if let Some(last) = s.error.take().filter(|e| e.code != err.code) {
            err.message = format!("{}; the last exchange failed: {last}", err.message);
        }
        s.error = Some(err);
        s.in_flight = false;
        s.next_attempt = Some(start_at);
        s.on_demand_after = None;
    });
    tokio::time::sleep_until(start_at).await;
}

/// No subject token: retryable, unless the source cannot give one without a change.
pub(super) fn token_unavailable(e: TokenError) -> ExchangeError {
    let err = if e.heals() { ExchangeError::retryable(e.to_string()) } else { ExchangeError::terminal(e.to_string()) };
    err.with_code("SubjectTokenUnavailable")
}

/// One exchange, and on a token-rejected error one retry with a freshly read token.
async fn attempt<E: Exchange>(shared: &Shared<E>, key: &E::Key) -> Result<Issued<E::Credential>, ExchangeError> {
    let token = shared.tokens.current().map_err(token_unavailable)?;
    match exchange_once(shared, key, &token).await {
        Err(e) if e.class == ErrorClass::RereadToken => {
            let fresh = shared.tokens.reread().await.map_err(token_unavailable)?;
            exchange_once(shared, key, &fresh).await
        }
        other => other,
    }
}

async fn exchange_once<E: Exchange>(
    shared: &Shared<E>,
    key: &E::Key,
    token: &SubjectToken,
) -> Result<Issued<E::Credential>, ExchangeError> {
    let provider = shared.exchange.provider();
    let identity = shared.exchange.identity(key);
    let described_key = described(&shared.exchange, key);
    let subject = token.claims().sub.as_deref().unwrap_or("<no sub claim>");
    let started = Instant::now();
    let timeout = shared.policy.exchange_timeout;
    let result = match tokio::time::timeout(timeout, shared.exchange.exchange(key, token)).await {
        Ok(r) => r,
        Err(_) => Err(ExchangeError::retryable(format!(
            "the {provider} token service did not answer within {}",
            humantime::format_duration(timeout)
        ))),
    };
    let elapsed = started.elapsed();
    match &result {
        Ok(issued) => {
            let expires = loggable_time(issued.credential.expires_at);
            info!(provider, %identity, subject, key = described_key.as_deref(), outcome = "success", %expires,
                duration_ms = elapsed.as_millis() as u64, request_id = issued.request_id.as_deref().unwrap_or("-"),
                "exchange");
            shared.metrics.record_exchange(provider, &identity, "success", elapsed.as_secs_f64());
        }
        Err(e) => {
            warn!(provider, %identity, subject, key = described_key.as_deref(), outcome = e.class.label(), error = %e,
                duration_ms = elapsed.as_millis() as u64, request_id = e.request_id.as_deref().unwrap_or("-"),
                "exchange");
            shared.metrics.record_exchange(provider, &identity, e.class.label(), elapsed.as_secs_f64());
        }
    }
    result
}
