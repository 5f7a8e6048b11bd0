//! The rendered mesh manifests (`target/deploy/`, `make image`) against the
//! CRD schemas Istio's and Envoy Gateway's API servers enforce
//! (`../shared/schemas/`, unmodified), read as structural schemas with
//! strict field validation: an unknown field is an error, a document
//! without a schema is an error (`tests/crd/validate.py`, Python
//! `jsonschema` in the project's venv).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use erp_devstack::envoy::repo_root;
use serde::Deserialize;
use serde_json::{json, Value};

fn schemas() -> PathBuf {
    let dir = repo_root().join("../shared/schemas");
    assert!(dir.is_dir(), "{} is missing", dir.display());
    dir
}

fn rendered() -> Vec<PathBuf> {
    let mut files = Vec::new();
    for dir in ["istio", "envoy-gateway"] {
        for entry in fs::read_dir(repo_root().join("target/deploy").join(dir)).expect("run `make image`") {
            files.push(entry.unwrap().path());
        }
    }
    files.sort();
    assert_eq!(files.len(), 4, "{files:?}");
    files
}

/// Runs the validator; returns (passed, its output).
fn validate(files: &[PathBuf]) -> (bool, String) {
    let out = Command::new(repo_root().join(".venv/bin/python"))
        .arg(repo_root().join("tests/crd/validate.py"))
        .arg(schemas())
        .args(files)
        .output()
        .expect(".venv/bin/python (make venv)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "validator failed to run:\n{text}"
    );
    (out.status.success(), text)
}

fn documents(path: &Path) -> Vec<Value> {
    let text = fs::read_to_string(path).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| serde_json::to_value(serde_yaml::Value::deserialize(doc).unwrap()).unwrap())
        .collect()
}

/// Writes documents as one YAML file in a fresh temporary folder.
fn write(name: &str, docs: &[Value]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("erp-crd-{}-{name}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let text: Vec<String> = docs.iter().map(|d| serde_yaml::to_string(d).unwrap()).collect();
    let path = dir.join("manifest.yaml");
    fs::write(&path, text.join("---\n")).unwrap();
    path
}

fn rendered_named(file: &str) -> Vec<Value> {
    documents(&repo_root().join("target/deploy").join(file))
}

/// Asserts that this change to a rendered document makes it invalid, with
/// the validator naming `expected`.
fn refused(file: &str, index: usize, name: &str, change: impl FnOnce(&mut Value), expected: &str) {
    let mut docs = rendered_named(file);
    change(&mut docs[index]);
    let path = write(name, &docs);
    let (passed, text) = validate(std::slice::from_ref(&path));
    let _ = fs::remove_dir_all(path.parent().unwrap());
    assert!(!passed, "{name}: accepted:\n{text}");
    assert!(text.contains(expected), "{name}: expected `{expected}` in:\n{text}");
}

#[test]
fn every_rendered_manifest_is_valid_against_its_crd() {
    let (passed, text) = validate(&rendered());
    assert!(passed, "{text}");
    for kind in [
        "WasmPlugin",
        "ServiceEntry",
        "DestinationRule",
        "EnvoyExtensionPolicy",
        "EnvoyPatchPolicy",
    ] {
        let checked = text
            .lines()
            .any(|l| l.starts_with("ok ") && l.contains(&format!("({kind} ")));
        assert!(checked, "{kind} not checked:\n{text}");
    }
    assert!(text.contains("6 valid, 0 invalid"), "{text}");
}

#[test]
fn the_native_module_policy_names_a_module_the_schema_accepts_and_carries_the_configuration() {
    let policy = &rendered_named("envoy-gateway/extension-policy-native.yaml")[0];
    let module = &policy["spec"]["dynamicModule"][0];
    assert_eq!(module["filterName"], "erp_edge_validator");
    assert_eq!(module["config"]["realm"], "erp-domain-api");
    assert_eq!(module["config"]["introspection"]["cluster"], "identity");
    // Module names are DNS-like: the library's own name (underscores) is
    // refused, so the policy uses the registered, dashed one.
    refused(
        "envoy-gateway/extension-policy-native.yaml",
        0,
        "underscored-module-name",
        |doc| doc["spec"]["dynamicModule"][0]["name"] = "erp_edge_validator_native".into(),
        "spec/dynamicModule/0/name",
    );
}

#[test]
fn the_image_checksum_outside_the_image_block_is_refused() {
    // Where the manifest had it before the schema test: `code.sha256`.
    refused(
        "envoy-gateway/extension-policy.yaml",
        0,
        "misplaced-sha256",
        |doc| {
            let code = &mut doc["spec"]["wasm"][0]["code"];
            let sha = code["image"]["sha256"].take();
            code["image"].as_object_mut().unwrap().remove("sha256");
            code["sha256"] = sha;
        },
        "spec/wasm/0/code: Additional properties are not allowed ('sha256' was unexpected)",
    );
}

#[test]
fn a_field_one_level_too_deep_is_refused() {
    refused(
        "istio/wasmplugin.yaml",
        0,
        "misplaced-fail-strategy",
        |doc| {
            let strategy = doc["spec"]["failStrategy"].take();
            doc["spec"].as_object_mut().unwrap().remove("failStrategy");
            doc["spec"]["match"][0]["failStrategy"] = strategy;
        },
        "'failStrategy' was unexpected",
    );
}

#[test]
fn a_value_outside_its_enum_is_refused() {
    refused(
        "istio/identity-service.yaml",
        1,
        "bad-tls-mode",
        |doc| doc["spec"]["trafficPolicy"]["tls"]["mode"] = json!("STRICT"),
        "spec/trafficPolicy/tls/mode",
    );
}

#[test]
fn an_unknown_metadata_field_is_refused() {
    refused(
        "istio/identity-service.yaml",
        0,
        "bad-metadata",
        |doc| doc["metadata"]["namespaces"] = json!("domain-api"),
        "'namespaces' was unexpected",
    );
}

#[test]
fn a_document_without_a_schema_fails_rather_than_being_skipped() {
    refused(
        "istio/wasmplugin.yaml",
        0,
        "unknown-version",
        |doc| doc["apiVersion"] = json!("extensions.istio.io/v1"),
        "no CRD in",
    );
}

#[test]
fn fields_under_preserve_unknown_fields_are_free() {
    // pluginConfig is the filter's own configuration: any shape passes.
    let mut docs = rendered_named("istio/wasmplugin.yaml");
    docs[0]["spec"]["pluginConfig"]["anything"] = json!({"nested": [1, 2, 3]});
    let path = write("preserve-unknown", &docs);
    let (passed, text) = validate(std::slice::from_ref(&path));
    let _ = fs::remove_dir_all(path.parent().unwrap());
    assert!(passed, "{text}");
}
