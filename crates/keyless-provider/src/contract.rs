//! The provider contract: what each cloud adapter implements so the binary can configure, check,
//! start and serve it without knowing which cloud it is.
//!
//! Three stages, each a value:
//! 1. [`Provider`] (a type): its section name, the config type that section deserializes into,
//!    zero config from a workload-identity webhook's env vars, and validation into...
//! 2. [`Configured`]: validated settings, with nothing started and no file written. It declares
//!    the routes it will claim (so the binary finds collisions before anything listens), builds
//!    the [`Diagnosis`] that `keyless check` runs, and starts into...
//! 3. [`Started`]: the exchange and its cache running (pre-warm begun), serving its native routes.

use std::fmt;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

use keyless_core::{AppEnvVar, Attempt, Claims, Context, Readiness, SubjectToken};
use serde::de::DeserializeOwned;

use crate::dev::DevEmulator;
use crate::dispatch::Handler;
use crate::guard::Rules;
use crate::listen::AppHost;
use crate::routes::RouteClaim;
use crate::shadow::Shadowing;

/// A boxed, sendable future (the contract is object-safe: the binary holds `Box<dyn ...>`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Reads one environment variable (`keyless dev` passes one that reads nothing).
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Why a provider cannot be configured or started: the adapter's own error, whose message names
/// the key (or env var) and the fix.
pub struct ProviderError(Box<dyn std::error::Error + Send + Sync>);

impl<E: std::error::Error + Send + Sync + 'static> From<E> for ProviderError {
    fn from(e: E) -> Self {
        Self(Box::new(e))
    }
}

impl fmt::Display for ProviderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for ProviderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// One cloud. Implemented by a unit type per adapter crate; the binary lists these types once.
pub trait Provider: 'static {
    /// The config section (`[aws]`) and the `provider` label of logs and metrics: the one place
    /// the name is written.
    const NAME: &'static str;
    /// What [`Provider::from_env`] reads, for reports: "AWS_ROLE_ARN and AWS_WEB_IDENTITY_TOKEN_FILE".
    const ENV_ORIGIN: &'static str;
    /// The section's settings as written (TOML or `KEYLESS_<NAME>__<KEY>` env vars).
    type Config: Section;

    /// The section built from the env vars a workload-identity webhook injects, used when the
    /// config has no section; `None` when those variables are absent ([`Section::from_env`]).
    fn from_env(env: Env<'_>) -> Result<Option<Self::Config>, ProviderError> {
        Ok(Self::Config::from_env(env)?)
    }

    /// The local credential sources cloud SDKs rank above this provider's endpoints: what
    /// `keyless exec` and `keyless dev` set aside for the program they serve.
    const SHADOWING: Shadowing = Shadowing::NONE;

    /// The error codes the cloud's token services mean "too many requests" by, whatever the HTTP
    /// status (docs/protocols.md 9: AWS STS answers `Throttling` with 400): the adapter passes them
    /// to [`crate::upstream::throttling`], which treats any 429 as throttling besides.
    const THROTTLING_CODES: &'static [&'static str] = &[];

    /// The cloud's own security headers: what its clients send to claim they are local
    /// (`Metadata-Flavor`) or to carry a session token (IMDSv2's), refused when given twice
    /// ([`crate::Rules::single_headers`], where the provider's rules carry them; `Host` and
    /// `Authorization` are every cloud's, [`crate::guard::SINGLE_HEADERS`]).
    const SINGLE_HEADERS: &'static [&'static str] = &[];

    /// The section with `identity` (a named role, a service account, a client id: whatever
    /// `keyless exec --aws-role` and its siblings take) made the default identity, the one an SDK gets without
    /// naming one. An identity the section does not configure is an error naming those it does.
    fn select_default(config: Self::Config, identity: &str) -> Result<Self::Config, ProviderError> {
        let _ = config;
        Err(ProviderError::from(std::io::Error::other(format!(
            "{identity:?}: {} has no other identity to choose from",
            Self::NAME
        ))))
    }

    /// This provider's section against the local emulator (`keyless dev`, tests, benchmarks): its
    /// endpoints and CA, the emulator's identities for this cloud (and its second identities when
    /// asked), everything but the subject token's keys, which [`crate::DevConfig`] adds
    /// ([`Section::dev`]).
    fn dev_section(emulator: &DevEmulator<'_>) -> Result<crate::DevTable, ProviderError> {
        Self::Config::dev(emulator)
    }

    /// Validates the section (errors name the key and the fix). Writes nothing, starts nothing.
    fn configure(config: Self::Config, ctx: &Context) -> Result<Box<dyn Configured>, ProviderError>;
}

/// A provider's section as written ([`Provider::Config`]: TOML or `KEYLESS_<NAME>__<KEY>` env
/// vars), and the two ways it is built without a config file. The adapter writes these on its
/// config type; [`Provider::from_env`] and [`Provider::dev_section`] are them.
pub trait Section: DeserializeOwned + Send + 'static {
    /// The adapter's configuration error: its message names the key (or env var) and the fix.
    type Error: std::error::Error + Send + Sync + 'static;

    /// The section from the env vars a workload-identity webhook injects; `None` when they are
    /// absent.
    fn from_env(env: Env<'_>) -> Result<Option<Self>, Self::Error>;

    /// The section against the local emulator (see [`Provider::dev_section`]).
    fn dev(emulator: &DevEmulator<'_>) -> Result<crate::DevTable, ProviderError>;
}

/// A validated provider, not started.
pub trait Configured: Send + Sync {
    /// The identity as a report heading names it ("role arn:aws:iam::1:role/app (region eu-west-1)").
    fn identity(&self) -> String;

    /// Every route [`Started::routes`] will serve, with the config key that sets its path.
    fn routes(&self) -> Vec<RouteClaim>;

    /// The request rules [`Started::rules`] will apply, known before start: `keyless node`
    /// refuses callers in each route's native shape before any identity is started.
    fn rules(&self) -> Rules;

    /// What `keyless check` examines: the same settings, one exchange, the cloud-side binding.
    fn diagnosis(&self, ctx: &Context) -> Result<Box<dyn Diagnosis>, ProviderError>;

    /// Builds the exchange and cache, pins the configured identities (pre-warm starts; nothing
    /// waits for it) and performs what serving needs on disk (e.g. AWS's authorization token file).
    fn start<'a>(self: Box<Self>, ctx: &'a Context) -> BoxFuture<'a, Result<Box<dyn Started>, ProviderError>>;
}

/// One native route: a path in axum's route syntax (the one declared by a [`RouteClaim`]), the
/// method it answers and its handler, state attached. Any other method gets 405 with `Allow`.
pub struct NativeRoute {
    pub path: String,
    pub method: RouteMethod,
    pub handler: Handler,
}

/// The method a native route answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteMethod {
    /// `GET`, and `HEAD` with the same headers and no body.
    Get,
    Put,
    /// `POST` with a form body of at most [`MAX_FORM_BODY`] bytes, read before the handler runs
    /// and handed to it as the request's [`FormBody`] extension (an OAuth token endpoint).
    Post,
}

/// The largest request body a [`RouteMethod::Post`] route reads: an OAuth token request's form
/// (grant type, a subject token, scopes) is far shorter.
pub const MAX_FORM_BODY: usize = 16 * 1024;

/// The body of a [`RouteMethod::Post`] request, complete and within [`MAX_FORM_BODY`].
#[derive(Debug, Clone)]
pub struct FormBody(pub bytes::Bytes);

impl NativeRoute {
    /// A `GET` (and `HEAD`) route.
    pub fn get(path: impl Into<String>, handler: Handler) -> Self {
        Self { path: path.into(), method: RouteMethod::Get, handler }
    }

    /// A `PUT` route.
    pub fn put(path: impl Into<String>, handler: Handler) -> Self {
        Self { path: path.into(), method: RouteMethod::Put, handler }
    }

    /// A `POST` route reading a bounded form body ([`FormBody`]).
    pub fn post(path: impl Into<String>, handler: Handler) -> Self {
        Self { path: path.into(), method: RouteMethod::Post, handler }
    }
}

impl fmt::Debug for NativeRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NativeRoute").field("path", &self.path).field("method", &self.method).finish_non_exhaustive()
    }
}

/// A running provider.
pub trait Started: Send + Sync {
    /// The native routes, exactly the paths [`Configured::routes`] claimed.
    fn routes(&self) -> Vec<NativeRoute>;

    /// How the shared request rules answer on these routes (native error shapes, the host names
    /// the cloud's own clients use, headers every response carries).
    fn rules(&self) -> Rules;

    /// The caches whose pinned identities count for `/readyz`.
    fn readiness(&self) -> Vec<Arc<dyn Readiness>>;

    /// What an app needs to reach this provider through keyless at `app` (the `keyless dev` env
    /// file, `keyless exec`'s environment).
    fn app_env(&self, app: &AppHost) -> Vec<AppEnvVar>;

    /// A credential file for a program `keyless exec` runs (or `keyless dev`'s env file), standing
    /// in for a local credential file its SDKs would read instead of this provider's endpoints and
    /// that no variable moves for all of them ([`crate::ShadowFileKind::DirWith`]'s
    /// `read_at_default_by`): the SDKs rank the stand-in's variable above that file, and the
    /// stand-in leads them back to keyless. Written into `dir` (private, 0700; removed with the
    /// program's settings), files 0600. `None` (the default): the provider has no stand-in.
    fn stand_in(&self, _app: &AppHost, _dir: &Path) -> Result<Option<StandIn>, ProviderError> {
        Ok(None)
    }
}

/// A credential file written by [`Started::stand_in`]: the program gets `var=path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StandIn {
    pub var: &'static str,
    pub path: std::path::PathBuf,
    /// What the user must know: the programs that refuse the stand-in, and what to do for them.
    pub note: Option<&'static str>,
}

/// What `keyless check` asks of one provider. Never returns a secret: claims, audiences and
/// upstream error messages only.
pub trait Diagnosis: Send + Sync {
    /// The heading of the provider's part of the report.
    fn identity(&self) -> String;
    /// Where the exchange's subject token comes from.
    fn token_source(&self) -> keyless_core::SourceSpec;
    /// The audience the cloud expects on the subject token.
    fn expected_audience(&self) -> &str;
    /// Where that expectation comes from on the cloud side.
    fn audience_source(&self) -> &'static str;
    fn accepts_audience(&self, aud: &[String]) -> bool;
    /// What to change when the token's audience is not the expected one. Never "trust the
    /// token's audience": a token minted for another cloud must not become one this cloud takes.
    fn audience_fix(&self, claims: &Claims) -> String;
    /// One exchange per configured credential, outside any cache.
    fn exchange_once<'a>(&'a self, token: &'a SubjectToken) -> BoxFuture<'a, Vec<Attempt>>;
    /// The cloud-side objects a token with `claims` needs (placeholders without claims), accepted
    /// with audience `audience`: one line each, ready to paste.
    fn binding(&self, claims: Option<&Claims>, audience: &str) -> Vec<String>;
}
