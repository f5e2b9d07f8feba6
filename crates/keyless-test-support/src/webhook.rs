//! `keyless webhook` as a child process on loopback, and the AdmissionReviews the API server sends
//! it: what the webhook's end-to-end tests share (`tests/tests/webhook.rs`, `webhook_hostile.rs`,
//! `monitoring.rs`).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::process::{Process, free_port};
use crate::wait::{STARTUP_DEADLINE, holds_within};

/// `keyless webhook` on loopback, logging at `info`.
#[derive(Debug)]
pub struct WebhookProcess {
    pub process: Process,
    /// The TLS listener the API server calls (`--listen`).
    pub listen: SocketAddr,
    /// `/healthz`, `/readyz` and `/metrics` in plain HTTP (`--admin-listen`).
    pub admin: SocketAddr,
}

/// Where a webhook's files are: its serving certificate and key, and the kubeconfig it reads
/// ServiceAccounts through.
#[derive(Debug)]
pub struct WebhookFiles<'a> {
    pub cert: &'a Path,
    pub key: &'a Path,
    pub kubeconfig: &'a Path,
}

impl WebhookProcess {
    /// Started on `port` (a registration may name it before the webhook starts) and a free admin
    /// port, with `extra` flags; returns once its admin endpoint `ready` answers 2xx (`/healthz`:
    /// both listeners are bound; `/readyz`: the ServiceAccount cache holds its first list too),
    /// and fails with the webhook's log if it does not within [`STARTUP_DEADLINE`].
    pub async fn start(port: u16, files: &WebhookFiles<'_>, extra: &[&str], ready: &str) -> Self {
        let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let admin = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
        let (listen_arg, admin_arg) = (listen.to_string(), admin.to_string());
        let mut args = vec![
            "webhook",
            "--listen",
            &listen_arg,
            "--admin-listen",
            &admin_arg,
            "--tls-cert",
            path_str(files.cert),
            "--tls-key",
            path_str(files.key),
        ];
        args.extend_from_slice(extra);
        let process = Process::spawn(&args, &[("KUBECONFIG", path_str(files.kubeconfig)), ("KEYLESS_LOG", "info")]);
        let webhook = Self { process, listen, admin };
        let (client, url) =
            (reqwest::Client::builder().no_proxy().build().expect("a client"), webhook.admin_url(ready));
        let answered = holds_within(STARTUP_DEADLINE, || async {
            client.get(&url).send().await.is_ok_and(|r| r.status().is_success())
        })
        .await;
        assert!(
            answered,
            "the webhook's {ready} did not answer in {STARTUP_DEADLINE:?}; its log:\n{}",
            webhook.process.logs()
        );
        webhook
    }

    /// `path` on the admin listener.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// Its `/metrics` text.
    pub async fn metrics(&self) -> String {
        let client = reqwest::Client::builder().no_proxy().build().expect("a client");
        let response = client.get(self.admin_url("/metrics")).send().await.expect("/metrics answers");
        response.text().await.expect("the /metrics text")
    }
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 temporary path")
}

/// A self-signed serving certificate for `127.0.0.1` and `localhost`, written to `dir` as
/// `tls.crt` and `tls.key`: their paths and the certificate's PEM (what a client trusts).
pub fn self_signed_pair(dir: &Path) -> (PathBuf, PathBuf, String) {
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .expect("generates a certificate");
    let (cert_path, key_path) = (dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::write(&cert_path, cert.pem()).expect("writes the certificate");
    std::fs::write(&key_path, signing_key.serialize_pem()).expect("writes the key");
    (cert_path, key_path, cert.pem())
}

/// A kubeconfig written to `dir` naming an API server that is not there (nothing listens on its
/// port): the webhook's admin listener answers, its cache never syncs, and a ServiceAccount read
/// fails.
pub fn kubeconfig_of_no_api_server(dir: &Path) -> PathBuf {
    let path = dir.join("kubeconfig");
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: gone\n  cluster:\n    server: https://127.0.0.1:{}\n    \
         insecure-skip-tls-verify: true\nusers:\n- name: u\n  user:\n    token: t\ncontexts:\n- name: c\n  \
         context:\n    cluster: gone\n    user: u\ncurrent-context: c\n",
        free_port()
    );
    std::fs::write(&path, text).expect("writes the kubeconfig");
    path
}

/// An AdmissionReview of a Pod CREATE of `pod` in `namespace`, as the API server sends it, with
/// `uid` (the answer must carry it back).
pub fn pod_review(uid: &str, namespace: &str, pod: &Value) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": { "group": "", "version": "v1", "kind": "Pod" },
            "resource": { "group": "", "version": "v1", "resource": "pods" },
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": { "username": "system:serviceaccount:kube-system:replicaset-controller" },
            "object": pod,
            "oldObject": null,
            "dryRun": false,
        },
    })
}
