//! The OCI image `make image` builds, as Istio's `WasmPlugin` and Envoy
//! Gateway pull it: an image layout whose one manifest has exactly one
//! layer holding `plugin.wasm`, every blob matching its digest, the wasm
//! the build made; that wasm, taken out of the image, runs in Envoy. And
//! the rendered manifests (`target/deploy/`) pin that image and carry the
//! shipped configuration.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::fs;
use std::path::Path;

use common::*;
use erp_devstack::deploy::{self, image_layout, ISTIO_IDENTITY_CLUSTER};
use erp_devstack::envoy::repo_root;
use erp_devstack::stack::{Stack, StackOptions};
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

fn blob(layout: &Path, digest: &str) -> Vec<u8> {
    let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
    let bytes = fs::read(layout.join("blobs/sha256").join(hex)).unwrap();
    assert_eq!(
        format!("{:x}", Sha256::digest(&bytes)),
        hex,
        "blob {digest} does not match its digest"
    );
    bytes
}

/// The files in the image's one layer: (path, bytes), directories left out.
fn layer_files() -> Vec<(String, Vec<u8>)> {
    let layout = image_layout();
    assert!(layout.join("oci-layout").exists(), "run `make image`");
    let manifest: Value = serde_json::from_slice(&blob(&layout, &deploy::image_digest(&layout).unwrap())).unwrap();
    let index: Value = serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    assert_eq!(
        index["manifests"][0]["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1, "exactly one layer: {manifest}");
    assert_eq!(layers[0]["mediaType"], "application/vnd.oci.image.layer.v1.tar+gzip");
    let config: Value = serde_json::from_slice(&blob(&layout, manifest["config"]["digest"].as_str().unwrap())).unwrap();
    assert_eq!(config["rootfs"]["diff_ids"].as_array().unwrap().len(), 1);
    let gz = blob(&layout, layers[0]["digest"].as_str().unwrap());
    layer_files_of(&gz)
}

fn built_wasm() -> Vec<u8> {
    fs::read(repo_root().join("target/wasm32-unknown-unknown/release/erp_edge_validator.wasm")).unwrap()
}

#[test]
fn the_image_holds_exactly_the_built_plugin_and_it_runs_in_envoy() {
    let files = layer_files();
    assert_eq!(files.len(), 1, "{:?}", files.iter().map(|(p, _)| p).collect::<Vec<_>>());
    let (name, wasm) = &files[0];
    assert_eq!(name, "plugin.wasm");
    assert_eq!(
        Sha256::digest(wasm),
        Sha256::digest(built_wasm()),
        "the image's wasm is not the build's"
    );
    // The archive `make image` writes is the same layout.
    assert!(repo_root().join("target/erp-edge-validator-oci.tar").exists());

    // This test binary starts one Envoy; the variable names the module.
    let extracted = std::env::temp_dir().join(format!("erp-image-plugin-{}.wasm", std::process::id()));
    fs::write(&extracted, wasm).unwrap();
    std::env::set_var("ERP_EDGE_WASM", &extracted);
    let stack = Stack::start(StackOptions::default()).unwrap();
    let token = bearer(&stack.idp.access_token(&["DomainApi", "read"]));
    assert_eq!(stack.get(CUSTOMERS, &[("authorization", &token)]).status, 200);
    assert_eq!(stack.get(CUSTOMERS, &[]).status, 401);
    drop(stack);
    let _ = fs::remove_file(extracted);
}

fn yaml_documents(path: &str) -> Vec<Value> {
    let text = fs::read_to_string(repo_root().join("target/deploy").join(path)).expect("run `make image`");
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| serde_json::to_value(serde_yaml::Value::deserialize(doc).unwrap()).unwrap())
        .collect()
}

#[test]
fn the_rendered_manifests_pin_the_image_and_carry_the_shipped_configuration() {
    let digest = deploy::image_digest(&image_layout()).unwrap();
    let sha = digest.trim_start_matches("sha256:");

    let istio = &yaml_documents("istio/wasmplugin.yaml")[0];
    assert_eq!(istio["kind"], "WasmPlugin");
    let spec = &istio["spec"];
    assert_eq!(spec["phase"], "AUTHN");
    assert_eq!(spec["failStrategy"], "FAIL_CLOSE");
    assert!(
        spec["url"].as_str().unwrap().ends_with(&format!("@{digest}")),
        "{}",
        spec["url"]
    );
    assert_eq!(spec["sha256"], sha);
    assert_eq!(
        spec["pluginConfig"],
        deploy::plugin_config(ISTIO_IDENTITY_CLUSTER).unwrap()
    );
    assert_eq!(spec["pluginConfig"]["introspection"]["cluster"], ISTIO_IDENTITY_CLUSTER);

    let mesh = yaml_documents("istio/identity-service.yaml");
    let kinds: Vec<&str> = mesh.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["ServiceEntry", "DestinationRule"]);
    let tls = &mesh[1]["spec"]["trafficPolicy"]["tls"];
    assert_eq!(
        (tls["mode"].as_str(), tls["sni"].as_str()),
        (Some("SIMPLE"), Some("idp.erp.test"))
    );
    // The cluster the configuration names is the one Istio makes for it.
    assert_eq!(
        ISTIO_IDENTITY_CLUSTER,
        format!(
            "outbound|{}||{}",
            mesh[0]["spec"]["ports"][0]["number"],
            mesh[0]["spec"]["hosts"][0].as_str().unwrap()
        )
    );

    let gateway = yaml_documents("envoy-gateway/extension-policy.yaml");
    assert_eq!(gateway[0]["kind"], "EnvoyExtensionPolicy");
    let wasm = &gateway[0]["spec"]["wasm"][0];
    assert_eq!(wasm["code"]["type"], "Image");
    assert!(wasm["code"]["image"]["url"]
        .as_str()
        .unwrap()
        .ends_with(&format!("@{digest}")));
    assert_eq!(wasm["code"]["image"]["sha256"], sha);
    assert_eq!(wasm["failOpen"], false);
    assert_eq!(wasm["config"], deploy::plugin_config("identity").unwrap());
    assert_eq!(gateway[1]["kind"], "EnvoyPatchPolicy");
    assert_eq!(gateway[1]["spec"]["jsonPatches"][0]["name"], "identity");
    // Nothing but the clusters differs from the shipped configuration.
    let mut shipped = erp_devstack::envoy::shipped_filter_config().unwrap();
    let mut istio_config = spec["pluginConfig"].clone();
    for config in [&mut shipped, &mut istio_config] {
        config["remote_jwks"]["cluster"] = Value::Null;
        config["introspection"]["cluster"] = Value::Null;
    }
    assert_eq!(shipped, istio_config);
}
