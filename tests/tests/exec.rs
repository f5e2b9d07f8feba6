//! `keyless exec` and `keyless token` as a laptop or CI runner uses them (issue 23): the command
//! sees keyless's identity although the machine holds other credentials its SDKs rank higher
//! (each case through the real SDKs of Python, Go, Node, Java and Rust, the identity proven by the
//! emulator's caller-identity and tokeninfo answers or the Entra token's `appid`; where no
//! variable can set a source aside, keyless says so), errors that cannot heal end at once with 125,
//! transient ones are retried, exit codes, `--only`, the identity flags, signals, and the child's
//! death with keyless.
#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use base64::Engine as _;
use keyless_test_support::binary::keyless_bin;
use keyless_test_support::child;
use keyless_test_support::emulate::EmulatorProcess;
use keyless_test_support::sidecar::all_clouds_dev_config;
use keyless_test_support::tools;
use keyless_test_support::wait::{STARTUP_DEADLINE, wait_until};
use serde_json::Value;

/// A bound no fail-fast case comes near (they end in about a second) and every "wait out the
/// ready timeout" case exceeds: `--ready-timeout` is set to twice this.
const FAIL_FAST_BOUND: Duration = Duration::from_secs(30);

fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The emulator, its identities, and a config for the three clouds (token files from its
/// projector) with a second identity per cloud: `writer`, the second service account, the second
/// client id.
struct Setup {
    emulator: EmulatorProcess,
    ids: Value,
    toml: String,
}

impl Setup {
    async fn start() -> Self {
        Self::with(|_, toml| toml).await
    }

    /// With `edit` applied to the generated config.
    async fn with(edit: impl FnOnce(&Value, String) -> String) -> Self {
        let emulator = EmulatorProcess::start().await;
        let ids = emulator.control.identities().await;
        let token = |cloud: &str| format!("token_file = {}", toml_string(emulator.token_file(cloud).to_str().unwrap()));
        // The second identities too, as `keyless dev` has them.
        let toml = all_clouds_dev_config(&emulator, &emulator.url, "warn", &token, true).await.to_toml();
        let toml = edit(&ids, toml);
        Self { emulator, ids, toml }
    }

    fn id(&self, key: &str) -> &str {
        self.ids[key].as_str().unwrap()
    }

    /// From now on the emulated STS answers 503 (a transient error, retried) to every call: AWS
    /// never gets a credential.
    async fn aws_sts_unavailable(&self) {
        let fault = serde_json::json!({ "service": "aws-sts", "fail_next": 100_000, "status": 503 });
        self.emulator.control.fault(fault).await;
    }

    /// What every SDK needs to reach the emulator itself (not keyless): STS and Entra endpoints
    /// and its CA. None of these shadow keyless.
    fn emulator_env(&self) -> Vec<(String, String)> {
        let ca = self.emulator.ca.to_str().unwrap().to_owned();
        [
            ("AWS_ENDPOINT_URL_STS", self.emulator.url.clone()),
            ("AWS_CA_BUNDLE", ca.clone()),
            ("REQUESTS_CA_BUNDLE", ca.clone()),
            ("SSL_CERT_FILE", ca.clone()),
            ("NODE_EXTRA_CA_CERTS", ca.clone()),
            ("AZURE_AUTHORITY_HOST", self.emulator.url.clone()),
            ("KX_EMULATOR", self.emulator.url.clone()),
            ("KX_CA", ca),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    /// `keyless exec --config FILE FLAGS -- ARGS` with exactly `env` (plus PATH, HOME = `home`,
    /// and what reaches the emulator), killed when dropped.
    fn command(&self, home: &Path, flags: &[&str], env: &[(String, String)], args: &[&str]) -> tokio::process::Command {
        let file = home.join("keyless.toml");
        std::fs::write(&file, &self.toml).unwrap();
        let mut command = tokio::process::Command::new(keyless_bin());
        command
            .arg("exec")
            .arg("--config")
            .arg(&file)
            .args(flags)
            .arg("--")
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", home)
            .envs(self.emulator_env())
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .kill_on_drop(true);
        command
    }

    /// [`Setup::command`] run to its end, and how long it took.
    async fn exec(&self, home: &Path, flags: &[&str], env: &[(String, String)], args: &[&str]) -> (Output, Duration) {
        let mut command = self.command(home, flags, env, args);
        let started = tokio::time::Instant::now();
        let out = tokio::time::timeout(STARTUP_DEADLINE * 2, command.output()).await.expect("exec finishes").unwrap();
        (out, started.elapsed())
    }

    /// [`Setup::exec`] of the identity probe in Python: the identity each cloud's SDK ends up with.
    async fn python_identities(&self, home: &Path, flags: &[&str], env: &[(String, String)]) -> (Value, String) {
        let python = tools::python();
        let (out, _) = self.exec(home, flags, env, &[python.to_str().unwrap(), "-c", PYTHON_IDENTITIES]).await;
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        assert!(out.status.success(), "exec failed: {stdout}\n{stderr}");
        let json = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}\n{stderr}"));
        (json, stderr)
    }

    /// The config with `cloud`'s `token_file = ...` line replaced by `keys`.
    fn with_token_keys(self, cloud: &str, keys: &str) -> Self {
        let line = format!("token_file = {}", toml_string(self.emulator.token_file(cloud).to_str().unwrap()));
        assert!(self.toml.contains(&line), "{line} is not in the config");
        Self { toml: self.toml.replacen(&line, keys, 1), ..self }
    }

    /// The config with `cloud`'s subject token replaced by one the emulator mints with `claims`
    /// (written in `dir`).
    async fn with_minted_token(self, cloud: &str, claims: Value, dir: &Path) -> Self {
        let jwt = self.emulator.control.mint(claims).await;
        let file = write(&dir.join(format!("{cloud}-token")), &jwt);
        self.with_token_keys(cloud, &format!("token_file = {}", toml_string(file.to_str().unwrap())))
    }

    /// What a CI runner on EKS/AKS holds besides: web identity for the second role, an
    /// `external_account` file (written in `dir`), workload identity for the second app. Each SDK
    /// ranks these above keyless.
    fn other_identities_env(&self, dir: &Path) -> Vec<(String, String)> {
        let adc = write(&dir.join("adc.json"), &external_account(self));
        let (aws_token, azure_token) = (self.emulator.token_file("aws"), self.emulator.token_file("azure"));
        env(&[
            ("AWS_ROLE_ARN", self.id("aws_second_role_arn")),
            ("AWS_WEB_IDENTITY_TOKEN_FILE", aws_token.to_str().unwrap()),
            ("GOOGLE_APPLICATION_CREDENTIALS", adc.to_str().unwrap()),
            ("AZURE_CLIENT_ID", self.id("azure_second_client_id")),
            ("AZURE_TENANT_ID", self.id("azure_tenant_id")),
            ("AZURE_FEDERATED_TOKEN_FILE", azure_token.to_str().unwrap()),
        ])
    }

    /// A laptop's files in `home`: static keys in `~/.aws/credentials`, a credential_process
    /// profile (a program printing other keys) and a retry setting in `~/.aws/config`, gcloud's
    /// application-default credentials (an `external_account` exchanging for itself).
    fn laptop_files(&self, home: &Path) {
        use std::os::unix::fs::PermissionsExt as _;
        write(&home.join(".aws/credentials"), LAPTOP_CREDENTIALS);
        let process = write(
            &home.join("laptop-credentials"),
            "#!/bin/sh\necho '{\"Version\": 1, \"AccessKeyId\": \"AKIAPROCESSKEY\", \"SecretAccessKey\": \"process\"}'\n",
        );
        std::fs::set_permissions(&process, std::fs::Permissions::from_mode(0o755)).unwrap();
        write(
            &home.join(".aws/config"),
            &format!(
                "[default]\nmax_attempts = 7\ncredential_process = {}\n[profile other]\nregion = eu-west-1\n",
                process.display()
            ),
        );
        write(&home.join(".config/gcloud/application_default_credentials.json"), &external_account(self));
    }

    /// Static keys, a profile no file has, another container endpoint's token file (SDKs prefer
    /// it to the token keyless sets); Azure's environment credential (a client secret, a
    /// certificate, a username), a workload identity token file, `AZURE_TOKEN_CREDENTIALS=dev`
    /// (no managed identity), and Service Fabric's variable, which makes managed identity (Rust's
    /// too) choose that protocol over App Service. Files in `dir`. Run with [`KEEP_AZURE_CLIENT_ID`]: without `AZURE_CLIENT_ID` the SDKs would skip
    /// the environment and workload identity credentials whatever keyless does, and the test
    /// could not fail.
    fn static_secrets_env(&self, dir: &Path) -> Vec<(String, String)> {
        // A certificate the SDKs can load (RSA, as Entra wants): one they cannot is skipped by
        // Go's DefaultAzureCredential whatever keyless does.
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["laptop".to_owned()]).unwrap().self_signed(&key).unwrap();
        let certificate = write(&dir.join("client.pem"), &format!("{}{}", cert.pem(), key.serialize_pem()));
        let token = write(&dir.join("federated-token"), "not-a-token");
        let container_token = write(&dir.join("container-token"), "another-endpoints-token");
        env(&[
            ("AWS_ACCESS_KEY_ID", "AKIASTATICKEY"),
            ("AWS_SECRET_ACCESS_KEY", "static"),
            ("AWS_PROFILE", "nowhere"),
            ("AWS_CONTAINER_CREDENTIALS_FULL_URI", "http://127.0.0.1:9/another-endpoint"),
            ("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", container_token.to_str().unwrap()),
            ("AZURE_CLIENT_ID", self.id("azure_second_client_id")),
            ("AZURE_TENANT_ID", self.id("azure_tenant_id")),
            ("AZURE_CLIENT_SECRET", "a-secret"),
            ("AZURE_CLIENT_CERTIFICATE_PATH", certificate.to_str().unwrap()),
            ("AZURE_USERNAME", "user@example.com"),
            ("AZURE_PASSWORD", "a-password"),
            ("AZURE_FEDERATED_TOKEN_FILE", token.to_str().unwrap()),
            ("AZURE_TOKEN_CREDENTIALS", "dev"),
            ("IDENTITY_SERVER_THUMBPRINT", "0123456789abcdef0123456789abcdef01234567"),
        ])
    }

    /// Whose credentials `sdk`'s programs get under `keyless exec` (with `vars` and HOME =
    /// `home`), as [`Setup::identities_of`] names them, and keyless's stderr. The programs print
    /// `{"aws": {keys}, "gcp": access token, "azure": Entra token}`, `error: ...` for a cloud
    /// whose SDK failed.
    async fn identities_through(
        &self,
        sdk: &Sdk,
        home: &Path,
        flags: &[&str],
        vars: &[(String, String)],
    ) -> (Value, String) {
        let mut env = vars.to_vec();
        env.extend(sdk.env());
        let (mut creds, mut stderr) = (serde_json::Map::new(), String::new());
        for (cloud, args) in sdk.programs(home) {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let (out, _) = self.exec(home, flags, &env, &args).await;
            let (stdout, err) = (text(&out.stdout), text(&out.stderr));
            stderr.push_str(&err);
            // A Rust child's line follows the test runner's `test NAME ... `.
            let json = stdout.lines().find_map(|l| serde_json::from_str::<Value>(&l[l.find('{')?..]).ok());
            match (cloud, json) {
                (None, Some(Value::Object(all))) if out.status.success() => creds.extend(all),
                (Some(cloud), Some(one)) if out.status.success() => {
                    creds.insert(cloud.to_owned(), Sdk::go_credential(cloud, one));
                }
                (Some(cloud), _) => {
                    creds.insert(cloud.to_owned(), format!("error: {}", err.trim()).into());
                }
                (None, _) => panic!("{args:?} failed ({}):\n{stdout}\n{err}", out.status),
            }
        }
        (self.identities_of(&Value::Object(creds)).await, stderr)
    }

    /// Whose credentials `creds` (as the SDK programs print them) are, as the emulated clouds
    /// answer: the role GetCallerIdentity names, the e-mail tokeninfo names, the Entra token's
    /// `appid`; an error passed on as it is.
    async fn identities_of(&self, creds: &Value) -> Value {
        let token = |cloud: &str| creds[cloud].as_str().filter(|t| !t.starts_with("error: "));
        let aws = match &creds["aws"] {
            keys @ Value::Object(_) => aws_caller(self, keys).await.into(),
            other => other.clone(),
        };
        let gcp = match token("gcp") {
            Some(access) => tokeninfo_email(self, access).await.into(),
            None => creds["gcp"].clone(),
        };
        let azure = match token("azure") {
            Some(entra) => jwt_claims(entra)["appid"].clone(),
            None => creds["azure"].clone(),
        };
        serde_json::json!({ "aws": aws, "gcp": gcp, "azure": azure })
    }

    /// The SDKs got the identities keyless serves by default in `clouds`.
    fn assert_keyless_identities(&self, ids: &Value, clouds: &[&str], stderr: &str) {
        let expected = self.keyless_identities();
        for cloud in clouds {
            assert_eq!(ids[cloud], expected[cloud], "{cloud}: {ids}\n{stderr}");
        }
    }

    /// The identities keyless serves by default.
    fn keyless_identities(&self) -> Value {
        serde_json::json!({
            "aws": role_name(self.id("aws_role_arn")),
            "gcp": self.id("gcp_service_account"),
            "azure": self.id("azure_client_id"),
        })
    }
}

/// `role/NAME` of a role ARN, as it appears in an assumed-role ARN (`assumed-role/NAME/...`).
fn role_name(arn: &str) -> String {
    arn.rsplit('/').next().unwrap().to_owned()
}

/// boto3's, google-auth's and azure-identity's default credentials, each proven with the
/// emulated cloud: STS GetCallerIdentity (the role name), tokeninfo (the e-mail), the Entra
/// token's `appid`. A failure prints `error: ...` for that cloud instead.
const PYTHON_IDENTITIES: &str = r#"
import base64, json, os
out = {}
try:
    import boto3
    arn = boto3.client("sts").get_caller_identity()["Arn"]
    out["aws"] = arn.split("/")[1]
    out["aws_max_attempts"] = boto3.Session()._session.get_config_variable("max_attempts")
except Exception as e:
    out["aws"] = "error: %s" % e
try:
    import google.auth, google.auth.transport.requests as tr, requests
    creds, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
    creds.refresh(tr.Request())
    info = requests.get(os.environ["KX_EMULATOR"] + "/tokeninfo", params={"access_token": creds.token}, verify=os.environ["KX_CA"]).json()
    out["gcp"] = info.get("email", "no e-mail: %s" % info.get("sub"))
except Exception as e:
    out["gcp"] = "error: %s" % e
try:
    from azure.identity import DefaultAzureCredential
    token = DefaultAzureCredential().get_token("https://management.azure.com/.default").token
    claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    out["azure"] = claims["appid"]
except Exception as e:
    out["azure"] = "error: %s" % str(e)[:300]
print(json.dumps(out))
"#;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

fn write(path: &Path, content: &str) -> PathBuf {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, content).unwrap();
    path.to_owned()
}

/// A laptop's `~/.aws/credentials`: a `[default]` profile with static keys.
const LAPTOP_CREDENTIALS: &str = "[default]\naws_access_key_id = AKIALAPTOPKEY\naws_secret_access_key = laptop\n";

/// The line for [`Setup::laptop_files`].
const LAPTOP_FILES_SET_ASIDE: &str = "keyless exec: set aside ~/.aws/credentials [default], ~/.aws/config [default], \
                                      ~/.config/gcloud/application_default_credentials.json \
                                      (GOOGLE_APPLICATION_CREDENTIALS set to keyless's stand-in; Java programs refuse it and \
                                      need it unset: exec --keep-env GOOGLE_APPLICATION_CREDENTIALS) for the command";

/// The line for [`Setup::other_identities_env`].
const IDENTITY_VARS_SET_ASIDE: &str = "keyless exec: set aside AWS_ROLE_ARN/AWS_WEB_IDENTITY_TOKEN_FILE, \
                                       GOOGLE_APPLICATION_CREDENTIALS, AZURE_FEDERATED_TOKEN_FILE, AZURE_CLIENT_ID for the command";

/// One SDK family's programs, run as `keyless exec`'s command, each printing the credentials its
/// default chains got.
enum Sdk {
    /// `tests/node/credentials.cjs`: the three clouds in one process.
    Node(tools::NodeClients),
    /// `tests/go`'s `aws`, `gcp` and `azure` programs, one `exec` each.
    Go(tools::GoClients),
    /// `tests/java`'s `keyless.Credentials`: the three clouds in one JVM.
    Java(tools::JavaClients),
    /// This test binary re-executed as the command, running the test of this name as its child
    /// ([`rust_credentials`]).
    Rust(&'static str),
}

impl Sdk {
    /// The commands, each with the cloud it prints (`None`: every cloud, in one JSON object).
    fn programs(&self, home: &Path) -> Vec<(Option<&'static str>, Vec<String>)> {
        let owned = |args: &[&str]| args.iter().map(|a| (*a).to_owned()).collect::<Vec<_>>();
        match self {
            Self::Node(_) => {
                let script = keyless_test_support::binary::workspace_root().join("tests/node/credentials.cjs");
                vec![(None, owned(&["node", script.to_str().unwrap()]))]
            }
            // Through `env` with a closed loopback port as their proxy (as test-support's
            // `App::go`): Go never proxies loopback, so keyless and the emulator are reached,
            // while a request to a real cloud (an ID token for another principal asks Google's
            // IAM) fails at once and nothing leaves the machine. keyless itself never sees it.
            Self::Go(go) => {
                let proxy = format!("http://127.0.0.1:{}", keyless_test_support::process::free_port());
                let run = |program: &str, args: &[&str]| {
                    let mut run = owned(&["env", &format!("HTTP_PROXY={proxy}"), &format!("HTTPS_PROXY={proxy}")]);
                    run.push(go.bin.join(program).to_str().unwrap().to_owned());
                    run.extend(owned(args));
                    run
                };
                vec![
                    (Some("aws"), run("aws", &[])),
                    // No ID token: under the stand-in for gcloud's file (the laptop's case), Go's
                    // idtoken impersonates through Google's IAM itself (docs/protocols.md 10.4).
                    (Some("gcp"), run("gcp", &[""])),
                    (Some("azure"), run("azure", &["default", "https://management.azure.com/.default"])),
                ]
            }
            // `user.home` is the account's home directory, not $HOME: google-auth-java reads
            // gcloud's file under it. On a laptop they are the same; here HOME is the test's.
            Self::Java(java) => {
                let home_property = format!("-Duser.home={}", home.display());
                let trust = format!("-Djavax.net.ssl.trustStore={}", home.join(JAVA_TRUST_STORE).display());
                let args = ["java", "-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC", &home_property, &trust];
                let mut args = owned(&args);
                args.extend(owned(&[
                    "-Djavax.net.ssl.trustStorePassword=changeit",
                    "-cp",
                    &java.classpath,
                    "keyless.Credentials",
                ]));
                vec![(None, args)]
            }
            Self::Rust(name) => {
                let exe = std::env::current_exe().unwrap();
                let args = [exe.to_str().unwrap()].into_iter().chain(child::CHILD_ARGS).chain([*name]);
                vec![(None, args.map(str::to_owned).collect())]
            }
        }
    }

    /// What its programs need besides the scenario's variables.
    fn env(&self) -> Vec<(String, String)> {
        match self {
            Self::Node(node) => env(&[("NODE_PATH", node.modules.to_str().unwrap())]),
            Self::Rust(name) => env(&[(child::CHILD, name)]),
            Self::Go(_) | Self::Java(_) => Vec::new(),
        }
    }

    /// The credential in what a Go program printed for `cloud`.
    fn go_credential(cloud: &str, printed: Value) -> Value {
        match cloud {
            "gcp" => printed["access_token"].clone(),
            "azure" => printed["token"].clone(),
            _ => printed,
        }
    }
}

/// The Java clients' trust store in HOME: the emulator's CA (so an SDK that is not kept from the
/// emulator's STS or Entra reaches it and gets the other identity, rather than a TLS error).
const JAVA_TRUST_STORE: &str = "emulator-ca.p12";

fn java_trust_store(setup: &Setup, home: &Path) {
    let out = std::process::Command::new("keytool")
        .args(["-importcert", "-noprompt", "-storetype", "PKCS12", "-storepass", "changeit", "-alias", "emulator"])
        .arg("-file")
        .arg(&setup.emulator.ca)
        .arg("-keystore")
        .arg(home.join(JAVA_TRUST_STORE))
        .output()
        .unwrap();
    assert!(out.status.success(), "keytool: {}", text(&out.stderr));
}

/// Each shadowing case through `sdk`: the laptop's files, a CI runner's identity variables,
/// static keys and secrets. The programs get keyless's identity, and stderr says what was set
/// aside. gcloud's file under `$HOME`, which Go, Node and Rust read whatever `CLOUDSDK_CONFIG`
/// says, is met by keyless's stand-in `GOOGLE_APPLICATION_CREDENTIALS` file.
async fn assert_each_case_sees_keyless(sdk: &Sdk) {
    let setup = Setup::start().await;
    let homes = [(); 3].map(|()| tempfile::tempdir().unwrap());
    if let Sdk::Java(_) = sdk {
        homes.iter().for_each(|home| java_trust_store(&setup, home.path()));
    }

    let h = homes[0].path();
    setup.laptop_files(h);
    let (ids, stderr) = setup.identities_through(sdk, h, &[], &[]).await;
    assert!(stderr.contains(LAPTOP_FILES_SET_ASIDE), "{stderr}");
    assert!(!stderr.contains("could not set aside"), "{stderr}");
    if let Sdk::Java(_) = sdk {
        // Java refuses the stand-in's plain-HTTP token URL: an error, never another identity;
        // kept unset, Java reads gcloud's file from CLOUDSDK_CONFIG, which keyless set aside.
        setup.assert_keyless_identities(&ids, &["aws", "azure"], &stderr);
        let gcp = ids["gcp"].as_str().unwrap_or_default();
        assert!(gcp.contains("The provided token URL is invalid"), "{ids}\n{stderr}");
        let keep = ["--keep-env", "GOOGLE_APPLICATION_CREDENTIALS"];
        let (ids, stderr) = setup.identities_through(sdk, h, &keep, &[]).await;
        setup.assert_keyless_identities(&ids, &["aws", "gcp", "azure"], &stderr);
    } else {
        setup.assert_keyless_identities(&ids, &["aws", "gcp", "azure"], &stderr);
    }

    let h = homes[1].path();
    let vars = setup.other_identities_env(h);
    let (ids, stderr) = setup.identities_through(sdk, h, &[], &vars).await;
    setup.assert_keyless_identities(&ids, &["aws", "gcp", "azure"], &stderr);
    assert!(stderr.contains(IDENTITY_VARS_SET_ASIDE), "{stderr}");

    let h = homes[2].path();
    let vars = setup.static_secrets_env(h);
    let (ids, stderr) = setup.identities_through(sdk, h, &KEEP_AZURE_CLIENT_ID, &vars).await;
    setup.assert_keyless_identities(&ids, &["aws", "gcp"], &stderr);
    // Managed identity asks keyless for the client id kept (keyless serves it too); Rust's
    // reads none from the environment.
    let app = if let Sdk::Rust(_) = sdk { "azure_client_id" } else { "azure_second_client_id" };
    assert_eq!(ids["azure"], setup.id(app), "{ids}\n{stderr}");
    assert!(stderr.contains(STATIC_SECRETS_SET_ASIDE), "{stderr}");
}

/// The line for [`Setup::static_secrets_env`].
const STATIC_SECRETS_SET_ASIDE: &str = "keyless exec: set aside AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, \
                                        AWS_CONTAINER_CREDENTIALS_FULL_URI/AWS_CONTAINER_AUTHORIZATION_TOKEN, AWS_PROFILE=nowhere, \
                                        AZURE_CLIENT_SECRET, AZURE_CLIENT_CERTIFICATE_PATH, AZURE_USERNAME/AZURE_PASSWORD, \
                                        AZURE_FEDERATED_TOKEN_FILE, AZURE_TOKEN_CREDENTIALS, IDENTITY_SERVER_THUMBPRINT \
                                        for the command";

/// The flags [`Setup::static_secrets_env`] runs with.
const KEEP_AZURE_CLIENT_ID: [&str; 2] = ["--keep-env", "AZURE_CLIENT_ID"];

/// A Google `external_account` credential file that exchanges the emulator's GCP token itself
/// (no impersonation): a federated principal, not keyless's service account.
fn external_account(setup: &Setup) -> String {
    serde_json::json!({
        "type": "external_account",
        "audience": setup.ids["audiences"]["gcp"],
        "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
        "token_url": format!("{}/v1/token", setup.emulator.url),
        "credential_source": { "file": setup.emulator.token_file("gcp") },
    })
    .to_string()
}

/// The laptop: static AWS keys in `~/.aws/credentials`, a credential_process profile and a
/// retry setting in `~/.aws/config`, gcloud's application-default credentials; and a CI runner on
/// EKS/AKS: web identity for another role, workload identity for another app, a client secret.
#[tokio::test]
async fn exec_sets_aside_every_local_credential_python_sees_keyless() {
    let setup = Setup::start().await;
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    setup.laptop_files(h);
    let (ids, stderr) = setup.python_identities(h, &[], &[]).await;
    setup.assert_keyless_identities(&ids, &["aws", "gcp", "azure"], &stderr);
    assert_eq!(ids["aws_max_attempts"], 7, "the config file's settings stay: {ids}");
    assert!(stderr.contains(LAPTOP_FILES_SET_ASIDE), "{stderr}");
    // The user's files are untouched.
    assert!(std::fs::read_to_string(h.join(".aws/credentials")).unwrap().contains("AKIALAPTOPKEY"));
}

#[tokio::test]
async fn exec_sets_aside_identity_variables_python_sees_keyless() {
    let setup = Setup::start().await;
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let vars = setup.other_identities_env(h);
    let (ids, stderr) = setup.python_identities(h, &[], &vars).await;
    setup.assert_keyless_identities(&ids, &["aws", "gcp", "azure"], &stderr);
    assert!(stderr.contains(IDENTITY_VARS_SET_ASIDE), "{stderr}");
    // --keep-env keeps one on purpose: boto3 then assumes the other role itself.
    let (ids, stderr) = setup
        .python_identities(h, &["--keep-env", "AWS_ROLE_ARN", "--keep-env", "AWS_WEB_IDENTITY_TOKEN_FILE"], &vars)
        .await;
    assert_eq!(ids["aws"], role_name(setup.id("aws_second_role_arn")), "{ids}\n{stderr}");
    assert!(!stderr.contains("AWS_ROLE_ARN/"), "{stderr}");
}

#[tokio::test]
async fn exec_sets_aside_static_keys_client_secrets_and_a_username_python_sees_keyless() {
    let setup = Setup::start().await;
    let home = tempfile::tempdir().unwrap();
    let vars = setup.static_secrets_env(home.path());
    let (ids, stderr) = setup.python_identities(home.path(), &KEEP_AZURE_CLIENT_ID, &vars).await;
    setup.assert_keyless_identities(&ids, &["aws"], &stderr);
    assert_eq!(ids["azure"], setup.id("azure_second_client_id"), "{ids}\n{stderr}");
    assert!(stderr.contains(STATIC_SECRETS_SET_ASIDE), "{stderr}");
    assert!(!stderr.contains("a-secret") && !stderr.contains("a-password"), "a secret was printed: {stderr}");
}

/// A test of [`assert_each_case_sees_keyless`] through the SDK `$sdk` (with the attributes before
/// it), reported ignored with `$why` where the cfg `$tools` (tests/build.rs) says its pinned
/// clients are not built.
macro_rules! each_case_through {
    ($($(#[$meta:meta])* $name:ident($tools:ident, $why:literal) => $sdk:expr;)*) => {$(
        $(#[$meta])*
        #[tokio::test]
        #[cfg_attr(not($tools), ignore = $why)]
        async fn $name() {
            assert_each_case_sees_keyless(&$sdk).await;
        }
    )*};
}

each_case_through! {
    /// The same shadowing cases through the Go SDKs (aws-sdk-go-v2's LoadDefaultConfig,
    /// x/oauth2's FindDefaultCredentials, azidentity's DefaultAzureCredential).
    exec_sets_aside_local_credentials_go_sees_keyless(keyless_tools_go, "needs the pinned Go SDK clients (target/go/bin): ./scripts/test builds them with go >= 1.26")
        => Sdk::Go(tools::need(tools::find_go_clients()));
    /// Through the Node SDKs: the AWS SDK for JavaScript v3's default chain, google-auth-library's
    /// application-default credentials, @azure/identity's DefaultAzureCredential.
    exec_sets_aside_local_credentials_node_sees_keyless(keyless_tools_node, "needs Node.js >= 20 and the pinned Node SDK clients (target/node): ./scripts/test installs them")
        => Sdk::Node(tools::need(tools::find_node_clients()));
    /// Through the Java SDKs: the AWS SDK for Java v2's DefaultCredentialsProvider,
    /// google-auth-library-java's application-default credentials, azure-identity's
    /// DefaultAzureCredential.
    exec_sets_aside_local_credentials_java_sees_keyless(keyless_tools_java, "needs Java >= 17 and the pinned Java SDK clients (target/java): ./scripts/test compiles them with mvn")
        => Sdk::Java(tools::need(tools::find_java_clients()));
}

/// Through the Rust SDKs, this test run again as exec's command ([`rust_credentials`]).
#[tokio::test]
async fn exec_sets_aside_local_credentials_rust_sees_keyless() {
    const NAME: &str = "exec_sets_aside_local_credentials_rust_sees_keyless";
    if child::is_child(NAME) {
        return rust_credentials().await;
    }
    assert_each_case_sees_keyless(&Sdk::Rust(NAME)).await;
}

/// The child: aws-config's default chain (environment keys, the shared files' profile, web
/// identity, then the container endpoint), google-cloud-auth's application-default credentials
/// (`GOOGLE_APPLICATION_CREDENTIALS`, gcloud's file under `$HOME`, then the metadata server), and
/// azure_identity's ManagedIdentityCredential. azure_identity for Rust has no environment
/// credential chain (no DefaultAzureCredential) and its managed identity takes no client id from
/// `AZURE_CLIENT_ID`: what shadows keyless for it is the variables that choose another managed
/// identity protocol (`IDENTITY_SERVER_THUMBPRINT`: Service Fabric, before App Service).
async fn rust_credentials() {
    use aws_sdk_sts::config::ProvideCredentials as _;
    use azure_core::credentials::TokenCredential as _;
    let error = |e: &dyn std::fmt::Display| Value::from(format!("error: {e}"));
    let aws_config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let aws = match aws_config.credentials_provider().unwrap().provide_credentials().await {
        Ok(keys) => serde_json::json!({
            "access_key_id": keys.access_key_id(),
            "secret_access_key": keys.secret_access_key(),
            "session_token": keys.session_token().unwrap_or_default(),
        }),
        Err(e) => error(&aws_sdk_sts::error::DisplayErrorContext(e)),
    };
    let gcp = match google_cloud_auth::credentials::Builder::default().build_access_token_credentials() {
        Ok(credentials) => credentials.access_token().await.map_or_else(|e| error(&e), |t| t.token.into()),
        Err(e) => error(&e),
    };
    let azure = match azure_identity::ManagedIdentityCredential::new(None) {
        Ok(credential) => credential
            .get_token(&["https://management.azure.com/.default"], None)
            .await
            .map_or_else(|e| error(&e), |t| t.token.secret().into()),
        Err(e) => error(&e),
    };
    println!("{}", serde_json::json!({ "aws": aws, "gcp": gcp, "azure": azure }));
}

/// The role name GetCallerIdentity names for AWS keys (JSON `access_key_id`, ...), or its error.
async fn aws_caller(setup: &Setup, creds: &Value) -> String {
    use aws_sdk_sts::config::{Credentials, SharedCredentialsProvider};
    let field = |k: &str| creds[k].as_str().unwrap_or_else(|| panic!("{k} missing: {creds}")).to_owned();
    let keys =
        Credentials::new(field("access_key_id"), field("secret_access_key"), Some(field("session_token")), None, "t");
    let sts = keyless_test_support::clients::aws_sts(
        &setup.emulator.url,
        &setup.emulator.ca,
        "us-east-1",
        Some(SharedCredentialsProvider::new(keys)),
    );
    match sts.get_caller_identity().send().await {
        Ok(me) => me.arn().unwrap_or_default().split('/').nth(1).unwrap_or_default().to_owned(),
        Err(e) => format!("error: {}", aws_sdk_sts::error::DisplayErrorContext(e)),
    }
}

async fn tokeninfo_email(setup: &Setup, token: &str) -> String {
    let response = setup
        .emulator
        .control
        .client()
        .get(setup.emulator.control.url("/tokeninfo"))
        .query(&[("access_token", token)])
        .send()
        .await
        .unwrap();
    let info: Value = response.json().await.unwrap();
    info["email"].as_str().unwrap_or_default().to_owned()
}

fn jwt_claims(jwt: &str) -> Value {
    let payload = jwt.split('.').nth(1).unwrap();
    serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

/// Exit codes: 127 not found, 126 not runnable, the command's own, 128+N.
#[tokio::test]
async fn exec_exits_125_126_127_or_the_commands_status() {
    let setup = Setup::start().await;
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let (out, _) = setup.exec(h, &[], &[], &["/nonexistent/keyless-test-command"]).await;
    assert_eq!(out.status.code(), Some(127), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("cannot run /nonexistent/keyless-test-command"), "{}", text(&out.stderr));
    let not_executable = write(&h.join("script.sh"), "#!/bin/sh\nexit 0\n");
    let (out, _) = setup.exec(h, &[], &[], &[not_executable.to_str().unwrap()]).await;
    assert_eq!(out.status.code(), Some(126), "{}", text(&out.stderr));
    let (out, _) = setup.exec(h, &[], &[], &["sh", "-c", "exit 3"]).await;
    assert_eq!(out.status.code(), Some(3));
    let (out, _) = setup.exec(h, &[], &[], &["sh", "-c", "kill -USR1 $$"]).await;
    assert_eq!(out.status.code(), Some(128 + 10));
    // keyless's own failure: a config it cannot use.
    let (out, _) = setup.exec(h, &["--only", "aws", "--aws-role", "nobody"], &[], &["true"]).await;
    assert_eq!(out.status.code(), Some(125), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("no [[aws.roles]] entry is named \"nobody\""), "{}", text(&out.stderr));
    // Each cloud lists what is configured as words, not a Rust list (`["writer"]`).
    for (flag, expected) in [
        ("--aws-role", "no [[aws.roles]] entry is named \"nobody\" (configured: "),
        ("--gcp-service-account", "\"nobody@p.iam.gserviceaccount.com\" is not a configured service account"),
        ("--azure-client-id", "\"00000000-0000-0000-0000-000000000000\" is not a configured client id (configured: "),
    ] {
        let value = expected.split('"').nth(1).unwrap();
        let (out, _) = setup.exec(h, &[flag, value], &[], &["true"]).await;
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(125), "{stderr}");
        assert!(stderr.contains(expected) && !stderr.contains("[\""), "{flag}: {stderr}");
    }
}

#[tokio::test]
async fn only_serves_the_clouds_named_and_the_identity_flags_choose_the_default() {
    let setup = Setup::start().await;
    let home = tempfile::tempdir().unwrap();
    let (out, _) = setup.exec(home.path(), &["--only", "aws,azure"], &[], &["sh", "-c", "env"]).await;
    let printed = text(&out.stdout);
    assert!(printed.contains("AWS_CONTAINER_CREDENTIALS_FULL_URI="), "{printed}");
    assert!(printed.contains("IDENTITY_ENDPOINT="), "{printed}");
    assert!(!printed.contains("GCE_METADATA_HOST="), "gcp is served although not asked for: {printed}");

    let flags = [
        "--aws-role",
        "writer",
        "--gcp-service-account",
        setup.id("gcp_second_service_account"),
        "--azure-client-id",
        setup.id("azure_second_client_id"),
    ];
    let (ids, stderr) = setup.python_identities(home.path(), &flags, &[]).await;
    assert_eq!(ids["aws"], role_name(setup.id("aws_second_role_arn")), "{ids}\n{stderr}");
    assert_eq!(ids["gcp"], setup.id("gcp_second_service_account"), "{ids}\n{stderr}");
    assert_eq!(ids["azure"], setup.id("azure_second_client_id"), "{ids}\n{stderr}");
}

/// keyless's own settings configure keyless, and some are secrets: the command sees none of them
/// (what it needs from keyless it gets as each cloud's native variables).
#[tokio::test]
async fn the_command_never_sees_keyless_settings() {
    let setup = Setup::start().await;
    let home = tempfile::tempdir().unwrap();
    let (header, token) = ("identity-header-of-another-keyless-0123456789", "authorization-token-of-another-keyless");
    let vars = env(&[
        ("KEYLESS_AZURE__IDENTITY_HEADER", header),
        ("KEYLESS_AWS__AUTHORIZATION_TOKEN", token),
        ("KEYLESS_CACHE__RETRY_MAX", "30s"),
    ]);
    let (out, _) = setup.exec(home.path(), &["--only", "gcp"], &vars, &["env"]).await;
    let printed = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(printed.contains("GCE_METADATA_HOST="), "the command got no app environment: {printed}");
    assert!(!printed.contains("KEYLESS_"), "a keyless setting reached the command: {printed}");
    assert!(!printed.contains(header) && !printed.contains(token), "a secret reached the command: {printed}");
}

/// One fail-fast case: exit 125 long before `--ready-timeout`, `expected` in the message, the
/// command not run.
async fn assert_fails_fast(setup: &Setup, env: &[(String, String)], expected: &str) {
    let home = tempfile::tempdir().unwrap();
    let marker = home.path().join("ran");
    let timeout = format!("{}s", FAIL_FAST_BOUND.as_secs() * 2);
    let (out, took) =
        setup.exec(home.path(), &["--ready-timeout", &timeout], env, &["touch", marker.to_str().unwrap()]).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{stderr}");
    assert!(stderr.contains(expected), "expected {expected:?} in: {stderr}");
    assert!(stderr.contains("cannot get a credential until its configuration changes"), "{stderr}");
    assert!(took < FAIL_FAST_BOUND, "waited {took:?}: {stderr}");
    assert!(!marker.exists(), "the command ran");
}

#[tokio::test]
async fn exec_fails_fast_on_access_denied_and_an_unknown_oidc_provider() {
    let setup = Setup::with(|ids, toml| {
        let role = ids["aws_role_arn"].as_str().unwrap();
        toml.replace(role, &role.replace(":role/", ":role/not-trusting-"))
    })
    .await;
    assert_fails_fast(&setup, &[], "AccessDenied").await;

    let dir = tempfile::tempdir().unwrap();
    let untrusted = serde_json::json!({ "aud": ["sts.amazonaws.com"], "iss": "https://untrusted.example" });
    let setup = Setup::start().await.with_minted_token("aws", untrusted, dir.path()).await;
    assert_fails_fast(&setup, &[], "No OpenIDConnect provider found").await;
}

#[tokio::test]
async fn exec_fails_fast_on_invalid_target_and_entra_rejections() {
    let setup = Setup::with(|ids, toml| {
        let audience = ids["audiences"]["gcp"].as_str().unwrap();
        toml.replace(audience, &audience.replace("/providers/", "/providers/gone-"))
    })
    .await;
    assert_fails_fast(&setup, &[], "invalid_target").await;

    let setup = Setup::with(|ids, toml| {
        toml.replace(ids["azure_client_id"].as_str().unwrap(), "00000000-0000-0000-0000-00000000dead")
    })
    .await;
    assert_fails_fast(&setup, &[], "AADSTS700016").await;

    let dir = tempfile::tempdir().unwrap();
    let stranger =
        serde_json::json!({ "aud": ["api://AzureADTokenExchange"], "sub": "system:serviceaccount:other:stranger" });
    let setup = Setup::start().await.with_minted_token("azure", stranger, dir.path()).await;
    assert_fails_fast(&setup, &[], "AADSTS70021").await;
}

#[tokio::test]
async fn exec_fails_fast_without_the_actions_variables_or_an_env_sources_variable() {
    let setup = Setup::start().await;
    let actions = format!(
        "source = {{ type = \"github-actions\", ca_file = {} }}",
        toml_string(setup.emulator.ca.to_str().unwrap())
    );
    let with_actions = setup.with_token_keys("aws", &actions);
    assert_fails_fast(&with_actions, &[], "permissions: id-token: write").await;

    let with_env =
        Setup::start().await.with_token_keys("gcp", "source = { type = \"env\", var = \"CI_GCP_ID_TOKEN\" }");
    assert_fails_fast(&with_env, &[], "environment variable CI_GCP_ID_TOKEN is not set").await;
}

/// A transient failure (STS answering 503) is retried until --ready-timeout, with one progress
/// line for the identity that waits.
#[tokio::test]
async fn exec_retries_transient_errors_until_the_ready_timeout_and_says_it_waits() {
    let setup = Setup::start().await;
    setup.aws_sts_unavailable().await;
    let home = tempfile::tempdir().unwrap();
    let (out, took) = setup.exec(home.path(), &["--ready-timeout", "4s"], &[], &["true"]).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{stderr}");
    assert!(stderr.contains("not every credential was ready within 4s"), "{stderr}");
    assert!(took >= Duration::from_secs(4), "gave up before the timeout: {took:?} {stderr}");
    // One line per waiting identity: the default role and `writer`.
    // The identity as /readyz names it, then why (it said `aws ARN  (...)`, with an empty key).
    let waiting = format!("keyless exec: waiting for aws {} (the last attempt failed: ", setup.id("aws_role_arn"));
    assert_eq!(stderr.matches(&waiting).count(), 1, "{stderr}");
    assert_eq!(stderr.matches("keyless exec: waiting for aws").count(), 2, "{stderr}");
    assert!(setup.emulator.control.counter("aws-sts").await >= 2, "no retry");
}

#[tokio::test]
async fn absurd_durations_are_refused_by_the_parser() {
    let out = std::process::Command::new(keyless_bin())
        .args(["exec", "--ready-timeout", "400000000000y", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("must be between 0s and 1day"), "{}", text(&out.stderr));
}

#[tokio::test]
async fn token_prints_one_credential_per_cloud() {
    let setup = Setup::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = write(&dir.path().join("keyless.toml"), &setup.toml);
    let token = |args: &[&str]| {
        let mut command = std::process::Command::new(keyless_bin());
        command.arg("token").args(args).arg("--config").arg(&file).env_clear().env("HOME", dir.path());
        let out = command.output().unwrap();
        assert!(out.status.success(), "keyless token {args:?}: {}", text(&out.stderr));
        text(&out.stdout)
    };
    let exports = token(&["aws", "--role", "writer"]);
    let value = |name: &str| {
        exports
            .lines()
            .find_map(|l| l.strip_prefix(&format!("export {name}=")))
            .unwrap_or_else(|| panic!("{name} missing: {exports}"))
            .to_owned()
    };
    let creds = serde_json::json!({
        "access_key_id": value("AWS_ACCESS_KEY_ID"),
        "secret_access_key": value("AWS_SECRET_ACCESS_KEY"),
        "session_token": value("AWS_SESSION_TOKEN"),
    });
    assert_eq!(aws_caller(&setup, &creds).await, role_name(setup.id("aws_second_role_arn")));
    let json: Value = serde_json::from_str(&token(&["aws", "--format", "json"])).unwrap();
    assert_eq!(json["Version"], 1);

    let access = token(&["gcp"]);
    assert_eq!(tokeninfo_email(&setup, access.trim()).await, setup.id("gcp_service_account"));
    let id_token = token(&["gcp", "--audience", "https://example.com/aud"]);
    assert_eq!(jwt_claims(id_token.trim())["aud"], "https://example.com/aud");

    let entra = token(&["azure", "--role", setup.id("azure_second_client_id")]);
    assert_eq!(jwt_claims(entra.trim())["appid"], setup.id("azure_second_client_id"));

    let out = std::process::Command::new(keyless_bin())
        .args(["token", "aws", "--audience", "x", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125));
    assert!(text(&out.stderr).contains("--audience does not apply to aws"), "{}", text(&out.stderr));
}

/// SIGHUP reaches the command, and the command dies with keyless (SIGKILLed).
#[tokio::test]
async fn exec_forwards_sighup_and_its_command_dies_with_it() {
    let setup = Setup::start().await;
    let home = tempfile::tempdir().unwrap();
    let pid_file = home.path().join("pid");
    let spawn = |script: &str| setup.command(home.path(), &[], &[], &["sh", "-c", script]).spawn().unwrap();
    let started = |child: &tokio::process::Child| {
        rustix::process::Pid::from_raw(i32::try_from(child.id().unwrap()).unwrap()).unwrap()
    };
    let script = format!("trap 'exit 43' HUP; echo $$ > {}; while :; do sleep 0.1; done", pid_file.display());
    let mut child = spawn(&script);
    wait_until("the command to start", STARTUP_DEADLINE, || {
        let exists = pid_file.exists();
        async move { exists }
    })
    .await;
    rustix::process::kill_process(started(&child), rustix::process::Signal::HUP).unwrap();
    let status = tokio::time::timeout(STARTUP_DEADLINE, child.wait()).await.unwrap().unwrap();
    assert_eq!(status.code(), Some(43));

    std::fs::remove_file(&pid_file).unwrap();
    let mut child = spawn(&script);
    wait_until("the command to start", STARTUP_DEADLINE, || {
        let written = std::fs::read_to_string(&pid_file).is_ok_and(|p| p.ends_with('\n'));
        async move { written }
    })
    .await;
    let command_pid: i32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
    rustix::process::kill_process(started(&child), rustix::process::Signal::KILL).unwrap();
    let _ = child.wait().await;
    let proc = PathBuf::from(format!("/proc/{command_pid}/stat"));
    wait_until("the command to die with keyless", STARTUP_DEADLINE, || {
        // Gone, or a zombie waiting for its new parent to reap it.
        let dead = std::fs::read_to_string(&proc).map_or(true, |stat| stat.contains(") Z "));
        async move { dead }
    })
    .await;
}

/// A signal while the command waits for its credentials ends keyless in order: 128+N, the command
/// not run, and the private directory holding the filtered AWS files (0700, files 0600) removed.
#[tokio::test]
async fn a_signal_before_the_command_starts_removes_the_private_directory() {
    use std::os::unix::fs::PermissionsExt as _;
    let setup = Setup::start().await;
    // AWS never gets a credential: the command waits.
    setup.aws_sts_unavailable().await;
    let home = tempfile::tempdir().unwrap();
    write(&home.path().join(".aws/credentials"), LAPTOP_CREDENTIALS);
    let tmp = home.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let marker = home.path().join("ran");
    let vars = env(&[("TMPDIR", tmp.to_str().unwrap())]);
    let mut command =
        setup.command(home.path(), &["--ready-timeout", "1h"], &vars, &["touch", marker.to_str().unwrap()]);
    let child = command.stderr(std::process::Stdio::piped()).spawn().unwrap();
    let copy = || {
        let dir = std::fs::read_dir(&tmp).unwrap().next()?.unwrap().path();
        let file = std::fs::read_dir(&dir).unwrap().next()?.unwrap().path();
        Some((dir, file))
    };
    wait_until("the filtered copy of ~/.aws/credentials", STARTUP_DEADLINE, || {
        let written = copy().is_some_and(|(_, file)| std::fs::read_to_string(file).is_ok_and(|t| t == "[default]\n"));
        async move { written }
    })
    .await;
    let (dir, file) = copy().unwrap();
    assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700, "{}", dir.display());
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600, "{}", file.display());

    let pid = rustix::process::Pid::from_raw(i32::try_from(child.id().unwrap()).unwrap()).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let out = tokio::time::timeout(STARTUP_DEADLINE, child.wait_with_output()).await.unwrap().unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(128 + 15), "{stderr}");
    assert!(stderr.contains("keyless exec: SIGTERM before the command started; it was not run"), "{stderr}");
    assert!(!dir.exists(), "the private directory is left behind: {}", dir.display());
    assert!(!marker.exists(), "the command ran");
}
