//! What keyless reads from the machine besides the files it is configured with: the environment
//! (zero-config detection: IRSA, Azure workload identity, GitHub Actions; a token source's
//! variable) and the host name (AWS's default session name). Carried in [`crate::Context`] beside
//! the clock, so detection is tested in-process with a made-up environment, and `keyless dev`
//! (whose identities are the emulator's) really runs in an empty one.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

type Lookup = dyn Fn(&str) -> Option<String> + Send + Sync;

/// The environment variables and host name one keyless process sees.
#[derive(Clone)]
pub struct Host {
    vars: Arc<Lookup>,
    hostname: Option<String>,
}

impl Host {
    /// This process's environment and `/etc/hostname` (read once, here).
    pub fn process() -> Self {
        Self {
            vars: Arc::new(|name: &str| std::env::var(name).ok()),
            hostname: std::fs::read_to_string("/etc/hostname").ok(),
        }
    }

    /// No variable and no host name (`keyless dev`).
    pub fn empty() -> Self {
        Self::from_vars(HashMap::new(), None)
    }

    /// Exactly `vars` and `hostname` (tests).
    pub fn from_vars(vars: HashMap<String, String>, hostname: Option<String>) -> Self {
        Self { vars: Arc::new(move |name: &str| vars.get(name).cloned()), hostname }
    }

    /// One variable's value, as set (possibly empty).
    pub fn var(&self, name: &str) -> Option<String> {
        (self.vars)(name)
    }

    /// The host file's content (untrimmed), if any.
    pub fn hostname(&self) -> Option<&str> {
        self.hostname.as_deref()
    }
}

impl fmt::Debug for Host {
    /// Never the values: some variables are secrets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Host").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_made_up_host_answers_only_what_it_was_given() {
        let host = Host::from_vars(HashMap::from([("A".to_owned(), "1".to_owned())]), Some("pod-1\n".to_owned()));
        assert_eq!(host.var("A").as_deref(), Some("1"));
        assert_eq!(host.var("PATH"), None, "not the process's");
        assert_eq!(host.hostname(), Some("pod-1\n"));
        let empty = Host::empty();
        assert_eq!((empty.var("HOME"), empty.hostname()), (None, None));
        assert_eq!(format!("{host:?}"), "Host { .. }");
    }
}
