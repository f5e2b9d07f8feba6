//! IMDSv2 session tokens: random, unguessable, expiring, and bounded in number.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use keyless_core::Secret;
use rand::Rng as _;
use sha2::{Digest as _, Sha256};
use tokio::time::Instant;

/// Sessions are kept by the SHA-256 of their token: the store holds no secret, and a lookup's
/// timing says nothing about the token bytes.
type Digest = [u8; 32];

#[derive(Debug)]
struct ImdsSession {
    expires: Instant,
    last_used: u64,
}

#[derive(Debug, Default)]
struct Store {
    sessions: HashMap<Digest, ImdsSession>,
    uses: u64,
}

/// The live IMDSv2 sessions. At most `max` are held: when full, expired ones go first, then the
/// least recently used (a client that lost its session gets 401 and asks for a new one, as it
/// does when a session expires).
#[derive(Debug)]
pub(crate) struct ImdsSessions {
    store: Mutex<Store>,
    max: usize,
    ttl_max: Duration,
}

fn digest(token: &[u8]) -> Digest {
    Sha256::digest(token).into()
}

impl ImdsSessions {
    pub(crate) fn new(max: usize, ttl_max: Duration) -> Self {
        Self { store: Mutex::default(), max, ttl_max }
    }

    /// Opens a session of `ttl` (capped at the configured maximum): its token and granted TTL.
    pub(crate) fn open(&self, ttl: Duration) -> (Secret<String>, Duration) {
        let granted = ttl.min(self.ttl_max);
        let mut bytes = [0u8; 32];
        rand::rng().fill(&mut bytes);
        let token = URL_SAFE_NO_PAD.encode(bytes);
        let now = Instant::now();
        let mut store = self.store.lock().unwrap_or_else(PoisonError::into_inner);
        if store.sessions.len() >= self.max {
            store.sessions.retain(|_, s| s.expires > now);
        }
        if store.sessions.len() >= self.max {
            let oldest = store.sessions.iter().min_by_key(|(_, s)| s.last_used).map(|(d, _)| *d);
            if let Some(d) = oldest {
                store.sessions.remove(&d);
            }
        }
        store.uses += 1;
        let last_used = store.uses;
        store.sessions.insert(digest(token.as_bytes()), ImdsSession { expires: now + granted, last_used });
        (Secret::new(token), granted)
    }

    /// Whether `token` names a live session (and marks it used).
    pub(crate) fn check(&self, token: &[u8]) -> bool {
        let key = digest(token);
        let now = Instant::now();
        let mut store = self.store.lock().unwrap_or_else(PoisonError::into_inner);
        store.uses += 1;
        let uses = store.uses;
        match store.sessions.get_mut(&key) {
            Some(s) if s.expires > now => {
                s.last_used = uses;
                true
            }
            Some(_) => {
                store.sessions.remove(&key);
                false
            }
            None => false,
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.store.lock().unwrap_or_else(PoisonError::into_inner).sessions.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_session_expires_after_its_ttl() {
        let sessions = ImdsSessions::new(8, Duration::from_secs(21_600));
        let (token, granted) = sessions.open(Duration::from_secs(60));
        assert_eq!(granted, Duration::from_secs(60));
        assert!(sessions.check(token.expose().as_bytes()));
        tokio::time::advance(Duration::from_secs(59)).await;
        assert!(sessions.check(token.expose().as_bytes()));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(!sessions.check(token.expose().as_bytes()));
    }

    #[tokio::test(start_paused = true)]
    async fn the_granted_ttl_is_capped_by_the_configured_maximum() {
        let sessions = ImdsSessions::new(8, Duration::from_secs(300));
        let (token, granted) = sessions.open(Duration::from_secs(21_600));
        assert_eq!(granted, Duration::from_secs(300));
        tokio::time::advance(Duration::from_secs(300)).await;
        assert!(!sessions.check(token.expose().as_bytes()));
    }

    #[tokio::test]
    async fn unknown_tokens_are_refused_and_tokens_are_unique() {
        let sessions = ImdsSessions::new(8, Duration::from_secs(600));
        let (a, _) = sessions.open(Duration::from_secs(600));
        let (b, _) = sessions.open(Duration::from_secs(600));
        assert_ne!(a, b);
        assert!(a.expose().len() >= 43, "256 random bits");
        assert!(!sessions.check(b"not-a-session"));
        assert!(!sessions.check(b""));
    }

    #[tokio::test]
    async fn a_full_store_drops_the_least_recently_used_session() {
        let sessions = ImdsSessions::new(2, Duration::from_secs(600));
        let (first, _) = sessions.open(Duration::from_secs(600));
        let (second, _) = sessions.open(Duration::from_secs(600));
        assert!(sessions.check(first.expose().as_bytes()));
        let (third, _) = sessions.open(Duration::from_secs(600));
        assert_eq!(sessions.len(), 2);
        assert!(sessions.check(first.expose().as_bytes()));
        assert!(sessions.check(third.expose().as_bytes()));
        assert!(!sessions.check(second.expose().as_bytes()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_store_drops_expired_sessions_first() {
        let sessions = ImdsSessions::new(2, Duration::from_secs(600));
        let (short, _) = sessions.open(Duration::from_secs(1));
        let (long, _) = sessions.open(Duration::from_secs(600));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(sessions.check(long.expose().as_bytes()));
        let (_newest, _) = sessions.open(Duration::from_secs(600));
        assert_eq!(sessions.len(), 2);
        assert!(sessions.check(long.expose().as_bytes()));
        assert!(!sessions.check(short.expose().as_bytes()));
    }
}
