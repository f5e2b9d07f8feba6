//! `tracing` output: text or JSON on stderr, filter from config `log` / `KEYLESS_LOG`, else
//! `RUST_LOG`, else `info`. Nothing here ever formats a secret: `Secret` redacts itself.

use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// rustls-platform-verifier logs an ERROR for every certificate it refuses: a fetching token
/// source or an exchange against a server with an unknown CA would repeat it at each retry
/// (every 5 s). keyless's own error carries the same cause with the fix (`ca_file`,
/// `SSL_CERT_FILE`) and is logged once per distinct error, so the verifier's target is off unless
/// the filter names it.
const VERIFIER: &str = "rustls_platform_verifier";

/// `filter` with the verifier's target off, unless it names that target.
fn quiet_verifier(filter: &str) -> String {
    match filter.trim() {
        "" => format!("{VERIFIER}=off"),
        f if f.contains(VERIFIER) => f.to_owned(),
        f => format!("{f},{VERIFIER}=off"),
    }
}

/// [`init`] with `KEYLESS_LOG`'s value: a filter it refuses names the variable.
pub fn init_from_variable(filter: Option<&str>, format: LogFormat) -> Result<(), String> {
    init(filter, format).map_err(|e| match filter {
        Some(_) => format!("{e} (set by the environment variable KEYLESS_LOG)"),
        None => e,
    })
}

pub fn init(filter: Option<&str>, format: LogFormat) -> Result<(), String> {
    let filter = match filter {
        Some(f) => {
            EnvFilter::try_new(quiet_verifier(f)).map_err(|e| format!("log = {f:?} is not a valid log filter: {e}"))?
        }
        None => {
            let from_env = std::env::var(EnvFilter::DEFAULT_ENV).ok().filter(|f| EnvFilter::try_new(f).is_ok());
            EnvFilter::new(quiet_verifier(from_env.as_deref().unwrap_or("info")))
        }
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    result.map_err(|e| format!("cannot start logging: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_verifier_is_quiet_unless_named() {
        assert_eq!(quiet_verifier("info"), "info,rustls_platform_verifier=off");
        assert_eq!(quiet_verifier("keyless=debug"), "keyless=debug,rustls_platform_verifier=off");
        assert_eq!(quiet_verifier("info,rustls_platform_verifier=debug"), "info,rustls_platform_verifier=debug");
        assert!(EnvFilter::try_new(quiet_verifier("warn")).is_ok());
    }
}
