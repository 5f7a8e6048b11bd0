//! What Envoy does with the module and its configuration at start: a bad
//! configuration stops Envoy with a message naming the field; the module
//! imports nothing Envoy cannot provide; the compose file cannot drift.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use erp_devstack::stack::{Stack, StackOptions};
use serde_json::{json, Value};

fn refused(patch: Value) -> String {
    match Stack::start(StackOptions {
        filter_config: Some(patch),
        ..StackOptions::default()
    }) {
        Ok(_) => panic!("Envoy started with a bad configuration"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn unknown_field_stops_envoy_and_is_named() {
    let log = refused(json!({"issuer": "https://idp.erp.test/id"}));
    assert!(
        log.contains("invalid configuration: field `issuer`: unknown field"),
        "{log}"
    );
}

#[test]
fn bad_jwks_stops_envoy_and_is_named() {
    let log = refused(json!({"jwks": {"keys": [{"kty": "RSA", "kid": "k", "n": "AQAB", "e": "AQAB"}]}}));
    assert!(
        log.contains("invalid configuration: field `jwks`: no usable signing key"),
        "{log}"
    );
}

#[test]
fn empty_issuer_list_stops_envoy_and_is_named() {
    let log = refused(json!({"issuers": []}));
    assert!(
        log.contains("invalid configuration: field `issuers`: must list at least one value"),
        "{log}"
    );
}

#[test]
fn hmac_algorithm_stops_envoy_and_is_named() {
    let log = refused(json!({"algorithms": ["HS256"]}));
    assert!(log.contains("field `algorithms[0]`: `HS256` is not allowed"), "{log}");
}

#[test]
fn module_imports_only_proxy_wasm_host_functions() {
    let bytes = std::fs::read(erp_devstack::envoy::wasm_path()).expect("run `make build` first");
    let mut imports = Vec::new();
    for payload in wasmparser::Parser::new(0).parse_all(&bytes) {
        if let wasmparser::Payload::ImportSection(section) = payload.unwrap() {
            for import in section {
                let import = import.unwrap();
                imports.push(format!("{}.{}", import.module, import.name));
            }
        }
    }
    assert!(imports.iter().any(|i| i == "env.proxy_log"), "{imports:?}");
    let foreign: Vec<_> = imports.iter().filter(|i| !i.starts_with("env.proxy_")).collect();
    assert!(foreign.is_empty(), "imports Envoy cannot provide: {foreign:?}");
}

#[test]
fn shipped_configuration_never_fails_open() {
    let root = erp_devstack::envoy::repo_root();
    for file in ["envoy/envoy.template.yaml", "envoy/envoy.compose.yaml"] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        assert!(!text.contains("FAIL_OPEN"), "{file}");
        assert!(text.contains("failure_policy: FAIL_RELOAD"), "{file}");
    }
}

#[test]
fn shipped_configurations_put_a_local_rate_limit_ahead_of_the_filter() {
    let root = erp_devstack::envoy::repo_root();
    for file in ["envoy/envoy.template.yaml", "envoy/envoy.compose.yaml"] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        let limit = text.find("envoy.filters.http.local_ratelimit").expect(file);
        let filter = text.find("name: erp.edge_validator").expect(file);
        assert!(limit < filter, "{file}: the rate limit must come first");
    }
}

#[test]
fn compose_configuration_is_the_rendered_template() {
    let committed = std::fs::read_to_string(erp_devstack::envoy::repo_root().join("envoy/envoy.compose.yaml")).unwrap();
    let rendered = erp_devstack::envoy::render_compose(&default_compose_ports(), None).unwrap();
    assert!(
        committed == rendered,
        "envoy/envoy.compose.yaml is stale: run `make compose-config`"
    );
}

fn default_compose_ports() -> erp_devstack::envoy::ComposePorts {
    use erp_devstack::ports::{ECHO, ENVOY, ENVOY_ADMIN, IDP};
    erp_devstack::envoy::ComposePorts {
        envoy: ENVOY.default,
        envoy_admin: ENVOY_ADMIN.default,
        idp: IDP.default,
        echo: ECHO.default,
    }
}

#[test]
fn the_compose_configuration_listens_on_loopback_only_admin_included() {
    let text = std::fs::read_to_string(erp_devstack::envoy::repo_root().join("envoy/envoy.compose.yaml")).unwrap();
    let config: serde_json::Value = serde_yaml::from_str(&text).unwrap();
    let admin = &config["admin"]["address"]["socket_address"];
    assert_eq!(admin["address"], "127.0.0.1", "{admin}");
    for listener in config["static_resources"]["listeners"].as_array().unwrap() {
        assert_eq!(
            listener["address"]["socket_address"]["address"], "127.0.0.1",
            "{listener}"
        );
    }
    assert!(!text.contains("0.0.0.0"), "something listens beyond loopback");
}

#[test]
fn a_bad_client_secret_stops_envoy_without_its_value_in_the_log() {
    let log = refused(json!({"introspection": {"client_secret": 918_273_645}}));
    assert!(
        log.contains("invalid configuration: field `introspection.client_secret`"),
        "{log}"
    );
    assert!(!log.contains("918273645"), "the secret's value is in the log");
}
