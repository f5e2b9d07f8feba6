//! What the tests of every keyless crate share, so that each test reads as a story and each crate's
//! own harness holds only what is specific to it. A dev-dependency only: no production crate
//! depends on it (`tests/dev_only.rs` checks every manifest).
//!
//! In-process (the adapters' and the emulator's tests):
//! - [`emulator`]: the emulator in the test's runtime, in a temporary directory, with a client.
//! - [`context`]: the `Context` a provider starts with (real or paused clock), cache policies.
//! - [`serving`]: a started provider's routes on a loopback port, readiness.
//! - [`clients`]: HTTP clients for loopback, clients trusting the emulator's CA (reqwest, AWS SDK).
//! - [`jwt`]: unsigned JWTs, unverified claims, verification against a JWKS.
//! - [`kubelet`]: token files written as the kubelet writes them, and as they go wrong.
//! - [`logs`]: tracing output captured in-process; the check that no secret was logged.
//! - [`child`]: a test re-run in a child process with an env of its own (env-only SDKs).
//!
//! Processes (the end-to-end suite):
//! - [`binary`]: the `keyless` binary, built by cargo for this test process: never a stale one.
//! - [`process`]: `keyless` subcommands as child processes with captured output.
//! - [`emulate`]: `keyless emulate` and the emulator's control API.
//! - [`sidecar`]: `keyless serve` on free ports with a test's configuration.
//! - [`dev`]: `keyless dev` and the app env it writes.
//! - [`proxy`]: a TCP relay whose failures the test chooses.
//! - [`sdk`]: Python, Node, Go and Java SDK clients run as unmodified apps.
//! - [`verify`]: proof that a credential an SDK client got is one the emulated cloud accepts.
//! - [`tools`]: the tools some tests need; a missing one fails under `CI=true`, and elsewhere the
//!   test is reported `ignored` (gated by `tests/build.rs`'s cfgs, see [`tools`]).
//! - [`probe`]: whether each tool is there; shared with `tests/build.rs`.
//! - [`load`]: continuous load on the native endpoints (the registry's list), and latency tallies.
//! - [`ports`]: loopback ports never handed out twice, for processes told theirs up front (also
//!   keyless-bench's).
//! - [`kube`]: a real etcd + kube-apiserver on loopback (`scripts/kube`), kubectl, TokenRequest.
//! - [`webhook`]: `keyless webhook` on loopback, its certificate, and the AdmissionReviews it gets.
//! - [`node`]: a real node (containerd + kubelet, controller-manager, scheduler) in a network
//!   namespace of its own, images without a registry, relays into the namespace.
//! - [`podman`]: podman with the harness's runtime settings, pods, the sidecar and host images.
//! - [`metrics`], [`clock`], [`wait`]: `/metrics` text, wall-clock formats, bounded waits.
#![forbid(unsafe_code)]

pub mod binary;
pub mod child;
pub mod clients;
pub mod clock;
pub mod context;
pub mod dev;
pub mod emulate;
pub mod emulator;
pub mod jwt;
pub mod kube;
pub mod kubelet;
pub mod load;
pub mod logs;
pub mod metrics;
pub mod node;
pub mod node_agent;
pub mod podman;
pub mod ports;
pub mod probe;
pub mod process;
pub mod proxy;
pub mod sdk;
pub mod serving;
pub mod sidecar;
pub mod tools;
pub mod verify;
pub mod wait;
pub mod webhook;
