//! The plugin image through a real registry, the way a mesh agent gets it:
//! `make image`'s OCI layout pushed with skopeo to Debian's docker-registry
//! (the CNCF distribution registry) on 127.0.0.1, pulled back by digest over
//! the registry API as Istio's agent does (the manifest, then its one
//! layer), `plugin.wasm` taken out of it, its digests checked against the
//! rendered WasmPlugin and EnvoyExtensionPolicy, and that wasm run in Envoy.
//!
//! In CI (`CI=true`) a machine without the registry or skopeo fails the
//! test; elsewhere the test says why it did not run.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::fs;
use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use erp_devstack::client;
use erp_devstack::deploy::{image_digest, image_layout};
use erp_devstack::envoy::repo_root;
use erp_devstack::idp::ReferenceKind;
use erp_devstack::stack::{Stack, StackOptions};
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

const REPOSITORY: &str = "erp-edge-validator";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

fn log(line: &str) {
    let _ = writeln!(std::io::stderr(), "registry: {line}");
}

fn tools_available() -> bool {
    let missing: Vec<&str> = ["/usr/bin/docker-registry", "/usr/bin/skopeo"]
        .into_iter()
        .filter(|tool| !Path::new(tool).exists())
        .collect();
    if missing.is_empty() {
        return true;
    }
    let why = format!("{missing:?} not installed (`make containers`)");
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI cannot run the registry round trip: {why}"
    );
    log(&format!("NOT RUN: {why}"));
    false
}

/// A registry on a free loopback port, storing into a temporary folder;
/// stopped and removed on drop.
struct Registry {
    child: Child,
    dir: PathBuf,
    addr: SocketAddr,
}

impl Registry {
    fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let dir = std::env::temp_dir().join(format!("erp-registry-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("storage")).unwrap();
        let config = format!(
            "version: 0.1\nlog: {{ level: warn }}\nstorage:\n  filesystem: {{ rootdirectory: {} }}\n  delete: {{ enabled: true }}\nhttp:\n  addr: {addr}\n",
            dir.join("storage").display()
        );
        fs::write(dir.join("config.yml"), config).unwrap();
        let log_file = fs::File::create(dir.join("registry.log")).unwrap();
        let child = Command::new("/usr/bin/docker-registry")
            .arg("serve")
            .arg(dir.join("config.yml"))
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .unwrap();
        let mut registry = Self { child, dir, addr };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = client::request(addr, "GET", "/v2/", &[], b"") {
                if r.status == 200 {
                    break;
                }
            }
            assert!(
                registry.child.try_wait().unwrap().is_none(),
                "registry exited:\n{}",
                registry.log()
            );
            assert!(Instant::now() < deadline, "registry not up:\n{}", registry.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        registry
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.join("registry.log")).unwrap_or_default()
    }

    /// GET over the registry API; the body must hash to `digest`.
    fn get_verified(&self, path: &str, accept: &str, digest: &str) -> client::Response {
        let r = client::request(self.addr, "GET", path, &[("accept", accept)], b"").unwrap();
        assert_eq!(r.status, 200, "GET {path}: {}", r.text());
        let actual = format!("sha256:{:x}", Sha256::digest(&r.body));
        assert_eq!(actual, digest, "GET {path}: the content does not hash to its digest");
        r
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn yaml(file: &str) -> Vec<Value> {
    let text = fs::read_to_string(repo_root().join("target/deploy").join(file)).expect("run `make image`");
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| serde_json::to_value(serde_yaml::Value::deserialize(doc).unwrap()).unwrap())
        .collect()
}

fn only_file(layer_gz: &[u8]) -> (String, Vec<u8>) {
    let mut files = layer_files_of(layer_gz);
    assert_eq!(files.len(), 1, "{:?}", files.iter().map(|f| &f.0).collect::<Vec<_>>());
    files.remove(0)
}

#[test]
fn the_image_pushed_to_a_registry_and_pulled_by_digest_is_the_plugin_the_manifests_pin_and_it_runs() {
    if !tools_available() {
        return;
    }
    let layout = image_layout();
    let digest = image_digest(&layout).expect("run `make image`");
    let tag = env!("CARGO_PKG_VERSION");
    let registry = Registry::start();

    // Push, as docs/deploying.md says (skopeo), keeping the digest.
    let pushed = Command::new("skopeo")
        .args([
            "--insecure-policy",
            "copy",
            "--quiet",
            "--preserve-digests",
            "--dest-tls-verify=false",
        ])
        .arg(format!("oci:{}:{tag}", layout.display()))
        .arg(format!("docker://{}/{REPOSITORY}:{tag}", registry.addr))
        .output()
        .unwrap();
    assert!(
        pushed.status.success(),
        "skopeo copy: {}\n{}",
        String::from_utf8_lossy(&pushed.stderr),
        registry.log()
    );
    // The tag resolves to the digest the manifests pin.
    let head = client::request(
        registry.addr,
        "HEAD",
        &format!("/v2/{REPOSITORY}/manifests/{tag}"),
        &[("accept", OCI_MANIFEST)],
        b"",
    )
    .unwrap();
    assert_eq!(head.header("docker-content-digest"), Some(digest.as_str()), "{head:?}");
    log(&format!(
        "pushed {REPOSITORY}:{tag} to {}, digest {digest}",
        registry.addr
    ));

    // Pull by digest: the manifest, then its one layer.
    let response = registry.get_verified(&format!("/v2/{REPOSITORY}/manifests/{digest}"), OCI_MANIFEST, &digest);
    assert_eq!(response.header("content-type"), Some(OCI_MANIFEST));
    let manifest = response.json();
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1, "{manifest}");
    let layer_digest = layers[0]["digest"].as_str().unwrap();
    let layer = registry.get_verified(&format!("/v2/{REPOSITORY}/blobs/{layer_digest}"), "*/*", layer_digest);
    let (name, wasm) = only_file(&layer.body);
    assert_eq!(name, "plugin.wasm");
    let built = fs::read(repo_root().join("target/wasm32-unknown-unknown/release/erp_edge_validator.wasm")).unwrap();
    assert!(wasm == built, "the pulled plugin.wasm is not the build's");
    log(&format!(
        "pulled by digest: 1 layer {layer_digest}, plugin.wasm sha256:{:x} ({} bytes) = the build's",
        Sha256::digest(&wasm),
        wasm.len()
    ));

    // The manifests pin exactly what was pulled.
    let hex = digest.trim_start_matches("sha256:");
    let plugin = &yaml("istio/wasmplugin.yaml")[0]["spec"];
    assert_eq!(plugin["sha256"], hex);
    assert!(plugin["url"]
        .as_str()
        .unwrap()
        .ends_with(&format!("/{REPOSITORY}@{digest}")));
    let policy = &yaml("envoy-gateway/extension-policy.yaml")[0]["spec"]["wasm"][0]["code"]["image"];
    assert_eq!(policy["sha256"], hex);
    assert!(policy["url"]
        .as_str()
        .unwrap()
        .ends_with(&format!("/{REPOSITORY}@{digest}")));
    log("WasmPlugin.sha256 and EnvoyExtensionPolicy code.image.sha256 = the pulled manifest's digest");

    // The pulled wasm runs in Envoy.
    let pulled = std::env::temp_dir().join(format!("erp-pulled-plugin-{}.wasm", std::process::id()));
    fs::write(&pulled, &wasm).unwrap();
    std::env::set_var("ERP_EDGE_WASM", &pulled);
    let stack = Stack::start(StackOptions::default()).unwrap();
    let jwt = bearer(&stack.idp.access_token(&["DomainApi", "read"]));
    let r = stack.get(CUSTOMERS, &[("authorization", &jwt)]);
    assert_eq!(r.status, 200, "JWT: {}", r.text());
    let pat = stack.idp.issue_reference(ReferenceKind::Pat, &["read"], 3600);
    let r = stack.get(CUSTOMERS, &[("x-api-key", &pat)]);
    assert_eq!(r.status, 200, "PAT: {}", r.text());
    assert_eq!(stack.get(CUSTOMERS, &[]).status, 401);
    log("the pulled plugin in Envoy: JWT 200, PAT 200, no credential 401");
    drop(stack);
    let _ = fs::remove_file(pulled);
}
