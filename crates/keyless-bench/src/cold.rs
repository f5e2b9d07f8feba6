//! Single flight under a thundering herd: N connections, all open first, each sends its first
//! request for a key nothing has asked for yet at the same moment.

use std::sync::Arc;
use std::time::Duration;

use hyper::StatusCode;
use tokio::sync::Barrier;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::BenchError;
use crate::load::{self, Target};

/// Connections opened at once while setting up the herd (the listen backlog is finite).
const CONNECT_BATCH: usize = 100;

#[derive(Debug, Clone)]
pub struct Burst {
    pub ok: usize,
    pub failed: usize,
    /// From the release of the herd to the last answer.
    pub slowest: Duration,
    pub first_failure: Option<String>,
}

pub async fn burst(target: &Target, requests: usize) -> Result<Burst, BenchError> {
    let mut senders = Vec::with_capacity(requests);
    while senders.len() < requests {
        let batch = CONNECT_BATCH.min(requests - senders.len());
        let mut connecting = JoinSet::new();
        for _ in 0..batch {
            connecting.spawn(load::connect(target.addr));
        }
        while let Some(sender) = connecting.join_next().await {
            senders.push(sender.map_err(|e| BenchError::Request(format!("connecting: {e}")))??);
        }
    }
    let barrier = Arc::new(Barrier::new(requests + 1));
    let target = Arc::new(target.clone());
    let mut herd = JoinSet::new();
    for mut sender in senders {
        let (barrier, target) = (barrier.clone(), target.clone());
        herd.spawn(async move {
            barrier.wait().await;
            let outcome = load::send(&mut sender, &target).await;
            (outcome, Instant::now())
        });
    }
    barrier.wait().await;
    let released = Instant::now();
    let mut burst = Burst { ok: 0, failed: 0, slowest: Duration::ZERO, first_failure: None };
    while let Some(joined) = herd.join_next().await {
        let (outcome, answered) = joined.map_err(|e| BenchError::Request(format!("a herd request failed: {e}")))?;
        burst.slowest = burst.slowest.max(answered.saturating_duration_since(released));
        match outcome {
            Ok((StatusCode::OK, _)) => burst.ok += 1,
            other => {
                burst.failed += 1;
                if burst.first_failure.is_none() {
                    burst.first_failure = Some(match other {
                        Ok((status, _)) => format!("answered {status}"),
                        Err(e) => e.to_string(),
                    });
                }
            }
        }
    }
    Ok(burst)
}
