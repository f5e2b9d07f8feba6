//! Google Cloud end to end: the real binary's GCE metadata server, driven by google-auth and by
//! raw HTTP, against the emulator's STS and IAM Credentials (which issue, count and fail on demand).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use keyless_test_support::clients;
use keyless_test_support::dev::Dev;
use keyless_test_support::emulate::{ControlApi, EmulatorProcess};
use keyless_test_support::jwt::claims_of;
use keyless_test_support::sdk::App;
use keyless_test_support::sidecar::Sidecar;
use keyless_test_support::wait::wait_until;
use reqwest::StatusCode;
use serde_json::{Value, json};

const CLOUD_PLATFORM: &str = "https://www.googleapis.com/auth/cloud-platform";
const READ_ONLY: &str = "https://www.googleapis.com/auth/devstorage.read_only";
const USERINFO: &str = "https://www.googleapis.com/auth/userinfo.email";
const PUBSUB: &str = "https://www.googleapis.com/auth/pubsub";
const TOKEN: &str = "instance/service-accounts/default/token";
/// What keyless answers when nothing valid is cached (the native text error of the metadata server).
const NO_CREDENTIAL: &str = "keyless: no Google credential available";

/// One answer of the metadata server.
#[derive(Debug)]
struct Reply {
    status: StatusCode,
    content_type: String,
    location: Option<String>,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        assert_eq!(self.content_type, "application/json", "google-auth parses only application/json: {self:?}");
        serde_json::from_str(&self.body).unwrap()
    }

    fn ok(self) -> Self {
        assert_eq!(self.status, StatusCode::OK, "{self:?}");
        self
    }
}

/// The metadata server as a raw HTTP client sees it. Every reply it returns was checked for
/// `Metadata-Flavor: Google` (docs/protocols.md 3.3: Node rejects any response without it, errors included).
#[derive(Clone)]
struct Metadata {
    http: reqwest::Client,
    root: String,
}

impl Metadata {
    fn of(dev: &Dev) -> Self {
        Self::at(dev.var("GCE_METADATA_HOST"))
    }

    fn at(host: &str) -> Self {
        Self { http: clients::loopback(), root: format!("http://{host}") }
    }

    /// `GET {root}{path}` with exactly `headers`.
    async fn raw(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        let mut request = self.http.get(format!("{}{path}", self.root));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.unwrap();
        let header = |name: &str| response.headers().get(name).map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(header("metadata-flavor").as_deref(), Some("Google"), "GET {path}: {:?}", response.headers());
        let (status, content_type, location) =
            (response.status(), header("content-type").unwrap_or_default(), header("location"));
        Reply { status, content_type, location, body: response.text().await.unwrap() }
    }

    /// `GET /computeMetadata/v1/{path}` as clients send it (with `Metadata-Flavor: Google`).
    async fn get(&self, path: &str) -> Reply {
        self.raw(&format!("/computeMetadata/v1/{path}"), &[("Metadata-Flavor", "Google")]).await
    }

    async fn access_token(&self, path: &str) -> String {
        self.get(path).await.ok().json()["access_token"].as_str().unwrap().to_owned()
    }
}

/// The emulator's `(gcp-sts, gcp-iam)` call counters.
async fn gcp_calls(emulator: &ControlApi) -> (u64, u64) {
    (emulator.counter("gcp-sts").await, emulator.counter("gcp-iam").await)
}

/// What the emulator says about an access token it issued (`GET /tokeninfo`).
async fn tokeninfo(dev: &Dev, token: &str) -> Value {
    let url = dev.emulator.url("/tokeninfo");
    let response = dev.emulator.client().get(url).query(&[("access_token", token)]).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK, "tokeninfo refused the token");
    response.json().await.unwrap()
}

fn scope_set(spaced: &str) -> Vec<&str> {
    let mut scopes: Vec<&str> = spaced.split_whitespace().collect();
    scopes.sort_unstable();
    scopes
}

fn parse_json(out: &str) -> Value {
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

fn with_vars(env: &BTreeMap<String, String>, vars: &[(&str, &str)]) -> BTreeMap<String, String> {
    let mut env = env.clone();
    env.extend(vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    env
}

/// `google.auth.default()` as an unmodified app calls it, then a refresh.
const DEFAULT_CREDENTIALS: &str = r#"
import json
import google.auth
from google.auth import compute_engine
from google.auth.transport.requests import Request
credentials, project = google.auth.default()
assert isinstance(credentials, compute_engine.Credentials), type(credentials)
credentials.refresh(Request())
print(json.dumps({"project": project, "email": credentials.service_account_email, "token": credentials.token}))
"#;

#[tokio::test]
async fn google_auth_default_picks_the_metadata_server_and_detects_the_project() {
    let dev = Dev::start().await;
    // Without GOOGLE_CLOUD_PROJECT (and with an empty HOME: no gcloud config) the project can only
    // come from the metadata server.
    let env = dev.env_without(&["GOOGLE_CLOUD_PROJECT"]);
    let out = parse_json(&dev.python_ok_in(DEFAULT_CREDENTIALS, &env).await);
    assert_eq!(out["project"], dev.var("KEYLESS_DEV_GCP_PROJECT_ID"), "{out}");
    assert_eq!(out["email"], dev.var("KEYLESS_DEV_GCP_SERVICE_ACCOUNT"), "{out}");
    assert!(out["token"].as_str().unwrap().starts_with("ya29."), "{out}");

    let with_project = parse_json(&dev.python_ok(DEFAULT_CREDENTIALS).await);
    assert_eq!(with_project["project"], dev.var("KEYLESS_DEV_GCP_PROJECT_ID"));
    assert_eq!(with_project["token"], out["token"], "one cached token for the default scopes");
}

#[tokio::test]
async fn compute_engine_credentials_refresh_and_the_emulator_tokeninfo_accepts_the_token() {
    let dev = Dev::start().await;
    let script = r#"
import json, os
import requests
from google.auth import _helpers, compute_engine
from google.auth.transport.requests import Request
credentials = compute_engine.Credentials()
credentials.refresh(Request())
info = requests.get(os.environ["KEYLESS_DEV_EMULATOR_URL"] + "/tokeninfo",
                    params={"access_token": credentials.token}, timeout=10)
print(json.dumps({
    "token": credentials.token,
    "seconds_left": (credentials.expiry - _helpers.utcnow()).total_seconds(),
    "valid": credentials.valid,
    "email": credentials.service_account_email,
    "scopes": credentials.scopes,
    "tokeninfo_status": info.status_code,
    "tokeninfo": info.json(),
}))
"#;
    let out = parse_json(&dev.python_ok(script).await);
    let service_account = dev.var("KEYLESS_DEV_GCP_SERVICE_ACCOUNT");
    assert!(!out["token"].as_str().unwrap().is_empty(), "{out}");
    let seconds_left = out["seconds_left"].as_f64().unwrap();
    // Served well over google-auth's 3m45s refresh margin (docs/protocols.md section 5).
    assert!((1800.0..=3600.0).contains(&seconds_left), "{out}");
    assert_eq!(out["valid"], true, "{out}");
    assert_eq!(out["email"], service_account, "{out}");
    assert_eq!(out["scopes"], json!([CLOUD_PLATFORM]), "{out}");

    assert_eq!(out["tokeninfo_status"], 200, "{out}");
    let info = &out["tokeninfo"];
    assert_eq!(info["email"], service_account, "{out}");
    assert_eq!(info["scope"], CLOUD_PLATFORM, "{out}");
    assert!(info["expires_in"].as_str().unwrap().parse::<u64>().unwrap() > 1800, "{out}");
}

#[tokio::test]
async fn id_token_credentials_get_a_token_that_verifies_against_the_emulator_certs() {
    let dev = Dev::start().await;
    let audience = "https://billing.internal.example/api";
    let script = r#"
import json, os
from google.auth import compute_engine
from google.auth.transport.requests import Request
from google.oauth2 import id_token
request = Request()
audience = os.environ["E2E_AUDIENCE"]
certs_url = os.environ["KEYLESS_DEV_EMULATOR_URL"] + "/oauth2/v3/certs"
credentials = compute_engine.IDTokenCredentials(request, target_audience=audience, use_metadata_identity_endpoint=True)
credentials.refresh(request)
claims = id_token.verify_token(credentials.token, request, audience=audience, certs_url=certs_url)
try:
    id_token.verify_token(credentials.token, request, audience="https://someone-else.example", certs_url=certs_url)
    other_audience = "accepted"
except Exception as error:
    other_audience = "rejected: " + str(error)
print(json.dumps({"token": credentials.token, "claims": claims, "other_audience": other_audience}))
"#;
    let before = gcp_calls(&dev.emulator).await;
    let out = parse_json(&dev.python_ok_in(script, &with_vars(&dev.env, &[("E2E_AUDIENCE", audience)])).await);
    let claims = &out["claims"];
    assert_eq!(claims["aud"], audience, "{out}");
    assert_eq!(claims["email"], dev.var("KEYLESS_DEV_GCP_SERVICE_ACCOUNT"), "{out}");
    assert_eq!(claims["email_verified"], true, "{out}");
    assert_eq!(claims["iss"], "https://accounts.google.com", "{out}");
    // The check above is a real one: the same token does not verify for another audience.
    assert_eq!(out["other_audience"], "rejected: Audience doesn't match", "{out}");
    assert_eq!(gcp_calls(&dev.emulator).await, (before.0 + 1, before.1 + 1), "one exchange for the new audience");

    // The audience's token is cached: the raw endpoint (either name of the account) serves the same one.
    let query = format!("identity?audience={audience}&format=full");
    let email = dev.var("KEYLESS_DEV_GCP_SERVICE_ACCOUNT");
    for account in ["default", email] {
        let reply = Metadata::of(&dev).get(&format!("instance/service-accounts/{account}/{query}")).await.ok();
        assert_eq!(reply.body, out["token"].as_str().unwrap(), "{account}");
    }
    assert_eq!(gcp_calls(&dev.emulator).await, (before.0 + 1, before.1 + 1), "served from cache");
}

#[tokio::test]
async fn other_scopes_get_their_own_tokens_once_per_scope_set() {
    let dev = Dev::start().await;
    let before = gcp_calls(&dev.emulator).await;
    // `scopes=` and `with_scopes` send `?scopes=a,b`; each set is refreshed several times, and the
    // second set is also asked for in the other order.
    let script = r#"
import json, os
from google.auth import compute_engine
from google.auth.transport.requests import Request
request = Request()
read_only, userinfo = os.environ["E2E_READ_ONLY"], os.environ["E2E_USERINFO"]
def tokens(credentials):
    seen = set()
    for _ in range(3):
        credentials.refresh(request)
        seen.add(credentials.token)
    return sorted(seen)
print(json.dumps({
    "default": tokens(compute_engine.Credentials()),
    "read_only": tokens(compute_engine.Credentials(scopes=[read_only])),
    "both": tokens(compute_engine.Credentials().with_scopes([read_only, userinfo])),
    "both_reversed": tokens(compute_engine.Credentials(scopes=[userinfo, read_only])),
}))
"#;
    let env = with_vars(&dev.env, &[("E2E_READ_ONLY", READ_ONLY), ("E2E_USERINFO", USERINFO)]);
    let out = parse_json(&dev.python_ok_in(script, &env).await);
    let only = |name: &str| {
        let tokens = out[name].as_array().unwrap();
        assert_eq!(tokens.len(), 1, "one token per scope set, whatever the number of refreshes: {out}");
        tokens[0].as_str().unwrap().to_owned()
    };
    let (default, read_only, both) = (only("default"), only("read_only"), only("both"));
    assert_eq!(only("both_reversed"), both, "the order of scopes does not make another token");
    assert!(default != read_only && read_only != both && default != both, "{out}");
    // Pre-warm already fetched the default scopes; each new set costs one STS and one IAM call.
    assert_eq!(gcp_calls(&dev.emulator).await, (before.0 + 2, before.1 + 2));

    // The raw `?scopes=` query: concurrent first requests for a new set share one exchange.
    let metadata = Metadata::of(&dev);
    let path = format!("{TOKEN}?scopes={PUBSUB}");
    let mut requests = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (metadata, path) = (metadata.clone(), path.clone());
        requests.spawn(async move { metadata.access_token(&path).await });
    }
    let replies = requests.join_all().await;
    assert!(replies.iter().all(|t| *t == replies[0]), "{replies:?}");
    let pubsub = replies[0].clone();
    assert!(![&default, &read_only, &both].contains(&&pubsub));
    assert_eq!(metadata.access_token(&format!("{TOKEN}?scopes={USERINFO},{READ_ONLY}")).await, both);
    assert_eq!(gcp_calls(&dev.emulator).await, (before.0 + 3, before.1 + 3));

    // Each token carries its own scopes.
    for (token, scopes) in [
        (&default, vec![CLOUD_PLATFORM]),
        (&read_only, vec![READ_ONLY]),
        (&both, scope_set(&format!("{READ_ONLY} {USERINFO}"))),
        (&pubsub, vec![PUBSUB]),
    ] {
        let info = tokeninfo(&dev, token).await;
        assert_eq!(scope_set(info["scope"].as_str().unwrap()), scopes, "{info}");
        assert_eq!(info["email"], dev.var("KEYLESS_DEV_GCP_SERVICE_ACCOUNT"));
    }
}

#[tokio::test]
async fn the_root_answers_bare_and_metadata_paths_need_the_flavor_header_and_no_proxy() {
    let dev = Dev::start().await;
    let metadata = Metadata::of(&dev);
    let project_id = "/computeMetadata/v1/project/project-id";

    // Real GCE answers the root probe without the request header; tools probe it bare.
    assert_eq!(metadata.raw("/", &[]).await.status, StatusCode::OK);
    let bare = metadata.raw(project_id, &[]).await;
    assert_eq!(bare.status, StatusCode::FORBIDDEN, "{bare:?}");
    let wrong = metadata.raw(project_id, &[("Metadata-Flavor", "Amazon")]).await;
    assert_eq!(wrong.status, StatusCode::FORBIDDEN, "{wrong:?}");

    // A proxied request is not from this pod, whatever it carries.
    for path in ["/", project_id, &format!("/computeMetadata/v1/{TOKEN}")] {
        let proxied = metadata.raw(path, &[("Metadata-Flavor", "Google"), ("X-Forwarded-For", "10.0.0.7")]).await;
        assert_eq!(proxied.status, StatusCode::FORBIDDEN, "{path}: {proxied:?}");
        assert!(!proxied.body.contains("ya29."), "{proxied:?}");
    }

    let ok = metadata.raw(project_id, &[("Metadata-Flavor", "Google")]).await.ok();
    assert_eq!(ok.body, dev.var("KEYLESS_DEV_GCP_PROJECT_ID"));
    assert_eq!(metadata.get("instance/no-such-thing").await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn project_and_universe_values_are_plain_text() {
    let dev = Dev::start().await;
    let metadata = Metadata::of(&dev);
    let identities = dev.emulator.identities().await;

    assert_eq!(metadata.get("project/project-id").await.ok().body, dev.var("KEYLESS_DEV_GCP_PROJECT_ID"));
    let number = metadata.get("project/numeric-project-id").await.ok();
    assert_eq!(number.body, identities["gcp_project_number"].as_str().unwrap());
    assert!(number.body.bytes().all(|b| b.is_ascii_digit()), "{number:?}");
    assert_eq!(metadata.get("universe/universe-domain").await.ok().body, "googleapis.com");
    assert_eq!(
        metadata.get("project/?recursive=true").await.ok().json(),
        json!({"projectId": dev.var("KEYLESS_DEV_GCP_PROJECT_ID"), "numericProjectId": number.body.parse::<u64>().unwrap()})
    );
}

#[tokio::test]
async fn service_accounts_are_listed_and_reachable_as_default_and_by_email() {
    let dev = Dev::start().await;
    let metadata = Metadata::of(&dev);
    let email = dev.var("KEYLESS_DEV_GCP_SERVICE_ACCOUNT");

    // `keyless dev` configures a second account too (`several_identities.rs`): listed by e-mail only.
    let second = dev.var("KEYLESS_DEV_GCP_SECOND_SERVICE_ACCOUNT");
    let listing = metadata.get("instance/service-accounts/").await.ok();
    let mut names = listing.body.lines().collect::<Vec<_>>();
    names.sort_unstable();
    let mut expected = vec!["default/".to_owned(), format!("{email}/"), format!("{second}/")];
    expected.sort_unstable();
    assert_eq!(names, expected);

    let account = json!({"aliases": ["default"], "email": email, "scopes": [CLOUD_PLATFORM]});
    for name in ["default", email] {
        let base = format!("instance/service-accounts/{name}");
        assert_eq!(metadata.get(&format!("{base}/email")).await.ok().body, email);
        assert_eq!(metadata.get(&format!("{base}/aliases")).await.ok().body, "default\n");
        assert_eq!(metadata.get(&format!("{base}/scopes")).await.ok().body, format!("{CLOUD_PLATFORM}\n"));
        assert_eq!(metadata.get(&format!("{base}/?recursive=true")).await.ok().json(), account, "{name}");
    }
    let all = metadata.get("instance/service-accounts/?recursive=true").await.ok().json();
    let second_account = json!({"aliases": [], "email": second, "scopes": [CLOUD_PLATFORM]});
    assert_eq!(all, json!({"default": account, email: account, second: second_account}));

    // Directories without their slash redirect to the slash form (Node probes `instance`).
    for dir in [
        "instance",
        "instance/service-accounts",
        "instance/service-accounts/default",
        &format!("instance/service-accounts/{email}"),
    ] {
        let reply = metadata.get(dir).await;
        assert_eq!(reply.status, StatusCode::MOVED_PERMANENTLY, "{dir}: {reply:?}");
        assert_eq!(reply.location.as_deref(), Some(format!("/computeMetadata/v1/{dir}/").as_str()), "{dir}");
    }
    assert_eq!(metadata.get("instance/").await.ok().body, "service-accounts/\n");
}

#[tokio::test]
async fn token_is_json_with_the_remaining_seconds_as_an_integer() {
    let dev = Dev::start().await;
    let metadata = Metadata::of(&dev);
    let email = dev.var("KEYLESS_DEV_GCP_SERVICE_ACCOUNT");

    let reply = metadata.get(TOKEN).await.ok();
    let body = reply.json();
    assert_eq!(body["token_type"], "Bearer", "{body}");
    let token = body["access_token"].as_str().unwrap();
    // An integer, not `3599.0` or `"3599"`: Rust google-cloud-auth disables itself on anything else.
    let expires_in = body["expires_in"].as_u64().unwrap_or_else(|| panic!("expires_in is not an integer: {body}"));
    // The remaining life of the cached token, as the token service itself counts it.
    let remaining = tokeninfo(&dev, token).await["expires_in"].as_str().unwrap().parse::<u64>().unwrap();
    assert!(expires_in.abs_diff(remaining) <= 2, "expires_in {expires_in}, tokeninfo says {remaining}");

    assert_eq!(metadata.access_token(&format!("instance/service-accounts/{email}/token")).await, token);
    let explicit = metadata.access_token(&format!("{TOKEN}?scopes={CLOUD_PLATFORM}")).await;
    assert_eq!(explicit, token, "the default scopes asked for explicitly are the same token");
}

#[tokio::test]
async fn identity_needs_an_audience_and_keeps_a_raw_one_whole() {
    let dev = Dev::start().await;
    let metadata = Metadata::of(&dev);
    let identity = "instance/service-accounts/default/identity";

    for path in [identity.to_owned(), format!("{identity}?audience="), format!("{identity}?format=full")] {
        let reply = metadata.get(&path).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{path}: {reply:?}");
    }

    let token = metadata.get(&format!("{identity}?audience=https://a.example")).await.ok().body;
    assert_eq!(token.split('.').count(), 3, "{token}");
    assert_eq!(claims_of(&token)["aud"], "https://a.example");
    assert_eq!(claims_of(&token)["email"], dev.var("KEYLESS_DEV_GCP_SERVICE_ACCOUNT"));
    let full = metadata.get(&format!("{identity}?audience=https%3A%2F%2Fa.example&format=full&licenses=FALSE")).await;
    assert_eq!(full.ok().body, token, "one cached token per audience, whatever the format or encoding");

    // Node's gcp-metadata does not URL-encode the audience (docs/protocols.md 3.3 traps).
    let raw = "https://b.example/run?x=1&y=2";
    let node_style = metadata.get(&format!("{identity}?audience={raw}&format=full")).await.ok().body;
    assert_eq!(claims_of(&node_style)["aud"], raw);
}

/// google-auth, looping on refreshes (creating `E2E_STARTED_FILE` after the first one) until
/// `E2E_STOP_FILE` exists. Prints how many refreshes it
/// made, the distinct access tokens it got, and how often it had to retry (the warnings google-auth
/// logs for each 5xx of the metadata server); any failed refresh fails the script.
const REFRESH_LOOP: &str = r#"
import json, logging, os, time
from google.auth import compute_engine
from google.auth.transport.requests import Request

class Count(logging.Handler):
    retries = 0
    def emit(self, record):
        if record.levelno >= logging.WARNING:
            Count.retries += 1
metadata_logger = logging.getLogger("google.auth.compute_engine._metadata")
metadata_logger.addHandler(Count())
metadata_logger.setLevel(logging.WARNING)

request = Request()
audience = os.environ["E2E_AUDIENCE"]
tokens, id_tokens, refreshes = set(), set(), 0
give_up = time.monotonic() + 120
while not os.path.exists(os.environ["E2E_STOP_FILE"]):
    assert time.monotonic() < give_up, "never told to stop"
    credentials = compute_engine.Credentials()
    credentials.refresh(request)
    tokens.add(credentials.token)
    id_credentials = compute_engine.IDTokenCredentials(
        request, target_audience=audience, use_metadata_identity_endpoint=True)
    id_credentials.refresh(request)
    id_tokens.add(id_credentials.token)
    refreshes += 1
    if refreshes == 1:
        open(os.environ["E2E_STARTED_FILE"], "w").close()
    time.sleep(0.02)
print(json.dumps({"refreshes": refreshes, "tokens": sorted(tokens), "id_tokens": len(id_tokens),
                  "retries": Count.retries}))
"#;

/// `keyless emulate` and a `keyless serve` against it whose access tokens live 60 s and are
/// refreshed after 6 s, so that refreshes really happen (and fail) during a test.
struct ShortLived {
    emulator: EmulatorProcess,
    sidecar: Sidecar,
    dir: tempfile::TempDir,
}

const STORM_AUDIENCE: &str = "https://storm.example";

impl ShortLived {
    async fn start() -> Self {
        let emulator = EmulatorProcess::start().await;
        let ids = emulator.control.identities().await;
        let toml_str = |v: &str| Value::from(v).to_string();
        let config = format!(
            "[gcp]\ntoken_file = {}\naudience = {}\nservice_account = {}\nproject_id = {}\n\
             sts_endpoint = {url}\niam_endpoint = {url}\nca_file = {}\ntoken_lifetime = \"60s\"\n\
             id_token_audiences = [{}]\n\n[cache]\nrefresh_at = 0.1\nretry_max = \"2s\"\n",
            toml_str(emulator.token_file("gcp").to_str().unwrap()),
            ids["audiences"]["gcp"],
            ids["gcp_service_account"],
            ids["gcp_project_id"],
            toml_str(emulator.ca.to_str().unwrap()),
            toml_str(STORM_AUDIENCE),
            url = toml_str(&emulator.url),
        );
        let sidecar = Sidecar::spawn(&config, &[("KEYLESS_LOG", "debug")]);
        sidecar.wait_ready().await;
        Self { emulator, sidecar, dir: tempfile::tempdir().unwrap() }
    }

    fn metadata(&self) -> Metadata {
        Metadata::at(&self.sidecar.listen.to_string())
    }

    /// Starts a Python snippet in the background with the app's metadata-server env plus `extra`.
    fn spawn_python(&self, script: &str, extra: &[(&str, &str)]) -> tokio::process::Child {
        let host = self.sidecar.listen.to_string();
        App::python(script)
            .vars(&[("GCE_METADATA_HOST", &host), ("GCE_METADATA_IP", &host)])
            .vars(extra)
            .home(self.dir.path())
            .spawn()
    }

    fn logs(&self) -> String {
        format!("--- keyless serve\n{}\n--- keyless emulate\n{}", self.sidecar.logs(), self.emulator.logs())
    }

    async fn stop(self) {
        assert!(self.sidecar.process.stop().await.success());
        assert!(self.emulator.stop().await.success());
    }
}

/// The access token expires 60 s after issue and keyless tries to refresh it after 6 s: during a
/// 5xx storm at STS and then at IAM those refreshes fail, and google-auth, refreshing in a loop,
/// sees neither a failure nor a single retry: the still-valid token is served throughout.
#[tokio::test]
async fn a_5xx_storm_at_sts_and_iam_does_not_fail_a_single_google_auth_refresh() {
    let env = ShortLived::start().await;
    let metadata = env.metadata();
    let before = gcp_calls(&env.emulator.control).await;
    // The first refresh attempts fail at STS; once those faults are used up, they fail at IAM.
    env.emulator.control.fault(json!({"service": "gcp-sts", "fail_next": 2, "status": 503})).await;
    env.emulator.control.fault(json!({"service": "gcp-iam", "fail_next": 100_000, "status": 500})).await;
    // Nothing can be issued from here on: this is the token served for the whole storm.
    let held = metadata.access_token(TOKEN).await;

    let (started_file, stop_file) = (env.dir.path().join("started"), env.dir.path().join("stop"));
    let client = env.spawn_python(
        REFRESH_LOOP,
        &[
            ("E2E_STARTED_FILE", started_file.to_str().unwrap()),
            ("E2E_STOP_FILE", stop_file.to_str().unwrap()),
            ("E2E_AUDIENCE", STORM_AUDIENCE),
        ],
    );
    wait_until("google-auth to start refreshing", Duration::from_secs(30), || {
        let started = started_file.exists();
        async move { started }
    })
    .await;
    let client_started = gcp_calls(&env.emulator.control).await;
    // Two failed STS attempts, then failed IAM attempts, at least two of them while google-auth was
    // refreshing: the storm hit both services.
    wait_until("refreshes to fail at STS and then at IAM", Duration::from_secs(40), || async {
        let (sts, iam) = gcp_calls(&env.emulator.control).await;
        sts >= before.0 + 4 && iam >= before.1 + 2 && iam >= client_started.1 + 2
    })
    .await;
    assert_eq!(env.sidecar.readyz().await, 200, "a valid credential is still held");
    std::fs::write(&stop_file, "").unwrap();
    let out = tokio::time::timeout(Duration::from_secs(60), client.wait_with_output()).await.unwrap().unwrap();
    assert!(out.status.success(), "google-auth failed:\n{}\n{}", String::from_utf8_lossy(&out.stderr), env.logs());
    let report = parse_json(&String::from_utf8_lossy(&out.stdout));
    assert!(report["refreshes"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(report["tokens"], json!([held]), "only the held token was served: {report}");
    assert_eq!(report["id_tokens"], 1, "{report}");
    assert_eq!(report["retries"], 0, "google-auth never saw a 5xx: {report}");

    // Once the storm is over, the next refresh attempt replaces the token by itself.
    env.emulator.control.clear_faults().await;
    wait_until("a refreshed token to be served", Duration::from_secs(30), || async {
        metadata.access_token(TOKEN).await != held
    })
    .await;
    env.stop().await;
}

/// A scope set nobody asked for before cannot be served from cache: while STS fails, clients get
/// the metadata server's native error at once (not a hang), and the same request succeeds once STS
/// is back.
#[tokio::test]
async fn a_cold_scope_set_gets_a_native_error_while_sts_fails_and_succeeds_once_it_is_back() {
    let dev = Dev::start().await;
    let metadata = Metadata::of(&dev);
    let default = metadata.access_token(TOKEN).await;
    dev.emulator.fault(json!({"service": "gcp-sts", "fail_next": 100_000, "status": 503})).await;

    let cold = format!("{TOKEN}?scopes={PUBSUB}");
    let started = tokio::time::Instant::now();
    let reply = metadata.get(&cold).await;
    // Within the cache's request_wait (10 s), and answered from the first failed attempt.
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{reply:?}");
    assert!(reply.body.starts_with(NO_CREDENTIAL), "{reply:?}");
    assert!(reply.body.contains("STS") && reply.body.contains("Fault injected by the keyless emulator"), "{reply:?}");
    assert_eq!(metadata.access_token(TOKEN).await, default, "the cached default token is still served");

    // google-auth retries the 503 a few times, then raises with keyless's message.
    let refresh = r#"
import os
from google.auth import compute_engine, exceptions
from google.auth.transport.requests import Request
credentials = compute_engine.Credentials(scopes=[os.environ["E2E_SCOPE"]])
try:
    credentials.refresh(Request())
    print("refreshed", credentials.token)
except exceptions.RefreshError as error:
    print("RefreshError", error)
"#;
    let env = with_vars(&dev.env, &[("E2E_SCOPE", READ_ONLY)]);
    let out = tokio::time::timeout(Duration::from_secs(90), dev.python_ok_in(refresh, &env)).await.unwrap();
    assert!(out.starts_with("RefreshError") && out.contains(NO_CREDENTIAL), "{out}");

    dev.emulator.clear_faults().await;
    let token = metadata.access_token(&cold).await;
    assert!(token != default);
    assert_eq!(scope_set(tokeninfo(&dev, &token).await["scope"].as_str().unwrap()), [PUBSUB]);
    // The same google-auth refresh now succeeds (its retries span keyless's backoff after the storm).
    let out = tokio::time::timeout(Duration::from_secs(90), dev.python_ok_in(refresh, &env)).await.unwrap();
    assert!(out.starts_with("refreshed ya29."), "{out}\n{}", dev.logs());
}
