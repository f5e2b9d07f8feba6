//! `keyless emulate` in its own process, and the emulator's `/_emulator/` control API over HTTPS
//! (the same API `keyless dev`'s emulator serves).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::clients;
use crate::process::{Process, free_port};
use crate::wait::{STARTUP_DEADLINE, wait_until};

/// The emulated token services, as the control API names them.
pub const SERVICES: [&str; 4] = ["aws-sts", "gcp-sts", "gcp-iam", "azure-token"];

/// The emulator's control API: faults, quotas, counters, rotation, minting, identities.
#[derive(Debug, Clone)]
pub struct ControlApi {
    base: String,
    client: reqwest::Client,
}

impl ControlApi {
    /// The API of the emulator at `url`, whose CA is `ca`.
    pub fn new(url: &str, ca: &Path) -> Self {
        Self { base: url.trim_end_matches('/').to_owned(), client: clients::trusting(ca) }
    }

    /// HTTPS to the emulator (trusting its CA): for its token services, `/tokeninfo`, JWKS.
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// `{emulator URL}{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `POST /_emulator/faults` with `body`.
    pub async fn fault(&self, body: Value) {
        let r = self.client.post(self.url("/_emulator/faults")).json(&body).send().await.expect("the emulator answers");
        assert!(r.status().is_success(), "fault refused: {}", r.text().await.unwrap_or_default());
    }

    /// The same fault settings for every token service (`service` is added to `body`).
    pub async fn fault_all(&self, body: Value) {
        for service in SERVICES {
            let mut body = body.clone();
            body["service"] = service.into();
            self.fault(body).await;
        }
    }

    /// `POST /_emulator/quotas` for every token service: `per_second` calls on average, `burst` at
    /// once; calls over it are throttled as the cloud does (`per_second` 0: no quota).
    pub async fn quota_all(&self, per_second: f64, burst: u32) {
        for service in SERVICES {
            let body = serde_json::json!({ "service": service, "per_second": per_second, "burst": burst });
            let r =
                self.client.post(self.url("/_emulator/quotas")).json(&body).send().await.expect("the emulator answers");
            assert!(r.status().is_success(), "{service}: quota refused: {}", r.text().await.unwrap_or_default());
        }
    }

    /// `GET /_emulator/quotas`: each service's quota and how many calls it throttled.
    pub async fn quotas(&self) -> Value {
        self.get_json("/_emulator/quotas").await
    }

    /// Removes every fault and latency (lifetime caps stay).
    pub async fn clear_faults(&self) {
        let r = self.client.delete(self.url("/_emulator/faults")).send().await.expect("the emulator answers");
        assert!(r.status().is_success(), "clearing faults failed: {}", r.status());
    }

    /// `POST /_emulator/rotate`: every projected token rewritten, kubelet style.
    pub async fn rotate(&self) {
        let r = self.client.post(self.url("/_emulator/rotate")).send().await.expect("the emulator answers");
        assert!(r.status().is_success(), "rotate failed: {}", r.text().await.unwrap_or_default());
    }

    /// The per-service call counters (`aws-sts`, `gcp-sts`, `gcp-iam`, `azure-token`).
    pub async fn counters(&self) -> Value {
        self.get_json("/_emulator/counters").await
    }

    /// One service's call counter.
    pub async fn counter(&self, service: &str) -> u64 {
        let counters = self.counters().await;
        counters[service].as_u64().unwrap_or_else(|| panic!("no counter {service}: {counters}"))
    }

    /// `POST /_emulator/mint`: a token signed by the emulator's issuer with `claims`.
    pub async fn mint(&self, claims: Value) -> String {
        let r = self.client.post(self.url("/_emulator/mint")).json(&claims).send().await.expect("the emulator answers");
        assert!(r.status().is_success(), "mint refused: {}", r.text().await.unwrap_or_default());
        let body: Value = r.json().await.expect("a JSON body");
        body["token"].as_str().expect("a token").to_owned()
    }

    /// `POST /_emulator/trusted-issuers`: the emulator fetches `issuer`'s discovery document and
    /// JWKS (trusting `ca_pem` for HTTPS) and accepts its tokens from then on, as the clouds do with
    /// a registered OIDC provider.
    pub async fn trust_issuer(&self, issuer: &str, ca_pem: &str) {
        let (status, body) = self.register_issuer(&serde_json::json!({ "issuer": issuer, "ca_pem": ca_pem })).await;
        assert!((200..300).contains(&status), "trusting {issuer} refused ({status}): {body}");
    }

    /// `POST /_emulator/trusted-issuers` with `body` (`issuer`, optional `ca_pem`), accepted or
    /// not: `(status, body)`.
    pub async fn register_issuer(&self, body: &Value) -> (u16, String) {
        let url = self.url("/_emulator/trusted-issuers");
        let r = self.client.post(url).json(body).send().await.expect("the emulator answers");
        (r.status().as_u16(), r.text().await.unwrap_or_default())
    }

    /// The emulated Google's `/tokeninfo` of `access_token` (`email`, `sub`, ...); the test fails,
    /// naming `what` (the token), if the emulator refuses it.
    pub async fn tokeninfo(&self, access_token: &str, what: &str) -> Value {
        let request = self.client.get(self.url("/tokeninfo")).query(&[("access_token", access_token)]);
        let r = request.send().await.expect("the emulator answers");
        assert_eq!(r.status().as_u16(), 200, "tokeninfo refused {what}");
        r.json().await.expect("a JSON body")
    }

    /// The dev identities (`aws_role_arn`, `gcp_service_account`, `audiences`...).
    pub async fn identities(&self) -> Value {
        self.get_json("/_emulator/identities").await
    }

    async fn get_json(&self, path: &str) -> Value {
        let r = self.client.get(self.url(path)).send().await.expect("the emulator answers");
        assert!(r.status().is_success(), "GET {path}: {}", r.status());
        r.json().await.expect("a JSON body")
    }
}

/// `keyless emulate` in its own process.
#[derive(Debug)]
pub struct EmulatorProcess {
    pub process: Process,
    pub state: tempfile::TempDir,
    pub addr: SocketAddr,
    pub url: String,
    pub ca: PathBuf,
    pub control: ControlApi,
}

impl EmulatorProcess {
    /// Starts it on a free port and waits until its CA, its projected tokens and its API are there.
    pub async fn start() -> Self {
        let state = tempfile::tempdir().expect("a temporary directory");
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let state_dir = state.path().to_str().expect("a UTF-8 path");
        let process = Process::spawn(
            &["emulate", "--listen", &addr.to_string(), "--state-dir", state_dir],
            &[("KEYLESS_LOG", "info")],
        );
        let ca = state.path().join("ca.pem");
        let tokens = ["aws", "gcp", "azure"].map(|cloud| state.path().join("tokens").join(cloud).join("token"));
        wait_until("the emulator's CA and tokens", STARTUP_DEADLINE, || {
            let ready = ca.exists() && tokens.iter().all(|t| t.exists());
            async move { ready }
        })
        .await;
        let url = format!("https://{addr}");
        let control = ControlApi::new(&url, &ca);
        wait_until("the emulator's control API", STARTUP_DEADLINE, || async {
            control.client.get(control.url("/_emulator/counters")).send().await.is_ok()
        })
        .await;
        Self { process, state, addr, url, ca, control }
    }

    /// The projector's directory for `cloud` (`aws`, `gcp`, `azure`): `token -> ..data/token`.
    pub fn token_dir(&self, cloud: &str) -> PathBuf {
        self.state.path().join("tokens").join(cloud)
    }

    /// The projected token file of `cloud`.
    pub fn token_file(&self, cloud: &str) -> PathBuf {
        self.token_dir(cloud).join("token")
    }

    pub fn logs(&self) -> String {
        self.process.logs()
    }

    pub async fn stop(self) -> std::process::ExitStatus {
        self.process.stop().await
    }
}
