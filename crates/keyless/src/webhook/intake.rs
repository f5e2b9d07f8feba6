//! What a review may cost before it is answered (docs/injection.md, "Limits"): its body is at most
//! [`MAX_REVIEW_BYTES`] and must arrive by the request deadline; the bodies held at once are at
//! most [`BODY_BUDGET_BYTES`] together, counted as their bytes arrive (a sender that stalls holds
//! only what it sent); at most `--max-concurrent-reviews` are parsed and answered at once, and a
//! review that waits [`REVIEW_QUEUE_WAIT`] for its turn is asked to come back (429).
//!
//! Each refusal is a Kubernetes `Status` the API server's client reads: its message reaches the
//! error the API server reports, and the webhook's `failurePolicy` decides the pod (Fail: refused
//! with that message; Ignore: admitted without keyless).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt as _;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use keyless_provider::listener::{BodyError, RequestDeadline};

/// The largest AdmissionReview read. The API server accepts request bodies of at most 3 MiB (and
/// etcd stores objects of at most 1.5 MiB); the review wraps the pod, as JSON with its defaults
/// filled in, in a small envelope. 4 MiB takes any pod the API server can store, or dry-run from a
/// JSON request; a larger review is refused before it is read.
pub const MAX_REVIEW_BYTES: usize = 4 * 1024 * 1024;
/// Review bodies held at once (arriving, or waiting for their turn), all connections together:
/// eight of the largest. A body waits for room as it arrives, within its request deadline.
pub const BODY_BUDGET_BYTES: usize = 8 * MAX_REVIEW_BYTES;
/// How long a complete review waits for one of the review slots before it is answered 429.
pub const REVIEW_QUEUE_WAIT: Duration = Duration::from_secs(2);
/// The `Retry-After` of that 429: client-go's REST client, which the API server calls webhooks
/// through, retries such an answer after this long, within the webhook's `timeoutSeconds`.
const RETRY_AFTER_SECONDS: u64 = 1;

/// The bounds every review goes through.
#[derive(Debug, Clone)]
pub struct Intake {
    bodies: Arc<Semaphore>,
    reviews: Arc<Semaphore>,
}

/// A review body, read whole, and its turn: its review slot and its bytes' room are held until the
/// turn is dropped (the answer built).
#[derive(Debug)]
pub struct Turn {
    body: Vec<u8>,
    _slot: OwnedSemaphorePermit,
    _bytes: Option<OwnedSemaphorePermit>,
}

impl Turn {
    /// The body, for the review to parse and drop: the parsed document is then the only copy.
    pub fn take_body(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.body)
    }
}

/// Why a review was not read.
#[derive(Debug)]
pub enum Refusal {
    TooLarge { bytes: Option<usize> },
    TimedOut,
    Unreadable(String),
    Busy,
}

impl Intake {
    pub fn new(concurrent_reviews: usize) -> Self {
        Self {
            bodies: Arc::new(Semaphore::new(BODY_BUDGET_BYTES)),
            reviews: Arc::new(Semaphore::new(concurrent_reviews)),
        }
    }

    /// Reads `request`'s body within the bounds, then waits for a review slot.
    pub async fn admit(&self, request: Request) -> Result<Turn, Refusal> {
        let deadline = request.extensions().get::<RequestDeadline>().map(|d| d.0);
        let declared = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if declared.is_some_and(|n| n > MAX_REVIEW_BYTES) {
            return Err(Refusal::TooLarge { bytes: declared });
        }
        let mut body = Vec::with_capacity(declared.unwrap_or(0));
        let mut held: Option<OwnedSemaphorePermit> = None;
        let mut chunks = request.into_body().into_data_stream();
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(|e| match e.into_inner().downcast::<BodyError>() {
                Ok(e) => match *e {
                    BodyError::TimedOut(_) => Refusal::TimedOut,
                    e @ BodyError::Read(_) => Refusal::Unreadable(e.to_string()),
                },
                Err(e) => Refusal::Unreadable(e.to_string()),
            })?;
            if body.len() + chunk.len() > MAX_REVIEW_BYTES {
                return Err(Refusal::TooLarge { bytes: None });
            }
            let room = self.room(chunk.len(), deadline).await?;
            match &mut held {
                Some(held) => held.merge(room),
                None => held = Some(room),
            }
            body.extend_from_slice(&chunk);
        }
        let slot = match tokio::time::timeout(REVIEW_QUEUE_WAIT, Arc::clone(&self.reviews).acquire_owned()).await {
            Ok(Ok(slot)) => slot,
            _ => return Err(Refusal::Busy),
        };
        Ok(Turn { body, _slot: slot, _bytes: held })
    }

    /// Room for `bytes` more of body in the budget: waited for as a review slot is (at most
    /// [`REVIEW_QUEUE_WAIT`], and never past the request deadline), then the review is asked to
    /// come back (429): the budget is full of other reviews, not of this sender's slowness.
    async fn room(&self, bytes: usize, deadline: Option<Instant>) -> Result<OwnedSemaphorePermit, Refusal> {
        // A chunk is at most hyper's read buffer, far below u32::MAX.
        let bytes = u32::try_from(bytes).map_err(|_| Refusal::TooLarge { bytes: None })?;
        let queue_end = Instant::now() + REVIEW_QUEUE_WAIT;
        let until = deadline.map_or(queue_end, |deadline| deadline.min(queue_end));
        match tokio::time::timeout_at(until, Arc::clone(&self.bodies).acquire_many_owned(bytes)).await {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(_)) => Err(Refusal::Busy),
            Err(_) if deadline.is_some_and(|deadline| deadline <= Instant::now()) => Err(Refusal::TimedOut),
            Err(_) => Err(Refusal::Busy),
        }
    }
}

impl Refusal {
    /// The reason label of `keyless_webhook_errors_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::TooLarge { .. } => "too_large",
            Refusal::TimedOut => "request_timeout",
            Refusal::Unreadable(_) => "bad_request",
            Refusal::Busy => "busy",
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let (code, reason, message) = match self {
            Refusal::TooLarge { bytes } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "RequestEntityTooLarge",
                format!(
                    "keyless: the AdmissionReview{} is larger than the {} MiB keyless reviews; this pod is not injected",
                    bytes.map(|b| format!(" ({b} bytes)")).unwrap_or_default(),
                    MAX_REVIEW_BYTES / (1024 * 1024)
                ),
            ),
            Refusal::TimedOut => (
                StatusCode::REQUEST_TIMEOUT,
                "Timeout",
                "keyless: the AdmissionReview did not arrive in time".to_owned(),
            ),
            Refusal::Unreadable(e) => (StatusCode::BAD_REQUEST, "BadRequest", format!("keyless: {e}")),
            Refusal::Busy => (
                StatusCode::TOO_MANY_REQUESTS,
                "TooManyRequests",
                format!("keyless: too many reviews at once; retry in {RETRY_AFTER_SECONDS}s"),
            ),
        };
        let status = serde_json::json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": reason,
            "code": code.as_u16(),
        });
        let mut response = (code, axum::Json(status)).into_response();
        if code == StatusCode::TOO_MANY_REQUESTS {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECONDS));
        }
        if code == StatusCode::REQUEST_TIMEOUT || code == StatusCode::PAYLOAD_TOO_LARGE {
            // What is left of the body is not read: the connection cannot carry another request.
            response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn request(body: &'static [u8]) -> Request {
        axum::http::Request::builder()
            .header(header::CONTENT_LENGTH, body.len())
            .body(axum::body::Body::from(body))
            .unwrap()
    }

    #[tokio::test]
    async fn a_review_declared_larger_than_the_bound_is_refused_before_it_is_read() {
        let intake = Intake::new(1);
        let oversized = axum::http::Request::builder()
            .header(header::CONTENT_LENGTH, MAX_REVIEW_BYTES + 1)
            .body(axum::body::Body::empty())
            .unwrap();
        assert!(matches!(intake.admit(oversized).await, Err(Refusal::TooLarge { bytes: Some(_) })));
        let response = Refusal::TooLarge { bytes: Some(5 << 20) }.into_response();
        assert_eq!(response.status(), 413);
    }

    #[tokio::test(start_paused = true)]
    async fn a_review_waits_briefly_for_a_slot_then_is_asked_to_retry() {
        let intake = Intake::new(1);
        let first = intake.admit(request(b"{}")).await.unwrap();
        let asked = Instant::now();
        assert!(matches!(intake.admit(request(b"{}")).await, Err(Refusal::Busy)));
        assert_eq!(asked.elapsed(), REVIEW_QUEUE_WAIT, "it waited for a slot, then no longer");
        let response = Refusal::Busy.into_response();
        assert_eq!(response.status(), 429);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        drop(first);
        assert!(intake.admit(request(b"{}")).await.is_ok(), "a finished review frees its slot");
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_waits_for_room_in_the_budget_as_long_as_its_deadline_allows() {
        let intake = Intake::new(1);
        let budget = u32::try_from(BODY_BUDGET_BYTES).unwrap();
        let full = Arc::clone(&intake.bodies).acquire_many_owned(budget).await.unwrap();
        let asked = Instant::now();
        assert!(matches!(intake.admit(request(b"{}")).await, Err(Refusal::Busy)), "the budget stayed full");
        assert_eq!(asked.elapsed(), REVIEW_QUEUE_WAIT);
        let mut late = request(b"{}");
        late.extensions_mut().insert(RequestDeadline(Instant::now() + Duration::from_millis(500)));
        let asked = Instant::now();
        assert!(matches!(intake.admit(late).await, Err(Refusal::TimedOut)), "its deadline came first");
        assert_eq!(asked.elapsed(), Duration::from_millis(500));
        drop(full);
        assert!(intake.admit(request(b"{}")).await.is_ok(), "room again");
    }

    #[tokio::test]
    async fn a_bodys_bytes_and_its_slot_are_held_until_the_review_is_answered() {
        let intake = Intake::new(2);
        let mut turn = intake.admit(request(b"{\"a\":1}")).await.unwrap();
        assert_eq!(intake.bodies.available_permits(), BODY_BUDGET_BYTES - 7);
        assert_eq!(intake.reviews.available_permits(), 1);
        assert_eq!(turn.take_body(), b"{\"a\":1}");
        drop(turn);
        assert_eq!(intake.bodies.available_permits(), BODY_BUDGET_BYTES);
        assert_eq!(intake.reviews.available_permits(), 2);
    }
}
