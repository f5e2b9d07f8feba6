//! The command source: runs a program (no shell) that prints a token, as text or as Google's
//! executable-sourced JSON (docs/protocols.md 6.3). Running programs is an explicit opt-in (Google
//! gates it with `GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES=1`; keyless with
//! [`ALLOW_COMMANDS_VAR`]), checked where the configuration is resolved.
//!
//! Bounded: the program runs in a process group of its own, killed as a whole when the read ends
//! (after its timeout the driver drops the read), so a helper's own children (a shell pipeline, a
//! browser login) cannot outlive it. Its output is read up to [`MAX_SUBJECT_TOKEN_BYTES`] plus a
//! JSON wrapper. Its stderr is discarded: Google's library mixes it into stdout, which breaks the
//! JSON and can leak what the program logs. It never sees keyless's own settings (`KEYLESS_*`,
//! secrets among them: `KEYLESS_AWS__AUTHORIZATION_TOKEN`, `KEYLESS_AZURE__IDENTITY_HEADER`).

use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use tokio::io::AsyncReadExt as _;

use super::url_origin::TokenFormat;
use super::{NoChanges, Schedule, SourceId, SourceKind, TokenOrigin};
use crate::clock::SharedClock;
use crate::printable::upstream;
use crate::token::{MAX_SUBJECT_TOKEN_BYTES, SubjectToken, TokenError};

/// Set to `1` to let keyless run command sources.
pub const ALLOW_COMMANDS_VAR: &str = "KEYLESS_ALLOW_COMMAND_SOURCES";
/// Google's gate for executable-sourced credentials; keyless honours it for those too.
pub const GOOGLE_ALLOW_EXECUTABLES_VAR: &str = "GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES";

/// Google's default and bounds for `timeout_millis`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
pub const MIN_TIMEOUT: Duration = Duration::from_secs(1);
pub const MAX_TIMEOUT: Duration = Duration::from_secs(120);

const MAX_OUTPUT_BYTES: u64 = MAX_SUBJECT_TOKEN_BYTES + 4096;

/// How the program prints the token.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub enum CommandFormat {
    /// The token as stdout (or a field of a JSON stdout).
    Token(TokenFormat),
    /// `{"version":1,"success":true,"token_type":...,"id_token":...,"expiration_time":...}`.
    #[default]
    GoogleExecutable,
}

/// A program and its arguments (never through a shell), with extra environment variables.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CommandSpec {
    pub argv: Vec<String>,
    pub timeout: Duration,
    pub format: CommandFormat,
    /// Set for the program only (Google's `GOOGLE_EXTERNAL_ACCOUNT_*` variables).
    pub env: Vec<(String, String)>,
}

impl CommandSpec {
    /// Checks what can be checked before running anything.
    pub fn validate(&self) -> Result<(), String> {
        if self.argv.first().is_none_or(|p| p.trim().is_empty()) {
            return Err("command is empty: give the program and its arguments, e.g. [\"/usr/bin/get-token\", \"--audience\", \"X\"]".into());
        }
        if !(MIN_TIMEOUT..=MAX_TIMEOUT).contains(&self.timeout) {
            return Err(format!("timeout {} is outside 1s..120s", humantime::format_duration(self.timeout)));
        }
        Ok(())
    }
}

/// Runs the command on every read.
#[derive(Debug)]
pub struct CommandOrigin {
    id: SourceId,
    spec: CommandSpec,
    clock: SharedClock,
}

impl CommandOrigin {
    pub fn new(spec: CommandSpec, clock: SharedClock) -> Self {
        let program = spec.argv.first().cloned().unwrap_or_default();
        Self { id: SourceId::new(SourceKind::Command, program), spec, clock }
    }

    async fn run(&self) -> Result<Vec<u8>, String> {
        self.spec.validate()?;
        let mut command = tokio::process::Command::new(&self.spec.argv[0]);
        command
            .args(&self.spec.argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0)
            .kill_on_drop(true);
        crate::appenv::remove_keyless_settings(&mut command);
        command.envs(self.spec.env.iter().map(|(k, v)| (k, v)));
        let mut child = ProcessGroup::spawn(&mut command).map_err(|e| format!("cannot start it: {e}"))?;
        let child = &mut child.leader;
        let mut stdout = Vec::new();
        if let Some(out) = child.stdout.take() {
            out.take(MAX_OUTPUT_BYTES + 1).read_to_end(&mut stdout).await.map_err(|e| e.to_string())?;
        }
        if stdout.len() as u64 > MAX_OUTPUT_BYTES {
            return Err(format!("it printed more than {MAX_OUTPUT_BYTES} bytes"));
        }
        let status = child.wait().await.map_err(|e| e.to_string())?;
        if !status.success() {
            return Err(format!("it exited with {status}"));
        }
        Ok(stdout)
    }

    fn token_in(&self, output: &[u8]) -> Result<String, String> {
        match &self.spec.format {
            CommandFormat::Token(format) => format.extract(output),
            CommandFormat::GoogleExecutable => google_executable_token(output, self.clock.now()),
        }
    }
}

/// A command started as the leader of its own process group. Dropping it (the read finished, or
/// was dropped at its timeout) kills the whole group: the leader alone would leave its children
/// running, holding whatever they opened.
struct ProcessGroup {
    leader: tokio::process::Child,
    id: Option<rustix::process::Pid>,
}

impl ProcessGroup {
    fn spawn(command: &mut tokio::process::Command) -> std::io::Result<Self> {
        let leader = command.spawn()?;
        let id = leader.id().and_then(|id| i32::try_from(id).ok()).and_then(rustix::process::Pid::from_raw);
        Ok(Self { leader, id })
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // The group's id stays the leader's pid while any member lives (or the leader is an
        // unreaped zombie), so this cannot reach an unrelated group then. ESRCH: nobody left.
        // Once a leader that left no member is reaped (a run that ended well), its pid is free
        // again: reuse between that wait and this kill needs the kernel to cycle through every pid
        // in between, and the new process to lead a group of its own.
        if let Some(id) = self.id {
            let _ = rustix::process::kill_process_group(id, rustix::process::Signal::KILL);
        }
    }
}

#[derive(Deserialize)]
struct ExecutableResponse {
    version: Option<u32>,
    success: Option<bool>,
    token_type: Option<String>,
    id_token: Option<String>,
    saml_response: Option<String>,
    expiration_time: Option<u64>,
    code: Option<String>,
    message: Option<String>,
}

const ID_TOKEN_TYPES: [&str; 2] = ["urn:ietf:params:oauth:token-type:id_token", "urn:ietf:params:oauth:token-type:jwt"];

/// The token of a Google executable response, checked as google-auth's `pluggable.py` does.
fn google_executable_token(output: &[u8], now: SystemTime) -> Result<String, String> {
    let r: ExecutableResponse = serde_json::from_slice(output).map_err(|_| {
        "its output is not the executable-sourced JSON (version, success, token_type, id_token)".to_owned()
    })?;
    if r.version != Some(1) {
        return Err(format!("its output has version {:?}; only version 1 is supported", r.version));
    }
    // The program's own words: escaped and capped once, as any answer from outside, and quoted
    // without `{:?}` (which would escape the escapes again).
    if r.success != Some(true) {
        let shown = |v: Option<String>| upstream(&v.unwrap_or_default()).into_owned();
        return Err(format!("it reported failure: code \"{}\", message \"{}\"", shown(r.code), shown(r.message)));
    }
    if r.saml_response.is_some() {
        return Err("it returned a SAML response; keyless exchanges OIDC tokens only".into());
    }
    let token_type = r.token_type.unwrap_or_default();
    if !ID_TOKEN_TYPES.contains(&token_type.as_str()) {
        return Err(format!("its token_type \"{}\" is not one of {ID_TOKEN_TYPES:?}", upstream(&token_type)));
    }
    if let Some(exp) = r.expiration_time {
        let now = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if exp <= now {
            return Err("its token has already expired (expiration_time is in the past)".into());
        }
    }
    r.id_token.ok_or_else(|| "its output has no id_token".to_owned())
}

impl TokenOrigin for CommandOrigin {
    type Changes = NoChanges;

    fn id(&self) -> &SourceId {
        &self.id
    }

    fn schedule(&self) -> Schedule {
        Schedule::fetching(Duration::from_secs(300), Duration::from_secs(10), self.spec.timeout)
    }

    fn changes(&mut self) -> NoChanges {
        NoChanges
    }

    async fn read(&mut self) -> Result<SubjectToken, TokenError> {
        let unavailable = |reason: String| TokenError::Unavailable { from: self.id.clone(), reason };
        let output = self.run().await.map_err(unavailable)?;
        let token = self.token_in(&output).map_err(unavailable)?;
        SubjectToken::parse(&token).map_err(|shape| TokenError::Invalid { from: self.id.clone(), shape })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn google_executable_json_is_checked_like_google_auth() {
        let ok = br#"{"version":1,"success":true,"token_type":"urn:ietf:params:oauth:token-type:id_token","id_token":"a.b.c","expiration_time":2000}"#;
        assert_eq!(google_executable_token(ok, at(1000)).as_deref(), Ok("a.b.c"));
        assert!(google_executable_token(ok, at(2000)).expect_err("expired").contains("expired"));
        let failed = br#"{"version":1,"success":false,"code":"401","message":"no session\nlevel=INFO"}"#;
        let err = google_executable_token(failed, at(0)).expect_err("failure");
        assert!(err.ends_with(r#"code "401", message "no session\nlevel=INFO""#), "escaped once: {err}");
        let saml = br#"{"version":1,"success":true,"token_type":"urn:ietf:params:oauth:token-type:saml2","saml_response":"x"}"#;
        assert!(google_executable_token(saml, at(0)).expect_err("saml").contains("SAML"));
        assert!(google_executable_token(b"a.b.c\n", at(0)).expect_err("not JSON").contains("not the executable"));
    }

    #[tokio::test]
    async fn a_failing_program_is_an_error_naming_its_exit() {
        let spec = CommandSpec {
            argv: vec!["false".into()],
            timeout: DEFAULT_TIMEOUT,
            format: CommandFormat::Token(TokenFormat::Text),
            env: Vec::new(),
        };
        let mut origin = CommandOrigin::new(spec, std::sync::Arc::new(crate::clock::SystemClock));
        let err = origin.read().await.expect_err("false fails").to_string();
        assert!(err.contains("exited"), "{err}");
    }
}
