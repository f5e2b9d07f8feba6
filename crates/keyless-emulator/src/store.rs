//! A bounded map of credentials the emulator issued, so that the credential-checking APIs
//! (GetCallerIdentity, IAM Credentials, tokeninfo) can recognise them.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::SystemTime;

/// At most this many live credentials per kind; beyond it the soonest-expiring one is forgotten.
const MAX_ENTRIES: usize = 50_000;

#[derive(Debug)]
pub(crate) struct Issued<T> {
    entries: Mutex<HashMap<String, (SystemTime, T)>>,
}

impl<T: Clone> Issued<T> {
    pub(crate) fn new() -> Self {
        Self { entries: Mutex::new(HashMap::new()) }
    }

    pub(crate) fn insert(&self, key: String, expires: SystemTime, value: T, now: SystemTime) {
        let mut entries = self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if entries.len() >= MAX_ENTRIES {
            entries.retain(|_, (exp, _)| *exp > now);
        }
        if entries.len() >= MAX_ENTRIES
            && let Some(oldest) = entries.iter().min_by_key(|(_, (exp, _))| *exp).map(|(k, _)| k.clone())
        {
            entries.remove(&oldest);
        }
        entries.insert(key, (expires, value));
    }

    /// The credential and its expiry, expired or not (callers answer "expired" differently from
    /// "unknown").
    pub(crate) fn get(&self, key: &str) -> Option<(SystemTime, T)> {
        let entries = self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        entries.get(key).cloned()
    }
}
