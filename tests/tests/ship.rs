//! What ships beside the binary, proven without Docker or Kubernetes: `docker/compose.yaml` is valid
//! against the compose specification and its topology works when run as plain processes (same
//! commands, same env, same health checks), the Kubernetes manifests are valid and wire keyless as a
//! hardened native sidecar, and `docker/Dockerfile` describes a static binary on scratch. The image
//! itself is built and measured by `scripts/image` (a release build: its own CI step).
#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use keyless_test_support::binary::{keyless_bin, workspace_root};
use keyless_test_support::process::{free_port, stop_child};
use keyless_test_support::tools::{python, venv_tool};
use keyless_test_support::wait::{STARTUP_DEADLINE, wait_until};
use serde_json::Value;
use tokio::process::{Child, Command};

/// The fixed ports of the compose file: credentials, admin, emulator.
const COMPOSE_PORTS: [u16; 3] = [9811, 9812, 9813];
/// The user every container runs as.
const RUNTIME_USER: &str = "65532:65532";
/// The first Kubernetes release with native sidecars on by default; the pinned kubernetes-validate
/// also checks against its newest known release.
const OLDEST_KUBERNETES: &str = "1.29.0";

fn repo() -> PathBuf {
    workspace_root()
}

/// Runs a Python snippet of the test venv on `input`, returning the JSON it prints.
fn python_json(script: &str, args: &[&Path], input: &str) -> Value {
    use std::io::Write as _;
    let mut child = std::process::Command::new(python())
        .arg("-c")
        .arg(script)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{script} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Every document of a YAML file, as compose and kubectl read it (anchors and merge keys resolved).
fn yaml_documents(path: &Path) -> Vec<Value> {
    let script = "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))";
    let docs = python_json(script, &[path], "");
    docs.as_array().unwrap().iter().filter(|d| !d.is_null()).cloned().collect()
}

fn toml_value(text: &str) -> Value {
    python_json("import json, sys, tomllib; print(json.dumps(tomllib.loads(sys.stdin.read())))", &[], text)
}

fn compose() -> Value {
    yaml_documents(&repo().join("docker/compose.yaml")).remove(0)
}

fn services(compose: &Value) -> &serde_json::Map<String, Value> {
    compose["services"].as_object().unwrap()
}

fn strings(value: &Value) -> Vec<String> {
    value.as_array().unwrap_or_else(|| panic!("not a list: {value}")).iter().map(|v| str_of(v).to_owned()).collect()
}

fn str_of(value: &Value) -> &str {
    value.as_str().unwrap_or_else(|| panic!("not a string: {value}"))
}

/// The env a service gets from compose (`environment`, a map once anchors are merged).
fn compose_env(service: &Value) -> BTreeMap<String, String> {
    match service.get("environment") {
        None => BTreeMap::new(),
        Some(env) => env.as_object().unwrap().iter().map(|(k, v)| (k.clone(), str_of(v).to_owned())).collect(),
    }
}

/// The instructions of a Dockerfile's last stage (from its last FROM), as (INSTRUCTION, rest).
fn final_stage(dockerfile: &str) -> Vec<(String, String)> {
    let lines: Vec<(String, String)> = dockerfile
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once(' ').map(|(i, rest)| (i.to_ascii_uppercase(), rest.trim().to_owned())))
        .collect();
    let last_from = lines.iter().rposition(|(i, _)| i == "FROM").unwrap();
    lines[last_from..].to_vec()
}

/// `ENV K=V [K=V...]` of a Dockerfile's final stage.
fn image_env(dockerfile: &str) -> Vec<(String, String)> {
    final_stage(dockerfile)
        .into_iter()
        .filter(|(i, _)| i == "ENV")
        .flat_map(|(_, rest)| {
            rest.split_whitespace()
                .map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap();
                    (k.to_owned(), v.to_owned())
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

fn instruction<'a>(stage: &'a [(String, String)], name: &str) -> Option<&'a str> {
    stage.iter().rev().find(|(i, _)| i == name).map(|(_, rest)| rest.as_str())
}

// ---------------------------------------------------------------------------------------------
// docker/compose.yaml

#[test]
fn compose_file_is_valid_against_the_compose_specification() {
    let out = std::process::Command::new(venv_tool("check-jsonschema"))
        .args(["--builtin-schema", "vendor.compose-spec"])
        .arg(repo().join("docker/compose.yaml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "check-jsonschema rejected docker/compose.yaml:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn compose_services_are_hardened_and_apps_share_the_sidecars_network() {
    let compose = compose();
    for (name, service) in services(&compose) {
        assert_eq!(service["user"], RUNTIME_USER, "{name}: numeric non-root user");
        assert_eq!(service["read_only"], true, "{name}: read-only root filesystem");
        assert_eq!(service["cap_drop"], serde_json::json!(["ALL"]), "{name}: no capabilities");
        assert!(strings(&service["security_opt"]).contains(&"no-new-privileges:true".to_owned()), "{name}");
    }
    let sidecar = &services(&compose)["keyless"];
    assert_eq!(strings(&sidecar["command"])[0], "serve");
    assert_eq!(sidecar["depends_on"]["emulator"]["condition"], "service_healthy");
    assert!(strings(&sidecar["healthcheck"]["test"]).iter().any(|a| a.ends_with(":9812/readyz")));
    // The sidecar reaches the emulator by its service name: that name must be in its certificate
    // and be the tokens' issuer.
    let emulator = strings(&services(&compose)["emulator"]["command"]);
    assert_eq!(emulator[0], "emulate");
    let hostname = emulator.iter().position(|a| a == "--hostname").map(|i| &emulator[i + 1]);
    assert_eq!(hostname.map(String::as_str), Some("emulator"));

    for app in ["aws-app", "gcp-app", "azure-app"] {
        let service = &services(&compose)[app];
        assert_eq!(service["network_mode"], "service:keyless", "{app}: credentials stay on loopback");
        assert_eq!(service["depends_on"]["keyless"]["condition"], "service_healthy", "{app}: starts once ready");
        for (key, value) in compose_env(service) {
            assert!(!value.contains("0.0.0.0"), "{app}: {key}={value}");
        }
    }
}

/// The compose topology on one machine without containers: each service's command, environment
/// and health check, as compose would run them, mapped onto loopback: the fixed ports become free
/// ones, service host names become `localhost`, named volumes become directories, bind-mounted files copies.
#[derive(Debug)]
struct Topology {
    dir: tempfile::TempDir,
    rewrites: Vec<(String, String)>,
    service_names: Vec<String>,
    running: Vec<(String, Child)>,
}

impl Topology {
    fn new(compose: &Value) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let service_names: Vec<String> = services(compose).keys().cloned().collect();
        let mut rewrites = Vec::new();
        for port in COMPOSE_PORTS {
            let free = free_port();
            for name in &service_names {
                rewrites.push((format!("{name}:{port}"), format!("localhost:{free}")));
            }
            rewrites.push((format!("0.0.0.0:{port}"), format!("127.0.0.1:{free}")));
            rewrites.push((format!("127.0.0.1:{port}"), format!("127.0.0.1:{free}")));
        }
        // The keyless image's entrypoint is the binary under test; examples/Dockerfile puts the apps in /app/.
        let dockerfile = std::fs::read_to_string(repo().join("docker/Dockerfile")).unwrap();
        let entrypoint: Vec<String> =
            serde_json::from_str(instruction(&final_stage(&dockerfile), "ENTRYPOINT").unwrap()).unwrap();
        rewrites.push((entrypoint[0].clone(), keyless_bin().to_string_lossy().into_owned()));
        rewrites.push(("/app/".to_owned(), format!("{}/", repo().join("examples").display())));

        let mut mounts = BTreeMap::new();
        let mut bind_files = Vec::new();
        for (name, service) in services(compose) {
            for volume in service.get("volumes").map(strings).unwrap_or_default() {
                let mut parts = volume.split(':');
                let (source, target) = (parts.next().unwrap(), parts.next().unwrap());
                if source.starts_with('.') || source.starts_with('/') {
                    bind_files.push((name.clone(), source.to_owned(), target.to_owned()));
                    continue;
                }
                let host = dir.path().join("volumes").join(source);
                std::fs::create_dir_all(&host).unwrap();
                let previous = mounts.insert(target.to_owned(), host.clone());
                assert!(previous.is_none_or(|p| p == host), "{name}: two volumes at {target}");
            }
        }
        let mut topology = Self { dir, rewrites, service_names, running: Vec::new() };
        for (target, host) in mounts {
            topology.rewrites.push((target, host.to_string_lossy().into_owned()));
        }
        // Bind-mounted files (the sidecar's config), relative to the compose file as compose reads
        // them: the file compose would mount, with the same mapping applied to its content.
        for (name, source, target) in bind_files {
            let file = repo().join("docker").join(&source);
            let text = topology.rewrite(&std::fs::read_to_string(&file).unwrap());
            let host = topology.dir.path().join("binds").join(file.file_name().unwrap());
            std::fs::create_dir_all(host.parent().unwrap()).unwrap();
            std::fs::write(&host, text).unwrap();
            let service = &services(compose)[&name];
            assert!(strings(&service["command"]).contains(&target), "{name}: {target} unused");
            topology.rewrites.push((target, host.to_string_lossy().into_owned()));
        }
        topology
    }

    fn rewrite(&self, text: &str) -> String {
        let rewritten = self.rewrites.iter().fold(text.to_owned(), |t, (from, to)| t.replace(from, to));
        for port in COMPOSE_PORTS {
            assert!(!rewritten.contains(&format!(":{port}")), "port {port} left unmapped in {rewritten}");
        }
        rewritten
    }

    /// An argument that is a service's name is a host name (`--hostname emulator`).
    fn rewrite_arg(&self, arg: &str) -> String {
        if self.service_names.iter().any(|n| n == arg) { "localhost".to_owned() } else { self.rewrite(arg) }
    }

    /// The process for `argv` (a service's command or health check) with the service's env.
    fn command(
        &self,
        service: &str,
        image_env: &[(String, String)],
        env: &BTreeMap<String, String>,
        argv: &[String],
    ) -> Command {
        let argv: Vec<String> = argv.iter().map(|a| self.rewrite_arg(a)).collect();
        let home = self.dir.path().join("home").join(service);
        std::fs::create_dir_all(&home).unwrap();
        // The examples image's `python` is the venv's: the same pinned SDKs (see example_requirements_...).
        let path = format!("{}:{}", python().parent().unwrap().display(), std::env::var("PATH").unwrap_or_default());
        let mut command = Command::new(&argv[0]);
        command
            .args(&argv[1..])
            .env_clear()
            .env("PATH", path)
            .env("HOME", &home)
            .envs(image_env.iter().map(|(k, v)| (k.clone(), v.clone())))
            .envs(env.iter().map(|(k, v)| (k.clone(), self.rewrite(v))))
            .current_dir(&home)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        command
    }

    fn log_path(&self, service: &str) -> PathBuf {
        self.dir.path().join(format!("{service}.log"))
    }

    fn logs(&self) -> String {
        let mut all = String::new();
        for name in &self.service_names {
            let log = std::fs::read_to_string(self.log_path(name)).unwrap_or_default();
            all.push_str(&format!("--- {name}\n{log}"));
        }
        all
    }
}

/// Which image a service runs, and what that image adds: its entrypoint and its env.
fn image_of(service: &Value) -> (Vec<String>, Vec<(String, String)>) {
    let image = str_of(&service["image"]);
    let dockerfile = |path: &str| std::fs::read_to_string(repo().join(path)).unwrap();
    let text = match image {
        "keyless:dev" | "keyless-dev:dev" => dockerfile("docker/Dockerfile"),
        "keyless-examples:dev" => dockerfile("examples/Dockerfile"),
        other => panic!("unknown image {other}: teach this test which Dockerfile builds it"),
    };
    let entrypoint = instruction(&final_stage(&text), "ENTRYPOINT").map(|e| serde_json::from_str(e).unwrap());
    (entrypoint.unwrap_or_default(), image_env(&text))
}

#[tokio::test]
async fn the_compose_topology_runs_without_docker_and_every_example_app_succeeds() {
    let compose = compose();
    let mut topology = Topology::new(&compose);
    let services = services(&compose).clone();
    let apps: Vec<String> = ["aws-app", "gcp-app", "azure-app"].map(String::from).to_vec();

    // Start in dependency order; wait for what each one depends on the way compose does.
    let mut started = BTreeSet::new();
    let mut app_children = Vec::new();
    while started.len() < services.len() {
        let (name, service) = services
            .iter()
            .find(|(n, s)| {
                !started.contains(*n)
                    && s.get("depends_on")
                        .and_then(Value::as_object)
                        .is_none_or(|d| d.keys().all(|k| started.contains(k)))
            })
            .expect("a dependency cycle in compose.yaml");
        for (dependency, condition) in service.get("depends_on").and_then(Value::as_object).into_iter().flatten() {
            assert_eq!(condition["condition"], "service_healthy", "{name}");
            let dep = &services[dependency];
            let test = strings(&dep["healthcheck"]["test"]);
            assert_eq!(test[0], "CMD", "{dependency}: health check in exec form");
            let (_, env) = image_of(dep);
            let topology_ref = &topology;
            wait_until(&format!("{dependency}'s health check"), STARTUP_DEADLINE, || {
                let mut check = topology_ref.command(dependency, &env, &compose_env(dep), &test[1..]);
                check.stdout(Stdio::null()).stderr(Stdio::null());
                async move { check.status().await.unwrap().success() }
            })
            .await;
        }
        let (entrypoint, env) = image_of(service);
        let argv: Vec<String> = entrypoint.into_iter().chain(strings(&service["command"])).collect();
        let log = std::fs::File::create(topology.log_path(name)).unwrap();
        let mut command = topology.command(name, &env, &compose_env(service), &argv);
        command.stdout(log.try_clone().unwrap()).stderr(log);
        let child = command.spawn().unwrap_or_else(|e| panic!("{name}: {argv:?}: {e}"));
        if apps.contains(name) {
            app_children.push((name.clone(), child));
        } else {
            topology.running.push((name.clone(), child));
        }
        started.insert(name.clone());
    }

    let mut outputs = BTreeMap::new();
    for (name, mut child) in app_children {
        let status = tokio::time::timeout(Duration::from_secs(120), child.wait()).await.unwrap().unwrap();
        assert!(status.success(), "{name} failed ({status}):\n{}", topology.logs());
        outputs.insert(name.clone(), std::fs::read_to_string(topology.log_path(&name)).unwrap());
    }
    let logs = topology.logs();
    // boto3 found the container endpoint through the token file, and STS verified the signature.
    assert!(outputs["aws-app"].contains("aws: arn:aws:sts::123456789012:assumed-role/keyless-dev/"), "{logs}");
    assert!(outputs["aws-app"].contains("(credentials from container-role)"), "{logs}");
    assert!(outputs["gcp-app"].contains("access token for keyless-dev@keyless-dev.iam.gserviceaccount.com"), "{logs}");
    assert!(outputs["gcp-app"].contains("signature verified"), "{logs}");
    assert!(outputs["azure-app"].contains("token for app 3f6e8d1c-9b2a-4e7f-8c5d-6a1b2c3d4e5f"), "{logs}");
    assert!(outputs["azure-app"].contains("signature verified"), "{logs}");

    // A health check fails on anything but a 2xx, saying what it got.
    let emulator_url = topology.rewrite("https://emulator:9813");
    let ca = topology.rewrite("/var/lib/keyless-emulator/ca.pem");
    let out = Command::new(keyless_bin())
        .args(["probe", "--ca-file", &ca, &format!("{emulator_url}/no-such-path")])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("answered 404"), "{}", String::from_utf8_lossy(&out.stderr));

    // `docker compose down`: SIGTERM, and a clean exit.
    for (name, child) in topology.running.drain(..).rev() {
        let status = stop_child(child).await;
        assert!(status.success(), "{name} exited with {status} on SIGTERM:\n{logs}");
    }
}

#[tokio::test]
async fn probe_explains_an_unreachable_service() {
    let url = format!("http://127.0.0.1:{}/readyz", free_port());
    let out = Command::new(keyless_bin()).args(["probe", &url]).output().await.unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("GET {url} failed")) && stderr.contains("listening"), "{stderr}");
}

// ---------------------------------------------------------------------------------------------
// examples/

#[test]
fn example_requirements_pin_the_versions_the_tests_run() {
    let pins = |path: &str| -> BTreeMap<String, String> {
        std::fs::read_to_string(repo().join(path))
            .unwrap()
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
            .map(|l| {
                let (name, version) = l.split_once("==").unwrap_or_else(|| panic!("{path}: {l:?} is not pinned"));
                (name.to_ascii_lowercase(), version.to_owned())
            })
            .collect()
    };
    let tested = pins("tests/requirements.txt");
    for (name, version) in pins("examples/requirements.txt") {
        assert_eq!(tested.get(&name), Some(&version), "examples pin {name}=={version}; the tests run another version");
    }
}

// ---------------------------------------------------------------------------------------------
// examples/kubernetes/

fn manifests() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("examples/kubernetes"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert_eq!(
        files.iter().map(|f| f.file_name().unwrap().to_string_lossy().into_owned()).collect::<Vec<_>>(),
        ["all-clouds.yaml", "aws.yaml", "azure.yaml", "gcp.yaml"]
    );
    files
}

#[test]
fn kubernetes_manifests_are_valid_for_kubernetes_1_29_and_the_newest_known() {
    for version in [Some(OLDEST_KUBERNETES), None] {
        let mut command = std::process::Command::new(venv_tool("kubernetes-validate"));
        command.args(["--strict", "--quiet"]);
        if let Some(version) = version {
            command.args(["--kubernetes-version", version]);
        }
        let out = command.args(manifests()).output().unwrap();
        assert!(
            out.status.success(),
            "kubernetes-validate --strict ({version:?}) rejected the manifests:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The env var names an app needs for each cloud (the emulator's extras of compose left out).
fn app_env_names(env: &BTreeMap<String, String>) -> BTreeSet<String> {
    const EMULATOR_ONLY: [&str; 4] = ["AWS_ENDPOINT_URL_STS", "AWS_CA_BUNDLE", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"];
    env.keys().filter(|k| !k.starts_with("KEYLESS_") && !EMULATOR_ONLY.contains(&k.as_str())).cloned().collect()
}

/// The sidecar's config file, relative to the compose file: the source of the bind mount at the
/// path its command passes to `--config`.
fn sidecar_config(compose: &Value) -> String {
    let sidecar = &services(compose)["keyless"];
    let command = strings(&sidecar["command"]);
    let target = command.iter().skip_while(|a| *a != "--config").nth(1).expect("the sidecar's --config");
    strings(&sidecar["volumes"])
        .iter()
        .find_map(|v| v.strip_suffix(":ro").unwrap_or(v).strip_suffix(&format!(":{target}")).map(str::to_owned))
        .unwrap_or_else(|| panic!("no volume mounts the sidecar's config at {target}"))
}

fn by_name<'a>(list: &'a Value, name: &str) -> &'a Value {
    list.as_array().unwrap().iter().find(|v| v["name"] == name).unwrap_or_else(|| panic!("no {name} in {list}"))
}

#[test]
fn kubernetes_pods_run_keyless_as_a_hardened_native_sidecar_wired_like_compose() {
    let compose = compose();
    let compose_config =
        toml_value(&std::fs::read_to_string(repo().join("docker").join(sidecar_config(&compose))).unwrap());
    let compose_app_env = |cloud: &str| app_env_names(&compose_env(&services(&compose)[&format!("{cloud}-app")]));
    let mut clouds_seen = BTreeSet::new();

    for file in manifests() {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let docs = yaml_documents(&file);
        let kind = |k: &str| docs.iter().find(|d| d["kind"] == k).unwrap_or_else(|| panic!("{name}: no {k}"));
        let (account, config_map, job) = (kind("ServiceAccount"), kind("ConfigMap"), kind("Job"));
        let pod = &job["spec"]["template"]["spec"];
        assert_eq!(pod["serviceAccountName"], account["metadata"]["name"], "{name}");
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{name}");
        assert!(pod["securityContext"]["runAsUser"].as_u64().unwrap() > 0, "{name}: numeric non-root user");

        // keyless: a native sidecar whose startup probe is its readiness.
        let sidecar = by_name(&pod["initContainers"], "keyless");
        assert_eq!(sidecar["restartPolicy"], "Always", "{name}: native sidecar");
        assert_eq!(strings(&sidecar["args"])[..1], ["serve"], "{name}");
        let probe = &sidecar["startupProbe"]["httpGet"];
        assert_eq!(probe["path"], "/readyz", "{name}");
        assert_eq!(by_name(&sidecar["ports"], str_of(&probe["port"]))["containerPort"], 9812, "{name}: admin port");
        let app = &pod["containers"][0];
        for container in [sidecar, app] {
            let security = &container["securityContext"];
            assert_eq!(security["readOnlyRootFilesystem"], true, "{name}");
            assert_eq!(security["allowPrivilegeEscalation"], false, "{name}");
            assert_eq!(security["runAsNonRoot"], true, "{name}");
            assert_eq!(security["capabilities"]["drop"], serde_json::json!(["ALL"]), "{name}");
        }

        // The config: each section's token is a projected token of the audience that cloud expects.
        let config = toml_value(str_of(&config_map["data"]["keyless.toml"]));
        let config_mount = by_name(&sidecar["volumeMounts"], "keyless-config");
        assert_eq!(
            format!("{}/keyless.toml", str_of(&config_mount["mountPath"])),
            strings(&sidecar["args"])[2],
            "{name}: --config names the mounted ConfigMap"
        );
        let app_env: BTreeMap<String, String> = app["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (str_of(&e["name"]).to_owned(), str_of(&e["value"]).to_owned()))
            .collect();
        let mut expected_env = BTreeSet::new();
        for (cloud, section) in config.as_object().unwrap() {
            clouds_seen.insert(cloud.clone());
            let token_file = Path::new(str_of(&section["token_file"]));
            let mount = sidecar["volumeMounts"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| Path::new(str_of(&m["mountPath"])) == token_file.parent().unwrap())
                .unwrap_or_else(|| panic!("{name}: nothing mounted at {}", token_file.display()));
            let volume = by_name(&pod["volumes"], str_of(&mount["name"]));
            let file_name = token_file.file_name().unwrap().to_str().unwrap();
            let projected = volume["projected"]["sources"]
                .as_array()
                .unwrap()
                .iter()
                .map(|source| &source["serviceAccountToken"])
                .find(|token| token["path"] == file_name)
                .unwrap_or_else(|| panic!("{name}: no projected token at {}", token_file.display()));
            let audience = match cloud.as_str() {
                "aws" => "sts.amazonaws.com",
                "azure" => "api://AzureADTokenExchange",
                "gcp" => str_of(&section["audience"]),
                other => panic!("{name}: unknown section [{other}]"),
            };
            assert_eq!(projected["audience"], audience, "{name}: [{cloud}] token audience");
            // Only keys that the compose run proved keyless accepts.
            for key in section.as_object().unwrap().keys() {
                assert!(
                    compose_config[cloud].get(key).is_some(),
                    "{name}: [{cloud}] {key} is not in docker/keyless.toml"
                );
            }
            expected_env.extend(compose_app_env(cloud));
        }
        assert_eq!(app_env.keys().cloned().collect::<BTreeSet<_>>(), expected_env, "{name}: app env as in compose");
        for (key, value) in &app_env {
            if value.contains(":98") {
                assert!(value.contains("127.0.0.1:9811"), "{name}: {key}={value} is not keyless's listener");
            }
        }
        if let Some(aws) = config.get("aws") {
            // The app reads the container endpoint's token from a volume the sidecar writes.
            let token = &app_env["AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"];
            assert_eq!(aws["authorization_token_file"], token.as_str(), "{name}");
            let dir = Path::new(token).parent().unwrap().to_str().unwrap();
            for container in [sidecar, app] {
                assert!(container["volumeMounts"].as_array().unwrap().iter().any(|m| m["mountPath"] == dir), "{name}");
            }
        }
    }
    assert_eq!(clouds_seen, BTreeSet::from(["aws", "azure", "gcp"].map(String::from)));
}

// ---------------------------------------------------------------------------------------------
// docker/Dockerfile

/// The sidecar image leaves the emulation out; the emulator service runs the dev image, built from
/// the same Dockerfile with it in.
#[test]
fn the_sidecar_image_has_no_emulator_and_the_compose_emulator_runs_the_dev_image() {
    let dockerfile = std::fs::read_to_string(repo().join("docker/Dockerfile")).unwrap();
    assert!(dockerfile.contains("ARG FEATURES=\"\""), "the sidecar build is the default");
    assert!(dockerfile.contains(r#"--no-default-features --features "$FEATURES""#));
    let compose = compose();
    let services = services(&compose);
    assert_eq!(str_of(&services["keyless"]["image"]), "keyless:dev");
    assert!(services["keyless"]["build"].get("args").is_none(), "the sidecar is built without features");
    assert_eq!(str_of(&services["emulator"]["image"]), "keyless-dev:dev");
    assert_eq!(str_of(&services["emulator"]["build"]["args"]["FEATURES"]), "emulator");
}

#[test]
fn dockerfile_puts_a_static_binary_on_scratch_with_a_numeric_user() {
    let dockerfile = std::fs::read_to_string(repo().join("docker/Dockerfile")).unwrap();
    let froms = dockerfile.lines().filter(|l| l.starts_with("FROM ")).count();
    assert!(froms >= 2, "multi-stage");
    assert!(dockerfile.contains("target-feature=+crt-static") && dockerfile.contains("--locked"), "static, locked");
    let stage = final_stage(&dockerfile);
    assert_eq!(instruction(&stage, "FROM"), Some("scratch"));
    assert_eq!(instruction(&stage, "USER"), Some(RUNTIME_USER));
    assert!(instruction(&stage, "RUN").is_none(), "nothing runs in the final stage: it has no shell");
    assert_eq!(instruction(&stage, "ENTRYPOINT"), Some(r#"["/usr/local/bin/keyless"]"#));
    let rootfs = std::fs::read_to_string(repo().join("docker/rootfs.sh")).unwrap();
    assert!(rootfs.contains("/etc/ssl/certs/ca-certificates.crt"), "CA certificates in the image");
    let ignore = std::fs::read_to_string(repo().join("docker/Dockerfile.dockerignore")).unwrap();
    assert_eq!(ignore.lines().find(|l| !l.starts_with('#')), Some("*"), "the build context is an allow-list");
}
