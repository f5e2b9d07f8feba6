//! The crate's one error type: every message says what failed and what to do about it.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Why the emulator could not start or could not complete an operation.
#[derive(Debug, thiserror::Error)]
pub enum EmulatorError {
    /// The configuration cannot work (e.g. a zero rotation period).
    #[error("invalid emulator configuration: {0}")]
    InvalidConfig(String),

    /// The listener could not be bound.
    #[error(
        "cannot listen on {addr}: {source}; if the port is in use, pick another one (port 0 picks a free port), \
         and use a loopback address unless the emulator must be reachable from elsewhere"
    )]
    Bind {
        /// The address that was asked for.
        addr: SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },

    /// The state directory (CA, tokens) cannot be created or written.
    #[error(
        "state directory {path} is not usable: {source}; create it and make it writable by this user, \
         or point the emulator at another directory"
    )]
    StateDir {
        /// The path that failed.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },

    /// Generating a TLS certificate or a signing key failed.
    #[error(
        "generating the emulator's {what} failed: {reason}; this is a bug or a broken crypto library, please report it"
    )]
    KeyGeneration {
        /// Which key or certificate.
        what: &'static str,
        /// The library's error.
        reason: String,
    },

    /// Writing a projected token failed.
    #[error(
        "writing the projected token into {path} failed: {source}; check free space and permissions of the state directory"
    )]
    Projector {
        /// The token directory.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },

    /// Signing a JWT failed.
    #[error("signing a JWT failed: {0}; this is a bug, please report it")]
    Signing(String),
}
